package proxy

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyfence/keyfence/resp"
	"github.com/keyfence/keyfence/rewrite"
)

// INFO for a tenant carries every section and field of Redis 7.0, each
// filled from one of three places:
//
//   - the tenant's own figures, which keyfence counts (clients, blocked
//     clients, commands, errors, bytes, pub/sub, scripts, keyspace);
//   - the server's own, passed through from upstream where they say
//     nothing about any tenant's keys or activity beyond what all tenants
//     together make of the server (version, OS, uptime, memory,
//     persistence state, CPU);
//   - zero, for activity counters of the whole server that keyfence cannot
//     split by tenant (keyspace hits, expired and evicted keys, replication
//     offsets): passed through, they would let a tenant watch the others.
//
// README lists which field is which.

// infoSections are Redis 7.0's sections in its order; "default" takes all
// but commandstats and latencystats, "all" every one, "everything" also
// keyfence's own section (where Redis puts modules' sections).
var infoSections = []string{"server", "clients", "memory", "persistence", "stats", "replication",
	"cpu", "modules", "commandstats", "errorstats", "latencystats", "cluster", "keyspace", "keyfence"}

// infoUpstream are the sections built from upstream's (infoSection says
// which of their fields get another value, and why).
var infoUpstream = map[string]bool{"server": true, "memory": true, "persistence": true, "cpu": true, "stats": true, "replication": true}

// infoZeroed are upstream fields of the passed-through sections that count
// every tenant's keys: a tenant sees 0.
var infoZeroed = map[string]bool{
	"current_save_keys_processed": true, // keys of all tenants being saved
	"current_save_keys_total":     true,
	"rdb_last_load_keys_expired":  true, // keys of all tenants loaded
	"rdb_last_load_keys_loaded":   true,
}

// info answers INFO [section …] with the tenant's view.
func (s *session) info(ctx context.Context, args [][]byte) {
	want := map[string]bool{}
	if len(args) == 0 {
		args = [][]byte{[]byte("default")}
	}
	for _, a := range args {
		switch name := strings.ToLower(string(a)); name {
		case "default":
			for _, n := range infoSections {
				want[n] = want[n] || n != "commandstats" && n != "latencystats" && n != "keyfence"
			}
		case "all", "everything":
			for _, n := range infoSections {
				want[n] = want[n] || n != "keyfence" || name == "everything"
			}
		default:
			want[name] = true
		}
	}
	upstream := map[string][]infoLine{}
	var need [][]byte
	for _, sec := range infoSections {
		if want[sec] && infoUpstream[sec] || sec == "persistence" && want["stats"] {
			need = append(need, []byte(sec))
		}
	}
	if len(need) > 0 {
		v, err := s.call(ctx, s.conn(), append([][]byte{[]byte("INFO")}, need...)...)
		if err != nil {
			s.addLocalError(upstreamErrorText(err))
			return
		}
		upstream = parseInfo(infoText(v))
	}
	var b strings.Builder
	for _, sec := range infoSections {
		if !want[sec] {
			continue
		}
		if b.Len() > 0 {
			b.WriteString("\r\n")
		}
		title := strings.ToUpper(sec[:1]) + sec[1:]
		if sec == "cpu" {
			title = "CPU"
		}
		b.WriteString("# " + title + "\r\n")
		if err := s.infoSection(ctx, &b, sec, upstream); err != nil {
			s.addLocalError(upstreamErrorText(err))
			return
		}
	}
	s.addLocal(s.appendVerbatim(nil, b.String()))
}

// infoText is the text of an INFO reply: a RESP2 bulk, or a RESP3
// verbatim string without its "txt:" format.
func infoText(v resp.Value) string {
	if v.Type == '=' && len(v.Str) >= 4 && v.Str[3] == ':' {
		return string(v.Str[4:])
	}
	return string(v.Str)
}

type infoLine struct{ key, val string }

// parseInfo splits INFO text into its sections' lines, in order.
func parseInfo(text string) map[string][]infoLine {
	out := map[string][]infoLine{}
	sec := ""
	for _, line := range strings.Split(text, "\r\n") {
		if name, ok := strings.CutPrefix(line, "# "); ok {
			sec = strings.ToLower(name)
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[sec] = append(out[sec], infoLine{k, v})
		}
	}
	return out
}

