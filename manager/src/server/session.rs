//! An agent's long-lived session: heartbeats in, queued manager messages (images,
//! assignments) out, task reports forwarded to the reconcile task.

use shoal_core::rotation::NodeCert;

use super::*;

/// An agent's long-lived session: accept it, send it the image set, then take its
/// heartbeats and image reports while writing the messages queued for it, until it ends.
pub(super) async fn run_session(
    mgr: Arc<Manager>,
    conn: quinn::Connection,
    node: NodeId,
    open: SessionOpen,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    // The store and the services lock may block: off the runtime's threads ([`blocking`]).
    let record = match blocking(|| mgr.store.node(&node)) {
        Ok(Some(r)) => r,
        Ok(None) => {
            warn!(%node, remote = %conn.remote_address(), "refused a removed node");
            return reply(&mut send, &Response::Error(removed_node())).await;
        }
        Err(e) => return reply(&mut send, &Response::Error(internal(e))).await,
    };
    if let Err(refusal) = one_board_per_node(&mgr, &conn, &node, &record).await {
        return reply(&mut send, &Response::Error(refusal)).await;
    }
    // Persist the description only when it changed: boards reconnect often.
    let addr = open
        .node
        .advertise_addr
        .as_ref()
        .map(|a| a.to_string())
        .unwrap_or_else(|| conn.remote_address().ip().to_string());
    if record.description != open.node || record.addr.as_deref() != Some(addr.as_str()) {
        // Only the node's own fields, in the store's transaction: the operator's
        // availability and labels, or the mesh's address, may have been written since
        // `record` was read.
        let stored = blocking(|| {
            mgr.store.update_node(&node, |r| {
                r.description = open.node.clone();
                r.addr = Some(addr.clone());
            })
        });
        match stored {
            Ok(Some(_)) => {}
            Ok(None) => return reply(&mut send, &Response::Error(removed_node())).await,
            Err(e) => return reply(&mut send, &Response::Error(internal(e))).await,
        }
    }
    let period = mgr.state.lock().expect("state lock").members.config().heartbeat_period;
    let (tx, mut rx) = mpsc::channel(SESSION_QUEUE);
    let (serial, transition, replaced) = {
        let mut st = mgr.state.lock().expect("state lock");
        st.next_serial += 1;
        let serial = st.next_serial;
        let now = mgr.now();
        let replaced = st.sessions.insert(
            node.clone(),
            Session {
                serial,
                conn: conn.clone(),
                last_heard: now,
                tx,
                underlay: conn.remote_address().ip().to_canonical(),
                view: None,
                secrets: None,
                skew_ms: None,
            },
        );
        st.members.session_started(&node);
        (serial, st.members.heard(now, &node), replaced)
    };
    // Heartbeat datagrams of this session count from now on.
    let _beats = mgr.beats.register(&conn, &node, serial);
    if let Some(old) = replaced {
        if old.conn.stable_id() != conn.stable_id() {
            old.conn.close(close::REPLACED.into(), b"replaced by a newer session");
        }
    }
    mgr.log_transitions(&transition.into_iter().collect::<Vec<_>>());
    let accepted = Response::SessionAccepted { node_id: node.clone(), heartbeat_period_ms: period as u32 };
    if framed::send(&mut send, &accepted).await.is_err() {
        return;
    }
    // The image set is read after the session was registered, so a change made since is
    // queued behind this one and the agent always ends with the newest set.
    match blocking(|| mgr.store.images()) {
        Ok(all) => {
            if framed::send(&mut send, &images_message(&all)).await.is_err() {
                return;
            }
        }
        Err(e) => warn!(%node, error = %e, "could not read the image set for a new session"),
    }
    // Likewise the task set: a reconciliation after this queues its diff behind it.
    // Its secrets and configs first, so no task arrives before what it needs.
    let full = blocking(|| {
        let svc = mgr.services.lock().expect("services lock");
        let (sent, mut messages) = objects::node_set(&svc, &node);
        if let Some(s) = mgr.state.lock().expect("state lock").sessions.get_mut(&node).filter(|s| s.serial == serial) {
            s.secrets = Some(sent);
        }
        let mine: Vec<&Task> = svc.tasks_on(&node).collect();
        messages.extend(dispatcher::full_set(
            &node,
            mine.iter().copied(),
            &svc.names_of(mine.iter().copied()),
            &svc.networks,
        ));
        messages
    });
    for message in full {
        if framed::send(&mut send, &message).await.is_err() {
            return;
        }
    }
    // The network view comes with the next pass (the session starts with none sent).
    mgr.kick();
    // The certificate this connection presented is the one the board holds (it uses a
    // renewed one from its next connection on).
    let presented = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().map(|c| c.to_vec()));
    let mut held = presented.and_then(|c| pki::node_cert(&mgr.pki.lock().expect("pki lock"), &c));
    if let Some(h) = held {
        blocking(|| mgr.note_node_cert(&node, h));
    }
    if framed::send(&mut send, &mgr.credentials(held, None)).await.is_err() {
        return;
    }
    // A certificate sent and not yet said saved by the board, and when it was issued.
    let mut pending: Option<NodeCert> = None;
    let mut last_issued: Option<Millis> = None;
    let mut pki_changed = mgr.pki_changed.subscribe();
    let mut credentials_tick =
        tokio::time::interval_at(tokio::time::Instant::now() + pki::CREDENTIALS_PERIOD, pki::CREDENTIALS_PERIOD);
    // The read is kept across loop turns rather than restarted: `framed::recv` is not
    // cancel-safe, and dropping it halfway through a frame would lose bytes.
    let mut reading = Box::pin(next_message(recv));
    let ended = loop {
        tokio::select! {
            (r, result) = &mut reading => {
                match result {
                    Ok(Some(AgentMessage::TaskStatuses(reports))) => {
                        debug!(%node, reports = reports.len(), "task status reports");
                        // Waiting here slows only this agent, and only while the queue is full.
                        if mgr.events.send(Event::Reports(node.clone(), reports.into_vec())).await.is_err() {
                            break None;
                        }
                    }
                    Ok(Some(AgentMessage::Heartbeat { .. })) => {
                        let t = {
                            let mut st = mgr.state.lock().expect("state lock");
                            let now = mgr.now();
                            if let Some(s) = st.sessions.get_mut(&node).filter(|s| s.serial == serial) {
                                s.last_heard = now;
                            }
                            st.members.heard(now, &node)
                        };
                        mgr.log_transitions(&t.into_iter().collect::<Vec<_>>());
                    }
                    Ok(Some(AgentMessage::DiskPressure(pressure))) => {
                        let changed = {
                            let mut st = mgr.state.lock().expect("state lock");
                            match pressure {
                                Some(what) => {
                                    warn!(%node, "disk pressure: {what}; no new tasks go there until it has room");
                                    st.disk.insert(node.clone(), what.to_string()).is_none()
                                }
                                None => {
                                    let was = st.disk.remove(&node).is_some();
                                    if was {
                                        info!(%node, "disk pressure is over; the node takes new tasks again");
                                    }
                                    was
                                }
                            }
                        };
                        // Pending tasks may fit now, or must not go there any more.
                        if changed && mgr.events.send(Event::Kick).await.is_err() {
                            break None;
                        }
                    }
                    Ok(Some(AgentMessage::RenewCertificate { csr })) => {
                        // Requests come at most this often: one that comes sooner waits
                        // (slowing only this board's session, by a bounded time), so a
                        // renewal racing a rotation's request is answered, never dropped.
                        let since = last_issued.map(|t| mgr.now().saturating_sub(t));
                        if let Some(wait) = since.and_then(|s| pki::MIN_RENEWAL_GAP_MS.checked_sub(s)) {
                            tokio::time::sleep(Duration::from_millis(wait)).await;
                        }
                        last_issued = Some(mgr.now());
                        match mgr.renew_node(&node, csr.as_slice()) {
                            Ok((cert, issued)) => {
                                debug!(%node, until = issued.valid_until_ms, "issued a renewed certificate");
                                pending = Some(issued);
                                if framed::send(&mut send, &mgr.credentials(Some(issued), Some(&cert))).await.is_err() {
                                    break None;
                                }
                            }
                            Err(e) => warn!(%node, error = %e.message, "refused a certificate request"),
                        }
                    }
                    Ok(Some(AgentMessage::CertificateSaved)) => {
                        if let Some(saved) = pending.take() {
                            held = Some(saved);
                            info!(%node, until = %shoal_proto::time::rfc3339(saved.valid_until_ms), "node renewed its certificate");
                            mgr.note_node_cert(&node, saved);
                        }
                    }
                    Ok(Some(AgentMessage::Clock { now_ms })) => {
                        let skew = now_ms as i64 - shoal_link::wall_ms() as i64;
                        let mut st = mgr.state.lock().expect("state lock");
                        if let Some(s) = st.sessions.get_mut(&node).filter(|s| s.serial == serial) {
                            s.skew_ms = Some(skew);
                        }
                    }
                    Ok(Some(AgentMessage::ImagesHeld(digests))) => {
                        debug!(%node, images = digests.len(), "node reports the images it holds");
                        let held = digests.iter().map(|d| d.to_string()).collect();
                        mgr.state.lock().expect("state lock").held.insert(node.clone(), held);
                    }
                    Ok(None) => break Some("the agent closed its session"),
                    Err(LinkError::Read(quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(
                        quinn::ConnectionError::ApplicationClosed(_),
                    )))) => break Some("the agent shut down"),
                    Err(LinkError::Frame(e)) => {
                        warn!(%node, error = %e, "malformed frame on session; closing it");
                        break Some("the agent sent a malformed frame");
                    }
                    Err(e) => {
                        debug!(%node, error = %e, "session ended");
                        break None;
                    }
                }
                reading = Box::pin(next_message(r));
            }
            Ok(()) = pki_changed.changed() => {
                if framed::send(&mut send, &mgr.credentials(held, None)).await.is_err() {
                    break None;
                }
            }
            _ = credentials_tick.tick() => {
                if framed::send(&mut send, &mgr.credentials(held, None)).await.is_err() {
                    break None;
                }
            }
            Some(message) = rx.recv() => {
                if let Err(e) = framed::send(&mut send, &message).await {
                    debug!(%node, error = %e, "could not write to session");
                    break None;
                }
            }
        }
    };
    let mut st = mgr.state.lock().expect("state lock");
    // Only the current session may mark the node Down; a replaced one just goes away.
    if st.sessions.get(&node).is_some_and(|s| s.serial == serial) {
        st.sessions.remove(&node);
        if let Some(reason) = ended {
            let now = mgr.now();
            let t = st.members.lost(now, &node, reason);
            drop(st);
            mgr.log_transitions(&t.into_iter().collect::<Vec<_>>());
        }
    }
}

