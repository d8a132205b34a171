//! `shoal service logs` in the manager: finds the tasks ([`crate::core::logs`]), opens
//! one stream per task to its board over the board's session connection, and merges
//! their lines onto the CLI's stream, each task announced once with its name. While
//! following it looks for new tasks of the target every [`RESCAN`] and streams them too.
//!
//! Memory stays bounded whatever the CLI does: lines pass through one queue of
//! [`QUEUE`] events; when the CLI reads slowly its stream's flow control blocks the
//! writer, the queue fills, the per-board readers stop reading, and the boards' flow
//! control stops their file readers in turn. A board that is down, or goes down while
//! streaming, is named in a warning and the other boards go on.

use std::collections::HashSet;

use super::*;
use crate::core::logs::{self as core_logs, LogsTarget};
use shoal_proto::logs::{LogFrame, LogsEvent, LogsRequest, LogsStart};

/// How long a board gets to answer a log request.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Events queued between the boards' streams and the CLI's.
const QUEUE: usize = 64;
/// How often a follow looks for tasks that started since.
const RESCAN: Duration = Duration::from_millis(500);
/// Largest frame taken from a board: a batch of lines at its largest.
const FRAME_LIMIT: usize = shoal_proto::logs::MAX_BATCH_FRAME;
/// Most tasks one `service logs` reads, so a service with a long history can't make the
/// manager open streams without bound.
const MAX_TASKS: usize = 256;

pub(super) async fn handle_logs(
    mgr: &Manager,
    req: LogsRequest,
    mut cli_send: quinn::SendStream,
    mut cli_recv: quinn::RecvStream,
) {
    let target = {
        let svc = mgr.services.lock().expect("services lock");
        let names = service_names(&svc);
        let tasks = svc.tasks.all();
        core_logs::resolve(&names, tasks, &req.target)
    };
    let target = match target {
        Ok(t) => t,
        Err(e) => return reply(&mut cli_send, &Response::Error(e)).await,
    };
    if framed::send(&mut cli_send, &Response::LogsStarted).await.is_err() {
        return;
    }
    let (tx, mut rx) = mpsc::channel::<LogsEvent>(QUEUE);
    let mut streams = tokio::task::JoinSet::new();
    let mut seen = HashSet::new();
    let mut down_named = HashSet::new();
    let mut rescan = tokio::time::interval(RESCAN);
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            biased;
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                if framed::send(&mut cli_send, &ev).await.is_err() {
                    break;
                }
            }
            // The CLI sends nothing after its request: its side ending means it went away.
            r = cli_recv.read(&mut buf) => if !matches!(r, Ok(Some(_))) { break },
            _ = rescan.tick(), if req.follow || seen.is_empty() => {
                let started = start_new(mgr, &req, &target, &mut seen, &mut down_named, &tx, &mut streams);
                if !req.follow && started == 0 && streams.is_empty() {
                    // Nothing (reachable) had a container: an empty log, with its warnings.
                    finish(&mut cli_send, &mut rx).await;
                    break;
                }
            }
            Some(_) = streams.join_next(), if !streams.is_empty() => {
                if !req.follow && streams.is_empty() {
                    finish(&mut cli_send, &mut rx).await;
                    break;
                }
            }
        }
    }
    // Dropping the boards' streams stops them, and the boards' readers with them.
    streams.abort_all();
}

/// Sends what is still queued, then the end.
async fn finish(cli_send: &mut quinn::SendStream, rx: &mut mpsc::Receiver<LogsEvent>) {
    while let Ok(ev) = rx.try_recv() {
        if framed::send(cli_send, &ev).await.is_err() {
            return;
        }
    }
    let _ = framed::send(cli_send, &LogsEvent::End).await;
    let _ = cli_send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(2), cli_send.stopped()).await;
}

fn service_names(svc: &ServiceState) -> Vec<(ServiceId, String)> {
    svc.records.values().map(|r| (r.service.id.clone(), r.service.spec.name.to_string())).collect()
}

