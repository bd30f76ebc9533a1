package rewrite

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/keyfence/keyfence/resp"
	"github.com/keyfence/keyfence/rewrite/internal/luasrc"
)

// Redis 7 functions, per tenant.
//
// Redis keeps one namespace of libraries and one of function names for the
// whole server, and runs a library's code with Redis's own globals. So a
// tenant's library never becomes an upstream library: keyfence rewrites its
// text as it rewrites an EVAL script (every global read goes to a sandbox
// table, loops and functions tick the budget) and hands it to the sandbox
// library (sandbox.lua), which runs its top-level code in an environment
// that holds only what Redis offers a library while it loads (a redis table
// with register_function and log), keeps the functions it registers in a
// registry of the tenant's own, and at FCALL runs them with the same
// environment and redis.call wrapper as EVAL scripts: keys prefixed,
// commands checked, nothing beyond the tenant reachable.
//
// The sandbox's registry lives in upstream's Lua state, which a restart, a
// failover or a new keyfence version empties. What survives is a hash
// upstream, FunctionStoreKey: library name → the code the client gave, and
// "#gen" → a token that every change replaces. Every operation of the
// sandbox first compares the token with the one its registry was built
// from, and on a difference keyfence rebuilds the registry from the hash
// (proxy/functions.go), so every keyfence of a tenant, whatever its version,
// sees the same libraries, as every client of one Redis does.

// FunctionStoreKey returns the upstream hash that keeps the libraries of
// the tenant whose keys start with prefix. No tenant can name it: a key
// format may not hold '{' outside "{tenant}" (Prefix), so no tenant's
// prefix, and so no key a tenant sends, starts with '{'.
func FunctionStoreKey(prefix string) string { return "{keyfence}:functions:" + prefix }

// Library is a tenant's function library made ready for the sandbox.
type Library struct {
	Name string // as the #!lua line names it
	Code []byte // the client's text, as given: LIST WITHCODE and DUMP show it
	// Chunk is what the sandbox compiles and runs; ChunkFor says why it
	// may be one of the sandbox's markers instead.
	Chunk []byte
}

// LibraryError is an error Redis gives for a library's #!lua line, before
// it looks at anything else.
type LibraryError string

func (e LibraryError) Error() string { return string(e) }

// Chunk markers: what the sandbox does with a library instead of compiling
// it. Their first byte can never start a rewritten chunk ("local …").
const (
	// chunkSyntax: keyfence's parser refused the code; the sandbox compiles
	// the client's own text (never running it) for Lua's exact message.
	chunkSyntax = ""
	// chunkMetaError + text: the library fails with text where Redis reads
	// its metadata, before "already exists" is checked.
	chunkMetaError = "!"
	// chunkCompileError + text: it fails with text where Redis compiles it.
	chunkCompileError = "?"
)

// ErrLibraryName is Redis's error for a library or function name that is
// not made of letters, digits and underscores (Redis says "Library" for
// both).
const ErrLibraryName = "ERR Library names can only contain letters, numbers, or underscores(_) and must be at least one character long"

// ParseLibrary reads a library's #!lua line as Redis 7.0 does and rewrites
// its code for the sandbox. A LibraryError is Redis's error for the
// metadata. Otherwise the Library is returned even when its code cannot
// run: Chunk then holds the marker of its error, which Redis gives only
// after checking that the library does not exist yet.
func ParseLibrary(code []byte) (*Library, error) {
	name, body, err := parseLibraryMeta(code)
	if err != nil {
		return nil, err
	}
	lib := &Library{Name: name, Code: code}
	if len(code) > MaxScriptBytes {
		lib.Chunk = []byte(chunkCompileError + "ERR keyfence: a function library of " + strconv.Itoa(len(code)) +
			" bytes is larger than the " + strconv.Itoa(MaxScriptBytes>>20) + " MiB keyfence accepts")
		return lib, nil
	}
	// Redis compiles the code from the newline that ends the #!lua line, so
	// line numbers count it; the rewritten chunk keeps every line in place.
	out, err := luasrc.Transform(body, sandboxNames)
	if err != nil {
		var se *luasrc.SyntaxError
		if errors.As(err, &se) {
			lib.Chunk = []byte(chunkSyntax)
			return lib, nil
		}
		lib.Chunk = []byte(chunkCompileError + "ERR keyfence: " + sanitizeLine(err.Error()))
		return lib, nil
	}
	chunk := make([]byte, 0, len(out)+32)
	chunk = append(chunk, "local __kf_E = ...; "...)
	lib.Chunk = append(chunk, out...)
	return lib, nil
}

