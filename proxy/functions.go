package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/keyfence/keyfence/resp"
	"github.com/keyfence/keyfence/rewrite"
	"github.com/keyfence/keyfence/upstream"
)

// Redis 7 functions, per tenant (the design is in rewrite/functions.go).
// The tenant's libraries live in the sandbox library's registry upstream,
// rebuilt from the tenant's store hash (rewrite.FunctionStoreKey) whenever
// the sandbox says it is missing or stale; FUNCTION LOAD, DELETE, FLUSH and
// RESTORE change both in one upstream call, FUNCTION LIST, DUMP and STATS
// read the registry, and FCALL runs the function through the sandbox. All
// of it is upstream, so every keyfence of the tenant sees the same
// functions. Here keyfence keeps only the flags of the functions it has
// seen, to pick the sandbox's run function (Redis checks a function's flags
// before running it); the sandbox refuses a run whose flags are no longer
// the function's, and keyfence reads them again.

// functionCache is what keyfence knows of the tenant's functions: name →
// registered name and flags.
type functionCache struct {
	mu  sync.Mutex
	fns map[string]cachedFunction // by lower-cased name, as Redis finds them
}

type cachedFunction struct {
	name  string // as registered: errors name it so
	flags int
}

func (c *functionCache) get(name []byte) (cachedFunction, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f, ok := c.fns[strings.ToLower(string(name))]
	return f, ok
}

func (c *functionCache) set(libs []tenantLibrary) {
	fns := make(map[string]cachedFunction)
	for _, l := range libs {
		for _, f := range l.fns {
			fns[strings.ToLower(f.name)] = cachedFunction{name: f.name, flags: f.flags}
		}
	}
	c.mu.Lock()
	c.fns = fns
	c.mu.Unlock()
}

func (c *functionCache) forget(name string) {
	c.mu.Lock()
	delete(c.fns, strings.ToLower(name))
	c.mu.Unlock()
}

// tenantLibrary is one library as the sandbox lists it.
type tenantLibrary struct {
	name string
	code []byte // nil unless asked for
	fns  []tenantFunction
}

type tenantFunction struct {
	name  string
	desc  []byte // nil: none given
	flags int
}

// loadTimeoutMs is Redis's limit on a library's top-level code
// (LOAD_TIMEOUT_MS); keyfence's --script-timeout applies when lower.
const loadTimeoutMs = 500

// errFunctionsCluster refuses FUNCTION LOAD and RESTORE with a Redis
// Cluster upstream: the sandbox reads the tenant's store from inside every
// run, which a cluster keeps on one node only.
const errFunctionsCluster = "ERR keyfence: Redis 7 functions are not available through keyfence with a Redis Cluster upstream"

// storeConn is the shared connection of keyfence's base database, where
// the tenant's store is (functions, like Redis's, belong to no database),
// in RESP2, whatever the client speaks: the replies are keyfence's to read.
func (s *session) storeConn() *upstream.Conn {
	return s.srv.pool.Group(upstream.Key{DB: s.srv.cfg.Upstream.DB}).Shared()
}

// sandboxCall calls a function of the sandbox library on conn, loading the
// library first if upstream has not got it. Error replies come back in the
// value; err is a failure to reach upstream.
func (s *session) sandboxCall(ctx context.Context, conn *upstream.Conn, args ...[]byte) (resp.Value, error) {
	req := append([][]byte{[]byte("FCALL")}, args...)
	v, err := conn.Call(ctx, req...)
	if err != nil || v.Type != '-' || string(v.Str) != errFunctionMissing {
		return v, err
	}
	if lv, err := conn.Call(ctx, []byte("FUNCTION"), []byte("LOAD"), s.srv.sandbox.Library); err != nil {
		return lv, err
	} else if lv.Type == '-' && !bytes.Contains(lv.Str, []byte("already exists")) {
		return lv, nil
	}
	return conn.Call(ctx, req...)
}

