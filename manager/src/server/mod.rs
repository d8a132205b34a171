//! `shoal manager run`: the QUIC shell around the pure core. It accepts connections,
//! tells joining boards, agents and administrators apart by their certificates, feeds
//! heartbeats to [`Membership`] and applies what it decides (closing dead sessions).
//! It also takes image uploads, serves image blobs to nodes and tells every agent which
//! images to hold; the archive parsing and blob store are in [`crate::images`].
//!
//! Services: control requests change service records; one reconcile task (fed by a
//! channel, bursts coalesced) then runs one pure pass of [`shoal_core::pass`] over every
//! service and task, persists the result in one transaction and sends each node the
//! assignments that changed for it. Sessions only forward task reports to it.
//!
//! Here: connections, identification and the first frame of every stream. Beside it:
//! `join`, `session`, `control`, `distribution` (images), `reconcile` (services), `pki`
//! (certificate renewal and CA rotation).

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
    SessionOpen, MANAGER_SERVER_NAME, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::ca::{self, Ca, CertRole};
use crate::core::membership::{LivenessConfig, Membership, SecondSession, Transition};
use crate::core::nodes::{self, NodeRecord};
use crate::core::pass::{Cluster, Event as PassEvent, Outcome, Reconciler};
use crate::core::placement::ClusterNode;
use crate::core::plan::Now;
use crate::core::services::{self as services, ServiceRecord};
use crate::core::{dispatcher, Millis};
use crate::images::archive::{self, ImportError};
use crate::images::blobs::{BlobError, BlobStore};
use crate::images::{self, ImageRecord};
use crate::paths;
use crate::store::ServiceChanges;
use crate::store::{ClusterRecord, Store};
use shoal_proto::dispatch::{ServiceReply, ServiceRequest, TaskReport, MAX_TASKS_LISTED};
use shoal_proto::services::ServiceName;
use shoal_proto::{ServiceId, Task, TaskId};

mod beats;
mod control;
mod distribution;
mod exec;
mod join;
mod logs;
mod networks;
mod objects;
mod pki;
pub use pki::DockerTls;
mod pull;
mod reconcile;
mod session;
mod socket;
mod task_table;
mod upgrade;
mod volumes;

use control::{handle_control, send_backup};
use distribution::*;
use join::handle_join;
use reconcile::*;
use session::*;

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
    /// Too many connections without a certificate, or one held too long.
    pub const BUSY: u32 = 6;
}

/// Settings for `manager run`.
#[derive(Debug, Clone, Default)]
pub struct RunConfig {
    /// Liveness timing.
    pub liveness: LivenessConfig,
    /// Overrides the listen address chosen at init.
    pub listen: Option<SocketAddr>,
    /// How often encrypted networks' keys are replaced, in milliseconds.
    pub key_rotation_ms: u64,
    /// Registries (`host:port`) `image pull` may reach over plain HTTP (loopback ones
    /// always may).
    pub insecure_registries: Vec<String>,
    /// Serve the Docker API on TCP too: its TLS comes from here.
    pub docker_tls: Option<pki::DockerTls>,
}

/// Largest request from a peer without a certificate: a join request with every label
/// at its longest is under 40 KiB.
const ANONYMOUS_FRAME_LIMIT: usize = 64 * 1024;
/// Connections without a certificate at once; beyond it new ones are closed at once.
/// With [`tls::UNAUTHENTICATED`] this bounds what strangers make the manager hold.
const MAX_ANONYMOUS: usize = 64;
/// How long a connection without a certificate may last: joining takes a round trip.
const ANONYMOUS_LIFETIME: Duration = Duration::from_secs(20);
/// How long a stranger's stream may take to bring its whole request.
const ANONYMOUS_REQUEST_TIME: Duration = Duration::from_secs(5);
/// How long a node's or the CLI's stream may take to bring its first request.
const REQUEST_TIME: Duration = Duration::from_secs(30);
/// Largest frame accepted on a session stream after the opening request.
const SESSION_FRAME_LIMIT: usize = 64 * 1024;
/// Idle timeout of manager connections; dead nodes are found sooner by heartbeats. Long,
/// because an idle board's QUIC connection carries one keep-alive every 25 s (its
/// heartbeats travel beside it): see `docs/failure-detection.md`.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Messages queued for one agent's session. They are few (one per image change, about one
/// per reconciliation that changes the node's tasks), so a full queue means the agent
/// stopped reading; its session is closed to resynchronise.
const SESSION_QUEUE: usize = 64;
/// Events queued for the reconcile task: room for a report batch from every board of a
/// big fleet, so that one pass takes all the reports that came while the last one ran. A
/// pass reads every task whatever it records; with 256 it took at most 256 boards'
/// reports and 100,000 tasks took two minutes to be seen Running. A full queue makes a
/// session wait, and already guarantees a reconciliation.
const RECONCILE_QUEUE: usize = 8 * 1024;
/// Reconcile at least this often, for timers nobody wakes (orphaning after a long Down).
const RECONCILE_PERIOD: Duration = Duration::from_secs(10);
/// Largest piece of an upload read at once, and of a blob sent at once.
const CHUNK: usize = 256 * 1024;
/// An upload that sends nothing for this long is abandoned.
const UPLOAD_STALL: Duration = Duration::from_secs(30);

