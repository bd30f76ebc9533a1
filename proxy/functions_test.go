package proxy

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/rewrite"
)

// Redis 7 functions per tenant, against an unrestricted upstream user:
// keyfence, not the ACL, is the fence. Each test has a Redis of its own,
// as it looks at (and flushes) upstream's libraries.

// fnTenant is one tenant's raw connection to its keyfence.
type fnTenant struct {
	t  *testing.T
	id string
	c  *rawConn
}

func (f *fnTenant) do(args ...string) string {
	f.t.Helper()
	return string(f.c.do(f.t, args...))
}

// want runs args and fails unless the reply is want.
func (f *fnTenant) want(want string, args ...string) {
	f.t.Helper()
	if got := f.do(args...); got != want {
		f.t.Errorf("%s: %.80q: got %q, want %q", f.id, args, got, want)
	}
}

// wantPrefix runs args and fails unless the reply starts with prefix.
func (f *fnTenant) wantPrefix(prefix string, args ...string) {
	f.t.Helper()
	if got := f.do(args...); !strings.HasPrefix(got, prefix) {
		f.t.Errorf("%s: %.80q: got %q, want %q…", f.id, args, got, prefix)
	}
}

func startFnTenant(t *testing.T, up *redistest.Server, id string, mutate func(*Config)) *fnTenant {
	addr := startProxy(t, up, func(c *Config) {
		c.Tenant = id
		if mutate != nil {
			mutate(c)
		}
	})
	return &fnTenant{t: t, id: id, c: dialRaw(t, addr)}
}

// upstreamLibraries are the names of upstream's own function libraries.
func upstreamLibraries(t *testing.T, up *redistest.Server) []string {
	t.Helper()
	v, err := up.Client().Do(context.Background(), "FUNCTION", "LIST").Slice()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range v {
		switch fields := l.(type) {
		case []any: // RESP2
			names = append(names, fields[1].(string))
		case map[any]any: // RESP3
			names = append(names, fields["library_name"].(string))
		}
	}
	return names
}

func fnLib(name, body string) string { return "#!lua name=" + name + "\n" + body }

