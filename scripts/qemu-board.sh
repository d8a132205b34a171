#!/usr/bin/env bash
# Boots a QEMU virtual machine with Debian's own ARM kernel as a shoal board: the static
# agent and busybox in a small initramfs, one virtio NIC on a tap device, and the agent
# joining a manager with a token. Software emulation (TCG): nothing here needs KVM.
#
#   scripts/qemu-board.sh fetch [ARCH]   download and unpack Debian's kernel for ARCH
#                                        (aarch64, the default, or armv7), its
#                                        busybox-static and qemu-system-arm (apt-get
#                                        download + dpkg-deb, nothing installed) into
#                                        out/qemu/; cached
#   scripts/qemu-board.sh run --tap TAP --ip ADDR/LEN --manager HOST:PORT
#         --token-file FILE --hostname NAME [--arch ARCH] [--agent FILE] [--dir DIR]
#                                        boots a board (in the foreground: QEMU is exec'd,
#                                        so killing this PID powers the board off); its
#                                        console is this script's standard output
#
# The tap must exist and be up on the bridge the manager is reachable through (the e2e
# harness makes it on its lab's bridge). The agent defaults to
# out/agents/<target>/shoal-agent (scripts/build-agents.sh). The token travels in a small
# second initramfs appended to the cached one (not on the kernel's command line, which
# every container can read), and the guest removes it once read; the board's initramfs
# in DIR (default out/qemu/run/<hostname>, made private) still holds it. The board's root is a
# tmpfs the initramfs is copied to (pivot_root, which containers need, is refused when the
# root is the initramfs itself); cgroup v2; the kernel's modules for networking and
# overlayfs are loaded at boot, the rest on demand. QEMU_BOARD_MEMORY (MiB, default 512),
# QEMU_BOARD_SMP (default 1).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=$repo/out/qemu

# Debian's names for an agent architecture: dpkg architecture, kernel flavour, rust
# target, QEMU program, machine and CPU. armv7: highmem=off, as the 32-bit kernel can't
# reach the virt machine's PCI space above 4 GiB.
arch_info() {
  case $1 in
    aarch64) echo "arm64 arm64 aarch64-unknown-linux-musl qemu-system-aarch64 virt cortex-a53" ;;
    armv7) echo "armhf armmp armv7-unknown-linux-gnueabihf qemu-system-arm virt,highmem=off cortex-a15" ;;
    *)
      echo "qemu-board: unsupported architecture $1 (supported: aarch64, armv7)" >&2
      exit 2
      ;;
  esac
}

# Downloads Debian packages (PKG:ARCH ...) into a private apt state under out/qemu/.cache
# (images/debian.py: the host's apt lists and dpkg architectures are never changed) and
# prints the .deb paths, one a line.
debs() {
  python3 - "$cache/.cache" "$@" <<'EOF'
import os, sys
sys.path.insert(0, os.path.join(os.environ["SHOAL_REPO"], "images"))
import debian
apt = debian.Apt(sys.argv[1], ["amd64", "arm64", "armhf"])
for spec in sys.argv[2:]:
    pkg, arch = spec.split(":")
    try:
        print(apt.download(pkg, arch))
    except RuntimeError as err:
        sys.exit(f"qemu-board: {err} (check the network and Debian's mirror, then run it again)")
EOF
}

# Modules loaded at boot (with their dependencies): the NIC, container root filesystems,
# the bridge and veths of container networks, overlay networks and the nf_tables NAT of
# published ports and VIPs (nf_tables needs libcrc32c, which asks the crypto API for
# crc32c at load). Everything else the kernel asks for on demand (modprobe).
BOOT_MODULES="virtio_pci virtio_net overlay veth bridge br_netfilter vxlan crc32c_generic nf_tables nft_chain_nat nft_nat
nft_masq nft_ct nft_redir nft_fib_inet nft_fib_ipv4 nft_fib_ipv6 nft_reject_inet nft_compat nft_numgen
nft_hash nft_limit xt_conntrack"

