package proxy

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/keyfence/keyfence/fallback"
	"github.com/keyfence/keyfence/resp"
	"github.com/keyfence/keyfence/rewrite"
	"github.com/keyfence/keyfence/telemetry"
	"github.com/keyfence/keyfence/upstream"
)

// session is one client connection and all of its state. One goroutine runs
// it: read what the client sent, turn every complete command into upstream
// bytes or a local reply, send the batch upstream as one write, wait for its
// replies, strip them, write everything back in the client's order.
type session struct {
	srv *Server
	// nc is the client's connection. A session the event loop serves
	// (lc != nil) has none it can use: the loop reads and writes the
	// socket itself, and gives the session a new nc when it hands it off
	// to a goroutine of its own (loop.go).
	nc         net.Conn
	raw        syscall.RawConn // nil unless nc is a plain TCP connection
	lc         *loopConn       // the event loop's state while it serves the session: set and cleared under srv.mu, read freely by whoever runs the session
	remoteAddr net.Addr        // the client's address, and keyfence's end of it
	localAddr  net.Addr        //
	id         int64           // written by the session under infoMu (gateway: changes with the tenant)
	rw         *rewrite.Rewriter
	created    time.Time

	// Client-visible state; infoMu guards what CLIENT LIST of another
	// session reads (name, lib*, db, resp3), written only by this session.
	infoMu  sync.Mutex
	name    string
	libName string
	libVer  string
	db      int
	resp3   bool
	authed  bool
	lastCmd atomic.Value // string, for CLIENT LIST
	lastAt  atomic.Int64 // unix nanos of the last command

	// Upstream.
	group    *upstream.Group
	shared   *upstream.Conn
	sharedRT upstream.RoundTripper // shared behind the breaker and read retries
	pinned   *upstream.Conn        // non-nil while MULTI or WATCH holds a connection
	sub      *subConn              // non-nil in subscriber mode
	wmu      sync.Mutex            // client writes: the subscriber reader writes too
	// pinnedRT is pinned behind a Cluster's redirects, kept here so that a
	// batch on it allocates nothing (transport).
	pinnedRT upstream.Redirects

	// Transaction state (on the pinned connection).
	txn txState // where the session is in MULTI … EXEC
	tx  txQueue // the queued commands (multi.go)

	// CLIENT REPLY (multi.go): mute says the slots added now are the
	// client's to miss; their replies are read and dropped.
	replyMode replyMode
	mute      bool

	// Buffers reused from batch to batch: the hot path allocates nothing.
	rbuf  []byte   // client bytes; rbuf[rpos:] not yet parsed
	rbufp *[]byte  // the pooled buffer rbuf is, while it is one (fillIdle)
	rpos  int      //
	need  int      // bytes the next request needs at least
	more  bool     // rbuf holds commands not parsed yet: output was due first
	held  int64    // bytes of rbuf reserved from the server's request budget
	args  [][]byte // arguments of the command being handled
	req   []byte   // upstream bytes of the current batch
	nreq  int      // commands in req
	slots []slot   // one per command of the batch, in order
	local []byte   // local replies of the batch, back to back
	out   []byte   // bytes for the client
	b     *upstream.Batch

	curName      string           // the command being handled, for metrics
	curCmd       *rewrite.Command // and its table entry
	reqMark      int              // where its upstream request starts in req
	cacheScratch struct {         // scratch of the read cache (resilience.go)
		since  fallback.Stamp
		args   [][]byte
		req    []byte
		keyIdx []int
		// The keys the batch's writes change (prefixed, back to back),
		// invalidated together before it is sent (invalidateWritten).
		written       []byte
		writtenEnds   []int
		writtenKeys   [][]byte
		invalidateAll bool
		read          []byte // a read being moved behind its tracking (askKeyTTLs)
		id            []byte // the tracking connection's id, in decimal
		tracks        bool   // the batch turns on tracking: upstream.Batch.Tracks
	}
	readAt      time.Time        // when the batch's bytes were read, for latency
	lastCounter lastCounter      // INFO commandstats' counters of the last command (info.go)
	lastLookup  lastLookup       // the last top-level command looked up (lookup)
	tel         *telemetry.Batch // records the batches; nil without metrics

	readIdleFn func(fd uintptr) bool // s.readIdle, made once
	sampler    uint32                // sampleRead's state
	idleN      int                   // bytes and error of readIdle's read
	idleErr    error                 //

	closing    atomic.Bool        // the server is draining: stop after this batch
	clientLeft atomic.Bool        // the client closed while a command waited (watchClient)
	cancel     context.CancelFunc // ends the session's context: forced Shutdown
	quit       bool               // QUIT or a fatal protocol error: stop after flushing
	protoErr   bool               // the quit is a protocol error's: the client may still be sending (lingerClose)
	wErr       error              // the client cannot be written to any more
}

