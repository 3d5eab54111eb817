package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	apiv1 "github.com/torpor-hpc/torpor/api/v1"
	"github.com/torpor-hpc/torpor/client"
	"github.com/torpor-hpc/torpor/coordinator"
	"github.com/torpor-hpc/torpor/coordinator/launch"
)

type clientFlags struct {
	socket *string
	json   *bool
}

func addClientFlags(fs *flag.FlagSet, withJSON bool) clientFlags {
	cf := clientFlags{socket: fs.String("socket", "", "coordinator socket (default $TORPOR_SOCKET or "+client.DefaultSocket+")")}
	if withJSON {
		cf.json = fs.Bool("json", false, "print JSON")
	}
	return cf
}

func oneArg(fs *flag.FlagSet, what string) (string, error) {
	if fs.NArg() != 1 {
		fs.Usage()
		return "", exitError{2}
	}
	a := fs.Arg(0)
	if a == "" {
		return "", fmt.Errorf("empty %s", what)
	}
	return a, nil
}

func runCheckpoint(ctx context.Context, args []string) error {
	fs := newFlagSet("checkpoint", "JOB")
	cf := addClientFlags(fs, true)
	stop := fs.Bool("stop", false, "stop the job once the checkpoint is committed (like suspend)")
	compress := fs.String("compress", "", "store this checkpoint's memory images `none|lz4|zstd` (default: as the job was started, torpor run --compress)")
	fs.Bool("wait", true, "wait until the checkpoint is committed (always true: the call returns when it is)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	job, err := oneArg(fs, "job")
	if err != nil {
		return err
	}
	return checkpoint(ctx, *cf.socket, job, *stop, *compress, *cf.json)
}

func checkpoint(ctx context.Context, sock, job string, stop bool, compress string, asJSON bool) error {
	ss, err := connect(ctx, sock, embedOptions{})
	if err != nil {
		return err
	}
	defer ss.close(ctx, false)
	cl := ss.cl
	start := time.Now()
	verb := "checkpoint"
	if stop {
		verb = "suspend"
	}
	fmt.Fprintf(os.Stderr, "torpor: %s of %s: prepare, freeze, drain, lock, dump, commit ...\n", verb, job)
	p := watchProgress(ctx, cl, job)
	rep, err := cl.Checkpoint(ctx, &apiv1.CheckpointRequest{Job: job, Stop: stop, Compress: compress})
	p.stop()
	if err != nil {
		return client.RPCErr(err)
	}
	elapsed := time.Since(start)
	fmt.Fprintf(os.Stderr, "torpor: %s of %s committed in %s (%s)\n", verb, job, elapsed.Round(time.Millisecond), humanBytes(rep.Bytes))
	if asJSON {
		return printJSON(jsonCheckpointed{Job: job, Handle: rep.Handle, Kind: rep.Kind, Bytes: rep.Bytes, Phases: orEmpty(rep.PhaseNanos), ElapsedNS: int64(elapsed)})
	}
	fmt.Println(rep.Handle)
	return nil
}

func runSuspend(ctx context.Context, args []string) error {
	fs := newFlagSet("suspend", "JOB")
	cf := addClientFlags(fs, true)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	job, err := oneArg(fs, "job")
	if err != nil {
		return err
	}
	return checkpoint(ctx, *cf.socket, job, true, "", *cf.json)
}

// hostMap collects repeated --host NODE=HOST flags.
type hostMap map[string]string

func (h hostMap) String() string { return fmt.Sprint(map[string]string(h)) }
func (h hostMap) Set(v string) error {
	node, host, ok := strings.Cut(v, "=")
	if !ok || node == "" || host == "" {
		return fmt.Errorf("want NODE=HOST, got %q", v)
	}
	h[node] = host
	return nil
}

// followFlags are how restart and resume look after a job they bring back
// with an embedded coordinator: as `torpor run` does.
type followFlags struct {
	interval, signal *string
	restarts         *int
}

func addFollowFlags(fs *flag.FlagSet) followFlags {
	return followFlags{
		interval: fs.String("checkpoint-interval", "", "with no coordinator running: checkpoint the job every DURATION (e.g. 30m), as `torpor run` does"),
		signal:   fs.String("checkpoint-signal", "USR1", "with no coordinator running: the signal to this process that checkpoints the job (USR1, USR2 or HUP)"),
		restarts: fs.Int("restart-on-failure", 0, "with no coordinator running: restart the job up to N times from its last checkpoint if it fails"),
	}
}

func (f followFlags) options() (client.SuperviseOptions, error) {
	var opt client.SuperviseOptions
	var err error
	if *f.interval != "" {
		if opt.CheckpointInterval, err = launch.ParseInterval(*f.interval); err != nil {
			return opt, fmt.Errorf("--checkpoint-interval: %w", err)
		}
	}
	if opt.CheckpointSignal, err = launch.ParseCheckpointSignal(*f.signal); err != nil {
		return opt, fmt.Errorf("--checkpoint-signal: %w", err)
	}
	if *f.restarts < 0 {
		return opt, errors.New("--restart-on-failure: give 0 or more")
	}
	opt.RestartOnFailure = *f.restarts
	return opt, nil
}

func runRestart(ctx context.Context, args []string) error {
	fs := newFlagSet("restart", "HANDLE|JOB")
	cf := addClientFlags(fs, true)
	hosts := hostMap{}
	fs.Var(hosts, "host", "place job-node NODE on HOST (NODE=HOST, repeatable); default: where it was")
	fallback := fs.Bool("fallback", false, "if the newest checkpoint fails verification, take the newest one that verifies")
	ff := addFollowFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	ref, err := oneArg(fs, "checkpoint handle or job")
	if err != nil {
		return err
	}
	opt, err := ff.options()
	if err != nil {
		return err
	}
	return restart(ctx, *cf.socket, ref, hosts, *fallback, *cf.json, opt)
}

// restart brings a job back. With a coordinator running, it returns once
// the job runs again. With none, this process hosts one, and stays with the
// job to its end as `torpor run` does (opt); a job that an earlier torpor
// process left running, and this one took over, is followed as it is.
func restart(ctx context.Context, sock, ref string, hosts map[string]string, fallback, asJSON bool, opt client.SuperviseOptions) error {
	ss, err := connect(ctx, sock, embedOptions{})
	if err != nil {
		return err
	}
	defer ss.close(ctx, true)
	cl := ss.cl
	job, _, isHandle := strings.Cut(ref, "/")
	if ss.stack != nil && !isHandle {
		if j, err := cl.GetJob(ctx, &apiv1.JobRef{Job: job}); err == nil && j.State == string(coordinator.StateRunning) {
			fmt.Fprintf(os.Stderr, "torpor: job %s still runs (the torpor process that hosted it ended, not the job): following it\n", job)
			return follow(ctx, ss, j.Spec, opt)
		}
	}
	start := time.Now()
	fmt.Fprintf(os.Stderr, "torpor: restart from %s: verify, restore (locked), unlock, thaw ...\n", ref)
	p := watchProgress(ctx, cl, job)
	rep, err := cl.Restart(ctx, &apiv1.RestartRequest{Ref: ref, Hosts: hosts, Fallback: fallback})
	p.stop()
	if err != nil {
		return client.RPCErr(err)
	}
	printRestarted(rep)
	elapsed := time.Since(start)
	fmt.Fprintf(os.Stderr, "torpor: %s restarted from %s in %s\n", rep.Job, rep.Checkpoint, elapsed.Round(time.Millisecond))
	if asJSON {
		out := jsonRestarted{Job: rep.Job, Checkpoint: rep.Checkpoint, Bytes: rep.Bytes, Skipped: rep.Skipped, Moved: rep.Moved,
			SetAside: rep.SetAside, ElapsedNS: int64(elapsed)}
		for _, l := range []*[]string{&out.Skipped, &out.Moved, &out.SetAside} {
			if *l == nil {
				*l = []string{}
			}
		}
		if err := printJSON(out); err != nil {
			return err
		}
	}
	if ss.stack == nil {
		return nil
	}
	j, err := cl.GetJob(ctx, &apiv1.JobRef{Job: rep.Job})
	if err != nil {
		return client.RPCErr(err)
	}
	return follow(ctx, ss, j.Spec, opt)
}

// printRestarted says what a restart passed over: newer checkpoints that
// failed verification, hosts' copies of a host-local one that did, and
// files it moved aside.
func printRestarted(rep *apiv1.RestartReply) {
	for _, s := range rep.Skipped {
		fmt.Fprintf(os.Stderr, "torpor: skipped %s: it fails verification\n", s)
	}
	for _, s := range rep.SetAside {
		fmt.Fprintf(os.Stderr, "torpor: %s: the copy of %s failed verification and was set aside; restored from another host's copy\n", rep.Checkpoint, s)
	}
	client.PrintMoved(os.Stderr, rep.Moved)
}

// follow stays with a job in the foreground (client.Follow) and turns its
// end into this process's exit status.
func follow(ctx context.Context, ss *session, spec *apiv1.JobSpec, opt client.SuperviseOptions) error {
	opt.RunDir, opt.Output, opt.Reconnect = ss.runDir(""), os.Stdout, ss.reconnect
	code, err := client.Follow(ctx, ss.cl, spec, os.Stderr, opt)
	if err != nil {
		return err
	}
	if code != 0 {
		return exitError{code}
	}
	return nil
}

func runResume(ctx context.Context, args []string) error {
	fs := newFlagSet("resume", "JOB")
	cf := addClientFlags(fs, true)
	ff := addFollowFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	job, err := oneArg(fs, "job")
	if err != nil {
		return err
	}
	if strings.Contains(job, "/") {
		return fmt.Errorf("resume takes a job, not a checkpoint handle; use `torpor restart %s`", job)
	}
	opt, err := ff.options()
	if err != nil {
		return err
	}
	return restart(ctx, *cf.socket, job, nil, false, *cf.json, opt)
}

func runMigrate(ctx context.Context, args []string) error {
	fs := newFlagSet("migrate", "JOB")
	cf := addClientFlags(fs, true)
	node := fs.String("node", "", "job-node to move (required)")
	to := fs.String("to", "", "host to move it to (required)")
	postCopy := fs.String("postcopy", "auto", "auto: post-copy when the job-node's private memory reaches the coordinator's threshold (default 128M); always; never (stop-and-copy). Post-copy thaws the job before the memory has moved, and returns once the last page arrived")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	job, err := oneArg(fs, "job")
	if err != nil {
		return err
	}
	if *node == "" || *to == "" {
		return errors.New("migrate needs --node NODE and --to HOST (see `torpor ps` for the job-nodes and their hosts)")
	}
	ss, err := connect(ctx, *cf.socket, embedOptions{})
	if err != nil {
		return err
	}
	defer ss.close(ctx, false)
	cl := ss.cl
	start := time.Now()
	if _, err := coordinator.ParsePostCopy(*postCopy); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "torpor: migrate %s/%s to %s: freeze, drain, lock, dump, restore, unlock, thaw ...\n", job, *node, *to)
	p := watchProgress(ctx, cl, job)
	rep, err := cl.Migrate(ctx, &apiv1.MigrateRequest{Job: job, Node: *node, To: *to, Postcopy: *postCopy})
	p.stop()
	if err != nil {
		return client.RPCErr(err)
	}
	elapsed := time.Since(start)
	downtime, lastPage := time.Duration(rep.DowntimeNanos), time.Duration(rep.LastPageNanos)
	how := fmt.Sprintf("%s, downtime %s", rep.Mode, downtime.Round(time.Millisecond))
	if rep.Streamed {
		how += ", images streamed from shim to shim"
	}
	if lastPage > 0 {
		how += fmt.Sprintf(", last page after %s", lastPage.Round(time.Millisecond))
	}
	fmt.Fprintf(os.Stderr, "torpor: %s/%s now runs on %s (%s; %s)\n", job, *node, *to, elapsed.Round(time.Millisecond), how)
	if rep.ModeReason != "" {
		fmt.Fprintf(os.Stderr, "torpor: %s: %s\n", rep.Mode, rep.ModeReason)
	}
	if *cf.json {
		return printJSON(jsonMigrated{Job: job, Node: *node, To: *to, ElapsedNS: int64(elapsed), Mode: rep.Mode, ModeReason: rep.ModeReason,
			DowntimeNS: rep.DowntimeNanos, LastPageNS: rep.LastPageNanos, Bytes: rep.Bytes, MemoryBytes: rep.MemoryBytes, Streamed: rep.Streamed})
	}
	return nil
}

