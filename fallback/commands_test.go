package fallback

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestCacheable(t *testing.T) {
	yes := []string{"GET", "get", "Get", "MGET", "HGET", "HMGET", "HGETALL", "HEXISTS", "EXISTS", "TTL", "STRLEN",
		"LRANGE", "LINDEX", "SMEMBERS", "SISMEMBER", "SCARD", "ZRANGE", "ZSCORE", "ZCARD", "zrangebyscore", "SINTER"}
	no := []string{"SET", "DEL", "GETDEL", "GETEX", "INCR", "SRANDMEMBER", "SPOP", "HRANDFIELD", "ZRANDMEMBER",
		"BLPOP", "SCAN", "KEYS", "RANDOMKEY", "OBJECT", "DBSIZE", "ZRANGESTORE", "EVAL", "", "GETX"}
	for _, c := range yes {
		if !Cacheable(c) {
			t.Errorf("Cacheable(%q) = false", c)
		}
	}
	for _, c := range no {
		if Cacheable(c) {
			t.Errorf("Cacheable(%q) = true", c)
		}
	}
}

func TestKeysOf(t *testing.T) {
	tests := []struct {
		cmd  string
		args []string
		want []string
	}{
		{"GET", []string{"k"}, []string{"k"}},
		{"get", []string{"k"}, []string{"k"}},
		{"HGET", []string{"h", "f"}, []string{"h"}},
		{"HMGET", []string{"h", "f1", "f2"}, []string{"h"}},
		{"LRANGE", []string{"l", "0", "-1"}, []string{"l"}},
		{"ZRANGE", []string{"z", "0", "10", "BYSCORE", "WITHSCORES"}, []string{"z"}},
		{"MGET", []string{"a", "b", "c"}, []string{"a", "b", "c"}},
		{"EXISTS", []string{"a", "a"}, []string{"a", "a"}},
		{"SUNION", []string{"s1", "s2"}, []string{"s1", "s2"}},
		{"GET", nil, nil},
		{"MGET", nil, nil},
		{"SET", []string{"k", "v"}, nil},
		{"NOPE", []string{"k"}, nil},
	}
	for _, tt := range tests {
		got := KeysOf(tt.cmd, bs(tt.args...))
		if len(got) != len(tt.want) {
			t.Errorf("KeysOf(%s %v) = %q, want %q", tt.cmd, tt.args, got, tt.want)
			continue
		}
		for i := range got {
			if string(got[i]) != tt.want[i] {
				t.Errorf("KeysOf(%s %v) = %q, want %q", tt.cmd, tt.args, got, tt.want)
			}
		}
	}
}

func TestAppendRequest(t *testing.T) {
	got := AppendRequest([]byte("x"), "hGet", bs("tenant:a:h", ""))
	want := "x*3\r\n$4\r\nHGET\r\n$10\r\ntenant:a:h\r\n$0\r\n\r\n"
	if string(got) != want {
		t.Fatalf("AppendRequest = %q, want %q", got, want)
	}
}

func TestFillFromWrite(t *testing.T) {
	tests := []struct {
		cmd  string
		args []string
		ok   bool
		ttl  time.Duration
	}{
		{"SET", []string{"k", "v"}, true, 0},
		{"set", []string{"k", "v"}, true, 0},
		{"SET", []string{"k", "v", "EX", "10"}, true, 10 * time.Second},
		{"SET", []string{"k", "v", "ex", "10"}, true, 10 * time.Second},
		{"SET", []string{"k", "v", "PX", "1500"}, true, 1500 * time.Millisecond},
		{"SET", []string{"k", "v", "NX"}, true, 0},
		{"SET", []string{"k", "v", "XX", "PX", "5"}, true, 5 * time.Millisecond},
		{"SET", []string{"k", "v", "EX", "99999999999999"}, true, longTTL},
		{"SETEX", []string{"k", "7", "v"}, true, 7 * time.Second},
		{"PSETEX", []string{"k", "7", "v"}, true, 7 * time.Millisecond},
		{"psetex", []string{"k", "7", "v"}, true, 7 * time.Millisecond},
		// Not fully known from the request, or rejected by Redis.
		{"SET", []string{"k", "v", "GET"}, false, 0},
		{"SET", []string{"k", "v", "KEEPTTL"}, false, 0},
		{"SET", []string{"k", "v", "EXAT", "1700000000"}, false, 0},
		{"SET", []string{"k", "v", "PXAT", "1700000000000"}, false, 0},
		{"SET", []string{"k", "v", "EX"}, false, 0},
		{"SET", []string{"k", "v", "EX", "0"}, false, 0},
		{"SET", []string{"k", "v", "EX", "-5"}, false, 0},
		{"SET", []string{"k", "v", "EX", "1x"}, false, 0},
		{"SET", []string{"k", "v", "EX", "99999999999999999999"}, false, 0},
		{"SET", []string{"k", "v", "EX", "1", "PX", "1"}, false, 0},
		{"SET", []string{"k", "v", "NX", "XX"}, false, 0},
		{"SET", []string{"k"}, false, 0},
		{"SETEX", []string{"k", "0", "v"}, false, 0},
		{"SETEX", []string{"k", "v"}, false, 0},
		{"SETNX", []string{"k", "v"}, false, 0},
		{"MSET", []string{"k", "v"}, false, 0},
		{"APPEND", []string{"k", "v"}, false, 0},
	}
	for _, tt := range tests {
		req, reply, ttl, ok := FillFromWrite(tt.cmd, bs(tt.args...))
		if ok != tt.ok || ttl != tt.ttl {
			t.Errorf("FillFromWrite(%s %v) ok=%v ttl=%v, want ok=%v ttl=%v", tt.cmd, tt.args, ok, ttl, tt.ok, tt.ttl)
			continue
		}
		if !ok {
			continue
		}
		value := tt.args[1]
		if strings.HasSuffix(strings.ToUpper(tt.cmd), "SETEX") {
			value = tt.args[2]
		}
		if want := "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"; string(req) != want {
			t.Errorf("FillFromWrite(%s %v) req = %q, want %q", tt.cmd, tt.args, req, want)
		}
		if want := "$" + string(rune('0'+len(value))) + "\r\n" + value + "\r\n"; string(reply) != want {
			t.Errorf("FillFromWrite(%s %v) reply = %q, want %q", tt.cmd, tt.args, reply, want)
		}
	}
	// The fill meets a client's GET in canonical form, whatever its case.
	req, _, _, _ := FillFromWrite("set", bs("tenant:a:k", "v"))
	if !bytes.Equal(req, AppendRequest(nil, "get", bs("tenant:a:k"))) {
		t.Errorf("fill request %q is not the canonical GET", req)
	}
}
