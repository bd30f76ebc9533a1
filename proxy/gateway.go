package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/keyfence/keyfence/proxy/tenants"
	"github.com/keyfence/keyfence/telemetry"
)

// GatewayConfig configures gateway mode: one listener for many tenants,
// each client's tenant chosen by AUTH <tenant> <password> (or HELLO … AUTH).
type GatewayConfig struct {
	// Server is the configuration of every tenant's Server but its Tenant
	// (and, for a tenant that names one, its upstream user), and of the
	// listener. Its Upstream user is the gateway's own: tenants without one
	// of their own run as it, and /readyz and the memory probe use it.
	Server  Config
	Tenants *tenants.File
	// Telemetry records every tenant's metrics (a tenant's start when it
	// first authenticates) and the process's; nil: none recorded. See also
	// UseTelemetry.
	Telemetry *telemetry.Provider
	// QuotaWait is how long a command over its tenant's max_ops_per_second
	// waits for its turn before it is refused; default DefaultQuotaWait.
	QuotaWait time.Duration
	// AuthConcurrency bounds the password verifications running at once
	// (argon2id costs memory and CPU); 0: half of GOMAXPROCS, at least one,
	// so that a flood of AUTHs leaves the other half to the tenants'
	// traffic.
	AuthConcurrency int
}

// DefaultQuotaWait: a client over its tenant's ops/s quota is slowed down to
// it, not failed, as long as its command would wait less than this.
const DefaultQuotaWait = time.Second

// Gateway serves many tenants on one listener. A client starts in the lobby,
// where only AUTH, HELLO, QUIT and RESET are answered, and moves into its
// tenant's Server once AUTH succeeds: from then on it is a session of that
// tenant exactly as in sidecar mode, with the tenant's namespace, upstream
// connections, scripts, read cache, metrics and quotas, and nothing else.
// Tenant Servers start at their tenant's first AUTH.
type Gateway struct {
	cfg     GatewayConfig
	hub     *hub
	lobby   *Server
	checker *tenants.Checker
	fails   authFailures
	log     *slog.Logger
	// decoy is verified for a tenant that does not exist, so that a wrong
	// tenant takes as long to refuse as a wrong password.
	decoy string

	authFailed atomic.Int64 // AUTHs refused
	lastLog    atomic.Int64 // unix nanos of the last refused AUTH logged
	unlogged   atomic.Int64 // refused AUTHs not logged since

	mu      sync.Mutex
	file    *tenants.File
	tenants map[string]*gatewayTenant
	ctx     context.Context // Serve's: the tenants' background work runs under it
	closing bool
}

// gatewayTenant is a tenant that has authenticated at least once.
type gatewayTenant struct {
	spec tenants.Tenant // as loaded; guarded by Gateway.mu
	srv  *Server
	stop func() // ends the tenant's background work
}

// end stops the tenant's Server once its sessions are gone.
func (t *gatewayTenant) end() {
	t.stop()
	t.srv.pool.Close()
	t.srv.cfg.Metrics.Close()
}

// quota is a tenant's limits in gateway mode, changed in place on reload.
type quota struct {
	maxConns atomic.Int64                 // 0: unlimited
	limiter  atomic.Pointer[rate.Limiter] // nil: unlimited ops/s
	wait     time.Duration
}

func (q *quota) set(l tenants.Limits) {
	q.maxConns.Store(int64(l.MaxConnections))
	if l.MaxOpsPerSecond <= 0 {
		q.limiter.Store(nil)
		return
	}
	if lim := q.limiter.Load(); lim != nil {
		lim.SetLimit(rate.Limit(l.MaxOpsPerSecond))
		lim.SetBurst(l.Burst)
		return
	}
	q.limiter.Store(rate.NewLimiter(rate.Limit(l.MaxOpsPerSecond), l.Burst))
}

