//! The nf_tables netlink encoding: messages, attributes and one batch, as bytes. Pure: no
//! socket, no clock. [`super::render`] uses it for rulesets; it is public so a caller (or a
//! test) can express a request the ruleset model does not cover.
//!
//! Layout (from the kernel's UAPI `linux/netlink.h`, `linux/netfilter/nfnetlink.h` and
//! `linux/netfilter/nf_tables.h`): each message is a `nlmsghdr` (length, type, flags,
//! sequence, port; native endian) and a `nfgenmsg` (family, version 0, resource id in big
//! endian), then attributes (`nlattr`: length and type in native endian, payload padded
//! to 4 bytes). nf_tables' integer attributes are big endian; register contents are raw
//! bytes as the packet holds them, except the kernel's own numbers (numgen, fib), which
//! are native endian.

/// `NFNL_SUBSYS_NFTABLES`: the high byte of every nf_tables message type.
const SUBSYS_NFTABLES: u16 = 10;
/// `NFNL_MSG_BATCH_BEGIN` / `NFNL_MSG_BATCH_END`.
const MSG_BATCH_BEGIN: u16 = 0x10;
const MSG_BATCH_END: u16 = 0x11;

/// `NLM_F_*` message flags.
pub const NLM_F_REQUEST: u16 = 0x1;
/// The kernel answers this message with an acknowledgement (or an error).
pub const NLM_F_ACK: u16 = 0x4;
/// Fail if the object exists.
pub const NLM_F_EXCL: u16 = 0x200;
/// Create the object if it is missing.
pub const NLM_F_CREATE: u16 = 0x400;
/// Add at the end of the list (rules).
pub const NLM_F_APPEND: u16 = 0x800;
/// `NLA_F_NESTED`: marks an attribute holding attributes.
const NLA_F_NESTED: u16 = 0x8000;
/// The header sizes: `nlmsghdr`, `nlattr`.
pub const NLMSG_HDRLEN: usize = 16;
const NLA_HDRLEN: usize = 4;

/// `NFPROTO_IPV4`: the `ip` family.
pub const FAMILY_IP: u8 = 2;
/// `AF_UNSPEC`, for the batch delimiters.
const FAMILY_UNSPEC: u8 = 0;

/// `NFT_MSG_*`: the nf_tables commands used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Command {
    /// `NFT_MSG_NEWTABLE`.
    NewTable = 0,
    /// `NFT_MSG_DELTABLE`.
    DelTable = 2,
    /// `NFT_MSG_NEWCHAIN`.
    NewChain = 3,
    /// `NFT_MSG_NEWRULE`.
    NewRule = 6,
}

/// Attribute numbers (`NFTA_*`) from `nf_tables.h`, grouped by what they belong to.
pub mod attr {
    /// `NFTA_TABLE_NAME`.
    pub const TABLE_NAME: u16 = 1;
    /// `NFTA_CHAIN_TABLE`, `NFTA_CHAIN_NAME`, `NFTA_CHAIN_HOOK`, `NFTA_CHAIN_POLICY`, `NFTA_CHAIN_TYPE`.
    pub const CHAIN_TABLE: u16 = 1;
    /// See [`CHAIN_TABLE`].
    pub const CHAIN_NAME: u16 = 3;
    /// See [`CHAIN_TABLE`].
    pub const CHAIN_HOOK: u16 = 4;
    /// See [`CHAIN_TABLE`].
    pub const CHAIN_TYPE: u16 = 7;
    /// `NFTA_HOOK_HOOKNUM`, `NFTA_HOOK_PRIORITY` (inside `CHAIN_HOOK`).
    pub const HOOK_HOOKNUM: u16 = 1;
    /// See [`HOOK_HOOKNUM`].
    pub const HOOK_PRIORITY: u16 = 2;
    /// `NFTA_RULE_TABLE`, `NFTA_RULE_CHAIN`, `NFTA_RULE_EXPRESSIONS`.
    pub const RULE_TABLE: u16 = 1;
    /// See [`RULE_TABLE`].
    pub const RULE_CHAIN: u16 = 2;
    /// See [`RULE_TABLE`].
    pub const RULE_EXPRESSIONS: u16 = 4;
    /// `NFTA_LIST_ELEM`: one expression in `RULE_EXPRESSIONS`.
    pub const LIST_ELEM: u16 = 1;
    /// `NFTA_EXPR_NAME`, `NFTA_EXPR_DATA`.
    pub const EXPR_NAME: u16 = 1;
    /// See [`EXPR_NAME`].
    pub const EXPR_DATA: u16 = 2;
    /// `NFTA_DATA_VALUE`, `NFTA_DATA_VERDICT`.
    pub const DATA_VALUE: u16 = 1;
    /// See [`DATA_VALUE`].
    pub const DATA_VERDICT: u16 = 2;
    /// `NFTA_VERDICT_CODE`, `NFTA_VERDICT_CHAIN`.
    pub const VERDICT_CODE: u16 = 1;
    /// See [`VERDICT_CODE`].
    pub const VERDICT_CHAIN: u16 = 2;
}

