package pmi1

import (
	"bytes"
	"errors"
	"maps"
	"slices"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		line string
		cmd  string
		vals map[string]string
		err  bool
	}{
		{line: "cmd=init pmi_version=1 pmi_subversion=1\n", cmd: "init", vals: map[string]string{"pmi_version": "1", "pmi_subversion": "1"}},
		{line: "cmd=get_maxes\n", cmd: "get_maxes", vals: map[string]string{}},
		{line: "cmd=put kvsname=kvs_1 key=-bcast-1-0 value=2F6465\n", cmd: "put", vals: map[string]string{"kvsname": "kvs_1", "key": "-bcast-1-0", "value": "2F6465"}},
		{line: "cmd=get_result rc=0 msg=success value=(vector,(0,1,1))", cmd: "get_result", vals: map[string]string{"rc": "0", "msg": "success", "value": "(vector,(0,1,1))"}},
		{line: "cmd=put key=a value=x=y\r\n", cmd: "put", vals: map[string]string{"key": "a", "value": "x=y"}},
		{line: "cmd=put key= value=\n", cmd: "put", vals: map[string]string{"key": "", "value": ""}},
		{line: "cmd=abort  exitcode=3 \n", cmd: "abort", vals: map[string]string{"exitcode": "3"}},
		{line: "\n", err: true},
		{line: "key=value\n", err: true},
		{line: "mcmd=spawn\n", err: true},
		{line: "cmd=\n", err: true},
		{line: "cmd=put novalue\n", err: true},
		{line: "cmd=put =v\n", err: true},
		{line: "cmd=put key=a key=b\n", err: true},
		{line: "cmd=put cmd=get\n", err: true},
		{line: "cmd=x v=" + string(bytes.Repeat([]byte("a"), MaxLine)), err: true},
	} {
		m, err := Parse([]byte(tc.line))
		if tc.err {
			if !errors.Is(err, ErrSyntax) {
				t.Errorf("Parse(%q) = %+v, %v; want ErrSyntax", tc.line, m, err)
			}
			continue
		}
		if err != nil || m.Cmd != tc.cmd || !maps.Equal(m.Vals, tc.vals) {
			t.Errorf("Parse(%q) = %+v, %v; want cmd %q vals %v", tc.line, m, err, tc.cmd, tc.vals)
		}
	}
}

func TestFormatReplies(t *testing.T) {
	got := string(Format(reply("maxes", "kvsname_max", "256", "keylen_max", "64", "vallen_max", "1024")))
	if want := "cmd=maxes kvsname_max=256 keylen_max=64 vallen_max=1024\n"; got != want {
		t.Errorf("Format = %q, want %q", got, want)
	}
	if got := string(Format(reply("barrier_out"))); got != "cmd=barrier_out\n" {
		t.Errorf("Format = %q", got)
	}
}

func TestMapping(t *testing.T) {
	for _, tc := range []struct {
		nodes [][]int
		want  string
	}{
		{[][]int{{0, 1}}, "(vector,(0,1,2))"},
		{[][]int{{0}, {1}}, "(vector,(0,2,1))"},
		{[][]int{{0, 1}, {2, 3}}, "(vector,(0,2,2))"},
		{[][]int{{0}, {1, 2}}, "(vector,(0,1,1),(1,1,2))"},
		{[][]int{{0, 1}, {2, 3}, {4}}, "(vector,(0,2,2),(2,1,1))"},
		{[][]int{{0, 2}, {1, 3}}, ""}, // cyclic: not expressible as blocks in node order
		{[][]int{{1}, {0}}, ""},
		{[][]int{{0}, {}}, ""},
		{nil, ""},
	} {
		if got := Mapping(tc.nodes); got != tc.want {
			t.Errorf("Mapping(%v) = %q, want %q", tc.nodes, got, tc.want)
		}
	}
}

func TestPutsConcatenate(t *testing.T) {
	a := map[string]string{"-allgather-shm-1-0": "20AB", "x": ""}
	b := map[string]string{"-allgather-shm-1-1": "20CD"}
	all := map[string]string{}
	if err := decodePuts(append(encodePuts(a), encodePuts(b)...), all); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"-allgather-shm-1-0": "20AB", "x": "", "-allgather-shm-1-1": "20CD"}
	if !maps.Equal(all, want) {
		t.Errorf("decoded %v, want %v", all, want)
	}
	if err := decodePuts([]byte{5, 'a'}, map[string]string{}); !errors.Is(err, ErrBadBlob) {
		t.Errorf("truncated blob: %v, want ErrBadBlob", err)
	}
}

// FuzzParse: the parser faces the ranks. It must not panic, and whatever it
// accepts must survive a Format/Parse round trip unchanged.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"cmd=init pmi_version=1 pmi_subversion=1\n",
		"cmd=put kvsname=kvs key=-allgather-shm-1-0 value=2093B437\n",
		"cmd=get kvsname=kvs key=PMI_process_mapping\n",
		"cmd=barrier_in\n", "cmd=abort exitcode=3\n", "mcmd=spawn\n", "cmd=a b==c\n", "",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		m, err := Parse(line)
		if err != nil {
			return
		}
		if len(m.Keys) != len(m.Vals) {
			t.Fatalf("keys %v vs vals %v", m.Keys, m.Vals)
		}
		again, err := Parse(Format(m))
		if err != nil {
			t.Fatalf("re-parse of %q: %v", Format(m), err)
		}
		if again.Cmd != m.Cmd || !slices.Equal(again.Keys, m.Keys) || !maps.Equal(again.Vals, m.Vals) {
			t.Fatalf("round trip changed %+v into %+v", m, again)
		}
	})
}

// FuzzDecodePuts: blobs come from other nodes; decoding must not panic and
// a successful decode must re-encode to an equivalent set.
func FuzzDecodePuts(f *testing.F) {
	f.Add(encodePuts(map[string]string{"k": "v", "-bcast-1-0": "2F64"}))
	f.Add([]byte{0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, blob []byte) {
		kv := map[string]string{}
		if err := decodePuts(blob, kv); err != nil {
			return
		}
		back := map[string]string{}
		if err := decodePuts(encodePuts(kv), back); err != nil || !maps.Equal(kv, back) {
			t.Fatalf("re-encode: %v %v vs %v", err, kv, back)
		}
	})
}
