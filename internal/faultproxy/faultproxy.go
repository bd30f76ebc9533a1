package faultproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	// bufSize is the largest chunk read and forwarded in one go, per
	// direction; while a chunk is delayed or held, further data waits in the
	// kernel's socket buffers, so memory stays bounded.
	bufSize = 32 << 10
	// dialTimeout bounds the connection to the upstream; a loopback dial
	// either succeeds or is refused at once, so this only guards against
	// surprises.
	dialTimeout = 5 * time.Second
	// acceptBackoff is the pause after an accept error other than a closed
	// listener (e.g. EMFILE), so a persistent error does not spin.
	acceptBackoff = 10 * time.Millisecond
)

// ErrClosed is returned by SetMode after Close.
var ErrClosed = errors.New("faultproxy: closed")

type kind uint8

const (
	kindPass kind = iota
	kindDrop
	kindRefuse
	kindDelay
	kindBlackhole
	kindResetMidReply
)

// Mode is what the proxy does to traffic. Modes are comparable values; use the
// variables below or Delay. The zero Mode is Pass.
type Mode struct {
	kind  kind
	delay time.Duration
}

var (
	// Pass forwards traffic unchanged in both directions.
	Pass = Mode{kind: kindPass}
	// Drop closes every current connection (both sides, with a normal close:
	// the client reads EOF) and closes each new connection as soon as it is
	// accepted, like an upstream that died. The listener stays up, so dials
	// still succeed.
	Drop = Mode{kind: kindDrop}
	// Refuse closes the listener and every current connection: dials fail
	// with ECONNREFUSED. Any other mode listens again on the same port.
	Refuse = Mode{kind: kindRefuse}
	// Blackhole keeps connections open but forwards nothing in either
	// direction, not even a close; new connections are accepted (and
	// connected upstream) but never answered, so the client sees timeouts.
	// Nothing is lost: the chunk already read is held, the rest waits in
	// socket buffers, and all of it, then any close, is delivered in order
	// once the mode changes to one that forwards — like a network partition
	// that heals.
	Blackhole = Mode{kind: kindBlackhole}
	// ResetMidReply cuts the next chunk read from the upstream on any
	// connection: its first half is forwarded to the client and then both
	// sides of that connection are reset (SO_LINGER 0, so the peers see RST),
	// as when a connection is lost in the middle of a reply. The reset
	// discards whatever of that half the kernel had not sent yet; on loopback
	// it has normally all gone. It is one-shot: the proxy switches itself
	// back to Pass as it cuts, so a test's retry or reconnect goes through.
	// Traffic from client to upstream passes until the cut, and other
	// connections are untouched.
	ResetMidReply = Mode{kind: kindResetMidReply}
)

// Delay returns the mode that forwards each chunk, in both directions, d after
// it was read, preserving order. A request and its reply are each delayed, so
// a round trip takes at least 2*d longer. The delay is per chunk (at most 32
// KiB) on one goroutine per direction, so it also caps throughput; it models
// latency, not bandwidth. Delay(d) with d <= 0 is Pass.
func Delay(d time.Duration) Mode {
	if d <= 0 {
		return Pass
	}
	return Mode{kind: kindDelay, delay: d}
}

// String names the mode, e.g. "pass" or "delay(50ms)".
func (m Mode) String() string {
	switch m.kind {
	case kindPass:
		return "pass"
	case kindDrop:
		return "drop"
	case kindRefuse:
		return "refuse"
	case kindDelay:
		return fmt.Sprintf("delay(%s)", m.delay)
	case kindBlackhole:
		return "blackhole"
	case kindResetMidReply:
		return "reset-mid-reply"
	}
	return fmt.Sprintf("mode(%d)", m.kind)
}

// Stats counts what the proxy did since New.
type Stats struct {
	// Accepted is the number of client connections accepted, including those
	// closed at once under Drop.
	Accepted int64
	// ToUpstream and ToClient are the bytes written to the upstream and to
	// clients.
	ToUpstream int64
	ToClient   int64
	// Resets is the number of connections cut by ResetMidReply.
	Resets int64
}

