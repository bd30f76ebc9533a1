package hostile

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// readTimeout bounds every raw read that expects a reply. It is a liveness
// bound, not a performance threshold: a reply that never comes is a finding.
// A reply queued behind another client's 128 MB on the shared upstream
// connection (as in pipeline-huge-replies-unread) may wait that long under
// -race on a busy machine, hence the slack; a passing read returns at once.
const readTimeout = 30 * time.Second

// maxBulk bounds a bulk string the raw reader accepts, so that a broken
// reply cannot make the test allocate without limit.
const maxBulk = 256 << 20

// rawConn is a RESP connection that writes any bytes, however malformed, and
// keeps a copy of everything it sent and read for the leak scan.
type rawConn struct {
	nc net.Conn
	br *bufio.Reader

	mu   sync.Mutex
	sent bytes.Buffer
	got  bytes.Buffer
}

func dialRaw(addr string) (*rawConn, error) { return dialRawFrom(addr, "") }

// dialRawFrom dials addr from the local IP address from ("": any).
func dialRawFrom(addr, from string) (*rawConn, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s from %q: %w", addr, from, err)
	}
	c := &rawConn{nc: nc}
	c.br = bufio.NewReaderSize(teeReader{c}, 64<<10)
	return c, nil
}

// teeReader records every byte read from the network, including bytes of
// replies the test never decodes.
type teeReader struct{ c *rawConn }

func (t teeReader) Read(p []byte) (int, error) {
	n, err := t.c.nc.Read(p)
	if n > 0 {
		t.c.mu.Lock()
		t.c.got.Write(p[:n])
		t.c.mu.Unlock()
	}
	return n, err
}

func (c *rawConn) Close() error { return c.nc.Close() }

// received returns a copy of every byte read so far.
func (c *rawConn) received() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.got.Bytes())
}

func (c *rawConn) sentBytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.sent.Bytes())
}

// write sends raw bytes.
func (c *rawConn) write(b []byte) error {
	c.mu.Lock()
	if c.sent.Len() < 1<<20 {
		c.sent.Write(b[:min(len(b), 1<<20)])
	}
	c.mu.Unlock()
	_ = c.nc.SetWriteDeadline(time.Now().Add(readTimeout))
	_, err := c.nc.Write(b)
	return err
}

// encode returns args as one RESP request.
func encode(args ...string) []byte {
	var b []byte
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(len(args)), 10)
	b = append(b, '\r', '\n')
	for _, a := range args {
		b = append(b, '$')
		b = strconv.AppendInt(b, int64(len(a)), 10)
		b = append(b, '\r', '\n')
		b = append(b, a...)
		b = append(b, '\r', '\n')
	}
	return b
}

// reply is one decoded reply, or the transport error that took its place.
type reply struct {
	v   val
	err error // transport or framing error: no reply was read
}

func (r reply) isErr() bool { return r.err == nil && (r.v.typ == '-' || r.v.typ == '!') }

func (r reply) String() string {
	if r.err != nil {
		return "<no reply: " + r.err.Error() + ">"
	}
	return r.v.String()
}

// do sends one command and reads its reply.
func (c *rawConn) do(args ...string) reply {
	if err := c.write(encode(args...)); err != nil {
		return reply{err: err}
	}
	return c.read()
}

// read reads one reply, waiting at most readTimeout.
func (c *rawConn) read() reply { return c.readWithin(readTimeout) }

func (c *rawConn) readWithin(d time.Duration) reply {
	_ = c.nc.SetReadDeadline(time.Now().Add(d))
	v, err := readVal(c.br)
	if err != nil {
		return reply{err: err}
	}
	return reply{v: v}
}

// drain reads until the connection closes or is quiet for d, so that the
// leak scan sees whatever the server sent without being asked.
func (c *rawConn) drain(d time.Duration) {
	buf := make([]byte, 32<<10)
	for {
		_ = c.nc.SetReadDeadline(time.Now().Add(d))
		if _, err := c.br.Read(buf); err != nil {
			return
		}
	}
}

// val is a decoded RESP2/RESP3 value.
type val struct {
	typ   byte
	str   string
	elems []val
	null  bool
}

func (v val) String() string {
	var b strings.Builder
	v.format(&b, 0)
	s := b.String()
	if len(s) > 800 {
		s = s[:800] + "…"
	}
	return s
}

func (v val) format(b *strings.Builder, depth int) {
	if depth > 8 {
		b.WriteString("…")
		return
	}
	switch {
	case v.null:
		b.WriteString("(nil)")
	case v.elems != nil || strings.ContainsRune("*~>%|", rune(v.typ)):
		b.WriteByte('[')
		for i, e := range v.elems {
			if i > 0 {
				b.WriteByte(' ')
			}
			if i >= 20 {
				fmt.Fprintf(b, "…(%d)", len(v.elems))
				break
			}
			e.format(b, depth+1)
		}
		b.WriteByte(']')
	case v.typ == '-' || v.typ == '!':
		b.WriteString("(error) " + strconv.Quote(v.str))
	case v.typ == ':':
		b.WriteString("(integer) " + v.str)
	default:
		b.WriteString(strconv.Quote(v.str))
	}
}

// strs returns the string elements of an aggregate.
func (v val) strs() []string {
	out := make([]string, 0, len(v.elems))
	for _, e := range v.elems {
		out = append(out, e.str)
	}
	return out
}

// depth is the nesting depth of v (1 for a scalar).
func (v val) depth() int {
	d := 0
	for _, e := range v.elems {
		d = max(d, e.depth())
	}
	return d + 1
}

var errBadReply = errors.New("malformed reply")

// readVal decodes one reply. Nesting is unbounded on purpose: keyfence must
// relay the deepest replies Redis produces, and the test must be able to
// read them.
func readVal(br *bufio.Reader) (val, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return val{}, err
	}
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return val{}, fmt.Errorf("%w: line %q", errBadReply, line)
	}
	typ, body := line[0], line[1:len(line)-2]
	v := val{typ: typ}
	switch typ {
	case '+', '-', ':', ',', '(', '#':
		v.str = body
	case '_':
		v.null = true
	case '$', '=', '!':
		n, err := strconv.Atoi(body)
		if err != nil || n < -1 || n > maxBulk {
			return val{}, fmt.Errorf("%w: bulk length %q", errBadReply, body)
		}
		if n == -1 {
			v.null = true
			break
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			return val{}, err
		}
		v.str = string(buf[:n])
	case '*', '~', '>', '%', '|':
		n, err := strconv.Atoi(body)
		if err != nil || n < -1 || n > 1<<24 {
			return val{}, fmt.Errorf("%w: aggregate length %q", errBadReply, body)
		}
		if n == -1 {
			v.null = true
			break
		}
		if typ == '%' || typ == '|' {
			n *= 2
		}
		v.elems = make([]val, 0, min(n, 1024))
		for range n {
			e, err := readVal(br)
			if err != nil {
				return val{}, err
			}
			v.elems = append(v.elems, e)
		}
		if typ == '|' {
			// An attribute precedes the reply it annotates; keep the reply.
			return readVal(br)
		}
	default:
		return val{}, fmt.Errorf("%w: type byte %q", errBadReply, typ)
	}
	return v, nil
}
