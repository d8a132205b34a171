#!/usr/bin/env bash
# Measures real Docker Swarm (Debian's docker.io) doing what shoal's benches do, for the
# side-by-side columns of BENCHMARKS.md. Run as root:
#
#   bench/swarm.sh [updates]   # bench/src/updates.rs's rolling updates, on a 1-node swarm
#   bench/swarm.sh cluster     # bench/src/cluster.rs's create, drain, power cut, idle bytes,
#                              # on a 3-node swarm (a manager and two workers)
#
# updates: 6 replicas of demo/app:1.0 roll to 3.0 with `--update-parallelism 2
# --update-delay 0s` (time until every task runs 3.0, and until UpdateStatus says
# `completed`), then to the failing 2.0 with `--update-failure-action pause` (time until
# `paused`). Prints swarm_version, swarm_rolled_ms, swarm_completed_ms, swarm_paused_ms.
#
# cluster: `service create --replicas 6` → 6/6 running; bytes on each node's wire while
# idle with them running (30 s); drain node2 → all 6 running elsewhere; node3's power cut
# (its link down, every process of it killed) → Down in `node ls` → 6/6 running again.
# Prints swarm_version, swarm_create_ms, swarm_idle_worker_bps, swarm_idle_manager_bps,
# swarm_drain_ms, swarm_down_ms, swarm_failover_ms.
#
# Progress and diagnostics go to stderr; key=value lines to stdout.
#
# Isolation: each node's dockerd and the containerd it starts run only inside their own
# network namespace (`shoal-swarmbenchN`, a veth to a bridge in the namespace
# `shoal-swarmbench`), their own UTS namespace (hostname swarmN) and a private mount
# namespace with its own tmpfs on /run and /opt, with all state under one temp dir,
# `--iptables=false --bridge=none`, and their containers under the cgroup
# `/shoal-swarmbench/nN`. The exit trap removes the swarm, every process, cgroup, mount,
# the namespaces and the temp dir, leaving the machine as it found it (apart from the
# docker.io and skopeo packages, which are installed once if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-updates}
case $mode in
  updates) nodes=1 ;;
  cluster) nodes=3 ;;
  *)
    echo "usage: bench/swarm.sh [updates|cluster]" >&2
    exit 2
    ;;
