//! shoal's board agent. [`core`] holds the decisions that need no I/O; [`identity`]
//! keeps the node's credentials and [`certs`] renews them; [`host`] describes the board; [`session`] is the QUIC
//! shell that joins a cluster and keeps the session with the manager alive;
//! [`supervisor`] runs the tasks the manager assigns (its pure state machine in
//! [`supervisor::core`]) with [`runtime`], [`images`] and [`net`]; [`upgrade`] swaps the
//! agent's own binary for a new build from the manager.

pub mod beat_thread;
pub mod board_net;
pub mod certs;
pub mod core;
pub mod disk;
pub mod error;
pub mod exec;
pub mod health;
pub mod host;
pub mod identity;
pub mod images;
pub mod kernel;
pub mod logs;
pub mod net;
pub mod runtime;
pub mod secrets;
pub mod session;
pub mod supervisor;
pub mod ticker;
pub mod upgrade;
pub mod volumes;

pub use error::AgentError;
