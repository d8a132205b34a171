//! Side-loading: images from an OCI archive (an OCI image layout in a tar, as
//! `images/build.sh` makes) on the board itself, for a board that must run something
//! before it can reach a manager, or one fed by a USB stick. `shoal-agent image load`.
//!
//! The archive is unpacked into a scratch directory inside the store (only
//! `oci-layout`, `index.json` and `blobs/sha256/<hex>`; anything else is refused), then
//! each image it names goes through the same path as a fetch from the manager: only
//! this board's platform, every digest verified, layers unpacked, blobs dropped.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use shoal_proto::{images::normalize_ref, WantedImage};

use super::digest::{self, Sha256};
use super::fetch::{sync_image, BlobSource, FetchError, FetchedBlob};
use super::store::{ImageRecord, ImageStore, StoreError};

/// Why an archive could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The file could not be read.
    #[error("cannot read archive {path}: {source}")]
    Io {
        /// The archive.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not an OCI archive, or one with unexpected content.
    #[error("{0} is not a usable OCI archive: {1}")]
    Malformed(PathBuf, String),
    /// An image in it failed (corrupt blob, no manifest for this board, bad layer).
    #[error("{0}")]
    Image(#[from] FetchError),
}

/// An OCI image layout on disk, as a blob source.
pub struct LayoutSource {
    dir: PathBuf,
}

impl BlobSource for LayoutSource {
    async fn fetch(
        &self,
        store: &ImageStore,
        digest: &str,
        expected_size: Option<u64>,
    ) -> Result<FetchedBlob, FetchError> {
        let hex = digest::hex(digest)?;
        if store.has_verified_blob(digest)? {
            return Ok(FetchedBlob { path: store.blob_path(digest)?, transferred: 0 });
        }
        let missing = |detail: String| FetchError::Transfer { digest: digest.to_owned(), detail };
        let source = self.dir.join("blobs/sha256").join(hex);
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

/// Loads every image of the archive at `path` that has this board's platform, returning
/// each reference with its record.
pub async fn load(store: &ImageStore, path: &Path) -> Result<Vec<(String, ImageRecord)>, ArchiveError> {
    let scratch = store.root().join(format!("load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let result = async {
        extract(path, &scratch)?;
        let wanted = references(path, &scratch)?;
        let source = LayoutSource { dir: scratch.clone() };
        let mut loaded = Vec::new();
        for w in wanted {
            let record = sync_image(&source, store, &w).await?;
            loaded.push((w.reference.to_string(), record));
        }
        Ok(loaded)
    }
    .await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Unpacks the layout's files, refusing anything but the layout's own names.
fn extract(path: &Path, dest: &Path) -> Result<(), ArchiveError> {
    let io = |e: std::io::Error| ArchiveError::Io { path: path.to_owned(), source: e };
    let bad = |m: String| ArchiveError::Malformed(path.to_owned(), m);
    std::fs::create_dir_all(dest.join("blobs/sha256")).map_err(io)?;
    let mut archive = tar::Archive::new(std::fs::File::open(path).map_err(io)?);
    for entry in archive.entries().map_err(io)? {
        // tar's own message quotes the bad header bytes: say it plainly instead.
        let mut entry = entry.map_err(|_| bad("not a tar archive, or a truncated one".into()))?;
        let name = entry.path().map_err(io)?.into_owned();
        let parts: Vec<String> = name
            .components()
            .filter_map(|c| match c {
                Component::Normal(p) => Some(p.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        if entry.header().entry_type().is_dir() {
            continue;
        }
        let target = match parts.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["oci-layout"] => dest.join("oci-layout"),
            ["index.json"] => dest.join("index.json"),
            ["blobs", "sha256", hex] if digest::hex(&format!("sha256:{hex}")).is_ok() => {
                dest.join("blobs/sha256").join(hex)
            }
            _ => return Err(bad(format!("unexpected entry {}", name.display()))),
        };
        if !entry.header().entry_type().is_file() {
            return Err(bad(format!("{} is not a regular file", name.display())));
        }
        let mut out = std::fs::File::create(&target).map_err(io)?;
        std::io::copy(&mut entry, &mut out).map_err(io)?;
    }
    Ok(())
}

/// The images `index.json` names, by their `org.opencontainers.image.ref.name` (or
/// containerd's `io.containerd.image.name`) annotation.
fn references(path: &Path, layout: &Path) -> Result<Vec<WantedImage>, ArchiveError> {
    let bad = |m: String| ArchiveError::Malformed(path.to_owned(), m);
    let text = std::fs::read(layout.join("index.json")).map_err(|_| bad("no index.json".into()))?;
    let index: serde_json::Value = serde_json::from_slice(&text).map_err(|e| bad(format!("index.json: {e}")))?;
    let manifests = index["manifests"].as_array().ok_or_else(|| bad("index.json lists no manifests".into()))?;
    let mut out = Vec::new();
    for m in manifests {
        let digest = m["digest"].as_str().ok_or_else(|| bad("a descriptor without a digest".into()))?;
        let annotations = &m["annotations"];
        let name = annotations["io.containerd.image.name"]
            .as_str()
            .or_else(|| annotations["org.opencontainers.image.ref.name"].as_str())
            .ok_or_else(|| bad(format!("image {digest} has no reference annotation")))?;
        out.push(WantedImage {
            reference: shoal_proto::text(&normalize_ref(name)).map_err(|e| bad(format!("reference {name:?}: {e}")))?,
            digest: shoal_proto::text(digest).map_err(|e| bad(format!("digest {digest:?}: {e}")))?,
        });
    }
    if out.is_empty() {
        return Err(bad("index.json lists no images".into()));
    }
    Ok(out)
}
