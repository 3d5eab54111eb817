# Shared by demo.sh and demo-isolated.sh (sourced, after they set DIR,
# USERNAME and TORPOR_SOCKET).

# asuser runs a command as the demo's user, with this environment.
asuser() { setpriv --reuid "$USERNAME" --regid "$USERNAME" --init-groups "$@"; }

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
now() { date +%s.%N; }
took() { printf '   (%.2f s)\n' "$(echo "$(now) - $1" | bc)"; }

# wait_shims PID N: until the coordinator (PID) logged N shims registered;
# fails, with its log, when it exits or 60 s pass.
wait_shims() {
	for _ in $(seq 600); do
		kill -0 "$1" 2>/dev/null || { echo "the coordinator exited:"; cat "$DIR/coordinator.log"; exit 1; }
		[ -S "$TORPOR_SOCKET" ] && [ "$(grep -c 'msg="shim registered"' "$DIR/coordinator.log")" -ge "$2" ] && return
		sleep 0.1
	done
	echo "not every shim registered within 60 s:"; cat "$DIR/coordinator.log" "$DIR"/shim-h*.log; exit 1
}
