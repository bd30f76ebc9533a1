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

	"github.com/keyfence/keyfence/fallback"
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
	redisTLSCAFile, redisTLSCertFile, redisTLSKeyFile string
	redisTLSServerName                                string
	redisTLSInsecure                                  bool
	tlsCert, tlsKey, tlsClientCA                      string
	sentinels, sentinelMaster, sentinelPassword       string
	clientPassword                                    string
	maxClients, maxRequestBytes, sharedConns          int
	maxPinned                                         int
	outputSoft, outputHard, maxRequestBufferTotal     int
	dialTimeout, shutdownTimeout                      time.Duration
	fallback, breaker                                 bool
	redisCluster                                      string
	breakerFailures, breakerProbes, fallbackMaxBytes  int
	breakerOpenTimeout, fallbackTTL, upstreamTimeout  time.Duration
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
	str(&s.redisTLSCAFile, "redis-tls-ca-file", "REDIS_TLS_CA_FILE", "", "PEM CA bundle that signs upstream's certificate; empty: the system's roots")
	str(&s.redisTLSCertFile, "redis-tls-cert-file", "REDIS_TLS_CERT_FILE", "", "PEM client certificate for upstreams that require one (mTLS)")
	str(&s.redisTLSKeyFile, "redis-tls-key-file", "REDIS_TLS_KEY_FILE", "", "PEM key of --redis-tls-cert-file")
	str(&s.redisTLSServerName, "redis-tls-server-name", "REDIS_TLS_SERVER_NAME", "", "name upstream's certificate must carry; empty: the host connected to")
	boolean(&s.redisTLSInsecure, "redis-tls-insecure-skip-verify", "REDIS_TLS_INSECURE_SKIP_VERIFY", false, "accept any upstream certificate (testing only)")
	str(&s.sentinels, "redis-sentinels", "REDIS_SENTINELS", "", "Sentinel mode: sentinels as host:port,host:port,...; the master they name is the upstream (REDIS_HOST and REDIS_PORT are ignored; TLS settings apply to the sentinels too)")
	str(&s.sentinelMaster, "redis-sentinel-master", "REDIS_SENTINEL_MASTER", proxy.DefaultSentinelMaster, "name of the master the sentinels monitor")
	str(&s.sentinelPassword, "redis-sentinel-password", "REDIS_SENTINEL_PASSWORD", "", "password of the sentinels (their requirepass)")
	str(&s.tlsCert, "tls-cert", "PROXY_TLS_CERT", "", "PEM certificate of the client listener; with --tls-key, clients must connect with TLS")
	str(&s.tlsKey, "tls-key", "PROXY_TLS_KEY", "", "PEM key of --tls-cert")
	str(&s.tlsClientCA, "tls-client-ca", "PROXY_TLS_CLIENT_CA", "", "PEM CA bundle; clients must present a certificate signed by it (mTLS)")
	str(&s.clientPassword, "client-password", "PROXY_CLIENT_PASSWORD", "", "password clients must AUTH with; empty: none, like a Redis without requirepass")
	num(&s.maxClients, "max-clients", "PROXY_MAX_CLIENTS", 10000, "client connections at most; more get Redis's 'max number of clients reached'")
	num(&s.maxRequestBytes, "max-request-bytes", "PROXY_MAX_REQUEST_BYTES", rewrite.DefaultLimits.MaxRequestBytes, "largest request a client may send")
	num(&s.outputSoft, "client-output-soft-limit", "PROXY_CLIENT_OUTPUT_SOFT_LIMIT", proxy.DefaultClientOutputSoftLimit, "bytes of replies held for a client before keyfence stops reading its commands until it has read them (like Redis's client-output-buffer-limit soft limit)")
	num(&s.outputHard, "client-output-hard-limit", "PROXY_CLIENT_OUTPUT_HARD_LIMIT", proxy.DefaultClientOutputHardLimit, "bytes of replies to one client's pipelined commands past which the client is disconnected (like Redis's hard limit); the shared upstream connection is unaffected")
	num(&s.maxRequestBufferTotal, "max-request-buffer-total", "PROXY_MAX_REQUEST_BUFFER_TOTAL", proxy.DefaultMaxRequestBufferTotal, "bytes of partial requests all clients together may have keyfence buffer (like Redis's maxmemory-clients); a client that would pass it is refused")
	num(&s.sharedConns, "shared-conns", "PROXY_SHARED_CONNS", 1, "multiplexed upstream connections per database and protocol (one batches best, as twemproxy's server_connections: 1)")
	num(&s.maxPinned, "max-pinned", "PROXY_MAX_PINNED", 1000, "upstream connections pinned to clients (MULTI, WATCH, blocking commands) at most")
	boolean(&s.breaker, "breaker", "PROXY_BREAKER", true, "circuit breaker: while upstream keeps failing, fail fast with TRYAGAIN instead of piling up")
	boolean(&s.fallback, "fallback", "PROXY_FALLBACK", false, "with --breaker: answer cacheable reads from an in-memory cache while upstream fails (costs throughput: see README)")
	num(&s.breakerFailures, "breaker-failures", "PROXY_BREAKER_FAILURES", 5, "consecutive upstream failures that open the circuit breaker")
	dur(&s.breakerOpenTimeout, "breaker-open-timeout", "PROXY_BREAKER_OPEN_TIMEOUT", 30*time.Second, "how long the breaker stays open before one probe")
	num(&s.breakerProbes, "breaker-half-open-probes", "PROXY_BREAKER_HALF_OPEN_PROBES", 1, "probes let through when half-open; all must succeed to close")
	dur(&s.fallbackTTL, "fallback-ttl", "PROXY_FALLBACK_TTL", 30*time.Second, "longest a cached read may be served during an outage (never past the key's own TTL when known)")
	num(&s.fallbackMaxBytes, "fallback-max-bytes", "PROXY_FALLBACK_MAX_BYTES", 64<<20, "memory bound of the read cache")
	str(&s.redisCluster, "redis-cluster-nodes", "REDIS_CLUSTER_NODES", "", "Redis Cluster: seed nodes as host:port,host:port,...; commands go to the master of their key's slot")
	dur(&s.upstreamTimeout, "upstream-timeout", "PROXY_UPSTREAM_TIMEOUT", 10*time.Second, "longest wait for upstream's replies to a batch on a shared connection; then the connection is dropped and reads are retried twice (0: no limit)")
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
		Timeout:     s.upstreamTimeout,
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
	if err := s.upstreamTLS(&up); err != nil {
		return nil, err
	}
	if err := s.sentinel(&up); err != nil {
		return nil, err
	}
	listenTLS, err := s.listenerTLS()
	if err != nil {
		return nil, err
	}
	if up.DB < 0 {
		return nil, fmt.Errorf("--redis-db %d: must not be negative", up.DB)
	}
	for _, c := range []struct {
		name string
		v    int
	}{{"--max-clients", s.maxClients}, {"--max-request-bytes", s.maxRequestBytes}, {"--shared-conns", s.sharedConns}, {"--max-pinned", s.maxPinned},
		{"--client-output-soft-limit", s.outputSoft}, {"--client-output-hard-limit", s.outputHard}, {"--max-request-buffer-total", s.maxRequestBufferTotal}} {
		if c.v <= 0 {
			return nil, fmt.Errorf("%s %d: must be positive", c.name, c.v)
		}
	}
	if s.outputSoft > s.outputHard {
		return nil, fmt.Errorf("--client-output-soft-limit %d: must not exceed --client-output-hard-limit %d", s.outputSoft, s.outputHard)
	}
	if s.maxRequestBufferTotal < s.maxRequestBytes {
		return nil, fmt.Errorf("--max-request-buffer-total %d: must be at least --max-request-bytes %d, or no client could send its largest request", s.maxRequestBufferTotal, s.maxRequestBytes)
	}
	if s.dialTimeout <= 0 {
		return nil, fmt.Errorf("--dial-timeout %s: must be positive", s.dialTimeout)
	}
	if s.redisCluster != "" {
		if s.sentinels != "" {
			return nil, errors.New("--redis-cluster-nodes and --redis-sentinels: choose one upstream topology")
		}
		for _, n := range strings.Split(s.redisCluster, ",") {
			n = strings.TrimSpace(n)
			if err := checkHostPort("--redis-cluster-nodes", n); err != nil {
				return nil, err
			}
			up.Cluster = append(up.Cluster, n)
		}
		up.Addr = up.Cluster[0]
	}
	if s.fallback && !s.breaker {
		return nil, errors.New("--fallback needs --breaker: the cache answers while the breaker says upstream is failing")
	}
	var fb *fallback.Config
	if s.breaker {
		if s.breakerFailures <= 0 || s.breakerProbes <= 0 || s.fallbackMaxBytes <= 0 {
			return nil, errors.New("--breaker-failures, --breaker-half-open-probes and --fallback-max-bytes must be positive")
		}
		fb = &fallback.Config{
			FailureThreshold: uint32(s.breakerFailures),
			OpenTimeout:      s.breakerOpenTimeout,
			HalfOpenProbes:   uint32(s.breakerProbes),
			TTL:              s.fallbackTTL,
			MaxBytes:         int64(s.fallbackMaxBytes),
		}
		if err := fb.Validate(); err != nil {
			return nil, fmt.Errorf("fallback settings: %w", err)
		}
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

			ClientOutputSoftLimit: s.outputSoft,
			ClientOutputHardLimit: s.outputHard,
			MaxRequestBufferTotal: int64(s.maxRequestBufferTotal),
			SharedConns:           s.sharedConns,
			MaxPinned:             s.maxPinned,
			TLS:                   listenTLS,
			Fallback:              fb,
			FallbackCache:         s.fallback,
		},
		admin:           s.admin,
		shutdownTimeout: s.shutdownTimeout,
		logLevel:        level,
	}, nil
}

