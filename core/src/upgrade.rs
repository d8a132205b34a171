//! The order of an agent rollout (`shoal node upgrade`), without I/O: boards go a few
//! at a time (`parallelism`), and the first failure pauses the rollout, as a service
//! update with `--update-failure-action pause` does. Boards already started finish; no
//! new one starts. Nothing is stored: running the command again resumes, since boards
//! already on the build are left alone.

use std::collections::VecDeque;

/// A rollout over a list of boards.
#[derive(Debug, Clone)]
pub struct Rollout<T> {
    waiting: VecDeque<T>,
    running: usize,
    parallelism: usize,
    paused: bool,
}

impl<T> Rollout<T> {
    /// Boards in the order they go, `parallelism` (at least 1) at once.
    pub fn new(boards: impl IntoIterator<Item = T>, parallelism: usize) -> Self {
        Self { waiting: boards.into_iter().collect(), running: 0, parallelism: parallelism.max(1), paused: false }
    }

    /// The boards to start now: as many as free places allow, none once paused.
    pub fn start(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        while !self.paused && self.running < self.parallelism {
            let Some(b) = self.waiting.pop_front() else { break };
            self.running += 1;
            out.push(b);
        }
        out
    }

    /// A started board is done; a failure pauses the rollout.
    pub fn finished(&mut self, ok: bool) {
        self.running = self.running.saturating_sub(1);
        self.paused |= !ok;
    }

    /// Nothing runs and nothing more will start.
    pub fn is_over(&self) -> bool {
        self.running == 0 && (self.paused || self.waiting.is_empty())
    }

    /// Whether a failure paused it.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// The boards never started (after a pause).
    pub fn left(self) -> Vec<T> {
        self.waiting.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boards_go_a_few_at_a_time_and_a_failure_pauses() {
        let mut r = Rollout::new(1..=5, 2);
        assert_eq!(r.start(), [1, 2]);
        assert!(r.start().is_empty());
        r.finished(true);
        assert_eq!(r.start(), [3]);
        r.finished(false);
        // The one still running finishes; nothing new starts.
        assert!(r.start().is_empty());
        assert!(!r.is_over());
        r.finished(true);
        assert!(r.is_over() && r.is_paused());
        assert_eq!(r.left(), [4, 5]);
    }

    #[test]
    fn a_clean_rollout_ends_when_all_are_done() {
        let mut r = Rollout::new(["a", "b"], 0);
        assert_eq!(r.start(), ["a"]);
        r.finished(true);
        assert_eq!(r.start(), ["b"]);
        r.finished(true);
        assert!(r.start().is_empty() && r.is_over() && !r.is_paused());
    }
}
