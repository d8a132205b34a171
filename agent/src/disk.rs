//! Disk pressure on the board's data dir: is there room to store images, containers and
//! state? A full SD card used to be silent (tasks waiting in `Preparing` for ever, task
//! sets not saved); now the agent says so to the manager, which stops placing tasks here,
//! and to the task that could not be made.
//!
//! The judgement ([`assess`]) is pure: free space and inodes against thresholds, plus
//! "a write failed with ENOSPC lately" (a filesystem can be full for the agent while
//! statvfs still shows the root reserve free). [`Watch`] is the thin shell: it samples
//! `statvfs` and publishes the verdict on a `watch` channel. It does not free space.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// Below this much free space the disk is short: room for a container's writable layer
/// and the agent's state, not for another image.
pub const MIN_FREE_BYTES: u64 = 32 << 20;
/// Below this many free inodes the disk is short (layers are many small files).
pub const MIN_FREE_INODES: u64 = 1_000;
/// A write that failed for lack of space counts for this long.
pub const ENOSPC_MEMORY_MS: u64 = 30_000;
/// How old a sample may grow: the heartbeat samples on each beat (1.5 s by default), and
/// [`Watch::keep_sampled`] only when no beat did for this long (no session).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// What `statvfs` says of a filesystem, as available to an unprivileged writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes free.
    pub free_bytes: u64,
    /// Bytes in all.
    pub total_bytes: u64,
    /// Inodes free (0 in all when the filesystem does not count them).
    pub free_inodes: u64,
    /// Inodes in all.
    pub total_inodes: u64,
}

/// Whether the disk at `dir` is short of space, and if so what to tell people: `None`
/// when fine. `last_enospc_ms` is when a write last failed for lack of space.
pub fn assess(dir: &Path, usage: Option<Usage>, last_enospc_ms: Option<u64>, now_ms: u64) -> Option<String> {
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    if let Some(u) = usage {
        if u.free_bytes < MIN_FREE_BYTES.min(u.total_bytes / 2) {
            return Some(format!(
                "no space left on the board's disk ({}): {:.1} MiB free of {:.1} MiB; free some space there \
                 (images it no longer runs are removed by itself)",
                dir.display(),
                mib(u.free_bytes),
                mib(u.total_bytes)
            ));
        }
        if u.total_inodes > 0 && u.free_inodes < MIN_FREE_INODES.min(u.total_inodes / 2) {
            return Some(format!(
                "no inodes left on the board's disk ({}): {} free of {}; remove files there",
                dir.display(),
                u.free_inodes,
                u.total_inodes
            ));
        }
    }
    match last_enospc_ms {
        Some(t) if now_ms.saturating_sub(t) < ENOSPC_MEMORY_MS => Some(format!(
            "no space left on the board's disk ({}): a write failed for lack of space; free some space there",
            dir.display()
        )),
        _ => None,
    }
}

/// Whether `err`, or an error it was caused by, is the disk being full (ENOSPC, EDQUOT).
/// Classified by the OS error code, never by the message.
pub fn is_disk_full(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            let code = io.raw_os_error();
            if code == Some(rustix::io::Errno::NOSPC.raw_os_error())
                || code == Some(rustix::io::Errno::DQUOT.raw_os_error())
            {
                return true;
            }
        }
        next = e.source();
    }
    false
}

