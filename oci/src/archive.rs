//! Reading an OCI image archive: a tar (plain, or gzip-compressed, told apart by its
//! magic bytes) holding an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>`), as `docker save` (Docker 25+), `skopeo copy … oci-archive:`,
//! `buildah push … oci-archive:` and `images/build.sh` write it. Both `shoal image load`
//! (the manager) and `shoal-agent image load` (a board) read archives here, so they
//! accept and refuse exactly the same ones. A `docker save` of Docker before 25
//! (`manifest.json`, `<id>/layer.tar`, `<config>.json`, no OCI layout) is read too: its
//! layers are hashed as they stream and an OCI manifest is made for each image. A tar
//! whose first entry belongs to neither kind is refused after that one header.
//!
//! Every blob is hashed while it streams into a [`StagingDir`] and must match its name;
//! then every image named in `index.json` is walked (index → manifests → config and
//! layers) and every blob it references must be there with the exact size its descriptor
//! states. Only then may the caller move the staged blobs into its store: a refused
//! archive leaves nothing behind. This module parses and verifies; it keeps no store,
//! writes no records and never unpacks a layer.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde::Deserialize;
use shoal_proto::images::{
    archive_image_name, sha256_hex, ImageNameError, CONTAINERD_NAME_ANNOTATION, MAX_ARCHIVE_BYTES, MAX_PLATFORMS,
    REF_NAME_ANNOTATION,
};

use crate::digest::Sha256;
use crate::spec::{
    Descriptor, ImageIndex, ImageManifest, Platform, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST,
};

/// Largest `index.json` or `oci-layout` read.
const MAX_INDEX_BYTES: u64 = 1 << 20;
/// Largest manifest, index or config blob parsed.
const MAX_JSON_BLOB_BYTES: u64 = 4 << 20;
/// Most bytes a (compressed) archive may unpack to: a gzip bomb stops here.
pub const MAX_UNPACKED_BYTES: u64 = 4 * MAX_ARCHIVE_BYTES;
/// Most images one archive may name (the wire bound of `ImagesLoaded`).
pub const MAX_IMAGES_PER_ARCHIVE: usize = 64;
/// Most manifests in one index, layers in one manifest.
const MAX_CHILDREN: usize = 1024;
/// Deepest nesting of indexes accepted.
const MAX_DEPTH: usize = 3;

/// Why an archive was refused. Nothing is kept in any case.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The file could not be read, or is not a tar (or gzip) at all.
    #[error("cannot read the archive: {0}")]
    Read(String),
    /// The archive ends early or lacks blobs it references.
    #[error("archive is truncated: {0}")]
    Truncated(String),
    /// A blob's content does not match its name.
    #[error("blob {0} in the archive is corrupt: its content does not match its digest; export the image again")]
    Corrupt(String),
    /// The layout, index or a manifest is malformed or unsupported.
    #[error("not a usable OCI image archive: {0}")]
    Invalid(String),
    /// An image in the archive carries no full name.
    #[error("image {digest} in the archive {reason}")]
    Unnamed {
        /// The image's top-level digest.
        digest: String,
        /// What is wrong with its name.
        reason: ImageNameError,
    },
    /// The archive unpacks to more than shoal accepts.
    #[error("archive unpacks to more than {} GiB: refusing it", MAX_UNPACKED_BYTES >> 30)]
    TooLarge,
    /// The staging directory could not be written: the reader's own disk, not the archive.
    #[error("staging area {path}: {source}")]
    Staging {
        /// Where.
        path: PathBuf,
        /// What.
        source: std::io::Error,
    },
}

impl ArchiveError {
    /// Whether the archive is at fault (the operator must fix it), as opposed to the
    /// reader's own storage.
    pub fn is_bad_archive(&self) -> bool {
        !matches!(self, Self::Staging { .. })
    }
}

/// One image of an archive, verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveImage {
    /// Normalised reference, e.g. `demo/app:1.0`.
    pub reference: String,
    /// Digest of its top-level index or manifest.
    pub digest: String,
    /// Platforms it has (`linux/arm64`, ...), sorted.
    pub platforms: Vec<String>,
    /// Bytes of all its distinct blobs.
    pub size: u64,
    /// Every blob it uses (index, manifests, configs, layers), sorted.
    pub blobs: Vec<String>,
}

/// Blobs of one archive, each verified against its name as it was written; the
/// directory is removed on drop.
#[derive(Debug)]
pub struct StagingDir {
    dir: PathBuf,
    /// Digest → size of each blob written so far.
    blobs: HashMap<String, u64>,
}

fn staging_io(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Staging { path: path.to_owned(), source }
}

