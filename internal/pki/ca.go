package pki

import (
	"crypto/ecdsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/torpor-hpc/torpor/internal/atomicfile"
)

const (
	caValidity   = 10 * 365 * 24 * time.Hour
	leafValidity = 365 * 24 * time.Hour
	// renewBefore: Issue replaces a certificate that expires sooner than this.
	renewBefore = 30 * 24 * time.Hour
	clockSkew   = 5 * time.Minute
)

// Role says what a leaf certificate may be used for.
type Role int

const (
	RoleServer Role = iota + 1 // TLS server (ExtKeyUsage ServerAuth)
	RoleClient                 // TLS client (ExtKeyUsage ClientAuth)
	RoleBoth                   // both, e.g. a shim that listens and dials
)

func (r Role) String() string {
	switch r {
	case RoleServer:
		return "server"
	case RoleClient:
		return "client"
	case RoleBoth:
		return "server+client"
	}
	return fmt.Sprintf("Role(%d)", int(r))
}

func (r Role) extKeyUsage() ([]x509.ExtKeyUsage, error) {
	switch r {
	case RoleServer:
		return []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, nil
	case RoleClient:
		return []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil
	case RoleBoth:
		return []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, nil
	}
	return nil, fmt.Errorf("unknown certificate role %d", int(r))
}

// CA is a certificate authority whose certificate and key live in a directory.
type CA struct {
	Cert *x509.Certificate
	key  *ecdsa.PrivateKey
	dir  string
	now  func() time.Time
}

// CertFile is the path of the CA certificate.
func (ca *CA) CertFile() string { return filepath.Join(ca.dir, CAFile) }

// EnsureCA creates the CA in dir (ca.pem and ca-key.pem, ECDSA P-256, key 0600,
// directory 0700) if neither file exists, and loads it otherwise.
func EnsureCA(dir string) (*CA, error) {
	return ensureCA(dir, time.Now)
}

func ensureCA(dir string, now func() time.Time) (*CA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create PKI directory %s: %w", dir, err)
	}
	certPath, keyPath := filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile)
	_, certErr := os.Stat(certPath)
	_, keyErr := os.Stat(keyPath)
	switch {
	case certErr == nil && keyErr == nil:
		return loadCA(dir, now)
	case errors.Is(certErr, fs.ErrNotExist) && errors.Is(keyErr, fs.ErrNotExist):
		return createCA(dir, now)
	case certErr == nil && errors.Is(keyErr, fs.ErrNotExist):
		return nil, fmt.Errorf("found CA certificate %s but not its key %s: restore the key, or remove %s to create a new CA (every certificate must then be reissued)", certPath, keyPath, certPath)
	case keyErr == nil && errors.Is(certErr, fs.ErrNotExist):
		return nil, fmt.Errorf("found CA key %s but not its certificate %s: restore the certificate, or remove %s to create a new CA (every certificate must then be reissued)", keyPath, certPath, keyPath)
	case certErr != nil:
		return nil, fmt.Errorf("stat CA certificate %s: %w", certPath, certErr)
	default:
		return nil, fmt.Errorf("stat CA key %s: %w", keyPath, keyErr)
	}
}

func createCA(dir string, now func() time.Time) (*CA, error) {
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	t := now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"torpor"}, CommonName: caName(host, serial)},
		NotBefore:             t.Add(-clockSkew),
		NotAfter:              t.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(nil, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse new CA certificate: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(filepath.Join(dir, CAKeyFile), keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("write CA key: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(dir, CAFile), encodeCert(der), 0o644); err != nil {
		return nil, fmt.Errorf("write CA certificate: %w", err)
	}
	return &CA{Cert: cert, key: key, dir: dir, now: now}, nil
}

// caName makes CA names unique, so that two torpor CAs (two clusters, or a test's
// second CA) are never confused in "signed by unknown authority" messages.
func caName(host string, serial *big.Int) string {
	id := fmt.Sprintf("%x", serial)
	if len(id) > 8 {
		id = id[:8]
	}
	return strings.Join(strings.Fields("torpor CA "+host+" "+id), " ")
}

func loadCA(dir string, now func() time.Time) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile)
	certPEM, err := readFile("CA certificate", certPath)
	if err != nil {
		return nil, err
	}
	cert, err := parseCertPEM("CA certificate", certPath, certPEM)
	if err != nil {
		return nil, err
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("%s is not a CA certificate", certPath)
	}
	keyPEM, err := readKeyFile("CA key", keyPath)
	if err != nil {
		return nil, err
	}
	key, err := parseKeyPEM("CA key", keyPath, keyPEM)
	if err != nil {
		return nil, err
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("CA key %s does not belong to CA certificate %s", keyPath, certPath)
	}
	if t := now(); t.After(cert.NotAfter) {
		return nil, fmt.Errorf("CA certificate %s expired on %s: remove %s and %s and run `torpor coordinator --init-pki` again (every certificate is then reissued)", certPath, cert.NotAfter.Format(time.DateOnly), certPath, keyPath)
	}
	return &CA{Cert: cert, key: key, dir: dir, now: now}, nil
}

// Issue writes <dir>/<name>.pem and <dir>/<name>-key.pem (0600), a certificate signed
// by ca for role, with hosts as SANs (IP addresses and DNS names). It does nothing
// when a valid certificate with the same role and SANs, signed by this CA and not
// about to expire, is already there. Server certificates need at least one host.
func (ca *CA) Issue(dir, name string, role Role, hosts []string) error {
	return ca.issue(dir, name, role, hosts, "")
}

