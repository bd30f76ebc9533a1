package proxy

import (
	"context"
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keyfence/keyfence/internal/redistest"
)

// Upstream databases of TestIsolation: tenants a and b live in isoDB (their
// keyfence's default) and isoSelectDB (reached with SELECT). No other test
// uses them, so every key found there must belong to a or b.
const (
	isoDB       = 3
	isoSelectDB = 4
)

// countHook counts every command a go-redis client runs and files its error.
type countHook struct {
	tenant string
	n      atomic.Int64
	errs   *errCounter
}

func (h *countHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *countHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		h.n.Add(1)
		h.errs.note(h.tenant+": "+fmt.Sprint(cmd.Args()), cmd.Err())
		return err
	}
}

func (h *countHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, c := range cmds {
			h.n.Add(1)
			h.errs.note(h.tenant+": "+fmt.Sprint(c.Args()), c.Err())
		}
		return err
	}
}

// startTenantProxy starts keyfence for tenant id, logging in upstream as the
// ACL user tenant-<id> confined to tenant:<id>:*.
func startTenantProxy(t *testing.T, up *redistest.Server, id string, db int) string {
	t.Helper()
	user, pass := "tenant-"+id, "pw-"+id+"-secret"
	if err := up.AddTenantUser(testCtx(t), user, pass, id); err != nil {
		t.Fatal(err)
	}
	return startProxy(t, up, func(c *Config) {
		c.Tenant = id
		c.Upstream.Username = user
		c.Upstream.Password = pass
		c.Upstream.DB = db
		// The shared server sanitizes payloads, but the tenant user may
		// not read CONFIG: the operator vouches, as the README says.
		c.Upstream.AssumeRestoreSanitized = true
	})
}

// tenantRun is one tenant's side of the isolation test.
type tenantRun struct {
	t     *testing.T
	id    string
	addr  string
	c     *redis.Client // RESP3 (go-redis default), with identity (CLIENT SETINFO)
	c2    *redis.Client // RESP2
	hook  *countHook
	own   []string // the tenant's keys in isoDB at the end of the workload
	value string   // the tenant's marker in every value it writes
}

func (r *tenantRun) errorf(format string, args ...any) {
	r.t.Helper()
	r.t.Errorf("tenant %s: "+format, append([]any{r.id}, args...)...)
}

func (r *tenantRun) eq(what string, got, want any) {
	r.t.Helper()
	if !reflect.DeepEqual(got, want) {
		r.errorf("%s: got %#v, want %#v", what, got, want)
	}
}

func (r *tenantRun) v(s string) string { return r.value + "-" + s }

