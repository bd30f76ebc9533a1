package resp

import (
	"errors"
	"math"
	"strconv"
)

// Protocol errors, worded as Redis words them so that clients and operators
// recognise them. The proxy closes the connection after sending one, as Redis
// does: the stream cannot be resynchronised.
var (
	ErrInvalidMultibulkLength = errors.New("ERR Protocol error: invalid multibulk length")
	ErrInvalidBulkLength      = errors.New("ERR Protocol error: invalid bulk length")
	ErrTooBigMultibulkCount   = errors.New("ERR Protocol error: too big mbulk count string")
	ErrTooBigBulkCount        = errors.New("ERR Protocol error: too big bulk count string")
	ErrUnauthMultibulkLength  = errors.New("ERR Protocol error: unauthenticated multibulk length")
	ErrUnauthBulkLength       = errors.New("ERR Protocol error: unauthenticated bulk length")
	ErrUnbalancedQuotes       = errors.New("ERR Protocol error: unbalanced quotes in request")
	ErrTooBigInline           = errors.New("ERR Protocol error: too big inline request")
	ErrRequestTooLarge        = errors.New("ERR Protocol error: request is larger than the proxy's --max-request-bytes")
	ErrInvalidReply           = errors.New("invalid RESP reply from upstream")
)

// ExpectedDollarError is Redis's "expected '$', got 'x'" protocol error.
type ExpectedDollarError struct{ Got byte }

func (e ExpectedDollarError) Error() string {
	return "ERR Protocol error: expected '$', got '" + string(rune(e.Got)) + "'"
}

// Limits bound what one request may hold, so that a client cannot make the
// proxy buffer without end.
type Limits struct {
	MaxRequestBytes int // whole request, all arguments included
	MaxArgs         int // arguments in one request
	// Unauthenticated applies Redis's limits for a client that has yet to
	// AUTH: at most unauthMaxArgs arguments of at most unauthMaxBulk bytes
	// each, so that an anonymous peer cannot make the server buffer much.
	Unauthenticated bool
}

// DefaultLimits match Redis's own protocol limits where they are sane for a
// proxy that buffers a whole request before forwarding it.
var DefaultLimits = Limits{MaxRequestBytes: 64 << 20, MaxArgs: 1024 * 1024}

const maxInline = 64 << 10 // Redis's PROTO_INLINE_MAX_SIZE

// What Redis 7.0 accepts in a request header (networking.c,
// processMultibulkBuffer): a count up to INT_MAX, a bulk length up to
// proto-max-bulk-len (512 MB unless configured), and before AUTH at most
// 10 arguments of 16 KiB. Past these Redis answers with its own protocol
// error; keyfence's own, smaller limits (Limits) come after them, so an
// announcement Redis would refuse gets Redis's words.
const (
	maxMultibulkCount = math.MaxInt32
	maxBulkLength     = 512 << 20
	unauthMaxArgs     = 10
	unauthMaxBulk     = 16384
)

