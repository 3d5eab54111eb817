package agentapi

import (
	"errors"
	"strconv"
	"strings"
	"testing"
)

func TestCheckName(t *testing.T) {
	long := strings.Repeat("a", MaxNameLen)
	for _, tt := range []struct {
		in string
		ok bool
	}{
		{"ring-7f3a", true},
		{"n0", true},
		{"a.b_c-D9", true},
		{"0start", true},
		{long, true},
		{long + "a", false},
		{"", false},
		{".hidden", false},
		{"-flag", false},
		{"_x", false},
		{"a/b", false},
		{"..", false},
		{"a b", false},
		{"é", false},
		{"a\x00", false},
	} {
		err := CheckName("job id", tt.in)
		if ValidName(tt.in) != tt.ok || (err == nil) != tt.ok {
			t.Errorf("%q: ValidName %v, CheckName %v; want ok=%v", tt.in, ValidName(tt.in), err, tt.ok)
		}
		if err == nil {
			continue
		}
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%q: %v does not wrap ErrInvalid", tt.in, err)
		}
		// The message names the kind, the rule and the limit.
		for _, want := range []string{"job id", NameRule, strconv.Itoa(MaxNameLen)} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%q: %q does not say %q", tt.in, err, want)
			}
		}
	}
}
