//! `shoal manager run`: the QUIC shell around the pure core. It accepts connections,
//! tells joining boards, agents and administrators apart by their certificates, feeds
//! heartbeats to [`Membership`] and applies what it decides (closing dead sessions).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use shoal_link::{framed, tls, Identity, LinkError};
use shoal_proto::{
    frame, AgentMessage, Availability, BoundedVec, ControlReply, ControlRequest, Envelope, ErrorKind, ErrorReply,
    JoinAccepted, JoinRequest, JoinToken, NodeId, NodeStatus, NodeView, Request, Response, Role, SessionOpen,
    PROTOCOL_VERSION,
};
use tracing::{debug, info, warn};

use crate::ca::{self, Ca, CertRole};
use crate::core::membership::{LivenessConfig, Membership, Transition};
use crate::core::nodes::{self, NodeRecord};
use crate::core::Millis;
use crate::paths;
use crate::store::{ClusterRecord, Store};

/// Application close codes the manager uses on connections.
pub mod close {
    /// The manager is shutting down.
    pub const SHUTDOWN: u32 = 1;
    /// The node missed its heartbeats.
    pub const HEARTBEAT_TIMEOUT: u32 = 2;
    /// A newer session of the same node replaced this one.
    pub const REPLACED: u32 = 3;
    /// The node was removed from the cluster.
    pub const REMOVED: u32 = 4;
}

/// Settings for `manager run`.
#[derive(Debug, Clone, Default)]
pub struct RunConfig {
    /// Liveness timing.
    pub liveness: LivenessConfig,
    /// Overrides the listen address chosen at init.
    pub listen: Option<SocketAddr>,
}

/// Largest frame accepted on a session stream after the opening request.
const SESSION_FRAME_LIMIT: usize = 64 * 1024;
/// Idle timeout of manager connections; dead nodes are found sooner by heartbeats.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

struct Session {
    serial: u64,
    conn: quinn::Connection,
}

struct State {
    members: Membership,
    sessions: HashMap<NodeId, Session>,
    next_serial: u64,
}

struct Manager {
    store: Store,
    ca: Ca,
    cluster: Mutex<ClusterRecord>,
    state: Mutex<State>,
    started: Instant,
}

/// Who is on the other end of a connection, from its certificate.
#[derive(Debug, Clone)]
enum Peer {
    /// No certificate: may only join or ping.
    Anonymous,
    /// A node's agent.
    Node(NodeId),
    /// The operator's CLI.
    Admin,
}

impl Manager {
    fn now(&self) -> Millis {
        self.started.elapsed().as_millis() as Millis
    }

    fn log_transitions(&self, transitions: &[Transition]) {
        for t in transitions {
            let hostname =
                self.store.node(&t.node).ok().flatten().map(|n| n.description.hostname.to_string()).unwrap_or_default();
            match t.to {
                NodeStatus::Down => warn!(node = %t.node, %hostname, reason = %t.reason, "node is down"),
                _ => info!(node = %t.node, %hostname, from = %t.from, to = %t.to, "node status changed"),
            }
        }
    }
}

