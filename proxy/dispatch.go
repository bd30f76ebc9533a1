package proxy

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/keyfence/keyfence/resp"
	"github.com/keyfence/keyfence/rewrite"
	"github.com/keyfence/keyfence/upstream"
)

// handle decides what happens to one command: refused, answered here,
// forwarded on the shared connection, or run on a pinned one.
// cmd is args's table entry (rewrite.Lookup), nil for an unknown command.
func (s *session) handle(ctx context.Context, cmd *rewrite.Command, args [][]byte) {
	// CLIENT REPLY, as Redis's flags work: OFF drops every reply; SKIP drops
	// the next command's (the one after CLIENT REPLY SKIP itself).
	skipping := s.replyMode == replySkip
	s.mute = s.replyMode != replyOn
	s.dispatch(ctx, cmd, args)
	switch {
	case s.replyMode == replySkipNext:
		s.replyMode = replySkip
	case skipping && s.replyMode == replySkip:
		s.replyMode = replyOn
	}
}

// dispatch is handle's decision for one command.
func (s *session) dispatch(ctx context.Context, cmd *rewrite.Command, args [][]byte) {
	s.noteCommand(cmd, args)
	s.curName, s.curCmd, s.reqMark = "unknown", cmd, len(s.req)
	if cmd != nil {
		s.curName = cmd.Name
	}
	if errMsg := s.check(cmd, args); errMsg != "" {
		s.srv.stats.noteCommand(cmd, true, &s.lastCounter)
		if s.txn.inMulti() {
			s.txn = s.txn.abort() // Redis: a queueing error aborts EXEC
		}
		s.afterSubscriber(ctx)
		s.addLocalError(errMsg)
		return
	}
	if !s.authed && !cmd.HasFlag(rewrite.FlagNoAuth) {
		s.srv.stats.noteCommand(cmd, true, &s.lastCounter)
		s.addLocalError("NOAUTH Authentication required.")
		return
	}
	if q := s.srv.quota; q != nil {
		if lim := q.limiter.Load(); lim != nil && !s.withinQuota(ctx, lim, q.wait) {
			s.srv.stats.noteCommand(cmd, true, &s.lastCounter)
			if s.txn.inMulti() {
				s.txn = s.txn.abort()
			}
			s.addLocalError(errOverQuota)
			return
		}
	}
	s.srv.stats.noteCommand(cmd, cmd.Policy == rewrite.PolicyDenied, &s.lastCounter)
	if s.txn.inMulti() {
		s.queueInMulti(ctx, cmd, args)
		return
	}
	if s.srv.cluster != nil && s.sub == nil && s.clusterCommand(ctx, cmd, args) {
		return
	}
	if (s.sub != nil || isSubscribe(cmd.Name)) && s.subscribed(ctx, cmd, args) {
		return
	}
	switch cmd.Policy {
	case rewrite.PolicyDenied:
		s.addLocalError(deniedText(cmd))
	case rewrite.PolicyEmulated:
		s.emulate(ctx, cmd, args)
	default:
		s.forwardRewritten(ctx, cmd, args)
	}
}

// check returns the error Redis itself would give for an unknown command,
// unknown subcommand or wrong arity, or "" when the command may proceed.
func (s *session) check(cmd *rewrite.Command, args [][]byte) string {
	if cmd == nil {
		return unknownCommandText(args)
	}
	if cmd.IsContainer() && len(args) >= 2 {
		return "ERR unknown subcommand '" + clip(args[1]) + "'. Try " + strings.ToUpper(cmd.Name) + " HELP."
	}
	if !cmd.ArityOK(len(args)) {
		return "ERR wrong number of arguments for '" + cmd.Name + "' command"
	}
	return ""
}

// unknownCommandText mirrors Redis's message: the arguments are quoted
// while their list stays under 128 bytes, the last one clipped to fit.
func unknownCommandText(args [][]byte) string {
	var list strings.Builder
	for _, a := range args[1:] {
		room := 128 - list.Len()
		if room <= 0 {
			break
		}
		if len(a) > room {
			a = a[:room]
		}
		list.WriteString("'" + sanitize(string(a)) + "' ")
	}
	return "ERR unknown command '" + clip(args[0]) + "', with args beginning with: " + list.String()
}

