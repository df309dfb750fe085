//! Reconnect delays: exponential in the number of consecutive failures, capped, with jitter
//! so that a fleet that lost its network does not come back in lockstep.

use std::time::Duration;

use rand::Rng;

/// Jittered exponential backoff: attempt `n` (from 0) waits a uniformly drawn delay in
/// `[d/2, d]` where `d = min(max, base × 2ⁿ)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay scale of the first retry.
    pub base: Duration,
    /// The cap on any delay.
    pub max: Duration,
}

impl Default for Backoff {
    /// 1 s doubling up to 60 s.
    fn default() -> Backoff {
        Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The upper bound of the delay before retry `attempt` (0 for the first retry).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The delay before retry `attempt`, drawn from `[ceiling/2, ceiling]`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        let floor_ms = ceiling_ms / 2;
        if ceiling_ms == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(rng.gen_range(floor_ms..=ceiling_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn delays_grow_stay_in_bounds_and_are_capped() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
        };
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 0..40 {
            let ceiling = backoff.ceiling(attempt);
            let expected = Duration::from_millis(100u64.saturating_mul(1 << attempt.min(20)))
                .min(Duration::from_secs(5));
            assert_eq!(ceiling, expected, "attempt {attempt}");
            for _ in 0..50 {
                let d = backoff.delay(attempt, &mut rng);
                assert!(d <= ceiling && d >= ceiling / 2, "attempt {attempt}: {d:?}");
            }
        }
    }

    #[test]
    fn delays_are_jittered() {
        let backoff = Backoff::default();
        let mut rng = StdRng::seed_from_u64(1);
        let draws: std::collections::HashSet<_> =
            (0..20).map(|_| backoff.delay(3, &mut rng)).collect();
        assert!(draws.len() > 10, "{draws:?}");
    }

    #[test]
    fn zero_base_means_no_wait() {
        let backoff = Backoff {
            base: Duration::ZERO,
            max: Duration::from_secs(1),
        };
        assert_eq!(
            backoff.delay(5, &mut StdRng::seed_from_u64(0)),
            Duration::ZERO
        );
    }
}
