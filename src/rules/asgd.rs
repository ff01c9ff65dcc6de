//! ASGD, as `torch.optim.ASGD`.

use serde_json::{json, Map, Value};

use super::{
    bool_override, check_finite, check_non_negative, elementwise_step, object, Config, GradScales,
    KernelShape, KernelSpec, Preset, Rule, ScalarDtype, ScalarHome, ScalarState, StepEntry,
    TorchArgs,
};
use crate::error::Result;
use crate::layout::Layout;

/// Averaged stochastic gradient descent, as `torch.optim.ASGD` (PyTorch
/// 2.15) computes it. With `t` the step number, `λ` the `lambd`, `ax` the
/// running average of the parameters, `η` (`eta`) and `μ` (`mu`) the step
/// size and the averaging weight, per step:
///
/// ```text
/// g ← −g                          if maximize
/// g ← g + weight_decay·θ          if weight_decay ≠ 0
/// θ ← θ·(1 − λ·η)
/// θ ← θ − η·g
/// ax ← θ                          if μ = 1
/// ax ← ax + (θ − ax)·μ            otherwise
/// then, for the next step, with the lr in force at this one:
/// η ← lr / (1 + λ·lr·t)^α
/// μ ← 1 / max(1, t − t0)
/// ```
///
/// `η` starts at the lr of the first step and `μ` at 1. The step uses the
/// `η` computed at the end of the previous one, so a new learning rate
/// reaches the parameters one step after it is set, as in torch; `μ` is 1
/// (the average is the last iterate) for the first `t0 + 2` steps.
/// Both are history, kept on the host as torch keeps them (float32 numbers
/// per tensor) and carried by checkpoints as `eta` and `mu`
/// ([`crate::Config::scalar_state_names`]). Defaults: `lr = 1e-2`,
/// `lambd = 1e-4`, `alpha = 0.75`, `t0 = 1e6`, `weight_decay = 0`,
/// `maximize = false`.
///
/// Reference: `torch.optim.ASGD` (PyTorch 2.15, `foreach=False`). The
/// averaging is that of Polyak and Juditsky, "Acceleration of Stochastic
/// Approximation by Averaging" (SIAM J. Control Optim., 1992); the step
/// sizes and the start of the averaging at `t0` are Bottou's ("Stochastic
/// Gradient Descent Tricks", 2012), who decays by `λ·θ` as torch does.
/// torch keeps `ax` but never reads it: the parameters follow plain SGD
/// with the decaying `η`, and `ax` is the average to evaluate with.
///
/// Without the decay (`λ = 0`) every step moves by `lr·g`; with `t0 = 1`
/// the average starts at the fourth step, half way between the last
/// average and the parameters:
///
/// ```
/// use wgpu_optim::{Asgd, CpuOptimizer, GpuContext, GpuOptimizer};
/// let asgd = Asgd { lr: 0.1, lambd: 0.0, t0: 1.0, ..Asgd::default() };
/// let mut opt = CpuOptimizer::new(asgd.clone(), &[&[1.0f32]])?;
/// opt.step(&[&[1.0]])?; // θ = ax = 0.9
/// opt.step(&[&[1.0]])?; // θ = ax = 0.8
/// opt.step(&[&[1.0]])?; // θ = ax = 0.7, then μ = 1/(3 − t0)
/// assert_eq!(opt.scalar_state(), vec![("eta", 0.1f32 as f64), ("mu", 0.5)]);
/// opt.step(&[&[1.0]])?; // θ = 0.6, ax = 0.7 + (0.6 − 0.7)·½
/// assert!((opt.param(0)[0] - 0.6).abs() < 1e-6);
/// assert!((opt.state("ax")?[0][0] - 0.65).abs() < 1e-6);
/// // The same steps through the GPU kernel (lavapipe will do) give the
/// // same numbers, to a few units in the last place.
/// let ctx = GpuContext::new()?;
/// let mut gpu = GpuOptimizer::new(&ctx, asgd, &[&[1.0f32]])?;
/// for _ in 0..4 {
///     gpu.step(&[&[1.0f32]])?;
/// }
/// let (on_gpu, ax) = (gpu.read_params()?, gpu.read_state("ax")?);
/// assert!((on_gpu[0][0] - opt.param(0)[0]).abs() <= 1e-6);
/// assert!((ax[0][0] - opt.state("ax")?[0][0]).abs() <= 1e-6);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Asgd {
    /// Learning rate, default 1e-2.
    pub lr: f64,
    /// Decay term `λ`, default 1e-4.
    pub lambd: f64,
    /// Power of the step-size decay, default 0.75.
    pub alpha: f64,
    /// The step after which averaging starts, default 1e6.
    pub t0: f64,
    /// L2 penalty added to the gradient, default 0.
    pub weight_decay: f64,
    /// Maximize the objective instead of minimizing it.
    pub maximize: bool,
}

