//go:build !linux

package main

import "syscall"

// childSysProcAttr: outside Linux keyfence shares devrun's process group, so a
// Ctrl-C in the terminal reaches it twice (from the terminal and forwarded);
// devrun is a Linux development tool and does not try harder there.
func childSysProcAttr() *syscall.SysProcAttr { return nil }
