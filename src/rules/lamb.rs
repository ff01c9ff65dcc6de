//! LAMB: layer-wise adaptive moments, as NVIDIA Apex `FusedLAMB` and optax
//! `lamb` compute it.

use serde_json::{json, Map, Value};

use super::{
    bias_correction, bool_override, check_non_negative, check_unit_interval, object, Config,
    KernelShape, KernelSpec, Preset, Rule, StepEntry, TorchArgs,
};
use crate::error::{Error, Result};
use crate::layout::Layout;

/// LAMB (You et al., "Large Batch Optimization for Deep Learning: Training
/// BERT in 76 minutes"), in the form of NVIDIA Apex `FusedLAMB`
/// (`adam_w_mode`, no internal gradient clipping) and optax `lamb`. Per
/// tensor, with `t` the step number:
///
/// ```text
/// m ← β1·m + (1 − β1)·g                         (state `exp_avg`)
/// v ← β2·v + (1 − β2)·g²                        (state `exp_avg_sq`)
/// u = (m / (1 − β1ᵗ)) / (sqrt(v / (1 − β2ᵗ)) + eps) + weight_decay·θ
/// r = ‖θ‖ / ‖u‖   unless a norm is 0, then 1     (the trust ratio, per tensor;
///                                               a NaN norm makes it NaN, as in Apex and optax)
/// θ ← θ − lr·r·u
/// ```
///
/// Options users of the other implementations expect:
/// [`Lamb::trust_ratio_clamp`] bounds `r` to `[min, max]` (DeepSpeed),
/// [`Lamb::unit_ratio_without_decay`] keeps `r = 1` for tensors of a group
/// with no weight decay (Apex without `use_nvlamb`), and
/// [`Lamb::eps_inside_sqrt`] uses `sqrt(v̂ + eps)`.
///
/// Defaults are Apex `FusedLAMB`'s: `lr = 1e-3`, `betas = (0.9, 0.999)`,
/// `eps = 1e-6`, `weight_decay = 0.01`.
///
/// On the GPU the per-tensor norms are computed in the same submission as
/// the update, for all tensors together, by deterministic reductions (a
/// fixed tiling and a fixed summation tree, no atomics).
///
/// The trust ratio makes each tensor's step `lr·‖θ‖` long whatever the
/// gradient's size: here `‖θ‖ = 5`, so the first step moves θ by 0.5,
/// along `u` (the sign of the gradient, on the first step):
///
/// ```
/// use wgpu_optim::{CpuOptimizer, GpuContext, GpuOptimizer, Lamb};
/// let lamb = Lamb { lr: 0.1, weight_decay: 0.0, ..Lamb::default() };
/// let mut opt = CpuOptimizer::new(lamb.clone(), &[&[3.0f32, 4.0]])?;
/// opt.step(&[&[0.5, 20.0]])?; // u ≈ (1, 1), r = 5/√2
/// let θ = opt.param(0);
/// let d = 0.5 / 2f32.sqrt();
/// assert!((θ[0] - (3.0 - d)).abs() < 1e-5 && (θ[1] - (4.0 - d)).abs() < 1e-5);
/// // The same step through the GPU kernels (lavapipe will do) gives the
/// // same numbers, to a few units in the last place.
/// let ctx = GpuContext::new()?;
/// let mut gpu = GpuOptimizer::new(&ctx, lamb, &[&[3.0f32, 4.0]])?;
/// gpu.step(&[&[0.5f32, 20.0]])?;
/// let on_gpu = gpu.read_params()?;
/// for (a, b) in on_gpu[0].iter().zip(opt.param(0)) {
///     assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0));
/// }
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Lamb {
    /// Learning rate, default 1e-3.
    pub lr: f64,
    /// `(β1, β2)`, default `(0.9, 0.999)`.
    pub betas: (f64, f64),
    /// Added to the denominator, default 1e-6.
    pub eps: f64,
    /// Decoupled weight decay inside the update `u`, default 0.01.
    pub weight_decay: f64,
    /// Clamp the trust ratio to `[min, max]` (DeepSpeed's `min_coeff`,
    /// `max_coeff`; a NaN ratio stays NaN, as `torch.clamp` keeps it);
    /// `None` (default) leaves it unbounded.
    pub trust_ratio_clamp: Option<(f64, f64)>,
    /// Keep the trust ratio at 1 when `weight_decay` is 0, as Apex does
    /// without `use_nvlamb`. Default false: the ratio always applies, as in
    /// the LAMB article and optax.
    pub unit_ratio_without_decay: bool,
    /// Put `eps` inside the square root: `sqrt(v̂ + eps)`.
    pub eps_inside_sqrt: bool,
    /// Maximize the objective instead of minimizing it.
    pub maximize: bool,
}

