package asynq_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/keyfence/keyfence/internal/gatewaytest"
	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/proxy"
	"github.com/keyfence/keyfence/upstream"
)

// Workload of each tenant. All tenants use the same queue names and the
// same task ids, so any key, lock or channel that escaped its namespace
// would collide with another tenant's.
const (
	workTasks    = 1000 // "work": plain tasks, some scheduled, some retried
	uniqueTasks  = 20   // "unique": asynq.Unique, each enqueued twice
	groupedTasks = 60   // "grouped": aggregated by the GroupAggregator
	groupCount   = 3    // groups g0..g2
	groupMaxSize = 10

	qCritical = "critical"
	qDefault  = "default"
	qParked   = "parked" // the first tenant only, never processed: visibility check

	blockTaskID  = "block-1"
	parkedTaskID = "only-in-a"

	// testBudget bounds the whole run; every wait below has its own
	// deadline inside it.
	testBudget = 70 * time.Second
)

// failsFirst says whether the handler fails the first attempt of work task
// seq (it succeeds on the retry).
func failsFirst(seq int) bool { return seq%7 == 0 }

// scheduled says whether work task seq is enqueued with ProcessIn.
func scheduled(seq int) bool { return seq%10 == 0 }

// workQueue spreads work tasks over the two queues.
func workQueue(seq int) string {
	if seq%2 == 0 {
		return qCritical
	}
	return qDefault
}

// job is the payload of every task but the aggregated one: it names the
// tenant that enqueued it.
type job struct {
	Tenant string `json:"tenant"`
	Kind   string `json:"kind"`
	Seq    int    `json:"seq"`
	Group  string `json:"group,omitempty"`
}

func (j job) key() string { return fmt.Sprintf("%s-%04d", j.Kind, j.Seq) }

// batch is the payload of an aggregated task.
type batch struct {
	Group   string `json:"group"`
	Members []job  `json:"members"`
}

var (
	errPlanned     = errors.New("planned failure of the first attempt")
	errNotCanceled = errors.New("block task was not canceled in time")
)

// recorder is what one tenant's handlers saw.
type recorder struct {
	tenant string

	mu            sync.Mutex
	attempts      map[string]int // job key -> handler calls
	done          map[string]int // job key -> successful handler calls
	firstFailures int            // planned failures (each is retried)
	foreign       []string       // anything that was not this tenant's
	aggregates    []batch        // aggregated tasks processed
	aggregated    int            // times the GroupAggregator ran

	blockOnce    sync.Once
	blockStarted chan struct{}
	blockResult  chan error // what the block handler observed
	quit         chan struct{}
}

func newRecorder(tenant string) *recorder {
	return &recorder{
		tenant:       tenant,
		attempts:     map[string]int{},
		done:         map[string]int{},
		blockStarted: make(chan struct{}),
		blockResult:  make(chan error, 1),
		quit:         make(chan struct{}),
	}
}

func (r *recorder) foreignf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.foreign = append(r.foreign, fmt.Sprintf(format, args...))
}

func (r *recorder) handleJob(ctx context.Context, t *asynq.Task) error {
	var j job
	if err := json.Unmarshal(t.Payload(), &j); err != nil {
		r.foreignf("%s task with bad payload %q: %v", t.Type(), t.Payload(), err)
		return asynq.SkipRetry
	}
	retried, _ := asynq.GetRetryCount(ctx)
	r.mu.Lock()
	defer r.mu.Unlock()
	if j.Tenant != r.tenant || j.Kind != t.Type() {
		r.foreign = append(r.foreign, fmt.Sprintf("tenant %s processed %s task %s", r.tenant, t.Type(), t.Payload()))
	}
	r.attempts[j.key()]++
	if j.Kind == "work" && failsFirst(j.Seq) && retried == 0 {
		r.firstFailures++
		return errPlanned
	}
	r.done[j.key()]++
	return nil
}

func (r *recorder) handleGrouped(_ context.Context, t *asynq.Task) error {
	r.foreignf("grouped task processed on its own, not aggregated: %s", t.Payload())
	return nil
}

