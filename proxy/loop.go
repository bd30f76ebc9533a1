//go:build linux

package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/keyfence/keyfence/internal/uring"
	"github.com/keyfence/keyfence/upstream"
)

// eventLoop serves a sidecar's sessions on one goroutine over epoll for as
// long as each asks for nothing but keyed commands on the shared upstream
// connection and local replies: the traffic most applications send, one
// command at a time. Each turn reads every client that sent something,
// sends all their requests upstream in one write (or, while a batch
// written earlier is unanswered, with the next turn's: writeDue), and
// writes each batch's replies back when the last one arrives. A request
// costs one read and one write on the client's socket, the upstream ones
// shared, as in twemproxy; a goroutine per client costs a read more (Go's
// poller must try a read before it parks) and two goroutine switches.
//
// It serves RESP2 and RESP3 (HELLO opening a batch, CLIENT SETNAME and
// SETINFO are answered here, so go-redis's handshake stays on the loop),
// with one upstream connection per database and protocol
// (loop_upstream.go); loop_client.go is the client side.
//
// The first command the loop does not serve (MULTI, WATCH, a blocking pop,
// SUBSCRIBE, SELECT, a script, a request over 4 KiB…) hands the session to
// a goroutine of its own, for good, with the bytes it had not handled yet;
// so does a drain. The sockets the loop serves are not in Go's poller:
// there every event would wake the runtime's poller as well, for no
// goroutine (bench/results/designs.md).
type eventLoop struct {
	srv  *Server
	ep   int // the epoll descriptor
	wake int // an eventfd: something was posted to the inbox

	mu     sync.Mutex // guards the inbox and closed
	inbox  loopInbox
	closed bool               // the loop has stopped: nothing may be posted
	stop   context.CancelFunc // ends the dials; the loop ends once the inbox says stopped
	ctx    context.Context
	done   chan struct{}

	conns   map[int]*loopConn // by client descriptor
	ready   []*loopConn       // clients that may make progress this turn
	spare   []*loopConn       // ready's other buffer
	events  [256]unix.EpollEvent
	scratch []byte                           // what reads of clients bring, handled in place: readClient's first, then exchange's slots
	now     time.Time                        // when this turn's events came: one clock reading a turn
	ups     map[upstream.Key][]*loopUpstream // Config.SharedConns connections per database and protocol the sessions use
	upByFd  map[int]*loopUpstream
	readers map[int]*loopReader // the read cache's tracking connection, by descriptor

	// ring sends each turn's replies to its clients in one system call
	// (writeClient queues, sendQueued submits); nil: one write(2) a client,
	// when io_uring cannot be used or Config.NoIOURing.
	ring      *uring.Ring
	toSend    []*loopConn          // clients with output due, to be sent at the turn's end
	sending   map[uint64]*loopConn // sends in the ring, by tag
	sendTag   uint64
	aheadOf   []*loopConn // the clients exchange read this turn, by tag
	aheadDone int         // of them, the reads completed
}

// loopInbox is what other goroutines ask of the loop.
type loopInbox struct {
	adopted  []*loopConn // new sessions
	released []*loopConn // sessions asked to leave the loop (a drain)
	dialed   []loopDial  // the upstream dials' outcomes
	readers  []*loopReader
	unread   []*loopReader // readers to close: their owner is done
	abort    bool          // a forced shutdown: fail what is in flight, end everyone
	stopped  bool
}

type loopDial struct {
	up  *loopUpstream
	nc  net.Conn
	err error
}

// newEventLoop starts the loop, or returns nil when this server cannot
// use one (TLS on either side, a Redis Cluster, a gateway, or
// Config.GoroutinePerClient).
func newEventLoop(srv *Server) (*eventLoop, error) {
	cfg := &srv.cfg
	if cfg.GoroutinePerClient || cfg.TLS != nil || cfg.Upstream.TLS != nil || srv.cluster != nil || len(cfg.Upstream.Cluster) > 0 || srv.gw != nil {
		return nil, nil
	}
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("event loop: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(ep)
		return nil, fmt.Errorf("event loop: %w", err)
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}); err != nil {
		unix.Close(ep)
		unix.Close(wake)
		return nil, fmt.Errorf("event loop: %w", err)
	}
	ctx, stop := context.WithCancel(context.Background())
	l := &eventLoop{
		srv: srv, ep: ep, wake: wake, ctx: ctx, stop: stop, done: make(chan struct{}),
		conns:   make(map[int]*loopConn),
		scratch: make([]byte, loopReadSize),
		ups:     make(map[upstream.Key][]*loopUpstream),
		upByFd:  make(map[int]*loopUpstream),
		readers: make(map[int]*loopReader),
		sending: make(map[uint64]*loopConn),
	}
	if !cfg.NoIOURing {
		l.ring = l.newRing()
	}
	go l.run()
	return l, nil
}

