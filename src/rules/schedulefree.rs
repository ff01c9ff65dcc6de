//! Schedule-free SGD and AdamW, as the `schedulefree` package computes them.

use serde_json::{json, Map, Value};

use super::{
    check_finite, check_non_negative, elementwise_step, lerp, object, Config, GradScales,
    KernelShape, KernelSpec, Preset, Rule, ScalarDtype, ScalarHome, ScalarState, StepEntry,
    TorchArgs,
};
use crate::error::{Error, Result};
use crate::layout::Layout;

/// The group-level history both rules keep, as the package keeps it in
/// `param_groups` (Python floats): the steps taken `k`, the largest
/// scheduled lr so far `lr_max` (−1 before the first step) and the sum of
/// the averaging weights `weight_sum`.
const GROUP_STATE: &[ScalarState] = &[
    ScalarState {
        name: "k",
        dtype: ScalarDtype::F64,
        home: ScalarHome::Group,
    },
    ScalarState {
        name: "lr_max",
        dtype: ScalarDtype::F64,
        home: ScalarHome::Group,
    },
    ScalarState {
        name: "weight_sum",
        dtype: ScalarDtype::F64,
        home: ScalarHome::Group,
    },
];

/// The package's values before the first step: `k = 0`, `lr_max = −1`,
/// `weight_sum = 0`.
fn group_state_initial() -> Vec<f64> {
    vec![0.0, -1.0, 0.0]
}

/// The hyperparameters the schedule and the averaging weights read.
#[derive(Clone, Copy, PartialEq)]
struct Averaging {
    lr: f64,
    warmup_steps: u64,
    r: f64,
    weight_lr_power: f64,
}

/// One step's scalars, in f64 as the package computes them in Python.
struct StepScalars {
    /// The warmup-scheduled lr.
    lr: f64,
    /// `lr_max` and `weight_sum` after this step.
    lr_max: f64,
    weight_sum: f64,
    /// `weight / weight_sum`, the weight of `z` in `y`'s interpolation.
    ckp1: f64,
}

impl Averaging {
    /// The step whose history before it is `state` (`[k, lr_max, weight_sum]`).
    fn step(&self, state: &[f64]) -> StepScalars {
        let (k, lr_max, weight_sum) = (state[0], state[1], state[2]);
        let sched = if k < self.warmup_steps as f64 {
            (k + 1.0) / self.warmup_steps as f64
        } else {
            1.0
        };
        let lr = self.lr * sched;
        // Python's max(lr, lr_max) is lr unless lr_max is larger.
        let lr_max = if lr_max > lr { lr_max } else { lr };
        let weight = (k + 1.0).powf(self.r) * lr_max.powf(self.weight_lr_power);
        let weight_sum = weight_sum + weight;
        // The package catches the ZeroDivisionError of a zero sum as 0.
        let ckp1 = if weight_sum == 0.0 {
            0.0
        } else {
            weight / weight_sum
        };
        StepScalars {
            lr,
            lr_max,
            weight_sum,
            ckp1,
        }
    }

    fn advance(&self, state: &mut [f64]) {
        let s = self.step(state);
        state[0] += 1.0;
        state[1] = s.lr_max;
        state[2] = s.weight_sum;
    }

    fn check(&self) -> Result<()> {
        check_non_negative("lr", self.lr)?;
        check_finite("r", self.r)?;
        check_finite("weight_lr_power", self.weight_lr_power)?;
        Ok(())
    }
}

/// `warmup_steps` of a case file or checkpoint: a count (Python's int).
fn warmup_steps(args: &mut TorchArgs<'_>, default: u64) -> Result<u64> {
    let v = args.num("warmup_steps", default as f64)?;
    if v >= 0.0 && v.fract() == 0.0 && v <= u32::MAX as f64 {
        Ok(v as u64)
    } else {
        Err(args.error(format!("warmup_steps must be a count, got {v}")))
    }
}

