//! RAdam, as `torch.optim.RAdam`.

use serde_json::{json, Map, Value};

use super::{
    bias_correction, bool_override, check_non_negative, check_unit_interval, elementwise_step,
    lerp, object, Config, GradScales, KernelShape, KernelSpec, Preset, Rule, StepEntry, TorchArgs,
};
use crate::error::Result;
use crate::layout::Layout;

/// RAdam (rectified Adam), as `torch.optim.RAdam` (PyTorch 2.15) computes
/// it. With `t` the step number, `m` (`exp_avg`) and `v` (`exp_avg_sq`)
/// the moments, per step:
///
/// ```text
/// g ← −g                          if maximize
/// θ ← θ·(1 − lr·weight_decay)     if decoupled_weight_decay (AdamW's decay)
/// g ← g + weight_decay·θ          otherwise, if weight_decay ≠ 0 (L2)
/// m ← lerp(m, g, 1 − β1)          (= β1·m + (1 − β1)·g)
/// v ← β2·v + (1 − β2)·g²
/// ρ∞ = 2/(1 − β2) − 1
/// ρt = ρ∞ − 2t·β2ᵗ / (1 − β2ᵗ)
/// if ρt > 5:
///     r = sqrt((ρt − 4)(ρt − 2)ρ∞ / ((ρ∞ − 4)(ρ∞ − 2)ρt))
///     θ ← θ − (m / (1 − β1ᵗ))·lr · (1/(sqrt(v) + eps))·sqrt(1 − β2ᵗ) · r
/// else:
///     θ ← θ − (m / (1 − β1ᵗ))·lr          (the variance of v̂ is not yet defined:
///                                          bias-corrected momentum SGD)
/// ```
///
/// `ρt`, `r` and the switch are computed on the host in f64 each step
/// (`ρt` as torch computes it, so the switch falls where torch's does); the
/// bias corrections use the `β1` in force at step `t`, as PyTorch does when
/// a schedule cycles it. The element-wise arithmetic is torch's, in its
/// order: `m̂·lr`, then times the reciprocal of `sqrt(v) + eps` scaled by
/// `sqrt(1 − β2ᵗ)` (torch's `scalar / tensor` is `reciprocal() * scalar`),
/// then times `r`.
///
/// Defaults: `lr = 1e-3`, `betas = (0.9, 0.999)`, `eps = 1e-8`,
/// `weight_decay = 0`, `decoupled_weight_decay = false`, `maximize = false`.
///
/// Reference: `torch.optim.RAdam` (PyTorch 2.15, `foreach=False`); the
/// method of Liu et al., "On the Variance of the Adaptive Learning Rate and
/// Beyond" (ICLR 2020). torch applies `eps` to `sqrt(v)` where the article
/// has none, and adds AdamW's decoupled decay as an option.
///
/// With `β2 = 0.999`, `ρt ≤ 5` for the first five steps: each moves θ by
/// `lr·m̂`, which for a steady gradient is `lr·g` (not Adam's `lr` per
/// element):
///
/// ```
/// use wgpu_optim::{CpuOptimizer, GpuContext, GpuOptimizer, RAdam};
/// let radam = RAdam { lr: 0.1, ..RAdam::default() };
/// let mut opt = CpuOptimizer::new(radam.clone(), &[&[1.0f32, 1.0]])?;
/// opt.step(&[&[0.5, -20.0]])?;
/// opt.step(&[&[0.5, -20.0]])?;
/// let θ = opt.param(0);
/// assert!((θ[0] - 0.9).abs() < 1e-6 && (θ[1] - 5.0).abs() < 1e-5);
/// // The same steps through the GPU kernel (lavapipe will do) give the
/// // same numbers, to a few units in the last place.
/// let ctx = GpuContext::new()?;
/// let mut gpu = GpuOptimizer::new(&ctx, radam, &[&[1.0f32, 1.0]])?;
/// for _ in 0..2 {
///     gpu.step(&[&[0.5f32, -20.0]])?;
/// }
/// let on_gpu = gpu.read_params()?;
/// for (a, b) in on_gpu[0].iter().zip(opt.param(0)) {
///     assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0));
/// }
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RAdam {
    /// Learning rate, default 1e-3.
    pub lr: f64,
    /// `(β1, β2)`, default `(0.9, 0.999)`.
    pub betas: (f64, f64),
    /// Added to `sqrt(v)` in the denominator, default 1e-8.
    pub eps: f64,
    /// Weight decay, default 0: an L2 penalty added to the gradient, or
    /// with `decoupled_weight_decay` AdamW's shrinking of θ.
    pub weight_decay: f64,
    /// Decouple the weight decay from the gradient (`θ ← θ·(1 − lr·wd)`).
    pub decoupled_weight_decay: bool,
    /// Maximize the objective instead of minimizing it.
    pub maximize: bool,
}