// MetaErrorChunk is the chunk of a library that fails with msg where Redis
// reads its metadata: FUNCTION RESTORE reports the first failing library
// of the payload, whatever went wrong with it.
func MetaErrorChunk(msg string) []byte { return []byte(chunkMetaError + msg) }

// parseLibraryMeta is Redis's functionExtractLibMetaData followed by its
// checks of the name and the engine, with their errors, in their order.
func parseLibraryMeta(code []byte) (name string, body []byte, err error) {
	if !bytes.HasPrefix(code, []byte("#!")) {
		return "", nil, LibraryError("ERR Missing library metadata")
	}
	// Redis looks for the newline with strchr: a NUL before it ends the
	// string.
	nl := bytes.IndexByte(code, '\n')
	if nl < 0 || bytes.IndexByte(code[:nl], 0) >= 0 {
		return "", nil, LibraryError("ERR Invalid library metadata")
	}
	line := append([]byte(nil), code[:nl]...) // SplitArgs rewrites it
	parts, ok := resp.SplitArgs(line)
	if !ok || len(parts) == 0 {
		return "", nil, LibraryError("ERR Invalid library metadata")
	}
	engine := string(parts[0][min(2, len(parts[0])):])
	var named bool
	for _, p := range parts[1:] {
		if len(p) >= 5 && strings.EqualFold(string(p[:5]), "name=") {
			if named {
				return "", nil, LibraryError("ERR Invalid metadata value, name argument was given multiple times")
			}
			name, named = string(p[5:]), true
			continue
		}
		return "", nil, LibraryError("ERR Invalid metadata value given: " + sanitizeLine(cString(p)))
	}
	if !named {
		return "", nil, LibraryError("ERR Library name was not given")
	}
	if !ValidFunctionName(name) {
		return "", nil, LibraryError(ErrLibraryName)
	}
	if !strings.EqualFold(engine, "lua") {
		return "", nil, LibraryError("ERR Engine '" + sanitizeLine(engine) + "' not found")
	}
	return name, code[nl:], nil
}

// ValidFunctionName says whether Redis takes name for a library or a
// function: letters, digits and underscores, at least one.
func ValidFunctionName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// cString is b as C's %s prints it: up to its first NUL.
func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// sanitizeLine keeps an error text on one RESP line, as Redis's error
// replies do.
func sanitizeLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, s)
}

// Function flags, as bits of the sandbox's run functions (the same bits as
// a script's shebang flags), in the order FUNCTION LIST shows them.
var functionFlagNames = []string{"no-writes", "allow-oom", "allow-stale", "no-cluster", "allow-cross-slot-keys"}

