package rewrite

import "testing"

func TestGlobMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, s string
		want       bool
	}{
		{"*", "", true},
		{"*", "anything", true},
		{"news.*", "news.today", true},
		{"news.*", "news", false},
		{"n?ws", "news", true},
		{"n?ws", "nws", false},
		{"h[ae]llo", "hallo", true},
		{"h[ae]llo", "hillo", false},
		{"h[^e]llo", "hallo", true},
		{"h[^e]llo", "hello", false},
		{"h[a-b]llo", "hbllo", true},
		{"h[b-a]llo", "hallo", true},
		{"h[a-b]llo", "hcllo", false},
		{`h\*llo`, "h*llo", true},
		{`h\*llo`, "hello", false},
		{`h[\]]llo`, "h]llo", true},
		{"a*b*c", "aXbYc", true},
		{"a*b*c", "aXbY", false},
		{"*a*a*a*a*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false},
		{"__keyspace@*__:*", "__keyspace@0__:k", true},
		{"h[", "h", false},
		{"abc", "abcd", false},
		{"", "", true},
	} {
		if got := GlobMatch([]byte(tc.pattern), []byte(tc.s)); got != tc.want {
			t.Errorf("GlobMatch(%q, %q) = %v, want %v", tc.pattern, tc.s, got, tc.want)
		}
	}
}

func FuzzGlobMatch(f *testing.F) {
	f.Add("news.*", "news.today")
	f.Add("h[^a-c]llo", "hdllo")
	f.Add(`a\*[`, "a*")
	f.Fuzz(func(t *testing.T, pattern, s string) {
		GlobMatch([]byte(pattern), []byte(s)) // must not panic or hang
		if !GlobMatch([]byte(GlobEscape(s)), []byte(s)) {
			t.Fatalf("an escaped string %q does not match itself", s)
		}
	})
}