// fnCall runs one of the sandbox's registry operations for the tenant,
// rebuilding the registry from the store first when the sandbox says it is
// not current.
func (s *session) fnCall(ctx context.Context, fn string, args ...[]byte) (resp.Value, error) {
	conn := s.storeConn()
	req := append([][]byte{[]byte(fn), []byte("1"), []byte(s.srv.fnStore), s.rw.KeyPrefix()}, args...)
	for attempt := 0; ; attempt++ {
		v, err := s.sandboxCall(ctx, conn, req...)
		if err == nil && v.Type == '-' && bytes.HasPrefix(v.Str, []byte("OOM allow-oom flag is not set")) {
			// fload is deny-oom as FUNCTION LOAD and RESTORE are: Redis
			// refuses those with its command-level wording.
			v.Str = []byte("OOM command not allowed when used memory > 'maxmemory'.")
		}
		if err != nil || v.Type != '-' || string(v.Str) != rewrite.FunctionsNotLoaded || attempt == 3 {
			return v, err
		}
		if v, err := s.installFunctions(ctx, conn); err != nil || v.Type == '-' {
			return v, err
		}
	}
}

// installFunctions rebuilds the sandbox's registry of the tenant from its
// store: the sandbox names the libraries it lacks (fready), keyfence
// rewrites each and has it loaded (finstall), until the sandbox has them
// all. Another keyfence changing the store meanwhile costs a round more.
func (s *session) installFunctions(ctx context.Context, conn *upstream.Conn) (resp.Value, error) {
	sb := s.srv.sandbox
	store, prefix := []byte(s.srv.fnStore), s.rw.KeyPrefix()
	for round := 0; round < 8; round++ {
		v, err := s.sandboxCall(ctx, conn, []byte(sb.FunctionReady()), []byte("1"), store, prefix)
		if err != nil || v.Type == '-' {
			return v, err
		}
		if v.Type != '*' {
			return v, nil // OK: current
		}
		for i := 0; i+1 < len(v.Elems); i += 2 {
			name, code := v.Elems[i].Str, v.Elems[i+1].Str
			chunk := rewrite.MetaErrorChunk("ERR keyfence: a stored library no longer loads")
			if lib, err := rewrite.ParseLibrary(code); err == nil {
				chunk = lib.Chunk
			}
			iv, err := s.sandboxCall(ctx, conn, []byte(sb.FunctionInstall()), []byte("1"), store, prefix,
				name, []byte(rewrite.ScriptSHA(code)), chunk, s.srv.loadBudget, s.srv.scriptMemory)
			if err != nil || iv.Type == '-' {
				return iv, err
			}
		}
	}
	return resp.Value{Type: '-', Str: []byte("ERR keyfence: the tenant's functions kept changing while keyfence loaded them; try again")}, nil
}

// newGeneration is the token a change of the tenant's libraries writes to
// its store: random, so that no two changes, by any keyfence, share one.
func newGeneration() []byte {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return []byte(hex.EncodeToString(b[:]))
}

// fnReply adds the reply of a registry operation: an upstream error, the
// sandbox's error reply, or ok's reply.
func (s *session) fnReply(v resp.Value, err error, ok func(resp.Value)) {
	switch {
	case err != nil:
		s.addLocalError(upstreamErrorText(err))
	case v.Type == '-':
		s.addLocalError(string(v.Str))
	default:
		ok(v)
	}
}

