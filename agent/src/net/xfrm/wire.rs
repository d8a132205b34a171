//! The `NETLINK_XFRM` encoding of the few messages the agent sends (new, delete and dump
//! of security associations and policies) and the parsing of the kernel's answers. Pure:
//! bytes in, bytes out; every reply is read as hostile bytes (lengths checked before
//! use, unknown attributes skipped, truncation refused).
//!
//! Numbers and layouts are the kernel UAPI's (`include/uapi/linux/xfrm.h`,
//! `netlink.h`), in host byte order except where the UAPI says `__be`. The structures'
//! sizes are those of every target the agent builds for (x86_64, aarch64, armv7 EABI:
//! `__u64` is 8-byte aligned on all three); only i386 lays them out differently.

use std::net::Ipv4Addr;

/// `XFRM_MSG_NEWSA`.
pub const MSG_NEWSA: u16 = 0x10;
/// `XFRM_MSG_DELSA`.
pub const MSG_DELSA: u16 = 0x11;
/// `XFRM_MSG_GETSA`.
pub const MSG_GETSA: u16 = 0x12;
/// `XFRM_MSG_NEWPOLICY`.
pub const MSG_NEWPOLICY: u16 = 0x13;
/// `XFRM_MSG_DELPOLICY`.
pub const MSG_DELPOLICY: u16 = 0x14;
/// `XFRM_MSG_GETPOLICY`.
pub const MSG_GETPOLICY: u16 = 0x15;
/// `XFRM_MSG_UPDPOLICY`: add or replace.
pub const MSG_UPDPOLICY: u16 = 0x19;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_HDRLEN: usize = 16;
const NLA_HDRLEN: usize = 4;

/// `XFRMA_TMPL`: the policy's templates (an array of `xfrm_user_tmpl`).
const XFRMA_TMPL: u16 = 5;
/// `XFRMA_ALG_AEAD`: a `struct xfrm_algo_aead` and its key.
const XFRMA_ALG_AEAD: u16 = 18;

const AF_INET: u16 = 2;
/// `IPPROTO_ESP`.
pub const IPPROTO_ESP: u8 = 50;
/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: u8 = 17;
/// `XFRM_MODE_TRANSPORT`.
const MODE_TRANSPORT: u8 = 0;
/// `XFRM_INF`: no limit.
const INF: u64 = u64::MAX;

/// `sizeof(struct xfrm_selector)`.
pub const SELECTOR_LEN: usize = 56;
/// `sizeof(struct xfrm_usersa_info)`.
pub const USERSA_INFO_LEN: usize = 224;
/// `sizeof(struct xfrm_usersa_id)`.
pub const USERSA_ID_LEN: usize = 24;
/// `sizeof(struct xfrm_userpolicy_info)`.
pub const USERPOLICY_INFO_LEN: usize = 168;
/// `sizeof(struct xfrm_userpolicy_id)`.
pub const USERPOLICY_ID_LEN: usize = 64;
/// `sizeof(struct xfrm_user_tmpl)`.
pub const USER_TMPL_LEN: usize = 64;
/// `sizeof(struct xfrm_algo_aead)` without its key.
const ALGO_AEAD_LEN: usize = 72;

/// The AEAD the agent uses: AES-GCM with a 128-bit key, a 32-bit salt and a 128-bit
/// tag (RFC 4106), the kernel's name for it.
pub const AEAD_NAME: &str = "rfc4106(gcm(aes))";
/// Key and salt: 16 + 4 bytes.
pub const AEAD_KEY_LEN: usize = 20;
/// The ICV (tag) length in bits.
pub const AEAD_ICV_BITS: u32 = 128;
/// Replay window of inbound SAs, in packets.
pub const REPLAY_WINDOW: u8 = 32;

/// Which way a policy applies (`XFRM_POLICY_IN`, `XFRM_POLICY_OUT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    /// Arriving at this board.
    In,
    /// Leaving this board.
    Out,
}

