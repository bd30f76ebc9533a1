package rewrite

import (
	"bytes"
	"strings"
	"testing"

	"github.com/keyfence/keyfence/resp"
)

// The committed seeds are in testdata/fuzz/<FuzzName>/ and run as unit
// tests with `go test`. To fuzz:
//
//	go test -run '^$' -fuzz '^FuzzRewrite$' -fuzztime 60s ./rewrite/
func FuzzStrip(f *testing.F) {
	r := NewRewriter(P)
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := resp.ReplyLen(data)
		complete := err == nil && n > 0 && n == len(data)
		for _, k := range allKinds {
			out := r.AppendReply([]byte("prev"), data, k)
			if !bytes.HasPrefix(out, []byte("prev")) {
				t.Fatalf("%s: dst's previous content lost", kindName(k))
			}
			out = out[4:]
			// Pub/sub messages on a channel that is not the tenant's (a
			// keyevent about another tenant's key, a malformed channel)
			// are dropped: nothing is appended.
			dropped := k == ReplyChannelMsg && len(out) == 0
			if !bytes.Contains(data, r.KeyPrefix()) && !bytes.Equal(out, data) && !dropped {
				t.Fatalf("%s: %q holds no prefix but came out as %q", kindName(k), data, out)
			}
			if !complete {
				continue
			}
			if m, err := resp.ReplyLen(out); m != len(out) || err != nil {
				t.Fatalf("%s: output %q of complete reply %q is not one reply: %d, %v", kindName(k), out, data, m, err)
			}
			if len(out) > len(data) {
				t.Fatalf("%s: stripping grew %q into %q", kindName(k), data, out)
			}
			if k == ReplyRaw && data[0] != '-' && data[0] != '!' && !bytes.Equal(out, data) {
				t.Fatalf("ReplyRaw changed a value reply %q into %q", data, out)
			}
		}
		// As a frame read on a subscribed connection.
		for _, resp3 := range []bool{false, true} {
			out, info := r.AppendPush([]byte("prev"), data, resp3)
			if !bytes.HasPrefix(out, []byte("prev")) {
				t.Fatalf("AppendPush: dst's previous content lost")
			}
			out = out[4:]
			if (info.Kind == PushNone || info.Drop) && len(out) != 0 {
				t.Fatalf("AppendPush(%q, resp3=%v) = %q with %+v: appended what it did not take", data, resp3, out, info)
			}
			if complete && len(out) > 0 {
				if m, err := resp.ReplyLen(out); m != len(out) || err != nil {
					t.Fatalf("AppendPush: output %q of complete reply %q is not one reply: %d, %v", out, data, m, err)
				}
				if len(out) > len(data) {
					t.Fatalf("AppendPush: stripping grew %q into %q", data, out)
				}
			}
		}
		// As an EXEC reply, with the kinds cycled over its elements.
		var kinds []ReplyKind
		if count, _, ok := aggregateHeader(data); ok && len(data) > 0 && data[0] == '*' && count >= 0 && count <= 64 {
			for i := 0; i < count; i++ {
				kinds = append(kinds, allKinds[(i+len(data))%len(allKinds)])
			}
		}
		out := r.AppendExecReply(nil, data, kinds)
		if complete {
			if m, err := resp.ReplyLen(out); m != len(out) || err != nil {
				t.Fatalf("EXEC: output %q of complete reply %q is not one reply: %d, %v", out, data, m, err)
			}
		}
		if !bytes.Contains(data, r.KeyPrefix()) && !bytes.Equal(out, data) {
			t.Fatalf("EXEC: %q holds no prefix but came out as %q", data, out)
		}
	})
}

// FuzzRewrite checks the security property of the rewriter on any request
// the proxy would forward: nothing that Redis treats as a key, pattern or
// channel reaches upstream outside the tenant's namespace.
func FuzzRewrite(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		args, n, _, err := resp.ParseCommand(bytes.Clone(data), nil, resp.DefaultLimits)
		if err != nil || n == 0 || len(args) == 0 {
			return
		}
		cmd := Lookup(args)
		if cmd == nil {
			return
		}
		switch cmd.Policy {
		case PolicyKeyed, PolicyPattern, PolicyChannel:
		default:
			return
		}
		if !cmd.ArityOK(len(args)) {
			return
		}
		in := toStrings(args)
		r := NewRewriter(P)
		out, err := r.AppendRequest([]byte(sentinel), cmd, args)
		if err != nil {
			if string(out) != sentinel {
				t.Fatalf("%q: error %v but dst changed to %q", in, err, out)
			}
			return
		}
		if !sameArgs(toStrings(args), in) {
			t.Fatalf("%q: AppendRequest modified its input to %q", in, toStrings(args))
		}
		body := out[len(sentinel):]
		oargs, on, _, perr := resp.ParseCommand(bytes.Clone(body), nil, resp.DefaultLimits)
		if perr != nil || on != len(body) {
			t.Fatalf("%q: output %q is not one request: n=%d/%d err=%v", in, body, on, len(body), perr)
		}
		o := toStrings(oargs)
		if o[0] != in[0] || Lookup(oargs) != cmd {
			t.Fatalf("%q → %q: not the same command any more", in, o)
		}
		switch cmd.Policy {
		case PolicyKeyed:
			checkKeyed(t, cmd, in, o)
		default:
			checkPatternOrChannel(t, r, cmd, in, o)
		}
	})
}

