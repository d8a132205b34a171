//! The node's identity on disk: its ID, key, certificate, the cluster CA and where the
//! manager is. One file, written once at join (all or nothing), read at every start:
//! gentle on SD cards.

use std::path::{Path, PathBuf};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use shoal_link::files::{pem_der, write_private};
use shoal_link::{ClientTls, Identity, Trust};

use crate::AgentError;

/// The agent's directory inside the data directory.
pub fn agent_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("agent")
}

fn identity_path(data_dir: &Path) -> PathBuf {
    agent_dir(data_dir).join("identity.json")
}

/// Everything the agent needs to reconnect without a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// Node ID assigned by the manager.
    pub node_id: String,
    /// `IP:PORT` of the manager.
    pub manager_addr: String,
    /// Cluster CA, PEM.
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
}

impl NodeIdentity {
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
        let ca = pem_der(&self.ca_pem).map_err(|e| bad(e.to_string()))?;
        let cert = pem_der(&self.cert_pem).map_err(|e| bad(e.to_string()))?;
        let key = rcgen::KeyPair::from_pem(&self.key_pem).map_err(|e| bad(e.to_string()))?;
        let identity = Identity {
            chain: vec![CertificateDer::from(cert)],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        };
        ClientTls::new(Trust::Ca(CertificateDer::from(ca)), Some(identity), idle_timeout)
            .map_err(|e| bad(e.to_string()))
    }
}

/// A fresh key pair and a certificate request for it.
pub fn key_and_csr() -> Result<(rcgen::KeyPair, Vec<u8>), rcgen::Error> {
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    Ok((key, csr.der().to_vec()))
}