/// The data dir's disk pressure, sampled and shared. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Watch {
    dir: PathBuf,
    /// Unix milliseconds of the last ENOSPC a write met; 0 for never.
    last_enospc_ms: AtomicU64,
    verdict: watch::Sender<Option<String>>,
    /// Told of each sample, so that [`Watch::keep_sampled`] need not take one.
    sampled: std::sync::Arc<tokio::sync::Notify>,
    /// Samples taken so far.
    samples: AtomicU64,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Watch {
    /// Watches the disk holding `dir` (the agent's data dir).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            last_enospc_ms: AtomicU64::new(0),
            verdict: watch::channel(None).0,
            sampled: Default::default(),
            samples: AtomicU64::new(0),
        }
    }

    /// How many samples were taken so far.
    pub fn samples(&self) -> u64 {
        self.samples.load(Ordering::Relaxed)
    }

    /// Samples the disk whenever no other sample was taken for `every` ([`SAMPLE_EVERY`]);
    /// ends once the watch is dropped. While the session beats, the beats sample and
    /// this never wakes the board on its own.
    pub async fn keep_sampled(watch: std::sync::Weak<Watch>, every: Duration) {
        let Some(sampled) = watch.upgrade().map(|w| w.sampled.clone()) else { return };
        loop {
            tokio::select! {
                _ = sampled.notified() => continue,
                _ = tokio::time::sleep(every) => {}
            }
            let Some(w) = watch.upgrade() else { return };
            w.take_sample();
        }
    }

    /// Samples the disk now and publishes the verdict if it changed.
    pub fn sample(&self) {
        self.take_sample();
        self.sampled.notify_one();
    }

    fn take_sample(&self) {
        self.samples.fetch_add(1, Ordering::Relaxed);
        let usage = rustix::fs::statvfs(&self.dir).ok().map(|s| Usage {
            free_bytes: s.f_bavail.saturating_mul(s.f_frsize),
            total_bytes: s.f_blocks.saturating_mul(s.f_frsize),
            free_inodes: s.f_favail,
            total_inodes: s.f_files,
        });
        let last = self.last_enospc_ms.load(Ordering::Relaxed);
        let verdict = assess(&self.dir, usage, (last > 0).then_some(last), unix_ms());
        self.verdict.send_if_modified(|v| {
            if *v == verdict {
                return false;
            }
            match &verdict {
                Some(why) => tracing::warn!("disk pressure: {why}"),
                None => tracing::info!(dir = %self.dir.display(), "disk pressure is over"),
            }
            *v = verdict;
            true
        });
    }

    /// Notes an error from a write: if it is the disk being full, the disk is short now.
    /// Returns whether it was.
    pub fn noticed(&self, err: &(dyn std::error::Error + 'static)) -> bool {
        if !is_disk_full(err) {
            return false;
        }
        self.last_enospc_ms.store(unix_ms().max(1), Ordering::Relaxed);
        self.sample();
        true
    }

    /// The directory watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What is short now, if anything.
    pub fn pressure(&self) -> Option<String> {
        self.verdict.borrow().clone()
    }

    /// Follows the verdict.
    pub fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.verdict.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn usage(free_bytes: u64, free_inodes: u64) -> Option<Usage> {
        Some(Usage { free_bytes, total_bytes: 8 * GIB, free_inodes, total_inodes: 500_000 })
    }

    #[test]
    fn space_inodes_and_a_recent_enospc_each_make_pressure() {
        let dir = Path::new("/var/lib/shoal");
        assert_eq!(assess(dir, usage(GIB, 100_000), None, 0), None);
        let full = assess(dir, usage(10 << 20, 100_000), None, 0).unwrap();
        assert!(full.starts_with("no space left on the board's disk (/var/lib/shoal): 10.0 MiB free"), "{full}");
        assert!(assess(dir, usage(GIB, 10), None, 0).unwrap().contains("no inodes left"));
        // A failed write counts for a while, then space that statvfs shows wins again.
        assert!(assess(dir, usage(GIB, 100_000), Some(1_000), 1_000 + ENOSPC_MEMORY_MS - 1).is_some());
        assert_eq!(assess(dir, usage(GIB, 100_000), Some(1_000), 1_000 + ENOSPC_MEMORY_MS), None);
        // A tiny filesystem is judged against half its size, not a fixed 32 MiB.
        let tiny = Some(Usage { free_bytes: 20 << 20, total_bytes: 32 << 20, free_inodes: 100, total_inodes: 100 });
        assert_eq!(assess(dir, tiny, None, 0), None);
        // No statvfs (an odd filesystem): only failed writes tell.
        assert_eq!(assess(dir, None, None, 0), None);
    }

    #[test]
    fn enospc_is_found_through_wrapping_errors_by_its_code() {
        #[derive(Debug, thiserror::Error)]
        #[error("writing ipam.json")]
        struct Wrap(#[source] std::io::Error);
        let full = Wrap(std::io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error()));
        assert!(is_disk_full(&full));
        let other = Wrap(std::io::Error::other("No space left on device"));
        assert!(!is_disk_full(&other), "text is never matched");
        let w = Watch::new(Path::new("/"));
        assert!(w.noticed(&full));
        assert!(w.pressure().is_some(), "a write that hit ENOSPC puts the disk under pressure");
    }

    /// The beats sample the disk; the fallback sampler stays asleep while they do, takes
    /// over when they stop (no session), and ends with the watch.
    #[tokio::test]
    async fn the_fallback_samples_only_when_nothing_else_did() {
        let ms = Duration::from_millis;
        let w = std::sync::Arc::new(Watch::new(Path::new("/")));
        let fallback = tokio::spawn(Watch::keep_sampled(std::sync::Arc::downgrade(&w), ms(250)));
        for _ in 0..6 {
            tokio::time::sleep(ms(50)).await;
            w.sample();
        }
        assert!(w.samples() <= 7, "beats every 50 ms: the fallback (250 ms) slept, {} samples", w.samples());
        let beaten = w.samples();
        tokio::time::sleep(ms(800)).await;
        let alone = w.samples() - beaten;
        assert!((2..=4).contains(&alone), "no beats for 800 ms: the fallback sampled {alone} times");
        drop(w);
        tokio::time::timeout(ms(2000), fallback).await.expect("the fallback ends with the watch").unwrap();
    }
}
