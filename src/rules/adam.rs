//! Adam and AdamW, as `torch.optim.Adam` and `torch.optim.AdamW`.

use serde_json::{json, Map, Value};

use super::{
    bias_correction, bool_override, check_non_negative, check_unit_interval, elementwise_step,
    lerp, object, Config, GradScales, KernelShape, KernelSpec, Preset, Rule, StepEntry, TorchArgs,
};
use crate::clip::ClipGradNorm;
use crate::error::Result;
use crate::layout::Layout;

/// Adam, as `torch.optim.Adam` (PyTorch 2.15) computes it. With `t` the step
/// number, `m` (`exp_avg`) and `v` (`exp_avg_sq`) the moments, per step:
///
/// ```text
/// g ← −g                          if maximize
/// g ← g + weight_decay·θ          if weight_decay ≠ 0 (L2, coupled)
/// m ← lerp(m, g, 1 − β1)          (= β1·m + (1 − β1)·g)
/// v ← β2·v + (1 − β2)·g²
/// v̂max ← max(v̂max, v)            if amsgrad (`max_exp_avg_sq`, NaN if either is,
///                                 as `torch.maximum`); use it for v below
/// d = sqrt(v) / sqrt(1 − β2ᵗ) + eps          (PyTorch, default)
/// d = sqrt(v / (1 − β2ᵗ) + eps)              (eps_inside_sqrt, optax's `eps_root`)
/// θ ← θ − (lr / (1 − β1ᵗ)) · m / d
/// ```
///
/// The bias corrections use the `β1` in force at step `t`, as PyTorch does
/// when a schedule cycles it, and are computed on the host in f64.
/// Defaults: `lr = 1e-3`, `betas = (0.9, 0.999)`, `eps = 1e-8`,
/// `weight_decay = 0`, `amsgrad = false`.
///
/// Reference: `torch.optim.Adam` (PyTorch 2.15, `foreach=False`); the
/// method of Kingma and Ba, "Adam: A Method for Stochastic Optimization"
/// (ICLR 2015), AMSGrad as in Reddi, Kale and Kumar, "On the Convergence of
/// Adam and Beyond" (ICLR 2018).
///
/// With a steady gradient every step moves each element by `lr`, whatever
/// the gradient's size (the bias corrections make `m/√v` exactly `±1`):
///
/// ```
/// use wgpu_optim::{Adam, CpuOptimizer, GpuContext, GpuOptimizer};
/// let adam = Adam { lr: 0.1, ..Adam::default() };
/// let mut opt = CpuOptimizer::new(adam.clone(), &[&[1.0f32, 1.0]])?;
/// opt.step(&[&[0.5, -20.0]])?;
/// opt.step(&[&[0.5, -20.0]])?;
/// let θ = opt.param(0);
/// assert!((θ[0] - 0.8).abs() < 1e-6 && (θ[1] - 1.2).abs() < 1e-6);
/// // The same steps through the GPU kernel (lavapipe will do) give the
/// // same numbers, to a few units in the last place.
/// let ctx = GpuContext::new()?;
/// let mut gpu = GpuOptimizer::new(&ctx, adam, &[&[1.0f32, 1.0]])?;
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
pub struct Adam {
    /// Learning rate, default 1e-3.
    pub lr: f64,
    /// `(β1, β2)`, default `(0.9, 0.999)`.
    pub betas: (f64, f64),
    /// Added to the denominator, default 1e-8.
    pub eps: f64,
    /// L2 penalty added to the gradient, default 0.
    pub weight_decay: f64,
    /// Use the AMSGrad variant (keep the maximum of `v`).
    pub amsgrad: bool,
    /// Maximize the objective instead of minimizing it.
    pub maximize: bool,
    /// Put `eps` inside the square root (`sqrt(v̂ + eps)`) instead of
    /// PyTorch's `sqrt(v̂) + eps`.
    pub eps_inside_sqrt: bool,
}

impl Default for Adam {
    fn default() -> Self {
        Adam {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
            maximize: false,
            eps_inside_sqrt: false,
        }
    }
}

