package resp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"
)

// ServerError is an error reply (`-ERR …`) sent by the server; the
// connection stays usable after it.
type ServerError struct{ Msg string }

func (e *ServerError) Error() string { return e.Msg }

// IsServerError reports whether err is an error reply rather than a
// transport or protocol failure.
func IsServerError(err error) bool {
	var se *ServerError
	return errors.As(err, &se)
}

// Conn is one client connection. It is not safe for concurrent use: the
// benchmark tools give every worker its own.
type Conn struct {
	nc      net.Conn
	w       *bufio.Writer
	r       *bufio.Reader
	scratch []byte
	stop    func() bool
}

// Dial connects to addr. Cancelling ctx after Dial returns unblocks any read
// or write in progress, so a stuck server cannot hang a benchmark past its
// deadline.
func Dial(ctx context.Context, addr string) (*Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return newConn(ctx, nc, 16<<10, 16<<10), nil
}

// DialSmall is Dial with small buffers, for opening thousands of idle
// connections without the client's own memory dominating the test.
func DialSmall(ctx context.Context, addr string) (*Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return newConn(ctx, nc, 64, 64), nil
}

func newConn(ctx context.Context, nc net.Conn, rsize, wsize int) *Conn {
	c := &Conn{
		nc:      nc,
		w:       bufio.NewWriterSize(nc, wsize),
		r:       bufio.NewReaderSize(nc, rsize),
		scratch: make([]byte, 0, 32),
	}
	c.stop = context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	return c
}

// Close closes the connection.
func (c *Conn) Close() error {
	c.stop()
	return c.nc.Close()
}

// SetDeadline bounds the next reads and writes.
func (c *Conn) SetDeadline(t time.Time) error { return c.nc.SetDeadline(t) }

// WriteArray starts a command of n arguments.
func (c *Conn) WriteArray(n int) {
	c.scratch = append(c.scratch[:0], '*')
	c.scratch = strconv.AppendInt(c.scratch, int64(n), 10)
	c.scratch = append(c.scratch, '\r', '\n')
	_, _ = c.w.Write(c.scratch)
}

// WriteBulk writes one argument. Write errors surface at Flush.
func (c *Conn) WriteBulk(b []byte) {
	c.scratch = append(c.scratch[:0], '$')
	c.scratch = strconv.AppendInt(c.scratch, int64(len(b)), 10)
	c.scratch = append(c.scratch, '\r', '\n')
	_, _ = c.w.Write(c.scratch)
	_, _ = c.w.Write(b)
	_, _ = c.w.WriteString("\r\n")
}

// WriteBulkString is WriteBulk for a string, without converting it.
func (c *Conn) WriteBulkString(s string) {
	c.scratch = append(c.scratch[:0], '$')
	c.scratch = strconv.AppendInt(c.scratch, int64(len(s)), 10)
	c.scratch = append(c.scratch, '\r', '\n')
	_, _ = c.w.Write(c.scratch)
	_, _ = c.w.WriteString(s)
	_, _ = c.w.WriteString("\r\n")
}

// Flush sends what has been written.
func (c *Conn) Flush() error {
	if err := c.w.Flush(); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return nil
}

// Skip reads one complete reply and throws it away. An error reply is
// returned as *ServerError (after the whole reply has been consumed, so the
// connection stays in step).
func (c *Conn) Skip() error {
	return c.skip(0)
}

// maxDepth bounds nesting so that a corrupt stream cannot recurse forever.
const maxDepth = 32

func (c *Conn) skip(depth int) error {
	if depth > maxDepth {
		return errors.New("resp: reply nested too deeply")
	}
	line, err := c.readLine()
	if err != nil {
		return err
	}
	if len(line) == 0 {
		return errors.New("resp: empty reply line")
	}
	switch line[0] {
	case '+', ':', ',', '#', '(', '_':
		return nil
	case '-':
		return &ServerError{Msg: string(line[1:])}
	case '$', '=', '!':
		n, err := parseLen(line[1:])
		if err != nil {
			return err
		}
		if n < 0 {
			return nil
		}
		if line[0] == '!' {
			msg := make([]byte, n+2)
			if _, err := io.ReadFull(c.r, msg); err != nil {
				return fmt.Errorf("read: %w", err)
			}
			return &ServerError{Msg: string(msg[:n])}
		}
		if _, err := c.r.Discard(n + 2); err != nil {
			return fmt.Errorf("read: %w", err)
		}
		return nil
	case '*', '~', '>', '%', '|':
		n, err := parseLen(line[1:])
		if err != nil {
			return err
		}
		if line[0] == '%' || line[0] == '|' {
			n *= 2
		}
		var first error
		for i := 0; i < n; i++ {
			if err := c.skip(depth + 1); err != nil {
				if !IsServerError(err) {
					return err
				}
				if first == nil {
					first = err
				}
			}
		}
		if line[0] == '|' {
			// An attribute precedes the reply it annotates.
			return c.skip(depth)
		}
		return first
	default:
		return fmt.Errorf("resp: unexpected reply type %q", line[0])
	}
}

