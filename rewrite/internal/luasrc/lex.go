package luasrc

import (
	"bytes"
	"fmt"
)

// tokKind is a token class; single-character tokens are tChar with the
// character in token.ch, as llex returns the character itself.
type tokKind uint8

const (
	tEOS tokKind = iota
	tChar
	tName
	tNumber
	tString
	tConcat // ..
	tDots   // ...
	tEq     // ==
	tGe     // >=
	tLe     // <=
	tNe     // ~=
	// The 21 reserved words of Lua 5.1, in luaX_tokens order.
	tAnd
	tBreak
	tDo
	tElse
	tElseif
	tEnd
	tFalse
	tFor
	tFunction
	tIf
	tIn
	tLocal
	tNil
	tNot
	tOr
	tRepeat
	tReturn
	tThen
	tTrue
	tUntil
	tWhile
)

var keywords = map[string]tokKind{
	"and": tAnd, "break": tBreak, "do": tDo, "else": tElse, "elseif": tElseif,
	"end": tEnd, "false": tFalse, "for": tFor, "function": tFunction, "if": tIf,
	"in": tIn, "local": tLocal, "nil": tNil, "not": tNot, "or": tOr,
	"repeat": tRepeat, "return": tReturn, "then": tThen, "true": tTrue,
	"until": tUntil, "while": tWhile,
}

// token is one lexed token; start and end are byte offsets into the source.
type token struct {
	kind       tokKind
	ch         byte
	start, end int
}

// lexer is llex.c over a byte slice. line is ls->linenumber: the line the
// lexer stands on after the last token it read, which is what the parser's
// "ambiguous syntax" check compares.
type lexer struct {
	src      []byte
	pos      int
	line     int
	reserved string
}