// NewGateway validates cfg and returns a gateway that is not yet listening.
func NewGateway(cfg GatewayConfig) (*Gateway, error) {
	if cfg.Tenants == nil || len(cfg.Tenants.Tenants) == 0 {
		return nil, errors.New("gateway: no tenants")
	}
	if cfg.QuotaWait <= 0 {
		cfg.QuotaWait = DefaultQuotaWait
	}
	if cfg.AuthConcurrency <= 0 {
		cfg.AuthConcurrency = max(1, runtime.GOMAXPROCS(0)/2)
	}
	cfg.Server.setDefaults()
	decoy, err := tenants.HashPassword([]byte("keyfence decoy password"))
	if err != nil {
		return nil, err
	}
	g := &Gateway{
		cfg:     cfg,
		hub:     &hub{},
		checker: tenants.NewChecker(cfg.AuthConcurrency),
		log:     cfg.Server.Logger.With("mode", "gateway"),
		decoy:   decoy,
		file:    cfg.Tenants,
		tenants: map[string]*gatewayTenant{},
	}
	// The lobby holds clients until they authenticate. It has a tenant's
	// shape (a prefix, the gateway's upstream for /readyz) but its
	// sessions are never authenticated, so nothing of theirs is forwarded.
	lobby := cfg.Server
	lobby.Tenant = lobbyTenant
	lobby.Fallback, lobby.FallbackCache = nil, false
	g.lobby, err = newServer(lobby, g.hub)
	if err != nil {
		return nil, err
	}
	g.lobby.gw = g
	g.lobby.log = g.log
	// Fail at start-up, not at a tenant's first AUTH, on a configuration
	// that no tenant's Server would accept. What all tenants share is
	// checked once, with the first; the others only for what is their own
	// (id, upstream user), without a read cache each: its slot arrays cost
	// memory, and with full-size caches 1,000 tenants took 4.5 s and
	// 4.5 GiB of garbage to start.
	for i, t := range cfg.Tenants.Tenants {
		c := g.tenantConfig(t)
		if i > 0 {
			c.Fallback, c.FallbackCache = nil, false
		}
		if _, err := newServer(c, g.hub); err != nil {
			return nil, fmt.Errorf("gateway: tenant %q: %w", t.ID, err)
		}
	}
	return g, nil
}

// lobbyTenant names the lobby in logs; it is never a namespace anything is
// sent to.
const lobbyTenant = "-"

// tenantConfig is the Server configuration of tenant t.
func (g *Gateway) tenantConfig(t tenants.Tenant) Config {
	c := g.cfg.Server
	c.Tenant = t.ID
	c.ClientPassword = ""
	c.Metrics = nil
	if t.UpstreamUser != "" {
		c.Upstream.Username, c.Upstream.Password = t.UpstreamUser, t.UpstreamPassword
	}
	if c.Fallback != nil {
		// Each tenant's read cache is its own (nothing cached crosses),
		// and --fallback-max-bytes is the gateway's: an even share each,
		// so that a hundred tenants do not hold a hundred full caches.
		fb := *c.Fallback
		fb.MaxBytes = max(fb.MaxBytes/int64(max(len(g.file.Tenants), 1)), minTenantCacheBytes)
		c.Fallback = &fb
	}
	return c
}

// minTenantCacheBytes is the least read cache a gateway's tenant gets,
// however many tenants share --fallback-max-bytes.
const minTenantCacheBytes = 256 << 10

// Listen binds the client listener; Addr is valid afterwards.
func (g *Gateway) Listen() error { return g.lobby.Listen() }

// Addr returns the listener's address.
func (g *Gateway) Addr() net.Addr { return g.lobby.Addr() }

// Serve accepts clients until ctx is done or Shutdown is called. Sessions
// outlive ctx: call Shutdown to drain them.
func (g *Gateway) Serve(ctx context.Context) error {
	if g.lobby.ln == nil {
		if err := g.Listen(); err != nil {
			return err
		}
	}
	g.mu.Lock()
	g.ctx = ctx
	g.mu.Unlock()
	g.log.Info("keyfence listening", "addr", g.Addr().String(), "upstream", g.cfg.Server.Upstream.Addr,
		"tenants", len(g.cfg.Tenants.Tenants))
	stop := context.AfterFunc(ctx, func() { g.lobby.ln.Close() })
	defer stop()
	return g.lobby.acceptLoop(ctx, g.lobby.ln, g.lobby.accept)
}

// errAuthFailed is Redis's reply to a wrong user or password, word for word.
const errAuthFailed = "WRONGPASS invalid username-password pair or user is disabled."

// errTenantFull is Redis's reply past maxclients: the tenant's
// max_connections is that tenant's maxclients.
const errTenantFull = "ERR max number of clients reached"

// authenticate checks a tenant's password and returns its Server, started
// if it was not. A refusal is counted and logged at most once a second; it
// is a refusal error, which says how long the session holds its reply
// (holdRefusal) when the client's address keeps failing.
func (g *Gateway) authenticate(ctx context.Context, addr net.Addr, user string, password []byte) (*Server, error) {
	g.mu.Lock()
	spec, ok := g.file.Lookup(user)
	var hash string
	if ok {
		hash = spec.PasswordHash
	}
	g.mu.Unlock()
	if !ok {
		hash = g.decoy
	}
	good, err := g.checker.Check(ctx, hash, password)
	if err != nil { // the session is being shut down while it waited for a check
		return nil, fmt.Errorf("ERR keyfence: AUTH interrupted: %w", err)
	}
	if !good || !ok {
		return nil, refusal{delay: g.refused(addr, user, ok)}
	}
	// A success does not clear the address's failures: a tenant guessing
	// another's password could otherwise reset its slowdown with its own.
	return g.start(user)
}

