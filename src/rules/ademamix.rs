//! AdEMAMix, as pytorch-optimizer's `AdEMAMix` computes it.

use serde_json::{json, Map, Value};

use super::{
    bias_correction, bool_override, check_closed_unit_interval, check_non_negative,
    check_unit_interval, elementwise_step, lerp, object, Config, GradScales, KernelShape,
    KernelSpec, Preset, Rule, StepEntry, TorchArgs,
};
use crate::error::{Error, Result};
use crate::layout::Layout;

/// AdEMAMix, as `pytorch_optimizer.AdEMAMix` (pytorch-optimizer 4.1.0,
/// `foreach=False`) computes it: Adam whose numerator mixes in a second,
/// slow momentum `m₂` (`exp_avg_slow`, β3 close to 1: it remembers
/// gradients for thousands of steps). With `t` the step number, `m`
/// (`exp_avg`) and `v` (`exp_avg_sq`), per step:
///
/// ```text
/// g ← −g                                 if maximize
/// θ ← θ·(1 − weight_decay·lr)            if weight_decouple (·1 instead of ·lr if fixed_decay)
/// g ← g + weight_decay·θ                 otherwise, if weight_decay > 0 (L2, coupled)
/// m  ← lerp(m, g, 1 − β1)
/// v  ← β2·v + (1 − β2)·g²
/// m₂ ← lerp(m₂, g, 1 − β3ₜ)
/// θ ← θ − lr · (m / (1 − β1ᵗ) + αₜ·m₂) / (sqrt(v) / sqrt(1 − β2ᵗ) + eps)
/// ```
///
/// Without `t_alpha_beta3`, `αₜ = alpha` and `β3ₜ = β3`. With it (`T`),
/// both warm up over `T` steps: `αₜ = min(t·alpha/T, alpha)` rises
/// linearly from 0, and `β3ₜ` rises from `β1` to `β3` so that the slow
/// momentum's half-life grows linearly, in the package's form (with
/// `log β1`, no epsilon):
///
/// ```text
/// β3ₜ = min(exp(ln β1 · ln β3 / ((1 − t/T)·ln β3 + (t/T)·ln β1)), β3)
/// ```
///
/// The bias corrections, `αₜ` and `β3ₜ` are computed on the host in f64
/// for each step, with the `β1` in force (as the package reads its
/// group's betas every step). Only the fast moment is bias-corrected, as
/// in the paper.
///
/// Defaults (the package's): `lr = 1e-3`, `betas = (0.9, 0.999, 0.9999)`,
/// `alpha = 5`, `t_alpha_beta3 = None`, `eps = 1e-8`, `weight_decay = 0`,
/// `weight_decouple = false`, `fixed_decay = false`.
///
/// Reference: `pytorch_optimizer.AdEMAMix` (pytorch-optimizer 4.1.0); the
/// method of Pagliardini, Ablin and Grangier, "The AdEMAMix Optimizer:
/// Better, Faster, Older" (2024). The paper's algorithm decays the
/// weights AdamW's way only (`weight_decouple: true`); the package's
/// default is the coupled L2 term, and it is followed here. The paper's
/// β3 scheduler is the same expression. The package checks `lr`, `alpha`,
/// `t_alpha_beta3`, `weight_decay` and `eps` `>= 0`, `β1` and `β2` in
/// `[0, 1)` and `β3` in `[0, 1]`; this crate also refuses
/// `t_alpha_beta3 = 0`, on which the package fails at its first step (a
/// division by zero), and any value that is not finite. With a warmup and
/// `β1 = 0` or `β3 = 0`, where the package fails too (the logarithm of 0),
/// `β3ₜ` is the limit of its formula: `β3^(T/t)` for `β1 → 0` (so a
/// schedule may cycle `β1` down to 0), 0 for `β3 → 0`.
///
/// On the first step `m = (1 − β1)·g` and `m₂ = (1 − β3)·g`, so the
/// update is `(g + alpha·(1 − β3)·g) / |g|`: each element moves by
/// `lr·(1 + alpha·(1 − β3))` against its gradient's sign:
///
/// ```
/// use wgpu_optim::{AdEMAMix, CpuOptimizer, GpuContext, GpuOptimizer};
/// let ademamix = AdEMAMix { lr: 0.1, eps: 0.0, ..AdEMAMix::default() };
/// let mut opt = CpuOptimizer::new(ademamix.clone(), &[&[1.0f32, 1.0]])?;
/// opt.step(&[&[0.5, -20.0]])?;
/// let d = 0.1 * (1.0 + 5.0 * 1e-4);
/// let θ = opt.param(0);
/// assert!((θ[0] - (1.0 - d)).abs() < 1e-6 && (θ[1] - (1.0 + d)).abs() < 1e-6);
/// // The same step through the GPU kernel (lavapipe will do) gives the
/// // same numbers, to a few units in the last place.
/// let ctx = GpuContext::new()?;
/// let mut gpu = GpuOptimizer::new(&ctx, ademamix, &[&[1.0f32, 1.0]])?;
/// gpu.step(&[&[0.5f32, -20.0]])?;
/// let on_gpu = gpu.read_params()?;
/// for (a, b) in on_gpu[0].iter().zip(opt.param(0)) {
///     assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0));
/// }
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct AdEMAMix {
    /// Learning rate, default 1e-3.
    pub lr: f64,
    /// `(β1, β2, β3)`: the fast momentum's, the second moment's and the
    /// slow momentum's decay, default `(0.9, 0.999, 0.9999)`.
    pub betas: (f64, f64, f64),
    /// Weight decay, default 0: an L2 term added to the gradient, or with
    /// [`AdEMAMix::weight_decouple`] a decay of θ.
    pub weight_decay: f64,
    /// Decouple the weight decay from the gradient (AdamW's
    /// `θ·(1 − lr·weight_decay)`), default false.
    pub weight_decouple: bool,
    /// With `weight_decouple`, decay by `θ·(1 − weight_decay)`, not scaled
    /// by the learning rate; default false.
    pub fixed_decay: bool,
    /// The slow momentum's weight in the update, default 5.
    pub alpha: f64,
    /// Steps over which `alpha` and `β3` warm up (`None`: no warmup, the
    /// default).
    pub t_alpha_beta3: Option<f64>,
    /// Added to the denominator, default 1e-8.
    pub eps: f64,
    /// Maximize the objective instead of minimizing it.
    pub maximize: bool,
}

