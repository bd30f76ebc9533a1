package luasrc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// prelude is what keyfence puts before a transformed script, on its first
// line, when it compiles it upstream.
const prelude = "local __kf_E = ...; "

// compileScript asks the real Lua of Redis to compile src, the way keyfence
// will (loadstring with the "@user_script" name). It returns Lua's error
// message, or the compiled chunk as string.dump gives it.
var compileScript = redis.NewScript(`
local f, e = loadstring(ARGV[1], "@user_script")
if not f then return {0, e} end
return {1, string.dump(f)}`)

type luaResult struct {
	ok   bool
	err  string
	dump []byte
}

func luaCompile(t testing.TB, ctx context.Context, c *redis.Client, src []byte) luaResult {
	t.Helper()
	reply, err := compileScript.Run(ctx, c, nil, src).Slice()
	if err != nil {
		t.Fatalf("compiling %.60q upstream: %v", src, err)
	}
	if len(reply) != 2 {
		t.Fatalf("compile reply %v", reply)
	}
	s, _ := reply[1].(string)
	if reply[0].(int64) == 0 {
		return luaResult{err: s}
	}
	return luaResult{ok: true, dump: []byte(s)}
}

// luaGlobals lists, from a string.dump of a Lua 5.1 chunk, the names its
// GETGLOBAL and SETGLOBAL instructions use in every function: the free
// names as the real compiler resolved them.
func luaGlobals(dump []byte) (reads, writes []string, err error) {
	r := &dumpReader{b: dump}
	hdr := r.bytes(12)
	if r.err == nil && string(hdr) != "\x1bLua\x51\x00\x01\x04\x08\x04\x08\x00" {
		return nil, nil, fmt.Errorf("unexpected bytecode header %q", hdr)
	}
	rs, ws := map[string]bool{}, map[string]bool{}
	r.function(rs, ws)
	if r.err != nil {
		return nil, nil, r.err
	}
	if len(r.b) != 0 {
		return nil, nil, fmt.Errorf("%d bytes after the main function", len(r.b))
	}
	return sortedKeys(rs), sortedKeys(ws), nil
}

func sortedKeys(m map[string]bool) []string {
	var s []string
	for k := range m {
		s = append(s, k)
	}
	slices.Sort(s)
	return s
}

// dumpReader reads ldump.c's format for the header above (little endian,
// 4-byte int and Instruction, 8-byte size_t and lua_Number).
type dumpReader struct {
	b   []byte
	err error
}

func (r *dumpReader) bytes(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b) {
		r.err = errors.New("truncated bytecode")
		return nil
	}
	s := r.b[:n]
	r.b = r.b[n:]
	return s
}

func (r *dumpReader) int() int {
	b := r.bytes(4)
	if b == nil {
		return 0
	}
	return int(int32(binary.LittleEndian.Uint32(b)))
}

func (r *dumpReader) string() string {
	b := r.bytes(8)
	if b == nil {
		return ""
	}
	n := binary.LittleEndian.Uint64(b)
	if n == 0 {
		return ""
	}
	if n > uint64(len(r.b)) {
		r.err = errors.New("truncated bytecode string")
		return ""
	}
	s := r.bytes(int(n))
	return string(s[:len(s)-1]) // without the trailing NUL
}

const (
	opGetGlobal = 5
	opSetGlobal = 7
	opSetList   = 34
)

func (r *dumpReader) function(reads, writes map[string]bool) {
	r.string()   // source
	r.bytes(8)   // linedefined, lastlinedefined
	r.bytes(4)   // nups, numparams, is_vararg, maxstacksize
	n := r.int() // code
	code := make([]uint32, 0, max(n, 0))
	for range n {
		if b := r.bytes(4); b != nil {
			code = append(code, binary.LittleEndian.Uint32(b))
		}
	}
	n = r.int() // constants
	k := make([]string, n)
	for i := range n {
		switch t := r.bytes(1); {
		case t == nil:
		case t[0] == 0: // nil
		case t[0] == 1: // boolean
			r.bytes(1)
		case t[0] == 3: // number
			r.bytes(8)
		case t[0] == 4:
			k[i] = r.string()
		default:
			r.err = fmt.Errorf("constant type %d", t[0])
		}
	}
	for i := 0; i < len(code); i++ {
		op, bx, c := code[i]&0x3f, int(code[i]>>14), (code[i]>>14)&0x1ff
		switch {
		case op == opGetGlobal && bx < len(k):
			reads[k[bx]] = true
		case op == opSetGlobal && bx < len(k):
			writes[k[bx]] = true
		case op == opSetList && c == 0:
			i++ // the next word is SETLIST's count, not an instruction
		}
	}
	for range r.int() { // nested functions
		r.function(reads, writes)
	}
	r.bytes(4 * r.int()) // lineinfo
	for range r.int() {  // locvars
		r.string()
		r.bytes(8)
	}
	for range r.int() { // upvalue names
		r.string()
	}
}

