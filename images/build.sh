#!/usr/bin/env bash
# Builds every OCI image archive the demos and tests use into out/images/ (repo root),
# from Debian packages for amd64, arm64 and armhf: no Docker, no registry (see images/README.md).
# Idempotent: archives newer than the recipes are kept, so a re-run takes a moment.
#   images/build.sh [--force] [NAME...]      e.g. images/build.sh redis
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Needs only apt-get, dpkg-deb (always on Debian) and python3; say so early otherwise.
for cmd in apt-get dpkg-deb python3 flock; do
  command -v "$cmd" >/dev/null || { echo "images: $cmd is required" >&2; exit 1; }
done

mkdir -p "$repo/out/images"
# One build at a time (scripts/test.sh and a person may both run it): wait for the other.
exec 9>"$repo/out/images/.lock"
flock 9
exec python3 "$repo/images/build.py" "$@"
