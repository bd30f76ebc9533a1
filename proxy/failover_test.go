package proxy

import (
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keyfence/keyfence/fallback"
	"github.com/keyfence/keyfence/internal/faultproxy"
	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/internal/sentineltest"
	"github.com/keyfence/keyfence/upstream"
)

// failoverOp is one command a failover test's writer sent through keyfence.
type failoverOp struct {
	cmd        string // "rpush", "set" or "get"
	n          int    // the writer's sequence number the command carries
	start, end time.Time
	reply      string // the raw reply; "" when the connection failed
	err        error  // a connection failure between client and keyfence
}

func (o failoverOp) ok() bool {
	return o.err == nil && o.reply != "" && o.reply[0] != '-'
}

// write says the command changes data: only writes measure the window, since
// with the read cache a GET may be answered during the outage.
func (o failoverOp) write() bool { return o.cmd != "get" }

// notSent says keyfence refused the command without sending it upstream
// (the breaker is open; for a read, with no fresh cached copy): it must
// never have run.
func (o failoverOp) notSent() bool {
	return strings.HasPrefix(o.reply, "-"+fallback.ErrOpen.Error()) || strings.HasPrefix(o.reply, "-"+fallback.ErrMiss.Error())
}

// TestSentinelFailoverWithBreaker is issue 9's "a failover is not an
// outage": with the circuit breaker on and an open timeout of a minute, a
// master is killed; the clients' failures open the breaker, and keyfence
// must close it as soon as Sentinel has promoted the replica, not after the
// minute. It measures the window clients see (first failed command to the
// first success after it) and checks that every write acknowledged with a
// reply is upstream exactly once, except the few Redis's asynchronous
// replication may lose in the master's last moment, and that no command
// refused by the open breaker ran. It runs with the breaker alone and with
// the read cache too (keyfence's default).
func TestSentinelFailoverWithBreaker(t *testing.T) {
	t.Parallel()
	for _, cache := range []bool{false, true} {
		t.Run(fmt.Sprintf("cache=%v", cache), func(t *testing.T) {
			t.Parallel()
			testSentinelFailoverWithBreaker(t, cache)
		})
	}
}

