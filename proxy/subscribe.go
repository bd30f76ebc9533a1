package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyfence/keyfence/resp"
	"github.com/keyfence/keyfence/rewrite"
	"github.com/keyfence/keyfence/upstream"
)

// subscriberWriteTimeout cuts off a subscriber that does not read its
// messages, like Redis's client-output-buffer-limit for pubsub: keyfence
// never buffers messages for it, so memory stays bounded; while it is
// stalled, Redis's own limit applies to the upstream connection.
const subscriberWriteTimeout = 30 * time.Second

// subConn is the upstream connection of a session in subscriber mode. Its
// reader writes messages and confirmations straight to the client; replies
// that are not pub/sub traffic are matched to the requests in fifo.
type subConn struct {
	nc    net.Conn
	count atomic.Int64 // subscriptions left, from the last confirmation
	elems [][]byte     // the reader's scratch for rewrite.SplitPush

	mu   sync.Mutex
	fifo []subExpect

	// Pattern emulation (see patternCommand). The reader's view, which the
	// client's confirmation counts come from:
	patterns []string        // the client's patterns, in subscription order
	active   map[string]bool // upstream literal patterns subscribed now
	ops      []patternOp     // pattern confirmations due, in order
	// The session goroutine's view, which decides what to send upstream:
	sentPatterns []string
	sentRefs     map[string]int // literal pattern → client patterns using it

	synced chan struct{} // an internal PING came back, and what came before it is written
	done   chan struct{} // the reader stopped
	sent   bool          // requests sent since the last sync
	pong   bool          // the reader's: the internal PING's reply is in what it is about to write
}

// subExpect is one reply that is not a push: to a client's command, or to
// keyfence's own sync PING (internal).
type subExpect struct {
	internal bool
	kind     rewrite.ReplyKind
}

// subscribed handles a command while the session is in subscriber mode, or
// enters that mode for a SUBSCRIBE. It reports whether it took the command;
// if not, the command runs the ordinary way.
func (s *session) subscribed(ctx context.Context, cmd *rewrite.Command, args [][]byte) bool {
	isSub := isSubscribe(cmd.Name)
	if s.sub == nil {
		if !isSub || s.txn.inMulti() || s.pinned != nil {
			return false
		}
		s.flushAndWrite(ctx)
		if err := s.startSubscriber(ctx); err != nil {
			s.addLocalError(err.Error())
			return true
		}
	}
	if isSub || cmd.Name == "ping" {
		s.flushAndWrite(ctx)
		var req []byte
		var err error
		switch {
		case cmd.Name == "psubscribe" || cmd.Name == "punsubscribe":
			req = s.patternCommand(cmd.Name == "psubscribe", args[1:])
		case isSub:
			req, err = s.rw.AppendRequest(nil, cmd, args)
		default:
			req = resp.AppendCommand(nil, args...)
			s.sub.expect(subExpect{kind: rewrite.ReplyRaw})
		}
		if err == nil {
			s.srv.pinnedCommands.Add(1)
			err = s.sub.send(req)
		}
		if err != nil {
			s.addLocalError(upstreamErrorText(err))
		}
		return true
	}
	// Anything else is answered after every reply already due from the
	// subscribed connection, so the client sees replies in order.
	if err := s.syncSubscriber(ctx); err != nil {
		s.addLocalError(upstreamErrorText(err))
		return true
	}
	if s.sub.count.Load() == 0 || cmd.Name == "reset" {
		s.stopSubscriber()
		return false
	}
	if cmd.Name == "quit" {
		return false
	}
	if !s.resp3 {
		s.addLocalError("ERR Can't execute '" + cmd.Name + "': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context")
		return true
	}
	if cmd.Name == "hello" {
		s.addLocalError("ERR keyfence: HELLO cannot be used in subscriber mode")
		return true
	}
	return false // RESP3 allows ordinary commands; they use the shared path
}

// flushAndWrite sends the batch so far and writes every reply due to the
// client now, before the subscribed connection's reader writes more.
func (s *session) flushAndWrite(ctx context.Context) {
	s.flushBatch(ctx)
	_ = s.writeOut()
}

