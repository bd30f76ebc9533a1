package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
)

// UpstreamTLSOptions are the settings of keyfence's TLS connections to
// upstream (and to Sentinel), as given by flags or environment.
type UpstreamTLSOptions struct {
	CAFile             string // PEM CA bundle that signs the server's certificate; empty: the system's roots
	CertFile, KeyFile  string // client certificate and key, for servers that require them (mTLS)
	ServerName         string // name checked against the server's certificate; empty: the dialled host
	InsecureSkipVerify bool   // accept any server certificate (testing only)
}

// UpstreamTLSConfig builds the client side TLS configuration from o. Errors
// are one line and name the file at fault.
func UpstreamTLSConfig(o UpstreamTLSOptions) (*tls.Config, error) {
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         o.ServerName,
		InsecureSkipVerify: o.InsecureSkipVerify, //nolint:gosec // explicit operator choice
	}
	if o.CAFile != "" {
		pool, err := loadCertPool(o.CAFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	if o.CertFile != "" || o.KeyFile != "" {
		cert, err := loadKeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// ListenerTLSConfig builds the server side TLS configuration of the client
// listener. With clientCAFile, clients must present a certificate signed by
// one of its CAs (mTLS).
func ListenerTLSConfig(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	if certFile == "" || keyFile == "" {
		if clientCAFile != "" && certFile == "" && keyFile == "" {
			return nil, errors.New("client CA file given without a certificate and key for the listener")
		}
		return nil, errors.New("listener certificate and key go together: give both")
	}
	cert, err := loadKeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
	}
	if clientCAFile != "" {
		pool, err := loadCertPool(clientCAFile)
		if err != nil {
			return nil, err
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// loadCertPool reads a PEM bundle of CA certificates.
func loadCertPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s: no PEM certificate in it", file)
	}
	return pool, nil
}

// loadKeyPair reads a PEM certificate (chain) and its private key.
func loadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	if certFile == "" || keyFile == "" {
		return tls.Certificate{}, errors.New("certificate and key files go together: give both")
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate file: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("key file: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate %s with key %s: %s", certFile, keyFile, oneLine(err.Error()))
	}
	return cert, nil
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
