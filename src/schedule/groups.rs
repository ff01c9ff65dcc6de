//! One schedule over every parameter group of an optimizer, as one torch
//! `LRScheduler` drives all of `optimizer.param_groups`.

use super::{Schedule, Scheduler};
use crate::error::{Error, Result};
use crate::optimizer::Optimizer;
use serde_json::{Map, Value};

/// The arguments that torch's `CyclicLR` and `OneCycleLR` (and
/// `ReduceLROnPlateau`'s `min_lr`) take as a list with one value a group.
const PER_GROUP: [&str; 5] = [
    "base_lr",
    "max_lr",
    "base_momentum",
    "max_momentum",
    "min_lr",
];

/// Drives every parameter group of one optimizer, each from that group's
/// own initial lr and momentum (torch's `initial_lr` per group), as one
/// torch scheduler drives all of `param_groups`: a [`Scheduler`] a group,
/// applied, advanced and fed metrics together. [`Scheduler::apply`]
/// refuses an optimizer of several groups; this is what steps one.
///
/// ```
/// use wgpu_optim::{CpuOptimizer, GroupScheduler, Schedule, Sgd};
/// let (w, b) = (vec![1.0f32; 4], vec![0.0f32; 2]);
/// let sgd = |lr| Sgd { lr, ..Sgd::default() };
/// let mut opt = CpuOptimizer::with_groups(&[(sgd(0.1).into(), &[&w]), (sgd(0.01).into(), &[&b])])?;
/// let mut sched = GroupScheduler::new(Schedule::Step { step_size: 1, gamma: 0.5 }, &opt)?;
/// for _ in 0..2 {
///     sched.apply(&mut opt)?;
///     opt.step(&[&[1.0; 4], &[1.0; 2]])?;
///     sched.advance();
/// }
/// sched.apply(&mut opt)?;
/// // Each group halved twice from its own lr.
/// assert_eq!(opt.group_config(0)?.lr(), 0.025);
/// assert_eq!(opt.group_config(1)?.lr(), 0.0025);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct GroupScheduler {
    schedulers: Vec<Scheduler>,
}

impl GroupScheduler {
    /// `schedule` for every group of `opt`, each scheduler at position 0
    /// from its group's lr and momentum in force now (build it before the
    /// schedule first changes them).
    pub fn new(schedule: Schedule, opt: &(impl Optimizer + ?Sized)) -> Result<Self> {
        Self::per_group(vec![schedule; opt.group_count()], opt)
    }

    /// One schedule a group, in group order: how list-valued `max_lr`,
    /// `base_lr` and momenta give each group its own value. A number of
    /// schedules other than the number of groups is
    /// [`Error::InvalidOptions`].
    pub fn per_group(schedules: Vec<Schedule>, opt: &(impl Optimizer + ?Sized)) -> Result<Self> {
        if schedules.len() != opt.group_count() {
            return Err(Error::InvalidOptions(format!(
                "{} schedules for an optimizer of {} parameter groups",
                schedules.len(),
                opt.group_count()
            )));
        }
        let schedulers = schedules
            .into_iter()
            .enumerate()
            .map(|(g, s)| Scheduler::for_config(s, opt.group_config(g)?))
            .collect::<Result<_>>()?;
        Ok(GroupScheduler { schedulers })
    }

    /// From the JSON form of [`Schedule::from_json`], where `base_lr`,
    /// `max_lr`, `base_momentum`, `max_momentum` and `min_lr` may each be a
    /// list of one value a group (torch's list-valued arguments) or one
    /// value for all. A list of another length than the number of groups
    /// is [`Error::InvalidOptions`].
    pub fn from_json(value: &Value, opt: &(impl Optimizer + ?Sized)) -> Result<Self> {
        let map = value.as_object().ok_or_else(|| {
            Error::InvalidOptions(format!("a schedule must be a JSON object, got {value}"))
        })?;
        let n = opt.group_count();
        for (k, v) in map {
            if let Value::Array(a) = v {
                if PER_GROUP.contains(&k.as_str()) && a.len() != n {
                    return Err(Error::InvalidOptions(format!(
                        "schedule `{k}` lists {} values for {n} parameter groups",
                        a.len()
                    )));
                }
            }
        }
        let schedules = (0..n)
            .map(|g| Schedule::from_json_map(&group_element(map, g)))
            .collect::<Result<_>>()?;
        Self::per_group(schedules, opt)
    }

