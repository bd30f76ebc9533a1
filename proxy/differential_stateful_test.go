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
)

// TestDifferentialStateful runs testdata/differential_stateful.txt: several
// named clients driven in lockstep, once all connected straight to a
// redis-server and once all connected to keyfence (in front of a second
// redis-server, so that neither side's subscribers or blocked clients can
// see the other's). Every reply read must be byte-identical. This is where
// behaviour that needs more than one connection is compared: PUBLISH counts
// with pattern subscribers, blocked commands woken or failed by another
// client, WATCH broken by another client, transactions, CLIENT REPLY.
//
// Line syntax (words as in differential.txt):
//
//	a: CMD …        client a sends CMD and reads one reply
//	a*N: CMD …      … and reads N replies (SUBSCRIBE of N channels)
//	a>: CMD …       … sends only (a blocking command, CLIENT REPLY OFF)
//	a<  a<N         client a reads one, or N, replies
//	a<N~            … N replies compared as a multiset: Redis sends one
//	                client's pmessages for several patterns in hash order
//	~blocked N      wait until N clients are blocked on each server
//	~resp3          every client of the run below says HELLO 3 first
//
// Both sides use database 9 of their own server.
func TestDifferentialStateful(t *testing.T) {
	t.Parallel()
	steps := loadStateful(t, "testdata/differential_stateful.txt")
	for _, resp3 := range []bool{false, true} {
		name := "RESP2"
		if resp3 {
			name = "RESP3"
		}
		t.Run(name, func(t *testing.T) {
			direct := redistest.StartT(t, redistest.Options{})
			behind := redistest.StartT(t, redistest.Options{})
			addr := startProxy(t, behind, func(c *Config) {
				c.Tenant = "stateful"
				c.Upstream.DB = 9
			})
			d := &lockstep{t: t, resp3: resp3,
				direct: statefulSide{name: "direct", addr: direct.Addr(), server: direct, selectDB: true, conns: map[string]*rawConn{}},
				proxy:  statefulSide{name: "proxy", addr: addr, server: behind, conns: map[string]*rawConn{}},
			}
			for _, st := range steps {
				d.step(st)
				if t.Failed() && d.failures > 20 {
					t.Fatalf("too many mismatches")
				}
			}
			if d.failures == 0 {
				t.Logf("stateful differential (%s): %d replies, all identical", name, d.compared)
			}
		})
	}
}

type statefulStep struct {
	line    int
	text    string
	client  string
	send    []string // nil: read only
	replies int
	sorted  bool
	blocked int // ~blocked N: -1 otherwise
}

func loadStateful(t *testing.T, path string) []statefulStep {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var steps []statefulStep
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		st := statefulStep{line: n, text: line, replies: 1, blocked: -1}
		if rest, ok := strings.CutPrefix(line, "~blocked "); ok {
			st.blocked, err = strconv.Atoi(strings.TrimSpace(rest))
			if err != nil {
				t.Fatalf("%s:%d: %v", path, n, err)
			}
			steps = append(steps, st)
			continue
		}
		head, cmd, hasCmd := strings.Cut(line, ": ")
		if !hasCmd {
			head = line
		}
		i := 0
		for i < len(head) && (head[i] >= 'a' && head[i] <= 'z' || head[i] >= '0' && head[i] <= '9') {
			i++
		}
		st.client, head = head[:i], head[i:]
		if st.client == "" {
			t.Fatalf("%s:%d: no client name", path, n)
		}
		switch {
		case head == "" && hasCmd:
		case strings.HasPrefix(head, "*") && hasCmd:
			st.replies, err = strconv.Atoi(head[1:])
		case head == ">" && hasCmd:
			st.replies = 0
		case strings.HasPrefix(head, "<") && !hasCmd:
			head = head[1:]
			st.sorted = strings.HasSuffix(head, "~")
			head = strings.TrimSuffix(head, "~")
			if head != "" {
				st.replies, err = strconv.Atoi(head)
			}
		default:
			t.Fatalf("%s:%d: cannot read %q", path, n, line)
		}
		if err != nil {
			t.Fatalf("%s:%d: %v", path, n, err)
		}
		if hasCmd {
			st.send, err = splitWords(cmd)
			if err != nil || len(st.send) == 0 {
				t.Fatalf("%s:%d: %v", path, n, err)
			}
		}
		steps = append(steps, st)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return steps
}

