// Package sentineltest is a fake Redis Sentinel for tests: it answers
// SENTINEL get-master-addr-by-name for the master "mymaster" with whatever
// address a test sets, so that tests can make a failover happen at will.
package sentineltest

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/keyfence/keyfence/resp"
)

// Fake answers SENTINEL get-master-addr-by-name with Master (nil: no such
// master) and counts the queries.
type Fake struct {
	ln       net.Listener
	password string
	Master   atomic.Pointer[string]
	Queries  atomic.Int64
}

// Start listens on a free loopback port until the test ends. password, when
// not empty, must be given with AUTH; master is the first answer ("": none).
func Start(t testing.TB, password, master string) *Fake {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &Fake{ln: ln, password: password}
	if master != "" {
		f.Master.Store(&master)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go f.serve(nc)
		}
	}()
	return f
}

// Addr is the address the fake listens on.
func (f *Fake) Addr() string { return f.ln.Addr().String() }

func (f *Fake) serve(nc net.Conn) {
	defer nc.Close()
	br := bufio.NewReader(nc)
	authed := f.password == ""
	for {
		v, err := resp.ReadValue(br)
		if err != nil || v.Type != '*' || len(v.Elems) == 0 {
			return
		}
		args := make([]string, len(v.Elems))
		for i, e := range v.Elems {
			args[i] = string(e.Str)
		}
		var reply string
		switch strings.ToUpper(args[0]) {
		case "AUTH":
			if len(args) == 2 && args[1] == f.password {
				authed, reply = true, "+OK\r\n"
			} else {
				reply = "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
			}
		case "SENTINEL":
			switch {
			case !authed:
				reply = "-NOAUTH Authentication required.\r\n"
			case len(args) != 3 || !strings.EqualFold(args[1], "get-master-addr-by-name"):
				reply = "-ERR unexpected\r\n"
			default:
				f.Queries.Add(1)
				if m := f.Master.Load(); m != nil && args[2] == "mymaster" {
					host, port, _ := net.SplitHostPort(*m)
					reply = fmt.Sprintf("*2\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", len(host), host, len(port), port)
				} else {
					reply = "*-1\r\n"
				}
			}
		default:
			reply = "-ERR unknown command\r\n"
		}
		if _, err := nc.Write([]byte(reply)); err != nil {
			return
		}
	}
}
