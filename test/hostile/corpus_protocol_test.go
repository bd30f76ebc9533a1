package hostile

import (
	"encoding/binary"
	"strconv"
	"strings"
	"testing"
	"time"
)

// protocolAttempts abuse the protocol and the server-wide commands.
func protocolAttempts() []attempt {
	var out []attempt
	// raw sends bytes (then maybe closes) and reads whatever comes back;
	// what matters is that the fence keeps serving (the harness checks it).
	raw := func(name, payload string, closeAfter bool) attempt {
		return attempt{name: name, category: catProtocol, run: func(a *act) {
			c := a.conn()
			_ = c.write([]byte(payload))
			if closeAfter {
				_ = c.Close()
				return
			}
			c.drain(50 * time.Millisecond)
		}}
	}
	out = append(out,
		raw("negative-multibulk", "*-1\r\n*1\r\n$4\r\nPING\r\n", false),
		raw("negative-multibulk-5", "*-5\r\n", false),
		raw("negative-bulk", "*2\r\n$-5\r\nGET\r\n", false),
		raw("huge-multibulk", "*99999999999\r\n", false),
		raw("multibulk-2g", "*2147483648\r\n$3\r\nGET\r\n", false),
		raw("bulk-1g-header-close", "*2\r\n$3\r\nSET\r\n$1073741824\r\nabc", true),
		raw("bulk-1g-header-wait", "*1\r\n$1073741824\r\n"+strings.Repeat("x", 64<<10), false),
		raw("bulk-length-mismatch", "*1\r\n$3\r\nPINGX\r\n", false),
		raw("bulk-not-numeric", "*1\r\n$abc\r\nPING\r\n", false),
		raw("multibulk-not-numeric", "*abc\r\n", false),
		raw("bulk-without-array", "$4\r\nPING\r\n", false),
		raw("array-of-integer", "*1\r\n:1\r\n", false),
		raw("nested-array-request", "*1\r\n*1\r\n$4\r\nPING\r\n", false),
		raw("inline-quotes", "GET \"tenant:beta:str\"\r\n", false),
		raw("inline-unbalanced-quote", "GET \"tenant:beta:str\r\n", false),
		raw("inline-escapes", "SET \"\\x00tenant:beta:str\" \"pwned\"\r\n", false),
		raw("inline-nul", "GET a\x00tenant:beta:str\r\n", false),
		raw("inline-flushall", "FLUSHALL\r\n", false),
		raw("inline-long-no-newline", strings.Repeat("A", 128<<10), false),
		raw("empty-lines", "\r\n\r\n\n\n\r\n", false),
		raw("half-request-close", "*3\r\n$3\r\nSET\r\n$15\r\ntenant:beta:str\r\n$5\r\npw", true),
		raw("bare-lf", "*1\n$4\nPING\n", false),
		raw("crlf-in-bulk", "*2\r\n$3\r\nGET\r\n$17\r\nx\r\n*1\r\n$8\r\nFLUSHALL\r\n", false),
		raw("resp3-types-in-request", "*2\r\n+GET\r\n,1.5\r\n", false),
		raw("pipelined-garbage-then-valid", "*1\r\n$4\r\nPING\r\n\xff\xfe\xfd*1\r\n$8\r\nFLUSHALL\r\n", false),
	)

	cmds := func(name string, check func(a *act, r reply), args ...string) attempt {
		return attempt{name: name, category: catProtocol, run: func(a *act) { check(a, a.do(args...)) }}
	}
	refused := func(a *act, r reply) { a.wantError("server-wide command", r) }
	anyReply := func(a *act, r reply) { a.wantReply("command", r) }
	for _, c := range [][]string{
		{"SELECT", "9999999"}, {"SELECT", "-1"}, {"SELECT", "16"}, {"SWAPDB", "0", "1"}, {"SYNC"}, {"PSYNC", "?", "-1"},
		{"DEBUG", "SLEEP", "0"}, {"DEBUG", "SEGFAULT"}, {"DEBUG", "OBJECT", betaPrefix + "str"}, {"DEBUG", "RELOAD"},
		{"CONFIG", "GET", "*"}, {"CONFIG", "SET", "notify-keyspace-events", ""}, {"CONFIG", "SET", "maxmemory", "1"},
		{"CONFIG", "RESETSTAT"}, {"CONFIG", "REWRITE"}, {"ACL", "LIST"}, {"ACL", "SETUSER", "evil", "on", "nopass", "+@all", "~*"},
		{"ACL", "GETUSER", "kf-beta"}, {"ACL", "DELUSER", "kf-beta"},
		{"MODULE", "LOAD", "/tmp/evil.so"}, {"SHUTDOWN", "NOSAVE"},
		{"FAILOVER"}, {"REPLICAOF", "127.0.0.1", "1"}, {"SLAVEOF", "127.0.0.1", "1"}, {"LATENCY", "RESET"},
		{"SLOWLOG", "RESET"}, {"MEMORY", "STATS"}, {"MEMORY", "DOCTOR"}, {"MEMORY", "MALLOC-STATS"}, {"MEMORY", "PURGE"},
		{"BGSAVE"}, {"SAVE"}, {"BGREWRITEAOF"}, {"MONITOR"}, {"CLIENT", "KILL", "TYPE", "normal"}, {"CLIENT", "KILL", "TYPE", "pubsub"},
		{"CLIENT", "KILL", "USER", "kf-beta"}, {"CLIENT", "KILL", "USER", "default"}, {"CLIENT", "KILL", "SKIPME", "yes"},
		{"CLIENT", "PAUSE", "2000"}, {"CLIENT", "PAUSE", "2000", "WRITE"},
		{"FUNCTION", "RESTORE", "junk"}, {"FCALL", "f", "0"}, {"SCRIPT", "KILL"},
	} {
		out = append(out, cmds("refused-"+strings.ToLower(strings.Join(c, "-")), refused, c...))
	}
	for _, c := range [][]string{
		{"SLOWLOG", "GET", "128"}, {"SLOWLOG", "LEN"}, {"LATENCY", "LATEST"}, {"OBJECT", "FREQ", betaPrefix + "str"},
		{"WAIT", "0", "0"}, {"TIME"}, {"ROLE"}, {"LASTSAVE"}, {"ECHO", "x"}, {"CLIENT", "GETREDIR"}, {"CLIENT", "SETNAME", "impersonate"},
		{"ACL", "WHOAMI"}, {"ACL", "CAT"}, {"COMMAND", "DOCS", "GET"}, {"COMMAND", "GETKEYS", "MSET", betaPrefix + "a", "1"},
		{"FUNCTION", "LIST"}, {"FUNCTION", "STATS"}, {"FUNCTION", "DUMP"}, {"HELLO", "3"}, {"HELLO", "2"},
		{"HELLO", "3", "AUTH", "default", "wrong"}, {"HELLO", "3", "AUTH", "kf-beta", "guess"}, {"AUTH", "kf-beta", "guess"},
		{"AUTH", "default", ""}, {"HELLO", "3", "SETNAME", "beta"}, {"RESET"}, {"LOLWUT"}, {"MOVE", acmeOwnKey, "1"},
		{"ACL", "LOG"}, {"ACL", "USERS"}, {"MODULE", "LIST"}, {"CLUSTER", "INFO"}, {"CLUSTER", "NODES"}, {"LATENCY", "DOCTOR"},
		{"CLIENT", "UNPAUSE"}, {"CLIENT", "NO-EVICT", "on"}, {"FUNCTION", "FLUSH"},
		// acme's own library, in its namespace; what its code can do is
		// corpus_functions_test.go's.
		{"FUNCTION", "LOAD", "#!lua name=evil\nredis.register_function('f', function() return redis.call('FLUSHALL') end)"},
	} {
		out = append(out, cmds("served-"+strings.ToLower(strings.Join(c, "-")), anyReply, c...))
	}

	out = append(out,
		attempt{name: "monitor-sees-nothing", category: catProtocol, run: func(a *act) {
			c := a.conn()
			r := c.do("MONITOR")
			a.wantError("MONITOR (it would show every tenant's commands)", r)
			a.f.betaActivity(a.t)
			c.drain(50 * time.Millisecond)
		}},
		attempt{name: "client-list-own-only", category: catProtocol, run: func(a *act) {
			r := a.do("CLIENT", "LIST")
			a.wantOK("CLIENT LIST", r)
			for _, line := range strings.Split(strings.TrimSpace(r.v.str), "\n") {
				if strings.Contains(line, "cmd=blpop") || strings.Contains(line, "subscribe") || strings.Contains(line, "sub=1") {
					a.t.Errorf("CLIENT LIST shows a client acme does not have (beta's BLPOP or subscriber): %s", line)
				}
			}
		}},
		attempt{name: "client-id-info-own", category: catProtocol, run: func(a *act) {
			a.wantOK("CLIENT ID", a.do("CLIENT", "ID"))
			a.wantOK("CLIENT INFO", a.do("CLIENT", "INFO"))
		}},
		attempt{name: "client-kill-ids", category: catProtocol, run: func(a *act) {
			for id := 1; id <= 40; id++ {
				a.wantError("CLIENT KILL ID "+strconv.Itoa(id), a.do("CLIENT", "KILL", "ID", strconv.Itoa(id)))
			}
		}},
		attempt{name: "client-unblock-ids", category: catProtocol, run: func(a *act) {
			// beta's BLPOP is blocked upstream; unblocking it is beta's
			// business only (the harness sees a BLPOP that returned).
			for id := 1; id <= 40; id++ {
				a.wantReply("CLIENT UNBLOCK "+strconv.Itoa(id), a.do("CLIENT", "UNBLOCK", strconv.Itoa(id), "ERROR"))
			}
		}},
		attempt{name: "info-all-own-only", category: catProtocol, run: func(a *act) {
			r := a.do("INFO", "everything")
			a.wantOK("INFO everything", r)
			checkInfoOwn(a, r.v.str)
		}},
		attempt{name: "info-keyspace-own-only", category: catProtocol, run: func(a *act) {
			r := a.do("INFO", "keyspace")
			a.wantOK("INFO keyspace", r)
			checkInfoOwn(a, r.v.str)
			if !strings.Contains(r.v.str, "db0:keys=1,") {
				a.t.Errorf("INFO keyspace must count acme's one key in db0 (db0:keys=1,…): got %q", r.v.str)
			}
		}},
		attempt{name: "info-clients-stats", category: catProtocol, run: func(a *act) {
			r := a.do("INFO", "clients")
			a.wantOK("INFO clients", r)
			checkInfoOwn(a, r.v.str)
			r = a.do("INFO", "stats")
			a.wantOK("INFO stats", r)
			checkInfoOwn(a, r.v.str)
		}},
		attempt{name: "keys-own-only", category: catProtocol, run: func(a *act) {
			a.wantStrings("KEYS *", a.do("KEYS", "*"), acmeOwnKey)
		}},
		attempt{name: "scan-own-only", category: catProtocol, run: func(a *act) {
			var got []string
			cursor := "0"
			for range 1000 {
				r := a.do("SCAN", cursor, "COUNT", "1000")
				if r.err != nil || r.isErr() || len(r.v.elems) != 2 {
					a.t.Errorf("SCAN: %s", r)
					return
				}
				got = append(got, r.v.elems[1].strs()...)
				if cursor = r.v.elems[0].str; cursor == "0" {
					break
				}
			}
			if !sameSet(got, []string{acmeOwnKey}) {
				a.t.Errorf("SCAN must list acme's keys only (%q): got %q", acmeOwnKey, got)
			}
		}},
		attempt{name: "dbsize-own-only", category: catProtocol, run: func(a *act) {
			a.wantInt("DBSIZE", a.do("DBSIZE"), 1)
		}},
		attempt{name: "randomkey-own-only", category: catProtocol, run: func(a *act) {
			if r := a.do("RANDOMKEY"); r.err != nil || r.v.str != acmeOwnKey {
				a.t.Errorf("RANDOMKEY must return acme's only key %q: got %s", acmeOwnKey, r)
			}
		}},
		attempt{name: "select-out-of-range-then-serve", category: catProtocol, run: func(a *act) {
			a.wantError("SELECT 9999999", a.do("SELECT", "9999999"))
			if r := a.do("GET", acmeOwnKey); r.err != nil || r.v.str != acmeOwnValue {
				a.t.Errorf("GET after a refused SELECT must still read db 0: got %s", r)
			}
		}},
		attempt{name: "restore-crafted-payload", category: catProtocol, run: restoreCrafted},
		attempt{name: "quit-mid-pipeline", category: catProtocol, run: func(a *act) {
			c := a.conn()
			_ = c.write(append(append(encode("SET", "q", "1"), encode("QUIT")...), encode("FLUSHALL")...))
			c.drain(50 * time.Millisecond)
		}},
	)
	return out
}

