// Package luasrc rewrites the text of a client's Lua 5.1 script so that every
// free (global) name goes through a sandbox table keyfence controls, `...` of
// the main chunk goes through a function, and every loop and function body
// starts with a time-budget tick.
//
// Redis 7.0's Lua has no setfenv, getfenv or debug library, so keyfence cannot
// hand a script its own environment at run time; rewriting the text is what
// is left. A single name this package misses reaches the real globals (the
// real redis) and escapes the tenant's fence, so the lexer and the parser are
// a line-by-line transcription of Lua 5.1.5's llex.c and lparser.c (the Lua
// that Redis embeds), not a grammar written from the manual: token
// boundaries, scoping (`local x = x`, `repeat … until` seeing the body's
// locals, the implicit `arg` of vararg functions) and the "ambiguous syntax"
// check follow the C code. Where the C code's behaviour depends on the build
// (nesting of [[…]]) or on C string quirks (a NUL byte swallowed into a
// number), Transform refuses the script with an *UnsupportedError instead of
// guessing.
//
// Edits never add or remove a line break, so the line numbers in upstream's
// error messages stay the client's. The sandbox root is a local of the
// caller's prelude, so a sandboxed script gets one local of the main chunk
// and one upvalue per function fewer than Lua's limits (199 and 59).
package luasrc
