//! [`Scheduler`]: a schedule bound to an optimizer's base values, at a
//! position.

use super::*;

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
