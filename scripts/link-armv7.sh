#!/bin/sh
# The armv7 agent's linker (.cargo/config.toml): Debian's arm-linux-gnueabihf-gcc for the
# C runtime files and the static glibc, with LLD (rust-lld, shipped with the Rust
# toolchain) as the linker proper. GNU ld 2.40 writes an IFUNC resolver's address without
# its Thumb bit in the unoptimised static link (CI's static-check profile), and the agent
# then dies at start-up in glibc's relocation of it (docs/qemu-boards.md).
set -eu
sysroot=$(rustc --print sysroot)
host=$(rustc -vV | sed -n 's/^host: //p')
exec arm-linux-gnueabihf-gcc -fuse-ld=lld -B "$sysroot/lib/rustlib/$host/bin/gcc-ld" "$@"
