//! Container networking on a board, done by the agent itself: no `ip`, no `iptables`,
//! only netlink (rtnetlink) and plain sockets.
//!
//! The contract, for the container runtime:
//!
//! - [`Network::ensure_bridge`] once at start: the bridge (default `shoal0`) exists,
//!   carries the gateway (`.1` of the subnet, default `10.88.0.0/16`) and is up, and
//!   IPv4 forwarding is on. It is idempotent and never disturbs running containers, so
//!   an agent restart just calls it again.
//! - [`Network::create_sandbox`] before a container starts: a network namespace pinned at
//!   `<netns_dir>/<container id>` (default `/run/shoal/netns`), with `lo` up and an
//!   `eth0` (one end of a veth pair whose host end `sh<hash>` sits on the bridge)
//!   holding an address from the subnet and a default route via the gateway. Point the
//!   OCI spec's network namespace at [`Sandbox::netns_path`].
//! - [`Network::remove_sandbox`] after the container is gone: the veth, the namespace
//!   file and the address go; it is idempotent and also cleans a half-made sandbox.
//! - [`PortPublisher::publish`] for host-mode published ports: a userspace proxy from
//!   `0.0.0.0:<host port>` to the container; dropping the handle unpublishes.
//!
//! Addresses are recorded in `<state_dir>/ipam.json`, rewritten atomically on each
//! change; one [`Network`] per state directory. [`Network::sandbox`] and
//! [`Network::sandboxes`] answer what exists after a restart, so the agent can take its
//! containers back (and remove the sandboxes of those that are gone). The [`Sandboxes`]
//! trait is what a supervisor should hold; [`fake::FakeNetwork`] stands in for it in
//! unit tests.
//!
//! Beside it: [`overlay`] (VXLAN networks across boards), [`dns`] (the containers'
//! resolver), [`nft`] (NAT), and [`plane`], which applies a board's desired overlay
//! networks, names and NAT (outbound masquerade included) with those. Not done here:
//! IPv6; the ingress routing mesh; inbound firewalling. Published ports are proxied, so containers see the gateway as the
//! client's address.

pub mod dns;
pub mod error;
pub mod fake;
pub mod ipam;
mod link;
mod netns;
pub mod nft;
pub mod overlay;
pub mod plane;
pub mod publish;
pub mod subnet;
pub mod xfrm;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub use error::NetError;
pub use publish::{Limits, PortPublisher, Published};
pub use subnet::Subnet;

use ipam::Ipam;

/// Where `ip_forward` lives.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// The longest container ID accepted: it names a file and is hashed into a link name.
pub const MAX_ID_LEN: usize = 128;

/// The bridge and the address plan of a board's container network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    /// The bridge interface (at most 15 bytes, Linux's limit).
    pub name: String,
    /// The containers' subnet; the bridge holds its first host address.
    pub subnet: Subnet,
    /// Where namespace files are pinned.
    pub netns_dir: PathBuf,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            name: "shoal0".into(),
            subnet: Subnet::new(Ipv4Addr::new(10, 88, 0, 0), 16)
                .unwrap_or_else(|e| unreachable!("the default subnet is valid: {e}")),
            netns_dir: PathBuf::from("/run/shoal/netns"),
        }
    }
}

impl BridgeConfig {
    /// The gateway, which the bridge carries.
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.gateway()
    }

    fn validate(&self) -> Result<(), NetError> {
        let ok = !self.name.is_empty()
            && self.name.len() <= 15
            && self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !ok {
            return Err(NetError::Config(format!(
                "bridge name {:?} must be 1 to 15 characters from [A-Za-z0-9_.-]",
                self.name
            )));
        }
        Ok(())
    }
}

/// A container's network: where its namespace is and what address it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// The container it belongs to.
    pub container_id: String,
    /// The namespace file to put in the OCI spec.
    pub netns_path: PathBuf,
    /// The container's address on `eth0`.
    pub ip: Ipv4Addr,
    /// Its default gateway (the bridge).
    pub gateway: Ipv4Addr,
    /// The prefix length of `ip`.
    pub prefix: u8,
    /// The host end of its veth pair.
    pub host_veth: String,
}

