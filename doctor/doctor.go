// Package doctor checks whether a host can run torpor and says what to do
// about everything that is missing.
package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Status is the outcome of one check.
type Status string

const (
	OK   Status = "ok"
	Warn Status = "warn"
	Fail Status = "fail"
)

// Result is one line of the report.
type Result struct {
	Name     string `json:"name"`
	Status   Status `json:"status"`
	Detail   string `json:"detail"`
	Remedy   string `json:"remedy,omitempty"`
	Required bool   `json:"required"`
}

// Check is one probe of the host.
type Check struct {
	Name string
	// Required checks make the report fail; the others can only warn.
	Required bool
	Run      func(ctx context.Context, env *Env) Result
}

// Report is the outcome of all checks.
type Report struct {
	Results []Result `json:"results"`
}

// Failed reports whether a required check failed.
func (r Report) Failed() bool {
	for _, res := range r.Results {
		if res.Status == Fail && res.Required {
			return true
		}
	}
	return false
}

// Run executes the checks in order, each with its own deadline.
func Run(ctx context.Context, env *Env, checks []Check) Report {
	var rep Report
	for _, c := range checks {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		res := c.Run(cctx, env)
		cancel()
		res.Name = c.Name
		res.Required = c.Required
		if !c.Required && res.Status == Fail {
			res.Status = Warn
		}
		rep.Results = append(rep.Results, res)
	}
	return rep
}

// WriteText prints one line per check, with the remedy under anything not ok.
func (r Report) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, res := range r.Results {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", res.Status, res.Name, res.Detail)
		if res.Status != OK && res.Remedy != "" {
			fmt.Fprintf(tw, "\t\t→ %s\n", res.Remedy)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var nok, nwarn, nfail int
	for _, res := range r.Results {
		switch res.Status {
		case OK:
			nok++
		case Warn:
			nwarn++
		case Fail:
			nfail++
		}
	}
	verdict := "this host can run torpor"
	if r.Failed() {
		verdict = "this host cannot run torpor yet"
	}
	_, err := fmt.Fprintf(w, "%d ok, %d warn, %d fail: %s\n", nok, nwarn, nfail, verdict)
	return err
}

// WriteJSON prints the report as one JSON document.
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func ok(format string, a ...any) Result { return Result{Status: OK, Detail: fmt.Sprintf(format, a...)} }

func warn(remedy, format string, a ...any) Result {
	return Result{Status: Warn, Detail: fmt.Sprintf(format, a...), Remedy: remedy}
}

func fail(remedy, format string, a ...any) Result {
	return Result{Status: Fail, Detail: fmt.Sprintf(format, a...), Remedy: remedy}
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
