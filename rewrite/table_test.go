package rewrite

import (
	"bytes"
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// capturedCommand is what these tests need of one COMMAND INFO entry.
type capturedCommand struct {
	Name     string
	Arity    int
	Flags    []string
	KeySpecs int
}

func (c capturedCommand) hasFlag(f string) bool {
	for _, g := range c.Flags {
		if g == f {
			return true
		}
	}
	return false
}

// loadCapturedCommands reads every command and subcommand of commands.json
// and extra.json, keyed by name ("get", "object|encoding").
func loadCapturedCommands(t *testing.T) map[string]capturedCommand {
	t.Helper()
	data, err := os.ReadFile("commands.json")
	if err != nil {
		t.Fatal(err)
	}
	var capture struct {
		Info []json.RawMessage `json:"info"`
	}
	if err := json.Unmarshal(data, &capture); err != nil {
		t.Fatal(err)
	}
	out := map[string]capturedCommand{}
	var add func(raw json.RawMessage)
	add = func(raw json.RawMessage) {
		var fields []json.RawMessage
		if err := json.Unmarshal(raw, &fields); err != nil || len(fields) != 10 {
			t.Fatalf("bad COMMAND INFO entry %.80s: %v", raw, err)
		}
		var c capturedCommand
		var specs, subs []json.RawMessage
		for i, to := range map[int]any{0: &c.Name, 1: &c.Arity, 2: &c.Flags, 8: &specs, 9: &subs} {
			if err := json.Unmarshal(fields[i], to); err != nil {
				t.Fatalf("COMMAND INFO entry %.40s, field %d: %v", raw, i, err)
			}
		}
		c.KeySpecs = len(specs)
		out[c.Name] = c
		for _, s := range subs {
			add(s)
		}
	}
	for _, raw := range capture.Info {
		add(raw)
	}
	if len(out) < 300 {
		t.Fatalf("commands.json holds only %d commands and subcommands", len(out))
	}

	data, err = os.ReadFile(filepath.Join("internal", "gen", "extra.json"))
	if err != nil {
		t.Fatal(err)
	}
	var extra struct {
		Commands []struct {
			Name     string            `json:"name"`
			Arity    int               `json:"arity"`
			Flags    []string          `json:"flags"`
			KeySpecs []json.RawMessage `json:"key_specs"`
		} `json:"commands"`
	}
	if err := json.Unmarshal(data, &extra); err != nil {
		t.Fatal(err)
	}
	for _, e := range extra.Commands {
		out[e.Name] = capturedCommand{Name: e.Name, Arity: e.Arity, Flags: e.Flags, KeySpecs: len(e.KeySpecs)}
	}
	return out
}

// tableEntry finds "get" or "object|encoding" in commandTable.
func tableEntry(name string) *Command {
	parent, sub, isSub := strings.Cut(name, "|")
	c := commandTable[parent]
	if !isSub || c == nil {
		return c
	}
	return c.Subcommands[sub]
}

// allTableEntries lists every entry of commandTable, subcommands included.
func allTableEntries() []*Command {
	var all []*Command
	for _, c := range commandTable {
		all = append(all, c)
		for _, s := range c.Subcommands {
			all = append(all, s)
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Name < all[j].Name })
	return all
}

func TestTableCoversCapture(t *testing.T) {
	captured := loadCapturedCommands(t)
	for name, c := range captured {
		e := tableEntry(name)
		if e == nil {
			t.Errorf("%s: in the data but not in commandTable", name)
			continue
		}
		if e.Name != name {
			t.Errorf("%s: entry is named %q", name, e.Name)
		}
		if e.Arity != c.Arity {
			t.Errorf("%s: arity %d, data says %d", name, e.Arity, c.Arity)
		}
		if len(e.KeySpecs) != c.KeySpecs {
			t.Errorf("%s: %d key-specs, data has %d", name, len(e.KeySpecs), c.KeySpecs)
		}
		if e.HasFlag(FlagAdmin) != c.hasFlag("admin") || e.HasFlag(FlagWrite) != c.hasFlag("write") ||
			e.HasFlag(FlagReadOnly) != c.hasFlag("readonly") || e.HasFlag(FlagMovableKeys) != c.hasFlag("movablekeys") {
			t.Errorf("%s: flags %b do not match %v", name, e.Flags, c.Flags)
		}
	}
	for _, e := range allTableEntries() {
		if _, ok := captured[e.Name]; !ok {
			t.Errorf("%s: in commandTable but not in the data", e.Name)
		}
	}
}

func TestTableShape(t *testing.T) {
	for key, c := range commandTable {
		if key != strings.ToLower(key) || c.Name != key {
			t.Errorf("top-level key %q holds %q", key, c.Name)
		}
		for word, s := range c.Subcommands {
			if word != strings.ToLower(word) || s.Name != key+"|"+word {
				t.Errorf("subcommand key %q of %s holds %q", word, key, s.Name)
			}
			if s.Subcommands != nil {
				t.Errorf("%s has subcommands of its own", s.Name)
			}
		}
	}
}

// policyRules is internal/gen/policy.go read back as data, so that the
// table can be checked against the rules independently of the generator.
type policyRules struct {
	denied  map[string]string   // entry → reason
	lists   map[Policy][]string // allowed policies → exact names
	replies map[string]string   // name → ReplyKind constant name
	payload []string            // commands that load a DUMP payload
}

func readPolicyRules(t *testing.T) policyRules {
	t.Helper()
	path := filepath.Join("internal", "gen", "policy.go")
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	lits := map[string]*ast.CompositeLit{}
	for _, decl := range f.Decls {
		gd, ok := decl.(*ast.GenDecl)
		if !ok || gd.Tok != token.VAR {
			continue
		}
		for _, spec := range gd.Specs {
			vs := spec.(*ast.ValueSpec)
			for i, name := range vs.Names {
				if i < len(vs.Values) {
					if cl, ok := vs.Values[i].(*ast.CompositeLit); ok {
						lits[name.Name] = cl
					}
				}
			}
		}
	}
	str := func(e ast.Expr) string {
		lit, ok := e.(*ast.BasicLit)
		if !ok || lit.Kind != token.STRING {
			t.Fatalf("%s: rule element %T is not a string literal", path, e)
		}
		s, err := strconv.Unquote(lit.Value)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	lit := func(name string) *ast.CompositeLit {
		cl := lits[name]
		if cl == nil {
			t.Fatalf("%s: no var %s = {…}", path, name)
		}
		return cl
	}
	stringMap := func(name string) map[string]string {
		m := map[string]string{}
		for _, elt := range lit(name).Elts {
			kv := elt.(*ast.KeyValueExpr)
			m[str(kv.Key)] = str(kv.Value)
		}
		return m
	}
	stringList := func(name string) []string {
		var l []string
		for _, elt := range lit(name).Elts {
			l = append(l, str(elt))
		}
		return l
	}
	return policyRules{
		denied: stringMap("deniedCommands"),
		lists: map[Policy][]string{
			PolicyEmulated: stringList("emulatedCommands"),
			PolicyPattern:  stringList("patternCommands"),
			PolicyChannel:  stringList("channelCommands"),
			PolicyKeyed:    stringList("keyedCommands"),
		},
		replies: stringMap("replyKinds"),
		payload: stringList("payloadCommands"),
	}
}

// derive applies the rules as the brief states them: an explicit entry
// decides; "x|*" in the denied list covers x and all its subcommands; an
// admin command named nowhere is denied. ok is false when no rule, or more
// than one, decides.
func (r policyRules) derive(name string, admin bool) (p Policy, why string, ok bool) {
	n := 0
	for entry, reason := range r.denied {
		container, wildcard := strings.CutSuffix(entry, "|*")
		if entry == name || wildcard && (name == container || strings.HasPrefix(name, container+"|")) {
			p, why, n = PolicyDenied, reason, n+1
		}
	}
	for policy, names := range r.lists {
		for _, entry := range names {
			if entry == name {
				p, why, n = policy, "", n+1
			}
		}
	}
	if n == 0 && admin {
		return PolicyDenied, "", true
	}
	return p, why, n == 1
}

func TestPolicyFollowsRules(t *testing.T) {
	rules := readPolicyRules(t)
	replyKinds := map[string]ReplyKind{
		"ReplyKey": ReplyKey, "ReplyKeyList": ReplyKeyList, "ReplyScan": ReplyScan,
		"ReplyKeyFirst": ReplyKeyFirst, "ReplyStreams": ReplyStreams, "ReplyChannelMsg": ReplyChannelMsg,
		"ReplyChannelList": ReplyChannelList, "ReplyChannelCounts": ReplyChannelCounts,
	}
	count := map[Policy]int{}
	for name, c := range loadCapturedCommands(t) {
		e := tableEntry(name)
		if e == nil {
			continue // reported by TestTableCoversCapture
		}
		want, why, ok := rules.derive(name, c.hasFlag("admin"))
		if !ok {
			t.Errorf("%s: policy.go gives it no single decision, yet the table says %v", name, e.Policy)
			continue
		}
		count[want]++
		if e.Policy != want {
			t.Errorf("%s: policy %v, rules say %v", name, e.Policy, want)
		}
		if why != "" && e.Why != why {
			t.Errorf("%s: Why %q, rules say %q", name, e.Why, why)
		}
		wantReply := ReplyRaw
		if k, ok := rules.replies[name]; ok {
			if wantReply, ok = replyKinds[k]; !ok {
				t.Errorf("%s: policy.go reply kind %q is unknown", name, k)
			}
		}
		if e.Reply != wantReply {
			t.Errorf("%s: reply kind %v, rules say %v", name, e.Reply, wantReply)
		}
		if want := slices.Contains(rules.payload, name); e.LoadsPayload != want {
			t.Errorf("%s: LoadsPayload %v, payloadCommands says %v", name, e.LoadsPayload, want)
		}
	}
	for _, name := range rules.payload {
		if e := tableEntry(name); e == nil || e.Policy != PolicyKeyed {
			t.Errorf("payloadCommands names %q, which is not a keyed command of the table", name)
		}
	}
	t.Logf("policies: %v", count)
}

func TestWhyOnlyOnDenied(t *testing.T) {
	for _, e := range allTableEntries() {
		switch {
		case e.Policy == PolicyDenied && !strings.Contains(e.Why, " is denied: "):
			t.Errorf("%s: denied without a reason of the form \"X is denied: why\" (Why %q)", e.Name, e.Why)
		case e.Policy != PolicyDenied && e.Why != "":
			t.Errorf("%s: %v but has a Why %q", e.Name, e.Policy, e.Why)
		}
	}
}

func TestPolicySpotChecks(t *testing.T) {
	tests := []struct {
		name   string
		policy Policy
		reply  ReplyKind
		why    string // for denied: a part of the reason
	}{
		{"get", PolicyKeyed, ReplyRaw, ""},
		{"set", PolicyKeyed, ReplyRaw, ""},
		{"mset", PolicyKeyed, ReplyRaw, ""},
		{"del", PolicyKeyed, ReplyRaw, ""},
		{"hgetall", PolicyKeyed, ReplyRaw, ""},
		{"zunionstore", PolicyKeyed, ReplyRaw, ""},
		{"watch", PolicyKeyed, ReplyRaw, ""},
		{"time", PolicyKeyed, ReplyRaw, ""},
		{"lolwut", PolicyKeyed, ReplyRaw, ""},
		{"wait", PolicyKeyed, ReplyRaw, ""},
		{"lastsave", PolicyKeyed, ReplyRaw, ""},
		{"restore", PolicyKeyed, ReplyRaw, ""},
		{"object|encoding", PolicyKeyed, ReplyRaw, ""},
		{"object|help", PolicyKeyed, ReplyRaw, ""},
		{"memory|usage", PolicyKeyed, ReplyRaw, ""},
		{"xinfo|stream", PolicyKeyed, ReplyRaw, ""},
		{"xgroup|create", PolicyKeyed, ReplyRaw, ""},
		{"georadius", PolicyKeyed, ReplyRaw, ""},
		{"blpop", PolicyKeyed, ReplyKeyFirst, ""},
		{"bzpopmin", PolicyKeyed, ReplyKeyFirst, ""},
		{"lmpop", PolicyKeyed, ReplyKeyFirst, ""},
		{"bzmpop", PolicyKeyed, ReplyKeyFirst, ""},
		{"xread", PolicyKeyed, ReplyStreams, ""},
		{"xreadgroup", PolicyKeyed, ReplyStreams, ""},
		{"keys", PolicyEmulated, ReplyRaw, ""},
		{"scan", PolicyPattern, ReplyScan, ""},
		{"sort", PolicyPattern, ReplyRaw, ""},
		{"sort_ro", PolicyPattern, ReplyRaw, ""},
		{"psubscribe", PolicyPattern, ReplyChannelMsg, ""},
		{"pubsub|channels", PolicyPattern, ReplyChannelList, ""},
		{"publish", PolicyChannel, ReplyRaw, ""},
		{"spublish", PolicyChannel, ReplyRaw, ""},
		{"subscribe", PolicyChannel, ReplyChannelMsg, ""},
		{"sunsubscribe", PolicyChannel, ReplyChannelMsg, ""},
		{"pubsub|numsub", PolicyChannel, ReplyChannelCounts, ""},
		{"auth", PolicyEmulated, ReplyRaw, ""},
		{"hello", PolicyEmulated, ReplyRaw, ""},
		{"select", PolicyEmulated, ReplyRaw, ""},
		{"flushall", PolicyEmulated, ReplyRaw, ""},
		{"randomkey", PolicyEmulated, ReplyKey, ""},
		{"info", PolicyEmulated, ReplyRaw, ""},
		{"client|list", PolicyEmulated, ReplyRaw, ""},
		{"client|setinfo", PolicyEmulated, ReplyRaw, ""},
		{"command", PolicyEmulated, ReplyRaw, ""},
		{"command|getkeys", PolicyEmulated, ReplyKeyList, ""},
		{"multi", PolicyEmulated, ReplyRaw, ""},
		{"evalsha_ro", PolicyEmulated, ReplyRaw, ""},
		{"script|load", PolicyEmulated, ReplyRaw, ""},
		{"function|list", PolicyEmulated, ReplyRaw, ""},
		{"pubsub|numpat", PolicyEmulated, ReplyRaw, ""},
		{"config", PolicyDenied, ReplyRaw, "CONFIG is denied"},
		{"config|get", PolicyDenied, ReplyRaw, "CONFIG is denied"},
		{"config|help", PolicyDenied, ReplyRaw, "CONFIG is denied"},
		{"acl|whoami", PolicyDenied, ReplyRaw, "ACL is denied"},
		{"cluster|slots", PolicyDenied, ReplyRaw, "CLUSTER is denied"},
		{"client|kill", PolicyDenied, ReplyRaw, "CLIENT KILL is denied"},
		{"client|tracking", PolicyDenied, ReplyRaw, "CLIENT TRACKING is denied"},
		{"memory|doctor", PolicyDenied, ReplyRaw, "MEMORY DOCTOR is denied"},
		{"function|load", PolicyEmulated, ReplyRaw, ""},
		{"fcall", PolicyEmulated, ReplyRaw, ""},
		{"script|kill", PolicyDenied, ReplyRaw, "SCRIPT KILL is denied"},
		{"migrate", PolicyDenied, ReplyRaw, "MIGRATE is denied"},
		{"move", PolicyDenied, ReplyRaw, "MOVE is denied"},
		{"shutdown", PolicyDenied, ReplyRaw, "SHUTDOWN is denied"},
		{"monitor", PolicyDenied, ReplyRaw, "MONITOR is denied"},
		{"role", PolicyDenied, ReplyRaw, "ROLE is denied"},
		{"readonly", PolicyDenied, ReplyRaw, "READONLY is denied"},
		{"pfdebug", PolicyDenied, ReplyRaw, "PFDEBUG is denied"},
	}
	for _, tt := range tests {
		e := tableEntry(tt.name)
		if e == nil {
			t.Errorf("%s: not in commandTable", tt.name)
			continue
		}
		if e.Policy != tt.policy || e.Reply != tt.reply {
			t.Errorf("%s: %v/%d, want %v/%d", tt.name, e.Policy, e.Reply, tt.policy, tt.reply)
		}
		if !strings.Contains(e.Why, tt.why) || (tt.why == "") != (e.Why == "") {
			t.Errorf("%s: Why %q, want it to contain %q", tt.name, e.Why, tt.why)
		}
	}
}

func TestFlagSpotChecks(t *testing.T) {
	tests := []struct {
		name  string
		has   CmdFlag
		hasnt CmdFlag
	}{
		{"get", FlagReadOnly | FlagFast, FlagWrite | FlagBlocking},
		{"set", FlagWrite | FlagDenyOOM, FlagReadOnly | FlagFast},
		{"blpop", FlagWrite | FlagBlocking | FlagNoScript, FlagMovableKeys},
		{"xread", FlagReadOnly | FlagBlocking | FlagMovableKeys, FlagWrite},
		{"blmpop", FlagBlocking | FlagMovableKeys, 0},
		{"subscribe", FlagPubSub | FlagNoScript | FlagLoading | FlagStale, 0},
		{"save", FlagAdmin | FlagNoScript | FlagNoMulti, 0},
		{"client|list", FlagAdmin, 0},
		{"client|setinfo", FlagNoScript | FlagLoading | FlagStale, FlagAdmin},
		{"config", 0, FlagAdmin},
	}
	for _, tt := range tests {
		e := tableEntry(tt.name)
		if e == nil {
			t.Errorf("%s: not in commandTable", tt.name)
			continue
		}
		if e.Flags&tt.has != tt.has || e.Flags&tt.hasnt != 0 {
			t.Errorf("%s: flags %b, want %b set and %b clear", tt.name, e.Flags, tt.has, tt.hasnt)
		}
	}
}

func TestKeySpecSpotChecks(t *testing.T) {
	at := func(i int) BeginSearch { return BeginSearch{Index: i} }
	after := func(kw string, from int) BeginSearch { return BeginSearch{Keyword: kw, StartFrom: from} }
	rng := func(last, step, limit int) FindKeys { return FindKeys{LastKey: last, KeyStep: step, Limit: limit} }
	keynum := FindKeys{KeyNum: true, KeyNumIdx: 0, FirstKey: 1, KeyStep: 1}
	unknown := KeySpec{BeginSearch: BeginSearch{Unknown: true}, FindKeys: FindKeys{Unknown: true}}

	tests := []struct {
		name  string
		specs []KeySpec
	}{
		{"get", []KeySpec{{KeyRO | KeyAccess, at(1), rng(0, 1, 0)}}},
		{"set", []KeySpec{{KeyRW | KeyAccess | KeyUpdate | KeyVariableFlags, at(1), rng(0, 1, 0)}}},
		{"mset", []KeySpec{{KeyOW | KeyUpdate, at(1), rng(-1, 2, 0)}}},
		{"del", []KeySpec{{KeyRM | KeyDelete, at(1), rng(-1, 1, 0)}}},
		{"watch", []KeySpec{{KeyRO, at(1), rng(-1, 1, 0)}}},
		{"blpop", []KeySpec{{KeyRW | KeyAccess | KeyDelete, at(1), rng(-2, 1, 0)}}},
		{"lmove", []KeySpec{
			{KeyRW | KeyAccess | KeyDelete, at(1), rng(0, 1, 0)},
			{KeyRW | KeyInsert, at(2), rng(0, 1, 0)},
		}},
		{"bitop", []KeySpec{
			{KeyOW | KeyUpdate, at(2), rng(0, 1, 0)},
			{KeyRO | KeyAccess, at(3), rng(-1, 1, 0)},
		}},
		{"zunionstore", []KeySpec{
			{KeyOW | KeyUpdate, at(1), rng(0, 1, 0)},
			{KeyRO | KeyAccess, at(2), keynum},
		}},
		{"lmpop", []KeySpec{{KeyRW | KeyAccess | KeyDelete, at(1), keynum}}},
		{"blmpop", []KeySpec{{KeyRW | KeyAccess | KeyDelete, at(2), keynum}}},
		{"sintercard", []KeySpec{{KeyRO | KeyAccess, at(1), keynum}}},
		{"eval", []KeySpec{{KeyRW | KeyAccess | KeyUpdate, at(2), keynum}}},
		{"xread", []KeySpec{{KeyRO | KeyAccess, after("STREAMS", 1), rng(-1, 1, 2)}}},
		{"xreadgroup", []KeySpec{{KeyRO | KeyAccess, after("STREAMS", 4), rng(-1, 1, 2)}}},
		{"georadius", []KeySpec{
			{KeyRO | KeyAccess, at(1), rng(0, 1, 0)},
			{KeyOW | KeyUpdate, after("STORE", 6), rng(0, 1, 0)},
			{KeyOW | KeyUpdate, after("STOREDIST", 6), rng(0, 1, 0)},
		}},
		{"migrate", []KeySpec{
			{KeyRW | KeyAccess | KeyDelete, at(3), rng(0, 1, 0)},
			{KeyRW | KeyAccess | KeyDelete | KeyIncomplete, after("KEYS", -2), rng(-1, 1, 0)},
		}},
		{"sort", []KeySpec{
			{KeyRO | KeyAccess, at(1), rng(0, 1, 0)},
			{KeyRO | KeyAccess, unknown.BeginSearch, unknown.FindKeys},
			{KeyOW | KeyUpdate, unknown.BeginSearch, unknown.FindKeys},
		}},
		{"spublish", []KeySpec{{KeyNotKey, at(1), rng(0, 1, 0)}}},
		{"object|encoding", []KeySpec{{KeyRO, at(2), rng(0, 1, 0)}}},
		{"memory|usage", []KeySpec{{KeyRO, at(2), rng(0, 1, 0)}}},
		{"xinfo|stream", []KeySpec{{KeyRO | KeyAccess, at(2), rng(0, 1, 0)}}},
		{"xgroup|create", []KeySpec{{KeyRW | KeyInsert, at(2), rng(0, 1, 0)}}},
		{"time", nil},
		{"object|help", nil},
		{"client|setinfo", nil},
	}
	for _, tt := range tests {
		e := tableEntry(tt.name)
		if e == nil {
			t.Errorf("%s: not in commandTable", tt.name)
			continue
		}
		if len(e.KeySpecs) != len(tt.specs) {
			t.Errorf("%s: %d key-specs, want %d", tt.name, len(e.KeySpecs), len(tt.specs))
			continue
		}
		for i, want := range tt.specs {
			if got := e.KeySpecs[i]; got != want {
				t.Errorf("%s: key-spec %d is %+v, want %+v", tt.name, i, got, want)
			}
		}
	}
}

// TestTableIsGenerated fails when table_gen.go is not what `go generate`
// makes of commands.json, extra.json and policy.go today.
func TestTableIsGenerated(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to run the generator: %v", err)
	}
	out := filepath.Join(t.TempDir(), "table_gen.go")
	cmd := exec.Command(goTool, "run", "./internal/gen", "-in", "commands.json", "-o", out)
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("generator failed: %v\n%s", err, msg)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("table_gen.go")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("table_gen.go is stale: run `go generate ./rewrite/...`")
	}
}
