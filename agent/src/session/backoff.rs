//! Jittered exponential reconnect backoff.
//!
//! A whole fleet loses its broker at once when the broker restarts; without
//! jitter every device would reconnect in the same instant, again and again.
//! This is "full jitter": each delay is uniform in `[min, cap]`, where `cap`
//! doubles with every failed attempt up to `max`.

use std::time::Duration;

/// Reconnect delays for one session. I/O-free; seeded, so tests are exact.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// Delays between `min` and `max`; `seed` spreads devices apart (use
    /// something device-specific, such as a hash of the device id).
    pub fn new(min: Duration, max: Duration, seed: u64) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
            rng: scramble(seed),
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self
            .min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let span = cap.saturating_sub(self.min).as_millis() as u64;
        let jitter = if span == 0 {
            0
        } else {
            self.next_random() % (span + 1)
        };
        self.min + Duration::from_millis(jitter)
    }

    /// Call after a successful connection: the next failure starts small.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: plenty for spreading reconnects, no dependency.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// splitmix64's finaliser: nearby seeds (device ids hashing close
/// together) start far apart, and never at xorshift's stuck state 0.
fn scramble(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_cap_doubles_up_to_the_maximum_and_reset_starts_over() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(3);
        let mut b = Backoff::new(min, max, 7);
        let caps = [100u64, 200, 400, 800, 1600, 3000, 3000];
        for cap in caps {
            let d = b.next_delay();
            assert!(d >= min && d <= Duration::from_millis(cap), "{d:?} > {cap}");
        }
        b.reset();
        assert_eq!(
            b.next_delay(),
            min,
            "the first delay after a reset is the minimum"
        );
    }

    #[test]
    fn devices_with_different_seeds_spread_out() {
        let delays: std::collections::BTreeSet<_> = (0..50u64)
            .map(|seed| {
                let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30), seed);
                (0..6).map(|_| b.next_delay()).last().unwrap()
            })
            .collect();
        assert!(delays.len() > 40, "only {} distinct delays", delays.len());
    }

    proptest! {
        #[test]
        fn delays_stay_within_bounds(seed: u64, min_ms in 1u64..5_000, extra in 0u64..60_000, n in 1usize..100) {
            let min = Duration::from_millis(min_ms);
            let max = min + Duration::from_millis(extra);
            let mut b = Backoff::new(min, max, seed);
            for _ in 0..n {
                let d = b.next_delay();
                prop_assert!(d >= min && d <= max);
            }
        }
    }
}
