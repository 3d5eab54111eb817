package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/fault"
	"github.com/torpor-hpc/torpor/metrics"
)

// cliSplit runs the torpor CLI and returns its stdout and stderr apart (a
// --json document is on stdout alone) and its exit code.
func (c *cluster) cliSplit(args ...string) (stdout, stderr string, code int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.torpor, args...)
	cmd.Env = append(os.Environ(), "TORPOR_SOCKET="+c.socket)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		c.t.Fatalf("torpor %v: %v", args, err)
	}
	return o.String(), e.String(), code
}

// mustJSON runs a verb with --json and decodes its stdout into v,
// checking that every field named in fields is in the document (each
// element of an array, for arrays).
func (c *cluster) mustJSON(v any, fields []string, args ...string) string {
	c.t.Helper()
	out, errOut, code := c.cliSplit(append(args, "--json")...)
	if code != 0 {
		c.t.Fatalf("torpor %s --json: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		c.t.Fatalf("torpor %s --json: %v\n%s", strings.Join(args, " "), err, out)
	}
	checkFields(c.t, out, fields, strings.Join(args, " "))
	return errOut
}

// checkFields checks that every object of doc (an object, an array of
// objects, or JSON lines) has every field.
func checkFields(t *testing.T, doc string, fields []string, what string) {
	t.Helper()
	var objs []map[string]json.RawMessage
	if err := json.Unmarshal([]byte(doc), &objs); err != nil {
		dec := json.NewDecoder(strings.NewReader(doc))
		for dec.More() {
			var o map[string]json.RawMessage
			if err := dec.Decode(&o); err != nil {
				t.Fatalf("%s: %v\n%s", what, err, doc)
			}
			objs = append(objs, o)
		}
	}
	if len(objs) == 0 {
		t.Fatalf("%s: no JSON object in\n%s", what, doc)
	}
	for _, o := range objs {
		for _, f := range fields {
			if _, ok := o[f]; !ok {
				t.Errorf("%s: no field %q in %v", what, f, o)
			}
		}
	}
}

var metricsAddrRE = regexp.MustCompile(`msg="serving metrics" .*metrics=http://([0-9.:]+)/metrics`)

// metricsAddr waits for a daemon to log where it serves its metrics.
func (c *cluster) metricsAddr(name string) string {
	c.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if m := metricsAddrRE.FindStringSubmatch(c.logs[name].String()); m != nil {
			return m[1]
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s does not say where it serves metrics:\n%s", name, c.logs[name])
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// prometheus is a real Prometheus server (Debian's) scraping the cluster.
type promServer struct {
	t    *testing.T
	base string
}

// startPrometheus starts Prometheus on 127.0.0.1, scraping targets every
// 500 ms, with its data in a directory of the test; both go at cleanup.
func (c *cluster) startPrometheus(targets map[string]string) *promServer {
	c.t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		c.t.Fatalf("no prometheus binary (Debian's package `prometheus`: run `make deps`): %v", err)
	}
	dir := filepath.Join(c.dir, "prometheus")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		c.t.Fatal(err)
	}
	var cfg strings.Builder
	cfg.WriteString("global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\nscrape_configs:\n")
	for name, addr := range targets {
		fmt.Fprintf(&cfg, "  - job_name: %q\n    static_configs:\n      - targets: [%q]\n        labels: {daemon: %q}\n", name, addr, name)
	}
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg.String()), 0o600); err != nil {
		c.t.Fatal(err)
	}
	listen := freePort(c.t)
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+listen, "--log.level=warn")
	buf := &logBuffer{}
	c.logs["prometheus"] = buf
	cmd.Stdout, cmd.Stderr = buf, buf
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { stop(cmd, syscall.SIGTERM) })
	p := &promServer{t: c.t, base: "http://" + listen}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(p.base + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		if time.Now().After(deadline) || exited(cmd) {
			c.t.Fatalf("prometheus did not become ready at %s:\n%s", listen, buf)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type promSample struct {
	Metric map[string]string
	Value  float64
}

// query runs an instant query through Prometheus' HTTP API.
func (p *promServer) query(q string) []promSample {
	p.t.Helper()
	resp, err := http.Get(p.base + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct {
		Status string
		Error  string
		Data   struct {
			Result []struct {
				Metric map[string]string
				Value  [2]any
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || r.Status != "success" {
		p.t.Fatalf("query %s: %v %s", q, err, r.Error)
	}
	var out []promSample
	for _, s := range r.Data.Result {
		v, _ := strconv.ParseFloat(fmt.Sprint(s.Value[1]), 64)
		out = append(out, promSample{Metric: s.Metric, Value: v})
	}
	return out
}

// scalar is the value of a query that yields one series (0 for none).
func (p *promServer) scalar(q string) float64 {
	p.t.Helper()
	r := p.query(q)
	switch len(r) {
	case 0:
		return 0
	case 1:
		return r[0].Value
	}
	p.t.Fatalf("query %s: %d series, want one: %v", q, len(r), r)
	return 0
}

// waitFor waits until q yields want (what Prometheus scraped last).
func (p *promServer) waitFor(q string, want float64) {
	p.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := p.scalar(q)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s = %v, want %v", q, got, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// plainJob starts `torpor run --plain` of a shell loop on hosts and
// returns the job's id once it runs.
func (c *cluster) plainJob(name string, hosts ...string) string {
	c.t.Helper()
	script := filepath.Join(c.dir, "loop.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nwhile :; do sleep 0.1; done\n"), 0o755); err != nil {
		c.t.Fatal(err)
	}
	cmd := c.daemon("run-"+name, "run", "--plain", "--name", name, "--host", strings.Join(hosts, ","), "--run-dir", c.runDir, script)
	c.t.Cleanup(func() { stop(cmd, syscall.SIGTERM) })
	deadline := time.Now().Add(60 * time.Second)
	for {
		if job := c.findJob(name); job != "" {
			return job
		}
		if time.Now().After(deadline) || exited(cmd) {
			c.t.Fatalf("job %s never ran:\n%s", name, c.logs["run-"+name])
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Issue acceptance: a real Prometheus scrapes the coordinator and the four
// shims of a simulated cluster while a checkpoint, a checkpoint that fails
// at a fault point, a migration, a suspend and a resume run; the counters
// and histograms it then holds moved by exactly what those did. Every
// metric the Grafana dashboard queries is in its scrape, every verb's
// --json holds the documented fields, and `torpor events` tells the story.
func TestPrometheusEndToEnd(t *testing.T) {
	c := newCluster(t, 4, "--metrics-listen", "127.0.0.1:0")
	for i := 1; i <= 4; i++ {
		extra := []string{"--metrics-listen", "127.0.0.1:0"}
		if i == 3 {
			// fault.CRIUKillInDump: every dump on h3 fails.
			extra = append(extra, "--fault", string(fault.CRIUKillInDump))
		}
		c.startShim(i, extra...)
	}
	targets := map[string]string{"coordinator": c.metricsAddr("coordinator")}
	for i := 1; i <= 4; i++ {
		targets[fmt.Sprintf("shim-h%d", i)] = c.metricsAddr(fmt.Sprintf("shim-h%d", i))
	}
	prom := c.startPrometheus(targets)
	prom.waitFor(`count(up == 1)`, 5)

	a := c.plainJob("obs-a", "h1", "h2")
	b := c.plainJob("obs-b", "h3")
	prom.waitFor(`torpor_jobs{state="running"}`, 2)
	prom.waitFor(`torpor_shims_reachable`, 4)
	// Nothing ran yet: every operation counter is absent or 0.
	if v := prom.scalar(`sum(torpor_operations_total)`); v != 0 {
		t.Fatalf("operations before any: %v", v)
	}

	ckptFields := []string{"job", "handle", "kind", "bytes", "phases_ns", "elapsed_ns"}
	var ck1 struct {
		Handle string
		Bytes  int64
		Phases map[string]int64 `json:"phases_ns"`
	}
	progress := c.mustJSON(&ck1, ckptFields, "checkpoint", a)
	if !strings.HasPrefix(ck1.Handle, a+"/") || ck1.Bytes <= 0 || ck1.Phases["dump"] <= 0 {
		t.Fatalf("checkpoint --json: %+v", ck1)
	}
	// Not a terminal: one line per phase, as each ends, the dump with its bytes.
	for _, ph := range []string{"prepare", "freeze", "drain", "lock", "dump", "commit", "unlock", "thaw"} {
		if !regexp.MustCompile(`(?m)^torpor: ` + ph + ` +\d`).MatchString(progress) {
			t.Errorf("no progress line for %s on stderr:\n%s", ph, progress)
		}
	}
	if !regexp.MustCompile(`(?m)^torpor: dump .*[KMG]  .*/s$`).MatchString(progress) {
		t.Errorf("the dump's progress line has no bytes and rate:\n%s", progress)
	}

	if out, errOut, code := c.cliSplit("checkpoint", b); code == 0 {
		t.Fatalf("checkpoint of %s on h3 (%s) succeeded:\n%s%s", b, fault.CRIUKillInDump, out, errOut)
	}
	c.waitState(b, "running", 30*time.Second)

	var mig struct{ Job, Node, To string }
	c.mustJSON(&mig, []string{"job", "node", "to", "elapsed_ns"}, "migrate", a, "--node", "n1", "--to", "h4")
	if mig.Node != "n1" || mig.To != "h4" {
		t.Fatalf("migrate --json: %+v", mig)
	}
	var sus struct {
		Handle string
		Kind   string
		Bytes  int64
	}
	c.mustJSON(&sus, ckptFields, "suspend", a)
	if sus.Kind != "suspend" || sus.Bytes <= 0 {
		t.Fatalf("suspend --json: %+v", sus)
	}
	var res struct {
		Checkpoint string
		Bytes      int64
	}
	c.mustJSON(&res, []string{"job", "checkpoint", "bytes", "skipped", "moved", "elapsed_ns"}, "resume", a)
	if res.Checkpoint != sus.Handle || res.Bytes != sus.Bytes {
		t.Fatalf("resume --json: %+v, want checkpoint %s of %d bytes", res, sus.Handle, sus.Bytes)
	}

	// Every verb that prints something, in JSON.
	var jobs []struct{ Job, State string }
	c.mustJSON(&jobs, []string{"job", "state", "reason", "owner", "owner_name", "nodes", "last_checkpoint", "exit_code", "created", "updated"}, "ps")
	var cps []struct {
		Handle string
		Bytes  int64
	}
	c.mustJSON(&cps, []string{"handle", "job", "kind", "created", "bytes", "nodes", "verified", "phases_ns"}, "ls", a)
	if len(cps) != 2 || cps[0].Handle != ck1.Handle || cps[1].Bytes != sus.Bytes {
		t.Fatalf("ls --json: %+v", cps)
	}
	evOut, _, code := c.cliSplit("events", a, "--json")
	if code != 0 {
		t.Fatalf("events --json: exit %d\n%s", code, evOut)
	}
	checkFields(t, evOut, []string{"seq", "time", "job", "owner", "type"}, "events --json")
	var evTypes []string
	for _, line := range strings.Split(strings.TrimSpace(evOut), "\n") {
		var e struct{ Type, To string }
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("events --json line %q: %v", line, err)
		}
		if e.Type != "state" {
			evTypes = append(evTypes, e.Type)
		}
	}
	if got := strings.Join(evTypes, " "); got != "checkpoint migration checkpoint restart" {
		t.Errorf("events of %s: %s, want checkpoint migration checkpoint restart", a, got)
	}
	bOut, _, _ := c.cliSplit("events", b, "--json")
	if !strings.Contains(bOut, `"type":"checkpoint-failed"`) || !strings.Contains(bOut, `"failed_phase":"dump"`) {
		t.Errorf("events of %s have no checkpoint-failed in dump:\n%s", b, bOut)
	}
	doc, _, _ := c.cliSplit("doctor", "--json") // exit 1 if a check fails; the document is the point
	checkFields(t, doc, []string{"results"}, "doctor --json")
	t.Logf("torpor events %s:\n%s", a, c.mustCLI("events", a))

	// What Prometheus holds now: wait for the scrape after the resume.
	prom.waitFor(`torpor_operations_total{operation="restart",result="ok",reason="none"}`, 1)
	prom.waitFor(`sum(torpor_shim_calls_total{call="restore",result="ok"})`, 3)
	type want struct {
		q string
		v float64
	}
	for _, w := range []want{
		{`torpor_operations_total{operation="checkpoint",result="ok",reason="none"}`, 2}, // checkpoint + suspend
		{`torpor_operations_total{operation="checkpoint",result="failed",reason="dump"}`, 1},
		{`sum(torpor_operations_total{operation="checkpoint"})`, 3},
		{`torpor_operations_total{operation="migration",result="ok",reason="none"}`, 1},
		{`sum(torpor_operations_total{operation="restart"})`, 1},
		{`torpor_phase_duration_seconds_count{operation="checkpoint",phase="dump"}`, 3},
		{`torpor_phase_duration_seconds_count{operation="checkpoint",phase="commit"}`, 2},
		// Only the leave-running checkpoint thaws: the failed one's rollback
		// is not among its phases, and a suspend destroys.
		{`torpor_phase_duration_seconds_count{operation="checkpoint",phase="thaw"}`, 1},
		{`torpor_phase_duration_seconds_count{operation="migration",phase="restore"}`, 1},
		{`torpor_phase_duration_seconds_count{operation="restart",phase="verify"}`, 1},
		{`torpor_phase_duration_seconds_count{operation="restart",phase="restore"}`, 1},
		{`torpor_frozen_seconds_count{operation="checkpoint"}`, 2},
		{`torpor_frozen_seconds_count{operation="migration"}`, 1},
		{`torpor_criu_dump_seconds_count{operation="checkpoint"}`, 4},
		{`torpor_criu_dump_seconds_count{operation="migration"}`, 1},
		{`torpor_images_written_bytes_total{operation="checkpoint"}`, float64(ck1.Bytes + sus.Bytes)},
		{`torpor_images_read_bytes_total{operation="restart",phase="verify"}`, float64(res.Bytes)},
		{`torpor_images_read_bytes_total{operation="restart",phase="restore"}`, float64(res.Bytes)},
		{`torpor_shims_registered`, 4},
		{`torpor_shims_reachable`, 4},
		{`torpor_jobs{state="running"}`, 2},
		{`sum(torpor_jobs)`, 2},
		// The shims: 2 + 2 dumps of a, 1 of the migration; h3's one failed.
		{`sum(torpor_shim_calls_total{call="dump",result="ok"})`, 5},
		{`torpor_shim_calls_total{call="dump",result="failed",job="shim-h3"}`, 1},
		{`sum(torpor_shim_calls_total{call="dump",result="failed"})`, 1},
		{`sum(torpor_shim_criu_seconds_count{operation="dump"})`, 5},
		{`sum(torpor_shim_criu_seconds_count{operation="restore"})`, 3},
		// n1 arrives on h4 by the migration, and comes back there at the resume.
		{`torpor_shim_calls_total{call="restore",result="ok",job="shim-h4"}`, 2},
		{`sum(torpor_shim_images_written_bytes_total) - sum(torpor_images_written_bytes_total)`, 0},
		{`sum(torpor_shim_images_read_bytes_total) - sum(torpor_images_read_bytes_total{phase="restore"})`, 0},
		{`sum(torpor_shim_job_nodes)`, 3},
		{`sum(torpor_shim_registered)`, 4},
		{`count(torpor_build_info) + count(torpor_shim_build_info)`, 5},
	} {
		if got := prom.scalar(w.q); math.Abs(got-w.v) > 1e-9 {
			t.Errorf("%s = %v, want %v", w.q, got, w.v)
		}
	}
	if t.Failed() {
		for _, s := range prom.query(`{__name__=~"torpor_operations_total|torpor_shim_calls_total"}`) {
			t.Logf("%v %v", s.Metric, s.Value)
		}
	}

	// Every metric the dashboard queries is in a scrape.
	have := map[string]bool{}
	for _, s := range prom.query(`group by (__name__) ({__name__=~"torpor_.+"})`) {
		have[s.Metric["__name__"]] = true
	}
	data, err := os.ReadFile(filepath.Join("..", "configs", "grafana", "torpor.json"))
	if err != nil {
		t.Fatal(err)
	}
	names := metrics.DashboardMetrics(data)
	for _, n := range names {
		if !have[n] && !have[n+"_bucket"] {
			t.Errorf("the dashboard queries %s, which Prometheus did not scrape", n)
		}
	}
	t.Logf("the dashboard's %d metrics are all in the scrape", len(names))

	// An excerpt of the coordinator's scrape, for the record.
	resp, err := http.Get("http://" + targets["coordinator"] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	var body bytes.Buffer
	_, _ = body.ReadFrom(resp.Body)
	resp.Body.Close()
	var excerpt []string
	for _, line := range strings.Split(body.String(), "\n") {
		if strings.HasPrefix(line, "torpor_operations_total") || strings.HasPrefix(line, "torpor_jobs") ||
			strings.HasPrefix(line, "torpor_images_") || strings.HasPrefix(line, "torpor_shims_") ||
			strings.HasPrefix(line, `torpor_phase_duration_seconds_count{operation="checkpoint"`) {
			excerpt = append(excerpt, line)
		}
	}
	t.Logf("coordinator scrape (excerpt):\n%s", strings.Join(excerpt, "\n"))
}
