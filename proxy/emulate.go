package proxy

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/keyfence/keyfence/resp"
	"github.com/keyfence/keyfence/rewrite"
)

// emulate answers the commands whose Redis meaning is server-wide with their
// meaning for one tenant.
func (s *session) emulate(ctx context.Context, cmd *rewrite.Command, args [][]byte) {
	// The commands a pooled client sends on every connection are answered
	// here; the rest in emulateMore, whose frame (kilobytes, with what the
	// compiler inlines into it) would otherwise grow every session's stack
	// past the 4 KiB an idle connection keeps until the next GC.
	switch cmd.Name {
	case "ping":
		switch len(args) {
		case 1:
			s.addStatus("PONG")
		case 2:
			s.addLocal(resp.AppendBulk(nil, args[1]))
		default:
			s.addLocalError("ERR wrong number of arguments for 'ping' command")
		}
	case "echo":
		s.addLocal(resp.AppendBulk(nil, args[1]))
	case "quit":
		s.addStatus("OK")
		s.quit = true
	default:
		s.emulateMore(ctx, cmd, args)
	}
}

// emulateMore answers every other emulated command (see emulate).
func (s *session) emulateMore(ctx context.Context, cmd *rewrite.Command, args [][]byte) {
	switch cmd.Name {
	case "reset":
		s.reset(ctx)
	case "auth":
		s.auth(ctx, args[1:])
	case "hello":
		s.hello(ctx, args)
	case "select":
		s.selectDB(ctx, args[1])
	case "multi":
		s.multi(ctx, args)
	case "exec":
		s.addLocalError("ERR EXEC without MULTI")
	case "discard":
		s.addLocalError("ERR DISCARD without MULTI")
	case "unwatch":
		if s.pinned != nil {
			s.forwardRaw(args, rewrite.ReplyRaw)
			s.flushBatch(ctx)
			s.unpin(true)
			return
		}
		s.addStatus("OK")
	case "keys":
		s.flushBatch(ctx)
		s.keys(ctx, args[1])
	case "dbsize":
		s.flushBatch(ctx)
		s.dbsize(ctx)
	case "flushdb":
		s.flushBatch(ctx)
		s.flush(ctx, []int{s.db}, args[1:])
	case "flushall":
		s.flushBatch(ctx)
		s.flushAll(ctx, args[1:])
	case "randomkey":
		s.flushBatch(ctx)
		s.randomKey(ctx)
	case "info":
		s.flushBatch(ctx)
		s.info(ctx, args[1:])
	case "client|id":
		s.addLocal(resp.AppendInt(nil, s.id))
	case "client|setname":
		s.clientSetName(args[2])
	case "client|getname":
		if s.name == "" {
			s.addLocal(resp.AppendNull(nil, s.resp3))
		} else {
			s.addLocal(resp.AppendBulk(nil, []byte(s.name)))
		}
	case "client|setinfo":
		s.clientSetInfo(args[2:])
	case "client|info":
		s.addLocal(s.appendVerbatim(nil, s.clientLine(true)+"\n"))
	case "client|list":
		s.clientList(args[2:])
	case "client|reply":
		if reply := s.clientReply(args[2]); reply != nil {
			s.addLocal(reply)
		}
	case "client|help":
		s.addLocal(appendStringArray(nil, clientHelp))
	case "command", "command|info", "command|docs", "command|count", "command|list",
		"command|getkeys", "command|getkeysandflags", "command|help":
		s.command(ctx, cmd, args)
	case "function|load", "function|delete", "function|flush", "function|list", "function|dump",
		"function|restore", "function|stats", "function|kill", "function|help":
		s.function(ctx, cmd, args)
	case "fcall", "fcall_ro":
		s.fcall(ctx, cmd, args)
	case "pubsub|numpat":
		s.addLocal(resp.AppendInt(nil, int64(s.srv.numPatterns())))
	case "eval", "evalsha", "eval_ro", "evalsha_ro":
		s.eval(ctx, cmd, args)
	case "script|load", "script|exists", "script|flush", "script|help":
		s.script(ctx, cmd, args)
	default:
		s.addLocalError("ERR keyfence: '" + cmd.Name + "' is not supported by this version of keyfence")
	}
}

// dropTransaction ends MULTI and WATCH as RESET does: the transaction is
// discarded upstream and the pinned connection goes.
func (s *session) dropTransaction(ctx context.Context) {
	if s.pinned != nil {
		if s.txn.inMulti() {
			s.discardQuietly(ctx)
		}
		s.unpin(false)
	}
	s.txn = txNone
	s.resetTx()
}

