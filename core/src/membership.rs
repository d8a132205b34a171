//! Node liveness: Ready while heartbeats arrive, Down once they stop for longer than the
//! timeout, Unknown for nodes the manager has not heard from since it started.

use std::collections::HashMap;

use shoal_proto::{NodeId, NodeStatus};

use super::Millis;

/// Liveness settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessConfig {
    /// Period at which agents send heartbeats.
    pub heartbeat_period: Millis,
    /// Heartbeat periods that may be missed before a node is Down (Swarm: 3).
    pub missed_heartbeats: u32,
    /// How long a node known from the store may stay Unknown after the manager starts,
    /// giving agents time to reconnect before they are called Down.
    pub unknown_grace: Millis,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        // 500 ms × 3 = Down 1.5 s after the last heartbeat, so a dead board is Down well
        // within 3 s (Swarm's defaults, 5 s × 3, take ~15 s). The grace after a manager
        // start is twice the agents' longest reconnect back-off (5 s): a board that was
        // waiting out a long manager outage must not be called Down, and its tasks
        // started elsewhere, just before it reconnects.
        Self { heartbeat_period: 500, missed_heartbeats: 3, unknown_grace: 10_000 }
    }
}

impl LivenessConfig {
    /// Silence after which a node is Down.
    pub fn down_after(&self) -> Millis {
        self.heartbeat_period * Millis::from(self.missed_heartbeats)
    }
}

/// A change of a node's status, with the reason to show in `node inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The node.
    pub node: NodeId,
    /// Status before.
    pub from: NodeStatus,
    /// Status after.
    pub to: NodeStatus,
    /// Why.
    pub reason: String,
}

#[derive(Debug, Clone)]
struct Liveness {
    status: NodeStatus,
    last_heard: Option<Millis>,
    since: Millis,
    message: String,
    /// The last refused second board with this node's identity: when, and what to do.
    duplicate: Option<(Millis, String)>,
}

/// How long `node inspect` keeps saying a second board was refused after the last try.
pub const DUPLICATE_NOTE_FOR: Millis = 60_000;

/// What the manager knows of each node's liveness.
#[derive(Debug, Default)]
pub struct Membership {
    config: LivenessConfig,
    nodes: HashMap<NodeId, Liveness>,
}

impl Membership {
    /// Empty membership with these settings.
    pub fn new(config: LivenessConfig) -> Self {
        Self { config, nodes: HashMap::new() }
    }

    /// The settings.
    pub fn config(&self) -> LivenessConfig {
        self.config
    }

    /// Starts tracking a node known from the store, not heard from yet.
    pub fn track(&mut self, now: Millis, node: NodeId) {
        self.nodes.entry(node).or_insert(Liveness {
            status: NodeStatus::Unknown,
            last_heard: None,
            since: now,
            message: "waiting for the node to reconnect".into(),
            duplicate: None,
        });
    }

    /// Stops tracking a removed node.
    pub fn forget(&mut self, node: &NodeId) {
        self.nodes.remove(node);
    }

    /// A heartbeat or a new session arrived from `node`.
    pub fn heard(&mut self, now: Millis, node: &NodeId) -> Option<Transition> {
        let entry = self.nodes.entry(node.clone()).or_insert(Liveness {
            status: NodeStatus::Unknown,
            last_heard: None,
            since: now,
            message: String::new(),
            duplicate: None,
        });
        entry.last_heard = Some(now);
        if entry.status == NodeStatus::Ready {
            return None;
        }
        let from = entry.status;
        entry.status = NodeStatus::Ready;
        entry.since = now;
        entry.message = String::new();
        Some(Transition { node: node.clone(), from, to: NodeStatus::Ready, reason: "heartbeat received".into() })
    }

    /// The node's session ended (it closed it, or it was refused): Down now, without
    /// waiting for missed heartbeats.
    pub fn lost(&mut self, now: Millis, node: &NodeId, reason: &str) -> Option<Transition> {
        let entry = self.nodes.get_mut(node)?;
        if entry.status == NodeStatus::Down {
            return None;
        }
        let from = entry.status;
        entry.status = NodeStatus::Down;
        entry.since = now;
        entry.message = reason.to_owned();
        Some(Transition { node: node.clone(), from, to: NodeStatus::Down, reason: reason.to_owned() })
    }

