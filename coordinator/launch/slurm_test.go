package launch

import (
	"strings"
	"testing"
)

func TestDetectSlurm(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    Slurm
		restart bool
		err     string
	}{
		{name: "no slurm", env: nil, want: Slurm{}},
		{name: "first run", env: map[string]string{"SLURM_JOB_ID": "42"}, want: Slurm{InAllocation: true, JobID: "42"}},
		{name: "first run, count 0", env: map[string]string{"SLURM_JOB_ID": "42", "SLURM_RESTART_COUNT": "0"}, want: Slurm{InAllocation: true, JobID: "42"}},
		{name: "requeued", env: map[string]string{"SLURM_JOB_ID": "42", "SLURM_RESTART_COUNT": "2"},
			want: Slurm{InAllocation: true, JobID: "42", RestartCount: 2}, restart: true},
		{name: "garbage count", env: map[string]string{"SLURM_RESTART_COUNT": "two"}, err: `SLURM_RESTART_COUNT="two": not a count`},
		{name: "negative count", env: map[string]string{"SLURM_RESTART_COUNT": "-1"}, err: "not a count"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DetectSlurm(func(k string) string { return tt.env[k] })
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("DetectSlurm = %+v, %v; want error %q", got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want || got.Restart() != tt.restart {
				t.Fatalf("DetectSlurm = %+v (restart %v), %v; want %+v (restart %v)", got, got.Restart(), err, tt.want, tt.restart)
			}
		})
	}
}
