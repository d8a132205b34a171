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
#   scripts/qemu-board.sh disk [--arch ARCH]
#                                        builds (cached) and prints out/qemu/ARCH/stock.img:
#                                        a small "stock OS" disk image as boards are
#                                        flashed with (FAT boot partition with the kernel,
#                                        its initramfs and cmdline.txt; ext4 root with a
#                                        Debian userland, systemd as PID 1; a swap
#                                        partition), for `shoal board
#                                        prepare` (docs/qemu-boards.md)
#   scripts/qemu-board.sh run-disk --disk IMG --tap TAP --ip ADDR/LEN [--arch ARCH] [--dir DIR]
#                                        boots such an image as a board's firmware
#                                        would (kernel, initramfs and cmdline.txt read
#                                        from its FAT partition); QEMU exits when the
#                                        board reboots
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
# QEMU_BOARD_SMP (default 1), QEMU_BOARD_RSS_EVERY (seconds: the agents' VmRSS from the
# guest's /proc on the console, as "shoal-board: rss PID ARGS| VmRSS: N kB …"), and for
# scripts/agent-order.sh: QEMU_BOARD_PAGEMAP=1 (the agent's mapped pages with each RSS
# line), QEMU_BOARD_FAULT_AROUND=BYTES (the kernel's fault_around_bytes) and
# QEMU_BOARD_TRACE=FILE (QEMU's log of every block of code it translates).
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
# QEMU_BOARD_FAULT_AROUND=BYTES: how much of a file the kernel maps around each page
# fault (default 65536); 4096 shows which of the agent's pages it really touches.
if [ -n "${SHOAL_FAULT_AROUND:-}" ]; then
  mount -t debugfs debugfs /sys/kernel/debug
  echo "$SHOAL_FAULT_AROUND" >/sys/kernel/debug/fault_around_bytes
  echo "shoal-board: fault_around_bytes $(cat /sys/kernel/debug/fault_around_bytes)"