impl Default for AdEMAMix {
    fn default() -> Self {
        AdEMAMix {
            lr: 1e-3,
            betas: (0.9, 0.999, 0.9999),
            weight_decay: 0.0,
            weight_decouple: false,
            fixed_decay: false,
            alpha: 5.0,
            t_alpha_beta3: None,
            eps: 1e-8,
            maximize: false,
        }
    }
}

/// Uniforms of `shaders/ademamix.wgsl` (`struct Scalars` there; the
/// kernels' tests check that the sizes match).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct AdEMAMixScalars {
    pub lr: f32,
    pub beta2: f32,
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// `1 − weight_decay·lr` (`1 − weight_decay` with `fixed_decay`), for
    /// the decoupled decay.
    pub decay_factor: f32,
    pub _pad: u32,
}
const _: () = assert!(std::mem::size_of::<AdEMAMixScalars>() == 32);

impl AdEMAMix {
    /// `(αₜ, β3ₜ)` of step `step`, in f64 and in the package's order of
    /// operations. Where the package would take the logarithm of 0 (and
    /// fail), the limit of its formula: for `β1 → 0`, `β3ₜ = β3^(T/t)` (the
    /// half-life still grows linearly, from 0); for `β3 → 0`, 0.
    fn warmup(&self, step: u64) -> (f64, f64) {
        let (beta1, _, beta3) = self.betas;
        let Some(t_end) = self.t_alpha_beta3 else {
            return (self.alpha, beta3);
        };
        let t = step as f64;
        // Python's min(x, cap): the cap only when it is smaller.
        let min = |x: f64, cap: f64| if cap < x { cap } else { x };
        let alpha_t = min(t * self.alpha / t_end, self.alpha);
        let frac = t / t_end;
        let log_beta3 = beta3.ln();
        let exponent = if beta3 == 0.0 {
            f64::NEG_INFINITY
        } else if beta1 == 0.0 {
            log_beta3 / frac
        } else {
            let log_beta1 = beta1.ln();
            log_beta1 * log_beta3 / ((1.0 - frac) * log_beta3 + frac * log_beta1)
        };
        (alpha_t, min(exponent.exp(), beta3))
    }
}