/// The package's `train_mode` and `scheduled_lr` of a checkpoint: the
/// first must be true (the parameters are then `y`, the point this crate
/// keeps), the second is for logging and is dropped.
fn train_mode_keys(args: &mut TorchArgs<'_>) -> Result<()> {
    if args.optional_flag("train_mode")? == Some(false) {
        return Err(args.error(
            "train_mode is false: the parameters are the averaged x; save the \
             checkpoint after optimizer.train()"
                .into(),
        ));
    }
    args.nullable_num("scheduled_lr", None)?;
    Ok(())
}

/// The first `β` (SGD's `momentum`, AdamW's `betas[0]`): in [0, 1). The
/// package's SGD refuses 0 at construction only (and its AdamW never);
/// here 0 is a valid step, plain SGD on `z` with `y = z`, and only eval
/// mode, which divides by it, refuses it ([`crate::CpuOptimizer::set_eval`]).
fn check_beta1(name: &'static str, v: f64) -> Result<()> {
    super::check_unit_interval(name, v)
}

/// Eval mode's check of `β1`: `x = (y − (1 − β1)·z)/β1` needs `β1 > 0`.
pub(crate) fn check_eval_beta1(beta1: f64) -> Result<()> {
    if beta1 > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidHyperparameter {
            name: "betas[0]",
            value: beta1,
            reason: "must be > 0 in eval mode (x = (y − (1 − β1)·z)/β1)",
        })
    }
}

/// The interpolation weights of `z` that switch the parameters between
/// train mode's `y` and eval mode's `x = (y − (1 − β1)·z)/β1`: to eval
/// `lerp(y, z, 1 − 1/β1)`, to train `lerp(x, z, 1 − β1)`, each weight in
/// f64 rounded to f32 as torch's `lerp_` takes a Python float.
pub(crate) fn mode_switch_weight(beta1: f64, to_eval: bool) -> f32 {
    if to_eval {
        (1.0 - 1.0 / beta1) as f32
    } else {
        (1.0 - beta1) as f32
    }
}

/// Schedule-free SGD, as `schedulefree.SGDScheduleFree` (schedulefree
/// 1.4.1) computes it in train mode. The parameters are the point `y` at
/// which gradients are taken; `z` is the SGD iterate and `x` the average
/// the package evaluates at (see [`crate::CpuOptimizer::set_eval`]). With
/// `k` the steps taken before this one, `β` the `momentum`, per step, the
/// scalars in f64 on the host:
///
/// ```text
/// lr_k = lr·min(1, (k+1)/warmup_steps)      (lr when warmup_steps = 0)
/// lr_max ← max(lr_k, lr_max)
/// w = (k+1)^r · lr_max^weight_lr_power
/// weight_sum ← weight_sum + w
/// c = w / weight_sum                        (0 when weight_sum = 0)
/// z ← y                                     on the first step
/// g ← g + weight_decay·y                    if weight_decay ≠ 0
/// y ← lerp(y, z, c) + lr_k·(β·(1 − c) − 1)·g
/// z ← z − lr_k·g
/// ```
///
/// `y` then is `(1 − β)·z + β·x` with `x ← (1 − c)·x + c·z`, the paper's
/// averaged iterate, without `x` being stored. `k`, `lr_max` and
/// `weight_sum` are history (an lr changed by `set_lr` stays in `lr_max`):
/// the optimizers keep them on the host as the package keeps them in its
/// parameter group, and checkpoints carry them there
/// ([`crate::Config::scalar_state_names`]). Defaults: `lr = 1`,
/// `momentum = 0.9`, `weight_decay = 0`, `warmup_steps = 0`, `r = 0`,
/// `weight_lr_power = 2`.
///
/// Reference: `schedulefree.SGDScheduleFree` 1.4.1 (the PyTorch class, not
/// the "Reference" one); the method of Defazio, Yang, Mehta, Mishchenko,
/// Khaled and Cutkosky, "The Road Less Scheduled" (NeurIPS 2024). The
/// paper's weights are `c = 1/(k+1)` without warmup; the package's
/// `lr_max^weight_lr_power` weighting of warmup steps is its own, as is
/// weight decay taken at `y`.
///
/// The first step (`c = 1`) moves `y` and `z` alike by `lr·g`; `x`, the
/// average of the `z`s, is then `z` too:
///
/// ```
/// use wgpu_optim::{CpuOptimizer, GpuContext, GpuOptimizer, SgdScheduleFree};
/// let sf = SgdScheduleFree { lr: 0.5, ..SgdScheduleFree::default() };
/// let mut opt = CpuOptimizer::new(sf.clone(), &[&[1.0f32, 2.0]])?;
/// opt.step(&[&[1.0, -1.0]])?;
/// let θ = opt.param(0);
/// assert_eq!(θ, &[0.5, 2.5][..]);
/// assert_eq!(opt.state("z")?[0], vec![0.5, 2.5]);
/// assert_eq!(opt.scalar_state(), vec![("k", 1.0), ("lr_max", 0.5), ("weight_sum", 0.25)]);
/// // The same step through the GPU kernel (lavapipe will do).
/// let ctx = GpuContext::new()?;
/// let mut gpu = GpuOptimizer::new(&ctx, sf, &[&[1.0f32, 2.0]])?;
/// gpu.step(&[&[1.0f32, -1.0]])?;
/// let on_gpu = gpu.read_params()?;
/// for (a, b) in on_gpu[0].iter().zip(opt.param(0)) {
///     assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0));
/// }
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct SgdScheduleFree {
    /// Learning rate, default 1.
    pub lr: f64,
    /// `β`, the interpolation between `z` and `x` (in [0, 1); eval mode
    /// needs it > 0), default 0.9.
    pub momentum: f64,
    /// L2 penalty added to the gradient (taken at `y`), default 0.
    pub weight_decay: f64,
    /// Steps of linear lr warmup, default 0 (none).
    pub warmup_steps: u64,
    /// Power of the polynomial weighting `(k+1)^r` of the average, default 0.
    pub r: f64,
    /// Power of `lr_max` in the averaging weights, default 2.
    pub weight_lr_power: f64,
}

