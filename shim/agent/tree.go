package agent

import (
	"os"
	"path/filepath"
)

// makeBelow creates the directories above p (0700) and then runs create,
// which makes p itself: a directory, a file, or a rename into place. The
// directories cannot vanish in between, as another job-node's pruneAbove
// would otherwise remove them while they are still empty.
func (a *Agent) makeBelow(p string, create func() error) error {
	a.tree.Lock()
	defer a.tree.Unlock()
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	return create()
}

// makeRootOnly is makeBelow where every directory above p, up to upTo,
// must be root's and writable only by root (rootOnly), checked before
// create runs.
func (a *Agent) makeRootOnly(p, upTo string, create func() error) error {
	return a.makeBelow(p, func() error {
		if err := rootOnly(filepath.Dir(p), upTo); err != nil {
			return err
		}
		return create()
	})
}

// pruneAbove removes the directories above p, up to top (which stays), as
// long as they are empty. p itself is removed by the caller first.
func (a *Agent) pruneAbove(p, top string) {
	a.tree.Lock()
	defer a.tree.Unlock()
	top = filepath.Clean(top)
	for d := filepath.Dir(p); d != top && d != "/" && d != "." && os.Remove(d) == nil; d = filepath.Dir(d) {
	}
}
