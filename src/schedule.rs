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
//! * **`SequentialLR`.** The sub-schedule in force at step `s` is the one
//!   after the last milestone `≤ s` (`bisect_right`). The first sub-schedule
//!   (the second after a milestone 0, which skips the first) starts with its
//!   initial step; each later one starts, at its milestone,
//!   from its *closed form at epoch 0* computed from the optimizer's base
//!   lr (`_update_lr(0)`), then runs its recursive form from its local epoch
//!   1 on. For `CosineAnnealingLR` that first value is
//!   `eta_min + (base − eta_min)·(1 + cos 0)/2`, which can differ from the
//!   base lr in the last bit; it is reproduced.
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
//! [`Schedule::validate`] refuses what PyTorch refuses (`LinearLR`'s
//! factors, `OneCycleLR`'s `pct_start` outside `[0, 1]` and `total_steps`
//! 0, `SequentialLR`'s number of milestones) and what would make torch
//! divide by zero or is certainly a mistake: a zero `step_size`, `T_max`,
//! `total_iters` (torch accepts `LinearLR(total_iters=0)` and then holds
//! `start_factor` for ever) or cycle half, `pct_start · total_steps = 1`
//! (an empty first phase), a `max_lr` below `base_lr`, a `max_momentum`
//! below `base_momentum`, a negative `gamma`, lr or `eta_min`, a
//! non-positive `div_factor` or `final_div_factor`, unsorted milestones, NaN or
//! infinity anywhere. `SequentialLR` takes only the chainable kinds and
//! [`Schedule::Constant`] as its sub-schedules (`CyclicLR` and `OneCycleLR`
//! rewrite the optimizer's lr and momentum at construction, which makes
//! torch's result depend on the order the schedulers were built in; a
//! nested `SequentialLR` has no epoch-0 form and fails in torch).

use crate::error::{Error, Result};
use crate::rules::Config;
use serde_json::{Map, Value};
use std::f64::consts::PI;

/// A learning-rate schedule: which `torch.optim.lr_scheduler` and its
/// keyword arguments (PyTorch's names, in snake case: `T_max` is `t_max`).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Schedule {
    /// No scheduler: the optimizer's base lr at every step (torch's
    /// `LambdaLR(lambda _: 1.0)` inside a `SequentialLR`).
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
    /// `SequentialLR`: `schedules[0]` until `milestones[0]`, then
    /// `schedules[1]` restarted at its epoch 0, and so on.
    Sequential {
        /// The sub-schedules, in order (at least one; each one of the
        /// chainable kinds or [`Schedule::Constant`]).
        schedules: Vec<Schedule>,
        /// The steps at which the next sub-schedule starts: one fewer than
        /// `schedules`, strictly increasing. A first milestone 0 skips
        /// `schedules[0]` and starts `schedules[1]` with its own initial
        /// step, as torch does.
        milestones: Vec<u64>,
    },
    /// `CyclicLR` (with `cycle_momentum`, also cycles the momentum).
    Cyclic(CyclicLr),
    /// `OneCycleLR` (with `cycle_momentum`, also cycles the momentum).
    OneCycle(OneCycleLr),
}

/// `CyclicLR`'s `mode` (there is no `scale_fn`: a custom function cannot be
/// expressed here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum CyclicMode {
    /// Constant amplitude (`scale_fn(x) = 1`, per cycle).
    #[default]
    Triangular,
    /// Amplitude halved each cycle (`scale_fn(x) = 1 / 2^(x−1)`, per cycle).
    Triangular2,
    /// Amplitude scaled by `gamma^step` (per iteration).
    ExpRange,
}

impl CyclicMode {
    /// torch's name: `triangular`, `triangular2`, `exp_range`.
    pub fn name(self) -> &'static str {
        match self {
            CyclicMode::Triangular => "triangular",
            CyclicMode::Triangular2 => "triangular2",
            CyclicMode::ExpRange => "exp_range",
        }
    }

    /// Parses torch's name.
    pub fn parse(s: &str) -> Option<CyclicMode> {
        [
            CyclicMode::Triangular,
            CyclicMode::Triangular2,
            CyclicMode::ExpRange,
        ]
        .into_iter()
        .find(|m| m.name() == s)
    }
}

