// Package pmix is pmixd: the PID 1 of every job-node sandbox. It hosts the
// PMIx server for the job-node's ranks (through the cgo leaf package
// libpmix), registers the job's namespace, forks and execs the ranks with the
// PMIx and Open MPI direct-launch environment, forwards their stdout and
// stderr, reaps them, and ends the job when one of them fails.
//
// pmixd holds no connection across hosts: fences and direct-modex requests go
// through its Upstream: in production the per-host shim over package link (a
// unix socket that pmixd closes before it is dumped and re-dials after a
// thaw or a CRIU restore); in embedded single-node mode LocalUpstream. Main is
// the `torpor pmixd --spec FILE` entry point.
//
// # Checkpoint events
//
// pmixd speaks standard PMIx events to the ranks (Open MPI wire only; MPICH
// ranks on the PMI-1 wire get no events and are never waited for):
//
//   - EventCheckpoint, PMIX_JCTRL_CHECKPOINT (-106), pmixd -> ranks, at the
//     prepare phase of a checkpoint, with PMIX_EVENT_NON_DEFAULT,
//     PMIX_EVENT_DO_NOT_CACHE and PMIX_JOB_CTRL_CHECKPOINT ("pmix.jctrl.ckpt")
//     = the checkpoint id.
//   - EventCheckpointComplete, PMIX_JCTRL_CHECKPOINT_COMPLETE (-107), rank ->
//     pmixd (PMIX_RANGE_RM), twice over a rank's life per checkpoint:
//     once right after registering its handler, with the bool info
//     "torpor.ckpt.registered" (KeyRegistered): the opt-in, "wait for me";
//     and once per checkpoint, with PMIX_JOB_CTRL_CHECKPOINT = the id, when
//     the rank is ready.
//   - EventRestored, PMIX_ERR_PROC_RESTART (-4), pmixd -> ranks, after the
//     job-node was restored from a checkpoint (on any host), when pmixd is
//     back in touch with its shim; same infos as EventCheckpoint, the id
//     being the checkpoint handle restored from.
//
// The PMIx server has no "who registered for code X" query, hence the
// explicit opt-in. At prepare pmixd raises EventCheckpoint to every local
// rank and waits, at most the prepare timeout, for an answer from each rank
// that opted in and is still running (not finalized, not exited). Ranks that
// did not opt in are not waited for (a job of plain MPI programs prepares at
// once). A rank that opted in but does not answer in time is reported in
// PrepareResult.Laggards: a warning, the checkpoint goes on (it is still
// consistent: the ranks are frozen and their network drained; only the
// application's own files may be behind).
//
// How an application uses them (bench/workloads/ckptevents.c does all of
// it): after MPI_Init, PMIx_Init (it shares Open MPI's connection), then
// PMIx_Register_event_handler for {-106, -4} with PMIX_EVENT_HDLR_FIRST; in
// the handler only record the event and call the completion callback with
// PMIX_EVENT_ACTION_COMPLETE (handlers run on PMIx's progress thread); then,
// only if TORPOR_CKPT_EVENTS=1 is in its environment (EnvCheckpointEvents:
// pmixd sets it; mpirun's orted never completes the opt-in and the rank
// would hang in MPI_Finalize), send the opt-in. At its next safe point (e.g. between iterations) the
// application flushes and fsyncs its own files, and answers with
// PMIx_Notify_event(-107, &me, PMIX_RANGE_RM, {PMIX_EVENT_NON_DEFAULT,
// PMIX_EVENT_DO_NOT_CACHE, PMIX_JOB_CTRL_CHECKPOINT=id}). Both infos are
// needed: without NON_DEFAULT the rank's own Open MPI aborts on -107;
// without DO_NOT_CACHE libpmix 4.2.2's server never completes the
// notification (the callback never comes). After EventRestored it may reopen
// files or reconnect to services outside the job.
package pmix
