package catalog

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// FormatVersion is the manifest format this package writes and the only major
// version it reads. Fields added within a major version are ignored by older readers.
const FormatVersion = 1

// File names inside a checkpoint.
const (
	JobManifestName  = "manifest.json"
	NodeManifestName = "node-manifest.json"
	nodesDirName     = "nodes"
	sharedDirName    = "shared"
)

// maxManifestSize bounds what the parser reads; a real job manifest is a few KiB.
const maxManifestSize = 16 << 20

// Kind says why a checkpoint was taken.
type Kind string

const (
	KindCheckpoint Kind = "checkpoint" // periodic or on demand, job kept running
	KindSuspend    Kind = "suspend"    // job stopped after the dump
	KindMigrate    Kind = "migrate"    // images of a job-node being moved
)

// Duration is a time.Duration that reads and writes JSON as "1.5s" (numbers are
// accepted as nanoseconds).
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("parse duration %q: %w", s, err)
		}
		*d = Duration(v)
		return nil
	}
	var n int64
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("duration must be a string like \"1.5s\" or integer nanoseconds")
	}
	*d = Duration(n)
	return nil
}

// NodeRef describes one job-node of a checkpoint. Commit fills the digest and sizes
// from the node manifest; the coordinator supplies placement (Host, IP, Hostname).
type NodeRef struct {
	Name           string `json:"name"`
	Host           string `json:"host,omitempty"`     // shim/host the node ran on
	IP             string `json:"ip,omitempty"`       // the job-node's address
	Hostname       string `json:"hostname,omitempty"` // the job-node's UTS hostname
	ManifestSHA256 string `json:"manifest_sha256"`
	TotalBytes     int64  `json:"total_bytes"`
	FileCount      int    `json:"file_count"`
}

// JobManifest is the signed record of one committed checkpoint.
type JobManifest struct {
	Format       int                 `json:"format"`
	Handle       string              `json:"handle"`
	Job          string              `json:"job"`
	Seq          uint64              `json:"seq"`
	Created      time.Time           `json:"created"`
	Kind         Kind                `json:"kind"`
	LeaveRunning bool                `json:"leave_running"`
	Spec         json.RawMessage     `json:"spec,omitempty"` // opaque to the catalog: what the coordinator needs to restart
	Nodes        []NodeRef           `json:"nodes"`
	Phases       map[string]Duration `json:"phases,omitempty"` // phase name -> duration (prepare, freeze, drain, lock, dump, ...)
	TotalBytes   int64               `json:"total_bytes"`
	// HostLocal says the images are not in the catalog: each job-node's
	// are in the checkpoint store of the shim that dumped it (its Host)
	// and of the hosts that copied them, and this manifest is all the
	// catalog keeps of them. Commit takes each node's digest and sizes as
	// given; the shims verify the images against the digest as they copy
	// and restore them.
	HostLocal bool `json:"host_local,omitempty"`
}

// Node returns the NodeRef called name.
func (m JobManifest) Node(name string) (NodeRef, bool) {
	for _, n := range m.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return NodeRef{}, false
}

// envelope is the on-disk form: the HMAC covers the exact bytes of payload.
type envelope struct {
	Format  int             `json:"format"`
	HMAC    string          `json:"hmac"`
	Payload json.RawMessage `json:"payload"`
}

func manifestMAC(key, payload []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write(payload)
	return h.Sum(nil)
}

// signJobManifest returns the bytes of manifest.json for m.
func signJobManifest(m JobManifest, key []byte) ([]byte, error) {
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("sign job manifest: %w", err)
	}
	payload, err := json.MarshalIndent(m, "  ", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode job manifest: %w", err)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "{\n  \"format\": %d,\n  \"hmac\": %q,\n  \"payload\": ", m.Format, hex.EncodeToString(manifestMAC(key, payload)))
	b.Write(payload)
	b.WriteString("\n}\n")
	return b.Bytes(), nil
}

