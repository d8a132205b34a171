//! Certificates while the cluster runs: the CAs the manager trusts, node renewals over
//! the session, the manager's own server certificate and `admin.json` kept fresh, and
//! the CA rotation's shell (the decisions are [`shoal_core::rotation`]'s).
//!
//! The manager renews `admin.json` in its data directory itself, in the same 50–80%
//! window as the boards (by its own clock): the CLI never needs a renewal protocol, and a
//! CLI not run for longer than a certificate's life is not locked out. Copies of the file
//! elsewhere keep working until their certificate ends, then must be copied again.

use shoal_core::rotation::{self, Board, NodeCert, PkiRecord, Rotation, Step};
use shoal_proto::renewal;
use shoal_proto::{CaStatus, Credentials, MAX_TRUSTED_CAS};

use super::*;

/// How often the rotation and the manager's own certificates are looked at.
const PKI_PERIOD: Duration = Duration::from_secs(1);
/// How often a session is sent the manager's time and its trust, unasked.
pub(super) const CREDENTIALS_PERIOD: Duration = Duration::from_secs(60);
/// A board may ask for a certificate at most this often (a renewal is a signature and a
/// store write; a hostile agent must not turn it into load).
pub(super) const MIN_RENEWAL_GAP_MS: Millis = 250;

/// A worker, its liveness and the CA of the certificate it holds.
type BoardState = (NodeId, NodeStatus, Option<[u8; 32]>);

/// The CAs in force.
pub(super) struct Pki {
    /// The CA join tokens name; it signs everything unless a rotation is in progress.
    pub(super) current: Arc<Ca>,
    /// The CA being rotated in.
    pub(super) next: Option<Arc<Ca>>,
    /// As stored.
    pub(super) record: PkiRecord,
}

impl Pki {
    /// Loads the CAs from the stored records.
    pub(super) fn load(cluster: &ClusterRecord, record: PkiRecord) -> anyhow::Result<Self> {
        let current = Arc::new(Ca::from_parts(cluster.ca_cert.clone(), &cluster.ca_key_pem)?);
        let next = match &record.rotation {
            Some(r) => Some(Arc::new(Ca::from_parts(r.ca_cert.clone(), &r.ca_key_pem)?)),
            None => None,
        };
        Ok(Self { current, next, record })
    }

    /// The CA that signs new node and administrator certificates.
    pub(super) fn signer(&self) -> Arc<Ca> {
        self.next.clone().unwrap_or_else(|| self.current.clone())
    }

    /// The CAs clients are trusted by and must trust: current first.
    pub(super) fn trusted(&self) -> Vec<CertificateDer<'static>> {
        std::iter::once(self.current.cert().clone()).chain(self.next.iter().map(|c| c.cert().clone())).collect()
    }

    /// The digest of the CA a certificate is from, among the trusted ones.
    pub(super) fn which_ca(&self, cert: &[u8]) -> Option<[u8; 32]> {
        std::iter::once(&self.current).chain(self.next.iter()).find(|ca| ca.signed(cert)).map(|ca| ca.digest())
    }
}

/// Validity, in the rotation's terms, of a certificate the manager handles.
pub(super) fn node_cert(pki: &Pki, cert: &[u8]) -> Option<NodeCert> {
    let v = ca::validity(cert).ok()?;
    Some(NodeCert { valid_from_ms: v.from_ms, valid_until_ms: v.until_ms, ca_digest: pki.which_ca(cert)? })
}

