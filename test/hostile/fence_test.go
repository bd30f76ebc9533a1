package hostile

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/bcrypt"

	"github.com/keyfence/keyfence/fallback"
	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/proxy"
	"github.com/keyfence/keyfence/proxy/tenants"
	"github.com/keyfence/keyfence/rewrite"
	"github.com/keyfence/keyfence/upstream"
)

const (
	acmeID = "acme"
	betaID = "beta"

	acmePrefix = "tenant:acme:"
	betaPrefix = "tenant:beta:"

	// betaChannel and betaPattern are what beta's subscriber listens on;
	// betaSyncChannel matches betaPattern. betaQueue is the list beta's
	// BLPOP waits on.
	betaChannel     = "news"
	betaPattern     = "alerts.*"
	betaSyncChannel = "alerts.sync"
	betaEventChan   = "__keyevent@0__:set"
	betaEventKey    = "evsync"
	betaQueue       = "queue"

	// betaScript is loaded by beta before every attempt; acme must never
	// be able to run it by its SHA or learn that it exists.
	betaScript = "return redis.call('GET', KEYS[1]) -- beta's script"

	acmeOwnKey   = "mine"
	acmeOwnValue = "acme-own-value"

	// ttlTolerance is how much a canary TTL may shrink during one attempt
	// (the runaway-script attempts take seconds); a TTL that grew or
	// vanished is always a finding.
	ttlTolerance = 60 * time.Second

	// opTimeout bounds one harness operation; a keyfence or Redis that
	// does not answer within it is reported, not waited for.
	opTimeout = 10 * time.Second
)

// canaryDBs are the upstream databases beta keeps canary data in.
func canaryDBs() []int { return []int{0, 1} }

// canaryKeys are beta's key names (as beta sees them) in each canary db.
func canaryKeys(secret string) []string {
	return []string{"str", "hash", "list", "set", "zset", "stream", "ttl", "hidden-" + secret}
}

// mode is one way of deploying keyfence in front of the upstream.
type mode struct {
	name     string
	aclUsers bool // per-tenant ACL users instead of the unrestricted default user
	// gateway: acme and beta are two tenants of one gateway keyfence
	// (proxy.Gateway), which is then the only boundary between them;
	// otherwise each has a sidecar keyfence (proxy.Server) of its own.
	gateway bool
	// categories limits the mode to these categories of the corpus; nil:
	// all of them.
	categories []string
}

// runs reports whether the mode runs at, and why not. The gateway category
// attacks the gateway's lobby, AUTH and tenant switching, which a sidecar
// keyfence does not have: it runs in the gateway modes only.
func (m mode) runs(at attempt) (bool, string) {
	if at.category == catGateway && !m.gateway {
		return false, "the gateway category runs in the gateway modes only"
	}
	if m.categories != nil && !slices.Contains(m.categories, at.category) {
		return false, "mode " + m.name + " runs the categories " + strings.Join(m.categories, ", ") + " only"
	}
	return true, ""
}

// modes are the deployments the corpus runs against.
func modes() []mode {
	return []mode{
		{name: "default-user"},
		{name: "acl-users", aclUsers: true},
		{name: "gateway", gateway: true},
		// The gateway with per-tenant upstream users from the tenants
		// file: the gateway's own attempts (switching tenants on one
		// connection, each with its own upstream user and connections)
		// and the key attempts, whose misses the users would turn into
		// NOPERM. Every other category runs against per-tenant users in
		// acl-users and against the gateway in gateway; running it a
		// fourth time would add a third to the suite's time for little.
		{name: "gateway-acl-users", gateway: true, aclUsers: true, categories: []string{catGateway, catKeys}},
	}
}

func TestHostileTenant(t *testing.T) {
	attempts := corpus()
	checkCorpus(t, attempts)
	// Resource attempts measure this process's memory, which every mode's
	// keyfences share; one at a time keeps the figures meaningful.
	var resources sync.Mutex
	// Every mode runs at once, each on its own goroutine rather than as a
	// t.Parallel subtest: -parallel defaults to GOMAXPROCS, which on two
	// cores would run the modes in waves of two, while a mode keeps a core
	// only about half busy (it mostly waits for Redis and keyfence).
	var modesRunning sync.WaitGroup
	defer modesRunning.Wait()
	for _, m := range modes() {
		modesRunning.Go(func() {
			t.Run(m.name, func(t *testing.T) {
				f := newFence(t, m)
				n, left := 0, map[string]int{}
				for _, at := range attempts {
					if ok, why := m.runs(at); !ok {
						left[why]++
						continue
					}
					n++
					t.Run(at.category+"/"+at.name, func(t *testing.T) {
						if at.measuresMemory() {
							resources.Lock()
							defer resources.Unlock()
						}
						f.run(t, at)
					})
				}
				t.Logf("mode %s: %d attempts", m.name, n)
				for _, why := range sortedKeys(left) {
					t.Logf("mode %s: %d attempts not run: %s", m.name, left[why], why)
				}
			})
		})
	}
}

// checkCorpus keeps the corpus honest: every attempt distinct and named.
func checkCorpus(t *testing.T, attempts []attempt) {
	t.Helper()
	seen := map[string]bool{}
	for _, at := range attempts {
		id := at.category + "/" + at.name
		if at.name == "" || at.run == nil || !slices.Contains(categories(), at.category) {
			t.Fatalf("attempt %q: needs a name, a known category and a run function", id)
		}
		if seen[id] {
			t.Fatalf("attempt %q appears twice", id)
		}
		seen[id] = true
	}
	t.Logf("hostile corpus: %d attempts", len(attempts))
}

