//! Adagrad, as `torch.optim.Adagrad`.

use serde_json::{json, Map, Value};

use super::{
    bool_override, check_non_negative, elementwise_step, object, Config, GradScales, KernelShape,
    KernelSpec, Preset, Rule, StepEntry, TorchArgs,
};
use crate::error::Result;
use crate::layout::Layout;

/// Adagrad, as `torch.optim.Adagrad` (PyTorch 2.15) computes it. With `t`
/// the step number (1 for the first step) and `s` the accumulated squares
/// (PyTorch's state `sum`), per step:
///
/// ```text
/// g ← −g                          if maximize
/// g ← g + weight_decay·θ          if weight_decay ≠ 0
/// clr = lr / (1 + (t − 1)·lr_decay)
/// s ← s + g²
/// θ ← θ − clr · g / (sqrt(s) + eps)      (PyTorch, default)
/// θ ← θ − clr · g / sqrt(s + eps)        (eps_inside_sqrt)
/// ```
///
/// Defaults: `lr = 1e-2`, `lr_decay = 0`, `weight_decay = 0`,
/// `initial_accumulator_value = 0`, `eps = 1e-10`.
///
/// Reference: `torch.optim.Adagrad` (PyTorch 2.15, `foreach=False`); the
/// method of Duchi, Hazan and Singer, "Adaptive Subgradient Methods for
/// Online Learning and Stochastic Optimization" (JMLR 2011).
///
/// The steps shrink as the squares add up: the first moves each element by
/// `lr` whatever the gradient's size, the second by `lr/√2`:
///
/// ```
/// use wgpu_optim::{Adagrad, CpuOptimizer, GpuContext, GpuOptimizer};
/// let adagrad = Adagrad { lr: 0.1, ..Adagrad::default() };
/// let mut opt = CpuOptimizer::new(adagrad.clone(), &[&[1.0f32, 1.0]])?;
/// opt.step(&[&[2.0, -0.5]])?; // s = g²:  θ = (1 − 0.1, 1 + 0.1)
/// opt.step(&[&[2.0, -0.5]])?; // s = 2g²: θ moves by 0.1/√2 more
/// let θ = opt.param(0);
/// let d = 0.1 / 2f32.sqrt();
/// assert!((θ[0] - (0.9 - d)).abs() < 1e-6 && (θ[1] - (1.1 + d)).abs() < 1e-6);
/// assert_eq!(opt.state("sum")?[0], &[8.0f32, 0.5]);
/// // The same steps through the GPU kernel (lavapipe will do) give the
/// // same numbers, to a few units in the last place.
/// let ctx = GpuContext::new()?;
/// let mut gpu = GpuOptimizer::new(&ctx, adagrad, &[&[1.0f32, 1.0]])?;
/// for _ in 0..2 {
///     gpu.step(&[&[2.0f32, -0.5]])?;
/// }
/// let on_gpu = gpu.read_params()?;
/// for (a, b) in on_gpu[0].iter().zip(opt.param(0)) {
///     assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0));
/// }
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Adagrad {
    /// Learning rate, default 1e-2.
    pub lr: f64,
    /// Learning-rate decay, default 0.
    pub lr_decay: f64,
    /// L2 penalty added to the gradient, default 0.
    pub weight_decay: f64,
    /// Starting value of the accumulator `sum`, default 0.
    pub initial_accumulator_value: f64,
    /// Added to the denominator, default 1e-10.
    pub eps: f64,
    /// Maximize the objective instead of minimizing it.
    pub maximize: bool,
    /// Put `eps` inside the square root (`sqrt(s + eps)`), as the original
    /// article and optax write it, instead of PyTorch's `sqrt(s) + eps`.
    pub eps_inside_sqrt: bool,
}

impl Default for Adagrad {
    fn default() -> Self {
        Adagrad {
            lr: 1e-2,
            lr_decay: 0.0,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: 1e-10,
            maximize: false,
            eps_inside_sqrt: false,
        }
    }
}

/// Uniforms of `shaders/adagrad.wgsl` (`struct Scalars` there; the kernels'
/// tests check that the sizes match).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct AdagradScalars {
    pub weight_decay: f32,
    pub eps: f32,
    pub _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<AdagradScalars>() == 16);

impl Rule for Adagrad {
    const NAME: &'static str = "adagrad";
    const KERNEL: KernelSpec = KernelSpec {
        name: "adagrad",
        source: include_str!("../../shaders/adagrad.wgsl"),
        shape: KernelShape::ElementWise { slots: &["sum"] },
    };
    type Scalars = AdagradScalars;

