package coordinator

import (
	"fmt"
	"os/user"
	"slices"
	"strconv"

	"github.com/torpor-hpc/torpor/agentapi"
)

// LookupCreds returns the credentials a job owned by uid runs with: the
// primary gid and supplementary groups that the group database gives the
// user. A uid the database does not know is refused: its jobs would run
// with groups nobody chose.
func LookupCreds(uid int) (*agentapi.Creds, error) {
	if uid == 0 {
		return &agentapi.Creds{}, nil
	}
	u, err := user.LookupId(strconv.Itoa(uid))
	if err != nil {
		return nil, fmt.Errorf("%w: uid %d: %v (jobs run as their owner, who must be in the user database on the coordinator's host)", agentapi.ErrPermission, uid, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return nil, fmt.Errorf("uid %d: primary group %q: %w", uid, u.Gid, err)
	}
	c := &agentapi.Creds{UID: uid, GID: gid}
	ids, err := u.GroupIds()
	if err != nil {
		return nil, fmt.Errorf("groups of uid %d: %w", uid, err)
	}
	for _, s := range ids {
		g, err := strconv.Atoi(s)
		if err != nil {
			return nil, fmt.Errorf("groups of uid %d: %q: %w", uid, s, err)
		}
		c.Groups = append(c.Groups, g)
	}
	slices.Sort(c.Groups)
	c.Groups = slices.Compact(c.Groups)
	return c, nil
}

// SetUsers gives every job-node the credentials of the job's owner, looked
// up with lookup (LookupCreds when nil). Whatever a request said about them
// is replaced: only the owner, proven by the caller's SO_PEERCRED uid,
// decides who a job runs as.
func (s *JobSpec) SetUsers(lookup func(uid int) (*agentapi.Creds, error)) error {
	if lookup == nil {
		lookup = LookupCreds
	}
	c, err := lookup(s.Owner)
	if err != nil {
		return err
	}
	for i := range s.Nodes {
		cc := *c
		cc.Groups = slices.Clone(c.Groups)
		s.Nodes[i].User = &cc
	}
	return nil
}
