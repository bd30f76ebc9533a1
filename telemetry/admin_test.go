package telemetry

import (
	"context"
	"encoding/base64"
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
	notReady := func(context.Context) Readiness {
		return Readiness{Reason: "upstream down and the read fallback is off", Detail: errors.New("upstream: dial 10.0.0.5:6379: refused")}
	}
	cmdline := []string{"keyfence", "--tenant", "acme", "--redis-password", "<redacted>"}
	status := func(context.Context) (*Status, error) { return &Status{Tenant: "acme"}, nil }

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
		{name: "no token: readyz gives its reason", path: "/readyz", status: 503, body: "not ready: upstream down and the read fallback is off\ndetail: upstream: dial 10.0.0.5:6379: refused\n"},
		{name: "pprof off by default", path: "/debug/pprof/", status: 404},
		{name: "pprof off: cmdline off", path: "/debug/pprof/cmdline", status: 404},
		{name: "pprof off: profile off", path: "/debug/pprof/profile?seconds=1", status: 404},
		{name: "pprof on: index", opts: AdminOptions{Pprof: true}, path: "/debug/pprof/", status: 200, body: "goroutine"},
		{name: "pprof on: cmdline is the caller's redacted one", opts: AdminOptions{Pprof: true, Cmdline: cmdline},
			path: "/debug/pprof/cmdline", status: 200, body: "keyfence\x00--tenant\x00acme\x00--redis-password\x00<redacted>"},

		// With a token: probes stay open, nothing else does.
		{name: "token: healthz open", opts: AdminOptions{Token: token}, path: "/healthz", status: 200, body: "ok"},
		{name: "token: readyz open without its detail", opts: AdminOptions{Token: token}, path: "/readyz", status: 503, body: "not ready: upstream down and the read fallback is off\n", absent: "10.0.0.5"},
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
		{name: "token: metrics with the token as a Basic password", opts: AdminOptions{Token: token}, path: "/metrics", auth: basic("any", token), status: 200, body: "keyfence_up 1"},
		{name: "token: a wrong Basic password", opts: AdminOptions{Token: token}, path: "/metrics", auth: basic("any", token+"x"), status: 401},
		{name: "token: readyz detail with Basic", opts: AdminOptions{Token: token}, path: "/readyz", auth: basic("", token), status: 503, body: "10.0.0.5"},
		{name: "status page off without a source", path: "/", status: 404},
		{name: "status page", opts: AdminOptions{Status: status}, path: "/", status: 200, body: "<title>keyfence status</title>"},
		{name: "status json", opts: AdminOptions{Status: status}, path: "/status.json", status: 200, body: `"tenant":"acme"`},
		{name: "token: status page asks for credentials", opts: AdminOptions{Token: token, Status: status}, path: "/", status: 401, absent: "<title>"},
		{name: "token: status json refused", opts: AdminOptions{Token: token, Status: status}, path: "/status.json", status: 401, absent: "acme"},
		{name: "token: status page with Basic", opts: AdminOptions{Token: token, Status: status}, path: "/", auth: basic("ops", token), status: 200, body: "<title>"},
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
			// Browsers get a Basic challenge on the page, tools a Bearer one.
			wantScheme := "Bearer"
			if tc.path == "/" {
				wantScheme = "Basic"
			}
			if rec.Code == 401 && !strings.HasPrefix(rec.Header().Get("WWW-Authenticate"), wantScheme) {
				t.Errorf("401 without WWW-Authenticate: %s (got %q)", wantScheme, rec.Header().Get("WWW-Authenticate"))
			}
		})
	}
}

func basic(user, password string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
}

// /readyz: ready with a note, and the three ways not to be ready, in a body
// a person and a probe both read.
func TestReadyzBodies(t *testing.T) {
	tests := []struct {
		name   string
		rd     Readiness
		status int
		body   string
	}{
		{"ready", Readiness{Ready: true}, 200, "ready\n"},
		{"ready on the fallback", Readiness{Ready: true, Reason: "upstream down, serving cached reads (--fallback)", Detail: errors.New("dial: refused")}, 200,
			"ready: upstream down, serving cached reads (--fallback)\ndetail: dial: refused\n"},
		{"draining", Readiness{Reason: "draining"}, 503, "not ready: draining\n"},
		{"upstream down", Readiness{Reason: "upstream down and the read fallback is off", Detail: errors.New("a\r\nb")}, 503,
			"not ready: upstream down and the read fallback is off\ndetail: a  b\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := adminHandler(func(context.Context) Readiness { return tc.rd }, nil, AdminOptions{})
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
			if rec.Code != tc.status || rec.Body.String() != tc.body {
				t.Fatalf("got %d %q, want %d %q", rec.Code, rec.Body.String(), tc.status, tc.body)
			}
		})
	}
}