func testSentinelFailoverWithBreaker(t *testing.T, cache bool) {
	set := startSentinelSet(t)
	ctx := t.Context()
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	sen, err := upstream.NewSentinel(upstream.SentinelConfig{Addrs: set.addrs, Password: sentinelTestPassword, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	const openTimeout = time.Minute
	fb := fallback.Defaults()
	fb.OpenTimeout = openTimeout
	srv, addr := startProxyServer(t, set.master, func(c *Config) {
		c.Upstream = upstream.Config{Addr: sen.String(), Sentinel: sen, DialTimeout: time.Second}
		c.Fallback = &fb
		c.FallbackCache = cache
		c.Logger = logger
	})
	tenant := tenantFor(t)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("keyfence log:\n%s", logs.String())
		}
	})

	// When Sentinel announces the new master, to tell Sentinel's part of
	// the window (detection, election, promotion) from keyfence's.
	var switchedAt atomic.Pointer[time.Time]
	sc := redis.NewClient(&redis.Options{Addr: set.sentinels[0].addr, Password: sentinelTestPassword, DisableIdentity: true, Protocol: 2})
	t.Cleanup(func() { sc.Close() })
	sub := sc.Subscribe(ctx, "+switch-master")
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatalf("SUBSCRIBE +switch-master: %v", err)
	}
	go func() {
		for msg := range sub.Channel() {
			if strings.HasPrefix(msg.Payload, "mymaster ") {
				now := time.Now()
				switchedAt.CompareAndSwap(nil, &now)
			}
		}
	}()
	t.Cleanup(func() { sub.Close() })

	// Writers: RPUSH n, SET n, GET in a loop, each on its own connection,
	// one command at a time.
	const writers = 4
	var (
		stop     = make(chan struct{})
		wg       sync.WaitGroup
		acked    atomic.Int64
		killedAt atomic.Pointer[time.Time]
		okAfter  = make(chan struct{})
		okOnce   sync.Once
		ops      = make([][]failoverOp, writers)
	)
	for w := range writers {
		c := dialRaw(t, addr)
		wg.Go(func() {
			defer func() { c.nc.Close() }()
			list, last := fmt.Sprintf("log:%d", w), fmt.Sprintf("last:%d", w)
			for n := 1; n < 1_000_000; n++ {
				for _, args := range [][]string{{"RPUSH", list, strconv.Itoa(n)}, {"SET", last, strconv.Itoa(n)}, {"GET", last}} {
					select {
					case <-stop:
						return
					default:
					}
					op := failoverOp{cmd: strings.ToLower(args[0]), n: n, start: time.Now()}
					reply, err := c.doE(args...)
					op.end, op.reply, op.err = time.Now(), string(reply), err
					ops[w] = append(ops[w], op)
					if err != nil {
						// The connection to keyfence is out of step: a new one.
						c.nc.Close()
						if c, err = dialRawE(addr); err != nil {
							t.Errorf("writer %d: redial keyfence: %v", w, err)
							return
						}
					}
					if !op.ok() {
						time.Sleep(20 * time.Millisecond)
						continue
					}
					acked.Add(1)
					if k := killedAt.Load(); k != nil && op.start.After(*k) && op.write() {
						okOnce.Do(func() { close(okAfter) })
					}
				}
				time.Sleep(2 * time.Millisecond)
			}
		})
	}
	stopWriters := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(stopWriters)

	waitUntil(t, 10*time.Second, "writes through keyfence before the kill", func() (bool, string) {
		return acked.Load() >= 300, fmt.Sprintf("%d acknowledged", acked.Load())
	})
	kill := time.Now()
	killedAt.Store(&kill)
	set.master.Kill()
	// A liveness bound far below the open timeout: without the recovery
	// probe the breaker would refuse everything for the whole minute.
	select {
	case <-okAfter:
	case <-time.After(openTimeout / 2):
		stopWriters()
		t.Fatalf("no command succeeded through keyfence within %s of killing the master (breaker open timeout %s); keyfence's master: %q, breaker %s",
			openTimeout/2, openTimeout, sen.Master(), srv.Stats().Breaker)
	}
	time.Sleep(time.Second) // writes go on for a while on the new master
	stopWriters()

	if got := sen.Master(); got != set.replica.Addr() {
		t.Fatalf("keyfence's master = %q, want the promoted replica %s", got, set.replica.Addr())
	}
	if st := srv.Stats().Breaker; st != "closed" {
		t.Errorf("breaker %s after the failover, want closed", st)
	}
	// The breaker must have opened (or the test proves nothing about it)
	// and been closed by the recovery probe, not by the open timeout.
	logText := logs.String()
	if !strings.Contains(logText, "to=open") {
		t.Errorf("the breaker never opened during the failover: the test did not exercise it")
	}
	if !strings.Contains(logText, "circuit breaker closed: upstream answers again") {
		t.Errorf("keyfence did not log the recovery probe closing the breaker")
	}

	// The window clients saw: from the first failed write to the first
	// write that succeeded after it.
	var all []failoverOp
	for _, o := range ops {
		all = append(all, o...)
	}
	var firstFail, firstOK time.Time
	failed, refused := 0, 0
	for _, o := range all {
		if o.write() && !o.ok() && (firstFail.IsZero() || o.end.Before(firstFail)) {
			firstFail = o.end
		}
	}
	if firstFail.IsZero() {
		t.Fatal("no write failed although the master was killed")
	}
	for _, o := range all {
		switch {
		case !o.ok():
			failed++
			if o.notSent() {
				refused++
			}
		case !o.write():
		case o.start.After(firstFail) && (firstOK.IsZero() || o.end.Before(firstOK)):
			firstOK = o.end
		}
	}
	if firstOK.IsZero() {
		t.Fatal("no write succeeded after the first failure")
	}
	readsServed := srv.Stats().FallbackHits
	window := firstOK.Sub(firstFail)
	announced := "not seen"
	if sw := switchedAt.Load(); sw != nil {
		// One sentinel's announcement: the leader may have announced, and
		// keyfence followed, a little earlier.
		announced = fmt.Sprintf("seen on one sentinel %s after the kill; first success %+dms from it",
			sw.Sub(kill).Round(time.Millisecond), firstOK.Sub(*sw).Milliseconds())
	}
	t.Logf("failover window seen by clients, breaker on (open timeout %s), read cache %v: %s (first failed write %s after the kill, first successful write %s after it); +switch-master %s; %d commands failed, %d of them refused unsent by the open breaker; %d GETs answered from the cache meanwhile",
		openTimeout, cache, window.Round(time.Millisecond), firstFail.Sub(kill).Round(time.Millisecond), firstOK.Sub(kill).Round(time.Millisecond),
		announced, failed, refused, readsServed)
	if refused == 0 {
		t.Errorf("no command was refused by the open breaker: the test did not exercise it")
	}
	if window >= openTimeout/2 {
		t.Errorf("failover window %s: clients waited for the breaker's open timeout (%s), not for the new master", window, openTimeout)
	}

	// Every acknowledged write is upstream exactly once.
	nm := set.replica.Client()
	lost := 0
	for w, wops := range ops {
		got, err := nm.LRange(ctx, fmt.Sprintf("tenant:%s:log:%d", tenant, w), 0, -1).Result()
		if err != nil {
			t.Fatalf("LRANGE on the new master: %v", err)
		}
		present := map[int]bool{}
		prev := 0
		for _, s := range got {
			n, err := strconv.Atoi(s)
			if err != nil {
				t.Fatalf("writer %d: list element %q", w, s)
			}
			if present[n] {
				t.Errorf("writer %d: %d is in the list twice: a write was sent again", w, n)
			}
			if n <= prev {
				t.Errorf("writer %d: %d after %d: out of order", w, n, prev)
			}
			present[n], prev = true, n
		}
		var highestSet int
		ambiguousSets := map[int]bool{}
		var lastSet failoverOp
		for _, o := range wops {
			switch o.cmd {
			case "rpush":
				switch {
				case o.notSent() && present[o.n]:
					t.Errorf("writer %d: RPUSH %d was refused by the open breaker, yet it ran", w, o.n)
				case o.ok() && !present[o.n] && o.start.After(kill):
					t.Errorf("writer %d: RPUSH %d acknowledged by the new master is missing", w, o.n)
				case o.ok() && !present[o.n]:
					lost++ // acknowledged by the old master, not replicated in time
				}
			case "set":
				lastSet = o
				switch {
				case o.ok():
					highestSet = max(highestSet, o.n)
				case !o.notSent():
					ambiguousSets[o.n] = true
				}
			case "get":
				// Read your write: a SET sent after the kill went to the new
				// master, and so did the GET after it.
				if o.ok() && lastSet.ok() && lastSet.n == o.n && lastSet.start.After(kill) && o.reply != bulk(strconv.Itoa(o.n)) {
					t.Errorf("writer %d: GET after an acknowledged SET %d answered %q", w, o.n, o.reply)
				}
			}
		}
		v, err := nm.Get(ctx, fmt.Sprintf("tenant:%s:last:%d", tenant, w)).Int()
		if err != nil {
			t.Fatalf("GET on the new master: %v", err)
		}
		if v != highestSet && !(v > highestSet && ambiguousSets[v]) {
			t.Errorf("writer %d: upstream holds SET %d, the last acknowledged was %d", w, v, highestSet)
		}
	}
	// Asynchronous replication may lose what the old master acknowledged in
	// its last event-loop round before SIGKILL: one command in flight per
	// writer.
	t.Logf("acknowledged RPUSHes lost with the old master (asynchronous replication): %d, allowed %d", lost, writers)
	if lost > writers {
		t.Errorf("%d acknowledged writes lost in the failover, more than asynchronous replication explains (%d)", lost, writers)
	}
}

