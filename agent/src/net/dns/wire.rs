//! The DNS wire format, as much of it as a container resolver needs (RFC 1035): parse a
//! query, build an answer with A records, or an empty answer with a response code.
//!
//! Every byte comes from a container, so nothing here trusts a length: a query that
//! does not parse is answered `FORMERR` when its header can be read, and dropped when
//! not. Only standard queries with one question are answered; anything else is
//! `NOTIMP`. Pure: no sockets, no allocation beyond the answer.

use std::net::Ipv4Addr;

/// The fixed DNS header.
pub const HEADER_LEN: usize = 12;
/// A name's longest wire form (RFC 1035 §3.1).
pub const MAX_NAME_LEN: usize = 255;
/// A label's longest form.
pub const MAX_LABEL_LEN: usize = 63;
/// The most addresses one answer carries: 512-byte UDP answers hold ~28 A records after
/// a long question; more would need truncation and TCP, which containers rarely retry.
pub const MAX_ANSWERS: usize = 24;

/// Record type A.
pub const TYPE_A: u16 = 1;
/// Record type AAAA.
pub const TYPE_AAAA: u16 = 28;
/// Class IN.
pub const CLASS_IN: u16 = 1;

/// Response codes used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    /// The name exists (possibly with no record of the asked type).
    NoError = 0,
    /// The query could not be read.
    FormErr = 1,
    /// The resolver failed (e.g. no upstream answered).
    ServFail = 2,
    /// The name does not exist.
    NxDomain = 3,
    /// A kind of query this resolver does not do.
    NotImp = 4,
    /// Refused by policy.
    Refused = 5,
}

/// Why a query could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than a header: nothing to answer to.
    #[error("a DNS message shorter than its header ({0} bytes)")]
    NoHeader(usize),
    /// A readable header but a malformed body.
    #[error("a malformed DNS query: {0}")]
    Malformed(&'static str),
    /// Not a standard query with one question (answered `NOTIMP`).
    #[error("not a standard query with one question")]
    Unsupported,
}

/// A parsed query: what to answer and how to echo it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query<'a> {
    /// The query's ID, echoed.
    pub id: u16,
    /// Whether the client asked for recursion (echoed in the answer's RD bit).
    pub recursion_desired: bool,
    /// The asked name, lower-cased, labels joined with `.`, no trailing dot.
    pub name: String,
    /// The asked record type.
    pub qtype: u16,
    /// The asked class.
    pub qclass: u16,
    /// The question's bytes as received (name, type, class), echoed in the answer.
    pub question: &'a [u8],
}

/// The ID of a message whose header is readable (for answering `FORMERR`).
pub fn id_of(msg: &[u8]) -> Option<u16> {
    (msg.len() >= HEADER_LEN).then(|| u16::from_be_bytes([msg[0], msg[1]]))
}

/// Reads a query.
pub fn parse_query(msg: &[u8]) -> Result<Query<'_>, WireError> {
    if msg.len() < HEADER_LEN {
        return Err(WireError::NoHeader(msg.len()));
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    let is_response = flags & 0x8000 != 0;
    let opcode = (flags >> 11) & 0xf;
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    if is_response {
        return Err(WireError::Malformed("a response where a query was expected"));
    }
    if opcode != 0 || qdcount != 1 {
        return Err(WireError::Unsupported);
    }
    let mut at = HEADER_LEN;
    let mut name = String::new();
    let mut wire_len = 0usize;
    loop {
        let Some(&len) = msg.get(at) else { return Err(WireError::Malformed("the name runs past the end")) };
        at += 1;
        wire_len += 1 + len as usize;
        if len == 0 {
            break;
        }
        // A question has nowhere to point back to; compression here is an attack.
        if len & 0xc0 != 0 {
            return Err(WireError::Malformed("a compressed or extended label in the question"));
        }
        let len = len as usize;
        if len > MAX_LABEL_LEN || wire_len > MAX_NAME_LEN {
            return Err(WireError::Malformed("a name longer than DNS allows"));
        }
        let Some(label) = msg.get(at..at + len) else { return Err(WireError::Malformed("a label runs past the end")) };
        at += len;
        if !name.is_empty() {
            name.push('.');
        }
        for &b in label {
            // Names we answer are ASCII; anything else can only be forwarded, and the
            // upstream gets the original bytes, so a lossy form here is harmless.
            name.push(if b.is_ascii_graphic() && b != b'.' { b.to_ascii_lowercase() as char } else { '?' });
        }
    }
    let Some(tail) = msg.get(at..at + 4) else {
        return Err(WireError::Malformed("the question has no type and class"));
    };
    let qtype = u16::from_be_bytes([tail[0], tail[1]]);
    let qclass = u16::from_be_bytes([tail[2], tail[3]]);
    Ok(Query { id, recursion_desired: flags & 0x0100 != 0, name, qtype, qclass, question: &msg[HEADER_LEN..at + 4] })
}