// workload runs every allowed command family once, with the same key names
// in both tenants and values that name the tenant, and checks each reply.
func (r *tenantRun) workload(ctx context.Context) {
	c := r.c
	v := r.v

	// Strings.
	r.eq("SET", c.Set(ctx, "str", v("str"), 0).Val(), "OK")
	r.eq("GET", c.Get(ctx, "str").Val(), v("str"))
	r.eq("MSET", c.MSet(ctx, "m1", v("m1"), "m2", v("m2")).Val(), "OK")
	r.eq("MGET", c.MGet(ctx, "m1", "m2", "nokey").Val(), []any{v("m1"), v("m2"), nil})
	r.eq("INCR", c.Incr(ctx, "ctr").Val(), int64(1))
	r.eq("INCRBY", c.IncrBy(ctx, "ctr", 9).Val(), int64(10))
	r.eq("APPEND", c.Append(ctx, "str", "!").Val(), int64(len(v("str"))+1))
	r.eq("SET EX", c.Set(ctx, "ttlk", v("t"), time.Hour).Val(), "OK")
	if ttl := c.TTL(ctx, "ttlk").Val(); ttl < 59*time.Minute || ttl > time.Hour {
		r.errorf("TTL: %v", ttl)
	}
	r.eq("GETEX", c.GetEx(ctx, "ttlk", 2*time.Hour).Val(), v("t"))
	r.eq("SET tmp", c.Set(ctx, "tmp", v("tmp"), 0).Val(), "OK")
	r.eq("GETDEL", c.GetDel(ctx, "tmp").Val(), v("tmp"))
	r.eq("SET {tag}", c.Set(ctx, "{tag}:1", v("tag"), 0).Val(), "OK")
	r.eq("SETBIT", c.SetBit(ctx, "bits", 7, 1).Val(), int64(0))
	r.eq("BITCOUNT", c.BitCount(ctx, "bits", nil).Val(), int64(1))

	// Hashes.
	r.eq("HSET", c.HSet(ctx, "h", "f", v("f"), "n", "1").Val(), int64(2))
	r.eq("HGETALL", c.HGetAll(ctx, "h").Val(), map[string]string{"f": v("f"), "n": "1"})
	r.eq("HINCRBY", c.HIncrBy(ctx, "h", "n", 4).Val(), int64(5))

	// Lists, including blocking pops that find data.
	r.eq("RPUSH", c.RPush(ctx, "l", v("1"), v("2"), v("3"), v("4")).Val(), int64(4))
	r.eq("LRANGE", c.LRange(ctx, "l", 0, -1).Val(), []string{v("1"), v("2"), v("3"), v("4")})
	r.eq("BLPOP", c.BLPop(ctx, time.Second, "nolist", "l").Val(), []string{"l", v("1")})
	r.eq("BRPOP", c.BRPop(ctx, time.Second, "l").Val(), []string{"l", v("4")})
	r.eq("LMOVE", c.LMove(ctx, "l", "l2", "LEFT", "RIGHT").Val(), v("2"))
	r.eq("BLMOVE", c.BLMove(ctx, "l", "l2", "LEFT", "RIGHT", time.Second).Val(), v("3"))
	r.eq("RPUSH l", c.RPush(ctx, "l", v("5"), v("6")).Val(), int64(2))
	key, vals, err := c.LMPop(ctx, "LEFT", 1, "nolist", "l").Result()
	r.eq("LMPOP", fmt.Sprint(key, vals, err), fmt.Sprint("l", []string{v("5")}, nil))
	key, vals, err = c.BLMPop(ctx, time.Second, "LEFT", 5, "nolist", "l").Result()
	r.eq("BLMPOP", fmt.Sprint(key, vals, err), fmt.Sprint("l", []string{v("6")}, nil))
	r.eq("LRANGE l2", c.LRange(ctx, "l2", 0, -1).Val(), []string{v("2"), v("3")})

	// Sets.
	r.eq("SADD", c.SAdd(ctx, "s", v("x"), v("y"), "common").Val(), int64(3))
	r.eq("SADD s2", c.SAdd(ctx, "s2", v("y"), "common").Val(), int64(2))
	r.eq("SINTERSTORE", c.SInterStore(ctx, "sdst", "s", "s2").Val(), int64(2))
	r.eq("SMEMBERS", sortedStrs(c.SMembers(ctx, "sdst").Val()), sortedStrs([]string{v("y"), "common"}))
	r.eq("SINTERCARD", c.SInterCard(ctx, 0, "s", "s2").Val(), int64(2))

	// Sorted sets.
	r.eq("ZADD", c.ZAdd(ctx, "z", redis.Z{Score: 1, Member: v("one")}, redis.Z{Score: 2, Member: v("two")}).Val(), int64(2))
	r.eq("ZRANGE", c.ZRange(ctx, "z", 0, -1).Val(), []string{v("one"), v("two")})
	r.eq("ZUNIONSTORE", c.ZUnionStore(ctx, "zdst", &redis.ZStore{Keys: []string{"z"}, Weights: []float64{2}}).Val(), int64(2))
	r.eq("ZSCORE", c.ZScore(ctx, "zdst", v("two")).Val(), float64(4))
	zk := c.BZPopMin(ctx, time.Second, "nozset", "z").Val()
	if zk == nil || zk.Key != "z" || zk.Member != v("one") {
		r.errorf("BZPOPMIN: %#v", zk)
	}
	zkey, zs, err := c.ZMPop(ctx, "MAX", 1, "nozset", "zdst").Result()
	r.eq("ZMPOP", fmt.Sprint(zkey, zs, err), fmt.Sprint("zdst", []redis.Z{{Score: 4, Member: v("two")}}, nil))

	// Streams.
	r.eq("XADD", c.XAdd(ctx, &redis.XAddArgs{Stream: "x", ID: "1-1", Values: []string{"f", v("x1")}}).Val(), "1-1")
	r.eq("XADD 2", c.XAdd(ctx, &redis.XAddArgs{Stream: "x", ID: "1-2", Values: []string{"f", v("x2")}}).Val(), "1-2")
	r.eq("XREAD", c.XRead(ctx, &redis.XReadArgs{Streams: []string{"x", "0"}, Block: -1}).Val(), []redis.XStream{{
		Stream: "x", Messages: []redis.XMessage{
			{ID: "1-1", Values: map[string]any{"f": v("x1")}},
			{ID: "1-2", Values: map[string]any{"f": v("x2")}},
		},
	}})
	r.eq("XGROUP CREATE", c.XGroupCreate(ctx, "x", "g", "0").Val(), "OK")
	rg := c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "c1", Streams: []string{"x", ">"}, Count: 1, Block: -1}).Val()
	if len(rg) != 1 || rg[0].Stream != "x" || len(rg[0].Messages) != 1 || rg[0].Messages[0].Values["f"] != v("x1") {
		r.errorf("XREADGROUP: %#v", rg)
	}
	r.eq("XACK", c.XAck(ctx, "x", "g", "1-1").Val(), int64(1))
	pend := c.XPending(ctx, "x", "g").Val()
	if pend == nil || pend.Count != 0 {
		r.errorf("XPENDING: %#v", pend)
	}
	if info := c.XInfoStream(ctx, "x").Val(); info == nil || info.Length != 2 || info.Groups != 1 {
		r.errorf("XINFO STREAM: %#v", info)
	}
	r.eq("XLEN", c.XLen(ctx, "x").Val(), int64(2))

	// Geo.
	r.eq("GEOADD", c.GeoAdd(ctx, "geo",
		&redis.GeoLocation{Name: v("Palermo"), Longitude: 13.361389, Latitude: 38.115556},
		&redis.GeoLocation{Name: v("Catania"), Longitude: 15.087269, Latitude: 37.502669}).Val(), int64(2))
	r.eq("GEOSEARCH", c.GeoSearch(ctx, "geo", &redis.GeoSearchQuery{Longitude: 15, Latitude: 37, Radius: 200, RadiusUnit: "km", Sort: "ASC"}).Val(),
		[]string{v("Catania"), v("Palermo")})
	r.eq("GEOSEARCHSTORE", c.GeoSearchStore(ctx, "geo", "geodst", &redis.GeoSearchStoreQuery{
		GeoSearchQuery: redis.GeoSearchQuery{Longitude: 15, Latitude: 37, Radius: 100, RadiusUnit: "km"}}).Val(), int64(1))
	r.eq("GEORADIUS STORE", c.GeoRadiusStore(ctx, "geo", 15, 37, &redis.GeoRadiusQuery{Radius: 200, Unit: "km", Store: "georad"}).Val(), int64(2))

	// HyperLogLog.
	r.eq("PFADD", c.PFAdd(ctx, "hll", v("a"), v("b")).Val(), int64(1))
	r.eq("PFMERGE", c.PFMerge(ctx, "hllm", "hll").Val(), "OK")
	r.eq("PFCOUNT", c.PFCount(ctx, "hllm").Val(), int64(2))

	// Keyspace.
	r.eq("EXISTS", c.Exists(ctx, "str", "h", "nokey").Val(), int64(2))
	r.eq("TYPE", c.Type(ctx, "x").Val(), "stream")
	r.eq("SET ren", c.Set(ctx, "ren1", v("ren"), 0).Val(), "OK")
	r.eq("RENAME", c.Rename(ctx, "ren1", "ren2").Val(), "OK")
	r.eq("RENAMENX", c.RenameNX(ctx, "ren2", "str").Val(), false)
	r.eq("COPY", c.Do(ctx, "COPY", "ren2", "cp").Val(), int64(1))
	r.eq("EXPIRE", c.Expire(ctx, "cp", time.Hour).Val(), true)
	r.eq("PERSIST", c.Persist(ctx, "cp").Val(), true)
	r.eq("TOUCH", c.Touch(ctx, "cp", "ren2").Val(), int64(2))
	r.eq("OBJECT ENCODING", c.ObjectEncoding(ctx, "ctr").Val(), "int")
	dump := c.Dump(ctx, "h").Val()
	r.eq("RESTORE", c.Restore(ctx, "hcopy", 0, dump).Val(), "OK")
	r.eq("HGET hcopy", c.HGet(ctx, "hcopy", "f").Val(), v("f"))
	r.eq("DEL", c.Del(ctx, "nokey", "hcopy").Val(), int64(1))
	r.eq("UNLINK", c.Unlink(ctx, "nokey").Val(), int64(0))
	r.eq("RPUSH ids", c.RPush(ctx, "ids", 3, 1, 2).Val(), int64(3))
	r.eq("SORT", c.Sort(ctx, "ids", &redis.Sort{Order: "DESC"}).Val(), []string{"3", "2", "1"})
	r.eq("SORT STORE", c.SortStore(ctx, "ids", "sorted", &redis.Sort{}).Val(), int64(3))
	r.eq("SORT BY nosort", c.Sort(ctx, "ids", &redis.Sort{By: "nosort"}).Val(), []string{"3", "1", "2"})

	// Pub/sub: a publisher reaches only its own tenant's channel (the
	// subscriber counted is the admin's, on tenant:<id>:news).
	r.eq("PUBLISH", c.Publish(ctx, "news", v("news")).Val(), int64(1))

	// MULTI/EXEC, WATCH.
	cmds, err := c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Incr(ctx, "ctr")
		p.Set(ctx, "txk", v("tx"), 0)
		p.Get(ctx, "txk")
		p.BLPop(ctx, time.Second, "l2")
		return nil
	})
	if err != nil || len(cmds) != 4 {
		r.errorf("MULTI/EXEC: %v, %d replies", err, len(cmds))
	} else {
		r.eq("EXEC INCR", cmds[0].(*redis.IntCmd).Val(), int64(11))
		r.eq("EXEC GET", cmds[2].(*redis.StringCmd).Val(), v("tx"))
		r.eq("EXEC BLPOP", cmds[3].(*redis.StringSliceCmd).Val(), []string{"l2", v("2")})
	}
	err = c.Watch(ctx, func(tx *redis.Tx) error {
		n, err := tx.Get(ctx, "ctr").Int()
		if err != nil {
			return err
		}
		_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Set(ctx, "ctr", n+1, 0)
			return nil
		})
		return err
	}, "ctr")
	if err != nil {
		r.errorf("WATCH/MULTI/EXEC: %v", err)
	}
	r.eq("GET ctr", c.Get(ctx, "ctr").Val(), "12")

	// A plain pipeline.
	pcmds, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, "pipe", v("pipe"), 0)
		p.Get(ctx, "pipe")
		p.Exists(ctx, "pipe", "str")
		return nil
	})
	if err != nil || len(pcmds) != 3 || pcmds[1].(*redis.StringCmd).Val() != v("pipe") || pcmds[2].(*redis.IntCmd).Val() != 2 {
		r.errorf("pipeline: %v %v", err, pcmds)
	}

	// The same name in another database, through SELECT (go-redis DB).
	sel := redis.NewClient(&redis.Options{Addr: r.addr, DB: isoSelectDB, DisableIdentity: true})
	defer sel.Close()
	sel.AddHook(r.hook)
	r.eq("SELECT db SET", sel.Set(ctx, "str", v("db4"), 0).Val(), "OK")
	r.eq("SELECT db GET", sel.Get(ctx, "str").Val(), v("db4"))
	r.eq("SELECT db DBSIZE", sel.DBSize(ctx).Val(), int64(1))
	r.eq("GET str (default db)", c.Get(ctx, "str").Val(), v("str")+"!")

	r.own = []string{"str", "m1", "m2", "ctr", "ttlk", "{tag}:1", "bits", "h", "l2", "s", "s2", "sdst",
		"z", "zdst", "x", "geo", "geodst", "georad", "hll", "hllm", "ren2", "cp", "ids", "sorted", "txk", "pipe"}
	sort.Strings(r.own)
}