func (s *session) startSubscriber(ctx context.Context) error {
	if err := s.group.Reserve(); err != nil {
		return err
	}
	nc, err := upstream.Dial(ctx, &s.srv.cfg.Upstream, s.group.Key())
	if err != nil {
		s.group.Unreserve()
		return errors.New(upstreamErrorText(err))
	}
	s.sub = &subConn{nc: nc, synced: make(chan struct{}, 1), done: make(chan struct{}),
		active: map[string]bool{}, sentRefs: map[string]int{}}
	go s.readSubscribed(s.sub)
	return nil
}

// stopSubscriber leaves subscriber mode: the upstream connection goes, and
// with it every subscription.
func (s *session) stopSubscriber() {
	if s.sub == nil {
		return
	}
	s.sub.nc.Close()
	<-s.sub.done
	s.srv.countPatterns(s.sub.patterns, -1)
	for lit := range s.sub.active {
		s.srv.countLiteral(lit, -1)
	}
	s.group.Unreserve()
	s.sub = nil
}

func (c *subConn) expect(e subExpect) {
	c.mu.Lock()
	c.fifo = append(c.fifo, e)
	c.mu.Unlock()
}

func (c *subConn) send(req []byte) error {
	c.sent = true
	_, err := c.nc.Write(req)
	return err
}

// afterSubscriber holds back a reply the session gives itself while the
// subscribed connection still owes the client replies (an UNSUBSCRIBE
// answered from upstream, then a command with the wrong arity), so that the
// client sees them in the order it asked.
func (s *session) afterSubscriber(ctx context.Context) {
	if s.sub == nil {
		return
	}
	s.flushAndWrite(ctx)
	if err := s.syncSubscriber(ctx); err != nil {
		s.srv.log.Debug("subscribed connection not in sync", "client_id", s.id, "err", err)
	}
}

// syncSubscriber waits until every reply due on the subscribed connection
// has been written to the client, by sending a PING of keyfence's own.
func (s *session) syncSubscriber(ctx context.Context) error {
	c := s.sub
	if !c.sent {
		return nil
	}
	c.expect(subExpect{internal: true})
	if err := c.send(resp.AppendCommand(nil, []byte("PING"))); err != nil {
		return err
	}
	c.sent = false
	select {
	case <-c.synced:
		return nil
	case <-c.done:
		return errors.New("subscribed connection closed")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// readSubscribed forwards everything the subscribed connection receives.
func (s *session) readSubscribed(c *subConn) {
	defer close(c.done)
	rd := upstream.NewReplyReader(16 << 10)
	var out []byte
	for {
		out = out[:0]
		err := rd.Read(c.nc, func(reply []byte) error {
			out = s.subscribedReply(c, out, reply)
			return nil
		})
		if len(out) > 0 {
			s.wmu.Lock()
			_ = s.nc.SetWriteDeadline(time.Now().Add(subscriberWriteTimeout))
			n, werr := s.nc.Write(out)
			_ = s.nc.SetWriteDeadline(time.Time{})
			s.wmu.Unlock()
			s.srv.stats.writes.Add(1)
			s.srv.stats.netOut.Add(int64(n))
			if werr != nil {
				s.srv.log.Warn("subscriber too slow or gone: disconnecting it", "client", s.id, "err", werr)
				s.nc.Close()
				c.nc.Close()
				return
			}
		}
		if c.pong {
			// Only now: the replies read before the PONG are the client's
			// before anything the session writes after the sync.
			c.pong = false
			c.synced <- struct{}{}
		}
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				// The subscriptions are gone with the connection; the
				// client must reconnect and subscribe again, as with Redis.
				s.nc.Close()
			}
			return
		}
	}
}

