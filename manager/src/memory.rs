//! Giving memory freed after a burst of work back to the system. glibc's allocator
//! keeps what it freed inside its arenas: after an image was sent to 40 boards the
//! manager held ~2 MB per board it no longer used, for as long as it ran. The last
//! transfer of a burst to end calls `malloc_trim`, which returns the free pages. Not
//! the allocator of every platform (musl, macOS) keeps memory this way: there it does
//! nothing. One of the manager's two `unsafe` calls (the other sizes the UDP socket's
//! buffer, `server::socket`), and this one takes no pointers.

#![allow(unsafe_code)]

use std::sync::atomic::{AtomicUsize, Ordering};

/// Transfers in flight.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// Bytes the transfers in flight and those ended since the last release have sent.
static BURST_BYTES: AtomicUsize = AtomicUsize::new(0);
/// A burst that sent less than this gives nothing back: its buffers were few and small,
/// and a trim walks the whole heap (at 5,000 boards each fetching a 1 KB image, the
/// bursts ended thousands of times, each with a walk of a 400 MB heap on a worker thread).
pub const RELEASE_AFTER_BYTES: usize = 8 << 20;
/// How many times memory was given back (for tests and logs).
static RELEASES: AtomicUsize = AtomicUsize::new(0);

/// One transfer in flight (a blob sent to a board); the last to be dropped gives the
/// memory of the burst back, if the burst sent at least [`RELEASE_AFTER_BYTES`].
#[must_use = "the transfer ends when this is dropped"]
pub struct Transfer(());

impl Transfer {
    /// A transfer starts.
    pub fn start() -> Self {
        IN_FLIGHT.fetch_add(1, Ordering::AcqRel);
        Self(())
    }

    /// Counts `bytes` sent by this transfer.
    pub fn sent(&self, bytes: usize) {
        BURST_BYTES.fetch_add(bytes, Ordering::AcqRel);
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        if IN_FLIGHT.fetch_sub(1, Ordering::AcqRel) == 1 && BURST_BYTES.load(Ordering::Acquire) >= RELEASE_AFTER_BYTES {
            BURST_BYTES.store(0, Ordering::Release);
            release();
        }
    }
}

/// Returns the allocator's free pages to the system.
pub fn release() {
    RELEASES.fetch_add(1, Ordering::Relaxed);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::os::raw::c_int;
        }
        // SAFETY: `malloc_trim` takes no pointer and only walks glibc's own free lists
        // under the allocator's locks: any thread may call it at any time.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// Records rewritten since memory was last given back (see [`churned`]).
static CHURN: AtomicUsize = AtomicUsize::new(0);

/// Notes that a reconcile pass rewrote `records` tasks: a big pass copies every task and
/// frees the copies, which glibc keeps (2,000 tasks on 100 boards: 26 of the manager's
/// 90 MiB were such free pages).
pub fn churned(records: usize) {
    CHURN.fetch_add(records, Ordering::AcqRel);
}

/// Gives memory back if at least `threshold` records were rewritten since the last
/// time; says whether it did. Called after a pass, once its copies are freed.
pub fn release_after_churn(threshold: usize) -> bool {
    if CHURN.load(Ordering::Acquire) < threshold {
        return false;
    }
    CHURN.store(0, Ordering::Release);
    release();
    true
}

/// How many times memory was given back so far.
pub fn releases() -> usize {
    RELEASES.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transfer statics are shared by the tests that use them: one at a time.
    static TRANSFERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn only_the_last_transfer_of_a_burst_gives_memory_back() {
        let _one = TRANSFERS.lock().unwrap();
        let before = releases();
        let a = Transfer::start();
        let b = Transfer::start();
        a.sent(RELEASE_AFTER_BYTES / 2);
        b.sent(RELEASE_AFTER_BYTES / 2);
        drop(a);
        assert_eq!(releases(), before, "a transfer still runs");
        drop(b);
        assert_eq!(releases(), before + 1);
    }

    #[test]
    fn a_burst_of_small_transfers_gives_nothing_back() {
        let _one = TRANSFERS.lock().unwrap();
        BURST_BYTES.store(0, Ordering::Release);
        let before = releases();
        for _ in 0..1000 {
            let t = Transfer::start();
            t.sent(1024);
            drop(t);
        }
        assert_eq!(releases(), before, "1000 bursts of 1 KB: no heap walks");
        let t = Transfer::start();
        t.sent(RELEASE_AFTER_BYTES);
        drop(t);
        assert_eq!(releases(), before + 1, "the bytes add up across small bursts until one is worth a release");
    }

    #[test]
    fn memory_goes_back_only_after_enough_churn() {
        let _ = release_after_churn(0);
        churned(600);
        assert!(!release_after_churn(1000), "600 records rewritten: not yet");
        churned(600);
        assert!(release_after_churn(1000));
        assert!(!release_after_churn(1000), "the count starts again");
    }

    #[test]
    fn freed_memory_goes_back_to_the_system() {
        // A burst of buffers as a blob transfer makes them, freed in an order that
        // leaves the arena fragmented; after the release the process's RSS is below
        // what it was with them freed but kept.
        let held: Vec<Vec<u8>> = (0..400).map(|i| vec![i as u8; 64 * 1024]).collect();
        let keep: Vec<Vec<u8>> = held.iter().step_by(50).cloned().collect();
        drop(held);
        let kept = rss_kib();
        release();
        let after = rss_kib();
        drop(keep);
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(after < kept, "RSS {after} KiB after the release, {kept} KiB before");
        }
    }

    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}