/// AdamW, as `torch.optim.AdamW` computes it: Adam with the weight decay
/// decoupled from the gradient. Before the Adam update (no L2 term):
///
/// ```text
/// θ ← θ · (1 − lr·weight_decay)
/// ```
///
/// Defaults as [`Adam`] except `weight_decay = 0.01`.
///
/// Reference: `torch.optim.AdamW` (PyTorch 2.15, `foreach=False`); the
/// method of Loshchilov and Hutter, "Decoupled Weight Decay Regularization"
/// (ICLR 2019).
///
/// Each step first shrinks θ by `lr·weight_decay`, then takes Adam's step
/// (with a steady gradient, `lr` per element):
///
/// ```
/// use wgpu_optim::{AdamW, CpuOptimizer, GpuContext, GpuOptimizer};
/// let adamw = AdamW { lr: 0.1, weight_decay: 0.1, ..AdamW::default() };
/// let mut opt = CpuOptimizer::new(adamw.clone(), &[&[1.0f32, 1.0]])?;
/// opt.step(&[&[0.5, -20.0]])?; // θ·0.99, then ∓0.1: (0.89, 1.09)
/// opt.step(&[&[0.5, -20.0]])?;
/// let θ = opt.param(0);
/// assert!((θ[0] - (0.89 * 0.99 - 0.1)).abs() < 1e-6);
/// assert!((θ[1] - (1.09 * 0.99 + 0.1)).abs() < 1e-6);
/// // The same steps through the GPU kernel (lavapipe will do) give the
/// // same numbers, to a few units in the last place.
/// let ctx = GpuContext::new()?;
/// let mut gpu = GpuOptimizer::new(&ctx, adamw, &[&[1.0f32, 1.0]])?;
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
pub struct AdamW {
    /// Learning rate, default 1e-3.
    pub lr: f64,
    /// `(β1, β2)`, default `(0.9, 0.999)`.
    pub betas: (f64, f64),
    /// Added to the denominator, default 1e-8.
    pub eps: f64,
    /// Decoupled weight decay, default 0.01.
    pub weight_decay: f64,
    /// Use the AMSGrad variant.
    pub amsgrad: bool,
    /// Maximize the objective instead of minimizing it.
    pub maximize: bool,
    /// Put `eps` inside the square root.
    pub eps_inside_sqrt: bool,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 1e-2,
            amsgrad: false,
            maximize: false,
            eps_inside_sqrt: false,
        }
    }
}

/// Adam and AdamW share one kernel switched by `decoupled`, as PyTorch's
/// fused CUDA Adam does.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct AdamFamily {
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    pub amsgrad: bool,
    pub maximize: bool,
    pub eps_inside_sqrt: bool,
    pub decoupled: bool,
}

impl Adam {
    pub(crate) fn to_family(&self, decoupled: bool) -> AdamFamily {
        AdamFamily {
            lr: self.lr,
            betas: self.betas,
            eps: self.eps,
            weight_decay: self.weight_decay,
            amsgrad: self.amsgrad,
            maximize: self.maximize,
            eps_inside_sqrt: self.eps_inside_sqrt,
            decoupled,
        }
    }
}

impl AdamW {
    pub(crate) fn to_adam_family(&self) -> AdamFamily {
        AdamFamily {
            lr: self.lr,
            betas: self.betas,
            eps: self.eps,
            weight_decay: self.weight_decay,
            amsgrad: self.amsgrad,
            maximize: self.maximize,
            eps_inside_sqrt: self.eps_inside_sqrt,
            decoupled: true,
        }
    }
}

/// Uniforms of `shaders/adam.wgsl` (`struct Scalars` there; the kernels'
/// tests check that the sizes match).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct AdamScalars {
    pub beta2: f32,
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// `1 − lr·weight_decay` (decoupled decay).
    pub decay_factor: f32,
    pub _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<AdamScalars>() == 32);

impl AdamFamily {
    pub(crate) fn validate(&self) -> Result<()> {
        check_non_negative("lr", self.lr)?;
        check_non_negative("eps", self.eps)?;
        check_unit_interval("betas[0]", self.betas.0)?;
        check_unit_interval("betas[1]", self.betas.1)?;
        check_non_negative("weight_decay", self.weight_decay)?;
        Ok(())
    }

