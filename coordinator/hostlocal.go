package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/catalog"
)

// Host-local checkpoints (Options.LocalCheckpoints): every shim dumps its
// job-nodes into its own checkpoint store (agentapi.CheckpointHolder); the
// catalog keeps only the signed job manifest, which names each job-node's
// node manifest by its SHA-256. After the commit each job-node's images are
// copied, in the background and throttled, to Options.Replicas other
// hosts; a restart has each destination shim fetch the images it lacks from
// a host that holds them, verified against the manifest's digest. Nothing
// records where the copies are: the shims are asked (Held), so a host that
// is lost takes its copies with it from every answer.

// PhaseFetch is a host-local restart's first phase on the shims: every
// destination copies the images it lacks into its own store.
const PhaseFetch Phase = "fetch"

// DefaultReplicaRate bounds the copying of replicas, per copy, when
// Options.ReplicaRate is 0: far below a 10 Gb/s link, so a job's own
// traffic keeps most of it.
const DefaultReplicaRate = 128 << 20

// DefaultReplicas is how many hosts besides the one that dumped it keep a
// copy of each job-node's images of a host-local checkpoint.
const DefaultReplicas = 1

// heldTimeout bounds one shim's answer to Held; verifiedHeldTimeout one
// that hashes every copy first (`torpor ls`).
const (
	heldTimeout         = 5 * time.Second
	verifiedHeldTimeout = 10 * time.Minute
)

// holder is host's shim as a checkpoint store, and where other shims fetch
// from it; ok is false when the host has no registered shim with a store.
func (c *Coordinator) holder(host string) (h agentapi.CheckpointHolder, addr string, ok bool) {
	a, err := c.agent(host)
	if err != nil {
		return nil, "", false
	}
	h, hok := a.(agentapi.CheckpointHolder)
	s, sok := a.(agentapi.ImageStreamer)
	if !hok || !sok || !h.Holds() || s.ImagesAddress() == "" {
		return nil, "", false
	}
	return h, s.ImagesAddress(), true
}

// requireHolders refuses a host-local checkpoint of a job with a job-node
// on a host whose shim keeps no checkpoint store, before anything is done.
func (c *Coordinator) requireHolders(id string) error {
	j, err := c.Job(id)
	if err != nil {
		return err
	}
	for _, n := range j.Spec.Nodes {
		if _, _, ok := c.holder(n.Host); !ok {
			return fmt.Errorf("%w: job %s: job-node %s is on %s, whose shim keeps no host-local checkpoints "+
				"(this coordinator runs with --local-checkpoints: start every shim with --image-dir); nothing was done", agentapi.ErrInvalid, id, n.Name, n.Host)
		}
	}
	return nil
}

// copies maps job-node -> host -> the SHA-256 of the node manifest that
// host's store holds, for one checkpoint.
type copies map[string]map[string]string

// held asks every registered shim with a store, in parallel, what it holds
// of job's checkpoints: handle -> copies. A shim that does not answer
// within heldTimeout holds nothing here.
func (c *Coordinator) held(ctx context.Context, job string) map[string]copies {
	out, _ := c.askHeld(ctx, job, false)
	return out
}

// setAsideCopy is a copy that a shim found corrupt and set aside.
type setAsideCopy struct {
	node, host, why string
}

