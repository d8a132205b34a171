//! Services: the reconcile task (loads the state, runs one pure pass of
//! [`shoal_core::pass`], writes its result in one transaction, sends the diffs to the
//! nodes) and the service requests that change its input.

use super::*;

/// The nodes as placement sees them: stored records with their current liveness.
pub(super) fn cluster_nodes(mgr: &Manager) -> Result<Vec<ClusterNode>, crate::store::StoreError> {
    let records = mgr.store.nodes_shared()?;
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

/// Tasks rewritten by passes after which the allocator's free pages go back to the
/// system ([`crate::memory`]): often enough to bound the manager's memory while a big
/// fleet converges, rarely enough that the trim's own cost stays small beside the passes.
const RELEASE_AFTER_TASKS: usize = 2000;

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
        let outcome = tokio::task::block_in_place(|| reconcile(&mgr, batch));
        // A pass that rewrote many tasks freed as many copies; give their pages back.
        // The trim walks the whole heap: off the runtime's threads too.
        let trim = Instant::now();
        tokio::task::block_in_place(|| crate::memory::release_after_churn(RELEASE_AFTER_TASKS));
        if trim.elapsed() >= SLOW_PASS {
            info!(ms = trim.elapsed().as_millis() as u64, "slow release of the heap's free pages after a pass");
        }
        match outcome {
            Ok(next) => {
                // A far timer (or one past `Instant`'s range) waits no longer than the
                // periodic pass would anyway.
                let periodic = std::time::Instant::now() + RECONCILE_PERIOD;
                let at = next.and_then(|ms| mgr.beats.instant_at(ms));
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

/// Runs one reconcile pass ([`Reconciler::pass`]) over the state in memory, persists
/// what it changed in one transaction, then tells each node what changed for it.
/// Returns when the pass wants to run again (monotonic milliseconds).
pub(super) fn reconcile(mgr: &Manager, reports: Vec<(NodeId, Vec<TaskReport>)>) -> anyhow::Result<Option<Millis>> {
    let mut phases = Phases::start();
    let nodes = cluster_nodes(mgr)?;
    let images = mgr.store.images()?;
    let now = Now { mono: mgr.now(), wall_ms: shoal_link::wall_ms() };
    phases.mark("read");
    let mut svc = mgr.services.lock().expect("services lock");
    phases.mark("lock");
    let svc = &mut *svc;
    let records: Vec<ServiceRecord> = svc.records.values().cloned().collect();
    let (mesh, boards) = super::networks::mesh_boards(&mgr.store, svc, &nodes)?;
    // Moved, not copied: if the write below fails, the outcome is undone (see `commit`).
    let tasks = svc.tasks.take();
    let cluster = Cluster {
        records: &records,
        nodes: &nodes,
        images: &images,
        names: &svc.names,
        networks: &svc.networks,
        boards: &boards,
    };
    let mut new_id = || TaskId::from_random(shoal_link::random());
    phases.mark("prepare");
    let outcome = svc.reconciler.pass(now, cluster, tasks, reports, &mut new_id);
    phases.mark("pass");
    for event in &outcome.events {
        log_event(event);
    }
    let Committed { diffs, wake_at } = commit(svc, outcome, |changes| mgr.store.change_services(changes))?;
    phases.mark("commit");

    let keys_due = super::networks::step_keys(svc, now.mono);
    let views = super::networks::changed_views(svc, &mut mgr.state.lock().expect("state lock"), &mesh);
    phases.mark("views");
    let sets = super::objects::changed_sets(svc, &mut mgr.state.lock().expect("state lock"));
    phases.mark("sets");
    let nodes_told = diffs.len();
    if !diffs.is_empty() || !views.is_empty() || !sets.is_empty() {
        // The sessions' queues, taken under the state lock; the messages are built and
        // queued after it is let go: beats and ticks wait for that lock, and building
        // 5,000 boards' assignments under it held them past the Down threshold.
        let queues: HashMap<NodeId, (mpsc::Sender<ManagerMessage>, quinn::Connection)> = {
            let st = mgr.state.lock().expect("state lock");
            let wanted = sets.iter().map(|(n, _)| n).chain(diffs.keys()).chain(views.iter().map(|(n, _)| n));
            wanted.filter_map(|n| st.sessions.get(n).map(|s| (n.clone(), (s.tx.clone(), s.conn.clone())))).collect()
        };
        let mut lagging = Vec::new();
        let mut queue = |node: &NodeId, messages: &mut dyn Iterator<Item = ManagerMessage>| {
            let Some((tx, conn)) = queues.get(node) else { return };
            for message in messages {
                if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(message) {
                    lagging.push((node.clone(), conn.clone()));
                    break;
                }
            }
        };
        // Before the assignments, so a board has a task's secrets when the task arrives.
        for (node, messages) in sets {
            debug!(%node, "secrets and configs changed");
            queue(&node, &mut messages.into_iter());
        }
        for (node, d) in diffs {
            if !queues.contains_key(&node) {
                continue;
            }
            debug!(%node, upsert = d.upsert.len(), remove = d.remove.len(), "assignments changed");
            queue(&node, &mut dispatcher::diff_messages(d).into_iter());
        }
        // After the assignments, so a board learns a task's peers no earlier than the task.
        for (node, messages) in views {
            debug!(%node, "network view changed");
            queue(&node, &mut messages.into_iter());
        }
        for (node, conn) in lagging {
            warn!(%node, "session is not reading its messages; closing it so the agent resynchronises");
            conn.close(close::LAGGING.into(), b"session fell behind; reconnect");
        }
    }
    phases.mark("queue");
    phases.log(nodes_told);
    // The pass runs again for the next step of a key rotation too.
    Ok(match (wake_at, keys_due) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

/// A pass slower than this is logged at info with the time of each phase (debug below):
/// at 5,000 boards a pass holds the services lock long enough to matter to everyone else.
const SLOW_PASS: Duration = Duration::from_millis(250);

/// The wall time of a pass's phases, for its log line.
struct Phases {
    started: Instant,
    last: Instant,
    spent: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn start() -> Self {
        let now = Instant::now();
        Self { started: now, last: now, spent: Vec::with_capacity(10) }
    }

    /// The phase called `name` ends now.
    fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.spent.push((name, now - self.last));
        self.last = now;
    }

    fn log(&self, nodes_told: usize) {
        let total = self.started.elapsed();
        let slow = total >= SLOW_PASS;
        // Most passes are fast: their line is only made for a debug log.
        if !slow && !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        let phases = self.spent.iter().map(|(n, d)| format!("{n} {}", d.as_millis())).collect::<Vec<_>>().join(", ");
        if slow {
            info!(ms = total.as_millis() as u64, nodes_told, "slow reconcile pass (ms per phase: {phases})");
        } else {
            debug!(ms = total.as_millis() as u64, nodes_told, "reconcile pass (ms per phase: {phases})");
        }
    }
}

/// What a stored pass leaves to do: tell the nodes, and when to run again.
struct Committed {
    diffs: std::collections::BTreeMap<NodeId, dispatcher::NodeDiff>,
    wake_at: Option<Millis>,
}

/// Writes what the pass changed with `write` (one transaction, before anyone is told),
/// then applies it to memory. A failed write leaves memory as stored: the tasks as they
/// were given to the pass, the records unchanged.
fn commit(
    svc: &mut ServiceState,
    outcome: Outcome,
    write: impl FnOnce(&ServiceChanges) -> Result<(), crate::store::StoreError>,
) -> Result<Committed, crate::store::StoreError> {
    let changes = ServiceChanges {
        put_services: outcome.records.iter().collect(),
        remove_services: Vec::new(),
        put_tasks: outcome.put_tasks().collect(),
        remove_tasks: outcome.remove_tasks.iter().collect(),
    };
    if let Err(e) = write(&changes) {
        drop(changes);
        svc.tasks.put_back(outcome.undo());
        return Err(e);
    }
    crate::memory::churned(changes.put_tasks.len() + changes.remove_tasks.len());
    drop(changes);
    let moves = outcome.moves().map(|(id, was, now)| (id.clone(), was.cloned(), now.cloned())).collect();
    let Outcome { tasks, records: changed, diffs, wake_at, .. } = outcome;
    for r in changed {
        svc.records.insert(r.service.id.clone(), r);
    }
    svc.tasks.replace(tasks, moves);
    // Forget the names of removed services once their last task is gone (a walk of the
    // tasks only while some name has no record).
    if svc.names.len() > svc.records.len() {
        let live: HashSet<&ServiceId> = svc.tasks.values().map(|t| &t.service_id).collect();
        let records = &svc.records;
        svc.names.retain(|id, _| records.contains_key(id) || live.contains(id));
    }
    Ok(Committed { diffs, wake_at })
}

/// One line of the pass's log, at the level and with the fields it always had.
fn log_event(event: &PassEvent) {
    match event {
        PassEvent::UnknownTask { node, task } => debug!(%node, %task, "report for a task the manager no longer has"),
        PassEvent::WrongNode { node, task } => {
            warn!(%node, %task, "report for a task assigned to another node; ignored")
        }
        PassEvent::TaskStatus { node, task, state } => debug!(%node, %task, %state, "task status"),
        PassEvent::ReportRefused { node, error } => warn!(%node, %error, "refused a task report"),
        PassEvent::Stopping { task, reason } => info!(%task, %reason, "stopping task"),
        PassEvent::Replacing { task, reason } => debug!(%task, %reason, "stopping task"),
        PassEvent::Update { service, message } => info!(%service, "{message}"),
        PassEvent::Pending { task, reason } => info!(%task, %reason, "task pending"),
        PassEvent::Assigned { task, node } => debug!(%task, %node, "task assigned"),
        PassEvent::DecisionRefused { error } => warn!(%error, "scheduler decision refused"),
    }
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
    let put = |svc: &mut ServiceState, mut record: ServiceRecord| -> Result<ServiceReply, ErrorReply> {
        // Its networks must exist; its VIPs are (re)allocated for its spec before it is stored.
        let others: Vec<&shoal_proto::Service> =
            svc.records.values().filter(|r| r.service.id != record.service.id).map(|r| &r.service).collect();
        let all = svc.tasks.all();
        let current = svc.records.get(&record.service.id).map(|r| &r.service);
        crate::core::ipam::allocate_ingress_ports(&others, current, &mut record.service)?;
        let boards: Vec<std::net::Ipv4Addr> = nodes.iter().filter_map(|n| n.ingress_address).collect();
        crate::core::ipam::assign_vips_beside(&svc.networks, &others, all, &boards, &mut record.service)?;
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
        ServiceRequest::Create(mut spec) => {
            super::objects::fill_versions(&svc, &mut spec)?;
            let record =
                services::create(&records, *spec, &images()?, ServiceId::from_random(shoal_link::random()), wall)?;
            info!(service = %record.service.spec.name, id = %record.service.id, image = %record.service.spec.image, "service created");
            put(&mut svc, record).map(|r| match r {
                ServiceReply::Done(id) => ServiceReply::Created(id),
                other => other,
            })
        }
        ServiceRequest::List => {
            let mut by_service = services::tasks_by_service(svc.tasks.all());
            let views: Vec<_> = records
                .iter()
                .map(|r| services::view(r, &by_service.remove(&r.service.id).unwrap_or_default()))
                .collect();
            Ok(ServiceReply::Services(views.try_into().map_err(internal)?))
        }
        ServiceRequest::Inspect { service } => {
            let r = services::resolve(&records, &service)?;
            let own: Vec<&Task> = svc.tasks.values().filter(|t| t.service_id == r.service.id).collect();
            Ok(ServiceReply::Service(Box::new(services::view(r, &own))))
        }
        ServiceRequest::Ps { services: wanted } => {
            let chosen: Vec<&ServiceRecord> = if wanted.is_empty() {
                records.iter().collect()
            } else {
                wanted.iter().map(|q| services::resolve(&records, q)).collect::<Result<_, _>>()?
            };
            let hostnames = nodes.iter().map(|n| (n.id.clone(), n.description.hostname.clone())).collect();
            let all = svc.tasks.all();
            let views = services::ps(&chosen, all, &hostnames, MAX_TASKS_LISTED);
            Ok(ServiceReply::Tasks(views.try_into().map_err(internal)?))
        }
        ServiceRequest::Update { service, mut spec, version } => {
            super::objects::fill_versions(&svc, &mut spec)?;
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

#[cfg(test)]
mod tests {
    use super::super::tests::{state, task};
    use super::*;

    /// A pass over `svc` with no service records and no nodes: every task must stop.
    fn pass(svc: &mut ServiceState, mono: Millis) -> Outcome {
        let tasks = svc.tasks.take();
        let cluster =
            Cluster { records: &[], nodes: &[], images: &[], names: &svc.names, networks: &svc.networks, boards: &[] };
        let now = Now { mono, wall_ms: 1_700_000_000_000 + mono };
        let mut new_id = || TaskId::from_random([0xEE; 16]);
        svc.reconciler.pass(now, cluster, tasks, Vec::new(), &mut new_id)
    }

    #[test]
    fn a_failed_write_leaves_memory_as_stored_and_a_good_one_applies_the_pass() {
        let mut all = vec![task(1, 1, Some(1)), task(2, 1, Some(2)), task(3, 2, None)];
        all.sort_by(|a, b| a.id.cmp(&b.id));
        let mut svc = state(&all);
        let outcome = pass(&mut svc, 0);
        assert!(!outcome.writes_nothing(), "the pass changes something");
        let failed = commit(&mut svc, outcome, |_| Err(crate::store::StoreError::Io("no space left".into())));
        assert!(failed.is_err());
        assert_eq!(svc.tasks.values().cloned().collect::<Vec<_>>(), all, "memory as stored");
        assert_eq!(svc.tasks_on(&NodeId::from_random([1; 16])).count(), 1);

        let outcome = pass(&mut svc, 1);
        let (mut put, mut removed) = (Vec::new(), Vec::new());
        commit(&mut svc, outcome, |c| {
            put = c.put_tasks.iter().map(|t| (*t).clone()).collect();
            removed = c.remove_tasks.iter().map(|id| (*id).clone()).collect();
            Ok(())
        })
        .unwrap();
        assert!(!put.is_empty() || !removed.is_empty());
        for t in &put {
            assert_eq!(svc.tasks.get(&t.id), Some(t), "memory holds what was written");
        }
        for id in &removed {
            assert!(svc.tasks.get(id).is_none() && !svc.tasks_on(&NodeId::from_random([1; 16])).any(|t| &t.id == id));
        }
    }
}
