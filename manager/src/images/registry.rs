//! `shoal image pull` on the manager: an image fetched from an OCI distribution (v2)
//! registry into the blob store, so the boards get it from the manager as they get a
//! loaded archive (they never reach a registry, never hold credentials).
//!
//! The protocol (Docker Hub's default names, `WWW-Authenticate` challenges, basic and
//! bearer-token auth, ranged blob reads) is `oci-client`'s. This module decides what to
//! fetch and checks it: the tag is resolved to the digest of its index or manifest, only
//! the manifests of the platforms wanted (the fleet's boards, plus `--platform`) are
//! fetched, and every blob is checked against its descriptor's digest and size before it
//! may enter the store, as `image load` checks an archive. Blobs the store already holds
//! are not fetched. A blob is written to `blobs/pull/<hex>.partial` as it arrives; an
//! interrupted transfer is retried from where it stopped (HTTP `Range`), also after a
//! manager restart, and the whole file is hashed at the end. Only when every blob is
//! verified may the caller commit them and write the records ([`Pulled`]).
//!
//! It keeps credentials (`<data-dir>/manager/registries.json`, in `docker login`'s
//! `config.json` format, which it also reads from `$DOCKER_CONFIG` or `~/.docker`) but
//! writes no image records and knows nothing of services.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt as _;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use serde::Deserialize;
use shoal_oci::spec::{
    Descriptor, ImageIndex, ImageManifest, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST,
};
use shoal_proto::images::{normalize_ref, sha256_hex, PullProgress, PullStatus, MAX_PLATFORMS};
use tokio::io::AsyncWriteExt as _;

/// Largest index or manifest accepted from a registry.
const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Most layers in one manifest, manifests in one index.
const MAX_CHILDREN: usize = 1024;
/// Most bytes one pull may fetch, as much as an archive may unpack to: a manifest that
/// names absurd sizes is refused before anything is fetched.
const MAX_PULL_BYTES: u64 = shoal_oci::archive::MAX_UNPACKED_BYTES;
/// How long a pull keeps retrying a registry that stopped answering before giving up.
const RETRY_FOR: Duration = Duration::from_secs(60);
/// First wait between retries (doubled up to 2 s).
const RETRY_FIRST: Duration = Duration::from_millis(200);
/// Media types asked for when resolving a tag.
const MANIFEST_TYPES: [&str; 4] = [OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// Why a pull failed. Nothing enters the store in any case.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The reference does not parse.
    #[error("invalid image reference {reference:?}: {detail}")]
    InvalidReference {
        /// As typed.
        reference: String,
        /// The parser's reason.
        detail: String,
    },
    /// The registry refused the credentials, or wants some.
    #[error(
        "registry {registry} refused access to {repository} ({detail}): check the name, or log in with \
         `shoal login {registry}`"
    )]
    Refused {
        /// `host[:port]`.
        registry: String,
        /// The repository.
        repository: String,
        /// What it said.
        detail: String,
    },
    /// `shoal login`'s credentials were refused.
    #[error("registry {registry} refused the credentials ({detail}): check the user name and password")]
    LoginRefused {
        /// `host[:port]`.
        registry: String,
        /// What it said.
        detail: String,
    },
    /// No such tag (or repository) in the registry.
    #[error("manifest for {reference} not found: the tag does not exist in {registry}")]
    NotFound {
        /// The remote reference.
        reference: String,
        /// `host[:port]`.
        registry: String,
    },
    /// None of the platforms wanted is in the image.
    #[error("{reference} has no image for {wanted}: it offers {offered}")]
    NoPlatform {
        /// The remote reference.
        reference: String,
        /// What was wanted, and by which boards (`linux/arm/v7 (node3)`).
        wanted: String,
        /// What the image offers.
        offered: String,
    },
    /// The registry did not answer (after retrying).
    #[error("registry {registry} is unreachable: {detail}")]
    Unreachable {
        /// `host[:port]`.
        registry: String,
        /// What happened.
        detail: String,
    },
    /// The registry sent something that is not what it names (digest, size, format).
    #[error("registry {registry} sent a bad {what}: {detail}")]
    Bad {
        /// `host[:port]`.
        registry: String,
        /// Which document or blob.
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// The manager's own disk.
    #[error("pull area {path}: {source}")]
    Local {
        /// Where.
        path: PathBuf,
        /// What.
        source: std::io::Error,
    },
}

impl PullError {
    /// Whether trying again later may work (the registry or the network), as opposed to
    /// a refusal or a broken image.
    pub fn is_temporary(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }

    /// Whether the operator asked for something that does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. } | Self::NoPlatform { .. })
    }
}

/// A reference made ready for a registry: where it lives, and the name the manager
/// keeps it under (Docker's familiar form: `nginx:1.27`, `reg:5000/team/app:2.1`).
#[derive(Debug, Clone)]
pub struct Remote {
    /// For oci-client.
    pub reference: Reference,
    /// The manager's name for it (no digest).
    pub local: String,
}