// probeOther tries to reach the other tenant's keys by every route a client
// has and checks that each one stays inside this tenant.
func (r *tenantRun) probeOther(ctx context.Context, other string) {
	c := r.c
	op := "tenant:" + other + ":"
	r.eq("GET other's prefixed key", c.Get(ctx, op+"str").Err(), redis.Nil)
	r.eq("EXISTS other's keys", c.Exists(ctx, op+"str", op+"h", op+"x").Val(), int64(0))
	r.eq("KEYS other's prefix", c.Keys(ctx, op+"*").Val(), []string{})
	r.eq("KEYS tenant:*", c.Keys(ctx, "tenant:*").Val(), []string{})
	keys, _, err := c.Scan(ctx, 0, op+"*", 10000).Result()
	r.eq("SCAN other's prefix", fmt.Sprint(keys, err), fmt.Sprint([]string{}, nil))
	r.eq("DEL other's keys", c.Del(ctx, op+"str", op+"h").Val(), int64(0))
	r.eq("UNLINK other's keys", c.Unlink(ctx, op+"m1").Val(), int64(0))
	r.eq("KEYS *tenant:<other>:*", c.Keys(ctx, "*"+op+"*").Val(), []string{})
	r.eq("KEYS with escaped glob", c.Keys(ctx, `tenant\:`+other+`\:*`).Val(), []string{})
	// Writing to a name that looks like the other tenant's key only
	// creates one of this tenant's keys.
	r.eq("SET look-alike", c.Set(ctx, op+"str", "spoof from "+r.id, 0).Val(), "OK")
	r.eq("KEYS look-alike", c.Keys(ctx, "tenant:*").Val(), []string{op + "str"})
	r.eq("DEL look-alike", c.Del(ctx, op+"str").Val(), int64(1))
}

