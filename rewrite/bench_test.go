package rewrite

import (
	"strconv"
	"strings"
	"testing"

	"github.com/keyfence/keyfence/resp"
)

// The benchmarks reuse their dst buffers and argument slices, as a client
// session does, so allocs/op shows what the steady state really allocates.

func BenchmarkParseCommand(b *testing.B) {
	get := []byte(multibulk("GET", "user:1000:profile"))
	set := []byte(multibulk("SET", "user:1000:profile", strings.Repeat("v", 32), "EX", "60"))
	var pipe []byte
	for i := 0; i < 16; i++ {
		pipe = append(pipe, get...)
	}
	args := make([][]byte, 0, 16)
	b.Run("GET", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(get)))
		for i := 0; i < b.N; i++ {
			args, _, _, _ = resp.ParseCommand(get, args, resp.DefaultLimits)
		}
	})
	b.Run("SET32", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(set)))
		for i := 0; i < b.N; i++ {
			args, _, _, _ = resp.ParseCommand(set, args, resp.DefaultLimits)
		}
	})
	b.Run("Pipeline16", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(pipe)))
		for i := 0; i < b.N; i++ {
			for buf := pipe; len(buf) > 0; {
				var n int
				args, n, _, _ = resp.ParseCommand(buf, args, resp.DefaultLimits)
				buf = buf[n:]
			}
		}
	})
}

// benchRewrite measures what the proxy does per forwarded command: look it
// up, check its arity, append the rewritten request.
func benchRewrite(b *testing.B, in []string) {
	args := toArgs(in)
	r := NewRewriter(P)
	dst := make([]byte, 0, 4096)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cmd := Lookup(args)
		if cmd == nil || !cmd.ArityOK(len(args)) {
			b.Fatal("bad command")
		}
		var err error
		dst, err = r.AppendRequest(dst[:0], cmd, args)
		if err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(len(dst)))
}

func BenchmarkRewriteGET(b *testing.B) {
	benchRewrite(b, a("GET", "user:1000:profile"))
}

func BenchmarkRewriteSET(b *testing.B) {
	benchRewrite(b, a("SET", "user:1000:profile", strings.Repeat("v", 32), "EX", "60"))
}

func BenchmarkRewriteMSET10(b *testing.B) {
	in := a("MSET")
	for i := 0; i < 10; i++ {
		in = append(in, "key:"+strconv.Itoa(i), "value:"+strconv.Itoa(i))
	}
	benchRewrite(b, in)
}

// BenchmarkRewriteEVAL: EVAL is emulated (the proxy wraps the script), so
// AppendRequest refuses it; the proxy locates its keys with Keys and
// appends the request itself. This measures that path.
func BenchmarkRewriteEVAL(b *testing.B) {
	args := toArgs(a("EVAL", "return redis.call('MGET', KEYS[1], KEYS[2])", "2", "k1", "k2", "a1"))
	r := NewRewriter(P)
	dst := make([]byte, 0, 4096)
	idx := make([]int, 0, 8)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cmd := Lookup(args)
		if cmd == nil || !cmd.ArityOK(len(args)) {
			b.Fatal("bad command")
		}
		var err error
		idx, err = r.Keys(cmd, args, idx)
		if err != nil {
			b.Fatal(err)
		}
		dst = resp.AppendArrayHeader(dst[:0], len(args))
		k := 0
		for j, arg := range args {
			if k < len(idx) && idx[k] == j {
				dst = resp.AppendPrefixedBulk(dst, r.KeyPrefix(), arg)
				k++
			} else {
				dst = resp.AppendBulk(dst, arg)
			}
		}
	}
	b.SetBytes(int64(len(dst)))
}

func benchStrip(b *testing.B, reply string, kind ReplyKind) {
	in := []byte(reply)
	r := NewRewriter(P)
	dst := make([]byte, 0, 2*len(in))
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		dst = r.AppendReply(dst[:0], in, kind)
	}
	if len(dst) >= len(in) {
		b.Fatalf("nothing stripped from %.40q", reply)
	}
}

func scanReply(keys int) string {
	el := make([]string, keys)
	for i := range el {
		el[i] = bulk(P + "user:" + strconv.Itoa(i) + ":session")
	}
	return arr(bulk("1234"), arr(el...))
}

func xreadReply() string {
	var entries []string
	for i := 0; i < 10; i++ {
		entries = append(entries, arr(bulk(strconv.Itoa(1700000000000+i)+"-0"), arr(bulk("job"), bulk(strings.Repeat("p", 64)))))
	}
	return arr(arr(bulk(P+"jobs"), arr(entries...)))
}

func BenchmarkStripSCAN(b *testing.B) {
	benchStrip(b, scanReply(100), ReplyScan)
}

func BenchmarkStripBLPOP(b *testing.B) {
	benchStrip(b, arr(bulk(P+"queue:emails"), bulk(strings.Repeat("j", 64))), ReplyKeyFirst)
}

func BenchmarkStripXREAD(b *testing.B) {
	benchStrip(b, xreadReply(), ReplyStreams)
}

func BenchmarkReplyLen(b *testing.B) {
	for _, bc := range []struct {
		name  string
		reply string
	}{
		{"Bulk64", bulk(strings.Repeat("v", 64))},
		{"SCAN100", scanReply(100)},
		{"XREAD10", xreadReply()},
	} {
		in := []byte(bc.reply)
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(in)))
			for i := 0; i < b.N; i++ {
				if n, err := resp.ReplyLen(in); n != len(in) || err != nil {
					b.Fatal(n, err)
				}
			}
		})
	}
}
