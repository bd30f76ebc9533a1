package luasrc

import (
	"go/ast"
	goparser "go/parser"
	gotoken "go/token"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// bullmqScripts returns every BullMQ script (testdata/bullmq, see its
// README), by file name.
func bullmqScripts(t testing.TB) map[string][]byte {
	t.Helper()
	files, err := filepath.Glob("testdata/bullmq/*.lua")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 60 {
		t.Fatalf("found %d BullMQ scripts in testdata/bullmq, want all 64", len(files))
	}
	scripts := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		scripts[filepath.Base(f)] = b
	}
	return scripts
}

// asynqScripts returns the Lua of every redis.NewScript(`…`) in the asynq
// module this repository depends on (go.mod), read from its source.
func asynqScripts(t testing.TB) map[string][]byte {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/hibiken/asynq").Output()
	dir := strings.TrimSpace(string(out))
	if err != nil || dir == "" {
		t.Fatalf("locating the asynq module (run `go mod download`): %v", err)
	}
	scripts := map[string][]byte{}
	fset := gotoken.NewFileSet()
	for _, name := range []string{"rdb.go", "inspect.go"} {
		path := filepath.Join(dir, "internal", "rdb", name)
		f, err := goparser.ParseFile(fset, path, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) != 1 {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || sel.Sel.Name != "NewScript" {
				return true
			}
			lit, ok := call.Args[0].(*ast.BasicLit)
			if !ok {
				t.Fatalf("%s: NewScript with a non-literal argument", fset.Position(call.Pos()))
			}
			src, err := strconv.Unquote(lit.Value)
			if err != nil {
				t.Fatal(err)
			}
			scripts[fset.Position(call.Pos()).String()] = []byte(src)
			return true
		})
	}
	if len(scripts) < 45 {
		t.Fatalf("found %d asynq scripts, want the 49 of v0.26.0", len(scripts))
	}
	return scripts
}

// TestRealScripts: every BullMQ and asynq script transforms, keeps its lines,
// and reaches nothing but the sandbox; the names we find free are exactly
// the globals Redis's own Lua compiles them to; and the transformed text,
// with keyfence's prelude, compiles upstream without a single global access.
func TestRealScripts(t *testing.T) {
	ctx, c := startRedis(t)
	for set, scripts := range map[string]map[string][]byte{"bullmq": bullmqScripts(t), "asynq": asynqScripts(t)} {
		for name, src := range scripts {
			t.Run(set+"/"+name, func(t *testing.T) {
				lua := luaCompile(t, ctx, c, src)
				if !lua.ok {
					t.Fatalf("does not compile upstream: %s", lua.err)
				}
				checkAgainstLua(t, ctx, c, name, src, lua)
			})
		}
	}
}

func BenchmarkTransformBullMQ(b *testing.B) {
	var name string
	var src []byte
	for n, s := range bullmqScripts(b) {
		if len(s) > len(src) {
			name, src = n, s
		}
	}
	b.Logf("%s: %d bytes", name, len(src))
	b.SetBytes(int64(len(src)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Transform(src, sandbox); err != nil {
			b.Fatal(err)
		}
	}
}