    /// Marks Down every node silent for too long. Call it a few times per heartbeat period.
    pub fn tick(&mut self, now: Millis) -> Vec<Transition> {
        let down_after = self.config.down_after();
        let grace = self.config.unknown_grace;
        let mut out = Vec::new();
        for (id, l) in &mut self.nodes {
            let (expired, reason) = match (l.status, l.last_heard) {
                (NodeStatus::Ready, Some(t)) => (
                    now.saturating_sub(t) >= down_after,
                    format!("heartbeat failure: no heartbeat for {} ms", now.saturating_sub(t)),
                ),
                (NodeStatus::Unknown, _) => (
                    now.saturating_sub(l.since) >= grace,
                    "node did not reconnect after the manager started".to_owned(),
                ),
                _ => (false, String::new()),
            };
            if expired {
                out.push(Transition { node: id.clone(), from: l.status, to: NodeStatus::Down, reason: reason.clone() });
                l.status = NodeStatus::Down;
                l.since = now;
                l.message = reason;
            }
        }
        out.sort_by(|a, b| a.node.cmp(&b.node));
        out
    }

    /// Status, milliseconds since last heard (if ever), and the status message.
    pub fn status(&self, now: Millis, node: &NodeId) -> (NodeStatus, Option<Millis>, &str) {
        match self.nodes.get(node) {
            Some(l) => (l.status, l.last_heard.map(|t| now.saturating_sub(t)), &l.message),
            None => (NodeStatus::Unknown, None, ""),
        }
    }

    /// Records that a second board with `node`'s identity was refused, and what to do.
    pub fn note_duplicate(&mut self, now: Millis, node: &NodeId, what: String) {
        if let Some(l) = self.nodes.get_mut(node) {
            l.duplicate = Some((now, what));
        }
    }

    /// What to say about a second board refused within the last [`DUPLICATE_NOTE_FOR`].
    pub fn duplicate(&self, now: Millis, node: &NodeId) -> Option<&str> {
        let (at, what) = self.nodes.get(node)?.duplicate.as_ref()?;
        (now.saturating_sub(*at) < DUPLICATE_NOTE_FOR).then_some(what.as_str())
    }
}

/// What to do with a new session for a node that already has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecondSession {
    /// The old session is dead or dying (a network flap, an agent restart): the new
    /// one replaces it.
    Replace,
    /// The old session spoke after the new one arrived: two boards carry the same
    /// identity (a copied data dir, a cloned SD card). The new one is refused.
    Refuse,
    /// Not known yet: ask again a little later.
    Wait,
}

/// Longest a new session waits to learn whether the old one is alive. Below the agent's
/// 5 s request timeout, so even with a long heartbeat period the answer arrives in time.
pub const MAX_SECOND_SESSION_WAIT: Millis = 3_000;