// ParseCommand parses one client request (RESP multibulk or inline) from the
// front of buf. It returns the arguments as sub-slices of buf (appended to
// args[:0], so a caller that keeps args allocates nothing), the number of
// bytes consumed, and an error for malformed input. n == 0 with a nil error
// means buf does not yet hold a whole request; need is then a lower bound on
// the bytes the request will take, so the caller can grow its buffer once.
// An empty request (a blank inline line or "*0") yields n > 0 and no args.
func ParseCommand(buf []byte, args [][]byte, lim Limits) (out [][]byte, n, need int, err error) {
	args = args[:0]
	if len(buf) == 0 {
		return args, 0, 1, nil
	}
	if buf[0] != '*' {
		return parseInline(buf, args, lim)
	}
	line, pos, ok := ReadLine(buf, 1)
	if !ok {
		if len(buf) > maxInline {
			return args, 0, 0, ErrTooBigMultibulkCount
		}
		return args, 0, len(buf) + 1, nil
	}
	count, ok := ParseRedisInt(line)
	switch {
	case !ok || pos < 0 || count > maxMultibulkCount:
		return args, 0, 0, ErrInvalidMultibulkLength
	case count > unauthMaxArgs && lim.Unauthenticated:
		return args, 0, 0, ErrUnauthMultibulkLength
	case count > int64(lim.MaxArgs):
		return args, 0, 0, ErrInvalidMultibulkLength
	case count <= 0:
		return args, pos, 0, nil
	}
	for i := int64(0); i < count; i++ {
		if pos >= len(buf) {
			return args, 0, pos + 1, nil
		}
		if buf[pos] != '$' {
			return args, 0, 0, ExpectedDollarError{Got: buf[pos]}
		}
		line, next, ok := ReadLine(buf, pos+1)
		if !ok {
			if len(buf)-pos > maxInline {
				return args, 0, 0, ErrTooBigBulkCount
			}
			return args, 0, len(buf) + 1, nil
		}
		size, ok := ParseRedisInt(line)
		switch {
		case !ok || next < 0 || size < 0 || size > maxBulkLength:
			return args, 0, 0, ErrInvalidBulkLength
		case size > unauthMaxBulk && lim.Unauthenticated:
			return args, 0, 0, ErrUnauthBulkLength
		case next > lim.MaxRequestBytes || size > int64(lim.MaxRequestBytes-next):
			return args, 0, 0, ErrRequestTooLarge
		}
		end := next + int(size)
		if end+2 > len(buf) {
			return args, 0, end + 2, nil
		}
		if buf[end] != '\r' || buf[end+1] != '\n' {
			return args, 0, 0, ErrInvalidBulkLength
		}
		args = append(args, buf[next:end:end])
		pos = end + 2
	}
	return args, pos, 0, nil
}

