#!/usr/bin/env bash
# Measures shoal and writes BENCHMARKS.md: container start-up against runc and crun in
# the same run, the memory a container costs, the agent's idle memory, cluster and
# rolling-update timings, and the static agent's size per board target. Run as root on
# the development machine:
#
#   bench/run.sh [ITERATIONS]          (FLEET_BOARDS=5000 for the fleet simulator's full size)
set -euo pipefail
cd "$(dirname "$0")/.."
iterations=${1:-50}

./scripts/setup.sh
missing=()
for tool in runc crun; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "== static agents" >&2
sizes=$(./scripts/build-agents.sh)
agent=$PWD/out/agents/x86_64-unknown-linux-musl/shoal-agent
echo "== release shoal and the bench" >&2
cargo build --quiet --release -p shoal-manager -p shoal-agent -p shoal-bench
./images/build.sh >&2
shoal=$PWD/target/release/shoal

echo "== runtime bench ($iterations runs each)" >&2
runtime=$(SHOAL_AGENT=$agent ./target/release/runtime-bench "$iterations")

# Docker Swarm's figures come from bench/swarm.sh in the same run, as key=value lines
# (swarm_rolled_ms=…) turned into variables for the bench that prints them (SWARM_ROLLED_MS=…).
swarm_figures() { # MODE: the variables, or none if Swarm could not be measured
  local out key value
  if out=$(bench/swarm.sh "$1"); then
    while IFS='=' read -r key value; do
      case $key in swarm_*) echo "${key^^}=$value" ;; esac
    done <<<"$out"
  else
    echo "bench/swarm.sh $1 failed: the Swarm column says 'not measured'" >&2
  fi
}

echo "== Docker Swarm, 3 nodes: create, drain, power cut, idle bytes (bench/swarm.sh cluster)" >&2
mapfile -t swarm_cluster < <(swarm_figures cluster)

echo "== cluster bench" >&2
cluster=$(env "${swarm_cluster[@]}" SHOAL_BIN_DIR=$PWD/target/release ./target/release/cluster-bench)

echo "== idle cost on the wire and Down times (bench/src/idle.rs)" >&2
idle=$(SHOAL_BIN_DIR=$PWD/target/release ./target/release/idle-bench)

echo "== Docker Swarm, the same rolling updates (bench/swarm.sh updates)" >&2
mapfile -t swarm_env < <(swarm_figures updates)

echo "== update bench" >&2
updates=$(env "${swarm_env[@]}" SHOAL_BIN_DIR="$PWD/target/release" ./target/release/update-bench)

