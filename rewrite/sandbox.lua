#!lua name=__NAME__
-- keyfence's Lua sandbox runtime: one Redis function library, loaded once per
-- upstream, that runs every tenant's scripts. keyfence sends a client's
-- script here already rewritten (rewrite/internal/luasrc): each free name N
-- reads __kf_E.N, each assignment to one goes to __kf_E.__kf_W.N, loops and
-- functions call __kf_E.__kf_T(), and the chunk starts with
-- "local __kf_E = ...;". The chunk is compiled once (kf_load) and called with
-- the sandbox environment P below as its only argument, so the script sees
-- only what P holds: Redis's own read-only libraries and a redis table whose
-- call/pcall check each command against keyfence's table, prefix its keys
-- and channels, and strip the prefix from what comes back.
--
-- Redis runs one script at a time, so the state of a run lives in upvalues
-- that run() resets; nothing a script can reach outlives its run: every table
-- it can get at is either created for the run or a proxy that refuses writes.
-- The command table, the safe globals, the cache bound and the versioned
-- names are filled in by rewrite/sandbox.go.

local SPECS = __SPECS__
local SAFE = __SAFE__
local MAX_CHUNK_BYTES = __MAXBYTES__

-- Bound at the first call: while a library loads, Redis offers only
-- redis.register_function, not the standard libraries.
local R, sub, lower, gsub, match, unpack, select, type, tostring, tonumber
local rawget, rawset, setmetatable, getmetatable, next, pairs, ipairs, pcall, xpcall, error, gcount, floor
local coresume

-- Compiled client chunks by the SHA1 of their rewritten text, bounded by
-- MAX_CHUNK_BYTES of text; keyfence reloads a chunk that went (NOSCRIPT).
local chunks, sizes, chunkBytes = {}, {}, 0

-- The state of the run under way.
local prefix, plen, prefixPat = "", 0, ""
local deadline, ticks, nextCheck, checkedMem, calls, expired, memLimit, budgetMs = 0, 0, 0, 0, 0, false, 0, 0

local P, G, W, RP, RAPI, CO, INTERNAL, PROXIED

local function readonly()
	error("Attempt to modify a readonly table", 2)
end

-- lineOf returns the line of the function level frames above its caller
-- (1: the caller itself), or "?" when Lua kept none (after a tail call).
local function lineOf(level)
	local _, w = pcall(error, "", level + 2)
	return match(tostring(w), ":(%d+):") or "?"
end

-- raise raises an error table for the client. Redis names the line of the
-- Lua function that raised it, which would be this library's, so the
-- client's line travels in a marker that keyfence turns into Redis's own
-- wording (Sandbox.FixScriptError). level counts frames above raise's
-- caller up to the client's function.
local function raise(r, level)
	r.err = r.err .. " [kf:line=" .. lineOf(level + 2) .. "]"
	error(r, 0)
end

local function readonlyC()
	raise({err = "ERR Attempt to modify a readonly table"}, 2)
end

local function nonexistent(_, k)
	error("Script attempted to access nonexistent global variable '" .. tostring(k) .. "'", 2)
end

local function timeoutError()
	return {err = "ERR keyfence: script stopped after running longer than --script-timeout (" .. budgetMs ..
		" ms); the writes it made before stay"}
end

local function memoryError()
	return {err = "ERR keyfence: script stopped after using more memory than --script-max-memory"}
end

-- now returns Redis's clock in milliseconds.
local function now()
	local t = R.call("TIME")
	return tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
end

-- checkClock marks the run expired once it is past its deadline, which
-- the first reading of the clock sets.
local function checkClock(mem)
	nextCheck, checkedMem = ticks + 100, mem
	local t = now()
	if deadline == 0 then
		deadline = t + budgetMs
	elseif t > deadline then
		expired = true
	end
end

-- tick runs at the top of every loop body and function body of a client
-- script: it stops a script past its time or memory budget. Once expired it
-- fires again at every tick, and the pcall wrappers re-raise, so a script
-- cannot catch its way past the budget.
local function tick()
	ticks = ticks + 1
	local mem = gcount("count")
	if mem > memLimit then
		expired = true
		raise(memoryError(), 1)
	end
	-- The clock is read at the first tick (a script without loops or
	-- functions never pays for it), then every hundred ticks and whenever
	-- memory grew by a MiB since it was last read: a loop whose iterations
	-- copy ever larger strings ticks slowly. redis.call reads it too.
	if ticks >= nextCheck or mem > checkedMem + 1024 then
		checkClock(mem)
	end
	if expired then
		raise(timeoutError(), 1)
	end
