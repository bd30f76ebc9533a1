package fallback

import (
	"bytes"
	"strconv"
	"strings"
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

// FillFromWrite turns a write that upstream acknowledged with +OK into the
// entry it makes known: SET key value [NX|XX] [EX s|PX ms], SETEX and PSETEX
// become the reply to GET key. args are the arguments after the command
// name. req is the GET in [AppendRequest] form, reply the bulk string,
// keyTTL the key's TTL (0 when it has none). The key is args[0].
//
// ok is false for every other write and for the SET forms whose result is
// not fully known from the request: GET (the reply is the old value, not
// +OK), KEEPTTL (the remaining TTL is unknown, and the entry must not
// outlive the key), EXAT/PXAT (absolute times would need upstream's clock),
// and anything Redis would reject. The proxy must only call it for a +OK
// reply: a SET NX that did not set answers nil.
func FillFromWrite(command string, args [][]byte) (req, reply []byte, keyTTL time.Duration, ok bool) {
	var key, value []byte
	switch {
	case strings.EqualFold(command, "SET"):
		if len(args) < 2 {
			return nil, nil, 0, false
		}
		key, value = args[0], args[1]
		var cond, expiry bool
		for i := 2; i < len(args); i++ {
			switch opt := args[i]; {
			case bytes.EqualFold(opt, []byte("NX")), bytes.EqualFold(opt, []byte("XX")):
				if cond {
					return nil, nil, 0, false
				}
				cond = true
			case bytes.EqualFold(opt, []byte("EX")), bytes.EqualFold(opt, []byte("PX")):
				if expiry || i+1 >= len(args) {
					return nil, nil, 0, false
				}
				unit := time.Second
				if args[i][0]|0x20 == 'p' {
					unit = time.Millisecond
				}
				ttl, valid := parseTTL(args[i+1], unit)
				if !valid {
					return nil, nil, 0, false
				}
				expiry, keyTTL = true, ttl
				i++
			default: // GET, KEEPTTL, EXAT, PXAT, or a syntax error
				return nil, nil, 0, false
			}
		}
	case strings.EqualFold(command, "SETEX"), strings.EqualFold(command, "PSETEX"):
		if len(args) != 3 {
			return nil, nil, 0, false
		}
		unit := time.Second
		if command[0]|0x20 == 'p' {
			unit = time.Millisecond
		}
		ttl, valid := parseTTL(args[1], unit)
		if !valid {
			return nil, nil, 0, false
		}
		key, value, keyTTL = args[0], args[2], ttl
	default:
		return nil, nil, 0, false
	}
	req = AppendRequest(make([]byte, 0, 24+len(key)), "GET", [][]byte{key})
	reply = resp.AppendBulk(make([]byte, 0, 16+len(value)), value)
	return req, reply, keyTTL, true
}

// parseTTL parses a positive decimal expiry as Redis does (no sign, no
// spaces); Redis rejects zero and negative ones.
func parseTTL(b []byte, unit time.Duration) (time.Duration, bool) {
	if len(b) == 0 || len(b) > 19 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
		if n < 0 { // overflowed int64: Redis rejects it too
			return 0, false
		}
	}
	if n <= 0 {
		return 0, false
	}
	if n > int64(longTTL/unit) {
		return longTTL, true
	}
	return time.Duration(n) * unit, true
}