/// The sandbox operations a container supervisor needs, so it can run on
/// [`fake::FakeNetwork`] in unit tests. [`Network`] is the real one.
pub trait Sandboxes: Send + Sync {
    /// See [`Network::ensure_bridge`].
    fn ensure_bridge(&self) -> impl std::future::Future<Output = Result<(), NetError>> + Send;
    /// See [`Network::create_sandbox`].
    fn create_sandbox(&self, container_id: &str)
        -> impl std::future::Future<Output = Result<Sandbox, NetError>> + Send;
    /// See [`Network::remove_sandbox`].
    fn remove_sandbox(&self, container_id: &str) -> impl std::future::Future<Output = Result<(), NetError>> + Send;
    /// See [`Network::sandbox`].
    fn sandbox(&self, container_id: &str) -> Option<Sandbox>;
    /// The containers holding an address, whole sandbox or half-made (see
    /// [`Network::sandboxes`]).
    fn sandbox_ids(&self) -> Vec<String>;
    /// See [`plane::join_container`]; the error names the network that failed.
    fn join_overlays(
        &self,
        sandbox: &Sandbox,
        attachments: &[plane::NetworkAttachment],
    ) -> impl std::future::Future<Output = Result<(), (String, NetError)>> + Send;
}

impl Sandboxes for Network {
    async fn ensure_bridge(&self) -> Result<(), NetError> {
        Network::ensure_bridge(self).await
    }
    async fn create_sandbox(&self, container_id: &str) -> Result<Sandbox, NetError> {
        Network::create_sandbox(self, container_id).await
    }
    async fn remove_sandbox(&self, container_id: &str) -> Result<(), NetError> {
        Network::remove_sandbox(self, container_id).await
    }
    fn sandbox(&self, container_id: &str) -> Option<Sandbox> {
        Network::sandbox(self, container_id)
    }
    fn sandbox_ids(&self) -> Vec<String> {
        Network::sandboxes(self).into_iter().map(|s| s.container_id).collect()
    }
    async fn join_overlays(
        &self,
        sandbox: &Sandbox,
        attachments: &[plane::NetworkAttachment],
    ) -> Result<(), (String, NetError)> {
        // The plane makes overlays when the assignment arrives; making sure here too
        // (idempotent) keeps a container from racing it.
        if let Some(local) = self.underlay() {
            for a in attachments {
                guard_encrypted(&a.network, &a.overlay, local).map_err(|e| (a.network.clone(), e))?;
                overlay::ensure(&a.overlay, local).await.map_err(|e| (a.network.clone(), e))?;
            }
        }
        plane::join_container(sandbox, attachments).await?;
        let first = attachments.first().map(|a| a.network.clone()).unwrap_or_default();
        self.joined(&sandbox.container_id).await.map_err(|e| (first, e))
    }
}

/// A container just joined its overlays ([`Network::watch_joins`]); answer `done` once
/// it has its load balancer: `None`, or why the board can't ever give it one (the
/// container then fails with that error).
#[derive(Debug)]
pub struct Joined {
    /// The container's ID.
    pub container: String,
    /// Answered when the container is set up; dropping it answers `None` too.
    pub done: tokio::sync::oneshot::Sender<Option<String>>,
}

/// How long a container's preparation waits for its load balancer before it starts
/// anyway (then it gets it at the plane's next apply).
const JOIN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// An encrypted network's overlay is made here only if the plane's IPsec policy that
/// keeps its packets from leaving in the clear stands (it may not, on a kernel without
/// `CONFIG_XFRM_USER`: then the container is not joined, saying why).
fn guard_encrypted(network: &str, o: &overlay::Overlay, local: Ipv4Addr) -> Result<(), NetError> {
    if o.port == overlay::VXLAN_PORT {
        return Ok(());
    }
    let guarded = xfrm::current().is_ok_and(|(_, policies)| {
        policies.iter().any(|p| p.dir == xfrm::Dir::Out && p.selector.dport == o.port && p.selector.src == local)
    });
    if guarded {
        Ok(())
    } else {
        Err(NetError::Config(format!(
            "network {network} is encrypted but this board's IPsec policies for it are not in place, so its traffic would cross in the clear: see the agent's log (the kernel needs CONFIG_XFRM_USER, CONFIG_INET_ESP and CONFIG_CRYPTO_GCM)"
        )))
    }
}

