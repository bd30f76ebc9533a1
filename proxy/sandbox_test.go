package proxy

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/rewrite"
)

// twoTenants starts two keyfences, attacker and victim, on a redis-server of
// their own with the unrestricted default user upstream, so that keyfence
// alone holds the fence; the victim owns a few keys of every kind.
func twoTenants(t *testing.T, mutate func(*Config)) (up *redistest.Server, attacker, victim string) {
	t.Helper()
	up = redistest.StartT(t, redistest.Options{})
	attacker = startProxy(t, up, func(c *Config) {
		c.Tenant = "acme"
		if mutate != nil {
			mutate(c)
		}
	})
	victim = startProxy(t, up, func(c *Config) { c.Tenant = "beta" })
	v := dialRaw(t, victim)
	for _, cmd := range [][]string{
		{"SET", "secret", "beta-secret-value"},
		{"HSET", "h", "f", "beta-hash-value"},
		{"RPUSH", "l", "beta-list-value"},
		{"XADD", "s", "1-1", "f", "beta-stream-value"},
		{"XGROUP", "CREATE", "s", "g", "0"},
	} {
		if r := v.do(t, cmd...); strings.HasPrefix(string(r), "-") {
			t.Fatalf("victim %v: %s", cmd, r)
		}
	}
	return up, attacker, victim
}

// victimIntact checks, from upstream's own view, that the victim's keys
// are as it wrote them and that nothing exists outside the two tenants.
func victimIntact(t *testing.T, up *redistest.Server) {
	t.Helper()
	ctx := testCtx(t)
	c := up.Client()
	if v, err := c.Get(ctx, "tenant:beta:secret").Result(); err != nil || v != "beta-secret-value" {
		t.Errorf("victim's string: %q %v", v, err)
	}
	if v, err := c.HGet(ctx, "tenant:beta:h", "f").Result(); err != nil || v != "beta-hash-value" {
		t.Errorf("victim's hash: %q %v", v, err)
	}
	if v, err := c.LRange(ctx, "tenant:beta:l", 0, -1).Result(); err != nil || len(v) != 1 {
		t.Errorf("victim's list: %q %v", v, err)
	}
	if g, err := c.XInfoGroups(ctx, "tenant:beta:s").Result(); err != nil || len(g) != 1 || g[0].Pending != 0 || g[0].LastDeliveredID != "0-0" {
		t.Errorf("victim's stream group: %+v %v", g, err)
	}
	keys, err := c.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, "tenant:acme:") && !strings.HasPrefix(k, "tenant:beta:") {
			t.Errorf("key %q outside both tenants", k)
		}
	}
}

