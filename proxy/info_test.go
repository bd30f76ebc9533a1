package proxy

import (
	"strings"
	"testing"
	"time"

	"github.com/keyfence/keyfence/internal/redistest"
)

// infoSectionsOf splits INFO text into its section titles, in order, and
// each section's field names, in order.
func infoSectionsOf(text string) (titles []string, fields map[string][]string) {
	fields = map[string][]string{}
	sec := ""
	for _, line := range strings.Split(text, "\r\n") {
		if t, ok := strings.CutPrefix(line, "# "); ok {
			sec = t
			titles = append(titles, t)
			continue
		}
		if k, _, ok := strings.Cut(line, ":"); ok {
			fields[sec] = append(fields[sec], k)
		}
	}
	return titles, fields
}

// TestInfoLikeRedis runs the same workload on a direct redis-server and
// through keyfence (in front of a second server, shared with another
// tenant's keyfence), then compares INFO: the same sections in the same
// order for every section argument, the same fields in each section, and
// the same values wherever the value is the tenant's own (keyspace,
// blocked clients, pub/sub, cached scripts, errors, command calls, changes
// since the last save). The other tenant does all of it too, harder: none
// of it may show in the tenant's INFO.
func TestInfoLikeRedis(t *testing.T) {
	t.Parallel()
	for _, resp3 := range []bool{false, true} {
		name := "RESP2"
		if resp3 {
			name = "RESP3"
		}
		t.Run(name, func(t *testing.T) { testInfoLikeRedis(t, resp3) })
	}
}

