// Package config reads torpor's host configuration file.
//
// The file is optional. Every field has a default that works on a single
// machine; a cluster sets the coordinator address and certificate paths.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"gopkg.in/yaml.v3"
)

// DefaultPath is read when neither --config nor $TORPOR_CONFIG is given.
const DefaultPath = "/etc/torpor/torpor.yaml"

// EnvPath names the environment variable that points at the configuration file.
const EnvPath = "TORPOR_CONFIG"

// Config is the content of the configuration file.
type Config struct {
	// CRIU is the CRIU binary to use; empty means: look in the private prefix, then $PATH.
	CRIU string `yaml:"criu"`
	// StateDir holds the coordinator's state, keys and certificates.
	StateDir string `yaml:"state_dir"`
	// CheckpointDir is the root of the checkpoint catalog (<dir>/<job>/<seq>/).
	CheckpointDir string `yaml:"checkpoint_dir"`
	// CgroupRoot is the cgroup v2 directory, relative to the cgroup2 mount, under
	// which job-node cgroups are created.
	CgroupRoot string `yaml:"cgroup_root"`
	// Keep are paths whose files every job `torpor run` starts here keeps at
	// every checkpoint, besides its own --keep paths (relative paths are
	// relative to the job's working directory).
	Keep []string `yaml:"keep"`
	// KeepMax is the default of `torpor run --keep-max` (e.g. "4G").
	KeepMax string `yaml:"keep_max"`
	// MetricsListen is the default of `torpor coordinator --metrics-listen`
	// and ShimMetricsListen that of `torpor shim --metrics-listen`: where the
	// daemon serves Prometheus metrics (HTTP, /metrics). Empty: no metrics.
	MetricsListen     string `yaml:"metrics_listen"`
	ShimMetricsListen string `yaml:"shim_metrics_listen"`
	// PostCopyThreshold is the default of `torpor coordinator
	// --postcopy-threshold`: the private memory of a job-node from which an
	// automatic migration is post-copy (e.g. "128M"; "off": never).
	PostCopyThreshold string `yaml:"postcopy_threshold"`
	// Slurm is the default of `torpor coordinator --slurm`: a user's
	// job-nodes run only on the nodes of the user's running Slurm job.
	Slurm bool `yaml:"slurm"`
	// UserSocket is the default of `torpor shim --user-socket`: the unix
	// socket on which the shim relays its host's users' commands to the
	// coordinator. Empty: none.
	UserSocket string `yaml:"user_socket"`
	// NodeNet is the default of `torpor coordinator --node-net`: the IPv4
	// network job-node addresses come from.
	NodeNet string `yaml:"node_net"`
	// ImageDir is the default of `torpor shim --image-dir`: the host's own
	// directory for images, through which migrations stream them from
	// shim to shim. Empty: none (migrations use the checkpoint directory).
	ImageDir string `yaml:"image_dir"`
	// VXLANPeers is the default of `torpor shim --vxlan`: every host's
	// address on the network that joins the hosts (one list for all
	// hosts); job-node traffic between hosts goes over VXLAN to them.
	VXLANPeers []string `yaml:"vxlan_peers"`
	// VXLANID is the default of `torpor shim --vxlan-id`.
	VXLANID int `yaml:"vxlan_id"`
	// LocalCheckpoints, Replicas and ReplicaRate are the defaults of
	// `torpor coordinator --local-checkpoints`, --replicas and
	// --replica-rate (e.g. "64M").
	LocalCheckpoints bool   `yaml:"local_checkpoints"`
	Replicas         int    `yaml:"replicas"`
	ReplicaRate      string `yaml:"replica_rate"`
}

// Defaults returns the configuration used when no file exists.
func Defaults() Config {
	return Config{
		StateDir:      "/var/lib/torpor",
		CheckpointDir: "/var/lib/torpor/checkpoints",
		CgroupRoot:    "torpor",
	}
}

// Load reads the file at path over the defaults. An empty path means
// $TORPOR_CONFIG, then DefaultPath; a missing default file is not an error,
// a missing explicitly named one is.
func Load(path string) (Config, error) {
	cfg := Defaults()
	explicit := path != ""
	if !explicit {
		path = os.Getenv(EnvPath)
		explicit = path != ""
	}
	if !explicit {
		path = DefaultPath
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return cfg, nil
	}
	if err != nil {
		return cfg, fmt.Errorf("read config: %w", err)
	}
	return Parse(data, path)
}

// Parse decodes a configuration over the defaults. Unknown keys are errors,
// so that a misspelt setting is not silently ignored.
func Parse(data []byte, name string) (Config, error) {
	cfg := Defaults()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return cfg, fmt.Errorf("parse config %s: %w", name, err)
	}
	return cfg, nil
}
