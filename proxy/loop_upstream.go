//go:build linux

package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keyfence/keyfence/resp"
	"github.com/keyfence/keyfence/upstream"
)

// loopReader is a connection the loop only reads, handing each message to
// handle: the read cache's tracking connection (Server.trackOnce).
type loopReader struct {
	fd     int
	in     []byte
	handle func(reply []byte) error
	done   chan error // its end, once
}

// loopUpstream is one of the loop's own upstream connections, shared by its
// sessions of one database and protocol as a Conn is by goroutine sessions.
type loopUpstream struct {
	key     upstream.Key
	fd      int // -1 while there is none
	dialing bool
	out     []byte // requests not written yet
	in      []byte // replies read, not yet complete
	fifo    []*loopConn
	head    int
	sentTo  int       // fifo[head:sentTo] went upstream and await replies
	unsent  bool      // the last write left bytes of them in out
	tracks  bool      // fd carried a batch with upstream.Batch.Tracks
	wroteAt time.Time // the turn of the last write: awaitingReplies
}

// writeDue says whether the turn's requests for up go upstream now, and
// counts them as sent if so. They wait while a batch written earlier has
// not been answered (unless they reach holdUpstreamBytes): Redis would
// only queue them behind it, and written together with the next turn's
// once its replies come, they cost Redis one read and one write instead of
// two of each. At pipeline 1 that cut keyfence's CPU per SET by about a
// tenth (bench/results/designs.md). Bytes a full socket left unwritten
// always go on, or the batch they belong to would never be answered.
func (up *loopUpstream) writeDue() bool {
	if up.fd < 0 || len(up.out) == 0 {
		return false
	}
	if up.head < up.sentTo && !up.unsent && len(up.out) < holdUpstreamBytes {
		return false
	}
	up.sentTo = len(up.fifo)
	return true
}

const holdUpstreamBytes = 16 << 10

// send queues lc's batch for up's next write.
func (l *eventLoop) send(up *loopUpstream, lc *loopConn) {
	lc.up, lc.left = up, lc.s.nreq
	if l.srv.cfg.Upstream.Timeout > 0 {
		lc.sentAt = l.now // only the timeout reads it
	}
	up.out = append(up.out, lc.s.req...)
	up.fifo = append(up.fifo, lc)
	up.tracks = up.tracks || lc.s.b.Tracks
	if up.fd < 0 && !up.dialing {
		l.dial(up)
	}
}

// dial connects up on a goroutine; its batches queue meanwhile.
func (l *eventLoop) dial(up *loopUpstream) {
	up.dialing = true
	cfg, key := &l.srv.cfg.Upstream, up.key
	go func() {
		nc, err := upstream.Dial(l.ctx, cfg, key)
		if !l.post(func(in *loopInbox) { in.dialed = append(in.dialed, loopDial{up, nc, err}) }) && nc != nil {
			nc.Close()
		}
	}()
}

func (l *eventLoop) dialed(d loopDial) {
	up := d.up
	up.dialing = false
	if d.err != nil {
		l.failUpstream(up, d.err)
		return
	}
	sc, ok := d.nc.(syscall.Conn)
	var fd int
	var err error
	if !ok {
		err = errors.New("not a socket")
	} else {
		fd, err = dupDescriptor(sc)
	}
	d.nc.Close()
	if err == nil {
		err = unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(fd)})
		if err != nil {
			unix.Close(fd)
		}
	}
	if err != nil {
		l.failUpstream(up, &upstream.Error{Err: fmt.Errorf("event loop: %w", err)})
		return
	}
	up.fd = fd
	l.upByFd[fd] = up
}

// writeUpstream writes the turn's requests in one write; what the socket
// does not take waits for its next edge.
func (l *eventLoop) writeUpstream(up *loopUpstream) {
	up.wroteAt = l.now
	for up.fd >= 0 && len(up.out) > 0 {
		n, err := rawWrite(up.fd, up.out)
		if n > 0 {
			up.out = up.out[:copy(up.out, up.out[n:])]
			continue
		}
		switch err {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			up.unsent = true
			return
		}
		l.failUpstream(up, &upstream.Error{Err: err})
		return
	}
	up.unsent = len(up.out) > 0
	if cap(up.out) > maxKeptBuffer && len(up.out) == 0 {
		up.out = nil
	}
}

// readUpstream reads every reply upstream has sent and completes the
// batches they finish, in the order they were sent.
func (l *eventLoop) readUpstream(up *loopUpstream) {
	for up.fd >= 0 {
		read, more, err := readSome(up.fd, &up.in)
		if err != nil {
			l.failUpstream(up, err)
		}
		if !read || !l.takeReplies(up) || !more {
			return
		}
	}
}