// listFunctions asks the sandbox for the tenant's libraries, sorted by
// name, with their code when withCode.
func (s *session) listFunctions(ctx context.Context, withCode bool) ([]tenantLibrary, resp.Value, error) {
	if s.srv.cluster != nil {
		return nil, resp.Value{Type: '*'}, nil // a tenant has no functions there
	}
	flag := []byte("0")
	if withCode {
		flag = []byte("1")
	}
	v, err := s.fnCall(ctx, s.srv.sandbox.FunctionList(), flag)
	if err != nil || v.Type == '-' {
		return nil, v, err
	}
	libs := make([]tenantLibrary, 0, len(v.Elems))
	for _, e := range v.Elems {
		if len(e.Elems) < 2 || (len(e.Elems)-2)%3 != 0 {
			return nil, v, resp.ErrBadValue
		}
		l := tenantLibrary{name: string(e.Elems[0].Str)}
		if withCode {
			l.code = e.Elems[1].Str
		}
		for i := 2; i < len(e.Elems); i += 3 {
			f := tenantFunction{name: string(e.Elems[i].Str), flags: int(e.Elems[i+2].Num)}
			if !e.Elems[i+1].Null && e.Elems[i+1].Type != '_' {
				f.desc = e.Elems[i+1].Str
				if f.desc == nil {
					f.desc = []byte{}
				}
			}
			l.fns = append(l.fns, f)
		}
		libs = append(libs, l)
	}
	sort.Slice(libs, func(i, j int) bool { return libs[i].name < libs[j].name })
	s.srv.functions.set(libs)
	return libs, v, nil
}

// function answers the FUNCTION subcommands.
func (s *session) function(ctx context.Context, cmd *rewrite.Command, args [][]byte) {
	// The commands before it in the client's pipeline run first: a
	// pipelined FCALL must not meet the FUNCTION DELETE sent after it.
	s.flushBatch(ctx)
	switch cmd.Name {
	case "function|load":
		s.functionLoad(ctx, args)
	case "function|delete":
		if s.srv.cluster != nil {
			s.addLocalError("ERR Library not found")
			return
		}
		v, err := s.fnCall(ctx, s.srv.sandbox.FunctionDelete(), newGeneration(), args[2])
		s.fnReply(v, err, func(resp.Value) { s.addStatus("OK") })
	case "function|flush":
		if len(args) == 3 && !strings.EqualFold(string(args[2]), "async") && !strings.EqualFold(string(args[2]), "sync") {
			s.addLocalError("ERR FUNCTION FLUSH only supports SYNC|ASYNC option")
			return
		}
		if len(args) > 3 {
			s.addLocalError("ERR unknown subcommand or wrong number of arguments for 'FLUSH'. Try FUNCTION HELP.")
			return
		}
		if s.srv.cluster != nil {
			s.addStatus("OK")
			return
		}
		v, err := s.sandboxCall(ctx, s.storeConn(), []byte(s.srv.sandbox.FunctionFlush()), []byte("1"),
			[]byte(s.srv.fnStore), s.rw.KeyPrefix())
		s.fnReply(v, err, func(resp.Value) { s.addStatus("OK") })
	case "function|list":
		s.functionList(ctx, args)
	case "function|dump":
		libs, v, err := s.listFunctions(ctx, true)
		s.fnReply(v, err, func(resp.Value) {
			codes := make([][]byte, len(libs))
			for i, l := range libs {
				codes[i] = l.code
			}
			s.addLocal(resp.AppendBulk(nil, rewrite.AppendFunctionDump(nil, codes)))
		})
	case "function|restore":
		s.functionRestore(ctx, args)
	case "function|stats":
		libs, v, err := s.listFunctions(ctx, false)
		s.fnReply(v, err, func(resp.Value) { s.functionStats(libs) })
	case "function|kill":
		// A tenant's function that runs long is stopped by the sandbox at
		// --script-timeout; the one running now may be another tenant's.
		s.addLocalError("NOTBUSY No scripts in execution right now.")
	default:
		s.addLocal(appendStringArray(nil, functionHelp))
	}
}

// functionLoad is FUNCTION LOAD [REPLACE] code (functionLoadCommand): every
// argument before the last is an option, the last is the code.
func (s *session) functionLoad(ctx context.Context, args [][]byte) {
	replace := false
	for _, a := range args[2 : len(args)-1] {
		if !strings.EqualFold(string(a), "replace") {
			s.addLocalError("ERR Unknown option given: " + cArg(a))
			return
		}
		replace = true
	}
	if s.srv.cluster != nil {
		s.addLocalError(errFunctionsCluster)
		return
	}
	code := args[len(args)-1]
	lib, err := rewrite.ParseLibrary(code)
	if err != nil {
		s.addLocalError(err.Error())
		return
	}
	policy := "load"
	if replace {
		policy = "replace"
	}
	v, err := s.fnCall(ctx, s.srv.sandbox.FunctionLoad(), s.fnLoadArgs(policy, []*rewrite.Library{lib})...)
	s.fnReply(v, err, func(v resp.Value) { s.addLocal(resp.AppendBulk(nil, v.Str)) })
}

