//! The node's identity on disk: its ID, key, certificate, the cluster CA and where the
//! manager is. One file, written once at join (all or nothing), read at every start:
//! gentle on SD cards.

use std::path::{Path, PathBuf};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use shoal_link::files::{pem_der, pem_ders, write_private};
use shoal_link::{ClientTls, Identity, Trust};

use crate::AgentError;

/// The agent's directory inside the data directory.
pub fn agent_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("agent")
}

fn identity_path(data_dir: &Path) -> PathBuf {
    agent_dir(data_dir).join("identity.json")
}

/// Written when the manager refused this node as removed; holds the removed node ID, so
/// `join` knows the identity beside it is dead and replaces it without `--force`.
fn removed_path(data_dir: &Path) -> PathBuf {
    agent_dir(data_dir).join("removed")
}

/// Records that the manager removed `node_id`.
pub fn mark_removed(data_dir: &Path, node_id: &str) -> std::io::Result<()> {
    write_private(&removed_path(data_dir), node_id.as_bytes())
}

/// Whether the manager said `node_id` was removed.
pub fn is_removed(data_dir: &Path, node_id: &str) -> bool {
    std::fs::read(removed_path(data_dir)).is_ok_and(|b| b == node_id.as_bytes())
}

/// Forgets the removal mark, once a new identity is saved.
pub fn clear_removed(data_dir: &Path) {
    let _ = std::fs::remove_file(removed_path(data_dir));
}

/// Whether `join` may replace `existing`: when the manager removed it, or when told to.
pub fn may_replace(data_dir: &Path, existing: &NodeIdentity, force: bool) -> Result<(), AgentError> {
    if force || is_removed(data_dir, &existing.node_id) {
        return Ok(());
    }
    Err(AgentError::AlreadyJoined { node_id: existing.node_id.clone(), dir: agent_dir(data_dir) })
}

/// Everything the agent needs to reconnect without a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// Node ID assigned by the manager.
    pub node_id: String,
    /// `IP:PORT` of the manager.
    pub manager_addr: String,
    /// Cluster CAs, PEM: one, or two during a CA rotation.
    pub ca_pem: String,
    /// Node certificate, PEM.
    pub cert_pem: String,
    /// Node key, PEM (generated on this board, never sent).
    pub key_pem: String,
    /// Hostname given at join (`--hostname`), if any.
    pub hostname: Option<String>,
    /// Advertised address given at join, if any.
    pub advertise_addr: Option<String>,
    /// Labels given at join.
    pub labels: Vec<String>,
    /// The latest manager time this board has seen (ms since the Unix epoch, kept to the
    /// day): a board whose clock is behind checks the manager's certificate's expiry
    /// against this at least (see `shoal_link::tls`).
    #[serde(default)]
    pub manager_time_ms: u64,
}

impl NodeIdentity {
    /// What a board knows of itself before it joins: what it was given on the command
    /// line, which `session::join` completes with what the manager issues.
    pub fn unjoined(hostname: Option<String>, advertise_addr: Option<String>, labels: Vec<String>) -> Self {
        Self {
            node_id: String::new(),
            manager_addr: String::new(),
            ca_pem: String::new(),
            cert_pem: String::new(),
            key_pem: String::new(),
            hostname,
            advertise_addr,
            labels,
            manager_time_ms: 0,
        }
    }

    /// Loads the identity, or `None` when the board never joined.
    pub fn load(data_dir: &Path) -> Result<Option<Self>, AgentError> {
        let path = identity_path(data_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| AgentError::BadIdentity(path, e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Saves the identity atomically.
    pub fn save(&self, data_dir: &Path) -> Result<(), AgentError> {
        std::fs::create_dir_all(agent_dir(data_dir))?;
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| AgentError::BadIdentity(identity_path(data_dir), e.to_string()))?;
        write_private(&identity_path(data_dir), &json)?;
        Ok(())
    }

    /// TLS settings for sessions: trust the cluster CA, present the node certificate.
    pub fn tls(&self, data_dir: &Path, idle_timeout: std::time::Duration) -> Result<ClientTls, AgentError> {
        let bad = |e: String| AgentError::BadIdentity(identity_path(data_dir), e);
        let cas = pem_ders(&self.ca_pem).map_err(|e| bad(e.to_string()))?;
        let cert = pem_der(&self.cert_pem).map_err(|e| bad(e.to_string()))?;
        let key = rcgen::KeyPair::from_pem(&self.key_pem).map_err(|e| bad(e.to_string()))?;
        let identity = Identity {
            chain: vec![CertificateDer::from(cert)],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        };
        let cas = cas.into_iter().map(CertificateDer::from).collect();
        ClientTls::new(Trust::Bundle { cas, floor_ms: self.manager_time_ms }, Some(identity), idle_timeout)
            .map_err(|e| bad(e.to_string()))
    }
}

/// A fresh key pair and a certificate request for it.
pub fn key_and_csr() -> Result<(rcgen::KeyPair, Vec<u8>), rcgen::Error> {
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    Ok((key, csr.der().to_vec()))
}

#[cfg(test)]
mod removal_tests {
    use super::*;

    fn identity(id: &str) -> NodeIdentity {
        NodeIdentity {
            node_id: id.into(),
            manager_addr: "10.0.0.1:4242".into(),
            ca_pem: String::new(),
            cert_pem: String::new(),
            key_pem: String::new(),
            hostname: None,
            advertise_addr: None,
            labels: Vec::new(),
            manager_time_ms: 0,
        }
    }

    #[test]
    fn join_replaces_an_identity_only_when_the_manager_removed_it_or_when_forced() {
        let dir = std::env::temp_dir().join(format!("shoal-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(agent_dir(&dir)).unwrap();
        let live = identity("node-a");
        let e = may_replace(&dir, &live, false).unwrap_err().to_string();
        assert!(e.contains("shoal-agent run") && e.contains("join --force"), "{e}");
        assert!(may_replace(&dir, &live, true).is_ok());
        // Removed: `join` goes ahead without --force, and only for that node.
        mark_removed(&dir, "node-a").unwrap();
        assert!(may_replace(&dir, &live, false).is_ok());
        assert!(may_replace(&dir, &identity("node-b"), false).is_err());
        clear_removed(&dir);
        assert!(may_replace(&dir, &live, false).is_err());
        let removed = AgentError::Removed { node_id: "node-a".into(), dir: agent_dir(&dir) }.to_string();
        assert!(removed.contains("join it again with `shoal-agent join --token TOKEN MANAGER`"), "{removed}");
        assert!(!removed.contains("shoal-agent run"), "{removed}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
