//! `shoal image load` on the manager: an uploaded OCI image archive read by
//! `shoal_oci::archive` (the same reader a board's side-load uses) into a staging area
//! of the blob store, and turned into image records. Only after the whole archive is
//! verified may the caller commit the staged blobs and records: a refused archive
//! leaves nothing in the store. It writes no records itself.

use std::path::Path;

pub use shoal_oci::archive::MAX_IMAGES_PER_ARCHIVE;
pub use shoal_oci::ArchiveError as ImportError;
use shoal_oci::StagingDir;

use super::blobs::BlobStore;
use super::ImageRecord;

/// A verified archive: its images and their blobs, staged but not yet in the store.
#[derive(Debug)]
pub struct Imported {
    /// The images, in `index.json` order (a reference named twice keeps the last).
    pub images: Vec<ImageRecord>,
    /// Their blobs, to commit with [`BlobStore::commit`].
    pub staging: StagingDir,
}

/// Imports the archive at `path` into a staging area of `store`, verifying everything.
pub fn import(path: &Path, store: &BlobStore) -> Result<Imported, ImportError> {
    let mut staging = store.staging()?;
    let loaded_at_ms = shoal_link::wall_ms();
    let images = shoal_oci::archive::read_file(path, &mut staging)?
        .into_iter()
        .map(|i| ImageRecord {
            reference: i.reference,
            digest: i.digest,
            platforms: i.platforms,
            size: i.size,
            blobs: i.blobs,
            loaded_at_ms,
        })
        .collect();
    Ok(Imported { images, staging })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use shoal_oci::testing::{cases, Expect};

    use super::*;

    /// The table `shoal-agent image load` runs too: what the manager accepts and why it
    /// refuses is exactly what the shared reader says, and a refused archive leaves the
    /// blob store empty.
    #[test]
    fn the_shared_archive_table_holds_for_image_load() {
        let dir = std::env::temp_dir().join(format!("shoal-archive-{}", shoal_proto::hex(&shoal_link::random::<6>())));
        let store = BlobStore::open(&dir).unwrap();
        let path = dir.join("in.tar");
        for case in cases() {
            std::fs::write(&path, &case.archive).unwrap();
            let reader = shoal_oci::archive::read_file(&path, &mut StagingDir::create(dir.join("ref")).unwrap());
            match (&case.expect, import(&path, &store)) {
                (Expect::Loads(refs), Ok(imported)) => {
                    let got: Vec<&str> = imported.images.iter().map(|i| i.reference.as_str()).collect();
                    assert_eq!(got, *refs, "{}", case.name);
                    let used: HashSet<String> = imported.images.iter().flat_map(|i| i.blobs.clone()).collect();
                    store.commit(&imported.staging, &used).unwrap();
                    for digest in &used {
                        assert!(store.size(digest).unwrap().is_some(), "{}: {digest} not committed", case.name);
                    }
                    store.gc(&HashSet::new()).unwrap();
                }
                (Expect::Refused(why), Err(e)) => {
                    assert!(e.is_bad_archive() && e.to_string().contains(why), "{}: {e}", case.name);
                    assert_eq!(
                        e.to_string(),
                        reader.unwrap_err().to_string(),
                        "{}: not the reader's reason",
                        case.name
                    );
                }
                (expect, got) => panic!("{}: expected {expect:?}, got {got:?}", case.name),
            }
            let blobs = std::fs::read_dir(dir.join("blobs/sha256")).unwrap().count();
            let tmp = std::fs::read_dir(store.tmp_dir()).unwrap().count();
            assert_eq!((blobs, tmp), (0, 0), "{}: files left behind", case.name);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