// fnLoadArgs are fload's arguments after the store and prefix.
func (s *session) fnLoadArgs(policy string, libs []*rewrite.Library) [][]byte {
	cfg := &s.srv.cfg
	args := [][]byte{newGeneration(), []byte(policy),
		strconv.AppendInt(nil, int64(cfg.MaxFunctionLibraries), 10), strconv.AppendInt(nil, int64(cfg.MaxFunctionBytes), 10),
		s.srv.loadBudget, s.srv.scriptMemory}
	for _, l := range libs {
		args = append(args, []byte(l.Name), l.Code, l.Chunk)
	}
	return args
}

// functionRestore is FUNCTION RESTORE payload [FLUSH|APPEND|REPLACE]: the
// payload's libraries are loaded into the sandbox as FUNCTION LOAD loads
// one (rewrite/funcdump.go), never handed to upstream's RESTORE.
func (s *session) functionRestore(ctx context.Context, args [][]byte) {
	if len(args) > 4 {
		s.addLocalError("ERR unknown subcommand or wrong number of arguments for 'RESTORE'. Try FUNCTION HELP.")
		return
	}
	policy := "append"
	if len(args) == 4 {
		switch strings.ToLower(string(args[3])) {
		case "append":
		case "replace":
			policy = "replace-all"
		case "flush":
			policy = "flush"
		default:
			s.addLocalError("ERR Wrong restore policy given, value should be either FLUSH, APPEND or REPLACE.")
			return
		}
	}
	codes, perr := rewrite.ParseFunctionDump(args[2])
	var dumpErr rewrite.FunctionDumpError
	if perr != nil && !errors.As(perr, &dumpErr) {
		s.addLocalError(perr.Error())
		return
	}
	if s.srv.cluster != nil {
		s.addLocalError(errFunctionsCluster)
		return
	}
	if len(codes) > s.srv.cfg.MaxFunctionLibraries {
		s.addLocalError("ERR keyfence: the payload holds " + strconv.Itoa(len(codes)) +
			" function libraries, more than keyfence allows a tenant (--max-function-libraries " +
			strconv.Itoa(s.srv.cfg.MaxFunctionLibraries) + ")")
		return
	}
	// Redis makes each library in payload order, each failing with its own
	// error before the next record is read; a record that cannot be read
	// fails where it is.
	libs := make([]*rewrite.Library, 0, len(codes)+1)
	for _, code := range codes {
		lib, err := rewrite.ParseLibrary(code)
		if err != nil {
			lib = &rewrite.Library{Code: code, Chunk: rewrite.MetaErrorChunk(err.Error())}
			dumpErr = "" // this library fails first
		}
		libs = append(libs, lib)
		if err != nil {
			break
		}
	}
	if dumpErr != "" {
		libs = append(libs, &rewrite.Library{Chunk: rewrite.MetaErrorChunk(string(dumpErr))})
	}
	v, err := s.fnCall(ctx, s.srv.sandbox.FunctionLoad(), s.fnLoadArgs(policy, libs)...)
	s.fnReply(v, err, func(resp.Value) { s.addStatus("OK") })
}

