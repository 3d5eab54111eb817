#!/usr/bin/env bash
# torpor demo: an MPI job on a simulated 4-host cluster (network namespaces
# on this machine) is checkpointed while it runs, killed, restarted from its
# checkpoint, and one of its job-nodes is migrated to a spare host. Its final
# checksum must equal an undisturbed run's. The daemons run as root; the job
# belongs to an ordinary user the demo creates (and removes), who runs every
# torpor command.
#
# Needs root and `make deps build workloads` (make demo does that).
set -euo pipefail
cd "$(dirname "$0")/.."

ARGS=(-i 400 -m 32 -s 20000 -p 50)
NAME=demo$$
DIR=$(mktemp -d /tmp/torpor-demo.XXXXXX)
chmod 755 "$DIR"
# Copies the demo's user can reach, wherever this checkout is.
install -m 755 bin/torpor "$DIR/torpor"
install -m 755 bench/workloads/bin/ring.openmpi "$DIR/ring.openmpi"
TORPOR=$DIR/torpor
RING=$DIR/ring.openmpi
export TORPOR_SOCKET=$DIR/coordinator.sock
PIDS=()
USERNAME=torpor-demo$$
# shellcheck source=scripts/demo-lib.sh
. scripts/demo-lib.sh

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
t=$(now)
REF=$(mpirun --allow-run-as-root --oversubscribe -n 6 "$RING" "${ARGS[@]}" | awk -F'checksum=' '/done/{print $2}')
echo "   reference checksum: $REF"; took "$t"

step "simulated cluster: 4 hosts (h1..h3 for the job, h4 spare), a coordinator and 4 shims over mutual TLS"
"$TORPOR" sim up "$NAME" 4 | sed 's/^/   /'
"$TORPOR" coordinator --init-pki --pki "$DIR/pki" >/dev/null
# Below the ephemeral ports (32768 and up), which an outgoing connection
# may hold on 127.0.0.1.
PORT=$((20000 + $$ % 10000))
"$TORPOR" coordinator --state-dir "$DIR/state" --checkpoint-dir "$DIR/ckpt" --listen 127.0.0.1:$PORT \
	--pki "$DIR/pki" 2>"$DIR/coordinator.log" &
COORD_PID=$!
PIDS+=($COORD_PID)
for i in 1 2 3 4; do
	"$TORPOR" shim --host h$i --netns torpor-$NAME-h$i --join 127.0.0.1:$PORT --pki "$DIR/pki" \
		--run-dir "$DIR/run" --cgroup-parent /torpor/$NAME --log-level warn 2>"$DIR/shim-h$i.log" &
	PIDS+=($!)
done
wait_shims "$COORD_PID" 4

step "as $USERNAME: torpor run -n 6 --host h1:2,h2:2,h3:2 ring ${ARGS[*]}"
asuser "$TORPOR" run --restart-on-failure 1 --run-dir "$DIR/run" --name ring -n 6 --host h1:2,h2:2,h3:2 \
	"$RING" "${ARGS[@]}" >"$DIR/run.out" 2>"$DIR/run.err" &
RUN=$!
PIDS+=($RUN)
JOB=
for _ in $(seq 100); do
	JOB=$("$TORPOR" ps 2>/dev/null | awk '$1 == "ring" && $2 == "running" {print $1}')
	[ -n "$JOB" ] && grep -q 'iter=100 ' "$DIR/run.out" 2>/dev/null && break
	sleep 0.2
done
[ -n "$JOB" ] || { echo "job did not start"; cat "$DIR/run.err"; exit 1; }
asuser "$TORPOR" ps | sed 's/^/   /'
grep 'iter=' "$DIR/run.out" | tail -1 | sed 's/^/   progress: /'
echo "   its processes run as: $(cat /sys/fs/cgroup/unified/torpor/$NAME/*/"$JOB"/*/cgroup.procs | xargs ps -o user= -p | sort | uniq -c | xargs)"

step "as $USERNAME: checkpoint while it runs"
t=$(now)
CKPT=$(asuser "$TORPOR" checkpoint "$JOB" 2>/dev/null)
echo "   handle: $CKPT"; took "$t"
asuser "$TORPOR" ls "$JOB" | sed 's/^/   /'

step "kill -9 every process of the job (three hosts fail at once)"
sleep 2
grep 'iter=' "$DIR/run.out" | tail -1 | sed 's/^/   progress before the failure: /'
for procs in /sys/fs/cgroup/unified/torpor/$NAME/*/"$JOB"/*/cgroup.procs; do
	for pid in $(cat "$procs"); do kill -9 "$pid" 2>/dev/null || true; done
done
t=$(now)
for _ in $(seq 200); do grep -q "restart 1 of 1" "$DIR/run.err" && break; sleep 0.1; done
for _ in $(seq 200); do "$TORPOR" ps | grep -q "^$JOB  *running" && break; sleep 0.1; done
grep 'failed\|restart' "$DIR/run.err" | sed 's/^/   /'
echo "   job running again from $CKPT"; took "$t"

step "as $USERNAME: migrate job-node n1 from h2 to the spare host h4"
sleep 1
t=$(now)
asuser "$TORPOR" migrate "$JOB" --node n1 --to h4 2>&1 | sed 's/^/   /'
took "$t"
asuser "$TORPOR" ps | sed 's/^/   /'

step "wait for the job to finish"
wait "$RUN" || { echo "torpor run failed"; cat "$DIR/run.err"; exit 1; }
GOT=$(awk -F'checksum=' '/done/{print $2}' "$DIR/run.out" | tail -1)
echo "   torpor checksum:    $GOT"
echo "   reference checksum: $REF"
if [ -n "$GOT" ] && [ "$GOT" = "$REF" ]; then
	printf '\n\033[1mPASS\033[0m: checkpointed, killed, restarted and migrated; same result as the undisturbed run.\n'
else
	printf '\n\033[1mFAIL\033[0m: checksums differ\n'
	exit 1
fi
