//go:build linux

package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/keyfence/keyfence/fallback"
	"github.com/keyfence/keyfence/resp"
	"github.com/keyfence/keyfence/rewrite"
	"github.com/keyfence/keyfence/upstream"
)

// eventLoop serves a sidecar's sessions on one goroutine over epoll for as
// long as each asks for nothing but keyed commands on the shared upstream
// connection and local replies: the traffic most applications send, one
// command at a time. Each turn reads every client that sent something,
// sends all their requests upstream in one write, and writes each batch's
// replies back when the last one arrives. A request costs one read and one
// write on the client's socket, the upstream ones shared, as in twemproxy;
// a goroutine per client costs a read more (Go's poller must try a read
// before it parks) and two goroutine switches.
//
// It serves RESP2 and RESP3 (HELLO opening a batch, CLIENT SETNAME and
// SETINFO are answered here, so go-redis's handshake stays on the loop),
// with one upstream connection per protocol.
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
	scratch []byte                         // what one read of a client brings, handled in place
	ups     map[upstream.Key][]*loopUpstream // Config.SharedConns connections per database and protocol the sessions use
	upByFd  map[int]*loopUpstream
	readers map[int]*loopReader // the read cache's tracking connection, by descriptor
}

// loopReader is a connection the loop only reads, handing each message to
// handle: the read cache's tracking connection (Server.trackOnce).
type loopReader struct {
	fd     int
	in     []byte
	handle func(reply []byte) error
	done   chan error // its end, once
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
	guarded  bool // the batch holds a breaker ticket
	retries  int  // times a batch of reads that timed out was sent again
	written  int  // bytes of s.out already written
	blocked  bool // the client's socket is full: wait for it to drain
	readable bool // bytes may be waiting on the socket
	release  bool // leave the loop as soon as nothing is in flight
	gone     bool // the client went away, or writing to it failed
	queued   bool // in loop.ready
	over     bool // ended or handed off: the loop has nothing more to do with it
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
}

// loopReadSize is how much one read of a client may bring, as a
// goroutine's session reads: one read's commands make one batch, and that
// keeps a pipeline of large replies (COMMAND, HGETALL of big hashes) from
// passing the output hard limit in one batch. A partial request left over
// is kept in a buffer of this size.
const loopReadSize = initialReadBuffer

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
		unix.Close(l.ep)
		unix.Close(l.wake)
		l.mu.Unlock()
	}()
	for {
		n := l.wait()
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
		for _, lc := range ready {
			lc.queued = false
			l.progress(lc)
		}
		clear(ready)
		l.spare = ready[:0]
		for _, ups := range l.ups {
			for _, up := range ups {
				l.writeUpstream(up)
				l.checkTimeout(up)
			}
		}
	}
}