struct Session {
    serial: u64,
    conn: quinn::Connection,
    /// When this session last carried a heartbeat (or opened): tells a live session from
    /// a dead one when a second board with the same identity connects.
    last_heard: Millis,
    /// Messages for the agent, written by its session task.
    tx: mpsc::Sender<ManagerMessage>,
    /// The board's underlay address: the source of its session as the manager sees it
    /// (memory only; other boards tunnel to it).
    underlay: std::net::IpAddr,
    /// The network view last queued for the board; `None` until the first is.
    view: Option<Vec<shoal_proto::networks::NetworkView>>,
    /// The secrets and configs last queued for the board (names and versions); `None`
    /// until the first set is.
    secrets: Option<objects::SentSet>,
    /// How far the board's clock is ahead of the manager's, ms (memory only).
    skew_ms: Option<i64>,
}

struct State {
    members: Membership,
    sessions: HashMap<NodeId, Session>,
    next_serial: u64,
    /// Image digests each node last said it holds complete (observed status, memory only).
    held: HashMap<NodeId, HashSet<String>>,
    /// Nodes whose disk is short of space, with what they said (observed status, memory
    /// only: a node says it again at each session start).
    disk: HashMap<NodeId, String>,
}

/// What the reconcile task is asked to do.
enum Event {
    /// Something changed (a spec, a node's status or availability): reconcile.
    Kick,
    /// A node reported task status changes: record them, then reconcile.
    Reports(NodeId, Vec<TaskReport>),
}

/// Services and tasks in memory, as last persisted, with the reconciler's memory.
struct ServiceState {
    reconciler: Reconciler,
    records: std::collections::BTreeMap<ServiceId, ServiceRecord>,
    /// Every task, with its index by node.
    tasks: task_table::TaskTable,
    /// Names of services, kept while a removed service's tasks are still being stopped.
    names: HashMap<ServiceId, ServiceName>,
    /// Overlay networks, ingress included, as stored.
    networks: Vec<shoal_proto::networks::Network>,
    /// Encrypted networks' keys (memory only: a restarted manager makes new ones).
    keys: shoal_core::netkeys::Keyring,
    /// Secrets and configs by `kind/name`, opened (see [`objects`]).
    objects: std::collections::BTreeMap<String, objects::Held>,
}

