package pmix

import (
	"context"
	"errors"
	"fmt"

	"github.com/torpor-hpc/torpor/pmix/hostmsg"
)

// ErrNoRoute is returned by LocalUpstream for anything that needs another job-node.
var ErrNoRoute = errors.New("no route to other job-nodes: single-node upstream")

// The messages pmixd exchanges with its upstream (see package hostmsg).
type (
	FenceRequest  = hostmsg.FenceRequest
	ModexRequest  = hostmsg.ModexRequest
	Failure       = hostmsg.Failure
	PrepareResult = hostmsg.PrepareResult
)

// Upstream is pmixd's only way off its job-node. The shim implements it over
// a unix socket that pmixd re-dials after a CRIU restore; calls must survive
// such a reconnect (retry on the new connection, same request).
type Upstream interface {
	// Fence blocks until every node in req.Nodes has contributed and returns
	// the concatenation of all contributions.
	Fence(ctx context.Context, req FenceRequest) ([]byte, error)
	// DirectModex returns rank req.Rank's modex blob from node req.Node.
	DirectModex(ctx context.Context, req ModexRequest) ([]byte, error)
	// Failed reports, once, that a local rank failed and this node is ending
	// the job; the upstream should stop the other job-nodes (Daemon.Terminate).
	Failed(ctx context.Context, f Failure) error
}

// LocalUpstream serves a job that lives on one job-node: a fence returns the
// node's own data. Embedded mode and single-node tests use it.
type LocalUpstream struct{}

// Fence returns req.Data when the fence involves only this node.
func (LocalUpstream) Fence(_ context.Context, req FenceRequest) ([]byte, error) {
	for _, n := range req.Nodes {
		if n != req.Node {
			return nil, fmt.Errorf("fence %s#%d with node %d: %w", req.Signature, req.Seq, n, ErrNoRoute)
		}
	}
	return req.Data, nil
}

// DirectModex always fails: there is no other node to ask.
func (LocalUpstream) DirectModex(_ context.Context, req ModexRequest) ([]byte, error) {
	return nil, fmt.Errorf("direct modex for rank %d on node %d: %w", req.Rank, req.Node, ErrNoRoute)
}

// Failed has nobody to tell.
func (LocalUpstream) Failed(context.Context, Failure) error { return nil }
