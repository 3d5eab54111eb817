# privdeb.sh — sourced by deps.sh: unpack packages of a newer Debian suite into
# a private prefix, never touching the system's apt sources, lists or dpkg
# status.
#
#   privdeb_fetch SUITE STAGE "PKGS" ["NODEPS"] ["OMIT"]
#
# downloads PKGS and their whole dependency closure (glibc included) from
# SUITE with a private apt state, plus NODEPS without their dependencies (for
# headers: a -dev package's closure would drag in a whole toolchain), but not
# OMIT (declared installed in the private dpkg status, so apt leaves them and
# what only they need out: optional plugins' dependencies), unpacks
# every .deb into STAGE/root with dpkg-deb -x and lists them in
# STAGE/PACKAGES. Binaries in the prefix then run through STAGE/root's own
# dynamic loader and libraries (patchelf, or -Wl,--dynamic-linker at link
# time); privdeb_libdirs prints the RPATH that finds them.

privdeb_mirror() {
  local m
  m=$(awk '$1=="URIs:" && $2 ~ /debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$m" ] || m=$(awk '$1=="deb" && $0 !~ /security/ {for(i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list 2>/dev/null || true)
  printf '%s\n' "${m:-http://deb.debian.org/debian}"
}

privdeb_fetch() {
  local suite=$1 stage=$2 pkgs=$3 nodeps=${4:-} omit=${5:-} state rc=0 p
  state=$(mktemp -d /tmp/torpor-apt-"$suite".XXXXXX)
  mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/etc"
  : >"$state/status"
  for p in $omit; do
    printf 'Package: %s\nStatus: install ok installed\nVersion: 999\nArchitecture: amd64\nMaintainer: torpor\nDescription: left out by torpor\n\n' "$p" >>"$state/status"
  done
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $(privdeb_mirror) $suite main" >"$state/etc/sources.list"
  local aptopts=(
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
  (
    # Each step ends the subshell on failure (set -e would not: the
    # subshell's status is tested).
    apt-get "${aptopts[@]}" update -qq || exit
    # shellcheck disable=SC2086 # word lists
    apt-get "${aptopts[@]}" install -y -qq --download-only --no-install-recommends $pkgs >/dev/null || exit
    if [ -n "$nodeps" ]; then
      # shellcheck disable=SC2086
      (cd "$state/cache/archives" && apt-get "${aptopts[@]}" download -qq $nodeps) || exit
    fi
    rm -rf "$stage" && mkdir -p "$stage/root" || exit
    for deb in "$state"/cache/archives/*.deb; do dpkg-deb -x "$deb" "$stage/root" || exit; done
    ls "$state"/cache/archives/*.deb | xargs -n1 basename >"$stage/PACKAGES"
  ) || rc=$?
  rm -rf "$state"
  return $rc
}

# privdeb_libdirs STAGE PREFIX: the prefix's library directories, as they will
# be once STAGE is moved to PREFIX, joined with ':'.
privdeb_libdirs() {
  find "$1/root" -name 'lib*.so*' ! -name '*.py' -printf '%h\n' | sort -u | sed "s|^$1|$2|" | paste -sd:
}

# privdeb_loader STAGE PREFIX: the prefix's dynamic loader, as it will be.
privdeb_loader() {
  local ld
  ld=$(find "$1/root" -name 'ld-linux-x86-64.so.2' -path '*/lib/x86_64-linux-gnu/*' | head -1)
  [ -n "$ld" ] || ld=$(find "$1/root" -name 'ld-linux-x86-64.so.2' | head -1)
  [ -n "$ld" ] || return 1
  printf '%s\n' "${ld/#$1/$2}"
}

# privdeb_mpicc FILE WHAT INC LIB LIBNAME LOADER RPATH writes an mpicc for a
# private MPI (WHAT names it): it compiles with the system's C compiler ($CC,
# default gcc) against INC and links -lLIBNAME from LIB into programs that run
# with the prefix's own loader and libraries whatever the system has (their
# PT_INTERP is LOADER, their DT_RPATH is RPATH, which unlike RUNPATH also
# covers the libraries' own dependencies). --allow-shlib-undefined: the
# prefix's libraries need a newer glibc than the one the system's linker
# links against; they get it at run time.
privdeb_mpicc() {
  cat >"$1" <<WRAP
#!/bin/sh
# mpicc for $2 (written by torpor's scripts/deps.sh).
link=1
for a in "\$@"; do case \$a in -c|-E|-S|-M|-MM) link= ;; esac; done
if [ -z "\$link" ]; then exec \${CC:-gcc} -I$3 "\$@"; fi
exec \${CC:-gcc} -I$3 "\$@" -L$4 -l$5 \\
  -Wl,--allow-shlib-undefined -Wl,--disable-new-dtags \\
  -Wl,--dynamic-linker=$6 \\
  -Wl,-rpath,$7
WRAP
  chmod 0755 "$1"
}
