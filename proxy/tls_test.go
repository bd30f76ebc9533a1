package proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keyfence/keyfence/internal/redistest"
)

// testPKI is a CA of its own with a server certificate (127.0.0.1 and
// localhost) and a client certificate, written as PEM files.
type testPKI struct {
	caFile                string
	serverCert, serverKey string
	clientCert, clientKey string
	pool                  *x509.CertPool
	clientPair            tls.Certificate
	caCert                *x509.Certificate
	caKey                 *ecdsa.PrivateKey
	dir                   string
	serial                int64
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	p := &testPKI{dir: t.TempDir()}
	caKey := newKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "keyfence test CA " + t.Name()},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	p.caCert, err = x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	p.caKey = caKey
	p.caFile = p.writePEM(t, "ca.pem", "CERTIFICATE", der)
	p.pool = x509.NewCertPool()
	p.pool.AddCert(p.caCert)
	p.serial = 1

	p.serverCert, p.serverKey = p.issue(t, "server", x509.ExtKeyUsageServerAuth)
	p.clientCert, p.clientKey = p.issue(t, "client", x509.ExtKeyUsageClientAuth)
	p.clientPair, err = tls.LoadX509KeyPair(p.clientCert, p.clientKey)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// issue signs a certificate for 127.0.0.1 and localhost and writes it and
// its key; it returns the two file names.
func (p *testPKI) issue(t testing.TB, name string, usage x509.ExtKeyUsage) (certFile, keyFile string) {
	t.Helper()
	key := newKey(t)
	p.serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(p.serial),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return p.writePEM(t, name+".pem", "CERTIFICATE", der), p.writePEM(t, name+"-key.pem", "PRIVATE KEY", kder)
}

func (p *testPKI) writePEM(t testing.TB, name, typ string, der []byte) string {
	t.Helper()
	f := filepath.Join(p.dir, name)
	if err := os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// startTLSRedis runs redis-server with a TLS port that requires client
// certificates of pki's CA, and returns it with the TLS address. The plain
// port redistest gives every server stays open: redistest probes readiness
// there, and the test reads what landed upstream through it; keyfence is only
// ever given the TLS port.
func startTLSRedis(t *testing.T, pki *testPKI) (*redistest.Server, string) {
	t.Helper()
	var lastErr error
	for range 3 { // the TLS port is picked free but may be taken before redis binds it
		port, err := redistest.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		srv, err := redistest.Start(t.Context(), redistest.Options{Args: []string{
			"--tls-port", strconv.Itoa(port),
			"--tls-cert-file", pki.serverCert,
			"--tls-key-file", pki.serverKey,
			"--tls-ca-cert-file", pki.caFile,
			"--tls-auth-clients", "yes",
		}})
		if errors.Is(err, redistest.ErrNotFound) {
			t.Fatal(err)
		}
		if err != nil {
			lastErr = err
			continue
		}
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("redis-server log tail:\n%s", srv.LogTail(2<<10))
			}
			if err := srv.Stop(); err != nil {
				t.Error(err)
			}
		})
		return srv, net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	}
	t.Fatalf("redis-server with TLS did not start (was it built without TLS? Debian's is built with it): %v", lastErr)
	return nil, ""
}

