//! nf_tables from Rust, without `nft`, `iptables` or libnftnl: the agent's NAT rules in
//! its own table `ip shoal`, replaced as a whole in one atomic netlink batch.
//!
//! - [`model`]: what is wanted ([`Ruleset`]): outbound masquerade for container subnets,
//!   load-balanced DNAT (`numgen random` over N backends) for service addresses or any
//!   local address, in prerouting and output; and a container's own load balancer
//!   ([`SandboxRuleset`]: its VIPs, in its namespace's output hook).
//! - [`render`]: the ruleset as one batch of netlink bytes (pure; refuses bad input with
//!   [`RulesetError`] before anything is sent).
//! - [`wire`]: the netlink and nf_tables encoding, and the parsing of the kernel's answers.
//! - [`apply`] / [`remove`]: the only I/O, one `NETLINK_NETFILTER` socket per batch, every
//!   answer read and mapped to [`NftError`] ("the board's kernel lacks nf_tables", EPERM,
//!   the message the kernel refused).
//!
//! Not done here (yet): IPv6, filtering (only `nat` chains), removal of dead backends
//! without a full re-apply of the table. See docs/networking.md.

mod client;
pub mod error;
pub mod model;
pub mod render;
pub mod wire;

pub use client::{apply, apply_sandbox, remove, rule_counts, send, Applied};
pub use error::{NftError, RulesetError};
pub use model::{Destination, Masquerade, Ruleset, SandboxRuleset, Service, L4};
