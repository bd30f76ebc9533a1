package rewrite

import (
	"bytes"
	"crypto/sha1"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/keyfence/keyfence/rewrite/internal/luasrc"
)

// Lua scripts run upstream, where keyfence cannot see the commands they
// call, and Redis 7's Lua has no setfenv: a script's globals are Redis's.
// So keyfence rewrites the script's text before it goes upstream (every
// global name it uses reads a sandbox table instead, loops and functions
// tick a time budget; rewrite/internal/luasrc), and runs it through one
// function library, sandbox.lua, loaded once per upstream: the library
// compiles each rewritten script once, on its own (nothing the script
// says can close code around it), and runs it with the sandbox as its
// environment. Every redis.call is checked there against this package's
// command table, names computed at run time included, and its keys and
// channels prefixed.

//go:embed sandbox.lua
var sandboxTemplate string

// Sandbox is the Lua library every script runs through.
type Sandbox struct {
	Library []byte // the FUNCTION LOAD payload
	Name    string // its library name, versioned by its content
	fn      string // the prefix of its function names
}

// MaxScriptBytes bounds a client's script: its rewriting costs memory in
// proportion (up to ~6x for a script of one-letter globals), and BullMQ's
// largest is 40 KB.
const MaxScriptBytes = 4 << 20

// MaxChunkBytes bounds the rewritten script text the library keeps
// compiled per upstream server, across all tenants; a chunk evicted past
// it is loaded again on its next run.
const MaxChunkBytes = 64 << 20

// MaxFunctionChunkBytes bounds the rewritten library text the sandbox keeps
// loaded per upstream server, across all tenants; past it, other tenants'
// libraries are let go and loaded again from their store when next used.
const MaxFunctionChunkBytes = 64 << 20

// MaxFunctionHeapBytes bounds upstream's Lua heap as the sandbox sees it
// after running a tenant's function or loading a library: past it, the
// registries of every tenant's libraries are let go (sandbox.lua boundHeap).
// It leaves room for the compiled scripts and libraries (MaxChunkBytes,
// MaxFunctionChunkBytes) and for what they hold.
const MaxFunctionHeapBytes = 512 << 20

// NewSandbox builds the library from the command table.
func NewSandbox() *Sandbox { return newSandbox(MaxFunctionHeapBytes) }

// newSandbox builds the library with a bound on Lua's heap of its own (a
// test's lower one).
func newSandbox(heapBytes int) *Sandbox {
	code := sandboxTemplate
	code = strings.Replace(code, "__SPECS__", luaSpecs(), 1)
	code = strings.Replace(code, "__SAFE__", luaSafeGlobals(), 1)
	code = strings.Replace(code, "__MAXBYTES__", strconv.Itoa(MaxChunkBytes), 1)
	code = strings.Replace(code, "__MAXFNBYTES__", strconv.Itoa(MaxFunctionChunkBytes), 1)
	code = strings.Replace(code, "__FNHEAPKIB__", strconv.Itoa(heapBytes>>10), 1)
	code = strings.Replace(code, "__NOTLOADED__", luaQuote(FunctionsNotLoaded), 1)
	code = strings.Replace(code, "__FNMISSING__", luaQuote(FunctionMissing), 1)
	code = strings.Replace(code, "__FNCHANGED__", luaQuote(FunctionChanged), 1)
	sum := sha1.Sum([]byte(code))
	version := hex.EncodeToString(sum[:])[:12]
	fn := "keyfence_" + version
	code = strings.ReplaceAll(code, "__FN__", fn)
	code = strings.Replace(code, "__NAME__", fn, 1)
	return &Sandbox{Library: []byte(code), Name: fn, fn: fn}
}

// Script flags of a #!lua shebang, as bits of the run function's name.
const (
	ScriptNoWrites = 1 << iota
	ScriptAllowOOM
	ScriptAllowStale
	ScriptNoCluster
	ScriptAllowCrossSlot
)

var shebangFlags = map[string]int{
	"no-writes":             ScriptNoWrites,
	"allow-oom":             ScriptAllowOOM,
	"allow-stale":           ScriptAllowStale,
	"no-cluster":            ScriptNoCluster,
	"allow-cross-slot-keys": ScriptAllowCrossSlot,
}

// RunFunction names the library function that runs a script with flags.
func (sb *Sandbox) RunFunction(flags int) string { return sb.fn + "_run_" + strconv.Itoa(flags) }

// LoadFunction names the function that compiles a rewritten script.
func (sb *Sandbox) LoadFunction() string { return sb.fn + "_load" }

// CheckFunction names the function that compiles a client's own text to
// get Lua's exact syntax error.
func (sb *Sandbox) CheckFunction() string { return sb.fn + "_check" }

// Script is a client's script made ready for the sandbox.
type Script struct {
	ClientSHA string // what the client knows it by
	Chunk     []byte // the rewritten text the library compiles
	ChunkSHA  string
	Flags     int  // Script* bits of its shebang
	Shebang   bool // it has one: Redis then checks its flags
}

