//! `shoal manager init`: creates the cluster (CA, manager certificate, administrator
//! credentials, worker join secret, the manager's own node record) in one step that
//! either completes or leaves nothing behind.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use anyhow::{bail, Context};
use shoal_link::tls::ca_digest;
use shoal_proto::token::SECRET_LEN;
use shoal_proto::{Availability, BoundedVec, JoinToken, NodeDescription, NodeId, Resources, Role};

use crate::ca::{Ca, CertRole, SERVER_VALIDITY_MS};
use crate::core::nodes::NodeRecord;
use crate::core::rotation::PkiRecord;
use crate::paths::{self, AdminCredentials};
use crate::store::{ClusterRecord, Store};

/// Port agents join on unless told otherwise.
pub const DEFAULT_PORT: u16 = 4242;

/// What init made, for printing.
#[derive(Debug)]
pub struct Initialized {
    /// The manager's node ID.
    pub node_id: NodeId,
    /// The worker join token.
    pub token: JoinToken,
    /// `IP:PORT` to join.
    pub advertise_addr: SocketAddr,
}

/// Parses `IP` or `IP:PORT`.
pub fn parse_addr(s: &str, default_port: u16) -> anyhow::Result<SocketAddr> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if let Ok(ip) = s.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    bail!("invalid address {s:?}: expected an IP address, optionally with :PORT (e.g. 10.0.0.1 or 10.0.0.1:4242)")
}

/// Creates a cluster in `data_dir`.
pub fn init(
    data_dir: &Path,
    advertise: SocketAddr,
    listen: Option<SocketAddr>,
    hostname: &str,
    cert_expiry_ms: u64,
) -> anyhow::Result<Initialized> {
    let dir = paths::manager_dir(data_dir);
    if paths::store_path(data_dir).exists() {
        bail!(
            "a cluster is already initialized in {}: start it with `shoal manager run`, or remove that directory to start over",
            dir.display()
        );
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    // Build everything in a scratch directory and rename it into place at the end.
    let scratch = data_dir.join("manager.init-tmp");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let result = build(&scratch, advertise, listen, hostname, cert_expiry_ms);
    match result {
        Ok(done) => {
            // The files are synced (redb commits, `write_private`); sync the scratch
            // directory's entries, then the rename, so a power cut after "initialized"
            // leaves the whole cluster, and one before leaves only scratch to redo.
            sync_dir(&scratch)?;
            std::fs::rename(&scratch, &dir)
                .with_context(|| format!("cannot move the new cluster into {}", dir.display()))?;
            sync_dir(data_dir)?;
            Ok(done)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&scratch);
            Err(e)
        }
    }
}

/// Makes `path` readable and writable by its owner only (the store holds the cluster's
/// private keys). `manager run` applies it too, to stores made before it was done here.
pub fn owner_only(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private (it holds the CA key)", path.display()))?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync directory {}", dir.display()))
}

fn build(
    dir: &Path,
    advertise: SocketAddr,
    listen: Option<SocketAddr>,
    hostname: &str,
    cert_expiry_ms: u64,
) -> anyhow::Result<Initialized> {
    let cluster_id = NodeId::from_random(shoal_link::random());
    let node_id = NodeId::from_random(shoal_link::random());
    let ca = Ca::generate(cluster_id.as_str())?;
    let (server_cert, server_key) =
        ca.issue(CertRole::Manager, shoal_proto::MANAGER_SERVER_NAME, cluster_id.as_str(), SERVER_VALIDITY_MS)?;
    let (admin_cert, admin_key) = ca.issue(CertRole::Admin, "admin", cluster_id.as_str(), cert_expiry_ms)?;
    let token = JoinToken::new(ca_digest(ca.cert()), shoal_link::random::<SECRET_LEN>());
    let listen = listen.unwrap_or_else(|| {
        let any: IpAddr = if advertise.is_ipv4() { [0, 0, 0, 0].into() } else { [0u16; 8].into() };
        SocketAddr::new(any, advertise.port())
    });
    let cluster = ClusterRecord {
        cluster_id: cluster_id.to_string(),
        ca_cert: ca.cert().to_vec(),
        ca_key_pem: ca.key_pem(),
        server_cert: server_cert.to_vec(),
        server_key_pem: server_key.serialize_pem(),
        worker_secret: token.secret.clone(),
        advertise_addr: advertise.to_string(),
        listen_addr: listen.to_string(),
        manager_node: node_id.clone(),
    };
    let manager = NodeRecord {
        id: node_id.clone(),
        role: Role::Manager,
        availability: Availability::Active,
        labels: BoundedVec::new(),
        description: NodeDescription {
            hostname: shoal_proto::text_lossy(hostname),
            arch: shoal_proto::text_lossy(std::env::consts::ARCH),
            os: shoal_proto::text_lossy(std::env::consts::OS),
            advertise_addr: Some(shoal_proto::text_lossy(&advertise.ip().to_string())),
            labels: BoundedVec::new(),
            resources: Resources::default(),
            agent_version: shoal_proto::text_lossy(env!("CARGO_PKG_VERSION")),
            missing_features: BoundedVec::new(),
            devices: BoundedVec::new(),
        },
        addr: Some(advertise.ip().to_string()),
        created_at_ms: shoal_link::wall_ms(),
        ingress_address: None,
    };
    let store = Store::create(&dir.join("state.redb"), &cluster, &manager)?;
    // The store holds the CA's key: only its owner may read it.
    owner_only(&dir.join("state.redb"))?;
    store.put_pki(&PkiRecord { cert_expiry_ms, rotation: None }, None)?;
    drop(store);
    let admin = AdminCredentials {
        manager_addr: advertise.to_string(),
        ca_pem: paths::cert_pem(ca.cert()),
        cert_pem: paths::cert_pem(&admin_cert),
        key_pem: admin_key.serialize_pem(),
    };
    paths::write_private(&dir.join("admin.json"), serde_json::to_string_pretty(&admin)?.as_bytes())?;
    Ok(Initialized { node_id, token, advertise_addr: advertise })
}

