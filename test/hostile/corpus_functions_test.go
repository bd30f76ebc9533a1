package hostile

import (
	"fmt"
	"strings"
	"time"

	"github.com/keyfence/keyfence/rewrite"
)

// Redis 7 functions: acme's libraries run in the same sandbox as its
// scripts, in a namespace of its own. Beta loads betaLibrary before every
// attempt; acme must never run, list, dump, delete or replace it, and the
// harness checks after every attempt that beta's function still answers.

// betaLibrary is beta's library: its code and description carry the
// secret, so that a listing or dump reaching acme is a leak.
func betaLibrary(secret string) string {
	return "#!lua name=" + betaLibName + "\n-- beta's library " + secret + "\n" +
		"redis.register_function{function_name='" + betaFnName + "', description='beta " + secret + "', " +
		"callback=function(keys) return redis.call('GET', keys[1]) end}"
}

const (
	betaLibName = "betalib"
	betaFnName  = "betafn"
)

func fnLoad(name, body string) []string {
	return []string{"FUNCTION", "LOAD", "REPLACE", "#!lua name=" + name + "\n" + body}
}

func functionAttempts() []attempt {
	var out []attempt
	// Every route to the real redis, as a function's body and as a
	// library's top-level code.
	for _, route := range luaRoutes() {
		for _, cmd := range luaRouteCommands() {
			body := fmt.Sprintf("local r = %s return r.%s", route[1], cmd.call)
			out = append(out, attempt{
				name: "route-" + route[0] + "/" + cmd.name, category: catFunctions,
				run: func(a *act) {
					a.wantReply("FUNCTION LOAD", a.do(fnLoad("routes", "redis.register_function('f', function(keys, args) "+body+" end)")...))
					cmd.judge(a, a.do("FCALL", "f", "0"))
				},
			})
		}
		out = append(out, attempt{
			name: "load-time-route-" + route[0], category: catFunctions,
			run: func(a *act) {
				r := a.do(fnLoad("loadroute", fmt.Sprintf("local r = %s r.call('FLUSHALL') r.call('SET', 'tenant:beta:str', 'pwned')\n"+
					"redis.register_function('f', function() return 1 end)", route[1]))...)
				a.wantError("a library's top-level code reaching redis.call", r)
			},
		})
	}

	sb := rewrite.NewSandbox()
	betaStore := rewrite.FunctionStoreKey(betaPrefix)
	out = append(out,
		attempt{name: "fcall-beta", category: catFunctions, run: func(a *act) {
			a.wantErrorContaining("FCALL of beta's function", a.do("FCALL", betaFnName, "1", "str"), "Function not found")
			a.wantErrorContaining("FCALL_RO of beta's function", a.do("FCALL_RO", strings.ToUpper(betaFnName), "1", "str"), "Function not found")
		}},
		attempt{name: "delete-beta-library", category: catFunctions, run: func(a *act) {
			a.wantErrorContaining("FUNCTION DELETE of beta's library", a.do("FUNCTION", "DELETE", betaLibName), "Library not found")
		}},
		attempt{name: "list-dump-stats", category: catFunctions, run: func(a *act) {
			a.wantStrings("FUNCTION LIST", a.do("FUNCTION", "LIST"))
			a.wantStrings("FUNCTION LIST WITHCODE *", a.do("FUNCTION", "LIST", "WITHCODE", "LIBRARYNAME", "*"))
			r := a.do("FUNCTION", "DUMP")
			if codes, err := rewrite.ParseFunctionDump([]byte(r.v.str)); err != nil || len(codes) != 0 {
				a.t.Errorf("FUNCTION DUMP of acme, which has no libraries: %d libraries, %v", len(codes), err)
			}
			a.wantReply("FUNCTION STATS", a.do("FUNCTION", "STATS"))
			a.wantReply("INFO memory", a.do("INFO", "memory"))
		}},
		attempt{name: "flush", category: catFunctions, run: func(a *act) {
			a.wantOK("FUNCTION FLUSH", a.do("FUNCTION", "FLUSH"))
			a.wantOK("FUNCTION FLUSH SYNC", a.do("FUNCTION", "FLUSH", "SYNC"))
		}},
		attempt{name: "same-names", category: catFunctions, run: func(a *act) {
			a.wantOK("acme's library of beta's names", a.do(fnLoad(betaLibName, "redis.register_function('"+betaFnName+"', function() return 'acme' end)")...))
			if r := a.do("FCALL", betaFnName, "1", "str"); r.err != nil || r.v.str != "acme" {
				a.t.Errorf("acme's own function of beta's name: got %s, want \"acme\"", r)
			}
			a.wantOK("FUNCTION DELETE of acme's own", a.do("FUNCTION", "DELETE", betaLibName))
		}},
		attempt{name: "restore-beta-names", category: catFunctions, run: func(a *act) {
			payload := rewrite.AppendFunctionDump(nil, [][]byte{[]byte("#!lua name=" + betaLibName + "\nredis.register_function('" + betaFnName + "', function() return 'acme' end)")})
			for _, policy := range []string{"APPEND", "REPLACE", "FLUSH"} {
				a.wantReply("FUNCTION RESTORE "+policy, a.do("FUNCTION", "RESTORE", string(payload), policy))
			}
		}},
		attempt{name: "restore-crafted", category: catFunctions, run: func(a *act) {
			for _, body := range []string{"\xf5\xc5\x05", "\xf5\x81\xff\xff\xff\xff\xff\xff\xff\xff", "\xf5\xc3\x05\x81\x7f\xff\xff\xff\xff\xff\xff\xff",
				"\xf5\xc3\x02\x05\x01ab", "\x07\x01x", "\xf6\x07betalib\x03LUA\x00\x01x", strings.Repeat("\xf5\x00", 1000)} {
				a.wantError("a crafted RESTORE payload", a.do("FUNCTION", "RESTORE", string(rewrite.SealFunctionDump([]byte(body))), "FLUSH"))
			}
			a.wantError("an unsealed payload", a.do("FUNCTION", "RESTORE", "\xf5\x05hello"))
		}},
		attempt{name: "sandbox-internals", category: catFunctions, run: func(a *act) {
			// The sandbox's own functions are not the tenant's to call.
			for _, args := range [][]string{
				{"FCALL", sb.FunctionFlush(), "1", betaStore, betaPrefix},
				{"FCALL", sb.FunctionList(), "1", betaStore, betaPrefix, "1"},
				{"FCALL", sb.FunctionRun(0), "1", "str", betaPrefix, betaStore, "0", "0", betaFnName, "1000", "1024"},
				{"FCALL", sb.RunFunction(0), "0", betaPrefix, "x", "1000", "1024"},
				{"FUNCTION", "DELETE", sb.Name},
			} {
				a.wantError(args[1], a.do(args...))
			}
		}},
		attempt{name: "store-key-names", category: catFunctions, run: func(a *act) {
			a.wantOK("FUNCTION LOAD", a.do(fnLoad("store",
				"redis.register_function('rd', function(keys) return {redis.call('TYPE', keys[1]), redis.call('TYPE', '"+betaStore+"')} end)\n"+
					"redis.register_function('wr', function(keys) redis.call('DEL', keys[1]) return redis.call('HSET', '"+betaStore+"', 'betalib', 'x') end)")...))
			a.wantStrings("a function reading beta's store by name", a.do("FCALL", "rd", "1", betaStore), "none", "none")
			a.wantReply("a function writing beta's store by name", a.do("FCALL", "wr", "1", betaStore))
			a.wantReply("HGETALL of beta's store by name", a.do("HGETALL", betaStore))
			a.wantReply("DEL of beta's store by name", a.do("DEL", betaStore, "{keyfence}:functions:"+acmePrefix))
		}},
		attempt{name: "escapes", category: catFunctions, run: func(a *act) {
			a.wantOK("FUNCTION LOAD", a.do(fnLoad("esc",
				"local RF = redis.register_function\nlocal LR = redis\n"+
					"RF('late', function() return RF('x', function() return redis.call('FLUSHALL') end) end)\n"+
					"RF('lrset', function() rawset(LR, 'call', function() return 1 end) return 1 end)\n"+
					"RF('lrcall', function() return LR.call('FLUSHALL') end)\n"+
					"RF('keysg', function() return KEYS end)\n"+
					"RF('dump', function() return loadstring(string.dump(function() return redis.call('DBSIZE') end))() end)\n"+
					"RF('stash', function() rawset(_G, 'stash', redis.call) return 1 end)")...))
			for _, f := range []string{"late", "lrset", "lrcall", "keysg", "dump", "stash"} {
				a.wantError("FCALL "+f, a.do("FCALL", f, "0"))
			}
		}},
		attempt{name: "multi-fcall-flushall", category: catFunctions, run: func(a *act) {
			a.wantOK("FUNCTION LOAD", a.do(fnLoad("m", "redis.register_function('fl', function() return redis.call('FLUSHALL') end)")...))
			c := a.conn()
			_ = c.write([]byte(string(encode("MULTI")) + string(encode("FCALL", "fl", "0")) + string(encode("FUNCTION", "FLUSH")) + string(encode("EXEC"))))
			for range 4 {
				a.wantReply("MULTI/FCALL/FUNCTION FLUSH/EXEC", c.read())
			}
		}},
		attempt{name: "many-libraries", category: catFunctions, run: func(a *act) {
			// Past --max-function-libraries (100 by default) acme is refused.
			var refused bool
			for i := range 120 {
				r := a.do(fnLoad(fmt.Sprintf("many%d", i), fmt.Sprintf("redis.register_function('many%d', function() return %d end)", i, i))...)
				refused = refused || r.isErr()
			}
			if !refused {
				a.t.Errorf("120 libraries were all loaded past --max-function-libraries")
			}
		}},
		fnRunaway("runaway-function", "while true do end"),
		fnRunaway("runaway-function-after-write", "redis.call('SET', 'w', 1) while true do end"),
		attempt{name: "runaway-load", category: catFunctions, run: func(a *act) {
			start := time.Now()
			a.wantError("a library whose top-level code never ends", a.do(fnLoad("spin", "while true do end")...))
			if el := time.Since(start); el > 3*time.Second {
				a.t.Errorf("a runaway library load took %v", el)
			}
		}},
	)
	return out
}

// fnRunaway is runaway with the never-ending code in a function.
func fnRunaway(name, body string) attempt {
	return attempt{name: name, category: catFunctions, run: func(a *act) {
		a.wantOK("FUNCTION LOAD", a.do(fnLoad("spin", "redis.register_function('spin', function() "+body+" end)")...))
		runawayRun(a, []string{"FCALL", "spin", "0"})
	}}
}
