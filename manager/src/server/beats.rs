//! Heartbeat datagrams on the manager's side, and the liveness loop that acts on
//! [`Membership`]: beats taken out of the QUIC socket ([`shoal_link::beat::BeatSocket`])
//! are checked against their session's keys and replay window here, stamped with when
//! they arrived, then applied to the membership by one task; every 100 ms that task
//! applies the beats still queued and ticks: it marks silent nodes Down, probes late ones
//! over their QUIC session and tells lossy ones to beat faster. See
//! `docs/failure-detection.md`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use shoal_link::beat::{BeatKeys, Tag, Window};

use super::*;

/// Beats waiting to be applied; beyond it they are dropped (the next one comes soon). A
/// few seconds of 5,000 boards' beats: a dropped beat counts as lost, and 1,024 were
/// gone in a third of a second while a pass held the state lock, calling boards Down.
const BEAT_QUEUE: usize = 16 * 1024;
/// Beats applied under one taking of the state lock.
const BEAT_BATCH: usize = 512;
/// How often the membership is ticked.
const TICK: Duration = Duration::from_millis(100);

struct Entry {
    keys: BeatKeys,
    window: Window,
    node: NodeId,
    serial: u64,
}

/// A beat accepted: from which node's session, how many beats it missed before it, and
/// when it came out of the socket (the manager's clock).
struct Beat {
    node: NodeId,
    serial: u64,
    missed: u64,
    at: Millis,
}

/// The sessions' heartbeat keys, by tag.
pub(super) struct Beats {
    sessions: Mutex<HashMap<Tag, Entry>>,
    accepted: mpsc::Sender<Beat>,
    /// The manager's clock's origin: [`Beats::now`] is [`Manager::now`].
    started: Instant,
    /// The last time (the manager's clock) the socket was found empty: every beat that
    /// arrived before it has been taken. Silence is judged up to here, never past it.
    empty_at: AtomicU64,
    /// The endpoint's socket (a second handle), to look whether anything waits in it.
    socket: std::sync::OnceLock<std::net::UdpSocket>,
    /// Whether the log last said the endpoint was far behind its socket.
    said_behind: AtomicBool,
}

/// Where accepted beats come out, for [`liveness_loop`].
pub(super) struct Accepted(mpsc::Receiver<Beat>);

impl Beats {
    /// The manager's clock starts now.
    pub(super) fn new() -> (Arc<Self>, Accepted) {
        let (accepted, rx) = mpsc::channel(BEAT_QUEUE);
        let beats = Self {
            sessions: Mutex::default(),
            accepted,
            started: Instant::now(),
            empty_at: AtomicU64::new(0),
            socket: std::sync::OnceLock::new(),
            said_behind: AtomicBool::new(false),
        };
        (Arc::new(beats), Accepted(rx))
    }

    pub(super) fn now(&self) -> Millis {
        self.started.elapsed().as_millis() as Millis
    }

    /// The instant `ms` on the manager's clock stands for (`None` past what `Instant` holds).
    pub(super) fn instant_at(&self, ms: Millis) -> Option<Instant> {
        self.started.checked_add(Duration::from_millis(ms))
    }

