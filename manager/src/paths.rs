//! Where the manager keeps its files under the data directory, and the credentials file
//! the CLI uses to reach it.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default data directory, as `--data-dir` and `SHOAL_DATA_DIR` override it.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/shoal";

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

/// PEM-encodes a DER certificate.
pub fn cert_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

/// Decodes the first PEM block of `text`.
pub fn pem_der(text: &str) -> Result<Vec<u8>, pem::PemError> {
    Ok(pem::parse(text)?.into_contents())
}

/// Writes `bytes` to `path` readable by the owner only, through a temporary file and a
/// rename, so a crash never leaves a half-written file.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}
