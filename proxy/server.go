package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyfence/keyfence/fallback"
	"github.com/keyfence/keyfence/resp"
	"github.com/keyfence/keyfence/rewrite"
	"github.com/keyfence/keyfence/telemetry"
	"github.com/keyfence/keyfence/upstream"
)

// Config is everything a Server needs. cmd/proxy fills it from flags and
// environment; tests fill it directly.
type Config struct {
	Listen          string
	Tenant          string
	KeyFormat       string // default rewrite.DefaultKeyFormat
	Upstream        upstream.Config
	ClientPassword  string // AUTH password clients must give; empty: none
	MaxClients      int
	MaxRequestBytes int
	// GoroutinePerClient serves every client on a goroutine of its own from
	// its first command, never on the event loop (loop.go): for comparing
	// the two, and a way out should the loop misbehave.
	GoroutinePerClient bool
	// NoIOURing makes the event loop write to each client with a write(2)
	// of its own instead of submitting a turn's writes together through
	// io_uring (loop_send.go): a way out should io_uring misbehave, and how
	// tests keep the other path covered. Where io_uring is not available
	// the loop uses write(2) anyway.
	NoIOURing bool
	// ClientOutputSoftLimit and ClientOutputHardLimit bound what keyfence
	// holds for one client that it has not written yet, like Redis's
	// client-output-buffer-limit for normal clients: past the soft limit
	// the client's further commands wait until it has read what is due;
	// a batch whose replies pass the hard limit disconnects the client.
	ClientOutputSoftLimit int
	ClientOutputHardLimit int
	// MaxRequestBufferTotal bounds the request bytes buffered across all
	// clients beyond each one's initial read buffer, like Redis's
	// maxmemory-clients: a client whose partial request would pass it is
	// refused and closed.
	MaxRequestBufferTotal int64
	SharedConns           int // multiplexed upstream connections per db/protocol
	MaxPinned             int // upstream connections pinned to sessions, at most
	Logger                *slog.Logger
	Metrics               *telemetry.Metrics // nil: none recorded
	Fallback              *fallback.Config   // circuit breaker (and read cache); nil: off
	FallbackCache         bool               // with Fallback: serve cached reads while upstream fails
	FallbackSample        int                // 1 in FallbackSample cacheable reads is looked at by the cache; default DefaultFallbackSample
	TLS                   *tls.Config        // client listener TLS (ListenerTLSConfig); nil: plain TCP
	// Scripts: a script running longer than ScriptTimeout, or growing
	// upstream's Lua memory by more than ScriptMaxMemory bytes, is stopped
	// by the sandbox; a tenant may have MaxScripts distinct scripts.
	ScriptTimeout   time.Duration
	ScriptMaxMemory int64
	MaxScripts      int
	// Functions: a tenant may have MaxFunctionLibraries libraries holding
	// MaxFunctionBytes bytes of code in all (upstream keeps them in the
	// tenant's store hash and the sandbox's registry).
	MaxFunctionLibraries int
	MaxFunctionBytes     int
}

// Defaults of the memory bounds (see Config). The output limits are Redis's
// own defaults for replicas (256mb hard, 64mb soft) scaled to a proxy that
// serves thousands of application clients: an ordinary reply is far below
// them, and a client cannot make keyfence hold more than about 256 MiB.
const (
	DefaultClientOutputSoftLimit = 32 << 20
	DefaultClientOutputHardLimit = 256 << 20
	DefaultMaxRequestBufferTotal = 1 << 30
)

