//! Sends a rendered batch over a `NETLINK_NETFILTER` socket and reads every answer. The
//! only I/O of this module: a blocking send, then non-blocking reads (the kernel
//! processes a batch inside the send, so its answers are queued when the send returns).

use std::collections::BTreeMap;
use std::io;
use std::time::{Duration, Instant};

use rtnetlink::sys::{protocols::NETLINK_NETFILTER, Socket};

use super::error::NftError;
use super::render::{self, Rendered};
use super::wire::{self, Ack};
use super::{Ruleset, SandboxRuleset};

/// How long to wait for answers the kernel has not queued by the end of the send; only
/// a kernel that defers work would need it.
const ACK_WAIT: Duration = Duration::from_secs(2);
/// The receive buffer asked for: a refused batch answers every message.
const RCVBUF: usize = 1 << 20;

/// What an applied batch was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The batch's size.
    pub bytes: usize,
    /// How many messages the kernel acknowledged.
    pub messages: usize,
}

/// Replaces table `ip shoal` with `ruleset`, in one batch; on any error the table is as
/// it was. Blocking (a few milliseconds): call it from a blocking thread in async code.
pub fn apply(ruleset: &Ruleset) -> Result<Applied, NftError> {
    let rendered = render::render(ruleset, first_seq())?;
    send(&rendered)
}

/// Replaces table `ip shoal` of the calling thread's network namespace (a container's)
/// with the container's own load balancer, in one batch; on any error the table is as
/// it was. Blocking, like [`apply`].
pub fn apply_sandbox(table: &SandboxRuleset) -> Result<Applied, NftError> {
    let rendered = render::render_sandbox(table, first_seq())?;
    send(&rendered)
}

/// Removes table `ip shoal` and with it every rule of the agent; fine if it is missing.
pub fn remove() -> Result<Applied, NftError> {
    send(&render::render_removal(first_seq()))
}

/// How many rules each chain of table `ip shoal` holds right now (chains without rules
/// are left out; no table is an empty map). For checks and for reporting what is applied.
pub fn rule_counts() -> Result<BTreeMap<String, usize>, NftError> {
    let socket = open()?;
    let seq = first_seq();
    socket
        .send(&wire::get_rules_request(seq, render::TABLE), 0)
        .map_err(|source| NftError::Io { op: "asking the kernel for the rules of table ip shoal", source })?;
    let deadline = Instant::now() + ACK_WAIT;
    let mut counts = BTreeMap::new();
    loop {
        match socket.recv_from_full() {
            Ok((data, from)) => {
                if from.port_number() != 0 {
                    continue;
                }
                let items = wire::parse_dump(&data).map_err(|e| NftError::Io {
                    op: "reading the rules of table ip shoal",
                    source: io::Error::new(io::ErrorKind::InvalidData, e),
                })?;
                for item in items {
                    match item {
                        wire::DumpItem::Rule { table, chain } if table == render::TABLE => {
                            *counts.entry(chain).or_insert(0) += 1
                        }
                        wire::DumpItem::Rule { .. } => {}
                        wire::DumpItem::Done => return Ok(counts),
                        wire::DumpItem::Error(libc::ENOENT) => return Ok(BTreeMap::new()),
                        wire::DumpItem::Error(libc::EPERM) => {
                            return Err(NftError::PermissionDenied {
                                what: "listing the rules of table ip shoal".into(),
                            })
                        }
                        wire::DumpItem::Error(errno) => {
                            return Err(NftError::Refused {
                                what: "listing the rules of table ip shoal".into(),
                                source: io::Error::from_raw_os_error(errno),
                                message: None,
                            })
                        }
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(source) => return Err(NftError::Io { op: "reading the rules of table ip shoal", source }),
        }
    }
}

/// Sequence numbers only need to differ between batches on one socket; a socket per
/// batch makes any start fine, and the clock makes stray answers easy to tell apart.
/// Below 2^30, so a batch's range (at most about a million messages) never wraps.
fn first_seq() -> u32 {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    (secs % (1 << 30)) as u32 + 1
}

/// Sends `batch` and checks that the kernel acknowledged each of its messages.
pub fn send(batch: &Rendered) -> Result<Applied, NftError> {
    let socket = open()?;
    match socket.send(&batch.bytes, 0) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
            return Err(NftError::TooLarge { bytes: batch.bytes.len() })
        }
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            return Err(NftError::PermissionDenied { what: "sending the nf_tables batch".into() })
        }
        Err(source) => return Err(NftError::Io { op: "sending the nf_tables batch", source }),
    }
    let acks = receive(&socket, batch)?;
    check(batch, &acks)?;
    Ok(Applied { bytes: batch.bytes.len(), messages: batch.parts.len() })
}

fn open() -> Result<Socket, NftError> {
    let mut socket = match Socket::new(NETLINK_NETFILTER) {
        Ok(s) => s,
        Err(e) if e.raw_os_error() == Some(libc::EPROTONOSUPPORT) => {
            return Err(NftError::NoNfTables { detail: "no NETLINK_NETFILTER sockets".into() })
        }
        Err(source) => return Err(NftError::Io { op: "opening a netfilter netlink socket", source }),
    };
    let io = |op| move |source| NftError::Io { op, source };
    socket.bind_auto().map_err(io("binding the netfilter netlink socket"))?;
    // Short errors (no echo of the request) with the kernel's text, when it has one.
    socket.set_cap_ack(true).map_err(io("asking for capped netlink acks"))?;
    let _ = socket.set_ext_ack(true); // older kernels lack it; the errno still comes
    let _ = socket.set_rx_buf_sz(RCVBUF); // capped by net.core.rmem_max; the default is usually enough
    socket.set_non_blocking(true).map_err(io("making the netlink socket non-blocking"))?;
    Ok(socket)
}

