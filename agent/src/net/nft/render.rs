//! A [`Ruleset`] as one nf_tables batch that replaces table `ip shoal` atomically. Pure.
//!
//! The table, in `nft` syntax (`svc-<i>` for the i-th service):
//!
//! ```text
//! table ip shoal {
//!   chain prerouting  { type nat hook prerouting priority dstnat; jump services }
//!   chain output      { type nat hook output priority dstnat; jump services }
//!   chain postrouting { type nat hook postrouting priority srcnat;
//!                       ip saddr 10.88.0.0/16 oifname != "shoal0" masquerade }
//!   chain services    { ip daddr 10.99.0.1 meta l4proto tcp th dport 80 jump svc-0
//!                       fib daddr type local meta l4proto tcp th dport 8000 jump svc-1 }
//!   chain svc-0       { numgen random mod 3 == 0 dnat to 10.88.0.2:80
//!                       numgen random mod 2 == 0 dnat to 10.88.0.3:80
//!                       dnat to 10.88.0.4:80 }
//! }
//! ```
//!
//! A port-less service ([`super::L4::Any`], a virtual IP) is matched by `ip daddr` alone
//! and its backends are `dnat to <address>`, which keeps the connection's port.
//!
//! Rule k of N backends matches one time in N-k, so each backend gets 1/N of the
//! connections without sets or maps (which need more kernel options). Conntrack applies
//! the choice to the whole connection, replies included.
//!
//! The batch starts with "create table if missing, delete table": the kernel applies a
//! batch all at once or not at all, so packets see the old rules or the new ones, never
//! none, and a refusal anywhere leaves the old rules in place. Other tables are never
//! named, so other programs' rules on the board are left alone.

use super::error::RulesetError;
use super::model::{Destination, Ruleset, SandboxRuleset, Service, MAX_SERVICES};
use super::wire::{BatchWriter, CmpOp, NLM_F_CREATE, REG_1, REG_2};

/// The agent's table (family `ip`).
pub const TABLE: &str = "shoal";
/// The base chains: name, hook number (`NF_INET_*`), priority (`NF_IP_PRI_NAT_DST` -100,
/// `NF_IP_PRI_NAT_SRC` 100).
const BASE_CHAINS: [(&str, u32, i32); 3] = [("prerouting", 0, -100), ("output", 3, -100), ("postrouting", 4, 100)];
/// The regular chain both DNAT hooks jump to.
const SERVICES: &str = "services";

/// `NFT_META_OIFNAME`, `NFT_META_L4PROTO`.
const META_OIFNAME: u32 = 7;
const META_L4PROTO: u32 = 16;
/// `NFT_PAYLOAD_NETWORK_HEADER`, `NFT_PAYLOAD_TRANSPORT_HEADER`.
const NETWORK_HEADER: u32 = 1;
const TRANSPORT_HEADER: u32 = 2;
/// Offsets in the IPv4 header and in the TCP/UDP header.
const IP_SADDR: u32 = 12;
const IP_DADDR: u32 = 16;
const L4_DPORT: u32 = 2;
/// `RTN_LOCAL`, as `fib daddr type` yields it.
const RTN_LOCAL: u32 = 2;
/// `IFNAMSIZ`: `meta oifname` loads the name zero-padded to this.
const IFNAMSIZ: usize = 16;

/// One message of a rendered batch, to name it when the kernel refuses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Its sequence number.
    pub seq: u32,
    /// What it is ("rule 2 of service 10.99.0.1:80/tcp").
    pub what: String,
    /// The kernel options it needs beyond nf_tables itself.
    pub needs: &'static str,
}

/// A batch ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The datagram.
    pub bytes: Vec<u8>,
    /// Its messages that the kernel acknowledges, in order.
    pub parts: Vec<Part>,
    /// The sequence numbers used, batch delimiters included.
    pub seqs: std::ops::RangeInclusive<u32>,
}

impl Rendered {
    /// The part with sequence number `seq`.
    pub fn part(&self, seq: u32) -> Option<&Part> {
        self.parts.iter().find(|p| p.seq == seq)
    }
}

