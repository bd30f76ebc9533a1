package luasrc

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

// sandbox is the Options keyfence uses; every test that transforms uses it.
var sandbox = Options{
	Read:     "__kf_E.",
	Write:    "__kf_E.__kf_W.",
	Vararg:   "__kf_E.__kf_V()",
	Tick:     "__kf_E.__kf_T();",
	Reserved: "__kf_",
}

// sandboxRoot is the only free name a transformed script may have.
const sandboxRoot = "__kf_E"

// checkSandboxed asserts the property keyfence relies on: out has the same
// line breaks as src, parses as Lua 5.1, and reaches nothing but the sandbox
// root and no main-chunk `...`.
func checkSandboxed(t testing.TB, src, out []byte) {
	t.Helper()
	if a, b := lineBreaks(src), lineBreaks(out); a != b {
		t.Fatalf("line breaks: input %d, output %d\nout: %q", a, b, out)
	}
	for _, c := range []string{"\n", "\r"} {
		if a, b := strings.Count(string(src), c), strings.Count(string(out), c); a != b {
			t.Fatalf("%q bytes: input %d, output %d", c, a, b)
		}
	}
	names, dots, err := freeNames(out)
	if err != nil {
		t.Fatalf("output does not parse: %v\nout: %q", err, out)
	}
	if len(names) > 1 || len(names) == 1 && names[0] != sandboxRoot {
		t.Fatalf("output has free names %q, want only %s\nout: %q", names, sandboxRoot, out)
	}
	if dots != 0 {
		t.Fatalf("output uses ... in the main chunk %d times\nout: %q", dots, out)
	}
}

// lineBreaks counts line breaks the way llex.c's inclinenumber does.
func lineBreaks(b []byte) int {
	n := 0
	for i := 0; i < len(b); i++ {
		if isNewline(b[i]) {
			if i+1 < len(b) && isNewline(b[i+1]) && b[i+1] != b[i] {
				i++
			}
			n++
		}
	}
	return n
}

