//! 8-bit blockwise quantization as bitsandbytes does it (Dettmers et al.,
//! "8-bit Optimizers via Block-wise Quantization", ICLR 2022): a tensor in
//! blocks of [`BLOCK`] elements, each block's values divided by its largest
//! magnitude (`absmax`, kept in f32) and stored as the index of the nearest
//! entry of a 256-entry dynamic quantization map.

use std::sync::OnceLock;

/// Elements a block: bitsandbytes' blocksize for its 8-bit optimizers.
pub const BLOCK: usize = 256;

/// Tensors with fewer elements keep their state in f32 (bitsandbytes'
/// `min_8bit_size`).
pub const MIN_8BIT_SIZE: usize = 4096;

/// bitsandbytes' dynamic quantization map (`create_dynamic_map` with
/// `max_exponent_bits = 7, total_bits = 8`): 256 values in `[-1, 1]`,
/// sorted, dense near 0 (seven decades, `10⁻⁶` to `1`) so that small
/// magnitudes in a block keep their relative precision.
#[derive(Clone, Debug, PartialEq)]
pub struct DynamicMap {
    values: [f32; 256],
}

impl DynamicMap {
    /// The map of a signed state (bitsandbytes' first moment): 127 values
    /// each side of 0 (the negative side's largest magnitude 0.993, not 1),
    /// 0 and 1.
    pub fn signed() -> &'static DynamicMap {
        static MAP: OnceLock<DynamicMap> = OnceLock::new();
        MAP.get_or_init(|| DynamicMap::build(true))
    }

    /// The map of a non-negative state (the second moment): 254 values in
    /// `(0, 1)`, 0 and 1.
    pub fn unsigned() -> &'static DynamicMap {
        static MAP: OnceLock<DynamicMap> = OnceLock::new();
        MAP.get_or_init(|| DynamicMap::build(false))
    }

    /// The map of a state whose values have this sign.
    pub fn for_sign(signed: bool) -> &'static DynamicMap {
        if signed {
            Self::signed()
        } else {
            Self::unsigned()
        }
    }

    /// bitsandbytes' construction: for each decade `10^(i−6)`, `i` in 0..7,
    /// the midpoints of `linspace(0.1, 1, n + 1)` (f32) scaled by it, with
    /// `n = 2^i` (signed, both signs) or `2^(i+1)` (unsigned); then 0 and 1,
    /// sorted. The values are bitsandbytes' own ([`super::maps`]).
    fn build(signed: bool) -> DynamicMap {
        let bits = if signed {
            &super::maps::SIGNED
        } else {
            &super::maps::UNSIGNED
        };
        DynamicMap {
            values: bits.map(f32::from_bits),
        }
    }

    /// The 256 values, ascending.
    pub fn values(&self) -> &[f32; 256] {
        &self.values
    }

    /// The value of code `q`.
    #[inline(always)]
    pub fn value(&self, q: u8) -> f32 {
        self.values[q as usize]
    }

    /// The code nearest to `scaled` (in `[-1, 1]`), the lower one at a tie
    /// (the first minimum, as `argmin` finds it); NaN gives the code of 0.
    #[inline]
    pub fn nearest(&self, scaled: f32) -> u8 {
        let v = &self.values;
        // First index whose value is ≥ scaled.
        let hi = v.partition_point(|&c| c < scaled);
        if scaled.is_nan() {
            return v.partition_point(|&c| c < 0.0) as u8;
        }
        if hi == 0 {
            return 0;
        }
        if hi == v.len() {
            return 255;
        }
        let lo = hi - 1;
        if scaled - v[lo] <= v[hi] - scaled {
            lo as u8
        } else {
            hi as u8
        }
    }
}

/// The largest magnitude of `x`, NaN if any is NaN.
#[inline]
fn absmax_of(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, &v| {
        let a = v.abs();
        if a > m || a.is_nan() || m.is_nan() {
            if m.is_nan() {
                m
            } else {
                a
            }
        } else {
            m
        }
    })
}

