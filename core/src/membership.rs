//! Node liveness: Ready while a node shows signs of life, Down once it has been silent
//! for longer than its threshold, Unknown for nodes the manager has not heard from since
//! it started.
//!
//! The threshold is learned per node (see `docs/failure-detection.md`). A node beats every
//! `heartbeat_period` on a clean link; each beat carries a sequence number, so the manager
//! knows how many beats the link lost ([`Membership::beat`]) and keeps a moving estimate of
//! the loss rate. The threshold is the silence a live node on that link reaches less than
//! once in [`FALSE_DOWN_ODDS`] beats: one period plus `margin` on a clean link, enough
//! periods to cover a run of lost beats on a lossy one, plus the round-trip time,
//! capped at `max_down`. A lossy node is asked to beat every `fast_period` instead
//! ([`Membership::advice`]), which keeps its threshold short at a few bytes more.
//!
//! Damping: a node that came back within [`FLAP_WINDOW`] of being called Down by timeout
//! flapped; each flap doubles its threshold (up to `max_down`) until it has been steady for
//! [`FLAP_MEMORY`], so a flapping board does not have its tasks rescheduled again and again.
//!
//! A node silent for `heartbeat_period + margin / 4` is a suspect ([`Membership::suspects`]):
//! the shell probes it, and any answer counts as heard, so one lost beat on a clean link
//! costs a probe, not a failover.

use std::collections::HashMap;

use shoal_proto::{NodeId, NodeStatus};

use super::Millis;

/// Liveness settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessConfig {
    /// Period at which agents on a clean link send heartbeats.
    pub heartbeat_period: Millis,
    /// Period asked of agents whose link loses heartbeats.
    pub fast_period: Millis,
    /// Silence beyond the expected beat before a node on a clean link is Down: covers
    /// timer jitter and a probe's round trip.
    pub margin: Millis,
    /// Longest threshold, whatever the link and the node's flaps.
    pub max_down: Millis,
    /// How long a node known from the store may stay Unknown after the manager starts,
    /// giving agents time to reconnect before they are called Down.
    pub unknown_grace: Millis,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        // A beat every 1.5 s, one small datagram with no answer, keeps an idle board under
        // 50 B/s on the wire; Down 1.5 + 0.8 = 2.3 s after the last beat keeps a power cut
        // on a LAN Down within 3 s (Swarm's defaults, 5 s × 3, take ~15 s). On a lossy
        // link 0.5 s beats keep the threshold near 5 s at 10% loss. The grace after a
        // manager start is twice the agents' longest reconnect back-off (5 s): a board that
        // was waiting out a long manager outage must not be called Down, and its tasks
        // started elsewhere, just before it reconnects.
        Self { heartbeat_period: 1_500, fast_period: 500, margin: 800, max_down: 10_000, unknown_grace: 10_000 }
    }
}

impl LivenessConfig {
    /// The defaults with another clean-link period (`manager run --heartbeat-period`): a
    /// lossy link beats no slower than that, and the cap leaves room for a few periods.
    pub fn with_period(period: Millis) -> Self {
        let d = Self::default();
        Self {
            heartbeat_period: period,
            fast_period: d.fast_period.min(period),
            max_down: d.max_down.max(4 * period + d.margin),
            ..d
        }
    }

    /// Silence after which a node on a clean link is Down.
    pub fn down_after(&self) -> Millis {
        self.heartbeat_period + self.margin
    }
}

/// A live node's silence exceeds its threshold less often than once in this many beats.
pub const FALSE_DOWN_ODDS: f64 = 1e5;
/// Back from Down within this long: a flap, not a failure.
pub const FLAP_WINDOW: Millis = 10_000;
/// Flaps are forgotten after this long without one.
pub const FLAP_MEMORY: Millis = 300_000;
/// At most this many flaps count (threshold × 2^3, capped at `max_down` anyway).
const MAX_FLAPS: u32 = 3;
/// Weight of each beat in the loss estimate (a moving average over ~32 beats).
const LOSS_WEIGHT: f64 = 1.0 / 32.0;
/// Above this loss rate a node is asked to beat fast, below [`SLOW_BELOW`] slow again.
const FAST_ABOVE: f64 = 0.01;
const SLOW_BELOW: f64 = 0.003;

/// What the manager has learned about one node's link.
#[derive(Debug, Clone, Copy, Default)]
struct Link {
    /// Period the node was last asked to beat at (0: the default period).
    period: Millis,
    /// Moving estimate of the fraction of beats lost.
    loss: f64,
    /// Round-trip time the transport measured, ms.
    rtt: Millis,
    /// Flaps remembered.
    flaps: u32,
    /// When the last flap ended.
    last_flap: Millis,
    /// When the node was last called Down by timeout.
    timed_out: Option<Millis>,
}

