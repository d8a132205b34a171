//! The parts of the OCI image specification (and Docker's v2 schema, its ancestor) shoal
//! reads: media types, image index, manifest, descriptor, platform, image config, and
//! which manifest of an index fits a board.
//!
//! Pure data: no I/O. Unknown fields are ignored, so newer images still parse. It does
//! not validate an image against the whole spec, only what the agent relies on.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

/// OCI image index (a multi-platform image).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker's equivalent of the index.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker's equivalent of the manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Image trouble found while reading the JSON documents.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// A JSON document does not parse as what it should be.
    #[error("{what} is not valid JSON of the expected shape ({source}): the image is broken, rebuild or re-save it")]
    Json {
        /// What was being parsed.
        what: &'static str,
        /// Why it failed.
        source: serde_json::Error,
    },
    /// A document's media type is one the agent does not handle.
    #[error("unsupported media type {0:?}: shoal handles OCI and Docker v2 images only")]
    UnsupportedMediaType(String),
    /// No manifest in the index fits this board.
    #[error("the image has no manifest for {wanted} (it has {}): build or pull it for {wanted}", .available.join(", "))]
    NoPlatform {
        /// This board's platform.
        wanted: String,
        /// The platforms the image offers.
        available: Vec<String>,
    },
    /// A single-platform image built for another board.
    #[error("the image is built for {found}, not {wanted}: build or pull it for {wanted}")]
    WrongPlatform {
        /// This board's platform.
        wanted: String,
        /// The platform the image's config names.
        found: String,
    },
}

/// The annotation BuildKit puts on an attestation manifest in an index.
pub const REFERENCE_TYPE_ANNOTATION: &str = "vnd.docker.reference.type";

/// A reference to a blob: what it is, its digest and size.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the blob it points to; empty when a producer left it out.
    #[serde(default)]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Platform, in an index.
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Annotations: an image's name in a layout's `index.json`.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// An annotation's value, if present and not empty.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// Whether it points at a build attestation (BuildKit's `unknown/unknown`), which no
    /// board runs and exporters may leave out of an archive.
    pub fn is_attestation(&self) -> bool {
        self.annotation(REFERENCE_TYPE_ANNOTATION) == Some("attestation-manifest")
            || self.platform.as_ref().is_some_and(|p| p.os == "unknown" && p.architecture == "unknown")
    }
}

/// A platform as images describe them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    /// `amd64`, `arm64`, `arm`, …
    pub architecture: String,
    /// `linux`, …
    pub os: String,
    /// `v7`, `v8`, …
    #[serde(default)]
    pub variant: Option<String>,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match self.variant.as_deref() {
            Some(v) if !v.is_empty() => write!(f, "/{v}"),
            _ => Ok(()),
        }
    }
}

/// An image index or Docker manifest list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    /// Absent in some OCI indexes (the field is optional there).
    #[serde(default)]
    pub media_type: Option<String>,
    /// One manifest per platform (plus attestations, whose platform is `unknown/unknown`).
    pub manifests: Vec<Descriptor>,
}

/// An image manifest (OCI or Docker v2).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Absent in some OCI manifests (the field is optional there).
    #[serde(default)]
    pub media_type: Option<String>,
    /// The image config blob.
    pub config: Descriptor,
    /// Layers, bottom first.
    pub layers: Vec<Descriptor>,
}

/// What the top-level digest of an image names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopLevel {
    /// A multi-platform image.
    Index(ImageIndex),
    /// A single-platform image.
    Manifest(ImageManifest),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde::de::IgnoredAny>,
}

impl TopLevel {
    /// Parses an index or a manifest, by its `mediaType`, or by its shape when the
    /// (optional) media type is absent.
    pub fn parse(bytes: &[u8]) -> Result<Self, OciError> {
        let probe: Probe = serde_json::from_slice(bytes).map_err(|source| OciError::Json { what: "image", source })?;
        let is_index = match probe.media_type.as_deref() {
            Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => true,
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
            Some(other) => return Err(OciError::UnsupportedMediaType(other.to_owned())),
            None => probe.manifests.is_some(),
        };
        if is_index {
            let index =
                serde_json::from_slice(bytes).map_err(|source| OciError::Json { what: "image index", source })?;
            Ok(Self::Index(index))
        } else {
            Ok(Self::Manifest(ImageManifest::parse(bytes)?))
        }
    }
}

