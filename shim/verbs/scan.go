package verbs

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Finding is one RDMA resource held by one process.
type Finding struct {
	PID  int
	Comm string
	// Rank is the MPI rank read from the process environment
	// (OMPI_COMM_WORLD_RANK, PMIX_RANK or PMI_RANK), -1 when unknown.
	Rank int
	// FD is the file descriptor, -1 for a mapping.
	FD int
	// Mapping is the address range of the first mapping of Path
	// ("7f3c00000000-7f3c00001000"), empty for a file descriptor. A device
	// mapped many times is reported once per process.
	Mapping string
	// Path is the fd's link target or the mapping's path as the kernel
	// shows them ("socket:[1234]" for a netlink socket).
	Path string
	Kind Kind
}

// String reads like "pid 4242 (xhpl) rank 3: fd 17 -> /dev/infiniband/uverbs0 (uverbs)".
func (f Finding) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "pid %d (%s)", f.PID, f.Comm)
	if f.Rank >= 0 {
		fmt.Fprintf(&b, " rank %d", f.Rank)
	}
	if f.FD >= 0 {
		fmt.Fprintf(&b, ": fd %d -> %s (%s)", f.FD, f.Path, f.Kind)
	} else {
		fmt.Fprintf(&b, ": mapping %s of %s (%s)", f.Mapping, f.Path, f.Kind)
	}
	return b.String()
}

// Scanner looks for RDMA resources in processes. The zero value scans the
// real /proc and /dev; tests point the roots elsewhere.
type Scanner struct {
	// ProcRoot is where procfs is mounted; empty means /proc.
	ProcRoot string
	// DevRoot is the directory device paths are matched under
	// (DevRoot/infiniband/uverbs*, DevRoot/hfi1_*, ...); empty means /dev.
	DevRoot string
}

// Scan returns the RDMA resources held by pids, in pid order. A pid that
// does not exist, or exits during the scan, is skipped.
func Scan(pids []int) ([]Finding, error) { return Scanner{}.Scan(pids) }

// Scan returns the RDMA resources held by pids; see the package function.
func (s Scanner) Scan(pids []int) ([]Finding, error) {
	proc := s.ProcRoot
	if proc == "" {
		proc = "/proc"
	}
	dev := s.DevRoot
	if dev == "" {
		dev = "/dev"
	}
	// Both files are optional: the fixed major 231 is known without them.
	devices, _ := os.ReadFile(filepath.Join(proc, "devices"))
	misc, _ := os.ReadFile(filepath.Join(proc, "misc"))
	t := newDevTable(filepath.Clean(dev), devices, misc)

	sorted := append([]int(nil), pids...)
	sort.Ints(sorted)
	var all []Finding
	for i, pid := range sorted {
		if i > 0 && pid == sorted[i-1] {
			continue
		}
		found, err := scanPID(filepath.Join(proc, strconv.Itoa(pid)), pid, t)
		if err != nil {
			return all, fmt.Errorf("scan pid %d for rdma resources: %w", pid, err)
		}
		all = append(all, found...)
	}
	return all, nil
}

// gone reports whether err means the process (or one of its fds) went away.
func gone(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH)
}

func scanPID(dir string, pid int, t devTable) ([]Finding, error) {
	comm, err := os.ReadFile(filepath.Join(dir, "comm"))
	if gone(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read comm: %w", err)
	}
	p := pidScan{dir: dir, t: t, base: Finding{PID: pid, Comm: strings.TrimSpace(string(comm)), Rank: -1}}
	if err := p.fds(); err != nil {
		if gone(err) {
			return nil, nil
		}
		return nil, err
	}
	if err := p.maps(); err != nil {
		if gone(err) {
			return nil, nil
		}
		return nil, err
	}
	if len(p.found) > 0 {
		rank := readRank(filepath.Join(dir, "environ"))
		for i := range p.found {
			p.found[i].Rank = rank
		}
	}
	return p.found, nil
}

type pidScan struct {
	dir   string
	t     devTable
	base  Finding
	found []Finding
}

func (p *pidScan) add(fd int, mapping, path string, k Kind) {
	f := p.base
	f.FD, f.Mapping, f.Path, f.Kind = fd, mapping, path, k
	p.found = append(p.found, f)
}

