//! Importing an OCI image archive: a tar (plain, or gzip-compressed, told apart by its
//! magic bytes) holding an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>`), as `docker save` (Docker 25+), `skopeo copy … oci-archive:` and
//! `buildah push … oci-archive:` write it.
//!
//! Every blob is hashed while it streams into a staging area and must match its name;
//! then every image named in `index.json` is walked (index → manifests → config and
//! layers) and every blob it references must be there with the exact size its descriptor
//! states. Only then may the caller commit the staged blobs and records: a refused
//! archive leaves nothing in the store. This module parses and verifies; it writes no
//! records and never unpacks a layer.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::rc::Rc;

use serde::Deserialize;
use shoal_proto::images::{normalize_ref, sha256_hex, MAX_ARCHIVE_BYTES, MAX_PLATFORMS};

use super::blobs::{BlobError, BlobStore, Staging};
use super::ImageRecord;

/// Largest `index.json` or `oci-layout` read.
const MAX_INDEX_BYTES: u64 = 1 << 20;
/// Largest manifest, index or config blob parsed.
const MAX_JSON_BLOB_BYTES: u64 = 4 << 20;
/// Most bytes a (compressed) archive may unpack to: a gzip bomb stops here.
const MAX_UNPACKED_BYTES: u64 = 4 * MAX_ARCHIVE_BYTES;
/// Most images one archive may name (the wire bound of `ImagesLoaded`).
pub const MAX_IMAGES_PER_ARCHIVE: usize = 64;
/// Most manifests in one index, layers in one manifest.
const MAX_CHILDREN: usize = 1024;
/// Deepest nesting of indexes accepted.
const MAX_DEPTH: usize = 3;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Why an archive was refused. Nothing is stored in any case.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
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
    #[error("{0}")]
    Unnamed(String),
    /// The archive unpacks to more than the manager accepts.
    #[error("archive unpacks to more than {} GiB: refusing it", MAX_UNPACKED_BYTES >> 30)]
    TooLarge,
    /// The blob store failed.
    #[error(transparent)]
    Store(BlobError),
}

impl ImportError {
    /// Whether the archive is at fault (the operator must fix it), as opposed to the
    /// manager's own storage.
    pub fn is_bad_archive(&self) -> bool {
        !matches!(self, Self::Store(_))
    }
}

/// A verified archive: its images and their blobs, staged but not yet in the store.
#[derive(Debug)]
pub struct Imported {
    /// The images, in `index.json` order (a reference named twice keeps the last).
    pub images: Vec<ImageRecord>,
    /// Their blobs, to commit with [`BlobStore::commit`].
    pub staging: Staging,
}

