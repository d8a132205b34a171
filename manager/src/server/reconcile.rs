//! Services: the reconcile task (reports, orchestrator, updater, scheduler, one
//! transaction, diffs to the nodes) and the service requests that change its input.

use super::*;

/// The nodes as placement sees them: stored records with their current liveness.
pub(super) fn cluster_nodes(mgr: &Manager) -> Result<Vec<ClusterNode>, crate::store::StoreError> {
    let records = mgr.store.nodes()?;
    let st = mgr.state.lock().expect("state lock");
    let now = mgr.now();
    Ok(records
        .iter()
        .map(|r| {
            let status = match r.role {
                Role::Manager => NodeStatus::Ready,
                Role::Worker => st.members.status(now, &r.id).0,
            };
            ClusterNode { disk_full: st.disk.contains_key(&r.id), ..ClusterNode::from_record(r, status) }
        })
        .collect())
}

/// How long the reconcile task waits after a write failed for lack of space.
const DISK_FULL_RETRY: Duration = Duration::from_secs(5);

/// The one task that changes tasks: waits for events (or the next timer), takes every
/// event already queued, and reconciles once for all of them.
pub(super) async fn reconcile_loop(mgr: Arc<Manager>, mut events: mpsc::Receiver<Event>) {
    let mut wake_at: Option<tokio::time::Instant> = None;
    let mut reports: Vec<(NodeId, Vec<TaskReport>)> = Vec::new();
    loop {
        let deadline = wake_at.unwrap_or_else(|| tokio::time::Instant::now() + RECONCILE_PERIOD);
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::Kick) => {}
                Some(Event::Reports(node, r)) => reports.push((node, r)),
                None => return,
            },
            _ = tokio::time::sleep_until(deadline) => {}
        }
        while let Ok(event) = events.try_recv() {
            if let Event::Reports(node, r) = event {
                reports.push((node, r));
            }
        }
        let batch = std::mem::take(&mut reports);
        // Store writes block; keep them off the other tasks' way.
        match tokio::task::block_in_place(|| reconcile(&mgr, batch)) {
            Ok(next) => {
                // A far timer (or one past `Instant`'s range) waits no longer than the
                // periodic pass would anyway.
                let periodic = std::time::Instant::now() + RECONCILE_PERIOD;
                let at = next.and_then(|ms| mgr.started.checked_add(Duration::from_millis(ms)));
                wake_at = Some(tokio::time::Instant::from_std(at.map_or(periodic, |at| at.min(periodic))));
            }
            Err(e) => {
                // A full disk fails every write the same way: retry at a calm pace (each
                // try writes nothing) and recover by itself once there is space.
                let full = e.downcast_ref::<crate::store::StoreError>().is_some_and(|e| e.is_disk_full());
                let retry = if full { DISK_FULL_RETRY } else { Duration::from_secs(1) };
                warn!(error = %e, "reconciliation failed; retrying in {retry:?}");
                wake_at = Some(tokio::time::Instant::now() + retry);
            }
        }
    }
}

