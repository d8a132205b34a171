//! Fetching images from the manager over the agent's session connection: one
//! bidirectional stream per blob (`FetchBlob { digest, offset }` → `Blob { size }` then
//! the raw bytes to the end of the stream), resumed from what a previous attempt left in
//! `partial/`, verified against its digest before anything uses it.
//!
//! A blob whose bytes do not match its digest is fetched once more from the start, then
//! refused: a corrupt blob is never unpacked or run. This module does not decide which
//! images to hold or when to collect them; the session does.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use shoal_link::{framed, LinkError};
use shoal_proto::{frame, Envelope, ErrorReply, FetchBlob, Request, Response, WantedImage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

use super::store::{ImageRecord, ImageStore, StoreError, MAX_JSON_BYTES};
use super::unpack::{unpack_layer, UnpackError};
use shoal_oci::digest::{self, DigestError, Sha256};
use shoal_oci::spec::{HostPlatform, ImageConfig, ImageManifest, LayerMediaType, OciError, TopLevel};
use std::sync::Arc;

/// Largest layer accepted: the largest archive the manager accepts.
pub const MAX_LAYER_BYTES: u64 = shoal_proto::images::MAX_ARCHIVE_BYTES;
/// How long the manager may take to answer a request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a transfer may stall before it is given up (and later resumed).
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an image could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The connection or stream failed; the next attempt resumes.
    #[error("fetching blob {digest} from the manager failed: {detail}")]
    Transfer {
        /// The blob.
        digest: String,
        /// What happened.
        detail: String,
    },
    /// The transfer ended early; the next attempt resumes from where it stopped.
    #[error("the transfer of blob {digest} stopped at byte {received} of {size}; it resumes on the next attempt")]
    Interrupted {
        /// The blob.
        digest: String,
        /// Bytes held so far.
        received: u64,
        /// Bytes wanted.
        size: u64,
    },
    /// The manager refused the request.
    #[error("the manager refused blob {digest}: {}", .reply.message)]
    Refused {
        /// The blob.
        digest: String,
        /// Its answer.
        reply: ErrorReply,
    },
    /// The manager answered something that is not a blob.
    #[error("the manager answered a request for blob {digest} with {answer}: is it a matching shoal version?")]
    Unexpected {
        /// The blob.
        digest: String,
        /// What it said.
        answer: String,
    },
    /// The bytes did not match the digest, twice.
    #[error(
        "blob {digest} from the manager is corrupt (its content does not match its digest, twice): \
         the manager's copy is damaged; load the image into the manager again"
    )]
    Corrupt {
        /// The blob.
        digest: String,
    },
    /// The manager's size differs from what the image says.
    #[error("blob {digest} is {actual} bytes at the manager but the image says {expected}: the image is broken, load it again")]
    SizeMismatch {
        /// The blob.
        digest: String,
        /// Size in the descriptor.
        expected: u64,
        /// Size the manager announced.
        actual: u64,
    },
    /// Larger than anything of its kind may be.
    #[error("blob {digest} is {size} bytes, more than the {limit} allowed for it: the image is broken")]
    TooLarge {
        /// The blob.
        digest: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// An unpacked layer differs from what the image config says it is.
    #[error(
        "image {reference}: layer {layer} unpacks to {actual}, but the image config says {expected}: \
         the image is broken, rebuild it"
    )]
    DiffId {
        /// The image.
        reference: String,
        /// The layer blob.
        layer: String,
        /// The config's diff_id.
        expected: String,
        /// What it unpacked to.
        actual: String,
    },
    /// The manifest and config disagree on the number of layers.
    #[error("image {reference}: its manifest has {layers} layers but its config lists {diff_ids}: the image is broken, rebuild it")]
    LayerCount {
        /// The image.
        reference: String,
        /// Layers in the manifest.
        layers: usize,
        /// Diff IDs in the config.
        diff_ids: usize,
    },
    /// A layer could not be unpacked.
    #[error("image {reference}: layer {layer}: {source}")]
    Unpack {
        /// The image.
        reference: String,
        /// The layer blob.
        layer: String,
        /// Why.
        source: UnpackError,
    },
    /// A JSON document of the image is unusable, or the image does not fit this board.
    #[error("image {reference}: {source}")]
    Oci {
        /// The image.
        reference: String,
        /// Why.
        source: OciError,
    },
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A digest that cannot name a file.
    #[error(transparent)]
    Digest(#[from] DigestError),
}

