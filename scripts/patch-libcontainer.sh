#!/usr/bin/env bash
# Makes patches/libcontainer/, patches/libcgroups/ and patches/oci-spec/ (used through
# [patch.crates-io] in Cargo.toml): the published sources from crates.io with our diffs
# applied.
#   libcontainer: patches/libcontainer-armv7.patch, so that the agent builds for 32-bit
#     ARM, then patches/libcontainer-criu-feature.patch and
#     patches/libcontainer-net-devices-feature.patch (CRIU and the netlink client of
#     `linux.netDevices` behind cargo features the agent leaves off: its size).
#     Then patches/libcontainer-no-regex.patch (Intel RDT's schemata lines parsed by
#     hand: the regex crate out of the agent, its size).
#   libcgroups: patches/libcgroups-v1-mountinfo-once.patch (the cgroup v1 manager reads
#     mountinfo once, not once per controller: container start-up, issue 16), and
#     patches/libcgroups-oci-spec-runtime-only.patch (oci-spec without its defaults).
#   oci-spec: patches/oci-spec-no-regex.patch (regex only for the distribution feature).
# Only the diffs are kept in the repository. Fails, saying so, when a patch no longer
# applies. Fast when the copies are up to date. Run by scripts/setup.sh; run it yourself
# before a first plain `cargo build`.
set -euo pipefail
cd "$(dirname "$0")/.."

# make_patched CRATE VERSION PATCH...: patches/CRATE, the crate's published source with
# the patches applied in order.
make_patched() {
  local crate=$1 version=$2
  shift 2
  local dest=patches/$crate patches=("$@") stamp tmp file patch
  stamp="$crate $version + $(cat "${patches[@]}" | sha256sum | cut -d' ' -f1)"
  if [ -f "$dest/.shoal-patched" ] && [ "$(cat "$dest/.shoal-patched")" = "$stamp" ]; then
    return 0
  fi
  tmp=$(mktemp -d)
  # A throwaway package that depends on exactly this version makes cargo download (and
  # verify against the registry's checksum) the .crate file.
  mkdir -p "$tmp/fetch/src"
  cat > "$tmp/fetch/Cargo.toml" <<TOML
[package]
name = "shoal-fetch-$crate"
version = "0.0.0"
edition = "2021"
[dependencies]
$crate = { version = "=$version", default-features = false }
TOML
  : > "$tmp/fetch/src/lib.rs"
  cargo fetch --quiet --manifest-path "$tmp/fetch/Cargo.toml"
  file=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$crate-$version.crate" | head -n 1)
  tar -xzf "$file" -C "$tmp"
  for patch in "${patches[@]}"; do
    if ! (cd "$tmp/$crate-$version" && patch -p0 --forward --batch --quiet < "$patch"); then
      echo "patch-libcontainer: patches/$(basename "$patch") no longer applies to $crate $version:" \
        "refresh the patch (see docs/runtime.md, 32-bit ARM)" >&2
      rm -rf "$tmp"
      exit 1
    fi
  done
  rm -rf "$dest"
  mv "$tmp/$crate-$version" "$dest"
  echo "$stamp" > "$dest/.shoal-patched"
  rm -rf "$tmp"
  echo "patch-libcontainer: $dest is $crate $version with $(printf '%s ' "${patches[@]##*/}")"
}

make_patched libcontainer 0.7.0 "$PWD/patches/libcontainer-armv7.patch" \
  "$PWD/patches/libcontainer-criu-feature.patch" "$PWD/patches/libcontainer-net-devices-feature.patch" \
  "$PWD/patches/libcontainer-no-regex.patch"
make_patched libcgroups 0.7.0 "$PWD/patches/libcgroups-v1-mountinfo-once.patch" \
  "$PWD/patches/libcgroups-oci-spec-runtime-only.patch"
make_patched oci-spec 0.10.0 "$PWD/patches/oci-spec-no-regex.patch"
