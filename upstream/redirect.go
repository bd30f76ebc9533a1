package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/keyfence/keyfence/resp"
)

// Redirects is the RoundTripper of a Redis Cluster: it sends the batch on
// Next, the connection of the node the proxy routed it to, then follows
// every MOVED or ASK reply. Either says the command did not run there, so it
// is sent again, alone, on the shared connection of the node the reply
// names, and that node's reply takes the redirect's place in the batch;
// MOVED also has the slot map refreshed. A failed redirect does not fail
// the batch: its reply is Failed's, and the other replies stand.
//
// EXEC's reply is never followed: its commands were queued on Next, and
// an EXEC alone on another connection would not run them.
type Redirects struct {
	Next  RoundTripper
	Slots *ClusterMap // refreshed on MOVED
	Pool  *Pool       // where the named node's shared connection is
	RESP3 bool        // the protocol of that connection: the client's
	// Failed is the reply put in place of a redirect that could not be
	// followed (the node did not answer); nil gives Redis's -ERR form.
	Failed func(error) []byte
}

// RoundTrip implements RoundTripper.
func (r *Redirects) RoundTrip(ctx context.Context, b *Batch, req []byte, n int) error {
	err := r.Next.RoundTrip(ctx, b, req, n)
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || b.Overflow {
		// A batch given up on may still be written to by Next's reader;
		// an overflowed one holds no replies.
		return err
	}
	reqs := requests{buf: req}
	for i := range n {
		reply := b.Reply(i)
		if len(reply) == 0 || reply[0] != '-' {
			continue // the common case, before any parsing
		}
		rd, ok := parseRedirect(reply)
		if !ok {
			continue
		}
		cmd, ferr := reqs.at(i)
		if ferr != nil || isExec(cmd) {
			continue
		}
		b.Replace(i, r.follow(ctx, rd, cmd))
	}
	return err
}

// follow sends cmd where rd says and returns that node's reply.
func (r *Redirects) follow(ctx context.Context, rd redirect, cmd []byte) []byte {
	if !rd.ask {
		r.Slots.RefreshNow(ctx)
	}
	conn := r.Pool.Group(Key{RESP3: r.RESP3, Node: rd.addr}).Shared()
	b := NewBatch()
	out, n := cmd, 1
	if rd.ask {
		// ASKING and the command go out back to back in one write, so no
		// other client's command can come between them.
		out = append(resp.AppendCommand(nil, []byte("ASKING")), cmd...)
		n = 2
	}
	if err := conn.RoundTrip(ctx, b, out, n); err != nil {
		err = fmt.Errorf("following %s to %s: %w", rd.kind(), rd.addr, err)
		if r.Failed != nil {
			return r.Failed(err)
		}
		return resp.AppendError(nil, "ERR "+err.Error())
	}
	return b.Reply(n - 1)
}

// redirect is what a -MOVED or -ASK reply says: where the command's slot
// is served (MOVED: from now on; ASK: for this command only).
type redirect struct {
	ask  bool
	addr string
}

func (rd redirect) kind() string {
	if rd.ask {
		return "ASK"
	}
	return "MOVED"
}

// parseRedirect reads "-MOVED <slot> <host:port>" or "-ASK <slot>
// <host:port>"; any other reply, or one of another shape, is not one.
func parseRedirect(reply []byte) (redirect, bool) {
	var rd redirect
	switch {
	case bytes.HasPrefix(reply, []byte("-MOVED ")):
	case bytes.HasPrefix(reply, []byte("-ASK ")):
		rd.ask = true
	default:
		return rd, false
	}
	fields := bytes.Fields(reply[1:])
	if len(fields) != 3 {
		return rd, false
	}
	rd.addr = string(fields[2])
	return rd, true
}

// isExec reports whether the request cmd is EXEC, which has no arguments
// and so one encoding.
func isExec(cmd []byte) bool {
	return len(cmd) == len(execRequest) && strings.EqualFold(string(cmd), execRequest)
}

const execRequest = "*1\r\n$4\r\nEXEC\r\n"

var errShortRequest = errors.New("cluster: a reply with no request in the batch")

// requests walks a batch's request bytes command by command, forward only,
// to find the command of the i-th reply: each command has one reply, and
// RESP frames a request array of bulk strings as it frames a reply.
type requests struct {
	buf  []byte
	pos  int // where request next starts
	next int
}

// at returns request i; i must not be less than the previous call's.
func (q *requests) at(i int) ([]byte, error) {
	for {
		n, err := resp.ReplyLen(q.buf[q.pos:])
		if err != nil {
			return nil, fmt.Errorf("cluster: framing request %d: %w", q.next, err)
		}
		if n == 0 {
			return nil, errShortRequest
		}
		if q.next == i {
			return q.buf[q.pos : q.pos+n], nil
		}
		q.pos += n
		q.next++
	}
}