func TestTransform(t *testing.T) {
	tests := []struct {
		name, src, want string
	}{
		{"global write", `x = 1`, `__kf_E.__kf_W.x = 1`},
		{"global read", `return x`, `return __kf_E.x`},
		{"local x = x sees the outer x", `local x = x`, `local x = __kf_E.x`},
		{"local then read", `local x = 1 return x`, `local x = 1 return x`},
		{"local after its statement", `local x = 1; local y = x; return y, z`, `local x = 1; local y = x; return y, __kf_E.z`},
		{"local function sees itself", `local function f() return f end`, `local function f()__kf_E.__kf_T(); return f end`},
		{"local f = function does not", `local f = function() return f end`, `local f = function()__kf_E.__kf_T(); return __kf_E.f end`},
		{"repeat: until sees the body's locals", `repeat local y = 1 until y`, `repeat __kf_E.__kf_T(); local y = 1 until y`},
		{"repeat: body local gone after", `repeat local y = 1 until y return y`, `repeat __kf_E.__kf_T(); local y = 1 until y return __kf_E.y`},
		{"numeric for: start is outside the loop", `for i = i, 10 do end`, `for i = __kf_E.i, 10 do __kf_E.__kf_T(); end`},
		{"numeric for: variable in body only", `for i = 1, n, s do x = i end return i`, `for i = 1, __kf_E.n, __kf_E.s do __kf_E.__kf_T(); __kf_E.__kf_W.x = i end return __kf_E.i`},
		{"generic for", `for k, v in pairs(t) do print(k, v) end`, `for k, v in __kf_E.pairs(__kf_E.t) do __kf_E.__kf_T(); __kf_E.print(k, v) end`},
		{"generic for: explist before the names", `for k in k do end`, `for k in __kf_E.k do __kf_E.__kf_T(); end`},
		{"while", `while true do break end`, `while true do __kf_E.__kf_T(); break end`},
		{"while cond", `while x do end`, `while __kf_E.x do __kf_E.__kf_T(); end`},
		{"plain do block: no tick, scoped", `do local a = 1 end return a`, `do local a = 1 end return __kf_E.a`},
		{"if scoping", `if a then local b = 1 elseif b then local c = b else return c end`, `if __kf_E.a then local b = 1 elseif __kf_E.b then local c = __kf_E.b else return __kf_E.c end`},
		{"redis.call", `return redis.call('GET', KEYS[1])`, `return __kf_E.redis.call('GET', __kf_E.KEYS[1])`},
		{"method calls", `local s = "x" s:upper() obj:method(a)`, `local s = "x" s:upper() __kf_E.obj:method(__kf_E.a)`},
		{"method on call result", `f():g():h{}`, `__kf_E.f():g():h{}`},
		{"a.b.c = 1 reads a", `a.b.c = 1`, `__kf_E.a.b.c = 1`},
		{"index targets", `x[y] = z`, `__kf_E.x[__kf_E.y] = __kf_E.z`},
		{"multiple targets", `a, b = c, d`, `__kf_E.__kf_W.a, __kf_E.__kf_W.b = __kf_E.c, __kf_E.d`},
		{"mixed targets", `local a; a, b, c.d = 1, 2, 3`, `local a; a, __kf_E.__kf_W.b, __kf_E.c.d = 1, 2, 3`},
		{"function statement writes", `function x() end`, `function __kf_E.__kf_W.x()__kf_E.__kf_T(); end`},
		{"function a.b:c reads a", `function a.b:c() return self end`, `function __kf_E.a.b:c()__kf_E.__kf_T(); return self end`},
		{"function a.b reads a", `function a.b(x) return x, y end`, `function __kf_E.a.b(x)__kf_E.__kf_T(); return x, __kf_E.y end`},
		{"function statement on a local", `local m = {} function m.f() end local g function g() end`, `local m = {} function m.f()__kf_E.__kf_T(); end local g function g()__kf_E.__kf_T(); end`},
		{"self only in methods", `function t:m() return self end function t.f() return self end`, `function __kf_E.t:m()__kf_E.__kf_T(); return self end function __kf_E.t.f()__kf_E.__kf_T(); return __kf_E.self end`},
		{"upvalues are not free", `local a function f() return function() return a, b end end`, `local a function __kf_E.__kf_W.f()__kf_E.__kf_T(); return function()__kf_E.__kf_T(); return a, __kf_E.b end end`},
		{"parameters", `local function f(a, b) return a, b, c end`, `local function f(a, b)__kf_E.__kf_T(); return a, b, __kf_E.c end`},
		{"table keys are not variables", `local t = {a = b, [c] = d, e; f}`, `local t = {a = __kf_E.b, [__kf_E.c] = __kf_E.d, __kf_E.e; __kf_E.f}`},
		{"table a == b is an expression", `local t = {a == b}`, `local t = {__kf_E.a == __kf_E.b}`},
		{"nested table keys", `return {x = {y = z}}`, `return {x = {y = __kf_E.z}}`},
		{"call with table and string", `f{a=1} g"s" h[[s]] i'x'`, `__kf_E.f{a=1} __kf_E.g"s" __kf_E.h[[s]] __kf_E.i'x'`},
		{"main chunk vararg", `return ...`, `return __kf_E.__kf_V()`},
		{"main chunk vararg glued", `return...`, `return __kf_E.__kf_V()`},
		{"vararg then concat", `return .....'x'`, `return __kf_E.__kf_V()..'x'`},
		{"vararg in table and select", `local n = select('#', ...) local t = {...}`, `local n = __kf_E.select('#', __kf_E.__kf_V()) local t = {__kf_E.__kf_V()}`},
		{"vararg inside a function stays", `return function(...) return ... end`, `return function(...)__kf_E.__kf_T(); return ... end`},
		{"vararg function has a local arg", `local function f(...) return arg end return arg`, `local function f(...)__kf_E.__kf_T(); return arg end return __kf_E.arg`},
		{"vararg before a parenthesised statement", "local a = ...\n(f)()", "local a = __kf_E.__kf_V();\n(__kf_E.f)()"},
		{"vararg before ( on the same line", `local a = ... (f)()`, `local a = __kf_E.__kf_V(); (__kf_E.f)()`},
		{"vararg in until before (", `repeat until ... (f)()`, `repeat __kf_E.__kf_T(); until __kf_E.__kf_V(); (__kf_E.f)()`},
		{"escaped quote", `local s = "\"" .. x`, `local s = "\"" .. __kf_E.x`},
		{"escaped backslash", `local s = '\\' .. x`, `local s = '\\' .. __kf_E.x`},
		{"escaped quote then code-like text", `local s = "\" x = 1 \"" return y`, `local s = "\" x = 1 \"" return __kf_E.y`},
		{"string containing --", `local s = "-- not a comment" .. x`, `local s = "-- not a comment" .. __kf_E.x`},
		{"string with escaped newline", "local s = \"a\\\nb\" return x", "local s = \"a\\\nb\" return __kf_E.x"},
		{"decimal escapes", `local s = "\65\066\255\0" return x`, `local s = "\65\066\255\0" return __kf_E.x`},
		{"comment containing code", "-- x = 1\nreturn y", "-- x = 1\nreturn __kf_E.y"},
		{"long comment containing code", "--[[ x = 1\n end ]] return y", "--[[ x = 1\n end ]] return __kf_E.y"},
		{"long comment level 2 with ]]", "--[==[ x = 1 ]] ]=] end ]==] return y", "--[==[ x = 1 ]] ]=] end ]==] return __kf_E.y"},
		{"--[= is a short comment", "--[= x\nreturn y", "--[= x\nreturn __kf_E.y"},
		{"--[ is a short comment", "--[ x ]]\nreturn y", "--[ x ]]\nreturn __kf_E.y"},
		{"long string with ]]-like text and end", `local s = [==[ ]] end ]=] x ]==] return z`, `local s = [==[ ]] end ]=] x ]==] return __kf_E.z`},
		{"long string ends at first ]]", `local s = [[ a ]=] end ]] return z`, `local s = [[ a ]=] end ]] return __kf_E.z`},
		{"long string first newline", "local s = [[\nx]] return y", "local s = [[\nx]] return __kf_E.y"},
		{"numbers", `return 0x10, 0XfF, 1e5, 1E+5, 2e-3, .5, 5., 3.25, 0x1p4`, `return 0x10, 0XfF, 1e5, 1E+5, 2e-3, .5, 5., 3.25, 0x1p4`},
		{"number then concat needs space", `return 1 ..x`, `return 1 ..__kf_E.x`},
		{"operators", `return a+b-c*d/e%f^g..h==i~=j<k<=l>m>=n and o or not p, -q, #r`,
			`return __kf_E.a+__kf_E.b-__kf_E.c*__kf_E.d/__kf_E.e%__kf_E.f^__kf_E.g..__kf_E.h==__kf_E.i~=__kf_E.j<__kf_E.k<=__kf_E.l>__kf_E.m>=__kf_E.n and __kf_E.o or not __kf_E.p, -__kf_E.q, #__kf_E.r`},
		{"tick after do glued to (", `while x do(f)() end`, `while __kf_E.x do __kf_E.__kf_T();(__kf_E.f)() end`},
		{"tick after repeat glued", "repeat\nuntil true", "repeat __kf_E.__kf_T();\nuntil true"},
		{"tick after ) before a name", `local function f()return 1 end`, `local function f()__kf_E.__kf_T();return 1 end`},
		{"CRLF and lone CR line breaks", "local a = 1\r\nlocal b = 2\rc = 3\n\rreturn_ = d", "local a = 1\r\nlocal b = 2\r__kf_E.__kf_W.c = 3\n\r__kf_E.__kf_W.return_ = __kf_E.d"},
		{"shebang line replaced by the caller", "\nreturn x", "\nreturn __kf_E.x"},
		{"keyword-like names", `local endx, _do, If = End, DO, iF`, `local endx, _do, If = __kf_E.End, __kf_E.DO, __kf_E.iF`},
		{"semicolons", `local a = 1; b = 2; return;`, `local a = 1; __kf_E.__kf_W.b = 2; return;`},
		{"break as last statement of an inner block", `for i = 1, 2 do if i then break end end`, `for i = 1, 2 do __kf_E.__kf_T(); if i then break end end`},
		{"return in a do block", `do return end x()`, `do return end __kf_E.x()`},
		{"non-ASCII inside strings and comments", "-- é\nreturn 'ü', x", "-- é\nreturn 'ü', __kf_E.x"},
		{"NUL inside strings and comments", "-- \x00\nreturn '\x00', [[\x00]], x", "-- \x00\nreturn '\x00', [[\x00]], __kf_E.x"},
		{"reserved text in strings and comments", `-- __kf_E
return "__kf_E", x`, `-- __kf_E
return "__kf_E", __kf_E.x`},
		{"table constructor local name then ( on the next line (look-ahead)", "local f local t = { f\n(1) }", "local f local t = { f\n(1) }"},
		{"empty chunk", ``, ``},
		{"whitespace only", " \t\v\f\n", " \t\v\f\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := Transform([]byte(tt.src), sandbox)
			if err != nil {
				t.Fatalf("Transform(%q): %v", tt.src, err)
			}
			if string(out) != tt.want {
				t.Fatalf("Transform(%q)\n got %q\nwant %q", tt.src, out, tt.want)
			}
			checkSandboxed(t, []byte(tt.src), out)
			same, err := Transform([]byte(tt.src), Options{})
			if err != nil || string(same) != tt.src {
				t.Fatalf("Transform with zero Options = %q, %v; want the input", same, err)
			}
		})
	}
}

