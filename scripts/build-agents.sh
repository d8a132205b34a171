#!/usr/bin/env bash
# Builds the static shoal-agent for every board target and prints the sizes. The
# release binaries land in out/agents/<target>/shoal-agent.
#
#   scripts/build-agents.sh           release builds: what boards get, and their sizes
#   scripts/build-agents.sh --check   CI's proof that all three still build and link
#                                     statically, in the `static-check` profile (no
#                                     optimisation, no LTO: a third of the time); its
#                                     sizes are not the release's
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
[ "${1:-}" = --check ] && profile=static-check
targets=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf)
mkdir -p out/agents
printf '%-34s %10s  %s\n' TARGET BYTES LINKAGE
# One cargo run for all three: the release profile's LTO step is single-threaded, so the
# targets' final links overlap instead of queueing (CI has 30 minutes).
cargo build --quiet --profile "$profile" -p shoal-agent "${targets[@]/#/--target=}"
for t in "${targets[@]}"; do
  bin=${CARGO_TARGET_DIR:-target}/$t/$profile/shoal-agent
  if [ "$profile" = release ]; then
    mkdir -p "out/agents/$t"
    cp "$bin" "out/agents/$t/shoal-agent"
  fi
  linkage=$(file -b "$bin" | grep -oE 'static-pie linked|statically linked|dynamically linked' || true)
  if [ "${linkage:-}" = "dynamically linked" ] || [ -z "${linkage:-}" ]; then
    echo "shoal-agent for $t is not static: $(file -b "$bin")" >&2
    exit 1
  fi
  printf '%-34s %10s  %s\n' "$t" "$(stat -c %s "$bin")" "$linkage"
done
[ "$profile" = release ] || echo "(profile $profile: sizes are not the release's; bench/run.sh measures those)"