esac
switch=shoal-swarmbench # the namespace holding the bridge the nodes hang on
cg=shoal-swarmbench
node_ns() { echo "shoal-swarmbench$1"; }
node_addr() { echo "10.251.0.$1"; }
log() { echo "swarm-bench: $*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root"
for img in 1.0 2.0 3.0; do
  [ -f "out/images/demo-app-$img.tar" ] || die "out/images/demo-app-$img.tar missing: run images/build.sh"
done

# --- state the trap needs -----------------------------------------------------------
tmp=
created_policy=
created_ns=()
dockerd_pids=() # by node index - 1
created_paths=()

remove_policy() {
  if [ -n "$created_policy" ]; then rm -f /usr/sbin/policy-rc.d; created_policy=; fi
}

# Pids whose cgroup (any v1 hierarchy) is under /$cg[/$1].
cgroup_pids() {
  local d
  for d in /sys/fs/cgroup/*/"$cg${1:+/$1}"; do
    [ -d "$d" ] && find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -u
}

# Pids in node $1's network namespace, or in any of ours without an argument.
ns_pids() {
  local i
  for i in ${1:-$(seq "$nodes")}; do
    [ -e "/run/netns/$(node_ns "$i")" ] && ip netns pids "$(node_ns "$i")" 2>/dev/null
  done
  true
}

kill_all() { # SIGNAL [NODE]: every process of ours (in our netns or cgroup), or of one node
  local p
  for p in $(ns_pids "${2:-}") $(cgroup_pids "${2:+n$2}"); do kill "-$1" "$p" 2>/dev/null || true; done
}

# The docker CLI talking to node $1's daemon.
dk() {
  local i=$1
  shift
  DOCKER_HOST="unix://$tmp/n$i/docker.sock" "$docker" "$@"
}

alive() { [ -n "${dockerd_pids[$1 - 1]:-}" ] && kill -0 "${dockerd_pids[$1 - 1]}" 2>/dev/null; }

cleanup() {
  local rc=$? i m p
  set +e
  trap - EXIT INT TERM HUP
  if alive 1; then
    log "cleaning up: removing the service and leaving the swarm"
    timeout 30 "$docker" -H "unix://$tmp/n1/docker.sock" service rm web >/dev/null 2>&1
    for i in $(seq "$nodes"); do
      alive "$i" || continue
      for _ in $(seq 100); do
        [ -z "$(timeout 10 "$docker" -H "unix://$tmp/n$i/docker.sock" ps -aq 2>/dev/null)" ] && break
        sleep 0.2
      done
    done
  fi
  for i in $(seq "$nodes" -1 1); do
    alive "$i" || continue
    timeout 30 "$docker" -H "unix://$tmp/n$i/docker.sock" swarm leave --force >/dev/null 2>&1
    kill -TERM "${dockerd_pids[$i - 1]}" 2>/dev/null
  done
  for i in $(seq "$nodes"); do
    for _ in $(seq 150); do alive "$i" || break; sleep 0.2; done
  done
  # Whatever is left (containerd, shims, container processes): TERM, then KILL.
  if [ -n "$(ns_pids)$(cgroup_pids)" ]; then
    log "cleaning up: terminating leftover processes: $(echo $(ns_pids) $(cgroup_pids))"
    kill_all TERM
    for _ in $(seq 50); do [ -z "$(ns_pids)$(cgroup_pids)" ] && break; sleep 0.2; done
    kill_all KILL
    for _ in $(seq 50); do [ -z "$(ns_pids)$(cgroup_pids)" ] && break; sleep 0.2; done
  fi
  for p in "${dockerd_pids[@]}"; do wait "$p" 2>/dev/null; done
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
  for p in "${created_ns[@]}"; do ip netns delete "$p" 2>/dev/null; done
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
  ip netns list 2>/dev/null | grep -qw "$switch" && log "WARNING: netns $switch left"
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

# --- namespaces, temp dir, daemons ----------------------------------------------------------
for n in "$switch" $(for i in $(seq 3); do node_ns "$i"; done); do
  if ip netns list | grep -qw "$n"; then
    [ -z "$(ip netns pids "$n")" ] || die "netns $n exists and has processes: another run?"
    log "removing stale netns $n"
    ip netns delete "$n"
  fi
done
ls -d /sys/fs/cgroup/*/"$cg" >/dev/null 2>&1 && [ -n "$(cgroup_pids)" ] && die "cgroup /$cg has processes: another run?"
tmp=$(mktemp -d /tmp/shoal-swarmbench.XXXXXX)
ip netns add "$switch"
created_ns+=("$switch")
ip -n "$switch" link add swbr type bridge
ip -n "$switch" link set swbr up

start_node() { # INDEX: its namespace, its link to the bridge, its dockerd
  local i=$1 ns dir
  ns=$(node_ns "$i")
  dir=$tmp/n$i
  ip netns add "$ns"
  created_ns+=("$ns")
  ip -n "$ns" link set lo up
  ip -n "$switch" link add "swp$i" type veth peer name eth0 netns "$ns"
  ip -n "$switch" link set "swp$i" master swbr up
  ip -n "$ns" addr add "$(node_addr "$i")/24" dev eth0
  ip -n "$ns" link set eth0 up
  mkdir -p "$dir"
  # dockerd 20.10 writes its trust key to /etc/docker/key.json unless daemon.json says
  # otherwise (a setting with no command-line flag).
  echo "{\"deprecated-key-path\": \"$dir/key.json\"}" >"$dir/daemon.json"
  log "starting dockerd swarm$i in netns $ns, state in $dir"
  # nsenter, unshare and sh exec (no --fork), so $! is dockerd itself. The private mount
  # namespace gets its own /run and /opt, so containerd's shim sockets (/run/containerd/s),
  # its /opt/containerd and anything else written there stay inside it and vanish with it.
  # DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1: tasks use the loaded image without first trying
  # (and failing) to pull it from a registry; the namespace has no route out anyway.
  DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 nsenter --net="/run/netns/$ns" \
    unshare --mount --uts --propagation private -- sh -c 'hostname "$0" && mount -t tmpfs -o mode=755 swarmbench-run /run &&
      { [ ! -d /opt ] || mount -t tmpfs -o mode=755 swarmbench-opt /opt; } && exec "$@"' "swarm$i" \
    "$dockerd" \
    --config-file "$dir/daemon.json" \
    --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/docker.pid" \
    -H "unix://$dir/docker.sock" \
    --iptables=false --ip6tables=false --bridge=none --ip-forward=false --ip-masq=false \
    --userland-proxy=false --storage-driver overlay2 --cgroup-parent "/$cg/n$i" \
    >"$dir/dockerd.log" 2>&1 &
  dockerd_pids[i - 1]=$!
}

wait_node() { # INDEX: until its daemon answers
  local i=$1
  for _ in $(seq 150); do
    dk "$i" version >/dev/null 2>&1 && return
    alive "$i" || { cat "$tmp/n$i/dockerd.log" >&2; die "dockerd swarm$i exited"; }
    sleep 0.2
  done
  tail -50 "$tmp/n$i/dockerd.log" >&2
  die "dockerd swarm$i did not come up"
}

for i in $(seq "$nodes"); do start_node "$i"; done
for i in $(seq "$nodes"); do wait_node "$i"; done
version=$(dk 1 version -f '{{.Server.Version}}')
version=${version%%+*} # 20.10.24+dfsg1 -> 20.10.24
log "docker info: $(dk 1 info -f 'storage={{.Driver}} cgroup={{.CgroupDriver}} runtime={{.DefaultRuntime}}')"

# --- images ---------------------------------------------------------------------------
for v in 1.0 2.0 3.0; do
  ref=$(tar -xOf "out/images/demo-app-$v.tar" index.json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"])')
  # skopeo as root updates /var/lib/containers/cache/blob-info-cache-v1.boltdb: give it a
  # throwaway one in a private mount namespace.
  unshare --mount --propagation private -- sh -c '[ -d /var/lib/containers ] && mount -t tmpfs swarmbench-c /var/lib/containers; exec "$@"' sh \
    skopeo --tmpdir "$tmp" copy -q --override-os linux --override-arch amd64 \
    "oci-archive:out/images/demo-app-$v.tar:$ref" "docker-archive:$tmp/app-$v.tar:demo/app:$v" >&2
  for i in $(seq "$nodes"); do dk "$i" load -q -i "$tmp/app-$v.tar" >&2; done
  rm -f "$tmp/app-$v.tar"
done
dk 1 image ls >&2

# --- swarm ----------------------------------------------------------------------------
dk 1 swarm init --advertise-addr "$(node_addr 1)" >/dev/null
token=$(dk 1 swarm join-token -q worker)
for i in $(seq 2 "$nodes"); do
  dk "$i" swarm join --token "$token" --advertise-addr "$(node_addr "$i")" "$(node_addr 1):2377" >/dev/null
done
log "swarm of $nodes initialised"

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# The tasks the manager wants running, with where they run: "IMAGE STATE NODE" lines.
desired() {
  dk 1 service ps --filter desired-state=running --format '{{.Image}} {{.CurrentState}} {{.Node}}' web 2>/dev/null
}
# Whether the 6 tasks the manager wants running all run $1 (as updates.rs's all_on),
# none of them on node $2 if given (as cluster.rs's all_running_off).
all_on() {
  local rows
  rows=$(desired) || return 1
  [ "$(grep -c . <<<"$rows")" = 6 ] || return 1
  [ "$(grep -c "^$1 Running" <<<"$rows")" = 6 ] || return 1
  [ -z "${2:-}" ] || ! grep -q " $2\$" <<<"$rows"
}
update_state() { dk 1 service inspect -f '{{.UpdateStatus.State}}' web 2>/dev/null; }
node_status() { dk 1 node inspect -f '{{.Status.State}}' "$1" 2>/dev/null; }

wait_until() { # WHAT TIMEOUT_S COMMAND...
  local what=$1 deadline=$(($(now_ms) + $2 * 1000))
  shift 2
  until "$@"; do
    [ "$(now_ms)" -lt "$deadline" ] || { dk 1 service ps --no-trunc web >&2; die "timed out waiting for $what"; }
    sleep 0.05
  done
}
state_is() { [ "$(update_state)" = "$1" ]; }
status_is() { [ "$(node_status "$1")" = "$2" ]; }

# --init (tini as PID 1, forwarding signals) as shoal always runs its own init: without
# it busybox httpd as PID 1 ignores SIGTERM and every stop waits the 10 s grace period.
init=(--init)
[ "${SWARM_BENCH_INIT:-1}" = 0 ] && init=()
log "service options: ${init[*]:-(no --init)}"
t0=$(now_ms)
dk 1 service create -d -q --no-resolve-image "${init[@]}" --name web --replicas 6 demo/app:1.0 >/dev/null
wait_until "6 x 1.0" 60 all_on demo/app:1.0
created=$(($(now_ms) - t0))
log "6 x demo/app:1.0 running after $created ms"
echo "swarm_version=$version"

if [ "$mode" = updates ]; then
  t0=$(now_ms)
  dk 1 service update -d -q --no-resolve-image --image demo/app:3.0 \
    --update-parallelism 2 --update-delay 0s web >/dev/null
  wait_until "6 x 3.0" 120 all_on demo/app:3.0
  rolled=$(($(now_ms) - t0))
  log "every task runs 3.0 after $rolled ms"
  wait_until "completed" 60 state_is completed
  completed=$(($(now_ms) - t0))
  log "update completed after $completed ms"

  t0=$(now_ms)
  dk 1 service update -d -q --no-resolve-image --image demo/app:2.0 --update-failure-action pause web >/dev/null
  wait_until "paused" 120 state_is paused
  paused=$(($(now_ms) - t0))
  log "update to 2.0 paused after $paused ms"
  dk 1 service ps web >&2

  echo "swarm_rolled_ms=$rolled"
  echo "swarm_completed_ms=$completed"
  echo "swarm_paused_ms=$paused"
  exit 0
fi

# --- cluster --------------------------------------------------------------------------
echo "swarm_create_ms=$created"
wire_bytes() { # NODE: bytes both ways on its link, read at the bridge's end
  local s=/sys/class/net/swp$1/statistics
  ip netns exec "$switch" sh -c "echo \$((\$(cat $s/rx_bytes) + \$(cat $s/tx_bytes)))"
}
idle_s=${SWARM_BENCH_IDLE_S:-30}
sleep 5 # let the creation's traffic end
before=()
for i in $(seq "$nodes"); do before[i]=$(wire_bytes "$i"); done
sleep "$idle_s"
workers=0
for i in $(seq "$nodes"); do
  bps=$((($(wire_bytes "$i") - before[i]) / idle_s))
  log "swarm$i idle: $bps B/s on its wire"
  if [ "$i" = 1 ]; then echo "swarm_idle_manager_bps=$bps"; else workers=$((workers + bps)); fi
done
echo "swarm_idle_worker_bps=$((workers / (nodes - 1)))"

t0=$(now_ms)
dk 1 node update --availability drain swarm2 >/dev/null
wait_until "drained" 60 all_on demo/app:1.0 swarm2
echo "swarm_drain_ms=$(($(now_ms) - t0))"
dk 1 node update --availability active swarm2 >/dev/null

# A power cut: the cable goes first (no RST or FIN from a dying kernel), then every
# process of the node.
t0=$(now_ms)
ip -n "$switch" link set swp3 down
kill -KILL "${dockerd_pids[2]}" 2>/dev/null || true
kill_all KILL 3
wait_until "swarm3 down" 120 status_is swarm3 down
echo "swarm_down_ms=$(($(now_ms) - t0))"
wait_until "failed over" 120 all_on demo/app:1.0 swarm3
echo "swarm_failover_ms=$(($(now_ms) - t0))"
dk 1 node ls >&2
