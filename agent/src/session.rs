//! The agent's link to the manager: joining with a token, then a session that sends
//! heartbeats and reconnects with back-off whenever the manager is unreachable, for as
//! long as the agent runs. Only a permanent refusal (node removed, wrong version) ends it.
//! A refusal because another board holds this node's session (a copied identity) stops
//! this board's tasks and retries every 30 s, saying which board to re-join.
//!
//! The session also keeps the board's images in line with the manager's list: a worker
//! task fetches what is missing over the session's connection, collects what is no
//! longer wanted (except images the supervisor's containers use) and reports what the
//! node holds, while heartbeats keep flowing.
//!
//! Tasks are the [`Supervisor`]'s: it lives outside the session loop, so containers keep
//! running across reconnects. The session hands it every `Assignments` message and
//! forwards its status reports; each new session starts with the current status of every
//! task, since reports made while the manager was unreachable were kept, not sent.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use shoal_link::files::cert_pem;
use shoal_link::{framed, ClientTls, LinkError, Trust};
use shoal_proto::images::MAX_IMAGES;
use shoal_proto::{
    frame, AgentMessage, BoundedVec, Envelope, ErrorKind, ErrorReply, JoinRequest, JoinToken, ManagerMessage,
    NodeDescription, Request, Response, SessionOpen, WantedImage,
};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::certs::SharedIdentity;
use crate::core::backoff::Backoff;
use crate::identity::{self, NodeIdentity};
use crate::images::{sync_image, ImageStore};
use crate::supervisor::Supervisor;
use crate::AgentError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A manager silent this long is gone; the agent reconnects. Long, because an idle session
/// carries only a keep-alive every quarter of it (25 s) on QUIC, its heartbeats being
/// datagrams beside it; a restarted manager is noticed at the next heartbeat, which it
/// answers "unknown session" (see `docs/failure-detection.md`).
const IDLE_TIMEOUT: Duration = Duration::from_secs(100);
/// The fastest heartbeat period a manager may ask for.
const MIN_PERIOD: Duration = Duration::from_millis(100);
/// How often a board refused because another one carries its identity asks again.
const DUPLICATE_RETRY: Duration = Duration::from_secs(30);

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
    force: bool,
) -> Result<NodeIdentity, AgentError> {
    // An unreadable identity is replaced only when told to.
    match NodeIdentity::load(data_dir) {
        Ok(Some(existing)) => identity::may_replace(data_dir, &existing, force)?,
        Ok(None) => {}
        Err(_) if force => {}
        Err(e) => return Err(e),
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
    identity::clear_removed(data_dir);
    Ok(saved)
}

/// How a session attempt ended.
enum SessionEnd {
    /// The session never opened.
    Failed(AgentError),
    /// It ran, then the connection was lost.
    Lost(String),
}

/// Opens the node's image store (`<data-dir>/agent/images`). One per agent: the
/// session and the supervisor share it.
pub fn open_images(data_dir: &Path) -> Result<Arc<ImageStore>, AgentError> {
    let dir = identity::agent_dir(data_dir).join("images");
    let store = ImageStore::open(&dir).map_err(|e| AgentError::Io(std::io::Error::other(e.to_string())))?;
    Ok(Arc::new(store))
}

/// Keeps a session with the manager until `shutdown` resolves or the manager refuses
/// this node for good. `store` is the node's image store (see [`open_images`]) and
/// `supervisor` runs its tasks.
pub async fn run(
    data_dir: &Path,
    identity: &NodeIdentity,
    description: NodeDescription,
    store: Arc<ImageStore>,
    supervisor: &Supervisor,
    networks: &Arc<crate::board_net::BoardNet>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let embedding = Embedding { endpoint: None, networks: Some(networks.clone()) };
    run_embedded(data_dir, identity, description, store, supervisor, embedding, shutdown).await
}

/// What a program that runs many boards in one process (the fleet simulator,
/// `bench/src/fleet.rs`) changes in [`run_embedded`]; the agent itself uses [`run`].
#[derive(Default)]
pub struct Embedding {
    /// The client endpoint to open sessions on: many boards may share one UDP socket,
    /// each with its own connection and certificate. `None`: the session makes its own.
    pub endpoint: Option<quinn::Endpoint>,
    /// The board's overlay networks; `None` leaves the kernel alone (boards without
    /// containers of their own, which get no overlays).
    pub networks: Option<Arc<crate::board_net::BoardNet>>,
}

/// [`run`], with the endpoint and the board's networks as `embedding` says.
pub async fn run_embedded(
    data_dir: &Path,
    identity: &NodeIdentity,
    description: NodeDescription,
    store: Arc<ImageStore>,
    supervisor: &Supervisor,
    embedding: Embedding,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let networks = embedding.networks.as_ref();
    // Renewals and trust changes replace it; each connection is made with the newest.
    let shared: SharedIdentity = Arc::new(std::sync::Mutex::new(identity.clone()));
    let exec_paths = crate::runtime::LibcontainerRuntime::paths(data_dir);
    let images = Images::new(store, supervisor);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut endpoint: Option<(SocketAddr, quinn::Endpoint)> = None;
    let shared_endpoint = embedding.endpoint;
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
        if let Some(shared) = &shared_endpoint {
            endpoint = Some((addr, shared.clone()));
        } else if endpoint.as_ref().is_none_or(|(a, _)| a.is_ipv4() != addr.is_ipv4()) {
            endpoint = Some((
                addr,
                shoal_link::client_endpoint(addr)
                    .map_err(|e| AgentError::Unreachable { addr: addr.to_string(), detail: e.to_string() })?,
            ));
        }
        let ep = &endpoint.as_ref().expect("endpoint just set").1;
        let mut conn_slot = None;
        let tls = shared.lock().expect("identity lock").tls(data_dir, IDLE_TIMEOUT)?;
        let link = ManagerLink { endpoint: ep, addr, tls: &tls, identity: &shared, data_dir };
        let end = tokio::select! {
            end = session(link, &description, &images, Board { supervisor, exec_paths: &exec_paths, networks }, &mut conn_slot) => end,
            _ = &mut shutdown => {
                if let Some(conn) = conn_slot {
                    quinn::Connection::close(&conn, 0u32.into(), b"agent shutting down");
                }
                // A shared endpoint's other connections are not this board's to wait for.
                if shared_endpoint.is_none() {
                    let _ = tokio::time::timeout(Duration::from_millis(500), ep.wait_idle()).await;
                }
                info!("agent stopped");
                return Ok(());
            }
        };
        match end {
            SessionEnd::Failed(AgentError::Refused(e)) if e.kind == ErrorKind::NodeRemoved => {
                if let Err(io) = identity::mark_removed(data_dir, &identity.node_id) {
                    warn!(error = %io, "cannot record that this node was removed");
                }
                return Err(AgentError::Removed {
                    node_id: identity.node_id.clone(),
                    dir: identity::agent_dir(data_dir),
                });
            }
            SessionEnd::Failed(AgentError::Refused(e)) if e.kind.is_permanent() => return Err(AgentError::Refused(e)),
            SessionEnd::Failed(e @ AgentError::CaRotated { .. }) => {
                // Said once per attempt, and attempts are slow: nothing changes until the
                // operator re-joins the board (or the right manager answers again).
                error!("{e}");
                tokio::select! {
                    _ = tokio::time::sleep(DUPLICATE_RETRY) => continue,
                    _ = &mut shutdown => return Ok(()),
                }
            }
            SessionEnd::Failed(AgentError::Refused(e)) if e.kind == ErrorKind::Conflict => {
                // Another board carries this identity and holds the session: this copy
                // must not run the node's tasks too. It keeps asking, slowly, in case the
                // other board is the one that goes away for good.
                error!("{}", e.message);
                supervisor.assign(true, false, Vec::new(), Vec::new()).await;
                tokio::select! {
                    _ = tokio::time::sleep(DUPLICATE_RETRY) => continue,
                    _ = &mut shutdown => return Ok(()),
                }
            }
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
    f64::from(shoal_link::random::<1>()[0]) / 256.0
}

/// This board's long-lived parts a session feeds.
struct Board<'a> {
    supervisor: &'a Supervisor,
    exec_paths: &'a crate::exec::Paths,
    networks: Option<&'a Arc<crate::board_net::BoardNet>>,
}

/// Where the manager is and how to reach it.
struct ManagerLink<'a> {
    endpoint: &'a quinn::Endpoint,
    addr: SocketAddr,
    tls: &'a ClientTls,
    /// The identity `tls` was made from, which renewals replace.
    identity: &'a SharedIdentity,
    data_dir: &'a Path,
}