/// The answer to `q`: `rcode`, and one A record per address (at most [`MAX_ANSWERS`]),
/// each with time-to-live `ttl` seconds. Authoritative, recursion available.
pub fn answer(q: &Query<'_>, rcode: Rcode, addresses: &[Ipv4Addr], ttl: u32) -> Vec<u8> {
    let addresses = &addresses[..addresses.len().min(MAX_ANSWERS)];
    let mut out = Vec::with_capacity(HEADER_LEN + q.question.len() + addresses.len() * 16);
    out.extend_from_slice(&q.id.to_be_bytes());
    // QR=1, AA=1, RD echoed, RA=1.
    let flags: u16 = 0x8000 | 0x0400 | if q.recursion_desired { 0x0100 } else { 0 } | 0x0080 | rcode as u16;
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(q.question);
    for ip in addresses {
        // The name as a pointer to the question's (offset 12).
        out.extend_from_slice(&[0xc0, HEADER_LEN as u8]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    out
}

/// A bare answer with `rcode` to a message whose header could be read but not the
/// rest: the header echoed with no sections.
pub fn bare(id: u16, rcode: Rcode) -> Vec<u8> {
    let flags: u16 = 0x8000 | 0x0080 | rcode as u16;
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name` of type `qtype`, as `dig` would send it.
    pub(crate) fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.') {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&CLASS_IN.to_be_bytes());
        m
    }

    #[test]
    fn a_query_is_read_and_answered() {
        let m = query(0xbeef, "Tasks.Web", TYPE_A);
        let q = parse_query(&m).unwrap();
        assert_eq!((q.id, q.name.as_str(), q.qtype, q.qclass), (0xbeef, "tasks.web", TYPE_A, CLASS_IN));
        let a = answer(&q, Rcode::NoError, &[Ipv4Addr::new(10, 0, 1, 2), Ipv4Addr::new(10, 0, 1, 3)], 0);
        assert_eq!(&a[..2], &[0xbe, 0xef]);
        assert_eq!(a[3] & 0xf, 0);
        assert_eq!(u16::from_be_bytes([a[6], a[7]]), 2);
        assert_eq!(&a[a.len() - 4..], &[10, 0, 1, 3]);
        // The question is echoed byte for byte (original case).
        assert_eq!(&a[12..12 + q.question.len()], &m[12..]);
    }

    #[test]
    fn hostile_queries_are_refused_not_trusted() {
        assert_eq!(parse_query(&[0; 5]), Err(WireError::NoHeader(5)));
        let mut m = query(1, "web", TYPE_A);
        m.truncate(m.len() - 2);
        assert!(matches!(parse_query(&m), Err(WireError::Malformed(_))));
        // A pointer in the question.
        let mut m = query(1, "web", TYPE_A);
        m[12] = 0xc0;
        assert!(matches!(parse_query(&m), Err(WireError::Malformed(_))));
        // A label longer than 63.
        let long = "x".repeat(64);
        assert!(matches!(parse_query(&query(1, &long, TYPE_A)), Err(WireError::Malformed(_))));
        // A name longer than 255.
        let name = vec!["y".repeat(60); 5].join(".");
        assert!(matches!(parse_query(&query(1, &name, TYPE_A)), Err(WireError::Malformed(_))));
        // Two questions, or another opcode: not implemented.
        let mut m = query(1, "web", TYPE_A);
        m[5] = 2;
        assert_eq!(parse_query(&m), Err(WireError::Unsupported));
        let mut m = query(1, "web", TYPE_A);
        m[2] |= 0x10;
        assert_eq!(parse_query(&m), Err(WireError::Unsupported));
        assert_eq!(id_of(&m), Some(1));
        assert_eq!(bare(7, Rcode::FormErr)[3] & 0xf, 1);
    }

    #[test]
    fn answers_are_capped() {
        let m = query(1, "tasks.big", TYPE_A);
        let q = parse_query(&m).unwrap();
        let many: Vec<Ipv4Addr> = (0..100u8).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
        let a = answer(&q, Rcode::NoError, &many, 0);
        assert_eq!(u16::from_be_bytes([a[6], a[7]]) as usize, MAX_ANSWERS);
        assert!(a.len() <= 512);
    }

    proptest::proptest! {
        /// No input makes the parser panic or read out of bounds.
        #[test]
        fn any_bytes_are_safe(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            if let Ok(q) = parse_query(&bytes) {
                let _ = answer(&q, Rcode::NoError, &[Ipv4Addr::LOCALHOST], 1);
            }
        }
    }
}
