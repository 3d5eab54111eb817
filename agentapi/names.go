package agentapi

import "fmt"

// MaxNameLen is the longest job id, job-node name, host name or hostname.
//
// Every such name becomes part of something the kernel names: a job-node's
// hostname is its UTS name (sethostname(2) takes at most HOST_NAME_MAX = 64
// bytes; 63 is also a DNS label's limit), and job, job-node and host names
// are path components of its cgroup, of the catalog's and the shim's
// directories, and parts of its network namespace's name under /run/netns
// ("torpor-<host>-<job>-<node>": 7+3*63+2 = 198 bytes, below NAME_MAX = 255).
// The host veth's name is a hash (shim/agent vethName), so IFNAMSIZ does not
// bind. The one tighter limit is a job-node's PMIx link socket,
// <run dir>/jobs/<job>/<node>.link, which must fit sun_path (107 bytes); it
// depends on the run directory too, so the link server checks it and says
// so (pmix/link ErrPathTooLong) rather than every name paying for it.
const MaxNameLen = 63

// NameRule says, for error and usage messages, what a name may look like.
var NameRule = fmt.Sprintf("use 1 to %d letters, digits, '.', '_' or '-', starting with a letter or digit", MaxNameLen)

// ValidName reports whether s follows NameRule.
func ValidName(s string) bool {
	if s == "" || len(s) > MaxNameLen || !alnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !alnum(c) && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

func alnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

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
