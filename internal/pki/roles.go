package pki

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"

	"github.com/torpor-hpc/torpor/internal/names"
)

// The names of the cluster's two certificates, as `torpor coordinator
// --init-pki` issues them; a site's own CA issues them with these Common
// Names too. The coordinator's certificate stays on the coordinator's host;
// every shim host holds the shims' one. Each daemon checks which of the two
// a peer presents, so that root on one compute node (who can read the shim
// certificate there) cannot act as the coordinator towards another host's
// shim, nor pose as a shim's server towards the coordinator:
//
//	the Shim service (Dump, Restore, Destroy, ...)  CoordinatorName only
//	the image protocol between shims                 ShimName only
//	the coordinator's TLS service (Register, relays) ShimName only
//	a shim dialling the coordinator                  expects CoordinatorName
//	the coordinator or a shim dialling a shim        expects ShimName
const (
	CoordinatorName = "coordinator"
	ShimName        = "shim"
)

// hostURIPrefix begins the URI SAN by which a shim certificate names the
// one host it is for (IssueHostShim).
const hostURIPrefix = "urn:torpor:host:"

// HostURI is the URI SAN of a shim certificate for host.
func HostURI(host string) string { return hostURIPrefix + host }

// CheckHostName says why host cannot be a cluster host's name in a
// certificate: the rule of every name (internal/names), which a shim's
// registration checks too.
func CheckHostName(host string) error {
	if !names.Valid(host) {
		return fmt.Errorf("host name %q: %s", host, names.Rule)
	}
	return nil
}

// CertHosts are the hosts a certificate is for (IssueHostShim; a site's own
// CA may name several), none if it names none.
func CertHosts(cert *x509.Certificate) []string {
	var hosts []string
	for _, u := range cert.URIs {
		if h, ok := strings.CutPrefix(u.String(), hostURIPrefix); ok {
			hosts = append(hosts, h)
		}
	}
	return hosts
}

// PeerHosts are the hosts the peer's verified certificate is for
// (CertHosts), none when it names none or the peer presented none that
// verified.
func PeerHosts(cs tls.ConnectionState) []string {
	if leaf := verifiedLeaf(cs); leaf != nil {
		return CertHosts(leaf)
	}
	return nil
}

// verifiedLeaf is the peer's certificate if it verified, else nil.
func verifiedLeaf(cs tls.ConnectionState) *x509.Certificate {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return nil
	}
	return cs.VerifiedChains[0][0]
}

// PeerName is the Common Name of the peer's verified certificate, or "" when
// the peer presented none that verified.
func PeerName(cs tls.ConnectionState) string {
	if leaf := verifiedLeaf(cs); leaf != nil {
		return leaf.Subject.CommonName
	}
	return ""
}

// RequirePeer returns a copy of cfg whose handshakes fail unless the peer's
// verified certificate is one of names (CoordinatorName, ShimName), on top
// of every check cfg makes.
func RequirePeer(cfg *tls.Config, names ...string) *tls.Config {
	c := cfg.Clone()
	prev := c.VerifyConnection
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if prev != nil {
			if err := prev(cs); err != nil {
				return err
			}
		}
		return CheckPeer(cs, names...)
	}
	return c
}

// CheckPeer says why the peer of cs is none of names, or nil if it is one.
func CheckPeer(cs tls.ConnectionState, names ...string) error {
	got := PeerName(cs)
	if slices.Contains(names, got) {
		return nil
	}
	if got == "" {
		return fmt.Errorf("the peer presented no verified certificate; only %s's is accepted here", quoteAll(names))
	}
	return fmt.Errorf("the peer presented the %q certificate; only %s's is accepted here", got, quoteAll(names))
}

func quoteAll(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = fmt.Sprintf("%q", n)
	}
	return strings.Join(q, " or ")
}

// OwnHosts are the hosts cfg's own certificate is for (CertHosts).
func OwnHosts(cfg *tls.Config) []string {
	if len(cfg.Certificates) == 0 {
		return nil
	}
	c := cfg.Certificates[0]
	leaf := c.Leaf
	if leaf == nil && len(c.Certificate) > 0 {
		leaf, _ = x509.ParseCertificate(c.Certificate[0])
	}
	if leaf == nil {
		return nil
	}
	return CertHosts(leaf)
}