/// The registers used: the verdict register and two 16-byte data registers
/// (`NFT_REG_VERDICT`, `NFT_REG_1`, `NFT_REG_2`), which every nf_tables kernel accepts.
pub const REG_VERDICT: u32 = 0;
/// `NFT_REG_1`.
pub const REG_1: u32 = 1;
/// `NFT_REG_2`.
pub const REG_2: u32 = 2;

/// One rule's expression list being written; see [`BatchWriter::rule`].
#[derive(Debug)]
pub struct Exprs<'a> {
    buf: &'a mut Vec<u8>,
}

/// `NFT_CMP_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `NFT_CMP_EQ`.
    Eq = 0,
    /// `NFT_CMP_NEQ`.
    Neq = 1,
}

impl Exprs<'_> {
    /// Starts expression `name`; the closure writes its attributes.
    fn expr(&mut self, name: &str, body: impl FnOnce(&mut Vec<u8>)) -> &mut Self {
        let elem = nest_start(self.buf, attr::LIST_ELEM);
        put_str(self.buf, attr::EXPR_NAME, name);
        let data = nest_start(self.buf, attr::EXPR_DATA);
        body(self.buf);
        nest_end(self.buf, data);
        nest_end(self.buf, elem);
        self
    }

    /// `meta load <key> => reg <dreg>` (`NFTA_META_DREG` 1, `NFTA_META_KEY` 2).
    pub fn meta(&mut self, key: u32, dreg: u32) -> &mut Self {
        self.expr("meta", |b| {
            put_u32(b, 1, dreg);
            put_u32(b, 2, key);
        })
    }

    /// `payload load <len>b @ <base> + <offset> => reg <dreg>`
    /// (`NFTA_PAYLOAD_DREG` 1, `_BASE` 2, `_OFFSET` 3, `_LEN` 4).
    pub fn payload(&mut self, base: u32, offset: u32, len: u32, dreg: u32) -> &mut Self {
        self.expr("payload", |b| {
            put_u32(b, 1, dreg);
            put_u32(b, 2, base);
            put_u32(b, 3, offset);
            put_u32(b, 4, len);
        })
    }

    /// `cmp <op> reg <sreg> <data>` (`NFTA_CMP_SREG` 1, `_OP` 2, `_DATA` 3).
    pub fn cmp(&mut self, sreg: u32, op: CmpOp, data: &[u8]) -> &mut Self {
        self.expr("cmp", |b| {
            put_u32(b, 1, sreg);
            put_u32(b, 2, op as u32);
            put_value(b, 3, data);
        })
    }

    /// `reg <reg> = (reg <reg> & mask) ^ 0` (`NFTA_BITWISE_SREG` 1, `_DREG` 2, `_LEN` 3,
    /// `_MASK` 4, `_XOR` 5); without an operation attribute every kernel reads it as a
    /// mask-and-xor.
    pub fn mask(&mut self, reg: u32, mask: &[u8]) -> &mut Self {
        self.expr("bitwise", |b| {
            put_u32(b, 1, reg);
            put_u32(b, 2, reg);
            put_u32(b, 3, mask.len() as u32);
            put_value(b, 4, mask);
            put_value(b, 5, &vec![0; mask.len()]);
        })
    }

    /// `numgen reg <dreg> = random mod <modulus>` (`NFTA_NG_DREG` 1, `_MODULUS` 2,
    /// `_TYPE` 3 = `NFT_NG_RANDOM` 1). The result is a native-endian u32.
    pub fn numgen_random(&mut self, modulus: u32, dreg: u32) -> &mut Self {
        self.expr("numgen", |b| {
            put_u32(b, 1, dreg);
            put_u32(b, 2, modulus);
            put_u32(b, 3, 1);
        })
    }

    /// `fib daddr type => reg <dreg>` (`NFTA_FIB_DREG` 1, `_RESULT` 2 =
    /// `NFT_FIB_RESULT_ADDRTYPE` 3, `_FLAGS` 3 = `NFTA_FIB_F_DADDR` 2): the route type of
    /// the destination address, a native-endian u32 (`RTN_LOCAL` is 2).
    pub fn fib_daddr_type(&mut self, dreg: u32) -> &mut Self {
        self.expr("fib", |b| {
            put_u32(b, 1, dreg);
            put_u32(b, 2, 3);
            put_u32(b, 3, 2);
        })
    }

    /// `immediate reg <dreg> <data>` (`NFTA_IMMEDIATE_DREG` 1, `_DATA` 2).
    pub fn immediate(&mut self, dreg: u32, data: &[u8]) -> &mut Self {
        self.expr("immediate", |b| {
            put_u32(b, 1, dreg);
            put_value(b, 2, data);
        })
    }

    /// `jump <chain>`: an immediate into the verdict register with `NFT_JUMP` (-3).
    pub fn jump(&mut self, chain: &str) -> &mut Self {
        self.expr("immediate", |b| {
            put_u32(b, 1, REG_VERDICT);
            let data = nest_start(b, 2);
            let verdict = nest_start(b, attr::DATA_VERDICT);
            put_u32(b, attr::VERDICT_CODE, (-3i32) as u32);
            put_str(b, attr::VERDICT_CHAIN, chain);
            nest_end(b, verdict);
            nest_end(b, data);
        })
    }

    /// `nat dnat ip addr_min reg <addr> proto_min reg <port>` (`NFTA_NAT_TYPE` 1 =
    /// `NFT_NAT_DNAT` 1, `_FAMILY` 2, `_REG_ADDR_MIN` 3, `_REG_PROTO_MIN` 5). The kernel
    /// sets the range flags itself from which registers are given.
    pub fn dnat(&mut self, addr_reg: u32, port_reg: u32) -> &mut Self {
        self.expr("nat", |b| {
            put_u32(b, 1, 1);
            put_u32(b, 2, u32::from(FAMILY_IP));
            put_u32(b, 3, addr_reg);
            put_u32(b, 5, port_reg);
        })
    }

    /// `nat` (destination, IPv4) to the address in `addr_reg`, keeping the port.
    pub fn dnat_addr(&mut self, addr_reg: u32) -> &mut Self {
        self.expr("nat", |b| {
            put_u32(b, 1, 1);
            put_u32(b, 2, u32::from(FAMILY_IP));
            put_u32(b, 3, addr_reg);
        })
    }

    /// `masq`: source NAT to the outgoing interface's address, forgotten with it.
    pub fn masquerade(&mut self) -> &mut Self {
        self.expr("masq", |_| {})
    }

    /// `reject with icmp port-unreachable` (`NFTA_REJECT_TYPE` 1 = `NFT_REJECT_ICMP_UNREACH`
    /// 0, `NFTA_REJECT_ICMP_CODE` 2 = `ICMP_PORT_UNREACH` 3, one byte): the sender's
    /// `connect` fails at once with "connection refused", TCP included.
    pub fn reject_port_unreachable(&mut self) -> &mut Self {
        self.expr("reject", |b| {
            put_u32(b, 1, 0);
            put_attr(b, 2, &[3]);
        })
    }
}

