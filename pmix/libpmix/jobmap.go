package libpmix

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// ErrBadJobMap is wrapped by JobMap validation failures.
var ErrBadJobMap = errors.New("invalid job map")

// Attribute keys (pmix_common.h, PMIx 4.2).
const (
	KeyServerTmpDir       = "pmix.srvr.tmpdir"
	KeySystemTmpDir       = "pmix.sys.tmpdir"
	KeyServerNspace       = "pmix.srv.nspace"
	KeyServerRank         = "pmix.srv.rank"
	KeyServerToolSupport  = "pmix.srvr.tool"
	KeyServerSysSupport   = "pmix.srvr.sys"
	KeyHostname           = "pmix.hname"
	KeyJobID              = "pmix.jobid"
	KeyJobSize            = "pmix.job.size"
	KeyUnivSize           = "pmix.univ.size"
	KeyMaxProcs           = "pmix.max.size"
	KeyNumNodes           = "pmix.num.nodes"
	KeyJobNumApps         = "pmix.job.napps"
	KeyTmpDir             = "pmix.tmpdir"
	KeyNsDir              = "pmix.nsdir"
	KeyTDirRMClean        = "pmix.tdir.rmclean"
	KeyAppNum             = "pmix.appnum"
	KeyAppLdr             = "pmix.aldr"
	KeyAppSize            = "pmix.app.size"
	KeyNodeMap            = "pmix.nmap"
	KeyProcMap            = "pmix.pmap"
	KeyLocalPeers         = "pmix.lpeers"
	KeyLocalSize          = "pmix.local.size"
	KeyNodeSize           = "pmix.node.size"
	KeyLocalLdr           = "pmix.lldr"
	KeyNodeInfoArray      = "pmix.node.arr"
	KeyNodeID             = "pmix.nodeid"
	KeyProcData           = "pmix.pdata"
	KeyRank               = "pmix.rank"
	KeyGlobalRank         = "pmix.grank"
	KeyAppRank            = "pmix.apprank"
	KeyLocalRank          = "pmix.lrank"
	KeyNodeRank           = "pmix.nrank"
	KeyProcDir            = "pmix.pdir"
	KeyCollectData        = "pmix.collect"
	KeyLocalCollStatus    = "pmix.loc.col.st"
	KeyEventNonDefault    = "pmix.evnondef"
	KeyEventDoNotCache    = "pmix.evnocache"
	KeyEventHdlrName      = "pmix.evname"
	KeyEventAffectedProc  = "pmix.evproc"
	KeyJobCtrlCheckpoint  = "pmix.jctrl.ckpt"
	KeyTimeout            = "pmix.timeout"
	KeyEventHdlrFirst     = "pmix.evfirst"
	KeyRemoteConnections  = "pmix.srvr.remote"
	KeyJobCtrlCkptSignal  = "pmix.jctrl.ckptsig" // also (a 4.2.2 header bug) PMIX_JOB_CTRL_CHECKPOINT_TIMEOUT
	KeyLocalCollectStatus = KeyLocalCollStatus
)

// NodeMap is one job-node: its hostname (as the ranks see it) and the global
// ranks it runs, in ascending order.
type NodeMap struct {
	Hostname string
	Ranks    []Rank
}

// JobMap describes a namespace for PMIx_server_register_nspace as seen from one
// job-node. Ranks are 0..N-1, each on exactly one node; one application.
type JobMap struct {
	Nspace string
	JobID  string // PMIX_JOBID; defaults to Nspace
	Nodes  []NodeMap
	Local  int    // index in Nodes of the node this server hosts
	TmpDir string // PMIX_TMPDIR: the job's temporary directory on this node
	NsDir  string // PMIX_NSDIR; per-rank PMIX_PROCDIR is NsDir/<rank>
}

// Size is the number of ranks in the job.
func (m JobMap) Size() int {
	n := 0
	for _, nd := range m.Nodes {
		n += len(nd.Ranks)
	}
	return n
}

// LocalRanks are the ranks this node hosts.
func (m JobMap) LocalRanks() []Rank {
	if m.Local < 0 || m.Local >= len(m.Nodes) {
		return nil
	}
	return m.Nodes[m.Local].Ranks
}

// NodeOf returns the index of the node that runs rank, or -1.
func (m JobMap) NodeOf(rank Rank) int {
	for i, nd := range m.Nodes {
		if slices.Contains(nd.Ranks, rank) {
			return i
		}
	}
	return -1
}

