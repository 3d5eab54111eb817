// Package pmi1 serves the PMI-1 "simple" wire protocol (version 1.1) that
// MPICH ranks speak to their process manager, so pmixd can launch MPICH jobs
// without hydra. See bench/workloads/MPICH_PMI.md for the observed protocol.
//
// One stream connection per rank (an inherited socketpair end named by
// PMI_FD); each request is one line of space-separated key=value words, each
// answered by one line. The key-value space is job-wide: puts become visible
// to every rank after the next barrier, which the server completes across
// job-nodes through an Exchange function.
package pmi1

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// MaxLine bounds a request line; MPICH reads replies into 1024 bytes and
// its longest values are well below that.
const MaxLine = 4096

// Limits reported by get_maxes (hydra's values).
const (
	KVSNameMax = 256
	KeyLenMax  = 64
	ValLenMax  = 1024
)

// ErrSyntax is wrapped by every parse error.
var ErrSyntax = errors.New("pmi1: malformed request")

// Message is one PMI-1 line: its command and its other words in order.
type Message struct {
	Cmd  string
	Keys []string // keys in wire order, Cmd excluded
	Vals map[string]string
}

// Get returns the value of key.
func (m Message) Get(key string) (string, bool) {
	v, ok := m.Vals[key]
	return v, ok
}

// Parse reads one request line (without or with its trailing newline). The
// first word must be cmd=<name> (mcmd= multi-line spawn is not supported).
// Words are key=value; the value may be empty and may contain '='; a key may
// appear only once.
func Parse(line []byte) (Message, error) {
	line = bytes.TrimSuffix(line, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	if len(line) > MaxLine {
		return Message{}, fmt.Errorf("%w: line of %d bytes exceeds %d", ErrSyntax, len(line), MaxLine)
	}
	words := strings.Fields(string(line))
	if len(words) == 0 {
		return Message{}, fmt.Errorf("%w: empty line", ErrSyntax)
	}
	m := Message{Vals: map[string]string{}}
	for i, w := range words {
		k, v, ok := strings.Cut(w, "=")
		if !ok || k == "" {
			return Message{}, fmt.Errorf("%w: word %q is not key=value", ErrSyntax, truncate(w))
		}
		if i == 0 {
			if k != "cmd" {
				if k == "mcmd" {
					return Message{}, fmt.Errorf("%w: multi-line command %q (spawn) is not supported", ErrSyntax, truncate(v))
				}
				return Message{}, fmt.Errorf("%w: line starts with %q, want cmd=", ErrSyntax, truncate(k))
			}
			if v == "" {
				return Message{}, fmt.Errorf("%w: empty command", ErrSyntax)
			}
			m.Cmd = v
			continue
		}
		if k == "cmd" {
			return Message{}, fmt.Errorf("%w: second cmd= word", ErrSyntax)
		}
		if _, dup := m.Vals[k]; dup {
			return Message{}, fmt.Errorf("%w: key %q repeated", ErrSyntax, truncate(k))
		}
		m.Keys = append(m.Keys, k)
		m.Vals[k] = v
	}
	return m, nil
}

func truncate(s string) string {
	if len(s) > 32 {
		return s[:32] + "..."
	}
	return s
}

// Format renders a message as one line with its newline. Keys are written in
// m.Keys order; values must not contain spaces or newlines.
func Format(m Message) []byte {
	var b bytes.Buffer
	b.WriteString("cmd=")
	b.WriteString(m.Cmd)
	for _, k := range m.Keys {
		b.WriteByte(' ')
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(m.Vals[k])
	}
	b.WriteByte('\n')
	return b.Bytes()
}

// reply builds a message from alternating keys and values.
func reply(cmd string, kv ...string) Message {
	m := Message{Cmd: cmd, Vals: map[string]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		m.Keys = append(m.Keys, kv[i])
		m.Vals[kv[i]] = kv[i+1]
	}
	return m
}

// Mapping renders PMI_process_mapping for nodes given as ascending rank
// lists, e.g. [[0 1] [2 3]] -> "(vector,(0,2,2))". Only layouts where node i
// holds the next contiguous block of ranks can be expressed; for any other it
// returns "" and MPICH falls back to comparing host names.
func Mapping(nodes [][]int) string {
	next := 0
	var blocks []string
	start, count, ppn := -1, 0, 0
	for i, rs := range nodes {
		if len(rs) == 0 || !slices.IsSorted(rs) || rs[0] != next || rs[len(rs)-1] != next+len(rs)-1 {
			return ""
		}
		next += len(rs)
		if start >= 0 && len(rs) == ppn {
			count++
			continue
		}
		if start >= 0 {
			blocks = append(blocks, fmt.Sprintf("(%d,%d,%d)", start, count, ppn))
		}
		start, count, ppn = i, 1, len(rs)
	}
	if start < 0 {
		return ""
	}
	blocks = append(blocks, fmt.Sprintf("(%d,%d,%d)", start, count, ppn))
	return "(vector," + strings.Join(blocks, ",") + ")"
}
