package rewrite

import (
	"bytes"
	"crypto/sha1"
	"encoding/hex"
	"sort"
	"strconv"
	"strings"
)

// Lua scripts run upstream, where keyfence cannot see the commands they
// call. So each script is wrapped: a prelude, put on the script's first line
// so that error line numbers stay the client's, declares
//
//   - local KEYS: the client's own key names (upstream gets them prefixed,
//     for ACLs and cluster slots);
//   - local redis: like the real one, but call and pcall prefix every key
//     argument by the same key-specs as the proxy, strip key names from the
//     replies that carry them, and refuse commands a script must not run
//     (key patterns, anything not keyed).
//
// Redis names the line of the Lua function that raised an error, which for
// redis.call would be the prelude's line 1; so the wrapper marks such errors
// with the caller's line (" [kf:line=N]", "?" after a tail call) and
// FixScriptError puts it where Redis puts the line.
//
// Scripts build keys from KEYS and ARGV and store key names as values
// (BullMQ, asynq); since they see only unprefixed names, both stay
// consistent and inside the tenant. Only the commands named somewhere in the
// script's text are put in the prelude's table, which keeps it small; a
// command whose name is computed at run time is refused (fail closed).

// ScriptSHA returns the SHA1 hex that Redis would give the client's script.
func ScriptSHA(script []byte) string {
	sum := sha1.Sum(script)
	return hex.EncodeToString(sum[:])
}

// WrapScript returns the script keyfence loads upstream for a client script.
func (r *Rewriter) WrapScript(script []byte) []byte {
	prelude := r.luaPrelude(script)
	var out bytes.Buffer
	out.Grow(len(prelude) + len(script) + 1)
	body := script
	if bytes.HasPrefix(script, []byte("#!")) {
		// A shebang (script flags) must stay the first line.
		nl := bytes.IndexByte(script, '\n')
		if nl < 0 {
			out.Write(script)
			out.WriteByte('\n')
			out.WriteString(prelude)
			return out.Bytes()
		}
		out.Write(script[:nl+1])
		body = script[nl+1:]
	}
	out.WriteString(prelude)
	out.WriteByte(' ')
	out.Write(body)
	return out.Bytes()
}

// luaScriptRefused lists the commands a script may name but never run
// through keyfence, with the reason given.
const luaPatternRefusal = "ERR keyfence: key-pattern commands (KEYS, SCAN, RANDOMKEY, SORT BY/GET, FLUSHDB, FLUSHALL) are not allowed inside scripts"

