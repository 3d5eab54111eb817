package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/torpor-hpc/torpor/catalog"
	"github.com/torpor-hpc/torpor/coordinator"
)

// B7: image compression (torpor run --compress). One job-node runs
// `memhog -fill field` (a stencil's float64 grids, bench/harness/memhog:
// compressible, neither zeros nor random); for every codec and size it
// takes leave-running checkpoints, then suspends and restarts it on its
// host, and reads each checkpoint's node manifest for what was stored and
// what it expands to.

// b7Codecs are the codecs B7 compares, "none" first (the reference).
var b7Codecs = []string{catalog.CodecNone, catalog.CodecLZ4, catalog.CodecZstd}

// CompressPoint is one codec at one memory size.
type CompressPoint struct {
	Codec string `json:"codec"`
	MiB   int    `json:"mib"`
	// StoredBytes and RawBytes: the job-node's images as stored, and as CRIU
	// wrote them (compressed files counted at their raw size); medians.
	StoredBytes int64  `json:"stored_bytes"`
	RawBytes    int64  `json:"raw_bytes"`
	Ckpt        Stat   `json:"checkpoint"` // leave-running checkpoint wall
	Dump        Stat   `json:"dump"`       // its dump phase (CRIU + compression + manifest)
	CRIU        Stat   `json:"criu"`       // inside CRIU
	Restart     Stat   `json:"restart"`    // Restart wall after a suspend
	Restore     Stat   `json:"restore"`    // its restore phase (expansion + CRIU)
	Suspend     Stat   `json:"suspend"`    // the suspend before each restart
	Err         string `json:"error,omitempty"`
}

// runCompress measures every codec at mib, on host h1 of e.
func runCompress(ctx context.Context, e *Env, mib, reps, restartReps int, logf func(string, ...any)) []CompressPoint {
	var out []CompressPoint
	for _, codec := range b7Codecs {
		p := CompressPoint{Codec: codec, MiB: mib}
		if err := p.run(ctx, e, reps, restartReps); err != nil {
			p.Err = err.Error()
			logf("B7 %s %d MiB failed: %s", codec, mib, p.Err)
		} else {
			logf("B7 %s %d MiB: %.1f MiB stored of %.1f (ratio %.2f), checkpoint %.0f ms, restart %.0f ms", codec, mib,
				float64(p.StoredBytes)/(1<<20), float64(p.RawBytes)/(1<<20), p.Ratio(), p.Ckpt.Median, p.Restart.Median)
		}
		out = append(out, p)
	}
	return out
}

// Ratio is raw / stored.
func (p CompressPoint) Ratio() float64 { return Ratio(float64(p.RawBytes), float64(p.StoredBytes)) }

func (p *CompressPoint) run(ctx context.Context, e *Env, reps, restartReps int) error {
	id := fmt.Sprintf("b7-%s-%dm", p.Codec, p.MiB)
	w := Workload{MiB: p.MiB, Fill: "field"}
	j := &Job{e: e, ID: id, Spec: coordinator.JobSpec{ID: id, Compress: p.Codec}, W: w}
	n, f, err := jobNode(e.Dir, id, 0, 1, "h1", w, e.Bins)
	if err != nil {
		return err
	}
	j.Spec.Nodes, j.Files = append(j.Spec.Nodes, n), append(j.Files, f)
	if _, err := e.startJob(ctx, j); err != nil {
		return err
	}
	defer j.Stop(ctx)
	var ckpt, dump, criu, restart, restore, suspend []time.Duration
	var stored, raw []float64
	record := func(h string) error {
		s, r, err := nodeBytes(e.CkptDir(), h, "n0")
		stored, raw = append(stored, float64(s)), append(raw, float64(r))
		return err
	}
	for i := 0; i < reps; i++ {
		s, h, err := j.Checkpoint(ctx, false)
		if err != nil {
			return fmt.Errorf("checkpoint: %w", err)
		}
		ckpt, dump, criu = append(ckpt, s.Wall), append(dump, s.Phases["dump"]), append(criu, s.CRIUSum)
		if err := record(h); err != nil {
			return err
		}
	}
	for i := 0; i < restartReps; i++ {
		cs, rs, err := j.SuspendRestart(ctx)
		if err != nil {
			return err
		}
		suspend, restart, restore = append(suspend, cs.Wall), append(restart, rs.Wall), append(restore, rs.Phases["restore"])
	}
	p.StoredBytes, p.RawBytes = int64(NewStat(stored).Median), int64(NewStat(raw).Median)
	p.Ckpt, p.Dump, p.CRIU = DurStat(ckpt), DurStat(dump), DurStat(criu)
	p.Restart, p.Restore, p.Suspend = DurStat(restart), DurStat(restore), DurStat(suspend)
	return nil
}

