package hostile

import (
	"crypto/sha1"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The gateway's replies, word for word Redis's.
const (
	errWrongPass = "WRONGPASS invalid username-password pair or user is disabled."
	errNoAuth    = "NOAUTH Authentication required."
)

// freshLoopback returns a loopback address no connection of this fence
// came from yet. The gateway slows down repeated AUTH failures per client
// address (3 free a minute, then 100 ms doubling up to 5 s); the gateway
// attempts fail AUTH dozens of times on purpose, so each comes from an
// address of its own, as an attacker with many addresses would, and stays
// within the free failures. The slowdown itself is auth-failure-flood's.
func (f *fence) freshLoopback() string {
	f.nextIP++
	return fmt.Sprintf("127.0.%d.%d", 1+f.nextIP/250, 1+f.nextIP%250)
}

// lobbyConn opens a connection to the gateway that has not authenticated,
// from the address from ("": a fresh one). Everything it reads is scanned
// for leaks.
func (a *act) lobbyConn(from string) *rawConn {
	a.t.Helper()
	if a.f.gw == nil {
		a.t.Fatalf("a gateway attempt in the sidecar mode %s", a.f.mode.name)
	}
	if from == "" {
		from = a.f.freshLoopback()
	}
	c, err := dialRawFrom(a.f.gw.addr, from)
	if err != nil {
		a.t.Fatalf("acme: %v", err)
	}
	a.conns = append(a.conns, c)
	return c
}

// acmeConnFrom opens a connection from the address from and authenticates
// it as acme.
func (a *act) acmeConnFrom(from string) *rawConn {
	a.t.Helper()
	c := a.lobbyConn(from)
	if r := c.do("AUTH", acmeID, a.f.acme.password); r.err != nil || r.v.str != "OK" {
		a.t.Fatalf("acme's own AUTH: %s", r)
	}
	return c
}

// wantWrongPass asserts Redis's exact refusal of a wrong user or password,
// or, when protocolError allows it, a protocol error (Redis's limits
// before AUTH) after which the gateway closed the connection.
func (a *act) wantWrongPass(what string, r reply, protocolError bool) {
	a.t.Helper()
	switch {
	case r.err != nil:
		a.t.Errorf("%s: want %q, got no reply: %v", what, errWrongPass, r.err)
	case r.isErr() && r.v.str == errWrongPass:
	case protocolError && r.isErr() && strings.HasPrefix(r.v.str, "ERR Protocol error"):
	default:
		a.t.Errorf("%s: want %q, got %s", what, errWrongPass, r)
	}
}

func (a *act) wantNoAuth(what string, r reply) {
	a.t.Helper()
	if r.err != nil || !r.isErr() || r.v.str != errNoAuth {
		a.t.Errorf("%s before AUTH: want %q, got %s", what, errNoAuth, r)
	}
}

// nothingOfBetas reads beta's canaries by name, script and function on c
// after a refused AUTH: a connection left in the lobby gets NOAUTH for
// each, acme's own connection sees acme's namespace (one key, no script,
// no function). A connection the gateway closed (a protocol error) reads
// nothing and is done with.
func (a *act) nothingOfBetas(what string, c *rawConn, authed bool) {
	a.t.Helper()
	type read struct {
		args []string
		acme func(r reply) bool // acme's correct answer
	}
	empty := func(r reply) bool { return !r.isErr() && len(r.v.elems) == 0 }
	for _, x := range []read{
		{[]string{"GET", "str"}, func(r reply) bool { return r.v.null }},
		{[]string{"HGETALL", "hash"}, empty},
		{[]string{"LRANGE", "list", "0", "-1"}, empty},
		{[]string{"SMEMBERS", "set"}, empty},
		{[]string{"XRANGE", "stream", "-", "+"}, empty},
		{[]string{"KEYS", "*"}, func(r reply) bool { return sameSet(r.v.strs(), []string{acmeOwnKey}) }},
		{[]string{"DBSIZE"}, func(r reply) bool { return r.v.typ == ':' && r.v.str == "1" }},
		{[]string{"EVALSHA", a.f.betaSHA, "1", "str"}, reply.isErr},
		{[]string{"FCALL", betaFnName, "1", "str"}, reply.isErr},
		{[]string{"FUNCTION", "LIST"}, empty},
	} {
		r := c.do(x.args...)
		if r.err != nil {
			a.t.Logf("%s: the connection is closed (%v); nothing more to read on it", what, r.err)
			return
		}
		if !authed {
			a.wantNoAuth(what+": "+strings.Join(x.args[:1], " "), r)
		} else if !x.acme(r) {
			a.t.Errorf("%s: %q on acme's connection must show acme's namespace only, got %s", what, x.args, r)
		}
	}
}

// authCase is one credential acme tries in order to become beta.
type authCase struct {
	name string
	args func(f *fence) []string
	// protocolError: the request is past Redis's limits before AUTH, so
	// a lobby connection may get a protocol error and be closed instead.
	protocolError bool
	// notWrongPass: not a credential at all (AUTH's syntax); any error.
	notWrongPass bool
}

func authCases() []authCase {
	fixed := func(args ...string) func(*fence) []string { return func(*fence) []string { return args } }
	return []authCase{
		{name: "beta-wrong-password", args: fixed("AUTH", betaID, "wrong")},
		{name: "beta-wrong-password-2", args: fixed("AUTH", betaID, "hunter2")},
		{name: "beta-empty-password", args: fixed("AUTH", betaID, "")},
		{name: "beta-acme-password", args: func(f *fence) []string { return []string{"AUTH", betaID, f.acme.password} }},
		// The first bytes of beta's password, which acme may guess from
		// its own: a prefix must not match.
		{name: "beta-password-prefix", args: fixed("AUTH", betaID, "gw-b-")},
		{name: "beta-one-arg", args: fixed("AUTH", betaID)},
		{name: "hello3-auth-beta", args: fixed("HELLO", "3", "AUTH", betaID, "x")},
		{name: "hello3-auth-beta-setname", args: fixed("HELLO", "3", "AUTH", betaID, "x", "SETNAME", betaID)},
		{name: "hello2-auth-beta-acme-password", args: func(f *fence) []string {
			return []string{"HELLO", "2", "AUTH", betaID, f.acme.password}
		}},
		{name: "beta-1mb-password", args: fixed("AUTH", betaID, strings.Repeat("p", 1<<20)), protocolError: true},
		// bcrypt reads 72 bytes: a long password must not match whatever
		// shares its first 72.
		{name: "beta-73-byte-password", args: fixed("AUTH", betaID, strings.Repeat("p", 73))},
		{name: "id-crlf", args: fixed("AUTH", betaID+"\r\n", "x")},
		{name: "id-crlf-acme-password", args: func(f *fence) []string { return []string{"AUTH", betaID + "\r\n", f.acme.password} }},
		{name: "id-nul", args: fixed("AUTH", betaID+"\x00", "x")},
		{name: "id-trailing-space", args: fixed("AUTH", betaID+" ", "x")},
		{name: "id-uppercase", args: fixed("AUTH", "BETA", "x")},
		{name: "id-star", args: fixed("AUTH", "*", "x")},
		{name: "id-glob", args: fixed("AUTH", "b*", "x")},
		{name: "id-prefixed", args: fixed("AUTH", "tenant:beta", "x")},
		{name: "id-prefix-form", args: fixed("AUTH", betaPrefix, "x")},
		{name: "id-path", args: fixed("AUTH", "../beta", "x")},
		{name: "id-hashtag", args: fixed("AUTH", "{beta}", "x")},
		{name: "id-10kb", args: fixed("AUTH", strings.Repeat("beta", 2560), "x")},
		{name: "id-empty", args: fixed("AUTH", "", "x")},
		{name: "id-default", args: fixed("AUTH", "default", "x")},
		{name: "id-upstream-user", args: fixed("AUTH", "kf-beta", "x")},
		// acme's own password under acme's id with beta's appended, and
		// the lobby's name in logs.
		{name: "id-acme-beta", args: func(f *fence) []string { return []string{"AUTH", acmeID + "\x00" + betaID, f.acme.password} }},
		{name: "id-lobby", args: fixed("AUTH", "-", "x")},
		{name: "auth-no-args", args: fixed("AUTH"), notWrongPass: true},
		{name: "auth-three-args", args: fixed("AUTH", betaID, "x", "y"), notWrongPass: true},
	}
}

// gatewayAttempts attack the gateway itself: its lobby, its AUTH, switching
// tenants on one connection, what one tenant's connections tell another,
// and AUTH floods. They run in the gateway modes only.
func gatewayAttempts() []attempt {
	var out []attempt
	for _, ac := range authCases() {
		out = append(out, attempt{name: "auth-" + ac.name, category: catGateway, run: func(a *act) {
			args := ac.args(a.f)
			check := func(what string, r reply, lobby bool) {
				a.t.Helper()
				if ac.notWrongPass {
					a.wantError(what, r)
					return
				}
				a.wantWrongPass(what, r, ac.protocolError && lobby)
			}
			from := a.f.freshLoopback()
			// From the lobby: refused, and still unauthenticated.
			c := a.lobbyConn(from)
			check("from the lobby", c.do(args...), true)
			a.nothingOfBetas("lobby after the refused AUTH", c, false)
			// From acme's own connection: refused, and still acme.
			c = a.acmeConnFrom(from)
			check("from acme's connection", c.do(args...), false)
			a.nothingOfBetas("acme's connection after the refused AUTH", c, true)
		}})
	}
	out = append(out,
		attempt{name: "auth-inline", category: catGateway, run: func(a *act) {
			c := a.lobbyConn("")
			_ = c.write([]byte("AUTH beta x\r\nAUTH beta \"\"\r\nGET str\r\n"))
			a.wantWrongPass("inline AUTH beta x", c.read(), false)
			a.wantWrongPass("inline AUTH beta \"\"", c.read(), false)
			a.wantNoAuth("inline GET", c.read())
		}},
		attempt{name: "auth-pipelined-with-commands", category: catGateway, run: func(a *act) {
			// Commands pipelined around a refused and an accepted AUTH run
			// each as the connection is at its place in the pipeline.
			c := a.lobbyConn("")
			var req []byte
			for _, args := range [][]string{
				{"AUTH", betaID, "wrong"}, {"GET", "str"}, {"FLUSHALL"},
				{"AUTH", acmeID, a.f.acme.password}, {"GET", "str"}, {"KEYS", "*"},
				{"AUTH", betaID, "wrong"}, {"GET", "str"}, {"DBSIZE"},
			} {
				req = append(req, encode(args...)...)
			}
			_ = c.write(req)
			a.wantWrongPass("pipelined AUTH as beta", c.read(), false)
			a.wantNoAuth("pipelined GET", c.read())
			a.wantNoAuth("pipelined FLUSHALL", c.read())
			a.wantOK("pipelined AUTH as acme", c.read())
			a.wantErrorOr("GET str as acme", c.read(), isNil, "(nil): acme has no str")
			a.wantStrings("KEYS * as acme", c.read(), acmeOwnKey)
			a.wantWrongPass("pipelined re-AUTH as beta", c.read(), false)
			a.wantErrorOr("GET str, still acme", c.read(), isNil, "(nil): acme has no str")
			a.wantInt("DBSIZE, still acme", c.read(), 1)
		}},
		attempt{name: "pre-auth-commands", category: catGateway, run: preAuthCommands},
		attempt{name: "pre-auth-protocol-limits", category: catGateway, run: func(a *act) {
			// Redis's limits before AUTH: 10 arguments, 16 KB each. Past
			// them the connection gets a protocol error and is closed.
			c := a.lobbyConn("")
			args := []string{"MSET"}
			for i := range 20 {
				args = append(args, betaPrefix+strconv.Itoa(i), "x")
			}
			a.wantErrorContaining("41-argument MSET before AUTH", c.do(args...), "Protocol error")
			c = a.lobbyConn("")
			a.wantErrorContaining("a 20 KB argument before AUTH", c.do("SET", "str", strings.Repeat("x", 20<<10)), "Protocol error")
			c = a.lobbyConn("")
			_ = c.write([]byte("*3\r\n$3\r\nSET\r\n$3\r\nstr\r\n$1073741824\r\n"))
			a.wantErrorContaining("a 1 GB argument announced before AUTH", c.read(), "Protocol error")
		}},
		attempt{name: "switching-drops-state", category: catGateway, run: switchingDropsState},
		attempt{name: "switching-subscriber", category: catGateway, run: switchingSubscriber},
		attempt{name: "counting-beta-connections", category: catGateway, run: countingBetaConnections},
		attempt{name: "auth-failure-flood", category: catGateway, memory: true, run: authFailureFlood},
	)
	return out
}

// preAuthCommands sends every class of command before AUTH: each gets
// NOAUTH, and upstream runs none of them.
func preAuthCommands(a *act) {
	before, err := commandStats(a)
	if err != nil {
		a.t.Fatalf("INFO commandstats: %v", err)
	}
	c := a.lobbyConn("")
	for _, args := range [][]string{
		{"PING"}, {"ECHO", "x"}, {"TIME"}, {"COMMAND"}, {"COMMAND", "COUNT"}, {"LOLWUT"},
		{"GET", "str"}, {"SET", "str", "pwned"}, {"DEL", "str"}, {"UNLINK", "str"}, {"EXISTS", "str"}, {"TYPE", "str"},
		{"HGETALL", "hash"}, {"LPUSH", betaQueue, "x"}, {"SADD", "set", "x"}, {"ZADD", "zset", "1", "x"}, {"XADD", "stream", "*", "f", "v"},
		{"XREAD", "STREAMS", "stream", "0"}, {"OBJECT", "ENCODING", "str"}, {"DUMP", "str"}, {"RESTORE", "k", "0", "x"},
		{"RENAME", "str", "x"}, {"COPY", "str", "x"}, {"MOVE", "str", "1"}, {"EXPIRE", "ttl", "1"}, {"PERSIST", "ttl"},
		{"KEYS", "*"}, {"SCAN", "0"}, {"DBSIZE"}, {"RANDOMKEY"}, {"FLUSHALL"}, {"FLUSHDB"}, {"SWAPDB", "0", "1"}, {"SELECT", "1"},
		{"BLPOP", betaQueue, "1"}, {"BLMOVE", betaQueue, "x", "LEFT", "LEFT", "1"}, {"WAIT", "0", "0"},
		{"EVAL", "return redis.call('FLUSHALL')", "0"}, {"EVALSHA", a.f.betaSHA, "1", "str"}, {"EVAL_RO", "return 1", "0"},
		{"SCRIPT", "LOAD", "return 1"}, {"SCRIPT", "EXISTS", a.f.betaSHA}, {"SCRIPT", "FLUSH"}, {"SCRIPT", "KILL"},
		{"FCALL", betaFnName, "1", "str"}, {"FCALL_RO", betaFnName, "1", "str"}, {"FUNCTION", "LIST"}, {"FUNCTION", "DUMP"},
		{"FUNCTION", "FLUSH"}, {"FUNCTION", "LOAD", "#!lua name=x\nredis.register_function('x', function() return 1 end)"},
		{"PUBLISH", betaChannel, "forged"}, {"SPUBLISH", betaChannel, "forged"}, {"PUBSUB", "CHANNELS"}, {"PUBSUB", "NUMSUB", betaChannel},
		{"SUBSCRIBE", betaChannel}, {"PSUBSCRIBE", "*"}, {"SSUBSCRIBE", betaChannel}, {"UNSUBSCRIBE"}, {"PUNSUBSCRIBE"},
		{"MULTI"}, {"EXEC"}, {"DISCARD"}, {"WATCH", "str"}, {"UNWATCH"},
		{"CLIENT", "ID"}, {"CLIENT", "LIST"}, {"CLIENT", "INFO"}, {"CLIENT", "SETNAME", betaID}, {"CLIENT", "GETNAME"},
		{"CLIENT", "KILL", "TYPE", "normal"}, {"CLIENT", "PAUSE", "1000"}, {"CLIENT", "UNBLOCK", "1"}, {"CLIENT", "TRACKING", "ON", "BCAST"},
		{"CLIENT", "NO-EVICT", "on"}, {"CLIENT", "REPLY", "OFF"},
		{"INFO"}, {"INFO", "keyspace"}, {"CONFIG", "GET", "*"}, {"CONFIG", "SET", "notify-keyspace-events", ""}, {"CONFIG", "RESETSTAT"},
		{"ACL", "WHOAMI"}, {"ACL", "LIST"}, {"ACL", "SETUSER", "evil", "on", "nopass"}, {"MONITOR"}, {"SLOWLOG", "GET"},
		{"MEMORY", "USAGE", "str"}, {"LATENCY", "LATEST"}, {"DEBUG", "SLEEP", "0"}, {"SHUTDOWN", "NOSAVE"}, {"SAVE"}, {"BGSAVE"},
		{"REPLICAOF", "127.0.0.1", "1"}, {"SYNC"}, {"PSYNC", "?", "-1"}, {"ROLE"}, {"CLUSTER", "INFO"}, {"READONLY"}, {"ASKING"},
	} {
		a.wantNoAuth(strings.Join(args, " "), c.do(args...))
	}
	for _, args := range [][]string{{"HELLO", "3"}, {"HELLO", "2", "SETNAME", betaID}, {"HELLO"}} {
		r := c.do(args...)
		if r.err != nil || !r.isErr() || !strings.HasPrefix(r.v.str, "NOAUTH") {
			a.t.Errorf("%q before AUTH: want NOAUTH, got %s", args, r)
		}
	}
	a.wantOK("RESET before AUTH", c.do("RESET"))
	a.wantNoAuth("GET after RESET", c.do("GET", "str"))
	// Inline commands, and a pipeline of many.
	_ = c.write([]byte("FLUSHALL\r\nGET str\r\nSET str pwned\r\n"))
	for _, what := range []string{"inline FLUSHALL", "inline GET", "inline SET"} {
		a.wantNoAuth(what, c.read())
	}
	var req []byte
	for i := range 200 {
		req = append(req, encode("SET", "str", "pwned-"+strconv.Itoa(i))...)
	}
	_ = c.write(req)
	for i := range 200 {
		if r := c.read(); r.err != nil || r.v.str != errNoAuth {
			a.t.Errorf("pipelined SET %d before AUTH: %s", i, r)
			break
		}
	}

	after, err := commandStats(a)
	if err != nil {
		a.t.Fatalf("INFO commandstats: %v", err)
	}
	for name, n := range after {
		// cmdstat_info: the harness's own INFO commandstats.
		if n != before[name] && name != "info" {
			a.t.Errorf("upstream ran %s %d times while acme only sent commands before AUTH", name, n-before[name])
		}
	}

	// A lobby connection that asked to SUBSCRIBE receives nothing of
	// beta's activity; and a quit lobby connection is closed.
	a.f.betaActivity(a.t)
	if r := c.readWithin(200 * time.Millisecond); r.err == nil {
		a.t.Errorf("a connection that never authenticated received %s", r)
	}
	a.wantOK("QUIT before AUTH", c.do("QUIT"))
	if r := c.readWithin(time.Second); r.err == nil {
		a.t.Errorf("the connection stays open after QUIT: %s", r)
	}
}

// commandStats is the upstream's count of calls per command.
func commandStats(a *act) (map[string]int, error) {
	info, err := a.f.adminDB(0).Info(a.ctx(), "commandstats").Result()
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		calls, _, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
		out[strings.TrimPrefix(name, "cmdstat_")], _ = strconv.Atoi(calls)
	}
	return out, nil
}

