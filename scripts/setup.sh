#!/usr/bin/env bash
# Installs everything shoal needs to build, cross-compile and test on a fresh Debian
# bookworm machine (run as root). Safe to run again: it skips what is already there.
set -euo pipefail

need_apt=()
for pkg_cmd in \
    "iproute2:ip" \
    "gcc-aarch64-linux-gnu:aarch64-linux-gnu-gcc" \
    "gcc-arm-linux-gnueabihf:arm-linux-gnueabihf-gcc" \
    "busybox-static:busybox" \
    "bc:bc" \
    "file:file" \
    "python3:python3" \
    "patch:patch" \
    "postgresql-client:psql" \
    "openssl:openssl" \
    "docker-registry:docker-registry" \
    "skopeo:skopeo" \
    "apache2-utils:htpasswd" \
    "g++:g++"; do
  pkg=${pkg_cmd%%:*} cmd=${pkg_cmd##*:}
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if command -v rustup >/dev/null 2>&1; then
  installed=$(rustup target list --installed)
  for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf; do
    grep -qx "$t" <<<"$installed" || rustup target add "$t"
  done
  components=$(rustup component list --installed)
  for c in rustfmt clippy; do
    grep -q "^$c" <<<"$components" || rustup component add "$c"
  done
fi

# libcontainer with the 32-bit ARM fix (patches/libcontainer/, made from crates.io + diff).
"$(dirname "$0")/patch-libcontainer.sh"

# Debian's docker 20.10 client for tests/docker_api.rs (downloaded and unpacked, never installed).
"$(dirname "$0")/docker-cli-20.sh"
