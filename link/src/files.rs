//! The two file habits both sides share: PEM for certificates kept on disk, and private
//! files written durably (temporary file, fsync, rename) so a crash or power cut never
//! leaves a half-written credential, on a laptop or an SD card.

use std::io::Write;
use std::path::Path;

/// PEM-encodes a DER certificate.
pub fn cert_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

/// Decodes the first PEM block of `text`.
pub fn pem_der(text: &str) -> Result<Vec<u8>, pem::PemError> {
    Ok(pem::parse(text)?.into_contents())
}

/// Decodes every PEM block of `text` (a trust bundle holds one CA, or two during a CA
/// rotation); at least one.
pub fn pem_ders(text: &str) -> Result<Vec<Vec<u8>>, pem::PemError> {
    let all: Vec<Vec<u8>> = pem::parse_many(text)?.into_iter().map(pem::Pem::into_contents).collect();
    if all.is_empty() {
        return Err(pem::PemError::MalformedFraming);
    }
    Ok(all)
}

/// PEM-encodes several DER certificates, one block after another.
pub fn certs_pem<'a>(ders: impl IntoIterator<Item = &'a [u8]>) -> String {
    ders.into_iter().map(cert_pem).collect()
}

/// Writes `bytes` to `path`, readable by the owner only, all or nothing: after a crash
/// or power cut at any point the file holds either its old content or `bytes`. On
/// failure (a full disk) the temporary file is removed, so a failed write costs no space.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace_private(path, bytes, true)?;
    sync_parent(path);
    Ok(())
}

/// As [`write_private`], all or nothing for any reader, but not fsynced: for files whose
/// content a power cut makes moot anyway, where the syncs' cost is the point (the agent's
/// per-container state files, written in every container's start-up).
pub fn write_private_unsynced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace_private(path, bytes, false)
}

/// A temporary file beside `path`, written (and synced when `sync`), renamed over it;
/// removed again when any step fails.
fn replace_private(path: &Path, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let written = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        if sync {
            // The data must be on disk before the rename publishes it.
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Makes a rename or creation in `path`'s directory durable. Best effort: a filesystem
/// that cannot sync a directory (some FUSE ones) still renamed atomically.
pub fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = std::env::temp_dir().join(format!("shoal-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        write_private(&path, b"old").unwrap();
        // A directory where the rename must land makes the last step fail.
        let blocked = dir.join("blocked.json");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("x"), b"x").unwrap();
        assert!(write_private(&blocked, b"new").is_err());
        assert!(!dir.join("blocked.tmp").exists(), "the temporary file is removed");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
