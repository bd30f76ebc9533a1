package rewrite

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

func TestParseLibraryMetadata(t *testing.T) {
	// Redis 7.0.15's answers to FUNCTION LOAD of each code (its errors come
	// before the code is compiled).
	tests := []struct {
		code, name, err string
	}{
		{"#!lua name=mylib\nreturn", "mylib", ""},
		{"#!LUA name=ab\n", "ab", ""},
		{"#!lua  name=ab2 \n", "ab2", ""},
		{"#!lua name=x10\r\n", "x10", ""},
		{"#!lua name=\"x11\"\n", "x11", ""},
		{"#!lua \"name=x12\"\n", "x12", ""},
		{"#!lua name=x13\"a\"\n", "x13a", ""},
		{"#!lua NAME=x14\n", "x14", ""},
		{"redis.register_function('x', function() end)", "", "ERR Missing library metadata"},
		{"", "", "ERR Missing library metadata"},
		{"#!lua", "", "ERR Invalid library metadata"},
		{"#!lua name=ab3", "", "ERR Invalid library metadata"},
		{"#!lua name=a\x00\n", "", "ERR Invalid library metadata"},
		{"#!lua name=\"ab\n", "", "ERR Invalid library metadata"},
		{"#!lua\n", "", "ERR Library name was not given"},
		{"#!lua name=a-b\n", "", ErrLibraryName},
		{"#!lua name=\n", "", ErrLibraryName},
		{"#!lua name=ab foo=bar\n", "", "ERR Invalid metadata value given: foo=bar"},
		{"#!lua name=ab name=cd\n", "", "ERR Invalid metadata value, name argument was given multiple times"},
		{"#!lua2 name=ab\n", "", "ERR Engine 'lua2' not found"},
		{"#! lua name=x16\n", "", "ERR Invalid metadata value given: lua"},
		{"#!lua2 name=a-b\n", "", ErrLibraryName},
	}
	for _, tt := range tests {
		lib, err := ParseLibrary([]byte(tt.code))
		switch {
		case tt.err != "":
			var le LibraryError
			if !errors.As(err, &le) || string(le) != tt.err {
				t.Errorf("%q: error %v, want %q", tt.code, err, tt.err)
			}
		case err != nil:
			t.Errorf("%q: %v", tt.code, err)
		case lib.Name != tt.name:
			t.Errorf("%q: name %q, want %q", tt.code, lib.Name, tt.name)
		}
	}
}

func TestParseLibraryChunk(t *testing.T) {
	lib, err := ParseLibrary([]byte("#!lua name=x\nredis.register_function('f', function() return KEYS end)"))
	if err != nil {
		t.Fatal(err)
	}
	// Every global the code names reads the sandbox; the line stays 2.
	if !bytes.HasPrefix(lib.Chunk, []byte("local __kf_E = ...; \n")) || !bytes.Contains(lib.Chunk, []byte("__kf_E.redis")) ||
		!bytes.Contains(lib.Chunk, []byte("__kf_E.KEYS")) {
		t.Errorf("chunk: %q", lib.Chunk)
	}
	if lib, _ := ParseLibrary([]byte("#!lua name=x\nfoo(")); string(lib.Chunk) != chunkSyntax {
		t.Errorf("syntax error chunk: %q", lib.Chunk)
	}
	if lib, _ := ParseLibrary([]byte("#!lua name=x\nlocal __kf_E = 1")); !bytes.HasPrefix(lib.Chunk, []byte(chunkCompileError+"ERR keyfence: ")) {
		t.Errorf("reserved name chunk: %q", lib.Chunk)
	}
}

func TestFixFunctionError(t *testing.T) {
	sb := NewSandbox()
	run := sb.FunctionRun(3)
	tests := []struct{ in, want string }{
		// Raised by the client's own code: its line is Lua's.
		{"-ERR user_function:5: x script: " + run + ", on =user_function:5.\r\n", "-ERR user_function:5: x script: f, on @user_function:5.\r\n"},
		// Raised by the sandbox for the client's call: the marker's line.
		{"-ERR Unknown Redis command called from script [kf:line=6] script: " + run + ", on @user_function:305.\r\n",
			"-ERR Unknown Redis command called from script script: f, on @user_function:6.\r\n"},
		// Raised by the sandbox at the client's position.
		{"-ERR user_function:7: Script attempted to access nonexistent global variable 'KEYS' script: " + run + ", on @user_function:313.\r\n",
			"-ERR user_function:7: Script attempted to access nonexistent global variable 'KEYS' script: f, on @user_function:7.\r\n"},
		{"-MY err\r\n", "-MY err\r\n"},
	}
	for _, tt := range tests {
		if got := string(sb.FixFunctionError([]byte(tt.in), "f")); got != tt.want {
			t.Errorf("%q:\n got %q\nwant %q", tt.in, got, tt.want)
		}
	}
}