// upstreamTLS completes up.TLS (set by --redis-tls or rediss://) from the
// --redis-tls-* settings, which are an error when TLS is off.
func (s *settings) upstreamTLS(up *proxy.UpstreamConfig) error {
	if (s.redisTLSCertFile == "") != (s.redisTLSKeyFile == "") {
		return errors.New("--redis-tls-cert-file and --redis-tls-key-file go together: set both (REDIS_TLS_CERT_FILE, REDIS_TLS_KEY_FILE)")
	}
	if up.TLS == nil {
		if s.redisTLSCAFile != "" || s.redisTLSCertFile != "" || s.redisTLSServerName != "" || s.redisTLSInsecure {
			return errors.New("--redis-tls-* settings given but upstream TLS is off: set --redis-tls (REDIS_TLS=true) or use a rediss:// REDIS_URL")
		}
		return nil
	}
	o := proxy.UpstreamTLSOptions{
		CAFile:             s.redisTLSCAFile,
		CertFile:           s.redisTLSCertFile,
		KeyFile:            s.redisTLSKeyFile,
		ServerName:         s.redisTLSServerName,
		InsecureSkipVerify: s.redisTLSInsecure,
	}
	if o.ServerName == "" && s.sentinels == "" {
		// The host connected to (REDIS_HOST or the URL's); with Sentinel,
		// left empty: each master's own host is checked.
		o.ServerName, _, _ = net.SplitHostPort(up.Addr)
	}
	c, err := proxy.UpstreamTLSConfig(o)
	if err != nil {
		return fmt.Errorf("upstream TLS: %w", err)
	}
	up.TLS = c
	return nil
}

