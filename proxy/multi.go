package proxy

import (
	"context"
	"strconv"
	"strings"
	"unsafe"

	"github.com/keyfence/keyfence/resp"
	"github.com/keyfence/keyfence/rewrite"
	"github.com/keyfence/keyfence/upstream"
)

// Transactions. Redis queues every command of a MULTI and answers them all,
// in order, in EXEC's reply. keyfence queues the commands it forwards in an
// upstream MULTI on the pinned connection, as the client sent them, and
// keeps here what it must do itself at EXEC, command by command:
//
//   - strip each reply of upstream's EXEC by its command's kind, correct a
//     PUBLISH count, name a script's error by the client's SHA;
//   - give the reply Redis gives at EXEC to a command keyfence judged when
//     it was queued (a script Redis would fail: NOSCRIPT, numkeys …);
//   - run the commands keyfence emulates (DBSIZE, KEYS, INFO, CLIENT …,
//     FLUSHDB …) in their place. Upstream cannot run them inside its
//     MULTI, so once one is queued, the forwarded commands after it wait
//     in keyfence: EXEC runs upstream's transaction of the commands queued
//     before it, then each emulated command, each run of waiting commands
//     as a MULTI/EXEC of its own, in the client's order. Each command sees
//     the effects of those before it, as in Redis; other clients may run
//     between the parts (see README).

// queuedCmd is one command of the transaction, in the client's order.
type queuedCmd struct {
	kind    rewrite.ReplyKind // how its upstream reply is stripped
	adjust  int64             // PUBLISH: added to upstream's count (Server.publishDelta)
	script  *scriptEntry      // EVAL*: its error names the client's SHA
	fn      string            // FCALL*: its errors name the function
	selects bool              // SELECT db: its success moves the session to db
	db      int

	// At most one of these; none: queued upstream in the first MULTI.
	local []byte           // its reply, known when it was queued
	cmd   *rewrite.Command // emulated: run at EXEC with args
	args  [][]byte
	req   []byte // forwarded, but waiting for an emulated command before it
	slot  int    // cluster: the slot req goes to (-1: any master)
}

// txQueue is the transaction's queue (see above).
type txQueue struct {
	cmds     []queuedCmd
	held     int64 // bytes of the queue reserved from the server's request budget
	emulated bool  // an emulated command is queued: forwarded ones wait
	selected bool  // a SELECT inside the transaction succeeded: to newDB
	newDB    int
}

func (q *queuedCmd) inFirst() bool { return q.local == nil && q.cmd == nil && q.req == nil }

// resetTx empties the queue for the next transaction.
func (s *session) resetTx() {
	clear(s.tx.cmds) // let the copies go
	s.tx.cmds = s.tx.cmds[:0]
	if cap(s.tx.cmds) > 1024 {
		s.tx.cmds = nil
	}
	s.tx.emulated, s.tx.selected = false, false
	if s.tx.held > 0 {
		s.srv.hub.reqBuffered.Add(-s.tx.held)
		s.tx.held = 0
	}
}

// queuedCmdSize is what one queued command costs keyfence beyond the bytes
// it copies.
const queuedCmdSize = int64(unsafe.Sizeof(queuedCmd{}))

// errTxTooLarge refuses a command that would make the transaction's queue
// pass the request buffer budget; the transaction is then discarded at
// EXEC, as Redis discards one whose command was refused for memory.
const errTxTooLarge = "ERR keyfence: transaction too large: its queued commands passed the request buffer budget (--max-request-buffer-total); EXEC will discard it"

// txReserve takes n bytes for the queue from the request budget that bounds
// what all clients may make keyfence hold: a tenant's MULTI cannot make
// keyfence grow without bound. When it is spent, the caller refuses the
// command with txRefuse.
func (s *session) txReserve(n int64) bool {
	if !s.srv.reserveReadBuffer(n) {
		return false
	}
	s.tx.held += n
	return true
}

// txRefuse answers a command the queue had no room for and aborts the
// transaction.
func (s *session) txRefuse() {
	s.srv.budgetRefused.Add(1)
	s.txn = s.txn.abort()
	s.addLocalError(errTxTooLarge)
}

// queuedUpstream records a forwarded command whose request was appended to
// the batch from s.req[mark:] (with its +QUEUED slot). Behind an emulated
// command it is taken back out of the batch to wait, and keyfence answers
// +QUEUED itself.
func (s *session) queuedUpstream(mark int, q queuedCmd, cmd *rewrite.Command, args [][]byte) {
	cost := queuedCmdSize
	if s.tx.emulated {
		cost += int64(len(s.req) - mark)
	}
	if !s.txReserve(cost) {
		// Taken back out of the batch: it is not queued anywhere.
		s.req = s.req[:mark]
		s.slots = s.slots[:len(s.slots)-1]
		s.nreq--
		s.txRefuse()
		return
	}
	if s.tx.emulated {
		q.req = append([]byte(nil), s.req[mark:]...)
		q.slot = -1
		if s.srv.cluster != nil && cmd != nil {
			q.slot = s.commandSlot(cmd, args)
		}
		s.req = s.req[:mark]
		s.slots = s.slots[:len(s.slots)-1]
		s.nreq--
		s.addStatus("QUEUED")
	}
	s.tx.cmds = append(s.tx.cmds, q)
}

