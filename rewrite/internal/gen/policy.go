package main

import (
	"fmt"
	"sort"
	"strings"
)

// The policy rules of keyfence, one decision per Redis command.
//
// Names are lower case; a subcommand is "container|sub" as COMMAND INFO
// spells it. In deniedCommands only, "container|*" stands for the container
// entry itself and every one of its subcommands, present and future: denying
// by default is safe, allowing by default is not, so every allowed
// subcommand is named one by one.
//
// Every command and subcommand in commands.json and extra.json must be
// matched by exactly one entry below, or carry the "admin" flag (then it is
// denied, see adminReason). Anything else makes the generator fail: a new
// command gets a policy because somebody decided it, never by default.
// rewrite/table_test.go reads this file back and re-derives every decision,
// so keep the lists plain literals.

// deniedCommands reach beyond the tenant. The reason is sent to the client
// as the error text, so it names the command and says why.
var deniedCommands = map[string]string{
	// The shared server's configuration, persistence and replication belong
	// to its operators.
	"config|*":            "CONFIG is denied: the server configuration is shared by every tenant",
	"debug":               "DEBUG is denied: it can inspect, stall or crash the server shared by every tenant",
	"shutdown":            "SHUTDOWN is denied: it stops the server for every tenant",
	"save":                "SAVE is denied: persistence of the shared server is managed by its operators",
	"bgsave":              "BGSAVE is denied: persistence of the shared server is managed by its operators",
	"bgrewriteaof":        "BGREWRITEAOF is denied: persistence of the shared server is managed by its operators",
	"sync":                "SYNC is denied: replication streams every tenant's data",
	"psync":               "PSYNC is denied: replication streams every tenant's data",
	"replconf":            "REPLCONF is denied: it is part of the replication protocol between servers",
	"replicaof":           "REPLICAOF is denied: it changes the replication role of the server shared by every tenant",
	"slaveof":             "SLAVEOF is denied: it changes the replication role of the server shared by every tenant",
	"failover":            "FAILOVER is denied: it changes the replication role of the server shared by every tenant",
	"role":                "ROLE is denied: the replication topology is managed by keyfence, not by tenants",
	"acl|*":               "ACL is denied: users and permissions of the shared server are managed by its operators",
	"module|*":            "MODULE is denied: modules load code into the server shared by every tenant",
	"pfdebug":             "PFDEBUG is denied: it is a debugging command of the shared server",
	"pfselftest":          "PFSELFTEST is denied: it is a self-test of the shared server",
	"latency|*":           "LATENCY is denied: latency monitoring covers every tenant's commands",
	"slowlog|*":           "SLOWLOG is denied: the slow log shows every tenant's commands",
	"monitor":             "MONITOR is denied: it shows every tenant's commands",
	"memory|doctor":       "MEMORY DOCTOR is denied: it reports on memory shared by every tenant",
	"memory|stats":        "MEMORY STATS is denied: it reports on memory shared by every tenant",
	"memory|malloc-stats": "MEMORY MALLOC-STATS is denied: it reports on memory shared by every tenant",
	"memory|purge":        "MEMORY PURGE is denied: it acts on the allocator of the server shared by every tenant",

	// keyfence presents one endpoint and follows the cluster topology itself.
	"cluster|*":      "CLUSTER is denied: keyfence presents one endpoint and handles the cluster topology itself",
	"readonly":       "READONLY is denied: keyfence handles the cluster topology itself",
	"readwrite":      "READWRITE is denied: keyfence handles the cluster topology itself",
	"asking":         "ASKING is denied: keyfence handles cluster redirections itself",
	"restore-asking": "RESTORE-ASKING is denied: it is part of slot migration between cluster nodes",

	// Keys may only move inside the tenant's namespace.
	"migrate": "MIGRATE is denied: it moves keys to another server, out of keyfence's reach",
	"move":    "MOVE is denied: keys cannot be moved between databases through keyfence",
	"swapdb":  "SWAPDB is denied: it swaps whole databases, with every tenant's keys",

	// CLIENT subcommands that act on other connections, or need upstream
	// state keyfence does not keep per client.
	"client|kill":         "CLIENT KILL is denied: it can disconnect other tenants' clients",
	"client|pause":        "CLIENT PAUSE is denied: it stops every tenant's clients",
	"client|unpause":      "CLIENT UNPAUSE is denied: pausing the shared server is managed by its operators",
	"client|unblock":      "CLIENT UNBLOCK is denied: it acts on other connections, possibly other tenants'",
	"client|no-evict":     "CLIENT NO-EVICT is denied: client eviction of the shared server is managed by its operators",
	"client|tracking":     "CLIENT TRACKING is denied: client-side caching is not available through keyfence",
	"client|caching":      "CLIENT CACHING is denied: client-side caching is not available through keyfence",
	"client|getredir":     "CLIENT GETREDIR is denied: client-side caching is not available through keyfence",
	"client|trackinginfo": "CLIENT TRACKINGINFO is denied: client-side caching is not available through keyfence",

	"script|debug": "SCRIPT DEBUG is denied: the Lua debugger blocks or forks the server shared by every tenant",
	"script|kill":  "SCRIPT KILL is denied: the running script may belong to another tenant",
}