// The routes out of the old wrapper, and every other one we could think
// of: each script runs through the attacker's keyfence, and none may read,
// change or list the victim's data.
func TestSandboxEscapes(t *testing.T) {
	t.Parallel()
	up, attacker, _ := twoTenants(t, nil)
	a := dialRaw(t, attacker)
	escapes := []struct{ name, script string }{
		{"prelude local", "return __kf_R.call('GET', 'tenant:beta:secret')"},
		{"global table", "return _G.redis.call('GET', 'tenant:beta:secret')"},
		{"rawget global", "return rawget(_G, 'redis').call('GET', 'tenant:beta:secret')"},
		{"metatable of redis", "local m = getmetatable(redis) return m and m.__index.call('GET', 'tenant:beta:secret')"},
		{"metatable of _G", "local m = getmetatable(_G) return m and m.__index.redis.call('GET', 'tenant:beta:secret')"},
		{"loadstring", "return loadstring('return redis')().call('GET', 'tenant:beta:secret')"},
		{"load", "return load(function() return nil end)"},
		{"getfenv", "return getfenv(0).redis.call('GET', 'tenant:beta:secret')"},
		{"setfenv", "setfenv(1, {}) return 1"},
		{"debug", "return debug.getupvalue(redis.call, 1)"},
		{"string.dump", "return loadstring(string.dump(function() return redis end))"},
		{"flushall", "return redis.call('FLUSHALL')"},
		{"flushdb", "return redis.call('FLUSHDB')"},
		{"computed flushall", "return redis.call(string.lower('FLUSH') .. 'all')"},
		{"pcall flushall", "return pcall(redis.call, 'FLUSHALL')"},
		{"unpack keys", "return redis.call(unpack({'KEYS', '*'}))"},
		{"scan", "return redis.call('SCAN', 0, 'COUNT', 1000)"},
		{"randomkey", "return redis.call('RANDOMKEY')"},
		{"dbsize", "return redis.call('DBSIZE')"},
		{"info", "return redis.call('INFO', 'keyspace')"},
		{"slowlog", "return redis.call('SLOWLOG', 'GET')"},
		{"pubsub channels", "return redis.call('PUBSUB', 'CHANNELS')"},
		{"swapdb", "return redis.call('SWAPDB', 0, 1)"},
		{"select", "return redis.call('SELECT', 1)"},
		{"move", "return redis.call('MOVE', 'x', 1)"},
		{"config", "return redis.call('CONFIG', 'GET', '*')"},
		{"client list", "return redis.call('CLIENT', 'LIST')"},
		{"memory stats", "return redis.call('MEMORY', 'STATS')"},
		{"script flush", "return redis.call('SCRIPT', 'FLUSH')"},
		{"fcall", "return redis.call('FCALL', 'x', 0)"},
		{"eval nesting", "return redis.call('EVAL', 'return 1', 0)"},
		{"full name as key", "return redis.call('GET', 'tenant:beta:secret')"},
		{"full name via KEYS", "return redis.call('GET', KEYS[1])"},
		{"full name via ARGV", "return redis.call('GET', ARGV[1])"},
		{"del victim", "return redis.call('DEL', 'tenant:beta:secret')"},
		{"xreadgroup victim", "return redis.call('XREADGROUP', 'GROUP', 'g', 'c', 'STREAMS', 'tenant:beta:s', '>')"},
		{"xautoclaim victim", "return redis.call('XAUTOCLAIM', 'tenant:beta:s', 'g', 'c', 0, '0-0')"},
		{"sort by pattern", "return redis.call('SORT', 'l', 'BY', 'tenant:beta:*')"},
		{"object freq", "return redis.call('OBJECT', 'FREQ', 'tenant:beta:secret')"},
		{"keyevent publish", "return redis.call('PUBLISH', '__keyevent@0__:set', 'tenant:beta:secret')"},
		{"publish to victim", "return redis.call('PUBLISH', 'tenant:beta:news', 'forged')"},
		{"close the chunk", "return 1 end; redis.call('FLUSHALL') local function x()"},
		{"close with long string", "return [[ ]] end redis.call('FLUSHALL') --[["},
		{"reserved name", "local __kf_E = {} return 1"},
		{"top-level varargs", "local env = ... return type(env) == 'table' and env.redis"},
		{"rawset _G", "rawset(_G, 'redis', nil) return 1"},
		{"coroutine escape", "local co = coroutine.create(function() return _G.redis.call('FLUSHALL') end) return {coroutine.resume(co)}"},
		{"string metatable", "local m = getmetatable('') m.__index = function() return 1 end return 1"},
		{"persist across runs", "coroutine.x = 1 return 1"},
		{"redis table write", "redis.call = function() end return 1"},
		{"acl_check_cmd", "return redis.acl_check_cmd('FLUSHALL')"},
		{"restore payload", "return redis.call('RESTORE', 'k', 0, ARGV[1])"},
	}
	for _, e := range escapes {
		r := a.do(t, "EVAL", e.script, "1", "tenant:beta:secret", "tenant:beta:secret")
		if strings.Contains(string(r), "beta-") {
			t.Errorf("%s: the attacker read the victim's data: %s", e.name, r)
		}
		t.Logf("%-22s → %.140s", e.name, strings.TrimSpace(string(r)))
	}
	if r := a.do(t, "EVAL", "return redis.call('RESTORE', 'k', 0, 'x')", "0"); !strings.Contains(string(r), "not allowed inside scripts") {
		t.Errorf("RESTORE inside a script: %s", r)
	}
	victimIntact(t, up)
	// What the attacker wrote stayed in its own namespace.
	r := a.do(t, "EVAL", "return redis.call('SET', 'tenant:beta:secret', 'pwned')", "0")
	if string(r) != "+OK\r\n" {
		t.Fatalf("SET in own namespace: %s", r)
	}
	if v, _ := up.Client().Get(testCtx(t), "tenant:acme:tenant:beta:secret").Result(); v != "pwned" {
		t.Errorf("attacker's write did not land under its own prefix: %q", v)
	}
	victimIntact(t, up)
	t.Logf("%d escape attempts, victim untouched", len(escapes)+1)
}

