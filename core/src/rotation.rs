//! Certificates over a fleet's years: the settings and CA rotation kept in the store, and
//! the pure decisions over them. No I/O, no clock; the manager's shell signs, stores and
//! sends.
//!
//! **Rotation** (`shoal manager ca --rotate`), trust-both rather than cross-signing:
//! 1. *Start*: a new CA is made and stored beside the current one ([`Rotation`]). From
//!    then on the manager accepts client certificates of either CA, still presents its
//!    server certificate of the current (old) one, and sends every board the bundle
//!    `[old, new]` to trust, with a request to renew at once; renewals are signed by the
//!    new CA.
//! 2. *Progress*: a board has rotated once it said it saved a certificate of the new CA.
//!    The boards that must rotate are the Ready ones and those not heard from since the
//!    manager started (Unknown); a Down board does not hold the rotation up.
//! 3. *Retire*: when every one of them has ([`step`] says [`Step::Retire`]), the new CA
//!    becomes the current one in one store transaction (the old one is forgotten), the
//!    manager's server certificate is reissued from it, and boards are sent `[new]`.
//!
//! Why trust-both: boards learn the new CA over their authenticated session before they
//! need it, so nothing has to chain a new CA to the old one, and once the old CA is
//! retired nothing it signed (a removed or stolen board's certificate) is accepted. A
//! board that was offline throughout trusts only the old CA: it refuses the manager's new
//! certificate, says so and how to re-join.
//!
//! The state is persisted at every step, so a rotation resumes after a manager restart.

use serde::{Deserialize, Serialize};
use shoal_proto::{NodeId, NodeStatus};

/// Default validity of node and administrator certificates: 90 days, as Swarm.
pub const DEFAULT_CERT_EXPIRY_MS: u64 = 90 * 24 * 3_600_000;

/// Certificate settings and the rotation in progress, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PkiRecord {
    /// Validity of node and administrator certificates issued from now on, ms.
    pub cert_expiry_ms: u64,
    /// The CA rotation in progress, if any.
    pub rotation: Option<Rotation>,
}

impl Default for PkiRecord {
    fn default() -> Self {
        Self { cert_expiry_ms: DEFAULT_CERT_EXPIRY_MS, rotation: None }
    }
}

/// A CA rotation in progress: the CA replacing the current one.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    /// The new CA certificate, DER.
    pub ca_cert: Vec<u8>,
    /// Its key, PEM.
    pub ca_key_pem: String,
    /// SHA-256 of `ca_cert`.
    pub ca_digest: [u8; 32],
    /// When it started, ms since the Unix epoch (manager's clock).
    pub started_ms: u64,
}

impl core::fmt::Debug for Rotation {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        // Never print the key.
        f.debug_struct("Rotation")
            .field("ca_digest", &shoal_proto::hex(&self.ca_digest))
            .field("started_ms", &self.started_ms)
            .finish_non_exhaustive()
    }
}

/// The certificate a node holds, as the manager last knew it (stored per node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCert {
    /// `notBefore`, ms since the Unix epoch.
    pub valid_from_ms: u64,
    /// `notAfter`, ms since the Unix epoch.
    pub valid_until_ms: u64,
    /// SHA-256 of the CA that signed it.
    pub ca_digest: [u8; 32],
}

/// A worker node as the rotation sees it.
#[derive(Debug, Clone, Copy)]
pub struct Board<'a> {
    /// Its ID.
    pub node: &'a NodeId,
    /// Liveness.
    pub status: NodeStatus,
    /// The CA of the certificate it holds, if known.
    pub ca_digest: Option<[u8; 32]>,
}

/// How far a rotation is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Progress {
    /// Boards that must rotate and have.
    pub rotated: u32,
    /// Boards that must rotate.
    pub to_rotate: u32,
    /// Those that have not yet, in the order given.
    pub waiting: Vec<NodeId>,
}

/// What to do about the rotation now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No rotation in progress.
    Idle,
    /// Boards are still rotating.
    Wait(Progress),
    /// Every board that must rotate has: retire the old CA.
    Retire(Progress),
}

/// Whether a board must rotate before the old CA goes: Ready boards, and boards not
/// heard from since the manager started (they may be about to connect). Down boards do
/// not hold the fleet's rotation up; they re-join afterwards.
fn must_rotate(status: NodeStatus) -> bool {
    matches!(status, NodeStatus::Ready | NodeStatus::Unknown)
}

