// Package fault names the places where torpor can be told to fail, for the
// fault-injection harness (e2e/faults_test.go, `make e2e`). Each point says
// which daemon honours it, where it strikes and what torpor must do about it;
// the harness asserts exactly that outcome.
//
// Points are switched on per daemon with --fault NAME (repeatable). They
// exist only for testing: a daemon started with one logs it loudly.
package fault

import (
	"fmt"
	"sort"
	"strings"
)

// Point is a named place where a failure is injected.
type Point string

// The points a daemon can be told to fail at.
const (
	// CoordinatorCrashBeforeCommit: the coordinator exits (status 86) after
	// every job-node was dumped, before the checkpoint is committed.
	CoordinatorCrashBeforeCommit Point = "crash-before-commit"
	// CoordinatorCrashAfterRestore: the coordinator exits (status 86) when
	// a migration's destination restored the job-node, before the point of
	// no return.
	CoordinatorCrashAfterRestore Point = "crash-after-restore"
	// CoordinatorCrashPastNoReturn: the coordinator exits (status 86) when a
	// migration saved the job-node's new place, before the job runs again.
	CoordinatorCrashPastNoReturn Point = "crash-past-no-return"
	// ShimExitInDump: the shim kills itself (SIGKILL) while CRIU is dumping
	// one of its job-nodes.
	ShimExitInDump Point = "shim-exit-in-dump"
	// CRIUKillInDump: the shim's CRIU is killed (SIGKILL) while it dumps a
	// job-node.
	CRIUKillInDump Point = "criu-kill-in-dump"
	// HoldInRestore: in its first restore, the shim holds CRIU at its
	// post-restore notification (the restored tree stopped, not yet running)
	// until the restore request is cancelled, so a test can cut the network
	// at that moment, every time.
	HoldInRestore Point = "hold-in-restore"
	// StallPagesInFlight: in its first post-copy restore, the destination
	// shim stops (SIGSTOP) CRIU's lazy-pages daemon at CRIU's post-restore
	// notification (the tree restored, the daemon has fetched only the
	// pages the restore touched and not yet begun fetching the rest), logs
	// when the job-node is thawed, and
	// continues the daemon once the source has closed its page server
	// connection (CLOSE_WAIT), so a test can kill the source's page server
	// after the thaw and before every page arrived, every time.
	StallPagesInFlight Point = "stall-pages-in-flight"
	// CorruptSentImages: the shim flips a byte of every memory image it
	// sends to another shim in a streamed migration (its first chunk).
	CorruptSentImages Point = "corrupt-sent-images"
)

// Daemon is the torpor daemon that honours a point.
type Daemon string

const (
	Coordinator Daemon = "coordinator"
	Shim        Daemon = "shim"
)

// Info documents one point: where it strikes and the outcome the harness asserts.
type Info struct {
	Point  Point
	Daemon Daemon
	Where  string
	Expect string
}

// Catalog lists every point.
var Catalog = []Info{
	{CoordinatorCrashBeforeCommit, Coordinator,
		"after every job-node was dumped, before the manifest is committed",
		"the restarted coordinator recovers its jobs from disk, discards the half checkpoint, unlocks and thaws the job: it runs on, restartable from its last committed checkpoint"},
	{CoordinatorCrashAfterRestore, Coordinator,
		"a migration's destination restored the job-node (frozen, locked), before the point of no return",
		"the restarted coordinator destroys the restored copy, unlocks and thaws the job where it was: it runs on with the undisturbed result, and a migration to the same host succeeds"},
	{CoordinatorCrashPastNoReturn, Coordinator,
		"a migration saved the job-node's new place with its old copy leaving, before the job is unlocked and thawed",
		"the restarted coordinator destroys the old copy, never thawed, and unlocks and thaws the job where it moved: it runs on with the undisturbed result"},
	{ShimExitInDump, Shim,
		"while CRIU dumps a job-node of that shim",
		"the checkpoint is aborted and its images deleted; the other job-nodes are unlocked and thawed at once; the restarted shim adopts its job-node, which the coordinator unlocks and thaws: the job continues with the undisturbed result"},
	{CRIUKillInDump, Shim,
		"CRIU is killed while it dumps a job-node",
		"the checkpoint is aborted with CRIU's death named, its images deleted, every job-node unlocked and thawed: the job continues with the undisturbed result"},
	{HoldInRestore, Shim,
		"CRIU restored a job-node of that shim (its first restore) and waits to let it run, until the request is cancelled",
		"with the shim cut off from the coordinator there, the restart fails saying nothing is left running, the shim destroys its half-restored job-node, the job stays suspended and restarts once the network heals"},
	{StallPagesInFlight, Shim,
		"the destination of a post-copy migration (its first): its lazy-pages daemon is stopped from CRIU's post-restore notification (before it fetches anything but the restore's own page faults) until the source closes the page server connection",
		"with the source's page server killed after the thaw, the daemon finds the connection gone with pages missing and fails; the destination shim kills the job-node; the migration fails saying the pages were lost in flight, the job is failed, no job-node, cgroup, namespace or CRIU of it is left on any host, and `torpor restart JOB` brings it back from its last checkpoint with the undisturbed result"},
	{CorruptSentImages, Shim,
		"the source of a streamed migration sends its memory images with a byte changed",
		"the destination finds the image modified before any restored task runs, the migration is aborted naming the file, the job keeps running on its old hosts with the undisturbed result, and neither host keeps migration images"},
}

// Lookup returns a point's documentation.
func Lookup(p Point) (Info, bool) {
	for _, i := range Catalog {
		if i.Point == p {
			return i, true
		}
	}
	return Info{}, false
}

// Set is the points switched on in one daemon.
type Set map[Point]bool

// Has says whether p is switched on. A nil Set has nothing switched on.
func (s Set) Has(p Point) bool { return s[p] }

// Parse checks that every name is a point of daemon d.
func Parse(d Daemon, names []string) (Set, error) {
	s := Set{}
	for _, n := range names {
		if n == "" {
			continue
		}
		i, ok := Lookup(Point(n))
		if !ok || i.Daemon != d {
			return nil, fmt.Errorf("unknown fault point %q for the %s; known: %s", n, d, strings.Join(Names(d), ", "))
		}
		s[i.Point] = true
	}
	return s, nil
}

// Names lists the points of daemon d, sorted.
func Names(d Daemon) []string {
	var out []string
	for _, i := range Catalog {
		if i.Daemon == d {
			out = append(out, string(i.Point))
		}
	}
	sort.Strings(out)
	return out
}
