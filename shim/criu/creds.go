package criu

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"

	criu_core "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pstree"
	"google.golang.org/protobuf/proto"
)

// TaskCreds are the credentials CRIU will give one thread of a dumped tree.
type TaskCreds struct {
	Pid, Tid int  // namespace ids, as in the images
	Root     bool // the tree's root task (the sandbox's init)
	// UIDs are the real, effective, saved and fs uid; GIDs likewise.
	UIDs, GIDs [4]uint32
	Groups     []uint32
	// Inheritable, permitted and effective capabilities, one word per 32.
	CapInh, CapPrm, CapEff []uint32
}

// ReadCreds reads the credentials of every thread of the tree dumped in dir
// (pstree.img, then core-<tid>.img of each thread).
func ReadCreds(dir string) ([]TaskCreds, error) {
	return ReadCredsFrom(func(name string) ([]byte, error) { return os.ReadFile(filepath.Join(dir, name)) })
}

// ReadCredsFrom is ReadCreds with the images' bytes from read (an image
// file's name in the images directory → its content): a caller that verifies
// what it reads gets credentials taken from exactly the verified bytes.
func ReadCredsFrom(read func(name string) ([]byte, error)) ([]TaskCreds, error) {
	entries, err := decodeImage(read, "pstree.img", &pstree.PstreeEntry{})
	if err != nil {
		return nil, err
	}
	var out []TaskCreds
	for i, e := range entries {
		pe := e.(*pstree.PstreeEntry)
		threads := pe.GetThreads()
		if len(threads) == 0 {
			threads = []uint32{pe.GetPid()}
		}
		for _, tid := range threads {
			name := fmt.Sprintf("core-%d.img", tid)
			ci, err := decodeImage(read, name, &criu_core.CoreEntry{})
			if err != nil {
				return nil, err
			}
			if len(ci) != 1 {
				return nil, fmt.Errorf("%s: %d entries, want 1", name, len(ci))
			}
			core := ci[0].(*criu_core.CoreEntry)
			c := core.GetThreadCore().GetCreds()
			if c == nil {
				return nil, fmt.Errorf("%s holds no credentials", name)
			}
			out = append(out, TaskCreds{
				Pid: int(pe.GetPid()), Tid: int(tid), Root: i == 0,
				UIDs:   [4]uint32{c.GetUid(), c.GetEuid(), c.GetSuid(), c.GetFsuid()},
				GIDs:   [4]uint32{c.GetGid(), c.GetEgid(), c.GetSgid(), c.GetFsgid()},
				Groups: c.GetGroups(), CapInh: c.GetCapInh(), CapPrm: c.GetCapPrm(), CapEff: c.GetCapEff(),
			})
		}
	}
	return out, nil
}

// decodeImage reads the entries of a CRIU image whose entries are all of
// entry's type.
func decodeImage(read func(string) ([]byte, error), name string, entry proto.Message) ([]proto.Message, error) {
	data, err := read(name)
	if err != nil {
		return nil, err
	}
	im, err := ParseImage(name, data)
	if err != nil {
		return nil, err
	}
	out := make([]proto.Message, 0, len(im.Entries))
	for i, raw := range im.Entries {
		m := entry.ProtoReflect().New().Interface()
		if err := proto.Unmarshal(raw, m); err != nil {
			return nil, fmt.Errorf("decode %s: entry %d: %w", name, i, err)
		}
		out = append(out, m)
	}
	return out, nil
}

// CheckCreds refuses a tree in which a thread other than the root task would
// be restored with anything but uid's ids, gid (or one of groups) and no
// capability, or whose root task (the sandbox's init, torpor's own code) is
// not root. groups are the supplementary groups the owner may hold.
func CheckCreds(creds []TaskCreds, uid, gid uint32, groups []uint32) error {
	for _, c := range creds {
		what := fmt.Sprintf("task %d (thread %d)", c.Pid, c.Tid)
		if c.Root {
			if c.UIDs != [4]uint32{} || c.GIDs != [4]uint32{} {
				return fmt.Errorf("%s, the sandbox's init, would be restored as uids %v gids %v, not root", what, c.UIDs, c.GIDs)
			}
			continue
		}
		if c.UIDs != [4]uint32{uid, uid, uid, uid} {
			return fmt.Errorf("%s would be restored as uids %v (real, effective, saved, fs), the job's owner is %d", what, c.UIDs, uid)
		}
		if c.GIDs != [4]uint32{gid, gid, gid, gid} {
			return fmt.Errorf("%s would be restored as gids %v, the owner's group is %d", what, c.GIDs, gid)
		}
		for _, g := range c.Groups {
			if g != gid && !slices.Contains(groups, g) {
				return fmt.Errorf("%s would be restored in group %d, which uid %d is not in", what, g, uid)
			}
		}
		for name, set := range map[string][]uint32{"inheritable": c.CapInh, "permitted": c.CapPrm, "effective": c.CapEff} {
			for _, w := range set {
				if w != 0 {
					return fmt.Errorf("%s would be restored with %s capabilities %x", what, name, set)
				}
			}
		}
	}
	return nil
}
