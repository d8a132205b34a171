#!/usr/bin/env bash
# The main job on one Linux host: a manager and three boards, each board a network
# namespace on a bridge with its own address; the lab's images on every board; the
# lab's application deployed as lab task 3 does: overlay network `atsea`, redis `database`
# (DNS round robin, host-mode 6379), demo/app `appserver` publishing 8000 through the
# ingress routing mesh, so every board answers on 8000.
# Run as root.
#
#   scripts/demo.sh          set up (installs and builds what is missing) and start
#   scripts/demo.sh down     stop everything and remove the namespaces and the bridge
#
# While it runs, use the CLI from the host:
#   export SHOAL_DATA_DIR=$PWD/out/demo/manager; target/release/shoal node ls
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
demo=$root/out/demo
bridge=shoaldemo0
subnet=10.250.0
boards=(node1 node2 node3)

# Runs a command in a board's network namespace only (like a board: one mount
# namespace, so the agent sees the host's cgroups; `ip netns exec` would remount /sys).
in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$ns" -- "$@"; }

down() {
  # Containers live in namespaces of their own: stop them through their init PIDs.
  for pidfile in "$demo"/*/agent/containers/*/pid; do
    [ -f "$pidfile" ] && kill -KILL "$(cat "$pidfile")" 2>/dev/null || true
  done
  for ns in shoal-manager "${boards[@]/#/shoal-}"; do
    if ip netns list | grep -qw "$ns"; then
      for pid in $(ip netns pids "$ns"); do kill -TERM "$pid" 2>/dev/null || true; done
    fi
  done
  sleep 0.5
  for ns in shoal-manager "${boards[@]/#/shoal-}"; do
    if ip netns list | grep -qw "$ns"; then
      for pid in $(ip netns pids "$ns"); do kill -KILL "$pid" 2>/dev/null || true; done
      ip netns del "$ns"
    fi
  done
  for dir in "$demo"/*/agent/containers/*/; do
    [ -d "$dir" ] || continue
    id=$(basename "$dir")
    umount -l "$dir/rootfs" 2>/dev/null || true
    umount -l "/run/shoal/netns/$id" 2>/dev/null || true
    rm -f "/run/shoal/netns/$id"
  done
  ip link del "$bridge" 2>/dev/null || true
  rm -rf "$demo"
}

host() { # name index
  local ns=shoal-$1 veth=sd-$1 ip=$subnet.$2
  ip netns add "$ns"
  ip link add "$veth" type veth peer name eth0 netns "$ns"
  ip link set "$veth" master "$bridge" up
  ip -n "$ns" addr add "$ip/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
}

if [ "${1:-up}" = down ]; then
  down
  echo "demo removed"
  exit 0
fi

[ "$(id -u)" = 0 ] || { echo "demo: run as root (it creates network namespaces)" >&2; exit 1; }
./scripts/setup.sh
echo "== building (release)"
cargo build --quiet --release --bins
bin=$root/target/release

down
mkdir -p "$demo"
ip link add "$bridge" type bridge
ip addr add "$subnet.254/24" dev "$bridge"
ip link set "$bridge" up
host manager 1
for i in "${!boards[@]}"; do host "${boards[$i]}" $((11 + i)); done

echo "== shoal manager init"
in_ns shoal-manager "$bin/shoal" --data-dir "$demo/manager" manager init \
  --advertise-addr "$subnet.1" --hostname manager | tee "$demo/init.txt"
token=$(grep -o 'SHOAL-1-[a-z0-9-]*' "$demo/init.txt")
nohup nsenter --net=/run/netns/shoal-manager -- "$bin/shoal" --data-dir "$demo/manager" manager run \
  >"$demo/manager.log" 2>&1 &

export SHOAL_DATA_DIR=$demo/manager
for _ in $(seq 50); do "$bin/shoal" node ls >/dev/null 2>&1 && break; sleep 0.1; done

for b in "${boards[@]}"; do
  echo "== $b: shoal-agent join"
  nohup nsenter --net="/run/netns/shoal-$b" -- "$bin/shoal-agent" --data-dir "$demo/$b" join \
    --token "$token" --hostname "$b" "$subnet.1:4242" >"$demo/$b.log" 2>&1 &
done
for _ in $(seq 100); do
  [ "$("$bin/shoal" node ls | grep -c Ready)" = 4 ] && break
  sleep 0.1
done

echo "== shoal node ls"
"$bin/shoal" node ls

echo "== images: built locally, loaded on the manager, fetched by every board"
./images/build.sh
for archive in demo-app-1.0 demo-app-2.0 demo-app-3.0 redis; do
  "$bin/shoal" image load "out/images/$archive.tar"
done
for _ in $(seq 300); do
  [ "$("$bin/shoal" image ls | grep -c 'node1,node2,node3')" = 4 ] && break
  sleep 0.2
done
"$bin/shoal" image ls

echo "== the lab's application, as lab task 3 deploys it"
"$bin/shoal" network create -d overlay atsea
"$bin/shoal" service create --name database --endpoint-mode dnsrr --network atsea \
  --publish mode=host,target=6379 --detach=true redis
"$bin/shoal" service create --name appserver --publish 8000:8000 --network atsea \
  --detach=true demo/app:1.0
for _ in $(seq 150); do
  [ "$("$bin/shoal" service ls | grep -c ' 1/1 ')" = 2 ] && break
  sleep 0.2
done
"$bin/shoal" service ls
"$bin/shoal" service ps appserver
on=$("$bin/shoal" service ps appserver | awk '/Running/ {print $4; exit}')
echo "== the routing mesh: port 8000 answers on every board (appserver runs on $on)"
for i in "${!boards[@]}"; do
  b=${boards[$i]}
  note=""; [ "$b" = "$on" ] || note="  (no appserver on $b: through the mesh)"
  for _ in $(seq 50); do busybox wget -qO- "http://$subnet.$((11 + i)):8000/version" >/dev/null 2>&1 && break; sleep 0.1; done
  echo "-- http://$subnet.$((11 + i)):8000/cgi-bin/db: $(busybox wget -qO- "http://$subnet.$((11 + i)):8000/cgi-bin/db" 2>&1 | head -1)$note"
done
cat <<TXT

The cluster keeps running. Try:
  export SHOAL_DATA_DIR=$demo/manager
  $bin/shoal node ls
  $bin/shoal node inspect node2
  $bin/shoal node update --availability drain node2
  $bin/shoal image ls
  $bin/shoal service ls; $bin/shoal service ps appserver
  $bin/shoal service update --image demo/app:2.0 --update-failure-action pause appserver   # 2.0 fails: paused
  $bin/shoal service inspect -f '{{json .UpdateStatus}}' appserver
  $bin/shoal service update --rollback appserver                # every replica back on 1.0
  $bin/shoal service update --image demo/app:3.0 --update-order start-first appserver
  $bin/shoal service scale appserver=6            # the mesh spreads port 8000 over all six
  $bin/shoal service create --name web --replicas 6 demo/app:3.0
  ip netns pids shoal-node3 | xargs kill -9      # node3's agent dies: Down, its tasks move
Logs: $demo/*.log.  Stop and clean up: scripts/demo.sh down
TXT
