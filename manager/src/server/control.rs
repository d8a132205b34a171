//! Administrative requests from the CLI (nodes, join tokens), dispatching image and
//! service requests to their modules.

use super::*;

pub(super) fn view(st: &State, now: Millis, record: NodeRecord) -> NodeView {
    let record_id = record.id.clone();
    let (status, last_seen_ago_ms, message) = match record.role {
        Role::Manager => (NodeStatus::Ready, Some(0), "this manager".to_owned()),
        Role::Worker => {
            let (s, ago, m) = st.members.status(now, &record.id);
            let disk = st.disk.get(&record.id).map(|d| format!("disk pressure: {d}"));
            let message = [Some(m.to_owned()), disk, st.members.duplicate(now, &record.id).map(str::to_owned)]
                .into_iter()
                .flatten()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            (s, ago, message)
        }
    };
    NodeView {
        id: record.id,
        role: record.role,
        status,
        availability: record.availability,
        addr: record.addr.as_deref().map(shoal_proto::text_lossy),
        description: record.description,
        labels: record.labels,
        created_at_ms: record.created_at_ms,
        last_seen_ago_ms,
        status_message: shoal_proto::Message::lossy(&message),
        certificate: None,
        clock_skew_ms: st.sessions.get(&record_id).and_then(|s| s.skew_ms),
    }
}

/// Fills in each view's certificate: a worker's as last recorded, the manager's own
/// server certificate for the manager.
fn with_certificates(mgr: &Manager, views: &mut [NodeView]) {
    let certs = mgr.store.node_certs().unwrap_or_default();
    let server = {
        let cluster = mgr.cluster.lock().expect("cluster lock");
        let pki = mgr.pki.lock().expect("pki lock");
        pki::node_cert(&pki, &cluster.server_cert)
    };
    let signer = mgr.pki.lock().expect("pki lock").signer().digest();
    for v in views {
        let cert = if v.role == Role::Manager { server.as_ref() } else { certs.get(&v.id) };
        v.certificate = pki::cert_view(cert, Some(signer));
    }
}

/// `manager backup`: a snapshot of the store in a scratch file beside it, sent after the
/// reply frame, then deleted. The snapshot is one read transaction, so it is consistent
/// while the manager keeps working.
pub(super) async fn send_backup(mgr: &Manager, mut send: quinn::SendStream) {
    let dir = paths::manager_dir(&mgr.data_dir);
    let tmp = RemoveOnDrop(dir.join(format!("backup-{}.tmp", shoal_proto::hex(&shoal_link::random::<6>()))));
    let made = tokio::task::block_in_place(|| mgr.store.snapshot(&tmp.0));
    let file = made.map_err(internal).and_then(|()| std::fs::File::open(&tmp.0).map_err(internal));
    let file = match file {
        Ok(f) => f,
        Err(e) => return reply(&mut send, &Response::Error(e)).await,
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if framed::send(&mut send, &Response::Control(ControlReply::Backup { size })).await.is_err() {
        return;
    }
    let mut file = tokio::fs::File::from_std(file);
    let mut buf = vec![0u8; CHUNK];
    loop {
        match file.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if send.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                warn!(error = %e, "could not read the backup");
                let _ = send.reset(1u32.into());
                return;
            }
        }
    }
    let _ = send.finish();
    info!(size, "backup sent");
}

