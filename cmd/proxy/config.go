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
	"github.com/keyfence/keyfence/proxy/tenants"
	"github.com/keyfence/keyfence/resp"
	"github.com/keyfence/keyfence/rewrite"
	"github.com/keyfence/keyfence/telemetry"
	"github.com/keyfence/keyfence/upstream"
)

// settings are the raw values of every flag; each flag's default comes from
// its environment variable when that is set.
type settings struct {
	tenant, listen, admin, keyFormat                  string
	tenantsFile                                       string
	tenants                                           *tenants.File // read from tenantsFile by parseConfig
	quotaWait                                         time.Duration
	maxTenantMetrics                                  int
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
	maxPinned, maxScripts, scriptMaxMemory            int
	maxFunctionLibraries, maxFunctionBytes            int
	scriptTimeout                                     time.Duration
	outputSoft, outputHard, maxRequestBufferTotal     int
	dialTimeout, shutdownTimeout                      time.Duration
	fallback, breaker                                 bool
	redisCluster                                      string
	breakerFailures, breakerProbes, fallbackMaxBytes  int
	breakerOpenTimeout, fallbackTTL, upstreamTimeout  time.Duration
	logLevel, logFormat                               string
	probeInterval                                     time.Duration
	adminTokenFile                                    string
	adminPprof, eventLoop, ioURing                    bool
	// secret settings: read after parsing (see secretSetting)
	redisPasswordFile, sentinelPasswordFile, clientPasswordFile string
	adminToken                                                  string
	assumeRestoreSanitized                                      bool
}