// breakerUntilOpen sends GETs through c until keyfence refuses them with the
// open breaker's error.
func breakerUntilOpen(t *testing.T, c *rawConn, srv *Server) {
	t.Helper()
	waitUntil(t, 10*time.Second, "the breaker to open", func() (bool, string) {
		reply, err := c.doE("GET", "k")
		return err == nil && string(reply) == "-"+fallback.ErrOpen.Error()+"\r\n" && srv.Stats().Breaker == "open",
			fmt.Sprintf("GET: %q %v; breaker %s", reply, err, srv.Stats().Breaker)
	})
}

// A Redis that dies and comes back on the same address: the breaker closes
// as soon as it answers, not after the open timeout (a minute here), and a
// write refused while it was open never ran.
func TestBreakerClosesWhenUpstreamReturns(t *testing.T) {
	t.Parallel()
	up := redistest.StartT(t, redistest.Options{})
	logs := &syncBuffer{}
	fb := fallback.Defaults()
	fb.FailureThreshold, fb.OpenTimeout = 3, time.Minute
	srv, addr := startProxyServer(t, up, func(c *Config) {
		c.Upstream.DialTimeout = 500 * time.Millisecond
		c.Fallback = &fb
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("keyfence log:\n%s", logs.String())
		}
	})
	c := dialRaw(t, addr)
	if got := string(c.do(t, "SET", "k", "before")); got != "+OK\r\n" {
		t.Fatalf("SET: %q", got)
	}
	// A write before the outage that upstream must still hold afterwards
	// cannot be asked of a restarted Redis without persistence; the
	// refused write is checked instead.
	up.Kill()
	breakerUntilOpen(t, c, srv)
	if got := string(c.do(t, "SET", "k", "refused")); got != "-"+fallback.ErrOpen.Error()+"\r\n" {
		t.Fatalf("SET while the breaker is open: %q", got)
	}
	// Several probe intervals with upstream still down: it stays open.
	time.Sleep(4 * recoveryProbeInterval)
	if st := srv.Stats().Breaker; st != "open" {
		t.Fatalf("breaker %s while upstream is still down, want open", st)
	}

	if err := up.Restart(t.Context()); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	// Far below the open timeout: only the recovery probe can explain it.
	waitUntil(t, fb.OpenTimeout/3, "commands to succeed again", func() (bool, string) {
		reply, err := c.doE("SET", "k", "after")
		return err == nil && string(reply) == "+OK\r\n", fmt.Sprintf("SET: %q %v", reply, err)
	})
	t.Logf("service back %s after upstream (open timeout %s)", time.Since(back).Round(time.Millisecond), fb.OpenTimeout)
	if st := srv.Stats().Breaker; st != "closed" {
		t.Fatalf("breaker %s after recovery, want closed", st)
	}
	if got := string(c.do(t, "GET", "k")); got != bulk("after") {
		t.Fatalf("GET after recovery: %q", got)
	}
	if !strings.Contains(logs.String(), "circuit breaker closed: upstream answers again") {
		t.Fatalf("keyfence did not log the recovery probe closing the breaker")
	}
}

