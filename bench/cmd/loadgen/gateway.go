package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keyfence/keyfence/bench/internal/stack"
	"github.com/keyfence/keyfence/proxy/tenants"
)

// The gateway modes start one redis-server and one keyfence in gateway mode
// (`keyfence --tenants-file`) with a tenants file loadgen writes: every
// tenant gets a random password, hashed with argon2id as `keyfence
// hash-password` does, and every connection authenticates with AUTH
// <tenant> <password>, as an application would with its client's
// username/password options.

// gatewayTenant is one tenant of the file loadgen writes.
type gatewayTenant struct {
	ID       string `json:"id"`
	Password string `json:"-"`
	// MaxOps is the tenant's max_ops_per_second; 0: no quota.
	MaxOps float64 `json:"max_ops_per_second,omitempty"`
}

func (t gatewayTenant) endpoint(addr string, pid int) endpoint {
	return endpoint{Addr: addr, Pid: pid, Label: t.ID, User: t.ID, Password: t.Password}
}

func newGatewayTenant(id string) (gatewayTenant, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return gatewayTenant{}, fmt.Errorf("password: %w", err)
	}
	return gatewayTenant{ID: id, Password: hex.EncodeToString(b)}, nil
}

// tenantsYAML hashes every password with tenants.HashPassword (argon2id,
// the hash keyfence hash-password prints; one per core at a time) and
// returns the tenants file, checked as keyfence will check it.
func tenantsYAML(list []gatewayTenant) ([]byte, error) {
	hashes := make([]string, len(list))
	errs := make([]error, len(list))
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for i, t := range list {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			hashes[i], errs[i] = tenants.HashPassword([]byte(t.Password))
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	var b strings.Builder
	b.WriteString("# written by bench/cmd/loadgen for one run\ntenants:\n")
	for i, t := range list {
		fmt.Fprintf(&b, "  - id: %s\n    password_hash: %q\n", t.ID, hashes[i])
		if t.MaxOps > 0 {
			fmt.Fprintf(&b, "    limits:\n      max_ops_per_second: %s\n", strconv.FormatFloat(t.MaxOps, 'f', -1, 64))
		}
	}
	noEnv := func(string) (string, bool) { return "", false }
	noFiles := func(string) ([]byte, error) { return nil, errors.New("no files") }
	if _, err := tenants.Parse([]byte(b.String()), noEnv, noFiles); err != nil {
		return nil, fmt.Errorf("the tenants file loadgen wrote: %w", err)
	}
	return []byte(b.String()), nil
}

// withGateway starts Redis and a gateway keyfence for list, runs f, and
// stops both; server logs are kept (and named) when something failed.
// extraArgs come before -keyfence-args, which may override them.
func withGateway(ctx context.Context, cfg config, list []gatewayTenant, extraArgs []string, log *slog.Logger,
	f func(st *stack.Stack, gw *stack.Proc) error) (err error) {
	tools, err := stack.FindTools(cfg.keyfence)
	if err != nil {
		return err
	}
	if tools.Keyfence == "" {
		return fmt.Errorf("keyfence %s: %s; run `make build`", cfg.keyfence, tools.KeyfenceStatus)
	}
	dir, err := os.MkdirTemp("", "keyfence-loadgen-gateway-*")
	if err != nil {
		return fmt.Errorf("scratch dir: %w", err)
	}
	defer func() {
		if err != nil {
			log.Info("server logs kept", "dir", dir)
			return
		}
		os.RemoveAll(dir)
	}()
	log.Info("hashing tenant passwords (argon2id)", "tenants", len(list))
	yml, err := tenantsYAML(list)
	if err != nil {
		return err
	}
	file := filepath.Join(dir, "tenants.yaml")
	if err := os.WriteFile(file, yml, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	scfg := stack.Config{Tools: tools, Dir: dir, Logger: log,
		KeyfenceArgs: append(extraArgs, strings.Fields(cfg.keyfenceArgs)...)}
	st, err := stack.Start(ctx, scfg)
	if err != nil {
		return fmt.Errorf("%w (logs in %s)", err, dir)
	}
	defer func() {
		if serr := st.Stop(); serr != nil {
			err = errors.Join(err, serr)
		}
	}()
	gw, err := st.StartGateway(ctx, scfg, file, list[0].ID, list[0].Password)
	if err != nil {
		return err
	}
	return f(st, gw)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	for i := 1; i < len(s); i++ { // insertion sort: a handful of rounds
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f", float64(d.Microseconds())/1000) }

func msOf(us int64) string { return fmt.Sprintf("%.3f", float64(us)/1000) }

func mib(b int64) string { return fmt.Sprintf("%.1f", float64(b)/(1<<20)) }