end

-- caught is what the sandbox's pcall, xpcall and coroutine.resume return:
-- a script past its budget cannot catch its way on, and an error table it
-- caught loses the line marker meant for keyfence.
local function unmark(e)
	if type(e) == "table" and type(e.err) == "string" then
		e.err = gsub(e.err, " %[kf:line=[%d?]*%]", "")
	end
	return e
end

local function caught(ok, ...)
	if expired then
		error(timeoutError(), 0)
	end
	if ok then return ok, ... end
	return ok, unmark((...)), select(2, ...)
end

local function noArgs() end

-- Key positions, by the same key-specs as the proxy (rewrite/keys.go).
local function keyword(a, kw, startfrom)
	local n = #a
	local s, e, d = startfrom + 1, n, 1
	if startfrom <= 0 then
		s, e, d = n + startfrom + 1, 1, -1
	end
	local i = s
	while i ~= e + d do
		if i > n or i < 2 then return nil end
		if lower(a[i]) == kw then return i + 1 end
		i = i + d
	end
	return nil
end

local function markKeys(c, a)
	local n = #a
	local m = {}
	for _, sp in ipairs(c.k) do
		local f
		if sp[1] == 1 then f = sp[2] + 1 else f = keyword(a, sp[2], sp[3]) end
		if f and sp[1] == 2 and sp[4] == 1 and sp[5] == 0 and sp[3] > 0 then
			-- A keyword repeated through the arguments (GEORADIUS STORE): every
			-- argument after one of its occurrences is a key.
			for i = f, n do if lower(a[i - 1]) == sp[2] then m[i] = true end end
			f = nil
		end
		if f then
			local l, st, skip = nil, 1, false
			if sp[4] == 1 then
				st = sp[6]
				if sp[5] >= 0 then l = f + sp[5]
				elseif sp[7] == 0 then l = n + sp[5] + 1
				else l = f + floor((n - f + 1) / sp[7]) + sp[5] end
			else
				st = sp[7]
				if f + sp[5] > n then return nil end
				local nk = tonumber(a[f + sp[5]])
				if not nk or nk < 0 or nk ~= floor(nk) then return nil end
				f = f + sp[6]
				l = f + nk - 1
				skip = nk == 0
			end
			if not skip then
				if f > n or l > n or l < f then return nil end
				for i = f, l, st do m[i] = true end
			end
		end
	end
	return m
end

local PATTERN_REFUSED = "ERR keyfence: SORT with BY or GET is not allowed inside scripts (it reads keys by pattern)"

local function markSort(c, a)
	local m = {[2] = true}
	local i = 3
	while i <= #a do
		local w = lower(a[i])
		if w == "by" or w == "get" then return nil, PATTERN_REFUSED
		elseif w == "limit" then i = i + 2
		elseif w == "store" and c.store then m[i + 1] = true; i = i + 1 end
		i = i + 1
	end
	return m
end

local function arityOK(arity, n)
	if arity >= 0 then return n == arity end
	return n >= -arity
end

-- prep checks a redis.call's arguments as Redis would, then against
-- keyfence's table, and prefixes the keys in place. It returns the command's
-- spec, or nil and the error.
local function prep(a, n)
	if n == 0 then return nil, "ERR Please specify at least one argument for this redis lib call" end
	for i = 1, n do
		local t = type(a[i])
		if t ~= "string" and t ~= "number" then
			return nil, "ERR Lua redis lib command arguments must be strings or integers"
		end
	end
	local name = lower(a[1])
	local c = SPECS[name]
	if c == nil then return nil, "ERR Unknown Redis command called from script" end
	if c.sub then
		if n < 2 then return nil, "ERR Wrong number of args calling Redis command from script" end
		local sc = c.sub[lower(a[2])]
		if sc == nil then return nil, "ERR Unknown Redis command called from script" end
		c = sc
	end
	if not arityOK(c.a, n) then return nil, "ERR Wrong number of args calling Redis command from script" end
	if c.no then return nil, c.no end
	local m, e
	if c.sort then m, e = markSort(c, a) else m = markKeys(c, a) end
	if not m then return nil, e or "ERR Wrong number of args calling Redis command from script" end
	for i in pairs(m) do a[i] = prefix .. a[i] end
	return c
end

local function strip(s)
	if type(s) == "string" and sub(s, 1, plen) == prefix then return sub(s, plen + 1) end
	return s
end

