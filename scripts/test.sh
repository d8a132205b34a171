#!/usr/bin/env bash
# Runs every check and test shoal has, from a fresh clone: set-up, formatting, lints,
# unit and property tests, end-to-end tests with real processes in network namespaces
# (needs root), and the static agent builds for every board target (linkage checked).
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step's wall time, printed as it ends and summed up at the end: CI has 30 minutes.
timings=()
step_start=$SECONDS
step_name=setup
step() {
  timings+=("$(printf '%5ds  %s' $((SECONDS - step_start)) "$step_name")")
  echo "== $1"
  step_name=$1
  step_start=$SECONDS
}
report() {
  # A failed step leaves the background builds running: stop them (their process group).
  if [ -n "${background:-}" ] && kill -0 "$background" 2>/dev/null; then
    kill -- "-$background" 2>/dev/null || true
  fi
  timings+=("$(printf '%5ds  %s' $((SECONDS - step_start)) "$step_name")")
  echo "== step times (total ${SECONDS}s)"
  printf '%s\n' "${timings[@]}"
}
trap report EXIT

./scripts/setup.sh

step "format"
cargo fmt --all -- --check

step "lints"
cargo clippy --workspace --all-targets -- -D warnings

step "build"
cargo build --workspace --bins

# The static agent builds and the fuzz targets' build need only the sources: they run in
# the background at idle priority (SCHED_IDLE: only CPU the tests leave unused, so they
# never slow a timing-sensitive test), and are waited for below: the downloads and the
# static agents before the QEMU steps (out/ci/agents.done marks them done), the fuzz
# build only before fuzzing, so it goes on using the core the emulated boards leave
# idle. In the run of 2026-11-28 they still needed 500 s after the tests when all of it
# was waited for at once: the tests leave less idle CPU than their waits suggest.
mkdir -p out/ci
rm -f out/ci/agents.done
background_started=$SECONDS
set -m # its own process group, so that report() can stop all of it
(
  # Debian's kernel and QEMU for the IPsec step below (downloaded once, unpacked, cached).
  chrt --idle 0 ./scripts/vm.sh fetch >out/ci/vm-fetch.log 2>&1 || {
    echo "fetching the VM's kernel and QEMU failed" >>out/ci/vm-fetch.log
    exit 3
  }
  # Debian's arm64 and armmp kernels, busybox and qemu-system-arm for the QEMU board step below.
  { chrt --idle 0 ./scripts/qemu-board.sh fetch aarch64 && chrt --idle 0 ./scripts/qemu-board.sh fetch armv7; } \
    >out/ci/qemu-fetch.log 2>&1 || {
    echo "fetching the QEMU board's kernel and QEMU failed" >>out/ci/qemu-fetch.log
    exit 4
  }
  chrt --idle 0 ./scripts/build-agents.sh --check >out/ci/static-agents.log 2>&1 || {
    echo "static agent builds failed" >>out/ci/static-agents.log
    exit 1
  }
  touch out/ci/agents.done
  chrt --idle 0 ./scripts/fuzz.sh build >out/ci/fuzz-build.log 2>&1 || {
    echo "fuzz build failed" >>out/ci/fuzz-build.log
    exit 2
  }
) &
background=$!
set +m

step "images"
./images/build.sh

step "tests"
# Tests that need root (real containers, network namespaces) are marked
# #[ignore = "needs root"]; this command runs as root and includes them. The one other
# ignored test is a release-build timing check (see its doc). Skipped too: the IPsec
# data-path tests that need a kernel with ESP and AES-GCM (agent/tests/xfrm.rs, `ipsec_esp_`:
# they run in a guest with Debian's kernel below), the overlay figures (`ipsec_figures_`, a measurement)
# and the QEMU board tests (`qemu_`: they need the ARM agents the background builds make).
cargo test --workspace -- --include-ignored --skip scale_5000_nodes_100000_tasks --skip ipsec_esp_ --skip ipsec_figures_ \
  --skip qemu_

# The background's exit status, once it has ended: 1 static agents, 2 fuzz build, 3 and
# 4 the downloads. Prints the failed part's log and fails.
background_failed() {
  local status=0
  wait "$background" || status=$?
  [ "$status" -eq 0 ] && return 0
  case $status in
    1) cat out/ci/static-agents.log ;;
    2) cat out/ci/fuzz-build.log ;;
    3) cat out/ci/vm-fetch.log ;;
    4) cat out/ci/qemu-fetch.log ;;
  esac
  echo "background step failed ($status)"
  exit 1
}

step "wait for the static agents and the downloads"
until [ -e out/ci/agents.done ]; do
  kill -0 "$background" 2>/dev/null || break
  sleep 1
done
[ -e out/ci/agents.done ] || { background_failed; echo "the background ended before the static agents"; exit 1; }
echo "static agents and downloads took $((SECONDS - background_started))s since they started"
# That all three agents still build and link statically (the release sizes are bench/run.sh's).
cat out/ci/static-agents.log

step "QEMU ARM boards"
# Debian's arm64 kernel, then its armmp kernel, under QEMU as boards of a mixed fleet
# (tests/qemu_boards.rs), running the aarch64 and armv7 agents just built (`static-check`
# profile, or the release builds in out/agents/ if newer). One at a time: two emulated
# boards at once on 2 cores would make the Down-within-3-s check a test of the machine.
cargo test -p shoal-e2e --test qemu_boards -- --include-ignored --test-threads=1 qemu_aarch64_ qemu_armv7_

step "IPsec on a Debian kernel"
# The ESP data path (this machine's kernel has neither ESP nor AES-GCM): the agent's
# xfrm tests, in a QEMU guest running Debian's kernel (scripts/vm.sh), where the
# `ipsec_esp_` test and the ESP branch of the capture test run.
xfrm_tests=$(cargo test -q -p shoal-agent --test xfrm --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "xfrm":
        print(m["executable"])')
./scripts/vm.sh run "$xfrm_tests" --include-ignored --test-threads=1 ipsec_esp_ an_encrypted_network_never_crosses

step "wait for the fuzz build"
background_failed
echo "background builds took $((SECONDS - background_started))s since they started"

step "fuzz"
# Replays fuzz/corpus and fuzzes each target a few seconds (the build above is reused).
./scripts/fuzz.sh --ci
