#!/usr/bin/env bash
# torpor demo on an isolated simulated cluster: 5 hosts that share no L2
# segment (each on a subnet of its own behind a router; job-node traffic over
# the shims' VXLAN overlay) and no directory (each shim, and the coordinator,
# in a mount namespace of its own with its own run, image and state
# directories; the daemons talk over the routed network, each in its host's
# network namespace, the coordinator on a host of its own). Checkpoints stay on the hosts, with a replica each; the job's
# output reaches `torpor run` through the coordinator. An MPI job is
# checkpointed while it runs, killed and restarted, suspended and restarted
# on other hosts, and has a job-node migrated. Its final checksum must equal
# an undisturbed run's. The daemons run as root; the job belongs to an
# ordinary user the demo creates (and removes), who runs every torpor command.
#
# Needs root and `make deps build workloads` (make demo-isolated does that).
set -euo pipefail
cd "$(dirname "$0")/.."

ARGS=(-i 400 -m 32 -s 20000 -p 50)
NAME=iso$$
DIR=$(mktemp -d /tmp/torpor-demo-iso.XXXXXX)
chmod 755 "$DIR"
install -m 755 bin/torpor "$DIR/torpor"
install -m 755 bench/workloads/bin/ring.openmpi "$DIR/ring.openmpi"
TORPOR=$DIR/torpor
RING=$DIR/ring.openmpi
RUNDIR=$DIR/run
export TORPOR_SOCKET=$DIR/coordinator.sock
PIDS=()
USERNAME=torpor-demo$$
# shellcheck source=scripts/demo-lib.sh
. scripts/demo-lib.sh
# inhost H CMD...: CMD in host H's (h<i>, or coord) mount namespace.
inhost() { local h=$1; shift; nsenter --mount="/run/torpor-sim/$NAME/$h" -- "$@"; }
# daemon H CMD... &: CMD in host H's mount and network namespaces, in the
# background. The subshell that runs the function becomes nsenter, which
# becomes CMD: $! is the daemon's PID, which cleanup ends.
daemon() {
	local h=$1; shift
	exec nsenter --mount="/run/torpor-sim/$NAME/$h" --net="/run/netns/torpor-$NAME-$h" -- "$@"
}

cleanup() {
	set +e
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
	"$TORPOR" sim down "$NAME" >/dev/null 2>&1
	userdel "$USERNAME" 2>/dev/null
	if [ -n "${KEEP:-}" ]; then echo "kept $DIR"; else rm -rf "$DIR"; fi
}
trap cleanup EXIT
useradd --no-create-home --user-group --shell /usr/sbin/nologin "$USERNAME"

step "torpor doctor"
"$TORPOR" doctor | tail -1

step "undisturbed reference: plain mpirun -n 6 ring ${ARGS[*]}"
REF=$(mpirun --allow-run-as-root --oversubscribe -n 6 "$RING" "${ARGS[@]}" | awk -F'checksum=' '/done/{print $2}')
echo "   reference checksum: $REF"

step "isolated cluster: 5 hosts, no shared segment, no shared directory ($RUNDIR, $DIR/images and $DIR/state are each host's own)"
"$TORPOR" sim up --isolated --private "$RUNDIR,$DIR/images,$DIR/state" --backing "$DIR/hosts" "$NAME" 5 | sed 's/^/   /'
PEERS=$(seq -s, -f '10.250.%g.2' 1 5)
COORD=10.250.0.2 # the coordinator's host on the routed network
"$TORPOR" coordinator --init-pki --pki "$DIR/pki" --pki-hosts "$COORD,$PEERS" >/dev/null
PORT=$((20000 + $$ % 10000))
daemon coord "$TORPOR" coordinator --state-dir "$DIR/state" --checkpoint-dir "$DIR/state/ckpt" --listen $COORD:$PORT \
	--pki "$DIR/pki" --local-checkpoints 2>"$DIR/coordinator.log" &
COORD_PID=$!
PIDS+=($COORD_PID)
for i in 1 2 3 4 5; do
	daemon h$i "$TORPOR" shim --host h$i --netns torpor-$NAME-h$i --join $COORD:$PORT --listen 10.250.$i.2:$PORT --pki "$DIR/pki" \
		--run-dir "$RUNDIR" --image-dir "$DIR/images" --vxlan "$PEERS" --cgroup-parent /torpor/$NAME \
		--log-level warn 2>"$DIR/shim-h$i.log" &
	PIDS+=($!)
done
wait_shims "$COORD_PID" 5

step "as $USERNAME: torpor run -n 6 --host h1:2,h2:2,h3:2 ring ${ARGS[*]} (its output comes through the coordinator)"
asuser "$TORPOR" run --restart-on-failure 1 --run-dir "$RUNDIR" --name ring -n 6 --host h1:2,h2:2,h3:2 \
	"$RING" "${ARGS[@]}" >"$DIR/run.out" 2>"$DIR/run.err" &