// switchingDropsState: acme builds up session state (name, database,
// scripts, WATCH, MULTI), AUTHs again as acme, as a bogus tenant and as
// beta, then RESETs: nothing of it reaches beta, and after RESET the
// connection is unauthenticated and, once acme again, starts afresh.
func switchingDropsState(a *act) {
	from := a.f.freshLoopback()
	c := a.acmeConnFrom(from)
	a.wantOK("CLIENT SETNAME", c.do("CLIENT", "SETNAME", "acme-switch"))
	a.wantOK("SELECT 1", c.do("SELECT", "1"))
	a.wantOK("SET in db 1", c.do("SET", "str", "acme-db1"))
	a.wantReply("EVAL SET in db 1", c.do(eval("return redis.call('SET', KEYS[1], ARGV[1])", []string{"sw-eval"}, "acme")...))
	// A script of acme's in the script cache (by EVAL: SCRIPT LOAD is what
	// protocol/info-all-own-only takes for beta's alone).
	const script = "return redis.call('GET', KEYS[1])"
	a.wantReply("EVAL", c.do(eval(script, []string{"str"})...))
	sha := fmt.Sprintf("%x", sha1.Sum([]byte(script)))
	a.wantOK("WATCH str", c.do("WATCH", "str", "hash"))
	// Re-AUTH as acme and failed AUTHs outside MULTI keep acme.
	a.wantOK("AUTH as acme again", c.do("AUTH", acmeID, a.f.acme.password))
	a.wantWrongPass("AUTH as a bogus tenant", c.do("AUTH", "bogus", "x"), false)
	a.wantWrongPass("AUTH as beta", c.do("AUTH", betaID, "x"), false)
	a.wantOK("CLIENT ID: still acme", c.do("CLIENT", "ID"))
	a.wantOK("MULTI", c.do("MULTI"))
	a.wantReply("SET str queued", c.do("SET", "str", "queued-by-acme"))
	a.wantReply("FLUSHDB queued", c.do("FLUSHDB"))
	// Redis queues AUTH in MULTI; the gateway refuses it there. Either
	// way acme stays acme.
	a.wantReply("AUTH as acme in MULTI", c.do("AUTH", acmeID, a.f.acme.password))
	a.wantReply("AUTH as beta in MULTI", c.do("AUTH", betaID, "x"))
	a.wantReply("HELLO 3 AUTH beta in MULTI", c.do("HELLO", "3", "AUTH", betaID, "x"))
	// beta changes its own str meanwhile; acme's WATCH is on acme's.
	a.wantOK("RESET in MULTI", c.do("RESET"))
	// After RESET: the lobby.
	for _, args := range [][]string{{"GET", "str"}, {"EXEC"}, {"CLIENT", "ID"}, {"CLIENT", "GETNAME"}, {"PING"}, {"EVALSHA", sha, "1", "str"}, {"SELECT", "0"}} {
		a.wantNoAuth(strings.Join(args, " ")+" after RESET", c.do(args...))
	}
	// acme again: a fresh session in db 0, nothing queued, nothing watched.
	a.wantOK("AUTH as acme after RESET", c.do("AUTH", acmeID, a.f.acme.password))
	a.wantError("EXEC after RESET and AUTH (no MULTI)", c.do("EXEC"))
	if r := c.do("CLIENT", "GETNAME"); r.err != nil || !r.v.null {
		a.t.Errorf("CLIENT GETNAME after RESET and AUTH: want (nil), got %s", r)
	}
	if r := c.do("GET", acmeOwnKey); r.err != nil || r.v.str != acmeOwnValue {
		a.t.Errorf("GET %s after RESET and AUTH must read db 0: got %s", acmeOwnKey, r)
	}
	a.wantOK("MULTI after RESET", c.do("MULTI"))
	a.wantReply("queued GET", c.do("GET", "str"))
	if r := c.do("EXEC"); r.err != nil || r.isErr() || len(r.v.elems) != 1 || !r.v.elems[0].null {
		a.t.Errorf("EXEC after RESET: the old WATCH or queue must be gone (want [(nil)]), got %s", r)
	}
	// acme's db 1 holds what acme wrote there, and only that.
	a.wantOK("SELECT 1", c.do("SELECT", "1"))
	if r := c.do("GET", "str"); r.err != nil || r.v.str != "acme-db1" {
		a.t.Errorf("acme's str in db 1: the queued SET must have been discarded: got %s", r)
	}
	// A second connection of acme's, and beta's own reads, see nothing of
	// the first one's state (the harness checks beta's data and watchers).
	c2 := a.acmeConnFrom(from)
	if r := c2.do("CLIENT", "LIST"); r.err != nil || strings.Count(r.v.str, "name=acme-switch") != 0 {
		a.t.Errorf("CLIENT LIST after RESET still names the reset connection acme-switch: %s", r)
	}
	if got, err := a.f.rawGet(a.f.beta, "str"); err != nil || got.v.str != a.f.canaryValue(0, "str") {
		a.t.Errorf("beta's GET str after acme's switching: %s, %v", got, err)
	}
}

