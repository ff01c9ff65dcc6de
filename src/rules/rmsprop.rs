//! RMSprop, as `torch.optim.RMSprop`.

use serde_json::{json, Map, Value};

use super::{
    bool_override, check_non_negative, elementwise_step, lerp, object, Config, GradScales,
    KernelShape, KernelSpec, Preset, Rule, StepEntry, TorchArgs,
};
use crate::error::{Error, Result};
use crate::layout::Layout;

/// RMSprop, as `torch.optim.RMSprop` (PyTorch 2.15) computes it. With `v`
/// the running average of squared gradients (`square_avg`), `ḡ` the running
/// average of gradients (`grad_avg`, centered only) and `b` the momentum
/// buffer (`momentum_buffer`, momentum > 0 only), per step:
///
/// ```text
/// g ← −g                          if maximize
/// g ← g + weight_decay·θ          if weight_decay ≠ 0
/// v ← alpha·v + (1 − alpha)·g²
/// if centered: ḡ ← lerp(ḡ, g, 1 − alpha);  d = sqrt(v − ḡ²)   else d = sqrt(v)
/// d ← d + eps                     (PyTorch, default; eps_inside_sqrt: d = sqrt(… + eps))
/// if momentum > 0:  b ← momentum·b + g/d;  θ ← θ − lr·b
/// else:             θ ← θ − lr·g/d
/// ```
///
/// Defaults: `lr = 1e-2`, `alpha = 0.99`, `eps = 1e-8`, `weight_decay = 0`,
/// `momentum = 0`, `centered = false`.
///
/// Reference: `torch.optim.RMSprop` (PyTorch 2.15, `foreach=False`); the
/// method of Tieleman and Hinton, "Neural Networks for Machine Learning",
/// lecture 6e (2012), centered as in Graves, "Generating Sequences With
/// Recurrent Neural Networks" (2013).
///
/// With `v` starting at 0 the first step is `lr/sqrt(1 − alpha)` = 10·lr
/// whatever the gradient's size; the next ones shrink as `v` fills:
///
/// ```
/// use wgpu_optim::{CpuOptimizer, GpuContext, GpuOptimizer, RmsProp};
/// let rmsprop = RmsProp { lr: 0.01, ..RmsProp::default() };
/// let mut opt = CpuOptimizer::new(rmsprop.clone(), &[&[1.0f32, 1.0]])?;
/// opt.step(&[&[1.0, -30.0]])?; // v = 0.01·g²:  θ = (1 − 0.1, 1 + 0.1)
/// opt.step(&[&[1.0, -30.0]])?; // v = 0.0199·g²: θ moves by 0.01/sqrt(0.0199) more
/// let θ = opt.param(0);
/// let d = 0.01 / 0.0199f32.sqrt();
/// assert!((θ[0] - (0.9 - d)).abs() < 1e-5 && (θ[1] - (1.1 + d)).abs() < 1e-5);
/// // The same steps through the GPU kernel (lavapipe will do) give the
/// // same numbers, to a few units in the last place.
/// let ctx = GpuContext::new()?;
/// let mut gpu = GpuOptimizer::new(&ctx, rmsprop, &[&[1.0f32, 1.0]])?;
/// for _ in 0..2 {
///     gpu.step(&[&[1.0f32, -30.0]])?;
/// }
/// let on_gpu = gpu.read_params()?;
/// for (a, b) in on_gpu[0].iter().zip(opt.param(0)) {
///     assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0));
/// }
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RmsProp {
    /// Learning rate, default 1e-2.
    pub lr: f64,
    /// Smoothing constant, default 0.99.
    pub alpha: f64,
    /// Added to the denominator, default 1e-8.
    pub eps: f64,
    /// L2 penalty added to the gradient, default 0.
    pub weight_decay: f64,
    /// Momentum factor, default 0 (no momentum buffer).
    pub momentum: f64,
    /// Normalize by the estimated variance of the gradient, default false.
    pub centered: bool,
    /// Maximize the objective instead of minimizing it.
    pub maximize: bool,
    /// Put `eps` inside the square root, as Hinton's lecture and optax
    /// write it, instead of PyTorch's `sqrt(v) + eps`.
    pub eps_inside_sqrt: bool,
}

