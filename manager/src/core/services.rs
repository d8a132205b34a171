//! Services as the operator changes them: the stored record (current spec, the spec
//! before the last change for `--rollback`, update progress), finding a service by
//! name or ID, and the checks and bookkeeping of create, update and rollback, plus the
//! views `service ls` and `service ps` show.
//!
//! No I/O and no clock: the shell passes the time and the image records in, and stores
//! what comes out. Which tasks exist is the orchestrator's business, not this module's.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use shoal_proto::dispatch::{ServiceView, TaskView, UpdateStatus};
use shoal_proto::{
    ErrorKind, ErrorReply, Hostname, Message, NodeId, Service, ServiceId, ServiceMode, ServiceSpec, Task, TaskState,
};

use crate::images::{self, ImageRecord};

/// What the manager stores about a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// The service and its current spec.
    pub service: Service,
    /// The spec before the last update, for `service update --rollback`.
    pub previous: Option<ServiceSpec>,
    /// Progress of the last update or rollback.
    pub update_status: Option<UpdateStatus>,
    /// When the spec last changed, milliseconds since the Unix epoch.
    pub updated_at_ms: u64,
}

fn refuse(kind: ErrorKind, message: &str) -> ErrorReply {
    ErrorReply::new(kind, message)
}

/// Finds the service `query` names: an exact ID, then a name, then a unique ID prefix.
pub fn resolve<'a>(records: &'a [ServiceRecord], query: &str) -> Result<&'a ServiceRecord, ErrorReply> {
    if let Some(r) = records.iter().find(|r| r.service.id.as_str() == query) {
        return Ok(r);
    }
    if let Some(r) = records.iter().find(|r| r.service.spec.name.as_str() == query) {
        return Ok(r);
    }
    let by_prefix: Vec<_> =
        records.iter().filter(|r| !query.is_empty() && r.service.id.as_str().starts_with(query)).collect();
    match by_prefix.as_slice() {
        [one] => Ok(one),
        [] => Err(refuse(ErrorKind::NotFound, &format!("no such service: {query} (see `shoal service ls`)"))),
        many => Err(refuse(
            ErrorKind::Ambiguous,
            &format!("service {query} is ambiguous ({} matches): use its name or more of its ID", many.len()),
        )),
    }
}

/// Checks a spec and completes it from the image store: the image must be loaded on the
/// manager (its reference is normalised, `redis` → `redis:latest`) and the spec takes
/// the image's platforms, so the scheduler only picks boards that can run it.
pub fn prepare(mut spec: ServiceSpec, images: &[ImageRecord]) -> Result<ServiceSpec, ErrorReply> {
    spec.validate().map_err(|e| refuse(ErrorKind::InvalidRequest, &e.to_string()))?;
    let image = images::resolve(images, &spec.image).map_err(|_| {
        refuse(
            ErrorKind::NotFound,
            &format!(
                "image {} is not loaded on the manager: load it with `shoal image load ARCHIVE` first \
                 (see `shoal image ls`)",
                spec.image
            ),
        )
    })?;
    let image = image.first().ok_or_else(|| refuse(ErrorKind::NotFound, "no such image"))?;
    spec.image = shoal_proto::text(&image.reference).map_err(|e| refuse(ErrorKind::InvalidRequest, &e.to_string()))?;
    let platforms: Vec<_> =
        image.platforms.iter().take(shoal_proto::images::MAX_PLATFORMS).map(|p| shoal_proto::text_lossy(p)).collect();
    spec.platforms = platforms.try_into().unwrap_or_default();
    Ok(spec)
}

/// `service create`: a new record, unless the name is taken.
pub fn create(
    records: &[ServiceRecord],
    spec: ServiceSpec,
    images: &[ImageRecord],
    id: ServiceId,
    wall_ms: u64,
) -> Result<ServiceRecord, ErrorReply> {
    if records.iter().any(|r| r.service.spec.name == spec.name) {
        return Err(refuse(
            ErrorKind::Conflict,
            &format!(
                "a service named {} already exists: choose another name, or change it with `shoal service update`",
                spec.name
            ),
        ));
    }
    let spec = prepare(spec, images)?;
    Ok(ServiceRecord {
        service: Service { id, spec, spec_version: 1, created_at_ms: wall_ms },
        previous: None,
        update_status: None,
        updated_at_ms: wall_ms,
    })
}

