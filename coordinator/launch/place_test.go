package launch

import (
	"errors"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
)

func hs(spec string) []HostSlots {
	if spec == "" {
		return nil
	}
	h, err := ParseHostList(spec)
	if err != nil {
		panic(err)
	}
	return h
}

func TestPlace(t *testing.T) {
	tests := []struct {
		name  string
		np    int
		hosts []HostSlots
		mapBy string
		over  bool
		want  string // Plan.String()
	}{
		{"embedded default", 4, nil, "", false, "localhost:[0 1 2 3]"},
		{"embedded default one rank", 1, nil, MapByNode, false, "localhost:[0]"},
		{"slot fills in order", 4, hs("a:2,b:2"), MapBySlot, false, "a:[0 1] b:[2 3]"},
		{"slot partial leaves hosts out", 3, hs("a:2,b:2,c:2"), MapBySlot, false, "a:[0 1] b:[2]"},
		{"slot default mapping", 2, hs("a:2,b:2"), "", false, "a:[0 1]"},
		{"node round robin", 4, hs("a:2,b:2"), MapByNode, false, "a:[0 2] b:[1 3]"},
		{"node skips full hosts", 5, hs("a:1,b:3,c:1"), MapByNode, false, "a:[0] b:[1 3 4] c:[2]"},
		{"node partial", 2, hs("a:2,b:2,c:2"), MapByNode, false, "a:[0] b:[1]"},
		{"slot oversubscribed spreads extra", 7, hs("a:2,b:2"), MapBySlot, true, "a:[0 1 2 3] b:[4 5 6]"},
		{"slot oversubscribed one host", 3, hs("a"), MapBySlot, true, "a:[0 1 2]"},
		{"node oversubscribed keeps dealing", 6, hs("a:2,b:1"), MapByNode, true, "a:[0 2 4 5] b:[1 3]"},
		{"max_slots caps extra", 6, []HostSlots{{Host: "a", Slots: 2, MaxSlots: 2}, {Host: "b", Slots: 2}}, MapBySlot, true, "a:[0 1] b:[2 3 4 5]"},
		{"max_slots caps node", 6, []HostSlots{{Host: "a", Slots: 1, MaxSlots: 2}, {Host: "b", Slots: 1}}, MapByNode, true, "a:[0 2] b:[1 3 4 5]"},
		{"duplicate hosts merged", 3, []HostSlots{{Host: "a", Slots: 1}, {Host: "b", Slots: 1}, {Host: "a", Slots: 1}}, MapBySlot, false, "a:[0 1] b:[2]"},
		{"oversubscribe not needed", 2, hs("a:2"), MapBySlot, true, "a:[0 1]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Place(tt.np, tt.hosts, tt.mapBy, tt.over)
			if err != nil {
				t.Fatalf("Place: %v", err)
			}
			if got := p.String(); got != tt.want {
				t.Errorf("Place(%d, %v, %q, %v) = %s, want %s", tt.np, tt.hosts, tt.mapBy, tt.over, got, tt.want)
			}
			checkPlan(t, p, tt.np, tt.hosts, tt.mapBy, tt.over)
		})
	}
}

