package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyfence/keyfence/bench/internal/resp"
	"github.com/keyfence/keyfence/bench/internal/stack"
)

// TestProxy runs gorpx in front of a real redis-server (`make test`
// installs it) and checks what redis-benchmark relies on: prefixed keys,
// raw replies (errors and nils included) in order, a pipeline answered
// whole, and the local PING and CONFIG.
func TestProxy(t *testing.T) {
	tools, err := stack.FindTools("")
	if err != nil {
		t.Fatalf("%v: run `make test` (it installs redis-server)", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := stack.Start(ctx, stack.Config{Tools: tools, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Stop()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- serve(sctx, ln, st.Redis.Addr, nil) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()

	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(nc)
	// exchange sends cmds (space-separated words each) in one write and
	// reads exactly len(want) bytes back.
	exchange := func(want string, cmds ...string) {
		t.Helper()
		var b strings.Builder
		for _, c := range cmds {
			words := strings.Fields(c)
			b.WriteString("*" + strconv.Itoa(len(words)) + "\r\n")
			for _, w := range words {
				b.WriteString("$" + strconv.Itoa(len(w)) + "\r\n" + w + "\r\n")
			}
		}
		if _, err := io.WriteString(nc, b.String()); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(want))
		if _, err := io.ReadFull(br, got); err != nil {
			t.Fatalf("%q: read: %v (got %q)", cmds, err, got)
		}
		if string(got) != want {
			t.Fatalf("%q:\n got %q\nwant %q", cmds, got, want)
		}
	}

	exchange("+PONG\r\n", "PING")
	exchange("$2\r\nhi\r\n", "PING hi")
	exchange("*0\r\n", "CONFIG GET save")
	exchange("+OK\r\n$1\r\nv\r\n$-1\r\n", "SET k v", "GET k", "GET nope")
	exchange("+OK\r\n", "MSET a 1 b 2")
	exchange(":1\r\n:2\r\n:1\r\n", "LPUSH l x", "LPUSH l y", "HSET h f v")
	exchange("-ERR value is not an integer or out of range\r\n", "INCR k")
	var incrs []string
	var want strings.Builder
	for i := 1; i <= 16; i++ {
		incrs = append(incrs, "INCR n")
		want.WriteString(":" + strconv.Itoa(i) + "\r\n")
	}
	exchange(want.String(), incrs...)

	// The keys landed under the tenant prefix, and only there.
	rc, err := resp.Dial(ctx, st.Redis.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	for key, val := range map[string]string{"k": "v", "a": "1", "b": "2", "n": "16"} {
		if got, err := rc.Do(ctx, "GET", prefix+key); err != nil || got != val {
			t.Errorf("GET %s%s = %q, %v; want %q", prefix, key, got, err, val)
		}
		if got, err := rc.Do(ctx, "EXISTS", key); err != nil || got != "0" {
			t.Errorf("EXISTS %s = %q, %v; want 0", key, got, err)
		}
	}

	exchange("+OK\r\n", "QUIT")
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after QUIT: %v, want EOF", err)
	}
}