// refusal is a refused AUTH: Redis's error, whose reply waits delay.
type refusal struct{ delay time.Duration }

func (refusal) Error() string { return errAuthFailed }

// refused accounts for a failed AUTH and returns how long its reply waits:
// as long as the address has earned.
func (g *Gateway) refused(addr net.Addr, user string, known bool) time.Duration {
	g.authFailed.Add(1)
	if known {
		g.cfg.Telemetry.AuthFailed(telemetry.AuthWrongPassword)
	} else {
		g.cfg.Telemetry.AuthFailed(telemetry.AuthUnknownTenant)
	}
	delay := g.fails.note(addr, time.Now())
	now := time.Now().UnixNano()
	if last := g.lastLog.Load(); now-last >= int64(time.Second) && g.lastLog.CompareAndSwap(last, now) {
		reason := "wrong password"
		if !known {
			reason = "unknown tenant"
			user = "" // not a tenant: whatever the client sent stays out of the log
		}
		g.log.Warn("AUTH refused", "reason", reason, "tenant", user, "addr", addrString(addr),
			"slowed_by", delay, "refused_unlogged", g.unlogged.Swap(0))
	} else {
		g.unlogged.Add(1)
	}
	return delay
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// start returns tenant id's Server, starting it at its first AUTH.
func (g *Gateway) start(id string) (*Server, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closing {
		return nil, errors.New("ERR keyfence: the gateway is shutting down")
	}
	if t, ok := g.tenants[id]; ok {
		return t.srv, nil
	}
	spec, ok := g.file.Lookup(id)
	if !ok { // removed by a reload since the password was checked
		return nil, errors.New(errAuthFailed)
	}
	srv, err := newServer(g.tenantConfig(*spec), g.hub)
	if err != nil {
		return nil, fmt.Errorf("ERR keyfence: tenant %s cannot start: %w", id, err)
	}
	srv.gw = g
	srv.quota = &quota{wait: g.cfg.QuotaWait}
	srv.quota.set(spec.Limits)
	t := &gatewayTenant{spec: *spec, srv: srv}
	if p := g.cfg.Telemetry; p != nil {
		gauges := srv.Gauges()
		// The request buffer budget is the process's (ProcessGauges).
		gauges.RequestBufferBytes, gauges.RequestBufferLimit = nil, nil
		m, err := p.Tenant(id, gauges)
		if err != nil {
			return nil, fmt.Errorf("ERR keyfence: tenant %s metrics: %w", id, err)
		}
		srv.cfg.Metrics = m
	}
	ctx := g.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	t.stop = srv.background(ctx)
	g.tenants[id] = t
	srv.log.Info("tenant started", "upstream_user", spec.UpstreamUser)
	return srv, nil
}

// Reload applies a new tenants file: removed tenants' clients are
// disconnected, and so are those of a tenant whose upstream user changed
// (their upstream connections run as the old one); changed passwords apply
// to the next AUTH, changed limits at once. Nobody else is disconnected.
func (g *Gateway) Reload(file *tenants.File) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.file = file
	var removed []string
	for id, t := range g.tenants {
		spec, ok := file.Lookup(id)
		switch {
		case !ok:
			removed = append(removed, id)
			delete(g.tenants, id)
			go g.retire(t, "removed from the tenants file")
		case spec.UpstreamUser != t.spec.UpstreamUser || spec.UpstreamPassword != t.spec.UpstreamPassword:
			delete(g.tenants, id)
			go g.retire(t, "its upstream user changed")
		default:
			t.spec = *spec
			t.srv.quota.set(spec.Limits)
		}
	}
	g.log.Info("tenants file reloaded", "tenants", len(file.Tenants), "running", len(g.tenants), "removed_running", len(removed))
}

// retire disconnects a tenant's clients and stops its Server.
func (g *Gateway) retire(t *gatewayTenant, why string) {
	srv := t.srv
	n := srv.disconnect()
	srv.log.Info("tenant stopped: its clients are disconnected", "why", why, "clients", n)
	// The sessions end on their own goroutines; the connections they
	// hold go back to the pool before it closes.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if srv.Stats().Sessions == 0 {
			break
		}
	}
	t.end()
}

