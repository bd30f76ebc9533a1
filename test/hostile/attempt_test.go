package hostile

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Categories of the corpus.
const (
	catLua       = "lua"
	catKeys      = "keys"
	catPubSub    = "pubsub"
	catProtocol  = "protocol"
	catResources = "resources"
	catFunctions = "functions"
)

func categories() []string {
	return []string{catLua, catKeys, catPubSub, catProtocol, catResources, catFunctions}
}

// attempt is one escape attempt by acme. run does whatever acme does and
// asserts what acme's own replies must be; the harness checks everything
// else (beta's data, watchers, leaks, serving) around it.
type attempt struct {
	name     string
	category string
	run      func(a *act)
}

func corpus() []attempt {
	var all []attempt
	all = append(all, luaAttempts()...)
	all = append(all, functionAttempts()...)
	all = append(all, keyAttempts()...)
	all = append(all, pubsubAttempts()...)
	all = append(all, protocolAttempts()...)
	all = append(all, resourceAttempts()...)
	return all
}

// act is acme's side of one attempt.
type act struct {
	t     *testing.T
	f     *fence
	conns []*rawConn
	main  *rawConn
}

// conn opens a new connection to acme's keyfence; everything it reads is
// scanned for leaks.
func (a *act) conn() *rawConn {
	a.t.Helper()
	c, err := dialRaw(a.f.acme.addr)
	if err != nil {
		a.t.Fatalf("acme: %v", err)
	}
	a.conns = append(a.conns, c)
	return c
}

// do runs one command on acme's main connection.
func (a *act) do(args ...string) reply {
	if a.main == nil {
		a.main = a.conn()
	}
	return a.main.do(args...)
}

func (a *act) closeAll() {
	for _, c := range a.conns {
		_ = c.Close()
	}
}

func (a *act) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	a.t.Cleanup(cancel)
	return ctx
}

// wantError asserts that r is an error reply: acme asked for something
// beyond its tenant and must be refused.
func (a *act) wantError(what string, r reply) {
	a.t.Helper()
	if r.err != nil {
		a.t.Errorf("%s: want an error reply, got no reply: %v", what, r.err)
	} else if !r.isErr() {
		a.t.Errorf("%s: want an error reply (refused), got %s", what, r)
	}
}

// wantErrorContaining asserts an error reply that names what it should.
func (a *act) wantErrorContaining(what string, r reply, substr string) {
	a.t.Helper()
	a.wantError(what, r)
	if r.isErr() && !strings.Contains(strings.ToLower(r.v.str), strings.ToLower(substr)) {
		a.t.Errorf("%s: error %q should mention %q", what, r.v.str, substr)
	}
}

// wantReply asserts that some reply (error or not) came back.
func (a *act) wantReply(what string, r reply) {
	a.t.Helper()
	if r.err != nil {
		a.t.Errorf("%s: no reply: %v", what, r.err)
	}
}

// wantOK asserts a reply that is not an error.
func (a *act) wantOK(what string, r reply) {
	a.t.Helper()
	if r.err != nil || r.isErr() {
		a.t.Errorf("%s: want success, got %s", what, r)
	}
}

func (a *act) wantInt(what string, r reply, n int) {
	a.t.Helper()
	if r.err != nil || r.v.typ != ':' || r.v.str != strconv.Itoa(n) {
		a.t.Errorf("%s: want (integer) %d, got %s", what, n, r)
	}
}

// wantErrorOr asserts an error reply or a reply that ok accepts.
func (a *act) wantErrorOr(what string, r reply, ok func(val) bool, want string) {
	a.t.Helper()
	if r.err != nil {
		a.t.Errorf("%s: no reply: %v", what, r.err)
	} else if !r.isErr() && !ok(r.v) {
		a.t.Errorf("%s: want an error or %s, got %s", what, want, r)
	}
}

// wantStrings asserts an aggregate of exactly these strings, in any order.
func (a *act) wantStrings(what string, r reply, want ...string) {
	a.t.Helper()
	got := r.v.strs()
	if r.err != nil || r.isErr() || !sameSet(got, want) {
		a.t.Errorf("%s: want %q (acme's only), got %s", what, want, r)
	}
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[string]int{}
	for _, x := range a {
		m[x]++
	}
	for _, x := range b {
		m[x]--
	}
	for _, n := range m {
		if n != 0 {
			return false
		}
	}
	return true
}

func isNil(v val) bool { return v.null }

// eval builds EVAL script with keys and args.
func eval(script string, keys []string, args ...string) []string {
	cmd := []string{"EVAL", script, strconv.Itoa(len(keys))}
	cmd = append(cmd, keys...)
	return append(cmd, args...)
}

// subscribeAndWatch subscribes a new acme connection with sub (a SUBSCRIBE,
// PSUBSCRIBE or SSUBSCRIBE command), makes beta active, and then reads
// everything acme's subscription delivers until acme's own marker arrives.
// acme must receive nothing but its marker: every other message came from
// beyond its tenant.
func (a *act) subscribeAndWatch(sub ...string) {
	a.t.Helper()
	c := a.conn()
	const own = "acme-own-sync"
	if err := c.write(append(encode(sub...), encode("SUBSCRIBE", own)...)); err != nil {
		a.t.Fatalf("acme %s: %v", sub[0], err)
	}
	// One confirmation (or error) per channel or pattern, plus the own one.
	for range len(sub) - 1 + 1 {
		r := c.read()
		if r.err != nil {
			a.t.Errorf("acme %q: no confirmation: %v", sub, r.err)
			return
		}
		if r.isErr() {
			// Refused is a correct answer; the own subscription still
			// confirms, so keep reading what remains.
			continue
		}
	}
	a.f.betaActivity(a.t)
	marker := fmt.Sprintf("acme-marker-%d", time.Now().UnixNano())
	if r := a.do("PUBLISH", own, marker); r.err != nil || r.isErr() {
		a.t.Errorf("acme PUBLISH to its own channel: %s", r)
		return
	}
	for {
		r := c.read()
		if r.err != nil {
			a.t.Errorf("acme's subscriber: marker never arrived: %v", r.err)
			return
		}
		m := r.v.strs()
		if len(m) >= 3 && m[len(m)-1] == marker {
			break
		}
		if len(m) >= 1 && strings.HasSuffix(m[0], "subscribe") {
			continue // a late confirmation
		}
		a.t.Errorf("acme's subscription %q received a message from beyond its tenant: %s", sub, r)
	}
	// A pattern that matches acme's own channel delivers the marker twice;
	// anything else arriving now is scanned for leaks too.
	c.drain(50 * time.Millisecond)
}
