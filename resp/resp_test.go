package resp

import (
	"bytes"
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"
)

// multibulk encodes args as one RESP request, the way clients send it.
func multibulk(args ...string) string {
	var b []byte
	b = AppendArrayHeader(b, len(args))
	for _, a := range args {
		b = AppendBulk(b, []byte(a))
	}
	return string(b)
}

// parse runs ParseCommand on a private copy of in (inline parsing rewrites
// its input in place) and returns the arguments as strings.
func parse(in string, lim Limits) (args []string, n, need int, err error) {
	buf := []byte(in)
	out, n, need, err := ParseCommand(buf, nil, lim)
	for _, a := range out {
		args = append(args, string(a))
	}
	return args, n, need, err
}

func sameArgs(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestParseCommandMultibulk(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
		n    int // bytes consumed; 0 means len(in)
	}{
		{"get", multibulk("GET", "k"), []string{"GET", "k"}, 0},
		{"set with options", multibulk("SET", "k", "v", "EX", "10", "NX"), []string{"SET", "k", "v", "EX", "10", "NX"}, 0},
		{"empty bulk", "*2\r\n$3\r\nGET\r\n$0\r\n\r\n", []string{"GET", ""}, 0},
		{"binary safe", multibulk("SET", "a\r\nb", "\x00\xff\r"), []string{"SET", "a\r\nb", "\x00\xff\r"}, 0},
		{"crlf inside value", "*1\r\n$4\r\n\r\n\r\n\r\n", []string{"\r\n\r\n"}, 0},
		{"only the first of a pipeline", multibulk("GET", "a") + multibulk("GET", "b"), []string{"GET", "a"}, len(multibulk("GET", "a"))},
		{"followed by inline", multibulk("PING") + "PING\r\n", []string{"PING"}, len(multibulk("PING"))},
		{"lower-case command kept", multibulk("get", "K"), []string{"get", "K"}, 0},
		{"long value", multibulk("SET", "k", strings.Repeat("x", 100000)), []string{"SET", "k", strings.Repeat("x", 100000)}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args, n, need, err := parse(tt.in, DefaultLimits)
			wantN := tt.n
			if wantN == 0 {
				wantN = len(tt.in)
			}
			if err != nil || n != wantN || need != 0 || !sameArgs(args, tt.want) {
				t.Fatalf("ParseCommand(%q) = %q, n=%d, need=%d, err=%v; want %q, n=%d", tt.in, args, n, need, err, tt.want, wantN)
			}
		})
	}
}

func TestParseCommandArgsPointIntoBuffer(t *testing.T) {
	buf := []byte(multibulk("SET", "key", "value"))
	scratch := make([][]byte, 0, 8)
	args, n, _, err := ParseCommand(buf, scratch, DefaultLimits)
	if err != nil || n != len(buf) || len(args) != 3 {
		t.Fatalf("got %q %d %v", args, n, err)
	}
	if &args[:1][0] != &scratch[:1][0] {
		t.Error("args were not appended to the caller's slice")
	}
	for _, a := range args {
		if cap(a) != len(a) {
			t.Errorf("arg %q has spare capacity %d: appending to it would overwrite the buffer", a, cap(a)-len(a))
		}
	}
	// The argument bytes are not copied.
	args[1][0] = 'K'
	if !bytes.Contains(buf, []byte("Key")) {
		t.Error("args do not alias the input buffer")
	}
	allocs := testing.AllocsPerRun(100, func() {
		args, _, _, _ = ParseCommand(buf, args, DefaultLimits)
	})
	if allocs != 0 {
		t.Errorf("ParseCommand allocates %.0f times per multibulk request with a reused args slice", allocs)
	}
	inline := []byte("SET key \"a b\" 'c d'\r\n")
	allocs = testing.AllocsPerRun(100, func() {
		b := append(inline[:0:0], inline...) // the copy is not ParseCommand's
		_ = b
	})
	base := allocs
	allocs = testing.AllocsPerRun(100, func() {
		b := append(inline[:0:0], inline...)
		args, _, _, _ = ParseCommand(b, args, DefaultLimits)
	})
	if allocs != base {
		t.Errorf("ParseCommand allocates %.0f times per inline request with a reused args slice", allocs-base)
	}
}

