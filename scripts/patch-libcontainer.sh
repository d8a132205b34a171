#!/usr/bin/env bash
# Makes patches/libcontainer/ (used through [patch.crates-io] in Cargo.toml): the
# published libcontainer source from crates.io with patches/libcontainer-armv7.patch
# applied, so that the agent builds for 32-bit ARM, then patches/libcontainer-criu-feature.patch
# and patches/libcontainer-net-devices-feature.patch (CRIU and the netlink client of
# `linux.netDevices` behind cargo features the agent leaves off: its size). Only the diffs are kept in
# the repository. Fails, saying so, when the patch no longer applies. Fast when the copy is
# up to date. Run by scripts/setup.sh; run it yourself before a first plain `cargo build`.
set -euo pipefail
cd "$(dirname "$0")/.."

version=0.7.0
dest=patches/libcontainer
patches=("$PWD/patches/libcontainer-armv7.patch" "$PWD/patches/libcontainer-criu-feature.patch"
  "$PWD/patches/libcontainer-net-devices-feature.patch")
stamp="libcontainer $version + $(cat "${patches[@]}" | sha256sum | cut -d' ' -f1)"
if [ -f "$dest/.shoal-patched" ] && [ "$(cat "$dest/.shoal-patched")" = "$stamp" ]; then
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# A throwaway package that depends on exactly this version makes cargo download (and
# verify against the registry's checksum) the .crate file.
mkdir -p "$tmp/fetch/src"
cat > "$tmp/fetch/Cargo.toml" <<TOML
[package]
name = "shoal-fetch-libcontainer"
version = "0.0.0"
edition = "2021"
[dependencies]
libcontainer = { version = "=$version", default-features = false }
TOML
: > "$tmp/fetch/src/lib.rs"
cargo fetch --quiet --manifest-path "$tmp/fetch/Cargo.toml"
crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"libcontainer-$version.crate" | head -n 1)
tar -xzf "$crate" -C "$tmp"
for patch in "${patches[@]}"; do
  if ! (cd "$tmp/libcontainer-$version" && patch -p0 --forward --batch --quiet < "$patch"); then
    echo "patch-libcontainer: patches/$(basename "$patch") no longer applies to libcontainer $version:" \
      "refresh the patch (see docs/runtime.md, 32-bit ARM)" >&2
    exit 1
  fi
done
rm -rf "$dest"
mv "$tmp/libcontainer-$version" "$dest"
echo "$stamp" > "$dest/.shoal-patched"
echo "patch-libcontainer: $dest is libcontainer $version with the armv7, criu-feature and net-devices-feature patches"