// functionList is FUNCTION LIST [WITHCODE] [LIBRARYNAME pattern], with
// Redis's argument errors; the pattern matches library names without
// regard to case, as Redis's does.
func (s *session) functionList(ctx context.Context, args [][]byte) {
	withCode := false
	var pattern []byte
	for i := 2; i < len(args); i++ {
		switch {
		case !withCode && strings.EqualFold(string(args[i]), "withcode"):
			withCode = true
			continue
		case pattern == nil && strings.EqualFold(string(args[i]), "libraryname"):
			if i >= len(args)-1 {
				s.addLocalError("ERR library name argument was not given")
				return
			}
			i++
			pattern = asciiLower(args[i])
			continue
		}
		s.addLocalError("ERR Unknown argument " + cArg(args[i]))
		return
	}
	libs, v, err := s.listFunctions(ctx, withCode)
	s.fnReply(v, err, func(resp.Value) {
		var out []byte
		n := 0
		for _, l := range libs {
			if pattern != nil && !rewrite.GlobMatch(pattern, asciiLower([]byte(l.name))) {
				continue
			}
			n++
			pairs := 3
			if withCode {
				pairs = 4
			}
			out = s.appendMapHeader(out, pairs)
			out = resp.AppendBulk(out, []byte("library_name"))
			out = resp.AppendBulk(out, []byte(l.name))
			out = resp.AppendBulk(out, []byte("engine"))
			out = resp.AppendBulk(out, []byte("LUA"))
			out = resp.AppendBulk(out, []byte("functions"))
			out = resp.AppendArrayHeader(out, len(l.fns))
			for _, f := range l.fns {
				out = s.appendMapHeader(out, 3)
				out = resp.AppendBulk(out, []byte("name"))
				out = resp.AppendBulk(out, []byte(f.name))
				out = resp.AppendBulk(out, []byte("description"))
				if f.desc == nil {
					out = resp.AppendNull(out, s.resp3)
				} else {
					out = resp.AppendBulk(out, f.desc)
				}
				out = resp.AppendBulk(out, []byte("flags"))
				flags := rewrite.FunctionFlagNames(f.flags)
				out = s.appendSetHeader(out, len(flags))
				for _, fl := range flags {
					out = resp.AppendStatus(out, fl)
				}
			}
			if withCode {
				out = resp.AppendBulk(out, []byte("library_code"))
				out = resp.AppendBulk(out, l.code)
			}
		}
		s.addLocal(append(resp.AppendArrayHeader(nil, n), out...))
	})
}

// appendSetHeader starts a set: RESP3's own type, else an array.
func (s *session) appendSetHeader(dst []byte, n int) []byte {
	if s.resp3 {
		dst = append(dst, '~')
		dst = strconv.AppendInt(dst, int64(n), 10)
		return append(dst, '\r', '\n')
	}
	return resp.AppendArrayHeader(dst, n)
}

// functionStats is FUNCTION STATS for the tenant: its own libraries and
// functions; running_script is null, as Redis's is whenever a client can
// ask (a running script blocks every other client).
func (s *session) functionStats(libs []tenantLibrary) {
	nfns := 0
	for _, l := range libs {
		nfns += len(l.fns)
	}
	var out []byte
	out = s.appendMapHeader(out, 2)
	out = resp.AppendBulk(out, []byte("running_script"))
	out = resp.AppendNull(out, s.resp3)
	out = resp.AppendBulk(out, []byte("engines"))
	out = s.appendMapHeader(out, 1)
	out = resp.AppendBulk(out, []byte("LUA"))
	out = s.appendMapHeader(out, 2)
	out = resp.AppendBulk(out, []byte("libraries_count"))
	out = resp.AppendInt(out, int64(len(libs)))
	out = resp.AppendBulk(out, []byte("functions_count"))
	out = resp.AppendInt(out, int64(nfns))
	s.addLocal(out)
}

// functionCounts are the tenant's libraries and functions for INFO, or
// zeros when upstream cannot say.
func (s *session) functionCounts(ctx context.Context) (libs, fns int) {
	list, v, err := s.listFunctions(ctx, false)
	if err != nil || v.Type == '-' {
		return 0, 0
	}
	for _, l := range list {
		fns += len(l.fns)
	}
	return len(list), fns
}

