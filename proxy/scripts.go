package proxy

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/keyfence/keyfence/resp"
	"github.com/keyfence/keyfence/rewrite"
	"github.com/keyfence/keyfence/upstream"
)

// Scripts run in keyfence's Lua sandbox (rewrite/sandbox.go): one function
// library upstream compiles each client script once, rewritten, and runs
// it with the tenant's prefix. EVAL becomes FCALL of the library's run
// function; the client sees only its own SHA1s and Redis's wording.

// scriptEntry is one client script made ready for the sandbox.
type scriptEntry struct {
	script *rewrite.Script
	loaded atomic.Bool // compiled upstream, and no NOSCRIPT since
}

// scriptRegistry maps the tenant's script SHA1s to their sandboxed form, so
// that EVALSHA works from any connection. It holds at most max scripts and
// maxBytes of their rewritten text: past either, EVAL of a new script is
// refused (a tenant could otherwise make upstream compile, and keyfence
// hold, without end), until SCRIPT FLUSH.
type scriptRegistry struct {
	max      int
	maxBytes int
	mu       sync.RWMutex
	bySHA    map[string]*scriptEntry
	bytes    int
}

// maxScriptBytes bounds the rewritten text one tenant's scripts hold: no
// more than the sandbox library keeps compiled upstream for all tenants.
const maxScriptBytes = rewrite.MaxChunkBytes

func newScriptRegistry(max int) *scriptRegistry {
	return &scriptRegistry{max: max, maxBytes: maxScriptBytes, bySHA: make(map[string]*scriptEntry)}
}

func (r *scriptRegistry) get(sha string) *scriptEntry {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.bySHA[strings.ToLower(sha)]
}

var errTooManyScripts = errors.New("too many scripts")

func (r *scriptRegistry) add(sc *rewrite.Script) (*scriptEntry, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if old := r.bySHA[sc.ClientSHA]; old != nil {
		return old, nil
	}
	if len(r.bySHA) >= r.max || r.bytes+len(sc.Chunk) > r.maxBytes {
		return nil, errTooManyScripts
	}
	e := &scriptEntry{script: sc}
	r.bySHA[sc.ClientSHA] = e
	r.bytes += len(sc.Chunk)
	return e, nil
}

// count is how many scripts the tenant has (INFO's number_of_cached_scripts).
func (r *scriptRegistry) count() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.bySHA)
}

func (r *scriptRegistry) flush() {
	r.mu.Lock()
	r.bySHA = make(map[string]*scriptEntry)
	r.bytes = 0
	r.mu.Unlock()
}

const (
	errNoScript        = "NOSCRIPT No matching script. Please use EVAL."
	errFunctionMissing = "ERR Function not found"
	errChunkMissing    = "NOSCRIPT keyfence: sandboxed script not loaded"
)

// prepareScript returns the registry entry of a client's script text, or
// the error the client gets: Redis's own for a bad shebang or Lua syntax.
func (s *session) prepareScript(ctx context.Context, text []byte) (*scriptEntry, string) {
	if e := s.srv.scripts.get(rewrite.ScriptSHA(text)); e != nil {
		return e, ""
	}
	sc, err := rewrite.PrepareScript(text)
	var se rewrite.ScriptError
	switch {
	case errors.As(err, &se):
		return nil, string(se)
	case errors.Is(err, rewrite.ErrScriptSyntax):
		return nil, s.syntaxError(ctx, text, err)
	case err != nil:
		return nil, err.Error()
	}
	e, err := s.srv.scripts.add(sc)
	if err != nil {
		return nil, "ERR keyfence: this tenant has as many distinct scripts loaded as keyfence allows (--max-scripts " +
			strconv.Itoa(s.srv.scripts.max) + ", " + strconv.Itoa(s.srv.scripts.maxBytes>>20) +
			" MiB of script text); run SCRIPT FLUSH or use fewer distinct scripts"
	}
	return e, ""
}

// syntaxError asks upstream's Lua for the exact message a script that does
// not parse gets: compiling the client's own text never runs it.
func (s *session) syntaxError(ctx context.Context, text []byte, parseErr error) string {
	sb := s.srv.sandbox
	v, err := s.callSandbox(ctx, []byte(sb.CheckFunction()), []byte("0"), text)
	switch {
	case err != nil && strings.HasPrefix(err.Error(), "ERR Error compiling script"):
		return err.Error()
	case err != nil:
		return upstreamErrorText(err)
	case string(v.Str) == "OK":
		// Lua takes it, keyfence's parser does not: refuse rather than run
		// what the sandbox cannot vouch for.
		return "ERR keyfence: the script uses Lua syntax the sandbox does not support (" + sanitize(parseErr.Error()) + ")"
	}
	return "ERR Error compiling script"
}

