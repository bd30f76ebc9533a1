package hostile

import (
	"fmt"
	"strings"
	"time"
)

// luaRoutes are expressions a script can try to reach the real redis object
// with. In a sandbox each either is the sandbox's own redis, or nil, or an
// error; none may run a command beyond the tenant.
func luaRoutes() [][2]string {
	return [][2]string{
		{"plain", "redis"},
		{"G", "_G.redis"},
		{"G-concat", "_G['re' .. 'dis']"},
		{"rawget", "rawget(_G, 'redis')"},
		{"metatable-index", "getmetatable(redis).__index"},
		{"prelude-local", "__kf_R"},
		{"loadstring", "loadstring('return redis')()"},
		{"loadstring-G", "loadstring('return _G.redis')()"},
		{"load-reader", "load((function() local d = false return function() if d then return nil end d = true return 'return _G.redis' end end)())()"},
		{"getfenv0", "getfenv(0).redis"},
		{"getfenv1", "getfenv(1).redis"},
		{"getfenv-call", "getfenv(redis.call).redis"},
		{"setfenv", "setfenv(function() return redis end, getfenv(0))()"},
		{"coroutine", "select(2, coroutine.resume(coroutine.create(function() return _G.redis end)))"},
		{"upvalue", "(function() for i = 1, 30 do local n, v = debug.getupvalue(redis.call, i) if type(v) == 'table' and v ~= redis and v.call then return v end end end)()"},
		{"getlocal", "(function() for l = 2, 6 do for i = 1, 60 do local ok, n, v = pcall(debug.getlocal, l, i) if ok and type(v) == 'table' and v ~= redis and rawget(v, 'call') then return v end end end end)()"},
		{"registry", "(function() for _, v in pairs(debug.getregistry()) do if type(v) == 'table' and rawget(v, 'call') and v ~= redis then return v end end end)()"},
	}
}

// luaRouteCommands are what acme tries through each route, and how the
// reply is judged: keyless commands must be refused; keyed ones may succeed
// (on acme's own tenant:acme:tenant:beta:… keys) and are judged by the
// harness's checks and, where a count would leak, by their reply.
func luaRouteCommands() []struct {
	name, call string
	judge      func(a *act, r reply)
} {
	mustFail := func(a *act, r reply) { a.wantError("keyless command in a script", r) }
	zeroOrErr := func(a *act, r reply) {
		a.wantErrorOr("EXISTS of beta's keys", r, func(v val) bool { return v.typ == ':' && v.str == "0" }, "(integer) 0")
	}
	anyOK := func(a *act, r reply) { a.wantReply("script", r) }
	return []struct {
		name, call string
		judge      func(a *act, r reply)
	}{
		{"flushall", "call('FLUSHALL')", mustFail},
		{"dbsize", "call('DBSIZE')", mustFail},
		{"keys", "call('KEYS', '*')", mustFail},
		{"info", "call('INFO', 'keyspace')", mustFail},
		{"get-beta", "call('GET', 'tenant:beta:str')", anyOK},
		{"exists-beta", "call('EXISTS', 'tenant:beta:str', 'tenant:beta:hash')", zeroOrErr},
		{"set-beta", "call('SET', 'tenant:beta:str', 'pwned')", anyOK},
		{"publish-beta", "call('PUBLISH', 'tenant:beta:news', 'forged')", anyOK},
	}
}