func runPs(ctx context.Context, args []string) error {
	fs := newFlagSet("ps", "")
	cf := addClientFlags(fs, true)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	ss, err := connect(ctx, *cf.socket, embedOptions{})
	if err != nil {
		return err
	}
	defer ss.close(ctx, false)
	cl := ss.cl
	list, err := cl.Jobs(ctx, &apiv1.Empty{})
	if err != nil {
		return client.RPCErr(err)
	}
	jobs := make([]jsonJob, 0, len(list.Jobs))
	for _, j := range list.Jobs {
		jobs = append(jobs, jobJSON(j))
	}
	return printList(*cf.json, jobs, "JOB\tSTATE\tOWNER\tJOB-NODES\tLAST CHECKPOINT\tREASON", func(tw io.Writer) {
		for _, j := range list.Jobs {
			var nodes []string
			for _, n := range j.Spec.GetNodes() {
				nodes = append(nodes, n.Name+"@"+n.Host)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", j.Spec.GetId(), j.State, userName(int(j.Spec.GetOwner())), strings.Join(nodes, ","), dash(j.LastCheckpoint), j.Reason)
		}
	})
}

// userName is the name of uid, or the number when the user database does
// not know it.
func userName(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return u.Username
	}
	return strconv.Itoa(uid)
}

