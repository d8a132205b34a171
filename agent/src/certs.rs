//! Keeping the node's certificate and trust fresh over its session: the manager's
//! [`Credentials`] bring its clock, the CAs to trust and, in answer to a request, a new
//! certificate. Renewal is judged by the **manager's** clock (the board's may be years
//! off): the board keeps the offset between the two and renews at its certificate's
//! point of the 50–80% window (`shoal_proto::renewal`), or at once when the manager asks
//! (CA rotation). Each renewal makes a new key here; only the request leaves the board.
//!
//! A new certificate is saved durably (the identity file, atomically) and used from the
//! next connection on: the session goes on with the one it opened with, which stays
//! valid until it ends, so renewing restarts nothing.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_link::files::{certs_pem, pem_der};
use shoal_proto::renewal::{self, Validity};
use shoal_proto::{AgentMessage, Credentials};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::identity::NodeIdentity;

/// A request the manager has not answered within this long is given up and made again.
const REQUEST_PATIENCE: Duration = Duration::from_secs(10);
/// The manager time kept on disk moves by at least this much before the file is
/// rewritten (it is a lower bound of the real time; a day off is fine, an SD card
/// rewritten every minute is not).
const FLOOR_STEP_MS: u64 = 24 * 3_600_000;

/// The identity the agent runs with, shared between the session (which reconnects with
/// it) and the renewal task (which replaces it).
pub type SharedIdentity = Arc<Mutex<NodeIdentity>>;

/// What the renewal task knows between messages.
#[derive(Default)]
struct Renewal {
    /// Manager's clock minus the board's, ms.
    offset_ms: i64,
    /// Validity of the certificate held, and its point in the window.
    held: Option<(Validity, u16)>,
    /// The manager asked for a renewal now.
    renew_now: bool,
    /// The key of the request in flight, and when it left.
    pending: Option<(rcgen::KeyPair, tokio::time::Instant)>,
}

impl Renewal {
    /// How long until something is due: a renewal, or giving up on a request.
    fn wait(&self, board_ms: u64) -> Option<Duration> {
        if let Some((_, sent)) = &self.pending {
            return Some(REQUEST_PATIENCE.saturating_sub(sent.elapsed()));
        }
        if self.renew_now {
            return Some(Duration::ZERO);
        }
        let (v, jitter) = self.held?;
        Some(Duration::from_millis(v.due_in_ms(board_ms.saturating_add_signed(self.offset_ms), jitter)))
    }
}

/// Runs for one session: takes the manager's credentials from `inbox`, sends requests,
/// clock readings and "saved" notes through `outbox`.
pub async fn renew(
    data_dir: PathBuf,
    identity: SharedIdentity,
    mut inbox: mpsc::Receiver<Credentials>,
    outbox: mpsc::Sender<AgentMessage>,
) {
    let mut state = Renewal::default();
    loop {
        let wait = state.wait(shoal_link::board_ms());
        let credentials = tokio::select! {
            c = inbox.recv() => match c {
                Some(c) => Some(c),
                None => return,
            },
            _ = sleep(wait) => None,
        };
        match credentials {
            Some(c) => {
                if let Some(m) = take(&data_dir, &identity, &mut state, c) {
                    if outbox.send(m).await.is_err() {
                        return;
                    }
                }
                let clock = AgentMessage::Clock { now_ms: shoal_link::board_ms() };
                if outbox.send(clock).await.is_err() {
                    return;
                }
            }
            None if state.pending.is_some() => {
                debug!("no answer to the certificate request; asking again");
                state.pending = None;
            }
            None => match crate::identity::key_and_csr() {
                Ok((key, csr)) => {
                    let Ok(csr) = csr.try_into() else { return };
                    info!(now = state.renew_now, "renewing this node's certificate");
                    state.pending = Some((key, tokio::time::Instant::now()));
                    state.renew_now = false;
                    if outbox.send(AgentMessage::RenewCertificate { csr }).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot make a key for a new certificate; trying again later");
                    tokio::time::sleep(REQUEST_PATIENCE).await;
                }
            },
        }
    }
}