func TestParseCommandInline(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
		n    int // 0: len(in)
	}{
		{"crlf", "GET k\r\n", []string{"GET", "k"}, 0},
		{"lf only", "GET k\n", []string{"GET", "k"}, 0},
		{"blanks collapse", "  SET \t k    v  \r\n", []string{"SET", "k", "v"}, 0},
		{"double quotes", "SET k \"hello world\"\r\n", []string{"SET", "k", "hello world"}, 0},
		{"empty double quotes", "SET k \"\"\r\n", []string{"SET", "k", ""}, 0},
		{"empty single quotes", "SET k ''\r\n", []string{"SET", "k", ""}, 0},
		{"escapes", `SET k "a\nb\tc\rd\be\af\\g\"h\zi"` + "\r\n", []string{"SET", "k", "a\nb\tc\rd\be\af\\g\"hzi"}, 0},
		{"hex escapes", `SET k "\x41\x7a\x00\xFf"` + "\r\n", []string{"SET", "k", "Az\x00\xff"}, 0},
		{"hex escape at the end", `SET k "ab\x41"` + "\n", []string{"SET", "k", "abA"}, 0},
		{"bad hex digits are a plain escape", `SET k "\xZZ"` + "\r\n", []string{"SET", "k", "xZZ"}, 0},
		{"short hex escape", `SET k "\x4"` + "\r\n", []string{"SET", "k", "x4"}, 0},
		{"single quotes keep backslashes", `SET k 'a\nb'` + "\r\n", []string{"SET", "k", `a\nb`}, 0},
		{"single quote escape", `SET k 'it\'s'` + "\r\n", []string{"SET", "k", "it's"}, 0},
		{"quotes inside single quotes", `SET k 'say "hi"'` + "\r\n", []string{"SET", "k", `say "hi"`}, 0},
		{"quoted then bare", `"GET" k` + "\r\n", []string{"GET", "k"}, 0},
		{"only the first line", "PING\r\nGET k\r\n", []string{"PING"}, 6},
		{"dollar line is an inline word", "$3\r\n", []string{"$3"}, 0},
		{"max inline length with newline", strings.Repeat("a", maxInline) + "\n", []string{strings.Repeat("a", maxInline)}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args, n, need, err := parse(tt.in, DefaultLimits)
			wantN := tt.n
			if wantN == 0 {
				wantN = len(tt.in)
			}
			if err != nil || n != wantN || need != 0 || !sameArgs(args, tt.want) {
				t.Fatalf("ParseCommand(%q) = %q, n=%d, need=%d, err=%v; want %q, n=%d", tt.in, args, n, need, err, tt.want, wantN)
			}
		})
	}
}

func TestParseCommandUnbalancedQuotes(t *testing.T) {
	for _, in := range []string{
		"SET k \"abc\r\n",
		"SET k 'abc\r\n",
		"SET k \"a\"b\r\n",    // a closing quote must be followed by a blank
		"SET k 'a'b\r\n",      //
		"SET k \"abc\\\"\r\n", // the escaped quote does not close
		"SET k 'abc\\'\r\n",
		"\"\r\n",
		"SET k \"trailing backslash\\\r\n",
	} {
		args, n, need, err := parse(in, DefaultLimits)
		if !errors.Is(err, ErrUnbalancedQuotes) || n != 0 || need != 0 {
			t.Errorf("ParseCommand(%q) = %q, n=%d, need=%d, err=%v; want ErrUnbalancedQuotes", in, args, n, need, err)
		}
	}
	if got := ErrUnbalancedQuotes.Error(); got != "ERR Protocol error: unbalanced quotes in request" {
		t.Errorf("wording %q", got)
	}
}

func TestParseCommandEmptyRequests(t *testing.T) {
	for _, tt := range []struct {
		in string
		n  int
	}{
		{"\r\n", 2},
		{"\n", 1},
		{"   \t \r\n", 7},
		{"*0\r\n", 4},
		{"*-1\r\n", 5},
		{"*0\r\n*1\r\n$4\r\nPING\r\n", 4},
		{"\r\nPING\r\n", 2},
	} {
		args, n, need, err := parse(tt.in, DefaultLimits)
		if err != nil || n != tt.n || need != 0 || len(args) != 0 {
			t.Errorf("ParseCommand(%q) = %q, n=%d, need=%d, err=%v; want no args, n=%d", tt.in, args, n, need, err, tt.n)
		}
	}
	// An empty buffer is simply incomplete.
	if _, n, need, err := ParseCommand(nil, nil, DefaultLimits); n != 0 || need != 1 || err != nil {
		t.Errorf("ParseCommand(nil) = n=%d need=%d err=%v", n, need, err)
	}
}

func TestParseCommandProtocolErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		err  string
	}{
		{"non-numeric count", "*x\r\n", "ERR Protocol error: invalid multibulk length"},
		{"empty count", "*\r\n", "ERR Protocol error: invalid multibulk length"},
		{"count with a plus sign", "*+1\r\n", "ERR Protocol error: invalid multibulk length"},
		{"bare CR after count", "*1\rX$4\r\nPING\r\n", "ERR Protocol error: invalid multibulk length"},
		{"count line without end", "*" + strings.Repeat("1", maxInline+1), "ERR Protocol error: too big mbulk count string"},
		{"count with a leading zero", "*01\r\n$4\r\nPING\r\n", "ERR Protocol error: invalid multibulk length"},
		{"count minus zero", "*-0\r\n", "ERR Protocol error: invalid multibulk length"},
		{"count past INT_MAX", "*2147483648\r\n", "ERR Protocol error: invalid multibulk length"},
		{"count of 21 characters", "*-00000000000000000001\r\n", "ERR Protocol error: invalid multibulk length"},
		{"simple string instead of bulk", "*1\r\n+PING\r\n", "ERR Protocol error: expected '$', got '+'"},
		{"integer instead of bulk", "*2\r\n$3\r\nGET\r\n:1\r\n", "ERR Protocol error: expected '$', got ':'"},
		{"nested array", "*1\r\n*1\r\n$1\r\na\r\n", "ERR Protocol error: expected '$', got '*'"},
		{"inline word instead of bulk", "*1\r\nPING\r\n", "ERR Protocol error: expected '$', got 'P'"},
		{"non-numeric bulk length", "*1\r\n$x\r\n", "ERR Protocol error: invalid bulk length"},
		{"empty bulk length", "*1\r\n$\r\nab\r\n", "ERR Protocol error: invalid bulk length"},
		{"negative bulk length", "*1\r\n$-1\r\n", "ERR Protocol error: invalid bulk length"},
		{"bulk length overflow", "*1\r\n$9999999999999999999\r\n", "ERR Protocol error: invalid bulk length"},
		{"bare CR after bulk length", "*1\r\n$4\rXPING\r\n", "ERR Protocol error: invalid bulk length"},
		{"bulk length line without end", "*1\r\n$" + strings.Repeat("1", maxInline+1), "ERR Protocol error: too big bulk count string"},
		{"bulk length with a leading zero", "*1\r\n$04\r\nPING\r\n", "ERR Protocol error: invalid bulk length"},
		{"bulk length minus zero", "*1\r\n$-0\r\n", "ERR Protocol error: invalid bulk length"},
		{"bulk length past proto-max-bulk-len", "*1\r\n$536870913\r\n", "ERR Protocol error: invalid bulk length"},
		{"bulk length with a blank", "*1\r\n$4 \r\nPING\r\n", "ERR Protocol error: invalid bulk length"},
		{"bulk longer than its length", "*1\r\n$3\r\nPING\r\n", "ERR Protocol error: invalid bulk length"},
		{"bulk not followed by CRLF", "*1\r\n$4\r\nPINGXY", "ERR Protocol error: invalid bulk length"},
		{"too big inline", strings.Repeat("a", maxInline+1), "ERR Protocol error: too big inline request"},
		{"unbalanced quotes", "GET \"k\r\n", "ERR Protocol error: unbalanced quotes in request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args, n, need, err := parse(tt.in, DefaultLimits)
			if err == nil || err.Error() != tt.err || n != 0 || need != 0 {
				t.Fatalf("ParseCommand(%.40q) = %q, n=%d, need=%d, err=%v; want error %q", tt.in, args, n, need, err, tt.err)
			}
		})
	}
	var dollar ExpectedDollarError
	_, _, _, err := parse("*1\r\n!x\r\n", DefaultLimits)
	if !errors.As(err, &dollar) || dollar.Got != '!' {
		t.Errorf("err %v is not ExpectedDollarError{'!'}", err)
	}
	for err, want := range map[error]string{
		ErrInvalidMultibulkLength: "ERR Protocol error: invalid multibulk length",
		ErrInvalidBulkLength:      "ERR Protocol error: invalid bulk length",
		ErrTooBigInline:           "ERR Protocol error: too big inline request",
		ErrUnbalancedQuotes:       "ERR Protocol error: unbalanced quotes in request",
	} {
		if err.Error() != want {
			t.Errorf("wording %q, Redis says %q", err, want)
		}
	}
}

