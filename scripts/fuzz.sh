#!/usr/bin/env bash
# Fuzzes every decoder that takes outside bytes (the targets in fuzz/fuzz_targets/, see
# docs/fuzzing.md) with libFuzzer on the stable toolchain: the flags below are the ones
# `cargo fuzz` passes, without AddressSanitizer (which needs nightly; the decoders are
# safe Rust, so panics, overflows and hangs are what there is to find).
#
#   scripts/fuzz.sh --quick              build, replay the corpus, fuzz each target a few seconds
#   scripts/fuzz.sh --long SECONDS [T…]  fuzz each target (or T…) SECONDS; print a table and
#                                        merge new coverage into fuzz/corpus (minimised)
#   scripts/fuzz.sh --save [T…]          merge the last run's new coverage into fuzz/corpus
#   scripts/fuzz.sh run TARGET [ARGS…]   fuzz one target until stopped (libFuzzer ARGS)
#   scripts/fuzz.sh build
#
# A crash or hang leaves its input in $FUZZ_OUT/artifacts/TARGET/ and fails the run.
# FUZZ_QUICK_SECONDS (default 5) sets the --quick time per target; FUZZ_TARGET_DIR the
# build dir. CI does not fuzz: `cargo test --workspace` replays fuzz/corpus through the
# same targets (fuzz/tests/corpus.rs), from the workspace's debug build.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(frame messages token template service_args oci unpack manager_archive agent_archive compose)
triple=$(rustc -vV | sed -n 's/^host: //p')
target_dir=${FUZZ_TARGET_DIR:-$PWD/fuzz/target}
out=${FUZZ_OUT:-$target_dir/run}
bin_dir=$target_dir/$triple/fuzz

# Largest input tried per target: frames and text stay small, archives need room for a
# tar header or three.
max_len() {
  case $1 in
    unpack | manager_archive | agent_archive | oci) echo 16384 ;;
    *) echo 4096 ;;
  esac
}

build() {
  echo "== fuzz: build ($triple)"
  local flags=(
    -Cpasses=sancov-module
    -Cllvm-args=-sanitizer-coverage-level=4
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
    -Cllvm-args=-sanitizer-coverage-pc-table
    -Cllvm-args=-sanitizer-coverage-trace-compares
    --cfg fuzzing
    -Cdebug-assertions
    -Coverflow-checks
  )
  # The `fuzz` profile (Cargo.toml) and a target dir of its own: the coverage flags
  # change every crate's build. --target keeps the flags off build scripts and proc macros.
  RUSTFLAGS="${flags[*]}" CARGO_TARGET_DIR="$target_dir" \
    cargo build --profile fuzz -p shoal-fuzz --features libfuzzer --target "$triple" --bins
}

# fuzz TARGET SECONDS: fuzz from a working copy of the committed corpus, then print one
# table row from libFuzzer's final stats. Fails when libFuzzer found a crash or hang.
fuzz() {
  local t=$1 secs=$2
  local work=$out/corpus/$t artifacts=$out/artifacts/$t log=$out/logs/$t.log
  mkdir -p "$work" "$artifacts" "$(dirname "$log")" "fuzz/corpus/$t"
  local status=0
  "$bin_dir/$t" "$work" "fuzz/corpus/$t" \
    -max_total_time="$secs" -max_len="$(max_len "$t")" -timeout=25 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1 || status=$?
  local execs rate cov ft crashes
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -oE 'ft: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  crashes=$(find "$artifacts" -type f | wc -l)
  printf '| %-15s | %6ss | %11s | %7s | %5s | %6s | %7s |\n' \
    "$t" "$secs" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$crashes"
  if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    echo "fuzz: $t failed (exit $status); its log:" >&2
    tail -40 "$log" >&2
    return 1
  fi
}

table_head() {
  echo "| target          |   time | executions  | execs/s | cov   | ft     | crashes |"
  echo "|-----------------|--------|-------------|---------|-------|--------|---------|"
}

# Adds what the last run found that the committed corpus does not cover: a set-cover
# merge keeps few inputs, and of those the smallest first, up to FUZZ_CORPUS_BUDGET bytes
# and FUZZ_CORPUS_FILES files per target and run, so the committed corpus stays small.
save_new() {
  local t=$1 tmp=$out/merge/$t budget=${FUZZ_CORPUS_BUDGET:-16384} used=0 added=0 size f
  rm -rf "$tmp"
  mkdir -p "$tmp" "$out/artifacts/$t" "$out/logs"
  cp "fuzz/corpus/$t"/* "$tmp"/
  "$bin_dir/$t" -merge=1 -set_cover_merge=1 -max_len="$(max_len "$t")" -artifact_prefix="$out/artifacts/$t/" \
    "$tmp" "$out/corpus/$t" >"$out/logs/$t.merge.log" 2>&1
  while read -r size f; do
    [ $((used + size)) -gt "$budget" ] || [ "$added" -ge "${FUZZ_CORPUS_FILES:-200}" ] && break
    cp "$tmp/$f" "fuzz/corpus/$t/"
    used=$((used + size)) added=$((added + 1))
  done < <(for f in "$tmp"/*; do
    [ -e "fuzz/corpus/$t/${f##*/}" ] || echo "$(stat -c %s "$f") ${f##*/}"
  done | sort -n)
  echo "fuzz: $t: $added new corpus entries ($used bytes)"
}

case ${1:-} in
  --quick)
    build
    rm -rf "$out"
    echo "== fuzz: replay the corpus and fuzz each target ${FUZZ_QUICK_SECONDS:-5}s"
    table_head
    failed=0
    for t in "${targets[@]}"; do fuzz "$t" "${FUZZ_QUICK_SECONDS:-5}" || failed=1; done
    exit $failed
    ;;
  --long)
    secs=${2:?usage: scripts/fuzz.sh --long SECONDS [TARGET…]}
    shift 2
    [ $# -gt 0 ] && targets=("$@")
    build
    rm -rf "$out"
    table_head
    failed=0
    for t in "${targets[@]}"; do fuzz "$t" "$secs" || failed=1; done
    for t in "${targets[@]}"; do save_new "$t"; done
    exit $failed
    ;;
  --save)
    shift
    [ $# -gt 0 ] && targets=("$@")
    for t in "${targets[@]}"; do save_new "$t"; done
    ;;
  run)
    t=${2:?usage: scripts/fuzz.sh run TARGET [LIBFUZZER ARGS…]}
    shift 2
    build
    mkdir -p "$out/corpus/$t" "$out/artifacts/$t" "fuzz/corpus/$t"
    exec "$bin_dir/$t" "$out/corpus/$t" "fuzz/corpus/$t" -max_len="$(max_len "$t")" \
      -artifact_prefix="$out/artifacts/$t/" "$@"
    ;;
  build) build ;;
  *)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