// upstreamField returns one field of an upstream section, or "".
func upstreamField(up map[string][]infoLine, sec, key string) string {
	for _, l := range up[sec] {
		if l.key == key {
			return l.val
		}
	}
	return ""
}

func (s *session) infoSection(ctx context.Context, b *strings.Builder, sec string, up map[string][]infoLine) error {
	st := &s.srv.stats
	field := func(k string, v any) { fmt.Fprintf(b, "%s:%v\r\n", k, v) }
	switch sec {
	case "server":
		for _, l := range up["server"] {
			switch l.key {
			case "redis_mode":
				l.val = "standalone" // keyfence presents one endpoint, as HELLO says
			case "tcp_port":
				l.val = s.srv.listenPort()
			case "executable", "config_file":
				l.val = "" // the operators' paths on the shared host
			}
			field(l.key, l.val)
		}
	case "memory":
		libs, fns := s.functionCounts(ctx)
		for _, l := range up["memory"] {
			switch l.key {
			case "number_of_cached_scripts":
				l.val = strconv.Itoa(s.srv.scripts.count())
			case "number_of_functions":
				l.val = strconv.Itoa(fns) // the tenant's own
			case "number_of_libraries":
				l.val = strconv.Itoa(libs)
			}
			field(l.key, l.val)
		}
	case "persistence":
		for _, l := range up["persistence"] {
			switch {
			case l.key == "rdb_changes_since_last_save":
				l.val = strconv.FormatInt(st.changesSinceSave(upstreamField(up, "persistence", "rdb_last_save_time")), 10)
			case infoZeroed[l.key]:
				l.val = "0"
			}
			field(l.key, l.val)
		}
	case "cpu":
		for _, l := range up["cpu"] {
			field(l.key, l.val)
		}
	case "clients":
		field("connected_clients", len(s.srv.sessionsSnapshot()))
		field("cluster_connections", 0)
		field("maxclients", s.srv.cfg.MaxClients)
		field("client_recent_max_input_buffer", 0)
		field("client_recent_max_output_buffer", 0)
		field("blocked_clients", st.blocked.Load())
		field("tracking_clients", 0)
		field("clients_in_timeout_table", 0)
	case "stats":
		return s.infoStats(ctx, b, up)
	case "replication":
		// keyfence presents a master without replicas (ROLE is denied: the
		// topology behind keyfence is the operators'); offsets would count
		// every tenant's writes.
		field("role", "master")
		field("connected_slaves", 0)
		field("master_failover_state", "no-failover")
		field("master_replid", upstreamField(up, "replication", "master_replid"))
		field("master_replid2", upstreamField(up, "replication", "master_replid2"))
		field("master_repl_offset", 0)
		field("second_repl_offset", -1)
		field("repl_backlog_active", 0)
		field("repl_backlog_size", upstreamField(up, "replication", "repl_backlog_size"))
		field("repl_backlog_first_byte_offset", 0)
		field("repl_backlog_histlen", 0)
	case "modules":
		// No module command reaches upstream through keyfence.
	case "commandstats":
		for _, c := range st.commandStats("info") {
			fmt.Fprintf(b, "cmdstat_%s:calls=%d,usec=0,usec_per_call=0.00,rejected_calls=%d,failed_calls=%d\r\n", c.name, c.calls, c.rejected, c.failed)
		}
	case "errorstats":
		for _, e := range st.errorStats() {
			fmt.Fprintf(b, "errorstat_%s:count=%d\r\n", e.key, e.val)
		}
	case "latencystats":
		// keyfence does not time commands one by one: no percentiles.
	case "cluster":
		field("cluster_enabled", 0) // one endpoint, even before a cluster
	case "keyspace":
		dbs := []int{0}
		if s.srv.cluster == nil {
			v, err := s.call(ctx, s.shared, []byte("INFO"), []byte("keyspace"))
			if err != nil {
				return err
			}
			// Only where upstream has keys at all can the tenant have some.
			dbs = keyspaceDBs(v.Str)
		}
		for _, db := range dbs {
			line, err := s.keyspaceLine(ctx, db)
			if err != nil {
				return err
			}
			if line != "" {
				b.WriteString(line + "\r\n")
			}
		}
	case "keyfence":
		fmt.Fprintf(b, "tenant:%s\r\nkey_prefix:%s\r\n", s.srv.cfg.Tenant, s.srv.prefix)
		if ss := s.srv.Stats(); ss.Breaker != "" {
			fmt.Fprintf(b, "circuit_breaker:%s\r\nfallback_hits:%d\r\nfallback_misses:%d\r\n", ss.Breaker, ss.FallbackHits, ss.FallbackMisses)
		}
	}
	return nil
}