#[derive(Debug, Deserialize)]
struct Layout {
    #[serde(rename = "imageLayoutVersion")]
    version: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<PlatformJson>,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
struct PlatformJson {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

impl PlatformJson {
    fn name(&self) -> String {
        match self.variant.as_deref().filter(|v| !v.is_empty()) {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// Just enough of an image config to name its platform.
#[derive(Debug, Deserialize)]
struct Config {
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
    fn error(&self, e: std::io::Error, what: &str) -> ImportError {
        if self.capped.get() {
            ImportError::TooLarge
        } else if self.eof.get() || e.kind() == std::io::ErrorKind::UnexpectedEof {
            ImportError::Truncated(format!("it ends inside {what}"))
        } else {
            ImportError::Read(format!("{what}: {e}"))
        }
    }

    /// Reads a small entry whole: refused when over `limit`, truncated when shorter
    /// than its header says.
    fn read_entry(&self, entry: &mut dyn Read, expected: u64, limit: u64, what: &str) -> Result<Vec<u8>, ImportError> {
        if expected > limit {
            return Err(ImportError::Invalid(format!("{what} is larger than {limit} bytes")));
        }
        let mut out = Vec::new();
        entry.take(limit).read_to_end(&mut out).map_err(|e| self.error(e, what))?;
        if (out.len() as u64) < expected {
            return Err(ImportError::Truncated(format!("it ends inside {what}")));
        }
        Ok(out)
    }
}

/// Imports the archive at `path` into a staging area of `store`, verifying everything.
pub fn import(path: &Path, store: &BlobStore) -> Result<Imported, ImportError> {
    let file = File::open(path).map_err(|e| ImportError::Read(format!("{}: {e}", path.display())))?;
    let mut buffered = BufReader::with_capacity(256 * 1024, file);
    let head = buffered.fill_buf().map_err(|e| ImportError::Read(e.to_string()))?;
    let gzip = head.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> =
        if gzip { Box::new(flate2::read::GzDecoder::new(buffered)) } else { Box::new(buffered) };
    let mut staging = store.staging().map_err(ImportError::Store)?;
    let seen = Rc::new(Seen::default());
    let source = Source { inner: reader, read: 0, seen: seen.clone() };
    let (layout, index) = unpack(source, &seen, &mut staging)?;
    let layout = layout.ok_or_else(|| {
        ImportError::Invalid(
            "there is no oci-layout file: load an OCI archive (`docker save` from Docker 25+, \
             `skopeo copy … oci-archive:FILE`, `buildah push … oci-archive:FILE`)"
                .into(),
        )
    })?;
    let layout: Layout =
        serde_json::from_slice(&layout).map_err(|e| ImportError::Invalid(format!("oci-layout does not parse: {e}")))?;
    if !layout.version.starts_with("1.") {
        return Err(ImportError::Invalid(format!("unsupported OCI layout version {:?}", layout.version)));
    }
    let index = index.ok_or_else(|| ImportError::Truncated("there is no index.json in it".into()))?;
    let index: Index =
        serde_json::from_slice(&index).map_err(|e| ImportError::Invalid(format!("index.json does not parse: {e}")))?;
    let images = walk_index(&index, &staging)?;
    Ok(Imported { images, staging })
}

/// The two files of the layout that are not blobs: `oci-layout` and `index.json`.
type Unpacked = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Streams the tar: blobs into `staging` (checked against their names), `oci-layout`
/// and `index.json` into memory. Other entries (Docker's `manifest.json`) are ignored.
fn unpack(reader: impl Read, seen: &Seen, staging: &mut Staging) -> Result<Unpacked, ImportError> {
    let mut archive = tar::Archive::new(reader);
    let mut layout = None;
    let mut index = None;
    let entries = archive.entries().map_err(|e| seen.error(e, "the archive"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| seen.error(e, "an entry header"))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let mut name = raw.as_str();
        while let Some(rest) = name.strip_prefix("./") {
            name = rest;
        }
        if name.split('/').any(|c| c == "..") {
            return Err(ImportError::Invalid(format!("entry {raw:?} points outside the archive")));
        }
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        let regular = kind.is_file() || kind == tar::EntryType::Continuous;
        let expected = entry.header().size().map_err(|e| ImportError::Read(format!("{raw}: {e}")))?;
        match name {
            "oci-layout" if regular => {
                layout = Some(seen.read_entry(&mut entry, expected, MAX_INDEX_BYTES, "oci-layout")?)
            }
            "index.json" if regular => {
                index = Some(seen.read_entry(&mut entry, expected, MAX_INDEX_BYTES, "index.json")?)
            }
            _ if name.starts_with("blobs/") => {
                let hex = name
                    .strip_prefix("blobs/sha256/")
                    .filter(|h| sha256_hex(&format!("sha256:{h}")).is_some())
                    .ok_or_else(|| {
                    ImportError::Invalid(format!(
                        "entry {raw:?} is not a blob name (blobs/sha256/ and 64 lowercase hex characters)"
                    ))
                })?;
                if !regular {
                    return Err(ImportError::Invalid(format!("blob entry {raw:?} is not a regular file")));
                }
                let (matched, got) = staging.add(hex, &mut entry).map_err(|e| match e {
                    BlobError::Source(e) => seen.error(e, &format!("blob sha256:{hex}")),
                    other => ImportError::Store(other),
                })?;
                if got < expected {
                    return Err(ImportError::Truncated(format!(
                        "it ends inside blob sha256:{hex} ({got} of {expected} bytes)"
                    )));
                }
                if !matched {
                    return Err(ImportError::Corrupt(format!("sha256:{hex}")));
                }
            }
            _ => {}
        }
    }
    Ok((layout, index))
}

/// What one image's walk collected.
#[derive(Default)]
struct Walk {
    blobs: BTreeMap<String, u64>,
    platforms: BTreeSet<String>,
}

fn walk_index(index: &Index, staging: &Staging) -> Result<Vec<ImageRecord>, ImportError> {
    if index.manifests.is_empty() {
        return Err(ImportError::Invalid("index.json lists no images".into()));
    }
    if index.manifests.len() > MAX_IMAGES_PER_ARCHIVE {
        return Err(ImportError::Invalid(format!(
            "index.json lists {} images; at most {MAX_IMAGES_PER_ARCHIVE} per archive",
            index.manifests.len()
        )));
    }
    let mut images: Vec<ImageRecord> = Vec::new();
    for desc in &index.manifests {
        let reference = reference(desc)?;
        let mut walk = Walk::default();
        let context = desc.platform.as_ref().map(PlatformJson::name).unwrap_or_else(|| reference.clone());
        visit(desc, &context, staging, &mut walk, 0)?;
        if walk.platforms.len() > MAX_PLATFORMS {
            return Err(ImportError::Invalid(format!(
                "{reference} has {} platforms; at most {MAX_PLATFORMS} are supported",
                walk.platforms.len()
            )));
        }
        images.retain(|i| i.reference != reference);
        images.push(ImageRecord {
            reference,
            digest: desc.digest.clone(),
            platforms: walk.platforms.into_iter().collect(),
            size: walk.blobs.values().sum(),
            blobs: walk.blobs.into_keys().collect(),
            loaded_at_ms: shoal_link::wall_ms(),
        });
    }
    Ok(images)
}

/// The image's name from its annotations: a full reference, never a bare tag.
fn reference(desc: &Descriptor) -> Result<String, ImportError> {
    let oci = desc.annotations.get(REF_NAME).map(String::as_str).filter(|s| !s.is_empty());
    let containerd = desc.annotations.get(CONTAINERD_NAME).map(String::as_str).filter(|s| !s.is_empty());
    let is_full = |s: &str| s.contains(':') || s.contains('/');
    let name = match (oci, containerd) {
        (Some(o), _) if is_full(o) => o,
        (_, Some(c)) => c,
        (Some(tag), None) => {
            return Err(ImportError::Unnamed(format!(
                "image {} in the archive is named only by the tag {tag:?}: export it with a full name \
                 (e.g. `skopeo copy … oci-archive:app.tar:demo/app:1.0`)",
                desc.digest
            )))
        }
        (None, None) => {
            return Err(ImportError::Unnamed(format!(
                "image {} in the archive has no name (annotation {REF_NAME}): export it with a full name \
                 (e.g. `skopeo copy … oci-archive:app.tar:demo/app:1.0`)",
                desc.digest
            )))
        }
    };
    let normalized = normalize_ref(name);
    if normalized.len() > 256 || normalized.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ImportError::Invalid(format!("image name {name:?} is not a valid reference")));
    }
    Ok(normalized)
}

/// Checks one referenced blob is staged with the descriptor's size and records it.
fn check(desc: &Descriptor, what: &str, staging: &Staging, walk: &mut Walk) -> Result<(), ImportError> {
    if sha256_hex(&desc.digest).is_none() {
        return Err(ImportError::Invalid(format!(
            "the {what} has digest {:?}: only sha256 digests are supported",
            desc.digest
        )));
    }
    match staging.size(&desc.digest) {
        None => Err(ImportError::Truncated(format!("blob {} ({what}) is missing", desc.digest))),
        Some(size) if size != desc.size => Err(ImportError::Invalid(format!(
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
    staging: &Staging,
) -> Result<T, ImportError> {
    let bytes = staging
        .read_small(&desc.digest, MAX_JSON_BLOB_BYTES)
        .map_err(ImportError::Store)?
        .ok_or_else(|| ImportError::Invalid(format!("the {what} {} is too large", desc.digest)))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ImportError::Invalid(format!("the {what} {} does not parse: {e}", desc.digest)))
}

/// Kinds of blob a descriptor points at, from its media type (or, when a producer left
/// it out, from the blob itself).
enum Kind {
    Index,
    Manifest,
}

fn kind(desc: &Descriptor, what: &str, staging: &Staging) -> Result<Kind, ImportError> {
    match desc.media_type.as_str() {
        OCI_INDEX | DOCKER_LIST => Ok(Kind::Index),
        OCI_MANIFEST | DOCKER_MANIFEST => Ok(Kind::Manifest),
        "" => {
            let v: serde_json::Value = json_blob(desc, what, staging)?;
            if v.get("manifests").is_some() {
                Ok(Kind::Index)
            } else {
                Ok(Kind::Manifest)
            }
        }
        other => Err(ImportError::Invalid(format!("the {what} {} has unsupported media type {other:?}", desc.digest))),
    }
}

/// Whether a child of an index is a build attestation (BuildKit's `unknown/unknown`),
/// which exporters may leave out of an archive and no board ever runs.
fn is_attestation(desc: &Descriptor) -> bool {
    desc.annotations.get("vnd.docker.reference.type").is_some_and(|t| t == "attestation-manifest")
        || desc.platform.as_ref().is_some_and(|p| p.os == "unknown" && p.architecture == "unknown")
}

fn visit(
    desc: &Descriptor,
    context: &str,
    staging: &Staging,
    walk: &mut Walk,
    depth: usize,
) -> Result<(), ImportError> {
    if depth > MAX_DEPTH {
        return Err(ImportError::Invalid(format!("indexes nest deeper than {MAX_DEPTH} levels")));
    }
    let what = format!("manifest of {context}");
    check(desc, &what, staging, walk)?;
    match kind(desc, &what, staging)? {
        Kind::Index => {
            let index: Index = json_blob(desc, &format!("index of {context}"), staging)?;
            if index.manifests.len() > MAX_CHILDREN {
                return Err(ImportError::Invalid(format!("the index of {context} lists too many manifests")));
            }
            for child in &index.manifests {
                if is_attestation(child) && staging.size(&child.digest).is_none() {
                    continue;
                }
                let ctx = child.platform.as_ref().map(PlatformJson::name).unwrap_or_else(|| context.to_owned());
                visit(child, &ctx, staging, walk, depth + 1)?;
            }
        }
        Kind::Manifest => {
            let manifest: Manifest = json_blob(desc, &what, staging)?;
            if manifest.layers.len() > MAX_CHILDREN {
                return Err(ImportError::Invalid(format!("the manifest of {context} lists too many layers")));
            }
            check(&manifest.config, &format!("config of {context}"), staging, walk)?;
            let config: Config = json_blob(&manifest.config, &format!("config of {context}"), staging)?;
            let platform = match &desc.platform {
                Some(p) => p.name(),
                None if !config.os.is_empty() && !config.architecture.is_empty() => {
                    PlatformJson { os: config.os, architecture: config.architecture, variant: config.variant }.name()
                }
                None => context.to_owned(),
            };
            for layer in &manifest.layers {
                check(layer, &format!("layer of {platform}"), staging, walk)?;
            }
            if !is_attestation(desc) && platform.contains('/') {
                walk.platforms.insert(platform);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use serde_json::json;

    use super::*;

    /// Builds OCI archives for tests.
    pub struct ArchiveBuilder {
        /// Blobs by digest.
        pub blobs: Vec<(String, Vec<u8>)>,
        /// The top-level descriptors.
        pub index: serde_json::Value,
    }

    pub fn digest(data: &[u8]) -> String {
        format!("sha256:{}", shoal_proto::hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref()))
    }

    impl ArchiveBuilder {
        fn blob(&mut self, data: Vec<u8>) -> (String, u64) {
            let d = digest(&data);
            let size = data.len() as u64;
            if !self.blobs.iter().any(|(x, _)| *x == d) {
                self.blobs.push((d.clone(), data));
            }
            (d, size)
        }

        /// A multi-arch image named `name`, one tiny layer per platform.
        pub fn multi_arch(name: &str, platforms: &[(&str, &str, Option<&str>)]) -> Self {
            let mut b = Self { blobs: Vec::new(), index: json!({}) };
            let mut manifests = Vec::new();
            for (os, arch, variant) in platforms {
                let (layer, layer_size) = b.blob(format!("layer for {arch}{variant:?}").into_bytes());
                let config = json!({ "os": os, "architecture": arch, "variant": variant, "rootfs": { "type": "layers", "diff_ids": [layer] } });
                let (config, config_size) = b.blob(serde_json::to_vec(&config).unwrap());
                let manifest = json!({
                    "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size },
                    "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": layer_size }],
                });
                let (m, m_size) = b.blob(serde_json::to_vec(&manifest).unwrap());
                let mut platform = json!({ "os": os, "architecture": arch });
                if let Some(v) = variant {
                    platform["variant"] = json!(v);
                }
                manifests.push(json!({ "mediaType": OCI_MANIFEST, "digest": m, "size": m_size, "platform": platform }));
            }
            let index = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
            let (idx, idx_size) = b.blob(serde_json::to_vec(&index).unwrap());
            b.index = json!({ "schemaVersion": 2, "manifests": [{
                "mediaType": OCI_INDEX, "digest": idx, "size": idx_size,
                "annotations": { REF_NAME: name },
            }]});
            b
        }

        /// The layer blob digests (the non-JSON blobs).
        pub fn layers(&self) -> Vec<String> {
            self.blobs.iter().filter(|(_, d)| d.starts_with(b"layer")).map(|(x, _)| x.clone()).collect()
        }

        /// The tar: `extra` entries appended raw (name, content).
        pub fn tar(&self, extra: &[(&str, &[u8])]) -> Vec<u8> {
            let mut t = tar::Builder::new(Vec::new());
            let mut add = |name: &str, data: &[u8]| {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_entry_type(tar::EntryType::Regular);
                // Set the name bytes directly so tests can write names tar::Builder refuses.
                let gnu = h.as_gnu_mut().unwrap();
                gnu.name[..name.len()].copy_from_slice(name.as_bytes());
                h.set_cksum();
                t.append(&h, data).unwrap();
            };
            add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
            for (d, data) in &self.blobs {
                add(&format!("blobs/sha256/{}", &d[7..]), data);
            }
            for (name, data) in extra {
                add(name, data);
            }
            add("index.json", &serde_json::to_vec(&self.index).unwrap());
            t.into_inner().unwrap()
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    struct Env {
        dir: std::path::PathBuf,
        store: BlobStore,
    }

    impl Env {
        fn new() -> Self {
            let dir =
                std::env::temp_dir().join(format!("shoal-archive-{}", shoal_proto::hex(&shoal_link::random::<6>())));
            let store = BlobStore::open(&dir).unwrap();
            Self { dir, store }
        }
        fn import(&self, bytes: &[u8]) -> Result<Imported, ImportError> {
            let path = self.dir.join("in.tar");
            std::fs::write(&path, bytes).unwrap();
            import(&path, &self.store)
        }
        /// Nothing in the store and no staging left over.
        fn assert_empty(&self) {
            let blobs = std::fs::read_dir(self.dir.join("blobs/sha256")).unwrap().count();
            let tmp = std::fs::read_dir(self.store.tmp_dir()).unwrap().count();
            assert_eq!((blobs, tmp), (0, 0), "a refused import left files behind");
        }
    }

    impl Drop for Env {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    const PLATFORMS: &[(&str, &str, Option<&str>)] =
        &[("linux", "amd64", None), ("linux", "arm64", None), ("linux", "arm", Some("v7"))];

    #[test]
    fn a_multi_arch_archive_imports_plain_and_gzipped() {
        let env = Env::new();
        let b = ArchiveBuilder::multi_arch("demo/app:1.0", PLATFORMS);
        for bytes in [b.tar(&[]), gzip(&b.tar(&[("manifest.json", b"[]")]))] {
            let imported = env.import(&bytes).unwrap();
            let img = &imported.images[0];
            assert_eq!(img.reference, "demo/app:1.0");
            assert_eq!(img.platforms, ["linux/amd64", "linux/arm/v7", "linux/arm64"]);
            assert_eq!(img.blobs.len(), 10, "index + 3 × (manifest, config, layer)");
            assert_eq!(img.size, b.blobs.iter().map(|(_, d)| d.len() as u64).sum::<u64>());
            let used: std::collections::HashSet<String> = img.blobs.iter().cloned().collect();
            env.store.commit(&imported.staging, &used).unwrap();
            drop(imported);
            assert_eq!(
                env.store.size(&b.layers()[0]).unwrap(),
                Some(b.blobs.iter().find(|(d, _)| *d == b.layers()[0]).unwrap().1.len() as u64)
            );
            assert_eq!(std::fs::read_dir(env.store.tmp_dir()).unwrap().count(), 0);
        }
    }

    #[test]
    fn a_truncated_archive_is_refused_with_nothing_stored() {
        let env = Env::new();
        let tar = ArchiveBuilder::multi_arch("demo/app:1.0", PLATFORMS).tar(&[]);
        for cut in [tar.len() / 2, tar.len() - 1024 - 512, 700, 10] {
            let err = env.import(&tar[..cut]).unwrap_err();
            assert!(matches!(err, ImportError::Truncated(_)), "cut at {cut}: {err}");
            assert!(err.to_string().starts_with("archive is truncated"), "{err}");
            env.assert_empty();
        }
        let gz = gzip(&tar);
        let err = env.import(&gz[..gz.len() / 2]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        env.assert_empty();
    }

    #[test]
    fn a_tampered_blob_is_refused_with_nothing_stored() {
        let env = Env::new();
        let mut b = ArchiveBuilder::multi_arch("demo/app:1.0", PLATFORMS);
        let victim = b.layers()[1].clone();
        let entry = b.blobs.iter_mut().find(|(d, _)| *d == victim).unwrap();
        entry.1[0] ^= 1;
        let err = env.import(&b.tar(&[])).unwrap_err();
        assert_eq!(err.to_string(), format!("blob {victim} in the archive is corrupt: its content does not match its digest; export the image again"));
        env.assert_empty();
    }

    #[test]
    fn a_missing_layer_is_refused_naming_its_platform() {
        let env = Env::new();
        let mut b = ArchiveBuilder::multi_arch("demo/app:1.0", PLATFORMS);
        let arm64 = b.blobs.iter().find(|(_, d)| d.starts_with(b"layer for arm64")).unwrap().0.clone();
        b.blobs.retain(|(d, _)| *d != arm64);
        let err = env.import(&b.tar(&[])).unwrap_err();
        assert_eq!(err.to_string(), format!("archive is truncated: blob {arm64} (layer of linux/arm64) is missing"));
        env.assert_empty();
    }

    #[test]
    fn bad_index_json_and_names_are_refused() {
        let env = Env::new();
        let good = ArchiveBuilder::multi_arch("demo/app:1.0", PLATFORMS);
        let mut bad_json = ArchiveBuilder::multi_arch("demo/app:1.0", PLATFORMS);
        bad_json.index = json!({ "manifests": "nope" });
        let err = env.import(&bad_json.tar(&[])).unwrap_err();
        assert!(err.to_string().contains("index.json does not parse"), "{err}");
        env.assert_empty();

        let mut tag_only = ArchiveBuilder::multi_arch("1.0", PLATFORMS);
        let err = env.import(&tag_only.tar(&[])).unwrap_err();
        assert!(err.to_string().contains("named only by the tag \"1.0\""), "{err}");
        tag_only.index["manifests"][0]["annotations"][CONTAINERD_NAME] = json!("docker.io/demo/app:1.0");
        assert_eq!(env.import(&tag_only.tar(&[])).unwrap().images[0].reference, "docker.io/demo/app:1.0");

        let mut wrong_size = ArchiveBuilder::multi_arch("demo/app:1.0", PLATFORMS);
        wrong_size.index["manifests"][0]["size"] = json!(3);
        assert!(env.import(&wrong_size.tar(&[])).unwrap_err().to_string().contains("descriptor says 3"));

        let mut bad_digest = ArchiveBuilder::multi_arch("demo/app:1.0", PLATFORMS);
        bad_digest.index["manifests"][0]["digest"] = json!("sha256:../../etc/passwd");
        assert!(env.import(&bad_digest.tar(&[])).unwrap_err().to_string().contains("only sha256 digests"));

        let no_index = &good.tar(&[])[..];
        let without: Vec<u8> = {
            // The same archive with index.json renamed away.
            let mut t = no_index.to_vec();
            let pos = t.windows(10).position(|w| w == b"index.json").unwrap();
            t[pos..pos + 10].copy_from_slice(b"index.jsox");
            let mut h = tar::Header::from_byte_slice(&t[pos..pos + 512]).clone();
            h.set_cksum();
            t[pos..pos + 512].copy_from_slice(h.as_bytes());
            t
        };
        assert!(env.import(&without).unwrap_err().to_string().contains("no index.json"));
        assert!(env
            .import(
                b"this is not a tar archive at all, just some text padding it out to more than a block"
                    .repeat(10)
                    .as_slice()
            )
            .is_err());
        env.assert_empty();
    }

    #[test]
    fn blob_names_that_traverse_are_refused() {
        let env = Env::new();
        let b = ArchiveBuilder::multi_arch("demo/app:1.0", PLATFORMS);
        for name in ["blobs/sha256/../../x", "blobs/sha256/abc", "blobs/md5/0123"] {
            let err = env.import(&b.tar(&[(name, b"x")])).unwrap_err();
            assert!(matches!(err, ImportError::Invalid(_)), "{name}: {err}");
            env.assert_empty();
        }
        assert!(!env.dir.join("x").exists() && !env.dir.parent().unwrap().join("x").exists());
    }
}