impl Default for SgdScheduleFree {
    fn default() -> Self {
        SgdScheduleFree {
            lr: 1.0,
            momentum: 0.9,
            weight_decay: 0.0,
            warmup_steps: 0,
            r: 0.0,
            weight_lr_power: 2.0,
        }
    }
}

impl SgdScheduleFree {
    fn averaging(&self) -> Averaging {
        Averaging {
            lr: self.lr,
            warmup_steps: self.warmup_steps,
            r: self.r,
            weight_lr_power: self.weight_lr_power,
        }
    }
}

/// Uniforms of `shaders/schedulefree_sgd.wgsl` (`struct Scalars` there; the
/// kernels' tests check that the sizes match).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct SgdScheduleFreeScalars {
    pub weight_decay: f32,
    pub _pad: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<SgdScheduleFreeScalars>() == 16);

/// The entry both rules share: `[c, lr_k·(β1·(1 − c) − 1), lr_k, w]`, `w`
/// the AdamW bias correction `1 − β2^(k+1)` (1 for SGD), negated on the
/// first step (`k = 0`), when `z` is to be set to `y` first.
fn entry(avg: Averaging, beta1: f64, bias_correction2: f64, state: &[f64]) -> StepEntry {
    let s = avg.step(state);
    let first = state[0] == 0.0;
    [
        s.ckp1 as f32,
        (s.lr * (beta1 * (1.0 - s.ckp1) - 1.0)) as f32,
        s.lr as f32,
        if first {
            -bias_correction2 as f32
        } else {
            bias_correction2 as f32
        },
    ]
}

impl Rule for SgdScheduleFree {
    const NAME: &'static str = "schedulefree_sgd";
    // The package keeps no per-tensor step; `k` (scalar state) counts.
    const TORCH_STEP: bool = false;
    const KERNEL: KernelSpec = KernelSpec {
        name: "schedulefree_sgd",
        source: include_str!("../../shaders/schedulefree_sgd.wgsl"),
        shape: KernelShape::ElementWise { slots: &["z"] },
    };
    type Scalars = SgdScheduleFreeScalars;
    const SCALAR_STATE: &'static [ScalarState] = GROUP_STATE;