impl Remote {
    /// Parses a reference as Docker does (`nginx` is `docker.io/library/nginx:latest`).
    pub fn parse(input: &str) -> Result<Self, PullError> {
        let invalid = |detail: String| PullError::InvalidReference { reference: input.to_owned(), detail };
        let reference: Reference = input.parse().map_err(|e: oci_client::ParseError| invalid(e.to_string()))?;
        let tag = reference.tag().unwrap_or("latest");
        let local = normalize_ref(&format!("{}/{}:{tag}", reference.registry(), reference.repository()));
        if local.len() + 72 > shoal_proto::images::MAX_REF_LEN {
            return Err(invalid("the name is too long".into()));
        }
        let mut reference = reference;
        // Docker's own endpoint for Hub pulls (oci-client would use index.docker.io).
        if reference.registry() == "docker.io" {
            reference.set_mirror_registry("registry-1.docker.io".into());
        }
        Ok(Self { reference, local })
    }

    /// `host[:port]` as the operator names it (`docker.io` for Docker Hub).
    pub fn registry(&self) -> &str {
        self.reference.registry()
    }

    /// Whether plain HTTP may be used: only for loopback registries unless configured.
    pub fn allows_http(&self, insecure: &[String]) -> bool {
        let host = self.registry();
        insecure.iter().any(|i| i == host) || is_loopback(host)
    }
}

/// Whether `host[:port]` names this machine.
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The OCI platform a board of `arch` (as agents report it) runs: `linux/amd64`,
/// `linux/arm64`, `linux/arm/v7` (shoal's 32-bit ARM agent is ARMv7).
pub fn board_platform(os: &str, arch: &str) -> String {
    let os = if os.is_empty() { "linux" } else { os };
    match shoal_core::placement::canonical_arch(arch).as_str() {
        "arm" => format!("{os}/arm/v7"),
        other => format!("{os}/{other}"),
    }
}

/// Whether a manifest for `offered` (an index entry's platform) runs on `wanted`
/// (`os/arch[/variant]`): same OS and architecture; a variant must match when both name
/// one (arm64's `v8` is the default and matches none).
pub fn platform_matches(wanted: &str, offered: &str) -> bool {
    let split = |p: &str| {
        let mut it = p.split('/');
        let os = it.next().unwrap_or("").to_owned();
        let arch = shoal_core::placement::canonical_arch(it.next().unwrap_or(""));
        let variant = it.next().filter(|v| !(arch == "arm64" && *v == "v8")).map(str::to_owned);
        (os, arch, variant)
    };
    let (wo, wa, wv) = split(wanted);
    let (oo, oa, ov) = split(offered);
    wo == oo && wa == oa && (wv.is_none() || ov.is_none() || wv == ov)
}

/// Picks the manifests of an index for the wanted platforms: one per platform (the
/// first that matches, attestations skipped), deduplicated, and the wanted platforms no
/// entry matches.
pub fn choose<'a>(index: &'a ImageIndex, wanted: &BTreeSet<String>) -> (Vec<&'a Descriptor>, Vec<String>) {
    let mut chosen: Vec<&Descriptor> = Vec::new();
    let mut missing = Vec::new();
    for want in wanted {
        let hit = index
            .manifests
            .iter()
            .filter(|d| !d.is_attestation())
            .find(|d| d.platform.as_ref().is_some_and(|p| platform_matches(want, &p.to_string())));
        match hit {
            Some(d) if !chosen.iter().any(|c| c.digest == d.digest) => chosen.push(d),
            Some(_) => {}
            None => missing.push(want.clone()),
        }
    }
    (chosen, missing)
}

/// Credentials in `docker login`'s `config.json` format: `{"auths": {"HOST": {"auth":
/// base64("user:password")}}}` (or `username`/`password` fields).
#[derive(Debug, Default, Deserialize, serde::Serialize)]
pub struct DockerConfig {
    /// Registry → entry.
    #[serde(default)]
    pub auths: BTreeMap<String, AuthEntry>,
}

/// One registry's entry.
#[derive(Debug, Default, Clone, Deserialize, serde::Serialize)]
pub struct AuthEntry {
    /// base64 of `user:password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// Plain user name (older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Plain password (older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// Names Docker files a registry under: Docker Hub's legacy URL key too.
fn config_keys(registry: &str) -> Vec<String> {
    let mut keys = vec![registry.to_owned(), format!("https://{registry}"), format!("http://{registry}")];
    if matches!(registry, "docker.io" | "index.docker.io" | "registry-1.docker.io") {
        keys.extend(["https://index.docker.io/v1/".into(), "index.docker.io".into(), "docker.io".into()]);
    }
    keys
}

impl DockerConfig {
    /// Parses a `config.json`; an unreadable file is an error saying which.
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("not a docker config.json: {e}"))
    }

    /// User and password for `registry`, if some entry names it and decodes.
    pub fn lookup(&self, registry: &str) -> Option<(String, String)> {
        let entry = config_keys(registry).iter().find_map(|k| self.auths.get(k))?;
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Some((u.clone(), p.clone()));
        }
        let raw = base64::engine::general_purpose::STANDARD.decode(entry.auth.as_deref()?.trim()).ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (u, p) = text.split_once(':')?;
        Some((u.to_owned(), p.to_owned()))
    }

    /// Sets `registry`'s entry (the `auth` form, as `docker login` writes it).
    pub fn set(&mut self, registry: &str, user: &str, password: &str) {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.auths.insert(registry.to_owned(), AuthEntry { auth: Some(auth), ..AuthEntry::default() });
    }
}

