#!/usr/bin/env bash
# PostgreSQL with pgvector, for the tests of the PostgreSQL library index (tests/postgres_server.py starts a
# throwaway cluster with these binaries; without them those tests skip). Called by scripts/setup.sh; idempotent.
# Debian's server package `postgresql`, and `postgresql-NN-pgvector` where the release has it. Debian 12 has no
# pgvector binary package, so there pgvector is built from Debian's own source package (taken from the next release,
# PGVECTOR_SOURCE_SUITE) against the installed server's headers, and installed into the server's folders.
set -euo pipefail
PGVECTOR_SOURCE_SUITE=${PGVECTOR_SOURCE_SUITE:-trixie}

has_pgvector() {
  local bindir share
  for bindir in /usr/lib/postgresql/*/bin; do
    [ -x "$bindir/pg_config" ] || continue
    share=$("$bindir/pg_config" --sharedir) && [ -f "$share/extension/vector.control" ] && return 0
  done
  return 1
}

if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: no apt-get here: install a PostgreSQL server and pgvector by hand for the PostgreSQL index's tests"
  exit 0
fi
has_pgvector && exit 0
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
apt_install() { DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }

echo "setup: installing PostgreSQL with pgvector (the PostgreSQL library index's tests)"
$SUDO apt-get update -qq
apt_install postgresql
major=$(ls /usr/lib/postgresql | sort -n | tail -1)
if apt-cache show "postgresql-$major-pgvector" >/dev/null 2>&1; then
  apt_install "postgresql-$major-pgvector"
  exit 0
fi

apt_install "postgresql-server-dev-$major" dpkg-dev make gcc
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial"
echo "deb-src http://deb.debian.org/debian $PGVECTOR_SOURCE_SUITE main" > "$work/sources.list"
# A private source list and package lists: the system's apt configuration stays as it is. The files land in a
# temporary folder of this user, so apt downloads as this user rather than as _apt.
apt_private=(-o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=-"
             -o "Dir::State::Lists=$work/lists" -o "APT::Sandbox::User=$(id -un)")
$SUDO apt-get "${apt_private[@]}" update -qq
(cd "$work" && $SUDO apt-get "${apt_private[@]}" source -qq pgvector >/dev/null 2>&1)
source_dir=$(find "$work" -maxdepth 1 -type d -name 'pgvector-*' | head -1)
# OPTFLAGS="": no -march=native, as in Debian's own build; with_llvm=no: no JIT bitcode (needs clang)
$SUDO make -s -j2 -C "$source_dir" OPTFLAGS="" with_llvm=no PG_CONFIG="/usr/lib/postgresql/$major/bin/pg_config" \
  install >/dev/null
has_pgvector && echo "setup: pgvector built from Debian's source package for PostgreSQL $major"
