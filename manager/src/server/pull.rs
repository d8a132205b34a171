//! `image pull` and `login` on the server: the CLI's stream gets one progress frame per
//! blob event while `images::registry` fetches, then the answer; the verified blobs are
//! committed and the records written under the image lock, and the boards are told, as
//! after `image load`. Two pulls of one image run one after the other (single-flight),
//! so the second finds it held.
//!
//! A pulled image is kept under two records: its name (`nginx:1.27`) and its pinned form
//! (`nginx:1.27@sha256:…`). Services created on it are pinned to the second, as Swarm
//! pins them, and boards are asked for both names, so a board finds a pinned task's image
//! by the name the task carries while the name may later move to another digest.

use shoal_proto::images::{ImagePull, Pulled as PulledReply, RegistryLogin};

use super::*;
use crate::images::registry::{self, PullError, Puller, Remote};

fn refusal(e: &PullError) -> ErrorReply {
    let kind = match e {
        PullError::InvalidReference { .. } => ErrorKind::InvalidRequest,
        PullError::Refused { .. } | PullError::LoginRefused { .. } => ErrorKind::Unauthorized,
        PullError::NotFound { .. } | PullError::NoPlatform { .. } => ErrorKind::NotFound,
        PullError::Bad { .. } => ErrorKind::InvalidRequest,
        PullError::Unreachable { .. } | PullError::Local { .. } => ErrorKind::Internal,
    };
    ErrorReply::new(kind, &e.to_string())
}

/// The pinned name of a pulled image.
pub(super) fn pinned(reference: &str, digest: &str) -> String {
    format!("{reference}@{digest}")
}

/// `image pull` (and the pull before `service create/update`): progress frames, then
/// [`ControlReply::Pulled`] or the refusal, on `send`.
pub(super) async fn handle_pull(mgr: &Manager, req: Box<ImagePull>, mut send: quinn::SendStream) {
    let (tx, mut rx) = mpsc::channel::<shoal_proto::images::PullProgress>(256);
    let pull = async move {
        let result = pull(mgr, &req, &tx).await;
        drop(tx);
        result
    };
    let forward = async {
        let mut open = true;
        while let Some(p) = rx.recv().await {
            // A CLI that went away does not stop the pull: the image is still wanted.
            if open && framed::send(&mut send, &Response::Control(ControlReply::PullProgress(p))).await.is_err() {
                open = false;
            }
        }
    };
    let (result, ()) = tokio::join!(pull, forward);
    let response = match result {
        Ok(p) => Response::Control(ControlReply::Pulled(Box::new(p))),
        Err(e) => Response::Error(e),
    };
    reply(&mut send, &response).await;
    let _ = send.finish();
}

async fn pull(
    mgr: &Manager,
    req: &ImagePull,
    tx: &mpsc::Sender<shoal_proto::images::PullProgress>,
) -> Result<PulledReply, ErrorReply> {
    let remote = Remote::parse(&req.reference).map_err(|e| refusal(&e))?;
    for p in req.platforms.iter() {
        let parts: Vec<&str> = p.split('/').collect();
        if !(2..=3).contains(&parts.len()) || parts.iter().any(|s| s.is_empty()) {
            return Err(ErrorReply::new(
                ErrorKind::InvalidRequest,
                &format!("invalid platform {p:?}: give os/arch[/variant], e.g. linux/arm64 or linux/arm/v7"),
            ));
        }
    }
    let flight = mgr.pulls.lock_for(&remote.local);
    let _one_at_a_time = flight.lock().await;
    let held = |images: &[ImageRecord]| {
        images::resolve(images, &req.reference).ok().and_then(|found| found.first().map(|i| (*i).clone()))
    };
    if req.if_missing {
        if let Some(i) = held(&mgr.store.images().map_err(internal)?) {
            return reply_for(&i, 0);
        }
    }
    let nodes = mgr.store.nodes_shared().map_err(internal)?;
    let boards = nodes
        .iter()
        .filter(|n| n.role == Role::Worker)
        .map(|n| (n.description.hostname.as_str(), n.description.os.as_str(), n.description.arch.as_str()));
    let extra: Vec<String> = req.platforms.iter().map(|p| p.to_string()).collect();
    let wanted = registry::wanted_platforms(boards, &extra);
    let manager_dir = paths::manager_dir(&mgr.data_dir);
    let blobs = mgr.blobs.clone();
    let held_blob = move |d: &str| blobs.size(d).ok().flatten();
    let progress = |p| {
        // A full queue drops a progress line, never the pull.
        let _ = tx.try_send(p);
    };
    let puller = Puller {
        client: registry::client(&remote, &mgr.insecure_registries),
        auth: registry::auth_for(&manager_dir, remote.registry()),
        remote: remote.clone(),
        dir: mgr.blobs.pull_dir(),
        held: &held_blob,
        progress: &progress,
        locks: &mgr.pulls,
    };
    info!(image = %remote.local, registry = remote.registry(), platforms = ?wanted.keys().collect::<Vec<_>>(), "pulling");
    let started = Instant::now();
    let pulled = puller.pull(&wanted).await.map_err(|e| {
        info!(image = %remote.local, error = %e, "pull failed");
        refusal(&e)
    })?;

    let _guard = mgr.images.lock().await;
    let existing = mgr.store.images().map_err(internal)?;
    let record = ImageRecord {
        reference: pulled.local.clone(),
        digest: pulled.digest.clone(),
        platforms: pulled.platforms.clone(),
        size: pulled.blobs.values().sum(),
        blobs: pulled.blobs.keys().cloned().collect(),
        loaded_at_ms: shoal_link::wall_ms(),
    };
    let pin = ImageRecord { reference: pinned(&record.reference, &record.digest), ..record.clone() };
    let refs: HashSet<&str> = existing
        .iter()
        .map(|i| i.reference.as_str())
        .chain([record.reference.as_str(), pin.reference.as_str()])
        .collect();
    if refs.len() > MAX_IMAGES {
        return Err(ErrorReply::new(
            ErrorKind::Conflict,
            &format!("the manager holds at most {MAX_IMAGES} images: remove some with `shoal image rm` first"),
        ));
    }
    for (digest, path) in &pulled.fetched {
        mgr.blobs.adopt(path, digest).map_err(internal)?;
    }
    mgr.store.update_images(&[record.clone(), pin], &[]).map_err(internal)?;
    let all = mgr.store.images().map_err(internal)?;
    match mgr.blobs.gc(&images::referenced_blobs(&all)) {
        Ok(0) => {}
        Ok(n) => info!(blobs = n, "removed image blobs no image uses any more"),
        Err(e) => warn!(error = %e, "image blob garbage collection failed"),
    }
    broadcast_images(mgr, &all);
    mgr.kick();
    info!(
        image = %record.reference, digest = %record.digest, platforms = ?record.platforms,
        bytes = pulled.bytes, ms = started.elapsed().as_millis() as u64, "image pulled"
    );
    reply_for(&record, pulled.bytes)
}