// config is what main needs to run.
type config struct {
	proxy proxy.Config
	// Gateway mode: tenantsFile is set, tenants is the file as checked at
	// start-up and proxy.Tenant is empty. Sidecar mode: both are empty.
	tenantsFile      string
	tenants          *tenants.File
	quotaWait        time.Duration // gateway: how long a command over its tenant's ops/s quota may wait
	maxTenantMetrics int           // gateway: tenants with series of their own
	admin            string
	adminOpts        telemetry.AdminOptions
	shutdownTimeout  time.Duration
	logLevel         slog.Level
	logFormat        string
	probeInterval    time.Duration
	// warnings are logged at start-up: settings that work but are unsafe.
	warnings []string
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
	// Secrets never become a flag's default: --help prints defaults, and
	// the value would show wherever its output goes. They are resolved
	// after parsing, from the flag, the environment or a file.
	var secrets []*secretSetting
	secret := func(p *string, name, env, usage string) {
		sc := &secretSetting{dst: p, name: name, env: env}
		fs.StringVar(&sc.flagValue, name, "", usage+" (env "+env+"; visible in the process list as a flag: prefer the environment or --"+name+"-file)")
		fs.StringVar(&sc.flagFile, name+"-file", "", "file holding "+usage+"; one trailing newline is ignored (env "+env+"_FILE)")
		secrets = append(secrets, sc)
	}
	str(&s.tenant, "tenant", "TENANT_ID", "", "sidecar mode: tenant id, [A-Za-z0-9_-]{1,64}; every client belongs to it (this or --tenants-file is required)")
	str(&s.tenantsFile, "tenants-file", "PROXY_TENANTS_FILE", "", "gateway mode: YAML file of the tenants (ids, password hashes, upstream users, quotas); each client picks its tenant with AUTH <tenant> <password>")
	str(&s.listen, "listen", "PROXY_LISTEN", "127.0.0.1:6380", "address clients connect to")
	str(&s.admin, "admin", "PROXY_ADMIN", "127.0.0.1:9121", "admin HTTP address (/healthz, /readyz, /metrics, /debug/pprof); empty: off; an address other than loopback needs an admin token")
	str(&s.adminTokenFile, "admin-token-file", "PROXY_ADMIN_TOKEN_FILE", "", "file holding the bearer token every admin path but /healthz and /readyz requires (or env PROXY_ADMIN_TOKEN; no flag takes the token itself)")
	boolean(&s.adminPprof, "admin-pprof", "PROXY_ADMIN_PPROF", false, "serve /debug/pprof on the admin address")
	str(&s.keyFormat, "key-format", "PROXY_KEY_FORMAT", rewrite.DefaultKeyFormat, "namespace of the tenant's keys; {tenant} is replaced by the id")
	str(&s.redisHost, "redis-host", "REDIS_HOST", "localhost", "upstream Redis host")
	num(&s.redisPort, "redis-port", "REDIS_PORT", 6379, "upstream Redis port")
	str(&s.redisUsername, "redis-username", "REDIS_USERNAME", "", "upstream ACL user name")
	secret(&s.redisPassword, "redis-password", "REDIS_PASSWORD", "the upstream password")
	num(&s.redisDB, "redis-db", "REDIS_DB", 0, "upstream database clients start in (SELECT moves them)")
	secret(&s.redisURL, "redis-url", "REDIS_URL", "the upstream as redis://[user:password@]host:port[/db] or rediss:// for TLS; overrides the REDIS_HOST… settings")
	boolean(&s.redisTLS, "redis-tls", "REDIS_TLS", false, "connect to upstream over TLS")
	str(&s.redisTLSCAFile, "redis-tls-ca-file", "REDIS_TLS_CA_FILE", "", "PEM CA bundle that signs upstream's certificate; empty: the system's roots")
	str(&s.redisTLSCertFile, "redis-tls-cert-file", "REDIS_TLS_CERT_FILE", "", "PEM client certificate for upstreams that require one (mTLS)")
	str(&s.redisTLSKeyFile, "redis-tls-key-file", "REDIS_TLS_KEY_FILE", "", "PEM key of --redis-tls-cert-file")
	str(&s.redisTLSServerName, "redis-tls-server-name", "REDIS_TLS_SERVER_NAME", "", "name upstream's certificate must carry; empty: the host connected to")
	boolean(&s.redisTLSInsecure, "redis-tls-insecure-skip-verify", "REDIS_TLS_INSECURE_SKIP_VERIFY", false, "accept any upstream certificate (testing only)")
	boolean(&s.assumeRestoreSanitized, "assume-restore-sanitized", "PROXY_ASSUME_RESTORE_SANITIZED", false, "let RESTORE through when keyfence may not read upstream's sanitize-dump-payload (CONFIG refused to its ACL user): set only if it is yes; an upstream that says no is never trusted")
	str(&s.sentinels, "redis-sentinels", "REDIS_SENTINELS", "", "Sentinel mode: sentinels as host:port,host:port,...; the master they name is the upstream (REDIS_HOST and REDIS_PORT are ignored; TLS settings apply to the sentinels too)")
	str(&s.sentinelMaster, "redis-sentinel-master", "REDIS_SENTINEL_MASTER", upstream.DefaultSentinelMaster, "name of the master the sentinels monitor")
	secret(&s.sentinelPassword, "redis-sentinel-password", "REDIS_SENTINEL_PASSWORD", "the password of the sentinels (their requirepass)")
	str(&s.tlsCert, "tls-cert", "PROXY_TLS_CERT", "", "PEM certificate of the client listener; with --tls-key, clients must connect with TLS")
	str(&s.tlsKey, "tls-key", "PROXY_TLS_KEY", "", "PEM key of --tls-cert")
	str(&s.tlsClientCA, "tls-client-ca", "PROXY_TLS_CLIENT_CA", "", "PEM CA bundle; clients must present a certificate signed by it (mTLS)")
	secret(&s.clientPassword, "client-password", "PROXY_CLIENT_PASSWORD", "the password clients must AUTH with (empty: none, like a Redis without requirepass)")
	num(&s.maxClients, "max-clients", "PROXY_MAX_CLIENTS", 10000, "client connections at most; more get Redis's 'max number of clients reached'")
	boolean(&s.eventLoop, "event-loop", "PROXY_EVENT_LOOP", true, "serve plain TCP clients of a sidecar on one epoll event loop until a command needs more (MULTI, blocking, subscribe, scripts…), then on a goroutine each; false: a goroutine each from the start")
	boolean(&s.ioURing, "io-uring", "PROXY_IO_URING", true, "the event loop reads and writes the clients of a turn with one io_uring submission each (where io_uring cannot be set up, as under Docker's default seccomp profile, it uses read(2) and write(2) and logs why); false: read(2) and write(2) always")
	num(&s.maxRequestBytes, "max-request-bytes", "PROXY_MAX_REQUEST_BYTES", resp.DefaultLimits.MaxRequestBytes, "largest request a client may send")
	num(&s.outputSoft, "client-output-soft-limit", "PROXY_CLIENT_OUTPUT_SOFT_LIMIT", proxy.DefaultClientOutputSoftLimit, "bytes of replies held for a client before keyfence stops reading its commands until it has read them (like Redis's client-output-buffer-limit soft limit)")
	num(&s.outputHard, "client-output-hard-limit", "PROXY_CLIENT_OUTPUT_HARD_LIMIT", proxy.DefaultClientOutputHardLimit, "bytes of replies to one client's pipelined commands past which the client is disconnected (like Redis's hard limit); the shared upstream connection is unaffected")
	num(&s.maxRequestBufferTotal, "max-request-buffer-total", "PROXY_MAX_REQUEST_BUFFER_TOTAL", proxy.DefaultMaxRequestBufferTotal, "bytes of partial requests all clients together may have keyfence buffer (like Redis's maxmemory-clients); a client that would pass it is refused")
	num(&s.sharedConns, "shared-conns", "PROXY_SHARED_CONNS", 1, "multiplexed upstream connections per database and protocol (one batches best, as twemproxy's server_connections: 1)")
	num(&s.maxPinned, "max-pinned", "PROXY_MAX_PINNED", 1000, "upstream connections pinned to clients (MULTI, WATCH, blocking commands) at most")
	dur(&s.scriptTimeout, "script-timeout", "PROXY_SCRIPT_TIMEOUT", proxy.DefaultScriptTimeout, "longest a Lua script may run before keyfence stops it (below Redis's 5 s busy threshold, so other tenants wait at most this long)")
	num(&s.maxScripts, "max-scripts", "PROXY_MAX_SCRIPTS", proxy.DefaultMaxScripts, "distinct Lua scripts the tenant may load; past it EVAL of a new script is refused until SCRIPT FLUSH")
	num(&s.maxFunctionLibraries, "max-function-libraries", "PROXY_MAX_FUNCTION_LIBRARIES", proxy.DefaultMaxFunctionLibraries, "Redis 7 function libraries the tenant may have; past it FUNCTION LOAD and RESTORE of more are refused")
	num(&s.maxFunctionBytes, "max-function-bytes", "PROXY_MAX_FUNCTION_BYTES", proxy.DefaultMaxFunctionBytes, "bytes of code all of the tenant's function libraries may hold together")
	num(&s.scriptMaxMemory, "script-max-memory", "PROXY_SCRIPT_MAX_MEMORY", proxy.DefaultScriptMaxMemory, "bytes a running Lua script may grow upstream's Lua memory by before keyfence stops it")
	boolean(&s.breaker, "breaker", "PROXY_BREAKER", true, "circuit breaker: while upstream keeps failing, fail fast with TRYAGAIN instead of piling up")
	boolean(&s.fallback, "fallback", "PROXY_FALLBACK", true, "with --breaker: answer cacheable reads from an in-memory cache while upstream fails (reads seen twice are cached; see README)")
	num(&s.breakerFailures, "breaker-failures", "PROXY_BREAKER_FAILURES", 5, "consecutive upstream failures that open the circuit breaker")
	dur(&s.breakerOpenTimeout, "breaker-open-timeout", "PROXY_BREAKER_OPEN_TIMEOUT", 30*time.Second, "how long the breaker stays open before one probe")
	num(&s.breakerProbes, "breaker-half-open-probes", "PROXY_BREAKER_HALF_OPEN_PROBES", 1, "probes let through when half-open; all must succeed to close")
	dur(&s.fallbackTTL, "fallback-ttl", "PROXY_FALLBACK_TTL", 30*time.Second, "longest a cached read may be served during an outage (never past the key's own TTL when known)")
	num(&s.fallbackMaxBytes, "fallback-max-bytes", "PROXY_FALLBACK_MAX_BYTES", 64<<20, "memory bound of the read cache")
	str(&s.redisCluster, "redis-cluster-nodes", "REDIS_CLUSTER_NODES", "", "Redis Cluster: seed nodes as host:port,host:port,...; commands go to the master of their key's slot")
	dur(&s.upstreamTimeout, "upstream-timeout", "PROXY_UPSTREAM_TIMEOUT", 10*time.Second, "longest wait for upstream's replies to a batch on a shared connection; then the connection is dropped and reads are retried twice (0: no limit)")
	dur(&s.dialTimeout, "dial-timeout", "PROXY_DIAL_TIMEOUT", 2*time.Second, "upstream connect timeout")
	dur(&s.quotaWait, "quota-wait", "PROXY_QUOTA_WAIT", proxy.DefaultQuotaWait, "gateway: longest a command over its tenant's max_ops_per_second waits for its turn; past it the command is refused")
	num(&s.maxTenantMetrics, "max-tenant-metrics", "PROXY_MAX_TENANT_METRICS", telemetry.DefaultMaxTenants, "gateway: tenants with metric series of their own; the rest are counted together as tenant=_overflow")
	dur(&s.shutdownTimeout, "shutdown-timeout", "PROXY_SHUTDOWN_TIMEOUT", 10*time.Second, "how long SIGTERM waits for clients to finish")
	str(&s.logLevel, "log-level", "PROXY_LOG_LEVEL", "info", "debug, info, warn or error")
	str(&s.logFormat, "log-format", "PROXY_LOG_FORMAT", telemetry.LogText, "text (key=value) or json (one object a line)")
	dur(&s.probeInterval, "upstream-probe-interval", "PROXY_UPSTREAM_PROBE_INTERVAL", telemetry.DefaultProbeInterval, "how often upstream is probed (PING, INFO memory) for the availability and memory metrics, 1s to 1m")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), `Usage: keyfence --tenant ID [flags]            (sidecar: one tenant)
       keyfence --tenants-file PATH [flags]   (gateway: clients AUTH <tenant> <password>)
       keyfence acl --help                    (the upstream ACL user of a tenant)
       keyfence hash-password < password      (a password_hash for the tenants file)

keyfence is a Redis proxy that keeps each tenant in its own key namespace.
Every flag can also be set by the environment variable named with it.

Flags:`)
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
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var warnings []string
	for _, sc := range secrets {
		fromFlag, err := sc.resolve(given, getenv)
		if err != nil {
			return nil, err
		}
		if fromFlag && (sc.name != "redis-url" || urlHasPassword(*sc.dst)) {
			warnings = append(warnings, "--"+sc.name+" is visible to every local user in the process list (ps, /proc/<pid>/cmdline): set "+sc.env+" or --"+sc.name+"-file instead")
		}
	}
	token, err := adminToken(s.adminTokenFile, getenv)
	if err != nil {
		return nil, err
	}
	s.adminToken = token
	if s.tenants, err = loadTenants(s.tenant, s.tenantsFile, s.keyFormat, s.clientPassword, getenv); err != nil {
		return nil, err
	}
	if !s.breaker && !given["fallback"] && getenv("PROXY_FALLBACK") == "" {
		// The fallback is on by default and needs the breaker: turning the
		// breaker off turns it off too, unless it was asked for.
		s.fallback = false
	}
	cfg, err := s.config()
	if err != nil {
		return nil, err
	}
	cfg.warnings = warnings
	return cfg, nil
}

