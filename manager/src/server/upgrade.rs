//! `shoal node upgrade` on the server: takes the builds from the CLI's stream (checked
//! against their digests), then rolls them across the chosen boards a few at a time
//! ([`shoal_core::upgrade::Rollout`]), pausing at the first failure. Each board gets its
//! build on a stream over its own session connection, swaps its binary and restarts; it
//! has succeeded when a new session reports a version naming the build
//! ([`shoal_proto::upgrade::runs_build`]), and failed when it refused the build, came back
//! on its previous one (its watchdog rolled back) or did not come back in time.
//!
//! While a board's agent restarts the manager vouches for it (it counts it heard) until
//! the new session opens or the board's deadline passes, so the seconds of the restart
//! do not mark it Down and its tasks, which run on under their shims, are not replaced.
//! Not here: the board's side (`upgrade` in the agent crate).

use std::sync::Arc;

use shoal_core::upgrade::Rollout;
use shoal_proto::upgrade::{
    runs_build, AgentBuild, AgentUpgrade, NodeUpgrade, UpgradeProgress, UpgradeState, UpgradeSummary,
    DEADLINE_RANGE_MS, MAX_AGENT_BYTES,
};

use super::*;

/// Most bytes of builds one request may bring (a build per target, with room).
const MAX_TOTAL_BYTES: u64 = 2 * MAX_AGENT_BYTES;
/// How often the manager checks on a restarting board (and vouches for it).
const POLL: Duration = Duration::from_millis(100);
/// Beyond the board's own deadline, how long the manager waits for it to come back
/// (on the new build or, rolled back, on the old one).
const GRACE: Duration = Duration::from_secs(15);

/// A build, received and checked.
struct Build {
    digest: String,
    bytes: Arc<Vec<u8>>,
}

/// One board of the rollout.
struct Board {
    id: NodeId,
    hostname: String,
    build: usize,
}

fn progress(hostname: &str, state: UpgradeState, message: &str) -> Response {
    Response::Control(ControlReply::UpgradeProgress(UpgradeProgress {
        hostname: shoal_proto::text_lossy(hostname),
        state,
        message: shoal_proto::Message::lossy(message),
    }))
}

/// Sends a frame to the CLI; `false` once it is gone.
async fn say(send: &mut quinn::SendStream, r: Response) -> bool {
    framed::send(send, &r).await.is_ok()
}

/// The whole request: builds in, progress frames and the summary (or a refusal) out.
pub(super) async fn handle_upgrade(
    mgr: &Arc<Manager>,
    req: Box<NodeUpgrade>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let prepared = match prepare(mgr, &req) {
        Ok(p) => p,
        Err(e) => {
            let _ = recv.stop(0u32.into());
            return reply(&mut send, &Response::Error(e)).await;
        }
    };
    let builds = match receive(&req.builds, &mut recv).await {
        Ok(b) => b,
        Err(e) => {
            let _ = recv.stop(0u32.into());
            return reply(&mut send, &Response::Error(e)).await;
        }
    };
    let (lo, hi) = DEADLINE_RANGE_MS;
    let deadline_ms = req.deadline_ms.clamp(lo, hi);
    let mut summary = UpgradeSummary { upgraded: 0, unchanged: 0, failed: 0, skipped: 0, paused: false };
    // A CLI that went away does not stop the rollout: its frames are just not sent.
    let mut open = true;
    let mut to_roll = Vec::new();
    for board in prepared {
        let build = &builds[board.build];
        let version = mgr.store.node(&board.id).ok().flatten().map(|n| n.description.agent_version.to_string());
        let connected = mgr.state.lock().expect("state lock").sessions.contains_key(&board.id);
        let (state, message) = if version.as_deref().is_some_and(|v| runs_build(v, &build.digest)) {
            summary.unchanged += 1;
            (UpgradeState::Unchanged, format!("already runs {}", version.unwrap_or_default()))
        } else if !connected {
            summary.skipped += 1;
            (UpgradeState::Skipped, "not connected: upgrade it once it is Ready".to_owned())
        } else {
            to_roll.push(board);
            continue;
        };
        if open {
            open = say(&mut send, progress(&board.hostname, state, &message)).await;
        }
    }
    let mut rollout = Rollout::new(to_roll, usize::from(req.parallelism));
    let mut running = tokio::task::JoinSet::new();
    while !rollout.is_over() {
        for board in rollout.start() {
            let build = &builds[board.build];
            info!(node = %board.id, hostname = %board.hostname, digest = %build.digest, "upgrading the agent");
            if open {
                open = say(&mut send, progress(&board.hostname, UpgradeState::Sending, &build.digest)).await;
            }
            let (mgr, bytes, digest) = (mgr.clone(), build.bytes.clone(), build.digest.clone());
            running.spawn(async move {
                let result = upgrade_one(&mgr, &board.id, bytes, &digest, deadline_ms).await;
                (board, result)
            });
        }
        let Some(done) = running.join_next().await else { break };
        let (board, result) = match done {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "an agent upgrade task failed");
                rollout.finished(false);
                summary.failed += 1;
                continue;
            }
        };
        let (state, message) = match result {
            Ok(version) => {
                info!(node = %board.id, hostname = %board.hostname, %version, "agent upgraded");
                summary.upgraded += 1;
                (UpgradeState::Upgraded, version)
            }
            Err(why) => {
                warn!(node = %board.id, hostname = %board.hostname, %why, "agent upgrade failed; rollout paused");
                summary.failed += 1;
                (UpgradeState::Failed, why)
            }
        };
        rollout.finished(state == UpgradeState::Upgraded);
        if open {
            open = say(&mut send, progress(&board.hostname, state, &message)).await;
        }
    }
    summary.paused = rollout.is_paused();
    for board in rollout.left() {
        summary.skipped += 1;
        if open {
            open = say(&mut send, progress(&board.hostname, UpgradeState::Skipped, "rollout paused")).await;
        }
    }
    reply(&mut send, &Response::Control(ControlReply::Upgraded(summary))).await;
}