func TestPlaceErrors(t *testing.T) {
	tests := []struct {
		name  string
		np    int
		hosts []HostSlots
		mapBy string
		over  bool
		is    error
		msg   []string
	}{
		{"more ranks than slots", 5, hs("a:2,b:2"), MapBySlot, false, ErrNotEnoughSlots,
			[]string{"place 5 ranks: only 4 slots (a:2, b:2)", "--oversubscribe"}},
		{"many hosts summarised", 9, hs("a,b,c,d,e,f"), MapByNode, false, ErrNotEnoughSlots, []string{"a:1, b:1, c:1, d:1, and 2 more hosts"}},
		{"max_slots even oversubscribed", 5, []HostSlots{{Host: "a", Slots: 2, MaxSlots: 2}, {Host: "b", Slots: 1, MaxSlots: 2}}, MapBySlot, true,
			ErrNotEnoughSlots, []string{"max_slots allows only 4 ranks", "raise max_slots"}},
		{"zero ranks", 0, nil, MapBySlot, false, ErrUsage, []string{"between 1 and"}},
		{"negative ranks", -1, hs("a"), MapBySlot, false, ErrUsage, []string{"between 1 and"}},
		{"too many ranks", MaxRanks + 1, nil, MapBySlot, true, ErrUsage, []string{"between 1 and"}},
		{"bad mapping", 1, hs("a"), "core", false, ErrUsage, []string{"slot or node"}},
		{"zero slot host", 1, []HostSlots{{Host: "a"}}, MapBySlot, false, ErrHostfile, []string{"host a has 0 slots"}},
		{"nameless host", 1, []HostSlots{{Slots: 1}}, MapBySlot, false, ErrHostfile, []string{"no name"}},
		{"max below slots", 1, []HostSlots{{Host: "a", Slots: 2, MaxSlots: 1}}, MapBySlot, false, ErrHostfile, []string{"max_slots must be at least slots"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Place(tt.np, tt.hosts, tt.mapBy, tt.over)
			if err == nil {
				t.Fatalf("Place = %s, want error", p)
			}
			if !errors.Is(err, tt.is) {
				t.Errorf("error %q does not match %v", err, tt.is)
			}
			for _, s := range tt.msg {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q lacks %q", err, s)
				}
			}
		})
	}
}

// checkPlan asserts the invariants every plan must have.
func checkPlan(t *testing.T, p Plan, np int, hosts []HostSlots, mapBy string, over bool) {
	t.Helper()
	if len(hosts) == 0 {
		hosts = []HostSlots{{Host: LocalHost, Slots: np}}
	}
	hosts = MergeHosts(hosts)
	byName := map[string]HostSlots{}
	order := map[string]int{}
	total := 0
	for i, h := range hosts {
		byName[h.Host] = h
		order[h.Host] = i
		total += h.Slots
	}
	seen := make([]bool, np)
	last := -1
	for _, nd := range p.Nodes {
		h, ok := byName[nd.Host]
		if !ok {
			t.Fatalf("plan host %q not among hosts", nd.Host)
		}
		if order[nd.Host] <= last {
			t.Fatalf("plan %s: hosts out of order or repeated", p)
		}
		last = order[nd.Host]
		if len(nd.Ranks) == 0 {
			t.Fatalf("plan %s: host %s with no rank", p, nd.Host)
		}
		if !over && len(nd.Ranks) > h.Slots {
			t.Fatalf("plan %s: host %s has %d ranks for %d slots without oversubscribe", p, nd.Host, len(nd.Ranks), h.Slots)
		}
		if h.MaxSlots > 0 && len(nd.Ranks) > h.MaxSlots {
			t.Fatalf("plan %s: host %s over max_slots %d", p, nd.Host, h.MaxSlots)
		}
		if np >= total && len(nd.Ranks) < h.Slots {
			t.Fatalf("plan %s: host %s not full (%d of %d slots) although np %d >= %d slots", p, nd.Host, len(nd.Ranks), h.Slots, np, total)
		}
		for j, r := range nd.Ranks {
			if r < 0 || r >= np {
				t.Fatalf("plan %s: rank %d out of range", p, r)
			}
			if seen[r] {
				t.Fatalf("plan %s: rank %d twice", p, r)
			}
			seen[r] = true
			if j > 0 && nd.Ranks[j-1] >= r {
				t.Fatalf("plan %s: ranks of %s not sorted", p, nd.Host)
			}
			if (mapBy == MapBySlot || mapBy == "") && j > 0 && nd.Ranks[j-1]+1 != r {
				t.Fatalf("plan %s: slot mapping gave %s non-contiguous ranks", p, nd.Host)
			}
		}
	}
	for r, ok := range seen {
		if !ok {
			t.Fatalf("plan %s: rank %d missing", p, r)
		}
	}
	if p.NP() != np {
		t.Fatalf("plan %s: NP() = %d, want %d", p, p.NP(), np)
	}
	rh := p.RankHosts()
	for _, nd := range p.Nodes {
		for _, r := range nd.Ranks {
			if rh[r] != nd.Host {
				t.Fatalf("RankHosts()[%d] = %q, want %q", r, rh[r], nd.Host)
			}
		}
	}
	if mapBy == MapByNode && len(p.Nodes) > 1 {
		// Ranks 0..k-1 land on k distinct hosts when k hosts have room.
		k := min(np, len(hosts))
		hostsSeen := map[string]bool{}
		for r := 0; r < k; r++ {
			hostsSeen[rh[r]] = true
		}
		if len(hostsSeen) != k {
			t.Fatalf("plan %s: node mapping put the first %d ranks on %d hosts", p, k, len(hostsSeen))
		}
	}
}

