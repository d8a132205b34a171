//! What placement decisions know of a node ([`ClusterNode`]) and whether a task's
//! placement rules (constraints, image platforms) allow it there.
//!
//! This is the shared vocabulary of the scheduler and the orchestrator; it holds no
//! state and decides nothing about liveness (that is [`super::membership`]) or storage.

use shoal_proto::services::Placement;
use shoal_proto::{
    Availability, BoundedVec, Constraint, ConstraintKey, ConstraintOp, Hostname, Label, NodeStatus, Resources, Role,
    Text, MAX_LABELS,
};

use super::nodes::NodeRecord;

/// A node as placement sees it: identity, description, the operator's settings and the
/// liveness membership observed. Built by the shell from the store and membership, so
/// the scheduler does not depend on either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// ID.
    pub id: shoal_proto::NodeId,
    /// Hostname.
    pub hostname: Hostname,
    /// Manager or worker; the manager's own record runs no tasks.
    pub role: Role,
    /// CPU architecture as the node reports it (`x86_64`, `aarch64`, `arm`).
    pub arch: Text<16>,
    /// Operating system (`linux`); empty when unknown.
    pub os: Text<16>,
    /// Labels the operator set (`node update --label-add`).
    pub labels: BoundedVec<Label, MAX_LABELS>,
    /// Labels the node was started with (`--label`).
    pub engine_labels: BoundedVec<Label, MAX_LABELS>,
    /// The operator's availability.
    pub availability: Availability,
    /// Liveness.
    pub status: NodeStatus,
    /// Capacity.
    pub resources: Resources,
    /// The node reported its disk short of space: it takes no new task until it has room.
    pub disk_full: bool,
    /// The devices the node reports (`node.devices`).
    pub devices: BoundedVec<Text<64>, { shoal_proto::MAX_NODE_DEVICES }>,
}

impl ClusterNode {
    /// Builds the view of a stored node with its current liveness.
    pub fn from_record(record: &NodeRecord, status: NodeStatus) -> Self {
        Self {
            id: record.id.clone(),
            hostname: record.description.hostname.clone(),
            role: record.role,
            arch: record.description.arch.clone(),
            os: record.description.os.clone(),
            labels: record.labels.clone(),
            engine_labels: record.description.labels.clone(),
            availability: record.availability,
            status,
            resources: record.description.resources,
            disk_full: false,
            devices: record.description.devices.clone(),
        }
    }

    /// Whether new tasks may go here at all: a Ready, Active worker.
    pub fn takes_new_tasks(&self) -> bool {
        self.role == Role::Worker && self.status == NodeStatus::Ready && self.availability == Availability::Active
    }
}

/// Whether every constraint holds on `node`.
pub fn constraints_hold(node: &ClusterNode, constraints: &[Constraint]) -> bool {
    constraints.iter().all(|c| constraint_holds(node, c))
}

/// One constraint. Values compare without regard to ASCII case, and a missing label is
/// "not equal", as in Swarm.
pub fn constraint_holds(node: &ClusterNode, c: &Constraint) -> bool {
    let want = c.value.as_str();
    let equal = match &c.key {
        ConstraintKey::NodeId => node.id.as_str().eq_ignore_ascii_case(want),
        ConstraintKey::Hostname => node.hostname.as_str().eq_ignore_ascii_case(want),
        ConstraintKey::Role => match node.role {
            Role::Manager => want.eq_ignore_ascii_case("manager"),
            Role::Worker => want.eq_ignore_ascii_case("worker"),
        },
        ConstraintKey::Arch => {
            node.arch.as_str().eq_ignore_ascii_case(want) || canonical_arch(&node.arch) == canonical_arch(want)
        }
        ConstraintKey::Os => node.os.as_str().eq_ignore_ascii_case(want),
        // The operator's label wins over the node's own label of the same key.
        ConstraintKey::NodeLabel(k) => label(&node.labels, k)
            .or_else(|| label(&node.engine_labels, k))
            .is_some_and(|v| v.eq_ignore_ascii_case(want)),
        ConstraintKey::EngineLabel(k) => label(&node.engine_labels, k).is_some_and(|v| v.eq_ignore_ascii_case(want)),
        // Paths are case-sensitive: /dev/ttyS0 is not /dev/ttys0.
        ConstraintKey::Devices => node.devices.iter().any(|d| d.as_str() == want),
    };
    match c.op {
        ConstraintOp::Eq => equal,
        ConstraintOp::Ne => !equal,
    }
}

/// The value of label `key`, if set.
fn label<'a>(labels: &'a [Label], key: &str) -> Option<&'a str> {
    labels.iter().find(|l| l.key.as_str() == key).map(|l| l.value.as_str())
}