// switchingSubscriber: acme subscribes (channels, a catch-all pattern,
// client tracking), tries AUTH, then RESETs: after RESET nothing is
// delivered to the connection, not acme's own messages and not beta's.
func switchingSubscriber(a *act) {
	from := a.f.freshLoopback()
	sub := a.acmeConnFrom(from)
	_ = sub.write(append(encode("SUBSCRIBE", betaChannel, "own"), encode("PSUBSCRIBE", "*")...))
	for range 3 {
		if r := sub.read(); r.err != nil || r.isErr() {
			a.t.Fatalf("acme's SUBSCRIBE/PSUBSCRIBE: %s", r)
		}
	}
	// In RESP2 a subscribed connection takes no AUTH; either way acme
	// stays acme and subscribed.
	a.wantReply("AUTH as acme while subscribed", sub.do("AUTH", acmeID, a.f.acme.password))
	a.wantReply("AUTH as beta while subscribed", sub.do("AUTH", betaID, "x"))
	if r := sub.do("RESET"); r.err != nil || r.v.str != "RESET" {
		a.t.Fatalf("RESET while subscribed: %s", r)
	}
	pub := a.acmeConnFrom(from)
	a.wantReply("acme PUBLISH on its own channel", pub.do("PUBLISH", "own", "after-reset"))
	a.wantReply("acme PUBLISH on its news", pub.do("PUBLISH", betaChannel, "after-reset"))
	a.f.betaActivity(a.t)
	if r := sub.readWithin(200 * time.Millisecond); r.err == nil {
		a.t.Errorf("a connection RESET out of its subscriptions received %s", r)
	}
	a.wantNoAuth("PUBLISH after RESET", sub.do("PUBLISH", "own", "x"))
	a.wantNoAuth("SUBSCRIBE after RESET", sub.do("SUBSCRIBE", betaChannel))

	// RESP3 with tracking: RESET turns it off and logs out.
	tr := a.lobbyConn(from)
	if r := tr.do("HELLO", "3", "AUTH", acmeID, a.f.acme.password); r.err != nil || r.isErr() {
		a.t.Fatalf("HELLO 3 AUTH as acme: %s", r)
	}
	a.wantReply("CLIENT TRACKING ON BCAST", tr.do("CLIENT", "TRACKING", "ON", "BCAST"))
	if r := tr.do("RESET"); r.err != nil || r.v.str != "RESET" {
		a.t.Fatalf("RESET with tracking: %s", r)
	}
	a.wantOK("acme SET its own key", pub.do("SET", acmeOwnKey, acmeOwnValue))
	a.f.betaActivity(a.t)
	if r := tr.readWithin(200 * time.Millisecond); r.err == nil {
		a.t.Errorf("a connection RESET out of client tracking received %s", r)
	}
}

