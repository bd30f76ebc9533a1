package rewrite

import (
	"bytes"
	"strconv"

	"github.com/keyfence/keyfence/resp"
)

// AppendReply appends to dst the reply the client sees for a reply of the
// given kind from upstream: key names lose the tenant's prefix, values are
// never touched, and error messages that echo a key are stripped too. reply
// must be one complete RESP reply (see ReplyLen); a reply whose shape does
// not match kind is passed through unchanged rather than guessed at.
func (r *Rewriter) AppendReply(dst, reply []byte, kind ReplyKind) []byte {
	if len(reply) == 0 {
		return dst
	}
	if reply[0] == '-' || reply[0] == '!' {
		return r.appendStrippedError(dst, reply)
	}
	if kind == ReplyRaw {
		return append(dst, reply...)
	}
	var mode stripMode
	switch kind {
	case ReplyKey:
		mode = stripKey
	case ReplyKeyList:
		mode = stripEachKey
	case ReplyScan:
		mode = stripScan
	case ReplyKeyFirst:
		mode = stripFirstKey
	case ReplyStreams:
		mode = stripStreams
	case ReplyChannelMsg:
		// Same rules as on a subscribed connection; a keyevent message
		// about another tenant's key yields nothing at all.
		out, info := r.AppendPush(dst, reply, reply[0] == '>')
		if info.Kind == PushNone {
			return append(dst, reply...)
		}
		return out
	case ReplyChannelList:
		mode = stripEachChannel
	case ReplyChannelCounts:
		mode = stripChannelCounts
	}
	out, n, ok := r.appendStripped(dst, reply, mode)
	if !ok || n != len(reply) {
		return append(dst, reply...)
	}
	return out
}

type stripMode uint8

// maxReplyDepth bounds the recursion of appendStrippedAt. Stripping only
// descends where a mode says keys are (three levels at most); everything
// deeper is copied whole (ReplyLen keeps no stack), so a reply nested
// thousands deep passes through and this bound is never what stops it.
const maxReplyDepth = 128

const (
	copyAsIs           stripMode = iota
	stripKey                     // a bulk or simple string key name
	stripEachKey                 // an aggregate of key names
	stripScan                    // [cursor, [keys]]
	stripFirstKey                // [key, rest…]
	stripStreams                 // [[key, entries]…] or {key: entries}
	stripMessage                 // pub/sub message or confirmation
	stripChannel                 // a channel or pattern name
	stripEachChannel             // an aggregate of channel names
	stripChannelCounts           // [channel, count, …] or {channel: count}
)

// appendStripped rewrites the element at the front of buf under mode and
// reports how many bytes of buf it took. ok is false for malformed input.
func (r *Rewriter) appendStripped(dst, buf []byte, mode stripMode) (out []byte, n int, ok bool) {
	return r.appendStrippedAt(dst, buf, mode, 0)
}

// appendStrippedAt walks an aggregate once, child by child, instead of
// measuring it first: a reply is scanned once however deep it nests.
func (r *Rewriter) appendStrippedAt(dst, buf []byte, mode stripMode, depth int) (out []byte, n int, ok bool) {
	if len(buf) == 0 || depth > maxReplyDepth {
		return dst, 0, false
	}
	if mode == copyAsIs || !isAggregate(buf[0]) {
		size, err := resp.ReplyLen(buf)
		if err != nil || size == 0 {
			return dst, 0, false
		}
		elem := buf[:size]
		switch mode {
		case stripKey:
			return r.appendStrippedString(dst, elem), size, true
		case stripChannel:
			return r.appendStrippedChannel(dst, elem), size, true
		}
		return append(dst, elem...), size, true // values, or not the expected shape
	}
	elem := buf
	count, body, ok := aggregateHeader(elem)
	if !ok {
		return dst, 0, false
	}
	if count < 0 { // a null aggregate
		return append(dst, elem[:body]...), body, true
	}
	dst = append(dst, elem[:body]...)
	pos := body
	for i := 0; i < count; i++ {
		child := copyAsIs
		switch mode {
		case stripEachKey:
			child = stripKey
		case stripScan:
			if i == 1 {
				child = stripEachKey
			}
		case stripFirstKey:
			if i == 0 {
				child = stripKey
			}
		case stripStreams:
			if elem[0] == '%' {
				if i%2 == 0 {
					child = stripKey
				}
			} else {
				child = stripFirstKey
			}
		case stripMessage:
			child = r.messageChildMode(elem, body, i)
		case stripEachChannel:
			child = stripChannel
		case stripChannelCounts:
			if i%2 == 0 {
				child = stripChannel
			}
		}
		var m int
		dst, m, ok = r.appendStrippedAt(dst, elem[pos:], child, depth+1)
		if !ok {
			return dst, 0, false
		}
		pos += m
	}
	return dst, pos, true
}

