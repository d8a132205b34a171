//! Heartbeat datagrams on the manager's side, and the liveness loop that acts on
//! [`Membership`]: beats taken out of the QUIC socket ([`shoal_link::beat::BeatSocket`])
//! are checked against their session's keys and replay window here, then applied to the
//! membership by one task; every 100 ms the tick marks silent nodes Down, probes late
//! ones over their QUIC session and tells lossy ones to beat faster. See
//! `docs/failure-detection.md`.

use shoal_link::beat::{BeatKeys, Tag, Window};

use super::*;

/// Beats waiting to be applied; beyond it they are dropped (the next one comes soon). A
/// few seconds of 5,000 boards' beats: a dropped beat counts as lost, and 1,024 were
/// gone in a third of a second while a pass held the state lock, calling boards Down.
const BEAT_QUEUE: usize = 16 * 1024;
/// Beats applied under one taking of the state lock.
const BEAT_BATCH: usize = 512;
/// How often the membership is ticked.
pub(super) const TICK: Duration = Duration::from_millis(100);

struct Entry {
    keys: BeatKeys,
    window: Window,
    node: NodeId,
    serial: u64,
}

/// A beat accepted: from which node's session, and how many beats it missed before it.
struct Beat {
    node: NodeId,
    serial: u64,
    missed: u64,
}

/// The sessions' heartbeat keys, by tag.
pub(super) struct Beats {
    sessions: Mutex<HashMap<Tag, Entry>>,
    accepted: mpsc::Sender<Beat>,
}

/// Where accepted beats come out, for [`apply_loop`].
pub(super) struct Accepted(mpsc::Receiver<Beat>);

impl Beats {
    pub(super) fn new() -> (Arc<Self>, Accepted) {
        let (accepted, rx) = mpsc::channel(BEAT_QUEUE);
        (Arc::new(Self { sessions: Mutex::default(), accepted }), Accepted(rx))
    }

    /// The manager's UDP socket for quinn, taking beats out of it.
    pub(super) fn socket(
        self: &Arc<Self>,
        socket: std::net::UdpSocket,
        runtime: &dyn quinn::Runtime,
    ) -> std::io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        let beats = self.clone();
        let inner = runtime.wrap_udp_socket(socket)?;
        Ok(Arc::new(shoal_link::beat::BeatSocket::new(inner, Box::new(move |_, datagram| beats.on_beat(datagram)))))
    }

    /// Starts taking beats for session `serial` of `node`, until the guard is dropped.
    pub(super) fn register(
        self: &Arc<Self>,
        conn: &quinn::Connection,
        node: &NodeId,
        serial: u64,
    ) -> Option<Registered> {
        let keys = match BeatKeys::of(conn) {
            Ok(k) => k,
            Err(e) => {
                warn!(%node, error = %e, "no heartbeat keys for this session: only its stream shows it alive");
                return None;
            }
        };
        let tag = keys.tag();
        let entry = Entry { keys, window: Window::default(), node: node.clone(), serial };
        self.sessions.lock().expect("beats lock").insert(tag, entry);
        Some(Registered { beats: self.clone(), tag, serial })
    }

    /// Stops taking beats for a session that ended.
    fn forget(&self, tag: &Tag, serial: u64) {
        let mut sessions = self.sessions.lock().expect("beats lock");
        if sessions.get(tag).is_some_and(|e| e.serial == serial) {
            sessions.remove(tag);
        }
    }

    /// `false` for a tag no session has (the board should reconnect); forged, replayed
    /// and late beats are dropped quietly.
    fn on_beat(&self, datagram: &[u8]) -> bool {
        let Some(tag) = shoal_link::beat::tag_of(datagram) else { return true };
        let mut sessions = self.sessions.lock().expect("beats lock");
        let Some(entry) = sessions.get_mut(&tag) else { return false };
        let Some(seq) = entry.keys.open(datagram) else { return true };
        if let Some(missed) = entry.window.accept(seq) {
            let beat = Beat { node: entry.node.clone(), serial: entry.serial, missed };
            // Never blocks the endpoint: a full queue drops the beat, which the detector
            // counts as lost.
            let _ = self.accepted.try_send(beat);
        }
        true
    }
}

/// A session's beats are taken while this lives.
pub(super) struct Registered {
    beats: Arc<Beats>,
    tag: Tag,
    serial: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.beats.forget(&self.tag, self.serial);
    }
}