impl Dir {
    fn code(self) -> u8 {
        match self {
            Dir::In => 0,
            Dir::Out => 1,
        }
    }
}

/// What an SA or policy matches: IPv4 UDP from `src/src_prefix` to `dst/dst_prefix`,
/// destination port `dport` (0: any).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    /// Source address.
    pub src: Ipv4Addr,
    /// Source prefix length (0: any source).
    pub src_prefix: u8,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Destination prefix length.
    pub dst_prefix: u8,
    /// UDP destination port, 0 for any.
    pub dport: u16,
}

/// A transport-mode ESP security association, as the agent makes and reads them.
#[derive(Clone, PartialEq, Eq)]
pub struct Sa {
    /// Source (the sending board's underlay address).
    pub src: Ipv4Addr,
    /// Destination (the receiving board's).
    pub dst: Ipv4Addr,
    /// Security parameter index (unique per destination).
    pub spi: u32,
    /// Request ID: which policy template it serves (and, by its range, that it is the agent's).
    pub reqid: u32,
    /// AES-128 key and 4-byte salt; empty when read back without it.
    pub key: Vec<u8>,
    /// Whether it receives (gets a replay window).
    pub inbound: bool,
}

impl std::fmt::Debug for Sa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys never reach a log.
        f.debug_struct("Sa")
            .field("src", &self.src)
            .field("dst", &self.dst)
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("reqid", &format_args!("{:#010x}", self.reqid))
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A policy: packets matching `selector` in direction `dir` need ESP of request ID
/// `reqid` in transport mode (outbound: are encrypted; inbound: are dropped unless
/// they were).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Policy {
    /// Direction.
    pub dir: Dir,
    /// What it matches.
    pub selector: Selector,
    /// The template's request ID.
    pub reqid: u32,
    /// Priority (lower wins).
    pub priority: u32,
}

fn header(out: &mut Vec<u8>, ty: u16, flags: u16, seq: u32) {
    out.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
}

