//! The update rules: their configurations (PyTorch's names and defaults),
//! validation, the per-step scalars shared by the CPU and the GPU, and the
//! CPU reference of each rule written to match its equations.
//!
//! Every rule here is element-wise: one parameter element, its gradient and
//! its state elements in, the same out. The CPU loops and the WGSL kernels
//! both apply the per-element functions below with the same per-step
//! scalars, computed once per step on the host in `f64` and rounded to `f32`.

pub mod adagrad;
pub mod adam;
pub mod lamb;
pub mod rmsprop;
pub mod sgd;

pub use adagrad::Adagrad;
pub use adam::{Adam, AdamW};
pub use lamb::Lamb;
pub use rmsprop::RmsProp;
pub use sgd::Sgd;

use crate::error::{Error, Result};

/// Which update rule a [`Config`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuleKind {
    /// Stochastic gradient descent, with optional (Nesterov) momentum.
    Sgd,
    /// Adagrad.
    Adagrad,
    /// RMSprop.
    RmsProp,
    /// Adam (L2 weight decay).
    Adam,
    /// AdamW (decoupled weight decay).
    AdamW,
    /// LAMB (layer-wise trust ratio).
    Lamb,
}

impl RuleKind {
    /// Every rule, in the order the README lists them.
    pub const ALL: [RuleKind; 6] = [
        RuleKind::Sgd,
        RuleKind::Adagrad,
        RuleKind::RmsProp,
        RuleKind::Adam,
        RuleKind::AdamW,
        RuleKind::Lamb,
    ];

    /// The lower-case name of PyTorch's class (`sgd`, `adagrad`, `rmsprop`,
    /// `adam`, `adamw`), or of Apex's and optax's for LAMB (`lamb`).
    pub fn name(self) -> &'static str {
        match self {
            RuleKind::Sgd => "sgd",
            RuleKind::Adagrad => "adagrad",
            RuleKind::RmsProp => "rmsprop",
            RuleKind::Adam => "adam",
            RuleKind::AdamW => "adamw",
            RuleKind::Lamb => "lamb",
        }
    }

    /// Parses a name as [`RuleKind::name`] writes it (case-insensitive).
    pub fn parse(s: &str) -> Option<RuleKind> {
        RuleKind::ALL
            .into_iter()
            .find(|r| r.name().eq_ignore_ascii_case(s))
    }

    /// The rule with PyTorch's default hyperparameters.
    pub fn default_config(self) -> Config {
        match self {
            RuleKind::Sgd => Config::Sgd(Sgd::default()),
            RuleKind::Adagrad => Config::Adagrad(Adagrad::default()),
            RuleKind::RmsProp => Config::RmsProp(RmsProp::default()),
            RuleKind::Adam => Config::Adam(Adam::default()),
            RuleKind::AdamW => Config::AdamW(AdamW::default()),
            RuleKind::Lamb => Config::Lamb(Lamb::default()),
        }
    }
}

impl std::fmt::Display for RuleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An optimizer's rule and hyperparameters.
#[derive(Clone, Debug, PartialEq)]
pub enum Config {
    /// [`Sgd`].
    Sgd(Sgd),
    /// [`Adagrad`].
    Adagrad(Adagrad),
    /// [`RmsProp`].
    RmsProp(RmsProp),
    /// [`Adam`].
    Adam(Adam),
    /// [`AdamW`].
    AdamW(AdamW),
    /// [`Lamb`].
    Lamb(Lamb),
}

impl From<Sgd> for Config {
    fn from(c: Sgd) -> Self {
        Config::Sgd(c)
    }
}
impl From<Adagrad> for Config {
    fn from(c: Adagrad) -> Self {
        Config::Adagrad(c)
    }
}
impl From<RmsProp> for Config {
    fn from(c: RmsProp) -> Self {
        Config::RmsProp(c)
    }
}
impl From<Adam> for Config {
    fn from(c: Adam) -> Self {
        Config::Adam(c)
    }
}
impl From<AdamW> for Config {
    fn from(c: AdamW) -> Self {
        Config::AdamW(c)
    }
}
impl From<Lamb> for Config {
    fn from(c: Lamb) -> Self {
        Config::Lamb(c)
    }
}