// secretSetting is a password-like setting: a flag, an environment variable
// and the *_FILE form of each. Flags win over the environment, as for every
// setting; a value and a file at the same level are an error rather than a
// guess.
type secretSetting struct {
	dst                 *string
	name, env           string
	flagValue, flagFile string
}

// resolve sets *dst and reports whether the value came from the --name flag
// itself (the only place other local users can read it).
func (sc *secretSetting) resolve(given map[string]bool, getenv func(string) string) (fromFlag bool, err error) {
	switch {
	case given[sc.name] && given[sc.name+"-file"]:
		return false, fmt.Errorf("--%s and --%s-file: set one", sc.name, sc.name)
	case given[sc.name]:
		*sc.dst = sc.flagValue
		return true, nil
	case given[sc.name+"-file"]:
		*sc.dst, err = readSecretFile("--"+sc.name+"-file", sc.flagFile)
		return false, err
	}
	v, file := getenv(sc.env), getenv(sc.env+"_FILE")
	switch {
	case v != "" && file != "":
		return false, fmt.Errorf("%s and %s_FILE: set one", sc.env, sc.env)
	case file != "":
		*sc.dst, err = readSecretFile(sc.env+"_FILE", file)
		return false, err
	}
	*sc.dst = v
	return false, nil
}