impl FetchError {
    /// Whether trying again later may help (connection trouble, a manager restarting);
    /// otherwise the image itself is wrong and needs the operator.
    pub fn is_temporary(&self) -> bool {
        match self {
            Self::Transfer { .. } | Self::Interrupted { .. } => true,
            Self::Refused { reply, .. } => reply.kind == shoal_proto::ErrorKind::Internal,
            Self::Store(StoreError::Io { .. }) => true,
            Self::Unpack { source, .. } => !source.is_bad_layer(),
            _ => false,
        }
    }
}

/// A blob now in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedBlob {
    /// Where it is (`blobs/sha256/<hex>`).
    pub path: PathBuf,
    /// Bytes that crossed the network for it (0 when it was already stored).
    pub transferred: u64,
}

/// Where to resume a download: from the end of what a previous attempt kept, unless
/// that cannot be a prefix of the blob. Blobs of unknown size (an image's top-level
/// JSON, a few KiB) always start over.
pub fn resume_offset(partial_len: u64, expected_size: Option<u64>) -> u64 {
    match expected_size {
        Some(size) if partial_len <= size => partial_len,
        _ => 0,
    }
}

/// Fetches blob `digest` into the store unless it is already there, and verifies it.
/// `expected_size` comes from the descriptor naming the blob; `None` (an image's
/// top-level digest, the only blob known by digest alone) caps it at
/// [`MAX_JSON_BYTES`], since that blob is JSON.
pub async fn fetch_blob(
    conn: &quinn::Connection,
    store: &Arc<ImageStore>,
    digest: &str,
    expected_size: Option<u64>,
) -> Result<FetchedBlob, FetchError> {
    digest::hex(digest)?;
    if verified_blob(store, digest).await? {
        return Ok(FetchedBlob { path: store.blob_path(digest)?, transferred: 0 });
    }
    let limit = expected_size.unwrap_or(MAX_JSON_BYTES);
    if limit > MAX_LAYER_BYTES {
        return Err(FetchError::TooLarge { digest: digest.to_owned(), size: limit, limit: MAX_LAYER_BYTES });
    }
    let started = Instant::now();
    let mut transferred = 0;
    for attempt in 0..2 {
        let offset = resume_offset(store.partial_len(digest)?, expected_size);
        if offset == 0 {
            store.discard_partial(digest)?;
        }
        let (actual, bytes) = transfer(conn, store, digest, offset, expected_size, limit).await?;
        transferred += bytes;
        if actual.as_deref() == Some(digest) {
            let path = store.blob_path(digest)?;
            let digest_owned = digest.to_owned();
            on_disk(store, Box::new(move |s| s.commit_partial(&digest_owned).map(drop))).await?;
            debug!(%digest, bytes = transferred, resumed_from = offset, ms = started.elapsed().as_millis() as u64, "blob fetched");
            return Ok(FetchedBlob { path, transferred });
        }
        store.discard_partial(digest)?;
        warn!(%digest, attempt, resumed_from = offset, "blob from the manager does not match its digest; fetching it again from the start");
    }
    Err(FetchError::Corrupt { digest: digest.to_owned() })
}

/// Work on the image store for [`on_disk`].
type StoreWork = Box<dyn FnOnce(&ImageStore) -> Result<(), StoreError> + Send>;

/// Runs store work that waits on the disk (an fsync, a rename made durable, a removal of
/// a large tree) on a blocking thread: the agent's runtime has one thread, and an SD card
/// busy with a long write can hold an fsync for seconds, holding every task with it (the
/// QUIC session, the supervisor).
///
/// The work comes boxed and gives no result but success: one copy of this code for every
/// call (the aarch64 agent has a size bound).
async fn on_disk(store: &Arc<ImageStore>, work: StoreWork) -> Result<(), StoreError> {
    let store = store.clone();
    let root = store.root().to_owned();
    tokio::task::spawn_blocking(move || work(&store))
        .await
        .unwrap_or_else(|e| Err(StoreError::Io { path: root, source: std::io::Error::other(e) }))
}