type statefulSide struct {
	name     string
	addr     string
	server   *redistest.Server
	selectDB bool
	conns    map[string]*rawConn
}

type lockstep struct {
	t        *testing.T
	resp3    bool
	direct   statefulSide
	proxy    statefulSide
	compared int
	failures int
}

// conn returns the side's connection of client name, opening it (HELLO 3,
// SELECT 9 on the direct side) on first use.
func (d *lockstep) conn(sd *statefulSide, name string) *rawConn {
	if c := sd.conns[name]; c != nil {
		return c
	}
	c := dialRaw(d.t, sd.addr)
	if d.resp3 {
		if r := c.do(d.t, "HELLO", "3"); r[0] != '%' {
			d.t.Fatalf("%s: HELLO 3: %s", sd.name, quoteReply(r))
		}
	}
	if sd.selectDB {
		if r := c.do(d.t, "SELECT", "9"); string(r) != "+OK\r\n" {
			d.t.Fatalf("%s: SELECT: %s", sd.name, quoteReply(r))
		}
	}
	sd.conns[name] = c
	return c
}

func (d *lockstep) step(st statefulStep) {
	t := d.t
	if st.blocked >= 0 {
		for _, sd := range []*statefulSide{&d.direct, &d.proxy} {
			if !waitFor(10*time.Second, func() bool { return blockedClients(t, sd.server) == st.blocked }) {
				t.Fatalf("line %d: %s: %d clients blocked, want %d", st.line, sd.name, blockedClients(t, sd.server), st.blocked)
			}
		}
		return
	}
	var got [2][][]byte
	for i, sd := range []*statefulSide{&d.direct, &d.proxy} {
		c := d.conn(sd, st.client)
		if st.send != nil {
			if err := c.writeE(encode(nil, st.send...)); err != nil {
				t.Fatalf("line %d: %s: %v", st.line, sd.name, err)
			}
		}
		for k := 0; k < st.replies; k++ {
			r, err := c.readE()
			if err != nil {
				t.Fatalf("line %d: %s: %s: reply %d: %v", st.line, sd.name, st.text, k+1, err)
			}
			got[i] = append(got[i], r)
		}
	}
	if st.sorted {
		for i := range got {
			sort.Slice(got[i], func(a, b int) bool { return bytes.Compare(got[i][a], got[i][b]) < 0 })
		}
	}
	for k := range got[0] {
		d.compared++
		if !bytes.Equal(got[0][k], got[1][k]) {
			d.failures++
			t.Errorf("line %d: %s (reply %d)\n  direct: %s\n  proxy:  %s", st.line, st.text, k+1, quoteReply(got[0][k]), quoteReply(got[1][k]))
		}
	}
}

// blockedClients reads blocked_clients from a server's INFO, on a
// connection of its own (go-redis's would leave errors in INFO errorstats
// with its CLIENT SETINFO, which Redis 7.0 does not know).
func blockedClients(t *testing.T, srv *redistest.Server) int {
	t.Helper()
	c, err := dialRawE(srv.Addr())
	if err != nil {
		t.Fatalf("dial %s: %v", srv.Addr(), err)
	}
	defer c.nc.Close()
	r, err := c.doE("INFO", "clients")
	if err != nil {
		t.Fatalf("INFO clients: %v", err)
	}
	info := mustRV(t, r).str
	v, ok := infoField(info, "blocked_clients")
	if !ok {
		t.Fatalf("INFO clients has no blocked_clients: %q", info)
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatal(fmt.Errorf("blocked_clients %q: %w", v, err))
	}
	return n
}
