package proxy

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/rewrite"
)

// bullmqScript reads one of BullMQ's Lua scripts from the Node packages of
// test/node (`make test` installs them).
func bullmqScript(tb testing.TB, name string) string {
	tb.Helper()
	path := filepath.Join("..", "test", "node", "node_modules", "bullmq", "dist", "cjs", "scripts", name+".js")
	js, err := os.ReadFile(path)
	if err != nil {
		tb.Fatalf("BullMQ's scripts come with test/node's packages (make test, or npm ci in test/node): %v", err)
	}
	s := string(js)
	i := strings.Index(s, "const content = `")
	j := strings.LastIndex(s, "`;")
	if i < 0 || j < i {
		tb.Fatalf("%s: no script content found", path)
	}
	return s[i+len("const content = `") : j]
}

// BenchmarkScriptBullMQ runs BullMQ scripts by EVALSHA directly on Redis and
// through keyfence's sandbox, one at a time on one connection, so that the
// difference is the sandbox's cost per run: moveToFinished (BullMQ's
// largest script, 36 KB, on a job that does not exist: the whole chunk runs
// its setup and returns early) and getState (eight keys looked up).
//
//	go test -run '^$' -bench ScriptBullMQ -benchtime 20000x ./proxy/
func BenchmarkScriptBullMQ(b *testing.B) {
	up := redistest.StartT(b, redistest.Options{})
	kf := startProxy(b, up, func(c *Config) { c.Tenant = "bench" })
	cases := []struct {
		name string
		keys []string
		argv []string
	}{
		{"moveToFinished-14", []string{"wait", "active", "prioritized", "events", "stalled", "limiter", "delayed", "paused", "meta", "pc", "completed", "nosuchjob", "metrics", "marker"},
			[]string{"nosuchjob", "1700000000000", "returnvalue", "{}", "completed", "0", "bull:q:", "\x80", ""}},
		{"getState-8", []string{"completed", "failed", "delayed", "active", "wait", "paused", "waiting-children", "prioritized"},
			[]string{"job1"}},
	}
	for _, tc := range cases {
		script := bullmqScript(b, tc.name)
		sha := rewrite.ScriptSHA([]byte(script))
		for _, target := range []struct{ name, addr string }{{"direct", up.Addr()}, {"keyfence", kf}} {
			b.Run(tc.name+"/"+target.name, func(b *testing.B) {
				c := dialRaw(b, target.addr)
				if r := c.do(b, "SCRIPT", "LOAD", script); !strings.Contains(string(r), sha) {
					b.Fatalf("SCRIPT LOAD: %s", r)
				}
				args := append([]string{"EVALSHA", sha, strconv.Itoa(len(tc.keys))}, tc.keys...)
				args = append(args, tc.argv...)
				req := encode(nil, args...)
				first := ""
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					c.write(b, req)
					r := c.read(b)
					if first == "" {
						first = string(r)
						if strings.HasPrefix(first, "-") {
							b.Fatalf("EVALSHA %s: %s", tc.name, r)
						}
					}
				}
				b.ReportMetric(float64(len(script)), "script-bytes")
			})
		}
	}
}