// fcall handles FCALL and FCALL_RO: the tenant's function runs through the
// sandbox's run function of its flags, with the keys prefixed and the
// arguments untouched.
func (s *session) fcall(ctx context.Context, cmd *rewrite.Command, args [][]byte) {
	fail := func(msg string) {
		if s.txn.inMulti() {
			s.queueLocal(resp.AppendError(nil, msg)) // Redis fails it at EXEC
			return
		}
		s.addLocalError(msg)
	}
	if s.srv.cluster != nil {
		fail("ERR Function not found")
		return
	}
	fn, ok := s.srv.functions.get(args[1])
	if !ok {
		// Another keyfence of the tenant may have loaded it.
		s.flushBatch(ctx)
		if _, v, err := s.listFunctions(ctx, false); err != nil {
			fail(upstreamErrorText(err))
			return
		} else if v.Type == '-' {
			fail(string(v.Str))
			return
		}
		if fn, ok = s.srv.functions.get(args[1]); !ok {
			if s.txn.inMulti() {
				// A FUNCTION LOAD queued before it may make it: look
				// again at EXEC, in its place.
				s.queueEmulated(cmd, args)
				return
			}
			fail("ERR Function not found")
			return
		}
	}
	// Redis's order (fcallCommandGeneric): the function, then numkeys.
	n, ok := resp.ParseRedisInt(args[2])
	switch {
	case !ok:
		fail("ERR Bad number of keys provided")
		return
	case n > int64(len(args)-3):
		fail("ERR Number of keys can't be greater than number of args")
		return
	case n < 0:
		fail("ERR Number of keys can't be negative")
		return
	}
	from := len(s.req)
	s.req = s.appendFcall(s.req, cmd.Name == "fcall_ro", fn.flags, args, int(n))
	if s.txn.inMulti() {
		s.forward(rewrite.ReplyRaw) // +QUEUED
		s.queuedUpstream(from, queuedCmd{kind: rewrite.ReplyRaw, fn: fn.name}, cmd, args)
		return
	}
	s.nreq++
	s.slots = append(s.slots, slot{name: s.curName, upstream: true, fn: fn.name, muted: s.mute, from: from, to: len(s.req)})
}

// appendFcall appends the FCALL of the sandbox's run function for flags:
// keys prefixed, then the tenant's prefix, its store and the databases of
// the store and the session, the function's name, the budgets, and the
// client's arguments.
func (s *session) appendFcall(dst []byte, ro bool, flags int, args [][]byte, numKeys int) []byte {
	dst = resp.AppendArrayHeader(dst, len(args)+7)
	if ro {
		dst = resp.AppendBulk(dst, []byte("FCALL_RO"))
	} else {
		dst = resp.AppendBulk(dst, []byte("FCALL"))
	}
	dst = resp.AppendBulk(dst, []byte(s.srv.sandbox.FunctionRun(flags)))
	dst = resp.AppendBulk(dst, args[2])
	for _, k := range args[3 : 3+numKeys] {
		dst = resp.AppendPrefixedBulk(dst, s.rw.KeyPrefix(), k)
	}
	dst = resp.AppendBulk(dst, s.rw.KeyPrefix())
	dst = resp.AppendBulk(dst, []byte(s.srv.fnStore))
	dst = resp.AppendBulk(dst, strconv.AppendInt(nil, int64(s.srv.cfg.Upstream.DB), 10))
	dst = resp.AppendBulk(dst, strconv.AppendInt(nil, int64(s.runDB()), 10))
	dst = resp.AppendBulk(dst, args[1])
	dst = resp.AppendBulk(dst, s.srv.scriptBudget)
	dst = resp.AppendBulk(dst, s.srv.scriptMemory)
	for _, a := range args[3+numKeys:] {
		dst = resp.AppendBulk(dst, a)
	}
	return dst
}

// runDB is the database a command added now runs in upstream: the
// session's, or inside MULTI the last one a queued SELECT moves to.
func (s *session) runDB() int {
	if s.txn.inMulti() {
		for i := len(s.tx.cmds) - 1; i >= 0; i-- {
			if s.tx.cmds[i].selects {
				return s.tx.cmds[i].db
			}
		}
	}
	return s.db
}

