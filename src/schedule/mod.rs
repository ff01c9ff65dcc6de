//! Learning-rate (and momentum) schedules with the semantics of PyTorch's
//! `torch.optim.lr_scheduler` (PyTorch 2.15): the same parameter names, the
//! same defaults, the same value for every step, computed on the host in
//! `f64` with the same operations in the same order as PyTorch's Python code,
//! so that a sequence matches the one torch records bit for bit where both
//! use the same libm (every value of the recorded sequences does on Linux;
//! the tests require 1e-12 relative).
//!
//! A [`Schedule`] is a pure description; [`Schedule::lr_at`] and
//! [`Schedule::momentum_at`] give the values in force for optimizer step
//! number `step` (0 for the first step). A [`Scheduler`] binds a schedule to
//! an optimizer's base learning rate and momentum and keeps a position that
//! can be saved and restored:
//!
//! ```
//! use wgpu_optim::schedule::{Schedule, Scheduler};
//! use wgpu_optim::{CpuOptimizer, Sgd};
//! let mut opt = CpuOptimizer::new(Sgd { lr: 0.1, momentum: 0.9, ..Sgd::default() }, &[&[1.0f32; 4]])?;
//! let mut sched = Scheduler::for_config(Schedule::Step { step_size: 2, gamma: 0.5 }, opt.config())?;
//! for _ in 0..5 {
//!     sched.apply(&mut opt)?; // the lr (and momentum) of this step
//!     opt.step(&[&[0.1; 4]])?;
//!     sched.advance(); // as torch's scheduler.step() after optimizer.step()
//! }
//! assert_eq!(sched.position(), 5);
//! assert_eq!(sched.lr(), 0.025); // 0.1 · 0.5 · 0.5 from step 4 on
//! # Ok::<(), wgpu_optim::Error>(())
//! ```
//!
//! # PyTorch's semantics, as reproduced here
//!
//! * **Step 0.** A torch scheduler takes an initial step in its constructor
//!   (`last_epoch` becomes 0) and the training loop calls
//!   `scheduler.step()` *after* each `optimizer.step()`. So the first
//!   optimizer step runs with the value at epoch 0 — the base lr for
//!   `StepLR`, `ExponentialLR` and `CosineAnnealingLR`,
//!   `base_lr · start_factor` for `LinearLR`, `base_lr` (the schedule's,
//!   not the optimizer's) for `CyclicLR`, `max_lr / div_factor` for
//!   `OneCycleLR` — and step `n` runs with the value at epoch `n`.
//!   Here position `n` is the value in force for optimizer step `n`.
//!   `ConstantLR` starts at `base_lr · factor`, `PolynomialLR`,
//!   `MultiplicativeLR` and `ReduceLROnPlateau` at the base lr, `LambdaLR`
//!   at `base_lr · lr_lambda(0)` and `CosineAnnealingWarmRestarts` at its
//!   closed form `eta_min + (base − eta_min)·(1 + cos 0)/2`.
//! * **Chainable (recursive) forms.** `StepLR`, `MultiStepLR`,
//!   `ExponentialLR`, `LinearLR` and `CosineAnnealingLR` compute each value
//!   from the previous one (`get_lr`), not from their closed forms. The two
//!   agree mathematically but not bit for bit: `StepLR` multiplies by
//!   `gamma` once per decay (not `gamma**k`), `ExponentialLR` once per
//!   step, `LinearLR` by a ratio each step, and `CosineAnnealingLR` by
//!   `(1 + cos(π·e/T)) / (1 + cos(π·(e−1)/T))` each step. On the recorded
//!   sequences the closed forms stray from torch's values by up to about
//!   2e-14 relative (cosine, `T_max` = 10 to 1000, up to 3100 steps), and
//!   can drift further on longer runs; replaying the recursive forms
//!   exactly as torch runs them (same operations, same order, the same
//!   libm `cos` and `pow`) gives torch's values bit for bit on every
//!   recorded sequence. So the values depend on the whole history:
//!   [`Schedule::lr_at`] replays from step 0 (up to `O(step)`, a few
//!   nanoseconds a step), while [`Scheduler::advance`] is `O(1)`. Past
//!   `T_max` the cosine schedule continues as torch's does (back up towards
//!   the base lr, period `2·T_max`).
//!   `ConstantLR` and `PolynomialLR` are chainable too (`ConstantLR`
//!   multiplies by `1 / factor` at `total_iters`, `PolynomialLR` by
//!   `((1 − e/T) / (1 − (e−1)/T))^power` each step), as is
//!   `MultiplicativeLR` (the previous lr times `lr_lambda(e)`).
//! * **`SequentialLR`.** The sub-schedule in force at step `s` is the one
//!   after the last milestone `≤ s` (`bisect_right`). The first sub-schedule
//!   (the second after a milestone 0, which skips the first) starts with its
//!   initial step; each later one starts, at its milestone,
//!   from its *closed form at epoch 0* computed from the optimizer's base
//!   lr (`_update_lr(0)`), then runs its recursive form from its local epoch
//!   1 on. For `CosineAnnealingLR` that first value is
//!   `eta_min + (base − eta_min)·(1 + cos 0)/2`, which can differ from the
//!   base lr in the last bit; it is reproduced. The kinds without a closed
//!   form start from their `get_lr` at epoch 0: `LambdaLR` at
//!   `base · lr_lambda(0)`, `MultiplicativeLR` at the lr in force before
//!   the milestone times `lr_lambda(0)`.
//! * **`ChainedScheduler`.** torch's schedulers share the optimizer's lr:
//!   each one's initial step (at construction, in the list's order) and
//!   each `step()` reads the lr the one before it left. So the chain's
//!   value is the composition of its schedules' recursive forms in the
//!   list's order, one rounding each, and not the product of their closed
//!   forms: `[ConstantLR(0.5, 10), MultiStepLR([20], 0.3)]` is
//!   `(base · 0.5) · (1 / 0.5)` from step 10 and that times 0.3 from step
//!   20. A schedule that sets the lr from the base lr alone (`LambdaLR`,
//!   `CosineAnnealingWarmRestarts`) discards what the ones before it did.
//! * **`CosineAnnealingWarmRestarts`** is torch's closed form of `T_cur`
//!   (steps since the last restart) and `T_i` (this period's length), both
//!   as torch's step-by-step `step()` counts them: integers, exact.
//! * **`LambdaLR` and `MultiplicativeLR`** call a Rust closure
//!   ([`LrLambda`]) with the local epoch (`u64`), as torch calls
//!   `lr_lambda(last_epoch)`. A closure is code: JSON cannot carry it
//!   ([`Schedule::to_json`] writes the kind alone, [`Schedule::from_json`]
//!   refuses it), and a checkpoint saves the scheduler's position and lr
//!   without it and restores it only from a schedule rebuilt in code
//!   ([`crate::checkpoint::SchedulerState`]). A closure whose factor makes
//!   the lr negative or NaN is refused when the lr is applied to the
//!   optimizer ([`Scheduler::apply`]).
//! * **`ReduceLROnPlateau`** is driven by a metric, not by the step
//!   ([`ReduceLrOnPlateau`], [`Scheduler::advance_with_metric`]); its state
//!   (`best`, `num_bad_epochs`, `cooldown_counter`) is the [`Scheduler`]'s
//!   and travels in checkpoints exactly.
//! * **`CyclicLR` and `OneCycleLR`** are closed forms of the step. Both
//!   *overwrite* the optimizer's lr at construction (the optimizer's own lr
//!   is never used) and, with `cycle_momentum`, its momentum (SGD's and
//!   RMSprop's `momentum`, Adam's and AdamW's `betas[0]`), which moves
//!   inversely to the lr: `max_momentum` where the lr is lowest.
//! * **`OneCycleLR` past its end.** torch computes one more value at step
//!   `total_steps` (extrapolating the last phase; negative with
//!   `anneal_strategy = "linear"`) and raises on the step after. Here the
//!   schedule holds its final value (`initial_lr / final_div_factor` and
//!   `max_momentum` for the cosine anneal) for every step
//!   `≥ total_steps − 1`.
//!
//! # Checks
//!
//! [`Schedule::validate`] refuses what PyTorch refuses (`LinearLR`'s and
//! `ConstantLR`'s factors, `OneCycleLR`'s `pct_start` outside `[0, 1]` and
//! `total_steps` 0, `SequentialLR`'s number of milestones,
//! `CosineAnnealingWarmRestarts`' `T_0` and `T_mult` below 1,
//! `ReduceLROnPlateau`'s `factor >= 1`, empty `SequentialLR` and
//! `ChainedScheduler`) and what would make torch divide by zero or is
//! certainly a mistake: a zero `step_size`, `T_max`, `total_iters` (torch
//! accepts `LinearLR(total_iters=0)` and then holds `start_factor` for
//! ever) or cycle half, a `ConstantLR` factor 0 (torch divides by it at
//! `total_iters`), a negative `PolynomialLR` power (torch divides by zero at
//! `total_iters`), `pct_start · total_steps = 1` (an empty first phase), a
//! `max_lr` below `base_lr`, a `max_momentum` below `base_momentum`, a
//! negative `gamma`, lr, `eta_min`, `min_lr`, `eps`, `threshold` or
//! `ReduceLROnPlateau` `factor`, a `threshold >= 1` in `min` mode with
//! `rel` (no loss could improve), a non-positive `div_factor` or
//! `final_div_factor`, unsorted milestones, NaN or infinity anywhere.
//!
//! `SequentialLR` takes [`Schedule::Constant`] and the kinds whose value
//! follows from the base lr, the step and the previous value as its
//! sub-schedules: `StepLR`, `MultiStepLR`, `ExponentialLR`,
//! `CosineAnnealingLR`, `LinearLR`, `ConstantLR`, `PolynomialLR`,
//! `CosineAnnealingWarmRestarts`, `LambdaLR`, `MultiplicativeLR`.
//! `ChainedScheduler` takes the same kinds and nested `ChainedScheduler`s,
//! but not `Constant` (no scheduler, nothing to chain). Neither takes
//! `CyclicLR` or `OneCycleLR` (they rewrite the optimizer's lr and momentum
//! at construction, which makes torch's result depend on the order the
//! schedulers were built in) or `ReduceLROnPlateau` (torch refuses it: it
//! needs a metric); `SequentialLR` takes no nested `SequentialLR` or
//! `ChainedScheduler` (torch fails at their milestone: no epoch-0 form),
//! `ChainedScheduler` no `SequentialLR` (which puts the base lr back at
//! construction, undoing the schedules built before it).