/// One session: connect, open, then heartbeat until the connection fails.
async fn session(
    link: ManagerLink<'_>,
    description: &NodeDescription,
    images: &Images,
    board: Board<'_>,
    conn_slot: &mut Option<quinn::Connection>,
) -> SessionEnd {
    let ManagerLink { endpoint, addr, tls, identity, data_dir } = link;
    let Board { supervisor, exec_paths, networks } = board;
    let unreachable =
        |e: LinkError| SessionEnd::Failed(AgentError::Unreachable { addr: addr.to_string(), detail: e.to_string() });
    let conn = match shoal_link::connect(endpoint, addr, tls, CONNECT_TIMEOUT).await {
        Ok(c) => c,
        Err(_) if tls.ca_mismatch() => {
            let node_id = identity.lock().expect("identity lock").node_id.clone();
            return SessionEnd::Failed(AgentError::CaRotated { addr: addr.to_string(), node_id });
        }
        Err(e) => return unreachable(e),
    };
    *conn_slot = Some(conn.clone());
    let open = Envelope::new(Request::OpenSession(SessionOpen { node: description.clone() }));
    let (mut send, mut recv, response) = match shoal_link::request(&conn, &open, REQUEST_TIMEOUT).await {
        Ok(x) => x,
        Err(e) => return unreachable(e),
    };
    let (period, beating) = match response {
        Response::SessionAccepted { node_id, heartbeat_period_ms } => {
            info!(node = %node_id, manager = %addr, "session established");
            // Beats first: what follows (network set-up, the first reports) may take a
            // while on a slow board, and the manager counts the silence from now.
            let period = Duration::from_millis(u64::from(heartbeat_period_ms)).max(MIN_PERIOD);
            let beating = Beating::start(&conn, addr, period, supervisor.disk().clone());
            crate::upgrade::session_opened();
            // Overlay packets leave from the address this board reaches the manager from.
            match (networks, underlay_towards(addr)) {
                (None, _) => {}
                (Some(networks), Some(ip)) => networks.connected(ip).await,
                (Some(_), None) => {
                    warn!(manager = %addr, "no IPv4 address towards the manager: overlay networks can't be used")
                }
            }
            (period, beating)
        }
        Response::Error(e) => return SessionEnd::Failed(AgentError::Refused(e)),
        other => {
            return SessionEnd::Failed(AgentError::Refused(ErrorReply::new(
                ErrorKind::InvalidRequest,
                &format!("unexpected answer: {other:?}"),
            )))
        }
    };
    // Heartbeats and every other agent message share the session's send stream: other
    // tasks queue messages here and the heartbeat loop writes them between beats.
    let (outbox, mut outgoing) = mpsc::channel::<AgentMessage>(16);
    // Tell the manager at once what this node holds, before any image list arrives.
    if let Err(e) = framed::send(&mut send, &images.held_message()).await {
        return SessionEnd::Lost(e.to_string());
    }
    // And whether its disk has room, then every change of that.
    let mut disk = supervisor.disk().subscribe();
    let pressure = disk.borrow_and_update().clone();
    if let Err(e) = framed::send(&mut send, &disk_message(pressure)).await {
        return SessionEnd::Lost(e.to_string());
    }
    let disk_reports = {
        let outbox = outbox.clone();
        tokio::spawn(async move {
            while disk.changed().await.is_ok() {
                let pressure = disk.borrow_and_update().clone();
                if outbox.send(disk_message(pressure)).await.is_err() {
                    return;
                }
            }
        })
    };
    // Only the newest list matters: a list that arrives mid-fetch supersedes the old one.
    let (wanted_tx, wanted_rx) = watch::channel(None);
    // Not aborted when the session ends: an unpack may be running on a blocking thread.
    // The worker stops by itself once its connection and this sender are gone, and
    // `Images::one_pass` keeps it from overlapping the next session's worker.
    drop(tokio::spawn(image_worker(conn.clone(), images.clone(), wanted_rx, outbox.clone())));
    // The manager's clock, trust and certificates; renewals go out through the outbox.
    let (credentials_tx, credentials_rx) = mpsc::channel(4);
    let renewals =
        tokio::spawn(crate::certs::renew(data_dir.to_owned(), identity.clone(), credentials_rx, outbox.clone()));
    // Task reports: first the current status of every task, then each change. A batch
    // taken when the session dies is not lost: the next session sends every status again.
    supervisor.secrets().new_session();
    supervisor.new_session().await;
    let reports = {
        let (supervisor, outbox) = (supervisor.clone(), outbox.clone());
        tokio::spawn(async move {
            loop {
                let batch = supervisor.next_reports().await;
                if outbox.send(AgentMessage::TaskStatuses(batch)).await.is_err() {
                    return;
                }
            }
        })
    };
    let beats = async {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seq = 0u64;
        loop {
            let message = tokio::select! {
                _ = tick.tick(), if beating.is_none() => {
                    seq += 1;
                    AgentMessage::Heartbeat { seq: seq - 1 }
                }
                Some(m) = outgoing.recv() => m,
            };
            if let Err(e) = framed::send(&mut send, &message).await {
                return e.to_string();
            }
        }
    };
    let inbox = async {
        loop {
            match framed::recv::<ManagerMessage>(&mut recv, frame::MAX_FRAME_LEN).await {
                Ok(Some(ManagerMessage::Closing(e))) => return e.message.to_string(),
                Ok(Some(ManagerMessage::HeartbeatPeriod { period_ms })) => {
                    let period = Duration::from_millis(period_ms.into()).max(MIN_PERIOD);
                    let Some(b) = &beating else { continue };
                    b.period.send_if_modified(|p| {
                        let changed = *p != period;
                        if changed {
                            debug!(period_ms, "the manager changed the heartbeat period");
                        }
                        *p = period;
                        changed
                    });
                }
                Ok(Some(ManagerMessage::Images(list))) => {
                    debug!(images = list.len(), "image list from the manager");
                    wanted_tx.send_replace(Some(list.into_vec()));
                }
                Ok(Some(ManagerMessage::Assignments { full, more, upsert, remove })) => {
                    debug!(full, more, upsert = upsert.len(), remove = remove.len(), "assignments from the manager");
                    // Overlays first, so they exist when a container of them is prepared.
                    if let Some(networks) = networks {
                        networks.assignments(full, more, &upsert, &remove).await;
                    }
                    supervisor.assign(full, more, upsert.into_vec(), remove.into_vec()).await;
                }
                Ok(Some(ManagerMessage::Secrets(set))) => {
                    // Counts only: the bytes never reach a log.
                    debug!(more = set.more, objects = set.items.len(), "secrets and configs from the manager");
                    supervisor.secrets().apply(set);
                }
                Ok(Some(ManagerMessage::Networks(view))) => {
                    debug!(more = view.more, networks = view.networks.len(), "network view from the manager");
                    if let Some(networks) = networks {
                        networks.view(view).await;
                    }
                }
                Ok(Some(ManagerMessage::Credentials(c))) => {
                    debug!(
                        renew_now = c.renew_now,
                        certificate = c.certificate.is_some(),
                        "credentials from the manager"
                    );
                    if credentials_tx.send(c).await.is_err() {
                        return "the certificate task ended".to_owned();
                    }
                }
                Ok(None) => return "the manager closed the session".to_owned(),
                Err(e) => return e.to_string(),
            }
        }
    };
    // `shoal exec`: streams the manager opens on this connection.
    let execs = tokio::spawn(crate::exec::serve(conn.clone(), exec_paths.clone()));
    let beats_ended = async {
        match &beating {
            Some(b) => b.ended().await,
            None => std::future::pending().await,
        }
    };
    let why = tokio::select! { w = beats => w, w = inbox => w, w = beats_ended => w };
    execs.abort();
    reports.abort();
    renewals.abort();
    disk_reports.abort();
    drop(outbox);
    SessionEnd::Lost(why)
}

