package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/keyfence/keyfence/proxy"
	"github.com/keyfence/keyfence/rewrite"
)

// settings are the raw values of every flag; each flag's default comes from
// its environment variable when that is set.
type settings struct {
	tenant, listen, admin, keyFormat                  string
	redisHost, redisUsername, redisPassword, redisURL string
	redisPort, redisDB                                int
	redisTLS                                          bool
	clientPassword                                    string
	maxClients, maxRequestBytes, sharedConns          int
	maxPinned                                         int
	dialTimeout, shutdownTimeout                      time.Duration
	logLevel                                          string
}

// config is what main needs to run.
type config struct {
	proxy           proxy.Config
	admin           string
	shutdownTimeout time.Duration
	logLevel        slog.Level
}

// parseConfig reads flags (args, without the program name) over environment
// variables (getenv). It returns flag.ErrHelp for --help, after printing the
// usage to out.
func parseConfig(args []string, getenv func(string) string, out io.Writer) (*config, error) {
	var s settings
	fs := flag.NewFlagSet("keyfence", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported in one line by main
	str := func(p *string, name, env, def, usage string) {
		if v := getenv(env); v != "" {
			def = v
		}
		fs.StringVar(p, name, def, usage+" (env "+env+")")
	}
	var envErr error
	num := func(p *int, name, env string, def int, usage string) {
		if v := getenv(env); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				envErr = errors.Join(envErr, fmt.Errorf("%s=%q: not a whole number", env, v))
			}
			def = n
		}
		fs.IntVar(p, name, def, usage+" (env "+env+")")
	}
	dur := func(p *time.Duration, name, env string, def time.Duration, usage string) {
		if v := getenv(env); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				envErr = errors.Join(envErr, fmt.Errorf("%s=%q: not a duration (e.g. 2s)", env, v))
			}
			def = d
		}
		fs.DurationVar(p, name, def, usage+" (env "+env+")")
	}
	boolean := func(p *bool, name, env string, def bool, usage string) {
		if v := getenv(env); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				envErr = errors.Join(envErr, fmt.Errorf("%s=%q: not true or false", env, v))
			}
			def = b
		}
		fs.BoolVar(p, name, def, usage+" (env "+env+")")
	}
	str(&s.tenant, "tenant", "TENANT_ID", "", "tenant id, [A-Za-z0-9_-]{1,64}; every client belongs to it (required)")
	str(&s.listen, "listen", "PROXY_LISTEN", "127.0.0.1:6380", "address clients connect to")
	str(&s.admin, "admin", "PROXY_ADMIN", "127.0.0.1:9121", "admin HTTP address (/healthz, /readyz, /debug/pprof); empty: off")
	str(&s.keyFormat, "key-format", "PROXY_KEY_FORMAT", rewrite.DefaultKeyFormat, "namespace of the tenant's keys; {tenant} is replaced by the id")
	str(&s.redisHost, "redis-host", "REDIS_HOST", "localhost", "upstream Redis host")
	num(&s.redisPort, "redis-port", "REDIS_PORT", 6379, "upstream Redis port")
	str(&s.redisUsername, "redis-username", "REDIS_USERNAME", "", "upstream ACL user name")
	str(&s.redisPassword, "redis-password", "REDIS_PASSWORD", "", "upstream password")
	num(&s.redisDB, "redis-db", "REDIS_DB", 0, "upstream database clients start in (SELECT moves them)")
	str(&s.redisURL, "redis-url", "REDIS_URL", "", "upstream as redis://[user:password@]host:port[/db] or rediss:// for TLS; overrides the REDIS_HOST… settings")
	boolean(&s.redisTLS, "redis-tls", "REDIS_TLS", false, "connect to upstream over TLS")
	str(&s.clientPassword, "client-password", "PROXY_CLIENT_PASSWORD", "", "password clients must AUTH with; empty: none, like a Redis without requirepass")
	num(&s.maxClients, "max-clients", "PROXY_MAX_CLIENTS", 10000, "client connections at most; more get Redis's 'max number of clients reached'")
	num(&s.maxRequestBytes, "max-request-bytes", "PROXY_MAX_REQUEST_BYTES", rewrite.DefaultLimits.MaxRequestBytes, "largest request a client may send")
	num(&s.sharedConns, "shared-conns", "PROXY_SHARED_CONNS", 2, "multiplexed upstream connections per database and protocol")
	num(&s.maxPinned, "max-pinned", "PROXY_MAX_PINNED", 1000, "upstream connections pinned to clients (MULTI, WATCH, blocking commands) at most")
	dur(&s.dialTimeout, "dial-timeout", "PROXY_DIAL_TIMEOUT", 2*time.Second, "upstream connect timeout")
	dur(&s.shutdownTimeout, "shutdown-timeout", "PROXY_SHUTDOWN_TIMEOUT", 10*time.Second, "how long SIGTERM waits for clients to finish")
	str(&s.logLevel, "log-level", "PROXY_LOG_LEVEL", "info", "debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: keyfence --tenant ID [flags]\n\nkeyfence is a Redis proxy that keeps each tenant in its own key namespace.\nEvery flag can also be set by the environment variable named with it.\n\nFlags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(out)
			fs.Usage()
			return nil, err
		}
		return nil, fmt.Errorf("%w (see --help)", err)
	}
	if envErr != nil {
		return nil, envErr
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (settings are flags: see --help)", fs.Arg(0))
	}
	return s.config()
}

