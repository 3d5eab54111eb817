package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/internal/atomicfile"
)

// nodeRecord is what a shim keeps on disk about a job-node it owns, so that
// the shim started after it dies abruptly can adopt the job-node (Adopt).
// One file per job-node: <RunDir>/shims/<host>/nodes/<job>/<node>.json.
type nodeRecord struct {
	Job  string            `json:"job"`
	Spec agentapi.NodeSpec `json:"spec"`
	// NetNS is the sandbox's network namespace under /run/netns.
	NetNS string `json:"netns"`
	// HostVeth is the host end of its veth, where the network lock sits.
	HostVeth string `json:"host_veth"`
	// Cgroup is its cgroup below the cgroup2 mount.
	Cgroup string `json:"cgroup"`
	// ExitFile is where its init writes its exit status.
	ExitFile string `json:"exit_file"`
	// Link is the pmixd link socket of an MPI job-node ("" otherwise).
	Link string `json:"link,omitempty"`
	// Moved: restored here and not unlocked since (Unlock announces it).
	Moved bool `json:"moved,omitempty"`
	// RestoredFrom is the checkpoint a moved job-node came from, for pmixd.
	RestoredFrom string `json:"restored_from,omitempty"`
	// PostCopy is the job-node's side of a post-copy migration under way:
	// "source" (frozen, serving its pages) or "destination" (running,
	// pages still arriving). A shim that finds it so at adoption destroys
	// the job-node: the migration cannot finish without the shim that died.
	PostCopy string `json:"post_copy,omitempty"`
}

// recordDir holds this host's job-node records.
func (a *Agent) recordDir() string {
	return RecordDir(a.cfg.RunDir, a.cfg.Host)
}

// RecordDir is where the shim of host keeps its job-node records under
// runDir: one directory per job.
func RecordDir(runDir, host string) string {
	return filepath.Join(runDir, "shims", host, "nodes")
}

func (a *Agent) recordPath(job, n string) string {
	return filepath.Join(a.recordDir(), job, n+".json")
}

func (n *node) record() nodeRecord {
	r := nodeRecord{Job: n.job, Spec: n.spec, NetNS: n.netns, HostVeth: n.veth, Cgroup: n.cgroup,
		ExitFile: n.exitFile, Moved: n.moved, RestoredFrom: n.restoredFrom}
	n.mu.Lock()
	switch {
	case n.pages != nil:
		r.PostCopy = "source"
	case n.pulling:
		r.PostCopy = "destination"
	}
	n.mu.Unlock()
	if n.link != nil {
		r.Link = n.linkPath
	}
	return r
}

// saveRecord writes n's record atomically.
func (a *Agent) saveRecord(n *node) error {
	data, err := json.MarshalIndent(n.record(), "", "  ")
	if err != nil {
		return err
	}
	p := a.recordPath(n.job, n.spec.Name)
	if err := a.makeBelow(p, func() error { return atomicfile.Write(p, data, 0o600) }); err != nil {
		return fmt.Errorf("record job-node %s/%s: %w", n.job, n.spec.Name, err)
	}
	return nil
}

// removeRecord forgets a job-node on disk (its job's directory goes with
// its last record).
func (a *Agent) removeRecord(job, n string) {
	p := a.recordPath(job, n)
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		a.log.Warn("remove job-node record", "job", job, "node", n, "err", err)
	}
	a.pruneAbove(p, filepath.Dir(filepath.Dir(p))) // the job's, after its last record
}

// loadRecords reads every record of this host. A record that cannot be read
// is reported and skipped (left in place for a person to look at).
//
// Records say which cgroup to kill and which namespace to enter: only
// records no user but root could have written are read (see rootOnly, from
// the run directory down to the file).
func (a *Agent) loadRecords() ([]nodeRecord, error) {
	jobs, err := os.ReadDir(a.recordDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read job-node records: %w", err)
	}
	if err := rootOnly(a.recordDir(), a.cfg.RunDir); err != nil {
		return nil, fmt.Errorf("job-node records not read: %w", err)
	}
	var recs []nodeRecord
	var errs []error
	for _, j := range jobs {
		if !j.IsDir() {
			continue
		}
		files, err := os.ReadDir(filepath.Join(a.recordDir(), j.Name()))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, f := range files {
			if f.IsDir() || !strings.HasSuffix(f.Name(), ".json") {
				continue // atomicfile's temporaries
			}
			p := filepath.Join(a.recordDir(), j.Name(), f.Name())
			if err := rootOnly(p, a.recordDir()); err != nil {
				errs = append(errs, fmt.Errorf("job-node record not read: %w", err))
				continue
			}
			data, err := os.ReadFile(p)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			var r nodeRecord
			if err := json.Unmarshal(data, &r); err != nil {
				errs = append(errs, fmt.Errorf("job-node record %s: %w", p, err))
				continue
			}
			if r.Job != j.Name() || r.Spec.Name+".json" != f.Name() {
				errs = append(errs, fmt.Errorf("job-node record %s names %s/%s", p, r.Job, r.Spec.Name))
				continue
			}
			recs = append(recs, r)
		}
	}
	return recs, errors.Join(errs...)
}
