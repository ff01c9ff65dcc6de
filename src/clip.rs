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
        .map(|c| {
            let mut sum = 0.0;
            sum_squares(c, inv_scale, &mut sum);
            sum
        })
        .collect();
    chunks.iter().sum::<f64>().sqrt() as f32
}

/// `Σ (g·inv_scale)²` in f64 over eight independent running sums (so the
/// loop vectorizes), added in a fixed order.
#[inline(always)]
fn sum_squares_impl(grads: &[f32], inv_scale: f32, out: &mut f64) {
    let mut lanes = [0.0f64; 8];
    let mut body = grads.chunks_exact(8);
    for c in &mut body {
        for k in 0..8 {
            let g = (c[k] * inv_scale) as f64;
            lanes[k] += g * g;
        }
    }
    let mut tail = 0.0;
    for &g in body.remainder() {
        let g = (g * inv_scale) as f64;
        tail += g * g;
    }
    let l = lanes;
    *out = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7])) + tail;
}

crate::rules::multiversion! {
    /// [`sum_squares_impl`], vectorized for the processor at hand.
    sum_squares = sum_squares_impl(grads: &[f32], inv_scale: f32, out: &mut f64)
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
        // g·0.5 is exact, so the only difference is the order of f64
        // additions: far below f32's half unit.
        assert_eq!(one, exact as f32);
    }
}
