// Package names is the one rule for the names torpor puts into paths,
// network namespace names, hostnames and certificates: job ids, job-node
// names, host names and hostnames. agentapi (the protocol's checks) and
// internal/pki (host names in certificates) both use it; it imports
// nothing of torpor, so both can.
package names

import "fmt"

// MaxLen is the longest job id, job-node name, host name or hostname.
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
const MaxLen = 63

// Rule says, for error and usage messages, what a name may look like.
var Rule = fmt.Sprintf("use 1 to %d letters, digits, '.', '_' or '-', starting with a letter or digit", MaxLen)

// Valid reports whether s follows Rule.
func Valid(s string) bool {
	if s == "" || len(s) > MaxLen || !alnum(s[0]) {
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
