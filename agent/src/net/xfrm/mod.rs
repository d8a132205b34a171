//! Encryption of overlay networks with the kernel's IPsec (XFRM), programmed over
//! `NETLINK_XFRM` ([`wire`]); no `ip xfrm`, no IKE daemon: the keys come from the manager.
//!
//! What is encrypted: the VXLAN packets of an encrypted network between this board and
//! each other board that has the network, as ESP in transport mode (AES-GCM-128,
//! RFC 4106) between the two underlay addresses. An encrypted network's VXLAN device
//! sends to a UDP port of its own ([`super::overlay::encrypted_port`]), so two policies
//! per network select exactly its packets by port: **out** (to that port, from this
//! board) needs ESP, so nothing leaves in the clear (with no SA yet, packets are
//! dropped); **in** (to that port on this board, from anyone) needs ESP, so plaintext
//! VXLAN for the network is dropped (no downgrade). Plain networks keep port 4789 and
//! stay plain.
//!
//! Keys: the manager sends each encrypted network's secret ([`EspKey`], 32 random bytes
//! with an ID). Each SA's key, salt and SPI are derived from it with HKDF-SHA256 for one
//! direction of one pair of boards ([`derive`]), so no two SAs share a key (GCM nonces
//! never repeat across senders) and both ends agree without talking. During a rotation
//! the manager sends two keys: boards accept both inbound and send with
//! [`NetworkKeys::send`]; see the manager's `core::netkeys`.
//!
//! Ownership: the agent's SAs and policies carry a request ID in [`REQID_TAG`]'s range
//! (the network's VNI below it). [`apply`] makes exactly the desired set of those exist
//! (adding before deleting, so a rotation loses no packet) and never touches others.
//!
//! [`desired`] and [`diff`] are pure; [`apply`] and [`current`] do blocking netlink I/O
//! in the network namespace of the calling thread.

pub mod wire;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use rtnetlink::sys::{protocols::NETLINK_XFRM, Socket};

pub use wire::{Dir, Policy, Sa, Selector};

/// The high byte of the agent's request IDs ('S'): SAs and policies with another are
/// someone else's.
pub const REQID_TAG: u32 = 0x53 << 24;
/// Priority of the agent's policies (lower wins; the kernel's default is 0, `ip xfrm`'s too).
pub const POLICY_PRIORITY: u32 = 0x5300;
/// How long to wait for the kernel's answers.
const WAIT: Duration = Duration::from_secs(2);

/// The request ID of encrypted network `vni`.
pub fn reqid(vni: u32) -> u32 {
    REQID_TAG | (vni & 0x00ff_ffff)
}

/// Whether a request ID is the agent's.
pub fn is_ours(reqid: u32) -> bool {
    reqid & 0xff00_0000 == REQID_TAG
}

/// One of an encrypted network's secrets, as the manager sends it.
#[derive(Clone, PartialEq, Eq)]
pub struct EspKey {
    /// Which key (a new one per rotation).
    pub id: u32,
    /// 32 random bytes.
    pub secret: [u8; 32],
}

impl std::fmt::Debug for EspKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EspKey").field("id", &self.id).field("secret", &"<redacted>").finish()
    }
}

/// An encrypted network's keys on this board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkKeys {
    /// Sent with, and accepted.
    pub send: EspKey,
    /// Also accepted (the key being rotated in or out), if any.
    pub accept: Option<EspKey>,
}

/// An encrypted network present on this board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedNetwork {
    /// Its VNI (its request ID).
    pub vni: u32,
    /// Its VXLAN UDP port.
    pub port: u16,
    /// The underlay addresses of the other boards that have it.
    pub peers: BTreeSet<Ipv4Addr>,
    /// Its keys; without them the policies stand and nothing passes.
    pub keys: Option<NetworkKeys>,
}

/// The SAs and policies this board should have.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// By destination and SPI (what the kernel keys them by).
    pub sas: BTreeMap<(Ipv4Addr, u32), Sa>,
    /// Policies.
    pub policies: BTreeSet<Policy>,
}

impl std::fmt::Debug for Desired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Desired")
            .field("sas", &self.sas.values().collect::<Vec<_>>())
            .field("policies", &self.policies)
            .finish()
    }
}

