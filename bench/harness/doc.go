// Package harness is torpor's benchmark harness: it runs the benchmarks B1–B6
// described in bench/README.md on this machine (simulated hosts, real
// sandboxes, real CRIU, the real coordinator and shim agents), and writes
// every sample, the machine's facts, a markdown summary and PNG plots.
//
// Everything a benchmark creates (clusters, sandboxes, cgroups, images) is
// removed when it ends, also when it fails; a failed benchmark is reported
// as failed in the summary, never with made-up numbers.
package harness
