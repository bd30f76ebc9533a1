package proxy

import (
	"sort"
	"strings"

	"github.com/keyfence/keyfence/proxy/tenants"
	"github.com/keyfence/keyfence/rewrite"
)

// answeredOtherwise are commands of the table's forwarded policies that
// keyfence never sends as they are, with what it sends instead.
var answeredOtherwise = map[string]string{
	"eval":       "scripts run as FCALL of the sandbox library (scripts.go)",
	"evalsha":    "as EVAL",
	"eval_ro":    "as EVAL, with FCALL_RO",
	"evalsha_ro": "as EVAL_RO",
	"keys":       "KEYS is answered from bounded SCAN steps (emulate_keyspace.go)",
}

// ownCommands are the commands keyfence sends upstream on its own account,
// beyond the tenant's forwarded commands (which come from the command table
// itself, see ACLCommands): to set up connections, to emulate commands
// answered per tenant, and to follow the upstream topology. Each is here for
// the reason given, found by reading every place the proxy writes a command
// of its own (dial, call, appendArgs). A command that keyfence starts sending
// belongs here, or the least-privilege user of `keyfence acl` gets NOPERM;
// TestACLUserRunsEverything runs the workload as that user to catch it.
var ownCommands = []struct{ name, why string }{
	// Connection set-up (upstream.Dial) and health.
	{"hello", "RESP3 and AUTH on every new upstream connection"},
	{"auth", "log in as the upstream user on RESP2 connections"},
	{"select", "a client's SELECT n maps to a connection group on upstream database n"},
	{"ping", "readiness (/readyz), subscriber keep-alive, PING inside MULTI, TLS set-up"},
	{"echo", "ECHO inside MULTI is queued upstream so its reply keeps its place"},
	// Transactions on a pinned connection; SORT … STORE runs as one.
	{"multi", "MULTI, and SORT … BY/GET … STORE emulated as MULTI DEL RPUSH EXEC"},
	{"exec", "as MULTI"},
	{"discard", "as MULTI"},
	{"unwatch", "UNWATCH on a pinned connection"},
	// The per-tenant emulation of keyspace-wide commands.
	{"scan", "KEYS, DBSIZE, RANDOMKEY and FLUSHDB/FLUSHALL walk the tenant's keys with SCAN MATCH <prefix>*"},
	{"unlink", "FLUSHDB/FLUSHALL delete the tenant's keys found by SCAN"},
	{"pttl", "RANDOMKEY and the read cache check a key's time to live"},
	{"type", "SORT … BY/GET is run by keyfence, which reads the sorted key by its type"},
	{"info", "INFO, every section built per tenant from upstream's (info.go), and the Sentinel master check (INFO replication)"},
	{"command|info", "COMMAND and COMMAND INFO are answered from upstream's metadata of the allowed commands"},
	{"command|docs", "COMMAND DOCS, as COMMAND INFO"},
	{"command|list", "COMMAND LIST FILTERBY is filtered from upstream's answer"},
	{"command|help", "COMMAND HELP is forwarded as is"},
	{"command|getkeys", "COMMAND GETKEYS of a command that is not keyed is forwarded"},
	{"command|getkeysandflags", "COMMAND GETKEYSANDFLAGS is forwarded"},
	// Scripts run through keyfence's Lua sandbox: one function library,
	// loaded on a server that lacks it, runs every script (scripts.go).
	// EVAL and SCRIPT are never sent: the script cache stays empty.
	{"function|load", "loads the sandbox library (keyfence_<version>) on a server that lacks it"},
	{"fcall", "EVAL, EVALSHA, SCRIPT LOAD and FCALL run and load scripts and the tenant's functions through the sandbox library; FUNCTION LOAD, DELETE, RESTORE and LIST are its registry operations on the tenant's function store"},
	{"fcall_ro", "EVAL_RO, EVALSHA_RO and FCALL_RO run through the sandbox library"},
	// The read cache (--fallback) stays coherent through tracking of the
	// keys it caches, redirected to one invalidation connection.
	{"client|id", "the read cache's invalidation connection learns its id, which filled reads redirect to"},
	{"client|tracking", "CLIENT TRACKING ON REDIRECT <id> OPTIN before a read that fills the read cache"},
	{"client|caching", "CLIENT CACHING YES: the filled read's keys are tracked"},
	// Redis Cluster (--redis-cluster-nodes).
	{"cluster|slots", "the slot map"},
	{"asking", "following an ASK redirection"},
}

// ACLCommands returns the commands the upstream user of a tenant needs, in
// ACL syntax ("get", "object|encoding"), sorted: every command the table
// forwards (policies keyed, pattern and channel) and ownCommands. Container
// commands (CLIENT, OBJECT, …) are never granted whole, since "+client"
// would grant every subcommand, present and future: only the subcommands
// are.
func ACLCommands() []string {
	set := map[string]bool{}
	for _, name := range rewrite.CommandNames() {
		c := rewrite.Lookup(nameArgs(name))
		if c == nil || c.IsContainer() {
			continue
		}
		switch c.Policy {
		case rewrite.PolicyKeyed, rewrite.PolicyPattern, rewrite.PolicyChannel:
			if answeredOtherwise[c.Name] == "" {
				set[c.Name] = true
			}
		}
	}
	for _, c := range ownCommands {
		set[c.name] = true
	}
	names := make([]string, 0, len(set))
	for n := range set {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// nameArgs turns "object|encoding" into the arguments OBJECT ENCODING.
func nameArgs(name string) [][]byte {
	var args [][]byte
	for _, w := range strings.Split(name, "|") {
		args = append(args, []byte(w))
	}
	return args
}

// ACLRules returns the ACL SETUSER rules, after the user name, of the
// narrowest upstream user keyfence works with for the tenant whose keys
// start with prefix. passwordSHA256 is the hex SHA-256 of the user's
// password; empty leaves the user off and without a password, so that a
// line pasted before a password is chosen grants nothing.
func ACLRules(prefix, passwordSHA256 string) []string {
	glob := rewrite.GlobEscape(prefix) + "*"
	rules := []string{"reset"} // whatever the user had before goes
	if passwordSHA256 == "" {
		rules = append(rules, "off")
	} else {
		rules = append(rules, "on", "#"+passwordSHA256)
	}
	rules = append(rules,
		// The tenant's keys, and its function store (rewrite.FunctionStoreKey),
		// which the sandbox reads and writes.
		"resetkeys", "~"+glob, "~"+rewrite.GlobEscape(rewrite.FunctionStoreKey(prefix)),
		"resetchannels", "&"+glob,
		// The literal patterns keyfence PSUBSCRIBEs for keyspace and
		// keyevent notifications (rewrite.PatternLiteral): Redis compares
		// PSUBSCRIBE patterns with channel rules literally.
		"&__keyspace@*__:"+glob, "&__keyevent@*__:*",
		"-@all")
	for _, c := range ACLCommands() {
		rules = append(rules, "+"+c)
	}
	return rules
}

// ValidACLUserName reports whether name can be a Redis ACL user name printed
// on a redis-cli line: no blanks, control characters or quotes. The rule
// lives in tenants, which checks the upstream users of the tenants file and
// cannot import proxy.
func ValidACLUserName(name string) error { return tenants.ValidUserName(name) }
