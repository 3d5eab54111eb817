package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/catalog"
)

// CatalogStore is the Store the coordinator uses in production: the
// checkpoint catalog on disk (package catalog).
type CatalogStore struct {
	S *catalog.Store
}

var (
	_ Store     = CatalogStore{}
	_ Describer = CatalogStore{}
	_ Lister    = CatalogStore{}
)

type catalogPending struct{ p *catalog.Pending }

func (c CatalogStore) Begin(job string) (Pending, error) {
	p, err := c.S.Begin(job)
	if err != nil {
		return nil, err
	}
	return catalogPending{p}, nil
}

func (p catalogPending) Handle() string                      { return p.p.Handle() }
func (p catalogPending) NodeDir(node string) (string, error) { return p.p.NodeDir(node) }
func (p catalogPending) SharedDir() (string, error)          { return p.p.SharedDir() }
func (p catalogPending) Abort() error                        { return p.p.Abort() }

func (p catalogPending) Commit(m Manifest) error {
	spec, err := json.Marshal(m.Spec)
	if err != nil {
		return fmt.Errorf("encode job spec: %w", err)
	}
	jm := catalog.JobManifest{
		Job: m.Spec.ID, Created: m.Created.UTC(), Kind: catalog.Kind(m.Kind),
		LeaveRunning: m.LeaveRunning, Spec: spec, Phases: map[string]catalog.Duration{}, HostLocal: m.HostLocal,
	}
	for _, n := range m.Spec.Nodes {
		r, dumped := m.Nodes[n.Name]
		if !dumped {
			continue
		}
		ref := catalog.NodeRef{Name: n.Name, Host: n.Host, IP: n.IP, Hostname: n.Hostname}
		if m.HostLocal {
			// Nothing to read here: the shim said what it wrote.
			ref.ManifestSHA256, ref.TotalBytes, ref.FileCount = r.NodeManifestSHA256, r.Bytes, r.Files
		}
		jm.Nodes = append(jm.Nodes, ref)
	}
	for ph, d := range m.Phases {
		jm.Phases[string(ph)] = catalog.Duration(d)
	}
	_, err = p.p.Commit(jm)
	return err
}

func (c CatalogStore) Verify(ctx context.Context, handle string) error {
	return c.S.Verify(ctx, handle)
}

func (c CatalogStore) VerifyLayout(ctx context.Context, handle string) error {
	return c.S.VerifyLayout(ctx, handle)
}

func (c CatalogStore) NodeManifestSHA256(handle, node string) (string, error) {
	cp, err := c.get(handle)
	if err != nil {
		return "", err
	}
	ref, ok := cp.Manifest.Node(node)
	if !ok {
		return "", fmt.Errorf("%w: checkpoint %s has no job-node %s", agentapi.ErrNotFound, handle, node)
	}
	return ref.ManifestSHA256, nil
}

func (c CatalogStore) get(handle string) (catalog.Checkpoint, error) {
	cp, err := c.S.Get(handle)
	if err != nil {
		if errors.Is(err, catalog.ErrNotFound) {
			return cp, errors.Join(err, agentapi.ErrNotFound)
		}
		return cp, err
	}
	if cp.ManifestErr != nil {
		return cp, fmt.Errorf("checkpoint %s: %w", handle, cp.ManifestErr)
	}
	return cp, nil
}

func (c CatalogStore) Load(handle string) (Manifest, error) {
	cp, err := c.get(handle)
	if err != nil {
		return Manifest{}, err
	}
	m := Manifest{
		Handle: cp.Handle, Kind: string(cp.Manifest.Kind), LeaveRunning: cp.Manifest.LeaveRunning,
		Created: cp.Manifest.Created, Nodes: map[string]agentapi.DumpResult{}, Phases: map[Phase]time.Duration{},
		HostLocal: cp.Manifest.HostLocal,
	}
	if err := json.Unmarshal(cp.Manifest.Spec, &m.Spec); err != nil {
		return Manifest{}, fmt.Errorf("checkpoint %s: decode job spec: %w", handle, err)
	}
	for _, n := range cp.Manifest.Nodes {
		m.Nodes[n.Name] = agentapi.DumpResult{Bytes: n.TotalBytes, Files: n.FileCount, NodeManifestSHA256: n.ManifestSHA256}
	}
	for ph, d := range cp.Manifest.Phases {
		m.Phases[Phase(ph)] = time.Duration(d)
	}
	return m, nil
}

func (c CatalogStore) Latest(job string) (string, error) {
	cp, err := c.S.Latest(job)
	if err != nil {
		if errors.Is(err, catalog.ErrNotFound) {
			return "", errors.Join(err, agentapi.ErrNotFound)
		}
		return "", err
	}
	return cp.Handle, nil
}

func (c CatalogStore) NodeDir(handle, node string) (string, error) {
	cp, err := c.get(handle)
	if err != nil {
		return "", err
	}
	if _, ok := cp.Manifest.Node(node); !ok {
		return "", fmt.Errorf("%w: checkpoint %s has no job-node %s", agentapi.ErrNotFound, handle, node)
	}
	return cp.NodeDir(node), nil
}

func (c CatalogStore) Recover() ([]string, error) { return c.S.Recover() }
func (c CatalogStore) Prune(job string, keep int, upTo string) ([]string, error) {
	j, seq, err := catalog.ParseHandle(upTo)
	if err != nil {
		return nil, err
	}
	if j != job {
		return nil, fmt.Errorf("prune checkpoints of %s up to %s: a checkpoint of another job", job, upTo)
	}
	return c.S.PruneUpTo(job, keep, seq)
}
func (c CatalogStore) Sweep(job string) error { return c.S.Sweep(job) }

func (c CatalogStore) List(job string) ([]string, error) {
	cps, err := c.S.List(job)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(cps))
	for i, cp := range cps {
		out[i] = cp.Handle
	}
	return out, nil
}

func (c CatalogStore) Describe(job string) ([]CheckpointInfo, error) {
	cps, err := c.S.List(job)
	if err != nil {
		return nil, err
	}
	out := make([]CheckpointInfo, 0, len(cps))
	for _, cp := range cps {
		in := CheckpointInfo{Handle: cp.Handle, Job: cp.Job, Kind: "unreadable"}
		if cp.ManifestErr == nil {
			m := cp.Manifest
			in.Kind, in.Created, in.Bytes, in.Nodes, in.HostLocal = string(m.Kind), m.Created, m.TotalBytes, len(m.Nodes), m.HostLocal
			in.Phases = map[string]time.Duration{}
			for p, d := range m.Phases {
				in.Phases[p] = time.Duration(d)
			}
		}
		out = append(out, in)
	}
	return out, nil
}

// ManifestBytes implements manifestKeeper.
func (c CatalogStore) ManifestBytes(handle string) ([]byte, error) { return c.S.ManifestBytes(handle) }

// Import implements manifestKeeper.
func (c CatalogStore) Import(data []byte) (string, bool, error) { return c.S.Import(data) }

// Superseded implements superseder.
func (c CatalogStore) Superseded(handle string, keep int) (bool, error) {
	return c.S.Superseded(handle, keep)
}