impl Config {
    /// Which rule this is.
    pub fn kind(&self) -> RuleKind {
        match self {
            Config::Sgd(_) => RuleKind::Sgd,
            Config::Adagrad(_) => RuleKind::Adagrad,
            Config::RmsProp(_) => RuleKind::RmsProp,
            Config::Adam(_) => RuleKind::Adam,
            Config::AdamW(_) => RuleKind::AdamW,
            Config::Lamb(_) => RuleKind::Lamb,
        }
    }

    /// Checks every hyperparameter, as `torch.optim` does at construction.
    pub fn validate(&self) -> Result<()> {
        self.validate_with(self.builds_momentum_buffer())
    }

    /// Checks the hyperparameters in force on an optimizer whose state
    /// tensors were fixed when it was built: with `momentum_buffer` (SGD,
    /// RMSprop) it has one, and may have any momentum `>= 0` in force,
    /// 0 included (Nesterov too, as torch checks Nesterov only at
    /// construction); without one its momentum must be 0.
    pub(crate) fn validate_with(&self, momentum_buffer: bool) -> Result<()> {
        match self {
            Config::Sgd(c) => c.validate(momentum_buffer),
            Config::Adagrad(c) => c.validate(),
            Config::RmsProp(c) => c.validate(momentum_buffer),
            Config::Adam(c) => c.validate(),
            Config::AdamW(c) => c.to_adam_family().validate(),
            Config::Lamb(c) => c.validate(),
        }
    }

    /// The names of the state tensors of an optimizer built with this
    /// configuration, as PyTorch names them, in the order the optimizer
    /// stores them. Which exist depends on the options at construction
    /// (SGD has a `momentum_buffer` only with momentum, RMSprop a
    /// `grad_avg` only when centered, Adam a `max_exp_avg_sq` only with
    /// AMSGrad) and stays so for the optimizer's life: a momentum set to 0
    /// later keeps the buffer, as torch keeps it in its `state_dict`. The
    /// optimizers' and checkpoints' own `state_names` say what they hold.
    pub fn state_names(&self) -> Vec<&'static str> {
        self.state_names_with(self.builds_momentum_buffer())
    }

    /// Whether an optimizer built with this configuration has a
    /// `momentum_buffer`: SGD with `momentum != 0`, RMSprop with
    /// `momentum > 0`, as torch allocates one.
    pub(crate) fn builds_momentum_buffer(&self) -> bool {
        match self {
            Config::Sgd(c) => c.momentum != 0.0,
            Config::RmsProp(c) => c.momentum > 0.0,
            _ => false,
        }
    }

    /// The state tensors of this rule with its options fixed at
    /// construction, with or without a `momentum_buffer` (SGD, RMSprop;
    /// the other rules ignore `momentum_buffer`).
    pub(crate) fn state_names_with(&self, momentum_buffer: bool) -> Vec<&'static str> {
        match self {
            Config::Sgd(_) if momentum_buffer => vec!["momentum_buffer"],
            Config::Sgd(_) => vec![],
            Config::Adagrad(_) => vec!["sum"],
            Config::RmsProp(c) => c.state_names(momentum_buffer),
            Config::Adam(c) => c.state_names(),
            Config::AdamW(c) => c.to_adam_family().state_names(),
            Config::Lamb(_) => vec!["exp_avg", "exp_avg_sq"],
        }
    }

    /// The value each state tensor starts with (Adagrad's
    /// `initial_accumulator_value`; zero for everything else).
    pub(crate) fn state_initial_value(&self, _name: &str) -> f32 {
        match self {
            Config::Adagrad(c) => c.initial_accumulator_value as f32,
            _ => 0.0,
        }
    }

    /// The learning rate in force.
    pub fn lr(&self) -> f64 {
        match self {
            Config::Sgd(c) => c.lr,
            Config::Adagrad(c) => c.lr,
            Config::RmsProp(c) => c.lr,
            Config::Adam(c) => c.lr,
            Config::AdamW(c) => c.lr,
            Config::Lamb(c) => c.lr,
        }
    }

    /// Sets the learning rate for the following steps.
    pub(crate) fn set_lr(&mut self, lr: f64) -> Result<()> {
        check_non_negative("lr", lr)?;
        match self {
            Config::Sgd(c) => c.lr = lr,
            Config::Adagrad(c) => c.lr = lr,
            Config::RmsProp(c) => c.lr = lr,
            Config::Adam(c) => c.lr = lr,
            Config::AdamW(c) => c.lr = lr,
            Config::Lamb(c) => c.lr = lr,
        }
        Ok(())
    }

    /// The momentum in force: SGD's and RMSprop's `momentum`, the Adam
    /// family's `betas[0]`; `None` for Adagrad.
    pub fn momentum(&self) -> Option<f64> {
        match self {
            Config::Sgd(c) => Some(c.momentum),
            Config::Adagrad(_) => None,
            Config::RmsProp(c) => Some(c.momentum),
            Config::Adam(c) => Some(c.betas.0),
            Config::AdamW(c) => Some(c.betas.0),
            Config::Lamb(c) => Some(c.betas.0),
        }
    }

    /// Sets the momentum (or `beta1`) for the following steps. Only rules
    /// built with a momentum buffer can change it: `has_buffer` says
    /// whether the optimizer has one.
    ///
    /// Fix: this used to test the momentum in force (`c.momentum == 0.0`)
    /// instead, so once set to 0 (as a `CyclicLr` with `base_momentum: 0.0`
    /// does) the momentum could never be raised again, although the buffer
    /// is still there and PyTorch carries on with it.
    pub(crate) fn set_momentum(&mut self, value: f64, has_buffer: bool) -> Result<()> {
        match self {
            Config::Sgd(c) => {
                if !has_buffer {
                    return Err(Error::NoMomentum { rule: "sgd" });
                }
                check_non_negative("momentum", value)?;
                c.momentum = value;
            }
            Config::RmsProp(c) => {
                if !has_buffer {
                    return Err(Error::NoMomentum { rule: "rmsprop" });
                }
                check_non_negative("momentum", value)?;
                c.momentum = value;
            }
            Config::Adam(c) => {
                check_unit_interval("betas[0]", value)?;
                c.betas.0 = value;
            }
            Config::AdamW(c) => {
                check_unit_interval("betas[0]", value)?;
                c.betas.0 = value;
            }
            Config::Lamb(c) => {
                check_unit_interval("betas[0]", value)?;
                c.betas.0 = value;
            }
            Config::Adagrad(_) => {
                return Err(Error::NoMomentum { rule: "adagrad" });
            }
        }
        Ok(())
    }
}

