//! What the supervisor remembers across restarts: `<data-dir>/agent/tasks.json`, the
//! node's task set with each task's last status and whether the agent stopped its
//! container (so that its exit after a restart is a Shutdown, not a failure).
//!
//! The file is replaced whole and durably ([`shoal_link::files::write_private`]), and only
//! when its bytes change. A file that can't be read or parsed stops the agent with a
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

    /// Writes `tasks` unless the file already holds exactly them.
    pub fn save<'a>(
        &mut self,
        tasks: impl IntoIterator<Item = (&'a Assignment, &'a TaskStatus, bool)>,
    ) -> Result<(), StateError> {
        let tasks = tasks
            .into_iter()
            .map(|(assignment, status, stop_requested)| SavedTaskRef { assignment, status, stop_requested })
            .collect();
        // Serializing plain data into memory does not fail.
        let Ok(bytes) = serde_json::to_vec(&Saved { tasks }) else { return Ok(()) };
        if bytes == self.last_saved {
            return Ok(());
        }
        let write = || {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            shoal_link::files::write_private(&self.path, &bytes)
        };
        match write() {
            Ok(()) => {
                self.last_saved = bytes;
                Ok(())
            }
            Err(source) => Err(StateError::Write { path: self.path.clone(), source }),
        }
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
}
