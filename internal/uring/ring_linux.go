//go:build linux

package uring

import (
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The kernel ABI (include/uapi/linux/io_uring.h): the system calls, the
// offsets of the mapped rings, and the one operation used.
const (
	sysSetup = 425
	sysEnter = 426

	offSQRing = 0
	offSQEs   = 0x10000000

	featSingleMmap = 1 << 0

	opSend = 26
	opRecv = 27
)

type sqRingOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type cqRingOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type params struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  sqRingOffsets
	cqOff                                                                  cqRingOffsets
}

// sqe is a submission queue entry (64 bytes).
type sqe struct {
	opcode, flags uint8
	ioprio        uint16
	fd            int32
	off, addr     uint64
	len, msgFlags uint32
	userData      uint64
	bufIndex      uint16
	personality   uint16
	spliceFdIn    int32
	addr3, pad    uint64
}

// cqe is a completion queue entry (16 bytes).
type cqe struct {
	userData uint64
	res      int32
	flags    uint32
}

// Ring is one io_uring, used by one goroutine.
type Ring struct {
	fd      int
	rings   []byte // the submission and completion rings, one mapping
	sqeMem  []byte
	sqHead  *uint32
	sqTail  *uint32
	sqMask  uint32
	sqArray []uint32
	sqes    []sqe
	cqHead  *uint32
	cqTail  *uint32
	cqMask  uint32
	cqes    []cqe

	queued  uint32 // entries written since the last Submit
	pending int    // submitted, not yet completed
}

// New sets up a ring that holds up to entries sends at a time (a power of
// two is used, as the kernel rounds up).
func New(entries uint32) (*Ring, error) {
	var p params
	fd, _, errno := unix.Syscall(sysSetup, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", errno)
	}
	r := &Ring{fd: int(fd)}
	if p.features&featSingleMmap == 0 {
		r.Close()
		return nil, errors.New("io_uring: the kernel lacks IORING_FEAT_SINGLE_MMAP (Linux 5.4)")
	}
	size := max(p.sqOff.array+p.sqEntries*4, p.cqOff.cqes+p.cqEntries*uint32(unsafe.Sizeof(cqe{})))
	var err error
	if r.rings, err = unix.Mmap(r.fd, offSQRing, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		r.Close()
		return nil, fmt.Errorf("io_uring: map the rings: %w", err)
	}
	if r.sqeMem, err = unix.Mmap(r.fd, offSQEs, int(p.sqEntries)*int(unsafe.Sizeof(sqe{})), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		r.Close()
		return nil, fmt.Errorf("io_uring: map the submission entries: %w", err)
	}
	base := unsafe.Pointer(&r.rings[0])
	at := func(off uint32) unsafe.Pointer { return unsafe.Add(base, off) }
	r.sqHead, r.sqTail = (*uint32)(at(p.sqOff.head)), (*uint32)(at(p.sqOff.tail))
	r.sqMask = *(*uint32)(at(p.sqOff.ringMask))
	r.sqArray = unsafe.Slice((*uint32)(at(p.sqOff.array)), p.sqEntries)
	r.sqes = unsafe.Slice((*sqe)(unsafe.Pointer(&r.sqeMem[0])), p.sqEntries)
	r.cqHead, r.cqTail = (*uint32)(at(p.cqOff.head)), (*uint32)(at(p.cqOff.tail))
	r.cqMask = *(*uint32)(at(p.cqOff.ringMask))
	r.cqes = unsafe.Slice((*cqe)(at(p.cqOff.cqes)), p.cqEntries)
	return r, nil
}

// Send queues a send of p on the non-blocking socket fd, to be reported
// with tag. false: the ring is full (Submit first). p must stay as it is
// until Submit returns.
func (r *Ring) Send(fd int, p []byte, tag uint64) bool {
	return r.queue(opSend, fd, p, tag, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
}

// Recv queues a receive into p from the non-blocking socket fd, to be
// reported with tag: the bytes received (0: the peer closed), or -EAGAIN
// when none are waiting. false: the ring is full. p is the kernel's until
// Submit returns.
func (r *Ring) Recv(fd int, p []byte, tag uint64) bool {
	return r.queue(opRecv, fd, p, tag, unix.MSG_DONTWAIT)
}

func (r *Ring) queue(op uint8, fd int, p []byte, tag uint64, flags uint32) bool {
	// Completions not yet taken count against the room too: the completion
	// ring (twice the size of the submission ring) must never overflow.
	if len(p) == 0 || int(r.queued)+r.pending >= len(r.sqes) {
		return false
	}
	tail := atomic.LoadUint32(r.sqTail) + r.queued
	i := tail & r.sqMask
	r.sqes[i] = sqe{opcode: op, fd: int32(fd), addr: uint64(uintptr(unsafe.Pointer(&p[0]))), len: uint32(len(p)), msgFlags: flags, userData: tag}
	r.sqArray[i] = i
	r.queued++
	return true
}

// Submit hands everything queued to the kernel in one system call; it
// completes during the call (MSG_DONTWAIT). Completions reports it.
func (r *Ring) Submit() error {
	n := r.queued
	if n == 0 {
		return nil
	}
	atomic.StoreUint32(r.sqTail, atomic.LoadUint32(r.sqTail)+n)
	r.queued = 0
	for n > 0 {
		done, _, errno := unix.RawSyscall6(sysEnter, uintptr(r.fd), uintptr(n), 0, 0, 0, 0)
		switch errno {
		case 0:
			n -= uint32(done)
			r.pending += int(done)
		case unix.EINTR:
		default:
			// The entries not taken stay in the ring: the next Submit
			// hands them over with its own.
			r.queued = n
			atomic.StoreUint32(r.sqTail, atomic.LoadUint32(r.sqTail)-n)
			return fmt.Errorf("io_uring_enter: %w", errno)
		}
	}
	return nil
}

// Completions calls f for every send and receive completed since the last
// call, with its tag and its result: the bytes sent or received, or a
// negated errno.
func (r *Ring) Completions(f func(tag uint64, res int32)) {
	head := atomic.LoadUint32(r.cqHead)
	tail := atomic.LoadUint32(r.cqTail)
	for ; head != tail; head++ {
		c := r.cqes[head&r.cqMask]
		r.pending--
		f(c.userData, c.res)
	}
	atomic.StoreUint32(r.cqHead, head)
}

// Pending is the number of operations submitted whose completion Completions
// has not delivered yet: 0 after Submit and Completions, unless the kernel
// left one running.
func (r *Ring) Pending() int { return r.pending }

// Close releases the ring.
func (r *Ring) Close() error {
	if r.sqeMem != nil {
		unix.Munmap(r.sqeMem)
	}
	if r.rings != nil {
		unix.Munmap(r.rings)
	}
	return unix.Close(r.fd)
}

// Fd is the ring's descriptor: readable (in epoll) when a completion is ready.
func (r *Ring) Fd() int { return r.fd }
