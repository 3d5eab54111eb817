// Package testuser creates unprivileged users for tests that must run as
// somebody other than root, and removes them when the test ends. It needs
// root and the shadow utilities (useradd, groupadd).
package testuser

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"testing"
)

// User is a user a test created: its own primary group and one
// supplementary group, no home directory, no login shell.
type User struct {
	Name       string
	UID, GID   int
	Supplement int // the supplementary group's gid
}

// New creates a user and registers its removal with t.Cleanup. The test
// fails (it does not skip) when it cannot: tests that need a user run as
// root, in CI too. Call it before creating what runs the user's processes
// (a cluster, sandboxes): cleanups run last-registered first, and userdel
// refuses a user who still has processes.
func New(t testing.TB) *User {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("creating a test user needs root")
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "torpor-t" + hex.EncodeToString(b[:])
	group := "torpor-g" + hex.EncodeToString(b[:])
	run(t, "groupadd", group)
	t.Cleanup(func() { run(t, "groupdel", group) })
	run(t, "useradd", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", "--groups", group, name)
	t.Cleanup(func() { run(t, "userdel", name) })
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		t.Fatal(err)
	}
	return &User{Name: name, UID: atoi(t, u.Uid), GID: atoi(t, u.Gid), Supplement: atoi(t, g.Gid)}
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

func atoi(t testing.TB, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// OpenDirs makes dir and every directory above it searchable by everybody
// (mode |= 0o111), as a test's temporary directories are not (0700): a
// job's owner must reach its files there.
func OpenDirs(t testing.TB, dir string) {
	t.Helper()
	for d := dir; d != "/" && d != "."; d = parent(d) {
		st, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm()&0o111 != 0o111 {
			if err := os.Chmod(d, st.Mode().Perm()|0o111); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func parent(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i <= 0 {
		return "/"
	}
	return p[:i]
}
