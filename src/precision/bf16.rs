//! bfloat16: the upper half of an f32 (1 sign, 8 exponent, 7 mantissa
//! bits), rounded to nearest even or stochastically, and packed two to a
//! `u32` as a GPU kernel without a 16-bit type reads them.

use super::rng::CounterRng;

/// The bf16 nearest to `x`, ties to even; NaN stays NaN (quiet, sign kept),
/// ±inf stay ±inf, and a finite value past bf16's largest rounds to ±inf
/// as IEEE rounding does.
#[inline(always)]
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        // The top mantissa bit set: a quiet NaN even when the payload
        // lived only in the dropped half.
        return ((bits >> 16) as u16) | 0x0040;
    }
    // Adding 0x7fff plus the kept half's lowest bit carries into the kept
    // half exactly when the dropped half is above one half, or equal to it
    // with an odd kept half.
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// The f32 a bf16 stands for (exact: every bf16 is an f32).
#[inline(always)]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// `x` rounded to bf16 stochastically: up (away from zero) with the
/// probability of the dropped fraction of a bf16 step, so the expected value
/// is `x`. `random16` is 16 uniform random bits. NaN stays NaN, ±inf stay
/// ±inf; a value within one step of bf16's largest may round to ±inf.
#[inline(always)]
pub fn f32_to_bf16_stochastic(x: f32, random16: u16) -> u16 {
    if x.is_nan() {
        return f32_to_bf16(x);
    }
    // Sign and magnitude: adding to the magnitude's bits rounds away from
    // zero for either sign; the carry moves to the next bf16 with
    // probability (dropped half)/2¹⁶. ±inf's dropped half is 0 and
    // 0xffff cannot carry past it.
    ((x.to_bits().wrapping_add(random16 as u32)) >> 16) as u16
}

/// Rounds `values` to bf16 stochastically in place (they then hold bf16
/// values widened to f32), the random bits of element `i` drawn from
/// `rng` at counter `first_index + i`: the same seed, step and indices give
/// the same bits whatever the chunking.
pub fn round_stochastic_in_place(values: &mut [f32], rng: &CounterRng, first_index: u64) {
    for (i, v) in values.iter_mut().enumerate() {
        let r = rng.bits16(first_index + i as u64);
        *v = bf16_to_f32(f32_to_bf16_stochastic(*v, r));
    }
}

/// Two bf16 (or f16) in one `u32`: `first` in the low half, `second` in the
/// high half, as WGSL's `pack2x16float` orders its components and as a
/// little-endian `&[u16]` of the pair reads as one `u32`.
#[inline(always)]
pub fn pack2(first: u16, second: u16) -> u32 {
    first as u32 | (second as u32) << 16
}

/// The two halves of a [`pack2`] word, `(first, second)`.
#[inline(always)]
pub fn unpack2(word: u32) -> (u16, u16) {
    (word as u16, (word >> 16) as u16)
}

/// 16-bit values packed two to a word ([`pack2`]); an odd length leaves the
/// last word's high half 0.
pub fn pack_words(values: &[u16]) -> Vec<u32> {
    values
        .chunks(2)
        .map(|p| pack2(p[0], p.get(1).copied().unwrap_or(0)))
        .collect()
}

/// The first `len` 16-bit values of packed words ([`pack_words`]).
pub fn unpack_words(words: &[u32], len: usize) -> Vec<u16> {
    words
        .iter()
        .flat_map(|&w| {
            let (a, b) = unpack2(w);
            [a, b]
        })
        .take(len)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_even_at_ties_and_specials() {
        // 1 + 2⁻⁸ lies halfway between 1 and 1 + 2⁻⁷: ties to even (1).
        assert_eq!(f32_to_bf16(1.0 + 2f32.powi(-8)), 0x3f80);
        // 1 + 3·2⁻⁸ lies halfway between 1 + 2⁻⁷ (odd) and 1 + 2⁻⁶: up.
        assert_eq!(f32_to_bf16(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
        // Just above the tie rounds up.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(f32_to_bf16(-0.0), 0x8000);
        assert_eq!(f32_to_bf16(f32::INFINITY), 0x7f80);
        assert_eq!(f32_to_bf16(f32::MAX), 0x7f80);
        // A NaN whose payload is only in the low half stays NaN.
        let nan = f32::from_bits(0x7f80_0001);
        assert!(bf16_to_f32(f32_to_bf16(nan)).is_nan());
        assert!(bf16_to_f32(f32_to_bf16(-f32::NAN)).is_sign_negative());
        for b in [0u16, 1, 0x3f80, 0x7f7f, 0x8001, 0xff7f] {
            assert_eq!(f32_to_bf16(bf16_to_f32(b)), b);
        }
    }

    #[test]
    fn stochastic_rounding_brackets_and_is_unbiased() {
        let x = 1.0 + 2f32.powi(-9); // a quarter of the way to the next bf16
        let (lo, hi) = (0x3f80u16, 0x3f81u16);
        let mut ups = 0u32;
        for r in 0..=u16::MAX {
            let b = f32_to_bf16_stochastic(x, r);
            assert!(b == lo || b == hi);
            ups += (b == hi) as u32;
        }
        // Exactly a quarter of the 2¹⁶ random values round up.
        assert_eq!(ups, 1 << 14);
        assert_eq!(f32_to_bf16_stochastic(-x, 0xffff), 0xbf81);
        assert_eq!(f32_to_bf16_stochastic(f32::INFINITY, 0xffff), 0x7f80);
        assert!(bf16_to_f32(f32_to_bf16_stochastic(f32::NAN, 7)).is_nan());
    }

    #[test]
    fn packing_round_trips_odd_lengths() {
        let v: Vec<u16> = (0..7).map(|i| 0x3f80 + i).collect();
        let w = pack_words(&v);
        assert_eq!(w.len(), 4);
        assert_eq!(w[0], 0x3f81_3f80);
        assert_eq!(w[3] >> 16, 0);
        assert_eq!(unpack_words(&w, 7), v);
    }
}
