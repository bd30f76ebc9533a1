package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/keyfence/keyfence/telemetry"
	"github.com/keyfence/keyfence/upstream"
)

// What the operations side (cmd/proxy's telemetry wiring) reads from the
// server beyond Stats: the upstream probe, and a few gauges. Kept in one
// place so that the proxy's other files carry only one-line hooks.

// ProbeUpstream checks upstream for the prober: PING on a connection of the
// configured database (what /readyz asks too), then INFO memory for
// used_memory and maxmemory. An upstream that answers PING but refuses INFO
// (an ACL user without it) is up, with its memory unknown. On a Redis
// Cluster it is the node the configured database's connections reach.
func (s *Server) ProbeUpstream(ctx context.Context) (telemetry.UpstreamMemory, error) {
	if err := s.Ping(ctx); err != nil {
		return telemetry.UpstreamMemory{}, err
	}
	c := s.pool.Group(upstream.Key{DB: s.cfg.Upstream.DB}).Shared()
	v, err := c.Call(ctx, []byte("INFO"), []byte("memory"))
	if err != nil {
		return telemetry.UpstreamMemory{}, fmt.Errorf("INFO memory: %w", err)
	}
	if v.Type == '-' || v.Null {
		return telemetry.UpstreamMemory{}, nil // refused: up, memory unknown
	}
	return parseInfoMemory(v.Str)
}

// parseInfoMemory reads used_memory and maxmemory from INFO's text.
func parseInfoMemory(info []byte) (telemetry.UpstreamMemory, error) {
	var mem telemetry.UpstreamMemory
	var seenUsed, seenMax bool
	for _, line := range bytes.Split(info, []byte("\n")) {
		k, v, ok := bytes.Cut(bytes.TrimRight(line, "\r"), []byte(":"))
		if !ok {
			continue
		}
		switch string(k) {
		case "used_memory":
			n, err := strconv.ParseInt(string(v), 10, 64)
			if err != nil {
				return mem, fmt.Errorf("INFO memory: used_memory %q: %w", v, err)
			}
			mem.Used, seenUsed = n, true
		case "maxmemory":
			n, err := strconv.ParseInt(string(v), 10, 64)
			if err != nil {
				return mem, fmt.Errorf("INFO memory: maxmemory %q: %w", v, err)
			}
			mem.Max, seenMax = n, true
		}
	}
	if !seenUsed || !seenMax {
		return mem, errors.New("INFO memory: no used_memory or maxmemory")
	}
	mem.Known = true
	return mem, nil
}

// PinnedIdle counts the pinned connections idle in the pools (part of
// Stats().PinnedConns).
func (s *Server) PinnedIdle() int { return s.pool.PinnedIdle() }

// ScriptsLoaded counts the tenant's distinct scripts (--max-scripts bounds it).
func (s *Server) ScriptsLoaded() int {
	s.scripts.mu.RLock()
	defer s.scripts.mu.RUnlock()
	return len(s.scripts.bySHA)
}

// FallbackCacheStats returns the read cache's figures; ok is false when
// there is no cache (--fallback off).
func (s *Server) FallbackCacheStats() (st telemetry.CacheStats, ok bool) {
	if s.res == nil || s.res.cache == nil {
		return st, false
	}
	c := s.res.cache.Stats()
	return telemetry.CacheStats{Bytes: c.Bytes, Entries: int64(c.Entries), Evictions: int64(c.Evictions)}, true
}

// rejectReason names why accept refused a client, for the metric.
func rejectReason(closing bool) int {
	if closing {
		return telemetry.RejectDraining
	}
	return telemetry.RejectMaxClients
}

// Gauges are the server's figures as the metrics read them.
func (s *Server) Gauges() telemetry.Gauges {
	maxPinned, maxScripts, budget := int64(s.cfg.MaxPinned), int64(s.cfg.MaxScripts), s.cfg.MaxRequestBufferTotal
	g := telemetry.Gauges{
		Sessions:                func() int64 { return int64(s.Stats().Sessions) },
		PinnedConns:             func() int64 { return int64(s.Stats().PinnedConns) },
		PinnedIdle:              func() int64 { return int64(s.PinnedIdle()) },
		PinnedMax:               func() int64 { return maxPinned },
		OutputDisconnects:       func() int64 { return s.Stats().ClientOutputDisconnects },
		RequestBufferRejections: func() int64 { return s.Stats().RequestBufferRefused },
		RequestBufferBytes:      func() int64 { return s.Stats().RequestBufferBytes },
		RequestBufferLimit:      func() int64 { return budget },
		ScriptsLoaded:           func() int64 { return int64(s.ScriptsLoaded()) },
		ScriptsMax:              func() int64 { return maxScripts },
	}
	if s.res != nil { // the breaker is on
		g.Breaker = func() int64 { return breakerLevel(s.res.breaker.State().String()) }
		g.FallbackHits = func() int64 { return s.fallbackHits.Load() }
		g.FallbackMisses = func() int64 { return s.fallbackMisses.Load() }
		if s.res.cache != nil {
			g.FallbackCache = func() telemetry.CacheStats {
				st, _ := s.FallbackCacheStats()
				return st
			}
		}
	}
	return g
}

// breakerLevel maps the breaker's state to the gauge's numbers.
func breakerLevel(state string) int64 {
	switch state {
	case "half-open":
		return 1
	case "open":
		return 2
	}
	return 0
}
