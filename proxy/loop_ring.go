//go:build linux

package proxy

import (
	"errors"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/keyfence/keyfence/internal/uring"
)

// loopRingSize bounds the operations one submission carries; a turn that
// writes to (or reads) more clients does the rest with write(2) (read(2)).
const loopRingSize = 256

// newRing sets up the loop's ring, or returns nil (write(2) then) where
// io_uring cannot be used: an old kernel, a seccomp profile (Docker's
// default forbids it), kernel.io_uring_disabled.
func (l *eventLoop) newRing() *uring.Ring {
	r, err := uring.New(loopRingSize)
	if err != nil {
		l.srv.log.Info("event loop: reading and writing clients one system call at a time", "reason", err)
		return nil
	}
	if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, r.Fd(), &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: int32(r.Fd())}); err != nil {
		r.Close()
		l.srv.log.Info("event loop: reading and writing clients one system call at a time", "reason", err)
		return nil
	}
	return r
}

// queueSend holds what is due to lc for the turn's submission, to be sent
// with the other clients' replies; false: there is no ring.
func (l *eventLoop) queueSend(lc *loopConn) bool {
	if l.ring == nil {
		return false
	}
	l.toSend = append(l.toSend, lc)
	lc.sending = true
	return true
}

// readTag marks a read's tag (its index in aheadOf) apart from a send's.
const readTag = 1 << 63

// exchange is the turn's one submission: the replies queued so far
// (queueSend) and a read of every client of clients that its progress this
// turn will read (willRead), each into a slot of the loop's scratch after
// the first (which readClient's own reads use) or after its leftover;
// readClient takes the result. With one operation or none, a write(2) (or
// the read(2) progress makes) costs less than a submission.
func (l *eventLoop) exchange(clients []*loopConn) {
	reads := 0
	if l.ring != nil {
		for _, lc := range clients {
			if l.willRead(lc) {
				reads++
			}
		}
	}
	if l.ring != nil && len(l.toSend)+reads > 1 {
		l.queueSends()
		l.queueReads(clients, min(reads, loopRingSize))
		l.submitRing()
	}
	l.writeLeft()
}

// sendQueued sends the replies queued since the turn's submission (a batch
// answered at once makes some): in one submission, or with write(2) when
// there is one.
func (l *eventLoop) sendQueued() {
	if l.ring != nil && len(l.toSend) > 1 {
		l.queueSends()
		l.submitRing()
	}
	l.writeLeft()
}

// queueSends moves what it can of toSend into the ring; the rest (the ring
// is full) stays for writeLeft.
func (l *eventLoop) queueSends() {
	for i, lc := range l.toSend {
		l.sendTag = (l.sendTag + 1) &^ readTag
		if !l.ring.Send(lc.fd, lc.s.out[lc.written:], l.sendTag) {
			return
		}
		l.sending[l.sendTag] = lc
		l.toSend[i] = nil
	}
}

// queueReads queues up to n reads of the clients that will read.
func (l *eventLoop) queueReads(clients []*loopConn, n int) {
	if n == 0 {
		return
	}
	if need := (n + 1) * loopReadSize; len(l.scratch) < need {
		// No session keeps a slice of the scratch past its turn (keepLeftover).
		l.scratch = make([]byte, need)
	}
	slot := 1
	for _, lc := range clients {
		if len(l.aheadOf) == n {
			return
		}
		if !l.willRead(lc) {
			continue
		}
		buf := l.readBuffer(lc, l.scratch[slot*loopReadSize:(slot+1)*loopReadSize])
		if buf == nil {
			continue // released: progress hands it off
		}
		if !l.ring.Recv(lc.fd, buf, readTag|uint64(len(l.aheadOf))) {
			return // full: progress reads the rest itself
		}
		if len(lc.s.rbuf) == 0 {
			slot++
		}
		lc.ahead = loopRead{buf: buf}
		l.aheadOf = append(l.aheadOf, lc)
	}
}