    pub(crate) fn state_names(&self) -> Vec<&'static str> {
        let mut names = vec!["exp_avg", "exp_avg_sq"];
        if self.amsgrad {
            names.push("max_exp_avg_sq");
        }
        names
    }

    pub(crate) fn overrides(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("MAXIMIZE", bool_override(self.maximize)),
            ("EPS_INSIDE_SQRT", bool_override(self.eps_inside_sqrt)),
            ("AMSGRAD", bool_override(self.amsgrad)),
            ("DECOUPLED", bool_override(self.decoupled)),
        ]
    }

    pub(crate) fn scalars(&self) -> AdamScalars {
        let (beta1, beta2) = self.betas;
        AdamScalars {
            beta2: beta2 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            decay_factor: (1.0 - self.lr * self.weight_decay) as f32,
            _pad: [0; 2],
        }
    }

    /// `[lr / (1 − β1ᵗ), sqrt(1 − β2ᵗ), 1 − β2ᵗ]`, computed in f64.
    pub(crate) fn step_entry(&self, step: u64) -> StepEntry {
        let (beta1, beta2) = self.betas;
        let bias_correction1 = bias_correction(beta1, step);
        let bias_correction2 = bias_correction(beta2, step);
        [
            (self.lr / bias_correction1) as f32,
            bias_correction2.sqrt() as f32,
            bias_correction2 as f32,
            0.0,
        ]
    }
}

/// The kernel of Adam and AdamW (switched by `DECOUPLED`).
const KERNEL: KernelSpec = KernelSpec {
    name: "adam",
    source: include_str!("../../shaders/adam.wgsl"),
    shape: KernelShape::ElementWise {
        slots: &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
    },
};

/// The Adam family's items of [`Rule`], for Adam and AdamW alike.
impl AdamFamily {
    fn cpu_step(
        &self,
        s: &AdamScalars,
        entry: StepEntry,
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
            "weight_decay": self.weight_decay, "amsgrad": self.amsgrad, "maximize": self.maximize,
            "foreach": null, "capturable": false, "differentiable": false, "fused": null,
            "decoupled_weight_decay": self.decoupled, "eps_inside_sqrt": self.eps_inside_sqrt}),
        )
    }

    /// The keys Adam and AdamW share, with `d`'s values as the defaults.
    fn from_torch(args: &mut TorchArgs<'_>, d: AdamFamily) -> Result<AdamFamily> {
        Ok(AdamFamily {
            lr: args.num("lr", d.lr)?,
            betas: args.betas(d.betas)?,
            eps: args.num("eps", d.eps)?,
            weight_decay: args.num("weight_decay", d.weight_decay)?,
            amsgrad: args.flag("amsgrad", d.amsgrad)?,
            maximize: args.flag("maximize", d.maximize)?,
            eps_inside_sqrt: args.own_flag("eps_inside_sqrt", d.eps_inside_sqrt)?,
            decoupled: d.decoupled,
        })
    }

    fn adam(&self) -> Adam {
        Adam {
            lr: self.lr,
            betas: self.betas,
            eps: self.eps,
            weight_decay: self.weight_decay,
            amsgrad: self.amsgrad,
            maximize: self.maximize,
            eps_inside_sqrt: self.eps_inside_sqrt,
        }
    }

    fn adamw(&self) -> AdamW {
        AdamW {
            lr: self.lr,
            betas: self.betas,
            eps: self.eps,
            weight_decay: self.weight_decay,
            amsgrad: self.amsgrad,
            maximize: self.maximize,
            eps_inside_sqrt: self.eps_inside_sqrt,
        }
    }
}

impl Rule for Adam {
    const NAME: &'static str = "adam";
    const KERNEL: KernelSpec = KERNEL;
    type Scalars = AdamScalars;

