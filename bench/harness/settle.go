package harness

import "golang.org/x/sys/unix"

// settle brings the machine to the same state before every timed sample,
// outside its time: the coordinator's background work done (the previous
// checkpoint pruned, replicas copied) and every dirty page written back
// (sync(2)).
//
// Both matter on this kind of machine more than anything torpor does. A
// sample that writes while an old checkpoint is removed, or while the
// images of the samples before it are written back, pays for them. And the
// VM's balloon reports free memory to its host (free page reporting), so a
// page the guest has not used lately faults on the host when it is used
// again: 256 MiB written to new files took 480-500 ms with every earlier
// file kept, 48 ms with the previous file removed just before (dd, eight
// times each). torpor keeps one checkpoint per job here (Keep 1), so the raw
// side removes its previous images before each sample too (RawSet.Dump):
// both then write into memory freed just before.
func (e *Env) settle() {
	if e.Coord != nil {
		e.Coord.WaitBackground()
	}
	unix.Sync()
}
