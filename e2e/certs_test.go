package e2e

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	apiv1 "github.com/torpor-hpc/torpor/api/v1"
	"github.com/torpor-hpc/torpor/internal/pki"
)

// TestNodeRootCannotReachOtherHosts: root on a compute node holds the shim
// certificate (ca.pem, shim.pem, shim-key.pem, as README's "Several real
// hosts" copies them) and can talk to its shim's user socket. With the
// certificate it cannot call another host's shim's Shim service (Destroy,
// Dump, Status): the shim refuses any certificate but the coordinator's.
// Through the user socket its commands are refused: a relayed root is not
// root on the coordinator. The job runs on untouched, and the coordinator,
// with its own certificate, still checkpoints it.
func TestNodeRootCannotReachOtherHosts(t *testing.T) {
	c := newCluster(t, 2)
	userSock := filepath.Join(c.dir, "h2-user.sock")
	c.startShim(2, "--user-socket", userSock)
	job := c.streamJob("ring", []string{"h1", "h2"})
	c.progress(2, "started")

	m := regexp.MustCompile(`msg="shim serving"[^\n]* listen=(\S+)`).FindStringSubmatch(c.logs["shim-h2"].String())
	if m == nil {
		t.Fatalf("no listen address in the log of h2's shim:\n%s", c.logs["shim-h2"])
	}
	host, _, err := net.SplitHostPort(m[1])
	if err != nil {
		t.Fatal(err)
	}
	_, shimTLS, err := pki.Configs(c.pki, pki.ShimName, host)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(m[1], grpc.WithTransportCredentials(credentials.NewTLS(shimTLS)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	shim := apiv1.NewShimClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, node := range []string{"n0", "n1"} {
		ref := &apiv1.NodeRef{Job: job, Node: node}
		for name, call := range map[string]func() error{
			"Destroy": func() error { _, err := shim.Destroy(ctx, ref); return err },
			"Dump":    func() error { _, err := shim.Dump(ctx, &apiv1.DumpRequest{Ref: ref}); return err },
			"Status":  func() error { _, err := shim.Status(ctx, ref); return err },
		} {
			err := call()
			if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), `the peer presented the "shim" certificate`) {
				t.Errorf("%s of %s/%s with the shim certificate: %v, want PermissionDenied naming it", name, job, node, err)
			}
		}
	}
	c.progress(2, "after the shim certificate's calls")

	// Root's commands through h2's user socket.
	for _, args := range [][]string{{"ps"}, {"cancel", job}} {
		cmd := exec.Command(c.torpor, args...)
		cmd.Env = append(os.Environ(), "TORPOR_SOCKET="+userSock)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "root's commands are taken only on the coordinator's own socket") {
			t.Errorf("root's torpor %s through h2's user socket: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	c.progress(2, "after root's relayed commands")
	if s := c.jobState(job); s != "running" {
		t.Fatalf("after the refused calls the job is %s", s)
	}
	h := lastLines(c.mustCLI("checkpoint", job), 1)
	if !strings.HasPrefix(h, job+"/") {
		t.Fatalf("checkpoint printed %q, want a handle", h)
	}
	c.progress(2, "checkpoint "+h)
}

// TestShimCertificateForOneHost: `torpor coordinator --init-pki
// --pki-shim-hosts` gives each host a shim certificate of its own. h1's
// shim runs with its own; a job on h1 and h2 runs and checkpoints. Root on
// h1, who holds that certificate, cannot register as h2 with it: the
// coordinator refuses (PermissionDenied, naming both hosts) before it dials
// anything, and h2 stays registered where it was (the job streams on, the
// coordinator checkpoints it again). A shim started with another host's
// certificate stops at once, saying whose it is.
func TestShimCertificateForOneHost(t *testing.T) {
	c := newCluster(t, 2)
	pkiHosts := c.pkiHosts
	if pkiHosts == nil {
		pkiHosts = []string{"127.0.0.1", "localhost"} // --pki-hosts' default, as newCluster issued them
	}
	out, err := exec.Command(c.torpor, "coordinator", "--init-pki", "--pki", c.pki,
		"--pki-hosts", strings.Join(pkiHosts, ","), "--pki-shim-hosts", "h1,h2").CombinedOutput()
	if err != nil {
		t.Fatalf("init pki with host certificates: %v\n%s", err, out)
	}
	h1PKI := filepath.Join(c.pki, "hosts", "h1")
	c.startShim(1, "--pki", h1PKI) // waits until it registered
	job := c.streamJob("ring", []string{"h1", "h2"})
	c.progress(2, "started with h1's own certificate")
	if h := lastLines(c.mustCLI("checkpoint", job), 1); !strings.HasPrefix(h, job+"/") {
		t.Fatalf("checkpoint printed %q, want a handle", h)
	}

	// Root on h1 registers as h2 with h1's certificate.
	coordHost, _, err := net.SplitHostPort(c.addr)
	if err != nil {
		t.Fatal(err)
	}
	_, h1TLS, err := pki.Configs(h1PKI, pki.ShimName, coordHost)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(credentials.NewTLS(h1TLS)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = apiv1.NewCoordinatorClient(conn).Register(ctx, &apiv1.RegisterRequest{Host: "h2", Address: "127.0.0.1:1"})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "certificate is for host h1, it cannot register as h2") {
		t.Fatalf("h1's certificate registering as h2: %v, want PermissionDenied naming both", err)
	}
	c.progress(2, "after the refused registration")
	if h := lastLines(c.mustCLI("checkpoint", job), 1); !strings.HasPrefix(h, job+"/") {
		t.Fatalf("checkpoint after the refused registration printed %q, want a handle", h)
	}

	// A shim given another host's certificate.
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	out, err = exec.CommandContext(sctx, c.torpor, "shim", "--host", "h2", "--join", c.addr, "--pki", h1PKI,
		"--netns", c.sim.Host(2).NetNS, "--bridge", c.sim.Host(2).Bridge, "--run-dir", c.runDir, "--cgroup-parent", c.cgParent).CombinedOutput()
	if sctx.Err() != nil {
		t.Fatalf("a shim with h1's certificate as h2 kept running:\n%s", out)
	}
	if err == nil || !strings.Contains(string(out), "is for host h1, not h2") {
		t.Fatalf("a shim with h1's certificate as h2: %v\n%s", err, out)
	}
}