    /// The package's checks (lr ≥ 0, weight_decay ≥ 0), momentum in
    /// [0, 1) (see [`check_beta1`]), and `r`, `weight_lr_power` finite.
    fn validate(&self, _momentum_buffer: bool) -> Result<()> {
        self.averaging().check()?;
        check_beta1("momentum", self.momentum)?;
        check_non_negative("weight_decay", self.weight_decay)?;
        Ok(())
    }
    fn state_names(&self, _momentum_buffer: bool) -> Vec<&'static str> {
        vec!["z"]
    }
    super::lr_is_the_field!();
    fn momentum(&self) -> Option<f64> {
        Some(self.momentum)
    }
    fn set_momentum(&mut self, value: f64, _has_buffer: bool) -> Result<()> {
        check_beta1("momentum", value)?;
        self.momentum = value;
        Ok(())
    }
    fn eval_beta1(&self) -> Option<f64> {
        Some(self.momentum)
    }
    fn overrides(&self, _momentum_buffer: bool) -> Vec<(&'static str, f64)> {
        vec![]
    }
    fn scalars(&self, _buffer_filled: bool) -> SgdScheduleFreeScalars {
        SgdScheduleFreeScalars {
            weight_decay: self.weight_decay as f32,
            _pad: [0; 3],
        }
    }
    fn scalar_state_initial(&self) -> Vec<f64> {
        group_state_initial()
    }
    fn advance_scalar_state(&self, state: &mut [f64], _step: u64) {
        self.averaging().advance(state);
    }
    fn advances_alike(&self, other: &Self) -> bool {
        self.averaging() == other.averaging()
    }
    /// See [`entry`]; the step number is `k + 1` of the state.
    fn step_entry_with(&self, _step: u64, state: &[f64]) -> StepEntry {
        entry(self.averaging(), self.momentum, 1.0, state)
    }
    fn cpu_step(
        &self,
        s: &SgdScheduleFreeScalars,
        entry: StepEntry,
        _layout: &Layout,
        params: &mut [f32],
        grads: &[f32],
        states: &mut [Vec<f32>],
        scales: GradScales,
    ) {
        elementwise_step(params, grads, states, |p, g, st| {
            sgd_slice(s, entry, p, g, scales, st)
        });
    }
    fn to_torch(&self) -> Map<String, Value> {
        object(
            json!({"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
            "warmup_steps": self.warmup_steps, "r": self.r,
            "weight_lr_power": self.weight_lr_power, "train_mode": true,
            "scheduled_lr": null, "foreach": true}),
        )
    }
    fn from_torch(args: &mut TorchArgs<'_>) -> Result<Config> {
        let d = SgdScheduleFree::default();
        train_mode_keys(args)?;
        Ok(SgdScheduleFree {
            lr: args.num("lr", d.lr)?,
            momentum: args.num("momentum", d.momentum)?,
            weight_decay: args.num("weight_decay", d.weight_decay)?,
            warmup_steps: warmup_steps(args, d.warmup_steps)?,
            r: args.num("r", d.r)?,
            weight_lr_power: args.num("weight_lr_power", d.weight_lr_power)?,
        }
        .into())
    }
    fn presets() -> Vec<Preset> {
        vec![Preset::new("schedulefree_sgd", SgdScheduleFree::default())]
    }
}