// keyfence is one tenant's keyfence: in the sidecar modes an in-process
// keyfence of its own, in the gateway modes the tenant's side of the one
// gateway (fence.gw), which addr and logs then are.
type keyfence struct {
	tenant   string
	user     string // upstream ACL user; "" for the default user
	pass     string
	password string // the tenant's password at the gateway; "" in the sidecar modes
	srv      *proxy.Server
	addr     string
	cancel   context.CancelFunc
	served   chan error
	logs     *lockedBuffer
}

// gatewayProc is the in-process gateway keyfence of the gateway modes.
type gatewayProc struct {
	g      *proxy.Gateway
	addr   string
	cancel context.CancelFunc
	served chan error
	logs   *lockedBuffer
}

// fence is one upstream with acme's and beta's keyfences in front of it.
type fence struct {
	t      *testing.T
	mode   mode
	up     *redistest.Server
	secret string
	gw     *gatewayProc // the gateway modes' one keyfence; nil otherwise
	// nextIP numbers the loopback addresses acme's lobby connections come
	// from (lobbyConnFrom).
	nextIP int

	dbMu  sync.Mutex
	admin map[int]*redis.Client // default user, per upstream db

	acme, beta *keyfence
	betaDB     map[int]*redis.Client // through beta's keyfence, per db
	betaSHA    string
	seq        int
}

func newFence(t *testing.T, m mode) *fence {
	t.Helper()
	up := redistest.StartT(t, redistest.Options{Args: []string{
		// Keyspace events exist, so that leaking them is possible.
		"--notify-keyspace-events", "KEA",
		// Every command lands in the slowlog, so that SLOWLOG GET anywhere
		// would show beta's arguments.
		"--slowlog-log-slower-than", "0",
	}})
	var sb [8]byte
	_, _ = rand.Read(sb[:])
	f := &fence{
		t:      t,
		mode:   m,
		up:     up,
		secret: hex.EncodeToString(sb[:]),
		admin:  map[int]*redis.Client{},
		betaDB: map[int]*redis.Client{},
	}
	t.Cleanup(func() {
		f.dbMu.Lock()
		defer f.dbMu.Unlock()
		for db, c := range f.admin {
			if db != 0 {
				_ = c.Close()
			}
		}
	})
	f.acme = &keyfence{tenant: acmeID, logs: &lockedBuffer{}}
	f.beta = &keyfence{tenant: betaID, logs: &lockedBuffer{}}
	if m.aclUsers {
		f.acme.user, f.acme.pass = "kf-"+acmeID, "pw-a-"+f.secret
		f.beta.user, f.beta.pass = "kf-"+betaID, "pw-b-"+f.secret
		f.addUsers(t)
	}
	if m.gateway {
		// beta's password carries the secret: acme reading it anywhere
		// is a leak the scan finds. acme's does not.
		var ab [8]byte
		_, _ = rand.Read(ab[:])
		f.acme.password = "gw-a-" + hex.EncodeToString(ab[:])
		f.beta.password = "gw-b-" + f.secret
		f.gw = &gatewayProc{logs: &lockedBuffer{}}
		f.acme.logs, f.beta.logs = f.gw.logs, f.gw.logs
	}
	f.startKeyfence(t, f.acme)
	f.startKeyfence(t, f.beta)
	t.Cleanup(func() {
		f.stopKeyfence(t, f.acme)
		f.stopKeyfence(t, f.beta)
		f.closeBetaClients()
	})
	return f
}

func (f *fence) addUsers(t testing.TB) {
	t.Helper()
	for _, k := range []*keyfence{f.acme, f.beta} {
		if err := f.up.AddTenantUser(t.Context(), k.user, k.pass, k.tenant); err != nil {
			t.Fatalf("AddTenantUser %s: %v", k.tenant, err)
		}
	}
}