// The probe fails closed: an upstream that accepts connections but closes
// them, or never answers, does not close the breaker; it takes a PONG. And
// the probe carries no client command: the write refused meanwhile is not
// upstream when service is back.
func TestBreakerProbeNeedsPong(t *testing.T) {
	t.Parallel()
	up := redistest.StartT(t, redistest.Options{})
	fp := faultproxy.StartT(t, up.Addr())
	fb := fallback.Defaults()
	fb.FailureThreshold, fb.OpenTimeout = 3, time.Minute
	srv, addr := startProxyServer(t, up, func(c *Config) {
		c.Upstream.Addr = fp.Addr()
		c.Upstream.DialTimeout = 200 * time.Millisecond
		c.Fallback = &fb
	})
	tenant := tenantFor(t)
	c := dialRaw(t, addr)
	if got := string(c.do(t, "SET", "k", "before")); got != "+OK\r\n" {
		t.Fatalf("SET: %q", got)
	}
	if err := fp.SetMode(faultproxy.Refuse); err != nil {
		t.Fatal(err)
	}
	breakerUntilOpen(t, c, srv)
	if got := string(c.do(t, "SET", "k", "refused")); got != "-"+fallback.ErrOpen.Error()+"\r\n" {
		t.Fatalf("SET while the breaker is open: %q", got)
	}
	for _, m := range []faultproxy.Mode{faultproxy.Drop, faultproxy.Blackhole} {
		accepted := fp.Stats().Accepted
		if err := fp.SetMode(m); err != nil {
			t.Fatal(err)
		}
		// The probe connects through the fault proxy: wait for a few of
		// its connections, each of which must have failed.
		waitUntil(t, 10*time.Second, "probes under "+m.String(), func() (bool, string) {
			n := fp.Stats().Accepted - accepted
			if st := srv.Stats().Breaker; st != "open" {
				t.Fatalf("breaker %s with upstream in mode %s after %d probe connections, want open", st, m, n)
			}
			return n >= 3, fmt.Sprintf("%d probe connections", n)
		})
	}
	if err := fp.SetMode(faultproxy.Pass); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, fb.OpenTimeout/3, "commands to succeed again", func() (bool, string) {
		reply, err := c.doE("GET", "k")
		return err == nil && string(reply) == bulk("before"), fmt.Sprintf("GET: %q %v", reply, err)
	})
	if st := srv.Stats().Breaker; st != "closed" {
		t.Fatalf("breaker %s after recovery, want closed", st)
	}
	if got, err := up.Client().Get(t.Context(), "tenant:"+tenant+":k").Result(); err != nil || got != "before" {
		t.Fatalf("upstream k = %q, %v: the write refused while open must not have run", got, err)
	}
}