// reset returns the session to the state of a fresh connection, as RESET
// does in Redis: no transaction, no WATCH, RESP2, default db, no name.
func (s *session) reset(ctx context.Context) {
	s.flushBatch(ctx)
	s.dropTransaction(ctx)
	s.replyMode, s.mute = replyOn, false
	s.infoMu.Lock()
	s.name, s.db, s.resp3 = "", s.srv.cfg.Upstream.DB, false
	s.infoMu.Unlock()
	s.authed = s.srv.gw == nil && s.srv.cfg.ClientPassword == ""
	if g := s.srv.gw; g != nil && s.srv != g.lobby && !s.moveTo(ctx, g.lobby) {
		// Gateway mode: RESET logs out, as it does in a Redis whose
		// default user needs a password. Only a draining gateway's
		// lobby refuses the session; it ends with this reply.
		s.quit = true
	}
	s.selectGroup()
	s.addStatus("RESET")
}

// auth behaves like Redis with requirepass set to --client-password, or like
// a Redis whose default user has no password; in gateway mode, like a Redis
// with one user per tenant (login).
func (s *session) auth(ctx context.Context, creds [][]byte) {
	if ok, msg := s.login(ctx, creds); !ok {
		s.addLocalError(msg)
		return
	}
	s.authed = true
	s.addStatus("OK")
}

func (s *session) checkAuth(creds [][]byte) (bool, string) {
	pass := s.srv.cfg.ClientPassword
	user := "default"
	var given []byte
	switch len(creds) {
	case 1:
		given = creds[0]
		if pass == "" {
			return false, "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"
		}
	case 2:
		user, given = string(creds[0]), creds[1]
	default:
		return false, "ERR syntax error"
	}
	if user != "default" || (pass != "" && !constantTimeEqual(given, []byte(pass))) {
		return false, "WRONGPASS invalid username-password pair or user is disabled."
	}
	return true, ""
}

// hello implements HELLO [protover [AUTH user pass] [SETNAME name]].
func (s *session) hello(ctx context.Context, args [][]byte) {
	proto := 0
	if len(args) >= 2 {
		v, err := strconv.Atoi(string(args[1]))
		if err != nil {
			s.addLocalError("ERR Protocol version is not an integer or out of range")
			return
		}
		if v != 2 && v != 3 {
			s.addLocalError("NOPROTO unsupported protocol version")
			return
		}
		proto = v
	}
	var name []byte
	setName := false
	for i := 2; i < len(args); i++ {
		switch {
		case strings.EqualFold(string(args[i]), "auth") && i+2 < len(args):
			if ok, msg := s.login(ctx, args[i+1:i+3]); !ok {
				s.addLocalError(msg)
				return
			}
			s.authed = true
			i += 2
		case strings.EqualFold(string(args[i]), "setname") && i+1 < len(args):
			name, setName = args[i+1], true
			i++
		default:
			s.addLocalError("ERR Syntax error in HELLO option '" + clip(args[i]) + "'")
			return
		}
	}
	if !s.authed {
		s.addLocalError("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time")
		return
	}
	if setName && !s.setName(name) {
		return
	}
	if proto != 0 && (proto == 3) != s.resp3 {
		s.flushBatch(ctx)
		if s.pinned != nil {
			s.addLocalError("ERR keyfence: HELLO cannot change the protocol during MULTI or WATCH")
			return
		}
		s.infoMu.Lock()
		s.resp3 = proto == 3
		s.infoMu.Unlock()
		s.selectGroup()
	}
	protoNow := 2
	if s.resp3 {
		protoNow = 3
	}
	var out []byte
	out = s.appendMapHeader(out, 7)
	out = resp.AppendBulk(out, []byte("server"))
	out = resp.AppendBulk(out, []byte("redis"))
	out = resp.AppendBulk(out, []byte("version"))
	out = resp.AppendBulk(out, []byte(redisVersion))
	out = resp.AppendBulk(out, []byte("proto"))
	out = resp.AppendInt(out, int64(protoNow))
	out = resp.AppendBulk(out, []byte("id"))
	out = resp.AppendInt(out, s.id)
	out = resp.AppendBulk(out, []byte("mode"))
	out = resp.AppendBulk(out, []byte("standalone"))
	out = resp.AppendBulk(out, []byte("role"))
	out = resp.AppendBulk(out, []byte("master"))
	out = resp.AppendBulk(out, []byte("modules"))
	out = resp.AppendArrayHeader(out, 0)
	s.addLocal(out)
}

