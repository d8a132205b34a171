//! Heartbeat datagrams: a board's sign of life as one 19-byte UDP datagram with no answer,
//! sent to the manager's QUIC port beside the QUIC connection. A heartbeat on the QUIC
//! connection itself costs two packets (QUIC acknowledges every packet that carries data
//! within 25 ms), about 170 bytes on the wire; this costs one of about 61.
//!
//! Layout: kind `0x1b` (the QUIC fixed bit `0x40` clear, so no QUIC v1 packet looks like
//! it while the manager does not offer to grease that bit), a 6-byte session tag, a
//! 4-byte big-endian sequence number and the first 8 bytes of an HMAC-SHA256 over what
//! precedes it. Tag and key come from the session's TLS connection (RFC 5705 exporter),
//! so nothing extra travels to set them up and they die with the session. The manager
//! accepts each sequence number once, in increasing order ([`Window`]): a replayed beat
//! can't keep a dead board alive.
//!
//! A beat for a tag the manager does not know (it restarted) is answered with kind `0x1c`,
//! the tag and the sequence number echoed (11 bytes, shorter than the beat: nothing to
//! amplify), and the board reconnects at once instead of waiting out the idle timeout.
//!
//! [`BeatSocket`] is the manager's UDP socket: it hands beats to a callback and the rest
//! to quinn. It does no I/O of its own beyond the answer above.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

use crate::LinkError;

/// Bytes of a heartbeat datagram.
pub const BEAT_LEN: usize = 19;
/// First byte of a heartbeat.
pub const KIND_BEAT: u8 = 0x1b;
/// First byte of the manager's "no such session" answer.
pub const KIND_UNKNOWN: u8 = 0x1c;
/// Bytes of that answer.
pub const UNKNOWN_LEN: usize = 11;
const TAG: std::ops::Range<usize> = 1..7;
const SEQ: std::ops::Range<usize> = 7..11;
const LABEL: &[u8] = b"EXPORTER-shoal-heartbeat";

/// Identifies a session's beats to the manager.
pub type Tag = [u8; 6];

/// A session's heartbeat tag and key.
#[derive(Clone)]
pub struct BeatKeys {
    tag: Tag,
    key: ring::hmac::Key,
}

impl fmt::Debug for BeatKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BeatKeys").field("tag", &self.tag).finish_non_exhaustive()
    }
}

impl BeatKeys {
    /// Both ends derive the same keys from their TLS session.
    pub fn of(conn: &quinn::Connection) -> Result<Self, LinkError> {
        let mut secret = [0u8; 38];
        conn.export_keying_material(&mut secret, LABEL, b"")
            .map_err(|_| LinkError::Tls("cannot derive heartbeat keys from the TLS session".into()))?;
        Ok(Self::from_secret(&secret))
    }

    /// Keys from 38 secret bytes (6 of tag, 32 of key).
    pub fn from_secret(secret: &[u8; 38]) -> Self {
        let tag = secret[..6].try_into().expect("6 bytes");
        Self { tag, key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret[6..]) }
    }

    /// The session's tag.
    pub fn tag(&self) -> Tag {
        self.tag
    }

    /// Beat number `seq`.
    pub fn seal(&self, seq: u32) -> [u8; BEAT_LEN] {
        let mut out = [0u8; BEAT_LEN];
        out[0] = KIND_BEAT;
        out[TAG].copy_from_slice(&self.tag);
        out[SEQ].copy_from_slice(&seq.to_be_bytes());
        let mac = ring::hmac::sign(&self.key, &out[..11]);
        out[11..].copy_from_slice(&mac.as_ref()[..8]);
        out
    }

    /// The sequence number of a beat sealed with these keys, or `None` for anything else.
    pub fn open(&self, datagram: &[u8]) -> Option<u32> {
        if datagram.len() != BEAT_LEN || datagram[0] != KIND_BEAT || datagram[TAG] != self.tag {
            return None;
        }
        let mac = ring::hmac::sign(&self.key, &datagram[..11]);
        // Constant time, as any MAC check.
        let diff = mac.as_ref()[..8].iter().zip(&datagram[11..]).fold(0u8, |d, (a, b)| d | (a ^ b));
        if diff != 0 {
            return None;
        }
        Some(u32::from_be_bytes(datagram[SEQ].try_into().expect("4 bytes")))
    }

    /// Whether `datagram` is the manager's answer that it does not know beat `seq` of
    /// this session.
    pub fn is_unknown(&self, datagram: &[u8], seq: u32) -> bool {
        datagram.len() == UNKNOWN_LEN
            && datagram[0] == KIND_UNKNOWN
            && datagram[TAG] == self.tag
            && datagram[SEQ] == seq.to_be_bytes()
    }
}

