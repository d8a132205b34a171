//! The messages. Every connection opens bidirectional streams whose first frame is an
//! [`Envelope`] carrying the protocol version and a [`Request`]; the manager answers
//! with a [`Response`]. A session stream then carries [`AgentMessage`]s one way and
//! [`ManagerMessage`]s the other until either side closes it.

use serde::{Deserialize, Serialize};

use crate::images::{FetchBlob, ImageRef, ImageView, WantedImage, MAX_IMAGES};
use crate::{BoundedString, BoundedVec, Bytes, Digest, NodeId, Text, PROTOCOL_VERSION};

/// Largest DER certificate or CSR accepted.
pub const MAX_DER: usize = 8 * 1024;
/// Most labels on one node.
pub const MAX_LABELS: usize = 64;
/// At most this many missing kernel features in a node's description.
pub const MAX_MISSING_FEATURES: usize = 8;
/// Most nodes in one listing: beyond Kubernetes' 5,000-node limit per cluster, the size
/// issue 16 runs the fleet simulator at (4,096 refused `node ls` at 5,000 boards).
pub const MAX_NODES: usize = 8192;

/// A hostname, as the kernel bounds it.
pub type Hostname = Text<64>;
/// A label key.
pub type LabelKey = Text<128>;
/// A label value.
pub type LabelValue = Text<256>;
/// Free text for people: error and status messages.
pub type Message = BoundedString<512>;

/// The first frame of every stream: who speaks which version, and what it asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Must come first: a peer decodes it alone to answer a version mismatch even when
    /// the rest of the frame is in a schema it does not know.
    pub version: u16,
    /// What the peer asks for.
    pub request: Request,
}

impl Envelope {
    /// Wraps a request with this build's protocol version.
    pub fn new(request: Request) -> Self {
        Self { version: PROTOCOL_VERSION, request }
    }
}

/// What a stream is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A board with no certificate asks to join with a token and a CSR.
    Join(JoinRequest),
    /// A joined agent (client certificate) opens its long-lived session.
    OpenSession(SessionOpen),
    /// An administrator (admin certificate) asks the manager to do something.
    Control(ControlRequest),
    /// Liveness probe that needs no credentials; answered with [`Response::Pong`].
    Ping,
    /// A joined agent asks for a blob; answered with [`Response::Blob`] and the raw bytes.
    FetchBlob(FetchBlob),
    /// `shoal exec`, from the CLI: see [`crate::exec`].
    Exec(crate::exec::ExecRequest),
    /// From the manager to a board, over the board's session connection: run a command
    /// in one of its containers.
    ExecTask(crate::exec::ExecStart),
    /// From the manager to a board, over the board's session connection: list or
    /// remove its named volumes; answered with [`Response::Volumes`].
    Volume(crate::volumes::VolumeRequest),
    /// `shoal service logs`, from the CLI: see [`crate::logs`].
    Logs(crate::logs::LogsRequest),
    /// From the manager to a board, over the board's session connection: stream the
    /// log of one of its containers.
    LogsTask(crate::logs::LogsStart),
    /// From the manager to a board, over the board's session connection: a new agent
    /// binary follows; see [`crate::upgrade`].
    AgentUpgrade(crate::upgrade::AgentUpgrade),
}

/// Join with a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The secret part is checked by the manager; the CA digest was already checked by
    /// the agent against the manager's certificate during the handshake.
    pub token: Text<128>,
    /// PKCS#10 request for the node certificate; the key never leaves the board.
    pub csr: Bytes<MAX_DER>,
    /// What the board says about itself.
    pub node: NodeDescription,
}