func testInfoLikeRedis(t *testing.T, resp3 bool) {
	direct := redistest.StartT(t, redistest.Options{})
	up := redistest.StartT(t, redistest.Options{})
	addr := startProxy(t, up, func(c *Config) { c.Tenant = "info"; c.Upstream.DB = 9 })
	other := startProxy(t, up, func(c *Config) { c.Tenant = "infoother"; c.Upstream.DB = 9 })

	type sideConns struct{ main, sub, psub, blocked *rawConn }
	open := func(addr string, selectDB bool) sideConns {
		var sc sideConns
		for _, c := range []**rawConn{&sc.main, &sc.sub, &sc.psub, &sc.blocked} {
			*c = dialRaw(t, addr)
			if resp3 {
				(*c).do(t, "HELLO", "3")
			}
			if selectDB {
				(*c).do(t, "SELECT", "9")
			}
		}
		return sc
	}
	workload := func(sc sideConns, scale int) {
		for i := 0; i < scale; i++ {
			sc.main.do(t, "SET", "a", "1")
			sc.main.do(t, "SET", "b", "2", "EX", "1000")
			sc.main.do(t, "HSET", "h", "f", "v")
			sc.main.do(t, "RPUSH", "l", "x")
			sc.main.do(t, "INCR", "h")                  // WRONGTYPE
			sc.main.do(t, "NOSUCHCOMMAND")              // unknown
			sc.main.do(t, "GET", "a", "extra")          // wrong arity: rejected
			sc.main.do(t, "EVAL", "return 1", "0")      // one cached script
			sc.main.do(t, "EVAL", "return nosuch", "0") // a failed call
		}
		sc.sub.do(t, "SUBSCRIBE", "ch1")
		sc.psub.write(t, encode(nil, "PSUBSCRIBE", "p1*", "p2*"))
		sc.psub.read(t)
		sc.psub.read(t)
		sc.blocked.write(t, encode(nil, "BLPOP", "nolist", "0"))
	}
	d := open(direct.Addr(), true)
	// Only the workload's errors and calls count on the direct side: the
	// harness's own connections (go-redis's CLIENT SETINFO, which Redis 7.0
	// refuses) do not.
	d.main.do(t, "CONFIG", "RESETSTAT")
	p := open(addr, false)
	o := open(other, false)
	workload(d, 1)
	workload(p, 1)
	workload(o, 3) // the other tenant: more of everything
	for _, srv := range []*redistest.Server{direct, up} {
		want := 1
		if srv == up {
			want = 2 // both tenants' BLPOPs
		}
		if !waitFor(10*time.Second, func() bool { return blockedClients(t, srv) == want }) {
			t.Fatalf("%d clients blocked on %s, want %d", blockedClients(t, srv), srv.Addr(), want)
		}
	}

	info := func(c *rawConn, args ...string) string {
		t.Helper()
		v := mustRV(t, c.do(t, append([]string{"INFO"}, args...)...))
		switch {
		case !resp3 && v.typ == '$':
			return v.str
		case resp3 && v.typ == '=' && strings.HasPrefix(v.str, "txt:"):
			return v.str[4:]
		}
		t.Fatalf("INFO %q: %c reply %q", args, v.typ, v.str)
		return ""
	}
	// Sections and fields, for every way of asking.
	for _, args := range [][]string{nil, {"default"}, {"all"}, {"everything"}, {"server"}, {"CLIENTS", "memory"},
		{"persistence", "stats"}, {"replication", "cpu", "modules"}, {"cluster", "keyspace"}, {"commandstats"}, {"errorstats"},
		{"latencystats"}, {"nosuch"}, {"default", "commandstats"}} {
		dt, df := infoSectionsOf(info(d.main, args...))
		pt, pf := infoSectionsOf(info(p.main, args...))
		if len(args) == 1 && args[0] == "everything" {
			if n := len(pt); n == 0 || pt[n-1] != "Keyfence" {
				t.Errorf("INFO everything: no Keyfence section last: %q", pt)
			} else {
				pt = pt[:n-1]
			}
		}
		if strings.Join(dt, ",") != strings.Join(pt, ",") {
			t.Errorf("INFO %q sections:\n  direct: %q\n  proxy:  %q", args, dt, pt)
		}
		for _, sec := range []string{"Server", "Clients", "Memory", "Persistence", "Stats", "Replication", "CPU", "Modules", "Cluster"} {
			if strings.Join(df[sec], ",") != strings.Join(pf[sec], ",") {
				t.Errorf("INFO %q, section %s fields:\n  direct: %q\n  proxy:  %q", args, sec, df[sec], pf[sec])
			}
		}
	}

	// The tenant's own figures: Redis's values for the same workload.
	dInfo, pInfo := info(d.main, "everything"), info(p.main, "everything")
	for _, f := range []string{"blocked_clients", "pubsub_channels", "pubsub_patterns", "pubsubshard_channels",
		"number_of_cached_scripts", "number_of_functions", "number_of_libraries", "total_error_replies",
		"errorstat_ERR", "errorstat_WRONGTYPE", "rdb_changes_since_last_save", "cluster_enabled", "role",
		"connected_slaves", "redis_version", "maxmemory_policy", "loading"} {
		dv, dok := infoField(dInfo, f)
		pv, pok := infoField(pInfo, f)
		if !dok || !pok || dv != pv {
			t.Errorf("INFO %s: direct %q (%v), proxy %q (%v)", f, dv, dok, pv, pok)
		}
	}
	for _, f := range []string{"cmdstat_set", "cmdstat_hset", "cmdstat_rpush", "cmdstat_incr", "cmdstat_get", "cmdstat_eval"} {
		dv, _ := infoField(dInfo, f)
		pv, ok := infoField(pInfo, f)
		// keyfence does not time commands: compare the counts only.
		if !ok || countsOf(dv) != countsOf(pv) {
			t.Errorf("INFO %s: direct %q, proxy %q", f, dv, pv)
		}
	}
	dks, _ := infoField(dInfo, "db9")
	pks, ok := infoField(pInfo, "db9")
	if !ok || !strings.HasPrefix(dks, "keys=4,expires=1,") || !strings.HasPrefix(pks, "keys=4,expires=1,") {
		t.Errorf("INFO keyspace db9: direct %q, proxy %q; want keys=4,expires=1,…", dks, pks)
	}
	// The server's own figures are there, and are upstream's.
	for _, f := range []string{"used_memory_human", "used_memory_peak_human", "used_memory_peak_perc", "used_cpu_user", "used_cpu_sys", "rdb_last_bgsave_status"} {
		if v, ok := infoField(pInfo, f); !ok || v == "" {
			t.Errorf("INFO %s missing through keyfence", f)
		}
	}
	if v, _ := infoField(pInfo, "connected_clients"); v != "4" {
		t.Errorf("INFO connected_clients = %q, want 4 (the tenant's own connections)", v)
	}
	if v, _ := infoField(pInfo, "tcp_port"); !strings.HasSuffix(addr, ":"+v) {
		t.Errorf("INFO tcp_port = %q, keyfence listens on %s", v, addr)
	}

	// Unblocking the other tenant's client changes nothing here; the
	// tenant's own does.
	o.main.do(t, "RPUSH", "nolist", "x")
	o.blocked.read(t)
	if v, _ := infoField(info(p.main, "clients"), "blocked_clients"); v != "1" {
		t.Errorf("blocked_clients = %q after the other tenant's BLPOP returned, want 1", v)
	}
	p.main.do(t, "RPUSH", "nolist", "x")
	p.blocked.read(t)
	if v, _ := infoField(info(p.main, "clients"), "blocked_clients"); v != "0" {
		t.Errorf("blocked_clients = %q after the tenant's BLPOP returned, want 0", v)
	}
}

// countsOf drops the timings of a cmdstat line: calls, rejected and failed
// calls stay.
func countsOf(v string) string {
	var keep []string
	for _, kv := range strings.Split(v, ",") {
		if !strings.HasPrefix(kv, "usec") {
			keep = append(keep, kv)
		}
	}
	return strings.Join(keep, ",")
}