// txState is where a session is in a transaction. A WATCH outside MULTI
// needs no state of its own: the pinned connection it holds is the state.
type txState uint8

const (
	txNone            txState = iota // not in MULTI
	txQueuing                        // MULTI sent upstream; commands are queued there
	txDeferred                       // cluster: MULTI not sent yet, waiting for a key to pick the master
	txAborted                        // a queueing error: EXEC answers EXECABORT
	txAbortedDeferred                // the same before MULTI was sent upstream
)

func (t txState) inMulti() bool  { return t != txNone }
func (t txState) deferred() bool { return t == txDeferred || t == txAbortedDeferred }
func (t txState) aborted() bool  { return t == txAborted || t == txAbortedDeferred }

// abort is the state after a queueing error: EXEC will be refused.
func (t txState) abort() txState {
	switch t {
	case txQueuing:
		return txAborted
	case txDeferred:
		return txAbortedDeferred
	}
	return t
}

// sent is the state once a deferred MULTI went upstream.
func (t txState) sent() txState {
	switch t {
	case txDeferred:
		return txQueuing
	case txAbortedDeferred:
		return txAborted
	}
	return t
}

// slot is where a command's reply comes from: the next upstream reply
// (stripped by kind) or a range of local.
type slot struct {
	name     string // the command, for metrics
	upstream bool
	readonly bool // a read that may be sent again after a timeout
	hidden   bool // keyfence's own command (a deferred MULTI, a PTTL): no reply shown
	muted    bool // CLIENT REPLY OFF/SKIP: the reply is read and dropped
	ttls     int  // hidden PTTLs that follow this cacheable read, one per key
	kind     rewrite.ReplyKind
	exec     bool              // EXEC: each element as the transaction's queue says
	script   *scriptEntry      // EVAL*: heal NOSCRIPT, show the client's SHA
	fn       string            // FCALL*: the function's name, as registered
	adjust   int64             // PUBLISH: added to upstream's count (Server.publishDelta)
	mark     fallback.ReadMark // a cacheable read being filled: see askKeyTTLs
	trackID  int64             // and the tracking connection its keys' changes go to
	from, to int               // local reply bytes, or a script's request bytes
}

const initialReadBuffer = 4 << 10

func newSession(srv *Server, nc net.Conn) *session {
	s := &session{
		srv:        srv,
		nc:         nc,
		raw:        syscallConn(nc),
		remoteAddr: nc.RemoteAddr(),
		localAddr:  nc.LocalAddr(),
		id:         srv.nextID.Add(1),
		rw:         rewrite.NewRewriter(srv.prefix),
		created:    time.Now(),
		db:         srv.cfg.Upstream.DB,
		authed:     srv.gw == nil && srv.cfg.ClientPassword == "", // a gateway's lobby never is
		b:          upstream.NewBatch(),
		tel:        srv.cfg.Metrics.NewBatch(),
	}
	s.readIdleFn = s.readIdle
	s.sampler = uint32(s.id)*2654435761 | 1 // xorshift needs a state that is not 0
	s.lastCmd.Store("NULL")
	s.lastAt.Store(s.created.UnixNano())
	return s
}