func luaAttempts() []attempt {
	var out []attempt
	for _, route := range luaRoutes() {
		for _, cmd := range luaRouteCommands() {
			script := fmt.Sprintf("local r = %s return r.%s", route[1], cmd.call)
			out = append(out, attempt{
				name: "route-" + route[0] + "/" + cmd.name, category: catLua,
				run: func(a *act) { cmd.judge(a, a.do(eval(script, nil)...)) },
			})
		}
	}

	fail := func(name, script string, keys []string, args ...string) attempt {
		return attempt{name: name, category: catLua, run: func(a *act) {
			a.wantError(name, a.do(eval(script, keys, args...)...))
		}}
	}
	anyReply := func(name, script string, keys []string, args ...string) attempt {
		return attempt{name: name, category: catLua, run: func(a *act) {
			a.wantReply(name, a.do(eval(script, keys, args...)...))
		}}
	}
	want := func(name, script string, keys []string, args []string, check func(a *act, r reply)) attempt {
		return attempt{name: name, category: catLua, run: func(a *act) {
			check(a, a.do(eval(script, keys, args...)...))
		}}
	}

	// Every command that reaches beyond the tenant, called plainly.
	for _, c := range []string{
		"'FLUSHDB'", "'FLUSHALL', 'ASYNC'", "'DBSIZE'", "'KEYS', 'tenant:*'", "'SCAN', '0'", "'SCAN', '0', 'MATCH', '*'",
		"'RANDOMKEY'", "'SWAPDB', 0, 1", "'INFO'", "'INFO', 'commandstats'", "'SLOWLOG', 'GET'", "'SLOWLOG', 'RESET'",
		"'PUBSUB', 'CHANNELS'", "'PUBSUB', 'NUMSUB', 'tenant:beta:news'", "'PUBSUB', 'NUMPAT'", "'SCRIPT', 'FLUSH'",
		"'SCRIPT', 'EXISTS', 'x'", "'SCRIPT', 'KILL'", "'FUNCTION', 'LIST'", "'FUNCTION', 'FLUSH'",
		"'CONFIG', 'GET', '*'", "'CONFIG', 'SET', 'notify-keyspace-events', ''", "'CLIENT', 'LIST'", "'CLIENT', 'KILL', 'TYPE', 'normal'",
		"'MEMORY', 'STATS'", "'MEMORY', 'DOCTOR'", "'DEBUG', 'SLEEP', '0'", "'ACL', 'LIST'", "'LATENCY', 'LATEST'",
		"'MIGRATE', '127.0.0.1', '1', '', 0, 100, 'KEYS', 'tenant:beta:str'", "'EVAL', 'return 1', 0", "'FCALL', 'f', 0",
		"'SHUTDOWN', 'NOSAVE'", "'REPLICAOF', '127.0.0.1', '1'", "'MONITOR'",
	} {
		out = append(out, fail("refused/"+strings.Trim(strings.NewReplacer("'", "", ", ", "-", " ", "-").Replace(c), "-"), "return redis.call("+c+")", nil))
	}

	out = append(out,
		want("pcall-flushall", "local ok, e = pcall(redis.call, 'FLUSHALL') return tostring(ok)", nil, nil, func(a *act, r reply) {
			a.wantErrorOr("pcall(redis.call, 'FLUSHALL')", r, func(v val) bool { return v.str == "false" }, `"false"`)
		}),
		fail("redis-pcall-flushall", "return redis.pcall('FLUSHALL')", nil),
		fail("computed-lower-flushall", "return redis.call(string.lower('FLUSHALL'))", nil),
		fail("computed-concat-flushall", "return redis.call('FLUSH' .. 'ALL')", nil),
		fail("computed-reverse-dbsize", "return redis.call(string.reverse('EZISBD'))", nil),
		fail("computed-argv-keys", "return redis.call(ARGV[1], '*')", nil, "KEYS"),
		fail("computed-char-swapdb", "return redis.call(string.char(83,87,65,80,68,66), 0, 1)", nil),
		fail("unpack-keys", "return redis.call(unpack({'keys', '*'}))", nil),
		fail("unpack-scan", "return redis.call(unpack({'scan', '0', 'count', '1000'}))", nil),
		fail("call-no-args", "return redis.call()", nil),
		fail("call-table-arg", "return redis.call({'FLUSHALL'})", nil),
		fail("nested-eval", "return redis.call('EVAL', \"return redis.call('FLUSHALL')\", 0)", nil),
		fail("nested-evalsha-ro", "return redis.call('EVALSHA_RO', ARGV[1], 0)", nil, "0000000000000000000000000000000000000000"),
		want("computed-get-allowed", "return redis.call(string.lower('GET'), KEYS[1])", []string{acmeOwnKey}, nil, func(a *act, r reply) {
			if r.err != nil || r.v.str != acmeOwnValue {
				a.t.Errorf("a command name computed at run time must work on the tenant's own key (BullMQ's rcall): got %s, want %q", r, acmeOwnValue)
			}
		}),
		want("computed-lpush-bullmq-retry", "local cmd = ARGV[1] return redis.call(cmd, KEYS[1], 'job')", []string{"wait"}, []string{"LPUSH"}, func(a *act, r reply) {
			a.wantInt("LPUSH with a run-time command name (BullMQ retry)", r, 1)
			if n, err := a.f.adminDB(0).LLen(a.ctx(), acmePrefix+"wait").Result(); err != nil || n != 1 {
				a.t.Errorf("the run-time LPUSH must land in %swait: LLEN %d, %v", acmePrefix, n, err)
			}
		}),
		anyReply("close-wrapper-end", "return 1 end; redis.call('FLUSHALL') local function x()", nil),
		anyReply("close-wrapper-end-get", "return 1 end; __leak = redis.call('GET', 'tenant:beta:str') local function x()", nil),
		anyReply("close-wrapper-end-set", "return 1 end redis.call('SET', 'tenant:beta:str', 'pwned') local function x() return 2", nil),
		anyReply("close-wrapper-end-return", "return 1 end return redis.call('GET', 'tenant:beta:str') end local function x()", nil),
		anyReply("long-string-close", "]] redis.call('FLUSHALL') --[[", nil),
		anyReply("long-string-close-level2", "]==] redis.call('FLUSHALL') --[==[", nil),
		anyReply("comment-open", "--[[", nil),
		anyReply("comment-then-close", "--[[\n]] return redis.call('FLUSHALL')", nil),
		anyReply("string-open", "return '", nil),
		anyReply("cr-first-line", "\rreturn redis.call('FLUSHALL')", nil),
		anyReply("semicolon-chain", ";;; return redis.call('DBSIZE')", nil),
		fail("shebang-dbsize", "#!lua\nreturn redis.call('DBSIZE')", nil),
		fail("shebang-flags-dbsize", "#!lua flags=no-writes,allow-cross-slot-keys\nreturn redis.call('DBSIZE')", nil),
		anyReply("shebang-flags-get-beta", "#!lua flags=no-writes,allow-cross-slot-keys\nreturn redis.call('GET', 'tenant:beta:str')", nil),
		anyReply("shebang-no-newline", "#!lua flags=no-writes", nil),
		anyReply("shebang-then-close", "#!lua\nreturn 1 end redis.call('FLUSHALL') local function x()", nil),
		fail("binary-chunk", "local f = loadstring(string.dump(function() return redis.call('DBSIZE') end)) return f()", nil),
		fail("binary-chunk-G", "local f = loadstring(string.dump(function() return _G.redis.call('DBSIZE') end)) return f()", nil),
		fail("load-binary-chunk", "return load(string.dump(function() return redis.call('FLUSHALL') end))()", nil),
		fail("dofile", "return dofile('/etc/passwd')", nil),
		fail("os-execute", "return os.execute('true')", nil),
		fail("io-open", "return io.open('/etc/passwd'):read('*a')", nil),
		fail("require-os", "return require('os').getenv('HOME')", nil),
		fail("package-loadlib", "return package.loadlib('/lib/x.so', 'f')", nil),
		anyReply("debug-sethook", "debug.sethook(function() redis.call('FLUSHALL') end, '', 1) return 1", nil),
		want("getlocal-scan", "for l = 1, 6 do for i = 1, 60 do local ok, n, v = pcall(debug.getlocal, l, i) if ok and type(v) == 'table' and rawget(v, 'call') and v ~= redis then return v.call('DBSIZE') end end end return 'none'", nil, nil,
			func(a *act, r reply) {
				a.wantErrorOr("debug.getlocal hunt for the real redis", r, func(v val) bool { return v.str == "none" }, `"none"`)
			}),
		want("coroutine-dbsize", "local co = coroutine.create(function() return _G.redis.call('DBSIZE') end) local ok, r = coroutine.resume(co) return r", nil, nil,
			func(a *act, r reply) {
				a.wantErrorOr("DBSIZE in a coroutine", r, func(v val) bool { return v.typ != ':' }, "no count")
			}),
		want("coroutine-wrap-keys", "return coroutine.wrap(function() return redis.call('KEYS', '*') end)()", nil, nil,
			func(a *act, r reply) { a.wantError("KEYS in a coroutine", r) }),
		anyReply("globals-overwrite-redis", "redis = {call = function() return 1 end} return 1", nil),
		anyReply("rawset-G", "rawset(_G, 'KEYS', {'tenant:beta:str'}) return 1", nil),
		attempt{name: "poison-shared-string-metatable", category: catLua, run: func(a *act) {
			// The Lua state is shared by every tenant's scripts: code that
			// acme leaves behind must never run inside beta's scripts.
			a.wantReply("poison string metatable", a.do(eval(
				"local mt = getmetatable('') mt.__index = function(s, k) redis.call('SET', 'pwned', 'acme') return string[k] end return 1", nil)...))
			a.wantReply("poison string.upper", a.do(eval(
				"string.upper = function(s) redis.call('SET', 'pwned', 'acme') return s end return 1", nil)...))
			a.wantReply("poison cjson", a.do(eval(
				"cjson.encode = function() redis.call('SET', 'pwned', 'acme') return '' end return 1", nil)...))
			ctx := a.ctx()
			got, err := a.f.betaClient(0).Eval(ctx, "return string.upper(ARGV[1]) .. ('x'):rep(2) .. cjson.encode({1})", nil, "b").Result()
			if err != nil || got != "Bxx[1]" {
				a.t.Errorf("beta's own script after acme's poisoning: got %v, %v; want %q", got, err, "Bxx[1]")
			}
		}},
		anyReply("setresp3-hgetall-beta", "redis.setresp(3) return redis.call('HGETALL', 'tenant:beta:hash')", nil),
		fail("setresp3-client-info", "redis.setresp(3) return redis.call('CLIENT', 'INFO')", nil),
		anyReply("set-repl-none-write", "redis.set_repl(redis.REPL_NONE) return redis.call('SET', 'tenant:beta:str', 'x')", nil),
		anyReply("select-1-get", "redis.call('SELECT', 1) return redis.call('GET', 'str')", nil),
		anyReply("select-1-set-beta", "redis.call('SELECT', 1) return redis.call('SET', 'tenant:beta:str', 'x')", nil),
		anyReply("move-to-db1", "redis.call('SET', KEYS[1], 'v') return redis.call('MOVE', KEYS[1], 1)", []string{"tenant:beta:str"}),
		anyReply("wait", "return redis.call('WAIT', 0, 0)", nil),
		anyReply("object-freq-argv", "return redis.call('OBJECT', 'FREQ', ARGV[1])", nil, "tenant:beta:str"),
		anyReply("memory-usage-argv", "return redis.call('MEMORY', 'USAGE', ARGV[1])", nil, "tenant:beta:str"),
		want("type-beta", "return redis.call('TYPE', 'tenant:beta:str')", nil, nil, func(a *act, r reply) {
			a.wantErrorOr("TYPE of beta's key from a script", r, func(v val) bool { return v.str == "none" }, `"none"`)
		}),
		anyReply("publish-beta-channel", "return redis.call('PUBLISH', 'tenant:beta:news', 'forged')", nil),
		anyReply("publish-bare-channel", "return redis.call('PUBLISH', 'news', 'forged')", nil),
		anyReply("publish-keyevent", "return redis.call('PUBLISH', '__keyevent@0__:set', 'tenant:beta:evsync')", nil),
		anyReply("publish-keyevent-bare", "return redis.call('PUBLISH', '__keyevent@0__:set', 'evsync')", nil),
		anyReply("publish-pattern-channel", "return redis.call('PUBLISH', 'tenant:beta:alerts.sync', 'forged')", nil),
		anyReply("spublish-beta", "return redis.call('SPUBLISH', 'tenant:beta:news', 'forged')", nil),
		anyReply("xreadgroup-keys", "return redis.call('XREADGROUP', 'GROUP', 'grp', 'c1', 'COUNT', 10, 'STREAMS', KEYS[1], '>')", []string{"tenant:beta:stream"}),
		anyReply("xreadgroup-argv", "return redis.call('XREADGROUP', 'GROUP', 'grp', 'c9', 'COUNT', 10, 'STREAMS', ARGV[1], '>')", nil, "tenant:beta:stream"),
		anyReply("xclaim-argv", "return redis.call('XCLAIM', ARGV[1], 'grp', 'c9', 0, '1-1', '1-2')", nil, "tenant:beta:stream"),
		anyReply("xautoclaim-keys", "return redis.call('XAUTOCLAIM', KEYS[1], 'grp', 'c9', 0, '0-0')", []string{"tenant:beta:stream"}),
		anyReply("xack-argv", "return redis.call('XACK', ARGV[1], 'grp', '1-1', '1-2')", nil, "tenant:beta:stream"),
		anyReply("xgroup-destroy-argv", "return redis.call('XGROUP', 'DESTROY', ARGV[1], 'grp')", nil, "tenant:beta:stream"),
		anyReply("xgroup-setid-keys", "return redis.call('XGROUP', 'SETID', KEYS[1], 'grp', '$')", []string{"tenant:beta:stream"}),
		anyReply("xinfo-argv", "return redis.call('XINFO', 'STREAM', ARGV[1], 'FULL')", nil, "tenant:beta:stream"),
		anyReply("sort-by-get-beta", "redis.call('RPUSH', KEYS[1], 'str') return redis.call('SORT', KEYS[1], 'BY', 'nosort', 'GET', 'tenant:beta:*')", []string{"l"}),
		anyReply("sort-store-beta", "redis.call('RPUSH', KEYS[1], 'a') return redis.call('SORT', KEYS[1], 'STORE', 'tenant:beta:list')", []string{"l"}),
		anyReply("rename-onto-beta", "redis.call('SET', KEYS[1], 'x') return redis.call('RENAME', KEYS[1], ARGV[1])", []string{"k"}, "tenant:beta:str"),
		anyReply("copy-onto-beta-db1", "redis.call('SET', KEYS[1], 'x') return redis.call('COPY', KEYS[1], ARGV[1], 'DB', 1, 'REPLACE')", []string{"k"}, "tenant:beta:str"),
		anyReply("bitop-dest-beta", "return redis.call('BITOP', 'OR', ARGV[1], KEYS[1])", []string{"k"}, "tenant:beta:str"),
		anyReply("lmove-from-beta", "return redis.call('LMOVE', ARGV[1], KEYS[1], 'LEFT', 'RIGHT')", []string{"k"}, "tenant:beta:list"),
		anyReply("georadius-store-beta", "redis.call('GEOADD', KEYS[1], 13.36, 38.11, 'p') return redis.call('GEORADIUS', KEYS[1], 13, 38, 500, 'km', 'STORE', ARGV[1])", []string{"g"}, "tenant:beta:zset"),
		anyReply("zunionstore-numkeys-lie", "return redis.call('ZUNIONSTORE', KEYS[1], 3, 'a', 'tenant:beta:zset')", []string{"d"}),
		anyReply("sintercard-numkeys-lie", "return redis.call('SINTERCARD', 1, 'tenant:beta:set', 'tenant:beta:set')", nil),
		anyReply("del-beta-keys", "return redis.call('DEL', 'tenant:beta:str', 'tenant:beta:hash', 'tenant:beta:list')", nil),
		anyReply("expire-beta", "return redis.call('EXPIRE', 'tenant:beta:ttl', 1)", nil),
		anyReply("dump-beta", "return redis.call('DUMP', 'tenant:beta:str')", nil),
	)

	// Key names of every shape: each must land in acme's namespace.
	for _, k := range []struct{ name, key string }{
		{"hashtag", "{tenant:beta:str}"}, {"star", "*"}, {"question", "?"}, {"backslash", "\\"},
		{"dotdot", "../tenant:beta:str"}, {"empty", ""}, {"long", strings.Repeat("k", 64<<10)},
		{"beta-prefix", "tenant:beta:str"}, {"beta-prefix-hash", "tenant:beta:hash"}, {"crlf", "a\r\nb"}, {"nul", "a\x00tenant:beta:str"},
	} {
		out = append(out, attempt{name: "key-shape-" + k.name, category: catLua, run: func(a *act) {
			r := a.do(eval("return redis.call('SET', KEYS[1], ARGV[1])", []string{k.key}, "acme-wrote")...)
			a.wantOK("SET KEYS[1] of shape "+k.name, r)
			got, err := a.f.adminDB(0).Get(a.ctx(), acmePrefix+k.key).Result()
			if err != nil || got != "acme-wrote" {
				a.t.Errorf("SET KEYS[1]=%.40q from a script must land at %s%.40q upstream: got %q, %v", k.key, acmePrefix, k.key, got, err)
			}
		}})
	}

	out = append(out,
		attempt{name: "evalsha-beta-script", category: catLua, run: func(a *act) {
			a.wantErrorContaining("EVALSHA of beta's script", a.do("EVALSHA", a.f.betaSHA, "1", "str"), "NOSCRIPT")
		}},
		attempt{name: "evalsha-ro-beta-script", category: catLua, run: func(a *act) {
			a.wantErrorContaining("EVALSHA_RO of beta's script", a.do("EVALSHA_RO", a.f.betaSHA, "1", "str"), "NOSCRIPT")
		}},
		attempt{name: "script-exists-beta", category: catLua, run: func(a *act) {
			r := a.do("SCRIPT", "EXISTS", a.f.betaSHA)
			if len(r.v.elems) != 1 || r.v.elems[0].str != "0" {
				a.t.Errorf("SCRIPT EXISTS of beta's SHA must say 0 (acme never loaded it): got %s", r)
			}
		}},
		attempt{name: "script-flush-keeps-beta", category: catLua, run: func(a *act) {
			a.wantReply("SCRIPT FLUSH", a.do("SCRIPT", "FLUSH"))
			got, err := a.f.betaClient(0).EvalSha(a.ctx(), a.f.betaSHA, []string{"str"}).Result()
			if err != nil || got != a.f.canaryValue(0, "str") {
				a.t.Errorf("beta's EVALSHA after acme's SCRIPT FLUSH: got %v, %v", got, err)
			}
		}},
		attempt{name: "eval-ro-write", category: catLua, run: func(a *act) {
			a.wantError("EVAL_RO that writes", a.do("EVAL_RO", "return redis.call('SET', KEYS[1], 'x')", "1", "tenant:beta:str"))
		}},
		attempt{name: "eval-ro-dbsize", category: catLua, run: func(a *act) {
			a.wantError("EVAL_RO DBSIZE", a.do("EVAL_RO", "return redis.call('DBSIZE')", "0"))
		}},
		attempt{name: "multi-eval-flushall", category: catLua, run: func(a *act) {
			c := a.conn()
			_ = c.write([]byte(string(encode("MULTI")) + string(encode(eval("return redis.call('FLUSHALL')", nil)...)) + string(encode("EXEC"))))
			for range 3 {
				a.wantReply("MULTI/EVAL/EXEC", c.read())
			}
		}},
		runaway("runaway", "while true do end", nil),
		runaway("runaway-after-write", "redis.call('SET', KEYS[1], 1) while true do end", []string{"w"}),
	)
	return out
}

