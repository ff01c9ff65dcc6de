//! `ReduceLROnPlateau`: the lr reduced when a metric stops improving.

use super::*;

/// `ReduceLROnPlateau`'s `mode`: whether a lower or a higher metric is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum PlateauMode {
    /// A lower metric is better (a loss; torch's default).
    #[default]
    Min,
    /// A higher metric is better (an accuracy).
    Max,
}

impl PlateauMode {
    /// torch's name: `min`, `max`.
    pub fn name(self) -> &'static str {
        match self {
            PlateauMode::Min => "min",
            PlateauMode::Max => "max",
        }
    }

    /// Parses torch's name.
    pub fn parse(s: &str) -> Option<PlateauMode> {
        [PlateauMode::Min, PlateauMode::Max]
            .into_iter()
            .find(|m| m.name() == s)
    }
}

/// `ReduceLROnPlateau`'s `threshold_mode`: how far past the best value a
/// metric must be to count as better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ThresholdMode {
    /// Relative: better than `best · (1 − threshold)` (`min`) or
    /// `best · (1 + threshold)` (`max`; torch's default).
    #[default]
    Rel,
    /// Absolute: better than `best − threshold` (`min`) or `best + threshold` (`max`).
    Abs,
}

impl ThresholdMode {
    /// torch's name: `rel`, `abs`.
    pub fn name(self) -> &'static str {
        match self {
            ThresholdMode::Rel => "rel",
            ThresholdMode::Abs => "abs",
        }
    }

    /// Parses torch's name.
    pub fn parse(s: &str) -> Option<ThresholdMode> {
        [ThresholdMode::Rel, ThresholdMode::Abs]
            .into_iter()
            .find(|m| m.name() == s)
    }
}

/// `torch.optim.lr_scheduler.ReduceLROnPlateau`'s keyword arguments (one
/// parameter group); [`Default`] is torch's defaults.
///
/// Unlike every other schedule, its values depend on the metrics it is fed,
/// not on the step: drive it with
/// [`Scheduler::advance_with_metric`](super::Scheduler::advance_with_metric)
/// after each optimizer step (torch's `scheduler.step(metric)`). After each
/// metric, as torch does: if it is better than `best` (by `threshold`,
/// below), it becomes `best` and the count of bad epochs restarts at 0,
/// else that count goes up by one; during a cooldown the cooldown counter
/// goes down by one and the bad epochs are forgotten; when the bad epochs
/// exceed `patience`, the lr becomes `max(lr · factor, min_lr)` (unless
/// that changes it by `eps` or less), a cooldown of `cooldown` epochs
/// starts and the bad epochs restart at 0. A NaN metric is never better.
/// The lr starts at the optimizer's own.
#[derive(Clone, Debug, PartialEq)]
pub struct ReduceLrOnPlateau {
    /// Whether a lower or a higher metric is better (torch's default `min`).
    pub mode: PlateauMode,
    /// The lr's factor at a reduction (torch's default 0.1; in `[0, 1)`).
    pub factor: f64,
    /// Bad epochs allowed before the lr is reduced (torch's default 10).
    pub patience: u64,
    /// How much better than the best a metric must be to count
    /// (torch's default 1e-4; `>= 0`, and `< 1` in `min` mode with `rel`).
    pub threshold: f64,
    /// Whether `threshold` is relative or absolute (torch's default `rel`).
    pub threshold_mode: ThresholdMode,
    /// Epochs after a reduction during which bad epochs are not counted
    /// (torch's default 0).
    pub cooldown: u64,
    /// The lowest lr a reduction goes to (torch's default 0; `>= 0`).
    pub min_lr: f64,
    /// A reduction that changes the lr by `eps` or less is skipped
    /// (torch's default 1e-8; `>= 0`).
    pub eps: f64,
}

impl Default for ReduceLrOnPlateau {
    fn default() -> Self {
        ReduceLrOnPlateau {
            mode: PlateauMode::Min,
            factor: 0.1,
            patience: 10,
            threshold: 1e-4,
            threshold_mode: ThresholdMode::Rel,
            cooldown: 0,
            min_lr: 0.0,
            eps: 1e-8,
        }
    }
}