/// Records task reports, runs the orchestrator, the updater and the scheduler, persists
/// what changed in one transaction, then tells each node what changed for it. Returns
/// when the orchestrator wants to run again (monotonic milliseconds).
pub(super) fn reconcile(mgr: &Manager, reports: Vec<(NodeId, Vec<TaskReport>)>) -> anyhow::Result<Option<Millis>> {
    let nodes = cluster_nodes(mgr)?;
    let now = Now { mono: mgr.now(), wall_ms: shoal_link::wall_ms() };
    let mut svc = mgr.services.lock().expect("services lock");
    let svc = &mut *svc;
    let mut tasks: Vec<Task> = svc.tasks.values().cloned().collect();
    tasks.sort_by(|a, b| a.id.cmp(&b.id));

    if !reports.is_empty() {
        let index: HashMap<TaskId, usize> = tasks.iter().enumerate().map(|(i, t)| (t.id.clone(), i)).collect();
        for (node, batch) in reports {
            for r in batch {
                let Some(&i) = index.get(&r.task_id) else {
                    debug!(%node, task = %r.task_id, "report for a task the manager no longer has");
                    continue;
                };
                let t = &mut tasks[i];
                if t.node_id.as_ref() != Some(&node) {
                    warn!(%node, task = %t.id, "report for a task assigned to another node; ignored");
                    continue;
                }
                let state = r.status.state;
                match shoal_proto::apply_status(t, r.status) {
                    Ok(()) => debug!(%node, task = %t.id, %state, "task status"),
                    Err(e) => warn!(%node, error = %e, "refused a task report"),
                }
            }
        }
    }

    let services: Vec<Service> = svc.records.values().map(|r| r.service.clone()).collect();
    let mut new_id = || TaskId::from_random(shoal_link::random());
    let plan = svc.orchestrator.reconcile(now, &services, &tasks, &nodes, &mut new_id);
    let wake_at = plan.wake_at;
    for stop in &plan.shutdown {
        info!(task = %stop.task, reason = %stop.reason, "stopping task");
    }
    plan.apply_to(&mut tasks, now.wall_ms);

    // Updates, one service at a time, each seeing the tasks the previous ones created.
    // Only services with an update running, or with tasks of an older spec still live
    // (a paused update, a slot mid-replacement), need a look: one pass finds them.
    let specs: HashMap<&ServiceId, shoal_proto::TaskSpec> = svc
        .records
        .values()
        .filter(|r| r.update.is_some())
        .map(|r| (&r.service.id, r.service.spec.task_spec()))
        .collect();
    let unsettled: HashSet<ServiceId> = tasks
        .iter()
        .filter(|t| t.is_desired_running() && specs.get(&t.service_id).is_some_and(|s| t.is_held() || *s != t.spec))
        .map(|t| t.service_id.clone())
        .collect();
    let mut records_changed: Vec<ServiceRecord> = Vec::new();
    let mut wake_at = wake_at;
    for record in svc.records.values() {
        let active = record.update.as_ref().is_some_and(|u| u.status.state.is_active());
        if !active && !unsettled.contains(&record.service.id) {
            continue;
        }
        let own: Vec<&Task> = tasks.iter().filter(|t| t.service_id == record.service.id).collect();
        let step = svc.updater.step(now, record, &own, &nodes, &tasks, &mut new_id);
        for event in &step.events {
            info!(service = %record.service.spec.name, "{event}");
        }
        for stop in &step.plan.shutdown {
            debug!(task = %stop.task, reason = %stop.reason, "stopping task");
        }
        if let Some(at) = step.plan.wake_at {
            wake_at = Some(wake_at.map_or(at, |w: Millis| w.min(at)));
        }
        step.plan.apply_to(&mut tasks, now.wall_ms);
        records_changed.extend(step.record);
    }
    svc.updater.forget_gone(&tasks);

    // A task whose image the manager no longer has (`image rm --force`) could never
    // start: reject it with the reason rather than leave a board waiting for it. The
    // orchestrator replaces it after the restart delay, so loading the image again heals.
    let loaded: HashSet<String> = mgr.store.images()?.into_iter().map(|i| i.reference).collect();
    let waiting = |t: &Task| t.status.state <= TaskState::Pending && t.desired_state == TaskState::Running;
    for t in tasks.iter_mut().filter(|t| waiting(t) && !loaded.contains(t.spec.image.as_str())) {
        let message =
            format!("image {} is not loaded on the manager: load it with `shoal image load ARCHIVE`", t.spec.image);
        let mut status = shoal_proto::TaskStatus::new(TaskState::Rejected, now.wall_ms, "rejected");
        status.err = Some(shoal_proto::Message::lossy(&message));
        let _ = shoal_proto::apply_status(t, status);
    }

    let pending: Vec<TaskId> = tasks
        .iter()
        .filter(|t| t.status.state <= TaskState::Pending && t.desired_state == TaskState::Running)
        .map(|t| t.id.clone())
        .collect();
    if !pending.is_empty() {
        let decisions = scheduler::schedule(&nodes, &tasks, &pending);
        let index: HashMap<TaskId, usize> = tasks.iter().enumerate().map(|(i, t)| (t.id.clone(), i)).collect();
        for d in decisions {
            let Some(&i) = index.get(d.task()) else { continue };
            let t = &mut tasks[i];
            match &d {
                // The same refusal again: keep the time it was first given.
                scheduler::Decision::Unassignable { reason, .. } if &*t.status.message == reason.as_str() => continue,
                scheduler::Decision::Unassignable { reason, .. } => info!(task = %t.id, %reason, "task pending"),
                scheduler::Decision::Assign { node, .. } => debug!(task = %t.id, %node, "task assigned"),
            }
            if let Err(e) = scheduler::record(t, &d, now.wall_ms) {
                warn!(error = %e, "scheduler decision refused");
            }
        }
    }

    // What changed, written in one transaction before anyone is told.
    let after: HashMap<TaskId, Task> = tasks.into_iter().map(|t| (t.id.clone(), t)).collect();
    let put_tasks: Vec<&Task> = after.values().filter(|t| svc.tasks.get(&t.id) != Some(*t)).collect();
    let remove_tasks: Vec<&TaskId> = svc.tasks.keys().filter(|id| !after.contains_key(*id)).collect();
    let changes = ServiceChanges {
        put_services: records_changed.iter().collect(),
        remove_services: Vec::new(),
        put_tasks,
        remove_tasks,
    };
    mgr.store.change_services(&changes)?;
    drop(changes);
    for r in records_changed {
        svc.records.insert(r.service.id.clone(), r);
    }
    let before = std::mem::replace(&mut svc.tasks, after);
    // Forget the names of removed services once their last task is gone.
    let live: HashSet<&ServiceId> = svc.tasks.values().map(|t| &t.service_id).collect();
    let records = &svc.records;
    svc.names.retain(|id, _| records.contains_key(id) || live.contains(id));

    let diffs = dispatcher::diff(&before, &svc.tasks, &svc.name_map());
    if !diffs.is_empty() {
        let st = mgr.state.lock().expect("state lock");
        let mut lagging = Vec::new();
        for (node, d) in diffs {
            let Some(session) = st.sessions.get(&node) else { continue };
            debug!(%node, upsert = d.upsert.len(), remove = d.remove.len(), "assignments changed");
            for message in dispatcher::diff_messages(d) {
                if let Err(mpsc::error::TrySendError::Full(_)) = session.tx.try_send(message) {
                    lagging.push((node.clone(), session.conn.clone()));
                    break;
                }
            }
        }
        drop(st);
        for (node, conn) in lagging {
            warn!(%node, "session is not reading its messages; closing it so the agent resynchronises");
            conn.close(close::LAGGING.into(), b"session fell behind; reconnect");
        }
    }
    Ok(wake_at)
}