    fn validate(&self, _momentum_buffer: bool) -> Result<()> {
        self.to_family(false).validate()
    }
    fn state_names(&self, _momentum_buffer: bool) -> Vec<&'static str> {
        self.to_family(false).state_names()
    }
    super::lr_is_the_field!();
    fn momentum(&self) -> Option<f64> {
        Some(self.betas.0)
    }
    fn set_momentum(&mut self, value: f64, _has_buffer: bool) -> Result<()> {
        super::set_beta1(&mut self.betas, value)
    }
    fn overrides(&self, _momentum_buffer: bool) -> Vec<(&'static str, f64)> {
        self.to_family(false).overrides()
    }
    fn scalars(&self, _buffer_filled: bool) -> AdamScalars {
        self.to_family(false).scalars()
    }
    fn step_entry(&self, step: u64) -> StepEntry {
        self.to_family(false).step_entry(step)
    }
    fn cpu_step(
        &self,
        s: &AdamScalars,
        entry: StepEntry,
        _layout: &Layout,
        params: &mut [f32],
        grads: &[f32],
        states: &mut [Vec<f32>],
        scales: GradScales,
    ) {
        self.to_family(false)
            .cpu_step(s, entry, params, grads, states, scales)
    }
    fn to_torch(&self) -> Map<String, Value> {
        self.to_family(false).to_torch()
    }
    fn from_torch(args: &mut TorchArgs<'_>) -> Result<Config> {
        let c = AdamFamily::from_torch(args, Adam::default().to_family(false))?;
        // torch.optim.Adam(decoupled_weight_decay=True) is AdamW (with
        // Adam's defaults: no weight decay unless given).
        Ok(match args.optional_flag("decoupled_weight_decay")? {
            Some(true) => c.adamw().into(),
            _ => c.adam().into(),
        })
    }
    fn presets() -> Vec<Preset> {
        let adam = Adam {
            lr: 1e-3,
            ..Adam::default()
        };
        vec![
            Preset::new("adam", adam.clone()),
            Preset::new(
                "adam_amsgrad",
                Adam {
                    amsgrad: true,
                    ..adam.clone()
                },
            ),
            Preset {
                clip: Some(ClipGradNorm::new(1.0)),
                ..Preset::new("adam_clip", adam)
            },
        ]
    }
}

impl Rule for AdamW {
    const NAME: &'static str = "adamw";
    const KERNEL: KernelSpec = KERNEL;
    type Scalars = AdamScalars;