func TestFunctionsIsolation(t *testing.T) {
	t.Parallel()
	up := redistest.StartT(t, redistest.Options{})
	a := startFnTenant(t, up, "fna", nil)
	b := startFnTenant(t, up, "fnb", nil)

	// Both load a library and a function of the same names.
	counter := "local n = 0\nredis.register_function('fn', function(keys, args) n = n + 1 redis.call('SET', keys[1], args[1]) return {redis.call('GET', keys[1]), n} end)"
	a.want("$3\r\nlib\r\n", "FUNCTION", "LOAD", fnLib("lib", counter))
	b.want("$3\r\nlib\r\n", "FUNCTION", "LOAD", fnLib("lib", counter))
	a.want("$3\r\nlib\r\n", "FUNCTION", "LOAD", "REPLACE", fnLib("lib", counter)) // its state starts again
	a.want("*2\r\n$2\r\nva\r\n:1\r\n", "FCALL", "fn", "1", "k", "va")
	a.want("*2\r\n$2\r\nva\r\n:2\r\n", "FCALL", "fn", "1", "k", "va")
	b.want("*2\r\n$2\r\nvb\r\n:1\r\n", "FCALL", "fn", "1", "k", "vb") // its own library state
	a.want("*2\r\n$2\r\nva\r\n:3\r\n", "FCALL", "fn", "1", "k", "va")

	// A function's keys are the tenant's own.
	ctx := context.Background()
	for id, v := range map[string]string{"fna": "va", "fnb": "vb"} {
		if got := up.Client().Get(ctx, "tenant:"+id+":k").Val(); got != v {
			t.Errorf("tenant:%s:k = %q, want %q", id, got, v)
		}
	}
	if n := up.Client().Exists(ctx, "k").Val(); n != 0 {
		t.Errorf("an unprefixed key was written")
	}

	// What only a has, b cannot reach by any name.
	a.want("$5\r\nonlya\r\n", "FUNCTION", "LOAD", fnLib("onlya", "redis.register_function('secret', function() return 'a-secret' end)"))
	b.want("-ERR Function not found\r\n", "FCALL", "secret", "0")
	b.want("-ERR Function not found\r\n", "FCALL_RO", "secret", "0")
	b.want("-ERR Library not found\r\n", "FUNCTION", "DELETE", "onlya")
	for _, args := range [][]string{{"FUNCTION", "LIST"}, {"FUNCTION", "LIST", "WITHCODE"}, {"FUNCTION", "LIST", "LIBRARYNAME", "*"}, {"FUNCTION", "DUMP"}, {"FUNCTION", "STATS"}, {"INFO", "memory"}} {
		if got := b.do(args...); strings.Contains(got, "secret") || strings.Contains(got, "onlya") || strings.Contains(got, "fna") {
			t.Errorf("b's %v shows a's library: %q", args, got)
		}
	}
	b.wantPrefix("*1\r\n", "FUNCTION", "LIST")
	b.want("*4\r\n$14\r\nrunning_script\r\n$-1\r\n$7\r\nengines\r\n*2\r\n$3\r\nLUA\r\n*4\r\n$15\r\nlibraries_count\r\n:1\r\n$15\r\nfunctions_count\r\n:1\r\n", "FUNCTION", "STATS")
	a.want("*4\r\n$14\r\nrunning_script\r\n$-1\r\n$7\r\nengines\r\n*2\r\n$3\r\nLUA\r\n*4\r\n$15\r\nlibraries_count\r\n:2\r\n$15\r\nfunctions_count\r\n:2\r\n", "FUNCTION", "STATS")

	// b's replacing, restoring and flushing leave a's alone.
	b.want("$3\r\nlib\r\n", "FUNCTION", "LOAD", "REPLACE", fnLib("lib", "redis.register_function('fn', function() return 'b-replaced' end)"))
	a.want("*2\r\n$2\r\nva\r\n:4\r\n", "FCALL", "fn", "1", "k", "va")
	dumpA := mustRV(t, a.c.do(t, "FUNCTION", "DUMP")).str
	b.want("+OK\r\n", "FUNCTION", "RESTORE", dumpA, "FLUSH") // a's code, now b's own
	b.want("$8\r\na-secret\r\n", "FCALL", "secret", "0")
	b.want("+OK\r\n", "FUNCTION", "FLUSH")
	b.want("*0\r\n", "FUNCTION", "LIST")
	b.want("-ERR Function not found\r\n", "FCALL", "fn", "0")
	a.want("$8\r\na-secret\r\n", "FCALL", "secret", "0")
	a.want("*2\r\n$2\r\nva\r\n:5\r\n", "FCALL", "fn", "1", "k", "va")
	a.wantPrefix("*2\r\n", "FUNCTION", "LIST")

	// Upstream holds keyfence's sandbox library only.
	if libs := upstreamLibraries(t, up); len(libs) != 1 || !strings.HasPrefix(libs[0], "keyfence_") {
		t.Errorf("upstream libraries: %q", libs)
	}
}