/// Quantizes `x` in blocks of [`BLOCK`] (the last one shorter when the
/// length is not a multiple): `absmax[b]` the block's largest magnitude,
/// `codes[i]` the [`DynamicMap::nearest`] code of `x[i] · (1/absmax)`,
/// clamped to `[-1, 1]`, as bitsandbytes' `quantize_blockwise` does. A
/// block of zeros gets absmax 0 and the code of 0; a block holding a NaN
/// gets absmax NaN, so that all of it reads back NaN.
///
/// `codes` has `x`'s length, `absmax` one entry a block.
pub fn quantize_blockwise(x: &[f32], map: &DynamicMap, codes: &mut [u8], absmax: &mut [f32]) {
    debug_assert_eq!(codes.len(), x.len());
    debug_assert_eq!(absmax.len(), x.len().div_ceil(BLOCK));
    for ((xb, cb), am) in x
        .chunks(BLOCK)
        .zip(codes.chunks_mut(BLOCK))
        .zip(absmax.iter_mut())
    {
        let m = absmax_of(xb);
        *am = m;
        let inv = if m == 0.0 { 0.0 } else { 1.0 / m };
        for (&v, c) in xb.iter().zip(cb.iter_mut()) {
            let s = (v * inv).clamp(-1.0, 1.0);
            *c = map.nearest(s);
        }
    }
}

/// The values of quantized blocks: `code value · absmax` (f32), as
/// bitsandbytes' `dequantize_blockwise`.
pub fn dequantize_blockwise(codes: &[u8], absmax: &[f32], map: &DynamicMap, out: &mut [f32]) {
    debug_assert_eq!(codes.len(), out.len());
    for ((cb, ob), &am) in codes
        .chunks(BLOCK)
        .zip(out.chunks_mut(BLOCK))
        .zip(absmax.iter())
    {
        for (&c, o) in cb.iter().zip(ob.iter_mut()) {
            *o = map.value(c) * am;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_have_bitsandbytes_shape() {
        let s = DynamicMap::signed().values();
        let u = DynamicMap::unsigned().values();
        assert_eq!(s[255], 1.0);
        assert_eq!(u[255], 1.0);
        assert_eq!(u[0], 0.0);
        assert!((s[0] + 0.9930).abs() < 1e-4, "{}", s[0]);
        assert_eq!(s.iter().filter(|&&v| v == 0.0).count(), 1);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert!(u.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn round_trip_error_is_within_half_a_gap() {
        let x: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let map = DynamicMap::signed();
        let mut codes = vec![0u8; x.len()];
        let mut absmax = vec![0f32; x.len().div_ceil(BLOCK)];
        quantize_blockwise(&x, map, &mut codes, &mut absmax);
        let mut back = vec![0f32; x.len()];
        dequantize_blockwise(&codes, &absmax, map, &mut back);
        let widest = map
            .values()
            .windows(2)
            .map(|w| w[1] - w[0])
            .fold(0f32, f32::max);
        for (i, (a, b)) in x.iter().zip(&back).enumerate() {
            let am = absmax[i / BLOCK];
            // Half a gap, except below the signed map's least value
            // (−0.993), where −1 is 0.007 away.
            let bound = (0.5 * widest).max(1.0 + map.values()[0]);
            // The 1e-4 covers the f32 rounding of the bound and the product.
            assert!((a - b).abs() <= bound * am * (1.0 + 1e-4), "{i}: {a} {b}");
        }
        // Zeros and NaN.
        let z = [0f32; 3];
        let (mut c, mut a) = ([9u8; 3], [1f32]);
        quantize_blockwise(&z, map, &mut c, &mut a);
        dequantize_blockwise(&c, &a, map, &mut back[..3]);
        assert_eq!(&back[..3], &[0.0; 3]);
        quantize_blockwise(&[1.0, f32::NAN, 2.0], map, &mut c, &mut a);
        assert!(a[0].is_nan());
    }
}