impl ImageManifest {
    /// Parses a manifest, refusing an index or anything else by media type.
    pub fn parse(bytes: &[u8]) -> Result<Self, OciError> {
        let m: Self =
            serde_json::from_slice(bytes).map_err(|source| OciError::Json { what: "image manifest", source })?;
        match m.media_type.as_deref() {
            None | Some(OCI_MANIFEST | DOCKER_MANIFEST) => Ok(m),
            Some(other) => Err(OciError::UnsupportedMediaType(other.to_owned())),
        }
    }
}

/// The image config: what to run and the layers' uncompressed digests.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ImageConfig {
    /// `amd64`, `arm64`, `arm`.
    #[serde(default)]
    pub architecture: String,
    /// `linux`.
    #[serde(default)]
    pub os: String,
    /// `v7`, `v8`.
    #[serde(default)]
    pub variant: Option<String>,
    /// How to run a container of it; Docker writes `null` when nothing is set.
    #[serde(default)]
    pub config: Option<RunConfig>,
    /// Uncompressed digests of the layers, bottom first.
    #[serde(default)]
    pub rootfs: RootFs,
}

impl ImageConfig {
    /// Parses a config blob.
    pub fn parse(bytes: &[u8]) -> Result<Self, OciError> {
        serde_json::from_slice(bytes).map_err(|source| OciError::Json { what: "image config", source })
    }

    /// The platform the config says the image is for.
    pub fn platform(&self) -> Platform {
        Platform { architecture: self.architecture.clone(), os: self.os.clone(), variant: self.variant.clone() }
    }
}

/// The `config` object of an image config. Docker writes `null` for unset lists.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// Executable and leading arguments.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// The signal that stops it (`StopSignal`, e.g. `SIGINT`).
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// Default arguments (or command, without an entrypoint).
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `KEY=VALUE` environment.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// Working directory inside the container.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`.
    #[serde(default)]
    pub user: Option<String>,
    /// `80/tcp` → `{}`.
    #[serde(default)]
    pub exposed_ports: Option<BTreeMap<String, serde::de::IgnoredAny>>,
    /// The image's health check (Dockerfile `HEALTHCHECK`).
    #[serde(default)]
    pub healthcheck: Option<Healthcheck>,
}

/// `Healthcheck` of an image config, as Docker writes it: durations in nanoseconds,
/// zero (or absent) for "not set".
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    /// `["CMD", args…]`, `["CMD-SHELL", command]` or `["NONE"]`.
    #[serde(default)]
    pub test: Option<Vec<String>>,
    /// Time between checks, ns.
    #[serde(default)]
    pub interval: Option<i64>,
    /// Time a check may take, ns.
    #[serde(default)]
    pub timeout: Option<i64>,
    /// Grace after the start, ns.
    #[serde(default)]
    pub start_period: Option<i64>,
    /// Failures in a row that make the container unhealthy.
    #[serde(default)]
    pub retries: Option<i64>,
}

/// The `rootfs` object of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RootFs {
    /// `layers`.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// `sha256:<hex>` of each uncompressed layer tar, bottom first.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// How a board's platform is named in images, and which variants it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPlatform {
    /// OCI architecture name.
    pub architecture: &'static str,
    /// Variants it runs, best first; `None` is an image that names no variant.
    pub variants: &'static [Option<&'static str>],
}

impl HostPlatform {
    /// The platform of the running agent.
    pub fn current() -> Self {
        Self::for_rust_arch(std::env::consts::ARCH)
    }

    /// The platform for a Rust architecture name (`std::env::consts::ARCH`).
    pub fn for_rust_arch(arch: &str) -> Self {
        match arch {
            "x86_64" => Self { architecture: "amd64", variants: &[None] },
            "aarch64" => Self { architecture: "arm64", variants: &[Some("v8"), None] },
            // The boards shoal supports are ARMv7 (armv7-unknown-linux-gnueabihf); a v6
            // or v5 image would run too, but slower, so only v7 and unlabelled are taken.
            "arm" => Self { architecture: "arm", variants: &[Some("v7"), None] },
            // No shoal board has another architecture; a name no image uses matches nothing.
            _ => Self { architecture: "unsupported", variants: &[None] },
        }
    }

    /// How people write it: `linux/arm/v7`.
    pub fn name(&self) -> String {
        match self.variants.first() {
            Some(Some(v)) => format!("linux/{}/{v}", self.architecture),
            _ => format!("linux/{}", self.architecture),
        }
    }