/// Reads answers until every message is acknowledged, one is refused (the kernel then
/// stops acknowledging: the batch is void), or [`ACK_WAIT`] passes.
fn receive(socket: &Socket, batch: &Rendered) -> Result<Vec<Ack>, NftError> {
    let deadline = Instant::now() + ACK_WAIT;
    let mut acks: Vec<Ack> = Vec::new();
    loop {
        match socket.recv_from_full() {
            Ok((data, from)) => {
                if from.port_number() != 0 {
                    continue; // not from the kernel
                }
                let parsed = wire::parse_acks(&data).map_err(|e| NftError::Io {
                    op: "reading the kernel's answer",
                    source: io::Error::new(io::ErrorKind::InvalidData, e),
                })?;
                acks.extend(parsed.into_iter().filter(|a| batch.seqs.contains(&a.seq)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let done = acks.iter().any(|a| a.errno != 0)
                    || batch.parts.iter().all(|p| acks.iter().any(|a| a.seq == p.seq));
                if done {
                    return Ok(acks);
                }
                if Instant::now() >= deadline {
                    return Err(NftError::Io {
                        op: "waiting for the kernel to acknowledge the nf_tables batch",
                        source: io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("{} of {} messages acknowledged", acks.len(), batch.parts.len()),
                        ),
                    });
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                return Err(NftError::Io { op: "reading the kernel's answers (receive buffer overrun)", source: e })
            }
            Err(source) => return Err(NftError::Io { op: "reading the kernel's answers", source }),
        }
    }
}

/// The first refusal, in batch order, as a typed error.
fn check(batch: &Rendered, acks: &[Ack]) -> Result<(), NftError> {
    let Some(refusal) = acks.iter().filter(|a| a.errno != 0).min_by_key(|a| a.seq.wrapping_sub(*batch.seqs.start()))
    else {
        return Ok(());
    };
    Err(classify(batch, refusal))
}

/// Maps one refusal to what it means on a board.
pub(super) fn classify(batch: &Rendered, ack: &Ack) -> NftError {
    let part = batch.part(ack.seq);
    let what = match part {
        Some(p) => p.what.clone(),
        None if ack.seq == *batch.seqs.start() => "the start of the nf_tables batch".into(),
        None => format!("message {} of the nf_tables batch", ack.seq.wrapping_sub(*batch.seqs.start())),
    };
    match (ack.errno, part) {
        // The batch's start names the nf_tables subsystem: refused means it is absent.
        (libc::EOPNOTSUPP | libc::EINVAL | libc::ENOENT, None) if ack.seq == *batch.seqs.start() => {
            NftError::NoNfTables {
                detail: format!("the kernel refused an nf_tables batch ({})", io::Error::from_raw_os_error(ack.errno)),
            }
        }
        (libc::EPERM, _) => NftError::PermissionDenied { what },
        // A missing chain type or expression is looked up by name (and its module
        // loaded) at this point; not found means the kernel was built without it.
        (libc::ENOENT | libc::EOPNOTSUPP, Some(p)) if !p.needs.is_empty() => {
            NftError::MissingFeature { what, config: p.needs }
        }
        (errno, _) => {
            NftError::Refused { what, source: io::Error::from_raw_os_error(errno), message: ack.message.clone() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(seq: u32, errno: i32) -> Ack {
        Ack { seq, errno, message: None }
    }

    #[test]
    fn refusals_become_typed_errors_naming_the_message() {
        let batch = render::render(&Ruleset::default(), 10).unwrap();
        // 10 begin, 11 newtable, 12 deltable, 13 newtable, 14..=16 nat chains, 17 services, ...
        assert!(check(&batch, &[ack(11, 0), ack(12, 0)]).is_ok());
        let e = check(&batch, &[ack(11, 0), ack(15, libc::ENOENT), ack(14, libc::ENOENT)]).unwrap_err();
        assert!(e.is_unsupported(), "{e}");
        assert!(e.to_string().contains("nat chain prerouting") && e.to_string().contains("CONFIG_NFT_NAT"), "{e}");
        let e = check(&batch, &[ack(10, libc::EOPNOTSUPP)]).unwrap_err();
        assert!(matches!(e, NftError::NoNfTables { .. }), "{e}");
        assert!(e.to_string().starts_with("the board's kernel lacks nf_tables (CONFIG_NF_TABLES"), "{e}");
        let e = check(&batch, &[ack(12, libc::EPERM)]).unwrap_err();
        assert!(e.is_permission_denied(), "{e}");
        let e = check(&batch, &[Ack { seq: 17, errno: libc::EINVAL, message: Some("bad".into()) }]).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EINVAL));
        assert!(e.to_string().starts_with("the kernel refused chain services: Invalid argument"), "{e}");
        assert!(e.to_string().contains("(bad)"), "{e}");
    }
}
