package rewrite

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/keyfence/keyfence/resp"
)

// P is the prefix of tenant t1 under the default key format.
const P = "tenant:t1:"

// a spells an argument list.
func a(args ...string) []string { return args }

func toArgs(ss []string) [][]byte {
	out := make([][]byte, len(ss))
	for i, s := range ss {
		out[i] = []byte(s)
	}
	return out
}

func toStrings(bs [][]byte) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = string(b)
	}
	return out
}

// sentinel is what dst holds before AppendRequest: the request must be
// appended after it, and on error dst must come back exactly as it was.
const sentinel = "*1\r\n$4\r\nPING\r\n"

// rewriteReq looks in up, checks that it is forwarded by the rewriter and
// has a valid arity (so the tables only hold requests Redis would accept in
// shape), rewrites it with a fresh rewriter and parses the result back.
func rewriteReq(t *testing.T, in []string) ([]string, error) {
	t.Helper()
	args := toArgs(in)
	cmd := Lookup(args)
	if cmd == nil {
		t.Fatalf("%q: Lookup gives nil", in)
	}
	switch cmd.Policy {
	case PolicyKeyed, PolicyPattern, PolicyChannel:
	default:
		t.Fatalf("%q: %s is %v, not rewritten", in, cmd.Name, cmd.Policy)
	}
	if !cmd.ArityOK(len(args)) {
		t.Fatalf("%q: bad arity for %s (%d)", in, cmd.Name, cmd.Arity)
	}
	r := NewRewriter(P)
	dst := []byte(sentinel)
	out, err := r.AppendRequest(dst, cmd, args)
	if err != nil {
		if string(out) != sentinel {
			t.Errorf("%q: error %v but dst changed to %q", in, err, out)
		}
		return nil, err
	}
	if !bytes.HasPrefix(out, []byte(sentinel)) {
		t.Fatalf("%q: dst's previous content was overwritten: %q", in, out)
	}
	body := out[len(sentinel):]
	got, n, _, perr := resp.ParseCommand(body, nil, resp.DefaultLimits)
	if perr != nil || n != len(body) {
		t.Fatalf("%q: output %q does not parse as one request: n=%d/%d err=%v", in, body, n, len(body), perr)
	}
	// The input is never modified.
	if !sameArgs(toStrings(args), in) {
		t.Errorf("%q: input args modified to %q", in, toStrings(args))
	}
	return toStrings(got), nil
}

type rewriteCase struct {
	in   []string
	want []string
}

