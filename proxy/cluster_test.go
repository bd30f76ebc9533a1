package proxy_test

import (
	"context"
	"fmt"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/proxy"
)

// startCluster starts three real redis-servers as a three-master cluster.
func startCluster(t *testing.T) []*redistest.Server {
	t.Helper()
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatal("redis-cli not found in PATH: run `make test` (it installs it) or `apt-get install -y redis-tools`")
	}
	var nodes []*redistest.Server
	var addrs []string
	for i := 0; i < 3; i++ {
		n := redistest.StartT(t, redistest.Options{Args: []string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"}})
		nodes = append(nodes, n)
		addrs = append(addrs, n.Addr())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, cli, append(append([]string{"--cluster", "create"}, addrs...), "--cluster-replicas", "0", "--cluster-yes")...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	waitFor(t, "cluster_state:ok on every node", 20*time.Second, func() bool {
		for _, n := range nodes {
			info, err := n.Client().ClusterInfo(ctx).Result()
			if err != nil || !strings.Contains(info, "cluster_state:ok") {
				return false
			}
		}
		return true
	})
	return nodes
}

func clusterAddrs(nodes []*redistest.Server) []string {
	var a []string
	for _, n := range nodes {
		a = append(a, n.Addr())
	}
	return a
}

// keyfence in front of a real three-master cluster still looks like one
// plain Redis: keyed commands reach the right master, hashtags keep
// multi-key commands, transactions and scripts together, CROSSSLOT passes
// through, and whole-keyspace commands visit every master, in the tenant.
func TestClusterUpstream(t *testing.T) {
	nodes := startCluster(t)
	seed := nodes[0]
	cfg := func(c *proxy.Config) { c.Upstream.Cluster = clusterAddrs(nodes); c.Upstream.Addr = nodes[0].Addr() }
	addrA, _ := startKeyfence(t, seed, "ca", cfg)
	addrB, _ := startKeyfence(t, seed, "cb", cfg)
	a, b := dialRaw(t, addrA), dialRaw(t, addrB)

	// A pipeline of 200 SETs spread over every master, then GETs: replies
	// come back in the client's order.
	var pipe []string
	for i := 0; i < 200; i++ {
		pipe = append(pipe, fmt.Sprintf("key%d", i))
	}
	for _, k := range pipe {
		a.send("SET", k, "v-"+k)
	}
	for _, k := range pipe {
		if got := a.reply(5 * time.Second); got != "+OK\r\n" {
			t.Fatalf("SET %s: %q", k, got)
		}
	}
	for _, k := range pipe {
		a.send("GET", k)
	}
	for _, k := range pipe {
		if got, want := a.reply(5*time.Second), fmt.Sprintf("$%d\r\nv-%s\r\n", len("v-"+k), k); got != want {
			t.Fatalf("GET %s: %q, want %q", k, got, want)
		}
	}
	b.do("SET", "bkey", "of tenant b")

	ctx := context.Background()
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: clusterAddrs(nodes)})
	defer cc.Close()
	for _, n := range nodes {
		if size, _ := n.Client().DBSize(ctx).Result(); size == 0 {
			t.Errorf("master %s holds no keys: the keys were not spread by slot", n.Addr())
		}
	}
	var upstreamKeys []string
	var mu sync.Mutex // ForEachMaster runs the masters concurrently
	if err := cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		keys, err := c.Keys(ctx, "*").Result()
		mu.Lock()
		upstreamKeys = append(upstreamKeys, keys...)
		mu.Unlock()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for _, k := range upstreamKeys {
		if !strings.HasPrefix(k, "tenant:ca:") && !strings.HasPrefix(k, "tenant:cb:") {
			t.Errorf("upstream key %q outside every tenant", k)
		}
	}

	// Hashtags keep multi-key commands, transactions and scripts on one
	// master; without one, Redis's CROSSSLOT error passes through.
	if got := a.do("MSET", "{user1}:a", "1", "{user1}:b", "2"); got != "+OK\r\n" {
		t.Fatalf("MSET with a hashtag: %q", got)
	}
	if got := a.do("MGET", "{user1}:a", "{user1}:b"); got != "*2\r\n$1\r\n1\r\n$1\r\n2\r\n" {
		t.Fatalf("MGET with a hashtag: %q", got)
	}
	if got := a.do("MSET", "key1", "x", "key2", "y"); !strings.HasPrefix(got, "-CROSSSLOT ") {
		t.Fatalf("MSET across slots: %q", got)
	}
	// Move key0's slot to another master behind keyfence's back: the
	// MOVED that follows is followed, and the client sees its value.
	moveSlot(t, nodes, "tenant:ca:key0")
	if got := a.do("GET", "key0"); got != "$6\r\nv-key0\r\n" {
		t.Fatalf("GET after its slot moved: %q", got)
	}
	if got := a.do("SET", "key0", "v-key0"); got != "+OK\r\n" {
		t.Fatalf("SET after its slot moved: %q", got)
	}
	// Halfway through a slot's migration, the old master answers ASK for
	// the key it gave away, and for a key it never had: ASKING and the
	// command go to the new master, which answers. A pipeline keeps its
	// order around them.
	a.do("SET", "{m}a", "v-a")
	dst, finish := migrateSlot(t, nodes, "tenant:ca:{m}a", []string{"tenant:ca:{m}a"})
	asked := askingCalls(t, dst)
	for _, c := range [][]string{{"GET", "{m}a"}, {"GET", "key2"}, {"SET", "{m}b", "v-b"}, {"GET", "{m}a"}} {
		a.send(c...)
	}
	for i, want := range []string{"$3\r\nv-a\r\n", "$6\r\nv-key2\r\n", "+OK\r\n", "$3\r\nv-a\r\n"} {
		if got := a.reply(5 * time.Second); got != want {
			t.Fatalf("command %d of a pipeline during a migration: %q, want %q", i, got, want)
		}
	}
	if got := askingCalls(t, dst) - asked; got != 3 {
		t.Fatalf("the new master ran ASKING %d times, want 3: ASK was not followed", got)
	}
	finish()
	if got := a.do("MGET", "{m}a", "{m}b"); got != "*2\r\n$3\r\nv-a\r\n$3\r\nv-b\r\n" {
		t.Fatalf("MGET after the migration ended: %q", got)
	}
	a.do("DEL", "{m}a", "{m}b")
	a.do("MULTI")
	a.do("INCR", "{t}:n")
	a.do("INCR", "{t}:n")
	if got := a.do("EXEC"); got != "*2\r\n:1\r\n:2\r\n" {
		t.Fatalf("MULTI/EXEC: %q", got)
	}
	if got := a.do("EVAL", "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[2])", "2", "{t}:s", "{t}:n", "x"); got != "$1\r\n2\r\n" {
		t.Fatalf("EVAL: %q", got)
	}

	// Emulated commands inside a transaction answer in place, on every
	// master, whether a keyed command came first or not.
	for _, c := range [][]string{{"MULTI"}, {"INCR", "{t}:n"}, {"DBSIZE"}, {"INCR", "{t}:n"}, {"SELECT", "0"}, {"SELECT", "1"}} {
		a.do(c...)
	}
	if got := a.do("EXEC"); got != "*5\r\n:3\r\n:204\r\n:4\r\n+OK\r\n-ERR SELECT is not allowed in cluster mode\r\n" {
		t.Fatalf("MULTI/EXEC with DBSIZE and SELECT: %q", got)
	}
	for _, c := range [][]string{{"MULTI"}, {"DBSIZE"}, {"INCR", "{t}:n"}, {"GET", "{t}:s"}} {
		a.do(c...)
	}
	if got := a.do("EXEC"); got != "*3\r\n:204\r\n:5\r\n$1\r\nx\r\n" {
		t.Fatalf("MULTI/EXEC that starts with DBSIZE: %q", got)
	}

	// Whole-keyspace commands visit every master and stay in the tenant.
	const own = 200 + 2 + 2 // key0..199, {user1}:a/b, {t}:n, {t}:s
	if got := a.do("DBSIZE"); got != fmt.Sprintf(":%d\r\n", own) {
		t.Fatalf("DBSIZE: %q, want %d", got, own)
	}
	keys := strings.Count(a.do("KEYS", "*"), "\r\n$")
	if keys != own {
		t.Fatalf("KEYS *: %d keys, want %d", keys, own)
	}
	seen := map[string]bool{}
	cursor := "0"
	for i := 0; i < 1000; i++ {
		v := strings.Split(a.do("SCAN", cursor, "COUNT", "50"), "\r\n")
		cursor = v[2]
		for j := 5; j < len(v); j += 2 {
			if v[j] == "" {
				continue
			}
			if strings.HasPrefix(v[j], "tenant:") {
				t.Fatalf("SCAN returned a prefixed key %q", v[j])
			}
			seen[v[j]] = true
		}
		if cursor == "0" {
			break
		}
	}
	if len(seen) != own {
		var list []string
		for k := range seen {
			list = append(list, k)
		}
		sort.Strings(list)
		t.Fatalf("SCAN saw %d keys, want %d", len(seen), own)
	}
	if got := a.do("RANDOMKEY"); !strings.HasPrefix(got, "$") || strings.Contains(got, "tenant:") {
		t.Fatalf("RANDOMKEY: %q", got)
	}
	if got := a.do("FLUSHDB"); got != "+OK\r\n" {
		t.Fatalf("FLUSHDB: %q", got)
	}
	if got := a.do("DBSIZE"); got != ":0\r\n" {
		t.Fatalf("DBSIZE after FLUSHDB: %q", got)
	}
	if got := b.do("GET", "bkey"); got != "$11\r\nof tenant b\r\n" {
		t.Fatalf("tenant b's key after tenant a's FLUSHDB: %q", got)
	}
	if got := a.do("SELECT", "1"); !strings.Contains(got, "cluster") {
		t.Fatalf("SELECT 1 on a cluster: %q", got)
	}

	// Pub/sub works across the cluster.
	sub := dialRaw(t, addrA)
	sub.send("SUBSCRIBE", "news")
	sub.reply(5 * time.Second)
	if got := a.do("PUBLISH", "news", "hello"); got != ":1\r\n" {
		t.Fatalf("PUBLISH: %q", got)
	}
	if got := sub.reply(5 * time.Second); got != "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n" {
		t.Fatalf("message: %q", got)
	}
	t.Logf("cluster: %d keys over 3 masters, all prefixed; a slot moved under keyfence (MOVED followed), a slot halfway through its migration (ASK followed); DBSIZE, KEYS, SCAN, RANDOMKEY, FLUSHDB fanned out; MULTI, EVAL, hashtags, CROSSSLOT, pub/sub checked", own)
}