// Shutdown stops accepting, lets every session finish the batch it is in,
// and closes them; it returns when all are gone or ctx is done.
func (g *Gateway) Shutdown(ctx context.Context) error {
	g.mu.Lock()
	g.closing = true
	running := make([]*gatewayTenant, 0, len(g.tenants))
	for _, t := range g.tenants {
		running = append(running, t)
	}
	g.mu.Unlock()
	servers := []*Server{g.lobby}
	for _, t := range running {
		servers = append(servers, t.srv)
	}
	for _, srv := range servers {
		srv.drain()
	}
	// Every session was accepted by the lobby: its wait group counts them all.
	err := g.lobby.awaitSessions(ctx, servers...)
	for _, t := range running {
		t.end()
	}
	g.lobby.pool.Close()
	return err
}

// GatewayStats are the gateway's counters, for tests and telemetry.
type GatewayStats struct {
	Clients    int64 // client connections, every tenant's and the lobby's
	Lobby      int   // connections not authenticated yet
	Tenants    int   // tenants started (authenticated at least once, not removed)
	AuthFailed int64 // AUTHs refused
}

// Stats returns the gateway's counters.
func (g *Gateway) Stats() GatewayStats {
	g.mu.Lock()
	n := len(g.tenants)
	g.mu.Unlock()
	return GatewayStats{Clients: g.hub.clients.Load(), Lobby: g.lobby.Stats().Sessions, Tenants: n, AuthFailed: g.authFailed.Load()}
}

// Tenant returns tenant id's Server once it has started, for tests and
// telemetry.
func (g *Gateway) Tenant(id string) (*Server, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	t, ok := g.tenants[id]
	if !ok {
		return nil, false
	}
	return t.srv, true
}

// UseTelemetry sets GatewayConfig.Telemetry; call it before Serve. It lets
// the provider be made after the gateway, with its ProcessGauges.
func (g *Gateway) UseTelemetry(p *telemetry.Provider) { g.cfg.Telemetry = p }

// ProcessGauges are the gateway's own figures, beside every tenant's: the
// connections not authenticated yet, and the request buffer budget all
// tenants share.
func (g *Gateway) ProcessGauges() telemetry.Gauges {
	budget := g.cfg.Server.MaxRequestBufferTotal
	return telemetry.Gauges{
		Sessions:                func() int64 { return int64(g.lobby.Stats().Sessions) },
		RequestBufferBytes:      func() int64 { return g.hub.reqBuffered.Load() },
		RequestBufferLimit:      func() int64 { return budget },
		RequestBufferRejections: func() int64 { return g.lobby.budgetRefused.Load() },
	}
}

// Ping checks that upstream answers the gateway's own user, for /readyz.
func (g *Gateway) Ping(ctx context.Context) error { return g.lobby.Ping(ctx) }

// ProbeUpstream reads upstream's memory as the gateway's own user.
func (g *Gateway) ProbeUpstream(ctx context.Context) (telemetry.UpstreamMemory, error) {
	return g.lobby.ProbeUpstream(ctx)
}

// authFailures remembers recent AUTH failures per client address, so that
// guessing passwords from one address gets slower and slower while the
// applications at other addresses are not slowed at all.
type authFailures struct {
	mu     sync.Mutex
	byAddr map[string]*failureRun
}

type failureRun struct {
	n    int
	last time.Time
}

// Failures from one address: the first authFreeFailures within
// authFailureWindow are answered at once, then each waits twice as long as
// the one before, from authFirstDelay up to authMaxDelay. At most
// authMaxAddrs addresses are remembered.
const (
	authFreeFailures  = 3
	authFailureWindow = time.Minute
	authFirstDelay    = 100 * time.Millisecond
	authMaxDelay      = 5 * time.Second
	authMaxAddrs      = 10000
)

func failureKey(addr net.Addr) string {
	if ta, ok := addr.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	return addrString(addr)
}

// note records a failure from addr at now and returns how long its reply
// waits.
func (f *authFailures) note(addr net.Addr, now time.Time) time.Duration {
	key := failureKey(addr)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.byAddr == nil {
		f.byAddr = map[string]*failureRun{}
	}
	r := f.byAddr[key]
	if r == nil || now.Sub(r.last) > authFailureWindow {
		if r == nil && len(f.byAddr) >= authMaxAddrs {
			f.prune(now)
		}
		r = &failureRun{}
		f.byAddr[key] = r
	}
	r.n++
	r.last = now
	if r.n <= authFreeFailures {
		return 0
	}
	d := authFirstDelay << min(r.n-authFreeFailures-1, 10)
	return min(d, authMaxDelay)
}

// prune forgets addresses whose last failure is out of the window, or
// every address when all are recent (many addresses failing at once).
func (f *authFailures) prune(now time.Time) {
	for k, r := range f.byAddr {
		if now.Sub(r.last) > authFailureWindow {
			delete(f.byAddr, k)
		}
	}
	if len(f.byAddr) >= authMaxAddrs {
		clear(f.byAddr)
	}
}