// submitRing hands what is queued to the kernel and acts on what completed. A
// ring that fails is given up: its sends are made next turn, its reads by
// progress.
func (l *eventLoop) submitRing() {
	if err := l.ring.Submit(); err != nil {
		for tag, lc := range l.sending {
			delete(l.sending, tag)
			lc.sending = false
			l.schedule(lc)
		}
		for _, lc := range l.aheadOf {
			lc.ahead = loopRead{}
		}
		l.dropRing(err)
		return
	}
	l.aheadDone = 0
	l.takeCompletions()
	if l.aheadDone < len(l.aheadOf) {
		// A receive the kernel did not finish may still write into the
		// scratch: leave that to the ring, given up, and read elsewhere.
		l.scratch = make([]byte, len(l.scratch))
		for _, lc := range l.aheadOf {
			lc.ahead = loopRead{}
		}
		l.dropRing(errors.New("a receive did not complete during its submission"))
	}
}

// writeLeft writes with write(2) what is queued and not in the ring.
func (l *eventLoop) writeLeft() {
	for _, lc := range l.toSend {
		if lc != nil {
			lc.sending = false
			if l.writeNow(lc) {
				l.sent(lc)
			}
		}
	}
	clear(l.toSend)
	l.toSend = l.toSend[:0]
}

// takeCompletions acts on every operation the ring has finished: a read's
// result waits for readClient; a send's is taken as writeClient takes a
// write(2)'s.
func (l *eventLoop) takeCompletions() {
	l.ring.Completions(func(tag uint64, res int32) {
		if tag&readTag != 0 {
			if i := int(tag &^ readTag); i < len(l.aheadOf) {
				a := &l.aheadOf[i].ahead
				if res >= 0 {
					a.n = int(res)
				} else {
					a.err = syscall.Errno(-res)
				}
				l.aheadDone++
			}
			return
		}
		lc := l.sending[tag]
		if lc == nil {
			return
		}
		delete(l.sending, tag)
		lc.sending = false
		s := lc.s
		switch {
		case res > 0:
			lc.written += int(res)
			s.srv.stats.netOut.Add(int64(res))
			if lc.written < len(s.out) {
				l.schedule(lc) // a short send: the rest next turn, or EAGAIN
				return
			}
			l.wroteAll(lc)
		case res == -int32(syscall.EAGAIN):
			lc.blocked = true // EPOLLOUT moves it on
			return
		case res == -int32(syscall.EINTR) || res == 0:
			l.schedule(lc)
			return
		default:
			s.wErr, s.quit, lc.gone = syscall.Errno(-res), true, true
			s.out, lc.written = s.out[:0], 0
		}
		l.sent(lc)
	})
}

// sent moves lc on once its output is written: only if it has more to do
// than wait for its next request (its socket's edge brings that).
func (l *eventLoop) sent(lc *loopConn) {
	if lc.readable || lc.gone || lc.release || lc.s.more || lc.s.quit {
		l.schedule(lc)
	}
}

// dropRing gives the ring up after it failed: the loop reads and writes
// with read(2) and write(2) from now on.
func (l *eventLoop) dropRing(err error) {
	l.srv.log.Warn("event loop: io_uring failed; reading and writing clients one system call at a time from now on", "err", err)
	l.ring.Close()
	l.ring = nil
}

// willRead says whether progress will read lc this turn (in that order:
// nothing left to write, no batch in flight, not ending, handed off or
// held back by the soft output limit, and bytes may be waiting).
func (l *eventLoop) willRead(lc *loopConn) bool {
	s := lc.s
	return !lc.over && !lc.sending && !lc.blocked && lc.written >= len(s.out) && lc.left == 0 &&
		!lc.gone && !s.quit && !lc.release && !s.more && lc.readable
}

// keepAhead makes a read made ahead that progress did not take (it takes
// every one: willRead is its own order) the session's own, so that the
// next turn's reads into the scratch cannot overwrite it.
func (l *eventLoop) keepAhead() {
	for i, lc := range l.aheadOf {
		if a := &lc.ahead; a.buf != nil && l.inScratch(a.buf) {
			a.buf = append(make([]byte, 0, loopReadSize), a.buf[:a.n]...)[:a.n:loopReadSize]
		}
		l.aheadOf[i] = nil
	}
	l.aheadOf = l.aheadOf[:0]
}
