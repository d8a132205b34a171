//! Which container `shoal exec TARGET` means, decided from the tasks the manager holds:
//! an exact task ID, a container name (`web.2.<task id>`), a task name (`web.2`), a
//! service name or ID (its running task of the lowest slot), or a unique task ID prefix.
//! Only a running task with a node qualifies. Pure: the shell passes the state in.

use shoal_proto::{ErrorKind, ErrorReply, NodeId, ServiceId, Task, TaskState};

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

/// Shortest task ID prefix accepted, so a typo does not pick a random task.
const MIN_PREFIX: usize = 3;

/// Resolves `query` among `tasks`, whose services are named by `services` (ID, name).
pub fn resolve(services: &[(ServiceId, String)], tasks: &[Task], query: &str) -> Result<ExecTarget, ErrorReply> {
    let name_of = |t: &Task| services.iter().find(|(id, _)| *id == t.service_id).map(|(_, n)| n.clone());
    let service_of = |q: &str| services.iter().find(|(id, name)| name == q || id.as_str() == q).map(|(id, _)| id);
    let running = |t: &&Task| t.status.state == TaskState::Running && t.is_desired_running() && t.node_id.is_some();

    let chosen: Option<&Task> = if let Some(t) = tasks.iter().find(|t| t.id.as_str() == query) {
        Some(t)
    } else if let Some(t) = query.rsplit_once('.').and_then(|(_, id)| tasks.iter().find(|t| t.id.as_str() == id)) {
        // A container name: service.slot.taskid.
        Some(t)
    } else if let Some((svc, slot)) = query.rsplit_once('.').and_then(|(s, n)| Some((s, n.parse::<u32>().ok()?))) {
        let Some(sid) = service_of(svc) else {
            return Err(not_found(query));
        };
        let mut of_slot: Vec<&Task> = tasks.iter().filter(|t| t.service_id == *sid && t.slot == slot).collect();
        of_slot.sort_by_key(|t| std::cmp::Reverse(t.created_at_ms));
        of_slot.iter().copied().find(running).or(of_slot.first().copied())
    } else if let Some(sid) = service_of(query) {
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
        by_id_prefix(tasks, query)?
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

/// The one task whose ID starts with `query` (at least [`MIN_PREFIX`] characters);
/// `None` when none does, an `Ambiguous` refusal when several do. `shoal exec` and
/// `shoal service logs` both take a prefix this way.
pub(crate) fn by_id_prefix<'a>(tasks: &'a [Task], query: &str) -> Result<Option<&'a Task>, ErrorReply> {
    if query.len() < MIN_PREFIX {
        return Ok(None);
    }
    let hits: Vec<&Task> = tasks.iter().filter(|t| t.id.as_str().starts_with(query)).collect();
    match hits.as_slice() {
        [one] => Ok(Some(*one)),
        [] => Ok(None),
        _ => Err(ErrorReply::new(
            ErrorKind::Ambiguous,
            &format!("task ID prefix {query} matches {} tasks: give more of the ID", hits.len()),
        )),
    }
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
    use shoal_proto::{Service, ServiceSpec, TaskId, TaskStatus};

    fn task(n: u32, node: u8, state: TaskState, desired: TaskState, created: u64) -> Task {
        let spec = ServiceSpec::new(shoal_proto::text("web").unwrap(), shoal_proto::text("demo/app:1.0").unwrap());
        let svc = Service {
            id: ServiceId::from_random([1; 16]),
            spec,
            spec_version: 1,
            created_at_ms: 0,
            virtual_ips: Default::default(),
        };
        let mut seed = [7u8; 16];
        seed[..4].copy_from_slice(&n.to_le_bytes());
        seed[4] = created as u8;
        Task {
            id: TaskId::from_random(seed),
            service_id: svc.id.clone(),
            slot: n,
            node_id: Some(NodeId::from_random([node; 16])),
            spec: svc.spec.task_spec(),
            spec_version: 1,
            desired_state: desired,
            status: TaskStatus::new(state, 0, ""),
            created_at_ms: created,
            networks: Default::default(),
        }
    }

    fn services() -> Vec<(ServiceId, String)> {
        vec![(ServiceId::from_random([1; 16]), "web".into())]
    }

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