    /// Up to when every beat that reached the manager's socket has been taken (and queued
    /// for [`apply`]): now if nothing waits in the socket, else the last time the endpoint
    /// found it empty. Behind, the endpoint is busy (a burst of acknowledgements and
    /// reports after a pass told 5,000 boards their tasks); the beats waiting behind that
    /// burst are not silence.
    fn known_until(&self) -> Millis {
        let empty = self.socket.get().is_none_or(|socket| {
            // A peek, into a byte: the datagram stays for the endpoint.
            matches!(socket.peek_from(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        });
        if empty {
            return self.found_empty();
        }
        self.empty_at.load(Ordering::Relaxed)
    }

    /// The socket held nothing now (a peek, or the endpoint's read, found it empty).
    fn found_empty(&self) -> Millis {
        let now = self.now();
        self.empty_at.fetch_max(now, Ordering::Relaxed);
        now
    }

    /// The manager's UDP socket for quinn, taking beats out of it.
    pub(super) fn socket(
        self: &Arc<Self>,
        socket: std::net::UdpSocket,
        runtime: &dyn quinn::Runtime,
    ) -> std::io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        let peek = socket.try_clone()?;
        // Shared with quinn's handle, non-blocking already; said again, since a peek that
        // blocked would stop the liveness task.
        peek.set_nonblocking(true)?;
        let _ = self.socket.set(peek);
        let (beats, emptied) = (self.clone(), self.clone());
        let inner = runtime.wrap_udp_socket(socket)?;
        let socket = shoal_link::beat::BeatSocket::new(inner, Box::new(move |_, datagram| beats.on_beat(datagram)))
            .on_empty(Box::new(move || {
                emptied.found_empty();
            }));
        Ok(Arc::new(socket))
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
            let at = self.now();
            let beat = Beat { node: entry.node.clone(), serial: entry.serial, missed, at };
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

/// The liveness task: applies beats as they come, a batch under one taking of the
/// state lock (thousands of boards beat a thousand times a second), and every [`TICK`]
/// applies the beats still queued, then ticks ([`tick`]), under the same taking of the
/// lock: no node is judged silent while a beat it sent before the tick waits in the
/// queue. A lock someone holds is waited for off the runtime's threads ([`locked`]).
pub(super) async fn liveness_loop(mgr: Arc<Manager>, Accepted(mut rx): Accepted) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut late = Late::new();
    let mut batch = Vec::with_capacity(BEAT_BATCH);
    loop {
        let transitions = tokio::select! {
            received = rx.recv_many(&mut batch, BEAT_BATCH) => {
                if received == 0 {
                    return;
                }
                locked(&mgr.state, |st| apply(st, &mut batch))
            }
            _ = interval.tick() => tick(&mgr, &mut late, &mut rx),
        };
        mgr.log_transitions(&transitions);
    }
}

/// Applies `beats` (and empties it), each as heard when it arrived; returns the
/// transitions they caused.
fn apply(st: &mut State, beats: &mut Vec<Beat>) -> Vec<Transition> {
    let mut out = Vec::new();
    for beat in beats.drain(..) {
        match st.sessions.get_mut(&beat.node).filter(|s| s.serial == beat.serial) {
            Some(s) => s.last_heard = s.last_heard.max(beat.at),
            // A replaced session's last beats say nothing of the node.
            None => continue,
        }
        out.extend(st.members.beat(beat.at, &beat.node, beat.missed));
    }
    out
}

/// The endpoint this far behind its socket is said in the log (once, and when it has
/// caught up): meanwhile no board can be called Down, even one that really is.
const FAR_BEHIND: Millis = 1_000;

impl Beats {
    fn say_how_far_behind(&self, behind: Millis) {
        let far = behind >= FAR_BEHIND;
        if self.said_behind.swap(far, Ordering::Relaxed) != far {
            if far {
                warn!(ms = behind, "the manager is behind reading its socket: silence is judged as of when it last had read everything");
            } else {
                info!("the manager has read its socket again");
            }
        }
    }
}

/// What the tick remembers of a late node: its session, the packets that session had
/// received when the node became late, and when the node was last probed.
type Late = HashMap<NodeId, (u64, u64, Millis)>;

/// A late node is probed this often.
const PROBE_EVERY: Millis = 500;

/// One liveness tick, with the state lock. Silence is judged as of the last moment the
/// manager knows it had taken every beat that arrived ([`Beats::known_until`]), and the
/// beats still queued (`queued`) count first: a manager busy reading a burst calls no
/// one Down for beats it has not read yet. Then any QUIC packet from a late node since it
/// became late counts as heard; late nodes get a probe (ack-eliciting, so a live agent's
/// QUIC answers within its ACK delay even if its heartbeats are lost); silent nodes go
/// Down and their connection is closed; nodes whose link changed are told their new
/// period. Returns the transitions, for the log.
fn tick(mgr: &Manager, late: &mut Late, queued: &mut mpsc::Receiver<Beat>) -> Vec<Transition> {
    let (transitions, closing, probes) = locked(&mgr.state, |st| {
        // Looked at before the queue is emptied: what the socket held until then is in it.
        let now = mgr.beats.known_until();
        mgr.beats.say_how_far_behind(mgr.now().saturating_sub(now));
        let mut beats = Vec::new();
        while let Ok(beat) = queued.try_recv() {
            beats.push(beat);
        }
        let mut transitions = apply(st, &mut beats);
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
    });
    for s in closing {
        s.conn.close(close::HEARTBEAT_TIMEOUT.into(), b"heartbeat timeout");
    }
    for (tx, period_ms) in probes {
        // The period it beats at, said again: harmless, and its QUIC must acknowledge it.
        let _ = tx.try_send(ManagerMessage::HeartbeatPeriod { period_ms });
    }
    transitions
}
