//! Where the manager keeps its files under the data directory, and the credentials file
//! the CLI uses to reach it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The manager's directory inside a data directory.
pub fn manager_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("manager")
}

/// The redb state file.
pub fn store_path(data_dir: &Path) -> PathBuf {
    manager_dir(data_dir).join("state.redb")
}

/// The CLI's credentials.
pub fn admin_path(data_dir: &Path) -> PathBuf {
    manager_dir(data_dir).join("admin.json")
}

/// What the CLI needs to talk to the manager: where it is, the CA to trust, and the
/// administrator certificate to present. Copy this file to manage the cluster from
/// another machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminCredentials {
    /// `IP:PORT` of the manager.
    pub manager_addr: String,
    /// Cluster CA, PEM.
    pub ca_pem: String,
    /// Administrator certificate, PEM.
    pub cert_pem: String,
    /// Administrator key, PEM.
    pub key_pem: String,
}

pub use shoal_link::files::{cert_pem, pem_der, write_private};
