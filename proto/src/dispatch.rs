//! Service messages: what the CLI asks of services (`shoal service ...`), what the manager
//! assigns to a node, and what the node reports back about its tasks.
//!
//! Assignments travel on the agent's session stream as [`crate::ManagerMessage::Assignments`]:
//! on every new session the manager sends the node's **full** set (possibly in several
//! chunks: `more` is true on all but the last), after which the agent stops and removes
//! whatever runs that is not in the set; afterwards it sends **diffs** (`full: false`).
//! Task status reports travel as [`crate::AgentMessage::TaskStatuses`].

use serde::{Deserialize, Serialize};

use crate::services::{Service, ServiceName, ServiceSpec, Task, TaskId, TaskSpec, TaskState, TaskStatus};
use crate::{BoundedVec, Message, NodeId, Text};

/// Most assignments (or removals) in one message; larger sets are chunked.
pub const MAX_ASSIGNMENTS: usize = 256;
/// Most encoded bytes of assignments in one message (a single larger assignment goes
/// alone), so that a full set of many tasks carrying long arguments or seccomp profiles
/// stays in frames far below the 1 MiB the agent reads manager messages with.
pub const MAX_ASSIGNMENT_BYTES: usize = 48 * 1024;
/// Most task status reports in one message.
pub const MAX_REPORTS: usize = 256;
/// Most services in one listing.
pub const MAX_SERVICES: usize = 1024;
/// Most tasks in one `service ps` answer.
pub const MAX_TASKS_LISTED: usize = 2048;
/// Most `/etc/hosts` lines handed to a task.
pub const MAX_HOSTS: usize = 256;

/// A task as the node that runs it needs to see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The task.
    pub task_id: TaskId,
    /// Its service's name (container names and hostnames: `appserver.1`).
    pub service_name: ServiceName,
    /// Its slot (0 for global services).
    pub slot: u32,
    /// What to run.
    pub spec: TaskSpec,
    /// `Running` to run it; `Shutdown` (or later) to stop it.
    pub desired_state: TaskState,
    /// Extra `/etc/hosts` lines (`IP NAME`), for names on its networks.
    pub hosts: BoundedVec<Text<128>, MAX_HOSTS>,
    /// What the board needs to attach the container to each of its networks, in the
    /// order of `spec.networks`. (Defaulted: an agent's `tasks.json` from before networks
    /// still loads.)
    #[serde(default)]
    pub networks: BoundedVec<crate::networks::AttachmentConfig, { crate::services::MAX_NETWORKS }>,
    /// Its service's ID, for `{{.Service.ID}}` in templates. (Defaulted: a `tasks.json`
    /// from before it still loads; its templates then expand it to nothing.)
    #[serde(default)]
    pub service_id: Option<crate::services::ServiceId>,
}

/// A change of one task's observed status, from its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    /// The task.
    pub task_id: TaskId,
    /// Its new status (state only moves forward).
    pub status: TaskStatus,
}

/// A service as `service ls` and `service inspect` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    /// The service.
    pub service: Service,
    /// Tasks running now.
    pub running: u32,
    /// Tasks wanted (replicas, or eligible nodes for global services).
    pub desired: u32,
    /// Tasks running the current spec (what an update has reached).
    pub updated: u32,
    /// The state of the last update, when one happened.
    pub update_status: Option<UpdateStatus>,
}

/// Progress of a rolling update, as Swarm's `UpdateStatus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    /// Where it stands.
    pub state: UpdateState,
    /// When it started, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// When it ended, if it did.
    pub completed_at_ms: Option<u64>,
    /// Why it is in this state.
    pub message: Message,
}

/// The states of [`UpdateStatus`], as Swarm names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UpdateState {
    /// Tasks are being replaced.
    Updating,
    /// A failure stopped the update; the operator decides what next.
    Paused,
    /// Every task runs the new spec and stayed up through the monitor period.
    Completed,
    /// Going back to the previous spec (by request or after failures).
    RollbackStarted,
    /// A failure stopped the rollback.
    RollbackPaused,
    /// Every task runs the previous spec again.
    RollbackCompleted,
}

impl UpdateState {
    /// Swarm's spelling (`rollback_started`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Updating => "updating",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::RollbackStarted => "rollback_started",
            Self::RollbackPaused => "rollback_paused",
            Self::RollbackCompleted => "rollback_completed",
        }
    }

    /// Whether tasks are being replaced now.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Updating | Self::RollbackStarted)
    }

    /// Whether this is a rollback's state.
    pub fn is_rollback(self) -> bool {
        matches!(self, Self::RollbackStarted | Self::RollbackPaused | Self::RollbackCompleted)
    }
}

impl core::fmt::Display for UpdateState {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task as `service ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    /// The task.
    pub task: Task,
    /// Its service's name.
    pub service_name: ServiceName,
    /// Hostname of its node, if placed.
    pub node_hostname: Option<Text<64>>,
    /// The node's ID, if placed.
    pub node_id: Option<NodeId>,
}

/// `shoal service ...` requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceRequest {
    /// `service create`.
    Create(Box<ServiceSpec>),
    /// `service ls`.
    List,
    /// `service inspect SERVICE`.
    Inspect {
        /// Name, ID or unique ID prefix.
        service: Text<64>,
    },
    /// `service ps SERVICE...` (empty: every service).
    Ps {
        /// Names, IDs or unique ID prefixes.
        services: BoundedVec<Text<64>, 64>,
    },
    /// `service update` / `service scale`: the complete new spec (the CLI reads the old
    /// one with `Inspect` and changes what the flags say).
    Update {
        /// Name, ID or unique ID prefix.
        service: Text<64>,
        /// The new spec.
        spec: Box<ServiceSpec>,
        /// The spec version the CLI read, so a concurrent change is refused rather than lost.
        version: u64,
    },
    /// `service update --rollback`: back to the previous spec.
    Rollback {
        /// Name, ID or unique ID prefix.
        service: Text<64>,
    },
    /// `service rm`.
    Remove {
        /// Name, ID or unique ID prefix.
        service: Text<64>,
    },
}

/// Answers to [`ServiceRequest`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceReply {
    /// Created; its ID.
    Created(crate::services::ServiceId),
    /// Listing.
    Services(BoundedVec<ServiceView, MAX_SERVICES>),
    /// One service.
    Service(Box<ServiceView>),
    /// Tasks, newest first within each slot.
    Tasks(BoundedVec<TaskView, MAX_TASKS_LISTED>),
    /// Done (update, rollback, remove); the service's ID.
    Done(crate::services::ServiceId),
}
