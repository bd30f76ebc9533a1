//go:build linux

package proxy

import (
	"context"
	"net"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/keyfence/keyfence/fallback"
	"github.com/keyfence/keyfence/rewrite"
	"github.com/keyfence/keyfence/upstream"
)

// loopConn is the loop's state of one session it serves.
type loopConn struct {
	loop   *eventLoop
	s      *session
	fd     int
	ctx    context.Context
	serve  func() // the rest of the session's life, on a goroutine of its own
	finish func() // the end of a session that ends in the loop (after s.cleanup)

	up       *loopUpstream // where its batch went
	left     int           // replies its batch still waits for; > 0: in flight
	sentAt   time.Time     // when its batch went upstream, for Config.Upstream.Timeout
	t0       time.Time     // beginSend's, for the metrics
	ticket   fallback.Ticket
	guarded  bool     // the batch holds a breaker ticket
	retries  int      // times a batch of reads that timed out was sent again
	written  int      // bytes of s.out already written
	blocked  bool     // the client's socket is full: wait for it to drain
	sending  bool     // s.out[written:] is to be sent at the turn's end (sendQueued): hands off s.out until then
	ahead    loopRead // what the turn's exchange read for it
	readable bool     // bytes may be waiting on the socket
	release  bool     // leave the loop as soon as nothing is in flight
	gone     bool     // the client went away, or writing to it failed
	queued   bool     // in loop.ready
	over     bool     // ended or handed off: the loop has nothing more to do with it
}

// loopRead is a read made ahead of the client's turn: into buf, n bytes
// or err (n == 0 and err == nil: the client closed).
type loopRead struct {
	buf []byte
	n   int
	err error
}

// loopReadSize is how much one read of a client may bring, as a
// goroutine's session reads: one read's commands make one batch, and that
// keeps a pipeline of large replies (COMMAND, HGETALL of big hashes) from
// passing the output hard limit in one batch. A partial request left over
// is kept in a buffer of this size.
const loopReadSize = initialReadBuffer

// progress moves one client on as far as it may go this turn: its replies
// written, then its next batch read and sent, or its end.
func (l *eventLoop) progress(lc *loopConn) {
	s := lc.s
	for !lc.over {
		if !l.writeClient(lc) || lc.left > 0 {
			return // the socket is full, or a batch is in flight
		}
		switch {
		case lc.gone || s.quit:
			l.end(lc)
			return
		case lc.release:
			l.handoff(lc)
			return
		case s.more:
			// The soft output limit stopped the last batch: its
			// replies are out now, the rest of the commands are due.
		case lc.readable:
			if !l.readClient(lc) {
				continue
			}
		default:
			return
		}
		s.readAt = l.now
		s.srv.stats.reads.Add(1)
		s.handleBuffered(lc.ctx)
		l.keepLeftover(lc)
		l.submit(lc)
		if lc.left == 0 {
			l.schedule(lc) // not waiting on upstream: whatever else is due, next turn
		}
		return
	}
}

// readClient reads what the client sent into s.rbuf: the loop's scratch
// when nothing is left over, else after the leftover in its own buffer.
// A read the turn made ahead (exchange) is taken instead of a new one.
// false: nothing was read (the socket is drained, or the client went).
func (l *eventLoop) readClient(lc *loopConn) bool {
	s := lc.s
	buf, n, err := lc.ahead.buf, lc.ahead.n, lc.ahead.err
	lc.ahead = loopRead{}
	if buf == nil {
		if buf = l.readBuffer(lc, l.scratch[:loopReadSize]); buf == nil {
			return false
		}
		n, err = rawRead(lc.fd, buf)
	}
	switch {
	case n > 0:
		if n < len(buf) {
			lc.readable = false // drained: the next bytes bring an edge
		}
		if len(s.rbuf) > 0 {
			s.rbuf = s.rbuf[:len(s.rbuf)+n]
		} else {
			s.rbuf = buf[:n]
		}
		s.rpos = 0
		return true
	case err == unix.EAGAIN:
		lc.readable = false
	case err == unix.EINTR:
	default:
		lc.gone = true // closed (n == 0) or reset
	}
	return false
}