func runLs(ctx context.Context, args []string) error {
	fs := newFlagSet("ls", "[JOB]")
	cf := addClientFlags(fs, true)
	noVerify := fs.Bool("no-verify", false, "do not re-hash the images (fast)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		fs.Usage()
		return exitError{2}
	}
	ss, err := connect(ctx, *cf.socket, embedOptions{})
	if err != nil {
		return err
	}
	defer ss.close(ctx, false)
	cl := ss.cl
	list, err := cl.ListCheckpoints(ctx, &apiv1.ListCheckpointsRequest{Job: fs.Arg(0), Verify: !*noVerify})
	if err != nil {
		return client.RPCErr(err)
	}
	cps := make([]jsonCheckpoint, 0, len(list.Checkpoints))
	for _, c := range list.Checkpoints {
		cps = append(cps, checkpointJSON(c))
		for _, s := range c.SetAside {
			fmt.Fprintf(os.Stderr, "torpor: %s: the copy of %s failed verification and was set aside\n", c.Handle, s)
		}
	}
	// VERIFIED stays last: it may be a long error.
	return printList(*cf.json, cps, "CHECKPOINT\tKIND\tCREATED\tSIZE\tJOB-NODES\tPHASES\tSTORED\tVERIFIED", func(tw io.Writer) {
		for _, c := range list.Checkpoints {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", c.Handle, c.Kind, time.Unix(c.CreatedUnix, 0).Format("2006-01-02 15:04:05"),
				humanBytes(c.Bytes), c.Nodes, phases(c.PhaseNanos), stored(c), c.Verified)
		}
	})
}

