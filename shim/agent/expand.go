package agent

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/torpor-hpc/torpor/catalog"
)

// Compressed images (agentapi.DumpRequest.Compress): a dump stores CRIU's
// memory images compressed while CRIU writes them (catalog's
// StreamCompressor). CRIU reads a memory image with pread(2) and, in its
// restorer, preadv(2) at offsets (criu/pagemap.c, criu/pie/restorer.c): a
// pipe cannot feed it, only `criu --stream` with an image streamer could.
// So a restore expands them first, into a scratch directory on this host
// that only root can write to, verifying each stored file as it reads it
// (catalog.NodeImages.Expand: the BLAKE3 of the stored bytes, and exactly
// the raw size the signed manifest records); CRIU then reads its images
// from there, the other images linked in. The directory is removed when the
// restore ends, whatever its outcome.

// scratchTop is where restores expand images: Config.ScratchDir, or
// <run-dir>/shims/<host>/restore; and the directory up to which every
// directory must be root's (rootOnly).
func (a *Agent) scratchTop() (top, checkUpTo string) {
	if a.cfg.ScratchDir != "" {
		return a.cfg.ScratchDir, a.cfg.ScratchDir
	}
	return filepath.Join(filepath.Dir(a.recordDir()), "restore"), a.cfg.RunDir
}

// scratchDir makes a fresh, empty directory for one restore of job/node:
// root's, 0700, below directories only root can write to; whatever an
// earlier restore left there is removed first.
func (a *Agent) scratchDir(job, node string) (string, error) {
	top, upTo := a.scratchTop()
	dir := filepath.Join(top, job, node)
	if err := a.makeRootOnly(dir, upTo, freshDir(dir)); err != nil {
		return "", fmt.Errorf("restore %s/%s: scratch directory: %w", job, node, err)
	}
	return dir, nil
}

// removeScratch removes a restore's scratch directory and its job's, if
// empty.
func (a *Agent) removeScratch(dir string) {
	if err := os.RemoveAll(dir); err != nil {
		a.log.Warn("remove a restore's scratch directory", "dir", dir, "err", err)
	}
	a.pruneAbove(dir, filepath.Dir(filepath.Dir(dir))) // the job's, unless another job-node's is there
}

// linkImages links every top-level image of dir but the compressed ones
// (whose raw forms Expand writes) into scratch, where CRIU reads them.
func linkImages(dir, scratch string, imgs *catalog.NodeImages) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		name := e.Name()
		if !e.Type().IsRegular() || imgs.IsCompressed(name) || name == catalog.NodeManifestName {
			continue
		}
		if err := os.Symlink(filepath.Join(dir, name), filepath.Join(scratch, name)); err != nil {
			return fmt.Errorf("link the images CRIU reads: %w", err)
		}
	}
	return nil
}
