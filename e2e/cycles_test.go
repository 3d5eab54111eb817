package e2e

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// cycleOps are the operations a random cycle picks from.
var cycleOps = []string{"checkpoint", "stop+restart", "migrate", "suspend+resume"}

// TestRandomCycles runs CYCLES (default 30) random operations at random
// moments on Open MPI ring jobs placed on 3 of 4 simulated hosts: a
// leave-running checkpoint, a stop and a restart on 3 random hosts, the
// migration of a random job-node to the free host, or a suspend and a resume
// on the same hosts. After every cycle the job must be running where it was
// put and compute again; every job must end with the undisturbed checksum and
// without having failed. A job takes up to 25 cycles; more cycles take more
// jobs. CYCLES_SEED replays a run.
func TestRandomCycles(t *testing.T) {
	randomCycles(t, envInt(t, "CYCLES", 30), func() *cluster { return newCluster(t, 4, "--keep", "2") })
}

// TestRandomCyclesIsolated is TestRandomCycles on hosts that share no
// directory and no L2 segment (newIsolatedCluster: checkpoints kept on the
// hosts with a replica each, restarts fetching images, migrations
// streaming them, output through the coordinator): CYCLES_ISOLATED cycles
// (default 10; make e2e: CYCLES/4).
func TestRandomCyclesIsolated(t *testing.T) {
	randomCycles(t, envInt(t, "CYCLES_ISOLATED", 10), func() *cluster { return newIsolatedCluster(t, 4, "--keep", "2") })
}

func randomCycles(t *testing.T, cycles int, newC func() *cluster) {
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("CYCLES_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("CYCLES_SEED=%q: %v", v, err)
		}
		seed = s
	}
	t.Logf("%d cycles, seed %d (CYCLES_SEED=%d replays this run)", cycles, seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))

	// Keep only each job's two newest checkpoints: a long run must not fill the disk.
	c := newC()
	bin := workload(t, "ring.openmpi")
	const iters, printEvery = 1000, 10
	args := []string{"-i", fmt.Sprint(iters), "-m", "4", "-s", "20000", "-p", fmt.Sprint(printEvery)}
	want := reference(t, "mpirun.openmpi", 3, bin, args...)
	hosts := []string{"h1", "h2", "h3", "h4"}

	st := map[string]*opStats{}
	for _, op := range cycleOps {
		st[op] = &opStats{}
	}
	done, jobs := 0, 0
	start := time.Now()
	for done < cycles {
		j := c.runMPI(fmt.Sprintf("cyc%d", jobs), 3, "h1:1,h2:1,h3:1", bin, args...)
		jobs++
		j.progress("started")
		// Cycle while the job has at least a third of its iterations left,
		// so that no operation races with its end.
		for k := 0; k < 25 && done < cycles && j.iterations()*printEvery < iters*2/3; k++ {
			time.Sleep(time.Duration(rng.IntN(800)) * time.Millisecond)
			op := cycleOps[rng.IntN(len(cycleOps))]
			t0 := time.Now()
			what := c.cycle(j, op, rng, hosts)
			st[op].add(time.Since(t0))
			done++
			j.progress(fmt.Sprintf("cycle %d/%d (%s)", done, cycles, what))
		}
		got := j.finish(3*time.Minute, "")
		if got != want {
			t.Fatalf("job %s ended with checksum %s, the undisturbed run with %s (seed %d)", j.id, got, want, seed)
		}
		if strings.Contains(j.output(), "restart 1 of 1 from") {
			t.Fatalf("job %s failed during the cycles and was restarted by --restart-on-failure (seed %d):\n%s", j.id, seed, lastLines(j.output(), 30))
		}
		t.Logf("job %s: checksum %s = undisturbed, after %d cycles in all", j.id, got, done)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "SUMMARY %d/%d cycles passed on %d jobs in %s, every checksum %s = undisturbed (seed %d)\n",
		done, cycles, jobs, time.Since(start).Round(time.Second), want, seed)
	for _, op := range cycleOps {
		fmt.Fprintf(&b, "  %-15s %s\n", op, st[op])
	}
	t.Log(b.String())
}

// cycle runs one operation on j and checks the job runs where it should.
func (c *cluster) cycle(j *mpiJob, op string, rng *rand.Rand, hosts []string) string {
	c.t.Helper()
	place := c.placement(j.id)
	switch op {
	case "checkpoint":
		h := lastLines(c.mustCLI("checkpoint", j.id), 1)
		op += " " + h
	case "stop+restart":
		h := lastLines(c.mustCLI("suspend", j.id), 1)
		c.waitState(j.id, "suspended", 10*time.Second)
		perm := rng.Perm(len(hosts))
		nodes := slices.Sorted(maps.Keys(place))
		args := []string{"restart", h}
		place = map[string]string{}
		for i, n := range nodes {
			place[n] = hosts[perm[i]]
			args = append(args, "--host", n+"="+place[n])
		}
		c.mustCLI(args...)
		op += " " + h + " to " + placementString(place)
	case "migrate":
		nodes := slices.Sorted(maps.Keys(place))
		n := nodes[rng.IntN(len(nodes))]
		to := freeHost(hosts, place)
		c.mustCLI("migrate", j.id, "--node", n, "--to", to)
		place[n] = to
		op += " " + n + " to " + to
	case "suspend+resume":
		h := lastLines(c.mustCLI("suspend", j.id), 1)
		c.waitState(j.id, "suspended", 10*time.Second)
		c.mustCLI("resume", j.id)
		op += " " + h
	default:
		c.t.Fatalf("unknown cycle operation %q", op)
	}
	c.waitState(j.id, "running", 30*time.Second)
	if got := c.placement(j.id); !maps.Equal(got, place) {
		c.t.Fatalf("after %s: job %s is on %s, want %s", op, j.id, placementString(got), placementString(place))
	}
	return op
}

// placement reads a job's job-nodes and their hosts from `torpor ps`.
func (c *cluster) placement(job string) map[string]string {
	c.t.Helper()
	out := c.mustCLI("ps")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || f[0] != job {
			continue
		}
		m := map[string]string{}
		for _, nh := range strings.Split(f[3], ",") {
			n, h, ok := strings.Cut(nh, "@")
			if !ok {
				c.t.Fatalf("job-nodes column %q of job %s:\n%s", f[3], job, out)
			}
			m[n] = h
		}
		return m
	}
	c.t.Fatalf("job %s not in `torpor ps`:\n%s", job, out)
	return nil
}

func placementString(m map[string]string) string {
	var parts []string
	for _, n := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, n+"@"+m[n])
	}
	return strings.Join(parts, ",")
}

// freeHost is the first host no job-node uses.
func freeHost(hosts []string, place map[string]string) string {
	for _, h := range hosts {
		used := false
		for _, p := range place {
			used = used || p == h
		}
		if !used {
			return h
		}
	}
	return ""
}

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive number", name, v)
	}
	return n
}

// opStats sums the durations of one kind of cycle.
type opStats struct{ d []time.Duration }

func (s *opStats) add(d time.Duration) { s.d = append(s.d, d) }

func (s *opStats) String() string {
	if len(s.d) == 0 {
		return "0 cycles"
	}
	sorted := slices.Clone(s.d)
	slices.Sort(sorted)
	var sum time.Duration
	for _, d := range sorted {
		sum += d
	}
	return fmt.Sprintf("%3d cycles, mean %s, median %s, max %s", len(sorted),
		(sum / time.Duration(len(sorted))).Round(time.Millisecond),
		sorted[len(sorted)/2].Round(time.Millisecond), sorted[len(sorted)-1].Round(time.Millisecond))
}