-- fix strips the prefix from the key names a reply carries.
local function fix(c, r)
	if type(r) ~= "table" then return r end
	if r.err then
		r.err = gsub(r.err, prefixPat, "")
		return r
	end
	if c.r == 1 then
		r[1] = strip(r[1])
	elseif c.r == 2 then
		if r.map then
			local m = {}
			for k, v in pairs(r.map) do m[strip(k)] = v end
			r.map = m
		else
			for _, s in ipairs(r) do if type(s) == "table" then s[1] = strip(s[1]) end end
		end
	end
	return r
end

-- Every sixteenth command a script runs reads the clock: a loop of slow
-- commands ticks slowly.
local function countCall()
	calls = calls + 1
	if calls % 16 == 0 then
		checkClock(checkedMem)
		if expired then raise(timeoutError(), 2) end
	end
end

local function call(...)
	countCall()
	local n = select("#", ...)
	local a = {...}
	local c, e = prep(a, n)
	if not c then raise({err = e}, 1) end
	local r = R.pcall(unpack(a, 1, n))
	if type(r) == "table" and r.err then raise(fix(c, r), 1) end
	return fix(c, r)
end

local function pcall_(...)
	countCall()
	local n = select("#", ...)
	local a = {...}
	local c, e = prep(a, n)
	if not c then return {err = e} end
	return fix(c, R.pcall(unpack(a, 1, n)))
end

local function aclCheck(...)
	local n = select("#", ...)
	local a = {...}
	local c, e = prep(a, n)
	if not c then
		if e == "ERR Unknown Redis command called from script" then
			error("Invalid command passed to redis.acl_check_cmd()", 2)
		end
		return false
	end
	return R.acl_check_cmd(unpack(a, 1, n))
end

-- proxy returns an empty table that reads through to t and refuses writes,
-- so that a table shared by every run cannot carry anything from one run
-- (or tenant) to the next.
local function proxy(t)
	local p = setmetatable({}, {__index = t, __newindex = readonly, __metatable = false})
	PROXIED[p] = t
	return p
end

-- Iterating a proxy iterates what it reads through to, keyfence's own
-- fields left out.
local function proxyNext(p, k)
	local t = PROXIED[p]
	local v
	repeat
		k, v = next(t, k)
	until k == nil or not INTERNAL[k]
	return k, v
end

local function init()
	R = redis
	local s, m = string, math
	sub, lower, gsub, match = s.sub, s.lower, s.gsub, s.match
	unpack, select, type, tostring, tonumber = _G.unpack, _G.select, _G.type, _G.tostring, _G.tonumber
	rawget, rawset, setmetatable, getmetatable = _G.rawget, _G.rawset, _G.setmetatable, _G.getmetatable
	next, pairs, ipairs, pcall, xpcall, error = _G.next, _G.pairs, _G.ipairs, _G.pcall, _G.xpcall, _G.error
	gcount, floor = _G.collectgarbage, m.floor
	coresume = coroutine.resume
	PROXIED = setmetatable({}, {__mode = "k"})
	INTERNAL = {__kf_W = true, __kf_T = true, __kf_V = true, __kf_I = true}

	RAPI = {
		call = call,
		pcall = pcall_,
		acl_check_cmd = aclCheck,
		error_reply = R.error_reply,
		status_reply = R.status_reply,
		sha1hex = R.sha1hex,
		log = R.log,
		setresp = R.setresp,
		set_repl = R.set_repl,
		-- EVAL's own, absent from functions: effects replication is the only
		-- kind in Redis 7, and keyfence offers no script debugger.
		replicate_commands = function() return true end,
		breakpoint = function() return false end,
		debug = function() end,
	}
	for _, k in ipairs({"LOG_DEBUG", "LOG_VERBOSE", "LOG_NOTICE", "LOG_WARNING", "REPL_ALL", "REPL_AOF",
		"REPL_REPLICA", "REPL_SLAVE", "REPL_NONE", "REDIS_VERSION", "REDIS_VERSION_NUM"}) do
		RAPI[k] = R[k]
	end
	RP = proxy(RAPI)

	local co = {}
	for k, v in pairs(coroutine) do co[k] = v end
	co.resume = function(...) return caught(coresume(...)) end
	CO = proxy(co)

	P = {}
	for _, k in ipairs(SAFE) do P[k] = _G[k] end
	P.redis, P.coroutine = RP, CO
	P.pcall = function(...) return caught(pcall(...)) end
	P.xpcall = function(f, h)
		if type(h) == "function" then
			local handler = h
			h = function(e) return handler(unmark(e)) end
		end
		return caught(xpcall(f, h))
	end
	-- Code compiled at run time would see the real globals: keyfence cannot
	-- rewrite it inside Redis, so it is not offered. Binary chunks are
	-- refused as Redis refuses them.
	local function noLoad(s)
		if type(s) == "string" and sub(s, 1, 1) == "\27" then return nil end
		error("keyfence: loadstring and load are not available to scripts", 2)
	end
	P.loadstring, P.load = noLoad, noLoad
	P.rawset = function(t, k, v)
		if PROXIED[t] then readonlyC() end
		return rawset(t, k, v)
	end
	P.rawget = function(t, k)
		local p = PROXIED[t]
		if p then
			if INTERNAL[k] then return nil end
			return rawget(p, k)
		end
		return rawget(t, k)
	end
	P.setmetatable = function(t, mt)
		if PROXIED[t] then readonlyC() end
		return setmetatable(t, mt)
	end
	P.next = function(t, k)
		if PROXIED[t] then return proxyNext(t, k) end
		return next(t, k)
	end
	P.pairs = function(t)
		if PROXIED[t] then return proxyNext, t, nil end
		return pairs(t)
	end
	P.__kf_T = tick
	P.__kf_V = noArgs
	P.__kf_I = function(...) return ... end
	W = setmetatable({}, {__index = readonly, __newindex = readonly, __metatable = false})
	P.__kf_W = W
	G = proxy(P)
	P._G = G
	setmetatable(P, {__index = nonexistent, __newindex = readonly, __metatable = false})
