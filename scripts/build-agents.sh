#!/usr/bin/env bash
# Builds the static shoal-agent for every board target and prints the sizes. The
# binaries land in out/agents/<target>/shoal-agent.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf)
mkdir -p out/agents
printf '%-34s %10s  %s\n' TARGET BYTES LINKAGE
# One cargo run for all three: the release profile's LTO step is single-threaded, so the
# targets' final links overlap instead of queueing (CI has 30 minutes).
cargo build --quiet --release -p shoal-agent "${targets[@]/#/--target=}"
for t in "${targets[@]}"; do
  bin=target/$t/release/shoal-agent
  mkdir -p "out/agents/$t"
  cp "$bin" "out/agents/$t/shoal-agent"
  linkage=$(file -b "$bin" | grep -oE 'static-pie linked|statically linked|dynamically linked' || true)
  if [ "${linkage:-}" = "dynamically linked" ] || [ -z "${linkage:-}" ]; then
    echo "shoal-agent for $t is not static: $(file -b "$bin")" >&2
    exit 1
  fi
  printf '%-34s %10s  %s\n' "$t" "$(stat -c %s "$bin")" "$linkage"
done