// callSandbox calls one of the sandbox library's functions on the
// session's shared connection, loading the library first if upstream has
// not got it (a new or restarted server, FUNCTION FLUSH).
func (s *session) callSandbox(ctx context.Context, args ...[]byte) (resp.Value, error) {
	req := append([][]byte{[]byte("FCALL")}, args...)
	v, err := s.call(ctx, s.shared, req...)
	if err == nil || err.Error() != errFunctionMissing {
		return v, err
	}
	if _, lerr := s.call(ctx, s.shared, []byte("FUNCTION"), []byte("LOAD"), s.srv.sandbox.Library); lerr != nil &&
		!strings.Contains(lerr.Error(), "already exists") {
		return resp.Value{}, lerr
	}
	return s.call(ctx, s.shared, req...)
}

// ensureLoaded makes sure upstream has the script compiled, so that the
// FCALL keyfence sends (perhaps inside MULTI) finds it.
func (s *session) ensureLoaded(ctx context.Context, e *scriptEntry) error {
	if e.loaded.Load() {
		return nil
	}
	sc := e.script
	v, err := s.callSandbox(ctx, []byte(s.srv.sandbox.LoadFunction()), []byte("0"), []byte(sc.ChunkSHA), sc.Chunk)
	if err != nil {
		return err
	}
	if string(v.Str) != "OK" {
		return resp.ErrBadValue
	}
	e.loaded.Store(true)
	return nil
}

// eval handles EVAL, EVALSHA, EVAL_RO and EVALSHA_RO: upstream runs the
// sandboxed script with the keys prefixed and ARGV untouched.
func (s *session) eval(ctx context.Context, cmd *rewrite.Command, args [][]byte) {
	fail := func(msg string) {
		if s.txn.inMulti() {
			// Redis queues the script and fails it at EXEC.
			s.queueLocal(resp.AppendError(nil, msg))
			return
		}
		s.addLocalError(msg)
	}
	// Redis's order (evalShaCommand, evalGenericCommand): a SHA that is not
	// 40 characters long matches nothing; then numkeys is checked; only
	// then is the script looked up or compiled.
	if (cmd.Name == "evalsha" || cmd.Name == "evalsha_ro") && len(args[1]) != 40 {
		fail(errNoScript)
		return
	}
	if msg := numKeysError(args[2], len(args)-3); msg != "" {
		fail(msg)
		return
	}
	var e *scriptEntry
	switch cmd.Name {
	case "eval", "eval_ro":
		var msg string
		if e, msg = s.prepareScript(ctx, args[1]); e == nil {
			fail(msg)
			return
		}
	default:
		if e = s.srv.scripts.get(string(args[1])); e == nil {
			fail(errNoScript)
			return
		}
	}
	sc := e.script
	ro := strings.HasSuffix(cmd.Name, "_ro")
	flags := sc.Flags
	if ro {
		if sc.Shebang && flags&rewrite.ScriptNoWrites == 0 {
			fail("ERR Can not execute a script with write flag using *_ro command.")
			return
		}
		flags |= rewrite.ScriptNoWrites
	}
	idx, err := s.rw.Keys(cmd, args, nil)
	if err != nil {
		fail("ERR Number of keys can't be greater than number of args")
		return
	}
	if err := s.ensureLoaded(ctx, e); err != nil {
		fail(upstreamErrorText(err))
		return
	}
	from := len(s.req)
	s.req = resp.AppendArrayHeader(s.req, len(args)+4)
	if ro {
		s.req = resp.AppendBulk(s.req, []byte("FCALL_RO"))
	} else {
		s.req = resp.AppendBulk(s.req, []byte("FCALL"))
	}
	s.req = resp.AppendBulk(s.req, []byte(s.srv.sandbox.RunFunction(flags)))
	s.req = resp.AppendBulk(s.req, args[2]) // numkeys
	end := 3 + len(idx)
	for _, i := range idx {
		s.req = resp.AppendPrefixedBulk(s.req, s.rw.KeyPrefix(), args[i])
	}
	s.req = resp.AppendBulk(s.req, s.rw.KeyPrefix())
	s.req = resp.AppendBulk(s.req, []byte(sc.ChunkSHA))
	s.req = resp.AppendBulk(s.req, s.srv.scriptBudget)
	s.req = resp.AppendBulk(s.req, s.srv.scriptMemory)
	for _, a := range args[end:] {
		s.req = resp.AppendBulk(s.req, a)
	}
	if s.txn.inMulti() {
		s.forward(rewrite.ReplyRaw) // +QUEUED
		s.queuedUpstream(from, queuedCmd{kind: rewrite.ReplyRaw, script: e}, cmd, args)
		return
	}
	s.nreq++
	s.slots = append(s.slots, slot{name: s.curName, upstream: true, script: e, muted: s.mute, from: from, to: len(s.req)})
}