/// Whether the node can run one of `platforms` (OCI `os/arch[/variant]`); an empty list
/// means the image's platforms are unknown, which does not hold a task back.
pub fn platform_supported(node: &ClusterNode, platforms: &[shoal_proto::Platform]) -> bool {
    if platforms.is_empty() {
        return true;
    }
    let arch = canonical_arch(&node.arch);
    platforms.iter().any(|p| {
        let mut parts = p.split('/');
        let (os, p_arch) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let os_ok = node.os.is_empty() || os.is_empty() || os.eq_ignore_ascii_case(&node.os);
        // The variant (arm/v6 vs v7) is not known from the node's report; any arm passes.
        os_ok && canonical_arch(p_arch) == arch
    })
}

/// Whether the task's placement rules allow `node`, setting aside liveness and capacity.
pub fn placement_allows(node: &ClusterNode, placement: &Placement) -> bool {
    platform_supported(node, &placement.platforms) && constraints_hold(node, &placement.constraints)
}

/// Maps Rust/uname and OCI spellings of an architecture to OCI's, so `x86_64` matches
/// `amd64` and `aarch64` matches `arm64`.
pub fn canonical_arch(arch: &str) -> String {
    let lower = arch.to_ascii_lowercase();
    match lower.as_str() {
        "x86_64" | "amd64" | "x86-64" => "amd64".into(),
        "aarch64" | "arm64" | "armv8" => "arm64".into(),
        "arm" | "armv7" | "armv7l" | "armhf" | "armv6" | "armv6l" | "armel" => "arm".into(),
        "i386" | "i686" | "x86" | "386" => "386".into(),
        _ => lower,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn node(seed: u8, hostname: &str, arch: &str, labels: &[&str]) -> ClusterNode {
        ClusterNode {
            id: shoal_proto::NodeId::from_random([seed; 16]),
            hostname: shoal_proto::text(hostname).unwrap(),
            role: Role::Worker,
            arch: shoal_proto::text(arch).unwrap(),
            os: shoal_proto::text("linux").unwrap(),
            labels: labels.iter().map(|l| Label::parse(l).unwrap()).collect::<Vec<_>>().try_into().unwrap(),
            engine_labels: BoundedVec::new(),
            availability: Availability::Active,
            status: NodeStatus::Ready,
            resources: Resources { cpus: 4, memory_bytes: 4 << 30 },
            disk_full: false,
            devices: BoundedVec::new(),
        }
    }

    fn holds(n: &ClusterNode, c: &str) -> bool {
        constraint_holds(n, &Constraint::parse(c).unwrap())
    }

    #[test]
    fn constraints_match_like_swarm() {
        let mut n = node(1, "pi1", "aarch64", &["zone=EU"]);
        n.engine_labels = vec![Label::parse("zone=us").unwrap(), Label::parse("disk=ssd").unwrap()].try_into().unwrap();
        assert!(holds(&n, "node.labels.zone==eu"), "values compare case-insensitively; operator label wins");
        assert!(holds(&n, "engine.labels.zone==us"));
        assert!(holds(&n, "node.labels.disk==ssd"), "node.labels falls back to the node's own labels");
        assert!(holds(&n, "node.labels.gpu!=yes"), "a missing label is not equal");
        assert!(!holds(&n, "node.labels.gpu==yes"));
        assert!(holds(&n, "node.hostname==PI1"));
        assert!(holds(&n, "node.hostname!=pi2"));
        assert!(holds(&n, "node.arch==arm64") && holds(&n, "node.platform.arch==aarch64"));
        assert!(holds(&n, "node.role==worker") && !holds(&n, "node.role==manager"));
        assert!(holds(&n, &format!("node.id=={}", n.id)));
        assert!(holds(&n, "node.platform.os==linux"));
    }

    #[test]
    fn a_device_constraint_holds_only_where_the_node_reports_it() {
        let mut n = node(1, "pi1", "aarch64", &[]);
        assert!(!holds(&n, "node.devices==/dev/i2c-1") && holds(&n, "node.devices!=/dev/i2c-1"));
        n.devices = vec![shoal_proto::text("/dev/i2c-1").unwrap()].try_into().unwrap();
        assert!(holds(&n, "node.devices==/dev/i2c-1"));
        assert!(!holds(&n, "node.devices==/dev/i2c-2"));
        assert!(!holds(&n, "node.devices==/dev/I2C-1"), "paths are case-sensitive");
    }

    #[test]
    fn platforms_match_across_spellings() {
        let pi = node(1, "pi", "aarch64", &[]);
        let old_pi = node(2, "pi0", "arm", &[]);
        let p = |s: &[&str]| s.iter().map(|p| shoal_proto::text(p).unwrap()).collect::<Vec<_>>();
        assert!(platform_supported(&pi, &p(&["linux/amd64", "linux/arm64"])));
        assert!(!platform_supported(&pi, &p(&["linux/amd64"])));
        assert!(platform_supported(&old_pi, &p(&["linux/arm/v7"])));
        assert!(!platform_supported(&old_pi, &p(&["windows/arm"])));
        assert!(platform_supported(&pi, &[]), "unknown platforms hold nothing back");
    }
}