func (c *Config) setDefaults() {
	if c.KeyFormat == "" {
		c.KeyFormat = rewrite.DefaultKeyFormat
	}
	if c.MaxClients <= 0 {
		c.MaxClients = 10000
	}
	if c.MaxRequestBytes <= 0 {
		c.MaxRequestBytes = resp.DefaultLimits.MaxRequestBytes
	}
	if c.FallbackSample <= 0 {
		c.FallbackSample = DefaultFallbackSample
	}
	if c.ClientOutputSoftLimit <= 0 {
		c.ClientOutputSoftLimit = DefaultClientOutputSoftLimit
	}
	if c.ClientOutputHardLimit <= 0 {
		c.ClientOutputHardLimit = DefaultClientOutputHardLimit
	}
	c.ClientOutputSoftLimit = min(c.ClientOutputSoftLimit, c.ClientOutputHardLimit)
	if c.MaxRequestBufferTotal <= 0 {
		c.MaxRequestBufferTotal = DefaultMaxRequestBufferTotal
	}
	if c.SharedConns <= 0 {
		c.SharedConns = 1
	}
	if c.MaxPinned <= 0 {
		c.MaxPinned = 1000
	}
	if c.Upstream.DialTimeout <= 0 {
		c.Upstream.DialTimeout = 2 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.ScriptTimeout <= 0 {
		c.ScriptTimeout = DefaultScriptTimeout
	}
	if c.ScriptMaxMemory <= 0 {
		c.ScriptMaxMemory = DefaultScriptMaxMemory
	}
	if c.MaxScripts <= 0 {
		c.MaxScripts = DefaultMaxScripts
	}
	if c.MaxFunctionLibraries <= 0 {
		c.MaxFunctionLibraries = DefaultMaxFunctionLibraries
	}
	if c.MaxFunctionBytes <= 0 {
		c.MaxFunctionBytes = DefaultMaxFunctionBytes
	}
}

// Defaults of the script limits (see Config). The timeout stops a runaway
// script well before Redis's own busy threshold (5 s), after which every
// client would get BUSY.
const (
	DefaultScriptTimeout   = time.Second
	DefaultScriptMaxMemory = 256 << 20
	DefaultMaxScripts      = 1000
	// A tenant's function libraries: as many as an application has
	// modules, each up to rewrite.MaxScriptBytes.
	DefaultMaxFunctionLibraries = 100
	DefaultMaxFunctionBytes     = 8 << 20
)

// Server serves the clients of one tenant and proxies them to upstream: the
// clients it accepts itself (sidecar mode), or those a Gateway's lobby hands
// it after AUTH.
type Server struct {
	cfg    Config
	prefix string
	limits resp.Limits
	log    *slog.Logger

	ln      net.Listener
	started time.Time
	nextID  atomic.Int64 // client ids: per tenant, so that a tenant cannot count others' connections by them
	hub     *hub         // what this Server shares with the others of the process
	gw      *Gateway     // nil in sidecar mode
	quota   *quota       // the tenant's limits in gateway mode; nil: none

	stats          tenantStats          // the tenant's figures in INFO (info.go)
	pinnedCommands atomic.Int64         // commands sent on pinned connections
	outputDrops    atomic.Int64         // clients disconnected past the output hard limit
	budgetRefused  atomic.Int64         // clients refused for the request buffer budget
	res            *resilience          // nil when Config.Fallback is nil
	cluster        *upstream.ClusterMap // nil unless upstream is a Redis Cluster
	fallbackHits   atomic.Int64         // reads answered from the cache
	fallbackMisses atomic.Int64         // reads that found no fresh entry
	lastFailureLog atomic.Int64         // unix nanos of the last upstream failure logged

	dbMu    sync.Mutex   // one learner of upstream's database count at a time
	dbCount atomic.Int64 // upstream's databases; 0 until learned

	patternsMu sync.Mutex
	patterns   map[string]int // the tenant's patterns subscribed, for PUBSUB NUMPAT
	literals   map[string]int // upstream literal patterns (subConn.active) → connections holding one
	literalRef atomic.Int64   // sum of literals: PUBLISH's count needs no lock while it is 0

	mu       sync.Mutex
	sessions map[*session]struct{}
	pool     *upstream.Pool
	loop     *eventLoop // serves plain sessions until they need more (loop.go); nil: none; set by Serve under mu
	scripts  *scriptRegistry
	sandbox  *rewrite.Sandbox
	// The run's budgets as the sandbox takes them: milliseconds, KiB;
	// loadBudget is a function library's (its top-level code).
	scriptBudget, scriptMemory, loadBudget []byte
	functions                              functionCache
	fnStore                                string    // rewrite.FunctionStoreKey of the tenant
	readBufs                               sync.Pool // *[]byte of initialReadBuffer: see session.fillIdle
	closing                                bool
	wg                                     sync.WaitGroup
}

// hub is what every Server of one process shares: in gateway mode the
// lobby's and every tenant's, in sidecar mode the one Server's alone.
type hub struct {
	reqBuffered atomic.Int64 // read buffer bytes reserved beyond the initial ones, against --max-request-buffer-total
	clients     atomic.Int64 // client connections, against --max-clients
}

// New validates cfg and returns a server that is not yet listening.
func New(cfg Config) (*Server, error) {
	return newServer(cfg, &hub{})
}

func newServer(cfg Config, h *hub) (*Server, error) {
	cfg.setDefaults()
	prefix, err := rewrite.Prefix(cfg.KeyFormat, cfg.Tenant)
	if err != nil {
		return nil, err
	}
	if cfg.Upstream.DB < 0 {
		return nil, fmt.Errorf("upstream db %d: must not be negative", cfg.Upstream.DB)
	}
	srv := &Server{
		cfg:          cfg,
		prefix:       prefix,
		limits:       resp.Limits{MaxRequestBytes: cfg.MaxRequestBytes, MaxArgs: resp.DefaultLimits.MaxArgs},
		log:          cfg.Logger.With("tenant", cfg.Tenant),
		sessions:     make(map[*session]struct{}),
		scripts:      newScriptRegistry(cfg.MaxScripts),
		sandbox:      rewrite.NewSandbox(),
		scriptBudget: []byte(strconv.FormatInt(max(cfg.ScriptTimeout.Milliseconds(), 1), 10)),
		scriptMemory: []byte(strconv.FormatInt(max(cfg.ScriptMaxMemory>>10, 1), 10)),
		loadBudget:   []byte(strconv.FormatInt(min(max(cfg.ScriptTimeout.Milliseconds(), 1), loadTimeoutMs), 10)),
		fnStore:      rewrite.FunctionStoreKey(prefix),
		started:      time.Now(),
		hub:          h,
		readBufs: sync.Pool{New: func() any {
			b := make([]byte, 0, initialReadBuffer)
			return &b
		}},
	}
	srv.pool = upstream.NewPool(&srv.cfg.Upstream, cfg.SharedConns, cfg.MaxPinned)
	if len(cfg.Upstream.Cluster) > 0 {
		if cfg.Upstream.DB != 0 {
			return nil, errors.New("a Redis Cluster has database 0 only: REDIS_DB must be 0")
		}
		srv.cluster = upstream.NewClusterMap(&srv.cfg.Upstream)
	}
	if cfg.Fallback != nil && cfg.FallbackCache && srv.cluster != nil {
		// Its tracking connection would hear one master's invalidations.
		return nil, errors.New("the read fallback cache does not support a Redis Cluster upstream yet")
	}
	if cfg.Fallback != nil {
		res, err := newResilience(*cfg.Fallback, prefix, cfg.FallbackCache, func(from, to fallback.State) {
			srv.log.Warn("circuit breaker changed state", "event", "breaker", "from", from.String(), "to", to.String())
		})
		if err != nil {
			return nil, fmt.Errorf("fallback: %w", err)
		}
		srv.res = res
		if res.cache != nil {
			srv.cfg.Upstream.TrackingLost = srv.trackingLost
		}
	}
	return srv, nil
}

// Listen binds the client listener; Addr is valid afterwards.
func (s *Server) Listen() error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", s.cfg.Listen, err)
	}
	if s.cfg.TLS != nil {
		// Sessions of *tls.Conn clients read through it (no RawConn wait).
		ln = tls.NewListener(ln, s.cfg.TLS)
	}
	s.ln = ln
	return nil
}