/// A node is one board. When a session arrives for a node that has one already, waits
/// until the old one proves alive (it beats after this one came: two boards carry the
/// same identity, this one is refused, with the words to fix it) or dead (silent for
/// two heartbeat periods: a restart or a network flap, this one takes over). The decision
/// is [`LivenessConfig::second_session`].
async fn one_board_per_node(
    mgr: &Manager,
    conn: &quinn::Connection,
    node: &NodeId,
    record: &NodeRecord,
) -> Result<(), ErrorReply> {
    let arrived = mgr.now();
    loop {
        let verdict = {
            let st = mgr.state.lock().expect("state lock");
            match st.sessions.get(node) {
                Some(old) if old.conn.close_reason().is_none() && old.conn.stable_id() != conn.stable_id() => {
                    let verdict = st.members.config().second_session(arrived, old.last_heard, mgr.now());
                    Some((verdict, old.conn.remote_address()))
                }
                _ => None,
            }
        };
        match verdict {
            None | Some((SecondSession::Replace, _)) => return Ok(()),
            Some((SecondSession::Wait, _)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Some((SecondSession::Refuse, first)) => {
                let hostname = record.description.hostname.as_str();
                let second = conn.remote_address();
                warn!(
                    %node, %hostname, connected = %first, refused = %second,
                    "two boards carry the identity of node {node} ({hostname}): the one at {second} was refused; \
                     run `shoal-agent join` with a fresh data dir and a new token on it"
                );
                let note = format!(
                    "another board with this node's identity connected from {second} and was refused \
                     (copied data dir or cloned SD card?): run `shoal-agent join` with a fresh data dir \
                     and a new token on it"
                );
                mgr.state.lock().expect("state lock").members.note_duplicate(mgr.now(), node, note);
                return Err(ErrorReply::new(
                    ErrorKind::Conflict,
                    &format!(
                        "node {node} ({hostname}) is already connected from {first}: this board's identity \
                         was copied from it; run `shoal-agent join` with a fresh data dir and a new token on \
                         this board (`shoal manager join-token worker` on the manager)"
                    ),
                ));
            }
        }
    }
}

/// Reads the next agent message, handing the stream back so the read can be restarted.
pub(super) async fn next_message(
    mut recv: quinn::RecvStream,
) -> (quinn::RecvStream, Result<Option<AgentMessage>, LinkError>) {
    let result = framed::recv::<AgentMessage>(&mut recv, SESSION_FRAME_LIMIT).await;
    (recv, result)
}

/// What a node that was removed from the cluster is told when it opens a session.
fn removed_node() -> ErrorReply {
    ErrorReply::new(
        ErrorKind::NodeRemoved,
        "this node was removed from the cluster and its certificate is no longer accepted: \
         join again with `shoal-agent join --token TOKEN MANAGER`",
    )
}
