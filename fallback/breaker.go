package fallback

import (
	"errors"
	"fmt"

	"github.com/sony/gobreaker/v2"
)

// State is the breaker's state. Its numeric values (0 closed, 1 half-open,
// 2 open) are what a gauge should export.
type State int

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

func stateOf(s gobreaker.State) State {
	switch s {
	case gobreaker.StateHalfOpen:
		return HalfOpen
	case gobreaker.StateOpen:
		return Open
	}
	return Closed
}

// Breaker guards upstream. It is safe for concurrent use.
type Breaker struct {
	// The type parameter is unused: the two-step breaker only gates and
	// counts, it never carries results.
	cb *gobreaker.TwoStepCircuitBreaker[struct{}]
}

// errFailure is what done(false) reports to gobreaker: any non-nil error
// counts as a failure there.
var errFailure = errors.New("upstream connection failure")

// NewBreaker builds a breaker from cfg's breaker settings. onChange, when not
// nil, is called on every transition (for INFO, a gauge, a log line). It runs
// synchronously under the breaker's lock, so it must be quick and must not
// call back into the Breaker. Transitions from open to half-open happen
// lazily, on the first Allow or State after OpenTimeout.
func NewBreaker(cfg Config, onChange func(from, to State)) (*Breaker, error) {
	if err := cfg.validateBreaker(); err != nil {
		return nil, err
	}
	threshold := cfg.FailureThreshold
	st := gobreaker.Settings{
		Name:        "upstream",
		MaxRequests: cfg.HalfOpenProbes,
		Timeout:     cfg.OpenTimeout,
		// Interval 0: counts are never reset while closed, so only the
		// consecutive-failure streak (which any success breaks) matters.
		Interval: 0,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return c.ConsecutiveFailures >= threshold
		},
	}
	if onChange != nil {
		st.OnStateChange = func(_ string, from, to gobreaker.State) {
			onChange(stateOf(from), stateOf(to))
		}
	}
	return &Breaker{cb: gobreaker.NewTwoStepCircuitBreaker[struct{}](st)}, nil
}

// Allow asks whether a request may go upstream. If it may, done must be
// called exactly once with its outcome: false only for an upstream
// connection failure (refused, reset, timed out), true otherwise, including
// for Redis error replies. A done that is never called leaves a half-open
// breaker waiting for its probe forever, so call it on every path.
// Otherwise err is ErrOpen: the breaker is open, or half-open with all its
// probes in flight.
func (b *Breaker) Allow() (done func(success bool), err error) {
	report, err := b.cb.Allow()
	if err != nil {
		return nil, ErrOpen
	}
	return func(success bool) {
		if success {
			report(nil)
		} else {
			report(errFailure)
		}
	}, nil
}

// State returns the current state.
func (b *Breaker) State() State {
	return stateOf(b.cb.State())
}
