package proxy

import (
	"context"
	"strings"

	"github.com/keyfence/keyfence/resp"
	"github.com/keyfence/keyfence/rewrite"
)

// RESTORE loads a serialized value. Redis 7.0 checks a DUMP payload deeply
// only with sanitize-dump-payload yes, or clients for a user without the
// skip-sanitize-payload flag; with its default, no, a crafted payload is
// accepted and crashes the server on a later read, and every tenant loses
// it. So keyfence forwards a command that loads a payload
// (rewrite.Command.LoadsPayload) only to an upstream that says it sanitizes.
// It asks once per upstream connection: a connection dialled again (a
// restart, a Sentinel failover) may reach another server, so it asks again.

// payloadVerdict is what upstream said about payload sanitizing.
type payloadVerdict uint8

const (
	payloadUnchecked      payloadVerdict = iota
	payloadSanitized                     // yes; or clients, and keyfence's user is not exempt
	payloadNotSanitized                  // no, or a Redis without the setting (before 6.2)
	payloadSkippedForUser                // clients, but keyfence's user has skip-sanitize-payload
	payloadUnknown                       // keyfence may not read the setting (NOPERM, renamed CONFIG)
)

// payloadCheck is an upConn's cached verdict, for the connection it dialled
// as its dials-th.
type payloadCheck struct {
	verdict payloadVerdict
	dials   uint64
}

// payloadVerdict returns whether the server behind c sanitizes payloads,
// asking it when the connection has not been asked yet. An error is a
// failure to talk to upstream; a refusal to answer is payloadUnknown.
func (c *upConn) payloadVerdict(ctx context.Context) (payloadVerdict, error) {
	c.mu.Lock()
	cached := c.payload
	fresh := c.nc != nil && cached.verdict != payloadUnchecked && cached.dials == c.dials
	c.mu.Unlock()
	if fresh {
		return cached.verdict, nil
	}
	v, err := c.askPayloadVerdict(ctx)
	if err != nil {
		return payloadUnchecked, err
	}
	c.mu.Lock()
	// The answer is about the connection dialled last, unless another
	// session dialled again in the instant since it came.
	c.payload = payloadCheck{verdict: v, dials: c.dials}
	c.mu.Unlock()
	return v, nil
}

func (c *upConn) askPayloadVerdict(ctx context.Context) (payloadVerdict, error) {
	v, err := c.callValue(ctx, []byte("CONFIG"), []byte("GET"), []byte("sanitize-dump-payload"))
	switch {
	case err != nil:
		return payloadUnchecked, err
	case v.Type == '-':
		return payloadUnknown, nil
	case len(v.Elems) < 2: // RESP2 array or RESP3 map: name, value
		return payloadNotSanitized, nil
	}
	switch strings.ToLower(string(v.Elems[1].Str)) {
	case "yes":
		return payloadSanitized, nil
	case "clients":
		// Sanitized unless keyfence's own user is exempt.
		user := c.cfg.Username
		if user == "" {
			user = "default"
		}
		u, err := c.callValue(ctx, []byte("ACL"), []byte("GETUSER"), []byte(user))
		if err != nil {
			return payloadUnchecked, err
		}
		if u.Type == '-' || u.Null {
			return payloadUnknown, nil
		}
		for i := 0; i+1 < len(u.Elems); i += 2 {
			if string(u.Elems[i].Str) != "flags" {
				continue
			}
			for _, f := range u.Elems[i+1].Elems {
				if string(f.Str) == "skip-sanitize-payload" {
					return payloadSkippedForUser, nil
				}
			}
		}
		return payloadSanitized, nil
	default:
		return payloadNotSanitized, nil
	}
}

// callValue runs one command on c outside any client's batch. An error
// reply is a value (typ '-'), not an error: errors are failures to talk to
// upstream.
func (c *upConn) callValue(ctx context.Context, args ...[]byte) (resp.Value, error) {
	b := newBatch()
	if err := c.do(ctx, b, resp.AppendCommand(nil, args...), 1); err != nil {
		return resp.Value{}, err
	}
	return resp.Parse(b.reply(0))
}

// payloadRefusal returns the error for a command that would load a payload
// into an upstream that does not sanitize it, or "" when it may go. It asks
// on the shared connection, never on a pinned one: inside MULTI the question
// would be queued.
func (s *session) payloadRefusal(ctx context.Context, cmd *rewrite.Command) string {
	if !cmd.LoadsPayload {
		return ""
	}
	v, err := s.shared.payloadVerdict(ctx)
	if err != nil {
		return upstreamErrorText(err)
	}
	name := strings.ToUpper(cmd.Name)
	switch v {
	case payloadSanitized:
		return ""
	case payloadUnknown:
		if s.srv.cfg.Upstream.AssumeRestoreSanitized {
			return ""
		}
		return "ERR keyfence: " + name + " is refused because keyfence may not read sanitize-dump-payload upstream (CONFIG GET is refused): set sanitize-dump-payload yes on Redis and start keyfence with --assume-restore-sanitized"
	case payloadSkippedForUser:
		return "ERR keyfence: " + name + " is refused because upstream skips payload sanitizing for keyfence's user: remove skip-sanitize-payload from that ACL user, or set sanitize-dump-payload yes on Redis"
	default:
		return "ERR keyfence: " + name + " is refused because upstream does not sanitize DUMP payloads, and a crafted one can crash it: set sanitize-dump-payload yes on Redis"
	}
}