/// `torch.optim.lr_scheduler.CyclicLR`'s keyword arguments (one parameter
/// group). [`CyclicLr::new`] gives torch's defaults for all but the two
/// learning rates.
#[derive(Clone, Debug, PartialEq)]
pub struct CyclicLr {
    /// The lowest lr, in force at step 0 (it replaces the optimizer's lr).
    pub base_lr: f64,
    /// The highest lr (`>= base_lr`), reached `step_size_up` steps into each
    /// cycle (scaled down in `triangular2` and `exp_range`).
    pub max_lr: f64,
    /// Steps from `base_lr` up to `max_lr` (`>= 1`; torch's default 2000).
    pub step_size_up: u64,
    /// Steps back down (`>= 1`; `None`, torch's default, is `step_size_up`).
    pub step_size_down: Option<u64>,
    /// How the amplitude changes from cycle to cycle.
    pub mode: CyclicMode,
    /// `exp_range`'s factor per step (torch's default 1.0; `>= 0`).
    pub gamma: f64,
    /// Also cycle the momentum, inversely to the lr (torch's default true).
    pub cycle_momentum: bool,
    /// The lowest momentum, at the lr's peak (torch's default 0.8).
    pub base_momentum: f64,
    /// The highest momentum, at the lr's trough (torch's default 0.9).
    pub max_momentum: f64,
}

impl CyclicLr {
    /// `CyclicLR(base_lr, max_lr)` with torch's defaults for the rest.
    pub fn new(base_lr: f64, max_lr: f64) -> Self {
        CyclicLr {
            base_lr,
            max_lr,
            step_size_up: 2000,
            step_size_down: None,
            mode: CyclicMode::Triangular,
            gamma: 1.0,
            cycle_momentum: true,
            base_momentum: 0.8,
            max_momentum: 0.9,
        }
    }

    /// The scale factor (position within the cycle, 0 at the ends, 1 at the
    /// peak) and the amplitude multiplier of step `step`, as torch's
    /// `get_lr` computes them.
    fn factors(&self, step: u64) -> (f64, f64) {
        let up = self.step_size_up as f64;
        let down = self.step_size_down.map_or(up, |d| d as f64);
        let total_size = up + down;
        let step_ratio = up / total_size;
        let e = step as f64;
        let cycle = (1.0 + e / total_size).floor();
        let x = 1.0 + e / total_size - cycle;
        let scale_factor = if x <= step_ratio {
            x / step_ratio
        } else {
            (x - 1.0) / (step_ratio - 1.0)
        };
        let scale = match self.mode {
            CyclicMode::Triangular => 1.0,
            CyclicMode::Triangular2 => 1.0 / 2f64.powf(cycle - 1.0),
            CyclicMode::ExpRange => self.gamma.powf(e),
        };
        (scale_factor, scale)
    }

    fn lr_at(&self, step: u64) -> f64 {
        let (scale_factor, scale) = self.factors(step);
        let base_height = (self.max_lr - self.base_lr) * scale_factor;
        self.base_lr + base_height * scale
    }

    fn momentum_at(&self, step: u64) -> f64 {
        let (scale_factor, scale) = self.factors(step);
        let base_height = (self.max_momentum - self.base_momentum) * scale_factor;
        self.max_momentum - base_height * scale
    }

    fn validate(&self) -> Result<()> {
        check_non_negative("base_lr", self.base_lr)?;
        check_finite("max_lr", self.max_lr)?;
        if self.max_lr < self.base_lr {
            return Err(Error::InvalidHyperparameter {
                name: "max_lr",
                value: self.max_lr,
                reason: "must be >= base_lr",
            });
        }
        check_at_least_one("step_size_up", self.step_size_up)?;
        if let Some(d) = self.step_size_down {
            check_at_least_one("step_size_down", d)?;
        }
        check_non_negative("gamma", self.gamma)?;
        if self.cycle_momentum {
            check_momenta(self.base_momentum, self.max_momentum)?;
        }
        Ok(())
    }
}

/// `OneCycleLR`'s `anneal_strategy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum AnnealStrategy {
    /// Cosine annealing (torch's default `"cos"`).
    #[default]
    Cos,
    /// Linear annealing (`"linear"`).
    Linear,
}

impl AnnealStrategy {
    /// torch's name: `cos`, `linear`.
    pub fn name(self) -> &'static str {
        match self {
            AnnealStrategy::Cos => "cos",
            AnnealStrategy::Linear => "linear",
        }
    }

    /// Parses torch's name.
    pub fn parse(s: &str) -> Option<AnnealStrategy> {
        [AnnealStrategy::Cos, AnnealStrategy::Linear]
            .into_iter()
            .find(|m| m.name() == s)
    }

    fn anneal(self, start: f64, end: f64, pct: f64) -> f64 {
        match self {
            AnnealStrategy::Cos => {
                let cos_out = (PI * pct).cos() + 1.0;
                end + (start - end) / 2.0 * cos_out
            }
            AnnealStrategy::Linear => (end - start) * pct + start,
        }
    }
}

