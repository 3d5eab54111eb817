package criu

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"
)

// ErrFailed is wrapped by every error CRIU itself reports.
var ErrFailed = errors.New("criu failed")

// Error is a failed CRIU run: the first meaningful "Error (" line of its log
// and the path of the kept log.
type Error struct {
	Op      string // "dump" or "restore"
	Line    string // first Error line of the log ("" if none was found)
	LogPath string
	Err     error // what the RPC or the process reported
}

func (e *Error) Error() string {
	line := e.Line
	if line == "" {
		line = "no Error line in the log"
	}
	return fmt.Sprintf("criu %s: %v: %s (log: %s)", e.Op, e.Err, line, e.LogPath)
}

func (e *Error) Unwrap() []error { return []error{ErrFailed, e.Err} }

// harmless lists Error lines CRIU prints on every run on this kind of machine.
var harmless = []string{
	"Can't setup RLIMIT_NOFILE for self",
}

// FirstErrorLine returns the first "Error (" line of a CRIU log that is not
// known to be harmless, trimmed of CRIU's timestamp prefix.
func FirstErrorLine(logPath string) string {
	f, err := os.Open(logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
next:
	for sc.Scan() {
		line := sc.Text()
		i := strings.Index(line, "Error (")
		if i < 0 {
			continue
		}
		for _, h := range harmless {
			if strings.Contains(line, h) {
				continue next
			}
		}
		return strings.TrimSpace(line[i:])
	}
	return ""
}
