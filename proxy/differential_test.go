package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/rewrite"
)

// The differential test runs testdata/differential.txt twice — in RESP2 and
// in RESP3 — on a direct connection to Redis (database diffDirectDB, the key
// names as the application sees them) and on a keyfence connection (tenant
// "diff", upstream database diffProxyDB), and requires byte-identical raw
// RESP replies.
//
// What is normalised, and why (nothing else is):
//   - KEYS and whole-set replies (~sorted): Redis lists keys and set members
//     in hash-table order; a key's hash changes once keyfence prefixes it, so
//     the order differs while the contents must not.
//   - SCAN (~scan): cursors are hash-table positions, so a whole iteration is
//     compared as a set of keys.
//   - TTL/PTTL (~approx): the two connections run the same command a few
//     microseconds apart.
//   - XINFO CONSUMERS (~typeonly): it reports idle times in milliseconds.
//   - HELLO's "id" field: the connection id is the proxy's own session id on
//     one side and Redis's client id on the other.
//
// Key names are NOT normalised: keyfence must strip its prefix from every
// reply, so a reply that still carries "tenant:diff:" is a failure.
// Excluded on purpose: MEMORY USAGE (counts the key name's bytes, which the
// prefix lengthens), OBJECT IDLETIME/FREQ, TIME, random picks (SRANDMEMBER
// with negative counts, SPOP without count larger than the set), COPY … DB
// and MOVE (other databases; MOVE is denied).
const (
	diffDirectDB = 9
	diffProxyDB  = 10
	diffTenant   = "diff"
)

type stepKind int

const (
	stepPlain stepKind = iota
	stepSorted
	stepApprox
	stepTypeOnly
	stepSave
	stepScan
	stepPipeline
	stepFunctionList // differential_functions_test.go
	stepDump
)

type step struct {
	line  int
	text  string
	kind  stepKind
	args  []string
	tol   int64  // stepApprox
	name  string // stepSave
	batch []step // stepPipeline
}

// splitWords splits a script line shell-style: blanks separate words,
// "double quotes" take \n \r \t \\ \" \xHH escapes, 'single quotes' none.
func splitWords(line string) ([]string, error) {
	var words []string
	i := 0
	for {
		for i < len(line) && (line[i] == ' ' || line[i] == '\t') {
			i++
		}
		if i == len(line) {
			return words, nil
		}
		var w strings.Builder
		switch line[i] {
		case '"':
			i++
			for {
				if i >= len(line) {
					return nil, fmt.Errorf("unbalanced double quote")
				}
				c := line[i]
				if c == '"' {
					i++
					break
				}
				if c == '\\' && i+1 < len(line) {
					switch e := line[i+1]; e {
					case 'n':
						w.WriteByte('\n')
					case 'r':
						w.WriteByte('\r')
					case 't':
						w.WriteByte('\t')
					case 'x':
						if i+3 >= len(line) {
							return nil, fmt.Errorf("short \\x escape")
						}
						v, err := strconv.ParseUint(line[i+2:i+4], 16, 8)
						if err != nil {
							return nil, fmt.Errorf("bad \\x escape: %v", err)
						}
						w.WriteByte(byte(v))
						i += 2
					default:
						w.WriteByte(e)
					}
					i += 2
					continue
				}
				w.WriteByte(c)
				i++
			}
		case '\'':
			i++
			end := strings.IndexByte(line[i:], '\'')
			if end < 0 {
				return nil, fmt.Errorf("unbalanced single quote")
			}
			w.WriteString(line[i : i+end])
			i += end + 1
		default:
			for i < len(line) && line[i] != ' ' && line[i] != '\t' {
				w.WriteByte(line[i])
				i++
			}
		}
		if i < len(line) && line[i] != ' ' && line[i] != '\t' {
			return nil, fmt.Errorf("closing quote followed by %q", line[i])
		}
		words = append(words, w.String())
	}
}