/// The session's heartbeat datagrams, sent by a task of their own on the heartbeat
/// thread (stopped on drop).
struct Beating {
    /// Its period, which the manager may change.
    period: watch::Sender<Duration>,
    /// Set when it ended, with why.
    end: tokio::sync::Mutex<Option<tokio::task::JoinHandle<String>>>,
}

impl Beating {
    /// Starts beating; `None` (heartbeats then go on the session stream) if the TLS
    /// session can't give keys, which both ends being rustls never shows.
    /// The disk is sampled on each beat (see [`crate::disk::Watch::sample`]): one wakeup
    /// for both.
    fn start(
        conn: &quinn::Connection,
        manager: SocketAddr,
        period: Duration,
        disk: Arc<crate::disk::Watch>,
    ) -> Option<Self> {
        let keys = match shoal_link::beat::BeatKeys::of(conn) {
            Ok(k) => k,
            Err(e) => {
                warn!(error = %e, "heartbeats go on the session stream");
                return None;
            }
        };
        let (tx, rx) = watch::channel(period);
        // On a thread of their own: see [`crate::beat_thread`].
        let task = crate::beat_thread::spawn(async move { beat_datagrams(manager, &keys, rx, &disk).await });
        Some(Self { period: tx, end: tokio::sync::Mutex::new(Some(task)) })
    }

