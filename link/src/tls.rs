//! TLS for shoal: TLS 1.3 only, the cluster CA as the single root, ALPN `shoal/1`.
//!
//! - The manager presents `[its certificate, the CA]` and asks for, but does not require,
//!   a client certificate: a board that is joining has none yet. The manager decides per
//!   request what an unauthenticated connection may do (only join).
//! - A joining board trusts the manager through the CA digest in its token
//!   ([`Trust::CaDigest`]): the chain must contain a certificate with that SHA-256 and the
//!   manager's certificate must verify against it. No trust on first use.
//! - Joined boards and the CLI trust the stored CAs ([`Trust::Bundle`]: one, two during a
//!   CA rotation) and present their own certificate.
//! - Clocks: a board may have no real-time clock and boot years in the past. A client
//!   checks the manager's certificate at `max(its clock, the latest manager time it has
//!   seen)`, and does not hold `notBefore` against it: a certificate the cluster's CA
//!   signed is not made unsafe by the board's clock being behind, while one that ended
//!   before the last time the board heard the manager is still refused (an old, perhaps
//!   stolen, manager key can't be replayed to it). The manager checks clients by its own
//!   clock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::CertificateError;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use shoal_proto::ALPN;

use crate::LinkError;

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// PKCS#8 key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self { chain: self.chain.clone(), key: self.key.clone_key() }
    }
}

/// How a client decides to trust the manager.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Only the SHA-256 of the CA certificate is known (from a join token).
    CaDigest([u8; 32]),
    /// The CA certificate itself (after joining).
    Ca(CertificateDer<'static>),
    /// The CAs stored after joining (two during a CA rotation), and the latest manager
    /// time this client has seen (ms since the Unix epoch; 0 if none): no clock reading
    /// below it is believed when checking the manager's certificate's expiry.
    Bundle {
        /// Trusted CA certificates.
        cas: Vec<CertificateDer<'static>>,
        /// Lower bound of the real time, ms.
        floor_ms: u64,
    },
}

