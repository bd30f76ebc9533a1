package stack

import (
	"context"
	"testing"
	"time"

	"github.com/keyfence/keyfence/bench/internal/resp"
)

// TestStartStop starts the real servers; `make test` installs them.
func TestStartStop(t *testing.T) {
	tools, err := FindTools("")
	if err != nil {
		t.Fatalf("%v: run `make test` (it installs redis-server and nutcracker) or `apt-get install -y redis-server nutcracker`", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := Start(ctx, Config{Tools: tools, Dir: t.TempDir(), Twemproxy: true})
	if err != nil {
		t.Fatal(err)
	}
	procs := []*Proc{st.Redis, st.Twemproxy}
	for _, p := range procs {
		if err := resp.Ping(ctx, p.Addr); err != nil {
			t.Errorf("%s: %v", p.Name, err)
		}
		if rss, err := RSS(p.Pid()); err != nil || rss <= 0 {
			t.Errorf("%s: RSS %d, %v", p.Name, rss, err)
		}
	}
	if err := st.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		if done, _ := p.Exited(); !done {
			t.Errorf("%s still running after Stop", p.Name)
		}
	}
	if _, err := st.StartKeyfence(ctx, Config{Tools: tools}, "x"); err == nil {
		t.Error("StartKeyfence without a binary must fail")
	}
}

func TestFindToolsMissingKeyfence(t *testing.T) {
	tools, err := FindTools(t.TempDir() + "/no-such-keyfence")
	if err != nil {
		t.Fatalf("%v: run `make test` (it installs redis-server and nutcracker)", err)
	}
	if tools.Keyfence != "" || tools.KeyfenceStatus != NotBuilt {
		t.Fatalf("got %+v", tools)
	}
}
