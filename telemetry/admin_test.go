package telemetry

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestAdminAuthAndPprof(t *testing.T) {
	const token = "s3cret-admin-token"
	metrics := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("keyfence_up 1\n")) })
	notReady := func(context.Context) error { return errors.New("upstream: dial 10.0.0.5:6379: refused") }
	cmdline := []string{"keyfence", "--tenant", "acme", "--redis-password", "<redacted>"}

	tests := []struct {
		name   string
		opts   AdminOptions
		path   string
		auth   string // Authorization header; "" sends none
		status int
		body   string // substring of the body; "" checks nothing
		absent string // must not be in the body
	}{
		// Without a token everything enabled is open, as before.
		{name: "no token: metrics open", path: "/metrics", status: 200, body: "keyfence_up 1"},
		{name: "no token: readyz gives its reason", path: "/readyz", status: 503, body: "10.0.0.5"},
		{name: "pprof off by default", path: "/debug/pprof/", status: 404},
		{name: "pprof off: cmdline off", path: "/debug/pprof/cmdline", status: 404},
		{name: "pprof off: profile off", path: "/debug/pprof/profile?seconds=1", status: 404},
		{name: "pprof on: index", opts: AdminOptions{Pprof: true}, path: "/debug/pprof/", status: 200, body: "goroutine"},
		{name: "pprof on: cmdline is the caller's redacted one", opts: AdminOptions{Pprof: true, Cmdline: cmdline},
			path: "/debug/pprof/cmdline", status: 200, body: "keyfence\x00--tenant\x00acme\x00--redis-password\x00<redacted>"},

		// With a token: probes stay open, nothing else does.
		{name: "token: healthz open", opts: AdminOptions{Token: token}, path: "/healthz", status: 200, body: "ok"},
		{name: "token: readyz open without its reason", opts: AdminOptions{Token: token}, path: "/readyz", status: 503, body: "not ready", absent: "10.0.0.5"},
		{name: "token: readyz reason with the token", opts: AdminOptions{Token: token}, path: "/readyz", auth: "Bearer " + token, status: 503, body: "10.0.0.5"},
		{name: "token: metrics refused", opts: AdminOptions{Token: token}, path: "/metrics", status: 401, absent: "keyfence_up"},
		{name: "token: metrics with a wrong token", opts: AdminOptions{Token: token}, path: "/metrics", auth: "Bearer " + token + "x", status: 401},
		{name: "token: metrics with a prefix of the token", opts: AdminOptions{Token: token}, path: "/metrics", auth: "Bearer " + token[:5], status: 401},
		{name: "token: metrics with basic auth", opts: AdminOptions{Token: token}, path: "/metrics", auth: "Basic " + token, status: 401},
		{name: "token: metrics with the bare token", opts: AdminOptions{Token: token}, path: "/metrics", auth: token, status: 401},
		{name: "token: metrics with the token", opts: AdminOptions{Token: token}, path: "/metrics", auth: "Bearer " + token, status: 200, body: "keyfence_up 1"},
		{name: "token: scheme is case-insensitive", opts: AdminOptions{Token: token}, path: "/metrics", auth: "bearer " + token, status: 200},
		{name: "token: pprof refused", opts: AdminOptions{Token: token, Pprof: true, Cmdline: cmdline}, path: "/debug/pprof/cmdline", status: 401, absent: "acme"},
		{name: "token: pprof index refused", opts: AdminOptions{Token: token, Pprof: true}, path: "/debug/pprof/", status: 401},
		{name: "token: pprof goroutine refused", opts: AdminOptions{Token: token, Pprof: true}, path: "/debug/pprof/goroutine?debug=2", status: 401},
		{name: "token: pprof with the token", opts: AdminOptions{Token: token, Pprof: true, Cmdline: cmdline}, path: "/debug/pprof/cmdline", auth: "Bearer " + token, status: 200, body: "<redacted>"},
		{name: "token: unknown path refused, not 404", opts: AdminOptions{Token: token}, path: "/debug/pprof/", status: 401},
		{name: "token: path tricks are refused", opts: AdminOptions{Token: token}, path: "/healthz/../metrics", status: 401},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := adminHandler(notReady, metrics, tc.opts)
			req := httptest.NewRequest("GET", tc.path, nil)
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			body, _ := io.ReadAll(rec.Body)
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d (body %q)", rec.Code, tc.status, body)
			}
			if tc.body != "" && !strings.Contains(string(body), tc.body) {
				t.Errorf("body %q lacks %q", body, tc.body)
			}
			if tc.absent != "" && strings.Contains(string(body), tc.absent) {
				t.Errorf("body %q shows %q", body, tc.absent)
			}
			if rec.Code == 401 && !strings.HasPrefix(rec.Header().Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("401 without WWW-Authenticate: Bearer (got %q)", rec.Header().Get("WWW-Authenticate"))
			}
		})
	}
}