// subscribedReply appends what the client sees for one upstream reply.
func (s *session) subscribedReply(c *subConn, out, reply []byte) []byte {
	kind, elems, ok := rewrite.SplitPush(reply, s.resp3, c.elems)
	c.elems = elems
	if ok {
		switch string(kind) {
		case "psubscribe", "punsubscribe", "pmessage":
			return s.patternReply(c, out, kind, elems)
		case "subscribe", "unsubscribe", "ssubscribe", "sunsubscribe":
			return s.channelConfirmation(c, out, kind, elems)
		}
	}
	stripped, info := s.rw.AppendPush(out, reply, s.resp3)
	switch info.Kind {
	case rewrite.PushMessage, rewrite.PushSubscribe, rewrite.PushUnsubscribe, rewrite.PushInvalidation:
		if info.Kind == rewrite.PushSubscribe || info.Kind == rewrite.PushUnsubscribe {
			c.count.Store(info.Count)
		}
		if info.Drop {
			return out
		}
		return stripped
	}
	c.mu.Lock()
	var e subExpect
	if len(c.fifo) > 0 {
		e = c.fifo[0]
		c.fifo = c.fifo[1:]
	}
	c.mu.Unlock()
	if e.internal {
		c.pong = true // synced once out is written (readSubscribed)
		return out
	}
	return s.rw.AppendReply(out, reply, e.kind)
}

// isSubscribe reports whether name is one of the subscription commands.
func isSubscribe(name string) bool {
	switch name {
	case "subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe", "sunsubscribe":
		return true
	}
	return false
}

// unsubscribeWithoutSubscriber answers an UNSUBSCRIBE sent before any
// SUBSCRIBE, as Redis does: one confirmation per name, or one with a null.
func (s *session) unsubscribeWithoutSubscriber(args [][]byte) {
	kind := strings.ToLower(string(args[0]))
	var out []byte
	push := func(ch []byte) {
		if s.resp3 {
			out = append(out, ">3\r\n"...)
		} else {
			out = resp.AppendArrayHeader(out, 3)
		}
		out = resp.AppendBulk(out, []byte(kind))
		if ch == nil {
			out = resp.AppendNull(out, s.resp3)
		} else {
			out = resp.AppendBulk(out, ch)
		}
		out = resp.AppendInt(out, 0)
	}
	if len(args) == 1 {
		push(nil)
	}
	for _, ch := range args[1:] {
		push(ch)
	}
	s.addLocal(out)
}

// patternOp is one pattern confirmation due from upstream and the client
// pattern it answers for (nil: PUNSUBSCRIBE with no pattern subscribed).
type patternOp struct {
	subscribe bool
	client    []byte
	literal   string // the upstream pattern sent; NoopPattern changes nothing
}

// patternCommand turns a client's PSUBSCRIBE/PUNSUBSCRIBE into upstream
// subscriptions to the literal patterns that cover the tenant (see
// rewrite.PatternLiteral): one upstream argument per client pattern, so
// each confirmation comes back in order and answers for one of them.
func (s *session) patternCommand(subscribe bool, patterns [][]byte) []byte {
	c := s.sub
	name := "PUNSUBSCRIBE"
	if subscribe {
		name = "PSUBSCRIBE"
	}
	if !subscribe && len(patterns) == 0 {
		for _, p := range c.sentPatterns {
			patterns = append(patterns, []byte(p))
		}
	}
	var ops []patternOp
	if len(patterns) == 0 {
		ops = append(ops, patternOp{literal: s.rw.NoopPattern()})
	}
	for _, p := range patterns {
		lit := s.rw.PatternLiteral(p)
		i := indexOf(c.sentPatterns, string(p))
		switch {
		case subscribe && i < 0:
			c.sentPatterns = append(c.sentPatterns, string(p))
			c.sentRefs[lit]++
		case !subscribe && i >= 0:
			c.sentPatterns = append(c.sentPatterns[:i], c.sentPatterns[i+1:]...)
			if c.sentRefs[lit]--; c.sentRefs[lit] > 0 {
				lit = s.rw.NoopPattern() // others still need the literal
			}
		case !subscribe:
			lit = s.rw.NoopPattern()
		}
		ops = append(ops, patternOp{subscribe: subscribe, client: append([]byte(nil), p...), literal: lit})
	}
	req := resp.AppendArrayHeader(nil, len(ops)+1)
	req = resp.AppendBulk(req, []byte(name))
	for _, op := range ops {
		req = resp.AppendBulk(req, []byte(op.literal))
	}
	c.mu.Lock()
	c.ops = append(c.ops, ops...)
	c.mu.Unlock()
	return req
}