// redisVersion is the Redis version keyfence presents: the one its command
// table was captured from.
const redisVersion = rewrite.RedisVersion

func (s *session) appendMapHeader(dst []byte, pairs int) []byte {
	if s.resp3 {
		dst = append(dst, '%')
		dst = strconv.AppendInt(dst, int64(pairs), 10)
		return append(dst, '\r', '\n')
	}
	return resp.AppendArrayHeader(dst, 2*pairs)
}

// appendVerbatim appends text as RESP3 verbatim text or a RESP2 bulk.
func (s *session) appendVerbatim(dst []byte, text string) []byte {
	if !s.resp3 {
		return resp.AppendBulk(dst, []byte(text))
	}
	dst = append(dst, '=')
	dst = strconv.AppendInt(dst, int64(len(text)+4), 10)
	dst = append(dst, "\r\ntxt:"...)
	dst = append(dst, text...)
	return append(dst, '\r', '\n')
}

func appendStringArray(dst []byte, items []string) []byte {
	dst = resp.AppendArrayHeader(dst, len(items))
	for _, it := range items {
		dst = resp.AppendStatus(dst, it)
	}
	return dst
}

// selectDB moves the session to the tenant's namespace in database n. An
// index upstream does not have is refused here, with Redis's words, before
// anything is set up for it: invalid input leaves no state behind. A valid
// one's upstream connection is set up (and so checked) before OK.
func (s *session) selectDB(ctx context.Context, arg []byte) {
	n, err := strconv.ParseInt(string(arg), 10, 64)
	if err != nil {
		s.addLocalError("ERR value is not an integer or out of range")
		return
	}
	if n > math.MaxInt32 || n < math.MinInt32 {
		s.addLocalError("ERR value is out of range, value must between -2147483648 and 2147483647")
		return
	}
	if n < 0 {
		s.addLocalError("ERR DB index is out of range")
		return
	}
	if s.srv.cluster != nil && n != 0 {
		s.addLocalError("ERR SELECT is not allowed in cluster mode")
		return
	}
	if s.pinned != nil {
		s.addLocalError("ERR keyfence: SELECT is not supported during MULTI or WATCH")
		return
	}
	if s.srv.cluster == nil && int(n) != s.db {
		count, err := s.srv.databases(ctx)
		if err != nil {
			s.addLocalError(upstreamErrorText(err))
			return
		}
		if n >= count {
			s.addLocalError("ERR DB index is out of range")
			return
		}
	}
	s.flushBatch(ctx)
	prevDB := s.db
	s.setDB(int(n))
	s.selectGroup()
	s.forwardRaw([][]byte{[]byte("PING")}, rewrite.ReplyRaw)
	s.slots = s.slots[:len(s.slots)-1]
	err = s.shared.RoundTrip(ctx, s.b, s.req, s.nreq)
	s.req, s.nreq = s.req[:0], 0
	if err != nil {
		s.setDB(prevDB)
		s.selectGroup()
		if strings.Contains(err.Error(), "out of range") {
			// Upstream has fewer databases than it had: learn them again.
			s.srv.dbCount.Store(0)
			s.addLocalError("ERR DB index is out of range")
			return
		}
		s.addLocalError(upstreamErrorText(err))
		return
	}
	s.addStatus("OK")
}

func validClientName(name []byte) bool {
	for _, c := range name {
		if c < '!' || c > '~' {
			return false
		}
	}
	return true
}

func (s *session) clientSetName(name []byte) {
	if s.setName(name) {
		s.addStatus("OK")
	}
}

// setName names the connection, or adds Redis's error for a bad name.
func (s *session) setName(name []byte) bool {
	if !validClientName(name) {
		s.addLocalError("ERR Client names cannot contain spaces, newlines or special characters.")
		return false
	}
	s.infoMu.Lock()
	s.name = string(name)
	s.infoMu.Unlock()
	return true
}

func (s *session) clientSetInfo(args [][]byte) {
	if len(args) != 2 {
		s.addLocalError("ERR wrong number of arguments for 'client|setinfo' command")
		return
	}
	if !validClientName(args[1]) {
		s.addLocalError("ERR " + strings.ToUpper(string(args[0])) + " cannot contain spaces, newlines or special characters.")
		return
	}
	s.infoMu.Lock()
	defer s.infoMu.Unlock()
	switch strings.ToLower(string(args[0])) {
	case "lib-name":
		s.libName = string(args[1])
	case "lib-ver":
		s.libVer = string(args[1])
	default:
		s.addLocalError("ERR Unrecognized option '" + clip(args[0]) + "'")
		return
	}
	s.addStatus("OK")
}

