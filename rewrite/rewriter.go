package rewrite

import (
	"errors"
	"fmt"
	"strings"

	"github.com/keyfence/keyfence/resp"
)

// DefaultKeyFormat is the namespace of a tenant's keys; {tenant} is replaced
// by the tenant id.
const DefaultKeyFormat = "tenant:{tenant}:"

// ValidTenantID reports whether id may name a tenant: [A-Za-z0-9_-]{1,64},
// so that a prefix never holds glob or hash-tag characters.
func ValidTenantID(id string) bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// Prefix returns the key prefix of tenant id under format. It refuses a
// format without {tenant} or with glob, hash-tag, space or control
// characters: those would let one tenant's patterns or cluster slots reach
// another's keys.
func Prefix(format, id string) (string, error) {
	if !ValidTenantID(id) {
		return "", fmt.Errorf("tenant id %q: must match [A-Za-z0-9_-]{1,64}", id)
	}
	if !strings.Contains(format, "{tenant}") {
		return "", fmt.Errorf("key format %q: must contain {tenant}", format)
	}
	// The character after the id must not be one an id may hold, or tenant
	// "a"'s key "bx" would be tenant "ab"'s key "x".
	for rest := format; strings.Contains(rest, "{tenant}"); {
		rest = rest[strings.Index(rest, "{tenant}")+len("{tenant}"):]
		if rest == "" || ValidTenantID(rest[:1]) {
			return "", fmt.Errorf("key format %q: {tenant} must be followed by a separator such as ':' (not a letter, digit, '_' or '-')", format)
		}
	}
	rest := strings.ReplaceAll(format, "{tenant}", "")
	if i := strings.IndexFunc(rest, func(r rune) bool {
		return strings.ContainsRune("*?[]\\{}", r) || r <= ' ' || r == 0x7f
	}); i >= 0 {
		return "", fmt.Errorf("key format %q: character %q is not allowed (glob, hash-tag, blank or control)", format, rest[i])
	}
	return strings.ReplaceAll(format, "{tenant}", id), nil
}

// A Rewriter rewrites requests into one tenant's namespace and strips that
// namespace from replies. It keeps scratch space, so each client session
// owns one; it is not safe for concurrent use.
type Rewriter struct {
	prefix     []byte
	globPrefix []byte // prefix with glob metacharacters escaped
	isKey      []bool // scratch: which arguments are keys
}

// NewRewriter returns a rewriter for the given prefix (see Prefix).
func NewRewriter(prefix string) *Rewriter {
	return &Rewriter{prefix: []byte(prefix), globPrefix: []byte(GlobEscape(prefix))}
}

// KeyPrefix returns the prefix this rewriter adds.
func (r *Rewriter) KeyPrefix() []byte { return r.prefix }

// GlobPrefix returns the prefix escaped for use at the front of a glob.
func (r *Rewriter) GlobPrefix() []byte { return r.globPrefix }

// GlobEscape escapes the characters Redis's stringmatch treats specially.
func GlobEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Errors for requests the rewriter refuses; the proxy sends their text.
var (
	ErrNotRewritable = errors.New("ERR keyfence: command is not forwarded by the rewriter")
)

// AppendRequest appends to dst the RESP request that keyfence sends upstream
// for a command of policy keyed, pattern or channel. The caller has looked
// the command up and checked its arity. On error dst is returned unchanged
// and nothing may be forwarded.
func (r *Rewriter) AppendRequest(dst []byte, cmd *Command, args [][]byte) ([]byte, error) {
	switch cmd.Policy {
	case PolicyKeyed:
		return r.appendKeyed(dst, cmd, args)
	case PolicyPattern:
		return r.appendPattern(dst, cmd, args)
	case PolicyChannel:
		return r.appendChannel(dst, cmd, args)
	default:
		return dst, ErrNotRewritable
	}
}

// Keys returns the indexes of the key arguments of a keyed command, appended
// to idx[:0]. It serves COMMAND GETKEYS and the fuzz tests.
func (r *Rewriter) Keys(cmd *Command, args [][]byte, idx []int) ([]int, error) {
	idx = idx[:0]
	isKey, err := r.mark(cmd, args)
	if err != nil {
		return idx, err
	}
	for i, k := range isKey {
		if k {
			idx = append(idx, i)
		}
	}
	return idx, nil
}

// scratch returns a cleared per-argument flag slice, reused across calls.
func (r *Rewriter) scratch(n int) []bool {
	if cap(r.isKey) < n {
		r.isKey = make([]bool, n+16)
	}
	s := r.isKey[:n]
	clear(s)
	return s
}

func (r *Rewriter) mark(cmd *Command, args [][]byte) ([]bool, error) {
	isKey := r.scratch(len(args))
	if err := markKeys(cmd, args, isKey); err != nil {
		return nil, err
	}
	return isKey, nil
}

func (r *Rewriter) appendKeyed(dst []byte, cmd *Command, args [][]byte) ([]byte, error) {
	isKey, err := r.mark(cmd, args)
	if err != nil {
		return dst, err
	}
	dst = resp.AppendArrayHeader(dst, len(args))
	for i, a := range args {
		if isKey[i] {
			dst = resp.AppendPrefixedBulk(dst, r.prefix, a)
		} else {
			dst = resp.AppendBulk(dst, a)
		}
	}
	return dst, nil
}
