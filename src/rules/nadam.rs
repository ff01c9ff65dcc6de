//! NAdam, as `torch.optim.NAdam`.

use serde_json::{json, Map, Value};

use super::{
    bias_correction, bool_override, check_non_negative, check_unit_interval, elementwise_step,
    lerp, object, Config, GradScales, KernelShape, KernelSpec, Preset, Rule, ScalarDtype,
    ScalarHome, ScalarState, StepEntry, TorchArgs,
};
use crate::error::Result;
use crate::layout::Layout;

/// NAdam, as `torch.optim.NAdam` (PyTorch 2.15) computes it: Adam with
/// Nesterov momentum and a momentum schedule. With `t` the step number, `m`
/// (`exp_avg`) and `v` (`exp_avg_sq`) the moments, `ψ` the
/// `momentum_decay` and `Π` (`mu_product`, 1 before the first step) the
/// product of the momentum factors so far, per step:
///
/// ```text
/// g ← −g                          if maximize
/// θ ← θ·(1 − lr·weight_decay)     if weight_decay ≠ 0 and decoupled_weight_decay
/// g ← g + weight_decay·θ          if weight_decay ≠ 0 otherwise (L2)
/// μₜ = β1·(1 − ½·0.96^(t·ψ)),   μₜ₊₁ = β1·(1 − ½·0.96^((t+1)·ψ))
/// Π ← Π·μₜ                        (in f32, as torch keeps Π)
/// m ← lerp(m, g, 1 − β1)
/// v ← β2·v + (1 − β2)·g²
/// d = sqrt(v / (1 − β2ᵗ)) + eps
/// θ ← θ − lr·(1 − μₜ)/(1 − Π) · g/d − lr·μₜ₊₁/(1 − Π·μₜ₊₁) · m/d
/// ```
///
/// `Π` is history, not a function of `t`: each factor uses the `β1` in
/// force at its step, so a schedule that cycles `β1` changes it for good.
/// The optimizers keep it on the host, as torch keeps it (a float32
/// number per tensor), and checkpoints carry it as `mu_product`
/// ([`crate::Config::scalar_state_names`]). The two coefficients and the
/// bias correction are computed on the host in f64.
/// Defaults: `lr = 2e-3`, `betas = (0.9, 0.999)`, `eps = 1e-8`,
/// `weight_decay = 0`, `momentum_decay = 4e-3`,
/// `decoupled_weight_decay = false`, `maximize = false`.
///
/// Reference: `torch.optim.NAdam` (PyTorch 2.15, `foreach=False`); the
/// method of Dozat, "Incorporating Nesterov Momentum into Adam" (ICLR 2016
/// workshop), whose schedule `μₜ = β1·(1 − ½·0.96^(t/250))` is `ψ = 0.004`;
/// `decoupled_weight_decay` is AdamW's decay (Loshchilov and Hutter,
/// "Decoupled Weight Decay Regularization", ICLR 2019).
///
/// On the first step with a steady gradient `m/d` is `±0.1` and `g/d` is
/// `±1`, so each element moves by `lr·(1 + 0.1·μ₂/(1 − μ₁·μ₂))`:
///
/// ```
/// use wgpu_optim::{CpuOptimizer, GpuContext, GpuOptimizer, NAdam};
/// let nadam = NAdam { lr: 0.1, ..NAdam::default() };
/// let mut opt = CpuOptimizer::new(nadam.clone(), &[&[1.0f32, 1.0]])?;
/// opt.step(&[&[0.5, -20.0]])?;
/// let mu = |t: f64| 0.9 * (1.0 - 0.5 * 0.96f64.powf(t * 4e-3));
/// let moved = 0.1 * (1.0 + 0.1 * mu(2.0) / (1.0 - mu(1.0) * mu(2.0)));
/// let θ = opt.param(0);
/// assert!((θ[0] as f64 - (1.0 - moved)).abs() < 1e-6);
/// assert!((θ[1] as f64 - (1.0 + moved)).abs() < 1e-6);
/// // μ₁, as torch keeps it: a float32 number.
/// assert_eq!(opt.scalar_state(), vec![("mu_product", mu(1.0) as f32 as f64)]);
/// // The same steps through the GPU kernel (lavapipe will do) give the
/// // same numbers, to a few units in the last place.
/// opt.step(&[&[0.5, -20.0]])?;
/// let ctx = GpuContext::new()?;
/// let mut gpu = GpuOptimizer::new(&ctx, nadam, &[&[1.0f32, 1.0]])?;
/// for _ in 0..2 {
///     gpu.step(&[&[0.5f32, -20.0]])?;
/// }
/// let on_gpu = gpu.read_params()?;
/// for (a, b) in on_gpu[0].iter().zip(opt.param(0)) {
///     assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0));
/// }
/// assert_eq!(gpu.scalar_state()?, opt.scalar_state());
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct NAdam {
    /// Learning rate, default 2e-3.
    pub lr: f64,
    /// `(β1, β2)`, default `(0.9, 0.999)`.
    pub betas: (f64, f64),
    /// Added to the denominator, default 1e-8.
    pub eps: f64,
    /// Weight decay, default 0: an L2 penalty added to the gradient, or
    /// decoupled with `decoupled_weight_decay`.
    pub weight_decay: f64,
    /// `ψ` of the momentum schedule, default 4e-3.
    pub momentum_decay: f64,
    /// Decay the parameters by `lr·weight_decay` instead of adding the L2
    /// penalty to the gradient (NAdamW).
    pub decoupled_weight_decay: bool,
    /// Maximize the objective instead of minimizing it.
    pub maximize: bool,
}

