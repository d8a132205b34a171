//! Secrets and configs as services use them: a spec's references checked and given
//! their objects' current versions, the services a rotation rolls, the refusal to remove
//! one in use, and which objects a node must hold. No bytes, no crypto, no I/O: the
//! shell seals, stores and sends.
//!
//! Terms: an *object* is a secret or a config; a *reference* ([`SecretRef`]) is a
//! service's use of one, with the object's version the service's tasks were made from.
//! A rotation (`secret update`) gives the object a new version and each service using
//! it a new spec whose references carry it, so the updater rolls the service with its
//! own update config, as for `service update`.
//!
//! A node holds the objects of its tasks that the manager wants running and that have
//! not ended: an object leaves the node's set when the last such task ends.

use std::collections::BTreeSet;

use shoal_proto::secrets::{Kind, ObjectName, SecretRef};
use shoal_proto::services::ServiceName;
use shoal_proto::{ErrorKind, ErrorReply, NodeId, Service, ServiceSpec, Task};

use crate::dispatcher::dispatched_to;
use crate::images::ImageRecord;
use crate::services::{self, ServiceRecord};

/// The references of `spec` of one kind.
pub fn refs(spec: &ServiceSpec, kind: Kind) -> &[SecretRef] {
    match kind {
        Kind::Secret => &spec.secrets,
        Kind::Config => &spec.configs,
    }
}

/// Changes each reference of one kind in place (the bounded list has no `&mut` access:
/// it is taken apart and put back at the same length).
fn edit_refs<E>(
    spec: &mut ServiceSpec,
    kind: Kind,
    mut f: impl FnMut(&mut SecretRef) -> Result<(), E>,
) -> Result<(), E> {
    let list = match kind {
        Kind::Secret => &mut spec.secrets,
        Kind::Config => &mut spec.configs,
    };
    let mut items = std::mem::take(list).into_vec();
    let result = items.iter_mut().try_for_each(&mut f);
    *list = items.try_into().expect("the same length as before");
    result
}

/// Gives each reference of `spec` its object's current version (`version_of`); an
/// unknown object is refused, saying how to create it.
pub fn fill_versions(spec: &mut ServiceSpec, version_of: impl Fn(Kind, &str) -> Option<u64>) -> Result<(), ErrorReply> {
    for kind in [Kind::Secret, Kind::Config] {
        edit_refs(spec, kind, |r| {
            r.version = version_of(kind, &r.source).ok_or_else(|| {
                ErrorReply::new(
                    ErrorKind::NotFound,
                    &format!(
                        "{kind} {} not found: create it first with `shoal {kind} create {} FILE`",
                        r.source, r.source
                    ),
                )
            })?;
            Ok::<(), ErrorReply>(())
        })?;
    }
    Ok(())
}

/// The names of the services that reference the object, sorted.
pub fn users<'a>(kind: Kind, name: &str, services: impl IntoIterator<Item = &'a Service>) -> Vec<ServiceName> {
    let mut out: Vec<ServiceName> = services
        .into_iter()
        .filter(|s| refs(&s.spec, kind).iter().any(|r| r.source.as_str() == name))
        .map(|s| s.spec.name.clone())
        .collect();
    out.sort();
    out
}

/// `rm` of an object in use is refused, naming the services (Docker's words).
pub fn check_remove<'a>(
    kind: Kind,
    name: &str,
    services: impl IntoIterator<Item = &'a Service>,
) -> Result<(), ErrorReply> {
    let using = users(kind, name, services);
    if using.is_empty() {
        return Ok(());
    }
    let list = using.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ");
    Err(ErrorReply::new(
        ErrorKind::Conflict,
        &format!(
            "{kind} '{name}' is in use by the following service(s): {list}: remove it from them first \
             (`shoal service update --{kind}-rm {name} SERVICE`)"
        ),
    ))
}

/// After the object got `version`: each service using it (at another version) with a
/// new spec carrying it, its update started with the service's own update config. A
/// service whose image is no longer loaded (`image rm --force`) can't be updated and is
/// left as it is: its new tasks are rejected anyway until the image returns.
pub fn rotate(
    records: &[ServiceRecord],
    images: &[ImageRecord],
    kind: Kind,
    name: &str,
    version: u64,
    wall_ms: u64,
) -> Vec<ServiceRecord> {
    records
        .iter()
        .filter_map(|r| {
            let mut spec = r.service.spec.clone();
            let mut touched = false;
            let _ = edit_refs(&mut spec, kind, |x| {
                if x.source.as_str() == name && x.version != version {
                    x.version = version;
                    touched = true;
                }
                Ok::<(), ()>(())
            });
            touched.then(|| services::update(r, spec, r.service.spec_version, images, wall_ms).ok()).flatten()
        })
        .collect()
}