// countingBetaConnections: acme's CLIENT ID, CLIENT LIST, INFO clients and
// DBSIZE do not move while beta opens, uses and closes connections.
func countingBetaConnections(a *act) {
	c := a.conn()
	type view struct {
		list    int
		clients map[string]string
		dbsize  string
	}
	look := func(when string) view {
		a.t.Helper()
		var v view
		r := c.do("CLIENT", "LIST")
		a.wantOK("CLIENT LIST "+when, r)
		v.list = len(strings.Split(strings.TrimSpace(r.v.str), "\n"))
		r = c.do("INFO", "clients")
		a.wantOK("INFO clients "+when, r)
		v.clients = map[string]string{}
		for _, line := range strings.Split(r.v.str, "\n") {
			k, val, ok := strings.Cut(strings.TrimSpace(line), ":")
			// Buffer peaks are acme's own; they may move with its INFO.
			if ok && !strings.Contains(k, "buffer") {
				v.clients[k] = val
			}
		}
		r = c.do("DBSIZE")
		a.wantOK("DBSIZE "+when, r)
		v.dbsize = r.v.str
		return v
	}
	// acme's next id: one connection AUTHs as acme (which gives it a new
	// id of acme's), asks, and RESETs back to the lobby, where acme's
	// CLIENT LIST and INFO clients do not count it.
	idc := a.lobbyConn("")
	id := func(when string) int {
		a.t.Helper()
		a.wantOK("AUTH as acme", idc.do("AUTH", acmeID, a.f.acme.password))
		r := idc.do("CLIENT", "ID")
		n, err := strconv.Atoi(r.v.str)
		if r.err != nil || r.v.typ != ':' || err != nil {
			a.t.Fatalf("CLIENT ID %s: %s", when, r)
		}
		a.wantOK("RESET", idc.do("RESET"))
		return n
	}
	same := func(what string, before, now view) {
		a.t.Helper()
		if now.list != before.list {
			a.t.Errorf("acme's CLIENT LIST %s: %d clients, %d before: it counts beta's", what, now.list, before.list)
		}
		if now.dbsize != before.dbsize {
			a.t.Errorf("acme's DBSIZE %s: %s, %s before: it counts beta's keys", what, now.dbsize, before.dbsize)
		}
		for k, v := range before.clients {
			if now.clients[k] != v {
				a.t.Errorf("acme's INFO clients %s: %s:%s, %s before: it counts beta's", what, k, now.clients[k], v)
			}
		}
	}
	id0 := id("before")
	before := look("before")
	a.t.Logf("acme's view before: CLIENT ID %d, CLIENT LIST %d clients, INFO clients %v, DBSIZE %s", id0, before.list, before.clients, before.dbsize)

	// beta opens connections of every kind: plain, named, blocked,
	// subscribed, some left in the lobby, one logged out by RESET.
	ctx := a.ctx()
	var betas []*rawConn
	defer func() {
		for _, b := range betas {
			_ = b.Close()
		}
	}()
	blockedBefore, err := a.f.blockedClients(ctx)
	if err != nil {
		a.t.Fatal(err)
	}
	for i := range 12 {
		b, err := a.f.dial(a.f.beta)
		if err != nil {
			a.t.Fatalf("beta's connection %d: %v", i, err)
		}
		betas = append(betas, b)
		switch i % 4 {
		case 0:
			a.wantOK("beta CLIENT SETNAME", b.do("CLIENT", "SETNAME", "beta-counted-"+a.f.secret))
			// The key carries the secret: beta's subscriber takes its
			// keyevent for beta's own.
			a.wantOK("beta SET", b.do("SET", countedKey(a.f, i), a.f.secret))
		case 1:
			_ = b.write(encode("BLPOP", "counted-queue-"+strconv.Itoa(i), "0"))
		case 2:
			if r := b.do("SUBSCRIBE", "counted-"+a.f.secret); r.err != nil {
				a.t.Fatalf("beta SUBSCRIBE: %v", r.err)
			}
		case 3:
			a.wantOK("beta RESET", b.do("RESET"))
		}
	}
	for range 4 {
		b, err := dialRaw(a.f.beta.addr)
		if err != nil {
			a.t.Fatal(err)
		}
		betas = append(betas, b)
		a.wantNoAuth("beta's lobby PING", b.do("PING"))
	}
	for deadline := time.Now().Add(opTimeout); ; time.Sleep(5 * time.Millisecond) {
		n, err := a.f.blockedClients(ctx)
		if err != nil {
			a.t.Fatal(err)
		}
		if n >= blockedBefore+3 {
			break
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("beta's BLPOPs never blocked upstream")
		}
	}
	same("while beta has 16 more connections", before, look("while beta has 16 more connections"))
	if got := id("while beta has 16 more connections"); got != id0+1 {
		a.t.Errorf("acme's next CLIENT ID after beta opened 16 connections: %d, want %d (acme's previous + 1): it counts beta's", got, id0+1)
	}

	cleanup := a.f.betaClient(0)
	for i := 0; i < 12; i += 4 {
		if err := cleanup.Del(ctx, countedKey(a.f, i)).Err(); err != nil {
			a.t.Errorf("beta DEL: %v", err)
		}
	}
	clientsBefore := a.f.gw.g.Stats().Clients
	for _, b := range betas {
		_ = b.Close()
	}
	betas = nil
	for deadline := time.Now().Add(opTimeout); a.f.gw.g.Stats().Clients > clientsBefore-16; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			a.t.Fatalf("the gateway still counts %d clients, %d before beta closed 16", a.f.gw.g.Stats().Clients, clientsBefore)
		}
	}
	same("after beta closed them", before, look("after beta closed them"))
	if got := id("after beta closed them"); got != id0+2 {
		a.t.Errorf("acme's next CLIENT ID after beta closed 16 connections: %d, want %d", got, id0+2)
	}
}