echo "== idle memory" >&2
tmp=$(mktemp -d)
cleanup() { kill "${mpid:-}" "${apid:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
"$shoal" --data-dir "$tmp/m" manager init --advertise-addr 127.0.0.1:4299 --hostname bench >"$tmp/init.txt"
token=$(grep -o 'SHOAL-1-[a-z0-9-]*' "$tmp/init.txt")
"$shoal" --data-dir "$tmp/m" manager run >"$tmp/m.log" 2>&1 & mpid=$!
for _ in $(seq 50); do "$shoal" --data-dir "$tmp/m" node ls >/dev/null 2>&1 && break; sleep 0.1; done
"$agent" --data-dir "$tmp/a" join --token "$token" --hostname bench-board 127.0.0.1:4299 >"$tmp/a.log" 2>&1 & apid=$!
for _ in $(seq 100); do "$shoal" --data-dir "$tmp/m" node ls | grep -q bench-board && break; sleep 0.1; done
sleep 5  # let it settle into steady heartbeats
rss() { awk '/^Rss:/ {r=$2} /^Pss:/ {p=$2} END {print r " KiB RSS, " p " KiB PSS"}' "/proc/$1/smaps_rollup"; }
agent_rss=$(rss "$apid")
manager_rss=$(rss "$mpid")

echo "== the agent per board: memory and wakeups at 0, 100 and 0 tasks, twice" >&2
# The static agent (what boards run, musl's allocator) beside the release CLI and manager.
mkdir -p "$tmp/bin"
ln -sf "$agent" "$tmp/bin/shoal-agent"
ln -sf "$shoal" "$tmp/bin/shoal"
per_board=$(SHOAL_BIN_DIR=$tmp/bin ./target/release/agent-bench 100 10 2)

echo "== QEMU boards: timings and idle RSS inside the guest (bench/src/qemu.rs)" >&2
# The aarch64 board, then the armv7 one (never both at once), beside a namespace board
# running the static x86_64 agent; scripts/qemu-board.sh fetches and caches the kernels.
qemu=$(SHOAL_BIN_DIR=$tmp/bin ./target/release/qemu-bench) || qemu="### QEMU boards: timings and the agent's idle memory

qemu-bench failed: not measured in this run."

echo "== networking" >&2
# Overlay data path against the underlay between two boards (namespaces), TCP bulk and
# UDP round trips, from the agent's own netlink code built in release.
overlay=$(cargo test --quiet --release -p shoal-agent --test xfrm -- --include-ignored --nocapture \
  ipsec_figures_ 2>&1 | sed -n 's/^FIGURE //p')
# The lab's networked task 3 and task 2 on release binaries: the mesh against host mode,
# failure windows, and how fast a dead replica leaves DNS.
mesh=$(SHOAL_BIN_DIR=$PWD/target/release cargo test --quiet -p shoal-e2e --test mesh_lab -- \
  --include-ignored --nocapture 2>&1 | grep -E 'requests/s|failure window|Down in|within' || true)
names=$(SHOAL_BIN_DIR=$PWD/target/release cargo test --quiet -p shoal-e2e --test overlay_lab -- \
  --include-ignored --nocapture a_vip_service 2>&1 | grep -E 'leaving DNS|scale 3|DNS in a container' || true)
dns=$(cargo test --quiet --release -p shoal-agent --test dns -- --include-ignored --nocapture 2>&1 |
  grep -E 'p99' || true)

echo "== registry pulls and service logs" >&2
# A pull from a local registry against skopeo, and the bytes per fleet mix
# (bench/src/registry.rs); `service logs` throughput and the agent's memory while it
# streams (bench/src/logs.rs). Each prints its own Markdown section.
./images/build.sh redis >&2
registry=$(SHOAL_BIN_DIR=$PWD/target/release ./target/release/registry-bench)
logs=$(SHOAL_BIN_DIR=$PWD/target/release ./target/release/logs-bench)

# The fleet simulator (bench/src/fleet.rs): FLEET_BOARDS simulated boards (default 1000,
# a few minutes; 5000 for the issue's full figure) with 20 tasks each, 10% of them cut at
# once. Swarm's 5 s heartbeat: the simulator shares the cores with the manager.
fleet_boards=${FLEET_BOARDS:-1000}
echo "== fleet simulator ($fleet_boards boards)" >&2
fleet=$(SHOAL_BIN_DIR=$PWD/target/release ./target/release/fleet-bench --boards "$fleet_boards" \
  --tasks $((fleet_boards * 20)) --services 20 --cut $((fleet_boards / 10)) --heartbeat-period 5s) ||
  fleet="### Fleet simulator

fleet-bench failed: not measured in this run."

# bench/chaos.sh writes its own section, and sections measured by hand are marked
# `<!-- keep: … -->` … `<!-- /keep -->`: keep both.
chaos=$(sed -n '/<!-- chaos: written by bench\/chaos.sh -->/,/<!-- \/chaos -->/p' BENCHMARKS.md 2>/dev/null || true)
kept=$(sed -n '/<!-- keep: /,/<!-- \/keep -->/p' BENCHMARKS.md 2>/dev/null || true)
{
  echo "# Benchmarks"
  echo
  echo "Measured by \`bench/run.sh\` on $(date -u +%Y-%m-%d), $(nproc) cores, Linux $(uname -r), $(uname -m);"
  echo "runc $(runc --version | head -1 | awk '{print $3}'), crun $(crun --version | head -1 | awk '{print $3}')."
  echo "Figures are from one run on a shared 2-core VM: compare within a table, not across runs."
  echo
  echo "$runtime"
  echo
  echo "What the shoal figure includes that the peers' do not: starting the per-container shim"
  echo "process (which keeps exit codes and logs across agent restarts), mounting the overlay"
  echo "root filesystem, and tearing both down again. runc and crun run straight from a directory."
  echo
  echo "$cluster"
  echo
  echo "$idle"
  echo
  echo "Heartbeats are one 61-byte datagram every 1.5 s; the QUIC connection carries a keep-alive"
  echo "every 25 s. Why, and the detector's rules: docs/failure-detection.md."
  echo
  echo "$updates"
  echo
  echo "Docker Swarm ran in the same run (\`bench/swarm.sh\`: Debian's docker.io in its own network"
  echo "namespace, a single-node swarm, images converted with skopeo). Its services run with"
  echo "\`--init\` (tini as PID 1), as shoal's containers always have an init: without one,"
  echo "busybox httpd ignores SIGTERM and every stop waits out Swarm's 10 s grace period"
  echo "(measured: ~35 s to roll, ~13 s to pause). The monitor period (5 s) is in both"
  echo "\`completed\` figures."
  echo
  echo "The agent's own memory does not grow with its containers: each has its shim."
  echo
  echo "### Agent memory"
  echo
  echo "| what | RSS |"
  echo "|---|---|"
  echo "| \`shoal-agent\` (static x86_64), joined, idle, heartbeating | ${agent_rss} |"
  echo "| \`shoal manager run\` with one node | ${manager_rss} |"
  echo
  echo "$per_board"
  echo
  echo "### Networking (boards in network namespaces)"
  echo
  echo "Between two boards, from the agent's netlink code (\`agent/tests/xfrm.rs\`"
  echo "\`ipsec_figures_\`, release; TCP bulk for 3 s, median of 2000 UDP round trips):"
  echo
  echo '```'
  echo "$overlay"
  echo '```'
  echo
  echo "The lab's task 3 over an overlay with the routing mesh, release binaries"
  echo "(\`tests/mesh_lab.rs\`: 300 sequential GETs, one client, a new connection each;"
  echo "failure windows seen by a prober on every board while scaling, draining and"
  echo "power-cutting a board), and service names (\`tests/overlay_lab.rs\`, each check"
  echo "includes one \`shoal exec\`):"
  echo
  echo '```'
  echo "$mesh"
  echo "$names"
  echo '```'
  echo
  echo "The containers' resolver (\`agent/tests/dns.rs\`, release, over loopback): $dns"
  echo
  echo "Docker Swarm's ingress is not measured side by side: its routing mesh needs the"
  echo "kernel's IPVS, which this machine's kernel lacks (\`bench/swarm.sh\` runs dockerd"
  echo "with \`--iptables=false\` for the same reason); shoal's mesh needs only nf_tables."
  echo
  echo "#$registry"
  echo
  echo "#$logs"
  echo
  echo "$fleet"
  echo
  echo "$qemu"
  echo
  echo "### Static agent size per board target (release, stripped)"
  echo
  echo '```'
  echo "$sizes"
  echo '```'
  if [ -n "$kept" ]; then
    echo
    echo "$kept"
  fi
  if [ -n "$chaos" ]; then
    echo
    echo "$chaos"
  fi
} > BENCHMARKS.md
cat BENCHMARKS.md