/// The manager's credentials file.
pub fn credentials_path(manager_dir: &Path) -> PathBuf {
    manager_dir.join("registries.json")
}

/// Reads the manager's credentials (a missing file is an empty one).
pub fn load_credentials(manager_dir: &Path) -> Result<DockerConfig, String> {
    let path = credentials_path(manager_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => DockerConfig::parse(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DockerConfig::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes the manager's credentials, readable by its owner only.
pub fn save_credentials(manager_dir: &Path, config: &DockerConfig) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(config).map_err(std::io::Error::other)?;
    shoal_link::files::write_private(&credentials_path(manager_dir), &text)
}

/// Credentials for `registry`: the manager's own, else `docker login`'s
/// (`$DOCKER_CONFIG/config.json`, `~/.docker/config.json`) of the user running it.
pub fn auth_for(manager_dir: &Path, registry: &str) -> RegistryAuth {
    let own = load_credentials(manager_dir).ok().and_then(|c| c.lookup(registry));
    let docker = || {
        let dir = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))?;
        let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
        DockerConfig::parse(&text).ok()?.lookup(registry)
    };
    match own.or_else(docker) {
        Some((u, p)) => RegistryAuth::Basic(u, p),
        None => RegistryAuth::Anonymous,
    }
}

/// An oci-client for `remote`: https, or http for a loopback or `--insecure-registry` one.
pub fn client(remote: &Remote, insecure: &[String]) -> oci_client::Client {
    // reqwest is built without a TLS provider of its own: it uses ring, as quinn does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let protocol = if remote.allows_http(insecure) {
        ClientProtocol::HttpsExcept(vec![remote.reference.resolve_registry().to_owned()])
    } else {
        ClientProtocol::Https
    };
    oci_client::Client::new(ClientConfig {
        protocol,
        connect_timeout: Some(Duration::from_secs(5)),
        read_timeout: Some(Duration::from_secs(30)),
        ..ClientConfig::default()
    })
}

/// Checks credentials as `docker login` does: `GET /v2/`, then, as its challenge says,
/// with basic auth or for a token from the realm it names.
pub async fn check_login(registry: &str, user: &str, password: &str, insecure: &[String]) -> Result<(), PullError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let host = if registry == "docker.io" { "registry-1.docker.io" } else { registry };
    let scheme = if insecure.iter().any(|i| i == registry) || is_loopback(registry) { "http" } else { "https" };
    let unreachable = |e: reqwest::Error| PullError::Unreachable { registry: registry.to_owned(), detail: chain(&e) };
    let refused = |detail: String| PullError::LoginRefused { registry: registry.to_owned(), detail };
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(unreachable)?;
    let base = format!("{scheme}://{host}/v2/");
    let first = http.get(&base).send().await.map_err(unreachable)?;
    if first.status().is_success() {
        return Ok(());
    }
    let challenge =
        first.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let answer = if challenge.to_ascii_lowercase().starts_with("bearer") {
        let param = |name: &str| {
            let at = challenge.find(&format!("{name}=\""))? + name.len() + 2;
            challenge[at..].split('"').next().map(str::to_owned)
        };
        let realm =
            param("realm").ok_or_else(|| refused(format!("its challenge names no token realm: {challenge}")))?;
        let mut req = http.get(&realm).basic_auth(user, Some(password));
        if let Some(service) = param("service") {
            req = req.query(&[("service", service)]);
        }
        req.send().await.map_err(unreachable)?
    } else {
        http.get(&base).basic_auth(user, Some(password)).send().await.map_err(unreachable)?
    };
    match answer.status().as_u16() {
        200..=299 => Ok(()),
        401 | 403 => Err(refused("unauthorized: incorrect username or password".into())),
        code => Err(PullError::Unreachable { registry: registry.to_owned(), detail: format!("it answered {code}") }),
    }
}

