//! `shoal service logs [-f] [--tail N] [--since T] [-t] [--no-task-ids] TARGET`: the
//! logs of a service's tasks, or of one task, from whichever boards hold them, through
//! the manager. Lines print as Docker prints them, `name.slot.taskid@node    | line`;
//! what a container wrote to stderr goes to this command's stderr.

use std::io::Write;
use std::path::Path;

use clap::Args;
use shoal_link::framed;
use shoal_proto::logs::{LogStream, LogsEvent, LogsRequest};
use shoal_proto::services::parse_duration_ms;
use shoal_proto::{frame, Response};

use super::client::{CliError, Client};

/// `shoal service logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep printing new lines, and those of tasks that start later, until interrupted.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines of each task (`all` for every line).
    #[arg(long, short = 'n', value_parser = parse_tail)]
    pub tail: Option<Tail>,
    /// Only lines since a time: a duration back from now (`10m`, `1h30m`) or RFC 3339
    /// (`2026-11-18T11:06:40Z`).
    #[arg(long)]
    pub since: Option<String>,
    /// Print each line's timestamp.
    #[arg(short, long)]
    pub timestamps: bool,
    /// Name tasks by service and slot only.
    #[arg(long)]
    pub no_task_ids: bool,
    /// A service name or ID, a task (`web.2`), a task ID or a unique prefix of one.
    pub target: String,
}

/// `--tail`: a count, or every line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail(pub Option<u32>);

fn parse_tail(s: &str) -> Result<Tail, String> {
    if s == "all" {
        return Ok(Tail(None));
    }
    s.parse::<u32>().map(|n| Tail(Some(n))).map_err(|_| format!("invalid tail {s:?}: give a number of lines or `all`"))
}

/// `--since`: an RFC 3339 time, or a duration back from `now_ms`.
pub fn parse_since(s: &str, now_ms: u64) -> Result<u64, String> {
    if let Some(at) = shoal_proto::time::parse_rfc3339(s.trim()) {
        return Ok(at);
    }
    parse_duration_ms(s.trim()).map(|d| now_ms.saturating_sub(d)).map_err(|_| {
        format!("invalid --since {s:?}: give a duration back from now (`10m`) or a time (`2026-11-18T11:06:40Z`)")
    })
}

/// The request the flags make, checked before connecting.
pub fn request(args: &LogsArgs, now_ms: u64) -> Result<LogsRequest, CliError> {
    let target = shoal_proto::text(&args.target)
        .map_err(|_| CliError::Local(format!("target {:?} is too long", args.target)))?;
    let since_ms = args.since.as_deref().map(|s| parse_since(s, now_ms)).transpose().map_err(CliError::Local)?;
    Ok(LogsRequest { target, follow: args.follow, tail: args.tail.and_then(|t| t.0), since_ms })
}

/// Prints the logs until they end, or until interrupted when following.
pub async fn run(data_dir: &Path, args: LogsArgs) -> anyhow::Result<()> {
    let request = request(&args, shoal_link::wall_ms())?;
    let client = Client::connect(data_dir).await?;
    let (_send, mut recv) = client.open_logs(request).await?;
    // Events are read by a task of their own, so the printer can tell when none is
    // waiting and only then flush: one write per burst, not per line.
    let (tx, mut events) = tokio::sync::mpsc::channel(256);
    let reader = tokio::spawn(async move {
        loop {
            let ev = framed::recv::<LogsEvent>(&mut recv, frame::MAX_FRAME_LEN).await;
            let last =
                !matches!(ev, Ok(Some(LogsEvent::Task { .. } | LogsEvent::Lines { .. } | LogsEvent::Warning(_))));
            if tx.send(ev).await.is_err() || last {
                return;
            }
        }
    });
    let printing = async {
        let mut names: Vec<(u32, String)> = Vec::new();
        let mut width = 0;
        let mut stdout = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
        let mut stderr = std::io::BufWriter::new(std::io::stderr().lock());
        loop {
            let ev = match events.try_recv() {
                Ok(ev) => ev,
                Err(_) => {
                    stdout.flush()?;
                    stderr.flush()?;
                    match events.recv().await {
                        Some(ev) => ev,
                        None => anyhow::bail!("the log stream ended without its end"),
                    }
                }
            };
            match ev {
                Ok(Some(LogsEvent::Task { index, name, short })) => {
                    let name = if args.no_task_ids { short.to_string() } else { name.to_string() };
                    width = width.max(name.len());
                    names.push((index, name));
                }
                Ok(Some(LogsEvent::Lines { task, lines })) => {
                    let name = names.iter().find(|(i, _)| *i == task).map_or("?", |(_, n)| n.as_str());
                    for line in lines.iter() {
                        let mut text = format!("{name:<width$}    | ");
                        if args.timestamps {
                            text.push_str(&shoal_proto::time::rfc3339(line.at_ms));
                            text.push(' ');
                        }
                        text.push_str(&String::from_utf8_lossy(line.text.as_slice()));
                        text.push('\n');
                        let out: &mut dyn Write =
                            if line.stream == LogStream::Stderr { &mut stderr } else { &mut stdout };
                        out.write_all(text.as_bytes())?;
                    }
                }
                Ok(Some(LogsEvent::Warning(w))) => {
                    stdout.flush()?;
                    writeln!(stderr, "warning: {w}")?;
                    stderr.flush()?;
                }
                Ok(Some(LogsEvent::End)) | Ok(None) => {
                    stdout.flush()?;
                    stderr.flush()?;
                    return Ok(());
                }
                Err(e) => anyhow::bail!("the log stream broke: {e}"),
            }
        }
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        r = printing => r,
        // Interrupted: closing the connection ends the streams on the manager and boards.
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = terminate.recv() => Ok(()),
    };
    reader.abort();
    client.close().await;
    result
}

/// Opens the stream and checks the manager's first answer.
pub(super) fn started(r: Option<Response>) -> Result<(), CliError> {
    match r {
        Some(Response::LogsStarted) => Ok(()),
        Some(Response::Error(e)) => Err(CliError::Refused(e)),
        Some(other) => Err(CliError::Unexpected(format!("{other:?}"))),
        None => Err(CliError::Unexpected("the manager closed the logs without answering".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_times() {
        let now = 1_795_000_000_000;
        assert_eq!(parse_since("10m", now).unwrap(), now - 600_000);
        assert_eq!(parse_since("2026-11-18T11:06:40Z", now).unwrap(), 1_795_000_000_000);
        assert_eq!(parse_since("1h", 1_000).unwrap(), 0, "not before 1970");
        let e = parse_since("yesterday", now).unwrap_err();
        assert!(e.starts_with("invalid --since \"yesterday\""), "{e}");
    }

    #[test]
    fn tail_is_a_count_or_all() {
        assert_eq!(parse_tail("5").unwrap(), Tail(Some(5)));
        assert_eq!(parse_tail("all").unwrap(), Tail(None));
        assert!(parse_tail("-1").unwrap_err().contains("number of lines"));
    }
}