/// `torch.optim.lr_scheduler.OneCycleLR`'s keyword arguments (one parameter
/// group; `total_steps` given directly, not as `epochs · steps_per_epoch`).
/// [`OneCycleLr::new`] gives torch's defaults for all but `max_lr` and
/// `total_steps`.
#[derive(Clone, Debug, PartialEq)]
pub struct OneCycleLr {
    /// The peak lr. The lr starts at `max_lr / div_factor` (replacing the
    /// optimizer's lr) and ends at `max_lr / div_factor / final_div_factor`.
    pub max_lr: f64,
    /// Steps in the cycle (`>= 1`).
    pub total_steps: u64,
    /// Fraction of the steps spent raising the lr, in `[0, 1]` (torch's
    /// default 0.3).
    pub pct_start: f64,
    /// How the lr moves between its phase end points (torch's default `cos`).
    pub anneal_strategy: AnnealStrategy,
    /// Also cycle the momentum, inversely to the lr (torch's default true).
    pub cycle_momentum: bool,
    /// The lowest momentum, at the lr's peak (torch's default 0.85).
    pub base_momentum: f64,
    /// The highest momentum, at the start and the end (torch's default 0.95).
    pub max_momentum: f64,
    /// `initial_lr = max_lr / div_factor` (`> 0`; torch's default 25).
    pub div_factor: f64,
    /// `min_lr = initial_lr / final_div_factor` (`> 0`; torch's default 1e4).
    pub final_div_factor: f64,
    /// Three phases (up, back down to `initial_lr`, then annihilation to
    /// `min_lr`) instead of two (torch's default false).
    pub three_phase: bool,
}

/// One phase of a one-cycle schedule: end step and the start and end values
/// of the lr and the momentum.
struct Phase {
    end_step: f64,
    lr: (f64, f64),
    momentum: (f64, f64),
}

impl OneCycleLr {
    /// `OneCycleLR(max_lr, total_steps)` with torch's defaults for the rest.
    pub fn new(max_lr: f64, total_steps: u64) -> Self {
        OneCycleLr {
            max_lr,
            total_steps,
            pct_start: 0.3,
            anneal_strategy: AnnealStrategy::Cos,
            cycle_momentum: true,
            base_momentum: 0.85,
            max_momentum: 0.95,
            div_factor: 25.0,
            final_div_factor: 1e4,
            three_phase: false,
        }
    }

    /// `max_lr / div_factor`: the lr at step 0.
    pub fn initial_lr(&self) -> f64 {
        self.max_lr / self.div_factor
    }

    /// `initial_lr / final_div_factor`: the lr at the last step.
    pub fn min_lr(&self) -> f64 {
        self.initial_lr() / self.final_div_factor
    }

    fn phases(&self) -> Vec<Phase> {
        let t = self.total_steps as f64;
        let (initial, max, min) = (self.initial_lr(), self.max_lr, self.min_lr());
        let (bm, mm) = (self.base_momentum, self.max_momentum);
        if self.three_phase {
            vec![
                Phase {
                    end_step: self.pct_start * t - 1.0,
                    lr: (initial, max),
                    momentum: (mm, bm),
                },
                Phase {
                    end_step: 2.0 * self.pct_start * t - 2.0,
                    lr: (max, initial),
                    momentum: (bm, mm),
                },
                Phase {
                    end_step: t - 1.0,
                    lr: (initial, min),
                    momentum: (mm, mm),
                },
            ]
        } else {
            vec![
                Phase {
                    end_step: self.pct_start * t - 1.0,
                    lr: (initial, max),
                    momentum: (mm, bm),
                },
                Phase {
                    end_step: t - 1.0,
                    lr: (max, min),
                    momentum: (bm, mm),
                },
            ]
        }
    }

    /// The lr and momentum of step `step` (held from `total_steps − 1` on).
    fn values_at(&self, step: u64) -> (f64, f64) {
        let step_num = step.min(self.total_steps.saturating_sub(1)) as f64;
        let phases = self.phases();
        let mut start_step = 0.0;
        for (i, phase) in phases.iter().enumerate() {
            if step_num <= phase.end_step || i == phases.len() - 1 {
                let pct = (step_num - start_step) / (phase.end_step - start_step);
                let a = self.anneal_strategy;
                return (
                    a.anneal(phase.lr.0, phase.lr.1, pct),
                    a.anneal(phase.momentum.0, phase.momentum.1, pct),
                );
            }
            start_step = phase.end_step;
        }
        unreachable!("the last phase always matches")
    }

