package upstream

import (
	"bytes"
	"errors"
	"testing"

	"github.com/keyfence/keyfence/resp"
)

// The command of reply i is the i-th request of the batch, framed by its
// lengths: arguments holding CRLF or '*' do not cut it short.
func TestRequestsAt(t *testing.T) {
	set := resp.AppendCommand(nil, []byte("SET"), []byte("k\r\n*2"), []byte("$3\r\nv"))
	get := resp.AppendCommand(nil, []byte("GET"), []byte("k"))
	exec := resp.AppendCommand(nil, []byte("EXEC"))
	batch := append(append(append([]byte(nil), set...), get...), exec...)
	for _, tc := range []struct {
		name    string
		req     []byte
		at      []int // asked in this order
		want    [][]byte
		wantErr error
	}{
		{"each in turn", batch, []int{0, 1, 2}, [][]byte{set, get, exec}, nil},
		{"skipping ahead", batch, []int{2}, [][]byte{exec}, nil},
		{"the same twice", batch, []int{1, 1}, [][]byte{get, get}, nil},
		{"past the last", batch, []int{3}, nil, errShortRequest},
		{"cut short", batch[:len(batch)-3], []int{2}, nil, errShortRequest},
		{"not RESP", []byte("?garbage\r\n"), []int{0}, nil, resp.ErrInvalidReply},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := requests{buf: tc.req}
			for k, i := range tc.at {
				got, err := q.at(i)
				if tc.wantErr != nil {
					if !errors.Is(err, tc.wantErr) {
						t.Fatalf("at(%d): %q, %v; want error %v", i, got, err, tc.wantErr)
					}
					return
				}
				if err != nil || !bytes.Equal(got, tc.want[k]) {
					t.Fatalf("at(%d): %q, %v; want %q", i, got, err, tc.want[k])
				}
			}
		})
	}
}

// Replace swaps one reply for another of any length and leaves the others
// where they were; a reply that never came or an overflowed batch is left
// alone.
func TestBatchReplace(t *testing.T) {
	three := func() *Batch {
		b := NewBatch()
		b.Reset(3)
		for _, r := range []string{"+a\r\n", "-MOVED 1 h:1\r\n", ":3\r\n"} {
			b.Add([]byte(r))
		}
		return b
	}
	for _, tc := range []struct {
		name     string
		i        int
		reply    string
		overflow bool
		want     []string
	}{
		{"longer, in the middle", 1, "$11\r\nhello world\r\n", false, []string{"+a\r\n", "$11\r\nhello world\r\n", ":3\r\n"}},
		{"shorter, in the middle", 1, "+OK\r\n", false, []string{"+a\r\n", "+OK\r\n", ":3\r\n"}},
		{"as long", 1, "-ASK 2 h:22\r\n", false, []string{"+a\r\n", "-ASK 2 h:22\r\n", ":3\r\n"}},
		{"the first", 0, "*0\r\n", false, []string{"*0\r\n", "-MOVED 1 h:1\r\n", ":3\r\n"}},
		{"the last", 2, "_\r\n", false, []string{"+a\r\n", "-MOVED 1 h:1\r\n", "_\r\n"}},
		{"one that never came", 3, "+x\r\n", false, []string{"+a\r\n", "-MOVED 1 h:1\r\n", ":3\r\n", ""}},
		{"an overflowed batch", 1, "+x\r\n", true, []string{"", "", ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := three()
			b.Overflow = tc.overflow
			b.Replace(tc.i, []byte(tc.reply))
			for i, want := range tc.want {
				if got := string(b.Reply(i)); got != want {
					t.Fatalf("reply %d: %q, want %q", i, got, want)
				}
			}
		})
	}
}

// Only a well-formed -MOVED or -ASK line is a redirect; anything else is
// the client's reply as it is.
func TestParseRedirect(t *testing.T) {
	for _, tc := range []struct {
		reply string
		ok    bool
		want  redirect
	}{
		{"-MOVED 3999 127.0.0.1:6381\r\n", true, redirect{addr: "127.0.0.1:6381"}},
		{"-ASK 3999 127.0.0.1:6381\r\n", true, redirect{ask: true, addr: "127.0.0.1:6381"}},
		{"-MOVED 3999 [::1]:6381\r\n", true, redirect{addr: "[::1]:6381"}},
		{"-MOVED 3999\r\n", false, redirect{}},
		{"-MOVED 3999 127.0.0.1:6381 extra\r\n", false, redirect{}},
		{"-ASK\r\n", false, redirect{}},
		{"-MOVEDX 1 h:1\r\n", false, redirect{}},
		{"-moved 1 h:1\r\n", false, redirect{}}, // Redis writes it in capitals
		{"+MOVED 1 h:1\r\n", false, redirect{}},
		{"-ERR MOVED 1 h:1\r\n", false, redirect{}},
		{"-CLUSTERDOWN Hash slot not served\r\n", false, redirect{}},
		{"", false, redirect{}},
	} {
		got, ok := parseRedirect([]byte(tc.reply))
		if ok != tc.ok || (ok && got != tc.want) {
			t.Errorf("parseRedirect(%q) = %+v, %v; want %+v, %v", tc.reply, got, ok, tc.want, tc.ok)
		}
	}
}

// EXEC's reply is never followed elsewhere; nothing else is taken for it.
func TestIsExec(t *testing.T) {
	for _, tc := range []struct {
		cmd  []byte
		want bool
	}{
		{resp.AppendCommand(nil, []byte("EXEC")), true},
		{resp.AppendCommand(nil, []byte("exec")), true},
		{resp.AppendCommand(nil, []byte("EXEC"), []byte("x")), false},
		{resp.AppendCommand(nil, []byte("GET"), []byte("EXEC")), false},
		{resp.AppendCommand(nil, []byte("EXECX")), false},
	} {
		if got := isExec(tc.cmd); got != tc.want {
			t.Errorf("isExec(%q) = %v, want %v", tc.cmd, got, tc.want)
		}
	}
}

// KeySlot is Redis Cluster's HASH_SLOT, hashtags included.
func TestKeySlot(t *testing.T) {
	if got := crc16([]byte("123456789")); got != 0x31C3 {
		t.Fatalf("crc16 check value: %#x, want 0x31c3 (CRC-16/XMODEM)", got)
	}
	for _, tc := range []struct {
		key, sameAs string
	}{
		{"{user1000}.following", "user1000"},
		{"{user1000}.followers", "user1000"},
		{"foo{}{bar}", "foo{}{bar}"}, // an empty first tag: the whole key
		{"foo{{bar}}zap", "{bar"},
		{"foo{bar}{zap}", "bar"},
		{"{", "{"},
	} {
		if got, want := KeySlot([]byte(tc.key)), int(crc16([]byte(tc.sameAs)))&(ClusterSlots-1); got != want {
			t.Errorf("KeySlot(%q) = %d, want %d (the slot of %q)", tc.key, got, want, tc.sameAs)
		}
	}
}
