//! Services as the operator changes them: the stored record (current spec, the spec
//! before the last change for `--rollback`, update progress), finding a service by
//! name or ID, and the checks and bookkeeping of create, update and rollback, plus the
//! views `service ls` and `service ps` show.
//!
//! No I/O and no clock: the shell passes the time and the image records in, and stores
//! what comes out. Which tasks exist is the orchestrator's business, not this module's.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use shoal_proto::dispatch::{ServiceView, TaskView, UpdateState, UpdateStatus};
use shoal_proto::{BoundedVec, TaskId, UpdateConfig};
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
    /// The last update or rollback: where it stands and what the updater keeps of it.
    pub update: Option<UpdateProgress>,
    /// When the spec last changed, milliseconds since the Unix epoch.
    pub updated_at_ms: u64,
}

/// An update (or rollback) as the manager stores it with its service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateProgress {
    /// What `service inspect` shows.
    pub status: UpdateStatus,
    /// The pace and failure handling in force: the new spec's update config, or for a
    /// rollback the rollback config of the spec rolled back from.
    pub config: UpdateConfig,
    /// How many slots needed replacing when the update began (the failure ratio's
    /// denominator); set by the first step.
    pub total: Option<u32>,
    /// Tasks whose early end counted as a failure (one per slot at most).
    pub failed: Vec<TaskId>,
}

impl UpdateProgress {
    /// A fresh update in `status`, paced by `config`.
    pub fn new(status: UpdateStatus, config: UpdateConfig) -> Self {
        Self { status, config, total: None, failed: Vec::new() }
    }
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
    // A pulled image has a pinned record (`name@digest`): the service is pinned to it,
    // as Swarm pins a service to the digest its tag had at create or update.
    let pinned = format!("{}@{}", image.reference, image.digest);
    let name = if images.iter().any(|i| i.reference == pinned) { &pinned } else { &image.reference };
    spec.image = shoal_proto::text(name).map_err(|e| refuse(ErrorKind::InvalidRequest, &e.to_string()))?;
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
        service: Service { id, spec, spec_version: 1, created_at_ms: wall_ms, virtual_ips: BoundedVec::new() },
        previous: None,
        update: None,
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
    let config = spec.update_config;
    Ok(changed(
        record,
        spec,
        Some(record.service.spec.clone()),
        UpdateState::Updating,
        "update in progress",
        config,
        wall_ms,
    ))
}

/// `service update --rollback`: back to the previous spec, paced by the rollback config
/// of the spec being left. The current spec becomes the previous one, so rolling back a
/// rollback goes forward again, as in Swarm.
pub fn rollback(record: &ServiceRecord, wall_ms: u64) -> Result<ServiceRecord, ErrorReply> {
    let Some(previous) = record.previous.clone() else {
        return Err(refuse(
            ErrorKind::Conflict,
            &format!("service {} has no previous spec to roll back to", record.service.spec.name),
        ));
    };
    let config = record.service.spec.rollback_config;
    let current = Some(record.service.spec.clone());
    Ok(changed(record, previous, current, UpdateState::RollbackStarted, "manually requested rollback", config, wall_ms))
}

/// The automatic rollback an update's failure action asks for: like `--rollback`, except
/// that the failed spec is not kept as the previous one (Swarm clears it, so a second
/// `--rollback` can't return to the spec that just failed).
pub fn roll_back_after_failure(record: &ServiceRecord, message: &str, wall_ms: u64) -> Option<ServiceRecord> {
    let previous = record.previous.clone()?;
    let config = record.service.spec.rollback_config;
    Some(changed(record, previous, None, UpdateState::RollbackStarted, message, config, wall_ms))
}