// clip shortens an echoed argument and keeps it on one line.
func clip(a []byte) string {
	if len(a) > 128 {
		a = a[:128]
	}
	return sanitize(string(a))
}

// deniedText is the stable wording of a refusal by policy.
func deniedText(cmd *rewrite.Command) string {
	why := cmd.Why
	if why == "" {
		why = "it reaches beyond the tenant's namespace"
	}
	return "ERR command '" + cmd.Name + "' is not allowed through keyfence: " + why
}

// forwardRewritten rewrites a keyed, pattern or channel command into the
// tenant's namespace and adds it to the batch, or runs it on a pinned
// connection when it would hold a shared one hostage.
func (s *session) forwardRewritten(ctx context.Context, cmd *rewrite.Command, args [][]byte) {
	if msg := s.payloadRefusal(ctx, cmd); msg != "" {
		s.addLocalError(msg)
		return
	}
	switch {
	case isSubscribe(cmd.Name):
		// Not subscribed (subscribed() took the rest): only UNSUBSCRIBE
		// variants get here, answered as Redis answers them.
		s.unsubscribeWithoutSubscriber(args)
		return
	case blocks(cmd, args):
		s.runBlocking(ctx, cmd, args)
		return
	case needsSortEmulation(cmd, args):
		s.flushBatch(ctx)
		s.emulateSort(ctx, cmd, args)
		return
	case cmd.Name == "watch":
		s.flushBatch(ctx)
		if err := s.pin(); err != nil {
			s.addLocalError(err.Error())
			return
		}
	}
	if s.appendRewritten(cmd, args, cmd.Reply) && cmd.Name == "publish" {
		s.slots[len(s.slots)-1].adjust = s.srv.publishDelta(s.rw, args[1])
	}
}

// appendRewritten adds the command, rewritten, to the batch, its reply to be
// stripped by kind. A command the rewriter refuses gets its error instead,
// and false says so.
func (s *session) appendRewritten(cmd *rewrite.Command, args [][]byte, kind rewrite.ReplyKind) bool {
	mark := len(s.req)
	var err error
	s.req, err = s.rw.AppendRequest(s.req, cmd, args)
	if err != nil {
		s.req = s.req[:mark]
		s.addLocalError(err.Error())
		return false
	}
	s.forward(kind)
	return true
}

// blocks reports whether the command may wait on the server (the table's
// FlagBlocking): those go to a pinned connection so they never stall the
// clients sharing one. XREAD and XREADGROUP wait only with a BLOCK option.
func blocks(cmd *rewrite.Command, args [][]byte) bool {
	if !cmd.HasFlag(rewrite.FlagBlocking) {
		return false
	}
	switch cmd.Name {
	case "xread", "xreadgroup":
		for _, a := range args[1:] {
			if strings.EqualFold(string(a), "streams") {
				return false
			}
			if strings.EqualFold(string(a), "block") {
				return true
			}
		}
		return false
	}
	return true
}

// runBlocking runs one blocking command on a connection of its own, while
// watching the client: a client that goes away releases the connection at
// once instead of leaving Redis blocked for it.
func (s *session) runBlocking(ctx context.Context, cmd *rewrite.Command, args [][]byte) {
	s.flushBatch(ctx)
	if s.pinned != nil { // WATCH is active: stay on the pinned connection
		s.appendRewritten(cmd, args, cmd.Reply)
		return
	}
	c, err := s.group.Pin()
	if err != nil {
		s.addLocalError(err.Error())
		return
	}
	if !s.appendRewritten(cmd, args, cmd.Reply) {
		s.group.Unpin(c, true)
		return
	}
	s.pinned = c
	stopWatching := s.watchClient(c)
	outMark := len(s.out)
	s.srv.stats.blocked.Add(1) // INFO's blocked_clients
	s.tel.Blocking()           // waits by design: not in the latency histogram
	err = s.flushBatch(ctx)
	s.srv.stats.blocked.Add(-1)
	s.pinned = nil
	clean := !stopWatching()
	s.group.Unpin(c, clean)
	if !clean {
		if err != nil {
			// The client went away while the command waited, and closing
			// the upstream connection for it is what failed the command.
			// Redis frees such a client without a reply: send no error
			// (a reply that did arrive, a popped element, stays).
			s.out = s.out[:min(outMark, len(s.out))]
		}
		s.quit = true
	}
}

