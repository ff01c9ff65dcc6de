//! Stochastic gradient descent with optional momentum and Nesterov momentum,
//! as `torch.optim.SGD`.

use serde_json::{json, Map, Value};

use super::{
    bool_override, check_non_negative, elementwise_step, object, Config, GradScales, KernelShape,
    KernelSpec, Preset, Rule, StepEntry, TorchArgs,
};
use crate::error::{Error, Result};
use crate::layout::Layout;

/// SGD, as `torch.optim.SGD` (PyTorch 2.15) computes it. With `g` the
/// gradient, `θ` the parameter, `b` the momentum buffer, per step:
///
/// ```text
/// g ← −g                          if maximize
/// g ← g + weight_decay·θ          if weight_decay ≠ 0
/// if momentum ≠ 0:
///     b ← g                       on the first step
///     b ← momentum·b + (1 − dampening)·g   afterwards
///     g ← g + momentum·b          if nesterov
///     g ← b                       otherwise
/// θ ← θ − lr·g
/// ```
///
/// Defaults are PyTorch's: `lr = 1e-3`, `momentum = 0`, `dampening = 0`,
/// `weight_decay = 0`, `nesterov = false`, `maximize = false`.
///
/// PyTorch keeps the learning rate out of the buffer; the textbook velocity
/// form `v ← γv + ηg; θ ← θ − v` folds it in. For a constant learning rate
/// and no dampening both give the same trajectory (`v = η·b`); they differ
/// when the learning rate changes between steps (the README explains).
///
/// Reference: `torch.optim.SGD` (PyTorch 2.15, `foreach=False`), whose
/// Nesterov form is that of Sutskever, Martens, Dahl and Hinton, "On the
/// importance of initialization and momentum in deep learning" (ICML 2013).
///
/// Two steps with momentum 0.9, on the CPU and on the GPU:
///
/// ```
/// use wgpu_optim::{CpuOptimizer, GpuContext, GpuOptimizer, Sgd};
/// let sgd = Sgd { lr: 0.1, momentum: 0.9, ..Sgd::default() };
/// let mut opt = CpuOptimizer::new(sgd.clone(), &[&[1.0f32, -2.0]])?;
/// opt.step(&[&[1.0, 0.5]])?; // b = g = (1, 0.5);          θ = (0.9, −2.05)
/// opt.step(&[&[1.0, 0.5]])?; // b = 0.9·b + g = (1.9, 0.95); θ −= 0.1·b
/// let θ = opt.param(0);
/// assert!((θ[0] - 0.71).abs() < 1e-6 && (θ[1] + 2.145).abs() < 1e-6);
/// let b = &opt.state("momentum_buffer")?[0];
/// assert!((b[0] - 1.9).abs() < 1e-6 && (b[1] - 0.95).abs() < 1e-6);
/// // The same steps through the GPU kernel (lavapipe will do) give the
/// // same numbers, to a few units in the last place.
/// let ctx = GpuContext::new()?;
/// let mut gpu = GpuOptimizer::new(&ctx, sgd, &[&[1.0f32, -2.0]])?;
/// for _ in 0..2 {
///     gpu.step(&[&[1.0f32, 0.5]])?;
/// }
/// let on_gpu = gpu.read_params()?;
/// for (a, b) in on_gpu[0].iter().zip(opt.param(0)) {
///     assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0));
/// }
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Sgd {
    /// Learning rate (`lr`), default 1e-3.
    pub lr: f64,
    /// Momentum factor, default 0 (no momentum buffer).
    pub momentum: f64,
    /// Dampening of the momentum, default 0.
    pub dampening: f64,
    /// L2 penalty added to the gradient, default 0.
    pub weight_decay: f64,
    /// Nesterov momentum (needs `momentum > 0` and `dampening = 0`).
    pub nesterov: bool,
    /// Maximize the objective instead of minimizing it.
    pub maximize: bool,
}

impl Default for Sgd {
    fn default() -> Self {
        Sgd {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            maximize: false,
        }
    }
}

/// Uniforms of `shaders/sgd.wgsl` (`struct Scalars` there; the kernels'
/// tests check that the sizes match).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct SgdScalars {
    pub lr: f32,
    pub momentum: f32,
    pub one_minus_dampening: f32,
    pub weight_decay: f32,
    /// 1 while `momentum != 0` this step (PyTorch skips the buffer when it is 0).
    pub use_momentum: u32,
    /// 1 once the buffer holds a value; 0 on its first use, when it is set to `g`.
    pub buffer_filled: u32,
    pub _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<SgdScalars>() == 32);

impl Rule for Sgd {
    const NAME: &'static str = "sgd";
    // torch's SGD keeps no step count.
    const TORCH_STEP: bool = false;
    const LAZY_MOMENTUM_BUFFER: bool = true;
    const KERNEL: KernelSpec = KernelSpec {
        name: "sgd",
        source: include_str!("../../shaders/sgd.wgsl"),
        shape: KernelShape::ElementWise {
            slots: &["momentum_buffer"],
        },
    };
    type Scalars = SgdScalars;

