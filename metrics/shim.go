package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/torpor-hpc/torpor/agentapi"
)

// Shim is one shim's metrics. A nil *Shim records nothing.
type Shim struct {
	Registry *prometheus.Registry

	calls      *prometheus.CounterVec   // call, result
	durations  *prometheus.HistogramVec // call
	criu       *prometheus.HistogramVec // operation: dump, restore
	written    prometheus.Counter
	read       prometheus.Counter
	registered prometheus.Gauge
}

// NewShim creates a shim's metrics; nodes, if not nil, counts the job-nodes
// the shim runs at each scrape.
func NewShim(nodes func() int) *Shim {
	m := &Shim{
		Registry: newRegistry(),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "torpor_shim_calls_total",
			Help: "Protocol calls on this shim's job-nodes, by call (the phase it serves) and result (ok, failed).",
		}, []string{"call", "result"}),
		durations: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "torpor_shim_call_duration_seconds",
			Help:    "How long one protocol call on one job-node took on this shim.",
			Buckets: DurationBuckets,
		}, []string{"call"}),
		criu: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "torpor_shim_criu_seconds",
			Help:    "Wall time of one successful CRIU run (dump or restore) of one job-node.",
			Buckets: DurationBuckets,
		}, []string{"operation"}),
		written: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "torpor_shim_images_written_bytes_total",
			Help: "Bytes of images this shim's successful dumps wrote (what their node manifests list).",
		}),
		read: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "torpor_shim_images_read_bytes_total",
			Help: "Bytes of images this shim's successful restores read.",
		}),
		registered: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "torpor_shim_registered",
			Help: "1 while the coordinator accepts this shim's registrations, else 0.",
		}),
	}
	m.Registry.MustRegister(m.calls, m.durations, m.criu, m.written, m.read, m.registered, buildInfo("torpor_shim_"))
	if nodes != nil {
		m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "torpor_shim_job_nodes",
			Help: "Job-nodes this shim runs.",
		}, func() float64 { return float64(nodes()) }))
	}
	return m
}

// Call records one protocol call.
func (m *Shim) Call(call string, d time.Duration, err error) {
	if m == nil {
		return
	}
	res := ResultOK
	if err != nil {
		res = ResultFailed
	}
	m.calls.WithLabelValues(call, res).Inc()
	m.durations.WithLabelValues(call).Observe(d.Seconds())
}

// CRIU observes a successful CRIU run.
func (m *Shim) CRIU(op string, d time.Duration) {
	if m == nil || d <= 0 {
		return
	}
	m.criu.WithLabelValues(op).Observe(d.Seconds())
}

// Written adds the bytes of a dump's images.
func (m *Shim) Written(n int64) {
	if m == nil || n <= 0 {
		return
	}
	m.written.Add(float64(n))
}

// Read adds the bytes of a restore's images.
func (m *Shim) Read(n int64) {
	if m == nil || n <= 0 {
		return
	}
	m.read.Add(float64(n))
}

// Registered says whether the coordinator accepts the shim.
func (m *Shim) Registered(ok bool) {
	if m == nil {
		return
	}
	v := 0.0
	if ok {
		v = 1
	}
	m.registered.Set(v)
}

// Instrument wraps an agent so that every call but Status (polled every
// 0.5 s) is counted and timed. Call names are the protocol's phases.
func Instrument(a agentapi.Agent, m *Shim) agentapi.Agent {
	if m == nil {
		return a
	}
	return instrumented{a: a, m: m}
}

type instrumented struct {
	a agentapi.Agent
	m *Shim
}

func (i instrumented) timed(call string, fn func() error) error {
	start := time.Now()
	err := fn()
	i.m.Call(call, time.Since(start), err)
	return err
}

func (i instrumented) Start(ctx context.Context, job string, n agentapi.NodeSpec) error {
	return i.timed("start", func() error { return i.a.Start(ctx, job, n) })
}

func (i instrumented) Prepare(ctx context.Context, ref agentapi.NodeRef, ckpt string) error {
	return i.timed("prepare", func() error { return i.a.Prepare(ctx, ref, ckpt) })
}

func (i instrumented) Freeze(ctx context.Context, ref agentapi.NodeRef) error {
	return i.timed("freeze", func() error { return i.a.Freeze(ctx, ref) })
}

func (i instrumented) Drain(ctx context.Context, ref agentapi.NodeRef) (res agentapi.DrainResult, err error) {
	err = i.timed("drain", func() error { res, err = i.a.Drain(ctx, ref); return err })
	return res, err
}

func (i instrumented) Lock(ctx context.Context, ref agentapi.NodeRef) error {
	return i.timed("lock", func() error { return i.a.Lock(ctx, ref) })
}

func (i instrumented) Dump(ctx context.Context, ref agentapi.NodeRef, req agentapi.DumpRequest) (res agentapi.DumpResult, err error) {
	err = i.timed("dump", func() error { res, err = i.a.Dump(ctx, ref, req); return err })
	if err == nil {
		i.m.CRIU("dump", res.CRIUTime)
		i.m.Written(res.Bytes)
	}
	return res, err
}

func (i instrumented) Unlock(ctx context.Context, ref agentapi.NodeRef) error {
	return i.timed("unlock", func() error { return i.a.Unlock(ctx, ref) })
}

func (i instrumented) Thaw(ctx context.Context, ref agentapi.NodeRef) error {
	return i.timed("thaw", func() error { return i.a.Thaw(ctx, ref) })
}

func (i instrumented) RestoreFiles(ctx context.Context, job string, n agentapi.NodeSpec, req agentapi.RestoreRequest) (res agentapi.RestoreFilesResult, err error) {
	err = i.timed("files", func() error { res, err = i.a.RestoreFiles(ctx, job, n, req); return err })
	return res, err
}

func (i instrumented) Restore(ctx context.Context, job string, n agentapi.NodeSpec, req agentapi.RestoreRequest) error {
	return i.timed("restore", func() error { return i.a.Restore(ctx, job, n, req) })
}

func (i instrumented) Destroy(ctx context.Context, ref agentapi.NodeRef) error {
	return i.timed("destroy", func() error { return i.a.Destroy(ctx, ref) })
}

func (i instrumented) Status(ctx context.Context, ref agentapi.NodeRef) (agentapi.NodeStatus, error) {
	return i.a.Status(ctx, ref)
}

func (i instrumented) Pages(ctx context.Context, ref agentapi.NodeRef) error {
	return i.timed("pages", func() error { return i.a.Pages(ctx, ref) })
}

func (i instrumented) Sync(ctx context.Context, ref agentapi.NodeRef, ckpt string) error {
	return i.timed("sync", func() error { return i.a.Sync(ctx, ref, ckpt) })
}
