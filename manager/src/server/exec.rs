//! `shoal exec` in the manager: finds the task ([`crate::core::exec`]), opens a stream
//! to its board over the board's own session connection, and relays bytes between the
//! CLI and the board until both sides are done. The frames are not decoded here: the
//! two ends check them, and a relay that only copies cannot be confused by them.

use super::*;
use shoal_proto::exec::{ExecRequest, ExecStart};

/// How long a board gets to start the command.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the relay waits for the CLI to hang up once the command ended.
const LINGER: Duration = Duration::from_secs(5);

pub(super) async fn handle_exec(
    mgr: &Manager,
    req: ExecRequest,
    mut cli_send: quinn::SendStream,
    mut cli_recv: quinn::RecvStream,
) {
    let target = {
        let svc = mgr.services.lock().expect("services lock");
        let names: Vec<(ServiceId, String)> =
            svc.records.values().map(|r| (r.service.id.clone(), r.service.spec.name.to_string())).collect();
        let tasks = svc.tasks.all();
        crate::core::exec::resolve(&names, tasks, &req.target)
    };
    let target = match target {
        Ok(t) => t,
        Err(e) => return reply(&mut cli_send, &Response::Error(e)).await,
    };
    let conn = mgr.state.lock().expect("state lock").sessions.get(&target.node).map(|s| s.conn.clone());
    let Some(conn) = conn else {
        let e = ErrorReply::new(
            ErrorKind::Conflict,
            &format!("the node of task {} is not connected: see `shoal node ls`", target.task.id),
        );
        return reply(&mut cli_send, &Response::Error(e)).await;
    };
    let start = ExecStart {
        task: target.task.id.clone(),
        service: shoal_proto::text_lossy(&target.service),
        slot: target.task.slot,
        cmd: req.cmd,
        interactive: req.interactive,
    };
    let opened = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        framed::send(&mut send, &Envelope::new(Request::ExecTask(start))).await.map_err(|e| e.to_string())?;
        match framed::recv::<Response>(&mut recv, frame::MAX_FRAME_LEN).await {
            Ok(Some(r)) => Ok((send, recv, r)),
            Ok(None) => Err("the node closed the stream without answering".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    };
    let (mut node_send, mut node_recv, answer) = match tokio::time::timeout(START_TIMEOUT, opened).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            let e = ErrorReply::new(ErrorKind::Internal, &format!("the node could not start the command: {e}"));
            return reply(&mut cli_send, &Response::Error(e)).await;
        }
        Err(_) => {
            let e = ErrorReply::new(ErrorKind::Internal, "the node did not start the command within 10s");
            return reply(&mut cli_send, &Response::Error(e)).await;
        }
    };
    let started = matches!(answer, Response::ExecStarted(_));
    if framed::send(&mut cli_send, &answer).await.is_err() || !started {
        let _ = cli_send.finish();
        return;
    }
    info!(task = %target.task.id, node = %target.node, "exec started");
    // Input towards the board; it breaks when the CLI goes away, and the board then
    // kills the command (so a reset, not a finish, is passed on).
    let input = async {
        match tokio::io::copy(&mut cli_recv, &mut node_send).await {
            Ok(_) => {
                let _ = node_send.finish();
                // Input ended, output goes on.
                std::future::pending::<()>().await;
            }
            Err(_) => {
                let _ = node_send.reset(0u32.into());
            }
        }
    };
    // Output back, up to the exit frame (or the board going away).
    let output = async {
        let _ = tokio::io::copy(&mut node_recv, &mut cli_send).await;
        let _ = cli_send.finish();
    };
    tokio::pin!(input);
    tokio::select! {
        () = &mut input => {}
        () = output => {
            // The command ended: a CLI that keeps its side open gets a moment to go.
            let _ = tokio::time::timeout(LINGER, &mut input).await;
        }
    }
}