// A FUNCTION DUMP of Redis 7.0.15: a library too short to compress, then
// one LZF compressed.
const redisDump = "f5404623216c7561206e616d653d736d616c6c0a72656469732e72656769737465725f66756e6374696f6e282773272c2066756e6374696f6e28292072657475726e203120656e6429f5c34074411e1f23216c7561206e616d653d636f6d700a72656469732e72656769737465725f660d756e6374696f6e28276331272c20e0000e116b6579732c2061726773292072657475726e200640390863616c6c2827474554202d4024085b315d2920656e6429e012590032202be04d590033e0345901290a0a004030501bab88edb6"

func TestParseRedisFunctionDump(t *testing.T) {
	p, _ := hex.DecodeString(redisDump)
	codes, err := ParseFunctionDump(p)
	if err != nil {
		t.Fatal(err)
	}
	comp := "#!lua name=comp\n"
	for _, f := range []string{"c1", "c2", "c3"} {
		comp += "redis.register_function('" + f + "', function(keys, args) return redis.call('GET', keys[1]) end)\n"
	}
	want := []string{"#!lua name=small\nredis.register_function('s', function() return 1 end)", comp}
	if len(codes) != 2 || string(codes[0]) != want[0] || string(codes[1]) != want[1] {
		t.Fatalf("codes: %q", codes)
	}
	// keyfence's own payload is one Redis reads: the same records, not
	// compressed, and a footer Redis checks.
	again := AppendFunctionDump(nil, codes)
	if back, err := ParseFunctionDump(again); err != nil || len(back) != 2 || string(back[1]) != want[1] {
		t.Fatalf("round trip: %q, %v", back, err)
	}
	if got := AppendFunctionDump(nil, nil); hex.EncodeToString(got) != "0a005d9b5c400f7fa2da" {
		t.Errorf("empty dump: %x, want Redis's", got)
	}
	// A footer Redis refuses.
	for _, bad := range [][]byte{nil, p[:9], append(append([]byte(nil), p[:len(p)-1]...), p[len(p)-1]^1), SealFunctionDump(nil)[:2]} {
		if _, err := ParseFunctionDump(bad); err != ErrFunctionDump {
			t.Errorf("%x: %v, want ErrFunctionDump", bad, err)
		}
	}
	// Records Redis cannot load end the list with its error.
	for body, want := range map[string]string{
		"\x00\x01x":                 "ERR given type is not a function",
		"\xf5":                      "ERR Failed loading library payload",
		"\xf5\xc5\x05":              "ERR Failed loading library payload",
		"\xf5\xc3\x02\x05\x01ab":    "ERR Failed loading library payload",
		"\xf6\x01w\x03LUA\x01":      "ERR Failed loading library description",
		"\xf6\x01w\x03LUA\x00\x3fx": "ERR Failed loading library blob",
	} {
		_, err := ParseFunctionDump(SealFunctionDump([]byte(body)))
		var de FunctionDumpError
		if !errors.As(err, &de) || string(de) != want {
			t.Errorf("%q: %v, want %q", body, err, want)
		}
	}
	// Redis 7.0-rc's records, and integer-encoded strings.
	codes, err = ParseFunctionDump(SealFunctionDump([]byte("\xf6\x01w\x03LUA\x00\x04code\xf5\xc0\x05")))
	if err != nil || len(codes) != 2 || string(codes[0]) != "#!LUA name=w\ncode" || string(codes[1]) != "5" {
		t.Errorf("old record: %q, %v", codes, err)
	}
}