// syscallConn returns the file descriptor access of a TCP connection, so that
// an idle session can wait for bytes without holding a buffer.
func syscallConn(nc net.Conn) syscall.RawConn {
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return nil
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}

// drainGrace is how long a draining session waits for more of a client's
// pipeline before it closes: requests already sent are served.
const drainGrace = 100 * time.Millisecond

// closeWhenIdle asks the session to end once its batch is served; the
// caller holds srv.mu.
func (s *session) closeWhenIdle() {
	s.closing.Store(true)
	if s.lc != nil {
		s.lc.loop.release(s.lc) // a goroutine of its own ends it as it would any session
		return
	}
	// Wake a session blocked reading from an idle client soon.
	_ = s.nc.SetReadDeadline(time.Now().Add(drainGrace))
}

func (s *session) serve(ctx context.Context) {
	defer s.cleanup()
	s.selectGroup()
	for !s.quit {
		if s.closing.Load() {
			_ = s.nc.SetReadDeadline(time.Now().Add(drainGrace))
		}
		if !s.more {
			if err := s.fill(); err != nil {
				if errors.Is(err, errRequestBudget) {
					s.out = resp.AppendError(s.out, err.Error())
					_ = s.writeOut()
				}
				return
			}
		}
		s.srv.stats.reads.Add(1)
		// One clock reading per batch: latency, and the read cache's
		// admission, which ages entries in periods of seconds.
		s.readAt = time.Now()
		s.handleBuffered(ctx)
		s.flushBatch(ctx)
		if s.writeOut() != nil {
			return
		}
	}
}

// lingerClose closes a client's connection after the protocol error that
// ended its session, while the client may still be sending (a 1 MB AUTH
// before authentication, say). Closed with unread input, the socket would
// be reset, and a client still writing would lose the error reply unread.
// It shuts the write side (the reply, then end of stream), discards what
// the client sends for at most lingerTime or lingerBytes, then closes. The
// session still counts against --max-clients meanwhile.
func lingerClose(nc net.Conn) {
	if cw, ok := nc.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		_ = nc.SetReadDeadline(time.Now().Add(lingerTime))
		_, _ = io.CopyN(io.Discard, nc, lingerBytes)
	}
	nc.Close()
}

const (
	lingerTime  = time.Second
	lingerBytes = 16 << 20
)

// maxKeptBuffer is the largest session buffer kept from batch to batch; a
// bigger one (a huge reply or request) is let go once used.
const maxKeptBuffer = 1 << 20

// writeOut writes what s.out holds to the client, blocking until the client
// has taken it: a client that does not read stops its own session here, and
// nothing else. After a failed write, output is dropped.
func (s *session) writeOut() error {
	if s.lc != nil {
		return s.wErr // the event loop writes s.out when the batch is done
	}
	if s.wErr == nil && len(s.out) > 0 {
		s.wmu.Lock()
		n, err := s.nc.Write(s.out)
		s.wmu.Unlock()
		s.srv.stats.writes.Add(1)
		s.srv.stats.netOut.Add(int64(n))
		if err != nil {
			s.wErr = err
			s.quit = true
		}
	}
	s.out = s.out[:0]
	if cap(s.out) > maxKeptBuffer {
		s.out = nil
	}
	return s.wErr
}

var errOutputLimit = errors.New("client output over --client-output-hard-limit")

// dropForOutput disconnects a client whose batch's replies passed the output
// hard limit, as Redis closes such a client: without a reply. The shared
// connection has read and dropped the rest of the batch's replies.
func (s *session) dropForOutput() {
	n := s.srv.outputDrops.Add(1)
	s.srv.log.Warn("client disconnected: its unsent replies passed the output hard limit (--client-output-hard-limit)",
		"client_id", s.id, "addr", s.remoteAddr.String(), "limit_bytes", s.srv.cfg.ClientOutputHardLimit, "disconnects_total", n)
	s.wErr, s.quit = errOutputLimit, true
	s.out = nil
}