use crate::error::{Error, Result};
use crate::rules::Config;
use serde_json::{Map, Value};
use std::f64::consts::PI;

mod checks;
use checks::{
    check_at_least_one, check_finite, check_momenta, check_non_negative, check_positive,
    repeat_multiply,
};
mod cyclic;
mod groups;
mod json;
use json::{parse_json, parse_map};
mod lambda;
mod plateau;
mod scheduler;

pub use cyclic::{AnnealStrategy, CyclicLr, CyclicMode, OneCycleLr};
pub(crate) use groups::group_element;
pub use groups::GroupScheduler;
pub use lambda::LrLambda;
pub use plateau::{PlateauMode, PlateauState, ReduceLrOnPlateau, ThresholdMode};
pub use scheduler::Scheduler;

/// A learning-rate schedule: which `torch.optim.lr_scheduler` and its
/// keyword arguments (PyTorch's names, in snake case: `T_max` is `t_max`).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Schedule {
    /// No scheduler: the optimizer's base lr at every step (torch's
    /// `LambdaLR(lambda _: 1.0)` inside a `SequentialLR`). Not torch's
    /// `ConstantLR`, which is [`Schedule::ConstantFactor`]. JSON kind `none`.
    Constant,
    /// `StepLR`: the lr is multiplied by `gamma` every `step_size` steps.
    Step {
        /// Steps between two decays (`>= 1`).
        step_size: u64,
        /// Multiplicative factor (torch's default 0.1; `>= 0`).
        gamma: f64,
    },
    /// `MultiStepLR`: the lr is multiplied by `gamma` at each milestone
    /// (once per occurrence: a milestone listed twice multiplies by
    /// `gamma²`, as torch's `Counter` does; a milestone 0 applies to the
    /// very first step).
    MultiStep {
        /// Steps at which the lr decays, sorted (non-decreasing).
        milestones: Vec<u64>,
        /// Multiplicative factor (torch's default 0.1; `>= 0`).
        gamma: f64,
    },
    /// `ExponentialLR`: the lr is multiplied by `gamma` every step.
    Exponential {
        /// Multiplicative factor per step (`>= 0`).
        gamma: f64,
    },
    /// `CosineAnnealingLR`: from the base lr down to `eta_min` over
    /// `t_max` steps along half a cosine, then back up (period `2·t_max`).
    CosineAnnealing {
        /// torch's `T_max`: half the period, in steps (`>= 1`).
        t_max: u64,
        /// The lowest lr (torch's default 0; `>= 0`).
        eta_min: f64,
    },
    /// `LinearLR`: the factor of the base lr goes linearly from
    /// `start_factor` to `end_factor` over `total_iters` steps, then stays
    /// (the usual warmup: `start_factor` small, `end_factor` 1).
    Linear {
        /// Factor at step 0, in `(0, 1]` (torch's default 1/3).
        start_factor: f64,
        /// Factor from step `total_iters` on, in `[0, 1]` (torch's default 1).
        end_factor: f64,
        /// Steps of the ramp (`>= 1`; torch's default 5).
        total_iters: u64,
    },
    /// `ConstantLR`: the lr is multiplied by `factor` for the first
    /// `total_iters` steps, then divided by it again (torch multiplies by
    /// `1 / factor`, which can differ from the base lr in the last bit).
    /// Unlike [`Schedule::Constant`] (no scheduler), it changes the lr.
    /// JSON kind `constant`.
    ConstantFactor {
        /// The factor, in `(0, 1]` (torch's default 1/3; torch accepts 0
        /// and then divides by zero at `total_iters`).
        factor: f64,
        /// Steps with the factor (`>= 1`; torch's default 5).
        total_iters: u64,
    },
    /// `PolynomialLR`: the lr goes from the base lr to 0 as
    /// `(1 − step/total_iters)^power`, reached at `total_iters` and kept
    /// (computed as torch does, as a ratio of consecutive factors each step).
    Polynomial {
        /// Steps to 0 (`>= 1`; torch's default 5).
        total_iters: u64,
        /// The power (`>= 0`; torch's default 1: linear). A negative power
        /// makes torch divide by zero at `total_iters`.
        power: f64,
    },
    /// `CosineAnnealingWarmRestarts` (SGDR): a cosine from the base lr down
    /// towards `eta_min` over `t_0` steps, then back at the base lr (a warm
    /// restart) for a cosine `t_mult` times longer, and so on. A closed form
    /// of the step, as torch's is.
    CosineAnnealingWarmRestarts {
        /// torch's `T_0`: steps to the first restart (`>= 1`).
        t_0: u64,
        /// torch's `T_mult`: each period's length over the previous one's
        /// (`>= 1`; torch's default 1).
        t_mult: u64,
        /// The lowest lr (torch's default 0; `>= 0`).
        eta_min: f64,
    },
    /// `LambdaLR`: the base lr times `lr_lambda(step)`. JSON and checkpoints
    /// cannot carry the closure ([`LrLambda`]).
    Lambda(LrLambda),
    /// `MultiplicativeLR`: from step 1 on, the previous lr times
    /// `lr_lambda(step)` (the base lr at step 0). JSON and checkpoints
    /// cannot carry the closure ([`LrLambda`]).
    Multiplicative(LrLambda),
    /// `SequentialLR`: `schedules[0]` until `milestones[0]`, then
    /// `schedules[1]` restarted at its epoch 0, and so on.
    Sequential {
        /// The sub-schedules, in order (at least one; see the [module
        /// docs](self#checks) for the kinds allowed).
        schedules: Vec<Schedule>,
        /// The steps at which the next sub-schedule starts: one fewer than
        /// `schedules`, strictly increasing. A first milestone 0 skips
        /// `schedules[0]` and starts `schedules[1]` with its own initial
        /// step, as torch does.
        milestones: Vec<u64>,
    },
    /// `ChainedScheduler`: every schedule steps, in the list's order, on
    /// the lr the one before it left (torch's schedulers share the
    /// optimizer's lr): `ConstantLR(0.5)` then `MultiStepLR` halves the
    /// multi-step lr until `total_iters`. A schedule that sets the lr from
    /// the base lr alone (`LambdaLR`, `CosineAnnealingWarmRestarts`)
    /// overwrites what the ones before it did, as in torch.
    Chained {
        /// The schedules, in order (at least one; see the [module
        /// docs](self#checks) for the kinds allowed).
        schedules: Vec<Schedule>,
    },
    /// `CyclicLR` (with `cycle_momentum`, also cycles the momentum).
    Cyclic(CyclicLr),
    /// `OneCycleLR` (with `cycle_momentum`, also cycles the momentum).
    OneCycle(OneCycleLr),
    /// `ReduceLROnPlateau`: driven by a metric
    /// ([`Scheduler::advance_with_metric`]), not by the step.
    ReduceOnPlateau(ReduceLrOnPlateau),
}

