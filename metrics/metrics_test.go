package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// exercised returns a coordinator's and a shim's metrics with every
// metric touched once, so that every family shows in a scrape.
func exercised(t *testing.T) (*Coordinator, *Shim) {
	t.Helper()
	c := NewCoordinator(Sources{
		Jobs:   func() map[string]int { return map[string]int{"running": 2} },
		States: []string{"running", "failed"},
		Shims:  func() (int, int) { return 3, 2 },
	})
	c.Operation("checkpoint", ResultOK, ReasonNone)
	c.Operation("checkpoint", ResultFailed, "dump")
	c.Phases("checkpoint", map[string]time.Duration{"dump": time.Second, "freeze": time.Millisecond})
	c.Written("checkpoint", 100)
	c.Read("restart", "verify", 100)
	c.CRIUDump("checkpoint", time.Second)
	c.Frozen("checkpoint", time.Second)
	c.Fence(time.Millisecond)
	c.Event("state")
	s := NewShim(func() int { return 1 })
	s.Call("dump", time.Second, nil)
	s.Call("dump", time.Second, errors.New("x"))
	s.CRIU("dump", time.Second)
	s.Written(10)
	s.Read(10)
	s.Registered(true)
	return c, s
}

func families(t *testing.T, regs ...*prometheus.Registry) map[string]bool {
	t.Helper()
	have := map[string]bool{}
	for _, r := range regs {
		mfs, err := r.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			have[mf.GetName()] = true
		}
	}
	return have
}

func TestValues(t *testing.T) {
	c, s := exercised(t)
	tests := []struct {
		name string
		got  float64
		want float64
	}{
		{"checkpoints ok", testutil.ToFloat64(c.ops.WithLabelValues("checkpoint", "ok", "none")), 1},
		{"checkpoints failed in dump", testutil.ToFloat64(c.ops.WithLabelValues("checkpoint", "failed", "dump")), 1},
		{"written", testutil.ToFloat64(c.written.WithLabelValues("checkpoint")), 100},
		{"fences", testutil.ToFloat64(c.fences), 1},
		{"shim dump failed", testutil.ToFloat64(s.calls.WithLabelValues("dump", "failed")), 1},
		{"shim registered", testutil.ToFloat64(s.registered), 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Fatalf("got %v, want %v", tt.got, tt.want)
			}
		})
	}
	if err := testutil.GatherAndCompare(c.Registry, strings.NewReader(`
# HELP torpor_jobs Jobs the coordinator knows, by state.
# TYPE torpor_jobs gauge
torpor_jobs{state="failed"} 0
torpor_jobs{state="running"} 2
# HELP torpor_shims_reachable Registered shims that registered again (every 5 s) within the last 15 s; shims in this process count always.
# TYPE torpor_shims_reachable gauge
torpor_shims_reachable 2
`), "torpor_jobs", "torpor_shims_reachable"); err != nil {
		t.Fatal(err)
	}
}

// Names follow Prometheus' conventions: torpor_ prefix, _total only on
// counters, base units, and no label that could take a job, a job-node or a
// checkpoint (unbounded series).
func TestNamingConventions(t *testing.T) {
	c, s := exercised(t)
	forbidden := map[string]bool{"job": true, "node": true, "handle": true, "checkpoint": true, "ckpt": true, "rank": true}
	for _, r := range []*prometheus.Registry{c.Registry, s.Registry} {
		mfs, err := r.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			name := mf.GetName()
			if strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_") {
				continue
			}
			if !strings.HasPrefix(name, "torpor_") {
				t.Errorf("%s: not torpor_", name)
			}
			isCounter := mf.GetType().String() == "COUNTER"
			if isCounter != strings.HasSuffix(name, "_total") {
				t.Errorf("%s: a %s; only counters end in _total", name, mf.GetType())
			}
			if strings.Contains(name, "milli") || strings.Contains(name, "_ms") || strings.Contains(name, "_ns") {
				t.Errorf("%s: use base units (seconds, bytes)", name)
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if forbidden[l.GetName()] {
						t.Errorf("%s: label %q is unbounded", name, l.GetName())
					}
				}
			}
		}
	}
}

// dashboardMetrics returns every metric family the Grafana dashboard
// queries (histogram series mapped back to their family).
func dashboardMetrics(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "configs", "grafana", "torpor.json"))
	if err != nil {
		t.Fatal(err)
	}
	return DashboardMetrics(data)
}

func TestDashboardMetricsExist(t *testing.T) {
	c, s := exercised(t)
	have := families(t, c.Registry, s.Registry)
	names := dashboardMetrics(t)
	if len(names) < 10 {
		t.Fatalf("the dashboard queries only %v", names)
	}
	for _, n := range names {
		if !have[n] {
			t.Errorf("the dashboard queries %s, which no registry has", n)
		}
	}
}

func TestDashboardMetricsRegexp(t *testing.T) {
	got := DashboardMetrics([]byte(`{"panels":[{"targets":[{"expr":"histogram_quantile(0.9, rate(torpor_x_seconds_bucket[5m])) + torpor_y_total / torpor_x_seconds_count"}]}]}`))
	if strings.Join(got, ",") != "torpor_x_seconds,torpor_y_total" {
		t.Fatalf("got %v", got)
	}
}

func TestServe(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, s := exercised(t)
	addr, err := Serve(ctx, "127.0.0.1:0", s.Registry, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + addr.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `torpor_shim_calls_total{call="dump",result="failed"} 1`) {
		t.Fatalf("scrape:\n%s", body)
	}
}
