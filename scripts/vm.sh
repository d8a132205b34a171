#!/usr/bin/env bash
# Runs a command as root inside a QEMU virtual machine with Debian's own kernel, for the
# tests that need kernel features the host's kernel lacks (ESP and AES-GCM for encrypted
# overlays: this development VM's kernel has neither).
#
#   scripts/vm.sh fetch            download and unpack Debian's amd64 kernel and QEMU
#                                  (apt-get download + dpkg-deb, nothing installed) into
#                                  out/vm/; done once, then cached
#   scripts/vm.sh run CMD [ARG…]   boot, run CMD in the host's current directory, power
#                                  off; exits with CMD's exit status
#
# The guest sees the host's whole file tree read-only (9p), under a tmpfs overlay so that
# it can write (/run/netns, /tmp); its own /proc, /sys and /dev; the Debian kernel's
# modules, loaded on demand. The guest has no network device: tests make their own
# namespaces. Software emulation (TCG): nested KVM does not boot on this kind of machine
# (the guest stops in the kernel's early set-up). VM_MEMORY (MiB, default 1024),
# VM_TIMEOUT (seconds, default 300).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=$repo/out/vm
root=$cache/root

fetch() {
  [ -e "$cache/ready" ] && return 0
  rm -rf "$cache"
  mkdir -p "$cache/debs" "$root"
  [ -n "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ] || apt-get update -qq
  local kernel
  kernel=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
  [ -n "$kernel" ] || { echo "vm: no Debian kernel package found (apt-cache depends linux-image-amd64)" >&2; exit 1; }
  # QEMU from Debian's packages, unpacked beside the kernel rather than installed: the
  # bookworm package would replace the machine's newer qemu-utils.
  local debs=("$kernel" qemu-system-x86 qemu-system-common qemu-system-data seabios libcapstone4
    libdaxctl1 libfdt1 libndctl6 libpmem1 libslirp0 libusb-1.0-0 libusbredirparser1 libvdeplug2
    libspice-server1 libcacard0 libbrlapi0.8 libepoxy0 libibverbs1 librdmacm1 libnl-route-3-200
    libopus0 liborc-0.4-0 libsndio7.0 libgstreamer-plugins-base1.0-0 libexecs0)
  echo "vm: fetching ${debs[*]}"
  (cd "$cache/debs" && apt-get download -qq "${debs[@]}" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  for d in "$cache"/debs/*.deb; do dpkg-deb -x "$d" "$root"; done
  local release
  release=$(basename "$(ls -d "$root"/lib/modules/*)")
  busybox depmod -b "$root" "$release"
  echo "$release" >"$cache/release"
  rm -rf "$cache/debs"
  touch "$cache/ready"
}

# The guest's first process: mounts the host's tree and runs the command named on the
# kernel's command line (a script under the host's /tmp, seen through 9p).
init_script() {
  cat <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in virtio_pci 9pnet_virtio 9p overlay; do modprobe "$m" || echo "vm: modprobe $m failed"; done
run=$(sed -n 's/.*shoal\.run=\([^ ]*\).*/\1/p' /proc/cmdline)
release=$(uname -r)
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose host /lower
mount -t tmpfs tmpfs /upper
mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot
# The kernel's modules, for the kernel's own requests (a bridge asks for
# rtnl-link-bridge, an ESP SA for esp4): its helper runs in this initramfs, whatever the
# command's root, so busybox's modprobe here gets the whole set; the command's root gets
# it too, for a modprobe of its own.
modules=/lower$(cat /lower/"$run".modules)
mount --bind "$modules" /lib/modules/"$release"
echo /bin/modprobe >/proc/sys/kernel/modprobe
mkdir -p /newroot/lib/modules/"$release"
mount --bind "$modules" /newroot/lib/modules/"$release"
for d in proc sys dev; do mount --move /$d /newroot/$d; done
mount -t tmpfs tmpfs /newroot/run
# The command's directory, if under the host's /tmp (a clone made there), would be hidden
# by the guest's own /tmp: it is kept aside and put back over it, writable as the rest.
cwd=$(cat /lower/"$run".cwd)
case $cwd in /tmp/*) mkdir -p /keep && mount --bind /newroot"$cwd" /keep ;; esac
mount -t tmpfs tmpfs /newroot/tmp
case $cwd in /tmp/*) mkdir -p /newroot"$cwd" && mount --move /keep /newroot"$cwd" ;; esac
mkdir -p /newroot/tmp/vm && mount --bind "/lower$(dirname "$run")" /newroot/tmp/vm
chroot /newroot /bin/sh /tmp/vm/"$(basename "$run")"
echo "SHOAL-VM-EXIT=$?"
poweroff -f
EOF
}

run() {
  [ $# -gt 0 ] || { echo "usage: scripts/vm.sh run CMD [ARG…]" >&2; exit 2; }
  fetch
  local release work
  release=$(cat "$cache/release")
  work=$(mktemp -d /tmp/shoal-vm.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  # The command, run from the current directory.
  {
    echo "cd $(printf '%q' "$PWD") || exit 125"
    printf '%q ' "$@"
    echo
  } >"$work/run.sh"
  echo "$root/lib/modules/$release" >"$work/run.sh.modules"
  echo "$PWD" >"$work/run.sh.cwd"
  # A small initramfs: busybox and the modules that reach the host's tree.
  local initrd=$work/initrd
  mkdir -p "$initrd"/{bin,proc,sys,dev,lower,upper,newroot}
  cp /usr/bin/busybox "$initrd/bin/busybox"
  local mods=$root/lib/modules/$release
  mkdir -p "$initrd/lib/modules/$release"
  cp "$mods"/modules.{dep,alias,symbols,builtin} "$initrd/lib/modules/$release/"
  local f
  for f in $(grep -E '/(9p|9pnet_virtio|overlay|virtio_pci)\.ko:' "$mods/modules.dep" | tr -d ':' | tr ' ' '\n' | sort -u); do
    mkdir -p "$initrd/lib/modules/$release/$(dirname "$f")"
    cp "$mods/$f" "$initrd/lib/modules/$release/$f"
  done
  init_script >"$initrd/init"
  chmod +x "$initrd/init"
  (cd "$initrd" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 >"$work/initrd.gz")

  local libs
  libs=$(find "$root/lib" "$root/usr/lib" -name '*.so*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
  local out=$work/console status=0
  LD_LIBRARY_PATH=$libs timeout "${VM_TIMEOUT:-300}" "$root/usr/bin/qemu-system-x86_64" \
    -L "$root/usr/share/seabios" -L "$root/usr/share/qemu" \
    -accel tcg -cpu max -m "${VM_MEMORY:-1024}" -smp 2 -nodefaults -display none -no-reboot \
    -serial stdio -kernel "$root/boot/vmlinuz-$release" -initrd "$work/initrd.gz" \
    -append "console=ttyS0 quiet panic=-1 shoal.run=$work/run.sh" \
    -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap \
    2>&1 | tee "$out" || status=$?
  local code
  code=$(sed -n 's/^SHOAL-VM-EXIT=\([0-9]*\).*/\1/p' "$out" | tail -1)
  if [ -z "$code" ]; then
    echo "vm: the guest did not report the command's exit (qemu status $status; see the console above)" >&2
    exit 1
  fi
  exit "$code"
}

case ${1:-} in
  fetch) fetch ;;
  run)
    shift
    run "$@"
    ;;
  *)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
