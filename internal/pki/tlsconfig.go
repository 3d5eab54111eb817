package pki

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"path/filepath"
)

// Configs loads the certificate name of the PKI directory dir (CAFile,
// CertPaths) as a server's and a client's TLS configuration; the client
// checks the server's name against serverName ("": the dialer's target).
func Configs(dir, name, serverName string) (server, client *tls.Config, err error) {
	ca := filepath.Join(dir, CAFile)
	cert, key := CertPaths(dir, name)
	if server, err = ServerConfig(ca, cert, key); err != nil {
		return nil, nil, err
	}
	if client, err = ClientConfig(ca, cert, key, serverName); err != nil {
		return nil, nil, err
	}
	return server, client, nil
}

// ServerConfig is the TLS configuration of a server (the coordinator, or a shim
// that accepts connections): TLS 1.3, certFile/keyFile as its identity, and every
// client must present a certificate signed by the CA in caFile.
func ServerConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg, pool, err := identityConfig(caFile, certFile, keyFile)
	if err != nil {
		return nil, err
	}
	cfg.ClientCAs = pool
	cfg.ClientAuth = tls.RequireAndVerifyClientCert
	return cfg, nil
}

// ClientConfig is the TLS configuration of a client: TLS 1.3, certFile/keyFile as
// its identity, and the server must present a certificate signed by the CA in
// caFile whose SANs match serverName (a host name or IP address). An empty
// serverName leaves it to the dialer (gRPC uses the target's host).
func ClientConfig(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	cfg, pool, err := identityConfig(caFile, certFile, keyFile)
	if err != nil {
		return nil, err
	}
	cfg.RootCAs = pool
	cfg.ServerName = serverName
	return cfg, nil
}

// identityConfig loads the CA a peer must be signed by and our own key pair,
// and returns a TLS 1.3 configuration that presents the key pair, with the pool
// of the CA for the caller to set as its roots or client CAs.
func identityConfig(caFile, certFile, keyFile string) (*tls.Config, *x509.CertPool, error) {
	pool, err := loadPool(caFile)
	if err != nil {
		return nil, nil, err
	}
	cert, err := loadKeyPair(certFile, keyFile)
	if err != nil {
		return nil, nil, err
	}
	return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}}, pool, nil
}

func loadPool(caFile string) (*x509.CertPool, error) {
	data, err := readFile("CA certificate", caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("CA certificate %s contains no PEM certificate: %s", caFile, initHint)
	}
	return pool, nil
}

func loadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	certPEM, err := readFile("certificate", certFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	keyPEM, err := readKeyFile("private key", keyFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("load certificate %s with key %s: %w", certFile, keyFile, err)
	}
	return cert, nil
}