// moveSlot migrates the slot of key, with its keys, to another master, the
// way redis-cli --cluster reshard does.
func moveSlot(t *testing.T, nodes []*redistest.Server, key string) {
	t.Helper()
	_, finish := migrateSlot(t, nodes, key, nil)
	finish()
}

// migrateSlot starts moving the slot of key to another master, as redis-cli
// --cluster reshard does (IMPORTING on the new master, MIGRATING on the
// old), and moves only the keys first of that slot: until finish moves the
// rest and hands the slot over, the old master answers ASK for a key it
// no longer holds. It returns the new master.
func migrateSlot(t *testing.T, nodes []*redistest.Server, key string, first []string) (dst *redistest.Server, finish func()) {
	t.Helper()
	ctx := context.Background()
	slot, err := nodes[0].Client().ClusterKeySlot(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, len(nodes))
	var src *redistest.Server
	var srcID, dstID string
	for i, n := range nodes {
		if ids[i], err = n.Client().Do(ctx, "CLUSTER", "MYID").Text(); err != nil {
			t.Fatal(err)
		}
	}
	slots, err := nodes[0].Client().ClusterSlots(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range slots {
		if int64(r.Start) <= slot && slot <= int64(r.End) {
			for i, n := range nodes {
				if r.Nodes[0].ID == ids[i] {
					src, srcID = n, ids[i]
				}
			}
		}
	}
	for i, n := range nodes {
		if n != src {
			dst, dstID = n, ids[i]
			break
		}
	}
	if src == nil || dst == nil {
		t.Fatalf("no owner found for slot %d", slot)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	migrate := func(keys []string) {
		t.Helper()
		for _, k := range keys {
			must(src.Client().Migrate(ctx, dst.Host(), fmt.Sprint(dst.Port()), k, 0, 5*time.Second).Err())
		}
	}
	must(dst.Client().Do(ctx, "CLUSTER", "SETSLOT", slot, "IMPORTING", srcID).Err())
	must(src.Client().Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", dstID).Err())
	migrate(first)
	return dst, func() {
		t.Helper()
		keys, err := src.Client().ClusterGetKeysInSlot(ctx, int(slot), 1000).Result()
		must(err)
		migrate(keys)
		for _, n := range nodes {
			must(n.Client().Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", dstID).Err())
		}
	}
}

// askingCalls is how many ASKING commands node has run.
func askingCalls(t *testing.T, node *redistest.Server) int {
	t.Helper()
	info, err := node.Client().Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(info, "cmdstat_asking:calls=")
	if !ok {
		return 0
	}
	n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
	return n
}