fn reply_for(i: &ImageRecord, fetched: u64) -> Result<PulledReply, ErrorReply> {
    let platforms: Vec<_> =
        i.platforms.iter().take(shoal_proto::images::MAX_PLATFORMS).map(|p| shoal_proto::text_lossy(p)).collect();
    Ok(PulledReply {
        reference: shoal_proto::text_lossy(&i.reference),
        digest: shoal_proto::text_lossy(&i.digest),
        platforms: platforms.try_into().map_err(internal)?,
        fetched,
    })
}

/// `login`: checks the credentials with the registry, then keeps them in the manager's
/// `registries.json` (owner-only).
pub(super) async fn login(mgr: &Manager, req: &RegistryLogin) -> Result<ControlReply, ErrorReply> {
    let registry = normalize_registry(&req.registry)?;
    if req.username.is_empty() {
        return Err(ErrorReply::new(ErrorKind::InvalidRequest, "a user name is required: give --username"));
    }
    registry::check_login(&registry, &req.username, &req.password, &mgr.insecure_registries)
        .await
        .map_err(|e| refusal(&e))?;
    let dir = paths::manager_dir(&mgr.data_dir);
    let mut config = registry::load_credentials(&dir).map_err(|e| {
        ErrorReply::new(
            ErrorKind::Internal,
            &format!("the manager's credentials file is unreadable ({e}): fix or remove it"),
        )
    })?;
    config.set(&registry, &req.username, &req.password);
    registry::save_credentials(&dir, &config).map_err(internal)?;
    info!(%registry, user = %req.username, "registry credentials saved");
    Ok(ControlReply::Done(shoal_proto::Message::lossy("Login Succeeded")))
}

/// `logout`.
pub(super) fn logout(mgr: &Manager, registry: &str) -> Result<ControlReply, ErrorReply> {
    let registry = normalize_registry(registry)?;
    let dir = paths::manager_dir(&mgr.data_dir);
    let mut config = registry::load_credentials(&dir).map_err(|e| ErrorReply::new(ErrorKind::Internal, &e))?;
    if config.auths.remove(&registry).is_none() {
        return Err(ErrorReply::new(ErrorKind::NotFound, &format!("not logged in to {registry}")));
    }
    registry::save_credentials(&dir, &config).map_err(internal)?;
    Ok(ControlReply::Done(shoal_proto::Message::lossy(&format!("Removing login credentials for {registry}"))))
}

/// `host[:port]` as credentials are filed: Docker Hub's names are one.
fn normalize_registry(input: &str) -> Result<String, ErrorReply> {
    let r = input.trim().trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/');
    if r.is_empty() || r.contains('/') || r.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ErrorReply::new(
            ErrorKind::InvalidRequest,
            &format!("invalid registry {input:?}: give host[:port], e.g. registry.local:5000"),
        ));
    }
    Ok(match r {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        other => other.to_owned(),
    })
}