// ParseRedisInt parses an integer as Redis's string2ll does, which Redis
// uses for request lengths and for integer arguments (numkeys, counts): at
// most 20 characters, an optional '-', no leading zeros ("0" itself
// aside), no '+' or blanks, within int64.
func ParseRedisInt(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	if len(b) == 1 && b[0] == '0' {
		return 0, true
	}
	neg := b[0] == '-'
	if neg {
		b = b[1:]
	}
	if len(b) == 0 || b[0] < '1' || b[0] > '9' {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if v > (math.MaxUint64-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	switch {
	case neg && v <= 1<<63:
		return int64(-v), true // -(1<<63) wraps to MinInt64, as intended
	case !neg && v <= math.MaxInt64:
		return int64(v), true
	}
	return 0, false
}

// parseInline splits a telnet-style request the way Redis's sdssplitargs
// does: words separated by blanks, "double" quotes with escapes, 'single'
// quotes without.
func parseInline(buf []byte, args [][]byte, lim Limits) ([][]byte, int, int, error) {
	nl := -1
	for i, c := range buf {
		if c == '\n' {
			nl = i
			break
		}
	}
	if nl < 0 {
		if len(buf) > maxInline {
			return args, 0, 0, ErrTooBigInline
		}
		return args, 0, len(buf) + 1, nil
	}
	if nl+1 > lim.MaxRequestBytes+2 {
		return args, 0, 0, ErrRequestTooLarge
	}
	line := buf[:nl]
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	args, err := splitArgs(line, args, lim.MaxArgs)
	if err != nil {
		return args, 0, 0, err
	}
	return args, nl + 1, 0, nil
}

// SplitArgs splits line into words as Redis's sdssplitargs does (inline
// commands, a function library's "#!lua name=…" line): words separated by
// blanks, "double" quotes with escapes, 'single' quotes without. It
// rewrites line in place and returns sub-slices of it; false means
// unbalanced quotes.
func SplitArgs(line []byte) ([][]byte, bool) {
	args, err := splitArgs(line, nil, -1)
	return args, err == nil
}

// splitArgs appends line's words to args, at most maxArgs of them (-1: no
// limit).
func splitArgs(line []byte, args [][]byte, maxArgs int) ([][]byte, error) {
	// Inline words are rewritten in place (quotes and escapes shrink them),
	// so the arguments still point into buf and nothing is allocated. The
	// rules are sdssplitargs': a quote may open mid-word, and a closing
	// quote must be followed by a blank or the end of the line.
	i := 0
	for {
		for i < len(line) && isBlank(line[i]) {
			i++
		}
		if i == len(line) {
			break
		}
		start, w := i, i
		inDouble, inSingle := false, false
	word:
		for {
			switch {
			case inDouble:
				if i >= len(line) {
					return args, ErrUnbalancedQuotes
				}
				c := line[i]
				switch {
				case c == '\\' && i+3 < len(line) && line[i+1] == 'x' && isHex(line[i+2]) && isHex(line[i+3]):
					line[w] = unhex(line[i+2])<<4 | unhex(line[i+3])
					i += 4
				case c == '\\' && i+1 < len(line):
					line[w] = unescape(line[i+1])
					i += 2
				case c == '"':
					if i+1 < len(line) && !isBlank(line[i+1]) {
						return args, ErrUnbalancedQuotes
					}
					i++
					break word
				default:
					line[w] = c
					i++
				}
				w++
			case inSingle:
				if i >= len(line) {
					return args, ErrUnbalancedQuotes
				}
				c := line[i]
				switch {
				case c == '\\' && i+1 < len(line) && line[i+1] == '\'':
					line[w] = '\''
					i += 2
				case c == '\'':
					if i+1 < len(line) && !isBlank(line[i+1]) {
						return args, ErrUnbalancedQuotes
					}
					i++
					break word
				default:
					line[w] = c
					i++
				}
				w++
			default:
				if i >= len(line) || isBlank(line[i]) {
					break word
				}
				switch line[i] {
				case '"':
					inDouble = true
				case '\'':
					inSingle = true
				default:
					line[w] = line[i]
					w++
				}
				i++
			}
		}
		if len(args) == maxArgs {
			return args, ErrInvalidMultibulkLength
		}
		args = append(args, line[start:w:w])
	}
	return args, nil
}

// unescape maps the letter after a backslash inside double quotes.
func unescape(c byte) byte {
	switch c {
	case 'n':
		return '\n'
	case 'r':
		return '\r'
	case 't':
		return '\t'
	case 'b':
		return '\b'
	case 'a':
		return '\a'
	}
	return c
}

func isBlank(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == 0 }
func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}
func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

// ReadLine returns the line starting at buf[from] up to "\r\n" and the index
// just past it; next is -1 (and ok true) when a CR is not followed by LF.
func ReadLine(buf []byte, from int) (line []byte, next int, ok bool) {
	for i := from; i+1 < len(buf); i++ {
		if buf[i] == '\r' {
			if buf[i+1] != '\n' {
				return nil, -1, true // malformed: a bare CR
			}
			return buf[from:i], i + 2, true
		}
	}
	return nil, 0, false
}

// ParseInt parses a RESP length or integer without allocating.
func ParseInt(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 19 {
		return 0, false
	}
	neg := false
	if b[0] == '-' {
		neg = true
		b = b[1:]
		if len(b) == 0 {
			return 0, false
		}
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		if n > (math.MaxInt64-int64(c-'0'))/10 {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if neg {
		n = -n
	}
	return n, true
}

// appendLength appends n (>= 0), a length or count in a RESP header. Most
// are under 1,000, and written by hand they skip strconv's general path: it
// was 4 % of keyfence's CPU under SET at pipeline 16 (three headers a
// command, each way).
func appendLength(dst []byte, n int) []byte {
	switch {
	case n < 0:
	case n < 10:
		return append(dst, byte('0'+n))
	case n < 100:
		return append(dst, byte('0'+n/10), byte('0'+n%10))
	case n < 1000:
		return append(dst, byte('0'+n/100), byte('0'+n/10%10), byte('0'+n%10))
	}
	return strconv.AppendInt(dst, int64(n), 10)
}

// AppendBulk appends b as a RESP bulk string.
func AppendBulk(dst, b []byte) []byte {
	dst = append(dst, '$')
	dst = appendLength(dst, len(b))
	dst = append(dst, '\r', '\n')
	dst = append(dst, b...)
	return append(dst, '\r', '\n')
}

// AppendPrefixedBulk appends prefix+b as one RESP bulk string.
func AppendPrefixedBulk(dst, prefix, b []byte) []byte {
	dst = append(dst, '$')
	dst = appendLength(dst, len(prefix)+len(b))
	dst = append(dst, '\r', '\n')
	dst = append(dst, prefix...)
	dst = append(dst, b...)
	return append(dst, '\r', '\n')
}

// AppendArrayHeader appends a RESP array header of n elements.
func AppendArrayHeader(dst []byte, n int) []byte {
	dst = append(dst, '*')
	dst = appendLength(dst, n)
	return append(dst, '\r', '\n')
}

// AppendError appends a RESP error line. msg must not hold CR or LF.
func AppendError(dst []byte, msg string) []byte {
	dst = append(dst, '-')
	dst = append(dst, msg...)
	return append(dst, '\r', '\n')
}

// AppendInt appends a RESP integer.
func AppendInt(dst []byte, n int64) []byte {
	dst = append(dst, ':')
	dst = strconv.AppendInt(dst, n, 10)
	return append(dst, '\r', '\n')
}

// AppendStatus appends a RESP simple string.
func AppendStatus(dst []byte, s string) []byte {
	dst = append(dst, '+')
	dst = append(dst, s...)
	return append(dst, '\r', '\n')
}

// AppendNull appends the null of the given protocol version.
func AppendNull(dst []byte, resp3 bool) []byte {
	if resp3 {
		return append(dst, '_', '\r', '\n')
	}
	return append(dst, '$', '-', '1', '\r', '\n')
}

// maxReplyElements bounds an aggregate's announced size (Redis's own
// replies stay far below it), so that counts cannot overflow.
const maxReplyElements = 1 << 32

// EachReply hands each complete reply at the start of buf to each, in
// order, and returns how many bytes they took: a partial reply at the end
// is left for the caller to complete. It stops at each's first error, or at
// a malformed reply (ReplyLen's error).
func EachReply(buf []byte, each func(reply []byte) error) (int, error) {
	p := 0
	for p < len(buf) {
		n, err := ReplyLen(buf[p:])
		if err != nil {
			return p, err
		}
		if n == 0 {
			break
		}
		if err := each(buf[p : p+n]); err != nil {
			return p + n, err
		}
		p += n
	}
	return p, nil
}

// ReplyLen returns the length of the complete RESP2/RESP3 reply at the front
// of buf, or 0 when buf does not yet hold all of it. Malformed input yields
// ErrInvalidReply.
//
// It keeps no stack: one counter holds the elements still owed by every
// open aggregate, so a reply nested as deep as Redis nests one (a Lua table
// that contains itself comes back about 8,000 levels deep) costs no more than
// a flat one, and no depth is ever refused.
func ReplyLen(buf []byte) (int, error) {
	pos := 0
	for owed := int64(1); owed > 0; owed-- {
		if pos >= len(buf) {
			return 0, nil
		}
		line, next, ok := ReadLine(buf, pos+1)
		if !ok {
			return 0, nil
		}
		if next < 0 {
			return 0, ErrInvalidReply
		}
		switch buf[pos] {
		case '+', '-', ':', ',', '(', '#', '_':
			pos = next
		case '$', '=', '!':
			n, ok := ParseInt(line)
			if !ok || n < -1 {
				return 0, ErrInvalidReply
			}
			if n == -1 {
				pos = next
				continue
			}
			end := next + int(n) + 2
			if end < next {
				return 0, ErrInvalidReply
			}
			if end > len(buf) {
				return 0, nil
			}
			if buf[end-2] != '\r' || buf[end-1] != '\n' {
				return 0, ErrInvalidReply
			}
			pos = end
		case '*', '~', '>', '%', '|':
			n, ok := ParseInt(line)
			if !ok || n < -1 || n > maxReplyElements {
				return 0, ErrInvalidReply
			}
			if buf[pos] == '%' || buf[pos] == '|' {
				n *= 2
			}
			if buf[pos] == '|' {
				n++ // an attribute precedes the reply it annotates
			}
			if n > 0 {
				owed += n
			}
			if owed > 1<<48 { // more elements than any buffer could hold
				return 0, ErrInvalidReply
			}
			pos = next
		default:
			return 0, ErrInvalidReply
		}
	}
	return pos, nil
}
