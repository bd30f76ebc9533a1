package luasrc

import (
	"errors"
	"strings"
	"testing"
)

// FuzzTransform checks the property keyfence relies on for any text
// Transform accepts: the output keeps every line break, parses as Lua 5.1,
// and reaches no free name but the sandbox root (checkSandboxed). Rejected
// text must be rejected with one of the package's error types.
func FuzzTransform(f *testing.F) {
	for _, s := range []string{
		"return x",
		"local x = x",
		"repeat local y = 1 until y",
		"for i = i, 10 do end",
		"return ...",
		"local a = ...\n(f)()",
		"function a.b:c() return self end",
		"local t = {a = b, [c] = d, e}",
		"--[==[ ]] ]==] return y",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		out, err := Transform(src, sandbox)
		if err != nil {
			if !isRejection(err) {
				t.Fatalf("Transform(%q): unexpected error type %T: %v", src, err, err)
			}
			return
		}
		checkSandboxed(t, src, out)
		if same, err := Transform(src, Options{}); err != nil || string(same) != string(src) {
			t.Fatalf("Transform(%q) with zero Options = %q, %v", src, same, err)
		}
	})
}

// codegenLimits are Lua's refusals that come from its code generator, which
// this package does not model (see parse.go).
var codegenLimits = []string{"function or expression too complex", "constant table overflow", "control structure too long", "code size overflow"}

// FuzzAgainstLua is the differential version of FuzzTransform: Redis's own
// Lua compiles every input, and we must agree on accept/reject (but for
// UnsupportedError and the code generator's limits) and, when both accept,
// on every free name; the transformed text must compile upstream with no
// global access.
func FuzzAgainstLua(f *testing.F) {
	for _, s := range crossCorpus {
		f.Add([]byte(s))
	}
	ctx, c := startRedisF(f)
	f.Fuzz(func(t *testing.T, src []byte) {
		lua := luaCompile(t, ctx, c, src)
		_, err := analyze(src, "", false)
		switch {
		case lua.ok && err == nil:
			checkAgainstLua(t, ctx, c, "input", src, lua)
		case lua.ok:
			if !errors.As(err, new(*UnsupportedError)) {
				t.Fatalf("Lua accepts %q, we refuse: %v", src, err)
			}
		case err == nil:
			for _, m := range codegenLimits {
				if strings.Contains(lua.err, m) {
					return
				}
			}
			t.Fatalf("Lua refuses %q (%s), we accept", src, lua.err)
		}
	})
}