impl StagingDir {
    /// Creates `dir` (which must not hold anything the caller wants kept: it is removed
    /// with the staging area).
    pub fn create(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir, blobs: HashMap::new() })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a staged blob is, if it was staged (and verified).
    pub fn path(&self, digest: &str) -> Option<PathBuf> {
        let hex = sha256_hex(digest)?;
        self.blobs.contains_key(digest).then(|| self.dir.join(hex))
    }

    /// Size of a staged blob, if it is here.
    pub fn size(&self, digest: &str) -> Option<u64> {
        self.blobs.get(digest).copied()
    }

    /// Streams `reader` into the staging area while hashing it, keeping it only when its
    /// SHA-256 is `hex` (the name it came under). Returns whether it matched and how many
    /// bytes were read, so a caller can tell a short (truncated) blob from a tampered
    /// one. An error reading `reader` is [`StageError::Source`].
    pub fn add(&mut self, hex: &str, reader: &mut dyn Read) -> Result<(bool, u64), StageError> {
        let digest = format!("sha256:{hex}");
        if sha256_hex(&digest).is_none() {
            return Err(StageError::InvalidName(digest));
        }
        let path = self.dir.join(hex);
        let (file, hash) = write_hashing(&path, reader)?;
        let size = hash.len();
        if hash.finish() != digest {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Ok((false, size));
        }
        file.sync_all().map_err(|source| StageError::Local { path: path.clone(), source })?;
        self.blobs.insert(digest, size);
        Ok((true, size))
    }

    /// Streams `reader` into the staging area under the SHA-256 it turns out to have (for
    /// content that comes without a digest: the layers of a pre-OCI `docker save`).
    /// Returns its digest and size.
    pub fn add_unnamed(&mut self, reader: &mut dyn Read) -> Result<(String, u64), StageError> {
        let incoming = self.dir.join(format!(".incoming-{}", self.blobs.len()));
        let local = |path: &Path, source| StageError::Local { path: path.to_owned(), source };
        let (file, hash) = write_hashing(&incoming, reader)?;
        file.sync_all().map_err(|e| local(&incoming, e))?;
        drop(file);
        let size = hash.len();
        let digest = hash.finish();
        let hex = sha256_hex(&digest).unwrap_or_else(|| unreachable!("our own digest is well formed")).to_owned();
        let path = self.dir.join(&hex);
        std::fs::rename(&incoming, &path).map_err(|e| local(&path, e))?;
        self.blobs.insert(digest.clone(), size);
        Ok((digest, size))
    }

    /// Reads a staged blob whole, or `None` when it is absent or over `limit` bytes
    /// (manifests and configs).
    pub fn read_small(&self, digest: &str, limit: u64) -> Result<Option<Vec<u8>>, ArchiveError> {
        let Some(size) = self.size(digest) else { return Ok(None) };
        if size > limit {
            return Ok(None);
        }
        let Some(path) = self.path(digest) else { return Ok(None) };
        std::fs::read(&path).map(Some).map_err(staging_io(&path))
    }
}

/// Copies `reader` into a new file at `path`, hashing what passes. A failure to read
/// `reader` removes the file and is [`StageError::Source`]; the caller decides, from the
/// hash, whether the file stays.
fn write_hashing(path: &Path, reader: &mut dyn Read) -> Result<(File, Sha256), StageError> {
    let local = |source| StageError::Local { path: path.to_owned(), source };
    let mut file = File::create(path).map_err(local)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok((file, hash)),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                drop(file);
                let _ = std::fs::remove_file(path);
                return Err(StageError::Source(e));
            }
        };
        hash.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(local)?;
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Why [`StagingDir::add`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The name is not 64 lowercase hex characters.
    #[error("invalid blob name {0:?}: expected sha256: and 64 lowercase hex characters")]
    InvalidName(String),
    /// Reading the bytes to stage failed (the archive, not the staging area).
    #[error("{0}")]
    Source(std::io::Error),
    /// Writing the staging area failed.
    #[error("staging area {path}: {source}")]
    Local {
        /// Where.
        path: PathBuf,
        /// What.
        source: std::io::Error,
    },
}

#[derive(Debug, Deserialize)]
struct Layout {
    #[serde(rename = "imageLayoutVersion")]
    version: String,
}

/// Just enough of an image config to name its platform: the walk must not refuse an
/// image over a run-config field it does not look at.
#[derive(Debug, Deserialize)]
struct ConfigPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

/// What the archive's byte source ran into, so a tar error can be told apart: the
/// `tar` crate reports a short read as a plain error, but if the file ended first the
/// archive is truncated.
#[derive(Debug, Default)]
struct Seen {
    eof: Cell<bool>,
    capped: Cell<bool>,
}

/// The archive's bytes (decompressed), counted: past [`MAX_UNPACKED_BYTES`] reading
/// fails, so a decompression bomb can't fill the disk.
struct Source<R> {
    inner: R,
    read: u64,
    seen: Rc<Seen>,
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    self.seen.eof.set(true);
                }
                return Err(e);
            }
        };
        if n == 0 && !buf.is_empty() {
            self.seen.eof.set(true);
        }
        self.read += n as u64;
        if self.read > MAX_UNPACKED_BYTES {
            self.seen.capped.set(true);
            return Err(std::io::Error::other("unpacked size limit reached"));
        }
        Ok(n)
    }
}

