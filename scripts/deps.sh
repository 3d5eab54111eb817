#!/usr/bin/env bash
# deps.sh — install everything torpor needs on a Debian 12 machine, idempotently.
#
#  1. Debian 12 packages (Open MPI, MPICH, PMIx, clang/libbpf, iproute2, Slurm
#     with munge and MariaDB for the e2e Slurm harness, ...):
#     only the missing ones are installed; nothing already installed is upgraded.
#  2. CRIU >= 4.2 in a private prefix ($TORPOR_CRIU_PREFIX, default /opt/torpor/criu).
#     Debian 12's criu 3.17 cannot run on kernels >= 6.13 and 4.1 cannot dump INET
#     sockets on kernels >= 6.16, so the criu package of Debian unstable and its whole
#     dependency closure (glibc included) are downloaded with a *private* apt state,
#     unpacked with dpkg -x and run through the prefix's own dynamic loader. The
#     system's apt sources, lists and dpkg status are never touched.
#  3. MPICH 4.2 ($TORPOR_MPICH_PREFIX, default /opt/torpor/mpich) and Open MPI 5
#     with its PMIx 5 ($TORPOR_OMPI5_PREFIX, default /opt/torpor/ompi5) from
#     Debian 13 (trixie) the same way, each with a bin/mpicc that compiles with
#     the system's gcc and links programs that run with the prefix's own loader
#     and libraries. torpor runs the pmixd of an Open MPI 5 program with the
#     same loader and libraries (libpmix 5).
#
# A second run finds everything in place, downloads nothing and takes seconds.
set -euo pipefail

PREFIX=${TORPOR_CRIU_PREFIX:-/opt/torpor/criu}
CRIU_MIN=40200