impl Default for NAdam {
    fn default() -> Self {
        NAdam {
            lr: 2e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            momentum_decay: 4e-3,
            decoupled_weight_decay: false,
            maximize: false,
        }
    }
}

/// Uniforms of `shaders/nadam.wgsl` (`struct Scalars` there; the kernels'
/// tests check that the sizes match).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct NAdamScalars {
    pub beta2: f32,
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// `1 − lr·weight_decay` (decoupled decay).
    pub decay_factor: f32,
    pub _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<NAdamScalars>() == 32);

impl NAdam {
    /// `μₜ = β1·(1 − ½·0.96^(t·ψ))` in f64, with torch's `**` (`powf`).
    fn mu(&self, step: u64) -> f64 {
        self.betas.0 * (1.0 - 0.5 * 0.96f64.powf(step as f64 * self.momentum_decay))
    }

    /// `Π·μₜ` as torch computes it: the float32 `mu_product` times `μₜ`
    /// rounded to float32, in float32.
    fn mu_product_after(&self, mu_product: f64, step: u64) -> f64 {
        (mu_product as f32 * self.mu(step) as f32) as f64
    }
}

impl Rule for NAdam {
    const NAME: &'static str = "nadam";
    const KERNEL: KernelSpec = KernelSpec {
        name: "nadam",
        source: include_str!("../../shaders/nadam.wgsl"),
        shape: KernelShape::ElementWise {
            slots: &["exp_avg", "exp_avg_sq"],
        },
    };
    type Scalars = NAdamScalars;
    const SCALAR_STATE: &'static [ScalarState] = &[ScalarState {
        name: "mu_product",
        dtype: ScalarDtype::F32,
        home: ScalarHome::Tensor,
    }];

    fn validate(&self, _momentum_buffer: bool) -> Result<()> {
        check_non_negative("lr", self.lr)?;
        check_non_negative("eps", self.eps)?;
        check_unit_interval("betas[0]", self.betas.0)?;
        check_unit_interval("betas[1]", self.betas.1)?;
        check_non_negative("weight_decay", self.weight_decay)?;
        check_non_negative("momentum_decay", self.momentum_decay)?;
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
    fn scalars(&self, _buffer_filled: bool) -> NAdamScalars {
        let (beta1, beta2) = self.betas;
        NAdamScalars {
            beta2: beta2 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            decay_factor: (1.0 - self.lr * self.weight_decay) as f32,
            _pad: [0; 2],
        }
    }
    fn scalar_state_initial(&self) -> Vec<f64> {
        vec![1.0]
    }
    fn advance_scalar_state(&self, state: &mut [f64], step: u64) {
        state[0] = self.mu_product_after(state[0], step);
    }
    fn advances_alike(&self, other: &Self) -> bool {
        self.betas.0 == other.betas.0 && self.momentum_decay == other.momentum_decay
    }
    /// `[−lr·(1 − μₜ)/(1 − Π), −lr·μₜ₊₁/(1 − Π·μₜ₊₁), 1 − β2ᵗ]` with `Π`
    /// this step's `mu_product`, in f64 from its float32 value (torch's
    /// `.item()`).
    fn step_entry_with(&self, step: u64, state: &[f64]) -> StepEntry {
        let (mu, mu_next) = (self.mu(step), self.mu(step + 1));
        let mu_product = self.mu_product_after(state[0], step);
        let grad_coef = -self.lr * (1.0 - mu) / (1.0 - mu_product);
        let exp_avg_coef = -self.lr * mu_next / (1.0 - mu_product * mu_next);
        [
            grad_coef as f32,
            exp_avg_coef as f32,
            bias_correction(self.betas.1, step) as f32,
            0.0,
        ]
    }
    fn cpu_step(
        &self,
        s: &NAdamScalars,
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
            "weight_decay": self.weight_decay, "momentum_decay": self.momentum_decay,
            "decoupled_weight_decay": self.decoupled_weight_decay, "maximize": self.maximize,
            "foreach": null, "capturable": false, "differentiable": false}),
        )
    }
    fn from_torch(args: &mut TorchArgs<'_>) -> Result<Config> {
        let d = NAdam::default();
        Ok(NAdam {
            lr: args.num("lr", d.lr)?,
            betas: args.betas(d.betas)?,
            eps: args.num("eps", d.eps)?,
            weight_decay: args.num("weight_decay", d.weight_decay)?,
            momentum_decay: args.num("momentum_decay", d.momentum_decay)?,
            // torch's `__setstate__` takes an absent one as false.
            decoupled_weight_decay: args
                .optional_flag("decoupled_weight_decay")?
                .unwrap_or(d.decoupled_weight_decay),
            maximize: args.flag("maximize", d.maximize)?,
        }
        .into())
    }
    fn presets() -> Vec<Preset> {
        vec![
            Preset::new("nadam", NAdam::default()),
            Preset::new(
                "nadamw",
                NAdam {
                    weight_decay: 1e-2,
                    decoupled_weight_decay: true,
                    ..NAdam::default()
                },
            ),
        ]
    }
}

