package redistest

import (
	"context"
	"fmt"
	"regexp"
)

// tenantIDPattern is the spec's tenant id syntax; it keeps glob characters
// (* ? [ ]) and hash tags out of the ACL key pattern built from the id.
var tenantIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// aclRule is one ACL SETUSER rule and the reason it is there.
type aclRule struct {
	rule string
	why  string
}

// tenantCommandRules are the command rules of a tenant's upstream user, in the
// order Redis applies them (left to right, later rules win). The aim is
// defence in depth: a command keyfence forwards with a key it forgot to
// prefix fails with NOPERM, and nothing a tenant's connection can run upstream
// reaches beyond the tenant — while every command keyfence itself needs on
// that connection still works. Measured against redis-server 7.0.15.
//
// Limits worth knowing, found while writing this list (they are Redis's ACL
// semantics, not choices made here):
//   - KEYS, SCAN and RANDOMKEY are not filtered by key patterns: they list
//     every key. keyfence must add the prefix to MATCH and filter replies;
//     the ACL cannot help there.
//   - PSUBSCRIBE patterns are compared literally with channel rules, so only
//     the exact pattern "tenant:<id>:*" passes; "tenant:<id>:news.*" gets
//     NOPERM. keyfence therefore subscribes upstream only to that literal
//     pattern (and the two notification ones below) and matches the client's
//     patterns itself. PUBLISH/SUBSCRIBE of concrete channels are
//     glob-matched and work.
//   - SORT/SORT_RO with BY or GET patterns are refused for any user whose keys
//     are restricted ("ERR BY option of SORT denied due to insufficient ACL
//     permissions."); keyfence runs BY/GET itself with GET/HGET per element.
var tenantCommandRules = []aclRule{
	{"+@all", "start from everything: the command table, not this list, decides what a tenant may send"},
	{"-@admin", "server administration (CONFIG, DEBUG, SHUTDOWN, REPLICAOF, CLIENT KILL/PAUSE, ACL, MODULE, MONITOR, SLOWLOG, LATENCY, ...) affects every tenant"},
	{"-@dangerous", "also FLUSHDB/FLUSHALL (they would wipe every tenant: keyfence emulates them with SCAN+UNLINK), SWAPDB, MIGRATE, and the commands re-allowed below"},
	{"+scan", "keyfence emulates KEYS, DBSIZE, RANDOMKEY and FLUSHDB/FLUSHALL with SCAN MATCH tenant:<id>:* (not in the removed categories; named so the intent survives edits)"},
	{"+unlink", "the delete half of the FLUSHDB/FLUSHALL emulation; keys are ACL-checked, so only the tenant's own go"},
	{"+info", "@dangerous because it describes the whole server; keyfence filters it into the tenant's INFO and reads memory figures for telemetry"},
	{"+client|list", "@admin; keyfence reads it to build the tenant's own CLIENT LIST"},
	{"+client|info", "the connection's own details; CLIENT INFO is emulated from it"},
	{"+client|id", "the connection's own id; CLIENT ID is emulated from it"},
	{"+client|setname", "go-redis and keyfence name their connections; harmless, it names only this connection"},
	{"+client|getname", "reads only this connection's name"},
	{"+sort", "@dangerous only because BY/GET patterns can read any key; keys are ACL-checked, and Redis refuses BY/GET for key-restricted users anyway"},
	{"+sort_ro", "as SORT"},
	{"+restore", "@dangerous only because of the payload; the key is ACL-checked, and keyfence forwards RESTORE only when upstream says sanitize-dump-payload yes (or clients) or the operator vouches for it"},
	{"+ping", "connection health checks (go-redis pool, keyfence /readyz)"},
	{"+hello", "RESP3 negotiation and AUTH on connect"},
	{"+auth", "connection authentication"},
	{"+select", "SELECT n maps to the tenant's namespace inside upstream database n"},
	{"+command", "COMMAND INFO/DOCS/GETKEYS are answered from upstream metadata"},
	{"-script", "keyfence runs scripts through its own function library, never EVAL/SCRIPT: the script cache is global (SCRIPT FLUSH or KILL would act on every tenant)"},
	{"-eval", "as SCRIPT: a script sent by EVAL would run outside keyfence's sandbox"},
	{"-evalsha", "as EVAL"},
	{"-eval_ro", "as EVAL"},
	{"-evalsha_ro", "as EVAL"},
	{"-function", "functions live in one global library namespace; a tenant's own live in keyfence's sandbox (keyfence answers every FUNCTION subcommand itself)"},
	{"+function|load", "keyfence loads its Lua sandbox library (one per keyfence version) on a server that lacks it"},
	{"+fcall", "every tenant script and function runs as FCALL of the sandbox library's run functions; commands they call are ACL-checked against this user"},
	{"+fcall_ro", "EVAL_RO and EVALSHA_RO run as FCALL_RO"},
}

// setinfoRule is added only when the server has CLIENT SETINFO (Redis 7.2+):
// naming an unknown subcommand makes ACL SETUSER fail.
var setinfoRule = aclRule{"+client|setinfo", "clients announce their library name on connect; harmless, it affects only this connection"}

// TenantACLRules returns the ACL SETUSER rules, without user name, "on" and
// password, that confine a user to tenant tenantID: keys and channels
// "tenant:<id>:*" and the commands of tenantCommandRules (see there for the
// reasons and for the limits of Redis ACLs).
func TenantACLRules(tenantID string) ([]string, error) {
	if !tenantIDPattern.MatchString(tenantID) {
		return nil, fmt.Errorf("redistest: tenant id %q does not match %s", tenantID, tenantIDPattern)
	}
	prefix := "tenant:" + tenantID + ":*"
	// The two notification patterns are the literal ones keyfence
	// PSUBSCRIBEs for a tenant's keyspace and keyevent patterns (it matches
	// the client's patterns itself); keyevent payloads are filtered by key.
	// The tenant's function store (rewrite.FunctionStoreKey), which the
	// sandbox reads and writes for it.
	rules := []string{"reset", "~" + prefix, "&" + prefix, "&__keyspace@*__:" + prefix, "&__keyevent@*__:*",
		"~{keyfence}:functions:tenant:" + tenantID + ":"}
	for _, r := range tenantCommandRules {
		rules = append(rules, r.rule)
	}
	return rules, nil
}

// AddTenantUser creates (or replaces) the ACL user user with password, allowed
// only the keys and channels of tenant tenantID. Restart forgets it.
func (s *Server) AddTenantUser(ctx context.Context, user, password, tenantID string) error {
	rules, err := TenantACLRules(tenantID)
	if err != nil {
		return err
	}
	hasSetinfo, err := s.hasCommand(ctx, "client|setinfo")
	if err != nil {
		return err
	}
	args := []any{"ACL", "SETUSER", user}
	for _, r := range rules {
		args = append(args, r)
	}
	if hasSetinfo {
		args = append(args, setinfoRule.rule)
	}
	args = append(args, "on", ">"+password)
	if err := s.client.Do(ctx, args...).Err(); err != nil {
		return fmt.Errorf("redistest: ACL SETUSER %s for tenant %s: %w", user, tenantID, err)
	}
	return nil
}

// hasCommand tells whether the server knows a command or "command|subcommand".
func (s *Server) hasCommand(ctx context.Context, name string) (bool, error) {
	reply, err := s.client.Do(ctx, "COMMAND", "INFO", name).Slice()
	if err != nil {
		return false, fmt.Errorf("redistest: COMMAND INFO %s: %w", name, err)
	}
	return len(reply) == 1 && reply[0] != nil, nil
}