log() { printf 'deps: %s\n' "$*"; }
# shellcheck source=scripts/privdeb.sh
. "$(dirname "$0")/privdeb.sh"
die() { printf 'deps: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (it installs Debian packages and $PREFIX)"
[ -r /etc/debian_version ] || die "this script supports Debian 12 (bookworm) only"

PKGS=(
  build-essential pkg-config git ca-certificates
  openmpi-bin libopenmpi-dev libpmix-dev
  mpich libmpich-dev
  iproute2 nftables procps psmisc
  passwd util-linux e2fsprogs
  clang llvm libbpf-dev linux-libc-dev
  patchelf protobuf-compiler
  lammps quantum-espresso quantum-espresso-data
  prometheus
  slurmctld slurmd slurm-client slurmdbd munge mariadb-server
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
  log "fetching criu from Debian unstable into a private apt state"
  stage="$PREFIX.new"
  privdeb_fetch unstable "$stage" criu || die "could not fetch criu from Debian unstable"
  ld=$(privdeb_loader "$stage" "$PREFIX") || die "no dynamic loader in the unstable closure"
  libdirs=$(privdeb_libdirs "$stage" "$PREFIX")
  mkdir -p "$stage/bin"
  # Point the binary at the prefix's own loader and libraries (RPATH, which unlike
  # RUNPATH also covers the libraries' own dependencies), so /proc/self/exe stays criu.
  cp "$stage/root/usr/sbin/criu" "$stage/bin/criu"
  patchelf --set-interpreter "$ld" --force-rpath --set-rpath "$libdirs" "$stage/bin/criu"
  rm -rf "$PREFIX"
  mv "$stage" "$PREFIX"
  have=$(criu_version "$PREFIX/bin/criu")
  [ -n "$have" ] && [ "$have" -ge "$CRIU_MIN" ] || die "installed criu reports version '${have:-none}', need >= $CRIU_MIN"
  log "CRIU $have installed in $PREFIX ($(wc -l <"$PREFIX/PACKAGES") packages)"
fi

# --- private MPICH 4.2 ------------------------------------------------------
# Debian 12's MPICH 4.0.2 (ch4:ucx) can deadlock in MPI_Finalize when ranks
# talk over TCP (pmodels/mpich#6596, fixed in 4.2.0): README, "MPICH". Debian
# 13's MPICH 4.2.1 goes to a private prefix the way CRIU does. Programs are
# built with $MPICH_PREFIX/bin/mpicc, which compiles with the system's gcc and
# links against the prefix with its own loader and RPATH, so they run on this
# machine's Debian 12 without touching its libraries.
MPICH_PREFIX=${TORPOR_MPICH_PREFIX:-/opt/torpor/mpich}
MPICH_MIN=40200
mpich_version() { # prints e.g. 40201 from the prefix's MPICH_VERSION, or nothing
  [ -r "$1/MPICH_VERSION" ] && awk -F. '{ printf "%d%02d%02d\n", $1, $2, $3 }' "$1/MPICH_VERSION"
}
have=$(mpich_version "$MPICH_PREFIX" || true)
if [ -n "$have" ] && [ "$have" -ge "$MPICH_MIN" ] && [ -x "$MPICH_PREFIX/bin/mpicc" ]; then
  log "MPICH $(cat "$MPICH_PREFIX/MPICH_VERSION") present in $MPICH_PREFIX"
else
  log "fetching MPICH from Debian 13 (trixie) into a private apt state"
  stage="$MPICH_PREFIX.new"
  privdeb_fetch trixie "$stage" libmpich12 libmpich-dev || die "could not fetch MPICH from Debian trixie"
  ld=$(privdeb_loader "$stage" "$MPICH_PREFIX") || die "no dynamic loader in the trixie closure"
  libdirs=$(privdeb_libdirs "$stage" "$MPICH_PREFIX")
  # libmpich12_4.3.0+really4.2.1-1_amd64.deb: the upstream version is the
  # part after "really" when there is one.
  ver=$(sed -nE 's/^libmpich12_([^_]+)_.*$/\1/p' "$stage/PACKAGES" | sed -E 's/^.*really//; s/-[^-]*$//; s/^[0-9]+://')
  [ -n "$ver" ] || die "no libmpich12 among the fetched packages"
  echo "$ver" >"$stage/MPICH_VERSION"
  mkdir -p "$stage/bin"
  privdeb_mpicc "$stage/bin/mpicc" "torpor's private MPICH $ver" "$MPICH_PREFIX/root/usr/include/x86_64-linux-gnu/mpich" \
    "$MPICH_PREFIX/root/usr/lib/x86_64-linux-gnu" mpich "$ld" "$libdirs"
  rm -rf "$MPICH_PREFIX"
  mv "$stage" "$MPICH_PREFIX"
  have=$(mpich_version "$MPICH_PREFIX")
  [ -n "$have" ] && [ "$have" -ge "$MPICH_MIN" ] || die "fetched MPICH reports version '${have:-none}', need >= $MPICH_MIN"
  log "MPICH $ver installed in $MPICH_PREFIX ($(wc -l <"$MPICH_PREFIX/PACKAGES") packages)"
fi

# --- private Open MPI 5 + PMIx 5 --------------------------------------------
# Debian 13's Open MPI 5.0 and its PMIx 5.0: the runtime closure of libopenmpi40
# and libpmix2t64 (glibc 2.41 included), the headers, and bin/mpicc. A program
# built with it is recognised by `torpor run` (its PT_INTERP and RPATH), which
# runs the job-nodes' pmixd under the same loader and libraries.
OMPI5=${TORPOR_OMPI5_PREFIX:-/opt/torpor/ompi5}
if [ -x "$OMPI5/bin/mpicc" ] && grep -q '^openmpi 5\.' "$OMPI5/VERSIONS" 2>/dev/null; then
  log "Open MPI 5 present in $OMPI5 ($(paste -sd' ' "$OMPI5/VERSIONS"))"
else
  log "fetching Open MPI 5 and PMIx 5 from Debian 13 (trixie) into a private apt state"
  stage="$OMPI5.new"
  # Left out (declared installed): UCX's ROCm transport (libamdhip64 pulls
  # LLVM, 50 MB) and hwloc's GPU/X11 plugins, all dlopen'd only when present
  # and useless without those devices. The -dev packages come without their
  # dependencies (a toolchain): headers and the libmpi.so/libpmix.so links.
  privdeb_fetch trixie "$stage" "libopenmpi40 libpmix2t64 openmpi-common" "libopenmpi-dev libpmix-dev" \
    "libamdhip64-5 libhsa-runtime64-1 libhwloc-plugins" || die "could not fetch Open MPI 5 from Debian trixie"
  rm -rf "$stage/root/usr/share/doc" "$stage/root/usr/share/man" "$stage/root/usr/share/locale"
  find "$stage/root" -name '*.a' -delete
  ld=$(privdeb_loader "$stage" "$OMPI5") || die "no dynamic loader in the trixie closure"
  # Debian's multiarch directory holds every runtime library of the closure
  # (libpmix.so.2 too, as a link into pmix2/lib); the other directories with
  # .so files hold plugins, which their own libraries find.
  libdirs=$OMPI5/root/usr/lib/x86_64-linux-gnu
  [ -e "$stage/root/usr/lib/x86_64-linux-gnu/libpmix.so.2" ] || die "no libpmix.so.2 in the trixie closure"
  # libopenmpi40_5.0.7-1_amd64.deb -> "openmpi 5.0.7-1"
  sed -nE 's/^libopenmpi40_([^_]+)_.*$/openmpi \1/p; s/^libpmix2t64_([^_]+)_.*$/pmix \1/p' "$stage/PACKAGES" |
    sed -E 's/ [0-9]+%3a/ /' | sort >"$stage/VERSIONS"
  grep -q '^openmpi 5\.' "$stage/VERSIONS" || die "no Open MPI 5 among the fetched packages"
  mkdir -p "$stage/bin"
  privdeb_mpicc "$stage/bin/mpicc" "the Open MPI 5 in $OMPI5" "$OMPI5/root/usr/lib/x86_64-linux-gnu/openmpi/include" \
    "$OMPI5/root/usr/lib/x86_64-linux-gnu/openmpi/lib" mpi "$ld" "$libdirs"
  rm -rf "$OMPI5"
  mv "$stage" "$OMPI5"
  log "Open MPI 5 installed in $OMPI5 ($(paste -sd' ' "$OMPI5/VERSIONS"), $(wc -l <"$OMPI5/PACKAGES") packages, $(du -sh "$OMPI5" | cut -f1))"
fi