/// SHA-256 of a DER certificate, as join tokens carry it.
pub fn ca_digest(der: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// QUIC transport settings shared by both ends.
pub fn transport(idle_timeout: Duration, keep_alive: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(idle_timeout.try_into().ok());
    t.keep_alive_interval(Some(keep_alive));
    Arc::new(t)
}

/// The manager's QUIC server configuration.
pub fn server_config(
    ca: CertificateDer<'static>,
    identity: Identity,
    idle_timeout: Duration,
) -> Result<quinn::ServerConfig, LinkError> {
    server_config_trusting(vec![ca], identity, idle_timeout)
}

/// The trust store of the cluster's CAs (two during a rotation).
fn cluster_roots(cas: Vec<CertificateDer<'static>>) -> Result<Arc<RootCertStore>, LinkError> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca).map_err(|e| LinkError::Tls(format!("cluster CA: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// A TLS-over-TCP server configuration that requires a client certificate signed by one
/// of `cas` (the manager's Docker Engine API on TCP): same provider and TLS 1.3 as the
/// QUIC server, but no ALPN (HTTP/1.1 clients offer none or `http/1.1`) and no
/// unauthenticated peers at all. What the certificate's holder may do is the caller's
/// to decide after the handshake.
pub fn tcp_server_config_requiring_client(
    cas: Vec<CertificateDer<'static>>,
    identity: Identity,
) -> Result<rustls::ServerConfig, LinkError> {
    let client_verifier = WebPkiClientVerifier::builder_with_provider(cluster_roots(cas)?, provider())
        .build()
        .map_err(|e| LinkError::Tls(e.to_string()))?;
    rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| LinkError::Tls(e.to_string()))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(identity.chain, identity.key)
        .map_err(|e| LinkError::Tls(format!("server certificate: {e}")))
}

/// The manager's QUIC server configuration, accepting client certificates of any of
/// `cas` (two during a CA rotation).
pub fn server_config_trusting(
    cas: Vec<CertificateDer<'static>>,
    identity: Identity,
    idle_timeout: Duration,
) -> Result<quinn::ServerConfig, LinkError> {
    let client_verifier = WebPkiClientVerifier::builder_with_provider(cluster_roots(cas)?, provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| LinkError::Tls(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| LinkError::Tls(e.to_string()))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(identity.chain, identity.key)
        .map_err(|e| LinkError::Tls(format!("manager certificate: {e}")))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| LinkError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(idle_timeout.try_into().ok());
    // Longer than the clients' (idle / 4): an agent's keep-alive, answered, resets this one,
    // so an idle connection costs one ping and one acknowledgement per agent interval.
    t.keep_alive_interval(Some(idle_timeout / 2));
    // Every connection starts with an unauthenticated peer's allowance; the manager
    // raises it once a certificate says who is there (see `PeerLimits`).
    t.max_concurrent_bidi_streams(UNAUTHENTICATED.streams.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.receive_window(UNAUTHENTICATED.window.into());
    // Per stream, what keeps one upload at LAN speed; the connection's window above is
    // what bounds the total.
    t.stream_receive_window((1u32 << 20).into());
    t.send_window(SERVER_SEND_WINDOW);
    config.transport_config(Arc::new(t));
    Ok(config)
}

/// Bytes the manager buffers for one connection before its writes wait for the peer's
/// acknowledgements. quinn's default (10 MB) let a blob transfer fill that much per
/// board at once: 40 boards fetching an image took the manager from 35 to 178 MB. One
/// MiB still keeps a LAN transfer at line rate (1 MiB per round trip is 1 GB/s at 1 ms)
/// and is more than a 1 Mbit/s link with 300 ms of delay can have in flight.
pub const SERVER_SEND_WINDOW: u64 = 1 << 20;

/// What one connection to the manager may hold: streams open at once and bytes sent but
/// not yet read by the manager (QUIC flow control: the peer cannot send past it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLimits {
    /// Concurrent bidirectional streams.
    pub streams: u32,
    /// Connection-wide receive window, bytes.
    pub window: u32,
}

/// A peer without a certificate may only join or ping: a join request is a few tens of
/// kilobytes, so a few streams and a small window are all it needs, and all a stranger
/// can make the manager hold.
pub const UNAUTHENTICATED: PeerLimits = PeerLimits { streams: 4, window: 256 * 1024 };

/// A node or the operator's CLI: enough streams for a session, blob fetches and control
/// requests at once, and a window that keeps an image upload at LAN speed.
pub const AUTHENTICATED: PeerLimits = PeerLimits { streams: 64, window: 16 * 1024 * 1024 };

impl PeerLimits {
    /// Applies these limits to an established connection.
    pub fn apply(self, conn: &quinn::Connection) {
        conn.set_max_concurrent_bi_streams(self.streams.into());
        conn.set_receive_window(self.window.into());
    }
}

/// A client TLS configuration, remembering whether the manager's certificate was not
/// from a CA this client trusts.
#[derive(Clone)]
pub struct ClientTls {
    config: quinn::ClientConfig,
    verifier: Arc<ClusterVerifier>,
}

impl ClientTls {
    /// Builds the client side: how to trust the manager, and what to present to it.
    pub fn new(trust: Trust, identity: Option<Identity>, idle_timeout: Duration) -> Result<Self, LinkError> {
        let (anchor, floor_ms) = match trust {
            Trust::CaDigest(digest) => (Anchor::Digest(digest), 0),
            Trust::Ca(ca) => (Anchor::Roots(roots_verifier(vec![ca])?), 0),
            Trust::Bundle { cas, floor_ms } => (Anchor::Roots(roots_verifier(cas)?), floor_ms),
        };
        let verifier =
            Arc::new(ClusterVerifier { anchor, floor_ms, mismatch: AtomicBool::new(false), provider: provider() });
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| LinkError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone() as Arc<dyn ServerCertVerifier>);
        let mut tls = match identity {
            Some(id) => builder
                .with_client_auth_cert(id.chain, id.key)
                .map_err(|e| LinkError::Tls(format!("node certificate: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| LinkError::Tls(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(transport(idle_timeout, idle_timeout / 4));
        Ok(Self { config, verifier })
    }

    /// The quinn configuration.
    pub fn quinn_config(&self) -> quinn::ClientConfig {
        self.config.clone()
    }

    /// True when a handshake failed because the manager's certificate was not from a
    /// CA this client trusts: with a token, no certificate in its chain had the pinned
    /// digest (the token belongs to another cluster, or someone else answers); after
    /// joining, the cluster's CA was rotated while this client was away (or someone else
    /// answers).
    pub fn ca_mismatch(&self) -> bool {
        self.verifier.mismatch.load(Ordering::Relaxed)
    }
}

fn roots_verifier(cas: Vec<CertificateDer<'static>>) -> Result<Arc<WebPkiServerVerifier>, LinkError> {
    WebPkiServerVerifier::builder_with_provider(cluster_roots(cas)?, provider())
        .build()
        .map_err(|e| LinkError::Tls(e.to_string()))
}

/// What a client trusts the manager by.
#[derive(Debug)]
enum Anchor {
    /// A CA in the manager's chain with this SHA-256 (joining).
    Digest([u8; 32]),
    /// These CAs (joined).
    Roots(Arc<WebPkiServerVerifier>),
}

/// Verifies the manager's certificate against the cluster's CAs, at a time that does not
/// depend on a board's wrong clock (see the module doc).
#[derive(Debug)]
struct ClusterVerifier {
    anchor: Anchor,
    floor_ms: u64,
    mismatch: AtomicBool,
    provider: Arc<CryptoProvider>,
}

/// How many times a verification is retried at a later `notBefore`: the leaf and each CA
/// above it may each start after the board's clock.
const NOT_BEFORE_RETRIES: usize = 4;

/// Verifies at `max(at, notBefore)`: a chain whose certificates start after the board's
/// clock is checked as of their start, so only `notAfter` is held against the clock.
fn verify_ignoring_not_before(
    webpki: &WebPkiServerVerifier,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    server_name: &ServerName<'_>,
    ocsp_response: &[u8],
    mut at: UnixTime,
) -> Result<ServerCertVerified, rustls::Error> {
    for _ in 0..NOT_BEFORE_RETRIES {
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, at) {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext { not_before, .. }))
                if not_before.as_secs() > at.as_secs() =>
            {
                at = not_before;
            }
            result => return result,
        }
    }
    webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, at)
}

impl ServerCertVerifier for ClusterVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let unknown = || {
            self.mismatch.store(true, Ordering::Relaxed);
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        };
        let webpki = match &self.anchor {
            Anchor::Digest(digest) => {
                let ca = intermediates.iter().find(|c| ca_digest(c) == *digest).ok_or_else(unknown)?;
                let mut roots = RootCertStore::empty();
                roots.add(ca.clone().into_owned())?;
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                    .build()
                    .map_err(|e| rustls::Error::General(e.to_string()))?
            }
            Anchor::Roots(v) => v.clone(),
        };
        // The board's clock (moved by the test offset, if any), never below the latest
        // manager time it has seen.
        let at = UnixTime::since_unix_epoch(Duration::from_millis(crate::host::board_ms().max(self.floor_ms)));
        match verify_ignoring_not_before(&webpki, end_entity, intermediates, server_name, ocsp_response, at) {
            // Not signed by a trusted CA, whether no CA of that name is trusted or one of
            // that name is but did not sign it (another cluster's CA of the same name).
            Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature,
            )) => Err(unknown()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use time::{Duration as Span, OffsetDateTime};

    /// A CA and a manager certificate valid from `from` to `until` (days from now).
    fn chain(from: i64, until: i64) -> (CertificateDer<'static>, CertificateDer<'static>) {
        let now = OffsetDateTime::now_utc();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.not_before = now + Span::days(from);
        ca.not_after = now + Span::days(3650);
        let ca_cert = ca.clone().self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec![shoal_proto::MANAGER_SERVER_NAME.to_owned()]).unwrap();
        leaf.not_before = now + Span::days(from);
        leaf.not_after = now + Span::days(until);
        let cert = leaf.signed_by(&key, &Issuer::new(ca, &ca_key)).unwrap();
        (ca_cert.der().clone(), cert.der().clone())
    }

    fn verify(
        ca: &CertificateDer<'static>,
        leaf: &CertificateDer<'static>,
        floor_ms: u64,
    ) -> Result<(), rustls::Error> {
        let v = ClusterVerifier {
            anchor: Anchor::Roots(roots_verifier(vec![ca.clone()]).unwrap()),
            floor_ms,
            mismatch: AtomicBool::new(false),
            provider: provider(),
        };
        let name = ServerName::try_from(shoal_proto::MANAGER_SERVER_NAME).unwrap();
        v.verify_server_cert(leaf, std::slice::from_ref(ca), &name, &[], UnixTime::now()).map(|_| ())
    }

    #[test]
    fn a_board_whose_clock_is_behind_accepts_the_managers_certificate() {
        // As a board three years behind sees a certificate made now: not yet valid.
        let (ca, leaf) = chain(3 * 365, 3 * 365 + 90);
        let plain = roots_verifier(vec![ca.clone()]).unwrap();
        let name = ServerName::try_from(shoal_proto::MANAGER_SERVER_NAME).unwrap();
        let strict = plain.verify_server_cert(&leaf, std::slice::from_ref(&ca), &name, &[], UnixTime::now());
        assert!(
            matches!(strict, Err(rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext { .. }))),
            "{strict:?}"
        );
        verify(&ca, &leaf, 0).unwrap();
    }

    #[test]
    fn an_expired_certificate_is_refused_even_by_a_clock_behind_what_the_board_has_seen() {
        let (ca, leaf) = chain(-2, -1);
        let e = verify(&ca, &leaf, 0).unwrap_err();
        assert!(matches!(e, rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })), "{e:?}");
        // Valid by the board's clock, but it has seen the manager two days later: refused.
        let (ca, leaf) = chain(-2, 1);
        verify(&ca, &leaf, 0).unwrap();
        let two_days_on = crate::host::wall_ms() + 2 * 86_400_000;
        assert!(verify(&ca, &leaf, two_days_on).is_err());
    }

    #[test]
    fn a_manager_of_another_ca_is_flagged_as_a_mismatch() {
        let (ca, _) = chain(-1, 1);
        let (other_ca, other_leaf) = chain(-1, 1);
        let tls =
            ClientTls::new(Trust::Bundle { cas: vec![ca.clone()], floor_ms: 0 }, None, Duration::from_secs(5)).unwrap();
        let name = ServerName::try_from(shoal_proto::MANAGER_SERVER_NAME).unwrap();
        assert!(!tls.ca_mismatch());
        let r = tls.verifier.verify_server_cert(&other_leaf, &[other_ca], &name, &[], UnixTime::now());
        assert!(r.is_err());
        assert!(tls.ca_mismatch(), "the agent says how to re-join instead of just failing");
    }
}