/// Per-step scalars, one struct per rule family, laid out for the WGSL
/// uniform buffer (`#[repr(C)]`, 16-byte multiple).
#[derive(Clone, Copy, Debug)]
pub(crate) enum StepScalars {
    Sgd(sgd::SgdScalars),
    Adagrad(adagrad::AdagradScalars),
    RmsProp(rmsprop::RmsPropScalars),
    Adam(adam::AdamScalars),
    Lamb(lamb::LambScalars),
}

impl StepScalars {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            StepScalars::Sgd(s) => bytemuck::bytes_of(s),
            StepScalars::Adagrad(s) => bytemuck::bytes_of(s),
            StepScalars::RmsProp(s) => bytemuck::bytes_of(s),
            StepScalars::Adam(s) => bytemuck::bytes_of(s),
            StepScalars::Lamb(s) => bytemuck::bytes_of(s),
        }
    }
}

impl Config {
    /// The scalars of step number `step` (1 for the first step).
    /// `momentum_initialized` is false until SGD's momentum buffer has been
    /// filled once (PyTorch fills it with the gradient on its first use).
    pub(crate) fn step_scalars(&self, step: u64, momentum_initialized: bool) -> StepScalars {
        match self {
            Config::Sgd(c) => StepScalars::Sgd(c.scalars(momentum_initialized)),
            Config::Adagrad(c) => StepScalars::Adagrad(c.scalars(step)),
            Config::RmsProp(c) => StepScalars::RmsProp(c.scalars()),
            Config::Adam(c) => StepScalars::Adam(c.scalars(step)),
            Config::AdamW(c) => StepScalars::Adam(c.to_adam_family().scalars(step)),
            Config::Lamb(c) => StepScalars::Lamb(c.scalars(step)),
        }
    }