// readLine returns the next line without its CRLF. The slice is valid only
// until the next read.
func (c *Conn) readLine() ([]byte, error) {
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, errors.New("resp: reply line too long")
		}
		return nil, fmt.Errorf("read: %w", err)
	}
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return nil, errors.New("resp: line not terminated by CRLF")
	}
	return line[:len(line)-2], nil
}

func parseLen(b []byte) (int, error) {
	n, err := strconv.Atoi(string(b))
	if err != nil {
		return 0, fmt.Errorf("resp: bad length %q: %w", b, err)
	}
	return n, nil
}

// Do sends one command and returns a simple-string, integer or bulk reply as
// text. It allocates, so it is for setup and checks, not for measured paths.
func (c *Conn) Do(ctx context.Context, args ...string) (string, error) {
	if dl, ok := ctx.Deadline(); ok {
		if err := c.nc.SetDeadline(dl); err != nil {
			return "", fmt.Errorf("set deadline: %w", err)
		}
		defer func() { _ = c.nc.SetDeadline(time.Time{}) }()
	}
	c.WriteArray(len(args))
	for _, a := range args {
		c.WriteBulkString(a)
	}
	if err := c.Flush(); err != nil {
		return "", err
	}
	line, err := c.readLine()
	if err != nil {
		return "", err
	}
	if len(line) == 0 {
		return "", errors.New("resp: empty reply line")
	}
	switch line[0] {
	case '+', ':':
		return string(line[1:]), nil
	case '-':
		return "", &ServerError{Msg: string(line[1:])}
	case '$':
		n, err := parseLen(line[1:])
		if err != nil || n < 0 {
			return "", err
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(c.r, b); err != nil {
			return "", fmt.Errorf("read: %w", err)
		}
		return string(b[:n]), nil
	default:
		// The rest of this reply is still unread, so the connection is out of
		// step: callers close it on any error from Do.
		return "", fmt.Errorf("resp: Do got reply type %q", line[0])
	}
}

// Auth sends AUTH user password and expects OK: how a client picks its
// tenant at a keyfence gateway.
func (c *Conn) Auth(ctx context.Context, user, password string) error {
	got, err := c.Do(ctx, "AUTH", user, password)
	if err != nil {
		return fmt.Errorf("AUTH %s: %w", user, err)
	}
	if got != "OK" {
		return fmt.Errorf("AUTH %s: got %q, want OK", user, got)
	}
	return nil
}

// Ping dials addr, sends PING and expects PONG: the readiness check for
// every server the benchmarks start.
func Ping(ctx context.Context, addr string) error {
	return PingAs(ctx, addr, "", "")
}

// PingAs is Ping after AUTH user password, for a keyfence gateway, which
// answers nothing but AUTH before it; no AUTH when user is empty.
func PingAs(ctx context.Context, addr, user, password string) error {
	c, err := Dial(ctx, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if user != "" {
		if err := c.Auth(ctx, user, password); err != nil {
			return fmt.Errorf("%s: %w", addr, err)
		}
	}
	got, err := c.Do(ctx, "PING")
	if err != nil {
		return fmt.Errorf("PING %s: %w", addr, err)
	}
	if got != "PONG" {
		return fmt.Errorf("PING %s: got %q, want PONG", addr, got)
	}
	return nil
}

// FlushAll empties the Redis at addr (the benchmarks start every run from
// an empty Redis), giving up after 30 s.
func FlushAll(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := Dial(ctx, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Do(ctx, "FLUSHALL")
	return err
}