/// A board's description of itself, sent at join and with every session.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeDescription {
    /// Hostname shown in `node ls`.
    pub hostname: Hostname,
    /// CPU architecture, as Rust names it (`x86_64`, `aarch64`, `arm`).
    pub arch: Text<16>,
    /// Operating system (`linux`).
    pub os: Text<16>,
    /// Address other nodes reach this one on, when set with `--advertise-addr`.
    pub advertise_addr: Option<Text<64>>,
    /// Labels the board was started with (`--label KEY=VALUE`).
    pub labels: BoundedVec<Label, MAX_LABELS>,
    /// What the board has to offer.
    pub resources: Resources,
    /// Version of the agent binary.
    pub agent_version: Text<32>,
    /// Kernel features the board lacks, each saying what does not work without it
    /// (`vxlan: no overlay networks (CONFIG_VXLAN)`); empty when it has them all.
    #[serde(default)]
    pub missing_features: BoundedVec<Text<128>, MAX_MISSING_FEATURES>,
    /// The devices the board has of those boards offer to containers (`/dev/i2c-1`,
    /// `/dev/ttyUSB0`, ...), for `--constraint node.devices==PATH`. (Defaulted.)
    #[serde(default)]
    pub devices: BoundedVec<Text<64>, MAX_NODE_DEVICES>,
}

/// Most devices a node reports.
pub const MAX_NODE_DEVICES: usize = 64;

/// A `KEY=VALUE` label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Label {
    /// Key.
    pub key: LabelKey,
    /// Value, possibly empty.
    pub value: LabelValue,
}

/// Capacity a node reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Resources {
    /// Logical CPUs.
    pub cpus: u16,
    /// Memory in bytes.
    pub memory_bytes: u64,
}

/// Opening a session: the node's identity comes from its certificate, not from here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOpen {
    /// The board's current description (hostname, labels, resources may change).
    pub node: NodeDescription,
}

/// Messages an agent sends on its session stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentMessage {
    /// "I am alive." Sent every heartbeat period.
    Heartbeat {
        /// Increases by one each beat, for diagnosing gaps.
        seq: u64,
    },
    /// The images this node holds complete (top-level digests), sent after each change.
    ImagesHeld(BoundedVec<Digest, MAX_IMAGES>),
    /// Changes of its tasks' observed status.
    TaskStatuses(BoundedVec<crate::dispatch::TaskReport, { crate::dispatch::MAX_REPORTS }>),
    /// The board's disk holding its data dir is short of space (`Some`, saying what is
    /// short and where) or fine again (`None`). Sent at session start and on each change;
    /// while short, the manager places no new task on the node.
    DiskPressure(Option<Message>),
    /// A request for a new node certificate, for a key made on the board: at a point
    /// of the renewal window ([`crate::renewal`]), or at once when the manager asked
    /// (CA rotation). Answered with [`ManagerMessage::Credentials`].
    RenewCertificate {
        /// PKCS#10 request; the manager takes only its public key.
        csr: Bytes<MAX_DER>,
    },
    /// The certificate of the last [`ManagerMessage::Credentials`] is on the board's
    /// disk: the manager counts the board as holding it (CA rotation progress).
    CertificateSaved,
    /// The board's wall clock when it took the manager's last [`Credentials`], for the
    /// manager to measure the board's clock skew.
    Clock {
        /// Milliseconds since the Unix epoch, by the board's clock.
        now_ms: u64,
    },
}

/// Most CAs a board or the CLI trusts at once: the current one and, during a CA
/// rotation, the one replacing it.
pub const MAX_TRUSTED_CAS: usize = 2;

/// The manager's clock, the board's trust and certificate: sent when a session opens,
/// every minute, when the CA rotation moves, and in answer to
/// [`AgentMessage::RenewCertificate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The manager's wall clock, ms since the Unix epoch: renewal is judged by it.
    pub now_ms: u64,
    /// A new certificate for the board's last request; `None` otherwise.
    pub certificate: Option<Bytes<MAX_DER>>,
    /// Validity of the certificate the board holds (the new one when `certificate` is
    /// set), as `(notBefore, notAfter)` in ms since the Unix epoch.
    pub valid_from_ms: u64,
    /// See `valid_from_ms`.
    pub valid_until_ms: u64,
    /// The CAs to trust from now on (DER): one, or two during a CA rotation.
    pub trust: BoundedVec<Bytes<MAX_DER>, MAX_TRUSTED_CAS>,
    /// Renew now, whatever the window says: the CA is being rotated.
    pub renew_now: bool,
}

