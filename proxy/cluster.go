package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/keyfence/keyfence/resp"
	"github.com/keyfence/keyfence/rewrite"
	"github.com/keyfence/keyfence/upstream"
)

// Redis Cluster: keyfence presents one plain Redis and routes each command
// to the master of its first key's slot. A client pipeline that spans
// masters is sent as one batch per master, in the client's order; MOVED and
// ASK (a command Redis did not run) are followed; multi-key commands whose
// keys lie in different slots get Redis's own CROSSSLOT error; commands over
// the whole keyspace (KEYS, SCAN, DBSIZE, FLUSHDB, RANDOMKEY) visit every
// master. The tenant prefix holds no '{', so a client's {hashtag} decides
// the slot as it would without keyfence.

const clusterSlots = 16384

// clusterMap is the slot → master table, refreshed from CLUSTER SLOTS.
type clusterMap struct {
	cfg   *upstream.Config
	mu    sync.RWMutex
	slots [clusterSlots]string
	nodes []string // masters, sorted, for fan-out
	last  time.Time
}

func newClusterMap(cfg *upstream.Config) *clusterMap { return &clusterMap{cfg: cfg} }

// master returns the master serving slot, refreshing the table once if it
// has none.
func (m *clusterMap) master(ctx context.Context, slot int) (string, error) {
	m.mu.RLock()
	addr := m.slots[slot]
	m.mu.RUnlock()
	if addr != "" {
		return addr, nil
	}
	if err := m.refresh(ctx); err != nil {
		return "", err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if addr = m.slots[slot]; addr == "" {
		return "", fmt.Errorf("cluster: no master serves slot %d", slot)
	}
	return addr, nil
}

// masters returns every master, for commands over the whole keyspace.
func (m *clusterMap) masters(ctx context.Context) ([]string, error) {
	m.mu.RLock()
	n := append([]string(nil), m.nodes...)
	m.mu.RUnlock()
	if len(n) > 0 {
		return n, nil
	}
	if err := m.refresh(ctx); err != nil {
		return nil, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	return append([]string(nil), m.nodes...), nil
}

// anyMaster is where keyless commands go.
func (m *clusterMap) anyMaster(ctx context.Context) (string, error) {
	n, err := m.masters(ctx)
	if err != nil {
		return "", err
	}
	if len(n) == 0 {
		return "", errors.New("cluster: no master known")
	}
	return n[rand.IntN(len(n))], nil
}

// refresh asks the known masters, then the seeds, for CLUSTER SLOTS. At most
// one refresh runs per 100 ms: a burst of MOVED replies costs one.
func (m *clusterMap) refresh(ctx context.Context) error {
	m.mu.Lock()
	if time.Since(m.last) < 100*time.Millisecond && len(m.nodes) > 0 {
		m.mu.Unlock()
		return nil
	}
	m.last = time.Now()
	candidates := append(append([]string(nil), m.nodes...), m.cfg.Cluster...)
	m.mu.Unlock()
	var errs []error
	for _, addr := range candidates {
		slots, err := m.fetchSlots(ctx, addr)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		m.mu.Lock()
		m.slots = slots
		seen := map[string]bool{}
		m.nodes = m.nodes[:0]
		for _, a := range slots {
			if a != "" && !seen[a] {
				seen[a] = true
				m.nodes = append(m.nodes, a)
			}
		}
		m.mu.Unlock()
		return nil
	}
	return fmt.Errorf("cluster: no node answered CLUSTER SLOTS: %w", errors.Join(errs...))
}

func (m *clusterMap) fetchSlots(ctx context.Context, addr string) ([clusterSlots]string, error) {
	var slots [clusterSlots]string
	nc, err := upstream.Dial(ctx, m.cfg, upstream.Key{Node: addr})
	if err != nil {
		return slots, err
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(m.cfg.DialTimeout + time.Second))
	if _, err := nc.Write(resp.AppendCommand(nil, []byte("CLUSTER"), []byte("SLOTS"))); err != nil {
		return slots, err
	}
	reply, err := resp.ReadReply(bufio.NewReader(nc))
	if err != nil {
		return slots, err
	}
	v, err := resp.Parse(reply)
	if err == nil {
		err = v.Err()
	}
	if err != nil {
		return slots, fmt.Errorf("CLUSTER SLOTS on %s: %w", addr, err)
	}
	for _, r := range v.Elems {
		if len(r.Elems) < 3 || len(r.Elems[2].Elems) < 2 {
			continue
		}
		host := string(r.Elems[2].Elems[0].Str)
		if host == "" {
			host, _, _ = net.SplitHostPort(addr) // Redis may omit its own address
		}
		master := net.JoinHostPort(host, strconv.FormatInt(r.Elems[2].Elems[1].Num, 10))
		for s := r.Elems[0].Num; s <= r.Elems[1].Num && s < clusterSlots; s++ {
			slots[s] = master
		}
	}
	return slots, nil
}

// keySlot is Redis Cluster's HASH_SLOT: CRC16 of the key, or of the first
// non-empty {…} in it.
func keySlot(key []byte) int {
	if i := bytes.IndexByte(key, '{'); i >= 0 {
		if j := bytes.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	return int(crc16(key)) & (clusterSlots - 1)
}

// crc16 is CRC-16/XMODEM, the variant Redis Cluster uses.
func crc16(b []byte) uint16 {
	var crc uint16
	for _, c := range b {
		crc ^= uint16(c) << 8
		for i := 0; i < 8; i++ {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// commandSlot returns the slot of the command's first key as upstream will
// see it (prefixed), or -1 for a command without keys.
func (s *session) commandSlot(cmd *rewrite.Command, args [][]byte) int {
	idx, err := s.rw.Keys(cmd, args, s.cacheScratch.keyIdx[:0])
	s.cacheScratch.keyIdx = idx
	if err != nil || len(idx) == 0 {
		return -1
	}
	key := args[idx[0]]
	if i := bytes.IndexByte(key, '{'); i >= 0 && bytes.IndexByte(key[i+1:], '}') > 0 {
		return keySlot(key) // the prefix holds no '{': the tag decides
	}
	s.cacheScratch.req = append(append(s.cacheScratch.req[:0], s.rw.KeyPrefix()...), key...)
	return keySlot(s.cacheScratch.req)
}

// route points the session's next commands at the master of slot (any
// master for -1), sending what the batch holds first when that changes the
// master, so that the client's order is kept.
func (s *session) route(ctx context.Context, slot int) error {
	cm := s.srv.cluster
	var node string
	var err error
	switch {
	case slot >= 0:
		node, err = cm.master(ctx, slot)
	case s.group != nil && s.group.Key().Node != "":
		return nil // keyless: wherever the batch goes
	default:
		node, err = cm.anyMaster(ctx)
	}
	if err != nil {
		return err
	}
	if s.group != nil && s.group.Key().Node == node {
		return nil
	}
	if s.pinned != nil {
		return nil // a transaction stays where it began (CROSSSLOT otherwise)
	}
	s.flushBatch(ctx)
	s.useGroup(upstream.Key{DB: 0, RESP3: s.resp3, Node: node})
	return nil
}

// redirect follows a MOVED or ASK reply: the command did not run, so it is
// sent again where the cluster says, and that reply is the client's.
func (s *session) redirect(ctx context.Context, reply, req []byte) []byte {
	moved := bytes.HasPrefix(reply, []byte("-MOVED "))
	ask := bytes.HasPrefix(reply, []byte("-ASK "))
	if !moved && !ask {
		return reply
	}
	fields := bytes.Fields(bytes.TrimSpace(reply[1:]))
	if len(fields) != 3 {
		return reply
	}
	addr := string(fields[2])
	if moved {
		s.srv.cluster.mu.Lock()
		s.srv.cluster.last = time.Time{} // let the next refresh run at once
		s.srv.cluster.mu.Unlock()
		go func() { _ = s.srv.cluster.refresh(context.WithoutCancel(ctx)) }()
	}
	conn := s.srv.pool.Group(upstream.Key{RESP3: s.resp3, Node: addr}).Shared()
	b := upstream.NewBatch()
	if ask {
		// ASKING and the command go out back to back in one write, so no
		// other client's command can come between them.
		out := resp.AppendCommand(nil, []byte("ASKING"))
		out = append(out, req...)
		if err := conn.RoundTrip(ctx, b, out, 2); err != nil {
			return resp.AppendError(nil, upstreamErrorText(err))
		}
		return b.Reply(1)
	}
	if err := conn.RoundTrip(ctx, b, req, 1); err != nil {
		return resp.AppendError(nil, upstreamErrorText(err))
	}
	return b.Reply(0)
}

// clusterCommand routes a command in cluster mode, and runs the commands
// over the whole keyspace on every master. It reports whether it answered
// the command itself.
func (s *session) clusterCommand(ctx context.Context, cmd *rewrite.Command, args [][]byte) bool {
	switch cmd.Name {
	case "select":
		if string(args[1]) != "0" {
			s.addLocalError("ERR SELECT is not allowed in cluster mode")
			return true
		}
		s.addStatus("OK")
		return true
	}
	// Where a command goes is the table's decision (Command.Route, from
	// rewrite/internal/gen/policy.go); RouteAnyMaster leaves slot -1.
	slot := -1
	switch cmd.Route {
	case rewrite.RouteAllMasters: // SCAN: its cursor names the master
		s.flushBatch(ctx)
		s.clusterScan(ctx, cmd, args)
		return true
	case rewrite.RouteShardChannel:
		// Sharded pub/sub lives on the master of the channel's slot.
		if len(args) > 1 {
			s.cacheScratch.req = append(append(s.cacheScratch.req[:0], s.rw.KeyPrefix()...), args[1]...)
			slot = keySlot(s.cacheScratch.req)
		}
	case rewrite.RoutePubSubNode:
		// Redis propagates PUBLISH to every node but counts receivers on
		// its own node only: one node for all of the tenant's pub/sub
		// keeps PUBLISH's count and PUBSUB's answers whole.
		slot = 0
	case rewrite.RouteKeySlot:
		slot = s.commandSlot(cmd, args)
	}
	if err := s.route(ctx, slot); err != nil {
		s.addLocalError(upstreamErrorText(err))
		return true
	}
	return false
}

// startDeferredMulti sends the MULTI a cluster transaction put off, to the
// master of its first command's key.
func (s *session) startDeferredMulti(ctx context.Context, cmd *rewrite.Command, args [][]byte) error {
	if err := s.route(ctx, s.commandSlot(cmd, args)); err != nil {
		return err
	}
	if err := s.pin(); err != nil {
		return err
	}
	s.txn = s.txn.sent()
	s.req = resp.AppendCommand(s.req, []byte("MULTI"))
	s.nreq++
	s.slots = append(s.slots, slot{name: "multi", upstream: true, hidden: true})
	return nil
}

// clusterScan walks the masters one after the other: the low byte of the
// client's cursor names the master, the rest is that master's cursor.
func (s *session) clusterScan(ctx context.Context, cmd *rewrite.Command, args [][]byte) {
	cursor, err := strconv.ParseUint(string(args[1]), 10, 64)
	if err != nil {
		s.addLocalError("ERR invalid cursor")
		return
	}
	conns, err := s.keyspaceConns(ctx, 0)
	if err != nil {
		s.addLocalError(upstreamErrorText(err))
		return
	}
	node := int(cursor & 0xff)
	if node >= len(conns) {
		s.addLocal([]byte("*2\r\n$1\r\n0\r\n*0\r\n")) // past the last master
		return
	}
	upArgs := append([][]byte{args[0], []byte(strconv.FormatUint(cursor>>8, 10))}, args[2:]...)
	req, err := s.rw.AppendRequest(nil, cmd, upArgs)
	if err != nil {
		s.addLocalError(err.Error())
		return
	}
	b := upstream.NewBatch()
	if err := conns[node].RoundTrip(ctx, b, req, 1); err != nil {
		s.addLocalError(upstreamErrorText(err))
		return
	}
	v, err := resp.Parse(b.Reply(0))
	if err == nil {
		err = v.Err()
	}
	if err != nil || len(v.Elems) != 2 {
		s.addLocalError(upstreamErrorText(errors.Join(err, resp.ErrBadValue)))
		return
	}
	next, _ := strconv.ParseUint(string(v.Elems[0].Str), 10, 64)
	var out uint64
	switch {
	case next != 0:
		out = next<<8 | uint64(node)
	case node+1 < len(conns):
		out = uint64(node + 1)
	}
	reply := resp.AppendArrayHeader(nil, 2)
	reply = resp.AppendBulk(reply, []byte(strconv.FormatUint(out, 10)))
	reply = resp.AppendArrayHeader(reply, len(v.Elems[1].Elems))
	for _, k := range v.Elems[1].Elems {
		key, _ := s.rw.StripKey(k.Str)
		reply = resp.AppendBulk(reply, key)
	}
	s.addLocal(reply)
}
