package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/keyfence/keyfence/resp"
)

// UpstreamConfig says how to reach and log in to the upstream Redis.
type UpstreamConfig struct {
	Addr        string
	Username    string
	Password    string
	DB          int
	TLS         *tls.Config // nil: plain TCP
	DialTimeout time.Duration
	// Cluster lists seed nodes of a Redis Cluster; when set, commands are
	// routed to the master of their key's slot (cluster.go).
	Cluster []string
	// Timeout bounds how long a batch on a shared connection may wait for
	// its replies; past it the connection is closed and every command on
	// it fails with a timeout. Zero: no bound. Pinned connections (blocking
	// commands, transactions, subscribers) are never bounded by it.
	Timeout time.Duration
	// Sentinel, when set, gives the address of every connection (the
	// current master) instead of Addr, which then only names it in logs.
	Sentinel *Sentinel
	// AssumeRestoreSanitized lets RESTORE through when keyfence cannot read
	// sanitize-dump-payload upstream (CONFIG GET refused): the operator
	// vouches that it is yes. An upstream that says no is never trusted.
	AssumeRestoreSanitized bool
}

// connKey identifies what an upstream connection has been set up for: the
// logical database and the protocol version its replies come in. Sessions
// with the same key can share connections.
type connKey struct {
	db    int
	resp3 bool
	node  string // a Redis Cluster master's address; "" is UpstreamConfig.Addr
}

// errUpstream wraps every failure to talk to upstream, so that the session
// can tell them from the client's own errors.
type upstreamError struct{ err error }

func (e *upstreamError) Error() string { return "upstream: " + e.err.Error() }
func (e *upstreamError) Unwrap() error { return e.err }

