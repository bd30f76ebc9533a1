package upstream

import (
	"context"
	"strings"

	"github.com/keyfence/keyfence/resp"
)

// PayloadVerdict is what upstream said about payload sanitizing.
type PayloadVerdict uint8

const (
	PayloadUnchecked      PayloadVerdict = iota
	PayloadSanitized                     // yes; or clients, and keyfence's user is not exempt
	PayloadNotSanitized                  // no, or a Redis without the setting (before 6.2)
	PayloadSkippedForUser                // clients, but keyfence's user has skip-sanitize-payload
	PayloadUnknown                       // keyfence may not read the setting (NOPERM, renamed CONFIG)
)

// payloadCheck is an Conn's cached verdict, for the connection it dialled
// as its dials-th.
type payloadCheck struct {
	verdict PayloadVerdict
	dials   uint64
}

// PayloadVerdict returns whether the server behind c sanitizes payloads,
// asking it when the connection has not been asked yet. An error is a
// failure to talk to upstream; a refusal to answer is PayloadUnknown.
func (c *Conn) PayloadVerdict(ctx context.Context) (PayloadVerdict, error) {
	c.mu.Lock()
	cached := c.payload
	fresh := c.nc != nil && cached.verdict != PayloadUnchecked && cached.dials == c.dials
	c.mu.Unlock()
	if fresh {
		return cached.verdict, nil
	}
	v, err := c.askPayloadVerdict(ctx)
	if err != nil {
		return PayloadUnchecked, err
	}
	c.mu.Lock()
	// The answer is about the connection dialled last, unless another
	// session dialled again in the instant since it came.
	c.payload = payloadCheck{verdict: v, dials: c.dials}
	c.mu.Unlock()
	return v, nil
}

func (c *Conn) askPayloadVerdict(ctx context.Context) (PayloadVerdict, error) {
	v, err := c.Call(ctx, []byte("CONFIG"), []byte("GET"), []byte("sanitize-dump-payload"))
	switch {
	case err != nil:
		return PayloadUnchecked, err
	case v.Type == '-':
		return PayloadUnknown, nil
	case len(v.Elems) < 2: // RESP2 array or RESP3 map: name, value
		return PayloadNotSanitized, nil
	}
	switch strings.ToLower(string(v.Elems[1].Str)) {
	case "yes":
		return PayloadSanitized, nil
	case "clients":
		// Sanitized unless keyfence's own user is exempt.
		user := c.cfg.Username
		if user == "" {
			user = "default"
		}
		u, err := c.Call(ctx, []byte("ACL"), []byte("GETUSER"), []byte(user))
		if err != nil {
			return PayloadUnchecked, err
		}
		if u.Type == '-' || u.Null {
			return PayloadUnknown, nil
		}
		for i := 0; i+1 < len(u.Elems); i += 2 {
			if string(u.Elems[i].Str) != "flags" {
				continue
			}
			for _, f := range u.Elems[i+1].Elems {
				if string(f.Str) == "skip-sanitize-payload" {
					return PayloadSkippedForUser, nil
				}
			}
		}
		return PayloadSanitized, nil
	default:
		return PayloadNotSanitized, nil
	}
}

// callValue runs one command on c outside any client's Batch. An error
// reply is a value (typ '-'), not an error: errors are failures to talk to
// upstream.
func (c *Conn) Call(ctx context.Context, args ...[]byte) (resp.Value, error) {
	b := NewBatch()
	if err := c.RoundTrip(ctx, b, resp.AppendCommand(nil, args...), 1); err != nil {
		return resp.Value{}, err
	}
	return resp.Parse(b.Reply(0))
}
