//! The agent's link to the manager: joining with a token, then a session that sends
//! heartbeats and reconnects with back-off whenever the manager is unreachable, for as
//! long as the agent runs. Only a permanent refusal (node removed, wrong version) ends it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use shoal_link::files::cert_pem;
use shoal_link::{framed, ClientTls, LinkError, Trust};
use shoal_proto::{
    frame, AgentMessage, Envelope, ErrorKind, ErrorReply, JoinRequest, JoinToken, ManagerMessage, NodeDescription,
    Request, Response, SessionOpen,
};
use tracing::{debug, info, warn};

use crate::core::backoff::Backoff;
use crate::identity::{self, NodeIdentity};
use crate::AgentError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A manager silent this long is gone; the agent reconnects.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolves `HOST[:PORT]` (default port 4242).
pub async fn resolve(addr: &str) -> Result<SocketAddr, AgentError> {
    let with_port =
        if addr.parse::<SocketAddr>().is_ok() || addr.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            addr.to_owned()
        } else {
            format!("{addr}:4242")
        };
    let unreachable = |detail: String| AgentError::Unreachable { addr: addr.to_owned(), detail };
    let mut found =
        tokio::net::lookup_host(with_port).await.map_err(|e| unreachable(format!("cannot resolve: {e}")))?;
    found.next().ok_or_else(|| unreachable("no address found".into()))
}

/// Joins the cluster at `manager` with `token`. On success the identity is on disk;
/// on any failure nothing was written.
pub async fn join(
    data_dir: &Path,
    manager: &str,
    token: &str,
    description: NodeDescription,
    mut saved: NodeIdentity,
) -> Result<NodeIdentity, AgentError> {
    if let Some(existing) = NodeIdentity::load(data_dir)? {
        return Err(AgentError::AlreadyJoined { node_id: existing.node_id, dir: identity::agent_dir(data_dir) });
    }
    let parsed: JoinToken = token.parse()?;
    let addr = resolve(manager).await?;
    let unreachable = |detail: String| AgentError::Unreachable { addr: addr.to_string(), detail };
    let tls = ClientTls::new(Trust::CaDigest(parsed.ca_digest), None, IDLE_TIMEOUT)
        .map_err(|e| unreachable(e.to_string()))?;
    let endpoint = shoal_link::client_endpoint(addr).map_err(|e| unreachable(e.to_string()))?;
    let conn = match shoal_link::connect(&endpoint, addr, &tls, CONNECT_TIMEOUT).await {
        Ok(c) => c,
        Err(_) if tls.ca_mismatch() => return Err(AgentError::CaMismatch(addr.to_string())),
        Err(e) => return Err(unreachable(e.to_string())),
    };
    let (key, csr) = identity::key_and_csr().map_err(|e| unreachable(format!("cannot make a key: {e}")))?;
    let request = JoinRequest {
        token: shoal_proto::text(token.trim()).map_err(|_| shoal_proto::token::TokenError::Malformed)?,
        csr: csr.try_into().map_err(|e| unreachable(format!("certificate request too large: {e}")))?,
        node: description,
    };
    let (_, _, response) = shoal_link::request(&conn, &Envelope::new(Request::Join(request)), REQUEST_TIMEOUT)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    conn.close(0u32.into(), b"joined");
    let accepted = match response {
        Response::Joined(a) => a,
        Response::Error(e) => return Err(AgentError::Refused(e)),
        other => return Err(unreachable(format!("unexpected answer: {other:?}"))),
    };
    // The CA the manager hands over must be the one the token pinned.
    if shoal_link::tls::ca_digest(accepted.ca.as_slice()) != parsed.ca_digest {
        return Err(AgentError::CaMismatch(addr.to_string()));
    }
    saved.node_id = accepted.node_id.to_string();
    saved.manager_addr = manager.to_owned();
    saved.ca_pem = cert_pem(accepted.ca.as_slice());
    saved.cert_pem = cert_pem(accepted.certificate.as_slice());
    saved.key_pem = key.serialize_pem();
    saved.save(data_dir)?;
    Ok(saved)
}

/// How a session attempt ended.
enum SessionEnd {
    /// The session never opened.
    Failed(AgentError),
    /// It ran, then the connection was lost.
    Lost(String),
}

