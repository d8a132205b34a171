//! Helpers shared by the fuzz targets in `fuzz_targets/`: the `fuzz_target!` they are
//! written with, a round-trip check for wire messages and scratch directories for the
//! targets that write files. Not part of any shipped binary; see docs/fuzzing.md.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_proto::frame;

#[cfg(feature = "libfuzzer")]
#[doc(hidden)]
pub use libfuzzer_sys;

/// Defines a fuzz target from `|data: &[u8]| { … }`. With the `libfuzzer` feature it is
/// libFuzzer's entry point (`libfuzzer_sys::fuzz_target!`); without it, a plain
/// `pub fn run(data: &[u8])`, which `tests/corpus.rs` calls on every corpus input. One
/// body serves both, so the corpus replay in CI runs exactly what the fuzzer ran.
#[cfg(feature = "libfuzzer")]
#[macro_export]
macro_rules! fuzz_target {
    (|$data:ident: &[u8]| $body:block) => {
        $crate::libfuzzer_sys::fuzz_target!(|$data: &[u8]| $body);
    };
}

/// See the `libfuzzer` build's doc above: this is the replay build's.
#[cfg(not(feature = "libfuzzer"))]
#[macro_export]
macro_rules! fuzz_target {
    (|$data:ident: &[u8]| $body:block) => {
        /// Runs this target's body on one input, as libFuzzer would.
        pub fn run($data: &[u8]) $body
    };
}

/// Decodes `body` as `T` the way the network shells do (whole body, no trailing bytes)
/// and, when it decodes, checks that encoding it again gives a frame that decodes to the
/// same value: a message the peer accepted must survive being sent on.
pub fn round_trip<T>(body: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let msg = frame::decode::<T>(body).ok()?;
    let again = frame::encode(&msg, usize::MAX).expect("a decoded message encodes");
    let back = frame::decode::<T>(&again[frame::HEADER_LEN..]).expect("a re-encoded message decodes");
    assert_eq!(back, msg, "message changed on a round trip");
    Some(msg)
}

/// A fresh, empty directory below a per-process parent on a RAM file system, removed when
/// dropped. `outside` is a sibling that holds one sentinel file: a target checks with
/// [`Scratch::check_outside`] that nothing but `dir` was touched.
pub struct Scratch {
    /// The empty directory to write into.
    pub dir: PathBuf,
    parent: PathBuf,
}

const SENTINEL: &[u8] = b"sentinel";

impl Scratch {
    /// Makes `<base>/<pid>-<n>/{dir,outside/sentinel}`.
    pub fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let parent = base.join(format!("shoal-fuzz-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&parent);
        let dir = parent.join("dir");
        std::fs::create_dir_all(&dir).expect("scratch dir");
        std::fs::create_dir_all(parent.join("outside")).expect("scratch dir");
        std::fs::write(parent.join("outside/sentinel"), SENTINEL).expect("sentinel");
        Self { dir, parent }
    }

    /// Panics when anything beside `dir` was created, removed or changed.
    pub fn check_outside(&self) {
        let mut names: Vec<_> = std::fs::read_dir(&self.parent)
            .expect("scratch parent still there")
            .map(|e| e.expect("entry").file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["dir", "outside"], "an entry appeared or vanished beside the scratch dir");
        let outside: Vec<_> = std::fs::read_dir(self.parent.join("outside")).expect("outside").collect();
        assert_eq!(outside.len(), 1, "something was written into the sibling dir");
        let meta = std::fs::symlink_metadata(self.parent.join("outside/sentinel")).expect("sentinel still there");
        assert!(meta.is_file(), "the sentinel was replaced");
        assert_eq!(std::fs::read(self.parent.join("outside/sentinel")).expect("sentinel"), SENTINEL);
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.parent);
    }
}