/// The objects `node` must hold: those its tasks reference that the manager wants
/// running and that have not ended.
pub fn node_objects<'a>(node: &NodeId, tasks: impl IntoIterator<Item = &'a Task>) -> BTreeSet<(Kind, ObjectName)> {
    let mut out = BTreeSet::new();
    for t in tasks {
        if dispatched_to(t) != Some(node) || !t.is_desired_running() || t.status.state.is_terminal() {
            continue;
        }
        for r in &t.spec.secrets {
            out.insert((Kind::Secret, r.source.clone()));
        }
        for r in &t.spec.configs {
            out.insert((Kind::Config, r.source.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{ImageRef, ServiceId, TaskId, TaskState, TaskStatus};

    fn spec(name: &str, secret: Option<&str>) -> ServiceSpec {
        let mut s = ServiceSpec::new(shoal_proto::text(name).unwrap(), ImageRef::try_from("redis:latest").unwrap());
        if let Some(x) = secret {
            s.secrets.push(SecretRef::parse(Kind::Secret, x).unwrap()).unwrap();
        }
        s
    }

    fn images() -> Vec<ImageRecord> {
        vec![ImageRecord {
            reference: "redis:latest".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            platforms: vec!["linux/amd64".into()],
            size: 1,
            blobs: vec![],
            loaded_at_ms: 0,
        }]
    }

    fn record(name: &str, secret: Option<&str>) -> ServiceRecord {
        services::create(&[], spec(name, secret), &images(), ServiceId::from_random([name.len() as u8; 16]), 1).unwrap()
    }

    #[test]
    fn references_get_current_versions_and_unknown_ones_are_refused() {
        let mut s = spec("db", Some("pw"));
        fill_versions(&mut s, |k, n| (k == Kind::Secret && n == "pw").then_some(3)).unwrap();
        assert_eq!(s.secrets[0].version, 3);
        let e = fill_versions(&mut spec("db", Some("nope")), |_, _| None).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert!(e.message.contains("shoal secret create nope"), "{}", e.message);
    }

    #[test]
    fn removal_in_use_names_the_services() {
        let (a, b, c) = (record("web", Some("pw")), record("api", Some("pw")), record("db", None));
        let all = [&a.service, &b.service, &c.service];
        let e = check_remove(Kind::Secret, "pw", all).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict);
        assert!(e.message.contains("api, web"), "{}", e.message);
        assert!(check_remove(Kind::Config, "pw", all).is_ok(), "configs are another namespace");
        assert!(check_remove(Kind::Secret, "other", all).is_ok());
    }

    #[test]
    fn a_rotation_rolls_exactly_the_services_using_it() {
        let mut a = record("web", Some("pw"));
        fill_versions(&mut a.service.spec, |_, _| Some(1)).unwrap();
        let b = record("db", None);
        let rolled = rotate(&[a.clone(), b], &images(), Kind::Secret, "pw", 2, 9);
        assert_eq!(rolled.len(), 1);
        let r = &rolled[0];
        assert_eq!((r.service.spec.secrets[0].version, r.service.spec_version), (2, a.service.spec_version + 1));
        assert!(r.update.as_ref().is_some_and(|u| u.status.state.is_active()), "an update is under way");
        assert!(rotate(&rolled, &images(), Kind::Secret, "pw", 2, 10).is_empty(), "already at that version");
    }

    #[test]
    fn a_node_holds_only_what_its_live_tasks_use() {
        let node = NodeId::from_random([1; 16]);
        let other = NodeId::from_random([2; 16]);
        let task = |n: &NodeId, state: TaskState, secret: &str| {
            let mut s = spec("web", Some(secret)).task_spec();
            s.configs.push(SecretRef::parse(Kind::Config, "conf").unwrap()).unwrap();
            Task {
                id: TaskId::from_random([secret.len() as u8; 16]),
                service_id: ServiceId::from_random([9; 16]),
                slot: 1,
                node_id: Some(n.clone()),
                spec: s,
                spec_version: 1,
                desired_state: TaskState::Running,
                status: TaskStatus::new(state, 0, ""),
                created_at_ms: 0,
                networks: Default::default(),
            }
        };
        let tasks = [
            task(&node, TaskState::Running, "a"),
            task(&node, TaskState::Failed, "bb"),
            task(&other, TaskState::Running, "ccc"),
        ];
        let got: Vec<_> = node_objects(&node, &tasks).into_iter().map(|(k, n)| format!("{k}/{n}")).collect();
        assert_eq!(got, ["secret/a", "config/conf"]);
    }
}