var errRequestBudget = errors.New("ERR keyfence: request buffer budget exhausted: too many clients are sending large requests at once; retry later, or raise --max-request-buffer-total")

// reserveReadBuffer takes n bytes from the budget of request bytes all
// clients may have buffered, or reports that it is spent.
func (s *Server) reserveReadBuffer(n int64) bool {
	for {
		used := s.hub.reqBuffered.Load()
		if used+n > s.cfg.MaxRequestBufferTotal {
			return false
		}
		if s.hub.reqBuffered.CompareAndSwap(used, used+n) {
			return true
		}
	}
}

// releaseReadBuffer returns what the session's read buffer held of the budget.
func (s *session) releaseReadBuffer() {
	if s.held > 0 {
		s.srv.hub.reqBuffered.Add(-s.held)
		s.held = 0
	}
}

// fill reads at least one more chunk of client bytes, making room for the
// request being parsed (s.need bytes from s.rpos).
func (s *session) fill() error {
	if s.rpos == len(s.rbuf) {
		s.rbuf, s.rpos = s.rbuf[:0], 0
		if cap(s.rbuf) > initialReadBuffer {
			// A big request is done with: its buffer and budget go.
			s.rbuf = nil
			s.releaseReadBuffer()
		}
		if s.raw != nil {
			return s.fillIdle()
		}
	}
	if s.rpos > 0 && (cap(s.rbuf)-len(s.rbuf) < 1024 || s.rpos+s.need > cap(s.rbuf)) {
		n := copy(s.rbuf, s.rbuf[s.rpos:])
		s.rbuf, s.rpos = s.rbuf[:n], 0
	}
	if s.rbuf == nil {
		s.rbuf = make([]byte, 0, initialReadBuffer)
	}
	if len(s.rbuf) == cap(s.rbuf) {
		// Double when full, whatever size the request announces: the buffer follows
		// the bytes the client has actually sent, so a header claiming
		// 64 MB costs no more than the few bytes behind it. Growth past the
		// initial size comes out of the server-wide budget.
		size := 2 * cap(s.rbuf)
		if grow := int64(size-initialReadBuffer) - s.held; grow > 0 {
			if !s.srv.reserveReadBuffer(grow) {
				s.srv.budgetRefused.Add(1)
				s.srv.log.Warn("client refused: the request buffer budget is spent (--max-request-buffer-total)",
					"client_id", s.id, "addr", s.remoteAddr.String(), "budget_bytes", s.srv.cfg.MaxRequestBufferTotal)
				return errRequestBudget
			}
			s.held += grow
		}
		nb := make([]byte, len(s.rbuf), size)
		copy(nb, s.rbuf)
		s.rbuf, s.rbufp = nb, nil // a pooled buffer outgrown goes to the garbage collector
	}
	n, err := s.nc.Read(s.rbuf[len(s.rbuf):cap(s.rbuf)])
	s.rbuf = s.rbuf[:len(s.rbuf)+n]
	if n > 0 {
		return nil
	}
	if err == nil {
		err = errors.New("empty read")
	}
	return err
}

// fillIdle waits for the client with no buffer of its own: the read buffer
// goes back to a pool while the connection is idle and one is taken only
// when bytes arrive, so ten thousand idle clients cost no read buffers.
func (s *session) fillIdle() error {
	if s.rbufp != nil {
		s.srv.readBufs.Put(s.rbufp)
		s.rbufp, s.rbuf = nil, nil
	}
	s.idleN, s.idleErr = 0, nil
	err := s.raw.Read(s.readIdleFn)
	switch {
	case err != nil:
		return err
	case s.idleErr != nil:
		return s.idleErr
	case s.idleN == 0:
		return io.EOF
	}
	return nil
}

