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

-- Redis 7 functions (rewrite/functions.go): the environment a tenant's
-- function runs in (P without KEYS and ARGV, and a redis without EVAL's own
-- fields), the one its library's top-level code runs in while it loads, and
-- the library being loaded, if any.
local PF, LOADENV
local LOADING

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
	if LOADING then
		-- Redis's own limit and wording for a library's top-level code.
		return {err = "ERR FUNCTION LOAD timeout"}
	end
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

-- registerFunction is redis.register_function while a library loads, as
-- Redis 7.0's (function_lua.c), with its errors: they become "Error
-- registering functions: …" (fload). Called at any other time (a library
-- kept a reference), it fails as Redis's does.
local FLAGBITS = {["no-writes"] = 1, ["allow-oom"] = 2, ["allow-stale"] = 4, ["no-cluster"] = 8, ["allow-cross-slot-keys"] = 16}

local function regError(msg)
	error({err = "ERR " .. msg}, 0)
end

local function isString(v)
	local t = type(v)
	return t == "string" or t == "number"
end

local function registerFunction(...)
	local lib = LOADING
	if not lib then
		raise({err = "ERR redis.register_function can only be called on FUNCTION LOAD command"}, 1)
	end
	local n = select("#", ...)
	if n < 1 or n > 2 then regError("wrong number of arguments to redis.register_function") end
	local name, desc, cb, flags = nil, nil, nil, 0
	if n == 1 then
		local t = ...
		if type(t) ~= "table" then
			regError("calling redis.register_function with a single argument is only applicable to Lua table (representing named arguments).")
		end
		for k, v in next, t do
			if not isString(k) then regError("named argument key given to redis.register_function is not a string") end
			local key = lower(tostring(k))
			if key == "function_name" then
				if not isString(v) then regError("function_name argument given to redis.register_function must be a string") end
				name = tostring(v)
			elseif key == "description" then
				if not isString(v) then regError("description argument given to redis.register_function must be a string") end
				desc = tostring(v)
			elseif key == "callback" then
				if type(v) ~= "function" then regError("callback argument given to redis.register_function must be a function") end
				cb = v
			elseif key == "flags" then
				if type(v) ~= "table" then
					regError("flags argument to redis.register_function must be a table representing function flags")
				end
				local m, i = 0, 1
				while true do
					local f = v[i]
					if f == nil then break end
					local bit = isString(f) and FLAGBITS[lower(tostring(f))]
					if not bit then regError("unknown flag given") end
					if m % (bit * 2) < bit then m = m + bit end
					i = i + 1
				end
				flags = m
			else
				regError("unknown argument given to redis.register_function")
			end
		end
		if not name then regError("redis.register_function must get a function name argument") end
		if not cb then regError("redis.register_function must get a callback argument") end
	else
		local a, b = ...
		if not isString(a) then regError("first argument to redis.register_function must be a string") end
		if type(b) ~= "function" then regError("second argument to redis.register_function must be a function") end
		name, cb = tostring(a), b
	end
	if not match(name, "^[%w_]+$") then
		regError("Library names can only contain letters, numbers, or underscores(_) and must be at least one character long")
	end
	-- Redis 7.0 compares names in a library by case and across libraries
	-- without: it takes "f" and "F" in one library and then fails an
	-- assertion (the server exits) when that library is deleted. keyfence
	-- refuses such a pair here instead.
	local key = lower(name)
	if lib.byName[key] then regError("Function already exists in the library") end
	local fr = {name = name, desc = desc, flags = flags, cb = cb, lib = lib}
	lib.byName[key] = fr
	lib.fns[#lib.fns + 1] = fr
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
	local co = {}
	for k, v in pairs(coroutine) do co[k] = v end
	co.resume = function(...) return caught(coresume(...)) end
	CO = proxy(co)

	-- The wrappers every environment shares: they keep no state.
	local shared = {}
	shared.pcall = function(...) return caught(pcall(...)) end
	shared.xpcall = function(f, h)
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
	shared.loadstring, shared.load = noLoad, noLoad
	shared.rawset = function(t, k, v)
		if PROXIED[t] then readonlyC() end
		return rawset(t, k, v)
	end
	shared.rawget = function(t, k)
		local p = PROXIED[t]
		if p then
			if INTERNAL[k] then return nil end
			return rawget(p, k)
		end
		return rawget(t, k)
	end
	shared.setmetatable = function(t, mt)
		if PROXIED[t] then readonlyC() end
		return setmetatable(t, mt)
	end
	shared.next = function(t, k)
		if PROXIED[t] then return proxyNext(t, k) end
		return next(t, k)
	end
	shared.pairs = function(t)
		if PROXIED[t] then return proxyNext, t, nil end
		return pairs(t)
	end
	shared.__kf_T = tick
	shared.__kf_V = noArgs
	shared.__kf_I = function(...) return ... end
	W = setmetatable({}, {__index = readonly, __newindex = readonly, __metatable = false})
	shared.__kf_W = W

	local function makeEnv(rapi)
		local E = {}
		for _, k in ipairs(SAFE) do E[k] = _G[k] end
		for k, v in pairs(shared) do E[k] = v end
		E.redis, E.coroutine = proxy(rapi), CO
		E._G = proxy(E)
		setmetatable(E, {__index = nonexistent, __newindex = readonly, __metatable = false})
		return E
	end
	P = makeEnv(RAPI)
	G = P._G
	RP = P.redis

	-- A function's redis has no EVAL-only fields (Redis's has none either).
	local fapi = {}
	for k, v in pairs(RAPI) do fapi[k] = v end
	fapi.replicate_commands, fapi.breakpoint, fapi.debug = nil, nil, nil
	PF = makeEnv(fapi)

	-- While a library loads, Redis offers it only this redis: anything else
	-- is a "nonexistent global variable", the redis table's fields too.
	local lapi = {register_function = registerFunction, log = R.log}
	for _, k in ipairs({"LOG_DEBUG", "LOG_VERBOSE", "LOG_NOTICE", "LOG_WARNING", "REDIS_VERSION", "REDIS_VERSION_NUM"}) do
		lapi[k] = R[k]
	end
	local LR = setmetatable({}, {
		__index = function(_, k)
			local v = lapi[k]
			if v == nil then
				error("Script attempted to access nonexistent global variable '" .. tostring(k) .. "'", 2)
			end
			return v
		end,
		__newindex = readonly, __metatable = false,
	})
	PROXIED[LR] = lapi
	LOADENV = {redis = LR}
	for _, k in ipairs({"__kf_T", "__kf_V", "__kf_I", "__kf_W"}) do LOADENV[k] = shared[k] end
	setmetatable(LOADENV, {__index = nonexistent, __newindex = readonly, __metatable = false})