// TestFunctionsCannotEscape loads libraries that try to reach beyond the
// sandbox, at load time and when run, and payloads crafted for RESTORE.
func TestFunctionsCannotEscape(t *testing.T) {
	t.Parallel()
	up := redistest.StartT(t, redistest.Options{})
	ctx := context.Background()
	if err := up.Client().Set(ctx, "tenant:other:k", "other-secret", 0).Err(); err != nil {
		t.Fatal(err)
	}
	a := startFnTenant(t, up, "esc", func(c *Config) { c.ScriptTimeout = 300 * time.Millisecond })

	// At load time a library sees only redis.register_function and log.
	for _, body := range []string{
		"getfenv(1)", "setfenv(1, {})", "local d = debug", "loadstring('return 1')", "string.dump(print)",
		"rawset(redis, 'call', 1)", "local g = _G", "getmetatable('').__index.x = 1", "redis.call('FLUSHALL')",
		"redis.pcall('GET', 'k')", "local s = redis.sha1hex", "KEYS = 1", "__kf_E = 1", "redis.register_function = 1",
	} {
		got := a.do("FUNCTION", "LOAD", fnLib("bad", body+"\nredis.register_function('f', function() end)"))
		if !strings.HasPrefix(got, "-ERR Error registering functions: ") && !strings.HasPrefix(got, "-ERR Error compiling") &&
			!strings.HasPrefix(got, "-ERR keyfence:") {
			t.Errorf("load-time %q: %q", body, got)
		}
	}

	// At run time it has the sandbox's environment: nothing beyond the tenant.
	escapes := map[string]string{
		"fenv":     "return getfenv(1)",
		"debug":    "return debug.getinfo(1)",
		"rawset":   "rawset(redis, 'call', function() return 'x' end) return 'set'",
		"rawsetg":  "rawset(_G, 'x', 1) return 'set'",
		"setmt":    "setmetatable(_G, {}) return 'set'",
		"load":     "return loadstring('return 1')()",
		"dump":     "local f = loadstring(string.dump(function() return 1 end)) return f and f() or 'nil'",
		"keys":     "return redis.call('KEYS', '*')",
		"scan":     "return redis.call('SCAN', '0')",
		"flushall": "return redis.call('FLUSHALL')",
		"select":   "return redis.call('SELECT', '1')",
		"fcall":    "return redis.call('FCALL', '" + rewrite.NewSandbox().FunctionRun(0) + "', 0, 'tenant:other:', '{keyfence}:functions:tenant:other:', '0', '0', 'f', '1000', '1024')",
		"fload":    "return redis.call('FUNCTION', 'LOAD', '#!lua name=x\\nredis.register_function(\\'x\\', function() end)')",
		"eval":     "return redis.call('EVAL', 'return 1', 0)",
		"store":    "return redis.call('HGETALL', '{keyfence}:functions:tenant:esc:')",
		"other":    "return redis.call('GET', 'tenant:other:k')",
		"late":     "return LATE('x', function() end)",
		"lr":       "return LR.call('GET', 'tenant:other:k')",
		"lrset":    "rawset(LR, 'x', 'leak') return 'set'",
		"keysg":    "return KEYS",
		"runaway":  "while true do end",
	}
	var lib strings.Builder
	lib.WriteString("local LATE = redis.register_function\nlocal LR = redis\n")
	for name, code := range escapes {
		fmt.Fprintf(&lib, "redis.register_function('%s', function(keys, args) %s end)\n", name, code)
	}
	a.want("$3\r\nesc\r\n", "FUNCTION", "LOAD", fnLib("esc", lib.String()))
	for name := range escapes {
		got := a.do("FCALL", name, "0")
		switch {
		case name == "other" || name == "store":
			if got != "$-1\r\n" && got != "*0\r\n" {
				t.Errorf("%s: %q, want nothing (the key is the tenant's own, prefixed)", name, got)
			}
		case name == "dump":
			if got != "$3\r\nnil\r\n" && !strings.HasPrefix(got, "-") {
				t.Errorf("%s: a binary chunk loaded: %q", name, got)
			}
		case !strings.HasPrefix(got, "-"):
			t.Errorf("%s: ran: %q", name, got)
		}
		t.Logf("%s: %q", name, got)
		if strings.Contains(got, "other-secret") {
			t.Errorf("%s: %q shows another tenant's value", name, got)
		}
	}
	// The runaway was stopped at keyfence's budget, and everything works.
	a.want("+PONG\r\n", "PING")
	if got := up.Client().Get(ctx, "tenant:other:k").Val(); got != "other-secret" {
		t.Errorf("another tenant's key: %q", got)
	}
	if libs := upstreamLibraries(t, up); len(libs) != 1 || !strings.HasPrefix(libs[0], "keyfence_") {
		t.Errorf("upstream libraries: %q", libs)
	}
	if n := up.Client().HLen(ctx, "tenant:esc:{keyfence}:functions:tenant:esc:").Val(); n != 0 {
		t.Errorf("the library reached a key outside the tenant")
	}

	// A crafted payload only carries library code, which runs sandboxed.
	evil := rewrite.AppendFunctionDump(nil, [][]byte{
		[]byte(fnLib("evil", "redis.register_function('evil', function() return redis.call('GET', 'tenant:other:k') end)")),
		[]byte(fnLib("keyfence_x", "redis.register_function('"+rewrite.NewSandbox().FunctionRun(0)+"', function() return 'mine' end)")),
	})
	a.want("+OK\r\n", "FUNCTION", "RESTORE", string(evil))
	a.want("$-1\r\n", "FCALL", "evil", "0")
	a.want("$4\r\nmine\r\n", "FCALL", rewrite.NewSandbox().FunctionRun(0), "0")
	a.want("-ERR Error registering functions: ERR user_function:2: Script attempted to access nonexistent global variable 'getfenv'\r\n",
		"FUNCTION", "RESTORE", string(rewrite.AppendFunctionDump(nil, [][]byte{[]byte(fnLib("loadtime", "getfenv(0)"))})), "FLUSH")
	a.wantPrefix("*1\r\n*6\r\n$12\r\nlibrary_name\r\n$3\r\nesc\r\n", "FUNCTION", "LIST", "LIBRARYNAME", "esc") // nothing changed
	for _, body := range []string{
		"\xf5\xc5\x05", // an unknown string encoding
		"\xf5\x81\xff\xff\xff\xff\xff\xff\xff\xff",     // a length past the payload
		"\xf5\xc3\x05\x81\x7f\xff\xff\xff\xff\xff\xff", // LZF of an absurd length
		"\xf5\xc3\x02\x05\x01ab",                       // LZF that does not decompress
		"\x07\x01x",                                    // not a function
	} {
		// Sealed with a valid footer: Redis 7.0 itself exits on some of
		// these (an unknown string encoding).
		a.wantPrefix("-ERR ", "FUNCTION", "RESTORE", string(rewrite.SealFunctionDump([]byte(body))))
	}
	// The sandbox library still runs everyone's scripts.
	a.want(":1\r\n", "EVAL", "return 1", "0")
}