/// `shoal manager restore FILE`: checks the backup, refuses while a manager holds the
/// current store, then puts the backup in place durably (copy, fsync, rename, fsync the
/// directory). Administrator credentials are issued anew from the restored CA when the
/// data directory has none (a restore onto a new machine). Returns the cluster ID.
pub fn restore(data_dir: &Path, backup: &Path) -> anyhow::Result<String> {
    use crate::store::StoreError;
    if !backup.is_file() {
        bail!("no backup at {}: give the file `shoal manager backup FILE` wrote", backup.display());
    }
    crate::verify::in_child(backup)
        .map_err(|e| anyhow::anyhow!("{e}\nthe backup {} cannot be used", backup.display()))?;
    let cluster = Store::open(backup)?.cluster().with_context(|| format!("the backup {}", backup.display()))?;
    let target = paths::store_path(data_dir);
    if target.exists() {
        // A damaged or good current store alike is replaced, but not one in use.
        if let Err(StoreError::Locked(_)) = crate::verify::in_child(&target) {
            bail!("a manager is running on {}: stop `shoal manager run` first, then restore", data_dir.display());
        }
    }
    let dir = paths::manager_dir(data_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join("state.redb.restore-tmp");
    let _ = std::fs::remove_file(&tmp);
    let copied = std::fs::copy(backup, &tmp)
        // The store holds the cluster's private keys: only its owner may read it,
        // whatever mode the backup file had.
        .and_then(|_| std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600)))
        .and_then(|()| std::fs::File::open(&tmp).and_then(|f| f.sync_all()));
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot copy the backup into {}", dir.display()));
    }
    std::fs::rename(&tmp, &target)?;
    sync_dir(&dir)?;
    let admin = paths::admin_path(data_dir);
    if !admin.exists() {
        let store = Store::open(&target)?;
        let expiry = store.pki()?.cert_expiry_ms;
        // A rotation in progress in the backup: the new CA signs, both are trusted.
        let rotation = store.pki()?.rotation;
        drop(store);
        let ca = Ca::from_parts(cluster.ca_cert.clone(), &cluster.ca_key_pem)?;
        let next = rotation.as_ref().map(|r| Ca::from_parts(r.ca_cert.clone(), &r.ca_key_pem)).transpose()?;
        let (cert, key) = next.as_ref().unwrap_or(&ca).issue(CertRole::Admin, "admin", &cluster.cluster_id, expiry)?;
        let trust = std::iter::once(ca.cert().as_ref()).chain(next.as_ref().map(|n| n.cert().as_ref()));
        let creds = AdminCredentials {
            manager_addr: cluster.advertise_addr.clone(),
            ca_pem: shoal_link::files::certs_pem(trust),
            cert_pem: paths::cert_pem(&cert),
            key_pem: key.serialize_pem(),
        };
        paths::write_private(&admin, serde_json::to_string_pretty(&creds)?.as_bytes())?;
    }
    Ok(cluster.cluster_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_holding_the_ca_key_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("shoal-init-{}", shoal_proto::hex(&shoal_link::random::<6>())));
        let done = init(&dir, "127.0.0.1:4242".parse().unwrap(), None, "m", 60_000).unwrap();
        assert!(!done.token.to_string().is_empty());
        let mode = std::fs::metadata(paths::store_path(&dir)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        // And the certificate expiry asked for is stored.
        assert_eq!(Store::open(&paths::store_path(&dir)).unwrap().pki().unwrap().cert_expiry_ms, 60_000);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
