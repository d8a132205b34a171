//! Links the static board agents without unwind tables, with identical functions folded
//! into one, and with their hot code laid out together (issue 12: the agent's size and
//! resident memory).
//!
//! Their profiles abort on panic, so nothing ever unwinds; yet the precompiled std (built
//! to unwind) and the C code keep `.eh_frame` and its index `.eh_frame_hdr`: ~0.9 MB of
//! the 6.4 MiB aarch64 agent. musl builds (aarch64, x86_64: linked by rust-lld) that abort
//! on panic (the release profiles) are linked with scripts/no-eh-frame.ld, which discards both; a panic still
//! prints its message and location, only a backtrace (RUST_BACKTRACE=1) comes out empty.
//! armv7 unwinds with `.ARM.exidx`, not these sections; it is linked by gcc driving LLD
//! (scripts/link-armv7.sh), so its linker flags go through `-Wl,`. Every other build (the
//! host's, the tests', which unwind) is linked as before.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../scripts/no-eh-frame.ld");
    println!("cargo:rerun-if-changed=hot-text.ld");
    println!("cargo:rerun-if-changed=hot-text-armv7.ld");
    println!("cargo:rerun-if-env-changed=SHOAL_AGENT_LINK_MAP");
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    // Cargo tells a build script the profile, not its panic strategy: `release` here is
    // the release profile and those inheriting it (`static-check`), which abort on panic.
    if std::env::var("PROFILE").unwrap_or_default() != "release" {
        return;
    }
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let board_link = match (env.as_str(), arch.as_str()) {
        ("musl", _) => {
            println!("cargo:rustc-link-arg-bins=--script={dir}/../scripts/no-eh-frame.ld");
            ""
        }
        ("gnu", "arm") => "-Wl,",
        _ => return,
    };
    // Functions whose machine code came out identical (generics over types of one
    // layout, mostly) kept once. Rust promises nothing about function addresses being
    // unique, so folding even those whose address is taken is sound.
    println!("cargo:rustc-link-arg-bins={board_link}--icf=all");
    // The code a joined, idle agent runs, laid out together at the start of the code
    // (agent/hot-text.ld, made by scripts/agent-order.sh): the kernel maps a binary's
    // pages 64 KiB at a time around each page it faults in, so hot functions scattered
    // through all the code made nearly the whole binary resident (docs/cross.md).
    // armv7's own order where there is one (its glibc, its own outlined code); the
    // aarch64 agent's serves x86_64, whose names it mostly shares.
    let order = if arch == "arm" && std::path::Path::new(&dir).join("hot-text-armv7.ld").exists() {
        "hot-text-armv7.ld"
    } else {
        "hot-text.ld"
    };
    println!("cargo:rustc-link-arg-bins={board_link}--script={dir}/{order}");
    // Where each function landed, for scripts/agent-order.sh (the stripped binary has no
    // symbols left to tell).
    if let Ok(map) = std::env::var("SHOAL_AGENT_LINK_MAP") {
        println!("cargo:rustc-link-arg-bins={board_link}--Map={map}");
    }
}