// isErrorLine says whether reply is the error reply msg.
func isErrorLine(reply []byte, msg string) bool {
	return len(reply) == len(msg)+3 && reply[0] == '-' && string(reply[1:len(msg)+1]) == msg
}

// fcallReply appends the reply of an FCALL. Nothing ran when the sandbox
// answers with one of its markers, so keyfence acts on it and runs the
// FCALL again: the registry is rebuilt (upstream restarted, another
// keyfence changed the libraries), the sandbox library loaded, or the run
// function chosen by the function's flags as they are now.
func (s *session) fcallReply(ctx context.Context, sl slot, reply []byte) {
	req := s.req[sl.from:sl.to]
	for attempt := 0; attempt < 4; attempt++ {
		if !s.healFcall(ctx, &reply, &req, sl.fn) {
			break
		}
		b := upstream.NewBatch()
		if err := s.conn().RoundTrip(ctx, b, req, 1); err != nil {
			reply = resp.AppendError(nil, upstreamErrorText(err))
			break
		}
		reply = b.Reply(0)
	}
	s.out = s.rw.AppendReply(s.out, s.fixFcallError(reply, sl.fn), rewrite.ReplyRaw)
}

// healFcall acts on a marker the sandbox answered an FCALL with and says
// whether to run req again; when it cannot, reply says why.
func (s *session) healFcall(ctx context.Context, reply, req *[]byte, name string) bool {
	switch {
	case isErrorLine(*reply, rewrite.FunctionsNotLoaded):
		v, err := s.installFunctions(ctx, s.storeConn())
		return s.healed(reply, v, err)
	case isErrorLine(*reply, errFunctionMissing):
		// The sandbox library itself is missing: sandboxCall loads it.
		v, err := s.sandboxCall(ctx, s.storeConn(), []byte(s.srv.sandbox.FunctionReady()), []byte("1"),
			[]byte(s.srv.fnStore), s.rw.KeyPrefix())
		return s.healed(reply, v, err)
	case isErrorLine(*reply, rewrite.FunctionChanged):
		_, v, err := s.listFunctions(ctx, false)
		if !s.healed(reply, v, err) {
			return false
		}
		fn, ok := s.srv.functions.get([]byte(name))
		if !ok {
			*reply = resp.AppendError(nil, "ERR Function not found")
			return false
		}
		*req, _ = withRunFunction(*req, s.srv.sandbox.FunctionRun(fn.flags))
		return true
	case flagRefusal(*reply):
		// Redis refused the run function by its flags before the sandbox
		// could check them: they may be stale (another keyfence replaced
		// the library). Only flags that changed run it again.
		if _, v, err := s.listFunctions(ctx, false); err != nil || v.Type == '-' {
			return false
		}
		fn, ok := s.srv.functions.get([]byte(name))
		if !ok {
			*reply = resp.AppendError(nil, "ERR Function not found")
			return false
		}
		var changed bool
		*req, changed = withRunFunction(*req, s.srv.sandbox.FunctionRun(fn.flags))
		return changed
	}
	return false
}

// flagRefusals are the errors Redis 7.0 gives a script for its flags
// before it runs (scriptPrepareForRun).
var flagRefusals = []string{
	"-ERR Can not execute a script with write flag using *_ro command.",
	"-OOM allow-oom flag is not set on the script",
	"-READONLY Can not run script with write flag on readonly replica",
	"-ERR Can not run script on cluster, 'no-cluster' flag is set.",
	"-MISCONF ",
	"-NOREPLICAS ",
}

func flagRefusal(reply []byte) bool {
	for _, p := range flagRefusals {
		if bytes.HasPrefix(reply, []byte(p)) {
			return true
		}
	}
	return false
}