/// Whether blob `digest` is stored with the right bytes, re-hashing it (in chunks, so the
/// agent's single-threaded runtime keeps sending heartbeats) unless this process already
/// verified it. A torn blob is deleted.
async fn verified_blob(store: &ImageStore, digest: &str) -> Result<bool, FetchError> {
    if !store.has_blob(digest) {
        return Ok(false);
    }
    if store.is_verified(digest) {
        return Ok(true);
    }
    let path = store.blob_path(digest)?;
    let io = |e: std::io::Error| FetchError::Store(StoreError::Io { path: path.clone(), source: e });
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io(e)),
    };
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(store.check_blob(digest, &hash.finish())?)
}

/// One request: appends bytes `[offset, size)` to the partial file. Returns the digest
/// of the whole partial file when the byte count is right (`None` when the manager sent
/// too many, which is corruption too) and the bytes received.
async fn transfer(
    conn: &quinn::Connection,
    store: &ImageStore,
    digest: &str,
    offset: u64,
    expected_size: Option<u64>,
    limit: u64,
) -> Result<(Option<String>, u64), FetchError> {
    let failed = |detail: String| FetchError::Transfer { digest: digest.to_owned(), detail };
    let link = |e: LinkError| failed(e.to_string());
    let request = Envelope::new(Request::FetchBlob(FetchBlob {
        digest: shoal_proto::text(digest).map_err(|e| failed(e.to_string()))?,
        offset,
    }));
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| failed(e.to_string()))?;
    let answer = async {
        framed::send(&mut send, &request).await?;
        framed::recv::<Response>(&mut recv, frame::MAX_FRAME_LEN).await?.ok_or(LinkError::Closed)
    };
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, answer)
        .await
        .map_err(|_| failed(format!("no answer within {ANSWER_TIMEOUT:?}")))?
        .map_err(link)?;
    // Nothing more to say on this stream; the manager only writes.
    let _ = send.finish();
    let size = match answer {
        Response::Blob { size } => size,
        Response::Error(reply) => return Err(FetchError::Refused { digest: digest.to_owned(), reply }),
        other => return Err(FetchError::Unexpected { digest: digest.to_owned(), answer: format!("{other:?}") }),
    };
    if let Some(expected) = expected_size.filter(|e| *e != size) {
        return Err(FetchError::SizeMismatch { digest: digest.to_owned(), expected, actual: size });
    }
    if size > limit {
        return Err(FetchError::TooLarge { digest: digest.to_owned(), size, limit });
    }

    let path = store.partial_path(digest)?;
    let io = |e: std::io::Error| FetchError::Store(StoreError::Io { path: path.clone(), source: e });
    let mut hash = Sha256::new();
    let mut file = tokio::fs::OpenOptions::new().create(true).append(true).open(&path).await.map_err(io)?;
    if offset > 0 {
        // The kept prefix is part of the blob: hash it before the new bytes.
        let mut prefix = tokio::fs::File::open(&path).await.map_err(io)?.take(offset);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = prefix.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
        }
    }
    let wanted = size.saturating_sub(offset);
    let mut received = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match tokio::time::timeout(STALL_TIMEOUT, recv.read(&mut buf)).await {
            Err(_) => {
                file.flush().await.map_err(io)?;
                return Err(failed(format!("the transfer stalled for {STALL_TIMEOUT:?}")));
            }
            Ok(Err(e)) => {
                file.flush().await.map_err(io)?;
                return Err(failed(e.to_string()));
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(n))) => n,
        };
        received += n as u64;
        if received > wanted {
            // More than the blob has: nothing of it can be trusted.
            let _ = recv.stop(0u32.into());
            return Ok((None, received));
        }
        file.write_all(&buf[..n]).await.map_err(io)?;
        hash.update(&buf[..n]);
    }
    file.flush().await.map_err(io)?;
    if received < wanted {
        return Err(FetchError::Interrupted { digest: digest.to_owned(), received: offset + received, size });
    }
    Ok((Some(hash.finish()), received))
}

/// Where blobs come from: the manager over the session connection, or an OCI layout on
/// the board itself (see [`super::archive`]). Either way a blob lands in the store only
/// after its digest was verified.
pub trait BlobSource {
    /// Puts blob `digest` into `store` unless it is there already.
    fn fetch(
        &self,
        store: &Arc<ImageStore>,
        digest: &str,
        expected_size: Option<u64>,
    ) -> impl std::future::Future<Output = Result<FetchedBlob, FetchError>> + Send;
}