/// Appends nf_tables messages inside one `BATCH_BEGIN` … `BATCH_END` and numbers them.
/// Names (tables, chains) must be under 256 bytes, the kernel's `NFT_NAME_MAXLEN`; the
/// kernel refuses longer ones, so a bad name costs a refused batch, nothing else.
#[derive(Debug)]
pub struct BatchWriter {
    buf: Vec<u8>,
    next_seq: u32,
    first_seq: u32,
}

impl BatchWriter {
    /// A batch whose `BATCH_BEGIN` carries sequence number `first_seq`; each following
    /// message takes the next one.
    pub fn new(first_seq: u32) -> Self {
        let mut w = Self { buf: Vec::with_capacity(4096), next_seq: first_seq, first_seq };
        w.delimiter(MSG_BATCH_BEGIN);
        w
    }

    /// The sequence number of the batch's `BATCH_BEGIN`.
    pub fn first_seq(&self) -> u32 {
        self.first_seq
    }

    fn delimiter(&mut self, ty: u16) {
        let m = self.begin(ty, NLM_F_REQUEST, FAMILY_UNSPEC, SUBSYS_NFTABLES);
        self.end(m);
    }

    /// Starts a message; returns its offset and sequence number.
    fn begin(&mut self, ty: u16, flags: u16, family: u8, res_id: u16) -> (usize, u32) {
        let start = self.buf.len();
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched by `end`
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel fills it in
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        (start, seq)
    }