func (f *fence) startKeyfence(t testing.TB, k *keyfence) {
	t.Helper()
	if f.gw != nil {
		f.startGateway(t)
		return
	}
	fb := fallback.Defaults()
	srv, err := proxy.New(proxy.Config{
		Listen: "127.0.0.1:0",
		Tenant: k.tenant,
		Upstream: upstream.Config{
			Addr:     f.up.Addr(),
			Username: k.user,
			Password: k.pass,
		},
		Logger: slog.New(slog.NewTextHandler(k.logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
		// keyfence's defaults: the breaker and the read cache, whose
		// tracking every attempt then runs beside.
		Fallback: &fb, FallbackCache: true,
	})
	if err != nil {
		t.Fatalf("proxy.New(%s): %v", k.tenant, err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatalf("keyfence %s Listen: %v", k.tenant, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	k.srv, k.addr, k.cancel = srv, srv.Addr().String(), cancel
	k.served = make(chan error, 1)
	served := k.served
	go func() { served <- srv.Serve(ctx) }()
}

func (f *fence) stopKeyfence(t testing.TB, k *keyfence) {
	t.Helper()
	if f.gw != nil {
		f.stopGateway(t)
		return
	}
	if k.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := k.srv.Shutdown(ctx); err != nil {
		t.Logf("keyfence %s Shutdown: %v", k.tenant, err)
	}
	k.cancel()
	select {
	case <-k.served:
	case <-time.After(5 * time.Second):
		t.Errorf("keyfence %s: Serve did not return after Shutdown", k.tenant)
	}
	k.srv = nil
}

// restartKeyfence restarts k's keyfence: in the gateway modes the gateway,
// both tenants' keyfence.
func (f *fence) restartKeyfence(t testing.TB, k *keyfence) {
	t.Helper()
	f.stopKeyfence(t, k)
	f.startKeyfence(t, k)
	if k == f.beta || f.gw != nil {
		f.closeBetaClients()
	}
}

// tenantsFile is the gateway's tenants file: acme and beta, with their
// upstream users in the acl-users mode. Passwords are hashed with bcrypt's
// least cost: the suite attacks the gateway, not the hash's strength.
func (f *fence) tenantsFile(t testing.TB) *tenants.File {
	t.Helper()
	var b strings.Builder
	env := map[string]string{}
	b.WriteString("tenants:\n")
	for _, k := range []*keyfence{f.acme, f.beta} {
		h, err := bcrypt.GenerateFromPassword([]byte(k.password), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "  - id: %s\n    password_hash: %q\n", k.tenant, h)
		if k.user != "" {
			v := "KF_UPSTREAM_PASSWORD_" + strings.ToUpper(k.tenant)
			env[v] = k.pass
			fmt.Fprintf(&b, "    upstream:\n      user: %s\n      password_env: %s\n", k.user, v)
		}
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	file, err := tenants.Parse([]byte(b.String()), lookup, func(string) ([]byte, error) { return nil, errors.New("no files here") })
	if err != nil {
		t.Fatalf("tenants file: %v", err)
	}
	return file
}

// startGateway starts the gateway keyfence of both tenants, unless it runs.
func (f *fence) startGateway(t testing.TB) {
	t.Helper()
	gw := f.gw
	if gw.g != nil {
		return
	}
	fb := fallback.Defaults()
	g, err := proxy.NewGateway(proxy.GatewayConfig{
		Server: proxy.Config{
			Listen:   "127.0.0.1:0",
			Upstream: upstream.Config{Addr: f.up.Addr()},
			Logger:   slog.New(slog.NewTextHandler(gw.logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
			Fallback: &fb, FallbackCache: true, // keyfence's defaults, as for a sidecar
		},
		Tenants: f.tenantsFile(t),
	})
	if err != nil {
		t.Fatalf("proxy.NewGateway: %v", err)
	}
	if err := g.Listen(); err != nil {
		t.Fatalf("gateway Listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	gw.g, gw.addr, gw.cancel = g, g.Addr().String(), cancel
	f.acme.addr, f.beta.addr = gw.addr, gw.addr
	gw.served = make(chan error, 1)
	served := gw.served
	go func() { served <- g.Serve(ctx) }()
}

func (f *fence) stopGateway(t testing.TB) {
	t.Helper()
	gw := f.gw
	if gw.g == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := gw.g.Shutdown(ctx); err != nil {
		t.Logf("gateway Shutdown: %v", err)
	}
	gw.cancel()
	select {
	case <-gw.served:
	case <-time.After(5 * time.Second):
		t.Errorf("gateway: Serve did not return after Shutdown")
	}
	gw.g = nil
}

// dial opens a raw connection to k's keyfence as k's tenant: in the
// gateway modes it authenticates as the tenant first, as every client of a
// gateway does.
func (f *fence) dial(k *keyfence) (*rawConn, error) {
	c, err := dialRaw(k.addr)
	if err != nil {
		return nil, err
	}
	if k.password == "" {
		return c, nil
	}
	if r := c.do("AUTH", k.tenant, k.password); r.err != nil || r.v.typ != '+' || r.v.str != "OK" {
		_ = c.Close()
		return nil, fmt.Errorf("AUTH as %s at the gateway %s: %s", k.tenant, k.addr, r)
	}
	return c, nil
}

// tenantUser is the username k's clients give: the tenant at a gateway,
// none at a sidecar.
func (k *keyfence) tenantUser() string {
	if k.password == "" {
		return ""
	}
	return k.tenant
}

func (f *fence) closeBetaClients() {
	for db, c := range f.betaDB {
		_ = c.Close()
		delete(f.betaDB, db)
	}
}

// adminDB is a default-user client on upstream database db: the upstream's
// own view, behind both keyfences' backs.
func (f *fence) adminDB(db int) *redis.Client {
	f.dbMu.Lock()
	defer f.dbMu.Unlock()
	if c, ok := f.admin[db]; ok {
		return c
	}
	var c *redis.Client
	if db == 0 {
		c = f.up.Client()
	} else {
		c = redis.NewClient(&redis.Options{Addr: f.up.Addr(), DB: db, DisableIdentity: true})
	}
	f.admin[db] = c
	return c
}

// betaClient is beta's own go-redis client on db, through beta's keyfence.
func (f *fence) betaClient(db int) *redis.Client {
	if c, ok := f.betaDB[db]; ok {
		return c
	}
	c := redis.NewClient(&redis.Options{
		Addr: f.beta.addr, DB: db, DisableIdentity: true,
		// In the gateway modes beta's app picks its tenant as the issue
		// says apps do: the client's username/password options.
		Username: f.beta.tenantUser(), Password: f.beta.password,
		ReadTimeout: opTimeout, WriteTimeout: opTimeout, MaxRetries: -1,
	})
	f.betaDB[db] = c
	return c
}

// canaryValue is beta's value for part of key in db: it carries the secret,
// so that acme seeing it anywhere is proof of a leak.
func (f *fence) canaryValue(db int, part string) string {
	return fmt.Sprintf("beta-%s-db%d-%s", f.secret, db, part)
}

// watch is the state prepared before one attempt.
type watch struct {
	sub     *rawConn // beta: SUBSCRIBE news + keyevent, PSUBSCRIBE alerts.*
	blpop   *rawConn // beta: BLPOP queue 0, pending
	before  map[string]keyState
	config  map[string]string
	acl     string
	acmeLog int // length of each keyfence's log before the attempt
	betaLog int
}

func (w *watch) close() {
	for _, c := range []*rawConn{w.sub, w.blpop} {
		if c != nil {
			_ = c.Close()
		}
	}
}

// run prepares beta's canaries and watchers, runs the attempt as acme, and
// checks that the fence held.
func (f *fence) run(t *testing.T, at attempt) {
	f.seq++
	w := f.prepare(t)
	a := &act{t: t, f: f}
	defer func() {
		defer w.close()
		defer a.closeAll()
		restarted := f.checkServing(t)
		if !restarted {
			f.checkWatchers(t, w)
			f.checkData(t, w)
		}
		f.checkLeaks(t, a)
		f.cleanup(t, w)
		if t.Failed() {
			f.showLogs(t, w)
		}
	}()
	at.run(a)
}

func (f *fence) prepare(t *testing.T) *watch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	w := &watch{acmeLog: f.acme.logs.Len(), betaLog: f.beta.logs.Len()}

	if err := f.adminDB(0).Set(ctx, acmePrefix+acmeOwnKey, acmeOwnValue, 0).Err(); err != nil {
		t.Fatalf("setup: SET acme's own key upstream: %v", err)
	}
	for _, db := range canaryDBs() {
		if err := f.writeCanary(ctx, db); err != nil {
			t.Fatalf("setup: beta writing its canary data in db %d through its keyfence: %v", db, err)
		}
	}
	sha, err := f.betaClient(0).ScriptLoad(ctx, betaScript).Result()
	if err != nil {
		t.Fatalf("setup: beta SCRIPT LOAD: %v", err)
	}
	f.betaSHA = sha
	if err := f.betaClient(0).Do(ctx, "FUNCTION", "LOAD", "REPLACE", betaLibrary(f.secret)).Err(); err != nil {
		t.Fatalf("setup: beta FUNCTION LOAD: %v", err)
	}

	if w.sub, err = f.subscribeBeta(); err != nil {
		t.Fatalf("setup: beta's subscriber: %v", err)
	}
	if err := f.syncSubscriber(ctx, w.sub, "setup"); err != nil {
		w.close()
		t.Fatalf("setup: beta's subscriber: %v", err)
	}
	if w.blpop, err = f.blockBeta(ctx); err != nil {
		w.close()
		t.Fatalf("setup: beta's BLPOP: %v", err)
	}
	if w.before, err = f.snapshot(ctx); err != nil {
		w.close()
		t.Fatalf("setup: snapshot of beta's keys: %v", err)
	}
	if _, ok := w.before[snapKey(0, betaPrefix+"str")]; !ok {
		w.close()
		t.Fatalf("setup: beta's canary is not upstream as %sstr: %v", betaPrefix, w.before)
	}
	if w.config, err = f.configAll(ctx); err != nil {
		w.close()
		t.Fatalf("setup: CONFIG GET *: %v", err)
	}
	if w.acl, err = f.aclList(ctx); err != nil {
		w.close()
		t.Fatalf("setup: ACL LIST: %v", err)
	}
	return w
}

func (f *fence) writeCanary(ctx context.Context, db int) error {
	c := f.betaClient(db)
	v := func(part string) string { return f.canaryValue(db, part) }
	del := append(canaryKeys(f.secret), betaQueue, betaEventKey)
	_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, del...)
		p.Set(ctx, "str", v("str"), 0)
		p.HSet(ctx, "hash", "f1", v("h1"), "f2", v("h2"))
		p.RPush(ctx, "list", v("l1"), v("l2"), v("l3"))
		p.SAdd(ctx, "set", v("s1"), v("s2"), v("s3"))
		p.ZAdd(ctx, "zset", redis.Z{Score: 1, Member: v("z1")}, redis.Z{Score: 2, Member: v("z2")})
		for i := 1; i <= 3; i++ {
			p.XAdd(ctx, &redis.XAddArgs{Stream: "stream", ID: fmt.Sprintf("1-%d", i), Values: []string{"f", v("x" + strconv.Itoa(i))}})
		}
		p.XGroupCreate(ctx, "stream", "grp", "0")
		p.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "grp", Consumer: "c1", Streams: []string{"stream", ">"}, Count: 2, Block: -1})
		p.Set(ctx, "ttl", v("ttl"), time.Hour)
		p.Set(ctx, "hidden-"+f.secret, v("hidden"), 0)
		return nil
	})
	return err
}

// subscribeBeta opens beta's subscriber: a channel, a pattern and a
// keyevent channel, all through beta's keyfence.
func (f *fence) subscribeBeta() (*rawConn, error) {
	c, err := f.dial(f.beta)
	if err != nil {
		return nil, err
	}
	if err := c.write(append(encode("SUBSCRIBE", betaChannel, betaEventChan), encode("PSUBSCRIBE", betaPattern)...)); err != nil {
		_ = c.Close()
		return nil, err
	}
	for range 3 {
		if r := c.read(); r.err != nil || len(r.v.elems) < 1 || !strings.HasSuffix(r.v.elems[0].str, "subscribe") {
			_ = c.Close()
			return nil, fmt.Errorf("subscribe confirmation: %s", r)
		}
	}
	return c, nil
}

// syncSubscriber has beta publish one message on each of its subscriptions
// and reads until all three arrived. Messages on the way that do not carry
// beta's secret were not sent by beta: they are returned as forged.
func (f *fence) syncSubscriber(ctx context.Context, sub *rawConn, tag string) error {
	forged, err := f.syncSubscriberForged(ctx, sub, tag)
	if err != nil {
		return err
	}
	if len(forged) > 0 {
		return fmt.Errorf("messages beta did not send: %s", strings.Join(forged, "; "))
	}
	return nil
}

func (f *fence) syncSubscriberForged(ctx context.Context, sub *rawConn, tag string) (forged []string, err error) {
	payload := fmt.Sprintf("sync-%s-%d-%s", f.secret, f.seq, tag)
	c := f.betaClient(0)
	if err := c.Publish(ctx, betaChannel, payload).Err(); err != nil {
		return nil, fmt.Errorf("beta PUBLISH %s: %w", betaChannel, err)
	}
	if err := c.Publish(ctx, betaSyncChannel, payload).Err(); err != nil {
		return nil, fmt.Errorf("beta PUBLISH %s: %w", betaSyncChannel, err)
	}
	if err := c.Set(ctx, betaEventKey, f.secret, 0).Err(); err != nil {
		return nil, fmt.Errorf("beta SET %s: %w", betaEventKey, err)
	}
	if err := c.Del(ctx, betaEventKey).Err(); err != nil {
		return nil, fmt.Errorf("beta DEL %s: %w", betaEventKey, err)
	}
	want := map[string]bool{"news": true, "pattern": true, "event": true}
	for len(want) > 0 {
		r := sub.read()
		if r.err != nil {
			return forged, fmt.Errorf("reading beta's subscriber (still waiting for %v): %w", mapKeys(want), r.err)
		}
		m := r.v.strs()
		switch {
		case len(m) == 3 && m[0] == "message" && m[1] == betaChannel && m[2] == payload:
			delete(want, "news")
		case len(m) == 4 && m[0] == "pmessage" && m[1] == betaPattern && m[2] == betaSyncChannel && m[3] == payload:
			delete(want, "pattern")
		case len(m) == 3 && m[0] == "message" && m[1] == betaEventChan && m[2] == betaEventKey:
			delete(want, "event")
		case len(m) >= 3 && strings.Contains(m[len(m)-1], f.secret):
			// beta's own earlier traffic (pub/sub attempts make beta active)
		default:
			forged = append(forged, r.String())
		}
	}
	return forged, nil
}

// blockBeta starts beta's BLPOP and waits until Redis has it blocked.
func (f *fence) blockBeta(ctx context.Context) (*rawConn, error) {
	before, err := f.blockedClients(ctx)
	if err != nil {
		return nil, err
	}
	c, err := f.dial(f.beta)
	if err != nil {
		return nil, err
	}
	if err := c.write(encode("BLPOP", betaQueue, "0")); err != nil {
		_ = c.Close()
		return nil, err
	}
	for {
		n, err := f.blockedClients(ctx)
		if err != nil {
			_ = c.Close()
			return nil, err
		}
		if n > before {
			return c, nil
		}
		select {
		case <-ctx.Done():
			_ = c.Close()
			return nil, fmt.Errorf("BLPOP never blocked upstream: %w", ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

func (f *fence) blockedClients(ctx context.Context) (int, error) {
	info, err := f.adminDB(0).Info(ctx, "clients").Result()
	if err != nil {
		return 0, fmt.Errorf("INFO clients: %w", err)
	}
	n, _ := strconv.Atoi(infoField(info, "blocked_clients"))
	return n, nil
}

// keyState is one upstream key as the upstream itself shows it.
type keyState struct {
	typ   string
	value string
	pttl  int64 // ms; -1 for none
}

func snapKey(db int, key string) string { return fmt.Sprintf("db%d/%s", db, key) }

// snapshot reads every tenant:beta:* key of every upstream database, in
// two pipelined rounds per database (types and TTLs, then values).
func (f *fence) snapshot(ctx context.Context) (map[string]keyState, error) {
	out := map[string]keyState{}
	dbs, err := f.keyspaceDBs(ctx)
	if err != nil {
		return nil, err
	}
	for _, db := range dbs {
		c := f.adminDB(db)
		keys, err := scanKeys(ctx, c, betaPrefix+"*")
		if err != nil {
			return nil, err
		}
		if db == 0 {
			// keyfence's store of beta's functions: only beta changes it.
			keys = append(keys, rewrite.FunctionStoreKey(betaPrefix))
		}
		states, err := readKeys(ctx, c, keys)
		if err != nil {
			return nil, fmt.Errorf("db %d: %w", db, err)
		}
		for i, k := range keys {
			out[snapKey(db, k)] = states[i]
		}
	}
	return out, nil
}

// valueReads are the commands that show a key's whole value, by type.
func valueReads(typ, k string) [][]any {
	switch typ {
	case "string":
		return [][]any{{"GET", k}}
	case "hash":
		return [][]any{{"HGETALL", k}}
	case "list":
		return [][]any{{"LRANGE", k, 0, -1}}
	case "set":
		return [][]any{{"SMEMBERS", k}}
	case "zset":
		return [][]any{{"ZRANGE", k, 0, -1, "WITHSCORES"}}
	case "stream":
		return [][]any{{"XRANGE", k, "-", "+"}, {"XINFO", "GROUPS", k}, {"XPENDING", k, "grp", "-", "+", 100}}
	}
	return [][]any{{"DUMP", k}}
}

func readKeys(ctx context.Context, c *redis.Client, keys []string) ([]keyState, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	out := make([]keyState, len(keys))
	meta, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			p.Type(ctx, k)
			p.Do(ctx, "PTTL", k)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("TYPE/PTTL: %w", err)
	}
	for i := range keys {
		out[i].typ = meta[2*i].(*redis.StatusCmd).Val()
		pttl, _ := meta[2*i+1].(*redis.Cmd).Int64()
		out[i].pttl = max(pttl, -1)
	}
	var owner []int
	vals, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			for _, args := range valueReads(out[i].typ, k) {
				p.Do(ctx, args...)
				owner = append(owner, i)
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("reading values: %w", err)
	}
	parts := make([][]any, len(keys))
	for j, cmd := range vals {
		v, err := cmd.(*redis.Cmd).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("%v: %w", cmd.Args(), err)
		}
		v = normalize(v)
		if out[owner[j]].typ == "set" {
			v = sortedAny(v)
		}
		parts[owner[j]] = append(parts[owner[j]], v)
	}
	for i := range keys {
		out[i].value = fmt.Sprint(parts[i]...)
	}
	return out, nil
}

// sortedAny sorts a set's members, which Redis returns in no fixed order.
func sortedAny(v any) any {
	l, ok := v.([]any)
	if !ok {
		return v
	}
	s := make([]string, len(l))
	for i, e := range l {
		s[i] = fmt.Sprint(e)
	}
	sort.Strings(s)
	return s
}

// normalize makes a go-redis reply comparable: sets sorted, pending
// entries' idle times dropped.
func normalize(v any) any {
	switch x := v.(type) {
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = normalize(e)
		}
		// XPENDING extended entries: [id consumer idle deliveries]; idle changes.
		if len(out) == 4 {
			if _, ok := x[2].(int64); ok {
				if _, ok := x[0].(string); ok {
					out[2] = "idle"
				}
			}
		}
		return out
	case map[any]any:
		m := map[string]any{}
		for k, e := range x {
			m[fmt.Sprint(k)] = normalize(e)
		}
		delete(m, "idle")
		delete(m, "inactive")
		return m
	case map[string]any:
		m := map[string]any{}
		for k, e := range x {
			m[k] = normalize(e)
		}
		return m
	}
	return v
}

// keyspaceDBs lists the upstream databases that hold keys.
func (f *fence) keyspaceDBs(ctx context.Context) ([]int, error) {
	info, err := f.adminDB(0).Info(ctx, "keyspace").Result()
	if err != nil {
		return nil, fmt.Errorf("INFO keyspace: %w", err)
	}
	var dbs []int
	for _, line := range strings.Split(info, "\n") {
		name, _, ok := strings.Cut(strings.TrimSpace(line), ":")
		if n, err := strconv.Atoi(strings.TrimPrefix(name, "db")); ok && strings.HasPrefix(name, "db") && err == nil {
			dbs = append(dbs, n)
		}
	}
	return dbs, nil
}

func scanKeys(ctx context.Context, c *redis.Client, match string) ([]string, error) {
	var keys []string
	it := c.Scan(ctx, 0, match, 1000).Iterator()
	for it.Next(ctx) {
		keys = append(keys, it.Val())
	}
	return keys, it.Err()
}

func (f *fence) configAll(ctx context.Context) (map[string]string, error) {
	return f.adminDB(0).ConfigGet(ctx, "*").Result()
}

func (f *fence) aclList(ctx context.Context) (string, error) {
	l, err := f.adminDB(0).Do(ctx, "ACL", "LIST").StringSlice()
	return strings.Join(l, "\n"), err
}

// checkServing checks that Redis and both keyfences still serve, and brings
// back a stalled or crashed upstream first (a keyfence cannot serve while
// Redis is busy; that finding is the PING's). It reports whether the
// upstream had to be restarted: its data is then gone and cannot be
// compared.
func (f *fence) checkServing(t *testing.T) (restarted bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := f.adminDB(0).Ping(ctx).Err(); err != nil {
		t.Errorf("the upstream Redis no longer answers PING after the attempt: %v", err)
		restarted = f.recoverUpstream(t)
	}

	start := time.Now()
	got, err := f.rawGet(f.beta, "str")
	want := f.canaryValue(0, "str")
	if err != nil || got.isErr() || (!restarted && got.v.str != want) {
		t.Errorf("beta's keyfence no longer serves a normal GET after the attempt: got %s, %v; want %q (after %v)",
			got, err, want, time.Since(start).Round(time.Millisecond))
	}
	if got, err := f.rawGet(f.acme, acmeOwnKey); err != nil || got.isErr() {
		t.Errorf("acme's keyfence no longer serves a normal GET after the attempt: got %s, %v", got, err)
	}
	// A keyfence that lost its way is replaced so that the next attempt
	// starts from a working fence; the finding has been reported above.
	// In the gateway modes one restart serves both tenants.
	for _, k := range []*keyfence{f.acme, f.beta} {
		if r, err := f.rawGet(k, "str"); err != nil || r.isErr() {
			t.Logf("restarting keyfence %s for the next attempt", k.tenant)
			f.restartKeyfence(t, k)
		}
	}
	return restarted
}

// rawGet runs one GET as k's tenant on a new connection.
func (f *fence) rawGet(k *keyfence, key string) (reply, error) {
	c, err := f.dial(k)
	if err != nil {
		return reply{}, err
	}
	defer c.Close()
	r := c.do("GET", key)
	return r, r.err
}

// recoverUpstream ends a script that keeps Redis busy, or restarts Redis when
// that fails (a script that wrote cannot be killed) or Redis is gone.
func (f *fence) recoverUpstream(t *testing.T) (restarted bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := f.adminDB(0).Do(ctx, "SCRIPT", "KILL").Err(); err == nil {
		t.Logf("recovery: SCRIPT KILL on the upstream")
		for range 50 {
			if f.adminDB(0).Ping(ctx).Err() == nil {
				return false
			}
			time.Sleep(50 * time.Millisecond)
		}
	} else {
		t.Logf("recovery: SCRIPT KILL on the upstream: %v", err)
	}
	t.Logf("recovery: restarting the upstream Redis (its data is lost; this attempt's data checks are skipped)")
	rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer rcancel()
	if err := f.up.Restart(rctx); err != nil {
		t.Fatalf("recovery: restart upstream: %v", err)
	}
	if f.mode.aclUsers {
		f.addUsers(t)
	}
	return true
}

// checkWatchers checks that beta's subscriber got nothing from acme and that
// beta's BLPOP is still waiting for beta.
func (f *fence) checkWatchers(t *testing.T, w *watch) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	forged, err := f.syncSubscriberForged(ctx, w.sub, "after")
	for _, m := range forged {
		t.Errorf("beta's subscriber received a message beta never sent (forged by acme): %s", m)
	}
	if err != nil {
		t.Errorf("beta's subscriber broke during the attempt: %v", err)
	}

	payload := fmt.Sprintf("pop-%s-%d", f.secret, f.seq)
	if err := f.betaClient(0).LPush(ctx, betaQueue, payload).Err(); err != nil {
		t.Errorf("beta LPUSH %s: %v", betaQueue, err)
		return
	}
	r := w.blpop.read()
	if got := r.v.strs(); r.err != nil || len(got) != 2 || got[0] != betaQueue || got[1] != payload {
		t.Errorf("beta's blocked BLPOP %s did not get beta's own push: got %s (served by acme or broken)", betaQueue, r)
	}
}

// checkData compares beta's keys, the keys outside both namespaces, the
// server's configuration, ACL users, functions and role with their state
// before the attempt.
func (f *fence) checkData(t *testing.T, w *watch) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	after, err := f.snapshot(ctx)
	if err != nil {
		t.Errorf("snapshot of beta's keys after the attempt: %v", err)
		return
	}
	for _, k := range sortedKeys(w.before) {
		b, a := w.before[k], after[k]
		switch {
		case a == keyState{}:
			t.Errorf("beta's key %s was deleted or moved (was %s %.120s)", k, b.typ, b.value)
		case a.typ != b.typ || a.value != b.value:
			t.Errorf("beta's key %s was changed:\n  before %s %.300s\n  after  %s %.300s", k, b.typ, b.value, a.typ, a.value)
		case (b.pttl < 0) != (a.pttl < 0) || a.pttl > b.pttl+1000 || a.pttl < b.pttl-ttlTolerance.Milliseconds():
			t.Errorf("beta's key %s TTL changed: %d ms before, %d ms after", k, b.pttl, a.pttl)
		}
	}
	for _, k := range sortedKeys(after) {
		if _, ok := w.before[k]; !ok {
			t.Errorf("a key appeared in beta's namespace: %s = %s %.200s", k, after[k].typ, after[k].value)
		}
	}

	dbs, err := f.keyspaceDBs(ctx)
	if err != nil {
		t.Errorf("%v", err)
	}
	for _, db := range dbs {
		keys, err := scanKeys(ctx, f.adminDB(db), "*")
		if err != nil {
			t.Errorf("SCAN db %d: %v", db, err)
			continue
		}
		for _, k := range keys {
			// keyfence's store of each tenant's functions lives in its
			// base database, 0.
			store := db == 0 && (k == rewrite.FunctionStoreKey(acmePrefix) || k == rewrite.FunctionStoreKey(betaPrefix))
			if !strings.HasPrefix(k, acmePrefix) && !strings.HasPrefix(k, betaPrefix) && !store {
				t.Errorf("key %q was created in upstream db %d, outside tenant:acme:* and tenant:beta:*", k, db)
			}
		}
	}
	// Beta's function is there and answers as beta's.
	if got, err := f.betaClient(0).Do(ctx, "FCALL", betaFnName, 1, "str").Text(); err != nil || got != f.canaryValue(0, "str") {
		t.Errorf("beta's FCALL %s after the attempt: %q, %v", betaFnName, got, err)
	}
	if got, err := f.betaClient(0).Do(ctx, "FUNCTION", "LIST", "WITHCODE").Slice(); err != nil || len(got) != 1 ||
		!strings.Contains(fmt.Sprint(got), betaLibrary(f.secret)) {
		t.Errorf("beta's FUNCTION LIST after the attempt: %v, %v", got, err)
	}

	if cfg, err := f.configAll(ctx); err != nil {
		t.Errorf("CONFIG GET * after the attempt: %v", err)
	} else {
		for _, k := range sortedKeys(w.config) {
			if cfg[k] != w.config[k] {
				t.Errorf("the upstream's configuration was changed: %s %q -> %q", k, w.config[k], cfg[k])
			}
		}
	}
	if acl, err := f.aclList(ctx); err != nil || acl != w.acl {
		t.Errorf("the upstream's ACL users were changed: %v\n  before %s\n  after  %s", err, w.acl, acl)
	}
	// keyfence's own Lua sandbox is a library named keyfence_<version>,
	// which only keyfence loads; any other library is a tenant's doing.
	libs, err := f.adminDB(0).Do(ctx, "FUNCTION", "LIST", "LIBRARYNAME", "").Slice()
	if err != nil {
		t.Errorf("FUNCTION LIST: %v", err)
	}
	for _, l := range libs {
		name := fmt.Sprint(l)
		if m, ok := l.(map[any]any); ok {
			name = fmt.Sprint(m["library_name"])
		}
		if !strings.HasPrefix(name, "keyfence_") {
			t.Errorf("a function library was loaded upstream: %v", l)
		}
	}
	if n := len(libs); n > 1 {
		t.Errorf("%d function libraries upstream, want keyfence's sandbox only", n)
	}
	if info, err := f.adminDB(0).Info(ctx, "replication").Result(); err != nil || infoField(info, "role") != "master" {
		t.Errorf("the upstream's replication role was changed: %v %q", err, infoField(info, "role"))
	}
}

// checkLeaks scans every byte acme received for beta's secret (in every
// canary value, hidden key name and message) and, when acme never named
// beta itself, for the word beta.
func (f *fence) checkLeaks(t *testing.T, a *act) {
	t.Helper()
	mentioned := false
	for _, c := range a.conns {
		if bytes.Contains(bytes.ToLower(c.sentBytes()), []byte(betaID)) {
			mentioned = true
		}
	}
	for i, c := range a.conns {
		got := c.received()
		needles := []string{f.secret}
		if !mentioned {
			needles = append(needles, betaID)
		}
		for _, n := range needles {
			if at := bytes.Index(bytes.ToLower(got), []byte(n)); at >= 0 {
				lo, hi := max(at-120, 0), min(at+len(n)+120, len(got))
				t.Errorf("acme's connection %d received %q (beta's) in a reply: …%q…", i, n, got[lo:hi])
			}
		}
	}
}

// cleanup removes what the attempt left (acme's keys, stray keys, config and
// function changes) so that the next attempt starts from the same state.
func (f *fence) cleanup(t *testing.T, w *watch) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	dbs, err := f.keyspaceDBs(ctx)
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	var canary []string
	for _, k := range canaryKeys(f.secret) {
		canary = append(canary, betaPrefix+k)
	}
	for _, db := range dbs {
		c := f.adminDB(db)
		keys, err := scanKeys(ctx, c, "*")
		if err != nil {
			t.Errorf("cleanup: SCAN db %d: %v", db, err)
			continue
		}
		var drop []string
		for _, k := range keys {
			if db > 1 || !slices.Contains(canary, k) {
				drop = append(drop, k)
			}
		}
		for chunk := range slices.Chunk(drop, 500) {
			if err := c.Unlink(ctx, chunk...).Err(); err != nil {
				t.Errorf("cleanup: UNLINK in db %d: %v", db, err)
			}
		}
	}
	if cfg, err := f.configAll(ctx); err == nil && w.config != nil {
		for k, v := range w.config {
			if cfg[k] != v {
				_ = f.adminDB(0).ConfigSet(ctx, k, v).Err()
			}
		}
	}
	if fl, err := f.adminDB(0).Do(ctx, "FUNCTION", "LIST").Slice(); err != nil || len(fl) > 0 {
		_ = f.adminDB(0).Do(ctx, "FUNCTION", "FLUSH").Err()
	}
	if info, err := f.adminDB(0).Info(ctx, "replication").Result(); err != nil || infoField(info, "role") != "master" {
		_ = f.adminDB(0).Do(ctx, "REPLICAOF", "NO", "ONE").Err()
	}
}

func (f *fence) showLogs(t *testing.T, w *watch) {
	t.Helper()
	for i, x := range []struct {
		k    *keyfence
		from int
	}{{f.acme, w.acmeLog}, {f.beta, w.betaLog}} {
		if i > 0 && x.k.logs == f.acme.logs {
			break // the gateway's one log, shown once
		}
		if s := x.k.logs.From(x.from, 2<<10); s != "" {
			t.Logf("keyfence %s logged during the attempt:\n%s", x.k.tenant, s)
		}
	}
}

// betaActivity makes beta publish on its channels and write a key, so that
// a subscription of acme's that reached beta would receive something.
func (f *fence) betaActivity(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	c := f.betaClient(0)
	key := "act-" + f.secret
	for _, err := range []error{
		c.Publish(ctx, betaChannel, "beta-news-"+f.secret).Err(),
		c.Publish(ctx, "alerts.x", "beta-alert-"+f.secret).Err(),
		c.Do(ctx, "SPUBLISH", betaChannel, "beta-shard-"+f.secret).Err(),
		c.Set(ctx, key, f.secret, 0).Err(),
		c.Expire(ctx, key, time.Hour).Err(),
		c.Del(ctx, key).Err(),
	} {
		if err != nil {
			t.Errorf("beta's own activity through its keyfence failed: %v", err)
		}
	}
}

func infoField(info, field string) string {
	for _, line := range strings.Split(info, "\n") {
		if k, v, ok := strings.Cut(strings.TrimRight(line, "\r"), ":"); ok && k == field {
			return v
		}
	}
	return ""
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func mapKeys(m map[string]bool) []string { return sortedKeys(m) }

// lockedBuffer collects a keyfence's log lines from its goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len() > 4<<20 {
		return len(p), nil
	}
	return b.buf.Write(p)
}

func (b *lockedBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Len()
}

// From returns at most limit bytes of what was logged after offset.
func (b *lockedBuffer) From(offset, limit int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.buf.Bytes()[min(offset, b.buf.Len()):]
	if len(s) > limit {
		s = s[len(s)-limit:]
	}
	return string(s)
}