// Addr returns the listener's address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve accepts clients until ctx is done or Shutdown is called. Sessions
// outlive ctx: call Shutdown to drain them.
func (s *Server) Serve(ctx context.Context) error {
	if s.ln == nil {
		if err := s.Listen(); err != nil {
			return err
		}
	}
	loop, err := newEventLoop(s)
	if err != nil {
		s.log.Warn("no event loop: every client gets a goroutine of its own", "err", err)
	}
	s.mu.Lock()
	s.loop = loop
	s.mu.Unlock()
	s.log.Info("keyfence listening", "addr", s.ln.Addr().String(), "upstream", s.cfg.Upstream.Addr, "prefix", s.prefix, "event_loop", loop != nil)
	stop := context.AfterFunc(ctx, func() { s.ln.Close() })
	defer stop()
	defer s.background(ctx)()
	return s.acceptLoop(ctx, s.ln, s.accept)
}

// background starts the tenant's work beside its sessions: reaping idle
// connection groups, sampling INFO's figures, the read cache's tracking
// connection and the breaker's recovery probe. The returned func stops it.
func (s *Server) background(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		t := time.NewTicker(idleGroupReap)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				s.reapIdleGroups()
			}
		}
	}()
	go s.sampleStats(ctx)
	if s.res != nil && s.res.cache != nil {
		go s.track(ctx)
	}
	stopRecovery := s.startRecovery(ctx) // the breaker's recovery probe (probe.go)
	return func() {
		cancel()
		stopRecovery()
	}
}

