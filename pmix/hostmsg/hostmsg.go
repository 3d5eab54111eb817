// Package hostmsg holds the requests pmixd sends off its job-node and the
// answers it gives its host (the shim). It is a leaf shared by package pmix
// (pmixd), which re-exports these types, and package pmix/link, which carries
// them over the pmixd <-> shim link.
package hostmsg

import "time"

// FenceRequest is one job-node's contribution to a fence.
//
// The upstream collects the requests with the same (Job, Signature, Seq) from
// every node in Nodes, concatenates their Data in any order, and returns the
// result to each of them. Every node numbers the fences over a participant set
// in the same order, so (Signature, Seq) names the same fence everywhere, and
// (Job, Signature, Seq, Node) names one contribution: pmixd sends the same
// contribution again after its link to the shim was re-dialled, so the
// upstream must take a repeat as the same contribution (and answer it with the
// result if the fence already completed).
type FenceRequest struct {
	Job       string
	Node      int    // the contributing job-node
	Nodes     []int  // every job-node with participants, ascending, Node included
	Signature string // canonical participant set, e.g. "job7:*"
	Seq       uint64 // ordinal among fences with this Signature, from 0
	Collect   bool   // PMIX_COLLECT_DATA: the caller wants everyone's data back
	Data      []byte // this node's blob (PMIx packed data; opaque), may be empty
}

// ModexRequest asks for one rank's modex blob from the job-node that runs it.
// The owning node answers with its daemon's ServeDirectModex.
type ModexRequest struct {
	Job  string
	Rank int
	Node int // the job-node that runs Rank
	From int // the asking job-node
}

// Failure tells the upstream that this job-node ended the job.
type Failure struct {
	Job  string
	Node int
	Rank int // the rank at fault
	Code int // the exit code pmixd will return
	Err  error
}

// PrepareResult is how a job-node's ranks took part in the prepare phase of
// a checkpoint: the ranks that opted in to checkpoint events and were still
// running were sent PMIX_JCTRL_CHECKPOINT and waited for, bounded.
type PrepareResult struct {
	Checkpoint string
	Registered int   // ranks waited for (opted in and still running)
	Completed  int   // of those, the ranks that answered in time
	Laggards   []int // ranks waited for that did not answer in time, ascending
	Elapsed    time.Duration
}
