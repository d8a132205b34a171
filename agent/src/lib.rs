//! shoal's board agent. [`core`] holds the decisions that need no I/O; [`identity`]
//! keeps the node's credentials; [`host`] describes the board; [`session`] is the QUIC
//! shell that joins a cluster and keeps the session with the manager alive;
//! [`supervisor`] runs the tasks the manager assigns (its pure state machine in
//! [`supervisor::core`]) with [`runtime`], [`images`] and [`net`].

pub mod board_net;
pub mod core;
pub mod disk;
pub mod error;
pub mod exec;
pub mod host;
pub mod identity;
pub mod images;
pub mod kernel;
pub mod net;
pub mod runtime;
pub mod secrets;
pub mod session;
pub mod supervisor;

pub use error::AgentError;
