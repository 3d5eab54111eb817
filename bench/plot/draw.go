package main

import (
	"fmt"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// draw saves p as <base>-<name>.png and returns the file's path, or "" when
// no series of p has a point (no file is written).
func draw(p Plot, base string) (string, error) {
	pl := plot.New()
	pl.Title.Text, pl.X.Label.Text, pl.Y.Label.Text = p.Title, p.X, p.Y
	if p.LogX {
		pl.X.Scale = plot.LogScale{}
		pl.X.Tick.Marker = plot.LogTicks{Prec: -1}
	}
	var args []any
	for _, s := range p.Series {
		if len(s.Points) == 0 {
			continue
		}
		pts := make(plotter.XYs, len(s.Points))
		for i, xy := range s.Points {
			pts[i] = plotter.XY{X: xy[0], Y: xy[1]}
		}
		args = append(args, s.Name, pts)
	}
	if len(args) == 0 {
		return "", nil
	}
	if err := plotutil.AddLinePoints(pl, args...); err != nil {
		return "", err
	}
	pl.Legend.Top, pl.Legend.Left = true, true
	pl.Add(plotter.NewGrid())
	f := fmt.Sprintf("%s-%s.png", base, p.Name)
	if err := pl.Save(7*vg.Inch, 4.5*vg.Inch, f); err != nil {
		return "", err
	}
	return f, nil
}
