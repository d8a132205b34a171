//! What every shoal process shares at its edges (transport, host clock and randomness);
//! it never decides anything about what the messages mean.
//!
//! The QUIC transport — TLS configuration (the cluster CA,
//! mutual authentication, a CA pinned by digest for joining), endpoints, and framed
//! postcard messages on QUIC streams — plus durable private files, the logging set-up, and
//! the host helpers (wall clock, OS randomness, default data directory) every binary shares.
//!
//! It knows nothing of what the messages mean; the agent and manager do. It is the only
//! place where rustls and quinn are configured, so both sides agree on ALPN, TLS 1.3 and
//! transport timeouts by construction.

pub mod beat;
pub mod endpoint;
pub mod error;
pub mod files;
pub mod framed;
pub mod host;
pub mod logging;
pub mod tls;

pub use endpoint::{any_local_for, client_endpoint, connect, request};
pub use error::LinkError;
pub use host::{board_ms, random, runtime_state_dir, wall_ms, DEFAULT_DATA_DIR};
pub use tls::{ClientTls, Identity, Trust};
