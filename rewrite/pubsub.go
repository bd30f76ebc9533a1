package rewrite

import (
	"bytes"

	"github.com/keyfence/keyfence/resp"
)

// PushKind classifies a reply seen on a subscribed connection.
type PushKind uint8

const (
	PushNone         PushKind = iota // not pub/sub traffic: a normal reply
	PushMessage                      // message, pmessage, smessage
	PushSubscribe                    // subscribe, psubscribe, ssubscribe
	PushUnsubscribe                  // unsubscribe, punsubscribe, sunsubscribe
	PushPong                         // ["pong", payload] in RESP2 subscriber mode
	PushInvalidation                 // CLIENT TRACKING invalidation
)

// PushInfo says what AppendPush saw.
type PushInfo struct {
	Kind  PushKind
	Count int64 // subscriptions left, for (un)subscribe confirmations
	Drop  bool  // another tenant's notification: the client must not see it
}

// AppendPush strips one reply read on a subscribed connection. Channel and
// pattern names lose the prefix (keyspace channels the prefix inside them);
// keyevent notifications, whose payload is a key name, are kept only when
// that key is the tenant's, and then show the client's key name.
//
// In RESP3 only push frames ('>') are pub/sub traffic; in RESP2 the arrays
// of a subscribed connection are.
func (r *Rewriter) AppendPush(dst, reply []byte, resp3 bool) ([]byte, PushInfo) {
	var info PushInfo
	if len(reply) == 0 || (resp3 && reply[0] != '>') || (!resp3 && reply[0] != '*') {
		return dst, info
	}
	count, body, ok := aggregateHeader(reply)
	if !ok || count < 2 {
		return dst, info
	}
	elems := make([][]byte, 0, 4)
	pos := body
	for i := 0; i < count; i++ {
		n, err := resp.ReplyLen(reply[pos:])
		if err != nil || n == 0 {
			return dst, info
		}
		elems = append(elems, reply[pos:pos+n])
		pos += n
	}
	if pos != len(reply) {
		return dst, info // not one reply: leave it to the caller
	}
	kind, ok := bulkValue(elems[0])
	if !ok {
		return dst, info
	}
	switch string(kind) {
	case "message", "smessage":
		info.Kind = PushMessage
		if count != 3 {
			return dst, PushInfo{}
		}
	case "pmessage":
		info.Kind = PushMessage
		if count != 4 {
			return dst, PushInfo{}
		}
	case "subscribe", "psubscribe", "ssubscribe":
		info.Kind = PushSubscribe
	case "unsubscribe", "punsubscribe", "sunsubscribe":
		info.Kind = PushUnsubscribe
	case "pong":
		info.Kind = PushPong
		return append(dst, reply...), info
	case "invalidate":
		info.Kind = PushInvalidation
		return r.appendStrippedInvalidation(dst, reply, elems), info
	default:
		return dst, info
	}
	if info.Kind == PushSubscribe || info.Kind == PushUnsubscribe {
		if count != 3 {
			return append(dst, reply...), info
		}
		if n, ok := resp.ParseInt(elems[2][1 : len(elems[2])-2]); ok && elems[2][0] == ':' {
			info.Count = n
		}
	}
	chanIdx := 1
	if string(kind) == "pmessage" {
		chanIdx = 2
	}
	// Every message is checked on the way in, whatever pattern brought it:
	// its channel must be the tenant's. A keyevent channel carries every
	// tenant's events: only the tenant's own keys pass, named as the client
	// names them.
	payloadIdx := -1
	if info.Kind == PushMessage {
		ch, ok := bulkValue(elems[chanIdx])
		switch {
		case !ok:
			info.Drop = true
		case bytes.HasPrefix(ch, []byte(keyeventPrefix)):
			key, ok := bulkValue(elems[len(elems)-1])
			info.Drop = !ok || !bytes.HasPrefix(key, r.prefix)
			payloadIdx = len(elems) - 1
		default:
			info.Drop = !r.ownsChannel(ch)
		}
		if info.Drop {
			return dst, info
		}
	}
	dst = append(dst, reply[:body]...)
	for i, e := range elems {
		switch {
		case i == 0:
			dst = append(dst, e...)
		case i == payloadIdx:
			dst = r.appendStrippedString(dst, e)
		case i == 1 || (i == 2 && chanIdx == 2):
			dst = r.appendStrippedChannel(dst, e)
		default:
			dst = append(dst, e...)
		}
	}
	return dst, info
}

// appendStrippedInvalidation strips the key names of a tracking push
// ["invalidate", [key …]].
func (r *Rewriter) appendStrippedInvalidation(dst, reply []byte, elems [][]byte) []byte {
	if len(elems) != 2 {
		return append(dst, reply...)
	}
	_, body, _ := aggregateHeader(reply)
	dst = append(dst, reply[:body]...)
	dst = append(dst, elems[0]...)
	out, n, ok := r.appendStripped(dst, elems[1], stripEachKey)
	if !ok || n != len(elems[1]) {
		return append(dst, elems[1]...)
	}
	return out
}

