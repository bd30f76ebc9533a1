package luasrc

import "testing"

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
