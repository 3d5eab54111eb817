package verbs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeProc is one process in a fixture procfs: fd links are real symlinks
// (dangling or not), the other files are plain files.
type fakeProc struct {
	comm    string
	fds     map[int]string
	maps    string
	netlink string
	environ string
}

func writeFile(tb testing.TB, path, data string) {
	tb.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		tb.Fatal(err)
	}
}

func writeProc(tb testing.TB, root string, pid int, p fakeProc) {
	tb.Helper()
	dir := filepath.Join(root, strconv.Itoa(pid))
	writeFile(tb, filepath.Join(dir, "comm"), p.comm+"\n")
	writeFile(tb, filepath.Join(dir, "maps"), p.maps)
	writeFile(tb, filepath.Join(dir, "environ"), p.environ)
	if p.netlink != "" {
		writeFile(tb, filepath.Join(dir, "net", "netlink"), p.netlink)
	}
	if err := os.MkdirAll(filepath.Join(dir, "fd"), 0o755); err != nil {
		tb.Fatal(err)
	}
	for fd, target := range p.fds {
		if err := os.Symlink(target, filepath.Join(dir, "fd", strconv.Itoa(fd))); err != nil {
			tb.Fatal(err)
		}
	}
}

const netlinkHeader = "sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode\n"

func TestScanFixture(t *testing.T) {
	normalFDs := map[int]string{
		0: "/dev/null", 1: "pipe:[4242]", 2: "/dev/pts/0", 3: "socket:[7777]",
		4: "anon_inode:[eventfd]", 5: "anon_inode:inotify", 6: "/memfd:ompi (deleted)",
		7: "/dev/infiniband_extra", 8: "/dev/hfi1", 9: "/dev/infiniband/by-path/uverbs0",
		10: "anon_inode:[eventpoll]", 11: "/home/u/infiniband/uverbs0", 12: "net:[4026531840]",
	}
	tests := []struct {
		name string
		proc fakeProc
		want []Finding // PID, Comm filled in by the test
	}{
		{
			name: "uverbs fd",
			proc: fakeProc{fds: map[int]string{3: "/dev/infiniband/uverbs0"}},
			want: []Finding{{FD: 3, Path: "/dev/infiniband/uverbs0", Kind: KindUverbs}},
		},
		{
			name: "deleted uverbs node",
			proc: fakeProc{fds: map[int]string{5: "/dev/infiniband/uverbs1 (deleted)"}},
			want: []Finding{{FD: 5, Path: "/dev/infiniband/uverbs1 (deleted)", Kind: KindUverbs}},
		},
		{
			name: "every device path",
			proc: fakeProc{fds: map[int]string{
				3: "/dev/infiniband/rdma_cm", 4: "/dev/infiniband/umad0", 5: "/dev/infiniband/issm1",
				6: "/dev/hfi1_0", 7: "/dev/ipath0", 8: "/dev/infiniband/ucm0", 9: "/dev/ipath",
			}},
			want: []Finding{
				{FD: 3, Path: "/dev/infiniband/rdma_cm", Kind: KindRDMACM},
				{FD: 4, Path: "/dev/infiniband/umad0", Kind: KindUMAD},
				{FD: 5, Path: "/dev/infiniband/issm1", Kind: KindISSM},
				{FD: 6, Path: "/dev/hfi1_0", Kind: KindHFI1},
				{FD: 7, Path: "/dev/ipath0", Kind: KindIPath},
				{FD: 8, Path: "/dev/infiniband/ucm0", Kind: KindRDMADevice},
				{FD: 9, Path: "/dev/ipath", Kind: KindIPath},
			},
		},
		{
			name: "verbs event channel",
			proc: fakeProc{fds: map[int]string{12: "anon_inode:[infinibandevent]"}},
			want: []Finding{{FD: 12, Path: "anon_inode:[infinibandevent]", Kind: KindVerbsEvent}},
		},
		{
			name: "rdma netlink socket among others",
			proc: fakeProc{
				fds: map[int]string{3: "socket:[5555]", 4: "socket:[6666]", 5: "socket:[8888]"},
				netlink: netlinkHeader +
					"0000000000000000 0   1234       00000000 0        0        0     2        0        6666\n" +
					"0000000000000000 20  1234       00000000 0        0        0     2        0        5555\n" +
					"0000000000000000 20  1235       00000000 0        0        0     2        0        9999\n",
			},
			want: []Finding{{FD: 3, Path: "socket:[5555]", Kind: KindRDMANetlink}},
		},
		{
			name: "normal fds",
			proc: fakeProc{
				fds:     normalFDs,
				netlink: netlinkHeader + "0000000000000000 0   1234       00000000 0        0        0     2        0        7777\n",
				maps: "55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 1234                       /usr/bin/xhpl\n" +
					"7f0000000000-7f0000021000 rw-p 00000000 00:00 0 \n" +
					"7f0000100000-7f0000200000 rw-s 00000000 00:01 77                         /memfd:ompi (deleted)\n" +
					"7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]\n",
			},
		},
		{
			name: "device mappings reported once per device",
			proc: fakeProc{
				maps: "00400000-00401000 r-xp 00000000 08:01 99                         /usr/bin/old\n" +
					"7f1000000000-7f1000001000 rw-s 00000000 00:05 312                        /dev/infiniband/uverbs0\n" +
					"7f1000002000-7f1000003000 rw-s 00001000 00:05 312                        /dev/infiniband/uverbs0\n" +
					"7f1000004000-7f1000005000 rw-s 00000000 00:05 313                        /dev/hfi1_0 (deleted)\n",
			},
			want: []Finding{
				{FD: -1, Mapping: "7f1000000000-7f1000001000", Path: "/dev/infiniband/uverbs0", Kind: KindUverbs},
				{FD: -1, Mapping: "7f1000004000-7f1000005000", Path: "/dev/hfi1_0 (deleted)", Kind: KindHFI1},
			},
		},
		{
			name: "rank from the environment",
			proc: fakeProc{
				fds:     map[int]string{3: "/dev/infiniband/uverbs0"},
				environ: "PATH=/usr/bin\x00OMPI_COMM_WORLD_RANK=7\x00PMIX_RANK=7\x00",
			},
			want: []Finding{{Rank: 7, FD: 3, Path: "/dev/infiniband/uverbs0", Kind: KindUverbs}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			const pid = 4242
			tt.proc.comm = "xhpl"
			writeProc(t, root, pid, tt.proc)
			got, err := Scanner{ProcRoot: root}.Scan([]int{pid})
			if err != nil {
				t.Fatalf("Scan: %v", err)
			}
			for i := range tt.want {
				tt.want[i].PID, tt.want[i].Comm = pid, "xhpl"
				if tt.want[i].Rank == 0 {
					tt.want[i].Rank = -1
				}
			}
			byFD := func(a, b Finding) int {
				if a.FD != b.FD {
					return a.FD - b.FD
				}
				return strings.Compare(a.Mapping, b.Mapping)
			}
			slices.SortFunc(got, byFD)
			slices.SortFunc(tt.want, byFD)
			if !slices.Equal(got, tt.want) {
				t.Errorf("findings:\n got %v\nwant %v", got, tt.want)
			}
		})
	}
}

