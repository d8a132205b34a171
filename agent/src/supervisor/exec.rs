//! The supervisor's side effects: making, starting, stopping and removing a task's
//! container with the real (or fake) runtime, image store and network, and reading what
//! the runtime shows. Each operation is one call that either does all of its work or
//! undoes what it made, and fails with an [`ExecError`] that keeps its cause.
//!
//! Not here: deciding what to do (that is [`super::core`]) or remembering it
//! ([`super::persist`]). Blocking runtime calls run on `spawn_blocking` threads, so one
//! slow stop does not hold up the others.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shoal_proto::dispatch::Assignment;
use shoal_proto::services::Seccomp;
use shoal_proto::{PortConfig, Protocol, PublishMode, TaskId};
use tracing::{debug, warn};

use super::core::book::{host_network, NetworkAttachment};
use super::core::Container;
use crate::images::{ImageStore, StoreError};
use crate::net::{NetError, PortPublisher, Published, Sandbox, Sandboxes};
use crate::runtime::from_image::{container_config, Overrides};
use crate::runtime::seccomp::SeccompPolicy;
use crate::runtime::{ContainerStatus, NetworkMode, Runtime, RuntimeError};

/// Why an operation on a task's container failed. The message is what `service ps`
/// shows for a rejected task; classify with the `is_*` methods.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The task's image is not in the store.
    #[error("image {reference} is not on this node")]
    ImageMissing {
        /// The image reference.
        reference: String,
    },
    /// The image is in the store but can't be read.
    #[error("image {reference}: {source}")]
    Image {
        /// The image reference.
        reference: String,
        /// The store's error.
        source: StoreError,
    },
    /// The container bridge can't be set up.
    #[error("cannot set up the container bridge: {0}")]
    Bridge(#[source] NetError),
    /// The task's network sandbox can't be made.
    #[error(transparent)]
    Sandbox(NetError),
    /// The container can't join one of its overlay networks.
    #[error("cannot attach the container to network {network}: {source}")]
    Attach {
        /// The network's ID.
        network: String,
        /// Why (boxed: it is rare, and every other error would carry its size).
        source: Box<NetError>,
    },
    /// A port can't be published (a host-mode port in use, most often).
    #[error(transparent)]
    Ports(NetError),
    /// The image and the task's spec don't make a container configuration.
    #[error(transparent)]
    Spec(RuntimeError),
    /// The runtime can't create the container.
    #[error(transparent)]
    Create(RuntimeError),
    /// The container's process did not start; the runtime's reason (a missing
    /// executable, ...) says it all.
    #[error("{reason}")]
    StartFailed {
        /// The runtime's reason.
        reason: String,
    },
    /// The runtime can't start the container.
    #[error(transparent)]
    Start(RuntimeError),
    /// The runtime can't stop the container.
    #[error(transparent)]
    Stop(RuntimeError),
    /// The runtime can't delete the container.
    #[error(transparent)]
    Remove(RuntimeError),
    /// The runtime can't list or read its containers.
    #[error(transparent)]
    Runtime(RuntimeError),
    /// A runtime call panicked on its thread.
    #[error("{what} panicked: {message}")]
    Panicked {
        /// What was being done.
        what: &'static str,
        /// The panic.
        message: String,
    },
    /// The task's secrets or configs can't be given to its container.
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretError),
    /// The board's disk is full, and that is what made `source` fail.
    #[error("no space left on the board's disk ({}): {source}", .dir.display())]
    DiskFull {
        /// The agent's data directory.
        dir: PathBuf,
        /// What failed.
        source: Box<ExecError>,
    },
}

impl ExecError {
    /// Whether a host port the task publishes is taken.
    pub fn is_port_in_use(&self) -> bool {
        match self {
            Self::Ports(e) => e.is_port_in_use(),
            Self::DiskFull { source, .. } => source.is_port_in_use(),
            _ => false,
        }
    }