impl ServiceState {
    /// The tasks placed on `node`, in no particular order.
    fn tasks_on<'a>(&'a self, node: &NodeId) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks.on(node)
    }

    /// The service name of each of `tasks`: its record's, or (a removed service whose
    /// name is gone) its ID's short form.
    fn names_of<'a>(&self, tasks: impl IntoIterator<Item = &'a Task>) -> HashMap<ServiceId, ServiceName> {
        let mut names = HashMap::new();
        for t in tasks {
            names.entry(t.service_id.clone()).or_insert_with(|| {
                self.names.get(&t.service_id).cloned().unwrap_or_else(|| shoal_proto::text_lossy(t.service_id.short()))
            });
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
    /// The CAs in force. Lock order: `cluster`, then `pki`.
    pki: Mutex<pki::Pki>,
    cluster: Mutex<ClusterRecord>,
    /// The listening endpoint, whose TLS configuration follows the CAs.
    endpoint: quinn::Endpoint,
    /// Bumped when the CAs change: every session sends its board the new trust.
    pki_changed: tokio::sync::watch::Sender<u64>,
    /// Wakes the certificate task (a board saved a certificate).
    pki_wake: tokio::sync::Notify,
    state: Mutex<State>,
    blobs: BlobStore,
    /// Serialises changes to the image set: committing blobs, writing records, blob GC
    /// and telling the agents happen as one step, so GC never sees a half-loaded image
    /// and agents get the sets in the order they were made.
    images: tokio::sync::Mutex<()>,
    /// Connections without a certificate open now.
    anonymous: Arc<std::sync::atomic::AtomicUsize>,
    /// The data directory, for scratch files beside the store.
    data_dir: std::path::PathBuf,
    /// Seals secrets for the store and opens them.
    sealer: crate::secrets::Sealer,
    /// One pull per image name at a time.
    pulls: crate::images::registry::SingleFlight,
    /// Registries reached over plain HTTP.
    insecure_registries: Vec<String>,
    /// The sessions' heartbeat datagram keys.
    beats: Arc<beats::Beats>,
    /// The Docker API's TCP listener's TLS, when it is served.
    docker_tls: Option<pki::DockerTlsState>,
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
    /// The manager's clock: milliseconds since it started, kept by [`beats::Beats`],
    /// which stamps every beat with it.
    fn now(&self) -> Millis {
        self.beats.now()
    }

    /// Asks for a reconciliation; a full queue means one is coming anyway.
    fn kick(&self) {
        let _ = self.events.try_send(Event::Kick);
    }

    fn log_transitions(&self, transitions: &[Transition]) {
        if transitions.is_empty() {
            return;
        }
        // Down → replacements start now; Ready → pending tasks may fit.
        self.kick();
        // The shared records, not a store read per node: 5,000 boards can change at once.
        let records = self.store.nodes_shared().unwrap_or_else(|_| Vec::new().into());
        let hostnames: HashMap<&NodeId, &str> =
            records.iter().map(|r| (&r.id, r.description.hostname.as_str())).collect();
        for t in transitions {
            let hostname = hostnames.get(&t.node).copied().unwrap_or_default();
            match t.to {
                NodeStatus::Down => warn!(node = %t.node, %hostname, reason = %t.reason, "node is down"),
                _ => info!(node = %t.node, %hostname, from = %t.from, to = %t.to, "node status changed"),
            }
        }
    }
}

/// The QUIC endpoint, with a stateless-reset key derived from the manager's private server
/// key rather than a random one. A restarted manager then answers packets of connections
/// it no longer knows with resets the agents accept (RFC 9000 §10.3), so they reconnect
/// at their next heartbeat instead of waiting out the idle timeout — even after kill -9.
fn listen_endpoint(
    config: quinn::ServerConfig,
    listen: SocketAddr,
    secret_pem: &str,
    beats: &Arc<beats::Beats>,
) -> std::io::Result<quinn::Endpoint> {
    let derive = |label: &str| ring::digest::digest(&ring::digest::SHA256, format!("{label}\n{secret_pem}").as_bytes());
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derive("shoal stateless reset").as_ref());
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
    // Connection IDs must also validate across restarts, or the new process drops the old
    // connections' packets before it would reset them.
    let cid_key = derive("shoal connection ids");
    let cid_key = u64::from_le_bytes(cid_key.as_ref()[..8].try_into().expect("8 bytes of a SHA-256"));
    endpoint_config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    // Agents must keep QUIC's fixed bit set, so a heartbeat datagram (bit clear) is never
    // taken for a QUIC packet.
    endpoint_config.grease_quic_bit(false);
    let socket = socket::bind(listen)?;
    let runtime = quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime"))?;
    let socket = beats.socket(socket, &*runtime)?;
    quinn::Endpoint::new_with_abstract_socket(endpoint_config, Some(config), socket, runtime)
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
    crate::verify::in_child(&store_path)?;
    crate::init::owner_only(&store_path)?;
    let store = Store::open(&store_path)?;
    let cluster = store.cluster()?;
    // A rotation in progress resumes: both CAs are trusted again.
    let pki = pki::Pki::load(&cluster, store.pki()?)?;
    if let Some(r) = &pki.record.rotation {
        info!(new_ca = %shoal_proto::hex(&r.ca_digest), "a CA rotation is in progress; resuming it");
    }
    let server_config = pki::server_config(&cluster, &pki)?;
    let listen: SocketAddr = match config.listen {
        Some(a) => a,
        None => cluster.listen_addr.parse().context("stored listen address")?,
    };
    let (beats, accepted_beats) = beats::Beats::new();
    let endpoint = listen_endpoint(server_config, listen, &cluster.server_key_pem, &beats)
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
    let tasks = task_table::TaskTable::new(store.tasks()?);
    info!(services = records.len(), tasks = tasks.values().len(), "services loaded");
    let mut services = ServiceState {
        reconciler: Reconciler::default(),
        records,
        tasks,
        names: HashMap::new(),
        networks: Vec::new(),
        keys: shoal_core::netkeys::Keyring::new(config.key_rotation_ms),
        objects: Default::default(),
    };
    services.names = services.records.values().map(|r| (r.service.id.clone(), r.service.spec.name.clone())).collect();
    services.networks = networks::load_or_create_ingress(&store)?;
    let sealer = crate::secrets::Sealer::open_or_create(&paths::manager_dir(data_dir))?;
    services.objects = objects::load(&store, &sealer)?;
    let (events, events_rx) = mpsc::channel(RECONCILE_QUEUE);
    let manager = Arc::new(Manager {
        store,
        services: Mutex::new(services),
        events,
        pki: Mutex::new(pki),
        cluster: Mutex::new(cluster.clone()),
        endpoint: endpoint.clone(),
        pki_changed: tokio::sync::watch::channel(0).0,
        pki_wake: tokio::sync::Notify::new(),
        state: Mutex::new(State {
            members: Membership::default(),
            sessions: HashMap::new(),
            next_serial: 0,
            held: HashMap::new(),
            disk: HashMap::new(),
        }),
        blobs,
        images: tokio::sync::Mutex::new(()),
        anonymous: Arc::default(),
        data_dir: data_dir.to_owned(),
        sealer,
        pulls: Default::default(),
        insecure_registries: config.insecure_registries.clone(),
        beats,
        docker_tls: match config.docker_tls {
            Some(mut tls) => {
                // The address boards reach the manager on is one clients may dial too.
                if let Ok(a) = cluster.advertise_addr.parse::<SocketAddr>() {
                    tls.names.push(a.ip().to_string());
                }
                tls.names.sort();
                tls.names.dedup();
                Some(pki::DockerTlsState { tls, key: rcgen::KeyPair::generate()? })
            }
            None => None,
        },
    });
    manager.apply_docker_tls()?;
    for node in manager.store.nodes()? {
        if node.role == Role::Worker {
            members.track(0, node.id);
        }
    }
    manager.state.lock().expect("state lock").members = members;
    info!(%listen, advertise = %cluster.advertise_addr, cluster = %cluster.cluster_id, "manager running");

    let liveness = tokio::spawn(beats::liveness_loop(manager.clone(), accepted_beats));
    let reconciler = tokio::spawn(reconcile_loop(manager.clone(), events_rx));
    let certificates = tokio::spawn(pki::pki_loop(manager.clone()));
    let accept = async {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(handle_connection(manager.clone(), incoming));
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = shutdown_signal() => info!("shutting down"),
    }
    liveness.abort();
    reconciler.abort();
    certificates.abort();
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
    if !matches!(peer, Ok(Peer::Anonymous)) {
        tls::AUTHENTICATED.apply(&conn);
        return accept_streams(mgr, conn, peer).await;
    }
    // A stranger may hold little (the transport's unauthenticated limits) for a short
    // while, and only so many strangers at once.
    let Some(_slot) = AnonymousSlot::take(&mgr.anonymous) else {
        debug!(%remote, "too many connections without a certificate");
        conn.close(close::BUSY.into(), b"too many connections without a certificate: retry in a few seconds");
        return;
    };
    if tokio::time::timeout(ANONYMOUS_LIFETIME, accept_streams(mgr, conn.clone(), peer)).await.is_err() {
        debug!(%remote, "connection without a certificate lasted too long");
        conn.close(close::BUSY.into(), b"connection without a certificate lasted too long");
    }
}

