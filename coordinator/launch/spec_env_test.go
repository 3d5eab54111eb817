package launch

import (
	"slices"
	"testing"
)

func TestJobEnviron(t *testing.T) {
	in := []string{"PATH=/bin", "SLURM_JOB_ID=7", "SLURMD_NODENAME=h1", "PMI_FD=3", "PMIX_RANK=0", "PMIX_MCA_gds=hash",
		"OMPI_COMM_WORLD_RANK=0", "OMPI_MCA_btl=tcp", "HOME=/home/u", "SLURMX=1"}
	want := []string{"PATH=/bin", "PMIX_MCA_gds=hash", "OMPI_MCA_btl=tcp", "HOME=/home/u", "SLURMX=1"}
	if got := JobEnviron(in); !slices.Equal(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}
