package rewrite

import (
	"bytes"
	"strconv"

	"github.com/keyfence/keyfence/resp"
)

// ErrSyntax is Redis's own reply to options it cannot parse. keyfence gives
// it instead of forwarding a request whose shape it cannot vouch for.
var ErrSyntax = errorString("ERR syntax error")

type errorString string

func (e errorString) Error() string { return string(e) }

const (
	keyspacePrefix = "__keyspace@"
	keyeventPrefix = "__keyevent@"
)

func (r *Rewriter) appendPattern(dst []byte, cmd *Command, args [][]byte) ([]byte, error) {
	switch cmd.Name {
	case "scan":
		return r.appendScan(dst, args, 2)
	case "sort", "sort_ro":
		return r.appendSort(dst, cmd, args)
	case "psubscribe", "punsubscribe":
		dst = resp.AppendArrayHeader(dst, len(args))
		dst = resp.AppendBulk(dst, args[0])
		for _, a := range args[1:] {
			dst = r.appendChannelName(dst, a, true)
		}
		return dst, nil
	case "pubsub|channels", "pubsub|shardchannels":
		return r.appendPubsubPattern(dst, args)
	}
	return dst, ErrNotRewritable
}

// MaxScanCount caps SCAN's COUNT hint upstream. On a shared server one SCAN
// step walks every tenant's keys, not just the tenant's own: uncapped,
// "SCAN 0 COUNT 100000000" would be a KEYS over the whole server in one call.
// COUNT is only a hint, so a smaller one keeps SCAN's guarantees; the client
// just needs more steps. keyfence's own emulations (KEYS, DBSIZE, RANDOMKEY,
// FLUSHDB) step by the same amount.
const MaxScanCount = 1000

// appendScan rewrites SCAN cursor [MATCH p] [COUNT n] [TYPE t]: every MATCH
// gets the tenant's prefix, and one is added when the client gave none, so
// the iteration never leaves the tenant's keys. COUNT is capped at
// MaxScanCount; a COUNT that is not a number goes to Redis as it is, for
// Redis's own error.
func (r *Rewriter) appendScan(dst []byte, args [][]byte, optsFrom int) ([]byte, error) {
	if (len(args)-optsFrom)%2 != 0 {
		return dst, ErrSyntax
	}
	hasMatch := false
	for i := optsFrom; i < len(args); i += 2 {
		if equalFold(args[i], "match") {
			hasMatch = true
		}
	}
	n := len(args)
	if !hasMatch {
		n += 2
	}
	dst = resp.AppendArrayHeader(dst, n)
	for i := 0; i < optsFrom; i++ {
		dst = resp.AppendBulk(dst, args[i])
	}
	for i := optsFrom; i < len(args); i += 2 {
		dst = resp.AppendBulk(dst, args[i])
		if equalFold(args[i], "match") {
			dst = resp.AppendPrefixedBulk(dst, r.globPrefix, args[i+1])
		} else if n, ok := resp.ParseInt(args[i+1]); ok && n > MaxScanCount && equalFold(args[i], "count") {
			dst = resp.AppendBulk(dst, []byte(strconv.Itoa(MaxScanCount)))
		} else {
			dst = resp.AppendBulk(dst, args[i+1])
		}
	}
	if !hasMatch {
		dst = resp.AppendBulk(dst, []byte("MATCH"))
		dst = resp.AppendPrefixedBulk(dst, r.globPrefix, []byte("*"))
	}
	return dst, nil
}

// appendSort parses SORT's options as Redis's sortCommand does and prefixes
// the key, the STORE destination and the BY/GET patterns. A BY pattern with
// no '*' (such as "nosort") is never looked up by Redis and GET # means the
// element itself, so both are kept as they are.
func (r *Rewriter) appendSort(dst []byte, cmd *Command, args [][]byte) ([]byte, error) {
	prefixed := r.scratch(len(args)) // the key, STORE's key and BY/GET patterns
	prefixed[1] = true
	for j := 2; j < len(args); j++ {
		left := len(args) - j - 1
		switch a := args[j]; {
		case equalFold(a, "asc"), equalFold(a, "desc"), equalFold(a, "alpha"):
		case equalFold(a, "limit") && left >= 2:
			j += 2
		case equalFold(a, "store") && left >= 1 && cmd.Name == "sort":
			prefixed[j+1] = true
			j++
		case equalFold(a, "by") && left >= 1:
			prefixed[j+1] = bytes.IndexByte(args[j+1], '*') >= 0
			j++
		case equalFold(a, "get") && left >= 1:
			prefixed[j+1] = !bytes.Equal(args[j+1], []byte("#"))
			j++
		default:
			return dst, ErrSyntax
		}
	}
	dst = resp.AppendArrayHeader(dst, len(args))
	for i, a := range args {
		if prefixed[i] {
			dst = resp.AppendPrefixedBulk(dst, r.prefix, a)
		} else {
			dst = resp.AppendBulk(dst, a)
		}
	}
	return dst, nil
}