/// Messages the manager sends on a session stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ManagerMessage {
    /// The manager is closing the session for a reason the agent must act on.
    Closing(ErrorReply),
    /// The full set of images this node should hold; it fetches what it lacks and may
    /// garbage-collect images not listed (unless a container still uses them).
    Images(BoundedVec<WantedImage, MAX_IMAGES>),
    /// Tasks assigned to this node: see [`crate::dispatch`].
    Assignments {
        /// This starts (or continues, see `more`) the node's complete set.
        full: bool,
        /// More chunks of the same full set follow.
        more: bool,
        /// Tasks added or changed.
        upsert: BoundedVec<crate::dispatch::Assignment, { crate::dispatch::MAX_ASSIGNMENTS }>,
        /// Tasks to forget (stopped and removed if they run).
        remove: BoundedVec<crate::services::TaskId, { crate::dispatch::MAX_ASSIGNMENTS }>,
    },
    /// One chunk of this node's view of its networks (peers, names, VIP backends),
    /// sent whole each time it changes: see [`crate::networks::NodeNetworks`].
    Networks(crate::networks::NodeNetworks),
    /// One chunk of the secrets and configs this node's tasks use (their bytes), sent
    /// whole each time the set changes and before the assignments that need it: see
    /// [`crate::secrets::SecretSet`].
    Secrets(crate::secrets::SecretSet),
    /// The manager's time, the trust bundle and, in answer to a renewal, a certificate.
    Credentials(Credentials),
    /// Send heartbeat datagrams this often from now on: faster on a link that loses them,
    /// back to `SessionAccepted`'s period once it is clean. Also the manager's probe of a
    /// late board: any answer, even a bare acknowledgement, shows it alive.
    HeartbeatPeriod {
        /// Milliseconds; the agent beats no faster than every 100 ms whatever it says.
        period_ms: u32,
    },
}

/// Administrative requests, from the `shoal` CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// `shoal node ls`.
    NodeList,
    /// `shoal node inspect NODE`.
    NodeInspect {
        /// ID, unique ID prefix, or hostname.
        node: Text<64>,
    },
    /// `shoal node rm [--force] NODE`.
    NodeRemove {
        /// ID, unique ID prefix, or hostname.
        node: Text<64>,
        /// Remove even when the node is still up.
        force: bool,
    },
    /// `shoal node update`.
    NodeUpdate {
        /// ID, unique ID prefix, or hostname.
        node: Text<64>,
        /// New availability, if changed.
        availability: Option<Availability>,
        /// Labels to add or overwrite.
        label_add: BoundedVec<Label, MAX_LABELS>,
        /// Label keys to remove.
        label_rm: BoundedVec<LabelKey, MAX_LABELS>,
    },
    /// `shoal manager join-token worker [--rotate]`.
    JoinToken {
        /// Replace the secret first; the old token stops working at once.
        rotate: bool,
    },
    /// `shoal image load ARCHIVE`: `size` raw bytes of an OCI archive (OCI image layout
    /// in a tar) follow this frame on the same stream.
    ImageLoad {
        /// Exact length of the archive that follows.
        size: u64,
    },
    /// `shoal image ls`.
    ImageList,
    /// `shoal image rm IMAGE`.
    ImageRemove {
        /// Reference or digest.
        image: ImageRef,
        /// Remove it even when services use it (their new tasks are then rejected).
        force: bool,
    },
    /// `shoal service ...`.
    Service(crate::dispatch::ServiceRequest),
    /// `shoal network ...`.
    Network(crate::networks::NetworkRequest),
    /// `shoal secret ...` and `shoal config ...`.
    Object(crate::secrets::ObjectRequest),
    /// `shoal manager backup FILE`: a consistent copy of the state store, whose bytes
    /// follow the [`ControlReply::Backup`] frame on the same stream.
    Backup,
    /// `shoal manager ca [--rotate]`: the CA's state, after starting a rotation if asked.
    Ca {
        /// Start a CA rotation (a rotation in progress just goes on).
        rotate: bool,
    },
    /// `shoal manager update`: cluster settings.
    ManagerUpdate {
        /// Validity of node and administrator certificates issued from now on, ms.
        cert_expiry_ms: Option<u64>,
    },
    /// `shoal volume ...`.
    Volume(crate::volumes::VolumeControl),
    /// `shoal image pull`: [`ControlReply::PullProgress`] frames, then
    /// [`ControlReply::Pulled`] (or an error), on the same stream.
    ImagePull(Box<crate::images::ImagePull>),
    /// `shoal login REGISTRY`: checks and keeps the credentials on the manager.
    RegistryLogin(Box<crate::images::RegistryLogin>),
    /// `shoal logout REGISTRY`.
    RegistryLogout {
        /// `host[:port]`.
        registry: Text<256>,
    },
    /// `shoal node upgrade`: the builds' bytes follow; see [`crate::upgrade`].
    NodeUpgrade(Box<crate::upgrade::NodeUpgrade>),
}

