package fallback

import (
	"errors"
	"fmt"
	"time"
)

// Config holds the settings of the breaker and of the cache. The zero value
// is not usable: start from [Defaults].
type Config struct {
	// FailureThreshold is the number of consecutive upstream failures that
	// opens the breaker.
	FailureThreshold uint32
	// OpenTimeout is how long the breaker stays open before it lets probes
	// through (half-open).
	OpenTimeout time.Duration
	// HalfOpenProbes is the number of requests let through while half-open;
	// all of them must succeed to close the breaker.
	HalfOpenProbes uint32
	// TTL is the longest an entry is served (--fallback-ttl); an entry never
	// outlives its key's own TTL when that is known.
	TTL time.Duration
	// MaxBytes bounds the memory of the cache (--fallback-max-bytes).
	MaxBytes int64
}

// Defaults returns the documented defaults: open after 5 consecutive
// failures, half-open after 30 s with one probe, entries served for at most
// 30 s, 64 MiB of cache.
func Defaults() Config {
	return Config{
		FailureThreshold: 5,
		OpenTimeout:      30 * time.Second,
		HalfOpenProbes:   1,
		TTL:              30 * time.Second,
		MaxBytes:         64 << 20,
	}
}

// minMaxBytes keeps the cache large enough for its slot arrays and a
// few entries to make sense.
const minMaxBytes = 4 << 10

func (c Config) validateBreaker() error {
	var errs []error
	if c.FailureThreshold < 1 {
		errs = append(errs, errors.New("failure threshold must be at least 1"))
	}
	if c.OpenTimeout <= 0 {
		errs = append(errs, fmt.Errorf("open timeout must be positive, got %v", c.OpenTimeout))
	}
	if c.HalfOpenProbes < 1 {
		errs = append(errs, errors.New("half-open probes must be at least 1"))
	}
	return errors.Join(errs...)
}

func (c Config) validateCache() error {
	var errs []error
	if c.TTL <= 0 {
		errs = append(errs, fmt.Errorf("fallback TTL must be positive, got %v", c.TTL))
	}
	if c.MaxBytes < minMaxBytes {
		errs = append(errs, fmt.Errorf("fallback max bytes must be at least %d, got %d", minMaxBytes, c.MaxBytes))
	}
	return errors.Join(errs...)
}

// Validate reports every setting that is out of range.
func (c Config) Validate() error {
	return errors.Join(c.validateBreaker(), c.validateCache())
}

// The errors the proxy answers clients with; see the package documentation.
// Their Error() is the RESP error text without the leading "-".
var (
	// ErrOpen: the breaker is open (or half-open with its probes in flight),
	// so the request was not sent upstream.
	ErrOpen = errors.New("TRYAGAIN keyfence: upstream unavailable (circuit breaker open); retry later")
	// ErrMiss: upstream is unavailable and the cache has no fresh copy of
	// the reply to this read.
	ErrMiss = errors.New("TRYAGAIN keyfence: upstream unavailable and no fresh cached copy; retry later")
)