/// What [`Puller::pull`] fetched and verified, ready to commit.
#[derive(Debug)]
pub struct Pulled {
    /// The manager's name for it.
    pub local: String,
    /// Digest of the top-level index or manifest.
    pub digest: String,
    /// Platforms fetched, sorted.
    pub platforms: Vec<String>,
    /// Every blob of it the manager now needs: digest → size.
    pub blobs: BTreeMap<String, u64>,
    /// Verified files in the pull area to move into the store: digest → path.
    pub fetched: BTreeMap<String, PathBuf>,
    /// Bytes received from the registry.
    pub bytes: u64,
}

/// One pull's context.
pub struct Puller<'a> {
    /// The registry client.
    pub client: oci_client::Client,
    /// What to pull.
    pub remote: Remote,
    /// Its credentials.
    pub auth: RegistryAuth,
    /// Where partial and verified blobs wait (`blobs/pull`).
    pub dir: PathBuf,
    /// Size of a blob the store already holds, if it does.
    pub held: &'a (dyn Fn(&str) -> Option<u64> + Sync),
    /// Progress for the CLI.
    pub progress: &'a (dyn Fn(PullProgress) + Sync),
    /// Per-blob locks: two pulls of images sharing a layer must not write one partial
    /// file at once.
    pub locks: &'a SingleFlight,
}

