package coordinator

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/url"
	"strings"
	"testing"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/torpor-hpc/torpor/agentapi"
	apiv1 "github.com/torpor-hpc/torpor/api/v1"
	"github.com/torpor-hpc/torpor/internal/pki"
)

// shimPeer is the context of a call from a shim whose verified certificate
// names hosts (none: the cluster's shared shim certificate).
func shimPeer(hosts ...string) context.Context {
	cert := &x509.Certificate{}
	for _, h := range hosts {
		u, _ := url.Parse(pki.HostURI(h))
		cert.URIs = append(cert.URIs, u)
	}
	state := tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{cert}}}
	return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{State: state}})
}

// TestRegisterBoundToHost: a shim whose certificate names its host
// registers as that host only; the shared certificate registers any host.
// A refused registration dials nothing and registers nothing.
func TestRegisterBoundToHost(t *testing.T) {
	f := newFixture(t, "h0", "h6", "h7")
	var dialed []string
	s := &Server{C: f.c, DialShim: func(_ context.Context, addr string) (apiv1.ShimClient, error) {
		dialed = append(dialed, addr)
		return nil, nil
	}}
	_, err := s.Register(shimPeer("h1"), &apiv1.RegisterRequest{Host: "h2", Address: "10.0.0.2:7801"})
	if !errors.Is(agentapi.FromRPC(err), agentapi.ErrPermission) || !strings.Contains(err.Error(), "certificate is for host h1, it cannot register as h2") {
		t.Fatalf("h1's certificate registering h2: %v, want ErrPermission naming both", err)
	}
	if len(dialed) != 0 || hasAgent(f.c, "h2") {
		t.Fatalf("after the refused registration: dialed %v, h2 registered %v", dialed, hasAgent(f.c, "h2"))
	}
	for _, c := range []struct {
		ctx  context.Context
		host string
	}{
		{shimPeer("h1"), "h1"},
		{shimPeer("h3", "h4"), "h4"}, // a site's CA may name several
		{shimPeer(), "h5"},           // the shared certificate
	} {
		if _, err := s.Register(c.ctx, &apiv1.RegisterRequest{Host: c.host, Address: "10.0.0.9:7801"}); err != nil {
			t.Errorf("register %s: %v", c.host, err)
		}
		if !hasAgent(f.c, c.host) {
			t.Errorf("%s not registered", c.host)
		}
	}
}

func hasAgent(c *Coordinator, host string) bool {
	_, err := c.agent(host)
	return err == nil
}
