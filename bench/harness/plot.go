package harness

import (
	"fmt"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// Plots draws the PNGs of a run next to base (base-<name>.png).
func Plots(r *Result, base string) ([]string, error) {
	var files []string
	type series struct {
		name string
		pts  plotter.XYs
	}
	draw := func(name, title, x, y string, logX bool, ss []series) error {
		p := plot.New()
		p.Title.Text, p.X.Label.Text, p.Y.Label.Text = title, x, y
		if logX {
			p.X.Scale = plot.LogScale{}
			p.X.Tick.Marker = plot.LogTicks{Prec: -1}
		}
		var args []any
		for _, s := range ss {
			if len(s.pts) > 0 {
				args = append(args, s.name, s.pts)
			}
		}
		if len(args) == 0 {
			return nil
		}
		if err := plotutil.AddLinePoints(p, args...); err != nil {
			return err
		}
		p.Legend.Top, p.Legend.Left = true, true
		p.Add(plotter.NewGrid())
		f := fmt.Sprintf("%s-%s.png", base, name)
		if err := p.Save(7*vg.Inch, 4.5*vg.Inch, f); err != nil {
			return err
		}
		files = append(files, f)
		return nil
	}

	// B2/B3 against memory, one job-node.
	var tor, seq, wr, rst, rraw series
	tor.name, seq.name, wr.name, rst.name, rraw.name = "torpor checkpoint", "raw criu dump", "plain write", "torpor restart", "raw criu restore"
	var nTor, nSeq, nRst series
	nTor.name, nSeq.name, nRst.name = "torpor checkpoint", "raw criu dump (seq)", "torpor restart"
	for _, p := range r.Ckpt {
		if p.Err != "" {
			continue
		}
		x := float64(p.MiB)
		if p.Nodes == 1 {
			tor.pts = append(tor.pts, plotter.XY{X: x, Y: p.TorporWall.Median})
			seq.pts = append(seq.pts, plotter.XY{X: x, Y: p.RawSeqWall.Median})
			wr.pts = append(wr.pts, plotter.XY{X: x, Y: p.WriteWall.Median})
			rst.pts = append(rst.pts, plotter.XY{X: x, Y: p.RestartWall.Median})
			rraw.pts = append(rraw.pts, plotter.XY{X: x, Y: p.RawRestoreWall.Median})
		}
		if p.MiB == r.Plan.NodesMiB {
			n := float64(p.Nodes)
			nTor.pts = append(nTor.pts, plotter.XY{X: n, Y: p.TorporWall.Median})
			nSeq.pts = append(nSeq.pts, plotter.XY{X: n, Y: p.RawSeqWall.Median})
			nRst.pts = append(nRst.pts, plotter.XY{X: n, Y: p.RestartWall.Median})
		}
	}
	if err := draw("b2-b3-memory", "B2/B3: one job-node, latency vs memory", "MiB per job-node", "ms (median)", true,
		[]series{tor, seq, wr, rst, rraw}); err != nil {
		return files, err
	}
	if err := draw("b2-b3-nodes", fmt.Sprintf("B2/B3: %d MiB per job-node, latency vs job-nodes", r.Plan.NodesMiB), "job-nodes", "ms (median)", false,
		[]series{nTor, nSeq, nRst}); err != nil {
		return files, err
	}
	var mig series
	mig.name = "migration downtime"
	for _, p := range r.Migrate {
		if p.Err == "" {
			mig.pts = append(mig.pts, plotter.XY{X: float64(p.MiB), Y: p.Downtime.Median})
		}
	}
	if err := draw("b4-migration", "B4: migration downtime vs memory of the moved job-node", "MiB", "ms (median)", true, []series{mig}); err != nil {
		return files, err
	}
	var real, fake series
	real.name, fake.name = "real sandboxes", "fake CRIU"
	for _, p := range r.Coord {
		if p.Err != "" {
			continue
		}
		pt := plotter.XY{X: float64(p.Nodes), Y: p.Overhead.Median}
		if p.Fake {
			fake.pts = append(fake.pts, pt)
		} else {
			real.pts = append(real.pts, pt)
		}
	}
	if err := draw("b5-coordination", "B5: coordination overhead (checkpoint − Σ CRIU) vs job-nodes", "job-nodes", "ms (median)", true,
		[]series{real, fake}); err != nil {
		return files, err
	}
	return files, nil
}
