package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/keyfence/keyfence/resp"
	"github.com/keyfence/keyfence/rewrite"
	"github.com/keyfence/keyfence/upstream"
)

// scanBatch returns the COUNT of every SCAN step of the emulations: Redis walks
// about that many entries of the whole database per step, whoever's keys
// they are (and at most ten times as many empty buckets), so one step costs
// the same however many keys other tenants hold. KEYS, DBSIZE, RANDOMKEY and
// FLUSHDB only ever send such steps (and UNLINK/PTTL of the tenant's own
// keys found by them), never a command that walks the whole keyspace.
func scanBatch() []byte { return strconv.AppendInt(nil, rewrite.MaxScanCount, 10) }

// call runs one command on conn outside the client's batch and decodes the
// reply. Upstream error replies are returned as errors.
func (s *session) call(ctx context.Context, conn *upstream.Conn, args ...[]byte) (resp.Value, error) {
	v, err := conn.Call(ctx, args...)
	if err != nil {
		return resp.Value{}, err
	}
	return v, v.Err()
}

// scanTenant walks the tenant's keys in conn's database, calling fn with
// each SCAN step's keys (still prefixed). SCAN may return a key twice while
// Redis rehashes; the callers accept that, as Redis's own SCAN users do.
func (s *session) scanTenant(ctx context.Context, conn *upstream.Conn, fn func(keys []resp.Value) error) error {
	return s.scanTenantMatch(ctx, conn, []byte("*"), fn)
}

// scanTenantMatch is scanTenant over the tenant's keys that match the
// client's glob pattern. Redis's SCAN MATCH and KEYS use the same matcher,
// and the prefix is glob-escaped, so the two select the same keys.
func (s *session) scanTenantMatch(ctx context.Context, conn *upstream.Conn, pattern []byte, fn func(keys []resp.Value) error) error {
	match := append(append([]byte(nil), s.rw.GlobPrefix()...), pattern...)
	cursor := []byte("0")
	for {
		v, err := s.call(ctx, conn, []byte("SCAN"), cursor, []byte("MATCH"), match, []byte("COUNT"), scanBatch())
		if err != nil {
			return err
		}
		if len(v.Elems) != 2 {
			return resp.ErrBadValue
		}
		if len(v.Elems[1].Elems) > 0 {
			if err := fn(v.Elems[1].Elems); err != nil {
				return err
			}
		}
		cursor = append(cursor[:0], v.Elems[0].Str...)
		if string(cursor) == "0" {
			return nil
		}
	}
}

// keyspaceConns returns a connection to each place the tenant's keys of
// db live: the session's own upstream, or every master of a cluster.
func (s *session) keyspaceConns(ctx context.Context, db int) ([]*upstream.Conn, error) {
	if s.srv.cluster == nil {
		if db == s.db {
			return []*upstream.Conn{s.conn()}, nil
		}
		return []*upstream.Conn{s.srv.pool.Group(upstream.Key{DB: db}).Shared()}, nil
	}
	masters, err := s.srv.cluster.Masters(ctx)
	if err != nil {
		return nil, err
	}
	conns := make([]*upstream.Conn, len(masters))
	for i, m := range masters {
		conns[i] = s.srv.pool.Group(upstream.Key{RESP3: false, Node: m}).Shared()
	}
	return conns, nil
}

// keys answers KEYS pattern from SCAN steps over every place the tenant's
// keys live, each key once (SCAN may repeat a key while Redis rehashes; KEYS
// never does). Like Redis, the whole reply is built before it is sent: its
// size is bounded by the tenant's own keys only.
func (s *session) keys(ctx context.Context, pattern []byte) {
	conns, err := s.keyspaceConns(ctx, s.db)
	seen := map[string]struct{}{}
	var found [][]byte
	for _, conn := range conns {
		if err != nil {
			break
		}
		err = s.scanTenantMatch(ctx, conn, pattern, func(keys []resp.Value) error {
			for _, k := range keys {
				if _, dup := seen[string(k.Str)]; dup {
					continue
				}
				seen[string(k.Str)] = struct{}{}
				found = append(found, k.Str)
			}
			return nil
		})
	}
	if err != nil {
		s.addLocalError(upstreamErrorText(err))
		return
	}
	out := resp.AppendArrayHeader(nil, len(found))
	for _, k := range found {
		key, _ := s.rw.StripKey(k)
		out = resp.AppendBulk(out, key)
	}
	s.addLocal(out)
}

// dbsize counts the tenant's keys in the current database.
func (s *session) dbsize(ctx context.Context) {
	n := 0
	conns, err := s.keyspaceConns(ctx, s.db)
	for _, conn := range conns {
		if err != nil {
			break
		}
		err = s.scanTenant(ctx, conn, func(keys []resp.Value) error {
			n += len(keys)
			return nil
		})
	}
	if err != nil {
		s.addLocalError(upstreamErrorText(err))
		return
	}
	s.addLocal(resp.AppendInt(nil, int64(n)))
}