impl Default for RAdam {
    fn default() -> Self {
        RAdam {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
            maximize: false,
        }
    }
}

/// Uniforms of `shaders/radam.wgsl` (`struct Scalars` there; the kernels'
/// tests check that the sizes match).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct RAdamScalars {
    pub lr: f32,
    pub beta2: f32,
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// `1 − lr·weight_decay` (decoupled decay).
    pub decay_factor: f32,
    pub _pad: u32,
}
const _: () = assert!(std::mem::size_of::<RAdamScalars>() == 32);

/// `(ρt > 5, r)` of step `step`, in f64 with torch's formulas and order
/// (`1 − β2ᵗ` as `1 − pow`, not [`bias_correction`]'s `expm1`): the switch
/// is a discontinuity, so it is decided from the same bits torch decides it
/// from. `r` is 0 when not rectified.
fn rectification(beta2: f64, step: u64) -> (bool, f64) {
    let t = step as f64;
    let beta2_t = beta2.powf(t);
    let rho_inf = 2.0 / (1.0 - beta2) - 1.0;
    let rho_t = rho_inf - 2.0 * t * beta2_t / (1.0 - beta2_t);
    // NaN (step 0, no bias correction yet) is not > 5.
    if rho_t > 5.0 {
        let r = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
            / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
            .sqrt();
        (true, r)
    } else {
        (false, 0.0)
    }
}

impl Rule for RAdam {
    const NAME: &'static str = "radam";
    const KERNEL: KernelSpec = KernelSpec {
        name: "radam",
        source: include_str!("../../shaders/radam.wgsl"),
        shape: KernelShape::ElementWise {
            slots: &["exp_avg", "exp_avg_sq"],
        },
    };
    type Scalars = RAdamScalars;

    fn validate(&self, _momentum_buffer: bool) -> Result<()> {
        check_non_negative("lr", self.lr)?;
        check_non_negative("eps", self.eps)?;
        check_unit_interval("betas[0]", self.betas.0)?;
        check_unit_interval("betas[1]", self.betas.1)?;
        check_non_negative("weight_decay", self.weight_decay)?;
        Ok(())
    }

    fn state_names(&self, _momentum_buffer: bool) -> Vec<&'static str> {
        vec!["exp_avg", "exp_avg_sq"]
    }

    super::lr_is_the_field!();

    fn momentum(&self) -> Option<f64> {
        Some(self.betas.0)
    }

    fn set_momentum(&mut self, value: f64, _has_buffer: bool) -> Result<()> {
        super::set_beta1(&mut self.betas, value)
    }

    fn overrides(&self, _momentum_buffer: bool) -> Vec<(&'static str, f64)> {
        vec![
            ("MAXIMIZE", bool_override(self.maximize)),
            ("DECOUPLED", bool_override(self.decoupled_weight_decay)),
        ]
    }

    fn scalars(&self, _buffer_filled: bool) -> RAdamScalars {
        let (beta1, beta2) = self.betas;
        RAdamScalars {
            lr: self.lr as f32,
            beta2: beta2 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            decay_factor: (1.0 - self.lr * self.weight_decay) as f32,
            _pad: 0,
        }
    }

    /// `[1 − β1ᵗ, sqrt(1 − β2ᵗ), r, 1 if ρt > 5 else 0]`, computed in f64.
    fn step_entry(&self, step: u64) -> StepEntry {
        let (beta1, beta2) = self.betas;
        let (rectified, r) = rectification(beta2, step);
        [
            bias_correction(beta1, step) as f32,
            bias_correction(beta2, step).sqrt() as f32,
            r as f32,
            if rectified { 1.0 } else { 0.0 },
        ]
    }

    fn cpu_step(
        &self,
        s: &RAdamScalars,
        entry: StepEntry,
        _layout: &Layout,
        params: &mut [f32],
        grads: &[f32],
        states: &mut [Vec<f32>],
        scales: GradScales,
    ) {
        elementwise_step(params, grads, states, |p, g, st| {
            step_slice(s, entry, self, p, g, scales, st)
        });
    }

    fn to_torch(&self) -> Map<String, Value> {
        object(
            json!({"lr": self.lr, "betas": [self.betas.0, self.betas.1], "eps": self.eps,
            "weight_decay": self.weight_decay, "maximize": self.maximize, "foreach": null,
            "capturable": false, "decoupled_weight_decay": self.decoupled_weight_decay,
            "differentiable": false}),
        )
    }

    fn from_torch(args: &mut TorchArgs<'_>) -> Result<Config> {
        let d = RAdam::default();
        Ok(RAdam {
            lr: args.num("lr", d.lr)?,
            betas: args.betas(d.betas)?,
            eps: args.num("eps", d.eps)?,
            weight_decay: args.num("weight_decay", d.weight_decay)?,
            // torch's files from before the option have no key (its
            // `__setstate__` takes false then).
            decoupled_weight_decay: args
                .optional_flag("decoupled_weight_decay")?
                .unwrap_or(d.decoupled_weight_decay),
            maximize: args.flag("maximize", d.maximize)?,
        }
        .into())
    }

    fn presets() -> Vec<Preset> {
        vec![Preset::new("radam", RAdam::default())]
    }
}

