#!/usr/bin/env bash
# Installs those of the given Debian packages that are missing; apt runs only then, so
# every make target that calls this is idempotent and quick when all is there.
#   usage: apt-install.sh [--backports] [--optional] PACKAGE...
#   --backports  from bookworm-backports, adding that suite on the host's mirror first
#   --optional   a failed install is reported and not an error (benchmark extras)
set -uo pipefail
backports= optional=
while [ $# -gt 0 ]; do
  case $1 in
    --backports) backports=1; shift ;;
    --optional) optional=1; shift ;;
    *) break ;;
  esac
done
missing=""
for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
[ -n "$missing" ] || exit 0
apt=(apt-get -o DPkg::Lock::Timeout=600)
suite=()
if [ -n "$backports" ]; then
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    mirror=$(sed -n 's/^URIs: *\([^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
    echo "deb ${mirror:-http://deb.debian.org/debian} bookworm-backports main" > /etc/apt/sources.list.d/bookworm-backports.list
  fi
  suite=(-t bookworm-backports)
fi
echo "installing:$missing${backports:+ (bookworm-backports)}"
# shellcheck disable=SC2086
if "${apt[@]}" update -qq && DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq "${suite[@]}" $missing; then
  exit 0
fi
if [ -n "$optional" ]; then
  echo "could not install$missing; going on without"
  exit 0
fi
exit 1