// flush deletes the tenant's keys in the given databases with SCAN and
// UNLINK in batches: other tenants' keys are never touched. ASYNC and SYNC
// are accepted; UNLINK frees memory in the background either way.
func (s *session) flush(ctx context.Context, dbs []int, opts [][]byte) {
	if len(opts) > 1 || (len(opts) == 1 && !strings.EqualFold(string(opts[0]), "async") && !strings.EqualFold(string(opts[0]), "sync")) {
		s.addLocalError("ERR syntax error")
		return
	}
	for _, db := range dbs {
		conns, err := s.keyspaceConns(ctx, db)
		for _, conn := range conns {
			if err != nil {
				break
			}
			err = s.scanTenant(ctx, conn, func(keys []resp.Value) error {
				// One UNLINK per key, pipelined: keys of one SCAN step may
				// lie in different cluster slots.
				var req []byte
				for _, k := range keys {
					req = resp.AppendCommand(req, []byte("UNLINK"), k.Str)
				}
				return conn.RoundTrip(ctx, upstream.NewBatch(), req, len(keys))
			})
		}
		if err != nil {
			s.addLocalError(upstreamErrorText(err))
			return
		}
	}
	if s.srv.res != nil {
		s.srv.res.cache.InvalidateAll() // nil-safe: no cache, nothing to drop
	}
	s.addStatus("OK")
}

// flushAll flushes the tenant's keys in every database that holds keys.
func (s *session) flushAll(ctx context.Context, opts [][]byte) {
	if s.srv.cluster != nil {
		s.flush(ctx, []int{0}, opts) // a cluster has database 0 only
		return
	}
	v, err := s.call(ctx, s.shared, []byte("INFO"), []byte("keyspace"))
	if err != nil {
		s.addLocalError(upstreamErrorText(err))
		return
	}
	dbs := keyspaceDBs(v.Str)
	s.flush(ctx, dbs, opts)
}

// keyspaceDBs lists the databases named in INFO keyspace ("db3:keys=…").
func keyspaceDBs(info []byte) []int {
	var dbs []int
	sc := bufio.NewScanner(bytes.NewReader(info))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "db") {
			continue
		}
		name, _, ok := strings.Cut(line[2:], ":")
		if n, err := strconv.Atoi(name); ok && err == nil {
			dbs = append(dbs, n)
		}
	}
	return dbs
}

// randomKey returns one of the tenant's keys at random, or null. It starts
// SCAN at a random cursor and takes a random key of the first step that has
// any, going round once more from 0 when the tail of the table is empty.
func (s *session) randomKey(ctx context.Context) {
	conns, err := s.keyspaceConns(ctx, s.db)
	if err != nil {
		s.addLocalError(upstreamErrorText(err))
		return
	}
	start := randomPick(len(conns))
	for i := range conns {
		if key, err := s.randomKeyOn(ctx, conns[(start+i)%len(conns)]); err != nil {
			s.addLocalError(upstreamErrorText(err))
			return
		} else if key != nil {
			s.addLocal(resp.AppendBulk(nil, key))
			return
		}
	}
	s.addLocal(resp.AppendNull(nil, s.resp3))
}

// randomKeyOn returns a random key of the tenant on conn, or nil.
func (s *session) randomKeyOn(ctx context.Context, conn *upstream.Conn) ([]byte, error) {
	match := append(append([]byte(nil), s.rw.GlobPrefix()...), '*')
	cursor := []byte(strconv.FormatUint(uint64(randomPick(1<<30)), 10))
	for pass := 0; pass < 2; pass++ {
		for {
			v, err := s.call(ctx, conn, []byte("SCAN"), cursor, []byte("MATCH"), match, []byte("COUNT"), scanBatch())
			if err != nil {
				return nil, err
			}
			if len(v.Elems) != 2 {
				return nil, resp.ErrBadValue
			}
			if keys := v.Elems[1].Elems; len(keys) > 0 {
				k, _ := s.rw.StripKey(keys[randomPick(len(keys))].Str)
				return k, nil
			}
			cursor = append(cursor[:0], v.Elems[0].Str...)
			if string(cursor) == "0" {
				break
			}
		}
	}
	return nil, nil
}

// keyspaceLine counts the tenant's keys in db, their expiries and mean
// TTL, as Redis's INFO keyspace line does; "" when it has none there.
func (s *session) keyspaceLine(ctx context.Context, db int) (string, error) {
	conns, err := s.keyspaceConns(ctx, db)
	keys, expires, ttlSum := 0, 0, int64(0)
	for _, conn := range conns {
		if err != nil {
			break
		}
		err = s.keyspaceCount(ctx, conn, &keys, &expires, &ttlSum)
	}
	if err != nil || keys == 0 {
		return "", err
	}
	avg := int64(0)
	if expires > 0 {
		avg = ttlSum / int64(expires)
	}
	return fmt.Sprintf("db%d:keys=%d,expires=%d,avg_ttl=%d", db, keys, expires, avg), nil
}

