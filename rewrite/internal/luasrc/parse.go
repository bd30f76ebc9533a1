package luasrc

import (
	"fmt"
	"slices"
)

// Limits of Lua 5.1 (luaconf.h, llimits.h) that decide whether a chunk
// compiles. The code generator's own limits (250 registers, 2^18 constants,
// jump lengths) are not modelled: a script past them is accepted here and
// then refused by upstream Lua with its own message.
const (
	maxLevels   = 200   // LUAI_MAXCCALLS: "chunk has too many syntax levels"
	maxVars     = 200   // LUAI_MAXVARS: active locals per function
	maxUpvalues = 60    // LUAI_MAXUPVALUES
	maxLocVars  = 32767 // SHRT_MAX: locals declared in one function
)

// editKind says what an edit does to the source.
type editKind uint8

const (
	editRead      editKind = iota // insert Read before a free name
	editWrite                     // insert Write before a free name
	editVararg                    // replace a main-chunk `...`
	editTick                      // insert Tick after a token
	editTailOpen                  // insert TailCall before a returned call
	editTailClose                 // close it after the call's last token
)

// edit is one change at a byte offset: a free name's start, a `...`'s start,
// or the end of the token a tick follows.
// Offsets are int32 (Transform refuses 2 GiB of source): a hostile script
// has one edit per few bytes.
type edit struct {
	pos, end int32 // end of the name or `...`
	kind     editKind
	// semicolon: a main-chunk `...` is directly followed by '(' that starts
	// the next statement; after the replacement, which is a call, that '('
	// would read as call arguments, so a ';' goes between.
	semicolon bool
}

// local is one declared local variable; its identity (the pointer) is what
// upvalues are counted by, as lparser.c's indexupvalue does.
type local struct {
	name string
	fs   *funcState // the function that declares it
}

type blockCnt struct {
	nactvar   int
	breakable bool
}

// funcState is the part of lparser.c's FuncState that decides scoping and
// validity.
type funcState struct {
	prev     *funcState
	actvar   []*local // active locals, innermost last
	pending  []*local // declared, not yet active (new_localvar before adjustlocalvars)
	nlocvars int
	upvals   map[*local]bool
	isVararg bool
	blocks   []blockCnt
}

// expKind is the part of expdesc.k the grammar checks.
type expKind uint8

const (
	expOther   expKind = iota // constants, operators, parenthesised expressions
	expLocal                  // local or upvalue
	expGlobal                 // free name
	expIndexed                // t.k, t[k]
	expCall                   // f(...), o:m(...)
)

type expDesc struct {
	k    expKind
	edit int // for expGlobal: index of the name's edit
}

// parser is lparser.c's LexState with one token of look-ahead.
type parser struct {
	lx        lexer
	t         token
	ahead     token
	hasAhead  bool
	lastline  int
	prevEnd   int // where the token before t ends
	level     int
	fs        *funcState
	edits     []edit
	dotsCalls int // main-chunk `...` seen (for freeNames)
	// sandboxSlot: the output will use the sandbox root, which the
	// caller's prelude declares as a local of the main chunk; so the main
	// chunk gets one local less and every function one upvalue less.
	sandboxSlot bool
	// scope maps a name to its active declarations, innermost last, across
	// all open functions: lparser.c searches each function's locals in
	// turn, which a hostile script with many nested locals turns into
	// seconds of work per name.
	scope map[string][]*local
}

func (p *parser) errorf(format string, args ...any) error {
	return &SyntaxError{Line: p.lx.line, Msg: fmt.Sprintf(format, args...)}
}

func (p *parser) text(t token) string { return string(p.lx.src[t.start:t.end]) }

// next is luaX_next.
func (p *parser) next() error {
	p.lastline = p.lx.line
	p.prevEnd = p.t.end
	if p.hasAhead {
		p.t = p.ahead
		p.hasAhead = false
		return nil
	}
	t, err := p.lx.next()
	if err != nil {
		return err
	}
	p.t = t
	return nil
}