// queueLocal queues a command whose reply at EXEC is known now.
func (s *session) queueLocal(reply []byte) {
	if !s.txReserve(queuedCmdSize + int64(len(reply))) {
		s.txRefuse()
		return
	}
	s.tx.cmds = append(s.tx.cmds, queuedCmd{local: reply})
	s.addStatus("QUEUED")
}

// queueEmulated queues an emulated command, to run at EXEC in its place.
func (s *session) queueEmulated(cmd *rewrite.Command, args [][]byte) {
	cost := queuedCmdSize
	for _, a := range args {
		cost += int64(len(a)) + 24
	}
	if !s.txReserve(cost) {
		s.txRefuse()
		return
	}
	kept := make([][]byte, len(args)) // args point into the read buffer
	for i, a := range args {
		kept[i] = append([]byte(nil), a...)
	}
	s.tx.cmds = append(s.tx.cmds, queuedCmd{cmd: cmd, args: kept})
	s.tx.emulated = true
	s.addStatus("QUEUED")
}

// appendExecReply appends the client's reply to the transaction: upstream's
// EXEC reply (a null when WATCH failed it, or an error) as it is, else an
// array of every queued command's reply in order. Only the commands queued
// in the first upstream MULTI are in upstream's reply.
func (s *session) appendExecReply(dst, reply []byte) []byte {
	elems, ok := rewrite.SplitExec(reply)
	first := 0
	for i := range s.tx.cmds {
		if s.tx.cmds[i].inFirst() {
			first++
		}
	}
	if !ok || len(elems) != first {
		return s.rw.AppendReply(dst, reply, rewrite.ReplyRaw)
	}
	dst = resp.AppendArrayHeader(dst, len(s.tx.cmds))
	next := 0
	for i := range s.tx.cmds {
		q := &s.tx.cmds[i]
		if q.local != nil {
			dst = append(dst, q.local...)
			continue
		}
		dst = s.appendQueuedReply(dst, q, elems[next])
		next++
	}
	return dst
}

// appendQueuedReply appends one forwarded command's reply inside EXEC.
func (s *session) appendQueuedReply(dst []byte, q *queuedCmd, reply []byte) []byte {
	reply = adjustCount(reply, q.adjust)
	if q.script != nil && len(reply) > 0 && reply[0] == '-' {
		reply = s.srv.sandbox.FixScriptError(reply, q.script.script.ClientSHA)
	}
	if q.fn != "" {
		reply = s.fixFcallError(reply, q.fn)
	}
	if q.selects && string(reply) == "+OK\r\n" {
		s.tx.selected, s.tx.newDB = true, q.db
	}
	return s.rw.AppendReply(dst, reply, q.kind)
}

// runExec answers EXEC of a transaction that holds emulated commands (see
// the top of this file). It is called with the queued commands' +QUEUED
// replies still in the batch.
func (s *session) runExec(ctx context.Context) {
	mute := s.mute
	s.flushBatch(ctx)
	var first [][]byte
	if !s.txn.deferred() {
		b := upstream.NewBatch()
		err := s.pinned.RoundTrip(ctx, b, resp.AppendCommand(nil, []byte("EXEC")), 1)
		if err != nil {
			s.txn = txNone
			s.addLocalError(upstreamErrorText(err))
			s.unpin(false)
			return
		}
		reply := b.Reply(0)
		var ok bool
		if first, ok = rewrite.SplitExec(reply); !ok {
			// WATCH failed the transaction (or upstream refused it):
			// nothing ran, and nothing keyfence queued runs either.
			s.txn = txNone
			s.addLocal(s.rw.AppendReply(nil, reply, rewrite.ReplyRaw))
			s.unpin(true)
			return
		}
	}
	// The emulated commands run outside the transaction, as commands of
	// their own would.
	s.txn = txNone
	s.mute = false
	out := resp.AppendArrayHeader(nil, len(s.tx.cmds))
	next := 0
	for i := 0; i < len(s.tx.cmds); i++ {
		q := &s.tx.cmds[i]
		var reply []byte
		switch {
		case q.local != nil:
			reply = q.local
		case q.cmd != nil:
			reply = s.runQueuedEmulated(ctx, q)
		case q.req != nil:
			j := i + 1
			for j < len(s.tx.cmds) && s.tx.cmds[j].req != nil {
				j++
			}
			replies := s.runWaiting(ctx, s.tx.cmds[i:j])
			for k := range replies {
				if s.replyMode != replyOff {
					out = append(out, replies[k]...)
				}
			}
			i = j - 1
			continue
		default:
			if next < len(first) {
				reply = s.appendQueuedReply(nil, q, first[next])
			}
			next++
		}
		if q.selects && s.tx.selected {
			s.setDB(s.tx.newDB) // the commands after it use it: the pinned connection is there
		}
		if s.replyMode != replyOff {
			out = append(out, reply...)
		}
	}
	s.mute = mute
	s.addLocal(out)
	s.endExec(ctx)
}