// emulatedCommands are answered or driven by the proxy itself, per tenant.
var emulatedCommands = []string{
	// connection
	"auth", "hello", "ping", "echo", "quit", "reset", "select",
	"client|setname", "client|getname", "client|id", "client|info",
	"client|list", "client|setinfo", "client|help",
	// keyfence reads every upstream reply and drops those the client
	// asked not to get
	"client|reply",
	// the tenant's view of the keyspace and the server; KEYS, DBSIZE,
	// RANDOMKEY and FLUSHDB/FLUSHALL walk it with SCAN in bounded steps, so
	// that no single upstream call walks every tenant's keys
	"keys", "dbsize", "flushdb", "flushall", "randomkey", "info",
	"command", "command|count", "command|docs", "command|getkeys",
	"command|getkeysandflags", "command|help", "command|info", "command|list",
	// transactions run on a pinned upstream connection
	"multi", "exec", "discard", "unwatch",
	// scripts are wrapped so that they see the tenant's own key names
	"eval", "evalsha", "eval_ro", "evalsha_ro",
	"script|load", "script|exists", "script|flush", "script|help",
	// a tenant's functions live in its own namespace, in the Lua sandbox
	// (proxy/functions.go); FUNCTION KILL cannot reach another tenant's
	"function|load", "function|delete", "function|restore", "function|list",
	"function|dump", "function|stats", "function|flush", "function|kill",
	"function|help", "fcall", "fcall_ro",
	// the tenant's own pattern subscriptions
	"pubsub|numpat",
}

// patternCommands carry glob patterns over key or channel names.
var patternCommands = []string{
	"scan", "sort", "sort_ro",
	"psubscribe", "punsubscribe", "pubsub|channels",
}

// channelCommands carry pub/sub channel names, prefixed like keys.
var channelCommands = []string{
	"publish", "spublish",
	"subscribe", "ssubscribe", "unsubscribe", "sunsubscribe",
	"pubsub|numsub", "pubsub|shardchannels", "pubsub|shardnumsub",
}

// keyedCommands have their keys, found by their key-specs, prefixed and are
// otherwise forwarded untouched. Some have no keys at all.
var keyedCommands = []string{
	// string
	"append", "decr", "decrby", "get", "getdel", "getex", "getrange",
	"getset", "incr", "incrby", "incrbyfloat", "lcs", "mget", "mset",
	"msetnx", "psetex", "set", "setex", "setnx", "setrange", "strlen",
	"substr",
	// bitmap
	"bitcount", "bitfield", "bitfield_ro", "bitop", "bitpos", "getbit",
	"setbit",
	// hash
	"hdel", "hexists", "hget", "hgetall", "hincrby", "hincrbyfloat",
	"hkeys", "hlen", "hmget", "hmset", "hrandfield", "hscan", "hset",
	"hsetnx", "hstrlen", "hvals",
	// list
	"blmove", "blmpop", "blpop", "brpop", "brpoplpush", "lindex",
	"linsert", "llen", "lmove", "lmpop", "lpop", "lpos", "lpush", "lpushx",
	"lrange", "lrem", "lset", "ltrim", "rpop", "rpoplpush", "rpush",
	"rpushx",
	// set
	"sadd", "scard", "sdiff", "sdiffstore", "sinter", "sintercard",
	"sinterstore", "sismember", "smembers", "smismember", "smove", "spop",
	"srandmember", "srem", "sscan", "sunion", "sunionstore",
	// sorted set
	"bzmpop", "bzpopmax", "bzpopmin", "zadd", "zcard", "zcount", "zdiff",
	"zdiffstore", "zincrby", "zinter", "zintercard", "zinterstore",
	"zlexcount", "zmpop", "zmscore", "zpopmax", "zpopmin", "zrandmember",
	"zrange", "zrangebylex", "zrangebyscore", "zrangestore", "zrank",
	"zrem", "zremrangebylex", "zremrangebyrank", "zremrangebyscore",
	"zrevrange", "zrevrangebylex", "zrevrangebyscore", "zrevrank", "zscan",
	"zscore", "zunion", "zunionstore",
	// hyperloglog
	"pfadd", "pfcount", "pfmerge",
	// geo
	"geoadd", "geodist", "geohash", "geopos", "georadius", "georadius_ro",
	"georadiusbymember", "georadiusbymember_ro", "geosearch",
	"geosearchstore",
	// stream
	"xack", "xadd", "xautoclaim", "xclaim", "xdel", "xlen", "xpending",
	"xrange", "xread", "xreadgroup", "xrevrange", "xsetid", "xtrim",
	"xgroup|create", "xgroup|createconsumer", "xgroup|delconsumer",
	"xgroup|destroy", "xgroup|help", "xgroup|setid",
	"xinfo|consumers", "xinfo|groups", "xinfo|help", "xinfo|stream",
	// generic
	"copy", "del", "dump", "exists", "expire", "expireat", "expiretime",
	"persist", "pexpire", "pexpireat", "pexpiretime", "pttl", "rename",
	"renamenx", "restore", "touch", "ttl", "type", "unlink",
	"object|encoding", "object|freq", "object|help",
	"object|idletime", "object|refcount",
	// transactions: WATCH pins the session and its keys are prefixed
	"watch",
	// server
	"memory|usage", "memory|help", "lastsave", "lolwut", "time", "wait",
	// pubsub: its HELP names no channel
	"pubsub|help",
	// Containers whose subcommands are decided one by one. The bare name
	// is an arity error (arity -2), which upstream reports as is.
	"client", "function", "memory", "object", "pubsub", "script",
	"xgroup", "xinfo",
}