// lookahead is luaX_lookahead: it moves the lexer, and so the line the
// "ambiguous syntax" check sees, one token further.
func (p *parser) lookahead() error {
	t, err := p.lx.next()
	if err != nil {
		return err
	}
	p.ahead = t
	p.hasAhead = true
	return nil
}

func (p *parser) is(c byte) bool { return p.t.kind == tChar && p.t.ch == c }

func (p *parser) testnext(c byte) (bool, error) {
	if p.is(c) {
		return true, p.next()
	}
	return false, nil
}

func (p *parser) testnextKind(k tokKind) (bool, error) {
	if p.t.kind == k {
		return true, p.next()
	}
	return false, nil
}

func (p *parser) near() string {
	if p.t.kind == tEOS {
		return "<eof>"
	}
	return p.text(p.t)
}

func (p *parser) expected(what string) error {
	return p.errorf("'%s' expected near '%s'", what, p.near())
}

func (p *parser) checknext(c byte) error {
	if !p.is(c) {
		return p.expected(string(c))
	}
	return p.next()
}

func (p *parser) checknextKind(k tokKind, what string) error {
	if p.t.kind != k {
		return p.expected(what)
	}
	return p.next()
}

func (p *parser) checkname() (string, error) {
	if p.t.kind != tName {
		return "", p.expected("<name>")
	}
	name := p.text(p.t)
	return name, p.next()
}

func (p *parser) enterlevel() error {
	p.level++
	if p.level > maxLevels {
		return p.errorf("chunk has too many syntax levels")
	}
	return nil
}

func (p *parser) openFunc(vararg bool) {
	p.fs = &funcState{prev: p.fs, isVararg: vararg}
}

func (p *parser) closeFunc() {
	p.removevars(0)
	p.fs = p.fs.prev
}

// removevars ends the scope of the current function's locals past level.
// Scopes nest, so each is the innermost declaration of its name.
func (p *parser) removevars(level int) {
	fs := p.fs
	for i := len(fs.actvar) - 1; i >= level; i-- {
		name := fs.actvar[i].name
		stack := p.scope[name]
		if len(stack) == 1 {
			delete(p.scope, name)
		} else {
			p.scope[name] = stack[:len(stack)-1]
		}
	}
	fs.actvar = fs.actvar[:level]
}

func (p *parser) newLocalvar(name string) error {
	fs := p.fs
	n := len(fs.actvar) + len(fs.pending) + 1
	if n > maxVars {
		return p.errorf("too many local variables (limit is %d)", maxVars)
	}
	if p.sandboxSlot && fs.prev == nil && n > maxVars-1 {
		return &UnsupportedError{Line: p.lx.line, Msg: fmt.Sprintf("more than %d local variables in the main chunk (the sandbox needs one of Lua's %d)", maxVars-1, maxVars)}
	}
	if fs.nlocvars >= maxLocVars {
		return p.errorf("too many local variables")
	}
	fs.nlocvars++
	fs.pending = append(fs.pending, &local{name: name, fs: fs})
	return nil
}

func (p *parser) adjustlocalvars(n int) {
	fs := p.fs
	for _, v := range fs.pending[:n] {
		p.scope[v.name] = append(p.scope[v.name], v)
	}
	fs.actvar = append(fs.actvar, fs.pending[:n]...)
	fs.pending = fs.pending[n:]
}

func (p *parser) enterblock(breakable bool) {
	p.fs.blocks = append(p.fs.blocks, blockCnt{nactvar: len(p.fs.actvar), breakable: breakable})
}

func (p *parser) leaveblock() {
	fs := p.fs
	bl := fs.blocks[len(fs.blocks)-1]
	fs.blocks = fs.blocks[:len(fs.blocks)-1]
	p.removevars(bl.nactvar)
}