    fn validate(&self) -> Result<()> {
        check_non_negative("max_lr", self.max_lr)?;
        if self.total_steps == 0 {
            return Err(Error::InvalidHyperparameter {
                name: "total_steps",
                value: 0.0,
                reason: "must be a positive integer",
            });
        }
        check_finite("pct_start", self.pct_start)?;
        if !(0.0..=1.0).contains(&self.pct_start) {
            return Err(Error::InvalidHyperparameter {
                name: "pct_start",
                value: self.pct_start,
                reason: "must be in [0, 1]",
            });
        }
        check_positive("div_factor", self.div_factor)?;
        check_positive("final_div_factor", self.final_div_factor)?;
        if self.cycle_momentum {
            check_momenta(self.base_momentum, self.max_momentum)?;
        }
        // torch divides by the first phase's length at step 0.
        if self.pct_start * self.total_steps as f64 - 1.0 == 0.0 {
            return Err(Error::InvalidOptions(format!(
                "OneCycleLR: pct_start * total_steps = {} * {} = 1 leaves the first phase \
                 empty (torch divides by zero at step 0)",
                self.pct_start, self.total_steps
            )));
        }
        Ok(())
    }
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

    /// torch's class name (`StepLR`, `CyclicLR`, ...; `Constant` for no scheduler).
    pub fn torch_name(&self) -> &'static str {
        match self {
            Schedule::Constant => "Constant",
            Schedule::Step { .. } => "StepLR",
            Schedule::MultiStep { .. } => "MultiStepLR",
            Schedule::Exponential { .. } => "ExponentialLR",
            Schedule::CosineAnnealing { .. } => "CosineAnnealingLR",
            Schedule::Linear { .. } => "LinearLR",
            Schedule::Sequential { .. } => "SequentialLR",
            Schedule::Cyclic(_) => "CyclicLR",
            Schedule::OneCycle(_) => "OneCycleLR",
        }
    }

    /// Checks every parameter (see the [module docs](self) for the rules).
    pub fn validate(&self) -> Result<()> {
        match self {
            Schedule::Constant => Ok(()),
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
                    if matches!(
                        s,
                        Schedule::Sequential { .. } | Schedule::Cyclic(_) | Schedule::OneCycle(_)
                    ) {
                        return Err(Error::InvalidOptions(format!(
                            "SequentialLR: scheduler {i} is a {}, which cannot be chained \
                             (only Constant, StepLR, MultiStepLR, ExponentialLR, \
                             CosineAnnealingLR and LinearLR can)",
                            s.torch_name()
                        )));
                    }
                    s.validate()?;
                }
                Ok(())
            }
            Schedule::Cyclic(c) => c.validate(),
            Schedule::OneCycle(c) => c.validate(),
        }
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

    /// The learning rate in force for optimizer step `step` (0 for the first
    /// step), for an optimizer whose own lr is `base_lr`. Replays the
    /// chainable kinds from step 0: `O(step)` for `CosineAnnealingLR` (a few
    /// nanoseconds a step), `O(step)` until the value stops changing for
    /// `ExponentialLR` and `StepLR`, at most `total_iters` steps for
    /// `LinearLR`, one per milestone for `MultiStepLR`; `CyclicLR`,
    /// `OneCycleLR` and `Constant` are `O(1)`. The schedule is assumed valid
    /// ([`Schedule::validate`]).
    pub fn lr_at(&self, base_lr: f64, step: u64) -> f64 {
        self.local_lr(base_lr, true, step)
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

    /// The value at local epoch 0. `initial` is true for a scheduler's own
    /// initial step (`_initial_step`), false when `SequentialLR` starts a
    /// later sub-schedule at its milestone (`_update_lr(0)`, the closed form).
    fn first_lr(&self, base: f64, initial: bool) -> f64 {
        match self {
            Schedule::Constant => base,
            Schedule::Step { .. } | Schedule::Exponential { .. } => base,
            Schedule::MultiStep { milestones, gamma } => {
                let count = milestones.iter().take_while(|&&m| m == 0).count();
                if count == 0 {
                    base
                } else {
                    base * gamma.powf(count as f64)
                }
            }
            Schedule::CosineAnnealing { t_max, eta_min } => {
                if initial {
                    base
                } else {
                    eta_min + (base - eta_min) * (1.0 + (PI * 0.0 / *t_max as f64).cos()) / 2.0
                }
            }
            Schedule::Linear { start_factor, .. } => base * start_factor,
            Schedule::Sequential {
                schedules,
                milestones,
            } => {
                let i = milestones.partition_point(|&m| m == 0);
                schedules[i].first_lr(base, initial)
            }
            Schedule::Cyclic(c) => c.lr_at(0),
            Schedule::OneCycle(c) => c.values_at(0).0,
        }
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
            Schedule::Sequential {
                schedules,
                milestones,
            } => {
                let i = milestones.partition_point(|&m| m <= e);
                if i == 0 {
                    schedules[0].next_lr(base, e, prev)
                } else if milestones[i - 1] == e {
                    schedules[i].first_lr(base, false)
                } else {
                    schedules[i].next_lr(base, e - milestones[i - 1], prev)
                }
            }
            Schedule::Cyclic(c) => c.lr_at(e),
            Schedule::OneCycle(c) => c.values_at(e).0,
        }
    }

    /// The value at local epoch `e`, replaying the chainable form from epoch 0.
    fn local_lr(&self, base: f64, initial: bool, e: u64) -> f64 {
        match self {
            Schedule::Constant => base,
            Schedule::Cyclic(c) => c.lr_at(e),
            Schedule::OneCycle(c) => c.values_at(e).0,
            Schedule::Step { step_size, gamma } => repeat_multiply(base, *gamma, e / step_size),
            Schedule::Exponential { gamma } => repeat_multiply(base, *gamma, e),
            Schedule::MultiStep { milestones, .. } => {
                let mut lr = self.first_lr(base, initial);
                let mut last = 0;
                for &m in milestones.iter().filter(|&&m| m >= 1 && m <= e) {
                    if m != last {
                        lr = self.next_lr(base, m, lr);
                        last = m;
                    }
                }
                lr
            }
            Schedule::Linear { total_iters, .. } => {
                let mut lr = self.first_lr(base, initial);
                for k in 1..=e.min(*total_iters) {
                    lr = self.next_lr(base, k, lr);
                }
                lr
            }
            Schedule::CosineAnnealing { .. } => {
                let mut lr = self.first_lr(base, initial);
                for k in 1..=e {
                    lr = self.next_lr(base, k, lr);
                }
                lr
            }
            Schedule::Sequential {
                schedules,
                milestones,
            } => {
                let i = milestones.partition_point(|&m| m <= e);
                match i.checked_sub(1).map(|j| milestones[j]) {
                    // Before the first milestone, or after a milestone 0
                    // (that sub-schedule took the initial step).
                    None | Some(0) => schedules[i].local_lr(base, initial, e),
                    Some(m) => schedules[i].local_lr(base, false, e - m),
                }
            }
        }
    }

    /// Reads a schedule from JSON in the form of the conformance cases: an
    /// object with `kind` and that scheduler's torch keyword arguments
    /// (torch's defaults for those absent; unknown keys are refused).
    ///
    /// Kinds: `constant`; `step` (`step_size`, `gamma`); `multi_step`
    /// (`milestones`, `gamma`); `exponential` (`gamma`); `cosine` (`T_max`,
    /// `eta_min`); `linear` (`start_factor`, `end_factor`, `total_iters`);
    /// `warmup_cosine` (`start_factor`, `warmup_steps`, `T_max`, `eta_min`:
    /// [`Schedule::warmup_cosine`]); `sequential` (`schedules`: a list of
    /// these objects, `milestones`); `cyclic` (`base_lr`, `max_lr`,
    /// `step_size_up`, `step_size_down`, `mode`, `gamma`, `cycle_momentum`,
    /// `base_momentum`, `max_momentum`); `one_cycle` (`max_lr`,
    /// `total_steps`, `pct_start`, `anneal_strategy`, `cycle_momentum`,
    /// `base_momentum`, `max_momentum`, `div_factor`, `final_div_factor`,
    /// `three_phase`). The result is validated.
    pub fn from_json(value: &Value) -> Result<Schedule> {
        let s = parse_json(value)?;
        s.validate()?;
        Ok(s)
    }

    /// [`Schedule::from_json`] for an object already taken apart.
    pub fn from_json_map(map: &Map<String, Value>) -> Result<Schedule> {
        let s = parse_map(map)?;
        s.validate()?;
        Ok(s)
    }

    /// The schedule as JSON that [`Schedule::from_json`] reads back (every
    /// argument written out; `warmup_cosine` comes back as `sequential`).
    pub fn to_json(&self) -> Value {
        use serde_json::json;
        match self {
            Schedule::Constant => json!({"kind": "constant"}),
            Schedule::Step { step_size, gamma } => {
                json!({"kind": "step", "step_size": step_size, "gamma": gamma})
            }
            Schedule::MultiStep { milestones, gamma } => {
                json!({"kind": "multi_step", "milestones": milestones, "gamma": gamma})
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
            Schedule::Sequential {
                schedules,
                milestones,
            } => json!({"kind": "sequential",
                        "schedules": schedules.iter().map(Schedule::to_json).collect::<Vec<_>>(),
                        "milestones": milestones}),
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
        }
    }
}