func isAggregate(c byte) bool { return c == '*' || c == '%' || c == '~' || c == '>' }

// aggregateHeader returns the number of child elements (maps count both
// keys and values) and where the first child starts.
func aggregateHeader(elem []byte) (count, body int, ok bool) {
	line, next, ok := resp.ReadLine(elem, 1)
	if !ok || next < 0 {
		return 0, 0, false
	}
	n, ok := resp.ParseInt(line)
	if !ok {
		return 0, 0, false
	}
	if elem[0] == '%' {
		n *= 2
	}
	return int(n), next, true
}

// appendStrippedString removes the prefix from a bulk or simple string.
func (r *Rewriter) appendStrippedString(dst, elem []byte) []byte {
	switch elem[0] {
	case '$':
		line, next, ok := resp.ReadLine(elem, 1)
		if !ok || next < 0 {
			break
		}
		n, ok := resp.ParseInt(line)
		if !ok || n < 0 {
			break
		}
		val := elem[next : next+int(n)]
		if bytes.HasPrefix(val, r.prefix) {
			return resp.AppendBulk(dst, val[len(r.prefix):])
		}
	case '+':
		val := elem[1 : len(elem)-2]
		if bytes.HasPrefix(val, r.prefix) {
			dst = append(dst, '+')
			dst = append(dst, val[len(r.prefix):]...)
			return append(dst, '\r', '\n')
		}
	}
	return append(dst, elem...)
}

// appendStrippedError removes every occurrence of the prefix from an error,
// since Redis echoes key names in some of them (NOGROUP, WRONGTYPE in Lua…).
func (r *Rewriter) appendStrippedError(dst, reply []byte) []byte {
	if !bytes.Contains(reply, r.prefix) {
		return append(dst, reply...)
	}
	if reply[0] == '-' {
		return append(dst, bytes.ReplaceAll(reply, r.prefix, nil)...)
	}
	line, next, ok := resp.ReadLine(reply, 1)
	if !ok || next < 0 {
		return append(dst, reply...)
	}
	if n, ok := resp.ParseInt(line); !ok || next+int(n)+2 != len(reply) {
		return append(dst, reply...)
	}
	msg := bytes.ReplaceAll(reply[next:len(reply)-2], r.prefix, nil)
	dst = append(dst, '!')
	dst = appendInt(dst, len(msg))
	dst = append(dst, '\r', '\n')
	dst = append(dst, msg...)
	return append(dst, '\r', '\n')
}

// StripKey returns key without the tenant's prefix; ok is false when key is
// not in the tenant's namespace.
func (r *Rewriter) StripKey(key []byte) (stripped []byte, ok bool) {
	if !bytes.HasPrefix(key, r.prefix) {
		return key, false
	}
	return key[len(r.prefix):], true
}

// messageChildMode says which elements of a pub/sub message name channels:
// ["message", ch, payload], ["pmessage", pattern, ch, payload],
// ["subscribe", ch, count] and the like. The payload is a value: untouched.
func (r *Rewriter) messageChildMode(elem []byte, body, i int) stripMode {
	if i == 0 {
		return copyAsIs
	}
	if i == 2 && bytes.HasPrefix(elem[body:], []byte("$8\r\npmessage\r\n")) {
		return stripChannel
	}
	if i == 1 {
		return stripChannel
	}
	return copyAsIs
}

