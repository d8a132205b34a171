//! `shoal exec` on the board: the manager opens streams on the board's session
//! connection, each asking to run a command in one of this board's running containers
//! ([`shoal_proto::exec`]). The command runs as a process of the container (its
//! namespaces, cgroup, capabilities and seccomp filter, like `docker exec`), started by
//! a short-lived `shoal-agent exec-in` child, so libcontainer's forks happen in a
//! single-threaded process rather than in the agent.
//!
//! Its input comes in `Stdin` frames, its output goes back as `Stdout`/`Stderr`
//! frames, and an `Exit` frame ends the stream. A stream that breaks (the CLI went away)
//! kills the command.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use shoal_link::framed;
use shoal_proto::exec::{ExecFrame, ExecStart, ExecStarted, MAX_CHUNK};
use shoal_proto::{frame, Envelope, ErrorKind, ErrorReply, Request, Response, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::runtime::bundle::Bundle;

/// How long the manager gets to send its request on a stream it opened.
const REQUEST_TIME: Duration = Duration::from_secs(10);
/// Execs running at once on a board; more are refused, so the manager (or whoever holds
/// its key) cannot make a board fork without bound.
pub const MAX_EXECS: usize = 32;
/// How long output may still arrive after the command exited (its own children may
/// hold the pipes open; they are not waited for longer).
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// A command running the agent binary `agent_exe` (its `shim` and `exec-in` modes),
/// named `shoal-agent` in `ps` whatever the path (the agent's own is `/proc/self/exe`:
/// see [`crate::runtime::LibcontainerRuntime::paths`]).
pub fn agent_command(agent_exe: &std::path::Path) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut c = std::process::Command::new(agent_exe);
    c.arg0("shoal-agent");
    c
}

/// Where the agent keeps containers: bundles on disk, libcontainer state in `/run`.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The containers' bundles.
    pub containers: PathBuf,
    /// libcontainer's state directory.
    pub state: PathBuf,
    /// The agent binary's path (see [`agent_command`]).
    pub agent_exe: PathBuf,
    /// The named volumes (see [`crate::volumes`]).
    pub volumes: PathBuf,
}

/// Serves the exec (and `service logs`, [`crate::logs`]) streams the manager opens on
/// `conn` until the connection ends.
pub async fn serve(conn: quinn::Connection, paths: Paths) {
    let running = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_EXECS));
    let logs = std::sync::Arc::new(tokio::sync::Semaphore::new(crate::logs::MAX_STREAMS));
    while let Ok((send, recv)) = conn.accept_bi().await {
        let (paths, running, logs) = (paths.clone(), running.clone(), logs.clone());
        tokio::spawn(async move {
            handle(send, recv, &paths, running, logs).await;
        });
    }
}

pub(crate) async fn refuse(mut send: quinn::SendStream, e: ErrorReply) {
    let _ = framed::send(&mut send, &Response::Error(e)).await;
    let _ = send.finish();
}

type Permits = std::sync::Arc<tokio::sync::Semaphore>;

async fn handle(send: quinn::SendStream, mut recv: quinn::RecvStream, paths: &Paths, running: Permits, logs: Permits) {
    let envelope = tokio::time::timeout(REQUEST_TIME, framed::recv::<Envelope>(&mut recv, frame::MAX_FRAME_LEN)).await;
    let start = match envelope {
        Ok(Ok(Some(Envelope { version, request: Request::ExecTask(start) }))) if version == PROTOCOL_VERSION => start,
        Ok(Ok(Some(Envelope { version, request: Request::Volume(req) }))) if version == PROTOCOL_VERSION => {
            return volume(send, req, paths).await
        }
        Ok(Ok(Some(Envelope { version, request: Request::LogsTask(start) }))) if version == PROTOCOL_VERSION => {
            let Ok(_permit) = logs.try_acquire_owned() else {
                let e = ErrorReply::new(
                    ErrorKind::Conflict,
                    &format!("{} log streams already run on this node: try again later", crate::logs::MAX_STREAMS),
                );
                return refuse(send, e).await;
            };
            return crate::logs::run(send, recv, start, paths).await;
        }
        Ok(Ok(Some(Envelope { version, request: Request::AgentUpgrade(offer) }))) if version == PROTOCOL_VERSION => {
            return crate::upgrade::receive(send, recv, offer).await
        }
        Ok(Ok(Some(Envelope { version, .. }))) if version != PROTOCOL_VERSION => {
            let e = ErrorReply::new(
                ErrorKind::VersionMismatch,
                &format!("this agent speaks protocol {PROTOCOL_VERSION}, the manager {version}: update one of them"),
            );
            return refuse(send, e).await;
        }
        Ok(Ok(Some(_))) => {
            return refuse(
                send,
                ErrorReply::new(
                    ErrorKind::InvalidRequest,
                    "a node only accepts exec, logs, volume and agent update requests",
                ),
            )
            .await
        }
        other => return debug!(?other, "an exec stream without a request"),
    };
    let Ok(_permit) = running.try_acquire_owned() else {
        let e = ErrorReply::new(ErrorKind::Conflict, &format!("{MAX_EXECS} execs already run on this node"));
        return refuse(send, e).await;
    };
    if let Err(e) = run(send, recv, start, paths).await {
        debug!(error = %e, "exec ended early");
    }
}

