package upstream

import (
	"context"
	"errors"
	"net"
	"os"
	"time"
)

// RoundTripper sends one batch of requests (req holds n commands) and waits
// until its n replies are in b or the connection failed, like net/http's
// RoundTripper for one request. It never retries: a command may have
// reached Redis. *Conn is one; the proxy applies the breaker and the retry
// of timed-out reads around it.
type RoundTripper interface {
	RoundTrip(ctx context.Context, b *Batch, req []byte, n int) error
}

var _ RoundTripper = (*Conn)(nil)

// IsConnectionFailure tells an upstream that is unreachable or went away
// (what the breaker counts) from anything else.
func IsConnectionFailure(err error) bool {
	if err == nil {
		return false // before ue: errors.As would move it to the heap on every call
	}
	var ue *Error
	return errors.As(err, &ue)
}

// IsTimeout reports whether upstream failed by not answering in time.
func IsTimeout(err error) bool {
	if err == nil {
		return false // before ne: errors.As would move it to the heap on every call
	}
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// MayRetry says whether batch b, which failed with err, may be sent again:
// only a batch of reads (b.ReadOnly) that timed out. A batch with a write
// may have been applied.
func MayRetry(b *Batch, err error) bool { return b.ReadOnly && IsTimeout(err) }

// RetryReads is a RoundTripper that sends a batch of reads only (b.ReadOnly)
// again when it timed out, after a short backoff (retry × Backoff): reads
// change nothing, so a copy that did reach Redis does no harm. A batch with
// a write is never sent again.
type RetryReads struct {
	Next    RoundTripper
	Retries int
	Backoff time.Duration
}

// RoundTrip implements RoundTripper.
func (r *RetryReads) RoundTrip(ctx context.Context, b *Batch, req []byte, n int) error {
	err := r.Next.RoundTrip(ctx, b, req, n)
	for retry := 1; retry <= r.Retries && MayRetry(b, err); retry++ {
		t := time.NewTimer(time.Duration(retry) * r.Backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		err = r.Next.RoundTrip(ctx, b, req, n)
	}
	return err
}
