package proxy

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/internal/sentineltest"
	"github.com/keyfence/keyfence/upstream"
)

const sentinelNotFound = "redis-sentinel not found in PATH: run `make test` (it installs it) or `apt-get install -y redis-sentinel`"

// sentinelProc is one redis-sentinel process of a test.
type sentinelProc struct {
	addr   string
	dir    string
	cmd    *exec.Cmd
	out    *syncBuffer
	exited chan struct{}
}

// startSentinel runs redis-sentinel on a free loopback port, monitoring the
// master at masterPort as "mymaster" with quorum 2, down-after 1 s and
// failover-timeout 5 s. With password the sentinel requires it, of clients
// and of the other sentinels. It is killed at cleanup.
func startSentinel(t *testing.T, masterPort int, password string) *sentinelProc {
	t.Helper()
	path, err := exec.LookPath("redis-sentinel")
	if err != nil {
		t.Fatal(sentinelNotFound)
	}
	var lastErr error
	for range 5 { // a lost race for the free port is retried on another
		port, err := redistest.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		p, err := launchSentinel(t, path, port, masterPort, password)
		if err == nil {
			return p
		}
		lastErr = err
		if !strings.Contains(err.Error(), "Address already in use") {
			break
		}
	}
	t.Fatalf("redis-sentinel did not start: %v", lastErr)
	return nil
}

func launchSentinel(t *testing.T, path string, port, masterPort int, password string) (*sentinelProc, error) {
	dir := t.TempDir()
	conf := []string{
		"port " + strconv.Itoa(port),
		"bind 127.0.0.1",
		"daemonize no",
		"dir " + dir,
		"logfile " + filepath.Join(dir, "sentinel.log"),
		"sentinel monitor mymaster 127.0.0.1 " + strconv.Itoa(masterPort) + " 2",
		"sentinel down-after-milliseconds mymaster 1000",
		"sentinel failover-timeout mymaster 5000",
		"sentinel parallel-syncs mymaster 1",
	}
	if password != "" {
		conf = append(conf, "requirepass "+password, "sentinel sentinel-pass "+password)
	}
	confFile := filepath.Join(dir, "sentinel.conf") // sentinel rewrites it: it must be writable
	if err := os.WriteFile(confFile, []byte(strings.Join(conf, "\n")+"\n"), 0o600); err != nil {
		return nil, err
	}
	p := &sentinelProc{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), dir: dir, out: &syncBuffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(path, confFile)
	p.cmd.Dir = dir
	p.cmd.SysProcAttr = killWithParent()
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", path, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("sentinel %s log tail:\n%s", p.addr, p.logTail(3<<10))
		}
		p.kill()
	})
	c := redis.NewClient(&redis.Options{Addr: p.addr, Password: password, DisableIdentity: true, Protocol: 2,
		DialTimeout: 250 * time.Millisecond, ReadTimeout: 250 * time.Millisecond, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-p.exited:
			return nil, fmt.Errorf("redis-sentinel on %s exited: %s %s", p.addr, p.out.String(), p.logTail(2<<10))
		default:
		}
		if info, err := c.Info(t.Context(), "server").Result(); err == nil {
			if !strings.Contains(info, "process_id:"+strconv.Itoa(p.cmd.Process.Pid)) {
				p.kill()
				return nil, fmt.Errorf("%s: Address already in use (another process answers)", p.addr)
			}
			return p, nil
		}
		if time.Now().After(deadline) {
			p.kill()
			return nil, fmt.Errorf("redis-sentinel on %s not ready after 10s: %s", p.addr, p.logTail(2<<10))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *sentinelProc) kill() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
}