func countedKey(f *fence, i int) string { return "counted-" + f.secret + "-" + strconv.Itoa(i) }

// authFailureFlood: acme opens 20 lobby connections from one address and
// pipelines 200 failing AUTHs on them (wrong passwords of beta's, unknown
// tenants, which cost the gateway a full argon2id verification of its
// decoy hash, over-long passwords). Meanwhile beta is served, also from the
// flood's address; the gateway's memory stays bounded; and once acme
// leaves, its lobby sessions and their memory go.
func authFailureFlood(a *act) {
	const (
		conns   = 20
		perConn = 10
		window  = time.Second // how long acme reads the replies it gets
	)
	base := heapInUse()
	from := a.f.freshLoopback()
	var flood []*rawConn
	for range conns {
		flood = append(flood, a.lobbyConn(from))
	}
	start := time.Now()
	for i, c := range flood {
		var req []byte
		for j := range perConn {
			switch n := i*perConn + j; n % 4 {
			case 0:
				req = append(req, encode("AUTH", betaID, "guess-"+strconv.Itoa(n))...)
			case 1:
				req = append(req, encode("AUTH", "nosuch-"+strconv.Itoa(n), "x")...)
			case 2:
				req = append(req, encode("AUTH", betaID, strings.Repeat("g", 1000+n))...)
			case 3:
				req = append(req, encode("HELLO", "3", "AUTH", betaID, "guess-"+strconv.Itoa(n))...)
			}
		}
		if err := c.write(req); err != nil {
			a.t.Fatalf("acme's flood connection %d: %v", i, err)
		}
	}
	// acme reads what comes within the window: every reply is WRONGPASS.
	var mu sync.Mutex
	var wg sync.WaitGroup
	replies, bad := 0, []string{}
	for _, c := range flood {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range perConn {
				r := c.readWithin(time.Until(start.Add(window)))
				if r.err != nil {
					return
				}
				mu.Lock()
				replies++
				if !r.isErr() || r.v.str != errWrongPass {
					bad = append(bad, r.String())
				}
				mu.Unlock()
			}
		}()
	}
	// Meanwhile beta is served: a new connection (AUTH and GET), from
	// another address and from the flood's own.
	time.Sleep(300 * time.Millisecond)
	t0 := time.Now()
	a.betaServed("while acme floods the gateway with failing AUTHs")
	betaLatency := time.Since(t0)
	t0 = time.Now()
	if b, err := dialRawFrom(a.f.beta.addr, from); err != nil {
		a.t.Errorf("beta's connection from the flood's address: %v", err)
	} else {
		if r := b.do("AUTH", betaID, a.f.beta.password); r.err != nil || r.v.str != "OK" {
			a.t.Errorf("beta's AUTH from the flood's address during the flood: %s", r)
		} else if r := b.do("GET", "str"); r.err != nil || r.v.str != a.f.canaryValue(0, "str") {
			a.t.Errorf("beta's GET from the flood's address during the flood: %s", r)
		}
		_ = b.Close()
	}
	sameAddrLatency := time.Since(t0)
	held := heapInUse()
	wg.Wait()
	st := a.f.gw.g.Stats()
	a.t.Logf("flood of %d failing AUTHs on %d connections: %d replies within %v (the rest slowed down); beta served in %v, from the flood's address in %v; heap %d MB before, %d MB during; gateway: %d AUTHs refused, %d lobby connections",
		conns*perConn, conns, replies, window, betaLatency.Round(time.Millisecond), sameAddrLatency.Round(time.Millisecond),
		base>>20, held>>20, st.AuthFailed, st.Lobby)
	for _, b := range bad[:min(len(bad), 3)] {
		a.t.Errorf("a failing AUTH of the flood got %s, want %q (%d such)", b, errWrongPass, len(bad))
	}
	if replies >= conns*perConn {
		a.t.Errorf("all %d failing AUTHs from one address were answered within %v: the gateway does not slow down repeated failures", replies, window)
	}
	// A generous bound: the gateway holds a few KB per connection and
	// one argon2id verification (19 MiB) per AUTH slot.
	if held > base+64<<20 {
		a.t.Errorf("heap grew from %d MB to %d MB during a flood of 200 failing AUTHs", base>>20, held>>20)
	}
	for _, c := range flood {
		_ = c.Close()
	}
	// The flood's sessions leave the lobby once acme left.
	lobbyDeadline := time.Now().Add(settle)
	t0 = time.Now()
	for a.f.gw.g.Stats().Lobby > 0 && time.Now().Before(lobbyDeadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := a.f.gw.g.Stats().Lobby; n > 0 {
		a.t.Errorf("%d lobby sessions remain %v after acme closed its flood connections", n, settle)
	} else {
		a.t.Logf("the lobby emptied %v after acme closed its flood connections", time.Since(t0).Round(time.Millisecond))
	}
	a.heapReturns("a flood of 200 failing AUTHs", base)
	a.betaServed("after acme's AUTH flood")
}
