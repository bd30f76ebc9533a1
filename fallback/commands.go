package fallback

import (
	"strconv"
	"time"

	"github.com/keyfence/keyfence/resp"
	"github.com/keyfence/keyfence/rewrite"
)

// Which reads are cacheable, and where their keys are, is carried by the
// command table (rewrite.Command.Cache, decided in rewrite's
// internal/gen/policy.go cacheableReads): fallback reads it from there, so
// that the list of cacheable reads is reviewed once, next to every other
// per-command fact. fallback depends on rewrite, never the other way round.

// cacheKeys looks command up in any case without allocating: this runs once
// per command on the data path.
func cacheKeys(command string) rewrite.CacheKeys {
	if c := rewrite.LookupName(command); c != nil {
		return c.Cache
	}
	return rewrite.CacheNever
}

// Cacheable reports whether the reply to command (any case) may be cached
// and served while upstream is down.
func Cacheable(command string) bool {
	return cacheKeys(command) != rewrite.CacheNever
}

// KeysOf returns the keys a cacheable read depends on; args are the
// arguments after the command name, as sent upstream (already prefixed). It
// returns nil for a command that is not cacheable or has no key; Store
// refuses to cache with no keys, because such an entry could never be
// invalidated. The result aliases args.
func KeysOf(command string, args [][]byte) [][]byte {
	return keysBy(cacheKeys(command), args)
}

// keysBy is KeysOf for a command whose table entry says c.
func keysBy(c rewrite.CacheKeys, args [][]byte) [][]byte {
	switch c {
	case rewrite.CacheFirstKey:
		if len(args) >= 1 {
			return args[:1]
		}
	case rewrite.CacheEveryKey:
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