// askHeld is held; with verify, each shim first hashes every copy it
// holds, sets aside those that fail, and only the good ones count. Those set
// aside are returned by checkpoint handle.
func (c *Coordinator) askHeld(ctx context.Context, job string, verify bool) (map[string]copies, map[string][]setAsideCopy) {
	var (
		mu      sync.Mutex
		wg      sync.WaitGroup
		out     = map[string]copies{}
		corrupt = map[string][]setAsideCopy{}
	)
	timeout := heldTimeout
	if verify {
		timeout = verifiedHeldTimeout
	}
	for _, host := range c.Hosts() {
		h, _, ok := c.holder(host)
		if !ok {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			imgs, err := h.Held(ctx, job, verify)
			if err != nil {
				c.log.Warn("a shim did not say which checkpoint images it holds", "host", host, "job", job, "err", err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			for _, im := range imgs {
				if im.Corrupt != "" {
					corrupt[im.Checkpoint] = append(corrupt[im.Checkpoint], setAsideCopy{node: im.Node, host: host, why: im.Corrupt})
					continue
				}
				cp := out[im.Checkpoint]
				if cp == nil {
					cp = copies{}
					out[im.Checkpoint] = cp
				}
				if cp[im.Node] == nil {
					cp[im.Node] = map[string]string{}
				}
				cp[im.Node][host] = im.NodeManifestSHA256
			}
		}()
	}
	wg.Wait()
	for handle, cs := range corrupt {
		sort.Slice(cs, func(i, j int) bool { return cs[i].node+"@"+cs[i].host < cs[j].node+"@"+cs[j].host })
		for _, s := range cs {
			c.copySetAside(job, handle, s.node, s.host, s.why)
		}
	}
	return out, corrupt
}

// holders lists, sorted, the hosts whose copy of node has digest sum.
func (cp copies) holders(node, sum string) []string {
	var out []string
	for host, s := range cp[node] {
		if s == sum {
			out = append(out, host)
		}
	}
	sort.Strings(out)
	return out
}

// fewest is the fewest good copies any job-node of man has.
func (cp copies) fewest(man Manifest) int {
	least := -1
	for name, r := range man.Nodes {
		if k := len(cp.holders(name, r.NodeManifestSHA256)); least < 0 || k < least {
			least = k
		}
	}
	return max(least, 0)
}

// checkHeld says whether every job-node of a host-local checkpoint has a
// good copy on a host that answers; nil for any other checkpoint.
func (c *Coordinator) checkHeld(ctx context.Context, handle string) error {
	man, err := c.store.Load(handle)
	if err != nil || !man.HostLocal {
		return err
	}
	return lostNodes(man, c.held(ctx, man.Spec.ID)[handle])
}

// lostNodes fails when a job-node of host-local checkpoint man has no good
// copy in cp.
func lostNodes(man Manifest, cp copies) error {
	var lost []string
	for _, n := range man.Spec.Nodes {
		if len(cp.holders(n.Name, man.Nodes[n.Name].NodeManifestSHA256)) == 0 {
			lost = append(lost, fmt.Sprintf("%s (checkpointed on %s)", n.Name, n.Host))
		}
	}
	if len(lost) > 0 {
		return fmt.Errorf("%w: checkpoint %s is host-local and no host that answers holds the images of job-node %s: "+
			"the hosts that held them are down or lost them", agentapi.ErrNotFound, man.Handle, strings.Join(lost, ", "))
	}
	return nil
}

// fetchAll has the shim of every job-node's destination copy the images
// it lacks of host-local checkpoint man into its own store, from a host
// that holds them (the one it was checkpointed on first). A holder whose
// copy fails verification as it sends it sets it aside (the shims verify
// what they send and what they receive); setAside hears of each, and the
// next holder is tried.
func (c *Coordinator) fetchAll(ctx context.Context, man Manifest, nodes []agentapi.NodeSpec, setAside func(node, host string, err error)) error {
	cp := c.held(ctx, man.Spec.ID)[man.Handle]
	origin := map[string]string{}
	for _, n := range man.Spec.Nodes {
		origin[n.Name] = n.Host
	}
	return c.fanout(ctx, PhaseFetch, nodes, func(ctx context.Context, a agentapi.Agent, n agentapi.NodeSpec) error {
		sum := man.Nodes[n.Name].NodeManifestSHA256
		dst, _, ok := c.holder(n.Host)
		if !ok {
			return fmt.Errorf("%w: %s keeps no host-local checkpoints (its shim has no --image-dir): choose another host", agentapi.ErrInvalid, n.Host)
		}
		from := cp.holders(n.Name, sum)
		for i, h := range from {
			if h == origin[n.Name] {
				from[0], from[i] = from[i], from[0]
			}
		}
		for _, h := range from {
			if h == n.Host {
				return nil // held here already
			}
		}
		var errs []error
		for _, h := range from {
			_, addr, ok := c.holder(h)
			if !ok {
				continue
			}
			if _, err := dst.Fetch(ctx, man.Handle, n.Name, addr, sum, 0); err != nil {
				if agentapi.CopySetAside(err) {
					setAside(n.Name, h, err)
				}
				errs = append(errs, fmt.Errorf("from %s: %w", h, err))
				if ctx.Err() != nil {
					break
				}
				continue
			}
			return nil
		}
		if len(errs) == 0 {
			return fmt.Errorf("%w: no host that answers holds the images of %s of checkpoint %s (checkpointed on %s): restart from an older checkpoint",
				agentapi.ErrNotFound, n.Name, man.Handle, origin[n.Name])
		}
		return errors.Join(errs...)
	})
}

// replicate copies every job-node's images of the host-local checkpoint
// handle to c.replicas hosts besides the one that dumped it: the next ones
// after it, in host-name order, with a store and no good copy yet. It runs
// in the background after the commit, at most c.replicaRate bytes/s per
// copy, and ends with an event saying whether every job-node now has
// c.replicas+1 copies.
func (c *Coordinator) replicate(ctx context.Context, handle string) {
	man, err := c.store.Load(handle)
	if err != nil || !man.HostLocal {
		return
	}
	log := c.log.With("job", man.Spec.ID, "ckpt", handle)
	var dumped []string
	for _, n := range man.Spec.Nodes {
		dumped = append(dumped, n.Host)
	}
	c.keepManifest(ctx, handle, dumped, log)
	if c.replicas <= 0 {
		return
	}
	start := time.Now()
	hosts := c.Hosts()
	cp := c.held(ctx, man.Spec.ID)[handle]
	var (
		bytes int64
		errs  []error
	)
	for _, n := range man.Spec.Nodes {
		sum := man.Nodes[n.Name].NodeManifestSHA256
		have := cp.holders(n.Name, sum)
		src := ""
		for _, h := range have {
			if _, addr, ok := c.holder(h); ok && (src == "" || h == n.Host) {
				src = addr
			}
		}
		if src == "" {
			errs = append(errs, fmt.Errorf("%s: no host that answers holds its images", n.Name))
			continue
		}
		need := c.replicas + 1 - len(have)
		for _, h := range ringAfter(hosts, n.Host) {
			if need <= 0 {
				break
			}
			if contains(have, h) {
				continue
			}
			dst, _, ok := c.holder(h)
			if !ok {
				continue
			}
			k, err := dst.Fetch(ctx, handle, n.Name, src, sum, c.replicaRate)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s to %s: %w", n.Name, h, err))
				continue
			}
			bytes += k
			need--
			log.Debug("replica copied", "node", n.Name, "to", h, "bytes", k)
			// A replica is for when a host is lost: it counts once it is on
			// its own host's disk, not only in that host's page cache.
			a, err := c.agent(h)
			if err == nil {
				err = a.Sync(ctx, agentapi.NodeRef{Job: man.Spec.ID, Node: n.Name}, handle)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("%s to %s: copied, not known to be on disk: %w", n.Name, h, err))
			}
			c.keepManifest(ctx, handle, []string{h}, log)
		}
		if need > 0 {
			errs = append(errs, fmt.Errorf("%s: %d of %d replicas made: too few hosts with a checkpoint store answer", n.Name, c.replicas-need, c.replicas))
		}
	}
	if err := errors.Join(errs...); err != nil {
		log.Warn("checkpoint not fully replicated", "err", err, "bytes", bytes, "elapsed", time.Since(start))
		c.event(Event{Job: man.Spec.ID, Type: EventReplicationFailed, Handle: handle, Bytes: bytes, Error: err.Error()})
		return
	}
	log.Info("checkpoint replicated", "replicas", c.replicas, "bytes", bytes, "elapsed", time.Since(start).Round(time.Millisecond))
	c.event(Event{Job: man.Spec.ID, Type: EventReplicated, Handle: handle, Bytes: bytes})
}