/// The tag of something shaped like a heartbeat (not yet authenticated).
pub fn tag_of(datagram: &[u8]) -> Option<Tag> {
    (datagram.len() == BEAT_LEN && datagram[0] == KIND_BEAT).then(|| datagram[TAG].try_into().expect("6 bytes"))
}

/// The answer to a beat whose tag is unknown.
pub fn unknown_answer(beat: &[u8]) -> Option<[u8; UNKNOWN_LEN]> {
    tag_of(beat)?;
    let mut out = [0u8; UNKNOWN_LEN];
    out[0] = KIND_UNKNOWN;
    out[1..].copy_from_slice(&beat[1..11]);
    Some(out)
}

/// Accepts each sequence number once, in increasing order.
#[derive(Debug, Default, Clone, Copy)]
pub struct Window {
    last: Option<u32>,
}

impl Window {
    /// `Some(beats missed since the last accepted one)` for a new beat, `None` for a
    /// replayed, duplicated or reordered one.
    pub fn accept(&mut self, seq: u32) -> Option<u64> {
        let missed = match self.last {
            Some(last) if seq <= last => return None,
            Some(last) => u64::from(seq - last - 1),
            None => 0,
        };
        self.last = Some(seq);
        Some(missed)
    }
}

/// What the manager does with a beat: `true` if the tag belongs to a session it knows
/// (whether or not the beat was accepted), `false` to answer "unknown".
pub type OnBeat = dyn Fn(SocketAddr, &[u8]) -> bool + Send + Sync;

/// Told each time the endpoint finds the socket empty: everything that had arrived until
/// then has been read (and its beats handed to [`OnBeat`]).
pub type OnEmpty = dyn Fn() + Send + Sync;

/// A UDP socket for quinn that takes heartbeats out of what it receives.
pub struct BeatSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    on_beat: Box<OnBeat>,
    on_empty: Option<Box<OnEmpty>>,
}

impl fmt::Debug for BeatSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BeatSocket").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl BeatSocket {
    /// Wraps quinn's socket; `on_beat` is called on the endpoint's task, so it must not block.
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, on_beat: Box<OnBeat>) -> Self {
        Self { inner, on_beat, on_empty: None }
    }

    /// Also calls `on_empty` (on the endpoint's task too) whenever a read finds nothing
    /// waiting: a failure detector then knows up to when it has seen every beat.
    pub fn on_empty(mut self, on_empty: Box<OnEmpty>) -> Self {
        self.on_empty = Some(on_empty);
        self
    }

    fn take_beat(&self, from: SocketAddr, datagram: &[u8], dst_ip: Option<std::net::IpAddr>) -> bool {
        if datagram.first().is_none_or(|b| *b != KIND_BEAT) {
            return false;
        }
        if !(self.on_beat)(from, datagram) {
            if let Some(answer) = unknown_answer(datagram) {
                let transmit =
                    Transmit { destination: from, ecn: None, contents: &answer, segment_size: None, src_ip: dst_ip };
                // Best effort: a full socket buffer drops it, and the board asks again.
                let _ = self.inner.try_send(&transmit);
            }
        }
        true
    }
}