// resolve finds the declaration name refers to here; nil means a free
// name. Each function between the use and the declaration gets an upvalue,
// as singlevaraux does; once one already has it, so have the ones outside.
func (p *parser) resolve(name []byte) (*local, error) {
	stack := p.scope[string(name)]
	if len(stack) == 0 {
		return nil, nil
	}
	v := stack[len(stack)-1]
	for fs := p.fs; fs != v.fs && !fs.upvals[v]; fs = fs.prev {
		if len(fs.upvals)+1 > maxUpvalues {
			return nil, p.errorf("too many upvalues (limit is %d)", maxUpvalues)
		}
		if p.sandboxSlot && len(fs.upvals)+1 > maxUpvalues-1 {
			return nil, &UnsupportedError{Line: p.lx.line, Msg: fmt.Sprintf("a function with more than %d upvalues (the sandbox needs one of Lua's %d)", maxUpvalues-1, maxUpvalues)}
		}
		if fs.upvals == nil {
			fs.upvals = map[*local]bool{}
		}
		fs.upvals[v] = true
	}
	return v, nil
}

// isFree says whether name is a free name here, without recording upvalues.
func (p *parser) isFree(name []byte) bool { return len(p.scope[string(name)]) == 0 }

func (p *parser) singlevar() (expDesc, error) {
	if p.t.kind != tName {
		return expDesc{}, p.expected("<name>")
	}
	tok := p.t
	v, err := p.resolve(p.lx.src[tok.start:tok.end])
	if err != nil {
		return expDesc{}, err
	}
	if err := p.next(); err != nil {
		return expDesc{}, err
	}
	if v != nil {
		return expDesc{k: expLocal}, nil
	}
	p.edits = append(p.edits, edit{pos: int32(tok.start), end: int32(tok.end), kind: editRead})
	return expDesc{k: expGlobal, edit: len(p.edits) - 1}, nil
}

// tick records a tick after the token just consumed.
func (p *parser) tickAfter(t token) {
	p.edits = append(p.edits, edit{pos: int32(t.end), end: int32(t.end), kind: editTick})
}

func blockFollow(k tokKind) bool {
	switch k {
	case tElse, tElseif, tEnd, tUntil, tEOS:
		return true
	}
	return false
}

// parseChunk is luaY_parser: the main function is always vararg.
func (p *parser) parseChunk() error {
	p.lx.line = 1
	p.lastline = 1
	p.openFunc(true)
	if err := p.next(); err != nil {
		return err
	}
	if err := p.chunk(); err != nil {
		return err
	}
	if p.t.kind != tEOS {
		return p.expected("<eof>")
	}
	p.closeFunc()
	return nil
}

func (p *parser) chunk() error {
	if err := p.enterlevel(); err != nil {
		return err
	}
	islast := false
	for !islast && !blockFollow(p.t.kind) {
		var err error
		if islast, err = p.statement(); err != nil {
			return err
		}
		if _, err := p.testnext(';'); err != nil {
			return err
		}
	}
	p.level--
	return nil
}

func (p *parser) block() error {
	p.enterblock(false)
	if err := p.chunk(); err != nil {
		return err
	}
	p.leaveblock()
	return nil
}

func (p *parser) statement() (islast bool, err error) {
	switch p.t.kind {
	case tIf:
		return false, p.ifstat()
	case tWhile:
		return false, p.whilestat()
	case tDo:
		if err := p.next(); err != nil {
			return false, err
		}
		if err := p.block(); err != nil {
			return false, err
		}
		return false, p.checknextKind(tEnd, "end")
	case tFor:
		return false, p.forstat()
	case tRepeat:
		return false, p.repeatstat()
	case tFunction:
		return false, p.funcstat()
	case tLocal:
		if err := p.next(); err != nil {
			return false, err
		}
		if ok, err := p.testnextKind(tFunction); err != nil {
			return false, err
		} else if ok {
			return false, p.localfunc()
		}
		return false, p.localstat()
	case tReturn:
		return true, p.retstat()
	case tBreak:
		if err := p.next(); err != nil {
			return true, err
		}
		return true, p.breakstat()
	}
	return false, p.exprstat()
}

func (p *parser) ifstat() error {
	if err := p.testThenBlock(); err != nil {
		return err
	}
	for p.t.kind == tElseif {
		if err := p.testThenBlock(); err != nil {
			return err
		}
	}
	if p.t.kind == tElse {
		if err := p.next(); err != nil {
			return err
		}
		if err := p.block(); err != nil {
			return err
		}
	}
	return p.checknextKind(tEnd, "end")
}