/// The record after a spec change. A change its tasks carry starts an update (and forgets
/// the last one's progress), and so does new pacing for an unfinished one; a change of
/// the replica count alone does not, so `service scale` shows no update status and does
/// not resume a paused update.
fn changed(
    record: &ServiceRecord,
    spec: ServiceSpec,
    previous: Option<ServiceSpec>,
    state: UpdateState,
    message: &str,
    config: shoal_proto::UpdateConfig,
    wall_ms: u64,
) -> ServiceRecord {
    let mut next = record.clone();
    let replaces_tasks = spec.task_spec() != record.service.spec.task_spec();
    // New pacing for an update that has not finished (say, `--update-failure-action
    // continue` on a paused one) starts it again with that pacing, as in Swarm.
    let unfinished = record
        .update
        .as_ref()
        .is_some_and(|u| !matches!(u.status.state, UpdateState::Completed | UpdateState::RollbackCompleted));
    let repaced = spec.update_config != record.service.spec.update_config && unfinished;
    next.previous = previous;
    next.service.spec = spec;
    next.service.spec_version += 1;
    next.updated_at_ms = wall_ms;
    if replaces_tasks || repaced || state.is_rollback() {
        let status =
            UpdateStatus { state, started_at_ms: wall_ms, completed_at_ms: None, message: Message::lossy(message) };
        next.update = Some(UpdateProgress::new(status, config));
    }
    next
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
    let spec = record.service.spec.task_spec();
    let updated = tasks
        .iter()
        .filter(|t| t.is_desired_running() && t.spec == spec && t.status.state == TaskState::Running)
        .count() as u32;
    ServiceView {
        service: record.service.clone(),
        running,
        desired,
        updated,
        update_status: record.update.as_ref().map(|u| u.status.clone()),
    }
}

/// The tasks of each service, borrowed, in one walk of `tasks` (in their order within a
/// service). A walk per service, copying its tasks, cost ~140 MB per `service ls` at
/// 100,000 tasks.
pub fn tasks_by_service(tasks: &[Task]) -> HashMap<&ServiceId, Vec<&Task>> {
    let mut out: HashMap<&ServiceId, Vec<&Task>> = HashMap::new();
    for t in tasks {
        out.entry(&t.service_id).or_default().push(t);
    }
    out
}

