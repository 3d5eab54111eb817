// Command memcheck is a test workload whose memory can be checked whole: it
// fills -m MiB with a pseudo-random sequence, then forever regenerates the
// sequence and compares every byte with it, one pass after the other. A
// restored memcheck that keeps reporting passes got back every page exactly
// as it was dumped; a page that came back zero or stale ends it.
//
//	memcheck -m 32 -status /x/n0.mem
//
// The status file is opened once and rewritten in place at a fixed width
// (CRIU checks an open file's size on restore): "<passes> <MiB> ok\n", or
// "<passes> <MiB> bad at <offset>\n" before it exits 1.
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"os"
	"time"
)

const statusWidth = 64

func main() {
	mib := flag.Int("m", 32, "memory to fill and check, in MiB")
	status := flag.String("status", "", "status file (required)")
	flag.Parse()
	if *status == "" || *mib < 1 {
		fmt.Fprintln(os.Stderr, "usage: memcheck -m MiB -status FILE")
		os.Exit(2)
	}
	f, err := os.OpenFile(*status, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "memcheck: open status file:", err)
		os.Exit(1)
	}
	mem := make([]byte, *mib<<20)
	x := seed
	for i := 0; i < len(mem); i += 8 {
		x = next(x)
		binary.LittleEndian.PutUint64(mem[i:], x)
	}
	for passes := uint64(0); ; passes++ {
		publish(f, fmt.Sprintf("%d %d ok", passes, *mib))
		time.Sleep(20 * time.Millisecond)
		x := seed
		for i := 0; i < len(mem); i += 8 {
			x = next(x)
			if binary.LittleEndian.Uint64(mem[i:]) != x {
				publish(f, fmt.Sprintf("%d %d bad at %d", passes, *mib, i))
				os.Exit(1)
			}
		}
	}
}

const seed uint64 = 0x9e3779b97f4a7c15

// next is xorshift64: no page of its sequence is zero or repeats another.
func next(x uint64) uint64 {
	x ^= x << 13
	x ^= x >> 7
	x ^= x << 17
	return x
}

func publish(f *os.File, line string) {
	_, _ = f.WriteAt([]byte(fmt.Sprintf("%-*s\n", statusWidth-1, line)), 0)
}
