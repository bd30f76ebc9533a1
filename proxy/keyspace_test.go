package proxy

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/rewrite"
)

// slowEntry is one SLOWLOG GET entry: what upstream ran, for how long, for
// which client.
type slowEntry struct {
	micros int64
	args   []string
	client string // CLIENT SETNAME of the connection; keyfence sets none
}

// adminName names the test's own upstream connections, so that every other
// slowlog entry is known to be keyfence's.
const adminName = "keyspace-test-admin"

func slowlog(ctx context.Context, t *testing.T, admin *redis.Client) []slowEntry {
	t.Helper()
	raw, err := admin.Do(ctx, "SLOWLOG", "GET", "-1").Slice()
	if err != nil {
		t.Fatalf("SLOWLOG GET: %v", err)
	}
	var out []slowEntry
	for _, r := range raw {
		f := r.([]any)
		e := slowEntry{micros: f[2].(int64), client: f[5].(string)}
		for _, a := range f[3].([]any) {
			e.args = append(e.args, a.(string))
		}
		out = append(out, e)
	}
	return out
}

// keyfenceCalls returns the slowlog entries not sent by the test itself.
func keyfenceCalls(entries []slowEntry) []slowEntry {
	var out []slowEntry
	for _, e := range entries {
		if e.client != adminName {
			out = append(out, e)
		}
	}
	return out
}

// checkBounded fails for any upstream call that is not one bounded step: a
// SCAN with COUNT at most rewrite.MaxScanCount, or a command on keys found
// by one (UNLINK, PTTL). It returns how many SCAN steps there were.
func checkBounded(t *testing.T, what string, calls []slowEntry) (scans int) {
	t.Helper()
	for _, e := range calls {
		switch name := strings.ToLower(e.args[0]); name {
		case "scan":
			scans++
			i := slices.IndexFunc(e.args, func(a string) bool { return strings.EqualFold(a, "count") })
			if i < 0 || i+1 >= len(e.args) {
				t.Errorf("%s: upstream SCAN without COUNT: %q", what, e.args)
				continue
			}
			if n, err := strconv.Atoi(e.args[i+1]); err != nil || n > rewrite.MaxScanCount {
				t.Errorf("%s: upstream SCAN with COUNT %s (cap %d): %q", what, e.args[i+1], rewrite.MaxScanCount, e.args)
			}
		case "unlink", "pttl", "ping":
			if len(e.args) > 2 {
				t.Errorf("%s: upstream %s of more than one key: %q", what, name, e.args)
			}
		default:
			t.Errorf("%s: upstream call that is not a bounded step: %q", what, e.args)
		}
	}
	return scans
}