// manifestKeeper is a Store that hands out a checkpoint's signed job
// manifest and takes one back (CatalogStore).
type manifestKeeper interface {
	ManifestBytes(handle string) ([]byte, error)
	Import(data []byte) (handle string, imported bool, err error)
}

// keepManifest gives the shims of hosts the signed job manifest of the
// host-local checkpoint handle, to keep with its images: the catalog
// spread over the hosts, for a coordinator that loses its own
// (Options.RecoverCatalog). Best effort: a host that misses it still
// holds the images, and another host the manifest.
func (c *Coordinator) keepManifest(ctx context.Context, handle string, hosts []string, log *slog.Logger) {
	mk, ok := c.store.(manifestKeeper)
	if !ok {
		return
	}
	data, err := mk.ManifestBytes(handle)
	if err != nil {
		log.Warn("job manifest not kept on the hosts", "err", err)
		return
	}
	slices.Sort(hosts)
	for _, host := range slices.Compact(hosts) {
		h, _, ok := c.holder(host)
		if !ok {
			continue
		}
		kctx, cancel := context.WithTimeout(ctx, heldTimeout)
		if err := h.KeepManifest(kctx, handle, data); err != nil {
			log.Warn("job manifest not kept on a host", "host", host, "err", err)
		}
		cancel()
	}
}

// shimRegistered is told of each shim that registers, registers at a new
// address, or registers again after an absence. In the background: with
// Options.RecoverCatalog the catalog takes back the host-local checkpoints
// it lacks from that shim; then the shim drops the copies of checkpoints
// that were pruned while it was away (dropSuperseded).
func (c *Coordinator) shimRegistered(host string) {
	c.inBackground(context.Background(), func(ctx context.Context) {
		if c.recoverCatalog {
			c.recoverFrom(ctx, host)
		}
		c.dropSuperseded(ctx, host)
	})
}

// superseder is a Store that tells which copies kept on the hosts it let
// go (CatalogStore: catalog.Store.Superseded).
type superseder interface {
	Superseded(handle string, keep int) (bool, error)
}

