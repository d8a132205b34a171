//! The updater, in its first, unpaced form: when a service's spec changes in a way its
//! tasks carry (image, command, environment, ports, resources, placement), every task
//! the manager wants running with the old task spec is replaced at once, in its slot (or
//! on its node, for global services). A change that only its tasks' count depends on
//! (`--replicas`) replaces nothing.
//!
//! The old task is asked to stop and the new one is created in the same step. The new
//! one is scheduled like any other; a host-mode port the old one still binds keeps it
//! pending until the old one is reported stopped, so such a service is in effect updated
//! stop-first. Pacing (`--update-parallelism`, `--update-delay`, failure actions) is not
//! done here yet. No I/O, no clock.

use shoal_proto::{Service, Task, TaskId, TaskState};

use super::orchestrator::{new_task, Now, Plan, Stop};

/// What to create and stop so that every live task runs its service's current spec.
pub fn replace_outdated(now: Now, services: &[Service], tasks: &[Task], new_id: &mut dyn FnMut() -> TaskId) -> Plan {
    let mut plan = Plan::default();
    for service in services {
        let spec = service.spec.task_spec();
        for t in tasks.iter().filter(|t| t.service_id == service.id && t.is_desired_running() && t.spec != spec) {
            if t.status.state < TaskState::Assigned {
                plan.remove.push(t.id.clone());
            } else {
                plan.shutdown.push(Stop { task: t.id.clone(), reason: "service updated".into() });
            }
            // A global task stays on its node; a replicated one is placed afresh.
            let node = if t.slot == 0 { t.node_id.clone() } else { None };
            plan.create.push(new_task(now, service, t.slot, node, new_id()));
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{ServiceId, ServiceMode, ServiceSpec, TaskStatus};

    fn service(image: &str, replicas: u32, version: u64) -> Service {
        let mut spec = ServiceSpec::new(shoal_proto::text("web").unwrap(), shoal_proto::text(image).unwrap());
        spec.mode = ServiceMode::Replicated { replicas };
        Service { id: ServiceId::from_random([1; 16]), spec, spec_version: version, created_at_ms: 0 }
    }

    fn running(s: &Service, slot: u32, state: TaskState) -> Task {
        Task {
            id: TaskId::from_random([slot as u8; 16]),
            service_id: s.id.clone(),
            slot,
            node_id: None,
            spec: s.spec.task_spec(),
            spec_version: s.spec_version,
            desired_state: TaskState::Running,
            status: TaskStatus::new(state, 0, ""),
            created_at_ms: 0,
        }
    }

    #[test]
    fn a_new_image_replaces_every_live_task_in_its_slot_and_scaling_replaces_none() {
        let v1 = service("demo/app:1.0", 2, 1);
        let tasks = vec![running(&v1, 1, TaskState::Running), running(&v1, 2, TaskState::Pending)];
        let mut n = 0u8;
        let mut ids = || {
            n += 1;
            TaskId::from_random([100 + n; 16])
        };
        let now = Now { mono: 0, wall_ms: 0 };
        assert!(replace_outdated(now, &[service("demo/app:1.0", 5, 2)], &tasks, &mut ids).is_empty());
        let plan = replace_outdated(now, &[service("demo/app:2.0", 2, 3)], &tasks, &mut ids);
        assert_eq!(plan.create.iter().map(|t| (t.slot, t.spec_version)).collect::<Vec<_>>(), vec![(1, 3), (2, 3)]);
        assert_eq!(plan.shutdown.len(), 1, "the running one is stopped");
        assert_eq!(plan.remove, vec![tasks[1].id.clone()], "the never-placed one is dropped");
    }
}
