package resp

import (
	"bytes"
	"os"
	"testing"
)

// The committed seeds are in testdata/fuzz/<FuzzName>/ and run as unit
// tests with `go test`. To fuzz:
//
//	go test -run '^$' -fuzz '^FuzzParseCommand$' -fuzztime 60s ./resp/
//
// With REWRITE_FUZZ_MASK_KNOWN=1 the checks that known, unfixed bugs trip are
// skipped, so the fuzzer can look past them; each masked check names its test.
var maskKnown = os.Getenv("REWRITE_FUZZ_MASK_KNOWN") != ""

func FuzzParseCommand(f *testing.F) {
	limits := []Limits{DefaultLimits, {MaxRequestBytes: 64, MaxArgs: 4}}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, lim := range limits {
			// Inline parsing rewrites the buffer in place: parse copies.
			args, n, need, err := ParseCommand(bytes.Clone(data), nil, lim)
			switch {
			case n < 0 || n > len(data):
				t.Fatalf("n=%d outside [0, %d]", n, len(data))
			case err != nil:
				if n != 0 {
					t.Fatalf("error %v with n=%d", err, n)
				}
				continue
			case n == 0:
				if need <= len(data) {
					t.Fatalf("incomplete but need=%d <= len %d", need, len(data))
				}
				continue
			}
			if need != 0 {
				t.Fatalf("complete (n=%d) with need=%d", n, need)
			}
			if len(args) > lim.MaxArgs {
				t.Fatalf("%d args > MaxArgs %d", len(args), lim.MaxArgs)
			}
			// A request holds at most MaxRequestBytes (the final CRLF aside).
			if n > lim.MaxRequestBytes+2 && !(maskKnown && data[0] != '*') { // TestParseCommandInlineObeysLimits
				t.Fatalf("a request of %d bytes passed MaxRequestBytes %d", n, lim.MaxRequestBytes)
			}
			got := toStrings(args)

			// Re-encoded as multibulk, the arguments parse back identically.
			enc := AppendArrayHeader(nil, len(args))
			for _, a := range args {
				enc = AppendBulk(enc, a)
			}
			back, bn, _, berr := ParseCommand(enc, nil, DefaultLimits)
			if berr != nil || bn != len(enc) || !sameArgs(toStrings(back), got) {
				t.Fatalf("re-encoded %q parses to %q, n=%d, err=%v; want %q", enc, toStrings(back), bn, berr, got)
			}

			// The consumed bytes alone give the same request.
			again, an, _, aerr := ParseCommand(bytes.Clone(data[:n]), nil, lim)
			if aerr != nil || an != n || !sameArgs(toStrings(again), got) {
				t.Fatalf("data[:n] parses to %q, n=%d, err=%v; want %q, n=%d", toStrings(again), an, aerr, got, n)
			}

			// Every proper prefix is incomplete, with a need hint past it.
			// (All of them for short requests; a spread of them otherwise.)
			step := 1 + n/64
			for k := 0; k < n; k += step {
				_, pn, pneed, perr := ParseCommand(bytes.Clone(data[:k]), nil, lim)
				if pn != 0 || perr != nil || pneed <= k || pneed > n {
					t.Fatalf("prefix of %d/%d bytes: n=%d need=%d err=%v", k, n, pn, pneed, perr)
				}
			}
		}
	})
}

func FuzzReplyLen(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := ReplyLen(data)
		if n < 0 || n > len(data) {
			t.Fatalf("ReplyLen = %d, %v for %d bytes", n, err, len(data))
		}
		if err != nil {
			if n != 0 {
				t.Fatalf("error %v with n=%d", err, n)
			}
			return
		}
		if n == 0 {
			return
		}
		if m, err := ReplyLen(data[:n]); m != n || err != nil {
			t.Fatalf("ReplyLen(data[:n]) = %d, %v; want %d", m, err, n)
		}
		twice := append(bytes.Clone(data[:n]), data[:n]...)
		m1, err1 := ReplyLen(twice)
		m2, err2 := ReplyLen(twice[m1:])
		if m1 != n || m2 != n || err1 != nil || err2 != nil {
			t.Fatalf("the reply twice: %d+%d (%v, %v); want %d+%d", m1, m2, err1, err2, n, n)
		}
		if n <= 512 {
			for k := 0; k < n; k++ {
				if m, err := ReplyLen(data[:k]); m != 0 || err != nil {
					t.Fatalf("prefix of %d/%d bytes: %d, %v; want incomplete", k, n, m, err)
				}
			}
		}
	})
}

func toStrings(bs [][]byte) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = string(b)
	}
	return out
}