/// Most beats tolerated lost in a row, whatever the estimate says. The estimate (~32
/// beats) is noisy: on a 10%-loss link it once read 20%, which asks for 7 and put a power
/// cut's Down at 5.5–5.7 s instead of 3.9. With 6 (at the fast 0.5 s period: 3.5 s of
/// silence, plus the margin and the round trip), a live node is still called Down less
/// than once in 10⁵ beats up to ~19% loss, and once in ~8·10⁴ at 20%; a worse link
/// flaps, and damping then doubles its threshold.
const MAX_TOLERATED_LOSSES: u32 = 6;

/// Beats that may be lost in a row before silence means Down, at loss rate `loss`.
fn tolerated_losses(loss: f64) -> u32 {
    if loss < 1.0 / FALSE_DOWN_ODDS {
        return 0;
    }
    let loss = loss.min(0.5);
    // The smallest n with loss^(n+1) ≤ 1/odds: n + 1 = ceil(ln(1/odds) / ln(loss)).
    // Less a hair, so that 0.1^5 = 1e-5 is not rounded up to six beats.
    let runs = ((1.0 / FALSE_DOWN_ODDS).ln() / loss.ln() - 1e-9).ceil() as u32;
    runs.saturating_sub(1).min(MAX_TOLERATED_LOSSES)
}

