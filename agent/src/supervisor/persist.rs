//! What the supervisor remembers across restarts: `<data-dir>/agent/tasks.json`, the
//! node's task set with each task's last status and whether the agent stopped its
//! container (so that its exit after a restart is a Shutdown, not a failure).
//!
//! The file is replaced whole and durably ([`shoal_link::files::write_private`]), and only
//! when its bytes change. The supervisor writes it through a [`Writer`]: the fsync runs on
//! a blocking thread, never on the agent's one runtime thread, and sets that arrive
//! while one is being written are coalesced into the newest. A file that can't be read or parsed stops the agent with a
//! message that says how to go on; it is never silently replaced. Not here: what the set
//! means (that is [`super::core::book`]) or when to write (the shell asks the book).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shoal_proto::dispatch::Assignment;
use shoal_proto::TaskStatus;

/// What `tasks.json` holds.
#[derive(Serialize, Deserialize)]
struct Saved<T> {
    tasks: Vec<T>,
}

/// One remembered task.
#[derive(Debug, Deserialize)]
pub struct SavedTask {
    /// What the manager assigned.
    pub assignment: Assignment,
    /// Its last status.
    pub status: TaskStatus,
    /// The agent stopped its container on the manager's request.
    pub stop_requested: bool,
}

/// The same record, borrowed, for writing.
#[derive(Serialize)]
struct SavedTaskRef<'a> {
    assignment: &'a Assignment,
    status: &'a TaskStatus,
    stop_requested: bool,
}

/// Why `tasks.json` can't be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file exists but can't be read.
    #[error("task state in {} is unusable: {source}; remove it to start with no tasks (their containers are then removed once the manager sends this node's tasks)", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a task set.
    #[error("task state in {} is unusable: {source}; remove it to start with no tasks (their containers are then removed once the manager sends this node's tasks)", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: serde_json::Error,
    },
    /// Writing the file failed (the disk may be full); the set is kept in memory and
    /// written again at the next change.
    #[error("cannot save the task set in {}: {source}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// `tasks.json` and the bytes last written to it.
#[derive(Debug)]
pub struct TaskFile {
    path: PathBuf,
    last_saved: Vec<u8>,
}

impl TaskFile {
    /// The task file under the agent's data directory.
    pub fn new(data_dir: &Path) -> Self {
        Self { path: crate::identity::agent_dir(data_dir).join("tasks.json"), last_saved: Vec::new() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the remembered tasks; none when there is no file yet.
    pub fn load(&mut self) -> Result<Vec<SavedTask>, StateError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StateError::Read { path: self.path.clone(), source }),
        };
        let saved: Saved<SavedTask> =
            serde_json::from_slice(&bytes).map_err(|source| StateError::Parse { path: self.path.clone(), source })?;
        self.last_saved = bytes;
        Ok(saved.tasks)
    }

    /// The bytes to write for `tasks`, or `None` when they are the ones last written
    /// or handed to the [`Writer`] (call [`TaskFile::unsaved`] if that write failed).
    pub fn encode<'a>(
        &mut self,
        tasks: impl IntoIterator<Item = (&'a Assignment, &'a TaskStatus, bool)>,
    ) -> Option<Vec<u8>> {
        let tasks = tasks
            .into_iter()
            .map(|(assignment, status, stop_requested)| SavedTaskRef { assignment, status, stop_requested })
            .collect();
        // Serializing plain data into memory does not fail.
        let bytes = serde_json::to_vec(&Saved { tasks }).ok()?;
        if bytes == self.last_saved {
            return None;
        }
        self.last_saved.clone_from(&bytes);
        Some(bytes)
    }

    /// A write of what [`TaskFile::encode`] gave failed: the next set is written even if
    /// it is the same.
    pub fn unsaved(&mut self) {
        self.last_saved.clear();
    }

    /// Writes `tasks` unless the file already holds exactly them, on this thread (the
    /// supervisor uses a [`Writer`]).
    pub fn save<'a>(
        &mut self,
        tasks: impl IntoIterator<Item = (&'a Assignment, &'a TaskStatus, bool)>,
    ) -> Result<(), StateError> {
        let Some(bytes) = self.encode(tasks) else { return Ok(()) };
        write_file(&self.path, &bytes).inspect_err(|_| self.unsaved())
    }
}

/// Writes `bytes` as the task file at `path`, whole and durably. Blocks.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let write = || {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        shoal_link::files::write_private(path, bytes)
    };
    write().map_err(|source| StateError::Write { path: path.to_owned(), source })
}

/// Writes the task file off the runtime thread: [`Writer::submit`] hands it a numbered
/// set and returns at once; a task of its own writes the newest set on a blocking
/// thread (sets submitted meanwhile are skipped: each is the whole file), then says up to
/// which number the file is durable ([`Writer::durable`]) and sends failures back.
pub struct Writer {
    latest: tokio::sync::watch::Sender<(u64, Vec<u8>)>,
    durable: tokio::sync::watch::Receiver<u64>,
    submitted: u64,
}

/// A write that failed, for the supervisor to note (a full disk) and retry.
pub type WriteFailed = tokio::sync::mpsc::Receiver<StateError>;

