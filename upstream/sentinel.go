package upstream

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/keyfence/keyfence/resp"
)

// Reconnect delay while the master cannot be reached: min(attempt × step, max).
const (
	sentinelRetryStep = 100 * time.Millisecond
	sentinelRetryMax  = 3 * time.Second
)

// DefaultSentinelMaster is the master name asked for when none is given.
const DefaultSentinelMaster = "mymaster"

// SentinelConfig says how to find the upstream master through Redis Sentinel.
type SentinelConfig struct {
	Addrs    []string    // sentinels as host:port, asked in turn
	Master   string      // name of the monitored master; default DefaultSentinelMaster
	Password string      // the sentinels' requirepass; empty: none
	TLS      *tls.Config // nil: plain TCP to the sentinels
	Logger   *slog.Logger
}

// Sentinel finds the current master for every upstream connection keyfence
// opens (Config.Sentinel), so that a failover is followed without a
// restart: connections to a failed or demoted master break (Sentinel's
// reconfiguration of an old master kills its clients), and the next dial asks
// the sentinels again.
//
// Every dial asks the sentinels (raw RESP, one round trip to the first that
// answers; dials are rare because upstream connections are long-lived), then
// checks that the node itself says role:master: a sentinel's view may lag.
//
// Backoff: while dials fail, the Sentinel remembers how many failed in a row
// (attempt) and when the next one may be tried: min(attempt × 100 ms, 3 s)
// after the last failure. A dial asked for before then fails at once with an
// error saying when the next try is, rather than waiting: a failed dial has
// always returned an error to the client at once, and a client that waits
// here would hold the mutex of a shared upstream connection, so every other
// session on that connection would wait in line behind it, each for another
// round. Failing fast keeps clients' latency bounded and leaves the retry
// pace to them, while upstream and the sentinels see at most one dial per
// delay window however many clients are knocking: the first dial after the
// window claims it (like a breaker's half-open probe); concurrent failures
// of one round count as one attempt.
type Sentinel struct {
	addrs    []string
	master   string
	password string
	tls      *tls.Config
	log      *slog.Logger
	baseLog  *slog.Logger
	now      func() time.Time // time.Now; tests replace it

	mu      sync.Mutex
	first   int       // index of the sentinel asked first: the last one that answered
	current string    // the last master address verified by a dial
	attempt int       // dials failed in a row
	retryAt time.Time // no dial before this while attempt > 0
	lastErr error     // why the last dial failed
}

// NewSentinel checks cfg and returns a resolver for Config.Sentinel.
func NewSentinel(cfg SentinelConfig) (*Sentinel, error) {
	if len(cfg.Addrs) == 0 {
		return nil, errors.New("sentinel: no sentinel addresses")
	}
	for _, a := range cfg.Addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("sentinel address %q: want host:port", a)
		}
	}
	if cfg.Master == "" {
		cfg.Master = DefaultSentinelMaster
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Sentinel{
		addrs:    append([]string(nil), cfg.Addrs...),
		master:   cfg.Master,
		password: cfg.Password,
		tls:      cfg.TLS,
		log:      cfg.Logger.With("sentinel_master", cfg.Master),
		baseLog:  cfg.Logger,
		now:      time.Now,
	}, nil
}

// String describes the upstream for logs.
func (s *Sentinel) String() string {
	return "master " + s.master + " via sentinels " + strings.Join(s.addrs, ",")
}

// Config returns the settings the Sentinel was made with (defaults filled).
func (s *Sentinel) Config() SentinelConfig {
	return SentinelConfig{Addrs: append([]string(nil), s.addrs...), Master: s.master, Password: s.password, TLS: s.tls, Logger: s.baseLog}
}

// Master returns the master address of the last successful dial, "" before.
func (s *Sentinel) Master() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current
}

// reconnectDelay is the pause after attempt dials failed in a row.
func reconnectDelay(attempt int) time.Duration {
	return min(time.Duration(attempt)*sentinelRetryStep, sentinelRetryMax)
}