impl Default for RmsProp {
    fn default() -> Self {
        RmsProp {
            lr: 1e-2,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
            maximize: false,
            eps_inside_sqrt: false,
        }
    }
}

/// Uniforms of `shaders/rmsprop.wgsl` (`struct Scalars` there; the kernels'
/// tests check that the sizes match).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct RmsPropScalars {
    pub lr: f32,
    pub alpha: f32,
    pub one_minus_alpha: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub momentum: f32,
    /// 1 while `momentum > 0` this step (PyTorch skips the buffer otherwise).
    pub use_momentum: u32,
    pub _pad: u32,
}
const _: () = assert!(std::mem::size_of::<RmsPropScalars>() == 32);

impl Rule for RmsProp {
    const NAME: &'static str = "rmsprop";
    const KERNEL: KernelSpec = KernelSpec {
        name: "rmsprop",
        source: include_str!("../../shaders/rmsprop.wgsl"),
        shape: KernelShape::ElementWise {
            slots: &["square_avg", "momentum_buffer", "grad_avg"],
        },
    };
    type Scalars = RmsPropScalars;

    fn validate(&self, momentum_buffer: bool) -> Result<()> {
        check_non_negative("lr", self.lr)?;
        check_non_negative("eps", self.eps)?;
        check_non_negative("momentum", self.momentum)?;
        check_non_negative("weight_decay", self.weight_decay)?;
        check_non_negative("alpha", self.alpha)?;
        if self.momentum > 0.0 && !momentum_buffer {
            return Err(Error::InvalidOptions(format!(
                "momentum = {} needs a momentum_buffer, and the state has none (built with momentum 0)",
                self.momentum
            )));
        }
        Ok(())
    }

    fn builds_momentum_buffer(&self) -> bool {
        self.momentum > 0.0
    }

    fn state_names(&self, momentum_buffer: bool) -> Vec<&'static str> {
        let mut names = vec!["square_avg"];
        if momentum_buffer {
            names.push("momentum_buffer");
        }
        if self.centered {
            names.push("grad_avg");
        }
        names
    }

    super::lr_is_the_field!();

    fn momentum(&self) -> Option<f64> {
        Some(self.momentum)
    }

    fn set_momentum(&mut self, value: f64, has_buffer: bool) -> Result<()> {
        super::set_buffered_momentum(Self::NAME, &mut self.momentum, value, has_buffer)
    }

    fn overrides(&self, momentum_buffer: bool) -> Vec<(&'static str, f64)> {
        vec![
            ("MAXIMIZE", bool_override(self.maximize)),
            ("EPS_INSIDE_SQRT", bool_override(self.eps_inside_sqrt)),
            ("CENTERED", bool_override(self.centered)),
            ("HAS_MOMENTUM", bool_override(momentum_buffer)),
        ]
    }

    fn scalars(&self, _buffer_filled: bool) -> RmsPropScalars {
        RmsPropScalars {
            lr: self.lr as f32,
            alpha: self.alpha as f32,
            one_minus_alpha: (1.0 - self.alpha) as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            momentum: self.momentum as f32,
            use_momentum: (self.momentum > 0.0) as u32,
            _pad: 0,
        }
    }

    fn cpu_step(
        &self,
        s: &RmsPropScalars,
        _entry: StepEntry,
        _layout: &Layout,
        params: &mut [f32],
        grads: &[f32],
        states: &mut [Vec<f32>],
        scales: GradScales,
    ) {
        elementwise_step(params, grads, states, |p, g, st| {
            step_slice(s, self, p, g, scales, st)
        });
    }

    fn to_torch(&self) -> Map<String, Value> {
        object(
            json!({"lr": self.lr, "momentum": self.momentum, "alpha": self.alpha,
            "eps": self.eps, "centered": self.centered, "weight_decay": self.weight_decay,
            "capturable": false, "foreach": null, "maximize": self.maximize,
            "differentiable": false, "eps_inside_sqrt": self.eps_inside_sqrt}),
        )
    }

    fn from_torch(args: &mut TorchArgs<'_>) -> Result<Config> {
        let d = RmsProp::default();
        Ok(RmsProp {
            lr: args.num("lr", d.lr)?,
            alpha: args.num("alpha", d.alpha)?,
            eps: args.num("eps", d.eps)?,
            weight_decay: args.num("weight_decay", d.weight_decay)?,
            momentum: args.num("momentum", d.momentum)?,
            centered: args.flag("centered", d.centered)?,
            maximize: args.flag("maximize", d.maximize)?,
            eps_inside_sqrt: args.own_flag("eps_inside_sqrt", d.eps_inside_sqrt)?,
        }
        .into())
    }

    fn presets() -> Vec<Preset> {
        vec![Preset::new(
            "rmsprop",
            RmsProp {
                lr: 1e-3,
                ..RmsProp::default()
            },
        )]
    }
}

