package tenants

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/keyfence/keyfence/rewrite"
)

// Limits are a tenant's quotas.
type Limits struct {
	MaxConnections  int     // 0: unlimited
	MaxOpsPerSecond float64 // 0: unlimited
	Burst           int     // token bucket size when MaxOpsPerSecond > 0 (resolved: never 0 then)
}

// A Tenant is one entry of the tenants file, checked and resolved.
type Tenant struct {
	ID               string
	PasswordHash     string
	UpstreamUser     string // "" : the gateway's own upstream user
	UpstreamPassword string // resolved from password_env / password_file at load; never printed/logged
	Limits           Limits // defaults already applied
}

// String names the tenant without its secrets, so that a Tenant printed by
// mistake (%v, %+v) shows no password.
func (t Tenant) String() string {
	if t.UpstreamUser == "" {
		return "tenant " + t.ID
	}
	return "tenant " + t.ID + " (upstream user " + t.UpstreamUser + ")"
}

// GoString is String, for %#v.
func (t Tenant) GoString() string { return t.String() }

// LogValue is what slog logs of a tenant: no secrets.
func (t Tenant) LogValue() slog.Value {
	return slog.GroupValue(slog.String("id", t.ID), slog.String("upstream_user", t.UpstreamUser))
}

// A File is a checked tenants file.
type File struct {
	Tenants []Tenant // in file order
	byID    map[string]*Tenant
}

// reservedID is telemetry.OverflowTenant, the tenant label of the tenants
// past the metrics cap (kept apart: this package imports nothing of
// keyfence's but rewrite).
const reservedID = "_overflow"

// Lookup returns the tenant with the given id.
func (f *File) Lookup(id string) (*Tenant, bool) {
	t, ok := f.byID[id]
	return t, ok
}

// maxOpsPerSecond bounds max_ops_per_second: far above anything one Redis
// serves, low enough that the burst derived from it fits an int.
const maxOpsPerSecond = 1e9

// defaultBurst is the token bucket size of a tenant whose limits set
// max_ops_per_second but no burst: a tenth of a second of its rate, at
// least 1. A client's pipeline or a queue library's batch of up to that
// many commands goes through at once; a longer one is spread over time.
func defaultBurst(opsPerSecond float64) int {
	return max(1, int(math.Ceil(opsPerSecond/10)))
}

// Load reads and checks the tenants file at path. An upstream password
// given as password_file is read from that file, relative to the tenants
// file's directory unless absolute; password_env is looked up with
// lookupEnv (os.LookupEnv in keyfence).
func Load(path string, lookupEnv func(string) (string, bool)) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tenants file: %w", err)
	}
	dir := filepath.Dir(path)
	return Parse(data, lookupEnv, func(p string) ([]byte, error) {
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		return os.ReadFile(p)
	})
}

// Parse checks a tenants file's content; lookupEnv and readFile resolve the
// upstream passwords. Its error is one line, "tenants file: tenant "acme":
// field: what is wrong" (a tenant without a valid id is named by its place,
// tenants[3]), and never holds a secret: not an upstream password, not
// what was written as password_hash.
//
// Limits in defaults apply field by field to tenants that do not set the
// field in their own limits; a tenant's explicit 0 means unlimited. burst
// goes with max_ops_per_second: a tenant that sets its own rate takes its
// own burst, or the default burst of its rate, never the defaults' burst.
// The default burst is a tenth of a second of the rate, at least 1.
func Parse(data []byte, lookupEnv func(string) (string, bool), readFile func(string) ([]byte, error)) (*File, error) {
	f, err := parse(data, lookupEnv, readFile)
	if err != nil {
		return nil, fmt.Errorf("tenants file: %w", err)
	}
	return f, nil
}