// keyspaceCount adds up the tenant's keys on conn and their TTLs.
func (s *session) keyspaceCount(ctx context.Context, conn *upstream.Conn, keys, expires *int, ttlSum *int64) error {
	return s.scanTenant(ctx, conn, func(batch []resp.Value) error {
		*keys += len(batch)
		req := make([]byte, 0, 32*len(batch))
		for _, k := range batch {
			req = resp.AppendCommand(req, []byte("PTTL"), k.Str)
		}
		b := upstream.NewBatch()
		if err := conn.RoundTrip(ctx, b, req, len(batch)); err != nil {
			return err
		}
		for i := range batch {
			v, err := resp.Parse(b.Reply(i))
			if err == nil && v.Type == ':' && v.Num > 0 {
				*expires++
				*ttlSum += v.Num
			}
		}
		return nil
	})
}

// command answers COMMAND and its subcommands over what keyfence allows:
// denied commands do not exist for a tenant.
func (s *session) command(ctx context.Context, cmd *rewrite.Command, args [][]byte) {
	allowed := rewrite.AllowedCommands()
	switch cmd.Name {
	case "command":
		s.forwardRaw(append([][]byte{[]byte("COMMAND"), []byte("INFO")}, toArgs(allowed)...), rewrite.ReplyRaw)
	case "command|count":
		s.addLocal(resp.AppendInt(nil, int64(len(allowed))))
	case "command|list":
		if len(args) > 2 {
			s.flushBatch(ctx)
			v, err := s.call(ctx, s.conn(), args...)
			if err != nil {
				s.addLocalError(upstreamErrorText(err))
				return
			}
			var names []string
			for _, e := range v.Elems {
				if c := rewrite.Lookup([][]byte{e.Str}); c != nil && c.Policy != rewrite.PolicyDenied {
					names = append(names, string(e.Str))
				}
			}
			allowed = names
		}
		out := resp.AppendArrayHeader(nil, len(allowed))
		for _, n := range allowed {
			out = resp.AppendBulk(out, []byte(n))
		}
		s.addLocal(out)
	case "command|info", "command|docs":
		names := allowed
		if len(args) > 2 {
			names = names[:0:0]
			for _, a := range args[2:] {
				if c := rewrite.Lookup([][]byte{a}); c != nil && c.Policy != rewrite.PolicyDenied {
					names = append(names, string(a))
				} else {
					// Redis answers null for a name it does not know;
					// this one is never a Redis command.
					names = append(names, "keyfence-denied-command")
				}
			}
		}
		sub := "INFO"
		if cmd.Name == "command|docs" {
			sub = "DOCS"
		}
		s.forwardRaw(append([][]byte{[]byte("COMMAND"), []byte(sub)}, toArgs(names)...), rewrite.ReplyRaw)
	case "command|getkeys", "command|getkeysandflags":
		s.getKeys(cmd, args)
	default: // command|help
		s.forwardRaw(args, rewrite.ReplyRaw)
	}
}

// getKeys answers COMMAND GETKEYS with the keys keyfence itself finds (and
// would prefix), in the client's own names.
func (s *session) getKeys(cmd *rewrite.Command, args [][]byte) {
	inner := args[2:]
	c := rewrite.Lookup(inner)
	switch {
	case c == nil || (c.IsContainer() && len(inner) >= 2):
		s.addLocalError("ERR Invalid command specified")
		return
	case !c.ArityOK(len(inner)):
		s.addLocalError("ERR Invalid number of arguments specified for command")
		return
	case c.Policy == rewrite.PolicyDenied:
		s.addLocalError(deniedText(c))
		return
	case c.Policy != rewrite.PolicyKeyed:
		s.forwardRaw(args, rewrite.ReplyRaw)
		return
	}
	idx, err := s.rw.Keys(c, inner, nil)
	if err != nil {
		s.addLocalError(err.Error())
		return
	}
	if len(idx) == 0 {
		s.addLocalError("ERR The command has no key arguments")
		return
	}
	if cmd.Name == "command|getkeysandflags" {
		s.forwardRaw(args, rewrite.ReplyRaw)
		return
	}
	out := resp.AppendArrayHeader(nil, len(idx))
	for _, i := range idx {
		out = resp.AppendBulk(out, inner[i])
	}
	s.addLocal(out)
}

func toArgs(names []string) [][]byte {
	out := make([][]byte, len(names))
	for i, n := range names {
		out[i] = []byte(n)
	}
	return out
}