impl Seen {
    fn error(&self, e: std::io::Error, what: &str) -> ArchiveError {
        if self.capped.get() {
            ArchiveError::TooLarge
        } else if self.eof.get() || e.kind() == std::io::ErrorKind::UnexpectedEof {
            ArchiveError::Truncated(format!("it ends inside {what}"))
        } else {
            ArchiveError::Read(format!("{what}: {e}"))
        }
    }

    /// Reads a small entry whole: refused when over `limit`, truncated when shorter
    /// than its header says.
    fn read_entry(&self, entry: &mut dyn Read, expected: u64, limit: u64, what: &str) -> Result<Vec<u8>, ArchiveError> {
        if expected > limit {
            return Err(ArchiveError::Invalid(format!("{what} is larger than {limit} bytes")));
        }
        let mut out = Vec::new();
        entry.take(limit).read_to_end(&mut out).map_err(|e| self.error(e, what))?;
        if (out.len() as u64) < expected {
            return Err(ArchiveError::Truncated(format!("it ends inside {what}")));
        }
        Ok(out)
    }
}

/// Reads the archive at `path` into `staging`, verifying everything, and returns its
/// images in `index.json` order (a reference named twice keeps the last).
pub fn read_file(path: &Path, staging: &mut StagingDir) -> Result<Vec<ArchiveImage>, ArchiveError> {
    let file = File::open(path).map_err(|e| ArchiveError::Read(format!("{}: {e}", path.display())))?;
    read(file, staging)
}

/// [`read_file`] from any byte source.
pub fn read(input: impl Read, staging: &mut StagingDir) -> Result<Vec<ArchiveImage>, ArchiveError> {
    let mut buffered = BufReader::with_capacity(256 * 1024, input);
    let head = buffered.fill_buf().map_err(|e| ArchiveError::Read(e.to_string()))?;
    let gzip = head.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> =
        if gzip { Box::new(flate2::read::GzDecoder::new(buffered)) } else { Box::new(buffered) };
    let seen = Rc::new(Seen::default());
    let source = Source { inner: reader, read: 0, seen: seen.clone() };
    let Unpacked { layout, index, legacy_manifest, legacy_layers } = unpack(source, &seen, staging)?;
    let layout = match (layout, legacy_manifest) {
        (Some(layout), _) => layout,
        // Docker before 25 (e.g. Debian's docker.io 20.10): `manifest.json`, a config
        // and a `layer.tar` per layer, and no OCI layout.
        (None, Some(manifest)) => return legacy::read(&manifest, &legacy_layers, staging),
        (None, None) => {
            return Err(ArchiveError::Invalid(
                "there is no oci-layout file: load an OCI archive (`docker save`, \
                 `skopeo copy … oci-archive:FILE`, `buildah push … oci-archive:FILE`)"
                    .into(),
            ))
        }
    };
    let layout: Layout = serde_json::from_slice(&layout)
        .map_err(|e| ArchiveError::Invalid(format!("oci-layout does not parse: {e}")))?;
    if !layout.version.starts_with("1.") {
        return Err(ArchiveError::Invalid(format!("unsupported OCI layout version {:?}", layout.version)));
    }
    let index = index.ok_or_else(|| ArchiveError::Truncated("there is no index.json in it".into()))?;
    let index: ImageIndex =
        serde_json::from_slice(&index).map_err(|e| ArchiveError::Invalid(format!("index.json does not parse: {e}")))?;
    walk_index(&index, staging)
}

/// What the tar held besides blobs.
#[derive(Default)]
struct Unpacked {
    /// `oci-layout`.
    layout: Option<Vec<u8>>,
    /// `index.json`.
    index: Option<Vec<u8>>,
    /// A pre-OCI `docker save`'s `manifest.json` (read only without an OCI layout).
    legacy_manifest: Option<Vec<u8>>,
    /// Its `<dir>/layer.tar` entries, staged under their digests: path → (digest, size).
    legacy_layers: HashMap<String, (String, u64)>,
}

/// Whether `name` (the first entry of the tar) belongs to an image archive of a kind we
/// read: an OCI layout, or a `docker save` of any age. Anything else is refused at once,
/// after reading one tar header, instead of after the whole file.
fn is_image_entry(name: &str) -> bool {
    let first = name.split('/').next().unwrap_or(name);
    let is_hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    matches!(name, "oci-layout" | "index.json" | "manifest.json" | "repositories")
        || first == "blobs"
        || first.strip_suffix(".json").is_some_and(is_hex)
        || is_hex(first)
}

