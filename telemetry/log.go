package telemetry

import (
	"fmt"
	"io"
	"log/slog"
)

// Log formats of --log-format.
const (
	LogText = "text"
	LogJSON = "json"
)

// NewLogger returns keyfence's logger: slog's text handler (key=value, for
// people) or its JSON handler (one object a line, for log pipelines), at
// level. Every state change is one line with an "event" field to filter on
// (upstream_down, breaker, failover, limit_hit, fallback_serving, …); no
// line is written per command, and none carries a key, a value or a secret.
func NewLogger(w io.Writer, format string, level slog.Level) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case LogText, "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case LogJSON:
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: want text or json", format)
}