/// Decides the rotation's next step from the boards' state.
pub fn step(rotation: Option<&Rotation>, boards: &[Board<'_>]) -> Step {
    let Some(rotation) = rotation else { return Step::Idle };
    let mut progress = Progress::default();
    for b in boards.iter().filter(|b| must_rotate(b.status)) {
        progress.to_rotate += 1;
        if b.ca_digest == Some(rotation.ca_digest) {
            progress.rotated += 1;
        } else {
            progress.waiting.push(b.node.clone());
        }
    }
    if progress.waiting.is_empty() {
        Step::Retire(progress)
    } else {
        Step::Wait(progress)
    }
}

/// Whether a board holding a certificate of `held` must renew at once: a rotation is in
/// progress and its certificate is not of the new CA.
pub fn renew_now(rotation: Option<&Rotation>, held: Option<[u8; 32]>) -> bool {
    rotation.is_some_and(|r| held != Some(r.ca_digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotation() -> Rotation {
        Rotation { ca_cert: vec![1, 2, 3], ca_key_pem: "key".into(), ca_digest: [9; 32], started_ms: 1_000 }
    }

    #[test]
    fn a_rotation_retires_the_old_ca_once_every_ready_board_holds_a_new_certificate() {
        let ids: Vec<NodeId> = (1..=3).map(|i| NodeId::from_random([i; 16])).collect();
        let r = rotation();
        let board = |i: usize, status, ca| Board { node: &ids[i], status, ca_digest: ca };
        assert_eq!(step(None, &[board(0, NodeStatus::Ready, None)]), Step::Idle);
        let old = Some([1; 32]);
        let new = Some(r.ca_digest);
        let s = step(
            Some(&r),
            &[board(0, NodeStatus::Ready, new), board(1, NodeStatus::Ready, old), board(2, NodeStatus::Down, old)],
        );
        assert_eq!(s, Step::Wait(Progress { rotated: 1, to_rotate: 2, waiting: vec![ids[1].clone()] }));
        // A node not heard from since a restart may be about to connect: it is waited for.
        let s = step(Some(&r), &[board(0, NodeStatus::Ready, new), board(1, NodeStatus::Unknown, None)]);
        assert!(matches!(s, Step::Wait(Progress { rotated: 1, to_rotate: 2, .. })));
        // A Down board does not hold it up.
        let s = step(
            Some(&r),
            &[board(0, NodeStatus::Ready, new), board(1, NodeStatus::Ready, new), board(2, NodeStatus::Down, old)],
        );
        assert_eq!(s, Step::Retire(Progress { rotated: 2, to_rotate: 2, waiting: vec![] }));
        // No boards at all: nothing to wait for.
        assert!(matches!(step(Some(&r), &[]), Step::Retire(_)));
    }

    #[test]
    fn boards_off_the_new_ca_are_asked_to_renew_at_once() {
        let r = rotation();
        assert!(renew_now(Some(&r), None));
        assert!(renew_now(Some(&r), Some([1; 32])));
        assert!(!renew_now(Some(&r), Some(r.ca_digest)));
        assert!(!renew_now(None, Some([1; 32])));
    }

    /// The manager stores the record at every step; a restarted manager decodes it and
    /// carries on where it was, with the same boards giving the same decision.
    #[test]
    fn a_rotation_survives_a_restart_through_its_stored_form() {
        let ids: Vec<NodeId> = (1..=2).map(|i| NodeId::from_random([i; 16])).collect();
        let record = PkiRecord { cert_expiry_ms: 10_000, rotation: Some(rotation()) };
        let bytes = postcard::to_allocvec(&record).unwrap();
        let again: PkiRecord = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(again, record);
        let held = [Some([9; 32]), Some([1; 32])];
        let boards: Vec<Board> =
            ids.iter().zip(held).map(|(n, ca)| Board { node: n, status: NodeStatus::Ready, ca_digest: ca }).collect();
        assert_eq!(step(record.rotation.as_ref(), &boards), step(again.rotation.as_ref(), &boards));
        assert!(matches!(step(again.rotation.as_ref(), &boards), Step::Wait(Progress { rotated: 1, .. })));
        // And the key never shows in logs.
        assert!(!format!("{again:?}").contains("key"), "{again:?}");
        assert_eq!(PkiRecord::default().cert_expiry_ms, DEFAULT_CERT_EXPIRY_MS);
    }
}
