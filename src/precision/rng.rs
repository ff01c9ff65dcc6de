//! The counter-based generator of stochastic rounding.

/// Random bits as a pure function of `(seed, step, index)`: no state
/// advances, so the same seed gives the same bits for every element of
/// every step, whatever the order, the chunking or the thread count, and a
/// restored checkpoint continues the same sequence.
///
/// Each 64-bit input is folded into a 32-bit key by Chris Wellons'
/// `lowbias32` integer hash (`x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15;
/// x *= 0x846ca68b; x ^= x >> 16`), only 32-bit operations, so that a WGSL
/// kernel can draw the same bits:
///
/// ```text
/// fold(k, x)  = h(lo(x) ^ h(hi(x) ^ k))
/// key(step)   = fold(fold(0, seed), step)
/// bits(i)     = fold(key(step), i)
/// ```
///
/// with `h` = `lowbias32`, `lo`/`hi` the low and high 32 bits. Stochastic
/// rounding takes the low 16 bits of `bits(i)`, `i` the element's index
/// in the packed parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterRng {
    key: u32,
}

/// Chris Wellons' `lowbias32` (from his hash-prospector search): a 32-bit
/// bijection with low bias.
#[inline(always)]
pub fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

#[inline(always)]
fn fold(key: u32, x: u64) -> u32 {
    lowbias32(x as u32 ^ lowbias32((x >> 32) as u32 ^ key))
}

impl CounterRng {
    /// The generator of step `step` (1 for the first) under `seed`.
    pub fn new(seed: u64, step: u64) -> Self {
        CounterRng {
            key: fold(fold(0, seed), step),
        }
    }

    /// 32 random bits for counter `index`.
    #[inline(always)]
    pub fn bits32(&self, index: u64) -> u32 {
        fold(self.key, index)
    }

    /// The step's part of [`CounterRng::bits32`] for counters below 2^32,
    /// whose high half is 0: `bits32(i) = lowbias32(i ^ gpu_key())`, how a
    /// kernel draws them from one number a step.
    pub(crate) fn gpu_key(&self) -> u32 {
        lowbias32(self.key)
    }

    /// 16 random bits for counter `index` (the low half of
    /// [`CounterRng::bits32`]).
    #[inline(always)]
    pub fn bits16(&self, index: u64) -> u16 {
        self.bits32(index) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_inputs_same_bits_and_inputs_matter() {
        let a = CounterRng::new(42, 3);
        assert_eq!(a.bits32(1000), CounterRng::new(42, 3).bits32(1000));
        assert_ne!(a.bits32(1000), CounterRng::new(43, 3).bits32(1000));
        assert_ne!(a.bits32(1000), CounterRng::new(42, 4).bits32(1000));
        assert_ne!(a.bits32(1000), a.bits32(1001));
        // Indices past 2³² differ from their low halves.
        assert_ne!(a.bits32(5), a.bits32(5 + (1 << 32)));
    }

    #[test]
    fn low_sixteen_bits_are_roughly_uniform() {
        // 2¹⁶ draws in 16 bins of 4096 expected: a χ² with 15 degrees of
        // freedom above 50 has probability below 10⁻⁵ for a uniform source.
        let rng = CounterRng::new(7, 1);
        let mut bins = [0f64; 16];
        for i in 0..(1u64 << 16) {
            bins[(rng.bits16(i) >> 12) as usize] += 1.0;
        }
        let chi2: f64 = bins.iter().map(|&b| (b - 4096.0).powi(2) / 4096.0).sum();
        assert!(chi2 < 50.0, "chi2 = {chi2}");
    }
}