// readIdle is fillIdle's read, called by the poller whenever the client's
// socket may be readable; it takes a pooled buffer only for bytes that
// arrived. A method value made once per session (readIdleFn), so that the
// wait allocates nothing.
func (s *session) readIdle(fd uintptr) bool {
	bp := s.srv.readBufs.Get().(*[]byte)
	buf := (*bp)[:cap(*bp)]
	n, err := syscall.Read(int(fd), buf)
	if err == syscall.EAGAIN || err == syscall.EINTR {
		s.srv.readBufs.Put(bp)
		return false // wait until readable
	}
	s.idleN, s.idleErr = max(n, 0), err
	s.rbuf, s.rbufp = buf[:s.idleN], bp
	return true
}

// handleBuffered handles every complete command in the read buffer.
func (s *session) handleBuffered(ctx context.Context) {
	s.more = false
	for !s.quit {
		if len(s.local)+len(s.out) >= s.srv.cfg.ClientOutputSoftLimit {
			// Past the soft output limit: no more commands until the
			// client has read what is due (serve writes it, then comes
			// back here without reading).
			s.more = s.rpos < len(s.rbuf)
			return
		}
		lim := s.srv.limits
		lim.Unauthenticated = !s.authed // Redis's smaller header limits before AUTH
		args, n, need, err := resp.ParseCommand(s.rbuf[s.rpos:], s.args, lim)
		s.args = args
		if err != nil {
			s.addLocalError(err.Error())
			s.quit, s.protoErr = true, true
			return
		}
		if n == 0 {
			s.need = need
			return
		}
		var cmd *rewrite.Command
		if len(args) > 0 {
			cmd = s.lookup(args) // once, for the loop's decision and for dispatch
			if s.lc != nil && !s.loopServes(cmd, args) {
				s.lc.release = true // the command stays in rbuf for the session's own goroutine
				return
			}
		}
		s.rpos += n
		s.srv.stats.netIn.Add(int64(n))
		s.need = 0
		if len(args) > 0 {
			s.handle(ctx, cmd, args)
		}
	}
}

// lastLookup remembers the name a client spelled its last command with
// (up to 16 bytes) and its table entry.
type lastLookup struct {
	name [16]byte
	n    int
	cmd  *rewrite.Command
}

// lookup is rewrite.Lookup, remembering the last command that takes no
// subcommand: a client sends the same few commands again and again, and
// comparing their spelling costs less than folding the case and hashing
// into the table (4 % of keyfence's CPU under SET at pipeline 16).
func (s *session) lookup(args [][]byte) *rewrite.Command {
	last := &s.lastLookup
	if last.cmd != nil && string(args[0]) == string(last.name[:last.n]) {
		return last.cmd
	}
	cmd := rewrite.Lookup(args)
	if cmd != nil && cmd.Subcommands == nil && !strings.Contains(cmd.Name, "|") && len(args[0]) <= len(last.name) {
		last.n = copy(last.name[:], args[0])
		last.cmd = cmd
	}
	return cmd
}

// conn is where the session's commands go now.
func (s *session) conn() *upstream.Conn {
	if s.pinned != nil {
		return s.pinned
	}
	return s.shared
}

// forward adds an upstream request (already in s.req) to the batch.
func (s *session) forward(kind rewrite.ReplyKind) {
	s.nreq++
	readonly := s.curCmd != nil && s.curCmd.HasFlag(rewrite.FlagReadOnly) && !s.txn.inMulti()
	s.slots = append(s.slots, slot{name: s.curName, upstream: true, kind: kind, readonly: readonly, muted: s.mute, from: s.reqMark, to: len(s.req)})
	if s.srv.res != nil && s.srv.res.cache != nil {
		s.invalidateWrite(s.curCmd, s.args)
		if s.pinned == nil && !s.txn.inMulti() {
			s.askKeyTTLs(s.args)
		}
	}
}

// forwardRaw adds args to the batch exactly as the client sent them; used
// for commands that carry no key (COMMAND INFO, PING inside MULTI…).
func (s *session) forwardRaw(args [][]byte, kind rewrite.ReplyKind) {
	s.req = resp.AppendCommand(s.req, args...)
	s.forward(kind)
}

