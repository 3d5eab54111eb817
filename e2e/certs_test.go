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
