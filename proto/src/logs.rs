//! `shoal service logs`: reading the logs of a service's tasks, through the manager.
//!
//! The CLI opens a stream to the manager with [`LogsRequest`]; the manager answers
//! [`crate::Response::LogsStarted`] (or a refusal), then opens one stream per task to
//! the task's board over the board's session connection with [`LogsStart`]. Each board
//! answers `LogsStarted` and sends [`LogFrame`]s; the manager merges them into
//! [`LogsEvent`]s on the CLI's stream. Nothing is buffered beyond a few frames: QUIC's
//! flow control carries a slow reader's pace back to the board's file reader.

use serde::{Deserialize, Serialize};

use crate::{Bytes, Message, TaskId, Text};

/// Longest line sent (the shim already cuts container output at 16 KiB; invalid UTF-8
/// may have grown it, so it is cut again here).
pub const MAX_LINE: usize = 16 * 1024;
/// Most lines in one frame: a board sends what it has read at once, up to
/// [`BATCH_BYTES`] of text or this many lines, so a noisy task costs one frame per batch.
pub const MAX_BATCH: usize = 64;
/// Text a board puts in one frame, beyond its first line.
pub const BATCH_BYTES: usize = 64 * 1024;
/// Largest frame of lines a peer accepts: a batch at its largest, with room for the
/// stamps.
pub const MAX_BATCH_FRAME: usize = BATCH_BYTES + MAX_LINE + MAX_BATCH * 32;

/// A batch of lines, oldest first.
pub type Lines = crate::BoundedVec<LogLine, MAX_BATCH>;

/// CLI → manager: the logs of a service or of one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsRequest {
    /// A service name or ID, a task name (`web.2`), a task ID or a unique prefix of one.
    pub target: Text<256>,
    /// Keep streaming new lines, and tasks that start later (`-f`).
    pub follow: bool,
    /// Only the last this many lines of each task (`--tail`).
    pub tail: Option<u32>,
    /// Only lines written at or after this time, ms since the Unix epoch (`--since`).
    pub since_ms: Option<u64>,
}

/// Manager → agent: stream the log of this task's container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsStart {
    /// The task.
    pub task: TaskId,
    /// Its service's name (the container is named after service, slot and task).
    pub service: Text<64>,
    /// Its slot.
    pub slot: u32,
    /// Keep reading until the container has exited and its log is read to the end.
    pub follow: bool,
    /// Only the last this many lines.
    pub tail: Option<u32>,
    /// Only lines written at or after this time.
    pub since_ms: Option<u64>,
}

/// Which output of the container a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of a container's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// stdout or stderr.
    pub stream: LogStream,
    /// When the shim read it, ms since the Unix epoch.
    pub at_ms: u64,
    /// The line, without its newline.
    pub text: Bytes<MAX_LINE>,
}

/// Agent → manager, after `LogsStarted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogFrame {
    /// Lines, in order.
    Lines(Lines),
    /// Nothing more will come: the log was read to its end (and, when following, the
    /// container has exited).
    End,
}

/// Manager → CLI, after `LogsStarted`.
// At most a queue of 64 of them exists at a time: inline names cost less than boxes.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogsEvent {
    /// A task whose lines follow under `index`; `name` is `service.slot.taskid@node`
    /// with the task ID, `short` the same without it.
    Task {
        /// What [`LogsEvent::Lines`] calls it.
        index: u32,
        /// `service.slot.taskid@node`.
        name: Text<256>,
        /// `service.slot@node`.
        short: Text<256>,
    },
    /// Lines of task `task`, in order.
    Lines {
        /// The index a [`LogsEvent::Task`] gave.
        task: u32,
        /// The lines.
        lines: Lines,
    },
    /// Something the user should know (a board that is down), the others go on.
    Warning(Message),
    /// Every task's log was sent (never sent when following).
    End,
}
