#!/usr/bin/env bash
# criu-contend.sh: how much a thread busy on another CPU slows a raw CRIU
# dump on this machine. torpor hashes a job-node's memory images while CRIU
# writes them, on the other core; this measures what such a thread costs
# CRIU by itself, outside torpor.
#
# One memhog (bench/harness/memhog) of MIB MiB is dumped (`criu dump
# --leave-running`) ROUNDS times in each mode, the modes in turns:
#   none    nothing else runs
#   hash    sha256sum of a 256 MiB file in the page cache, in a loop, pinned
#           to the last CPU
#   idle    the same under SCHED_IDLE (chrt --idle 0)
# and the median dump time of each mode is printed, with every sample.
#
#   MIB=16 ROUNDS=10 scripts/criu-contend.sh      (as root)
#   CRIU=/opt/torpor/criu/bin/criu                (the CRIU make deps installs)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH

mib=${MIB:-16}
rounds=${ROUNDS:-10}
criu=${CRIU:-/opt/torpor/criu/bin/criu}
[ "$(id -u)" = 0 ] || { echo "criu-contend: run as root (CRIU dumps another process)" >&2; exit 2; }
[ -x "$criu" ] || { echo "criu-contend: no CRIU at $criu; run make deps, or set CRIU" >&2; exit 2; }
last=$(($(nproc) - 1))
[ "$last" -ge 1 ] || { echo "criu-contend: needs two CPUs" >&2; exit 2; }

work=$(mktemp -d /var/tmp/torpor-contend.XXXXXX)
hog=""
busy=""
stop_busy() {
	if [ -n "$busy" ]; then
		kill "$busy" 2>/dev/null || true
		wait "$busy" 2>/dev/null || true
		busy=""
	fi
}
cleanup() {
	stop_busy
	if [ -n "$hog" ]; then
		kill "$hog" 2>/dev/null || true
		wait "$hog" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/memhog" ./bench/harness/memhog
setsid "$work/memhog" -m "$mib" -status "$work/status" </dev/null >"$work/memhog.log" 2>&1 &
hog=$!
for _ in $(seq 100); do [ -s "$work/status" ] && break; sleep 0.1; done
[ -s "$work/status" ] || { echo "criu-contend: memhog did not start (status file empty)" >&2; exit 1; }
head -c $((256 << 20)) /dev/urandom >"$work/blob"
cat "$work/blob" >/dev/null

declare -A took
for _ in $(seq "$rounds"); do
	for mode in none hash idle; do
		case $mode in
		hash) taskset -c "$last" sh -c "while :; do sha256sum '$work/blob' >/dev/null; done" & busy=$! ;;
		idle) taskset -c "$last" chrt --idle 0 sh -c "while :; do sha256sum '$work/blob' >/dev/null; done" & busy=$! ;;
		esac
		rm -rf "$work/img"
		mkdir "$work/img"
		sync
		start=$(date +%s%N)
		if ! "$criu" dump -t "$hog" -D "$work/img" -o dump.log -v1 --leave-running --shell-job >/dev/null 2>&1; then
			echo "criu-contend: criu dump failed ($mode); its log:" >&2
			tail -20 "$work/img/dump.log" >&2
			exit 1
		fi
		end=$(date +%s%N)
		stop_busy
		took[$mode]+=" $(((end - start) / 1000000))"
	done
done
for mode in none hash idle; do
	# shellcheck disable=SC2086
	sorted=$(printf '%s\n' ${took[$mode]} | sort -n | tr '\n' ' ')
	# shellcheck disable=SC2086
	median=$(printf '%s\n' ${took[$mode]} | sort -n | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
	echo "$mode: median ${median} ms of ${rounds} dumps of a ${mib} MiB memhog (${sorted% })"
done
