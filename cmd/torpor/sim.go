package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/torpor-hpc/torpor/shim/simhost"
)

// runSim creates and removes simulated clusters: hosts as network
// namespaces on one machine, for the demo, `make e2e` and trying torpor out.
func runSim(ctx context.Context, args []string) error {
	fs := newFlagSet("sim", "up [--routed] NAME HOSTS | down NAME")
	routed := fs.Bool("routed", false, "hosts share no L2 segment: each is on a subnet of its own behind a router (start the shims with --vxlan and the printed underlay addresses)")
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
		if *routed {
			create = simhost.NewRoutedCluster
		}
		c, err := create(ctx, a[1], n)
		if err != nil {
			return err
		}
		for _, h := range c.Hosts {
			fmt.Printf("h%d netns=%s bridge=%s addr=%s", h.Index, h.NetNS, h.Bridge, h.Addr)
			if h.Underlay != "" {
				fmt.Printf(" underlay=%s", h.Underlay)
			}
			fmt.Println()
		}
		if *routed {
			fmt.Printf("shims: torpor shim --vxlan %s ...\n", strings.Join(c.Underlay(), ","))
		}
		return nil
	case len(a) == 2 && a[0] == "down":
		return simhost.Remove(a[1])
	}
	fs.Usage()
	return exitError{2}
}