// acceptLoop hands every client ln accepts to accept until ln is closed.
func (s *Server) acceptLoop(ctx context.Context, ln net.Listener, accept func(context.Context, net.Conn)) error {
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			// Out of file descriptors and the like: back off, keep serving.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed", "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		accept(ctx, nc)
	}
}

func (s *Server) accept(ctx context.Context, nc net.Conn) {
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	sess := newSession(s, nc)
	// Not cancelled with Serve's ctx: a signal stops accepting, and
	// Shutdown drains. A command in flight (a BLPOP q 2) gets its own reply
	// within the drain timeout; only a forced Shutdown cancels it.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	sess.cancel = cancel // set before Shutdown can see the session
	s.mu.Lock()
	if s.closing || s.hub.clients.Load() >= int64(s.cfg.MaxClients) {
		s.cfg.Metrics.ClientRejected(rejectReason(s.closing))
		s.gatewayTelemetry().ClientRejected(rejectReason(s.closing))
		s.mu.Unlock()
		cancel()
		s.stats.rejected.Add(1)
		// Redis's own words, so clients treat it as they would Redis's. Off
		// the accept loop and bounded: on TLS the write runs the handshake,
		// which a silent client could stall.
		go func() {
			_ = nc.SetDeadline(time.Now().Add(time.Second))
			_, _ = nc.Write([]byte("-ERR max number of clients reached\r\n"))
			nc.Close()
		}()
		return
	}
	// finish is the end of every session, wherever it ran; sess.srv: in
	// gateway mode, the tenant it ended in.
	finish := func() {
		sess.srv.leave(sess)
		cancel()
		s.hub.clients.Add(-1)
		s.wg.Done()
	}
	serve := func() {
		sess.serve(sctx)
		finish()
	}
	s.sessions[sess] = struct{}{}
	s.hub.clients.Add(1)
	s.stats.connections.Add(1)
	s.wg.Add(1)
	looped := s.loop != nil && s.loop.detach(sess, sctx, serve, finish)
	s.mu.Unlock()
	s.cfg.Metrics.ClientAccepted()
	s.gatewayTelemetry().ClientAccepted()
	if looped {
		s.loop.adopt(sess.lc)
		return
	}
	go serve()
}

// gatewayTelemetry is the gateway's telemetry, which counts the lobby's
// connections; nil (recording nothing) in sidecar mode.
func (s *Server) gatewayTelemetry() *telemetry.Provider {
	if s.gw == nil {
		return nil
	}
	return s.gw.cfg.Telemetry
}

// UseMetrics sets Config.Metrics; call it before Serve. It lets the
// metrics be made after the server, with its Gauges.
func (s *Server) UseMetrics(m *telemetry.Metrics) { s.cfg.Metrics = m }

// leave forgets a session that ended or moved to another tenant.
func (s *Server) leave(sess *session) {
	s.mu.Lock()
	delete(s.sessions, sess)
	s.mu.Unlock()
}

// Shutdown stops accepting, lets sessions finish the batch they are in, and
// closes them; it returns when all are gone or ctx is done.
func (s *Server) Shutdown(ctx context.Context) error {
	s.drain()
	err := s.awaitSessions(ctx, s)
	s.mu.Lock()
	loop := s.loop
	s.mu.Unlock()
	if loop != nil {
		loop.close()
	}
	s.pool.Close()
	return err
}