func (r *Rewriter) appendPubsubPattern(dst []byte, args [][]byte) ([]byte, error) {
	switch len(args) {
	case 2:
		dst = resp.AppendArrayHeader(dst, 3)
		dst = resp.AppendBulk(dst, args[0])
		dst = resp.AppendBulk(dst, args[1])
		return resp.AppendPrefixedBulk(dst, r.globPrefix, []byte("*")), nil
	case 3:
		dst = resp.AppendArrayHeader(dst, 3)
		dst = resp.AppendBulk(dst, args[0])
		dst = resp.AppendBulk(dst, args[1])
		return resp.AppendPrefixedBulk(dst, r.globPrefix, args[2]), nil
	}
	return dst, ErrSyntax
}

func (r *Rewriter) appendChannel(dst []byte, cmd *Command, args [][]byte) ([]byte, error) {
	switch cmd.Name {
	case "publish", "spublish":
		dst = resp.AppendArrayHeader(dst, 3)
		dst = resp.AppendBulk(dst, args[0])
		// Published names are always prefixed at the front, even when they
		// look like keyspace channels: a tenant must not forge notifications.
		dst = resp.AppendPrefixedBulk(dst, r.prefix, args[1])
		return resp.AppendBulk(dst, args[2]), nil
	case "subscribe", "ssubscribe", "unsubscribe", "sunsubscribe":
		dst = resp.AppendArrayHeader(dst, len(args))
		dst = resp.AppendBulk(dst, args[0])
		for _, a := range args[1:] {
			dst = r.appendChannelName(dst, a, false)
		}
		return dst, nil
	case "pubsub|numsub", "pubsub|shardnumsub":
		dst = resp.AppendArrayHeader(dst, len(args))
		dst = resp.AppendBulk(dst, args[0])
		dst = resp.AppendBulk(dst, args[1])
		for _, a := range args[2:] {
			if bytes.HasPrefix(a, []byte(keyeventPrefix)) {
				// Upstream counts every tenant's subscribers of a keyevent
				// channel: ask for a name nobody subscribes to instead. The
				// tenant's own keyevent subscribers go uncounted (0).
				dst = resp.AppendPrefixedBulk(dst, r.prefix, a)
				continue
			}
			dst = r.appendChannelName(dst, a, false)
		}
		return dst, nil
	case "pubsub|shardchannels":
		return r.appendPubsubPattern(dst, args)
	}
	return dst, ErrNotRewritable
}

// appendChannelName maps a channel (or pattern) a client subscribes to.
// Keyspace channels keep their Redis shape with the prefix inside, so that
// Redis's own notifications about this tenant's keys reach the tenant;
// keyevent channels are subscribed as they are and their messages filtered
// by StripMessage. Every other name gets the prefix in front.
func (r *Rewriter) appendChannelName(dst, ch []byte, pattern bool) []byte {
	prefix := r.prefix
	if pattern {
		prefix = r.globPrefix
	}
	if bytes.HasPrefix(ch, []byte(keyspacePrefix)) {
		if i := bytes.Index(ch[len(keyspacePrefix):], []byte("__:")); i >= 0 && plainDB(ch[len(keyspacePrefix):len(keyspacePrefix)+i], pattern) {
			cut := len(keyspacePrefix) + i + 3
			dst = append(dst, '$')
			dst = appendInt(dst, len(ch)+len(prefix))
			dst = append(dst, '\r', '\n')
			dst = append(dst, ch[:cut]...)
			dst = append(dst, prefix...)
			dst = append(dst, ch[cut:]...)
			return append(dst, '\r', '\n')
		}
	}
	if bytes.HasPrefix(ch, []byte(keyeventPrefix)) && bytes.Contains(ch, []byte("__:")) {
		return resp.AppendBulk(dst, ch)
	}
	return resp.AppendPrefixedBulk(dst, prefix, ch)
}

// plainDB reports whether the database part of a keyspace channel is a
// number (or, in a pattern, digits and '*'): anything cleverer, such as a
// bracket class swallowing the "__:", would let the prefix land in the
// wrong place, so such channels get the prefix in front instead.
func plainDB(db []byte, pattern bool) bool {
	if len(db) == 0 {
		return false
	}
	for _, c := range db {
		if !(c >= '0' && c <= '9' || pattern && c == '*') {
			return false
		}
	}
	return true
}