func TestParseCommandInlineLimit(t *testing.T) {
	// Up to maxInline bytes without a newline the request may still end.
	in := strings.Repeat("a", maxInline)
	if _, n, need, err := parse(in, DefaultLimits); n != 0 || err != nil || need != maxInline+1 {
		t.Errorf("%d bytes without newline: n=%d need=%d err=%v; want incomplete", maxInline, n, need, err)
	}
	if _, _, _, err := parse(in+"a", DefaultLimits); !errors.Is(err, ErrTooBigInline) {
		t.Errorf("%d bytes without newline: err=%v; want ErrTooBigInline", maxInline+1, err)
	}
}

func TestParseCommandLimits(t *testing.T) {
	lim := Limits{MaxRequestBytes: 40, MaxArgs: 3}
	tests := []struct {
		name string
		in   string
		err  error // nil: parses whole
	}{
		{"at MaxArgs", multibulk("SET", "k", "v"), nil},
		{"over MaxArgs", multibulk("DEL", "a", "b", "c"), ErrInvalidMultibulkLength},
		{"over MaxArgs from the header alone", "*4\r\n", ErrInvalidMultibulkLength},
		{"bulk over MaxRequestBytes from its header alone", "*1\r\n$41\r\n", ErrRequestTooLarge},
		{"bulk far over MaxRequestBytes", "*1\r\n$100000000\r\n", ErrRequestTooLarge},
		// Past Redis's own proto-max-bulk-len, Redis's words come first.
		{"bulk past what Redis accepts", "*1\r\n$1000000000\r\n", ErrInvalidBulkLength},
		// *3\r\n$3\r\nSET\r\n$1\r\nk\r\n$NN\r\n is 25 bytes when NN >= 10:
		// the arguments may reach byte 40, so the last value may take 15.
		{"arguments end at MaxRequestBytes", multibulk("SET", "k", strings.Repeat("v", 15)), nil},
		{"arguments one byte over MaxRequestBytes", multibulk("SET", "k", strings.Repeat("v", 16)), ErrRequestTooLarge},
		{"over MaxRequestBytes, header only", "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$16\r\n", ErrRequestTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args, n, _, err := parse(tt.in, lim)
			if tt.err == nil {
				if err != nil || n != len(tt.in) {
					t.Fatalf("ParseCommand(%q) = %q, n=%d, err=%v; want it whole", tt.in, args, n, err)
				}
				return
			}
			if !errors.Is(err, tt.err) || n != 0 {
				t.Fatalf("ParseCommand(%q) = %q, n=%d, err=%v; want %v", tt.in, args, n, err, tt.err)
			}
		})
	}
	if got := ErrRequestTooLarge.Error(); !strings.HasPrefix(got, "ERR Protocol error: ") {
		t.Errorf("ErrRequestTooLarge %q is not worded as a protocol error", got)
	}
	if DefaultLimits.MaxRequestBytes < 512<<20/16 || DefaultLimits.MaxArgs < 1024 {
		t.Errorf("DefaultLimits %+v are too small for real clients", DefaultLimits)
	}
}

// TestParseCommandInlineObeysLimits: Limits bound "what one request may
// hold", but inline requests skip both checks (found by FuzzParseCommand,
// seed ed69feb9ff19b302): with MaxArgs 4, "0 0 0 0 0" gives 5 arguments.
func TestParseCommandInlineObeysLimits(t *testing.T) {
	lim := Limits{MaxRequestBytes: 16, MaxArgs: 3}
	for _, in := range []string{
		"DEL a b c d\r\n",
		"SET k " + strings.Repeat("v", 40) + "\r\n",
	} {
		if args, n, _, err := parse(in, lim); err == nil {
			t.Errorf("ParseCommand(%q) with %+v = %q, n=%d: no error", in, lim, args, n)
		}
	}
}