// checkInfoOwn fails when INFO text counts anything of beta's: its keys in
// db1, its blocked BLPOP, its channel and pattern, its commands (INFO's
// commandstats are acme's own: acme's corpus runs BLPOP, XREADGROUP and
// PSUBSCRIBE itself, but only beta runs SCRIPT LOAD and XGROUP CREATE, at
// every attempt's setup).
func checkInfoOwn(a *act, info string) {
	a.t.Helper()
	for _, bad := range []string{"db1:", "cmdstat_script|load:", "cmdstat_xgroup|create:"} {
		if strings.Contains(info, bad) {
			a.t.Errorf("INFO shows %q, which only beta has", bad)
		}
	}
	for _, field := range []string{"blocked_clients", "pubsub_channels", "pubsub_patterns", "pubsubshard_channels"} {
		if v := infoField(info, field); v != "" && v != "0" {
			a.t.Errorf("INFO %s:%s counts beta's clients (acme has none)", field, v)
		}
	}
	if v := infoField(info, "db0"); v != "" && !strings.HasPrefix(v, "keys=1,") {
		a.t.Errorf("INFO db0:%s counts keys beyond acme's one", v)
	}
}

// restoreCrafted restores a hash whose listpack claims an entry longer
// than itself, with a valid checksum: with sanitize-dump-payload no (Redis
// 7.0's default, as on this upstream) reading it trips an assertion that
// takes the server down for every tenant. keyfence must refuse RESTORE and
// say which setting makes it safe.
func restoreCrafted(a *act) {
	ctx := a.ctx()
	admin := a.f.adminDB(0)
	src := acmePrefix + "tmp-hash"
	if err := admin.HSet(ctx, src, "f1", "v1").Err(); err != nil {
		a.t.Fatalf("HSET: %v", err)
	}
	dump, err := admin.Dump(ctx, src).Result()
	if err != nil {
		a.t.Fatalf("DUMP: %v", err)
	}
	_ = admin.Del(ctx, src).Err()
	p := []byte(dump)
	const rdbTypeHashListpack = 16
	if len(p) < 20 || p[0] != rdbTypeHashListpack || p[1] >= 64 || p[2+6] != 0x82 {
		a.t.Fatalf("unexpected DUMP layout %q: cannot craft the payload", p)
	}
	p[2+6] = 0xEF // a 12-bit string length far past the listpack's end
	binary.LittleEndian.PutUint64(p[len(p)-8:], crc64Jones(p[:len(p)-8]))

	r := a.do("RESTORE", "crafted", "0", string(p))
	a.wantErrorContaining("RESTORE of a crafted payload while upstream does not sanitize", r, "sanitize-dump-payload")
	a.wantReply("HGETALL of the restored key", a.do("HGETALL", "crafted"))
}

// crc64Jones is the checksum Redis puts at the end of a DUMP payload.
func crc64Jones(data []byte) uint64 {
	const poly = 0x95ac9329ac4bc9b5
	var crc uint64
	for _, b := range data {
		crc ^= uint64(b)
		for range 8 {
			if crc&1 == 1 {
				crc = crc>>1 ^ poly
			} else {
				crc >>= 1
			}
		}
	}
	return crc
}

func TestCRC64Jones(t *testing.T) {
	// The check value Redis's own crc64 test uses.
	if got := crc64Jones([]byte("123456789")); got != 0xe9c6d914c4b8d9ca {
		t.Fatalf("crc64Jones(123456789) = %#x, want 0xe9c6d914c4b8d9ca", got)
	}
}