func phases(p map[string]int64) string {
	order := []string{"verify", "fetch", "files", "prepare", "freeze", "drain", "lock", "dump", "commit", "restore", "unlock", "thaw"}
	var parts []string
	for _, k := range order {
		if v, ok := p[k]; ok {
			parts = append(parts, fmt.Sprintf("%s=%s", k, time.Duration(v).Round(time.Millisecond)))
		}
	}
	var rest []string
	for k := range p {
		if !contains(order, k) {
			rest = append(rest, k)
		}
	}
	sort.Strings(rest)
	for _, k := range rest {
		parts = append(parts, fmt.Sprintf("%s=%s", k, time.Duration(p[k]).Round(time.Millisecond)))
	}
	return strings.Join(parts, " ")
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fG", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fM", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fK", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printList prints v as JSON when asJSON, otherwise as a table: the header
// line, then the tab-separated lines rows writes, in aligned columns.
func printList(asJSON bool, v any, header string, rows func(tw io.Writer)) error {
	if asJSON {
		return printJSON(v)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	rows(tw)
	return tw.Flush()
}

func runCancel(ctx context.Context, args []string) error {
	job, ss, err := jobCommand(ctx, "cancel", args)
	if err != nil {
		return err
	}
	defer ss.close(ctx, false)
	if _, err := ss.cl.Cancel(ctx, &apiv1.JobRef{Job: job}); err != nil {
		return client.RPCErr(err)
	}
	fmt.Fprintf(os.Stderr, "torpor: job %s cancelled; its checkpoints are kept\n", job)
	return nil
}

func runWait(ctx context.Context, args []string) error {
	job, ss, err := jobCommand(ctx, "wait", args)
	if err != nil {
		return err
	}
	defer ss.close(ctx, true)
	var j *apiv1.Job
	for {
		j, err = ss.cl.Wait(ctx, &apiv1.JobRef{Job: job})
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			break
		}
		// The process that hosted the coordinator ended: wait on the next.
		if _, err = ss.reconnect(ctx); err != nil {
			return err
		}
	}
	if err != nil {
		return client.RPCErr(err)
	}
	fmt.Fprintf(os.Stderr, "torpor: job %s is %s %s\n", job, j.State, j.Reason)
	switch {
	case j.State == string(coordinator.StateFailed) && j.ExitCode != 0:
		return exitError{int(j.ExitCode)}
	case j.State == string(coordinator.StateFailed):
		return exitError{1}
	}
	return nil
}

// jobArg parses the flags and the one JOB argument of a verb that takes
// only a job, and returns the job and the coordinator's socket flag.
func jobArg(verb string, args []string) (job, socket string, err error) {
	fs := newFlagSet(verb, "JOB")
	cf := addClientFlags(fs, false)
	if err := parseFlags(fs, args); err != nil {
		return "", "", err
	}
	job, err = oneArg(fs, "job")
	return job, *cf.socket, err
}

// jobCommand parses the flags of a verb that takes just --socket and one JOB,
// and connects to the coordinator.
func jobCommand(ctx context.Context, verb string, args []string) (string, *session, error) {
	job, sock, err := jobArg(verb, args)
	if err != nil {
		return "", nil, err
	}
	ss, err := connect(ctx, sock, embedOptions{})
	if err != nil {
		return "", nil, err
	}
	return job, ss, nil
}