func indexOf(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	return -1
}

// clientCount turns upstream's subscription count into the client's: the
// literal patterns upstream holds stand for the client's own patterns.
func (c *subConn) clientCount(upstream []byte) int64 {
	var n int64
	if v, ok := rewrite.BulkValue(append([]byte{'+'}, upstream[1:]...)); ok {
		fmt.Sscan(string(v), &n)
	}
	return n - int64(len(c.active)) + int64(len(c.patterns))
}

// channelConfirmation strips a (un)subscribe confirmation and gives the
// client's count.
func (s *session) channelConfirmation(c *subConn, out, kind []byte, elems [][]byte) []byte {
	if len(elems) != 3 {
		return out
	}
	var ch []byte
	if v, ok := rewrite.BulkValue(elems[1]); ok {
		if cc, ok := s.rw.ClientChannel(v); ok {
			ch = cc
		} else {
			ch = v
		}
	}
	c.mu.Lock()
	n := c.clientCount(elems[2])
	c.mu.Unlock()
	c.count.Store(n)
	return rewrite.AppendPushFrame(out, s.resp3, [][]byte{kind, ch}, n, true)
}

// patternReply answers a pattern confirmation for the client pattern it
// stands for, or fans a pmessage out to every client pattern it matches.
func (s *session) patternReply(c *subConn, out, kind []byte, elems [][]byte) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if string(kind) != "pmessage" {
		if len(c.ops) == 0 || len(elems) != 3 {
			return out
		}
		op := c.ops[0]
		c.ops = c.ops[1:]
		i := indexOf(c.patterns, string(op.client))
		switch {
		case op.subscribe && i < 0:
			c.patterns = append(c.patterns, string(op.client))
			s.srv.countPatterns([]string{string(op.client)}, 1)
		case !op.subscribe && i >= 0:
			c.patterns = append(c.patterns[:i], c.patterns[i+1:]...)
			s.srv.countPatterns([]string{string(op.client)}, -1)
		}
		switch {
		case op.subscribe && !c.active[op.literal]:
			c.active[op.literal] = true
			s.srv.countLiteral(op.literal, 1)
		case !op.subscribe && op.literal != s.rw.NoopPattern() && c.active[op.literal]:
			delete(c.active, op.literal)
			s.srv.countLiteral(op.literal, -1)
		}
		n := c.clientCount(elems[2])
		c.count.Store(n)
		return rewrite.AppendPushFrame(out, s.resp3, [][]byte{kind, op.client}, n, true)
	}
	if len(elems) != 4 {
		return out
	}
	lit, ok1 := rewrite.BulkValue(elems[1])
	ch, ok2 := rewrite.BulkValue(elems[2])
	payload, ok3 := rewrite.BulkValue(elems[3])
	if !ok1 || !ok2 || !ok3 {
		return out
	}
	clientCh, ok := s.rw.ClientChannel(ch)
	if !ok {
		return out // not the tenant's channel: never delivered
	}
	if string(lit) == s.rw.PatternLiteral([]byte("__keyevent@")) {
		key, own := s.rw.StripKey(payload)
		if !own {
			return out // another tenant's key
		}
		payload = key
	}
	for _, p := range c.patterns {
		if s.rw.PatternLiteral([]byte(p)) == string(lit) && rewrite.GlobMatch([]byte(p), clientCh) {
			out = rewrite.AppendPushFrame(out, s.resp3, [][]byte{kind, []byte(p), clientCh, payload}, 0, false)
		}
	}
	return out
}

// adjustCount adds delta to an integer reply (PUBLISH's count), never
// below zero; any other reply is returned as it is.
func adjustCount(reply []byte, delta int64) []byte {
	if delta == 0 || len(reply) < 4 || reply[0] != ':' {
		return reply
	}
	n, ok := resp.ParseInt(reply[1 : len(reply)-2])
	if !ok {
		return reply
	}
	return resp.AppendInt(nil, max(n+delta, 0))
}
