package proxy

import (
	"fmt"
	"testing"

	"github.com/keyfence/keyfence/internal/redistest"
)

// TestPublishCountsOtherTenant: a tenant's PUBLISH counts and PUBSUB NUMPAT
// never include another tenant's subscribers, however broad that tenant's
// patterns, and another tenant's PUBLISH does not count this tenant's. Two
// keyfences (tenants "pa" and "pb") share one redis-server, with an
// unrestricted upstream user: keyfence itself must keep the counts apart.
func TestPublishCountsOtherTenant(t *testing.T) {
	t.Parallel()
	up := redistest.StartT(t, redistest.Options{})
	addrA := startProxy(t, up, func(c *Config) { c.Tenant = "pa" })
	addrB := startProxy(t, up, func(c *Config) { c.Tenant = "pb" })

	// Tenant b listens as broadly as it can: every pattern kind, and the
	// very channel a publishes to.
	subB := dialRaw(t, addrB)
	subB.write(t, encode(nil, "PSUBSCRIBE", "*", "chan.*", "__keyspace@*__:*", "__keyevent@*__:*", "tenant:pa:*"))
	for i := 0; i < 5; i++ {
		subB.read(t)
	}
	chanB := dialRaw(t, addrB)
	if r := chanB.do(t, "SUBSCRIBE", "chan.foo"); mustRV(t, r).elems[2].str != "1" {
		t.Fatalf("SUBSCRIBE: %s", quoteReply(r))
	}

	pubA := dialRaw(t, addrA)
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"PUBLISH", "chan.foo", "m"}, ":0\r\n"},
		{[]string{"PUBLISH", "x", "m"}, ":0\r\n"},
		{[]string{"PUBSUB", "NUMPAT"}, ":0\r\n"},
		{[]string{"PUBSUB", "NUMSUB", "chan.foo"}, "*2\r\n$8\r\nchan.foo\r\n:0\r\n"},
	}
	for _, tt := range tests {
		if r := pubA.do(t, tt.args...); string(r) != tt.want {
			t.Errorf("tenant a: %q = %s, want %s (tenant b's subscribers counted)", tt.args, quoteReply(r), quoteReply([]byte(tt.want)))
		}
	}

	// Now tenant a has a pattern subscriber of its own: only it counts.
	subA := dialRaw(t, addrA)
	subA.write(t, encode(nil, "PSUBSCRIBE", "chan.*", "c*"))
	subA.read(t)
	subA.read(t)
	if r := pubA.do(t, "PUBLISH", "chan.foo", "m"); string(r) != ":2\r\n" {
		t.Errorf("tenant a: PUBLISH chan.foo with its own 2 matching patterns = %s, want :2", quoteReply(r))
	}
	if r := pubA.do(t, "PUBSUB", "NUMPAT"); string(r) != ":2\r\n" {
		t.Errorf("tenant a: PUBSUB NUMPAT = %s, want :2", quoteReply(r))
	}

	// And tenant b's counts leave tenant a's out: its own 5 patterns match
	// "chan.foo" twice ("*", "chan.*"), plus its channel subscriber.
	pubB := dialRaw(t, addrB)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"PUBLISH", "chan.foo", "m"}, ":3\r\n"},
		{[]string{"PUBLISH", "cx", "m"}, ":1\r\n"},
		{[]string{"PUBSUB", "NUMPAT"}, ":5\r\n"},
	} {
		if r := pubB.do(t, tt.args...); string(r) != tt.want {
			t.Errorf("tenant b: %q = %s, want %s", tt.args, quoteReply(r), quoteReply([]byte(tt.want)))
		}
	}
	// Tenant a's subscriber got exactly the two pmessages of a's publish.
	for i := 0; i < 2; i++ {
		v := mustRV(t, subA.read(t))
		if got := fmt.Sprint(v.strs()); got != "[pmessage chan.* chan.foo m]" && got != "[pmessage c* chan.foo m]" {
			t.Errorf("tenant a's subscriber got %s", got)
		}
	}
}
