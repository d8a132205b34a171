//! Node records and the operator's changes to them: finding a node by ID, ID prefix or
//! hostname, and applying `node update`.

use serde::{Deserialize, Serialize};
use shoal_proto::{
    Availability, BoundedVec, ErrorKind, ErrorReply, Label, LabelKey, NodeDescription, NodeId, Role, MAX_LABELS,
};

/// What the manager stores about a node (its spec and description; liveness lives in
/// [`super::membership`] and is never persisted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// ID, also the certificate's common name.
    pub id: NodeId,
    /// Manager or worker.
    pub role: Role,
    /// Set by the operator.
    pub availability: Availability,
    /// Set by the operator (`--label-add`).
    pub labels: BoundedVec<Label, MAX_LABELS>,
    /// As last reported by the node.
    pub description: NodeDescription,
    /// Where its last session came from.
    pub addr: Option<String>,
    /// Join time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Its own address on `ingress` (the routing mesh's), given the first time it is in
    /// the mesh and kept until the node is removed.
    #[serde(default)]
    pub ingress_address: Option<std::net::Ipv4Addr>,
}

/// Finds the node `query` names: an exact ID, then an exact hostname, then a unique ID
/// prefix, as `docker node` does.
pub fn resolve<'a>(nodes: &'a [NodeRecord], query: &str) -> Result<&'a NodeRecord, ErrorReply> {
    if let Some(n) = nodes.iter().find(|n| n.id.as_str() == query) {
        return Ok(n);
    }
    let by_name: Vec<_> = nodes.iter().filter(|n| n.description.hostname.as_str() == query).collect();
    let candidates = if by_name.is_empty() {
        nodes.iter().filter(|n| !query.is_empty() && n.id.as_str().starts_with(query)).collect()
    } else {
        by_name
    };
    match candidates.as_slice() {
        [one] => Ok(one),
        [] => Err(ErrorReply::new(ErrorKind::NotFound, &format!("no such node: {query}"))),
        many => Err(ErrorReply::new(
            ErrorKind::Ambiguous,
            &format!("node {query} is ambiguous ({} matches): use its ID", many.len()),
        )),
    }
}

/// Applies `node update` to a record.
pub fn apply_update(
    record: &mut NodeRecord,
    availability: Option<Availability>,
    label_add: &[Label],
    label_rm: &[LabelKey],
) -> Result<(), ErrorReply> {
    if let Some(missing) = label_rm.iter().find(|k| !record.labels.iter().any(|l| &l.key == *k)) {
        return Err(ErrorReply::new(
            ErrorKind::NotFound,
            &format!("label {} does not exist on node {}", missing, record.description.hostname),
        ));
    }
    let mut labels: Vec<Label> = record.labels.iter().filter(|l| !label_rm.contains(&l.key)).cloned().collect();
    for add in label_add {
        match labels.iter_mut().find(|l| l.key == add.key) {
            Some(l) => l.value = add.value.clone(),
            None => labels.push(add.clone()),
        }
    }
    labels.sort();
    record.labels = labels
        .try_into()
        .map_err(|_| ErrorReply::new(ErrorKind::InvalidRequest, &format!("a node has at most {MAX_LABELS} labels")))?;
    if let Some(a) = availability {
        record.availability = a;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(seed: u8, hostname: &str) -> NodeRecord {
        NodeRecord {
            id: NodeId::from_random([seed; 16]),
            role: Role::Worker,
            availability: Availability::Active,
            labels: BoundedVec::new(),
            description: NodeDescription { hostname: shoal_proto::text(hostname).unwrap(), ..Default::default() },
            addr: None,
            created_at_ms: 0,
            ingress_address: None,
        }
    }

    #[test]
    fn nodes_are_found_by_id_hostname_or_unique_prefix() {
        let nodes = vec![node(1, "node1"), node(2, "node2")];
        assert_eq!(resolve(&nodes, nodes[0].id.as_str()).unwrap().id, nodes[0].id);
        assert_eq!(resolve(&nodes, "node2").unwrap().id, nodes[1].id);
        assert_eq!(resolve(&nodes, &nodes[1].id.as_str()[..6]).unwrap().id, nodes[1].id);
        assert_eq!(resolve(&nodes, "node9").unwrap_err().kind, ErrorKind::NotFound);
        assert_eq!(resolve(&nodes, "").unwrap_err().kind, ErrorKind::NotFound);
    }

    #[test]
    fn a_shared_hostname_is_ambiguous() {
        let nodes = vec![node(1, "pi"), node(2, "pi")];
        assert_eq!(resolve(&nodes, "pi").unwrap_err().kind, ErrorKind::Ambiguous);
    }

    #[test]
    fn labels_are_added_replaced_and_removed() {
        let mut n = node(1, "n");
        apply_update(&mut n, Some(Availability::Drain), &[Label::parse("zone=a").unwrap()], &[]).unwrap();
        apply_update(&mut n, None, &[Label::parse("zone=b").unwrap(), Label::parse("ssd").unwrap()], &[]).unwrap();
        assert_eq!(n.availability, Availability::Drain);
        assert_eq!(n.labels.len(), 2);
        assert_eq!(n.labels.iter().find(|l| l.key.as_str() == "zone").unwrap().value.as_str(), "b");
        apply_update(&mut n, None, &[], &[shoal_proto::text("ssd").unwrap()]).unwrap();
        assert_eq!(n.labels.len(), 1);
    }

    #[test]
    fn removing_a_missing_label_changes_nothing() {
        let mut n = node(1, "n");
        let before = n.clone();
        let err =
            apply_update(&mut n, Some(Availability::Drain), &[], &[shoal_proto::text("nope").unwrap()]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert_eq!(n, before);
    }
}