func checkKeyed(t *testing.T, cmd *Command, in, o []string) {
	t.Helper()
	if len(o) != len(in) {
		t.Fatalf("%q → %q: argument count changed", in, o)
	}
	idxIn, err := NewRewriter(P).Keys(cmd, toArgs(in), nil)
	if err != nil {
		t.Fatalf("%q: rewritten, but Keys fails: %v", in, err)
	}
	isKey := map[int]bool{}
	for _, i := range idxIn {
		isKey[i] = true
	}
	for i := range in {
		switch {
		case isKey[i] && o[i] != P+in[i]:
			t.Fatalf("%q → %q: key %d %q is not prefixed", in, o, i, o[i])
		case !isKey[i] && o[i] != in[i]:
			t.Fatalf("%q → %q: non-key %d %q was changed", in, o, i, in[i])
		}
	}
	// Read back, the output's keys are all keys the input was prefixed at.
	// (The output may find fewer: a prefixed "STORE" is no keyword.)
	idxOut, err := NewRewriter(P).Keys(cmd, toArgs(o), nil)
	if err != nil {
		t.Fatalf("%q → %q: Keys fails on the output: %v", in, o, err)
	}
	for _, i := range idxOut {
		if !isKey[i] {
			t.Fatalf("%q → %q: the output has a key at %d (%q) that was not prefixed (input keys %v, output keys %v)", in, o, i, o[i], idxIn, idxOut)
		}
	}
	// Independent oracles: where Redis's own parser may find keys that the
	// key-specs do not describe, parse the output the way Redis does.
	switch cmd.Name {
	case "georadius", "georadiusbymember":
		for _, k := range redisGeoStoreKeys(o) {
			if !strings.HasPrefix(k, P) {
				t.Fatalf("%q → %q: Redis stores into %q", in, o, k)
			}
		}
	case "xread", "xreadgroup":
		if streams, ok := redisXreadStreams(o); ok {
			for _, k := range streams {
				if !strings.HasPrefix(k, P) {
					t.Fatalf("%q → %q: Redis reads stream %q", in, o, k)
				}
			}
		}
	}
}

// redisXreadStreams parses XREAD/XREADGROUP options as Redis 7.0's
// xreadCommand does and returns the stream keys, or ok false when Redis
// would reply with an error.
func redisXreadStreams(args []string) (keys []string, ok bool) {
	group := strings.EqualFold(args[0], "xreadgroup")
	for i := 1; i < len(args); i++ {
		more := len(args) - i - 1
		switch o := strings.ToLower(args[i]); {
		case o == "block" && more > 0, o == "count" && more > 0:
			i++
		case o == "streams" && more > 0:
			rest := args[i+1:]
			if len(rest)%2 != 0 {
				return nil, false
			}
			return rest[:len(rest)/2], true
		case o == "group" && more >= 2 && group:
			i += 2
		case o == "noack" && group:
		default:
			return nil, false
		}
	}
	return nil, false
}