// readBuffer is where lc's next read goes: scratch when nothing is left
// over, else the room after the leftover in the session's own buffer.
// nil: the leftover fills that buffer (a request bigger than the loop
// keeps), and the session goes to a goroutine, which reads it within the
// server's request budget.
func (l *eventLoop) readBuffer(lc *loopConn, scratch []byte) []byte {
	s := lc.s
	if len(s.rbuf) == 0 {
		return scratch
	}
	if len(s.rbuf) == cap(s.rbuf) {
		lc.release = true
		return nil
	}
	return s.rbuf[len(s.rbuf):cap(s.rbuf)]
}

// inScratch says whether b is in the loop's scratch, which the next turn
// reads into again.
func (l *eventLoop) inScratch(b []byte) bool {
	p, start := uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(unsafe.Pointer(unsafe.SliceData(l.scratch)))
	return p >= start && p < start+uintptr(len(l.scratch))
}

// keepLeftover copies a partial request out of the scratch buffer, or
// compacts the session's own buffer, so that the next read appends to it.
func (l *eventLoop) keepLeftover(lc *loopConn) {
	s := lc.s
	rest := s.rbuf[s.rpos:]
	switch {
	case s.more:
		// Whole commands wait for the client to read its replies: keep them.
		if l.inScratch(s.rbuf) {
			s.rbuf = append(make([]byte, 0, max(len(rest), initialReadBuffer)), rest...)
			s.rpos = 0
		}
	case len(rest) == 0:
		s.rbuf, s.rpos = nil, 0
	case len(rest) > initialReadBuffer || lc.release:
		// To the session's goroutine, which owns buffers this size.
		s.rbuf = append([]byte(nil), rest...)
		s.rpos = 0
		lc.release = true
	case l.inScratch(s.rbuf):
		s.rbuf = append(make([]byte, 0, initialReadBuffer), rest...)
		s.rpos = 0
	default:
		s.rbuf = s.rbuf[:copy(s.rbuf, rest)]
		s.rpos = 0
	}
}

// loopServes says whether the loop serves args (cmd, their table entry)
// for s: anything that needs a connection of its own, a change of session
// state, or a wait belongs to the session's goroutine.
func (s *session) loopServes(cmd *rewrite.Command, args [][]byte) bool {
	if s.txn != txNone || s.pinned != nil || s.sub != nil || !s.authed || s.replyMode != replyOn || s.closing.Load() {
		return false
	}
	if cmd == nil || s.check(cmd, args) != "" {
		return true // an error reply
	}
	switch cmd.Policy {
	case rewrite.PolicyKeyed:
		return !cmd.HasFlag(rewrite.FlagBlocking) && !cmd.LoadsPayload && cmd.Name != "watch" && !needsSortEmulation(cmd, args)
	case rewrite.PolicyEmulated:
		switch cmd.Name {
		case "ping", "echo", "client|id", "client|setname", "client|getname", "client|setinfo":
			return true // answered here
		case "hello":
			// A change of protocol flushes the batch so far first, which
			// only a goroutine may wait for: HELLO opening a batch is what
			// clients send (go-redis's first command).
			return len(s.slots) == 0
		}
	case rewrite.PolicyDenied:
		return true // a refusal
	}
	return false
}

// submit sends the batch handleBuffered built, or finishes it at once when
// it holds only local replies or the breaker refuses it.
func (l *eventLoop) submit(lc *loopConn) {
	s := lc.s
	switch {
	case len(s.slots) == 0:
		return
	case s.nreq == 0:
		l.complete(lc, nil)
		return
	}
	lc.t0 = s.beginSend()
	s.b.Reset(s.nreq)
	if res := l.srv.res; res != nil {
		t, err := res.breaker.Allow()
		if err != nil {
			l.complete(lc, err) // nothing was sent
			return
		}
		lc.ticket, lc.guarded = t, true
	}
	lc.retries = 0
	key := upstream.Key{DB: s.db, RESP3: s.resp3}
	ups := l.ups[key]
	if ups == nil {
		ups = make([]*loopUpstream, l.srv.cfg.SharedConns)
		for i := range ups {
			ups[i] = &loopUpstream{key: key, fd: -1}
		}
		l.ups[key] = ups
	}
	l.send(ups[lc.fd%len(ups)], lc) // a client keeps to one: its batches stay in order
}