    /// How well `p` fits: `Some(rank)` (lower is better) when this board runs it.
    pub fn rank(&self, p: &Platform) -> Option<usize> {
        if p.os != "linux" || p.architecture != self.architecture {
            return None;
        }
        let variant = p.variant.as_deref().filter(|v| !v.is_empty());
        self.variants.iter().position(|v| *v == variant)
    }

    /// The best manifest of an index for this board.
    pub fn choose<'a>(&self, index: &'a ImageIndex) -> Result<&'a Descriptor, OciError> {
        index
            .manifests
            .iter()
            .filter_map(|d| Some((self.rank(d.platform.as_ref()?)?, d)))
            .min_by_key(|(rank, _)| *rank)
            .map(|(_, d)| d)
            .ok_or_else(|| OciError::NoPlatform {
                wanted: self.name(),
                available: index
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref())
                    // Attestation manifests are not platforms anyone can run.
                    .filter(|p| p.os != "unknown")
                    .map(Platform::to_string)
                    .collect(),
            })
    }

    /// Checks a single-platform image's config names a platform this board runs. A
    /// config that names no architecture at all is taken on trust.
    pub fn check(&self, config: &ImageConfig) -> Result<(), OciError> {
        if config.architecture.is_empty() || self.rank(&config.platform()).is_some() {
            Ok(())
        } else {
            Err(OciError::WrongPlatform { wanted: self.name(), found: config.platform().to_string() })
        }
    }
}

/// Layer compression, from the media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerMediaType {
    /// Plain tar.
    Tar,
    /// gzip-compressed tar.
    Gzip,
    /// zstd-compressed tar.
    Zstd,
}