/// Runs the manager until SIGINT or SIGTERM.
pub async fn run(data_dir: &Path, config: RunConfig) -> anyhow::Result<()> {
    let store_path = paths::store_path(data_dir);
    if !store_path.exists() {
        anyhow::bail!(
            "no cluster in {}: create one with `shoal manager init --advertise-addr ADDR` first",
            data_dir.display()
        );
    }
    let store = Store::open(&store_path)
        .map_err(|e| anyhow::anyhow!("{e} (is another `shoal manager run` using {} already?)", data_dir.display()))?;
    let cluster = store.cluster()?;
    let ca = Ca::from_parts(cluster.ca_cert.clone(), &cluster.ca_key_pem)?;
    let server_key = rcgen::KeyPair::from_pem(&cluster.server_key_pem)?;
    let identity = Identity {
        chain: vec![CertificateDer::from(cluster.server_cert.clone()), ca.cert().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
    };
    let server_config = tls::server_config(ca.cert().clone(), identity, IDLE_TIMEOUT)?;
    let listen: SocketAddr = match config.listen {
        Some(a) => a,
        None => cluster.listen_addr.parse().context("stored listen address")?,
    };
    let endpoint = quinn::Endpoint::server(server_config, listen)
        .with_context(|| format!("cannot listen on {listen} (is another manager running, or the port taken?)"))?;

    let mut members = Membership::new(config.liveness);
    let manager = Arc::new(Manager {
        store,
        ca,
        cluster: Mutex::new(cluster.clone()),
        state: Mutex::new(State { members: Membership::default(), sessions: HashMap::new(), next_serial: 0 }),
        started: Instant::now(),
    });
    for node in manager.store.nodes()? {
        if node.role == Role::Worker {
            members.track(0, node.id);
        }
    }
    manager.state.lock().expect("state lock").members = members;
    info!(%listen, advertise = %cluster.advertise_addr, cluster = %cluster.cluster_id, "manager running");

    let ticker = tokio::spawn(tick_loop(manager.clone(), config.liveness));
    let accept = async {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(handle_connection(manager.clone(), incoming));
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = shutdown_signal() => info!("shutting down"),
    }
    ticker.abort();
    endpoint.close(close::SHUTDOWN.into(), b"manager shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Applies the membership's timeouts: a node that missed its heartbeats is Down and its
/// connection is closed, so its agent reconnects cleanly if it is still alive.
async fn tick_loop(mgr: Arc<Manager>, liveness: LivenessConfig) {
    let mut interval = tokio::time::interval(Duration::from_millis((liveness.heartbeat_period / 5).max(10)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let now = mgr.now();
        let (transitions, closing) = {
            let mut st = mgr.state.lock().expect("state lock");
            let transitions = st.members.tick(now);
            let closing: Vec<_> = transitions.iter().filter_map(|t| st.sessions.remove(&t.node)).collect();
            (transitions, closing)
        };
        for s in closing {
            s.conn.close(close::HEARTBEAT_TIMEOUT.into(), b"heartbeat timeout");
        }
        mgr.log_transitions(&transitions);
    }
}

fn identify(conn: &quinn::Connection) -> Result<Peer, ErrorReply> {
    let Some(chain) = conn.peer_identity().and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok()) else {
        return Ok(Peer::Anonymous);
    };
    let leaf = chain.first().ok_or_else(|| ErrorReply::new(ErrorKind::Unauthorized, "empty certificate chain"))?;
    match ca::identify(leaf) {
        Ok((CertRole::Worker, cn)) => cn
            .parse()
            .map(Peer::Node)
            .map_err(|_| ErrorReply::new(ErrorKind::Unauthorized, "node certificate has a malformed node ID")),
        Ok((CertRole::Admin, _)) => Ok(Peer::Admin),
        Ok((CertRole::Manager, _)) => {
            Err(ErrorReply::new(ErrorKind::Unauthorized, "manager certificates can't be used as clients"))
        }
        Err(e) => Err(ErrorReply::new(ErrorKind::Unauthorized, &e.to_string())),
    }
}

async fn handle_connection(mgr: Arc<Manager>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            debug!(%remote, error = %e, "handshake failed");
            return;
        }
    };
    let peer = identify(&conn);
    debug!(%remote, ?peer, "connection");
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(handle_stream(mgr.clone(), conn.clone(), peer.clone(), send, recv));
            }
            Err(e) => {
                debug!(%remote, error = %e, "connection ended");
                return;
            }
        }
    }
}

async fn reply(send: &mut quinn::SendStream, response: &Response) {
    if let Err(e) = framed::send(send, response).await {
        debug!(error = %e, "could not send reply");
    }
    let _ = send.finish();
}

