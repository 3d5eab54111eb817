package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/catalog"
	"github.com/torpor-hpc/torpor/shim/criu"
)

// TestRestoreVerifiesImages: a dump's node manifest, whose memory images were
// hashed while CRIU wrote them, matches the images read again whole; a
// restore given the node manifest's digest refuses images that differ from
// it — a changed core image before CRIU starts, a changed memory image at
// CRIU's post-restore notification, before any restored task ran — and
// leaves nothing of the job-node; the intact images restore and run.
func TestRestoreVerifiesImages(t *testing.T) {
	h := newOneHost(t)
	ctx := context.Background()
	a := h.agent(nil)
	ref, spec, img := dumpedTicker(t, a)
	if m := regexp.MustCompile(`hashed_streaming=(\d+)`).FindStringSubmatch(h.logs.String()); m == nil || m[1] == "0" {
		t.Fatalf("the dump hashed no image while CRIU wrote it (%v)", m)
	}
	data, err := os.ReadFile(filepath.Join(img, catalog.NodeManifestName))
	mustOK(t, "read node manifest", err)
	sum := sha256.Sum256(data)
	digest := hex.EncodeToString(sum[:])
	imgs, err := catalog.OpenNodeImages(img, digest)
	mustOK(t, "open images", err)
	mustOK(t, "the images read again whole match the manifest written while they were", imgs.Verify(ctx, func(string) bool { return true }))
	imgs.Close()
	pages, _ := filepath.Glob(filepath.Join(img, "pages-*.img"))
	cores, _ := filepath.Glob(filepath.Join(img, "core-*.img"))
	if len(pages) == 0 || len(cores) == 0 {
		t.Fatalf("no pages or core images in %s", img)
	}

	for _, tc := range []struct {
		name   string
		file   string // flipped byte in the middle of it
		digest string
		want   string // in the error
		criu   bool   // CRIU ran (and stopped at post-restore)
	}{
		{"memory image changed", filepath.Base(pages[0]), digest, "memory fails verification", true},
		{"core image changed", filepath.Base(cores[0]), digest, "content differs", false},
		{"another node manifest", "", strings.Repeat("0", 64), "node manifest was modified", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "n0")
			copyDir(t, img, dir)
			if tc.file != "" {
				flipByte(t, filepath.Join(dir, tc.file))
			}
			var started, resumed bool
			a.criuStarted = func(op string, _ int) { started = started || op == "restore" }
			a.criuEvent = func(op string, ev criu.Event) { resumed = resumed || ev == "post-resume" }
			before := ticks(a.OutputPath("job", "n0"))
			err := a.Restore(ctx, "job", spec, agentapi.RestoreRequest{Dir: dir, Checkpoint: "job/1", NodeManifestSHA256: tc.digest})
			a.criuStarted, a.criuEvent = nil, nil
			if err == nil {
				t.Fatal("restore succeeded")
			}
			if !errors.Is(err, agentapi.ErrCorrupt) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("restore: %v; want agentapi.ErrCorrupt and %q", err, tc.want)
			}
			t.Logf("refused: %v", err)
			if started != tc.criu || resumed {
				t.Fatalf("CRIU started %v (want %v), resumed the tree %v", started, tc.criu, resumed)
			}
			assertNodeGone(t, h, a, ref)
			time.Sleep(300 * time.Millisecond)
			if n := ticks(a.OutputPath("job", "n0")); n > before {
				t.Fatalf("the refused tree ran: %d ticks after the restore, %d before", n, before)
			}
		})
	}
	mustOK(t, "restore", a.Restore(ctx, "job", spec, agentapi.RestoreRequest{Dir: img, Checkpoint: "job/1", NodeManifestSHA256: digest}))
	resumeThenDestroy(t, a, ref)
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), 0o700)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), data, 0o600)
	})
	mustOK(t, "copy images", err)
}

func flipByte(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	mustOK(t, "read image", err)
	data[len(data)/2] ^= 0xff
	mustOK(t, "write image", os.WriteFile(path, data, 0o600))
}