// readSecretFile reads a secret from a file as Docker and Kubernetes mount
// them. The error names the setting and the path, never the content.
func readSecretFile(setting, path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", setting, err)
	}
	v := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if v == "" {
		return "", fmt.Errorf("%s %s: the file is empty", setting, path)
	}
	if strings.ContainsAny(v, "\r\n") {
		return "", fmt.Errorf("%s %s: more than one line; the file must hold the secret alone", setting, path)
	}
	return v, nil
}

// minAdminToken is the shortest admin token accepted: a guessable token
// would make the check decoration.
const minAdminToken = 16

// adminToken reads the admin token from --admin-token-file /
// PROXY_ADMIN_TOKEN_FILE or PROXY_ADMIN_TOKEN. There is deliberately no
// flag holding the token itself.
func adminToken(file string, getenv func(string) string) (string, error) {
	env := getenv("PROXY_ADMIN_TOKEN")
	var tok string
	switch {
	case file != "" && env != "":
		return "", errors.New("PROXY_ADMIN_TOKEN and --admin-token-file (PROXY_ADMIN_TOKEN_FILE): set one")
	case file != "":
		t, err := readSecretFile("--admin-token-file", file)
		if err != nil {
			return "", err
		}
		tok = t
	default:
		tok = env
	}
	if tok != "" && len(strings.TrimSpace(tok)) < minAdminToken {
		return "", fmt.Errorf("admin token: at least %d characters, e.g. from openssl rand -hex 32", minAdminToken)
	}
	return strings.TrimSpace(tok), nil
}