async fn handle_stream(
    mgr: Arc<Manager>,
    conn: quinn::Connection,
    peer: Result<Peer, ErrorReply>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let envelope = match read_envelope(&mut recv).await {
        Ok(Some(e)) => e,
        Ok(None) => return,
        Err(refusal) => return reply(&mut send, &Response::Error(refusal)).await,
    };
    let peer = match peer {
        Ok(p) => p,
        Err(refusal) => return reply(&mut send, &Response::Error(refusal)).await,
    };
    let response = match (envelope.request, &peer) {
        (Request::Ping, _) => Response::Pong,
        (Request::FetchBlob(_), _) => {
            Response::Error(ErrorReply::new(ErrorKind::InvalidRequest, "image transfer is not available yet"))
        }
        (Request::Join(join), _) => handle_join(&mgr, join).unwrap_or_else(Response::Error),
        (Request::OpenSession(open), Peer::Node(id)) => {
            return run_session(mgr, conn, id.clone(), open, send, recv).await;
        }
        (Request::OpenSession(_), _) => Response::Error(ErrorReply::new(
            ErrorKind::Unauthorized,
            "this connection carries no node certificate: join the cluster first with `shoal-agent join --token TOKEN MANAGER`",
        )),
        (Request::Control(req), Peer::Admin) => match handle_control(&mgr, req) {
            Ok(r) => Response::Control(r),
            Err(e) => Response::Error(e),
        },
        (Request::Control(_), _) => Response::Error(ErrorReply::new(
            ErrorKind::Unauthorized,
            "this is not a manager credential: worker nodes can't be used to view or modify cluster state; \
             run the command where `shoal manager init` ran, or with its admin.json",
        )),
    };
    reply(&mut send, &response).await;
}

/// Reads and checks the first frame: length-limited, version first, then the body.
async fn read_envelope(recv: &mut quinn::RecvStream) -> Result<Option<Envelope>, ErrorReply> {
    let body = match framed::recv_body(recv, frame::MAX_FRAME_LEN).await {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(None),
        Err(LinkError::Frame(e)) => {
            return Err(ErrorReply::new(ErrorKind::InvalidRequest, &format!("malformed request: {e}")))
        }
        Err(e) => {
            debug!(error = %e, "stream failed before its request");
            return Ok(None);
        }
    };
    let version = postcard::take_from_bytes::<u16>(&body)
        .map_err(|_| ErrorReply::new(ErrorKind::InvalidRequest, "malformed request: no protocol version"))?
        .0;
    if version != PROTOCOL_VERSION {
        return Err(ErrorReply::new(
            ErrorKind::VersionMismatch,
            &format!(
                "protocol version mismatch: the manager speaks {PROTOCOL_VERSION}, this peer {version}; \
                 run the same shoal release on the manager and the boards"
            ),
        ));
    }
    frame::decode::<Envelope>(&body)
        .map(Some)
        .map_err(|e| ErrorReply::new(ErrorKind::InvalidRequest, &format!("malformed request: {e}")))
}

fn internal(e: impl std::fmt::Display) -> ErrorReply {
    warn!(error = %e, "request failed");
    ErrorReply::new(ErrorKind::Internal, &format!("manager error: {e}"))
}

/// A board with a token asks to join: check the token, sign its CSR, record the node.
/// Nothing is written unless every check passed.
fn handle_join(mgr: &Manager, join: JoinRequest) -> Result<Response, ErrorReply> {
    let rotated_hint = "ask the manager for the current one with `shoal manager join-token worker`";
    let token: JoinToken = join
        .token
        .parse()
        .map_err(|e: shoal_proto::token::TokenError| ErrorReply::new(ErrorKind::InvalidToken, &e.to_string()))?;
    let cluster = mgr.cluster.lock().expect("cluster lock").clone();
    if token.ca_digest != mgr.ca.digest() {
        return Err(ErrorReply::new(
            ErrorKind::InvalidToken,
            &format!("join token is for another cluster: {rotated_hint}"),
        ));
    }
    let expected = JoinToken { ca_digest: token.ca_digest, secret: cluster.worker_secret.clone() };
    if !token.secret_matches(&expected) {
        return Err(ErrorReply::new(
            ErrorKind::InvalidToken,
            &format!("invalid join token (wrong, or rotated away): {rotated_hint}"),
        ));
    }
    if join.node.hostname.is_empty() {
        return Err(ErrorReply::new(ErrorKind::InvalidRequest, "a joining node must say its hostname"));
    }
    let node_id = NodeId::from_random(crate::random());
    let certificate = mgr
        .ca
        .sign_node(join.csr.as_slice(), node_id.as_str(), &cluster.cluster_id)
        .map_err(|e| ErrorReply::new(ErrorKind::InvalidRequest, &format!("bad certificate request: {e}")))?;
    let record = NodeRecord {
        id: node_id.clone(),
        role: Role::Worker,
        availability: Availability::Active,
        labels: BoundedVec::new(),
        addr: join.node.advertise_addr.as_ref().map(|a| a.to_string()),
        description: join.node,
        created_at_ms: crate::wall_ms(),
    };
    mgr.store.put_node(&record).map_err(internal)?;
    mgr.state.lock().expect("state lock").members.track(mgr.now(), node_id.clone());
    info!(node = %node_id, hostname = %record.description.hostname, "node joined");
    Ok(Response::Joined(JoinAccepted {
        node_id,
        certificate: certificate.to_vec().try_into().map_err(internal)?,
        ca: mgr.ca.cert().to_vec().try_into().map_err(internal)?,
    }))
}

