// Package netquiesce quiesces a job-node's network around a checkpoint.
//
// It has three parts, each in its own files:
//
//   - plumbing (plumbing.go, netns.go, announce.go): named network namespaces,
//     bridges, veths, addresses, routes and floating-IP moves, all through
//     namespace-bound netlink handles. Nothing here calls setns on a goroutine
//     it does not own: work that must run inside a namespace runs on a
//     throw-away goroutine whose OS thread is locked and never given back.
//   - lock (lock.go, lock_attach.go, counters.go, gen.go, bpf/quiesce.c and the
//     bpf2go output quiesce_bpfel.{go,o}): eBPF programs that drop
//     and count a sandbox's traffic while locked, attached with TCX to an
//     interface, or with cgroup_skb to a cgroup when the job has no network
//     namespace of its own. Lock/Unlock flip a map value (tens of
//     microseconds); Close detaches.
//   - drain (drain.go, sockdiag.go): lists TCP sockets over netlink sock_diag
//     and waits until no sent byte is un-acknowledged.
//
// The package knows nothing about jobs.
package netquiesce
