//! The agent's image store, on the board's disk (`<data-dir>/agent/images/`):
//!
//! ```text
//! blobs/sha256/<hex>   verified blobs: index, manifest and config JSON are kept;
//!                      layer blobs only until unpacked
//! partial/<hex>        downloads in progress, resumed from their length
//! layers/<hex>/        unpacked layers (named by the layer blob's digest), each one
//!                      read-only overlayfs lowerdir shared by every container
//! tmp/                 layers being unpacked and layers being deleted
//! images.json          the images held, written atomically
//! ```
//!
//! Crash safety comes from ordering, not from journals: a layer is unpacked in `tmp/`
//! and renamed into `layers/` only when complete (after a `syncfs`); an image is
//! recorded in `images.json` only when all its layers are there; a deleted image leaves
//! `images.json` first, and its layers are renamed into `tmp/` before being removed, so
//! nothing half-written or half-deleted ever looks complete. `tmp/` is emptied at open.
//! A blob's bytes are fsynced before it is renamed into `blobs/`, and every file the
//! store publishes by rename has its directory fsynced after, so a power cut never
//! leaves a name pointing at bytes that did not reach the disk. Even so, a blob found in
//! `blobs/` is re-hashed the first time this process uses it ([`ImageStore::has_verified_blob`],
//! [`ImageStore::read_json_blob`]): blobs written by an older agent, or by a disk that
//! lies about fsync, are caught instead of trusted.
//!
//! It does no networking (see `fetch`) and knows nothing of containers: what is in use
//! is the caller's to say at `gc`.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use shoal_oci::digest::{self, DigestError, HashingReader};
use shoal_oci::spec::{ImageConfig, OciError};

/// JSON blobs (index, manifest, config) larger than this are refused: they are read
/// into memory, and real ones are a few KiB.
pub const MAX_JSON_BYTES: u64 = 4 << 20;

/// Store trouble.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The disk failed.
    #[error("image store: {}: {source} (is the disk full or read-only?)", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the filesystem said.
        source: io::Error,
    },
    /// `images.json` does not parse.
    #[error("image list {} is unreadable ({detail}): remove it and the agent fetches its images again", .path.display())]
    BadIndex {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// No such image on this node.
    #[error("image {0} is not on this node: the manager sends images a service needs; check `shoal image ls`")]
    NotHeld(String),
    /// A digest that cannot name a file.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// A stored JSON blob is too large to be what it claims.
    #[error(
        "blob {digest} is {size} bytes, more than the {MAX_JSON_BYTES} an image's JSON may have: the image is broken"
    )]
    JsonTooLarge {
        /// The blob.
        digest: String,
        /// Its size.
        size: u64,
    },
    /// A stored document does not parse.
    #[error(transparent)]
    Oci(#[from] OciError),
    /// A stored blob's bytes do not match its digest (a crash tore it); it was deleted.
    #[error("blob {0} on this board was damaged (power cut?) and was deleted: it is fetched again on the next try")]
    TornBlob(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

/// One image held: its names and the blobs it is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// References naming it (`demo/app:1.0`); may be empty when the reference moved to
    /// another image while a container still used this one.
    pub references: Vec<String>,
    /// Digest of the top-level index or manifest (what the manager names).
    pub digest: String,
    /// Digest of this platform's manifest (equal to `digest` for single-platform images).
    pub manifest: String,
    /// Digest of the image config.
    pub config: String,
    /// Layer blob digests, bottom first, as in the manifest; each is a directory in `layers/`.
    pub layers: Vec<String>,
}

impl ImageRecord {
    fn blobs(&self) -> [&str; 3] {
        [&self.digest, &self.manifest, &self.config]
    }

    fn digests_valid(&self) -> bool {
        self.blobs().into_iter().chain(self.layers.iter().map(String::as_str)).all(|d| digest::hex(d).is_ok())
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    version: u32,
    images: Vec<ImageRecord>,
}

/// What a garbage collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Top digests of the images no longer held.
    pub images: Vec<String>,
    /// Unpacked layers deleted.
    pub layers: usize,
    /// Blobs and partial downloads deleted.
    pub blobs: usize,
}

/// The image store. Cheap to share behind an `Arc`: every method takes `&self`.
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    records: Mutex<Vec<ImageRecord>>,
    /// Blobs whose bytes this process hashed (or wrote and verified) since it opened
    /// the store: only these are trusted without reading them again.
    verified: Mutex<BTreeSet<String>>,
}