    /// Whether the board's disk being full made it fail.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Self::DiskFull { .. })
    }

    /// Whether the failure belongs to the task's image or spec (trying again on this
    /// node fails the same way), as opposed to the node.
    pub fn is_task_fault(&self) -> bool {
        match self {
            Self::ImageMissing { .. } | Self::StartFailed { .. } => true,
            Self::Spec(e) | Self::Create(e) | Self::Start(e) => e.is_container_fault(),
            _ => false,
        }
    }

    fn panicked(what: &'static str) -> impl FnOnce(tokio::task::JoinError) -> Self {
        move |e| Self::Panicked { what, message: e.to_string() }
    }
}

/// A stop that failed, with the container as observed afterwards (it may be gone or
/// lost), so the next step is decided from what is there.
#[derive(Debug)]
pub struct StopFailure {
    /// Why.
    pub error: ExecError,
    /// The container, if it could be read.
    pub seen: Option<Container>,
}

/// How long a task waits for its secrets and configs to arrive from the manager.
const OBJECTS_WAIT: Duration = Duration::from_secs(10);

/// A task's container made and its ports published.
pub(crate) struct Prepared {
    /// Live publications: dropping them closes the ports.
    pub(crate) ports: Vec<Published>,
    /// The ports as bound, for the task's Running status.
    pub(crate) bound: Vec<PortConfig>,
    /// Top digest of the image.
    pub(crate) digest: String,
}

/// What operations need, shared with those in flight.
pub(crate) struct Exec<N> {
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) network: Arc<N>,
    pub(crate) publisher: PortPublisher,
    pub(crate) images: Arc<ImageStore>,
    pub(crate) disk: Arc<crate::disk::Watch>,
    bridge_ready: AtomicBool,
    /// `/etc/resolv.conf` of containers with overlay attachments.
    overlay_resolv_conf: Option<String>,
    /// `/etc/resolv.conf` of containers on the bridge only, and on the host's network.
    bridge_resolv_conf: String,
    host_resolv_conf: String,
    /// What `{{.Node.…}}` placeholders stand for.
    node: super::guest::NodeFacts,
    /// Where named volumes live (see [`crate::volumes`]).
    volumes: PathBuf,
    /// Secrets and configs the manager sent (memory only), and where containers' tmpfs
    /// go (see [`crate::secrets`]).
    pub(crate) secrets: Arc<crate::secrets::Held>,
    secrets_root: PathBuf,
}

/// What the runtime's answer says of a container.
fn observe(s: Result<ContainerStatus, RuntimeError>) -> Container {
    match s {
        Ok(ContainerStatus::Created) => Container::Created,
        Ok(ContainerStatus::Running { .. }) => Container::Running,
        Ok(ContainerStatus::Exited { code, .. }) => Container::Exited { code },
        Ok(ContainerStatus::Lost) => Container::Lost,
        Err(_) => Container::Absent,
    }
}