// readSome appends what one read of fd brings to *buf, grown first when
// nearly full. read: it brought something; more: it filled the room it had,
// so another read may bring more. A read that did not fill it emptied the
// socket: the next bytes bring a new edge, and reading on to EAGAIN would
// cost a system call a turn for nothing (as readClient does). err: the
// connection failed.
func readSome(fd int, buf *[]byte) (read, more bool, err error) {
	b := *buf
	if cap(b)-len(b) < 1<<10 {
		b = append(b, make([]byte, max(loopReadSize, cap(b)))...)[:len(b)]
	}
	for {
		room := b[len(b):cap(b)]
		n, err := rawRead(fd, room)
		switch {
		case n > 0:
			*buf = b[:len(b)+n]
			return true, n == len(room), nil
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			*buf = b
			return false, false, nil
		case err == nil:
			err = errors.New("connection closed by upstream")
		}
		*buf = b
		return false, false, &upstream.Error{Err: err}
	}
}

// takeReplies hands every complete reply in up.in to its batch; false: the
// connection failed.
func (l *eventLoop) takeReplies(up *loopUpstream) bool {
	p, err := resp.EachReply(up.in, func(reply []byte) error {
		if upstream.IsRedirectBroken(reply) {
			return nil // not a reply: see upstream.IsRedirectBroken
		}
		if up.head == len(up.fifo) {
			return errors.New("a reply nobody asked for")
		}
		lc := up.fifo[up.head]
		lc.s.b.Add(reply)
		if lc.left--; lc.left == 0 {
			up.fifo[up.head] = nil
			up.head++
			l.complete(lc, nil)
		}
		return nil
	})
	if err != nil {
		l.failUpstream(up, &upstream.Error{Err: err})
		return false
	}
	up.in = up.in[:copy(up.in, up.in[p:])]
	if up.head == len(up.fifo) {
		up.fifo, up.head, up.sentTo = up.fifo[:0], 0, 0
	}
	if len(up.in) == 0 && cap(up.in) > maxKeptBuffer {
		up.in = nil
	}
	return true
}

// checkTimeout fails the connection when its oldest batch has waited past
// Config.Upstream.Timeout, as a Conn does.
func (l *eventLoop) checkTimeout(up *loopUpstream) {
	timeout := l.srv.cfg.Upstream.Timeout
	if timeout <= 0 || up.fd < 0 || up.head == len(up.fifo) {
		return
	}
	if time.Since(up.fifo[up.head].sentAt) >= timeout {
		l.failUpstream(up, &upstream.Error{Err: fmt.Errorf("no reply within %s: %w", timeout, os.ErrDeadlineExceeded)})
	}
}

// failUpstream closes the upstream connection and fails every batch on it
// with err: their replies can no longer be matched to requests. A batch of
// reads that timed out is sent again on a new connection, twice at most
// (upstream.RetryReads's rule); a write never is.
func (l *eventLoop) failUpstream(up *loopUpstream, err error) {
	l.closeUpstream(up)
	fifo := up.fifo[up.head:]
	up.fifo, up.head, up.sentTo = nil, 0, 0
	up.out, up.in = up.out[:0], up.in[:0]
	for _, lc := range fifo {
		if s := lc.s; lc.retries < readRetries && upstream.MayRetry(s.b, err) {
			lc.retries++
			s.b.Reset(s.nreq)
			l.send(up, lc)
			continue
		}
		lc.s.b.Err = err
		l.complete(lc, err)
	}
}

func (l *eventLoop) closeUpstream(up *loopUpstream) {
	if up.tracks && up.fd >= 0 {
		if lost := l.srv.cfg.Upstream.TrackingLost; lost != nil {
			lost()
		}
	}
	up.tracks = false
	if up.fd >= 0 {
		_ = unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, up.fd, nil)
		unix.Close(up.fd)
		delete(l.upByFd, up.fd)
		up.fd = -1
	}
}

// track reads nc's messages on the loop, handing each to handle, until the
// connection fails or ctx ends; it returns why. nc must hold no partial
// message in a reader of its own.
func (l *eventLoop) track(ctx context.Context, nc net.Conn, handle func(reply []byte) error) error {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return errors.New("event loop: not a socket")
	}
	fd, err := dupDescriptor(sc)
	if err != nil {
		return fmt.Errorf("event loop: %w", err)
	}
	nc.Close()
	r := &loopReader{fd: fd, handle: handle, done: make(chan error, 1)}
	if !l.post(func(in *loopInbox) { in.readers = append(in.readers, r) }) {
		unix.Close(fd)
		return errors.New("the event loop stopped")
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		if !l.post(func(in *loopInbox) { in.unread = append(in.unread, r) }) {
			return ctx.Err() // the loop stopped: it closed the connection
		}
		<-r.done
		return ctx.Err()
	}
}

// read reads everything r's socket holds and hands out each message.
func (l *eventLoop) read(r *loopReader) {
	for more := true; more; {
		var read bool
		var err error
		read, more, err = readSome(r.fd, &r.in)
		if err != nil {
			l.endReader(r, err)
		}
		if !read {
			return
		}
		p, err := resp.EachReply(r.in, r.handle)
		if err != nil {
			l.endReader(r, err)
			return
		}
		r.in = r.in[:copy(r.in, r.in[p:])]
		if len(r.in) == 0 && cap(r.in) > maxKeptBuffer {
			r.in = nil
		}
	}
}

func (l *eventLoop) endReader(r *loopReader, err error) {
	_ = unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, r.fd, nil)
	unix.Close(r.fd)
	delete(l.readers, r.fd)
	r.done <- err
}