/// Applies accepted beats to the membership: every beat already queued under one taking
/// of the state lock (thousands of boards beat a thousand times a second), waiting for
/// the lock off the runtime's threads ([`blocking`]).
pub(super) async fn apply_loop(mgr: Arc<Manager>, Accepted(mut rx): Accepted) {
    let mut batch = Vec::with_capacity(BEAT_BATCH);
    while rx.recv_many(&mut batch, BEAT_BATCH).await > 0 {
        let transitions = blocking(|| apply(&mgr, &mut batch));
        mgr.log_transitions(&transitions);
    }
}

/// Applies `beats` (and empties it); returns the transitions they caused.
fn apply(mgr: &Manager, beats: &mut Vec<Beat>) -> Vec<Transition> {
    let mut st = mgr.state.lock().expect("state lock");
    let now = mgr.now();
    let mut out = Vec::new();
    for beat in beats.drain(..) {
        match st.sessions.get_mut(&beat.node).filter(|s| s.serial == beat.serial) {
            Some(s) => s.last_heard = now,
            // A replaced session's last beats say nothing of the node.
            None => continue,
        }
        out.extend(st.members.beat(now, &beat.node, beat.missed));
    }
    out
}

/// What the tick remembers of a late node: its session, the packets that session had
/// received when the node became late, and when the node was last probed.
pub(super) type Late = HashMap<NodeId, (u64, u64, Millis)>;

/// A late node is probed this often.
const PROBE_EVERY: Millis = 500;

/// One liveness tick: any QUIC packet from a late node since it became late counts as
/// heard; late nodes get a probe (ack-eliciting, so a live agent's QUIC answers within
/// its ACK delay even if its heartbeats are lost); then silent nodes go Down and their
/// connection is closed; then nodes whose link changed are told their new period.
pub(super) fn tick(mgr: &Manager, late: &mut Late) {
    let now = mgr.now();
    let (transitions, closing, probes) = {
        let mut guard = mgr.state.lock().expect("state lock");
        let st = &mut *guard;
        let suspects = st.members.suspects(now);
        late.retain(|n, _| suspects.contains(n));
        let mut probes = Vec::new();
        let mut heard = Vec::new();
        for node in suspects {
            let Some(s) = st.sessions.get(&node) else { continue };
            let stats = s.conn.stats();
            let received = stats.udp_rx.datagrams;
            let rtt = stats.path.rtt.as_millis() as Millis;
            st.members.set_rtt(&node, rtt);
            let probe = match late.get_mut(&node) {
                Some((serial, before, _)) if *serial == s.serial && received > *before => {
                    heard.push(node);
                    continue;
                }
                Some((serial, _, probed)) if *serial == s.serial => {
                    let due = now.saturating_sub(*probed) >= PROBE_EVERY;
                    if due {
                        *probed = now;
                    }
                    due
                }
                _ => {
                    late.insert(node.clone(), (s.serial, received, now));
                    true
                }
            };
            if probe {
                let period = st.members.period(&node) as u32;
                probes.push((s.tx.clone(), period));
            }
        }
        let mut transitions = Vec::new();
        for node in heard {
            late.remove(&node);
            if let Some(s) = st.sessions.get_mut(&node) {
                s.last_heard = now;
            }
            transitions.extend(st.members.heard(now, &node));
        }
        let downs = st.members.tick(now);
        let closing: Vec<_> = downs.iter().filter_map(|t| st.sessions.remove(&t.node)).collect();
        transitions.extend(downs);
        for (node, period) in st.members.advice() {
            if let Some(s) = st.sessions.get(&node) {
                debug!(%node, period_ms = period, "heartbeat period changes");
                let _ = s.tx.try_send(ManagerMessage::HeartbeatPeriod { period_ms: period as u32 });
            }
        }
        (transitions, closing, probes)
    };
    for s in closing {
        s.conn.close(close::HEARTBEAT_TIMEOUT.into(), b"heartbeat timeout");
    }
    for (tx, period_ms) in probes {
        // The period it beats at, said again: harmless, and its QUIC must acknowledge it.
        let _ = tx.try_send(ManagerMessage::HeartbeatPeriod { period_ms });
    }
    mgr.log_transitions(&transitions);
}