impl Default for Lamb {
    fn default() -> Self {
        Lamb {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-6,
            weight_decay: 0.01,
            trust_ratio_clamp: None,
            unit_ratio_without_decay: false,
            eps_inside_sqrt: false,
            maximize: false,
        }
    }
}

/// LAMB's scalars that stay the same from step to step: what the CPU step
/// reads, and the uniforms of LAMB's tile kernels (`struct Scalars` in
/// `shaders/lamb.wgsl`, whose size the kernels' tests check against this
/// one). The bias corrections are the step table's entry
/// ([`Rule::step_entry`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct LambScalars {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub clamp_min: f32,
    pub clamp_max: f32,
    /// [`LAMB_CLAMP`], [`LAMB_UNIT_RATIO`].
    pub options: u32,
    pub _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<LambScalars>() == 48);

/// Clamp the trust ratio to `(clamp_min, clamp_max)`.
pub(crate) const LAMB_CLAMP: u32 = 1;
/// Trust ratio 1 (`unit_ratio_without_decay` with no weight decay).
pub(crate) const LAMB_UNIT_RATIO: u32 = 2;
/// LAMB's option bits, as the WGSL constants of the same names.
pub(crate) const WGSL_CONSTANTS: [(&str, u32); 2] = [
    ("LAMB_CLAMP", LAMB_CLAMP),
    ("LAMB_UNIT_RATIO", LAMB_UNIT_RATIO),
];

impl Rule for Lamb {
    const NAME: &'static str = "lamb";
    const KERNEL: KernelSpec = KernelSpec {
        name: "lamb",
        source: include_str!("../../shaders/lamb.wgsl"),
        shape: KernelShape::Tiled {
            entry_points: &["lamb_moments", "lamb_ratio", "lamb_apply"],
            constants: &WGSL_CONSTANTS,
        },
    };
    type Scalars = LambScalars;

    fn validate(&self, _momentum_buffer: bool) -> Result<()> {
        check_non_negative("lr", self.lr)?;
        check_non_negative("eps", self.eps)?;
        check_unit_interval("betas[0]", self.betas.0)?;
        check_unit_interval("betas[1]", self.betas.1)?;
        check_non_negative("weight_decay", self.weight_decay)?;
        if let Some((lo, hi)) = self.trust_ratio_clamp {
            check_non_negative("trust_ratio_clamp.min", lo)?;
            check_non_negative("trust_ratio_clamp.max", hi)?;
            if lo > hi {
                return Err(Error::InvalidOptions(format!(
                    "trust_ratio_clamp needs min <= max, got ({lo}, {hi})"
                )));
            }
        }
        Ok(())
    }

    fn state_names(&self, _momentum_buffer: bool) -> Vec<&'static str> {
        vec!["exp_avg", "exp_avg_sq"]
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn momentum(&self) -> Option<f64> {
        Some(self.betas.0)
    }

    fn set_momentum(&mut self, value: f64, _has_buffer: bool) -> Result<()> {
        super::set_beta1(&mut self.betas, value)
    }

    fn overrides(&self, _momentum_buffer: bool) -> Vec<(&'static str, f64)> {
        vec![
            ("MAXIMIZE", bool_override(self.maximize)),
            ("EPS_INSIDE_SQRT", bool_override(self.eps_inside_sqrt)),
        ]
    }

    fn scalars(&self, _buffer_filled: bool) -> LambScalars {
        let (beta1, beta2) = self.betas;
        let (lo, hi) = self.trust_ratio_clamp.unwrap_or((0.0, 0.0));
        let mut options = 0;
        if self.trust_ratio_clamp.is_some() {
            options |= LAMB_CLAMP;
        }
        if self.unit_ratio_without_decay && self.weight_decay == 0.0 {
            options |= LAMB_UNIT_RATIO;
        }
        LambScalars {
            lr: self.lr as f32,
            beta1: beta1 as f32,
            beta2: beta2 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            clamp_min: lo as f32,
            clamp_max: hi as f32,
            options,
            _pad: [0; 2],
        }
    }

    /// `[1 − β1ᵗ, 1 − β2ᵗ]`, computed in f64.
    fn step_entry(&self, step: u64) -> StepEntry {
        let (beta1, beta2) = self.betas;
        [
            bias_correction(beta1, step) as f32,
            bias_correction(beta2, step) as f32,
            0.0,
            0.0,
        ]
    }

    fn cpu_step(
        &self,
        s: &LambScalars,
        entry: StepEntry,
        layout: &Layout,
        params: &mut [f32],
        grads: &[f32],
        states: &mut [Vec<f32>],
        clip_scale: Option<f32>,
    ) {
        let bias_corrections = (entry[0], entry[1]);
        cpu_step(
            s,
            bias_corrections,
            self,
            layout,
            params,
            grads,
            states,
            clip_scale,
        )
    }

