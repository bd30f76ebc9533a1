package hostile

import (
	"strconv"
	"strings"
)

// keyAttempts name beta's keys (as tenant:beta:…) at every key position of
// every command family. Each must act on acme's own
// tenant:acme:tenant:beta:… keys; the harness sees anything else.
func keyAttempts() []attempt {
	var out []attempt
	// cmds runs a sequence on one connection; each reply must arrive.
	cmds := func(name string, seq ...[]string) attempt {
		return attempt{name: name, category: catKeys, run: func(a *act) {
			for _, c := range seq {
				a.wantReply(strings.Join(c, " "), a.do(c...))
			}
		}}
	}
	c := func(args ...string) []string { return args }
	b := func(k string) string { return betaPrefix + k }

	out = append(out,
		cmds("get", c("GET", b("str"))),
		cmds("set", c("SET", b("str"), "pwned")),
		cmds("mset", c("MSET", b("str"), "pwned", b("hash"), "pwned")),
		cmds("msetnx", c("MSETNX", b("x"), "1", b("y"), "2")),
		cmds("mget", c("MGET", b("str"), "str", b("hidden"))),
		cmds("getdel", c("GETDEL", b("str"))),
		cmds("getex-persist", c("GETEX", b("ttl"), "PERSIST")),
		cmds("getset", c("GETSET", b("str"), "pwned")),
		cmds("append", c("APPEND", b("str"), "x")),
		cmds("incr", c("INCR", b("n"))),
		cmds("del-many", c("DEL", b("str"), b("hash"), b("list"), b("set"), b("zset"), b("stream"), b("ttl"))),
		cmds("unlink", c("UNLINK", b("str"))),
		cmds("expire", c("EXPIRE", b("ttl"), "1")),
		cmds("pexpireat", c("PEXPIREAT", b("str"), "1")),
		cmds("persist", c("PERSIST", b("ttl"))),
		cmds("touch", c("TOUCH", b("str"))),
		cmds("dump", c("DUMP", b("str"))),
		cmds("hset", c("HSET", b("hash"), "f1", "pwned")),
		cmds("hgetall", c("HGETALL", b("hash"))),
		cmds("hdel", c("HDEL", b("hash"), "f1")),
		cmds("lpop", c("LPOP", b("list"))),
		cmds("rpoplpush", c("RPOPLPUSH", b("list"), "mine-list")),
		cmds("lmove", c("LMOVE", b("list"), "l", "LEFT", "RIGHT")),
		cmds("blmove", c("BLMOVE", b("list"), "l", "LEFT", "RIGHT", "0.1")),
		cmds("lmpop", c("LMPOP", "2", "nolist", b("list"), "LEFT", "COUNT", "10")),
		cmds("blmpop", c("BLMPOP", "0.1", "1", b("list"), "LEFT")),
		cmds("blpop-short", c("BLPOP", b("list"), b("queue"), "0.1")),
		cmds("lpush-queue", c("LPUSH", b("queue"), "acme-job")),
		cmds("smove", c("SMOVE", b("set"), "s", "beta-member")),
		cmds("sunionstore", c("SUNIONSTORE", b("set"), b("set"), "s")),
		cmds("sdiffstore", c("SDIFFSTORE", "d", b("set"))),
		cmds("spop", c("SPOP", b("set"), "10")),
		cmds("zpopmin", c("ZPOPMIN", b("zset"), "10")),
		cmds("bzpopmax", c("BZPOPMAX", b("zset"), "0.1")),
		cmds("zmpop", c("ZMPOP", "1", b("zset"), "MIN")),
		cmds("zunionstore", c("ZUNIONSTORE", b("zset"), "2", b("zset"), "z")),
		cmds("zunionstore-numkeys-larger", c("ZUNIONSTORE", "d", "5", b("zset"), "z")),
		cmds("zunionstore-numkeys-smaller", c("ZUNIONSTORE", "d", "1", "z", b("zset"))),
		cmds("zunionstore-numkeys-negative", c("ZUNIONSTORE", "d", "-1", b("zset"))),
		cmds("zinter-weights-trick", c("ZINTER", "1", b("zset"), "WEIGHTS", b("zset"))),
		cmds("zrangestore", c("ZRANGESTORE", b("zset"), "z", "0", "-1")),
		cmds("zrangestore-src", c("ZRANGESTORE", "d", b("zset"), "0", "-1")),
		cmds("sintercard-larger", c("SINTERCARD", "5", b("set"), "s")),
		cmds("sintercard-smaller", c("SINTERCARD", "1", "s", b("set"))),
		cmds("sintercard-negative", c("SINTERCARD", "-1", b("set"))),
		cmds("sintercard-limit-trick", c("SINTERCARD", "2", b("set"), "LIMIT", "0")),
		cmds("xadd", c("XADD", b("stream"), "*", "f", "forged")),
		cmds("xread", c("XREAD", "STREAMS", b("stream"), "0")),
		cmds("xread-odd", c("XREAD", "COUNT", "1", "STREAMS", b("stream"), "s", "0")),
		cmds("xread-streams-as-id", c("XREAD", "STREAMS", "s", b("stream"), "0", "0")),
		cmds("xreadgroup", c("XREADGROUP", "GROUP", "grp", "c9", "STREAMS", b("stream"), ">")),
		cmds("xreadgroup-pending", c("XREADGROUP", "GROUP", "grp", "c1", "STREAMS", b("stream"), "0")),
		cmds("xclaim", c("XCLAIM", b("stream"), "grp", "c9", "0", "1-1", "1-2")),
		cmds("xautoclaim", c("XAUTOCLAIM", b("stream"), "grp", "c9", "0", "0-0")),
		cmds("xack", c("XACK", b("stream"), "grp", "1-1", "1-2")),
		cmds("xpending", c("XPENDING", b("stream"), "grp")),
		cmds("xgroup-destroy", c("XGROUP", "DESTROY", b("stream"), "grp")),
		cmds("xgroup-createconsumer", c("XGROUP", "CREATECONSUMER", b("stream"), "grp", "evil")),
		cmds("xinfo-full", c("XINFO", "STREAM", b("stream"), "FULL")),
		cmds("xtrim", c("XTRIM", b("stream"), "MAXLEN", "0")),
		cmds("sort-get", c("RPUSH", "l", "str", "hash"), c("SORT", "l", "BY", "nosort", "GET", b("*"))),
		cmds("sort-by", c("RPUSH", "l", "str", "hash"), c("SORT", "l", "BY", b("*"), "ALPHA")),
		cmds("sort-get-hashfield", c("RPUSH", "l", "hash"), c("SORT", "l", "BY", "nosort", "GET", "#", "GET", b("*->f1"))),
		cmds("sort-store", c("RPUSH", "l", "1"), c("SORT", "l", "STORE", b("list"))),
		cmds("sort-src", c("SORT", b("list"), "ALPHA")),
		cmds("sort-ro-get", c("RPUSH", "l", "str"), c("SORT_RO", "l", "BY", "nosort", "GET", b("*"))),
		cmds("georadius-store", c("GEOADD", "g", "13.36", "38.11", "p"), c("GEORADIUS", "g", "13", "38", "500", "km", "STORE", b("zset"))),
		cmds("georadius-storedist", c("GEOADD", "g", "13.36", "38.11", "p"), c("GEORADIUS", "g", "13", "38", "500", "km", "STOREDIST", b("zset"))),
		cmds("georadiusbymember-store", c("GEOADD", "g", "13.36", "38.11", "p"), c("GEORADIUSBYMEMBER", "g", "p", "500", "km", "STORE", b("zset"))),
		cmds("geosearchstore", c("GEOADD", "g", "13.36", "38.11", "p"), c("GEOSEARCHSTORE", b("zset"), "g", "FROMLONLAT", "13", "38", "BYRADIUS", "500", "km")),
		cmds("copy-onto", c("COPY", acmeOwnKey, b("str"), "REPLACE")),
		cmds("copy-db1", c("COPY", acmeOwnKey, b("str"), "DB", "1", "REPLACE")),
		cmds("copy-from", c("COPY", b("str"), "stolen", "DB", "0")),
		cmds("move", c("MOVE", b("str"), "1")),
		cmds("rename", c("RENAME", acmeOwnKey, b("str"))),
		cmds("renamenx", c("RENAMENX", b("str"), "x")),
		cmds("bitop-dest", c("BITOP", "OR", b("str"), acmeOwnKey)),
		cmds("bitop-src", c("BITOP", "NOT", "x", b("str"))),
		cmds("lcs", c("LCS", b("str"), acmeOwnKey)),
		cmds("lcs-idx", c("LCS", b("str"), b("ttl"), "IDX", "WITHMATCHLEN")),
		cmds("pfmerge", c("PFMERGE", b("str"), acmeOwnKey)),
		cmds("object-encoding", c("OBJECT", "ENCODING", b("str"))),
		cmds("object-freq", c("OBJECT", "FREQ", b("str"))),
		cmds("object-idletime", c("OBJECT", "IDLETIME", b("str"))),
		cmds("memory-usage", c("MEMORY", "USAGE", b("str"))),
		cmds("migrate", c("MIGRATE", "127.0.0.1", "1", b("str"), "0", "100")),
		cmds("migrate-keys", c("MIGRATE", "127.0.0.1", "1", "", "0", "100", "COPY", "KEYS", b("str"), b("hash"))),
		cmds("restore-onto", c("RESTORE", b("str"), "0", "junk", "REPLACE")),
		cmds("watch-multi", c("WATCH", b("str")), c("MULTI"), c("SET", b("str"), "x"), c("EXEC")),
		cmds("multi-select-flushdb", c("MULTI"), c("SELECT", "1"), c("FLUSHDB"), c("EXEC")),
		cmds("flushdb", c("FLUSHDB")),
		cmds("flushall", c("FLUSHALL")),
		cmds("flushall-async", c("FLUSHALL", "ASYNC")),
		cmds("select1-flushdb", c("SELECT", "1"), c("FLUSHDB")),
		cmds("empty-key", c("SET", "", "x"), c("GET", "")),
		cmds("long-key", c("SET", strings.Repeat(b("str"), 8000), "x")),
		cmds("command-getkeys", c("COMMAND", "GETKEYS", "SET", b("str"), "x")),
		cmds("eval-keys-prefixed", c("EVAL", "return KEYS[1]", "1", b("str"))),
		cmds("hrandfield", c("HRANDFIELD", b("hash"), "5", "WITHVALUES")),
		cmds("srandmember", c("SRANDMEMBER", b("set"), "5")),
		cmds("lpos", c("LPOS", b("list"), "x")),
		cmds("substr", c("SUBSTR", b("str"), "0", "-1")),
		cmds("strlen", c("STRLEN", b("str"))),
		cmds("type", c("TYPE", b("str"))),
		cmds("ttl", c("TTL", b("ttl"))),
	)

	// Counts and existence must come from acme's namespace only.
	out = append(out,
		attempt{name: "exists-counts-own", category: catKeys, run: func(a *act) {
			a.wantInt("EXISTS of beta's names", a.do("EXISTS", b("str"), b("hash"), b("list")), 0)
		}},
		attempt{name: "set-lands-in-acme", category: catKeys, run: func(a *act) {
			a.wantOK("SET tenant:beta:str", a.do("SET", b("str"), "acme-wrote"))
			if got, err := a.f.adminDB(0).Get(a.ctx(), acmePrefix+b("str")).Result(); err != nil || got != "acme-wrote" {
				a.t.Errorf("SET tenant:beta:str must land at %s%s upstream: got %q, %v", acmePrefix, b("str"), got, err)
			}
		}},
		attempt{name: "keys-beta-pattern", category: catKeys, run: func(a *act) {
			a.wantStrings("KEYS tenant:beta:*", a.do("KEYS", b("*")))
		}},
		attempt{name: "scan-beta-pattern", category: catKeys, run: func(a *act) {
			r := a.do("SCAN", "0", "MATCH", b("*"), "COUNT", "10000")
			if r.err != nil || len(r.v.elems) != 2 || len(r.v.elems[1].elems) != 0 {
				a.t.Errorf("SCAN MATCH tenant:beta:* must find nothing of beta's: got %s", r)
			}
		}},
		attempt{name: "dbsize-db1", category: catKeys, run: func(a *act) {
			a.wantOK("SELECT 1", a.do("SELECT", "1"))
			a.wantInt("DBSIZE in db 1 (beta has keys there, acme none)", a.do("DBSIZE"), 0)
		}},
		attempt{name: "randomkey-db1", category: catKeys, run: func(a *act) {
			a.wantOK("SELECT 1", a.do("SELECT", "1"))
			if r := a.do("RANDOMKEY"); r.err != nil || !r.v.null {
				a.t.Errorf("RANDOMKEY in db 1 (acme has no keys there) must be nil: got %s", r)
			}
		}},
	)
	for i := range 3 {
		n := strconv.Itoa(i)
		out = append(out, cmds("numkeys-eval-lie-"+n, c("EVAL", "return {KEYS[1], ARGV[1]}", strconv.Itoa(5+i), b("str"))))
	}
	return out
}