// luaPreludeCode is the fixed part of the prelude. It must stay free of "--"
// comments and of line breaks once joined: it shares the script's first line.
const luaPreludeCode = `
local __kf_R = redis;
local __kf_K = KEYS;
local KEYS = {};
for __kf_i = 1, #__kf_K do KEYS[__kf_i] = string.sub(__kf_K[__kf_i], #__kf_P + 1) end;
local function __kf_strip(s) if type(s) == "string" and string.sub(s, 1, #__kf_P) == __kf_P then return string.sub(s, #__kf_P + 1) end return s end;
local function __kf_noerr(msg) return {err = msg} end;
local function __kf_kw(a, kw, sf) local n = #a; local s, e, d = sf + 1, n, 1; if sf <= 0 then s, e, d = n + sf + 1, 1, -1 end; local i = s; while i ~= e do if i > n or i < 2 then return nil end; if string.lower(a[i]) == kw then return i + 1 end; i = i + d end; return nil end;
local function __kf_mark(c, a) local n = #a; local m = {}; for _, sp in ipairs(c.k) do local f; if sp[1] == 1 then f = sp[2] + 1 else f = __kf_kw(a, sp[2], sp[3]) end; if f and sp[1] == 2 and sp[4] == 1 and sp[5] == 0 and sp[3] > 0 then for i = f, n do if string.lower(a[i - 1]) == sp[2] then m[i] = true end end; f = nil end; if f then local l, st, skip = nil, 1, false; if sp[4] == 1 then st = sp[6]; if sp[5] >= 0 then l = f + sp[5] elseif sp[7] == 0 then l = n + sp[5] + 1 else l = f + math.floor((n - f + 1) / sp[7]) + sp[5] end else st = sp[7]; if f + sp[5] > n then return nil end; local nk = tonumber(a[f + sp[5]]); if not nk or nk < 0 or nk ~= math.floor(nk) then return nil end; f = f + sp[6]; l = f + nk - 1; skip = nk == 0 end; if not skip then if f > n or l > n or l < f then return nil end; for i = f, l, st do m[i] = true end end end end; return m end;
local function __kf_sort(c, a) local m = {[2] = true}; local i = 3; while i <= #a do local w = string.lower(a[i]); if w == "by" or w == "get" then return nil, __kf_PAT elseif w == "limit" then i = i + 2 elseif w == "store" and c.store then m[i + 1] = true; i = i + 1 end; i = i + 1 end; return m end;
local function __kf_prep(a) local name = string.lower(tostring(a[1] or "")); local c = __kf_S[name]; if c and c.sub then c = a[2] and c.sub[string.lower(tostring(a[2]))] end; if not c then if __kf_PATCMD[name] then return nil, __kf_PAT end; return nil, "ERR keyfence: command '" .. name .. "' is not allowed inside scripts through keyfence (only key commands named literally in the script)" end; local m, e; if c.sort then m, e = __kf_sort(c, a) else m = __kf_mark(c, a) end; if not m then return nil, e or "ERR keyfence: cannot locate the keys of '" .. name .. "'" end; for i in pairs(m) do if a[i] ~= nil then a[i] = __kf_P .. a[i] end end; return c end;
local function __kf_fix(c, r) if type(r) ~= "table" then return r end; if r.err then r.err = string.gsub(r.err, __kf_PE, "") return r end; if c.r == 1 then r[1] = __kf_strip(r[1]) elseif c.r == 2 then if r.map then local m = {}; for k, v in pairs(r.map) do m[__kf_strip(k)] = v end; r.map = m else for _, s in ipairs(r) do if type(s) == "table" then s[1] = __kf_strip(s[1]) end end end end; return r end;
local function __kf_raise(r) local _, w = pcall(error, "", 4); r.err = r.err .. " [kf:line=" .. (string.match(tostring(w), ":(%d+):") or "?") .. "]"; error(r) end;
local redis = setmetatable({
call = function(...) local a = {...}; local c, e = __kf_prep(a); if not c then __kf_raise(__kf_R.error_reply(e)) end; local r = __kf_R.pcall(unpack(a, 1, select("#", ...))); if type(r) == "table" and r.err then __kf_raise(r) end; return __kf_fix(c, r) end,
pcall = function(...) local a = {...}; local c, e = __kf_prep(a); if not c then return __kf_noerr(e) end; return __kf_fix(c, __kf_R.pcall(unpack(a, 1, select("#", ...)))) end
}, {__index = __kf_R});
`

// luaPatternCommands are refused inside scripts with luaPatternRefusal.
var luaPatternCommands = []string{"keys", "scan", "randomkey", "flushdb", "flushall"}

func (r *Rewriter) luaPrelude(script []byte) string {
	var b strings.Builder
	b.WriteString("local __kf_P = ")
	b.WriteString(luaQuote(string(r.prefix)))
	b.WriteString("; local __kf_PE = ")
	b.WriteString(luaQuote(luaPatternEscape(string(r.prefix))))
	b.WriteString("; local __kf_PAT = ")
	b.WriteString(luaQuote(luaPatternRefusal))
	b.WriteString("; local __kf_PATCMD = {")
	for _, c := range luaPatternCommands {
		b.WriteString(c + " = true, ")
	}
	b.WriteString("}; local __kf_S = {")
	for _, name := range scriptCommands(script) {
		cmd := commandTable[name]
		b.WriteString("[" + luaQuote(name) + "] = ")
		if cmd.Subcommands != nil {
			b.WriteString("{sub = {")
			subs := make([]string, 0, len(cmd.Subcommands))
			for s := range cmd.Subcommands {
				subs = append(subs, s)
			}
			sort.Strings(subs)
			for _, s := range subs {
				if sc := cmd.Subcommands[s]; luaAllowed(sc) {
					b.WriteString("[" + luaQuote(s) + "] = ")
					writeLuaSpec(&b, sc)
					b.WriteString(", ")
				}
			}
			b.WriteString("}}, ")
			continue
		}
		writeLuaSpec(&b, cmd)
		b.WriteString(", ")
	}
	b.WriteString("};")
	b.WriteString(strings.ReplaceAll(luaPreludeCode, "\n", " "))
	return b.String()
}