// TestParseCommandIncremental feeds every prefix of a pipeline: a prefix
// that ends inside a request must give n == 0, no error and a need hint
// that is past the bytes given and not past the end of that request; the
// whole request then parses to the same arguments.
func TestParseCommandIncremental(t *testing.T) {
	reqs := []struct {
		raw  string
		args []string
	}{
		{multibulk("SET", "k", "v\r\nx"), []string{"SET", "k", "v\r\nx"}},
		{"GET \"a b\" 'c'\r\n", []string{"GET", "a b", "c"}},
		{"*0\r\n", nil},
		{multibulk("MSET", "a", "", "b", strings.Repeat("z", 12)), []string{"MSET", "a", "", "b", strings.Repeat("z", 12)}},
		{"\n", nil},
		{"PING\n", []string{"PING"}},
		{multibulk("XADD", "s", "*", "f", "v"), []string{"XADD", "s", "*", "f", "v"}},
	}
	var pipeline string
	for _, r := range reqs {
		pipeline += r.raw
	}
	for cut := 0; cut <= len(pipeline); cut++ {
		buf := []byte(pipeline[:cut])
		pos := 0
		for i, r := range reqs {
			args, n, need, err := ParseCommand(buf[pos:], nil, DefaultLimits)
			if err != nil {
				t.Fatalf("cut %d, request %d: error %v", cut, i, err)
			}
			if pos+len(r.raw) > cut { // this request is cut
				if n != 0 {
					t.Fatalf("cut %d, request %d (%q): n=%d args=%q for an incomplete request", cut, i, pipeline[pos:cut], n, args)
				}
				if need <= cut-pos || need > len(r.raw) {
					t.Fatalf("cut %d, request %d: need %d, want in (%d, %d]", cut, i, need, cut-pos, len(r.raw))
				}
				break
			}
			if n != len(r.raw) {
				t.Fatalf("cut %d, request %d: n=%d want %d", cut, i, n, len(r.raw))
			}
			var got []string
			for _, a := range args {
				got = append(got, string(a))
			}
			if !sameArgs(got, r.args) {
				t.Fatalf("cut %d, request %d: args %q want %q", cut, i, got, r.args)
			}
			pos += n
		}
	}
}

// TestParseCommandIntegerOverflow: RESP lengths that overflow int64 are
// invalid, as Redis's string2ll says; they must not wrap into negative
// numbers that mean "empty request".
func TestParseCommandIntegerOverflow(t *testing.T) {
	for _, in := range []string{
		"*9999999999999999999\r\n",
		"*9223372036854775808\r\n",
	} {
		args, n, _, err := parse(in+multibulk("FLUSHALL"), DefaultLimits)
		if !errors.Is(err, ErrInvalidMultibulkLength) {
			t.Errorf("ParseCommand(%q) = %q, n=%d, err=%v; want ErrInvalidMultibulkLength (the count overflows int64)", in, args, n, err)
		}
	}
}

// TestParseCommandHugeLimit: a limit set "as large as possible" must not
// turn a huge bulk length into an out-of-range slice.
func TestParseCommandHugeLimit(t *testing.T) {
	lim := Limits{MaxRequestBytes: math.MaxInt, MaxArgs: 16}
	for _, in := range []string{
		"*1\r\n$9223372036854775807\r\n",
		"*1\r\n$9223372036854775800\r\nab",
	} {
		func() {
			defer func() {
				if p := recover(); p != nil {
					t.Errorf("ParseCommand(%q) with MaxRequestBytes=MaxInt panics: %v", in, p)
				}
			}()
			_, n, need, err := parse(in, lim)
			if err == nil && (n != 0 || need <= len(in)) {
				t.Errorf("ParseCommand(%q) = n=%d need=%d: neither an error nor incomplete", in, n, need)
			}
		}()
	}
}

// TestParseInlineQuoteInsideWord: Redis's sdssplitargs opens a quoted
// section anywhere in a word ("a"b c"" is one argument, `ab c`); the proxy
// must split inline requests the same way (resp.go says it does).
func TestParseInlineQuoteInsideWord(t *testing.T) {
	args, n, _, err := parse("SET k a\"b c\"\r\n", DefaultLimits)
	want := []string{"SET", "k", "ab c"}
	if err != nil || n == 0 || !sameArgs(args, want) {
		t.Errorf("ParseCommand(%q) = %q, err=%v; Redis gives %q", "SET k a\"b c\"", args, err, want)
	}
}

// ---- ReplyLen ----