func corruptManifest(reason string, err error) error {
	return &CorruptError{File: JobManifestName, Reason: reason, Err: err}
}

// ParseJobManifest checks the signature of a manifest.json under key and decodes it.
// Anything that is not a well-formed, correctly signed manifest is rejected: a
// *CorruptError (errors.Is ErrCorrupt), or ErrUnsupportedFormat for a format this
// version does not know.
func ParseJobManifest(data, key []byte) (JobManifest, error) {
	if len(key) == 0 {
		return JobManifest{}, errors.New("parse job manifest: no signing key")
	}
	if len(data) > maxManifestSize {
		return JobManifest{}, corruptManifest(fmt.Sprintf("%d bytes, larger than any manifest torpor writes", len(data)), nil)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var env envelope
	if err := dec.Decode(&env); err != nil {
		return JobManifest{}, corruptManifest("not a torpor manifest", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return JobManifest{}, corruptManifest("trailing data after the manifest", nil)
	}
	if env.Format == 0 {
		return JobManifest{}, corruptManifest("no format version: not a signed torpor manifest", nil)
	}
	if env.Format != FormatVersion {
		return JobManifest{}, fmt.Errorf("%w: manifest format %d, this torpor reads format %d: use the torpor version that wrote the checkpoint", ErrUnsupportedFormat, env.Format, FormatVersion)
	}
	sig, err := hex.DecodeString(env.HMAC)
	if err != nil || len(sig) != sha256.Size {
		return JobManifest{}, corruptManifest("missing or malformed signature: the manifest is not signed", nil)
	}
	if len(env.Payload) == 0 || bytes.Equal(env.Payload, []byte("null")) {
		return JobManifest{}, corruptManifest("empty payload", nil)
	}
	if !hmac.Equal(sig, manifestMAC(key, env.Payload)) {
		return JobManifest{}, corruptManifest("signature (HMAC-SHA256) does not match: the manifest was modified, or signed with another key than this coordinator's", nil)
	}
	var m JobManifest
	if err := json.Unmarshal(env.Payload, &m); err != nil {
		return JobManifest{}, corruptManifest("signed payload does not decode", err)
	}
	if m.Format != env.Format {
		return JobManifest{}, corruptManifest(fmt.Sprintf("payload format %d differs from envelope format %d", m.Format, env.Format), nil)
	}
	if err := m.validate(); err != nil {
		return JobManifest{}, corruptManifest("signed payload is inconsistent", err)
	}
	return m, nil
}

// validate checks the internal consistency of a manifest (not the files).
func (m JobManifest) validate() error {
	job, seq, err := ParseHandle(m.Handle)
	if err != nil {
		return err
	}
	if job != m.Job || seq != m.Seq {
		return fmt.Errorf("handle %q does not match job %q seq %d", m.Handle, m.Job, m.Seq)
	}
	if len(m.Nodes) == 0 {
		return errors.New("no nodes")
	}
	seen := make(map[string]bool, len(m.Nodes))
	var total int64
	for _, n := range m.Nodes {
		if err := validName("job-node name", n.Name); err != nil {
			return err
		}
		if seen[n.Name] {
			return fmt.Errorf("node %q listed twice", n.Name)
		}
		seen[n.Name] = true
		if !isHexDigest(n.ManifestSHA256) {
			return fmt.Errorf("node %q: malformed manifest digest", n.Name)
		}
		if n.TotalBytes < 0 || n.FileCount < 0 {
			return fmt.Errorf("node %q: negative size or file count", n.Name)
		}
		total += n.TotalBytes
		if total < 0 {
			return errors.New("total size overflows")
		}
	}
	if total != m.TotalBytes {
		return fmt.Errorf("total_bytes %d is not the sum of the nodes' %d", m.TotalBytes, total)
	}
	if len(m.Spec) > 0 && !json.Valid(m.Spec) {
		return errors.New("spec is not valid JSON")
	}
	return nil
}

func isHexDigest(s string) bool {
	if len(s) != 2*sha256.Size || strings.ToLower(s) != s {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}