impl LayerMediaType {
    /// The compression a layer media type declares, or `None` for a media type that is
    /// not a layer shoal can unpack (encrypted layers, artefacts).
    pub fn parse(media_type: &str) -> Option<Self> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Self::Tar),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Self::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Self::Zstd),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(arch: &str, variant: Option<&str>, digest_char: char) -> serde_json::Value {
        let mut platform = serde_json::json!({ "architecture": arch, "os": "linux" });
        if let Some(v) = variant {
            platform["variant"] = v.into();
        }
        serde_json::json!({
            "mediaType": OCI_MANIFEST,
            "digest": format!("sha256:{}", digest_char.to_string().repeat(64)),
            "size": 100,
            "platform": platform,
            "annotations": { "ignored": "yes" },
        })
    }

    fn index(manifests: Vec<serde_json::Value>) -> ImageIndex {
        let json = serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
        match TopLevel::parse(json.to_string().as_bytes()).unwrap() {
            TopLevel::Index(i) => i,
            other => panic!("not an index: {other:?}"),
        }
    }

    #[test]
    fn rust_architectures_map_to_oci_names() {
        assert_eq!(HostPlatform::for_rust_arch("x86_64").architecture, "amd64");
        assert_eq!(HostPlatform::for_rust_arch("aarch64").architecture, "arm64");
        assert_eq!(HostPlatform::for_rust_arch("arm").architecture, "arm");
        assert_eq!(HostPlatform::for_rust_arch("arm").name(), "linux/arm/v7");
        assert_eq!(HostPlatform::for_rust_arch("x86_64").name(), "linux/amd64");
    }

    #[test]
    fn the_index_entry_for_this_board_is_chosen() {
        let i = index(vec![d("amd64", None, 'a'), d("arm64", Some("v8"), 'b'), d("arm", Some("v7"), 'c')]);
        assert!(HostPlatform::for_rust_arch("x86_64").choose(&i).unwrap().digest.ends_with('a'));
        assert!(HostPlatform::for_rust_arch("aarch64").choose(&i).unwrap().digest.ends_with('b'));
        assert!(HostPlatform::for_rust_arch("arm").choose(&i).unwrap().digest.ends_with('c'));
    }

    #[test]
    fn arm_prefers_v7_takes_unlabelled_and_refuses_v6() {
        let arm = HostPlatform::for_rust_arch("arm");
        let i = index(vec![d("arm", None, 'a'), d("arm", Some("v7"), 'b')]);
        assert!(arm.choose(&i).unwrap().digest.ends_with('b'));
        let i = index(vec![d("arm", Some("v6"), 'a'), d("arm", None, 'b')]);
        assert!(arm.choose(&i).unwrap().digest.ends_with('b'));
        let i = index(vec![d("arm", Some("v6"), 'a')]);
        assert!(arm.choose(&i).is_err());
    }

    #[test]
    fn a_missing_platform_names_what_the_image_has() {
        let mut attestation = d("unknown", None, 'f');
        attestation["platform"]["os"] = "unknown".into();
        let i = index(vec![d("amd64", None, 'a'), d("arm64", Some("v8"), 'b'), attestation]);
        let err = HostPlatform::for_rust_arch("arm").choose(&i).unwrap_err().to_string();
        assert!(err.contains("linux/arm/v7"), "{err}");
        assert!(err.contains("linux/amd64, linux/arm64/v8"), "{err}");
        assert!(!err.contains("unknown"), "{err}");
    }

    #[test]
    fn docker_manifest_lists_and_manifests_parse() {
        let list = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_LIST,
            "manifests": [d("amd64", None, 'a')],
        });
        assert!(matches!(TopLevel::parse(list.to_string().as_bytes()).unwrap(), TopLevel::Index(_)));
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": { "mediaType": "application/vnd.docker.container.image.v1+json", "digest": "sha256:00", "size": 7 },
            "layers": [{ "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": "sha256:11", "size": 9 }],
        });
        let TopLevel::Manifest(m) = TopLevel::parse(manifest.to_string().as_bytes()).unwrap() else {
            panic!("not a manifest")
        };
        assert_eq!(m.layers.len(), 1);
        assert_eq!(LayerMediaType::parse(&m.layers[0].media_type), Some(LayerMediaType::Gzip));
    }

    #[test]
    fn a_document_without_media_type_is_told_apart_by_shape() {
        let idx = serde_json::json!({ "schemaVersion": 2, "manifests": [] });
        assert!(matches!(TopLevel::parse(idx.to_string().as_bytes()).unwrap(), TopLevel::Index(_)));
        let man = serde_json::json!({
            "schemaVersion": 2,
            "config": { "mediaType": "x", "digest": "sha256:00", "size": 1 },
            "layers": [],
        });
        assert!(matches!(TopLevel::parse(man.to_string().as_bytes()).unwrap(), TopLevel::Manifest(_)));
    }

    #[test]
    fn unknown_media_types_and_garbage_are_refused() {
        let weird = serde_json::json!({ "mediaType": "application/vnd.cncf.helm.config.v1+json" });
        assert!(matches!(TopLevel::parse(weird.to_string().as_bytes()), Err(OciError::UnsupportedMediaType(_))));
        assert!(matches!(TopLevel::parse(b"{not json"), Err(OciError::Json { .. })));
        assert_eq!(LayerMediaType::parse("application/vnd.oci.image.layer.v1.tar+encrypted"), None);
    }

    #[test]
    fn docker_configs_with_nulls_parse() {
        let json = br#"{
            "architecture": "arm", "os": "linux", "variant": "v7",
            "config": {
                "Entrypoint": null, "Cmd": ["/bin/app", "--serve"], "Env": ["PATH=/usr/bin"],
                "WorkingDir": "/srv", "User": "1000:1000", "ExposedPorts": { "8080/tcp": {} },
                "Labels": null, "Healthcheck": { "Test": ["NONE"] }
            },
            "rootfs": { "type": "layers", "diff_ids": ["sha256:aa"] },
            "history": [{ "created_by": "x" }]
        }"#;
        let c = ImageConfig::parse(json).unwrap();
        let run = c.config.clone().unwrap();
        assert_eq!(run.entrypoint, None);
        assert_eq!(run.cmd.unwrap(), ["/bin/app", "--serve"]);
        assert_eq!(run.working_dir.as_deref(), Some("/srv"));
        assert_eq!(run.user.as_deref(), Some("1000:1000"));
        assert!(run.exposed_ports.unwrap().contains_key("8080/tcp"));
        assert_eq!(run.healthcheck.unwrap().test.unwrap(), ["NONE"]);
        assert_eq!(c.rootfs.diff_ids, ["sha256:aa"]);
        assert!(HostPlatform::for_rust_arch("arm").check(&c).is_ok());
        assert!(HostPlatform::for_rust_arch("x86_64").check(&c).is_err());
        let null_config = ImageConfig::parse(br#"{"architecture":"amd64","os":"linux","config":null}"#).unwrap();
        assert_eq!(null_config.config, None);
    }
}