var completeReplies = []struct {
	name  string
	reply string
}{
	{"simple string", "+OK\r\n"},
	{"empty simple string", "+\r\n"},
	{"error", "-ERR unknown command\r\n"},
	{"integer", ":1000\r\n"},
	{"negative integer", ":-5\r\n"},
	{"bulk", "$3\r\nfoo\r\n"},
	{"empty bulk", "$0\r\n\r\n"},
	{"bulk holding CRLF", "$4\r\na\r\nb\r\n"},
	{"bulk holding a reply", "$5\r\n+OK\r\n\r\n"},
	{"null bulk", "$-1\r\n"},
	{"null array", "*-1\r\n"},
	{"empty array", "*0\r\n"},
	{"array", "*3\r\n$1\r\na\r\n:1\r\n+b\r\n"},
	{"nested arrays", "*2\r\n*2\r\n:1\r\n:2\r\n*1\r\n*0\r\n"},
	{"array with nulls", "*3\r\n$-1\r\n*-1\r\n_\r\n"},
	{"resp3 null", "_\r\n"},
	{"double", ",3.14\r\n"},
	{"double inf", ",-inf\r\n"},
	{"boolean", "#t\r\n"},
	{"big number", "(3492890328409238509324850943850943825024385\r\n"},
	{"verbatim", "=15\r\ntxt:Some string\r\n"},
	{"blob error", "!21\r\nSYNTAX invalid syntax\r\n"},
	{"map", "%2\r\n+first\r\n:1\r\n$6\r\nsecond\r\n,2.5\r\n"},
	{"empty map", "%0\r\n"},
	{"set", "~3\r\n+a\r\n+b\r\n:1\r\n"},
	{"push", ">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n"},
	{"attribute before a reply", "|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*2\r\n:2\r\n:3\r\n"},
	{"nested mixed", "*2\r\n%1\r\n$1\r\nk\r\n~1\r\n*2\r\n#f\r\n(1\r\n>1\r\n=7\r\ntxt:abc\r\n"},
	{"xread resp2", "*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n"},
}

func TestReplyLenComplete(t *testing.T) {
	for _, tt := range completeReplies {
		t.Run(tt.name, func(t *testing.T) {
			if n, err := ReplyLen([]byte(tt.reply)); n != len(tt.reply) || err != nil {
				t.Fatalf("ReplyLen(%q) = %d, %v; want %d", tt.reply, n, err, len(tt.reply))
			}
			// Followed by another reply, or by garbage: only the first counts.
			for _, next := range []string{"+OK\r\n", "?garbage", tt.reply} {
				if n, err := ReplyLen([]byte(tt.reply + next)); n != len(tt.reply) || err != nil {
					t.Fatalf("ReplyLen(%q) = %d, %v; want %d", tt.reply+next, n, err, len(tt.reply))
				}
			}
			// Every proper prefix is incomplete, never an error.
			for cut := 0; cut < len(tt.reply); cut++ {
				if n, err := ReplyLen([]byte(tt.reply[:cut])); n != 0 || err != nil {
					t.Fatalf("ReplyLen(%q) = %d, %v; want 0, nil (incomplete)", tt.reply[:cut], n, err)
				}
			}
		})
	}
}

func TestReplyLenMalformed(t *testing.T) {
	for _, in := range []string{
		"?x\r\n",
		"x\r\n",
		"\r\n\r\n",
		"$x\r\n",
		"$\r\n",
		"$-2\r\n",
		"*-2\r\n",
		"*x\r\n",
		"%x\r\n",
		"~-5\r\n",
		"+OK\rX",
		":1\r:",
		"*1\r\n?\r\n",
		"*2\r\n:1\r\n$a\r\n",
		"%1\r\n+a\r\n?\r\n",
		"|1\r\n+a\r\n+b\r\n?\r\n",
		">1\r\n*1\r\n-\rE",
	} {
		n, err := ReplyLen([]byte(in))
		if !errors.Is(err, ErrInvalidReply) || n != 0 {
			t.Errorf("ReplyLen(%q) = %d, %v; want ErrInvalidReply", in, n, err)
		}
	}
}

// TestReplyLenDepth: Redis itself sends replies nested about 8,000 deep (a
// Lua table that contains itself); any depth must be measured, never
// refused, and an incomplete one must say "incomplete", not "invalid".
func TestReplyLenDepth(t *testing.T) {
	nest := func(depth int, open, leaf string) []byte {
		return []byte(strings.Repeat(open, depth) + leaf)
	}
	for _, tc := range []struct {
		open, leaf string
		depth      int
	}{
		{"*1\r\n", ":1\r\n", 129},
		{"*1\r\n", "-ERR reached lua stack limit\r\n", 7995}, // what Redis 7.0 sends
		{">1\r\n", ":1\r\n", 100000},
		{"~1\r\n", "_\r\n", 100000},
		{"%1\r\n+k\r\n", "+v\r\n", 100000},
		{"|1\r\n+a\r\n+b\r\n", ":1\r\n", 100000}, // attribute on attribute on …
		{"*2\r\n$3\r\nabc\r\n", "#t\r\n", 1000000},
	} {
		in := nest(tc.depth, tc.open, tc.leaf)
		if n, err := ReplyLen(in); n != len(in) || err != nil {
			t.Errorf("%d nested %q: ReplyLen = %d, %v; want %d", tc.depth, tc.open[:1], n, err, len(in))
		}
		if n, err := ReplyLen(in[:len(in)-1]); n != 0 || err != nil {
			t.Errorf("%d nested %q, last byte missing: ReplyLen = %d, %v; want 0, nil", tc.depth, tc.open[:1], n, err)
		}
		// Followed by the next reply: only the first is measured.
		two := append(append([]byte(nil), in...), ":2\r\n"...)
		if n, err := ReplyLen(two); n != len(in) || err != nil {
			t.Errorf("%d nested %q then :2: ReplyLen = %d, %v; want %d", tc.depth, tc.open[:1], n, err, len(in))
		}
	}
	// Announced counts are owed, not allocated: a header claiming billions
	// of elements is only incomplete.
	if n, err := ReplyLen([]byte(strings.Repeat("*4294967296\r\n", 1000))); n != 0 || err != nil {
		t.Errorf("huge announced counts: ReplyLen = %d, %v; want 0, nil", n, err)
	}
}