// luaAllowed says whether a script may call cmd through the wrapper.
func luaAllowed(cmd *Command) bool {
	switch cmd.Name {
	case "sort", "sort_ro", "publish", "spublish":
		return true
	}
	return cmd.Policy == PolicyKeyed && !cmd.HasFlag(FlagNoScript)
}

// scriptCommands returns the allowed commands whose names appear as words
// in the script, sorted.
func scriptCommands(script []byte) []string {
	seen := map[string]bool{}
	word := func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-')
	}
	for _, w := range strings.FieldsFunc(string(script), word) {
		w = strings.ToLower(w)
		if seen[w] {
			continue
		}
		if c, ok := commandTable[w]; ok && (luaAllowed(c) || c.Subcommands != nil) {
			seen[w] = true
		}
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		if c := commandTable[n]; c.Subcommands != nil {
			ok := false
			for _, sc := range c.Subcommands {
				ok = ok || luaAllowed(sc)
			}
			if !ok {
				continue
			}
		}
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// writeLuaSpec writes {k = {spec…}, r = replykind, sort/store flags}. A spec
// is {1, index} or {2, keyword, startfrom} for the begin search, followed by
// 1, lastkey, step, limit (range) or 2, keynumidx, firstkey, step (keynum).
func writeLuaSpec(b *strings.Builder, cmd *Command) {
	b.WriteString("{k = {")
	switch cmd.Name {
	case "publish", "spublish":
		b.WriteString("{1, 1, 0, 1, 0, 1, 0}")
	}
	for _, sp := range cmd.KeySpecs {
		if sp.BeginSearch.Unknown || sp.FindKeys.Unknown {
			continue // SORT's BY/GET/STORE: handled by __kf_sort
		}
		b.WriteString("{")
		if sp.BeginSearch.Keyword == "" {
			b.WriteString("1, " + strconv.Itoa(sp.BeginSearch.Index) + ", 0, ")
		} else {
			b.WriteString("2, " + luaQuote(strings.ToLower(sp.BeginSearch.Keyword)) + ", " + strconv.Itoa(sp.BeginSearch.StartFrom) + ", ")
		}
		fk := sp.FindKeys
		if fk.KeyNum {
			b.WriteString("2, " + strconv.Itoa(fk.KeyNumIdx) + ", " + strconv.Itoa(fk.FirstKey) + ", " + strconv.Itoa(max(fk.KeyStep, 1)))
		} else {
			b.WriteString("1, " + strconv.Itoa(fk.LastKey) + ", " + strconv.Itoa(max(fk.KeyStep, 1)) + ", " + strconv.Itoa(fk.Limit))
		}
		b.WriteString("}, ")
	}
	b.WriteString("}")
	switch cmd.Reply {
	case ReplyKeyFirst:
		b.WriteString(", r = 1")
	case ReplyStreams:
		b.WriteString(", r = 2")
	}
	switch cmd.Name {
	case "sort":
		b.WriteString(", sort = true, store = true")
	case "sort_ro":
		b.WriteString(", sort = true")
	}
	b.WriteString("}")
}

// luaQuote returns s as a Lua string literal.
func luaQuote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < ' ' || c >= 0x7f:
			b.WriteString("\\" + strconv.Itoa(int(c)))
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// luaPatternEscape escapes Lua pattern magic characters for gsub.
func luaPatternEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if strings.IndexByte("^$()%.[]*+-?", s[i]) >= 0 {
			b.WriteByte('%')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// FixScriptError rewrites the location of a script error raised through
// the prelude's redis.call: the marker the prelude left names the client's
// line; without one the message is left as it is.
func FixScriptError(msg []byte) []byte {
	i := bytes.Index(msg, []byte(" [kf:line="))
	if i < 0 {
		return msg
	}
	j := bytes.IndexByte(msg[i:], ']')
	if j < 0 {
		return msg
	}
	line := msg[i+len(" [kf:line=") : i+j]
	out := append(append([]byte(nil), msg[:i]...), msg[i+j+1:]...)
	loc := []byte(", on @user_script:1.")
	if k := bytes.LastIndex(out, loc); k >= 0 {
		repl := []byte(".") // after a tail call the line is unknown: say none
		if string(line) != "?" {
			repl = []byte(", on @user_script:" + string(line) + ".")
		}
		out = append(out[:k], append(repl, out[k+len(loc):]...)...)
	}
	return out
}