func loadScript(t *testing.T, path string) []step {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var steps []step
	var pipe *step
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		words, err := splitWords(line)
		if err != nil {
			t.Fatalf("%s:%d: %v", path, n, err)
		}
		st := step{line: n, text: line, args: words}
		if d := words[0]; strings.HasPrefix(d, "~") {
			st.args = words[1:]
			switch d {
			case "~sorted":
				st.kind = stepSorted
			case "~typeonly":
				st.kind = stepTypeOnly
			case "~approx":
				st.kind = stepApprox
				st.tol, err = strconv.ParseInt(words[1], 10, 64)
				if err != nil {
					t.Fatalf("%s:%d: ~approx: %v", path, n, err)
				}
				st.args = words[2:]
			case "~save":
				st.kind = stepSave
				st.name = words[1]
				st.args = words[2:]
			case "~scan":
				st.kind = stepScan
			case "~fnlist":
				st.kind = stepFunctionList
			case "~dump":
				st.kind = stepDump
				st.name = words[1]
				st.args = words[2:]
			case "~pipeline":
				if pipe != nil {
					t.Fatalf("%s:%d: nested ~pipeline", path, n)
				}
				steps = append(steps, step{line: n, text: line, kind: stepPipeline})
				pipe = &steps[len(steps)-1]
				continue
			case "~end":
				if pipe == nil {
					t.Fatalf("%s:%d: ~end without ~pipeline", path, n)
				}
				pipe = nil
				continue
			default:
				t.Fatalf("%s:%d: unknown directive %s", path, n, d)
			}
			if len(st.args) == 0 && st.kind != stepScan {
				t.Fatalf("%s:%d: directive without command", path, n)
			}
		}
		if pipe != nil {
			if st.kind != stepPlain {
				t.Fatalf("%s:%d: only plain commands inside ~pipeline", path, n)
			}
			pipe.batch = append(pipe.batch, st)
			continue
		}
		steps = append(steps, st)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if pipe != nil {
		t.Fatalf("%s: ~pipeline without ~end", path)
	}
	return steps
}

// side is one of the two connections the script runs on.
type side struct {
	name string
	c    *rawConn
	vars map[string]string
}

func (s *side) expand(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.HasPrefix(a, "${") && strings.HasSuffix(a, "}") {
			if v, ok := s.vars[a[2:len(a)-1]]; ok {
				a = v
			}
		}
		out[i] = a
	}
	return out
}

func (s *side) do(args []string) ([]byte, error) {
	r, err := s.c.doE(s.expand(args)...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.name, err)
	}
	return r, nil
}