// addLocal adds a reply the proxy produced itself, in the client's order.
func (s *session) addLocal(reply []byte) {
	from := len(s.local)
	s.local = append(s.local, reply...)
	s.slots = append(s.slots, slot{name: s.curName, muted: s.mute, from: from, to: len(s.local)})
}

func (s *session) addLocalError(msg string) {
	from := len(s.local)
	s.local = resp.AppendError(s.local, msg)
	s.slots = append(s.slots, slot{name: s.curName, muted: s.mute, from: from, to: len(s.local)})
}

func (s *session) addStatus(msg string) {
	from := len(s.local)
	s.local = resp.AppendStatus(s.local, msg)
	s.slots = append(s.slots, slot{name: s.curName, muted: s.mute, from: from, to: len(s.local)})
}

// flushBatch sends the batch upstream as one write, waits for its replies,
// and appends every reply, stripped, to s.out in the client's order. It
// returns the error that cost the batch its upstream replies, if any.
func (s *session) flushBatch(ctx context.Context) error {
	if len(s.slots) == 0 {
		return nil
	}
	return s.finishBatch(ctx, s.send(ctx))
}

// finishBatch appends the batch's replies to s.out once send is done; err
// is what it returned.
func (s *session) finishBatch(ctx context.Context, err error) error {
	if s.b.Overflow {
		s.dropForOutput()
		s.req, s.nreq = nil, 0
		s.slots, s.local = s.slots[:0], nil
		s.b = upstream.NewBatch()
		return err
	}
	s.stripReplies(ctx, err)
	s.endBatch()
	return err
}

// send sends the batch's upstream requests (if any) through the session's
// transport and waits for their replies in s.b.
func (s *session) send(ctx context.Context) error {
	if s.nreq == 0 {
		return nil
	}
	t0 := s.beginSend()
	err := s.transport().RoundTrip(ctx, s.b, s.req, s.nreq)
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		s.b = upstream.NewBatch() // the old one may still be written to
	}
	s.endSend(ctx, err, t0)
	return err
}

// beginSend readies the batch to go upstream: the read cache forgets what
// its writes change, and t0 is when it went, for the metrics (zero
// without them).
func (s *session) beginSend() (t0 time.Time) {
	if s.srv.cfg.Metrics != nil {
		t0 = time.Now()
	}
	if res := s.srv.res; res != nil && res.cache != nil {
		s.invalidateWritten() // before the stamp: the batch's own reads come after its writes
		s.cacheScratch.since = res.cache.Stamp()
	}
	s.b.Tracks, s.cacheScratch.tracks = s.cacheScratch.tracks, false
	if s.pinned != nil {
		s.srv.pinnedCommands.Add(int64(s.nreq))
	}
	s.b.Limit = s.srv.cfg.ClientOutputHardLimit
	s.b.ReadOnly = s.pinned == nil && s.onlyReads()
	return t0
}

// endSend logs and counts how the round trip that began at t0 ended.
func (s *session) endSend(ctx context.Context, err error, t0 time.Time) {
	switch failure := errors.Join(err, s.b.Err); {
	case failure == nil || errors.Is(err, fallback.ErrOpen) || ctx.Err() != nil:
	case s.clientLeft.Load():
		// keyfence closed the pinned connection because the client went
		// away (a BullMQ worker closing while blocked): Redis is fine.
		s.srv.cfg.Metrics.ClientClosedWhileWaiting()
	default:
		s.srv.logUpstreamFailure(failure)
		s.tel.UpstreamError(ctx, errorCause(failure))
	}
	if !t0.IsZero() {
		s.tel.Upstream(ctx, t0)
	}
}

// transport is what the batch goes through: the pinned connection as it
// is, or the shared one behind the breaker, with timed-out reads retried
// (see useGroup). With a Redis Cluster upstream, both follow MOVED and ASK
// replies.
func (s *session) transport() upstream.RoundTripper {
	if s.pinned == nil {
		return s.sharedRT
	}
	if s.srv.cluster == nil {
		return s.pinned
	}
	// s.pinned changes without useGroup (runBlocking): set up per batch.
	s.pinnedRT = s.srv.clusterRedirects(s.pinned, s.resp3)
	return &s.pinnedRT
}

