package proxy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keyfence/keyfence/fallback"
	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/rewrite"
)

// addLeastPrivilegeUser creates the upstream user `keyfence acl --tenant id`
// prints (the same ACLRules), with password pass.
func addLeastPrivilegeUser(t testing.TB, up *redistest.Server, id, pass string) (user string) {
	t.Helper()
	prefix, err := rewrite.Prefix(rewrite.DefaultKeyFormat, id)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(pass))
	user = "keyfence-" + id
	args := []any{"ACL", "SETUSER", user}
	for _, r := range ACLRules(prefix, hex.EncodeToString(sum[:])) {
		args = append(args, r)
	}
	if err := up.Client().Do(testCtx(t), args...).Err(); err != nil {
		t.Fatalf("ACL SETUSER of keyfence acl: %v", err)
	}
	return user
}

// startLeastPrivilegeProxy starts keyfence for tenant id logged in upstream
// as the least-privilege user; mutate may change the rest of the config.
func startLeastPrivilegeProxy(t *testing.T, up *redistest.Server, id string, db int, mutate func(*Config)) string {
	t.Helper()
	pass := "pw-" + id + "-least-privilege"
	user := addLeastPrivilegeUser(t, up, id, pass)
	return startProxy(t, up, func(c *Config) {
		c.Tenant = id
		c.Upstream.Username = user
		c.Upstream.Password = pass
		c.Upstream.DB = db
		// The user may not read CONFIG: the operator vouches for
		// sanitize-dump-payload, as the README says.
		c.Upstream.AssumeRestoreSanitized = true
		if mutate != nil {
			mutate(c)
		}
	})
}

// The user `keyfence acl` prints is narrow: what keyfence never sends is
// refused upstream, other tenants' keys and channels too.
func TestACLUserIsNarrow(t *testing.T) {
	t.Parallel()
	up := testRedis(t)
	ctx := testCtx(t)
	user := addLeastPrivilegeUser(t, up, "aclnarrow", "pw-narrow")
	c := up.UserClient(user, "pw-narrow")
	t.Cleanup(func() { c.Close() })
	for _, args := range [][]any{
		{"GET", "tenant:other:k"}, {"SET", "k", "v"}, {"DEL", "tenant:other:k"},
		{"FLUSHALL"}, {"FLUSHDB"}, {"SWAPDB", "0", "1"}, {"CONFIG", "GET", "*"},
		{"SHUTDOWN"}, {"MONITOR"}, {"SLOWLOG", "GET"}, {"CLIENT", "LIST"}, {"CLIENT", "KILL", "ID", "1"},
		{"ACL", "LIST"}, {"EVAL", "return 1", "0"}, {"SCRIPT", "FLUSH"}, {"SCRIPT", "KILL"},
		{"FUNCTION", "DELETE", "x"}, {"FUNCTION", "FLUSH"}, {"MIGRATE", "h", "1", "k", "0", "1"},
		{"MOVE", "tenant:aclnarrow:k", "1"}, {"RANDOMKEY"}, {"DBSIZE"}, {"PUBSUB", "NUMPAT"},
		{"MEMORY", "STATS"}, {"OBJECT", "FREQ", "tenant:other:k"}, {"LATENCY", "LATEST"},
		{"PUBLISH", "tenant:other:news", "x"}, {"PUBLISH", "news", "x"},
	} {
		err := c.Do(ctx, args...).Err()
		if err == nil || !strings.Contains(err.Error(), "NOPERM") {
			t.Errorf("%v as the least-privilege user: %v, want NOPERM", args, err)
		}
	}
	// Redis compares PSUBSCRIBE patterns with channel rules literally.
	sub := c.PSubscribe(ctx, "*")
	if _, err := sub.Receive(ctx); err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Errorf("PSUBSCRIBE * as the least-privilege user: %v, want NOPERM", err)
	}
	sub.Close()
	for _, args := range [][]any{{"SET", "tenant:aclnarrow:k", "v"}, {"GET", "tenant:aclnarrow:k"}, {"PING"}, {"PUBLISH", "tenant:aclnarrow:news", "x"}} {
		if err := c.Do(ctx, args...).Err(); err != nil {
			t.Errorf("%v as the least-privilege user: %v", args, err)
		}
	}
}

