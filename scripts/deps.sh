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
#  3. Open MPI 5 with its PMIx 5 in a private prefix ($TORPOR_OMPI5_PREFIX, default
#     /opt/torpor/ompi5), the same way from Debian 13 (trixie): the runtime closure
#     of libopenmpi40 5.0.x and libpmix2t64 5.0.x (glibc 2.41 included), their
#     headers, and bin/mpicc, which compiles with the system's gcc and links
#     programs that run with the prefix's loader and libraries. torpor runs the
#     pmixd of such a program with the same loader and libraries (libpmix 5).
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

# --- private apt state -------------------------------------------------------
# private_apt SUITE sets up an apt state of its own in $state (sources, lists,
# an empty dpkg status so that apt downloads a whole dependency closure, libc
# included, and a cache) and fills $aptopts to use it; then `apt-get update`.
# The system's apt sources, lists and dpkg status are never touched.
mirror() {
  local m
  m=$(awk '$1=="URIs:" && $2 ~ /debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$m" ] || m=$(awk '$1=="deb" && $0 !~ /security/ {for(i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list 2>/dev/null || true)
  echo "${m:-http://deb.debian.org/debian}"
}
states=()
trap 'rm -rf "${states[@]}"' EXIT
private_apt() {
  local suite=$1 m
  m=$(mirror)
  log "fetching from Debian $suite ($m) into a private apt state"
  state=$(mktemp -d "/tmp/torpor-$suite-apt.XXXXXX")
  states+=("$state")
  mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/etc"
  : >"$state/status"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $m $suite main" >"$state/etc/sources.list"
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
}

# --- private CRIU -----------------------------------------------------------
criu_version() { # prints e.g. 40201, or nothing
  "$1" --version 2>/dev/null | awk '/^Version:/ { split($2, v, "."); printf "%d%02d%02d\n", v[1], v[2], v[3] }'
}

have=$( [ -x "$PREFIX/bin/criu" ] && criu_version "$PREFIX/bin/criu" || true )
if [ -n "$have" ] && [ "$have" -ge "$CRIU_MIN" ]; then
  log "CRIU $have present in $PREFIX"
else
  private_apt unstable
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

# --- private Open MPI 5 + PMIx 5 --------------------------------------------
OMPI5=${TORPOR_OMPI5_PREFIX:-/opt/torpor/ompi5}
if [ -x "$OMPI5/bin/mpicc" ] && grep -q '^openmpi 5\.' "$OMPI5/VERSIONS" 2>/dev/null; then
  log "Open MPI 5 present in $OMPI5 ($(paste -sd' ' "$OMPI5/VERSIONS" | sed 's/ / /g'))"
else
  private_apt trixie
  # Declared installed so that apt leaves them out: UCX's ROCm transport
  # (libamdhip64 pulls LLVM, 50 MB) and hwloc's GPU/X11 plugins, all dlopen'd
  # only when present and useless on a host without those devices.
  for p in libamdhip64-5 libhsa-runtime64-1 libhwloc-plugins; do
    printf 'Package: %s\nStatus: install ok installed\nVersion: 999\nArchitecture: amd64\nMaintainer: torpor\nDescription: left out\n\n' "$p"
  done >"$state/status"
  apt-get "${aptopts[@]}" install -y -qq --download-only --no-install-recommends libopenmpi40 libpmix2t64 openmpi-common >/dev/null
  # Headers and the libmpi.so/libpmix.so links, without the toolchain that
  # the -dev packages depend on.
  (cd "$state/cache/archives" && apt-get "${aptopts[@]}" download -qq libopenmpi-dev libpmix-dev >/dev/null)
  stage="$OMPI5.new"
  rm -rf "$stage"
  mkdir -p "$stage/root" "$stage/bin"
  for deb in "$state"/cache/archives/*.deb; do dpkg-deb -x "$deb" "$stage/root"; done
  rm -rf "$stage/root/usr/share/doc" "$stage/root/usr/share/man" "$stage/root/usr/share/locale"
  find "$stage/root" -name '*.a' -delete
  ld=$(find "$stage/root" -type f -name 'ld-linux-x86-64.so.2' | head -1)
  [ -n "$ld" ] || die "no dynamic loader in the trixie closure"
  ld=${ld/#$stage/$OMPI5}
  # Debian's multiarch directory holds every runtime library of the closure
  # (libpmix.so.2 too, as a link into pmix2/lib); the other directories
  # with .so files are plugins, found by their own libraries.
  libdirs=$OMPI5/root/usr/lib/x86_64-linux-gnu
  [ -e "$stage/root/usr/lib/x86_64-linux-gnu/libpmix.so.2" ] || die "no libpmix.so.2 in the trixie closure"
  for deb in "$state"/cache/archives/*.deb; do
    case $(basename "$deb") in
      libopenmpi40_*) echo "openmpi $(dpkg-deb -f "$deb" Version)" ;;
      libpmix2t64_*) echo "pmix $(dpkg-deb -f "$deb" Version)" ;;
    esac
  done | sort >"$stage/VERSIONS"
  ls "$state"/cache/archives/*.deb | xargs -n1 basename >"$stage/PACKAGES"
  inc=$OMPI5/root/usr/lib/x86_64-linux-gnu/openmpi/include
  lib=$OMPI5/root/usr/lib/x86_64-linux-gnu/openmpi/lib
  cat >"$stage/bin/mpicc" <<WRAP
#!/bin/sh
# mpicc for the Open MPI 5 in $OMPI5 (made by torpor's scripts/deps.sh).
# It compiles with the system's C compiler (\$CC, default gcc) against the
# prefix's mpi.h and links programs that run with the prefix's own loader and
# libraries (Debian trixie's glibc, libmpi 5, libpmix 5), whatever the system
# has: their PT_INTERP is the prefix's ld-linux and their DT_RPATH its library
# directories. --allow-shlib-undefined: the prefix's libraries need a newer
# glibc than the one the system's linker links against; they get it at run time.
link=1
for a in "\$@"; do case \$a in -c|-E|-S|-M|-MM) link= ;; esac; done
if [ -z "\$link" ]; then exec \${CC:-gcc} -I$inc "\$@"; fi
exec \${CC:-gcc} -I$inc "\$@" -L$lib -lmpi \\
  -Wl,--allow-shlib-undefined -Wl,--disable-new-dtags \\
  -Wl,--dynamic-linker=$ld \\
  -Wl,-rpath,$libdirs
WRAP
  chmod 0755 "$stage/bin/mpicc"
  rm -rf "$OMPI5"
  mv "$stage" "$OMPI5"
  log "Open MPI 5 installed in $OMPI5 ($(paste -sd' ' "$OMPI5/VERSIONS"), $(wc -l <"$OMPI5/PACKAGES") packages, $(du -sh "$OMPI5" | cut -f1))"
fi