// queueInMulti queues a command inside MULTI (see multi.go): forwarded
// ones on the pinned connection, emulated ones for EXEC to run in place.
func (s *session) queueInMulti(ctx context.Context, cmd *rewrite.Command, args [][]byte) {
	if s.txn.deferred() && !s.tx.emulated && cmd.Policy != rewrite.PolicyDenied && !inMultiControl(cmd.Name) &&
		(cmd.Policy != rewrite.PolicyEmulated || forwardedInMulti(cmd.Name)) {
		if err := s.startDeferredMulti(ctx, cmd, args); err != nil {
			s.txn = s.txn.abort()
			s.addLocalError(upstreamErrorText(err))
			return
		}
	}
	switch cmd.Name {
	case "exec":
		s.exec(ctx)
		return
	case "discard":
		if s.txn.deferred() {
			s.txn = txNone
			s.resetTx()
			s.addStatus("OK")
			return
		}
		s.forwardRaw(args, rewrite.ReplyRaw)
		s.flushBatch(ctx)
		s.txn = txNone
		s.unpin(true)
		return
	case "multi":
		s.addLocalError("ERR MULTI calls can not be nested")
		return
	case "auth", "hello":
		if s.srv.gw != nil {
			// Run in EXEC, it would switch tenants in the middle of
			// the transaction's replies.
			s.txn = s.txn.abort()
			s.addLocalError("ERR keyfence: " + strings.ToUpper(cmd.Name) + " inside MULTI is not supported in gateway mode")
			return
		}
	case "watch":
		s.addLocalError("ERR WATCH inside MULTI is not allowed")
		return
	case "quit":
		// Redis runs QUIT at once: the transaction goes with the connection.
		s.flushBatch(ctx)
		s.unpin(false)
		s.addStatus("OK")
		s.quit = true
		return
	case "reset":
		s.reset(ctx)
		return
	case "select":
		s.queueSelect(ctx, args)
		return
	case "ping", "echo", "time", "unwatch":
		// Queued upstream, where they mean the same: their replies keep
		// their place (UNWATCH inside MULTI does nothing, in Redis too).
		mark := len(s.req)
		s.forwardRaw(args, rewrite.ReplyRaw)
		s.queuedUpstream(mark, queuedCmd{kind: rewrite.ReplyRaw}, nil, args)
		return
	case "eval", "evalsha", "eval_ro", "evalsha_ro":
		s.eval(ctx, cmd, args)
		return
	case "fcall", "fcall_ro":
		s.fcall(ctx, cmd, args)
		return
	}
	switch cmd.Policy {
	case rewrite.PolicyDenied:
		s.txn = s.txn.abort()
		s.addLocalError(deniedText(cmd))
		return
	case rewrite.PolicyEmulated:
		s.queueEmulated(cmd, args)
		return
	}
	if isSubscribe(cmd.Name) {
		s.txn = s.txn.abort()
		s.addLocalError("ERR keyfence: '" + cmd.Name + "' cannot be queued inside MULTI through keyfence")
		return
	}
	if msg := s.payloadRefusal(ctx, cmd); msg != "" {
		s.txn = s.txn.abort()
		s.addLocalError(msg)
		return
	}
	mark := len(s.req)
	if !s.appendRewritten(cmd, args, rewrite.ReplyRaw) { // +QUEUED
		s.txn = s.txn.abort()
		return
	}
	q := queuedCmd{kind: cmd.Reply}
	if cmd.Name == "publish" {
		q.adjust = s.srv.publishDelta(s.rw, args[1])
	}
	s.queuedUpstream(mark, q, cmd, args)
}