impl AsyncUdpSocket for BeatSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let n = match self.inner.poll_recv(cx, bufs, meta) {
            Poll::Ready(Ok(n)) => n,
            Poll::Pending => {
                if let Some(on_empty) = &self.on_empty {
                    on_empty();
                }
                return Poll::Pending;
            }
            other => return other,
        };
        for (m, buf) in meta.iter_mut().zip(bufs.iter()).take(n) {
            // Segments of one receive come from one sender and have one size: a beat's
            // buffer holds beats only. Emptied, quinn skips it.
            let stride = m.stride.max(1);
            let mut beats = false;
            for segment in buf[..m.len].chunks(stride) {
                beats |= self.take_beat(m.addr, segment, m.dst_ip);
            }
            if beats {
                m.len = 0;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_hands_beats_over_and_says_when_it_found_nothing_waiting() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let std_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let to = std_socket.local_addr().unwrap();
            let inner = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, std_socket).unwrap();
            let (beats, empties) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let (b, e) = (beats.clone(), empties.clone());
            let socket = BeatSocket::new(
                inner,
                Box::new(move |_, _| {
                    b.fetch_add(1, Ordering::SeqCst);
                    true
                }),
            )
            .on_empty(Box::new(move || {
                e.fetch_add(1, Ordering::SeqCst);
            }));
            let mut buf = vec![0u8; 1500];
            let mut meta = [RecvMeta::default()];
            let mut recv = |cx: &mut Context<'_>| {
                let mut bufs = [IoSliceMut::new(&mut buf)];
                socket.poll_recv(cx, &mut bufs, &mut meta).map(|r| r.unwrap())
            };
            // Nothing sent yet: empty.
            std::future::poll_fn(|cx| match recv(cx) {
                Poll::Pending => Poll::Ready(()),
                Poll::Ready(_) => panic!("nothing was sent"),
            })
            .await;
            assert_eq!(empties.load(Ordering::SeqCst), 1);
            let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            sender.send_to(&BeatKeys::from_secret(&[7; 38]).seal(1), to).unwrap();
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), std::future::poll_fn(&mut recv));
            assert_eq!(read.await.expect("the beat arrives"), 1);
            assert_eq!(beats.load(Ordering::SeqCst), 1, "the beat went to its callback");
            assert_eq!(meta[0].len, 0, "and not to quinn");
        });
    }

    #[test]
    fn a_beat_opens_with_its_own_keys_only() {
        let keys = BeatKeys::from_secret(&[7; 38]);
        let beat = keys.seal(42);
        assert_eq!(beat.len(), BEAT_LEN);
        assert_eq!(beat[0] & 0xc0, 0, "never looks like a QUIC packet");
        assert_eq!(keys.open(&beat), Some(42));
        assert_eq!(tag_of(&beat), Some(keys.tag()));
        let other = BeatKeys::from_secret(&[8; 38]);
        assert_eq!(other.open(&beat), None);
        // Same tag, another key: a forgery.
        let mut forged_secret = [7u8; 38];
        forged_secret[20] = 0;
        assert_eq!(BeatKeys::from_secret(&forged_secret).open(&beat), None);
        for i in 0..BEAT_LEN {
            let mut bad = beat;
            bad[i] ^= 1;
            assert_eq!(keys.open(&bad), None, "byte {i} flipped");
        }
        assert_eq!(keys.open(&beat[..18]), None);
        assert_eq!(keys.open(&[beat.as_slice(), &[0]].concat()), None);
    }

    #[test]
    fn the_unknown_answer_echoes_the_beat_and_is_shorter() {
        let keys = BeatKeys::from_secret(&[7; 38]);
        let answer = unknown_answer(&keys.seal(9)).unwrap();
        assert!(answer.len() < BEAT_LEN);
        assert!(keys.is_unknown(&answer, 9));
        assert!(!keys.is_unknown(&answer, 10), "an answer to another beat (or a guess) is ignored");
        assert!(!BeatKeys::from_secret(&[8; 38]).is_unknown(&answer, 9));
        assert_eq!(unknown_answer(&[KIND_BEAT; 5]), None);
    }

    #[test]
    fn the_window_refuses_replays_and_counts_losses() {
        let mut w = Window::default();
        assert_eq!(w.accept(5), Some(0));
        assert_eq!(w.accept(5), None, "replayed");
        assert_eq!(w.accept(6), Some(0));
        assert_eq!(w.accept(9), Some(2));
        assert_eq!(w.accept(7), None, "late");
        assert_eq!(w.accept(u32::MAX), Some(u64::from(u32::MAX - 10)));
        assert_eq!(w.accept(0), None);
    }
}
