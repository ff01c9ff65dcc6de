//! [`Optimizer`]: what every backend does, with the same signatures, so that
//! schedules, the conformance runner, checkpoints and tests talk to one
//! interface and never to a backend by name.

use crate::checkpoint::Checkpoint;
use crate::clip::ClipGradNorm;
use crate::error::{Error, Result};
use crate::groups::ParamGroup;
use crate::layout::Layout;
use crate::rules::Config;
use crate::schedule::Scheduler;

/// What [`Optimizer::step_combining_tensor_sums`] calls between LAMB's
/// passes with each tensor's `[Σθ², Σu²]`, to replace them.
pub type CombineTensorSums<'a> = dyn FnMut(&mut [[f64; 2]]) -> Result<()> + 'a;

/// An optimizer over packed tensors, on any backend ([`crate::CpuOptimizer`],
/// [`crate::GpuOptimizer`]).
///
/// The signatures are those of the backend that can fail the most: reading
/// the GPU's buffers waits for it and can fail, so every read returns a
/// [`Result`] here, even where the CPU's own inherent method cannot fail.
/// Each backend's inherent methods of the same names say more.
///
/// ```
/// use wgpu_optim::{CpuOptimizer, Optimizer, Sgd};
/// // Works on any backend: a CpuOptimizer here, a GpuOptimizer just the same.
/// fn descend(opt: &mut impl Optimizer, grads: &[&[f32]], steps: usize) -> wgpu_optim::Result<()> {
///     for _ in 0..steps {
///         Optimizer::step(opt, grads)?;
///     }
///     Ok(())
/// }
/// let mut opt = CpuOptimizer::new(Sgd { lr: 0.5, ..Sgd::default() }, &[&[1.0f32]])?;
/// descend(&mut opt, &[&[1.0]], 2)?;
/// assert_eq!(Optimizer::read_params(&opt)?, vec![vec![0.0f32]]);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub trait Optimizer {
    /// One step with one gradient per parameter tensor; lengths are checked
    /// first and on error nothing changes.
    fn step(&mut self, grads: &[&[f32]]) -> Result<()>;

    /// A LAMB step whose per-tensor `[Σθ², Σu²]` pass through `combine`
    /// before the trust ratios are taken, as
    /// [`crate::CpuOptimizer::step_combining_tensor_sums`] and
    /// [`crate::GpuOptimizer::step_combining_tensor_sums`]; what the sharded
    /// optimizer steps LAMB with. Backends without it return
    /// [`crate::Error::Unsupported`] and change nothing.
    fn step_combining_tensor_sums(
        &mut self,
        grads: &[&[f32]],
        combine: &mut CombineTensorSums<'_>,
    ) -> Result<()> {
        let _ = (grads, combine);
        Err(crate::Error::Unsupported(format!(
            "per-tensor sums combined in a {} step on this backend (the CPU optimizer has it)",
            self.config().kind().name()
        )))
    }

    /// Whether [`Optimizer::step_combining_tensor_sums`] can step this
    /// optimizer.
    fn combines_tensor_sums(&self) -> bool {
        false
    }

    /// The rule and hyperparameters in force.
    fn config(&self) -> &Config;

    /// How the tensors are packed.
    fn layout(&self) -> &Layout;

    /// Names of the state tensors, as PyTorch names them, fixed when the
    /// optimizer was built.
    fn state_names(&self) -> &[&'static str];

    /// Steps taken so far (on the GPU with non-finite skipping, an upper
    /// bound until the outcome of the queued steps is read back).
    fn step_count(&self) -> u64;

    /// Sets the learning rate of every parameter group from the next step
    /// on; on error no group changes.
    fn set_lr(&mut self, lr: f64) -> Result<()>;

    /// Sets the momentum (SGD, RMSprop) or `beta1` (the Adam family, LAMB)
    /// of every group from the next step on; on error no group changes.
    fn set_momentum(&mut self, momentum: f64) -> Result<()>;

    /// Number of parameter groups.
    fn group_count(&self) -> usize;

    /// The parameter groups ([`ParamGroup`]: tensor indices and the
    /// configuration in force), as torch's `param_groups`.
    fn groups(&self) -> Vec<ParamGroup>;

    /// Group `g`'s configuration in force ([`crate::Error::NoSuchGroup`]
    /// past the last).
    fn group_config(&self, g: usize) -> Result<&Config>;

    /// Sets group `g`'s learning rate from the next step on.
    fn set_group_lr(&mut self, g: usize, lr: f64) -> Result<()>;

    /// Sets group `g`'s momentum (or `beta1`) from the next step on.
    fn set_group_momentum(&mut self, g: usize, momentum: f64) -> Result<()>;

    /// Appends a group of new tensors with its configuration (torch's
    /// `add_param_group`); returns its index.
    fn add_param_group(&mut self, config: Config, params: &[&[f32]]) -> Result<usize>;

    /// Turns global-norm gradient clipping on (`Some`) or off (`None`).
    fn set_clip_grad_norm(&mut self, clip: Option<ClipGradNorm>) -> Result<()>;

    /// The clipping in force.
    fn clip_grad_norm(&self) -> Option<ClipGradNorm>;

    /// The total gradient norm of the last step clipping saw; `None` while
    /// clipping is off and before the first step after turning it on.
    fn last_grad_norm(&self) -> Result<Option<f32>>;

    /// Skip steps whose gradients hold a NaN or an infinity.
    fn set_skip_nonfinite(&mut self, skip: bool) -> Result<()>;

    /// Whether steps with non-finite gradients are skipped.
    fn skip_nonfinite(&self) -> bool;

    /// Steps skipped so far because their gradients were not finite.
    fn skipped_steps(&mut self) -> Result<u64>;

    /// Whether the last step was skipped.
    fn last_step_skipped(&mut self) -> Result<bool>;

    /// The loss scale the gradients carry (1: none).
    fn set_grad_scale(&mut self, scale: f64) -> Result<()>;

    /// The loss scale in force.
    fn grad_scale(&self) -> f64;

    /// Replaces the parameters (same layout).
    fn write_params(&mut self, params: &[&[f32]]) -> Result<()>;

    /// Replaces the state tensor `name`, one slice per parameter tensor.
    fn write_state(&mut self, name: &str, tensors: &[&[f32]]) -> Result<()>;

    /// The parameters, one vector per tensor.
    fn read_params(&self) -> Result<Vec<Vec<f32>>>;

    /// The state tensor `name`, one vector per parameter tensor.
    fn read_state(&self, name: &str) -> Result<Vec<Vec<f32>>>;

    /// The rule's scalar state by torch's name (NAdam's `mu_product`,
    /// ASGD's `eta` and `mu`; empty for the other rules), one value for
    /// all tensors, as torch keeps it.
    fn scalar_state(&self) -> Result<Vec<(&'static str, f64)>>;

    /// The whole state as a [`Checkpoint`].
    fn checkpoint(&self) -> Result<Checkpoint>;

    /// Restores a checkpoint; everything is checked before anything changes.
    fn load_checkpoint(&mut self, ckpt: &Checkpoint) -> Result<()>;
}

impl Scheduler {
    /// Sets the optimizer's lr, and its momentum when the schedule cycles
    /// it, to the values for the next step. On error (a momentum the rule
    /// refuses, or a rule without one; an lr the rule refuses, such as a
    /// negative or NaN one from a `LambdaLR` closure; a `ReduceLROnPlateau`
    /// advanced without a metric, [`Scheduler::metric_missing`]) the
    /// optimizer is unchanged.
    ///
    /// An optimizer of several parameter groups is
    /// [`Error::Unsupported`]: each group must follow the schedule from its
    /// own initial values (torch's `initial_lr` per group), not be set to
    /// one lr for all; use a [`crate::GroupScheduler`] (or one scheduler
    /// per group and [`Scheduler::apply_to_group`]).
    pub fn apply(&self, opt: &mut (impl Optimizer + ?Sized)) -> Result<()> {
        if opt.group_count() > 1 {
            return Err(Error::Unsupported(format!(
                "a scheduler over {} parameter groups (one only, so far)",
                opt.group_count()
            )));
        }
        self.check_metric_fed()?;
        let old = opt.config().lr();
        opt.set_lr(self.lr())?;
        if let (true, Some(m)) = (self.schedule().cycles_momentum(), self.momentum()) {
            if let Err(e) = opt.set_momentum(m) {
                opt.set_lr(old)?;
                return Err(e);
            }
        }
        Ok(())
    }

    /// [`Scheduler::apply`] to parameter group `g` alone: its lr (and
    /// momentum, when the schedule cycles it) from this scheduler, the
    /// other groups untouched. Build one scheduler per group, each from
    /// that group's initial values (torch's `initial_lr` per group, and a
    /// list-valued `max_lr` or momentum's element `g`), as torch drives
    /// each group. On error the group is unchanged.
    pub fn apply_to_group(&self, opt: &mut (impl Optimizer + ?Sized), g: usize) -> Result<()> {
        self.check_metric_fed()?;
        let old = opt.group_config(g)?.lr();
        opt.set_group_lr(g, self.lr())?;
        if let (true, Some(m)) = (self.schedule().cycles_momentum(), self.momentum()) {
            if let Err(e) = opt.set_group_momentum(g, m) {
                opt.set_group_lr(g, old)?;
                return Err(e);
            }
        }
        Ok(())
    }

    /// [`Scheduler::apply`] to a CPU optimizer.
    pub fn apply_to_cpu(&self, opt: &mut crate::CpuOptimizer) -> Result<()> {
        self.apply(opt)
    }

    /// [`Scheduler::apply`] to a GPU optimizer.
    pub fn apply_to_gpu(&self, opt: &mut crate::GpuOptimizer) -> Result<()> {
        self.apply(opt)
    }
}

/// Each trait method forwards to the backend's inherent method of the same
/// name, wrapping the infallible ones in `Ok`.
mod backends {
    use super::*;
    use crate::{CpuOptimizer, GpuOptimizer};

    impl Optimizer for CpuOptimizer {
        fn step(&mut self, grads: &[&[f32]]) -> Result<()> {
            CpuOptimizer::step(self, grads)
        }
        fn step_combining_tensor_sums(
            &mut self,
            grads: &[&[f32]],
            combine: &mut CombineTensorSums<'_>,
        ) -> Result<()> {
            CpuOptimizer::step_combining_tensor_sums(self, grads, combine)
        }
        fn combines_tensor_sums(&self) -> bool {
            CpuOptimizer::combines_tensor_sums(self)
        }
        fn config(&self) -> &Config {
            CpuOptimizer::config(self)
        }
        fn layout(&self) -> &Layout {
            CpuOptimizer::layout(self)
        }
        fn state_names(&self) -> &[&'static str] {
            CpuOptimizer::state_names(self)
        }
        fn step_count(&self) -> u64 {
            CpuOptimizer::step_count(self)
        }
        fn set_lr(&mut self, lr: f64) -> Result<()> {
            CpuOptimizer::set_lr(self, lr)
        }
        fn set_momentum(&mut self, momentum: f64) -> Result<()> {
            CpuOptimizer::set_momentum(self, momentum)
        }
        fn group_count(&self) -> usize {
            CpuOptimizer::group_count(self)
        }
        fn groups(&self) -> Vec<ParamGroup> {
            CpuOptimizer::groups(self)
        }
        fn group_config(&self, g: usize) -> Result<&Config> {
            CpuOptimizer::group_config(self, g)
        }
        fn set_group_lr(&mut self, g: usize, lr: f64) -> Result<()> {
            CpuOptimizer::set_group_lr(self, g, lr)
        }
        fn set_group_momentum(&mut self, g: usize, momentum: f64) -> Result<()> {
            CpuOptimizer::set_group_momentum(self, g, momentum)
        }
        fn add_param_group(&mut self, config: Config, params: &[&[f32]]) -> Result<usize> {
            CpuOptimizer::add_param_group(self, config, params)
        }
        fn set_clip_grad_norm(&mut self, clip: Option<ClipGradNorm>) -> Result<()> {
            CpuOptimizer::set_clip_grad_norm(self, clip)
        }
        fn clip_grad_norm(&self) -> Option<ClipGradNorm> {
            CpuOptimizer::clip_grad_norm(self)
        }
        fn last_grad_norm(&self) -> Result<Option<f32>> {
            Ok(CpuOptimizer::last_grad_norm(self))
        }
        fn set_skip_nonfinite(&mut self, skip: bool) -> Result<()> {
            CpuOptimizer::set_skip_nonfinite(self, skip);
            Ok(())
        }
        fn skip_nonfinite(&self) -> bool {
            CpuOptimizer::skip_nonfinite(self)
        }
        fn skipped_steps(&mut self) -> Result<u64> {
            Ok(CpuOptimizer::skipped_steps(self))
        }
        fn last_step_skipped(&mut self) -> Result<bool> {
            Ok(CpuOptimizer::last_step_skipped(self))
        }
        fn set_grad_scale(&mut self, scale: f64) -> Result<()> {
            CpuOptimizer::set_grad_scale(self, scale)
        }
        fn grad_scale(&self) -> f64 {
            CpuOptimizer::grad_scale(self)
        }
        fn write_params(&mut self, params: &[&[f32]]) -> Result<()> {
            CpuOptimizer::write_params(self, params)
        }
        fn write_state(&mut self, name: &str, tensors: &[&[f32]]) -> Result<()> {
            CpuOptimizer::write_state(self, name, tensors)
        }
        fn read_params(&self) -> Result<Vec<Vec<f32>>> {
            Ok(self.params().into_iter().map(<[f32]>::to_vec).collect())
        }
        fn read_state(&self, name: &str) -> Result<Vec<Vec<f32>>> {
            let flat = self.state_values(name)?;
            Ok(self
                .state_layout(name)
                .split_unchecked(&flat)
                .into_iter()
                .map(<[f32]>::to_vec)
                .collect())
        }
        fn scalar_state(&self) -> Result<Vec<(&'static str, f64)>> {
            Ok(CpuOptimizer::scalar_state(self))
        }
        fn checkpoint(&self) -> Result<Checkpoint> {
            Ok(CpuOptimizer::checkpoint(self))
        }
        fn load_checkpoint(&mut self, ckpt: &Checkpoint) -> Result<()> {
            CpuOptimizer::load_checkpoint(self, ckpt)
        }
    }

    impl Optimizer for GpuOptimizer {
        fn step(&mut self, grads: &[&[f32]]) -> Result<()> {
            GpuOptimizer::step(self, grads)
        }
        fn step_combining_tensor_sums(
            &mut self,
            grads: &[&[f32]],
            combine: &mut CombineTensorSums<'_>,
        ) -> Result<()> {
            GpuOptimizer::step_combining_tensor_sums(self, grads, combine)
        }
        fn combines_tensor_sums(&self) -> bool {
            GpuOptimizer::combines_tensor_sums(self)
        }
        fn config(&self) -> &Config {
            GpuOptimizer::config(self)
        }
        fn layout(&self) -> &Layout {
            GpuOptimizer::layout(self)
        }
        fn state_names(&self) -> &[&'static str] {
            GpuOptimizer::state_names(self)
        }
        fn step_count(&self) -> u64 {
            GpuOptimizer::step_count(self)
        }
        fn set_lr(&mut self, lr: f64) -> Result<()> {
            GpuOptimizer::set_lr(self, lr)
        }
        fn set_momentum(&mut self, momentum: f64) -> Result<()> {
            GpuOptimizer::set_momentum(self, momentum)
        }
        fn group_count(&self) -> usize {
            GpuOptimizer::group_count(self)
        }
        fn groups(&self) -> Vec<ParamGroup> {
            GpuOptimizer::groups(self)
        }
        fn group_config(&self, g: usize) -> Result<&Config> {
            GpuOptimizer::group_config(self, g)
        }
        fn set_group_lr(&mut self, g: usize, lr: f64) -> Result<()> {
            GpuOptimizer::set_group_lr(self, g, lr)
        }
        fn set_group_momentum(&mut self, g: usize, momentum: f64) -> Result<()> {
            GpuOptimizer::set_group_momentum(self, g, momentum)
        }
        fn add_param_group(&mut self, config: Config, params: &[&[f32]]) -> Result<usize> {
            GpuOptimizer::add_param_group(self, config, params)
        }
        fn set_clip_grad_norm(&mut self, clip: Option<ClipGradNorm>) -> Result<()> {
            GpuOptimizer::set_clip_grad_norm(self, clip)
        }
        fn clip_grad_norm(&self) -> Option<ClipGradNorm> {
            GpuOptimizer::clip_grad_norm(self)
        }
        fn last_grad_norm(&self) -> Result<Option<f32>> {
            GpuOptimizer::last_grad_norm(self)
        }
        fn set_skip_nonfinite(&mut self, skip: bool) -> Result<()> {
            GpuOptimizer::set_skip_nonfinite(self, skip)
        }
        fn skip_nonfinite(&self) -> bool {
            GpuOptimizer::skip_nonfinite(self)
        }
        fn skipped_steps(&mut self) -> Result<u64> {
            GpuOptimizer::skipped_steps(self)
        }
        fn last_step_skipped(&mut self) -> Result<bool> {
            GpuOptimizer::last_step_skipped(self)
        }
        fn set_grad_scale(&mut self, scale: f64) -> Result<()> {
            GpuOptimizer::set_grad_scale(self, scale)
        }
        fn grad_scale(&self) -> f64 {
            GpuOptimizer::grad_scale(self)
        }
        fn write_params(&mut self, params: &[&[f32]]) -> Result<()> {
            GpuOptimizer::write_params(self, params)
        }
        fn write_state(&mut self, name: &str, tensors: &[&[f32]]) -> Result<()> {
            GpuOptimizer::write_state(self, name, tensors)
        }
        fn read_params(&self) -> Result<Vec<Vec<f32>>> {
            GpuOptimizer::read_params(self)
        }
        fn read_state(&self, name: &str) -> Result<Vec<Vec<f32>>> {
            GpuOptimizer::read_state(self, name)
        }
        fn scalar_state(&self) -> Result<Vec<(&'static str, f64)>> {
            GpuOptimizer::scalar_state(self)
        }
        fn checkpoint(&self) -> Result<Checkpoint> {
            GpuOptimizer::checkpoint(self)
        }
        fn load_checkpoint(&mut self, ckpt: &Checkpoint) -> Result<()> {
            GpuOptimizer::load_checkpoint(self, ckpt)
        }
    }
}
