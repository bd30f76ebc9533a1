//go:build linux

package redistest

import "syscall"

// sysProcAttr asks the kernel to kill redis-server when the process that
// started it dies, so a test binary killed by -timeout or Ctrl-C does not leave
// servers running. (Pdeathsig follows the starting OS thread; the Go runtime
// only retires threads of goroutines that exit while locked to their thread,
// which Start never does.)
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
