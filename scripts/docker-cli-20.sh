#!/usr/bin/env bash
# Puts Debian's docker 20.10 client (API 1.41) at out/docker-20.10/usr/bin/docker for
# tests/docker_api.rs: the package is downloaded and unpacked, never installed, and only
# its client is used (no daemon is ever started). Safe to run again.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/out/docker-20.10"
if [ -x "$dest/usr/bin/docker" ]; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# A machine whose package lists were never fetched knows no docker.io yet.
(cd "$tmp" && apt-get download -qq docker.io >/dev/null 2>&1) ||
  { apt-get update -qq && (cd "$tmp" && apt-get download -qq docker.io >/dev/null); }
deb=$(ls "$tmp"/docker.io_*.deb)
mkdir -p "$tmp/x"
dpkg-deb -x "$deb" "$tmp/x"
mkdir -p "$dest/usr/bin"
cp "$tmp/x/usr/bin/docker" "$dest/usr/bin/docker"
echo "docker-cli-20: $("$dest/usr/bin/docker" --version) in $dest"
