package telemetry

import (
	"context"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Batch records one session's batches: each command's outcome and error
// class, the upstream round trip, and the client-seen latency; with tracing
// on, one span per batch with the upstream round trip as its child. A
// session keeps one Batch and reuses it, so recording allocates nothing;
// it is not safe for concurrent use. Every method of a nil *Batch does
// nothing, which is how a proxy without metrics records.
//
// The order per batch: Upstream (when the batch went upstream), Command
// for each reply in the client's order, then Done.
type Batch struct {
	m        *Metrics
	blocking bool      // a blocking command: left out of the latency histogram
	commands int       // commands of the batch
	failed   int       // replies whose class is a server-side failure
	errs     int       // error replies of any class
	cause    string    // the upstream failure's cause, "" if none
	upStart  time.Time // the upstream round trip, for the child span
	upEnd    time.Time
	upCount  int
	names    []string // distinct command names, kept only while tracing
	// The last command name counted and its counters' index: a pipeline
	// is mostly one command over and over, and the map lookup had been
	// most of what counting cost.
	lastName  string
	lastIndex int
}

// maxSpanNames bounds the command names one span carries: a pipeline of
// ten thousand commands names at most this many distinct ones.
const maxSpanNames = 16

// NewBatch returns the recorder of one session; nil when m is nil.
func (m *Metrics) NewBatch() *Batch {
	if m == nil {
		return nil
	}
	return &Batch{m: m}
}

// Blocking marks the batch as one blocking command (BLPOP, XREAD BLOCK,
// WAIT…): it waits as long as the client asked, so its time says nothing
// about keyfence's latency and stays out of the histogram the latency alert
// reads. It is still counted and traced.
func (b *Batch) Blocking() {
	if b != nil {
		b.blocking = true
	}
}

// Upstream records the batch's upstream round trip, which began at start
// and ends now.
func (b *Batch) Upstream(_ context.Context, start time.Time) {
	if b == nil {
		return
	}
	now := time.Now()
	b.m.upstream.record(now.Sub(start))
	if b.upCount == 0 {
		b.upStart = start
	}
	b.upEnd = now
	b.upCount++
}

// UpstreamError counts an upstream failure by cause (see errorCauses) and
// marks the batch's upstream span failed.
func (b *Batch) UpstreamError(ctx context.Context, cause string) {
	if b == nil {
		return
	}
	b.m.UpstreamError(ctx, cause)
	b.cause = cause
}

// Command counts one command by name and by its reply as the client gets
// it: an error reply is counted by class too.
func (b *Batch) Command(name string, reply []byte) {
	if b == nil {
		return
	}
	ok := len(reply) == 0 || reply[0] != '-'
	if name != b.lastName || b.lastName == "" {
		b.lastName, b.lastIndex = name, b.m.commandIndex(name)
	}
	b.m.count(b.lastIndex, ok)
	b.commands++
	if !ok {
		c := errorClass(reply)
		b.m.classes[c].Add(1)
		b.errs++
		if serverClass[c] {
			b.failed++
		}
	}
	if b.m.tracer != nil && len(b.names) < maxSpanNames {
		if _, known := b.m.index[name]; !known {
			name = "other" // a span names only commands of the table
		}
		for _, n := range b.names {
			if n == name {
				return
			}
		}
		b.names = append(b.names, name)
	}
}

// Done ends the batch: it records the client-seen latency since readAt
// (unless the batch was a blocking command) and, with tracing on, the
// batch's spans. The Batch is ready for the next batch afterwards.
func (b *Batch) Done(ctx context.Context, readAt time.Time) {
	if b == nil {
		return
	}
	if b.commands > 0 || b.upCount > 0 {
		if !b.blocking {
			b.m.duration.record(time.Since(readAt))
		}
		if b.m.tracer != nil { // tracing off costs this one check
			b.span(ctx, readAt)
		}
	}
	b.blocking, b.commands, b.failed, b.errs, b.cause, b.upCount = false, 0, 0, 0, "", 0
	b.names = b.names[:0]
}

// span makes the batch's span, from readAt to now, and its upstream child.
// Spans carry command names, counts, the tenant and the outcome: never a
// key, a value or an argument.
func (b *Batch) span(ctx context.Context, readAt time.Time) {
	name := "PIPELINE"
	if b.commands == 1 && len(b.names) == 1 {
		name = strings.ToUpper(b.names[0])
	}
	outcome := "ok"
	if b.errs > 0 {
		outcome = "error"
	}
	ctx, sp := b.m.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer), trace.WithTimestamp(readAt),
		trace.WithAttributes(
			attribute.String("db.system.name", "redis"),
			attribute.String("keyfence.tenant", b.m.tenantID),
			attribute.StringSlice("keyfence.commands", b.names),
			attribute.Int("db.operation.batch.size", b.commands),
			attribute.String("keyfence.outcome", outcome),
			attribute.Int("keyfence.error_replies", b.errs),
			attribute.Bool("keyfence.blocking", b.blocking),
		))
	if !sp.IsRecording() {
		sp.End()
		return
	}
	if b.upCount > 0 {
		_, up := b.m.tracer.Start(ctx, "upstream "+name, trace.WithSpanKind(trace.SpanKindClient), trace.WithTimestamp(b.upStart),
			trace.WithAttributes(
				attribute.String("db.system.name", "redis"),
				attribute.Int("db.operation.batch.size", b.commands),
				attribute.Int("keyfence.round_trips", b.upCount),
			))
		if b.cause != "" {
			up.SetAttributes(attribute.String("error.type", b.cause))
			up.SetStatus(codes.Error, "upstream failure: "+b.cause)
		}
		up.End(trace.WithTimestamp(b.upEnd))
	}
	if b.failed > 0 {
		// Only failures on keyfence's or Redis's side: a client's own
		// WRONGTYPE is an error reply, not a failed request.
		sp.SetStatus(codes.Error, "replies failed on the server side")
	}
	sp.End()
}