// FunctionFlagNames returns the names of the flags set in mask, in Redis's
// order.
func FunctionFlagNames(mask int) []string {
	var out []string
	for i, n := range functionFlagNames {
		if mask&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return out
}

// Names of the sandbox's function-registry operations (sandbox.lua).
func (sb *Sandbox) FunctionRun(flags int) string { return sb.fn + "_frun_" + strconv.Itoa(flags) }
func (sb *Sandbox) FunctionLoad() string         { return sb.fn + "_fload" }
func (sb *Sandbox) FunctionDelete() string       { return sb.fn + "_fdelete" }
func (sb *Sandbox) FunctionFlush() string        { return sb.fn + "_fflush" }
func (sb *Sandbox) FunctionList() string         { return sb.fn + "_flist" }
func (sb *Sandbox) FunctionReady() string        { return sb.fn + "_fready" }
func (sb *Sandbox) FunctionInstall() string      { return sb.fn + "_finstall" }

// Errors the sandbox's function operations return to keyfence, never to a
// client: keyfence acts on them (proxy/functions.go).
const (
	// FunctionsNotLoaded: the sandbox's registry of the tenant is missing
	// or older than the store; keyfence rebuilds it and runs the command
	// again.
	FunctionsNotLoaded = "NOSCRIPT keyfence: tenant functions not loaded"
	// FunctionChanged: the function's flags differ from those keyfence
	// chose its run function by; keyfence reads them again.
	FunctionChanged = "NOSCRIPT keyfence: function flags changed"
	// FunctionMissing: the tenant has no such function ("ERR Function not
	// found" to the client; upstream's own means the sandbox is missing).
	FunctionMissing = "NOSCRIPT keyfence: function not found"
)

// FixFunctionError rewrites an error a tenant's function raised through
// the sandbox so that it reads as Redis's: the run function's name becomes
// the function's, and the location names the client's line. The sandbox
// compiles libraries as "=user_function", so that an error raised in the
// client's own code ("on =user_function:N") is told from one raised in the
// sandbox library ("on @user_function:N", whose line is the library's).
func (sb *Sandbox) FixFunctionError(msg []byte, name string) []byte {
	out := replaceRunName(msg, "script: "+sb.fn+"_frun_", "script: "+name)
	if i := bytes.Index(out, []byte(", on =user_function:")); i >= 0 {
		out[i+len(", on ")] = '@'
		return out
	}
	return fixLocation(out, "-ERR user_function:", "@user_function")
}

// replaceRunName replaces from, followed by digits, with to.
func replaceRunName(msg []byte, from, to string) []byte {
	i := bytes.Index(msg, []byte(from))
	if i < 0 {
		return msg
	}
	j := i + len(from)
	for j < len(msg) && msg[j] >= '0' && msg[j] <= '9' {
		j++
	}
	return append(append(msg[:i:i], to...), msg[j:]...)
}

// fixLocation rewrites ", on @user_function:N." — the sandbox library's
// line — to the client's line: the one of the marker the library left, or
// of the "<chunk>:N:" the message starts with (msgPrefix), or none.
func fixLocation(out []byte, msgPrefix, chunk string) []byte {
	loc := []byte(", on @user_function:")
	k := bytes.LastIndex(out, loc)
	if k < 0 {
		return out
	}
	line := ""
	if i := bytes.Index(out, []byte(" [kf:line=")); i >= 0 && i < k {
		if j := bytes.IndexByte(out[i:k], ']'); j >= 0 {
			line = string(out[i+len(" [kf:line=") : i+j])
			out = append(out[:i:i], out[i+j+1:]...)
			k -= j + 1
		}
	} else if rest, ok := bytes.CutPrefix(out, []byte(msgPrefix)); ok {
		if n := bytes.IndexByte(rest, ':'); n > 0 {
			line = string(rest[:n])
		}
	}
	end := k + len(loc)
	for end < len(out) && out[end] >= '0' && out[end] <= '9' {
		end++
	}
	if end < len(out) && out[end] == '.' {
		end++
	}
	repl := "." // after a tail call Lua keeps no caller line: name none
	if line != "" && line != "?" {
		repl = ", on " + chunk + ":" + line + "."
	}
	return append(out[:k:k], append([]byte(repl), out[end:]...)...)
}

// ErrFunctionDump is Redis's error for a FUNCTION RESTORE payload whose
// footer is wrong.
var ErrFunctionDump = errors.New("ERR DUMP payload version or checksum are wrong")

// FunctionDumpError is an error Redis gives for a payload it has begun to
// load: it comes after the errors of the libraries before it.
type FunctionDumpError string

func (e FunctionDumpError) Error() string { return string(e) }

func init() {
	// The run functions' flag bits are the shebang's (sandbox.go).
	for i, n := range functionFlagNames {
		if shebangFlags[n] != 1<<i {
			panic(fmt.Sprintf("function flag %s: bit %d, shebang bit %d", n, 1<<i, shebangFlags[n]))
		}
	}
}
