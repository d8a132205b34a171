//! `shoal secret ...` and `shoal config ...` requests, and each board's set of them: the
//! shell around [`crate::core::secrets`] and [`crate::secrets`]. Objects are kept in the
//! store (secrets sealed) and in memory opened, for the sessions.
//!
//! A board's set is the bytes of the objects its live tasks reference. It is queued on
//! the board's session only when it differs (by name and version) from the one last
//! queued, and always before assignments: a board never gets a task whose objects it has
//! not been sent. A new session gets it before its full task set.

use std::collections::{BTreeMap, HashMap};

use shoal_proto::secrets::{
    Data, Kind, ObjectReply, ObjectRequest, ObjectView, Payload, SecretSet, MAX_LISTED, MAX_SET_CHUNK, MAX_USERS,
};
use shoal_proto::{BoundedVec, ErrorKind, ErrorReply, ManagerMessage, NodeId, ServiceSpec, Task};
use tracing::{info, warn};

use super::{internal, Manager, ServiceState, State};
use crate::core::secrets as pure;
use crate::secrets::{key, ObjectRecord, Sealer};
use crate::store::Store;

/// Most payload bytes in one [`SecretSet`] message (one larger object goes alone):
/// below the agent's 1 MiB frame.
const CHUNK_BYTES: usize = 512 * 1024;

/// An object in memory: its record and its bytes (`None` when they do not open, e.g.
/// the key file was replaced; its tasks are then refused with that reason).
pub(super) struct Held {
    pub(super) record: ObjectRecord,
    pub(super) data: Option<Data>,
}

/// What a board was last sent: each object by kind, name and version.
pub(super) type SentSet = Vec<(Kind, String, u64)>;

/// The stored objects, opened.
pub(super) fn load(store: &Store, sealer: &Sealer) -> anyhow::Result<BTreeMap<String, Held>> {
    let mut out = BTreeMap::new();
    for record in store.objects()? {
        let data = match sealer.bytes(&record) {
            Ok(d) => Some(d),
            Err(e) => {
                warn!(name = %record.name, error = %e, "a stored secret can't be opened");
                None
            }
        };
        out.insert(record.key(), Held { record, data });
    }
    Ok(out)
}

/// Gives a service spec's references their objects' current versions, or refuses it.
pub(super) fn fill_versions(svc: &ServiceState, spec: &mut ServiceSpec) -> Result<(), ErrorReply> {
    pure::fill_versions(spec, |kind, name| svc.objects.get(&key(kind, name)).map(|h| h.record.version))
}

fn find<'a>(svc: &'a ServiceState, kind: Kind, query: &str) -> Result<&'a Held, ErrorReply> {
    if let Some(h) = svc.objects.get(&key(kind, query)) {
        return Ok(h);
    }
    let mut by_id = svc.objects.values().filter(|h| h.record.kind == kind && h.record.id.as_str().starts_with(query));
    match (by_id.next(), by_id.next()) {
        (Some(h), None) if !query.is_empty() => Ok(h),
        (Some(_), Some(_)) => Err(ErrorReply::new(
            ErrorKind::Ambiguous,
            &format!("{kind} {query} is ambiguous: give more of its ID, or its name"),
        )),
        _ => Err(ErrorReply::new(ErrorKind::NotFound, &format!("no such {kind}: {query} (see `shoal {kind} ls`)"))),
    }
}

/// Answers one request.
pub(super) fn handle(mgr: &Manager, req: ObjectRequest) -> Result<ObjectReply, ErrorReply> {
    let mut guard = mgr.services.lock().expect("services lock");
    let svc = &mut *guard;
    let wall = shoal_link::wall_ms();
    match req {
        ObjectRequest::Create(spec) => {
            let kind = spec.kind;
            shoal_proto::secrets::check_name(kind, &spec.name)
                .map_err(|e| ErrorReply::new(ErrorKind::InvalidRequest, &e.to_string()))?;
            if svc.objects.contains_key(&key(kind, &spec.name)) {
                return Err(ErrorReply::new(
                    ErrorKind::Conflict,
                    &format!(
                        "{kind} {} already exists: choose another name, or give it new bytes with \
                         `shoal {kind} update {} FILE`",
                        spec.name, spec.name
                    ),
                ));
            }
            let record = ObjectRecord {
                kind,
                id: NodeId::from_random(shoal_link::random()),
                name: spec.name.clone(),
                labels: spec.labels.clone(),
                version: 1,
                created_at_ms: wall,
                updated_at_ms: wall,
                size: spec.data.as_slice().len() as u64,
                stored: mgr.sealer.store_form(kind, &spec.name, spec.data.as_slice()),
            };
            mgr.store.change_object(Some(&record), None, &[]).map_err(internal)?;
            info!(%kind, name = %record.name, id = %record.id, "{kind} created");
            let id = record.id.clone();
            svc.objects.insert(record.key(), Held { record, data: Some(spec.data) });
            Ok(ObjectReply::Created(id))
        }
        ObjectRequest::List(kind) => {
            let mut all: Vec<ObjectView> =
                svc.objects.values().filter(|h| h.record.kind == kind).map(|h| h.record.view()).collect();
            all.truncate(MAX_LISTED);
            Ok(ObjectReply::Objects(all.try_into().map_err(internal)?))
        }
        ObjectRequest::Inspect { kind, name } => {
            let held = find(svc, kind, &name)?;
            let mut view = held.record.view();
            let services = svc.records.values().map(|r| &r.service);
            let mut users = pure::users(kind, &held.record.name, services);
            users.truncate(MAX_USERS);
            view.used_by = users.try_into().map_err(internal)?;
            if kind == Kind::Config {
                view.data = held.data.clone();
            }
            Ok(ObjectReply::Object(Box::new(view)))
        }
        ObjectRequest::Remove { kind, name } => {
            let record = find(svc, kind, &name)?.record.clone();
            pure::check_remove(kind, &record.name, svc.records.values().map(|r| &r.service))?;
            mgr.store.change_object(None, Some(&record.key()), &[]).map_err(internal)?;
            svc.objects.remove(&record.key());
            info!(%kind, name = %record.name, "{kind} removed");
            Ok(ObjectReply::Removed(record.id))
        }
        ObjectRequest::Update { kind, name, data } => {
            let mut record = find(svc, kind, &name)?.record.clone();
            record.version += 1;
            record.updated_at_ms = wall;
            record.size = data.as_slice().len() as u64;
            record.stored = mgr.sealer.store_form(kind, &record.name, data.as_slice());
            let images = mgr.store.images().map_err(internal)?;
            let records: Vec<_> = svc.records.values().cloned().collect();
            let rolled = pure::rotate(&records, &images, kind, &record.name, record.version, wall);
            mgr.store.change_object(Some(&record), None, &rolled.iter().collect::<Vec<_>>()).map_err(internal)?;
            let mut names: Vec<_> = rolled.iter().map(|r| r.service.spec.name.clone()).collect();
            names.truncate(MAX_USERS);
            info!(%kind, name = %record.name, version = record.version, services = names.len(), "{kind} updated");
            let version = record.version;
            svc.objects.insert(record.key(), Held { record, data: Some(data) });
            for r in rolled {
                svc.records.insert(r.service.id.clone(), r);
            }
            mgr.kick();
            Ok(ObjectReply::Updated { version, services: names.try_into().map_err(internal)? })
        }
    }
}