/// A [`Schedule`] bound to an optimizer's base lr and momentum, at a
/// position: the number of optimizer steps taken under it. [`Scheduler::lr`]
/// and [`Scheduler::momentum`] are the values for the next step;
/// [`Scheduler::advance`] is torch's `scheduler.step()`, called after each
/// optimizer step. The position is all the state there is: save it with
/// [`Scheduler::position`] and restore it with [`Scheduler::set_position`]
/// to continue exactly where the schedule left off.
#[derive(Clone, Debug, PartialEq)]
pub struct Scheduler {
    schedule: Schedule,
    base_lr: f64,
    base_momentum: Option<f64>,
    step: u64,
    lr: f64,
}

impl Scheduler {
    /// A scheduler at position 0. `base_lr` is the optimizer's lr (torch's
    /// `initial_lr`; unused by `CyclicLR` and `OneCycleLR`), `base_momentum`
    /// its momentum or `betas[0]` (`None` for an optimizer without one,
    /// which cannot have its momentum cycled, as in torch).
    pub fn new(schedule: Schedule, base_lr: f64, base_momentum: Option<f64>) -> Result<Self> {
        schedule.validate()?;
        check_non_negative("lr", base_lr)?;
        if let Some(m) = base_momentum {
            check_non_negative("momentum", m)?;
        }
        if schedule.cycles_momentum() && base_momentum.is_none() {
            return Err(Error::InvalidOptions(format!(
                "{} with cycle_momentum needs an optimizer with a momentum or betas; \
                 set cycle_momentum to false",
                schedule.torch_name()
            )));
        }
        let lr = schedule.lr_at(base_lr, 0);
        Ok(Scheduler {
            schedule,
            base_lr,
            base_momentum,
            step: 0,
            lr,
        })
    }

