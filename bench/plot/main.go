// Command torpor-plot draws the PNG plots of a torpor-bench run. It is its own
// Go module so that gonum.org/v1/plot and what it pulls in (fonts, PDF,
// LaTeX, image codecs) stay out of torpor's module graph.
//
//	torpor-plot -base DIR/<date>-<host> < plots.json
//
// It reads a JSON array of plots from stdin (see Plot; torpor-bench builds it
// in bench/harness/plot.go), draws each plot that has points as
// <base>-<name>.png and prints the path of every file it wrote, one a line.
// torpor-bench runs it as bin/torpor-plot (flag -plot).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
)

// Plot is one line plot. The JSON is the contract with bench/harness/plot.go
// (harness.Plot): keep the two in step.
type Plot struct {
	Name   string   `json:"name"` // the file is <base>-<name>.png
	Title  string   `json:"title"`
	X      string   `json:"x"` // axis labels
	Y      string   `json:"y"`
	LogX   bool     `json:"log_x"`
	Series []Series `json:"series"` // in legend order; empty series are left out
}

// Series is one line of a plot.
type Series struct {
	Name   string       `json:"name"`
	Points [][2]float64 `json:"points"` // (x, y)
}

func main() {
	base := flag.String("base", "", "path prefix of the PNGs: <base>-<name>.png (required)")
	flag.Parse()
	if *base == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: torpor-plot -base DIR/<date>-<host> < plots.json")
		os.Exit(2)
	}
	if err := run(os.Stdin, os.Stdout, *base); err != nil {
		fmt.Fprintln(os.Stderr, "torpor-plot:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer, base string) error {
	var plots []Plot
	if err := json.NewDecoder(in).Decode(&plots); err != nil {
		return fmt.Errorf("read plots: %w", err)
	}
	for _, p := range plots {
		f, err := draw(p, base)
		if err != nil {
			return fmt.Errorf("%s: %w", p.Name, err)
		}
		if f != "" {
			fmt.Fprintln(out, f)
		}
	}
	return nil
}