async fn accept_streams(mgr: Arc<Manager>, conn: quinn::Connection, peer: Result<Peer, ErrorReply>) {
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(handle_stream(mgr.clone(), conn.clone(), peer.clone(), send, recv));
            }
            Err(e) => {
                debug!(remote = %conn.remote_address(), error = %e, "connection ended");
                return;
            }
        }
    }
}

/// One of the [`MAX_ANONYMOUS`] places for connections without a certificate, given
/// back when dropped.
struct AnonymousSlot(Arc<std::sync::atomic::AtomicUsize>);

impl AnonymousSlot {
    fn take(count: &Arc<std::sync::atomic::AtomicUsize>) -> Option<Self> {
        use std::sync::atomic::Ordering;
        count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_ANONYMOUS).then_some(n + 1)).ok()?;
        Some(Self(count.clone()))
    }
}

impl Drop for AnonymousSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
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
    let envelope = match read_envelope(&mut recv, matches!(peer, Ok(Peer::Anonymous))).await {
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
        // Signing and the store's commit block: a fleet joining at once must not hold up
        // the sessions' heartbeats on the runtime's threads meanwhile.
        (Request::Join(join), _) => blocking(|| handle_join(&mgr, join)).unwrap_or_else(Response::Error),
        (Request::OpenSession(open), Peer::Node(id)) => {
            return run_session(mgr, conn, id.clone(), open, send, recv).await;
        }
        (Request::OpenSession(_), _) => Response::Error(ErrorReply::new(
            ErrorKind::Unauthorized,
            "this connection carries no node certificate: join the cluster first with `shoal-agent join --token TOKEN MANAGER`",
        )),
        (Request::Control(ControlRequest::Backup), Peer::Admin) => return send_backup(&mgr, send).await,
        (Request::Control(ControlRequest::ImagePull(req)), Peer::Admin) => {
            return pull::handle_pull(&mgr, req, send).await
        }
        (Request::Control(ControlRequest::NodeUpgrade(req)), Peer::Admin) => {
            return upgrade::handle_upgrade(&mgr, req, send, recv).await
        }
        (Request::Exec(req), Peer::Admin) => return exec::handle_exec(&mgr, req, send, recv).await,
        (Request::Exec(_), _) => Response::Error(ErrorReply::new(
            ErrorKind::Unauthorized,
            "exec needs a manager credential: run it where `shoal manager init` ran, or with its admin.json",
        )),
        (Request::Logs(req), Peer::Admin) => return logs::handle_logs(&mgr, req, send, recv).await,
        (Request::Logs(_), _) => Response::Error(ErrorReply::new(
            ErrorKind::Unauthorized,
            "service logs needs a manager credential: run it where `shoal manager init` ran, or with its admin.json",
        )),
        (Request::LogsTask(_), _) => Response::Error(ErrorReply::new(
            ErrorKind::InvalidRequest,
            "log requests go from the manager to the nodes, not the other way",
        )),
        (Request::AgentUpgrade(_), _) => Response::Error(ErrorReply::new(
            ErrorKind::InvalidRequest,
            "agent builds go from the manager to the nodes: use `shoal node upgrade` (a control request)",
        )),
        (Request::ExecTask(_), _) => Response::Error(ErrorReply::new(
            ErrorKind::InvalidRequest,
            "exec requests go from the manager to the nodes, not the other way",
        )),
        (Request::Volume(_), _) => Response::Error(ErrorReply::new(
            ErrorKind::InvalidRequest,
            "volume requests go from the manager to the nodes: use `shoal volume …` (a control request)",
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

/// Reads and checks the first frame: length-limited, version first, then the body. A
/// stream must bring its request promptly; a stranger's may also be only so long.
async fn read_envelope(recv: &mut quinn::RecvStream, anonymous: bool) -> Result<Option<Envelope>, ErrorReply> {
    let (limit, time) =
        if anonymous { (ANONYMOUS_FRAME_LIMIT, ANONYMOUS_REQUEST_TIME) } else { (frame::MAX_FRAME_LEN, REQUEST_TIME) };
    let read = tokio::time::timeout(time, framed::recv_body_within(recv, limit, time)).await;
    let body = match read.unwrap_or(Err(LinkError::Timeout(time))) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(None),
        Err(LinkError::Timeout(t)) => {
            let _ = recv.stop(0u32.into());
            return Err(ErrorReply::new(
                ErrorKind::InvalidRequest,
                &format!("no complete request within {}s: send the request at once", t.as_secs()),
            ));
        }
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

/// Runs `f`, which may block (a store commit, waiting for the services lock while a pass
/// holds it), off the runtime's worker threads: the runtime has two, and the endpoint's
/// driver that reads every board's heartbeats runs on them. With 5,000 boards starting
/// sessions at once, each waiting on the store's one writer or on a pass, both workers
/// were stuck and boards were called Down for heartbeats the manager had not read.
/// Outside a multi-threaded runtime (unit tests) it simply calls `f`.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Runs `f` with `mutex` held: at once when it is free, else waiting for it through
/// [`blocking`]. For work that takes a lock many times a second and never blocks
/// otherwise (the heartbeats, the liveness tick): handing the worker's place to another
/// thread each time, as `blocking` does, cost more than the work itself (at 5,000
/// boards beating every 1.5 s: ~100 hand-offs a second).
fn locked<S, T>(mutex: &Mutex<S>, f: impl FnOnce(&mut S) -> T) -> T {
    match mutex.try_lock() {
        Ok(mut guard) => f(&mut guard),
        Err(std::sync::TryLockError::WouldBlock) => blocking(|| f(&mut mutex.lock().expect("lock"))),
        Err(std::sync::TryLockError::Poisoned(e)) => panic!("a lock holder panicked: {e}"),
    }
}

fn internal(e: impl std::fmt::Display) -> ErrorReply {
    warn!(error = %e, "request failed");
    ErrorReply::new(ErrorKind::Internal, &format!("manager error: {e}"))
}

/// Removes a file when dropped: the upload, whatever happens to the import.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{ServiceSpec, TaskState, TaskStatus};

    pub(super) fn task(n: u8, service: u8, node: Option<u8>) -> Task {
        let spec = ServiceSpec::new(shoal_proto::text("web").unwrap(), shoal_proto::text("demo/app:1.0").unwrap());
        Task {
            id: TaskId::from_random([n; 16]),
            service_id: ServiceId::from_random([service; 16]),
            slot: u32::from(n),
            node_id: node.map(|b| NodeId::from_random([b; 16])),
            spec: spec.task_spec(),
            spec_version: 1,
            desired_state: TaskState::Running,
            status: TaskStatus::new(TaskState::Running, 0, ""),
            created_at_ms: 0,
            networks: Default::default(),
        }
    }

    pub(super) fn state(tasks: &[Task]) -> ServiceState {
        let svc = ServiceState {
            reconciler: Reconciler::default(),
            records: Default::default(),
            tasks: task_table::TaskTable::new(tasks.iter().cloned()),
            names: HashMap::from([(ServiceId::from_random([1; 16]), shoal_proto::text("web").unwrap())]),
            networks: Vec::new(),
            keys: shoal_core::netkeys::Keyring::new(60_000),
            objects: Default::default(),
        };
        svc
    }

    /// A session waiting for the services lock (held by a pass) must not stop the
    /// runtime's other tasks: here the only worker thread, whose ticks stand for the
    /// endpoint reading heartbeats.
    #[test]
    fn waiting_on_a_held_lock_in_blocking_leaves_the_runtime_running() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let lock = Arc::new(Mutex::new(()));
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let holder = {
            let lock = lock.clone();
            std::thread::spawn(move || {
                let _guard = lock.lock().unwrap();
                held_tx.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(600));
            })
        };
        held_rx.recv().unwrap();
        let ticks = rt.block_on(async move {
            let ticks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let ticker = {
                let ticks = ticks.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                })
            };
            // Let the ticker start on the worker, then wait for the lock on it too.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let before = ticks.load(std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(async move { blocking(|| drop(lock.lock().unwrap())) }).await.unwrap();
            ticker.abort();
            ticks.load(std::sync::atomic::Ordering::Relaxed) - before
        });
        holder.join().unwrap();
        assert!(ticks >= 10, "the runtime stood still while a task waited for the lock: {ticks} ticks in ~550 ms");
    }

    #[test]
    fn a_session_reads_the_same_full_set_from_its_boards_tasks_as_from_all_of_them() {
        let all = [task(1, 1, Some(1)), task(2, 1, Some(2)), task(3, 2, Some(1)), task(4, 1, None)];
        let svc = state(&all);
        let node = NodeId::from_random([1; 16]);
        let mut mine: Vec<&TaskId> = svc.tasks_on(&node).map(|t| &t.id).collect();
        mine.sort();
        let mut expected = [&all[0].id, &all[2].id];
        expected.sort();
        assert_eq!(mine, expected);
        // Service 2 has no record any more: its short ID stands in, as in a walk of all.
        let names = svc.names_of(svc.tasks_on(&node));
        assert_eq!(names[&ServiceId::from_random([1; 16])].as_str(), "web");
        assert_eq!(names[&ServiceId::from_random([2; 16])].as_str(), ServiceId::from_random([2; 16]).short());
        let walked_names = svc.names_of(svc.tasks.values());
        assert_eq!(
            dispatcher::full_set(&node, svc.tasks_on(&node), &names, &svc.networks),
            dispatcher::full_set(&node, svc.tasks.values(), &walked_names, &svc.networks)
        );
        // After a pass replaces the table, the index follows it.
        let mut svc = svc;
        svc.tasks = task_table::TaskTable::new([all[1].clone()]);
        assert_eq!(svc.tasks_on(&node).count(), 0);
        assert_eq!(svc.tasks_on(&NodeId::from_random([2; 16])).count(), 1);
    }
}