    fn validate(&self, _momentum_buffer: bool) -> Result<()> {
        check_non_negative("lr", self.lr)?;
        check_non_negative("lr_decay", self.lr_decay)?;
        check_non_negative("weight_decay", self.weight_decay)?;
        check_non_negative("initial_accumulator_value", self.initial_accumulator_value)?;
        check_non_negative("eps", self.eps)?;
        Ok(())
    }

    fn state_names(&self, _momentum_buffer: bool) -> Vec<&'static str> {
        vec!["sum"]
    }

    fn state_initial_value(&self, _name: &str) -> f32 {
        self.initial_accumulator_value as f32
    }

    super::lr_is_the_field!();

    fn overrides(&self, _momentum_buffer: bool) -> Vec<(&'static str, f64)> {
        vec![
            ("MAXIMIZE", bool_override(self.maximize)),
            ("EPS_INSIDE_SQRT", bool_override(self.eps_inside_sqrt)),
        ]
    }

    fn scalars(&self, _buffer_filled: bool) -> AdagradScalars {
        AdagradScalars {
            weight_decay: self.weight_decay as f32,
            eps: self.eps as f32,
            _pad: [0; 2],
        }
    }

    /// `[clr]`: `lr / (1 + (t − 1)·lr_decay)`, computed in f64.
    fn step_entry(&self, step: u64) -> StepEntry {
        let clr = self.lr / (1.0 + (step.saturating_sub(1)) as f64 * self.lr_decay);
        [clr as f32, 0.0, 0.0, 0.0]
    }

    fn cpu_step(
        &self,
        s: &AdagradScalars,
        entry: StepEntry,
        _layout: &Layout,
        params: &mut [f32],
        grads: &[f32],
        states: &mut [Vec<f32>],
        scales: GradScales,
    ) {
        elementwise_step(params, grads, states, |p, g, st| {
            step_slice(s, entry[0], self, p, g, scales, st)
        });
    }

    fn to_torch(&self) -> Map<String, Value> {
        object(
            json!({"lr": self.lr, "lr_decay": self.lr_decay, "eps": self.eps,
            "weight_decay": self.weight_decay,
            "initial_accumulator_value": self.initial_accumulator_value,
            "foreach": null, "maximize": self.maximize, "differentiable": false, "fused": null,
            "eps_inside_sqrt": self.eps_inside_sqrt}),
        )
    }

    fn from_torch(args: &mut TorchArgs<'_>) -> Result<Config> {
        let d = Adagrad::default();
        Ok(Adagrad {
            lr: args.num("lr", d.lr)?,
            lr_decay: args.num("lr_decay", d.lr_decay)?,
            weight_decay: args.num("weight_decay", d.weight_decay)?,
            initial_accumulator_value: args
                .num("initial_accumulator_value", d.initial_accumulator_value)?,
            eps: args.num("eps", d.eps)?,
            maximize: args.flag("maximize", d.maximize)?,
            eps_inside_sqrt: args.own_flag("eps_inside_sqrt", d.eps_inside_sqrt)?,
        }
        .into())
    }

    fn presets() -> Vec<Preset> {
        vec![Preset::new(
            "adagrad",
            Adagrad {
                lr: 1e-2,
                ..Adagrad::default()
            },
        )]
    }
}

#[inline(always)]
pub(crate) fn step_element(
    s: &AdagradScalars,
    clr: f32,
    c: &Adagrad,
    param: &mut f32,
    grad: f32,
    sum: &mut f32,
) {
    // Locals in, one store of each out: the loop then vectorizes.
    let p = *param;
    let mut g = if c.maximize { -grad } else { grad };
    if s.weight_decay != 0.0 {
        g += s.weight_decay * p;
    }
    let acc = *sum + g * g;
    *sum = acc;
    let std = if c.eps_inside_sqrt {
        (acc + s.eps).sqrt()
    } else {
        acc.sqrt() + s.eps
    };
    *param = p - clr * (g / std);
}

#[inline(always)]
fn step_slice_impl(
    s: &AdagradScalars,
    clr: f32,
    c: &Adagrad,
    params: &mut [f32],
    grads: &[f32],
    scales: GradScales,
    states: &mut [&mut [f32]],
) {
    super::for_each_element!("adagrad", params, grads, scales, states, |p, g, sum| {
        step_element(s, clr, c, p, g, sum)
    });
}

super::multiversion! {
    /// One step over flat slices, vectorized for the processor at hand.
    step_slice = step_slice_impl(
        s: &AdagradScalars,
        clr: f32,
        c: &Adagrad,
        params: &mut [f32],
        grads: &[f32],
        scales: GradScales,
        states: &mut [&mut [f32]],
    )
}