func (p *parser) testThenBlock() error {
	if err := p.next(); err != nil { // IF or ELSEIF
		return err
	}
	if err := p.expr(); err != nil {
		return err
	}
	if err := p.checknextKind(tThen, "then"); err != nil {
		return err
	}
	return p.block()
}

// doTick consumes DO and puts a tick right after it.
func (p *parser) doTick() error {
	do := p.t
	if err := p.checknextKind(tDo, "do"); err != nil {
		return err
	}
	p.tickAfter(do)
	return nil
}

func (p *parser) whilestat() error {
	if err := p.next(); err != nil {
		return err
	}
	if err := p.expr(); err != nil {
		return err
	}
	p.enterblock(true)
	if err := p.doTick(); err != nil {
		return err
	}
	if err := p.block(); err != nil {
		return err
	}
	if err := p.checknextKind(tEnd, "end"); err != nil {
		return err
	}
	p.leaveblock()
	return nil
}

func (p *parser) repeatstat() error {
	p.enterblock(true)  // loop block
	p.enterblock(false) // scope block: `until` sees the body's locals
	rep := p.t
	if err := p.next(); err != nil {
		return err
	}
	p.tickAfter(rep)
	if err := p.chunk(); err != nil {
		return err
	}
	if err := p.checknextKind(tUntil, "until"); err != nil {
		return err
	}
	if err := p.expr(); err != nil {
		return err
	}
	p.leaveblock()
	p.leaveblock()
	return nil
}

func (p *parser) forstat() error {
	p.enterblock(true)
	if err := p.next(); err != nil {
		return err
	}
	name, err := p.checkname()
	if err != nil {
		return err
	}
	switch {
	case p.is('='):
		err = p.fornum(name)
	case p.is(',') || p.t.kind == tIn:
		err = p.forlist(name)
	default:
		err = p.errorf("'=' or 'in' expected near '%s'", p.near())
	}
	if err != nil {
		return err
	}
	if err := p.checknextKind(tEnd, "end"); err != nil {
		return err
	}
	p.leaveblock()
	return nil
}

// The three hidden control variables of a for loop count against the 200
// locals limit, as in Lua; their names cannot clash with a Name.
func (p *parser) forControl(names ...string) error {
	for _, n := range names {
		if err := p.newLocalvar(n); err != nil {
			return err
		}
	}
	return nil
}

func (p *parser) fornum(name string) error {
	if err := p.forControl("(for index)", "(for limit)", "(for step)", name); err != nil {
		return err
	}
	if err := p.checknext('='); err != nil {
		return err
	}
	if err := p.expr(); err != nil {
		return err
	}
	if err := p.checknext(','); err != nil {
		return err
	}
	if err := p.expr(); err != nil {
		return err
	}
	if ok, err := p.testnext(','); err != nil {
		return err
	} else if ok {
		if err := p.expr(); err != nil {
			return err
		}
	}
	return p.forbody(1)
}

func (p *parser) forlist(name string) error {
	if err := p.forControl("(for generator)", "(for state)", "(for control)", name); err != nil {
		return err
	}
	nvars := 1
	for {
		ok, err := p.testnext(',')
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		n, err := p.checkname()
		if err != nil {
			return err
		}
		if err := p.newLocalvar(n); err != nil {
			return err
		}
		nvars++
	}
	if err := p.checknextKind(tIn, "in"); err != nil {
		return err
	}
	if _, err := p.explist1(); err != nil {
		return err
	}
	return p.forbody(nvars)
}

func (p *parser) forbody(nvars int) error {
	p.adjustlocalvars(3)
	if err := p.doTick(); err != nil {
		return err
	}
	p.enterblock(false)
	p.adjustlocalvars(nvars)
	if err := p.block(); err != nil {
		return err
	}
	p.leaveblock()
	return nil
}

func (p *parser) funcstat() error {
	if err := p.next(); err != nil {
		return err
	}
	v, err := p.singlevar()
	if err != nil {
		return err
	}
	fields, needself := 0, false
	for p.is('.') {
		if err := p.field(); err != nil {
			return err
		}
		fields++
	}
	if p.is(':') {
		needself = true
		if err := p.field(); err != nil {
			return err
		}
		fields++
	}
	if fields == 0 && v.k == expGlobal {
		p.edits[v.edit].kind = editWrite
	}
	return p.body(needself)
}