fi
token=$(cat /etc/shoal/token)
rm -f /etc/shoal/token
export SHOAL_DATA_DIR=/var/lib/shoal SHOAL_LOG="${SHOAL_LOG:-info,quinn=warn}" NO_COLOR=1
(
  /bin/shoal-agent join --token "$token" --hostname "$SHOAL_HOSTNAME" "$SHOAL_MANAGER"
  while sleep 1; do /bin/shoal-agent run; done
) &
unset token
# QEMU_BOARD_RSS_EVERY=N (bench/src/qemu.rs): the agent's memory, read from the guest's
# own /proc, on the console every N seconds.
if [ -n "${SHOAL_RSS_EVERY:-}" ]; then
  (
    while sleep "$SHOAL_RSS_EVERY"; do
      for p in $(pidof shoal-agent); do
        echo "shoal-board: rss $p $(tr '\0' ' ' <"/proc/$p/cmdline" | cut -c1-40)| $(grep -E '^(VmRSS|RssAnon|RssFile|RssShmem)' "/proc/$p/status" | tr -s ' \t' ' ' | tr '\n' ' ')"
        # QEMU_BOARD_PAGEMAP=1 (scripts/agent-order.sh): which pages of its own file the
        # agent has mapped, one character per page (1: mapped), from /proc/PID/pagemap
        # (bit 63 of each 8-byte entry: present).
        [ -n "${SHOAL_PAGEMAP:-}" ] || continue
        grep ' /bin/shoal-agent$' "/proc/$p/maps" | while read -r range perms offset _; do
          start=$((0x${range%-*})) end=$((0x${range#*-}))
          bits=$(dd if="/proc/$p/pagemap" bs=8 skip=$((start / 4096)) count=$(((end - start) / 4096)) 2>/dev/null |
            od -A n -v -t x8 | awk '{ for (i = 1; i <= NF; i++) printf "%d", (substr($i, 1, 1) ~ /[89a-f]/) }')
          echo "shoal-board: pagemap $p $range $perms $offset $bits"
        done
      done
    done
  ) &
fi
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
    [ -z "${QEMU_BOARD_RSS_EVERY:-}" ] || printf 'SHOAL_RSS_EVERY=%q\n' "$QEMU_BOARD_RSS_EVERY"
    [ -z "${QEMU_BOARD_FAULT_AROUND:-}" ] || printf 'SHOAL_FAULT_AROUND=%q\n' "$QEMU_BOARD_FAULT_AROUND"
    [ -z "${QEMU_BOARD_PAGEMAP:-}" ] || printf 'SHOAL_PAGEMAP=%q\n' "$QEMU_BOARD_PAGEMAP"
  } >"$dir/cfg/etc/shoal/board.env"
  cp "$token_file" "$dir/cfg/etc/shoal/token"
  (cd "$dir/cfg" && find . | busybox cpio -o -H newc 2>/dev/null >"$dir/board.cpio")
  cat "$base" "$dir/board.cpio" >"$dir/initrd.cpio"
  rm -rf "$dir/cfg" "$dir/board.cpio"

  local release
  release=$(cat "$cache/$arch/release")
  boot "$arch" "$ip" "$tap" "$cache/$arch/root/boot/vmlinuz-$release" "$dir/initrd.cpio" \
    "console=ttyAMA0 quiet panic=-1"
}

# boot ARCH IP TAP KERNEL INITRD CMDLINE [QEMU ARGS…]: replaces this shell with QEMU
# running a board of ARCH (the fetched QEMU, TCG), its NIC on TAP with a MAC made from
# IP. What `run` and `run-disk` share.
boot() {
  local arch=$1 ip=$2 tap=$3 kernel=$4 initrd=$5 cmdline=$6
  shift 6
  local debarch flavour target qemu machine cpu
  read -r debarch flavour target qemu machine cpu <<<"$(arch_info "$arch")"
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
    -kernel "$kernel" -initrd "$initrd" -append "$cmdline" "$@" \
    ${QEMU_BOARD_TRACE:+-d in_asm -D "$QEMU_BOARD_TRACE"} \
    -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no" \
    -device "virtio-net-pci,netdev=n0,mac=$mac,romfile="
}

# mtools and dosfstools, unpacked (not installed) like QEMU: the stock disk image's FAT
# partition is made and read without mounting it; kmod for depmod, which writes the
# module indexes the image's udev and modprobe read.
fat_tools() {
  local dir=$cache/tools
  if [ ! -e "$dir/ready" ] || [ ! -e "$dir/root/sbin/depmod" ]; then
    rm -rf "$dir"
    mkdir -p "$dir/root" "$cache/.cache"
    export SHOAL_REPO=$repo
    local p
    for p in mtools dosfstools kmod; do
      dpkg-deb -x "$(debs "$p:amd64")" "$dir/root"
    done
    ln -sf ../bin/kmod "$dir/root/sbin/depmod" # Debian's link is absolute
    touch "$dir/ready"
  fi
  echo "$dir/root/usr/bin:$dir/root/usr/sbin:$dir/root/sbin"
}

# Modules (paths under lib/modules/RELEASE) for the named modules and their
# dependencies, dependencies first, from modules.dep (the first argument); absent ones
# are built into the kernel.
module_order() {
  python3 - "$@" <<'PY'
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
    if name in by_name:
        visit(by_name[name])
print("\n".join(order))
PY
}

# The stock image's initramfs: finds the ext4 root named by root= and switches to it.
disk_stage1() {
  cat <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t devtmpfs dev /dev
for f in $(cat /etc/insmod); do insmod "/lib/modules/$(uname -r)/$f" 2>/dev/null; done
root=$(sed -n 's/.*root=\([^ ]*\).*/\1/p' /proc/cmdline)
i=0
while [ ! -b "$root" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
mount -t ext4 "$root" /newroot || { echo "board-os: cannot mount $root"; sleep 5; poweroff -f; }
umount /proc
umount /dev
exec switch_root /newroot /sbin/init
INIT
}

# The stock image's root: a Debian userland with systemd as PID 1 (systemd-sysv's
# /sbin/init), from the Depends closure of these packages. udev makes the device units
# /etc/fstab waits for, kmod loads modules (on demand and from modules-load.d),
# coreutils, sed and dash run the first-boot step and start.sh, busybox-static gives
# the lab's address unit its `ip`.
ROOT_PKGS="systemd systemd-sysv udev kmod dash coreutils sed mount base-files base-passwd busybox-static"

# Prints the .deb paths of the Depends closure (first alternative of each entry) of
# packages for a Debian architecture (ARCH PKG...), downloaded like debs(). An
# Architecture: all package is fetched as such; `awk` is virtual (mawk provides it).
root_debs() {
  python3 - "$cache/.cache" "$@" <<'PY'
import os, sys
sys.path.insert(0, os.path.join(os.environ["SHOAL_REPO"], "images"))
import debian
apt = debian.Apt(sys.argv[1], ["amd64", "arm64", "armhf"])
arch, todo, seen = sys.argv[2], sys.argv[3:], {}
while todo:
    pkg = todo.pop(0)
    pkg = {"awk": "mawk"}.get(pkg, pkg)
    if pkg in seen:
        continue
    try:
        deb = apt.cached(pkg, arch) or apt.download(pkg, arch)
    except RuntimeError:
        try:
            deb = apt.download(pkg, "all")
        except RuntimeError as err:
            sys.exit(f"qemu-board: {err} (check the network and Debian's mirror, then run it again)")
    seen[pkg] = deb
    todo += [d for d in debian._depends(deb) if d not in seen]
print("\n".join(seen.values()))
PY
}

# The lab's stand-in for a DHCP server, a unit of the stock image: eth0 (net.ifnames=0
# on cmdline.txt) gets the address the host put on the command line as shoal.ip=.
lab_ip_unit() {
  cat <<'UNIT'
[Unit]
Description=shoal lab: static address from shoal.ip= (the lab has no DHCP server)
After=sys-subsystem-net-devices-eth0.device
BindsTo=sys-subsystem-net-devices-eth0.device
Before=network.target network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/shoal-lab-ip

[Install]
WantedBy=network-online.target multi-user.target
UNIT
}

lab_ip_script() {
  cat <<'SH'
#!/bin/sh
set -eu
addr=$(sed -n 's/.*shoal\.ip=\([^ ]*\).*/\1/p' /proc/cmdline)
busybox ip link set eth0 up
[ -z "$addr" ] || busybox ip addr add "$addr" dev eth0
SH
}

# out/qemu/ARCH/stock.img: partition 1 FAT (kernel, initramfs, cmdline.txt), 2 ext4
# root (Debian's systemd userland, the modules a board needs), 3 swap. Rebuilt when
# this script changes.
disk() {
  local arch=aarch64
  while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || { echo "qemu-board: $1 needs a value" >&2; exit 2; }
    case $1 in
      --arch) arch=$2 ;;
      *) echo "qemu-board: unknown option $1 for disk" >&2; exit 2 ;;
    esac
    shift 2
  done
  fetch "$arch"
  local out=$cache/$arch/stock.img
  if [ -e "$out" ] && [ "$out" -nt "$0" ]; then
    echo "$out"
    return
  fi
  local tools release dir=$cache/$arch work
  tools=$(fat_tools)
  release=$(cat "$dir/release")
  work=$(mktemp -d /tmp/shoal-qemu-disk.XXXXXX)
  local mods=$dir/root/lib/modules/$release
  # Stage 1: just enough to reach the root partition.
  mkdir -p "$work/initrd"/{bin,etc,proc,dev,newroot} "$work/initrd/lib/modules/$release"
  cp "$dir/busybox/bin/busybox" "$work/initrd/bin/"
  module_order "$mods/modules.dep" virtio_pci virtio_blk crc32c_generic ext4 >"$work/initrd/etc/insmod"
  local f
  while read -r f; do
    mkdir -p "$work/initrd/lib/modules/$release/$(dirname "$f")"
    cp "$mods/$f" "$work/initrd/lib/modules/$release/$f"
  done <"$work/initrd/etc/insmod"
  disk_stage1 >"$work/initrd/init"
  chmod +x "$work/initrd/init"
  (cd "$work/initrd" && find . | busybox cpio -o -H newc 2>/dev/null >"$work/initrd.cpio")
  # The root: Debian's packages unpacked as dpkg would (merged /usr, as debootstrap
  # makes it), then by hand the little their maintainer scripts would do (nothing of
  # the arm64 userland can run on this host): users and groups from base-passwd's
  # masters, an empty machine-id (systemd makes one at boot), fstab, the module
  # indexes. Plus the modules a board needs and the lab's address unit.
  local debarch r=$work/root
  read -r debarch _ <<<"$(arch_info "$arch")"
  mkdir -p "$r/usr/bin" "$r/usr/sbin" "$r/usr/lib"
  ln -s usr/bin "$r/bin"
  ln -s usr/sbin "$r/sbin"
  ln -s usr/lib "$r/lib"
  local debs_list
  # shellcheck disable=SC2086
  export SHOAL_REPO=$repo
  debs_list=$(root_debs "$debarch" $ROOT_PKGS)
  while read -r f; do
    dpkg-deb --fsys-tarfile "$f" | tar -x --keep-directory-symlink -C "$r"
  done <<<"$debs_list"
  rm -rf "$r"/usr/share/{doc,man,info,locale}
  [ -e "$r/bin/sh" ] || ln -s dash "$r/bin/sh"
  [ -x "$r/sbin/init" ] || { echo "qemu-board: systemd-sysv gave no /sbin/init" >&2; exit 1; }
  cp "$r/usr/share/base-passwd/passwd.master" "$r/etc/passwd"
  cp "$r/usr/share/base-passwd/group.master" "$r/etc/group"
  : >"$r/etc/machine-id"
  mkdir -p "$r"/{proc,sys,dev,run,tmp,boot/firmware,root,var/lib,var/log/journal} "$r/usr/local/sbin"
  chmod 1777 "$r/tmp"
  cat >"$r/etc/fstab" <<'FSTAB'
/dev/vda1 /boot/firmware vfat defaults 0 0
/dev/vda3 none swap sw 0 0
FSTAB
  echo debian >"$r/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 debian\n' >"$r/etc/hosts"
  # No getty (util-linux's agetty is not there), no first-boot prompts for a locale.
  ln -s /dev/null "$r/etc/systemd/system/serial-getty@.service"
  ln -s /dev/null "$r/etc/systemd/system/systemd-firstboot.service"
  lab_ip_script >"$r/usr/local/sbin/shoal-lab-ip"
  chmod +x "$r/usr/local/sbin/shoal-lab-ip"
  lab_ip_unit >"$r/etc/systemd/system/shoal-lab-ip.service"
  local w
  for w in network-online.target.wants multi-user.target.wants; do
    mkdir -p "$r/etc/systemd/system/$w"
    ln -s /etc/systemd/system/shoal-lab-ip.service "$r/etc/systemd/system/$w/"
  done
  mkdir -p "$r/lib/modules/$release"
  cp "$mods"/modules.{order,builtin,builtin.modinfo} "$r/lib/modules/$release/"
  # shellcheck disable=SC2086
  module_order "$mods/modules.dep" $BOOT_MODULES vfat nls_cp437 nls_ascii nls_utf8 >"$work/modules"
  while read -r f; do
    mkdir -p "$r/lib/modules/$release/$(dirname "$f")"
    cp "$mods/$f" "$r/lib/modules/$release/$f"
  done <"$work/modules"
  PATH=$tools:$PATH depmod -b "$r" "$release"
  # The boot modules are loaded by systemd-modules-load; vfat and the rest on demand.
  mkdir -p "$r/etc/modules-load.d"
  echo "$BOOT_MODULES" | tr ' ' '\n' >"$r/etc/modules-load.d/shoal-board.conf"
  mkfs.ext4 -q -F -L rootfs -d "$r" "$work/root.ext4" 256M >/dev/null
  # The boot partition, as the firmware reads it. systemd's status lines and the
  # journal (the agent's own lines) on the console are what the test reads.
  echo "console=ttyAMA0 root=/dev/vda2 rootwait panic=-1 quiet net.ifnames=0 systemd.show_status=1" \
    "systemd.journald.forward_to_console=1" >"$work/cmdline.txt"
  PATH=$tools:$PATH mkfs.fat -C -n BOOTFS "$work/boot.fat" 131072 >/dev/null
  PATH=$tools:$PATH mcopy -i "$work/boot.fat" "$dir/root/boot/vmlinuz-$release" ::vmlinuz
  PATH=$tools:$PATH mcopy -i "$work/boot.fat" "$work/initrd.cpio" ::initrd.img
  PATH=$tools:$PATH mcopy -i "$work/boot.fat" "$work/cmdline.txt" ::cmdline.txt
  truncate -s 64M "$work/swap"
  busybox mkswap "$work/swap" >/dev/null
  # MBR: 1 MiB gap, FAT32 (LBA) 128 MiB (the arm64 kernel alone is ~30 MiB), Linux
  # 256 MiB, Linux swap 64 MiB.
  python3 - "$work/disk.img" <<'PY'
import struct, sys
parts = [(0x0C, 2048, 262144), (0x83, 264192, 524288), (0x82, 788480, 131072)]
mbr = bytearray(512)
for i, (kind, first, n) in enumerate(parts):
    mbr[446 + 16 * i:462 + 16 * i] = struct.pack("<B3sB3sII", 0, b"\xfe\xff\xff", kind, b"\xfe\xff\xff", first, n)
mbr[510:512] = b"\x55\xaa"
with open(sys.argv[1], "wb") as f:
    f.write(mbr)
    f.truncate((788480 + 131072) * 512)
PY
  dd if="$work/boot.fat" of="$work/disk.img" bs=1M seek=1 conv=notrunc,sparse status=none
  dd if="$work/root.ext4" of="$work/disk.img" bs=1M seek=129 conv=notrunc,sparse status=none
  dd if="$work/swap" of="$work/disk.img" bs=1M seek=385 conv=notrunc,sparse status=none
  mv "$work/disk.img" "$out"
  rm -rf "$work"
  echo "$out"
}

