package upstream

import (
	"context"
	"os"
	"testing"
	"time"
)

// countingTrip times out its first fails calls, then succeeds.
type countingTrip struct{ calls, fails int }

func (c *countingTrip) RoundTrip(_ context.Context, b *Batch, _ []byte, n int) error {
	c.calls++
	b.Reset(n)
	if c.calls <= c.fails {
		return &Error{Err: os.ErrDeadlineExceeded}
	}
	return nil
}

// RetryReads sends a timed-out batch of reads again, at most Retries times,
// and never a batch with a write.
func TestRetryReads(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		readOnly  bool
		fails     int
		wantCalls int
		wantErr   bool
	}{
		{"reads that time out once", true, 1, 2, false},
		{"reads that keep timing out", true, 5, 3, true},
		{"a write is never sent again", false, 1, 1, true},
		{"no timeout, no retry", true, 0, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next := &countingTrip{fails: tc.fails}
			r := &RetryReads{Next: next, Retries: 2, Backoff: time.Millisecond}
			b := NewBatch()
			b.ReadOnly = tc.readOnly
			err := r.RoundTrip(ctx, b, nil, 1)
			if next.calls != tc.wantCalls || (err != nil) != tc.wantErr {
				t.Fatalf("%d calls, err %v; want %d calls, error %v", next.calls, err, tc.wantCalls, tc.wantErr)
			}
		})
	}
}
