package netquiesce

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/internal/nsrun"
)

// A new network namespace shares the machine's TCP and UDP socket hash
// tables unless the namespace it is created from says otherwise. Every
// sock_diag dump of a namespace walks the whole table it uses, bucket by
// bucket: on a machine of 24 GiB the TCP table has 262144 buckets, and one
// dump took 1.2-1.4 ms in a sharing namespace against 0.08-0.18 ms in one
// with 1024 buckets of its own (strace -T of ss -tn, both empty). A
// checkpoint's drain polls with such dumps while the job-node is frozen, and
// CRIU dumps TCP and UDP of both families the same way. So namespaces made
// here get tables of their own.
const (
	// OwnTCPBuckets is the size of a namespace's own TCP hash table of
	// connected sockets (net.ipv4.tcp_child_ehash_entries): 16 per socket
	// at 1024 connections, a walk of some 80 µs.
	OwnTCPBuckets = 16384
	// OwnUDPBuckets is the size of its own UDP hash table
	// (net.ipv4.udp_child_hash_entries).
	OwnUDPBuckets = 1024
)

// The kernel sizes a new namespace's tables from sysctls of the namespace
// of the thread that creates it. Setting them in the shim's own namespace
// would change every namespace anyone makes on the machine (containers',
// for one), so they are set in a namespace of this process's own, the
// nursery, which new namespaces are created from and which nothing else
// uses. It lives as long as the process holds its handle: nothing is left
// behind.
var nursery struct {
	once sync.Once
	ns   netns.NsHandle // netns.None(): the kernel has no such tables
	err  error
	// The limits the kernel derives from a table's size (half of it for
	// TIME-WAIT sockets, 1/128 of it for half-open connections), as the
	// caller's namespace has them: a namespace with a small table of its
	// own gets these, so that only the table differs from before.
	inherit map[string]string
}

// inheritedTCP are the sysctls a namespace with tables of its own gets from
// the creator's namespace instead of from its table's size.
var inheritedTCP = []string{"tcp_max_syn_backlog", "tcp_max_tw_buckets"}

const ipv4Sysctl = "/proc/sys/net/ipv4/"

func makeNursery() {
	nursery.ns = netns.None()
	// Read on a fresh thread, which is in the process's own namespace
	// even when the caller's thread is not.
	nursery.err = nsrun.OnThread(func() (err error) {
		nursery.inherit, err = readIPv4(inheritedTCP...)
		return err
	})
	if nursery.err != nil {
		return
	}
	nursery.err = nsrun.InNewNetNS(func() error {
		for k, v := range map[string]int{"tcp_child_ehash_entries": OwnTCPBuckets, "udp_child_hash_entries": OwnUDPBuckets} {
			if err := writeIPv4(k, fmt.Sprint(v)); err != nil {
				if errors.Is(err, os.ErrNotExist) {
					return nil // before Linux 6.1 (TCP) or 6.2 (UDP): shared tables, as before
				}
				return err
			}
		}
		ns, err := netns.Get()
		if err != nil {
			return err
		}
		nursery.ns = ns
		return nil
	})
	if nursery.err != nil {
		nursery.err = fmt.Errorf("prepare the network namespace new ones are created from: %w", nursery.err)
	}
}

// inNewOwnTablesNetNS is nsrun.InNewNetNS for a namespace with socket hash
// tables of its own where the kernel has them.
func inNewOwnTablesNetNS(fn func() error) error {
	nursery.once.Do(makeNursery)
	if nursery.err != nil {
		return nursery.err
	}
	if !nursery.ns.IsOpen() {
		return nsrun.InNewNetNS(fn)
	}
	return nsrun.InNetNS(nursery.ns, func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare network namespace: %w", err)
		}
		for _, k := range inheritedTCP {
			if err := writeIPv4(k, nursery.inherit[k]); err != nil {
				return err
			}
		}
		return fn()
	})
}

// readIPv4 reads net.ipv4.<name> for each name, in the calling thread's
// namespace.
func readIPv4(names ...string) (map[string]string, error) {
	got := map[string]string{}
	for _, k := range names {
		b, err := os.ReadFile(ipv4Sysctl + k)
		if err != nil {
			return nil, fmt.Errorf("read net.ipv4.%s: %w", k, err)
		}
		got[k] = strings.TrimSpace(string(b))
	}
	return got, nil
}

// writeIPv4 sets net.ipv4.<name> in the calling thread's namespace.
func writeIPv4(name, value string) error {
	if err := os.WriteFile(ipv4Sysctl+name, []byte(value), 0); err != nil {
		return fmt.Errorf("set net.ipv4.%s: %w", name, err)
	}
	return nil
}