// Dial opens an upstream connection to the current master; Dial (dial.go)
// hands over to it when cfg.Sentinel is set. cfg is a copy, free to change.
func (s *Sentinel) Dial(ctx context.Context, cfg Config, key Key) (net.Conn, error) {
	round, err := s.admit()
	if err != nil {
		return nil, &Error{Err: err}
	}
	nc, addr, err := s.dialMaster(ctx, cfg, key)
	if err != nil {
		s.failed(round, addr, err)
		return nil, err
	}
	s.succeeded(addr)
	return nc, nil
}

// probe is dial for the breaker's recovery probe (probe.go). It skips the
// backoff, which paces the dials of many clients while the master is away;
// the probe is one dial per server at its own bounded pace, and waiting out
// a backoff window would only delay noticing the new master. A failure
// leaves the backoff as it is; a success ends it, like any verified dial,
// so the shared connections dial the new master at once when the breaker
// closes.
func (s *Sentinel) Probe(ctx context.Context, cfg Config, key Key) (net.Conn, error) {
	nc, addr, err := s.dialMaster(ctx, cfg, key)
	if err != nil {
		return nil, err
	}
	s.succeeded(addr)
	return nc, nil
}

// dialMaster asks the sentinels for the master, dials it and checks that it
// says it is the master. addr is the address tried, "" if none was given.
func (s *Sentinel) dialMaster(ctx context.Context, cfg Config, key Key) (nc net.Conn, addr string, err error) {
	addr, err = s.resolve(ctx, cfg.DialTimeout)
	if err != nil {
		return nil, "", &Error{Err: err}
	}
	cfg.Addr, cfg.Sentinel = addr, nil
	nc, err = Dial(ctx, &cfg, key)
	if err != nil {
		return nil, addr, err
	}
	if err = checkMaster(ctx, nc, cfg.DialTimeout); err != nil {
		nc.Close()
		return nil, addr, &Error{Err: fmt.Errorf("master %s at %s: %w", s.master, addr, err)}
	}
	return nc, addr, nil
}

// admit says whether a dial may be tried now, and which round of failures
// it belongs to.
func (s *Sentinel) admit() (round int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.attempt == 0 {
		return 0, nil
	}
	now := s.now()
	if wait := s.retryAt.Sub(now); wait > 0 {
		return 0, fmt.Errorf("master %s: %d failed connection attempts, next in %s (last: %s)",
			s.master, s.attempt, wait.Round(time.Millisecond), strings.TrimPrefix(s.lastErr.Error(), "upstream: "))
	}
	// This dial is the probe of this window; others fail fast until it ends.
	s.retryAt = now.Add(reconnectDelay(s.attempt))
	return s.attempt, nil
}

func (s *Sentinel) failed(round int, addr string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.attempt == round {
		s.attempt++ // concurrent failures of one round count once
	}
	delay := reconnectDelay(s.attempt)
	s.retryAt = s.now().Add(delay)
	s.lastErr = err
	s.log.Warn("upstream dial failed", "master_addr", addr, "attempt", s.attempt, "retry_in", delay, "err", err)
}

func (s *Sentinel) succeeded(addr string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if addr != s.current {
		s.log.Info("upstream master", "event", followEvent(s.current), "addr", addr, "previous", s.current)
		s.current = addr
	}
	s.attempt, s.retryAt, s.lastErr = 0, time.Time{}, nil
}

// resolve asks the sentinels in turn for the master's address, starting with
// the one that answered last. When none can be reached it falls back to the
// last verified master: dial checks its role anyway.
func (s *Sentinel) resolve(ctx context.Context, timeout time.Duration) (string, error) {
	s.mu.Lock()
	first, last := s.first, s.current
	s.mu.Unlock()
	var errs []string
	unreachable := true
	for i := range s.addrs {
		j := (first + i) % len(s.addrs)
		addr, reached, err := s.ask(ctx, s.addrs[j], timeout)
		if err == nil {
			if j != first {
				s.mu.Lock()
				s.first = j
				s.mu.Unlock()
			}
			return addr, nil
		}
		unreachable = unreachable && !reached
		errs = append(errs, err.Error())
		if ctx.Err() != nil {
			break
		}
	}
	if unreachable && last != "" && ctx.Err() == nil {
		s.log.Warn("no sentinel reachable, trying the last known master", "addr", last, "errs", strings.Join(errs, "; "))
		return last, nil
	}
	return "", fmt.Errorf("master %s: no sentinel gave its address: %s", s.master, strings.Join(errs, "; "))
}