impl Rule for AdEMAMix {
    const NAME: &'static str = "ademamix";
    const KERNEL: KernelSpec = KernelSpec {
        name: "ademamix",
        source: include_str!("../../shaders/ademamix.wgsl"),
        shape: KernelShape::ElementWise {
            slots: &["exp_avg", "exp_avg_slow", "exp_avg_sq"],
        },
    };
    type Scalars = AdEMAMixScalars;

    fn validate(&self, _momentum_buffer: bool) -> Result<()> {
        check_non_negative("lr", self.lr)?;
        check_unit_interval("betas[0]", self.betas.0)?;
        check_unit_interval("betas[1]", self.betas.1)?;
        check_closed_unit_interval("betas[2]", self.betas.2)?;
        check_non_negative("alpha", self.alpha)?;
        if let Some(t) = self.t_alpha_beta3 {
            check_non_negative("t_alpha_beta3", t)?;
            if t == 0.0 {
                return Err(Error::InvalidHyperparameter {
                    name: "t_alpha_beta3",
                    value: t,
                    reason: "must be > 0 (the warmup divides by it)",
                });
            }
        }
        check_non_negative("weight_decay", self.weight_decay)?;
        check_non_negative("eps", self.eps)?;
        Ok(())
    }

    fn state_names(&self, _momentum_buffer: bool) -> Vec<&'static str> {
        vec!["exp_avg", "exp_avg_slow", "exp_avg_sq"]
    }

    super::lr_is_the_field!();

    fn momentum(&self) -> Option<f64> {
        Some(self.betas.0)
    }

    fn set_momentum(&mut self, value: f64, _has_buffer: bool) -> Result<()> {
        check_unit_interval("betas[0]", value)?;
        self.betas.0 = value;
        Ok(())
    }

    fn overrides(&self, _momentum_buffer: bool) -> Vec<(&'static str, f64)> {
        vec![
            ("MAXIMIZE", bool_override(self.maximize)),
            ("DECOUPLED", bool_override(self.weight_decouple)),
        ]
    }

    fn scalars(&self, _buffer_filled: bool) -> AdEMAMixScalars {
        let (beta1, beta2, _) = self.betas;
        let decay_scale = if self.fixed_decay { 1.0 } else { self.lr };
        AdEMAMixScalars {
            lr: self.lr as f32,
            beta2: beta2 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            decay_factor: (1.0 - self.weight_decay * decay_scale) as f32,
            _pad: 0,
        }
    }

    /// `[1 − β1ᵗ, sqrt(1 − β2ᵗ), αₜ, 1 − β3ₜ]`, computed in f64.
    fn step_entry(&self, step: u64) -> StepEntry {
        let (beta1, beta2, _) = self.betas;
        let (alpha_t, beta3_t) = self.warmup(step);
        [
            bias_correction(beta1, step) as f32,
            bias_correction(beta2, step).sqrt() as f32,
            alpha_t as f32,
            (1.0 - beta3_t) as f32,
        ]
    }

    fn cpu_step(
        &self,
        s: &AdEMAMixScalars,
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
        let (b1, b2, b3) = self.betas;
        object(
            json!({"lr": self.lr, "betas": [b1, b2, b3], "weight_decay": self.weight_decay,
            "weight_decouple": self.weight_decouple, "fixed_decay": self.fixed_decay,
            "alpha": self.alpha, "t_alpha_beta3": self.t_alpha_beta3, "eps": self.eps,
            "foreach": null, "maximize": self.maximize}),
        )
    }

    fn from_torch(args: &mut TorchArgs<'_>) -> Result<Config> {
        let d = AdEMAMix::default();
        let [b1, b2, b3] = args.numbers("betas", [d.betas.0, d.betas.1, d.betas.2])?;
        Ok(AdEMAMix {
            lr: args.num("lr", d.lr)?,
            betas: (b1, b2, b3),
            weight_decay: args.num("weight_decay", d.weight_decay)?,
            weight_decouple: args.flag("weight_decouple", d.weight_decouple)?,
            fixed_decay: args.flag("fixed_decay", d.fixed_decay)?,
            alpha: args.num("alpha", d.alpha)?,
            t_alpha_beta3: args.nullable_num("t_alpha_beta3", d.t_alpha_beta3)?,
            eps: args.num("eps", d.eps)?,
            // A keyword of the package's constructor, kept outside its
            // param_groups: optional in a checkpoint.
            maximize: args.optional_flag("maximize")?.unwrap_or(d.maximize),
        }
        .into())
    }

    fn presets() -> Vec<Preset> {
        // The warmup only changes the host's per-step scalars: one preset.
        vec![Preset::new("ademamix", AdEMAMix::default())]
    }
}