#[inline(always)]
pub(crate) fn step_element(
    s: &RmsPropScalars,
    c: &RmsProp,
    param: &mut f32,
    grad: f32,
    square_avg: &mut f32,
    buf: Option<&mut f32>,
    grad_avg: Option<&mut f32>,
) {
    // Locals in, one store of each out: the loop then vectorizes.
    let p = *param;
    let mut g = if c.maximize { -grad } else { grad };
    if s.weight_decay != 0.0 {
        g += s.weight_decay * p;
    }
    let sq = *square_avg * s.alpha + s.one_minus_alpha * (g * g);
    *square_avg = sq;
    let var = match grad_avg {
        Some(ga) => {
            let a = lerp(*ga, g, s.one_minus_alpha);
            *ga = a;
            sq - a * a
        }
        None => sq,
    };
    let avg = if c.eps_inside_sqrt {
        (var + s.eps).sqrt()
    } else {
        var.sqrt() + s.eps
    };
    *param = match (buf, s.use_momentum != 0) {
        (Some(b), true) => {
            let nb = *b * s.momentum + g / avg;
            *b = nb;
            p - s.lr * nb
        }
        _ => p - s.lr * (g / avg),
    };
}

#[inline(always)]
fn step_slice_impl(
    s: &RmsPropScalars,
    c: &RmsProp,
    params: &mut [f32],
    grads: &[f32],
    scales: GradScales,
    states: &mut [&mut [f32]],
) {
    match states.len() {
        1 => super::for_each_element!("rmsprop", params, grads, scales, states, |p, g, sq| {
            step_element(s, c, p, g, sq, None, None)
        }),
        // momentum_buffer or grad_avg: only `centered` adds grad_avg (the
        // momentum in force may be 0 while the buffer is kept).
        2 if c.centered => {
            super::for_each_element!("rmsprop", params, grads, scales, states, |p, g, sq, ga| {
                step_element(s, c, p, g, sq, None, Some(ga))
            })
        }
        2 => super::for_each_element!("rmsprop", params, grads, scales, states, |p, g, sq, buf| {
            step_element(s, c, p, g, sq, Some(buf), None)
        }),
        _ => super::for_each_element!(
            "rmsprop",
            params,
            grads,
            scales,
            states,
            |p, g, sq, buf, ga| { step_element(s, c, p, g, sq, Some(buf), Some(ga)) }
        ),
    }
}

super::multiversion! {
    /// One step over flat slices, vectorized for the processor at hand.
    step_slice = step_slice_impl(
        s: &RmsPropScalars,
        c: &RmsProp,
        params: &mut [f32],
        grads: &[f32],
        scales: GradScales,
        states: &mut [&mut [f32]],
    )
}