/// `node`'s set now: what it must hold (see [`pure::node_objects`]) with the bytes, and
/// its summary by name and version.
pub(super) fn node_set(svc: &ServiceState, node: &NodeId) -> (SentSet, Vec<ManagerMessage>) {
    node_set_of(svc, node, svc.tasks.values())
}

/// [`node_set`] from `tasks`, which must hold every task of `node` that uses a secret
/// or config (others may be there too).
fn node_set_of<'a>(
    svc: &ServiceState,
    node: &NodeId,
    tasks: impl IntoIterator<Item = &'a Task>,
) -> (SentSet, Vec<ManagerMessage>) {
    let mut sent = SentSet::new();
    let mut payloads = Vec::new();
    for (kind, name) in pure::node_objects(node, tasks) {
        let Some(held) = svc.objects.get(&key(kind, &name)) else { continue };
        let Some(data) = held.data.clone() else { continue };
        sent.push((kind, name.to_string(), held.record.version));
        payloads.push(Payload { kind, name, version: held.record.version, data });
    }
    (sent, messages(payloads))
}

/// Cuts a set into messages (`more` on all but the last); an empty set is one empty
/// message, which tells the board to drop what it holds.
fn messages(payloads: Vec<Payload>) -> Vec<ManagerMessage> {
    let mut chunks: Vec<Vec<Payload>> = vec![Vec::new()];
    let mut bytes = 0;
    for p in payloads {
        let size = p.data.as_slice().len();
        let last = chunks.last_mut().expect("one chunk at least");
        if !last.is_empty() && (last.len() == MAX_SET_CHUNK || bytes + size > CHUNK_BYTES) {
            chunks.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        chunks.last_mut().expect("pushed above").push(p);
    }
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, items)| {
            ManagerMessage::Secrets(SecretSet {
                more: i + 1 < n,
                items: BoundedVec::try_from(items).expect("at most MAX_SET_CHUNK per chunk"),
            })
        })
        .collect()
}

/// The sets that changed since last queued, per node with a session; the sessions
/// remember them as queued.
pub(super) fn changed_sets(svc: &ServiceState, st: &mut State) -> Vec<(NodeId, Vec<ManagerMessage>)> {
    // The tasks that use objects, by node, in one pass over the tasks: each board's set
    // is then made from its own few (scanning every task for every board made a pass
    // cost boards × tasks).
    let mut by_node: HashMap<&NodeId, Vec<&Task>> = HashMap::new();
    for t in svc.tasks.values().filter(|t| !t.spec.secrets.is_empty() || !t.spec.configs.is_empty()) {
        if let Some(node) = &t.node_id {
            by_node.entry(node).or_default().push(t);
        }
    }
    let mut out = Vec::new();
    for (node, session) in st.sessions.iter_mut() {
        let (sent, messages) = node_set_of(svc, node, by_node.get(node).into_iter().flatten().copied());
        if session.secrets.as_ref() != Some(&sent) {
            session.secrets = Some(sent);
            out.push((node.clone(), messages));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(n: usize, size: usize) -> Payload {
        Payload {
            kind: Kind::Secret,
            name: shoal_proto::text(&format!("s{n}")).unwrap(),
            version: 1,
            data: vec![0u8; size].try_into().unwrap(),
        }
    }

    #[test]
    fn sets_are_cut_below_a_frame_and_an_empty_set_is_still_said() {
        let empty = messages(Vec::new());
        assert!(matches!(&empty[..], [ManagerMessage::Secrets(SecretSet { more: false, items })] if items.is_empty()));
        let big = messages((0..5).map(|i| payload(i, 300 * 1024)).collect());
        assert_eq!(big.len(), 5, "300 KiB each: one per message");
        for (i, m) in big.iter().enumerate() {
            let ManagerMessage::Secrets(s) = m else { panic!() };
            assert_eq!(s.more, i < 4);
            assert!(postcard::to_allocvec(m).unwrap().len() < shoal_proto::MAX_FRAME_LEN);
        }
        assert_eq!(messages((0..100).map(|i| payload(i, 10)).collect()).len(), 2, "64 per message");
    }
}
