package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/keyfence/keyfence/resp"
)

// Config says how to reach and log in to the upstream Redis.
type Config struct {
	Addr        string
	Username    string
	Password    string
	DB          int
	TLS         *tls.Config // nil: plain TCP
	DialTimeout time.Duration
	// Cluster lists seed nodes of a Redis Cluster; when set, commands are
	// routed to the master of their key's slot (cluster.go).
	Cluster []string
	// Timeout bounds how long a batch on a shared connection may wait for
	// its replies; past it the connection is closed and every command on
	// it fails with a timeout. Zero: no bound. Pinned connections (blocking
	// commands, transactions, subscribers) are never bounded by it.
	Timeout time.Duration
	// Sentinel, when set, gives the address of every connection (the
	// current master) instead of Addr, which then only names it in logs.
	Sentinel *Sentinel
	// AssumeRestoreSanitized lets RESTORE through when keyfence cannot read
	// sanitize-dump-payload upstream (CONFIG GET refused): the operator
	// vouches that it is yes. An upstream that says no is never trusted.
	AssumeRestoreSanitized bool
	// TrackingLost, when set, is called when a connection that carried a
	// Batch with Tracks is lost: Redis forgets the keys that connection
	// read under client-side caching, so their invalidations will never
	// come. It is called with the connection's lock held and must not block.
	TrackingLost func()
}

// Key identifies what an upstream connection has been set up for: the
// logical database and the protocol version its replies come in. Sessions
// with the same key can share connections.
type Key struct {
	DB    int
	RESP3 bool
	Node  string // a Redis Cluster master's address; "" is Config.Addr
}

// Error wraps every failure to talk to upstream, so that the session can
// tell them from the client's own errors (and the breaker counts them).
type Error struct{ Err error }

func (e *Error) Error() string { return "upstream: " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Dial opens and prepares one upstream connection: AUTH, HELLO/SELECT.
func Dial(ctx context.Context, cfg *Config, key Key) (net.Conn, error) {
	if cfg.Sentinel != nil {
		// Asks the sentinels for the master, comes back here with its
		// address, then checks its role (sentinel.go).
		return cfg.Sentinel.Dial(ctx, *cfg, key)
	}
	if key.Node != "" && key.Node != cfg.Addr {
		c := *cfg
		c.Addr = key.Node
		cfg = &c
	}
	d := net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}
	var nc net.Conn
	var err error
	if cfg.TLS != nil {
		td := tls.Dialer{NetDialer: &d, Config: cfg.TLS}
		nc, err = td.DialContext(ctx, "tcp", cfg.Addr)
	} else {
		nc, err = d.DialContext(ctx, "tcp", cfg.Addr)
	}
	if err != nil {
		return nil, &Error{Err: fmt.Errorf("dial %s: %w", cfg.Addr, err)}
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	var req []byte
	var n int
	if key.RESP3 {
		args := [][]byte{[]byte("HELLO"), []byte("3")}
		if cfg.Password != "" {
			user := cfg.Username
			if user == "" {
				user = "default"
			}
			args = append(args, []byte("AUTH"), []byte(user), []byte(cfg.Password))
		}
		req = resp.AppendCommand(req, args...)
		n++
	} else if cfg.Password != "" {
		if cfg.Username != "" {
			req = resp.AppendCommand(req, []byte("AUTH"), []byte(cfg.Username), []byte(cfg.Password))
		} else {
			req = resp.AppendCommand(req, []byte("AUTH"), []byte(cfg.Password))
		}
		n++
	}
	if key.DB != 0 {
		req = resp.AppendCommand(req, []byte("SELECT"), []byte(strconv.Itoa(key.DB)))
		n++
	}
	if n == 0 && cfg.TLS != nil {
		// A TLS 1.3 server checks the client's certificate after the
		// client's side of the handshake is done: one round trip turns a
		// refusal into a dial error, before any client command is sent.
		req = resp.AppendCommand(req, []byte("PING"))
		n++
	}
	if n == 0 {
		return nc, nil
	}
	deadline := time.Now().Add(cfg.DialTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = nc.SetDeadline(deadline)
	defer nc.SetDeadline(time.Time{})
	if _, err := nc.Write(req); err != nil {
		if cfg.TLS != nil {
			// A TLS server that refused us sent its reason (an alert)
			// before it reset the connection; say that, not the reset.
			var op *net.OpError
			if _, rerr := nc.Read(make([]byte, 1)); errors.As(rerr, &op) && op.Op == "remote error" {
				err = rerr
			}
		}
		nc.Close()
		return nil, &Error{Err: fmt.Errorf("set up connection: %w", err)}
	}
	br := bufio.NewReader(nc)
	for i := 0; i < n; i++ {
		reply, err := resp.ReadReply(br)
		if err != nil {
			nc.Close()
			return nil, &Error{Err: fmt.Errorf("set up connection: %w", err)}
		}
		if reply[0] == '-' {
			nc.Close()
			return nil, &Error{Err: fmt.Errorf("set up connection: %s", trimCRLF(reply[1:]))}
		}
	}
	return nc, nil
}

func trimCRLF(b []byte) string {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return string(b)
}
