//go:build linux

package uring

import (
	"bytes"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// socketPair connects a loopback TCP pair and returns the sending side's
// own non-blocking descriptor (a duplicate, out of Go's poller) and the
// receiving side.
func socketPair(t testing.TB) (int, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fd := -1
	raw.Control(func(f uintptr) { fd, err = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) })
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	t.Cleanup(func() { unix.Close(fd); peer.Close() })
	return fd, peer
}

func newRing(t testing.TB, entries uint32) *Ring {
	t.Helper()
	r, err := New(entries)
	if err != nil {
		t.Fatalf("io_uring is not usable here: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestLayout(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"sqe", unsafe.Sizeof(sqe{}), 64},
		{"cqe", unsafe.Sizeof(cqe{}), 16},
		{"params", unsafe.Sizeof(params{}), 120},
	} {
		if c.got != c.want {
			t.Errorf("sizeof(%s) = %d, the kernel's is %d", c.name, c.got, c.want)
		}
	}
}

// Sends on several sockets complete during one Submit, with their byte
// counts, and the peers receive exactly what was sent.
func TestSendsCompleteDuringSubmit(t *testing.T) {
	r := newRing(t, 8)
	type conn struct {
		fd   int
		peer net.Conn
		msg  []byte
	}
	var conns []conn
	for i := range 5 {
		fd, peer := socketPair(t)
		conns = append(conns, conn{fd, peer, bytes.Repeat([]byte{'a' + byte(i)}, 100*(i+1))})
	}
	for round := range 3 {
		for i, c := range conns {
			if !r.Send(c.fd, c.msg, uint64(i)) {
				t.Fatalf("round %d: Send %d refused with room left", round, i)
			}
		}
		if err := r.Submit(); err != nil {
			t.Fatal(err)
		}
		got := map[uint64]int32{}
		r.Completions(func(tag uint64, res int32) { got[tag] = res })
		if r.Pending() != 0 || len(got) != len(conns) {
			t.Fatalf("round %d: %d completions, %d pending; want %d, 0", round, len(got), r.Pending(), len(conns))
		}
		for i, c := range conns {
			if got[uint64(i)] != int32(len(c.msg)) {
				t.Errorf("round %d: send %d: result %d, want %d", round, i, got[uint64(i)], len(c.msg))
			}
			buf := make([]byte, len(c.msg))
			if _, err := io.ReadFull(c.peer, buf); err != nil || !bytes.Equal(buf, c.msg) {
				t.Fatalf("round %d: peer %d read %q, %v", round, i, buf, err)
			}
		}
	}
}

// A send on a full socket completes at once with -EAGAIN, as write(2)
// would: nothing is left waiting in the kernel. One on a bad descriptor
// reports its error; Send refuses more than the ring holds.
func TestSendErrors(t *testing.T) {
	r := newRing(t, 4)
	fd, _ := socketPair(t) // the peer never reads
	chunk := make([]byte, 1<<20)
	var results []int32
	for len(results) == 0 || results[len(results)-1] > 0 {
		if len(results) > 1000 {
			t.Fatal("the socket never filled")
		}
		r.Send(fd, chunk, 1)
		if err := r.Submit(); err != nil {
			t.Fatal(err)
		}
		r.Completions(func(_ uint64, res int32) { results = append(results, res) })
	}
	if last := results[len(results)-1]; last != -int32(syscall.EAGAIN) || r.Pending() != 0 {
		t.Fatalf("full socket: result %d, %d pending; want %d, 0", last, r.Pending(), -int32(syscall.EAGAIN))
	}

	r.Send(-1, chunk, 2)
	if err := r.Submit(); err != nil {
		t.Fatal(err)
	}
	var res int32
	r.Completions(func(_ uint64, got int32) { res = got })
	if res != -int32(syscall.EBADF) {
		t.Fatalf("bad descriptor: result %d, want %d", res, -int32(syscall.EBADF))
	}

	n := 0
	for r.Send(fd, chunk, 3) {
		n++
	}
	if n != len(r.sqes) || r.Send(fd, nil, 4) {
		t.Fatalf("Send took %d entries in a ring of %d", n, len(r.sqes))
	}
}

// BenchmarkSend is what the package is for: 16 sockets written once
// each, by write(2) one by one or by the ring in one Submit.
func BenchmarkSend(b *testing.B) {
	const sockets = 16
	msg := make([]byte, 16*9) // 16 short replies
	var fds []int
	for range sockets {
		fd, peer := socketPair(b)
		go io.Copy(io.Discard, peer)
		fds = append(fds, fd)
	}
	b.Run("write", func(b *testing.B) {
		for b.Loop() {
			for _, fd := range fds {
				if _, err := unix.Write(fd, msg); err != nil && err != unix.EAGAIN {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*sockets), "ns/send")
	})
	b.Run("ring", func(b *testing.B) {
		r := newRing(b, sockets)
		for b.Loop() {
			for i, fd := range fds {
				r.Send(fd, msg, uint64(i))
			}
			if err := r.Submit(); err != nil {
				b.Fatal(err)
			}
			r.Completions(func(uint64, int32) {})
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*sockets), "ns/send")
	})
}

// Receives complete during Submit: the bytes waiting, -EAGAIN when none
// are (nothing left waiting in the kernel), 0 once the peer has closed.
func TestRecv(t *testing.T) {
	r := newRing(t, 8)
	fd, peer := socketPair(t)
	idle, _ := socketPair(t)
	if _, err := peer.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	recv := func(fd int, buf []byte) int32 {
		t.Helper()
		var res int32
		for deadline := 0; ; deadline++ { // the bytes may take a moment to arrive
			if !r.Recv(fd, buf, 7) {
				t.Fatal("Recv refused with room left")
			}
			if err := r.Submit(); err != nil {
				t.Fatal(err)
			}
			n := 0
			r.Completions(func(tag uint64, got int32) { res, n = got, n+1 })
			if n != 1 || r.Pending() != 0 {
				t.Fatalf("%d completions, %d pending; want 1, 0", n, r.Pending())
			}
			if res != -int32(syscall.EAGAIN) || fd == idle || deadline > 1000 {
				return res
			}
			time.Sleep(time.Millisecond)
		}
	}
	buf := make([]byte, 64)
	if n := recv(fd, buf); n != 5 || string(buf[:n]) != "hello" {
		t.Fatalf("recv: %d %q, want 5 \"hello\"", n, buf[:max(n, 0)])
	}
	if n := recv(idle, buf); n != -int32(syscall.EAGAIN) {
		t.Fatalf("recv with nothing waiting: %d, want %d", n, -int32(syscall.EAGAIN))
	}
	peer.Close()
	if n := recv(fd, buf); n != 0 {
		t.Fatalf("recv after the peer closed: %d, want 0", n)
	}
}