/// HKDF output: SPI (4 bytes) and key with salt.
struct Okm;

impl ring::hkdf::KeyType for Okm {
    fn len(&self) -> usize {
        4 + wire::AEAD_KEY_LEN
    }
}

/// The SPI and the AES-GCM key and salt of the SA carrying network `vni`'s packets from
/// `src` to `dst` under `key`. Both boards compute the same. SPIs are at least 2^28 (the
/// kernel reserves 1–255).
pub fn derive(key: &EspKey, vni: u32, src: Ipv4Addr, dst: Ipv4Addr) -> (u32, Vec<u8>) {
    let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"shoal overlay esp v1");
    let prk = salt.extract(&key.secret);
    let (id, vni) = (key.id.to_be_bytes(), vni.to_be_bytes());
    let (s, d) = (src.octets(), dst.octets());
    let info: [&[u8]; 4] = [&id, &vni, &s, &d];
    let mut out = [0u8; 4 + wire::AEAD_KEY_LEN];
    prk.expand(&info, Okm).and_then(|okm| okm.fill(&mut out)).expect("HKDF-SHA256 yields 24 bytes");
    let spi = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) & 0x0fff_ffff | 0x1000_0000;
    (spi, out[4..].to_vec())
}

/// The SAs and policies for `networks` on the board whose underlay address is `local`:
/// per network, the two policies; per network and peer, an inbound SA per key and an
/// outbound SA for the sending key.
pub fn desired(local: Ipv4Addr, networks: &[EncryptedNetwork]) -> Desired {
    let mut d = Desired::default();
    for n in networks {
        let reqid = reqid(n.vni);
        let out_sel = Selector { src: local, src_prefix: 32, dst: Ipv4Addr::UNSPECIFIED, dst_prefix: 0, dport: n.port };
        let in_sel = Selector { src: Ipv4Addr::UNSPECIFIED, src_prefix: 0, dst: local, dst_prefix: 32, dport: n.port };
        d.policies.insert(Policy { dir: Dir::Out, selector: out_sel, reqid, priority: POLICY_PRIORITY });
        d.policies.insert(Policy { dir: Dir::In, selector: in_sel, reqid, priority: POLICY_PRIORITY });
        let Some(keys) = &n.keys else { continue };
        for peer in n.peers.iter().filter(|p| **p != local) {
            for key in std::iter::once(&keys.send).chain(keys.accept.as_ref()) {
                let (spi, k) = derive(key, n.vni, *peer, local);
                d.sas.insert((local, spi), Sa { src: *peer, dst: local, spi, reqid, key: k, inbound: true });
            }
            let (spi, k) = derive(&keys.send, n.vni, local, *peer);
            d.sas.insert((*peer, spi), Sa { src: local, dst: *peer, spi, reqid, key: k, inbound: false });
        }
    }
    d
}

/// What turns the kernel's state into the desired one, in the order it is done:
/// policies first, then new SAs, then the SAs and policies no longer wanted (so
/// nothing is ever sent in the clear, and a new sending key exists before the old goes).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Policies to add or replace.
    pub policies: Vec<Policy>,
    /// SAs to add.
    pub add: Vec<Sa>,
    /// SAs to delete (destination, SPI).
    pub delete: Vec<(Ipv4Addr, u32)>,
    /// Policies to delete.
    pub delete_policies: Vec<Policy>,
}