/// Checks the request and picks each board's build, before any byte is read.
fn prepare(mgr: &Manager, req: &NodeUpgrade) -> Result<Vec<Board>, ErrorReply> {
    let invalid = |m: String| ErrorReply::new(ErrorKind::InvalidRequest, &m);
    if req.builds.is_empty() {
        return Err(invalid("no agent build was sent: pass --agent FILE or a directory of builds".into()));
    }
    let mut total = 0u64;
    for b in req.builds.iter() {
        if b.size > MAX_AGENT_BYTES || b.size == 0 {
            return Err(invalid(format!(
                "an agent build of {} bytes is out of bounds (1 to {MAX_AGENT_BYTES})",
                b.size
            )));
        }
        if shoal_proto::images::sha256_hex(&b.digest).is_none() {
            return Err(invalid(format!("malformed digest {:?}: expected sha256:<hex>", b.digest)));
        }
        total += b.size;
    }
    if total > MAX_TOTAL_BYTES {
        return Err(invalid(format!("{total} bytes of builds in one request is too many (at most {MAX_TOTAL_BYTES})")));
    }
    if req.all != req.nodes.is_empty() {
        return Err(invalid("name the nodes to upgrade, or pass --all (not both)".into()));
    }
    let records = mgr.store.nodes_shared().map_err(internal)?;
    let mut chosen: Vec<&crate::core::nodes::NodeRecord> = if req.all {
        let mut workers: Vec<_> = records.iter().filter(|n| n.role == Role::Worker).collect();
        workers.sort_by(|a, b| a.description.hostname.cmp(&b.description.hostname));
        workers
    } else {
        let mut out = Vec::new();
        for q in req.nodes.iter() {
            let n = nodes::resolve(&records[..], q)?;
            if n.role == Role::Manager {
                return Err(invalid(format!("{q} is the manager, which runs no agent: name worker nodes")));
            }
            if !out.iter().any(|o: &&crate::core::nodes::NodeRecord| o.id == n.id) {
                out.push(n);
            }
        }
        out
    };
    chosen.retain(|n| n.role == Role::Worker);
    let mut boards = Vec::new();
    for n in chosen {
        let arch = n.description.arch.as_str();
        let build = req
            .builds
            .iter()
            .position(|b: &AgentBuild| b.arch.is_none())
            .or_else(|| req.builds.iter().position(|b| b.arch.as_deref() == Some(arch)))
            .ok_or_else(|| {
                ErrorReply::new(
                    ErrorKind::NotFound,
                    &format!(
                        "no agent build for node {} ({arch}): build it with scripts/build-agents.sh or pass --agent FILE",
                        n.description.hostname
                    ),
                )
            })?;
        boards.push(Board { id: n.id.clone(), hostname: n.description.hostname.to_string(), build });
    }
    Ok(boards)
}

