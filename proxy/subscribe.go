package proxy

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyfence/keyfence/rewrite"
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

	mu   sync.Mutex
	fifo []subExpect

	synced chan struct{} // an internal PING came back
	done   chan struct{} // the reader stopped
	sent   bool          // requests sent since the last sync
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
		if !isSub || s.inMulti || s.pinned != nil {
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
		if isSub {
			req, err = s.rw.AppendRequest(nil, cmd, args)
		} else {
			req = appendArgs(nil, args...)
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
	if len(s.out) > 0 {
		s.wmu.Lock()
		_, err := s.nc.Write(s.out)
		s.wmu.Unlock()
		s.out = s.out[:0]
		if err != nil {
			s.quit = true
		}
	}
}

func (s *session) startSubscriber(ctx context.Context) error {
	if err := s.group.reservePinned(); err != nil {
		return err
	}
	nc, err := dial(ctx, &s.srv.cfg.Upstream, s.group.key)
	if err != nil {
		s.group.releasePinned()
		return errors.New(upstreamErrorText(err))
	}
	s.sub = &subConn{nc: nc, synced: make(chan struct{}, 1), done: make(chan struct{})}
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
	s.group.releasePinned()
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

// syncSubscriber waits until every reply due on the subscribed connection
// has been written to the client, by sending a PING of keyfence's own.
func (s *session) syncSubscriber(ctx context.Context) error {
	c := s.sub
	if !c.sent {
		return nil
	}
	c.expect(subExpect{internal: true})
	if err := c.send(appendArgs(nil, []byte("PING"))); err != nil {
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
	buf := make([]byte, 0, 16<<10)
	var out []byte
	for {
		if len(buf) == cap(buf) {
			nb := make([]byte, len(buf), 2*cap(buf))
			copy(nb, buf)
			buf = nb
		}
		m, err := c.nc.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		pos := 0
		out = out[:0]
		for pos < len(buf) {
			n, perr := rewrite.ReplyLen(buf[pos:])
			if perr != nil {
				err = perr
				break
			}
			if n == 0 {
				break
			}
			out = s.subscribedReply(c, out, buf[pos:pos+n])
			pos += n
		}
		rest := copy(buf, buf[pos:])
		buf = buf[:rest]
		if len(out) > 0 {
			s.wmu.Lock()
			_ = s.nc.SetWriteDeadline(time.Now().Add(subscriberWriteTimeout))
			_, werr := s.nc.Write(out)
			_ = s.nc.SetWriteDeadline(time.Time{})
			s.wmu.Unlock()
			if werr != nil {
				s.srv.log.Warn("subscriber too slow or gone: disconnecting it", "client", s.id, "err", werr)
				s.nc.Close()
				c.nc.Close()
				return
			}
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
		c.synced <- struct{}{}
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
			out = rewrite.AppendArrayHeader(out, 3)
		}
		out = rewrite.AppendBulk(out, []byte(kind))
		if ch == nil {
			out = rewrite.AppendNull(out, s.resp3)
		} else {
			out = rewrite.AppendBulk(out, ch)
		}
		out = rewrite.AppendInt(out, 0)
	}
	if len(args) == 1 {
		push(nil)
	}
	for _, ch := range args[1:] {
		push(ch)
	}
	s.addLocal(out)
}