// runaway sends a script that never ends. keyfence must stop it; meanwhile
// beta must still be served (its latency is logged, not bounded: the
// machine is shared).
func runaway(name, script string, keys []string) attempt {
	return attempt{name: name, category: catLua, run: func(a *act) { runawayRun(a, eval(script, keys)) }}
}

// runawayRun sends cmd, which never ends (an EVAL or an FCALL), and checks
// that beta is served meanwhile and that keyfence stops it.
func runawayRun(a *act, cmd []string) {
	c := a.conn()
	start := time.Now()
	if err := c.write(encode(cmd...)); err != nil {
		a.t.Fatalf("send runaway script: %v", err)
	}
	time.Sleep(200 * time.Millisecond)
	got, err := rawGet(a.f.beta.addr, "str")
	latency := time.Since(start)
	a.t.Logf("beta's GET during acme's runaway script: %s after %v", got, latency.Round(time.Millisecond))
	if want := a.f.canaryValue(0, "str"); err != nil || got.v.str != want {
		a.t.Errorf("beta's GET during acme's runaway script must succeed: got %s, %v", got, err)
	}
	r := c.readWithin(readTimeout - time.Since(start))
	if r.err != nil {
		a.t.Errorf("the runaway script was not stopped: acme got no reply within %v: %v", readTimeout, r.err)
	} else if !r.isErr() {
		a.t.Errorf("the runaway script must end with an error for acme, got %s", r)
	}
}