// urlHasPassword reports whether a REDIS_URL carries a password (redis://
// user:pass@ or the redis://pass@ form applyURL accepts).
func urlHasPassword(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil {
		return strings.Contains(raw, "@") // unparsable: assume the worst
	}
	return u.User != nil
}

// loadTenants reads and checks the tenants file in gateway mode (nil in
// sidecar mode), so that a bad file stops start-up with its one line.
func loadTenants(tenant, path, keyFormat, clientPassword string, getenv func(string) string) (*tenants.File, error) {
	switch {
	case path == "":
		return nil, nil
	case tenant != "":
		return nil, errors.New("--tenant (TENANT_ID) and --tenants-file (PROXY_TENANTS_FILE): set one; --tenant serves one tenant, --tenants-file many")
	case clientPassword != "":
		return nil, errors.New("--client-password and --tenants-file (PROXY_TENANTS_FILE): in gateway mode each tenant's password_hash is its password")
	}
	return readTenantsFile(path, keyFormat, getenv)
}

// readTenantsFile reads and checks the tenants file, at start-up and on
// every SIGHUP.
func readTenantsFile(path, keyFormat string, getenv func(string) string) (*tenants.File, error) {
	f, err := tenants.Load(path, envLookup(getenv))
	if err != nil {
		return nil, err
	}
	for _, t := range f.Tenants {
		if _, err := rewrite.Prefix(keyFormat, t.ID); err != nil {
			return nil, err
		}
	}
	return f, nil
}

