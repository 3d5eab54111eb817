package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// WriteSample is a plain write of the same bytes as a checkpoint, to the same
// storage: the limit a checkpoint could reach.
type WriteSample struct {
	Bytes int64         `json:"bytes"`
	Write time.Duration `json:"write_ns"` // write(2) of every byte (page cache, as CRIU writes)
	Fsync time.Duration `json:"fsync_ns"` // then fsync of every file (durable)
}

// plainWrite writes total bytes as files files under dir, then fsyncs them,
// then removes them.
func plainWrite(dir string, total int64, files int) (WriteSample, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return WriteSample{}, err
	}
	defer os.RemoveAll(dir)
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*131 + i>>9 | 1)
	}
	files = max(files, 1)
	per := total / int64(files)
	fs := make([]*os.File, 0, files)
	defer func() {
		for _, f := range fs {
			f.Close()
		}
	}()
	s := WriteSample{Bytes: total}
	unix.Sync() // see Env.settle
	start := time.Now()
	for i := 0; i < files; i++ {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("pages-%d.img", i)))
		if err != nil {
			return s, fmt.Errorf("plain write: %w", err)
		}
		fs = append(fs, f)
		for left := per; left > 0; {
			n := min(left, int64(len(buf)))
			if _, err := f.Write(buf[:n]); err != nil {
				return s, fmt.Errorf("plain write: %w", err)
			}
			left -= n
		}
	}
	s.Write = time.Since(start)
	start = time.Now()
	for _, f := range fs {
		if err := f.Sync(); err != nil {
			return s, fmt.Errorf("plain write: fsync: %w", err)
		}
	}
	s.Fsync = time.Since(start)
	return s, nil
}