impl Schedule {
    /// `LinearLR(start_factor, end_factor = 1, total_iters = warmup_steps)`
    /// then `CosineAnnealingLR(T_max = t_max, eta_min)`, chained by
    /// `SequentialLR(milestones = [warmup_steps])`: the usual warmup then
    /// cosine decay. With `warmup_steps = 0` it is the cosine alone.
    pub fn warmup_cosine(start_factor: f64, warmup_steps: u64, t_max: u64, eta_min: f64) -> Self {
        if warmup_steps == 0 {
            return Schedule::CosineAnnealing { t_max, eta_min };
        }
        Schedule::Sequential {
            schedules: vec![
                Schedule::Linear {
                    start_factor,
                    end_factor: 1.0,
                    total_iters: warmup_steps,
                },
                Schedule::CosineAnnealing { t_max, eta_min },
            ],
            milestones: vec![warmup_steps],
        }
    }

    /// `LambdaLR(lr_lambda = f)`.
    pub fn lambda(f: impl Fn(u64) -> f64 + Send + Sync + 'static) -> Self {
        Schedule::Lambda(LrLambda::new(f))
    }

    /// `MultiplicativeLR(lr_lambda = f)`.
    pub fn multiplicative(f: impl Fn(u64) -> f64 + Send + Sync + 'static) -> Self {
        Schedule::Multiplicative(LrLambda::new(f))
    }