func (r *recorder) handleBatch(_ context.Context, t *asynq.Task) error {
	var b batch
	if err := json.Unmarshal(t.Payload(), &b); err != nil {
		r.foreignf("aggregated task with bad payload %q: %v", t.Payload(), err)
		return asynq.SkipRetry
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.aggregates = append(r.aggregates, b)
	for _, m := range b.Members {
		if m.Tenant != r.tenant || m.Kind != "grouped" || m.Group != b.Group {
			r.foreign = append(r.foreign, fmt.Sprintf("tenant %s got member %+v in group %s", r.tenant, m, b.Group))
		}
		r.attempts[m.key()]++
		r.done[m.key()]++
	}
	return nil
}

// aggregate is the tenant's GroupAggregator.
func (r *recorder) aggregate(group string, tasks []*asynq.Task) *asynq.Task {
	b := batch{Group: group}
	for _, t := range tasks {
		var j job
		if err := json.Unmarshal(t.Payload(), &j); err != nil || t.Type() != "grouped" {
			r.foreignf("aggregator of %s got %s task %q", r.tenant, t.Type(), t.Payload())
			continue
		}
		b.Members = append(b.Members, j)
	}
	r.mu.Lock()
	r.aggregated++
	r.mu.Unlock()
	payload, _ := json.Marshal(b)
	return asynq.NewTask("aggregated", payload, asynq.Retention(time.Hour))
}

// handleBlock runs until its context is canceled (or the test gives up).
func (r *recorder) handleBlock(ctx context.Context, _ *asynq.Task) error {
	r.blockOnce.Do(func() { close(r.blockStarted) })
	var err error
	select {
	case <-ctx.Done():
		err = ctx.Err()
	case <-time.After(testBudget):
		err = errNotCanceled
	case <-r.quit:
		err = errNotCanceled
	}
	select {
	case r.blockResult <- err:
	default:
	}
	return err
}

func (r *recorder) counts() (work, unique, members int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k := range r.done {
		switch {
		case strings.HasPrefix(k, "work-"):
			work++
		case strings.HasPrefix(k, "unique-"):
			unique++
		case strings.HasPrefix(k, "grouped-"):
			members++
		}
	}
	return
}

// logRecorder is the asynq Logger: it keeps every warning and error.
type logRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logRecorder) add(level string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.msgs = append(l.msgs, level+": "+fmt.Sprint(args...))
}

func (l *logRecorder) Debug(args ...any) {}
func (l *logRecorder) Info(args ...any)  {}
func (l *logRecorder) Warn(args ...any)  { l.add("WARN", args...) }
func (l *logRecorder) Error(args ...any) { l.add("ERROR", args...) }
func (l *logRecorder) Fatal(args ...any) { l.add("FATAL", args...) }

func (l *logRecorder) snapshot() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.msgs)
}

// lockedBuffer collects keyfence's own log lines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *lockedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *lockedBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// tenantEnv is one tenant's asynq client, inspector and server, connected
// to the tenant's keyfence.
type tenantEnv struct {
	name   string
	parked bool // enqueues a task in qParked, which only it may see
	rec    *recorder
	log    *logRecorder
	kflog  *lockedBuffer // the keyfence's log; shared by a gateway's tenants
	health *logRecorder  // failed health checks
	client *asynq.Client
	insp   *asynq.Inspector
	srv    *asynq.Server
	direct *redis.Client // plain go-redis client through keyfence

	dupRejected int           // unique duplicates refused with ErrDuplicateTask
	enqueueTime time.Duration // how long enqueueAll took
	stopOnce    sync.Once
}

