//! Replays every input of `fuzz/corpus/` through its fuzz target, compiled without
//! libFuzzer: the regression half of fuzzing, run by `cargo test --workspace` (and so by
//! CI) from the workspace's own debug build. Finding new inputs is `scripts/fuzz.sh`.
#![cfg(not(feature = "libfuzzer"))]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

#[path = "../fuzz_targets/agent_archive.rs"]
mod agent_archive;
#[path = "../fuzz_targets/compose.rs"]
mod compose;
#[path = "../fuzz_targets/frame.rs"]
mod frame;
#[path = "../fuzz_targets/manager_archive.rs"]
mod manager_archive;
#[path = "../fuzz_targets/messages.rs"]
mod messages;
#[path = "../fuzz_targets/oci.rs"]
mod oci;
#[path = "../fuzz_targets/service_args.rs"]
mod service_args;
#[path = "../fuzz_targets/template.rs"]
mod template;
#[path = "../fuzz_targets/token.rs"]
mod token;
#[path = "../fuzz_targets/unpack.rs"]
mod unpack;

/// One test per target, each replaying its corpus directory.
macro_rules! replays {
    ($($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                replay(stringify!($name), $name::run);
            }
        )*
    };
}

replays!(frame, messages, token, template, service_args, oci, unpack, manager_archive, agent_archive, compose);

/// Runs `run` on each file of `fuzz/corpus/<target>/` and fails naming every input that
/// panicked (an assertion of the target, or a panic in the code under test).
fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    let mut inputs = 0;
    let mut failed = Vec::new();
    for entry in entries {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        inputs += 1;
        if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(inputs > 0, "{} holds no inputs: the corpus is committed with the targets", dir.display());
    assert!(failed.is_empty(), "{target}: {} of {inputs} corpus inputs failed: {failed:?}", failed.len());
}
