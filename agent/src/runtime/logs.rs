//! Container logs: stdout and stderr lines with a timestamp and the stream name, in
//! files that rotate at a size bound, so a chatty container can't fill an SD card; and
//! reading them back for `service logs` ([`read`]), following across rotation.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

/// Rotation bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// A file is rotated when it would grow past this.
    pub max_file_bytes: u64,
    /// How many rotated files are kept besides the current one.
    pub keep: u32,
}

impl Default for LogLimits {
    fn default() -> Self {
        // 1 MiB + 2 × 1 MiB: at most 3 MiB per container.
        Self { max_file_bytes: 1 << 20, keep: 2 }
    }
}

/// Appends lines to `path`, rotating to `path.1`, `path.2`, ...
pub struct LogWriter {
    path: PathBuf,
    limits: LogLimits,
    file: File,
    written: u64,
}

impl LogWriter {
    /// Opens (appending to) the log at `path`.
    pub fn open(path: &Path, limits: LogLimits) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(Self { path: path.to_owned(), limits, file, written })
    }

    /// Writes one line (a trailing newline is added).
    pub fn line(&mut self, now_ms: u64, stream: &str, text: &str) -> io::Result<()> {
        let record = format!("{} {stream} {}\n", shoal_proto::time::rfc3339(now_ms), text.trim_end_matches('\n'));
        if self.written > 0 && self.written + record.len() as u64 > self.limits.max_file_bytes {
            self.rotate()?;
        }
        self.file.write_all(record.as_bytes())?;
        self.written += record.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        if self.limits.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(numbered(self.limits.keep));
            for n in (1..self.limits.keep).rev() {
                let _ = std::fs::rename(numbered(n), numbered(n + 1));
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.written = 0;
        Ok(())
    }
}

/// Copies lines from `source` into the log until end of file. Overlong lines are cut at
/// 16 KiB so one line can't hold the memory of a board. The shim uses [`pump_both`]; this
/// one-stream copy stays as the tests' reference for what it must log.
#[cfg(test)]
pub fn pump(source: impl io::Read, stream: &str, log: &std::sync::Mutex<LogWriter>, clock: impl Fn() -> u64) {
    let mut reader = io::BufReader::new(source);
    let mut buf = Vec::with_capacity(256);
    loop {
        buf.clear();
        match io::Read::take(&mut reader, MAX_LINE as u64).read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                if let Ok(mut log) = log.lock() {
                    let _ = log.line(clock(), stream, &text);
                }
            }
        }
    }
}

/// Longest line the pumps copy whole: a longer one is cut into pieces of
/// this size, so one line can't hold the memory of a board.
const MAX_LINE: usize = 16 * 1024;

/// Copies the lines of a container's stdout and stderr into the log until both end, in
/// the calling thread: poll(2) on both pipes, so that the shim spends one thread on its
/// logs instead of one per stream (each thread's stack and bookkeeping is memory every
/// container pays for). Lines are cut at [`MAX_LINE`]; a last line without its
/// newline is kept too.
pub fn pump_both(
    stdout: std::os::fd::OwnedFd,
    stderr: std::os::fd::OwnedFd,
    log: &std::sync::Mutex<LogWriter>,
    clock: impl Fn() -> u64,
) {
    pump_streams(stdout, stderr, None::<ExitWatch<()>>, log, clock);
}

/// What [`pump_until_exit`] watches besides the pipes: a pidfd of the container's init.
pub struct ExitWatch<'a, T> {
    /// Readable once the process has exited (`pidfd_open`, Linux 5.3+).
    pub pidfd: std::os::fd::BorrowedFd<'a>,
    /// Called once, when it is: collects the exit (without reaping it).
    pub on_exit: &'a mut dyn FnMut() -> T,
    /// How long the pipes may take to reach their end after the exit: something else
    /// (a process that left the container's PID namespace, a leaked descriptor) may
    /// hold them open, and the exit must still be recorded.
    pub drain: std::time::Duration,
}