// replyKinds names the reply stripper of the commands whose replies carry key
// or channel names. Every other command's reply passes through (ReplyRaw).
var replyKinds = map[string]string{
	"randomkey":            "ReplyKey",
	"command|getkeys":      "ReplyKeyList",
	"scan":                 "ReplyScan",
	"blpop":                "ReplyKeyFirst",
	"brpop":                "ReplyKeyFirst",
	"bzpopmin":             "ReplyKeyFirst",
	"bzpopmax":             "ReplyKeyFirst",
	"blmpop":               "ReplyKeyFirst",
	"lmpop":                "ReplyKeyFirst",
	"zmpop":                "ReplyKeyFirst",
	"bzmpop":               "ReplyKeyFirst",
	"xread":                "ReplyStreams",
	"xreadgroup":           "ReplyStreams",
	"subscribe":            "ReplyChannelMsg",
	"ssubscribe":           "ReplyChannelMsg",
	"psubscribe":           "ReplyChannelMsg",
	"unsubscribe":          "ReplyChannelMsg",
	"sunsubscribe":         "ReplyChannelMsg",
	"punsubscribe":         "ReplyChannelMsg",
	"pubsub|channels":      "ReplyChannelList",
	"pubsub|shardchannels": "ReplyChannelList",
	"pubsub|numsub":        "ReplyChannelCounts",
	"pubsub|shardnumsub":   "ReplyChannelCounts",
}

// payloadCommands load a serialized value (a DUMP payload) into the server.
// Redis 7.0 checks such a payload deeply only with sanitize-dump-payload yes
// (or clients); without that, a crafted payload crashes the server on a
// later read. keyfence forwards them only to an upstream that sanitizes.
// Each must also be allowed by the lists above (RESTORE-ASKING and MIGRATE
// are denied outright; FUNCTION RESTORE is emulated: keyfence reads the
// libraries' code out of its payload and never forwards it).
var payloadCommands = []string{"restore"}

// adminReason is the reason given for a command that no list above names
// but that Redis flags "admin": such a command acts on the whole server.
func adminReason(name string) string {
	return displayName(name) + " is denied: it administers the server shared by every tenant"
}

// decision is the policy given to one command, and which rule gave it.
type decision struct {
	Policy string // Go name of the rewrite.Policy constant
	Why    string
	Rule   string // the policy.go entry that decided, for error messages
}

// ruleMatches reports whether a deniedCommands entry covers the command name.
func ruleMatches(entry, name string) bool {
	if container, ok := strings.CutSuffix(entry, "|*"); ok {
		return name == container || strings.HasPrefix(name, container+"|")
	}
	return entry == name
}

// decide applies the lists above to one command. It is an error for a
// command to be named by no entry (unless it is an admin command) or by more
// than one.
func decide(name string, admin bool) (decision, error) {
	var found []decision
	for entry, why := range deniedCommands {
		if ruleMatches(entry, name) {
			found = append(found, decision{"PolicyDenied", why, "deniedCommands " + entry})
		}
	}
	lists := []struct {
		policy  string
		list    string
		entries []string
	}{
		{"PolicyEmulated", "emulatedCommands", emulatedCommands},
		{"PolicyPattern", "patternCommands", patternCommands},
		{"PolicyChannel", "channelCommands", channelCommands},
		{"PolicyKeyed", "keyedCommands", keyedCommands},
	}
	for _, l := range lists {
		for _, entry := range l.entries {
			if entry == name {
				found = append(found, decision{l.policy, "", l.list + " " + entry})
			}
		}
	}
	switch {
	case len(found) == 1:
		return found[0], nil
	case len(found) > 1:
		var rules []string
		for _, d := range found {
			rules = append(rules, d.Rule)
		}
		sort.Strings(rules)
		return decision{}, fmt.Errorf("%s: more than one policy decision (%s): keep exactly one in policy.go", name, strings.Join(rules, "; "))
	case admin:
		return decision{"PolicyDenied", adminReason(name), "admin flag"}, nil
	default:
		return decision{}, fmt.Errorf("%s: no policy decision: add it to one of the lists in policy.go", name)
	}
}

// displayName is how a command is named to clients: "MEMORY USAGE".
func displayName(name string) string {
	return strings.ToUpper(strings.ReplaceAll(name, "|", " "))
}