// dial opens and prepares one upstream connection: AUTH, HELLO/SELECT.
func dial(ctx context.Context, cfg *UpstreamConfig, key connKey) (net.Conn, error) {
	if cfg.Sentinel != nil {
		// Asks the sentinels for the master, comes back here with its
		// address, then checks its role (sentinel.go).
		return cfg.Sentinel.dial(ctx, *cfg, key)
	}
	if key.node != "" && key.node != cfg.Addr {
		c := *cfg
		c.Addr = key.node
		cfg = &c
	}
	d := net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}
	var nc net.Conn
	var err error
	if cfg.TLS != nil {
		td := tls.Dialer{NetDialer: &d, Config: cfg.TLS}
		nc, err = td.DialContext(ctx, "tcp", cfg.Addr)
	} else {
		nc, err = d.DialContext(ctx, "tcp", cfg.Addr)
	}
	if err != nil {
		return nil, &upstreamError{fmt.Errorf("dial %s: %w", cfg.Addr, err)}
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	var req []byte
	var n int
	if key.resp3 {
		args := [][]byte{[]byte("HELLO"), []byte("3")}
		if cfg.Password != "" {
			user := cfg.Username
			if user == "" {
				user = "default"
			}
			args = append(args, []byte("AUTH"), []byte(user), []byte(cfg.Password))
		}
		req = resp.AppendCommand(req, args...)
		n++
	} else if cfg.Password != "" {
		if cfg.Username != "" {
			req = resp.AppendCommand(req, []byte("AUTH"), []byte(cfg.Username), []byte(cfg.Password))
		} else {
			req = resp.AppendCommand(req, []byte("AUTH"), []byte(cfg.Password))
		}
		n++
	}
	if key.db != 0 {
		req = resp.AppendCommand(req, []byte("SELECT"), []byte(strconv.Itoa(key.db)))
		n++
	}
	if n == 0 && cfg.TLS != nil {
		// A TLS 1.3 server checks the client's certificate after the
		// client's side of the handshake is done: one round trip turns a
		// refusal into a dial error, before any client command is sent.
		req = resp.AppendCommand(req, []byte("PING"))
		n++
	}
	if n == 0 {
		return nc, nil
	}
	deadline := time.Now().Add(cfg.DialTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = nc.SetDeadline(deadline)
	defer nc.SetDeadline(time.Time{})
	if _, err := nc.Write(req); err != nil {
		if cfg.TLS != nil {
			// A TLS server that refused us sent its reason (an alert)
			// before it reset the connection; say that, not the reset.
			var op *net.OpError
			if _, rerr := nc.Read(make([]byte, 1)); errors.As(rerr, &op) && op.Op == "remote error" {
				err = rerr
			}
		}
		nc.Close()
		return nil, &upstreamError{fmt.Errorf("set up connection: %w", err)}
	}
	br := bufio.NewReader(nc)
	for i := 0; i < n; i++ {
		reply, err := resp.ReadReply(br)
		if err != nil {
			nc.Close()
			return nil, &upstreamError{fmt.Errorf("set up connection: %w", err)}
		}
		if reply[0] == '-' {
			nc.Close()
			return nil, &upstreamError{fmt.Errorf("set up connection: %s", trimCRLF(reply[1:]))}
		}
	}
	return nc, nil
}

func trimCRLF(b []byte) string {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return string(b)
}

// A batch is one session's run of commands sent upstream together. The
// upstream reader fills replies (raw bytes, back to back) and ends (where
// each reply stops), then closes the batch by sending on done.
//
// limit, when positive, bounds the bytes of replies the batch holds (the
// client's output hard limit): past it the reader keeps reading the batch's
// remaining replies off the shared connection but drops them, and sets
// overflow, so the session can disconnect its client while every other
// client's replies on the connection stay in step.
type batch struct {
	want     int
	limit    int
	overflow bool // replies passed limit: they were dropped
	replies  []byte
	ends     []int
	err      error // set when the connection failed before all replies came
	done     chan struct{}
}

func newBatch() *batch { return &batch{done: make(chan struct{}, 1)} }

func (b *batch) reset(want int) {
	b.want = want
	b.replies = b.replies[:0]
	b.ends = b.ends[:0]
	b.err = nil
	b.overflow = false
}

// add keeps one reply, or counts and drops it once the batch holds more
// than its limit; called by the connection's reader only.
func (b *batch) add(reply []byte) {
	if !b.overflow && b.limit > 0 && len(b.replies)+len(reply) > b.limit {
		b.overflow = true
		b.replies = nil // let what the batch held go now, not when it ends
	}
	if !b.overflow {
		b.replies = append(b.replies, reply...)
	}
	b.ends = append(b.ends, len(b.replies))
}

// reply returns the i-th reply of a finished batch, or nil when the
// connection failed before it arrived or the batch overflowed.
func (b *batch) reply(i int) []byte {
	if i >= len(b.ends) || b.overflow {
		return nil
	}
	start := 0
	if i > 0 {
		start = b.ends[i-1]
	}
	return b.replies[start:b.ends[i]]
}

// upConn is one upstream connection multiplexed between sessions. Requests
// from every session are appended to one write buffer that one writer
// goroutine writes, so concurrent clients share syscalls; one reader
// goroutine hands replies back in FIFO order. A pinned
// upConn is the same thing used by one session only.
type upConn struct {
	cfg     *UpstreamConfig
	key     connKey
	timeout time.Duration // see UpstreamConfig.Timeout; 0 on pinned connections

	mu      sync.Mutex
	nc      net.Conn      // nil until dialled, and again after a failure
	pending []*batch      // batches awaiting replies, in the order sent, from pending[head]
	head    int           // the first of pending still waiting: popping keeps the array
	wbuf    []byte        // bytes not yet written
	spare   []byte        // the other write buffer, swapped with wbuf
	wake    chan struct{} // tells the writer of nc that wbuf has bytes
	dialing bool          // a submitter is dialling nc, without the lock
	closed  bool
	dials   uint64 // connections dialled so far: a new one may be a new server
	sent    uint64 // batches ever submitted, to tell an idle connection

	payload payloadCheck // does the server behind nc sanitize RESTORE payloads (restore.go)
}

func newUpConn(cfg *UpstreamConfig, key connKey) *upConn {
	return &upConn{cfg: cfg, key: key}
}

// do sends req (n commands) and waits until all n replies are in b or the
// connection failed. It never retries: a command may have reached Redis.
func (c *upConn) do(ctx context.Context, b *batch, req []byte, n int) error {
	b.reset(n)
	if n == 0 {
		return nil
	}
	if err := c.submit(ctx, b, req); err != nil {
		b.err = err
		return err
	}
	var timeout <-chan time.Time
	if c.timeout > 0 {
		t := time.NewTimer(c.timeout)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-b.done:
		return b.err
	case <-timeout:
		// Upstream stopped answering: fail everything waiting on this
		// connection (the replies could no longer be matched to requests)
		// and take the batch's result as failLocked left it.
		c.mu.Lock()
		if c.nc != nil {
			c.failLocked(c.nc, &upstreamError{fmt.Errorf("no reply within %s: %w", c.timeout, os.ErrDeadlineExceeded)})
		}
		c.mu.Unlock()
		<-b.done
		return b.err
	case <-ctx.Done():
		// The batch stays queued; its replies will be discarded into it.
		// The caller must not reuse b.
		return ctx.Err()
	}
}

func (c *upConn) submit(ctx context.Context, b *batch, req []byte) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return &upstreamError{errors.New("connection closed")}
	}
	if c.nc == nil && !c.dialing {
		// Dial without the lock: the sessions that arrive meanwhile queue
		// their requests behind this one instead of waiting on the mutex
		// for as long as a dial may take.
		c.dialing = true
		c.mu.Unlock()
		nc, err := dial(ctx, c.cfg, c.key)
		c.mu.Lock()
		c.dialing = false
		if err == nil && c.closed {
			nc.Close()
			err = &upstreamError{errors.New("connection closed")}
		}
		if err != nil {
			c.failQueuedLocked(err)
			c.mu.Unlock()
			return err
		}
		c.nc = nc
		c.dials++
		c.wake = make(chan struct{}, 1)
		c.wake <- struct{}{} // what others queued during the dial
		go c.readLoop(nc)
		go c.writeLoop(nc, c.wake)
	}
	c.wbuf = append(c.wbuf, req...)
	c.pending = append(c.pending, b)
	c.sent++
	if c.nc != nil {
		// Signal under the lock: failLocked closes the channel, and a send
		// on a closed channel panics. The send never blocks (default case).
		select {
		case c.wake <- struct{}{}:
		default: // the writer is already due to run and will take these bytes
		}
	} // else the dialling session's dial is under way: it wakes the writer
	c.mu.Unlock()
	return nil
}

