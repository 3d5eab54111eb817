package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/catalog"
)

// TestRestoreCompressed: a dump with Compress stores every memory image
// compressed (and no raw one), in a format 3 node manifest; a restore
// refuses a changed compressed image before CRIU starts, and restores the
// intact images; the scratch directory they were expanded into is gone
// after either.
func TestRestoreCompressed(t *testing.T) {
	h := newOneHost(t)
	ctx := context.Background()
	a := h.agent(nil)
	for _, codec := range []string{catalog.CodecLZ4, catalog.CodecZstd} {
		t.Run(codec, func(t *testing.T) {
			ref := agentapi.NodeRef{Job: "job", Node: "n0"}
			spec := tickerSpec("n0", 1, filepath.Join(t.TempDir(), "stop"))
			mustOK(t, "start", a.Start(ctx, "job", spec))
			waitTicks(t, a, "job", "n0", 2)
			mustOK(t, "freeze", a.Freeze(ctx, ref))
			mustOK(t, "lock", a.Lock(ctx, ref))
			img := filepath.Join(t.TempDir(), ref.Node)
			res, err := a.Dump(ctx, ref, agentapi.DumpRequest{Dir: img, LeaveRunning: true, Checkpoint: "job/1", Compress: codec})
			mustOK(t, "dump", err)
			mustOK(t, "destroy", a.Destroy(ctx, ref))

			raw, _ := filepath.Glob(filepath.Join(img, "pages-*.img"))
			comp, _ := filepath.Glob(filepath.Join(img, "pages-*.img"+catalog.CodecExt(codec)))
			if len(raw) != 0 || len(comp) == 0 {
				t.Fatalf("after a %s dump: raw pages %v, compressed %v", codec, raw, comp)
			}
			data, err := os.ReadFile(filepath.Join(img, catalog.NodeManifestName))
			mustOK(t, "read node manifest", err)
			if !strings.Contains(string(data), `"format": 3`) || !strings.Contains(string(data), `"codec": "`+codec+`"`) {
				t.Fatalf("node manifest:\n%s", data)
			}
			sum := sha256.Sum256(data)
			digest := hex.EncodeToString(sum[:])
			t.Logf("%s: %d bytes stored in %d files", codec, res.Bytes, res.Files)

			bad := filepath.Join(t.TempDir(), "n0")
			copyDir(t, img, bad)
			flipByte(t, filepath.Join(bad, filepath.Base(comp[0])))
			var started bool
			a.criuStarted = func(op string, _ int) { started = started || op == "restore" }
			err = a.Restore(ctx, "job", spec, agentapi.RestoreRequest{Dir: bad, Checkpoint: "job/1", NodeManifestSHA256: digest})
			a.criuStarted = nil
			if !errors.Is(err, agentapi.ErrCorrupt) || !strings.Contains(err.Error(), "content differs") {
				t.Fatalf("restore of a changed %s image: %v; want agentapi.ErrCorrupt", codec, err)
			}
			if started {
				t.Fatal("CRIU started on a changed compressed image")
			}
			assertNodeGone(t, h, a, ref)
			assertNoScratch(t, a)

			mustOK(t, "restore", a.Restore(ctx, "job", spec, agentapi.RestoreRequest{Dir: img, Checkpoint: "job/1", NodeManifestSHA256: digest}))
			assertNoScratch(t, a)
			resumeThenDestroy(t, a, ref)
		})
	}
}

// assertNoScratch: no restore left its scratch directory.
func assertNoScratch(t *testing.T, a *Agent) {
	t.Helper()
	top, _ := a.scratchTop()
	err := filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != top {
			t.Errorf("left behind: %s", p)
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
}