// noteCommand records the last command for CLIENT LIST/INFO.
func (s *session) noteCommand(cmd *rewrite.Command, args [][]byte) {
	if cmd != nil {
		if cmd.Name != s.lastCmd.Load().(string) {
			s.lastCmd.Store(cmd.Name)
		}
	}
	// The batch's read time: CLIENT LIST shows idle in seconds, and a
	// clock reading per command costs a pipeline more than the rest of this.
	at := s.readAt
	if at.IsZero() {
		at = time.Now()
	}
	s.lastAt.Store(at.UnixNano())
}

// clientLine formats the session like a line of Redis's CLIENT LIST. self
// is true on the session's own goroutine, which alone may read its
// transaction state.
func (s *session) clientLine(self bool) string {
	now := time.Now()
	flags, multi := "N", -1
	if self && s.txn.inMulti() {
		flags, multi = "x", len(s.tx.cmds)
	}
	s.infoMu.Lock()
	id, name, db, resp3, libName, libVer := s.id, s.name, s.db, s.resp3, s.libName, s.libVer
	s.infoMu.Unlock()
	resp := 2
	if resp3 {
		resp = 3
	}
	return fmt.Sprintf("id=%d addr=%s laddr=%s fd=0 name=%s age=%d idle=%d flags=%s db=%d sub=0 psub=0 ssub=0 multi=%d qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd=%s user=default redir=-1 resp=%d lib-name=%s lib-ver=%s",
		id, s.remoteAddr, s.localAddr, name,
		int(now.Sub(s.created).Seconds()), int(now.Sub(time.Unix(0, s.lastAt.Load())).Seconds()),
		flags, db, multi, s.lastCmd.Load().(string), resp, libName, libVer)
}

// clientID is the session's id, read by another session.
func (s *session) clientID() int64 {
	s.infoMu.Lock()
	defer s.infoMu.Unlock()
	return s.id
}

// setDB changes the session's database (CLIENT LIST reads it remotely).
func (s *session) setDB(n int) {
	s.infoMu.Lock()
	s.db = n
	s.infoMu.Unlock()
}

// clientList lists this tenant's connections only: those of this keyfence.
func (s *session) clientList(opts [][]byte) {
	var filterIDs map[int64]bool
	for i := 0; i < len(opts); i++ {
		switch {
		case strings.EqualFold(string(opts[i]), "type") && i+1 < len(opts):
			t := strings.ToLower(string(opts[i+1]))
			if t != "normal" && t != "master" && t != "replica" && t != "pubsub" {
				s.addLocalError("ERR Unknown client type '" + clip(opts[i+1]) + "'")
				return
			}
			if t != "normal" {
				s.addLocal(s.appendVerbatim(nil, ""))
				return
			}
			i++
		case strings.EqualFold(string(opts[i]), "id") && i+1 < len(opts):
			filterIDs = map[int64]bool{}
			for _, a := range opts[i+1:] {
				id, err := strconv.ParseInt(string(a), 10, 64)
				if err != nil || id <= 0 {
					s.addLocalError("ERR Invalid client ID")
					return
				}
				filterIDs[id] = true
			}
			i = len(opts)
		default:
			s.addLocalError("ERR syntax error")
			return
		}
	}
	var b strings.Builder
	for _, other := range s.srv.sessionsSnapshot() {
		if filterIDs != nil && !filterIDs[other.clientID()] {
			continue
		}
		b.WriteString(other.clientLine(other == s))
		b.WriteByte('\n')
	}
	s.addLocal(s.appendVerbatim(nil, b.String()))
}

var clientHelp = []string{
	"CLIENT <subcommand> [<arg> [value] [opt] ...]. keyfence answers for this tenant:",
	"ID, GETNAME, SETNAME <name>, SETINFO <LIB-NAME|LIB-VER> <value>, INFO, LIST [TYPE <type>] [ID <id> ...], REPLY ON|OFF|SKIP.",
	"KILL, PAUSE, UNPAUSE, TRACKING, CACHING, NO-EVICT and UNBLOCK are denied: they act on other tenants' connections.",
}

// randomPick returns a random index below n.
func randomPick(n int) int { return rand.IntN(n) }
