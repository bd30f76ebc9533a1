package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/keyfence/keyfence/bench/internal/resp"
)

// Histogram range, in microseconds: 1 µs to 60 s with three significant
// digits, so p99.9 of a sub-millisecond loopback run is still exact to 0.1 %.
const (
	histMin    = 1
	histMax    = 60_000_000
	histDigits = 3
)

// keyPrefix is the application's key prefix. keyfence adds the tenant's
// namespace in front of it; direct Redis and twemproxy see it as is.
const keyPrefix = "lg:"

func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(histMin, histMax, histDigits) }

func record(h *hdrhistogram.Histogram, d time.Duration) {
	us := d.Microseconds()
	if us < histMin {
		us = histMin
	}
	if us > histMax {
		us = histMax
	}
	_ = h.RecordValue(us)
}

// workload describes the mixed read/write traffic.
type workload struct {
	readRatio          float64
	keys               uint64
	zipfS              float64
	valueMin, valueMax int
	seed               uint64
	// payload is shared, read-only value bytes; every SET sends a prefix of
	// it, so that generating values costs nothing per request.
	payload []byte
}

func newWorkload(readRatio float64, keys uint64, zipfS float64, vmin, vmax int, seed uint64) (*workload, error) {
	switch {
	case readRatio < 0 || readRatio > 1:
		return nil, fmt.Errorf("read ratio %v: want 0..1", readRatio)
	case keys < 2:
		return nil, fmt.Errorf("keys %d: want at least 2", keys)
	case zipfS <= 1:
		return nil, fmt.Errorf("zipf exponent %v: must be > 1", zipfS)
	case vmin < 1 || vmax < vmin:
		return nil, fmt.Errorf("value sizes %d..%d: want 1 <= min <= max", vmin, vmax)
	}
	wl := &workload{readRatio: readRatio, keys: keys, zipfS: zipfS, valueMin: vmin, valueMax: vmax, seed: seed}
	r := rand.New(rand.NewPCG(seed, 0x6b6579))
	wl.payload = make([]byte, vmax)
	for i := range wl.payload {
		wl.payload[i] = 'a' + byte(r.IntN(26))
	}
	return wl, nil
}

// worker owns one connection and the state to drive it without sharing.
type worker struct {
	wl    *workload
	ep    int
	conn  *resp.Conn
	rng   *rand.Rand
	zipf  *rand.Zipf
	key   []byte
	read  *hdrhistogram.Histogram
	write *hdrhistogram.Histogram
	// serverErrs counts error replies; firstErr keeps one for the report.
	serverErrs int64
	firstErr   string
	// broken is the transport error that ended this worker early, if any.
	broken error
	maxLag time.Duration
}

func (wl *workload) newWorker(id, ep int, conn *resp.Conn) *worker {
	r := rand.New(rand.NewPCG(wl.seed, uint64(id)+1))
	return &worker{
		wl: wl, ep: ep, conn: conn, rng: r,
		zipf:  rand.NewZipf(r, wl.zipfS, 1, wl.keys-1),
		key:   make([]byte, 0, 32),
		read:  newHist(),
		write: newHist(),
	}
}

// valueSize draws from a log-uniform distribution: as many values of
// 32–64 B as of 2–4 KiB, closer to real caches than a uniform spread.
func (w *worker) valueSize() int {
	lo, hi := math.Log(float64(w.wl.valueMin)), math.Log(float64(w.wl.valueMax)+1)
	n := int(math.Exp(lo + w.rng.Float64()*(hi-lo)))
	return min(max(n, w.wl.valueMin), w.wl.valueMax)
}

// do sends one GET or SET and waits for its reply.
func (w *worker) do() (isRead bool, err error) {
	isRead = w.queue()
	if err := w.conn.Flush(); err != nil {
		return isRead, err
	}
	return isRead, w.conn.Skip()
}

// queue writes one GET or SET into the connection's buffer, unsent.
func (w *worker) queue() (isRead bool) {
	w.key = strconv.AppendUint(append(w.key[:0], keyPrefix...), w.zipf.Uint64(), 10)
	isRead = w.rng.Float64() < w.wl.readRatio
	if isRead {
		w.conn.WriteArray(2)
		w.conn.WriteBulkString("GET")
		w.conn.WriteBulk(w.key)
	} else {
		w.conn.WriteArray(3)
		w.conn.WriteBulkString("SET")
		w.conn.WriteBulk(w.key)
		w.conn.WriteBulk(w.wl.payload[:w.valueSize()])
	}
	return isRead
}

// account records one finished request; it returns false when the worker
// must stop because its connection is no longer usable.
func (w *worker) account(isRead bool, lat time.Duration, err error) bool {
	switch {
	case err == nil:
	case resp.IsServerError(err):
		w.serverErrs++
		if w.firstErr == "" {
			w.firstErr = err.Error()
		}
		return true
	default:
		w.broken = err
		return false
	}
	if isRead {
		record(w.read, lat)
	} else {
		record(w.write, lat)
	}
	return true
}