func parse(data []byte, lookupEnv func(string) (string, bool), readFile func(string) ([]byte, error)) (*File, error) {
	// The file is one YAML document; empty ones (a stray ---) are ignored.
	var top *yaml.Node
	for dec := yaml.NewDecoder(bytes.NewReader(data)); ; {
		var doc yaml.Node
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, oneLine(err)
		}
		if len(doc.Content) == 0 || doc.Content[0].ShortTag() == "!!null" { // a document node holds its one value
			continue
		}
		if top != nil {
			return nil, fmt.Errorf("more than one YAML document (line %d): the tenants file is one", doc.Line)
		}
		top = doc.Content[0]
	}
	if top == nil {
		return nil, errors.New("tenants: none; the file must list at least one tenant")
	}
	fields, err := mappingOf(top, "top level")
	if err != nil {
		return nil, err
	}
	if err := unknown(fields, "", "defaults", "tenants"); err != nil {
		return nil, err
	}
	var defaults rawLimits
	if n := fields.get("defaults"); n != nil {
		if defaults, err = parseLimits(n, "defaults"); err != nil {
			return nil, err
		}
		if defaults.burst != nil && *defaults.burst != 0 && defaults.ops() == 0 {
			return nil, errors.New("defaults.burst: set while defaults.max_ops_per_second is 0 or absent (unlimited)")
		}
	}
	list := fields.get("tenants")
	if list == nil {
		return nil, errors.New("tenants: none; the file must list at least one tenant")
	}
	if list.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("tenants: want a list of tenants (line %d)", list.Line)
	}
	if len(list.Content) == 0 {
		return nil, errors.New("tenants: none; the file must list at least one tenant")
	}
	f := &File{Tenants: make([]Tenant, 0, len(list.Content)), byID: make(map[string]*Tenant, len(list.Content))}
	index := map[string]int{}     // tenant id → its place
	upstreams := map[string]int{} // upstream user → the place of the tenant that names it
	for i, n := range list.Content {
		t, err := parseTenant(n, i, defaults, lookupEnv, readFile)
		if err != nil {
			return nil, err
		}
		if j, dup := index[t.ID]; dup {
			return nil, fmt.Errorf("tenant %q: id: also the id of tenants[%d]; ids must be unique", t.ID, j)
		}
		index[t.ID] = i
		if t.UpstreamUser != "" {
			if j, dup := upstreams[t.UpstreamUser]; dup {
				return nil, fmt.Errorf("tenant %q: upstream.user: %q is also tenant %q's; each tenant needs a user of its own, limited to its keys", t.ID, t.UpstreamUser, f.Tenants[j].ID)
			}
			upstreams[t.UpstreamUser] = i
		}
		f.Tenants = append(f.Tenants, t)
	}
	for i := range f.Tenants {
		f.byID[f.Tenants[i].ID] = &f.Tenants[i]
	}
	return f, nil
}

// parseTenant checks one entry of tenants, the i-th.
func parseTenant(n *yaml.Node, i int, defaults rawLimits, lookupEnv func(string) (string, bool), readFile func(string) ([]byte, error)) (Tenant, error) {
	who := fmt.Sprintf("tenants[%d]", i)
	fields, err := mappingOf(n, who)
	if err != nil {
		return Tenant{}, err
	}
	var t Tenant
	if t.ID, err = str(fields.get("id"), who, "id"); err != nil {
		return Tenant{}, err
	}
	switch {
	case t.ID == "":
		return Tenant{}, fmt.Errorf("%s: id: missing", who)
	case !rewrite.ValidTenantID(t.ID):
		return Tenant{}, fmt.Errorf("%s: id %.70q: must match [A-Za-z0-9_-]{1,64}", who, t.ID)
	case t.ID == reservedID:
		return Tenant{}, fmt.Errorf("%s: id %q: reserved (the metrics count the tenants past their cap under it)", who, t.ID)
	}
	who = fmt.Sprintf("tenant %q", t.ID)
	if err := unknown(fields, who+": ", "id", "password_hash", "upstream", "limits"); err != nil {
		return Tenant{}, err
	}

	if hn := fields.get("password_hash"); hn != nil {
		// A number here is a password that YAML read as one: refused as
		// not a string, without quoting it.
		if hn.Kind != yaml.ScalarNode || hn.ShortTag() != "!!str" {
			return Tenant{}, fmt.Errorf("%s: password_hash: want a string (line %d)", who, hn.Line)
		}
		t.PasswordHash = hn.Value
	}
	if t.PasswordHash == "" {
		return Tenant{}, fmt.Errorf("%s: password_hash: missing (make one with keyfence hash-password)", who)
	}
	if _, err := parseHash(t.PasswordHash); errors.Is(err, errNotAHash) {
		return Tenant{}, fmt.Errorf("%s: password_hash: %v (a plaintext password is refused; make one with keyfence hash-password)", who, err)
	} else if err != nil {
		return Tenant{}, fmt.Errorf("%s: password_hash: %v", who, err)
	}

	if un := fields.get("upstream"); un != nil {
		if t.UpstreamUser, t.UpstreamPassword, err = parseUpstream(un, who, lookupEnv, readFile); err != nil {
			return Tenant{}, err
		}
	}

	own := rawLimits{}
	if ln := fields.get("limits"); ln != nil {
		if own, err = parseLimits(ln, who+": limits"); err != nil {
			return Tenant{}, err
		}
	}
	if t.Limits, err = resolve(defaults, own); err != nil {
		return Tenant{}, fmt.Errorf("%s: %w", who, err)
	}
	return t, nil
}

