package resp

import (
	"context"
	"net"
	"testing"
)

// serve writes canned replies to the client side of a pipe and swallows
// what the client sends.
func serve(t *testing.T, replies string) *Conn {
	t.Helper()
	client, server := net.Pipe()
	t.Cleanup(func() { client.Close(); server.Close() })
	go func() {
		buf := make([]byte, 4096)
		go func() { _, _ = server.Write([]byte(replies)) }()
		for {
			if _, err := server.Read(buf); err != nil {
				return
			}
		}
	}()
	return newConn(context.Background(), client, 64, 64)
}

func TestSkipKeepsStreamInStep(t *testing.T) {
	replies := "+OK\r\n" +
		"$5\r\nhello\r\n" +
		"$-1\r\n" +
		":42\r\n" +
		"*3\r\n$1\r\na\r\n*1\r\n:1\r\n-ERR inner\r\n" + // error inside an array
		"%1\r\n+k\r\n+v\r\n" + // RESP3 map
		"_\r\n" +
		"-ERR top\r\n" +
		"+PONG\r\n"
	c := serve(t, replies)
	want := []string{"", "", "", "", "ERR inner", "", "", "ERR top"}
	for i, w := range want {
		err := c.Skip()
		switch {
		case w == "" && err != nil:
			t.Fatalf("reply %d: %v", i, err)
		case w != "" && (err == nil || !IsServerError(err) || err.Error() != w):
			t.Fatalf("reply %d: got %v, want server error %q", i, err, w)
		}
	}
	got, err := c.Do(context.Background(), "PING")
	if err != nil || got != "PONG" {
		t.Fatalf("Do after skips: %q, %v", got, err)
	}
}

func TestBulkLargerThanBuffer(t *testing.T) {
	big := make([]byte, 1000)
	for i := range big {
		big[i] = 'x'
	}
	c := serve(t, "$1000\r\n"+string(big)+"\r\n+OK\r\n")
	if err := c.Skip(); err != nil {
		t.Fatal(err)
	}
	if err := c.Skip(); err != nil {
		t.Fatal(err)
	}
}