// checkOwnView checks that KEYS, SCAN, DBSIZE, RANDOMKEY, INFO keyspace and
// CLIENT LIST show exactly this tenant's keys and connections.
func (r *tenantRun) checkOwnView(ctx context.Context) {
	c := r.c
	r.eq("KEYS *", sortedStrs(c.Keys(ctx, "*").Val()), r.own)
	var scanned []string
	iter := c.Scan(ctx, 0, "", 3).Iterator()
	for iter.Next(ctx) {
		scanned = append(scanned, iter.Val())
	}
	if err := iter.Err(); err != nil {
		r.errorf("SCAN: %v", err)
	}
	seen := map[string]bool{}
	var uniq []string
	for _, k := range scanned {
		if !seen[k] {
			seen[k] = true
			uniq = append(uniq, k)
		}
	}
	r.eq("SCAN", sortedStrs(uniq), r.own)
	r.eq("DBSIZE", c.DBSize(ctx).Val(), int64(len(r.own)))
	own := map[string]bool{}
	for _, k := range r.own {
		own[k] = true
	}
	for i := 0; i < 20; i++ {
		if k := c.RandomKey(ctx).Val(); !own[k] {
			r.errorf("RANDOMKEY returned %q, not one of the tenant's keys", k)
		}
	}
	info := c.Info(ctx, "keyspace").Val()
	want := fmt.Sprintf("db%d:keys=%d,", isoDB, len(r.own))
	if !strings.Contains(info, want) {
		r.errorf("INFO keyspace: %q does not contain %q", info, want)
	}
	// Redis lists every database that has keys: the tenant's are in these
	// two only.
	for _, line := range regexp.MustCompile(`(?m)^db\d+:`).FindAllString(info, -1) {
		if line != fmt.Sprintf("db%d:", isoDB) && line != fmt.Sprintf("db%d:", isoSelectDB) {
			r.errorf("INFO keyspace: a line for %s, where the tenant has no keys: %q", line, info)
		}
	}
	list := c.ClientList(ctx).Val()
	lines := strings.Split(strings.TrimSpace(list), "\n")
	if len(lines) == 0 {
		r.errorf("CLIENT LIST is empty")
	}
	for _, l := range lines {
		if !strings.Contains(l, " laddr="+r.addr+" ") {
			r.errorf("CLIENT LIST shows a connection that is not this keyfence's (%s): %q", r.addr, l)
		}
		if strings.Contains(l, "tenant-") {
			r.errorf("CLIENT LIST shows an upstream user: %q", l)
		}
	}
}