// ourGlobals is freeNames split into reads and writes.
func ourGlobals(src []byte) (reads, writes []string, err error) {
	p, err := analyze(src, "", false)
	if err != nil {
		return nil, nil, err
	}
	rs, ws := map[string]bool{}, map[string]bool{}
	for _, e := range p.edits {
		switch e.kind {
		case editRead:
			rs[string(src[e.pos:e.end])] = true
		case editWrite:
			ws[string(src[e.pos:e.end])] = true
		}
	}
	return sortedKeys(rs), sortedKeys(ws), nil
}

// checkAgainstLua compiles src with the real Lua and compares: the same
// free names (reads and writes separately), and the transformed text, with
// keyfence's prelude, compiles and has no global access at all. src must be
// a script both accept.
func checkAgainstLua(t testing.TB, ctx context.Context, c *redis.Client, name string, src []byte, lua luaResult) {
	t.Helper()
	lr, lw, err := luaGlobals(lua.dump)
	if err != nil {
		t.Fatalf("%s: reading Lua's bytecode: %v", name, err)
	}
	or, ow, err := ourGlobals(src)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if !slices.Equal(lr, or) || !slices.Equal(lw, ow) {
		t.Errorf("%s: free names differ from Lua's\n Lua reads %q writes %q\n ours reads %q writes %q\nsrc: %.200q", name, lr, lw, or, ow, src)
	}
	out, err := Transform(src, sandbox)
	var re *ReservedError
	if errors.As(err, &re) {
		return
	}
	if errors.As(err, new(*UnsupportedError)) {
		t.Logf("%.60q: Transform refuses it: %v", name, err)
		return
	}
	if err != nil {
		t.Errorf("%s: Transform: %v", name, err)
		return
	}
	checkSandboxed(t, src, out)
	wrapped := luaCompile(t, ctx, c, append([]byte(prelude), out...))
	if !wrapped.ok {
		t.Errorf("%s: transformed script does not compile upstream: %s\nout: %.300q", name, wrapped.err, out)
		return
	}
	wr, ww, err := luaGlobals(wrapped.dump)
	if err != nil {
		t.Fatalf("%s: reading Lua's bytecode: %v", name, err)
	}
	if len(wr)+len(ww) != 0 {
		t.Errorf("%s: transformed script still reaches globals: reads %q writes %q\nout: %.300q", name, wr, ww, out)
	}
}

func startRedis(t *testing.T) (context.Context, *redis.Client) {
	srv := redistest.StartT(t, redistest.Options{})
	return t.Context(), srv.Client()
}

func startRedisF(f *testing.F) (context.Context, *redis.Client) {
	srv := redistest.StartT(f, redistest.Options{})
	return f.Context(), srv.Client()
}

// TestLuaGlobalsReader keeps the bytecode comparison honest: it must see
// the globals Lua compiles, in nested functions too.
func TestLuaGlobalsReader(t *testing.T) {
	ctx, c := startRedis(t)
	lua := luaCompile(t, ctx, c, []byte("x = y local z = w.v function f() return u, (function() q = 1 end) end"))
	if !lua.ok {
		t.Fatal(lua.err)
	}
	reads, writes, err := luaGlobals(lua.dump)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"u", "w", "y"}; !slices.Equal(reads, want) {
		t.Errorf("reads %q, want %q", reads, want)
	}
	if want := []string{"f", "q", "x"}; !slices.Equal(writes, want) {
		t.Errorf("writes %q, want %q", writes, want)
	}
}
