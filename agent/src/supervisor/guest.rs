//! What a task's container sees of itself, as Docker gives it: its hostname (`--hostname`
//! with Swarm's placeholders expanded, else the task ID's first 12 characters), the
//! placeholders in its environment, and the `/etc/resolv.conf` it gets when it is on no
//! overlay network. Pure: the node's facts and the board's `resolv.conf` come in.
//!
//! Placeholders are expanded here, on the board, as Swarm's worker does: the node's own
//! facts are only certain here, and the expanded text is not held to the wire bounds of
//! the template. The manager checked them when the spec was made.

use shoal_proto::dispatch::Assignment;
use shoal_proto::template::{self, Context};

use super::core;

/// The node's facts that placeholders name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// The node's ID.
    pub id: String,
    /// Its hostname (as in `node ls`).
    pub hostname: String,
    /// `linux`.
    pub os: String,
    /// `x86_64`, `aarch64`, `armv7l`.
    pub arch: String,
}

/// Docker's nameservers for a container when the board has none it can reach (moby
/// `libnetwork/resolvconf`: Google's public resolvers).
const FALLBACK_NAMESERVERS: &str = "nameserver 8.8.8.8\nnameserver 8.8.4.4\n";

/// The `resolv.conf` of a container on the bridge only, as Docker writes it for its
/// default bridge: the board's nameservers that a container can reach (loopback ones
/// would be its own), its `search` and `options`; Google's if none is left.
pub fn bridge_resolv_conf(board_conf: &str) -> String {
    crate::net::dns::board_resolv_conf(board_conf).unwrap_or_else(|| {
        let mut text = FALLBACK_NAMESERVERS.to_owned();
        for line in board_conf.lines().map(str::trim) {
            if (line.starts_with("search ") || line.starts_with("options ")) && line.len() <= 256 {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    })
}

/// The `resolv.conf` of a container on the board's own network: the board's file, as
/// Docker bind-mounts the host's (loopback resolvers work there); at most 64 KiB of it.
pub fn host_resolv_conf(board_conf: &str) -> String {
    let mut end = board_conf.len().min(64 << 10);
    while !board_conf.is_char_boundary(end) {
        end -= 1;
    }
    board_conf[..end].to_owned()
}

/// A template or hostname that cannot make a container.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A placeholder the manager should have refused (a spec from an older manager).
    #[error(transparent)]
    Template(#[from] template::TemplateError),
    /// The expanded hostname is not one the kernel takes.
    #[error("hostname {0:?} is not 1 to 63 bytes once expanded: shorten the service's --hostname")]
    Hostname(String),
}

fn context(a: &Assignment, node: &NodeFacts) -> Context {
    Context {
        service_id: a.service_id.as_ref().map(|s| s.as_str().to_owned()).unwrap_or_default(),
        service_name: a.service_name.to_string(),
        service_labels: Vec::new(),
        node_id: node.id.clone(),
        node_hostname: node.hostname.clone(),
        node_os: node.os.clone(),
        node_arch: node.arch.clone(),
        task_id: a.task_id.as_str().to_owned(),
        slot: a.slot,
    }
}

/// The container's hostname.
pub fn hostname(a: &Assignment, node: &NodeFacts) -> Result<String, IdentityError> {
    let Some(asked) = &a.spec.hostname else {
        return Ok(core::hostname(&a.service_name, a.slot, a.task_id.as_str()));
    };
    let name = template::expand(asked, &context(a, node))?;
    if name.is_empty() || name.len() > 63 || name.contains('\0') {
        return Err(IdentityError::Hostname(name));
    }
    Ok(name)
}

/// The task's `KEY=VALUE` entries with their placeholders expanded.
pub fn env(a: &Assignment, node: &NodeFacts) -> Result<Vec<String>, IdentityError> {
    let ctx = context(a, node);
    a.spec.env.iter().map(|e| Ok(template::expand(e, &ctx)?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::services::ServiceSpec;
    use shoal_proto::{BoundedVec, TaskState};

    fn assignment(hostname: Option<&str>, env: &[&str]) -> Assignment {
        let mut spec = ServiceSpec::new("db".try_into().unwrap(), "postgres:15".try_into().unwrap());
        spec.hostname = hostname.map(|h| h.try_into().unwrap());
        spec.env = env.iter().map(|e| (*e).try_into().unwrap()).collect::<Vec<_>>().try_into().unwrap();
        Assignment {
            task_id: shoal_proto::TaskId::from_random([7; 16]),
            service_name: "db".try_into().unwrap(),
            slot: 2,
            spec: spec.task_spec(),
            desired_state: TaskState::Running,
            hosts: BoundedVec::new(),
            networks: BoundedVec::new(),
            service_id: Some(shoal_proto::ServiceId::from_random([9; 16])),
        }
    }

    fn node() -> NodeFacts {
        NodeFacts { id: "d7igf4r6".into(), hostname: "node1".into(), os: "linux".into(), arch: "x86_64".into() }
    }

    #[test]
    fn the_hostname_is_the_expanded_template_or_the_short_task_id() {
        let a = assignment(None, &[]);
        assert_eq!(hostname(&a, &node()).unwrap(), a.task_id.as_str()[..12]);
        let a = assignment(Some("{{.Service.Name}}-{{.Task.Slot}}-{{.Node.Hostname}}"), &[]);
        assert_eq!(hostname(&a, &node()).unwrap(), "db-2-node1");
        let long = assignment(Some("{{.Task.Name}}-{{.Task.Name}}-{{.Task.Name}}"), &[]);
        let e = hostname(&long, &node()).unwrap_err().to_string();
        assert!(e.contains("not 1 to 63 bytes once expanded"), "{e}");
    }

    #[test]
    fn environment_placeholders_are_expanded_on_the_board() {
        let a = assignment(None, &["SLOT={{.Task.Slot}}", "WHERE={{.Node.ID}}/{{.Service.ID}}", "PLAIN=x"]);
        let service = shoal_proto::ServiceId::from_random([9; 16]);
        assert_eq!(env(&a, &node()).unwrap(), ["SLOT=2".into(), format!("WHERE=d7igf4r6/{service}"), "PLAIN=x".into()]);
    }

    #[test]
    fn bridge_containers_get_the_boards_reachable_nameservers_or_dockers_fallback() {
        let board = "nameserver 127.0.0.53\nsearch lan\noptions edns0\n";
        assert_eq!(bridge_resolv_conf(board), "nameserver 8.8.8.8\nnameserver 8.8.4.4\nsearch lan\noptions edns0\n");
        assert_eq!(bridge_resolv_conf("nameserver 10.0.0.1\n"), "nameserver 10.0.0.1\n");
        assert_eq!(host_resolv_conf(board), board);
        assert_eq!(host_resolv_conf(&"#".repeat(100_000)).len(), 64 << 10);
    }
}