func TestUpstreamTLS(t *testing.T) {
	t.Parallel()
	pki := newTestPKI(t)
	srv, tlsAddr := startTLSRedis(t, pki)
	ctx := testCtx(t)

	tlsCfg, err := UpstreamTLSConfig(UpstreamTLSOptions{CAFile: pki.caFile, CertFile: pki.clientCert, KeyFile: pki.clientKey})
	if err != nil {
		t.Fatal(err)
	}
	tenant := tenantFor(t)
	addr := startProxy(t, srv, func(c *Config) {
		c.Upstream.Addr = tlsAddr
		c.Upstream.TLS = tlsCfg
	})
	c := proxyClient(t, addr, nil)
	if err := c.Set(ctx, "k", "over-tls", 0).Err(); err != nil {
		t.Fatalf("SET through keyfence over upstream TLS: %v", err)
	}
	if got, err := c.Get(ctx, "k").Result(); err != nil || got != "over-tls" {
		t.Fatalf("GET = %q, %v; want over-tls", got, err)
	}
	if got, err := srv.Client().Get(ctx, "tenant:"+tenant+":k").Result(); err != nil || got != "over-tls" {
		t.Fatalf("upstream GET tenant:%s:k = %q, %v; want over-tls", tenant, got, err)
	}
	// A RESP3 session and a non-zero database dial their own connections,
	// which do HELLO and SELECT over TLS.
	c3 := proxyClient(t, addr, func(o *redis.Options) { o.Protocol = 3; o.DB = 2 })
	if err := c3.Set(ctx, "k3", "resp3", 0).Err(); err != nil {
		t.Fatalf("SET over RESP3, db 2: %v", err)
	}
	if got, err := directDB(t, srv, 2).Get(ctx, "tenant:"+tenant+":k3").Result(); err != nil || got != "resp3" {
		t.Fatalf("upstream db 2 GET tenant:%s:k3 = %q, %v; want resp3", tenant, got, err)
	}
	// The server's certificate also names localhost: checking that name
	// instead of the dialled IP works too.
	byName := tlsCfg.Clone()
	byName.ServerName = "localhost"
	c4 := proxyClient(t, startProxy(t, srv, func(c *Config) { c.Upstream.Addr = tlsAddr; c.Upstream.TLS = byName }), nil)
	if err := c4.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING with server name localhost: %v", err)
	}

	other := newTestPKI(t)
	for _, tc := range []struct {
		name string
		opts UpstreamTLSOptions
		want string // in the error reply, after keyfence's own words
	}{
		{"wrong CA", UpstreamTLSOptions{CAFile: other.caFile, CertFile: pki.clientCert, KeyFile: pki.clientKey}, "certificate signed by unknown authority"},
		{"wrong server name", UpstreamTLSOptions{CAFile: pki.caFile, CertFile: pki.clientCert, KeyFile: pki.clientKey, ServerName: "redis.example"}, "redis.example"},
		// TLS 1.3: the client's handshake ends before the server checks the
		// client certificate, so the refusal arrives with the first reply.
		{"no client certificate", UpstreamTLSOptions{CAFile: pki.caFile}, "certificate required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := UpstreamTLSConfig(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			addr := startProxy(t, srv, func(c *Config) {
				c.Upstream.Addr = tlsAddr
				c.Upstream.TLS = cfg
				c.Upstream.DialTimeout = time.Second
			})
			c := proxyClient(t, addr, func(o *redis.Options) { o.ReadTimeout = 10 * time.Second })
			start := time.Now()
			err = c.Set(ctx, "k", "v", 0).Err()
			took := time.Since(start)
			if err == nil {
				t.Fatal("SET succeeded over an upstream TLS connection that should have failed")
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "ERR keyfence: upstream unavailable") || !strings.Contains(msg, tc.want) {
				t.Fatalf("error reply %q: want keyfence's upstream error mentioning %q", msg, tc.want)
			}
			if took > 5*time.Second {
				t.Fatalf("the error took %s", took)
			}
			// The session is still usable: the client only got an error reply.
			if err := c.Do(ctx, "ECHO", "still here").Err(); err != nil {
				t.Fatalf("ECHO after the upstream error: %v", err)
			}
			t.Logf("client saw after %s: %s", took.Round(time.Millisecond), msg)
		})
	}
}

func TestListenerTLS(t *testing.T) {
	t.Parallel()
	pki := newTestPKI(t)
	up := testRedis(t)
	ctx := testCtx(t)
	tenant := tenantFor(t)
	clientTLS := func(withCert bool) func(*redis.Options) {
		return func(o *redis.Options) {
			o.TLSConfig = &tls.Config{RootCAs: pki.pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
			if withCert {
				o.TLSConfig.Certificates = []tls.Certificate{pki.clientPair}
			}
			o.DialTimeout, o.ReadTimeout = 3*time.Second, 3*time.Second
		}
	}

	t.Run("server certificate", func(t *testing.T) {
		cfg, err := ListenerTLSConfig(pki.serverCert, pki.serverKey, "")
		if err != nil {
			t.Fatal(err)
		}
		addr := startProxy(t, up, func(c *Config) { c.Tenant = tenant; c.TLS = cfg })
		c := proxyClient(t, addr, clientTLS(false))
		if err := c.Set(ctx, "k", "tls-client", 0).Err(); err != nil {
			t.Fatalf("SET over TLS: %v", err)
		}
		if got, err := up.Client().Get(ctx, "tenant:"+tenant+":k").Result(); err != nil || got != "tls-client" {
			t.Fatalf("upstream GET = %q, %v; want tls-client", got, err)
		}
		// A pipeline and a value larger than one TLS record and than the
		// session's first read buffer.
		big := strings.Repeat("x", 1<<20)
		pipe := c.Pipeline()
		pipe.Set(ctx, "big", big, 0)
		for range 100 {
			pipe.Incr(ctx, "n")
		}
		get := pipe.Get(ctx, "big")
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatalf("pipeline over TLS: %v", err)
		}
		if get.Val() != big {
			t.Fatalf("GET big: %d bytes back, want %d", len(get.Val()), len(big))
		}
		// A plain TCP client cannot talk to a TLS listener.
		plain := proxyClient(t, addr, func(o *redis.Options) { o.DialTimeout, o.ReadTimeout = 3*time.Second, 3*time.Second })
		if err := plain.Ping(ctx).Err(); err == nil {
			t.Fatal("PING over plain TCP to the TLS listener succeeded")
		}
	})

	t.Run("client certificates required", func(t *testing.T) {
		cfg, err := ListenerTLSConfig(pki.serverCert, pki.serverKey, pki.caFile)
		if err != nil {
			t.Fatal(err)
		}
		addr := startProxy(t, up, func(c *Config) { c.Tenant = tenant; c.TLS = cfg })
		c := proxyClient(t, addr, clientTLS(true))
		if got, err := c.Get(ctx, "k").Result(); err != nil || got != "tls-client" {
			t.Fatalf("GET with a client certificate = %q, %v; want tls-client", got, err)
		}
		noCert := proxyClient(t, addr, clientTLS(false))
		err = noCert.Ping(ctx).Err()
		if err == nil {
			t.Fatal("PING without a client certificate succeeded")
		}
		t.Logf("without a client certificate: %v", err)
		// A certificate of another CA is refused too.
		other := newTestPKI(t)
		wrong := proxyClient(t, addr, func(o *redis.Options) {
			clientTLS(false)(o)
			o.TLSConfig.Certificates = []tls.Certificate{other.clientPair}
		})
		if err := wrong.Ping(ctx).Err(); err == nil {
			t.Fatal("PING with a client certificate of another CA succeeded")
		}
	})
}

