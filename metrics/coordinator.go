package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Coordinator is the coordinator's metrics. A nil *Coordinator records
// nothing: every method may be called on it.
type Coordinator struct {
	Registry *prometheus.Registry

	ops       *prometheus.CounterVec   // per operation: checkpoint, restart, migration
	phases    *prometheus.HistogramVec // operation, phase
	written   *prometheus.CounterVec   // operation
	read      *prometheus.CounterVec   // operation
	criu      *prometheus.HistogramVec // operation
	frozen    *prometheus.HistogramVec // operation
	fences    prometheus.Counter
	fenceTime prometheus.Histogram
	events    *prometheus.CounterVec // type
}

// Sources are what the coordinator's gauges read at each scrape.
type Sources struct {
	// Jobs counts the jobs in each state; every state is reported, zeros too.
	Jobs func() map[string]int
	// States are every job state, so that a state with no job reads 0.
	States []string
	// Shims returns how many shims are registered and how many of them
	// answered recently.
	Shims func() (registered, reachable int)
}

// NewCoordinator creates the coordinator's metrics in a registry of their own.
func NewCoordinator(src Sources) *Coordinator {
	m := &Coordinator{
		Registry: newRegistry(),
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "torpor_operations_total",
			Help: "Checkpoints, restarts and migrations by result (ok, failed, refused) and reason (none; the phase that failed; what refused it).",
		}, []string{"operation", "result", "reason"}),
		phases: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "torpor_phase_duration_seconds",
			Help:    "How long each protocol phase took, across every job-node of the job (a barrier), per operation.",
			Buckets: DurationBuckets,
		}, []string{"operation", "phase"}),
		written: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "torpor_images_written_bytes_total",
			Help: "Bytes of images (CRIU images, output and application files) the dumps of successful operations wrote.",
		}, []string{"operation"}),
		read: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "torpor_images_read_bytes_total",
			Help: "Bytes of images read: verified before a restart (phase verify) and restored (phase restore).",
		}, []string{"operation", "phase"}),
		criu: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "torpor_criu_dump_seconds",
			Help:    "Time one job-node's CRIU dump took, as its shim reports it.",
			Buckets: DurationBuckets,
		}, []string{"operation"}),
		frozen: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "torpor_frozen_seconds",
			Help:    "How long a job was frozen by one operation: from the start of freeze to the end of thaw (or, for a suspend, to the commit).",
			Buckets: DurationBuckets,
		}, []string{"operation"}),
		fences: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "torpor_fences_total",
			Help: "PMIx fences (modex and barriers) completed by the coordinator.",
		}),
		fenceTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "torpor_fence_duration_seconds",
			Help:    "Time from a fence's first contribution to its completion.",
			Buckets: DurationBuckets,
		}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "torpor_events_total",
			Help: "Events recorded in the coordinator's history (torpor events), by type.",
		}, []string{"type"}),
	}
	m.Registry.MustRegister(m.ops, m.phases, m.written, m.read, m.criu, m.frozen, m.fences, m.fenceTime, m.events,
		buildInfo("torpor_"), &jobsCollector{src: src})
	if src.Shims != nil {
		m.Registry.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "torpor_shims_registered",
				Help: "Hosts with a registered shim.",
			}, func() float64 { r, _ := src.Shims(); return float64(r) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "torpor_shims_reachable",
				Help: "Registered shims that registered again (every 5 s) within the last 15 s; shims in this process count always.",
			}, func() float64 { _, r := src.Shims(); return float64(r) }),
		)
	}
	return m
}

// Operation counts one checkpoint, restart or migration.
func (m *Coordinator) Operation(op, result, reason string) {
	if m == nil {
		return
	}
	m.ops.WithLabelValues(op, result, reason).Inc()
}

// Phases observes the duration of every phase an operation ran.
func (m *Coordinator) Phases(op string, d map[string]time.Duration) {
	if m == nil {
		return
	}
	for p, v := range d {
		m.phases.WithLabelValues(op, p).Observe(v.Seconds())
	}
}

// Written adds the bytes an operation's dumps wrote.
func (m *Coordinator) Written(op string, n int64) {
	if m == nil || n <= 0 {
		return
	}
	m.written.WithLabelValues(op).Add(float64(n))
}

// Read adds the bytes a phase of an operation read.
func (m *Coordinator) Read(op, phase string, n int64) {
	if m == nil || n <= 0 {
		return
	}
	m.read.WithLabelValues(op, phase).Add(float64(n))
}

// CRIUDump observes one job-node's CRIU dump time.
func (m *Coordinator) CRIUDump(op string, d time.Duration) {
	if m == nil || d <= 0 {
		return
	}
	m.criu.WithLabelValues(op).Observe(d.Seconds())
}

// Frozen observes how long an operation kept its job frozen.
func (m *Coordinator) Frozen(op string, d time.Duration) {
	if m == nil || d <= 0 {
		return
	}
	m.frozen.WithLabelValues(op).Observe(d.Seconds())
}

// Fence counts a completed fence that took d.
func (m *Coordinator) Fence(d time.Duration) {
	if m == nil {
		return
	}
	m.fences.Inc()
	m.fenceTime.Observe(d.Seconds())
}

// Event counts an event of the history.
func (m *Coordinator) Event(typ string) {
	if m == nil {
		return
	}
	m.events.WithLabelValues(typ).Inc()
}

// jobsCollector reports torpor_jobs{state} at each scrape.
type jobsCollector struct{ src Sources }

var jobsDesc = prometheus.NewDesc("torpor_jobs", "Jobs the coordinator knows, by state.", []string{"state"}, nil)

func (c *jobsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- jobsDesc }

func (c *jobsCollector) Collect(ch chan<- prometheus.Metric) {
	if c.src.Jobs == nil {
		return
	}
	n := c.src.Jobs()
	for _, s := range c.src.States {
		ch <- prometheus.MustNewConstMetric(jobsDesc, prometheus.GaugeValue, float64(n[s]), s)
	}
}