// TestReplyLenHugeLengths: lengths near the int64 limit from a hostile or
// broken upstream must give "incomplete" or an error, never a length that
// is negative or that claims bytes the buffer does not hold.
func TestReplyLenHugeLengths(t *testing.T) {
	for _, in := range []string{
		"$9223372036854775807\r\n",
		"$9223372036854775790\r\nabc",
		"=9223372036854775807\r\n",
		"!9223372036854775807\r\n",
		"%4611686018427387904\r\n",         // ×2 overflows to a negative count
		"|4611686018427387904\r\n+a\r\n",   //
		"*1\r\n$9223372036854775807\r\n",   // nested
		"%5000000000000000000\r\n+a\r\n:1", // ×2 wraps
	} {
		func() {
			defer func() {
				if p := recover(); p != nil {
					t.Errorf("ReplyLen(%q) panics: %v", in, p)
				}
			}()
			n, err := ReplyLen([]byte(in))
			if n < 0 || n > len(in) || (err == nil && n != 0) {
				t.Errorf("ReplyLen(%q) = %d, %v; want 0 (incomplete) or ErrInvalidReply", in, n, err)
			}
		}()
	}
}

// TestReplyLenBulkTerminator: a bulk payload must be followed by CRLF; a
// reply without it is malformed, or the framing that follows is lost.
func TestReplyLenBulkTerminator(t *testing.T) {
	for _, in := range []string{"$3\r\nfooXY", "*1\r\n$3\r\nfoo\n:1\r\n", "!3\r\nERRxx"} {
		if n, err := ReplyLen([]byte(in)); !errors.Is(err, ErrInvalidReply) {
			t.Errorf("ReplyLen(%q) = %d, %v; want ErrInvalidReply", in, n, err)
		}
	}
}

func TestAppendHelpers(t *testing.T) {
	tests := []struct {
		got, want string
	}{
		{string(AppendBulk(nil, []byte("foo"))), "$3\r\nfoo\r\n"},
		{string(AppendBulk(nil, nil)), "$0\r\n\r\n"},
		{string(AppendPrefixedBulk(nil, []byte("tenant:t1:"), []byte("k"))), "$11\r\ntenant:t1:k\r\n"},
		{string(AppendArrayHeader(nil, 0)), "*0\r\n"},
		{string(AppendArrayHeader([]byte("x"), 12)), "x*12\r\n"},
		{string(AppendError(nil, "ERR boom")), "-ERR boom\r\n"},
		{string(AppendInt(nil, -42)), ":-42\r\n"},
		{string(AppendStatus(nil, "OK")), "+OK\r\n"},
		{string(AppendNull(nil, false)), "$-1\r\n"},
		{string(AppendNull(nil, true)), "_\r\n"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q want %q", tt.got, tt.want)
		}
		if strings.HasPrefix(tt.want, "x") {
			continue
		}
		if n, err := ReplyLen([]byte(tt.want)); n != len(tt.want) || err != nil {
			t.Errorf("ReplyLen(%q) = %d, %v", tt.want, n, err)
		}
	}
	long := strings.Repeat("v", 1234)
	if got := string(AppendBulk(nil, []byte(long))); got != "$"+strconv.Itoa(len(long))+"\r\n"+long+"\r\n" {
		t.Errorf("AppendBulk of %d bytes: %.20q", len(long), got)
	}
}

