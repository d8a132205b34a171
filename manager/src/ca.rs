//! The cluster's certificate authority: it signs the manager's server certificate, each
//! node's certificate (from the node's CSR, so node keys never leave the boards) and the
//! administrator's certificate the CLI uses. The role travels in the certificate's
//! organisational unit, the node ID in its common name.
//!
//! Node and administrator certificates last the cluster's `--cert-expiry` (90 days by
//! default) and are renewed over the session (see `shoal_proto::renewal`); the manager's
//! own server certificate lasts [`SERVER_VALIDITY`] and is renewed by the manager. Every
//! CA carries a random tag in its name, so a certificate's issuer tells which CA of a
//! rotation signed it.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use shoal_proto::renewal::Validity;
use time::{Duration, OffsetDateTime};

/// What a certificate allows its holder to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRole {
    /// The manager's server certificate.
    Manager,
    /// A node's agent.
    Worker,
    /// The operator's CLI.
    Admin,
}

impl CertRole {
    fn ou(self) -> &'static str {
        match self {
            Self::Manager => "shoal-manager",
            Self::Worker => "shoal-worker",
            Self::Admin => "shoal-admin",
        }
    }
}

/// Certificate trouble.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// rcgen refused (bad CSR, bad key).
    #[error("{0}")]
    Rcgen(#[from] rcgen::Error),
    /// A presented certificate lacks the fields shoal puts there.
    #[error("certificate is not a shoal certificate: {0}")]
    NotShoal(&'static str),
}

pub use shoal_core::rotation::DEFAULT_CERT_EXPIRY_MS;
/// Validity of the manager's server certificate; the manager renews it half-way.
pub const SERVER_VALIDITY_MS: u64 = 365 * 24 * 3_600_000;
/// See [`SERVER_VALIDITY_MS`].
pub const SERVER_VALIDITY: Duration = Duration::days(365);
/// The CA starts a day early: the manager's own clock may be stepped back a little
/// after it was made. Boards do not need it (they do not hold `notBefore` against their
/// clock, see `shoal_link::tls`).
const CA_BACKDATE: Duration = Duration::days(1);
/// Leaves start at most this early, for the same reason; less for very short lifetimes,
/// whose renewal window is measured from `notBefore`.
const LEAF_BACKDATE_MS: u64 = 60_000;

/// The CA: its certificate and key.
pub struct Ca {
    cert: CertificateDer<'static>,
    key: KeyPair,
}

impl Ca {
    /// A new CA for `cluster_id`, valid for 20 years, its name tagged at random so the
    /// CAs of a rotation are told apart by name.
    pub fn generate(cluster_id: &str) -> Result<Self, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let tag = shoal_proto::hex(&shoal_link::random::<4>());
        params.distinguished_name = name(&format!("shoal cluster CA {cluster_id} {tag}"), "shoal-ca", cluster_id);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CA_BACKDATE;
        params.not_after = now + Duration::days(365 * 20);
        let cert = params.self_signed(&key)?;
        Ok(Self { cert: cert.der().clone(), key })
    }

    /// Loads a CA from its certificate and PEM key.
    pub fn from_parts(cert: Vec<u8>, key_pem: &str) -> Result<Self, CaError> {
        Ok(Self { cert: CertificateDer::from(cert), key: KeyPair::from_pem(key_pem)? })
    }

    /// The CA certificate.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The CA key, PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// SHA-256 of the certificate, as join tokens carry it.
    pub fn digest(&self) -> [u8; 32] {
        shoal_link::tls::ca_digest(&self.cert)
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, CaError> {
        Ok(Issuer::from_ca_cert_der(&self.cert, &self.key)?)
    }

    /// Issues a certificate valid for `validity_ms` and a fresh key for `role` (manager
    /// server, admin CLI).
    pub fn issue(
        &self,
        role: CertRole,
        common_name: &str,
        cluster_id: &str,
        validity_ms: u64,
    ) -> Result<(CertificateDer<'static>, KeyPair), CaError> {
        let key = KeyPair::generate()?;
        let cert = self.leaf_params(role, common_name, cluster_id, validity_ms).signed_by(&key, &self.issuer()?)?;
        Ok((cert.der().clone(), key))
    }

    /// Issues a server certificate for `key` valid for `validity_ms`, naming the
    /// manager by `names` (IP addresses and DNS names a client dials): the Docker API's
    /// TCP listener, whose clients check the name they dialed, unlike shoal's own.
    pub fn issue_server(
        &self,
        names: &[String],
        cluster_id: &str,
        key: &KeyPair,
        validity_ms: u64,
    ) -> Result<CertificateDer<'static>, CaError> {
        let mut params = self.leaf_params(CertRole::Manager, "shoal docker api", cluster_id, validity_ms);
        params.subject_alt_names = CertificateParams::new(names.to_vec())?.subject_alt_names;
        Ok(params.signed_by(key, &self.issuer()?)?.der().clone())
    }

    /// Issues a certificate for an existing key (the manager's server key, which must
    /// stay the same across renewals).
    pub fn sign_key(
        &self,
        role: CertRole,
        common_name: &str,
        cluster_id: &str,
        key: &KeyPair,
        validity_ms: u64,
    ) -> Result<CertificateDer<'static>, CaError> {
        let cert = self.leaf_params(role, common_name, cluster_id, validity_ms).signed_by(key, &self.issuer()?)?;
        Ok(cert.der().clone())
    }

    /// Signs a node's CSR, valid for `validity_ms`. Only the CSR's public key is used
    /// (after checking its signature proves possession of the key); names and
    /// extensions come from here.
    pub fn sign_node(
        &self,
        csr: &[u8],
        node_id: &str,
        cluster_id: &str,
        validity_ms: u64,
    ) -> Result<CertificateDer<'static>, CaError> {
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr))?;
        let cert = self
            .leaf_params(CertRole::Worker, node_id, cluster_id, validity_ms)
            .signed_by(&csr.public_key, &self.issuer()?)?;
        Ok(cert.der().clone())
    }

    /// Whether this CA signed `cert` (by the issuer's name, which is unique per CA; the
    /// signature itself was checked by TLS or made here).
    pub fn signed(&self, cert: &[u8]) -> bool {
        let subject = x509_parser::parse_x509_certificate(&self.cert).map(|(_, c)| c.subject().as_raw().to_vec());
        let issuer = x509_parser::parse_x509_certificate(cert).map(|(_, c)| c.issuer().as_raw().to_vec());
        matches!((subject, issuer), (Ok(s), Ok(i)) if s == i)
    }

    fn leaf_params(&self, role: CertRole, common_name: &str, cluster_id: &str, validity_ms: u64) -> CertificateParams {
        let sans = if role == CertRole::Manager { vec![shoal_proto::MANAGER_SERVER_NAME.to_owned()] } else { vec![] };
        let mut params = CertificateParams::new(sans).unwrap_or_default();
        params.distinguished_name = name(common_name, role.ou(), cluster_id);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match role {
            CertRole::Manager => vec![ExtendedKeyUsagePurpose::ServerAuth],
            CertRole::Worker | CertRole::Admin => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        let now = OffsetDateTime::now_utc();
        let backdate = LEAF_BACKDATE_MS.min(validity_ms / 10);
        params.not_before = now - Duration::milliseconds(backdate as i64);
        params.not_after = now + Duration::milliseconds(validity_ms.min(i64::MAX as u64) as i64);
        params
    }
}

