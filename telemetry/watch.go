package telemetry

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"
)

// limitWatch turns counters into state changes for the log: a limit that
// starts refusing clients is logged once when it starts and once when it
// has refused nobody for watchQuiet, with the count in between; the same
// for the read fallback serving cached replies. The hot path only adds to
// counters; the watcher reads them once a second.
type limitWatch struct {
	log   *slog.Logger
	edges []*edge
}

// edge is one watched counter and its state.
type edge struct {
	name     string // the value of the log line's "limit" field
	setting  string // the flag an operator may raise
	on, off  string // the messages of the two state changes
	onEvent  string
	offEvent string
	read     func() int64 // a count that moves while the limit refuses
	level    func() bool  // or, instead, whether the limit is reached now

	last    int64
	primed  bool // last holds a reading
	active  bool
	base    int64     // the count when it became active
	started time.Time // when it became active
	changed time.Time // the last time the count moved
}

// watchQuiet is how long a limit must refuse nobody before it is logged as
// no longer hit: a burst of refusals is one episode, not many.
const watchQuiet = 30 * time.Second

// watchTick is how often the watched counters are read.
const watchTick = time.Second

// init watches the counters of one tenant, or of the process: rejected
// are its refused connections, limitReplies its commands refused for a
// capacity limit (nil for the process, which runs no command), g its gauges.
func (w *limitWatch) init(log *slog.Logger, rejected *[numRejectReasons]atomic.Int64, limitReplies *atomic.Int64, g Gauges) {
	w.log = log
	limit := func(name, setting, what string, read func() int64) {
		if read == nil {
			return
		}
		w.edges = append(w.edges, &edge{name: name, setting: setting, read: read,
			on: "limit hit: " + what, off: "limit no longer hit: " + what, onEvent: "limit_hit", offEvent: "limit_cleared"})
	}
	limit("max_clients", "--max-clients", "client connections refused", rejected[RejectMaxClients].Load)
	limit("request_buffer", "--max-request-buffer-total", "clients refused, the request buffer budget is spent", g.RequestBufferRejections)
	limit("output_buffer", "--client-output-hard-limit", "clients disconnected for unread replies", g.OutputDisconnects)
	if limitReplies != nil {
		limit("capacity", "--max-pinned", "commands refused for want of a pinned connection or request buffer", limitReplies.Load)
	}
	if g.ScriptsLoaded != nil && g.ScriptsMax != nil {
		w.edges = append(w.edges, &edge{name: "max_scripts", setting: "--max-scripts",
			level: func() bool { return g.ScriptsLoaded() >= g.ScriptsMax() },
			on:    "limit hit: the tenant has loaded as many scripts as it may; EVAL of a new one is refused until SCRIPT FLUSH",
			off:   "limit no longer hit: the tenant may load scripts again", onEvent: "limit_hit", offEvent: "limit_cleared"})
	}
	if g.FallbackHits != nil {
		w.edges = append(w.edges, &edge{name: "fallback", read: g.FallbackHits,
			on: "fallback serving: reads answered from the cache while upstream fails", off: "fallback no longer serving",
			onEvent: "fallback_serving", offEvent: "fallback_stopped"})
	}
	// Nothing is read yet: the gauges may read a server that does not
	// exist until the tenant's *Metrics has been returned. The first tick
	// takes the base.
}

// RunWatch logs the state changes of m's limits and of its fallback until
// ctx is done: a sidecar's. A gateway runs Provider.RunWatch instead, which
// watches every tenant.
func (m *Metrics) RunWatch(ctx context.Context) {
	t := time.NewTicker(watchTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			m.limitRefs.tick(now)
		}
	}
}

// tick reads every counter once and logs what changed state.
func (w *limitWatch) tick(now time.Time) {
	for _, e := range w.edges {
		if e.level != nil {
			w.level(e, now)
			continue
		}
		v := e.read()
		if !e.primed {
			e.last, e.primed = v, true
			continue
		}
		switch {
		case v != e.last:
			if !e.active {
				e.active, e.base, e.started = true, e.last, now
				attrs := []any{"event", e.onEvent}
				if e.setting != "" {
					attrs = append(attrs, "limit", e.name, "setting", e.setting)
				}
				w.log.Warn(e.on, attrs...)
			}
			e.changed = now
		case e.active && now.Sub(e.changed) >= watchQuiet:
			e.active = false
			attrs := []any{"event", e.offEvent, "lasted", e.changed.Sub(e.started).Round(time.Second).String()}
			if e.setting != "" {
				attrs = append(attrs, "limit", e.name, "setting", e.setting)
				attrs = append(attrs, "refused", e.last-e.base)
			} else {
				attrs = append(attrs, "served", e.last-e.base)
			}
			w.log.Info(e.off, attrs...)
		}
		e.last = v
	}
}

// level logs the changes of a limit that is reached or not, rather than
// counted.
func (w *limitWatch) level(e *edge, now time.Time) {
	hit := e.level()
	switch {
	case hit && !e.active:
		e.active, e.started = true, now
		w.log.Warn(e.on, "event", e.onEvent, "limit", e.name, "setting", e.setting)
	case !hit && e.active:
		e.active = false
		w.log.Info(e.off, "event", e.offEvent, "limit", e.name, "setting", e.setting, "lasted", now.Sub(e.started).Round(time.Second).String())
	}
}