func TestIsolation(t *testing.T) {
	t.Parallel()
	up := testRedis(t)
	ctx := testCtx(t)
	admin := directDB(t, up, isoDB)
	errs := &errCounter{}

	// The admin listens on both tenants' "news" channels, to see where
	// PUBLISH lands.
	sub := up.Client().Subscribe(ctx, "tenant:a:news", "tenant:b:news")
	defer sub.Close()
	for i := 0; i < 2; i++ {
		if _, err := sub.Receive(ctx); err != nil {
			t.Fatalf("admin SUBSCRIBE: %v", err)
		}
	}

	runs := map[string]*tenantRun{}
	for _, id := range []string{"a", "b"} {
		addr := startTenantProxy(t, up, id, isoDB)
		hook := &countHook{tenant: id, errs: errs}
		c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, PoolSize: 4})
		c.AddHook(hook)
		c2 := proxyClient(t, addr, nil)
		c2.AddHook(hook)
		t.Cleanup(func() { c.Close() })
		runs[id] = &tenantRun{t: t, id: id, addr: addr, c: c, c2: c2, hook: hook, value: "tenant-" + id + "-value"}
	}

	// Both tenants run the same workload, with the same key names, at once.
	var wg sync.WaitGroup
	for _, r := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.workload(ctx)
		}()
	}
	wg.Wait()

	got := map[string]string{}
	for i := 0; i < 2; i++ {
		msg, err := sub.ReceiveMessage(ctx)
		if err != nil {
			t.Fatalf("admin: no PUBLISH arrived: %v", err)
		}
		got[msg.Channel] = msg.Payload
	}
	if want := map[string]string{"tenant:a:news": runs["a"].v("news"), "tenant:b:news": runs["b"].v("news")}; !reflect.DeepEqual(got, want) {
		t.Errorf("PUBLISH landed on %v, want %v", got, want)
	}

	// Subscribers through keyfence: each tenant's "news" is its own.
	subs := map[string]*rawConn{}
	for id, r := range runs {
		sc := dialRaw(t, r.addr)
		r.eq("SUBSCRIBE", string(sc.do(t, "SUBSCRIBE", "news")), arr(bulk("subscribe"), bulk("news"), ":1\r\n"))
		subs[id] = sc
	}
	for _, r := range runs {
		// Two receivers: the tenant's subscriber and the admin.
		r.eq("PUBLISH to subscribers", r.c.Publish(ctx, "news", r.v("second")).Val(), int64(2))
	}
	for id, sc := range subs {
		r := runs[id]
		r.eq("message", string(sc.read(t)), arr(bulk("message"), bulk("news"), bulk(r.v("second"))))
		// Nothing else is queued for it: the next reply is its PING's.
		r.eq("PING after message", string(sc.do(t, "PING")), arr(bulk("pong"), bulk("")))
	}

	runs["a"].probeOther(ctx, "b")
	runs["b"].probeOther(ctx, "a")
	for _, r := range runs {
		r.checkOwnView(ctx)
		// The RESP2 client sees the same.
		r.eq("RESP2 GET", r.c2.Get(ctx, "str").Val(), r.v("str")+"!")
		r.eq("RESP2 DBSIZE", r.c2.DBSize(ctx).Val(), int64(len(r.own)))
	}

	// Upstream, every key is under one of the two prefixes.
	upstreamKeys := 0
	for _, db := range []int{isoDB, isoSelectDB} {
		for _, k := range scanAll(ctx, t, directDB(t, up, db)) {
			upstreamKeys++
			if !strings.HasPrefix(k, "tenant:a:") && !strings.HasPrefix(k, "tenant:b:") {
				t.Errorf("upstream db %d: key %q carries neither tenant's prefix", db, k)
			}
		}
	}
	if want := 2 * (len(runs["a"].own) + 1); upstreamKeys != want {
		t.Errorf("upstream holds %d keys in dbs %d and %d, want %d", upstreamKeys, isoDB, isoSelectDB, want)
	}

	// b's FLUSHDB and FLUSHALL remove b's keys only.
	a, b := runs["a"], runs["b"]
	r := b.c.FlushDB(ctx)
	b.eq("FLUSHDB", r.Val(), "OK")
	b.eq("DBSIZE after FLUSHDB", b.c.DBSize(ctx).Val(), int64(0))
	b.eq("KEYS after FLUSHDB", b.c.Keys(ctx, "*").Val(), []string{})
	a.checkOwnView(ctx)
	a.eq("GET after b's FLUSHDB", a.c.Get(ctx, "str").Val(), a.v("str")+"!")
	b.eq("FLUSHALL", b.c.FlushAll(ctx).Val(), "OK")
	sel := redis.NewClient(&redis.Options{Addr: a.addr, DB: isoSelectDB, DisableIdentity: true})
	defer sel.Close()
	a.eq("a's db 4 key after b's FLUSHALL", sel.Get(ctx, "str").Val(), a.v("db4"))
	a.checkOwnView(ctx)
	if n, err := admin.Exists(ctx, "tenant:b:str").Result(); err != nil || n != 0 {
		t.Errorf("b's key survived b's FLUSHALL: %d %v", n, err)
	}
	for _, db := range []int{isoDB, isoSelectDB} {
		for _, k := range scanAll(ctx, t, directDB(t, up, db)) {
			if !strings.HasPrefix(k, "tenant:a:") {
				t.Errorf("after b's FLUSHALL, upstream db %d holds %q", db, k)
			}
		}
	}

	errs.mu.Lock()
	defer errs.mu.Unlock()
	for _, e := range errs.noperm {
		t.Errorf("ACL refusal seen by a client: %s", e)
	}
	for _, e := range errs.other {
		t.Errorf("unexpected error: %s", e)
	}
	perTenant := a.hook.n.Load()
	if bn := b.hook.n.Load(); bn < perTenant {
		perTenant = bn
	}
	if perTenant < 100 {
		t.Errorf("only %d commands per tenant ran", perTenant)
	}
	t.Logf("isolation: %d commands per tenant, %d NOPERM, %d upstream keys all prefixed", perTenant, len(errs.noperm), upstreamKeys)
}