fn finish(mut out: Vec<u8>) -> Vec<u8> {
    let len = out.len() as u32;
    out[0..4].copy_from_slice(&len.to_ne_bytes());
    out
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn attr(out: &mut Vec<u8>, ty: u16, body: &[u8]) {
    out.extend_from_slice(&((NLA_HDRLEN + body.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(body);
    pad4(out);
}

/// `xfrm_address_t` holding an IPv4 address (the rest zero).
fn address(out: &mut Vec<u8>, ip: Ipv4Addr) {
    out.extend_from_slice(&ip.octets());
    out.extend_from_slice(&[0; 12]);
}

fn selector(out: &mut Vec<u8>, s: &Selector) {
    address(out, s.dst);
    address(out, s.src);
    out.extend_from_slice(&s.dport.to_be_bytes());
    out.extend_from_slice(&(if s.dport == 0 { 0u16 } else { 0xffff }).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes()); // sport
    out.extend_from_slice(&0u16.to_be_bytes()); // sport_mask
    out.extend_from_slice(&AF_INET.to_ne_bytes());
    out.push(s.dst_prefix);
    out.push(s.src_prefix);
    out.push(IPPROTO_UDP);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&0i32.to_ne_bytes()); // ifindex
    out.extend_from_slice(&0u32.to_ne_bytes()); // user
}

fn lifetime_cfg(out: &mut Vec<u8>) {
    for _ in 0..4 {
        out.extend_from_slice(&INF.to_ne_bytes()); // byte and packet limits
    }
    out.extend_from_slice(&[0; 32]); // no expiry by time
}

/// `XFRM_MSG_NEWSA` for `sa` (refused with `EEXIST` if its destination and SPI exist).
/// Its selector is the pair of addresses, UDP (what VXLAN sends).
pub fn new_sa(seq: u32, sa: &Sa) -> Vec<u8> {
    let mut out = Vec::with_capacity(NLMSG_HDRLEN + USERSA_INFO_LEN + NLA_HDRLEN + ALGO_AEAD_LEN + AEAD_KEY_LEN);
    header(&mut out, MSG_NEWSA, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq);
    let sel = Selector { src: sa.src, src_prefix: 32, dst: sa.dst, dst_prefix: 32, dport: 0 };
    selector(&mut out, &sel);
    // xfrm_id
    address(&mut out, sa.dst);
    out.extend_from_slice(&sa.spi.to_be_bytes());
    out.push(IPPROTO_ESP);
    out.extend_from_slice(&[0; 3]);
    address(&mut out, sa.src); // saddr
    lifetime_cfg(&mut out);
    out.extend_from_slice(&[0; 32]); // curlft
    out.extend_from_slice(&[0; 12]); // stats
    out.extend_from_slice(&0u32.to_ne_bytes()); // seq
    out.extend_from_slice(&sa.reqid.to_ne_bytes());
    out.extend_from_slice(&AF_INET.to_ne_bytes());
    out.push(MODE_TRANSPORT);
    out.push(if sa.inbound { REPLAY_WINDOW } else { 0 });
    out.push(0); // flags
    out.extend_from_slice(&[0; 7]);
    debug_assert_eq!(out.len(), NLMSG_HDRLEN + USERSA_INFO_LEN);
    let mut aead = Vec::with_capacity(ALGO_AEAD_LEN + sa.key.len());
    let mut name = [0u8; 64];
    name[..AEAD_NAME.len()].copy_from_slice(AEAD_NAME.as_bytes());
    aead.extend_from_slice(&name);
    aead.extend_from_slice(&((sa.key.len() * 8) as u32).to_ne_bytes());
    aead.extend_from_slice(&AEAD_ICV_BITS.to_ne_bytes());
    aead.extend_from_slice(&sa.key);
    attr(&mut out, XFRMA_ALG_AEAD, &aead);
    finish(out)
}

/// `XFRM_MSG_DELSA` of the ESP SA to `dst` with `spi`.
pub fn del_sa(seq: u32, dst: Ipv4Addr, spi: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(NLMSG_HDRLEN + USERSA_ID_LEN);
    header(&mut out, MSG_DELSA, NLM_F_REQUEST | NLM_F_ACK, seq);
    address(&mut out, dst);
    out.extend_from_slice(&spi.to_be_bytes());
    out.extend_from_slice(&AF_INET.to_ne_bytes());
    out.push(IPPROTO_ESP);
    out.push(0);
    finish(out)
}

/// `XFRM_MSG_UPDPOLICY`: `p` is added, or replaces the policy of the same selector and
/// direction.
pub fn upd_policy(seq: u32, p: &Policy) -> Vec<u8> {
    let mut out = Vec::with_capacity(NLMSG_HDRLEN + USERPOLICY_INFO_LEN + NLA_HDRLEN + USER_TMPL_LEN);
    header(&mut out, MSG_UPDPOLICY, NLM_F_REQUEST | NLM_F_ACK, seq);
    selector(&mut out, &p.selector);
    lifetime_cfg(&mut out);
    out.extend_from_slice(&[0; 32]); // curlft
    out.extend_from_slice(&p.priority.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // index: the kernel picks
    out.push(p.dir.code());
    out.push(0); // XFRM_POLICY_ALLOW
    out.push(0); // flags
    out.push(0); // share
    out.extend_from_slice(&[0; 4]);
    debug_assert_eq!(out.len(), NLMSG_HDRLEN + USERPOLICY_INFO_LEN);
    let mut t = Vec::with_capacity(USER_TMPL_LEN);
    // xfrm_id: any address, any SPI (transport mode), ESP.
    t.extend_from_slice(&[0; 16]);
    t.extend_from_slice(&0u32.to_be_bytes());
    t.push(IPPROTO_ESP);
    t.extend_from_slice(&[0; 3]);
    t.extend_from_slice(&AF_INET.to_ne_bytes());
    t.extend_from_slice(&[0; 2]);
    t.extend_from_slice(&[0; 16]); // saddr
    t.extend_from_slice(&p.reqid.to_ne_bytes());
    t.push(MODE_TRANSPORT);
    t.push(0); // share
    t.push(0); // optional: no, so a packet without it is dropped
    t.push(0);
    for _ in 0..3 {
        t.extend_from_slice(&u32::MAX.to_ne_bytes()); // any algorithm
    }
    debug_assert_eq!(t.len(), USER_TMPL_LEN);
    attr(&mut out, XFRMA_TMPL, &t);
    finish(out)
}

/// `XFRM_MSG_DELPOLICY` of the policy with `p`'s selector and direction.
pub fn del_policy(seq: u32, p: &Policy) -> Vec<u8> {
    let mut out = Vec::with_capacity(NLMSG_HDRLEN + USERPOLICY_ID_LEN);
    header(&mut out, MSG_DELPOLICY, NLM_F_REQUEST | NLM_F_ACK, seq);
    selector(&mut out, &p.selector);
    out.extend_from_slice(&0u32.to_ne_bytes()); // index: find by selector
    out.push(p.dir.code());
    out.extend_from_slice(&[0; 3]);
    finish(out)
}

/// A dump request: every SA (`MSG_GETSA`) or every policy (`MSG_GETPOLICY`).
pub fn dump(seq: u32, ty: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(NLMSG_HDRLEN);
    header(&mut out, ty, NLM_F_REQUEST | NLM_F_DUMP, seq);
    finish(out)
}

/// One message of the kernel's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// An acknowledgement (errno 0) or a refusal (a positive errno) of request `seq`.
    Ack {
        /// The request's sequence number.
        seq: u32,
        /// 0, or what the kernel refused it with.
        errno: i32,
    },
    /// The end of a dump.
    Done,
    /// An IPv4 ESP SA of a dump (key left out).
    Sa(Sa),
    /// An IPv4 policy of a dump with one ESP template.
    Policy(Policy),
    /// Something of a dump the agent does not manage (another family, protocol or shape).
    Other,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn ipv4_at(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let o: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(o))
}

/// The attributes after a fixed header of `fixed` bytes: (type, body) pairs.
fn attributes(body: &[u8], fixed: usize) -> Result<Vec<(u16, &[u8])>, String> {
    let mut rest = body.get(fixed..).ok_or("an xfrm message shorter than its header")?;
    let mut out = Vec::new();
    while rest.len() >= NLA_HDRLEN {
        let len = usize::from(u16_at(rest, 0).unwrap_or(0));
        let ty = u16_at(rest, 2).unwrap_or(0) & 0x3fff;
        if len < NLA_HDRLEN || len > rest.len() {
            return Err(format!("an xfrm attribute of length {len} in {} bytes", rest.len()));
        }
        out.push((ty, &rest[NLA_HDRLEN..len]));
        rest = rest.get((len + 3) & !3..).unwrap_or(&[]);
    }
    Ok(out)
}

fn parse_selector(b: &[u8]) -> Option<(Selector, u16, u8)> {
    let family = u16_at(b, 40)?;
    let dport_mask = u16::from_be_bytes(b.get(34..36)?.try_into().ok()?);
    let dport = u16::from_be_bytes(b.get(32..34)?.try_into().ok()?) & dport_mask;
    let sel =
        Selector { dst: ipv4_at(b, 0)?, src: ipv4_at(b, 16)?, dport, dst_prefix: *b.get(42)?, src_prefix: *b.get(43)? };
    Some((sel, family, *b.get(44)?))
}

fn parse_sa(body: &[u8]) -> Result<Reply, String> {
    if body.len() < USERSA_INFO_LEN {
        return Err(format!("an SA of {} bytes, shorter than xfrm_usersa_info", body.len()));
    }
    let family = u16_at(body, 212).unwrap_or(0);
    let proto = body[76];
    if family != AF_INET || proto != IPPROTO_ESP {
        return Ok(Reply::Other);
    }
    let spi = u32::from_be_bytes(body[72..76].try_into().map_err(|_| "spi")?);
    let sa = Sa {
        dst: ipv4_at(body, 56).ok_or("dst")?,
        src: ipv4_at(body, 80).ok_or("src")?,
        spi,
        reqid: u32_at(body, 208).ok_or("reqid")?,
        key: Vec::new(),
        inbound: body[215] != 0,
    };
    attributes(body, USERSA_INFO_LEN)?;
    Ok(Reply::Sa(sa))
}

fn parse_policy(body: &[u8]) -> Result<Reply, String> {
    if body.len() < USERPOLICY_INFO_LEN {
        return Err(format!("a policy of {} bytes, shorter than xfrm_userpolicy_info", body.len()));
    }
    let Some((selector, family, proto)) = parse_selector(body) else { return Ok(Reply::Other) };
    let dir = match body[160] {
        0 => Dir::In,
        1 => Dir::Out,
        _ => return Ok(Reply::Other),
    };
    if family != AF_INET || proto != IPPROTO_UDP {
        return Ok(Reply::Other);
    }
    let priority = u32_at(body, 152).ok_or("priority")?;
    let tmpls: Vec<&[u8]> =
        attributes(body, USERPOLICY_INFO_LEN)?.into_iter().filter(|(t, _)| *t == XFRMA_TMPL).map(|(_, b)| b).collect();
    // The agent's policies have exactly one template.
    let [t] = tmpls.as_slice() else { return Ok(Reply::Other) };
    if t.len() != USER_TMPL_LEN || t[20] != IPPROTO_ESP {
        return Ok(Reply::Other);
    }
    let reqid = u32_at(t, 44).ok_or("reqid")?;
    Ok(Reply::Policy(Policy { dir, selector, reqid, priority }))
}

/// Splits a datagram from the kernel into its messages and reads each.
pub fn parse(mut data: &[u8]) -> Result<Vec<Reply>, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < NLMSG_HDRLEN {
            return Err(format!("{} trailing bytes, shorter than a netlink header", data.len()));
        }
        let len = u32_at(data, 0).unwrap_or(0) as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(format!("a netlink message of length {len} in {} bytes", data.len()));
        }
        let ty = u16_at(data, 4).unwrap_or(0);
        let seq = u32_at(data, 8).unwrap_or(0);
        let body = &data[NLMSG_HDRLEN..len];
        out.push(match ty {
            NLMSG_ERROR => {
                let code = u32_at(body, 0).ok_or("an error message without its code")? as i32;
                // The acknowledged request's header follows; its sequence is the one that counts.
                let seq = u32_at(body, 4 + 8).unwrap_or(seq);
                Reply::Ack { seq, errno: code.checked_neg().unwrap_or(i32::MAX) }
            }
            NLMSG_DONE => Reply::Done,
            MSG_NEWSA => parse_sa(body)?,
            MSG_NEWPOLICY => parse_policy(body)?,
            _ => Reply::Other,
        });
        data = data.get((len + 3) & !3..).unwrap_or(&[]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn sa() -> Sa {
        Sa {
            src: a("10.0.0.1"),
            dst: a("10.0.0.2"),
            spi: 0x1234_5678,
            reqid: 0x5300_1001,
            key: vec![7; 20],
            inbound: true,
        }
    }

    fn policy() -> Policy {
        Policy {
            dir: Dir::Out,
            selector: Selector { src: a("10.0.0.1"), src_prefix: 32, dst: a("0.0.0.0"), dst_prefix: 0, dport: 24097 },
            reqid: 0x5300_1001,
            priority: 0x5300,
        }
    }

    #[test]
    fn new_sa_lays_out_xfrm_usersa_info_and_the_aead() {
        let m = new_sa(9, &sa());
        assert_eq!(m.len(), 16 + 224 + 4 + 72 + 20);
        assert_eq!(u32_at(&m, 0), Some(m.len() as u32));
        assert_eq!(u16_at(&m, 4), Some(MSG_NEWSA));
        assert_eq!(u16_at(&m, 6), Some(0x1 | 0x4 | 0x400 | 0x200));
        assert_eq!(u32_at(&m, 8), Some(9));
        let b = &m[16..];
        // selector: daddr, saddr, ports, family, prefixes, proto
        assert_eq!(&b[0..4], &[10, 0, 0, 2]);
        assert_eq!(&b[16..20], &[10, 0, 0, 1]);
        assert_eq!(&b[32..40], &[0; 8]);
        assert_eq!(u16_at(b, 40), Some(2));
        assert_eq!(&b[42..45], &[32, 32, 17]);
        // xfrm_id at 56: daddr, spi (big endian), proto
        assert_eq!(&b[56..60], &[10, 0, 0, 2]);
        assert_eq!(&b[72..76], &[0x12, 0x34, 0x56, 0x78]);
        assert_eq!(b[76], 50);
        // saddr at 80, lifetimes at 96: four unlimited limits, no expiry
        assert_eq!(&b[80..84], &[10, 0, 0, 1]);
        assert!(b[96..128].iter().all(|x| *x == 0xff));
        assert!(b[128..160].iter().all(|x| *x == 0));
        // reqid 208, family 212, mode 214, replay window 215
        assert_eq!(u32_at(b, 208), Some(0x5300_1001));
        assert_eq!(u16_at(b, 212), Some(2));
        assert_eq!(&b[214..216], &[0, 32]);
        // XFRMA_ALG_AEAD: name, key bits, icv bits, key
        let at = &b[224..];
        assert_eq!(u16_at(at, 0), Some(4 + 72 + 20));
        assert_eq!(u16_at(at, 2), Some(18));
        assert_eq!(&at[4..4 + 17], b"rfc4106(gcm(aes))");
        assert!(at[4 + 17..4 + 64].iter().all(|x| *x == 0));
        assert_eq!(u32_at(at, 68), Some(160));
        assert_eq!(u32_at(at, 72), Some(128));
        assert_eq!(&at[76..96], &[7; 20]);
        // An outbound SA has no replay window.
        let out = new_sa(9, &Sa { inbound: false, ..sa() });
        assert_eq!(out[16 + 215], 0);
    }

    #[test]
    fn deletions_lay_out_their_ids() {
        let m = del_sa(3, a("10.0.0.2"), 0x0102_0304);
        assert_eq!(m.len(), 16 + 24);
        assert_eq!(u16_at(&m, 4), Some(MSG_DELSA));
        assert_eq!(&m[16..20], &[10, 0, 0, 2]);
        assert_eq!(&m[32..36], &[1, 2, 3, 4]);
        assert_eq!(u16_at(&m, 36), Some(2));
        assert_eq!(m[38], 50);

        let m = del_policy(4, &policy());
        assert_eq!(m.len(), 16 + 64);
        assert_eq!(u16_at(&m, 4), Some(MSG_DELPOLICY));
        let b = &m[16..];
        assert_eq!(&b[16..20], &[10, 0, 0, 1]);
        assert_eq!(&b[32..36], &[24097u16.to_be_bytes()[0], 24097u16.to_be_bytes()[1], 0xff, 0xff]);
        assert_eq!(&b[42..45], &[0, 32, 17]);
        assert_eq!(u32_at(b, 56), Some(0));
        assert_eq!(b[60], 1);
    }

    #[test]
    fn upd_policy_lays_out_xfrm_userpolicy_info_and_one_template() {
        let m = upd_policy(5, &policy());
        assert_eq!(m.len(), 16 + 168 + 4 + 64);
        assert_eq!(u16_at(&m, 4), Some(MSG_UPDPOLICY));
        let b = &m[16..];
        assert!(b[56..88].iter().all(|x| *x == 0xff));
        assert_eq!(u32_at(b, 152), Some(0x5300));
        assert_eq!(&b[160..164], &[1, 0, 0, 0]);
        let t = &b[168 + 4..];
        assert_eq!(u16_at(&b[168..], 2), Some(5));
        assert_eq!(t[20], 50);
        assert_eq!(u16_at(t, 24), Some(2));
        assert_eq!(u32_at(t, 44), Some(0x5300_1001));
        assert_eq!(&t[48..52], &[0, 0, 0, 0]);
        assert!(t[52..64].iter().all(|x| *x == 0xff));
    }

    /// What the kernel's dump of `m` looks like: the same body under `NEWSA`/`NEWPOLICY`.
    fn as_dump(mut m: Vec<u8>, ty: u16) -> Vec<u8> {
        m[4..6].copy_from_slice(&ty.to_ne_bytes());
        m
    }

    #[test]
    fn dumps_read_back_what_was_sent() {
        let mut data = as_dump(new_sa(1, &sa()), MSG_NEWSA);
        data.extend(as_dump(upd_policy(1, &policy()), MSG_NEWPOLICY));
        let mut done = Vec::new();
        header(&mut done, NLMSG_DONE, 0, 1);
        done.extend_from_slice(&0i32.to_ne_bytes());
        data.extend(finish(done));
        let r = parse(&data).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0], Reply::Sa(Sa { key: Vec::new(), ..sa() }));
        assert_eq!(r[1], Reply::Policy(policy()));
        assert_eq!(r[2], Reply::Done);
    }

    #[test]
    fn acks_and_refusals_name_their_request() {
        let mut m = Vec::new();
        header(&mut m, NLMSG_ERROR, 0x100, 0);
        m.extend_from_slice(&(-17i32).to_ne_bytes());
        header(&mut m, MSG_NEWSA, 0, 42);
        let r = parse(&finish(m)).unwrap();
        assert_eq!(r, [Reply::Ack { seq: 42, errno: 17 }]);
    }

    #[test]
    fn hostile_replies_are_refused_or_skipped_never_trusted() {
        let good = as_dump(new_sa(1, &sa()), MSG_NEWSA);
        // Every truncation is an error, none a panic.
        for cut in 1..good.len() {
            let mut m = good[..cut].to_vec();
            if cut >= 4 {
                m[0..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            }
            let _ = parse(&m);
        }
        // A length beyond the datagram, or below a header.
        let mut m = good.clone();
        m[0..4].copy_from_slice(&(good.len() as u32 + 1).to_ne_bytes());
        assert!(parse(&m).is_err());
        let mut m = good.clone();
        m[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(parse(&m).is_err());
        // An attribute running past its message.
        let mut m = good.clone();
        m[16 + 224..16 + 226].copy_from_slice(&500u16.to_ne_bytes());
        assert!(parse(&m).is_err());
        // Another protocol is not the agent's.
        let mut m = good;
        m[16 + 76] = 51;
        assert_eq!(parse(&m).unwrap(), [Reply::Other]);
        // A policy with two templates is not the agent's either.
        let mut p = as_dump(upd_policy(1, &policy()), MSG_NEWPOLICY);
        let t = p[16 + 168..].to_vec();
        p.extend(t);
        let len = p.len() as u32;
        p[0..4].copy_from_slice(&len.to_ne_bytes());
        assert_eq!(parse(&p).unwrap(), [Reply::Other]);
        proptest::proptest!(|(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400))| {
            let _ = parse(&bytes);
        });
    }

    #[test]
    fn keys_never_reach_debug_output() {
        let text = format!("{:?}", sa());
        assert!(text.contains("<redacted>") && !text.contains("7, 7"), "{text}");
    }
}