func TestScanFixtureVanished(t *testing.T) {
	root := t.TempDir()
	writeProc(t, root, 10, fakeProc{comm: "rank0", fds: map[int]string{3: "/dev/infiniband/uverbs0"}})
	// pid 11 exited after its comm was read: no fd dir, no maps.
	writeFile(t, filepath.Join(root, "11", "comm"), "rank1\n")
	// pid 12 never existed.
	got, err := Scanner{ProcRoot: root}.Scan([]int{12, 11, 10, 10})
	if err != nil {
		t.Fatalf("Scan: %v", err)
	}
	if len(got) != 1 || got[0].PID != 10 {
		t.Fatalf("findings = %v, want one for pid 10", got)
	}
}

func TestScanFixtureDevRoot(t *testing.T) {
	root := t.TempDir()
	writeProc(t, root, 7, fakeProc{comm: "a.out", fds: map[int]string{
		3: "/sandbox/dev/infiniband/uverbs2", 4: "/dev/infiniband/uverbs0",
	}})
	got, err := Scanner{ProcRoot: root, DevRoot: "/sandbox/dev/"}.Scan([]int{7})
	if err != nil {
		t.Fatalf("Scan: %v", err)
	}
	if len(got) != 1 || got[0].FD != 3 || got[0].Kind != KindUverbs {
		t.Fatalf("findings = %v, want fd 3 only (DevRoot is /sandbox/dev)", got)
	}
}