/// Reads each build's bytes from the CLI's stream and checks its digest.
async fn receive(builds: &[AgentBuild], recv: &mut quinn::RecvStream) -> Result<Vec<Build>, ErrorReply> {
    let mut out = Vec::new();
    for b in builds {
        let size = usize::try_from(b.size).map_err(internal)?;
        let mut bytes = vec![0u8; size];
        let mut filled = 0;
        while filled < size {
            let n = match tokio::time::timeout(UPLOAD_STALL, recv.read(&mut bytes[filled..])).await {
                Ok(Ok(Some(n))) => n,
                Ok(Ok(None)) => {
                    return Err(ErrorReply::new(
                        ErrorKind::InvalidRequest,
                        &format!("the build {} ended {} bytes early: send it again", b.digest, size - filled),
                    ))
                }
                Ok(Err(e)) => return Err(ErrorReply::new(ErrorKind::InvalidRequest, &format!("upload failed: {e}"))),
                Err(_) => {
                    return Err(ErrorReply::new(
                        ErrorKind::InvalidRequest,
                        &format!("the upload stalled for {}s: send it again", UPLOAD_STALL.as_secs()),
                    ))
                }
            };
            filled += n;
        }
        let got = format!("sha256:{}", shoal_proto::hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref()));
        if got != b.digest.as_str() {
            return Err(ErrorReply::new(
                ErrorKind::InvalidRequest,
                &format!("the build arrived with digest {got}, not {}: send it again", b.digest),
            ));
        }
        out.push(Build { digest: got, bytes: Arc::new(bytes) });
    }
    Ok(out)
}

/// Sends one board its build and waits for it to come back: `Ok(version)` on the new
/// build, `Err(why)` otherwise.
async fn upgrade_one(
    mgr: &Arc<Manager>,
    node: &NodeId,
    bytes: Arc<Vec<u8>>,
    digest: &str,
    deadline_ms: u32,
) -> Result<String, String> {
    let (conn, serial) = {
        let st = mgr.state.lock().expect("state lock");
        let s = st.sessions.get(node).ok_or("not connected")?;
        (s.conn.clone(), s.serial)
    };
    let offer = AgentUpgrade {
        size: bytes.len() as u64,
        digest: shoal_proto::text(digest).map_err(|e| e.to_string())?,
        deadline_ms,
    };
    // At least 1 MiB/s, and time for the board to check and install it.
    let time = Duration::from_secs(60 + bytes.len() as u64 / (1 << 20));
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        framed::send(&mut send, &Envelope::new(Request::AgentUpgrade(offer))).await.map_err(|e| e.to_string())?;
        // A board that refuses early stops the stream; its answer says why.
        let _ = send.write_all(&bytes).await;
        let _ = send.finish();
        match framed::recv::<Response>(&mut recv, frame::MAX_FRAME_LEN).await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err("the board closed the stream without answering".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    };
    match tokio::time::timeout(time, exchange).await {
        Ok(Ok(Response::UpgradeAccepted)) => {}
        Ok(Ok(Response::Error(e))) => return Err(format!("the board refused the build: {}", e.message)),
        Ok(Ok(other)) => return Err(format!("unexpected answer from the board: {other:?}")),
        Ok(Err(e)) => return Err(format!("cannot send the build: {e}")),
        Err(_) => return Err(format!("the board did not take the build within {}s", time.as_secs())),
    }
    let until = Instant::now() + Duration::from_millis(u64::from(deadline_ms)) + GRACE;
    let vouch_until = Instant::now() + Duration::from_millis(u64::from(deadline_ms));
    loop {
        tokio::time::sleep(POLL).await;
        let back = {
            let mut st = mgr.state.lock().expect("state lock");
            let back = st.sessions.get(node).is_some_and(|s| s.serial > serial);
            if !back && Instant::now() < vouch_until {
                let t = st.members.heard(mgr.now(), node);
                drop(st);
                mgr.log_transitions(&t.into_iter().collect::<Vec<_>>());
            }
            back
        };
        if back {
            let version = mgr
                .store
                .node(node)
                .map_err(|e| e.to_string())?
                .map(|n| n.description.agent_version.to_string())
                .ok_or("the node was removed meanwhile")?;
            return if runs_build(&version, digest) {
                Ok(version)
            } else {
                Err(format!("it came back on {version}: the new build did not start, and the board rolled back"))
            };
        }
        if Instant::now() >= until {
            return Err(format!(
                "it did not come back within {}s: see the board's agent log",
                (deadline_ms as u64 / 1000) + GRACE.as_secs()
            ));
        }
    }
}
