//! `shoal exec`: running a command in a task's container, through the manager.
//!
//! The CLI opens a stream to the manager with [`ExecRequest`]; the manager finds the
//! task, opens a stream to its board's agent over the board's session connection with
//! [`ExecStart`], and answers the CLI with the agent's [`crate::Response::ExecStarted`]
//! (or its refusal). From then on both streams carry [`ExecFrame`]s, which the manager
//! relays unchanged: the CLI never needs to reach a board directly.

use serde::{Deserialize, Serialize};

use crate::{BoundedString, BoundedVec, Bytes, Text};

/// Most arguments of an exec'd command.
pub const MAX_ARGS: usize = 256;
/// Longest argument.
pub const MAX_ARG_LEN: usize = 4096;
/// Largest chunk of input or output in one frame.
pub const MAX_CHUNK: usize = 32 * 1024;

/// An exec'd command line.
pub type Command = BoundedVec<BoundedString<MAX_ARG_LEN>, MAX_ARGS>;

/// CLI → manager: run `cmd` in the container of `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// A service (its first running task), a task name (`web.2`), a task ID or a unique
    /// prefix of one, or a container name (`web.2.<task id>`).
    pub target: Text<256>,
    /// The command and its arguments.
    pub cmd: Command,
    /// Whether the CLI sends its standard input (`-i`).
    pub interactive: bool,
}

/// Manager → agent: run `cmd` in the container of this task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStart {
    /// The task.
    pub task: crate::TaskId,
    /// Its service's name (the container is named after service, slot and task).
    pub service: Text<64>,
    /// Its slot.
    pub slot: u32,
    /// The command and its arguments.
    pub cmd: Command,
    /// Whether input will follow.
    pub interactive: bool,
}

/// The agent's answer when the command started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStarted {
    /// The container it runs in.
    pub container: Text<128>,
}

/// What flows once the command runs: input towards the board, output and the exit
/// code back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecFrame {
    /// Bytes for the command's standard input.
    Stdin(Bytes<MAX_CHUNK>),
    /// The input ended (the command then reads end of file).
    StdinClosed,
    /// Bytes the command wrote to its standard output.
    Stdout(Bytes<MAX_CHUNK>),
    /// Bytes the command wrote to its standard error.
    Stderr(Bytes<MAX_CHUNK>),
    /// The command ended with this code (128 + signal when killed), the last frame.
    Exit(i32),
}