/// Keeps a session with the manager until `shutdown` resolves or the manager refuses
/// this node for good.
pub async fn run(
    data_dir: &Path,
    identity: &NodeIdentity,
    description: NodeDescription,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let tls = identity.tls(data_dir, IDLE_TIMEOUT)?;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut endpoint: Option<(SocketAddr, quinn::Endpoint)> = None;
    tokio::pin!(shutdown);
    loop {
        // Resolve every round: a manager's name may point elsewhere after a move.
        let addr = match resolve(&identity.manager_addr).await {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "manager address unresolvable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next(jitter())) => continue,
                    _ = &mut shutdown => return Ok(()),
                }
            }
        };
        if endpoint.as_ref().is_none_or(|(a, _)| a.is_ipv4() != addr.is_ipv4()) {
            endpoint = Some((
                addr,
                shoal_link::client_endpoint(addr)
                    .map_err(|e| AgentError::Unreachable { addr: addr.to_string(), detail: e.to_string() })?,
            ));
        }
        let ep = &endpoint.as_ref().expect("endpoint just set").1;
        let mut conn_slot = None;
        let end = tokio::select! {
            end = session(ep, addr, &tls, &description, &mut conn_slot) => end,
            _ = &mut shutdown => {
                if let Some(conn) = conn_slot {
                    quinn::Connection::close(&conn, 0u32.into(), b"agent shutting down");
                }
                let _ = tokio::time::timeout(Duration::from_millis(500), ep.wait_idle()).await;
                info!("agent stopped");
                return Ok(());
            }
        };
        match end {
            SessionEnd::Failed(AgentError::Refused(e)) if e.kind.is_permanent() => return Err(AgentError::Refused(e)),
            SessionEnd::Failed(e) => debug!(error = %e, "cannot open a session"),
            SessionEnd::Lost(why) => {
                warn!(reason = %why, "lost the session with the manager; reconnecting");
                backoff.reset();
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next(jitter())) => {}
            _ = &mut shutdown => return Ok(()),
        }
    }
}

fn jitter() -> f64 {
    f64::from(crate::random::<1>()[0]) / 256.0
}

/// One session: connect, open, then heartbeat until the connection fails.
async fn session(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    tls: &ClientTls,
    description: &NodeDescription,
    conn_slot: &mut Option<quinn::Connection>,
) -> SessionEnd {
    let unreachable =
        |e: LinkError| SessionEnd::Failed(AgentError::Unreachable { addr: addr.to_string(), detail: e.to_string() });
    let conn = match shoal_link::connect(endpoint, addr, tls, CONNECT_TIMEOUT).await {
        Ok(c) => c,
        Err(e) => return unreachable(e),
    };
    *conn_slot = Some(conn.clone());
    let open = Envelope::new(Request::OpenSession(SessionOpen { node: description.clone() }));
    let (mut send, mut recv, response) = match shoal_link::request(&conn, &open, REQUEST_TIMEOUT).await {
        Ok(x) => x,
        Err(e) => return unreachable(e),
    };
    let period = match response {
        Response::SessionAccepted { node_id, heartbeat_period_ms } => {
            info!(node = %node_id, manager = %addr, "session established");
            Duration::from_millis(u64::from(heartbeat_period_ms.max(10)))
        }
        Response::Error(e) => return SessionEnd::Failed(AgentError::Refused(e)),
        other => {
            return SessionEnd::Failed(AgentError::Refused(ErrorReply::new(
                ErrorKind::InvalidRequest,
                &format!("unexpected answer: {other:?}"),
            )))
        }
    };
    let beats = async {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for seq in 0u64.. {
            tick.tick().await;
            if let Err(e) = framed::send(&mut send, &AgentMessage::Heartbeat { seq }).await {
                return e.to_string();
            }
        }
        unreachable!("the heartbeat counter does not run out")
    };
    let inbox = async {
        loop {
            match framed::recv::<ManagerMessage>(&mut recv, frame::MAX_FRAME_LEN).await {
                Ok(Some(ManagerMessage::Closing(e))) => return e.message.to_string(),
                Ok(Some(ManagerMessage::Images(_))) => {}
                Ok(None) => return "the manager closed the session".to_owned(),
                Err(e) => return e.to_string(),
            }
        }
    };
    let why = tokio::select! { w = beats => w, w = inbox => w };
    SessionEnd::Lost(why)
}
