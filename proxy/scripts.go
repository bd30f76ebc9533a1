package proxy

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/keyfence/keyfence/rewrite"
)

// scriptEntry is one client script and the wrapped form keyfence runs.
type scriptEntry struct {
	clientSHA  string
	wrappedSHA string
	wrapped    []byte
	loaded     atomic.Bool // SCRIPT LOADed upstream and no NOSCRIPT since
}

// scriptRegistry maps client SHA1s to wrapped scripts for the tenant, so
// that EVALSHA works from any connection. It is bounded: past maxScripts a
// random entry goes, and a client whose script went gets NOSCRIPT and sends
// EVAL, as every Redis client does.
type scriptRegistry struct {
	mu    sync.RWMutex
	bySHA map[string]*scriptEntry
}

const maxScripts = 10000

func newScriptRegistry() *scriptRegistry {
	return &scriptRegistry{bySHA: make(map[string]*scriptEntry)}
}

func (r *scriptRegistry) get(sha string) *scriptEntry {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.bySHA[strings.ToLower(sha)]
}

func (r *scriptRegistry) add(rw *rewrite.Rewriter, script []byte) *scriptEntry {
	sha := rewrite.ScriptSHA(script)
	if e := r.get(sha); e != nil {
		return e
	}
	wrapped := rw.WrapScript(script)
	e := &scriptEntry{clientSHA: sha, wrappedSHA: rewrite.ScriptSHA(wrapped), wrapped: wrapped}
	r.mu.Lock()
	defer r.mu.Unlock()
	if old := r.bySHA[sha]; old != nil {
		return old
	}
	if len(r.bySHA) >= maxScripts {
		for k := range r.bySHA {
			delete(r.bySHA, k)
			break
		}
	}
	r.bySHA[sha] = e
	return e
}

func (r *scriptRegistry) flush() {
	r.mu.Lock()
	r.bySHA = make(map[string]*scriptEntry)
	r.mu.Unlock()
}

// ensureLoaded makes sure upstream has the wrapped script, so that the
// EVALSHA keyfence sends (perhaps inside MULTI) finds it.
func (s *session) ensureLoaded(ctx context.Context, e *scriptEntry) error {
	if e.loaded.Load() {
		return nil
	}
	v, err := s.call(ctx, s.shared, []byte("SCRIPT"), []byte("LOAD"), e.wrapped)
	if err != nil {
		return err
	}
	if string(v.str) != e.wrappedSHA {
		return errBadValue
	}
	e.loaded.Store(true)
	return nil
}

const errNoScript = "NOSCRIPT No matching script. Please use EVAL."

// eval handles EVAL, EVALSHA, EVAL_RO and EVALSHA_RO: upstream runs the
// wrapped script by its SHA, with the keys prefixed and ARGV untouched.
func (s *session) eval(ctx context.Context, cmd *rewrite.Command, args [][]byte) {
	var e *scriptEntry
	switch cmd.Name {
	case "eval", "eval_ro":
		e = s.srv.scripts.add(s.rw, args[1])
	default:
		if e = s.srv.scripts.get(string(args[1])); e == nil {
			if s.inMulti {
				s.multiAbort = true
			}
			s.addLocalError(errNoScript)
			return
		}
	}
	if err := s.ensureLoaded(ctx, e); err != nil {
		if s.inMulti {
			s.multiAbort = true
		}
		s.addLocalError(upstreamErrorText(err))
		return
	}
	idx, err := s.rw.Keys(cmd, args, nil)
	if err != nil {
		if s.inMulti {
			s.multiAbort = true
		}
		s.addLocalError("ERR Number of keys can't be greater than number of args")
		return
	}
	from := len(s.req)
	s.req = rewrite.AppendArrayHeader(s.req, len(args))
	name := "EVALSHA"
	if strings.HasSuffix(cmd.Name, "_ro") {
		name = "EVALSHA_RO"
	}
	s.req = rewrite.AppendBulk(s.req, []byte(name))
	s.req = rewrite.AppendBulk(s.req, []byte(e.wrappedSHA))
	k := 0
	for i := 2; i < len(args); i++ {
		if k < len(idx) && idx[k] == i {
			s.req = rewrite.AppendPrefixedBulk(s.req, s.rw.KeyPrefix(), args[i])
			k++
		} else {
			s.req = rewrite.AppendBulk(s.req, args[i])
		}
	}
	if s.inMulti {
		s.forward(rewrite.ReplyRaw) // +QUEUED
		s.multiKinds = append(s.multiKinds, rewrite.ReplyRaw)
		return
	}
	s.nreq++
	s.slots = append(s.slots, slot{name: s.curName, upstream: true, script: e, from: from, to: len(s.req)})
}

// scriptReply appends the reply of a script run: a NOSCRIPT (upstream
// restarted or its scripts were flushed) is healed by loading the script
// again and rerunning it, which is safe because NOSCRIPT means it did not
// run; errors name the client's SHA, not the wrapped one.
func (s *session) scriptReply(ctx context.Context, sl slot, reply []byte) {
	if bytes.HasPrefix(reply, []byte("-NOSCRIPT")) {
		sl.script.loaded.Store(false)
		if err := s.ensureLoaded(ctx, sl.script); err == nil {
			b := newBatch()
			if err := s.conn().do(ctx, b, s.req[sl.from:sl.to], 1); err == nil {
				reply = b.reply(0)
			} else {
				reply = rewrite.AppendError(nil, upstreamErrorText(err))
			}
		}
	}
	if len(reply) > 0 && reply[0] == '-' {
		reply = bytes.ReplaceAll(reply, []byte(sl.script.wrappedSHA), []byte(sl.script.clientSHA))
		reply = rewrite.FixScriptError(reply)
	}
	s.out = s.rw.AppendReply(s.out, reply, rewrite.ReplyRaw)
}

// script handles SCRIPT LOAD, EXISTS, FLUSH and HELP for the tenant.
func (s *session) script(ctx context.Context, cmd *rewrite.Command, args [][]byte) {
	switch cmd.Name {
	case "script|load":
		e := s.srv.scripts.add(s.rw, args[2])
		if err := s.ensureLoaded(ctx, e); err != nil {
			s.addLocalError(upstreamErrorText(err))
			return
		}
		s.addLocal(rewrite.AppendBulk(nil, []byte(e.clientSHA)))
	case "script|exists":
		out := rewrite.AppendArrayHeader(nil, len(args)-2)
		for _, sha := range args[2:] {
			n := int64(0)
			if s.srv.scripts.get(string(sha)) != nil {
				n = 1
			}
			out = rewrite.AppendInt(out, n)
		}
		s.addLocal(out)
	case "script|flush":
		if len(args) > 3 || (len(args) == 3 && !strings.EqualFold(string(args[2]), "async") && !strings.EqualFold(string(args[2]), "sync")) {
			s.addLocalError("ERR SCRIPT FLUSH only support SYNC|ASYNC option")
			return
		}
		// Only this tenant's view is flushed: other tenants' scripts stay.
		s.srv.scripts.flush()
		s.addStatus("OK")
	default:
		s.addLocal(appendStringArray(nil, []string{
			"SCRIPT <subcommand> [<arg> [value] [opt] ...]. keyfence answers for this tenant:",
			"LOAD <script>, EXISTS <sha1> [<sha1> ...], FLUSH [ASYNC|SYNC].",
			"KILL and DEBUG are denied: they act on the shared server.",
		}))
	}
}