/// The manager's QUIC server configuration for the CAs in force.
pub(super) fn server_config(cluster: &ClusterRecord, pki: &Pki) -> anyhow::Result<quinn::ServerConfig> {
    let server_key = rcgen::KeyPair::from_pem(&cluster.server_key_pem)?;
    let identity = Identity {
        chain: vec![CertificateDer::from(cluster.server_cert.clone()), pki.current.cert().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
    };
    Ok(tls::server_config_trusting(pki.trusted(), identity, IDLE_TIMEOUT)?)
}

/// The TLS of the Docker API's TCP listener (`shoal manager run --docker-tcp`): the
/// names its certificate carries and where its configuration goes, at start and each
/// time the CAs or the manager's own certificate change. It trusts the CAs in force
/// for client certificates; the listener admits only administrator ones.
#[derive(Debug, Clone)]
pub struct DockerTls {
    /// IP addresses and DNS names clients dial.
    pub names: Vec<String>,
    /// Receives each new configuration.
    pub configs: tokio::sync::watch::Sender<Option<Arc<rustls::ServerConfig>>>,
}

/// [`DockerTls`] with its key, made at start and never stored (nothing outlives the
/// process that would need it).
pub(super) struct DockerTlsState {
    pub(super) tls: DockerTls,
    pub(super) key: rcgen::KeyPair,
}

/// The Docker API's TLS configuration for the CAs in force: a certificate of the
/// current CA naming `names`, lasting as long as the manager's own (renewed with it).
fn docker_tls_config(cluster: &ClusterRecord, pki: &Pki, d: &DockerTlsState) -> anyhow::Result<rustls::ServerConfig> {
    let cert = pki.current.issue_server(&d.tls.names, &cluster.cluster_id, &d.key, ca::SERVER_VALIDITY_MS)?;
    let identity = Identity {
        chain: vec![cert, pki.current.cert().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(d.key.serialize_der())),
    };
    Ok(tls::tcp_server_config_requiring_client(pki.trusted(), identity)?)
}

/// A new server certificate for the same key (the key also derives the stateless-reset
/// key, which must stay the same across restarts), signed by `ca`.
fn reissue_server_cert(cluster: &mut ClusterRecord, ca: &Ca) -> anyhow::Result<()> {
    let key = rcgen::KeyPair::from_pem(&cluster.server_key_pem)?;
    let cert =
        ca.sign_key(CertRole::Manager, MANAGER_SERVER_NAME, &cluster.cluster_id, &key, ca::SERVER_VALIDITY_MS)?;
    cluster.server_cert = cert.to_vec();
    Ok(())
}

impl Manager {
    /// Applies the CAs and server certificate in force to the listening endpoint: new
    /// connections get them, open ones keep what they agreed.
    fn apply_server_config(&self) -> anyhow::Result<()> {
        let config = {
            let cluster = self.cluster.lock().expect("cluster lock");
            let pki = self.pki.lock().expect("pki lock");
            server_config(&cluster, &pki)?
        };
        self.endpoint.set_server_config(Some(config));
        self.apply_docker_tls()
    }

    /// Publishes the Docker API's TLS configuration for the CAs in force, if it is
    /// served on TCP.
    pub(super) fn apply_docker_tls(&self) -> anyhow::Result<()> {
        let Some(d) = &self.docker_tls else { return Ok(()) };
        let config = {
            let cluster = self.cluster.lock().expect("cluster lock");
            let pki = self.pki.lock().expect("pki lock");
            docker_tls_config(&cluster, &pki, d)?
        };
        d.tls.configs.send_replace(Some(Arc::new(config)));
        Ok(())
    }

    /// What to tell a board: the manager's time, its trust, and `certificate` if one
    /// was just issued for it (whose validity is then the one given).
    pub(super) fn credentials(&self, held: Option<NodeCert>, certificate: Option<&[u8]>) -> ManagerMessage {
        let pki = self.pki.lock().expect("pki lock");
        let mut trust = BoundedVec::<_, MAX_TRUSTED_CAS>::new();
        for ca in pki.trusted() {
            if let Ok(b) = ca.to_vec().try_into() {
                let _ = trust.push(b);
            }
        }
        ManagerMessage::Credentials(Credentials {
            now_ms: shoal_link::wall_ms(),
            certificate: certificate.and_then(|c| c.try_into().ok()),
            valid_from_ms: held.map_or(0, |h| h.valid_from_ms),
            valid_until_ms: held.map_or(0, |h| h.valid_until_ms),
            trust,
            renew_now: rotation::renew_now(pki.record.rotation.as_ref(), held.map(|h| h.ca_digest)),
        })
    }

    /// Signs a board's renewal request with the CA in force for signing.
    pub(super) fn renew_node(&self, node: &NodeId, csr: &[u8]) -> Result<(Vec<u8>, NodeCert), ErrorReply> {
        let cluster_id = self.cluster.lock().expect("cluster lock").cluster_id.clone();
        let pki = self.pki.lock().expect("pki lock");
        let cert = pki
            .signer()
            .sign_node(csr, node.as_str(), &cluster_id, pki.record.cert_expiry_ms)
            .map_err(|e| ErrorReply::new(ErrorKind::InvalidRequest, &format!("bad certificate request: {e}")))?;
        let held = node_cert(&pki, &cert).ok_or_else(|| internal("a certificate just issued does not parse"))?;
        Ok((cert.to_vec(), held))
    }

    /// Records the certificate a node holds, if it changed.
    pub(super) fn note_node_cert(&self, node: &NodeId, cert: NodeCert) {
        let known = self.store.node_cert(node).ok().flatten();
        if known != Some(cert) {
            if let Err(e) = self.store.put_node_cert(node, &cert) {
                warn!(%node, error = %e, "cannot record the node's certificate");
            }
        }
        self.pki_wake.notify_one();
    }

    /// `shoal manager ca [--rotate]`.
    pub(super) fn ca_request(&self, rotate: bool) -> Result<CaStatus, ErrorReply> {
        if rotate {
            self.start_rotation().map_err(internal)?;
        }
        let (step, pki_digest, until, expiry, rotating_to) = {
            let boards = self.boards().map_err(internal)?;
            let pki = self.pki.lock().expect("pki lock");
            let refs: Vec<Board> =
                boards.iter().map(|(n, s, c)| Board { node: n, status: *s, ca_digest: *c }).collect();
            let step = rotation::step(pki.record.rotation.as_ref(), &refs);
            let until = ca::validity(pki.current.cert()).map(|v| v.until_ms).unwrap_or(0);
            (step, pki.current.digest(), until, pki.record.cert_expiry_ms, pki.next.as_ref().map(|n| n.digest()))
        };
        let progress = match step {
            Step::Idle => Default::default(),
            Step::Wait(p) | Step::Retire(p) => p,
        };
        let names: HashMap<NodeId, String> = self
            .store
            .nodes_shared()
            .map_err(internal)?
            .iter()
            .map(|n| (n.id.clone(), n.description.hostname.to_string()))
            .collect();
        let mut waiting_for = BoundedVec::new();
        for n in progress.waiting.iter().take(16) {
            let _ = waiting_for.push(shoal_proto::text_lossy(names.get(n).map_or(n.as_str(), String::as_str)));
        }
        Ok(CaStatus {
            digest: pki_digest,
            ca_until_ms: until,
            cert_expiry_ms: expiry,
            rotating: rotating_to.is_some(),
            rotating_to,
            rotated: progress.rotated,
            to_rotate: progress.to_rotate,
            waiting_for,
        })
    }

    /// `shoal manager update --cert-expiry`: certificates issued from now on last this.
    pub(super) fn set_cert_expiry(&self, ms: u64) -> Result<(), ErrorReply> {
        let (lo, hi) = shoal_proto::CERT_EXPIRY_RANGE_MS;
        if !(lo..=hi).contains(&ms) {
            return Err(ErrorReply::new(
                ErrorKind::InvalidRequest,
                &format!("certificate expiry of {ms} ms is out of range: use 3s to 43800h"),
            ));
        }
        let mut pki = self.pki.lock().expect("pki lock");
        let mut record = pki.record.clone();
        record.cert_expiry_ms = ms;
        self.store.put_pki(&record, None).map_err(internal)?;
        pki.record = record;
        info!(cert_expiry_ms = ms, "certificate expiry changed; certificates take it at their next renewal");
        Ok(())
    }

    /// Worker nodes with their status and the CA of the certificate they hold.
    fn boards(&self) -> Result<Vec<BoardState>, crate::store::StoreError> {
        let certs = self.store.node_certs()?;
        // Shared, not copied: a rotation's pass runs every second and at every board's
        // saved certificate, over 5,000 records.
        let nodes = self.store.nodes_shared()?;
        let st = self.state.lock().expect("state lock");
        let now = self.now();
        Ok(nodes
            .iter()
            .filter(|n| n.role == Role::Worker)
            .map(|n| {
                let status = st.members.status(now, &n.id).0;
                let ca = certs.get(&n.id).map(|c| c.ca_digest);
                (n.id.clone(), status, ca)
            })
            .collect())
    }

    /// Starts a CA rotation, unless one is in progress.
    fn start_rotation(&self) -> anyhow::Result<()> {
        let cluster_id = self.cluster.lock().expect("cluster lock").cluster_id.clone();
        {
            let mut pki = self.pki.lock().expect("pki lock");
            if pki.record.rotation.is_some() {
                return Ok(());
            }
            let next = Ca::generate(&cluster_id)?;
            let mut record = pki.record.clone();
            record.rotation = Some(Rotation {
                ca_cert: next.cert().to_vec(),
                ca_key_pem: next.key_pem(),
                ca_digest: next.digest(),
                started_ms: shoal_link::wall_ms(),
            });
            self.store.put_pki(&record, None)?;
            info!(new_ca = %shoal_proto::hex(&next.digest()), "CA rotation started");
            pki.record = record;
            pki.next = Some(Arc::new(next));
        }
        self.after_pki_change()
    }

    /// Every Ready board holds a certificate of the new CA: it becomes the only one.
    fn retire_old_ca(&self) -> anyhow::Result<()> {
        {
            let mut cluster = self.cluster.lock().expect("cluster lock");
            let mut pki = self.pki.lock().expect("pki lock");
            let (Some(next), Some(r)) = (pki.next.clone(), pki.record.rotation.clone()) else { return Ok(()) };
            let mut new_cluster = cluster.clone();
            new_cluster.ca_cert = r.ca_cert.clone();
            new_cluster.ca_key_pem = r.ca_key_pem.clone();
            reissue_server_cert(&mut new_cluster, &next)?;
            let mut record = pki.record.clone();
            record.rotation = None;
            self.store.put_pki(&record, Some(&new_cluster))?;
            *cluster = new_cluster;
            pki.current = next;
            pki.next = None;
            pki.record = record;
            info!(ca = %shoal_proto::hex(&r.ca_digest), "CA rotation complete: the old CA is retired and no longer trusted; join tokens changed");
        }
        self.after_pki_change()
    }

    /// After the CAs changed: the endpoint, `admin.json` and every board follow.
    fn after_pki_change(&self) -> anyhow::Result<()> {
        self.apply_server_config()?;
        if let Err(e) = self.renew_admin(true) {
            warn!(error = %e, "cannot renew admin.json");
        }
        self.pki_changed.send_modify(|n| *n += 1);
        self.pki_wake.notify_one();
        Ok(())
    }

    /// Rewrites `admin.json` when its certificate is due for renewal (by this manager's
    /// clock), is not of the signing CA, or its trust is not the CAs in force; `force`
    /// rewrites it whatever. Only the file in this manager's data directory.
    fn renew_admin(&self, force: bool) -> anyhow::Result<()> {
        let path = paths::admin_path(&self.data_dir);
        let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) };
        let Ok(mut creds) = serde_json::from_str::<paths::AdminCredentials>(&text) else { return Ok(()) };
        // Locks are taken cluster first, then pki, everywhere.
        let cluster_id = self.cluster.lock().expect("cluster lock").cluster_id.clone();
        let (signer, trust_pem, expiry) = {
            let pki = self.pki.lock().expect("pki lock");
            let trust = shoal_link::files::certs_pem(pki.trusted().iter().map(|c| c.as_ref()));
            (pki.signer(), trust, pki.record.cert_expiry_ms)
        };
        let cert = paths::pem_der(&creds.cert_pem).unwrap_or_default();
        let due = match ca::validity(&cert) {
            Ok(v) => v.renewal_due(shoal_link::wall_ms(), renewal::jitter(&tls::ca_digest(&cert))),
            Err(_) => true,
        };
        if !(force || due || !signer.signed(&cert) || creds.ca_pem != trust_pem) {
            return Ok(());
        }
        let (cert, key) = signer.issue(CertRole::Admin, "admin", &cluster_id, expiry)?;
        creds.ca_pem = trust_pem;
        creds.cert_pem = paths::cert_pem(&cert);
        creds.key_pem = key.serialize_pem();
        paths::write_private(&path, serde_json::to_string_pretty(&creds)?.as_bytes())?;
        debug!("renewed admin.json");
        Ok(())
    }

    /// Renews the manager's server certificate half-way through its life (or when it is
    /// not of the current CA).
    fn renew_server_cert(&self) -> anyhow::Result<()> {
        {
            let mut cluster = self.cluster.lock().expect("cluster lock");
            let pki = self.pki.lock().expect("pki lock");
            let due = match ca::validity(&cluster.server_cert) {
                Ok(v) => v.renewal_due(shoal_link::wall_ms(), 0),
                Err(_) => true,
            };
            if !due && pki.current.signed(&cluster.server_cert) {
                return Ok(());
            }
            let mut next = cluster.clone();
            reissue_server_cert(&mut next, &pki.current)?;
            self.store.put_cluster(&next)?;
            *cluster = next;
            info!("renewed the manager's server certificate");
        }
        self.apply_server_config()
    }

    /// One look at the rotation and the manager's own certificates.
    fn pki_pass(&self) {
        let rotation = self.pki.lock().expect("pki lock").record.rotation.clone();
        if rotation.is_some() {
            match self.boards() {
                Ok(boards) => {
                    let refs: Vec<Board> =
                        boards.iter().map(|(n, s, c)| Board { node: n, status: *s, ca_digest: *c }).collect();
                    if let Step::Retire(_) = rotation::step(rotation.as_ref(), &refs) {
                        if let Err(e) = self.retire_old_ca() {
                            warn!(error = %e, "cannot retire the old CA yet");
                        }
                    }
                }
                Err(e) => warn!(error = %e, "cannot read the nodes for the CA rotation"),
            }
        }
        if let Err(e) = self.renew_server_cert() {
            warn!(error = %e, "cannot renew the manager's server certificate");
        }
        if let Err(e) = self.renew_admin(false) {
            warn!(error = %e, "cannot renew admin.json");
        }
    }
}

/// Moves the rotation on and keeps the manager's own certificates fresh: every second,
/// and whenever a board saved a certificate.
pub(super) async fn pki_loop(mgr: Arc<Manager>) {
    loop {
        mgr.pki_pass();
        tokio::select! {
            _ = tokio::time::sleep(PKI_PERIOD) => {}
            _ = mgr.pki_wake.notified() => {}
        }
    }
}

/// Validity of a certificate for [`NodeView`]s.
pub(super) fn cert_view(cert: Option<&NodeCert>, current: Option<[u8; 32]>) -> Option<shoal_proto::NodeCertificate> {
    cert.map(|c| shoal_proto::NodeCertificate {
        valid_from_ms: c.valid_from_ms,
        valid_until_ms: c.valid_until_ms,
        manager_now_ms: shoal_link::wall_ms(),
        current_ca: current == Some(c.ca_digest),
    })
}
