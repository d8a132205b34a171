//! `docker service logs`: `GET /services/{id}/logs` and `GET /tasks/{id}/logs` answered
//! from shoal's own log stream (the one `shoal service logs` reads), written in Docker's
//! multiplexed stream format.
//!
//! Each line is one frame: an 8-byte header (stream type 1 stdout or 2 stderr, three
//! zero bytes, the payload's length as a big-endian u32), then `[TIMESTAMP ][DETAILS
//! ]TEXT\n`. With `details=1` (which the docker CLI always asks for, unless `--raw`)
//! DETAILS is `com.docker.swarm.node.id=…,com.docker.swarm.service.id=…,
//! com.docker.swarm.task.id=…`: the CLI reads the IDs back to print
//! `name.slot.taskid@node | `, so they must be there and be real IDs. `follow=1` streams
//! until the client goes away (the body's receiver is dropped, the pump ends, and with
//! it the stream to the manager and the boards).
//!
//! The parsing and framing are pure; [`open`] is the shell around a [`Backend`].

use std::collections::HashMap;

use hyper::body::Bytes;
use shoal_proto::dispatch::{ServiceReply, ServiceRequest};
use shoal_proto::logs::{LogStream, LogsEvent, LogsRequest};
use shoal_proto::{ControlReply, ControlRequest};
use tokio::sync::mpsc;

use super::api::query_param;
use super::backend::Backend;
use super::error::ApiError;

/// Frames buffered between the pump and the HTTP connection.
const BODY_QUEUE: usize = 64;

/// Docker's stream type of a line.
pub fn stream_type(s: LogStream) -> u8 {
    match s {
        LogStream::Stdout => 1,
        LogStream::Stderr => 2,
    }
}

/// One frame of Docker's multiplexed stream.
pub fn frame(stream: u8, payload: &[u8]) -> Vec<u8> {
    // A line is bounded far below 4 GiB (`shoal_proto::logs::MAX_LINE`); cut, never wrap.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(8 + len as usize);
    out.extend_from_slice(&[stream, 0, 0, 0]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&payload[..len as usize]);
    out
}

/// What the query asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogQuery {
    /// `follow=1`.
    pub follow: bool,
    /// `tail=N` (`all` or absent: every line).
    pub tail: Option<u32>,
    /// `since=SECONDS[.NANOS]`, as ms.
    pub since_ms: Option<u64>,
    /// `timestamps=1`.
    pub timestamps: bool,
    /// `details=1`.
    pub details: bool,
    /// `stdout=1`.
    pub stdout: bool,
    /// `stderr=1`.
    pub stderr: bool,
}

fn flag(query: &str, name: &str) -> bool {
    matches!(query_param(query, name).as_deref(), Some("1" | "true" | "True"))
}

impl LogQuery {
    /// Parses dockerd's logs query; refuses what it would refuse.
    pub fn parse(query: &str) -> Result<Self, ApiError> {
        let q = Self {
            follow: flag(query, "follow"),
            timestamps: flag(query, "timestamps"),
            details: flag(query, "details"),
            stdout: flag(query, "stdout"),
            stderr: flag(query, "stderr"),
            tail: match query_param(query, "tail").as_deref() {
                None | Some("" | "all") => None,
                Some(n) => Some(n.parse::<u32>().map_err(|_| {
                    ApiError::bad_request(format!("invalid tail {n:?}: give a number of lines or `all`"))
                })?),
            },
            since_ms: match query_param(query, "since").as_deref() {
                None | Some("" | "0") => None,
                Some(s) => Some(parse_since(s).ok_or_else(|| {
                    ApiError::bad_request(format!("invalid since {s:?}: give Unix seconds, e.g. 1700000000.5"))
                })?),
            },
        };
        if !q.stdout && !q.stderr {
            return Err(ApiError::bad_request("Bad parameters: you must choose at least one stream"));
        }
        Ok(q)
    }
}