/// `service update` / `scale`: the new spec, if `version` is the one the caller read.
pub fn update(
    record: &ServiceRecord,
    spec: ServiceSpec,
    version: u64,
    images: &[ImageRecord],
    wall_ms: u64,
) -> Result<ServiceRecord, ErrorReply> {
    let current = &record.service;
    if version != current.spec_version {
        return Err(refuse(
            ErrorKind::Conflict,
            &format!(
                "service {} changed since it was read (version {version}, now {}): run the command again",
                current.spec.name, current.spec_version
            ),
        ));
    }
    if spec.name != current.spec.name {
        return Err(refuse(ErrorKind::InvalidRequest, "a service can't be renamed: create a new one instead"));
    }
    let spec = prepare(spec, images)?;
    Ok(changed(record, spec, "updating", "update in progress", wall_ms))
}

/// `service update --rollback`: back to the previous spec; the current one becomes the
/// previous, so rolling back a rollback goes forward again.
pub fn rollback(record: &ServiceRecord, wall_ms: u64) -> Result<ServiceRecord, ErrorReply> {
    let Some(previous) = record.previous.clone() else {
        return Err(refuse(
            ErrorKind::Conflict,
            &format!("service {} has no previous spec to roll back to", record.service.spec.name),
        ));
    };
    Ok(changed(record, previous, "rollback_started", "manually requested rollback", wall_ms))
}

fn changed(record: &ServiceRecord, spec: ServiceSpec, state: &str, message: &str, wall_ms: u64) -> ServiceRecord {
    let mut next = record.clone();
    next.previous = Some(record.service.spec.clone());
    next.service.spec = spec;
    next.service.spec_version += 1;
    next.updated_at_ms = wall_ms;
    next.update_status = Some(UpdateStatus {
        state: shoal_proto::text_lossy(state),
        started_at_ms: wall_ms,
        completed_at_ms: None,
        message: Message::lossy(message),
    });
    next
}

/// Marks an update or rollback completed once every task the manager wants running
/// carries the current spec and runs. Returns whether the record changed.
pub fn note_progress(record: &mut ServiceRecord, tasks: &[&Task], wall_ms: u64) -> bool {
    let Some(status) = &mut record.update_status else { return false };
    let (done_state, message) = match status.state.as_str() {
        "updating" => ("completed", "update completed"),
        "rollback_started" => ("rollback_completed", "rollback completed"),
        _ => return false,
    };
    let spec = record.service.spec.task_spec();
    let live: Vec<&&Task> = tasks.iter().filter(|t| t.is_desired_running()).collect();
    let done = live.iter().all(|t| t.spec == spec && t.status.state == TaskState::Running);
    if !done {
        return false;
    }
    status.state = shoal_proto::text_lossy(done_state);
    status.completed_at_ms = Some(wall_ms);
    status.message = Message::lossy(message);
    true
}

/// Tasks running now and tasks wanted, as `service ls` shows `REPLICAS`.
pub fn replicas(service: &Service, tasks: &[&Task]) -> (u32, u32) {
    let live = tasks.iter().filter(|t| t.is_desired_running());
    let running = live.clone().filter(|t| t.status.state == TaskState::Running).count() as u32;
    let desired = match service.spec.mode {
        ServiceMode::Replicated { replicas } => replicas,
        ServiceMode::Global => live.count() as u32,
    };
    (running, desired)
}

/// The view of one service.
pub fn view(record: &ServiceRecord, tasks: &[&Task]) -> ServiceView {
    let (running, desired) = replicas(&record.service, tasks);
    ServiceView { service: record.service.clone(), running, desired, update_status: record.update_status.clone() }
}