// wait returns the number of events in l.events. It first looks without
// blocking, a raw system call the Go scheduler does not hear of: under
// load something is ready, and that costs nothing more than the look.
func (l *eventLoop) wait() int {
	r, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(l.ep), uintptr(unsafe.Pointer(&l.events[0])), uintptr(len(l.events)), 0, 0, 0)
	if errno == 0 && r > 0 {
		return int(r)
	}
	if len(l.ready) > 0 {
		return 0 // the end of the last turn left clients to move on
	}
	n, err := unix.EpollWait(l.ep, l.events[:], l.waitMillis())
	if err != nil {
		return 0 // EINTR
	}
	return n
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
		s.readAt = time.Now()
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
// false: nothing was read (the socket is drained, or the client went).
func (l *eventLoop) readClient(lc *loopConn) bool {
	s := lc.s
	buf := l.scratch
	if len(s.rbuf) > 0 {
		if len(s.rbuf) == cap(s.rbuf) {
			// A request bigger than the loop keeps: the session's goroutine
			// reads it, within the server's request budget.
			lc.release = true
			return false
		}
		buf = s.rbuf[len(s.rbuf):cap(s.rbuf)]
	}
	n, err := unix.Read(lc.fd, buf)
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

// keepLeftover copies a partial request out of the scratch buffer, or
// compacts the session's own buffer, so that the next read appends to it.
func (l *eventLoop) keepLeftover(lc *loopConn) {
	s := lc.s
	rest := s.rbuf[s.rpos:]
	switch {
	case s.more:
		// Whole commands wait for the client to read its replies: keep them.
		if &s.rbuf[0] == &l.scratch[0] {
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
	case &s.rbuf[0] == &l.scratch[0]:
		s.rbuf = append(make([]byte, 0, initialReadBuffer), rest...)
		s.rpos = 0
	default:
		s.rbuf = s.rbuf[:copy(s.rbuf, rest)]
		s.rpos = 0
	}
}

// loopServes says whether the loop serves args for s: anything that needs
// a connection of its own, a change of session state, or a wait belongs
// to the session's goroutine.
func (s *session) loopServes(args [][]byte) bool {
	if s.txn != txNone || s.pinned != nil || s.sub != nil || !s.authed || s.replyMode != replyOn || s.closing.Load() {
		return false
	}
	cmd := rewrite.Lookup(args)
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

// send queues lc's batch for up's next write.
func (l *eventLoop) send(up *loopUpstream, lc *loopConn) {
	lc.up, lc.left = up, lc.s.nreq
	if l.srv.cfg.Upstream.Timeout > 0 {
		lc.sentAt = time.Now() // only the timeout reads it
	}
	up.out = append(up.out, lc.s.req...)
	up.fifo = append(up.fifo, lc)
	if up.fd < 0 && !up.dialing {
		l.dial(up)
	}
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

// writeClient writes what is due to the client; false: some is left for
// when its socket drains.
func (l *eventLoop) writeClient(lc *loopConn) bool {
	s := lc.s
	if lc.gone {
		s.out, lc.written = s.out[:0], 0
		return true
	}
	if lc.blocked {
		return false
	}
	for lc.written < len(s.out) {
		n, err := unix.Write(lc.fd, s.out[lc.written:])
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
	if lc.written > 0 {
		s.srv.stats.writes.Add(1)
	}
	s.out, lc.written = s.out[:0], 0
	if cap(s.out) > maxKeptBuffer {
		s.out = nil
	}
	return true
}

// end ends a session in the loop: the client left, quit, or a write failed.
func (l *eventLoop) end(lc *loopConn) {
	l.forget(lc)
	unix.Close(lc.fd)
	lc.s.cleanup()
	lc.finish()
}

// handoff gives the session a net.Conn and a goroutine of its own, with
// the commands the loop left in its buffer.
func (l *eventLoop) handoff(lc *loopConn) {
	s := lc.s
	l.forget(lc)
	f := os.NewFile(uintptr(lc.fd), "client")
	nc, err := net.FileConn(f)
	f.Close()
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

// forget stops watching lc's socket.
func (l *eventLoop) forget(lc *loopConn) {
	lc.over = true
	_ = unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, lc.fd, nil)
	delete(l.conns, lc.fd)
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
	for up.fd >= 0 && len(up.out) > 0 {
		n, err := unix.Write(up.fd, up.out)
		if n > 0 {
			up.out = up.out[:copy(up.out, up.out[n:])]
			continue
		}
		switch err {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return
		}
		l.failUpstream(up, &upstream.Error{Err: err})
		return
	}
	if cap(up.out) > maxKeptBuffer && len(up.out) == 0 {
		up.out = nil
	}
}

// readUpstream reads every reply upstream has sent and completes the
// batches they finish, in the order they were sent.
func (l *eventLoop) readUpstream(up *loopUpstream) {
	for up.fd >= 0 {
		if cap(up.in)-len(up.in) < 4<<10 {
			up.in = append(up.in, make([]byte, max(loopReadSize, cap(up.in)))...)[:len(up.in)]
		}
		n, err := unix.Read(up.fd, up.in[len(up.in):cap(up.in)])
		if n <= 0 {
			switch {
			case err == unix.EAGAIN:
				return
			case err == unix.EINTR:
				continue
			case err == nil:
				err = errors.New("connection closed by upstream")
			}
			l.failUpstream(up, &upstream.Error{Err: err})
			return
		}
		up.in = up.in[:len(up.in)+n]
		if !l.takeReplies(up) {
			return
		}
	}
}

// takeReplies hands every complete reply in up.in to its batch; false: the
// connection failed.
func (l *eventLoop) takeReplies(up *loopUpstream) bool {
	p := 0
	for p < len(up.in) {
		n, err := resp.ReplyLen(up.in[p:])
		if err == nil && n > 0 && up.head == len(up.fifo) {
			err = errors.New("a reply nobody asked for")
		}
		if err != nil {
			l.failUpstream(up, &upstream.Error{Err: err})
			return false
		}
		if n == 0 {
			break
		}
		lc := up.fifo[up.head]
		lc.s.b.Add(up.in[p : p+n])
		p += n
		if lc.left--; lc.left == 0 {
			up.fifo[up.head] = nil
			up.head++
			l.complete(lc, nil)
		}
	}
	up.in = up.in[:copy(up.in, up.in[p:])]
	if up.head == len(up.fifo) {
		up.fifo, up.head = up.fifo[:0], 0
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
	up.fifo, up.head = nil, 0
	up.out, up.in = up.out[:0], up.in[:0]
	retry := upstream.IsTimeout(err)
	for _, lc := range fifo {
		if s := lc.s; retry && s.b.ReadOnly && lc.retries < readRetries {
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
	for {
		if cap(r.in)-len(r.in) < 1<<10 {
			r.in = append(r.in, make([]byte, max(4<<10, cap(r.in)))...)[:len(r.in)]
		}
		n, err := unix.Read(r.fd, r.in[len(r.in):cap(r.in)])
		if n <= 0 {
			switch {
			case err == unix.EAGAIN:
				return
			case err == unix.EINTR:
				continue
			case err == nil:
				err = errors.New("connection closed by upstream")
			}
			l.endReader(r, &upstream.Error{Err: err})
			return
		}
		r.in = r.in[:len(r.in)+n]
		p := 0
		for p < len(r.in) {
			m, err := resp.ReplyLen(r.in[p:])
			if err == nil && m > 0 {
				err = r.handle(r.in[p : p+m])
			}
			if err != nil {
				l.endReader(r, err)
				return
			}
			if m == 0 {
				break
			}
			p += m
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