// runRewrites checks each case and, for keyed commands, that the arguments
// that changed are exactly those Keys reports.
func runRewrites(t *testing.T, cases []rewriteCase) {
	t.Helper()
	for _, tt := range cases {
		t.Run(strings.Join(tt.in, " "), func(t *testing.T) {
			got, err := rewriteReq(t, tt.in)
			if err != nil {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
			if !sameArgs(got, tt.want) {
				t.Fatalf("\n got  %q\n want %q", got, tt.want)
			}
			args := toArgs(tt.in)
			cmd := Lookup(args)
			if cmd.Policy != PolicyKeyed {
				return
			}
			idx, err := NewRewriter(P).Keys(cmd, args, nil)
			if err != nil {
				t.Fatalf("Keys: %v", err)
			}
			isKey := map[int]bool{}
			for _, i := range idx {
				isKey[i] = true
			}
			for i := range tt.in {
				if changed := got[i] != tt.in[i]; changed != isKey[i] {
					t.Errorf("arg %d %q: changed=%v but Keys says key=%v (Keys %v)", i, tt.in[i], changed, isKey[i], idx)
				}
			}
		})
	}
}

func TestRewriteStrings(t *testing.T) {
	runRewrites(t, []rewriteCase{
		{a("GET", "k"), a("GET", P+"k")},
		{a("get", "K"), a("get", P+"K")},
		{a("SET", "k", "v"), a("SET", P+"k", "v")},
		{a("SET", "k", "tenant:t1:v", "EX", "10", "NX", "GET"), a("SET", P+"k", "tenant:t1:v", "EX", "10", "NX", "GET")},
		{a("SET", "k", "v", "KEEPTTL", "XX"), a("SET", P+"k", "v", "KEEPTTL", "XX")},
		{a("SET", "k", "v", "PXAT", "1700000000000"), a("SET", P+"k", "v", "PXAT", "1700000000000")},
		{a("SET", "", "v"), a("SET", P, "v")},
		{a("SETEX", "k", "10", "v"), a("SETEX", P+"k", "10", "v")},
		{a("PSETEX", "k", "10", "v"), a("PSETEX", P+"k", "10", "v")},
		{a("SETNX", "k", "v"), a("SETNX", P+"k", "v")},
		{a("GETSET", "k", "v"), a("GETSET", P+"k", "v")},
		{a("MGET", "a", "b", "c"), a("MGET", P+"a", P+"b", P+"c")},
		{a("MSET", "a", "1", "b", "2"), a("MSET", P+"a", "1", P+"b", "2")},
		{a("MSET", "a", "b", "b", "a"), a("MSET", P+"a", "b", P+"b", "a")},
		{a("MSETNX", "a", "1", "b", "2", "c", "3"), a("MSETNX", P+"a", "1", P+"b", "2", P+"c", "3")},
		{a("GETEX", "k"), a("GETEX", P+"k")},
		{a("GETEX", "k", "EX", "10"), a("GETEX", P+"k", "EX", "10")},
		{a("GETEX", "k", "PERSIST"), a("GETEX", P+"k", "PERSIST")},
		{a("GETDEL", "k"), a("GETDEL", P+"k")},
		{a("LCS", "k1", "k2"), a("LCS", P+"k1", P+"k2")},
		{a("LCS", "k1", "k2", "IDX", "MINMATCHLEN", "4", "WITHMATCHLEN"), a("LCS", P+"k1", P+"k2", "IDX", "MINMATCHLEN", "4", "WITHMATCHLEN")},
		{a("COPY", "src", "dst"), a("COPY", P+"src", P+"dst")},
		{a("COPY", "src", "dst", "DB", "2", "REPLACE"), a("COPY", P+"src", P+"dst", "DB", "2", "REPLACE")},
		{a("APPEND", "k", "v"), a("APPEND", P+"k", "v")},
		{a("INCR", "k"), a("INCR", P+"k")},
		{a("INCRBY", "k", "5"), a("INCRBY", P+"k", "5")},
		{a("INCRBYFLOAT", "k", "0.5"), a("INCRBYFLOAT", P+"k", "0.5")},
		{a("DECR", "k"), a("DECR", P+"k")},
		{a("DECRBY", "k", "2"), a("DECRBY", P+"k", "2")},
		{a("STRLEN", "k"), a("STRLEN", P+"k")},
		{a("GETRANGE", "k", "0", "-1"), a("GETRANGE", P+"k", "0", "-1")},
		{a("SETRANGE", "k", "3", "abc"), a("SETRANGE", P+"k", "3", "abc")},
		{a("SUBSTR", "k", "0", "2"), a("SUBSTR", P+"k", "0", "2")},
	})
}

func TestRewriteHashTags(t *testing.T) {
	runRewrites(t, []rewriteCase{
		{a("SET", "{user1}:a", "v"), a("SET", P+"{user1}:a", "v")},
		{a("MSET", "{u}:a", "1", "{u}:b", "2"), a("MSET", P+"{u}:a", "1", P+"{u}:b", "2")},
		{a("RENAME", "{u}:a", "{u}:b"), a("RENAME", P+"{u}:a", P+"{u}:b")},
	})
	// Redis Cluster hashes the first {…} of a key: the prefix must not add
	// one, so that the client's own tags still decide the slot.
	for _, key := range []string{"{user1}:a", "x{user1}", "{user1}", "a{b}{c}", "{{x}}", "}{y}"} {
		got, err := rewriteReq(t, a("GET", key))
		if err != nil {
			t.Fatal(err)
		}
		if hashTag(got[1]) != hashTag(key) {
			t.Errorf("%q → %q: hash tag %q, was %q", key, got[1], hashTag(got[1]), hashTag(key))
		}
	}
}

// hashTag is the part of key Redis Cluster hashes.
func hashTag(key string) string {
	s := strings.IndexByte(key, '{')
	if s < 0 {
		return key
	}
	e := strings.IndexByte(key[s+1:], '}')
	if e <= 0 {
		return key
	}
	return key[s+1 : s+1+e]
}

func TestRewriteHashes(t *testing.T) {
	runRewrites(t, []rewriteCase{
		{a("HSET", "h", "f", "v", "f2", "tenant:t1:x"), a("HSET", P+"h", "f", "v", "f2", "tenant:t1:x")},
		{a("HMSET", "h", "f", "v"), a("HMSET", P+"h", "f", "v")},
		{a("HSETNX", "h", "f", "v"), a("HSETNX", P+"h", "f", "v")},
		{a("HGET", "h", "f"), a("HGET", P+"h", "f")},
		{a("HMGET", "h", "a", "b"), a("HMGET", P+"h", "a", "b")},
		{a("HGETALL", "h"), a("HGETALL", P+"h")},
		{a("HDEL", "h", "a", "b"), a("HDEL", P+"h", "a", "b")},
		{a("HEXISTS", "h", "f"), a("HEXISTS", P+"h", "f")},
		{a("HINCRBY", "h", "f", "1"), a("HINCRBY", P+"h", "f", "1")},
		{a("HINCRBYFLOAT", "h", "f", "1.5"), a("HINCRBYFLOAT", P+"h", "f", "1.5")},
		{a("HKEYS", "h"), a("HKEYS", P+"h")},
		{a("HVALS", "h"), a("HVALS", P+"h")},
		{a("HLEN", "h"), a("HLEN", P+"h")},
		{a("HSTRLEN", "h", "f"), a("HSTRLEN", P+"h", "f")},
		{a("HRANDFIELD", "h", "2", "WITHVALUES"), a("HRANDFIELD", P+"h", "2", "WITHVALUES")},
		// HSCAN's MATCH is over fields, not keys: untouched.
		{a("HSCAN", "h", "0", "MATCH", "f*", "COUNT", "10"), a("HSCAN", P+"h", "0", "MATCH", "f*", "COUNT", "10")},
	})
}

func TestRewriteLists(t *testing.T) {
	runRewrites(t, []rewriteCase{
		{a("LPUSH", "l", "a", "b"), a("LPUSH", P+"l", "a", "b")},
		{a("RPUSH", "l", "a"), a("RPUSH", P+"l", "a")},
		{a("LPUSHX", "l", "a"), a("LPUSHX", P+"l", "a")},
		{a("RPUSHX", "l", "a"), a("RPUSHX", P+"l", "a")},
		{a("LPOP", "l"), a("LPOP", P+"l")},
		{a("RPOP", "l", "2"), a("RPOP", P+"l", "2")},
		{a("LRANGE", "l", "0", "-1"), a("LRANGE", P+"l", "0", "-1")},
		{a("LINDEX", "l", "0"), a("LINDEX", P+"l", "0")},
		{a("LINSERT", "l", "BEFORE", "p", "v"), a("LINSERT", P+"l", "BEFORE", "p", "v")},
		{a("LLEN", "l"), a("LLEN", P+"l")},
		{a("LPOS", "l", "v", "RANK", "1", "COUNT", "0"), a("LPOS", P+"l", "v", "RANK", "1", "COUNT", "0")},
		{a("LREM", "l", "0", "v"), a("LREM", P+"l", "0", "v")},
		{a("LSET", "l", "0", "v"), a("LSET", P+"l", "0", "v")},
		{a("LTRIM", "l", "0", "9"), a("LTRIM", P+"l", "0", "9")},
		{a("LMOVE", "src", "dst", "LEFT", "RIGHT"), a("LMOVE", P+"src", P+"dst", "LEFT", "RIGHT")},
		{a("BLMOVE", "src", "dst", "LEFT", "RIGHT", "0"), a("BLMOVE", P+"src", P+"dst", "LEFT", "RIGHT", "0")},
		{a("RPOPLPUSH", "src", "dst"), a("RPOPLPUSH", P+"src", P+"dst")},
		{a("BRPOPLPUSH", "src", "dst", "0"), a("BRPOPLPUSH", P+"src", P+"dst", "0")},
		{a("BLPOP", "a", "b", "0"), a("BLPOP", P+"a", P+"b", "0")},
		{a("BRPOP", "a", "1.5"), a("BRPOP", P+"a", "1.5")},
		{a("LMPOP", "1", "a", "LEFT"), a("LMPOP", "1", P+"a", "LEFT")},
		{a("LMPOP", "2", "a", "b", "LEFT", "COUNT", "3"), a("LMPOP", "2", P+"a", P+"b", "LEFT", "COUNT", "3")},
		{a("BLMPOP", "0", "2", "a", "b", "RIGHT"), a("BLMPOP", "0", "2", P+"a", P+"b", "RIGHT")},
		{a("BLMPOP", "1.5", "1", "LEFT", "LEFT", "COUNT", "2"), a("BLMPOP", "1.5", "1", P+"LEFT", "LEFT", "COUNT", "2")},
	})
}

func TestRewriteSets(t *testing.T) {
	runRewrites(t, []rewriteCase{
		{a("SADD", "s", "a", "b"), a("SADD", P+"s", "a", "b")},
		{a("SREM", "s", "a"), a("SREM", P+"s", "a")},
		{a("SCARD", "s"), a("SCARD", P+"s")},
		{a("SMEMBERS", "s"), a("SMEMBERS", P+"s")},
		{a("SISMEMBER", "s", "m"), a("SISMEMBER", P+"s", "m")},
		{a("SMISMEMBER", "s", "a", "b"), a("SMISMEMBER", P+"s", "a", "b")},
		{a("SPOP", "s", "2"), a("SPOP", P+"s", "2")},
		{a("SRANDMEMBER", "s", "-2"), a("SRANDMEMBER", P+"s", "-2")},
		{a("SINTER", "a", "b"), a("SINTER", P+"a", P+"b")},
		{a("SUNION", "a", "b", "c"), a("SUNION", P+"a", P+"b", P+"c")},
		{a("SDIFF", "a", "b"), a("SDIFF", P+"a", P+"b")},
		{a("SINTERSTORE", "d", "a", "b"), a("SINTERSTORE", P+"d", P+"a", P+"b")},
		{a("SUNIONSTORE", "d", "a"), a("SUNIONSTORE", P+"d", P+"a")},
		{a("SDIFFSTORE", "d", "a", "b"), a("SDIFFSTORE", P+"d", P+"a", P+"b")},
		{a("SINTERCARD", "2", "a", "b"), a("SINTERCARD", "2", P+"a", P+"b")},
		{a("SINTERCARD", "2", "a", "b", "LIMIT", "5"), a("SINTERCARD", "2", P+"a", P+"b", "LIMIT", "5")},
		{a("SMOVE", "src", "dst", "m"), a("SMOVE", P+"src", P+"dst", "m")},
		{a("SSCAN", "s", "0", "MATCH", "*"), a("SSCAN", P+"s", "0", "MATCH", "*")},
	})
}

func TestRewriteSortedSets(t *testing.T) {
	runRewrites(t, []rewriteCase{
		{a("ZADD", "z", "NX", "1", "a", "2", "b"), a("ZADD", P+"z", "NX", "1", "a", "2", "b")},
		{a("ZINCRBY", "z", "1", "m"), a("ZINCRBY", P+"z", "1", "m")},
		{a("ZSCORE", "z", "m"), a("ZSCORE", P+"z", "m")},
		{a("ZMSCORE", "z", "a", "b"), a("ZMSCORE", P+"z", "a", "b")},
		{a("ZRANGE", "z", "0", "-1", "WITHSCORES"), a("ZRANGE", P+"z", "0", "-1", "WITHSCORES")},
		{a("ZRANGEBYSCORE", "z", "-inf", "+inf", "LIMIT", "0", "10"), a("ZRANGEBYSCORE", P+"z", "-inf", "+inf", "LIMIT", "0", "10")},
		{a("ZREVRANGEBYLEX", "z", "+", "-"), a("ZREVRANGEBYLEX", P+"z", "+", "-")},
		{a("ZRANK", "z", "m"), a("ZRANK", P+"z", "m")},
		{a("ZREM", "z", "a", "b"), a("ZREM", P+"z", "a", "b")},
		{a("ZREMRANGEBYSCORE", "z", "0", "1"), a("ZREMRANGEBYSCORE", P+"z", "0", "1")},
		{a("ZCARD", "z"), a("ZCARD", P+"z")},
		{a("ZCOUNT", "z", "0", "1"), a("ZCOUNT", P+"z", "0", "1")},
		{a("ZPOPMIN", "z", "2"), a("ZPOPMIN", P+"z", "2")},
		{a("ZRANDMEMBER", "z", "1", "WITHSCORES"), a("ZRANDMEMBER", P+"z", "1", "WITHSCORES")},
		{a("ZSCAN", "z", "0", "MATCH", "m*"), a("ZSCAN", P+"z", "0", "MATCH", "m*")},
		{a("ZUNIONSTORE", "d", "2", "a", "b"), a("ZUNIONSTORE", P+"d", "2", P+"a", P+"b")},
		{a("ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2", "AGGREGATE", "MAX"), a("ZUNIONSTORE", P+"d", "2", P+"a", P+"b", "WEIGHTS", "1", "2", "AGGREGATE", "MAX")},
		{a("ZINTERSTORE", "d", "2", "a", "b", "WEIGHTS", "2", "3"), a("ZINTERSTORE", P+"d", "2", P+"a", P+"b", "WEIGHTS", "2", "3")},
		{a("ZDIFFSTORE", "d", "2", "a", "b"), a("ZDIFFSTORE", P+"d", "2", P+"a", P+"b")},
		{a("ZUNION", "2", "a", "b", "WITHSCORES"), a("ZUNION", "2", P+"a", P+"b", "WITHSCORES")},
		{a("ZINTER", "1", "a"), a("ZINTER", "1", P+"a")},
		{a("ZDIFF", "2", "a", "b"), a("ZDIFF", "2", P+"a", P+"b")},
		{a("ZINTERCARD", "2", "a", "b", "LIMIT", "1"), a("ZINTERCARD", "2", P+"a", P+"b", "LIMIT", "1")},
		{a("ZRANGESTORE", "dst", "src", "0", "-1"), a("ZRANGESTORE", P+"dst", P+"src", "0", "-1")},
		{a("ZRANGESTORE", "dst", "src", "(1", "+inf", "BYSCORE", "LIMIT", "0", "5"), a("ZRANGESTORE", P+"dst", P+"src", "(1", "+inf", "BYSCORE", "LIMIT", "0", "5")},
		{a("ZMPOP", "2", "a", "b", "MIN"), a("ZMPOP", "2", P+"a", P+"b", "MIN")},
		{a("ZMPOP", "1", "a", "MAX", "COUNT", "2"), a("ZMPOP", "1", P+"a", "MAX", "COUNT", "2")},
		{a("BZMPOP", "0", "2", "a", "b", "MAX"), a("BZMPOP", "0", "2", P+"a", P+"b", "MAX")},
		{a("BZPOPMIN", "a", "b", "0"), a("BZPOPMIN", P+"a", P+"b", "0")},
		{a("BZPOPMAX", "a", "0.5"), a("BZPOPMAX", P+"a", "0.5")},
	})
}

func TestRewriteStreams(t *testing.T) {
	runRewrites(t, []rewriteCase{
		{a("XADD", "s", "*", "f", "v"), a("XADD", P+"s", "*", "f", "v")},
		{a("XADD", "s", "NOMKSTREAM", "MAXLEN", "~", "1000", "*", "f", "tenant:t1:v"), a("XADD", P+"s", "NOMKSTREAM", "MAXLEN", "~", "1000", "*", "f", "tenant:t1:v")},
		{a("XLEN", "s"), a("XLEN", P+"s")},
		{a("XRANGE", "s", "-", "+", "COUNT", "10"), a("XRANGE", P+"s", "-", "+", "COUNT", "10")},
		{a("XREVRANGE", "s", "+", "-"), a("XREVRANGE", P+"s", "+", "-")},
		{a("XDEL", "s", "1-1"), a("XDEL", P+"s", "1-1")},
		{a("XTRIM", "s", "MAXLEN", "10"), a("XTRIM", P+"s", "MAXLEN", "10")},
		{a("XSETID", "s", "5-0"), a("XSETID", P+"s", "5-0")},
		{a("XACK", "s", "g", "1-1", "2-2"), a("XACK", P+"s", "g", "1-1", "2-2")},
		{a("XPENDING", "s", "g", "-", "+", "10", "c"), a("XPENDING", P+"s", "g", "-", "+", "10", "c")},
		{a("XREAD", "STREAMS", "k", "0"), a("XREAD", "STREAMS", P+"k", "0")},
		{a("XREAD", "COUNT", "10", "STREAMS", "k1", "k2", "0", "0"), a("XREAD", "COUNT", "10", "STREAMS", P+"k1", P+"k2", "0", "0")},
		{a("XREAD", "BLOCK", "0", "COUNT", "1", "streams", "a", "b", "c", "$", "$", "$"), a("XREAD", "BLOCK", "0", "COUNT", "1", "streams", P+"a", P+"b", P+"c", "$", "$", "$")},
		// A stream named like the keyword, and IDs that look like keys.
		{a("XREAD", "STREAMS", "STREAMS", "k", "0", "tenant:t1:x"), a("XREAD", "STREAMS", P+"STREAMS", P+"k", "0", "tenant:t1:x")},
		{a("XREADGROUP", "GROUP", "g", "c", "STREAMS", "k", ">"), a("XREADGROUP", "GROUP", "g", "c", "STREAMS", P+"k", ">")},
		{a("XREADGROUP", "GROUP", "g", "c", "BLOCK", "0", "STREAMS", "k", "0"), a("XREADGROUP", "GROUP", "g", "c", "BLOCK", "0", "STREAMS", P+"k", "0")},
		{a("XREADGROUP", "GROUP", "g", "c", "COUNT", "1", "NOACK", "STREAMS", "a", "b", ">", ">"), a("XREADGROUP", "GROUP", "g", "c", "COUNT", "1", "NOACK", "STREAMS", P+"a", P+"b", ">", ">")},
		{a("XREADGROUP", "COUNT", "1", "GROUP", "g", "c", "STREAMS", "k", ">"), a("XREADGROUP", "COUNT", "1", "GROUP", "g", "c", "STREAMS", P+"k", ">")},
		{a("XINFO", "STREAM", "s"), a("XINFO", "STREAM", P+"s")},
		{a("XINFO", "STREAM", "s", "FULL", "COUNT", "5"), a("XINFO", "STREAM", P+"s", "FULL", "COUNT", "5")},
		{a("XINFO", "GROUPS", "s"), a("XINFO", "GROUPS", P+"s")},
		{a("XINFO", "CONSUMERS", "s", "g"), a("XINFO", "CONSUMERS", P+"s", "g")},
		{a("xinfo", "stream", "s"), a("xinfo", "stream", P+"s")},
		{a("XINFO", "HELP"), a("XINFO", "HELP")},
		{a("XGROUP", "CREATE", "s", "g", "$", "MKSTREAM"), a("XGROUP", "CREATE", P+"s", "g", "$", "MKSTREAM")},
		{a("XGROUP", "SETID", "s", "g", "0"), a("XGROUP", "SETID", P+"s", "g", "0")},
		{a("XGROUP", "DESTROY", "s", "g"), a("XGROUP", "DESTROY", P+"s", "g")},
		{a("XGROUP", "CREATECONSUMER", "s", "g", "c"), a("XGROUP", "CREATECONSUMER", P+"s", "g", "c")},
		{a("XGROUP", "DELCONSUMER", "s", "g", "c"), a("XGROUP", "DELCONSUMER", P+"s", "g", "c")},
		{a("XAUTOCLAIM", "s", "g", "c", "0", "0-0", "COUNT", "10", "JUSTID"), a("XAUTOCLAIM", P+"s", "g", "c", "0", "0-0", "COUNT", "10", "JUSTID")},
		{a("XCLAIM", "s", "g", "c", "0", "1-1", "2-2", "FORCE", "JUSTID"), a("XCLAIM", P+"s", "g", "c", "0", "1-1", "2-2", "FORCE", "JUSTID")},
	})
}

func TestRewriteGeo(t *testing.T) {
	runRewrites(t, []rewriteCase{
		{a("GEOADD", "g", "13.361389", "38.115556", "Palermo"), a("GEOADD", P+"g", "13.361389", "38.115556", "Palermo")},
		{a("GEOADD", "g", "XX", "CH", "13.3", "38.1", "m"), a("GEOADD", P+"g", "XX", "CH", "13.3", "38.1", "m")},
		{a("GEODIST", "g", "a", "b", "km"), a("GEODIST", P+"g", "a", "b", "km")},
		{a("GEOHASH", "g", "a"), a("GEOHASH", P+"g", "a")},
		{a("GEOPOS", "g", "a", "b"), a("GEOPOS", P+"g", "a", "b")},
		{a("GEORADIUS", "g", "15", "37", "200", "km", "WITHDIST"), a("GEORADIUS", P+"g", "15", "37", "200", "km", "WITHDIST")},
		{a("GEORADIUS", "g", "15", "37", "200", "km", "STORE", "dst"), a("GEORADIUS", P+"g", "15", "37", "200", "km", "STORE", P+"dst")},
		{a("GEORADIUS", "g", "15", "37", "200", "km", "COUNT", "3", "ASC", "STOREDIST", "d"), a("GEORADIUS", P+"g", "15", "37", "200", "km", "COUNT", "3", "ASC", "STOREDIST", P+"d")},
		{a("GEORADIUS", "g", "15", "37", "200", "km", "store", "a", "storedist", "b"), a("GEORADIUS", P+"g", "15", "37", "200", "km", "store", P+"a", "storedist", P+"b")},
		{a("GEORADIUS_RO", "g", "15", "37", "200", "km", "WITHCOORD"), a("GEORADIUS_RO", P+"g", "15", "37", "200", "km", "WITHCOORD")},
		{a("GEORADIUSBYMEMBER", "g", "m", "100", "km", "STORE", "d"), a("GEORADIUSBYMEMBER", P+"g", "m", "100", "km", "STORE", P+"d")},
		// The member is a value even when it reads "STORE".
		{a("GEORADIUSBYMEMBER", "g", "STORE", "100", "km"), a("GEORADIUSBYMEMBER", P+"g", "STORE", "100", "km")},
		{a("GEOSEARCH", "g", "FROMMEMBER", "m", "BYRADIUS", "10", "km", "ASC"), a("GEOSEARCH", P+"g", "FROMMEMBER", "m", "BYRADIUS", "10", "km", "ASC")},
		{a("GEOSEARCHSTORE", "d", "g", "FROMLONLAT", "15", "37", "BYBOX", "400", "400", "km", "STOREDIST"), a("GEOSEARCHSTORE", P+"d", P+"g", "FROMLONLAT", "15", "37", "BYBOX", "400", "400", "km", "STOREDIST")},
	})
}

// TestRewriteGeoradiusEveryStoreKey: Redis's georadiusGeneric takes the
// LAST STORE/STOREDIST option as the destination, while the key-specs (and
// so markKeys) only find the first of each. A second STORE must not reach
// Redis unprefixed: it would write (or, for an empty result, DELETE) any
// key of the shared server.
func TestRewriteGeoradiusEveryStoreKey(t *testing.T) {
	for _, in := range [][]string{
		a("GEORADIUS", "g", "0", "0", "1", "km", "STORE", "mine", "STORE", "tenant:t2:victim"),
		a("GEORADIUS", "g", "0", "0", "1", "km", "STOREDIST", "mine", "STOREDIST", "victim"),
		a("GEORADIUS", "g", "0", "0", "1", "km", "STORE", "a", "STOREDIST", "b", "STORE", "victim"),
		a("GEORADIUSBYMEMBER", "g", "m", "1", "km", "STORE", "mine", "STORE", "victim"),
	} {
		got, err := rewriteReq(t, in)
		if err != nil {
			continue // refusing the request is as good
		}
		for _, dest := range redisGeoStoreKeys(got) {
			if !strings.HasPrefix(dest, P) {
				t.Errorf("%q\n → %q\n Redis stores into %q, outside the tenant", in, got, dest)
			}
		}
	}
}

// redisGeoStoreKeys returns every argument georadiusGeneric (Redis 7.0)
// takes as a STORE/STOREDIST destination while it parses the options, up
// to the first option it rejects (the last one wins, but all must be safe).
func redisGeoStoreKeys(args []string) []string {
	base := 6 // GEORADIUS key lon lat radius unit
	if strings.EqualFold(args[0], "georadiusbymember") || strings.EqualFold(args[0], "georadiusbymember_ro") {
		base = 5
	}
	var out []string
	for i := base; i < len(args); i++ {
		more := i+1 < len(args)
		switch strings.ToLower(args[i]) {
		case "withdist", "withhash", "withcoord", "asc", "desc", "any":
		case "count":
			if !more {
				return out
			}
			i++
		case "store", "storedist":
			if !more {
				return out
			}
			out = append(out, args[i+1])
			i++
		default:
			return out // syntax error: Redis stops here
		}
	}
	return out
}

func TestRewriteBitmapsAndHyperLogLog(t *testing.T) {
	runRewrites(t, []rewriteCase{
		{a("BITOP", "AND", "dest", "k1", "k2"), a("BITOP", "AND", P+"dest", P+"k1", P+"k2")},
		{a("BITOP", "NOT", "dest", "src"), a("BITOP", "NOT", P+"dest", P+"src")},
		{a("BITFIELD", "k", "SET", "u8", "0", "255", "GET", "u8", "0"), a("BITFIELD", P+"k", "SET", "u8", "0", "255", "GET", "u8", "0")},
		{a("BITFIELD_RO", "k", "GET", "u8", "0"), a("BITFIELD_RO", P+"k", "GET", "u8", "0")},
		{a("BITCOUNT", "k", "0", "-1", "BIT"), a("BITCOUNT", P+"k", "0", "-1", "BIT")},
		{a("BITPOS", "k", "1"), a("BITPOS", P+"k", "1")},
		{a("SETBIT", "k", "7", "1"), a("SETBIT", P+"k", "7", "1")},
		{a("GETBIT", "k", "7"), a("GETBIT", P+"k", "7")},
		{a("PFADD", "h", "a", "b"), a("PFADD", P+"h", "a", "b")},
		{a("PFCOUNT", "h"), a("PFCOUNT", P+"h")},
		{a("PFCOUNT", "a", "b", "c"), a("PFCOUNT", P+"a", P+"b", P+"c")},
		{a("PFMERGE", "dest", "a", "b"), a("PFMERGE", P+"dest", P+"a", P+"b")},
	})
}

func TestRewriteKeyspace(t *testing.T) {
	runRewrites(t, []rewriteCase{
		{a("DEL", "a"), a("DEL", P+"a")},
		{a("DEL", "a", "b", "c"), a("DEL", P+"a", P+"b", P+"c")},
		{a("EXISTS", "a", "a"), a("EXISTS", P+"a", P+"a")},
		{a("UNLINK", "a", "b"), a("UNLINK", P+"a", P+"b")},
		{a("TOUCH", "a", "b"), a("TOUCH", P+"a", P+"b")},
		{a("TYPE", "k"), a("TYPE", P+"k")},
		{a("RENAME", "a", "b"), a("RENAME", P+"a", P+"b")},
		{a("RENAMENX", "a", "b"), a("RENAMENX", P+"a", P+"b")},
		{a("EXPIRE", "k", "10"), a("EXPIRE", P+"k", "10")},
		{a("EXPIRE", "k", "10", "NX"), a("EXPIRE", P+"k", "10", "NX")},
		{a("PEXPIRE", "k", "100"), a("PEXPIRE", P+"k", "100")},
		{a("EXPIREAT", "k", "1700000000"), a("EXPIREAT", P+"k", "1700000000")},
		{a("PEXPIREAT", "k", "1700000000000", "GT"), a("PEXPIREAT", P+"k", "1700000000000", "GT")},
		{a("EXPIRETIME", "k"), a("EXPIRETIME", P+"k")},
		{a("TTL", "k"), a("TTL", P+"k")},
		{a("PTTL", "k"), a("PTTL", P+"k")},
		{a("PERSIST", "k"), a("PERSIST", P+"k")},
		{a("OBJECT", "ENCODING", "k"), a("OBJECT", "ENCODING", P+"k")},
		{a("OBJECT", "FREQ", "k"), a("OBJECT", "FREQ", P+"k")},
		{a("OBJECT", "IDLETIME", "k"), a("OBJECT", "IDLETIME", P+"k")},
		{a("OBJECT", "REFCOUNT", "k"), a("OBJECT", "REFCOUNT", P+"k")},
		{a("object", "encoding", "k"), a("object", "encoding", P+"k")},
		{a("OBJECT", "HELP"), a("OBJECT", "HELP")},
		{a("MEMORY", "USAGE", "k"), a("MEMORY", "USAGE", P+"k")},
		{a("MEMORY", "USAGE", "k", "SAMPLES", "5"), a("MEMORY", "USAGE", P+"k", "SAMPLES", "5")},
		{a("DUMP", "k"), a("DUMP", P+"k")},
		{a("RESTORE", "k", "0", "\x00\x03bar\n\x00", "REPLACE", "ABSTTL"), a("RESTORE", P+"k", "0", "\x00\x03bar\n\x00", "REPLACE", "ABSTTL")},
		{a("WATCH", "a"), a("WATCH", P+"a")},
		{a("WATCH", "a", "b"), a("WATCH", P+"a", P+"b")},
		// Keyed commands without keys go through untouched.
		{a("TIME"), a("TIME")},
		{a("LASTSAVE"), a("LASTSAVE")},
		{a("WAIT", "1", "0"), a("WAIT", "1", "0")},
		{a("LOLWUT", "VERSION", "5"), a("LOLWUT", "VERSION", "5")},
		{a("PUBSUB", "HELP"), a("PUBSUB", "HELP")},
	})
}

func TestRewriteSort(t *testing.T) {
	runRewrites(t, []rewriteCase{
		{a("SORT", "k"), a("SORT", P+"k")},
		{a("SORT", "k", "BY", "w_*"), a("SORT", P+"k", "BY", P+"w_*")},
		{a("SORT", "k", "BY", "nosort"), a("SORT", P+"k", "BY", "nosort")},
		{a("SORT", "k", "GET", "#"), a("SORT", P+"k", "GET", "#")},
		{a("SORT", "k", "GET", "o_*"), a("SORT", P+"k", "GET", P+"o_*")},
		{a("SORT", "k", "GET", "h_*->field"), a("SORT", P+"k", "GET", P+"h_*->field")},
		{a("SORT", "k", "BY", "h_*->w"), a("SORT", P+"k", "BY", P+"h_*->w")},
		{a("SORT", "k", "LIMIT", "0", "10", "ALPHA", "DESC"), a("SORT", P+"k", "LIMIT", "0", "10", "ALPHA", "DESC")},
		{a("SORT", "k", "ASC"), a("SORT", P+"k", "ASC")},
		{a("SORT", "k", "STORE", "d"), a("SORT", P+"k", "STORE", P+"d")},
		{a("SORT", "k", "STORE", "a", "STORE", "b"), a("SORT", P+"k", "STORE", P+"a", "STORE", P+"b")},
		{a("SORT", "k", "BY", "w_*", "GET", "#", "GET", "o_*", "LIMIT", "0", "5", "ASC", "ALPHA", "STORE", "d"),
			a("SORT", P+"k", "BY", P+"w_*", "GET", "#", "GET", P+"o_*", "LIMIT", "0", "5", "ASC", "ALPHA", "STORE", P+"d")},
		{a("sort", "k", "by", "w_*", "get", "o_*", "store", "d"), a("sort", P+"k", "by", P+"w_*", "get", P+"o_*", "store", P+"d")},
		// Option words as values are values.
		{a("SORT", "k", "GET", "store", "BY", "get"), a("SORT", P+"k", "GET", P+"store", "BY", "get")},
		{a("SORT", "store", "LIMIT", "0", "1"), a("SORT", P+"store", "LIMIT", "0", "1")},
		{a("SORT_RO", "k"), a("SORT_RO", P+"k")},
		{a("SORT_RO", "k", "BY", "w_*", "GET", "#", "GET", "o_*->f", "LIMIT", "0", "1", "ALPHA"),
			a("SORT_RO", P+"k", "BY", P+"w_*", "GET", "#", "GET", P+"o_*->f", "LIMIT", "0", "1", "ALPHA")},
	})
}

func TestRewriteSortErrors(t *testing.T) {
	for _, in := range [][]string{
		a("SORT_RO", "k", "STORE", "d"), // SORT_RO has no STORE
		a("SORT", "k", "FOO"),
		a("SORT", "k", "LIMIT", "0"),
		a("SORT", "k", "BY"),
		a("SORT", "k", "GET"),
		a("SORT", "k", "STORE"),
		a("SORT", "k", "GET", "#", "x"),
	} {
		if got, err := rewriteReq(t, in); !errors.Is(err, ErrSyntax) {
			t.Errorf("%q: got %q, %v; want ErrSyntax", in, got, err)
		}
	}
	if ErrSyntax.Error() != "ERR syntax error" {
		t.Errorf("ErrSyntax %q is not Redis's wording", ErrSyntax)
	}
}

func TestRewriteScan(t *testing.T) {
	runRewrites(t, []rewriteCase{
		{a("SCAN", "0"), a("SCAN", "0", "MATCH", P+"*")},
		{a("SCAN", "17", "COUNT", "10"), a("SCAN", "17", "COUNT", "10", "MATCH", P+"*")},
		{a("SCAN", "0", "COUNT", "10", "TYPE", "string"), a("SCAN", "0", "COUNT", "10", "TYPE", "string", "MATCH", P+"*")},
		{a("SCAN", "0", "MATCH", "u*"), a("SCAN", "0", "MATCH", P+"u*")},
		{a("SCAN", "0", "MATCH", "u*", "COUNT", "5", "TYPE", "hash"), a("SCAN", "0", "MATCH", P+"u*", "COUNT", "5", "TYPE", "hash")},
		{a("scan", "0", "match", "x"), a("scan", "0", "match", P+"x")},
		{a("SCAN", "0", "MATCH", "a", "MATCH", "b"), a("SCAN", "0", "MATCH", P+"a", "MATCH", P+"b")},
		{a("SCAN", "0", "COUNT", "match"), a("SCAN", "0", "COUNT", "match", "MATCH", P+"*")},
		// COUNT is capped: one upstream step never walks the whole server.
		{a("SCAN", "0", "COUNT", "1000"), a("SCAN", "0", "COUNT", "1000", "MATCH", P+"*")},
		{a("SCAN", "0", "COUNT", "1001"), a("SCAN", "0", "COUNT", "1000", "MATCH", P+"*")},
		{a("SCAN", "0", "count", "100000000", "MATCH", "u*"), a("SCAN", "0", "count", "1000", "MATCH", P+"u*")},
		{a("SCAN", "0", "COUNT", "99999999999999999999"), a("SCAN", "0", "COUNT", "99999999999999999999", "MATCH", P+"*")},
		{a("SCAN", "0", "COUNT", "-5"), a("SCAN", "0", "COUNT", "-5", "MATCH", P+"*")},
	})
	for _, in := range [][]string{
		a("SCAN", "0", "COUNT"),
		a("SCAN", "0", "MATCH"),
		a("SCAN", "0", "MATCH", "a", "COUNT"),
		a("SCAN", "0", "MATCH", "a", "TYPE", "string", "x"),
	} {
		if got, err := rewriteReq(t, in); !errors.Is(err, ErrSyntax) {
			t.Errorf("%q: got %q, %v; want ErrSyntax", in, got, err)
		}
	}
}

func TestRewriteGlobPrefix(t *testing.T) {
	// A prefix built outside Prefix() may hold glob characters: patterns
	// then carry it escaped, keys and channels carry it as it is.
	r := NewRewriter("t[1]*:")
	if got := string(r.GlobPrefix()); got != `t\[1\]\*:` {
		t.Fatalf("GlobPrefix %q", got)
	}
	if got := string(r.KeyPrefix()); got != "t[1]*:" {
		t.Fatalf("KeyPrefix %q", got)
	}
	check := func(in, want []string) {
		t.Helper()
		args := toArgs(in)
		out, err := r.AppendRequest(nil, Lookup(args), args)
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		got, _, _, _ := resp.ParseCommand(out, nil, resp.DefaultLimits)
		if !sameArgs(toStrings(got), want) {
			t.Errorf("%q → %q, want %q", in, toStrings(got), want)
		}
	}
	check(a("SCAN", "0"), a("SCAN", "0", "MATCH", `t\[1\]\*:*`))
	check(a("PSUBSCRIBE", "n.*"), a("PSUBSCRIBE", `t\[1\]\*:n.*`))
	check(a("PUBSUB", "CHANNELS", "n.*"), a("PUBSUB", "CHANNELS", `t\[1\]\*:n.*`))
	check(a("GET", "k"), a("GET", "t[1]*:k"))
	check(a("SUBSCRIBE", "ch"), a("SUBSCRIBE", "t[1]*:ch"))
	check(a("PUBLISH", "ch", "m"), a("PUBLISH", "t[1]*:ch", "m"))
	// SORT patterns are not globs: '*' is substituted, nothing else is special.
	check(a("SORT", "k", "BY", "w_*"), a("SORT", "t[1]*:k", "BY", "t[1]*:w_*"))
}

func TestRewritePubSub(t *testing.T) {
	runRewrites(t, []rewriteCase{
		{a("PUBLISH", "ch", "tenant:t1:msg"), a("PUBLISH", P+"ch", "tenant:t1:msg")},
		// A tenant cannot forge keyspace notifications.
		{a("PUBLISH", "__keyspace@0__:k", "del"), a("PUBLISH", P+"__keyspace@0__:k", "del")},
		{a("PUBLISH", "__keyevent@0__:del", "k"), a("PUBLISH", P+"__keyevent@0__:del", "k")},
		{a("SPUBLISH", "ch", "m"), a("SPUBLISH", P+"ch", "m")},
		{a("SUBSCRIBE", "a"), a("SUBSCRIBE", P+"a")},
		{a("SUBSCRIBE", "a", "b"), a("SUBSCRIBE", P+"a", P+"b")},
		{a("SUBSCRIBE", "__keyspace@0__:k"), a("SUBSCRIBE", "__keyspace@0__:"+P+"k")},
		{a("SUBSCRIBE", "__keyspace@12__:{u}:k"), a("SUBSCRIBE", "__keyspace@12__:"+P+"{u}:k")},
		{a("SUBSCRIBE", "__keyevent@0__:set"), a("SUBSCRIBE", "__keyevent@0__:set")},
		{a("SUBSCRIBE", "__keyspace@0"), a("SUBSCRIBE", P+"__keyspace@0")},
		{a("SUBSCRIBE", "__keyevent@0"), a("SUBSCRIBE", P+"__keyevent@0")},
		{a("SUBSCRIBE", "x__keyspace@0__:k"), a("SUBSCRIBE", P+"x__keyspace@0__:k")},
		{a("SSUBSCRIBE", "a", "b"), a("SSUBSCRIBE", P+"a", P+"b")},
		{a("UNSUBSCRIBE"), a("UNSUBSCRIBE")},
		{a("UNSUBSCRIBE", "a", "__keyspace@0__:k"), a("UNSUBSCRIBE", P+"a", "__keyspace@0__:"+P+"k")},
		{a("SUNSUBSCRIBE", "a"), a("SUNSUBSCRIBE", P+"a")},
		{a("PSUBSCRIBE", "news.*"), a("PSUBSCRIBE", P+"news.*")},
		{a("PSUBSCRIBE", "a?", "b[xy]"), a("PSUBSCRIBE", P+"a?", P+"b[xy]")},
		{a("PSUBSCRIBE", "__keyspace@*__:*"), a("PSUBSCRIBE", "__keyspace@*__:"+P+"*")},
		{a("PSUBSCRIBE", "__keyspace@0__:user:*"), a("PSUBSCRIBE", "__keyspace@0__:"+P+"user:*")},
		{a("PSUBSCRIBE", "__keyevent@*__:expired"), a("PSUBSCRIBE", "__keyevent@*__:expired")},
		// A keyspace channel whose db part is not a plain number (digits and
		// '*' in a pattern) is an ordinary name: prefixed in front.
		{a("SUBSCRIBE", "__keyspace@x__:k"), a("SUBSCRIBE", P+"__keyspace@x__:k")},
		{a("SUBSCRIBE", "__keyspace@*__:k"), a("SUBSCRIBE", P+"__keyspace@*__:k")},
		{a("SUBSCRIBE", "__keyspace@__:k"), a("SUBSCRIBE", P+"__keyspace@__:k")},
		{a("PSUBSCRIBE", "__keyspace@[^__:]*"), a("PSUBSCRIBE", P+"__keyspace@[^__:]*")},
		{a("PSUBSCRIBE", "__keyspace@1?__:*"), a("PSUBSCRIBE", P+"__keyspace@1?__:*")},
		{a("PSUBSCRIBE", "__keyspace@1*__:*"), a("PSUBSCRIBE", "__keyspace@1*__:"+P+"*")},
		{a("PUNSUBSCRIBE"), a("PUNSUBSCRIBE")},
		{a("PUNSUBSCRIBE", "news.*", "__keyspace@*__:*"), a("PUNSUBSCRIBE", P+"news.*", "__keyspace@*__:"+P+"*")},
		{a("PUBSUB", "CHANNELS"), a("PUBSUB", "CHANNELS", P+"*")},
		{a("PUBSUB", "CHANNELS", "news.*"), a("PUBSUB", "CHANNELS", P+"news.*")},
		{a("pubsub", "channels", "*"), a("pubsub", "channels", P+"*")},
		{a("PUBSUB", "NUMSUB"), a("PUBSUB", "NUMSUB")},
		{a("PUBSUB", "NUMSUB", "a", "b"), a("PUBSUB", "NUMSUB", P+"a", P+"b")},
		{a("PUBSUB", "SHARDNUMSUB", "a"), a("PUBSUB", "SHARDNUMSUB", P+"a")},
		{a("PUBSUB", "SHARDCHANNELS"), a("PUBSUB", "SHARDCHANNELS", P+"*")},
		{a("PUBSUB", "SHARDCHANNELS", "s.*"), a("PUBSUB", "SHARDCHANNELS", P+"s.*")},
	})
	for _, in := range [][]string{
		a("PUBSUB", "CHANNELS", "a", "b"),
		a("PUBSUB", "SHARDCHANNELS", "a", "b"),
	} {
		if got, err := rewriteReq(t, in); !errors.Is(err, ErrSyntax) {
			t.Errorf("%q: got %q, %v; want ErrSyntax", in, got, err)
		}
	}
}

// TestPubsubNumsubKeyspaceMatchesSubscribe: PUBSUB NUMSUB must ask about
// the channel SUBSCRIBE subscribed to. SUBSCRIBE __keyspace@0__:k listens
// on __keyspace@0__:tenant:t1:k, but NUMSUB puts the prefix in front and
// asks about tenant:t1:__keyspace@0__:k, which always has 0 subscribers.
func TestPubsubNumsubKeyspaceMatchesSubscribe(t *testing.T) {
	for _, ch := range []string{"__keyspace@0__:k", "__keyspace@3__:{u}:k", "news", "__keyspace@x__:k"} {
		sub, err := rewriteReq(t, a("SUBSCRIBE", ch))
		if err != nil {
			t.Fatal(err)
		}
		num, err := rewriteReq(t, a("PUBSUB", "NUMSUB", ch))
		if err != nil {
			t.Fatal(err)
		}
		if sub[1] != num[2] {
			t.Errorf("%q: SUBSCRIBE listens on %q but PUBSUB NUMSUB asks about %q", ch, sub[1], num[2])
		}
	}
}

// TestPsubscribeKeyspaceGlobCannotEscape: the prefix is put after the first
// "__:" of a keyspace pattern, but the client's part before it is a glob
// too. A character class that swallows the "__:" puts the tenant's prefix
// inside the class, and the pattern then matches every tenant's keyspace
// notifications: `__keyspace@[^__:]*` becomes `__keyspace@[^__:tenant:t1:]*`,
// which matches `__keyspace@0__:tenant:t2:secret`.
func TestPsubscribeKeyspaceGlobCannotEscape(t *testing.T) {
	foreign := []string{
		"__keyspace@0__:tenant:t2:secret",
		"__keyspace@0__:secret",
		"__keyspace@9__:tenant:t2:x",
	}
	for _, pat := range []string{
		"__keyspace@[^__:]*",
		"__keyspace@[__:]*",
		"__keyspace@[0-9__:]*",
		"__keyspace@?__:*",
		"__keyspace@*__:*",
		"__keyspace@[0-9]__:*",
	} {
		got, err := rewriteReq(t, a("PSUBSCRIBE", pat))
		if err != nil {
			continue // refused: fine
		}
		for _, ch := range foreign {
			if globMatch(got[1], ch) {
				t.Errorf("PSUBSCRIBE %q → %q matches another tenant's channel %q", pat, got[1], ch)
			}
		}
	}
}

// globMatch is a port of Redis's stringmatchlen (case-sensitive), so that
// tests can tell which channels a rewritten pattern really subscribes to.
func globMatch(pattern, s string) bool {
	p, str := pattern, s
	for len(p) > 0 && len(str) > 0 {
		ended := false
		switch p[0] {
		case '*':
			for len(p) > 1 && p[1] == '*' {
				p = p[1:]
			}
			if len(p) == 1 {
				return true
			}
			for len(str) > 0 {
				if globMatch(p[1:], str) {
					return true
				}
				str = str[1:]
			}
			return false
		case '?':
			str = str[1:]
		case '[':
			p = p[1:]
			not := len(p) > 0 && p[0] == '^'
			if not {
				p = p[1:]
			}
			match := false
			for {
				if len(p) >= 2 && p[0] == '\\' {
					p = p[1:]
					if p[0] == str[0] {
						match = true
					}
				} else if len(p) == 0 {
					ended = true // an unterminated class ends with the pattern
					break
				} else if p[0] == ']' {
					break
				} else if len(p) >= 3 && p[1] == '-' {
					lo, hi := p[0], p[2]
					if lo > hi {
						lo, hi = hi, lo
					}
					p = p[2:]
					if str[0] >= lo && str[0] <= hi {
						match = true
					}
				} else if p[0] == str[0] {
					match = true
				}
				p = p[1:]
			}
			if not {
				match = !match
			}
			if !match {
				return false
			}
			str = str[1:]
		case '\\':
			if len(p) >= 2 {
				p = p[1:]
			}
			fallthrough
		default:
			if p[0] != str[0] {
				return false
			}
			str = str[1:]
		}
		if !ended {
			p = p[1:]
		}
		if len(str) == 0 {
			for len(p) > 0 && p[0] == '*' {
				p = p[1:]
			}
			break
		}
	}
	return len(p) == 0 && len(str) == 0
}

func TestGlobMatchHelper(t *testing.T) {
	for _, tt := range []struct {
		p, s string
		ok   bool
	}{
		{"*", "", false /* as in Redis */}, {"*", "abc", true}, {"a*", "a", true}, {"a*c", "abbc", true}, {"a*c", "ab", false},
		{"a?c", "abc", true}, {"a?c", "ac", false}, {"[abc]x", "bx", true}, {"[^abc]x", "bx", false},
		{"[a-c]", "b", true}, {"[c-a]", "b", true}, {`\*`, "*", true}, {`\*`, "a", false},
		{"tenant:t1:*", "tenant:t1:k", true}, {"tenant:t1:*", "tenant:t2:k", false},
		{"__keyspace@[^__:tenant:t1:]*", "__keyspace@0__:tenant:t2:secret", true},
		{"__keyspace@*__:tenant:t1:*", "__keyspace@0__:tenant:t2:k", false},
	} {
		if got := globMatch(tt.p, tt.s); got != tt.ok {
			t.Errorf("globMatch(%q, %q) = %v", tt.p, tt.s, got)
		}
	}
}

func TestRewriteEvalKeys(t *testing.T) {
	r := NewRewriter(P)
	tests := []struct {
		in   []string
		keys []int
		err  bool
	}{
		{a("EVAL", "return 1", "0"), nil, false},
		{a("EVAL", "return 1", "0", "argv1"), nil, false},
		{a("EVAL", "return KEYS", "2", "k1", "k2", "a1"), []int{3, 4}, false},
		{a("eval", "return KEYS", "1", "k1"), []int{3}, false},
		{a("EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", "1", "k", "a"), []int{3}, false},
		{a("EVAL_RO", "return 1", "1", "k"), []int{3}, false},
		{a("EVALSHA_RO", "x", "2", "a", "b"), []int{3, 4}, false},
		{a("EVAL", "return 1", "3", "k1"), nil, true},
		{a("EVAL", "return 1", "2", "k1"), nil, true},
		{a("EVAL", "return 1", "x", "k1"), nil, true},
		{a("EVAL", "return 1", "-1", "k1"), nil, true},
		{a("EVAL", "return 1", "1.0", "k1"), nil, true},
		{a("EVAL", "return 1", "", "k1"), nil, true},
	}
	for _, tt := range tests {
		args := toArgs(tt.in)
		cmd := Lookup(args)
		if cmd == nil || !cmd.ArityOK(len(args)) {
			t.Fatalf("%q: not a valid command", tt.in)
		}
		idx, err := r.Keys(cmd, args, make([]int, 3, 8))
		if tt.err {
			if err == nil || !strings.HasPrefix(err.Error(), "ERR ") || len(idx) != 0 {
				t.Errorf("%q: Keys = %v, %v; want no keys and a Redis-style error", tt.in, idx, err)
			}
			continue
		}
		if err != nil || len(idx) != len(tt.keys) {
			t.Errorf("%q: Keys = %v, %v; want %v", tt.in, idx, err, tt.keys)
			continue
		}
		for i := range idx {
			if idx[i] != tt.keys[i] {
				t.Errorf("%q: Keys = %v; want %v", tt.in, idx, tt.keys)
			}
		}
	}
	// Scripts are emulated: AppendRequest refuses them.
	args := toArgs(a("EVAL", "return 1", "1", "k"))
	if out, err := r.AppendRequest([]byte(sentinel), Lookup(args), args); !errors.Is(err, ErrNotRewritable) || string(out) != sentinel {
		t.Errorf("AppendRequest(EVAL) = %q, %v; want dst unchanged and ErrNotRewritable", out, err)
	}
}

// TestRewriteUnlocatableKeys: a command whose keys cannot be found from its
// arguments is refused with a Redis-style error (keyfence words it as Redis
// would), and dst is left as it was (rewriteReq checks that).
func TestRewriteUnlocatableKeys(t *testing.T) {
	for _, in := range [][]string{
		a("ZUNIONSTORE", "d", "5", "a", "b"),
		a("ZUNIONSTORE", "d", "3", "a", "b"),
		a("ZUNIONSTORE", "d", "x", "a"),
		a("ZUNIONSTORE", "d", "-1", "a"),
		a("ZINTERSTORE", "d", "99999999999999999999", "a"),
		a("ZDIFFSTORE", "d", "2", "a"),
		a("ZUNION", "3", "a", "b"),
		a("ZINTERCARD", "x", "a"),
		a("ZMPOP", "-2", "a", "MIN"),
		a("BZMPOP", "0", "3", "a", "MIN"),
		a("LMPOP", "3", "a", "LEFT"),
		a("LMPOP", "1e1", "a", "LEFT"),
		a("BLMPOP", "0", "abc", "a", "LEFT"),
		a("BLMPOP", "0", "5", "a", "LEFT"),
		a("SINTERCARD", "9", "a"),
		a("SINTERCARD", " 1", "a"),
	} {
		got, err := rewriteReq(t, in)
		if err == nil || !strings.HasPrefix(err.Error(), "ERR ") {
			t.Errorf("%q: got %q, %v; want a Redis-style error", in, got, err)
		}
	}
	// numkeys 0 has no keys at all; Redis itself rejects it, and nothing in
	// the request is prefixed (so nothing can be mistaken for a key).
	got, err := rewriteReq(t, a("ZUNION", "0", "a"))
	if err == nil && !sameArgs(got, a("ZUNION", "0", "a")) {
		t.Errorf("ZUNION 0 a → %q", got)
	}
}

func TestAppendRequestRefusesOtherPolicies(t *testing.T) {
	r := NewRewriter(P)
	for _, in := range [][]string{
		a("FLUSHALL"), a("CONFIG", "GET", "*"), a("AUTH", "x"), a("MIGRATE", "h", "1", "k", "0", "0"),
		a("SELECT", "1"), a("RANDOMKEY"), a("SCRIPT", "LOAD", "return 1"), a("MULTI"),
	} {
		args := toArgs(in)
		cmd := Lookup(args)
		if cmd == nil {
			t.Fatalf("%q: unknown", in)
		}
		out, err := r.AppendRequest([]byte(sentinel), cmd, args)
		if !errors.Is(err, ErrNotRewritable) || string(out) != sentinel {
			t.Errorf("%q (%v): %q, %v; want dst unchanged and ErrNotRewritable", in, cmd.Policy, out, err)
		}
	}
	// A pattern or channel entry the rewriter has no rule for is refused too.
	for _, c := range []*Command{
		{Name: "bogus", Policy: PolicyPattern},
		{Name: "bogus", Policy: PolicyChannel},
		{Name: "sort", Policy: PolicyKeyed, KeySpecs: []KeySpec{{BeginSearch: BeginSearch{Unknown: true}, FindKeys: FindKeys{Unknown: true}}}},
	} {
		args := toArgs(a("BOGUS", "k"))
		out, err := r.AppendRequest([]byte(sentinel), c, args)
		if err == nil || string(out) != sentinel {
			t.Errorf("%+v: %q, %v; want an error and dst unchanged", c, out, err)
		}
	}
}

func TestRewriterReusesScratch(t *testing.T) {
	r := NewRewriter(P)
	dst := make([]byte, 0, 4096)
	var err error
	// A long command first, then short ones: the scratch flags must be
	// cleared between calls.
	long := toArgs(a("DEL", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j"))
	if dst, err = r.AppendRequest(dst[:0], Lookup(long), long); err != nil {
		t.Fatal(err)
	}
	short := toArgs(a("HSET", "h", "f", "v", "g", "w", "x", "y"))
	if dst, err = r.AppendRequest(dst[:0], Lookup(short), short); err != nil {
		t.Fatal(err)
	}
	got, _, _, _ := resp.ParseCommand(dst, nil, resp.DefaultLimits)
	if want := a("HSET", P+"h", "f", "v", "g", "w", "x", "y"); !sameArgs(toStrings(got), want) {
		t.Errorf("after DEL: %q, want %q", toStrings(got), want)
	}
	sortArgs := toArgs(a("SORT", "k", "GET", "o_*", "GET", "#"))
	if dst, err = r.AppendRequest(dst[:0], Lookup(sortArgs), sortArgs); err != nil {
		t.Fatal(err)
	}
	if dst, err = r.AppendRequest(dst[:0], Lookup(long), long); err != nil {
		t.Fatal(err)
	}
	get := toArgs(a("GET", "k"))
	allocs := testing.AllocsPerRun(200, func() {
		dst, _ = r.AppendRequest(dst[:0], Lookup(get), get)
	})
	if allocs != 0 {
		t.Errorf("Lookup+AppendRequest(GET) allocates %.0f times per call", allocs)
	}
}

func TestLookup(t *testing.T) {
	tests := []struct {
		in   []string
		name string // "" for nil
	}{
		{a("GET", "k"), "get"},
		{a("get"), "get"},
		{a("gEt", "k"), "get"},
		{a("OBJECT", "ENCODING", "k"), "object|encoding"},
		{a("object", "Encoding"), "object|encoding"},
		{a("OBJECT"), "object"},
		{a("OBJECT", "NOSUCH", "k"), "object"},
		{a("XINFO", "STREAM", "s"), "xinfo|stream"},
		{a("XGROUP", "createconsumer", "s", "g", "c"), "xgroup|createconsumer"},
		{a("MEMORY", "USAGE", "k"), "memory|usage"},
		{a("PUBSUB", "numsub"), "pubsub|numsub"},
		{a("CONFIG", "GET", "x"), "config|get"},
		{a("CLIENT", "KILL", "x"), "client|kill"},
		{a("SCRIPT", "LOAD", "x"), "script|load"},
		// A plain command with arguments that name subcommands elsewhere.
		{a("SET", "ENCODING", "x"), "set"},
		{a("GEORADIUSBYMEMBER_RO", "g", "m", "1", "km"), "georadiusbymember_ro"},
		{a("NOSUCHCOMMAND"), ""},
		{a(""), ""},
		{a("GET\x00"), ""},
		{a(strings.Repeat("g", 33)), ""},
		{a(strings.Repeat("get", 100)), ""},
		{a("ＧＥＴ"), ""},
		{nil, ""},
	}
	for _, tt := range tests {
		c := Lookup(toArgs(tt.in))
		switch {
		case tt.name == "" && c != nil:
			t.Errorf("Lookup(%q) = %s, want nil", tt.in, c.Name)
		case tt.name != "" && (c == nil || c.Name != tt.name):
			t.Errorf("Lookup(%q) = %v, want %s", tt.in, c, tt.name)
		}
	}
	if Lookup(toArgs(a("GET"))) != Lookup(toArgs(a("get"))) {
		t.Error("GET and get are different entries")
	}
	if c := Lookup(toArgs(a("OBJECT"))); !c.IsContainer() {
		t.Error("OBJECT is not a container")
	}
	if c := Lookup(toArgs(a("OBJECT", "FREQ", "k"))); c.IsContainer() {
		t.Error("OBJECT FREQ is a container")
	}
	if c := Lookup(toArgs(a("GET", "k"))); c.IsContainer() {
		t.Error("GET is a container")
	}
	args := toArgs(a("OBJECT", "ENCODING", "key"))
	if allocs := testing.AllocsPerRun(100, func() { Lookup(args) }); allocs != 0 {
		t.Errorf("Lookup allocates %.0f times", allocs)
	}
	if c := LookupName("hGetAll"); c == nil || c.Name != "hgetall" {
		t.Errorf("LookupName(hGetAll) = %v", c)
	}
	if c := LookupName("nosuchcommandwhosenameislongerthanthirtytwo"); c != nil {
		t.Errorf("LookupName of a long unknown name = %v", c)
	}
	if allocs := testing.AllocsPerRun(100, func() { LookupName("ZREVRANGEBYSCORE") }); allocs != 0 {
		t.Errorf("LookupName allocates %.0f times", allocs)
	}
}

func TestArityOK(t *testing.T) {
	tests := []struct {
		in []string
		ok bool
	}{
		{a("GET", "k"), true},
		{a("GET"), false},
		{a("GET", "k", "x"), false},
		{a("SET", "k", "v"), true},
		{a("SET", "k"), false},
		{a("SET", "k", "v", "EX", "1", "NX", "GET"), true},
		{a("DEL"), false},
		{a("DEL", "a", "b", "c", "d"), true},
		{a("PING"), true},
		{a("OBJECT", "ENCODING"), false},
		{a("OBJECT", "ENCODING", "k"), true},
		{a("OBJECT", "ENCODING", "k", "x"), false},
		{a("OBJECT"), false},
		{a("XREADGROUP", "GROUP", "g", "c", "STREAMS", "k"), false},
		{a("XREADGROUP", "GROUP", "g", "c", "STREAMS", "k", ">"), true},
		{a("UNSUBSCRIBE"), true},
		{a("SUBSCRIBE"), false},
		{a("BLMOVE", "a", "b", "LEFT", "RIGHT", "0"), true},
		{a("BLMOVE", "a", "b", "LEFT", "RIGHT"), false},
	}
	for _, tt := range tests {
		args := toArgs(tt.in)
		c := Lookup(args)
		if c == nil {
			t.Fatalf("%q: unknown", tt.in)
		}
		if got := c.ArityOK(len(args)); got != tt.ok {
			t.Errorf("%s (arity %d) with %d args: ArityOK=%v, want %v", c.Name, c.Arity, len(args), got, tt.ok)
		}
	}
}

func TestPrefix(t *testing.T) {
	ok := []struct {
		format, id, want string
	}{
		{DefaultKeyFormat, "acme", "tenant:acme:"},
		{DefaultKeyFormat, "t1", P},
		{DefaultKeyFormat, "A-b_9", "tenant:A-b_9:"},
		{DefaultKeyFormat, strings.Repeat("x", 64), "tenant:" + strings.Repeat("x", 64) + ":"},
		{"{tenant}:", "acme", "acme:"},
		{"app/{tenant}/", "acme", "app/acme/"},
		{"t.{tenant}|", "acme", "t.acme|"},
	}
	for _, tt := range ok {
		got, err := Prefix(tt.format, tt.id)
		if err != nil || got != tt.want {
			t.Errorf("Prefix(%q, %q) = %q, %v; want %q", tt.format, tt.id, got, err, tt.want)
		}
	}
	bad := []struct {
		format, id string
	}{
		{DefaultKeyFormat, ""},
		{DefaultKeyFormat, strings.Repeat("x", 65)},
		{DefaultKeyFormat, "a b"},
		{DefaultKeyFormat, "a:b"},
		{DefaultKeyFormat, "a*"},
		{DefaultKeyFormat, "a?"},
		{DefaultKeyFormat, "[a]"},
		{DefaultKeyFormat, "{a}"},
		{DefaultKeyFormat, "a\\b"},
		{DefaultKeyFormat, "é"},
		{DefaultKeyFormat, "a\n"},
		{DefaultKeyFormat, "a\x00"},
		{"tenant:", "acme"},
		{"", "acme"},
		{"{TENANT}:", "acme"},
		{"t*:{tenant}:", "acme"},
		{"t?:{tenant}:", "acme"},
		{"t:{tenant}:[x]", "acme"},
		{"t\\:{tenant}:", "acme"},
		{"{{tenant}}:", "acme"},
		{"{x}:{tenant}:", "acme"},
		{"t {tenant}:", "acme"},
		{"t:{tenant}:\t", "acme"},
		{"t\x00{tenant}:", "acme"},
		{"t\x7f{tenant}:", "acme"},
	}
	for _, tt := range bad {
		if got, err := Prefix(tt.format, tt.id); err == nil {
			t.Errorf("Prefix(%q, %q) = %q, want an error", tt.format, tt.id, got)
		}
	}
}

// TestPrefixFormatsArePrefixFree: no tenant's prefix may be a prefix of
// another tenant's key names. With nothing after {tenant}, or with a
// character that tenant ids may contain, tenant "a" owns key "bx" as
// "…abx" and tenant "ab" owns key "x" as the same "…abx".
func TestPrefixFormatsArePrefixFree(t *testing.T) {
	for _, format := range []string{"{tenant}", "tenant:{tenant}", "tenant_{tenant}", "t{tenant}-", "t{tenant}x:", "t:{tenant}9:"} {
		pa, errA := Prefix(format, "a")
		pb, errB := Prefix(format, "ab")
		if errA == nil && errB == nil {
			t.Errorf("Prefix(%q) accepted: tenant a's key %q is tenant ab's key %q (%q)",
				format, strings.TrimPrefix(pb, pa)+"x", "x", pb+"x")
		}
	}
}

func TestValidTenantID(t *testing.T) {
	for id, want := range map[string]bool{
		"a": true, "acme": true, "A_b-9": true, strings.Repeat("z", 64): true,
		"": false, strings.Repeat("z", 65): false, "a b": false, "a:b": false, "a*": false,
		"a{b}": false, "a.b": false, "a/b": false, "é": false,
	} {
		if got := ValidTenantID(id); got != want {
			t.Errorf("ValidTenantID(%q) = %v", id, got)
		}
	}
}

func TestGlobEscape(t *testing.T) {
	for in, want := range map[string]string{
		"":                "",
		"tenant:acme:":    "tenant:acme:",
		"a*b":             `a\*b`,
		"a?b":             `a\?b`,
		"[x]":             `\[x\]`,
		`back\slash`:      `back\\slash`,
		"*?[]\\":          `\*\?\[\]\\`,
		"{tag}:^-!":       "{tag}:^-!",
		"é*":              `é\*`,
		"tenant:t1:user*": `tenant:t1:user\*`,
	} {
		got := GlobEscape(in)
		if got != want {
			t.Errorf("GlobEscape(%q) = %q, want %q", in, got, want)
		}
		// The escaped text matches exactly the original, as a glob.
		if !globMatch(got, in) || (in != "" && globMatch(got, in+"x")) {
			t.Errorf("GlobEscape(%q) = %q does not match just %q", in, got, in)
		}
	}
}

func TestRewriterStripKey(t *testing.T) {
	r := NewRewriter(P)
	for _, tt := range []struct {
		in, out string
		ok      bool
	}{
		{P + "k", "k", true},
		{P, "", true},
		{"tenant:t2:k", "tenant:t2:k", false},
		{"tenant:t1", "tenant:t1", false},
		{"k", "k", false},
	} {
		got, ok := r.StripKey([]byte(tt.in))
		if string(got) != tt.out || ok != tt.ok {
			t.Errorf("StripKey(%q) = %q, %v", tt.in, got, ok)
		}
	}
}

// multibulk encodes args as a client would send them.
func multibulk(args ...string) string {
	b := resp.AppendArrayHeader(nil, len(args))
	for _, a := range args {
		b = resp.AppendBulk(b, []byte(a))
	}
	return string(b)
}

func sameArgs(a, b []string) bool { return slices.Equal(a, b) }
