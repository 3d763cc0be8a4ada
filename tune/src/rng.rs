//! Seeded randomness that a resumed run reproduces without saved state:
//! every draw (initial factors, dropout masks, data order) comes from a
//! stream keyed by the run's seed and what it is for (step, layer, target),
//! so step k after `--resume` draws exactly what it drew in an
//! uninterrupted run.

/// SplitMix64: small, fast, and good enough for masks and initialisation.
#[derive(Debug, Clone)]
pub struct Stream(u64);

impl Stream {
    /// A stream for `seed` and a purpose given as a few integers.
    pub fn new(seed: u64, key: &[u64]) -> Stream {
        let mut s = Stream(seed ^ 0x9E37_79B9_7F4A_7C15);
        for &k in key {
            s.0 ^= k.wrapping_mul(0xD1B5_4A32_D192_ED03);
            s.next_u64();
        }
        s
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Standard normal (Box–Muller).
    pub fn next_normal(&mut self) -> f32 {
        let u1 = ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    /// A Fisher–Yates shuffle of `0..n`.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_draws_other_key_other_draws() {
        let a: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(Stream::new(7, &[1, 2]), |s, _| Some(s.next_u64()))
            .collect();
        let b: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(Stream::new(7, &[1, 2]), |s, _| Some(s.next_u64()))
            .collect();
        let c: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(Stream::new(7, &[1, 3]), |s, _| Some(s.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn normals_have_unit_variance() {
        let mut s = Stream::new(1, &[]);
        let xs: Vec<f32> = (0..20_000).map(|_| s.next_normal()).collect();
        let mean = xs.iter().sum::<f32>() / xs.len() as f32;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / xs.len() as f32;
        assert!(mean.abs() < 0.03, "{mean}");
        assert!((var - 1.0).abs() < 0.05, "{var}");
    }
}