impl Default for Asgd {
    fn default() -> Self {
        Asgd {
            lr: 1e-2,
            lambd: 1e-4,
            alpha: 0.75,
            t0: 1e6,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

/// Uniforms of `shaders/asgd.wgsl` (`struct Scalars` there; the kernels'
/// tests check that the sizes match).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct AsgdScalars {
    pub weight_decay: f32,
    pub _pad: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<AsgdScalars>() == 16);

impl Rule for Asgd {
    const NAME: &'static str = "asgd";
    const KERNEL: KernelSpec = KernelSpec {
        name: "asgd",
        source: include_str!("../../shaders/asgd.wgsl"),
        shape: KernelShape::ElementWise { slots: &["ax"] },
    };
    type Scalars = AsgdScalars;
    const SCALAR_STATE: &'static [ScalarState] = &[
        ScalarState {
            name: "eta",
            dtype: ScalarDtype::F32,
            home: ScalarHome::Tensor,
        },
        ScalarState {
            name: "mu",
            dtype: ScalarDtype::F32,
            home: ScalarHome::Tensor,
        },
    ];

    /// torch's checks; `t0`, which torch does not check, must be finite
    /// here, as every hyperparameter must.
    fn validate(&self, _momentum_buffer: bool) -> Result<()> {
        check_non_negative("lr", self.lr)?;
        check_non_negative("lambd", self.lambd)?;
        check_non_negative("alpha", self.alpha)?;
        check_non_negative("weight_decay", self.weight_decay)?;
        check_finite("t0", self.t0)?;
        Ok(())
    }
    fn state_names(&self, _momentum_buffer: bool) -> Vec<&'static str> {
        vec!["ax"]
    }
    super::lr_is_the_field!();
    fn overrides(&self, _momentum_buffer: bool) -> Vec<(&'static str, f64)> {
        vec![("MAXIMIZE", bool_override(self.maximize))]
    }
    fn scalars(&self, _buffer_filled: bool) -> AsgdScalars {
        AsgdScalars {
            weight_decay: self.weight_decay as f32,
            _pad: [0; 3],
        }
    }
    /// `[η, μ] = [lr, 1]`, `η` rounded to float32 as torch stores it.
    fn scalar_state_initial(&self) -> Vec<f64> {
        vec![self.lr as f32 as f64, 1.0]
    }
    /// torch's formulas in f64 (with its `**`, `powf`), each result
    /// rounded to float32.
    fn advance_scalar_state(&self, state: &mut [f64], step: u64) {
        let t = step as f64;
        let eta = self.lr / (1.0 + self.lambd * self.lr * t).powf(self.alpha);
        // Python's max(1, x) is 1 unless x > 1.
        let excess = t - self.t0;
        let mu = 1.0 / if excess > 1.0 { excess } else { 1.0 };
        state[0] = eta as f32 as f64;
        state[1] = mu as f32 as f64;
    }
    fn advances_alike(&self, other: &Self) -> bool {
        (self.lr, self.lambd, self.alpha, self.t0) == (other.lr, other.lambd, other.alpha, other.t0)
    }
    /// `[1 − λ·η, −η, μ]`, `1 − λ·η` in f64 from the float32 `η` (torch's
    /// `.item()`).
    fn step_entry_with(&self, _step: u64, state: &[f64]) -> StepEntry {
        let (eta, mu) = (state[0], state[1]);
        [
            (1.0 - self.lambd * eta) as f32,
            (-eta) as f32,
            mu as f32,
            0.0,
        ]
    }
    fn cpu_step(
        &self,
        s: &AsgdScalars,
        entry: StepEntry,
        _layout: &Layout,
        params: &mut [f32],
        grads: &[f32],
        states: &mut [Vec<f32>],
        scales: GradScales,
    ) {
        elementwise_step(params, grads, states, |p, g, st| {
            step_slice(s, entry, self.maximize, p, g, scales, st)
        });
    }
    fn to_torch(&self) -> Map<String, Value> {
        object(
            json!({"lr": self.lr, "lambd": self.lambd, "alpha": self.alpha, "t0": self.t0,
            "weight_decay": self.weight_decay, "maximize": self.maximize,
            "foreach": null, "capturable": false, "differentiable": false}),
        )
    }
    fn from_torch(args: &mut TorchArgs<'_>) -> Result<Config> {
        let d = Asgd::default();
        Ok(Asgd {
            lr: args.num("lr", d.lr)?,
            lambd: args.num("lambd", d.lambd)?,
            alpha: args.num("alpha", d.alpha)?,
            t0: args.num("t0", d.t0)?,
            weight_decay: args.num("weight_decay", d.weight_decay)?,
            maximize: args.flag("maximize", d.maximize)?,
        }
        .into())
    }
    fn presets() -> Vec<Preset> {
        vec![Preset::new("asgd", Asgd::default())]
    }
}

