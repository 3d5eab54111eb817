package simhost

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/torpor-hpc/torpor/internal/testutil"
)

// TestMountNS: two hosts' mount namespaces show each its own directory at
// one path, and neither shows there what the other wrote; the machine's
// own view of the path stays empty; Close removes the namespaces.
func TestMountNS(t *testing.T) {
	testutil.RequireRoot(t, "mount namespaces")
	c := &Cluster{Name: fmt.Sprintf("m%d", os.Getpid()%100000)}
	t.Cleanup(func() { _ = c.Close() })
	dir := t.TempDir()
	common := filepath.Join(dir, "run")
	f1, err := c.NewMountNS("h1", [][2]string{{filepath.Join(dir, "h1"), common}})
	if err != nil {
		t.Fatal(err)
	}
	f2, err := c.NewMountNS("h2", [][2]string{{filepath.Join(dir, "h2"), common}})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := Command(f1, "sh", "-c", "echo one > "+common+"/x").CombinedOutput(); err != nil {
		t.Fatalf("write in h1: %v %s", err, out)
	}
	if out, err := Command(f1, "cat", common+"/x").CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "one" {
		t.Fatalf("h1 reads back %q, %v", out, err)
	}
	if out, err := Command(f2, "cat", common+"/x").CombinedOutput(); err == nil {
		t.Fatalf("h2 sees h1's file: %q", out)
	}
	if _, err := os.Stat(filepath.Join(common, "x")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the machine sees h1's file at the common path (%v)", err)
	}
	if data, err := os.ReadFile(filepath.Join(dir, "h1", "x")); err != nil || string(data) != "one\n" {
		t.Fatalf("h1's backing directory: %q %v", data, err)
	}
	if _, err := c.NewMountNS("h1", nil); err == nil {
		t.Fatal("a second namespace of h1 was made")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.mountNSDir()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s is left (%v)", c.mountNSDir(), err)
	}
}