/// [`pump_both`] and the wait for the container's exit in one poll(2), so the shim needs
/// no second thread: returns what `on_exit` returned once the pipes have ended (or the
/// drain time has passed after the exit), so that the exit is recorded after the
/// container's last line. `None` only if poll(2) itself failed before the exit.
pub fn pump_until_exit<T>(
    stdout: std::os::fd::OwnedFd,
    stderr: std::os::fd::OwnedFd,
    exit: ExitWatch<'_, T>,
    log: &std::sync::Mutex<LogWriter>,
    clock: impl Fn() -> u64,
) -> Option<T> {
    pump_streams(stdout, stderr, Some(exit), log, clock)
}

fn pump_streams<T>(
    stdout: std::os::fd::OwnedFd,
    stderr: std::os::fd::OwnedFd,
    mut exit: Option<ExitWatch<'_, T>>,
    log: &std::sync::Mutex<LogWriter>,
    clock: impl Fn() -> u64,
) -> Option<T> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    use rustix::io::Errno;

    struct Stream {
        fd: Option<std::os::fd::OwnedFd>,
        name: &'static str,
        /// Read, not yet logged: at most one cut line and one read.
        pending: Vec<u8>,
    }
    let mut streams = [
        Stream { fd: Some(stdout), name: "stdout", pending: Vec::new() },
        Stream { fd: Some(stderr), name: "stderr", pending: Vec::new() },
    ];
    let mut exited: Option<(T, std::time::Instant)> = None;
    let mut chunk = [0u8; 4096];
    loop {
        let (ready, exit_ready) = {
            let open: Vec<usize> = (0..streams.len()).filter(|&i| streams[i].fd.is_some()).collect();
            let watching = exit.as_ref().filter(|_| exited.is_none());
            if open.is_empty() && watching.is_none() {
                break;
            }
            let timeout = match &exited {
                Some((_, deadline)) => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    Some(Timespec::try_from(left).unwrap_or(Timespec { tv_sec: 1, tv_nsec: 0 }))
                }
                None => None,
            };
            let mut fds: Vec<PollFd<'_>> =
                open.iter().filter_map(|&i| streams[i].fd.as_ref().map(|fd| PollFd::new(fd, PollFlags::IN))).collect();
            if let Some(w) = watching {
                fds.push(PollFd::from_borrowed_fd(w.pidfd, PollFlags::IN));
            }
            match poll(&mut fds, timeout.as_ref()) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(_) => break,
            }
            let exit_ready = watching.is_some() && fds.last().is_some_and(|fd| !fd.revents().is_empty());
            let ready: Vec<usize> =
                open.into_iter().zip(&fds).filter(|(_, fd)| !fd.revents().is_empty()).map(|(i, _)| i).collect();
            (ready, exit_ready)
        };
        if exit_ready {
            if let Some(w) = exit.as_mut() {
                exited = Some(((w.on_exit)(), std::time::Instant::now() + w.drain));
            }
        }
        for i in ready {
            let s = &mut streams[i];
            let Some(fd) = &s.fd else { continue };
            let read = match rustix::io::read(fd, &mut chunk) {
                Err(Errno::INTR | Errno::AGAIN) => continue,
                Ok(n) => n,
                Err(_) => 0,
            };
            s.pending.extend_from_slice(&chunk[..read]);
            let ended = read == 0;
            if ended {
                s.fd = None;
            }
            log_lines(&mut s.pending, ended, s.name, log, &clock);
        }
    }
    // Out of time for the drain: what was read of a last line is kept.
    for s in &mut streams {
        if !s.pending.is_empty() {
            log_lines(&mut s.pending, true, s.name, log, &clock);
        }
    }
    exited.map(|(value, _)| value)
}