/// An agent's long-lived session: accept it, then take heartbeats until it ends.
async fn run_session(
    mgr: Arc<Manager>,
    conn: quinn::Connection,
    node: NodeId,
    open: SessionOpen,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let mut record = match mgr.store.node(&node) {
        Ok(Some(r)) => r,
        Ok(None) => {
            let refusal = ErrorReply::new(
                ErrorKind::NodeRemoved,
                "this node was removed from the cluster and its certificate is no longer accepted: \
                 join again with `shoal-agent join --token TOKEN MANAGER`",
            );
            warn!(%node, remote = %conn.remote_address(), "refused a removed node");
            return reply(&mut send, &Response::Error(refusal)).await;
        }
        Err(e) => return reply(&mut send, &Response::Error(internal(e))).await,
    };
    // Persist the description only when it changed: boards reconnect often.
    let addr = open
        .node
        .advertise_addr
        .as_ref()
        .map(|a| a.to_string())
        .unwrap_or_else(|| conn.remote_address().ip().to_string());
    if record.description != open.node || record.addr.as_deref() != Some(addr.as_str()) {
        record.description = open.node;
        record.addr = Some(addr);
        if let Err(e) = mgr.store.put_node(&record) {
            return reply(&mut send, &Response::Error(internal(e))).await;
        }
    }
    let period = mgr.state.lock().expect("state lock").members.config().heartbeat_period;
    let (serial, transition, replaced) = {
        let mut st = mgr.state.lock().expect("state lock");
        st.next_serial += 1;
        let serial = st.next_serial;
        let replaced = st.sessions.insert(node.clone(), Session { serial, conn: conn.clone() });
        let now = mgr.now();
        (serial, st.members.heard(now, &node), replaced)
    };
    if let Some(old) = replaced {
        if old.conn.stable_id() != conn.stable_id() {
            old.conn.close(close::REPLACED.into(), b"replaced by a newer session");
        }
    }
    mgr.log_transitions(&transition.into_iter().collect::<Vec<_>>());
    let accepted = Response::SessionAccepted { node_id: node.clone(), heartbeat_period_ms: period as u32 };
    if framed::send(&mut send, &accepted).await.is_err() {
        return;
    }
    let ended = loop {
        match framed::recv::<AgentMessage>(&mut recv, SESSION_FRAME_LIMIT).await {
            Ok(Some(AgentMessage::Heartbeat { .. })) => {
                let t = {
                    let mut st = mgr.state.lock().expect("state lock");
                    let now = mgr.now();
                    st.members.heard(now, &node)
                };
                mgr.log_transitions(&t.into_iter().collect::<Vec<_>>());
            }
            Ok(Some(AgentMessage::ImagesHeld(_))) => {}
            Ok(None) => break Some("the agent closed its session"),
            Err(LinkError::Read(quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(
                quinn::ConnectionError::ApplicationClosed(_),
            )))) => break Some("the agent shut down"),
            Err(LinkError::Frame(e)) => {
                warn!(%node, error = %e, "malformed frame on session; closing it");
                break Some("the agent sent a malformed frame");
            }
            Err(e) => {
                debug!(%node, error = %e, "session ended");
                break None;
            }
        }
    };
    let mut st = mgr.state.lock().expect("state lock");
    // Only the current session may mark the node Down; a replaced one just goes away.
    if st.sessions.get(&node).is_some_and(|s| s.serial == serial) {
        st.sessions.remove(&node);
        if let Some(reason) = ended {
            let now = mgr.now();
            let t = st.members.lost(now, &node, reason);
            drop(st);
            mgr.log_transitions(&t.into_iter().collect::<Vec<_>>());
        }
    }
}