/// The container network of one board.
#[derive(Debug)]
pub struct Network {
    config: BridgeConfig,
    ipam: Mutex<Ipam>,
    /// Taken for each write of the allocations (see [`Network::persist_allocations`]).
    saving: tokio::sync::Mutex<()>,
    /// This board's underlay address (where VXLAN packets leave from), once known.
    underlay: Mutex<Option<Ipv4Addr>>,
    /// Who is told of containers joining overlays (the network plane's owner).
    joins: Mutex<Option<tokio::sync::mpsc::Sender<Joined>>>,
}

impl Network {
    /// Loads the address allocations from `state_dir` (created if missing). Touches no
    /// interface: see [`Network::ensure_bridge`].
    pub fn new(config: BridgeConfig, state_dir: &Path) -> Result<Self, NetError> {
        config.validate()?;
        std::fs::create_dir_all(state_dir).map_err(|e| NetError::io(format!("creating {}", state_dir.display()), e))?;
        let ipam = Ipam::load(&state_dir.join("ipam.json"), config.subnet)?;
        Ok(Self {
            config,
            ipam: Mutex::new(ipam),
            saving: tokio::sync::Mutex::new(()),
            underlay: Mutex::new(None),
            joins: Mutex::new(None),
        })
    }

    /// Each container joined to its overlays from now on, so that it gets its load
    /// balancer before it starts (replaces an earlier watcher).
    pub fn watch_joins(&self) -> tokio::sync::mpsc::Receiver<Joined> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        *self.joins.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }

    /// Tells the watcher that `container` joined, and waits (at most [`JOIN_WAIT`]) for
    /// it to be done; fails only when the board can't ever set the container up.
    async fn joined(&self, container: &str) -> Result<(), NetError> {
        let tx = self.joins.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(tx) = tx else { return Ok(()) };
        let (done, wait) = tokio::sync::oneshot::channel();
        let notice = Joined { container: container.to_string(), done };
        let told = async {
            if tx.send(notice).await.is_ok() {
                wait.await.ok().flatten()
            } else {
                None
            }
        };
        match tokio::time::timeout(JOIN_WAIT, told).await {
            Ok(None) => Ok(()),
            Ok(Some(why)) => Err(NetError::Unsupported(why)),
            Err(_) => {
                tracing::warn!(
                    container,
                    "the network plane took over {JOIN_WAIT:?} to set up the container's load balancer; starting it anyway"
                );
                Ok(())
            }
        }
    }

    /// Records this board's underlay address (from the session with the manager).
    pub fn set_underlay(&self, ip: Ipv4Addr) {
        *self.underlay.lock().unwrap_or_else(|p| p.into_inner()) = Some(ip);
    }

    /// This board's underlay address, once a session told it.
    pub fn underlay(&self) -> Option<Ipv4Addr> {
        *self.underlay.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The configuration.
    pub fn config(&self) -> &BridgeConfig {
        &self.config
    }

    /// Makes the bridge exist with its gateway address and be up, turns IPv4 forwarding
    /// on and prepares the namespace directory. Idempotent; leaves running containers
    /// alone.
    pub async fn ensure_bridge(&self) -> Result<(), NetError> {
        let c = &self.config;
        link::ensure_bridge(&c.name, c.gateway(), c.subnet.prefix()).await?;
        enable_ip_forward()?;
        netns::prepare_dir(&c.netns_dir)
    }

    /// Deletes the bridge (and so detaches every veth left on it). For tests and for
    /// uninstalling; the agent never calls it in normal operation.
    pub async fn remove_bridge(&self) -> Result<(), NetError> {
        link::delete(&self.config.name).await
    }

    /// Makes the network sandbox of `container_id`: namespace, veth pair, address and
    /// routes. On failure, whatever was made is removed again.
    pub async fn create_sandbox(&self, container_id: &str) -> Result<Sandbox, NetError> {
        check_id(container_id)?;
        let ip = {
            // One lock for check and allocation: two concurrent creations for one ID
            // must not both succeed.
            let mut ipam = self.lock();
            if ipam.state().get(container_id).is_some() {
                return Err(NetError::SandboxExists(container_id.to_string()));
            }
            ipam.allocate_unsaved(container_id)?
        };
        // On disk before anything uses the address: a restart must not hand it out again.
        if let Err(e) = self.persist_allocations().await {
            self.lock().release_unsaved(container_id);
            return Err(e);
        }
        let sandbox = self.describe(container_id, ip);
        match self.build(&sandbox).await {
            Ok(()) => Ok(sandbox),
            Err(e) => {
                if let Err(cleanup) = self.remove_sandbox(container_id).await {
                    tracing::warn!(container_id, "cleaning up a failed sandbox: {cleanup}");
                }
                Err(e)
            }
        }
    }

    async fn build(&self, s: &Sandbox) -> Result<(), NetError> {
        // A leftover of a crash between two steps would block the exclusive creations.
        netns::remove(&s.netns_path)?;
        link::delete(&s.host_veth).await?;

        netns::create(&s.netns_path).await?;
        let ns = std::fs::File::open(&s.netns_path)
            .map_err(|e| NetError::io(format!("opening {}", s.netns_path.display()), e))?;
        link::create_veth(&s.host_veth, &self.config.name, &ns).await?;
        drop(ns);
        let (ip, prefix, gateway) = (s.ip, s.prefix, s.gateway);
        netns::run_in(&s.netns_path, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| NetError::io("starting a runtime in the sandbox", e))?;
            rt.block_on(link::configure_inside(ip, prefix, gateway))?;
            allow_low_ports()
        })
        .await
    }

    /// Removes the sandbox of `container_id`: its veth, its namespace file, its address.
    /// Removing one that does not exist (or twice) is fine.
    pub async fn remove_sandbox(&self, container_id: &str) -> Result<(), NetError> {
        check_id(container_id)?;
        let s = self.describe(container_id, Ipv4Addr::UNSPECIFIED);
        // The veth first: if the container still runs, its namespace outlives the file.
        link::delete(&s.host_veth).await?;
        netns::remove(&s.netns_path)?;
        // Should the write fail, the file still holds the address: kept from reuse until
        // the next write, never handed out twice.
        let released = self.lock().release_unsaved(container_id);
        if released.is_some() {
            self.persist_allocations().await?;
        }
        Ok(())
    }

    /// Writes the address allocations as they are now, on a blocking thread: the agent's
    /// runtime has one thread, and two fsyncs on an SD card busy with a long write can
    /// take seconds. One write at a time, each of the state as it is when its turn
    /// comes, so the last write holds the newest state whatever order callers came in.
    async fn persist_allocations(&self) -> Result<(), NetError> {
        let _turn = self.saving.lock().await;
        let (path, bytes) = self.lock().to_write()?;
        tokio::task::spawn_blocking(move || Ipam::write(&path, &bytes))
            .await
            .map_err(|e| NetError::io("writing the address allocations", std::io::Error::other(e)))?
    }

    /// The sandbox of `container_id`, if it has an address and a namespace pinned at its
    /// file (not one still being made: the board's network plane would fail to enter it).
    pub fn sandbox(&self, container_id: &str) -> Option<Sandbox> {
        let ip = self.lock().state().get(container_id)?;
        let s = self.describe(container_id, ip);
        netns::is_pinned(&s.netns_path).then_some(s)
    }

    /// Every container holding an address, namespace file or not (a missing file means
    /// a reboot or a crash: remove and recreate those).
    pub fn sandboxes(&self) -> Vec<Sandbox> {
        let ipam = self.lock();
        ipam.state().iter().map(|(id, ip)| self.describe(id, ip)).collect()
    }

    fn describe(&self, container_id: &str, ip: Ipv4Addr) -> Sandbox {
        describe(&self.config, container_id, ip)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ipam> {
        // A panic elsewhere leaves the allocations consistent (each change is one call).
        self.ipam.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where `container_id`'s sandbox lives under `config`, with address `ip`.
fn describe(config: &BridgeConfig, container_id: &str, ip: Ipv4Addr) -> Sandbox {
    Sandbox {
        container_id: container_id.to_string(),
        netns_path: config.netns_dir.join(container_id),
        ip,
        gateway: config.gateway(),
        prefix: config.subnet.prefix(),
        host_veth: host_veth_name(&config.name, container_id),
    }
}

/// The host end's name: `sh` and 12 hex digits of a hash of bridge and container, which
/// fits Linux's 15-byte limit for any container ID and is found again after a restart.
fn host_veth_name(bridge: &str, container_id: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("{bridge}/{container_id}").as_bytes());
    let hex = shoal_proto::hex(&digest.as_ref()[..6]);
    format!("sh{hex}")
}

/// Whether `id` can name a namespace file safely.
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn check_id(id: &str) -> Result<(), NetError> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(NetError::InvalidId(id.chars().take(MAX_ID_LEN + 1).collect()))
    }
}

