package pki

import (
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
