//! `CyclicLR` and `OneCycleLR`: closed forms of the step that also cycle the
//! momentum.

use super::*;

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

    pub(super) fn lr_at(&self, step: u64) -> f64 {
        let (scale_factor, scale) = self.factors(step);
        let base_height = (self.max_lr - self.base_lr) * scale_factor;
        self.base_lr + base_height * scale
    }

    pub(super) fn momentum_at(&self, step: u64) -> f64 {
        let (scale_factor, scale) = self.factors(step);
        let base_height = (self.max_momentum - self.base_momentum) * scale_factor;
        self.max_momentum - base_height * scale
    }

    pub(super) fn validate(&self) -> Result<()> {
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
    pub(super) fn values_at(&self, step: u64) -> (f64, f64) {
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

    pub(super) fn validate(&self) -> Result<()> {
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
