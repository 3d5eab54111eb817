package launch

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseHostfile(t *testing.T) {
	tests := []struct {
		name string
		text string
		want []HostSlots
		err  string // substring of the error; "" means success
	}{
		{name: "plain hosts", text: "a\nb\n", want: []HostSlots{{Host: "a", Slots: 1}, {Host: "b", Slots: 1}}},
		{name: "slots", text: "node1 slots=4\nnode2 slots=2\n", want: []HostSlots{{Host: "node1", Slots: 4}, {Host: "node2", Slots: 2}}},
		{name: "max_slots", text: "a slots=2 max_slots=4", want: []HostSlots{{Host: "a", Slots: 2, MaxSlots: 4}}},
		{name: "max-slots and count", text: "a count=3 max-slots=3", want: []HostSlots{{Host: "a", Slots: 3, MaxSlots: 3}}},
		{name: "spaces around equals", text: "a slots = 5", want: []HostSlots{{Host: "a", Slots: 5}}},
		{name: "comments blanks tabs", text: "# cluster\n\n  \t\na slots=2 # two cores\n\t b\t\n#c\n",
			want: []HostSlots{{Host: "a", Slots: 2}, {Host: "b", Slots: 1}}},
		{name: "duplicates add", text: "a slots=2\nb\na slots=3\n", want: []HostSlots{{Host: "a", Slots: 5}, {Host: "b", Slots: 1}}},
		{name: "duplicates add max_slots", text: "a slots=1 max_slots=2\na slots=1 max_slots=2", want: []HostSlots{{Host: "a", Slots: 2, MaxSlots: 4}}},
		{name: "duplicate without cap uncaps", text: "a slots=1 max_slots=2\na", want: []HostSlots{{Host: "a", Slots: 2}}},
		{name: "ip address and fqdn", text: "10.0.0.1 slots=2\nn1.cluster.example", want: []HostSlots{{Host: "10.0.0.1", Slots: 2}, {Host: "n1.cluster.example", Slots: 1}}},
		{name: "crlf", text: "a slots=2\r\nb\r\n", want: []HostSlots{{Host: "a", Slots: 2}, {Host: "b", Slots: 1}}},

		{name: "not a number", text: "a\nb\nc slots=abc\n", err: "hosts:3: slots=abc: not a number"},
		{name: "zero slots", text: "a slots=0", err: "hosts:1: slots=0: must be between 1 and"},
		{name: "negative slots", text: "\n\na slots=-2", err: "hosts:3: slots=-2: must be between 1"},
		{name: "unknown keyword", text: "a cores=2", err: `hosts:1: cores=2: unknown keyword "cores"`},
		{name: "missing value", text: "a slots=", err: "hosts:1: slots=: missing value"},
		{name: "missing key", text: "a =2", err: "hosts:1: stray '='"},
		{name: "junk word", text: "a b", err: `hosts:1: unexpected "b" after "a"; write ` + "`a slots=N`"},
		{name: "junk after pair", text: "a slots=2 fast", err: `hosts:1: unexpected "fast"`},
		{name: "slots twice", text: "a slots=2 slots=3", err: "hosts:1: slots=3: slots given twice"},
		{name: "max below slots", text: "# x\na slots=4 max_slots=2", err: "hosts:2: max_slots=2 is less than slots=4"},
		{name: "user at host", text: "root@a", err: "hosts:1: root@a: user@host is not supported"},
		{name: "bad host char", text: "a/b slots=1", err: `hosts:1: "a/b": not a host name`},
		{name: "host starting with dash", text: "-a", err: "cannot start with"},
		{name: "empty file", text: "", err: "hosts: no hosts in it"},
		{name: "only comments", text: "# nothing\n\n", err: "hosts: no hosts in it"},
		{name: "huge slots", text: "a slots=99999999999999999999", err: "not a number"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseHostfile(strings.NewReader(tt.text), "hosts")
			if tt.err != "" {
				if err == nil {
					t.Fatalf("ParseHostfile(%q) = %v, want error %q", tt.text, got, tt.err)
				}
				if !strings.Contains(err.Error(), tt.err) {
					t.Errorf("ParseHostfile(%q) error %q, want substring %q", tt.text, err, tt.err)
				}
				if !errors.Is(err, ErrHostfile) {
					t.Errorf("error %q does not wrap ErrHostfile", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseHostfile(%q): %v", tt.text, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseHostfile(%q) = %+v, want %+v", tt.text, got, tt.want)
			}
		})
	}
}

func TestParseHostfileLongLine(t *testing.T) {
	text := "a\n" + strings.Repeat("x", 2<<20) + "\n"
	if _, err := ParseHostfile(strings.NewReader(text), "big"); err == nil || !strings.Contains(err.Error(), "big") {
		t.Fatalf("want an error naming the file, got %v", err)
	}
}

func TestParseHostList(t *testing.T) {
	tests := []struct {
		in   string
		want []HostSlots
		err  string
	}{
		{in: "h1:2,h2", want: []HostSlots{{Host: "h1", Slots: 2}, {Host: "h2", Slots: 1}}},
		{in: "a", want: []HostSlots{{Host: "a", Slots: 1}}},
		{in: "a,a,b,a:3", want: []HostSlots{{Host: "a", Slots: 5}, {Host: "b", Slots: 1}}},
		{in: "", err: "empty host list"},
		{in: "a,", err: "empty host at position 2"},
		{in: "a:", err: `slot count "" is not a number`},
		{in: "a:-1", err: "between 1 and"},
		{in: "a:2:3", err: "not a number"},
		{in: "a b", err: "not a host name"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseHostList(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !errors.Is(err, ErrHostfile) {
					t.Fatalf("ParseHostList(%q) = %v, %v; want error with %q", tt.in, got, err, tt.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("ParseHostList(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
		})
	}
}

func FuzzParseHostfile(f *testing.F) {
	for _, s := range []string{
		"a\nb slots=2\n", "# c\nn1 slots=4 max_slots=8\nn1 slots=1\n", "a slots = 3", "a slots=", "a =", "x@y",
		"a slots=2 max-slots=1", "\r\n\t#", "a count=1 cpu=2",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		hosts, err := ParseHostfile(strings.NewReader(text), "fuzz")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz") {
				t.Fatalf("error %q does not name the file", err)
			}
			return
		}
		if len(hosts) == 0 {
			t.Fatal("no error and no hosts")
		}
		names := map[string]bool{}
		for _, h := range hosts {
			if names[h.Host] {
				t.Fatalf("host %q twice after merge", h.Host)
			}
			names[h.Host] = true
			if h.Host == "" || h.Slots < 1 || h.Slots > maxSlots || h.MaxSlots < 0 || (h.MaxSlots > 0 && h.MaxSlots < h.Slots) {
				t.Fatalf("bad host %+v", h)
			}
		}
		// Every accepted hostfile must place one rank per slot.
		total := 0
		for _, h := range hosts {
			total += h.Slots
		}
		if total <= MaxRanks {
			if _, err := Place(total, hosts, MapBySlot, false); err != nil {
				t.Fatalf("Place(%d, %+v): %v", total, hosts, err)
			}
		}
	})
}
