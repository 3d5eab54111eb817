package harness

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// Plot is one line plot of a run: what bench/plot (the torpor-plot command,
// its own Go module so that its plotting library stays out of torpor's module
// graph) draws as <base>-<Name>.png. The JSON is the contract with
// bench/plot/main.go: keep the two in step.
type Plot struct {
	Name   string   `json:"name"`
	Title  string   `json:"title"`
	X      string   `json:"x"` // axis labels
	Y      string   `json:"y"`
	LogX   bool     `json:"log_x"`
	Series []Series `json:"series"` // in legend order; empty series are left out
}

// Series is one line of a plot: (x, y) points.
type Series struct {
	Name   string       `json:"name"`
	Points [][2]float64 `json:"points"`
}

func (s *Series) add(x, y float64) { s.Points = append(s.Points, [2]float64{x, y}) }

// PlotData is the plots of a run, in the order they are listed.
func PlotData(r *Result) []Plot {
	// B2/B3 against memory, one job-node.
	tor, seq, wr, rst, rraw := Series{Name: "torpor checkpoint"}, Series{Name: "raw criu dump"}, Series{Name: "plain write"},
		Series{Name: "torpor restart"}, Series{Name: "raw criu restore"}
	nTor, nSeq, nRst := Series{Name: "torpor checkpoint"}, Series{Name: "raw criu dump (seq)"}, Series{Name: "torpor restart"}
	for _, p := range r.Ckpt {
		if p.Err != "" {
			continue
		}
		x := float64(p.MiB)
		if p.Nodes == 1 {
			tor.add(x, p.TorporWall.Median)
			seq.add(x, p.RawSeqWall.Median)
			wr.add(x, p.WriteWall.Median)
			rst.add(x, p.RestartWall.Median)
			rraw.add(x, p.RawRestoreWall.Median)
		}
		if p.MiB == r.Plan.NodesMiB {
			n := float64(p.Nodes)
			nTor.add(n, p.TorporWall.Median)
			nSeq.add(n, p.RawSeqWall.Median)
			nRst.add(n, p.RestartWall.Median)
		}
	}
	migSC, migPC, migLast := Series{Name: "downtime, stop-copy"}, Series{Name: "downtime, post-copy"}, Series{Name: "last page, post-copy"}
	for _, p := range r.Migrate {
		if p.Downtime.N == 0 {
			continue
		}
		switch p.Mode {
		case "post-copy":
			migPC.add(float64(p.MiB), p.Downtime.Median)
			if p.LastPage.N > 0 {
				migLast.add(float64(p.MiB), p.LastPage.Median)
			}
		default: // rows from before B4 had modes were stop-copy
			migSC.add(float64(p.MiB), p.Downtime.Median)
		}
	}
	real, fake := Series{Name: "real sandboxes"}, Series{Name: "fake CRIU"}
	for _, p := range r.Coord {
		if p.Err != "" || p.Tmpfs || p.FreshExt4 {
			continue
		}
		if p.Fake {
			fake.add(float64(p.Nodes), p.Overhead.Median)
		} else {
			real.add(float64(p.Nodes), p.Overhead.Median)
		}
	}
	return []Plot{
		{Name: "b2-b3-memory", Title: "B2/B3: one job-node, latency vs memory", X: "MiB per job-node", Y: "ms (median)", LogX: true,
			Series: []Series{tor, seq, wr, rst, rraw}},
		{Name: "b2-b3-nodes", Title: fmt.Sprintf("B2/B3: %d MiB per job-node, latency vs job-nodes", r.Plan.NodesMiB), X: "job-nodes", Y: "ms (median)",
			Series: []Series{nTor, nSeq, nRst}},
		{Name: "b4-migration", Title: "B4: migration downtime vs memory of the moved job-node", X: "MiB", Y: "ms (median)", LogX: true,
			Series: []Series{migSC, migPC, migLast}},
		{Name: "b5-coordination", Title: "B5: coordination overhead (checkpoint − Σ CRIU) vs job-nodes", X: "job-nodes", Y: "ms (median)", LogX: true,
			Series: []Series{real, fake}},
	}
}

// Plots draws the PNGs of a run next to base (base-<name>.png) with plotter,
// the torpor-plot binary, and returns the files it wrote (also when it fails
// part way).
func Plots(r *Result, base, plotter string) ([]string, error) {
	in, err := json.Marshal(PlotData(r))
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(plotter); err != nil {
		return nil, fmt.Errorf("no plotter: %w (build it: go -C bench/plot build -o ../../bin/torpor-plot .)", err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(plotter, "-base", base)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(in), &stdout, &stderr
	err = cmd.Run()
	var files []string
	for _, l := range strings.Split(stdout.String(), "\n") {
		if l != "" {
			files = append(files, l)
		}
	}
	if err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			err = errors.New(msg)
		}
		return files, fmt.Errorf("%s: %w", plotter, err)
	}
	return files, nil
}
