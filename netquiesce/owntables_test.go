package netquiesce

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/internal/nsrun"
	"github.com/torpor-hpc/torpor/internal/testutil"
)

// readSysctls reads net.ipv4.<name> for each name in ns (nil: the process's
// own namespace).
func readSysctls(t *testing.T, n *Net, names ...string) map[string]string {
	t.Helper()
	var got map[string]string
	read := func() (err error) {
		got, err = readIPv4(names...)
		return err
	}
	var err error
	if n == nil {
		err = nsrun.OnThread(read)
	} else {
		err = nsrun.InNetNS(n.NS(), read)
	}
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// TestNamedNetnsOwnTables: a namespace NewNamedNetns makes has TCP and UDP
// hash tables of its own (a negative tcp_ehash_entries would be the
// machine's, shared), the half-open and TIME-WAIT limits of the process's
// own namespace, and making it changes nothing in the process's namespace.
func TestNamedNetnsOwnTables(t *testing.T) {
	testutil.RequireRoot(t, "creates network namespaces")
	limits := append([]string{"tcp_child_ehash_entries", "udp_child_hash_entries"}, inheritedTCP...)
	before := readSysctls(t, nil, limits...)
	n := newTestNet(t, "tables")
	got := readSysctls(t, n, append([]string{"tcp_ehash_entries", "udp_hash_entries"}, inheritedTCP...)...)
	if want := fmt.Sprint(OwnTCPBuckets); got["tcp_ehash_entries"] != want {
		t.Errorf("tcp_ehash_entries = %s in the new namespace, want %s (its own table)", got["tcp_ehash_entries"], want)
	}
	if want := fmt.Sprint(OwnUDPBuckets); got["udp_hash_entries"] != want {
		t.Errorf("udp_hash_entries = %s in the new namespace, want %s (its own table)", got["udp_hash_entries"], want)
	}
	for _, k := range inheritedTCP {
		if got[k] != before[k] {
			t.Errorf("%s = %s in the new namespace, want the process's %s", k, got[k], before[k])
		}
	}
	if after := readSysctls(t, nil, limits...); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("the process's namespace changed: %v, was %v", after, before)
	}
}

// TestOwnTablesDumpTime shows what the tables are for: a sock_diag dump of
// the new namespace's TCP sockets, against one of a namespace that shares
// the machine's table (made the old way), medians of 20.
func TestOwnTablesDumpTime(t *testing.T) {
	testutil.RequireRoot(t, "creates network namespaces")
	own := newTestNet(t, "owndump")
	name := uniq("shareddump")
	shared := netFromInNewNetNS(t, name)
	ms := func(n *Net) time.Duration {
		var ds []time.Duration
		c, err := openDiag(n)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for range 20 {
			t0 := time.Now()
			if _, err := c.list(nil); err != nil {
				t.Fatal(err)
			}
			ds = append(ds, time.Since(t0))
		}
		return medianDur(ds)
	}
	size := readSysctls(t, shared, "tcp_ehash_entries")["tcp_ehash_entries"]
	if !strings.HasPrefix(size, "-") {
		t.Fatalf("the namespace made the old way has a TCP table of its own (%s buckets)", size)
	}
	if machine, _ := strconv.Atoi(size[1:]); machine < 8*OwnTCPBuckets {
		t.Skipf("this machine's TCP table has %d buckets, too few to tell the walks apart", machine)
	}
	o, s := ms(own), ms(shared)
	t.Logf("sock_diag TCP dump: own table %v, shared table %v (medians of 20)", o, s)
	if o >= s {
		t.Errorf("a dump with the namespace's own table (%v) is not faster than with the shared one (%v)", o, s)
	}
}

// netFromInNewNetNS makes a named namespace as NewNamedNetns did before
// namespaces had tables of their own: unshared from the process's own.
func netFromInNewNetNS(t *testing.T, name string) *Net {
	t.Helper()
	ns, err := newNamedNetns(name, nsrun.InNewNetNS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := DeleteNamedNetns(name); err != nil {
			t.Error(err)
		}
	})
	n, err := OpenNet(ns)
	ns.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func medianDur(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