// infoStats writes the stats section in Redis 7.0's order.
func (s *session) infoStats(ctx context.Context, b *strings.Builder, up map[string][]infoLine) error {
	st := &s.srv.stats
	ops, in, out := st.instantaneous()
	pubsub := func(sub string) (int, error) {
		if s.srv.cluster != nil && sub == "SHARDCHANNELS" {
			return 0, nil // spread over the masters; keyfence does not add them up
		}
		v, err := s.call(ctx, s.shared, []byte("PUBSUB"), []byte(sub), append(append([]byte(nil), s.rw.GlobPrefix()...), '*'))
		return len(v.Elems), err
	}
	channels, err := pubsub("CHANNELS")
	if err != nil {
		return err
	}
	shard, err := pubsub("SHARDCHANNELS")
	if err != nil {
		return err
	}
	fields := []struct {
		k string
		v any
	}{
		{"total_connections_received", st.connections.Load()},
		{"total_commands_processed", st.commands.Load() - 1}, // as in Redis, not this INFO yet
		{"instantaneous_ops_per_sec", ops},
		{"total_net_input_bytes", st.netIn.Load()},
		{"total_net_output_bytes", st.netOut.Load()},
		{"total_net_repl_input_bytes", 0},
		{"total_net_repl_output_bytes", 0},
		{"instantaneous_input_kbps", fmt.Sprintf("%.2f", in)},
		{"instantaneous_output_kbps", fmt.Sprintf("%.2f", out)},
		{"instantaneous_input_repl_kbps", "0.00"},
		{"instantaneous_output_repl_kbps", "0.00"},
		{"rejected_connections", st.rejected.Load()},
		{"sync_full", 0},
		{"sync_partial_ok", 0},
		{"sync_partial_err", 0},
		{"expired_keys", 0},
		{"expired_stale_perc", "0.00"},
		{"expired_time_cap_reached_count", 0},
		{"expire_cycle_cpu_milliseconds", 0},
		{"evicted_keys", 0},
		{"evicted_clients", 0},
		{"total_eviction_exceeded_time", 0},
		{"current_eviction_exceeded_time", 0},
		{"keyspace_hits", 0},
		{"keyspace_misses", 0},
		{"pubsub_channels", channels},
		{"pubsub_patterns", s.srv.numPatterns()},
		{"pubsubshard_channels", shard},
		{"latest_fork_usec", orZero(upstreamField(up, "stats", "latest_fork_usec"))},
		{"total_forks", orZero(upstreamField(up, "stats", "total_forks"))},
		{"migrate_cached_sockets", 0},
		{"slave_expires_tracked_keys", 0},
		{"active_defrag_hits", 0},
		{"active_defrag_misses", 0},
		{"active_defrag_key_hits", 0},
		{"active_defrag_key_misses", 0},
		{"total_active_defrag_time", 0},
		{"current_active_defrag_time", 0},
		{"tracking_total_keys", 0},
		{"tracking_total_items", 0},
		{"tracking_total_prefixes", 0},
		{"unexpected_error_replies", 0},
		{"total_error_replies", st.errorReplies.Load()},
		{"dump_payload_sanitizations", 0},
		{"total_reads_processed", st.reads.Load()},
		{"total_writes_processed", st.writes.Load()},
		{"io_threaded_reads_processed", 0},
		{"io_threaded_writes_processed", 0},
		{"reply_buffer_shrinks", 0},
		{"reply_buffer_expands", 0},
	}
	for _, f := range fields {
		fmt.Fprintf(b, "%s:%v\r\n", f.k, f.v)
	}
	return nil
}

func orZero(v string) string {
	if v == "" {
		return "0"
	}
	return v
}