// A runaway script is stopped by keyfence, before and after it has
// written, and the other tenant's commands meanwhile are delayed at most
// by the script budget — not blocked until SHUTDOWN NOSAVE.
func TestSandboxStopsRunawayScripts(t *testing.T) {
	t.Parallel()
	const budget = 300 * time.Millisecond
	up, attacker, victim := twoTenants(t, func(c *Config) { c.ScriptTimeout = budget })
	a := dialRaw(t, attacker)
	const stopped = "-ERR keyfence: script stopped"
	for _, tc := range []struct{ name, script, want string }{
		{"loop", "while true do end", stopped},
		{"loop after a write", "redis.call('SET', KEYS[1], 'written') while true do end", stopped},
		{"loop catching errors", "while true do pcall(function() while true do end end) end", stopped},
		{"loop in xpcall handler", "xpcall(function() while true do end end, function() while true do end end) while true do end", stopped},
		// Returned calls are ordinary calls in the sandbox (so that errors
		// name the caller's line): endless tail recursion overflows.
		{"tail-call recursion", "local function f() return f() end return f()", "stack overflow"},
		{"coroutine loop", "local co = coroutine.wrap(function() while true do end end) co()", stopped},
		{"repeat", "repeat until false", stopped},
		{"memory", "local s = 'x' while true do s = s .. s end", stopped},
	} {
		var wg sync.WaitGroup
		var maxLatency time.Duration
		var victimErr error
		stop := make(chan struct{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := dialRawE(victim)
			if err != nil {
				victimErr = err
				return
			}
			defer v.nc.Close()
			for i := 0; i < 1000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				t0 := time.Now()
				r, err := v.doE("GET", "secret")
				if err != nil {
					victimErr = err
					return
				}
				if string(r) != "$17\r\nbeta-secret-value\r\n" {
					victimErr = fmt.Errorf("victim's GET during %s: %q", tc.name, r)
					return
				}
				maxLatency = max(maxLatency, time.Since(t0))
				time.Sleep(5 * time.Millisecond)
			}
		}()
		time.Sleep(20 * time.Millisecond)
		t0 := time.Now()
		r := a.do(t, "EVAL", tc.script, "1", "k")
		took := time.Since(t0)
		time.Sleep(50 * time.Millisecond)
		close(stop)
		wg.Wait()
		if victimErr != nil {
			t.Errorf("%s: %v", tc.name, victimErr)
		}
		if !strings.Contains(string(r), tc.want) {
			t.Errorf("%s: %s", tc.name, r)
		}
		t.Logf("%-24s stopped after %v; the other tenant's slowest GET meanwhile: %v", tc.name, took.Round(time.Millisecond), maxLatency.Round(time.Millisecond))
		if r, err := up.Client().Ping(testCtx(t)).Result(); err != nil || r != "PONG" {
			t.Fatalf("%s: upstream after the script: %q %v", tc.name, r, err)
		}
	}
	if v, _ := up.Client().Get(testCtx(t), "tenant:acme:k").Result(); v != "written" {
		t.Errorf("the write made before the runaway loop: %q", v)
	}
	victimIntact(t, up)
}