    /// Sets every group's lr (and momentum, where its schedule cycles it)
    /// to the values for the next step. On error no group changes.
    pub fn apply(&self, opt: &mut (impl Optimizer + ?Sized)) -> Result<()> {
        let before = (0..self.schedulers.len())
            .map(|g| {
                let c = opt.group_config(g)?;
                Ok((c.lr(), c.momentum()))
            })
            .collect::<Result<Vec<_>>>()?;
        for (g, s) in self.schedulers.iter().enumerate() {
            if let Err(e) = s.apply_to_group(opt, g) {
                // apply_to_group leaves group g as it was; put back the
                // groups before it.
                for (h, &(lr, momentum)) in before.iter().enumerate().take(g) {
                    opt.set_group_lr(h, lr)?;
                    if let Some(m) = momentum {
                        opt.set_group_momentum(h, m)?;
                    }
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Moves every group's schedule to position `step`
    /// ([`Scheduler::set_position`]).
    pub fn set_position(&mut self, step: u64) {
        for s in &mut self.schedulers {
            s.set_position(step);
        }
    }

    /// Moves every group's schedule one step on (torch's `scheduler.step()`).
    pub fn advance(&mut self) {
        self.schedulers.iter_mut().for_each(Scheduler::advance);
    }

    /// Moves every group's schedule one step on with `metric` (torch's
    /// `scheduler.step(metric)`, for `ReduceLROnPlateau`: each group's lr
    /// reduced with its own `min_lr`). On error no scheduler moves.
    pub fn advance_with_metric(&mut self, metric: f64) -> Result<()> {
        let mut next = self.schedulers.clone();
        for s in &mut next {
            s.advance_with_metric(metric)?;
        }
        self.schedulers = next;
        Ok(())
    }

    /// Each group's scheduler, in group order.
    pub fn schedulers(&self) -> &[Scheduler] {
        &self.schedulers
    }

    /// Each group's lr for the next step, in group order.
    pub fn lrs(&self) -> Vec<f64> {
        self.schedulers.iter().map(Scheduler::lr).collect()
    }
}

/// Group `g`'s schedule: each list-valued per-group argument replaced by
/// its element `g` (the caller checks the lists' lengths).
pub(crate) fn group_element(map: &Map<String, Value>, g: usize) -> Map<String, Value> {
    map.iter()
        .map(|(k, v)| match v {
            Value::Array(a) if PER_GROUP.contains(&k.as_str()) => {
                (k.clone(), a.get(g).cloned().unwrap_or(Value::Null))
            }
            _ => (k.clone(), v.clone()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CpuOptimizer, Sgd};
    use serde_json::json;

    fn two_groups() -> CpuOptimizer {
        let sgd = |lr, momentum| Sgd {
            lr,
            momentum,
            ..Sgd::default()
        };
        CpuOptimizer::with_groups(&[
            (sgd(0.1, 0.9).into(), &[&[1.0f32, 2.0][..]]),
            (sgd(0.01, 0.8).into(), &[&[3.0f32][..]]),
        ])
        .unwrap()
    }

    #[test]
    fn list_valued_arguments_give_each_group_its_value() {
        let opt = two_groups();
        let s = GroupScheduler::from_json(
            &json!({"kind": "one_cycle", "max_lr": [1.0, 0.5], "total_steps": 10}),
            &opt,
        )
        .unwrap();
        // OneCycleLR starts at max_lr / div_factor (25), through the
        // cosine anneal at 0 (torch's form, within a few ulps of it).
        for (got, want) in s.lrs().into_iter().zip([1.0 / 25.0, 0.5 / 25.0]) {
            assert!((got - want).abs() < 1e-15, "{got} vs {want}");
        }
        let e = GroupScheduler::from_json(
            &json!({"kind": "one_cycle", "max_lr": [1.0, 0.5, 0.2], "total_steps": 10}),
            &opt,
        );
        assert!(matches!(e, Err(Error::InvalidOptions(_))), "{e:?}");
    }

    #[test]
    fn a_failed_apply_changes_no_group() {
        let mut opt = two_groups();
        // Group 0's schedule halves its lr; group 1's gives a negative lr
        // from step 1 on, which SGD refuses: group 0 must be put back.
        let mut s = GroupScheduler::per_group(
            vec![
                Schedule::Step {
                    step_size: 1,
                    gamma: 0.5,
                },
                Schedule::lambda(|e| if e == 0 { 1.0 } else { -1.0 }),
            ],
            &opt,
        )
        .unwrap();
        s.apply(&mut opt).unwrap();
        s.advance();
        let before = opt.groups();
        assert!(s.apply(&mut opt).is_err());
        assert_eq!(opt.groups(), before);
        // A scheduler built for two groups over an optimizer of one: the
        // second group does not exist, and nothing changes.
        let mut one = CpuOptimizer::new(Sgd::default(), &[&[1.0f32][..]]).unwrap();
        let one_before = one.groups();
        assert!(matches!(s.apply(&mut one), Err(Error::NoSuchGroup { .. })));
        assert_eq!(one.groups(), one_before);
    }

    #[test]
    fn the_count_of_schedules_must_match_the_groups() {
        let opt = two_groups();
        let e = GroupScheduler::per_group(vec![Schedule::Constant], &opt);
        assert!(matches!(e, Err(Error::InvalidOptions(_))), "{e:?}");
    }
}