#[inline(always)]
fn step_element(
    s: &AdEMAMixScalars,
    entry: StepEntry,
    c: &AdEMAMix,
    param: &mut f32,
    grad: f32,
    state: [&mut f32; 3],
) {
    // Locals in, one store of each out: the loop then vectorizes.
    let [exp_avg, exp_avg_slow, exp_avg_sq] = state;
    let mut p = *param;
    let mut g = if c.maximize { -grad } else { grad };
    if s.weight_decay != 0.0 {
        if c.weight_decouple {
            p *= s.decay_factor;
        } else {
            g += s.weight_decay * p;
        }
    }
    let [bias_correction1, bias_correction2_sqrt, alpha_t, one_minus_beta3_t] = entry;
    let m = lerp(*exp_avg, g, s.one_minus_beta1);
    let v = *exp_avg_sq * s.beta2 + s.one_minus_beta2 * (g * g);
    let slow = lerp(*exp_avg_slow, g, one_minus_beta3_t);
    *exp_avg = m;
    *exp_avg_sq = v;
    *exp_avg_slow = slow;
    let denom = v.sqrt() / bias_correction2_sqrt + s.eps;
    let update = m / bias_correction1 + alpha_t * slow;
    *param = p - s.lr * (update / denom);
}

#[inline(always)]
fn step_slice_impl(
    s: &AdEMAMixScalars,
    entry: StepEntry,
    c: &AdEMAMix,
    params: &mut [f32],
    grads: &[f32],
    scales: GradScales,
    states: &mut [&mut [f32]],
) {
    super::for_each_element!(
        "ademamix",
        params,
        grads,
        scales,
        states,
        |p, g, m, slow, v| { step_element(s, entry, c, p, g, [m, slow, v]) }
    );
}