/// Logs the whole lines at the front of `pending` (and pieces of [`MAX_LINE`] of a longer
/// one), and the rest too once the stream has `ended`.
fn log_lines(
    pending: &mut Vec<u8>,
    ended: bool,
    stream: &str,
    log: &std::sync::Mutex<LogWriter>,
    clock: &impl Fn() -> u64,
) {
    let mut start = 0;
    loop {
        let rest = &pending[start..];
        let window = &rest[..rest.len().min(MAX_LINE)];
        let len = match window.iter().position(|&b| b == b'\n') {
            Some(i) => i + 1,
            None if window.len() == MAX_LINE || (ended && !window.is_empty()) => window.len(),
            None => break,
        };
        let text = String::from_utf8_lossy(&rest[..len]);
        if let Ok(mut log) = log.lock() {
            let _ = log.line(clock(), stream, &text);
        }
        start += len;
    }
    pending.drain(..start);
}

/// What [`read`] is asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// Keep reading new lines until the container has exited.
    pub follow: bool,
    /// Only the last this many lines (of those at or after `since_ms`).
    pub tail: Option<u32>,
    /// Only lines stamped at or after this time.
    pub since_ms: Option<u64>,
}

/// How long [`read`] waits before looking for new lines again when following.
const POLL: std::time::Duration = std::time::Duration::from_millis(100);
/// Longest record read from a log file: the shim's 16 KiB cut, grown by lossy UTF-8,
/// plus the stamp. A longer one (a file someone else wrote) is cut.
const MAX_RECORD: usize = 3 * 16 * 1024 + 64;

/// Parses one record as [`LogWriter::line`] writes it (`<rfc3339> <stream> <text>`);
/// `None` for anything else.
pub fn parse_record(record: &[u8]) -> Option<shoal_proto::logs::LogLine> {
    use shoal_proto::logs::{LogLine, LogStream, MAX_LINE};
    let record = record.strip_suffix(b"\n").unwrap_or(record);
    let space = record.iter().position(|&b| b == b' ')?;
    let at_ms = shoal_proto::time::parse_rfc3339(std::str::from_utf8(&record[..space]).ok()?)?;
    let rest = &record[space + 1..];
    let (stream, text) = if let Some(t) = rest.strip_prefix(b"stdout ") {
        (LogStream::Stdout, t)
    } else if let Some(t) = rest.strip_prefix(b"stderr ") {
        (LogStream::Stderr, t)
    } else {
        return None;
    };
    let text = shoal_proto::Bytes::try_from(&text[..text.len().min(MAX_LINE)]).ok()?;
    Some(LogLine { stream, at_ms, text })
}

/// The files of the log at `path`, oldest first: `path.N`, ..., `path.1`, `path`.
fn files(path: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> =
        (1..=9).rev().map(|n| PathBuf::from(format!("{}.{n}", path.display()))).filter(|p| p.exists()).collect();
    out.push(path.to_owned());
    out
}

/// Reads whole records from `reader`, calling `each` with every one; a record without
/// its newline yet is left in `partial` for the next call. Returns false when `each` did.
fn records(reader: &mut impl BufRead, partial: &mut Vec<u8>, mut each: impl FnMut(&[u8]) -> bool) -> io::Result<bool> {
    loop {
        let room = (MAX_RECORD - partial.len().min(MAX_RECORD)) as u64;
        let n = io::Read::take(&mut *reader, room.max(1)).read_until(b'\n', partial)?;
        if n == 0 {
            return Ok(true);
        }
        if partial.last() == Some(&b'\n') || partial.len() >= MAX_RECORD {
            let go_on = each(partial);
            partial.clear();
            if !go_on {
                return Ok(false);
            }
        }
    }
}