    fn validate(&self, momentum_buffer: bool) -> Result<()> {
        check_non_negative("lr", self.lr)?;
        check_non_negative("momentum", self.momentum)?;
        super::check_finite("dampening", self.dampening)?;
        check_non_negative("weight_decay", self.weight_decay)?;
        // torch checks `momentum > 0` at construction only: a Nesterov SGD
        // whose momentum was set to 0 later is valid, and steps as plain SGD.
        if self.nesterov && (!momentum_buffer || self.dampening != 0.0) {
            return Err(Error::InvalidOptions(format!(
                "nesterov momentum requires a momentum > 0 and zero dampening (momentum = {}, dampening = {})",
                self.momentum, self.dampening
            )));
        }
        if self.momentum != 0.0 && !momentum_buffer {
            return Err(Error::InvalidOptions(format!(
                "momentum = {} needs a momentum_buffer, and the state has none (built with momentum 0)",
                self.momentum
            )));
        }
        Ok(())
    }

    fn builds_momentum_buffer(&self) -> bool {
        self.momentum != 0.0
    }

    fn state_names(&self, momentum_buffer: bool) -> Vec<&'static str> {
        if momentum_buffer {
            vec!["momentum_buffer"]
        } else {
            vec![]
        }
    }

    super::lr_is_the_field!();

    fn momentum(&self) -> Option<f64> {
        Some(self.momentum)
    }

    fn set_momentum(&mut self, value: f64, has_buffer: bool) -> Result<()> {
        super::set_buffered_momentum(Self::NAME, &mut self.momentum, value, has_buffer)
    }

    fn fills_buffer_on_first_use(&self) -> bool {
        self.momentum != 0.0
    }

    fn overrides(&self, momentum_buffer: bool) -> Vec<(&'static str, f64)> {
        vec![
            ("MAXIMIZE", bool_override(self.maximize)),
            ("NESTEROV", bool_override(self.nesterov)),
            ("HAS_MOMENTUM", bool_override(momentum_buffer)),
        ]
    }

    fn scalars(&self, buffer_filled: bool) -> SgdScalars {
        SgdScalars {
            lr: self.lr as f32,
            momentum: self.momentum as f32,
            one_minus_dampening: (1.0 - self.dampening) as f32,
            weight_decay: self.weight_decay as f32,
            use_momentum: (self.momentum != 0.0) as u32,
            buffer_filled: buffer_filled as u32,
            _pad: [0; 2],
        }
    }

    fn cpu_step(
        &self,
        s: &SgdScalars,
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
            json!({"lr": self.lr, "momentum": self.momentum, "dampening": self.dampening,
            "weight_decay": self.weight_decay, "nesterov": self.nesterov, "maximize": self.maximize,
            "foreach": null, "differentiable": false, "fused": null}),
        )
    }

    fn from_torch(args: &mut TorchArgs<'_>) -> Result<Config> {
        let d = Sgd::default();
        Ok(Sgd {
            lr: args.num("lr", d.lr)?,
            momentum: args.num("momentum", d.momentum)?,
            dampening: args.num("dampening", d.dampening)?,
            weight_decay: args.num("weight_decay", d.weight_decay)?,
            nesterov: args.flag("nesterov", d.nesterov)?,
            maximize: args.flag("maximize", d.maximize)?,
        }
        .into())
    }

    fn presets() -> Vec<Preset> {
        let sgd = Sgd {
            lr: 1e-3,
            ..Sgd::default()
        };
        vec![
            Preset::new("sgd", sgd.clone()),
            Preset::new(
                "sgd_momentum",
                Sgd {
                    momentum: 0.9,
                    ..sgd.clone()
                },
            ),
            Preset::new(
                "nesterov",
                Sgd {
                    momentum: 0.9,
                    nesterov: true,
                    ..sgd
                },
            ),
        ]
    }
}

/// The update of one element; `buf` is the momentum buffer when the
/// optimizer has one.
#[inline(always)]
pub(crate) fn step_element(
    s: &SgdScalars,
    c: &Sgd,
    param: &mut f32,
    grad: f32,
    buf: Option<&mut f32>,
) {
    // Locals in, one store of each out: the loop then vectorizes.
    let p = *param;
    let mut g = if c.maximize { -grad } else { grad };
    if s.weight_decay != 0.0 {
        g += s.weight_decay * p;
    }
    if let (Some(b), true) = (buf, s.use_momentum != 0) {
        let nb = if s.buffer_filled == 0 {
            g
        } else {
            *b * s.momentum + s.one_minus_dampening * g
        };
        *b = nb;
        if c.nesterov {
            g += s.momentum * nb;
        } else {
            g = nb;
        }
    }
    *param = p - s.lr * g;
}

#[inline(always)]
fn step_slice_impl(
    s: &SgdScalars,
    c: &Sgd,
    params: &mut [f32],
    grads: &[f32],
    scales: GradScales,
    states: &mut [&mut [f32]],
) {
    if states.is_empty() {
        super::for_each_element!("sgd", params, grads, scales, states, |p, g| step_element(
            s, c, p, g, None
        ));
    } else {
        super::for_each_element!("sgd", params, grads, scales, states, |p, g, buf| {
            step_element(s, c, p, g, Some(buf))
        });
    }
}

super::multiversion! {
    /// One step over flat slices, vectorized for the processor at hand.
    step_slice = step_slice_impl(
        s: &SgdScalars,
        c: &Sgd,
        params: &mut [f32],
        grads: &[f32],
        scales: GradScales,
        states: &mut [&mut [f32]],
    )
}