// endExec gives the pinned connection back after EXEC, and moves the
// session to the database a SELECT inside the transaction chose.
func (s *session) endExec(ctx context.Context) {
	s.flushBatch(ctx) // EXEC's reply goes out before the session moves
	selected, newDB := s.tx.selected, s.tx.newDB
	s.unpin(!selected) // a SELECT left the connection on another database
	if selected {
		s.setDB(newDB)
		s.selectGroup()
	}
}

// runQueuedEmulated runs an emulated command at EXEC and returns its reply.
func (s *session) runQueuedEmulated(ctx context.Context, q *queuedCmd) []byte {
	if q.cmd.Name == "client|reply" {
		return s.clientReply(q.args[2])
	}
	// Everything before it is the client's already: write it out, so that
	// what the emulation adds to s.out is its reply alone.
	_ = s.writeOut()
	name, cmd := s.curName, s.curCmd
	s.curName, s.curCmd = q.cmd.Name, q.cmd // for metrics and INFO's commandstats
	s.emulate(ctx, q.cmd, q.args)
	s.flushBatch(ctx)
	s.curName, s.curCmd = name, cmd
	reply := append([]byte(nil), s.out...)
	s.out = s.out[:0]
	return reply
}

// runWaiting runs forwarded commands that waited behind an emulated one,
// as one MULTI/EXEC, and returns their replies.
func (s *session) runWaiting(ctx context.Context, cmds []queuedCmd) [][]byte {
	fail := func(err error) [][]byte {
		out := make([][]byte, len(cmds))
		for i := range out {
			out[i] = resp.AppendError(nil, upstreamErrorText(err))
		}
		return out
	}
	if s.pinned == nil { // a cluster transaction that had nothing upstream yet
		if err := s.route(ctx, cmds[0].slot); err != nil {
			return fail(err)
		}
		if err := s.pin(); err != nil {
			return fail(err)
		}
	}
	req := resp.AppendCommand(nil, []byte("MULTI"))
	for _, q := range cmds {
		req = append(req, q.req...)
	}
	req = resp.AppendCommand(req, []byte("EXEC"))
	b := upstream.NewBatch()
	if err := s.pinned.RoundTrip(ctx, b, req, len(cmds)+2); err != nil {
		return fail(err)
	}
	exec := b.Reply(len(cmds) + 1)
	elems, ok := rewrite.SplitExec(exec)
	out := make([][]byte, len(cmds))
	for i := range cmds {
		switch {
		case ok && len(elems) == len(cmds):
			out[i] = s.appendQueuedReply(nil, &cmds[i], elems[i])
		case len(b.Reply(i+1)) > 0 && b.Reply(i + 1)[0] == '-':
			// Upstream refused to queue it (OOM, NOPERM): its own error.
			out[i] = s.rw.AppendReply(nil, b.Reply(i+1), rewrite.ReplyRaw)
		default:
			out[i] = s.rw.AppendReply(nil, exec, rewrite.ReplyRaw)
		}
		if cmds[i].selects && s.tx.selected {
			s.setDB(s.tx.newDB)
		}
	}
	return out
}

// queueSelect queues SELECT inside MULTI: upstream runs it in place (the
// tenant's database n is upstream's), and a success moves the session
// there after EXEC, as in Redis.
func (s *session) queueSelect(ctx context.Context, args [][]byte) {
	if s.srv.cluster != nil {
		// A cluster has database 0 only; its nodes answer the rest.
		if string(args[1]) == "0" {
			s.queueLocal(resp.AppendStatus(nil, "OK"))
		} else {
			s.queueLocal(resp.AppendError(nil, "ERR SELECT is not allowed in cluster mode"))
		}
		return
	}
	// Upstream says whether n is valid, in Redis's words; one it takes is
	// a number.
	n, err := strconv.Atoi(string(args[1]))
	mark := len(s.req)
	s.forwardRaw(args, rewrite.ReplyRaw)
	s.queuedUpstream(mark, queuedCmd{kind: rewrite.ReplyRaw, selects: err == nil && n >= 0, db: n}, nil, args)
}

// replyMode is CLIENT REPLY's state (Redis's CLIENT_REPLY_* flags).
type replyMode uint8

const (
	replyOn       replyMode = iota
	replyOff                // no reply until CLIENT REPLY ON
	replySkipNext           // CLIENT REPLY SKIP was the command: the next one is skipped
	replySkip               // this command's replies are dropped
)

// clientReply runs CLIENT REPLY ON|OFF|SKIP and returns its reply: +OK for
// ON, nothing for OFF and SKIP, as Redis answers. keyfence still reads
// every upstream reply; those the client asked not to get are dropped
// (slot.muted).
func (s *session) clientReply(arg []byte) []byte {
	switch strings.ToLower(string(arg)) {
	case "on":
		s.replyMode = replyOn
		s.mute = false // ON's own +OK is sent
		return resp.AppendStatus(nil, "OK")
	case "off":
		s.replyMode = replyOff
	case "skip":
		if s.replyMode != replyOff {
			s.replyMode = replySkipNext
		}
	default:
		return resp.AppendError(nil, "ERR syntax error")
	}
	return nil
}