/// Lists or removes this board's named volumes for the manager (`shoal volume …`).
async fn volume(mut send: quinn::SendStream, req: shoal_proto::volumes::VolumeRequest, paths: &Paths) {
    let (volumes, containers) = (paths.volumes.clone(), paths.containers.clone());
    let answer = tokio::task::spawn_blocking(move || crate::volumes::handle(&volumes, &containers, &req)).await;
    let response = match answer {
        Ok(Ok(list)) => Response::Volumes(list),
        Ok(Err(e @ crate::volumes::VolumeError::NotFound(_))) => {
            Response::Error(ErrorReply::new(ErrorKind::NotFound, &e.to_string()))
        }
        Ok(Err(e @ crate::volumes::VolumeError::InUse { .. })) => {
            Response::Error(ErrorReply::new(ErrorKind::Conflict, &e.to_string()))
        }
        Ok(Err(e)) => Response::Error(ErrorReply::new(ErrorKind::InvalidRequest, &e.to_string())),
        Err(e) => Response::Error(ErrorReply::new(ErrorKind::Internal, &e.to_string())),
    };
    let _ = framed::send(&mut send, &response).await;
    let _ = send.finish();
}

/// Starts the command, answers, then pumps frames until it exits.
async fn run(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    start: ExecStart,
    paths: &Paths,
) -> Result<(), String> {
    let cid = crate::supervisor::core::container_id(&start.service, start.slot, start.task.as_str());
    let bundle = Bundle::new(&paths.containers, &cid);
    let alive = bundle.read_pid().is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
    if crate::runtime::validate_id(&cid).is_err() || !alive {
        let e = ErrorReply::new(
            ErrorKind::Conflict,
            &format!("the container of task {} is not running on this node", start.task),
        );
        refuse(send, e).await;
        return Ok(());
    }
    if start.cmd.is_empty() {
        refuse(send, ErrorReply::new(ErrorKind::InvalidRequest, "exec needs a command")).await;
        return Ok(());
    }
    let mut child = tokio::process::Command::from(agent_command(&paths.agent_exe))
        .arg("exec-in")
        .arg("--containers")
        .arg(&paths.containers)
        .arg("--state")
        .arg(&paths.state)
        .arg(&cid)
        .arg("--")
        .args(start.cmd.iter().map(|a| &**a))
        .stdin(if start.interactive { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting exec-in: {e}"))?;
    info!(container = %cid, "exec");
    let started = Response::ExecStarted(ExecStarted { container: shoal_proto::text_lossy(&cid) });
    framed::send(&mut send, &started).await.map_err(|e| e.to_string())?;

    // Output of both pipes, in the order it comes, through one writer.
    let (tx, mut frames) = mpsc::channel::<ExecFrame>(16);
    let stdout = child.stdout.take().map(|s| tokio::spawn(pump(s, tx.clone(), ExecFrame::Stdout as fn(_) -> _)));
    let stderr = child.stderr.take().map(|s| tokio::spawn(pump(s, tx.clone(), ExecFrame::Stderr as fn(_) -> _)));
    drop(tx);
    let mut stdin = child.stdin.take();
    let input = async {
        loop {
            match framed::recv::<ExecFrame>(&mut recv, frame::MAX_FRAME_LEN).await {
                Ok(Some(ExecFrame::Stdin(bytes))) => {
                    if let Some(s) = stdin.as_mut() {
                        if s.write_all(bytes.as_slice()).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                Ok(Some(ExecFrame::StdinClosed)) => stdin = None,
                Ok(Some(_)) => return Err("unexpected frame from the manager".to_owned()),
                // The input side finished cleanly: nothing more to read, keep running.
                Ok(None) => {
                    stdin = None;
                    std::future::pending::<()>().await;
                }
                Err(e) => return Err(format!("the exec stream broke: {e}")),
            }
        }
    };
    let status = {
        let output = async {
            while let Some(f) = frames.recv().await {
                framed::send(&mut send, &f).await.map_err(|e| format!("sending output: {e}"))?;
            }
            Ok::<(), String>(())
        };
        let waited = child.wait();
        tokio::pin!(input, output, waited);
        let mut output_done = false;
        // The command's end, or a broken stream: returning drops the child, which kills it.
        let status = loop {
            tokio::select! {
                r = &mut input => return r,
                r = &mut output, if !output_done => {
                    r?;
                    output_done = true;
                }
                s = &mut waited => break s.map_err(|e| e.to_string())?,
            }
        };
        // Output still in the pipes or queued is sent before the exit frame.
        if !output_done {
            if let Ok(r) = tokio::time::timeout(DRAIN_TIME, &mut output).await {
                r?;
            }
        }
        status
    };
    if let Some(h) = stdout {
        h.abort();
    }
    if let Some(h) = stderr {
        h.abort();
    }
    let code = match status {
        s if s.code().is_some() => s.code().unwrap_or(1),
        s => 128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0),
    };
    framed::send(&mut send, &ExecFrame::Exit(code)).await.map_err(|e| e.to_string())?;
    let _ = send.finish();
    // Let the last frames leave before the stream is dropped.
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    Ok(())
}

/// Reads `source` in chunks and queues each as a frame made by `wrap`.
async fn pump(
    mut source: impl AsyncRead + Unpin,
    tx: mpsc::Sender<ExecFrame>,
    wrap: fn(shoal_proto::Bytes<MAX_CHUNK>) -> ExecFrame,
) {
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        match source.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let Ok(bytes) = shoal_proto::Bytes::try_from(&buf[..n]) else { return };
                if tx.send(wrap(bytes)).await.is_err() {
                    return;
                }
            }
        }
    }
}
