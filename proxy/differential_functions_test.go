package proxy

import (
	"bytes"
	"context"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/rewrite"
)

// TestDifferentialFunctions runs testdata/differential_functions.txt on a
// Redis of its own (functions are server-wide: the direct side's FUNCTION
// FLUSH would take keyfence's sandbox library, and its FUNCTION LIST would
// show it) and through keyfence on the package's server, and requires
// byte-identical replies. Normalised, and why (nothing else is):
//   - ~fnlist (FUNCTION LIST): Redis lists libraries, and the functions of
//     each, in hash-table order (seeded at random per server); keyfence by
//     name. Each library's reply must be the same bytes.
//   - ~dump (FUNCTION DUMP): Redis compresses code that LZF shrinks and
//     orders libraries by hash table; keyfence writes code uncompressed,
//     by name. The payloads must hold the same libraries, and each side's
//     is RESTOREd on its own side afterwards (the round trip).
func TestDifferentialFunctions(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	direct, err := redistest.Start(ctx, redistest.Options{})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = direct.Stop() })
	total := runDifferentialOn(t, "testdata/differential_functions.txt", "difffn", direct, 0, testRedis(t), 8)
	if !t.Failed() {
		t.Logf("differential (functions): %d commands, all identical", total)
	}
}

// sameFunctionList compares two FUNCTION LIST replies as sets of libraries,
// each with its functions as a set.
func sameFunctionList(a, b []byte) bool {
	ca, ok1 := canonFunctionList(a)
	cb, ok2 := canonFunctionList(b)
	if !ok1 || !ok2 {
		return bytes.Equal(a, b)
	}
	return ca == cb
}

// canonFunctionList is a FUNCTION LIST reply with its libraries, and each
// library's functions, in sorted order.
func canonFunctionList(r []byte) (string, bool) {
	_, libs, ok := elements(r)
	if !ok {
		return "", false
	}
	canon := make([]string, len(libs))
	for i, lib := range libs {
		_, kv, ok := elements(lib)
		if !ok {
			return "", false
		}
		var b strings.Builder
		b.Write(header(lib))
		for j, e := range kv {
			if j%2 == 1 && string(kv[j-1]) == "$9\r\nfunctions\r\n" {
				_, fns, ok := elements(e)
				if !ok {
					return "", false
				}
				strs := make([]string, len(fns))
				for k, f := range fns {
					strs[k] = string(f)
				}
				sort.Strings(strs)
				b.Write(header(e))
				b.WriteString(strings.Join(strs, ""))
				continue
			}
			b.Write(e)
		}
		canon[i] = b.String()
	}
	sort.Strings(canon)
	return string(header(r)) + strings.Join(canon, ""), true
}

// header is the first line of an aggregate reply.
func header(r []byte) []byte {
	return r[:bytes.Index(r, []byte("\r\n"))+2]
}

// sameDump compares two FUNCTION DUMP payloads by the libraries they hold.
func sameDump(a, b string) bool {
	ca, err1 := rewrite.ParseFunctionDump([]byte(a))
	cb, err2 := rewrite.ParseFunctionDump([]byte(b))
	if err1 != nil || err2 != nil || len(ca) != len(cb) {
		return false
	}
	sa, sb := make([]string, len(ca)), make([]string, len(cb))
	for i := range ca {
		sa[i], sb[i] = string(ca[i]), string(cb[i])
	}
	sort.Strings(sa)
	sort.Strings(sb)
	return strings.Join(sa, "\x00") == strings.Join(sb, "\x00")
}