// numKeysError is Redis's error for the numkeys argument of EVAL, EVALSHA
// and FCALL, with rest arguments after it, or "" when it is valid.
func numKeysError(arg []byte, rest int) string {
	n, ok := resp.ParseRedisInt(arg)
	switch {
	case !ok:
		return "ERR value is not an integer or out of range"
	case n > int64(rest):
		return "ERR Number of keys can't be greater than number of args"
	case n < 0:
		return "ERR Number of keys can't be negative"
	}
	return ""
}

// scriptReply appends the reply of a script run: a NOSCRIPT (upstream
// restarted, flushed its functions or let the compiled script go) is healed
// by loading the script again and rerunning it, which is safe because it
// did not run; errors name the client's SHA and line, as Redis's do.
func (s *session) scriptReply(ctx context.Context, sl slot, reply []byte) {
	if bytes.HasPrefix(reply, []byte("-"+errChunkMissing)) || bytes.HasPrefix(reply, []byte("-"+errFunctionMissing+"\r")) {
		sl.script.loaded.Store(false)
		if err := s.ensureLoaded(ctx, sl.script); err == nil {
			b := upstream.NewBatch()
			if err := s.conn().RoundTrip(ctx, b, s.req[sl.from:sl.to], 1); err == nil {
				reply = b.Reply(0)
			} else {
				reply = resp.AppendError(nil, upstreamErrorText(err))
			}
		}
	}
	if len(reply) > 0 && reply[0] == '-' {
		reply = s.srv.sandbox.FixScriptError(reply, sl.script.script.ClientSHA)
	}
	s.out = s.rw.AppendReply(s.out, reply, rewrite.ReplyRaw)
}

// script handles SCRIPT LOAD, EXISTS, FLUSH and HELP for the tenant.
func (s *session) script(ctx context.Context, cmd *rewrite.Command, args [][]byte) {
	switch cmd.Name {
	case "script|load":
		e, msg := s.prepareScript(ctx, args[2])
		if e == nil {
			s.addLocalError(msg)
			return
		}
		if err := s.ensureLoaded(ctx, e); err != nil {
			s.addLocalError(upstreamErrorText(err))
			return
		}
		s.addLocal(resp.AppendBulk(nil, []byte(e.script.ClientSHA)))
	case "script|exists":
		out := resp.AppendArrayHeader(nil, len(args)-2)
		for _, sha := range args[2:] {
			n := int64(0)
			if s.srv.scripts.get(string(sha)) != nil {
				n = 1
			}
			out = resp.AppendInt(out, n)
		}
		s.addLocal(out)
	case "script|flush":
		if len(args) > 3 || (len(args) == 3 && !strings.EqualFold(string(args[2]), "async") && !strings.EqualFold(string(args[2]), "sync")) {
			s.addLocalError("ERR SCRIPT FLUSH only support SYNC|ASYNC option")
			return
		}
		// Only this tenant's view is flushed: other tenants' scripts stay,
		// and the compiled chunks upstream are bounded by the library.
		s.srv.scripts.flush()
		s.addStatus("OK")
	default:
		s.addLocal(appendStringArray(nil, []string{
			"SCRIPT <subcommand> [<arg> [value] [opt] ...]. keyfence answers for this tenant:",
			"LOAD <script>, EXISTS <sha1> [<sha1> ...], FLUSH [ASYNC|SYNC].",
			"KILL and DEBUG are denied: they act on the shared server; keyfence stops a script past --script-timeout itself.",
		}))
	}
}