fetch() {
  local arch=${1:-aarch64}
  arch_info "$arch" >/dev/null # exits on an unknown one
  local dir=$cache/$arch
  [ -e "$dir/ready" ] && [ -e "$cache/qemu/ready" ] && return 0
  local debarch flavour target
  read -r debarch flavour target _ <<<"$(arch_info "$arch")"
  mkdir -p "$cache/.cache"
  export SHOAL_REPO=$repo
  if [ ! -e "$cache/qemu/ready" ]; then
    rm -rf "$cache/qemu"
    mkdir -p "$cache/qemu"
    # QEMU from Debian's packages, unpacked rather than installed: bookworm's package
    # would replace the machine's newer qemu-utils. The libraries listed are those a
    # plain Debian host lacks.
    local q pkgs=(qemu-system-arm qemu-system-common qemu-system-data libcapstone4 libfdt1 libpmem1 libslirp0
      libvdeplug2 libibverbs1 librdmacm1 libnl-route-3-200 libaio1 libbpf1 libfuse3-3 liburing2 libndctl6
      libdaxctl1)
    for q in "${pkgs[@]}"; do
      dpkg-deb -x "$(debs "$q:amd64")" "$cache/qemu/root"
    done
    touch "$cache/qemu/ready"
  fi
  if [ ! -e "$dir/ready" ]; then
    rm -rf "$dir"
    mkdir -p "$dir/root"
    # The metapackage names the current kernel package.
    local meta kernel
    meta=$(debs "linux-image-$flavour:$debarch")
    kernel=$(dpkg-deb -f "$meta" Depends | tr ',' '\n' | sed -n 's/^ *\(linux-image-[0-9][^ ]*\).*/\1/p' | head -1)
    [ -n "$kernel" ] || { echo "qemu-board: $meta names no kernel package" >&2; exit 1; }
    echo "qemu-board: unpacking $kernel:$debarch" >&2
    dpkg-deb -x "$(debs "$kernel:$debarch")" "$dir/root"
    local bb
    bb=$(debs "busybox-static:$debarch")
    mkdir -p "$dir/busybox"
    dpkg-deb -x "$bb" "$dir/busybox"
    local release
    release=$(basename "$(ls -d "$dir"/root/lib/modules/*)")
    busybox depmod -b "$dir/root" "$release"
    echo "$release" >"$dir/release"
    touch "$dir/ready"
  fi
}

# The board's first process. Stage 1 (the root is the initramfs) copies itself to a tmpfs
# and switches to it; stage 2 sets the board up and keeps its agent running.
init_script() {
  cat <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
if [ ! -e /.stage2 ]; then
  mount -t tmpfs -o mode=0755 root /newroot
  for d in bin etc lib init; do cp -a "/$d" /newroot/; done
  mkdir -p /newroot/proc /newroot/sys /newroot/dev /newroot/run /newroot/tmp /newroot/var/lib/shoal
  touch /newroot/.stage2
  exec switch_root /newroot /init
fi
mount -t proc proc /proc
echo "shoal-board: on its tmpfs root after $(cut -d' ' -f1 /proc/uptime) s"
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs shm /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo /bin/modprobe >/proc/sys/kernel/modprobe
release=$(uname -r)
for f in $(cat /etc/shoal/insmod); do
  insmod "/lib/modules/$release/$f" || echo "shoal-board: cannot load $f"
done
echo "shoal-board: modules loaded after $(cut -d' ' -f1 /proc/uptime) s"
. /etc/shoal/board.env
hostname "$SHOAL_HOSTNAME"
ip link set lo up
ip link set eth0 up
ip addr add "$SHOAL_IP" dev eth0
# A clock before the manager's certificates would refuse the join; the RTC normally
# has the host's time already.
[ "$(date +%s)" -ge "$SHOAL_TIME" ] || date -s "@$SHOAL_TIME" >/dev/null
echo "shoal-board: up after $(cut -d' ' -f1 /proc/uptime) s"
token=$(cat /etc/shoal/token)
rm -f /etc/shoal/token
export SHOAL_DATA_DIR=/var/lib/shoal SHOAL_LOG="${SHOAL_LOG:-info,quinn=warn}" NO_COLOR=1
(
  /bin/shoal-agent join --token "$token" --hostname "$SHOAL_HOSTNAME" "$SHOAL_MANAGER"
  while sleep 1; do /bin/shoal-agent run; done
) &
unset token
while true; do wait; sleep 1; done
EOF
}

# out/qemu/<arch>/initrd.cpio: busybox, the agent, the boot modules and their
# dependencies; rebuilt when the agent changes. Not compressed: the emulated CPU would
# take longer to inflate it than QEMU takes to read it.
base_initrd() {
  local arch=$1 agent=$2
  local dir=$cache/$arch out=$cache/$arch/initrd.cpio
  if [ -e "$out" ] && [ "$out" -nt "$agent" ] && [ "$out" -nt "$0" ] && cmp -s "$agent" "$dir/initrd.agent"; then
    echo "$out"
    return
  fi
  local release work
  release=$(cat "$dir/release")
  work=$(mktemp -d /tmp/shoal-qemu-board.XXXXXX)
  mkdir -p "$work"/{bin,etc/shoal,proc,sys,dev,newroot}
  cp "$dir/busybox/bin/busybox" "$work/bin/busybox"
  cp "$agent" "$work/bin/shoal-agent"
  local mods=$dir/root/lib/modules/$release dest=$work/lib/modules/$release
  mkdir -p "$dest"
  cp "$mods"/modules.{dep,alias,symbols,builtin} "$dest/" 2>/dev/null || true
  # The boot modules and everything they need, dependencies first (from modules.dep):
  # init loads them with insmod, in this order. modprobe, which reads modules.dep
  # for each module, took seconds of emulated CPU for the same work.
  python3 - "$mods/modules.dep" $BOOT_MODULES >"$work/etc/shoal/insmod" <<'PY'
import sys
deps = {}
for line in open(sys.argv[1]):
    mod, _, rest = line.partition(":")
    deps[mod] = rest.split()
by_name = {m.rsplit("/", 1)[-1].split(".ko")[0].replace("-", "_"): m for m in deps}
order = []
def visit(mod):
    if mod in order:
        return
    for d in deps.get(mod, []):
        visit(d)
    order.append(mod)
for name in sys.argv[2:]:
    if name in by_name:  # absent: built into the kernel
        visit(by_name[name])
print("\n".join(order))
PY
  local f
  while read -r f; do
    mkdir -p "$dest/$(dirname "$f")"
    cp "$mods/$f" "$dest/$f"
  done <"$work/etc/shoal/insmod"
  init_script >"$work/init"
  chmod +x "$work/init"
  (cd "$work" && find . | busybox cpio -o -H newc 2>/dev/null >"$out.tmp")
  mv "$out.tmp" "$out"
  cp "$agent" "$dir/initrd.agent"
  rm -rf "$work"
  echo "$out"
}