    /// Waits until the task ends (the manager forgot the session), with why.
    async fn ended(&self) -> String {
        let mut end = self.end.lock().await;
        match end.as_mut() {
            Some(task) => {
                let why = task.await.unwrap_or_else(|e| format!("the heartbeat task failed: {e}"));
                *end = None;
                why
            }
            None => std::future::pending().await,
        }
    }
}

impl Drop for Beating {
    fn drop(&mut self) {
        if let Some(task) = self.end.get_mut().as_ref() {
            task.abort();
        }
    }
}

/// Sends a heartbeat datagram to the manager every period (the newest `period` says)
/// from a socket of its own, until the manager answers that it does not know the
/// session (it restarted): then returns why, and the session reconnects at once. The
/// beats are the idle board's only clock (a kernel timer, see [`crate::ticker`]); the
/// disk is sampled in the same wakeup.
async fn beat_datagrams(
    manager: SocketAddr,
    keys: &shoal_link::beat::BeatKeys,
    mut period: watch::Receiver<Duration>,
    disk: &crate::disk::Watch,
) -> String {
    let socket = match tokio::net::UdpSocket::bind(shoal_link::any_local_for(manager)).await {
        Ok(s) => s,
        Err(e) => return format!("cannot open the heartbeat socket: {e}"),
    };
    if let Err(e) = socket.connect(manager).await {
        return format!("cannot reach the manager for heartbeats: {e}");
    }
    // Late (a suspended board): one beat now, not a burst.
    let mut ticker = crate::ticker::Ticker::new(*period.borrow_and_update());
    let mut seq: u32 = 0;
    let mut answer = [0u8; 64];
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                // A send error (no route for a moment) is a lost beat, as on the wire.
                if let Err(e) = socket.send(&keys.seal(seq)).await {
                    debug!(error = %e, "heartbeat not sent");
                }
                seq = seq.wrapping_add(1);
                disk.sample();
            }
            Ok(()) = period.changed() => {
                let new = *period.borrow_and_update();
                // A faster period applies at once; the beat it asked for is due now.
                ticker.set(new, new < ticker.period());
            }
            Ok(n) = socket.recv(&mut answer) => {
                // Only an answer to one of the last few beats counts: the session keys
                // and the sequence number are the proof it is the manager's.
                let recent = (1..=4).any(|back| keys.is_unknown(&answer[..n], seq.wrapping_sub(back)));
                if recent {
                    return "the manager does not know this session (it restarted)".to_owned();
                }
            }
        }
    }
}