// Validate checks the map is complete and consistent.
func (m JobMap) Validate() error {
	if m.Nspace == "" || len(m.Nspace) > 255 {
		return fmt.Errorf("%w: namespace %q must be 1..255 bytes", ErrBadJobMap, m.Nspace)
	}
	if len(m.Nodes) == 0 {
		return fmt.Errorf("%w: no nodes", ErrBadJobMap)
	}
	if m.Local < 0 || m.Local >= len(m.Nodes) {
		return fmt.Errorf("%w: local node index %d out of range 0..%d", ErrBadJobMap, m.Local, len(m.Nodes)-1)
	}
	size := m.Size()
	seen := make([]bool, size)
	hosts := map[string]bool{}
	for i, nd := range m.Nodes {
		if nd.Hostname == "" || strings.ContainsAny(nd.Hostname, ",;") {
			return fmt.Errorf("%w: node %d hostname %q is empty or contains ',' or ';'", ErrBadJobMap, i, nd.Hostname)
		}
		if hosts[nd.Hostname] {
			return fmt.Errorf("%w: hostname %q used by two nodes; give every job-node its own hostname (UTS namespace)", ErrBadJobMap, nd.Hostname)
		}
		hosts[nd.Hostname] = true
		if len(nd.Ranks) == 0 {
			return fmt.Errorf("%w: node %d (%s) has no ranks", ErrBadJobMap, i, nd.Hostname)
		}
		if !slices.IsSorted(nd.Ranks) {
			return fmt.Errorf("%w: node %d ranks %v are not ascending", ErrBadJobMap, i, nd.Ranks)
		}
		for _, r := range nd.Ranks {
			if int(r) >= size {
				return fmt.Errorf("%w: rank %d out of range for a job of %d ranks", ErrBadJobMap, r, size)
			}
			if seen[r] {
				return fmt.Errorf("%w: rank %d placed twice", ErrBadJobMap, r)
			}
			seen[r] = true
		}
	}
	return nil
}

func joinRanks(rs []Rank) string {
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = strconv.FormatUint(uint64(r), 10)
	}
	return strings.Join(s, ",")
}

// Infos returns the full key set registered with the namespace: job-level data,
// node and proc maps (as regexes), this node's data flat, an info array per
// node, and PMIX_PROC_DATA for every rank of the job (PMIX_RANK first).
func (m JobMap) Infos() ([]Info, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	size := uint32(m.Size())
	jobid := m.JobID
	if jobid == "" {
		jobid = m.Nspace
	}
	hosts := make([]string, len(m.Nodes))
	ppn := make([]string, len(m.Nodes))
	for i, nd := range m.Nodes {
		hosts[i] = nd.Hostname
		ppn[i] = joinRanks(nd.Ranks)
	}
	local := m.Nodes[m.Local]
	infos := []Info{
		{KeyJobID, jobid},
		{KeyJobSize, size},
		{KeyUnivSize, size},
		{KeyMaxProcs, size},
		{KeyNumNodes, uint32(len(m.Nodes))},
		{KeyJobNumApps, uint32(1)},
		{KeyAppNum, uint32(0)},
		{KeyAppLdr, Rank(0)},
		{KeyAppSize, size},
		{KeyNodeMap, NodeRegex(strings.Join(hosts, ","))},
		{KeyProcMap, ProcRegex(strings.Join(ppn, ";"))},
		{KeyHostname, local.Hostname},
		{KeyNodeID, uint32(m.Local)},
		{KeyLocalPeers, joinRanks(local.Ranks)},
		{KeyLocalSize, uint32(len(local.Ranks))},
		{KeyNodeSize, uint32(len(local.Ranks))},
		{KeyLocalLdr, local.Ranks[0]},
	}
	if m.TmpDir != "" {
		infos = append(infos, Info{KeyTmpDir, m.TmpDir}, Info{KeyTDirRMClean, true})
	}
	if m.NsDir != "" {
		infos = append(infos, Info{KeyNsDir, m.NsDir})
	}
	for i, nd := range m.Nodes {
		infos = append(infos, Info{KeyNodeInfoArray, []Info{
			{KeyNodeID, uint32(i)},
			{KeyHostname, nd.Hostname},
			{KeyLocalPeers, joinRanks(nd.Ranks)},
			{KeyLocalSize, uint32(len(nd.Ranks))},
			{KeyNodeSize, uint32(len(nd.Ranks))},
			{KeyLocalLdr, nd.Ranks[0]},
		}})
	}
	for i, nd := range m.Nodes {
		for lr, r := range nd.Ranks {
			pd := []Info{
				{KeyRank, r},
				{KeyAppNum, uint32(0)},
				{KeyGlobalRank, r},
				{KeyAppRank, r},
				{KeyLocalRank, uint16(lr)},
				{KeyNodeRank, uint16(lr)},
				{KeyNodeID, uint32(i)},
				{KeyHostname, nd.Hostname},
			}
			if i == m.Local && m.NsDir != "" {
				pd = append(pd, Info{KeyProcDir, filepath.Join(m.NsDir, strconv.FormatUint(uint64(r), 10))})
			}
			infos = append(infos, Info{KeyProcData, pd})
		}
	}
	return infos, nil
}