// Upstream back at a new address: the sentinels name another master after
// the old one died; the probe asks them and closes the breaker once the new
// one answers, and the shared connections follow it there.
func TestBreakerFollowsNewMaster(t *testing.T) {
	t.Parallel()
	oldMaster := redistest.StartT(t, redistest.Options{})
	newMaster := redistest.StartT(t, redistest.Options{})
	fake := sentineltest.Start(t, "", oldMaster.Addr())
	sen, err := upstream.NewSentinel(upstream.SentinelConfig{Addrs: []string{fake.Addr()}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	fb := fallback.Defaults()
	fb.FailureThreshold, fb.OpenTimeout = 3, time.Minute
	srv, addr := startProxyServer(t, oldMaster, func(c *Config) {
		c.Upstream = upstream.Config{Addr: sen.String(), Sentinel: sen, DialTimeout: 500 * time.Millisecond}
		c.Fallback = &fb
	})
	tenant := tenantFor(t)
	c := dialRaw(t, addr)
	if got := string(c.do(t, "SET", "k", "old")); got != "+OK\r\n" {
		t.Fatalf("SET: %q", got)
	}
	oldMaster.Kill()
	breakerUntilOpen(t, c, srv)
	time.Sleep(4 * recoveryProbeInterval) // the sentinels still name the dead master
	if st := srv.Stats().Breaker; st != "open" {
		t.Fatalf("breaker %s while the named master is dead, want open", st)
	}
	next := newMaster.Addr()
	fake.Master.Store(&next)
	waitUntil(t, fb.OpenTimeout/3, "commands to succeed on the new master", func() (bool, string) {
		reply, err := c.doE("SET", "k", "new")
		return err == nil && string(reply) == "+OK\r\n", fmt.Sprintf("SET: %q %v", reply, err)
	})
	if st := srv.Stats().Breaker; st != "closed" {
		t.Fatalf("breaker %s after the switch, want closed", st)
	}
	if got := sen.Master(); got != next {
		t.Fatalf("keyfence's master = %q, want %s", got, next)
	}
	if got, err := newMaster.Client().Get(t.Context(), "tenant:"+tenant+":k").Result(); err != nil || got != "new" {
		t.Fatalf("new master k = %q, %v", got, err)
	}
}

// An upstream that answers PING but fails the clients' batches (here: each
// round trip takes longer than the upstream timeout) would have the probe
// close the breaker every interval and the clients fail slowly again each
// time. Each re-opening soon after a probe closed the breaker doubles the
// wait before the next probe, so the breaker still sheds load.
func TestBreakerProbeBacksOffWhenUpstreamFlaps(t *testing.T) {
	t.Parallel()
	up := redistest.StartT(t, redistest.Options{})
	fp := faultproxy.StartT(t, up.Addr())
	logs := &syncBuffer{}
	fb := fallback.Defaults()
	fb.FailureThreshold, fb.OpenTimeout = 1, 4*time.Second
	_, addr := startProxyServer(t, up, func(c *Config) {
		c.Upstream.Addr = fp.Addr()
		c.Upstream.DialTimeout = 2 * time.Second // the probe's PING round trip (120 ms) fits
		c.Upstream.Timeout = 50 * time.Millisecond
		c.Fallback = &fb
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	c := dialRaw(t, addr)
	if got := string(c.do(t, "SET", "k", "v")); got != "+OK\r\n" {
		t.Fatalf("SET: %q", got)
	}
	if err := fp.SetMode(faultproxy.Delay(60 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	opens := func() int { return strings.Count(logs.String(), "to=open") }
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		// Writes are never retried, so each failure costs one timeout.
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := c.doE("SET", "k", "v"); err != nil {
				t.Errorf("SET: %v", err)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	waitUntil(t, 10*time.Second, "the breaker to open", func() (bool, string) { return opens() > 0, "" })
	const observe = 8 * time.Second
	time.Sleep(observe)
	close(stop)
	wg.Wait()
	n := opens()
	closedByProbe := strings.Count(logs.String(), "circuit breaker closed: upstream answers again")
	t.Logf("in %s: breaker opened %d times, closed by the probe %d times", observe, n, closedByProbe)
	// Without the back-off, a cycle is the 250 ms pause, the probe's PING
	// (120 ms) and one SET's timeout (50 ms): about 18 openings. With it,
	// the pauses are 250 ms, 500 ms, 1 s, 2 s, 4 s: about 6. A slow
	// machine only makes fewer.
	if n > 10 {
		t.Errorf("the breaker opened %d times in %s: the probe does not back off from an upstream that answers PING only", n, observe)
	}
	if closedByProbe < 2 {
		t.Errorf("the probe closed the breaker %d times in %s, want at least 2: it stopped probing", closedByProbe, observe)
	}
}