/// Bounds of `--cert-expiry`: 3 s (tests) to 5 years (the CA lasts 20).
pub const CERT_EXPIRY_RANGE_MS: (u64, u64) = (3_000, 5 * 365 * 24 * 3_600_000);

/// The cluster CA as `shoal manager ca` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaStatus {
    /// SHA-256 of the current CA certificate (the one join tokens carry).
    pub digest: [u8; 32],
    /// When the current CA certificate ends, ms since the Unix epoch.
    pub ca_until_ms: u64,
    /// Validity given to node and administrator certificates, ms.
    pub cert_expiry_ms: u64,
    /// A rotation is in progress.
    pub rotating: bool,
    /// Worker nodes holding a certificate of the new CA (during a rotation).
    pub rotated: u32,
    /// Worker nodes that must hold one before the old CA is retired: the Ready ones and
    /// those not heard from yet.
    pub to_rotate: u32,
    /// Hostnames of nodes left to rotate (the first few).
    pub waiting_for: BoundedVec<Hostname, 16>,
    /// SHA-256 of the CA being rotated in.
    pub rotating_to: Option<[u8; 32]>,
}

/// Every answer to the first frame of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The board joined: here is its identity.
    Joined(JoinAccepted),
    /// The session is open.
    SessionAccepted {
        /// The node the certificate names.
        node_id: NodeId,
        /// How often to send a heartbeat, in milliseconds.
        heartbeat_period_ms: u32,
    },
    /// Answer to a control request.
    Control(ControlReply),
    /// Answer to [`Request::Ping`].
    Pong,
    /// Answer to [`Request::FetchBlob`]: the blob's total size; bytes from the requested
    /// offset to the end follow on the stream, which is then finished.
    Blob {
        /// Total size of the blob.
        size: u64,
    },
    /// The request was refused.
    Error(ErrorReply),
    /// The exec'd command runs; [`crate::exec::ExecFrame`]s follow both ways.
    ExecStarted(crate::exec::ExecStarted),
    /// A board's answer to [`Request::Volume`]: its volumes (after a removal, those left).
    Volumes(BoundedVec<crate::volumes::VolumeInfo, { crate::volumes::MAX_VOLUMES }>),
    /// The logs follow: [`crate::logs::LogsEvent`]s to the CLI, [`crate::logs::LogFrame`]s
    /// from a board.
    LogsStarted,
    /// A board's answer to [`Request::AgentUpgrade`]: the new binary is in place and the
    /// agent restarts on it.
    UpgradeAccepted,
}

/// A successful join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinAccepted {
    /// The new node's ID.
    pub node_id: NodeId,
    /// The node certificate, signed by the cluster CA.
    pub certificate: Bytes<MAX_DER>,
    /// The cluster CA certificate, to trust from now on.
    pub ca: Bytes<MAX_DER>,
}

/// Answers to control requests.
// Replies are built once, sent and dropped; boxing the inline strings buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlReply {
    /// Node listing.
    Nodes(BoundedVec<NodeView, MAX_NODES>),
    /// One node.
    Node(Box<NodeView>),
    /// A join token and where to use it.
    JoinToken {
        /// The token.
        token: Text<128>,
        /// `HOST:PORT` to join.
        manager_addr: Text<64>,
    },
    /// Done; the text says what happened.
    Done(Message),
    /// References of the images an archive held, now loaded.
    ImagesLoaded(BoundedVec<ImageRef, 64>),
    /// Image listing.
    Images(BoundedVec<ImageView, MAX_IMAGES>),
    /// Answer to a service request.
    Service(crate::dispatch::ServiceReply),
    /// Answer to a network request.
    Network(crate::networks::NetworkReply),
    /// Answer to a secret or config request.
    Object(crate::secrets::ObjectReply),
    /// A backup of `size` bytes follows this frame.
    Backup {
        /// Exact length of the store copy that follows.
        size: u64,
    },
    /// Answer to [`ControlRequest::Ca`].
    Ca(CaStatus),
    /// Answer to a volume request.
    Volume(crate::volumes::VolumeReply),
    /// One blob of a pull moved on; more frames follow.
    PullProgress(crate::images::PullProgress),
    /// The pull is done.
    Pulled(Box<crate::images::Pulled>),
    /// One node of an agent rollout moved on; more frames follow.
    UpgradeProgress(crate::upgrade::UpgradeProgress),
    /// The agent rollout is over.
    Upgraded(crate::upgrade::UpgradeSummary),
}

