package agent

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// filesDirName holds, inside a job-node's images, copies of the files its
// MPI library and pmixd share through MAP_SHARED mappings (Open MPI's
// shared-memory segments, the PMIx data store). CRIU saves the contents of
// deleted files but not of files that still exist, and the job keeps
// writing them after a leave-running checkpoint: restoring that checkpoint
// later must put them back as they were at the dump.
const filesDirName = "torpor-files"

// sharedDirs are the job-node directories whose files are saved with it.
func (a *Agent) sharedDirs(job, n string) []string {
	base := filepath.Join(a.cfg.RunDir, "jobs", job, n)
	return []string{base + ".shm", base + ".pmix"}
}

// saveFiles copies every regular file below dirs into images/torpor-files.
// The job-node is frozen while this runs, so the copies match the dump.
func saveFiles(images string, dirs []string) error {
	for _, dir := range dirs {
		dst := filepath.Join(images, filesDirName, filepath.Base(dir))
		if err := eachRegularFile(dir, func(p, rel string) error {
			return copyFile(p, filepath.Join(dst, rel), 0o600)
		}); err != nil {
			return fmt.Errorf("save shared files of %s: %w", dir, err)
		}
	}
	return nil
}

// restoreFiles puts the saved files back at their paths, each replaced
// atomically (a copy of the job-node still frozen elsewhere keeps its own).
func restoreFiles(images string, dirs []string) error {
	for _, dir := range dirs {
		src := filepath.Join(images, filesDirName, filepath.Base(dir))
		if err := eachRegularFile(src, func(p, rel string) error {
			target := filepath.Join(dir, rel)
			tmp := target + ".torpor-restore"
			if err := copyFile(p, tmp, 0o600); err != nil {
				return err
			}
			return os.Rename(tmp, target)
		}); err != nil {
			return fmt.Errorf("restore shared files of %s: %w", dir, err)
		}
	}
	return nil
}

// eachRegularFile calls fn with the path of every regular file below root
// and its path relative to root. A missing root has no files.
func eachRegularFile(root string, fn func(path, rel string) error) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		return fn(p, rel)
	})
}

func copyFile(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Chmod(st.Mode().Perm()); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