pub(super) async fn handle_control(
    mgr: &Manager,
    req: ControlRequest,
    recv: &mut quinn::RecvStream,
) -> Result<ControlReply, ErrorReply> {
    // Shared, not copied: 5,000 records for every `node ls` or `service ps`.
    let nodes = blocking(|| mgr.store.nodes_shared()).map_err(internal)?;
    match req {
        // Service and network requests wait for the services lock while a pass holds it,
        // and may commit: off the runtime's threads ([`blocking`]).
        ControlRequest::Service(req) => blocking(|| handle_service(mgr, req, &nodes)).map(ControlReply::Service),
        ControlRequest::Network(req) => {
            blocking(|| super::networks::handle(mgr, req, &nodes)).map(ControlReply::Network)
        }
        ControlRequest::Volume(req) => super::volumes::handle(mgr, req, &nodes).await.map(ControlReply::Volume),
        ControlRequest::Object(req) => super::objects::handle(mgr, req).map(ControlReply::Object),
        ControlRequest::NodeList => {
            let st = mgr.state.lock().expect("state lock");
            let now = mgr.now();
            let mut views: Vec<NodeView> = nodes.iter().map(|r| view(&st, now, r.clone())).collect();
            drop(st);
            with_certificates(mgr, &mut views);
            views.sort_by(|a, b| {
                (a.role != Role::Manager, a.description.hostname.as_str(), a.id.as_str()).cmp(&(
                    b.role != Role::Manager,
                    b.description.hostname.as_str(),
                    b.id.as_str(),
                ))
            });
            Ok(ControlReply::Nodes(views.try_into().map_err(internal)?))
        }
        ControlRequest::NodeInspect { node } => {
            let record = nodes::resolve(&nodes, &node)?.clone();
            let mut one = [view(&mgr.state.lock().expect("state lock"), mgr.now(), record)];
            with_certificates(mgr, &mut one);
            let [v] = one;
            Ok(ControlReply::Node(Box::new(v)))
        }
        ControlRequest::NodeRemove { node, force } => {
            let record = nodes::resolve(&nodes, &node)?.clone();
            if record.role == Role::Manager {
                return Err(ErrorReply::new(ErrorKind::Conflict, "the manager's own node can't be removed"));
            }
            let status = mgr.state.lock().expect("state lock").members.status(mgr.now(), &record.id).0;
            if status == NodeStatus::Ready && !force {
                return Err(ErrorReply::new(
                    ErrorKind::Conflict,
                    &format!(
                        "node {} is not down and can't be removed: stop its agent first, or use --force",
                        record.description.hostname
                    ),
                ));
            }
            mgr.store.remove_node(&record.id).map_err(internal)?;
            mgr.kick();
            let session = {
                let mut st = mgr.state.lock().expect("state lock");
                st.members.forget(&record.id);
                st.held.remove(&record.id);
                st.disk.remove(&record.id);
                st.sessions.remove(&record.id)
            };
            if let Some(s) = session {
                s.conn.close(close::REMOVED.into(), b"node removed from the cluster");
            }
            info!(node = %record.id, hostname = %record.description.hostname, "node removed");
            Ok(ControlReply::Done(shoal_proto::Message::lossy(record.id.as_str())))
        }
        ControlRequest::NodeUpdate { node, availability, label_add, label_rm } => {
            let mut record = nodes::resolve(&nodes, &node)?.clone();
            // Checked on the copy read above, then applied to the record as stored now
            // (the mesh or the node's session may have written it since).
            nodes::apply_update(&mut record, availability, &label_add, &label_rm)?;
            let stored = mgr
                .store
                .update_node(&record.id, |r| {
                    let _ = nodes::apply_update(r, availability, &label_add, &label_rm);
                })
                .map_err(internal)?;
            let Some(record) = stored else {
                return Err(ErrorReply::new(ErrorKind::NotFound, &format!("node {} was removed meanwhile", record.id)));
            };
            mgr.kick();
            info!(node = %record.id, availability = %record.availability, "node updated");
            Ok(ControlReply::Done(shoal_proto::Message::lossy(record.id.as_str())))
        }
        ControlRequest::ImageLoad { size } => load_image(mgr, size, recv).await,
        ControlRequest::ImageList => list_images(mgr),
        ControlRequest::ImageRemove { image, force } => remove_image(mgr, &image, force).await,
        ControlRequest::RegistryLogin(req) => super::pull::login(mgr, &req).await,
        ControlRequest::RegistryLogout { registry } => super::pull::logout(mgr, &registry),
        // Answered by `pull::handle_pull` before it gets here.
        ControlRequest::ImagePull(_) => {
            Err(ErrorReply::new(ErrorKind::InvalidRequest, "image pull is a streamed request"))
        }
        // Answered by `upgrade::handle_upgrade` before it gets here.
        ControlRequest::NodeUpgrade(_) => {
            Err(ErrorReply::new(ErrorKind::InvalidRequest, "node upgrade is a streamed request"))
        }
        // Answered by `send_backup` before it gets here.
        ControlRequest::Backup => Err(ErrorReply::new(ErrorKind::InvalidRequest, "backup is a streamed request")),
        ControlRequest::Ca { rotate } => mgr.ca_request(rotate).map(ControlReply::Ca),
        ControlRequest::ManagerUpdate { cert_expiry_ms } => {
            if let Some(ms) = cert_expiry_ms {
                mgr.set_cert_expiry(ms)?;
            }
            Ok(ControlReply::Done(shoal_proto::Message::lossy("manager updated")))
        }
        ControlRequest::JoinToken { rotate } => {
            let mut cluster = mgr.cluster.lock().expect("cluster lock");
            let digest = mgr.pki.lock().expect("pki lock").current.digest();
            if rotate {
                let mut next = cluster.clone();
                next.worker_secret = JoinToken::new(digest, shoal_link::random()).secret;
                mgr.store.put_cluster(&next).map_err(internal)?;
                *cluster = next;
                info!("worker join token rotated");
            }
            let token = JoinToken { ca_digest: digest, secret: cluster.worker_secret.clone() };
            Ok(ControlReply::JoinToken {
                token: shoal_proto::text(&token.to_string()).map_err(internal)?,
                manager_addr: shoal_proto::text_lossy(&cluster.advertise_addr),
            })
        }
    }
}
