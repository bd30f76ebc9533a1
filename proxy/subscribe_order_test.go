package proxy

import "testing"

// TestSubscriberRepliesKeepOrder: an UNSUBSCRIBE answered by the subscribed
// connection and, in the same write, a command keyfence refuses itself
// (wrong arity, unknown): the replies come in the order the client asked,
// as from Redis. (Found by FuzzEventLoop; the refusal used to overtake.)
func TestSubscriberRepliesKeepOrder(t *testing.T) {
	up := testRedis(t)
	addr := startProxy(t, up, func(c *Config) { c.GoroutinePerClient = true })
	for _, tc := range []struct {
		name string
		then []string
		want string
	}{
		{"wrong arity", []string{"GET"}, "-ERR wrong number of arguments for 'get' command\r\n"},
		{"unknown command", []string{"NOSUCH"}, "-ERR unknown command 'NOSUCH', with args beginning with: \r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, addr)
			c.write(t, encode(encode(nil, "UNSUBSCRIBE"), tc.then...))
			if got := string(c.read(t)); got != "*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n" {
				t.Fatalf("first reply %q, want UNSUBSCRIBE's", got)
			}
			if got := string(c.read(t)); got != tc.want {
				t.Fatalf("second reply %q, want %q", got, tc.want)
			}
		})
	}
}