impl BlobSource for quinn::Connection {
    fn fetch(
        &self,
        store: &Arc<ImageStore>,
        digest: &str,
        expected_size: Option<u64>,
    ) -> impl std::future::Future<Output = Result<FetchedBlob, FetchError>> + Send {
        fetch_blob(self, store, digest, expected_size)
    }
}

/// Fetches everything `wanted` needs that the store lacks (this board's manifest,
/// config, each layer: fetched, verified, unpacked, its blob deleted) and records the
/// image. Returns its record.
pub async fn sync_image(
    conn: &(impl BlobSource + Sync),
    store: &Arc<ImageStore>,
    wanted: &WantedImage,
) -> Result<ImageRecord, FetchError> {
    let reference = wanted.reference.as_str();
    let top = wanted.digest.as_str();
    let started = Instant::now();
    let oci = |source: OciError| FetchError::Oci { reference: reference.to_owned(), source };
    let host = HostPlatform::current();
    let mut transferred = conn.fetch(store, top, None).await?.transferred;

    let manifest_digest = match TopLevel::parse(&store.read_json_blob(top)?).map_err(oci)? {
        TopLevel::Index(index) => {
            let chosen = host.choose(&index).map_err(oci)?;
            if chosen.size > MAX_JSON_BYTES {
                return Err(FetchError::TooLarge {
                    digest: chosen.digest.clone(),
                    size: chosen.size,
                    limit: MAX_JSON_BYTES,
                });
            }
            transferred += conn.fetch(store, &chosen.digest, Some(chosen.size)).await?.transferred;
            chosen.digest.clone()
        }
        TopLevel::Manifest(_) => top.to_owned(),
    };
    let manifest = ImageManifest::parse(&store.read_json_blob(&manifest_digest)?).map_err(oci)?;
    let config_desc = &manifest.config;
    if config_desc.size > MAX_JSON_BYTES {
        return Err(FetchError::TooLarge {
            digest: config_desc.digest.clone(),
            size: config_desc.size,
            limit: MAX_JSON_BYTES,
        });
    }
    transferred += conn.fetch(store, &config_desc.digest, Some(config_desc.size)).await?.transferred;
    let config = ImageConfig::parse(&store.read_json_blob(&config_desc.digest)?).map_err(oci)?;
    host.check(&config).map_err(oci)?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(FetchError::LayerCount {
            reference: reference.to_owned(),
            layers: manifest.layers.len(),
            diff_ids: config.rootfs.diff_ids.len(),
        });
    }

    for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
        if store.has_layer(&layer.digest) {
            continue;
        }
        let unpack_err = |source: UnpackError| FetchError::Unpack {
            reference: reference.to_owned(),
            layer: layer.digest.clone(),
            source,
        };
        // Refuse an unknown layer type before downloading it.
        if LayerMediaType::parse(&layer.media_type).is_none() {
            return Err(unpack_err(UnpackError::MediaType(layer.media_type.clone())));
        }
        let blob = conn.fetch(store, &layer.digest, Some(layer.size)).await?;
        transferred += blob.transferred;
        let dest = store.begin_layer(&layer.digest)?;
        let (blob_path, dest_dir, media_type) = (blob.path.clone(), dest.clone(), layer.media_type.clone());
        let (owned, digest, expected) = (store.clone(), layer.digest.clone(), diff_id.clone());
        // Unpacking is long, blocking work, and so is what follows it (a syncfs, a
        // durable rename, a tree's removal): all off the runtime, whose one thread keeps
        // the session going meanwhile.
        let (unpacked, stored) = tokio::task::spawn_blocking(move || {
            let unpacked = std::fs::File::open(&blob_path)
                .map_err(|e| UnpackError::Io { path: blob_path.display().to_string(), source: e })
                .and_then(|file| unpack_layer(file, &media_type, &dest_dir));
            let stored = match &unpacked {
                Ok(u) if u.diff_id == expected => owned.commit_layer(&digest, &dest_dir).map(drop),
                _ => owned.abandon_layer(&dest_dir),
            }
            // The unpacked tree is all that is needed from now on: spare the card. A
            // layer that does not unpack to its diff ID is no use either.
            .and_then(|()| match &unpacked {
                Err(e) if !e.is_bad_layer() => Ok(()),
                _ => owned.remove_blob(&digest),
            });
            (unpacked, stored)
        })
        .await
        .unwrap_or_else(|e| {
            // A panicked unpack leaves its directory in `tmp/`, which the store clears
            // when it next opens.
            let e = std::io::Error::other(e.to_string());
            (Err(UnpackError::Io { path: dest.display().to_string(), source: e }), Ok(()))
        });
        stored?;
        match unpacked {
            Ok(u) if u.diff_id == *diff_id => {}
            Ok(u) => {
                return Err(FetchError::DiffId {
                    reference: reference.to_owned(),
                    layer: layer.digest.clone(),
                    expected: diff_id.clone(),
                    actual: u.diff_id,
                });
            }
            Err(e) => return Err(unpack_err(e)),
        }
    }

    let record = ImageRecord {
        references: Vec::new(),
        digest: top.to_owned(),
        manifest: manifest_digest,
        config: config_desc.digest.clone(),
        layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
    };
    let reference_owned = reference.to_owned();
    on_disk(store, Box::new(move |s| s.record(&reference_owned, record))).await?;
    info!(image = %reference, digest = %top, bytes = transferred, ms = started.elapsed().as_millis() as u64, "image fetched");
    store.image(top).ok_or_else(|| FetchError::Store(StoreError::NotHeld(reference.to_owned())))
}