/// Reads the log at `path` (with its rotated files) for `service logs`, calling `emit`
/// with each line in order; `emit` returns false to stop. When following, it goes on
/// after the end of the file, across rotations, until `exited()` is true and the file is
/// read to its end, or `cancelled()`. Nothing is held beyond one record: when `emit`
/// blocks (a slow reader downstream), so does the reading.
pub fn read(
    path: &Path,
    options: ReadOptions,
    exited: impl Fn() -> bool,
    cancelled: impl Fn() -> bool,
    mut emit: impl FnMut(shoal_proto::logs::LogLine) -> bool,
) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let since = options.since_ms.unwrap_or(0);
    let wanted = |r: &[u8]| parse_record(r).filter(|l| l.at_ms >= since);
    let files = files(path);
    // A tail keeps the last lines of one pass in a ring (at most `tail` lines, and never
    // more than the kept files hold), sent once the current file's end is reached; a
    // count and a second pass would be wrong whenever the log rotates between them.
    let cap = options.tail.map_or(0, |t| t as usize);
    let mut ring = options.tail.map(|_| std::collections::VecDeque::new());
    type Ring = Option<std::collections::VecDeque<shoal_proto::logs::LogLine>>;
    let send =
        |r: &[u8], ring: &mut Ring, emit: &mut dyn FnMut(shoal_proto::logs::LogLine) -> bool| match (wanted(r), ring) {
            (None, _) => true,
            (Some(line), Some(q)) => {
                if cap > 0 {
                    if q.len() == cap {
                        q.pop_front();
                    }
                    q.push_back(line);
                }
                true
            }
            (Some(line), None) => emit(line),
        };
    let (current, rotated) = files.split_last().expect("the current file is always listed");
    for f in rotated {
        let Ok(file) = File::open(f) else { continue };
        if !records(&mut io::BufReader::new(file), &mut Vec::new(), |r| send(r, &mut ring, &mut emit))? {
            return Ok(());
        }
    }
    // A container that is only being created has no log yet.
    let mut file = loop {
        match File::open(current) {
            Ok(f) => break io::BufReader::new(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !options.follow || exited() || cancelled() {
                    return Ok(());
                }
                std::thread::sleep(POLL);
            }
            Err(e) => return Err(e),
        }
    };
    let mut partial = Vec::new();
    loop {
        // Looked at before reading: once the container has exited, the shim has written
        // everything, so what the read below finds is the whole rest.
        let done = options.follow && exited();
        if !records(&mut file, &mut partial, |r| send(r, &mut ring, &mut emit))? {
            return Ok(());
        }
        // The end of what was there: the tail goes out, and lines from now on directly.
        if let Some(q) = ring.take() {
            for line in q {
                if !emit(line) {
                    return Ok(());
                }
            }
        }
        if !options.follow || cancelled() {
            return Ok(());
        }
        // Rotated: what was the current file is fully read (the writer only renames it);
        // it may have moved more than once since, so the files newer than it are read
        // whole, then the new current one from its start.
        let ino = file.get_ref().metadata()?.ino();
        if std::fs::metadata(current).is_ok_and(|m| m.ino() != ino) {
            let numbered = |n: u32| PathBuf::from(format!("{}.{n}", current.display()));
            let ours = (1..=9).find(|&n| std::fs::metadata(numbered(n)).is_ok_and(|m| m.ino() == ino)).unwrap_or(1);
            for n in (1..ours).rev() {
                let Ok(f) = File::open(numbered(n)) else { continue };
                if !records(&mut io::BufReader::new(f), &mut Vec::new(), |r| send(r, &mut ring, &mut emit))? {
                    return Ok(());
                }
            }
            if let Ok(f) = File::open(current) {
                file = io::BufReader::new(f);
                partial.clear();
                continue;
            }
        }
        if done {
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty directory of this test process's own under the system's temp directory.
    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn logs_rotate_and_stay_bounded() {
        let dir = scratch("shoal-logs");
        let path = dir.join("container.log");
        let mut w = LogWriter::open(&path, LogLimits { max_file_bytes: 200, keep: 2 }).unwrap();
        for i in 0..100 {
            w.line(0, "stdout", &format!("line {i}")).unwrap();
        }
        let total: u64 = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
        assert!(total <= 3 * 200, "{total} bytes kept");
        assert!(dir.join("container.log.2").exists() && !dir.join("container.log.3").exists());
        let last = std::fs::read_to_string(&path).unwrap();
        assert!(last.ends_with("stdout line 99\n"), "{last}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pumped_lines_are_stamped_and_cut() {
        let dir = scratch("shoal-pump");
        let path = dir.join("c.log");
        let log = std::sync::Mutex::new(LogWriter::open(&path, LogLimits::default()).unwrap());
        let input = format!("hello\n{}\nbye", "x".repeat(40_000));
        pump(input.as_bytes(), "stderr", &log, || 0);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("1970-01-01T00:00:00.000Z stderr hello\n"));
        assert!(text.lines().all(|l| l.len() < 17 * 1024));
        assert!(text.ends_with("stderr bye\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn both_streams_pumped_in_one_thread_log_what_one_pump_each_logs() {
        let dir = scratch("shoal-pump-both");
        let (one, both) = (dir.join("one.log"), dir.join("both.log"));
        let long = "y".repeat(40_000);
        let out = format!("hello\n{long}\nout{}\nbye", "\nline".repeat(2000));
        let err = format!("oops\n{}", "é".repeat(9_000));
        let log = std::sync::Mutex::new(LogWriter::open(&one, LogLimits { max_file_bytes: 1 << 30, keep: 0 }).unwrap());
        pump(out.as_bytes(), "stdout", &log, || 0);
        pump(err.as_bytes(), "stderr", &log, || 0);

        let log =
            std::sync::Mutex::new(LogWriter::open(&both, LogLimits { max_file_bytes: 1 << 30, keep: 0 }).unwrap());
        let (out_r, out_w) = rustix::pipe::pipe().unwrap();
        let (err_r, err_w) = rustix::pipe::pipe().unwrap();
        // The writers in their own threads: a pipe holds 64 KiB, the input is more.
        let writers = [(out_w, out.clone()), (err_w, err.clone())].map(|(w, text)| {
            std::thread::spawn(move || {
                let mut w = std::fs::File::from(w);
                for piece in text.as_bytes().chunks(777) {
                    w.write_all(piece).unwrap();
                }
            })
        });
        pump_both(out_r, err_r, &log, || 0);
        for w in writers {
            w.join().unwrap();
        }

        let lines = |path: &Path, stream: &str| -> Vec<String> {
            let text = std::fs::read_to_string(path).unwrap();
            text.lines().filter(|l| l.contains(&format!(" {stream} "))).map(str::to_owned).collect()
        };
        for stream in ["stdout", "stderr"] {
            assert_eq!(lines(&both, stream), lines(&one, stream), "{stream}");
        }
        assert_eq!(lines(&both, "stdout").len(), 2 + 3 + 2000 + 1);
        assert!(lines(&both, "stdout").last().unwrap().ends_with("stdout bye"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The shim's one thread: the child's exit is collected once its pidfd turns
    /// readable, its last lines are logged before it returns, and a pipe someone else
    /// keeps open delays the return by the drain time only.
    #[test]
    fn pumping_until_the_exit_logs_everything_and_returns_the_exit() {
        let dir = scratch("shoal-pump-exit");
        let path = dir.join("c.log");
        let log = std::sync::Mutex::new(LogWriter::open(&path, LogLimits::default()).unwrap());
        let (out_r, out_w) = rustix::pipe::pipe().unwrap();
        let (err_r, err_w) = rustix::pipe::pipe().unwrap();
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "echo one; sleep 0.2; echo two >&2; printf three; exit 3"])
            .stdout(std::fs::File::from(out_w))
            .stderr(std::fs::File::from(err_w.try_clone().unwrap()))
            .spawn()
            .unwrap();
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap();
        let mut calls = 0;
        let mut on_exit = || {
            calls += 1;
            child.wait().unwrap().code()
        };
        let drain = std::time::Duration::from_millis(300);
        let exit = ExitWatch { pidfd: std::os::fd::AsFd::as_fd(&pidfd), on_exit: &mut on_exit, drain };
        let t = std::time::Instant::now();
        // `err_w` stays open here: stderr never ends, the drain time bounds the wait.
        let code = pump_until_exit(out_r, err_r, exit, &log, || 0);
        assert_eq!(code, Some(Some(3)));
        assert_eq!(calls, 1);
        assert!(t.elapsed() >= drain, "waited for the pipe held open");
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.lines().map(|l| l.split_once(' ').unwrap().1).collect::<Vec<_>>(),
            ["stdout one", "stderr two", "stdout three"]
        );
        drop(err_w);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn collect(path: &Path, options: ReadOptions) -> Vec<String> {
        let mut out = Vec::new();
        read(
            path,
            options,
            || true,
            || false,
            |l| {
                out.push(String::from_utf8_lossy(l.text.as_slice()).into_owned());
                true
            },
        )
        .unwrap();
        out
    }

    #[test]
    fn reading_back_spans_rotated_files_with_tail_and_since() {
        let dir = scratch("shoal-read");
        let path = dir.join("container.log");
        let mut w = LogWriter::open(&path, LogLimits { max_file_bytes: 300, keep: 2 }).unwrap();
        for i in 0..12u64 {
            w.line(1_000 * i, if i % 2 == 0 { "stdout" } else { "stderr" }, &format!("line {i}")).unwrap();
        }
        assert!(dir.join("container.log.1").exists(), "rotated");
        let all = collect(&path, ReadOptions::default());
        let first = all.first().unwrap().clone();
        assert_eq!(all.last().unwrap(), "line 11");
        let n: u64 = first.trim_start_matches("line ").parse().unwrap();
        assert_eq!(all.len() as u64, 12 - n, "in order and complete from the oldest kept");
        assert_eq!(
            collect(&path, ReadOptions { tail: Some(3), ..Default::default() }),
            ["line 9", "line 10", "line 11"]
        );
        assert_eq!(collect(&path, ReadOptions { tail: Some(0), ..Default::default() }), Vec::<String>::new());
        let since = ReadOptions { since_ms: Some(10_000), ..Default::default() };
        assert_eq!(collect(&path, since), ["line 10", "line 11"]);
        // Lines written between the count and the read do not lengthen a tail.
        let mut n = 0;
        let mut writer = LogWriter::open(&path, LogLimits { max_file_bytes: 300, keep: 2 }).unwrap();
        read(
            &path,
            ReadOptions { tail: Some(2), ..Default::default() },
            || true,
            || false,
            |_| {
                writer.line(20_000, "stdout", "late").unwrap();
                n += 1;
                true
            },
        )
        .unwrap();
        assert_eq!(n, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hostile_records_are_skipped_or_cut() {
        assert!(parse_record(b"junk\n").is_none());
        assert!(parse_record(b"2026-11-18T11:06:40.123Z stdin x\n").is_none());
        assert!(parse_record(b"notatime stdout x\n").is_none());
        let long = format!("1970-01-01T00:00:01.000Z stderr {}\n", "y".repeat(100_000));
        let line = parse_record(long.as_bytes()).unwrap();
        assert_eq!(line.text.as_slice().len(), shoal_proto::logs::MAX_LINE);
        assert_eq!((line.at_ms, line.stream), (1_000, shoal_proto::logs::LogStream::Stderr));
    }

    #[test]
    fn following_goes_across_rotation_until_the_exit() {
        let dir = scratch("shoal-follow");
        let path = dir.join("container.log");
        let exit = dir.join("exit");
        let writer = {
            let (path, exit) = (path.clone(), exit.clone());
            std::thread::spawn(move || {
                let mut w = LogWriter::open(&path, LogLimits { max_file_bytes: 400, keep: 2 }).unwrap();
                for i in 0..40 {
                    w.line(i, "stdout", &format!("line {i}")).unwrap();
                    if i % 5 == 0 {
                        std::thread::sleep(std::time::Duration::from_millis(30));
                    }
                }
                std::fs::write(exit, "0 0\n").unwrap();
            })
        };
        let mut got = Vec::new();
        let follow = ReadOptions { follow: true, ..Default::default() };
        read(
            &path,
            follow,
            || exit.exists(),
            || false,
            |l| {
                got.push(String::from_utf8_lossy(l.text.as_slice()).into_owned());
                true
            },
        )
        .unwrap();
        writer.join().unwrap();
        // Every line written after the reader started is there, in order, once.
        let last: Vec<String> = (20..40).map(|i| format!("line {i}")).collect();
        assert!(got.ends_with(&last), "{got:?}");
        let mut sorted = got.clone();
        sorted.dedup();
        assert_eq!(sorted, got);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