struct Parts {
    w: BatchWriter,
    parts: Vec<Part>,
}

impl Parts {
    fn push(&mut self, seq: u32, what: String, needs: &'static str) {
        self.parts.push(Part { seq, what, needs });
    }

    fn finish(self) -> Rendered {
        let (bytes, seqs) = self.w.finish();
        Rendered { bytes, parts: self.parts, seqs }
    }

    /// "Create table if missing, then delete it": deleting alone fails when it is
    /// missing, and a batch fails as a whole.
    fn drop_table(&mut self) {
        let seq = self.w.new_table(TABLE, NLM_F_CREATE);
        self.push(seq, format!("table ip {TABLE}"), "");
        let seq = self.w.del_table(TABLE);
        self.push(seq, format!("removing table ip {TABLE}"), "");
    }
}

/// Renders `ruleset` into one batch whose first message has sequence number `first_seq`.
pub fn render(ruleset: &Ruleset, first_seq: u32) -> Result<Rendered, RulesetError> {
    render_table(ruleset, &BASE_CHAINS, &[], first_seq)
}

/// Renders a container's own load balancer, for its network namespace: the same table
/// `ip shoal` with only the `output` hook (the container's own connections), its VIPs
/// as port-less services, and `ip daddr <vip> reject` for each VIP without backends:
///
/// ```text
/// table ip shoal {
///   chain output   { type nat hook output priority dstnat; jump services }
///   chain services { ip daddr 10.0.1.100 jump svc-0
///                    ip daddr 10.0.1.101 reject with icmp port-unreachable }
///   chain svc-0    { numgen random mod 2 == 0 dnat to 10.0.1.2
///                    dnat to 10.0.1.3 }
/// }
/// ```
pub fn render_sandbox(table: &SandboxRuleset, first_seq: u32) -> Result<Rendered, RulesetError> {
    if table.vips.len() > MAX_SERVICES {
        return Err(RulesetError::TooMany { what: "virtual IPs", count: table.vips.len(), max: MAX_SERVICES });
    }
    let (ruleset, refused) = table.split();
    render_table(&ruleset, &BASE_CHAINS[1..2], &refused, first_seq)
}

