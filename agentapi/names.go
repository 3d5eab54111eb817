package agentapi

import (
	"fmt"

	"github.com/torpor-hpc/torpor/internal/names"
)

// MaxNameLen is the longest job id, job-node name, host name or hostname
// (internal/names says why).
const MaxNameLen = names.MaxLen

// NameRule says, for error and usage messages, what a name may look like.
var NameRule = names.Rule

// ValidName reports whether s follows NameRule.
func ValidName(s string) bool { return names.Valid(s) }

// CheckName is the one check of job ids, job-node names, host names and
// hostnames, on the coordinator's side, the shim's and the catalog's. kind
// says which of them s is ("job id", "job-node name", ...), for the message.
// The error wraps ErrInvalid and says what kind of name is wrong, the rule
// and the limit.
func CheckName(kind, s string) error {
	switch {
	case ValidName(s):
		return nil
	case s == "":
		return fmt.Errorf("%w: empty %s: %s", ErrInvalid, kind, NameRule)
	case len(s) > MaxNameLen:
		return fmt.Errorf("%w: %s %q is %d characters long: %s", ErrInvalid, kind, s, len(s), NameRule)
	default:
		return fmt.Errorf("%w: %s %q: %s", ErrInvalid, kind, s, NameRule)
	}
}