/// Streams the tar: blobs into `staging` (checked against their names), `oci-layout`
/// and `index.json` into memory; for a pre-OCI `docker save`, its `manifest.json` into
/// memory, its configs (named by digest) and layers (hashed on the way) into `staging`.
fn unpack(reader: impl Read, seen: &Seen, staging: &mut StagingDir) -> Result<Unpacked, ArchiveError> {
    let mut archive = tar::Archive::new(reader);
    let mut out = Unpacked::default();
    let mut first = true;
    let entries = archive.entries().map_err(|e| seen.error(e, "the archive"))?;
    for entry in entries {
        // tar's own message quotes the bad header bytes: say it plainly instead.
        let mut entry = entry.map_err(|e| match seen.error(e, "an entry header") {
            ArchiveError::Read(_) => ArchiveError::Read(
                "an entry header is not valid tar: load an OCI archive, a tar or a gzipped tar".into(),
            ),
            other => other,
        })?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let mut name = raw.as_str();
        while let Some(rest) = name.strip_prefix("./") {
            name = rest;
        }
        if name.split('/').any(|c| c == "..") {
            return Err(ArchiveError::Invalid(format!("entry {raw:?} points outside the archive")));
        }
        if std::mem::take(&mut first) && !is_image_entry(name.trim_end_matches('/')) {
            return Err(ArchiveError::Invalid(format!(
                "this tar is no image archive (its first entry is {raw:?}): load what `docker save`, \
                 `skopeo copy … oci-archive:FILE` or `buildah push … oci-archive:FILE` writes"
            )));
        }
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        let regular = kind.is_file() || kind == tar::EntryType::Continuous;
        let expected = entry.header().size().map_err(|e| ArchiveError::Read(format!("{raw}: {e}")))?;
        match name {
            "oci-layout" if regular => {
                out.layout = Some(seen.read_entry(&mut entry, expected, MAX_INDEX_BYTES, "oci-layout")?)
            }
            "index.json" if regular => {
                out.index = Some(seen.read_entry(&mut entry, expected, MAX_INDEX_BYTES, "index.json")?)
            }
            "manifest.json" if regular => {
                out.legacy_manifest = Some(seen.read_entry(&mut entry, expected, MAX_INDEX_BYTES, "manifest.json")?)
            }
            // A pre-OCI config: `<sha256 hex>.json`, verified against its name.
            _ if regular && !name.contains('/') && name.strip_suffix(".json").is_some_and(|h| h.len() == 64) => {
                let hex = name.strip_suffix(".json").unwrap_or_default();
                let (matched, _) = staging.add(hex, &mut entry).map_err(|e| match e {
                    StageError::Source(e) => seen.error(e, &format!("config {name}")),
                    StageError::InvalidName(n) => ArchiveError::Invalid(format!("entry {n:?} is not a config name")),
                    StageError::Local { path, source } => ArchiveError::Staging { path, source },
                })?;
                if !matched {
                    return Err(ArchiveError::Corrupt(format!("sha256:{hex}")));
                }
            }
            // A pre-OCI layer: `<dir>/layer.tar`, named by nothing we can check; its
            // digest is computed here and the manifest made from it is verified later.
            _ if regular && name.ends_with("/layer.tar") && name.matches('/').count() == 1 => {
                let (digest, got) = staging.add_unnamed(&mut entry).map_err(|e| match e {
                    StageError::Source(e) => seen.error(e, &format!("layer {name}")),
                    StageError::InvalidName(n) => ArchiveError::Invalid(format!("entry {n:?} is not a layer")),
                    StageError::Local { path, source } => ArchiveError::Staging { path, source },
                })?;
                if got < expected {
                    return Err(ArchiveError::Truncated(format!(
                        "it ends inside layer {name} ({got} of {expected} bytes)"
                    )));
                }
                out.legacy_layers.insert(name.to_owned(), (digest, got));
            }
            _ if name.starts_with("blobs/") => {
                let hex = name
                    .strip_prefix("blobs/sha256/")
                    .filter(|h| sha256_hex(&format!("sha256:{h}")).is_some())
                    .ok_or_else(|| {
                    ArchiveError::Invalid(format!(
                        "entry {raw:?} is not a blob name (blobs/sha256/ and 64 lowercase hex characters)"
                    ))
                })?;
                if !regular {
                    return Err(ArchiveError::Invalid(format!("blob entry {raw:?} is not a regular file")));
                }
                let (matched, got) = staging.add(hex, &mut entry).map_err(|e| match e {
                    StageError::Source(e) => seen.error(e, &format!("blob sha256:{hex}")),
                    StageError::InvalidName(n) => ArchiveError::Invalid(format!("entry {n:?} is not a blob name")),
                    StageError::Local { path, source } => ArchiveError::Staging { path, source },
                })?;
                if got < expected {
                    return Err(ArchiveError::Truncated(format!(
                        "it ends inside blob sha256:{hex} ({got} of {expected} bytes)"
                    )));
                }
                if !matched {
                    return Err(ArchiveError::Corrupt(format!("sha256:{hex}")));
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Pre-OCI `docker save` archives, turned into the OCI form the rest of this module
/// verifies: one OCI manifest per image (config and `layer.tar`s by their digests),
/// staged as a blob, and an index naming it by each of its `RepoTags`.
mod legacy {
    use super::*;

    /// One image of `manifest.json`.
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        config: String,
        #[serde(default)]
        repo_tags: Option<Vec<String>>,
        layers: Vec<String>,
    }

    pub(super) fn read(
        manifest: &[u8],
        layers: &HashMap<String, (String, u64)>,
        staging: &mut StagingDir,
    ) -> Result<Vec<ArchiveImage>, ArchiveError> {
        let entries: Vec<Entry> = serde_json::from_slice(manifest)
            .map_err(|e| ArchiveError::Invalid(format!("manifest.json does not parse: {e}")))?;
        if entries.len() > MAX_IMAGES_PER_ARCHIVE {
            return Err(ArchiveError::Invalid(format!(
                "manifest.json lists {} images; at most {MAX_IMAGES_PER_ARCHIVE} per archive",
                entries.len()
            )));
        }
        let mut index = Vec::new();
        for e in &entries {
            let hex = e.config.strip_suffix(".json").unwrap_or(&e.config);
            let config = format!("sha256:{hex}");
            let Some(config_size) = staging.size(&config) else {
                return Err(ArchiveError::Truncated(format!("config {} is missing", e.config)));
            };
            if e.layers.len() > MAX_CHILDREN {
                return Err(ArchiveError::Invalid(format!("an image has {} layers", e.layers.len())));
            }
            let mut descs = Vec::new();
            for path in &e.layers {
                let Some((digest, size)) = layers.get(path.trim_start_matches("./")) else {
                    return Err(ArchiveError::Truncated(format!("layer {path} is missing")));
                };
                descs.push(serde_json::json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size,
                }));
            }
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size },
                "layers": descs,
            });
            let bytes = serde_json::to_vec(&manifest).unwrap_or_else(|e| unreachable!("plain JSON encodes: {e}"));
            let (digest, size) = staging.add_unnamed(&mut bytes.as_slice()).map_err(|e| match e {
                StageError::Local { path, source } => ArchiveError::Staging { path, source },
                other => ArchiveError::Read(other.to_string()),
            })?;
            let tags = e.repo_tags.clone().unwrap_or_default();
            if tags.is_empty() {
                // No name: `walk_index` refuses it the way it refuses an unnamed OCI image.
                index.push(serde_json::json!({ "mediaType": OCI_MANIFEST, "digest": digest, "size": size }));
            }
            for tag in tags {
                index.push(serde_json::json!({
                    "mediaType": OCI_MANIFEST, "digest": digest, "size": size,
                    "annotations": { REF_NAME_ANNOTATION: tag },
                }));
            }
        }
        let index: ImageIndex = serde_json::from_value(serde_json::json!({ "manifests": index }))
            .map_err(|e| ArchiveError::Invalid(format!("manifest.json describes no usable image: {e}")))?;
        walk_index(&index, staging)
    }
}