// Proxy forwards connections from its loopback address to one upstream and
// injects the faults of its current Mode. Each connection is forwarded by one
// goroutine per direction; when either side ends or fails, both are closed
// (there is no half-close). Its methods are safe for concurrent use.
type Proxy struct {
	upstream string
	addr     string // fixed for the proxy's life, also across Refuse
	ctx      context.Context
	cancel   context.CancelFunc // cancelled by Close
	wg       sync.WaitGroup     // accept loops and connection goroutines

	mu      sync.Mutex
	mode    Mode
	changed chan struct{} // closed and replaced on every mode change
	ln      net.Listener  // nil under Refuse and after Close
	links   map[*link]struct{}
	closed  bool

	accepted, toUpstream, toClient, resets atomic.Int64
}

// New listens on 127.0.0.1 on a free port and forwards each connection it
// accepts to upstream, which must be a loopback "host:port" ("localhost" or a
// loopback IP). The proxy starts in Pass; Close stops it.
func New(upstream string) (*Proxy, error) {
	host, _, err := net.SplitHostPort(upstream)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: upstream %q: %w", upstream, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("faultproxy: upstream %q is not a loopback address", upstream)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		upstream: upstream,
		addr:     ln.Addr().String(),
		ctx:      ctx,
		cancel:   cancel,
		mode:     Pass,
		changed:  make(chan struct{}),
		ln:       ln,
		links:    make(map[*link]struct{}),
	}
	p.wg.Add(1)
	go p.acceptLoop(ln)
	return p, nil
}

// StartT is New for a test: it fails t when the proxy cannot start and
// closes the proxy when the test ends.
func StartT(t testing.TB, upstream string) *Proxy {
	t.Helper()
	p, err := New(upstream)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// Addr is the proxy's address, "127.0.0.1:port"; it does not change, not even
// across Refuse.
func (p *Proxy) Addr() string { return p.addr }

// Upstream is the address connections are forwarded to.
func (p *Proxy) Upstream() string { return p.upstream }

// Mode is the current mode (Pass again once a ResetMidReply has fired).
func (p *Proxy) Mode() Mode {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode
}

// Stats returns the counters.
func (p *Proxy) Stats() Stats {
	return Stats{
		Accepted:   p.accepted.Load(),
		ToUpstream: p.toUpstream.Load(),
		ToClient:   p.toClient.Load(),
		Resets:     p.resets.Load(),
	}
}

// SetMode switches to m for new and existing connections at once. Drop and
// Refuse have closed the current connections when it returns. Leaving Refuse
// listens again on the same port; the only error, besides ErrClosed, is that
// listen failing (another socket took the port meanwhile), in which case the
// mode stays Refuse.
func (p *Proxy) SetMode(m Mode) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return ErrClosed
	}
	var (
		oldLn net.Listener
		drop  []*link
	)
	switch {
	case m.kind == kindRefuse:
		oldLn, p.ln = p.ln, nil
	case p.ln == nil:
		ln, err := net.Listen("tcp", p.addr)
		if err != nil {
			p.mu.Unlock()
			return fmt.Errorf("faultproxy: listen again on %s: %w", p.addr, err)
		}
		p.ln = ln
		p.wg.Add(1)
		go p.acceptLoop(ln)
	}
	if m.kind == kindDrop || m.kind == kindRefuse {
		for l := range p.links {
			drop = append(drop, l)
		}
	}
	p.setModeLocked(m)
	p.mu.Unlock()

	if oldLn != nil {
		_ = oldLn.Close() // the accept loop ends on the error this causes
	}
	for _, l := range drop {
		l.close(false)
	}
	return nil
}

// setModeLocked sets the mode and wakes the connections waiting for a change.
func (p *Proxy) setModeLocked(m Mode) {
	p.mode = m
	close(p.changed)
	p.changed = make(chan struct{})
}

// Close stops listening, closes every connection the proxy accepted or made
// and waits for all its goroutines. It is idempotent.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	ln := p.ln
	p.ln = nil
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	p.mu.Unlock()

	p.cancel() // wakes held and delayed chunks, pending dials and backoffs
	var err error
	if ln != nil {
		err = ln.Close()
	}
	for _, l := range links {
		l.close(false)
	}
	p.wg.Wait()
	return err
}

// current returns the mode and the channel closed when it next changes.
func (p *Proxy) current() (Mode, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode, p.changed
}

// claimReset tells whether the caller is the one connection that cuts its
// chunk for ResetMidReply, and switches the proxy back to Pass if so.
func (p *Proxy) claimReset() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mode.kind != kindResetMidReply {
		return false
	}
	p.setModeLocked(Pass)
	return true
}