impl Puller<'_> {
    fn registry(&self) -> String {
        self.remote.registry().to_owned()
    }

    /// Maps oci-client's errors onto ours.
    fn error(&self, e: OciDistributionError) -> PullError {
        let registry = self.registry();
        let repository = self.remote.reference.repository().to_owned();
        match e {
            OciDistributionError::AuthenticationFailure(detail) => PullError::Refused { registry, repository, detail },
            OciDistributionError::UnauthorizedError { .. } => {
                PullError::Refused { registry, repository, detail: "401 unauthorized".into() }
            }
            OciDistributionError::ImageManifestNotFoundError(_) => {
                PullError::NotFound { reference: self.remote.reference.whole(), registry }
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<String> = envelope.errors.iter().map(|e| format!("{:?}", e.code)).collect();
                let text = envelope.errors.iter().map(|e| e.message.clone()).collect::<Vec<_>>().join("; ");
                let has = |c: &str| codes.iter().any(|x| x.eq_ignore_ascii_case(c));
                if has("ManifestUnknown") || has("NameUnknown") {
                    PullError::NotFound { reference: self.remote.reference.whole(), registry }
                } else if has("Unauthorized") || has("Denied") {
                    PullError::Refused { registry, repository, detail: text }
                } else {
                    PullError::Bad { registry, what: "answer".into(), detail: text }
                }
            }
            OciDistributionError::ServerError { code, message, .. } => match code {
                401 | 403 => PullError::Refused { registry, repository, detail: format!("{code} {message}") },
                404 => PullError::NotFound { reference: self.remote.reference.whole(), registry },
                429 | 500..=599 => PullError::Unreachable { registry, detail: format!("{code} {message}") },
                _ => PullError::Bad { registry, what: "answer".into(), detail: format!("{code} {message}") },
            },
            OciDistributionError::RequestError(e) => PullError::Unreachable { registry, detail: chain(&e) },
            OciDistributionError::IoError(e) => PullError::Unreachable { registry, detail: e.to_string() },
            other => PullError::Bad { registry, what: "answer".into(), detail: other.to_string() },
        }
    }

    /// Runs `op` until it succeeds, fails for good, or the registry stayed away for
    /// [`RETRY_FOR`].
    async fn retrying<T, F, Fut>(&self, mut op: F) -> Result<T, PullError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, PullError>>,
    {
        let started = tokio::time::Instant::now();
        let mut wait = RETRY_FIRST;
        loop {
            match op().await {
                Err(e) if e.is_temporary() && started.elapsed() < RETRY_FOR => {
                    tracing::info!(error = %e, "registry trouble; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    /// Fetches a manifest or index by digest or tag, checking its digest (and, for a
    /// child, its descriptor's size).
    async fn manifest(
        &self,
        reference: &Reference,
        expected: Option<&Descriptor>,
    ) -> Result<(Vec<u8>, String), PullError> {
        let fetch = || async {
            self.client.pull_manifest_raw(reference, &self.auth, &MANIFEST_TYPES).await.map_err(|e| self.error(e))
        };
        // The first request fails fast (a registry that is not there, a name meant to be
        // loaded); once the registry answered, a pull rides out its restarts.
        let (body, _) = if expected.is_some() { self.retrying(fetch).await? } else { fetch().await? };
        let bad = |detail: String| PullError::Bad { registry: self.registry(), what: "manifest".into(), detail };
        if body.len() > MAX_MANIFEST_BYTES {
            return Err(bad(format!("it is {} bytes, more than {MAX_MANIFEST_BYTES}", body.len())));
        }
        let digest = shoal_oci::digest::of(&body);
        if let Some(want) = reference.digest() {
            if want != digest {
                return Err(bad(format!("asked for {want}, its content is {digest}")));
            }
        }
        if let Some(d) = expected {
            if d.size != body.len() as u64 {
                return Err(bad(format!("{} is {} bytes but its descriptor says {}", d.digest, body.len(), d.size)));
            }
        }
        Ok((body.to_vec(), digest))
    }

    /// Resolves, chooses and fetches. `wanted` are the platforms asked for (by boards or
    /// `--platform`), with the boards that need each (empty for `--platform`).
    pub async fn pull(&self, wanted: &BTreeMap<String, Vec<String>>) -> Result<Pulled, PullError> {
        let registry = self.registry();
        self.client
            .auth(&self.remote.reference, &self.auth, RegistryOperation::Pull)
            .await
            .map_err(|e| self.error(e))?;
        let (top, digest) = self.manifest(&self.remote.reference, None).await?;
        let bad = |what: &str, detail: String| PullError::Bad { registry: registry.clone(), what: what.into(), detail };
        let mut documents: Vec<(String, Vec<u8>)> = vec![(digest.clone(), top.clone())];
        let mut manifests: Vec<(String, ImageManifest)> = Vec::new();
        let mut wanted_set: BTreeSet<String> = wanted.keys().cloned().collect();
        let as_json: serde_json::Value =
            serde_json::from_slice(&top).map_err(|e| bad("manifest", format!("it does not parse: {e}")))?;
        if as_json.get("manifests").is_some() {
            let index: ImageIndex =
                serde_json::from_slice(&top).map_err(|e| bad("index", format!("it does not parse: {e}")))?;
            if index.manifests.len() > MAX_CHILDREN {
                return Err(bad("index", format!("it lists {} manifests", index.manifests.len())));
            }
            let offered: Vec<String> = index
                .manifests
                .iter()
                .filter(|d| !d.is_attestation())
                .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                .collect();
            // No board yet and no --platform: every platform, as `image load` keeps.
            if wanted_set.is_empty() {
                wanted_set = offered.iter().cloned().collect();
            }
            let (chosen, missing) = choose(&index, &wanted_set);
            // Platforms asked for by name must all be there; boards' platforms need one.
            let named_missing: Vec<&String> =
                missing.iter().filter(|m| wanted.get(*m).is_some_and(|b| b.is_empty())).collect();
            if chosen.is_empty() || !named_missing.is_empty() {
                let which = if named_missing.is_empty() { missing.iter().collect() } else { named_missing };
                return Err(PullError::NoPlatform {
                    reference: self.remote.reference.whole(),
                    wanted: describe(&which, wanted),
                    offered: offered.join(", "),
                });
            }
            if !missing.is_empty() {
                tracing::warn!(image = %self.remote.local, missing = ?missing, "no manifest for some boards' platforms");
            }
            for d in chosen {
                let child = self.remote.reference.clone_with_digest(d.digest.clone());
                let (body, got) = self.manifest(&child, Some(d)).await?;
                let m: ImageManifest =
                    serde_json::from_slice(&body).map_err(|e| bad("manifest", format!("{got} does not parse: {e}")))?;
                documents.push((got.clone(), body));
                manifests.push((d.platform.as_ref().map(|p| p.to_string()).unwrap_or_default(), m));
            }
        } else {
            let m: ImageManifest =
                serde_json::from_slice(&top).map_err(|e| bad("manifest", format!("it does not parse: {e}")))?;
            manifests.push((String::new(), m));
        }

        let total = pull_size(manifests.iter().map(|(_, m)| m));
        if total > MAX_PULL_BYTES {
            return Err(bad("manifest", format!("its blobs add up to {total} bytes, more than {MAX_PULL_BYTES}")));
        }
        let mut blobs: BTreeMap<String, u64> = documents.iter().map(|(d, b)| (d.clone(), b.len() as u64)).collect();
        let mut fetched = BTreeMap::new();
        let mut platforms = BTreeSet::new();
        let mut bytes = 0;
        std::fs::create_dir_all(&self.dir).map_err(|source| PullError::Local { path: self.dir.clone(), source })?;
        for (digest, body) in &documents {
            if (self.held)(digest).is_none() {
                let path = self.dir.join(hex(digest, &registry)?);
                write_file(&path, body).await?;
                fetched.insert(digest.clone(), path);
            }
        }
        for (platform, m) in &manifests {
            if m.layers.len() > MAX_CHILDREN {
                return Err(bad("manifest", format!("it lists {} layers", m.layers.len())));
            }
            let (path, got) = self.blob(&m.config).await?;
            bytes += got;
            if let Some(p) = path {
                fetched.insert(m.config.digest.clone(), p);
            }
            blobs.insert(m.config.digest.clone(), m.config.size);
            let platform =
                if platform.is_empty() { self.config_platform(&m.config, &fetched).await? } else { platform.clone() };
            if !platform.is_empty() {
                if !wanted_set.is_empty() && !wanted_set.iter().any(|w| platform_matches(w, &platform)) {
                    return Err(PullError::NoPlatform {
                        reference: self.remote.reference.whole(),
                        wanted: describe(&wanted_set.iter().collect::<Vec<_>>(), wanted),
                        offered: platform,
                    });
                }
                platforms.insert(platform);
            }
            for layer in &m.layers {
                let (path, got) = self.blob(layer).await?;
                bytes += got;
                if let Some(p) = path {
                    fetched.insert(layer.digest.clone(), p);
                }
                blobs.insert(layer.digest.clone(), layer.size);
            }
        }
        if platforms.len() > MAX_PLATFORMS {
            return Err(bad("index", format!("it has {} platforms; at most {MAX_PLATFORMS}", platforms.len())));
        }
        Ok(Pulled {
            local: self.remote.local.clone(),
            digest,
            platforms: platforms.into_iter().collect(),
            blobs,
            fetched,
            bytes,
        })
    }

    /// The platform an image config states (single-platform images carry no index).
    async fn config_platform(
        &self,
        config: &Descriptor,
        fetched: &BTreeMap<String, PathBuf>,
    ) -> Result<String, PullError> {
        #[derive(Deserialize)]
        struct P {
            #[serde(default)]
            os: String,
            #[serde(default)]
            architecture: String,
            #[serde(default)]
            variant: Option<String>,
        }
        let Some(path) = fetched.get(&config.digest) else { return Ok(String::new()) };
        let text = tokio::fs::read(path).await.map_err(|source| PullError::Local { path: path.clone(), source })?;
        let p: P = serde_json::from_slice(&text).map_err(|e| PullError::Bad {
            registry: self.registry(),
            what: "image config".into(),
            detail: e.to_string(),
        })?;
        if p.os.is_empty() || p.architecture.is_empty() {
            return Ok(String::new());
        }
        Ok(match p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        })
    }

    /// One blob: skipped when the store holds it, else fetched into the pull area
    /// (resuming a partial file) and verified. Returns the verified file (none when
    /// held) and the bytes received.
    async fn blob(&self, desc: &Descriptor) -> Result<(Option<PathBuf>, u64), PullError> {
        let registry = self.registry();
        let hex = hex(&desc.digest, &registry)?.to_owned();
        let progress = |status, current| {
            (self.progress)(PullProgress {
                digest: shoal_proto::text_lossy(&desc.digest),
                status,
                current,
                total: desc.size,
            })
        };
        let lock = self.locks.lock_for(&desc.digest);
        let _one_writer = lock.lock().await;
        if (self.held)(&desc.digest) == Some(desc.size) {
            progress(PullStatus::Exists, desc.size);
            return Ok((None, 0));
        }
        let done = self.dir.join(&hex);
        if tokio::fs::metadata(&done).await.is_ok_and(|m| m.len() == desc.size) && verify(&done, &desc.digest).await? {
            progress(PullStatus::Complete, desc.size);
            return Ok((Some(done), 0));
        }
        let partial = self.dir.join(format!("{hex}.partial"));
        let mut received = 0u64;
        let started = tokio::time::Instant::now();
        let mut wait = RETRY_FIRST;
        let mut restarted = false;
        loop {
            match self.transfer(desc, &partial, &mut received, &progress).await {
                Ok(()) => {}
                Err(e) if e.is_temporary() && started.elapsed() < RETRY_FOR => {
                    tracing::info!(digest = %desc.digest, error = %e, "blob transfer interrupted; resuming");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                    continue;
                }
                Err(e) => return Err(e),
            }
            if verify(&partial, &desc.digest).await? {
                break;
            }
            // A partial file that does not add up (a registry that changed, a torn
            // write): once from the start, then refuse.
            let _ = tokio::fs::remove_file(&partial).await;
            if std::mem::replace(&mut restarted, true) {
                return Err(PullError::Bad {
                    registry,
                    what: "blob".into(),
                    detail: format!("{} does not match its digest", desc.digest),
                });
            }
        }
        tokio::fs::rename(&partial, &done).await.map_err(|source| PullError::Local { path: done.clone(), source })?;
        progress(PullStatus::Complete, desc.size);
        Ok((Some(done), received))
    }

    /// Appends to `partial` from its current length (a `Range` request) up to the
    /// descriptor's size; a registry that ignores the range sends it all again.
    async fn transfer(
        &self,
        desc: &Descriptor,
        partial: &Path,
        received: &mut u64,
        progress: &(dyn Fn(PullStatus, u64) + Sync),
    ) -> Result<(), PullError> {
        let local = |source| PullError::Local { path: partial.to_owned(), source };
        let have = tokio::fs::metadata(partial).await.map(|m| m.len()).unwrap_or(0);
        if desc.size == 0 {
            // Nothing to ask for (a registry answers a range of an empty blob with 416):
            // the empty file is checked against the digest like any other.
            tokio::fs::File::create(partial).await.map_err(local)?;
            return Ok(());
        }
        if have >= desc.size {
            return Ok(());
        }
        let layer = oci_client::manifest::OciDescriptor {
            media_type: desc.media_type.clone(),
            digest: desc.digest.clone(),
            size: desc.size as i64,
            ..Default::default()
        };
        let response = self
            .client
            .pull_blob_stream_partial(&self.remote.reference, &layer, have, None)
            .await
            .map_err(|e| self.error(e))?;
        let (mut stream, append) = match response {
            BlobResponse::Partial(s) => (s, true),
            BlobResponse::Full(s) => (s, false),
        };
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(append)
            .write(true)
            .truncate(!append)
            .open(partial)
            .await
            .map_err(local)?;
        let mut at = if append { have } else { 0 };
        progress(if append && have > 0 { PullStatus::Resuming } else { PullStatus::Downloading }, at);
        let mut last = tokio::time::Instant::now();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| PullError::Unreachable { registry: self.registry(), detail: e.to_string() })?;
            at += chunk.len() as u64;
            *received += chunk.len() as u64;
            if at > desc.size {
                drop(file);
                let _ = tokio::fs::remove_file(partial).await;
                return Err(PullError::Bad {
                    registry: self.registry(),
                    what: "blob".into(),
                    detail: format!("{} is longer than its descriptor's {} bytes", desc.digest, desc.size),
                });
            }
            file.write_all(&chunk).await.map_err(local)?;
            if last.elapsed() >= Duration::from_millis(200) {
                last = tokio::time::Instant::now();
                progress(PullStatus::Downloading, at);
            }
        }
        file.sync_all().await.map_err(local)?;
        if at < desc.size {
            return Err(PullError::Unreachable {
                registry: self.registry(),
                detail: format!("{} ended after {at} of {} bytes", desc.digest, desc.size),
            });
        }
        Ok(())
    }
}

/// Bytes the configs and layers of `manifests` add up to (saturating: sizes come from
/// the registry).
fn pull_size<'a>(manifests: impl Iterator<Item = &'a ImageManifest>) -> u64 {
    manifests.flat_map(|m| std::iter::once(&m.config).chain(&m.layers)).fold(0u64, |sum, d| sum.saturating_add(d.size))
}