/// What one image's walk collected.
#[derive(Default)]
struct Walk {
    blobs: BTreeMap<String, u64>,
    platforms: BTreeSet<String>,
}

fn walk_index(index: &ImageIndex, staging: &StagingDir) -> Result<Vec<ArchiveImage>, ArchiveError> {
    if index.manifests.is_empty() {
        return Err(ArchiveError::Invalid("index.json lists no images".into()));
    }
    if index.manifests.len() > MAX_IMAGES_PER_ARCHIVE {
        return Err(ArchiveError::Invalid(format!(
            "index.json lists {} images; at most {MAX_IMAGES_PER_ARCHIVE} per archive",
            index.manifests.len()
        )));
    }
    let mut images: Vec<ArchiveImage> = Vec::new();
    for desc in &index.manifests {
        let reference = reference(desc)?;
        let mut walk = Walk::default();
        let context = desc.platform.as_ref().map(Platform::to_string).unwrap_or_else(|| reference.clone());
        visit(desc, &context, staging, &mut walk, 0)?;
        if walk.platforms.len() > MAX_PLATFORMS {
            return Err(ArchiveError::Invalid(format!(
                "{reference} has {} platforms; at most {MAX_PLATFORMS} are supported",
                walk.platforms.len()
            )));
        }
        images.retain(|i| i.reference != reference);
        images.push(ArchiveImage {
            reference,
            digest: desc.digest.clone(),
            platforms: walk.platforms.into_iter().collect(),
            size: walk.blobs.values().sum(),
            blobs: walk.blobs.into_keys().collect(),
        });
    }
    Ok(images)
}

/// The image's name from its annotations, by the rule in `shoal_proto::images`.
fn reference(desc: &Descriptor) -> Result<String, ArchiveError> {
    archive_image_name(desc.annotation(REF_NAME_ANNOTATION), desc.annotation(CONTAINERD_NAME_ANNOTATION)).map_err(
        |reason| match reason {
            ImageNameError::Invalid(_) => ArchiveError::Invalid(reason.to_string()),
            _ => ArchiveError::Unnamed { digest: desc.digest.clone(), reason },
        },
    )
}

/// Checks one referenced blob is staged with the descriptor's size and records it.
fn check(desc: &Descriptor, what: &str, staging: &StagingDir, walk: &mut Walk) -> Result<(), ArchiveError> {
    if sha256_hex(&desc.digest).is_none() {
        return Err(ArchiveError::Invalid(format!(
            "the {what} has digest {:?}: only sha256 digests are supported",
            desc.digest
        )));
    }
    match staging.size(&desc.digest) {
        None => Err(ArchiveError::Truncated(format!("blob {} ({what}) is missing", desc.digest))),
        Some(size) if size != desc.size => Err(ArchiveError::Invalid(format!(
            "blob {} ({what}) is {size} bytes but its descriptor says {}",
            desc.digest, desc.size
        ))),
        Some(size) => {
            walk.blobs.insert(desc.digest.clone(), size);
            Ok(())
        }
    }
}