// guarded says the batch went through the breaker, so that a missing reply
// may be answered from the read cache.
func (s *session) guarded() bool { return s.pinned == nil && s.srv.res != nil }

// stripReplies appends every reply of the batch to s.out in the client's
// order: local replies as they are, upstream ones stripped of the prefix,
// a missing one as the upstream error (or from the read cache). err is
// what send returned.
func (s *session) stripReplies(ctx context.Context, err error) {
	res := s.srv.res
	guarded := s.guarded()
	next := 0
	soft := s.srv.cfg.ClientOutputSoftLimit
	for _, sl := range s.slots {
		if len(s.out) >= soft {
			// The batch's replies are all here already (bounded by the
			// hard limit); their stripped copy is not kept beside them.
			_ = s.writeOut()
		}
		mark := len(s.out)
		if sl.hidden {
			next++
			continue
		}
		if !sl.upstream {
			s.out = append(s.out, s.local[sl.from:sl.to]...)
		} else {
			reply := s.b.Reply(next)
			next++
			switch {
			case reply == nil && errors.Is(err, fallback.ErrOpen):
				s.fallbackReply(sl, fallback.ErrOpen.Error()) // nothing was sent
			case reply == nil && guarded:
				s.fallbackReply(sl, upstreamErrorText(err, s.b.Err))
			case reply == nil:
				s.out = resp.AppendError(s.out, upstreamErrorText(err, s.b.Err))
			case sl.script != nil:
				s.scriptReply(ctx, sl, reply)
			case sl.fn != "":
				s.fcallReply(ctx, sl, reply)
			case sl.exec:
				s.out = s.appendExecReply(s.out, reply)
			default:
				reply = adjustCount(reply, sl.adjust)
				s.out = s.rw.AppendReply(s.out, reply, sl.kind)
				// Only a read askKeyTTLs chose fills, once Redis has
				// agreed to tell the tracking connection of its keys' changes.
				if sl.ttls > 0 && guarded && res.cache != nil && s.tracked(next-1, sl.trackID) {
					if ttl, ok := s.keyTTL(next, sl.ttls); ok {
						s.fillFromReply(sl, reply, ttl)
					}
				}
				if bytes.HasPrefix(reply, []byte("-OOM")) {
					s.srv.logUpstreamFailure(errors.New(strings.TrimRight(string(reply[1:]), "\r\n")))
					s.tel.UpstreamError(ctx, "oom")
				}
			}
		}
		s.srv.stats.noteReply(sl.name, s.out[mark:], &s.lastCounter)
		s.tel.Command(sl.name, s.out[mark:])
		if sl.muted {
			s.out = s.out[:mark]
		}
	}
	s.tel.Done(ctx, s.readAt)
}

// endBatch empties the batch's buffers for the next one, letting a huge
// batch's memory go.
func (s *session) endBatch() {
	s.req, s.nreq = s.req[:0], 0
	s.slots, s.local = s.slots[:0], s.local[:0]
	if s.b.Oversized(maxKeptBuffer) {
		s.b = upstream.NewBatch()
	}
	if cap(s.req) > maxKeptBuffer {
		s.req = nil
	}
	if cap(s.local) > maxKeptBuffer {
		s.local = nil
	}
	if cap(s.slots) > maxKeptBuffer/64 {
		s.slots = nil
	}
}

// upstreamErrorText is the stable wording of a lost upstream reply.
func upstreamErrorText(errs ...error) string {
	for _, err := range errs {
		if err != nil {
			return "ERR keyfence: upstream unavailable, the command may not have run: " + causeHints[errorCause(err)] + " (" + sanitize(err.Error()) + ")"
		}
	}
	return "ERR keyfence: upstream unavailable, the command may not have run"
}