// ErrScriptSyntax wraps a script that is not a valid Lua 5.1 chunk; the
// client gets Lua's own message, which only upstream's Lua can give.
var ErrScriptSyntax = errors.New("lua syntax error")

// ScriptError is an error Redis gives for the script before running it.
type ScriptError string

func (e ScriptError) Error() string { return string(e) }

var sandboxNames = luasrc.Options{
	Read:     "__kf_E.",
	Write:    "__kf_E.__kf_W.",
	Vararg:   "__kf_E.__kf_V()",
	Tick:     "__kf_E.__kf_T();",
	Reserved: "__kf_",
	TailCall: "__kf_E.__kf_I(",
}

// PrepareScript rewrites a client's script for the sandbox. It returns a
// ScriptError for a shebang Redis would refuse, an error wrapping
// ErrScriptSyntax for text that is not Lua, and another error for a script
// keyfence cannot run (one that uses keyfence's reserved names).
func PrepareScript(src []byte) (*Script, error) {
	if len(src) > MaxScriptBytes {
		return nil, ScriptError("ERR keyfence: a script of " + strconv.Itoa(len(src)) +
			" bytes is larger than the " + strconv.Itoa(MaxScriptBytes>>20) + " MiB keyfence accepts")
	}
	s := &Script{ClientSHA: ScriptSHA(src)}
	body := src
	if bytes.HasPrefix(src, []byte("#!")) {
		line := src
		if nl := bytes.IndexByte(src, '\n'); nl >= 0 {
			line = src[:nl]
		} else {
			return nil, ScriptError("ERR Invalid script shebang")
		}
		flags, err := parseShebang(string(line))
		if err != nil {
			return nil, err
		}
		s.Flags, s.Shebang = flags, true
		// Lua skips a first line starting with '#'; an empty line keeps
		// the numbering of the rest.
		body = src[len(line):]
	}
	out, err := luasrc.Transform(body, sandboxNames)
	if err != nil {
		var se *luasrc.SyntaxError
		if errors.As(err, &se) {
			return nil, fmt.Errorf("%w: %w", ErrScriptSyntax, err)
		}
		return nil, fmt.Errorf("ERR keyfence: %w", err)
	}
	chunk := make([]byte, 0, len(out)+32)
	chunk = append(chunk, "local __kf_E = ...; "...)
	chunk = append(chunk, out...)
	s.Chunk = chunk
	s.ChunkSHA = ScriptSHA(chunk)
	return s, nil
}

// parseShebang reads "#!lua [flags=a,b]" as Redis 7.0 does, with its errors.
func parseShebang(line string) (int, error) {
	line = strings.TrimRight(line, "\r")
	parts := strings.Fields(line[2:])
	if len(parts) == 0 || parts[0] != "lua" {
		engine := line
		if i := strings.IndexByte(line, ' '); i >= 0 {
			engine = line[:i]
		}
		return 0, ScriptError("ERR Unexpected engine in script shebang: " + engine)
	}
	flags := 0
	for _, p := range parts[1:] {
		v, ok := strings.CutPrefix(p, "flags=")
		if !ok {
			return 0, ScriptError("ERR Unknown lua shebang option: " + p)
		}
		for _, f := range strings.Split(v, ",") {
			if f == "" {
				continue
			}
			bit, ok := shebangFlags[f]
			if !ok {
				return 0, ScriptError("ERR Unexpected flag in script shebang: " + f)
			}
			flags |= bit
		}
	}
	return flags, nil
}

// ScriptSHA returns the SHA1 hex that Redis would give the client's script.
func ScriptSHA(script []byte) string {
	sum := sha1.Sum(script)
	return hex.EncodeToString(sum[:])
}

// luaAllowed says whether a script may call cmd through the sandbox: the
// commands whose every effect is on named keys or channels, which the
// sandbox prefixes. Everything keyless reaches beyond the tenant.
func luaAllowed(cmd *Command) bool {
	switch cmd.Name {
	case "sort", "sort_ro", "publish", "spublish":
		return true
	}
	return cmd.Policy == PolicyKeyed && !cmd.HasFlag(FlagNoScript)
}

// luaHarmless are keyless commands a script may call: they show nothing of
// any tenant.
var luaHarmless = map[string]bool{"ping": true, "echo": true, "time": true}