func TestByRdev(t *testing.T) {
	devices := "Character devices:\n  1 mem\n 10 misc\n231 infiniband_mad\n231 infiniband_verbs\n" +
		"240 infiniband_verbs\n241 infiniband_mad\n242 hfi1\n243 ib_qib\n244 ipath\n245 hidraw\n\n" +
		"Block devices:\n246 hfi1\n"
	misc := " 58 rdma_cm\n 59 network_throughput\n"
	tab := newDevTable("/dev", []byte(devices), []byte(misc))
	empty := newDevTable("/dev", nil, nil)
	tests := []struct {
		major, minor uint32
		tab          devTable
		want         Kind // "" = not an RDMA device
	}{
		{231, 0, tab, KindUMAD},
		{231, 63, tab, KindUMAD},
		{231, 64, tab, KindISSM},
		{231, 127, tab, KindISSM},
		{231, 192, tab, KindUverbs},
		{231, 223, tab, KindUverbs},
		{231, 150, tab, KindRDMADevice},
		{231, 192, empty, KindUverbs}, // no /proc/devices: 231 is fixed
		{240, 5, tab, KindUverbs},
		{241, 1, tab, KindUMAD},
		{242, 0, tab, KindHFI1},
		{243, 0, tab, KindIPath},
		{244, 0, tab, KindIPath},
		{245, 0, tab, ""},
		{246, 0, tab, ""}, // block major of the same name
		{10, 58, tab, KindRDMACM},
		{10, 58, empty, ""},
		{10, 59, tab, ""},
		{1, 3, tab, ""},
		{136, 0, tab, ""},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d:%d", tt.major, tt.minor), func(t *testing.T) {
			k, ok := tt.tab.byRdev(unix.Mkdev(tt.major, tt.minor))
			if ok != (tt.want != "") || k != tt.want {
				t.Errorf("byRdev = %q, %v; want %q", k, ok, tt.want)
			}
		})
	}
}

func TestMapFilesName(t *testing.T) {
	for in, want := range map[string]string{
		"00400000-00452000":         "400000-452000",
		"7f1000000000-7f1000001000": "7f1000000000-7f1000001000",
		"bogus":                     "bogus",
	} {
		if got := mapFilesName(in); got != want {
			t.Errorf("mapFilesName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestErrorMessage(t *testing.T) {
	e := &Error{Findings: []Finding{
		{PID: 100, Comm: "xhpl", Rank: 0, FD: 17, Path: "/dev/infiniband/uverbs0", Kind: KindUverbs},
		{PID: 100, Comm: "xhpl", Rank: 0, FD: -1, Mapping: "7f10-7f11", Path: "/dev/infiniband/uverbs0", Kind: KindUverbs},
		{PID: 101, Comm: "xhpl", Rank: -1, FD: 3, Path: "/dev/infiniband/rdma_cm", Kind: KindRDMACM},
	}}
	var err error = fmt.Errorf("checkpoint node n1: %w", e)
	if !errors.Is(err, ErrVerbsInUse) {
		t.Error("errors.Is(err, ErrVerbsInUse) = false")
	}
	var ve *Error
	if !errors.As(err, &ve) || len(ve.Findings) != 3 {
		t.Errorf("errors.As: %v", ve)
	}
	msg := e.Error()
	for _, want := range []string{
		"CRIU cannot checkpoint RDMA verbs resources",
		"queue pairs", "memory",
		"pid 100 (xhpl) rank 0: fd 17 -> /dev/infiniband/uverbs0 (uverbs); mapping 7f10-7f11 of /dev/infiniband/uverbs0 (uverbs)",
		"pid 101 (xhpl): fd 3 -> /dev/infiniband/rdma_cm (rdma_cm)",
		"--mca pml ob1 --mca btl tcp,self,vader", "OMPI_MCA_pml=ob1", "--mca btl ^openib",
		"UCX_TLS=tcp,sm,self", "MPICH ch4:ucx", "FI_PROVIDER=tcp", "MPICH ch4:ofi",
		"docs/infiniband.md",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q:\n%s", want, msg)
		}
	}

	many := &Error{}
	for pid := range maxListed + 5 {
		many.Findings = append(many.Findings, Finding{PID: 1000 + pid, Comm: "r", Rank: pid, FD: 3, Path: "/dev/infiniband/uverbs0", Kind: KindUverbs})
	}
	msg = many.Error()
	if !strings.Contains(msg, "... and 5 more processes") || strings.Contains(msg, fmt.Sprintf("pid %d ", 1000+maxListed)) {
		t.Errorf("long list not cut after %d processes:\n%s", maxListed, msg)
	}
}