/// Starts a stream for each task of `target` not streamed yet; returns how many.
fn start_new(
    mgr: &Manager,
    req: &LogsRequest,
    target: &LogsTarget,
    seen: &mut HashSet<TaskId>,
    down_named: &mut HashSet<NodeId>,
    tx: &mpsc::Sender<LogsEvent>,
    streams: &mut tokio::task::JoinSet<()>,
) -> usize {
    let fresh: Vec<(Task, String)> = {
        let svc = mgr.services.lock().expect("services lock");
        let tasks = svc.tasks.all();
        let names = service_names(&svc);
        core_logs::tasks(target, tasks)
            .into_iter()
            .filter(|t| !seen.contains(&t.id))
            .map(|t| {
                let name = names.iter().find(|(id, _)| *id == t.service_id).map(|(_, n)| n.clone()).unwrap_or_default();
                (t.clone(), name)
            })
            .collect()
    };
    let mut started = 0;
    for (task, service) in fresh {
        if seen.len() >= MAX_TASKS {
            break;
        }
        seen.insert(task.id.clone());
        let Some(node) = task.node_id.clone() else { continue };
        let hostname = mgr
            .store
            .node(&node)
            .ok()
            .flatten()
            .map(|n| n.description.hostname.to_string())
            .unwrap_or(node.to_string());
        let conn = mgr.state.lock().expect("state lock").sessions.get(&node).map(|s| s.conn.clone());
        let Some(conn) = conn else {
            if down_named.insert(node) {
                let warning = format!("node {hostname} is down: the logs of its tasks are not shown");
                let _ = tx.try_send(LogsEvent::Warning(shoal_proto::Message::lossy(&warning)));
            }
            continue;
        };
        let index = u32::try_from(seen.len()).unwrap_or(u32::MAX);
        let short = format!("{service}.{}@{hostname}", task.slot);
        let name = format!("{service}.{}.{}@{hostname}", task.slot, task.id);
        let start = LogsStart {
            task: task.id.clone(),
            service: shoal_proto::text_lossy(&service),
            slot: task.slot,
            follow: req.follow,
            tail: req.tail,
            since_ms: req.since_ms,
        };
        let announce =
            LogsEvent::Task { index, name: shoal_proto::text_lossy(&name), short: shoal_proto::text_lossy(&short) };
        streams.spawn(stream_task(conn, start, announce, name, hostname, tx.clone()));
        started += 1;
    }
    started
}

/// Streams one task's log from its board into `tx`.
async fn stream_task(
    conn: quinn::Connection,
    start: LogsStart,
    announce: LogsEvent,
    name: String,
    hostname: String,
    tx: mpsc::Sender<LogsEvent>,
) {
    let LogsEvent::Task { index, .. } = announce else { return };
    let warn = |m: String| LogsEvent::Warning(shoal_proto::Message::lossy(&m));
    let opened = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        framed::send(&mut send, &Envelope::new(Request::LogsTask(start))).await.map_err(|e| e.to_string())?;
        match framed::recv::<Response>(&mut recv, frame::MAX_FRAME_LEN).await {
            Ok(Some(r)) => Ok((send, recv, r)),
            Ok(None) => Err("the node closed the stream without answering".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    };
    // `_send` is kept open: the board takes its end as the reader going away.
    let (_send, mut recv) = match tokio::time::timeout(START_TIMEOUT, opened).await {
        Ok(Ok((send, recv, Response::LogsStarted))) => (send, recv),
        // The board no longer holds the container (removed with the task's history).
        Ok(Ok((_, _, Response::Error(e)))) if e.kind == ErrorKind::NotFound => return,
        Ok(Ok((_, _, Response::Error(e)))) => {
            let _ = tx.send(warn(format!("{name}: {}", e.message))).await;
            return;
        }
        Ok(Ok((_, _, other))) => {
            let _ = tx.send(warn(format!("{name}: unexpected answer from node {hostname}: {other:?}"))).await;
            return;
        }
        Ok(Err(e)) => {
            let _ =
                tx.send(warn(format!("node {hostname} is unreachable ({e}): the logs of {name} are not shown"))).await;
            return;
        }
        Err(_) => {
            let _ = tx
                .send(warn(format!("node {hostname} did not answer within 10s: the logs of {name} are not shown")))
                .await;
            return;
        }
    };
    if tx.send(announce).await.is_err() {
        return;
    }
    loop {
        match framed::recv::<LogFrame>(&mut recv, FRAME_LIMIT).await {
            Ok(Some(LogFrame::Lines(lines))) => {
                // Waits while the CLI is behind: this is the backpressure.
                if tx.send(LogsEvent::Lines { task: index, lines }).await.is_err() {
                    return;
                }
            }
            Ok(Some(LogFrame::End)) | Ok(None) => return,
            Err(e) => {
                debug!(error = %e, task = %name, "log stream from a node broke");
                let _ = tx.send(warn(format!("node {hostname} went away: the logs of {name} stop here"))).await;
                return;
            }
        }
    }
}