#[cfg(test)]
mod tests {
    //! Against a small in-process QUIC server speaking the manager's side of `FetchBlob`
    //! (per docs/protocol.md), with knobs to cut and corrupt transfers.

    use std::collections::{HashMap, VecDeque};
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use shoal_link::{ClientTls, Identity, Trust};
    use shoal_proto::ErrorKind;

    use super::*;
    use shoal_oci::spec as oci;

    /// What the server does with the next request.
    #[derive(Debug, Clone, Copy)]
    enum Act {
        /// Send this many bytes, then finish the stream early.
        Cut(usize),
        /// Flip a byte.
        Corrupt,
        /// Answer with an error.
        Refuse,
    }

    #[derive(Default)]
    struct Manager {
        blobs: HashMap<String, Vec<u8>>,
        /// One per request, in order; plain serving when empty.
        script: VecDeque<Act>,
        /// (digest, offset) of every request.
        log: Vec<(String, u64)>,
    }

    type Shared = Arc<Mutex<Manager>>;

    struct Rig {
        manager: Shared,
        conn: quinn::Connection,
        _server: quinn::Endpoint,
        _client: quinn::Endpoint,
        dir: PathBuf,
        store: Arc<ImageStore>,
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    async fn rig(name: &str) -> Rig {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, &ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec![shoal_proto::MANAGER_SERVER_NAME.to_owned()]).unwrap();
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
        let identity = Identity {
            chain: vec![leaf_cert.der().clone(), ca_cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        };
        let timeout = Duration::from_secs(5);
        let config = shoal_link::tls::server_config(ca_cert.der().clone(), identity, timeout).unwrap();
        let server = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr: SocketAddr = server.local_addr().unwrap();
        let manager = Shared::default();
        tokio::spawn(serve(server.clone(), manager.clone()));

        let tls = ClientTls::new(Trust::Ca(CertificateDer::from(ca_cert.der().to_vec())), None, timeout).unwrap();
        let client = shoal_link::client_endpoint(addr).unwrap();
        let conn = shoal_link::connect(&client, addr, &tls, timeout).await.unwrap();
        let dir = std::env::temp_dir().join(format!(
            "shoal-fetch-{name}-{}-{}",
            std::process::id(),
            u64::from_le_bytes(shoal_link::random::<8>())
        ));
        let store = ImageStore::open(&dir).unwrap();
        Rig { manager, conn, _server: server, _client: client, dir, store: Arc::new(store) }
    }

