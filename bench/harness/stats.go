package harness

import (
	"math"
	"sort"
	"time"
)

// Stat summarises repeated measurements, in milliseconds.
type Stat struct {
	N       int       `json:"n"`
	Median  float64   `json:"median_ms"`
	Min     float64   `json:"min_ms"`
	Max     float64   `json:"max_ms"`
	P25     float64   `json:"p25_ms"`
	P75     float64   `json:"p75_ms"`
	Samples []float64 `json:"samples_ms"`
}

// NewStat summarises samples given in milliseconds.
func NewStat(samples []float64) Stat {
	s := Stat{N: len(samples), Samples: append([]float64(nil), samples...)}
	if len(samples) == 0 {
		return s
	}
	sorted := append([]float64(nil), samples...)
	sort.Float64s(sorted)
	s.Min, s.Max = sorted[0], sorted[len(sorted)-1]
	s.Median = quantile(sorted, 0.5)
	s.P25, s.P75 = quantile(sorted, 0.25), quantile(sorted, 0.75)
	return s
}

// DurStat summarises durations.
func DurStat(ds []time.Duration) Stat {
	ms := make([]float64, len(ds))
	for i, d := range ds {
		ms[i] = Ms(d)
	}
	return NewStat(ms)
}

// quantile interpolates linearly in sorted values.
func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 1 {
		return sorted[0]
	}
	pos := q * float64(len(sorted)-1)
	lo := int(math.Floor(pos))
	hi := int(math.Ceil(pos))
	return sorted[lo] + (sorted[hi]-sorted[lo])*(pos-float64(lo))
}

// Ms is d in milliseconds.
func Ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Ratio is a/b, or NaN when b is not positive (shown as "n/a").
func Ratio(a, b float64) float64 {
	if b <= 0 || math.IsNaN(a) || math.IsNaN(b) {
		return math.NaN()
	}
	return a / b
}

// Spread is (max-min)/median, a rough relative spread.
func (s Stat) Spread() float64 { return Ratio(s.Max-s.Min, s.Median) }

// phaseDurations gathers, phase by phase, the durations of a series of samples.
type phaseDurations map[string][]time.Duration

// add appends the duration of each phase of one sample.
func (d phaseDurations) add(phases map[string]time.Duration) {
	for k, v := range phases {
		d[k] = append(d[k], v)
	}
}

// statsInto sets dst[phase] to the Stat of each phase's durations.
func (d phaseDurations) statsInto(dst map[string]Stat) {
	for k, v := range d {
		dst[k] = DurStat(v)
	}
}