func (s *settings) config() (*config, error) {
	if s.tenants == nil {
		if s.tenant == "" {
			return nil, errors.New("no tenant: set --tenant or TENANT_ID (one tenant), or --tenants-file or PROXY_TENANTS_FILE (gateway)")
		}
		if !rewrite.ValidTenantID(s.tenant) {
			return nil, fmt.Errorf("tenant id %q: must match [A-Za-z0-9_-]{1,64}", s.tenant)
		}
		if _, err := rewrite.Prefix(s.keyFormat, s.tenant); err != nil {
			return nil, err
		}
	}
	if err := checkHostPort("--listen", s.listen); err != nil {
		return nil, err
	}
	if s.quotaWait < 0 {
		return nil, fmt.Errorf("--quota-wait %s: must not be negative", s.quotaWait)
	}
	if s.maxTenantMetrics < 1 {
		return nil, fmt.Errorf("--max-tenant-metrics %d: want 1 or more", s.maxTenantMetrics)
	}
	if s.admin != "" {
		if err := checkHostPort("--admin", s.admin); err != nil {
			return nil, err
		}
		if s.adminToken == "" && !loopback(s.admin) {
			return nil, fmt.Errorf("--admin %q is reachable from the network: set PROXY_ADMIN_TOKEN or --admin-token-file (PROXY_ADMIN_TOKEN_FILE), or bind it to 127.0.0.1", s.admin)
		}
	} else if s.adminPprof {
		return nil, errors.New("--admin-pprof needs the admin endpoint: set --admin (PROXY_ADMIN)")
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(s.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", s.logLevel)
	}
	if s.logFormat != telemetry.LogText && s.logFormat != telemetry.LogJSON {
		return nil, fmt.Errorf("--log-format %q: want text or json", s.logFormat)
	}
	if s.probeInterval < telemetry.MinProbeInterval || s.probeInterval > telemetry.MaxProbeInterval {
		return nil, fmt.Errorf("--upstream-probe-interval %s: want %s to %s", s.probeInterval, telemetry.MinProbeInterval, telemetry.MaxProbeInterval)
	}
	up := upstream.Config{
		Addr:        net.JoinHostPort(s.redisHost, strconv.Itoa(s.redisPort)),
		Username:    s.redisUsername,
		Password:    s.redisPassword,
		DB:          s.redisDB,
		DialTimeout: s.dialTimeout,
		Timeout:     s.upstreamTimeout,
	}
	up.AssumeRestoreSanitized = s.assumeRestoreSanitized
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
		{"--max-scripts", s.maxScripts}, {"--script-max-memory", s.scriptMaxMemory},
		{"--max-function-libraries", s.maxFunctionLibraries}, {"--max-function-bytes", s.maxFunctionBytes},
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
	if s.scriptTimeout < time.Millisecond {
		return nil, fmt.Errorf("--script-timeout %s: must be at least 1ms", s.scriptTimeout)
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
			Listen:                s.listen,
			Tenant:                s.tenant,
			KeyFormat:             s.keyFormat,
			Upstream:              up,
			ClientPassword:        s.clientPassword,
			MaxClients:            s.maxClients,
			MaxRequestBytes:       s.maxRequestBytes,
			GoroutinePerClient:    !s.eventLoop,
			NoIOURing:             !s.ioURing,
			ClientOutputSoftLimit: s.outputSoft,
			ClientOutputHardLimit: s.outputHard,
			MaxRequestBufferTotal: int64(s.maxRequestBufferTotal),
			SharedConns:           s.sharedConns,
			MaxPinned:             s.maxPinned,
			ScriptTimeout:         s.scriptTimeout,
			MaxScripts:            s.maxScripts,
			MaxFunctionLibraries:  s.maxFunctionLibraries,
			MaxFunctionBytes:      s.maxFunctionBytes,
			ScriptMaxMemory:       int64(s.scriptMaxMemory),
			TLS:                   listenTLS,
			Fallback:              fb,
			FallbackCache:         s.fallback,
		},
		tenantsFile:      s.tenantsFile,
		tenants:          s.tenants,
		quotaWait:        s.quotaWait,
		maxTenantMetrics: s.maxTenantMetrics,
		admin:            s.admin,
		adminOpts:        telemetry.AdminOptions{Token: s.adminToken, Pprof: s.adminPprof},
		shutdownTimeout:  s.shutdownTimeout,
		logLevel:         level,
		logFormat:        s.logFormat,
		probeInterval:    s.probeInterval,
	}, nil
}

