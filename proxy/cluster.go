package proxy

import (
	"bytes"
	"context"
	"errors"
	"strconv"

	"github.com/keyfence/keyfence/resp"
	"github.com/keyfence/keyfence/rewrite"
	"github.com/keyfence/keyfence/upstream"
)

// Redis Cluster: keyfence presents one plain Redis and routes each command
// to the master of its first key's slot. A client pipeline that spans
// masters is sent as one batch per master, in the client's order; MOVED and
// ASK (a command Redis did not run) are followed by the session's transport
// (upstream.Redirects: see useGroup and transport); multi-key commands whose
// keys lie in different slots get Redis's own CROSSSLOT error; commands over
// the whole keyspace (KEYS, SCAN, DBSIZE, FLUSHDB, RANDOMKEY) visit every
// master. The tenant prefix holds no '{', so a client's {hashtag} decides
// the slot as it would without keyfence.

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
		return upstream.KeySlot(key) // the prefix holds no '{': the tag decides
	}
	s.cacheScratch.req = append(append(s.cacheScratch.req[:0], s.rw.KeyPrefix()...), key...)
	return upstream.KeySlot(s.cacheScratch.req)
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
		node, err = cm.Master(ctx, slot)
	case s.group != nil && s.group.Key().Node != "":
		return nil // keyless: wherever the batch goes
	default:
		node, err = cm.AnyMaster(ctx)
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

// clusterRedirects wraps next, a connection to one node of the cluster, so
// that the MOVED and ASK replies of a batch sent on it are followed, on the
// shared connections (of protocol resp3) of the nodes they name.
func (s *Server) clusterRedirects(next upstream.RoundTripper, resp3 bool) upstream.Redirects {
	return upstream.Redirects{Next: next, Slots: s.cluster, Pool: s.pool, RESP3: resp3, Failed: redirectFailed}
}

// redirectFailed is the client's reply to a command whose redirect could
// not be followed: its fate is unknown, as for any lost upstream reply.
func redirectFailed(err error) []byte { return resp.AppendError(nil, upstreamErrorText(err)) }

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
			slot = upstream.KeySlot(s.cacheScratch.req)
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