fn json_blob<T: serde::de::DeserializeOwned>(
    desc: &Descriptor,
    what: &str,
    staging: &StagingDir,
) -> Result<T, ArchiveError> {
    let bytes = staging
        .read_small(&desc.digest, MAX_JSON_BLOB_BYTES)?
        .ok_or_else(|| ArchiveError::Invalid(format!("the {what} {} is too large", desc.digest)))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ArchiveError::Invalid(format!("the {what} {} does not parse: {e}", desc.digest)))
}

/// Kinds of blob a descriptor points at, from its media type (or, when a producer left
/// it out, from the blob itself).
enum Kind {
    Index,
    Manifest,
}

fn kind(desc: &Descriptor, what: &str, staging: &StagingDir) -> Result<Kind, ArchiveError> {
    match desc.media_type.as_str() {
        OCI_INDEX | DOCKER_MANIFEST_LIST => Ok(Kind::Index),
        OCI_MANIFEST | DOCKER_MANIFEST => Ok(Kind::Manifest),
        "" => {
            let v: serde_json::Value = json_blob(desc, what, staging)?;
            if v.get("manifests").is_some() {
                Ok(Kind::Index)
            } else {
                Ok(Kind::Manifest)
            }
        }
        other => Err(ArchiveError::Invalid(format!("the {what} {} has unsupported media type {other:?}", desc.digest))),
    }
}

