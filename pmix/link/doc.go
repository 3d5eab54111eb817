// Package link is the connection between pmixd (PID 1 of a job-node sandbox)
// and the per-host shim that serves that sandbox: Client is pmixd's end,
// Server the shim's.
//
// # Transport
//
// A unix stream socket at a path the shim chooses and passes to pmixd in its
// JobSpec (Link): <run dir>/jobs/<job>/<node>.link. The
// sandbox has no mount namespace, so pmixd sees the host's path, and every
// host uses the same path for the same job-node: after a CRIU restore on
// another host pmixd finds the new shim where the old one was.
//
// # Frames
//
// Each message is a 4-byte big-endian length followed by that many bytes of
// JSON (at most MaxFrame): {"type": ..., "id": ..., <payload>}. []byte fields
// are base64 (encoding/json).
//
//	pmixd -> shim                          shim -> pmixd
//	hello    {job,node,pid,generation}     welcome   {restored_from}
//	fence    id, FenceRequest              reply     id, data | err
//	modex    id, ModexRequest              reply     id, data | err
//	failed   id, {job,node,rank,code,err}  reply     id, err
//	prepared id, PrepareResult | err       prepare   id, {checkpoint,timeout_ms}
//	served   id, data | err                serve     id, rank
//	                                       terminate reason
//
// Every connection starts with pmixd's hello and the shim's welcome; ids are
// chosen by the side that asks and are unique per process lifetime.
//
// # Prepare and the dump
//
// CRIU cannot dump a unix stream socket connected to a process outside the
// dumped tree, so pmixd holds no link connection while it is frozen and
// dumped. Server.Prepare first closes its listener (and unlinks the socket),
// then sends prepare; pmixd raises PMIX_JCTRL_CHECKPOINT to its ranks, waits
// for them (bounded), answers prepared and closes the connection. From then
// on pmixd dials the path every 50ms: nothing answers until the shim listens
// again, with Server.Resume (the job-node kept running: leave-running
// checkpoint done, or checkpoint abandoned) or with a new Server's Listen
// after a restore (any host). While frozen pmixd does not dial at all; a dial
// in progress at dump time holds only an unconnected socket.
//
// On each connection pmixd's hello carries Generation (its number of
// connections so far, kept in its memory and hence across a restore); the
// welcome's restored_from is the checkpoint handle the job-node was just
// restored from (Server.SetRestoredFrom, consumed by one welcome), in which
// case pmixd raises PMIX_ERR_PROC_RESTART (-4) to its ranks with
// PMIX_EVENT_NON_DEFAULT and PMIX_JOB_CTRL_CHECKPOINT=<handle>.
//
// # Calls across reconnects
//
// Fence, DirectModex and Failed calls made while the link is down wait for
// the next connection; calls in flight when a connection ends are sent again,
// unchanged, on the next one (the Forwarder's context for them ends with the
// old connection). A fence may thus reach the coordinator twice: it must take
// a repeated (Job, Signature, Seq, Node) as the same contribution, and answer
// it from the result if that fence already completed.
package link
