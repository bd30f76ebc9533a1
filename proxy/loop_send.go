//go:build linux

package proxy

import (
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/keyfence/keyfence/internal/uring"
)

// loopRingSize bounds the sends one submission carries; a turn that
// writes to more clients writes to the rest with write(2).
const loopRingSize = 256

// newRing sets up the loop's ring, or returns nil (write(2) then) where
// io_uring cannot be used: an old kernel, a seccomp profile (Docker's
// default forbids it), kernel.io_uring_disabled.
func (l *eventLoop) newRing() *uring.Ring {
	r, err := uring.New(loopRingSize)
	if err != nil {
		l.srv.log.Info("event loop: writing to clients one write(2) at a time", "reason", err)
		return nil
	}
	if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, r.Fd(), &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: int32(r.Fd())}); err != nil {
		r.Close()
		l.srv.log.Info("event loop: writing to clients one write(2) at a time", "reason", err)
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
			l.srv.log.Warn("event loop: io_uring failed; writing to clients one write(2) at a time from now on", "err", err)
			l.ring.Close()
			l.ring = nil
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
