package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/torpor-hpc/torpor/agentapi"
	apiv1 "github.com/torpor-hpc/torpor/api/v1"
	"github.com/torpor-hpc/torpor/catalog"
	"github.com/torpor-hpc/torpor/fault"
	"github.com/torpor-hpc/torpor/shim/criu"
)

// Streamed migrations (agentapi.DumpRequest.Local, RestoreRequest.From):
// hosts that share no file system move a job-node's images from shim to
// shim. The source dumps into its own image directory and keeps the images
// while the job-node stays here, frozen (until it is destroyed after the
// move, or unlocked or thawed by a rollback); the destination fetches them
// over the shims' mutual TLS into its own image directory and restores
// from there, verifying every file against the node manifest whose SHA-256
// the source reported, exactly as a restart's images are verified. Both
// directories are scratch: <image-dir>/migrations/<host>/out/<job>/<node>
// on the source, .../in/<job>/<node> on the destination (a node manifest
// names its job-node's directory), removed when the job-node leaves, and
// all of <image-dir>/migrations/<host> when the shim starts.

// imageChunk is the size of the pieces a source sends.
const imageChunk = 1 << 20

// StreamsImages says the shim has an image directory of its own: it takes
// part in streamed migrations.
func (a *Agent) StreamsImages() bool { return a.cfg.ImageDir != "" }

// migrationsDir is this shim's part of the image directory.
func (a *Agent) migrationsDir() string {
	return filepath.Join(a.cfg.ImageDir, "migrations", a.cfg.Host)
}

// migrationDir is where job/node's images of one side of a migration go.
func (a *Agent) migrationDir(job, node, side string) string {
	return filepath.Join(a.migrationsDir(), side, job, node)
}

// freshMigrationDir makes migrationDir empty and new: root's, 0700, below
// directories only root can write to up to the image directory.
func (a *Agent) freshMigrationDir(job, node, side string) (string, error) {
	if a.cfg.ImageDir == "" {
		return "", fmt.Errorf("%w: this shim has no image directory for a streamed migration (torpor shim --image-dir)", agentapi.ErrInvalid)
	}
	dir := a.migrationDir(job, node, side)
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return "", fmt.Errorf("migration images of %s/%s: %w", job, node, err)
	}
	if err := rootOnly(filepath.Dir(dir), a.cfg.ImageDir); err != nil {
		return "", fmt.Errorf("migration images of %s/%s: %w", job, node, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return "", fmt.Errorf("migration images of %s/%s: remove stale ones: %w", job, node, err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", fmt.Errorf("migration images of %s/%s: %w", job, node, err)
	}
	return dir, nil
}

// clearMigrations removes what an earlier shim of this host left of its
// migrations: none is in progress when a shim starts.
func (a *Agent) clearMigrations() error {
	if a.cfg.ImageDir == "" {
		return nil
	}
	if err := os.RemoveAll(a.migrationsDir()); err != nil {
		return fmt.Errorf("remove the migration images an earlier shim left: %w", err)
	}
	return nil
}

// dropMigrationImages removes job/node's migration images of both sides,
// and the directories above them that are left empty.
func (a *Agent) dropMigrationImages(job, node string) {
	if a.cfg.ImageDir == "" {
		return
	}
	for _, side := range []string{"out", "in"} {
		dir := a.migrationDir(job, node, side)
		if err := os.RemoveAll(dir); err != nil {
			a.log.Warn("remove migration images", "job", job, "node", node, "err", err)
		}
		_ = os.Remove(filepath.Dir(dir)) // fails while another job-node's are there
	}
}

// dropLocalDump removes the images n's local dump left, if any.
func (a *Agent) dropLocalDump(n *node) {
	n.mu.Lock()
	had := n.local != ""
	n.local = ""
	n.mu.Unlock()
	if had {
		if err := os.RemoveAll(a.migrationDir(n.job, n.spec.Name, "out")); err != nil {
			a.log.Warn("remove migration images", "job", n.job, "node", n.spec.Name, "err", err)
		}
	}
}

// SendImages implements agentapi.ImageServer: the files of the local dump
// of ref for checkpoint, the only directory it serves from.
func (a *Agent) SendImages(ctx context.Context, ref agentapi.NodeRef, checkpoint string, send func(string, []byte) error) error {
	n, err := a.get(ref)
	if err != nil {
		return err
	}
	n.mu.Lock()
	local := n.local
	n.mu.Unlock()
	if local == "" || local != checkpoint {
		return fmt.Errorf("%w: job-node %s/%s has no images of %s to send", ErrNoNode, ref.Job, ref.Node, checkpoint)
	}
	root, err := os.OpenRoot(a.migrationDir(ref.Job, ref.Node, "out"))
	if err != nil {
		return err
	}
	defer root.Close()
	start, sent, files := time.Now(), int64(0), 0
	buf := make([]byte, imageChunk)
	err = fs.WalkDir(root.FS(), ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		f, err := root.Open(name)
		if err != nil {
			return err
		}
		defer f.Close()
		files++
		first := true
		corrupt := a.cfg.Faults.Has(fault.CorruptSentImages) && criu.IsPages(path.Base(name))
		for {
			k, rerr := io.ReadFull(f, buf)
			if k > 0 && corrupt {
				buf[k/2] ^= 0x01
				corrupt = false
				a.log.Warn("FAULT INJECTION: sending a memory image with a byte changed", "file", name)
			}
			if k > 0 || first {
				chunk := ""
				if first {
					chunk = name
				}
				if err := send(chunk, buf[:k]); err != nil {
					return err
				}
				sent += int64(k)
				first = false
			}
			if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
				return nil
			}
			if rerr != nil {
				return rerr
			}
		}
	})
	if err != nil {
		return fmt.Errorf("send the images of %s/%s: %w", ref.Job, ref.Node, err)
	}
	a.log.Info("sent migration images", "job", ref.Job, "node", ref.Node, "ckpt", checkpoint, "files", files, "bytes", sent, "elapsed", time.Since(start))
	return nil
}