/// A refusal, with a kind to act on and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What went wrong, for programs.
    pub kind: ErrorKind,
    /// What went wrong and what to do, for people.
    pub message: Message,
}

impl ErrorReply {
    /// Builds a reply, cutting an overlong message.
    pub fn new(kind: ErrorKind, message: &str) -> Self {
        Self { kind, message: BoundedString::lossy(message) }
    }
}

/// Kinds of refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The peer speaks another protocol version.
    VersionMismatch,
    /// The join token is wrong or was rotated away.
    InvalidToken,
    /// The request needs credentials the connection does not carry.
    Unauthorized,
    /// The node was removed from the cluster; its certificate is no longer honoured.
    NodeRemoved,
    /// No such object.
    NotFound,
    /// A name or prefix matches more than one object.
    Ambiguous,
    /// The request contradicts the object's state (e.g. removing a node that is up).
    Conflict,
    /// The request is malformed or asks for something unsupported.
    InvalidRequest,
    /// The manager failed; retrying later may help.
    Internal,
}

impl ErrorKind {
    /// Whether an agent should stop retrying: nothing it can do by waiting will help.
    pub fn is_permanent(self) -> bool {
        matches!(self, Self::VersionMismatch | Self::InvalidToken | Self::NodeRemoved | Self::Unauthorized)
    }
}

/// A node as `node ls` and `node inspect` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// ID.
    pub id: NodeId,
    /// Role in the cluster.
    pub role: Role,
    /// Whether the manager considers the node alive.
    pub status: NodeStatus,
    /// Scheduling availability set by the operator.
    pub availability: Availability,
    /// Description as last reported by the node.
    pub description: NodeDescription,
    /// Labels set by the operator with `node update --label-add`.
    pub labels: BoundedVec<Label, MAX_LABELS>,
    /// Address the node's session came from, or its advertised address.
    pub addr: Option<Text<64>>,
    /// When the node joined, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Milliseconds since the manager last heard from the node, if it has.
    pub last_seen_ago_ms: Option<u64>,
    /// Why the status is what it is.
    pub status_message: Message,
    /// The node's certificate, as the manager last saw the node hold it.
    #[serde(default)]
    pub certificate: Option<NodeCertificate>,
    /// How far the board's clock is ahead of the manager's (negative: behind), ms, as
    /// measured during its current session.
    #[serde(default)]
    pub clock_skew_ms: Option<i64>,
}

/// A node's certificate in [`NodeView`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCertificate {
    /// `notBefore`, ms since the Unix epoch.
    pub valid_from_ms: u64,
    /// `notAfter`, ms since the Unix epoch.
    pub valid_until_ms: u64,
    /// The manager's clock when it answered: "expires in" is measured by it.
    pub manager_now_ms: u64,
    /// Signed by the CA being rotated in (or by the current CA when none is).
    pub current_ca: bool,
}

/// Role of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The manager itself (`MANAGER STATUS` Leader).
    Manager,
    /// An agent that runs tasks.
    Worker,
}

/// Liveness as the manager observes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeStatus {
    /// Not heard from since the manager started; becomes Ready or Down shortly.
    Unknown,
    /// Heartbeats arrive.
    Ready,
    /// Heartbeats stopped.
    Down,
}

/// Operator-set scheduling availability, as Swarm's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Availability {
    /// Takes new tasks.
    #[default]
    Active,
    /// Keeps its tasks, takes no new ones.
    Pause,
    /// Its tasks move elsewhere; takes no new ones.
    Drain,
}