// sentinel sets up Sentinel mode when --redis-sentinels is given.
func (s *settings) sentinel(up *proxy.UpstreamConfig) error {
	if s.sentinels == "" {
		if s.sentinelPassword != "" {
			return errors.New("--redis-sentinel-password given without --redis-sentinels")
		}
		return nil
	}
	if s.redisURL != "" {
		return errors.New("--redis-url and --redis-sentinels both name the upstream: with Sentinel, set REDIS_PASSWORD, REDIS_USERNAME, REDIS_DB and REDIS_TLS instead of a URL")
	}
	if s.sentinelMaster == "" {
		return errors.New("--redis-sentinel-master: empty")
	}
	var addrs []string
	for _, a := range strings.Split(s.sentinels, ",") {
		a = strings.TrimSpace(a)
		if err := checkHostPort("--redis-sentinels", a); err != nil {
			return err
		}
		if host, port, _ := net.SplitHostPort(a); host == "" || port == "0" {
			return fmt.Errorf("--redis-sentinels %q: want host:port", a)
		}
		addrs = append(addrs, a)
	}
	sen, err := proxy.NewSentinel(proxy.SentinelConfig{
		Addrs:    addrs,
		Master:   s.sentinelMaster,
		Password: s.sentinelPassword,
		TLS:      up.TLS,
	})
	if err != nil {
		return err
	}
	up.Sentinel = sen
	up.Addr = sen.String() // only names the upstream in logs now
	return nil
}

// listenerTLS builds the client listener's TLS from --tls-cert, --tls-key
// and --tls-client-ca; nil when they are not set.
func (s *settings) listenerTLS() (*tls.Config, error) {
	switch {
	case s.tlsCert == "" && s.tlsKey == "" && s.tlsClientCA == "":
		return nil, nil
	case s.tlsCert == "" || s.tlsKey == "":
		if s.tlsCert == "" && s.tlsKey == "" {
			return nil, errors.New("--tls-client-ca needs --tls-cert and --tls-key (PROXY_TLS_CERT, PROXY_TLS_KEY)")
		}
		return nil, errors.New("--tls-cert and --tls-key go together: set both (PROXY_TLS_CERT, PROXY_TLS_KEY)")
	}
	c, err := proxy.ListenerTLSConfig(s.tlsCert, s.tlsKey, s.tlsClientCA)
	if err != nil {
		return nil, fmt.Errorf("listener TLS: %w", err)
	}
	return c, nil
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
