// Package pki creates and loads the certificates for mutual TLS between the
// coordinator and the shims.
//
// On one machine torpor generates everything into the state directory:
//
//	<dir>/ca.pem, <dir>/ca-key.pem          the CA (ECDSA P-256, key 0600), EnsureCA
//	<dir>/<name>.pem, <dir>/<name>-key.pem  a leaf certificate and key (0600), CA.Issue
//
// On a real cluster the same files can come from the site's own CA; ServerConfig and
// ClientConfig take explicit paths. Both sides require TLS 1.3 and verify the peer
// against the CA: the server demands a client certificate (extended key usage
// ClientAuth), the client checks the server's certificate (ServerAuth) and its name
// or IP (SANs). On top of that the daemons check which of the cluster's two
// certificates a peer presents (its Common Name, CoordinatorName or ShimName;
// RequirePeer).
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
)

// File names inside a PKI directory.
const (
	CAFile    = "ca.pem"
	CAKeyFile = "ca-key.pem"
)

// initHint tells a user how to get missing certificates.
const initHint = "run `torpor coordinator --init-pki` to create the certificates in the state directory, or configure the paths of your cluster's CA, certificate and key"

// CertPaths returns the certificate and key paths of leaf name in dir.
func CertPaths(dir, name string) (cert, key string) {
	return filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
}

func newKey() (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ECDSA P-256 key: %w", err)
	}
	return k, nil
}

func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

func encodeKey(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// readFile reads a PKI file; a missing file gets the hint on how to create it.
func readFile(what, path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s %s does not exist: %s: %w", what, path, initHint, err)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s %s: %w", what, path, err)
	}
	return data, nil
}

// readKeyFile reads a private key file and refuses one that others may access.
func readKeyFile(what, path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err == nil && st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s %s has mode %#o: a private key must be accessible by its owner only; run `chmod 600 %s`", what, path, st.Mode().Perm(), path)
	}
	return readFile(what, path)
}

func parseCertPEM(what, path string, data []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s %s contains no PEM CERTIFICATE block", what, path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse %s %s: %w", what, path, err)
	}
	return c, nil
}

func parseKeyPEM(what, path string, data []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil || !strings.HasSuffix(block.Type, "PRIVATE KEY") {
		return nil, fmt.Errorf("%s %s contains no PEM PRIVATE KEY block", what, path)
	}
	var key any
	var err error
	if block.Type == "EC PRIVATE KEY" {
		key, err = x509.ParseECPrivateKey(block.Bytes)
	} else {
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	}
	if err != nil {
		return nil, fmt.Errorf("parse %s %s: %w", what, path, err)
	}
	k, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s %s is a %T, torpor expects an ECDSA key", what, path, key)
	}
	return k, nil
}
