package telemetry

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"
)

// statusPage is the status page: one file of HTML, CSS and JavaScript, no
// build step and nothing loaded from elsewhere. It polls /status.json.
//
//go:embed status.html
var statusPage []byte

// Admin is the admin HTTP server.
type Admin struct {
	srv *http.Server
	ln  net.Listener
}

// Readiness is /readyz's answer.
type Readiness struct {
	Ready bool
	// Reason is a short, fixed text: why keyfence is not ready ("draining",
	// "upstream down and the read fallback is off"), or a note while it
	// is ("upstream down, serving cached reads"). Anyone may read it.
	Reason string
	// Detail is the failure underneath; it names the upstream, so it is
	// shown only to holders of the admin token (or when there is none).
	Detail error
}

// ReadyFunc reports whether keyfence can serve clients now.
type ReadyFunc func(ctx context.Context) Readiness

// AdminOptions are the admin endpoint's settings.
type AdminOptions struct {
	// Token, when set, must be sent as "Authorization: Bearer <token>" on
	// every path but /healthz and /readyz, which orchestrators probe
	// without credentials; /readyz then withholds its reason from
	// requests without the token.
	Token string
	// Pprof serves /debug/pprof/. Profiles show the process's internals and
	// cost CPU while they run, so they are off unless asked for.
	Pprof bool
	// Cmdline is what /debug/pprof/cmdline shows: the process's arguments
	// with the values of secret flags already redacted by the caller, who
	// knows which flags hold secrets. net/http/pprof's own handler would
	// print os.Args as they are.
	Cmdline []string
	// Status feeds the status page (/ and /status.json); nil: no page.
	Status func(ctx context.Context) (*Status, error)
}

// NewAdmin binds addr and prepares the handlers.
func NewAdmin(addr string, ready ReadyFunc, metrics http.Handler, log *slog.Logger, opts AdminOptions) (*Admin, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin listen %s: %w", addr, err)
	}
	return &Admin{
		srv: &http.Server{Handler: adminHandler(ready, metrics, opts), ReadHeaderTimeout: 5 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)},
		ln:  ln,
	}, nil
}

// adminHandler routes the admin paths; every one but the probes goes
// through the token check.
func adminHandler(ready ReadyFunc, metrics http.Handler, opts AdminOptions) http.Handler {
	auth := tokenCheck(opts.Token)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		rd := ready(ctx)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		var b strings.Builder
		if rd.Ready {
			b.WriteString("ready")
		} else {
			b.WriteString("not ready")
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		if rd.Reason != "" {
			b.WriteString(": " + rd.Reason)
		}
		b.WriteString("\n")
		if rd.Detail != nil && auth(r) {
			b.WriteString("detail: " + oneLine(rd.Detail.Error()) + "\n")
		}
		_, _ = w.Write([]byte(b.String()))
	})
	if opts.Status != nil {
		mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.Header().Set("Cache-Control", "no-store")
			// The page is all inline: nothing else may load or run.
			w.Header().Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:")
			w.Header().Set("X-Content-Type-Options", "nosniff")
			_, _ = w.Write(statusPage)
		})
		mux.HandleFunc("GET /status.json", func(w http.ResponseWriter, r *http.Request) {
			st, err := opts.Status(r.Context())
			if err != nil {
				http.Error(w, "status: "+err.Error(), http.StatusInternalServerError)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Cache-Control", "no-store")
			_ = json.NewEncoder(w).Encode(st)
		})
	}
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	if opts.Pprof {
		cmdline := []byte(strings.Join(opts.Cmdline, "\x00"))
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", func(w http.ResponseWriter, _ *http.Request) {
			// The format of net/http/pprof's: NUL-separated arguments.
			w.Header().Set("X-Content-Type-Options", "nosniff")
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			_, _ = w.Write(cmdline)
		})
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/healthz", "/readyz":
		default:
			if !auth(r) {
				// Unknown paths too: without the token nobody learns
				// which paths exist (whether pprof is on). The status
				// page asks a browser for Basic credentials (any user
				// name, the token as password): a browser cannot send
				// a bearer token by itself.
				if r.URL.Path == "/" {
					w.Header().Set("WWW-Authenticate", `Basic realm="keyfence admin", charset="UTF-8"`)
				} else {
					w.Header().Set("WWW-Authenticate", `Bearer realm="keyfence admin"`)
				}
				http.Error(w, "unauthorized: send Authorization: Bearer <the admin token>", http.StatusUnauthorized)
				return
			}
		}
		mux.ServeHTTP(w, r)
	})
}

// tokenCheck returns a function that reports whether a request carries the
// token, as "Authorization: Bearer <token>" or, for browsers, as the
// password of HTTP Basic credentials; every request passes when token is
// empty. Both sides are hashed before the constant-time comparison so that
// neither the token's content nor its length shows in the time a refusal
// takes.
func tokenCheck(token string) func(*http.Request) bool {
	if token == "" {
		return func(*http.Request) bool { return true }
	}
	want := sha256.Sum256([]byte(token))
	return func(r *http.Request) bool {
		var got string
		if _, pw, ok := r.BasicAuth(); ok {
			got = pw
		} else {
			h := r.Header.Get("Authorization")
			const scheme = "bearer "
			if len(h) < len(scheme) || !strings.EqualFold(h[:len(scheme)], scheme) {
				return false
			}
			got = strings.TrimSpace(h[len(scheme):])
		}
		sum := sha256.Sum256([]byte(got))
		return subtle.ConstantTimeCompare(sum[:], want[:]) == 1
	}
}

// oneLine keeps an error on one line of /readyz's body.
func oneLine(s string) string { return strings.NewReplacer("\r", " ", "\n", " ").Replace(s) }

// Addr returns the bound address.
func (a *Admin) Addr() net.Addr { return a.ln.Addr() }

// Serve serves until Shutdown.
func (a *Admin) Serve() error {
	if err := a.srv.Serve(a.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin: %w", err)
	}
	return nil
}

// Shutdown stops the admin server.
func (a *Admin) Shutdown(ctx context.Context) error { return a.srv.Shutdown(ctx) }