// The character classes of the C locale, which is what Redis runs Lua in
// (it sets only LC_COLLATE): bytes >= 0x80 are neither letters nor spaces.
func isDigit(c byte) bool { return '0' <= c && c <= '9' }
func isAlpha(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }
func isAlnum(c byte) bool { return isAlpha(c) || isDigit(c) }
func isWord(c byte) bool  { return isAlnum(c) || c == '_' }
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}
func isNewline(c byte) bool { return c == '\n' || c == '\r' }
func isHex(c byte) bool {
	return isDigit(c) || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func (lx *lexer) syntaxErr(format string, args ...any) error {
	return &SyntaxError{Line: lx.line, Msg: fmt.Sprintf(format, args...)}
}

func (lx *lexer) cur() int {
	if lx.pos < len(lx.src) {
		return int(lx.src[lx.pos])
	}
	return -1 // EOZ
}

// inclinenumber skips one line break: "\n", "\r", "\r\n" or "\n\r".
func (lx *lexer) inclinenumber() {
	old := lx.src[lx.pos]
	lx.pos++
	if lx.pos < len(lx.src) && isNewline(lx.src[lx.pos]) && lx.src[lx.pos] != old {
		lx.pos++
	}
	lx.line++
}

// skipSep is skip_sep: at '[' or ']', it skips the bracket and any '='
// after it and returns their count when the same bracket follows (not
// consumed), else -count-1.
func (lx *lexer) skipSep() int {
	s := lx.src[lx.pos]
	lx.pos++
	count := 0
	for lx.pos < len(lx.src) && lx.src[lx.pos] == '=' {
		lx.pos++
		count++
	}
	if lx.pos < len(lx.src) && lx.src[lx.pos] == s {
		return count
	}
	return -count - 1
}

// readLongString is read_long_string with lx.pos on the second '['. The
// body ends at the first "]", sep '=', "]": every ']' in the body starts a
// skip_sep, and skip_sep consumes only '=' after it, so no closing bracket
// can hide inside a skipped run.
func (lx *lexer) readLongString(sep int, what string) error {
	lx.pos++
	closing := make([]byte, 0, sep+2)
	closing = append(closing, ']')
	for range sep {
		closing = append(closing, '=')
	}
	closing = append(closing, ']')
	body := lx.src[lx.pos:]
	n := bytes.Index(body, closing)
	if n < 0 {
		lx.countLines(len(body))
		return lx.syntaxErr("unfinished long %s", what)
	}
	if sep == 0 {
		// Stock Lua 5.1 (LUA_COMPAT_LSTR 1) raises "nesting of [[...]] is
		// deprecated" here; Redis's build accepts the text and ends the
		// string at the first "]]". Which one runs upstream is a build
		// detail, so neither is trusted.
		if i := bytes.Index(body[:n], []byte("[[")); i >= 0 {
			lx.countLines(i)
			return &UnsupportedError{Line: lx.line, Msg: "\"[[\" inside a [[...]] long string or comment (Lua builds disagree on it); use [=[...]=]"}
		}
	}
	lx.countLines(n)
	lx.pos += len(closing)
	return nil
}

// countLines advances over n bytes, counting line breaks as inclinenumber
// does (a "\r\n" or "\n\r" pair is one).
func (lx *lexer) countLines(n int) {
	end := lx.pos + n
	for lx.pos < end {
		if isNewline(lx.src[lx.pos]) {
			old := lx.src[lx.pos]
			lx.pos++
			if lx.pos < end && isNewline(lx.src[lx.pos]) && lx.src[lx.pos] != old {
				lx.pos++
			}
			lx.line++
			continue
		}
		lx.pos++
	}
}

// readString is read_string: lx.pos is on the opening delimiter.
func (lx *lexer) readString(del byte) error {
	lx.pos++
	for {
		c := lx.cur()
		switch {
		case c < 0:
			return lx.syntaxErr("unfinished string")
		case c == int(del):
			lx.pos++
			return nil
		case c == '\n' || c == '\r':
			return lx.syntaxErr("unfinished string")
		case c == '\\':
			lx.pos++
			e := lx.cur()
			switch {
			case e < 0:
				// The loop reports the unfinished string.
			case e == '\n' || e == '\r':
				lx.inclinenumber()
			case isDigit(byte(e)):
				v := 0
				for i := 0; i < 3 && lx.pos < len(lx.src) && isDigit(lx.src[lx.pos]); i++ {
					v = 10*v + int(lx.src[lx.pos]-'0')
					lx.pos++
				}
				if v > 255 {
					return lx.syntaxErr("escape sequence too large")
				}
			default:
				// \a \b \f \n \r \t \v, and any other character stands
				// for itself (\\ \" \' ...): one byte either way.
				lx.pos++
			}
		default:
			lx.pos++
		}
	}
}

// readNumeral is read_numeral: it takes digits and dots, an optional
// exponent mark with sign, then any run of letters, digits and '_', and only
// then asks strtod whether the whole run is a number. lx.pos is after the
// part already taken (a digit, or ".d" from the '.' case).
func (lx *lexer) readNumeral(start int) error {
	for lx.pos < len(lx.src) && (isDigit(lx.src[lx.pos]) || lx.src[lx.pos] == '.') {
		lx.pos++
	}
	if lx.pos < len(lx.src) && (lx.src[lx.pos] == 'E' || lx.src[lx.pos] == 'e') {
		lx.pos++
		if lx.pos < len(lx.src) && (lx.src[lx.pos] == '+' || lx.src[lx.pos] == '-') {
			lx.pos++
		}
	}
	for lx.pos < len(lx.src) && isWord(lx.src[lx.pos]) {
		lx.pos++
	}
	if !validNumeral(lx.src[start:lx.pos]) {
		return lx.syntaxErr("malformed number near '%s'", lx.src[start:lx.pos])
	}
	return nil
}

// nulErr refuses a NUL byte outside strings and comments. llex.c's
// check_next uses strchr, which matches the terminating NUL, so after a
// number, a '.' or an exponent mark Lua takes a NUL (and what follows) into
// the token, and strtod then stops at it: "1\0abc" is the number 1. Refusing
// every such byte keeps token boundaries out of C string accidents.
func (lx *lexer) nulErr() error {
	return &UnsupportedError{Line: lx.line, Msg: "NUL byte outside a string or comment"}
}

// validNumeral says whether luaO_str2d accepts s, that is whether glibc's
// strtod consumes all of it (its strtoul fallback for "0x…" never succeeds
// where strtod failed). s never starts with a sign, "inf" or "nan", and
// read_numeral cannot put a '.' or a sign after "0x".
func validNumeral(s []byte) bool {
	i := 0
	if len(s) >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X') {
		i = 2
		digits := 0
		for i < len(s) && isHex(s[i]) {
			i++
			digits++
		}
		if i < len(s) && s[i] == '.' {
			i++
			for i < len(s) && isHex(s[i]) {
				i++
				digits++
			}
		}
		if digits == 0 {
			return false
		}
		return i == len(s) || exponentTo(s, i, 'p', 'P') == len(s)
	}
	digits := 0
	for i < len(s) && isDigit(s[i]) {
		i++
		digits++
	}
	if i < len(s) && s[i] == '.' {
		i++
		for i < len(s) && isDigit(s[i]) {
			i++
			digits++
		}
	}
	if digits == 0 {
		return false
	}
	return i == len(s) || exponentTo(s, i, 'e', 'E') == len(s)
}

