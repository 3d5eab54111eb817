package main

import "math"

// field is a 2D heat equation's state as a stencil code holds it: two
// float64 grids (cur, next) of rows × cols, swept by Jacobi steps.
type field struct {
	rows, cols int
	cur, next  []float64
	row        int // the next row a sweep updates
}

const (
	ambient   = 293.15 // K
	fieldCols = 2048
)

// newField fills mib MiB (two grids) with three Gaussian hot spots over the
// ambient temperature in cur, and next one Jacobi step of it. A spot's
// width scales with the grid, so the share of cells still at exactly the
// ambient value (about half) does not depend on the size.
func newField(mib int) *field {
	cells := max(mib<<20/8/2, 4*fieldCols)
	g := &field{cols: fieldCols, rows: cells / fieldCols}
	g.cur, g.next = make([]float64, g.rows*g.cols), make([]float64, g.rows*g.cols)
	sigma := math.Sqrt(float64(g.rows*g.cols)) / 32
	spots := [][3]float64{{0.25, 0.3, 80}, {0.6, 0.7, 120}, {0.85, 0.2, 60}} // row, column (fractions), K above ambient
	for i := range g.cur {
		g.cur[i] = ambient
	}
	// exp(-(dr²+dc²)/2σ²) = exp(-dr²/2σ²)·exp(-dc²/2σ²): one row of factors
	// per spot, and a product per cell.
	for _, s := range spots {
		colf := make([]float64, g.cols)
		for c := range colf {
			d := (float64(c) - s[1]*float64(g.cols)) / sigma
			colf[c] = math.Exp(-d * d / 2)
		}
		for r := 0; r < g.rows; r++ {
			d := (float64(r) - s[0]*float64(g.rows)) / sigma
			rf := s[2] * math.Exp(-d*d/2)
			if rf < 1e-300 {
				continue
			}
			row := g.cur[r*g.cols : (r+1)*g.cols]
			for c, cf := range colf {
				if v := rf * cf; v > 0 {
					row[c] += v
				}
			}
		}
	}
	copy(g.next, g.cur)
	g.row = 1
	g.sweep((g.rows - 2) * g.cols * 8) // next: one step on
	return g
}

// sweep computes the next step of bytes' worth of interior rows from cur
// into next, and swaps the grids when it has done them all. Over a uniform
// region ((a+b)+(c+d))/4 gives the value back exactly: the ambient stays
// the ambient, bit for bit.
func (g *field) sweep(bytes int) {
	n := max(bytes/8/g.cols, 1)
	for k := 0; k < n; k++ {
		if g.row >= g.rows-1 {
			g.cur, g.next = g.next, g.cur
			g.row = 1
		}
		r := g.row
		up, mid, down := g.cur[(r-1)*g.cols:r*g.cols], g.cur[r*g.cols:(r+1)*g.cols], g.cur[(r+1)*g.cols:(r+2)*g.cols]
		out := g.next[r*g.cols : (r+1)*g.cols]
		for c := 1; c < g.cols-1; c++ {
			out[c] = ((up[c] + down[c]) + (mid[c-1] + mid[c+1])) * 0.25
		}
		g.row++
	}
}