    /// torch's class name (`StepLR`, `CyclicLR`, ...; `Constant` for no scheduler).
    pub fn torch_name(&self) -> &'static str {
        match self {
            Schedule::Constant => "Constant",
            Schedule::Step { .. } => "StepLR",
            Schedule::MultiStep { .. } => "MultiStepLR",
            Schedule::Exponential { .. } => "ExponentialLR",
            Schedule::CosineAnnealing { .. } => "CosineAnnealingLR",
            Schedule::Linear { .. } => "LinearLR",
            Schedule::ConstantFactor { .. } => "ConstantLR",
            Schedule::Polynomial { .. } => "PolynomialLR",
            Schedule::CosineAnnealingWarmRestarts { .. } => "CosineAnnealingWarmRestarts",
            Schedule::Lambda(_) => "LambdaLR",
            Schedule::Multiplicative(_) => "MultiplicativeLR",
            Schedule::Sequential { .. } => "SequentialLR",
            Schedule::Chained { .. } => "ChainedScheduler",
            Schedule::Cyclic(_) => "CyclicLR",
            Schedule::OneCycle(_) => "OneCycleLR",
            Schedule::ReduceOnPlateau(_) => "ReduceLROnPlateau",
        }
    }

    /// Checks every parameter (see the [module docs](self) for the rules).
    pub fn validate(&self) -> Result<()> {
        match self {
            Schedule::Constant | Schedule::Lambda(_) | Schedule::Multiplicative(_) => Ok(()),
            Schedule::Step { step_size, gamma } => {
                check_at_least_one("step_size", *step_size)?;
                check_non_negative("gamma", *gamma)
            }
            Schedule::MultiStep { milestones, gamma } => {
                check_non_negative("gamma", *gamma)?;
                if let Some(w) = milestones.windows(2).find(|w| w[1] < w[0]) {
                    return Err(Error::InvalidOptions(format!(
                        "MultiStepLR: milestones must be sorted, but {} comes after {}",
                        w[1], w[0]
                    )));
                }
                Ok(())
            }
            Schedule::Exponential { gamma } => check_non_negative("gamma", *gamma),
            Schedule::CosineAnnealing { t_max, eta_min } => {
                check_at_least_one("T_max", *t_max)?;
                check_non_negative("eta_min", *eta_min)
            }
            Schedule::Linear {
                start_factor,
                end_factor,
                total_iters,
            } => {
                check_finite("start_factor", *start_factor)?;
                if !(*start_factor > 0.0 && *start_factor <= 1.0) {
                    return Err(Error::InvalidHyperparameter {
                        name: "start_factor",
                        value: *start_factor,
                        reason: "must be in (0, 1]",
                    });
                }
                check_finite("end_factor", *end_factor)?;
                if !(0.0..=1.0).contains(end_factor) {
                    return Err(Error::InvalidHyperparameter {
                        name: "end_factor",
                        value: *end_factor,
                        reason: "must be in [0, 1]",
                    });
                }
                check_at_least_one("total_iters", *total_iters)
            }
            Schedule::ConstantFactor {
                factor,
                total_iters,
            } => {
                check_finite("factor", *factor)?;
                if !(*factor > 0.0 && *factor <= 1.0) {
                    return Err(Error::InvalidHyperparameter {
                        name: "factor",
                        value: *factor,
                        reason: "must be in (0, 1]",
                    });
                }
                check_at_least_one("total_iters", *total_iters)
            }
            Schedule::Polynomial { total_iters, power } => {
                check_at_least_one("total_iters", *total_iters)?;
                check_non_negative("power", *power)
            }
            Schedule::CosineAnnealingWarmRestarts {
                t_0,
                t_mult,
                eta_min,
            } => {
                check_at_least_one("T_0", *t_0)?;
                check_at_least_one("T_mult", *t_mult)?;
                check_non_negative("eta_min", *eta_min)
            }
            Schedule::Sequential {
                schedules,
                milestones,
            } => {
                if schedules.is_empty() {
                    return Err(Error::InvalidOptions(
                        "SequentialLR expects at least one scheduler, but got none".into(),
                    ));
                }
                if milestones.len() + 1 != schedules.len() {
                    return Err(Error::InvalidOptions(format!(
                        "SequentialLR expects one milestone fewer than schedulers, but got {} \
                         schedulers and {} milestones",
                        schedules.len(),
                        milestones.len()
                    )));
                }
                if let Some(w) = milestones.windows(2).find(|w| w[1] <= w[0]) {
                    return Err(Error::InvalidOptions(format!(
                        "SequentialLR: milestones must be strictly increasing, but {} comes after {}",
                        w[1], w[0]
                    )));
                }
                for (i, s) in schedules.iter().enumerate() {
                    if !s.fits_in_sequential() {
                        return Err(Error::InvalidOptions(format!(
                            "SequentialLR: scheduler {i} is a {}, which cannot be chained \
                             (only Constant and the kinds with a chainable form can: StepLR, \
                             MultiStepLR, ExponentialLR, CosineAnnealingLR, LinearLR, ConstantLR, \
                             PolynomialLR, CosineAnnealingWarmRestarts, LambdaLR, MultiplicativeLR)",
                            s.torch_name()
                        )));
                    }
                    s.validate()?;
                }
                Ok(())
            }
            Schedule::Chained { schedules } => {
                if schedules.is_empty() {
                    return Err(Error::InvalidOptions(
                        "ChainedScheduler expects at least one scheduler to be chained, but got none"
                            .into(),
                    ));
                }
                for (i, s) in schedules.iter().enumerate() {
                    if !(s.fits_in_sequential() || matches!(s, Schedule::Chained { .. }))
                        || matches!(s, Schedule::Constant)
                    {
                        return Err(Error::InvalidOptions(format!(
                            "ChainedScheduler: scheduler {i} is a {}, which cannot be chained \
                             (only StepLR, MultiStepLR, ExponentialLR, CosineAnnealingLR, LinearLR, \
                             ConstantLR, PolynomialLR, CosineAnnealingWarmRestarts, LambdaLR, \
                             MultiplicativeLR and ChainedScheduler can; Constant, no scheduler, \
                             has nothing to add to a chain)",
                            s.torch_name()
                        )));
                    }
                    s.validate()?;
                }
                Ok(())
            }
            Schedule::Cyclic(c) => c.validate(),
            Schedule::OneCycle(c) => c.validate(),
            Schedule::ReduceOnPlateau(p) => p.validate(),
        }
    }

    /// Whether `self` may be a sub-schedule of `SequentialLR`: a kind whose
    /// value follows from the base lr, the local epoch and the previous
    /// value alone (`CyclicLR` and `OneCycleLR` rewrite the optimizer's lr
    /// and momentum at construction, `ReduceLROnPlateau` needs a metric,
    /// torch fails on a nested `SequentialLR` or `ChainedScheduler` at a
    /// milestone).
    fn fits_in_sequential(&self) -> bool {
        !matches!(
            self,
            Schedule::Sequential { .. }
                | Schedule::Chained { .. }
                | Schedule::Cyclic(_)
                | Schedule::OneCycle(_)
                | Schedule::ReduceOnPlateau(_)
        )
    }

    /// Whether the schedule drives the momentum (`CyclicLR` and `OneCycleLR`
    /// with `cycle_momentum`).
    pub fn cycles_momentum(&self) -> bool {
        match self {
            Schedule::Cyclic(c) => c.cycle_momentum,
            Schedule::OneCycle(c) => c.cycle_momentum,
            _ => false,
        }
    }

    /// Whether the optimizer's lr is ignored (`CyclicLR` and `OneCycleLR`
    /// set their own).
    pub fn overrides_lr(&self) -> bool {
        matches!(self, Schedule::Cyclic(_) | Schedule::OneCycle(_))
    }

    /// Whether the values depend on metrics rather than on the step
    /// (`ReduceLROnPlateau`: [`Scheduler::advance_with_metric`]).
    pub fn needs_metric(&self) -> bool {
        matches!(self, Schedule::ReduceOnPlateau(_))
    }

    /// Whether the schedule holds a closure (`LambdaLR`,
    /// `MultiplicativeLR`), which JSON and checkpoints cannot carry.
    pub fn has_closure(&self) -> bool {
        match self {
            Schedule::Lambda(_) | Schedule::Multiplicative(_) => true,
            Schedule::Sequential { schedules, .. } | Schedule::Chained { schedules } => {
                schedules.iter().any(Schedule::has_closure)
            }
            _ => false,
        }
    }

    /// Whether a closure is a checkpoint's stand-in (see [`LrLambda`]).
    pub(crate) fn has_placeholder(&self) -> bool {
        match self {
            Schedule::Lambda(f) | Schedule::Multiplicative(f) => f.is_placeholder(),
            Schedule::Sequential { schedules, .. } | Schedule::Chained { schedules } => {
                schedules.iter().any(Schedule::has_placeholder)
            }
            _ => false,
        }
    }

    /// The learning rate in force for optimizer step `step` (0 for the first
    /// step), for an optimizer whose own lr is `base_lr`. Replays the
    /// chainable kinds from step 0: `O(step)` for `CosineAnnealingLR`,
    /// `MultiplicativeLR` and `ChainedScheduler` (a few nanoseconds a step,
    /// and a call of the closure), `O(step)` until the value stops changing
    /// for `ExponentialLR` and `StepLR`, at most `total_iters` steps for
    /// `LinearLR` and `PolynomialLR`, one per milestone for `MultiStepLR`;
    /// `ConstantLR`, `LambdaLR`, `CyclicLR`, `OneCycleLR` and `Constant`
    /// are `O(1)`, `CosineAnnealingWarmRestarts` `O(1)` with `T_mult = 1`
    /// and `O(log step)` otherwise. `ReduceLROnPlateau` depends on metrics,
    /// not on the step: this is `base_lr`, its lr before any metric
    /// ([`Scheduler::lr`] is the one in force). The schedule is assumed
    /// valid ([`Schedule::validate`]).
    pub fn lr_at(&self, base_lr: f64, step: u64) -> f64 {
        self.local_lr(base_lr, self.initial_lr(base_lr, base_lr), step)
    }

    /// The momentum in force for optimizer step `step`: the cycled value for
    /// `CyclicLR` and `OneCycleLR` with `cycle_momentum`, else the
    /// optimizer's own `base_momentum` (`None` for an optimizer without one).
    pub fn momentum_at(&self, base_momentum: Option<f64>, step: u64) -> Option<f64> {
        match self {
            Schedule::Cyclic(c) if c.cycle_momentum => Some(c.momentum_at(step)),
            Schedule::OneCycle(c) if c.cycle_momentum => Some(c.values_at(step).1),
            _ => base_momentum,
        }
    }

    /// The value of the scheduler's own initial step (`_initial_step`,
    /// local epoch 0) when the optimizer's lr is `cur` (the base lr, or in
    /// a `ChainedScheduler` what the schedules before it left).
    fn initial_lr(&self, base: f64, cur: f64) -> f64 {
        match self {
            Schedule::Constant => base,
            Schedule::Step { .. }
            | Schedule::Exponential { .. }
            | Schedule::CosineAnnealing { .. }
            | Schedule::Polynomial { .. }
            | Schedule::Multiplicative(_)
            | Schedule::ReduceOnPlateau(_) => cur,
            Schedule::MultiStep { milestones, gamma } => {
                let count = milestones.iter().take_while(|&&m| m == 0).count();
                if count == 0 {
                    cur
                } else {
                    cur * gamma.powf(count as f64)
                }
            }
            Schedule::Linear { start_factor, .. } => cur * start_factor,
            Schedule::ConstantFactor { factor, .. } => cur * factor,
            Schedule::Lambda(f) => base * f.call(0),
            Schedule::CosineAnnealingWarmRestarts { .. } => self.warm_restarts_lr(base, 0),
            // SequentialLR puts the base lr back before its first initial step.
            Schedule::Sequential {
                schedules,
                milestones,
            } => {
                let i = milestones.partition_point(|&m| m == 0);
                schedules[i].initial_lr(base, base)
            }
            Schedule::Chained { schedules } => {
                schedules.iter().fold(cur, |lr, s| s.initial_lr(base, lr))
            }
            Schedule::Cyclic(c) => c.lr_at(0),
            Schedule::OneCycle(c) => c.values_at(0).0,
        }
    }

    /// The value at which `SequentialLR` starts a later sub-schedule at its
    /// milestone (`_update_lr(0)`): the closed form at epoch 0 from the base
    /// lr where torch's class has one, else its `get_lr` at epoch 0 on the
    /// lr in force before the milestone, `prev`.
    fn milestone_lr(&self, base: f64, prev: f64) -> f64 {
        match self {
            Schedule::Constant
            | Schedule::Step { .. }
            | Schedule::Exponential { .. }
            | Schedule::Polynomial { .. } => base,
            // base · gamma^(number of milestones <= 0)
            Schedule::MultiStep { .. } => self.initial_lr(base, base),
            Schedule::CosineAnnealing { t_max, eta_min } => {
                eta_min + (base - eta_min) * (1.0 + (PI * 0.0 / *t_max as f64).cos()) / 2.0
            }
            Schedule::Linear { start_factor, .. } => base * start_factor,
            Schedule::ConstantFactor { factor, .. } => base * factor,
            Schedule::Lambda(f) => base * f.call(0),
            Schedule::Multiplicative(f) => prev * f.call(0),
            Schedule::CosineAnnealingWarmRestarts { .. } => self.warm_restarts_lr(base, 0),
            // Not sub-schedules of SequentialLR (validate).
            Schedule::Sequential { .. }
            | Schedule::Chained { .. }
            | Schedule::Cyclic(_)
            | Schedule::OneCycle(_)
            | Schedule::ReduceOnPlateau(_) => self.initial_lr(base, prev),
        }
    }

    /// Whether [`Schedule::milestone_lr`] reads the lr before the milestone.
    fn milestone_reads_prev(&self) -> bool {
        matches!(self, Schedule::Multiplicative(_))
    }

    /// The value at local epoch `e >= 1` from the value at `e − 1`
    /// (torch's chainable `get_lr`).
    fn next_lr(&self, base: f64, e: u64, prev: f64) -> f64 {
        debug_assert!(e >= 1);
        match self {
            Schedule::Constant => base,
            Schedule::Step { step_size, gamma } => {
                if e.is_multiple_of(*step_size) {
                    prev * gamma
                } else {
                    prev
                }
            }
            Schedule::MultiStep { milestones, gamma } => {
                let lo = milestones.partition_point(|&m| m < e);
                let count = milestones[lo..].iter().take_while(|&&m| m == e).count();
                if count == 0 {
                    prev
                } else {
                    prev * gamma.powf(count as f64)
                }
            }
            Schedule::Exponential { gamma } => prev * gamma,
            Schedule::CosineAnnealing { t_max, eta_min } => {
                let t = *t_max as f64;
                let (tm, ei) = (*t_max as u128, e as u128);
                // Python's (e - 1 - T) % (2T) == 0, with e >= 1.
                if (ei - 1 + tm).is_multiple_of(2 * tm) {
                    prev + (base - eta_min) * (1.0 - (PI / t).cos()) / 2.0
                } else {
                    (1.0 + (PI * e as f64 / t).cos()) / (1.0 + (PI * (e - 1) as f64 / t).cos())
                        * (prev - eta_min)
                        + eta_min
                }
            }
            Schedule::Linear {
                start_factor,
                end_factor,
                total_iters,
            } => {
                if e > *total_iters {
                    prev
                } else {
                    let d = end_factor - start_factor;
                    prev * (1.0 + d / (*total_iters as f64 * start_factor + (e - 1) as f64 * d))
                }
            }
            Schedule::ConstantFactor {
                factor,
                total_iters,
            } => {
                if e == *total_iters {
                    prev * (1.0 / factor)
                } else {
                    prev
                }
            }
            Schedule::Polynomial { total_iters, power } => {
                if e > *total_iters {
                    prev
                } else {
                    let t = *total_iters as f64;
                    let decay = ((1.0 - e as f64 / t) / (1.0 - (e - 1) as f64 / t)).powf(*power);
                    prev * decay
                }
            }
            Schedule::CosineAnnealingWarmRestarts { .. } => self.warm_restarts_lr(base, e),
            Schedule::Lambda(f) => base * f.call(e),
            Schedule::Multiplicative(f) => prev * f.call(e),
            Schedule::Sequential {
                schedules,
                milestones,
            } => {
                let i = milestones.partition_point(|&m| m <= e);
                if i == 0 {
                    schedules[0].next_lr(base, e, prev)
                } else if milestones[i - 1] == e {
                    schedules[i].milestone_lr(base, prev)
                } else {
                    schedules[i].next_lr(base, e - milestones[i - 1], prev)
                }
            }
            Schedule::Chained { schedules } => {
                schedules.iter().fold(prev, |lr, s| s.next_lr(base, e, lr))
            }
            Schedule::Cyclic(c) => c.lr_at(e),
            Schedule::OneCycle(c) => c.values_at(e).0,
            Schedule::ReduceOnPlateau(_) => prev,
        }
    }

    /// `CosineAnnealingWarmRestarts` at local epoch `e`: torch's `T_cur` and
    /// `T_i` as its step-by-step `step()` leaves them (`T_cur + 1`, and at
    /// `T_i` a restart with `T_i · T_mult`), then its closed form.
    fn warm_restarts_lr(&self, base: f64, e: u64) -> f64 {
        let Schedule::CosineAnnealingWarmRestarts {
            t_0,
            t_mult,
            eta_min,
        } = self
        else {
            return base;
        };
        // Each T_i multiplied is <= e < 2^64, so T_i · T_mult fits in u128.
        let (t_cur, t_i) = if *t_mult == 1 {
            (e % t_0, *t_0 as u128)
        } else {
            let (mut t_cur, mut t_i) = (e as u128, *t_0 as u128);
            while t_cur >= t_i {
                t_cur -= t_i;
                t_i *= *t_mult as u128;
            }
            (t_cur as u64, t_i)
        };
        eta_min + (base - eta_min) * (1.0 + (PI * t_cur as f64 / t_i as f64).cos()) / 2.0
    }

    /// The value at local epoch `e`, from `first`, the value at local epoch
    /// 0 ([`Schedule::initial_lr`] or [`Schedule::milestone_lr`]), replaying
    /// the chainable form.
    fn local_lr(&self, base: f64, first: f64, e: u64) -> f64 {
        let replay = |from: u64, to: u64, mut lr: f64| {
            for k in from..=to {
                lr = self.next_lr(base, k, lr);
            }
            lr
        };
        match self {
            _ if e == 0 => first,
            Schedule::Constant | Schedule::ReduceOnPlateau(_) => first,
            Schedule::Cyclic(c) => c.lr_at(e),
            Schedule::OneCycle(c) => c.values_at(e).0,
            Schedule::Lambda(f) => base * f.call(e),
            Schedule::CosineAnnealingWarmRestarts { .. } => self.warm_restarts_lr(base, e),
            Schedule::Step { step_size, gamma } => repeat_multiply(first, *gamma, e / step_size),
            Schedule::Exponential { gamma } => repeat_multiply(first, *gamma, e),
            Schedule::MultiStep { milestones, .. } => {
                let mut lr = first;
                let mut last = 0;
                for &m in milestones.iter().filter(|&&m| m >= 1 && m <= e) {
                    if m != last {
                        lr = self.next_lr(base, m, lr);
                        last = m;
                    }
                }
                lr
            }
            Schedule::ConstantFactor { total_iters, .. } => {
                if e >= *total_iters {
                    self.next_lr(base, *total_iters, first)
                } else {
                    first
                }
            }
            Schedule::Linear { total_iters, .. } | Schedule::Polynomial { total_iters, .. } => {
                replay(1, e.min(*total_iters), first)
            }
            Schedule::CosineAnnealing { .. }
            | Schedule::Multiplicative(_)
            | Schedule::Chained { .. } => replay(1, e, first),
            Schedule::Sequential {
                schedules,
                milestones,
            } => {
                let i = milestones.partition_point(|&m| m <= e);
                match i.checked_sub(1).map(|j| milestones[j]) {
                    // Before the first milestone, or after a milestone 0
                    // (that sub-schedule took the initial step).
                    None | Some(0) => schedules[i].local_lr(base, first, e),
                    Some(m) => {
                        let prev = if schedules[i].milestone_reads_prev() {
                            self.local_lr(base, first, m - 1)
                        } else {
                            base
                        };
                        let start = schedules[i].milestone_lr(base, prev);
                        schedules[i].local_lr(base, start, e - m)
                    }
                }
            }
        }
    }

    /// Reads a schedule from JSON in the form of the conformance cases
    /// (`tests/data/golden/FORMAT.md`): an object with `kind` and that
    /// scheduler's torch keyword arguments (torch's defaults for those
    /// absent; unknown keys are refused).
    ///
    /// Kinds: `none` ([`Schedule::Constant`], no scheduler); `step`
    /// (`step_size`, `gamma`); `multistep` (or `multi_step`: `milestones`,
    /// `gamma`); `exponential` (`gamma`); `cosine` (`T_max`, `eta_min`);
    /// `linear` (`start_factor`, `end_factor`, `total_iters`); `constant`
    /// (ConstantLR: `factor`, `total_iters`); `polynomial` (`total_iters`,
    /// `power`); `cosine_warm_restarts` (`T_0`, `T_mult`, `eta_min`);
    /// `warmup_cosine` (`start_factor`, `warmup_steps`, `T_max`, `eta_min`:
    /// [`Schedule::warmup_cosine`]); `sequential` (`schedulers`, or
    /// `schedules`: a list of these objects, and `milestones`); `chained`
    /// (`schedulers`: a list of these objects); `cyclic` (`base_lr`,
    /// `max_lr`, `step_size_up`, `step_size_down`, `mode`, `gamma`,
    /// `cycle_momentum`, `base_momentum`, `max_momentum`); `one_cycle`
    /// (`max_lr`, `total_steps`, `pct_start`, `anneal_strategy`,
    /// `cycle_momentum`, `base_momentum`, `max_momentum`, `div_factor`,
    /// `final_div_factor`, `three_phase`); `plateau` (`mode`, `factor`,
    /// `patience`, `threshold`, `threshold_mode`, `cooldown`, `min_lr`,
    /// `eps`; a `metrics` list, which a conformance case records, must hold
    /// numbers and is not part of the schedule: feed metrics to
    /// [`Scheduler::advance_with_metric`]). `lambda` and `multiplicative`,
    /// which [`Schedule::to_json`] writes for `LambdaLR` and
    /// `MultiplicativeLR`, are refused: JSON cannot carry their closure. The
    /// result is validated.
    pub fn from_json(value: &Value) -> Result<Schedule> {
        let s = parse_json(value, false)?;
        s.validate()?;
        Ok(s)
    }

    /// [`Schedule::from_json`] for an object already taken apart.
    pub fn from_json_map(map: &Map<String, Value>) -> Result<Schedule> {
        let s = parse_map(map, false)?;
        s.validate()?;
        Ok(s)
    }

    /// [`Schedule::from_json`], with a stand-in for each closure (never
    /// run): how a checkpoint's scheduler is checked without its closures.
    pub(crate) fn from_json_with_placeholders(value: &Value) -> Result<Schedule> {
        let s = parse_json(value, true)?;
        s.validate()?;
        Ok(s)
    }

    /// The schedule as JSON that [`Schedule::from_json`] reads back (every
    /// argument written out; `warmup_cosine` comes back as `sequential`;
    /// `LambdaLR` and `MultiplicativeLR` as their kind alone, `lambda` and
    /// `multiplicative`, which cannot be read back).
    pub fn to_json(&self) -> Value {
        use serde_json::json;
        match self {
            Schedule::Constant => json!({"kind": "none"}),
            Schedule::Step { step_size, gamma } => {
                json!({"kind": "step", "step_size": step_size, "gamma": gamma})
            }
            Schedule::MultiStep { milestones, gamma } => {
                json!({"kind": "multistep", "milestones": milestones, "gamma": gamma})
            }
            Schedule::Exponential { gamma } => json!({"kind": "exponential", "gamma": gamma}),
            Schedule::CosineAnnealing { t_max, eta_min } => {
                json!({"kind": "cosine", "T_max": t_max, "eta_min": eta_min})
            }
            Schedule::Linear {
                start_factor,
                end_factor,
                total_iters,
            } => json!({"kind": "linear", "start_factor": start_factor,
                        "end_factor": end_factor, "total_iters": total_iters}),
            Schedule::ConstantFactor {
                factor,
                total_iters,
            } => json!({"kind": "constant", "factor": factor, "total_iters": total_iters}),
            Schedule::Polynomial { total_iters, power } => {
                json!({"kind": "polynomial", "total_iters": total_iters, "power": power})
            }
            Schedule::CosineAnnealingWarmRestarts {
                t_0,
                t_mult,
                eta_min,
            } => json!({"kind": "cosine_warm_restarts", "T_0": t_0, "T_mult": t_mult,
                        "eta_min": eta_min}),
            Schedule::Lambda(_) => json!({"kind": "lambda"}),
            Schedule::Multiplicative(_) => json!({"kind": "multiplicative"}),
            Schedule::Sequential {
                schedules,
                milestones,
            } => json!({"kind": "sequential",
                        "schedulers": schedules.iter().map(Schedule::to_json).collect::<Vec<_>>(),
                        "milestones": milestones}),
            Schedule::Chained { schedules } => json!({"kind": "chained",
                        "schedulers": schedules.iter().map(Schedule::to_json).collect::<Vec<_>>()}),
            Schedule::Cyclic(c) => json!({"kind": "cyclic", "base_lr": c.base_lr,
                "max_lr": c.max_lr, "step_size_up": c.step_size_up,
                "step_size_down": c.step_size_down, "mode": c.mode.name(), "gamma": c.gamma,
                "cycle_momentum": c.cycle_momentum, "base_momentum": c.base_momentum,
                "max_momentum": c.max_momentum}),
            Schedule::OneCycle(c) => json!({"kind": "one_cycle", "max_lr": c.max_lr,
                "total_steps": c.total_steps, "pct_start": c.pct_start,
                "anneal_strategy": c.anneal_strategy.name(), "cycle_momentum": c.cycle_momentum,
                "base_momentum": c.base_momentum, "max_momentum": c.max_momentum,
                "div_factor": c.div_factor, "final_div_factor": c.final_div_factor,
                "three_phase": c.three_phase}),
            Schedule::ReduceOnPlateau(p) => json!({"kind": "plateau", "mode": p.mode.name(),
                "factor": p.factor, "patience": p.patience, "threshold": p.threshold,
                "threshold_mode": p.threshold_mode.name(), "cooldown": p.cooldown,
                "min_lr": p.min_lr, "eps": p.eps}),
        }
    }
}
