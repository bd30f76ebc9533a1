// Package rewrite turns a tenant's Redis commands into commands on the
// tenant's namespace and turns upstream replies back into what the tenant
// expects to see.
//
// It is pure: no I/O, no goroutines, no package-level mutable state. It holds
// the command table generated from Redis's own key-specs (table_gen.go, made
// by `go generate` from commands.json), the RESP framing used on both sides
// of the proxy, the request rewriter (keys, patterns, channels), the reply
// stripper, and the Lua sandbox: the function library every script runs
// through (sandbox.go, sandbox.lua) and the rewriting of a script's text
// (internal/luasrc). Everything that keyfence forwards upstream has passed through
// this package first, so it is the most tested package of the project.
package rewrite
