// Package metrics holds torpor's Prometheus metrics: the coordinator's
// (operations, phases, bytes, jobs, shims, fences) and each shim's (calls,
// CRIU, bytes, job-nodes), each daemon in a registry of its own, and the
// HTTP listener that serves them (`--metrics-listen`).
//
// Names follow Prometheus' conventions: a `torpor_` prefix (`torpor_shim_`
// for the shim's), base units (`_seconds`, `_bytes`), `_total` on
// counters. No label takes a job id, a job-node name or a checkpoint handle:
// every series is bounded by torpor's own vocabularies (operations, phases,
// results, reasons, states). docs/observability.md lists every metric.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Version is torpor's version as torpor_build_info reports it; cmd/torpor
// sets it from its own.
var Version = "dev"

// DurationBuckets are the histogram buckets of every `_seconds` metric:
// 1 ms to about 10 minutes (a phase's longest default deadline is 5 min).
var DurationBuckets = prometheus.ExponentialBuckets(0.001, 2.5, 15)

// Results of an operation.
const (
	ResultOK      = "ok"      // it did what was asked
	ResultFailed  = "failed"  // it ran and failed (rolled back, or the job failed)
	ResultRefused = "refused" // refused before anything was touched
)

// ReasonNone is the reason of an operation that succeeded.
const ReasonNone = "none"

func buildInfo(prefix string) prometheus.Collector {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: prefix + "build_info",
		Help: "Always 1; the labels say which torpor and Go built this daemon.",
	}, []string{"version", "goversion"})
	g.WithLabelValues(Version, runtime.Version()).Set(1)
	return g
}

func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Serve serves reg's metrics over HTTP at addr (path /metrics) until ctx
// ends, and returns the address it listens on (addr may end in ":0").
func Serve(ctx context.Context, addr string, reg prometheus.Gatherer, log *slog.Logger) (net.Addr, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen for metrics on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slogErrorLog{log}}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) && log != nil {
			log.Error("metrics server", "err", err)
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if log != nil {
		log.Info("serving metrics", "metrics", "http://"+lis.Addr().String()+"/metrics")
	}
	return lis.Addr(), nil
}

type slogErrorLog struct{ log *slog.Logger }

func (l slogErrorLog) Println(v ...any) {
	if l.log != nil {
		l.log.Error("metrics", "err", fmt.Sprint(v...))
	}
}