// nodeBytes reads a checkpoint's node manifest: the bytes stored, and the
// bytes CRIU wrote (a compressed file at its raw size).
func nodeBytes(root, handle, node string) (stored, raw int64, err error) {
	job, seq, _ := strings.Cut(handle, "/")
	data, err := os.ReadFile(filepath.Join(root, job, seq, "nodes", node, catalog.NodeManifestName))
	if err != nil {
		return 0, 0, err
	}
	var m catalog.NodeManifest
	if err := json.Unmarshal(data, &m); err != nil {
		return 0, 0, fmt.Errorf("%s: %w", handle, err)
	}
	for _, f := range m.Files {
		stored += f.Size
		if f.Codec != "" {
			raw += f.RawSize
		} else {
			raw += f.Size
		}
	}
	return stored, raw, nil
}

// compressSection writes B7.
func compressSection(w func(string, ...any), pts []CompressPoint) {
	w("## B7 image compression (`--compress`)\n\n")
	w("One job-node runs `memhog -fill field` (bench/harness/memhog): two float64 grids of a 2D heat equation, three Gaussian hot spots over a 293.15 K ambient, a Jacobi sweep of 1 MiB of rows every 10 ms; about half the cells hold exactly the ambient value, the rest smooth doubles. Compressible, but neither zeros (memhog's default, one byte per page) nor random (ring's messages, which do not compress). ")
	w("Per codec and size: leave-running checkpoints, then suspend + restart on the same host. The shim compresses the memory images (pages-*.img) while CRIU writes them, and a restart expands them into a scratch directory, verifying as it reads, before CRIU starts. **stored** and **raw** are the job-node's images as stored and as CRIU wrote them (from the node manifest); MiB/s is raw MiB over the checkpoint's or the restart's wall time.\n\n")
	w("| codec | MiB | stored MiB | raw MiB | ratio | checkpoint ms | dump ms (Σ CRIU) | ckpt MiB/s | restart ms | restore ms | restart MiB/s |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, p := range pts {
		if p.Err != "" {
			w("| %s | %d | failed: %s ||||||||\n", p.Codec, p.MiB, firstLine(p.Err))
			continue
		}
		rawMiB := float64(p.RawBytes) / (1 << 20)
		w("| %s | %d | %s | %s | **%s** | %s | %s (%s) | %s | %s | %s | %s |\n", p.Codec, p.MiB, mib(p.StoredBytes), mib(p.RawBytes), f2(p.Ratio()),
			med(p.Ckpt), f0(p.Dump.Median), f0(p.CRIU.Median), f0(rawMiB/(p.Ckpt.Median/1000)),
			med(p.Restart), f0(p.Restore.Median), f0(rawMiB/(p.Restart.Median/1000)))
	}
	w("\nThe dump phase includes what CRIU's writes leave of the compression (it runs alongside them, on the same 2 cores) and the node manifest; the restore phase includes the expansion, which must finish before CRIU starts (CRIU reads a memory image with pread/preadv at offsets, so a pipe cannot feed it).\n\n")
}
