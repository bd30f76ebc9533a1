package upstream

import (
	"errors"
	"sync"
	"sync/atomic"
)

// Pool holds every connection to upstream, by Key: for each a Group of a
// few shared multiplexed connections and a bounded pool of pinned ones,
// with one pin/unpin/reserve API for transactions, blocking commands and
// subscribers. Groups exist only for keys a caller asked for (SELECT checks
// a database exists first), and a group no session holds and no command
// reaches goes (Reap).
type Pool struct {
	cfg       *Config
	shared    int // shared connections per group
	maxPinned int // pinned connections per group, at most

	mu      sync.Mutex
	groups  map[Key]*Group
	closing bool
}

// NewPool returns a pool of connections to cfg's upstream: shared
// multiplexed connections per key, and at most maxPinned pinned ones.
func NewPool(cfg *Config, shared, maxPinned int) *Pool {
	return &Pool{cfg: cfg, shared: max(shared, 1), maxPinned: maxPinned, groups: make(map[Key]*Group)}
}

// Group holds the connections set up for one Key.
type Group struct {
	pool   *Pool
	key    Key
	shared []*Conn
	next   atomic.Uint32
	refs   int    // holders (Acquire); guarded by Pool.mu
	seen   uint64 // batches sent on its shared connections at the last reaping

	mu     sync.Mutex
	idle   []*Conn // pinned connections free for reuse
	pinned int     // pinned connections handed out, reserved or idle
}

// Group returns the group of key, made on first use, without holding it:
// for one-off use (a probe, /readyz) by a caller that tolerates its reaping.
func (p *Pool) Group(key Key) *Group {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.groupLocked(key)
}

// Acquire is Group for a caller that keeps using the group until it calls
// Release: a group held is never reaped.
func (p *Pool) Acquire(key Key) *Group {
	p.mu.Lock()
	defer p.mu.Unlock()
	g := p.groupLocked(key)
	g.refs++
	return g
}

// Release lets go of a group taken with Acquire.
func (p *Pool) Release(g *Group) {
	p.mu.Lock()
	g.refs--
	p.mu.Unlock()
}

func (p *Pool) groupLocked(key Key) *Group {
	g := p.groups[key]
	if g == nil {
		g = &Group{pool: p, key: key}
		for range p.shared {
			c := NewConn(p.cfg, key)
			c.timeout = p.cfg.Timeout
			g.shared = append(g.shared, c)
		}
		p.groups[key] = g
	}
	return g
}

// Reap closes the groups that nobody holds and that carried no command
// since the previous call, except those keep says to keep (the configured
// database's: /readyz and new clients use them). It returns how many went.
func (p *Pool) Reap(keep func(Key) bool) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return 0
	}
	reaped := 0
	for key, g := range p.groups {
		if keep(key) {
			continue
		}
		sent, busy := g.activity()
		if g.refs == 0 && !busy && sent == g.seen {
			delete(p.groups, key)
			go g.close()
			reaped++
			continue
		}
		g.seen = sent
	}
	return reaped
}

// Len is the number of groups.
func (p *Pool) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.groups)
}

// Pinned is the number of pinned connections handed out, reserved or idle.
func (p *Pool) Pinned() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, g := range p.groups {
		g.mu.Lock()
		n += g.pinned
		g.mu.Unlock()
	}
	return n
}

// PinnedIdle is the number of pinned connections idle, ready for reuse.
func (p *Pool) PinnedIdle() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, g := range p.groups {
		g.mu.Lock()
		n += len(g.idle)
		g.mu.Unlock()
	}
	return n
}

// Close closes every connection; waiting batches fail.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closing = true
	groups := p.groups
	p.groups = make(map[Key]*Group)
	p.mu.Unlock()
	for _, g := range groups {
		g.close()
	}
}

// Key is what the group's connections are set up for.
func (g *Group) Key() Key { return g.key }

// activity sums the commands ever sent on the group's shared connections
// and says whether any of its connections is in use now.
func (g *Group) activity() (sent uint64, busy bool) {
	for _, c := range g.shared {
		c.mu.Lock()
		sent += c.sent
		busy = busy || c.waiting() > 0
		c.mu.Unlock()
	}
	g.mu.Lock()
	busy = busy || g.pinned > 0
	g.mu.Unlock()
	return sent, busy
}

// Shared picks one of the group's shared connections; a session keeps it,
// so the load spreads by session.
func (g *Group) Shared() *Conn {
	return g.shared[int(g.next.Add(1))%len(g.shared)]
}

// ErrTooManyPinned is the client's error when the pinned budget is spent.
var ErrTooManyPinned = errors.New("ERR keyfence: too many pinned upstream connections (--max-pinned); try again later")

// Pin hands out a connection for one session's exclusive use (MULTI,
// WATCH, blocking commands); give it back with Unpin.
func (g *Group) Pin() (*Conn, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if n := len(g.idle); n > 0 {
		c := g.idle[n-1]
		g.idle = g.idle[:n-1]
		return c, nil
	}
	if g.pinned >= g.pool.maxPinned {
		return nil, ErrTooManyPinned
	}
	g.pinned++
	return NewConn(g.pool.cfg, g.key), nil
}

// Unpin takes a pinned connection back. clean says the session left it with
// no transaction, WATCH or blocked command: only then may it be reused.
func (g *Group) Unpin(c *Conn, clean bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if clean && c.Idle() && len(g.idle) < 64 {
		g.idle = append(g.idle, c)
		return
	}
	g.pinned--
	go c.Close()
}

// Reserve counts a connection of the pinned budget that the caller dials
// and closes itself (subscriber mode); give it back with Unreserve.
func (g *Group) Reserve() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.pinned >= g.pool.maxPinned {
		return ErrTooManyPinned
	}
	g.pinned++
	return nil
}

// Unreserve returns what Reserve took.
func (g *Group) Unreserve() {
	g.mu.Lock()
	g.pinned--
	g.mu.Unlock()
}

func (g *Group) close() {
	for _, c := range g.shared {
		c.Close()
	}
	g.mu.Lock()
	for _, c := range g.idle {
		c.Close()
	}
	g.idle = nil
	g.mu.Unlock()
}