fn name(common_name: &str, unit: &str, cluster_id: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationalUnitName, unit);
    dn.push(DnType::OrganizationName, cluster_id);
    dn
}

/// A certificate's validity, ms since the Unix epoch.
pub fn validity(cert: &[u8]) -> Result<Validity, CaError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert).map_err(|_| CaError::NotShoal("unparsable"))?;
    let ms = |t: x509_parser::time::ASN1Time| u64::try_from(t.timestamp()).unwrap_or(0).saturating_mul(1000);
    Ok(Validity { from_ms: ms(x509.validity().not_before), until_ms: ms(x509.validity().not_after) })
}

/// Reads the role and common name from a certificate the TLS layer already verified
/// against the CA.
pub fn identify(cert: &[u8]) -> Result<(CertRole, String), CaError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert).map_err(|_| CaError::NotShoal("unparsable"))?;
    let subject = x509.subject();
    let cn =
        subject.iter_common_name().next().and_then(|a| a.as_str().ok()).ok_or(CaError::NotShoal("no common name"))?;
    let ou =
        subject.iter_organizational_unit().next().and_then(|a| a.as_str().ok()).ok_or(CaError::NotShoal("no role"))?;
    let role = [CertRole::Manager, CertRole::Worker, CertRole::Admin]
        .into_iter()
        .find(|r| r.ou() == ou)
        .ok_or(CaError::NotShoal("unknown role"))?;
    Ok((role, cn.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_csr_is_signed_with_names_from_the_ca_not_the_request() {
        let ca = Ca::generate("c1").unwrap();
        let node_key = KeyPair::generate().unwrap();
        let mut asked = CertificateParams::new(vec!["evil".to_owned()]).unwrap();
        asked.distinguished_name = name("admin", "shoal-admin", "c1");
        let csr = asked.serialize_request(&node_key).unwrap();
        let cert = ca.sign_node(csr.der(), "abc", "c1", DEFAULT_CERT_EXPIRY_MS).unwrap();
        assert_eq!(identify(&cert).unwrap(), (CertRole::Worker, "abc".to_owned()));
    }

    #[test]
    fn a_docker_api_server_certificate_names_the_addresses_clients_dial() {
        let ca = Ca::generate("c1").unwrap();
        let key = KeyPair::generate().unwrap();
        let names = ["127.0.0.1".to_owned(), "localhost".to_owned()];
        let cert = ca.issue_server(&names, "c1", &key, SERVER_VALIDITY_MS).unwrap();
        assert!(ca.signed(&cert));
        assert_eq!(identify(&cert).unwrap().0, CertRole::Manager);
        let (_, x509) = x509_parser::parse_x509_certificate(&cert).unwrap();
        let san = x509.subject_alternative_name().unwrap().unwrap().value.general_names.clone();
        assert!(san
            .iter()
            .any(|n| matches!(n, x509_parser::extensions::GeneralName::IPAddress(b) if *b == [127, 0, 0, 1])));
        assert!(san.iter().any(|n| matches!(n, x509_parser::extensions::GeneralName::DNSName("localhost"))));
    }

    #[test]
    fn a_garbage_csr_is_refused() {
        let ca = Ca::generate("c1").unwrap();
        assert!(ca.sign_node(b"not a csr", "abc", "c1", DEFAULT_CERT_EXPIRY_MS).is_err());
    }

    #[test]
    fn the_ca_survives_a_round_trip_through_storage() {
        let ca = Ca::generate("c1").unwrap();
        let again = Ca::from_parts(ca.cert().to_vec(), &ca.key_pem()).unwrap();
        assert_eq!(again.digest(), ca.digest());
        let (admin, _) = again.issue(CertRole::Admin, "admin", "c1", DEFAULT_CERT_EXPIRY_MS).unwrap();
        assert_eq!(identify(&admin).unwrap().0, CertRole::Admin);
    }

    #[test]
    fn certificates_last_the_expiry_asked_and_name_the_ca_that_signed_them() {
        let (old, new) = (Ca::generate("c1").unwrap(), Ca::generate("c1").unwrap());
        let (cert, _) = new.issue(CertRole::Admin, "admin", "c1", 10_000).unwrap();
        let v = validity(&cert).unwrap();
        // Whole seconds in X.509; a tenth of the life backdated.
        assert!((9_000..=12_000).contains(&v.life_ms()), "{v:?}");
        assert!(new.signed(&cert) && !old.signed(&cert));
        let (cert, _) = old.issue(CertRole::Admin, "admin", "c1", DEFAULT_CERT_EXPIRY_MS).unwrap();
        let v = validity(&cert).unwrap();
        assert_eq!(v.life_ms(), DEFAULT_CERT_EXPIRY_MS + LEAF_BACKDATE_MS);
        assert!(old.signed(&cert) && !new.signed(&cert));
    }
}
