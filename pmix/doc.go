// Package pmix is pmixd: the PID 1 of every job-node sandbox. It hosts the
// PMIx server for the job-node's ranks (through the cgo leaf package
// libpmix), registers the job's namespace, forks and execs the ranks with the
// PMIx and Open MPI direct-launch environment, forwards their stdout and
// stderr, reaps them, and ends the job when one of them fails.
//
// pmixd holds no connection across hosts: fences and direct-modex requests go
// through its Upstream (in production the per-host shim, over a unix socket it
// can re-dial after a CRIU restore; in embedded single-node mode LocalUpstream).
package pmix
