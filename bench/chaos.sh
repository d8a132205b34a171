#!/usr/bin/env bash
# The long chaos run (tests/chaos.rs): seeds FIRST..LAST, SECS seconds of faults each,
# against a manager and 3 boards in network namespaces. Writes the figures (faults by
# kind, invariant violations, time to converge after the last fault) into the chaos
# section of BENCHMARKS.md. Run as root:
#
#   bench/chaos.sh [FIRST LAST [SECS]]        # default: seeds 101..106, 60 s each (~10 min)
#
# A failing seed is printed with its schedule; replay it with
#   SHOAL_CHAOS_SEEDS=<seed> SHOAL_CHAOS_SECS=<secs> cargo test -p shoal-e2e --test chaos -- --include-ignored
set -uo pipefail
cd "$(dirname "$0")/.."
first=${1:-101}
last=${2:-106}
secs=${3:-60}
report=$(mktemp)
log=${CHAOS_LOG:-out/chaos.log}
mkdir -p "$(dirname "$log")"

cargo build --quiet --bins
cargo build --quiet --tests -p shoal-e2e
started=$(date +%s)
SHOAL_CHAOS_SEEDS="$first..$last" SHOAL_CHAOS_SECS=$secs SHOAL_CHAOS_REPORT=$report \
  cargo test --quiet -p shoal-e2e --test chaos chaos_seeded -- --include-ignored --nocapture >"$log" 2>&1
status=$?
minutes=$(( ($(date +%s) - started + 59) / 60 ))
echo "chaos run: exit $status, log in $log" >&2

seeds=$(wc -l <"$report")
[ "$seeds" -gt 0 ] || { echo "no seed finished: see $log" >&2; exit 1; }
faults=$(jq -rs '[.[].faults | to_entries[]] | group_by(.key) | map("\(.[0].key) \(map(.value) | add)") | join(", ")' "$report")
total=$(jq -s '[.[].faults[]] | add' "$report")
violations=$(jq -s '[.[].violations | length] | add' "$report")
leaks=$(jq -s '[.[].leaks] | add' "$report")
updates=$(jq -s '[.[].updates] | add' "$report")
converged=$(jq -s '[.[] | select(.converge_ms != null)] | length' "$report")
conv=$(jq -rs '[.[].converge_ms | select(. != null)] | sort | if length == 0 then "—" else "\(.[length/2|floor]) ms / \(.[-1]) ms" end' "$report")
stale=$(jq -rs '[.[].stale_ms[]] | sort | if length == 0 then "—" else "\(.[length/2|floor]) ms / \(.[-1]) ms (\(length) heals)" end' "$report")
paused=$(jq -s '[.[].paused_updates | length] | add' "$report")

section=$(cat <<MD
<!-- chaos: written by bench/chaos.sh -->
### Chaos (tests/chaos.rs: a manager and 3 boards, faults from a seeded schedule)

\`bench/chaos.sh $first $last $secs\` on $(date -u +%Y-%m-%d): seeds $first–$last, $secs s of faults each
(${minutes} min in all, debug build, on the shared 2-core VM). Services: \`web\` (3 replicas, host
port 8000) and \`steady\` (4 replicas), both stop-first, rolled between demo/app 1.0, 2.0 (fails,
rolls back by itself) and 3.0 every 3–8 s. A board's disk is a 48 MiB tmpfs of its own.

| what | figure |
|---|---|
| seeds run / converged | $seeds / $converged |
| faults injected | $total ($faults) |
| rolling updates started during the faults | $updates |
| invariant violations (slot > 1, two \`web\` on a board, a port bound twice, not converged) | $violations (goal 0) |
| leaks after \`service rm\` + stopping agents and manager | $leaks |
| converge after the last fault healed: median / max | $conv |
| stale containers of a healed board (agent killed, cable cut) gone after: median / max | $stale |
| updates left paused by a fault | $paused |

What the violations and leaks were, and which are fixed: docs/chaos.md ("What it found").
<!-- /chaos -->
MD
)
if grep -q '<!-- chaos: written by bench/chaos.sh -->' BENCHMARKS.md; then
  awk -v section="$section" '
    /<!-- chaos: written by bench\/chaos.sh -->/ { print section; skip = 1; next }
    /<!-- \/chaos -->/ { skip = 0; next }
    !skip { print }' BENCHMARKS.md >BENCHMARKS.md.new && mv BENCHMARKS.md.new BENCHMARKS.md
else
  printf '\n%s\n' "$section" >>BENCHMARKS.md
fi
echo "$section"
rm -f "$report"
exit $status
