//! Which tasks `shoal service logs TARGET` reads, decided from the tasks the manager
//! holds: a service name or ID (all its tasks that got as far as a container), a task
//! name (`web.2`: the newest task of that slot), a task ID, a container name
//! (`web.2.<task id>`) or a unique task ID prefix. Pure: the shell passes the state in,
//! and calls [`tasks`] again while following to pick up tasks that started since.

use shoal_proto::{ErrorKind, ErrorReply, ServiceId, Task, TaskId, TaskState};

use crate::lookup::{self, SlotPick};

/// What the logs are asked of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogsTarget {
    /// Every task of a service.
    Service(ServiceId),
    /// One task.
    Task(TaskId),
}

/// Resolves `query` among `tasks`, whose services are named by `services` (ID, name).
pub fn resolve(services: &[(ServiceId, String)], tasks: &[Task], query: &str) -> Result<LogsTarget, ErrorReply> {
    if let Some(sid) = lookup::service(services, query) {
        return Ok(LogsTarget::Service(sid.clone()));
    }
    match lookup::task(services, tasks, query, SlotPick::Newest)? {
        Some(t) => Ok(LogsTarget::Task(t.id.clone())),
        None => Err(not_found(query)),
    }
}

/// The tasks of `target` that have (or had) a container on a node, by slot and age:
/// those that reached `Starting`. Rejected and orphaned ones never had one that a board
/// still holds.
pub fn tasks<'a>(target: &LogsTarget, tasks: &'a [Task]) -> Vec<&'a Task> {
    let mut out: Vec<&Task> = tasks
        .iter()
        .filter(|t| match target {
            LogsTarget::Service(sid) => t.service_id == *sid,
            LogsTarget::Task(id) => t.id == *id,
        })
        .filter(|t| t.node_id.is_some())
        .filter(|t| {
            t.status.state >= TaskState::Starting
                && !matches!(t.status.state, TaskState::Rejected | TaskState::Orphaned)
        })
        .collect();
    out.sort_by_key(|t| (t.slot, t.created_at_ms));
    out
}

fn not_found(query: &str) -> ErrorReply {
    ErrorReply::new(
        ErrorKind::NotFound,
        &format!("no such service or task: {query} (see `shoal service ls` and `shoal service ps`)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lookup::testing::{services, task as web_task};

    fn task(slot: u32, state: TaskState, created: u64) -> Task {
        web_task(slot, 1, state, TaskState::Running, created)
    }

    #[test]
    fn a_service_means_every_task_that_had_a_container() {
        use TaskState::*;
        let all = vec![task(2, Running, 3), task(1, Failed, 1), task(1, Running, 2), task(3, Pending, 4)];
        let s = services();
        let target = resolve(&s, &all, "web").unwrap();
        let slots: Vec<(u32, u64)> = tasks(&target, &all).iter().map(|t| (t.slot, t.created_at_ms)).collect();
        assert_eq!(slots, [(1, 1), (1, 2), (2, 3)], "by slot, oldest first; the pending one has no container");
    }

    #[test]
    fn a_task_by_name_id_container_or_prefix() {
        use TaskState::*;
        let (old, new, two) = (task(1, Failed, 1), task(1, Running, 2), task(2, Running, 3));
        let all = vec![old.clone(), new.clone(), two.clone()];
        let s = services();
        assert_eq!(resolve(&s, &all, "web.1").unwrap(), LogsTarget::Task(new.id.clone()), "the newest of the slot");
        assert_eq!(resolve(&s, &all, old.id.as_str()).unwrap(), LogsTarget::Task(old.id.clone()));
        let container = format!("web.2.{}", two.id);
        assert_eq!(resolve(&s, &all, &container).unwrap(), LogsTarget::Task(two.id.clone()));
        assert_eq!(resolve(&s, &all, "web.9").unwrap_err().kind, ErrorKind::NotFound);
        assert_eq!(resolve(&s, &all, "nope").unwrap_err().kind, ErrorKind::NotFound);
        assert_eq!(resolve(&s, &all, "we").unwrap_err().kind, ErrorKind::NotFound, "too short a prefix");
    }
}
