//! Which task a user means by a task ID, a container name (`web.2.<task id>`), a task
//! name (`web.2`) or a unique task ID prefix: the one lookup `shoal exec` and `shoal
//! service logs` share. Each caller resolves a service name itself first (exec picks one
//! running task of it, logs reads all of them) and says which task of a slot it wants.

use shoal_proto::{ErrorKind, ErrorReply, ServiceId, Task};

/// Shortest task ID prefix accepted, so a typo does not pick a random task.
const MIN_PREFIX: usize = 3;

/// Which of a slot's tasks `web.2` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotPick {
    /// The newest task of the slot (logs: what ran there last).
    Newest,
    /// The newest running one, else the newest (exec: a shell goes where a container runs).
    NewestRunning,
}

/// The task `query` names among `tasks` (their services named by `services`, ID and
/// name): `Ok(None)` when it names none, an `Ambiguous` refusal when a prefix matches
/// several.
pub(crate) fn task<'a>(
    services: &[(ServiceId, String)],
    tasks: &'a [Task],
    query: &str,
    pick: SlotPick,
) -> Result<Option<&'a Task>, ErrorReply> {
    if let Some(t) = tasks.iter().find(|t| t.id.as_str() == query) {
        return Ok(Some(t));
    }
    // A container name: service.slot.taskid.
    if let Some(t) = query.rsplit_once('.').and_then(|(_, id)| tasks.iter().find(|t| t.id.as_str() == id)) {
        return Ok(Some(t));
    }
    if let Some((svc, slot)) = query.rsplit_once('.').and_then(|(s, n)| Some((s, n.parse::<u32>().ok()?))) {
        let Some(sid) = service(services, svc) else { return Ok(None) };
        let mut of_slot: Vec<&Task> = tasks.iter().filter(|t| t.service_id == *sid && t.slot == slot).collect();
        of_slot.sort_by_key(|t| std::cmp::Reverse(t.created_at_ms));
        let running = |t: &&&Task| t.status.state == shoal_proto::TaskState::Running && t.is_desired_running();
        return Ok(match pick {
            SlotPick::Newest => of_slot.first().copied(),
            SlotPick::NewestRunning => of_slot.iter().find(running).or(of_slot.first()).copied(),
        });
    }
    by_id_prefix(tasks, query)
}

/// The service named or identified by `query`.
pub(crate) fn service<'a>(services: &'a [(ServiceId, String)], query: &str) -> Option<&'a ServiceId> {
    services.iter().find(|(id, name)| name == query || id.as_str() == query).map(|(id, _)| id)
}

/// The one task whose ID starts with `query` (at least [`MIN_PREFIX`] characters);
/// `None` when none does, an `Ambiguous` refusal when several do.
fn by_id_prefix<'a>(tasks: &'a [Task], query: &str) -> Result<Option<&'a Task>, ErrorReply> {
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

/// Tasks of one service `web` for the tests of the modules that use this lookup.
#[cfg(test)]
pub(crate) mod testing {
    use shoal_proto::{NodeId, ServiceId, ServiceSpec, Task, TaskId, TaskState, TaskStatus};

    /// `web`'s ID and name.
    pub(crate) fn services() -> Vec<(ServiceId, String)> {
        vec![(ServiceId::from_random([1; 16]), "web".into())]
    }

    /// A task of `web` in `slot` on node `node`, created at `created` (which also seeds
    /// its ID, with the slot).
    pub(crate) fn task(slot: u32, node: u8, state: TaskState, desired: TaskState, created: u64) -> Task {
        let spec = ServiceSpec::new(shoal_proto::text("web").unwrap(), shoal_proto::text("demo/app:1.0").unwrap());
        let mut seed = [7u8; 16];
        seed[..4].copy_from_slice(&slot.to_le_bytes());
        seed[4] = created as u8;
        Task {
            id: TaskId::from_random(seed),
            service_id: services()[0].0.clone(),
            slot,
            node_id: Some(NodeId::from_random([node; 16])),
            spec: spec.task_spec(),
            spec_version: 1,
            desired_state: desired,
            status: TaskStatus::new(state, 0, ""),
            created_at_ms: created,
            networks: Default::default(),
        }
    }
}
