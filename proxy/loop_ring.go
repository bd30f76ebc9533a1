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

// queueSend holds what is due to lc for the turn's end, to be sent with
// the other clients' replies; false: there is no ring.
func (l *eventLoop) queueSend(lc *loopConn) bool {
	if l.ring == nil {
		return false
	}
	l.toSend = append(l.toSend, lc)
	lc.sending = true
	return true
}

// sendQueued sends what the turn's clients are due: in one submission to
// the ring, or with write(2) when there is one client only (a submission
// of one costs more than the write). A ring that fails is given up for
// write(2).
func (l *eventLoop) sendQueued() {
	if len(l.toSend) == 0 {
		return
	}
	if len(l.toSend) > 1 && l.ring != nil {
		for i, lc := range l.toSend {
			l.sendTag++
			if !l.ring.Send(lc.fd, lc.s.out[lc.written:], l.sendTag) {
				break // full: the rest with write(2), below
			}
			l.sending[l.sendTag] = lc
			l.toSend[i] = nil
		}
		if err := l.ring.Submit(); err != nil {
			l.dropRing(err)
			for tag, lc := range l.sending {
				delete(l.sending, tag)
				lc.sending = false
				l.schedule(lc) // written next turn
			}
		} else {
			l.takeSends()
		}
	}
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

// takeSends acts on every send the ring has finished, as writeClient does
// on a write(2)'s result.
func (l *eventLoop) takeSends() {
	l.ring.Completions(func(tag uint64, res int32) {
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

// readAhead reads, in one submission, every client of clients that its
// progress this turn will read (willRead), each into a slot of the loop's
// scratch after the first (which readClient's own reads use) or after its
// leftover; readClient takes the result.
func (l *eventLoop) readAhead(clients []*loopConn) {
	if l.ring == nil {
		return
	}
	n := 0
	for _, lc := range clients {
		if l.willRead(lc) {
			n++
		}
	}
	if n < 2 {
		return // one read(2) costs less than a submission of one
	}
	n = min(n, loopRingSize)
	if need := (n + 1) * loopReadSize; len(l.scratch) < need {
		// No session keeps a slice of the scratch past its turn (keepLeftover).
		l.scratch = make([]byte, need)
	}
	l.aheadOf = l.aheadOf[:0]
	slot := 1
	for _, lc := range clients {
		if len(l.aheadOf) == n {
			break
		}
		if !l.willRead(lc) {
			continue
		}
		buf := l.readBuffer(lc, l.scratch[slot*loopReadSize:(slot+1)*loopReadSize])
		if buf == nil {
			continue // released: progress hands it off
		}
		if len(lc.s.rbuf) == 0 {
			slot++
		}
		if !l.ring.Recv(lc.fd, buf, uint64(len(l.aheadOf))) {
			break
		}
		lc.ahead = loopRead{buf: buf}
		l.aheadOf = append(l.aheadOf, lc)
	}
	if err := l.ring.Submit(); err != nil {
		for _, lc := range l.aheadOf {
			lc.ahead = loopRead{} // read by readClient instead
		}
		l.dropRing(err)
		return
	}
	l.ring.Completions(func(tag uint64, res int32) {
		if tag >= uint64(len(l.aheadOf)) {
			return
		}
		a := &l.aheadOf[tag].ahead
		if res >= 0 {
			a.n = int(res)
		} else {
			a.err = syscall.Errno(-res)
		}
	})
	if l.ring.Pending() > 0 {
		// A receive the kernel did not finish may still write into the
		// scratch: leave it to the ring (dropped) and read elsewhere.
		l.scratch = make([]byte, len(l.scratch))
		for _, lc := range l.aheadOf {
			lc.ahead = loopRead{}
		}
		l.dropRing(errors.New("a receive did not complete during its submission"))
	}
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