/// Silence after which a node on `link` is Down.
fn threshold(cfg: &LivenessConfig, now: Millis, link: &Link) -> Millis {
    let period = if link.period == 0 { cfg.heartbeat_period } else { link.period };
    // The round trip counts once (a beat's one-way delay varies by less), and at most a
    // second: a transport's estimate before its first sample is a guess.
    let base = period * Millis::from(1 + tolerated_losses(link.loss)) + cfg.margin + link.rtt.min(1_000);
    let flaps = if now.saturating_sub(link.last_flap) < FLAP_MEMORY { link.flaps } else { 0 };
    (base << flaps).min(cfg.max_down)
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
    /// What was learned of its link.
    link: Link,
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
            link: Link::default(),
        });
    }

    /// Stops tracking a removed node.
    pub fn forget(&mut self, node: &NodeId) {
        self.nodes.remove(node);
    }

    /// A heartbeat or a new session arrived from `node` at `now` (a beat applied after a
    /// later sign of life moves nothing back).
    pub fn heard(&mut self, now: Millis, node: &NodeId) -> Option<Transition> {
        let entry = self.nodes.entry(node.clone()).or_insert(Liveness {
            status: NodeStatus::Unknown,
            last_heard: None,
            since: now,
            message: String::new(),
            duplicate: None,
            link: Link::default(),
        });
        entry.last_heard = Some(entry.last_heard.map_or(now, |t| t.max(now)));
        if entry.status == NodeStatus::Ready {
            return None;
        }
        if let Some(at) = entry.link.timed_out.take() {
            if now.saturating_sub(at) < FLAP_WINDOW {
                let l = &mut entry.link;
                if now.saturating_sub(l.last_flap) >= FLAP_MEMORY {
                    l.flaps = 0;
                }
                l.flaps = (l.flaps + 1).min(MAX_FLAPS);
                l.last_flap = now;
            }
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

    /// A heartbeat numbered `seq` arrived, `missed` beats after the last one the node's
    /// session delivered (0 when none was lost): heard, and the loss estimate moves.
    pub fn beat(&mut self, now: Millis, node: &NodeId, missed: u64) -> Option<Transition> {
        let t = self.heard(now, node);
        if let Some(l) = self.nodes.get_mut(node) {
            let link = &mut l.link;
            // A long gap is an outage, not a loss rate: count at most a window's worth.
            for _ in 0..missed.min(32) {
                link.loss += LOSS_WEIGHT * (1.0 - link.loss);
            }
            link.loss -= LOSS_WEIGHT * link.loss;
        }
        t
    }

    /// The transport's round-trip time to `node`.
    pub fn set_rtt(&mut self, node: &NodeId, rtt: Millis) {
        if let Some(l) = self.nodes.get_mut(node) {
            l.link.rtt = rtt;
        }
    }

    /// Nodes whose period should change since last asked: (node, period to beat at). The
    /// shell tells each node; the threshold uses the new period at once.
    pub fn advice(&mut self) -> Vec<(NodeId, Millis)> {
        let cfg = self.config;
        let mut out = Vec::new();
        for (id, l) in &mut self.nodes {
            if l.status != NodeStatus::Ready {
                continue;
            }
            let current = if l.link.period == 0 { cfg.heartbeat_period } else { l.link.period };
            let wanted = if l.link.loss > FAST_ABOVE {
                cfg.fast_period
            } else if l.link.loss < SLOW_BELOW {
                cfg.heartbeat_period
            } else {
                current
            };
            if wanted != current {
                l.link.period = wanted;
                out.push((id.clone(), wanted));
            }
        }
        out.sort();
        out
    }

    /// The period `node` was last asked to beat at.
    pub fn period(&self, node: &NodeId) -> Millis {
        match self.nodes.get(node) {
            Some(l) if l.link.period != 0 => l.link.period,
            _ => self.config.heartbeat_period,
        }
    }

    /// A new session starts at the default period (the agent does not keep an advice).
    pub fn session_started(&mut self, node: &NodeId) {
        if let Some(l) = self.nodes.get_mut(node) {
            l.link.period = 0;
        }
    }

    /// Silence after which `node` is Down, from what was learned of its link.
    pub fn down_after(&self, now: Millis, node: &NodeId) -> Millis {
        match self.nodes.get(node) {
            Some(l) => threshold(&self.config, now, &l.link),
            None => self.config.down_after(),
        }
    }

    /// Ready nodes late enough to be worth a probe: silent for their period plus a
    /// quarter of the margin.
    pub fn suspects(&self, now: Millis) -> Vec<NodeId> {
        let cfg = self.config;
        let mut out: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, l)| l.status == NodeStatus::Ready)
            .filter(|(_, l)| {
                let period = if l.link.period == 0 { cfg.heartbeat_period } else { l.link.period };
                l.last_heard.is_some_and(|t| now.saturating_sub(t) >= period + cfg.margin / 4)
            })
            .map(|(id, _)| id.clone())
            .collect();
        out.sort();
        out
    }

    /// Marks Down every node silent for too long. Call it every 100 ms or so.
    pub fn tick(&mut self, now: Millis) -> Vec<Transition> {
        let grace = self.config.unknown_grace;
        let cfg = self.config;
        let mut out = Vec::new();
        for (id, l) in &mut self.nodes {
            // The reason is written only for a node that expires: made for every node at
            // every tick, it was 50,000 strings a second at 5,000 boards.
            let reason = match (l.status, l.last_heard) {
                (NodeStatus::Ready, Some(t)) if now.saturating_sub(t) >= threshold(&cfg, now, &l.link) => {
                    format!("heartbeat failure: no heartbeat for {} ms", now.saturating_sub(t))
                }
                (NodeStatus::Unknown, _) if now.saturating_sub(l.since) >= grace => {
                    "node did not reconnect after the manager started".to_owned()
                }
                _ => continue,
            };
            if l.status == NodeStatus::Ready {
                l.link.timed_out = Some(now);
            }
            out.push(Transition { node: id.clone(), from: l.status, to: NodeStatus::Down, reason: reason.clone() });
            l.status = NodeStatus::Down;
            l.since = now;
            l.message = reason;
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
    fn a_node_is_ready_when_heard_and_down_a_period_and_the_margin_later() {
        let mut m = Membership::new(LivenessConfig::default());
        let t = m.heard(0, &id(1)).unwrap();
        assert_eq!((t.from, t.to), (NodeStatus::Unknown, NodeStatus::Ready));
        assert!(m.tick(2_299).is_empty());
        let down = m.tick(2_300);
        assert_eq!(down.len(), 1);
        assert_eq!(down[0].to, NodeStatus::Down);
        assert!(down[0].reason.contains("heartbeat failure"));
        assert!(m.tick(10_000).is_empty(), "Down is reported once");
    }

    #[test]
    fn heartbeats_keep_a_node_ready() {
        let mut m = Membership::new(LivenessConfig::default());
        for t in (0..20_000).step_by(1_500) {
            m.heard(t, &id(1));
            assert!(m.tick(t + 1_400).is_empty());
        }
    }

    #[test]
    fn a_node_that_comes_back_is_ready_again() {
        let mut m = Membership::new(LivenessConfig::default());
        m.heard(0, &id(1));
        m.tick(3_000);
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
        for t in (1_000..grace).step_by(1_500) {
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
        assert_eq!(cfg.second_session(1_000, 900, 3_999), SecondSession::Wait);
        assert_eq!(cfg.second_session(1_000, 900, 4_000), SecondSession::Replace);
        // It beats after the new one came: two boards, one identity.
        assert_eq!(cfg.second_session(1_000, 1_400, 1_400), SecondSession::Refuse);
        // A very long period still answers before the agent's request times out.
        let slow = LivenessConfig { heartbeat_period: 10_000, ..cfg };
        assert_eq!(slow.second_session(0, 0, MAX_SECOND_SESSION_WAIT), SecondSession::Replace);
    }

    /// Beats every `period` from `from` to `to`, losing those `lose` says, ticking every
    /// 100 ms; returns the transitions to Down.
    fn run(
        m: &mut Membership,
        n: &NodeId,
        (from, to): (Millis, Millis),
        period: impl Fn(&Membership) -> Millis,
        mut lose: impl FnMut(u64) -> bool,
        seq: &mut u64,
    ) -> Vec<Transition> {
        let mut downs = Vec::new();
        let mut next = from;
        let mut missed = 0;
        for now in (from..to).step_by(100) {
            if now >= next {
                *seq += 1;
                if lose(*seq) {
                    missed += 1;
                } else {
                    m.beat(now, n, missed);
                    missed = 0;
                }
                next = now + period(m);
            }
            downs.extend(m.tick(now).into_iter().filter(|t| t.to == NodeStatus::Down));
            m.advice();
        }
        downs
    }

    #[test]
    fn thresholds_grow_with_the_loss_rate_and_stay_capped() {
        assert_eq!(tolerated_losses(0.0), 0);
        assert_eq!(tolerated_losses(0.1), 4, "0.1^5 = 1e-5");
        assert!(tolerated_losses(0.15) > tolerated_losses(0.1));
        assert_eq!(tolerated_losses(0.19), 6);
        assert_eq!(tolerated_losses(0.2), MAX_TOLERATED_LOSSES, "0.2^8 would be asked for");
        assert_eq!(tolerated_losses(0.5), MAX_TOLERATED_LOSSES);
        let cfg = LivenessConfig::default();
        let lossy = Link { period: cfg.fast_period, loss: 0.1, rtt: 600, ..Link::default() };
        // 0.5 s × 5 + 0.8 s + 0.6 s: a power cut on a 10%-loss, 300 ms link is Down in 3.9 s.
        assert_eq!(threshold(&cfg, 0, &lossy), 3_900);
        // The same link whose estimate read twice its loss: 0.5 s × 7 + 0.8 s + 0.6 s.
        assert_eq!(threshold(&cfg, 0, &Link { loss: 0.2, ..lossy }), 4_900);
        let awful = Link { loss: 0.5, rtt: 5_000, flaps: 1, ..lossy };
        assert_eq!(threshold(&cfg, 0, &awful), cfg.max_down);
    }

    #[test]
    fn a_lossy_link_is_asked_to_beat_fast_and_is_never_down_while_beats_arrive() {
        let mut m = Membership::new(LivenessConfig::default());
        let n = id(3);
        m.heard(0, &n);
        m.set_rtt(&n, 600);
        // 10% loss from a fixed pseudo-random sequence: an hour of beats.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut seq = 0;
        let lose = |_: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.is_multiple_of(10)
        };
        let period = |m: &Membership| m.nodes[&id(3)].link.period.max(500);
        let downs = run(&mut m, &n, (0, 3_600_000), period, lose, &mut seq);
        assert!(downs.is_empty(), "false Down on a lossy link: {downs:?}");
        assert_eq!(m.nodes[&n].link.period, 500, "asked to beat fast");
        assert!((0.05..0.2).contains(&m.nodes[&n].link.loss), "loss {}", m.nodes[&n].link.loss);
        // Then a power cut: Down within the threshold (plus a tick).
        let last = m.status(3_600_000, &n).1.unwrap();
        let cut = 3_600_000 - last;
        let bound = m.down_after(cut, &n);
        assert!(bound <= 5_000, "bound {bound}");
        let mut down_at = None;
        for now in (3_600_000..3_620_000).step_by(100) {
            if m.tick(now).iter().any(|t| t.to == NodeStatus::Down) {
                down_at = Some(now);
                break;
            }
        }
        assert!(down_at.unwrap() - cut <= bound + 100);
    }

    #[test]
    fn a_clean_link_goes_back_to_the_slow_period() {
        let cfg = LivenessConfig::default();
        let mut m = Membership::new(cfg);
        let n = id(4);
        m.heard(0, &n);
        m.beat(100, &n, 2);
        assert_eq!(m.advice(), vec![(n.clone(), cfg.fast_period)]);
        assert!(m.advice().is_empty(), "said once");
        let mut t = 100;
        while m.nodes[&n].link.loss >= SLOW_BELOW {
            t += 500;
            m.beat(t, &n, 0);
            assert!(t < 60_000, "never calmed down");
        }
        assert_eq!(m.advice(), vec![(n.clone(), cfg.heartbeat_period)]);
        // A new session starts at the default period again.
        m.beat(t, &n, 3);
        m.advice();
        m.session_started(&n);
        assert_eq!(m.down_after(t, &n), threshold(&cfg, t, &Link { period: 0, ..m.nodes[&n].link }));
    }

    #[test]
    fn a_custom_period_keeps_the_rules_consistent() {
        let slow = LivenessConfig::with_period(60_000);
        assert!(slow.max_down > slow.down_after());
        assert_eq!(LivenessConfig::with_period(200).fast_period, 200, "never slower than the clean period");
        assert_eq!(LivenessConfig::with_period(1_500), LivenessConfig::default());
    }

    #[test]
    fn a_flapping_node_is_damped() {
        let cfg = LivenessConfig::default();
        let mut m = Membership::new(cfg);
        let n = id(5);
        m.heard(0, &n);
        assert_eq!(m.down_after(0, &n), 2_300);
        // Down by timeout, back two seconds later: a flap.
        assert_eq!(m.tick(2_300).len(), 1);
        m.heard(4_500, &n);
        assert_eq!(m.down_after(4_500, &n), 4_600);
        assert!(m.tick(4_500 + 4_599).is_empty(), "the damped threshold holds");
        assert_eq!(m.tick(4_500 + 4_600).len(), 1);
        m.heard(10_000, &n);
        m.tick(20_000);
        m.heard(21_000, &n);
        assert_eq!(m.down_after(21_000, &n), cfg.max_down, "capped");
        // Back after a long outage is not a flap; and flaps are forgotten in time.
        let later = 21_000 + FLAP_MEMORY;
        assert_eq!(m.down_after(later, &n), 2_300);
        m.lost(later, &n, "agent shut down");
        m.heard(later + 1_000, &n);
        assert_eq!(m.down_after(later + 1_000, &n), 2_300, "a closed session is no flap");
    }

    #[test]
    fn a_beat_applied_after_a_later_sign_of_life_moves_nothing_back() {
        let mut m = Membership::new(LivenessConfig::default());
        let a = id(1);
        m.heard(2_000, &a);
        // Stamped when it came out of the socket, applied after a later probe's answer.
        m.beat(1_500, &a, 0);
        assert_eq!(m.status(2_000, &a).1, Some(0));
        assert!(m.tick(2_000 + 2_299).is_empty(), "Down a threshold after the latest sign, not the beat's");
        assert_eq!(m.tick(2_000 + 2_300).len(), 1);
    }

    #[test]
    fn late_nodes_are_suspects_before_they_are_down() {
        let mut m = Membership::new(LivenessConfig::default());
        m.heard(0, &id(1));
        m.heard(0, &id(2));
        m.heard(1_500, &id(2));
        assert!(m.suspects(1_699).is_empty());
        assert_eq!(m.suspects(1_700), vec![id(1)]);
        // A probe answered counts as heard.
        m.heard(1_800, &id(1));
        assert!(m.suspects(1_800).is_empty());
    }

    proptest! {
        /// Whatever the schedule of heartbeats, a node is Down exactly when it was silent
        /// for at least its threshold at a tick since it was last heard.
        #[test]
        fn down_means_silent_for_the_timeout(beats in proptest::collection::btree_set(0u64..30_000, 0..60)) {
            let cfg = LivenessConfig::default();
            let mut m = Membership::new(cfg);
            let n = id(7);
            m.track(0, n.clone());
            let mut last: Option<u64> = None;
            let mut expected = NodeStatus::Unknown;
            for now in (0..30_000).step_by(100) {
                if beats.contains(&now) { m.heard(now, &n); last = Some(now); expected = NodeStatus::Ready; }
                let threshold = m.down_after(now, &n);
                prop_assert!(threshold >= cfg.down_after() && threshold <= cfg.max_down);
                expected = match (expected, last) {
                    (NodeStatus::Ready, Some(t)) if now - t >= threshold => NodeStatus::Down,
                    (NodeStatus::Unknown, None) if now >= cfg.unknown_grace => NodeStatus::Down,
                    (e, _) => e,
                };
                m.tick(now);
                let (status, _, _) = m.status(now, &n);
                prop_assert_eq!(status, expected, "at {}", now);
            }
        }
    }
}
