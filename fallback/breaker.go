package fallback

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// State is the breaker's state. Its numeric values (0 closed, 1 half-open,
// 2 open) are what a gauge should export.
type State int32

// The breaker's states.
const (
	Closed State = iota
	HalfOpen
	Open
)

// String gives the name shown in INFO and logs.
func (s State) String() string {
	switch s {
	case Closed:
		return "closed"
	case HalfOpen:
		return "half-open"
	case Open:
		return "open"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Breaker guards upstream. It is safe for concurrent use.
//
// It is the classic three-state breaker (as sony/gobreaker's, which it
// replaces): it opens after FailureThreshold consecutive failures, lets
// HalfOpenProbes probes through after OpenTimeout, closes when they all
// succeed and opens again when one fails. It is written for the data path:
// while closed, Allow and a successful Done are a few atomic loads, with no
// lock and no allocation (gobreaker's two-step API allocated a closure per
// request). Every transition starts a new generation; the outcome of a
// request let through in an older one is ignored.
type Breaker struct {
	threshold int32
	probes    int32
	timeout   time.Duration
	onChange  func(from, to State)
	now       func() time.Time

	state    atomic.Int32  // a State; written under mu
	gen      atomic.Uint64 // the generation; written under mu
	failures atomic.Int32  // consecutive failures while closed

	mu        sync.Mutex
	openedAt  time.Time
	inFlight  int32 // half-open: probes let through
	succeeded int32 // half-open: probes that succeeded
}

// Ticket is a request let through by Allow; give it to Done.
type Ticket struct{ gen uint64 }

// NewBreaker builds a breaker from cfg's breaker settings. onChange, when not
// nil, is called on every transition (for INFO, a gauge, a log line). It
// runs under the breaker's lock, so it must be quick and must not call back
// into the Breaker. Transitions from open to half-open happen lazily, on the
// first Allow or State after OpenTimeout.
func NewBreaker(cfg Config, onChange func(from, to State)) (*Breaker, error) {
	if err := cfg.validateBreaker(); err != nil {
		return nil, err
	}
	b := &Breaker{
		threshold: int32(min(cfg.FailureThreshold, 1<<30)),
		probes:    int32(min(cfg.HalfOpenProbes, 1<<30)),
		timeout:   cfg.OpenTimeout,
		onChange:  onChange,
		now:       time.Now,
	}
	b.gen.Store(1)
	return b, nil
}

// Allow asks whether a request may go upstream. If it may, Done must be
// called exactly once with the ticket and the request's outcome. A ticket
// never given back leaves a half-open breaker waiting for its probe until
// the next transition, so call Done on every path. Otherwise err is
// ErrOpen: the breaker is open, or half-open with all its probes in flight.
func (b *Breaker) Allow() (Ticket, error) {
	if State(b.state.Load()) == Closed {
		return Ticket{gen: b.gen.Load()}, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advanceLocked()
	switch State(b.state.Load()) {
	case Closed:
		return Ticket{gen: b.gen.Load()}, nil
	case HalfOpen:
		if b.inFlight < b.probes {
			b.inFlight++
			return Ticket{gen: b.gen.Load()}, nil
		}
	}
	return Ticket{}, ErrOpen
}

// Done reports the outcome of a request Allow let through: success false
// only for an upstream connection failure (refused, reset, timed out), true
// otherwise, including for Redis error replies, which prove upstream alive.
func (b *Breaker) Done(t Ticket, success bool) {
	if t.gen != b.gen.Load() {
		return // let through before a transition: no longer counts
	}
	if success && State(b.state.Load()) == Closed {
		if b.failures.Load() != 0 {
			b.failures.Store(0)
		}
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if t.gen != b.gen.Load() {
		return
	}
	switch State(b.state.Load()) {
	case Closed:
		if !success && b.failures.Add(1) >= b.threshold {
			b.setLocked(Open)
		}
	case HalfOpen:
		switch {
		case !success:
			b.setLocked(Open)
		case b.succeeded+1 >= b.probes:
			b.setLocked(Closed)
		default:
			b.succeeded++
		}
	}
}

// State returns the current state.
func (b *Breaker) State() State {
	if s := State(b.state.Load()); s != Open {
		return s
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advanceLocked()
	return State(b.state.Load())
}

// Reset closes an open or half-open breaker at once, with its failure count
// cleared, as if the open timeout had passed and every probe had succeeded.
// It is for a caller that has seen upstream serve again by its own means (a
// probe on a connection of its own), so that clients need not wait out the
// open timeout. It reports whether it closed the breaker (false: it was
// closed already, and nothing changed); onChange is told of the transition.
// Outcomes of requests let through before the Reset no longer count.
func (b *Breaker) Reset() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if State(b.state.Load()) == Closed {
		return false
	}
	b.setLocked(Closed)
	return true
}

// advanceLocked moves an open breaker whose timeout has passed to half-open.
func (b *Breaker) advanceLocked() {
	if State(b.state.Load()) == Open && b.now().Sub(b.openedAt) >= b.timeout {
		b.setLocked(HalfOpen)
	}
}

// setLocked makes to the state of a new generation.
func (b *Breaker) setLocked(to State) {
	from := State(b.state.Load())
	b.gen.Add(1)
	b.failures.Store(0)
	b.inFlight, b.succeeded = 0, 0
	if to == Open {
		b.openedAt = b.now()
	}
	b.state.Store(int32(to))
	if b.onChange != nil {
		b.onChange(from, to)
	}
}
