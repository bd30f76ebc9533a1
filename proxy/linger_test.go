package proxy_test

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/proxy"
)

// A protocol error ends the session, but the client may still be sending:
// it must get the error reply, not a connection reset that loses it.
func TestProtocolErrorReplyReachesAClientStillSending(t *testing.T) {
	srv := redistest.StartT(t, redistest.Options{})
	eachSessionKind(t, func(t *testing.T, goroutines bool) {
		addr, _ := startKeyfence(t, srv, "linger", func(c *proxy.Config) { c.GoroutinePerClient = goroutines })
		nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		// A bad bulk length, then 4 MB more that keyfence will not parse,
		// all written before the reply is read, as a client that pipelines
		// a large request does.
		_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := nc.Write(append([]byte("*1\r\n$-5\r\n"), bytes.Repeat([]byte("x"), 4<<20)...)); err != nil {
			t.Fatalf("writing the request: %v", err)
		}
		got, err := io.ReadAll(nc)
		if err != nil {
			t.Fatalf("reading the reply: %v (read %q)", err, got)
		}
		if want := "-ERR Protocol error: invalid bulk length\r\n"; string(got) != want {
			t.Fatalf("got %q, want %q and the end of the stream", got, want)
		}
	})
}