/// Schedule-free AdamW, as `schedulefree.AdamWScheduleFree` (schedulefree
/// 1.4.1) computes it in train mode: schedule-free averaging (see
/// [`SgdScheduleFree`], with `β1` for its `momentum`) of steps normalized
/// by Adam's second moment `v` (`exp_avg_sq`), without a first moment.
/// Per step, after the scalars of [`SgdScheduleFree`] (`lr_k`, `c`):
///
/// ```text
/// z ← y                                     on the first step
/// v ← β2·v + (1 − β2)·g²
/// u = g / (sqrt(v / (1 − β2^(k+1))) + eps)
/// u ← u + weight_decay·y                    if weight_decay ≠ 0
/// y ← lerp(y, z, c) + lr_k·(β1·(1 − c) − 1)·u
/// z ← z − lr_k·u
/// ```
///
/// The bias correction is computed on the host in f64 from `k`, which with
/// `lr_max` and `weight_sum` is the scalar state kept as the package keeps
/// it in its parameter group. Defaults: `lr = 0.0025`,
/// `betas = (0.9, 0.999)`, `eps = 1e-8`, `weight_decay = 0`,
/// `warmup_steps = 0`, `r = 0`, `weight_lr_power = 2`.
///
/// Reference: `schedulefree.AdamWScheduleFree` 1.4.1 (the PyTorch class, not
/// the "Reference" one); Defazio et al., "The Road Less Scheduled" (NeurIPS
/// 2024). The package's decay is added to the normalized step at `y`
/// (decoupled from `v`), where the paper's algorithm decays at `y` too;
/// the package does not check its hyperparameters, this crate checks them
/// as usual (`β1` in [0, 1); eval mode, which divides by it, needs it > 0).
///
/// ```
/// use wgpu_optim::{AdamWScheduleFree, CpuOptimizer, GpuContext, GpuOptimizer};
/// let sf = AdamWScheduleFree { lr: 0.1, ..AdamWScheduleFree::default() };
/// let mut opt = CpuOptimizer::new(sf.clone(), &[&[1.0f32, 2.0]])?;
/// // The first step normalizes g to ±1 (up to eps) and moves y by lr·u.
/// opt.step(&[&[3.0, -0.5]])?;
/// let θ = opt.param(0);
/// assert!((θ[0] - 0.9).abs() < 1e-6 && (θ[1] - 2.1).abs() < 1e-6);
/// let ctx = GpuContext::new()?;
/// let mut gpu = GpuOptimizer::new(&ctx, sf, &[&[1.0f32, 2.0]])?;
/// gpu.step(&[&[3.0f32, -0.5]])?;
/// let on_gpu = gpu.read_params()?;
/// for (a, b) in on_gpu[0].iter().zip(opt.param(0)) {
///     assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0));
/// }
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWScheduleFree {
    /// Learning rate, default 0.0025.
    pub lr: f64,
    /// `(β1, β2)`, default `(0.9, 0.999)`: `β1` interpolates between `z`
    /// and `x`, `β2` averages `g²`.
    pub betas: (f64, f64),
    /// Added to the denominator, default 1e-8.
    pub eps: f64,
    /// Weight decay, taken at `y` and added to the normalized step, default 0.
    pub weight_decay: f64,
    /// Steps of linear lr warmup, default 0 (none).
    pub warmup_steps: u64,
    /// Power of the polynomial weighting `(k+1)^r` of the average, default 0.
    pub r: f64,
    /// Power of `lr_max` in the averaging weights, default 2.
    pub weight_lr_power: f64,
}

impl Default for AdamWScheduleFree {
    fn default() -> Self {
        AdamWScheduleFree {
            lr: 0.0025,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 0,
            r: 0.0,
            weight_lr_power: 2.0,
        }
    }
}

impl AdamWScheduleFree {
    fn averaging(&self) -> Averaging {
        Averaging {
            lr: self.lr,
            warmup_steps: self.warmup_steps,
            r: self.r,
            weight_lr_power: self.weight_lr_power,
        }
    }
}

/// Uniforms of `shaders/schedulefree_adamw.wgsl` (`struct Scalars` there;
/// the kernels' tests check that the sizes match).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct AdamWScheduleFreeScalars {
    pub beta2: f32,
    pub one_minus_beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}
const _: () = assert!(std::mem::size_of::<AdamWScheduleFreeScalars>() == 16);

impl Rule for AdamWScheduleFree {
    const NAME: &'static str = "schedulefree_adamw";
    const TORCH_STEP: bool = false;
    const KERNEL: KernelSpec = KernelSpec {
        name: "schedulefree_adamw",
        source: include_str!("../../shaders/schedulefree_adamw.wgsl"),
        shape: KernelShape::ElementWise {
            slots: &["z", "exp_avg_sq"],
        },
    };
    type Scalars = AdamWScheduleFreeScalars;
    const SCALAR_STATE: &'static [ScalarState] = GROUP_STATE;