    fn end(&mut self, (start, seq): (usize, u32)) -> u32 {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        seq
    }

    fn command(&mut self, cmd: Command, flags: u16) -> (usize, u32) {
        let ty = (SUBSYS_NFTABLES << 8) | cmd as u16;
        self.begin(ty, NLM_F_REQUEST | NLM_F_ACK | flags, FAMILY_IP, 0)
    }

    /// `NEWTABLE ip <name>` with `flags` (`NLM_F_CREATE` alone: fine if it exists;
    /// with `NLM_F_EXCL`: it must not). Returns the message's sequence number.
    pub fn new_table(&mut self, name: &str, flags: u16) -> u32 {
        let m = self.command(Command::NewTable, flags);
        put_str(&mut self.buf, attr::TABLE_NAME, name);
        self.end(m)
    }

    /// `DELTABLE ip <name>`, with everything in it.
    pub fn del_table(&mut self, name: &str) -> u32 {
        let m = self.command(Command::DelTable, 0);
        put_str(&mut self.buf, attr::TABLE_NAME, name);
        self.end(m)
    }

    /// `NEWCHAIN`: a regular chain, or a base chain of `kind` (`"nat"`) at `hook` with
    /// `priority` when `base` is given.
    pub fn new_chain(&mut self, table: &str, name: &str, base: Option<(&str, u32, i32)>) -> u32 {
        let m = self.command(Command::NewChain, NLM_F_CREATE);
        put_str(&mut self.buf, attr::CHAIN_TABLE, table);
        put_str(&mut self.buf, attr::CHAIN_NAME, name);
        if let Some((kind, hook, priority)) = base {
            let h = nest_start(&mut self.buf, attr::CHAIN_HOOK);
            put_u32(&mut self.buf, attr::HOOK_HOOKNUM, hook);
            put_u32(&mut self.buf, attr::HOOK_PRIORITY, priority as u32);
            nest_end(&mut self.buf, h);
            put_str(&mut self.buf, attr::CHAIN_TYPE, kind);
        }
        self.end(m)
    }

    /// `NEWRULE` appended to `table`/`chain`; `body` writes its expressions.
    pub fn rule(&mut self, table: &str, chain: &str, body: impl FnOnce(&mut Exprs<'_>)) -> u32 {
        let m = self.command(Command::NewRule, NLM_F_CREATE | NLM_F_APPEND);
        put_str(&mut self.buf, attr::RULE_TABLE, table);
        put_str(&mut self.buf, attr::RULE_CHAIN, chain);
        let list = nest_start(&mut self.buf, attr::RULE_EXPRESSIONS);
        body(&mut Exprs { buf: &mut self.buf });
        nest_end(&mut self.buf, list);
        self.end(m)
    }

    /// Closes the batch with `BATCH_END`; returns its bytes and the sequence numbers used
    /// (`first_seq` for `BATCH_BEGIN` up to the one of `BATCH_END`).
    pub fn finish(mut self) -> (Vec<u8>, std::ops::RangeInclusive<u32>) {
        self.delimiter(MSG_BATCH_END);
        let last = self.next_seq.wrapping_sub(1);
        (self.buf, self.first_seq..=last)
    }
}

fn pad(buf: &mut Vec<u8>) {
    while buf.len() & 3 != 0 {
        buf.push(0);
    }
}

fn put_attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = (NLA_HDRLEN + payload.len()) as u16;
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    pad(buf);
}