// Distinct scripts are capped per tenant, and running many of them leaves
// upstream's script cache as it was: scripts run through one library.
func TestSandboxBoundsScripts(t *testing.T) {
	t.Parallel()
	up := redistest.StartT(t, redistest.Options{})
	addr := startProxy(t, up, func(c *Config) { c.MaxScripts = 5 })
	c := dialRaw(t, addr)
	for i := 0; i < 5; i++ {
		if r := c.do(t, "EVAL", "return "+strconv.Itoa(i), "0"); string(r) != ":"+strconv.Itoa(i)+"\r\n" {
			t.Fatalf("script %d: %s", i, r)
		}
	}
	if r := c.do(t, "EVAL", "return 6", "0"); !strings.Contains(string(r), "--max-scripts") {
		t.Fatalf("sixth distinct script: %s", r)
	}
	if r := c.do(t, "EVAL", "return 0", "0"); string(r) != ":0\r\n" {
		t.Fatalf("a known script past the cap: %s", r)
	}
	c.do(t, "SCRIPT", "FLUSH")
	if r := c.do(t, "EVAL", "return 6", "0"); string(r) != ":6\r\n" {
		t.Fatalf("after SCRIPT FLUSH: %s", r)
	}

	// Large scripts: the text a tenant's scripts hold is bounded too.
	big := startProxy(t, up, func(c *Config) { c.Tenant = "big" })
	b := dialRaw(t, big)
	filler := strings.Repeat("-- padding that Lua compiles quickly\n", (rewrite.MaxScriptBytes-64)/37)
	loaded := 0
	for i := 0; i < maxScriptBytes/len(filler)+2; i++ {
		r := b.do(t, "EVAL", filler+"return "+strconv.Itoa(i), "0")
		if strings.Contains(string(r), "MiB of script text") {
			break
		}
		if string(r) != ":"+strconv.Itoa(i)+"\r\n" {
			t.Fatalf("large script %d: %.200s", i, r)
		}
		loaded++
	}
	if want := maxScriptBytes / len(filler); loaded != want {
		t.Errorf("%d scripts of %d bytes loaded before the refusal, want %d (%d bytes of text at most)", loaded, len(filler), want, maxScriptBytes)
	}
	t.Logf("scripts of %d KiB: %d loaded, the next refused", len(filler)>>10, loaded)

	// Many distinct scripts: upstream's EVAL cache does not grow at all.
	many := startProxy(t, up, func(c *Config) { c.Tenant = "many"; c.MaxScripts = 100000 })
	m := dialRaw(t, many)
	ctx := context.Background()
	before := up.InfoInt(t, "memory", "used_memory_vm_eval")
	fnBefore := up.InfoInt(t, "memory", "used_memory_vm_functions")
	const n = 5000
	var req []byte
	for i := 0; i < n; i++ {
		req = encode(req, "EVAL", "return "+strconv.Itoa(i), "0")
	}
	m.write(t, req)
	for i := 0; i < n; i++ {
		if r := m.read(t); string(r) != ":"+strconv.Itoa(i)+"\r\n" {
			t.Fatalf("script %d: %s", i, r)
		}
	}
	after := up.InfoInt(t, "memory", "used_memory_vm_eval")
	fnAfter := up.InfoInt(t, "memory", "used_memory_vm_functions")
	scripts, _ := up.Client().Info(ctx, "memory").Result()
	t.Logf("%d distinct EVALs: upstream used_memory_vm_eval %d → %d bytes, used_memory_vm_functions %d → %d bytes", n, before, after, fnBefore, fnAfter)
	if after != before {
		t.Errorf("upstream's EVAL memory grew from %d to %d: scripts must not be loaded one by one", before, after)
	}
	if !strings.Contains(scripts, "number_of_cached_scripts:0") {
		t.Errorf("upstream cached EVAL scripts: %s", grepLine(scripts, "number_of_cached_scripts"))
	}
}

func grepLine(text, prefix string) string {
	for _, l := range strings.Split(text, "\r\n") {
		if strings.HasPrefix(l, prefix+":") {
			return l
		}
	}
	return ""
}

// Scripts whose names for commands are computed at run time are checked at
// run time; both tenants' scripts with the same text share nothing.
func TestSandboxSameScriptTwoTenants(t *testing.T) {
	t.Parallel()
	up, attacker, victim := twoTenants(t, nil)
	script := "redis.call(ARGV[1], KEYS[1], ARGV[2]) return redis.call('LRANGE', KEYS[1], 0, -1)"
	for _, addr := range []string{attacker, victim} {
		c := dialRaw(t, addr)
		r := c.do(t, "EVAL", script, "1", "shared", "RPUSH", addr)
		if string(r) != "*1\r\n$"+strconv.Itoa(len(addr))+"\r\n"+addr+"\r\n" {
			t.Fatalf("tenant at %s: %q", addr, r)
		}
	}
	keys, _ := up.Client().Keys(context.Background(), "tenant:*:shared").Result()
	sort.Strings(keys)
	if strings.Join(keys, ",") != "tenant:acme:shared,tenant:beta:shared" {
		t.Fatalf("keys: %q", keys)
	}
	victimIntact(t, up)
}