// detach takes the client's socket out of Go's poller for the loop: a
// duplicate of its descriptor is kept and the net.Conn closed. The caller
// holds srv.mu; false leaves the session to a goroutine.
func (l *eventLoop) detach(s *session, ctx context.Context, serve, finish func()) bool {
	sc, ok := s.nc.(syscall.Conn)
	if !ok {
		return false
	}
	fd, err := dupDescriptor(sc)
	if err != nil {
		return false
	}
	s.nc.Close()
	s.raw = nil
	s.lc = &loopConn{loop: l, s: s, fd: fd, ctx: ctx, serve: serve, finish: finish, readable: true}
	return true
}

// dupDescriptor duplicates a socket's descriptor; the duplicate shares its
// non-blocking mode but not its registration in Go's poller.
func dupDescriptor(sc syscall.Conn) (int, error) {
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var dupErr error
	if err := raw.Control(func(f uintptr) { fd, dupErr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if dupErr != nil {
		return -1, dupErr
	}
	return fd, nil
}

// adopt gives the loop a session detach prepared. A loop that has
// stopped (Shutdown is past waiting for sessions) ends it at once.
func (l *eventLoop) adopt(lc *loopConn) {
	if !l.post(func(in *loopInbox) { in.adopted = append(in.adopted, lc) }) {
		unix.Close(lc.fd)
		lc.s.cleanup()
		lc.finish()
	}
}

// release asks the loop to hand lc's session to a goroutine of its own
// once its batch is served. The caller holds srv.mu.
func (l *eventLoop) release(lc *loopConn) {
	l.post(func(in *loopInbox) { in.released = append(in.released, lc) })
}

// abort fails every batch in flight and ends every session the loop
// serves: a forced shutdown.
func (l *eventLoop) abort() { l.post(func(in *loopInbox) { in.abort = true }) }

// close ends the loop; the server has no sessions left.
func (l *eventLoop) close() {
	l.post(func(in *loopInbox) { in.stopped = true })
	l.stop()
	<-l.done
}

// post runs f on the inbox and wakes the loop; false: the loop has
// stopped, f did not run.
func (l *eventLoop) post(f func(*loopInbox)) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	f(&l.inbox)
	one := [8]byte{1}
	_, _ = unix.Write(l.wake, one[:])
	return true
}

func (l *eventLoop) run() {
	defer close(l.done)
	defer func() {
		l.mu.Lock()
		l.closed = true
		if l.ring != nil {
			l.ring.Close()
		}
		unix.Close(l.ep)
		unix.Close(l.wake)
		l.mu.Unlock()
	}()
	for {
		n := l.wait()
		l.now = time.Now()
		for _, ev := range l.events[:n] {
			fd := int(ev.Fd)
			switch {
			case fd == l.wake:
				if l.takeInbox() {
					for _, ups := range l.ups {
						for _, up := range ups {
							l.closeUpstream(up)
						}
					}
					for _, r := range l.readers {
						l.endReader(r, errors.New("the event loop stopped"))
					}
					return
				}
			case l.ring != nil && fd == l.ring.Fd():
				l.takeCompletions() // a send the kernel finished after Submit
			case l.readers[fd] != nil:
				l.read(l.readers[fd])
			case l.upByFd[fd] != nil:
				if ev.Events&(unix.EPOLLIN|unix.EPOLLERR|unix.EPOLLHUP|unix.EPOLLRDHUP) != 0 {
					l.readUpstream(l.upByFd[fd])
				}
			default:
				lc := l.conns[fd]
				if lc == nil {
					continue
				}
				if ev.Events&unix.EPOLLOUT != 0 {
					lc.blocked = false
				}
				if ev.Events&(unix.EPOLLIN|unix.EPOLLERR|unix.EPOLLHUP|unix.EPOLLRDHUP) != 0 {
					lc.readable = true
				}
				l.schedule(lc)
			}
		}
		// Clients scheduled while these make progress (a batch answered at
		// once) go on next turn: one batch per client per turn, so that a
		// client flooding PINGs cannot keep the loop to itself.
		ready := l.ready
		l.ready = l.spare[:0]
		// Replies first, in one submission with the turn's reads
		// (exchange), before the turn parses anyone's next requests: a
		// client waits for its reply on nobody else's parsing.
		due := 0
		for i, lc := range ready {
			if lc.written < len(lc.s.out) {
				ready[i], ready[due] = ready[due], ready[i]
				due++
			}
		}
		for _, lc := range ready[:due] {
			lc.queued = false
			l.progress(lc)
		}
		l.exchange(ready[due:])
		for _, lc := range ready[due:] {
			lc.queued = false
			l.progress(lc)
		}
		l.keepAhead()
		l.sendQueued()
		clear(ready)
		l.spare = ready[:0]
		for _, ups := range l.ups {
			for _, up := range ups {
				if up.writeDue() {
					l.writeUpstream(up)
				}
				l.checkTimeout(up)
			}
		}
	}
}

// rawRead and rawWrite are read(2) and write(2) on one of the loop's
// non-blocking sockets, without telling the scheduler as unix.Read and
// unix.Write do for a call that may block. They never block, and each
// such notice let the runtime's monitor thread find a P in a system call
// and kept it waking every 20 µs: 8 % of keyfence's CPU at pipeline 1.
// (The loop's one blocking call, the wait for events, still tells it, so
// that the P can run other goroutines and a garbage collection need not
// wait for the next event.)
func rawRead(fd int, p []byte) (int, error) { return rawIO(unix.SYS_READ, fd, p) }

func rawWrite(fd int, p []byte) (int, error) { return rawIO(unix.SYS_WRITE, fd, p) }

func rawIO(trap uintptr, fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, _, errno := unix.RawSyscall(trap, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// wait returns the number of events in l.events. It first looks without
// blocking, a raw system call the Go scheduler does not hear of: under
// load something is ready, and that costs nothing more than the look.
// While a batch is upstream it keeps looking for up to replySpin, yielding
// the CPU between looks, before it sleeps.
func (l *eventLoop) wait() int {
	if n := l.look(); n > 0 {
		return n
	}
	if len(l.ready) > 0 {
		return 0 // the end of the last turn left clients to move on
	}
	if l.awaitingReplies() {
		for end := time.Now().Add(replySpin); time.Now().Before(end); {
			_, _, _ = unix.RawSyscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
			if n := l.look(); n > 0 {
				return n
			}
		}
	}
	n, err := unix.EpollWait(l.ep, l.events[:], l.waitMillis())
	if err != nil {
		return 0 // EINTR
	}
	return n
}

// look fills l.events with what is ready, without blocking.
func (l *eventLoop) look() int {
	r, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(l.ep), uintptr(unsafe.Pointer(&l.events[0])), uintptr(len(l.events)), 0, 0, 0)
	if errno != 0 {
		return 0
	}
	return int(r)
}

// replySpin is how long the loop keeps looking for a reply due from
// upstream before it sleeps, unless slowReply has passed since the last
// write: then Redis is busy (a slow command) and the reply is not a
// matter of microseconds. Sleeping costs more than the wait: the
// loop's thread and CPU go idle and must be woken, and the Go scheduler
// hands its P on. Yielding between looks lets Redis and the clients run
// on this CPU meanwhile; a look costs only what that CPU would not
// otherwise use. Measured against sleeping at once: up to 1.16x at
// pipeline 1 and 1.44x at pipeline 16, with the machine's idle time at
// pipeline 1 down from 12-14 % to 2-3 % (bench/results/designs.md,
// "Yielding before sleeping").
const (
	replySpin = 50 * time.Microsecond
	slowReply = time.Millisecond
)

// awaitingReplies says whether a batch written upstream in the last
// slowReply is unanswered.
func (l *eventLoop) awaitingReplies() bool {
	for _, ups := range l.ups {
		for _, up := range ups {
			if up.head < up.sentTo && l.now.Sub(up.wroteAt) < slowReply {
				return true
			}
		}
	}
	return false
}

// waitMillis bounds a blocking wait by the oldest batch's deadline.
func (l *eventLoop) waitMillis() int {
	timeout := l.srv.cfg.Upstream.Timeout
	ms := -1
	for _, ups := range l.ups {
		for _, up := range ups {
			if timeout <= 0 || up.head == len(up.fifo) {
				continue
			}
			left := max(int(time.Until(up.fifo[up.head].sentAt.Add(timeout))/time.Millisecond)+1, 0)
			if ms < 0 || left < ms {
				ms = left
			}
		}
	}
	return ms
}

// takeInbox acts on what was posted; true: the loop is to stop.
func (l *eventLoop) takeInbox() bool {
	var buf [8]byte
	_, _ = unix.Read(l.wake, buf[:])
	l.mu.Lock()
	in := l.inbox
	l.inbox = loopInbox{}
	l.mu.Unlock()
	for _, lc := range in.adopted {
		err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, lc.fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(lc.fd)})
		l.conns[lc.fd] = lc
		if err != nil {
			lc.release = true // the loop cannot watch it: a goroutine will
		}
		l.schedule(lc)
	}
	for _, lc := range in.released {
		lc.release = true
		l.schedule(lc)
	}
	for _, d := range in.dialed {
		l.dialed(d)
	}
	for _, r := range in.readers {
		if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, r.fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(r.fd)}); err != nil {
			unix.Close(r.fd)
			r.done <- fmt.Errorf("event loop: %w", err)
			continue
		}
		l.readers[r.fd] = r
		l.read(r) // what came before it was watched
	}
	for _, r := range in.unread {
		if l.readers[r.fd] == r {
			l.endReader(r, context.Canceled)
		}
	}
	if in.abort {
		for _, ups := range l.ups {
			for _, up := range ups {
				l.failUpstream(up, &upstream.Error{Err: errors.New("keyfence is shutting down")})
			}
		}
		for _, lc := range l.conns {
			lc.gone = true
			l.schedule(lc)
		}
	}
	return in.stopped
}

func (l *eventLoop) schedule(lc *loopConn) {
	if !lc.queued {
		lc.queued = true
		l.ready = append(l.ready, lc)
	}
}
