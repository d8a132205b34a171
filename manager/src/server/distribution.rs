//! Images: uploads from the CLI, the image set pushed to every session, and blobs
//! served to nodes from an offset.

use super::*;

/// The full set of images every agent should hold.
pub(super) fn images_message(all: &[ImageRecord]) -> ManagerMessage {
    let wanted: Vec<_> = images::wanted(all).into_iter().take(MAX_IMAGES).collect();
    ManagerMessage::Images(wanted.try_into().unwrap_or_default())
}

/// Tells every session the new image set. Called with the image lock held, so sets are
/// queued in the order they were made.
pub(super) fn broadcast_images(mgr: &Manager, all: &[ImageRecord]) {
    let message = images_message(all);
    let lagging: Vec<_> = {
        let st = mgr.state.lock().expect("state lock");
        st.sessions
            .iter()
            .filter(|(_, s)| matches!(s.tx.try_send(message.clone()), Err(mpsc::error::TrySendError::Full(_))))
            .map(|(id, s)| (id.clone(), s.conn.clone()))
            .collect()
    };
    for (node, conn) in lagging {
        warn!(%node, "session is not reading its messages; closing it so the agent resynchronises");
        conn.close(close::LAGGING.into(), b"session fell behind; reconnect");
    }
}

/// Copies exactly `size` bytes of the stream into `path`, in chunks.
pub(super) async fn receive_upload(recv: &mut quinn::RecvStream, path: &Path, size: u64) -> Result<(), ErrorReply> {
    let mut file = tokio::fs::File::create(path).await.map_err(internal)?;
    let mut left = size;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(CHUNK);
        let chunk = match tokio::time::timeout(UPLOAD_STALL, recv.read_chunk(want, true)).await {
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => {
                return Err(ErrorReply::new(
                    ErrorKind::InvalidRequest,
                    &format!("the upload ended after {} of {size} bytes: run `shoal image load` again", size - left),
                ))
            }
            Ok(Err(e)) => return Err(ErrorReply::new(ErrorKind::InvalidRequest, &format!("the upload failed: {e}"))),
            Err(_) => {
                return Err(ErrorReply::new(
                    ErrorKind::InvalidRequest,
                    &format!("the upload stalled for {UPLOAD_STALL:?}: run `shoal image load` again"),
                ))
            }
        };
        left -= chunk.bytes.len() as u64;
        file.write_all(&chunk.bytes).await.map_err(internal)?;
    }
    file.flush().await.map_err(internal)?;
    Ok(())
}

/// `image load`: receive the archive, verify it whole, then commit its blobs and records
/// (replacing images of the same reference), collect unused blobs and tell the agents.
pub(super) async fn load_image(
    mgr: &Manager,
    size: u64,
    recv: &mut quinn::RecvStream,
) -> Result<ControlReply, ErrorReply> {
    if size > MAX_ARCHIVE_BYTES {
        return Err(ErrorReply::new(
            ErrorKind::InvalidRequest,
            &format!(
                "the archive is {size} bytes, more than the {} GiB the manager accepts: split the images \
                 into several archives",
                MAX_ARCHIVE_BYTES >> 30
            ),
        ));
    }
    if size == 0 {
        return Err(ErrorReply::new(ErrorKind::InvalidRequest, "the archive is empty: give an OCI image archive"));
    }
    let upload =
        RemoveOnDrop(mgr.blobs.tmp_dir().join(format!("upload-{}.tar", shoal_proto::hex(&shoal_link::random::<8>()))));
    receive_upload(recv, &upload.0, size).await?;
    let (path, blobs) = (upload.0.clone(), mgr.blobs.clone());
    let imported = tokio::task::spawn_blocking(move || archive::import(&path, &blobs))
        .await
        .map_err(internal)?
        .map_err(|e: ImportError| {
            if e.is_bad_archive() {
                info!(error = %e, "refused an image archive");
                ErrorReply::new(ErrorKind::InvalidRequest, &e.to_string())
            } else {
                internal(e)
            }
        })?;
    drop(upload);

    let _guard = mgr.images.lock().await;
    let existing = mgr.store.images().map_err(internal)?;
    let refs: HashSet<&str> = existing.iter().chain(&imported.images).map(|i| i.reference.as_str()).collect();
    if refs.len() > MAX_IMAGES {
        return Err(ErrorReply::new(
            ErrorKind::Conflict,
            &format!("the manager holds at most {MAX_IMAGES} images: remove some with `shoal image rm` first"),
        ));
    }
    let used = images::referenced_blobs(&imported.images);
    mgr.blobs.commit(&imported.staging, &used).map_err(internal)?;
    mgr.store.update_images(&imported.images, &[]).map_err(internal)?;
    let all = mgr.store.images().map_err(internal)?;
    match mgr.blobs.gc(&images::referenced_blobs(&all)) {
        Ok(0) => {}
        Ok(n) => info!(blobs = n, "removed image blobs no image uses any more"),
        Err(e) => warn!(error = %e, "image blob garbage collection failed"),
    }
    broadcast_images(mgr, &all);
    let mut loaded = BoundedVec::new();
    for image in &imported.images {
        info!(reference = %image.reference, digest = %image.digest, platforms = ?image.platforms, size = image.size, "image loaded");
        loaded.push(shoal_proto::text(&image.reference).map_err(internal)?).map_err(internal)?;
    }
    Ok(ControlReply::ImagesLoaded(loaded))
}

