package fallback

import (
	"context"

	"github.com/keyfence/keyfence/upstream"
)

// Guard is a RoundTripper admitted by a Breaker: while the breaker is open
// nothing is sent and the batch fails with ErrOpen at once (its replies are
// all missing, for the read cache to answer); otherwise the batch goes to
// Next, and an upstream connection failure counts against the breaker.
type Guard struct {
	Next    upstream.RoundTripper
	Breaker *Breaker
}

// RoundTrip implements upstream.RoundTripper.
func (g *Guard) RoundTrip(ctx context.Context, b *upstream.Batch, req []byte, n int) error {
	t, err := g.Breaker.Allow()
	if err != nil {
		b.Reset(n) // nothing was sent
		return err
	}
	err = g.Next.RoundTrip(ctx, b, req, n)
	g.Breaker.Done(t, !upstream.IsConnectionFailure(err) && !upstream.IsConnectionFailure(b.Err))
	return err
}