/// `service ps`: the tasks of `services`, by service name, then slot (or node), the
/// current task first and its history after it, newest first; the first `limit` of them.
/// One walk of `tasks`, and only the rows shown are copied (a walk per service, copying
/// every row before the reply's bound cut it, cost ~140 MB at 100,000 tasks).
pub fn ps(
    services: &[&ServiceRecord],
    tasks: &[Task],
    hostnames: &HashMap<NodeId, Hostname>,
    limit: usize,
) -> Vec<TaskView> {
    let mut services: Vec<&&ServiceRecord> = services.iter().collect();
    services.sort_by(|a, b| a.service.spec.name.cmp(&b.service.spec.name));
    let mut by_service = tasks_by_service(tasks);
    let mut out = Vec::new();
    for record in services {
        let Some(mut own) = by_service.remove(&record.service.id) else { continue };
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
            if out.len() >= limit {
                return out;
            }
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
    use shoal_proto::TaskStatus;

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
    fn a_pulled_image_pins_the_service_to_its_digest() {
        let d = format!("sha256:{}", "c".repeat(64));
        let rec = |reference: &str| ImageRecord {
            reference: reference.into(),
            digest: d.clone(),
            platforms: vec!["linux/amd64".into()],
            size: 1,
            blobs: vec![],
            loaded_at_ms: 0,
        };
        let pinned = format!("nginx:1.27@{d}");
        let images = vec![rec("nginx:1.27"), rec(&pinned)];
        for typed in ["nginx:1.27", "docker.io/library/nginx:1.27", pinned.as_str()] {
            let r = create(&[], spec("web", typed), &images, ServiceId::from_random([1; 16]), 0).unwrap();
            assert_eq!(r.service.spec.image.as_str(), pinned, "{typed}");
        }
        // A loaded image (no pinned record) keeps its name, as before.
        let r = create(&[], spec("web", "nginx:1.27"), &images[..1], ServiceId::from_random([1; 16]), 0).unwrap();
        assert_eq!(r.service.spec.image.as_str(), "nginx:1.27");
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
        assert_eq!(back.update.as_ref().unwrap().status.state, UpdateState::RollbackStarted);
        assert_eq!(back.update.as_ref().unwrap().config, r2.service.spec.rollback_config);
        let forward = rollback(&back, 4).unwrap();
        assert_eq!((forward.service.spec.image.as_str(), forward.service.spec_version), ("demo/app:2.0", 4));

        // A paused update resumes when its pacing changes, not when it is only scaled.
        let mut paused = forward.clone();
        paused.update.as_mut().unwrap().status.state = UpdateState::Paused;
        let mut scaled = paused.service.spec.clone();
        scaled.mode = ServiceMode::Replicated { replicas: 4 };
        let r = update(&paused, scaled, 4, &images, 5).unwrap();
        assert_eq!(r.update.unwrap().status.state, UpdateState::Paused);
        let mut repaced = paused.service.spec.clone();
        repaced.update_config.failure_action = shoal_proto::FailureAction::Continue;
        let r = update(&paused, repaced, 4, &images, 6).unwrap();
        let u = r.update.unwrap();
        assert_eq!(
            (u.status.state, u.config.failure_action),
            (UpdateState::Updating, shoal_proto::FailureAction::Continue)
        );
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
            networks: Default::default(),
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
        let views = ps(&[&r], &tasks, &HashMap::new(), usize::MAX);
        let order: Vec<(u32, u64)> = views.iter().map(|v| (v.task.slot, v.task.created_at_ms)).collect();
        assert_eq!(order, vec![(1, 9), (1, 3), (1, 1), (2, 5)]);
    }

    #[test]
    fn tasks_by_service_borrows_each_task_once_under_its_service() {
        let images = vec![image("demo/app:1.0")];
        let web = create(&[], spec("web", "demo/app:1.0"), &images, ServiceId::from_random([1; 16]), 0).unwrap();
        let db = create(&[], spec("db", "demo/app:1.0"), &images, ServiceId::from_random([2; 16]), 0).unwrap();
        let all = [
            task(&web, 1, TaskState::Running, TaskState::Running, 1),
            task(&db, 1, TaskState::Running, TaskState::Running, 1),
            task(&web, 2, TaskState::Running, TaskState::Running, 1),
        ];
        let by = tasks_by_service(&all);
        let ids = |r: &ServiceRecord| by[&r.service.id].iter().map(|t| t.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&web), vec![all[0].id.clone(), all[2].id.clone()]);
        assert_eq!(ids(&db), vec![all[1].id.clone()]);
        assert!(std::ptr::eq(by[&db.service.id][0], &all[1]), "borrowed, not copied");
        assert_eq!(by.len(), 2);
    }

    #[test]
    fn ps_lists_services_by_name_and_stops_at_its_limit() {
        let images = vec![image("demo/app:1.0")];
        let web = create(&[], spec("web", "demo/app:1.0"), &images, ServiceId::from_random([1; 16]), 0).unwrap();
        let db = create(&[], spec("db", "demo/app:1.0"), &images, ServiceId::from_random([2; 16]), 0).unwrap();
        let other = create(&[], spec("other", "demo/app:1.0"), &images, ServiceId::from_random([3; 16]), 0).unwrap();
        let tasks = vec![
            task(&web, 1, TaskState::Running, TaskState::Running, 1),
            task(&other, 1, TaskState::Running, TaskState::Running, 1),
            task(&db, 2, TaskState::Running, TaskState::Running, 1),
            task(&web, 2, TaskState::Running, TaskState::Running, 1),
            task(&db, 1, TaskState::Running, TaskState::Running, 1),
        ];
        let rows = |limit| -> Vec<(String, u32)> {
            ps(&[&web, &db], &tasks, &HashMap::new(), limit)
                .iter()
                .map(|v| (v.service_name.to_string(), v.task.slot))
                .collect()
        };
        let all = rows(usize::MAX);
        let named = |v: &[(&str, u32)]| v.iter().map(|(n, s)| (n.to_string(), *s)).collect::<Vec<_>>();
        assert_eq!(all, named(&[("db", 1), ("db", 2), ("web", 1), ("web", 2)]), "only the services asked for");
        assert_eq!(rows(3), all[..3].to_vec());
        assert!(rows(0).is_empty());
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