/// `service ps`: the tasks of `services`, by service name, then slot (or node), the
/// current task first and its history after it, newest first.
pub fn ps(services: &[&ServiceRecord], tasks: &[Task], hostnames: &HashMap<NodeId, Hostname>) -> Vec<TaskView> {
    let mut services: Vec<&&ServiceRecord> = services.iter().collect();
    services.sort_by(|a, b| a.service.spec.name.cmp(&b.service.spec.name));
    let mut out = Vec::new();
    for record in services {
        let mut own: Vec<&Task> = tasks.iter().filter(|t| t.service_id == record.service.id).collect();
        own.sort_by(|a, b| {
            // A replicated slot's history spans nodes (a replacement lands elsewhere); a
            // global task is identified by its node.
            let key = |t: &Task| (t.slot, if t.slot == 0 { t.node_id.clone() } else { None });
            key(a)
                .cmp(&key(b))
                .then(b.is_desired_running().cmp(&a.is_desired_running()))
                .then(b.created_at_ms.cmp(&a.created_at_ms))
                .then(a.id.cmp(&b.id))
        });
        for t in own {
            out.push(TaskView {
                task: t.clone(),
                service_name: record.service.spec.name.clone(),
                node_hostname: t.node_id.as_ref().and_then(|n| hostnames.get(n)).cloned(),
                node_id: t.node_id.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{TaskId, TaskStatus};

    fn image(reference: &str) -> ImageRecord {
        ImageRecord {
            reference: reference.into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            platforms: vec!["linux/amd64".into(), "linux/arm64".into()],
            size: 1,
            blobs: vec![],
            loaded_at_ms: 0,
        }
    }

    fn spec(name: &str, image: &str) -> ServiceSpec {
        ServiceSpec::new(shoal_proto::text(name).unwrap(), shoal_proto::text(image).unwrap())
    }

    #[test]
    fn create_needs_a_loaded_image_and_takes_its_platforms() {
        let images = vec![image("redis:latest")];
        let id = ServiceId::from_random([1; 16]);
        let r = create(&[], spec("database", "redis"), &images, id.clone(), 7).unwrap();
        assert_eq!(r.service.spec.image.as_str(), "redis:latest");
        assert_eq!(r.service.spec.platforms.len(), 2);
        assert_eq!(r.service.spec_version, 1);
        let e = create(&[], spec("web", "nginx"), &images, id.clone(), 7).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert!(e.message.contains("shoal image load"), "{}", e.message);
        let e = create(&[r], spec("database", "redis"), &images, id, 7).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict);
        let e = create(&[], spec("-bad", "redis"), &images, ServiceId::from_random([2; 16]), 7).unwrap_err();
        assert!(e.message.contains("DNS label"));
    }

    #[test]
    fn updates_refuse_stale_versions_and_rollback_goes_back_and_forth() {
        let images = vec![image("demo/app:1.0"), image("demo/app:2.0")];
        let r = create(&[], spec("web", "demo/app:1.0"), &images, ServiceId::from_random([1; 16]), 0).unwrap();
        assert_eq!(rollback(&r, 1).unwrap_err().kind, ErrorKind::Conflict);
        let r2 = update(&r, spec("web", "demo/app:2.0"), 1, &images, 1).unwrap();
        assert_eq!((r2.service.spec_version, r2.service.spec.image.as_str()), (2, "demo/app:2.0"));
        assert_eq!(update(&r2, spec("web", "demo/app:1.0"), 1, &images, 2).unwrap_err().kind, ErrorKind::Conflict);
        assert_eq!(
            update(&r2, spec("api", "demo/app:1.0"), 2, &images, 2).unwrap_err().kind,
            ErrorKind::InvalidRequest
        );
        let back = rollback(&r2, 3).unwrap();
        assert_eq!(back.service.spec.image.as_str(), "demo/app:1.0");
        assert_eq!(back.update_status.as_ref().unwrap().state.as_str(), "rollback_started");
        let forward = rollback(&back, 4).unwrap();
        assert_eq!((forward.service.spec.image.as_str(), forward.service.spec_version), ("demo/app:2.0", 4));
    }

    fn task(r: &ServiceRecord, slot: u32, state: TaskState, desired: TaskState, created: u64) -> Task {
        Task {
            id: TaskId::from_random([slot as u8, created as u8, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]),
            service_id: r.service.id.clone(),
            slot,
            node_id: None,
            spec: r.service.spec.task_spec(),
            spec_version: r.service.spec_version,
            desired_state: desired,
            status: TaskStatus::new(state, created, ""),
            created_at_ms: created,
        }
    }

    #[test]
    fn replicas_count_running_tasks_the_manager_wants() {
        let images = vec![image("demo/app:1.0")];
        let r = create(&[], spec("web", "demo/app:1.0"), &images, ServiceId::from_random([1; 16]), 0).unwrap();
        let mut r3 = r.clone();
        r3.service.spec.mode = ServiceMode::Replicated { replicas: 3 };
        let tasks = [
            task(&r3, 1, TaskState::Running, TaskState::Running, 1),
            task(&r3, 2, TaskState::Starting, TaskState::Running, 1),
            task(&r3, 3, TaskState::Running, TaskState::Shutdown, 1),
        ];
        let refs: Vec<&Task> = tasks.iter().collect();
        assert_eq!(replicas(&r3.service, &refs), (1, 3));
        let v = view(&r3, &refs);
        assert_eq!((v.running, v.desired), (1, 3));
    }

    #[test]
    fn ps_puts_each_slots_current_task_first_then_its_history() {
        let images = vec![image("demo/app:1.0")];
        let r = create(&[], spec("web", "demo/app:1.0"), &images, ServiceId::from_random([1; 16]), 0).unwrap();
        let tasks = vec![
            task(&r, 2, TaskState::Running, TaskState::Running, 5),
            task(&r, 1, TaskState::Failed, TaskState::Shutdown, 1),
            task(&r, 1, TaskState::Running, TaskState::Running, 9),
            task(&r, 1, TaskState::Shutdown, TaskState::Shutdown, 3),
        ];
        let views = ps(&[&r], &tasks, &HashMap::new());
        let order: Vec<(u32, u64)> = views.iter().map(|v| (v.task.slot, v.task.created_at_ms)).collect();
        assert_eq!(order, vec![(1, 9), (1, 3), (1, 1), (2, 5)]);
    }

    #[test]
    fn progress_completes_when_every_live_task_runs_the_new_spec() {
        let images = vec![image("demo/app:1.0"), image("demo/app:2.0")];
        let r = create(&[], spec("web", "demo/app:1.0"), &images, ServiceId::from_random([1; 16]), 0).unwrap();
        let old = task(&r, 1, TaskState::Running, TaskState::Running, 1);
        let mut r2 = update(&r, spec("web", "demo/app:2.0"), 1, &images, 1).unwrap();
        assert!(!note_progress(&mut r2, &[&old], 2));
        let new = task(&r2, 1, TaskState::Running, TaskState::Running, 2);
        let mut stopped = old.clone();
        stopped.desired_state = TaskState::Shutdown;
        assert!(note_progress(&mut r2, &[&stopped, &new], 3));
        assert_eq!(r2.update_status.unwrap().state.as_str(), "completed");
    }

    #[test]
    fn services_resolve_by_id_name_or_prefix() {
        let images = vec![image("demo/app:1.0")];
        let a = create(&[], spec("web", "demo/app:1.0"), &images, ServiceId::from_random([1; 16]), 0).unwrap();
        let b = create(&[], spec("db", "demo/app:1.0"), &images, ServiceId::from_random([2; 16]), 0).unwrap();
        let all = vec![a.clone(), b];
        assert_eq!(resolve(&all, "web").unwrap(), &a);
        assert_eq!(resolve(&all, a.service.id.as_str()).unwrap(), &a);
        assert_eq!(resolve(&all, &a.service.id.as_str()[..10]).unwrap(), &a);
        assert_eq!(resolve(&all, "nope").unwrap_err().kind, ErrorKind::NotFound);
    }
}