/// A NUL-terminated string, as the kernel's `NLA_STRING` policies expect from libnftnl.
fn put_str(buf: &mut Vec<u8>, ty: u16, s: &str) {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    put_attr(buf, ty, &v);
}

fn put_u32(buf: &mut Vec<u8>, ty: u16, v: u32) {
    put_attr(buf, ty, &v.to_be_bytes());
}

/// `ty` holding `NFTA_DATA_VALUE` with `data`.
fn put_value(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let n = nest_start(buf, ty);
    put_attr(buf, attr::DATA_VALUE, data);
    nest_end(buf, n);
}

fn nest_start(buf: &mut Vec<u8>, ty: u16) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    start
}

fn nest_end(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

/// `NFT_MSG_GETRULE` with `NLM_F_DUMP` (`NLM_F_ROOT | NLM_F_MATCH`) for every rule of
/// `table` (family ip). Not part of a batch: reads are sent alone.
pub fn get_rules_request(seq: u32, table: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    let ty = (SUBSYS_NFTABLES << 8) | 7;
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&(NLM_F_REQUEST | 0x300).to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&[FAMILY_IP, 0, 0, 0]);
    put_str(&mut buf, attr::RULE_TABLE, table);
    let len = buf.len() as u32;
    buf[..4].copy_from_slice(&len.to_ne_bytes());
    buf
}

/// One part of a dump answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DumpItem {
    /// A rule, with its table and chain.
    Rule {
        /// `NFTA_RULE_TABLE`.
        table: String,
        /// `NFTA_RULE_CHAIN`.
        chain: String,
    },
    /// The dump's end.
    Done,
    /// The request was refused (positive errno).
    Error(i32),
}

/// Reads the rules, errors and end marker in one datagram of a `GETRULE` dump. Bytes
/// from the kernel are still checked: a truncated message is an error.
pub fn parse_dump(mut data: &[u8]) -> Result<Vec<DumpItem>, String> {
    let mut items = Vec::new();
    while let Some(Message { ty, body, .. }) = next_message(&mut data)? {
        if ty == NLMSG_DONE {
            items.push(DumpItem::Done);
        } else if ty == NLMSG_ERROR {
            let err =
                body.get(..4).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]])).ok_or("a short netlink error")?;
            if err != 0 {
                items.push(DumpItem::Error(err.checked_neg().unwrap_or(i32::MAX)));
            }
        } else if ty == (SUBSYS_NFTABLES << 8) | Command::NewRule as u16 {
            let attrs = body.get(4..).ok_or("a rule message without its nfgenmsg")?;
            let (mut table, mut chain) = (None, None);
            let mut at = attrs;
            while at.len() >= NLA_HDRLEN {
                let alen = u16::from_ne_bytes([at[0], at[1]]) as usize;
                let aty = u16::from_ne_bytes([at[2], at[3]]) & !NLA_F_NESTED;
                if alen < NLA_HDRLEN || alen > at.len() {
                    return Err(format!("a rule attribute claims {alen} bytes of {}", at.len()));
                }
                let text = || {
                    let t = &at[NLA_HDRLEN..alen];
                    String::from_utf8_lossy(t.split(|&b| b == 0).next().unwrap_or(&[])).into_owned()
                };
                match aty {
                    attr::RULE_TABLE => table = Some(text()),
                    attr::RULE_CHAIN => chain = Some(text()),
                    _ => {}
                }
                at = at.get(align4(alen)..).unwrap_or(&[]);
            }
            match (table, chain) {
                (Some(table), Some(chain)) => items.push(DumpItem::Rule { table, chain }),
                _ => return Err("a rule without its table or chain".into()),
            }
        }
    }
    Ok(items)
}

