#!/usr/bin/env bash
# Refreshes agent/hot-text.ld (or agent/hot-text-armv7.ld), the order in which the static
# agents' functions are laid out (agent/build.rs): the code an agent runs while joining
# and idle first, then what its first task needs. The kernel maps a binary's pages 64 KiB at a time
# around each page a process touches, so the agent's resident size follows how scattered
# its hot code is, not how much of it there is (docs/cross.md, "The agent's resident size").
#
#   scripts/agent-order.sh [armv7]   ~15 min: a release build of the aarch64 (or armv7)
#                             agent with a link map, three QEMU boards in turn that run it
#                             under qemu-bench with QEMU's log of the code it translates
#                             (AGENT_ORDER_RUNS), then the new agent/hot-text.ld (for the
#                             aarch64 and x86_64 agents) or agent/hot-text-armv7.ld
#
# Run it when the idle RSS in BENCHMARKS.md creeps up (new code on the idle path, or a
# dependency or toolchain update: the script's exact names then go stale; its patterns
# without Rust's symbol hashes keep most of the order). Needs root, binutils' readelf,
# the debug binaries qemu-bench's cluster runs (`cargo build --bins`) and images/build.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

arch=${1:-aarch64}
case $arch in
  aarch64) target=aarch64-unknown-linux-musl out=agent/hot-text.ld ;;
  armv7) target=armv7-unknown-linux-gnueabihf out=agent/hot-text-armv7.ld ;;
  *) echo "agent-order: unknown board architecture $arch (aarch64 or armv7)" >&2; exit 2 ;;
esac
work=$(mktemp -d /tmp/shoal-agent-order.XXXXXX)
trap 'rm -rf "$work"' EXIT
target_dir=${CARGO_TARGET_DIR:-target}

echo "agent-order: building the $target agent with a link map" >&2
SHOAL_AGENT_LINK_MAP=$work/agent.map cargo build --quiet --release --target "$target" -p shoal-agent
mkdir -p "out/agents/$target"
cp "$target_dir/$target/release/shoal-agent" "out/agents/$target/shoal-agent"

# Several runs: each misses some of what an idle agent runs now and then.
runs=${AGENT_ORDER_RUNS:-3}
cargo build --quiet -p shoal-bench --bin qemu-bench
logs=()
for n in $(seq "$runs"); do
  echo "agent-order: run $n of $runs: a QEMU board (qemu-bench) running it, QEMU logging the code it runs" >&2
  QEMU_BOARD_TRACE=$work/qemu-$n.log QEMU_BENCH_CONSOLES=$work/consoles-$n QEMU_BENCH_ARCHES=$arch \
    "$target_dir/debug/qemu-bench" >&2
  logs+=("$work/qemu-$n.log" "$(cat "$work/consoles-$n/$arch-idle.trace-offset")")
done

python3 scripts/agent-order.py "out/agents/$target/shoal-agent" "$work/agent.map" "$out" "${logs[@]}"
echo "agent-order: $out written; scripts/build-agents.sh links the agents with it" >&2