impl Changes {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

/// The changes from `sas` and `policies` (what the kernel has; other owners' are
/// ignored) to `want`. An SA is the same if its addresses, SPI and request ID are (its
/// key follows from them).
pub fn diff(sas: &[Sa], policies: &[Policy], want: &Desired) -> Changes {
    let ours_sas: BTreeMap<(Ipv4Addr, u32), &Sa> =
        sas.iter().filter(|s| is_ours(s.reqid)).map(|s| ((s.dst, s.spi), s)).collect();
    let ours_pol: BTreeSet<&Policy> = policies.iter().filter(|p| is_ours(p.reqid)).collect();
    let same = |a: &Sa, b: &Sa| a.src == b.src && a.reqid == b.reqid;
    let mut c = Changes {
        policies: want.policies.iter().filter(|p| !ours_pol.contains(p)).copied().collect(),
        ..Changes::default()
    };
    for (k, s) in &want.sas {
        match ours_sas.get(k) {
            Some(have) if same(have, s) => {}
            // Same destination and SPI but not ours to keep as is: replaced.
            Some(_) => {
                c.delete.push(*k);
                c.add.push(s.clone());
            }
            None => c.add.push(s.clone()),
        }
    }
    c.delete.extend(ours_sas.keys().filter(|k| !want.sas.contains_key(k)).copied());
    // A policy replaced in place (same selector and direction) is not deleted.
    c.delete_policies = ours_pol
        .into_iter()
        .filter(|p| !want.policies.iter().any(|w| w.dir == p.dir && w.selector == p.selector))
        .copied()
        .collect();
    c
}

/// Why the kernel's IPsec state can't be made what it should be.
#[derive(Debug, thiserror::Error)]
pub enum XfrmError {
    /// No `NETLINK_XFRM`.
    #[error("this board's kernel has no IPsec netlink interface, so encrypted overlay networks can't work: build it with CONFIG_XFRM_USER, CONFIG_INET_ESP, CONFIG_CRYPTO_GCM, CONFIG_CRYPTO_SEQIV and CONFIG_CRYPTO_AES")]
    NoXfrm,
    /// ESP or AES-GCM is missing.
    #[error("{what}: this board's kernel lacks {feature}: build it with {options}")]
    MissingFeature {
        /// What was being done.
        what: String,
        /// What is missing.
        feature: &'static str,
        /// The kernel options that bring it.
        options: &'static str,
    },
    /// Not root.
    #[error("{what}: permission denied: shoal-agent must run as root (CAP_NET_ADMIN)")]
    PermissionDenied {
        /// What was being done.
        what: String,
    },
    /// Any other refusal.
    #[error("the kernel refused {what}: {source}")]
    Refused {
        /// What was being done.
        what: String,
        /// The errno.
        source: io::Error,
    },
    /// The socket failed, or the kernel's answer was unreadable.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Why.
        source: io::Error,
    },
}

impl XfrmError {
    /// Whether the board's kernel lacks what encryption needs (not a passing failure).
    pub fn is_unsupported(&self) -> bool {
        matches!(self, XfrmError::NoXfrm | XfrmError::MissingFeature { .. })
    }

    fn refused(what: String, errno: i32, adding_sa: bool) -> Self {
        match errno {
            libc::EPERM => XfrmError::PermissionDenied { what },
            // ESP's xfrm type is not registered.
            libc::EPROTONOSUPPORT if adding_sa => {
                XfrmError::MissingFeature { what, feature: "ESP", options: "CONFIG_INET_ESP" }
            }
            // The AEAD is unknown to xfrm (ENOSYS) or to the crypto API (ENOENT).
            libc::ENOSYS | libc::ENOENT if adding_sa => XfrmError::MissingFeature {
                what,
                feature: "AES-GCM (rfc4106(gcm(aes)))",
                options: "CONFIG_CRYPTO_GCM, CONFIG_CRYPTO_SEQIV and CONFIG_CRYPTO_AES",
            },
            errno => XfrmError::Refused { what, source: io::Error::from_raw_os_error(errno) },
        }
    }
}

/// What [`apply`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Policies added or replaced.
    pub policies: usize,
    /// SAs added.
    pub added: usize,
    /// SAs deleted.
    pub deleted: usize,
    /// Policies deleted.
    pub deleted_policies: usize,
}

fn open() -> Result<Socket, XfrmError> {
    let mut socket = match Socket::new(NETLINK_XFRM) {
        Ok(s) => s,
        Err(e) if e.raw_os_error() == Some(libc::EPROTONOSUPPORT) => return Err(XfrmError::NoXfrm),
        Err(source) => return Err(XfrmError::Io { op: "opening an xfrm netlink socket", source }),
    };
    socket.bind_auto().map_err(|source| XfrmError::Io { op: "binding the xfrm netlink socket", source })?;
    socket
        .set_non_blocking(true)
        .map_err(|source| XfrmError::Io { op: "making the xfrm socket non-blocking", source })?;
    Ok(socket)
}