// ask sends SENTINEL get-master-addr-by-name to one sentinel. reached says
// whether the sentinel answered at all.
func (s *Sentinel) ask(ctx context.Context, sentinel string, timeout time.Duration) (addr string, reached bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	d := net.Dialer{Timeout: timeout}
	var nc net.Conn
	if s.tls != nil {
		td := tls.Dialer{NetDialer: &d, Config: s.tls}
		nc, err = td.DialContext(ctx, "tcp", sentinel)
	} else {
		nc, err = d.DialContext(ctx, "tcp", sentinel)
	}
	if err != nil {
		return "", false, fmt.Errorf("sentinel %s: %w", sentinel, err)
	}
	defer nc.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	var req []byte
	if s.password != "" {
		req = resp.AppendCommand(req, []byte("AUTH"), []byte(s.password))
	}
	req = resp.AppendCommand(req, []byte("SENTINEL"), []byte("get-master-addr-by-name"), []byte(s.master))
	if _, err := nc.Write(req); err != nil {
		return "", false, fmt.Errorf("sentinel %s: %w", sentinel, err)
	}
	br := bufio.NewReader(nc)
	if s.password != "" {
		v, err := resp.ReadValue(br)
		if err != nil {
			return "", false, fmt.Errorf("sentinel %s: %w", sentinel, err)
		}
		if err := v.Err(); err != nil {
			return "", true, fmt.Errorf("sentinel %s: AUTH: %w", sentinel, err)
		}
	}
	v, err := resp.ReadValue(br)
	if err != nil {
		return "", false, fmt.Errorf("sentinel %s: %w", sentinel, err)
	}
	if err := v.Err(); err != nil {
		return "", true, fmt.Errorf("sentinel %s: %w", sentinel, err)
	}
	if v.Null || (v.Type == '*' && len(v.Elems) == 0) {
		return "", true, fmt.Errorf("sentinel %s: no master named %q", sentinel, s.master)
	}
	if v.Type != '*' || len(v.Elems) != 2 || len(v.Elems[0].Str) == 0 || len(v.Elems[1].Str) == 0 {
		return "", true, fmt.Errorf("sentinel %s: unexpected reply to SENTINEL get-master-addr-by-name", sentinel)
	}
	return net.JoinHostPort(string(v.Elems[0].Str), string(v.Elems[1].Str)), true, nil
}

// checkMaster asks a freshly set up upstream connection for its replication
// role (INFO, which a tenant's ACL user may run; ROLE is @admin) and fails
// unless it is the master.
func checkMaster(ctx context.Context, nc net.Conn, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = nc.SetDeadline(deadline)
	defer nc.SetDeadline(time.Time{})
	if _, err := nc.Write(resp.AppendCommand(nil, []byte("INFO"), []byte("replication"))); err != nil {
		return fmt.Errorf("INFO replication: %w", err)
	}
	// Nothing follows the reply on a fresh connection, so the reader may
	// buffer freely (as dial's does).
	v, err := resp.ReadValue(bufio.NewReader(nc))
	if err != nil {
		return fmt.Errorf("INFO replication: %w", err)
	}
	if err := v.Err(); err != nil {
		return fmt.Errorf("INFO replication: %w", err)
	}
	text := v.Str
	if v.Type == '=' && len(text) >= 4 {
		text = text[4:] // RESP3 verbatim string: "txt:"
	}
	for line := range bytes.Lines(text) {
		if role, ok := bytes.CutPrefix(bytes.TrimSpace(line), []byte("role:")); ok {
			if string(role) == "master" {
				return nil
			}
			return fmt.Errorf("not the master (role:%s): the sentinels' view is behind", role)
		}
	}
	return errors.New("INFO replication has no role line")
}

// followEvent is the log event of a master keyfence moved to: the first
// one found, or a failover followed.
func followEvent(previous string) string {
	if previous == "" {
		return "master_found"
	}
	return "failover"
}
