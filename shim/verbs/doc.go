// Package verbs refuses to checkpoint jobs that hold RDMA verbs resources.
//
// CRIU cannot checkpoint a process that uses InfiniBand, RoCE or Omni-Path
// through the verbs interface. An MPI rank that talks to the adapter (the HCA)
// directly has an open /dev/infiniband/uverbsN file descriptor, doorbell pages
// of the adapter mapped into its address space, and state that lives in the
// adapter, not in the process: queue pairs (with their QP numbers and the
// remote peers' QP numbers), completion queues, and memory registrations (with
// the keys the peers use to write into this rank's memory). None of this can
// be written into a checkpoint image, and none of it can be recreated with the
// same numbers and keys on restore, so CRIU refuses to dump such a process, or
// worse, produces an image whose restored ranks cannot talk to each other.
//
// Before a dump, the shim calls [Check] with every pid of the job-node. It
// looks, for each pid, at
//
//   - the open file descriptors (/proc/<pid>/fd): paths under
//     /dev/infiniband/ (uverbs*, rdma_cm, umad*, issm*), /dev/hfi1_* and
//     /dev/ipath*, the verbs event files (anon_inode:[infinibandevent]) and
//     RDMA netlink sockets; and, the robust test, any character device whose
//     major number belongs to an RDMA driver (231 and the majors that
//     /proc/devices and /proc/misc list for infiniband_verbs, infiniband_mad,
//     hfi1, ib_qib, ipath and rdma_cm), whatever path it was opened by,
//     deleted or not;
//   - the memory mappings (/proc/<pid>/maps and /proc/<pid>/map_files): the
//     same device paths and majors, because the adapter's pages stay mapped
//     even when the descriptor is gone.
//
// Sockets, pipes, eventfds, memfds and ordinary device files such as
// /dev/null are never reported. A process that exits during the scan is not
// an error. When something is found, Check returns an [*Error] (errors.Is
// [ErrVerbsInUse]) whose message names the processes (and MPI ranks, read from
// their environment) and what they hold, and tells the user how to run the job
// over TCP or shared memory instead:
//
//   - Open MPI 4.x: mpirun --mca pml ob1 --mca btl tcp,self,vader --mca osc ^ucx
//     (or OMPI_MCA_pml=ob1 OMPI_MCA_btl=tcp,self,vader OMPI_MCA_osc=^ucx in the
//     environment). pml ob1 keeps the UCX PML and the cm PML (libfabric and
//     PSM2 MTLs) out; the btl list keeps openib and ofi out; --mca btl ^openib
//     alone only drops the openib BTL and is not enough where UCX is the
//     default PML. Open MPI 5 names the shared-memory BTL sm instead of vader.
//   - Anything on UCX (Open MPI's pml ucx, MPICH ch4:ucx, which is how
//     Debian builds MPICH): UCX_TLS=tcp,sm,self.
//   - MPICH ch4:ofi (libfabric): FI_PROVIDER=tcp.
//
// TCP over IPoIB (for example --mca btl_tcp_if_include ib0) still uses the
// InfiniBand fabric, through the kernel, and is checkpointable. docs/infiniband.md
// explains the limitation and the way beyond it.
package verbs