// fetchImages fetches the images of job/node's local dump for checkpoint
// from the shim at from into a fresh migration directory and returns it.
// It takes only relative names that stay inside the directory, each file
// once; the restore then verifies every byte against the node manifest.
func (a *Agent) fetchImages(ctx context.Context, job, node, checkpoint, from string) (_ string, err error) {
	if a.cfg.PeerTLS == nil {
		return "", fmt.Errorf("%w: this shim has no certificate to fetch images from another shim", agentapi.ErrInvalid)
	}
	host, _, err := net.SplitHostPort(from)
	if err != nil {
		return "", fmt.Errorf("%w: images from %q: %v", agentapi.ErrInvalid, from, err)
	}
	fresh, err := a.freshMigrationDir(job, node, "in")
	if err != nil {
		return "", err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(fresh)
		}
	}()
	tc := a.cfg.PeerTLS.Clone()
	tc.ServerName = host
	conn, err := grpc.NewClient(from, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		return "", fmt.Errorf("images of %s/%s from %s: %w", job, node, from, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	stream, err := apiv1.NewShimClient(conn).Images(ctx, &apiv1.ImagesRequest{Ref: &apiv1.NodeRef{Job: job, Node: node}, Checkpoint: checkpoint})
	if err != nil {
		return "", fmt.Errorf("images of %s/%s from %s: %w", job, node, from, agentapi.FromRPC(err))
	}
	root, err := os.OpenRoot(fresh)
	if err != nil {
		return "", err
	}
	defer root.Close()
	var f *os.File
	closeFile := func() error {
		if f == nil {
			return nil
		}
		err := f.Close()
		f = nil
		return err
	}
	defer closeFile()
	var got int64
	files := 0
	for {
		c, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", fmt.Errorf("images of %s/%s from %s: %w", job, node, from, agentapi.FromRPC(err))
		}
		if c.Name != "" {
			if err := closeFile(); err != nil {
				return "", err
			}
			if !filepath.IsLocal(c.Name) || strings.Contains(c.Name, `\`) {
				return "", fmt.Errorf("%w: images of %s/%s from %s: refusing the file name %q", catalog.ErrCorrupt, job, node, from, c.Name)
			}
			if d := filepath.Dir(c.Name); d != "." {
				if err := root.MkdirAll(d, 0o700); err != nil {
					return "", err
				}
			}
			if f, err = root.OpenFile(c.Name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
				return "", fmt.Errorf("images of %s/%s from %s: %w", job, node, from, err)
			}
			files++
		} else if f == nil {
			return "", fmt.Errorf("%w: images of %s/%s from %s: data before a file name", catalog.ErrCorrupt, job, node, from)
		}
		if _, err := f.Write(c.Data); err != nil {
			return "", fmt.Errorf("images of %s/%s: %w", job, node, err)
		}
		got += int64(len(c.Data))
	}
	if err := closeFile(); err != nil {
		return "", err
	}
	a.log.Info("fetched migration images", "job", job, "node", node, "ckpt", checkpoint, "from", from, "files", files, "bytes", got, "elapsed", time.Since(start))
	return fresh, nil
}

// fileSHA256 is the SHA-256 (hex) of a file.
func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