/// Where the lowest port an unprivileged process may bind is set, per network namespace.
const UNPRIVILEGED_PORT_START: &str = "/proc/sys/net/ipv4/ip_unprivileged_port_start";

/// Inside a sandbox (on a thread that entered it): any user may bind any port, as in
/// Docker's containers (`python3 -m http.server 80` as `nobody`). The namespace holds
/// nothing else, so this opens nothing on the board. Kernels before 4.11 lack the
/// setting; there only root binds below 1024, as before.
fn allow_low_ports() -> Result<(), NetError> {
    match std::fs::write(UNPRIVILEGED_PORT_START, b"0") {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r.map_err(|e| NetError::io(format!("writing {UNPRIVILEGED_PORT_START} in the sandbox"), e)),
    }
}

/// Turns IPv4 forwarding on, writing only when it is off (boards run on SD cards, and
/// an unneeded write to /proc is still a syscall with side effects on some kernels).
fn enable_ip_forward() -> Result<(), NetError> {
    let now = std::fs::read_to_string(IP_FORWARD).map_err(|e| NetError::io(format!("reading {IP_FORWARD}"), e))?;
    if now.trim() == "1" {
        return Ok(());
    }
    std::fs::write(IP_FORWARD, b"1").map_err(|e| NetError::io(format!("enabling IPv4 forwarding in {IP_FORWARD}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_veth_names() {
        assert!(valid_id("abc-1_2.3"));
        for bad in ["", ".hidden", "a/b", "..", "a b", &"x".repeat(129)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
        let n = host_veth_name("shoal0", &"y".repeat(128));
        assert_eq!(n.len(), 14);
        assert_ne!(host_veth_name("shoal0", "a"), host_veth_name("shoal1", "a"));
    }

    /// The supervisor spawns these on a runtime: they must be `Send`.
    #[test]
    fn futures_are_send() {
        fn send<T: Send>(_: T) {}
        let dir = std::env::temp_dir().join(format!("shoal-netsend-{}", std::process::id()));
        let net = Network::new(BridgeConfig::default(), &dir).unwrap();
        send(net.ensure_bridge());
        send(net.create_sandbox("x"));
        send(net.remove_sandbox("x"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn config_is_checked() {
        let dir = std::env::temp_dir().join(format!("shoal-netcfg-{}", std::process::id()));
        let c = BridgeConfig { name: "much-too-long-bridge".into(), ..BridgeConfig::default() };
        assert!(Network::new(c, &dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