fn view(st: &State, now: Millis, record: NodeRecord) -> NodeView {
    let (status, last_seen_ago_ms, message) = match record.role {
        Role::Manager => (NodeStatus::Ready, Some(0), "this manager".to_owned()),
        Role::Worker => {
            let (s, ago, m) = st.members.status(now, &record.id);
            (s, ago, m.to_owned())
        }
    };
    NodeView {
        id: record.id,
        role: record.role,
        status,
        availability: record.availability,
        addr: record.addr.as_deref().map(shoal_proto::text_lossy),
        description: record.description,
        labels: record.labels,
        created_at_ms: record.created_at_ms,
        last_seen_ago_ms,
        status_message: shoal_proto::Message::lossy(&message),
    }
}

fn handle_control(mgr: &Manager, req: ControlRequest) -> Result<ControlReply, ErrorReply> {
    let nodes = mgr.store.nodes().map_err(internal)?;
    match req {
        ControlRequest::NodeList => {
            let st = mgr.state.lock().expect("state lock");
            let now = mgr.now();
            let mut views: Vec<NodeView> = nodes.into_iter().map(|r| view(&st, now, r)).collect();
            views.sort_by(|a, b| {
                (a.role != Role::Manager, a.description.hostname.as_str(), a.id.as_str()).cmp(&(
                    b.role != Role::Manager,
                    b.description.hostname.as_str(),
                    b.id.as_str(),
                ))
            });
            Ok(ControlReply::Nodes(views.try_into().map_err(internal)?))
        }
        ControlRequest::NodeInspect { node } => {
            let record = nodes::resolve(&nodes, &node)?.clone();
            let st = mgr.state.lock().expect("state lock");
            Ok(ControlReply::Node(Box::new(view(&st, mgr.now(), record))))
        }
        ControlRequest::NodeRemove { node, force } => {
            let record = nodes::resolve(&nodes, &node)?.clone();
            if record.role == Role::Manager {
                return Err(ErrorReply::new(ErrorKind::Conflict, "the manager's own node can't be removed"));
            }
            let status = mgr.state.lock().expect("state lock").members.status(mgr.now(), &record.id).0;
            if status == NodeStatus::Ready && !force {
                return Err(ErrorReply::new(
                    ErrorKind::Conflict,
                    &format!(
                        "node {} is not down and can't be removed: stop its agent first, or use --force",
                        record.description.hostname
                    ),
                ));
            }
            mgr.store.remove_node(&record.id).map_err(internal)?;
            let session = {
                let mut st = mgr.state.lock().expect("state lock");
                st.members.forget(&record.id);
                st.sessions.remove(&record.id)
            };
            if let Some(s) = session {
                s.conn.close(close::REMOVED.into(), b"node removed from the cluster");
            }
            info!(node = %record.id, hostname = %record.description.hostname, "node removed");
            Ok(ControlReply::Done(shoal_proto::Message::lossy(record.id.as_str())))
        }
        ControlRequest::NodeUpdate { node, availability, label_add, label_rm } => {
            let mut record = nodes::resolve(&nodes, &node)?.clone();
            nodes::apply_update(&mut record, availability, &label_add, &label_rm)?;
            mgr.store.put_node(&record).map_err(internal)?;
            info!(node = %record.id, availability = %record.availability, "node updated");
            Ok(ControlReply::Done(shoal_proto::Message::lossy(record.id.as_str())))
        }
        ControlRequest::ImageLoad { .. } | ControlRequest::ImageList | ControlRequest::ImageRemove { .. } => {
            Err(ErrorReply::new(ErrorKind::InvalidRequest, "images are not available yet"))
        }
        ControlRequest::JoinToken { rotate } => {
            let mut cluster = mgr.cluster.lock().expect("cluster lock");
            if rotate {
                let mut next = cluster.clone();
                next.worker_secret = JoinToken::new(mgr.ca.digest(), crate::random()).secret;
                mgr.store.put_cluster(&next).map_err(internal)?;
                *cluster = next;
                info!("worker join token rotated");
            }
            let token = JoinToken { ca_digest: mgr.ca.digest(), secret: cluster.worker_secret.clone() };
            Ok(ControlReply::JoinToken {
                token: shoal_proto::text(&token.to_string()).map_err(internal)?,
                manager_addr: shoal_proto::text_lossy(&cluster.advertise_addr),
            })
        }
    }
}