// parseUpstream reads a tenant's upstream block and resolves the password.
func parseUpstream(n *yaml.Node, who string, lookupEnv func(string) (string, bool), readFile func(string) ([]byte, error)) (user, password string, err error) {
	fields, err := mappingOf(n, who+": upstream")
	if err != nil {
		return "", "", err
	}
	if err := unknown(fields, who+": upstream.", "user", "password_env", "password_file"); err != nil {
		return "", "", err
	}
	if user, err = str(fields.get("user"), who, "upstream.user"); err != nil {
		return "", "", err
	}
	env, err := str(fields.get("password_env"), who, "upstream.password_env")
	if err != nil {
		return "", "", err
	}
	file, err := str(fields.get("password_file"), who, "upstream.password_file")
	if err != nil {
		return "", "", err
	}
	switch {
	case user == "":
		return "", "", fmt.Errorf("%s: upstream.user: missing; without upstream the tenant runs as the gateway's own upstream user", who)
	case user == "default":
		return "", "", fmt.Errorf("%s: upstream.user: \"default\" is Redis's default user, which keyfence acl would reset; name a user of the tenant's own, or leave out upstream", who)
	case env != "" && file != "":
		return "", "", fmt.Errorf("%s: upstream.password_env and upstream.password_file: set one", who)
	case env == "" && file == "":
		return "", "", fmt.Errorf("%s: upstream.password_env or upstream.password_file: set one; the upstream user needs a password", who)
	}
	if err := ValidUserName(user); err != nil {
		return "", "", fmt.Errorf("%s: upstream.user: %w", who, err)
	}
	if env != "" {
		v, ok := lookupEnv(env)
		switch {
		case !ok:
			return "", "", fmt.Errorf("%s: upstream.password_env: %s is not set", who, env)
		case v == "":
			return "", "", fmt.Errorf("%s: upstream.password_env: %s is empty", who, env)
		}
		return user, v, nil
	}
	b, err := readFile(file)
	if err != nil {
		return "", "", fmt.Errorf("%s: upstream.password_file: %w", who, err)
	}
	// As Docker and Kubernetes mount secrets: one trailing newline is not
	// part of the password.
	v := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	switch {
	case v == "":
		return "", "", fmt.Errorf("%s: upstream.password_file %s: the file is empty", who, file)
	case strings.ContainsAny(v, "\r\n"):
		return "", "", fmt.Errorf("%s: upstream.password_file %s: more than one line; the file must hold the password alone", who, file)
	}
	return user, v, nil
}

// ValidUserName reports whether name can be a Redis ACL user name printed
// on a redis-cli line: no blanks, control characters or quotes.
func ValidUserName(name string) error {
	if name == "" {
		return errors.New("user name: empty")
	}
	for _, r := range name {
		if r <= ' ' || r == 0x7f || r == '"' || r == '\'' {
			return fmt.Errorf("user name %q: blanks, control characters and quotes are not allowed", name)
		}
	}
	return nil
}

// rawLimits are limits as written: nil where a field is absent.
type rawLimits struct {
	maxConnections *int
	maxOps         *float64
	burst          *int
}

func (l rawLimits) ops() float64 {
	if l.maxOps == nil {
		return 0
	}
	return *l.maxOps
}

// parseLimits reads a limits or defaults block; where is how errors name it.
func parseLimits(n *yaml.Node, where string) (rawLimits, error) {
	var l rawLimits
	fields, err := mappingOf(n, where)
	if err != nil {
		return l, err
	}
	prefix := where + "."
	if err := unknown(fields, prefix, "max_connections", "max_ops_per_second", "burst"); err != nil {
		return l, err
	}
	for _, f := range []struct {
		name, zero string
		dst        **int
	}{{"max_connections", "unlimited", &l.maxConnections}, {"burst", "a tenth of a second of max_ops_per_second", &l.burst}} {
		v := fields.get(f.name)
		if v == nil {
			continue
		}
		var x int
		if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!int" || v.Decode(&x) != nil {
			return l, fmt.Errorf("%s%s: want a whole number (line %d)", prefix, f.name, v.Line)
		}
		if x < 0 {
			return l, fmt.Errorf("%s%s: %d: must not be negative (0: %s)", prefix, f.name, x, f.zero)
		}
		*f.dst = &x
	}
	if v := fields.get("max_ops_per_second"); v != nil {
		var x float64
		if v.Kind != yaml.ScalarNode || (v.ShortTag() != "!!int" && v.ShortTag() != "!!float") || v.Decode(&x) != nil ||
			math.IsNaN(x) || math.IsInf(x, 0) {
			return l, fmt.Errorf("%smax_ops_per_second: want a number (line %d)", prefix, v.Line)
		}
		if x < 0 || x > maxOpsPerSecond {
			return l, fmt.Errorf("%smax_ops_per_second: %g: want 0 (unlimited) to %g", prefix, x, float64(maxOpsPerSecond))
		}
		l.maxOps = &x
	}
	return l, nil
}

