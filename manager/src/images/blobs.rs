//! The manager's content-addressed blob store: `<data-dir>/manager/blobs/sha256/<hex>`.
//! It stores and serves bytes by digest and collects what no image uses; it does not
//! know what a manifest is (see `shoal_oci::archive`).
//!
//! Only names that pass `shoal_proto::images::sha256_hex` ever become paths, so a digest
//! from the wire or an archive can't point outside the store. New blobs are written into
//! a staging directory on the same file system and renamed into place once a whole
//! import has been verified, so a refused import leaves nothing behind.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use shoal_oci::{ArchiveError, StagingDir};
use shoal_proto::images::sha256_hex;

/// Blob store failures.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The digest is not `sha256:<64 lowercase hex>`.
    #[error("invalid digest {0:?}: expected sha256: and 64 lowercase hex characters")]
    InvalidDigest(String),
    /// No blob with that digest.
    #[error("no blob {0} in the manager's store")]
    NotFound(String),
    /// The requested offset lies beyond the blob's end.
    #[error("offset {offset} is beyond the end of blob {digest} ({size} bytes)")]
    OffsetBeyondEnd {
        /// The blob.
        digest: String,
        /// Requested offset.
        offset: u64,
        /// Its size.
        size: u64,
    },
    /// File system trouble.
    #[error("blob store {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BlobError + '_ {
    move |source| BlobError::Io { path: path.to_owned(), source }
}

/// The blob store on disk.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Opens (creating if needed) the store under the manager's directory, removing
    /// staging directories a crash may have left.
    pub fn open(manager_dir: &Path) -> Result<Self, BlobError> {
        let root = manager_dir.join("blobs");
        let store = Self { root };
        for dir in [store.sha_dir(), store.tmp_dir()] {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        let tmp = store.tmp_dir();
        for entry in std::fs::read_dir(&tmp).map_err(io(&tmp))?.flatten() {
            let p = entry.path();
            let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        }
        Ok(store)
    }

    fn sha_dir(&self) -> PathBuf {
        self.root.join("sha256")
    }

    /// Scratch space on the store's file system (uploads, staging), emptied at open.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Path of a blob, for a well-formed digest only.
    pub fn path(&self, digest: &str) -> Result<PathBuf, BlobError> {
        let hex = sha256_hex(digest).ok_or_else(|| BlobError::InvalidDigest(digest.to_owned()))?;
        Ok(self.sha_dir().join(hex))
    }

    /// Size of a stored blob, if present.
    pub fn size(&self, digest: &str) -> Result<Option<u64>, BlobError> {
        let path = self.path(digest)?;
        match std::fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Opens a blob positioned at `offset`, with its total size.
    pub fn open_at(&self, digest: &str, offset: u64) -> Result<(File, u64), BlobError> {
        let path = self.path(digest)?;
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BlobError::NotFound(digest.to_owned())),
            Err(e) => return Err(io(&path)(e)),
        };
        let size = file.metadata().map_err(io(&path))?.len();
        if offset > size {
            return Err(BlobError::OffsetBeyondEnd { digest: digest.to_owned(), offset, size });
        }
        file.seek(SeekFrom::Start(offset)).map_err(io(&path))?;
        Ok((file, size))
    }

    /// Where `image pull` keeps blobs as they arrive (`<hex>.partial`, resumable) and
    /// once verified (`<hex>`); not emptied at open, so a pull resumes after a restart.
    pub fn pull_dir(&self) -> PathBuf {
        self.root.join("pull")
    }

    /// Moves a blob the caller verified (a pull's) into the store; one already there is
    /// kept.
    pub fn adopt(&self, from: &Path, digest: &str) -> Result<(), BlobError> {
        let target = self.path(digest)?;
        if target.exists() {
            let _ = std::fs::remove_file(from);
            return Ok(());
        }
        std::fs::rename(from, &target).map_err(io(from))?;
        if let Ok(d) = File::open(self.sha_dir()) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// A fresh staging area for one import, on the store's file system so a commit is
    /// a rename.
    pub fn staging(&self) -> Result<StagingDir, ArchiveError> {
        let dir = self.tmp_dir().join(format!("stage-{}", shoal_proto::hex(&shoal_link::random::<8>())));
        StagingDir::create(dir.clone()).map_err(|source| ArchiveError::Staging { path: dir, source })
    }

    /// Moves the listed staged blobs into the store (a blob already there is kept: same
    /// name, same content). Unlisted staged blobs are dropped with the staging area.
    pub fn commit(&self, staging: &StagingDir, digests: &HashSet<String>) -> Result<(), BlobError> {
        for digest in digests {
            let target = self.path(digest)?;
            if target.exists() {
                continue;
            }
            let from = staging.path(digest).ok_or_else(|| BlobError::NotFound(digest.clone()))?;
            std::fs::rename(&from, &target).map_err(io(&from))?;
        }
        // Make the renames durable before the records that point at them are written.
        if let Ok(d) = File::open(self.sha_dir()) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Removes every blob not in `keep` (digests), returning how many went.
    pub fn gc(&self, keep: &HashSet<String>) -> Result<usize, BlobError> {
        let dir = self.sha_dir();
        let mut removed = 0;
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&format!("sha256:{name}")) {
                let p = entry.path();
                std::fs::remove_file(&p).map_err(io(&p))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn digest_of(data: &[u8]) -> String {
        shoal_oci::digest::of(data)
    }

    #[test]
    fn blobs_are_staged_verified_committed_served_and_collected() {
        let dir = std::env::temp_dir().join(format!("shoal-blobs-{}", shoal_proto::hex(&shoal_link::random::<6>())));
        let store = BlobStore::open(&dir).unwrap();
        let data = b"hello blobs".to_vec();
        let d = digest_of(&data);
        let mut staging = store.staging().unwrap();
        let hex_part = sha256_hex(&d).unwrap().to_owned();
        assert_eq!(staging.add(&hex_part, &mut &data[..]).unwrap(), (true, 11));
        assert_eq!(store.size(&d).unwrap(), None, "nothing is in the store before commit");
        store.commit(&staging, &HashSet::from([d.clone()])).unwrap();
        drop(staging);
        let (mut f, size) = store.open_at(&d, 6).unwrap();
        let mut rest = String::new();
        f.read_to_string(&mut rest).unwrap();
        assert_eq!((size, rest.as_str()), (11, "blobs"));
        assert!(matches!(store.open_at(&d, 12), Err(BlobError::OffsetBeyondEnd { .. })));
        assert!(matches!(store.open_at(&digest_of(b"x"), 0), Err(BlobError::NotFound(_))));
        assert!(matches!(store.path("sha256:../../etc/passwd"), Err(BlobError::InvalidDigest(_))));
        assert_eq!(store.gc(&HashSet::from([d.clone()])).unwrap(), 0);
        assert_eq!(store.gc(&HashSet::new()).unwrap(), 1);
        assert_eq!(store.size(&d).unwrap(), None);
        assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0, "staging is removed on drop");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