    /// The boolean options fixed for the optimizer's life, as the WGSL
    /// `override` constants of the rule's kernel. `HAS_MOMENTUM` says
    /// whether the state has a `momentum_buffer`, not whether the momentum
    /// in force is 0 (the uniforms' `use_momentum` says that, per step).
    pub(crate) fn overrides(&self, momentum_buffer: bool) -> Vec<(&'static str, f64)> {
        let b = |x: bool| if x { 1.0 } else { 0.0 };
        match self {
            Config::Sgd(c) => vec![
                ("MAXIMIZE", b(c.maximize)),
                ("NESTEROV", b(c.nesterov)),
                ("HAS_MOMENTUM", b(momentum_buffer)),
            ],
            Config::Adagrad(c) => vec![
                ("MAXIMIZE", b(c.maximize)),
                ("EPS_INSIDE_SQRT", b(c.eps_inside_sqrt)),
            ],
            Config::RmsProp(c) => vec![
                ("MAXIMIZE", b(c.maximize)),
                ("EPS_INSIDE_SQRT", b(c.eps_inside_sqrt)),
                ("CENTERED", b(c.centered)),
                ("HAS_MOMENTUM", b(momentum_buffer)),
            ],
            Config::Adam(c) => c.overrides(),
            Config::AdamW(c) => c.to_adam_family().overrides(),
            Config::Lamb(c) => vec![
                ("MAXIMIZE", b(c.maximize)),
                ("EPS_INSIDE_SQRT", b(c.eps_inside_sqrt)),
            ],
        }
    }

    /// Which WGSL file runs this rule.
    pub(crate) fn shader(&self) -> (&'static str, &'static str) {
        match self {
            Config::Sgd(_) => ("sgd", include_str!("../../shaders/sgd.wgsl")),
            Config::Adagrad(_) => ("adagrad", include_str!("../../shaders/adagrad.wgsl")),
            Config::RmsProp(_) => ("rmsprop", include_str!("../../shaders/rmsprop.wgsl")),
            Config::Adam(_) | Config::AdamW(_) => ("adam", include_str!("../../shaders/adam.wgsl")),
            Config::Lamb(_) => ("lamb", include_str!("../../shaders/lamb.wgsl")),
        }
    }

    /// Bytes one step must read and write per parameter (f32 everywhere):
    /// parameter read + write, gradient read, each state tensor read + write.
    /// LAMB moves more (its trust ratio needs a second pass over θ, m and v:
    /// 40 bytes); this is the one-pass minimum, the same for every
    /// implementation, so GB/s compare.
    pub fn bytes_per_param(&self) -> usize {
        4 * (3 + 2 * self.state_names().len())
    }
}

/// Applies one step of the rule to flat slices: `params`, `grads` and one
/// slice per state tensor in [`Config::state_names`] order, all the same
/// length. Runs on all cores (rayon) over independent chunks; the arithmetic
/// of each element does not depend on the chunking.
pub(crate) fn cpu_step(
    scalars: &StepScalars,
    config: &Config,
    params: &mut [f32],
    grads: &[f32],
    states: &mut [Vec<f32>],
) {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 15;
    let n = params.len();
    if n == 0 {
        return;
    }
    let mut state_chunks: Vec<std::slice::ChunksMut<'_, f32>> =
        states.iter_mut().map(|s| s.chunks_mut(CHUNK)).collect();
    type Work<'a> = (&'a mut [f32], &'a [f32], Vec<&'a mut [f32]>);
    let mut work: Vec<Work<'_>> = Vec::new();
    for (p, g) in params.chunks_mut(CHUNK).zip(grads.chunks(CHUNK)) {
        let st: Vec<&mut [f32]> = state_chunks
            .iter_mut()
            .map(|it| it.next().expect("state lengths equal the parameters'"))
            .collect();
        work.push((p, g, st));
    }
    let run = |(p, g, mut st): (&mut [f32], &[f32], Vec<&mut [f32]>)| match (scalars, config) {
        (StepScalars::Sgd(s), Config::Sgd(c)) => sgd::step_slice(s, c, p, g, &mut st),
        (StepScalars::Adagrad(s), Config::Adagrad(c)) => adagrad::step_slice(s, c, p, g, &mut st),
        (StepScalars::RmsProp(s), Config::RmsProp(c)) => rmsprop::step_slice(s, c, p, g, &mut st),
        (StepScalars::Adam(s), Config::Adam(c)) => {
            adam::step_slice(s, &c.to_family(false), p, g, &mut st)
        }
        (StepScalars::Adam(s), Config::AdamW(c)) => {
            adam::step_slice(s, &c.to_adam_family(), p, g, &mut st)
        }
        (StepScalars::Lamb(_), _) => unreachable!("LAMB steps per tensor: lamb::cpu_step"),
        _ => unreachable!("scalars are always made from the same config"),
    };
    if n >= 4 * CHUNK {
        work.into_par_iter().for_each(run);
    } else {
        work.into_iter().for_each(run);
    }
}

