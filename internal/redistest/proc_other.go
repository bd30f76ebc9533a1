//go:build !linux

package redistest

import "syscall"

// sysProcAttr has no parent-death signal outside Linux; Stop and t.Cleanup
// remain the way servers are ended there.
func sysProcAttr() *syscall.SysProcAttr { return nil }