/// The table with base chains `base` (the `dstnat` ones jump to `services`), the
/// ruleset's rules, and a refusal for each of `refused`.
fn render_table(
    ruleset: &Ruleset,
    base: &[(&str, u32, i32)],
    refused: &[std::net::Ipv4Addr],
    first_seq: u32,
) -> Result<Rendered, RulesetError> {
    ruleset.validate()?;
    let mut p = Parts { w: BatchWriter::new(first_seq), parts: Vec::new() };
    p.drop_table();
    let seq = p.w.new_table(TABLE, NLM_F_CREATE);
    p.push(seq, format!("table ip {TABLE}"), "");

    for &(name, hook, priority) in base {
        let seq = p.w.new_chain(TABLE, name, Some(("nat", hook, priority)));
        p.push(seq, format!("nat chain {name}"), "CONFIG_NFT_NAT, CONFIG_NF_NAT");
    }
    let seq = p.w.new_chain(TABLE, SERVICES, None);
    p.push(seq, format!("chain {SERVICES}"), "");
    for i in 0..ruleset.services.len() {
        let name = service_chain(i);
        let seq = p.w.new_chain(TABLE, &name, None);
        p.push(seq, format!("chain {name}"), "");
    }

    for (chain, _, _) in base.iter().filter(|(_, _, priority)| *priority < 0) {
        let seq = p.w.rule(TABLE, chain, |e| {
            e.jump(SERVICES);
        });
        p.push(seq, format!("the jump from {chain} to {SERVICES}"), "");
    }
    for m in &ruleset.masquerades {
        let seq = p.w.rule(TABLE, "postrouting", |e| {
            let (net, prefix) = (m.source.network().octets(), m.source.prefix());
            if prefix > 0 {
                e.payload(NETWORK_HEADER, IP_SADDR, 4, REG_1);
                if prefix < 32 {
                    e.mask(REG_1, &(u32::MAX << (32 - prefix)).to_be_bytes());
                }
                e.cmp(REG_1, CmpOp::Eq, &net);
            }
            let mut name = [0u8; IFNAMSIZ];
            name[..m.except_out.len()].copy_from_slice(m.except_out.as_bytes());
            e.meta(META_OIFNAME, REG_1).cmp(REG_1, CmpOp::Neq, &name).masquerade();
        });
        p.push(seq, format!("rule {m}"), "CONFIG_NFT_MASQ");
    }
    for via in &ruleset.masquerade_via {
        let seq = p.w.rule(TABLE, "postrouting", |e| {
            let mut name = [0u8; IFNAMSIZ];
            name[..via.len()].copy_from_slice(via.as_bytes());
            e.meta(META_OIFNAME, REG_1).cmp(REG_1, CmpOp::Eq, &name).masquerade();
        });
        p.push(seq, format!("rule masquerade via {via}"), "CONFIG_NFT_MASQ");
    }
    for (i, s) in ruleset.services.iter().enumerate() {
        let chain = service_chain(i);
        let seq = p.w.rule(TABLE, SERVICES, |e| {
            match s.destination {
                Destination::Address(a) => {
                    e.payload(NETWORK_HEADER, IP_DADDR, 4, REG_1).cmp(REG_1, CmpOp::Eq, &a.octets())
                }
                Destination::Local => e.fib_daddr_type(REG_1).cmp(REG_1, CmpOp::Eq, &RTN_LOCAL.to_ne_bytes()),
            };
            if let Some(number) = s.proto.number() {
                e.meta(META_L4PROTO, REG_1)
                    .cmp(REG_1, CmpOp::Eq, &[number])
                    .payload(TRANSPORT_HEADER, L4_DPORT, 2, REG_1)
                    .cmp(REG_1, CmpOp::Eq, &s.port.to_be_bytes());
            }
            e.jump(&chain);
        });
        let needs = match s.destination {
            Destination::Address(_) => "",
            Destination::Local => "CONFIG_NFT_FIB_IPV4",
        };
        p.push(seq, format!("the match of service {s}"), needs);
        render_backends(&mut p, s, &chain);
    }
    for vip in refused {
        let seq = p.w.rule(TABLE, SERVICES, |e| {
            e.payload(NETWORK_HEADER, IP_DADDR, 4, REG_1)
                .cmp(REG_1, CmpOp::Eq, &vip.octets())
                .reject_port_unreachable();
        });
        p.push(seq, format!("the refusal of {vip} (no running task)"), "CONFIG_NFT_REJECT, CONFIG_NFT_REJECT_IPV4");
    }
    Ok(p.finish())
}

/// Rule k of N: `numgen random mod (N-k) == 0 dnat to backend k`; the last one has no
/// condition, so every connection that reaches the chain is sent somewhere.
fn render_backends(p: &mut Parts, s: &Service, chain: &str) {
    let n = s.backends.len();
    for (k, b) in s.backends.iter().enumerate() {
        let seq = p.w.rule(TABLE, chain, |e| {
            if k + 1 < n {
                e.numgen_random((n - k) as u32, REG_1).cmp(REG_1, CmpOp::Eq, &0u32.to_ne_bytes());
            }
            if s.proto.number().is_some() {
                e.immediate(REG_1, &b.ip().octets()).immediate(REG_2, &b.port().to_be_bytes()).dnat(REG_1, REG_2);
            } else {
                e.immediate(REG_1, &b.ip().octets()).dnat_addr(REG_1);
            }
        });
        p.push(seq, format!("rule {k} of service {s} (dnat to {b})"), "CONFIG_NFT_NUMGEN, CONFIG_NFT_NAT");
    }
}

/// Removes table `ip shoal` if it exists (and does nothing otherwise).
pub fn render_removal(first_seq: u32) -> Rendered {
    let mut p = Parts { w: BatchWriter::new(first_seq), parts: Vec::new() };
    p.drop_table();
    p.finish()
}

