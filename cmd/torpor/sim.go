package main

import (
	"context"
	"fmt"
	"strconv"

	"github.com/torpor-hpc/torpor/shim/simhost"
)

// runSim creates and removes simulated clusters: hosts as network
// namespaces on one machine, for the demo, `make e2e` and trying torpor out.
func runSim(ctx context.Context, args []string) error {
	fs := newFlagSet("sim", "up NAME HOSTS | down NAME")
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
		c, err := simhost.NewCluster(ctx, a[1], n)
		if err != nil {
			return err
		}
		for _, h := range c.Hosts {
			fmt.Printf("h%d netns=%s bridge=%s addr=%s\n", h.Index, h.NetNS, h.Bridge, h.Addr)
		}
		return nil
	case len(a) == 2 && a[0] == "down":
		return simhost.Remove(a[1])
	}
	fs.Usage()
	return exitError{2}
}
