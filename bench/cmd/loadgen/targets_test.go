package main

import (
	"reflect"
	"testing"
)

func TestParseGroup(t *testing.T) {
	g, err := parseGroup("kf=127.0.0.1:6380@42, 127.0.0.1:6381")
	if err != nil {
		t.Fatal(err)
	}
	want := group{Name: "kf", Endpoints: []endpoint{{Addr: "127.0.0.1:6380", Pid: 42}, {Addr: "127.0.0.1:6381"}}}
	if !reflect.DeepEqual(g, want) {
		t.Fatalf("got %+v, want %+v", g, want)
	}
	if g, _ := parseGroup("127.0.0.1:1,127.0.0.1:2"); g.Name != "127.0.0.1:1+1" {
		t.Fatalf("default name %q", g.Name)
	}
	for _, bad := range []string{"", "x=", "127.0.0.1", "127.0.0.1:1@zz"} {
		if _, err := parseGroup(bad); err == nil {
			t.Errorf("parseGroup(%q): want error", bad)
		}
	}
}