// keyfence logged in as the user `keyfence acl` prints runs the isolation
// workload and every emulated command without one NOPERM; the same run with
// the unrestricted default user shows keyfence alone keeps the tenants
// apart. Each run has an upstream of its own (with keyspace notifications
// on), so the workload's databases are its alone.
func TestACLUserRunsEverything(t *testing.T) {
	t.Parallel()
	for _, leastPrivilege := range []bool{true, false} {
		name := "default user"
		if leastPrivilege {
			name = "least-privilege user"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			runUpstreamUser(t, leastPrivilege)
		})
	}
}

func runUpstreamUser(t *testing.T, leastPrivilege bool) {
	// sanitize-dump-payload yes, as the README asks of a shared server:
	// the workload RESTOREs.
	up := redistest.StartT(t, redistest.Options{Args: []string{"--notify-keyspace-events", "KEA", "--sanitize-dump-payload", "yes"}})
	ctx := testCtx(t)
	errs := &errCounter{}
	logs := &syncBuffer{}

	sub := up.Client().Subscribe(ctx, "tenant:acla:news", "tenant:aclb:news")
	defer sub.Close()
	for i := 0; i < 2; i++ {
		if _, err := sub.Receive(ctx); err != nil {
			t.Fatalf("admin SUBSCRIBE: %v", err)
		}
	}
	cache := fallback.Defaults()
	runs := map[string]*tenantRun{}
	for _, id := range []string{"acla", "aclb"} {
		mutate := func(c *Config) {
			c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			if id == "aclb" {
				// b also runs the read cache: its CLIENT ID, TRACKING and
				// CACHING must pass. Every read is a sighting, so that the
				// workload's reads read twice are filled.
				c.Fallback, c.FallbackCache, c.FallbackSample = &cache, true, 1
			}
		}
		var addr string
		if leastPrivilege {
			addr = startLeastPrivilegeProxy(t, up, id, isoDB, mutate)
		} else {
			addr = startProxy(t, up, func(c *Config) {
				c.Tenant, c.Upstream.DB = id, isoDB
				mutate(c)
			})
		}
		hook := &countHook{tenant: id, errs: errs}
		c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, PoolSize: 4})
		c.AddHook(hook)
		c2 := proxyClient(t, addr, nil)
		c2.AddHook(hook)
		t.Cleanup(func() { c.Close() })
		runs[id] = &tenantRun{t: t, id: id, addr: addr, c: c, c2: c2, hook: hook, value: "tenant-" + id + "-value"}
	}
	var wg sync.WaitGroup
	for _, r := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.workload(ctx)
		}()
	}
	wg.Wait()
	for i := 0; i < 2; i++ {
		if _, err := sub.ReceiveMessage(ctx); err != nil {
			t.Fatalf("admin: no PUBLISH arrived: %v", err)
		}
	}
	runs["acla"].probeOther(ctx, "aclb")
	runs["aclb"].probeOther(ctx, "acla")
	for _, r := range runs {
		r.checkOwnView(ctx)
		r.eq("RESP2 GET", r.c2.Get(ctx, "str").Val(), r.v("str")+"!")
	}

	for _, r := range runs {
		t.Run(r.id+"/emulated", func(t *testing.T) { aclEmulated(t, r, errs) })
	}
	// The read cache's fills registered their keys (aclEmulated reads one
	// key twice; nothing has written it since).
	if info, err := up.Client().Info(ctx, "stats").Result(); err != nil || strings.Contains(info, "tracking_total_keys:0\r\n") {
		t.Errorf("no key tracked for the read cache's fills: %v", err)
	}
	a, b := runs["acla"], runs["aclb"]
	b.eq("FLUSHDB", b.c.FlushDB(ctx).Val(), "OK")
	b.eq("DBSIZE after FLUSHDB", b.c.DBSize(ctx).Val(), int64(0))
	a.eq("FLUSHALL", a.c.FlushAll(ctx).Val(), "OK")
	a.eq("DBSIZE after FLUSHALL", a.c.DBSize(ctx).Val(), int64(0))
	if n := up.Client().DBSize(ctx).Val(); n != 0 {
		t.Errorf("upstream db 0 holds %d keys after both tenants flushed", n)
	}

	errs.mu.Lock()
	defer errs.mu.Unlock()
	for _, e := range errs.noperm {
		t.Errorf("ACL refusal seen by a client: %s", e)
	}
	for _, e := range errs.other {
		t.Errorf("unexpected error: %s", e)
	}
	// keyfence's own commands, which no client sees the replies of (the
	// fills' tracking commands), were refused nothing either but the
	// CONFIG GET of sanitize-dump-payload that it expects to be refused.
	entries, err := up.Client().Do(ctx, "ACL", "LOG").Slice()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !strings.Contains(fmt.Sprint(e), "object:config|get") {
			t.Errorf("ACL LOG upstream: %v", e)
		}
	}
	log := logs.String()
	for _, bad := range []string{"NOPERM", "no permissions", "tracking connection lost", "CLIENT TRACKING refused", "invalidation connection was refused", "upstream failure"} {
		if strings.Contains(log, bad) {
			t.Errorf("keyfence logged %q:\n%s", bad, log)
		}
	}
	t.Logf("%d + %d commands, %d NOPERM, %d other errors", a.hook.n.Load(), b.hook.n.Load(), len(errs.noperm), len(errs.other))
}