// dropSuperseded asks host's shim what it holds of every job in the
// registry and has it drop the copies of checkpoints the catalog pruned:
// numbered by it, no longer in it, and followed by at least Options.Keep
// committed ones (catalog.Store.Superseded). Such a copy is left when its
// host was down or cut off as the prune's Drop went out. Without a
// retention (Keep 0) nothing is dropped.
func (c *Coordinator) dropSuperseded(ctx context.Context, host string) {
	sp, ok := c.store.(superseder)
	h, _, hok := c.holder(host)
	if !ok || !hok || c.keep <= 0 {
		return
	}
	for _, j := range c.Jobs() {
		hctx, cancel := context.WithTimeout(ctx, heldTimeout)
		held, err := h.Held(hctx, j.Spec.ID, false)
		cancel()
		if err != nil {
			c.log.Warn("ask a shim for the copies it holds", "host", host, "job", j.Spec.ID, "err", err)
			continue
		}
		seen := map[string]bool{}
		for _, im := range held {
			if seen[im.Checkpoint] {
				continue
			}
			seen[im.Checkpoint] = true
			gone, err := sp.Superseded(im.Checkpoint, c.keep)
			if err != nil || !gone {
				continue
			}
			dctx, cancel := context.WithTimeout(ctx, heldTimeout)
			err = h.Drop(dctx, im.Checkpoint)
			cancel()
			if err != nil {
				c.log.Warn("drop a pruned checkpoint's copy", "host", host, "ckpt", im.Checkpoint, "err", err)
				continue
			}
			c.log.Info("dropped a pruned checkpoint's copy", "host", host, "ckpt", im.Checkpoint)
		}
	}
}

// recoverFrom imports into the catalog every job manifest host's shim
// keeps that the catalog lacks. The catalog takes only manifests its own
// key signed (catalog.Store.Import), so a shim can bring back what this
// coordinator committed, and nothing else.
func (c *Coordinator) recoverFrom(ctx context.Context, host string) {
	mk, ok := c.store.(manifestKeeper)
	h, _, hok := c.holder(host)
	if !ok || !hok {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	kept, err := h.Manifests(ctx)
	if err != nil {
		c.log.Warn("recover the catalog: list the job manifests a shim keeps", "host", host, "err", err)
		return
	}
	handles := slices.Sorted(maps.Keys(kept))
	for _, k := range handles {
		handle, imported, err := mk.Import(kept[k])
		switch {
		case errors.Is(err, catalog.ErrDeleted):
			// Deleted or pruned while this host was down: not taken
			// back. dropSuperseded, which runs next, removes the copy
			// when the retention would have pruned it.
			c.log.Info("recover the catalog: a checkpoint this catalog deleted stays deleted", "host", host, "ckpt", k)
		case err != nil:
			c.log.Warn("recover the catalog: a job manifest refused", "host", host, "ckpt", k, "err", err)
		case handle != k:
			c.log.Warn("recover the catalog: a job manifest kept under another checkpoint's name", "host", host, "kept_as", k, "ckpt", handle)
		case imported:
			man, err := c.store.Load(handle)
			if err != nil {
				c.log.Warn("recover the catalog: an imported checkpoint does not load", "host", host, "ckpt", handle, "err", err)
				continue
			}
			c.log.Info("checkpoint recovered", "host", host, "job", man.Spec.ID, "ckpt", handle)
			c.event(Event{Job: man.Spec.ID, Owner: man.Spec.Owner, Type: EventRecovered, Handle: handle})
		}
	}
}

// ringAfter lists hosts (sorted) starting after host and wrapping around,
// without host.
func ringAfter(hosts []string, host string) []string {
	i := sort.SearchStrings(hosts, host)
	if i < len(hosts) && hosts[i] == host {
		i++
	}
	out := append(append([]string(nil), hosts[i:]...), hosts[:i]...)
	for k, h := range out {
		if h == host {
			return append(out[:k], out[k+1:]...)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// dropStored removes the copies of checkpoints from every shim with a
// store, best effort: a checkpoint that was pruned or never committed.
func (c *Coordinator) dropStored(ctx context.Context, handles []string, log *slog.Logger) {
	if len(handles) == 0 {
		return
	}
	for _, host := range c.Hosts() {
		h, _, ok := c.holder(host)
		if !ok {
			continue
		}
		for _, handle := range handles {
			ctx, cancel := context.WithTimeout(ctx, heldTimeout)
			if err := h.Drop(ctx, handle); err != nil {
				log.Warn("drop checkpoint images", "host", host, "ckpt", handle, "err", err)
			}
			cancel()
		}
	}
}
