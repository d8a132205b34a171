//! Checking a state store in a child process before the manager (or a restore) uses it.
//! redb asserts on some damaged files; release builds abort on panic, so only a separate
//! process can meet such a file and still report what is wrong. The child is the same
//! `shoal` binary, run as `shoal manager verify-store FILE`: it opens the store with every
//! check of [`Store::open`] and exits 0, or prints the error and exits 1, or dies.

use std::path::Path;
use std::process::Command;

use crate::store::{Store, StoreError};

/// Opens and checks `path` in a child process; in-process when this is not the `shoal`
/// binary (tests), where [`Store::open`] catches redb's panics itself.
pub fn in_child(path: &Path) -> Result<(), StoreError> {
    let exe = std::env::current_exe().ok().filter(|e| e.file_name().is_some_and(|n| n == "shoal"));
    let Some(exe) = exe else {
        return Store::open(path).map(drop);
    };
    let out = Command::new(exe).args(["manager", "verify-store"]).arg(path).env("SHOAL_LOG", "error").output();
    let damaged = |detail: &str| StoreError::Damaged { path: path.to_owned(), detail: detail.to_owned() };
    let out = out.map_err(|e| StoreError::Io(format!("cannot start the check of {}: {e}", path.display())))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(LOCKED_EXIT) => Err(StoreError::Locked(path.to_owned())),
        // The child's error is its last line: the whole message, with what to do.
        Some(_) => {
            let line = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("the check failed");
            Err(StoreError::Checked(line.trim_start_matches("Error: ").to_owned()))
        }
        None => Err(damaged("redb cannot read its structure")),
    }
}

/// The child's exit code when another process holds the store.
const LOCKED_EXIT: i32 = 2;

/// The child's side: exits 0 when the store opens with every check, 2 when another
/// process holds it, else prints why and exits 1.
pub fn run_check(path: &Path) -> ! {
    match Store::open(path) {
        Ok(_) => std::process::exit(0),
        Err(e @ StoreError::Locked(_)) => {
            eprintln!("Error: {e}");
            std::process::exit(LOCKED_EXIT)
        }
        Err(e) => {
            eprintln!("Error: {e}");
            std::process::exit(1)
        }
    }
}