impl core::fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        f.write_str(match self {
            Self::Unknown => "Unknown",
            Self::Ready => "Ready",
            Self::Down => "Down",
        })
    }
}

impl core::fmt::Display for Availability {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        f.write_str(match self {
            Self::Active => "Active",
            Self::Pause => "Pause",
            Self::Drain => "Drain",
        })
    }
}

impl core::str::FromStr for Availability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "active" => Ok(Self::Active),
            "pause" => Ok(Self::Pause),
            "drain" => Ok(Self::Drain),
            other => Err(format!("invalid availability {other:?}: expected active, pause or drain")),
        }
    }
}

impl Label {
    /// Parses `KEY=VALUE` (or `KEY`, with an empty value), as `--label` takes it.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (key, value) = s.split_once('=').unwrap_or((s, ""));
        if key.is_empty() {
            return Err(format!("invalid label {s:?}: expected KEY=VALUE"));
        }
        Ok(Self {
            key: crate::text(key).map_err(|e| format!("label key {key:?}: {e}"))?,
            value: crate::text(value).map_err(|e| format!("label value for {key:?}: {e}"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_decodes_alone_from_any_envelope() {
        let bytes = postcard::to_allocvec(&Envelope::new(Request::Control(ControlRequest::NodeList))).unwrap();
        let (version, _) = postcard::take_from_bytes::<u16>(&bytes).unwrap();
        assert_eq!(version, PROTOCOL_VERSION);
    }

    /// `node ls` at 5,000 boards (issue 16's fleet): the list fits its bound and, for
    /// boards described as the simulator's are, one frame.
    #[test]
    fn a_listing_of_five_thousand_nodes_fits_one_reply() {
        let view = |i: u32| NodeView {
            id: crate::NodeId::from_random([(i % 251) as u8; 16]),
            role: Role::Worker,
            status: NodeStatus::Ready,
            availability: Availability::Active,
            description: NodeDescription {
                hostname: crate::text(&format!("sim{i:05}")).unwrap(),
                arch: crate::text("x86_64").unwrap(),
                os: crate::text("linux").unwrap(),
                advertise_addr: None,
                labels: BoundedVec::new(),
                resources: Resources { cpus: 4, memory_bytes: 4 << 30 },
                agent_version: crate::text("0.1.0").unwrap(),
                missing_features: BoundedVec::new(),
                devices: BoundedVec::new(),
            },
            labels: BoundedVec::new(),
            addr: Some(crate::text("127.0.0.1").unwrap()),
            created_at_ms: 1_764_000_000_000,
            last_seen_ago_ms: Some(1_200),
            status_message: Message::lossy(""),
            certificate: Some(NodeCertificate {
                valid_from_ms: 1_764_000_000_000,
                valid_until_ms: 1_771_776_000_000,
                manager_now_ms: 1_764_000_100_000,
                current_ca: true,
            }),
            clock_skew_ms: Some(-3),
        };
        let views: Vec<NodeView> = (0..5_001).map(view).collect();
        let list: BoundedVec<NodeView, MAX_NODES> =
            views.try_into().expect("5,001 nodes (the manager too) fit the bound");
        let reply = Response::Control(ControlReply::Nodes(list));
        let frame = crate::frame::encode(&reply, crate::MAX_FRAME_LEN).expect("fits one frame");
        assert!(frame.len() < crate::MAX_FRAME_LEN * 3 / 4, "{} bytes", frame.len());
    }

    #[test]
    fn labels_parse_like_docker() {
        assert_eq!(Label::parse("zone=eu").unwrap().value.as_str(), "eu");
        assert_eq!(Label::parse("gpu").unwrap().value.as_str(), "");
        assert!(Label::parse("=x").is_err());
        assert!(Label::parse(&"k".repeat(200)).is_err());
    }

    #[test]
    fn an_overlong_hostname_is_refused_at_decode() {
        #[derive(Serialize)]
        struct Raw<'a> {
            hostname: &'a str,
        }
        let bytes = postcard::to_allocvec(&Raw { hostname: &"h".repeat(65) }).unwrap();
        assert!(postcard::from_bytes::<Hostname>(&bytes).is_err());
    }
}