/// One element, as `shaders/asgd.wgsl` computes it.
#[inline(always)]
fn step_element(
    s: &AsgdScalars,
    entry: StepEntry,
    maximize: bool,
    param: &mut f32,
    grad: f32,
    ax: &mut f32,
) {
    let mut p = *param;
    let mut g = if maximize { -grad } else { grad };
    if s.weight_decay != 0.0 {
        g += s.weight_decay * p;
    }
    let [decay, neg_eta, mu, _] = entry;
    p *= decay;
    p += neg_eta * g;
    *param = p;
    // torch copies while μ is 1: ax + (θ − ax)·1 is not θ where ax is
    // infinite, or by rounding.
    *ax = if mu == 1.0 { p } else { *ax + (p - *ax) * mu };
}

#[inline(always)]
fn step_slice_impl(
    s: &AsgdScalars,
    entry: StepEntry,
    maximize: bool,
    params: &mut [f32],
    grads: &[f32],
    scales: GradScales,
    states: &mut [&mut [f32]],
) {
    super::for_each_element!("asgd", params, grads, scales, states, |p, g, ax| {
        step_element(s, entry, maximize, p, g, ax)
    });
}

super::multiversion! {
    /// One step over flat slices, vectorized for the processor at hand.
    step_slice = step_slice_impl(
        s: &AsgdScalars,
        entry: StepEntry,
        maximize: bool,
        params: &mut [f32],
        grads: &[f32],
        scales: GradScales,
        states: &mut [&mut [f32]],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `eta` and `mu` as torch 2.15 keeps them after each of three steps
    /// with `lr = 0.02, t0 = 1` (float32 values it printed), and the lr of
    /// the previous step in `eta`.
    #[test]
    fn eta_and_mu_are_torchs() {
        let asgd = Asgd {
            lr: 0.02,
            t0: 1.0,
            ..Asgd::default()
        };
        let mut state = asgd.scalar_state_initial();
        let torch = [
            (0.019999969750642776, 1.0),
            (0.01999993994832039, 1.0),
            (0.019999910145998, 0.5),
        ];
        for (t, (eta, mu)) in (1..=3).zip(torch) {
            asgd.advance_scalar_state(&mut state, t);
            assert_eq!(state, vec![eta, mu], "after step {t}");
        }
        // Step 4 uses the η step 3 left, whatever the lr in force now.
        let later = Asgd {
            lr: 1.0,
            ..asgd.clone()
        };
        assert_eq!(later.step_entry_with(4, &state)[1], -(torch[2].0 as f32));
        assert!(!asgd.advances_alike(&later));
    }
}
