#!/usr/bin/env bash
# Measures real Docker Swarm (Debian's docker.io) doing the rolling updates of
# bench/src/updates.rs, for reference: a single-node swarm runs 6 replicas of demo/app:1.0,
# rolls them to 3.0 with `--update-parallelism 2 --update-delay 0s` (time until every task
# runs 3.0, and until UpdateStatus says `completed`), then rolls to the failing 2.0 with
# `--update-failure-action pause` (time until `paused`). Run as root:
#
#   bench/swarm.sh
#
# Prints key=value lines on stdout (swarm_version, swarm_rolled_ms, swarm_completed_ms,
# swarm_paused_ms); progress and diagnostics go to stderr.
#
# Isolation: dockerd and the containerd it starts run only inside the network namespace
# `shoal-swarmbench` and a private mount namespace with their own tmpfs on /run, with all
# state under one temp dir, `--iptables=false --bridge=none`, and their containers under
# the cgroup `/shoal-swarmbench`. The exit trap removes the swarm, every process, cgroup,
# mount, the namespace and the temp dir, leaving the machine as it found it (apart from
# the docker.io and skopeo packages, which are installed once if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

ns=shoal-swarmbench
addr=10.251.0.1
cg=shoal-swarmbench
log() { echo "swarm-bench: $*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root"
for img in 1.0 2.0 3.0; do
  [ -f "out/images/demo-app-$img.tar" ] || die "out/images/demo-app-$img.tar missing: run images/build.sh"
done

# --- state the trap needs -----------------------------------------------------------
tmp=
created_policy=
created_ns=
dockerd_pid=
created_paths=()

remove_policy() {
  if [ -n "$created_policy" ]; then rm -f /usr/sbin/policy-rc.d; created_policy=; fi
}

# Pids whose cgroup (any v1 hierarchy) is under /$cg.
cgroup_pids() {
  local d
  for d in /sys/fs/cgroup/*/"$cg"; do
    [ -d "$d" ] && find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -u
}

ns_pids() { [ -e "/run/netns/$ns" ] && ip netns pids "$ns" 2>/dev/null || true; }

kill_all() { # SIGNAL: every process of ours (in our netns or cgroup)
  local p
  for p in $(ns_pids) $(cgroup_pids); do kill "-$1" "$p" 2>/dev/null || true; done
}

cleanup() {
  local rc=$? i m
  set +e
  trap - EXIT INT TERM HUP
  if [ -n "$dockerd_pid" ] && kill -0 "$dockerd_pid" 2>/dev/null; then
    log "cleaning up: removing the service and leaving the swarm"
    timeout 30 "$docker" service rm web >/dev/null 2>&1
    for _ in $(seq 100); do
      [ -z "$(timeout 10 "$docker" ps -aq 2>/dev/null)" ] && break
      sleep 0.2
    done
    timeout 30 "$docker" swarm leave --force >/dev/null 2>&1
    kill -TERM "$dockerd_pid" 2>/dev/null
    for _ in $(seq 150); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.2; done
  fi
  # Whatever is left (containerd, shims, container processes): TERM, then KILL.
  if [ -n "$(ns_pids)$(cgroup_pids)" ]; then
    log "cleaning up: terminating leftover processes: $(echo $(ns_pids) $(cgroup_pids))"
    kill_all TERM
    for _ in $(seq 50); do [ -z "$(ns_pids)$(cgroup_pids)" ] && break; sleep 0.2; done
    kill_all KILL
    for _ in $(seq 50); do [ -z "$(ns_pids)$(cgroup_pids)" ] && break; sleep 0.2; done
  fi
  [ -n "$dockerd_pid" ] && wait "$dockerd_pid" 2>/dev/null
  # Cgroups (depth first), only the ones this run created.
  for d in /sys/fs/cgroup/*/"$cg"; do
    [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  # Mounts under the temp dir in this mount namespace (normally none: dockerd mounts in
  # its own namespace, which died with it).
  if [ -n "$tmp" ]; then
    for i in 1 2 3; do
      m=$(awk -v t="$tmp" '$5 == t || index($5, t "/") == 1 {print $5}' /proc/self/mountinfo | sort -r)
      [ -z "$m" ] && break
      for p in $m; do umount "$p" 2>/dev/null || umount -l "$p" 2>/dev/null; done
    done
  fi
  if [ -n "$created_ns" ]; then ip netns delete "$ns" 2>/dev/null; fi
  for p in "${created_paths[@]}"; do rm -rf "$p"; done
  if [ -n "$tmp" ]; then
    if awk -v t="$tmp" 'index($5, t) == 1 {f=1} END {exit !f}' /proc/self/mountinfo; then
      log "WARNING: mounts left under $tmp, not deleting it"
    else
      rm -rf "$tmp"
    fi
  fi
  remove_policy
  # Report anything that survived.
  [ -n "$(ns_pids)$(cgroup_pids)" ] && log "WARNING: processes left: $(ns_pids) $(cgroup_pids)"
  ls -d /sys/fs/cgroup/*/"$cg" >/dev/null 2>&1 && log "WARNING: cgroups left under /sys/fs/cgroup/*/$cg"
  ip netns list 2>/dev/null | grep -qw "$ns" && log "WARNING: netns $ns left"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# --- packages -------------------------------------------------------------------------
if ! command -v dockerd >/dev/null || ! command -v skopeo >/dev/null; then
  log "installing docker.io and skopeo (services are not started: policy-rc.d exits 101)"
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io skopeo >&2
  remove_policy
fi
# The docker.io CLI (another docker CLI may come first in PATH).
docker=/usr/bin/docker
[ -x "$docker" ] || docker=$(command -v docker) || die "no docker CLI"
dockerd=$(command -v dockerd)

# Paths outside the temp dir dockerd/containerd may create despite their flags: removed
# afterwards if this run created them.
for p in /etc/docker /opt/containerd /var/lib/docker /var/lib/containerd /var/lib/containers; do
  [ -e "$p" ] || created_paths+=("$p")
done

# --- namespace, temp dir, daemon ----------------------------------------------------------
if ip netns list | grep -qw "$ns"; then
  [ -z "$(ip netns pids "$ns")" ] || die "netns $ns exists and has processes: another run?"
  log "removing stale netns $ns"
  ip netns delete "$ns"
fi
ls -d /sys/fs/cgroup/*/"$cg" >/dev/null 2>&1 && [ -n "$(cgroup_pids)" ] && die "cgroup /$cg has processes: another run?"
tmp=$(mktemp -d /tmp/shoal-swarmbench.XXXXXX)
ip netns add "$ns"
created_ns=1
ip -n "$ns" link set lo up
# The kernel has no dummy driver: a veth pair with both ends inside the namespace.
ip -n "$ns" link add sb0 type veth peer name sb1
ip -n "$ns" addr add "$addr/24" dev sb0
ip -n "$ns" link set sb0 up
ip -n "$ns" link set sb1 up

export DOCKER_HOST=unix://$tmp/docker.sock DOCKER_CONFIG=$tmp/cli
mkdir -p "$tmp/cli"
# dockerd 20.10 writes its trust key to /etc/docker/key.json unless daemon.json says
# otherwise (a setting with no command-line flag).
echo "{\"deprecated-key-path\": \"$tmp/key.json\"}" >"$tmp/daemon.json"
log "starting dockerd in netns $ns, state in $tmp"
# nsenter, unshare and sh exec (no --fork), so $! is dockerd itself. The private mount
# namespace gets its own /run and /opt, so containerd's shim sockets (/run/containerd/s),
# its /opt/containerd and anything else written there stay inside it and vanish with it.
# DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1: tasks use the loaded image without first trying
# (and failing) to pull it from a registry; the namespace has no route out anyway.
DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 nsenter --net="/run/netns/$ns" \
  unshare --mount --propagation private -- sh -c 'mount -t tmpfs -o mode=755 swarmbench-run /run &&
    { [ ! -d /opt ] || mount -t tmpfs -o mode=755 swarmbench-opt /opt; } && exec "$@"' sh \
  "$dockerd" \
  --config-file "$tmp/daemon.json" \
  --data-root "$tmp/data" --exec-root "$tmp/exec" --pidfile "$tmp/docker.pid" \
  -H "unix://$tmp/docker.sock" \
  --iptables=false --ip6tables=false --bridge=none --ip-forward=false --ip-masq=false \
  --userland-proxy=false --storage-driver overlay2 --cgroup-parent "/$cg" \
  >"$tmp/dockerd.log" 2>&1 &
dockerd_pid=$!
for _ in $(seq 150); do
  "$docker" version >/dev/null 2>&1 && break
  kill -0 "$dockerd_pid" 2>/dev/null || { cat "$tmp/dockerd.log" >&2; die "dockerd exited"; }
  sleep 0.2
done
"$docker" version >&2 || { tail -50 "$tmp/dockerd.log" >&2; die "dockerd did not come up"; }
version=$("$docker" version -f '{{.Server.Version}}')
version=${version%%+*} # 20.10.24+dfsg1 -> 20.10.24
log "docker info: $("$docker" info -f 'storage={{.Driver}} cgroup={{.CgroupDriver}} runtime={{.DefaultRuntime}}')"

# --- images ---------------------------------------------------------------------------
for v in 1.0 2.0 3.0; do
  ref=$(tar -xOf "out/images/demo-app-$v.tar" index.json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"])')
  # skopeo as root updates /var/lib/containers/cache/blob-info-cache-v1.boltdb: give it a
  # throwaway one in a private mount namespace.
  unshare --mount --propagation private -- sh -c '[ -d /var/lib/containers ] && mount -t tmpfs swarmbench-c /var/lib/containers; exec "$@"' sh \
    skopeo --tmpdir "$tmp" copy -q --override-os linux --override-arch amd64 \
    "oci-archive:out/images/demo-app-$v.tar:$ref" "docker-archive:$tmp/app-$v.tar:demo/app:$v" >&2
  "$docker" load -q -i "$tmp/app-$v.tar" >&2
  rm -f "$tmp/app-$v.tar"
done
"$docker" image ls >&2

# --- swarm ----------------------------------------------------------------------------
"$docker" swarm init --advertise-addr "$addr" >/dev/null
log "swarm initialised"

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# Whether the 6 tasks the manager wants running all run $1 (as updates.rs's all_on).
all_on() {
  local rows
  rows=$("$docker" service ps --filter desired-state=running --format '{{.Image}} {{.CurrentState}}' web 2>/dev/null) || return 1
  [ "$(grep -c . <<<"$rows")" = 6 ] || return 1
  [ "$(grep -c "^$1 Running" <<<"$rows")" = 6 ]
}
update_state() { "$docker" service inspect -f '{{.UpdateStatus.State}}' web 2>/dev/null; }

wait_until() { # WHAT TIMEOUT_S COMMAND...
  local what=$1 deadline=$(($(now_ms) + $2 * 1000))
  shift 2
  until "$@"; do
    [ "$(now_ms)" -lt "$deadline" ] || { "$docker" service ps --no-trunc web >&2; die "timed out waiting for $what"; }
    sleep 0.05
  done
}
state_is() { [ "$(update_state)" = "$1" ]; }

# --init (tini as PID 1, forwarding signals) as shoal always runs its own init: without
# it busybox httpd as PID 1 ignores SIGTERM and every stop waits the 10 s grace period.
init=(--init)
[ "${SWARM_BENCH_INIT:-1}" = 0 ] && init=()
log "service options: ${init[*]:-(no --init)}"
"$docker" service create -d -q --no-resolve-image "${init[@]}" --name web --replicas 6 demo/app:1.0 >/dev/null
wait_until "6 x 1.0" 60 all_on demo/app:1.0
log "6 x demo/app:1.0 running"

t0=$(now_ms)
"$docker" service update -d -q --no-resolve-image --image demo/app:3.0 \
  --update-parallelism 2 --update-delay 0s web >/dev/null
wait_until "6 x 3.0" 120 all_on demo/app:3.0
rolled=$(($(now_ms) - t0))
log "every task runs 3.0 after $rolled ms"
wait_until "completed" 60 state_is completed
completed=$(($(now_ms) - t0))
log "update completed after $completed ms"

t0=$(now_ms)
"$docker" service update -d -q --no-resolve-image --image demo/app:2.0 --update-failure-action pause web >/dev/null
wait_until "paused" 120 state_is paused
paused=$(($(now_ms) - t0))
log "update to 2.0 paused after $paused ms"
"$docker" service ps web >&2

echo "swarm_version=$version"
echo "swarm_rolled_ms=$rolled"
echo "swarm_completed_ms=$completed"
echo "swarm_paused_ms=$paused"
