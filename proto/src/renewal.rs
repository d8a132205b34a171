//! When a certificate is renewed, and when it is close enough to its end to warn about:
//! pure rules over times the caller passes in (milliseconds since the Unix epoch, by the
//! **manager's** clock), shared by the agent (its node certificate) and the manager (the
//! administrator's `admin.json`, `node ls`).
//!
//! Swarm's rule: a certificate is renewed at a random point between 50% and 80% of its
//! life, so a fleet whose certificates were issued together does not renew at once. The
//! point is fixed per certificate (from its digest), so every look at the same
//! certificate gives the same answer and no state has to be kept for it.

/// Fraction of a certificate's life before which it is never renewed, per mille.
pub const WINDOW_START: u64 = 500;
/// Fraction of a certificate's life by which it is always renewed, per mille.
pub const WINDOW_END: u64 = 800;
/// `node ls` warns about certificates that end within this much time (a week), or
/// within the last fifth of their life when that is shorter: a node still on it then has
/// missed its renewal (an offline board).
pub const WARN_BEFORE_MS: u64 = 7 * 24 * 3_600_000;

/// A certificate's validity, by its own fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// `notBefore`, ms since the Unix epoch.
    pub from_ms: u64,
    /// `notAfter`, ms since the Unix epoch.
    pub until_ms: u64,
}

impl Validity {
    /// Its whole life.
    pub fn life_ms(self) -> u64 {
        self.until_ms.saturating_sub(self.from_ms)
    }

    /// When to renew it: `from + life × (50% + 30% × jitter)`, `jitter` in `0..1000`.
    pub fn renew_at(self, jitter: u16) -> u64 {
        let per_mille = WINDOW_START + u64::from(jitter.min(999)) * (WINDOW_END - WINDOW_START) / 1000;
        // u128: a life of years in ms times a per-mille fits easily, but not in u64 always.
        self.from_ms + (u128::from(self.life_ms()) * u128::from(per_mille) / 1000) as u64
    }

    /// Whether it is time to renew at `now` (manager's clock).
    pub fn renewal_due(self, now_ms: u64, jitter: u16) -> bool {
        now_ms >= self.renew_at(jitter)
    }

    /// How long from `now` until it is due (zero when it is).
    pub fn due_in_ms(self, now_ms: u64, jitter: u16) -> u64 {
        self.renew_at(jitter).saturating_sub(now_ms)
    }

    /// Whether `node ls` should warn: it ends within [`WARN_BEFORE_MS`], or within the
    /// last fifth of its life when that is shorter (short test lifetimes), or has ended.
    pub fn expires_soon(self, now_ms: u64) -> bool {
        let margin = WARN_BEFORE_MS.min(self.life_ms() / 5);
        now_ms.saturating_add(margin) >= self.until_ms
    }
}

/// The certificate's fixed point in the window, from its digest (SHA-256 of its DER):
/// `0..1000`.
pub fn jitter(cert_digest: &[u8; 32]) -> u16 {
    u16::from_le_bytes([cert_digest[0], cert_digest[1]]) % 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * 3_600_000;

    #[test]
    fn renewal_falls_between_half_and_four_fifths_of_the_life() {
        let v = Validity { from_ms: 1_000 * DAY, until_ms: 1_090 * DAY };
        assert_eq!(v.renew_at(0), 1_045 * DAY);
        assert!(v.renew_at(999) <= 1_072 * DAY && v.renew_at(999) > 1_071 * DAY);
        for j in [0u16, 1, 500, 999, 1000, u16::MAX] {
            let at = v.renew_at(j);
            assert!((1_045 * DAY..=1_072 * DAY).contains(&at), "{j}: {at}");
            assert!(!v.renewal_due(at - 1, j));
            assert!(v.renewal_due(at, j));
            assert_eq!(v.due_in_ms(at - 5, j), 5);
            assert_eq!(v.due_in_ms(at + 5, j), 0);
        }
    }

    #[test]
    fn the_window_holds_for_seconds_and_for_decades() {
        let short = Validity { from_ms: 10_000, until_ms: 20_000 };
        assert_eq!(short.renew_at(0), 15_000);
        assert_eq!(short.renew_at(999), 17_990);
        let long = Validity { from_ms: 0, until_ms: 1_000 * 365 * DAY };
        assert!(long.renew_at(999) < long.until_ms);
        // A certificate with its fields reversed is due at once, never a panic.
        let bad = Validity { from_ms: 20_000, until_ms: 10_000 };
        assert!(bad.renewal_due(20_000, 500));
    }

    #[test]
    fn a_fleet_spreads_over_the_window() {
        let v = Validity { from_ms: 0, until_ms: 1_000_000 };
        let points: std::collections::BTreeSet<u64> =
            (0u8..=255).map(|i| v.renew_at(jitter(&[i.wrapping_mul(97); 32]))).collect();
        assert!(points.len() > 100, "{}", points.len());
        assert!(points.iter().all(|p| (500_000..800_000).contains(p)));
    }

    #[test]
    fn expiring_soon_is_a_week_or_the_last_fifth() {
        let v = Validity { from_ms: 0, until_ms: 90 * DAY };
        assert!(!v.expires_soon(82 * DAY));
        assert!(v.expires_soon(83 * DAY + 1));
        assert!(v.expires_soon(100 * DAY), "an expired one too");
        let short = Validity { from_ms: 0, until_ms: 10_000 };
        assert!(!short.expires_soon(7_000));
        assert!(short.expires_soon(8_000));
    }
}
