//! Join tokens: `SHOAL-1-<ca-digest>-<secret>`. The digest (SHA-256 of the cluster CA
//! certificate, hex) lets a joining board verify the manager without trusting it on
//! first use; the secret proves to the manager that the board may join.

use core::fmt;

use crate::hex;

/// Token prefix, like Swarm's `SWMTKN`.
pub const PREFIX: &str = "SHOAL";
/// Token format version.
pub const FORMAT_VERSION: u8 = 1;
/// Length of the secret part.
pub const SECRET_LEN: usize = 25;

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the CA certificate (DER).
    pub ca_digest: [u8; 32],
    /// Random base-36 secret.
    pub secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        // Never print the secret in logs.
        f.debug_struct("JoinToken").field("ca_digest", &hex(&self.ca_digest)).finish_non_exhaustive()
    }
}

/// Why a token string is not a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Wrong overall shape.
    #[error(
        "malformed join token: expected SHOAL-1-<ca digest>-<secret>, as printed by `shoal manager join-token worker`"
    )]
    Malformed,
    /// A format version this build does not know.
    #[error("join token format {0} is not supported by this agent: upgrade the agent")]
    UnsupportedVersion(String),
}

impl JoinToken {
    /// Makes a token from the CA digest and 25 random bytes.
    pub fn new(ca_digest: [u8; 32], random: [u8; SECRET_LEN]) -> Self {
        let secret = random.iter().map(|b| char::from_digit(u32::from(*b) % 36, 36).unwrap_or('0')).collect();
        Self { ca_digest, secret }
    }

    /// Compares secrets in time independent of where they differ.
    pub fn secret_matches(&self, other: &JoinToken) -> bool {
        let (a, b) = (self.secret.as_bytes(), other.secret.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl core::str::FromStr for JoinToken {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, TokenError> {
        let mut parts = s.trim().split('-');
        let (Some(prefix), Some(version), Some(digest), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        if prefix != PREFIX {
            return Err(TokenError::Malformed);
        }
        if version != FORMAT_VERSION.to_string() {
            return Err(TokenError::UnsupportedVersion(version.to_owned()));
        }
        let ca_digest = unhex32(digest).ok_or(TokenError::Malformed)?;
        if secret.len() != SECRET_LEN || !secret.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()) {
            return Err(TokenError::Malformed);
        }
        Ok(Self { ca_digest, secret: secret.to_owned() })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{PREFIX}-{FORMAT_VERSION}-{}-{}", hex(&self.ca_digest), self.secret)
    }
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_token_prints_and_parses_back() {
        let t = JoinToken::new([0xab; 32], [7; SECRET_LEN]);
        let s = t.to_string();
        assert!(s.starts_with("SHOAL-1-abab"));
        assert_eq!(s.parse::<JoinToken>().unwrap(), t);
    }

    #[test]
    fn malformed_tokens_say_so() {
        for bad in ["", "SHOAL-1", "SWMTKN-1-aa-bb", "SHOAL-1-zz-0000000000000000000000000", "SHOAL-1-ab-cd-ef"] {
            assert_eq!(bad.parse::<JoinToken>(), Err(TokenError::Malformed), "{bad}");
        }
        let future = format!("SHOAL-2-{}-{}", "ab".repeat(32), "a".repeat(SECRET_LEN));
        assert!(matches!(future.parse::<JoinToken>(), Err(TokenError::UnsupportedVersion(_))));
    }

    #[test]
    fn secrets_compare_exactly() {
        let a = JoinToken::new([1; 32], [1; SECRET_LEN]);
        let b = JoinToken::new([1; 32], [2; SECRET_LEN]);
        assert!(a.secret_matches(&a.clone()));
        assert!(!a.secret_matches(&b));
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let t = JoinToken::new([1; 32], [9; SECRET_LEN]);
        assert!(!format!("{t:?}").contains(&t.secret));
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_text_never_panics(s in ".{0,200}") {
            let _ = s.parse::<JoinToken>();
        }
    }
}