// appendStrippedChannel undoes appendChannelName for a bulk string.
func (r *Rewriter) appendStrippedChannel(dst, elem []byte) []byte {
	if elem[0] != '$' {
		return append(dst, elem...)
	}
	line, next, ok := resp.ReadLine(elem, 1)
	if !ok || next < 0 {
		return append(dst, elem...)
	}
	n, ok := resp.ParseInt(line)
	if !ok || n < 0 {
		return append(dst, elem...)
	}
	val := elem[next : next+int(n)]
	if bytes.HasPrefix(val, []byte(keyspacePrefix)) {
		if i := bytes.Index(val[len(keyspacePrefix):], []byte("__:")); i >= 0 {
			cut := len(keyspacePrefix) + i + 3
			for _, p := range [2][]byte{r.prefix, r.globPrefix} {
				if bytes.HasPrefix(val[cut:], p) {
					dst = append(dst, '$')
					dst = appendInt(dst, len(val)-len(p))
					dst = append(dst, '\r', '\n')
					dst = append(dst, val[:cut]...)
					dst = append(dst, val[cut+len(p):]...)
					return append(dst, '\r', '\n')
				}
			}
		}
	}
	for _, p := range [2][]byte{r.prefix, r.globPrefix} {
		if bytes.HasPrefix(val, p) {
			return resp.AppendBulk(dst, val[len(p):])
		}
	}
	return append(dst, elem...)
}

// AppendExecReply strips EXEC's array reply element by element, each by the
// reply kind of the command queued at its place. A null (aborted by WATCH)
// or an error passes through like any other reply.
func (r *Rewriter) AppendExecReply(dst, reply []byte, kinds []ReplyKind) []byte {
	if len(reply) == 0 || reply[0] != '*' {
		return r.AppendReply(dst, reply, ReplyRaw)
	}
	elems, body, ok := splitExec(reply)
	if !ok || len(elems) != len(kinds) {
		return append(dst, reply...)
	}
	dst = append(dst, reply[:body]...)
	for i, k := range kinds {
		dst = r.AppendReply(dst, elems[i], k)
	}
	return dst
}

// SplitExec returns the elements of EXEC's array reply, each one whole
// reply, or ok false for anything else: a null (WATCH failed the
// transaction), an error, or bytes that are not exactly one array.
func SplitExec(reply []byte) (elems [][]byte, ok bool) {
	elems, _, ok = splitExec(reply)
	return elems, ok
}

func splitExec(reply []byte) (elems [][]byte, body int, ok bool) {
	if elems, body, ok = appendElems(nil, reply); !ok {
		return nil, 0, false
	}
	return elems, body, true
}

// AppendElems appends the elements of one whole array reply to dst, each
// one whole reply, or returns ok false for anything else (a null, an error,
// bytes that are not exactly one array). A caller that keeps dst allocates
// nothing.
func AppendElems(dst [][]byte, reply []byte) ([][]byte, bool) {
	elems, _, ok := appendElems(dst, reply)
	return elems, ok
}

func appendElems(dst [][]byte, reply []byte) (elems [][]byte, body int, ok bool) {
	if len(reply) == 0 || reply[0] != '*' {
		return dst, 0, false
	}
	count, body, ok := aggregateHeader(reply)
	if !ok || count < 0 || count > len(reply) { // each element takes 3 bytes at least
		return dst, 0, false
	}
	if dst == nil {
		dst = make([][]byte, 0, count)
	}
	pos := body
	for i := 0; i < count; i++ {
		n, err := resp.ReplyLen(reply[pos:])
		if err != nil || n == 0 {
			return dst, 0, false
		}
		dst = append(dst, reply[pos:pos+n])
		pos += n
	}
	if pos != len(reply) {
		return dst, 0, false
	}
	return dst, body, true
}

func appendInt(dst []byte, n int) []byte { return strconv.AppendInt(dst, int64(n), 10) }