    fn validate(&self, _momentum_buffer: bool) -> Result<()> {
        self.to_adam_family().validate()
    }
    fn state_names(&self, _momentum_buffer: bool) -> Vec<&'static str> {
        self.to_adam_family().state_names()
    }
    super::lr_is_the_field!();
    fn momentum(&self) -> Option<f64> {
        Some(self.betas.0)
    }
    fn set_momentum(&mut self, value: f64, _has_buffer: bool) -> Result<()> {
        super::set_beta1(&mut self.betas, value)
    }
    fn overrides(&self, _momentum_buffer: bool) -> Vec<(&'static str, f64)> {
        self.to_adam_family().overrides()
    }
    fn scalars(&self, _buffer_filled: bool) -> AdamScalars {
        self.to_adam_family().scalars()
    }
    fn step_entry(&self, step: u64) -> StepEntry {
        self.to_adam_family().step_entry(step)
    }
    fn cpu_step(
        &self,
        s: &AdamScalars,
        entry: StepEntry,
        _layout: &Layout,
        params: &mut [f32],
        grads: &[f32],
        states: &mut [Vec<f32>],
        scales: GradScales,
    ) {
        self.to_adam_family()
            .cpu_step(s, entry, params, grads, states, scales)
    }
    fn to_torch(&self) -> Map<String, Value> {
        self.to_adam_family().to_torch()
    }
    fn from_torch(args: &mut TorchArgs<'_>) -> Result<Config> {
        let c = AdamFamily::from_torch(args, AdamW::default().to_adam_family())?;
        if args.own_optional_flag("decoupled_weight_decay")? == Some(false) {
            return Err(args.error("rule adamw with decoupled_weight_decay = false".into()));
        }
        Ok(c.adamw().into())
    }
    fn presets() -> Vec<Preset> {
        vec![Preset::new(
            "adamw",
            AdamW {
                lr: 1e-3,
                ..AdamW::default()
            },
        )]
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn step_element(
    s: &AdamScalars,
    entry: StepEntry,
    c: &AdamFamily,
    param: &mut f32,
    grad: f32,
    exp_avg: &mut f32,
    exp_avg_sq: &mut f32,
    max_exp_avg_sq: Option<&mut f32>,
) {
    // Locals in, one store of each out: the loop then vectorizes.
    let mut p = *param;
    let mut g = if c.maximize { -grad } else { grad };
    if s.weight_decay != 0.0 {
        if c.decoupled {
            p *= s.decay_factor;
        } else {
            g += s.weight_decay * p;
        }
    }
    let m = lerp(*exp_avg, g, s.one_minus_beta1);
    let v = *exp_avg_sq * s.beta2 + s.one_minus_beta2 * (g * g);
    *exp_avg = m;
    *exp_avg_sq = v;
    let v = match max_exp_avg_sq {
        Some(vmax) => {
            let vm = super::maximum(*vmax, v);
            *vmax = vm;
            vm
        }
        None => v,
    };
    let [step_size, bias_correction2_sqrt, bias_correction2, _] = entry;
    let denom = if c.eps_inside_sqrt {
        (v / bias_correction2 + s.eps).sqrt()
    } else {
        v.sqrt() / bias_correction2_sqrt + s.eps
    };
    *param = p - step_size * (m / denom);
}

#[inline(always)]
fn step_slice_impl(
    s: &AdamScalars,
    entry: StepEntry,
    c: &AdamFamily,
    params: &mut [f32],
    grads: &[f32],
    scales: GradScales,
    states: &mut [&mut [f32]],
) {
    if states.len() == 2 {
        super::for_each_element!("adam", params, grads, scales, states, |p, g, m, v| {
            step_element(s, entry, c, p, g, m, v, None)
        });
    } else {
        super::for_each_element!("adam", params, grads, scales, states, |p, g, m, v, vmax| {
            step_element(s, entry, c, p, g, m, v, Some(vmax))
        });
    }
}

super::multiversion! {
    /// One step over flat slices, vectorized for the processor at hand.
    step_slice = step_slice_impl(
        s: &AdamScalars,
        entry: StepEntry,
        c: &AdamFamily,
        params: &mut [f32],
        grads: &[f32],
        scales: GradScales,
        states: &mut [&mut [f32]],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AMSGrad's NaN-propagating maximum gives the same bits in the build
    /// this processor dispatches to (AVX-512 or AVX2 here) as in the
    /// baseline one, NaN, ±inf and ±0 included, over vector bodies and tails.
    #[test]
    fn amsgrad_dispatched_equals_baseline_bit_for_bit() {
        let specials = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            1e-3,
            2.0,
        ];
        let n = 1003;
        let pick = |i: usize, k: usize| specials[(i * k + i / 7) % specials.len()];
        let grads: Vec<f32> = (0..n).map(|i| pick(i, 3)).collect();
        let init: Vec<Vec<f32>> = vec![
            (0..n).map(|i| pick(i, 5)).collect(),
            (0..n).map(|i| pick(i, 2).abs()).collect(),
            (0..n).map(|i| pick(i, 11).abs()).collect(),
        ];
        let adam = Adam {
            amsgrad: true,
            ..Adam::default()
        };
        let c = adam.to_family(false);
        let (s, entry) = (c.scalars(), c.step_entry(3));
        let run = |dispatched: bool| {
            let mut p: Vec<f32> = (0..n).map(|i| pick(i, 13)).collect();
            let mut st = init.clone();
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
            let mut bits: Vec<u32> = p.iter().map(|x| x.to_bits()).collect();
            for v in &st {
                bits.extend(v.iter().map(|x| x.to_bits()));
            }
            (bits, st[2].clone())
        };
        let (fast, vmax) = run(true);
        assert_eq!(fast, run(false).0);
        // torch.maximum: NaN wherever either operand was.
        for i in 0..n {
            let (old, v) = (init[2][i], vmax[i]);
            if old.is_nan() || grads[i].is_nan() || init[1][i].is_nan() {
                assert!(v.is_nan(), "{i}: {old} -> {v}");
            }
        }
    }
}