/// `image ls`, with the nodes that reported holding each image.
pub(super) fn list_images(mgr: &Manager) -> Result<ControlReply, ErrorReply> {
    let all = mgr.store.images().map_err(internal)?;
    let st = mgr.state.lock().expect("state lock");
    let mut views = Vec::new();
    // A pulled image's pinned record (`name@digest`) is listed only once its name has
    // moved to another digest: until then it is the same image as the named row.
    let named: HashSet<&str> = all.iter().filter(|i| !i.reference.contains('@')).map(|i| i.digest.as_str()).collect();
    let shown: Vec<&ImageRecord> =
        all.iter().filter(|i| !i.reference.contains('@') || !named.contains(i.digest.as_str())).collect();
    for image in shown.into_iter().take(MAX_IMAGES) {
        let mut holders: Vec<NodeId> =
            st.held.iter().filter(|(_, held)| held.contains(&image.digest)).map(|(id, _)| id.clone()).collect();
        holders.sort();
        views.push(ImageView {
            reference: shoal_proto::text_lossy(&image.reference),
            digest: shoal_proto::text_lossy(&image.digest),
            platforms: image
                .platforms
                .iter()
                .take(shoal_proto::images::MAX_PLATFORMS)
                .map(|p| shoal_proto::text_lossy(p))
                .collect::<Vec<_>>()
                .try_into()
                .map_err(internal)?,
            size: image.size,
            nodes: holders.try_into().map_err(internal)?,
        });
    }
    Ok(ControlReply::Images(views.try_into().map_err(internal)?))
}

/// `image rm`: drop the records, collect their blobs, tell the agents.
pub(super) async fn remove_image(mgr: &Manager, name: &str, force: bool) -> Result<ControlReply, ErrorReply> {
    let _guard = mgr.images.lock().await;
    let existing = mgr.store.images().map_err(internal)?;
    let mut targets = images::resolve(&existing, name)?;
    // Removing a pulled image's name removes its pinned records too (services pinned to
    // one make this a conflict, as for the name).
    let pins: Vec<&ImageRecord> = existing
        .iter()
        .filter(|i| {
            targets.iter().any(|t| !t.reference.contains('@') && i.reference.starts_with(&format!("{}@", t.reference)))
        })
        .filter(|i| !targets.iter().any(|t| t.reference == i.reference))
        .collect();
    targets.extend(pins);
    let refs: Vec<&str> = targets.iter().map(|i| i.reference.as_str()).collect();
    if !force {
        let users = {
            let svc = mgr.services.lock().expect("services lock");
            image_users(&svc, &refs)
        };
        if !users.is_empty() {
            return Err(ErrorReply::new(
                ErrorKind::Conflict,
                &format!(
                    "unable to remove repository reference \"{}\" (must force) - service {} is using its referenced \
                     image: remove or update {} first, or use `shoal image rm --force`",
                    refs.join("\", \""),
                    users.join(", "),
                    if users.len() == 1 { "it" } else { "them" }
                ),
            ));
        }
    }
    mgr.store.update_images(&[], &refs).map_err(internal)?;
    let all = mgr.store.images().map_err(internal)?;
    if let Err(e) = mgr.blobs.gc(&images::referenced_blobs(&all)) {
        warn!(error = %e, "image blob garbage collection failed");
    }
    broadcast_images(mgr, &all);
    let mut lines: Vec<String> = refs.iter().map(|r| format!("Untagged: {r}")).collect();
    let digests: HashSet<&str> = targets.iter().map(|i| i.digest.as_str()).collect();
    for d in digests {
        if !all.iter().any(|i| i.digest == d) {
            lines.push(format!("Deleted: {d}"));
        }
    }
    info!(image = name, removed = ?refs, "image removed");
    Ok(ControlReply::Done(shoal_proto::Message::lossy(&lines.join("\n"))))
}

