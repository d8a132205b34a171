//! Which tasks `shoal service logs TARGET` reads, decided from the tasks the manager
//! holds: a service name or ID (all its tasks that got as far as a container), a task
//! name (`web.2`: the newest task of that slot), a task ID, a container name
//! (`web.2.<task id>`) or a unique task ID prefix. Pure: the shell passes the state in,
//! and calls [`tasks`] again while following to pick up tasks that started since.

use shoal_proto::{ErrorKind, ErrorReply, ServiceId, Task, TaskId, TaskState};

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
    let service_of = |q: &str| services.iter().find(|(id, name)| name == q || id.as_str() == q).map(|(id, _)| id);
    if let Some(sid) = service_of(query) {
        return Ok(LogsTarget::Service(sid.clone()));
    }
    if let Some(t) = tasks.iter().find(|t| t.id.as_str() == query) {
        return Ok(LogsTarget::Task(t.id.clone()));
    }
    // A container name: service.slot.taskid.
    if let Some(t) = query.rsplit_once('.').and_then(|(_, id)| tasks.iter().find(|t| t.id.as_str() == id)) {
        return Ok(LogsTarget::Task(t.id.clone()));
    }
    if let Some((svc, slot)) = query.rsplit_once('.').and_then(|(s, n)| Some((s, n.parse::<u32>().ok()?))) {
        let sid = service_of(svc).ok_or_else(|| not_found(query))?;
        let newest = tasks.iter().filter(|t| t.service_id == *sid && t.slot == slot).max_by_key(|t| t.created_at_ms);
        return newest.map(|t| LogsTarget::Task(t.id.clone())).ok_or_else(|| not_found(query));
    }
    match crate::exec::by_id_prefix(tasks, query)? {
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
    use shoal_proto::{NodeId, Service, ServiceSpec, TaskStatus};

    fn task(n: u32, state: TaskState, created: u64) -> Task {
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
            node_id: Some(NodeId::from_random([1; 16])),
            spec: svc.spec.task_spec(),
            spec_version: 1,
            desired_state: TaskState::Running,
            status: TaskStatus::new(state, 0, ""),
            created_at_ms: created,
            networks: Default::default(),
        }
    }

    #[test]
    fn a_service_means_every_task_that_had_a_container() {
        use TaskState::*;
        let all = vec![task(2, Running, 3), task(1, Failed, 1), task(1, Running, 2), task(3, Pending, 4)];
        let s = vec![(ServiceId::from_random([1; 16]), "web".to_owned())];
        let target = resolve(&s, &all, "web").unwrap();
        let slots: Vec<(u32, u64)> = tasks(&target, &all).iter().map(|t| (t.slot, t.created_at_ms)).collect();
        assert_eq!(slots, [(1, 1), (1, 2), (2, 3)], "by slot, oldest first; the pending one has no container");
    }

    #[test]
    fn a_task_by_name_id_container_or_prefix() {
        use TaskState::*;
        let (old, new, two) = (task(1, Failed, 1), task(1, Running, 2), task(2, Running, 3));
        let all = vec![old.clone(), new.clone(), two.clone()];
        let s = vec![(ServiceId::from_random([1; 16]), "web".to_owned())];
        assert_eq!(resolve(&s, &all, "web.1").unwrap(), LogsTarget::Task(new.id.clone()), "the newest of the slot");
        assert_eq!(resolve(&s, &all, old.id.as_str()).unwrap(), LogsTarget::Task(old.id.clone()));
        let container = format!("web.2.{}", two.id);
        assert_eq!(resolve(&s, &all, &container).unwrap(), LogsTarget::Task(two.id.clone()));
        assert_eq!(resolve(&s, &all, "web.9").unwrap_err().kind, ErrorKind::NotFound);
        assert_eq!(resolve(&s, &all, "nope").unwrap_err().kind, ErrorKind::NotFound);
        assert_eq!(resolve(&s, &all, "we").unwrap_err().kind, ErrorKind::NotFound, "too short a prefix");
    }
}