fn disk_message(pressure: Option<String>) -> AgentMessage {
    AgentMessage::DiskPressure(pressure.as_deref().map(shoal_proto::Message::lossy))
}

/// Top digests of the images running containers use, which garbage collection must
/// keep even when the manager no longer lists them.
type ImagesInUse = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// What every session shares about images.
#[derive(Clone)]
struct Images {
    store: Arc<ImageStore>,
    /// One sync-and-collect pass at a time, across sessions.
    one_pass: Arc<tokio::sync::Mutex<()>>,
    /// Asked before each collection.
    in_use: ImagesInUse,
    /// Told when a fetch fails for lack of space.
    disk: Arc<crate::disk::Watch>,
}

impl Images {
    fn new(store: Arc<ImageStore>, supervisor: &Supervisor) -> Self {
        let supervisor = supervisor.clone();
        let disk = supervisor.disk().clone();
        Self { store, one_pass: Arc::default(), in_use: Arc::new(move || supervisor.images_in_use()), disk }
    }

    fn held_message(&self) -> AgentMessage {
        let mut held = BoundedVec::<_, MAX_IMAGES>::new();
        for digest in self.store.held().iter().take(MAX_IMAGES) {
            if let Ok(d) = shoal_proto::text(digest) {
                let _ = held.push(d);
            }
        }
        AgentMessage::ImagesHeld(held)
    }
}