// TestFunctionsSharedByKeyfences: two keyfences of one tenant see the same
// functions, whatever either changes, and both heal when upstream loses its
// Lua state (a restart: DEBUG RELOAD here) or its libraries (an operator's
// FUNCTION FLUSH).
func TestFunctionsSharedByKeyfences(t *testing.T) {
	t.Parallel()
	up := redistest.StartT(t, redistest.Options{Args: []string{"--enable-debug-command", "yes"}})
	p1 := startFnTenant(t, up, "shared", nil)
	p2 := startFnTenant(t, up, "shared", nil)
	p1.want("$2\r\nsh\r\n", "FUNCTION", "LOAD", fnLib("sh", "redis.register_function('f', function(keys, args) return redis.call('SET', keys[1], args[1]) end)"))
	p2.want("+OK\r\n", "FCALL", "f", "1", "k", "v")
	p2.want("-ERR Can not execute a script with write flag using *_ro command.\r\n", "FCALL_RO", "f", "1", "k", "v")
	// p1 makes f read-only: p2 learns its new flags at the next call.
	p1.want("$2\r\nsh\r\n", "FUNCTION", "LOAD", "REPLACE", fnLib("sh", "redis.register_function{function_name='f', callback=function(keys) return redis.call('GET', keys[1]) end, flags={'no-writes'}}"))
	p2.want("$1\r\nv\r\n", "FCALL_RO", "f", "1", "k", "v")
	p2.want("$1\r\nv\r\n", "FCALL", "f", "1", "k")
	p2.want("+OK\r\n", "FUNCTION", "DELETE", "sh")
	p1.want("-ERR Function not found\r\n", "FCALL", "f", "1", "k")
	p1.want("*0\r\n", "FUNCTION", "LIST")

	p2.want("$2\r\nsh\r\n", "FUNCTION", "LOAD", fnLib("sh", "local n = 0\nredis.register_function('g', function() n = n + 1 return n end)"))
	p1.want(":1\r\n", "FCALL", "g", "0")
	p2.want(":2\r\n", "FCALL", "g", "0") // one library state upstream, as in Redis
	ctx := context.Background()
	if err := up.Client().Do(ctx, "DEBUG", "RELOAD").Err(); err != nil {
		t.Fatal(err)
	}
	p1.want(":1\r\n", "FCALL", "g", "0") // rebuilt from the store, as Redis reloads a library
	p2.want(":2\r\n", "FCALL", "g", "0")
	if err := up.Client().Do(ctx, "FUNCTION", "FLUSH").Err(); err != nil {
		t.Fatal(err)
	}
	p2.want(":1\r\n", "FCALL", "g", "0")
	if err := up.Client().Do(ctx, "FUNCTION", "FLUSH").Err(); err != nil {
		t.Fatal(err)
	}
	p1.wantPrefix("*1\r\n*6\r\n$12\r\nlibrary_name\r\n$2\r\nsh\r\n", "FUNCTION", "LIST")
	p1.want(":1\r\n", "FCALL", "g", "0")
}