RUN=$!
PIDS+=($RUN)
JOB=
for _ in $(seq 150); do
	JOB=$("$TORPOR" ps 2>/dev/null | awk '$1 == "ring" && $2 == "running" {print $1}')
	[ -n "$JOB" ] && grep -q 'iter=100 ' "$DIR/run.out" 2>/dev/null && break
	sleep 0.2
done
[ -n "$JOB" ] || { echo "job did not start"; cat "$DIR/run.err"; exit 1; }
asuser "$TORPOR" ps | sed 's/^/   /'
grep 'iter=' "$DIR/run.out" | tail -1 | sed 's/^/   progress: /'

step "as $USERNAME: checkpoint while it runs (images stay on the hosts; one replica each, copied in the background)"
t=$(now)
CKPT=$(asuser "$TORPOR" checkpoint "$JOB" 2>/dev/null)
echo "   handle: $CKPT"; took "$t"
for _ in $(seq 300); do asuser "$TORPOR" ls "$JOB" 2>/dev/null | grep -q "copies: replicated" && break; sleep 0.1; done
asuser "$TORPOR" ls "$JOB" | sed 's/^/   /'

step "nothing is shared: what each host sees at the same paths"
for h in h1 h2; do
	echo "   $h: $(inhost $h findmnt -n -o SOURCE "$RUNDIR")"
	echo "   $h: ls $RUNDIR/jobs/$JOB: $(inhost $h ls "$RUNDIR/jobs/$JOB" | grep -E '\.out$' | xargs)"
	echo "   $h: ls $DIR/images/checkpoints/$CKPT: $(inhost $h ls "$DIR/images/checkpoints/$CKPT" | xargs)"
	echo "   $h: ls $DIR/state: $(inhost $h ls -A "$DIR/state" | xargs)"
done
echo "   coordinator: ls $DIR/state/ckpt/$CKPT: $(inhost coord ls "$DIR/state/ckpt/$CKPT" | xargs); nodes/: $(inhost coord ls -A "$DIR/state/ckpt/$CKPT/nodes" | xargs)"
echo "   this machine: ls $RUNDIR: $(ls -A "$RUNDIR" | xargs)"
echo "   the coordinator's TCP peers, in its host's network namespace (the shims, over the router):"
nsenter --net="/run/netns/torpor-$NAME-coord" ss -Htn state established "( sport = :$PORT )" | awk '{print "     " $3 " <- " $4}' | sort -u

step "kill -9 every process of the job (three hosts fail at once)"
sleep 2
for procs in /sys/fs/cgroup/unified/torpor/$NAME/*/"$JOB"/*/cgroup.procs; do
	for pid in $(cat "$procs"); do kill -9 "$pid" 2>/dev/null || true; done
done
t=$(now)
for _ in $(seq 300); do grep -q "restart 1 of 1" "$DIR/run.err" && break; sleep 0.1; done
for _ in $(seq 300); do "$TORPOR" ps | grep -q "^$JOB  *running" && break; sleep 0.1; done
grep 'failed\|restart' "$DIR/run.err" | sed 's/^/   /'
echo "   job running again from $CKPT, its images read from the hosts' stores"; took "$t"

step "as $USERNAME: suspend, and restart on other hosts (each fetches its images from a host that holds them)"
sleep 1
SUSP=$(asuser "$TORPOR" suspend "$JOB" 2>/dev/null | tail -1)
echo "   suspended: $SUSP"
t=$(now)
asuser "$TORPOR" restart "$SUSP" --host n0=h4 --host n1=h5 --host n2=h1 2>&1 | sed 's/^/   /'
took "$t"
asuser "$TORPOR" ps | sed 's/^/   /'

step "as $USERNAME: migrate job-node n1 from h5 to h2 (images streamed from shim to shim)"
sleep 1
t=$(now)
asuser "$TORPOR" migrate "$JOB" --node n1 --to h2 2>&1 | sed 's/^/   /'
took "$t"
asuser "$TORPOR" ps | sed 's/^/   /'

step "wait for the job to finish"
wait "$RUN" || { echo "torpor run failed"; cat "$DIR/run.err"; exit 1; }
GOT=$(awk -F'checksum=' '/done/{print $2}' "$DIR/run.out" | tail -1)
echo "   torpor checksum:    $GOT"
echo "   reference checksum: $REF"
if [ -n "$GOT" ] && [ "$GOT" = "$REF" ]; then
	printf '\n\033[1mPASS\033[0m: on hosts sharing no disk and no segment: checkpointed, killed, restarted, restarted elsewhere and migrated; same result as the undisturbed run.\n'
else
	printf '\n\033[1mFAIL\033[0m: checksums differ\n'
	exit 1
fi