impl LivenessConfig {
    /// Decides about a session that arrived at `arrived` for a node whose current
    /// session was last heard at `old_last_heard`. A live agent beats every period, so
    /// an old session silent for two periods since the new one came is not alive; one
    /// that beats after it is. A reconnect after a flap or a restart therefore waits at
    /// most two periods (1 s by default), and a clone is refused without ever taking over.
    pub fn second_session(&self, arrived: Millis, old_last_heard: Millis, now: Millis) -> SecondSession {
        if old_last_heard > arrived {
            SecondSession::Refuse
        } else if now.saturating_sub(arrived) >= (2 * self.heartbeat_period).min(MAX_SECOND_SESSION_WAIT) {
            SecondSession::Replace
        } else {
            SecondSession::Wait
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u8) -> NodeId {
        NodeId::from_random([n; 16])
    }

    #[test]
    fn a_node_is_ready_when_heard_and_down_after_three_missed_periods() {
        let mut m = Membership::new(LivenessConfig::default());
        let t = m.heard(0, &id(1)).unwrap();
        assert_eq!((t.from, t.to), (NodeStatus::Unknown, NodeStatus::Ready));
        assert!(m.tick(1_499).is_empty());
        let down = m.tick(1_500);
        assert_eq!(down.len(), 1);
        assert_eq!(down[0].to, NodeStatus::Down);
        assert!(down[0].reason.contains("heartbeat failure"));
        assert!(m.tick(10_000).is_empty(), "Down is reported once");
    }

    #[test]
    fn heartbeats_keep_a_node_ready() {
        let mut m = Membership::new(LivenessConfig::default());
        for t in (0..20_000).step_by(500) {
            m.heard(t, &id(1));
            assert!(m.tick(t + 250).is_empty());
        }
    }

    #[test]
    fn a_node_that_comes_back_is_ready_again() {
        let mut m = Membership::new(LivenessConfig::default());
        m.heard(0, &id(1));
        m.tick(2_000);
        let back = m.heard(5_000, &id(1)).unwrap();
        assert_eq!((back.from, back.to), (NodeStatus::Down, NodeStatus::Ready));
        assert_eq!(m.status(5_100, &id(1)), (NodeStatus::Ready, Some(100), ""));
    }

    #[test]
    fn known_nodes_get_a_grace_period_after_a_manager_restart() {
        let mut m = Membership::new(LivenessConfig::default());
        m.track(0, id(1));
        m.track(0, id(2));
        let grace = LivenessConfig::default().unknown_grace;
        for t in (1_000..grace).step_by(500) {
            m.heard(t, &id(1));
            assert!(m.tick(t).is_empty());
        }
        m.heard(grace, &id(1));
        let down = m.tick(grace);
        assert_eq!(down.iter().map(|t| t.node.clone()).collect::<Vec<_>>(), vec![id(2)]);
    }

    #[test]
    fn a_closed_session_is_down_at_once() {
        let mut m = Membership::new(LivenessConfig::default());
        m.heard(0, &id(1));
        assert_eq!(m.lost(10, &id(1), "agent shut down").unwrap().to, NodeStatus::Down);
        assert!(m.lost(20, &id(1), "again").is_none());
    }

    #[test]
    fn a_second_session_replaces_a_silent_one_and_is_refused_beside_a_live_one() {
        let cfg = LivenessConfig::default();
        // The old session last beat before the new one came, and stays silent: a restart.
        assert_eq!(cfg.second_session(1_000, 900, 1_000), SecondSession::Wait);
        assert_eq!(cfg.second_session(1_000, 900, 1_999), SecondSession::Wait);
        assert_eq!(cfg.second_session(1_000, 900, 2_000), SecondSession::Replace);
        // It beats after the new one came: two boards, one identity.
        assert_eq!(cfg.second_session(1_000, 1_400, 1_400), SecondSession::Refuse);
        // A very long period still answers before the agent's request times out.
        let slow = LivenessConfig { heartbeat_period: 10_000, ..cfg };
        assert_eq!(slow.second_session(0, 0, MAX_SECOND_SESSION_WAIT), SecondSession::Replace);
    }

    proptest! {
        /// Whatever the schedule of heartbeats, a node is Down exactly when it has been
        /// silent for at least the timeout at the last tick.
        #[test]
        fn down_means_silent_for_the_timeout(beats in proptest::collection::btree_set(0u64..30_000, 0..60)) {
            let cfg = LivenessConfig::default();
            let mut m = Membership::new(cfg);
            let n = id(7);
            m.track(0, n.clone());
            let mut last: Option<u64> = None;
            for now in (0..30_000).step_by(100) {
                if beats.contains(&now) { m.heard(now, &n); last = Some(now); }
                m.tick(now);
                let (status, _, _) = m.status(now, &n);
                let expected = match last {
                    Some(t) if now - t < cfg.down_after() => NodeStatus::Ready,
                    Some(_) => NodeStatus::Down,
                    None if now < cfg.unknown_grace => NodeStatus::Unknown,
                    None => NodeStatus::Down,
                };
                prop_assert_eq!(status, expected, "at {}", now);
            }
        }
    }
}