// bulkValue returns the content of a bulk or simple string element.
func bulkValue(e []byte) ([]byte, bool) {
	switch e[0] {
	case '+':
		return e[1 : len(e)-2], true
	case '$':
		line, next, ok := resp.ReadLine(e, 1)
		if !ok || next < 0 {
			return nil, false
		}
		n, ok := resp.ParseInt(line)
		if !ok || n < 0 || next+int(n) > len(e) {
			return nil, false
		}
		return e[next : next+int(n)], true
	}
	return nil, false
}

// ownsChannel reports whether an upstream channel name is in the tenant's
// namespace: prefixed in front, or a keyspace channel of one of its keys.
func (r *Rewriter) ownsChannel(ch []byte) bool {
	if bytes.HasPrefix(ch, r.prefix) {
		return true
	}
	if !bytes.HasPrefix(ch, []byte(keyspacePrefix)) {
		return false
	}
	i := bytes.Index(ch[len(keyspacePrefix):], []byte("__:"))
	if i < 0 || !plainDB(ch[len(keyspacePrefix):len(keyspacePrefix)+i], false) {
		return false
	}
	return bytes.HasPrefix(ch[len(keyspacePrefix)+i+3:], r.prefix)
}

// Upstream subscriptions for client patterns. keyfence never sends a
// client's pattern upstream: it subscribes once to the literal pattern that
// covers the tenant's namespace of that kind and matches the client's
// patterns itself (GlobMatch) against the client's channel names. So no
// pattern can reach another tenant, and a per-tenant ACL user needs only
// these literal channel rules (Redis compares PSUBSCRIBE patterns to ACL
// rules literally).

// PatternLiteral returns the upstream pattern that carries the messages a
// client pattern can match: keyspace notifications of the tenant's keys,
// every keyevent notification (filtered by key on the way in), or the
// tenant's own channels.
func (r *Rewriter) PatternLiteral(pattern []byte) string {
	switch {
	case bytes.HasPrefix(pattern, []byte(keyspacePrefix)):
		return keyspacePrefix + "*__:" + string(r.globPrefix) + "*"
	case bytes.HasPrefix(pattern, []byte(keyeventPrefix)):
		return keyeventPrefix + "*__:*"
	}
	return string(r.globPrefix) + "*"
}

// NoopPattern is a pattern keyfence never subscribes to: PUNSUBSCRIBE of it
// yields a confirmation in order without changing upstream state.
func (r *Rewriter) NoopPattern() string { return string(r.prefix) + "\x00keyfence-none" }

// ClientChannel maps a channel a message arrived on to the client's name
// for it, and reports whether it is the tenant's at all.
func (r *Rewriter) ClientChannel(ch []byte) ([]byte, bool) {
	switch {
	case bytes.HasPrefix(ch, r.prefix):
		return ch[len(r.prefix):], true
	case bytes.HasPrefix(ch, []byte(keyeventPrefix)):
		return ch, true // the payload decides; see AppendPush
	case r.ownsChannel(ch):
		i := bytes.Index(ch[len(keyspacePrefix):], []byte("__:"))
		cut := len(keyspacePrefix) + i + 3
		out := make([]byte, 0, len(ch)-len(r.prefix))
		out = append(out, ch[:cut]...)
		return append(out, ch[cut+len(r.prefix):]...), true
	}
	return nil, false
}

// SplitPush returns the kind and elements of a pub/sub frame ('>' in RESP3,
// '*' in RESP2), or ok false for anything else. The elements are appended to
// scratch[:0], so that a caller that keeps it allocates nothing.
func SplitPush(reply []byte, resp3 bool, scratch [][]byte) (kind []byte, elems [][]byte, ok bool) {
	elems = scratch[:0]
	if len(reply) == 0 || (resp3 && reply[0] != '>') || (!resp3 && reply[0] != '*') {
		return nil, nil, false
	}
	count, body, ok := aggregateHeader(reply)
	if !ok || count < 2 || count > 4 {
		return nil, elems, false
	}
	pos := body
	for i := 0; i < count; i++ {
		n, err := resp.ReplyLen(reply[pos:])
		if err != nil || n == 0 {
			return nil, elems, false
		}
		elems = append(elems, reply[pos:pos+n])
		pos += n
	}
	if pos != len(reply) {
		return nil, elems, false
	}
	kind, ok = bulkValue(elems[0])
	return kind, elems, ok
}

// BulkValue returns the content of a bulk or simple string element.
func BulkValue(e []byte) ([]byte, bool) { return bulkValue(e) }

// AppendPushFrame appends a pub/sub frame of strings (nil: null) and an
// optional trailing integer, as RESP3 push or RESP2 array.
func AppendPushFrame(dst []byte, resp3 bool, strs [][]byte, count int64, withCount bool) []byte {
	n := len(strs)
	if withCount {
		n++
	}
	if resp3 {
		dst = append(dst, '>')
		dst = appendInt(dst, n)
		dst = append(dst, '\r', '\n')
	} else {
		dst = resp.AppendArrayHeader(dst, n)
	}
	for _, s := range strs {
		if s == nil {
			dst = resp.AppendNull(dst, resp3)
		} else {
			dst = resp.AppendBulk(dst, s)
		}
	}
	if withCount {
		dst = resp.AppendInt(dst, count)
	}
	return dst
}