// luaSpecs writes the sandbox's command table: for each Redis command, its
// arity and either where its keys are or why a script may not run it.
func luaSpecs() string {
	names := make([]string, 0, len(commandTable))
	for n := range commandTable {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString("{\n")
	for _, name := range names {
		cmd := commandTable[name]
		b.WriteString("\t[" + luaQuote(name) + "] = ")
		if cmd.Subcommands != nil {
			subs := make([]string, 0, len(cmd.Subcommands))
			for s := range cmd.Subcommands {
				subs = append(subs, s)
			}
			sort.Strings(subs)
			b.WriteString("{sub = {")
			for _, s := range subs {
				b.WriteString("[" + luaQuote(s) + "] = ")
				writeLuaSpec(&b, cmd.Subcommands[s])
				b.WriteString(", ")
			}
			b.WriteString("}},\n")
			continue
		}
		writeLuaSpec(&b, cmd)
		b.WriteString(",\n")
	}
	b.WriteString("}")
	return b.String()
}

// luaRefusal is why a script may not run cmd, or "" when it may.
func luaRefusal(cmd *Command) string {
	switch {
	case cmd.HasFlag(FlagNoScript):
		return "ERR This Redis command is not allowed from script"
	case cmd.LoadsPayload:
		// Outside scripts keyfence lets RESTORE through only where
		// upstream sanitizes payloads; a script's RESTORE it cannot vet.
		return "ERR keyfence: command '" + cmd.Name + "' is not allowed inside scripts: a crafted DUMP payload can crash a Redis that does not sanitize it; run it outside the script"
	case luaAllowed(cmd), luaHarmless[cmd.Name]:
		return ""
	}
	return "ERR keyfence: command '" + strings.ReplaceAll(cmd.Name, "|", " ") +
		"' is not allowed inside scripts: it reaches beyond the tenant's own keys"
}

// writeLuaSpec writes {a = arity, k = {spec…}, r = replykind, sort/store
// flags}, or {a = arity, no = reason}. A spec is {1, index} or {2, keyword,
// startfrom} for the begin search, followed by 1, lastkey, step, limit
// (range) or 2, keynumidx, firstkey, step (keynum).
func writeLuaSpec(b *strings.Builder, cmd *Command) {
	b.WriteString("{a = " + strconv.Itoa(cmd.Arity))
	if why := luaRefusal(cmd); why != "" {
		b.WriteString(", no = " + luaQuote(why) + "}")
		return
	}
	b.WriteString(", k = {")
	if cmd.Name == "publish" {
		// The channel: keyfence's table knows it as no key (SPUBLISH's
		// shard channel is a key-spec of its own).
		b.WriteString("{1, 1, 0, 1, 0, 1, 0}, ")
	}
	if luaAllowed(cmd) {
		for _, sp := range cmd.KeySpecs {
			if sp.BeginSearch.Unknown || sp.FindKeys.Unknown {
				continue // SORT's BY/GET/STORE: handled by markSort
			}
			b.WriteString("{")
			if sp.BeginSearch.Keyword == "" {
				b.WriteString("1, " + strconv.Itoa(sp.BeginSearch.Index) + ", 0, ")
			} else {
				b.WriteString("2, " + luaQuote(strings.ToLower(sp.BeginSearch.Keyword)) + ", " + strconv.Itoa(sp.BeginSearch.StartFrom) + ", ")
			}
			fk := sp.FindKeys
			if fk.KeyNum {
				b.WriteString("2, " + strconv.Itoa(fk.KeyNumIdx) + ", " + strconv.Itoa(fk.FirstKey) + ", " + strconv.Itoa(max(fk.KeyStep, 1)))
			} else {
				b.WriteString("1, " + strconv.Itoa(fk.LastKey) + ", " + strconv.Itoa(max(fk.KeyStep, 1)) + ", " + strconv.Itoa(fk.Limit))
			}
			b.WriteString("}, ")
		}
	}
	b.WriteString("}")
	switch cmd.Reply {
	case ReplyKeyFirst:
		b.WriteString(", r = 1")
	case ReplyStreams:
		b.WriteString(", r = 2")
	}
	switch cmd.Name {
	case "sort":
		b.WriteString(", sort = true, store = true")
	case "sort_ro":
		b.WriteString(", sort = true")
	}
	b.WriteString("}")
}

// luaSafeGlobals are the globals of Redis's script environment a sandboxed
// script gets as they are; the sandbox gives its own redis, coroutine,
// pcall, xpcall, loadstring, load, rawget, rawset, setmetatable, next,
// pairs and _G.
func luaSafeGlobals() string {
	safe := []string{
		"_VERSION", "assert", "bit", "cjson", "cmsgpack", "collectgarbage", "error", "gcinfo",
		"getmetatable", "ipairs", "math", "rawequal", "select", "string", "struct", "table",
		"tonumber", "tostring", "type", "unpack",
	}
	quoted := make([]string, len(safe))
	for i, s := range safe {
		quoted[i] = luaQuote(s)
	}
	return "{" + strings.Join(quoted, ", ") + "}"
}

// luaQuote returns s as a Lua string literal.
func luaQuote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < ' ' || c >= 0x7f:
			b.WriteString("\\" + strconv.Itoa(int(c)))
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// FixScriptError rewrites an error a sandboxed script raised so that it
// reads as Redis's: the run function's name becomes the client's SHA, and
// an error raised inside the library names the client's line instead of
// the library's — the line of the marker the library left, or of the
// "user_script:N:" the message starts with.
func (sb *Sandbox) FixScriptError(msg []byte, clientSHA string) []byte {
	out := replaceRunName(msg, "script: "+sb.fn+"_run_", "script: "+clientSHA)
	return fixLocation(out, "-ERR user_script:", "@user_script")
}