// aclEmulated runs the commands keyfence emulates with commands of its own
// upstream, and pub/sub with patterns and notifications.
func aclEmulated(t *testing.T, r *tenantRun, errs *errCounter) {
	c := dialRaw(t, r.addr)
	ok := func(args ...string) []byte {
		t.Helper()
		reply := c.do(t, args...)
		if len(reply) > 0 && reply[0] == '-' {
			errs.note(r.id+": "+strings.Join(args, " "), redisError(reply))
		}
		return reply
	}
	ok("PING")
	ok("ECHO", "hi")
	ok("DBSIZE")
	ok("KEYS", "*")
	ok("SCAN", "0", "MATCH", "*", "COUNT", "100")
	ok("RANDOMKEY")
	for _, sec := range [][]string{{"INFO"}, {"INFO", "keyspace"}, {"INFO", "server"}, {"INFO", "memory"}, {"INFO", "all"}, {"INFO", "everything"}} {
		if got := ok(sec...); bytes.Contains(got, []byte("aclb")) && r.id == "acla" || bytes.Contains(got, []byte("acla")) && r.id == "aclb" {
			t.Errorf("%v shows the other tenant: %s", sec, got)
		}
	}
	ok("COMMAND", "COUNT")
	ok("COMMAND", "INFO", "get", "set")
	ok("COMMAND", "DOCS", "get")
	ok("COMMAND", "LIST", "FILTERBY", "ACLCAT", "string")
	ok("COMMAND", "GETKEYS", "SET", "k", "v")
	ok("COMMAND", "GETKEYSANDFLAGS", "SET", "k", "v")
	ok("COMMAND", "HELP")
	ok("CLIENT", "LIST")
	ok("CLIENT", "SETNAME", "acl-test")
	ok("CLIENT", "INFO")
	ok("SELECT", "4")
	ok("SET", "db4key", "v")
	ok("DBSIZE")
	ok("SELECT", "3")

	// Scripts: EVAL, SCRIPT LOAD, EVALSHA, read-only, inside MULTI.
	ok("EVAL", "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])", "1", "sk", "sv")
	sha := string(mustRV(t, ok("SCRIPT", "LOAD", "return redis.call('GET', KEYS[1])")).str)
	ok("EVALSHA", sha, "1", "sk")
	ok("EVAL_RO", "return redis.call('GET', KEYS[1])", "1", "sk")
	ok("EVALSHA_RO", sha, "1", "sk")
	ok("MULTI")
	ok("PING")
	ok("ECHO", "in multi")
	ok("EVALSHA", sha, "1", "sk")
	ok("SET", "mk", "v")
	ok("EXEC")
	ok("WATCH", "mk")
	ok("UNWATCH")

	// Functions: the sandbox reads and writes the tenant's store, from
	// another database than the session's too (SELECT inside the script).
	ok("FUNCTION", "LOAD", "#!lua name=acllib\nredis.register_function('aclfn', function(keys, args) redis.call('SET', keys[1], args[1]) return redis.call('GET', keys[1]) end)\n"+
		"redis.register_function{function_name='aclro', callback=function(keys) return redis.call('GET', keys[1]) end, flags={'no-writes'}}")
	ok("FCALL", "aclfn", "1", "fk", "fv")
	ok("FCALL_RO", "aclro", "1", "fk")
	ok("FUNCTION", "LIST", "WITHCODE")
	ok("FUNCTION", "STATS")
	dump := mustRV(t, ok("FUNCTION", "DUMP")).str
	ok("FUNCTION", "RESTORE", dump, "REPLACE")
	ok("MULTI")
	ok("FCALL", "aclfn", "1", "fk", "fv2")
	ok("FUNCTION", "LIST")
	ok("EXEC")
	ok("FUNCTION", "DELETE", "acllib")
	ok("FUNCTION", "RESTORE", dump)
	ok("FUNCTION", "FLUSH")

	// SORT BY/GET is run by keyfence (TYPE, LRANGE, GET, MULTI … EXEC).
	ok("RPUSH", "sids", "2", "1")
	ok("MSET", "w_1", "10", "w_2", "5")
	ok("SORT", "sids", "BY", "w_*", "GET", "#")
	ok("SORT", "sids", "BY", "w_*", "STORE", "sdst")

	// A blocking pop that blocks, released by a push from another client.
	popped := make(chan []byte, 1)
	go func() {
		bc, err := dialRawE(r.addr)
		if err != nil {
			popped <- []byte("-" + err.Error())
			return
		}
		defer bc.nc.Close()
		reply, err := bc.doE("BLPOP", "bl", "10")
		if err != nil {
			reply = []byte("-" + err.Error())
		}
		popped <- reply
	}()
	time.Sleep(50 * time.Millisecond) // not a bound: the pop finds the value either way
	ok("LPUSH", "bl", "x")
	if got := <-popped; string(got) != arr(bulk("bl"), bulk("x")) {
		t.Errorf("BLPOP: %s", quoteReply(got))
	}

	// Pub/sub: a client pattern, a keyspace pattern, a keyevent pattern
	// and a keyevent channel, each through the literal upstream patterns.
	s := dialRaw(t, r.addr)
	for _, sc := range [][]string{
		{"PSUBSCRIBE", "news.*"}, {"PSUBSCRIBE", "__keyspace@3__:ev*"}, {"PSUBSCRIBE", "__keyevent@3__:*"},
		{"SUBSCRIBE", "__keyevent@3__:del"}, {"SUBSCRIBE", "plain"},
	} {
		if reply := s.do(t, sc...); reply[0] == '-' {
			errs.note(r.id+": "+strings.Join(sc, " "), redisError(reply))
		}
	}
	ok("PUBLISH", "news.today", "hi")
	ok("PUBLISH", "plain", "hi")
	ok("SET", "evkey", "v")
	ok("DEL", "evkey")
	want := map[string]bool{"pmessage news.today": false, "message plain": false, "pmessage __keyspace@3__:evkey": false,
		"pmessage __keyevent@3__:set": false, "message __keyevent@3__:del": false}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		missing := false
		for _, seen := range want {
			missing = missing || !seen
		}
		if !missing {
			break
		}
		msg, err := s.readTimeout(time.Until(deadline))
		if err != nil {
			break
		}
		v := mustRV(t, msg)
		if len(v.elems) >= 3 {
			ch := v.elems[1].str
			if v.elems[0].str == "pmessage" {
				ch = v.elems[2].str
			}
			want[v.elems[0].str+" "+ch] = true
		}
	}
	for m, seen := range want {
		if !seen {
			t.Errorf("no %s arrived", m)
		}
	}

	// The read cache (tenant b): a cached read is served and stays coherent.
	if r.id == "aclb" {
		ok("SET", "cached", "1")
		ok("GET", "cached")
		ok("GET", "cached")
	}
}

// redisError makes an error reply an error for errCounter.
type redisError []byte

func (e redisError) Error() string { return strings.TrimSpace(string(e[1:])) }