/// `reqwest`'s error with its causes (its own text hides "connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn describe(which: &[&String], wanted: &BTreeMap<String, Vec<String>>) -> String {
    which
        .iter()
        .map(|p| match wanted.get(*p).filter(|b| !b.is_empty()) {
            Some(boards) => format!("{p} (needed by {})", boards.join(", ")),
            None => p.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn hex<'a>(digest: &'a str, registry: &str) -> Result<&'a str, PullError> {
    sha256_hex(digest).ok_or_else(|| PullError::Bad {
        registry: registry.to_owned(),
        what: "descriptor".into(),
        detail: format!(
            "digest {:?} is not sha256: only sha256 digests are supported",
            digest.chars().take(80).collect::<String>()
        ),
    })
}

async fn write_file(path: &Path, bytes: &[u8]) -> Result<(), PullError> {
    let local = |source| PullError::Local { path: path.to_owned(), source };
    let mut f = tokio::fs::File::create(path).await.map_err(local)?;
    f.write_all(bytes).await.map_err(local)?;
    f.sync_all().await.map_err(local)
}

/// Whether the file's SHA-256 is `digest`.
async fn verify(path: &Path, digest: &str) -> Result<bool, PullError> {
    let p = path.to_owned();
    let got = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&p)?;
        shoal_oci::HashingReader::new(std::io::BufReader::with_capacity(256 * 1024, f)).finish()
    })
    .await
    .map_err(|e| PullError::Local { path: path.to_owned(), source: std::io::Error::other(e) })?
    .map_err(|source| PullError::Local { path: path.to_owned(), source })?;
    Ok(got.0 == digest)
}

