package proxy

import (
	"context"
	"strings"

	"github.com/keyfence/keyfence/rewrite"
	"github.com/keyfence/keyfence/upstream"
)

// RESTORE loads a serialized value. Redis 7.0 checks a DUMP payload deeply
// only with sanitize-dump-payload yes, or clients for a user without the
// skip-sanitize-payload flag; with its default, no, a crafted payload is
// accepted and crashes the server on a later read, and every tenant loses
// it. So keyfence forwards a command that loads a payload
// (rewrite.Command.LoadsPayload) only to an upstream that says it sanitizes.
// It asks once per upstream connection: a connection dialled again (a
// restart, a Sentinel failover) may reach another server, so it asks again.

// payloadRefusal returns the error for a command that would load a payload
// into an upstream that does not sanitize it, or "" when it may go. It asks
// on the shared connection, never on a pinned one: inside MULTI the question
// would be queued.
func (s *session) payloadRefusal(ctx context.Context, cmd *rewrite.Command) string {
	if !cmd.LoadsPayload {
		return ""
	}
	v, err := s.shared.PayloadVerdict(ctx)
	if err != nil {
		return upstreamErrorText(err)
	}
	name := strings.ToUpper(cmd.Name)
	switch v {
	case upstream.PayloadSanitized:
		return ""
	case upstream.PayloadUnknown:
		if s.srv.cfg.Upstream.AssumeRestoreSanitized {
			return ""
		}
		return "ERR keyfence: " + name + " is refused because keyfence may not read sanitize-dump-payload upstream (CONFIG GET is refused): set sanitize-dump-payload yes on Redis and start keyfence with --assume-restore-sanitized"
	case upstream.PayloadSkippedForUser:
		return "ERR keyfence: " + name + " is refused because upstream skips payload sanitizing for keyfence's user: remove skip-sanitize-payload from that ACL user, or set sanitize-dump-payload yes on Redis"
	default:
		return "ERR keyfence: " + name + " is refused because upstream does not sanitize DUMP payloads, and a crafted one can crash it: set sanitize-dump-payload yes on Redis"
	}
}