// field is `.` or `:` followed by a name, which is not a variable.
func (p *parser) field() error {
	if err := p.next(); err != nil {
		return err
	}
	_, err := p.checkname()
	return err
}

func (p *parser) localfunc() error {
	name, err := p.checkname()
	if err != nil {
		return err
	}
	if err := p.newLocalvar(name); err != nil {
		return err
	}
	p.adjustlocalvars(1) // f is visible in its own body
	return p.body(false)
}

func (p *parser) localstat() error {
	nvars := 0
	for {
		name, err := p.checkname()
		if err != nil {
			return err
		}
		if err := p.newLocalvar(name); err != nil {
			return err
		}
		nvars++
		if ok, err := p.testnext(','); err != nil {
			return err
		} else if !ok {
			break
		}
	}
	if ok, err := p.testnext('='); err != nil {
		return err
	} else if ok {
		// The right-hand side sees the outer names: `local x = x`.
		if _, err := p.explist1(); err != nil {
			return err
		}
	}
	p.adjustlocalvars(nvars)
	return nil
}

func (p *parser) retstat() error {
	if err := p.next(); err != nil {
		return err
	}
	if blockFollow(p.t.kind) || p.is(';') {
		return nil
	}
	// `return f(...)` is a tail call, after which Lua keeps no line of the
	// caller for an error raised in f; wrapped as `return I(f(...))` it
	// is an ordinary call (I returns all of f's results), and an error in
	// redis.call can name the script's line as Redis does.
	mark, start := len(p.edits), p.t.start
	isCall, err := p.exprIsCall()
	if err != nil {
		return err
	}
	if isCall && !p.is(',') {
		p.edits = slices.Insert(p.edits, mark, edit{pos: int32(start), kind: editTailOpen})
		p.edits = append(p.edits, edit{pos: int32(p.prevEnd), kind: editTailClose})
	}
	for {
		ok, err := p.testnext(',')
		if err != nil || !ok {
			return err
		}
		if err := p.expr(); err != nil {
			return err
		}
	}
}

func (p *parser) breakstat() error {
	for i := len(p.fs.blocks) - 1; i >= 0; i-- {
		if p.fs.blocks[i].breakable {
			return nil
		}
	}
	return p.errorf("no loop to break near '%s'", p.near())
}

func (p *parser) exprstat() error {
	v, err := p.primaryexp()
	if err != nil {
		return err
	}
	if v.k == expCall {
		return nil
	}
	// Assignment: every target must be a variable; bare free names become
	// writes.
	nvars := 1
	for {
		if v.k != expLocal && v.k != expGlobal && v.k != expIndexed {
			return p.errorf("syntax error near '%s'", p.near())
		}
		if v.k == expGlobal {
			p.edits[v.edit].kind = editWrite
		}
		ok, err := p.testnext(',')
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		if v, err = p.primaryexp(); err != nil {
			return err
		}
		if nvars > maxLevels-p.level {
			return p.errorf("too many variables in assignment")
		}
		nvars++
	}
	if err := p.checknext('='); err != nil {
		return err
	}
	_, err = p.explist1()
	return err
}

func (p *parser) body(needself bool) error {
	p.openFunc(false)
	if err := p.checknext('('); err != nil {
		return err
	}
	if needself {
		if err := p.newLocalvar("self"); err != nil {
			return err
		}
		p.adjustlocalvars(1)
	}
	if err := p.parlist(); err != nil {
		return err
	}
	closing := p.t
	if err := p.checknext(')'); err != nil {
		return err
	}
	p.tickAfter(closing)
	if err := p.chunk(); err != nil {
		return err
	}
	if err := p.checknextKind(tEnd, "end"); err != nil {
		return err
	}
	p.closeFunc()
	return nil
}

