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

/// Writes `bytes` to `path`, readable by the owner only, all or nothing.
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
    std::fs::rename(&tmp, path)?;
    // Make the rename itself durable.
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
