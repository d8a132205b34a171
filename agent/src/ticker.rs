//! A periodic timer that wakes the agent once per period: a kernel timer (`timerfd`,
//! `CLOCK_MONOTONIC`) on tokio's reactor, for the few things an idle board does on a
//! clock (the heartbeat, and what rides on it).
//!
//! Why not `tokio::time`: its timer wheel files a deadline more than 64 ms away in a
//! coarser slot, wakes at that slot's start and files it again closer, so each 1.5 s
//! heartbeat cost an idle board two wakeups instead of one (strace: an `epoll_wait`
//! ending 20–60 ms before every beat, then a short one). The kernel's timer fires once.
//!
//! Where no timer descriptor can be had (none left, as may happen in the fleet
//! simulator's thousands of agents per process) it falls back to tokio's timer: the
//! same ticks, at the old cost. Not here: what is done on a tick.

use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::time::Instant;

/// Ticks at once, then every period; ticks missed while the process could not run (a
/// suspended board, a stalled runtime) come as one tick, never as a burst.
pub struct Ticker {
    every: Duration,
    clock: Clock,
}

enum Clock {
    Kernel(AsyncFd<OwnedFd>),
    Tokio { next: Instant },
}

fn timespec(d: Duration) -> Timespec {
    Timespec { tv_sec: d.as_secs() as _, tv_nsec: d.subsec_nanos() as _ }
}

fn duration(t: &Timespec) -> Duration {
    Duration::new(t.tv_sec.max(0) as u64, t.tv_nsec.clamp(0, 999_999_999) as u32)
}

/// A relative `it_value` of zero disarms a timerfd: "now" is the smallest delay instead.
const NOW: Duration = Duration::from_nanos(1);

impl Ticker {
    /// A ticker whose first tick is due at once. Needs a tokio runtime with I/O enabled.
    pub fn new(every: Duration) -> Self {
        let clock = match Self::kernel(every) {
            Ok(fd) => Clock::Kernel(fd),
            Err(e) => {
                tracing::debug!(error = %e, "no kernel timer: ticking on tokio's");
                Clock::Tokio { next: Instant::now() }
            }
        };
        Self { every, clock }
    }

    /// The fallback alone (tests of both clocks).
    pub fn on_tokio(every: Duration) -> Self {
        Self { every, clock: Clock::Tokio { next: Instant::now() } }
    }

    /// Whether the kernel's timer drives it.
    pub fn is_kernel(&self) -> bool {
        matches!(self.clock, Clock::Kernel(_))
    }

    fn kernel(every: Duration) -> std::io::Result<AsyncFd<OwnedFd>> {
        let fd =
            rustix::time::timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC)?;
        arm(&fd, NOW, every)?;
        register(fd)
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.every
    }

    /// Changes the period. With `now`, the next tick is due at once; otherwise the tick
    /// already due comes when it was due, and the new period counts from it.
    pub fn set(&mut self, every: Duration, now: bool) {
        self.every = every;
        match &mut self.clock {
            Clock::Kernel(fd) => {
                let first = if now {
                    NOW
                } else {
                    rustix::time::timerfd_gettime(fd.get_ref()).map(|t| duration(&t.it_value)).unwrap_or(NOW).max(NOW)
                };
                if let Err(e) = arm(fd.get_ref(), first, every) {
                    tracing::debug!(error = %e, "cannot set the kernel timer: ticking on tokio's");
                    self.clock = Clock::Tokio { next: Instant::now() + first };
                }
            }
            Clock::Tokio { next } => {
                if now {
                    *next = Instant::now();
                }
            }
        }
    }

    /// Waits for the next tick.
    pub async fn tick(&mut self) {
        loop {
            match &mut self.clock {
                Clock::Kernel(fd) => {
                    let Ok(mut ready) = fd.readable().await else {
                        self.clock = Clock::Tokio { next: Instant::now() };
                        continue;
                    };
                    // The count of expirations since the last read: several are one tick.
                    let mut count = [0u8; 8];
                    match rustix::io::read(ready.get_inner(), &mut count) {
                        Ok(8) => return,
                        Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => ready.clear_ready(),
                        Ok(_) | Err(_) => {
                            ready.clear_ready();
                            tracing::debug!("the kernel timer failed: ticking on tokio's");
                            self.clock = Clock::Tokio { next: Instant::now() };
                        }
                    }
                }
                Clock::Tokio { next } => {
                    tokio::time::sleep_until(*next).await;
                    let (due, now) = (*next + self.every, Instant::now());
                    *next = if due < now { now + self.every } else { due };
                    return;
                }
            }
        }
    }
}

/// Registers the timer with tokio's reactor.
#[allow(unsafe_code)]
fn register(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `AsyncFd` owns the `OwnedFd`, so the descriptor stays open and the same
    // until the `AsyncFd` is dropped, and `as_raw_fd` always returns it.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(std::io::Error::from)
}

fn arm(fd: &OwnedFd, first: Duration, every: Duration) -> std::io::Result<()> {
    let spec = Itimerspec { it_interval: timespec(every), it_value: timespec(first) };
    rustix::time::timerfd_settime(fd, TimerfdTimerFlags::empty(), &spec)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both clocks: the first tick at once, then one per period; a faster period ticks
    /// at once; a late reader gets one tick for the many it missed, not a burst.
    #[tokio::test]
    async fn ticks_once_per_period_at_once_after_a_faster_period_and_never_in_a_burst() {
        let ms = Duration::from_millis;
        // A period long enough that "at once" (under 150 ms) and "a period later" stay
        // apart on a loaded machine.
        let period = ms(250);
        for mut t in [Ticker::new(period), Ticker::on_tokio(period)] {
            let kernel = t.is_kernel();
            let start = std::time::Instant::now();
            t.tick().await;
            assert!(start.elapsed() < ms(150), "first tick at once (kernel: {kernel})");
            t.tick().await;
            t.tick().await;
            let two = start.elapsed();
            assert!(two >= ms(490), "two periods: {two:?} (kernel: {kernel})");
            // A slower period: the tick already due keeps its time.
            t.set(Duration::from_secs(3600), false);
            let before = std::time::Instant::now();
            t.tick().await;
            assert!(before.elapsed() < ms(1000), "the due tick came (kernel: {kernel})");
            // A faster one applies at once.
            t.set(period, true);
            let before = std::time::Instant::now();
            t.tick().await;
            assert!(before.elapsed() < ms(150), "at once (kernel: {kernel})");
            // Miss several periods: one tick now, the next one later.
            std::thread::sleep(ms(1100));
            t.tick().await;
            let before = std::time::Instant::now();
            t.tick().await;
            assert!(before.elapsed() >= ms(20), "no burst after a stall (kernel: {kernel})");
            assert_eq!(t.period(), period);
        }
        assert!(Ticker::new(Duration::from_secs(1)).is_kernel(), "a timerfd is available on Linux");
    }
}