fn first_seq() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(1) | 1
}

/// Reads replies until `stop` says so (given each reply), or [`WAIT`] passes.
fn read(
    socket: &Socket,
    op: &'static str,
    mut stop: impl FnMut(wire::Reply) -> Result<bool, XfrmError>,
) -> Result<(), XfrmError> {
    let deadline = Instant::now() + WAIT;
    loop {
        match socket.recv_from_full() {
            Ok((data, from)) => {
                if from.port_number() != 0 {
                    continue;
                }
                let replies = wire::parse(&data)
                    .map_err(|e| XfrmError::Io { op, source: io::Error::new(io::ErrorKind::InvalidData, e) })?;
                for r in replies {
                    if stop(r)? {
                        return Ok(());
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_micros(200))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(XfrmError::Io {
                    op,
                    source: io::Error::new(io::ErrorKind::TimedOut, "no answer from the kernel"),
                })
            }
            Err(source) => return Err(XfrmError::Io { op, source }),
        }
    }
}

fn dump(socket: &Socket, ty: u16, seq: u32, op: &'static str) -> Result<Vec<wire::Reply>, XfrmError> {
    socket.send(&wire::dump(seq, ty), 0).map_err(|source| XfrmError::Io { op, source })?;
    let mut out = Vec::new();
    read(socket, op, |r| match r {
        wire::Reply::Done => Ok(true),
        wire::Reply::Ack { errno: libc::EPERM, .. } => Err(XfrmError::PermissionDenied { what: op.into() }),
        wire::Reply::Ack { errno, .. } if errno != 0 => Err(XfrmError::refused(op.into(), errno, false)),
        r => {
            out.push(r);
            Ok(false)
        }
    })?;
    Ok(out)
}

/// The kernel's IPsec state that is the agent's: its SAs (keys left out) and policies.
pub fn current() -> Result<(Vec<Sa>, Vec<Policy>), XfrmError> {
    let socket = open()?;
    current_on(&socket, first_seq())
}

fn current_on(socket: &Socket, seq: u32) -> Result<(Vec<Sa>, Vec<Policy>), XfrmError> {
    let sas = dump(socket, wire::MSG_GETSA, seq, "listing the board's IPsec SAs")?
        .into_iter()
        .filter_map(|r| match r {
            wire::Reply::Sa(s) if is_ours(s.reqid) => Some(s),
            _ => None,
        })
        .collect();
    let policies = dump(socket, wire::MSG_GETPOLICY, seq.wrapping_add(1), "listing the board's IPsec policies")?
        .into_iter()
        .filter_map(|r| match r {
            wire::Reply::Policy(p) if is_ours(p.reqid) => Some(p),
            _ => None,
        })
        .collect();
    Ok((sas, policies))
}

/// Sends one request and waits for its acknowledgement.
fn request(
    socket: &Socket,
    msg: &[u8],
    seq: u32,
    what: impl Fn() -> String,
    adding_sa: bool,
    missing_ok: bool,
) -> Result<(), XfrmError> {
    socket.send(msg, 0).map_err(|source| XfrmError::Io { op: "sending an xfrm request", source })?;
    read(socket, "reading the kernel's answer to an xfrm request", |r| match r {
        wire::Reply::Ack { seq: s, .. } if s != seq => Ok(false),
        wire::Reply::Ack { errno: 0, .. } => Ok(true),
        wire::Reply::Ack { errno: libc::ENOENT | libc::ESRCH, .. } if missing_ok => Ok(true),
        wire::Reply::Ack { errno, .. } => Err(XfrmError::refused(what(), errno, adding_sa)),
        _ => Ok(false),
    })
}

/// Makes the agent's SAs and policies exactly `want`: reads what the kernel has, then
/// performs [`diff`] in its order. Idempotent; others' SAs and policies are untouched.
/// Blocking (a few milliseconds): call it from a blocking thread in async code.
pub fn apply(want: &Desired) -> Result<Applied, XfrmError> {
    let socket = open()?;
    let mut seq = first_seq();
    let (sas, policies) = current_on(&socket, seq)?;
    seq = seq.wrapping_add(2);
    let c = diff(&sas, &policies, want);
    let mut next = || {
        seq = seq.wrapping_add(1);
        seq
    };
    let delete_sa = |s: u32, dst: &std::net::Ipv4Addr, spi: &u32| {
        request(
            &socket,
            &wire::del_sa(s, *dst, *spi),
            s,
            || format!("deleting IPsec SA {spi:#x} to {dst}"),
            false,
            true,
        )
    };
    for p in &c.policies {
        let s = next();
        request(
            &socket,
            &wire::upd_policy(s, p),
            s,
            || format!("an IPsec policy ({:?}, port {})", p.dir, p.selector.dport),
            false,
            false,
        )?;
    }
    for (dst, spi) in c.delete.iter().filter(|k| c.add.iter().any(|a| (a.dst, a.spi) == **k)) {
        // Replaced in place: the old one must go first.
        delete_sa(next(), dst, spi)?;
    }
    for sa in &c.add {
        let s = next();
        request(
            &socket,
            &wire::new_sa(s, sa),
            s,
            || format!("adding an IPsec SA from {} to {}", sa.src, sa.dst),
            true,
            false,
        )?;
    }
    for (dst, spi) in c.delete.iter().filter(|k| !c.add.iter().any(|a| (a.dst, a.spi) == **k)) {
        delete_sa(next(), dst, spi)?;
    }
    for p in &c.delete_policies {
        let s = next();
        request(
            &socket,
            &wire::del_policy(s, p),
            s,
            || format!("deleting an IPsec policy ({:?}, port {})", p.dir, p.selector.dport),
            false,
            true,
        )?;
    }
    Ok(Applied {
        policies: c.policies.len(),
        added: c.add.len(),
        deleted: c.delete.len(),
        deleted_policies: c.delete_policies.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn key(id: u32, b: u8) -> EspKey {
        EspKey { id, secret: [b; 32] }
    }

    fn net(keys: Option<NetworkKeys>) -> EncryptedNetwork {
        EncryptedNetwork { vni: 4097, port: 28097, peers: [a("10.1.0.2"), a("10.1.0.3")].into(), keys }
    }

    #[test]
    fn both_ends_derive_the_same_sa_and_no_two_sas_share_a_key() {
        let k = key(1, 9);
        let one = desired(a("10.1.0.1"), &[net(Some(NetworkKeys { send: k.clone(), accept: None }))]);
        let mut other = net(Some(NetworkKeys { send: k.clone(), accept: None }));
        other.peers = [a("10.1.0.1")].into();
        let two = desired(a("10.1.0.2"), &[other]);
        // Board 1's outbound SA to board 2 is board 2's inbound SA from board 1, key and all.
        let out = one.sas.values().find(|s| s.dst == a("10.1.0.2")).unwrap();
        let back = two.sas.values().find(|s| s.src == a("10.1.0.1")).unwrap();
        assert_eq!(out, &Sa { inbound: false, ..back.clone() });
        assert!(back.inbound && out.spi >= 0x1000_0000);
        // 2 peers × (1 in + 1 out), every key different.
        assert_eq!(one.sas.len(), 4);
        let keys: BTreeSet<&Vec<u8>> = one.sas.values().map(|s| &s.key).collect();
        assert_eq!(keys.len(), 4);
        assert!(one.sas.values().all(|s| s.key.len() == 20 && s.reqid == 0x5300_1001));
        // The policies select the network's port, one each way.
        assert_eq!(one.policies.len(), 2);
        assert!(one.policies.iter().all(|p| p.selector.dport == 28097));
        // Another key, or network, gives other SPIs and keys.
        assert_ne!(derive(&key(2, 9), 4097, a("1.1.1.1"), a("2.2.2.2")), derive(&k, 4097, a("1.1.1.1"), a("2.2.2.2")));
        assert_ne!(derive(&k, 4098, a("1.1.1.1"), a("2.2.2.2")), derive(&k, 4097, a("1.1.1.1"), a("2.2.2.2")));
    }

    #[test]
    fn without_keys_the_policies_stand_alone_and_nothing_passes() {
        let d = desired(a("10.1.0.1"), &[net(None)]);
        assert!(d.sas.is_empty());
        assert_eq!(d.policies.len(), 2);
    }

    #[test]
    fn a_rotation_accepts_both_sends_with_one_then_drops_the_old() {
        let local = a("10.1.0.1");
        let (old, new) = (key(1, 1), key(2, 2));
        let phases = [
            NetworkKeys { send: old.clone(), accept: None },
            NetworkKeys { send: old.clone(), accept: Some(new.clone()) },
            NetworkKeys { send: new.clone(), accept: Some(old.clone()) },
            NetworkKeys { send: new.clone(), accept: None },
        ];
        let states: Vec<Desired> = phases.iter().map(|k| desired(local, &[net(Some(k.clone()))])).collect();
        let inbound = |d: &Desired| d.sas.values().filter(|s| s.inbound).count();
        let outbound = |d: &Desired| d.sas.values().filter(|s| !s.inbound).map(|s| s.spi).collect::<BTreeSet<_>>();
        assert_eq!(states.iter().map(inbound).collect::<Vec<_>>(), [2, 4, 4, 2]);
        assert_eq!(outbound(&states[0]), outbound(&states[1]));
        assert_ne!(outbound(&states[1]), outbound(&states[2]));
        // Switching the sending key adds the new SAs before deleting the old ones, and
        // leaves the policies alone.
        let have: Vec<Sa> = states[1].sas.values().cloned().collect();
        let pols: Vec<Policy> = states[1].policies.iter().copied().collect();
        let c = diff(&have, &pols, &states[2]);
        assert_eq!((c.add.len(), c.delete.len()), (2, 2));
        assert!(c.policies.is_empty() && c.delete_policies.is_empty());
        assert!(diff(&have, &pols, &states[1]).is_empty());
    }

    #[test]
    fn only_the_agents_own_are_deleted() {
        let want = desired(a("10.1.0.1"), &[net(Some(NetworkKeys { send: key(1, 1), accept: None }))]);
        let foreign = Sa { src: a("9.9.9.9"), dst: a("10.1.0.1"), spi: 0x999, reqid: 7, key: vec![], inbound: true };
        let stale = Sa { reqid: reqid(4098), spi: 0x1000_0001, ..foreign.clone() };
        let foreign_pol = Policy { reqid: 0, ..*want.policies.iter().next().unwrap() };
        let stale_pol =
            Policy { reqid: reqid(4098), selector: Selector { dport: 1, ..foreign_pol.selector }, ..foreign_pol };
        let c = diff(&[foreign, stale], &[foreign_pol, stale_pol], &want);
        assert_eq!(c.delete, [(a("10.1.0.1"), 0x1000_0001)]);
        assert_eq!(c.delete_policies, [stale_pol]);
        assert_eq!(c.add.len(), 4);
        assert_eq!(c.policies.len(), 2);
        // Nothing wanted: everything of the agent's goes, in one pass.
        let c = diff(
            &want.sas.values().cloned().collect::<Vec<_>>(),
            &want.policies.iter().copied().collect::<Vec<_>>(),
            &Desired::default(),
        );
        assert_eq!((c.delete.len(), c.delete_policies.len(), c.add.len()), (4, 2, 0));
    }

    #[test]
    fn keys_stay_out_of_debug_output() {
        let k = NetworkKeys { send: key(1, 0xab), accept: None };
        let d = desired(a("10.1.0.1"), &[net(Some(k.clone()))]);
        for text in [format!("{k:?}"), format!("{d:?}")] {
            assert!(text.contains("<redacted>") && !text.contains("171"), "{text}");
        }
    }

    #[test]
    fn kernel_refusals_name_the_missing_options() {
        let e = XfrmError::refused("adding an IPsec SA".into(), libc::ENOENT, true);
        assert!(e.is_unsupported() && e.to_string().contains("CONFIG_CRYPTO_GCM"), "{e}");
        let e = XfrmError::refused("adding an IPsec SA".into(), libc::EPROTONOSUPPORT, true);
        assert!(e.to_string().contains("CONFIG_INET_ESP"), "{e}");
        assert!(XfrmError::NoXfrm.to_string().contains("CONFIG_XFRM_USER"));
        assert!(!XfrmError::refused("x".into(), libc::EINVAL, true).is_unsupported());
    }
}