impl Writer {
    /// Starts the writer of the task file at `path`. Needs a tokio runtime.
    pub fn start(path: PathBuf) -> (Self, WriteFailed) {
        let (latest, mut next) = tokio::sync::watch::channel((0u64, Vec::new()));
        let (durable_tx, durable) = tokio::sync::watch::channel(0u64);
        let (failed_tx, failed) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            // Ends when the supervisor drops the writer, after the last set is written.
            while next.changed().await.is_ok() {
                let (generation, bytes) = next.borrow_and_update().clone();
                let path = path.clone();
                let written = tokio::task::spawn_blocking(move || write_file(&path, &bytes)).await;
                match written {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        let _ = failed_tx.try_send(e);
                    }
                    Err(e) => tracing::warn!(error = %e, "the task set's writer failed"),
                }
                // Failed or not, this set is done with: whoever waits for it goes on, as
                // they did when the write was inline.
                durable_tx.send_replace(generation);
            }
        });
        (Self { latest, durable, submitted: 0 }, failed)
    }

    /// Hands over a whole set to write; returns its number.
    pub fn submit(&mut self, bytes: Vec<u8>) -> u64 {
        self.submitted += 1;
        self.latest.send_replace((self.submitted, bytes));
        self.submitted
    }

    /// The number of the last set submitted (0: none yet).
    pub fn submitted(&self) -> u64 {
        self.submitted
    }

    /// Follows the number of the newest set written (or given up on).
    pub fn durable(&self) -> tokio::sync::watch::Receiver<u64> {
        self.durable.clone()
    }

    /// Waits until set number `generation` (and so every earlier one) is written.
    pub async fn written(mut durable: tokio::sync::watch::Receiver<u64>, generation: u64) {
        let _ = durable.wait_for(|d| *d >= generation).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{BoundedVec, TaskId, TaskState};

    fn assignment() -> Assignment {
        let spec = shoal_proto::ServiceSpec::new(
            shoal_proto::text("web").unwrap(),
            shoal_proto::text("demo/app:1.0").unwrap(),
        )
        .task_spec();
        Assignment {
            task_id: TaskId::from_random([7; 16]),
            service_name: shoal_proto::text("web").unwrap(),
            slot: 1,
            spec,
            desired_state: TaskState::Running,
            hosts: BoundedVec::new(),
            networks: BoundedVec::new(),
            service_id: None,
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shoal-persist-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn tasks_survive_a_restart_in_the_same_format() {
        let dir = scratch("roundtrip");
        let (a, status) = (assignment(), TaskStatus::new(TaskState::Running, 5, "started"));
        let mut file = TaskFile::new(&dir);
        assert!(file.load().unwrap().is_empty(), "no file: no tasks");
        file.save([(&a, &status, true)]).unwrap();
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(text.starts_with(r#"{"tasks":[{"assignment":{"#) && text.ends_with(r#""stop_requested":true}]}"#));
        let loaded = TaskFile::new(&dir).load().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!((&loaded[0].assignment, &loaded[0].status, loaded[0].stop_requested), (&a, &status, true));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unchanged_set_is_not_written_again() {
        let dir = scratch("unchanged");
        let (a, status) = (assignment(), TaskStatus::new(TaskState::Running, 5, "started"));
        let mut file = TaskFile::new(&dir);
        file.save([(&a, &status, false)]).unwrap();
        std::fs::remove_file(file.path()).unwrap();
        file.save([(&a, &status, false)]).unwrap();
        assert!(!file.path().exists(), "same bytes: no write");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_damaged_file_is_refused_with_what_to_do() {
        let dir = scratch("damaged");
        let mut file = TaskFile::new(&dir);
        std::fs::create_dir_all(file.path().parent().unwrap()).unwrap();
        std::fs::write(file.path(), b"{\"tasks\": [").unwrap();
        let err = file.load().unwrap_err().to_string();
        assert!(err.starts_with("task state in ") && err.contains("remove it to start with no tasks"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The writer writes off the caller's thread, the newest set wins, each number is
    /// durable once `written` returns, and a failed write comes back as an error (the
    /// file is never left half made).
    #[test]
    fn the_writer_coalesces_reports_durable_sets_and_failures() {
        let dir = scratch("writer");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut file = TaskFile::new(&dir);
            let (mut writer, mut failed) = Writer::start(file.path().to_owned());
            let a = assignment();
            let states = [TaskState::Preparing, TaskState::Starting, TaskState::Running];
            let mut last = 0;
            for (n, state) in states.into_iter().enumerate() {
                let status = TaskStatus::new(state, n as u64, "step");
                let bytes = file.encode([(&a, &status, false)]).expect("a new set");
                last = writer.submit(bytes);
            }
            let status = TaskStatus::new(TaskState::Running, 2, "step");
            assert!(file.encode([(&a, &status, false)]).is_none(), "the same set is not handed over twice");
            assert_eq!(last, 3);
            Writer::written(writer.durable(), last).await;
            let loaded = TaskFile::new(&dir).load().unwrap();
            assert_eq!(loaded[0].status.state, TaskState::Running, "the newest set is on disk");
            // A file where the directory should be: the write fails and says so.
            std::fs::remove_dir_all(&dir).unwrap();
            std::fs::write(&dir, b"not a directory").unwrap();
            file.unsaved();
            let bytes = file.encode([(&a, &status, true)]).expect("unsaved: written again");
            let n = writer.submit(bytes);
            Writer::written(writer.durable(), n).await;
            let err = failed.recv().await.expect("the failure comes back").to_string();
            assert!(err.starts_with("cannot save the task set in "), "{err}");
        });
        let _ = std::fs::remove_file(&dir);
    }
}