fn visit(
    desc: &Descriptor,
    context: &str,
    staging: &StagingDir,
    walk: &mut Walk,
    depth: usize,
) -> Result<(), ArchiveError> {
    if depth > MAX_DEPTH {
        return Err(ArchiveError::Invalid(format!("indexes nest deeper than {MAX_DEPTH} levels")));
    }
    let what = format!("manifest of {context}");
    check(desc, &what, staging, walk)?;
    match kind(desc, &what, staging)? {
        Kind::Index => {
            let index: ImageIndex = json_blob(desc, &format!("index of {context}"), staging)?;
            if index.manifests.len() > MAX_CHILDREN {
                return Err(ArchiveError::Invalid(format!("the index of {context} lists too many manifests")));
            }
            for child in &index.manifests {
                if child.is_attestation() && staging.size(&child.digest).is_none() {
                    continue;
                }
                let ctx = child.platform.as_ref().map(Platform::to_string).unwrap_or_else(|| context.to_owned());
                visit(child, &ctx, staging, walk, depth + 1)?;
            }
        }
        Kind::Manifest => {
            let manifest: ImageManifest = json_blob(desc, &what, staging)?;
            if manifest.layers.len() > MAX_CHILDREN {
                return Err(ArchiveError::Invalid(format!("the manifest of {context} lists too many layers")));
            }
            check(&manifest.config, &format!("config of {context}"), staging, walk)?;
            let config: ConfigPlatform = json_blob(&manifest.config, &format!("config of {context}"), staging)?;
            let platform = match &desc.platform {
                Some(p) => p.to_string(),
                None if !config.os.is_empty() && !config.architecture.is_empty() => {
                    Platform { os: config.os, architecture: config.architecture, variant: config.variant }.to_string()
                }
                None => context.to_owned(),
            };
            for layer in &manifest.layers {
                check(layer, &format!("layer of {platform}"), staging, walk)?;
            }
            if !desc.is_attestation() && platform.contains('/') {
                walk.platforms.insert(platform);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{cases, gzip, ArchiveBuilder, Expect, PLATFORMS};

    /// A scratch directory and a staging area in it.
    struct Env {
        dir: PathBuf,
    }

    impl Env {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!("shoal-oci-{}", shoal_proto::hex(&rand_bytes())));
            std::fs::create_dir_all(&dir).unwrap();
            Self { dir }
        }
        fn read(&self, bytes: &[u8]) -> Result<Vec<ArchiveImage>, ArchiveError> {
            let path = self.dir.join("in.tar");
            std::fs::write(&path, bytes).unwrap();
            let mut staging = StagingDir::create(self.dir.join("stage")).unwrap();
            read_file(&path, &mut staging)
        }
        /// The staging area is gone: a refused archive leaves nothing.
        fn assert_clean(&self) {
            assert!(!self.dir.join("stage").exists(), "the staging area outlived the read");
        }
    }

    impl Drop for Env {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn rand_bytes() -> [u8; 8] {
        use ring::rand::SecureRandom;
        let mut b = [0u8; 8];
        ring::rand::SystemRandom::new().fill(&mut b).unwrap();
        b
    }

    #[test]
    fn the_shared_table_holds_for_the_reader() {
        let env = Env::new();
        for case in cases() {
            let got = env.read(&case.archive);
            match (&case.expect, got) {
                (Expect::Loads(refs), Ok(images)) => {
                    assert_eq!(images.iter().map(|i| i.reference.as_str()).collect::<Vec<_>>(), *refs, "{}", case.name)
                }
                (Expect::Refused(why), Err(e)) => {
                    assert!(e.is_bad_archive(), "{}: {e}", case.name);
                    assert!(e.to_string().contains(why), "{}: {e}", case.name);
                }
                (expect, got) => panic!("{}: expected {expect:?}, got {got:?}", case.name),
            }
            env.assert_clean();
        }
    }

    /// The directory `docker save` names a layer by (a hash of its own, not its digest).
    const LAYER_DIR: &str = "5d1f0b6a3e8c9d7f2b4a6c8e0f1d3b5a7c9e1f3d5b7a9c0e2f4d6b8a0c2e4f6a";

    /// A `docker save` of Docker before 25: `<id>/layer.tar`, `<config hex>.json`,
    /// `manifest.json`, `repositories`, no OCI layout.
    fn legacy_archive(tags: &[&str], drop_layer: bool) -> Vec<u8> {
        let mut layer = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(6);
        h.set_mode(0o644);
        h.set_cksum();
        layer.append_data(&mut h, "hello.txt", &b"hello\n"[..]).unwrap();
        let layer = layer.into_inner().unwrap();
        let diff_id = crate::digest::of(&layer);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": { "Cmd": ["/bin/sh"] },
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        }))
        .unwrap();
        let config_hex = crate::digest::of(&config).trim_start_matches("sha256:").to_owned();
        let manifest = serde_json::to_vec(&serde_json::json!([{
            "Config": format!("{config_hex}.json"),
            "RepoTags": tags,
            "Layers": [format!("{LAYER_DIR}/layer.tar")],
        }]))
        .unwrap();
        let mut out = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            out.append_data(&mut h, name, data).unwrap();
        };
        add(&format!("{LAYER_DIR}/VERSION"), b"1.0");
        if !drop_layer {
            add(&format!("{LAYER_DIR}/layer.tar"), &layer);
        }
        add(&format!("{config_hex}.json"), &config);
        add("manifest.json", &manifest);
        add("repositories", b"{}");
        out.into_inner().unwrap()
    }

    #[test]
    fn a_pre_oci_docker_save_loads_by_its_tags() {
        let env = Env::new();
        let archive = legacy_archive(&["rwpyhttp:docker20", "docker.io/library/rwpyhttp:latest"], false);
        for bytes in [archive.clone(), gzip(&archive)] {
            let images = env.read(&bytes).unwrap();
            let refs: Vec<&str> = images.iter().map(|i| i.reference.as_str()).collect();
            assert_eq!(refs, ["rwpyhttp:docker20", "rwpyhttp:latest"]);
            assert_eq!(images[0].platforms, ["linux/amd64"]);
            assert_eq!(images[0].blobs.len(), 3, "manifest, config, layer");
            env.assert_clean();
        }
        let err = env.read(&legacy_archive(&["x:1"], true)).unwrap_err();
        assert!(matches!(err, ArchiveError::Truncated(_)), "{err}");
        let err = env.read(&legacy_archive(&[], false)).unwrap_err();
        assert!(err.is_bad_archive() && err.to_string().contains("name"), "{err}");
        env.assert_clean();
    }

    #[test]
    fn a_tar_of_something_else_is_refused_at_its_first_header() {
        let env = Env::new();
        let mut t = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(4);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, "etc/passwd", &b"root"[..]).unwrap();
        let mut bytes = t.into_inner().unwrap();
        // Whatever follows the first entry is never read: garbage there changes nothing.
        bytes.truncate(1024);
        bytes.extend(std::iter::repeat_n(0xAAu8, 1 << 20));
        let err = env.read(&bytes).unwrap_err();
        assert!(err.to_string().contains("is no image archive (its first entry is \"etc/passwd\")"), "{err}");
    }

    #[test]
    fn a_multi_arch_archive_reads_plain_and_gzipped() {
        let env = Env::new();
        let b = ArchiveBuilder::multi_arch("demo/app:1.0", PLATFORMS);
        for bytes in [b.tar(&[]), gzip(&b.tar(&[("manifest.json", b"[]")]))] {
            let path = env.dir.join("in.tar");
            std::fs::write(&path, &bytes).unwrap();
            let mut staging = StagingDir::create(env.dir.join("stage")).unwrap();
            let images = read_file(&path, &mut staging).unwrap();
            let img = &images[0];
            assert_eq!(img.reference, "demo/app:1.0");
            assert_eq!(img.platforms, ["linux/amd64", "linux/arm/v7", "linux/arm64"]);
            assert_eq!(img.blobs.len(), 10, "index + 3 × (manifest, config, layer)");
            assert_eq!(img.size, b.blobs.iter().map(|(_, d)| d.len() as u64).sum::<u64>());
            let layer = &b.layers()[0];
            let staged = std::fs::read(staging.path(layer).unwrap()).unwrap();
            assert_eq!(crate::digest::of(&staged), *layer);
            drop(staging);
            env.assert_clean();
        }
    }

    #[test]
    fn a_truncated_archive_is_refused_wherever_it_is_cut() {
        let env = Env::new();
        let tar = ArchiveBuilder::multi_arch("demo/app:1.0", PLATFORMS).tar(&[]);
        for cut in [tar.len() / 2, tar.len() - 1024 - 512, 700, 10] {
            let err = env.read(&tar[..cut]).unwrap_err();
            assert!(matches!(err, ArchiveError::Truncated(_)), "cut at {cut}: {err}");
            assert!(err.to_string().starts_with("archive is truncated"), "{err}");
            env.assert_clean();
        }
    }

    #[test]
    fn a_tampered_or_missing_blob_is_named() {
        let env = Env::new();
        let mut b = ArchiveBuilder::multi_arch("demo/app:1.0", PLATFORMS);
        let victim = b.layers()[1].clone();
        b.blobs.iter_mut().find(|(d, _)| *d == victim).unwrap().1[512] ^= 1;
        let err = env.read(&b.tar(&[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("blob {victim} in the archive is corrupt: its content does not match its digest; export the image again")
        );
        let mut b = ArchiveBuilder::multi_arch("demo/app:1.0", PLATFORMS);
        let arm64 = b.layers()[1].clone();
        b.blobs.retain(|(d, _)| *d != arm64);
        let err = env.read(&b.tar(&[])).unwrap_err();
        assert_eq!(err.to_string(), format!("archive is truncated: blob {arm64} (layer of linux/arm64) is missing"));
        env.assert_clean();
    }

    #[test]
    fn bad_index_json_and_names_are_refused() {
        let env = Env::new();
        let mut bad_json = ArchiveBuilder::multi_arch("demo/app:1.0", PLATFORMS);
        bad_json.index = json!({ "manifests": "nope" });
        assert!(env.read(&bad_json.tar(&[])).unwrap_err().to_string().contains("index.json does not parse"));

        let mut tag_only = ArchiveBuilder::multi_arch("1.0", PLATFORMS);
        let err = env.read(&tag_only.tar(&[])).unwrap_err();
        assert!(matches!(err, ArchiveError::Unnamed { .. }), "{err}");
        assert!(err.to_string().contains("named only by the tag \"1.0\""), "{err}");
        tag_only.index["manifests"][0]["annotations"][CONTAINERD_NAME_ANNOTATION] = json!("docker.io/demo/app:1.0");
        assert_eq!(env.read(&tag_only.tar(&[])).unwrap()[0].reference, "demo/app:1.0");

        let mut bad_digest = ArchiveBuilder::multi_arch("demo/app:1.0", PLATFORMS);
        bad_digest.index["manifests"][0]["digest"] = json!("sha256:../../etc/passwd");
        assert!(env.read(&bad_digest.tar(&[])).unwrap_err().to_string().contains("only sha256 digests"));

        let good = ArchiveBuilder::multi_arch("demo/app:1.0", PLATFORMS).tar(&[]);
        let without: Vec<u8> = {
            // The same archive with index.json renamed away.
            let mut t = good.clone();
            let pos = t.windows(10).position(|w| w == b"index.json").unwrap();
            t[pos..pos + 10].copy_from_slice(b"index.jsox");
            let mut h = tar::Header::from_byte_slice(&t[pos..pos + 512]).clone();
            h.set_cksum();
            t[pos..pos + 512].copy_from_slice(h.as_bytes());
            t
        };
        assert!(env.read(&without).unwrap_err().to_string().contains("no index.json"));
        env.assert_clean();
    }

    #[test]
    fn blob_names_that_traverse_are_refused() {
        let env = Env::new();
        let b = ArchiveBuilder::multi_arch("demo/app:1.0", PLATFORMS);
        for name in ["blobs/sha256/../../x", "blobs/sha256/abc", "blobs/md5/0123"] {
            let err = env.read(&b.tar(&[(name, b"x")])).unwrap_err();
            assert!(matches!(err, ArchiveError::Invalid(_)), "{name}: {err}");
            env.assert_clean();
        }
        assert!(!env.dir.join("x").exists() && !env.dir.parent().unwrap().join("x").exists());
    }

    #[test]
    fn staging_keeps_only_blobs_that_match_their_name() {
        let env = Env::new();
        let mut staging = StagingDir::create(env.dir.join("stage")).unwrap();
        let d = crate::digest::of(b"hello blobs");
        let hex = sha256_hex(&d).unwrap().to_owned();
        assert_eq!(staging.add(&hex, &mut &b"tampered"[..]).unwrap(), (false, 8));
        assert_eq!(staging.size(&d), None);
        assert_eq!(staging.add(&hex, &mut &b"hello blobs"[..]).unwrap(), (true, 11));
        assert_eq!(staging.size(&d), Some(11));
        assert_eq!(staging.read_small(&d, 10).unwrap(), None, "over the limit");
        assert_eq!(staging.read_small(&d, 11).unwrap().unwrap(), b"hello blobs");
        assert!(matches!(staging.add("../x", &mut &b""[..]), Err(StageError::InvalidName(_))));
        drop(staging);
        env.assert_clean();
    }
}