/// How a pass over the wanted list ended.
enum Pass {
    /// Every image was tried; some failed for reasons that may pass.
    Done { retry: bool },
    /// A newer list arrived: start over with it.
    Superseded,
}

/// Keeps the store in line with the newest list: fetch what is missing, collect what
/// is not wanted, report what is held. Runs until the session's list sender is gone.
async fn image_worker(
    conn: quinn::Connection,
    images: Images,
    mut wanted: watch::Receiver<Option<Vec<WantedImage>>>,
    outbox: mpsc::Sender<AgentMessage>,
) {
    let mut backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(60));
    let mut retry: Option<Duration> = None;
    loop {
        let next = async {
            match retry {
                Some(delay) => tokio::select! {
                    changed = wanted.changed() => changed.is_ok(),
                    _ = tokio::time::sleep(delay) => true,
                },
                None => wanted.changed().await.is_ok(),
            }
        };
        if !next.await {
            return;
        }
        let Some(list) = wanted.borrow_and_update().clone() else { continue };
        let _pass = images.one_pass.lock().await;
        if conn.close_reason().is_some() {
            return;
        }
        match sync_all(&conn, &images.store, &list, &wanted, &images.disk).await {
            Pass::Superseded => {
                retry = None;
                continue;
            }
            Pass::Done { retry: true } => retry = Some(backoff.next(jitter())),
            Pass::Done { retry: false } => {
                retry = None;
                backoff.reset();
            }
        }
        let keep: Vec<String> = list.iter().map(|w| w.digest.to_string()).collect();
        let in_use = (images.in_use)();
        let store = images.store.clone();
        // Deleting layers is long, blocking work.
        match tokio::task::spawn_blocking(move || store.gc(&keep, &in_use)).await {
            Ok(Ok(report)) if !report.images.is_empty() => {
                info!(images = report.images.len(), layers = report.layers, "removed images no longer wanted")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot remove unwanted images"),
            Err(e) => warn!(error = %e, "image collection failed"),
        }
        if outbox.send(images.held_message()).await.is_err() {
            return;
        }
    }
}

/// Fetches, one at a time, every image of `list` not held under its reference.
async fn sync_all(
    conn: &quinn::Connection,
    store: &Arc<ImageStore>,
    list: &[WantedImage],
    wanted: &watch::Receiver<Option<Vec<WantedImage>>>,
    disk: &crate::disk::Watch,
) -> Pass {
    let mut retry = false;
    for image in list {
        if wanted.has_changed().unwrap_or(true) {
            return Pass::Superseded;
        }
        if store.image(&image.reference).is_some_and(|r| r.digest == image.digest.as_str()) {
            continue;
        }
        if let Err(e) = sync_image(conn, store, image).await {
            warn!(image = %image.reference, digest = %image.digest, error = %e, "cannot fetch image");
            // A full disk is temporary: space may come back (the pressure report says so).
            retry |= disk.noticed(&e) || e.is_temporary();
        }
    }
    Pass::Done { retry }
}

/// The local IPv4 address the kernel picks to reach `manager` (a connected UDP socket
/// sends nothing): where this board's VXLAN packets leave from.
fn underlay_towards(manager: SocketAddr) -> Option<std::net::Ipv4Addr> {
    let socket = std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect(manager).ok()?;
    match socket.local_addr().ok()?.ip() {
        std::net::IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}