    /// A scheduler at position 0 for an optimizer with this configuration
    /// (its lr and its momentum as [`Config::lr`] and [`Config::momentum`]
    /// give them). Build it before the schedule first changes the
    /// optimizer's lr.
    pub fn for_config(schedule: Schedule, config: &Config) -> Result<Self> {
        Scheduler::new(schedule, config.lr(), config.momentum())
    }

    /// The schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The optimizer's base lr the schedule scales.
    pub fn base_lr(&self) -> f64 {
        self.base_lr
    }

    /// The optimizer's own momentum (or `betas[0]`).
    pub fn base_momentum(&self) -> Option<f64> {
        self.base_momentum
    }

    /// Optimizer steps taken under this scheduler (torch's `last_epoch`).
    pub fn position(&self) -> u64 {
        self.step
    }

    /// Moves to position `step`, as if [`Scheduler::advance`] had been
    /// called `step` times from 0 (the chainable kinds replay from 0).
    pub fn set_position(&mut self, step: u64) {
        if step == self.step {
            return;
        }
        if step > self.step && step - self.step <= 64 {
            while self.step < step {
                self.advance();
            }
            return;
        }
        self.step = step;
        self.lr = self.schedule.lr_at(self.base_lr, step);
    }

    /// Puts the scheduler at `position` with `lr` as the lr in force there,
    /// in `O(1)` (no replay): how a checkpoint restores a scheduler exactly
    /// (`crate::checkpoint`). `lr` must be finite and `>= 0`.
    pub(crate) fn restore(&mut self, position: u64, lr: f64) -> Result<()> {
        check_non_negative("lr", lr)?;
        self.step = position;
        self.lr = lr;
        Ok(())
    }

    /// The lr for the next optimizer step.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// The momentum (or `betas[0]`) for the next optimizer step: the cycled
    /// value, or the optimizer's own when the schedule does not cycle it.
    pub fn momentum(&self) -> Option<f64> {
        self.momentum_at(self.step)
    }

    /// Moves one step on (torch's `scheduler.step()`), in `O(1)`.
    pub fn advance(&mut self) {
        self.step += 1;
        self.lr = self.schedule.next_lr(self.base_lr, self.step, self.lr);
    }

