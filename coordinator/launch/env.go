package launch

import (
	"fmt"
	"path/filepath"
)

// RankEnv returns the environment entries (NAME=value) the options add to
// every rank: each -x variable, then each --mca KEY VALUE as
// OMPI_MCA_KEY=VALUE (so --mca wins over -x OMPI_MCA_KEY, as in mpirun).
// `-x NAME` takes its value through lookup (os.LookupEnv in production);
// names lookup does not know are returned in missing, for a warning.
func (o Options) RankEnv(lookup func(string) (string, bool)) (env, missing []string) {
	for _, e := range o.Env {
		v := e.Value
		if e.FromCaller {
			var ok bool
			if v, ok = lookup(e.Name); !ok {
				missing = append(missing, e.Name)
				continue
			}
		}
		env = append(env, e.Name+"="+v)
	}
	for _, p := range o.MCA {
		env = append(env, "OMPI_MCA_"+p.Key+"="+p.Value)
	}
	return env, missing
}

// Name is the job's name: --job-name, or the program's base name.
func (o Options) Name() string {
	if o.JobName != "" {
		return o.JobName
	}
	return filepath.Base(o.Program)
}

// Stdout and stderr stream names for TagPrefix.
const (
	StreamStdout = "stdout"
	StreamStderr = "stderr"
)

// TagPrefix is the --tag-output line prefix, Open MPI's format:
// TagPrefix(1, 0, StreamStdout) == "[1,0]<stdout>:".
func TagPrefix(job, rank int, stream string) string {
	return fmt.Sprintf("[%d,%d]<%s>:", job, rank, stream)
}
