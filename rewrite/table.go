package rewrite

// Policy says how keyfence treats a command. Every command and subcommand in
// the table has exactly one. The zero value is PolicyDenied so that a missing
// entry can never be forwarded: keyfence fails closed.
type Policy uint8

const (
	// PolicyDenied commands reach beyond the tenant and are refused.
	PolicyDenied Policy = iota
	// PolicyKeyed commands have their keys (found by key-specs) prefixed and
	// are otherwise forwarded untouched. A keyed command may have no keys
	// at all (TIME, LOLWUT): then it is forwarded as it is.
	PolicyKeyed
	// PolicyPattern commands carry glob patterns over key names (SCAN,
	// SORT BY/GET, PSUBSCRIBE, PUBSUB CHANNELS): the prefix is added,
	// glob-escaped, and the replies are filtered and stripped.
	PolicyPattern
	// PolicyChannel commands carry pub/sub channel names, prefixed like keys.
	PolicyChannel
	// PolicyEmulated commands are answered (or driven) by the proxy itself,
	// per tenant: AUTH, HELLO, SELECT, DBSIZE, INFO, CLIENT …, SCRIPT …
	PolicyEmulated
)

func (p Policy) String() string {
	switch p {
	case PolicyKeyed:
		return "keyed"
	case PolicyPattern:
		return "pattern"
	case PolicyChannel:
		return "channel"
	case PolicyEmulated:
		return "emulated"
	default:
		return "denied"
	}
}

// ReplyKind names the reply stripper a command needs. Replies of every other
// command pass through as raw bytes (error replies are always stripped).
type ReplyKind uint8

const (
	ReplyRaw           ReplyKind = iota // values only: passed through
	ReplyKey                            // one bulk key name or null (RANDOMKEY)
	ReplyKeyList                        // flat array of key names (KEYS, COMMAND GETKEYS)
	ReplyScan                           // [cursor, [key …]] (SCAN)
	ReplyKeyFirst                       // [key, …] or null (BLPOP, BZPOPMIN, LMPOP, ZMPOP …)
	ReplyStreams                        // [[key, entries] …] or map{key: entries} (XREAD, XREADGROUP)
	ReplyChannelMsg                     // pub/sub messages and confirmations
	ReplyChannelList                    // array of channel names (PUBSUB CHANNELS)
	ReplyChannelCounts                  // [channel, count, …] (PUBSUB NUMSUB)
)

// Command flags copied from COMMAND INFO that the proxy acts on.
type CmdFlag uint16

const (
	FlagWrite CmdFlag = 1 << iota
	FlagReadOnly
	FlagBlocking // has the "blocking" flag, the @blocking ACL category, or is in policy.go's blockingCommands
	FlagNoScript
	FlagPubSub
	FlagMovableKeys
	FlagAdmin
	FlagFast
	FlagLoading
	FlagStale
	FlagNoMulti
	FlagDenyOOM
	// FlagNoAuth ("no_auth") commands run before the client has logged in:
	// Redis 7.0's processCommand refuses every other command with NOAUTH
	// while authentication is required, and so does keyfence.
	FlagNoAuth
)

// Key-spec flags copied from COMMAND INFO.
type KeyFlag uint16

const (
	KeyRO KeyFlag = 1 << iota
	KeyRW
	KeyOW
	KeyRM
	KeyAccess
	KeyUpdate
	KeyInsert
	KeyDelete
	KeyNotKey
	KeyIncomplete
	KeyVariableFlags
)

// BeginSearch says where a key-spec starts looking: at a fixed argument index
// (Index > 0) or just after a keyword found by scanning from StartFrom
// (negative: from the end, backwards). Unknown is set for specs Redis itself
// cannot resolve (SORT BY/GET/STORE); commands with such specs are handled by
// hand in this package.
type BeginSearch struct {
	Index     int
	Keyword   string
	StartFrom int
	Unknown   bool
}