// fds classifies every open file descriptor of the process.
func (p *pidScan) fds() error {
	fdDir := filepath.Join(p.dir, "fd")
	entries, err := os.ReadDir(fdDir)
	if err != nil {
		return fmt.Errorf("list fds: %w", err)
	}
	sockets := map[uint64]int{} // socket inode -> fd
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		link := filepath.Join(fdDir, e.Name())
		target, err := os.Readlink(link)
		if gone(err) {
			continue // closed meanwhile
		}
		if err != nil {
			return fmt.Errorf("read fd %d: %w", fd, err)
		}
		switch {
		case target == verbsEventLink:
			p.add(fd, "", target, KindVerbsEvent)
		case strings.HasPrefix(target, "socket:["):
			if ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]"), 10, 64); err == nil {
				sockets[ino] = fd
			}
		case strings.HasPrefix(target, "/"):
			// Pipes, other anon inodes and the like do not start with "/";
			// memfds do ("/memfd:x (deleted)") and fail the checks below.
			if k, ok := p.t.classify(cleanTarget(target), link); ok {
				p.add(fd, "", target, k)
			}
		}
	}
	if len(sockets) == 0 {
		return nil
	}
	return p.netlink(sockets)
}

// classify decides on a file seen at path, whose magic link (in
// /proc/<pid>/fd or /proc/<pid>/map_files) is link. The device number wins:
// it finds an RDMA device under any path, and a path under DevRoot that is a
// regular file or a directory is not a device. When the link cannot be
// stat'ed (no privilege, process gone, a test fixture), the path decides.
func (t devTable) classify(path, link string) (Kind, bool) {
	var st unix.Stat_t
	if err := unix.Stat(link, &st); err == nil {
		if st.Mode&unix.S_IFMT != unix.S_IFCHR {
			return "", false
		}
		if k, ok := t.byRdev(st.Rdev); ok {
			if pk, ok := t.byPath(path); ok && k == KindRDMADevice {
				return pk, true
			}
			return k, true
		}
	}
	return t.byPath(path)
}

// netlink reports the NETLINK_RDMA sockets among the process's sockets.
func (p *pidScan) netlink(sockets map[uint64]int) error {
	f, err := os.Open(filepath.Join(p.dir, "net", "netlink"))
	if gone(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read netlink sockets: %w", err)
	}
	defer f.Close()
	// sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 {
			continue
		}
		proto, err1 := strconv.Atoi(fields[1])
		ino, err2 := strconv.ParseUint(fields[9], 10, 64)
		if err1 != nil || err2 != nil || proto != netlinkRDMA {
			continue
		}
		if fd, ok := sockets[ino]; ok {
			p.add(fd, "", fmt.Sprintf("socket:[%d]", ino), KindRDMANetlink)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read netlink sockets: %w", err)
	}
	return nil
}

// maps reports mappings of RDMA devices, once per device path. Every
// distinct file with an inode is stat'ed once through map_files, which finds
// a device whatever its path (this needs CAP_SYS_ADMIN; without it the path
// decides).
func (p *pidScan) maps() error {
	f, err := os.Open(filepath.Join(p.dir, "maps"))
	if err != nil {
		return fmt.Errorf("read maps: %w", err)
	}
	defer f.Close()
	seen := map[string]bool{} // "dev inode" already classified
	reported := map[string]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		// 7f..-7f.. rw-s 00000000 00:05 123 /dev/infiniband/uverbs0
		fields := strings.SplitN(sc.Text(), " ", 6)
		if len(fields) < 6 || fields[4] == "0" {
			continue // anonymous memory, heap, stack, vdso
		}
		path := strings.TrimLeft(fields[5], " ")
		if !strings.HasPrefix(path, "/") {
			continue
		}
		file := fields[3] + " " + fields[4]
		if seen[file] {
			continue
		}
		seen[file] = true
		clean := cleanTarget(path)
		k, ok := p.t.classify(clean, filepath.Join(p.dir, "map_files", mapFilesName(fields[0])))
		if ok && !reported[clean] {
			reported[clean] = true
			p.add(-1, fields[0], path, k)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read maps: %w", err)
	}
	return nil
}

// mapFilesName turns a maps range ("00400000-00452000", zero-padded to 8
// digits) into its map_files entry name ("400000-452000", never padded).
func mapFilesName(r string) string {
	lo, hi, ok := strings.Cut(r, "-")
	a, err1 := strconv.ParseUint(lo, 16, 64)
	b, err2 := strconv.ParseUint(hi, 16, 64)
	if !ok || err1 != nil || err2 != nil {
		return r
	}
	return fmt.Sprintf("%x-%x", a, b)
}

// readRank finds the MPI rank in a process environment, -1 when absent.
func readRank(environ string) int {
	env, err := os.ReadFile(environ)
	if err != nil {
		return -1
	}
	vars := map[string]string{}
	for kv := range strings.SplitSeq(string(env), "\x00") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			vars[k] = v
		}
	}
	for _, k := range []string{"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"} {
		if r, err := strconv.Atoi(vars[k]); err == nil && r >= 0 {
			return r
		}
	}
	return -1
}