// causeHints say what an operator or developer should check, by cause.
var causeHints = map[string]string{
	"connection_refused": "is Redis running, and are REDIS_HOST/REDIS_PORT right?",
	"timeout":            "Redis did not answer in time; check the network and Redis's load",
	"noauth":             "Redis refused keyfence's credentials; set REDIS_USERNAME/REDIS_PASSWORD",
	"oom":                "Redis is out of memory; scale it or set an eviction policy",
	"connection_lost":    "the connection to Redis was lost",
}

// logUpstreamFailure logs an upstream failure with what to check, at most
// once a second so that an outage does not flood the log.
func (s *Server) logUpstreamFailure(err error) {
	now := time.Now().UnixNano()
	last := s.lastFailureLog.Load()
	if now-last < int64(time.Second) || !s.lastFailureLog.CompareAndSwap(last, now) {
		return
	}
	cause := errorCause(err)
	s.log.Warn("upstream failure", "cause", cause, "check", causeHints[cause], "err", err)
}

// sanitize keeps an error message on one RESP line.
func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c == '\r' || c == '\n' {
			b[i] = ' '
		}
	}
	return string(b)
}

// selectGroup points the session at the connections for its db and protocol.
func (s *session) selectGroup() {
	s.useGroup(upstream.Key{DB: s.db, RESP3: s.resp3})
}

// useGroup moves the session to the group of key, holding it in use.
func (s *session) useGroup(key upstream.Key) {
	if s.group != nil && s.group.Key() == key {
		return
	}
	g := s.srv.pool.Acquire(key)
	if s.group != nil {
		s.srv.pool.Release(s.group)
	}
	s.group = g
	s.shared = g.Shared()
	// The shared connection's transport: a Cluster's redirects are
	// followed, reads that time out are sent again (redirects and all), and
	// the breaker guards it all.
	var rt upstream.RoundTripper = s.shared
	if s.srv.cluster != nil {
		r := s.srv.clusterRedirects(s.shared, key.RESP3)
		rt = &r
	}
	s.sharedRT = &upstream.RetryReads{Next: rt, Retries: readRetries, Backoff: 50 * time.Millisecond}
	if res := s.srv.res; res != nil {
		s.sharedRT = &fallback.Guard{Next: s.sharedRT, Breaker: res.breaker}
	}
}

// pin gives the session a connection of its own (MULTI, WATCH).
func (s *session) pin() error {
	if s.pinned != nil {
		return nil
	}
	c, err := s.group.Pin()
	if err != nil {
		return err
	}
	s.pinned = c
	return nil
}

// unpin returns the pinned connection; clean says it holds no state.
func (s *session) unpin(clean bool) {
	if s.pinned == nil {
		return
	}
	s.group.Unpin(s.pinned, clean)
	s.pinned = nil
	s.txn = txNone
	s.resetTx()
}

func (s *session) cleanup() {
	if s.protoErr && s.wErr == nil && s.lc == nil {
		lingerClose(s.nc)
	} else {
		s.nc.Close()
	}
	s.releaseReadBuffer()
	s.stopSubscriber()
	// A transaction or WATCH left open: the connection holds state that
	// must not reach the next user.
	s.unpin(false)
	s.resetTx() // a deferred MULTI holds no connection, but may hold a queue
	if s.group != nil {
		s.srv.pool.Release(s.group)
	}
}

// constantTimeEqual compares secrets without leaking where they differ.
func constantTimeEqual(a, b []byte) bool { return subtle.ConstantTimeCompare(a, b) == 1 }

// errorCause names an upstream failure for the errors metric.
func errorCause(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection_refused"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case err != nil && (strings.Contains(err.Error(), "NOAUTH") || strings.Contains(err.Error(), "WRONGPASS")):
		return "noauth"
	case err != nil && strings.Contains(err.Error(), "OOM"):
		return "oom"
	}
	return "connection_lost"
}

// readRetries is how often a batch of reads that timed out is sent again.
const readRetries = 2

// onlyReads reports whether every upstream command of the batch is a read.
func (s *session) onlyReads() bool {
	for _, sl := range s.slots {
		if sl.upstream && !sl.readonly {
			return false
		}
	}
	return true
}
