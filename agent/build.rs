//! Links the static board agents without unwind tables, and with identical functions
//! folded into one (issue 12: the agent's size).
//!
//! Their profiles abort on panic, so nothing ever unwinds; yet the precompiled std (built
//! to unwind) and the C code keep `.eh_frame` and its index `.eh_frame_hdr`: ~0.9 MB of
//! the 6.4 MiB aarch64 agent. musl builds (aarch64, x86_64: linked by rust-lld) that abort
//! on panic (the release profiles) are linked with scripts/no-eh-frame.ld, which discards both; a panic still
//! prints its message and location, only a backtrace (RUST_BACKTRACE=1) comes out empty.
//! Every other build (the host's, the tests', which unwind) is linked as before. armv7
//! unwinds with `.ARM.exidx`, not these sections.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../scripts/no-eh-frame.ld");
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    // Cargo tells a build script the profile, not its panic strategy: `release` here is
    // the release profile and those inheriting it (`static-check`), which abort on panic.
    let profile = std::env::var("PROFILE").unwrap_or_default();
    if env == "musl" && profile == "release" {
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        println!("cargo:rustc-link-arg-bins=--script={dir}/../scripts/no-eh-frame.ld");
        // Functions whose machine code came out identical (generics over types of one
        // layout, mostly) kept once. Rust promises nothing about function addresses being
        // unique, so folding even those whose address is taken is sound.
        println!("cargo:rustc-link-arg-bins=--icf=all");
    }
}