func checkPatternOrChannel(t *testing.T, r *Rewriter, cmd *Command, in, o []string) {
	t.Helper()
	glob := string(r.GlobPrefix())
	switch cmd.Name {
	case "scan":
		if (len(o)-2)%2 != 0 || (len(o) != len(in) && len(o) != len(in)+2) {
			t.Fatalf("%q → %q: bad shape", in, o)
		}
		matches := 0
		for i := 2; i < len(o); i += 2 {
			if strings.EqualFold(o[i], "match") {
				matches++
				if !strings.HasPrefix(o[i+1], glob) {
					t.Fatalf("%q → %q: MATCH %q is not prefixed", in, o, o[i+1])
				}
			}
		}
		if matches == 0 {
			t.Fatalf("%q → %q: no MATCH", in, o)
		}
	case "sort", "sort_ro":
		if len(o) != len(in) || o[1] != P+in[1] {
			t.Fatalf("%q → %q: key not prefixed", in, o)
		}
		checkSortLikeRedis(t, cmd.Name == "sort", in, o)
	case "psubscribe", "punsubscribe":
		checkChannels(t, in, o, glob, true)
	case "subscribe", "ssubscribe", "unsubscribe", "sunsubscribe":
		checkChannels(t, in, o, P, false)
	case "pubsub|channels", "pubsub|shardchannels":
		if len(o) != 3 || !strings.HasPrefix(o[2], glob) {
			t.Fatalf("%q → %q: pattern not prefixed", in, o)
		}
	case "publish", "spublish":
		if len(o) != 3 || o[1] != P+in[1] || o[2] != in[2] {
			t.Fatalf("%q → %q", in, o)
		}
	case "pubsub|numsub", "pubsub|shardnumsub":
		if len(o) != len(in) || o[1] != in[1] {
			t.Fatalf("%q → %q", in, o)
		}
		// The channels are named as SUBSCRIBE names them.
		checkChannels(t, in[1:], o[1:], P, false)
	default:
		t.Fatalf("%q → %q: FuzzRewrite has no property for %s (%v)", in, o, cmd.Name, cmd.Policy)
	}
}

// checkSortLikeRedis parses SORT's options as sortCommand does and checks
// that every STORE destination and every BY/GET pattern Redis would look up
// (one with a '*', up to the first NUL: Redis uses C strings there) is in
// the tenant's namespace.
func checkSortLikeRedis(t *testing.T, store bool, in, o []string) {
	t.Helper()
	cstr := func(s string) string {
		if i := strings.IndexByte(s, 0); i >= 0 {
			return s[:i]
		}
		return s
	}
	for j := 2; j < len(o); j++ {
		left := len(o) - j - 1
		switch w := strings.ToLower(o[j]); {
		case w == "asc" || w == "desc" || w == "alpha":
		case w == "limit" && left >= 2:
			j += 2
		case w == "store" && left >= 1 && store:
			if !strings.HasPrefix(o[j+1], P) {
				t.Fatalf("%q → %q: Redis stores into %q", in, o, o[j+1])
			}
			j++
		case (w == "by" || w == "get") && left >= 1:
			p := o[j+1]
			looked := strings.Contains(cstr(p), "*") && !(w == "get" && cstr(p) == "#")
			if looked && !strings.HasPrefix(p, P) {
				t.Fatalf("%q → %q: Redis looks up %s pattern %q", in, o, w, p)
			}
			j++
		default:
			return // Redis replies with a syntax error
		}
	}
}

// checkChannels: each channel or pattern is prefixed in front, or is a
// keyspace channel whose database part is plain (a number; in a pattern,
// digits and '*') with the prefix right after its first "__:", or is a
// keyevent channel left as it is.
func checkChannels(t *testing.T, in, o []string, prefix string, pattern bool) {
	t.Helper()
	if len(o) != len(in) {
		t.Fatalf("%q → %q: channel count changed", in, o)
	}
	for i := 1; i < len(in); i++ {
		c, oc := in[i], o[i]
		cut := -1
		if strings.HasPrefix(c, keyspacePrefix) {
			if j := strings.Index(c[len(keyspacePrefix):], "__:"); j >= 0 {
				cut = len(keyspacePrefix) + j + 3
			}
		}
		plain := cut >= 0 && isPlainDB(c[len(keyspacePrefix):cut-3], pattern)
		switch {
		case oc == prefix+c:
			if plain {
				t.Fatalf("%q → %q: keyspace channel %q prefixed in front: its notifications never arrive", in, o, c)
			}
		case cut >= 0 && oc == c[:cut]+prefix+c[cut:]:
			// The db part of a pattern is a glob too: anything but digits
			// and '*' (a class, an escape) can take the "__:" and the
			// prefix somewhere else than the key.
			if !plain {
				t.Fatalf("%q → %q: keyspace channel %q keeps a db part %q that is not plain: it can match other tenants' keys", in, o, c, c[len(keyspacePrefix):cut-3])
			}
		case strings.HasPrefix(c, keyeventPrefix) && strings.Contains(c, "__:") && oc == c:
		default:
			t.Fatalf("%q → %q: channel %q → %q is outside the tenant", in, o, c, oc)
		}
	}
}

func isPlainDB(db string, pattern bool) bool {
	if db == "" {
		return false
	}
	for i := 0; i < len(db); i++ {
		if c := db[i]; !(c >= '0' && c <= '9' || pattern && c == '*') {
			return false
		}
	}
	return true
}
