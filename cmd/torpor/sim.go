package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/torpor-hpc/torpor/shim/cgroup"
	"github.com/torpor-hpc/torpor/shim/sandbox"
	"github.com/torpor-hpc/torpor/shim/simhost"
)

// runSim creates and removes simulated clusters: hosts as network
// namespaces on one machine, for the demo, `make e2e` and trying torpor out.
func runSim(ctx context.Context, args []string) error {
	fs := newFlagSet("sim", "up [--routed | --isolated [--private DIR,...] [--backing DIR]] NAME HOSTS | down NAME")
	routed := fs.Bool("routed", false, "hosts share no L2 segment: each is on a subnet of its own behind a router (start the shims with --vxlan and the printed underlay addresses)")
	isolated := fs.Bool("isolated", false, "--routed, and each host has a mount namespace of its own in which the --private directories are its own: start each host's shim in it, and in its network namespace (nsenter --net=/run/netns/NETNS --mount=FILE, printed); the coordinator gets a host of its own on the routed network; `sim down` removes them")
	private := fs.String("private", "/run/torpor,/var/lib/torpor", "with --isolated: the directories each host has its own copy of (its run, state and image directories)")
	backing := fs.String("backing", "", "with --isolated: where the hosts' copies are, as BACKING/h<i>/<k> for the k-th --private directory (the coordinator's: BACKING/coord/<k>) (default /var/lib/torpor-sim/NAME; `sim down` does not remove it)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	a := fs.Args()
	switch {
	case len(a) == 3 && a[0] == "up":
		n, err := strconv.Atoi(a[2])
		if err != nil {
			return fmt.Errorf("sim up: HOSTS %q is not a number", a[2])
		}
		create := simhost.NewCluster
		if *routed || *isolated {
			create = simhost.NewRoutedCluster
		}
		c, err := create(ctx, a[1], n)
		if err != nil {
			return err
		}
		if *isolated {
			if *backing == "" {
				*backing = "/var/lib/torpor-sim/" + a[1]
			}
			if err := isolateHosts(c, strings.Split(*private, ","), *backing); err != nil {
				_ = c.Close()
				return err
			}
		}
		for _, h := range c.Hosts {
			fmt.Printf("h%d netns=%s bridge=%s addr=%s", h.Index, h.NetNS, h.Bridge, h.Addr)
			if h.Underlay != "" {
				fmt.Printf(" underlay=%s", h.Underlay)
			}
			if h.MountNS != "" {
				fmt.Printf(" mountns=%s", h.MountNS)
			}
			fmt.Println()
		}
		if *routed || *isolated {
			fmt.Printf("shims: torpor shim --vxlan %s ...\n", strings.Join(c.Underlay(), ","))
		}
		if *isolated {
			fmt.Printf("each daemon in its host's namespaces: nsenter --net=/run/netns/NETNS --mount=MOUNTNS torpor shim --listen UNDERLAY:PORT ... (private: %s)\n", *private)
		}
		return nil
	case len(a) == 2 && a[0] == "down":
		err := simhost.Remove(a[1])
		// The simulated hosts' shims made it; the last cluster leaves none.
		cgroup.RemoveTopIfEmpty(sandbox.DefaultCgroupParent)
		return err
	}
	fs.Usage()
	return exitError{2}
}

// isolateHosts gives every host of c, and a coordinator, a mount namespace
// of its own in which each of dirs is backing/h<i>/<k> (backing/coord/<k>).
func isolateHosts(c *simhost.Cluster, dirs []string, backing string) error {
	for _, d := range dirs {
		if !filepath.IsAbs(d) {
			return fmt.Errorf("sim up --private %s: give absolute directories", d)
		}
	}
	for _, h := range c.Hosts {
		var binds [][2]string
		for k, d := range dirs {
			binds = append(binds, [2]string{filepath.Join(backing, fmt.Sprintf("h%d", h.Index), strconv.Itoa(k)), d})
		}
		f, err := c.NewMountNS(fmt.Sprintf("h%d", h.Index), binds)
		if err != nil {
			return err
		}
		h.MountNS = f
	}
	// And one for the coordinator, a host of its own.
	var binds [][2]string
	for k, d := range dirs {
		binds = append(binds, [2]string{filepath.Join(backing, "coord", strconv.Itoa(k)), d})
	}
	f, err := c.NewMountNS("coord", binds)
	if err != nil {
		return err
	}
	ctl, err := c.AddControlHost()
	if err != nil {
		return err
	}
	ctl.MountNS = f
	fmt.Printf("coordinator netns=%s underlay=%s mountns=%s\n", ctl.NetNS, ctl.Underlay, f)
	return nil
}