// writeLoop writes whatever sessions have queued, one write for all of it:
// while it writes, more requests gather, so under load many clients' commands
// share each syscall, as in twemproxy's event loop. (Writing in place from the
// submitter that finds no write under way, as nats-server's flushClients
// does, measured slower here: bench/results/designs.md.)
func (c *upConn) writeLoop(nc net.Conn, wake chan struct{}) {
	for range wake {
		// Let the sessions that are already runnable (typically woken
		// together by one upstream read) queue their requests first, so
		// that one write carries all of them.
		runtime.Gosched()
		c.mu.Lock()
		if c.nc != nc {
			c.mu.Unlock()
			return
		}
		out := c.wbuf
		c.wbuf, c.spare = c.spare[:0], nil
		c.mu.Unlock()
		if len(out) == 0 {
			continue
		}
		_, err := nc.Write(out)
		c.mu.Lock()
		c.spare = out[:0]
		if err != nil {
			c.failLocked(nc, &upstreamError{fmt.Errorf("write: %w", err)})
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
	}
}

// readLoop hands replies to batches in the order they were sent.
func (c *upConn) readLoop(nc net.Conn) {
	rd := replyReader{buf: make([]byte, 0, 64<<10)}
	var cur *batch
	for {
		err := rd.read(nc, func(reply []byte) error {
			if cur == nil {
				c.mu.Lock()
				if c.nc != nc {
					// This connection was failed (a timeout, a write error)
					// and pending now belongs to its successor: a late
					// reply read here must never be matched to it.
					c.mu.Unlock()
					return errors.New("connection replaced")
				}
				if c.head == len(c.pending) {
					c.mu.Unlock()
					return errors.New("reply with no request waiting for it")
				}
				cur = c.pending[c.head]
				c.pending[c.head] = nil
				if c.head++; c.head == len(c.pending) {
					c.pending, c.head = c.pending[:0], 0
				}
				c.mu.Unlock()
			}
			cur.add(reply)
			if len(cur.ends) == cur.want {
				cur.done <- struct{}{}
				cur = nil
			}
			return nil
		})
		if err != nil {
			c.mu.Lock()
			if cur != nil {
				cur.err = &upstreamError{fmt.Errorf("read: %w", err)}
				cur.done <- struct{}{}
			}
			c.failLocked(nc, &upstreamError{fmt.Errorf("read: %w", err)})
			c.mu.Unlock()
			return
		}
	}
}

// replyReader reads an upstream connection into one buffer and hands out
// each complete RESP reply in it, keeping a partial one for the next read.
type replyReader struct{ buf []byte }

// read reads once and calls each for every complete reply now buffered;
// the reply is only valid during the call. A read, framing or each error
// ends it.
func (r *replyReader) read(nc net.Conn, each func(reply []byte) error) error {
	if len(r.buf) == cap(r.buf) {
		nb := make([]byte, len(r.buf), 2*cap(r.buf))
		copy(nb, r.buf)
		r.buf = nb
	}
	m, readErr := nc.Read(r.buf[len(r.buf):cap(r.buf)])
	r.buf = r.buf[:len(r.buf)+m]
	pos := 0
	var err error
	for pos < len(r.buf) && err == nil {
		n, perr := resp.ReplyLen(r.buf[pos:])
		if perr != nil {
			err = perr
			break
		}
		if n == 0 {
			break
		}
		err = each(r.buf[pos : pos+n])
		pos += n
	}
	if err == nil {
		err = readErr // replies that came with the error were handed out first
	}
	// Keep the unparsed tail at the front; shrink after a big reply, so a
	// connection that once carried one does not keep its size for good.
	if cap(r.buf) > 1<<20 && len(r.buf)-pos <= 64<<10 {
		nb := make([]byte, len(r.buf)-pos, 64<<10)
		copy(nb, r.buf[pos:])
		r.buf = nb
		return err
	}
	rest := copy(r.buf, r.buf[pos:])
	r.buf = r.buf[:rest]
	return err
}

// failLocked closes nc and fails every batch still waiting on it, so each
// client learns that its command's fate is unknown instead of hanging.
func (c *upConn) failLocked(nc net.Conn, err error) {
	if c.nc != nc {
		return
	}
	nc.Close()
	c.nc = nil
	close(c.wake)
	c.wake = nil
	c.failQueuedLocked(err)
}

// failQueuedLocked fails the batches queued while a dial that failed was
// under way.
func (c *upConn) failQueuedLocked(err error) {
	c.wbuf = c.wbuf[:0]
	for i, b := range c.pending[c.head:] {
		b.err = err
		b.done <- struct{}{}
		c.pending[c.head+i] = nil
	}
	c.pending, c.head = c.pending[:0], 0
}

// waiting is the number of batches awaiting replies; c.mu held.
func (c *upConn) waiting() int { return len(c.pending) - c.head }

// close shuts the connection; waiting batches fail.
func (c *upConn) close() {
	c.mu.Lock()
	c.closed = true
	if c.nc != nil {
		c.failLocked(c.nc, &upstreamError{errors.New("connection closed")})
	}
	c.mu.Unlock()
}

// idle reports whether no batch is waiting on the connection.
func (c *upConn) idle() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.waiting() == 0 && !c.closed
}