func TestTransformErrors(t *testing.T) {
	var (
		syntax      *SyntaxError
		reserved    *ReservedError
		unsupported *UnsupportedError
	)
	tests := []struct {
		name, src string
		target    any
		line      int
	}{
		{"closing the wrapper", "return 1 end; redis.call('FLUSHALL') local function x()", &syntax, 1},
		{"stray end", "return 1 end", &syntax, 1},
		{"statement after return", "return 1 return 2", &syntax, 1},
		{"return return", "return return", &syntax, 1},
		{"break outside a loop", "break", &syntax, 1},
		{"break in a function inside a loop", "while true do local function f() break end end", &syntax, 1},
		{"statement after break", "while true do break x() end", &syntax, 1},
		{"goto (5.2)", "goto done", &syntax, 1},
		{"label (5.2)", "::done::", &syntax, 1},
		{"floor division (5.3)", "return 7 // 2", &syntax, 1},
		{"bitwise and (5.3)", "return 7 & 2", &syntax, 1},
		{"bitwise xor (5.3)", "return 7 ~ 2", &syntax, 1},
		{"attribs (5.4)", "local x <const> = 1", &syntax, 1},
		{"call result assigned", "f() = 1", &syntax, 1},
		{"parenthesised target", "(a) = 1", &syntax, 1},
		{"field alone", "a.b", &syntax, 1},
		{"name alone", "x", &syntax, 1},
		{"parenthesised call alone", "(f())", &syntax, 1},
		{"empty statement", "x(); ;", &syntax, 1},
		{"double semicolon", "x();;", &syntax, 1},
		{"vararg outside a vararg function", "local g = function() return ... end", &syntax, 1},
		{"vararg after a named parameter list", "local function f(a) return ... end", &syntax, 1},
		{"parameter after vararg", "local function f(..., a) end", &syntax, 1},
		{"malformed number 1..2", "return 1..2", &syntax, 1},
		{"malformed number 3.x", "return 3.x", &syntax, 1},
		{"malformed number 1e", "return 1e", &syntax, 1},
		{"malformed number 0x", "return 0x", &syntax, 1},
		{"malformed number 0x1p", "return 0x1p", &syntax, 1},
		{"malformed number 08a", "return 08a", &syntax, 1},
		{"unfinished string", `x = "abc`, &syntax, 1},
		{"newline in string", "x = \"a\nb\"", &syntax, 1},
		{"CR in string", "x = 'a\rb'", &syntax, 1},
		{"backslash at end", `x = "a\`, &syntax, 1},
		{"escape too large", `x = "\256"`, &syntax, 1},
		{"unfinished long string", "x = [==[ abc ]=]\n\n", &syntax, 3},
		{"unfinished long comment", "--[[ x\n", &syntax, 2},
		{"invalid long string delimiter", "x = [=x", &syntax, 1},
		{"ambiguous call", "local t = f\n(g)()", &syntax, 2},
		{"ambiguous call after a long string", "f [[a\nb]]\n(g)()", &syntax, 3},
		{"shebang not replaced", "#!/usr/bin/lua\nreturn 1", &syntax, 1},
		{"unexpected symbol", "x = 1 + ", &syntax, 1},
		{"for without in", "for i do end", &syntax, 1},
		{"for with one bound", "for i = 1 do end", &syntax, 1},
		{"extra end after a function", "local function f() end end", &syntax, 1},
		{"missing end", "if x then\n\n", &syntax, 3},
		{"non-ASCII name", "local é = 1", &syntax, 1},
		{"dollar", "$x = 1", &syntax, 1},
		{"method without arguments", "a:b", &syntax, 1},
		{"method call as target", "a:b() = 1", &syntax, 1},
		{"too deep", strings.Repeat("(", 300) + "1" + strings.Repeat(")", 300), &syntax, 1},
		{"too deep unary", "return " + strings.Repeat("- ", 300) + "1", &syntax, 1},
		{"too many locals in a function", "local function f() local " + strings.Repeat("a, ", 200) + "a end", &syntax, 1},
		{"too many upvalues in a nested function", "local function f() " + manyUpvalues(61) + " end", &unsupported, 1},
		{"201 locals: the sandbox's limit comes first", "local " + strings.Repeat("a, ", 200) + "a", &unsupported, 1},
		{"200 locals: no room for the sandbox's", "local " + strings.Repeat("a, ", 199) + "a", &unsupported, 1},
		{"60 upvalues: no room for the sandbox's", manyUpvalues(60), &unsupported, 1},
		{"reserved local", "local __kf_E = 1", &reserved, 1},
		{"reserved global", "__kf_E.redis.call('FLUSHALL')", &reserved, 1},
		{"reserved field", "x = 1\nt.__kf_x = 1", &reserved, 2},
		{"reserved method", "x:__kf_m()", &reserved, 1},
		{"reserved table key", "t = {__kf_y = 1}", &reserved, 1},
		{"reserved parameter", "function f(__kf_a) end", &reserved, 1},
		{"reserved exact prefix", "local __kf_ = 1", &reserved, 1},
		{"nested [[ in a long string", "return [[a [[ b]]", &unsupported, 1},
		{"nested [[ in a long comment", "--[[\n [[ ]] return 1", &unsupported, 2},
		{"NUL after a number", "return 1\x00abc", &unsupported, 1},
		{"NUL after a dot", "return 'a' .\x00 'b'", &unsupported, 1},
		{"NUL between statements", "x()\x00", &unsupported, 1},
		{"free name called on the next line in a constructor", "local t = { f\n(1) }", &unsupported, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := Transform([]byte(tt.src), sandbox)
			if err == nil {
				t.Fatalf("Transform(%q) = %q, want an error", tt.src, out)
			}
			if !errors.As(err, tt.target) {
				t.Fatalf("Transform(%q): %T %v, want %T", tt.src, err, err, tt.target)
			}
			var line int
			switch e := err.(type) {
			case *SyntaxError:
				line = e.Line
			case *ReservedError:
				line = e.Line
			case *UnsupportedError:
				line = e.Line
			}
			if line != tt.line {
				t.Fatalf("Transform(%q): %v: line %d, want %d", tt.src, err, line, tt.line)
			}
		})
	}
}

// manyUpvalues is a function that uses n locals of its enclosing function.
func manyUpvalues(n int) string {
	var b strings.Builder
	names := make([]string, n)
	for i := range names {
		names[i] = "v" + strings.Repeat("x", i)
		b.WriteString("local " + names[i] + " ")
	}
	b.WriteString("return function() return " + strings.Join(names, ",") + " end")
	return b.String()
}

// TestLimitsAtTheEdge: Lua's limits hold exactly without the sandbox
// (freeNames), and the sandbox's local and upvalue fit in with it.
func TestLimitsAtTheEdge(t *testing.T) {
	for _, tt := range []struct{ lua, sandboxed string }{
		{"local " + strings.Repeat("a, ", 199) + "a", "local " + strings.Repeat("a, ", 198) + "a"},
		{"local function f() local " + strings.Repeat("a, ", 199) + "a end", "local function f() local " + strings.Repeat("a, ", 199) + "a end"},
		{manyUpvalues(60), manyUpvalues(59)},
		{strings.Repeat("(", 190) + "f" + strings.Repeat(")", 190) + "()", strings.Repeat("(", 190) + "f" + strings.Repeat(")", 190) + "()"},
	} {
		if _, _, err := freeNames([]byte(tt.lua)); err != nil {
			t.Errorf("freeNames(%.40q…): %v", tt.lua, err)
		}
		out, err := Transform([]byte(tt.sandboxed), sandbox)
		if err != nil {
			t.Fatalf("Transform(%.40q…): %v", tt.sandboxed, err)
		}
		checkSandboxed(t, []byte(tt.sandboxed), out)
	}
}

func TestOptionsChecked(t *testing.T) {
	for _, o := range []Options{
		{Read: "__kf_E"},              // would glue to the name
		{Read: "a..b."},               // not a field path
		{Write: "end."},               // keyword
		{Write: "1x."},                // not a name
		{Tick: "t()\n"},               // moves lines
		{Vararg: "v()\r"},             // moves lines
		{Reserved: "__kf_\x00"},       // NUL
		{Read: "__kf_E.", Write: "."}, // empty segment
		{Tick: "t()"},                 // a body starting with ( would be its arguments
	} {
		if _, err := Transform([]byte("return x"), o); err == nil {
			t.Errorf("Transform with %+v: no error", o)
		}
	}
}

func TestFreeNames(t *testing.T) {
	tests := []struct {
		src   string
		names []string
		dots  int
	}{
		{"local a = b; c = a; function d(...) return e, ... end return ...", nil, 0},
		{"return x, y, x", []string{"x", "y"}, 0},
		{"x = 1 function y.z() end", []string{"x", "y"}, 0},
		{"return ..., select('#', ...)", []string{"select"}, 2},
		{"local function f(...) return ... end", nil, 0},
	}
	tests[0].names = []string{"b", "c", "d", "e"}
	tests[0].dots = 1
	for _, tt := range tests {
		names, dots, err := freeNames([]byte(tt.src))
		if err != nil {
			t.Fatalf("freeNames(%q): %v", tt.src, err)
		}
		if !slices.Equal(names, tt.names) || dots != tt.dots {
			t.Errorf("freeNames(%q) = %q, %d; want %q, %d", tt.src, names, dots, tt.names, tt.dots)
		}
	}
}

// A returned call is wrapped so that it is no tail call; everything else a
// return holds is left as it is.
func TestTailCall(t *testing.T) {
	opts := sandbox
	opts.TailCall = "__kf_E.__kf_I("
	for _, tc := range []struct{ src, want string }{
		{"return f()", "return __kf_E.__kf_I(__kf_E.f())"},
		{"return redis.call('GET', KEYS[1])", "return __kf_E.__kf_I(__kf_E.redis.call('GET', __kf_E.KEYS[1]))"},
		{"local r = redis\nreturn r.call(\n'x')", "local r = __kf_E.redis\nreturn __kf_E.__kf_I(r.call(\n'x'))"},
		{"return o:m{1}", "return __kf_E.__kf_I(__kf_E.o:m{1})"},
		{"return f'x'", "return __kf_E.__kf_I(__kf_E.f'x')"},
		{"return (f())", "return (__kf_E.f())"},
		{"return f() + 1", "return __kf_E.f() + 1"},
		{"return f(), g()", "return __kf_E.f(), __kf_E.g()"},
		{"return -f()", "return -__kf_E.f()"},
		{"return f", "return __kf_E.f"},
		{"return", "return"},
		{"local function g() return g() end", "local function g()__kf_E.__kf_T(); return __kf_E.__kf_I(g()) end"},
		{"if x then return f(function() return h() end) end", "if __kf_E.x then return __kf_E.__kf_I(__kf_E.f(function()__kf_E.__kf_T(); return __kf_E.__kf_I(__kf_E.h()) end)) end"},
	} {
		out, err := Transform([]byte(tc.src), opts)
		if err != nil {
			t.Errorf("%q: %v", tc.src, err)
			continue
		}
		if string(out) != tc.want {
			t.Errorf("%q:\n got %q\nwant %q", tc.src, out, tc.want)
		}
		checkSandboxed(t, []byte(tc.src), out)
	}
}