super::multiversion! {
    /// One step over flat slices, vectorized for the processor at hand.
    step_slice = step_slice_impl(
        s: &AdEMAMixScalars,
        entry: StepEntry,
        c: &AdEMAMix,
        params: &mut [f32],
        grads: &[f32],
        scales: GradScales,
        states: &mut [&mut [f32]],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical_bits(x: f32) -> u32 {
        if x.is_nan() {
            f32::NAN.to_bits()
        } else {
            x.to_bits()
        }
    }

    /// The warmup as the package computes it: α rises linearly to `alpha`
    /// at step T and stays; β3ₜ starts near β1, reaches β3 at step T and
    /// stays (the min caps what the formula gives past T).
    #[test]
    fn warmup_rises_to_alpha_and_beta3() {
        let c = AdEMAMix {
            t_alpha_beta3: Some(30.0),
            alpha: 8.0,
            ..AdEMAMix::default()
        };
        let (a1, b1) = c.warmup(1);
        assert!((a1 - 8.0 / 30.0).abs() < 1e-15);
        assert!(b1 > 0.9 && b1 < 0.9999, "{b1}");
        let mut last = b1;
        for t in 2..30 {
            let (a, b) = c.warmup(t);
            assert!((a - 8.0 * t as f64 / 30.0).abs() < 1e-12);
            assert!(b > last && b < 0.9999, "{t}: {b}");
            last = b;
        }
        let (a, b) = c.warmup(30);
        assert_eq!(a, 8.0);
        assert!((b - 0.9999).abs() < 1e-15, "{b}");
        assert_eq!(c.warmup(31), (8.0, 0.9999));
        assert_eq!(c.warmup(1000), (8.0, 0.9999));
        // The half-life ln(0.5)/ln(β3ₜ) grows linearly: from that of β1 at
        // t = 0 to that of β3 at T.
        let half_life = |b: f64| 0.5f64.ln() / b.ln();
        let (h1, h3) = (half_life(0.9), half_life(0.9999));
        let h15 = half_life(c.warmup(15).1);
        let want = 0.5 * h1 + 0.5 * h3;
        assert!((h15 - want).abs() < 1e-9 * want, "{h15} vs {want}");
    }

    /// With `β1` or `β3` at 0 the warmup is the limit of the formula as
    /// they go to 0 (the package would take the logarithm of 0).
    #[test]
    fn warmup_limits_at_zero_betas() {
        let with = |b1: f64, b3: f64| AdEMAMix {
            betas: (b1, 0.999, b3),
            t_alpha_beta3: Some(30.0),
            ..AdEMAMix::default()
        };
        for t in [1, 7, 15, 29, 30, 31, 100] {
            let (_, at_zero) = with(0.0, 0.9999).warmup(t);
            let (_, near_zero) = with(1e-300, 0.9999).warmup(t);
            assert!(
                (at_zero - near_zero).abs() < 1e-5,
                "{t}: {at_zero} {near_zero}"
            );
            let want = if t >= 30 {
                0.9999
            } else {
                0.9999f64.powf(30.0 / t as f64)
            };
            assert!((at_zero - want).abs() < 1e-15, "{t}: {at_zero} {want}");
            assert_eq!(with(0.9, 0.0).warmup(t).1, 0.0);
            assert_eq!(with(0.0, 0.0).warmup(t).1, 0.0);
            assert_eq!(with(0.0, 1.0).warmup(t).1, 1.0);
        }
    }

    /// Without warmup the entry is the plain bias corrections and the
    /// constants, the defaults taken as exact decimals: `1 − β3` is the f32
    /// of 1e-4, not the difference of the f32 of 0.9999 from 1.
    #[test]
    fn entry_without_warmup() {
        let c = AdEMAMix::default();
        let e = c.step_entry(1);
        assert!((e[0] - 0.1).abs() < 1e-8 && (e[1] - 0.001f32.sqrt()).abs() < 1e-8);
        assert_eq!(e[2..], [5.0, 1e-4f64 as f32]);
        assert_ne!(e[3], 1.0 - 0.9999f32);
    }

    /// The dispatched (AVX-512 or AVX2) build and the baseline one give the
    /// same bits, infinities and signed zeros included, and NaN in the same
    /// places (which of two NaN operands an instruction passes on, and so
    /// the NaN's sign, depends on the operand order the compiler picks).
    #[test]
    fn dispatched_equals_baseline_bit_for_bit() {
        let specials = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            1e-3,
            -2.0,
        ];
        let n = 1003;
        let pick = |i: usize, k: usize| specials[(i * k + i / 7) % specials.len()];
        let grads: Vec<f32> = (0..n).map(|i| pick(i, 3)).collect();
        for weight_decouple in [false, true] {
            let c = AdEMAMix {
                weight_decay: 0.1,
                weight_decouple,
                t_alpha_beta3: Some(10.0),
                maximize: true,
                ..AdEMAMix::default()
            };
            let (s, entry) = (c.scalars(false), c.step_entry(3));
            let run = |dispatched: bool| {
                let mut p: Vec<f32> = (0..n).map(|i| pick(i, 13)).collect();
                let mut st: Vec<Vec<f32>> = vec![
                    (0..n).map(|i| pick(i, 5)).collect(),
                    (0..n).map(|i| pick(i, 11)).collect(),
                    (0..n).map(|i| pick(i, 2).abs()).collect(),
                ];
                let mut views: Vec<&mut [f32]> = st.iter_mut().map(|v| v.as_mut_slice()).collect();
                let step = if dispatched {
                    step_slice
                } else {
                    step_slice_impl
                };
                step(
                    &s,
                    entry,
                    &c,
                    &mut p,
                    &grads,
                    GradScales::default(),
                    &mut views,
                );
                let mut bits: Vec<u32> = p.iter().map(|x| canonical_bits(*x)).collect();
                for v in &st {
                    bits.extend(v.iter().map(|x| canonical_bits(*x)));
                }
                bits
            };
            assert_eq!(run(true), run(false));
        }
    }
}
