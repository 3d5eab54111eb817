package appfiles

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/internal/nsrun"
)

// User is whose files these are: the job's owner. A nil *User is root.
type User struct {
	UID, GID int
	Groups   []int
}

// AsUser runs fn on a thread of its own that has u's file-system identity
// (fsuid, fsgid, supplementary groups) and no effective capability: every
// path fn opens, creates, renames or removes is checked against u's rights,
// as if u did it. Files fn opens stay usable from any thread afterwards.
// For a nil u (a job of root's) fn runs as it is, on its own thread.
//
// Only this thread changes (setgroups(2) here is the raw per-thread system
// call, not the runtime's all-threads one), and it dies with fn.
func AsUser(u *User, fn func() error) error {
	return nsrun.OnThread(func() error {
		if u != nil && u.UID != 0 {
			if err := becomeUser(u); err != nil {
				return err
			}
		}
		return fn()
	})
}

func becomeUser(u *User) error {
	gids := make([]uint32, len(u.Groups))
	for i, g := range u.Groups {
		gids[i] = uint32(g)
	}
	var p unsafe.Pointer
	if len(gids) > 0 {
		p = unsafe.Pointer(&gids[0])
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(gids)), uintptr(p), 0); e != 0 {
		return fmt.Errorf("become uid %d: setgroups: %w", u.UID, e)
	}
	// setfsuid/setfsgid report no error; read them back.
	unix.Setfsgid(u.GID)
	unix.Setfsuid(u.UID)
	if got, _ := unix.SetfsgidRetGid(-1); got != u.GID {
		return fmt.Errorf("become uid %d: fsgid is %d, not %d", u.UID, got, u.GID)
	}
	if got, _ := unix.SetfsuidRetUid(-1); got != u.UID {
		return fmt.Errorf("become uid %d: fsuid is %d, not %d", u.UID, got, u.UID)
	}
	// A non-zero fsuid already drops the capabilities that bypass file
	// permissions; clear every effective one on this thread all the same.
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("become uid %d: capget: %w", u.UID, err)
	}
	data[0].Effective, data[1].Effective = 0, 0
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("become uid %d: capset: %w", u.UID, err)
	}
	return nil
}
