// Package gatewaytest starts an in-process gateway keyfence (proxy.Gateway)
// for the tests of real client libraries (test/node, test/asynq): a tenants
// file built from a list, and a gateway in front of a real redis-server that
// is drained and stopped in t.Cleanup.
//
// Passwords are hashed with bcrypt's least cost: the tests exercise the
// gateway and the clients, not the hash's strength (proxy/tenants tests
// that).
package gatewaytest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/keyfence/keyfence/proxy"
	"github.com/keyfence/keyfence/proxy/tenants"
	"github.com/keyfence/keyfence/upstream"
)

// Tenant is one entry of a test's tenants file.
type Tenant struct {
	ID, Password string
	// UpstreamUser, when set, is the tenant's own upstream ACL user (with
	// UpstreamPassword); otherwise the tenant runs as the gateway's user.
	UpstreamUser, UpstreamPassword string
}

// File builds and checks a tenants file holding list.
func File(t testing.TB, list []Tenant) *tenants.File {
	t.Helper()
	var b strings.Builder
	env := map[string]string{}
	b.WriteString("tenants:\n")
	for i, tn := range list {
		h, err := bcrypt.GenerateFromPassword([]byte(tn.Password), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "  - id: %s\n    password_hash: %q\n", tn.ID, h)
		if tn.UpstreamUser != "" {
			name := fmt.Sprintf("GATEWAYTEST_UPSTREAM_PW_%d", i)
			env[name] = tn.UpstreamPassword
			fmt.Fprintf(&b, "    upstream:\n      user: %s\n      password_env: %s\n", tn.UpstreamUser, name)
		}
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	noFiles := func(string) ([]byte, error) { return nil, errors.New("gatewaytest: no password files") }
	f, err := tenants.Parse([]byte(b.String()), lookup, noFiles)
	if err != nil {
		t.Fatalf("gatewaytest: tenants file: %v", err)
	}
	return f
}

// Start starts a gateway for the tenants of file in front of the Redis at
// upstreamAddr, logging to log (nil: nowhere), and returns it with its
// address. It is shut down in t.Cleanup, with every session drained.
func Start(t testing.TB, upstreamAddr string, file *tenants.File, log *slog.Logger) (*proxy.Gateway, string) {
	t.Helper()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	g, err := proxy.NewGateway(proxy.GatewayConfig{
		Server: proxy.Config{
			Listen:   "127.0.0.1:0",
			Upstream: upstream.Config{Addr: upstreamAddr},
			Logger:   log,
		},
		Tenants: file,
	})
	if err != nil {
		t.Fatalf("gatewaytest: NewGateway: %v", err)
	}
	if err := g.Listen(); err != nil {
		t.Fatalf("gatewaytest: Listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- g.Serve(ctx) }()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		if err := g.Shutdown(sctx); err != nil {
			t.Errorf("gateway Shutdown: %v", err)
		}
		cancel()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("gateway Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("gateway Serve did not return after Shutdown")
		}
	})
	return g, g.Addr().String()
}