    async fn serve(endpoint: quinn::Endpoint, manager: Shared) {
        while let Some(incoming) = endpoint.accept().await {
            let manager = manager.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((send, recv)) = conn.accept_bi().await {
                    tokio::spawn(answer(send, recv, manager.clone()));
                }
            });
        }
    }

    /// The manager's side of one `FetchBlob` stream.
    async fn answer(mut send: quinn::SendStream, mut recv: quinn::RecvStream, manager: Shared) {
        let Ok(Some(envelope)) = framed::recv::<Envelope>(&mut recv, frame::MAX_FRAME_LEN).await else { return };
        let Request::FetchBlob(req) = envelope.request else { return };
        let (blob, act) = {
            let mut m = manager.lock().unwrap();
            m.log.push((req.digest.to_string(), req.offset));
            (m.blobs.get(req.digest.as_str()).cloned(), m.script.pop_front())
        };
        let Some(mut blob) = blob.filter(|_| !matches!(act, Some(Act::Refuse))) else {
            let reply = Response::Error(ErrorReply::new(ErrorKind::NotFound, "no such blob"));
            let _ = framed::send(&mut send, &reply).await;
            let _ = send.finish();
            return;
        };
        let _ = framed::send(&mut send, &Response::Blob { size: blob.len() as u64 }).await;
        let offset = (req.offset as usize).min(blob.len());
        match act {
            Some(Act::Corrupt) => {
                let last = blob.len() - 1;
                blob[last] ^= 0xff;
            }
            Some(Act::Cut(n)) => blob.truncate(offset + n),
            _ => {}
        }
        let _ = send.write_all(&blob[offset..]).await;
        let _ = send.finish();
        let _ = send.stopped().await;
    }

    fn add(rig: &Rig, bytes: &[u8]) -> String {
        let d = digest::of(bytes);
        rig.manager.lock().unwrap().blobs.insert(d.clone(), bytes.to_vec());
        d
    }

    fn script(rig: &Rig, acts: &[Act]) {
        rig.manager.lock().unwrap().script.extend(acts.iter().copied());
    }

    fn log(rig: &Rig) -> Vec<u64> {
        rig.manager.lock().unwrap().log.iter().map(|(_, o)| *o).collect()
    }

    fn big() -> Vec<u8> {
        (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect()
    }

    #[test]
    fn resume_offsets() {
        assert_eq!(resume_offset(0, Some(10)), 0);
        assert_eq!(resume_offset(4, Some(10)), 4);
        assert_eq!(resume_offset(10, Some(10)), 10);
        assert_eq!(resume_offset(11, Some(10)), 0, "longer than the blob: not a prefix of it");
        assert_eq!(resume_offset(4, None), 0, "unknown size: start over");
    }

    #[tokio::test]
    async fn a_blob_is_fetched_verified_and_stored() {
        let rig = rig("plain").await;
        let data = big();
        let d = add(&rig, &data);
        let got = fetch_blob(&rig.conn, &rig.store, &d, Some(data.len() as u64)).await.unwrap();
        assert_eq!(std::fs::read(&got.path).unwrap(), data);
        assert_eq!(got.transferred, data.len() as u64);
        // Already stored: no second request.
        assert_eq!(fetch_blob(&rig.conn, &rig.store, &d, Some(data.len() as u64)).await.unwrap().transferred, 0);
        assert_eq!(log(&rig), [0]);
    }

    #[tokio::test]
    async fn an_interrupted_transfer_resumes_where_it_stopped() {
        let rig = rig("resume").await;
        let data = big();
        let d = add(&rig, &data);
        script(&rig, &[Act::Cut(100_000)]);
        let err = fetch_blob(&rig.conn, &rig.store, &d, Some(data.len() as u64)).await.unwrap_err();
        assert!(matches!(err, FetchError::Interrupted { received: 100_000, .. }), "{err}");
        assert!(err.is_temporary());
        assert_eq!(rig.store.partial_len(&d).unwrap(), 100_000);
        let got = fetch_blob(&rig.conn, &rig.store, &d, Some(data.len() as u64)).await.unwrap();
        assert_eq!(got.transferred, data.len() as u64 - 100_000);
        assert_eq!(std::fs::read(&got.path).unwrap(), data);
        assert_eq!(log(&rig), [0, 100_000]);
        assert_eq!(rig.store.partial_len(&d).unwrap(), 0);
    }

    #[tokio::test]
    async fn a_corrupt_transfer_is_retried_once_from_the_start() {
        let rig = rig("retry").await;
        let data = big();
        let d = add(&rig, &data);
        script(&rig, &[Act::Corrupt]);
        let got = fetch_blob(&rig.conn, &rig.store, &d, Some(data.len() as u64)).await.unwrap();
        assert_eq!(std::fs::read(&got.path).unwrap(), data);
        assert_eq!(log(&rig), [0, 0]);
    }

    #[tokio::test]
    async fn a_garbage_partial_is_caught_and_fetched_again() {
        let rig = rig("garbage-partial").await;
        let data = big();
        let d = add(&rig, &data);
        std::fs::write(rig.store.partial_path(&d).unwrap(), vec![0u8; 1000]).unwrap();
        fetch_blob(&rig.conn, &rig.store, &d, Some(data.len() as u64)).await.unwrap();
        assert_eq!(log(&rig), [1000, 0]);
    }

    #[tokio::test]
    async fn a_blob_torn_by_a_power_cut_is_fetched_again_not_trusted() {
        let rig = rig("torn-blob").await;
        let data = big();
        let d = add(&rig, &data);
        // The name reached the disk, half of the bytes did not.
        std::fs::write(rig.store.blob_path(&d).unwrap(), &data[..data.len() / 2]).unwrap();
        let fetched = fetch_blob(&rig.conn, &rig.store, &d, Some(data.len() as u64)).await.unwrap();
        assert_eq!(fetched.transferred, data.len() as u64, "fetched again in full");
        assert_eq!(std::fs::read(&fetched.path).unwrap(), data);
        // Verified now: the next use trusts it without a transfer.
        assert_eq!(fetch_blob(&rig.conn, &rig.store, &d, Some(data.len() as u64)).await.unwrap().transferred, 0);
    }

    #[tokio::test]
    async fn a_blob_corrupt_twice_is_refused_and_never_stored() {
        let rig = rig("corrupt").await;
        let data = big();
        let d = add(&rig, &data);
        script(&rig, &[Act::Corrupt, Act::Corrupt]);
        let err = fetch_blob(&rig.conn, &rig.store, &d, Some(data.len() as u64)).await.unwrap_err();
        assert!(matches!(err, FetchError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(&format!("blob {d} from the manager is corrupt")), "{err}");
        assert!(!rig.store.has_blob(&d));
        assert_eq!(rig.store.partial_len(&d).unwrap(), 0);
    }

    #[tokio::test]
    async fn refusals_and_size_lies_are_errors() {
        let rig = rig("refuse").await;
        let d = add(&rig, b"small");
        script(&rig, &[Act::Refuse]);
        let err = fetch_blob(&rig.conn, &rig.store, &d, Some(5)).await.unwrap_err();
        assert!(matches!(err, FetchError::Refused { .. }), "{err}");
        let err = fetch_blob(&rig.conn, &rig.store, &d, Some(6)).await.unwrap_err();
        assert!(matches!(err, FetchError::SizeMismatch { expected: 6, actual: 5, .. }), "{err}");
        assert!(fetch_blob(&rig.conn, &rig.store, "sha256:../../x", None).await.is_err());
    }

    // ---- whole images ----

    fn layer_tar_gz(files: &[(&str, &[u8])]) -> (Vec<u8>, String) {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, path, *data).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let diff_id = digest::of(&tar);
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &tar).unwrap();
        (enc.finish().unwrap(), diff_id)
    }

    /// Serves a multi-platform image whose entry for this board has two layers; returns
    /// the index digest and the layer digests.
    fn publish(rig: &Rig, platforms: &[(&str, Option<&str>)]) -> (String, Vec<String>) {
        let host = oci::HostPlatform::current();
        let (l1, id1) = layer_tar_gz(&[("etc/base", b"base")]);
        let (l2, id2) = layer_tar_gz(&[("etc/base", b"override"), ("app", b"app")]);
        let (d1, d2) = (add(rig, &l1), add(rig, &l2));
        let config = serde_json::json!({
            "architecture": host.architecture, "os": "linux",
            "config": { "Entrypoint": ["/app"], "Env": ["A=1"] },
            "rootfs": { "type": "layers", "diff_ids": [id1, id2] },
        })
        .to_string();
        let config_d = add(rig, config.as_bytes());
        let gz = "application/vnd.oci.image.layer.v1.tar+gzip";
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": oci::OCI_MANIFEST,
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": config.len() },
            "layers": [
                { "mediaType": gz, "digest": d1, "size": l1.len() },
                { "mediaType": gz, "digest": d2, "size": l2.len() },
            ],
        })
        .to_string();
        let manifest_d = add(rig, manifest.as_bytes());
        let manifests: Vec<serde_json::Value> = platforms
            .iter()
            .map(|(arch, variant)| {
                let mine = *arch == host.architecture;
                serde_json::json!({
                    "mediaType": oci::OCI_MANIFEST,
                    "digest": if mine { manifest_d.clone() } else { digest::of(arch.as_bytes()) },
                    "size": if mine { manifest.len() } else { 1 },
                    "platform": { "architecture": arch, "os": "linux", "variant": variant },
                })
            })
            .collect();
        let index = serde_json::json!({ "schemaVersion": 2, "mediaType": oci::OCI_INDEX, "manifests": manifests });
        (add(rig, index.to_string().as_bytes()), vec![d1, d2])
    }

    fn wanted(reference: &str, digest: &str) -> WantedImage {
        WantedImage { reference: shoal_proto::text(reference).unwrap(), digest: shoal_proto::text(digest).unwrap() }
    }

    #[tokio::test]
    async fn an_image_is_synced_unpacked_and_recorded_without_its_layer_blobs() {
        let rig = rig("sync").await;
        let host = oci::HostPlatform::current();
        let (top, layers) = publish(&rig, &[("s390x", None), (host.architecture, host.variants[0])]);
        let record = sync_image(&rig.conn, &rig.store, &wanted("demo/app:1.0", &top)).await.unwrap();
        assert_eq!(record.digest, top);
        assert_eq!(record.layers, layers);
        assert!(rig.store.has(&top));
        let lower = rig.store.lowerdirs("demo/app:1.0").unwrap();
        assert_eq!(std::fs::read(lower[0].join("etc/base")).unwrap(), b"override");
        assert_eq!(std::fs::read(lower[1].join("etc/base")).unwrap(), b"base");
        let config = rig.store.config("demo/app:1.0").unwrap().config.unwrap();
        assert_eq!(config.entrypoint.unwrap(), ["/app"]);
        for l in &layers {
            assert!(!rig.store.has_blob(l), "layer blobs are deleted once unpacked");
        }
        // A second sync fetches nothing new.
        let before = log(&rig).len();
        sync_image(&rig.conn, &rig.store, &wanted("demo/app:1.0", &top)).await.unwrap();
        assert_eq!(log(&rig).len(), before);
    }

    #[tokio::test]
    async fn an_image_without_this_platform_is_refused_naming_what_it_has() {
        let rig = rig("platform").await;
        let (top, _) = publish(&rig, &[("s390x", None), ("riscv64", None)]);
        let err = sync_image(&rig.conn, &rig.store, &wanted("demo/app:1.0", &top)).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("linux/s390x, linux/riscv64"), "{text}");
        assert!(text.contains(&oci::HostPlatform::current().name()), "{text}");
        assert!(!rig.store.has(&top));
    }

    #[tokio::test]
    async fn a_layer_unlike_its_diff_id_is_refused() {
        let rig = rig("diffid").await;
        let host = oci::HostPlatform::current();
        let (l1, _) = layer_tar_gz(&[("x", b"x")]);
        let d1 = add(&rig, &l1);
        let config = serde_json::json!({
            "architecture": host.architecture, "os": "linux",
            "rootfs": { "type": "layers", "diff_ids": [digest::of(b"something else")] },
        })
        .to_string();
        let config_d = add(&rig, config.as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": oci::OCI_MANIFEST,
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": config.len() },
            "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d1, "size": l1.len() }],
        })
        .to_string();
        let top = add(&rig, manifest.as_bytes());
        let err = sync_image(&rig.conn, &rig.store, &wanted("bad:1", &top)).await.unwrap_err();
        assert!(matches!(err, FetchError::DiffId { .. }), "{err}");
        assert!(!rig.store.has_layer(&d1) && !rig.store.has(&top));
        // Nothing of the useless layer is kept: not its blob, not its unpacked tree.
        assert!(!rig.store.has_blob(&d1));
        let tmp = rig.store.root().join("tmp");
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "left in {}", tmp.display());
    }
}
