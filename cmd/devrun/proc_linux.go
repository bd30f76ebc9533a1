//go:build linux

package main

import "syscall"

// childSysProcAttr puts keyfence in its own process group, so that Ctrl-C in
// the terminal reaches it once (forwarded by devrun) rather than twice (from
// the terminal and from devrun), which a graceful drain could read as "force
// quit"; and it has keyfence told to stop if devrun dies without forwarding.
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