    fn to_torch(&self) -> Map<String, Value> {
        object(
            json!({"lr": self.lr, "betas": [self.betas.0, self.betas.1], "eps": self.eps,
            "weight_decay": self.weight_decay,
            "trust_ratio_clamp": self.trust_ratio_clamp.map(|(a, b)| vec![a, b]),
            "unit_ratio_without_decay": self.unit_ratio_without_decay,
            "eps_inside_sqrt": self.eps_inside_sqrt, "maximize": self.maximize}),
        )
    }

    /// Apex's keyword arguments; the rest are this crate's.
    fn from_torch(args: &mut TorchArgs<'_>) -> Result<Config> {
        let d = Lamb::default();
        Ok(Lamb {
            lr: args.num("lr", d.lr)?,
            betas: args.betas(d.betas)?,
            eps: args.num("eps", d.eps)?,
            weight_decay: args.num("weight_decay", d.weight_decay)?,
            trust_ratio_clamp: args.own_pair("trust_ratio_clamp")?,
            unit_ratio_without_decay: args
                .own_flag("unit_ratio_without_decay", d.unit_ratio_without_decay)?,
            eps_inside_sqrt: args.own_flag("eps_inside_sqrt", d.eps_inside_sqrt)?,
            maximize: args.own_flag("maximize", d.maximize)?,
        }
        .into())
    }

    fn presets() -> Vec<Preset> {
        vec![Preset::new("lamb", Lamb::default())]
    }
}

/// `u` of one element, from the already updated moments; the same
/// arithmetic as `lamb_update` in `shaders/lamb.wgsl`.
#[inline(always)]
fn update_direction(s: &LambScalars, bc: (f32, f32), c: &Lamb, p: f32, m: f32, v: f32) -> f32 {
    let m_hat = m / bc.0;
    let denom = if c.eps_inside_sqrt {
        (v / bc.1 + s.eps).sqrt()
    } else {
        (v / bc.1).sqrt() + s.eps
    };
    m_hat / denom + s.weight_decay * p
}

/// The trust ratio from the two squared norms, with the options; the same
/// as `lamb_ratio` in `shaders/lamb.wgsl`.
pub(crate) fn trust_ratio(s: &LambScalars, param_sq: f32, update_sq: f32) -> f32 {
    let (pn, un) = (param_sq.sqrt(), update_sq.sqrt());
    // Apex tests `!= 0` and optax `== 0`: a NaN norm is not zero, so a NaN
    // (or an inf/inf) ratio propagates into the tensor's step.
    let mut r = if pn == 0.0 || un == 0.0 { 1.0 } else { pn / un };
    if s.options & LAMB_UNIT_RATIO != 0 {
        r = 1.0;
    }
    if s.options & LAMB_CLAMP != 0 {
        r = super::clamp(r, s.clamp_min, s.clamp_max);
    }
    r
}

/// One LAMB step on the CPU over the packed tensors of `layout`, with the
/// bias corrections `bc` (`1 − β1ᵗ`, `1 − β2ᵗ`); `grad_scale` multiplies
/// every gradient first (global-norm clipping). Norms are summed in f64.
#[allow(clippy::too_many_arguments)]
pub(crate) fn cpu_step(
    s: &LambScalars,
    bc: (f32, f32),
    c: &Lamb,
    layout: &Layout,
    params: &mut [f32],
    grads: &[f32],
    states: &mut [Vec<f32>],
    grad_scale: Option<f32>,
) {
    let [exp_avg, exp_avg_sq] = states else {
        unreachable!("lamb has two state tensors")
    };
    for t in 0..layout.len() {
        let r = layout.range(t);
        let (p, g) = (&mut params[r.clone()], &grads[r.clone()]);
        let (m, v) = (&mut exp_avg[r.clone()], &mut exp_avg_sq[r]);
        let (mut param_sq, mut update_sq) = (0.0f64, 0.0f64);
        for i in 0..p.len() {
            let mut gi = match grad_scale {
                Some(k) => g[i] * k,
                None => g[i],
            };
            if c.maximize {
                gi = -gi;
            }
            m[i] = s.beta1 * m[i] + s.one_minus_beta1 * gi;
            v[i] = s.beta2 * v[i] + s.one_minus_beta2 * (gi * gi);
            let u = update_direction(s, bc, c, p[i], m[i], v[i]);
            param_sq += (p[i] as f64) * (p[i] as f64);
            update_sq += (u as f64) * (u as f64);
        }
        let ratio = trust_ratio(s, param_sq as f32, update_sq as f32);
        let step = s.lr * ratio;
        for i in 0..p.len() {
            let u = update_direction(s, bc, c, p[i], m[i], v[i]);
            p[i] -= step * u;
        }
    }
}
