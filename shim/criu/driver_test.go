package criu

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
)

func TestFirstErrorLine(t *testing.T) {
	log := "(00.1) Warn  (criu/kerndat.c:1799): Hardware breakpoints don't seem to work\n" +
		"(00.2) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n" +
		"(00.3) Error (criu/protobuf.c:93): Read 14 bytes while 18 expected from pstree.img\n" +
		"(00.4) Error (criu/cr-restore.c:2500): Restoring FAILED.\n"
	p := filepath.Join(t.TempDir(), "restore.log")
	if err := os.WriteFile(p, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, want := FirstErrorLine(p), "Error (criu/protobuf.c:93): Read 14 bytes while 18 expected from pstree.img"; got != want {
		t.Fatalf("FirstErrorLine = %q, want %q", got, want)
	}
	if got := FirstErrorLine(filepath.Join(t.TempDir(), "missing")); got != "" {
		t.Fatalf("missing log gave %q", got)
	}
	e := &Error{Op: "restore", Line: "Error (x): y", LogPath: p, Err: errors.New("boom")}
	if !errors.Is(e, ErrFailed) || !strings.Contains(e.Error(), "Error (x): y") || !strings.Contains(e.Error(), p) {
		t.Fatalf("Error() = %q", e.Error())
	}
}

func TestOptionsToRPC(t *testing.T) {
	zero := (&Options{}).toRPC()
	if zero.GetNetworkLock() != rpc.CriuNetworkLockMethod_SKIP || zero.GetManageCgroupsMode() != rpc.CriuCgMode_IGNORE ||
		zero.GetManageCgroups() || zero.GetLogLevel() != 4 || zero.Pid != nil || zero.GhostLimit != nil {
		t.Fatalf("zero options map to %v", zero)
	}
	o := (&Options{Pid: 42, LeaveRunning: true, TCPEstablished: true, ExtUnixSk: true, FileLocks: true, LinkRemap: true,
		GhostLimit: 1 << 22, Cgroups: CgroupSoft, CgroupRoot: "/torpor/j/n", FreezeCgroup: "/sys/fs/cgroup/unified/x",
		RestoreSibling: true, NetworkLock: NetworkLockNftables, LogLevel: 2, External: []string{"unix[1]"}}).toRPC()
	if o.GetPid() != 42 || !o.GetLeaveRunning() || !o.GetTcpEstablished() || !o.GetExtUnixSk() || !o.GetFileLocks() ||
		!o.GetLinkRemap() || o.GetGhostLimit() != 1<<22 || o.GetManageCgroupsMode() != rpc.CriuCgMode_SOFT || !o.GetManageCgroups() ||
		o.GetCgRoot()[0].GetPath() != "/torpor/j/n" || o.GetFreezeCgroup() != "/sys/fs/cgroup/unified/x" || !o.GetRstSibling() ||
		o.GetNetworkLock() != rpc.CriuNetworkLockMethod_NFTABLES || o.GetLogLevel() != 2 || o.GetExternal()[0] != "unix[1]" {
		t.Fatalf("options map to %v", o)
	}
}

func TestCrErrmsg(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n", ""},
		{"", ""},
		{"Error (criu/sk-inet.c:200): no such socket\n", " Error (criu/sk-inet.c:200): no such socket"},
	} {
		if got := crErrmsg(tt.in); got != tt.want {
			t.Errorf("crErrmsg(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
