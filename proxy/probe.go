package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/keyfence/keyfence/fallback"
	"github.com/keyfence/keyfence/resp"
	"github.com/keyfence/keyfence/upstream"
)

// The breaker's recovery probe. While the breaker is open, clients' commands
// are refused without reaching upstream, and on its own the breaker would
// let one through only after its open timeout (30 s by default). But the
// usual reason for an outage ends much sooner: a Sentinel failover promotes
// a replica within seconds, a restarted Redis listens again, a name resolves
// to a new address. So while the breaker is open, one goroutine per server
// dials upstream afresh every recoveryProbeInterval, the way the shared
// connections would (through the sentinels, so it finds a new master), and
// sends PING on that connection of its own; the first PONG closes the breaker
// (fallback.Breaker.Reset), and the next batch dials the serving upstream.
// This is an active health check un-ejecting a host, as in Envoy's outlier
// detection. The probe never carries a client's command: what it proves is
// only that upstream answers, and the clients' own traffic re-opens the
// breaker if that was not enough.
//
// Sentinel's +switch-master announcement is not subscribed to: Sentinel
// announces the switch only after the promoted replica reports role:master,
// which is what the probe checks (INFO replication, upstream/sentinel.go), so the
// announcement would save at most one probe interval, for a connection per
// server to a sentinel and its reconnection logic. A master that dies takes
// its connections with it, and Sentinel's reconfiguration of a demoted one
// kills its clients, so there is no live connection to an old master left to
// cut. The exception is a partition that leaves the old master reachable by
// keyfence but not by the sentinels: keyfence keeps writing to it until it
// is reconfigured, and what it acknowledges meanwhile is lost, as for any
// Sentinel client; the announcement could cut that short, by failing the
// shared connections to the old master, and Redis's own remedy is
// min-replicas-to-write on the master.

// recoveryProbeInterval is the pause between probes while the breaker is
// open: short enough that clients wait about one more interval than the
// failover itself, long enough that a server costs upstream (and the
// sentinels) four connections a second during an outage.
const recoveryProbeInterval = 250 * time.Millisecond

// maxProbeBackoff bounds the doubling of the first probe's delay.
const maxProbeBackoff = 16

// startRecovery runs the recovery probe until ctx is done; stop ends it and
// waits for it. Without a breaker there is nothing to do.
func (s *Server) startRecovery(ctx context.Context) (stop func()) {
	if s.res == nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.recoverUpstream(ctx)
	}()
	return func() { cancel(); <-done }
}

// recoverUpstream waits for the breaker to open, then probes until it is
// closed again. An upstream that fails again soon after a probe closed the
// breaker answers PING but not the clients' batches (overloaded, or stuck
// behind a huge reply): each time that happens, the first probe waits twice
// as long, up to the open timeout, so the breaker still sheds load from it
// and at worst behaves as it would without the probe.
func (s *Server) recoverUpstream(ctx context.Context) {
	r := s.res
	var lastReset time.Time
	flaps := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.opened:
		}
		if r.breaker.State() == fallback.Closed {
			continue // a wake-up left over from an opening already dealt with
		}
		if !lastReset.IsZero() && time.Since(lastReset) < r.openTimeout {
			flaps = min(flaps+1, maxProbeBackoff)
		} else {
			flaps = 0
		}
		if s.probeUntilClosed(ctx, min(recoveryProbeInterval<<flaps, r.openTimeout)) {
			lastReset = time.Now()
		}
	}
}

// probeUntilClosed probes upstream, first after wait and then every
// recoveryProbeInterval, until a probe succeeds or the breaker was closed
// otherwise (a client's half-open probe). It reports whether it closed the
// breaker.
func (s *Server) probeUntilClosed(ctx context.Context, wait time.Duration) bool {
	start := time.Now()
	t := time.NewTimer(wait)
	defer t.Stop()
	for probes := 1; ; probes++ {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
		if s.res.breaker.State() == fallback.Closed {
			return false
		}
		err := s.probeUpstream(ctx)
		if ctx.Err() != nil {
			return false
		}
		if err != nil {
			s.log.Debug("recovery probe failed; the circuit breaker stays open", "probes", probes, "err", err)
			t.Reset(recoveryProbeInterval)
			continue
		}
		if !s.res.breaker.Reset() {
			return false
		}
		s.log.Info("circuit breaker closed: upstream answers again", "probes", probes,
			"open_for", time.Since(start).Round(time.Millisecond), "upstream", s.upstreamName())
		return true
	}
}

// upstreamName is the address probed, for the log: the master the
// sentinels named last, or the configured address.
func (s *Server) upstreamName() string {
	if sen := s.cfg.Upstream.Sentinel; sen != nil {
		return sen.Master()
	}
	return s.cfg.Upstream.Addr
}

// probeUpstream dials upstream afresh, as the shared connections would, and
// PINGs it; with a Redis Cluster, every master of a refreshed slot map must
// answer (the breaker guards them all).
func (s *Server) probeUpstream(ctx context.Context) error {
	cfg := s.cfg.Upstream
	if s.cluster == nil {
		return pingUpstream(ctx, &cfg, upstream.Key{DB: cfg.DB})
	}
	if err := s.cluster.Refresh(ctx); err != nil {
		return err
	}
	masters, err := s.cluster.Masters(ctx)
	if err != nil {
		return err
	}
	if len(masters) == 0 {
		return errors.New("cluster: no master known")
	}
	for _, m := range masters {
		if err := pingUpstream(ctx, &cfg, upstream.Key{Node: m}); err != nil {
			return err
		}
	}
	return nil
}

// pingUpstream opens a connection of its own (AUTH, SELECT; through the
// sentinels, with the master's role checked), sends PING and wants PONG.
func pingUpstream(ctx context.Context, cfg *upstream.Config, key upstream.Key) error {
	var nc net.Conn
	var err error
	if cfg.Sentinel != nil {
		nc, err = cfg.Sentinel.Probe(ctx, *cfg, key)
	} else {
		nc, err = upstream.Dial(ctx, cfg, key)
	}
	if err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	defer nc.Close()
	stop := context.AfterFunc(ctx, func() { nc.Close() }) // shutdown need not wait for the deadline
	defer stop()
	_ = nc.SetDeadline(time.Now().Add(cfg.DialTimeout))
	if _, err := nc.Write(resp.AppendCommand(nil, []byte("PING"))); err != nil {
		return fmt.Errorf("probe: PING: %w", err)
	}
	v, err := resp.ReadValue(bufio.NewReader(nc))
	if err != nil {
		return fmt.Errorf("probe: PING: %w", err)
	}
	if v.Type != '+' || string(v.Str) != "PONG" {
		// LOADING, MASTERDOWN, an ACL that refuses PING: not serving, or
		// not provably; the breaker's own half-open probe still runs.
		return fmt.Errorf("probe: PING answered %q", fmt.Sprintf("%c%s", v.Type, v.Str))
	}
	return nil
}