impl<N: Sandboxes + 'static> Exec<N> {
    pub(crate) fn new(
        runtime: Arc<dyn Runtime>,
        network: Arc<N>,
        publisher: PortPublisher,
        images: Arc<ImageStore>,
        disk: Arc<crate::disk::Watch>,
    ) -> Self {
        Self {
            runtime,
            network,
            publisher,
            images,
            disk,
            bridge_ready: AtomicBool::new(false),
            overlay_resolv_conf: None,
            bridge_resolv_conf: super::guest::bridge_resolv_conf(""),
            host_resolv_conf: String::new(),
            node: super::guest::NodeFacts::default(),
            volumes: PathBuf::from("volumes"),
            secrets: Arc::default(),
            secrets_root: PathBuf::from("/run/shoal/secrets"),
        }
    }

    /// Keeps named volumes under `dir`.
    pub(crate) fn with_volumes(mut self, dir: PathBuf) -> Self {
        self.volumes = dir;
        self
    }

    /// Takes secrets from `held` and puts containers' secret tmpfs under `root` (one
    /// per agent on a host).
    pub(crate) fn with_secrets(mut self, held: Arc<crate::secrets::Held>, root: PathBuf) -> Self {
        self.secrets = held;
        self.secrets_root = root;
        self
    }

    /// Gives placeholders the node's facts, and containers without overlays a
    /// `resolv.conf` made from the board's (`board_conf`), as Docker does.
    pub(crate) fn with_guest(mut self, node: super::guest::NodeFacts, board_conf: &str) -> Self {
        self.node = node;
        self.bridge_resolv_conf = super::guest::bridge_resolv_conf(board_conf);
        self.host_resolv_conf = super::guest::host_resolv_conf(board_conf);
        self
    }

    /// Gives containers with overlay attachments `resolv_conf` as `/etc/resolv.conf`.
    pub(crate) fn with_resolv_conf(mut self, resolv_conf: Option<String>) -> Self {
        self.overlay_resolv_conf = resolv_conf;
        self
    }

    /// Sets up the container bridge if it is not yet known to be there.
    pub(crate) async fn ensure_bridge(&self) -> Result<(), ExecError> {
        if !self.bridge_ready.load(Ordering::Relaxed) {
            self.network.ensure_bridge().await.map_err(ExecError::Bridge)?;
            self.bridge_ready.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Whether the store holds `reference` complete.
    pub(crate) fn image_present(&self, reference: &str) -> bool {
        self.images.image(reference).is_some()
    }

    /// Top digest of `reference`, if held.
    pub(crate) fn digest(&self, reference: &str) -> Option<String> {
        self.images.image(reference).map(|r| r.digest)
    }

    /// When the disk being full made `e` happen, says so first (and puts the disk under
    /// pressure at once, so tasks waiting for images hear it too).
    fn on_disk(&self, e: ExecError) -> ExecError {
        if self.disk.noticed(&e) {
            ExecError::DiskFull { dir: self.disk.dir().to_owned(), source: Box::new(e) }
        } else {
            e
        }
    }

    /// Every container the runtime knows, with what it shows of each.
    pub(crate) async fn list(&self) -> Result<Vec<(String, Container)>, ExecError> {
        let runtime = self.runtime.clone();
        tokio::task::spawn_blocking(move || {
            let ids = runtime.list().map_err(ExecError::Runtime)?;
            Ok(ids.into_iter().map(|id| (id.clone(), observe(runtime.status(&id)))).collect())
        })
        .await
        .map_err(ExecError::panicked("listing containers"))?
    }

    /// What the runtime shows of each container; a lost one (its shim died, its
    /// processes may run on) is killed first, so the task is reported failed only once
    /// nothing of it runs. Containers whose state can't be read are left out.
    pub(crate) async fn poll(&self, ids: Vec<(TaskId, String)>) -> Vec<(TaskId, Container)> {
        let runtime = self.runtime.clone();
        tokio::task::spawn_blocking(move || {
            ids.into_iter()
                .filter_map(|(t, c)| match runtime.status(&c) {
                    // Only a container that is not there is absent; trouble reading its
                    // state is not a reason to fail the task.
                    Err(RuntimeError::NotFound(_)) => Some((t, Container::Absent)),
                    Err(e) => {
                        debug!(container = %c, error = %e, "cannot read container status");
                        None
                    }
                    ok => {
                        let seen = observe(ok);
                        if seen == Container::Lost {
                            // Otherwise the manager would place its replacement, port
                            // and all, beside a container still running. The runtime
                            // kills it through its cgroup.
                            if let Err(e) = runtime.stop(&c, Duration::ZERO) {
                                warn!(container = %c, error = %e, "cannot kill a lost container");
                            }
                        }
                        Some((t, seen))
                    }
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// Publishes again the ports of a running container taken back after a restart.
    /// `None` when it has nothing to publish (host network) or its sandbox is gone.
    pub(crate) async fn republish(
        &self,
        a: &Assignment,
        cid: &str,
    ) -> Option<Result<(Vec<Published>, Vec<PortConfig>), ExecError>> {
        if host_network(a) {
            return None;
        }
        let Some(sandbox) = self.network.sandbox(cid) else {
            warn!(container = %cid, "running container without its network sandbox; its ports are not published");
            return None;
        };
        Some(publish_all(&self.publisher, a, IpAddr::V4(sandbox.ip)).await)
    }

    /// Makes a task's container: its sandbox, its overlay interfaces and ports (or, on
    /// the host network, a check of its ports) and the container itself. Undoes what it
    /// made when it fails.
    pub(crate) async fn prepare(
        &self,
        a: &Assignment,
        cid: &str,
        attachments: &[NetworkAttachment],
    ) -> Result<Prepared, ExecError> {
        let reference = a.spec.image.as_str();
        let image_error = |source| ExecError::Image { reference: reference.to_owned(), source };
        let record =
            self.images.image(reference).ok_or_else(|| ExecError::ImageMissing { reference: reference.to_owned() })?;
        let image = self.images.config(reference).map_err(image_error)?;
        let layers = self.images.lowerdirs(reference).map_err(image_error)?;
        let (sandbox, ports, bound) = if host_network(a) {
            (None, Vec::new(), probe_host_ports(a).map_err(ExecError::Ports)?)
        } else {
            self.ensure_bridge().await?;
            // A sandbox left by a crash between its creation and the container's.
            if self.network.sandbox(cid).is_some() {
                let _ = self.network.remove_sandbox(cid).await;
            }
            let sandbox = match self.network.create_sandbox(cid).await {
                Ok(s) => s,
                Err(NetError::SandboxExists(_)) => {
                    let _ = self.network.remove_sandbox(cid).await;
                    self.network.create_sandbox(cid).await.map_err(|e| self.on_disk(ExecError::Sandbox(e)))?
                }
                Err(e) => return Err(self.on_disk(ExecError::Sandbox(e))),
            };
            if let Err(e) = self.attach(&sandbox, attachments).await {
                let _ = self.network.remove_sandbox(cid).await;
                return Err(e);
            }
            match publish_all(&self.publisher, a, IpAddr::V4(sandbox.ip)).await {
                Ok((ports, bound)) => (Some(sandbox), ports, bound),
                Err(e) => {
                    let _ = self.network.remove_sandbox(cid).await;
                    return Err(e);
                }
            }
        };
        let guest = super::guest::hostname(a, &self.node)
            .and_then(|h| Ok((h, super::guest::env(a, &self.node)?)))
            .map_err(|e| ExecError::Spec(RuntimeError::Spec(e.to_string())));
        // Mounts, devices, ...: a bind source or device missing here fails the task.
        let resolved = {
            let (options, host, volumes) = (a.spec.container.clone(), host_network(a), self.volumes.clone());
            tokio::task::spawn_blocking(move || crate::runtime::options::resolve(&options, host, &volumes))
                .await
                .map_err(ExecError::panicked("resolving the container options"))
                .and_then(|r| r.map_err(ExecError::Spec))
        };
        let guest = guest.and_then(|g| Ok((g, resolved?)));
        let ((hostname, env), resolved) = match guest {
            Ok(x) => x,
            Err(e) => {
                drop(ports);
                if sandbox.is_some() {
                    let _ = self.network.remove_sandbox(cid).await;
                }
                return Err(e);
            }
        };
        // Its secrets and configs, in a tmpfs of its own.
        let files = if crate::secrets::needed(&a.spec) {
            // Right after an agent restart, a task from `tasks.json` may be prepared before
            // the new session has brought the objects (it sends them before any task):
            // wait for them a little rather than reject the task at once.
            let until = tokio::time::Instant::now() + OBJECTS_WAIT;
            while !self.secrets.has_all(&a.spec) && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let (root, cid_owned, spec, held) =
                (self.secrets_root.clone(), cid.to_owned(), a.spec.clone(), self.secrets.clone());
            let made =
                tokio::task::spawn_blocking(move || crate::secrets::materialize(&root, &cid_owned, &spec, &held))
                    .await
                    .map_err(ExecError::panicked("writing the container's secrets"))
                    .and_then(|r| r.map_err(ExecError::Secrets));
            match made {
                Ok(f) => f,
                Err(e) => {
                    drop(ports);
                    if sandbox.is_some() {
                        let _ = self.network.remove_sandbox(cid).await;
                    }
                    return Err(e);
                }
            }
        } else {
            Vec::new()
        };
        // The container's own addresses, for its /etc/hosts line(s), as Docker writes them.
        let mut addresses: Vec<std::net::IpAddr> = sandbox.iter().map(|s| IpAddr::V4(s.ip)).collect();
        addresses.extend(attachments.iter().map(|n| IpAddr::V4(n.address)));
        let overrides = Overrides {
            stop_signal: a.spec.stop_signal.as_ref().map(|s| s.to_string()),
            args: a.spec.args.iter().map(|s| s.to_string()).collect(),
            env,
            hostname,
            addresses,
            network: Some(match &sandbox {
                Some(s) => NetworkMode::Namespace(s.netns_path.clone()),
                None => NetworkMode::Host,
            }),
            memory_limit: (a.spec.resources.limit_memory > 0).then_some(a.spec.resources.limit_memory),
            cpu_millis: (a.spec.resources.limit_cpu_millis > 0).then_some(u64::from(a.spec.resources.limit_cpu_millis)),
            hosts: a.hosts.iter().map(|h| h.to_string()).collect(),
            // Only containers on overlay networks need the board's resolver; the others
            // stay exactly as they were before overlays existed.
            // Every container gets one, as under Docker: the board's resolver on overlays,
            // the board's reachable nameservers on the bridge, the board's own file on
            // the host's network.
            resolv_conf: Some(match (&sandbox, attachments.is_empty(), &self.overlay_resolv_conf) {
                (None, _, _) => self.host_resolv_conf.clone(),
                (Some(_), false, Some(overlay)) => overlay.clone(),
                (Some(_), _, _) => self.bridge_resolv_conf.clone(),
            })
            .map(|conf| {
                let dns: Vec<String> = a.spec.container.dns.iter().map(|d| d.to_string()).collect();
                crate::runtime::options::with_nameservers(&conf, &dns)
            }),
            seccomp: match &a.spec.seccomp {
                Seccomp::Default => SeccompPolicy::Default,
                Seccomp::Unconfined => SeccompPolicy::Unconfined,
                Seccomp::Profile(json) => SeccompPolicy::Profile(json.to_string()),
            },
            user: a.spec.container.user.as_ref().map(|u| u.to_string()),
            workdir: a.spec.container.workdir.as_ref().map(|w| w.to_string()),
            entrypoint: a.spec.container.entrypoint.as_ref().map(|e| e.iter().map(|s| s.to_string()).collect()),
            group_add: a.spec.container.group_add.iter().map(|g| g.to_string()).collect(),
            options: resolved,
            files,
        };
        let created = match container_config(cid, &image, layers, &overrides) {
            Ok(config) => {
                let rt = self.runtime.clone();
                tokio::task::spawn_blocking(move || match rt.create(&config) {
                    // Left by a crash before the task's status was saved: make it afresh.
                    Err(RuntimeError::Exists(_)) => {
                        rt.delete(&config.id)?;
                        rt.create(&config)
                    }
                    other => other,
                })
                .await
                .map_err(ExecError::panicked("creating the container"))
                .and_then(|r| r.map_err(ExecError::Create))
            }
            Err(e) => Err(ExecError::Spec(e)),
        };
        if let Err(e) = created {
            crate::secrets::release(&self.secrets_root, cid);
            drop(ports);
            if sandbox.is_some() {
                let _ = self.network.remove_sandbox(cid).await;
            }
            return Err(self.on_disk(e));
        }
        Ok(Prepared { ports, bound, digest: record.digest })
    }

    /// Joins the sandbox to each overlay network, as `eth1`, `eth2`, … in order. The
    /// overlays themselves are the network plane's ([`crate::net::plane`]): it makes
    /// them for the networks of the board's tasks before they are prepared.
    async fn attach(&self, sandbox: &Sandbox, attachments: &[NetworkAttachment]) -> Result<(), ExecError> {
        self.network
            .join_overlays(sandbox, attachments)
            .await
            .map_err(|(network, e)| ExecError::Attach { network, source: Box::new(e) })
    }

    /// Starts a created container.
    pub(crate) async fn start(&self, cid: String) -> Result<(), ExecError> {
        let rt = self.runtime.clone();
        match tokio::task::spawn_blocking(move || rt.start(&cid)).await {
            Ok(Ok(_pid)) => Ok(()),
            Ok(Err(RuntimeError::StartFailed { reason, .. })) => Err(ExecError::StartFailed { reason }),
            Ok(Err(e)) => Err(ExecError::Start(e)),
            Err(e) => Err(ExecError::panicked("starting the container")(e)),
        }
    }

    /// Stops a running container (SIGTERM, SIGKILL after `grace`) and returns its exit
    /// code.
    pub(crate) async fn stop(&self, cid: String, grace: Duration) -> Result<i32, StopFailure> {
        let rt = self.runtime.clone();
        let root = self.secrets_root.clone();
        tokio::task::spawn_blocking(move || {
            let stopped = rt.stop(&cid, grace);
            if stopped.is_ok() {
                // Its last user stopped: the secrets leave the board's memory.
                crate::secrets::release(&root, &cid);
            }
            stopped.map_err(|e| {
                // A container that can't be stopped may be gone or lost (its shim
                // died): say what is there.
                let seen = match rt.status(&cid) {
                    Err(RuntimeError::NotFound(_)) => Some(Container::Absent),
                    Err(_) => None,
                    ok => Some(observe(ok)),
                };
                StopFailure { error: ExecError::Stop(e), seen }
            })
        })
        .await
        .unwrap_or_else(|e| Err(StopFailure { error: ExecError::panicked("stopping the container")(e), seen: None }))
    }

    /// Stops (if running) and deletes a container; one already gone is fine.
    pub(crate) async fn remove_container(&self, cid: String, grace: Duration) -> Result<(), ExecError> {
        let rt = self.runtime.clone();
        let root = self.secrets_root.clone();
        tokio::task::spawn_blocking(move || {
            if let Ok(ContainerStatus::Running { .. }) = rt.status(&cid) {
                rt.stop(&cid, grace).map_err(ExecError::Stop)?;
            }
            crate::secrets::release(&root, &cid);
            match rt.delete(&cid) {
                Ok(()) | Err(RuntimeError::NotFound(_)) => Ok(()),
                Err(e) => Err(ExecError::Remove(e)),
            }
        })
        .await
        .map_err(ExecError::panicked("removing the container"))?
    }

    /// Removes a container's network sandbox.
    pub(crate) async fn remove_sandbox(&self, cid: &str) -> Result<(), ExecError> {
        self.network.remove_sandbox(cid).await.map_err(ExecError::Sandbox)
    }

    /// Removes the network sandboxes of containers that are not there (`containers` is
    /// every container the runtime has), and says how many went. They are what an agent
    /// that stopped between a container's removal and its sandbox's, or between a
    /// sandbox's creation and its container's, leaves: a namespace, a veth on the bridge
    /// and an address, which nothing else would ever take back.
    pub(crate) async fn remove_stray_sandboxes(&self, containers: &[String]) -> usize {
        let mut removed = 0;
        for cid in self.network.sandbox_ids() {
            if containers.contains(&cid) {
                continue;
            }
            match self.network.remove_sandbox(&cid).await {
                Ok(()) => removed += 1,
                Err(e) => {
                    warn!(container = %cid, error = %e, "cannot remove the network sandbox of a container that is gone")
                }
            }
        }
        removed
    }
}

/// Publishes the task's ports that go to this node to `ip`: host mode, and ingress mode
/// only when the task has no address on `ingress` (the routing mesh serves its ingress
/// ports then, on every board; without one, a proxy here is the best effort). A
/// host-mode port in use fails; an ingress-mode one is skipped.
async fn publish_all(
    publisher: &PortPublisher,
    a: &Assignment,
    ip: IpAddr,
) -> Result<(Vec<Published>, Vec<PortConfig>), ExecError> {
    let (mut live, mut bound) = (Vec::new(), Vec::new());
    let meshed = a.networks.iter().any(|n| n.ingress);
    for p in a.spec.ports.iter() {
        if meshed && p.mode == PublishMode::Ingress {
            bound.push(*p);
            continue;
        }
        match publisher.publish(p.published.unwrap_or(0), p.protocol, ip, p.target).await {
            Ok(published) => {
                bound.push(PortConfig { published: Some(published.local_addr().port()), ..*p });
                live.push(published);
            }
            Err(e) if p.mode == PublishMode::Ingress && e.is_port_in_use() => {
                warn!(task = %a.task_id, error = %e, "ingress port not published on this node");
            }
            Err(e) => return Err(ExecError::Ports(e)),
        }
    }
    Ok((live, bound))
}

/// With `--network host` the container binds the node's ports itself, on its target
/// ports (there is no proxy to map another port): check they are free now, so a clash
/// is a clear rejection rather than a crashing container.
fn probe_host_ports(a: &Assignment) -> Result<Vec<PortConfig>, NetError> {
    let mut bound = Vec::new();
    for p in a.spec.ports.iter() {
        let port = p.target;
        let addr = std::net::SocketAddr::from(([0, 0, 0, 0], port));
        let taken = match p.protocol {
            Protocol::Tcp => std::net::TcpListener::bind(addr).err(),
            Protocol::Udp => std::net::UdpSocket::bind(addr).err(),
        };
        match taken {
            Some(e) if e.kind() == std::io::ErrorKind::AddrInUse && p.mode == PublishMode::Host => {
                return Err(NetError::PortInUse { port, proto: p.protocol })
            }
            _ => bound.push(PortConfig { published: Some(port), ..*p }),
        }
    }
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts `service ps` shows stay what they were when errors travelled as
    /// strings, and the causes can be told apart without reading them.
    #[test]
    fn messages_keep_their_text_and_causes_are_classified() {
        let missing = ExecError::ImageMissing { reference: "demo/app:1.0".into() };
        assert_eq!(missing.to_string(), "image demo/app:1.0 is not on this node");
        assert!(missing.is_task_fault() && !missing.is_port_in_use());

        let in_use = ExecError::Ports(NetError::PortInUse { port: 8000, proto: Protocol::Tcp });
        assert_eq!(
            in_use.to_string(),
            "host port 8000 is already in use on this node (tcp): stop what listens there or publish another port"
        );
        assert!(in_use.is_port_in_use() && !in_use.is_task_fault());

        let start = ExecError::StartFailed { reason: "executable '/no/such' not found".into() };
        assert_eq!(start.to_string(), "executable '/no/such' not found");
        assert!(start.is_task_fault());

        let bridge = ExecError::Bridge(NetError::NotABridge("shoal0".into()));
        assert!(bridge.to_string().starts_with("cannot set up the container bridge: network interface shoal0"));

        let enospc = std::io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error());
        let create = ExecError::Create(RuntimeError::Io { context: "writing config.json".into(), source: enospc });
        assert!(crate::disk::is_disk_full(&create), "ENOSPC is found through the chain");
        let full = ExecError::DiskFull { dir: "/".into(), source: Box::new(create) };
        assert!(full.is_disk_full());
        assert!(full.to_string().starts_with("no space left on the board's disk (/): writing config.json"), "{full}");

        let panicked = ExecError::Panicked { what: "starting the container", message: "task 3 panicked".into() };
        assert_eq!(panicked.to_string(), "starting the container panicked: task 3 panicked");
    }
}
