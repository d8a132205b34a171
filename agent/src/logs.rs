//! `shoal service logs` on the board: the manager opens a stream on the board's session
//! connection asking for the log of one of its containers ([`shoal_proto::logs`]); the
//! lines go back as [`LogFrame`]s, read from the files the shim writes
//! ([`crate::runtime::logs::read`]).
//!
//! The files are read on a thread of their own, one record at a time, handing each line
//! to the stream through a queue of a few frames: when the manager (or the CLI behind it)
//! reads slowly, QUIC's flow control blocks the sender, the queue fills and the reading
//! thread blocks, so a stuck reader costs the board nothing but that thread. A stream the
//! manager stops or resets ends the thread within one poll.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shoal_link::framed;
use shoal_proto::logs::{LogFrame, LogLine, LogsStart, BATCH_BYTES, MAX_BATCH};
use shoal_proto::{ErrorKind, ErrorReply, Response};
use tokio::sync::mpsc;
use tracing::debug;

use crate::exec::{refuse, Paths};
use crate::runtime::bundle::Bundle;
use crate::runtime::logs::{read, ReadOptions};

/// Log streams served at once on a board; more are refused.
pub const MAX_STREAMS: usize = 64;
/// Lines queued between the reading thread and the stream (one batch).
const QUEUE: usize = MAX_BATCH;

/// Streams the log `start` asks for, until its end or until the manager goes away.
pub async fn run(mut send: quinn::SendStream, mut recv: quinn::RecvStream, start: LogsStart, paths: &Paths) {
    let cid = crate::supervisor::core::container_id(&start.service, start.slot, start.task.as_str());
    let bundle = Bundle::new(&paths.containers, &cid);
    if crate::runtime::validate_id(&cid).is_err() || !bundle.dir().is_dir() {
        let e = ErrorReply::new(ErrorKind::NotFound, &format!("task {} has no container on this node", start.task));
        return refuse(send, e).await;
    }
    if framed::send(&mut send, &Response::LogsStarted).await.is_err() {
        return;
    }
    // `None` is the end of the log.
    let (tx, mut rx) = mpsc::channel::<Option<LogLine>>(QUEUE);
    let stop = Arc::new(AtomicBool::new(false));
    let options = ReadOptions { follow: start.follow, tail: start.tail, since_ms: start.since_ms };
    let reader = {
        let (stop, tx) = (stop.clone(), tx.clone());
        let exit = bundle.exit_file();
        let log = bundle.log();
        std::thread::Builder::new().name("logs".into()).spawn(move || {
            let read = read(
                &log,
                options,
                || exit.exists(),
                || stop.load(Ordering::Relaxed) || tx.is_closed(),
                // Blocks while the queue is full: this is the backpressure.
                |line| tx.blocking_send(Some(line)).is_ok(),
            );
            if let Err(e) = read {
                debug!(error = %e, "reading a container log");
            }
            // An end only after a complete read: a stream that stopped early gets none.
            if !stop.load(Ordering::Relaxed) {
                let _ = tx.blocking_send(None);
            }
        })
    };
    drop(tx);
    if let Err(e) = reader {
        debug!(error = %e, "no thread for a log stream");
        return;
    }
    let forward = async {
        while let Some(first) = rx.recv().await {
            // What else is already read goes in the same frame.
            let mut batch = shoal_proto::BoundedVec::new();
            let (mut bytes, mut end, mut item) = (0, false, first);
            loop {
                let Some(line) = item else {
                    end = true;
                    break;
                };
                bytes += line.text.as_slice().len();
                let _ = batch.push(line);
                if batch.len() == MAX_BATCH || bytes >= BATCH_BYTES {
                    break;
                }
                match rx.try_recv() {
                    Ok(more) => item = more,
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                framed::send(&mut send, &LogFrame::Lines(batch)).await.map_err(|e| e.to_string())?;
            }
            if end {
                framed::send(&mut send, &LogFrame::End).await.map_err(|e| e.to_string())?;
                let _ = send.finish();
                let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
                break;
            }
        }
        Ok::<(), String>(())
    };
    // The manager never sends after its request; its side ending (stop, reset, the
    // connection gone) means nobody reads any more.
    let gone = async {
        let mut buf = [0u8; 64];
        while let Ok(Some(_)) = recv.read(&mut buf).await {}
    };
    tokio::select! {
        r = forward => if let Err(e) = r { debug!(error = %e, "log stream ended early") },
        () = gone => debug!("the manager closed a log stream"),
    }
    stop.store(true, Ordering::Relaxed);
    // Dropping the queue's receiver wakes a reader blocked on a full queue.
    drop(rx);
}
