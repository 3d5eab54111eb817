package verbs

import (
	"bufio"
	"bytes"
	"path"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Kind says what kind of RDMA resource a process holds.
type Kind string

const (
	// KindUverbs is a verbs context (/dev/infiniband/uverbsN): the queue
	// pairs, completion queues and memory registrations of the process.
	KindUverbs Kind = "uverbs"
	// KindRDMACM is the RDMA connection manager (/dev/infiniband/rdma_cm).
	KindRDMACM Kind = "rdma_cm"
	// KindUMAD is a management datagram port (/dev/infiniband/umadN).
	KindUMAD Kind = "umad"
	// KindISSM is a subnet manager port (/dev/infiniband/issmN).
	KindISSM Kind = "issm"
	// KindHFI1 is an Omni-Path hardware context (/dev/hfi1_N, used by PSM2).
	KindHFI1 Kind = "hfi1"
	// KindIPath is a QLogic TrueScale context (/dev/ipathN, used by PSM).
	KindIPath Kind = "ipath"
	// KindVerbsEvent is a verbs completion channel or async event file
	// (anon_inode:[infinibandevent]); it only exists with a verbs context.
	KindVerbsEvent Kind = "verbs-event"
	// KindRDMANetlink is an open NETLINK_RDMA socket.
	KindRDMANetlink Kind = "rdma-netlink"
	// KindRDMADevice is any other character device of an RDMA driver.
	KindRDMADevice Kind = "rdma-device"
)

// Fixed numbers of the InfiniBand core (drivers/infiniband/core/uverbs_main.c
// and user_mad.c): major 231, umad minors 0-63, issm minors 64-127, uverbs
// minors 192-223. Ports beyond those get dynamic majors, listed in
// /proc/devices under the same names.
const (
	ibMajor         = 231
	ibUmadMinorEnd  = 64
	ibIssmMinorEnd  = 128
	ibUverbsMinor   = 192
	ibUverbsMinorNr = 32
	miscMajor       = 10
	netlinkRDMA     = 20 // NETLINK_RDMA
	verbsEventLink  = "anon_inode:[infinibandevent]"
	deletedSuffix   = " (deleted)"
)

// driverKinds maps the names RDMA drivers register their character devices
// under (/proc/devices) to the kind of resource they hand out.
var driverKinds = map[string]Kind{
	"infiniband_verbs": KindUverbs,
	"infiniband_mad":   KindUMAD,
	"infiniband_cm":    KindRDMADevice, // ib_ucm, removed in Linux 5.9
	"hfi1":             KindHFI1,
	"ib_qib":           KindIPath,
	"ipath":            KindIPath,
}

// devTable classifies character device numbers.
type devTable struct {
	majors  map[uint32]Kind // dynamic majors from /proc/devices
	rdmaCM  uint32          // misc minor of rdma_cm, when loaded
	haveCM  bool
	devRoot string
}

// newDevTable parses /proc/devices and /proc/misc contents (either may be
// empty: the fixed major 231 is always known).
func newDevTable(devRoot string, procDevices, procMisc []byte) devTable {
	t := devTable{majors: map[uint32]Kind{}, devRoot: devRoot}
	char := false
	sc := bufio.NewScanner(bytes.NewReader(procDevices))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "Character devices:":
			char = true
			continue
		case strings.HasSuffix(line, "devices:"):
			char = false
			continue
		}
		major, name, ok := numberedName(line)
		if !char || !ok || major == ibMajor {
			continue
		}
		if k, ok := driverKinds[name]; ok {
			t.majors[major] = k
		}
	}
	sc = bufio.NewScanner(bytes.NewReader(procMisc))
	for sc.Scan() {
		if minor, name, ok := numberedName(strings.TrimSpace(sc.Text())); ok && name == "rdma_cm" {
			t.rdmaCM, t.haveCM = minor, true
		}
	}
	return t
}

// numberedName splits "231 infiniband_verbs".
func numberedName(line string) (uint32, string, bool) {
	num, name, ok := strings.Cut(line, " ")
	if !ok {
		return 0, "", false
	}
	n, err := strconv.ParseUint(num, 10, 32)
	if err != nil {
		return 0, "", false
	}
	return uint32(n), strings.TrimSpace(name), true
}

// byRdev classifies a character device number; ok is false for devices that
// are not RDMA devices.
func (t devTable) byRdev(rdev uint64) (Kind, bool) {
	major, minor := unix.Major(rdev), unix.Minor(rdev)
	switch {
	case major == ibMajor && minor < ibUmadMinorEnd:
		return KindUMAD, true
	case major == ibMajor && minor < ibIssmMinorEnd:
		return KindISSM, true
	case major == ibMajor && minor >= ibUverbsMinor && minor < ibUverbsMinor+ibUverbsMinorNr:
		return KindUverbs, true
	case major == ibMajor:
		return KindRDMADevice, true
	case major == miscMajor && t.haveCM && minor == t.rdmaCM:
		return KindRDMACM, true
	}
	k, ok := t.majors[major]
	return k, ok
}

// byPath classifies a path as seen in /proc/<pid>/fd or /proc/<pid>/maps,
// with a trailing " (deleted)" already removed.
func (t devTable) byPath(p string) (Kind, bool) {
	rel, ok := strings.CutPrefix(p, t.devRoot+"/")
	if !ok || rel == "" {
		return "", false
	}
	if name, ok := strings.CutPrefix(rel, "infiniband/"); ok {
		switch {
		case name == "" || strings.Contains(name, "/"):
			return "", false
		case strings.HasPrefix(name, "uverbs"):
			return KindUverbs, true
		case name == "rdma_cm":
			return KindRDMACM, true
		case strings.HasPrefix(name, "umad"):
			return KindUMAD, true
		case strings.HasPrefix(name, "issm"):
			return KindISSM, true
		}
		return KindRDMADevice, true
	}
	if strings.Contains(rel, "/") {
		return "", false
	}
	switch {
	case strings.HasPrefix(rel, "hfi1_"):
		return KindHFI1, true
	case strings.HasPrefix(rel, "ipath"):
		return KindIPath, true
	}
	return "", false
}

// cleanTarget strips the " (deleted)" marker the kernel appends to the link
// target of an unlinked file.
func cleanTarget(target string) string {
	return path.Clean(strings.TrimSuffix(target, deletedSuffix))
}