func TestLZFDecompress(t *testing.T) {
	// A literal run, then a back reference of length 3+2 at offset 1.
	in := []byte{2, 'a', 'b', 'c', 3 << 5, 2}
	out := make([]byte, 8)
	if n := lzfDecompress(in, out); n != 8 || string(out) != "abcabcab" {
		t.Errorf("got %d %q", n, out)
	}
	for _, bad := range [][]byte{{5, 'a'}, {1 << 5}, {0, 'a', 1 << 5, 5}, {7 << 5}} {
		if n := lzfDecompress(bad, make([]byte, 16)); n != 0 && n > 16 {
			t.Errorf("%x: %d", bad, n)
		}
	}
	if n := lzfDecompress([]byte{3, 'a', 'b', 'c', 'd'}, make([]byte, 2)); n != 0 {
		t.Errorf("overflow: %d", n)
	}
}

func TestCRC64Jones(t *testing.T) {
	if got := crc64Jones(0, []byte("123456789")); got != 0xe9c6d914c4b8d9ca {
		t.Errorf("crc64: %x", got)
	}
}

func FuzzParseLibrary(f *testing.F) {
	for _, s := range []string{
		"#!lua name=x\nredis.register_function('f', function(keys, args) return redis.call('GET', keys[1]) end)",
		"#!lua name=\"a b\" x\n", "#!lua name=x\nfoo(", "#!lua", "x", "#!lua name=x\nlocal __kf_E = 1",
		"#!lua name=x\r\n--[[\n]] return ...",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, code []byte) {
		orig := append([]byte(nil), code...)
		lib, err := ParseLibrary(code)
		if !bytes.Equal(code, orig) {
			t.Fatalf("ParseLibrary changed its input")
		}
		if err != nil {
			var le LibraryError
			if !errors.As(err, &le) || !strings.HasPrefix(string(le), "ERR ") || strings.ContainsAny(string(le), "\r\n") {
				t.Fatalf("error %q", err)
			}
			return
		}
		if !ValidFunctionName(lib.Name) || !bytes.Equal(lib.Code, code) {
			t.Fatalf("library %q from %q", lib.Name, code)
		}
		// The chunk is keyfence's rewriting or one of its markers: never
		// the client's code as it is.
		switch {
		case len(lib.Chunk) == 0:
		case lib.Chunk[0] == chunkMetaError[0] || lib.Chunk[0] == chunkCompileError[0]:
			if bytes.ContainsAny(lib.Chunk, "\r\n") {
				t.Fatalf("marker %q spans lines", lib.Chunk)
			}
		case !bytes.HasPrefix(lib.Chunk, []byte("local __kf_E = ...; ")):
			t.Fatalf("chunk %q", lib.Chunk)
		}
	})
}

func FuzzFunctionDump(f *testing.F) {
	p, _ := hex.DecodeString(redisDump)
	f.Add(p)
	f.Add(AppendFunctionDump(nil, [][]byte{[]byte("#!lua name=x\n")}))
	f.Add(SealFunctionDump([]byte("\xf6\x01w\x03LUA\x01\x01d\x04code")))
	f.Add(SealFunctionDump([]byte("\xf5\xc3\x06\x08\x02abc\x60\x02")))
	f.Fuzz(func(t *testing.T, payload []byte) {
		// Sealed, so that the records, not the checksum, are what is read.
		for _, pl := range [][]byte{payload, SealFunctionDump(append([]byte(nil), payload...))} {
			codes, err := ParseFunctionDump(pl)
			var de FunctionDumpError
			if err != nil && err != ErrFunctionDump && !errors.As(err, &de) {
				t.Fatalf("error %v", err)
			}
			total := 0
			for _, c := range codes {
				if len(c) > MaxScriptBytes && len(c) > len(pl) {
					t.Fatalf("a record of %d bytes from %d", len(c), len(pl))
				}
				total += len(c)
			}
			// What keyfence dumps, it reads back as it was.
			if err == nil {
				back, err := ParseFunctionDump(AppendFunctionDump(nil, codes))
				if err != nil || len(back) != len(codes) {
					t.Fatalf("round trip: %v", err)
				}
				for i := range back {
					if !bytes.Equal(back[i], codes[i]) {
						t.Fatalf("round trip of %q: %q", codes[i], back[i])
					}
				}
			}
		}
	})
}