// forwardedInMulti names the emulated commands that MULTI queues upstream
// as they are (queueInMulti).
func forwardedInMulti(name string) bool {
	switch name {
	case "ping", "echo", "unwatch", "eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro":
		return true
	}
	return false
}

func (s *session) multi(ctx context.Context, args [][]byte) {
	s.flushBatch(ctx)
	s.resetTx()
	if s.srv.cluster != nil && s.pinned == nil {
		// The master is not known until the first key: MULTI goes out
		// with the first queued command (clusterCommand).
		s.txn = txDeferred
		s.addStatus("OK")
		return
	}
	if err := s.pin(); err != nil {
		s.addLocalError(err.Error())
		return
	}
	s.forwardRaw(args, rewrite.ReplyRaw)
	s.txn = txQueuing
}

func (s *session) exec(ctx context.Context) {
	if s.txn.aborted() {
		if !s.txn.deferred() {
			s.flushBatch(ctx)
			s.discardQuietly(ctx)
		}
		s.txn = txNone
		s.addLocalError("EXECABORT Transaction discarded because of previous errors.")
		s.unpin(true)
		s.resetTx()
		return
	}
	if s.tx.emulated {
		s.runExec(ctx)
		return
	}
	if s.txn.deferred() { // nothing was queued upstream: replies known here
		s.txn = txNone
		s.addLocal(s.appendExecReply(nil, []byte("*0\r\n")))
		s.resetTx()
		return
	}
	s.req = resp.AppendCommand(s.req, []byte("EXEC"))
	s.nreq++
	s.slots = append(s.slots, slot{name: s.curName, upstream: true, exec: true, muted: s.mute})
	s.endExec(ctx)
}

// discardQuietly ends the upstream transaction without a client-visible reply.
func (s *session) discardQuietly(ctx context.Context) {
	req := resp.AppendCommand(nil, []byte("DISCARD"))
	if err := s.pinned.RoundTrip(ctx, s.b, req, 1); err != nil {
		s.unpin(false)
	}
}

// watchClient reads from the client while a blocking command waits upstream.
// Bytes that arrive are kept for later; EOF closes the pinned connection so
// that Redis stops blocking for a client that is gone. The returned function
// stops the watch and reports whether the client went away.
func (s *session) watchClient(c *upstream.Conn) (stop func() (gone bool)) {
	done := make(chan struct{})
	var extra []byte
	var gone bool
	var stopping atomic.Bool
	go func() {
		defer close(done)
		var buf [4096]byte
		for {
			n, err := s.nc.Read(buf[:])
			extra = append(extra, buf[:n]...)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if stopping.Load() {
					return
				}
				// Not stop's deadline but closeWhenIdle's (the server is
				// draining): the session ends once the command is answered;
				// until then keep noticing a client that goes away. Checked
				// again after re-arming, so a stop in between is not missed.
				_ = s.nc.SetReadDeadline(time.Time{})
				if stopping.Load() {
					return
				}
				continue
			}
			if err != nil || len(extra) > s.srv.cfg.MaxRequestBytes {
				gone = true
				// Before the close: the command's failure is the client's
				// doing, not upstream's (send neither logs nor counts it).
				s.clientLeft.Store(true)
				c.Close()
				return
			}
		}
	}()
	return func() bool {
		stopping.Store(true)
		_ = s.nc.SetReadDeadline(time.Now())
		<-done
		if !s.closing.Load() {
			_ = s.nc.SetReadDeadline(time.Time{})
		}
		s.rbuf = append(s.rbuf, extra...)
		return gone
	}
}

// inMultiControl names the commands that act on the transaction itself.
func inMultiControl(name string) bool {
	switch name {
	case "exec", "discard", "multi", "watch", "quit", "reset":
		return true
	}
	return false
}