// healed says whether a healing call succeeded, else puts its error in
// reply.
func (s *session) healed(reply *[]byte, v resp.Value, err error) bool {
	switch {
	case err != nil:
		*reply = resp.AppendError(nil, upstreamErrorText(err))
		return false
	case v.Type == '-':
		*reply = resp.AppendError(nil, string(v.Str))
		return false
	}
	return true
}

// fixFcallError gives an FCALL's error reply Redis's wording.
func (s *session) fixFcallError(reply []byte, name string) []byte {
	if len(reply) == 0 || reply[0] != '-' {
		return reply
	}
	switch {
	case isErrorLine(reply, rewrite.FunctionMissing):
		s.srv.functions.forget(name)
		return resp.AppendError(nil, "ERR Function not found")
	case isErrorLine(reply, rewrite.FunctionsNotLoaded), isErrorLine(reply, rewrite.FunctionChanged):
		return resp.AppendError(nil, "ERR keyfence: the tenant's functions changed or were not loaded upstream when the command ran; run it again")
	}
	return s.srv.sandbox.FixFunctionError(reply, name)
}

// withRunFunction returns the FCALL request req calling fn instead, and
// whether that is another function.
func withRunFunction(req []byte, fn string) ([]byte, bool) {
	args, _, _, err := resp.ParseCommand(req, nil, resp.Limits{MaxRequestBytes: len(req) + 1, MaxArgs: 1 << 30})
	if err != nil || len(args) < 2 || string(args[1]) == fn {
		return req, false
	}
	args[1] = []byte(fn)
	return resp.AppendCommand(nil, args...), true
}

// asciiLower is b lower-cased as C's tolower does: ASCII letters only.
func asciiLower(b []byte) []byte {
	out := make([]byte, len(b))
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		out[i] = c
	}
	return out
}

// cArg is a client's argument echoed in an error as Redis's %s does: up to
// its first NUL, on one line.
func cArg(a []byte) string {
	if i := bytes.IndexByte(a, 0); i >= 0 {
		a = a[:i]
	}
	return sanitize(string(a))
}

// functionHelp is Redis 7.0's FUNCTION HELP.
var functionHelp = []string{
	"FUNCTION <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
	"LOAD [REPLACE] <FUNCTION CODE>",
	"    Create a new library with the given library name and code.",
	"DELETE <LIBRARY NAME>",
	"    Delete the given library.",
	"LIST [LIBRARYNAME PATTERN] [WITHCODE]",
	"    Return general information on all the libraries:",
	"    * Library name",
	"    * The engine used to run the Library",
	"    * Library description",
	"    * Functions list",
	"    * Library code (if WITHCODE is given)",
	"    It also possible to get only function that matches a pattern using LIBRARYNAME argument.",
	"STATS",
	"    Return information about the current function running:",
	"    * Function name",
	"    * Command used to run the function",
	"    * Duration in MS that the function is running",
	"    If no function is running, return nil",
	"    In addition, returns a list of available engines.",
	"KILL",
	"    Kill the current running function.",
	"FLUSH [ASYNC|SYNC]",
	"    Delete all the libraries.",
	"    When called without the optional mode argument, the behavior is determined by the",
	"    lazyfree-lazy-user-flush configuration directive. Valid modes are:",
	"    * ASYNC: Asynchronously flush the libraries.",
	"    * SYNC: Synchronously flush the libraries.",
	"DUMP",
	"    Return a serialized payload representing the current libraries, can be restored using FUNCTION RESTORE command",
	"RESTORE <PAYLOAD> [FLUSH|APPEND|REPLACE]",
	"    Restore the libraries represented by the given payload, it is possible to give a restore policy to",
	"    control how to handle existing libraries (default APPEND):",
	"    * FLUSH: delete all existing libraries.",
	"    * APPEND: appends the restored libraries to the existing libraries. On collision, abort.",
	"    * REPLACE: appends the restored libraries to the existing libraries, On collision, replace the old",
	"      libraries with the new libraries (notice that even on this option there is a chance of failure",
	"      in case of functions name collision with another library).",
	"HELP",
	"    Prints this help.",
}