// TestFunctionsLimits: a tenant's libraries are bounded in number and in
// bytes of code, in keyfence and upstream.
func TestFunctionsLimits(t *testing.T) {
	t.Parallel()
	up := redistest.StartT(t, redistest.Options{})
	a := startFnTenant(t, up, "lim", func(c *Config) {
		c.MaxFunctionLibraries = 3
		c.MaxFunctionBytes = 400
	})
	for i := range 3 {
		a.wantPrefix("$", "FUNCTION", "LOAD", fnLib(fmt.Sprintf("l%d", i), fmt.Sprintf("redis.register_function('f%d', function() return 1 end)", i)))
	}
	a.wantPrefix("-ERR keyfence: the tenant's function libraries would pass keyfence's limits (--max-function-libraries 3",
		"FUNCTION", "LOAD", fnLib("l3", "redis.register_function('f3', function() return 1 end)"))
	a.wantPrefix("$", "FUNCTION", "LOAD", "REPLACE", fnLib("l2", "redis.register_function('f2', function() return 2 end)"))
	a.wantPrefix("-ERR keyfence: the tenant's function libraries would pass keyfence's limits", "FUNCTION", "LOAD", "REPLACE",
		fnLib("l2", "redis.register_function('f2', function() return 2 end) -- "+strings.Repeat("x", 300)))
	a.want("+OK\r\n", "FUNCTION", "DELETE", "l0")
	a.wantPrefix("$", "FUNCTION", "LOAD", fnLib("l3", "redis.register_function('f3', function() return 1 end)"))
	many := make([][]byte, 4)
	for i := range many {
		many[i] = []byte(fnLib(fmt.Sprintf("m%d", i), fmt.Sprintf("redis.register_function('m%d', function() end)", i)))
	}
	a.wantPrefix("-ERR keyfence: the payload holds 4 function libraries", "FUNCTION", "RESTORE", string(rewrite.AppendFunctionDump(nil, many)), "FLUSH")
	a.want("+OK\r\n", "FUNCTION", "RESTORE", string(rewrite.AppendFunctionDump(nil, many[:3])), "FLUSH")
	a.wantPrefix("*3\r\n", "FUNCTION", "LIST")
	if n := up.Client().HLen(context.Background(), rewrite.FunctionStoreKey("tenant:lim:")).Val(); n != 4 { // 3 + #gen
		t.Errorf("the store holds %d fields, want 4", n)
	}
}

// TestFunctionsAcrossDatabases: functions, like Redis's, belong to no
// database; their keys are those of the database the FCALL runs in, a
// SELECT queued in MULTI included.
func TestFunctionsAcrossDatabases(t *testing.T) {
	t.Parallel()
	up := redistest.StartT(t, redistest.Options{})
	a := startFnTenant(t, up, "dbs", nil)
	a.want("+OK\r\n", "SELECT", "3")
	a.want("$2\r\nkv\r\n", "FUNCTION", "LOAD", fnLib("kv", "redis.register_function('put', function(keys, args) return redis.call('SET', keys[1], args[1]) end)"))
	a.want("+OK\r\n", "FCALL", "put", "1", "k", "in3")
	a.want("+OK\r\n", "SELECT", "0")
	a.wantPrefix("*1\r\n", "FUNCTION", "LIST")
	a.want("+OK\r\n", "FCALL", "put", "1", "k", "in0")
	a.want("+OK\r\n", "MULTI")
	a.want("+QUEUED\r\n", "SELECT", "4")
	a.want("+QUEUED\r\n", "FCALL", "put", "1", "k", "in4")
	a.want("*2\r\n+OK\r\n+OK\r\n", "EXEC")
	a.want("+OK\r\n", "FCALL", "put", "1", "k2", "in4")
	ctx := context.Background()
	for db, want := range map[int]string{0: "in0", 3: "in3", 4: "in4"} {
		c := directDB(t, up, db)
		if got := c.Get(ctx, "tenant:dbs:k").Val(); got != want {
			t.Errorf("db %d: tenant:dbs:k = %q, want %q", db, got, want)
		}
	}
	if got := directDB(t, up, 4).Get(ctx, "tenant:dbs:k2").Val(); got != "in4" {
		t.Errorf("after EXEC the session is in db 4: tenant:dbs:k2 = %q", got)
	}
	if n := directDB(t, up, 3).Exists(ctx, rewrite.FunctionStoreKey("tenant:dbs:")).Val(); n != 0 {
		t.Errorf("the store is in db 3, where the library was loaded; it belongs in the base database")
	}
	if n := directDB(t, up, 0).Exists(ctx, rewrite.FunctionStoreKey("tenant:dbs:")).Val(); n != 1 {
		t.Errorf("the store is not in the base database")
	}
}