// preload writes every key once per endpoint, pipelined, so that reads hit
// values of the intended sizes instead of misses.
func preload(ctx context.Context, wl *workload, ep endpoint) error {
	addr := ep.Addr
	c, err := ep.dial(ctx, false)
	if err != nil {
		return fmt.Errorf("preload: %w", err)
	}
	defer c.Close()
	w := wl.newWorker(-1, 0, c)
	const batch = 128
	for start := uint64(0); start < wl.keys; start += batch {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("preload: %w", err)
		}
		end := min(start+batch, wl.keys)
		for k := start; k < end; k++ {
			w.key = strconv.AppendUint(append(w.key[:0], keyPrefix...), k, 10)
			c.WriteArray(3)
			c.WriteBulkString("SET")
			c.WriteBulk(w.key)
			c.WriteBulk(wl.payload[:w.valueSize()])
		}
		if err := c.Flush(); err != nil {
			return fmt.Errorf("preload %s: %w", addr, err)
		}
		for k := start; k < end; k++ {
			if err := c.Skip(); err != nil {
				return fmt.Errorf("preload %s: %w", addr, err)
			}
		}
	}
	return nil
}

// loadSpec bounds one measurement. Closed loop when rate is 0.
type loadSpec struct {
	conns    int
	maxOps   int64
	duration time.Duration
	rate     float64 // requests per second for the whole group
}

// loadResult is what the workers of one group measured.
type loadResult struct {
	elapsed time.Duration
	workers []*worker
	// scheduled is how many requests the fixed-rate schedule held.
	scheduled int64
}

// runLoad dials spec.conns connections spread over the group's endpoints
// and drives them until maxOps requests or the duration, whichever comes
// first.
func runLoad(ctx context.Context, wl *workload, g group, spec loadSpec) (loadResult, error) {
	var res loadResult
	// The whole phase gets a hard deadline: the load itself plus time for
	// stragglers and a stuck server to be cut off.
	ctx, cancel := context.WithTimeout(ctx, spec.duration+30*time.Second)
	defer cancel()
	for i := 0; i < spec.conns; i++ {
		ep := i % len(g.Endpoints)
		c, err := g.Endpoints[ep].dial(ctx, false)
		if err != nil {
			for _, w := range res.workers {
				w.conn.Close()
			}
			return res, fmt.Errorf("%s: %w", g.Name, err)
		}
		res.workers = append(res.workers, wl.newWorker(i, ep, c))
	}
	defer func() {
		for _, w := range res.workers {
			w.conn.Close()
		}
	}()

	var issued atomic.Int64
	start := time.Now()
	deadline := start.Add(spec.duration)
	if spec.rate > 0 {
		res.scheduled = min(spec.maxOps, int64(spec.rate*spec.duration.Seconds()))
	}
	var wg sync.WaitGroup
	for _, w := range res.workers {
		wg.Go(func() {
			if spec.rate > 0 {
				openLoop(ctx, w, &issued, res.scheduled, start, spec.rate)
			} else {
				closedLoop(w, &issued, spec.maxOps, deadline)
			}
		})
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("%s: %w", g.Name, err)
	}
	return res, nil
}

// closedLoop sends the next request as soon as the previous reply arrives:
// it measures capacity, and its latencies are only honest at that load.
func closedLoop(w *worker, issued *atomic.Int64, maxOps int64, deadline time.Time) {
	for issued.Add(1) <= maxOps {
		t0 := time.Now()
		if t0.After(deadline) {
			return
		}
		isRead, err := w.do()
		if !w.account(isRead, time.Since(t0), err) {
			return
		}
	}
}

// openLoop follows a fixed schedule: request i is due at start + i/rate,
// and its latency is measured from that due time, not from when a free
// connection got round to sending it. A server that stalls therefore shows
// the full delay every queued request suffered (no coordinated omission).
func openLoop(ctx context.Context, w *worker, next *atomic.Int64, total int64, start time.Time, rate float64) {
	sl, err := newSleeper(ctx)
	if err != nil {
		w.broken = err
		return
	}
	defer sl.Close()
	for {
		i := next.Add(1) - 1
		if i >= total {
			return
		}
		due := start.Add(time.Duration(float64(i) * float64(time.Second) / rate))
		if err := sl.until(due); err != nil {
			if ctx.Err() == nil {
				w.broken = err
			}
			return
		}
		w.maxLag = max(w.maxLag, time.Since(due))
		isRead, err := w.do()
		if !w.account(isRead, time.Since(due), err) {
			return
		}
	}
}

// brokenErr returns the first transport error among the workers, ignoring
// those caused by cancellation.
func (r loadResult) brokenErr() error {
	for _, w := range r.workers {
		if w.broken != nil && !errors.Is(w.broken, context.Canceled) {
			return w.broken
		}
	}
	return nil
}