end

local function escapePattern(s)
	return (gsub(s, "[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

-- startRun sets the state of a run: the tenant's prefix, the time budget
-- (ms) and the memory budget (KiB).
local function startRun(p, ms, kib)
	if p ~= prefix then
		prefix, plen, prefixPat = p, #p, escapePattern(p)
	end
	budgetMs = tonumber(ms)
	checkedMem = gcount("count")
	memLimit = checkedMem + tonumber(kib)
	deadline, ticks, nextCheck, calls, expired = 0, 0, 1, 0, false
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
	startRun(args[1], args[3], args[4])
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

-- Redis 7 functions, per tenant (rewrite/functions.go, proxy/functions.go).
--
-- TEN[prefix] is a tenant's registry: its libraries by name, its functions
-- by lower-cased name (Redis finds functions without regard to case), and
-- gen, the "#gen" token of the store hash it was built from (false: no
-- hash, no libraries). The hash (KEYS[1] of every operation below: name →
-- the client's code, "#gen" → a token every change replaces) is the truth:
-- every operation first checks that the registry was built from the hash as
-- it is, else answers FunctionsNotLoaded and keyfence rebuilds it (fready,
-- finstall). Every change writes the registry and the hash together, in one
-- call. A library is an instance per tenant: its top-level locals are its
-- own state, as in Redis, even when two tenants load the same code.
local MAX_FN_BYTES = __MAXFNBYTES__
local NOT_LOADED, FN_MISSING, FN_CHANGED = __NOTLOADED__, __FNMISSING__, __FNCHANGED__
local TEN, tenBytes = {}, 0

local function newTenant(p)
	local T = {libs = {}, fns = {}, bytes = 0, nlibs = 0, codeBytes = 0, gen = nil}
	TEN[p] = T
	return T
end

local function dropTenant(p)
	local T = TEN[p]
	if T then
		tenBytes = tenBytes - T.bytes
		TEN[p] = nil
	end
end

local function dropLib(T, inst)
	if T.libs[inst.name] ~= inst then return end
	for _, fr in ipairs(inst.fns) do
		local key = lower(fr.name)
		if T.fns[key] == fr then T.fns[key] = nil end
	end
	T.libs[inst.name] = nil
	T.bytes, T.nlibs, T.codeBytes = T.bytes - inst.size, T.nlibs - 1, T.codeBytes - inst.codeLen
	tenBytes = tenBytes - inst.size
end

-- addLib adds a library, making room under MAX_FN_BYTES by letting other
-- tenants' registries go (they are rebuilt from their hashes when used).
local function addLib(T, inst)
	while tenBytes + inst.size > MAX_FN_BYTES do
		local victim
		for p, other in next, TEN do
			if other ~= T and other.bytes > 0 then victim = p break end
		end
		if not victim then break end
		dropTenant(victim)
	end
	T.libs[inst.name] = inst
	for _, fr in ipairs(inst.fns) do T.fns[lower(fr.name)] = fr end
	T.bytes, T.nlibs, T.codeBytes = T.bytes + inst.size, T.nlibs + 1, T.codeBytes + inst.codeLen
	tenBytes = tenBytes + inst.size
end

-- boundHeap keeps Lua's heap under FN_HEAP_KIB. A library's top-level
-- locals live as long as it does, and a function may grow them at every
-- call, as in Redis; on a shared server that would let one tenant fill
-- upstream's memory a call at a time. Past the bound, after a full
-- collection, every tenant's registry goes (the code stays in the stores and
-- is loaded again when next used, as after a restart), and what the
-- libraries held with it.
local FN_HEAP_KIB = __FNHEAPKIB__

local function boundHeap()
	if gcount("count") <= FN_HEAP_KIB then return end
	gcount("collect")
	if gcount("count") <= FN_HEAP_KIB then return end
	TEN, tenBytes = {}, 0
	gcount("collect")
end

-- loadErrorText is what Redis makes of an error a library's top-level code
-- raised (luaExtractErrorInformation).
local function loadErrorText(e)
	local t = type(e)
	if t == "string" or t == "number" then return "ERR " .. e end
	if t == "table" then
		local m = e.err
		if type(m) == "string" or type(m) == "number" then return (gsub(m, " %[kf:line=[%d?]*%]", "")) end
	end
	return "(null)"
end

-- instantiate compiles a library's rewritten chunk and runs its top-level
-- code with only Redis's load-time API, collecting what it registers. It
-- returns the instance, or nil and Redis's error. A chunk may be one of
-- keyfence's markers instead (rewrite/functions.go).
local function instantiate(name, code, chunk)
	local mark = sub(chunk, 1, 1)
	if mark == "!" or mark == "?" then return nil, sub(chunk, 2) end
	local f, err
	if chunk == "" then
		-- keyfence's parser refused it: Lua's own message, never run.
		local nl = string.find(code, "\n", 1, true) or 1
		f, err = loadstring(sub(code, nl), "=user_function")
		if f then return nil, "ERR keyfence: the library uses Lua syntax the sandbox does not support" end
		return nil, "ERR Error compiling function: " .. err
	end
	f, err = loadstring(chunk, "=user_function")
	if not f then return nil, "ERR Error compiling function: " .. err end
	local inst = {name = name, fns = {}, byName = {}, size = #chunk, codeLen = #code, sha = R.sha1hex(code)}
	-- Once loaded, the library's code reads the function environment.
	local mt = {__index = LOADENV, __newindex = readonly, __metatable = false}
	LOADING = inst
	-- xpcall, not pcall: Redis's pcall turns an error table into its err
	-- string, and Redis tells the two kinds apart.
	local env = setmetatable({}, mt)
	local ok, e = xpcall(function() return f(env) end, function(err) return err end)
	LOADING = nil
	if not ok then return nil, "ERR Error registering functions: " .. loadErrorText(e) end
	if #inst.fns == 0 then return nil, "ERR No functions registered" end
	mt.__index = PF
	boundHeap()
	return inst
end

-- current returns the tenant's registry when it was built from the store
-- as it is now, else nil. The store lives in keyfence's base database
-- (sdb); a run may be in another (cdb), which SELECT inside a script leaves
-- unchanged for the connection.
local function current(store, p, sdb, cdb)
	if sdb ~= cdb then R.call("SELECT", sdb) end
	local g = R.call("HGET", store, "#gen")
	if sdb ~= cdb then R.call("SELECT", cdb) end
	local T = TEN[p]
	if T and T.gen == g then return T end
	return nil
end

local function fail(msg) return R.error_reply(msg) end

local function limitError(maxLibs, maxBytes)
	return fail("ERR keyfence: the tenant's function libraries would pass keyfence's limits (--max-function-libraries " ..
		maxLibs .. ", --max-function-bytes " .. maxBytes .. " bytes of code); FUNCTION DELETE or FUNCTION FLUSH first")
end

-- storeWrite writes the changed libraries to the store and a new token:
-- set holds name, code pairs, del the names that go. With no libraries
-- left the hash goes too, and the token is false.
local function inBatches(cmd, store, list, step)
	for i = 1, #list, step do
		R.call(cmd, store, unpack(list, i, math.min(i + step - 1, #list)))
	end
end

local function storeWrite(T, store, gen, set, del, flush)
	if flush then R.call("DEL", store) end
	inBatches("HDEL", store, del, 200)
	if T.nlibs == 0 then
		if not flush then R.call("DEL", store) end
		T.gen = false
		return
	end
	set[#set + 1] = "#gen"
	set[#set + 1] = gen
	inBatches("HSET", store, set, 200)
	T.gen = gen
end

-- fload: FUNCTION LOAD [REPLACE] and FUNCTION RESTORE. args: prefix, new
-- token, policy (load, replace; restore: append, replace-all, flush), the
-- tenant's limits (libraries, bytes of code), the load time budget (ms),
-- the memory budget (KiB), then name, code, chunk of each library.
local function fload(keys, args)
	if not R then init() end
	local store, p, gen, policy = keys[1], args[1], args[2], args[3]
	local maxLibs, maxBytes = tonumber(args[4]), tonumber(args[5])
	local T = current(store, p, 0, 0)
	if not T then return fail(NOT_LOADED) end
	startRun(p, args[6], args[7])
	if policy == "load" or policy == "replace" then
		local name, code, chunk = args[8], args[9], args[10]
		if sub(chunk, 1, 1) == "!" then return fail(sub(chunk, 2)) end
		local old = T.libs[name]
		if old and policy == "load" then return fail("ERR Library '" .. name .. "' already exists") end
		local inst, e = instantiate(name, code, chunk)
		if not inst then return fail(e) end
		for _, fr in ipairs(inst.fns) do
			local o = T.fns[lower(fr.name)]
			if o and o.lib ~= old then return fail("ERR Function " .. fr.name .. " already exists") end
		end
		local nlibs, bytes = T.nlibs + 1, T.codeBytes + #code
		if old then nlibs, bytes = nlibs - 1, bytes - old.codeLen end
		if nlibs > maxLibs or bytes > maxBytes then return limitError(maxLibs, maxBytes) end
		if old then dropLib(T, old) end
		addLib(T, inst)
		storeWrite(T, store, gen, {name, code}, {}, false)
		return name
	end
	-- FUNCTION RESTORE (functionRestoreCommand): the payload's libraries are
	-- made on their own first, then joined to the tenant's by the policy.
	local new, newFns = {}, {}
	for i = 8, #args, 3 do
		local name, code, chunk = args[i], args[i + 1], args[i + 2]
		if sub(chunk, 1, 1) == "!" then return fail(sub(chunk, 2)) end
		if new[name] then return fail("ERR Library '" .. name .. "' already exists") end
		local inst, e = instantiate(name, code, chunk)
		if not inst then return fail(e) end
		for _, fr in ipairs(inst.fns) do
			local key = lower(fr.name)
			if newFns[key] then return fail("ERR Function " .. fr.name .. " already exists") end
			newFns[key] = fr
		end
		new[name] = inst
		new[#new + 1] = inst
	end
	local drop, ndrop, dropBytes = {}, 0, 0
	if policy == "flush" then
		for _, inst in next, T.libs do drop[inst] = true end
		ndrop, dropBytes = T.nlibs, T.codeBytes
	else
		for _, inst in ipairs(new) do
			local old = T.libs[inst.name]
			if old then
				if policy == "append" then return fail("ERR Library " .. inst.name .. " already exists") end
				drop[old], ndrop, dropBytes = true, ndrop + 1, dropBytes + old.codeLen
			end
		end
		for key, fr in next, newFns do
			local o = T.fns[key]
			if o and not drop[o.lib] then return fail("ERR Function " .. fr.name .. " already exists") end
		end
	end
	local nlibs, bytes = T.nlibs - ndrop + #new, T.codeBytes - dropBytes
	for _, inst in ipairs(new) do bytes = bytes + inst.codeLen end
	if nlibs > maxLibs or bytes > maxBytes then return limitError(maxLibs, maxBytes) end
	local set, del = {}, {}
	for inst in next, drop do
		dropLib(T, inst)
		del[#del + 1] = inst.name
	end
	for i, inst in ipairs(new) do
		addLib(T, inst)
		set[#set + 1] = inst.name
		set[#set + 1] = args[8 + (i - 1) * 3 + 1]
	end
	storeWrite(T, store, gen, set, policy == "flush" and {} or del, policy == "flush")
	return R.status_reply("OK")
end

-- fdelete: FUNCTION DELETE. args: prefix, new token, library name.
local function fdelete(keys, args)
	if not R then init() end
	local store, p = keys[1], args[1]
	local T = current(store, p, 0, 0)
	if not T then return fail(NOT_LOADED) end
	local inst = T.libs[args[3]]
	if not inst then return fail("ERR Library not found") end
	dropLib(T, inst)
	storeWrite(T, store, args[2], {}, {inst.name}, false)
	return R.status_reply("OK")
end

-- fflush: FUNCTION FLUSH. args: prefix.
local function fflush(keys, args)
	if not R then init() end
	R.call("DEL", keys[1])
	dropTenant(args[1])
	newTenant(args[1]).gen = false
	return R.status_reply("OK")
end

-- flist: the tenant's libraries for FUNCTION LIST, DUMP and STATS. args:
-- prefix, "1" to have the code. Each library: name, code or nil, then
-- name, description or nil, flags of each function.
local function flist(keys, args)
	if not R then init() end
	local store = keys[1]
	local T = current(store, args[1], 0, 0)
	if not T then return fail(NOT_LOADED) end
	local out = {}
	for name, inst in next, T.libs do
		local l = {name, args[2] == "1" and R.call("HGET", store, name) or false}
		for _, fr in ipairs(inst.fns) do
			l[#l + 1] = fr.name
			l[#l + 1] = fr.desc or false
			l[#l + 1] = fr.flags
		end
		out[#out + 1] = l
	end
	return out
end

-- fready makes the tenant's registry the store's: it drops the libraries
-- the store no longer has and returns name, code of those it must load
-- (finstall), or "OK" when there are none and the registry is current.
-- args: prefix.
local function fready(keys, args)
	if not R then init() end
	local p = args[1]
	local all = R.call("HGETALL", keys[1])
	local g, want = false, {}
	for i = 1, #all, 2 do
		if all[i] == "#gen" then g = all[i + 1] else want[all[i]] = all[i + 1] end
	end
	local T = TEN[p] or newTenant(p)
	T.gen = nil
	for name, inst in next, T.libs do
		if want[name] == nil then dropLib(T, inst) end
	end
	local need = {}
	for name, code in next, want do
		local inst = T.libs[name]
		if not inst or inst.sha ~= R.sha1hex(code) then
			need[#need + 1] = name
			need[#need + 1] = code
		end
	end
	if #need > 0 then return need end
	T.gen = g
	return R.status_reply("OK")
end

-- finstall loads one library of the store into the registry, letting go of
-- any library whose functions it shares: the store never holds two such,
-- so that one is stale and fready says whether to load it again. args:
-- prefix, name, the SHA1 of its code, chunk, load budget (ms), memory (KiB).
local function finstall(keys, args)
	if not R then init() end
	local p, name = args[1], args[2]
	local code = R.call("HGET", keys[1], name)
	if not code or R.sha1hex(code) ~= args[3] then return R.status_reply("RETRY") end
	local T = TEN[p] or newTenant(p)
	startRun(p, args[5], args[6])
	local inst, e = instantiate(name, code, args[4])
	if not inst then return fail(e) end
	T.gen = nil
	local old = T.libs[name]
	if old then dropLib(T, old) end
	for _, fr in ipairs(inst.fns) do
		local o = T.fns[lower(fr.name)]
		if o then dropLib(T, o.lib) end
	end
	addLib(T, inst)
	return R.status_reply("OK")
end

-- frun runs a tenant's function. keys: the client's keys, prefixed; args:
-- prefix, store key, store db, current db, function name, time budget
-- (ms), memory budget (KiB), then the client's arguments. mask is the
-- run function's flags, which Redis checked: they must be the function's.
local function frun(mask, keys, args)
	if not R then init() end
	local p = args[1]
	local T = current(args[2], p, args[3], args[4])
	if not T then return fail(NOT_LOADED) end
	local fr = T.fns[lower(args[5])]
	if not fr then return fail(FN_MISSING) end
	if fr.flags ~= mask then return fail(FN_CHANGED) end
	startRun(p, args[6], args[7])
	local k = {}
	for i = 1, #keys do k[i] = sub(keys[i], plen + 1) end
	local a = {}
	for i = 8, #args do a[i - 7] = args[i] end
	local r = fr.cb(k, a)
	fr, T = nil, nil -- for boundHeap to let the library go
	boundHeap()
	return r
end

-- One run function (scripts) and one frun function (a tenant's functions)
-- per combination of flags (#!lua flags=…): Redis checks them at FCALL,
-- before the script runs.
local FLAGS = {"no-writes", "allow-oom", "allow-stale", "no-cluster", "allow-cross-slot-keys"}
for mask = 0, 31 do
	local fl, bitv = {}, 1
	for i = 1, #FLAGS do
		if mask % (bitv * 2) >= bitv then fl[#fl + 1] = FLAGS[i] end
		bitv = bitv * 2
	end
	redis.register_function{function_name = "__FN___run_" .. mask, callback = run, flags = fl}
	redis.register_function{function_name = "__FN___frun_" .. mask, callback = function(keys, args) return frun(mask, keys, args) end, flags = fl}
end
-- FUNCTION LOAD and RESTORE are refused when upstream is out of memory
-- (deny-oom); DELETE and FLUSH, which free it, are not.
redis.register_function{function_name = "__FN___fload", callback = fload}
redis.register_function{function_name = "__FN___fdelete", callback = fdelete, flags = {"allow-oom"}}
redis.register_function{function_name = "__FN___fflush", callback = fflush, flags = {"allow-oom"}}
redis.register_function{function_name = "__FN___flist", callback = flist, flags = {"no-writes", "allow-stale", "allow-oom"}}
redis.register_function{function_name = "__FN___fready", callback = fready, flags = {"no-writes", "allow-oom"}}
redis.register_function{function_name = "__FN___finstall", callback = finstall, flags = {"no-writes", "allow-oom"}}
redis.register_function{function_name = "__FN___load", callback = load, flags = {"no-writes", "allow-stale", "allow-oom"}}
redis.register_function{function_name = "__FN___check", callback = check, flags = {"no-writes", "allow-stale", "allow-oom"}}