# Boots a disk image as its board's firmware would: the kernel, initramfs and
# cmdline.txt come from its FAT partition (copied to DIR), so what `shoal board
# prepare` wrote there is what boots.
run_disk() {
  local arch=aarch64 disk="" tap="" ip="" dir=""
  while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || { echo "qemu-board: $1 needs a value" >&2; exit 2; }
    case $1 in
      --arch) arch=$2 ;;
      --disk) disk=$2 ;;
      --tap) tap=$2 ;;
      --ip) ip=$2 ;;
      --dir) dir=$2 ;;
      *) echo "qemu-board: unknown option $1 for run-disk" >&2; exit 2 ;;
    esac
    shift 2
  done
  for v in disk tap ip; do
    [ -n "${!v}" ] || { echo "qemu-board: run-disk needs --$v" >&2; exit 2; }
  done
  arch_info "$arch" >/dev/null # exits on an unknown one
  fetch "$arch"
  local tools
  tools=$(fat_tools)
  dir=${dir:-$cache/run/disk-$tap}
  rm -rf "$dir/boot"
  mkdir -p "$dir/boot"
  local f
  for f in vmlinuz initrd.img cmdline.txt; do
    PATH=$tools:$PATH mcopy -n -i "$disk@@1M" "::$f" "$dir/boot/$f"
  done
  local cmdline
  cmdline="$(tr -d '\r\n' <"$dir/boot/cmdline.txt") shoal.ip=$ip"
  echo "qemu-board: booting $disk with: $cmdline"
  boot "$arch" "$ip" "$tap" "$dir/boot/vmlinuz" "$dir/boot/initrd.img" "$cmdline" \
    -drive "file=$disk,format=raw,if=none,id=d0" -device virtio-blk-pci,drive=d0
}

case ${1:-} in
  disk)
    shift
    disk "$@"
    ;;
  run-disk)
    shift
    run_disk "$@"
    ;;
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