/// One element, as `shaders/nadam.wgsl` computes it, in torch's order:
/// `addcmul` is `v + (value·g)·g`, `addcdiv` is `θ + (value·x)/d`.
#[inline(always)]
fn step_element(
    s: &NAdamScalars,
    entry: StepEntry,
    c: &NAdam,
    param: &mut f32,
    grad: f32,
    exp_avg: &mut f32,
    exp_avg_sq: &mut f32,
) {
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
    let v = *exp_avg_sq * s.beta2 + s.one_minus_beta2 * g * g;
    *exp_avg = m;
    *exp_avg_sq = v;
    let [grad_coef, exp_avg_coef, bias_correction2, _] = entry;
    let denom = (v / bias_correction2).sqrt() + s.eps;
    p += grad_coef * g / denom;
    *param = p + exp_avg_coef * m / denom;
}

#[inline(always)]
fn step_slice_impl(
    s: &NAdamScalars,
    entry: StepEntry,
    c: &NAdam,
    params: &mut [f32],
    grads: &[f32],
    scales: GradScales,
    states: &mut [&mut [f32]],
) {
    super::for_each_element!("nadam", params, grads, scales, states, |p, g, m, v| {
        step_element(s, entry, c, p, g, m, v)
    });
}

super::multiversion! {
    /// One step over flat slices, vectorized for the processor at hand.
    step_slice = step_slice_impl(
        s: &NAdamScalars,
        entry: StepEntry,
        c: &NAdam,
        params: &mut [f32],
        grads: &[f32],
        scales: GradScales,
        states: &mut [&mut [f32]],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `mu_product` is torch's float32 product (`Π` and `μₜ` rounded to
    /// float32 and multiplied in float32): after three default steps,
    /// torch 2.15's `state["mu_product"]` is the float32 `0x3dbace8e`.
    #[test]
    fn mu_product_is_torchs_float32_product() {
        let nadam = NAdam::default();
        let mut state = nadam.scalar_state_initial();
        for t in 1..=3 {
            nadam.advance_scalar_state(&mut state, t);
        }
        assert_eq!((state[0] as f32).to_bits(), 0x3dbace8e);
        assert_eq!(state[0], state[0] as f32 as f64);
        // A β1 changed between steps changes every later Π.
        let other = NAdam {
            betas: (0.5, 0.999),
            ..nadam.clone()
        };
        assert!(!nadam.advances_alike(&other));
        assert!(nadam.advances_alike(&NAdam {
            lr: 1.0,
            ..nadam.clone()
        }));
    }
}