// startKeyfence starts an in-process keyfence for tenant, logged in
// upstream as the tenant's ACL user, and stops it in t.Cleanup.
func startKeyfence(t *testing.T, srv *redistest.Server, tenant, user, password string, logw *lockedBuffer) string {
	t.Helper()
	kf, err := proxy.New(proxy.Config{
		Listen: "127.0.0.1:0",
		Tenant: tenant,
		Upstream: upstream.Config{
			Addr:     srv.Addr(),
			Username: user,
			Password: password,
		},
		Logger: slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatalf("proxy.New(%s): %v", tenant, err)
	}
	if err := kf.Listen(); err != nil {
		t.Fatalf("keyfence %s Listen: %v", tenant, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- kf.Serve(ctx) }()
	t.Cleanup(func() {
		st := kf.Stats()
		t.Logf("keyfence %s: %d commands went through pinned connections (MULTI/EXEC, blocking, pub/sub)", tenant, st.PinnedCommands)
		if st.PinnedCommands == 0 {
			t.Errorf("keyfence %s: asynq's transactions, blocking dequeues and cancel subscription used no pinned connection", tenant)
		}
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		if err := kf.Shutdown(sctx); err != nil {
			t.Errorf("keyfence %s Shutdown: %v", tenant, err)
		}
		cancel()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("keyfence %s Serve: %v", tenant, err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("keyfence %s Serve did not return after Shutdown", tenant)
		}
	})
	return kf.Addr().String()
}

// newSidecarTenant starts tenant's own keyfence, logged in upstream as
// the tenant's ACL user, and the tenant's asynq in front of it.
func newSidecarTenant(t *testing.T, srv *redistest.Server, tenant string) *tenantEnv {
	t.Helper()
	user, password := "kf-"+tenant, "pw-"+tenant
	if err := srv.AddTenantUser(t.Context(), user, password, tenant); err != nil {
		t.Fatalf("AddTenantUser %s: %v", tenant, err)
	}
	kflog := &lockedBuffer{}
	addr := startKeyfence(t, srv, tenant, user, password, kflog)
	return newTenantEnv(t, tenant, asynq.RedisClientOpt{Addr: addr}, kflog)
}

// newTenantEnv starts tenant's asynq client, inspector and server with opt,
// the connection to the tenant's keyfence: its address and, in gateway mode,
// the credentials that pick the tenant.
func newTenantEnv(t *testing.T, tenant string, opt asynq.RedisClientOpt, kflog *lockedBuffer) *tenantEnv {
	t.Helper()
	e := &tenantEnv{
		name:   tenant,
		rec:    newRecorder(tenant),
		log:    &logRecorder{},
		kflog:  kflog,
		health: &logRecorder{},
	}
	// asynq talks to keyfence exactly as it would to Redis.
	e.client = asynq.NewClient(opt)
	e.insp = asynq.NewInspector(opt)
	e.direct = redis.NewClient(&redis.Options{Addr: opt.Addr, Username: opt.Username, Password: opt.Password})

	mux := asynq.NewServeMux()
	mux.HandleFunc("work", e.rec.handleJob)
	mux.HandleFunc("unique", e.rec.handleJob)
	mux.HandleFunc("grouped", e.rec.handleGrouped)
	mux.HandleFunc("aggregated", e.rec.handleBatch)
	mux.HandleFunc("block", e.rec.handleBlock)
	e.srv = asynq.NewServer(opt, asynq.Config{
		Concurrency:              8,
		Queues:                   map[string]int{qCritical: 2, qDefault: 1},
		TaskCheckInterval:        50 * time.Millisecond,
		DelayedTaskCheckInterval: 100 * time.Millisecond,
		HealthCheckInterval:      500 * time.Millisecond,
		HealthCheckFunc: func(err error) {
			if err != nil {
				e.health.Error(err)
			}
		},
		JanitorInterval:  time.Second,
		GroupGracePeriod: time.Second, // asynq's minimum
		GroupMaxDelay:    2 * time.Second,
		GroupMaxSize:     groupMaxSize,
		GroupAggregator:  asynq.GroupAggregatorFunc(e.rec.aggregate),
		RetryDelayFunc:   func(int, error, *asynq.Task) time.Duration { return 100 * time.Millisecond },
		ShutdownTimeout:  3 * time.Second,
		Logger:           e.log,
		LogLevel:         asynq.WarnLevel,
	})
	if err := e.srv.Start(mux); err != nil {
		t.Fatalf("asynq server %s Start: %v", tenant, err)
	}
	// Registered after keyfence's cleanup, so it runs before it.
	t.Cleanup(func() { e.stop(t) })
	return e
}

// stop shuts the tenant's asynq server down (bounded) and closes its
// clients; it runs once, from the test or from its cleanup.
func (e *tenantEnv) stop(t *testing.T) {
	e.stopOnce.Do(func() {
		close(e.rec.quit)
		done := make(chan struct{})
		go func() { e.srv.Shutdown(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Errorf("tenant %s: asynq server Shutdown did not return in 15 s", e.name)
		}
		for name, c := range map[string]interface{ Close() error }{"client": e.client, "inspector": e.insp, "go-redis client": e.direct} {
			if err := c.Close(); err != nil {
				t.Errorf("tenant %s: close %s: %v", e.name, name, err)
			}
		}
	})
}

// enqueueAll enqueues the tenant's whole workload; it returns the first
// unexpected error.
func (e *tenantEnv) enqueueAll(ctx context.Context) error {
	mk := func(kind string, seq int, group string) *asynq.Task {
		p, _ := json.Marshal(job{Tenant: e.name, Kind: kind, Seq: seq, Group: group})
		return asynq.NewTask(kind, p)
	}
	// The task to cancel goes first, so that it runs while the rest flows.
	if _, err := e.client.EnqueueContext(ctx, mk("block", 1, ""),
		asynq.Queue(qCritical), asynq.TaskID(blockTaskID), asynq.MaxRetry(0)); err != nil {
		return fmt.Errorf("enqueue block task: %w", err)
	}
	if e.parked {
		if _, err := e.client.EnqueueContext(ctx, mk("parked", 1, ""),
			asynq.Queue(qParked), asynq.TaskID(parkedTaskID)); err != nil {
			return fmt.Errorf("enqueue parked task: %w", err)
		}
	}
	// Unique tasks are scheduled a little ahead, so the uniqueness lock is
	// certainly held when the duplicate comes (it is released once the
	// task succeeds).
	for i := range uniqueTasks {
		opts := []asynq.Option{asynq.Queue(qCritical), asynq.Unique(time.Minute),
			asynq.ProcessIn(time.Second), asynq.Retention(time.Hour)}
		if _, err := e.client.EnqueueContext(ctx, mk("unique", i, ""), opts...); err != nil {
			return fmt.Errorf("enqueue unique-%d: %w", i, err)
		}
		_, err := e.client.EnqueueContext(ctx, mk("unique", i, ""), opts...)
		if !errors.Is(err, asynq.ErrDuplicateTask) {
			return fmt.Errorf("enqueue duplicate of unique-%d: err = %v, want ErrDuplicateTask", i, err)
		}
		e.dupRejected++
	}
	grouped := 0
	for i := range workTasks {
		opts := []asynq.Option{asynq.Queue(workQueue(i)), asynq.TaskID(fmt.Sprintf("work-%04d", i)),
			asynq.MaxRetry(3), asynq.Retention(time.Hour)}
		if scheduled(i) {
			opts = append(opts, asynq.ProcessIn(500*time.Millisecond+time.Duration(i)*time.Millisecond))
		}
		if _, err := e.client.EnqueueContext(ctx, mk("work", i, ""), opts...); err != nil {
			return fmt.Errorf("enqueue work-%04d: %w", i, err)
		}
		// Grouped tasks trickle in among the others.
		if i%(workTasks/groupedTasks) == 0 && grouped < groupedTasks {
			g := fmt.Sprintf("g%d", grouped%groupCount)
			if _, err := e.client.EnqueueContext(ctx, mk("grouped", grouped, g),
				asynq.Queue(qDefault), asynq.Group(g)); err != nil {
				return fmt.Errorf("enqueue grouped-%d: %w", grouped, err)
			}
			grouped++
		}
	}
	for ; grouped < groupedTasks; grouped++ {
		g := fmt.Sprintf("g%d", grouped%groupCount)
		if _, err := e.client.EnqueueContext(ctx, mk("grouped", grouped, g),
			asynq.Queue(qDefault), asynq.Group(g)); err != nil {
			return fmt.Errorf("enqueue grouped-%d: %w", grouped, err)
		}
	}
	return nil
}

// waitFor polls cond until it holds or deadline passes.
func waitFor(t *testing.T, deadline time.Time, what string, cond func() (bool, string)) {
	t.Helper()
	var last string
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; last state: %s", what, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// expected is what a tenant's queue must show once everything ran.
type expected struct {
	completed, archived, processed, failed int
}

// TestAsynqTwoTenantsThroughKeyfence runs asynq in sidecar mode: tenants a
// and b, each with a keyfence of its own logged in upstream as its ACL user.
func TestAsynqTwoTenantsThroughKeyfence(t *testing.T) {
	start := time.Now()
	srv := redistest.StartT(t, redistest.Options{})
	tenants := []*tenantEnv{newSidecarTenant(t, srv, "a"), newSidecarTenant(t, srv, "b")}
	runAsynq(t, start, srv, tenants)
}

// TestAsynqThreeTenantsThroughGateway runs asynq in gateway mode: three
// tenants' asynq servers, clients and inspectors share one keyfence and pick
// their tenant with go-redis's Username and Password (asynq.RedisClientOpt).
// Tenants a and b run upstream as the gateway's own, unrestricted user, so
// that keyfence alone keeps them apart; tenant c names an upstream ACL user
// of its own (defence in depth).
func TestAsynqThreeTenantsThroughGateway(t *testing.T) {
	start := time.Now()
	srv := redistest.StartT(t, redistest.Options{})
	if err := srv.AddTenantUser(t.Context(), "kf-c", "pw-c", "c"); err != nil {
		t.Fatalf("AddTenantUser c: %v", err)
	}
	list := []gatewaytest.Tenant{
		{ID: "a", Password: "gw-pw-a"},
		{ID: "b", Password: "gw-pw-b"},
		{ID: "c", Password: "gw-pw-c", UpstreamUser: "kf-c", UpstreamPassword: "pw-c"},
	}
	kflog := &lockedBuffer{}
	log := slog.New(slog.NewTextHandler(kflog, &slog.HandlerOptions{Level: slog.LevelWarn}))
	g, addr := gatewaytest.Start(t, srv.Addr(), gatewaytest.File(t, list), log)
	var tenants []*tenantEnv
	for _, tn := range list {
		opt := asynq.RedisClientOpt{Addr: addr, Username: tn.ID, Password: tn.Password}
		tenants = append(tenants, newTenantEnv(t, tn.ID, opt, kflog))
	}
	runAsynq(t, start, srv, tenants)

	st := g.Stats()
	t.Logf("gateway: %d tenants started, %d AUTHs refused", st.Tenants, st.AuthFailed)
	if st.Tenants != len(list) || st.AuthFailed != 0 {
		t.Errorf("gateway stats %+v: want %d tenants started and no AUTH refused", st, len(list))
	}
	for _, tn := range list {
		kf, ok := g.Tenant(tn.ID)
		if !ok {
			t.Errorf("tenant %s: not started in the gateway", tn.ID)
			continue
		}
		n := kf.Stats().PinnedCommands
		t.Logf("keyfence gateway, tenant %s: %d commands went through pinned connections (MULTI/EXEC, blocking, pub/sub)", tn.ID, n)
		if n == 0 {
			t.Errorf("tenant %s: asynq's transactions, blocking dequeues and cancel subscription used no pinned connection", tn.ID)
		}
	}
}

// runAsynq runs the whole workload for tenants at once, each through its
// keyfence, and checks that each processed exactly its own tasks, that
// asynq's Inspector saw only its own tenant, and that every upstream key is
// in its tenant's namespace. The first tenant also parks a task that only it
// may see.
func runAsynq(t *testing.T, start time.Time, srv *redistest.Server, tenants []*tenantEnv) {
	deadline := start.Add(testBudget - 10*time.Second)
	ctx, cancel := context.WithDeadline(t.Context(), start.Add(testBudget))
	defer cancel()
	admin := srv.Client()
	first, others := tenants[0], tenants[1:]
	first.parked = true

	// Both tenants enqueue at once.
	enqErr := make(chan error, len(tenants))
	for _, e := range tenants {
		go func() {
			t0 := time.Now()
			err := e.enqueueAll(ctx)
			e.enqueueTime = time.Since(t0)
			if err != nil {
				enqErr <- fmt.Errorf("tenant %s: %w", e.name, err)
				return
			}
			enqErr <- nil
		}()
	}

	// Cancelation through asynq's pub/sub while the bulk is flowing. Every
	// tenant has a running task with the same id; canceling the first
	// tenant's must not reach the others'.
	cancelResults := map[string]error{}
	enqDone := 0
	for _, e := range tenants {
	waitStart:
		for {
			select {
			case <-e.rec.blockStarted:
				break waitStart
			case err := <-enqErr: // an enqueue error explains a task that never starts
				if err != nil {
					t.Fatal(err)
				}
				enqDone++
			case <-time.After(time.Until(deadline)):
				t.Fatalf("tenant %s: block task never started", e.name)
			}
		}
		waitFor(t, deadline, "tenant "+e.name+"'s asynq subscriber on asynq:cancel", func() (bool, string) {
			n, err := e.direct.PubSubNumSub(ctx, "asynq:cancel").Result()
			return err == nil && n["asynq:cancel"] == 1, fmt.Sprintf("NUMSUB %v, err %v", n, err)
		})
	}
	// Keep the block tasks running through a heartbeat (every 5 s in
	// asynq), so that the lease extension and the server state with an
	// active worker go through keyfence too.
	leaseKey := "asynq:{" + qCritical + "}:lease"
	firstLease := map[string]float64{}
	for _, e := range tenants {
		s0, err := admin.ZScore(ctx, "tenant:"+e.name+":"+leaseKey, blockTaskID).Result()
		if err != nil {
			t.Fatalf("tenant %s: upstream lease of the running block task: %v", e.name, err)
		}
		firstLease[e.name] = s0
	}
	leases := map[string]float64{}
	heartbeat := time.Now().Add(12 * time.Second)
	if heartbeat.After(deadline) {
		heartbeat = deadline
	}
	for _, e := range tenants {
		active, err := e.insp.ListActiveTasks(qCritical)
		if err != nil || !slices.ContainsFunc(active, func(ti *asynq.TaskInfo) bool { return ti.ID == blockTaskID && payloadOf(ti, e.name) }) {
			t.Errorf("tenant %s: ListActiveTasks(%s) = %d tasks, %v; want its own %s among them", e.name, qCritical, len(active), err, blockTaskID)
		}
		waitFor(t, heartbeat, "tenant "+e.name+"'s heartbeat to extend the lease and report the worker", func() (bool, string) {
			s0 := firstLease[e.name]
			s, err := admin.ZScore(ctx, "tenant:"+e.name+":"+leaseKey, blockTaskID).Result()
			if err != nil || s <= s0 {
				return false, fmt.Sprintf("lease %v (was %v), %v", s, s0, err)
			}
			leases[e.name] = s - s0
			servers, err := e.insp.Servers()
			if err != nil || len(servers) != 1 {
				return false, fmt.Sprintf("%d servers, %v", len(servers), err)
			}
			return slices.ContainsFunc(servers[0].ActiveWorkers, func(w *asynq.WorkerInfo) bool {
				return w.TaskID == blockTaskID && w.Queue == qCritical
			}), fmt.Sprintf("%d active workers", len(servers[0].ActiveWorkers))
		})
	}
	cancelBlock := func(e *tenantEnv) {
		if err := e.insp.CancelProcessing(blockTaskID); err != nil {
			t.Fatalf("tenant %s: CancelProcessing: %v", e.name, err)
		}
		select {
		case err := <-e.rec.blockResult:
			cancelResults[e.name] = err
		case <-time.After(5 * time.Second):
			t.Fatalf("tenant %s: block task not canceled 5 s after CancelProcessing", e.name)
		}
	}
	cancelBlock(first)
	// The cancel message travels the same way to every subscriber: 300 ms
	// more is far longer than it took to reach the first tenant's. A
	// handler's result waits in its buffered channel.
	time.Sleep(300 * time.Millisecond)
	for _, e := range others {
		select {
		case err := <-e.rec.blockResult:
			t.Fatalf("tenant %s's block task ended (%v) when tenant %s canceled its own", e.name, err, first.name)
		default:
		}
	}
	for _, e := range others {
		cancelBlock(e)
	}
	for name, err := range cancelResults {
		if !errors.Is(err, context.Canceled) {
			t.Errorf("tenant %s: block handler observed %v, want context.Canceled", name, err)
		}
	}

	for ; enqDone < len(tenants); enqDone++ {
		select {
		case err := <-enqErr:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(time.Until(deadline)):
			t.Fatal("enqueueing did not finish in time")
		}
	}

	// Every task handled, then every queue drained.
	for _, e := range tenants {
		waitFor(t, deadline, "tenant "+e.name+"'s handlers", func() (bool, string) {
			w, u, m := e.rec.counts()
			return w == workTasks && u == uniqueTasks && m == groupedTasks,
				fmt.Sprintf("work %d/%d unique %d/%d grouped %d/%d", w, workTasks, u, uniqueTasks, m, groupedTasks)
		})
	}
	for _, e := range tenants {
		for _, q := range []string{qCritical, qDefault} {
			waitFor(t, deadline, "tenant "+e.name+"'s queue "+q+" to drain", func() (bool, string) {
				qi, err := e.insp.GetQueueInfo(q)
				if err != nil {
					return false, err.Error()
				}
				return qi.Pending+qi.Active+qi.Scheduled+qi.Retry+qi.Aggregating == 0,
					fmt.Sprintf("%+v", *qi)
			})
		}
	}
	processedIn := time.Since(start)

	// Each tenant processed exactly its own tasks.
	for _, e := range tenants {
		r := e.rec
		r.mu.Lock()
		if len(r.foreign) > 0 {
			t.Errorf("tenant %s saw what is not its own (%d), first: %s", e.name, len(r.foreign), r.foreign[0])
		}
		for k, n := range r.done {
			if n != 1 {
				t.Errorf("tenant %s: %s succeeded %d times, want once", e.name, k, n)
			}
		}
		wantFailures := 0
		for k, n := range r.attempts {
			want := 1
			var seq int
			if _, err := fmt.Sscanf(k, "work-%d", &seq); err == nil && failsFirst(seq) {
				want = 2
				wantFailures++
			}
			if n != want {
				t.Errorf("tenant %s: %s ran %d times, want %d", e.name, k, n, want)
			}
		}
		if r.firstFailures != wantFailures {
			t.Errorf("tenant %s: %d planned failures, want %d", e.name, r.firstFailures, wantFailures)
		}
		if len(r.aggregates) != r.aggregated || len(r.aggregates) < groupCount {
			t.Errorf("tenant %s: %d aggregated tasks processed, aggregator ran %d times, want at least %d",
				e.name, len(r.aggregates), r.aggregated, groupCount)
		}
		for _, b := range r.aggregates {
			if len(b.Members) == 0 || len(b.Members) > groupMaxSize {
				t.Errorf("tenant %s: group %s aggregated %d tasks, want 1..%d", e.name, b.Group, len(b.Members), groupMaxSize)
			}
		}
		r.mu.Unlock()
		if e.dupRejected != uniqueTasks {
			t.Errorf("tenant %s: %d duplicates rejected, want %d", e.name, e.dupRejected, uniqueTasks)
		}
	}

	// The Inspector, through keyfence, counts exactly the tenant's tasks.
	for _, e := range tenants {
		e.rec.mu.Lock()
		failEven, failOdd := 0, 0
		for seq := range workTasks {
			if failsFirst(seq) {
				if workQueue(seq) == qCritical {
					failEven++
				} else {
					failOdd++
				}
			}
		}
		aggs := len(e.rec.aggregates)
		e.rec.mu.Unlock()
		want := map[string]expected{
			qCritical: {
				completed: workTasks/2 + uniqueTasks,
				archived:  1, // the canceled block task (MaxRetry 0)
				processed: workTasks/2 + uniqueTasks + failEven + 1,
				failed:    failEven + 1,
			},
			qDefault: {
				completed: workTasks/2 + aggs,
				processed: workTasks/2 + aggs + failOdd,
				failed:    failOdd,
			},
		}
		for q, w := range want {
			qi, err := e.insp.GetQueueInfo(q)
			if err != nil {
				t.Errorf("tenant %s: GetQueueInfo(%s): %v", e.name, q, err)
				continue
			}
			t.Logf("tenant %s queue %-8s: completed %d archived %d processed_total %d failed_total %d (today %d/%d) groups %d memory %d B",
				e.name, q, qi.Completed, qi.Archived, qi.ProcessedTotal, qi.FailedTotal, qi.Processed, qi.Failed, qi.Groups, qi.MemoryUsage)
			got := expected{completed: qi.Completed, archived: qi.Archived, processed: qi.ProcessedTotal, failed: qi.FailedTotal}
			if got != w {
				t.Errorf("tenant %s: queue %s shows %+v, want %+v", e.name, q, got, w)
			}
			if qi.Groups != 0 {
				t.Errorf("tenant %s: queue %s still has %d groups", e.name, q, qi.Groups)
			}
			// Every task the inspector lists is this tenant's.
			var listed []*asynq.TaskInfo
			for _, list := range []func(string, ...asynq.ListOption) ([]*asynq.TaskInfo, error){e.insp.ListCompletedTasks, e.insp.ListArchivedTasks} {
				ts, err := list(q, asynq.PageSize(5000))
				if err != nil {
					t.Errorf("tenant %s: list tasks of %s: %v", e.name, q, err)
				}
				listed = append(listed, ts...)
			}
			if len(listed) != w.completed+w.archived {
				t.Errorf("tenant %s: inspector lists %d completed+archived tasks in %s, want %d", e.name, len(listed), q, w.completed+w.archived)
			}
			for _, ti := range listed {
				if !payloadOf(ti, e.name) {
					t.Errorf("tenant %s: inspector lists foreign task %s %s %s", e.name, ti.ID, ti.Type, ti.Payload)
				}
			}
		}
		queues, err := e.insp.Queues()
		sort.Strings(queues)
		wantQueues := []string{qCritical, qDefault}
		if e.parked {
			wantQueues = []string{qCritical, qDefault, qParked}
		}
		if err != nil || !slices.Equal(queues, wantQueues) {
			t.Errorf("tenant %s: Queues() = %v, %v; want %v", e.name, queues, err, wantQueues)
		}
		servers, err := e.insp.Servers()
		if err != nil || len(servers) != 1 {
			t.Errorf("tenant %s: Servers() = %d servers, %v; want its own one", e.name, len(servers), err)
		}
		for _, id := range []string{"work-0000", "work-0999", blockTaskID} {
			q := qCritical
			if id == "work-0999" {
				q = qDefault
			}
			ti, err := e.insp.GetTaskInfo(q, id)
			if err != nil {
				t.Errorf("tenant %s: GetTaskInfo(%s, %s): %v", e.name, q, id, err)
				continue
			}
			if !payloadOf(ti, e.name) {
				t.Errorf("tenant %s: GetTaskInfo(%s) = the other tenant's task %s", e.name, id, ti.Payload)
			}
		}
	}
	if ti, err := first.insp.GetTaskInfo(qParked, parkedTaskID); err != nil || ti.State != asynq.TaskStatePending {
		t.Errorf("tenant %s: its parked task: %v, %v; want pending", first.name, ti, err)
	}
	for _, e := range others {
		if ti, err := e.insp.GetTaskInfo(qParked, parkedTaskID); !errors.Is(err, asynq.ErrQueueNotFound) && !errors.Is(err, asynq.ErrTaskNotFound) {
			t.Errorf("tenant %s sees tenant %s's parked task: %v, %v", e.name, first.name, ti, err)
		}
	}

	// Upstream, every key is in a tenant's namespace; the same asynq key
	// exists once per tenant.
	perTenant := map[string]int{}
	var cursor uint64
	for {
		keys, next, err := admin.Scan(ctx, cursor, "*", 1000).Result()
		if err != nil {
			t.Fatalf("admin SCAN: %v", err)
		}
	key:
		for _, k := range keys {
			for _, e := range tenants {
				if strings.HasPrefix(k, "tenant:"+e.name+":") {
					perTenant[e.name]++
					continue key
				}
			}
			t.Errorf("upstream key %q is outside every tenant namespace", k)
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	channels := []string{"asynq:cancel"}
	for _, e := range tenants {
		for _, k := range []string{"asynq:queues", "asynq:{critical}:t:work-0000", "asynq:{default}:t:work-0999"} {
			if n, err := admin.Exists(ctx, "tenant:"+e.name+":"+k).Result(); err != nil || n != 1 {
				t.Errorf("upstream key tenant:%s:%s: exists %d, %v", e.name, k, n, err)
			}
		}
		channels = append(channels, "tenant:"+e.name+":asynq:cancel")
	}
	numsub, err := admin.PubSubNumSub(ctx, channels...).Result()
	if err != nil {
		t.Errorf("upstream PUBSUB NUMSUB: %v", err)
	}
	for i, ch := range channels {
		if want := min(i, 1); numsub[ch] != int64(want) {
			t.Errorf("upstream PUBSUB NUMSUB of the cancel channels = %v; want 0 for asynq:cancel and one subscriber per tenant channel", numsub)
			break
		}
	}

	// asynq servers stop cleanly through keyfence: their server state is
	// removed from the tenant's namespace.
	for _, e := range tenants {
		if n, err := admin.ZCard(ctx, "tenant:"+e.name+":asynq:servers").Result(); err != nil || n != 1 {
			t.Errorf("tenant %s: upstream asynq:servers has %d entries while running, %v; want 1", e.name, n, err)
		}
		e.stop(t)
		for _, k := range []string{"asynq:servers", "asynq:workers"} {
			if n, err := admin.ZCard(ctx, "tenant:"+e.name+":"+k).Result(); err != nil || n != 0 {
				t.Errorf("tenant %s: upstream %s has %d entries after Shutdown, %v; want 0", e.name, k, n, err)
			}
		}
	}

	// Nothing was refused upstream: the ACL log is empty, and no asynq log
	// line (or failed health check) mentions NOPERM.
	aclLog, err := admin.Do(ctx, "ACL", "LOG").Slice()
	if err != nil {
		t.Errorf("ACL LOG: %v", err)
	} else if len(aclLog) != 0 {
		t.Errorf("upstream ACL LOG has %d denials, first: %v", len(aclLog), aclLog[0])
	}
	kflogs := map[*lockedBuffer]bool{}
	for _, e := range tenants {
		for _, m := range append(e.log.snapshot(), e.health.snapshot()...) {
			if strings.Contains(m, "NOPERM") {
				t.Errorf("tenant %s: asynq logged NOPERM: %s", e.name, m)
			} else {
				t.Logf("tenant %s: asynq logged: %s", e.name, m)
			}
		}
		if s := e.kflog.String(); s != "" && !kflogs[e.kflog] {
			kflogs[e.kflog] = true
			t.Logf("tenant %s: keyfence logged:\n%s", e.name, s)
		}
	}

	// The figures.
	for _, e := range tenants {
		e.rec.mu.Lock()
		calls := 0
		for _, n := range e.rec.attempts {
			calls += n
		}
		sizes := make([]int, 0, len(e.rec.aggregates))
		for _, b := range e.rec.aggregates {
			sizes = append(sizes, len(b.Members))
		}
		t.Logf("tenant %s: %d tasks processed (%d work, %d unique, %d grouped in %d aggregated tasks of sizes %v), %d handler calls, %d retries after planned failures, %d duplicates rejected, cancel: %v, %d upstream keys",
			e.name, len(e.rec.done), workTasks, uniqueTasks, groupedTasks, len(e.rec.aggregates), sizes, calls,
			e.rec.firstFailures, e.dupRejected, cancelResults[e.name], perTenant[e.name])
		e.rec.mu.Unlock()
	}
	var leaseText, enqText []string
	for _, e := range tenants {
		leaseText = append(leaseText, fmt.Sprintf("%s %.0f s", e.name, leases[e.name]))
		enqText = append(enqText, fmt.Sprintf("%s %v", e.name, e.enqueueTime.Round(time.Millisecond)))
	}
	t.Logf("heartbeat extended the block tasks' leases by %s; enqueueing took %s; all processed and drained %v after start",
		strings.Join(leaseText, ", "), strings.Join(enqText, ", "), processedIn.Round(time.Millisecond))
}

// payloadOf says whether a listed task's payload names tenant.
func payloadOf(ti *asynq.TaskInfo, tenant string) bool {
	if ti.Type == "aggregated" {
		var b batch
		if json.Unmarshal(ti.Payload, &b) != nil || len(b.Members) == 0 {
			return false
		}
		for _, m := range b.Members {
			if m.Tenant != tenant {
				return false
			}
		}
		return true
	}
	var j job
	return json.Unmarshal(ti.Payload, &j) == nil && j.Tenant == tenant
}