// upstreamTLS completes up.TLS (set by --redis-tls or rediss://) from the
// --redis-tls-* settings, which are an error when TLS is off.
func (s *settings) upstreamTLS(up *upstream.Config) error {
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
func (s *settings) sentinel(up *upstream.Config) error {
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
	sen, err := upstream.NewSentinel(upstream.SentinelConfig{
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

// loopback reports whether addr (host:port) can be reached only from this
// host: a loopback IP or "localhost". An empty host means every interface.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
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
func applyURL(up *upstream.Config, raw string) error {
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

// redact shows a URL without its secret. url.Redacted hides only a
// password, but applyURL also takes redis://password@host, so user info
// without a password is hidden whole.
func redact(u *url.URL) string {
	if u.User == nil {
		return u.String()
	}
	c := *u
	if _, ok := u.User.Password(); ok {
		c.User = url.UserPassword(u.User.Username(), "xxxxx")
	} else {
		c.User = url.User("xxxxx")
	}
	return c.String()
}

func lookupEnv(name string) string { return os.Getenv(name) }

// secretFlags are the flags whose values are secrets (or, for --redis-url,
// may hold one).
var secretFlags = map[string]bool{"redis-password": true, "redis-sentinel-password": true, "client-password": true, "redis-url": true}

// redactArgs returns args (without the program name) with the values of
// secret flags replaced, in every form the flag package accepts: -name v,
// --name v, -name=v, --name=v. A --redis-url keeps everything but its
// password. Parsing stops where the flag package stops (at "--" or the
// first non-flag), but what follows is redacted too if it looks like a
// secret flag: a refused command line is still shown.
func redactArgs(args []string) []string {
	out := make([]string, len(args))
	copy(out, args)
	for i := 0; i < len(out); i++ {
		a := out[i]
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name := strings.TrimLeft(a, "-")
		value, hasValue := "", false
		if eq := strings.IndexByte(name, '='); eq >= 0 {
			name, value, hasValue = name[:eq], name[eq+1:], true
		}
		if !secretFlags[name] {
			continue
		}
		dashes := a[:len(a)-len(strings.TrimLeft(a, "-"))]
		if hasValue {
			out[i] = dashes + name + "=" + redactValue(name, value)
		} else if i+1 < len(out) {
			out[i+1] = redactValue(name, out[i+1])
			i++
		}
	}
	return out
}

func redactValue(name, v string) string {
	if name == "redis-url" {
		if u, err := url.Parse(v); err == nil {
			return redact(u)
		}
	}
	return "xxxxx"
}
