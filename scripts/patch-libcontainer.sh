#!/usr/bin/env bash
# Makes patches/libcontainer/ (used through [patch.crates-io] in Cargo.toml): the
# published libcontainer source from crates.io with patches/libcontainer-armv7.patch
# applied, so that the agent builds for 32-bit ARM. Only the diff is kept in the
# repository. Fails, saying so, when the patch no longer applies. Fast when the copy is
# up to date. Run by scripts/setup.sh; run it yourself before a first plain `cargo build`.
set -euo pipefail
cd "$(dirname "$0")/.."

version=0.7.0
dest=patches/libcontainer
patch=$PWD/patches/libcontainer-armv7.patch
stamp="libcontainer $version + $(sha256sum "$patch" | cut -d' ' -f1)"
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
if ! (cd "$tmp/libcontainer-$version" && patch -p0 --forward --batch --quiet < "$patch"); then
  echo "patch-libcontainer: patches/libcontainer-armv7.patch no longer applies to libcontainer $version:" \
    "refresh the patch (see docs/runtime.md, 32-bit ARM)" >&2
  exit 1
fi
rm -rf "$dest"
mv "$tmp/libcontainer-$version" "$dest"
echo "$stamp" > "$dest/.shoal-patched"
echo "patch-libcontainer: $dest is libcontainer $version with the armv7 patch"