    /// The lr of optimizer step `step` (see [`Schedule::lr_at`]).
    pub fn lr_at(&self, step: u64) -> f64 {
        if step == self.step {
            self.lr
        } else {
            self.schedule.lr_at(self.base_lr, step)
        }
    }

    /// The momentum of optimizer step `step` (see [`Schedule::momentum_at`]).
    pub fn momentum_at(&self, step: u64) -> Option<f64> {
        self.schedule.momentum_at(self.base_momentum, step)
    }
}

/// `lr` multiplied by `gamma` `n` times, one rounding each time as torch's
/// recursion does; stops early at a fixed point (`gamma = 1`, 0, infinity),
/// so that even a position near `u64::MAX` is quick.
fn repeat_multiply(mut lr: f64, gamma: f64, n: u64) -> f64 {
    for _ in 0..n {
        let next = lr * gamma;
        if next == lr {
            break;
        }
        lr = next;
    }
    lr
}

fn check_finite(name: &'static str, v: f64) -> Result<()> {
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

fn check_non_negative(name: &'static str, v: f64) -> Result<()> {
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

fn check_positive(name: &'static str, v: f64) -> Result<()> {
    check_finite(name, v)?;
    if v <= 0.0 {
        return Err(Error::InvalidHyperparameter {
            name,
            value: v,
            reason: "must be > 0",
        });
    }
    Ok(())
}

fn check_at_least_one(name: &'static str, v: u64) -> Result<()> {
    if v == 0 {
        return Err(Error::InvalidHyperparameter {
            name,
            value: 0.0,
            reason: "must be >= 1",
        });
    }
    Ok(())
}

fn check_momenta(base: f64, max: f64) -> Result<()> {
    check_non_negative("base_momentum", base)?;
    check_non_negative("max_momentum", max)?;
    if max < base {
        return Err(Error::InvalidHyperparameter {
            name: "max_momentum",
            value: max,
            reason: "must be >= base_momentum",
        });
    }
    Ok(())
}

// ---- JSON ----

struct Args<'a> {
    kind: String,
    map: &'a Map<String, Value>,
    used: Vec<&'static str>,
}

impl<'a> Args<'a> {
    fn err(&self, msg: String) -> Error {
        Error::InvalidOptions(format!("schedule `{}`: {msg}", self.kind))
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.used.push(key);
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn f64_or(&mut self, key: &'static str, default: Option<f64>) -> Result<f64> {
        match self.get(key) {
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.err(format!("`{key}` must be a number, got {v}"))),
            None => default.ok_or_else(|| self.err(format!("`{key}` is required"))),
        }
    }

    fn u64_opt(&mut self, key: &'static str) -> Result<Option<u64>> {
        match self.get(key) {
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                self.err(format!("`{key}` must be a non-negative integer, got {v}"))
            }),
            None => Ok(None),
        }
    }

    fn u64_or(&mut self, key: &'static str, default: Option<u64>) -> Result<u64> {
        self.u64_opt(key)?
            .or(default)
            .ok_or_else(|| self.err(format!("`{key}` is required")))
    }

    fn bool_or(&mut self, key: &'static str, default: bool) -> Result<bool> {
        match self.get(key) {
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(format!("`{key}` must be true or false, got {v}"))),
            None => Ok(default),
        }
    }

    fn str_or(&mut self, key: &'static str, default: &'static str) -> Result<&'a str> {
        match self.get(key) {
            Some(v) => v
                .as_str()
                .ok_or_else(|| self.err(format!("`{key}` must be a string, got {v}"))),
            None => Ok(default),
        }
    }

    fn milestones(&mut self, key: &'static str) -> Result<Vec<u64>> {
        match self.get(key) {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_u64().ok_or_else(|| {
                        self.err(format!("`{key}` must hold non-negative integers, got {v}"))
                    })
                })
                .collect(),
            Some(v) => Err(self.err(format!("`{key}` must be a list, got {v}"))),
            None => Err(self.err(format!("`{key}` is required"))),
        }
    }

    fn finish(&self) -> Result<()> {
        for k in self.map.keys() {
            if k != "kind" && !self.used.contains(&k.as_str()) {
                return Err(self.err(format!(
                    "unknown argument `{k}` (it takes: {})",
                    self.used.join(", ")
                )));
            }
        }
        Ok(())
    }
}

fn parse_json(value: &Value) -> Result<Schedule> {
    let map = value.as_object().ok_or_else(|| {
        Error::InvalidOptions(format!("a schedule must be a JSON object, got {value}"))
    })?;
    parse_map(map)
}

