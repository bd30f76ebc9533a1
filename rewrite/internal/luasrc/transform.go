package luasrc

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// Options says what Transform puts in the script. An empty field means "no
// edit of that kind", so the zero Options gives back the input unchanged.
type Options struct {
	Read     string // prefix for reading a free name N: N -> Read+N, e.g. "__kf_E."
	Write    string // prefix for assigning a free name N: N -> Write+N, e.g. "__kf_E.__kf_W."
	Vararg   string // replaces `...` used in the main chunk (not inside functions), e.g. "__kf_E.__kf_V()"
	Tick     string // inserted at the start of every loop body and function body, e.g. "__kf_E.__kf_T();"
	Reserved string // identifier prefix the script may not use anywhere, e.g. "__kf_"
	// TailCall opens a call around the call of a `return f(...)`, closed by
	// ")" after it, e.g. "__kf_E.__kf_I(" with a function that returns its
	// arguments: f then runs as an ordinary call, and Lua keeps the
	// returning function's line for errors raised inside f.
	TailCall string
}

// SyntaxError is text that Lua 5.1 does not compile. Msg follows Lua's
// wording loosely; ask Lua itself for the exact message.
type SyntaxError struct {
	Line int
	Msg  string
}

func (e *SyntaxError) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Msg) }

// ReservedError is a name that starts with Options.Reserved: the script could
// reach keyfence's own sandbox variables with it.
type ReservedError struct {
	Line   int
	Name   string
	Prefix string
}

func (e *ReservedError) Error() string {
	return fmt.Sprintf("line %d: name %q uses the reserved prefix %q", e.Line, e.Name, e.Prefix)
}

// UnsupportedError is text whose meaning depends on how Lua was built or on
// C string quirks; Redis's Lua may compile it, keyfence does not take the
// risk of reading it differently.
type UnsupportedError struct {
	Line int
	Msg  string
}

func (e *UnsupportedError) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Msg) }

// analyze parses src as one Lua 5.1 chunk and returns the edits, in source
// order.
func analyze(src []byte, reserved string, sandboxSlot bool) (*parser, error) {
	p := &parser{lx: lexer{src: src, line: 1, reserved: reserved}, sandboxSlot: sandboxSlot, scope: map[string][]*local{}}
	if err := p.parseChunk(); err != nil {
		return nil, err
	}
	return p, nil
}

// Transform parses src as one complete Lua 5.1 chunk and returns it rewritten.
// Errors are *SyntaxError, *ReservedError, *UnsupportedError, or a plain
// error for Options that would break the output.
func Transform(src []byte, opt Options) ([]byte, error) {
	if err := opt.check(); err != nil {
		return nil, err
	}
	if len(src) > math.MaxInt32 {
		return nil, fmt.Errorf("luasrc: script of %d bytes is too large", len(src))
	}
	sandboxed := opt.Read != "" || opt.Write != "" || opt.Vararg != "" || opt.Tick != "" || opt.TailCall != ""
	p, err := analyze(src, opt.Reserved, sandboxed)
	if err != nil {
		return nil, err
	}
	grow := 0
	for _, e := range p.edits {
		grow += len(opt.text(e.kind)) + 2 // room for a separating space on each side
	}
	out := make([]byte, 0, len(src)+grow)
	last := int32(0)
	for _, e := range p.edits {
		out = append(out, src[last:e.pos]...)
		last = e.pos
		text := opt.text(e.kind)
		if text == "" {
			continue
		}
		out = appendSeparated(out, text)
		switch e.kind {
		case editRead, editWrite:
			// The prefix joins the name that follows.
		case editVararg:
			last = e.end
			if e.semicolon {
				out = append(out, ';')
			}
			if int(last) < len(src) && needSpace(out[len(out)-1], src[last]) {
				out = append(out, ' ')
			}
		case editTick, editTailOpen, editTailClose:
			if int(last) < len(src) && needSpace(out[len(out)-1], src[last]) {
				out = append(out, ' ')
			}
		}
	}
	return append(out, src[last:]...), nil
}

// appendSeparated appends text, with a space first when it would otherwise
// merge with the byte before it into one token.
func appendSeparated(out []byte, text string) []byte {
	if len(out) > 0 && needSpace(out[len(out)-1], text[0]) {
		out = append(out, ' ')
	}
	return append(out, text...)
}

// needSpace says whether bytes a and b, side by side, could lex as part of
// one token (a name, a number, "..", "--", "==", "<=", ">=", "~=", "..", "[[",
// "[=").
func needSpace(a, b byte) bool {
	switch {
	case isWord(a) && (isWord(b) || b == '.'):
		return true
	case a == '.' && (b == '.' || isDigit(b)):
		return true
	case a == '-' && b == '-':
		return true
	case (a == '=' || a == '<' || a == '>' || a == '~') && b == '=':
		return true
	case a == '[' && (b == '[' || b == '='):
		return true
	}
	return false
}

func (o Options) text(k editKind) string {
	switch k {
	case editRead:
		return o.Read
	case editWrite:
		return o.Write
	case editVararg:
		return o.Vararg
	case editTailOpen:
		return o.TailCall
	case editTailClose:
		if o.TailCall == "" {
			return ""
		}
		return ")"
	}
	return o.Tick
}

// check refuses Options whose text would move line numbers or not join the
// name it prefixes.
func (o Options) check() error {
	for _, f := range []struct{ name, v string }{
		{"Read", o.Read}, {"Write", o.Write}, {"Vararg", o.Vararg}, {"Tick", o.Tick}, {"Reserved", o.Reserved}, {"TailCall", o.TailCall},
	} {
		if strings.ContainsAny(f.v, "\r\n\x00") {
			return fmt.Errorf("luasrc: Options.%s %q contains a line break or NUL", f.name, f.v)
		}
	}
	if o.TailCall != "" && !strings.HasSuffix(o.TailCall, "(") {
		return fmt.Errorf("luasrc: Options.TailCall %q does not end with '('", o.TailCall)
	}
	if o.Tick != "" && !strings.HasSuffix(o.Tick, ";") {
		// Without the ';' a body that starts with '(' would become the
		// tick's call arguments.
		return fmt.Errorf("luasrc: Options.Tick %q does not end with ';'", o.Tick)
	}
	for _, f := range []struct{ name, v string }{{"Read", o.Read}, {"Write", o.Write}} {
		if f.v != "" && !isFieldPrefix(f.v) {
			return fmt.Errorf("luasrc: Options.%s %q is not of the form Name.{Name.}", f.name, f.v)
		}
	}
	return nil
}

func isFieldPrefix(s string) bool {
	if !strings.HasSuffix(s, ".") {
		return false
	}
	for part := range strings.SplitSeq(strings.TrimSuffix(s, "."), ".") {
		if part == "" || isDigit(part[0]) || keywords[part] != 0 {
			return false
		}
		for i := 0; i < len(part); i++ {
			if !isWord(part[i]) {
				return false
			}
		}
	}
	return true
}

// freeNames returns the free names src reads or assigns, sorted and without
// duplicates, and how many times the main chunk uses `...`.
func freeNames(src []byte) (names []string, mainVarargs int, err error) {
	p, err := analyze(src, "", false)
	if err != nil {
		return nil, 0, err
	}
	for _, e := range p.edits {
		if e.kind == editRead || e.kind == editWrite {
			names = append(names, string(src[e.pos:e.end]))
		}
	}
	slices.Sort(names)
	return slices.Compact(names), p.dotsCalls, nil
}