async fn sleep(wait: Option<Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Takes the manager's credentials: its clock, the trust, a new certificate. Returns the
/// "saved" note to send when a certificate was saved.
fn take(data_dir: &Path, identity: &SharedIdentity, state: &mut Renewal, c: Credentials) -> Option<AgentMessage> {
    state.offset_ms = c.now_ms as i64 - shoal_link::board_ms() as i64;
    state.renew_now = c.renew_now && state.pending.is_none();
    let mut next = identity.lock().expect("identity lock").clone();
    let mut changed = false;
    let mut saved = false;
    if !c.trust.is_empty() {
        let trust = certs_pem(c.trust.iter().map(|b| b.as_slice()));
        if trust != next.ca_pem {
            info!(cas = c.trust.len(), "the manager changed the CAs this board trusts");
            next.ca_pem = trust;
            changed = true;
        }
    }
    if c.now_ms >= next.manager_time_ms.saturating_add(FLOOR_STEP_MS) {
        next.manager_time_ms = c.now_ms;
        changed = true;
    }
    if let Some(cert) = &c.certificate {
        match state.pending.take() {
            // The certificate must be for the key made here, or the next connection
            // would present a certificate its key can't sign for.
            Some((key, _)) if contains(cert.as_slice(), key.public_key_raw()) => {
                next.cert_pem = shoal_link::files::cert_pem(cert.as_slice());
                next.key_pem = key.serialize_pem();
                changed = true;
                saved = true;
            }
            Some(_) => warn!("the manager sent a certificate for another key; it is not used"),
            None => warn!("the manager sent a certificate nobody asked for; it is not used"),
        }
    }
    if changed {
        // What the next connection will be made with must make one: a trust bundle or a
        // certificate that doesn't parse is refused here, and the old identity goes on.
        if let Err(e) = next.tls(data_dir, Duration::from_secs(5)) {
            warn!(error = %e, "the manager's new credentials are unusable; keeping the old ones");
            return None;
        }
        if let Err(e) = next.save(data_dir) {
            // Nothing changes until it can be saved: the old certificate and trust go on.
            warn!(error = %e, "cannot save the node's identity; keeping the old one");
            return None;
        }
        *identity.lock().expect("identity lock") = next.clone();
    }
    if c.valid_until_ms > 0 {
        let held = pem_der(&next.cert_pem).unwrap_or_default();
        let digest = shoal_link::tls::ca_digest(&held);
        state.held =
            Some((Validity { from_ms: c.valid_from_ms, until_ms: c.valid_until_ms }, renewal::jitter(&digest)));
    }
    if saved {
        info!(until = %shoal_proto::time::rfc3339(c.valid_until_ms), "saved a renewed certificate; it is used from the next connection");
        return Some(AgentMessage::CertificateSaved);
    }
    None
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_waits_by_the_managers_clock_not_the_boards() {
        const YEARS_3: u64 = 3 * 365 * 86_400_000;
        let v = Validity { from_ms: YEARS_3 + 1_000_000, until_ms: YEARS_3 + 1_010_000 };
        // The board's clock is three years behind; the manager's says YEARS_3 + 1_004_000.
        let board = 1_004_000;
        let state = Renewal { offset_ms: YEARS_3 as i64, held: Some((v, 0)), ..Renewal::default() };
        assert_eq!(state.wait(board), Some(Duration::from_millis(1_000)), "due at 50%: 1_005_000");
        let late = Renewal { offset_ms: YEARS_3 as i64 + 5_000, held: Some((v, 0)), ..Renewal::default() };
        assert_eq!(late.wait(board), Some(Duration::ZERO));
        let asked = Renewal { renew_now: true, ..Renewal::default() };
        assert_eq!(asked.wait(board), Some(Duration::ZERO));
        assert_eq!(Renewal::default().wait(board), None, "nothing known: nothing to do");
    }

    #[test]
    fn a_certificate_is_taken_only_for_the_key_made_here() {
        let key = rcgen::KeyPair::generate().unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["n".into()]).unwrap().self_signed(&key).unwrap();
        assert!(contains(cert.der(), key.public_key_raw()));
        assert!(!contains(cert.der(), other.public_key_raw()));
        assert!(!contains(cert.der(), &[]));
    }
}