func (p *parser) parlist() error {
	fs := p.fs
	nparams := 0
	if !p.is(')') {
		for {
			switch p.t.kind {
			case tName:
				name, err := p.checkname()
				if err != nil {
					return err
				}
				if err := p.newLocalvar(name); err != nil {
					return err
				}
				nparams++
			case tDots:
				if err := p.next(); err != nil {
					return err
				}
				// LUA_COMPAT_VARARG (on in Redis's build): a vararg
				// function has a local `arg` holding its extra arguments.
				if err := p.newLocalvar("arg"); err != nil {
					return err
				}
				nparams++
				fs.isVararg = true
			default:
				return p.errorf("<name> or '...' expected near '%s'", p.near())
			}
			if fs.isVararg {
				break
			}
			if ok, err := p.testnext(','); err != nil {
				return err
			} else if !ok {
				break
			}
		}
	}
	p.adjustlocalvars(nparams)
	return nil
}

func (p *parser) explist1() (int, error) {
	n := 1
	if err := p.expr(); err != nil {
		return 0, err
	}
	for {
		ok, err := p.testnext(',')
		if err != nil {
			return 0, err
		}
		if !ok {
			return n, nil
		}
		if err := p.expr(); err != nil {
			return 0, err
		}
		n++
	}
}

func (p *parser) funcargs() error {
	line := p.lx.line
	switch {
	case p.is('('):
		if line != p.lastline {
			return p.errorf("ambiguous syntax (function call x new statement) near '('")
		}
		if err := p.next(); err != nil {
			return err
		}
		if !p.is(')') {
			if _, err := p.explist1(); err != nil {
				return err
			}
		}
		return p.checknext(')')
	case p.is('{'):
		return p.constructor()
	case p.t.kind == tString:
		return p.next()
	}
	return p.errorf("function arguments expected near '%s'", p.near())
}

func (p *parser) prefixexp() (expDesc, error) {
	switch {
	case p.is('('):
		if err := p.next(); err != nil {
			return expDesc{}, err
		}
		if err := p.expr(); err != nil {
			return expDesc{}, err
		}
		// A parenthesised expression is a value: neither a call
		// statement nor an assignment target.
		return expDesc{k: expOther}, p.checknext(')')
	case p.t.kind == tName:
		return p.singlevar()
	}
	return expDesc{}, p.errorf("unexpected symbol near '%s'", p.near())
}

func (p *parser) primaryexp() (expDesc, error) {
	v, err := p.prefixexp()
	if err != nil {
		return v, err
	}
	for {
		switch {
		case p.is('.'):
			if err := p.field(); err != nil {
				return v, err
			}
			v = expDesc{k: expIndexed}
		case p.is('['):
			if err := p.yindex(); err != nil {
				return v, err
			}
			v = expDesc{k: expIndexed}
		case p.is(':'):
			if err := p.field(); err != nil {
				return v, err
			}
			if err := p.funcargs(); err != nil {
				return v, err
			}
			v = expDesc{k: expCall}
		case p.is('(') || p.is('{') || p.t.kind == tString:
			if err := p.funcargs(); err != nil {
				return v, err
			}
			v = expDesc{k: expCall}
		default:
			return v, nil
		}
	}
}

func (p *parser) yindex() error {
	if err := p.next(); err != nil {
		return err
	}
	if err := p.expr(); err != nil {
		return err
	}
	return p.checknext(']')
}

// simpleexp parses a simple expression and says whether it is a call.
func (p *parser) simpleexp() (bool, error) {
	switch p.t.kind {
	case tNumber, tString, tNil, tTrue, tFalse:
		return false, p.next()
	case tDots:
		if !p.fs.isVararg {
			return false, p.errorf("cannot use '...' outside a vararg function near '...'")
		}
		dots := p.t
		if err := p.next(); err != nil {
			return false, err
		}
		if p.fs.prev == nil {
			p.dotsCalls++
			p.edits = append(p.edits, edit{pos: int32(dots.start), end: int32(dots.end), kind: editVararg, semicolon: p.is('(')})
		}
		return false, nil
	case tFunction:
		if err := p.next(); err != nil {
			return false, err
		}
		return false, p.body(false)
	case tChar:
		if p.t.ch == '{' {
			return false, p.constructor()
		}
	}
	v, err := p.primaryexp()
	return v.k == expCall, err
}

