//! `shoal manager run`: the QUIC shell around the pure core. It accepts connections,
//! tells joining boards, agents and administrators apart by their certificates, feeds
//! heartbeats to [`Membership`] and applies what it decides (closing dead sessions).
//! It also takes image uploads, serves image blobs to nodes and tells every agent which
//! images to hold; the archive parsing and blob store are in [`crate::images`].
//!
//! Services: control requests change service records; one reconcile task (fed by a
//! channel, bursts coalesced) then runs the orchestrator, the updater and the scheduler
//! over every service and task, persists the result in one transaction and sends each
//! node the assignments that changed for it. Sessions only forward task reports to it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use shoal_link::{framed, tls, Identity, LinkError};
use shoal_proto::images::{FetchBlob, ImageView, MAX_ARCHIVE_BYTES, MAX_IMAGES};
use shoal_proto::{
    frame, AgentMessage, Availability, BoundedVec, ControlReply, ControlRequest, Envelope, ErrorKind, ErrorReply,
    JoinAccepted, JoinRequest, JoinToken, ManagerMessage, NodeId, NodeStatus, NodeView, Request, Response, Role,
    SessionOpen, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::ca::{self, Ca, CertRole};
use crate::core::membership::{LivenessConfig, Membership, Transition};
use crate::core::nodes::{self, NodeRecord};
use crate::core::orchestrator::{Now, Orchestrator};
use crate::core::placement::ClusterNode;
use crate::core::services::{self as services, ServiceRecord};
use crate::core::{dispatcher, scheduler, updater, Millis};
use crate::images::archive::{self, ImportError};
use crate::images::blobs::{BlobError, BlobStore};
use crate::images::{self, ImageRecord};
use crate::paths;
use crate::store::ServiceChanges;
use crate::store::{ClusterRecord, Store};
use shoal_proto::dispatch::{ServiceReply, ServiceRequest, TaskReport, MAX_TASKS_LISTED};
use shoal_proto::services::ServiceName;
use shoal_proto::{Service, ServiceId, Task, TaskId, TaskState};

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
    /// The session fell behind the manager's messages; reconnecting resynchronises it.
    pub const LAGGING: u32 = 5;
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
/// Messages queued for one agent's session. They are few (one per image change, about one
/// per reconciliation that changes the node's tasks), so a full queue means the agent
/// stopped reading; its session is closed to resynchronise.
const SESSION_QUEUE: usize = 64;
/// Events queued for the reconcile task; a full queue already guarantees a reconciliation.
const RECONCILE_QUEUE: usize = 256;
/// Reconcile at least this often, for timers nobody wakes (orphaning after a long Down).
const RECONCILE_PERIOD: Duration = Duration::from_secs(10);
/// Largest piece of an upload read at once, and of a blob sent at once.
const CHUNK: usize = 256 * 1024;
/// An upload that sends nothing for this long is abandoned.
const UPLOAD_STALL: Duration = Duration::from_secs(30);

struct Session {
    serial: u64,
    conn: quinn::Connection,
    /// Messages for the agent, written by its session task.
    tx: mpsc::Sender<ManagerMessage>,
}

struct State {
    members: Membership,
    sessions: HashMap<NodeId, Session>,
    next_serial: u64,
    /// Image digests each node last said it holds complete (observed status, memory only).
    held: HashMap<NodeId, HashSet<String>>,
}

/// What the reconcile task is asked to do.
enum Event {
    /// Something changed (a spec, a node's status or availability): reconcile.
    Kick,
    /// A node reported task status changes: record them, then reconcile.
    Reports(NodeId, Vec<TaskReport>),
}

/// Services and tasks in memory, as last persisted, with the orchestrator's memory.
struct ServiceState {
    orchestrator: Orchestrator,
    records: std::collections::BTreeMap<ServiceId, ServiceRecord>,
    tasks: HashMap<TaskId, Task>,
    /// Names of services, kept while a removed service's tasks are still being stopped.
    names: HashMap<ServiceId, ServiceName>,
}

impl ServiceState {
    fn name_map(&self) -> HashMap<ServiceId, ServiceName> {
        let mut names = self.names.clone();
        for t in self.tasks.values() {
            names.entry(t.service_id.clone()).or_insert_with(|| shoal_proto::text_lossy(t.service_id.short()));
        }
        names
    }
}

struct Manager {
    store: Store,
    /// Services and tasks. `state` may be locked while this is held, never the reverse.
    services: Mutex<ServiceState>,
    /// Wakes the reconcile task.
    events: mpsc::Sender<Event>,
    ca: Ca,
    cluster: Mutex<ClusterRecord>,
    state: Mutex<State>,
    started: Instant,
    blobs: BlobStore,
    /// Serialises changes to the image set: committing blobs, writing records, blob GC
    /// and telling the agents happen as one step, so GC never sees a half-loaded image
    /// and agents get the sets in the order they were made.
    images: tokio::sync::Mutex<()>,
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

    /// Asks for a reconciliation; a full queue means one is coming anyway.
    fn kick(&self) {
        let _ = self.events.try_send(Event::Kick);
    }

    fn log_transitions(&self, transitions: &[Transition]) {
        if !transitions.is_empty() {
            // Down → replacements start now; Ready → pending tasks may fit.
            self.kick();
        }
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

    let blobs = BlobStore::open(&paths::manager_dir(data_dir))?;
    // Blobs of a load that crashed between moving blobs and writing records go now.
    let collected = blobs.gc(&images::referenced_blobs(&store.images()?))?;
    if collected > 0 {
        info!(blobs = collected, "removed image blobs no image uses");
    }
    let mut members = Membership::new(config.liveness);
    let records: std::collections::BTreeMap<ServiceId, ServiceRecord> =
        store.services()?.into_iter().map(|r| (r.service.id.clone(), r)).collect();
    let tasks: HashMap<TaskId, Task> = store.tasks()?.into_iter().map(|t| (t.id.clone(), t)).collect();
    info!(services = records.len(), tasks = tasks.len(), "services loaded");
    let names = records.values().map(|r| (r.service.id.clone(), r.service.spec.name.clone())).collect();
    let (events, events_rx) = mpsc::channel(RECONCILE_QUEUE);
    let manager = Arc::new(Manager {
        store,
        services: Mutex::new(ServiceState { orchestrator: Orchestrator::default(), records, tasks, names }),
        events,
        ca,
        cluster: Mutex::new(cluster.clone()),
        state: Mutex::new(State {
            members: Membership::default(),
            sessions: HashMap::new(),
            next_serial: 0,
            held: HashMap::new(),
        }),
        started: Instant::now(),
        blobs,
        images: tokio::sync::Mutex::new(()),
    });
    for node in manager.store.nodes()? {
        if node.role == Role::Worker {
            members.track(0, node.id);
        }
    }
    manager.state.lock().expect("state lock").members = members;
    info!(%listen, advertise = %cluster.advertise_addr, cluster = %cluster.cluster_id, "manager running");

    let ticker = tokio::spawn(tick_loop(manager.clone(), config.liveness));
    let reconciler = tokio::spawn(reconcile_loop(manager.clone(), events_rx));
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
    reconciler.abort();
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
        (Request::FetchBlob(fetch), Peer::Node(id)) => return serve_blob(&mgr, id, fetch, send).await,
        (Request::FetchBlob(_), _) => Response::Error(ErrorReply::new(
            ErrorKind::Unauthorized,
            "image blobs are served to cluster nodes only: join the cluster with `shoal-agent join` first",
        )),
        (Request::Join(join), _) => handle_join(&mgr, join).unwrap_or_else(Response::Error),
        (Request::OpenSession(open), Peer::Node(id)) => {
            return run_session(mgr, conn, id.clone(), open, send, recv).await;
        }
        (Request::OpenSession(_), _) => Response::Error(ErrorReply::new(
            ErrorKind::Unauthorized,
            "this connection carries no node certificate: join the cluster first with `shoal-agent join --token TOKEN MANAGER`",
        )),
        (Request::Control(req), Peer::Admin) => match handle_control(&mgr, req, &mut recv).await {
            Ok(r) => Response::Control(r),
            Err(e) => {
                // Whatever of an upload is still coming is not wanted: let the sender stop.
                let _ = recv.stop(0u32.into());
                Response::Error(e)
            }
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

/// An agent's long-lived session: accept it, send it the image set, then take its
/// heartbeats and image reports while writing the messages queued for it, until it ends.
async fn run_session(
    mgr: Arc<Manager>,
    conn: quinn::Connection,
    node: NodeId,
    open: SessionOpen,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
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
    let (tx, mut rx) = mpsc::channel(SESSION_QUEUE);
    let (serial, transition, replaced) = {
        let mut st = mgr.state.lock().expect("state lock");
        st.next_serial += 1;
        let serial = st.next_serial;
        let replaced = st.sessions.insert(node.clone(), Session { serial, conn: conn.clone(), tx });
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
    // The image set is read after the session was registered, so a change made since is
    // queued behind this one and the agent always ends with the newest set.
    match mgr.store.images() {
        Ok(all) => {
            if framed::send(&mut send, &images_message(&all)).await.is_err() {
                return;
            }
        }
        Err(e) => warn!(%node, error = %e, "could not read the image set for a new session"),
    }
    // Likewise the task set: a reconciliation after this queues its diff behind it.
    let full = {
        let svc = mgr.services.lock().expect("services lock");
        dispatcher::full_set(&node, svc.tasks.values(), &svc.name_map())
    };
    for message in full {
        if framed::send(&mut send, &message).await.is_err() {
            return;
        }
    }
    // The read is kept across loop turns rather than restarted: `framed::recv` is not
    // cancel-safe, and dropping it halfway through a frame would lose bytes.
    let mut reading = Box::pin(next_message(recv));
    let ended = loop {
        tokio::select! {
            (r, result) = &mut reading => {
                match result {
                    Ok(Some(AgentMessage::TaskStatuses(reports))) => {
                        debug!(%node, reports = reports.len(), "task status reports");
                        // Waiting here slows only this agent, and only while the queue is full.
                        if mgr.events.send(Event::Reports(node.clone(), reports.into_vec())).await.is_err() {
                            break None;
                        }
                    }
                    Ok(Some(AgentMessage::Heartbeat { .. })) => {
                        let t = {
                            let mut st = mgr.state.lock().expect("state lock");
                            let now = mgr.now();
                            st.members.heard(now, &node)
                        };
                        mgr.log_transitions(&t.into_iter().collect::<Vec<_>>());
                    }
                    Ok(Some(AgentMessage::ImagesHeld(digests))) => {
                        debug!(%node, images = digests.len(), "node reports the images it holds");
                        let held = digests.iter().map(|d| d.to_string()).collect();
                        mgr.state.lock().expect("state lock").held.insert(node.clone(), held);
                    }
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
                reading = Box::pin(next_message(r));
            }
            Some(message) = rx.recv() => {
                if let Err(e) = framed::send(&mut send, &message).await {
                    debug!(%node, error = %e, "could not write to session");
                    break None;
                }
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

/// Reads the next agent message, handing the stream back so the read can be restarted.
async fn next_message(mut recv: quinn::RecvStream) -> (quinn::RecvStream, Result<Option<AgentMessage>, LinkError>) {
    let result = framed::recv::<AgentMessage>(&mut recv, SESSION_FRAME_LIMIT).await;
    (recv, result)
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

async fn handle_control(
    mgr: &Manager,
    req: ControlRequest,
    recv: &mut quinn::RecvStream,
) -> Result<ControlReply, ErrorReply> {
    let nodes = mgr.store.nodes().map_err(internal)?;
    match req {
        ControlRequest::Service(req) => handle_service(mgr, req, &nodes).map(ControlReply::Service),
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
            mgr.kick();
            let session = {
                let mut st = mgr.state.lock().expect("state lock");
                st.members.forget(&record.id);
                st.held.remove(&record.id);
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
            mgr.kick();
            info!(node = %record.id, availability = %record.availability, "node updated");
            Ok(ControlReply::Done(shoal_proto::Message::lossy(record.id.as_str())))
        }
        ControlRequest::ImageLoad { size } => load_image(mgr, size, recv).await,
        ControlRequest::ImageList => list_images(mgr),
        ControlRequest::ImageRemove { image } => remove_image(mgr, &image).await,
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

/// The full set of images every agent should hold.
fn images_message(all: &[ImageRecord]) -> ManagerMessage {
    let wanted: Vec<_> = images::wanted(all).into_iter().take(MAX_IMAGES).collect();
    ManagerMessage::Images(wanted.try_into().unwrap_or_default())
}

/// Tells every session the new image set. Called with the image lock held, so sets are
/// queued in the order they were made.
fn broadcast_images(mgr: &Manager, all: &[ImageRecord]) {
    let message = images_message(all);
    let lagging: Vec<_> = {
        let st = mgr.state.lock().expect("state lock");
        st.sessions
            .iter()
            .filter(|(_, s)| matches!(s.tx.try_send(message.clone()), Err(mpsc::error::TrySendError::Full(_))))
            .map(|(id, s)| (id.clone(), s.conn.clone()))
            .collect()
    };
    for (node, conn) in lagging {
        warn!(%node, "session is not reading its messages; closing it so the agent resynchronises");
        conn.close(close::LAGGING.into(), b"session fell behind; reconnect");
    }
}

/// Removes a file when dropped: the upload, whatever happens to the import.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Copies exactly `size` bytes of the stream into `path`, in chunks.
async fn receive_upload(recv: &mut quinn::RecvStream, path: &Path, size: u64) -> Result<(), ErrorReply> {
    let mut file = tokio::fs::File::create(path).await.map_err(internal)?;
    let mut left = size;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(CHUNK);
        let chunk = match tokio::time::timeout(UPLOAD_STALL, recv.read_chunk(want, true)).await {
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => {
                return Err(ErrorReply::new(
                    ErrorKind::InvalidRequest,
                    &format!("the upload ended after {} of {size} bytes: run `shoal image load` again", size - left),
                ))
            }
            Ok(Err(e)) => return Err(ErrorReply::new(ErrorKind::InvalidRequest, &format!("the upload failed: {e}"))),
            Err(_) => {
                return Err(ErrorReply::new(
                    ErrorKind::InvalidRequest,
                    &format!("the upload stalled for {UPLOAD_STALL:?}: run `shoal image load` again"),
                ))
            }
        };
        left -= chunk.bytes.len() as u64;
        file.write_all(&chunk.bytes).await.map_err(internal)?;
    }
    file.flush().await.map_err(internal)?;
    Ok(())
}

/// `image load`: receive the archive, verify it whole, then commit its blobs and records
/// (replacing images of the same reference), collect unused blobs and tell the agents.
async fn load_image(mgr: &Manager, size: u64, recv: &mut quinn::RecvStream) -> Result<ControlReply, ErrorReply> {
    if size > MAX_ARCHIVE_BYTES {
        return Err(ErrorReply::new(
            ErrorKind::InvalidRequest,
            &format!(
                "the archive is {size} bytes, more than the {} GiB the manager accepts: split the images \
                 into several archives",
                MAX_ARCHIVE_BYTES >> 30
            ),
        ));
    }
    if size == 0 {
        return Err(ErrorReply::new(ErrorKind::InvalidRequest, "the archive is empty: give an OCI image archive"));
    }
    let upload = RemoveOnDrop(mgr.blobs.tmp_dir().join(format!("upload-{}.tar", images::hex(&crate::random::<8>()))));
    receive_upload(recv, &upload.0, size).await?;
    let (path, blobs) = (upload.0.clone(), mgr.blobs.clone());
    let imported = tokio::task::spawn_blocking(move || archive::import(&path, &blobs))
        .await
        .map_err(internal)?
        .map_err(|e: ImportError| {
            if e.is_bad_archive() {
                info!(error = %e, "refused an image archive");
                ErrorReply::new(ErrorKind::InvalidRequest, &e.to_string())
            } else {
                internal(e)
            }
        })?;
    drop(upload);

    let _guard = mgr.images.lock().await;
    let existing = mgr.store.images().map_err(internal)?;
    let refs: HashSet<&str> = existing.iter().chain(&imported.images).map(|i| i.reference.as_str()).collect();
    if refs.len() > MAX_IMAGES {
        return Err(ErrorReply::new(
            ErrorKind::Conflict,
            &format!("the manager holds at most {MAX_IMAGES} images: remove some with `shoal image rm` first"),
        ));
    }
    let used = images::referenced_blobs(&imported.images);
    mgr.blobs.commit(&imported.staging, &used).map_err(internal)?;
    mgr.store.update_images(&imported.images, &[]).map_err(internal)?;
    let all = mgr.store.images().map_err(internal)?;
    match mgr.blobs.gc(&images::referenced_blobs(&all)) {
        Ok(0) => {}
        Ok(n) => info!(blobs = n, "removed image blobs no image uses any more"),
        Err(e) => warn!(error = %e, "image blob garbage collection failed"),
    }
    broadcast_images(mgr, &all);
    let mut loaded = BoundedVec::new();
    for image in &imported.images {
        info!(reference = %image.reference, digest = %image.digest, platforms = ?image.platforms, size = image.size, "image loaded");
        loaded.push(shoal_proto::text(&image.reference).map_err(internal)?).map_err(internal)?;
    }
    Ok(ControlReply::ImagesLoaded(loaded))
}

/// `image ls`, with the nodes that reported holding each image.
fn list_images(mgr: &Manager) -> Result<ControlReply, ErrorReply> {
    let all = mgr.store.images().map_err(internal)?;
    let st = mgr.state.lock().expect("state lock");
    let mut views = Vec::new();
    for image in all.into_iter().take(MAX_IMAGES) {
        let mut holders: Vec<NodeId> =
            st.held.iter().filter(|(_, held)| held.contains(&image.digest)).map(|(id, _)| id.clone()).collect();
        holders.sort();
        views.push(ImageView {
            reference: shoal_proto::text_lossy(&image.reference),
            digest: shoal_proto::text_lossy(&image.digest),
            platforms: image
                .platforms
                .iter()
                .take(shoal_proto::images::MAX_PLATFORMS)
                .map(|p| shoal_proto::text_lossy(p))
                .collect::<Vec<_>>()
                .try_into()
                .map_err(internal)?,
            size: image.size,
            nodes: holders.try_into().map_err(internal)?,
        });
    }
    Ok(ControlReply::Images(views.try_into().map_err(internal)?))
}

/// `image rm`: drop the records, collect their blobs, tell the agents.
async fn remove_image(mgr: &Manager, name: &str) -> Result<ControlReply, ErrorReply> {
    let _guard = mgr.images.lock().await;
    let existing = mgr.store.images().map_err(internal)?;
    let targets = images::resolve(&existing, name)?;
    let refs: Vec<&str> = targets.iter().map(|i| i.reference.as_str()).collect();
    mgr.store.update_images(&[], &refs).map_err(internal)?;
    let all = mgr.store.images().map_err(internal)?;
    if let Err(e) = mgr.blobs.gc(&images::referenced_blobs(&all)) {
        warn!(error = %e, "image blob garbage collection failed");
    }
    broadcast_images(mgr, &all);
    let mut lines: Vec<String> = refs.iter().map(|r| format!("Untagged: {r}")).collect();
    let digests: HashSet<&str> = targets.iter().map(|i| i.digest.as_str()).collect();
    for d in digests {
        if !all.iter().any(|i| i.digest == d) {
            lines.push(format!("Deleted: {d}"));
        }
    }
    info!(image = name, removed = ?refs, "image removed");
    Ok(ControlReply::Done(shoal_proto::Message::lossy(&lines.join("\n"))))
}

/// `FetchBlob` from a node: the size, then the bytes from `offset` on, streamed from the
/// file, then the end of the stream.
async fn serve_blob(mgr: &Manager, node: &NodeId, fetch: FetchBlob, mut send: quinn::SendStream) {
    // A removed node's certificate still verifies against the CA: check the store.
    match mgr.store.node(node) {
        Ok(Some(_)) => {}
        Ok(None) => {
            let refusal = ErrorReply::new(
                ErrorKind::NodeRemoved,
                "this node was removed from the cluster: join again with `shoal-agent join --token TOKEN MANAGER`",
            );
            return reply(&mut send, &Response::Error(refusal)).await;
        }
        Err(e) => return reply(&mut send, &Response::Error(internal(e))).await,
    }
    let (file, size) = match mgr.blobs.open_at(&fetch.digest, fetch.offset) {
        Ok(opened) => opened,
        Err(e @ BlobError::NotFound(_)) => {
            return reply(&mut send, &Response::Error(ErrorReply::new(ErrorKind::NotFound, &e.to_string()))).await
        }
        Err(e @ (BlobError::InvalidDigest(_) | BlobError::OffsetBeyondEnd { .. })) => {
            return reply(&mut send, &Response::Error(ErrorReply::new(ErrorKind::InvalidRequest, &e.to_string()))).await
        }
        Err(e) => return reply(&mut send, &Response::Error(internal(e))).await,
    };
    if framed::send(&mut send, &Response::Blob { size }).await.is_err() {
        return;
    }
    let mut file = tokio::fs::File::from_std(file);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match file.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                warn!(digest = %fetch.digest, error = %e, "could not read a blob");
                // Resetting tells the node the transfer failed rather than ended.
                let _ = send.reset(1u32.into());
                return;
            }
        };
        if let Err(e) = send.write_all(&buf[..n]).await {
            debug!(%node, digest = %fetch.digest, error = %e, "blob transfer interrupted");
            return;
        }
    }
    let _ = send.finish();
    debug!(%node, digest = %fetch.digest, offset = fetch.offset, size, "blob sent");
}

/// The nodes as placement sees them: stored records with their current liveness.
fn cluster_nodes(mgr: &Manager) -> Result<Vec<ClusterNode>, crate::store::StoreError> {
    let records = mgr.store.nodes()?;
    let st = mgr.state.lock().expect("state lock");
    let now = mgr.now();
    Ok(records
        .iter()
        .map(|r| {
            let status = match r.role {
                Role::Manager => NodeStatus::Ready,
                Role::Worker => st.members.status(now, &r.id).0,
            };
            ClusterNode::from_record(r, status)
        })
        .collect())
}

/// The one task that changes tasks: waits for events (or the next timer), takes every
/// event already queued, and reconciles once for all of them.
async fn reconcile_loop(mgr: Arc<Manager>, mut events: mpsc::Receiver<Event>) {
    let mut wake_at: Option<tokio::time::Instant> = None;
    let mut reports: Vec<(NodeId, Vec<TaskReport>)> = Vec::new();
    loop {
        let deadline = wake_at.unwrap_or_else(|| tokio::time::Instant::now() + RECONCILE_PERIOD);
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::Kick) => {}
                Some(Event::Reports(node, r)) => reports.push((node, r)),
                None => return,
            },
            _ = tokio::time::sleep_until(deadline) => {}
        }
        while let Ok(event) = events.try_recv() {
            if let Event::Reports(node, r) = event {
                reports.push((node, r));
            }
        }
        let batch = std::mem::take(&mut reports);
        // Store writes block; keep them off the other tasks' way.
        match tokio::task::block_in_place(|| reconcile(&mgr, batch)) {
            Ok(next) => {
                wake_at = next.map(|ms| tokio::time::Instant::from_std(mgr.started + Duration::from_millis(ms)))
            }
            Err(e) => {
                warn!(error = %e, "reconciliation failed; retrying in a second");
                wake_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
            }
        }
    }
}

/// Records task reports, runs the orchestrator, the updater and the scheduler, persists
/// what changed in one transaction, then tells each node what changed for it. Returns
/// when the orchestrator wants to run again (monotonic milliseconds).
fn reconcile(mgr: &Manager, reports: Vec<(NodeId, Vec<TaskReport>)>) -> anyhow::Result<Option<Millis>> {
    let nodes = cluster_nodes(mgr)?;
    let now = Now { mono: mgr.now(), wall_ms: crate::wall_ms() };
    let mut svc = mgr.services.lock().expect("services lock");
    let svc = &mut *svc;
    let mut tasks: Vec<Task> = svc.tasks.values().cloned().collect();
    tasks.sort_by(|a, b| a.id.cmp(&b.id));

    if !reports.is_empty() {
        let index: HashMap<TaskId, usize> = tasks.iter().enumerate().map(|(i, t)| (t.id.clone(), i)).collect();
        for (node, batch) in reports {
            for r in batch {
                let Some(&i) = index.get(&r.task_id) else {
                    debug!(%node, task = %r.task_id, "report for a task the manager no longer has");
                    continue;
                };
                let t = &mut tasks[i];
                if t.node_id.as_ref() != Some(&node) {
                    warn!(%node, task = %t.id, "report for a task assigned to another node; ignored");
                    continue;
                }
                let state = r.status.state;
                match shoal_proto::apply_status(t, r.status) {
                    Ok(()) => debug!(%node, task = %t.id, %state, "task status"),
                    Err(e) => warn!(%node, error = %e, "refused a task report"),
                }
            }
        }
    }

    let services: Vec<Service> = svc.records.values().map(|r| r.service.clone()).collect();
    let mut new_id = || TaskId::from_random(crate::random());
    let plan = svc.orchestrator.reconcile(now, &services, &tasks, &nodes, &mut new_id);
    let wake_at = plan.wake_at;
    for stop in &plan.shutdown {
        info!(task = %stop.task, reason = %stop.reason, "stopping task");
    }
    plan.apply_to(&mut tasks, now.wall_ms);
    let plan = updater::replace_outdated(now, &services, &tasks, &mut new_id);
    if !plan.create.is_empty() {
        info!(tasks = plan.create.len(), "replacing tasks of an older spec");
    }
    plan.apply_to(&mut tasks, now.wall_ms);

    let pending: Vec<TaskId> = tasks
        .iter()
        .filter(|t| t.status.state <= TaskState::Pending && t.is_desired_running())
        .map(|t| t.id.clone())
        .collect();
    if !pending.is_empty() {
        let decisions = scheduler::schedule(&nodes, &tasks, &pending);
        let index: HashMap<TaskId, usize> = tasks.iter().enumerate().map(|(i, t)| (t.id.clone(), i)).collect();
        for d in decisions {
            let id = match &d {
                scheduler::Decision::Assign { task, .. } | scheduler::Decision::Unassignable { task, .. } => task,
            };
            let Some(&i) = index.get(id) else { continue };
            let t = &mut tasks[i];
            match &d {
                // The same refusal again: keep the time it was first given.
                scheduler::Decision::Unassignable { reason, .. } if &*t.status.message == reason.as_str() => continue,
                scheduler::Decision::Unassignable { reason, .. } => info!(task = %t.id, %reason, "task pending"),
                scheduler::Decision::Assign { node, .. } => debug!(task = %t.id, %node, "task assigned"),
            }
            if let Err(e) = scheduler::record(t, &d, now.wall_ms) {
                warn!(error = %e, "scheduler decision refused");
            }
        }
    }

    // What changed, written in one transaction before anyone is told.
    let after: HashMap<TaskId, Task> = tasks.into_iter().map(|t| (t.id.clone(), t)).collect();
    let put_tasks: Vec<&Task> = after.values().filter(|t| svc.tasks.get(&t.id) != Some(*t)).collect();
    let remove_tasks: Vec<&TaskId> = svc.tasks.keys().filter(|id| !after.contains_key(*id)).collect();
    let mut by_service: HashMap<&ServiceId, Vec<&Task>> = HashMap::new();
    for t in after.values() {
        by_service.entry(&t.service_id).or_default().push(t);
    }
    let mut records_changed: Vec<ServiceRecord> = Vec::new();
    for record in svc.records.values() {
        let mut r = record.clone();
        let own = by_service.get(&record.service.id).map_or(&[][..], |v| v.as_slice());
        if services::note_progress(&mut r, own, now.wall_ms) {
            info!(service = %r.service.spec.name, "update completed");
            records_changed.push(r);
        }
    }
    let changes = ServiceChanges {
        put_services: records_changed.iter().collect(),
        remove_services: Vec::new(),
        put_tasks,
        remove_tasks,
    };
    mgr.store.change_services(&changes)?;
    drop(changes);
    for r in records_changed {
        svc.records.insert(r.service.id.clone(), r);
    }
    let before = std::mem::replace(&mut svc.tasks, after);
    // Forget the names of removed services once their last task is gone.
    let live: HashSet<&ServiceId> = svc.tasks.values().map(|t| &t.service_id).collect();
    let records = &svc.records;
    svc.names.retain(|id, _| records.contains_key(id) || live.contains(id));

    let diffs = dispatcher::diff(&before, &svc.tasks, &svc.name_map());
    if !diffs.is_empty() {
        let st = mgr.state.lock().expect("state lock");
        let mut lagging = Vec::new();
        for (node, d) in diffs {
            let Some(session) = st.sessions.get(&node) else { continue };
            debug!(%node, upsert = d.upsert.len(), remove = d.remove.len(), "assignments changed");
            for message in dispatcher::diff_messages(d) {
                if let Err(mpsc::error::TrySendError::Full(_)) = session.tx.try_send(message) {
                    lagging.push((node.clone(), session.conn.clone()));
                    break;
                }
            }
        }
        drop(st);
        for (node, conn) in lagging {
            warn!(%node, "session is not reading its messages; closing it so the agent resynchronises");
            conn.close(close::LAGGING.into(), b"session fell behind; reconnect");
        }
    }
    Ok(wake_at)
}

/// `shoal service ...`: reads answer from memory; changes are persisted, then a
/// reconciliation is asked for.
fn handle_service(mgr: &Manager, req: ServiceRequest, nodes: &[NodeRecord]) -> Result<ServiceReply, ErrorReply> {
    let wall = crate::wall_ms();
    let images = || mgr.store.images().map_err(internal);
    let mut svc = mgr.services.lock().expect("services lock");
    let records: Vec<ServiceRecord> = svc.records.values().cloned().collect();
    let tasks_of = |svc: &ServiceState, id: &ServiceId| -> Vec<Task> {
        svc.tasks.values().filter(|t| &t.service_id == id).cloned().collect()
    };
    let put = |svc: &mut ServiceState, record: ServiceRecord| -> Result<ServiceReply, ErrorReply> {
        mgr.store
            .change_services(&ServiceChanges { put_services: vec![&record], ..Default::default() })
            .map_err(internal)?;
        let id = record.service.id.clone();
        svc.names.insert(id.clone(), record.service.spec.name.clone());
        svc.records.insert(id.clone(), record);
        mgr.kick();
        Ok(ServiceReply::Done(id))
    };
    match req {
        ServiceRequest::Create(spec) => {
            let record = services::create(&records, *spec, &images()?, ServiceId::from_random(crate::random()), wall)?;
            info!(service = %record.service.spec.name, id = %record.service.id, image = %record.service.spec.image, "service created");
            put(&mut svc, record).map(|r| match r {
                ServiceReply::Done(id) => ServiceReply::Created(id),
                other => other,
            })
        }
        ServiceRequest::List => {
            let views: Vec<_> = records
                .iter()
                .map(|r| {
                    let own = tasks_of(&svc, &r.service.id);
                    services::view(r, &own.iter().collect::<Vec<_>>())
                })
                .collect();
            Ok(ServiceReply::Services(views.try_into().map_err(internal)?))
        }
        ServiceRequest::Inspect { service } => {
            let r = services::resolve(&records, &service)?;
            let own = tasks_of(&svc, &r.service.id);
            Ok(ServiceReply::Service(Box::new(services::view(r, &own.iter().collect::<Vec<_>>()))))
        }
        ServiceRequest::Ps { services: wanted } => {
            let chosen: Vec<&ServiceRecord> = if wanted.is_empty() {
                records.iter().collect()
            } else {
                wanted.iter().map(|q| services::resolve(&records, q)).collect::<Result<_, _>>()?
            };
            let hostnames = nodes.iter().map(|n| (n.id.clone(), n.description.hostname.clone())).collect();
            let all: Vec<Task> = svc.tasks.values().cloned().collect();
            let mut views = services::ps(&chosen, &all, &hostnames);
            views.truncate(MAX_TASKS_LISTED);
            Ok(ServiceReply::Tasks(views.try_into().map_err(internal)?))
        }
        ServiceRequest::Update { service, spec, version } => {
            let r = services::resolve(&records, &service)?;
            let next = services::update(r, *spec, version, &images()?, wall)?;
            info!(service = %next.service.spec.name, version = next.service.spec_version, "service updated");
            put(&mut svc, next)
        }
        ServiceRequest::Rollback { service } => {
            let r = services::resolve(&records, &service)?;
            let next = services::rollback(r, wall)?;
            info!(service = %next.service.spec.name, version = next.service.spec_version, "service rolled back");
            put(&mut svc, next)
        }
        ServiceRequest::Remove { service } => {
            let id = services::resolve(&records, &service)?.service.id.clone();
            mgr.store
                .change_services(&ServiceChanges { remove_services: vec![&id], ..Default::default() })
                .map_err(internal)?;
            if let Some(r) = svc.records.remove(&id) {
                info!(service = %r.service.spec.name, "service removed");
            }
            mgr.kick();
            Ok(ServiceReply::Done(id))
        }
    }
}
