// Command applog is the workload of benchmark B6: a program that appends to
// a log it holds open, as an application writing its own output does. It
// creates the log with -size MiB of data, then, at every SIGUSR1, appends
// -grow MiB more; the benchmark signals it and waits for its status to say
// the append is done before it checkpoints.
//
//	applog -log /x/app.log -size 1024 -grow 10 -status /x/n0.log.status
//
// The status file is opened once, kept open and rewritten in place with a
// fixed width, like memhog's: "<log MiB> <appends> ok\n"; until the log has
// its first -size MiB it holds "0 0 filling". Nothing goes to stdout.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

const statusWidth = 64

func main() {
	logPath := flag.String("log", "", "the log to create and append to (required)")
	size := flag.Int("size", 1024, "MiB written into the log at the start (at least 1)")
	grow := flag.Int("grow", 10, "MiB appended at every SIGUSR1")
	status := flag.String("status", "", "status file (required)")
	flag.Parse()
	if *logPath == "" || *status == "" || *size < 1 || *grow < 1 {
		fmt.Fprintln(os.Stderr, "usage: applog -log FILE -status FILE [-size MiB] [-grow MiB]")
		os.Exit(2)
	}
	st, err := os.OpenFile(*status, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		fail("open status file", err)
	}
	publish(st, "0 0 filling")
	// Ask for the signal before the log is filled: one sent early is kept.
	sig := make(chan os.Signal, 16)
	signal.Notify(sig, syscall.SIGUSR1)
	log, err := os.OpenFile(*logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o644)
	if err != nil {
		fail("open log", err)
	}
	buf := make([]byte, 1<<20)
	var written, appends uint64
	write := func(mib int) {
		for range mib {
			// Data, not zeros: lines that differ from MiB to MiB.
			line := fmt.Sprintf("%012d appended by applog, a log that only grows\n", written)
			for i := range buf {
				buf[i] = line[i%len(line)]
			}
			if _, err := log.Write(buf); err != nil {
				fail("append to the log", err)
			}
			written++
		}
	}
	write(*size)
	publish(st, fmt.Sprintf("%d 0 ok", written))
	for range sig {
		write(*grow)
		appends++
		publish(st, fmt.Sprintf("%d %d ok", written, appends))
	}
}

func fail(what string, err error) {
	fmt.Fprintf(os.Stderr, "applog: %s: %v\n", what, err)
	os.Exit(1)
}

// publish rewrites the status line in place at a fixed width.
func publish(f *os.File, line string) {
	_, _ = f.WriteAt([]byte(fmt.Sprintf("%-*s\n", statusWidth-1, line)), 0)
}
