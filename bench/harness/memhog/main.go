// Command memhog is torpor's benchmark workload with a memory size the
// benchmark controls: it allocates -m MiB, touches every page (so every page
// is resident and lands in a checkpoint), then loops forever rewriting one
// word per page of a slice of its memory and counting iterations.
//
//	memhog -m 256 -status /x/n0.mem [-every 10ms] [-slice 1] [-fill field]
//
// With -fill field its memory holds what a stencil code's does instead of
// one non-zero byte per page: two float64 grids of a 2D heat equation (the
// current step and the next), three Gaussian hot spots over a 293.15 K
// ambient, and each iteration is a Jacobi sweep of -slice MiB of rows.
// Values near the spots are smooth doubles whose low mantissa bits vary;
// far from them (about half of each grid) they are exactly the ambient
// value: compressible, but neither zeros nor random (field.go).
//
// The status file is opened once, kept open and rewritten in place with a
// fixed width (its size never changes, which CRIU checks on restore), like
// tcpstream's: "<iterations> <MiB> ok\n". Until every page is touched it
// holds "0 <MiB> filling".
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"time"
)

const (
	statusWidth = 64
	pageSize    = 4096
)

func main() {
	mib := flag.Int("m", 16, "memory to hold, in MiB")
	status := flag.String("status", "", "status file (required)")
	every := flag.Duration("every", 10*time.Millisecond, "pause between iterations")
	slice := flag.Int("slice", 1, "MiB rewritten per iteration")
	fill := flag.String("fill", "", `"field": a stencil's float64 grids instead of a byte per page`)
	flag.Parse()
	if *status == "" || *mib < 1 || *slice < 1 || (*fill != "" && *fill != "field") {
		fmt.Fprintln(os.Stderr, "usage: memhog -m MiB -status FILE [-every 10ms] [-slice MiB] [-fill field]")
		os.Exit(2)
	}
	f, err := os.OpenFile(*status, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "memhog: open status file:", err)
		os.Exit(1)
	}
	publish(f, fmt.Sprintf("0 %d filling", *mib))
	if *fill == "field" {
		g := newField(*mib)
		runtime.GC()
		loop(f, *mib, *every, func(iter uint64) { g.sweep(*slice << 20) })
	}
	mem := make([]byte, *mib<<20)
	for i := 0; i < len(mem); i += pageSize { // non-zero: the page is really there
		mem[i] = byte(i>>12) | 1
	}
	runtime.GC()
	pages := len(mem) / pageSize
	perIter := min(*slice<<20/pageSize, pages)
	next := 0
	loop(f, *mib, *every, func(iter uint64) {
		for k := 0; k < perIter; k++ {
			p := (next + k) % pages * pageSize
			mem[p] = mem[p]*31 + byte(iter) | 1
		}
		next = (next + perIter) % pages
	})
}

// loop runs step forever, every pause, publishing the iterations.
func loop(f *os.File, mib int, every time.Duration, step func(iter uint64)) {
	var iter uint64
	lastPublish := time.Time{}
	for {
		step(iter)
		iter++
		if time.Since(lastPublish) >= 100*time.Millisecond {
			publish(f, fmt.Sprintf("%d %d ok", iter, mib))
			lastPublish = time.Now()
		}
		time.Sleep(every)
	}
}

// publish rewrites the status line in place at a fixed width.
func publish(f *os.File, line string) {
	if len(line) > statusWidth-1 {
		line = line[:statusWidth-1]
	}
	_, _ = f.WriteAt([]byte(fmt.Sprintf("%-*s\n", statusWidth-1, line)), 0)
}
