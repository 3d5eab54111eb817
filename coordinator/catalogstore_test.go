package coordinator

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/catalog"
)

// newCatalogFixture is newFixture backed by the real on-disk catalog.
func newCatalogFixture(t *testing.T, hosts ...string) (*fixture, *catalog.Store) {
	t.Helper()
	dir := t.TempDir()
	key, err := catalog.LoadOrCreateKey(filepath.Join(dir, "state", "catalog.key"))
	if err != nil {
		t.Fatal(err)
	}
	cs, err := catalog.Open(filepath.Join(dir, "ckpt"), key)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{agents: map[string]*fakeAgent{}}
	agents := map[string]agentapi.Agent{}
	for _, h := range hosts {
		f.agents[h] = newFakeAgent(h)
		agents[h] = f.agents[h]
	}
	c, err := New(Options{StateDir: filepath.Join(dir, "state"), Store: CatalogStore{cs}, Agents: agents, Deadlines: testDeadlines(), Keep: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.events.flush) // its history is written in the background
	f.c = c
	f.spec = JobSpec{ID: "job1", Owner: 1000}
	for i, h := range hosts[:3] {
		f.spec.Nodes = append(f.spec.Nodes, agentapi.NodeSpec{Name: "n" + string(rune('0'+i)), Host: h, IP: "198.19.0." + string(rune('1'+i)) + "/15", Argv: []string{"/bin/true"}})
	}
	if err := c.Start(context.Background(), f.spec); err != nil {
		t.Fatal(err)
	}
	return f, cs
}

func TestCatalogStoreProtocol(t *testing.T) {
	f, cs := newCatalogFixture(t, "h0", "h1", "h2", "h3")
	ctx := context.Background()

	// A failed dump leaves nothing in the catalog.
	f.agents["h1"].fail[PhaseDump] = errors.New("injected")
	if _, err := f.c.Checkpoint(ctx, "job1", CheckpointOptions{}); err == nil {
		t.Fatal("checkpoint succeeded despite a failed dump")
	}
	delete(f.agents["h1"].fail, PhaseDump)
	if cps, _ := cs.List("job1"); len(cps) != 0 {
		t.Fatalf("aborted checkpoint listed: %v", cps)
	}
	if ents, _ := os.ReadDir(filepath.Join(cs.Root(), "job1")); len(ents) > 1 { // next-seq only
		t.Fatalf("partial checkpoint left on disk: %v", ents)
	}

	good, err := f.c.Checkpoint(ctx, "job1", CheckpointOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bad, err := f.c.Checkpoint(ctx, "job1", CheckpointOptions{Stop: true})
	if err != nil {
		t.Fatal(err)
	}
	m, err := f.c.store.Load(bad)
	if err != nil || m.Kind != "suspend" || len(m.Spec.Nodes) != 3 || m.Phases[PhaseDump] <= 0 {
		t.Fatalf("Load(%s) = %+v, %v", bad, m, err)
	}
	infos, err := CatalogStore{cs}.Describe("job1")
	if err != nil || len(infos) != 2 || infos[1].Nodes != 3 || infos[1].Bytes == 0 {
		t.Fatalf("Describe = %+v, %v", infos, err)
	}

	// Flip one byte of one image of the newest checkpoint.
	img := filepath.Join(cs.Root(), bad, "nodes", "n2", "pages-1.img")
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	data[100] ^= 0xff
	if err := os.WriteFile(img, data, 0o600); err != nil {
		t.Fatal(err)
	}
	// The shims verify the images: n2's refuses its restore.
	_, err = f.c.Restart(ctx, bad, RestartOptions{})
	if err == nil || !errors.Is(err, agentapi.ErrCorrupt) || !strings.Contains(err.Error(), "fails verification") || !strings.Contains(err.Error(), "nodes/n2/pages-1.img") {
		t.Fatalf("restart of a tampered checkpoint: %v", err)
	}
	// A shim that does not verify images is given none the coordinator has
	// not verified whole: the restart is refused before any files phase.
	f.agents["h0"].oldShim = true
	files := f.agents["h2"].calls[PhaseFiles]
	_, err = f.c.Restart(ctx, bad, RestartOptions{})
	if err == nil || errors.Is(err, agentapi.ErrCorrupt) || !strings.Contains(err.Error(), "refusing to restart from it") || !strings.Contains(err.Error(), "nodes/n2/pages-1.img") {
		t.Fatalf("restart of a tampered checkpoint with a shim that does not verify: %v", err)
	}
	if n := f.agents["h2"].calls[PhaseFiles]; n != files {
		t.Fatalf("the files phase ran (%d calls, %d before)", n, files)
	}
	f.agents["h0"].oldShim = false
	res, err := f.c.Restart(ctx, "job1", RestartOptions{Fallback: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Checkpoint != good || len(res.Skipped) != 1 {
		t.Fatalf("fallback restart = %+v, want %s", res, good)
	}
	f.assertRunning(t)
}