// complete finishes lc's batch: err is what cost it its missing replies.
func (l *eventLoop) complete(lc *loopConn, err error) {
	s := lc.s
	lc.left = 0
	if lc.guarded {
		lc.guarded = false
		l.srv.res.breaker.Done(lc.ticket, !upstream.IsConnectionFailure(err))
	}
	if s.nreq > 0 {
		s.endSend(lc.ctx, err, lc.t0)
	}
	_ = s.finishBatch(lc.ctx, err)
	l.schedule(lc)
}

// writeClient writes what is due to the client, or queues it for the
// turn's one submission to the ring (sendQueued); false: some is left for
// when its socket drains, or for the submission.
func (l *eventLoop) writeClient(lc *loopConn) bool {
	s := lc.s
	if lc.sending {
		return false // s.out is the ring's until its send is done
	}
	if lc.gone {
		s.out, lc.written = s.out[:0], 0
		return true
	}
	if lc.blocked {
		return false
	}
	if lc.written < len(s.out) && l.queueSend(lc) {
		return false
	}
	return l.writeNow(lc)
}

// writeNow writes what is due to the client with write(2); false: its
// socket is full.
func (l *eventLoop) writeNow(lc *loopConn) bool {
	s := lc.s
	for lc.written < len(s.out) {
		n, err := rawWrite(lc.fd, s.out[lc.written:])
		if n > 0 {
			lc.written += n
			s.srv.stats.netOut.Add(int64(n))
			continue
		}
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			lc.blocked = true
			return false
		}
		s.wErr, s.quit, lc.gone = err, true, true
		lc.written = len(s.out)
	}
	l.wroteAll(lc)
	return true
}

// wroteAll empties the client's output once all of it is written.
func (l *eventLoop) wroteAll(lc *loopConn) {
	s := lc.s
	if lc.written > 0 {
		s.srv.stats.writes.Add(1)
	}
	s.out, lc.written = s.out[:0], 0
	if cap(s.out) > maxKeptBuffer {
		s.out = nil
	}
}

// end ends a session in the loop: the client left, quit, or a write failed.
func (l *eventLoop) end(lc *loopConn) {
	l.forget(lc)
	if s := lc.s; s.protoErr && s.wErr == nil {
		// As a goroutine session does (lingerClose), on a goroutine of
		// its own: the client may still be sending.
		if nc, err := fileConn(lc.fd); err == nil {
			go func() {
				lingerClose(nc)
				s.cleanup()
				lc.finish()
			}()
			return
		}
	} else {
		unix.Close(lc.fd)
	}
	lc.s.cleanup()
	lc.finish()
}

// handoff gives the session a net.Conn and a goroutine of its own, with
// the commands the loop left in its buffer.
func (l *eventLoop) handoff(lc *loopConn) {
	s := lc.s
	l.forget(lc)
	nc, err := fileConn(lc.fd)
	if err != nil {
		s.srv.log.Warn("client disconnected: the event loop could not hand it to a goroutine", "client_id", s.id, "addr", s.remoteAddr.String(), "err", err)
		s.cleanup()
		lc.finish()
		return
	}
	s.srv.mu.Lock()
	s.nc, s.raw, s.lc = nc, syscallConn(nc), nil
	s.srv.mu.Unlock()
	s.more = s.rpos < len(s.rbuf)
	go lc.serve()
}

// fileConn makes the loop's descriptor fd a net.Conn, in Go's poller, and
// closes fd (the net.Conn holds a duplicate); fd is closed on error too.
func fileConn(fd int) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "client")
	defer f.Close()
	return net.FileConn(f)
}

// forget stops watching lc's socket.
func (l *eventLoop) forget(lc *loopConn) {
	lc.over = true
	_ = unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, lc.fd, nil)
	delete(l.conns, lc.fd)
}
