#!/usr/bin/env bash
# mpich-stress.sh: run the MPICH ring and stencil workloads N times each under
# `torpor run` on this machine alone (an embedded coordinator), with 4 and with
# 6 ranks, and count the runs that finished in
# time and the ones whose checksum is the one plain hydra (mpirun.mpich)
# prints. A run that printed its result but never left MPI_Finalize is a hang.
#
#   N=100        runs of each program with each rank count (default 100)
#   NPS="4 6"    rank counts
#   PROGS="ring stencil"
#   TIMEOUT=60   seconds a run may take before it counts as hung
#   STACKS=1     before ending a hung run, save the stacks of its processes
#                (gdb, else /proc/PID/stack) in the log directory
#   KEEP=1       keep the log directory even when every run passed
#   RUN_FLAGS=   more flags for `torpor run`, e.g. "-x UCX_LOG_LEVEL=debug"
#   STACK=mpich42  the workloads' MPICH: mpich42 (torpor's private 4.2, the
#                default) or mpich (Debian 12's 4.0.2, which hangs in
#                MPI_Finalize in some runs: README, "MPICH: use 4.2")
#
# Everything runs privately: an embedded coordinator on its own socket, its
# own state, checkpoint and run directories and its own cgroup root, under a
# temporary directory that is printed. Exit status 0 only if every run
# finished with the right checksum. Run as root, after `make build workloads`.
set -uo pipefail
cd "$(dirname "$0")/.."

n=${N:-100}
nps=${NPS:-4 6}
progs=${PROGS:-ring stencil}
limit=${TIMEOUT:-60}
torpor=$PWD/bin/torpor
wl=$PWD/bench/workloads/bin

declare -A args=(
	[ring]="-i 100 -m 4 -p 50"
	[stencil]="-n 256 -i 100 -p 50"
)

stack=${STACK:-mpich42}
for p in $progs; do
	[ -x "$wl/$p.$stack" ] || { echo "mpich-stress: $wl/$p.$stack missing: run make deps workloads" >&2; exit 2; }
	[ -n "${args[$p]:-}" ] || { echo "mpich-stress: no arguments known for $p" >&2; exit 2; }
done
[ -x "$torpor" ] || { echo "mpich-stress: $torpor missing: run make build" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "mpich-stress: run as root" >&2; exit 2; }

dir=$(mktemp -d /tmp/torpor-mpich-stress.XXXXXX)
cgmnt=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
cg=$cgmnt/torpor-mpich-stress-${dir##*.}
cat >"$dir/torpor.yaml" <<EOF
state_dir: $dir/state
checkpoint_dir: $dir/ckpt
cgroup_root: ${cg#"$cgmnt"/}
EOF
export TORPOR_CONFIG=$dir/torpor.yaml TORPOR_SOCKET=$dir/coord.sock
echo "mpich-stress: logs in $dir"

run_pid= job=
# The embedded coordinator's network is named after the state directory.
netns_prefix=torpor-e$(printf %s "$dir/state" | sha256sum | cut -c1-8)-
# cleanup ends a run still going (its own PID only) and its job, which
# outlives its `torpor run`, then removes whatever is left: the network
# namespaces and the private cgroup tree.
cleanup() {
	if [ -n "$run_pid" ] && kill -0 "$run_pid" 2>/dev/null; then
		kill -TERM "$run_pid" 2>/dev/null
		for _ in $(seq 100); do kill -0 "$run_pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$run_pid" 2>/dev/null
		wait "$run_pid" 2>/dev/null
	fi
	if [ -n "$job" ]; then
		timeout 120 "$torpor" cancel "$job" >/dev/null 2>&1
	fi
	for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$netns_prefix"); do
		ip netns del "$ns"
	done
	if [ -d "$cg" ]; then
		# Kill what is left in the private tree, then remove it bottom up.
		find "$cg" -name cgroup.kill -exec sh -c 'echo 1 >"$1"' _ {} \; 2>/dev/null
		sleep 0.2
		find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null
	fi
	run_pid= job=
}
trap 'cleanup; exit 130' INT TERM

# stacks saves what every process of the private cgroup tree waits in.
stacks() {
	local out=$1 pid
	for pid in $(cat $(find "$cg" -name cgroup.procs) 2>/dev/null | sort -un); do
		{
			echo "=== pid $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"
			echo "wchan: $(cat "/proc/$pid/wchan" 2>/dev/null)"
			cat "/proc/$pid/stack" 2>/dev/null
			if command -v gdb >/dev/null; then
				timeout 60 gdb -p "$pid" -batch -nx -ex 'set pagination off' -ex 'thread apply all bt' 2>/dev/null |
					grep -E '^(Thread|#)'
			fi
		} >>"$out"
	done
}

# reference prints the checksum of prog with np ranks under hydra.
reference() {
	timeout 300 mpirun.mpich -n "$2" "$wl/$1.$stack" ${args[$1]} 2>&1 |
		sed -nE 's/^.*: done .*checksum=(0x[0-9a-f]+).*$/\1/p'
}

fail=0
summary=()
for p in $progs; do
	for np in $nps; do
		want=$(reference "$p" "$np")
		if [ -z "$want" ]; then
			echo "mpich-stress: no reference checksum from mpirun.mpich -n $np $p.$stack" >&2
			exit 2
		fi
		finished=0 right=0 hung=0
		for i in $(seq "$n"); do
			log=$dir/$p-n$np-$i.log
			start=$SECONDS
			job=$p-n$np-$i
			"$torpor" run --run-dir "$dir/run" --name "$job" ${RUN_FLAGS:-} -n "$np" "$wl/$p.$stack" ${args[$p]} >"$log" 2>&1 &
			run_pid=$!
			status=
			while [ -z "$status" ]; do
				if ! kill -0 "$run_pid" 2>/dev/null; then
					wait "$run_pid"
					status=$?
				elif [ $((SECONDS - start)) -ge "$limit" ]; then
					status=hung
				else
					sleep 0.2
				fi
			done
			got=$(sed -nE 's/^.*: done .*checksum=(0x[0-9a-f]+).*$/\1/p' "$log" | tail -n 1)
			what="exit $status"
			if [ "$status" = hung ]; then
				hung=$((hung + 1))
				what="hung after $limit s"
				[ -n "$got" ] && what="$what (result printed: stuck past it)"
				[ "${STACKS:-}" = 1 ] && stacks "$dir/$p-n$np-$i.stacks"
				cleanup
			else
				run_pid= job=
			fi
			[ "$status" = 0 ] && finished=$((finished + 1))
			[ "$got" = "$want" ] && right=$((right + 1))
			if [ "$status" = 0 ] && [ "$got" = "$want" ]; then
				rm -f "$log"
			else
				echo "$p -n $np run $i: $what, checksum ${got:-none} (want $want): $log"
			fi
		done
		line="$p -n $np: finished $finished/$n, checksum right $right/$n"
		[ "$hung" -gt 0 ] && line="$line ($hung hung)"
		echo "$line"
		summary+=("$line")
		[ "$finished" = "$n" ] && [ "$right" = "$n" ] || fail=1
	done
done
cleanup
echo "---"
printf '%s\n' "${summary[@]}"
if [ "$fail" = 0 ] && [ "${KEEP:-}" != 1 ]; then
	rm -rf "$dir"
fi
exit "$fail"