/// What the kernel answered to one message: `errno` 0 is an acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The sequence number of the message answered.
    pub seq: u32,
    /// 0, or the (positive) errno of the refusal.
    pub errno: i32,
    /// The kernel's extended-ack text, if it sent one.
    pub message: Option<String>,
}

/// `NLMSG_ERROR`, `NLMSG_DONE`, and the flags of an error message.
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLMSGERR_ATTR_MSG`: the extended-ack text.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// Reads the acknowledgements and errors in one datagram from the kernel. Anything
/// else (a stray message type) is skipped; a truncated or inconsistent message is an
/// error, since these bytes come from outside the program.
pub fn parse_acks(mut data: &[u8]) -> Result<Vec<Ack>, String> {
    let mut acks = Vec::new();
    while let Some(Message { ty, flags, seq, body }) = next_message(&mut data)? {
        if ty == NLMSG_ERROR {
            if body.len() < 4 + NLMSG_HDRLEN {
                return Err(format!("a netlink error message of {} bytes is too short", body.len()));
            }
            let err = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
            let orig_len = u32::from_ne_bytes([body[4], body[5], body[6], body[7]]) as usize;
            // Without NLM_F_CAPPED the kernel echoes the whole request before the TLVs.
            let tlv_at = if flags & NLM_F_CAPPED != 0 { 4 + NLMSG_HDRLEN } else { 4 + align4(orig_len) };
            let message = if flags & NLM_F_ACK_TLVS != 0 { body.get(tlv_at..).and_then(ext_ack_message) } else { None };
            acks.push(Ack { seq, errno: err.checked_neg().unwrap_or(i32::MAX), message });
        } else if ty == NLMSG_DONE {
            break;
        }
    }
    Ok(acks)
}

/// One netlink message of a datagram: its header fields and body.
struct Message<'a> {
    ty: u16,
    flags: u16,
    seq: u32,
    body: &'a [u8],
}

/// The next message of `data`, which then starts after it (and its padding); `None` at
/// the end. A header that is short, or a length shorter than a header or longer than
/// what is left, is an error: these bytes come from outside the program.
fn next_message<'a>(data: &mut &'a [u8]) -> Result<Option<Message<'a>>, String> {
    let d = *data;
    if d.is_empty() {
        return Ok(None);
    }
    if d.len() < NLMSG_HDRLEN {
        return Err(format!("a {}-byte netlink message is shorter than its header", d.len()));
    }
    let len = u32::from_ne_bytes([d[0], d[1], d[2], d[3]]) as usize;
    if len < NLMSG_HDRLEN || len > d.len() {
        return Err(format!("a netlink message claims {len} bytes of {}", d.len()));
    }
    *data = d.get(align4(len)..).unwrap_or(&[]);
    Ok(Some(Message {
        ty: u16::from_ne_bytes([d[4], d[5]]),
        flags: u16::from_ne_bytes([d[6], d[7]]),
        seq: u32::from_ne_bytes([d[8], d[9], d[10], d[11]]),
        body: &d[NLMSG_HDRLEN..len],
    }))
}

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

/// The `NLMSGERR_ATTR_MSG` text among extended-ack attributes.
fn ext_ack_message(mut tlvs: &[u8]) -> Option<String> {
    while tlvs.len() >= NLA_HDRLEN {
        let len = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
        let ty = u16::from_ne_bytes([tlvs[2], tlvs[3]]) & !NLA_F_NESTED;
        if len < NLA_HDRLEN || len > tlvs.len() {
            return None;
        }
        if ty == NLMSGERR_ATTR_MSG {
            let text = &tlvs[NLA_HDRLEN..len];
            let text = text.split(|&b| b == 0).next().unwrap_or(&[]);
            return Some(String::from_utf8_lossy(&text[..text.len().min(256)]).into_owned());
        }
        tlvs = tlvs.get(align4(len)..).unwrap_or(&[]);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(len: u32, ty: u16, flags: u16, seq: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&len.to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v
    }

    #[test]
    fn an_empty_batch_is_two_delimiters() {
        let (bytes, seqs) = BatchWriter::new(7).finish();
        let mut want = hdr(20, 0x10, NLM_F_REQUEST, 7);
        want.extend_from_slice(&[0, 0, 0, 10]); // AF_UNSPEC, v0, res_id = NFTABLES (big endian)
        want.extend(hdr(20, 0x11, NLM_F_REQUEST, 8));
        want.extend_from_slice(&[0, 0, 0, 10]);
        assert_eq!(bytes, want);
        assert_eq!(seqs, 7..=8);
    }

    #[test]
    fn a_table_message_byte_by_byte() {
        let mut w = BatchWriter::new(1);
        assert_eq!(w.new_table("shoal", NLM_F_CREATE), 2);
        let (bytes, _) = w.finish();
        let msg = &bytes[20..20 + 32];
        let mut want = hdr(32, 0x0a00, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE, 2);
        want.extend_from_slice(&[2, 0, 0, 0]); // NFPROTO_IPV4, v0, res_id 0
                                               // NFTA_TABLE_NAME "shoal\0", length 10, padded to 12.
        want.extend_from_slice(&10u16.to_ne_bytes());
        want.extend_from_slice(&1u16.to_ne_bytes());
        want.extend_from_slice(b"shoal\0\0\0");
        assert_eq!(msg, &want[..]);
    }

    #[test]
    fn a_base_chain_carries_its_hook_in_big_endian() {
        let mut w = BatchWriter::new(0);
        w.new_chain("t", "c", Some(("nat", 0, -100)));
        let (bytes, _) = w.finish();
        let msg = &bytes[20..bytes.len() - 20];
        let body = &msg[20..];
        let mut want = Vec::new();
        for (ty, payload) in [(1u16, &b"t\0"[..]), (3, b"c\0")] {
            want.extend_from_slice(&6u16.to_ne_bytes());
            want.extend_from_slice(&ty.to_ne_bytes());
            want.extend_from_slice(payload);
            want.extend_from_slice(&[0, 0]);
        }
        want.extend_from_slice(&20u16.to_ne_bytes());
        want.extend_from_slice(&(4u16 | 0x8000).to_ne_bytes());
        want.extend_from_slice(&8u16.to_ne_bytes());
        want.extend_from_slice(&1u16.to_ne_bytes());
        want.extend_from_slice(&0u32.to_be_bytes());
        want.extend_from_slice(&8u16.to_ne_bytes());
        want.extend_from_slice(&2u16.to_ne_bytes());
        want.extend_from_slice(&(-100i32).to_be_bytes());
        want.extend_from_slice(&8u16.to_ne_bytes());
        want.extend_from_slice(&7u16.to_ne_bytes());
        want.extend_from_slice(b"nat\0");
        assert_eq!(body, &want[..]);
        assert_eq!(u32::from_ne_bytes(msg[..4].try_into().unwrap()) as usize, msg.len());
    }

    #[test]
    fn a_masquerade_expression_is_a_name_and_an_empty_data_nest() {
        let mut w = BatchWriter::new(0);
        w.rule("t", "c", |e| {
            e.masquerade();
        });
        let (bytes, _) = w.finish();
        let body = &bytes[40..bytes.len() - 20];
        let mut want = Vec::new();
        for (ty, payload) in [(1u16, &b"t\0"[..]), (2, b"c\0")] {
            want.extend_from_slice(&6u16.to_ne_bytes());
            want.extend_from_slice(&ty.to_ne_bytes());
            want.extend_from_slice(payload);
            want.extend_from_slice(&[0, 0]);
        }
        // expressions { elem { name "masq" ; data {} } }
        want.extend_from_slice(&24u16.to_ne_bytes());
        want.extend_from_slice(&(4u16 | 0x8000).to_ne_bytes());
        want.extend_from_slice(&20u16.to_ne_bytes());
        want.extend_from_slice(&(1u16 | 0x8000).to_ne_bytes());
        want.extend_from_slice(&9u16.to_ne_bytes());
        want.extend_from_slice(&1u16.to_ne_bytes());
        want.extend_from_slice(b"masq\0\0\0\0");
        want.extend_from_slice(&4u16.to_ne_bytes());
        want.extend_from_slice(&(2u16 | 0x8000).to_ne_bytes());
        assert_eq!(body, &want[..]);
    }

    #[test]
    fn acks_errors_and_their_text_are_read() {
        let mut data = hdr(36, NLMSG_ERROR, NLM_F_CAPPED, 5);
        data.extend_from_slice(&0i32.to_ne_bytes());
        data.extend(hdr(60, 0x0a06, 0, 5));
        let text = b"bad thing\0";
        let mut err = hdr(0, NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS, 6);
        err.extend_from_slice(&(-22i32).to_ne_bytes());
        err.extend(hdr(60, 0x0a06, 0, 6));
        err.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        err.extend_from_slice(&1u16.to_ne_bytes());
        err.extend_from_slice(text);
        while err.len() & 3 != 0 {
            err.push(0);
        }
        let n = err.len() as u32;
        err[..4].copy_from_slice(&n.to_ne_bytes());
        data.extend(err);
        let acks = parse_acks(&data).unwrap();
        assert_eq!(
            acks,
            vec![Ack { seq: 5, errno: 0, message: None }, Ack { seq: 6, errno: 22, message: Some("bad thing".into()) }]
        );
    }

    proptest::proptest! {
        /// Whatever arrives on the socket, parsing ends without a panic.
        #[test]
        fn parsing_any_bytes_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = parse_acks(&data);
            let _ = parse_dump(&data);
        }

        /// Plausible headers with random bodies, so the parsers get past the first check.
        #[test]
        fn parsing_framed_garbage_never_panics(
            ty in proptest::sample::select(vec![2u16, 3, 0x0a06]),
            flags in proptest::num::u16::ANY,
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..128),
        ) {
            let mut data = hdr((16 + body.len()) as u32, ty, flags, 1);
            data.extend_from_slice(&body);
            let _ = parse_acks(&data);
            let _ = parse_dump(&data);
        }
    }

    #[test]
    fn a_rule_dump_is_read() {
        let mut w = BatchWriter::new(0);
        w.rule("shoal", "svc-0", |e| {
            e.masquerade();
        });
        let (bytes, _) = w.finish();
        // The kernel answers a dump with the same layout as NEWRULE, then DONE.
        let mut data = bytes[20..bytes.len() - 20].to_vec();
        data.extend(hdr(20, NLMSG_DONE, 0, 1));
        data.extend_from_slice(&[0; 4]);
        assert_eq!(
            parse_dump(&data).unwrap(),
            vec![DumpItem::Rule { table: "shoal".into(), chain: "svc-0".into() }, DumpItem::Done]
        );
        let req = get_rules_request(9, "shoal");
        assert_eq!(u32::from_ne_bytes(req[..4].try_into().unwrap()) as usize, req.len());
        assert_eq!(u16::from_ne_bytes([req[4], req[5]]), 0x0a07); // GETRULE
        assert_eq!(u16::from_ne_bytes([req[6], req[7]]), 0x0301); // REQUEST | DUMP
    }

    #[test]
    fn hostile_replies_are_refused_not_trusted() {
        assert!(parse_acks(&[1, 2, 3]).is_err());
        let mut lying = hdr(400, NLMSG_ERROR, 0, 1);
        lying.extend_from_slice(&[0; 20]);
        assert!(parse_acks(&lying).is_err());
        let mut short = hdr(20, NLMSG_ERROR, 0, 1);
        short.extend_from_slice(&[0; 4]);
        assert!(parse_acks(&short).is_err());
        // i32::MIN as an error code must not overflow.
        let mut min = hdr(36, NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS, 1);
        min.extend_from_slice(&i32::MIN.to_ne_bytes());
        min.extend(hdr(16, 0, 0, 1));
        assert_eq!(parse_acks(&min).unwrap()[0].errno, i32::MAX);
    }
}
