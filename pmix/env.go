package pmix

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// envSet is an ordered KEY=VALUE set where a later Set wins.
type envSet struct {
	keys []string
	vals map[string]string
}

func newEnvSet() *envSet { return &envSet{vals: map[string]string{}} }

func (e *envSet) set(kv string) {
	k, v, ok := strings.Cut(kv, "=")
	if !ok || k == "" {
		return
	}
	if _, seen := e.vals[k]; !seen {
		e.keys = append(e.keys, k)
	}
	e.vals[k] = v
}

func (e *envSet) list() []string {
	out := make([]string, 0, len(e.keys))
	for _, k := range e.keys {
		out = append(out, k+"="+e.vals[k])
	}
	return out
}

// ompiDirectLaunch is what Open MPI 4.1 ranks need to run under a PMIx server
// with no mpirun: without schizo=^orte every rank thinks it is a singleton.
func ompiDirectLaunch(job string) []string {
	sum := sha256.Sum256([]byte("torpor/" + job))
	key := hex.EncodeToString(sum[:8]) + "-" + hex.EncodeToString(sum[8:16])
	return []string{
		"OMPI_MCA_schizo=^orte",
		"OMPI_MCA_orte_precondition_transports=" + key,
		"OMPI_MCA_hwloc_base_binding_policy=none",
		"OMPI_MCA_orte_externally_bound=1",
	}
}

// rankEnv composes a rank's environment: the base environment without stale
// PMIx/PMI identity, then pmixd's variables for the rank (setup_fork and the
// Open MPI direct-launch settings, or PMI_FD/RANK/SIZE), then the user's extra
// variables.
func rankEnv(base, pm, extra []string) []string {
	e := newEnvSet()
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PMIX_") && !strings.HasPrefix(k, "PMIX_MCA_") {
			continue
		}
		if k == "PMI_FD" || k == "PMI_RANK" || k == "PMI_SIZE" || k == "PMI_PORT" || k == "PMI_ID" {
			continue
		}
		e.set(kv)
	}
	for _, set := range [][]string{pm, extra} {
		for _, kv := range set {
			e.set(kv)
		}
	}
	return e.list()
}
