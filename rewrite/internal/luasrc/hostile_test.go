package luasrc

import (
	"runtime"
	"strings"
	"testing"
)

// hostileScripts are large scripts built to make the parser work hard: many
// nested functions full of locals (name resolution), a free name every few
// bytes (edits, output growth), deep constructors.
var hostileScripts = map[string]string{
	"nested scopes": strings.Repeat("local function f() local "+strings.Repeat("a, ", 180)+"a\n", 150) +
		strings.Repeat("x()\n", 200000) + strings.Repeat("end\n", 150),
	"a free name every 2 bytes": strings.Repeat("x=x ", 250000),
	"many tables":               "return {" + strings.Repeat("{},", 300000) + "}",
	"upvalues from far out": "local a " + strings.Repeat("local function f() ", 190) +
		strings.Repeat("a() ", 100000) + strings.Repeat("end ", 190),
}

// TestHostileScriptMemory bounds what one Transform allocates, in total, for
// scripts of about 1 MB built to be expensive; the output itself can be ~6x
// the input (a one-letter global becomes "__kf_E.__kf_W.x").
func TestHostileScriptMemory(t *testing.T) {
	for name, src := range hostileScripts {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		out, err := Transform([]byte(src), sandbox)
		runtime.ReadMemStats(&after)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		alloc := after.TotalAlloc - before.TotalAlloc
		limit := uint64(12 * (len(src) + len(out)))
		t.Logf("%s: %d bytes in, %d out, %d allocated", name, len(src), len(out), alloc)
		if alloc > limit {
			t.Errorf("%s: Transform allocated %d bytes for %d in and %d out, want at most %d", name, alloc, len(src), len(out), limit)
		}
	}
}

// BenchmarkTransformHostile: before name resolution went through one map,
// "nested scopes" took over a minute (lparser.c's linear search per function).
func BenchmarkTransformHostile(b *testing.B) {
	for name, src := range hostileScripts {
		b.Run(strings.ReplaceAll(name, " ", "_"), func(b *testing.B) {
			b.SetBytes(int64(len(src)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Transform([]byte(src), sandbox); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