/// Defines `$name` as `$imp` compiled three times: for AVX-512, for AVX2
/// and for the baseline, choosing at run time (one binary runs everywhere).
/// `$imp` and the element function it calls are `#[inline(always)]`, so
/// they are compiled inside the functions with the wider target features
/// and their loops vectorize. The results are bit-for-bit those of the
/// baseline: vector `+ − × ÷ sqrt` round exactly as the scalar ones,
/// compares and selects are exact, and Rust never contracts `a·b + c` into
/// a fused multiply-add.
macro_rules! multiversion {
    ($(#[$doc:meta])* $name:ident = $imp:ident($($arg:ident : $ty:ty),* $(,)?)) => {
        $(#[$doc])*
        pub(crate) fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) {
                    $imp($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) {
                    $imp($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the processor has AVX-512F.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the processor has AVX2.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $imp($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// `1 − βᵗ` in f64, the bias correction of step `t` (1 for the first):
/// `−expm1(t·ln β)` keeps its digits for β close to 1 and t large; β = 0
/// gives 1.
pub(crate) fn bias_correction(beta: f64, step: u64) -> f64 {
    if beta == 0.0 {
        1.0
    } else {
        -(step as f64 * beta.ln()).exp_m1()
    }
}

pub(crate) fn check_finite(name: &'static str, v: f64) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Error::InvalidHyperparameter {
            name,
            value: v,
            reason: "must be finite",
        })
    }
}

pub(crate) fn check_non_negative(name: &'static str, v: f64) -> Result<()> {
    check_finite(name, v)?;
    if v < 0.0 {
        return Err(Error::InvalidHyperparameter {
            name,
            value: v,
            reason: "must be >= 0",
        });
    }
    Ok(())
}

pub(crate) fn check_unit_interval(name: &'static str, v: f64) -> Result<()> {
    check_finite(name, v)?;
    if !(0.0..1.0).contains(&v) {
        return Err(Error::InvalidHyperparameter {
            name,
            value: v,
            reason: "must be in [0, 1)",
        });
    }
    Ok(())
}

/// `torch.lerp(start, end, weight)` in f32, as PyTorch's CPU kernel computes
/// it (the two-sided form that is exact at both ends). The WGSL kernels
/// contain the same function.
#[inline(always)]
pub(crate) fn lerp(start: f32, end: f32, weight: f32) -> f32 {
    if weight.abs() < 0.5 {
        start + weight * (end - start)
    } else {
        end - (end - start) * (1.0 - weight)
    }
}

/// `torch.maximum(a, b)` in f32: NaN when either is NaN, else the larger
/// (`a` when they are equal). `f32::max` would return the other operand of
/// a NaN. Two compares and a select, so loops over it vectorize, and every
/// build (AVX-512, AVX2, baseline) picks the same operand bit for bit.
#[inline(always)]
pub(crate) fn maximum(a: f32, b: f32) -> f32 {
    if (b > a) | b.is_nan() {
        b
    } else {
        a
    }
}

/// `torch.clamp(x, min, max)` in f32 for `min <= max`: NaN stays NaN
/// (`f32::max`/`f32::min` would turn it into a bound).
#[inline(always)]
pub(crate) fn clamp(x: f32, min: f32, max: f32) -> f32 {
    let x = if x < min { min } else { x };
    if x > max {
        max
    } else {
        x
    }
}

/// The factor a loss-scaled gradient is multiplied by, as torch's
/// `GradScaler` computes it: the scale rounded to `f32`, its reciprocal
/// taken in `f64` and rounded to `f32` (`scale.double().reciprocal().float()`).
/// Refuses a scale that is not finite and positive in `f32`, or whose
/// reciprocal is not (a denormal scale).
pub(crate) fn inverse_grad_scale(scale: f64) -> Result<f32> {
    let s32 = scale as f32;
    let inv = (1.0 / s32 as f64) as f32;
    if !(scale.is_finite() && scale > 0.0 && s32.is_finite() && s32 > 0.0 && inv.is_finite()) {
        return Err(Error::InvalidHyperparameter {
            name: "grad_scale",
            value: scale,
            reason: "must be finite and > 0 in f32, with a finite reciprocal",
        });
    }
    Ok(inv)
}
