// Package e2e holds torpor's end-to-end tests: the real torpor binary as
// coordinator, shim daemons and CLI, on simulated hosts (network namespaces)
// with real CRIU, cgroups and eBPF. They need root.
package e2e
