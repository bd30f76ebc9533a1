package fallback

import (
	"strings"
	"testing"

	"github.com/keyfence/keyfence/rewrite"
)

func TestCacheable(t *testing.T) {
	yes := []string{"GET", "get", "Get", "MGET", "HGET", "HMGET", "HGETALL", "HEXISTS", "EXISTS", "TTL", "STRLEN",
		"LRANGE", "LINDEX", "SMEMBERS", "SISMEMBER", "SCARD", "ZRANGE", "ZSCORE", "ZCARD", "zrangebyscore", "SINTER"}
	no := []string{"SET", "DEL", "GETDEL", "GETEX", "INCR", "SRANDMEMBER", "SPOP", "HRANDFIELD", "ZRANDMEMBER",
		"BLPOP", "SCAN", "KEYS", "RANDOMKEY", "OBJECT", "DBSIZE", "ZRANGESTORE", "EVAL", "", "GETX"}
	for _, c := range yes {
		if !Cacheable(c) {
			t.Errorf("Cacheable(%q) = false", c)
		}
	}
	for _, c := range no {
		if Cacheable(c) {
			t.Errorf("Cacheable(%q) = true", c)
		}
	}
}

func TestKeysOf(t *testing.T) {
	tests := []struct {
		cmd  string
		args []string
		want []string
	}{
		{"GET", []string{"k"}, []string{"k"}},
		{"get", []string{"k"}, []string{"k"}},
		{"HGET", []string{"h", "f"}, []string{"h"}},
		{"HMGET", []string{"h", "f1", "f2"}, []string{"h"}},
		{"LRANGE", []string{"l", "0", "-1"}, []string{"l"}},
		{"ZRANGE", []string{"z", "0", "10", "BYSCORE", "WITHSCORES"}, []string{"z"}},
		{"MGET", []string{"a", "b", "c"}, []string{"a", "b", "c"}},
		{"EXISTS", []string{"a", "a"}, []string{"a", "a"}},
		{"SUNION", []string{"s1", "s2"}, []string{"s1", "s2"}},
		{"GET", nil, nil},
		{"MGET", nil, nil},
		{"SET", []string{"k", "v"}, nil},
		{"NOPE", []string{"k"}, nil},
	}
	for _, tt := range tests {
		got := KeysOf(tt.cmd, bs(tt.args...))
		if len(got) != len(tt.want) {
			t.Errorf("KeysOf(%s %v) = %q, want %q", tt.cmd, tt.args, got, tt.want)
			continue
		}
		for i := range got {
			if string(got[i]) != tt.want[i] {
				t.Errorf("KeysOf(%s %v) = %q, want %q", tt.cmd, tt.args, got, tt.want)
			}
		}
	}
}

func TestAppendRequest(t *testing.T) {
	got := AppendRequest([]byte("x"), "hGet", bs("tenant:a:h", ""))
	want := "x*3\r\n$4\r\nHGET\r\n$10\r\ntenant:a:h\r\n$0\r\n\r\n"
	if string(got) != want {
		t.Fatalf("AppendRequest = %q, want %q", got, want)
	}
}

// TestCacheableIsTheTable pins the table's cacheable reads to the hand list
// fallback kept before the table carried them (upper case, as it was), key
// positions included: firstArg 1, allArgs 2.
func TestCacheableIsTheTable(t *testing.T) {
	const firstArg, allArgs = 1, 2
	old := map[string]int{
		"GET": firstArg, "GETRANGE": firstArg, "SUBSTR": firstArg, "STRLEN": firstArg,
		"GETBIT": firstArg, "BITCOUNT": firstArg, "BITPOS": firstArg,
		"MGET": allArgs,
		"HGET": firstArg, "HMGET": firstArg, "HGETALL": firstArg, "HEXISTS": firstArg,
		"HLEN": firstArg, "HKEYS": firstArg, "HVALS": firstArg, "HSTRLEN": firstArg,
		"LRANGE": firstArg, "LINDEX": firstArg, "LLEN": firstArg, "LPOS": firstArg,
		"SMEMBERS": firstArg, "SISMEMBER": firstArg, "SMISMEMBER": firstArg, "SCARD": firstArg,
		"SINTER": allArgs, "SUNION": allArgs, "SDIFF": allArgs,
		"ZRANGE": firstArg, "ZREVRANGE": firstArg, "ZRANGEBYSCORE": firstArg, "ZREVRANGEBYSCORE": firstArg,
		"ZRANGEBYLEX": firstArg, "ZREVRANGEBYLEX": firstArg, "ZSCORE": firstArg, "ZMSCORE": firstArg,
		"ZCARD": firstArg, "ZCOUNT": firstArg, "ZLEXCOUNT": firstArg, "ZRANK": firstArg, "ZREVRANK": firstArg,
		"EXISTS": allArgs, "TYPE": firstArg, "TTL": firstArg, "PTTL": firstArg,
	}
	want := map[int]rewrite.CacheKeys{firstArg: rewrite.CacheFirstKey, allArgs: rewrite.CacheEveryKey}
	for _, name := range rewrite.CommandNames() {
		c := rewrite.Lookup(commandArgs(name))
		if c == nil || c.Name != name {
			t.Fatalf("%s: not found in the table", name)
		}
		if c.Cache != want[old[strings.ToUpper(name)]] {
			t.Errorf("%s: the table's Cache is %d, the old list had %d", name, c.Cache, old[strings.ToUpper(name)])
		}
	}
	for name := range old {
		if !Cacheable(name) {
			t.Errorf("%s: in the old list, not cacheable now", name)
		}
	}
}

// commandArgs turns "object|encoding" into the arguments OBJECT ENCODING.
func commandArgs(name string) [][]byte {
	var args [][]byte
	for _, w := range strings.Split(name, "|") {
		args = append(args, []byte(w))
	}
	return args
}