/// `SECONDS[.FRACTION]` (what the docker CLI sends for `--since`) as ms.
fn parse_since(s: &str) -> Option<u64> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: u64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ms: u64 = format!("{frac:0<3}")[..3].parse().ok()?;
    secs.checked_mul(1000)?.checked_add(ms)
}

/// A task's IDs, for the details Docker's CLI reads back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskIds {
    /// The task.
    pub task: String,
    /// Its service.
    pub service: String,
    /// Its node ("" before it was placed).
    pub node: String,
}

/// `com.docker.swarm.node.id=…,com.docker.swarm.service.id=…,com.docker.swarm.task.id=…`.
pub fn details(ids: &TaskIds) -> String {
    format!(
        "com.docker.swarm.node.id={},com.docker.swarm.service.id={},com.docker.swarm.task.id={}",
        ids.node, ids.service, ids.task
    )
}

/// dockerd's timestamp: RFC 3339 with nanoseconds.
pub fn timestamp(ms: u64) -> String {
    let s = shoal_proto::time::rfc3339(ms);
    // `…SS.mmmZ` → `…SS.mmm000000Z`.
    format!("{}000000Z", s.trim_end_matches('Z'))
}

/// One line's frame payload as dockerd writes it.
pub fn line(q: &LogQuery, at_ms: u64, ids: Option<&TaskIds>, text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 200);
    if q.timestamps {
        out.extend_from_slice(timestamp(at_ms).as_bytes());
        out.push(b' ');
    }
    if q.details {
        if let Some(ids) = ids {
            out.extend_from_slice(details(ids).as_bytes());
        }
        out.push(b' ');
    }
    out.extend_from_slice(text);
    out.push(b'\n');
    out
}

/// The task ID in the name shoal's log stream announces, `service.slot.taskid@node`.
pub fn task_id_of(name: &str) -> Option<&str> {
    let (task, _node) = name.rsplit_once('@')?;
    let (_, id) = task.rsplit_once('.')?;
    (!id.is_empty()).then_some(id)
}

/// The body of a logs answer: frames as the pump makes them.
pub struct ChannelBody(mpsc::Receiver<Bytes>);

impl ChannelBody {
    /// A body of what `rx` receives, ending when its senders are gone.
    pub fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        Self(rx)
    }
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

async fn task_ids<B: Backend>(backend: &B) -> Result<HashMap<String, TaskIds>, ApiError> {
    match backend.call(ControlRequest::Service(ServiceRequest::Ps { services: Default::default() })).await? {
        ControlReply::Service(ServiceReply::Tasks(t)) => Ok(t
            .iter()
            .map(|t| {
                let ids = TaskIds {
                    task: t.task.id.to_string(),
                    service: t.task.service_id.to_string(),
                    node: t.node_id.as_ref().map(|n| n.to_string()).unwrap_or_default(),
                };
                (ids.task.clone(), ids)
            })
            .collect()),
        _ => Err(ApiError::new(500, "the manager answered a task list with something else: report this bug")),
    }
}

