//go:build linux

package nodetest

import (
	"os/exec"
	"syscall"
)

// inOwnProcessGroup makes node the leader of a new process group, so that
// killGroup also ends the test processes `node --test` spawns, and has the
// kernel kill node when the test binary dies (-timeout, Ctrl-C).
func inOwnProcessGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// killGroup kills node's whole process group.
func killGroup(cmd *exec.Cmd) error {
	return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
}