// TestKeyspaceBoundedSteps: with another tenant holding 200,000 keys, a
// tenant's KEYS, DBSIZE, RANDOMKEY, SCAN and FLUSHDB answer over its own keys
// only, and every upstream call they make is one bounded step — as Redis
// itself sees it, in its slow log (slowlog-log-slower-than 0: every call is
// logged with its duration): by command and COUNT, by how many SCAN steps
// each took, and by time against a control KEYS over the same keyspace.
func TestKeyspaceBoundedSteps(t *testing.T) {
	t.Parallel()
	// A server of its own: the slow log and INFO commandstats are
	// server-wide, and 200,000 keys would slow the shared one.
	srv := redistest.StartT(t, redistest.Options{})
	ctx := testCtx(t)
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr(), ClientName: adminName, Protocol: 2, DisableIdentity: true, PoolSize: 1})
	t.Cleanup(func() { admin.Close() })

	const otherKeys = 200_000
	for i := 0; i < otherKeys; {
		pipe := admin.Pipeline()
		for j := 0; j < 20 && i < otherKeys; j++ {
			pairs := make([]any, 0, 2000)
			for k := 0; k < 1000 && i < otherKeys; k++ {
				pairs = append(pairs, "tenant:other:k"+strconv.Itoa(i), "v")
				i++
			}
			pipe.MSet(ctx, pairs...)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatalf("filling tenant other: %v", err)
		}
	}

	addr := startProxy(t, srv, func(c *Config) { c.Tenant = "a" })
	a := dialRaw(t, addr)
	var own []string
	for i := 0; i < 300; i++ {
		k := fmt.Sprintf("k%d", i)
		if i%3 == 0 {
			k = fmt.Sprintf("user:%d", i)
		}
		expect(t, a, "+OK\r\n", "SET", k, "x")
		own = append(own, k)
	}
	slices.Sort(own)
	var users []string
	for _, k := range own {
		if strings.HasPrefix(k, "user:") {
			users = append(users, k)
		}
	}

	mustDo := func(args ...any) {
		t.Helper()
		if err := admin.Do(ctx, args...).Err(); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
	}
	// Log every call; the log must hold a whole KEYS emulation.
	mustDo("CONFIG", "SET", "slowlog-max-len", "100000")
	mustDo("CONFIG", "SET", "slowlog-log-slower-than", "0")
	mustDo("CONFIG", "RESETSTAT")

	// Each command alone: right answer, and only bounded steps, enough of
	// them to have walked 200,000 keys (at most 10×COUNT buckets a step).
	minSteps := otherKeys / (10 * rewrite.MaxScanCount)
	steps := []struct {
		what  string
		args  []string
		check func(reply []byte)
	}{
		{"KEYS *", []string{"KEYS", "*"}, func(r []byte) {
			if got := sortedStrs(mustRV(t, r).strs()); !slices.Equal(got, own) {
				t.Errorf("KEYS *: %d keys, want tenant a's %d", len(got), len(own))
			}
		}},
		{"KEYS user:*", []string{"KEYS", "user:*"}, func(r []byte) {
			if got := sortedStrs(mustRV(t, r).strs()); !slices.Equal(got, users) {
				t.Errorf("KEYS user:*: %q, want %q", got, users)
			}
		}},
		{"KEYS other's prefix", []string{"KEYS", "tenant:other:*"}, func(r []byte) {
			if string(r) != "*0\r\n" {
				t.Errorf("KEYS tenant:other:*: %s", quoteReply(r))
			}
		}},
		{"DBSIZE", []string{"DBSIZE"}, func(r []byte) {
			if want := ":" + strconv.Itoa(len(own)) + "\r\n"; string(r) != want {
				t.Errorf("DBSIZE: %s, want %q", quoteReply(r), want)
			}
		}},
		{"RANDOMKEY", []string{"RANDOMKEY"}, func(r []byte) {
			if v := mustRV(t, r); !slices.Contains(own, v.str) {
				t.Errorf("RANDOMKEY: %s is not one of tenant a's keys", quoteReply(r))
			}
		}},
	}
	for _, st := range steps {
		mustDo("SLOWLOG", "RESET")
		st.check(a.do(t, st.args...))
		calls := keyfenceCalls(slowlog(ctx, t, admin))
		scans := checkBounded(t, st.what, calls)
		longest := int64(0)
		for _, e := range calls {
			longest = max(longest, e.micros)
		}
		if st.what != "RANDOMKEY" && scans < minSteps {
			t.Errorf("%s: %d SCAN steps upstream; 200,000 keys need at least %d", st.what, scans, minSteps)
		}
		t.Logf("%s: %d upstream calls, %d SCAN steps, the longest %d µs", st.what, len(calls), scans, longest)
	}

	// A client's own SCAN cannot ask for the whole server in one step.
	mustDo("SLOWLOG", "RESET")
	raw := a.do(t, "SCAN", "0", "COUNT", "100000000")
	if r := mustRV(t, raw); len(r.elems) != 2 || r.elems[0].str == "0" {
		t.Errorf("SCAN 0 COUNT 100000000 over 200,300 keys ended in one step: %s", quoteReply(raw))
	}
	checkBounded(t, "SCAN COUNT 100000000", keyfenceCalls(slowlog(ctx, t, admin)))

	// No KEYS ever reached upstream.
	stats, err := admin.Info(ctx, "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(stats, "cmdstat_keys:") || strings.Contains(stats, "cmdstat_flushdb:") {
		t.Errorf("upstream ran KEYS or FLUSHDB:\n%s", stats)
	}

	// By time: a KEYS over the whole keyspace (what keyfence used to send),
	// run just before and just after, is the control; every call keyfence
	// makes must take less than half of it. Measured in the same window
	// (the slow log still logs every call), the bound tracks this machine's
	// speed of the moment instead of a fixed figure; one SCAN step walks
	// about 1/200 of what the control walks. A step stalled once by this
	// shared machine is noise, while an unbounded call is slow every time:
	// a run with a slow call is tried again, and only a slow call in each
	// of three runs fails.
	isKeys := func(e slowEntry) bool { return e.client == adminName && strings.EqualFold(e.args[0], "keys") }
	for attempt := 1; ; attempt++ {
		for _, k := range own {
			expect(t, a, "+OK\r\n", "SET", k, "x")
		}
		mustDo("SLOWLOG", "RESET")
		mustDo("KEYS", "tenant:a:*")
		for _, args := range [][]string{{"KEYS", "*"}, {"DBSIZE"}, {"RANDOMKEY"}, {"SCAN", "0", "COUNT", "100000000"}} {
			a.do(t, args...)
		}
		expect(t, a, "+OK\r\n", "FLUSHDB")
		mustDo("KEYS", "tenant:a:*")
		entries := slowlog(ctx, t, admin)
		control := int64(0)
		for _, e := range entries {
			if isKeys(e) && (control == 0 || e.micros < control) {
				control = e.micros
			}
		}
		if control == 0 {
			t.Fatalf("the control KEYS is not in the slow log")
		}
		var slow []slowEntry
		longest := int64(0)
		for _, e := range keyfenceCalls(entries) {
			longest = max(longest, e.micros)
			if e.micros >= control/2 {
				slow = append(slow, e)
			}
		}
		if len(slow) == 0 {
			t.Logf("run %d: control KEYS over %d keys: %d µs; keyfence's longest upstream call: %d µs", attempt, otherKeys+len(own), control, longest)
			break
		}
		for _, e := range slow {
			t.Logf("run %d: keyfence's upstream call took %d µs, half of the control KEYS is %d µs: %q", attempt, e.micros, control/2, e.args)
		}
		if attempt == 3 {
			t.Errorf("keyfence sent a call slower than half a KEYS over the keyspace in each of %d runs", attempt)
			break
		}
	}

	// FLUSHDB took tenant a's keys and nothing else.
	expect(t, a, ":0\r\n", "DBSIZE")
	if n, err := admin.DBSize(ctx).Result(); err != nil || n != otherKeys {
		t.Errorf("upstream DBSIZE after tenant a's FLUSHDB: %d, %v; want %d (tenant other's keys)", n, err, otherKeys)
	}

	// RANDOMKEY with no key of the tenant walks the whole table, still in
	// bounded steps, and answers null.
	mustDo("SLOWLOG", "RESET")
	expect(t, a, "$-1\r\n", "RANDOMKEY")
	expect(t, a, "*0\r\n", "KEYS", "*")
	expect(t, a, "+OK\r\n", "FLUSHDB")
	checkBounded(t, "RANDOMKEY, KEYS, FLUSHDB with no keys", keyfenceCalls(slowlog(ctx, t, admin)))
}
