//! Global-norm gradient clipping, as `torch.nn.utils.clip_grad_norm_`.

use crate::error::{Error, Result};

/// Clips the gradients of all tensors of an optimizer together, as
/// `torch.nn.utils.clip_grad_norm_(params, max_norm)` does before a step:
///
/// ```text
/// total = sqrt(Σ over every tensor and element of g²)
/// scale = max_norm / (total + 1e-6)
/// g ← g · scale          where scale < 1
/// ```
///
/// Any rule can use it ([`crate::CpuOptimizer::set_clip_grad_norm`],
/// [`crate::GpuOptimizer::set_clip_grad_norm`]). On the GPU the norm is
/// computed by a deterministic reduction and the scale applied inside the
/// fused update, in the same submission, without reading the gradients
/// back. A non-finite norm propagates into the step, as in PyTorch, unless
/// [`ClipGradNorm::error_if_nonfinite`] refuses the step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClipGradNorm {
    /// The largest total L2 norm let through.
    pub max_norm: f64,
    /// Refuse a step whose total gradient norm is NaN or infinite
    /// (PyTorch's `error_if_nonfinite`): the step returns
    /// [`Error::NonFiniteGradNorm`] and parameters, state and step count
    /// stay as they were. On the GPU this reads one flag back per step.
    pub error_if_nonfinite: bool,
}

impl ClipGradNorm {
    /// Clipping to `max_norm`, non-finite norms propagating (PyTorch's default).
    pub fn new(max_norm: f64) -> Self {
        ClipGradNorm {
            max_norm,
            error_if_nonfinite: false,
        }
    }

    /// Checks `max_norm` is finite and positive.
    pub fn validate(&self) -> Result<()> {
        if !self.max_norm.is_finite() || self.max_norm <= 0.0 {
            return Err(Error::InvalidHyperparameter {
                name: "max_norm",
                value: self.max_norm,
                reason: "must be finite and > 0",
            });
        }
        Ok(())
    }

    /// The scale for a total norm, in f32 as PyTorch computes it on f32
    /// gradients (and as `shaders/reduce.wgsl` does).
    pub(crate) fn scale(&self, total: f32) -> f32 {
        let coef = self.max_norm as f32 / (total + 1e-6);
        // torch.clamp(coef, max=1.0): a NaN coefficient (NaN norm) stays
        // NaN, an infinite norm gives 0.
        if coef > 1.0 {
            1.0
        } else {
            coef
        }
    }
}

/// The L2 norm of `grads`, each multiplied by `inv_scale` first (in f32,
/// as `GradScaler.unscale_`; 1 for none), summed in f64: on all cores, in
/// chunks whose sums are added in order, so the norm does not depend on
/// the number of threads.
pub(crate) fn total_norm(grads: &[f32], inv_scale: f32) -> f32 {
    use rayon::prelude::*;
    let chunks: Vec<f64> = grads
        .par_chunks(1 << 16)
        .map(|c| sum_squares(c, inv_scale))
        .collect();
    chunks.iter().sum::<f64>().sqrt() as f32
}

/// Lanes of [`sum_squares`]: element `j·LANES + k` of a block goes to lane
/// `k`.
pub(crate) const LANES: usize = 32;
/// Elements of a block: each lane sums `BLOCK / LANES` = 8 squares in f32.
pub(crate) const BLOCK: usize = 256;

