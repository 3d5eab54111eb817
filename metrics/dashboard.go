package metrics

import (
	"encoding/json"
	"regexp"
	"sort"
	"strings"
)

var metricName = regexp.MustCompile(`\btorpor_[a-z0-9_]+\b`)

// DashboardMetrics returns the metric families a Grafana dashboard's
// queries (every "expr", at any depth) name, sorted: a histogram's
// _bucket, _sum and _count series count as their family.
func DashboardMetrics(dashboard []byte) []string {
	var v any
	if err := json.Unmarshal(dashboard, &v); err != nil {
		return nil
	}
	seen := map[string]bool{}
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				if s, ok := e.(string); ok && k == "expr" {
					for _, n := range metricName.FindAllString(s, -1) {
						for _, suf := range []string{"_bucket", "_sum", "_count"} {
							if f, ok := strings.CutSuffix(n, suf); ok && strings.HasSuffix(f, "_seconds") {
								n = f
							}
						}
						seen[n] = true
					}
					continue
				}
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(v)
	out := make([]string, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
