package criu

import (
	"encoding/binary"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/stats"
	"google.golang.org/protobuf/proto"
)

// DumpStats are CRIU's figures for one dump (from the stats-dump image).
type DumpStats struct {
	FreezingTime time.Duration // seizing and freezing the tree
	FrozenTime   time.Duration // the tree was frozen this long
	MemdumpTime  time.Duration // collecting pages
	MemwriteTime time.Duration // writing pages to the images
	PagesScanned uint64
	PagesSkipped uint64 // skipped because the parent image has them
	PagesWritten uint64
	PagesLazy    uint64
	// ImageBytes is the total size of the images directory after the dump.
	ImageBytes int64
}

// RestoreStats are CRIU's figures for one restore (from stats-restore).
type RestoreStats struct {
	ForkingTime   time.Duration
	RestoreTime   time.Duration
	PagesCompared uint64
	PagesSkipCOW  uint64
	PagesRestored uint64
}

func usec(v uint32) time.Duration { return time.Duration(v) * time.Microsecond }

// readStats decodes one CRIU stats image: a service magic, the stats magic, a
// 32-bit payload size, then one StatsEntry protobuf.
func readStats(path string) (*stats.StatsEntry, error) {
	buf, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read criu stats: %w", err)
	}
	if len(buf) < stats.PayloadOffset {
		return nil, fmt.Errorf("read criu stats %s: file too short (%d bytes)", path, len(buf))
	}
	if m := binary.LittleEndian.Uint32(buf[stats.PrimaryMagicOffset:]); m != stats.ImgServiceMagic {
		return nil, fmt.Errorf("read criu stats %s: bad magic %#x", path, m)
	}
	if m := binary.LittleEndian.Uint32(buf[stats.SecondaryMagicOffset:]); m != stats.StatsMagic {
		return nil, fmt.Errorf("read criu stats %s: bad stats magic %#x", path, m)
	}
	n := int(binary.LittleEndian.Uint32(buf[stats.SizeOffset:]))
	if stats.PayloadOffset+n > len(buf) {
		return nil, fmt.Errorf("read criu stats %s: payload of %d bytes truncated", path, n)
	}
	var e stats.StatsEntry
	if err := proto.Unmarshal(buf[stats.PayloadOffset:stats.PayloadOffset+n], &e); err != nil {
		return nil, fmt.Errorf("read criu stats %s: %w", path, err)
	}
	return &e, nil
}

// ReadDumpStats parses stats-dump in an images directory.
func ReadDumpStats(imagesDir string) (DumpStats, error) {
	e, err := readStats(filepath.Join(imagesDir, stats.StatsDump))
	if err != nil {
		return DumpStats{}, err
	}
	d := e.GetDump()
	if d == nil {
		return DumpStats{}, fmt.Errorf("read criu stats in %s: no dump entry", imagesDir)
	}
	size, err := DirSize(imagesDir)
	if err != nil {
		return DumpStats{}, err
	}
	return DumpStats{
		FreezingTime: usec(d.GetFreezingTime()),
		FrozenTime:   usec(d.GetFrozenTime()),
		MemdumpTime:  usec(d.GetMemdumpTime()),
		MemwriteTime: usec(d.GetMemwriteTime()),
		PagesScanned: d.GetPagesScanned(),
		PagesSkipped: d.GetPagesSkippedParent(),
		PagesWritten: d.GetPagesWritten(),
		PagesLazy:    d.GetPagesLazy(),
		ImageBytes:   size,
	}, nil
}

// ReadRestoreStats parses stats-restore in an images directory.
func ReadRestoreStats(imagesDir string) (RestoreStats, error) {
	e, err := readStats(filepath.Join(imagesDir, stats.StatsRestore))
	if err != nil {
		return RestoreStats{}, err
	}
	r := e.GetRestore()
	if r == nil {
		return RestoreStats{}, fmt.Errorf("read criu stats in %s: no restore entry", imagesDir)
	}
	return RestoreStats{
		ForkingTime:   usec(r.GetForkingTime()),
		RestoreTime:   usec(r.GetRestoreTime()),
		PagesCompared: r.GetPagesCompared(),
		PagesSkipCOW:  r.GetPagesSkippedCow(),
		PagesRestored: r.GetPagesRestored(),
	}, nil
}

// DirSize is the total size of the regular files below dir.
func DirSize(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			total += info.Size()
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("measure images in %s: %w", dir, err)
	}
	return total, nil
}