func (p *parser) constructor() error {
	if err := p.checknext('{'); err != nil {
		return err
	}
	for {
		if p.is('}') {
			break
		}
		switch {
		case p.t.kind == tName:
			// `name = value` is a key, anything else an expression.
			nameLine := p.lx.line
			if err := p.lookahead(); err != nil {
				return err
			}
			if p.ahead.kind == tChar && p.ahead.ch == '(' && p.lx.line != nameLine && p.isFree(p.lx.src[p.t.start:p.t.end]) {
				// The look-ahead moved the lexer to the '(' line, so Lua
				// does not see "f\n(" here as ambiguous; once f becomes
				// Read+f there is no look-ahead and it is.
				return &UnsupportedError{Line: p.lx.line, Msg: "in a table constructor, a free name called with '(' on a later line; put the '(' on the name's line"}
			}
			if p.ahead.kind == tChar && p.ahead.ch == '=' {
				if err := p.next(); err != nil {
					return err
				}
				if err := p.recfieldValue(); err != nil {
					return err
				}
			} else if err := p.expr(); err != nil {
				return err
			}
		case p.is('['):
			if err := p.yindex(); err != nil {
				return err
			}
			if err := p.recfieldValue(); err != nil {
				return err
			}
		default:
			if err := p.expr(); err != nil {
				return err
			}
		}
		ok, err := p.testnext(',')
		if err != nil {
			return err
		}
		if !ok {
			if ok, err = p.testnext(';'); err != nil {
				return err
			}
		}
		if !ok {
			break
		}
	}
	return p.checknext('}')
}

func (p *parser) recfieldValue() error {
	if err := p.checknext('='); err != nil {
		return err
	}
	return p.expr()
}

func (p *parser) expr() error {
	_, _, err := p.subexpr(0)
	return err
}

// exprIsCall parses an expression and says whether it is one call, with no
// operator around it.
func (p *parser) exprIsCall() (bool, error) {
	_, isCall, err := p.subexpr(0)
	return isCall, err
}

type binOpr int8

const noBinOpr binOpr = -1

// priority is lparser.c's table, in ORDER OPR: + - * / % ^ .. ~= == < <= > >= and or.
var priority = [...]struct{ left, right int }{
	{6, 6}, {6, 6}, {7, 7}, {7, 7}, {7, 7},
	{10, 9}, {5, 4},
	{3, 3}, {3, 3},
	{3, 3}, {3, 3}, {3, 3}, {3, 3},
	{2, 2}, {1, 1},
}

const unaryPriority = 8

func (p *parser) binopr() binOpr {
	switch p.t.kind {
	case tChar:
		switch p.t.ch {
		case '+':
			return 0
		case '-':
			return 1
		case '*':
			return 2
		case '/':
			return 3
		case '%':
			return 4
		case '^':
			return 5
		case '<':
			return 9
		case '>':
			return 11
		}
	case tConcat:
		return 6
	case tNe:
		return 7
	case tEq:
		return 8
	case tLe:
		return 10
	case tGe:
		return 12
	case tAnd:
		return 13
	case tOr:
		return 14
	}
	return noBinOpr
}

func (p *parser) subexpr(limit int) (binOpr, bool, error) {
	if err := p.enterlevel(); err != nil {
		return noBinOpr, false, err
	}
	isCall := false
	if p.t.kind == tNot || p.is('-') || p.is('#') {
		if err := p.next(); err != nil {
			return noBinOpr, false, err
		}
		if _, _, err := p.subexpr(unaryPriority); err != nil {
			return noBinOpr, false, err
		}
	} else {
		var err error
		if isCall, err = p.simpleexp(); err != nil {
			return noBinOpr, false, err
		}
	}
	op := p.binopr()
	for op != noBinOpr && priority[op].left > limit {
		isCall = false
		if err := p.next(); err != nil {
			return noBinOpr, false, err
		}
		nextop, _, err := p.subexpr(priority[op].right)
		if err != nil {
			return noBinOpr, false, err
		}
		op = nextop
	}
	p.level--
	return op, isCall, nil
}