    fn validate(&self, _momentum_buffer: bool) -> Result<()> {
        self.averaging().check()?;
        check_non_negative("eps", self.eps)?;
        check_beta1("betas[0]", self.betas.0)?;
        super::check_unit_interval("betas[1]", self.betas.1)?;
        check_non_negative("weight_decay", self.weight_decay)?;
        Ok(())
    }
    fn state_names(&self, _momentum_buffer: bool) -> Vec<&'static str> {
        vec!["z", "exp_avg_sq"]
    }
    super::lr_is_the_field!();
    fn momentum(&self) -> Option<f64> {
        Some(self.betas.0)
    }
    fn set_momentum(&mut self, value: f64, _has_buffer: bool) -> Result<()> {
        check_beta1("betas[0]", value)?;
        self.betas.0 = value;
        Ok(())
    }
    fn eval_beta1(&self) -> Option<f64> {
        Some(self.betas.0)
    }
    fn overrides(&self, _momentum_buffer: bool) -> Vec<(&'static str, f64)> {
        vec![]
    }
    fn scalars(&self, _buffer_filled: bool) -> AdamWScheduleFreeScalars {
        AdamWScheduleFreeScalars {
            beta2: self.betas.1 as f32,
            one_minus_beta2: (1.0 - self.betas.1) as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
        }
    }
    fn scalar_state_initial(&self) -> Vec<f64> {
        group_state_initial()
    }
    fn advance_scalar_state(&self, state: &mut [f64], _step: u64) {
        self.averaging().advance(state);
    }
    fn advances_alike(&self, other: &Self) -> bool {
        self.averaging() == other.averaging()
    }
    /// See [`entry`]; `1 − β2^(k+1)` with Python's `**` (`powf`).
    fn step_entry_with(&self, _step: u64, state: &[f64]) -> StepEntry {
        let bias_correction2 = 1.0 - self.betas.1.powf(state[0] + 1.0);
        entry(self.averaging(), self.betas.0, bias_correction2, state)
    }
    fn cpu_step(
        &self,
        s: &AdamWScheduleFreeScalars,
        entry: StepEntry,
        _layout: &Layout,
        params: &mut [f32],
        grads: &[f32],
        states: &mut [Vec<f32>],
        scales: GradScales,
    ) {
        elementwise_step(params, grads, states, |p, g, st| {
            adamw_slice(s, entry, p, g, scales, st)
        });
    }
    fn to_torch(&self) -> Map<String, Value> {
        object(
            json!({"lr": self.lr, "betas": [self.betas.0, self.betas.1], "eps": self.eps,
            "weight_decay": self.weight_decay, "warmup_steps": self.warmup_steps, "r": self.r,
            "weight_lr_power": self.weight_lr_power, "train_mode": true,
            "scheduled_lr": null, "foreach": true}),
        )
    }
    fn from_torch(args: &mut TorchArgs<'_>) -> Result<Config> {
        let d = AdamWScheduleFree::default();
        train_mode_keys(args)?;
        Ok(AdamWScheduleFree {
            lr: args.num("lr", d.lr)?,
            betas: args.betas(d.betas)?,
            eps: args.num("eps", d.eps)?,
            weight_decay: args.num("weight_decay", d.weight_decay)?,
            warmup_steps: warmup_steps(args, d.warmup_steps)?,
            r: args.num("r", d.r)?,
            weight_lr_power: args.num("weight_lr_power", d.weight_lr_power)?,
        }
        .into())
    }
    fn presets() -> Vec<Preset> {
        vec![Preset::new(
            "schedulefree_adamw",
            AdamWScheduleFree::default(),
        )]
    }
}

/// One element of schedule-free SGD, as `shaders/schedulefree_sgd.wgsl`
/// computes it, in the package's order.
#[inline(always)]
fn sgd_element(
    s: &SgdScheduleFreeScalars,
    entry: StepEntry,
    param: &mut f32,
    grad: f32,
    z: &mut f32,
) {
    let [ckp1, y_coef, lr, first] = entry;
    let y = *param;
    let z0 = if first < 0.0 { y } else { *z };
    let mut g = grad;
    if s.weight_decay != 0.0 {
        g += s.weight_decay * y;
    }
    *param = lerp(y, z0, ckp1) + y_coef * g;
    *z = z0 - lr * g;
}

