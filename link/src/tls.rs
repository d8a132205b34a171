//! TLS for shoal: TLS 1.3 only, the cluster CA as the single root, ALPN `shoal/1`.
//!
//! - The manager presents `[its certificate, the CA]` and asks for, but does not require,
//!   a client certificate: a board that is joining has none yet. The manager decides per
//!   request what an unauthenticated connection may do (only join).
//! - A joining board trusts the manager through the CA digest in its token
//!   ([`Trust::CaDigest`]): the chain must contain a certificate with that SHA-256 and the
//!   manager's certificate must verify against it. No trust on first use.
//! - Joined boards and the CLI trust the stored CA ([`Trust::Ca`]) and present their own
//!   certificate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
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
    let mut roots = RootCertStore::empty();
    roots.add(ca).map_err(|e| LinkError::Tls(format!("cluster CA: {e}")))?;
    let client_verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
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
    t.keep_alive_interval(Some(idle_timeout / 4));
    // Every connection starts with an unauthenticated peer's allowance; the manager
    // raises it once a certificate says who is there (see `PeerLimits`).
    t.max_concurrent_bidi_streams(UNAUTHENTICATED.streams.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.receive_window(UNAUTHENTICATED.window.into());
    // Per stream, what keeps one upload at LAN speed; the connection's window above is
    // what bounds the total.
    t.stream_receive_window((1u32 << 20).into());
    config.transport_config(Arc::new(t));
    Ok(config)
}

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

/// A client TLS configuration, remembering whether a pinned CA failed to match.
#[derive(Clone)]
pub struct ClientTls {
    config: quinn::ClientConfig,
    pinned: Option<Arc<PinnedCa>>,
}

impl ClientTls {
    /// Builds the client side: how to trust the manager, and what to present to it.
    pub fn new(trust: Trust, identity: Option<Identity>, idle_timeout: Duration) -> Result<Self, LinkError> {
        let (verifier, pinned): (Arc<dyn ServerCertVerifier>, _) = match trust {
            Trust::CaDigest(digest) => {
                let p = Arc::new(PinnedCa { digest, mismatch: AtomicBool::new(false), provider: provider() });
                (p.clone(), Some(p))
            }
            Trust::Ca(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add(ca).map_err(|e| LinkError::Tls(format!("cluster CA: {e}")))?;
                let v = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .map_err(|e| LinkError::Tls(e.to_string()))?;
                (v, None)
            }
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| LinkError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
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
        Ok(Self { config, pinned })
    }

    /// The quinn configuration.
    pub fn quinn_config(&self) -> quinn::ClientConfig {
        self.config.clone()
    }

    /// True when a handshake failed because no certificate in the manager's chain had
    /// the pinned digest: the token belongs to another cluster (or someone else answers).
    pub fn ca_mismatch(&self) -> bool {
        self.pinned.as_ref().is_some_and(|p| p.mismatch.load(Ordering::Relaxed))
    }
}

/// Trusts a server whose chain contains a CA with a known digest and verifies against it.
#[derive(Debug)]
struct PinnedCa {
    digest: [u8; 32],
    mismatch: AtomicBool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.iter().find(|c| ca_digest(c) == self.digest) else {
            self.mismatch.store(true, Ordering::Relaxed);
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let webpki =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
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
