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

/// The L2 norm of `grads`, summed in f64.
pub(crate) fn total_norm(grads: &[f32]) -> f32 {
    use rayon::prelude::*;
    let sum: f64 = grads
        .par_chunks(1 << 16)
        .map(|c| c.iter().map(|&g| (g as f64) * (g as f64)).sum::<f64>())
        .sum();
    sum.sqrt() as f32
}
