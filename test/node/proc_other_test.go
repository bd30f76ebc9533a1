//go:build !linux

package nodetest

import "os/exec"

// inOwnProcessGroup does nothing outside Linux, where this project runs.
func inOwnProcessGroup(*exec.Cmd) {}

// killGroup kills node itself; the test processes it spawned stop at their
// own watchdog (see bullmq.test.mjs).
func killGroup(cmd *exec.Cmd) error { return cmd.Process.Kill() }
