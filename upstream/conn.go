package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/keyfence/keyfence/resp"
)

// A Batch is one session's run of commands sent upstream together. The
// upstream reader fills replies (raw bytes, back to back) and ends (where
// each reply stops), then closes the batch by sending on done.
//
// Limit, when positive, bounds the bytes of replies the batch holds (the
// client's output hard limit): past it the reader keeps reading the batch's
// remaining replies off the shared connection but drops them, and sets
// Overflow, so the session can disconnect its client while every other
// client's replies on the connection stay in step.
type Batch struct {
	// ReadOnly says every command of the batch is a read, which RetryReads
	// may send again; set by the caller.
	ReadOnly bool
	// Tracks says the batch turns on client-side caching on its connection
	// (CLIENT TRACKING … REDIRECT): losing that connection is reported to
	// Config.TrackingLost. Set by the caller.
	Tracks bool

	want     int
	Limit    int
	Overflow bool // replies passed limit: they were dropped
	replies  []byte
	ends     []int
	Err      error // set when the connection failed before all replies came
	done     chan struct{}
}

func NewBatch() *Batch { return &Batch{done: make(chan struct{}, 1)} }

// Oversized reports whether the batch holds buffers bigger than a caller
// keeping it from batch to batch should keep (max bytes of replies).
func (b *Batch) Oversized(max int) bool {
	return cap(b.replies) > max || cap(b.ends) > max/8
}

// Reset empties the batch for want replies; a caller that sent nothing (the
// breaker refused) resets it so that no reply is found in it.
func (b *Batch) Reset(want int) {
	b.want = want
	b.replies = b.replies[:0]
	b.ends = b.ends[:0]
	b.Err = nil
	b.Overflow = false
}

// Add keeps one reply, or counts and drops it once the batch holds more
// than its limit; called by whoever reads the connection the batch was
// sent on (a Conn's reader, the proxy's event loop).
func (b *Batch) Add(reply []byte) {
	if !b.Overflow && b.Limit > 0 && len(b.replies)+len(reply) > b.Limit {
		b.Overflow = true
		b.replies = nil // let what the Batch held go now, not when it ends
	}
	if !b.Overflow {
		b.replies = append(b.replies, reply...)
	}
	b.ends = append(b.ends, len(b.replies))
}

// Reply returns the i-th reply of a finished Batch, or nil when the
// connection failed before it arrived or the batch overflowed.
func (b *Batch) Reply(i int) []byte {
	if i >= len(b.ends) || b.Overflow {
		return nil
	}
	start := 0
	if i > 0 {
		start = b.ends[i-1]
	}
	return b.replies[start:b.ends[i]]
}

// Replace puts reply in place of the i-th reply of a finished Batch (a
// redirected command's answer from another node, say); reply must not point
// into b. It does nothing when that reply never arrived or the batch
// overflowed: there is nothing to replace.
func (b *Batch) Replace(i int, reply []byte) {
	if i >= len(b.ends) || b.Overflow {
		return
	}
	start := 0
	if i > 0 {
		start = b.ends[i-1]
	}
	end := b.ends[i]
	b.replies = slices.Replace(b.replies, start, end, reply...)
	for j, delta := i, len(reply)-(end-start); j < len(b.ends); j++ {
		b.ends[j] += delta
	}
}

// Conn is one upstream connection multiplexed between sessions. Requests
// from every session are appended to one write buffer that one writer
// goroutine writes, so concurrent clients share syscalls; one reader
// goroutine hands replies back in FIFO order. A pinned
// Conn is the same thing used by one session only.
type Conn struct {
	cfg     *Config
	key     Key
	timeout time.Duration // see Config.Timeout; 0 on pinned connections

	mu      sync.Mutex
	nc      net.Conn      // nil until dialled, and again after a failure
	pending []*Batch      // batches awaiting replies, in the order sent, from pending[head]
	head    int           // the first of pending still waiting: popping keeps the array
	wbuf    []byte        // bytes not yet written
	spare   []byte        // the other write buffer, swapped with wbuf
	wake    chan struct{} // tells the writer of nc that wbuf has bytes
	dialing bool          // a submitter is dialling nc, without the lock
	closed  bool
	dials   uint64 // connections dialled so far: a new one may be a new server
	sent    uint64 // batches ever submitted, to tell an idle connection
	tracks  bool   // nc carried a Batch with Tracks

	payload payloadCheck // does the server behind nc sanitize RESTORE payloads (restore.go)
}

func NewConn(cfg *Config, key Key) *Conn {
	return &Conn{cfg: cfg, key: key}
}

// RoundTrip sends req (n commands) and waits until all n replies are in b or the
// connection failed. It never retries: a command may have reached Redis.
func (c *Conn) RoundTrip(ctx context.Context, b *Batch, req []byte, n int) error {
	b.Reset(n)
	if n == 0 {
		return nil
	}
	if err := c.submit(ctx, b, req); err != nil {
		b.Err = err
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
		return b.Err
	case <-timeout:
		// Upstream stopped answering: fail everything waiting on this
		// connection (the replies could no longer be matched to requests)
		// and take the batch's result as failLocked left it.
		c.mu.Lock()
		if c.nc != nil {
			c.failLocked(c.nc, &Error{Err: fmt.Errorf("no reply within %s: %w", c.timeout, os.ErrDeadlineExceeded)})
		}
		c.mu.Unlock()
		<-b.done
		return b.Err
	case <-ctx.Done():
		// The batch stays queued; its replies will be discarded into it.
		// The caller must not reuse b.
		return ctx.Err()
	}
}

