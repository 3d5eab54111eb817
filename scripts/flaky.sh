#!/usr/bin/env bash
# flaky.sh: run the fault-point tests and the fault-injection harness N times
# and count the runs that passed. A test that fails one time in ten is a
# failing test; this is how to find out.
#
#   N=10        runs (default 10)
#   LOAD=1      keep every core busy with a bounded busy loop meanwhile
#   UNIT_ONLY=1 only the shim's fault-point tests (seconds a run, not minutes)
#
# Failed runs' output stays in a temporary directory that is printed; it is
# removed when every run passed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH

n=${N:-10}
unit='TestDrainOutsideJobAborts|TestShimExitInDump|TestCRIUKillInDump|TestRestoreCancelled|TestAdopt'
e2e='^(TestFaults|TestFaultDiskFull|TestPostCopySourceDiesInFlight)$'
logs=$(mktemp -d /tmp/torpor-flaky.XXXXXX)
load=()

cleanup() {
	for p in "${load[@]}"; do kill "$p" 2>/dev/null; done
	wait "${load[@]}" 2>/dev/null
}
trap cleanup EXIT

if [ "${LOAD:-}" = 1 ]; then
	for _ in $(seq "$(nproc)"); do
		timeout 6h sh -c 'while :; do :; done' &
		load+=($!)
	done
	echo "load: ${#load[@]} busy loops (PIDs ${load[*]})"
fi

go test -c -o "$logs/agent.test" ./shim/agent/ || exit 2
[ "${UNIT_ONLY:-}" = 1 ] || go test -c -o "$logs/e2e.test" ./e2e/ || exit 2

passed=0 failed=0
for i in $(seq "$n"); do
	start=$SECONDS
	ok=1
	(cd shim/agent && "$logs/agent.test" -test.count=1 -test.v -test.run "$unit") >"$logs/run$i.log" 2>&1 || ok=0
	if [ "${UNIT_ONLY:-}" != 1 ] && [ $ok = 1 ]; then
		(cd e2e && "$logs/e2e.test" -test.count=1 -test.v -test.timeout 1h -test.run "$e2e") >>"$logs/run$i.log" 2>&1 || ok=0
	fi
	if [ $ok = 1 ]; then
		passed=$((passed + 1))
		rm -f "$logs/run$i.log"
		echo "run $i: passed ($((SECONDS - start)) s)"
	else
		failed=$((failed + 1))
		echo "run $i: FAILED ($((SECONDS - start)) s): $(grep -m1 -E -- '--- FAIL' "$logs/run$i.log")"
	fi
done
rm -f "$logs/agent.test" "$logs/e2e.test"
echo "$passed passed, $failed failed"
if [ "$failed" = 0 ]; then
	rm -rf "$logs"
	exit 0
fi
echo "logs of the failed runs: $logs"
exit 1