run() {
  local arch=aarch64 tap="" ip="" manager="" token_file="" hostname="" agent="" dir=""
  while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || { echo "qemu-board: $1 needs a value (see scripts/qemu-board.sh without arguments)" >&2; exit 2; }
    case $1 in
      --arch) arch=$2 ;;
      --tap) tap=$2 ;;
      --ip) ip=$2 ;;
      --manager) manager=$2 ;;
      --token-file) token_file=$2 ;;
      --hostname) hostname=$2 ;;
      --agent) agent=$2 ;;
      --dir) dir=$2 ;;
      *)
        echo "qemu-board: unknown option $1 (see scripts/qemu-board.sh without arguments)" >&2
        exit 2
        ;;
    esac
    shift 2
  done
  for v in tap ip manager token_file hostname; do
    [ -n "${!v}" ] || { echo "qemu-board: run needs --${v//_/-}" >&2; exit 2; }
  done
  arch_info "$arch" >/dev/null # exits on an unknown one
  local debarch flavour target qemu machine cpu
  read -r debarch flavour target qemu machine cpu <<<"$(arch_info "$arch")"
  agent=${agent:-$repo/out/agents/$target/shoal-agent}
  [ -x "$agent" ] || { echo "qemu-board: no agent at $agent: build it with scripts/build-agents.sh" >&2; exit 1; }
  fetch "$arch"
  local base
  base=$(base_initrd "$arch" "$agent")
  # The board's own settings, as a second cpio archive after the cached one.
  dir=${dir:-$cache/run/$hostname}
  rm -rf "$dir/cfg"
  mkdir -p "$dir"
  chmod 700 "$dir" # the board's initramfs holds its join token
  mkdir -p "$dir/cfg/etc/shoal"
  {
    printf 'SHOAL_IP=%q\nSHOAL_MANAGER=%q\nSHOAL_HOSTNAME=%q\n' "$ip" "$manager" "$hostname"
    printf 'SHOAL_TIME=%s\n' "$(date +%s)"
    [ -z "${SHOAL_LOG:-}" ] || printf 'SHOAL_LOG=%q\n' "$SHOAL_LOG"
  } >"$dir/cfg/etc/shoal/board.env"
  cp "$token_file" "$dir/cfg/etc/shoal/token"
  (cd "$dir/cfg" && find . | busybox cpio -o -H newc 2>/dev/null >"$dir/board.cpio")
  cat "$base" "$dir/board.cpio" >"$dir/initrd.cpio"
  rm -rf "$dir/cfg" "$dir/board.cpio"

  local release
  release=$(cat "$cache/$arch/release")
  # A stable MAC from the address, so two boards on one bridge never share one.
  local mac
  mac=$(printf '52:54:%02x:%02x:%02x:%02x' $(echo "${ip%/*}" | tr '.' ' '))
  local root=$cache/qemu/root libs
  libs=$(find "$root/lib" "$root/usr/lib" -name '*.so*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
  export LD_LIBRARY_PATH=$libs
  # romfile=: no iPXE option ROM (ipxe-qemu is not fetched; the kernel needs none).
  exec "$root/usr/bin/$qemu" -L "$root/usr/share/qemu" \
    -M "$machine" -cpu "$cpu" -accel tcg -m "${QEMU_BOARD_MEMORY:-512}" -smp "${QEMU_BOARD_SMP:-1}" \
    -nodefaults -display none -no-reboot -serial stdio -monitor none \
    -kernel "$cache/$arch/root/boot/vmlinuz-$release" -initrd "$dir/initrd.cpio" \
    -append "console=ttyAMA0 quiet panic=-1" \
    -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no" \
    -device "virtio-net-pci,netdev=n0,mac=$mac,romfile="
}

case ${1:-} in
  fetch)
    shift
    fetch "$@"
    ;;
  run)
    shift
    run "$@"
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