// TestParseCommandRedisLengths: the counts and lengths Redis 7.0 takes as
// they are, however odd, parse the same way here (its string2ll).
func TestParseCommandRedisLengths(t *testing.T) {
	tests := []struct {
		in   string
		args []string
	}{
		{"*-9223372036854775808\r\n", nil}, // the smallest int64: an empty request
		{"*-1\r\n", nil},
		{"*0\r\n", nil},
		{"*1\r\n$0\r\n\r\n", []string{""}},
		{"*2147483647\r\n", nil}, // Redis waits for the arguments: incomplete
	}
	lim := Limits{MaxRequestBytes: 1 << 20, MaxArgs: math.MaxInt32}
	for _, tt := range tests {
		args, n, need, err := parse(tt.in, lim)
		switch {
		case err != nil:
			t.Errorf("ParseCommand(%q): %v", tt.in, err)
		case tt.in == "*2147483647\r\n":
			if n != 0 || need <= len(tt.in) {
				t.Errorf("ParseCommand(%q) = n=%d need=%d; want incomplete", tt.in, n, need)
			}
		case n != len(tt.in) || !sameArgs(args, tt.args):
			t.Errorf("ParseCommand(%q) = %q, n=%d; want %q whole", tt.in, args, n, tt.args)
		}
	}
}

// TestParseCommandUnauthenticated: before AUTH Redis takes at most 10
// arguments of at most 16 KiB, and says so in its own words.
func TestParseCommandUnauthenticated(t *testing.T) {
	lim := DefaultLimits
	lim.Unauthenticated = true
	tests := []struct {
		in  string
		err error
	}{
		{"*11\r\n", ErrUnauthMultibulkLength},
		{"*10\r\n", nil},
		{"*1\r\n$16385\r\n", ErrUnauthBulkLength},
		{"*1\r\n$16384\r\n", nil},
		{"*1\r\n$536870913\r\n", ErrInvalidBulkLength}, // out of range first
		{"*2147483648\r\n", ErrInvalidMultibulkLength},
	}
	for _, tt := range tests {
		_, n, need, err := parse(tt.in, lim)
		if tt.err == nil {
			if err != nil || n != 0 || need <= len(tt.in) {
				t.Errorf("ParseCommand(%q) unauthenticated = n=%d need=%d err=%v; want incomplete", tt.in, n, need, err)
			}
			continue
		}
		if !errors.Is(err, tt.err) {
			t.Errorf("ParseCommand(%q) unauthenticated: err=%v; want %v", tt.in, err, tt.err)
		}
		if _, _, _, err := parse(tt.in, DefaultLimits); errors.Is(err, ErrUnauthMultibulkLength) || errors.Is(err, ErrUnauthBulkLength) {
			t.Errorf("ParseCommand(%q) authenticated: err=%v", tt.in, err)
		}
	}
}

// appendLength writes what strconv does, on both sides of each of its
// hand-written ranges (negative counts go to strconv: AppendArrayHeader(-1)
// is a null array).
func TestAppendLength(t *testing.T) {
	for _, n := range []int{-1, 0, 1, 9, 10, 11, 42, 99, 100, 101, 512, 999, 1000, 1001, 65536, 1 << 40} {
		got := string(appendLength([]byte("x"), n))
		if want := "x" + strconv.Itoa(n); got != want {
			t.Errorf("appendLength(%d) = %q, want %q", n, got, want)
		}
	}
}

// EachReply hands out whole replies only, stops at each's error after
// counting that reply, and at a malformed one before it.
func TestEachReply(t *testing.T) {
	stop := errors.New("stop")
	for _, tc := range []struct {
		name, in  string
		stopAt    int // each fails on this reply (1-based); 0: never
		want      []string
		consumed  int
		wantError error
	}{
		{"whole replies and a partial one", "+OK\r\n:1\r\n$3\r\nab", 0, []string{"+OK\r\n", ":1\r\n"}, 9, nil},
		{"each stops it", "+OK\r\n:1\r\n:2\r\n", 2, []string{"+OK\r\n", ":1\r\n"}, 9, stop},
		{"a malformed reply", "+OK\r\n?x\r\n", 0, []string{"+OK\r\n"}, 5, ErrInvalidReply},
		{"nothing", "", 0, nil, 0, nil},
	} {
		var got []string
		n, err := EachReply([]byte(tc.in), func(r []byte) error {
			got = append(got, string(r))
			if len(got) == tc.stopAt {
				return stop
			}
			return nil
		})
		if n != tc.consumed || !errors.Is(err, tc.wantError) || strings.Join(got, "|") != strings.Join(tc.want, "|") {
			t.Errorf("%s: %q, %d bytes, %v; want %q, %d, %v", tc.name, got, n, err, tc.want, tc.consumed, tc.wantError)
		}
	}
}