// FindKeys says which arguments after the begin-search point are keys: a
// range (LastKey relative to the start, negative from the end, with Limit
// dividing the remainder) or a count read from an argument (KeyNum: the
// count is at KeyNumIdx, keys start at FirstKey, both relative to the start).
type FindKeys struct {
	KeyNum    bool
	LastKey   int
	KeyStep   int
	Limit     int
	KeyNumIdx int
	FirstKey  int
	Unknown   bool
}

// KeySpec is one of a command's key-specs, as Redis 7 documents them.
type KeySpec struct {
	Flags       KeyFlag
	BeginSearch BeginSearch
	FindKeys    FindKeys
}

// Command is one entry of the generated command table. Subcommands of
// container commands (OBJECT, XINFO, CLIENT …) have entries of their own,
// reached through Subcommands.
type Command struct {
	Name        string // lower case; "object|encoding" for a subcommand
	Arity       int    // Redis arity: N exact, -N at least N (counting the name)
	Flags       CmdFlag
	KeySpecs    []KeySpec
	Policy      Policy
	Reply       ReplyKind
	Why         string // for denied commands: the reason given to the client
	Subcommands map[string]*Command

	// LoadsPayload marks a command that loads a DUMP payload (RESTORE): it
	// is forwarded only to an upstream that sanitizes payloads.
	LoadsPayload bool

	// Cache says whether the fallback's read cache may keep the reply, and
	// where the keys it depends on are.
	Cache CacheKeys
	// Script says whether a script may call the command through the sandbox.
	Script ScriptUse
	// Route says which master of a Redis Cluster the command goes to.
	Route ClusterRoute
}

// CacheKeys says whether a read's reply may be kept by the fallback's read
// cache (package fallback) and served while upstream is down, and which of
// its arguments are the keys the reply depends on. The positions are the
// command's key-spec positions; the generator checks that they are one of
// these two shapes.
type CacheKeys uint8

const (
	CacheNever    CacheKeys = iota // not cacheable
	CacheFirstKey                  // the first argument is the one key (GET key, HGET key field)
	CacheEveryKey                  // every argument is a key (MGET key [key ...])
)

// ScriptUse says whether a script may call a command through the Lua
// sandbox (sandbox.go).
type ScriptUse uint8

const (
	// ScriptDenied commands are refused inside scripts.
	ScriptDenied ScriptUse = iota
	// ScriptKeyed commands act only on the keys (or channels) the sandbox
	// finds by their key-specs and prefixes.
	ScriptKeyed
	// ScriptHarmless commands are keyless and show nothing of any tenant
	// (PING, ECHO, TIME).
	ScriptHarmless
)

// ClusterRoute says which master of a Redis Cluster a command is sent to
// (proxy/cluster.go). Emulated commands that walk the keyspace (KEYS,
// DBSIZE, FLUSHDB, RANDOMKEY) visit every master inside their emulation.
type ClusterRoute uint8

const (
	// RouteAnyMaster: keyless, it goes wherever the batch goes.
	RouteAnyMaster ClusterRoute = iota
	// RouteKeySlot: the master of its first key's slot (any master when
	// it names no key).
	RouteKeySlot
	// RouteShardChannel: the master of its shard channel's slot (sharded
	// pub/sub: SPUBLISH, SSUBSCRIBE, SUNSUBSCRIBE).
	RouteShardChannel
	// RoutePubSubNode: the one master that carries all of the tenant's
	// pub/sub, so that PUBLISH's receiver count and PUBSUB's answers are
	// whole (Redis counts receivers on its own node only).
	RoutePubSubNode
	// RouteAllMasters: every master, one after the other (SCAN, whose
	// cursor names the master).
	RouteAllMasters
)

// HasFlag reports whether the command carries flag f.
func (c *Command) HasFlag(f CmdFlag) bool { return c.Flags&f != 0 }

// Cacheable reports whether the fallback's read cache may keep the reply.
func (c *Command) Cacheable() bool { return c.Cache != CacheNever }