fn parse_map(map: &Map<String, Value>) -> Result<Schedule> {
    let kind = map.get("kind").and_then(Value::as_str).ok_or_else(|| {
        Error::InvalidOptions(format!(
            "a schedule needs a string `kind`, got {}",
            Value::Object(map.clone())
        ))
    })?;
    let mut a = Args {
        kind: kind.to_string(),
        map,
        used: Vec::new(),
    };
    let s = match kind {
        "constant" => Schedule::Constant,
        "step" => Schedule::Step {
            step_size: a.u64_or("step_size", None)?,
            gamma: a.f64_or("gamma", Some(0.1))?,
        },
        "multi_step" => Schedule::MultiStep {
            milestones: a.milestones("milestones")?,
            gamma: a.f64_or("gamma", Some(0.1))?,
        },
        "exponential" => Schedule::Exponential {
            gamma: a.f64_or("gamma", None)?,
        },
        "cosine" => Schedule::CosineAnnealing {
            t_max: a.u64_or("T_max", None)?,
            eta_min: a.f64_or("eta_min", Some(0.0))?,
        },
        "linear" => Schedule::Linear {
            start_factor: a.f64_or("start_factor", Some(1.0 / 3.0))?,
            end_factor: a.f64_or("end_factor", Some(1.0))?,
            total_iters: a.u64_or("total_iters", Some(5))?,
        },
        "warmup_cosine" => Schedule::warmup_cosine(
            a.f64_or("start_factor", Some(1.0 / 3.0))?,
            a.u64_or("warmup_steps", None)?,
            a.u64_or("T_max", None)?,
            a.f64_or("eta_min", Some(0.0))?,
        ),
        "sequential" => {
            let schedules = match a.get("schedules") {
                Some(Value::Array(v)) => v.iter().map(parse_json).collect::<Result<Vec<_>>>()?,
                Some(v) => return Err(a.err(format!("`schedules` must be a list, got {v}"))),
                None => return Err(a.err("`schedules` is required".into())),
            };
            Schedule::Sequential {
                schedules,
                milestones: a.milestones("milestones")?,
            }
        }
        "cyclic" => {
            let mut c = CyclicLr::new(a.f64_or("base_lr", None)?, a.f64_or("max_lr", None)?);
            c.step_size_up = a.u64_or("step_size_up", Some(c.step_size_up))?;
            c.step_size_down = a.u64_opt("step_size_down")?;
            let mode = a.str_or("mode", "triangular")?;
            c.mode = CyclicMode::parse(mode).ok_or_else(|| {
                a.err(format!(
                    "mode `{mode}` is not one of triangular, triangular2, exp_range"
                ))
            })?;
            c.gamma = a.f64_or("gamma", Some(c.gamma))?;
            c.cycle_momentum = a.bool_or("cycle_momentum", c.cycle_momentum)?;
            c.base_momentum = a.f64_or("base_momentum", Some(c.base_momentum))?;
            c.max_momentum = a.f64_or("max_momentum", Some(c.max_momentum))?;
            Schedule::Cyclic(c)
        }
        "one_cycle" => {
            let mut c = OneCycleLr::new(a.f64_or("max_lr", None)?, a.u64_or("total_steps", None)?);
            c.pct_start = a.f64_or("pct_start", Some(c.pct_start))?;
            let strategy = a.str_or("anneal_strategy", "cos")?;
            c.anneal_strategy = AnnealStrategy::parse(strategy).ok_or_else(|| {
                a.err(format!(
                    "anneal_strategy `{strategy}` is not one of cos, linear"
                ))
            })?;
            c.cycle_momentum = a.bool_or("cycle_momentum", c.cycle_momentum)?;
            c.base_momentum = a.f64_or("base_momentum", Some(c.base_momentum))?;
            c.max_momentum = a.f64_or("max_momentum", Some(c.max_momentum))?;
            c.div_factor = a.f64_or("div_factor", Some(c.div_factor))?;
            c.final_div_factor = a.f64_or("final_div_factor", Some(c.final_div_factor))?;
            c.three_phase = a.bool_or("three_phase", c.three_phase)?;
            Schedule::OneCycle(c)
        }
        other => {
            return Err(Error::InvalidOptions(format!(
                "unknown schedule kind `{other}` (known: constant, step, multi_step, exponential, \
                 cosine, linear, warmup_cosine, sequential, cyclic, one_cycle)"
            )))
        }
    };
    a.finish()?;
    Ok(s)
}
