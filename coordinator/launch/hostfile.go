package launch

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// maxSlots bounds slot counts so that sums cannot overflow.
const maxSlots = 1 << 20

// ParseHostfile reads an Open MPI hostfile: one host per line, optionally
// followed by `slots=N` (also spelled count=N or cpu=N) and
// `max_slots=M` (or max-slots=M); `=` may be surrounded by blanks. `#` starts
// a comment; blank lines are skipped. A host without slots= has 1 slot. A host
// listed twice gets the sum of its slots, as with Open MPI. Errors name the
// file and line: `hosts:3: slots=abc: not a number`. They wrap ErrHostfile.
func ParseHostfile(r io.Reader, name string) ([]HostSlots, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	var hosts []HostSlots
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if i := strings.IndexByte(text, '#'); i >= 0 {
			text = text[:i]
		}
		h, ok, err := parseHostLine(text)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, line, err)
		}
		if ok {
			hosts = append(hosts, h)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read hostfile %s after line %d: %w", name, line, err)
	}
	if len(hosts) == 0 {
		return nil, fmt.Errorf("%s: %w", name, hostErrf("no hosts in it; list one host per line, e.g. `node1 slots=4`"))
	}
	return MergeHosts(hosts), nil
}

// kindErr is an error that matches a sentinel with errors.Is without
// repeating the sentinel's text in its message.
type kindErr struct {
	msg  string
	kind error
}

func (e *kindErr) Error() string { return e.msg }
func (e *kindErr) Unwrap() error { return e.kind }

func kindErrf(kind error, format string, args ...any) error {
	return &kindErr{msg: fmt.Sprintf(format, args...), kind: kind}
}

func hostErrf(format string, args ...any) error {
	return kindErrf(ErrHostfile, format, args...)
}

// parseHostLine parses one comment-free hostfile line. ok is false for a
// blank line.
func parseHostLine(text string) (h HostSlots, ok bool, err error) {
	// Glue "slots = 4" into "slots=4" before splitting into words.
	fields := strings.Fields(strings.ReplaceAll(text, "=", " = "))
	if len(fields) == 0 {
		return HostSlots{}, false, nil
	}
	if err := checkHostName(fields[0]); err != nil {
		return HostSlots{}, false, err
	}
	h = HostSlots{Host: fields[0], Slots: 1}
	seen := map[string]bool{}
	for i := 1; i < len(fields); i += 3 {
		key := fields[i]
		switch {
		case key == "=":
			return HostSlots{}, false, hostErrf("stray '=' after %q", strings.Join(fields[:i], " "))
		case i+1 >= len(fields) || fields[i+1] != "=":
			return HostSlots{}, false, hostErrf("unexpected %q after %q; write `%s slots=N`", key, strings.Join(fields[:i], " "), h.Host)
		case i+2 >= len(fields) || fields[i+2] == "=":
			return HostSlots{}, false, hostErrf("%s=: missing value", key)
		}
		val := fields[i+2]
		var canon string
		switch strings.ToLower(key) {
		case "slots", "count", "cpu":
			canon = "slots"
		case "max_slots", "max-slots":
			canon = "max_slots"
		default:
			return HostSlots{}, false, hostErrf("%s=%s: unknown keyword %q; torpor understands slots= and max_slots=", key, val, key)
		}
		if seen[canon] {
			return HostSlots{}, false, hostErrf("%s=%s: %s given twice on one line", key, val, canon)
		}
		seen[canon] = true
		n, err := strconv.Atoi(val)
		if err != nil {
			return HostSlots{}, false, hostErrf("%s=%s: not a number", key, val)
		}
		if n < 1 || n > maxSlots {
			return HostSlots{}, false, hostErrf("%s=%s: must be between 1 and %d", key, val, maxSlots)
		}
		if canon == "slots" {
			h.Slots = n
		} else {
			h.MaxSlots = n
		}
	}
	if h.MaxSlots > 0 && h.MaxSlots < h.Slots {
		return HostSlots{}, false, hostErrf("max_slots=%d is less than slots=%d; raise max_slots or lower slots", h.MaxSlots, h.Slots)
	}
	return h, true, nil
}

// checkHostName rejects names that cannot be a host name or IP address.
func checkHostName(s string) error {
	if s == "" {
		return hostErrf("empty host name")
	}
	if strings.Contains(s, "@") {
		return hostErrf("%s: user@host is not supported; torpor reaches hosts through their shims, drop the user", s)
	}
	if len(s) > 253 {
		return hostErrf("%.20s...: host name longer than 253 characters", s)
	}
	for _, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '-' || c == '.' || c == '_'
		if !ok {
			return hostErrf("%q: not a host name (letters, digits, '-', '.', '_')", s)
		}
	}
	if s[0] == '-' || s[0] == '.' {
		return hostErrf("%q: a host name cannot start with %q", s, s[0])
	}
	return nil
}

// ParseHostList parses --host syntax: `h1:2,h2,h3:4`. A host without :N has
// one slot; a host listed twice gets the sum (as with Open MPI). Errors wrap
// ErrHostfile.
func ParseHostList(s string) ([]HostSlots, error) {
	if s == "" {
		return nil, hostErrf("empty host list; give e.g. node1:2,node2")
	}
	var hosts []HostSlots
	for i, item := range strings.Split(s, ",") {
		if item == "" {
			return nil, hostErrf("%q: empty host at position %d", s, i+1)
		}
		name, count, hasCount := strings.Cut(item, ":")
		if name == "" {
			return nil, hostErrf("%q: missing host name before ':'", item)
		}
		if err := checkHostName(name); err != nil {
			return nil, err
		}
		h := HostSlots{Host: name, Slots: 1}
		if hasCount {
			n, err := strconv.Atoi(count)
			if err != nil {
				return nil, hostErrf("%s: slot count %q is not a number; write %s:N", item, count, name)
			}
			if n < 1 || n > maxSlots {
				return nil, hostErrf("%s: slot count must be between 1 and %d", item, maxSlots)
			}
			h.Slots = n
		}
		hosts = append(hosts, h)
	}
	return MergeHosts(hosts), nil
}

// MergeHosts merges repeated hosts, keeping the order of first appearance:
// slots add up; max_slots add up when every entry has one, otherwise the
// merged host has no cap.
func MergeHosts(hosts []HostSlots) []HostSlots {
	out := make([]HostSlots, 0, len(hosts))
	idx := make(map[string]int, len(hosts))
	for _, h := range hosts {
		j, ok := idx[h.Host]
		if !ok {
			idx[h.Host] = len(out)
			out = append(out, h)
			continue
		}
		m := &out[j]
		m.Slots = min(m.Slots+h.Slots, maxSlots)
		if m.MaxSlots > 0 && h.MaxSlots > 0 {
			m.MaxSlots = min(m.MaxSlots+h.MaxSlots, maxSlots)
		} else {
			m.MaxSlots = 0
		}
	}
	return out
}
