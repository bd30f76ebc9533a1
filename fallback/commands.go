package fallback

import (
	"strconv"
	"time"

	"github.com/keyfence/keyfence/resp"
)

// keysAt says where a cacheable read's keys are.
type keysAt uint8

const (
	firstArg keysAt = iota + 1 // GET key ...
	allArgs                    // MGET key [key ...]
)

// cacheable lists the reads whose reply depends only on their arguments and
// on the data of their keys, so that a reply can stand in for upstream.
// Random (SRANDMEMBER), blocking, time-moving (OBJECT IDLETIME) and
// key-scanning (SCAN, KEYS) reads are left out: a cached reply would be wrong
// or its keys unknown. TTL and PTTL are in because operators asked for them;
// their cached value is as of fill time.
var cacheable = map[string]keysAt{
	// strings
	"GET": firstArg, "GETRANGE": firstArg, "SUBSTR": firstArg, "STRLEN": firstArg,
	"GETBIT": firstArg, "BITCOUNT": firstArg, "BITPOS": firstArg,
	"MGET": allArgs,
	// hashes
	"HGET": firstArg, "HMGET": firstArg, "HGETALL": firstArg, "HEXISTS": firstArg,
	"HLEN": firstArg, "HKEYS": firstArg, "HVALS": firstArg, "HSTRLEN": firstArg,
	// lists
	"LRANGE": firstArg, "LINDEX": firstArg, "LLEN": firstArg, "LPOS": firstArg,
	// sets
	"SMEMBERS": firstArg, "SISMEMBER": firstArg, "SMISMEMBER": firstArg, "SCARD": firstArg,
	"SINTER": allArgs, "SUNION": allArgs, "SDIFF": allArgs,
	// sorted sets
	"ZRANGE": firstArg, "ZREVRANGE": firstArg, "ZRANGEBYSCORE": firstArg, "ZREVRANGEBYSCORE": firstArg,
	"ZRANGEBYLEX": firstArg, "ZREVRANGEBYLEX": firstArg, "ZSCORE": firstArg, "ZMSCORE": firstArg,
	"ZCARD": firstArg, "ZCOUNT": firstArg, "ZLEXCOUNT": firstArg, "ZRANK": firstArg, "ZREVRANK": firstArg,
	// keyspace
	"EXISTS": allArgs, "TYPE": firstArg, "TTL": firstArg, "PTTL": firstArg,
}

// policyOf looks command up in any case without allocating: the proxy
// names commands in lower case, the table is in upper case, and this runs
// once per command on the data path.
func policyOf(command string) keysAt {
	var buf [24]byte
	if len(command) > len(buf) {
		return 0
	}
	for i := 0; i < len(command); i++ {
		c := command[i]
		if c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		}
		buf[i] = c
	}
	return cacheable[string(buf[:len(command)])] // no allocation: the compiler converts in place for a lookup
}

// Cacheable reports whether the reply to command (any case) may be cached
// and served while upstream is down.
func Cacheable(command string) bool {
	return policyOf(command) != 0
}

// KeysOf returns the keys a cacheable read depends on; args are the
// arguments after the command name, as sent upstream (already prefixed). It
// returns nil for a command that is not cacheable or has no key; Store
// refuses to cache with no keys, because such an entry could never be
// invalidated. The result aliases args.
func KeysOf(command string, args [][]byte) [][]byte {
	switch policyOf(command) {
	case firstArg:
		if len(args) >= 1 {
			return args[:1]
		}
	case allArgs:
		if len(args) >= 1 {
			return args
		}
	}
	return nil
}

// AppendRequest appends the canonical RESP encoding of a request: an array
// of bulk strings with the command name in upper case. Cache entries are
// keyed by exact request bytes, so the proxy should key Store and Lookup by
// this form (or by its own bytes consistently; writes fill entries in this
// form).
func AppendRequest(dst []byte, command string, args [][]byte) []byte {
	dst = append(dst, '*')
	dst = strconv.AppendInt(dst, int64(len(args)+1), 10)
	dst = append(dst, '\r', '\n', '$')
	dst = strconv.AppendInt(dst, int64(len(command)), 10)
	dst = append(dst, '\r', '\n')
	for i := 0; i < len(command); i++ {
		c := command[i]
		if c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		}
		dst = append(dst, c)
	}
	dst = append(dst, '\r', '\n')
	for _, a := range args {
		dst = resp.AppendBulk(dst, a)
	}
	return dst
}

// longTTL stands for "effectively forever" when a SET's expiry is too large
// to matter: the entry's life is min(Config.TTL, keyTTL) anyway.
const longTTL = 100 * 365 * 24 * time.Hour
