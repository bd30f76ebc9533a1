package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/keyfence/keyfence/bench/internal/resp"
	"github.com/keyfence/keyfence/bench/internal/stack"
)

// connsResult is one group's idle-connection measurement.
type connsResult struct {
	Target    string        `json:"target"`
	Requested int           `json:"requested"`
	Opened    int           `json:"opened"`
	Failed    int           `json:"failed"`
	FirstErr  string        `json:"first_error,omitempty"`
	OpenTime  time.Duration `json:"open_time_ns"`
	Pids      []int         `json:"pids,omitempty"`
	RSSBefore int64         `json:"rss_before_bytes"`
	RSSAfter  int64         `json:"rss_after_bytes"`
	// PerConn is (RSSAfter-RSSBefore)/Opened, in bytes; zero when no pid
	// was known.
	PerConn float64 `json:"rss_per_conn_bytes"`
}

// raiseNoFile lifts RLIMIT_NOFILE to at least need, raising the hard limit
// too when allowed (root). Servers started afterwards inherit it, which is
// what lets twemproxy and Redis accept the connections test.
func raiseNoFile(need uint64, log *slog.Logger) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("getrlimit: %w", err)
	}
	want := lim
	want.Cur = max(lim.Cur, need)
	want.Max = max(lim.Max, want.Cur)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		// Without privilege the hard limit is the ceiling.
		want.Cur, want.Max = min(need, lim.Max), lim.Max
		want.Cur = max(want.Cur, lim.Cur)
		if err2 := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err2 != nil {
			return fmt.Errorf("setrlimit: %w", errors.Join(err, err2))
		}
	}
	if want.Cur < need {
		return fmt.Errorf("RLIMIT_NOFILE is %d, need %d (hard limit %d; run as root or raise it)", want.Cur, need, lim.Max)
	}
	log.Debug("RLIMIT_NOFILE", "soft", want.Cur, "hard", want.Max)
	return nil
}

func rssSum(pids []int) (int64, error) {
	var sum int64
	for _, p := range pids {
		n, err := stack.RSS(p)
		if err != nil {
			return 0, err
		}
		sum += n
	}
	return sum, nil
}

// runConns opens n idle connections spread over the group's endpoints,
// makes each answer one PING (so the server has really set it up, not just
// left it in its accept queue), waits for the server to settle, and reads
// its resident memory before and after.
func runConns(ctx context.Context, g group, n, dialers int, settle time.Duration, log *slog.Logger) (connsResult, error) {
	res := connsResult{Target: g.Name, Requested: n}
	for _, ep := range g.Endpoints {
		if ep.Pid > 0 && !slices.Contains(res.Pids, ep.Pid) {
			res.Pids = append(res.Pids, ep.Pid)
		}
	}
	var err error
	if res.RSSBefore, err = rssSum(res.Pids); err != nil {
		return res, err
	}

	// Connections live until the end of this function; this context only
	// bounds opening them.
	connCtx, cancelConns := context.WithCancel(ctx)
	defer cancelConns()
	openCtx, cancelOpen := context.WithTimeout(ctx, 3*time.Minute)
	defer cancelOpen()

	conns := make([]*resp.Conn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	var next, failed atomic.Int64
	var firstErr sync.Once
	// Give up after a few failures: past a server's limit every further
	// attempt fails the same way, and hammering it proves nothing.
	maxFailed := int64(n/100 + 10)
	start := time.Now()
	var wg sync.WaitGroup
	for range max(dialers, 1) {
		wg.Go(func() {
			for openCtx.Err() == nil {
				i := next.Add(1) - 1
				if i >= int64(n) || failed.Load() > maxFailed {
					return
				}
				addr := g.Endpoints[int(i)%len(g.Endpoints)].Addr
				c, err := resp.DialSmall(connCtx, addr)
				if err == nil {
					pctx, cancel := context.WithTimeout(openCtx, 10*time.Second)
					_, err = c.Do(pctx, "PING")
					cancel()
					if err != nil {
						c.Close()
					}
				}
				if err != nil {
					failed.Add(1)
					firstErr.Do(func() { res.FirstErr = err.Error() })
					continue
				}
				conns[i] = c
			}
		})
	}
	wg.Wait()
	res.OpenTime = time.Since(start)
	res.Failed = int(failed.Load())
	for _, c := range conns {
		if c != nil {
			res.Opened++
		}
	}
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("%s: %w", g.Name, err)
	}
	log.Info("connections open", "target", g.Name, "opened", res.Opened, "failed", res.Failed,
		"took", res.OpenTime.Round(time.Millisecond), "settle", settle)

	select {
	case <-ctx.Done():
		return res, fmt.Errorf("%s: %w", g.Name, ctx.Err())
	case <-time.After(settle):
	}
	if res.RSSAfter, err = rssSum(res.Pids); err != nil {
		return res, err
	}
	if len(res.Pids) > 0 && res.Opened > 0 {
		res.PerConn = float64(res.RSSAfter-res.RSSBefore) / float64(res.Opened)
	}
	return res, nil
}