/// `FetchBlob` from a node: the size, then the bytes from `offset` on, streamed from the
/// file, then the end of the stream.
pub(super) async fn serve_blob(mgr: &Manager, node: &NodeId, fetch: FetchBlob, mut send: quinn::SendStream) {
    // A removed node's certificate still verifies against the CA: check the store.
    match mgr.store.node(node) {
        Ok(Some(_)) => {}
        Ok(None) => {
            let refusal = ErrorReply::new(
                ErrorKind::NodeRemoved,
                "this node was removed from the cluster: join again with `shoal-agent join --token TOKEN MANAGER`",
            );
            return reply(&mut send, &Response::Error(refusal)).await;
        }
        Err(e) => return reply(&mut send, &Response::Error(internal(e))).await,
    }
    let (file, size) = match mgr.blobs.open_at(&fetch.digest, fetch.offset) {
        Ok(opened) => opened,
        Err(e @ BlobError::NotFound(_)) => {
            return reply(&mut send, &Response::Error(ErrorReply::new(ErrorKind::NotFound, &e.to_string()))).await
        }
        Err(e @ (BlobError::InvalidDigest(_) | BlobError::OffsetBeyondEnd { .. })) => {
            return reply(&mut send, &Response::Error(ErrorReply::new(ErrorKind::InvalidRequest, &e.to_string()))).await
        }
        Err(e) => return reply(&mut send, &Response::Error(internal(e))).await,
    };
    // Ended however this returns: the last transfer of a burst gives its memory back.
    let transfer = crate::memory::Transfer::start();
    if framed::send(&mut send, &Response::Blob { size }).await.is_err() {
        return;
    }
    let mut file = tokio::fs::File::from_std(file);
    // No bigger than what is left to send: a fleet fetching a small image made a
    // 256 KiB buffer per blob per board.
    let left = size.saturating_sub(fetch.offset);
    let mut buf = vec![0u8; usize::try_from(left).unwrap_or(CHUNK).clamp(1, CHUNK)];
    loop {
        let n = match file.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                warn!(digest = %fetch.digest, error = %e, "could not read a blob");
                // Resetting tells the node the transfer failed rather than ended.
                let _ = send.reset(1u32.into());
                return;
            }
        };
        if let Err(e) = send.write_all(&buf[..n]).await {
            debug!(%node, digest = %fetch.digest, error = %e, "blob transfer interrupted");
            return;
        }
        transfer.sent(n);
    }
    let _ = send.finish();
    debug!(%node, digest = %fetch.digest, offset = fetch.offset, size, "blob sent");
}

/// Names of the services whose spec, or whose tasks still meant to run, use one of
/// `refs`: removing the image would leave their next task nothing to start from.
fn image_users(svc: &ServiceState, refs: &[&str]) -> Vec<String> {
    let uses = |image: &str| refs.contains(&image);
    let mut users: std::collections::BTreeSet<String> = svc
        .records
        .values()
        .filter(|r| uses(r.service.spec.image.as_str()))
        .map(|r| r.service.spec.name.to_string())
        .collect();
    let running: Vec<&Task> =
        svc.tasks.values().filter(|t| t.is_desired_running() && uses(t.spec.image.as_str())).collect();
    users.extend(svc.names_of(running).into_values().map(|name| name.to_string()));
    users.into_iter().collect()
}