impl ImageStore {
    /// Opens (creating) the store at `dir`, clears what an interrupted run left in
    /// `tmp/`, and forgets records whose files are gone.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        for sub in ["blobs/sha256", "partial", "layers", "tmp"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let tmp = dir.join("tmp");
        for entry in std::fs::read_dir(&tmp).map_err(io_err(&tmp))? {
            let path = entry.map_err(io_err(&tmp))?.path();
            remove_any(&path)?;
        }
        let store = Self { root: dir.to_owned(), records: Mutex::new(Vec::new()), verified: Mutex::default() };
        let index_path = store.index_path();
        let file: IndexFile = match std::fs::read(&index_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::BadIndex { path: index_path.clone(), detail: e.to_string() })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => IndexFile::default(),
            Err(e) => return Err(io_err(&index_path)(e)),
        };
        let total = file.images.len();
        let intact: Vec<ImageRecord> = file
            .images
            .into_iter()
            .filter(|r| {
                let ok = r.digests_valid()
                    // Re-hashed, not just present: they are a few KiB of JSON each.
                    && r.blobs().iter().all(|d| store.has_verified_blob(d).unwrap_or(false))
                    && r.layers.iter().all(|l| store.has_layer(l));
                if !ok {
                    warn!(image = %r.digest, "image files are missing from the store; forgetting it (it is fetched again if wanted)");
                }
                ok
            })
            .collect();
        let changed = intact.len() != total;
        *store.lock() = intact;
        if changed {
            store.save(&store.lock())?;
        }
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<ImageRecord>> {
        // A panic while holding the lock leaves the list as it was before that change:
        // each change builds the new list and then saves it.
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("images.json")
    }

    fn save(&self, records: &[ImageRecord]) -> Result<(), StoreError> {
        let file = IndexFile { version: 1, images: records.to_vec() };
        let json = serde_json::to_vec_pretty(&file)
            .map_err(|e| StoreError::BadIndex { path: self.index_path(), detail: e.to_string() })?;
        let path = self.index_path();
        shoal_link::files::write_private(&path, &json).map_err(io_err(&path))
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a verified blob lives.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        Ok(self.root.join("blobs/sha256").join(digest::hex(digest)?))
    }

    /// Where a download in progress lives.
    pub fn partial_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        Ok(self.root.join("partial").join(digest::hex(digest)?))
    }

    /// Where an unpacked layer lives (an overlayfs lowerdir).
    pub fn layer_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        Ok(self.root.join("layers").join(digest::hex(digest)?))
    }

    /// Whether a verified blob is stored.
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// Whether a layer is unpacked (only complete layers are ever in `layers/`).
    pub fn has_layer(&self, digest: &str) -> bool {
        self.layer_path(digest).is_ok_and(|p| p.is_dir())
    }

    /// Length of the partial download of `digest`, 0 when there is none.
    pub fn partial_len(&self, digest: &str) -> Result<u64, StoreError> {
        let p = self.partial_path(digest)?;
        match std::fs::metadata(&p) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    /// Deletes the partial download of `digest`, if any.
    pub fn discard_partial(&self, digest: &str) -> Result<(), StoreError> {
        let p = self.partial_path(digest)?;
        remove_any(&p)
    }

    /// Moves a verified partial download into `blobs/` (the caller verified it): its
    /// bytes are made durable first, so the name never outlives them after a power cut.
    pub fn commit_partial(&self, digest: &str) -> Result<PathBuf, StoreError> {
        let from = self.partial_path(digest)?;
        let to = self.blob_path(digest)?;
        std::fs::File::open(&from).and_then(|f| f.sync_all()).map_err(io_err(&from))?;
        std::fs::rename(&from, &to).map_err(io_err(&to))?;
        sync_dir(to.parent());
        self.verified_lock().insert(digest.to_owned());
        Ok(to)
    }

    fn verified_lock(&self) -> MutexGuard<'_, BTreeSet<String>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether blob `digest` is stored with the right bytes. A blob not verified by this
    /// process is hashed now; one that does not match (torn by a power cut) is deleted,
    /// so the caller fetches it again. Blocking: async callers with large blobs hash them
    /// in chunks themselves (see `fetch::fetch_blob`).
    pub fn has_verified_blob(&self, digest: &str) -> Result<bool, StoreError> {
        if !self.has_blob(digest) {
            return Ok(false);
        }
        if self.verified_lock().contains(digest) {
            return Ok(true);
        }
        let p = self.blob_path(digest)?;
        let actual = match std::fs::File::open(&p).and_then(|f| HashingReader::new(f).finish()) {
            Ok((d, _)) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err(&p)(e)),
        };
        self.check_blob(digest, &actual)
    }

    /// Whether this process already verified blob `digest`.
    pub fn is_verified(&self, digest: &str) -> bool {
        self.verified_lock().contains(digest)
    }

    /// Records that `digest`'s stored bytes hash to `actual`, deleting the blob if not
    /// (for callers that hash it themselves, e.g. without blocking an async runtime).
    pub fn check_blob(&self, digest: &str, actual: &str) -> Result<bool, StoreError> {
        if actual == digest {
            self.verified_lock().insert(digest.to_owned());
            return Ok(true);
        }
        warn!(%digest, %actual, "stored blob does not match its digest (torn by a crash?); deleting it to fetch it again");
        remove_any(&self.blob_path(digest)?)?;
        Ok(false)
    }

    /// Reads a stored JSON blob (index, manifest, config), checking its digest unless
    /// this process already did.
    pub fn read_json_blob(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        let p = self.blob_path(digest)?;
        let size = std::fs::metadata(&p).map_err(io_err(&p))?.len();
        if size > MAX_JSON_BYTES {
            return Err(StoreError::JsonTooLarge { digest: digest.to_owned(), size });
        }
        let bytes = std::fs::read(&p).map_err(io_err(&p))?;
        if !self.verified_lock().contains(digest) && !self.check_blob(digest, &digest::of(&bytes))? {
            return Err(StoreError::TornBlob(digest.to_owned()));
        }
        Ok(bytes)
    }

    /// Deletes a stored blob (a layer's, once unpacked: it is not needed again).
    pub fn remove_blob(&self, digest: &str) -> Result<(), StoreError> {
        self.verified_lock().remove(digest);
        remove_any(&self.blob_path(digest)?)
    }

    /// A fresh, empty directory to unpack the layer `digest` into, for [`Self::commit_layer`].
    pub fn begin_layer(&self, digest: &str) -> Result<PathBuf, StoreError> {
        let hex = digest::hex(digest)?;
        let nonce = u64::from_le_bytes(shoal_link::random::<8>());
        // Unique per attempt: an abandoned unpack still running must not share it.
        let p = self.root.join("tmp").join(format!("{hex}.{nonce:016x}"));
        std::fs::create_dir(&p).map_err(io_err(&p))?;
        Ok(p)
    }

    /// Makes an unpacked layer visible, all at once. If another attempt got there
    /// first, this one is discarded.
    pub fn commit_layer(&self, digest: &str, unpacked: &Path) -> Result<PathBuf, StoreError> {
        let to = self.layer_path(digest)?;
        // The rename must not reach the disk before the files it publishes.
        if let Ok(dir) = std::fs::File::open(unpacked) {
            let _ = rustix::fs::syncfs(&dir);
        }
        match std::fs::rename(unpacked, &to) {
            Ok(()) => {}
            Err(_) if to.is_dir() => remove_any(unpacked)?,
            Err(e) => return Err(io_err(&to)(e)),
        }
        sync_dir(to.parent());
        Ok(to)
    }

    /// Deletes an abandoned unpack directory.
    pub fn abandon_layer(&self, unpacked: &Path) -> Result<(), StoreError> {
        remove_any(unpacked)
    }

    /// Records that `reference` now names the complete image `record` describes (all
    /// its blobs and layers must be stored). A reference names one image: it is taken
    /// off any other record.
    pub fn record(&self, reference: &str, mut record: ImageRecord) -> Result<(), StoreError> {
        let reference = shoal_proto::images::normalize_ref(reference);
        let mut records = self.lock();
        let mut next: Vec<ImageRecord> = records.clone();
        for r in &mut next {
            r.references.retain(|x| *x != reference);
        }
        if let Some(existing) = next.iter_mut().find(|r| r.digest == record.digest) {
            existing.references.push(reference);
        } else {
            record.references = vec![reference];
            next.push(record);
        }
        self.save(&next)?;
        *records = next;
        Ok(())
    }

    /// Top digests of the images held, sorted.
    pub fn held(&self) -> Vec<String> {
        let set: BTreeSet<String> = self.lock().iter().map(|r| r.digest.clone()).collect();
        set.into_iter().collect()
    }

    /// Whether the image with this top digest is held complete.
    pub fn has(&self, top_digest: &str) -> bool {
        self.lock().iter().any(|r| r.digest == top_digest)
    }

    /// The image a reference (`demo/app:1.0`, `redis` = `redis:latest`) or a top digest names.
    pub fn image(&self, reference: &str) -> Option<ImageRecord> {
        let normalized = shoal_proto::images::normalize_ref(reference);
        let records = self.lock();
        records
            .iter()
            .find(|r| r.digest == reference)
            .or_else(|| records.iter().find(|r| r.references.contains(&normalized)))
            .cloned()
    }

    /// The image's unpacked layers in overlayfs `lowerdir` order: topmost layer first.
    pub fn lowerdirs(&self, reference: &str) -> Result<Vec<PathBuf>, StoreError> {
        let record = self.image(reference).ok_or_else(|| StoreError::NotHeld(reference.to_owned()))?;
        record.layers.iter().rev().map(|l| self.layer_path(l)).collect()
    }

    /// The image's parsed config (entrypoint, command, environment, user, ports).
    pub fn config(&self, reference: &str) -> Result<ImageConfig, StoreError> {
        let record = self.image(reference).ok_or_else(|| StoreError::NotHeld(reference.to_owned()))?;
        Ok(ImageConfig::parse(&self.read_json_blob(&record.config)?)?)
    }

    /// Deletes images whose top digest is neither `wanted` nor `in_use` (by a running
    /// container), then layers and blobs no remaining image needs. Files no record
    /// names (from an interrupted fetch) and partial downloads are only collected when
    /// every wanted image is held, since a later fetch may still resume or use them.
    pub fn gc(&self, wanted: &[String], in_use: &[String]) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let (removed, kept) = {
            let mut records = self.lock();
            let (kept, removed): (Vec<_>, Vec<_>) =
                records.iter().cloned().partition(|r| wanted.contains(&r.digest) || in_use.contains(&r.digest));
            if !removed.is_empty() {
                // The list goes first: an interrupted gc leaves files no record names,
                // never a record naming missing files.
                self.save(&kept)?;
                *records = kept.clone();
            }
            (removed, kept)
        };
        let keep_layers: BTreeSet<&str> = kept.iter().flat_map(|r| r.layers.iter().map(|l| &l[..])).collect();
        let keep_blobs: BTreeSet<&str> = kept.iter().flat_map(|r| r.blobs()).collect();
        for r in &removed {
            info!(image = %r.digest, references = ?r.references, "removing image no longer wanted");
            report.images.push(r.digest.clone());
        }
        let complete = wanted.iter().all(|w| kept.iter().any(|r| r.digest == *w));
        let removed_layers: BTreeSet<&str> = removed.iter().flat_map(|r| r.layers.iter().map(|l| &l[..])).collect();
        let removed_blobs: BTreeSet<&str> = removed.iter().flat_map(|r| r.blobs()).collect();

        for (hex, path) in self.list("layers")? {
            let digest = format!("sha256:{hex}");
            let orphan = !removed_layers.contains(&digest[..]);
            if !keep_layers.contains(&digest[..]) && (complete || !orphan) {
                // Out of `layers/` first, in one rename, then removed at leisure.
                let trash = self.root.join("tmp").join(format!("gc-{hex}"));
                std::fs::rename(&path, &trash).map_err(io_err(&path))?;
                remove_any(&trash)?;
                report.layers += 1;
            }
        }
        for (hex, path) in self.list("blobs/sha256")? {
            let digest = format!("sha256:{hex}");
            let orphan = !removed_blobs.contains(&digest[..]);
            if !keep_blobs.contains(&digest[..]) && (complete || !orphan) {
                remove_any(&path)?;
                report.blobs += 1;
            }
        }
        if complete {
            for (_, path) in self.list("partial")? {
                remove_any(&path)?;
                report.blobs += 1;
            }
        }
        Ok(report)
    }

    /// Entries of a store directory, with names that are digests' hex; anything else
    /// there (a stray file) is left alone.
    fn list(&self, sub: &str) -> Result<Vec<(String, PathBuf)>, StoreError> {
        let dir = self.root.join(sub);
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            if digest::hex(&format!("sha256:{name}")).is_ok() {
                out.push((name, entry.path()));
            }
        }
        Ok(out)
    }
}