/// Starts the logs of `target` (a service, or a task): the manager is asked before the
/// answer's head is written, so a wrong target is a plain Docker error.
pub async fn open<B: Backend>(backend: std::sync::Arc<B>, target: &str, query: &str) -> Result<ChannelBody, ApiError> {
    let q = LogQuery::parse(query)?;
    let target =
        shoal_proto::text(target).map_err(|e| ApiError::bad_request(format!("service or task {target:?}: {e}")))?;
    let mut events = backend.logs(LogsRequest { target, follow: q.follow, tail: q.tail, since_ms: q.since_ms }).await?;
    let mut known = if q.details { task_ids(&*backend).await? } else { HashMap::new() };
    let (tx, rx) = mpsc::channel::<Bytes>(BODY_QUEUE);
    tokio::spawn(async move {
        let mut names: HashMap<u32, Option<TaskIds>> = HashMap::new();
        loop {
            let ev = tokio::select! {
                ev = events.recv() => ev,
                // The client went away: dropping `events` ends the stream upstream.
                () = tx.closed() => return,
            };
            let out = match ev {
                Some(LogsEvent::Task { index, name, .. }) => {
                    let id = task_id_of(name.as_str()).unwrap_or("").to_owned();
                    if q.details && !known.contains_key(&id) {
                        // A task that started after the list was read (following).
                        if let Ok(fresh) = task_ids(&*backend).await {
                            known = fresh;
                        }
                    }
                    names.insert(index, known.get(&id).cloned());
                    continue;
                }
                Some(LogsEvent::Lines { task, lines }) => {
                    let ids = names.get(&task).cloned().flatten();
                    if q.details && ids.is_none() {
                        // The CLI can't print a line without its task's IDs.
                        continue;
                    }
                    let mut out = Vec::new();
                    for l in lines.iter() {
                        let wanted = match l.stream {
                            LogStream::Stdout => q.stdout,
                            LogStream::Stderr => q.stderr,
                        };
                        if wanted {
                            out.extend(frame(
                                stream_type(l.stream),
                                &line(&q, l.at_ms, ids.as_ref(), l.text.as_slice()),
                            ));
                        }
                    }
                    out
                }
                Some(LogsEvent::Warning(w)) => {
                    tracing::debug!(warning = %w, "docker api logs");
                    continue;
                }
                Some(LogsEvent::End) | None => return,
            };
            if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                return;
            }
        }
    });
    Ok(ChannelBody(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_type_three_zeros_and_a_big_endian_length() {
        let f = frame(2, b"hello\n");
        assert_eq!(&f[..8], &[2, 0, 0, 0, 0, 0, 0, 6]);
        assert_eq!(&f[8..], b"hello\n");
        let big = vec![b'x'; 300];
        assert_eq!(&frame(1, &big)[..8], &[1, 0, 0, 0, 0, 0, 1, 44]);
        assert_eq!(frame(1, b""), vec![1, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn lines_carry_timestamps_and_details_only_when_asked() {
        let ids = TaskIds { task: "t1".into(), service: "s1".into(), node: "n1".into() };
        let mut q = LogQuery { stdout: true, ..Default::default() };
        assert_eq!(line(&q, 0, Some(&ids), b"hi"), b"hi\n");
        q.details = true;
        assert_eq!(
            String::from_utf8(line(&q, 0, Some(&ids), b"hi")).unwrap(),
            "com.docker.swarm.node.id=n1,com.docker.swarm.service.id=s1,com.docker.swarm.task.id=t1 hi\n"
        );
        q.timestamps = true;
        let l = String::from_utf8(line(&q, 1_795_000_000_123, Some(&ids), b"")).unwrap();
        assert!(l.starts_with("2026-11-18T") && l.contains(".123000000Z com.docker.swarm.node.id=n1,"), "{l}");
        assert!(l.ends_with("task.id=t1 \n"), "{l}");
    }

    #[test]
    fn the_query_is_dockerds() {
        let q = LogQuery::parse("details=1&follow=1&stderr=1&stdout=1&tail=all&timestamps=0").unwrap();
        assert!(q.follow && q.details && q.stdout && q.stderr && !q.timestamps);
        assert_eq!(q.tail, None);
        let q = LogQuery::parse("stdout=1&tail=5&since=1700000000.250000000").unwrap();
        assert_eq!((q.tail, q.since_ms), (Some(5), Some(1_700_000_000_250)));
        let e = LogQuery::parse("tail=5").unwrap_err();
        assert_eq!((e.status, e.message.as_str()), (400, "Bad parameters: you must choose at least one stream"));
        assert!(LogQuery::parse("stdout=1&tail=-1").unwrap_err().message.contains("number of lines"));
        assert!(LogQuery::parse("stdout=1&since=yesterday").unwrap_err().message.contains("Unix seconds"));
        assert!(LogQuery::parse("stdout=1&since=1.x").is_err());
    }

    #[test]
    fn the_task_id_is_read_from_the_announced_name() {
        assert_eq!(task_id_of("web.v2.3.abcdef@node-1.lan"), Some("abcdef"));
        assert_eq!(task_id_of("web.3.@node"), None);
        assert_eq!(task_id_of("nothing"), None);
    }
}
