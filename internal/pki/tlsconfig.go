package pki

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
)

// ServerConfig is the TLS configuration of a server (the coordinator, or a shim
// that accepts connections): TLS 1.3, certFile/keyFile as its identity, and every
// client must present a certificate signed by the CA in caFile.
func ServerConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	pool, cert, err := loadIdentity(caFile, certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}, nil
}

// ClientConfig is the TLS configuration of a client: TLS 1.3, certFile/keyFile as
// its identity, and the server must present a certificate signed by the CA in
// caFile whose SANs match serverName (a host name or IP address). An empty
// serverName leaves it to the dialer (gRPC uses the target's host).
func ClientConfig(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	pool, cert, err := loadIdentity(caFile, certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ServerName:   serverName,
	}, nil
}

// loadIdentity loads the CA a peer must be signed by and our own key pair.
func loadIdentity(caFile, certFile, keyFile string) (*x509.CertPool, tls.Certificate, error) {
	pool, err := loadPool(caFile)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	cert, err := loadKeyPair(certFile, keyFile)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	return pool, cert, nil
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
