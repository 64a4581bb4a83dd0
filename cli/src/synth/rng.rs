//! The random source: splitmix64, with one independent stream per patient (or Practitioner,
//! Organization), so that no resource depends on the order others are generated in.

pub(super) const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
pub(super) const PATIENT_STREAM: u64 = 1;
pub(super) const PRACTITIONER_STREAM: u64 = 2;
pub(super) const ORGANIZATION_STREAM: u64 = 3;

/// The splitmix64 finalizer: a bijective 64-bit mix.
pub(super) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// splitmix64: tiny state, fast, and good enough for test data.
pub(super) struct Rng(u64);

impl Rng {
    /// An independent stream per `(seed, domain, index)`, so each patient's data is a function
    /// of its own index only.
    pub(super) fn stream(seed: u64, domain: u64, index: u64) -> Rng {
        Rng(mix(mix(seed ^ domain.wrapping_mul(GOLDEN)) ^ index))
    }

    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix(self.0)
    }

    /// Uniform in `0..n` (multiply-shift; the bias is negligible for these small `n`).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `0..n` for the small counts and index ranges used here.
    pub(super) fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    pub(super) fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    pub(super) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }

    pub(super) fn weighted<T: Copy>(&mut self, items: &[(T, u32)]) -> T {
        let total: u32 = items.iter().map(|(_, w)| w).sum();
        let mut r = self.below(u64::from(total)) as u32;
        for (item, w) in items {
            if r < *w {
                return *item;
            }
            r -= w;
        }
        items[items.len() - 1].0
    }

    /// Uniform in `lo..hi` milliseconds, whole seconds only.
    pub(super) fn seconds_in(&mut self, lo: i64, hi: i64) -> i64 {
        let span = ((hi - lo) / 1000).max(1) as u64;
        lo + self.below(span) as i64 * 1000
    }
}