/// What `ReduceLROnPlateau` remembers between metrics, with torch's
/// attribute names; the lr in force is the [`Scheduler`]'s.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlateauState {
    /// The best metric so far (`+∞` in `min` mode and `−∞` in `max` mode
    /// before the first).
    pub best: f64,
    /// Metrics since the last improvement (reset by a reduction and during
    /// a cooldown).
    pub num_bad_epochs: u64,
    /// Epochs of cooldown left.
    pub cooldown_counter: u64,
}

impl ReduceLrOnPlateau {
    /// The state before the first metric (torch's `_reset`).
    pub fn initial_state(&self) -> PlateauState {
        PlateauState {
            best: match self.mode {
                PlateauMode::Min => f64::INFINITY,
                PlateauMode::Max => f64::NEG_INFINITY,
            },
            num_bad_epochs: 0,
            cooldown_counter: 0,
        }
    }

    /// torch's `_is_better`, with its operations.
    fn is_better(&self, a: f64, best: f64) -> bool {
        match (self.mode, self.threshold_mode) {
            (PlateauMode::Min, ThresholdMode::Rel) => a < best * (1.0 - self.threshold),
            (PlateauMode::Min, ThresholdMode::Abs) => a < best - self.threshold,
            (PlateauMode::Max, ThresholdMode::Rel) => a > best * (self.threshold + 1.0),
            (PlateauMode::Max, ThresholdMode::Abs) => a > best + self.threshold,
        }
    }

    /// torch's `step(metrics)`: updates `state` with `metric` and returns
    /// the lr in force after it, from `lr` before it.
    pub(super) fn step(&self, state: &mut PlateauState, metric: f64, lr: f64) -> f64 {
        if self.is_better(metric, state.best) {
            state.best = metric;
            state.num_bad_epochs = 0;
        } else {
            state.num_bad_epochs = state.num_bad_epochs.saturating_add(1);
        }
        if state.cooldown_counter > 0 {
            state.cooldown_counter -= 1;
            state.num_bad_epochs = 0;
        }
        let mut lr = lr;
        if state.num_bad_epochs > self.patience {
            // Python's max(a, b) keeps a unless b > a.
            let reduced = lr * self.factor;
            let new_lr = if self.min_lr > reduced {
                self.min_lr
            } else {
                reduced
            };
            if lr - new_lr > self.eps {
                lr = new_lr;
            }
            state.cooldown_counter = self.cooldown;
            state.num_bad_epochs = 0;
        }
        lr
    }

    /// Checks a state read back from a checkpoint against these options.
    pub(super) fn check_state(&self, state: &PlateauState) -> Result<()> {
        if state.best.is_nan() {
            return Err(Error::InvalidOptions(
                "ReduceLROnPlateau: best is NaN, which no metric sequence leads to".into(),
            ));
        }
        if state.num_bad_epochs > self.patience {
            return Err(Error::InvalidOptions(format!(
                "ReduceLROnPlateau: num_bad_epochs = {} is past patience = {} (a reduction \
                 would have reset it)",
                state.num_bad_epochs, self.patience
            )));
        }
        if state.cooldown_counter > self.cooldown {
            return Err(Error::InvalidOptions(format!(
                "ReduceLROnPlateau: cooldown_counter = {} is more than cooldown = {}",
                state.cooldown_counter, self.cooldown
            )));
        }
        Ok(())
    }

    pub(super) fn validate(&self) -> Result<()> {
        check_finite("factor", self.factor)?;
        if !(0.0..1.0).contains(&self.factor) {
            return Err(Error::InvalidHyperparameter {
                name: "factor",
                value: self.factor,
                reason: "must be in [0, 1)",
            });
        }
        check_non_negative("threshold", self.threshold)?;
        // best · (1 − threshold) <= 0 would count no positive loss as an
        // improvement (and +∞ · 0 is NaN: not even the first one).
        if self.mode == PlateauMode::Min
            && self.threshold_mode == ThresholdMode::Rel
            && self.threshold >= 1.0
        {
            return Err(Error::InvalidHyperparameter {
                name: "threshold",
                value: self.threshold,
                reason: "must be < 1 in min mode with threshold_mode rel",
            });
        }
        check_non_negative("min_lr", self.min_lr)?;
        check_non_negative("eps", self.eps)
    }
}