// TestPlaceProperties checks the invariants over many random host sets,
// rank counts and policies; failures print a reproducible case.
func TestPlaceProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	names := []string{"a", "b", "c", "d", "e", "f", "g"}
	placed, refused := 0, 0
	for iter := 0; iter < 20000; iter++ {
		var hosts []HostSlots
		for i := rng.IntN(6); i > 0; i-- {
			h := HostSlots{Host: names[rng.IntN(len(names))], Slots: 1 + rng.IntN(5)}
			if rng.IntN(3) == 0 {
				h.MaxSlots = h.Slots + rng.IntN(3)
			}
			hosts = append(hosts, h)
		}
		np := 1 + rng.IntN(30)
		mapBy := []string{"", MapBySlot, MapByNode}[rng.IntN(3)]
		over := rng.IntN(2) == 0
		p, err := Place(np, hosts, mapBy, over)
		total, capacity := 0, 0
		merged := MergeHosts(hosts)
		for _, h := range merged {
			total += h.Slots
			if h.MaxSlots == 0 || capacity < 0 {
				capacity = -1
			} else {
				capacity += h.MaxSlots
			}
		}
		if len(hosts) == 0 {
			total, capacity = np, -1
		}
		fits := np <= total || over && (capacity < 0 || np <= capacity)
		if err != nil {
			if fits || !errors.Is(err, ErrNotEnoughSlots) {
				t.Fatalf("Place(%d, %+v, %q, %v): %v", np, hosts, mapBy, over, err)
			}
			refused++
			continue
		}
		if !fits {
			t.Fatalf("Place(%d, %+v, %q, %v) = %s, want ErrNotEnoughSlots", np, hosts, mapBy, over, p)
		}
		placed++
		checkPlan(t, p, np, hosts, mapBy, over)
		// Extra ranks are spread evenly: without caps, host rank counts over
		// their slots differ by at most one.
		if over && np > total {
			uncapped := true
			for _, h := range merged {
				uncapped = uncapped && h.MaxSlots == 0
			}
			if uncapped {
				lo, hi := np, 0
				counts := map[string]int{}
				for _, nd := range p.Nodes {
					counts[nd.Host] = len(nd.Ranks)
				}
				for _, h := range merged {
					extra := counts[h.Host] - h.Slots
					lo, hi = min(lo, extra), max(hi, extra)
				}
				if hi-lo > 1 {
					t.Fatalf("Place(%d, %+v, %q, over) = %s: extra ranks uneven", np, hosts, mapBy, p)
				}
			}
		}
	}
	t.Logf("placed %d, refused %d", placed, refused)
	if placed < 1000 || refused < 1000 {
		t.Fatalf("property test covered too little: placed %d refused %d", placed, refused)
	}
}

func TestPlaceDeterministic(t *testing.T) {
	a, err := Place(10, hs("x:3,y:2,z"), MapByNode, true)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Place(10, hs("x:3,y:2,z"), MapByNode, true)
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("same input, different plans: %s vs %s", a, b)
	}
}
