//! Which container `shoal exec TARGET` means, decided from the tasks the manager holds:
//! an exact task ID, a container name (`web.2.<task id>`), a task name (`web.2`), a
//! service name or ID (its running task of the lowest slot), or a unique task ID prefix.
//! Only a running task with a node qualifies. Pure: the shell passes the state in.

use shoal_proto::{ErrorKind, ErrorReply, NodeId, ServiceId, Task, TaskState};

use crate::lookup::{self, SlotPick};

/// The task an exec goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecTarget {
    /// The task.
    pub task: Task,
    /// Its service's name.
    pub service: String,
    /// Its node.
    pub node: NodeId,
}

/// Resolves `query` among `tasks`, whose services are named by `services` (ID, name).
pub fn resolve(services: &[(ServiceId, String)], tasks: &[Task], query: &str) -> Result<ExecTarget, ErrorReply> {
    let name_of = |t: &Task| services.iter().find(|(id, _)| *id == t.service_id).map(|(_, n)| n.clone());
    let running = |t: &&Task| t.status.state == TaskState::Running && t.is_desired_running() && t.node_id.is_some();

    let chosen: Option<&Task> = if let Some(sid) = lookup::service(services, query) {
        let mut own: Vec<&Task> = tasks.iter().filter(|t| t.service_id == *sid).collect();
        own.sort_by_key(|t| (t.slot, std::cmp::Reverse(t.created_at_ms)));
        match own.iter().copied().find(running) {
            Some(t) => Some(t),
            None => {
                return Err(ErrorReply::new(
                    ErrorKind::Conflict,
                    &format!("service {query} has no running task: see `shoal service ps {query}`"),
                ))
            }
        }
    } else {
        lookup::task(services, tasks, query, SlotPick::NewestRunning)?
    };
    let Some(task) = chosen else { return Err(not_found(query)) };
    if !running(&task) {
        return Err(ErrorReply::new(
            ErrorKind::Conflict,
            &format!(
                "task {} is not running (it is {}): exec needs a running task, see `shoal service ps`",
                task.id, task.status.state
            ),
        ));
    }
    let service = name_of(task).unwrap_or_default();
    let node = task.node_id.clone().unwrap_or_else(|| unreachable!("running tasks have a node"));
    Ok(ExecTarget { task: task.clone(), service, node })
}

fn not_found(query: &str) -> ErrorReply {
    ErrorReply::new(
        ErrorKind::NotFound,
        &format!("no such service, task or container: {query} (see `shoal service ls` and `shoal service ps`)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lookup::testing::{services, task};

    #[test]
    fn every_way_of_naming_a_task() {
        use TaskState::*;
        let old = task(1, 1, Failed, Shutdown, 1);
        let one = task(1, 2, Running, Running, 2);
        let two = task(2, 3, Running, Running, 3);
        let tasks = vec![old.clone(), one.clone(), two.clone()];
        let s = services();
        assert_eq!(resolve(&s, &tasks, "web").unwrap().task.id, one.id);
        assert_eq!(resolve(&s, &tasks, "web.2").unwrap().task.id, two.id);
        assert_eq!(resolve(&s, &tasks, "web.1").unwrap().task.id, one.id, "the running one of the slot");
        assert_eq!(resolve(&s, &tasks, two.id.as_str()).unwrap().task.id, two.id);
        let container = format!("web.2.{}", two.id);
        assert_eq!(resolve(&s, &tasks, &container).unwrap().task.id, two.id);
        assert_eq!(resolve(&s, &tasks, "web").unwrap().service, "web");
    }

    #[test]
    fn what_cannot_be_exec_d_into_says_why() {
        use TaskState::*;
        let old = task(1, 1, Failed, Shutdown, 1);
        let tasks = vec![old.clone(), task(2, 1, Running, Running, 2)];
        let s = services();
        assert_eq!(resolve(&s, &tasks, "nosuch").unwrap_err().kind, ErrorKind::NotFound);
        assert_eq!(resolve(&s, &tasks, "web.9").unwrap_err().kind, ErrorKind::NotFound);
        let e = resolve(&s, &tasks, old.id.as_str()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict);
        assert!(e.message.contains("not running"), "{}", e.message);
        let stopped = vec![old];
        assert!(resolve(&s, &stopped, "web").unwrap_err().message.contains("no running task"));
        assert_eq!(resolve(&s, &stopped, "we").unwrap_err().kind, ErrorKind::NotFound, "too short a prefix");
    }
}