/// `Σ (x·scale)²`: each product rounded to f32 (as torch scales f32
/// gradients). Per block of [`BLOCK`] elements, each of [`LANES`] lanes sums
/// 8 squares in f32 (a relative error below `8·2⁻²⁴`, far below what the
/// f32 norm keeps), and the lanes' sums are added in f64 across blocks;
/// the lanes are then added pairwise, and the tail's squares in f64. The
/// AVX2 build does the same operations in the same order, eight lanes at a
/// time (multiplications and additions apart, never fused), so both give
/// the same bits.
pub(crate) fn sum_squares(x: &[f32], scale: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the processor has AVX2.
        return unsafe { sum_squares_avx2(x, scale) };
    }
    let mut wide = [0.0f64; LANES];
    let mut blocks = x.chunks_exact(BLOCK);
    for b in &mut blocks {
        let mut narrow = [0.0f32; LANES];
        for row in b.chunks_exact(LANES) {
            for (n, &v) in narrow.iter_mut().zip(row) {
                let g = v * scale;
                *n += g * g;
            }
        }
        for (w, &n) in wide.iter_mut().zip(&narrow) {
            *w += n as f64;
        }
    }
    finish_lanes(wide, blocks.remainder(), scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_squares_avx2(x: &[f32], scale: f32) -> f64 {
    use std::arch::x86_64::*;
    let s = _mm256_set1_ps(scale);
    let mut wide = [_mm256_setzero_pd(); LANES / 4];
    let mut blocks = x.chunks_exact(BLOCK);
    for b in &mut blocks {
        let mut narrow = [_mm256_setzero_ps(); LANES / 8];
        for row in b.chunks_exact(LANES) {
            for (q, n) in narrow.iter_mut().enumerate() {
                // SAFETY: `row` has LANES elements, 8·q + 7 < LANES.
                let g = _mm256_mul_ps(unsafe { _mm256_loadu_ps(row.as_ptr().add(8 * q)) }, s);
                *n = _mm256_add_ps(*n, _mm256_mul_ps(g, g));
            }
        }
        for (q, n) in narrow.iter().enumerate() {
            let lo = _mm256_cvtps_pd(_mm256_castps256_ps128(*n));
            let hi = _mm256_cvtps_pd(_mm256_extractf128_ps(*n, 1));
            wide[2 * q] = _mm256_add_pd(wide[2 * q], lo);
            wide[2 * q + 1] = _mm256_add_pd(wide[2 * q + 1], hi);
        }
    }
    let mut lanes = [0.0f64; LANES];
    for (q, w) in wide.iter().enumerate() {
        // SAFETY: 4·q + 3 < LANES.
        unsafe { _mm256_storeu_pd(lanes.as_mut_ptr().add(4 * q), *w) };
    }
    finish_lanes(lanes, blocks.remainder(), scale)
}

/// The lanes added pairwise, then the tail's squares in f64, in order.
pub(crate) fn finish_lanes(mut lanes: [f64; LANES], tail: &[f32], scale: f32) -> f64 {
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for k in 0..width {
            lanes[k] += lanes[k + width];
        }
    }
    let mut sum = lanes[0];
    for &v in tail {
        let g = (v * scale) as f64;
        sum += g * g;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The norm, summed in lanes and chunks, is the f64 sum in element
    /// order to within f32 rounding, and the same on one thread as on two.
    #[test]
    fn total_norm_is_deterministic_and_exact_to_f32() {
        let grads: Vec<f32> = (0..300_001)
            .map(|i| ((i as f32) * 0.37).cos() * 3.0)
            .collect();
        let exact = grads
            .iter()
            .map(|&g| (g as f64 * 0.5).powi(2))
            .sum::<f64>()
            .sqrt();
        let on = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| total_norm(&grads, 0.5))
        };
        let (one, two) = (on(1), on(2));
        assert_eq!(one.to_bits(), two.to_bits());
        // g·0.5 is exact; eight squares summed in f32 per lane err by less
        // than 8·2⁻²⁴ relative, the f64 additions by far less: within an
        // f32 unit of the exact norm.
        let ulp = f32::EPSILON as f64 * exact;
        assert!((one as f64 - exact).abs() <= ulp, "{one} vs {exact}");
    }

    /// The AVX2 build of the sum gives the bits of the portable one, over
    /// whole blocks and tails, NaN and infinities included.
    #[test]
    fn sum_squares_avx2_equals_portable() {
        let values = [0.3f32, -1e20, 7.5, 1e-30, -0.0, 2.0, 1e19, 1.1];
        for n in [0, 5, 255, 256, 257, 1000, 3 * 256 + 17] {
            let x: Vec<f32> = (0..n)
                .map(|i| values[(i * 7 + i / 5) % 8] * (i as f32 + 1.0))
                .collect();
            let portable = {
                let mut wide = [0.0f64; LANES];
                let mut blocks = x.chunks_exact(BLOCK);
                for b in &mut blocks {
                    let mut narrow = [0.0f32; LANES];
                    for (i, &v) in b.iter().enumerate() {
                        let g = v * 0.75;
                        narrow[i % LANES] += g * g;
                    }
                    for k in 0..LANES {
                        wide[k] += narrow[k] as f64;
                    }
                }
                finish_lanes(wide, blocks.remainder(), 0.75)
            };
            assert_eq!(sum_squares(&x, 0.75).to_bits(), portable.to_bits(), "{n}");
        }
        let special = [1.0f32, f32::INFINITY, 2.0, f32::NAN];
        assert!(sum_squares(&special.repeat(100), 1.0).is_nan());
        assert_eq!(sum_squares(&[f32::INFINITY; 300], 1.0), f64::INFINITY);
    }
}
