#!/usr/bin/env bash
# Pull of the redis image from a local registry: shoal (manager pull + distribution to
# 3 boards) against `skopeo copy` of the same image, and the bytes fetched per fleet
# mix. Prints a Markdown section on stdout (for BENCHMARKS.md). Run as root:
#
#   bench/registry.sh            # release binaries, as bench/run.sh builds them
#   PROFILE=debug bench/registry.sh
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-release}
./scripts/setup.sh >&2
flag=(--release)
[ "$profile" = debug ] && flag=()
cargo build --quiet "${flag[@]}" -p shoal-manager -p shoal-agent -p shoal-bench >&2
./images/build.sh redis >&2
target=${CARGO_TARGET_DIR:-$PWD/target}/$profile
SHOAL_BIN_DIR=$target "$target/registry-bench"