/// The wanted platforms: each board's (with the boards that run it) and `extra`.
pub fn wanted_platforms<'a>(
    boards: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
    extra: &[String],
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (hostname, os, arch) in boards {
        out.entry(board_platform(os, arch)).or_default().push(hostname.to_owned());
    }
    for p in extra {
        out.entry(p.clone()).or_default();
    }
    out
}

/// One lock per image name, so two pulls of the same image (two services created at
/// once) fetch it once: the second waits, then finds it held; and one per blob digest.
#[derive(Default)]
pub struct SingleFlight {
    locks: std::sync::Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

impl SingleFlight {
    /// The lock for `name`.
    pub fn lock_for(&self, name: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().expect("pull locks");
        // Forget locks nobody holds, so the map does not grow with every name ever pulled.
        locks.retain(|_, l| std::sync::Arc::strong_count(l) > 1);
        locks.entry(name.to_owned()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_take_docker_hub_defaults_and_keep_familiar_names() {
        let r = Remote::parse("nginx:1.27").unwrap();
        assert_eq!(
            (r.local.as_str(), r.registry(), r.reference.repository()),
            ("nginx:1.27", "docker.io", "library/nginx")
        );
        assert_eq!(r.reference.resolve_registry(), "registry-1.docker.io");
        let r = Remote::parse("registry.local:5000/team/app:2.1").unwrap();
        assert_eq!((r.local.as_str(), r.registry()), ("registry.local:5000/team/app:2.1", "registry.local:5000"));
        assert_eq!(Remote::parse("redis").unwrap().local, "redis:latest");
        assert!(Remote::parse("no spaces:1").is_err() && Remote::parse("app:").is_err());
        assert!(Remote::parse("127.0.0.1:5000/a:1").unwrap().allows_http(&[]));
        assert!(!Remote::parse("registry.local:5000/a:1").unwrap().allows_http(&[]));
        assert!(Remote::parse("registry.local:5000/a:1").unwrap().allows_http(&["registry.local:5000".into()]));
        assert!(is_loopback("localhost:5000") && is_loopback("[::1]:5000") && !is_loopback("10.0.0.1:5000"));
    }

    #[test]
    fn boards_map_to_oci_platforms_and_variants_match() {
        assert_eq!(board_platform("linux", "x86_64"), "linux/amd64");
        assert_eq!(board_platform("linux", "aarch64"), "linux/arm64");
        assert_eq!(board_platform("", "arm"), "linux/arm/v7");
        assert!(platform_matches("linux/arm64", "linux/arm64/v8"));
        assert!(platform_matches("linux/arm/v7", "linux/arm/v7"));
        assert!(!platform_matches("linux/arm/v7", "linux/arm/v6"));
        assert!(!platform_matches("linux/amd64", "linux/arm64"));
    }

    #[test]
    fn only_the_wanted_platforms_are_chosen() {
        let index: ImageIndex = serde_json::from_value(serde_json::json!({ "manifests": [
            { "mediaType": OCI_MANIFEST, "digest": format!("sha256:{}", "a".repeat(64)), "size": 1,
              "platform": { "os": "linux", "architecture": "amd64" } },
            { "mediaType": OCI_MANIFEST, "digest": format!("sha256:{}", "b".repeat(64)), "size": 1,
              "platform": { "os": "linux", "architecture": "arm64", "variant": "v8" } },
        ]}))
        .unwrap();
        let want = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let (c, m) = choose(&index, &want(&["linux/amd64"]));
        assert_eq!((c.len(), c[0].digest.starts_with("sha256:a"), m.len()), (1, true, 0));
        let (c, m) = choose(&index, &want(&["linux/arm/v7", "linux/arm64"]));
        assert_eq!((c.len(), m), (1, vec!["linux/arm/v7".to_owned()]));
        let wanted = wanted_platforms([("node3", "linux", "arm")], &["linux/amd64".into()]);
        assert_eq!(
            describe(&wanted.keys().collect::<Vec<_>>(), &wanted),
            "linux/amd64, linux/arm/v7 (needed by node3)"
        );
    }

    #[test]
    fn absurd_sizes_add_up_to_a_refusal_not_an_overflow() {
        let m: ImageManifest = serde_json::from_value(serde_json::json!({
            "config": { "mediaType": "c", "digest": format!("sha256:{}", "a".repeat(64)), "size": 10 },
            "layers": [
                { "mediaType": "l", "digest": format!("sha256:{}", "b".repeat(64)), "size": u64::MAX },
                { "mediaType": "l", "digest": format!("sha256:{}", "c".repeat(64)), "size": u64::MAX },
            ],
        }))
        .unwrap();
        assert_eq!(pull_size([&m].into_iter()), u64::MAX);
        assert!(pull_size([&m].into_iter()) > MAX_PULL_BYTES);
    }

    #[test]
    fn docker_config_json_is_read_and_written_in_dockers_format() {
        let text = r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYTpzcw=="},
            "reg:5000":{"username":"u","password":"p"},"broken:1":{"auth":"!!"}},"credsStore":"desktop"}"#;
        let c = DockerConfig::parse(text).unwrap();
        assert_eq!(c.lookup("docker.io"), Some(("user".into(), "pa:ss".into())), "a colon in the password stays");
        assert_eq!(c.lookup("reg:5000"), Some(("u".into(), "p".into())));
        assert_eq!(c.lookup("broken:1"), None);
        assert_eq!(c.lookup("other"), None);
        let mut mine = DockerConfig::default();
        mine.set("127.0.0.1:5000", "alice", "s3cret");
        let back = DockerConfig::parse(&serde_json::to_string(&mine).unwrap()).unwrap();
        assert_eq!(back.lookup("127.0.0.1:5000"), Some(("alice".into(), "s3cret".into())));
        assert!(serde_json::to_string(&mine).unwrap().contains("\"auth\":\"YWxpY2U6czNjcmV0\""));
        assert!(DockerConfig::parse("\"nope\"").is_err());
    }
}