// TestTLSHandshakeDoesNotBlockAccept checks that a client that connects and
// never says a word of TLS does not keep other clients out: the handshake is
// done by the session, not by the accept loop.
func TestTLSHandshakeDoesNotBlockAccept(t *testing.T) {
	t.Parallel()
	pki := newTestPKI(t)
	cfg, err := ListenerTLSConfig(pki.serverCert, pki.serverKey, "")
	if err != nil {
		t.Fatal(err)
	}
	addr := startProxy(t, testRedis(t), func(c *Config) { c.TLS = cfg })
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	c := proxyClient(t, addr, func(o *redis.Options) {
		o.TLSConfig = &tls.Config{RootCAs: pki.pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
		o.DialTimeout, o.ReadTimeout = 3*time.Second, 3*time.Second
	})
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING while another client stalls its handshake: %v", err)
	}
}

func TestTLSConfigErrors(t *testing.T) {
	t.Parallel()
	pki := newTestPKI(t)
	other := newTestPKI(t)
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	for _, tc := range []struct {
		name string
		err  func() error
		want string
	}{
		{"missing CA", func() error {
			_, err := UpstreamTLSConfig(UpstreamTLSOptions{CAFile: missing})
			return err
		}, "CA file: open " + missing + ": no such file or directory"},
		{"CA not PEM", func() error {
			_, err := UpstreamTLSConfig(UpstreamTLSOptions{CAFile: notPEM})
			return err
		}, "CA file " + notPEM + ": no PEM certificate in it"},
		{"missing client certificate", func() error {
			_, err := UpstreamTLSConfig(UpstreamTLSOptions{CertFile: missing, KeyFile: pki.clientKey})
			return err
		}, "certificate file: open " + missing},
		{"missing client key", func() error {
			_, err := UpstreamTLSConfig(UpstreamTLSOptions{CertFile: pki.clientCert, KeyFile: missing})
			return err
		}, "key file: open " + missing},
		{"certificate without key", func() error {
			_, err := UpstreamTLSConfig(UpstreamTLSOptions{CertFile: pki.clientCert})
			return err
		}, "certificate and key files go together"},
		{"key of another certificate", func() error {
			_, err := UpstreamTLSConfig(UpstreamTLSOptions{CertFile: pki.clientCert, KeyFile: other.clientKey})
			return err
		}, "private key does not match public key"},
		{"listener key not PEM", func() error {
			_, err := ListenerTLSConfig(pki.serverCert, notPEM, "")
			return err
		}, "certificate " + pki.serverCert + " with key " + notPEM},
		{"listener without key", func() error {
			_, err := ListenerTLSConfig(pki.serverCert, "", "")
			return err
		}, "go together"},
		{"listener client CA missing", func() error {
			_, err := ListenerTLSConfig(pki.serverCert, pki.serverKey, missing)
			return err
		}, "CA file: open " + missing},
	} {
		err := tc.err()
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.ContainsAny(err.Error(), "\r\n") {
			t.Errorf("%s: error %v; want one line containing %q", tc.name, err, tc.want)
		}
	}
	if _, err := UpstreamTLSConfig(UpstreamTLSOptions{InsecureSkipVerify: true}); err != nil {
		t.Errorf("no files: %v", err)
	}
}