func (s *settings) config() (*config, error) {
	if s.tenant == "" {
		return nil, errors.New("no tenant: set --tenant or TENANT_ID")
	}
	if !rewrite.ValidTenantID(s.tenant) {
		return nil, fmt.Errorf("tenant id %q: must match [A-Za-z0-9_-]{1,64}", s.tenant)
	}
	if _, err := rewrite.Prefix(s.keyFormat, s.tenant); err != nil {
		return nil, err
	}
	if err := checkHostPort("--listen", s.listen); err != nil {
		return nil, err
	}
	if s.admin != "" {
		if err := checkHostPort("--admin", s.admin); err != nil {
			return nil, err
		}
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(s.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", s.logLevel)
	}
	up := proxy.UpstreamConfig{
		Addr:        net.JoinHostPort(s.redisHost, strconv.Itoa(s.redisPort)),
		Username:    s.redisUsername,
		Password:    s.redisPassword,
		DB:          s.redisDB,
		DialTimeout: s.dialTimeout,
	}
	if s.redisPort <= 0 || s.redisPort > 65535 {
		return nil, fmt.Errorf("--redis-port %d: not a TCP port", s.redisPort)
	}
	if s.redisHost == "" {
		return nil, errors.New("--redis-host: empty")
	}
	if s.redisTLS {
		up.TLS = &tls.Config{ServerName: s.redisHost, MinVersion: tls.VersionTLS12}
	}
	if s.redisURL != "" {
		if err := applyURL(&up, s.redisURL); err != nil {
			return nil, err
		}
	}
	if up.DB < 0 {
		return nil, fmt.Errorf("--redis-db %d: must not be negative", up.DB)
	}
	for _, c := range []struct {
		name string
		v    int
	}{{"--max-clients", s.maxClients}, {"--max-request-bytes", s.maxRequestBytes}, {"--shared-conns", s.sharedConns}, {"--max-pinned", s.maxPinned}} {
		if c.v <= 0 {
			return nil, fmt.Errorf("%s %d: must be positive", c.name, c.v)
		}
	}
	if s.dialTimeout <= 0 {
		return nil, fmt.Errorf("--dial-timeout %s: must be positive", s.dialTimeout)
	}
	return &config{
		proxy: proxy.Config{
			Listen:          s.listen,
			Tenant:          s.tenant,
			KeyFormat:       s.keyFormat,
			Upstream:        up,
			ClientPassword:  s.clientPassword,
			MaxClients:      s.maxClients,
			MaxRequestBytes: s.maxRequestBytes,
			SharedConns:     s.sharedConns,
			MaxPinned:       s.maxPinned,
		},
		admin:           s.admin,
		shutdownTimeout: s.shutdownTimeout,
		logLevel:        level,
	}, nil
}

func checkHostPort(name, addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s %q: want host:port (%w)", name, addr, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("%s %q: port %q is not a TCP port", name, addr, port)
	}
	return nil
}

// applyURL reads redis://[user:password@]host[:port][/db] and rediss://.
func applyURL(up *proxy.UpstreamConfig, raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("REDIS_URL: %w", err)
	}
	switch u.Scheme {
	case "redis":
	case "rediss":
		up.TLS = &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}
	default:
		return fmt.Errorf("REDIS_URL %q: scheme must be redis:// or rediss://", redact(u))
	}
	if u.Hostname() == "" {
		return fmt.Errorf("REDIS_URL %q: no host", redact(u))
	}
	port := u.Port()
	if port == "" {
		port = "6379"
	}
	if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
		return fmt.Errorf("REDIS_URL %q: port %q is not a TCP port", redact(u), port)
	}
	up.Addr = net.JoinHostPort(u.Hostname(), port)
	if u.User != nil {
		if pw, ok := u.User.Password(); ok {
			up.Username, up.Password = u.User.Username(), pw
		} else {
			up.Password = u.User.Username() // redis://:pass@ and redis://pass@ forms
		}
	}
	if db := strings.Trim(u.Path, "/"); db != "" {
		n, err := strconv.Atoi(db)
		if err != nil || n < 0 {
			return fmt.Errorf("REDIS_URL %q: database %q is not a number", redact(u), db)
		}
		up.DB = n
	}
	return nil
}

func redact(u *url.URL) string { return u.Redacted() }

func lookupEnv(name string) string { return os.Getenv(name) }
