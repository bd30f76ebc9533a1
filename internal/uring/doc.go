// Package uring sends on many non-blocking sockets with one system call,
// through Linux's io_uring.
//
// Its one job is to make the event loop's writes to its clients cheaper:
// on the machines keyfence is measured on, a system call costs about 1 µs
// to enter and leave (page-table isolation without PCID) before any work,
// and a write to a loopback socket about 5 µs in all. A turn of the loop
// writes the replies of every client it served in that turn; queued here
// and submitted together, they cost one entry for all (2.5 µs a send
// instead of 5.1 µs in BenchmarkSend with 16 sockets).
//
// Every send carries MSG_DONTWAIT, so the kernel completes it during
// Submit, with the bytes it took or -EAGAIN, as write(2) on a non-blocking
// socket would; nothing is left running in the kernel after Submit, and a
// buffer is the caller's again once Submit returns. Should a completion be
// missing all the same, Pending says so and a later Completions delivers it.
//
// New fails where io_uring cannot be used (an older kernel, a seccomp
// profile that forbids it, kernel.io_uring_disabled): the caller then
// writes with write(2), as before.
package uring