/// `shoal service ...`: reads answer from memory; changes are persisted, then a
/// reconciliation is asked for.
pub(super) fn handle_service(
    mgr: &Manager,
    req: ServiceRequest,
    nodes: &[NodeRecord],
) -> Result<ServiceReply, ErrorReply> {
    let wall = shoal_link::wall_ms();
    let images = || mgr.store.images().map_err(internal);
    let mut svc = mgr.services.lock().expect("services lock");
    let records: Vec<ServiceRecord> = svc.records.values().cloned().collect();
    let tasks_of = |svc: &ServiceState, id: &ServiceId| -> Vec<Task> {
        svc.tasks.values().filter(|t| &t.service_id == id).cloned().collect()
    };
    let put = |svc: &mut ServiceState, record: ServiceRecord| -> Result<ServiceReply, ErrorReply> {
        mgr.store
            .change_services(&ServiceChanges { put_services: vec![&record], ..Default::default() })
            .map_err(internal)?;
        let id = record.service.id.clone();
        svc.names.insert(id.clone(), record.service.spec.name.clone());
        svc.records.insert(id.clone(), record);
        mgr.kick();
        Ok(ServiceReply::Done(id))
    };
    match req {
        ServiceRequest::Create(spec) => {
            let record =
                services::create(&records, *spec, &images()?, ServiceId::from_random(shoal_link::random()), wall)?;
            info!(service = %record.service.spec.name, id = %record.service.id, image = %record.service.spec.image, "service created");
            put(&mut svc, record).map(|r| match r {
                ServiceReply::Done(id) => ServiceReply::Created(id),
                other => other,
            })
        }
        ServiceRequest::List => {
            let views: Vec<_> = records
                .iter()
                .map(|r| {
                    let own = tasks_of(&svc, &r.service.id);
                    services::view(r, &own.iter().collect::<Vec<_>>())
                })
                .collect();
            Ok(ServiceReply::Services(views.try_into().map_err(internal)?))
        }
        ServiceRequest::Inspect { service } => {
            let r = services::resolve(&records, &service)?;
            let own = tasks_of(&svc, &r.service.id);
            Ok(ServiceReply::Service(Box::new(services::view(r, &own.iter().collect::<Vec<_>>()))))
        }
        ServiceRequest::Ps { services: wanted } => {
            let chosen: Vec<&ServiceRecord> = if wanted.is_empty() {
                records.iter().collect()
            } else {
                wanted.iter().map(|q| services::resolve(&records, q)).collect::<Result<_, _>>()?
            };
            let hostnames = nodes.iter().map(|n| (n.id.clone(), n.description.hostname.clone())).collect();
            let all: Vec<Task> = svc.tasks.values().cloned().collect();
            let mut views = services::ps(&chosen, &all, &hostnames);
            views.truncate(MAX_TASKS_LISTED);
            Ok(ServiceReply::Tasks(views.try_into().map_err(internal)?))
        }
        ServiceRequest::Update { service, spec, version } => {
            let r = services::resolve(&records, &service)?;
            let next = services::update(r, *spec, version, &images()?, wall)?;
            info!(service = %next.service.spec.name, version = next.service.spec_version, "service updated");
            put(&mut svc, next)
        }
        ServiceRequest::Rollback { service } => {
            let r = services::resolve(&records, &service)?;
            let next = services::rollback(r, wall)?;
            info!(service = %next.service.spec.name, version = next.service.spec_version, "service rolled back");
            put(&mut svc, next)
        }
        ServiceRequest::Remove { service } => {
            let id = services::resolve(&records, &service)?.service.id.clone();
            mgr.store
                .change_services(&ServiceChanges { remove_services: vec![&id], ..Default::default() })
                .map_err(internal)?;
            if let Some(r) = svc.records.remove(&id) {
                info!(service = %r.service.spec.name, "service removed");
            }
            mgr.kick();
            Ok(ServiceReply::Done(id))
        }
    }
}
