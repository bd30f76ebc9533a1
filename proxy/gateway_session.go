package proxy

import (
	"context"
	"time"

	"golang.org/x/time/rate"

	"github.com/keyfence/keyfence/rewrite"
)

// The session's side of gateway mode (gateway.go): logging in moves the
// session into its tenant's Server, and a tenant's ops/s quota paces it.

// login checks AUTH's (or HELLO AUTH's) credentials and reports the error
// Redis would give when they are wrong. In sidecar mode they are checked
// against --client-password; in gateway mode against the tenants file, and
// the session moves into the tenant's Server.
func (s *session) login(ctx context.Context, creds [][]byte) (bool, string) {
	g := s.srv.gw
	if g == nil {
		return s.checkAuth(creds)
	}
	var user string
	var password []byte
	switch len(creds) {
	case 1: // AUTH <password> is the default user's, as in Redis
		user, password = "default", creds[0]
	case 2:
		user, password = string(creds[0]), creds[1]
	default:
		return false, "ERR syntax error"
	}
	to, err := g.authenticate(ctx, s.remoteAddr, user, password)
	if err != nil {
		if r, ok := err.(refusal); ok && r.delay > 0 {
			s.holdRefusal(ctx, r.delay)
		}
		return false, err.Error()
	}
	if to == s.srv { // AUTH again as the same tenant: nothing changes
		return true, ""
	}
	if !s.moveTo(ctx, to) {
		if !s.authed {
			// Redis closes a client past maxclients; a tenant's
			// max_connections is its maxclients.
			s.quit = true
		}
		return false, errTenantFull
	}
	return true, ""
}

// holdRefusal holds a refused AUTH's reply for d. What is due to the client
// goes out first, the replies to its earlier failures included: a client
// that has gone away is noticed there (the write fails) and the session
// ends, instead of verifying and holding, for nobody, every AUTH left in
// the pipeline it sent before leaving (the next one's verification at
// most: the first write to a closed peer may still succeed).
func (s *session) holdRefusal(ctx context.Context, d time.Duration) {
	s.flushAndWrite(ctx)
	if s.wErr != nil {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// moveTo makes the session one of to's, another tenant's Server or the
// lobby, dropping what it held for the old one as RESET drops it: the
// transaction, WATCH, subscriptions, the selected database. What the old
// tenant's commands before this one sent is flushed first. It reports false,
// changing nothing, when to is full or closing.
func (s *session) moveTo(ctx context.Context, to *Server) bool {
	s.flushBatch(ctx)
	if !to.admit(s) {
		to.cfg.Metrics.ClientRejected(rejectReason(false))
		return false
	}
	s.stopSubscriber()
	s.dropTransaction(ctx)
	if s.group != nil {
		s.srv.pool.Release(s.group)
		s.group = nil
	}
	s.srv.leave(s)
	s.srv = to
	s.rw = rewrite.NewRewriter(to.prefix)
	s.tel = to.cfg.Metrics.NewBatch()
	s.infoMu.Lock()
	s.db = to.cfg.Upstream.DB
	// Ids count a tenant's own connections only: a shared counter would
	// tell a tenant how many connections the others open.
	s.id = to.nextID.Add(1)
	s.infoMu.Unlock()
	s.authed = to != to.gw.lobby
	s.selectGroup()
	to.cfg.Metrics.ClientAccepted()
	return true
}

// admit adds sess to the server's sessions unless it is closing or, in
// gateway mode, the tenant is at its max_connections.
func (s *Server) admit(sess *session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	if q := s.quota; q != nil {
		if n := q.maxConns.Load(); n > 0 && int64(len(s.sessions)) >= n {
			s.stats.rejected.Add(1)
			return false
		}
	}
	s.sessions[sess] = struct{}{}
	s.stats.connections.Add(1)
	return true
}

// errOverQuota refuses a command that would wait longer than
// GatewayConfig.QuotaWait for its tenant's ops/s quota.
const errOverQuota = "ERR keyfence: the tenant is over its max_ops_per_second quota; retry later"

// withinQuota paces the session to its tenant's max_ops_per_second: a
// command over it waits its turn (what is due to the client goes out
// first), up to the quota's wait; past that it is refused, so that a tenant
// flooding keyfence slows itself down and nobody else.
func (s *session) withinQuota(ctx context.Context, lim *rate.Limiter, most time.Duration) bool {
	r := lim.Reserve()
	if !r.OK() {
		return false
	}
	d := r.Delay()
	if d == 0 {
		return true
	}
	if d > most {
		r.Cancel()
		return false
	}
	s.flushAndWrite(ctx)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		r.Cancel()
		return false
	}
}