func (p *Proxy) acceptLoop(ln net.Listener) {
	defer p.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			select {
			case <-p.ctx.Done():
				return
			case <-time.After(acceptBackoff):
			}
			continue
		}
		p.accepted.Add(1)

		p.mu.Lock()
		if p.closed || p.mode.kind == kindDrop || p.mode.kind == kindRefuse {
			// Refuse: accepted by a listener SetMode is about to close.
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		ctx, cancel := context.WithCancel(p.ctx)
		l := &link{p: p, client: c, ctx: ctx, cancel: cancel}
		p.links[l] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go l.run()
	}
}

// link is one client connection and its upstream connection.
type link struct {
	p      *Proxy
	client net.Conn
	ctx    context.Context // done once the link is closed
	cancel context.CancelFunc

	once     sync.Once
	upstream net.Conn // set under p.mu once dialled; nil before
}

// run dials the upstream, then forwards client to upstream on this goroutine
// and upstream to client on a second one.
func (l *link) run() {
	defer l.p.wg.Done()
	d := net.Dialer{Timeout: dialTimeout}
	up, err := d.DialContext(l.ctx, "tcp", l.p.upstream)
	if err != nil {
		l.close(false) // to the client, a dead upstream
		return
	}
	l.p.mu.Lock()
	if l.ctx.Err() != nil { // closed while dialling
		l.p.mu.Unlock()
		_ = up.Close()
		return
	}
	l.upstream = up
	l.p.wg.Add(1)
	l.p.mu.Unlock()

	go func() {
		defer l.p.wg.Done()
		l.pump(l.upstream, l.client, true)
	}()
	l.pump(l.client, l.upstream, false)
}

// pump copies src to dst chunk by chunk, applying the mode to each chunk, and
// closes the link when either side fails or ends.
func (l *link) pump(src, dst net.Conn, toClient bool) {
	defer l.close(false)
	buf := make([]byte, bufSize)
	for {
		n, err := src.Read(buf)
		if n > 0 && !l.forward(dst, buf[:n], toClient) {
			return
		}
		if err != nil {
			l.holdWhileBlackhole() // a partition hides the close as well
			return
		}
	}
}

// holdWhileBlackhole returns once the mode is not Blackhole or the link is
// closed.
func (l *link) holdWhileBlackhole() {
	for {
		m, changed := l.p.current()
		if m.kind != kindBlackhole {
			return
		}
		select {
		case <-changed:
		case <-l.ctx.Done():
			return
		}
	}
}

// forward writes chunk b to dst as the current mode says and tells whether the
// link is still usable.
func (l *link) forward(dst net.Conn, b []byte, toClient bool) bool {
	delayed := false
	for {
		m, changed := l.p.current()
		switch m.kind {
		case kindDrop, kindRefuse:
			return false // SetMode is closing this link
		case kindBlackhole:
			select {
			case <-changed:
				continue
			case <-l.ctx.Done():
				return false
			}
		case kindDelay:
			if !delayed {
				delayed = true
				t := time.NewTimer(m.delay)
				select {
				case <-t.C:
				case <-l.ctx.Done():
					t.Stop()
					return false
				}
				continue // the mode may have changed while waiting
			}
		case kindResetMidReply:
			if toClient && l.p.claimReset() {
				l.write(dst, b[:len(b)/2], toClient)
				l.p.resets.Add(1)
				l.close(true)
				return false
			}
		}
		return l.write(dst, b, toClient)
	}
}

// write writes b to dst and counts what was written.
func (l *link) write(dst net.Conn, b []byte, toClient bool) bool {
	n, err := dst.Write(b)
	if toClient {
		l.p.toClient.Add(int64(n))
	} else {
		l.p.toUpstream.Add(int64(n))
	}
	return err == nil
}

// close closes both connections once; with reset, they are aborted with RST
// instead of a normal close.
func (l *link) close(reset bool) {
	l.once.Do(func() {
		l.cancel()
		l.p.mu.Lock()
		delete(l.p.links, l)
		up := l.upstream
		l.p.mu.Unlock()
		for _, c := range []net.Conn{l.client, up} {
			if c == nil {
				continue
			}
			if tc, ok := c.(*net.TCPConn); ok && reset {
				_ = tc.SetLinger(0)
			}
			_ = c.Close()
		}
	})
}