fn service_chain(i: usize) -> String {
    format!("svc-{i}")
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::super::model::{Masquerade, L4};
    use super::*;
    use crate::net::Subnet;

    /// Walks a batch into (message type, flags, seq, body) and checks every length.
    fn messages(bytes: &[u8]) -> Vec<(u16, u16, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            assert!(len >= 20 && len & 3 == 0 && at + len <= bytes.len(), "message at {at} has length {len}");
            let ty = u16::from_ne_bytes(bytes[at + 4..at + 6].try_into().unwrap());
            let flags = u16::from_ne_bytes(bytes[at + 6..at + 8].try_into().unwrap());
            let seq = u32::from_ne_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            out.push((ty, flags, seq, bytes[at + 20..at + len].to_vec()));
            at += len;
        }
        out
    }

    /// Attributes as (type without flags, payload).
    type Attrs = Vec<(u16, Vec<u8>)>;

    /// The attributes in `body`.
    fn attrs(body: &[u8]) -> Attrs {
        let mut out = Vec::new();
        let mut at = 0;
        while at < body.len() {
            let len = u16::from_ne_bytes(body[at..at + 2].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(body[at + 2..at + 4].try_into().unwrap()) & 0x7fff;
            out.push((ty, body[at + 4..at + len].to_vec()));
            at += (len + 3) & !3;
        }
        out
    }

    /// The expressions of a rule message as (name, attributes).
    fn exprs(body: &[u8]) -> Vec<(String, Attrs)> {
        let list = attrs(body).into_iter().find(|(t, _)| *t == 4).expect("expressions").1;
        attrs(&list)
            .into_iter()
            .map(|(_, elem)| {
                let a = attrs(&elem);
                let name = String::from_utf8(a[0].1.clone()).unwrap().trim_end_matches('\0').to_string();
                (name, attrs(&a[1].1))
            })
            .collect()
    }

    fn u32a(v: u32) -> Vec<u8> {
        v.to_be_bytes().to_vec()
    }

    /// `NFTA_DATA_VALUE` nested around `data`.
    fn value(data: &[u8]) -> Vec<u8> {
        let mut v = ((4 + data.len()) as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(&1u16.to_ne_bytes());
        v.extend_from_slice(data);
        while v.len() & 3 != 0 {
            v.push(0);
        }
        v
    }

    fn vip(backends: usize) -> Service {
        Service {
            destination: Destination::Address(Ipv4Addr::new(10, 99, 0, 1)),
            proto: L4::Tcp,
            port: 80,
            backends: (0..backends)
                .map(|i| SocketAddrV4::new(Ipv4Addr::new(10, 88, (i / 200) as u8, (2 + i % 200) as u8), 8080))
                .collect(),
        }
    }

    #[test]
    fn an_empty_ruleset_is_the_table_and_its_chains() {
        let r = render(&Ruleset::default(), 100).unwrap();
        let m = messages(&r.bytes);
        let types: Vec<u16> = m.iter().map(|x| x.0).collect();
        // begin, newtable, deltable, newtable, 4 chains, 2 jumps, end
        assert_eq!(types, [0x10, 0xa00, 0xa02, 0xa00, 0xa03, 0xa03, 0xa03, 0xa03, 0xa06, 0xa06, 0x11]);
        assert_eq!(m.iter().map(|x| x.2).collect::<Vec<_>>(), (100..111).collect::<Vec<_>>());
        assert_eq!(r.seqs, 100..=110);
        // Every command asks for an ack and is in the parts; the delimiters are not.
        assert!(m[1..10].iter().all(|x| x.1 & 0x4 != 0));
        assert_eq!(r.parts.len(), 9);
        assert_eq!(r.part(102).unwrap().what, "removing table ip shoal");
        // The output chain: hook LOCAL_OUT (3), priority -100, type nat.
        let out = attrs(&m[5].3);
        assert_eq!(out[1], (3, b"output\0".to_vec()));
        assert_eq!(attrs(&out[2].1), vec![(1, u32a(3)), (2, (-100i32).to_be_bytes().to_vec())]);
        assert_eq!(out[3], (7, b"nat\0".to_vec()));
    }

    #[test]
    fn masquerade_matches_the_prefix_and_not_the_bridge() {
        let rs = Ruleset {
            masquerades: vec![Masquerade {
                source: Subnet::new(Ipv4Addr::new(10, 88, 0, 0), 16).unwrap(),
                except_out: "shoal0".into(),
            }],
            services: vec![],
            masquerade_via: vec![],
        };
        let r = render(&rs, 0).unwrap();
        let m = messages(&r.bytes);
        let rule = &m[m.len() - 2];
        assert_eq!(attrs(&rule.3)[1], (2, b"postrouting\0".to_vec()));
        let mut name = b"shoal0".to_vec();
        name.resize(16, 0);
        let want = vec![
            ("payload".to_string(), vec![(1, u32a(1)), (2, u32a(1)), (3, u32a(12)), (4, u32a(4))]),
            (
                "bitwise".into(),
                vec![(1, u32a(1)), (2, u32a(1)), (3, u32a(4)), (4, value(&[255, 255, 0, 0])), (5, value(&[0; 4]))],
            ),
            ("cmp".into(), vec![(1, u32a(1)), (2, u32a(0)), (3, value(&[10, 88, 0, 0]))]),
            ("meta".into(), vec![(1, u32a(1)), (2, u32a(7))]),
            ("cmp".into(), vec![(1, u32a(1)), (2, u32a(1)), (3, value(&name))]),
            ("masq".into(), vec![]),
        ];
        assert_eq!(exprs(&rule.3), want);
        assert_eq!(r.parts.last().unwrap().needs, "CONFIG_NFT_MASQ");
    }

    #[test]
    fn masquerade_via_matches_the_interface_only() {
        let rs = Ruleset { masquerades: vec![], services: vec![], masquerade_via: vec!["sob4097".into()] };
        let r = render(&rs, 0).unwrap();
        let m = messages(&r.bytes);
        let rule = &m[m.len() - 2];
        assert_eq!(attrs(&rule.3)[1], (2, b"postrouting\0".to_vec()));
        let mut name = b"sob4097".to_vec();
        name.resize(16, 0);
        let e = exprs(&rule.3);
        let names: Vec<&str> = e.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["meta", "cmp", "masq"]);
        // NFT_CMP_EQ is 0.
        assert_eq!(e[1].1, vec![(1, u32a(1)), (2, u32a(0)), (3, value(&name))]);
        let bad = Ruleset { masquerades: vec![], services: vec![], masquerade_via: vec!["a bad name".into()] };
        assert!(matches!(render(&bad, 0), Err(RulesetError::Interface(_))));
    }

    #[test]
    fn backends_are_chained_numgen_rules_ending_unconditionally() {
        let rs = Ruleset { masquerades: vec![], services: vec![vip(3)], masquerade_via: vec![] };
        let r = render(&rs, 0).unwrap();
        let m = messages(&r.bytes);
        // The service's match in chain `services`.
        let matcher = &m[m.len() - 5];
        assert_eq!(attrs(&matcher.3)[1], (2, b"services\0".to_vec()));
        let e = exprs(&matcher.3);
        let names: Vec<&str> = e.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(names, ["payload", "cmp", "meta", "cmp", "payload", "cmp", "immediate"]);
        assert_eq!(e[0].1[2], (3, u32a(16)));
        assert_eq!(e[1].1[2], (3, value(&[10, 99, 0, 1])));
        assert_eq!(e[3].1[2], (3, value(&[6])));
        assert_eq!(e[4].1, vec![(1, u32a(1)), (2, u32a(2)), (3, u32a(2)), (4, u32a(2))]);
        assert_eq!(e[5].1[2], (3, value(&[0, 80])));
        // jump svc-0: verdict register, NFT_JUMP, the chain's name.
        assert_eq!(e[6].1[0], (1, u32a(0)));
        let verdict = attrs(&attrs(&e[6].1[1].1)[0].1);
        assert_eq!(verdict, vec![(1, (-3i32).to_be_bytes().to_vec()), (2, b"svc-0\0".to_vec())]);

        for (k, modulus) in [(0usize, Some(3u32)), (1, Some(2)), (2, None)] {
            let rule = &m[m.len() - 4 + k];
            assert_eq!(attrs(&rule.3)[1], (2, b"svc-0\0".to_vec()));
            let e = exprs(&rule.3);
            let mut at = 0;
            if let Some(modulus) = modulus {
                assert_eq!(e[0], ("numgen".into(), vec![(1, u32a(1)), (2, u32a(modulus)), (3, u32a(1))]));
                assert_eq!(e[1], ("cmp".into(), vec![(1, u32a(1)), (2, u32a(0)), (3, value(&[0; 4]))]));
                at = 2;
            }
            let ip = [10, 88, 0, 2 + k as u8];
            assert_eq!(e[at], ("immediate".into(), vec![(1, u32a(1)), (2, value(&ip))]));
            assert_eq!(e[at + 1], ("immediate".into(), vec![(1, u32a(2)), (2, value(&8080u16.to_be_bytes()))]));
            assert_eq!(e[at + 2], ("nat".into(), vec![(1, u32a(1)), (2, u32a(2)), (3, u32a(1)), (5, u32a(2))]));
            assert_eq!(e.len(), at + 3);
        }
    }

    #[test]
    fn a_local_destination_uses_fib() {
        let mut s = vip(1);
        s.destination = Destination::Local;
        let r = render(&Ruleset { masquerades: vec![], services: vec![s], masquerade_via: vec![] }, 0).unwrap();
        let m = messages(&r.bytes);
        let e = exprs(&m[m.len() - 3].3);
        assert_eq!(e[0], ("fib".into(), vec![(1, u32a(1)), (2, u32a(3)), (3, u32a(2))]));
        assert_eq!(e[1].1[2], (3, value(&2u32.to_ne_bytes())));
        assert_eq!(r.parts[r.parts.len() - 2].needs, "CONFIG_NFT_FIB_IPV4");
    }

    #[test]
    fn a_portless_service_matches_the_address_only_and_keeps_the_port() {
        let mut s = vip(2);
        s.proto = L4::Any;
        s.port = 0;
        for b in &mut s.backends {
            b.set_port(0);
        }
        let r = render(&Ruleset { masquerades: vec![], services: vec![s.clone()], masquerade_via: vec![] }, 0).unwrap();
        let m = messages(&r.bytes);
        // The match, then two backends; the batch's end message last.
        let matched = exprs(&m[m.len() - 4].3);
        assert_eq!(matched.len(), 3, "payload, cmp, jump: {matched:?}");
        assert_eq!(matched[1].1[2], (3, value(&[10, 99, 0, 1])));
        let last = exprs(&m[m.len() - 2].3);
        assert_eq!(last[0], ("immediate".into(), vec![(1, u32a(1)), (2, value(&[10, 88, 0, 3]))]));
        assert_eq!(last[1], ("nat".into(), vec![(1, u32a(1)), (2, u32a(2)), (3, u32a(1))]));
        assert_eq!(last.len(), 2);

        s.port = 80;
        assert!(matches!(
            render(&Ruleset { masquerades: vec![], services: vec![s.clone()], masquerade_via: vec![] }, 0),
            Err(RulesetError::PortOfAny(_))
        ));
        s.port = 0;
        s.backends[0].set_port(80);
        assert!(matches!(
            render(&Ruleset { masquerades: vec![], services: vec![s], masquerade_via: vec![] }, 0),
            Err(RulesetError::Backend { .. })
        ));
    }

    #[test]
    fn bad_rulesets_are_refused_before_rendering() {
        let none = Ruleset { masquerades: vec![], services: vec![vip(0)], masquerade_via: vec![] };
        let e = render(&none, 0).unwrap_err();
        assert_eq!(e, RulesetError::NoBackends("10.99.0.1:80/tcp".into()));
        assert!(e.to_string().contains("give it at least one"), "{e}");

        let mut zero = vip(2);
        zero.port = 0;
        assert_eq!(
            render(&Ruleset { masquerades: vec![], services: vec![zero], masquerade_via: vec![] }, 0).unwrap_err(),
            RulesetError::ZeroPort("10.99.0.1:0/tcp".into())
        );

        let mut bad_backend = vip(2);
        bad_backend.backends[1].set_port(0);
        let e = render(&Ruleset { masquerades: vec![], services: vec![bad_backend], masquerade_via: vec![] }, 0)
            .unwrap_err();
        assert!(matches!(e, RulesetError::Backend { .. }), "{e}");

        let twice = Ruleset { masquerades: vec![], services: vec![vip(1), vip(2)], masquerade_via: vec![] };
        assert!(matches!(render(&twice, 0), Err(RulesetError::Duplicate(_))));

        for name in ["", "much-too-long-name", "a\"b", "eth0\0"] {
            let m =
                Masquerade { source: Subnet::new(Ipv4Addr::new(10, 88, 0, 0), 16).unwrap(), except_out: name.into() };
            let rs = Ruleset { masquerades: vec![m], services: vec![], masquerade_via: vec![] };
            assert!(matches!(render(&rs, 0), Err(RulesetError::Interface(_))), "{name:?}");
        }

        let many = Ruleset {
            masquerades: vec![],
            services: vec![vip(super::super::model::MAX_BACKENDS + 1)],
            masquerade_via: vec![],
        };
        assert!(matches!(render(&many, 0), Err(RulesetError::TooMany { .. })));
    }

    #[test]
    fn a_containers_table_has_only_output_and_refuses_vips_without_tasks() {
        use super::super::model::SandboxRuleset;
        let (vip, empty) = (Ipv4Addr::new(10, 0, 1, 100), Ipv4Addr::new(10, 0, 1, 101));
        let table = SandboxRuleset {
            vips: [(vip, vec![Ipv4Addr::new(10, 0, 1, 2), Ipv4Addr::new(10, 0, 1, 3)]), (empty, vec![])].into(),
        };
        let r = render_sandbox(&table, 0).unwrap();
        let m = messages(&r.bytes);
        // begin, newtable, deltable, newtable, output, services, svc-0, jump, match,
        // two backends, the refusal, end
        let types: Vec<u16> = m.iter().map(|x| x.0).collect();
        assert_eq!(types, [0x10, 0xa00, 0xa02, 0xa00, 0xa03, 0xa03, 0xa03, 0xa06, 0xa06, 0xa06, 0xa06, 0xa06, 0x11]);
        assert_eq!(attrs(&m[4].3)[1], (3, b"output\0".to_vec()));
        let jump = attrs(&m[7].3);
        assert_eq!(jump[1], (2, b"output\0".to_vec()));
        // A port-less match of the VIP, then the refusal of the empty one.
        assert_eq!(exprs(&m[8].3).len(), 3);
        let refusal = &m[m.len() - 2];
        assert_eq!(attrs(&refusal.3)[1], (2, b"services\0".to_vec()));
        let e = exprs(&refusal.3);
        assert_eq!(e[1].1[2], (3, value(&empty.octets())));
        assert_eq!(e[2], ("reject".into(), vec![(1, u32a(0)), (2, vec![3])]));
        assert!(r.parts.last().unwrap().needs.contains("CONFIG_NFT_REJECT"));
        // No VIP at all: an empty table, which replaces a stale one.
        let none = messages(&render_sandbox(&SandboxRuleset::default(), 0).unwrap().bytes);
        assert_eq!(none.len(), 8);
        // Too many backends is refused like on the board.
        let many = SandboxRuleset { vips: [(vip, vec![Ipv4Addr::new(10, 0, 1, 2); 300])].into() };
        assert!(matches!(render_sandbox(&many, 0), Err(RulesetError::TooMany { .. })));
    }

    #[test]
    fn removal_only_names_our_table() {
        let r = render_removal(5);
        let m = messages(&r.bytes);
        assert_eq!(m.iter().map(|x| x.0).collect::<Vec<_>>(), [0x10, 0xa00, 0xa02, 0x11]);
        assert_eq!(attrs(&m[2].3), vec![(1, b"shoal\0".to_vec())]);
    }
}