end

local function escapePattern(s)
	return (gsub(s, "[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

-- run runs a loaded chunk. args: the tenant's prefix, the chunk's SHA1, the
-- time budget (ms), the memory budget (KiB), then the client's ARGV; keys
-- arrive prefixed (for ACLs and cluster slots) and the script sees them
-- without the prefix.
local function run(keys, args)
	if not R then init() end
	local f = chunks[args[2]]
	if not f then
		return R.error_reply("NOSCRIPT keyfence: sandboxed script not loaded")
	end
	if args[1] ~= prefix then
		prefix, plen, prefixPat = args[1], #args[1], escapePattern(args[1])
	end
	budgetMs = tonumber(args[3])
	checkedMem = gcount("count")
	memLimit = checkedMem + tonumber(args[4])
	deadline, ticks, nextCheck, calls, expired = 0, 0, 1, 0, false
	local k = {}
	for i = 1, #keys do k[i] = sub(keys[i], plen + 1) end
	local a = {}
	for i = 5, #args do a[i - 4] = args[i] end
	rawset(P, "KEYS", k)
	rawset(P, "ARGV", a)
	return f(P)
end

-- load compiles a rewritten chunk and keeps it.
local function load(keys, args)
	if not R then init() end
	local sha, text = args[1], args[2]
	if chunks[sha] then return "OK" end
	local f, err = loadstring(text, "@user_script")
	if not f then
		return R.error_reply("ERR Error compiling script (new function): " .. err)
	end
	while chunkBytes + #text > MAX_CHUNK_BYTES do
		local old, n = next(sizes)
		if old == nil then break end
		chunks[old], sizes[old] = nil, nil
		chunkBytes = chunkBytes - n
	end
	chunks[sha], sizes[sha] = f, #text
	chunkBytes = chunkBytes + #text
	return "OK"
end

-- check compiles a client's own text, never running it, for Redis's exact
-- error when keyfence's parser refused it.
local function check(keys, args)
	if not R then init() end
	local f, err = loadstring(args[1], "@user_script")
	if f then return "OK" end
	return R.error_reply("ERR Error compiling script (new function): " .. err)
end

-- One run function per combination of script flags (#!lua flags=…): Redis
-- checks them at FCALL, before the script runs.
local FLAGS = {"no-writes", "allow-oom", "allow-stale", "no-cluster", "allow-cross-slot-keys"}
for mask = 0, 31 do
	local fl, bitv = {}, 1
	for i = 1, #FLAGS do
		if mask % (bitv * 2) >= bitv then fl[#fl + 1] = FLAGS[i] end
		bitv = bitv * 2
	end
	redis.register_function{function_name = "__FN___run_" .. mask, callback = run, flags = fl}
end
redis.register_function{function_name = "__FN___load", callback = load, flags = {"no-writes", "allow-stale", "allow-oom"}}
redis.register_function{function_name = "__FN___check", callback = check, flags = {"no-writes", "allow-stale", "allow-oom"}}