// drain stops accepting and asks every session to end after its batch.
func (s *Server) drain() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closing = true
	if s.ln != nil {
		s.ln.Close()
	}
	for sess := range s.sessions {
		sess.closeWhenIdle()
	}
}

// disconnect ends every session now and takes no more; it returns how
// many there were.
func (s *Server) disconnect() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closing = true
	if s.loop != nil {
		s.loop.abort() // the sessions it still serves wait on upstream
	}
	for sess := range s.sessions {
		// Closing the client does not end a session that waits on
		// upstream (BLPOP k 0, XREAD BLOCK 0): end that wait too.
		sess.cancel()
		if sess.lc == nil {
			sess.nc.Close()
		}
	}
	return len(s.sessions)
}

// awaitSessions waits for the sessions s accepted to end; once ctx is done
// it disconnects those of every server in holders (where they are now: a
// gateway's lobby hands its sessions to tenants) and waits for them.
func (s *Server) awaitSessions(ctx context.Context, holders ...*Server) error {
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		for _, h := range holders {
			h.disconnect()
		}
		<-done
		return ctx.Err()
	}
}

// sessionsSnapshot returns the live sessions (for CLIENT LIST and INFO).
func (s *Server) sessionsSnapshot() []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		out = append(out, sess)
	}
	return out
}

// Ping checks that upstream answers, for /readyz.
func (s *Server) Ping(ctx context.Context) error {
	c := s.pool.Group(upstream.Key{DB: s.cfg.Upstream.DB}).Shared()
	b := upstream.NewBatch()
	if err := c.RoundTrip(ctx, b, resp.AppendCommand(nil, []byte("PING")), 1); err != nil {
		return err
	}
	if r := b.Reply(0); len(r) > 0 && r[0] == '-' {
		return errors.New(strings.TrimRight(string(r[1:]), "\r\n"))
	}
	return nil
}

// Stats are counters for tests and telemetry.
type Stats struct {
	Sessions       int    // client connections now
	PinnedConns    int    // upstream connections pinned or idle in the pool
	PinnedCommands int64  // commands sent on pinned connections so far
	Breaker        string // circuit breaker state; "" when there is none
	FallbackHits   int64  // reads answered from the cache while upstream failed
	FallbackMisses int64  // reads that found no fresh cached copy
	// ClientOutputDisconnects counts clients dropped past the output hard
	// limit (metric keyfence_client_output_disconnects_total).
	ClientOutputDisconnects int64
	RequestBufferBytes      int64 // read buffer bytes reserved from --max-request-buffer-total now
	RequestBufferRefused    int64 // clients refused because that budget was spent
	ConnGroups              int   // upstream connection groups (db × protocol × node)
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{Sessions: len(s.sessions), PinnedCommands: s.pinnedCommands.Load(),
		FallbackHits: s.fallbackHits.Load(), FallbackMisses: s.fallbackMisses.Load(),
		ClientOutputDisconnects: s.outputDrops.Load(), RequestBufferBytes: s.hub.reqBuffered.Load(),
		RequestBufferRefused: s.budgetRefused.Load(), ConnGroups: s.pool.Len(), PinnedConns: s.pool.Pinned()}
	if s.res != nil {
		st.Breaker = s.res.breaker.State().String()
	}
	return st
}

// idleGroupReap is how often idle connection groups are looked for: one
// that no session holds and that carried no command for that long goes.
const idleGroupReap = 30 * time.Second

// reapIdleGroups closes the connection groups that no session holds and
// that carried no command since the previous call. The groups of the
// configured database stay: /readyz and new clients use them.
func (s *Server) reapIdleGroups() int {
	return s.pool.Reap(func(k upstream.Key) bool { return k.DB == s.cfg.Upstream.DB && k.Node == "" })
}

// countPatterns adds delta subscribers to each pattern.
func (s *Server) countPatterns(patterns []string, delta int) {
	s.patternsMu.Lock()
	defer s.patternsMu.Unlock()
	if s.patterns == nil {
		s.patterns = map[string]int{}
	}
	for _, p := range patterns {
		if s.patterns[p] += delta; s.patterns[p] <= 0 {
			delete(s.patterns, p)
		}
	}
}