#[inline(always)]
pub(crate) fn step_element(
    s: &RAdamScalars,
    entry: StepEntry,
    c: &RAdam,
    param: &mut f32,
    grad: f32,
    exp_avg: &mut f32,
    exp_avg_sq: &mut f32,
) {
    // Locals in, one store of each out: the loop then vectorizes.
    let mut p = *param;
    let mut g = if c.maximize { -grad } else { grad };
    if s.weight_decay != 0.0 {
        if c.decoupled_weight_decay {
            p *= s.decay_factor;
        } else {
            g += s.weight_decay * p;
        }
    }
    let m = lerp(*exp_avg, g, s.one_minus_beta1);
    let v = *exp_avg_sq * s.beta2 + s.one_minus_beta2 * (g * g);
    *exp_avg = m;
    *exp_avg_sq = v;
    let [bias_correction1, bias_correction2_sqrt, rect, rectified] = entry;
    let mut step = m / bias_correction1 * s.lr;
    if rectified != 0.0 {
        let adaptive_lr = (1.0 / (v.sqrt() + s.eps)) * bias_correction2_sqrt;
        step = step * adaptive_lr * rect;
    }
    *param = p - step;
}

#[inline(always)]
fn step_slice_impl(
    s: &RAdamScalars,
    entry: StepEntry,
    c: &RAdam,
    params: &mut [f32],
    grads: &[f32],
    scales: GradScales,
    states: &mut [&mut [f32]],
) {
    super::for_each_element!("radam", params, grads, scales, states, |p, g, m, v| {
        step_element(s, entry, c, p, g, m, v)
    });
}

super::multiversion! {
    /// One step over flat slices, vectorized for the processor at hand.
    step_slice = step_slice_impl(
        s: &RAdamScalars,
        entry: StepEntry,
        c: &RAdam,
        params: &mut [f32],
        grads: &[f32],
        scales: GradScales,
        states: &mut [&mut [f32]],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The switch falls between steps 5 and 6 for β2 = 0.999 (ρ5 ≈ 4.996,
    /// ρ6 ≈ 5.994, as torch computes them), `r` grows towards 1, and β2 = 0
    /// (ρ∞ = 1) never rectifies.
    #[test]
    fn rectification_switches_where_torch_does() {
        for t in 1..=5 {
            assert_eq!(rectification(0.999, t), (false, 0.0), "step {t}");
        }
        let (on, r6) = rectification(0.999, 6);
        assert!(on);
        // ρ6 from torch's formula: (ρ−4)(ρ−2)ρ∞ / ((ρ∞−4)(ρ∞−2)ρ).
        let rho = 5.994163751655833f64;
        let want = ((rho - 4.0) * (rho - 2.0) * 1999.0 / (1995.0 * 1997.0 * rho)).sqrt();
        assert!((r6 - want).abs() < 1e-12, "{r6} vs {want}");
        let (_, r1000) = rectification(0.999, 1000);
        let (_, r_late) = rectification(0.999, 1_000_000);
        assert!(r6 < r1000 && r1000 < r_late && r_late <= 1.0);
        assert!((r_late - 1.0).abs() < 1e-12);
        for t in [1, 6, 100, 1 << 40] {
            assert!(!rectification(0.0, t).0, "β2 = 0, step {t}");
        }
        assert!(!rectification(0.999, 0).0, "step 0");
    }
}
