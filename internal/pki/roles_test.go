package pki

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestRequirePeer: each side of a handshake accepts only the certificate
// names it was told to, and says which certificate it was shown.
func TestRequirePeer(t *testing.T) {
	p := newPKI(t)
	for _, n := range []string{CoordinatorName, ShimName} {
		if err := p.ca.Issue(p.dir, n, RoleBoth, []string{"127.0.0.1"}); err != nil {
			t.Fatal(err)
		}
	}
	shimServer := p.server(t, ShimName)
	shimClient := p.client(t, ShimName, "127.0.0.1")
	coordClient := p.client(t, CoordinatorName, "127.0.0.1")

	// A shim dials another shim, which takes shims.
	if serr, cerr := handshake(t, RequirePeer(shimServer, ShimName), RequirePeer(shimClient, ShimName)); serr != nil || cerr != nil {
		t.Errorf("shim to shim: server %v, client %v", serr, cerr)
	}
	// A client expecting the coordinator meets a shim's certificate.
	_, cerr := handshake(t, shimServer, RequirePeer(shimClient, CoordinatorName))
	if cerr == nil || !strings.Contains(cerr.Error(), `the peer presented the "shim" certificate; only "coordinator"'s is accepted here`) {
		t.Errorf("a shim posing as the coordinator: client error %v", cerr)
	}
	// A server taking shims only meets the coordinator's certificate.
	serr, cerr := handshake(t, RequirePeer(shimServer, ShimName), coordClient)
	if serr == nil || !strings.Contains(serr.Error(), `the peer presented the "coordinator" certificate; only "shim"'s is accepted here`) || cerr == nil {
		t.Errorf("the coordinator where only shims are taken: server %v, client %v", serr, cerr)
	}
	// Either of two names.
	if serr, cerr := handshake(t, RequirePeer(shimServer, CoordinatorName, ShimName), coordClient); serr != nil || cerr != nil {
		t.Errorf("the coordinator where both are taken: server %v, client %v", serr, cerr)
	}
	// The original configuration is not changed.
	if shimServer.VerifyConnection != nil || shimClient.VerifyConnection != nil {
		t.Error("RequirePeer changed the configuration it was given")
	}
}

// TestIssueHostShim: a host's shim certificate is a shim certificate (its
// Common Name and usages) that names its host, and only that one, where the
// peer's side of a handshake sees it; the shared one names none; issuing it
// again changes nothing unless the host changes; a bad host name is refused.
func TestIssueHostShim(t *testing.T) {
	p := newPKI(t)
	hostDir := filepath.Join(p.dir, "hosts", "node1")
	if err := p.ca.IssueHostShim(hostDir, "node1", []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	certPath, _ := CertPaths(hostDir, ShimName)
	cert := readCert(t, certPath)
	if cert.Subject.CommonName != ShimName || !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageClientAuth) || !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
		t.Errorf("host shim certificate: CN %q, usages %v; want %q, client and server", cert.Subject.CommonName, cert.ExtKeyUsage, ShimName)
	}
	if got := CertHosts(cert); !slices.Equal(got, []string{"node1"}) {
		t.Errorf("CertHosts = %v, want [node1]", got)
	}
	// The directory is a shim's whole --pki: the CA's certificate is there.
	if ca := readCert(t, filepath.Join(hostDir, CAFile)); !ca.Equal(p.ca.Cert) {
		t.Error("the host's directory has another CA certificate than the CA's")
	}
	// Again: the same certificate stays.
	if err := p.ca.IssueHostShim(hostDir, "node1", []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	if again := readCert(t, certPath); again.SerialNumber.Cmp(cert.SerialNumber) != 0 {
		t.Error("issuing the same host certificate again replaced it")
	}
	// For another host in the same directory: a new one.
	if err := p.ca.IssueHostShim(hostDir, "node2", []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	if got := CertHosts(readCert(t, certPath)); !slices.Equal(got, []string{"node2"}) {
		t.Errorf("after issuing for node2: CertHosts = %v", got)
	}
	// The rule of every name (internal/names): a shim could not register
	// as "_x" either.
	for _, bad := range []string{"", "-x", ".x", "_x", "a/b", "a b", "urn:x", strings.Repeat("h", 64)} {
		if err := p.ca.IssueHostShim(t.TempDir(), bad, []string{"127.0.0.1"}); err == nil {
			t.Errorf("IssueHostShim(%q) succeeded", bad)
		}
	}

	// What the server sees of a client with each certificate.
	var seen []string
	server := p.server(t, "shim-both")
	server.VerifyConnection = func(cs tls.ConnectionState) error {
		seen = append(seen, strings.Join(PeerHosts(cs), ","))
		return nil
	}
	ca, _, _ := p.paths(ShimName)
	hostCert, hostKey := CertPaths(hostDir, ShimName)
	bound, err := ClientConfig(ca, hostCert, hostKey, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	for _, client := range []*tls.Config{bound, p.client(t, "shim-both", "127.0.0.1")} {
		if serr, cerr := handshake(t, server, client); serr != nil || cerr != nil {
			t.Fatalf("handshake: server %v, client %v", serr, cerr)
		}
	}
	if !slices.Equal(seen, []string{"node2", ""}) {
		t.Errorf("the server saw hosts %q, want the bound certificate's node2, then none", seen)
	}
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := parseCertPEM("certificate", path, data)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}
