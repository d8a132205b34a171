//! Container logs: stdout and stderr lines with a timestamp and the stream name, in
//! files that rotate at a size bound, so a chatty container can't fill an SD card.

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
/// 16 KiB so one line can't hold the memory of a board.
pub fn pump(source: impl io::Read, stream: &str, log: &std::sync::Mutex<LogWriter>, clock: impl Fn() -> u64) {
    let mut reader = io::BufReader::new(source);
    let mut buf = Vec::with_capacity(256);
    loop {
        buf.clear();
        match io::Read::take(&mut reader, 16 * 1024).read_until(b'\n', &mut buf) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_rotate_and_stay_bounded() {
        let dir = std::env::temp_dir().join(format!("shoal-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
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
        let dir = std::env::temp_dir().join(format!("shoal-pump-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
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
}