func (c *Conn) submit(ctx context.Context, b *Batch, req []byte) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return &Error{Err: errors.New("connection closed")}
	}
	if c.nc == nil && !c.dialing {
		// Dial without the lock: the sessions that arrive meanwhile queue
		// their requests behind this one instead of waiting on the mutex
		// for as long as a dial may take.
		c.dialing = true
		c.mu.Unlock()
		nc, err := Dial(ctx, c.cfg, c.key)
		c.mu.Lock()
		c.dialing = false
		if err == nil && c.closed {
			nc.Close()
			err = &Error{Err: errors.New("connection closed")}
		}
		if err != nil {
			c.failQueuedLocked(err)
			c.tracks = false // what was queued for it never went
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
	c.tracks = c.tracks || b.Tracks
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
func (c *Conn) writeLoop(nc net.Conn, wake chan struct{}) {
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
			c.failLocked(nc, &Error{Err: fmt.Errorf("write: %w", err)})
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
	}
}

// readLoop hands replies to batches in the order they were sent.
func (c *Conn) readLoop(nc net.Conn) {
	rd := NewReplyReader(64 << 10)
	var cur *Batch
	for {
		err := rd.Read(nc, func(reply []byte) error {
			if IsRedirectBroken(reply) {
				return nil // not a reply: see IsRedirectBroken
			}
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
			cur.Add(reply)
			if len(cur.ends) == cur.want {
				cur.done <- struct{}{}
				cur = nil
			}
			return nil
		})
		if err != nil {
			c.mu.Lock()
			if cur != nil {
				cur.Err = &Error{Err: fmt.Errorf("read: %w", err)}
				cur.done <- struct{}{}
			}
			c.failLocked(nc, &Error{Err: fmt.Errorf("read: %w", err)})
			c.mu.Unlock()
			return
		}
	}
}

// redirectBroken is how a RESP3 push that Redis sends on a connection in
// CLIENT TRACKING … REDIRECT mode begins, when a key it tracked changed
// and the connection it redirects to is gone.
var redirectBroken = []byte(">2\r\n$21\r\ntracking-redir-broken\r\n")

// IsRedirectBroken says reply is that push: the shared connections that
// fill the read cache get it once its tracking connection is lost. It
// answers no request, so a reader of a shared connection drops it;
// the loss itself is handled by whoever keeps the tracking connection.
func IsRedirectBroken(reply []byte) bool {
	return len(reply) > 0 && reply[0] == '>' && bytes.HasPrefix(reply, redirectBroken)
}

// ReplyReader reads an upstream connection into one buffer and hands out
// each complete RESP reply in it, keeping a partial one for the next read.
type ReplyReader struct {
	buf  []byte
	calm int // reads left, with no big reply, before a grown buffer may shrink
}

// NewReplyReader returns a reader whose buffer starts at size bytes.
func NewReplyReader(size int) ReplyReader { return ReplyReader{buf: make([]byte, 0, size)} }

// Buffered is how many bytes of a partial reply the reader holds.
func (r *ReplyReader) Buffered() int { return len(r.buf) }

// Read reads once and calls each for every complete reply now buffered;
// the reply is only valid during the call. A read, framing or each error
// ends it.
func (r *ReplyReader) Read(nc net.Conn, each func(reply []byte) error) error {
	if len(r.buf) == cap(r.buf) {
		nb := make([]byte, len(r.buf), 2*cap(r.buf))
		copy(nb, r.buf)
		r.buf = nb
	}
	m, readErr := nc.Read(r.buf[len(r.buf):cap(r.buf)])
	r.buf = r.buf[:len(r.buf)+m]
	pos, err := resp.EachReply(r.buf, each)
	if err == nil {
		err = readErr // replies that came with the error were handed out first
	}
	// Keep the unparsed tail at the front. Shrink a grown buffer once big
	// replies have stopped for a while, so that a connection that once
	// carried one does not keep its size for good, while a stream of them
	// (200 pipelined GETs of 2 MiB) does not grow it again from 64 KiB for
	// every reply.
	if cap(r.buf) > 1<<20 {
		if pos > 64<<10 || len(r.buf)-pos > 64<<10 {
			r.calm = 64
		} else if r.calm > 0 {
			r.calm--
		}
	}
	if cap(r.buf) > 1<<20 && r.calm == 0 && len(r.buf)-pos <= 64<<10 {
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
func (c *Conn) failLocked(nc net.Conn, err error) {
	if c.nc != nc {
		return
	}
	nc.Close()
	c.nc = nil
	close(c.wake)
	c.wake = nil
	c.failQueuedLocked(err)
	if c.tracks {
		c.tracks = false
		if c.cfg.TrackingLost != nil {
			c.cfg.TrackingLost()
		}
	}
}

// failQueuedLocked fails the batches queued while a dial that failed was
// under way.
func (c *Conn) failQueuedLocked(err error) {
	c.wbuf = c.wbuf[:0]
	for i, b := range c.pending[c.head:] {
		b.Err = err
		b.done <- struct{}{}
		c.pending[c.head+i] = nil
	}
	c.pending, c.head = c.pending[:0], 0
}

// waiting is the number of batches awaiting replies; c.mu held.
func (c *Conn) waiting() int { return len(c.pending) - c.head }

// Close shuts the connection; waiting batches fail.
func (c *Conn) Close() {
	c.mu.Lock()
	c.closed = true
	if c.nc != nil {
		c.failLocked(c.nc, &Error{Err: errors.New("connection closed")})
	}
	c.mu.Unlock()
}

// Idle reports whether no batch is waiting on the connection.
func (c *Conn) Idle() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.waiting() == 0 && !c.closed
}