// IssueHostShim writes <dir>/shim.pem and <dir>/shim-key.pem: a shim
// certificate (Common Name ShimName, server and client) that also names
// host, the one cluster host it is for (a URI SAN, see HostURI), with hosts
// as its other SANs. The coordinator lets a shim that presents it register
// only as host (docs/security.md). It also writes <dir>/ca.pem, this CA's
// certificate: dir is then what that host's shim needs as its --pki.
func (ca *CA) IssueHostShim(dir, host string, hosts []string) error {
	if err := CheckHostName(host); err != nil {
		return fmt.Errorf("issue shim certificate: %w", err)
	}
	if err := ca.issue(dir, ShimName, RoleBoth, hosts, host); err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(dir, CAFile), encodeCert(ca.Cert.Raw), 0o644); err != nil {
		return fmt.Errorf("write CA certificate into %s: %w", dir, err)
	}
	return nil
}

func (ca *CA) issue(dir, name string, role Role, hosts []string, boundHost string) error {
	if name == "" || strings.ContainsAny(name, `/\`) || name[0] == '.' || name == "ca" {
		return fmt.Errorf("issue certificate: invalid name %q", name)
	}
	var uris []*url.URL
	if boundHost != "" {
		u, err := url.Parse(HostURI(boundHost))
		if err != nil {
			return fmt.Errorf("issue certificate %s: %w", name, err)
		}
		uris = append(uris, u)
	}
	eku, err := role.extKeyUsage()
	if err != nil {
		return fmt.Errorf("issue certificate %s: %w", name, err)
	}
	ips, dns, err := splitHosts(hosts)
	if err != nil {
		return fmt.Errorf("issue certificate %s: %w", name, err)
	}
	if role != RoleClient && len(ips)+len(dns) == 0 {
		return fmt.Errorf("issue %s certificate %s: a server certificate needs at least one host name or IP address", role, name)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create certificate directory %s: %w", dir, err)
	}
	certPath, keyPath := CertPaths(dir, name)
	if ca.current(certPath, keyPath, eku, ips, dns, uris) {
		return nil
	}

	key, err := newKey()
	if err != nil {
		return err
	}
	serial, err := newSerial()
	if err != nil {
		return err
	}
	t := ca.now()
	notAfter := t.Add(leafValidity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{Organization: []string{"torpor"}, CommonName: name},
		NotBefore:    t.Add(-clockSkew),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  eku,
		IPAddresses:  ips,
		DNSNames:     dns,
		URIs:         uris,
	}
	der, err := x509.CreateCertificate(nil, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return fmt.Errorf("sign certificate %s: %w", name, err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(keyPath, keyPEM, 0o600); err != nil {
		return fmt.Errorf("write key of %s: %w", name, err)
	}
	if err := atomicfile.Write(certPath, encodeCert(der), 0o644); err != nil {
		return fmt.Errorf("write certificate of %s: %w", name, err)
	}
	return nil
}

// current reports whether the certificate at certPath is usable as is: its key is
// there (0600) and matches, it chains to this CA, has the same usages and SANs, and
// is not about to expire.
func (ca *CA) current(certPath, keyPath string, eku []x509.ExtKeyUsage, ips []net.IP, dns []string, uris []*url.URL) bool {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return false
	}
	cert, err := parseCertPEM("certificate", certPath, certPEM)
	if err != nil {
		return false
	}
	keyPEM, err := readKeyFile("key", keyPath)
	if err != nil {
		return false
	}
	key, err := parseKeyPEM("key", keyPath, keyPEM)
	if err != nil || !key.PublicKey.Equal(cert.PublicKey) {
		return false
	}
	t := ca.now()
	if t.Add(renewBefore).After(cert.NotAfter) && cert.NotAfter.Before(ca.Cert.NotAfter) {
		return false
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: t, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return false
	}
	if !slices.Equal(sortedEKU(cert.ExtKeyUsage), sortedEKU(eku)) {
		return false
	}
	return slices.Equal(ipStrings(cert.IPAddresses), ipStrings(ips)) && slices.Equal(sortedStrings(cert.DNSNames), sortedStrings(dns)) &&
		slices.Equal(uriStrings(cert.URIs), uriStrings(uris))
}

func uriStrings(us []*url.URL) []string {
	s := make([]string, 0, len(us))
	for _, u := range us {
		s = append(s, u.String())
	}
	slices.Sort(s)
	return s
}

// splitHosts separates IP addresses from DNS names, lower-cases names and drops
// duplicates.
func splitHosts(hosts []string) ([]net.IP, []string, error) {
	var ips []net.IP
	var dns []string
	seen := map[string]bool{}
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		if h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			if ip4 := ip.To4(); ip4 != nil {
				ip = ip4
			}
			if !seen[ip.String()] {
				seen[ip.String()] = true
				ips = append(ips, ip)
			}
			continue
		}
		h = strings.ToLower(strings.TrimSuffix(h, "."))
		if strings.ContainsAny(h, " /\\:@") {
			return nil, nil, fmt.Errorf("%q is neither an IP address nor a host name", h)
		}
		if !seen[h] {
			seen[h] = true
			dns = append(dns, h)
		}
	}
	return ips, dns, nil
}

func ipStrings(ips []net.IP) []string {
	s := make([]string, 0, len(ips))
	for _, ip := range ips {
		s = append(s, ip.String())
	}
	slices.Sort(s)
	return s
}

func sortedStrings(in []string) []string {
	s := slices.Clone(in)
	slices.Sort(s)
	return slices.Compact(s)
}

func sortedEKU(in []x509.ExtKeyUsage) []x509.ExtKeyUsage {
	s := slices.Clone(in)
	slices.Sort(s)
	return s
}
