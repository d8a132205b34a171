//! Transport errors, classified by method rather than by message text.

use shoal_proto::FrameError;

/// Anything that can go wrong moving frames over QUIC.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Bad local TLS material or configuration.
    #[error("tls configuration: {0}")]
    Tls(String),
    /// The connection could not even be attempted (bad address, endpoint closed).
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was closed.
    #[error("{0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Sending on a stream failed.
    #[error("send failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading from a stream failed.
    #[error("receive failed: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// The peer sent a bad frame.
    #[error("bad frame from peer: {0}")]
    Frame(#[from] FrameError),
    /// The peer closed the stream where a frame was expected.
    #[error("the peer closed the stream without answering")]
    Closed,
    /// No answer within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// Local socket trouble.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

impl LinkError {
    /// Whether waiting and retrying may help (the peer is down or unreachable), as
    /// opposed to a local misconfiguration or a refusal.
    pub fn is_temporary(&self) -> bool {
        match self {
            Self::Connection(e) => {
                !matches!(e, quinn::ConnectionError::TransportError(_) | quinn::ConnectionError::VersionMismatch)
            }
            Self::Timeout(_) | Self::Closed | Self::Write(_) | Self::Read(_) | Self::Io(_) => true,
            Self::Tls(_) | Self::Connect(_) | Self::Frame(_) => false,
        }
    }
}
