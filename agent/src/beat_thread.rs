//! The thread heartbeats run on: a small tokio runtime of its own, beside the agent's
//! main one, so that nothing the main runtime's thread waits for delays a beat.
//!
//! Why: the agent's main runtime has one thread. Whatever blocks it (an `fsync` on an SD
//! card busy with a long write takes seconds; a bug that blocks is another) also stopped
//! the heartbeats, and the manager called a live board Down, which moves its tasks away
//! (`tests/slow_disk.rs`: Down 1.6 s into a stall of the board's disk). A beat says the
//! board is up and reachable, and a main runtime slow for a while makes neither false.
//! An agent whose main runtime hangs for good still ends up Down: its QUIC session,
//! driven by the main runtime, times out (60 s), the manager forgets the session,
//! answers its next beat "unknown" and the beats stop.
//!
//! What runs here: the beat loop and the disk sampling that rides on it (both wake once
//! per period together, as before). Nothing here may block either.

use std::future::Future;
use std::sync::OnceLock;

/// Spawns `task` on the heartbeat thread's runtime (started on first use), or on the
/// caller's runtime where no thread could be made.
pub fn spawn<F>(task: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    // One `Handle::spawn` either way: each spawn path is code per future type, and the
    // aarch64 agent has a size bound (5 MiB).
    let fallback;
    let runtime = match handle() {
        Some(h) => h,
        None => {
            fallback = tokio::runtime::Handle::current();
            &fallback
        }
    };
    runtime.spawn(task)
}

fn handle() -> Option<&'static tokio::runtime::Handle> {
    static HANDLE: OnceLock<Option<tokio::runtime::Handle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            start()
                .map_err(|e| tracing::warn!(error = %e, "no thread for the heartbeats: they share the agent's runtime"))
                .ok()
        })
        .as_ref()
}

fn start() -> std::io::Result<tokio::runtime::Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let handle = runtime.handle().clone();
    // Its stack holds the beat loop's few frames only.
    std::thread::Builder::new()
        .name("heartbeat".into())
        .stack_size(128 * 1024)
        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    #[test]
    fn a_task_on_the_heartbeat_thread_runs_while_the_callers_runtime_is_blocked() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let ticks = super::spawn(async {
                let started = Instant::now();
                let mut n = 0;
                while started.elapsed() < Duration::from_millis(300) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    n += 1;
                }
                (n, std::thread::current().name().map(str::to_owned))
            });
            // Blocks the caller's only thread, as an fsync on a stalled disk would.
            std::thread::sleep(Duration::from_millis(400));
            let (n, thread) = ticks.await.unwrap();
            assert!(n >= 10, "the task ticked {n} times while its caller was blocked");
            assert_eq!(thread.as_deref(), Some("heartbeat"));
        });
    }
}
