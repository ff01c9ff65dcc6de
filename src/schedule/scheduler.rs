//! [`Scheduler`]: a schedule bound to an optimizer's base values, at a
//! position.

use super::*;

/// A [`Schedule`] bound to an optimizer's base lr and momentum, at a
/// position: the number of optimizer steps taken under it. [`Scheduler::lr`]
/// and [`Scheduler::momentum`] are the values for the next step;
/// [`Scheduler::advance`] is torch's `scheduler.step()`, called after each
/// optimizer step. For every schedule but `ReduceLROnPlateau` the position
/// is all the state there is: save it with [`Scheduler::position`] and
/// restore it with [`Scheduler::set_position`] to continue exactly where the
/// schedule left off.
///
/// `ReduceLROnPlateau` ([`Schedule::ReduceOnPlateau`]) is driven by a metric
/// instead: [`Scheduler::advance_with_metric`] after each optimizer step
/// (torch's `scheduler.step(metric)`), and its state
/// ([`Scheduler::plateau_state`]) travels in checkpoints
/// ([`crate::Checkpoint::set_scheduler`]). Moving it without a metric
/// ([`Scheduler::advance`], or [`Scheduler::set_position`] to another
/// position) cannot give torch's values: the scheduler then stays where it
/// was and every [`Scheduler::apply`] from then on is an
/// [`Error::InvalidOptions`] saying so, rather than a run whose lr silently
/// never drops.
///
/// ```
/// use wgpu_optim::schedule::{ReduceLrOnPlateau, Schedule, Scheduler};
/// use wgpu_optim::{CpuOptimizer, Sgd};
/// let mut opt = CpuOptimizer::new(Sgd { lr: 0.1, ..Sgd::default() }, &[&[1.0f32; 4]])?;
/// let plateau = ReduceLrOnPlateau { factor: 0.5, patience: 1, ..ReduceLrOnPlateau::default() };
/// let mut sched = Scheduler::for_config(Schedule::ReduceOnPlateau(plateau), opt.config())?;
/// for loss in [1.0, 0.8, 0.8, 0.8, 0.7] {
///     sched.apply(&mut opt)?; // the lr of this step
///     opt.step(&[&[0.1; 4]])?;
///     sched.advance_with_metric(loss)?; // torch's scheduler.step(loss)
/// }
/// // 0.8 twice without improvement is more than patience = 1: halved once.
/// assert_eq!(sched.lr(), 0.05);
/// assert_eq!(sched.plateau_state().unwrap().best, 0.7);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Scheduler {
    schedule: Schedule,
    base_lr: f64,
    base_momentum: Option<f64>,
    step: u64,
    lr: f64,
    /// `ReduceLROnPlateau`'s state; `None` for the other kinds.
    plateau: Option<PlateauState>,
    /// A metric-driven schedule was moved without a metric.
    metric_missing: bool,
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
        let plateau = match &schedule {
            Schedule::ReduceOnPlateau(p) => Some(p.initial_state()),
            _ => None,
        };
        Ok(Scheduler {
            schedule,
            base_lr,
            base_momentum,
            step: 0,
            lr,
            plateau,
            metric_missing: false,
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

    /// Optimizer steps taken under this scheduler (torch's `last_epoch`;
    /// for `ReduceLROnPlateau`, the metrics fed).
    pub fn position(&self) -> u64 {
        self.step
    }

    /// `ReduceLROnPlateau`'s state (`best`, `num_bad_epochs`,
    /// `cooldown_counter`); `None` for the other kinds.
    pub fn plateau_state(&self) -> Option<&PlateauState> {
        self.plateau.as_ref()
    }

    /// Whether a metric-driven schedule was moved without a metric
    /// ([`Scheduler::advance`] or [`Scheduler::set_position`] on a
    /// `ReduceLROnPlateau`); [`Scheduler::apply`] refuses it from then on.
    pub fn metric_missing(&self) -> bool {
        self.metric_missing
    }

    /// The error [`Scheduler::apply`] gives once [`Scheduler::metric_missing`].
    pub(crate) fn check_metric_fed(&self) -> Result<()> {
        if self.metric_missing {
            return Err(Error::InvalidOptions(format!(
                "{} is stepped with a metric, but it was advanced without one (advance or \
                 set_position): call Scheduler::advance_with_metric after each optimizer step",
                self.schedule.torch_name()
            )));
        }
        Ok(())
    }

    /// Moves to position `step`, as if [`Scheduler::advance`] had been
    /// called `step` times from 0 (the chainable kinds replay from 0). A
    /// `ReduceLROnPlateau` cannot replay metrics: moving it to another
    /// position leaves it unchanged and [`Scheduler::metric_missing`].
    pub fn set_position(&mut self, step: u64) {
        if step == self.step {
            return;
        }
        if self.schedule.needs_metric() {
            self.metric_missing = true;
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
    /// (`crate::checkpoint`). `lr` must be finite and `>= 0`; `plateau` is
    /// `ReduceLROnPlateau`'s state, required for it and refused for the
    /// other kinds.
    pub(crate) fn restore(
        &mut self,
        position: u64,
        lr: f64,
        plateau: Option<PlateauState>,
        metric_missing: bool,
    ) -> Result<()> {
        check_non_negative("lr", lr)?;
        match (&self.schedule, plateau) {
            (Schedule::ReduceOnPlateau(p), Some(state)) => {
                p.check_state(&state)?;
                self.plateau = Some(state);
            }
            (Schedule::ReduceOnPlateau(_), None) => {
                return Err(Error::InvalidOptions(
                    "ReduceLROnPlateau needs its state (best, num_bad_epochs, cooldown_counter)"
                        .into(),
                ))
            }
            (_, None) => {}
            (s, Some(_)) => {
                return Err(Error::InvalidOptions(format!(
                    "{} has no ReduceLROnPlateau state",
                    s.torch_name()
                )))
            }
        }
        if metric_missing && !self.schedule.needs_metric() {
            return Err(Error::InvalidOptions(format!(
                "{} is not stepped with a metric, so none can be missing",
                self.schedule.torch_name()
            )));
        }
        self.step = position;
        self.lr = lr;
        self.metric_missing = metric_missing;
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

    /// Moves one step on (torch's `scheduler.step()`), in `O(1)` (`O(length)`
    /// for a `ChainedScheduler`). A `ReduceLROnPlateau` needs a metric
    /// ([`Scheduler::advance_with_metric`]): on one this moves nothing and
    /// sets [`Scheduler::metric_missing`].
    pub fn advance(&mut self) {
        if self.schedule.needs_metric() {
            self.metric_missing = true;
            return;
        }
        self.step += 1;
        self.lr = self.schedule.next_lr(self.base_lr, self.step, self.lr);
    }

    /// Moves one step on with the metric of the step just taken (torch's
    /// `scheduler.step(metric)`), for `ReduceLROnPlateau`: the lr is reduced
    /// when the metric has not improved for more than `patience` steps (see
    /// [`ReduceLrOnPlateau`]). Any `f64` is a metric, as in torch (a NaN
    /// never improves). Another schedule is an [`Error::InvalidOptions`],
    /// nothing changed: it moves with [`Scheduler::advance`].
    pub fn advance_with_metric(&mut self, metric: f64) -> Result<()> {
        let (Schedule::ReduceOnPlateau(p), Some(state)) = (&self.schedule, &mut self.plateau)
        else {
            return Err(Error::InvalidOptions(format!(
                "{} is not stepped with a metric: use Scheduler::advance",
                self.schedule.torch_name()
            )));
        };
        self.lr = p.step(state, metric, self.lr);
        self.step += 1;
        Ok(())
    }

    /// The lr of optimizer step `step` (see [`Schedule::lr_at`]; for
    /// `ReduceLROnPlateau`, [`Scheduler::lr`] at the position and the base
    /// lr elsewhere: its values depend on metrics).
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