func (p *sentinelProc) logTail(n int) string {
	b, _ := os.ReadFile(filepath.Join(p.dir, "sentinel.log"))
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// killWithParent asks Linux to kill the child when the test process dies
// (a -timeout panic runs no cleanup), as redistest does for redis-server.
// The field exists only on some systems, hence reflection.
func killWithParent() *syscall.SysProcAttr {
	attr := &syscall.SysProcAttr{}
	if f := reflect.ValueOf(attr).Elem().FieldByName("Pdeathsig"); f.IsValid() && f.CanSet() {
		f.Set(reflect.ValueOf(syscall.SIGKILL))
	}
	return attr
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitUntil polls cond every 50 ms until it holds or d has passed.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s (%s)", what, d, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sentinelTestPassword is the requirepass of the sentinels of
// startSentinelSet.
const sentinelTestPassword = "s3ntinel-pw"

// sentinelSet is a master, its replica and three sentinels that all know
// one another: ready for a failover.
type sentinelSet struct {
	master, replica *redistest.Server
	sentinels       []*sentinelProc
	// addrs are the sentinels for keyfence, a dead address first: keyfence
	// must try the next sentinel.
	addrs []string
}

func startSentinelSet(t *testing.T) *sentinelSet {
	t.Helper()
	master := redistest.StartT(t, redistest.Options{Args: []string{"--repl-diskless-sync-delay", "0"}})
	replica := redistest.StartT(t, redistest.Options{Args: []string{"--replicaof", "127.0.0.1", strconv.Itoa(master.Port())}})
	ctx := t.Context()
	waitUntil(t, 10*time.Second, "replica in sync", func() (bool, string) {
		info, err := replica.Client().Info(ctx, "replication").Result()
		return err == nil && strings.Contains(info, "master_link_status:up"), fmt.Sprint(err)
	})

	var sentinels []*sentinelProc
	for range 3 {
		sentinels = append(sentinels, startSentinel(t, master.Port(), sentinelTestPassword))
	}
	// Each sentinel must know the replica (from the master's INFO) and the
	// two other sentinels (from hello messages, every 2 s) before a failover
	// can be agreed on.
	for _, s := range sentinels {
		sc := redis.NewClient(&redis.Options{Addr: s.addr, Password: sentinelTestPassword, DisableIdentity: true, Protocol: 2})
		waitUntil(t, 15*time.Second, "sentinel "+s.addr+" sees the replica and 2 sentinels", func() (bool, string) {
			reps, err1 := sc.Do(ctx, "SENTINEL", "replicas", "mymaster").Slice()
			sens, err2 := sc.Do(ctx, "SENTINEL", "sentinels", "mymaster").Slice()
			return err1 == nil && err2 == nil && len(reps) == 1 && len(sens) == 2,
				fmt.Sprintf("replicas %d sentinels %d, %v %v", len(reps), len(sens), err1, err2)
		})
		sc.Close()
	}

	deadPort, err := redistest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addrs := []string{net.JoinHostPort("127.0.0.1", strconv.Itoa(deadPort))}
	for _, s := range sentinels {
		addrs = append(addrs, s.addr)
	}
	return &sentinelSet{master: master, replica: replica, sentinels: sentinels, addrs: addrs}
}

// incrResult is one INCR a writer sent through keyfence.
type incrResult struct {
	start, end time.Time
	val        int64
	err        error
}

// TestSentinelFailover runs a master, a replica and three sentinels, writes
// through keyfence in Sentinel mode, SIGKILLs the master and checks that
// keyfence follows the promoted replica without a restart, within a bounded
// time, and that no acknowledged write was lost beyond what Redis's own
// asynchronous replication may lose.
func TestSentinelFailover(t *testing.T) {
	t.Parallel()
	set := startSentinelSet(t)
	master, replica, addrs := set.master, set.replica, set.addrs
	ctx := t.Context()
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	sen, err := upstream.NewSentinel(upstream.SentinelConfig{Addrs: addrs, Password: sentinelTestPassword, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	tenant := tenantFor(t)
	addr := startProxy(t, master, func(c *Config) {
		c.Upstream = upstream.Config{Addr: sen.String(), Sentinel: sen, DialTimeout: time.Second}
	})
	t.Cleanup(func() { t.Logf("keyfence sentinel log:\n%s", logs.String()) })

	// Writers: INCR in a bounded loop, each on its own connection.
	const writers = 4
	var (
		stop     = make(chan struct{})
		wg       sync.WaitGroup
		acked    atomic.Int64
		killedAt atomic.Pointer[time.Time]
		okAfter  = make(chan struct{})
		okOnce   sync.Once
		results  = make([][]incrResult, writers)
	)
	for w := range writers {
		c := proxyClient(t, addr, func(o *redis.Options) {
			o.PoolSize = 1
			o.DialTimeout, o.ReadTimeout, o.WriteTimeout = 2*time.Second, 3*time.Second, 3*time.Second
		})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				r := incrResult{start: time.Now()}
				r.val, r.err = c.Incr(ctx, "counter").Result()
				r.end = time.Now()
				results[w] = append(results[w], r)
				if r.err != nil {
					time.Sleep(20 * time.Millisecond)
					continue
				}
				acked.Add(1)
				if k := killedAt.Load(); k != nil && r.start.After(*k) {
					okOnce.Do(func() { close(okAfter) })
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	stopWriters := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(stopWriters)

	waitUntil(t, 10*time.Second, "writes through keyfence before the kill", func() (bool, string) {
		return acked.Load() >= 200, fmt.Sprintf("%d acknowledged", acked.Load())
	})
	if got := sen.Master(); got != master.Addr() {
		t.Fatalf("keyfence's master = %q, want %s", got, master.Addr())
	}
	kill := time.Now()
	killedAt.Store(&kill)
	master.Kill()
	select {
	case <-okAfter:
	case <-time.After(20 * time.Second):
		stopWriters()
		t.Fatalf("no write succeeded through keyfence within 20s of killing the master; keyfence's master: %q", sen.Master())
	}
	time.Sleep(time.Second) // writes go on for a while on the new master
	stopWriters()

	// The promoted replica is the master now, and keyfence writes to it.
	info, err := replica.Client().Info(ctx, "replication").Result()
	if err != nil || !strings.Contains(info, "role:master") {
		t.Fatalf("replica INFO replication: %v, %q: want role:master", err, info)
	}
	if got := sen.Master(); got != replica.Addr() {
		t.Fatalf("keyfence's master = %q, want the promoted replica %s", got, replica.Addr())
	}
	final, err := replica.Client().Get(ctx, "tenant:"+tenant+":counter").Int64()
	if err != nil {
		t.Fatalf("GET the counter on the new master: %v", err)
	}

	// The failover window: from the first failed write to the first write
	// that succeeded after it.
	var all []incrResult
	for _, rs := range results {
		all = append(all, rs...)
	}
	firstFail := time.Time{}
	for _, r := range all {
		if r.err != nil && (firstFail.IsZero() || r.end.Before(firstFail)) {
			firstFail = r.end
		}
	}
	if firstFail.IsZero() {
		t.Fatal("no write failed although the master was killed")
	}
	var firstOK *incrResult
	lastBefore, minAfter := int64(0), int64(-1)
	failed := 0
	for i, r := range all {
		switch {
		case r.err != nil:
			if !r.start.Before(kill) {
				failed++
			}
		case r.start.Before(firstFail):
			lastBefore = max(lastBefore, r.val)
		default:
			if minAfter < 0 || r.val < minAfter {
				minAfter = r.val
			}
			if firstOK == nil || r.end.Before(firstOK.end) {
				firstOK = &all[i]
			}
		}
		if r.err == nil && r.val > final {
			t.Errorf("acknowledged INCR value %d > final upstream value %d", r.val, final)
		}
	}
	if firstOK == nil {
		t.Fatal("no write succeeded after the first failure")
	}
	window := firstOK.end.Sub(firstFail)
	t.Logf("failover window seen by clients: %s (first failed write %s after the kill, first successful write %s after it); %d writes failed meanwhile",
		window.Round(time.Millisecond), firstFail.Sub(kill).Round(time.Millisecond), firstOK.end.Sub(kill).Round(time.Millisecond), failed)

	// Asynchronous replication may lose what the master acknowledged in its
	// last event-loop round before SIGKILL: it writes replies and the
	// replication stream in the same round, and each writer has one INCR in
	// flight, so at most one per writer. The new master's counter started
	// from minAfter-1.
	startedFrom := minAfter - 1
	lost := lastBefore - startedFrom
	t.Logf("last value acknowledged before the failover: %d; the new master went on from %d (lost: %d, allowed %d); final value %d",
		lastBefore, startedFrom, max(lost, 0), writers, final)
	if lost > writers {
		t.Errorf("%d acknowledged INCRs lost in the failover, more than asynchronous replication explains (%d)", lost, writers)
	}
	if !slices.ContainsFunc(strings.Split(logs.String(), "\n"), func(l string) bool {
		return strings.Contains(l, "upstream master") && strings.Contains(l, "addr="+replica.Addr())
	}) {
		t.Errorf("keyfence did not log its switch to %s", replica.Addr())
	}
}

func TestSentinelResolve(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	up := testRedis(t)
	deadPort, err := redistest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dead := net.JoinHostPort("127.0.0.1", strconv.Itoa(deadPort))
	quiet := slog.New(slog.DiscardHandler)

	t.Run("next sentinel, with AUTH", func(t *testing.T) {
		good := sentineltest.Start(t, "pw", up.Addr())
		sen, err := upstream.NewSentinel(upstream.SentinelConfig{Addrs: []string{dead, good.Addr()}, Password: "pw", Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		addr := startProxy(t, up, func(c *Config) { c.Upstream = upstream.Config{Sentinel: sen} })
		c := proxyClient(t, addr, nil)
		if err := c.Set(ctx, "k", "via-sentinel", 0).Err(); err != nil {
			t.Fatalf("SET through keyfence in Sentinel mode: %v", err)
		}
		if got, err := up.Client().Get(ctx, "tenant:"+tenantFor(t)+":k").Result(); err != nil || got != "via-sentinel" {
			t.Fatalf("upstream GET = %q, %v", got, err)
		}
		if sen.Master() != up.Addr() {
			t.Fatalf("Master() = %q, want %s", sen.Master(), up.Addr())
		}
	})

	for _, tc := range []struct {
		name     string
		password string // given to keyfence; the fake wants "pw"
		master   string // the fake's answer
		want     string
	}{
		{"wrong password", "nope", up.Addr(), "AUTH: WRONGPASS"},
		{"no password", "", up.Addr(), "NOAUTH"},
		{"unknown master", "pw", "", `no master named "mymaster"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := sentineltest.Start(t, "pw", tc.master)
			sen, err := upstream.NewSentinel(upstream.SentinelConfig{Addrs: []string{fake.Addr(), dead}, Password: tc.password, Logger: quiet})
			if err != nil {
				t.Fatal(err)
			}
			addr := startProxy(t, up, func(c *Config) { c.Upstream = upstream.Config{Sentinel: sen} })
			err = proxyClient(t, addr, nil).Set(ctx, "k", "v", 0).Err()
			if err == nil || !strings.HasPrefix(err.Error(), "ERR keyfence: upstream unavailable") ||
				!strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), dead) {
				t.Fatalf("SET: %v; want keyfence's upstream error naming %q and the dead sentinel", err, tc.want)
			}
		})
	}

	t.Run("a replica is refused", func(t *testing.T) {
		// A replica of a master that does not exist is still a replica.
		replica := redistest.StartT(t, redistest.Options{Args: []string{"--replicaof", "127.0.0.1", strconv.Itoa(deadPort)}})
		fake := sentineltest.Start(t, "", replica.Addr())
		for _, proto := range []int{2, 3} {
			// A Sentinel of its own per protocol: no backoff between the two.
			sen, err := upstream.NewSentinel(upstream.SentinelConfig{Addrs: []string{fake.Addr()}, Logger: quiet})
			if err != nil {
				t.Fatal(err)
			}
			addr := startProxy(t, up, func(c *Config) { c.Upstream = upstream.Config{Sentinel: sen} })
			err = proxyClient(t, addr, func(o *redis.Options) { o.Protocol = proto }).Set(ctx, "k", "v", 0).Err()
			if err == nil || !strings.Contains(err.Error(), "not the master (role:slave)") {
				t.Fatalf("RESP%d: SET through keyfence to a replica: %v; want a role error", proto, err)
			}
		}
	})
}