// TestIsolationPatternsWithACLUser: SORT … BY/GET and PSUBSCRIBE must work
// for a tenant whose keyfence logs in upstream as its confined ACL user (the
// spec's defence in depth), as they do without one. Redis refuses SORT
// BY/GET for any key-restricted user and compares PSUBSCRIBE patterns
// literally with channel rules, so a plain forward of the prefixed request
// fails upstream.
func TestIsolationPatternsWithACLUser(t *testing.T) {
	t.Parallel()
	up := testRedis(t)
	ctx := testCtx(t)
	plainAddr := startProxy(t, up, func(c *Config) { c.Tenant = "patplain" })
	aclAddr := startTenantProxy(t, up, "patacl", 0)
	for name, addr := range map[string]string{"without ACL user": plainAddr, "with ACL user": aclAddr} {
		t.Run(name+"/SORT BY GET", func(t *testing.T) {
			c := proxyClient(t, addr, nil)
			for _, cmd := range [][]any{
				{"DEL", "ids"},
				{"RPUSH", "ids", 3, 1, 2},
				{"MSET", "w_1", 30, "w_2", 10, "w_3", 20},
				{"HSET", "obj_1", "name", "one"}, {"HSET", "obj_2", "name", "two"}, {"HSET", "obj_3", "name", "three"},
			} {
				if err := c.Do(ctx, cmd...).Err(); err != nil {
					t.Fatalf("%v: %v", cmd, err)
				}
			}
			for _, tc := range []struct {
				args []any
				want []string
			}{
				{[]any{"SORT", "ids", "BY", "w_*"}, []string{"2", "3", "1"}},
				{[]any{"SORT", "ids", "BY", "w_*", "GET", "#", "GET", "obj_*->name"}, []string{"2", "two", "3", "three", "1", "one"}},
				{[]any{"SORT", "ids", "GET", "#"}, []string{"1", "2", "3"}},
				{[]any{"SORT_RO", "ids", "BY", "w_*", "DESC"}, []string{"1", "3", "2"}},
			} {
				got, err := c.Do(ctx, tc.args...).StringSlice()
				if err != nil || !reflect.DeepEqual(got, tc.want) {
					t.Errorf("%v: got %q, %v; want %q", tc.args, got, err, tc.want)
				}
			}
		})
		t.Run(name+"/PSUBSCRIBE", func(t *testing.T) {
			sub, pub := dialRaw(t, addr), dialRaw(t, addr)
			expect(t, sub, arr(bulk("psubscribe"), bulk("news.*"), ":1\r\n"), "PSUBSCRIBE", "news.*")
			expect(t, pub, ":1\r\n", "PUBLISH", "news.today", "hi")
			if t.Failed() {
				return // no message is coming
			}
			if got, want := string(sub.read(t)), arr(bulk("pmessage"), bulk("news.*"), bulk("news.today"), bulk("hi")); got != want {
				t.Errorf("got %s, want %s", quoteReply([]byte(got)), quoteReply([]byte(want)))
			}
		})
	}
}
