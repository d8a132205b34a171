//! Side-loading: images from an OCI archive on the board itself, for a board that must
//! run something before it can reach a manager, or one fed by a USB stick.
//! `shoal-agent image load`.
//!
//! The archive is read by `shoal_oci::archive`, the reader `shoal image load` uses on the
//! manager, so a board accepts exactly the archives the manager accepts (plain or
//! gzipped tar, the same naming rule) and refuses the others for the same reason. Its
//! blobs are verified into a staging directory inside the store's `tmp/` (emptied at
//! open, so a crash leaves nothing), then each image goes through the same path as a
//! fetch from the manager: only this board's platform, every digest verified again,
//! layers unpacked, blobs dropped.

use std::io::Read;
use std::path::Path;

use shoal_oci::{digest, Sha256, StagingDir};
use shoal_proto::WantedImage;

use super::fetch::{sync_image, BlobSource, FetchError, FetchedBlob};
use super::store::{ImageRecord, ImageStore, StoreError};

/// Why an archive could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive is refused (the same reasons as `shoal image load`), or the staging
    /// area could not be written.
    #[error(transparent)]
    Archive(#[from] shoal_oci::ArchiveError),
    /// An image in it failed on this board (no manifest for this board, bad layer).
    #[error("{0}")]
    Image(#[from] FetchError),
}

/// A verified staging directory, as a blob source.
struct LayoutSource<'a> {
    staging: &'a StagingDir,
}

impl BlobSource for LayoutSource<'_> {
    async fn fetch(
        &self,
        store: &std::sync::Arc<ImageStore>,
        digest: &str,
        expected_size: Option<u64>,
    ) -> Result<FetchedBlob, FetchError> {
        digest::hex(digest)?;
        if store.has_verified_blob(digest)? {
            return Ok(FetchedBlob { path: store.blob_path(digest)?, transferred: 0 });
        }
        let missing = |detail: String| FetchError::Transfer { digest: digest.to_owned(), detail };
        let source = self.staging.path(digest).ok_or_else(|| missing("not in the archive".into()))?;
        let mut input = std::fs::File::open(&source).map_err(|e| missing(format!("not in the archive: {e}")))?;
        let partial = store.partial_path(digest)?;
        let io = |e: std::io::Error| FetchError::Store(StoreError::Io { path: partial.clone(), source: e });
        let mut out = std::fs::File::create(&partial).map_err(io)?;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = input.read(&mut buf).map_err(|e| missing(e.to_string()))?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            std::io::Write::write_all(&mut out, &buf[..n]).map_err(io)?;
        }
        let size = hash.len();
        if expected_size.is_some_and(|e| e != size) || hash.finish() != digest {
            store.discard_partial(digest)?;
            return Err(FetchError::Corrupt { digest: digest.to_owned() });
        }
        Ok(FetchedBlob { path: store.commit_partial(digest)?, transferred: size })
    }
}

/// Loads every image of the archive at `path` (each must have this board's platform),
/// returning each reference with its record.
pub async fn load(store: &std::sync::Arc<ImageStore>, path: &Path) -> Result<Vec<(String, ImageRecord)>, ArchiveError> {
    let dir = store.root().join("tmp").join(format!("load-{}", shoal_proto::hex(&shoal_link::random::<8>())));
    let mut staging = StagingDir::create(dir.clone())
        .map_err(|source| shoal_oci::ArchiveError::Staging { path: dir.clone(), source })?;
    let images = shoal_oci::archive::read_file(path, &mut staging)?;
    let source = LayoutSource { staging: &staging };
    let mut loaded = Vec::new();
    for image in images {
        // The reader bounds references and checks digests, so these fit.
        let wanted = WantedImage {
            reference: shoal_proto::text_lossy(&image.reference),
            digest: shoal_proto::text_lossy(&image.digest),
        };
        let record = sync_image(&source, store, &wanted).await?;
        loaded.push((image.reference, record));
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use shoal_oci::testing::{cases, Expect};

    use super::*;

    /// The table `shoal image load` runs too: a board side-loads exactly what the
    /// manager accepts, refuses the rest with the reader's own reason, and a refused
    /// archive leaves the image store as it was.
    #[tokio::test]
    async fn the_shared_archive_table_holds_for_side_load() {
        let base =
            std::env::temp_dir().join(format!("shoal-sideload-{}", shoal_proto::hex(&shoal_link::random::<6>())));
        for (n, case) in cases().into_iter().enumerate() {
            let dir = base.join(n.to_string());
            let store = std::sync::Arc::new(ImageStore::open(&dir.join("images")).unwrap());
            let path = dir.join("in.tar");
            std::fs::write(&path, &case.archive).unwrap();
            let reader = shoal_oci::archive::read_file(&path, &mut StagingDir::create(dir.join("ref")).unwrap());
            match (&case.expect, load(&store, &path).await) {
                (Expect::Loads(refs), Ok(loaded)) => {
                    let got: Vec<&str> = loaded.iter().map(|(r, _)| r.as_str()).collect();
                    assert_eq!(got, *refs, "{}", case.name);
                    for r in refs {
                        assert!(store.image(r).is_some(), "{}: {r} is not in the store", case.name);
                    }
                }
                (Expect::Refused(why), Err(ArchiveError::Archive(e))) => {
                    assert!(e.is_bad_archive() && e.to_string().contains(why), "{}: {e}", case.name);
                    assert_eq!(
                        e.to_string(),
                        reader.unwrap_err().to_string(),
                        "{}: not the reader's reason",
                        case.name
                    );
                    assert!(store.held().is_empty(), "{}: a refused archive left an image", case.name);
                }
                (expect, got) => panic!("{}: expected {expect:?}, got {got:?}", case.name),
            }
            let left = std::fs::read_dir(dir.join("images/tmp")).unwrap().count();
            assert_eq!(left, 0, "{}: the staging area was left behind", case.name);
        }
        let _ = std::fs::remove_dir_all(&base);
    }
}