// exponentTo returns where an exponent starting at s[i] ends, or i when
// there is no complete one (strtod then stops before the mark).
func exponentTo(s []byte, i int, lower, upper byte) int {
	if s[i] != lower && s[i] != upper {
		return i
	}
	j := i + 1
	if j < len(s) && (s[j] == '+' || s[j] == '-') {
		j++
	}
	d := j
	for j < len(s) && isDigit(s[j]) {
		j++
	}
	if j == d {
		return i
	}
	return j
}

// next is llex: it skips blanks and comments and returns the next token.
func (lx *lexer) next() (token, error) {
	for {
		start := lx.pos
		c := lx.cur()
		switch {
		case c < 0:
			return token{kind: tEOS, start: start, end: start}, nil
		case c == '\n' || c == '\r':
			lx.inclinenumber()
		case c == '-':
			lx.pos++
			if lx.cur() != '-' {
				return token{kind: tChar, ch: '-', start: start, end: lx.pos}, nil
			}
			lx.pos++
			if lx.cur() == '[' {
				if sep := lx.skipSep(); sep >= 0 {
					if err := lx.readLongString(sep, "comment"); err != nil {
						return token{}, err
					}
					continue
				}
			}
			for lx.pos < len(lx.src) && !isNewline(lx.src[lx.pos]) {
				lx.pos++
			}
		case c == '[':
			sep := lx.skipSep()
			if sep >= 0 {
				if err := lx.readLongString(sep, "string"); err != nil {
					return token{}, err
				}
				return token{kind: tString, start: start, end: lx.pos}, nil
			}
			if sep == -1 {
				return token{kind: tChar, ch: '[', start: start, end: lx.pos}, nil
			}
			return token{}, lx.syntaxErr("invalid long string delimiter")
		case c == '=' || c == '<' || c == '>' || c == '~':
			lx.pos++
			if lx.cur() != '=' {
				return token{kind: tChar, ch: byte(c), start: start, end: lx.pos}, nil
			}
			lx.pos++
			return token{kind: twoCharOp(byte(c)), start: start, end: lx.pos}, nil
		case c == '"' || c == '\'':
			if err := lx.readString(byte(c)); err != nil {
				return token{}, err
			}
			return token{kind: tString, start: start, end: lx.pos}, nil
		case c == '.':
			lx.pos++
			switch d := lx.cur(); {
			case d == 0:
				return token{}, lx.nulErr()
			case d == '.':
				lx.pos++
				switch lx.cur() {
				case 0:
					return token{}, lx.nulErr()
				case '.':
					lx.pos++
					return token{kind: tDots, start: start, end: lx.pos}, nil
				}
				return token{kind: tConcat, start: start, end: lx.pos}, nil
			case d >= 0 && isDigit(byte(d)):
				if err := lx.readNumeral(start); err != nil {
					return token{}, err
				}
				return token{kind: tNumber, start: start, end: lx.pos}, nil
			}
			return token{kind: tChar, ch: '.', start: start, end: lx.pos}, nil
		case isSpace(byte(c)):
			lx.pos++
		case isDigit(byte(c)):
			if err := lx.readNumeral(start); err != nil {
				return token{}, err
			}
			return token{kind: tNumber, start: start, end: lx.pos}, nil
		case isAlpha(byte(c)) || c == '_':
			for lx.pos < len(lx.src) && isWord(lx.src[lx.pos]) {
				lx.pos++
			}
			word := lx.src[start:lx.pos]
			if k, ok := keywords[string(word)]; ok {
				return token{kind: k, start: start, end: lx.pos}, nil
			}
			if lx.reserved != "" && bytes.HasPrefix(word, []byte(lx.reserved)) {
				return token{}, &ReservedError{Line: lx.line, Name: string(word), Prefix: lx.reserved}
			}
			return token{kind: tName, start: start, end: lx.pos}, nil
		case c == 0:
			return token{}, lx.nulErr()
		default:
			lx.pos++
			return token{kind: tChar, ch: byte(c), start: start, end: lx.pos}, nil
		}
	}
}

// twoCharOp is the token of c followed by '='.
func twoCharOp(c byte) tokKind {
	switch c {
	case '=':
		return tEq
	case '<':
		return tLe
	case '>':
		return tGe
	}
	return tNe
}