// scanAllRaw runs a whole SCAN iteration with opts and returns the keys.
func (s *side) scanAllRaw(opts []string) ([]string, error) {
	cursor := "0"
	seen := map[string]bool{}
	for i := 0; i < 100000; i++ {
		r, err := s.do(append([]string{"SCAN", cursor}, opts...))
		if err != nil {
			return nil, err
		}
		v, err := parseRV(r)
		if err != nil || len(v.elems) != 2 {
			return nil, fmt.Errorf("%s: SCAN reply %s", s.name, quoteReply(r))
		}
		for _, k := range v.elems[1].strs() {
			seen[k] = true
		}
		cursor = v.elems[0].str
		if cursor == "0" {
			keys := make([]string, 0, len(seen))
			for k := range seen {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			return keys, nil
		}
	}
	return nil, fmt.Errorf("%s: SCAN did not finish", s.name)
}

// elements returns the raw bytes of each top-level element of an aggregate.
func elements(b []byte) (byte, [][]byte, bool) {
	if len(b) == 0 || !strings.ContainsRune("*~%>", rune(b[0])) {
		return 0, nil, false
	}
	end := bytes.Index(b, []byte("\r\n"))
	n, err := strconv.Atoi(string(b[1:end]))
	if err != nil || n < 0 {
		return 0, nil, false
	}
	if b[0] == '%' {
		n *= 2
	}
	pos := end + 2
	var out [][]byte
	for i := 0; i < n; i++ {
		_, m, err := decodeRV(b[pos:])
		if err != nil {
			return 0, nil, false
		}
		out = append(out, b[pos:pos+m])
		pos += m
	}
	return b[0], out, true
}

func sameSorted(a, b []byte) bool {
	ta, ea, ok1 := elements(a)
	tb, eb, ok2 := elements(b)
	if !ok1 || !ok2 {
		return bytes.Equal(a, b)
	}
	if ta != tb || len(ea) != len(eb) {
		return false
	}
	sa := make([]string, len(ea))
	sb := make([]string, len(eb))
	for i := range ea {
		sa[i], sb[i] = string(ea[i]), string(eb[i])
	}
	sort.Strings(sa)
	sort.Strings(sb)
	return strings.Join(sa, "\x00") == strings.Join(sb, "\x00")
}

func sameApprox(a, b []byte, tol int64) bool {
	if len(a) == 0 || len(b) == 0 || a[0] != ':' || b[0] != ':' {
		return bytes.Equal(a, b)
	}
	x, err1 := strconv.ParseInt(string(bytes.TrimSpace(a[1:])), 10, 64)
	y, err2 := strconv.ParseInt(string(bytes.TrimSpace(b[1:])), 10, 64)
	if err1 != nil || err2 != nil {
		return false
	}
	if x < 0 || y < 0 {
		return x == y
	}
	d := x - y
	return d <= tol && -d <= tol
}

// differ runs steps on both sides and reports every difference.
type differ struct {
	t        *testing.T
	direct   *side
	proxy    *side
	compared int
	failures int
}

// saveBulks keeps each side's bulk reply (a for direct, b for the proxy)
// as the step's variable; directive names it for the error.
func (d *differ) saveBulks(st step, directive string, a, b []byte) {
	for _, sd := range []struct {
		s *side
		r []byte
	}{{d.direct, a}, {d.proxy, b}} {
		v, err := parseRV(sd.r)
		if err != nil || v.typ != '$' || v.null {
			d.t.Fatalf("line %d: %s needs a bulk reply, %s got %s", st.line, directive, sd.s.name, quoteReply(sd.r))
		}
		sd.s.vars[st.name] = v.str
	}
}

func (d *differ) mismatch(st step, cmd string, direct, proxied []byte) {
	d.failures++
	if d.failures > 25 {
		if d.failures == 26 {
			d.t.Errorf("more mismatches follow; stopping the report")
		}
		return
	}
	d.t.Errorf("line %d: %s\n  direct: %s\n  proxy:  %s", st.line, cmd, quoteReply(direct), quoteReply(proxied))
}

func (d *differ) run(steps []step) {
	for _, st := range steps {
		if d.failures > 25 {
			d.t.Fatalf("too many mismatches")
		}
		start := time.Now()
		d.runStep(st)
		if el := time.Since(start); el > 300*time.Millisecond {
			d.t.Logf("line %d took %v: %s", st.line, el, st.text)
		}
	}
}

func (d *differ) runStep(st step) {
	t := d.t
	switch st.kind {
	case stepScan:
		a, err := d.direct.scanAllRaw(st.args)
		if err != nil {
			t.Fatalf("line %d: %v", st.line, err)
		}
		b, err := d.proxy.scanAllRaw(st.args)
		if err != nil {
			t.Fatalf("line %d: %v", st.line, err)
		}
		d.compared++
		if strings.Join(a, "\x00") != strings.Join(b, "\x00") {
			d.mismatch(st, st.text, []byte(fmt.Sprintf("%q", a)), []byte(fmt.Sprintf("%q", b)))
		}
		return
	case stepPipeline:
		var reqA, reqB []byte
		for _, c := range st.batch {
			reqA = encode(reqA, d.direct.expand(c.args)...)
			reqB = encode(reqB, d.proxy.expand(c.args)...)
		}
		if err := d.direct.c.writeE(reqA); err != nil {
			t.Fatalf("line %d: direct: %v", st.line, err)
		}
		if err := d.proxy.c.writeE(reqB); err != nil {
			t.Fatalf("line %d: proxy: %v", st.line, err)
		}
		for _, c := range st.batch {
			a, err := d.direct.c.readE()
			if err != nil {
				t.Fatalf("line %d: direct: %v", c.line, err)
			}
			b, err := d.proxy.c.readE()
			if err != nil {
				t.Fatalf("line %d: proxy: %v", c.line, err)
			}
			d.compared++
			if !bytes.Equal(a, b) {
				d.mismatch(c, "(pipelined) "+c.text, a, b)
			}
		}
		return
	}
	a, err := d.direct.do(st.args)
	if err != nil {
		t.Fatalf("line %d: %s: %v", st.line, st.text, err)
	}
	b, err := d.proxy.do(st.args)
	if err != nil {
		t.Fatalf("line %d: %s: %v", st.line, st.text, err)
	}
	d.compared++
	same := false
	switch st.kind {
	case stepSorted:
		same = sameSorted(a, b)
	case stepApprox:
		same = sameApprox(a, b, st.tol)
	case stepTypeOnly:
		same = a[0] == b[0]
	case stepFunctionList:
		same = sameFunctionList(a, b)
	case stepDump:
		d.saveBulks(st, "~dump", a, b)
		same = sameDump(d.direct.vars[st.name], d.proxy.vars[st.name])
	case stepSave:
		same = bytes.Equal(a, b)
		d.saveBulks(st, "~save", a, b)
	default:
		same = bytes.Equal(a, b)
	}
	if !same {
		d.mismatch(st, st.text, a, b)
	}
}

// compareHello checks HELLO's replies, which may differ only in "id".
func compareHello(t *testing.T, direct, proxied []byte) {
	t.Helper()
	dv, pv := mustRV(t, direct), mustRV(t, proxied)
	if dv.typ != pv.typ || len(dv.elems) != len(pv.elems) {
		t.Fatalf("HELLO 3 shape differs:\n  direct: %s\n  proxy:  %s", quoteReply(direct), quoteReply(proxied))
	}
	for i := 0; i+1 < len(dv.elems); i += 2 {
		k := dv.elems[i].str
		if pv.elems[i].str != k {
			t.Errorf("HELLO 3 field %d: direct %q, proxy %q", i/2, k, pv.elems[i].str)
			continue
		}
		if k == "id" {
			continue
		}
		if fmt.Sprint(dv.elems[i+1]) != fmt.Sprint(pv.elems[i+1]) {
			t.Errorf("HELLO 3 %q: direct %v, proxy %v", k, dv.elems[i+1], pv.elems[i+1])
		}
	}
}

func TestDifferential(t *testing.T) {
	t.Parallel()
	total := runDifferential(t, "testdata/differential.txt", diffTenant, diffDirectDB, diffProxyDB)
	if !t.Failed() {
		t.Logf("differential: %d commands, all identical", total)
	}
}

// TestDifferentialErrorWording compares Redis's error wording in corner
// cases (long unknown commands, numkeys past the end of the arguments).
func TestDifferentialErrorWording(t *testing.T) {
	t.Parallel()
	total := runDifferential(t, "testdata/differential_errors.txt", "differr", 13, 14)
	if !t.Failed() {
		t.Logf("differential (errors): %d commands, all identical", total)
	}
}

// TestDifferentialScripts runs Lua scripts directly and through keyfence's
// sandbox: results, Redis's error texts with the client's line numbers and
// SHA1s, globals protection, shebang flags, EVAL_RO, scripts in MULTI.
func TestDifferentialScripts(t *testing.T) {
	t.Parallel()
	total := runDifferential(t, "testdata/differential_scripts.txt", "diffscripts", 11, 12)
	if !t.Failed() {
		t.Logf("differential (scripts): %d commands, all identical", total)
	}
}

// runDifferential runs script in RESP2 and then RESP3 on a direct
// connection (database directDB) and through keyfence (tenant, upstream
// database proxyDB), and returns how many replies it compared.
func runDifferential(t *testing.T, script, tenant string, directDB, proxyDB int) int {
	up := testRedis(t)
	return runDifferentialOn(t, script, tenant, up, directDB, up, proxyDB)
}

// runDifferentialOn runs script in RESP2 and then RESP3 on a direct
// connection (directUp, database directDB) and through keyfence (tenant,
// upstream proxyUp, database proxyDB), and returns how many replies it
// compared.
func runDifferentialOn(t *testing.T, script, tenant string, directUp *redistest.Server, directDB int, proxyUp *redistest.Server, proxyDB int) int {
	steps := loadScript(t, script)
	addr := startProxy(t, proxyUp, func(c *Config) {
		c.Tenant = tenant
		c.Upstream.DB = proxyDB
	})
	total := 0
	for _, resp3 := range []bool{false, true} {
		name := "RESP2"
		if resp3 {
			name = "RESP3"
		}
		t.Run(name, func(t *testing.T) {
			direct := &side{name: "direct", c: dialRaw(t, directUp.Addr()), vars: map[string]string{}}
			proxied := &side{name: "proxy", c: dialRaw(t, addr), vars: map[string]string{}}
			if r := direct.c.do(t, "SELECT", strconv.Itoa(directDB)); string(r) != "+OK\r\n" {
				t.Fatalf("SELECT: %s", quoteReply(r))
			}
			if resp3 {
				compareHello(t, direct.c.do(t, "HELLO", "3"), proxied.c.do(t, "HELLO", "3"))
			}
			d := &differ{t: t, direct: direct, proxy: proxied}
			d.run(steps)
			if d.failures == 0 {
				t.Logf("differential %s (%s): %d commands, all identical", script, name, d.compared)
			} else {
				t.Errorf("differential %s (%s): %d commands, %d differ", script, name, d.compared, d.failures)
			}
			total += d.compared
			checkMirroredKeyspaceOn(t, tenant, directUp, directDB, proxyUp, proxyDB)
		})
	}
	return total
}

// checkMirroredKeyspaceOn checks that what the script left upstream is the
// same key set in both databases (each on its own server, or the same one),
// the proxied one under the tenant prefix and nothing else. keyfence's store
// of the tenant's functions is its own key, not the tenant's.
func checkMirroredKeyspaceOn(t *testing.T, tenant string, directUp *redistest.Server, directNum int, proxyUp *redistest.Server, proxyNum int) {
	t.Helper()
	ctx := testCtx(t)
	direct := scanAll(ctx, t, directDB(t, directUp, directNum))
	proxied := scanAll(ctx, t, directDB(t, proxyUp, proxyNum))
	prefix := "tenant:" + tenant + ":"
	var stripped []string
	for _, k := range proxied {
		if k == rewrite.FunctionStoreKey(prefix) {
			continue
		}
		if !strings.HasPrefix(k, prefix) {
			t.Errorf("upstream db %d holds %q, outside tenant %s", proxyNum, k, tenant)
			continue
		}
		stripped = append(stripped, strings.TrimPrefix(k, prefix))
	}
	if a, b := sortedStrs(direct), sortedStrs(stripped); strings.Join(a, "\x00") != strings.Join(b, "\x00") {
		t.Errorf("key sets differ after the script:\n  direct db %d: %q\n  proxied db %d: %q", directNum, a, proxyNum, b)
	}
	if len(direct) == 0 {
		t.Errorf("the script left no keys to compare")
	}
}