// countLiteral adds delta to the connections subscribed upstream to the
// literal pattern lit.
func (s *Server) countLiteral(lit string, delta int) {
	s.patternsMu.Lock()
	defer s.patternsMu.Unlock()
	if s.literals == nil {
		s.literals = map[string]int{}
	}
	if s.literals[lit] += delta; s.literals[lit] <= 0 {
		delete(s.literals, lit)
	}
	s.literalRef.Add(int64(delta))
}

// publishDelta is what turns upstream's count of a PUBLISH to upCh (the
// client's channel clientCh) into the count Redis would give the tenant.
// Upstream counts each of keyfence's subscribed connections once per
// literal pattern it holds that matches upCh; Redis would count each of the
// tenant's own patterns that matches, per client, which is exactly the
// pmessages keyfence fans out (patternReply). So: minus the literals, plus
// the patterns. Only this keyfence's subscribers are known here: those of
// another keyfence of the same tenant still count once per connection.
func (s *Server) publishDelta(rw *rewrite.Rewriter, clientCh []byte) int64 {
	if s.literalRef.Load() == 0 {
		return 0
	}
	upCh := append(append([]byte(nil), rw.KeyPrefix()...), clientCh...) // as appendChannel sends it
	s.patternsMu.Lock()
	defer s.patternsMu.Unlock()
	var d int64
	for lit, n := range s.literals {
		if rewrite.GlobMatch([]byte(lit), upCh) {
			d -= int64(n)
		}
	}
	if d == 0 {
		return 0
	}
	for p, n := range s.patterns {
		if rewrite.GlobMatch([]byte(rw.PatternLiteral([]byte(p))), upCh) && rewrite.GlobMatch([]byte(p), clientCh) {
			d += int64(n)
		}
	}
	return d
}

// numPatterns is PUBSUB NUMPAT for the tenant: its distinct patterns.
func (s *Server) numPatterns() int {
	s.patternsMu.Lock()
	defer s.patternsMu.Unlock()
	return len(s.patterns)
}

// databases returns how many databases upstream has, learned once by where
// SELECT stops succeeding on a connection of keyfence's own (not CONFIG GET:
// the narrowest upstream ACL user may not run CONFIG). SELECT checks an
// index against it, so that an index upstream lacks costs no connection
// group.
func (s *Server) databases(ctx context.Context) (int64, error) {
	if n := s.dbCount.Load(); n > 0 {
		return n, nil
	}
	s.dbMu.Lock()
	defer s.dbMu.Unlock()
	if n := s.dbCount.Load(); n > 0 {
		return n, nil
	}
	n, err := learnDatabases(ctx, &s.cfg.Upstream)
	if err != nil {
		return 0, err
	}
	s.dbCount.Store(n)
	return n, nil
}

func learnDatabases(ctx context.Context, cfg *upstream.Config) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 4*cfg.DialTimeout)
	defer cancel()
	c := upstream.NewConn(cfg, upstream.Key{DB: cfg.DB})
	defer c.Close()
	// The first index SELECT refuses, by doubling and then halving: about
	// six round trips for Redis's default 16, sixty at worst, once.
	valid := func(n int64) (bool, error) {
		v, err := c.Call(ctx, []byte("SELECT"), strconv.AppendInt(nil, n, 10))
		switch {
		case err != nil:
			return false, fmt.Errorf("learn databases: %w", err)
		case v.Type != '-':
			return true, nil
		case bytes.Contains(v.Str, []byte("out of range")):
			return false, nil
		}
		return false, &upstream.Error{Err: fmt.Errorf("learn databases: SELECT %d: %s", n, v.Str)}
	}
	lo := int64(cfg.DB) // valid: the connection is on it
	hi := max(16, lo+1) // find the first invalid index past lo
	for {
		ok, err := valid(hi)
		if err != nil {
			return 0, err
		}
		if !ok {
			break
		}
		lo = hi
		if hi >= math.MaxInt32 {
			return math.MaxInt32 + 1, nil
		}
		hi = min(2*hi, math.MaxInt32)
	}
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		ok, err := valid(mid)
		if err != nil {
			return 0, err
		}
		if ok {
			lo = mid
		} else {
			hi = mid
		}
	}
	return hi, nil
}
