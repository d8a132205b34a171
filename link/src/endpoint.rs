//! QUIC endpoints and the one-request-one-stream pattern.

use std::net::SocketAddr;
use std::time::Duration;

use shoal_proto::{frame, Envelope, Response, MANAGER_SERVER_NAME};

use crate::{framed, ClientTls, LinkError};

/// A client endpoint on an ephemeral port of the address family of `peer`.
pub fn client_endpoint(peer: SocketAddr) -> Result<quinn::Endpoint, LinkError> {
    Ok(quinn::Endpoint::client(any_local_for(peer))?)
}

/// Every local address, on an ephemeral port, of the address family of `peer`: what a
/// socket that talks to `peer` binds to.
pub fn any_local_for(peer: SocketAddr) -> SocketAddr {
    if peer.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal address")
}

/// Connects to a manager, giving up after `timeout`.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    tls: &ClientTls,
    timeout: Duration,
) -> Result<quinn::Connection, LinkError> {
    let connecting = endpoint.connect_with(tls.quinn_config(), addr, MANAGER_SERVER_NAME)?;
    match tokio::time::timeout(timeout, connecting).await {
        Ok(conn) => Ok(conn?),
        Err(_) => Err(LinkError::Timeout(timeout)),
    }
}

/// Opens a stream, sends `envelope` and waits for the manager's first answer. The
/// stream stays open for what follows (a session), or is simply dropped.
pub async fn request(
    conn: &quinn::Connection,
    envelope: &Envelope,
    timeout: Duration,
) -> Result<(quinn::SendStream, quinn::RecvStream, Response), LinkError> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        framed::send(&mut send, envelope).await?;
        let reply = framed::recv::<Response>(&mut recv, frame::MAX_FRAME_LEN).await?.ok_or(LinkError::Closed)?;
        Ok((send, recv, reply))
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| LinkError::Timeout(timeout))?
}