// listenPort is the port clients reach keyfence on, INFO's tcp_port.
func (s *Server) listenPort() string {
	if s.ln == nil {
		return "0"
	}
	_, port, err := net.SplitHostPort(s.ln.Addr().String())
	if err != nil {
		return "0"
	}
	return port
}

// tenantStats are the tenant's own figures of INFO, counted by this
// keyfence: its sessions, commands and replies.
type tenantStats struct {
	connections  atomic.Int64 // sessions accepted
	rejected     atomic.Int64 // refused past --max-clients
	commands     atomic.Int64 // commands processed (not refused before running)
	writeCmds    atomic.Int64 // writes that did something: rdb_changes_since_last_save
	netIn        atomic.Int64 // request bytes parsed
	netOut       atomic.Int64 // reply bytes written
	reads        atomic.Int64 // reads of client bytes
	writes       atomic.Int64 // writes to clients
	blocked      atomic.Int64 // sessions waiting on a blocking command now
	errorReplies atomic.Int64

	cmds sync.Map // command name → *cmdCounter

	mu         sync.Mutex
	errors     map[string]int64 // errorstats: error code → replies
	saveSeen   string           // upstream's rdb_last_save_time when last read
	writesBase int64            // writeCmds when that save was first seen

	sampleMu sync.Mutex
	samples  [statSamples]statSample
	next     int
}

type cmdCounter struct {
	write                   bool // the command is a write: rdb_changes_since_last_save
	calls, rejected, errors atomic.Int64
}

// maxErrorCodes bounds errorstats, as Redis does (ERRORSTATS_LIMIT).
const maxErrorCodes = 128

// lastCounter is a session's memo of the counters it used last: a
// pipeline is mostly one command over and over, and the memo saves a
// lookup in the shared map for each. It names the stats it came from, so
// that a gateway session that changes tenant never counts in the old one's.
type lastCounter struct {
	st   *tenantStats
	name string
	c    *cmdCounter
}

func (last *lastCounter) get(st *tenantStats, name string) *cmdCounter {
	if last.st == st && last.name == name {
		return last.c
	}
	return nil
}

// counter returns cmd's counters, made on first use.
func (st *tenantStats) counter(cmd *rewrite.Command, last *lastCounter) *cmdCounter {
	if c := last.get(st, cmd.Name); c != nil {
		return c
	}
	c := st.lookupCounter(cmd)
	*last = lastCounter{st: st, name: cmd.Name, c: c}
	return c
}

func (st *tenantStats) lookupCounter(cmd *rewrite.Command) *cmdCounter {
	if c, ok := st.cmds.Load(cmd.Name); ok {
		return c.(*cmdCounter)
	}
	c, _ := st.cmds.LoadOrStore(cmd.Name, &cmdCounter{write: cmd.HasFlag(rewrite.FlagWrite)})
	return c.(*cmdCounter)
}

// noteCommand counts a command handed to handle: processed, or refused
// before it ran (unknown, wrong arity, denied).
func (st *tenantStats) noteCommand(cmd *rewrite.Command, refused bool, last *lastCounter) {
	if cmd == nil {
		return // Redis counts unknown commands nowhere but errorstats
	}
	c := st.counter(cmd, last)
	if refused {
		c.rejected.Add(1)
		return
	}
	c.calls.Add(1)
	st.commands.Add(1)
}