/// One element of schedule-free AdamW, as
/// `shaders/schedulefree_adamw.wgsl` computes it, in the package's order
/// (`addcmul` is `v + (value·g)·g`).
#[inline(always)]
fn adamw_element(
    s: &AdamWScheduleFreeScalars,
    entry: StepEntry,
    param: &mut f32,
    grad: f32,
    z: &mut f32,
    exp_avg_sq: &mut f32,
) {
    let [ckp1, y_coef, lr, signed_bc2] = entry;
    let y = *param;
    let z0 = if signed_bc2 < 0.0 { y } else { *z };
    let v = *exp_avg_sq * s.beta2 + s.one_minus_beta2 * grad * grad;
    *exp_avg_sq = v;
    let denom = (v / signed_bc2.abs()).sqrt() + s.eps;
    let mut u = grad / denom;
    if s.weight_decay != 0.0 {
        u += s.weight_decay * y;
    }
    *param = lerp(y, z0, ckp1) + y_coef * u;
    *z = z0 - lr * u;
}

#[inline(always)]
fn sgd_slice_impl(
    s: &SgdScheduleFreeScalars,
    entry: StepEntry,
    params: &mut [f32],
    grads: &[f32],
    scales: GradScales,
    states: &mut [&mut [f32]],
) {
    super::for_each_element!(
        "schedulefree_sgd",
        params,
        grads,
        scales,
        states,
        |p, g, z| { sgd_element(s, entry, p, g, z) }
    );
}

#[inline(always)]
fn adamw_slice_impl(
    s: &AdamWScheduleFreeScalars,
    entry: StepEntry,
    params: &mut [f32],
    grads: &[f32],
    scales: GradScales,
    states: &mut [&mut [f32]],
) {
    super::for_each_element!(
        "schedulefree_adamw",
        params,
        grads,
        scales,
        states,
        |p, g, z, v| { adamw_element(s, entry, p, g, z, v) }
    );
}

super::multiversion! {
    /// One step of schedule-free SGD over flat slices.
    sgd_slice = sgd_slice_impl(
        s: &SgdScheduleFreeScalars,
        entry: StepEntry,
        params: &mut [f32],
        grads: &[f32],
        scales: GradScales,
        states: &mut [&mut [f32]],
    )
}

super::multiversion! {
    /// One step of schedule-free AdamW over flat slices.
    adamw_slice = adamw_slice_impl(
        s: &AdamWScheduleFreeScalars,
        entry: StepEntry,
        params: &mut [f32],
        grads: &[f32],
        scales: GradScales,
        states: &mut [&mut [f32]],
    )
}

/// Switches `params` between `y` and `x` in place (see
/// [`mode_switch_weight`]), as the package's `eval()`/`train()` do:
/// `p ← lerp(p, z, weight)`, the same function as the GPU's
/// `shaders/schedulefree_mode.wgsl`.
pub(crate) fn switch_mode(params: &mut [f32], z: &[f32], weight: f32) {
    for (p, &z) in params.iter_mut().zip(z) {
        *p = lerp(*p, z, weight);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The package's group values after three default SGD steps with
    /// warmup 2 (lr 0.5, 1, 1): lr_max 1, weight_sum 0.25 + 1 + 1.
    #[test]
    fn group_history_is_the_packages() {
        let sf = SgdScheduleFree {
            warmup_steps: 2,
            ..SgdScheduleFree::default()
        };
        let mut state = sf.scalar_state_initial();
        let mut ckp1 = Vec::new();
        for t in 1..=3 {
            ckp1.push(sf.step_entry_with(t, &state)[0]);
            sf.advance_scalar_state(&mut state, t);
        }
        assert_eq!(state, vec![3.0, 1.0, 2.25]);
        assert_eq!(
            ckp1,
            vec![1.0, (1.0f64 / 1.25) as f32, (1.0f64 / 2.25) as f32]
        );
        // A smaller lr later keeps lr_max: the weights stay lr_max².
        let later = SgdScheduleFree {
            lr: 0.1,
            ..sf.clone()
        };
        later.advance_scalar_state(&mut state, 4);
        assert_eq!(state, vec![4.0, 1.0, 3.25]);
        assert!(!sf.advances_alike(&later));
        // Only the first step sets z from y.
        assert!(sf.step_entry_with(1, &sf.scalar_state_initial())[3] < 0.0);
        assert!(sf.step_entry_with(4, &state)[3] > 0.0);
    }
}