/// Removes a file or a whole directory (without following symlinks in it); absent is fine.
fn remove_any(path: &Path) -> Result<(), StoreError> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Makes a rename in `dir` durable; best effort, as a lost rename only costs a re-fetch.
fn sync_dir(dir: Option<&Path>) {
    if let Some(d) = dir.and_then(|d| std::fs::File::open(d).ok()) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_oci::digest;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "shoal-store-{name}-{}-{}",
            std::process::id(),
            u64::from_le_bytes(shoal_link::random::<8>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn put_blob(store: &ImageStore, bytes: &[u8]) -> String {
        let d = digest::of(bytes);
        std::fs::write(store.partial_path(&d).unwrap(), bytes).unwrap();
        store.commit_partial(&d).unwrap();
        d
    }

    fn put_layer(store: &ImageStore, seed: &str) -> String {
        let d = digest::of(seed.as_bytes());
        let tmp = store.begin_layer(&d).unwrap();
        std::fs::write(tmp.join("file"), seed).unwrap();
        store.commit_layer(&d, &tmp).unwrap();
        d
    }

    /// A stored image with its own config and manifest and the given layers.
    fn put_image(store: &ImageStore, reference: &str, layers: &[&str]) -> ImageRecord {
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": { "Cmd": [format!("/bin/{reference}")] },
            "rootfs": { "type": "layers", "diff_ids": [] },
        });
        let config = put_blob(store, config.to_string().as_bytes());
        let layers: Vec<String> = layers.iter().map(|l| put_layer(store, l)).collect();
        let manifest = put_blob(store, format!("manifest of {reference} {config} {layers:?}").as_bytes());
        let record = ImageRecord { references: vec![], digest: manifest.clone(), manifest, config, layers };
        store.record(reference, record.clone()).unwrap();
        store.image(reference).unwrap()
    }

    #[test]
    fn a_torn_blob_is_caught_deleted_and_its_image_forgotten_at_open() {
        let dir = scratch("torn");
        let img = {
            let store = ImageStore::open(&dir).unwrap();
            put_image(&store, "demo/app:1.0", &["base"])
        };
        // A power cut kept the name but not all of the bytes (written before the fix, or
        // by a disk that lies about fsync).
        let config = ImageStore::open(&dir).unwrap().blob_path(&img.config).unwrap();
        let bytes = std::fs::read(&config).unwrap();
        std::fs::write(&config, &bytes[..bytes.len() / 2]).unwrap();
        let store = ImageStore::open(&dir).unwrap();
        assert!(store.image("demo/app:1.0").is_none(), "an image with a torn blob is not held");
        assert!(!config.exists(), "the torn blob is deleted, to be fetched again");
        // A blob that is present but unrecorded is re-hashed before it is trusted.
        let d = digest::of(b"a layer blob");
        std::fs::write(store.blob_path(&d).unwrap(), b"a layer bl").unwrap();
        assert!(store.has_blob(&d));
        assert!(!store.has_verified_blob(&d).unwrap());
        assert!(!store.has_blob(&d));
        let ok = put_blob(&store, b"a layer blob");
        assert!(store.has_verified_blob(&ok).unwrap());
        // And a torn JSON blob read directly is an error, not bad JSON handed on.
        let j = digest::of(b"{}");
        std::fs::write(store.blob_path(&j).unwrap(), b"{").unwrap();
        assert!(matches!(store.read_json_blob(&j), Err(StoreError::TornBlob(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_image_is_found_by_reference_and_digest_with_lowerdirs_topmost_first() {
        let dir = scratch("lookup");
        let store = ImageStore::open(&dir).unwrap();
        let img = put_image(&store, "demo/app:1.0", &["base", "middle", "top"]);
        assert!(store.has(&img.digest));
        assert_eq!(store.held(), vec![img.digest.clone()]);
        assert_eq!(store.image(&img.digest).unwrap().references, ["demo/app:1.0"]);
        let lower = store.lowerdirs("demo/app:1.0").unwrap();
        assert_eq!(lower.len(), 3);
        assert_eq!(std::fs::read_to_string(lower[0].join("file")).unwrap(), "top");
        assert_eq!(std::fs::read_to_string(lower[2].join("file")).unwrap(), "base");
        let config = store.config("demo/app:1.0").unwrap();
        assert_eq!(config.config.unwrap().cmd.unwrap(), ["/bin/demo/app:1.0"]);
        assert!(matches!(store.lowerdirs("other"), Err(StoreError::NotHeld(_))));
        // `redis` means `redis:latest`.
        put_image(&store, "redis", &["r"]);
        assert!(store.image("redis:latest").is_some());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn records_survive_a_reopen_and_broken_ones_are_forgotten() {
        let dir = scratch("reopen");
        let (a, b) = {
            let store = ImageStore::open(&dir).unwrap();
            (put_image(&store, "a:1", &["l1"]), put_image(&store, "b:1", &["l2"]))
        };
        std::fs::remove_dir_all(dir.join("layers").join(digest::hex(&b.layers[0]).unwrap())).unwrap();
        let store = ImageStore::open(&dir).unwrap();
        assert_eq!(store.held(), vec![a.digest.clone()]);
        assert!(store.image("b:1").is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_half_unpacked_layer_never_looks_complete() {
        let dir = scratch("half");
        let store = ImageStore::open(&dir).unwrap();
        let d = digest::of(b"layer");
        let tmp = store.begin_layer(&d).unwrap();
        std::fs::write(tmp.join("half"), "x").unwrap();
        assert!(!store.has_layer(&d));
        drop(store);
        // A crash here: the next open clears tmp/ and the layer is still absent.
        let store = ImageStore::open(&dir).unwrap();
        assert!(!tmp.exists());
        assert!(!store.has_layer(&d));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn gc_removes_unwanted_images_and_only_their_unshared_layers() {
        let dir = scratch("gc");
        let store = ImageStore::open(&dir).unwrap();
        let keep = put_image(&store, "keep:1", &["shared", "mine"]);
        let busy = put_image(&store, "busy:1", &["busy"]);
        let gone = put_image(&store, "gone:1", &["shared", "theirs"]);
        let report = store.gc(std::slice::from_ref(&keep.digest), std::slice::from_ref(&busy.digest)).unwrap();
        assert_eq!(report.images, vec![gone.digest.clone()]);
        assert_eq!(report.layers, 1, "only `theirs`: `shared` is still used");
        assert!(store.has_layer(&keep.layers[0]));
        assert!(!store.has_layer(&gone.layers[1]));
        assert!(!store.has_blob(&gone.config) && !store.has_blob(&gone.manifest));
        assert!(store.has_blob(&keep.config) && store.has_blob(&busy.config));
        let mut held = vec![keep.digest.clone(), busy.digest.clone()];
        held.sort();
        assert_eq!(store.held(), held);
        // The list on disk agrees.
        assert_eq!(ImageStore::open(&dir).unwrap().held(), held);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn gc_keeps_orphans_while_a_wanted_image_is_still_incomplete() {
        let dir = scratch("orphans");
        let store = ImageStore::open(&dir).unwrap();
        let held = put_image(&store, "held:1", &["h"]);
        // Left by an interrupted fetch of another wanted image.
        let orphan_layer = put_layer(&store, "fetched-before-the-crash");
        let orphan_blob = put_blob(&store, b"its manifest");
        std::fs::write(store.partial_path(&digest::of(b"half a layer")).unwrap(), b"half").unwrap();
        let incomplete = digest::of(b"wanted but not yet held");
        store.gc(&[held.digest.clone(), incomplete.clone()], &[]).unwrap();
        assert!(store.has_layer(&orphan_layer) && store.has_blob(&orphan_blob));
        assert_eq!(store.partial_len(&digest::of(b"half a layer")).unwrap(), 4);
        // Once everything wanted is held, they go.
        let report = store.gc(std::slice::from_ref(&held.digest), &[]).unwrap();
        assert_eq!(report.layers, 1);
        assert!(!store.has_layer(&orphan_layer) && !store.has_blob(&orphan_blob));
        assert_eq!(store.partial_len(&digest::of(b"half a layer")).unwrap(), 0);
        assert!(store.has(&held.digest));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_reference_names_one_image() {
        let dir = scratch("moved");
        let store = ImageStore::open(&dir).unwrap();
        let old = put_image(&store, "app:1", &["v1"]);
        let new = put_image(&store, "app:1", &["v2"]);
        assert_eq!(store.image("app:1").unwrap().digest, new.digest);
        // The old image stays until gc, with no name, for a container still running it.
        assert!(store.image(&old.digest).unwrap().references.is_empty());
        store.gc(std::slice::from_ref(&new.digest), std::slice::from_ref(&old.digest)).unwrap();
        assert!(store.has(&old.digest));
        store.gc(std::slice::from_ref(&new.digest), &[]).unwrap();
        assert!(!store.has(&old.digest));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_digests_never_become_paths() {
        let dir = scratch("paths");
        let store = ImageStore::open(&dir).unwrap();
        assert!(store.blob_path("sha256:../../../etc/passwd").is_err());
        assert!(store.layer_path("sha256:").is_err());
        assert!(store.begin_layer("../x").is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