// noteReply counts the reply to a command named name: an error by its
// code, as Redis's errorstats do (the first word of the message, or ERR);
// a write that did something (neither an error nor a null) as a change.
func (st *tenantStats) noteReply(name string, reply []byte, last *lastCounter) {
	if len(reply) == 0 {
		return
	}
	c := last.get(st, name)
	if c == nil {
		if v, ok := st.cmds.Load(name); ok {
			c = v.(*cmdCounter)
		}
	}
	if reply[0] != '-' {
		if c != nil && c.write && !isNullReply(reply) {
			st.writeCmds.Add(1)
		}
		return
	}
	st.errorReplies.Add(1)
	if c != nil {
		c.errors.Add(1)
	}
	code := "ERR"
	if i := slices.Index(reply[:min(len(reply), 32)], ' '); i > 1 {
		code = string(reply[1:i])
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.errors == nil {
		st.errors = map[string]int64{}
	}
	if _, ok := st.errors[code]; ok || len(st.errors) < maxErrorCodes {
		st.errors[code]++
	}
}

// isNullReply reports a RESP2 or RESP3 null: a write that did nothing
// (SET NX that lost, a pop that timed out).
func isNullReply(r []byte) bool {
	return string(r) == "$-1\r\n" || string(r) == "*-1\r\n" || string(r) == "_\r\n"
}

type cmdStat struct {
	name                    string
	calls, rejected, failed int64
}

// commandStats lists the commands counted, by name; running is the
// command being answered, which Redis counts only once it is done.
func (st *tenantStats) commandStats(running string) []cmdStat {
	var out []cmdStat
	st.cmds.Range(func(k, v any) bool {
		c := v.(*cmdCounter)
		calls, rejected := c.calls.Load(), c.rejected.Load()
		if k == running {
			calls--
		}
		// An error reply of a refused command is its refusal.
		failed := max(c.errors.Load()-rejected, 0)
		if calls+rejected > 0 {
			out = append(out, cmdStat{k.(string), calls, rejected, failed})
		}
		return true
	})
	slices.SortFunc(out, func(a, b cmdStat) int { return strings.Compare(a.name, b.name) })
	return out
}

type infoCount struct {
	key string
	val int64
}

// errorStats lists the error codes counted, by code.
func (st *tenantStats) errorStats() []infoCount {
	st.mu.Lock()
	defer st.mu.Unlock()
	out := make([]infoCount, 0, len(st.errors))
	for k, v := range st.errors {
		out = append(out, infoCount{k, v})
	}
	slices.SortFunc(out, func(a, b infoCount) int { return strings.Compare(a.key, b.key) })
	return out
}

// changesSinceSave is the tenant's rdb_changes_since_last_save: its write
// commands that did something since upstream last saved (lastSave is
// upstream's rdb_last_save_time). Redis counts changed keys; keyfence
// counts such writes outside transactions and scripts, which is the same
// for most and never another tenant's.
func (st *tenantStats) changesSinceSave(lastSave string) int64 {
	st.mu.Lock()
	defer st.mu.Unlock()
	now := st.writeCmds.Load()
	switch {
	case st.saveSeen == "":
		st.saveSeen = lastSave // every write so far came after it, or so we assume
	case lastSave != st.saveSeen:
		st.saveSeen, st.writesBase = lastSave, now
	}
	return now - st.writesBase
}

// The instantaneous_* figures are means over the last statSamples samples
// taken every statSampleEvery, as Redis's serverCron takes them.
const (
	statSamples     = 16
	statSampleEvery = 100 * time.Millisecond
)

type statSample struct {
	at              time.Time
	ops, in, out    int64
	perSec          float64
	inKbps, outKbps float64
}

// sample records one sample; Serve calls it every statSampleEvery.
func (st *tenantStats) sample(now time.Time) {
	st.sampleMu.Lock()
	defer st.sampleMu.Unlock()
	prev := st.samples[(st.next+statSamples-1)%statSamples]
	cur := statSample{at: now, ops: st.commands.Load(), in: st.netIn.Load(), out: st.netOut.Load()}
	if dt := now.Sub(prev.at).Seconds(); !prev.at.IsZero() && dt > 0 {
		cur.perSec = float64(cur.ops-prev.ops) / dt
		cur.inKbps = float64(cur.in-prev.in) / dt / 1024
		cur.outKbps = float64(cur.out-prev.out) / dt / 1024
	}
	st.samples[st.next] = cur
	st.next = (st.next + 1) % statSamples
}

// instantaneous returns ops/s and input/output KiB/s, means of the samples.
func (st *tenantStats) instantaneous() (ops int64, in, out float64) {
	st.sampleMu.Lock()
	defer st.sampleMu.Unlock()
	var sum float64
	for _, sm := range st.samples {
		sum += sm.perSec
		in += sm.inKbps
		out += sm.outKbps
	}
	return int64(sum / statSamples), in / statSamples, out / statSamples
}

// sampleStats samples the tenant's figures until ctx is done.
func (s *Server) sampleStats(ctx context.Context) {
	t := time.NewTicker(statSampleEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.stats.sample(now)
		}
	}
}
