#!/usr/bin/env bash
# deps.sh — install everything torpor needs on a Debian 12 machine, idempotently.
#
#  1. Debian 12 packages (Open MPI, MPICH, PMIx, clang/libbpf, iproute2, ...):
#     only the missing ones are installed; nothing already installed is upgraded.
#  2. CRIU >= 4.2 in a private prefix ($TORPOR_CRIU_PREFIX, default /opt/torpor/criu).
#     Debian 12's criu 3.17 cannot run on kernels >= 6.13 and 4.1 cannot dump INET
#     sockets on kernels >= 6.16, so the criu package of Debian unstable and its whole
#     dependency closure (glibc included) are downloaded with a *private* apt state,
#     unpacked with dpkg -x and run through the prefix's own dynamic loader. The
#     system's apt sources, lists and dpkg status are never touched.
#
# A second run finds everything in place, downloads nothing and takes seconds.
set -euo pipefail

PREFIX=${TORPOR_CRIU_PREFIX:-/opt/torpor/criu}
CRIU_MIN=40200

log() { printf 'deps: %s\n' "$*"; }
die() { printf 'deps: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (it installs Debian packages and $PREFIX)"
[ -r /etc/debian_version ] || die "this script supports Debian 12 (bookworm) only"

PKGS=(
  build-essential pkg-config git ca-certificates
  openmpi-bin libopenmpi-dev libpmix-dev
  mpich libmpich-dev
  iproute2 nftables procps psmisc
  passwd util-linux
  clang llvm libbpf-dev linux-libc-dev
  patchelf protobuf-compiler
  lammps
  prometheus
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii'; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-upgrade: never move an installed package to a newer version.
  apt-get install -y -qq --no-install-recommends --no-upgrade "${missing[@]}" >/dev/null
else
  log "Debian packages: all ${#PKGS[@]} present"
fi

# Open MPI stays the default mpicc/mpirun; MPICH is used through its own names
# (mpicc.mpich, mpirun.mpich).
alt_is() { update-alternatives --query "$1" 2>/dev/null | grep -qx "Value: $2"; }
if [ -e /usr/bin/mpicc.openmpi ] && ! alt_is mpi /usr/bin/mpicc.openmpi; then
  log "making Open MPI the default mpicc"
  update-alternatives --quiet --set mpi /usr/bin/mpicc.openmpi
fi
if [ -e /usr/bin/mpirun.openmpi ] && ! alt_is mpirun /usr/bin/mpirun.openmpi; then
  log "making Open MPI the default mpirun"
  update-alternatives --quiet --set mpirun /usr/bin/mpirun.openmpi
fi

# --- private CRIU -----------------------------------------------------------
criu_version() { # prints e.g. 40201, or nothing
  "$1" --version 2>/dev/null | awk '/^Version:/ { split($2, v, "."); printf "%d%02d%02d\n", v[1], v[2], v[3] }'
}

have=$( [ -x "$PREFIX/bin/criu" ] && criu_version "$PREFIX/bin/criu" || true )
if [ -n "$have" ] && [ "$have" -ge "$CRIU_MIN" ]; then
  log "CRIU $have present in $PREFIX"
else
  mirror=$(awk '$1=="URIs:" && $2 ~ /debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1=="deb" && $0 !~ /security/ {for(i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
  log "fetching criu from Debian unstable ($mirror) into a private apt state"
  state=$(mktemp -d /tmp/torpor-criu-apt.XXXXXX)
  trap 'rm -rf "$state"' EXIT
  mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/etc"
  : >"$state/status"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror unstable main" >"$state/etc/sources.list"
  aptopts=(
    -o Dir::Etc::SourceList="$state/etc/sources.list"
    -o Dir::Etc::SourceParts=/dev/null
    -o Dir::State::Lists="$state/lists"
    -o Dir::State::status="$state/status"
    -o Dir::Cache="$state/cache"
    -o Dir::Cache::archives="$state/cache/archives"
    -o APT::Get::List-Cleanup=false
    -o Debug::NoLocking=true
    -o APT::Sandbox::User=root
  )
  apt-get "${aptopts[@]}" update -qq
  apt-get "${aptopts[@]}" install -y -qq --download-only --no-install-recommends criu >/dev/null
  stage="$PREFIX.new"
  rm -rf "$stage"
  mkdir -p "$stage/root"
  for deb in "$state"/cache/archives/*.deb; do dpkg-deb -x "$deb" "$stage/root"; done
  ld=$(find "$stage/root" -name 'ld-linux-x86-64.so.2' | head -1)
  [ -n "$ld" ] || die "no dynamic loader in the unstable closure"
  libdirs=$(find "$stage/root" -name '*.so*' -printf '%h\n' | sort -u | sed "s|^$stage|$PREFIX|" | paste -sd:)
  mkdir -p "$stage/bin"
  # Point the binary at the prefix's own loader and libraries (RPATH, which unlike
  # RUNPATH also covers the libraries' own dependencies), so /proc/self/exe stays criu.
  cp "$stage/root/usr/sbin/criu" "$stage/bin/criu"
  patchelf --set-interpreter "${ld/#$stage/$PREFIX}" --force-rpath --set-rpath "$libdirs" "$stage/bin/criu"
  ls "$state"/cache/archives/*.deb | xargs -n1 basename >"$stage/PACKAGES"
  rm -rf "$PREFIX"
  mv "$stage" "$PREFIX"
  have=$(criu_version "$PREFIX/bin/criu")
  [ -n "$have" ] && [ "$have" -ge "$CRIU_MIN" ] || die "installed criu reports version '${have:-none}', need >= $CRIU_MIN"
  log "CRIU $have installed in $PREFIX ($(wc -l <"$PREFIX/PACKAGES") packages)"
fi