// resolve applies defaults to a tenant's own limits.
func resolve(defaults, own rawLimits) (Limits, error) {
	var l Limits
	if c := own.maxConnections; c != nil {
		l.MaxConnections = *c
	} else if c := defaults.maxConnections; c != nil {
		l.MaxConnections = *c
	}
	burst := defaults.burst
	switch {
	case own.maxOps != nil:
		l.MaxOpsPerSecond, burst = *own.maxOps, own.burst
	case own.burst != nil:
		l.MaxOpsPerSecond, burst = defaults.ops(), own.burst
	default:
		l.MaxOpsPerSecond = defaults.ops()
	}
	if l.MaxOpsPerSecond == 0 {
		if own.burst != nil && *own.burst != 0 {
			return Limits{}, errors.New("limits.burst: set while max_ops_per_second is 0 (unlimited)")
		}
		return l, nil
	}
	l.Burst = defaultBurst(l.MaxOpsPerSecond)
	if burst != nil && *burst > 0 {
		l.Burst = *burst
	}
	return l, nil
}

// fields is a YAML mapping: its values by key, and its keys in file order.
type fields struct {
	vals map[string]*yaml.Node
	keys []*yaml.Node
}

// get returns the value of key, nil when absent or null.
func (f fields) get(key string) *yaml.Node {
	n := f.vals[key]
	if n == nil || n.ShortTag() == "!!null" {
		return nil
	}
	return n
}

// mappingOf reads a mapping node; null reads as an empty mapping. Aliases
// are followed; merge keys (<<) are not supported and are refused as
// unknown fields.
func mappingOf(n *yaml.Node, where string) (fields, error) {
	n = deref(n)
	if n.ShortTag() == "!!null" {
		return fields{}, nil
	}
	if n.Kind != yaml.MappingNode {
		return fields{}, fmt.Errorf("%s: want a mapping of fields (line %d)", where, n.Line)
	}
	f := fields{vals: make(map[string]*yaml.Node, len(n.Content)/2)}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if k.Kind != yaml.ScalarNode {
			return fields{}, fmt.Errorf("%s: a field name is not a plain word (line %d)", where, k.Line)
		}
		if _, dup := f.vals[k.Value]; dup {
			return fields{}, fmt.Errorf("%s: %s: given twice (line %d)", where, fieldName(k.Value), k.Line)
		}
		f.vals[k.Value] = deref(n.Content[i+1])
		f.keys = append(f.keys, k)
	}
	return f, nil
}

func deref(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// unknown refuses a field not in known, so that a misspelt one
// (max_conections) is an error rather than a quota silently not applied.
// prefix names where the field is (`tenant "acme": limits.`).
func unknown(f fields, prefix string, known ...string) error {
	for _, k := range f.keys {
		if !slices.Contains(known, k.Value) {
			return fmt.Errorf("%s%s: unknown field (line %d); known here: %s", prefix, fieldName(k.Value), k.Line, strings.Join(known, ", "))
		}
	}
	return nil
}

// fieldName shows a field name as written when it is a plain word, quoted
// (and cut short) otherwise, so that the error stays one line.
func fieldName(s string) string {
	if rewrite.ValidTenantID(s) { // the same alphabet: letters, digits, _ and -
		return s
	}
	return fmt.Sprintf("%.40q", s)
}

// str reads a string field; "" when absent or null. A number or a boolean
// is taken as written.
func str(n *yaml.Node, who, field string) (string, error) {
	if n == nil {
		return "", nil
	}
	if n.Kind != yaml.ScalarNode {
		return "", fmt.Errorf("%s: %s: want a string (line %d)", who, field, n.Line)
	}
	return n.Value, nil
}

// oneLine turns a YAML syntax error into one line.
func oneLine(err error) error {
	return errors.New(strings.Join(strings.Fields(err.Error()), " "))
}
