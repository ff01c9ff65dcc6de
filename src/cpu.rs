//! The CPU optimizer: every rule over host slices.

use crate::checkpoint::{Checkpoint, GroupFit, GroupState, QuantizedState};
use crate::clip::{total_norm, ClipGradNorm};
use crate::error::{Error, Result};
use crate::groups::ParamGroup;
use crate::layout::{Counters, Layout, Shape};
use crate::optimizer::CombineTensorSums;
use crate::precision::store::LowPrecision;
use crate::precision::Precision;
use crate::rules::{inverse_grad_scale, Config, GradScales};

/// An optimizer whose parameters and state live in host memory.
///
/// It is the test oracle of the GPU kernels (it applies the same per-element
/// functions, written to match each rule's equations) and a backend in its
/// own right: steps run on all cores.
///
/// ```
/// use wgpu_optim::{Adam, CpuOptimizer};
/// let w = vec![1.0f32, -2.0, 3.0];
/// let b = vec![0.5f32];
/// let mut opt = CpuOptimizer::new(Adam::default(), &[&w, &b])?;
/// opt.step(&[&[0.1, 0.2, -0.3], &[1.0]])?;
/// // Adam's first step moves every element by about lr = 1e-3.
/// assert!((opt.param(0)[0] - (1.0 - 1e-3)).abs() < 1e-6);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct CpuOptimizer {
    /// The parameter groups, never empty; the first one's step count is
    /// the optimizer's (a group added later starts from 0, as in torch).
    groups: Vec<Group>,
    layout: Layout,
    params: Vec<f32>,
    state_names: Vec<&'static str>,
    state: Vec<Vec<f32>>,
    clip: Option<ClipGradNorm>,
    last_grad_norm: Option<f32>,
    skip_nonfinite: bool,
    skipped: u64,
    last_skipped: bool,
    grad_scale: f64,
    inv_scale: f32,
    /// Schedule-free eval mode: the parameters hold `x`, not `y`.
    eval: bool,
    /// Low-precision parameters or state ([`CpuOptimizer::with_precision`]):
    /// `params` then hold the model's (rounded) values and `state` is empty.
    low: Option<Box<LowPrecision>>,
}

impl CpuOptimizer {
    /// An optimizer over copies of these parameter tensors, with fresh state.
    /// An empty parameter list is refused ([`Error::EmptyParameterList`]),
    /// as `torch.optim` refuses it; tensors of zero elements are fine.
    pub fn new(config: impl Into<Config>, params: &[&[f32]]) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        let momentum_buffer = config.builds_momentum_buffer();
        Self::with_state(config, momentum_buffer, params)
    }

    /// As [`CpuOptimizer::new`], with each tensor's [`Shape`] (torch's
    /// `shape`; its element count the tensor's length,
    /// [`Error::ShapeMismatch`]), for the rules that treat a tensor as a
    /// matrix: [`crate::Adafactor`] factors every tensor of two or more
    /// dimensions, [`crate::Muon`] needs every tensor 2-D
    /// ([`Error::MatrixRequired`]). The element-wise rules ignore the shapes;
    /// checkpoints record them ([`Checkpoint::shapes`]).
    ///
    /// ```
    /// use wgpu_optim::{CpuOptimizer, Error, Muon, Shape};
    /// let (w, b) = (vec![0.1f32; 6], vec![0.0f32; 3]);
    /// let bad = CpuOptimizer::with_shapes(Muon::default(), &[&w, &b],
    ///     &[Shape::matrix(2, 3), Shape::vector(3)]);
    /// assert!(matches!(bad, Err(Error::MatrixRequired { tensor: 1, .. })));
    /// let opt = CpuOptimizer::with_shapes(Muon::default(), &[&w], &[Shape::matrix(2, 3)])?;
    /// assert_eq!(opt.layout().shape(0), Some(&Shape::matrix(2, 3)));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn with_shapes(
        config: impl Into<Config>,
        params: &[&[f32]],
        shapes: &[Shape],
    ) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        let momentum_buffer = config.builds_momentum_buffer();
        Self::with_state_shaped(config, momentum_buffer, params, Some(shapes))
    }

    /// As [`CpuOptimizer::new`], with the state set given (with or without
    /// a `momentum_buffer`) and `config` already validated for it: how a
    /// checkpoint of an optimizer whose momentum was set to 0 is rebuilt.
    fn with_state(config: Config, momentum_buffer: bool, params: &[&[f32]]) -> Result<Self> {
        Self::with_state_shaped(config, momentum_buffer, params, None)
    }

    /// [`CpuOptimizer::with_state`] with the tensors' shapes, if any.
    fn with_state_shaped(
        config: Config,
        momentum_buffer: bool,
        params: &[&[f32]],
        shapes: Option<&[Shape]>,
    ) -> Result<Self> {
        if params.is_empty() {
            return Err(Error::EmptyParameterList);
        }
        let mut layout = Layout::of(params)?;
        if let Some(shapes) = shapes {
            layout = layout.with_shapes(shapes)?;
        }
        config.check_shapes(&layout)?;
        let flat: Vec<f32> = params.iter().flat_map(|t| t.iter().copied()).collect();
        let state_names = config.state_names_with(momentum_buffer);
        let state = state_names
            .iter()
            .map(|name| {
                let n = layout.state_layout(&config, name).total();
                vec![config.state_initial_value(name); n]
            })
            .collect();
        let state_len = state_names.len();
        Ok(CpuOptimizer {
            groups: vec![Group::new(
                config,
                (0..params.len()).collect(),
                momentum_buffer,
                (0..state_len).collect(),
            )],
            layout,
            params: flat,
            state_names,
            state,
            clip: None,
            last_grad_norm: None,
            skip_nonfinite: false,
            skipped: 0,
            last_skipped: false,
            grad_scale: 1.0,
            inv_scale: 1.0,
            eval: false,
            low: None,
        })
    }

    /// As [`CpuOptimizer::new`], with the parameters and state kept in the
    /// formats of `precision` ([`Precision`], the [`crate::precision`]
    /// module): the arithmetic stays the rule's f32, each parameter and
    /// state rounded (or quantized) when stored. The parameters given are
    /// rounded to `param_dtype` (nearest even); with `master_weights` they
    /// are also kept as given, in f32, and stepped there
    /// ([`CpuOptimizer::master_params`]). [`CpuOptimizer::param`] reads the
    /// model's parameters, 16-bit values widened to f32. The gradients are
    /// used as given.
    ///
    /// Refused ([`Error::Unsupported`], [`Error::InvalidOptions`]): the
    /// combinations [`Precision::validate`] refuses, and with any non-f32
    /// format LAMB, the schedule-free rules, and 8-bit state other than
    /// `exp_avg`/`exp_avg_sq` (as [`crate::precision::blockwise`] says).
    /// Such an optimizer has one parameter group
    /// ([`CpuOptimizer::add_param_group`] is refused) and its state is read
    /// with [`crate::Optimizer::read_state`] (widened to f32). Its
    /// checkpoints keep every tensor in its stored format and restore
    /// exactly ([`Checkpoint::precision`]).
    pub fn with_precision(
        config: impl Into<Config>,
        params: &[&[f32]],
        precision: Precision,
    ) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        let momentum_buffer = config.builds_momentum_buffer();
        Self::with_precision_state(config, momentum_buffer, params, precision)
    }

    /// [`CpuOptimizer::with_precision`] with the momentum buffer's presence
    /// given (a checkpoint's).
    fn with_precision_state(
        config: Config,
        momentum_buffer: bool,
        params: &[&[f32]],
        precision: Precision,
    ) -> Result<Self> {
        let names = config.state_names_with(momentum_buffer);
        if config.is_matrix_rule() && !precision.is_f32() {
            return Err(Error::Unsupported(format!(
                "{} with low-precision parameters or state",
                config.kind()
            )));
        }
        crate::precision::store::check_rule(&precision, &config, &names)?;
        let mut opt = Self::with_state(config, momentum_buffer, params)?;
        if precision.is_f32() {
            return Ok(opt);
        }
        let initial: Vec<f32> = names
            .iter()
            .map(|n| opt.groups[0].config.state_initial_value(n))
            .collect();
        opt.low = Some(Box::new(LowPrecision::new(
            precision,
            &opt.layout,
            &mut opt.params,
            &names,
            &initial,
        )));
        for s in &mut opt.state {
            *s = Vec::new();
        }
        Ok(opt)
    }

    /// The formats of the parameters and state ([`CpuOptimizer::with_precision`]).
    pub fn precision(&self) -> Precision {
        self.low
            .as_ref()
            .map_or_else(Precision::default, |l| l.precision)
    }

    /// The f32 master weights, packed, of an optimizer with
    /// `master_weights`; `None` otherwise.
    pub fn master_params(&self) -> Option<&[f32]> {
        self.low.as_ref().and_then(|l| l.master.as_deref())
    }

    /// Bytes the optimizer holds for its parameters, master weights and
    /// state tensors, counting each in its stored format (16-bit parameters
    /// at 2 bytes, though this backend hands them out widened to f32; an
    /// 8-bit state at one byte an element and 4 a block of 256).
    pub fn resident_bytes(&self) -> usize {
        let n = self.layout.total();
        match &self.low {
            None => 4 * (n + self.state.iter().map(Vec::len).sum::<usize>()),
            Some(l) => l.precision.param_dtype.bytes() * n + l.optimizer_bytes(),
        }
    }

    /// The state tensor `name`, packed, widened to f32 from its stored
    /// format (a copy).
    pub fn state_values(&self, name: &str) -> Result<Vec<f32>> {
        let i = state_index(&self.groups[0].config, &self.state_names, name)?;
        Ok(match &self.low {
            Some(l) => l.read_state(i),
            None => self.state[i].clone(),
        })
    }

    /// One step with one gradient per parameter tensor. Checks every length
    /// first: on error nothing changes.
    pub fn step(&mut self, grads: &[&[f32]]) -> Result<()> {
        self.layout.check(grads)?;
        if grads.len() == 1 {
            return self.step_flat(grads[0]);
        }
        let flat: Vec<f32> = grads.iter().flat_map(|t| t.iter().copied()).collect();
        self.step_flat(&flat)
    }

    /// One step with the gradients packed as the parameters are (see [`Layout`]).
    ///
    /// In order, as PyTorch's `GradScaler` and `clip_grad_norm_` do: the
    /// gradients are divided by the loss scale ([`CpuOptimizer::set_grad_scale`]),
    /// their total norm taken (clipping), then with
    /// [`CpuOptimizer::set_skip_nonfinite`] a step whose gradients hold a NaN
    /// or an infinity is skipped (`Ok`, nothing changes, the skip counted);
    /// otherwise a non-finite norm with `error_if_nonfinite` is refused.
    pub fn step_flat(&mut self, grads: &[f32]) -> Result<()> {
        self.step_flat_combining(grads, None)
    }

    /// A LAMB step whose trust ratios come from per-tensor sums that
    /// `combine` may change: between the pass that moves the moments and
    /// the one that moves the parameters, `combine` gets each tensor's
    /// `[Σθ², Σu²]` (f64; `u` the update direction) and may replace them
    /// (the sharded optimizer adds the parts of a tensor that other ranks
    /// hold). Otherwise as [`CpuOptimizer::step`]. Rules other than LAMB,
    /// several parameter groups, and an optimizer with its own clipping or
    /// non-finite skip (either could end the step before `combine`, which
    /// other ranks wait on; the sharded optimizer does both itself) are
    /// [`Error::Unsupported`] (nothing changes); when `combine` fails, its
    /// error is returned with the moments stepped and the parameters and
    /// step count not: restore a checkpoint.
    pub fn step_combining_tensor_sums(
        &mut self,
        grads: &[&[f32]],
        combine: &mut CombineTensorSums<'_>,
    ) -> Result<()> {
        if self.clip.is_some() || self.skip_nonfinite || self.low.is_some() {
            return Err(Error::Unsupported(
                "per-tensor sums combined in a step with the optimizer's own clipping, non-finite skip or low-precision storage"
                    .into(),
            ));
        }
        if !matches!(self.groups[0].config, Config::Lamb(_)) || self.groups.len() != 1 {
            return Err(Error::Unsupported(format!(
                "per-tensor sums combined in a step of {} over {} parameter group(s) (LAMB over one group only)",
                self.groups[0].config.kind().name(),
                self.groups.len()
            )));
        }
        self.layout.check(grads)?;
        let flat: Vec<f32> = grads.iter().flat_map(|t| t.iter().copied()).collect();
        self.step_flat_combining(&flat, Some(combine))
    }

    /// Whether [`CpuOptimizer::step_combining_tensor_sums`] can step it.
    pub(crate) fn combines_tensor_sums(&self) -> bool {
        self.groups.len() == 1
            && matches!(self.groups[0].config, Config::Lamb(_))
            && self.clip.is_none()
            && !self.skip_nonfinite
            && self.low.is_none()
    }

    fn step_flat_combining(
        &mut self,
        grads: &[f32],
        combine: Option<&mut CombineTensorSums<'_>>,
    ) -> Result<()> {
        self.layout.check_flat(grads)?;
        if self.eval {
            return Err(Error::EvalMode {
                rule: self.groups[0].config.kind().name(),
            });
        }
        use rayon::prelude::*;
        // The loss scale and the clip coefficient are applied chunk by
        // chunk inside the step (GradScales), never to a copy of all the
        // gradients.
        let mut scales = GradScales {
            inv_scale: self.inv_scale,
            clip: 1.0,
        };
        let mut norm = None;
        if let Some(clip) = self.clip {
            let n = total_norm(grads, self.inv_scale);
            norm = Some(n);
            scales.clip = clip.scale(n);
        }
        if self.skip_nonfinite && grads.par_iter().any(|g| !g.is_finite()) {
            self.last_grad_norm = norm;
            self.skipped += 1;
            self.last_skipped = true;
            return Ok(());
        }
        if let (Some(clip), Some(n)) = (self.clip, norm) {
            if clip.error_if_nonfinite && !n.is_finite() {
                // With skipping on, a refused step counts as skipped (the
                // GPU counts it so too).
                if self.skip_nonfinite {
                    self.skipped += 1;
                    self.last_skipped = true;
                }
                self.last_grad_norm = norm;
                return Err(Error::NonFiniteGradNorm { norm: n as f64 });
            }
        }
        self.last_grad_norm = norm;
        self.last_skipped = false;
        if let Some(low) = &mut self.low {
            let group = &mut self.groups[0];
            let step = group.counters.step + 1;
            low.step(
                &group.config,
                step,
                group.counters.buffer_filled,
                &group.scalar_state,
                &self.layout,
                &mut self.params,
                grads,
                scales,
            );
            group.finish_step(step);
            return Ok(());
        }
        if let (Some(combine), [group]) = (combine, self.groups.as_mut_slice()) {
            return group.step_lamb_combining(
                &self.layout,
                &mut self.params,
                grads,
                &mut self.state,
                scales,
                combine,
            );
        }
        // PyTorch multiplies the gradients by the clip coefficient (f32)
        // before the step; the GPU does the same inside its kernel.
        if let [group] = self.groups.as_mut_slice() {
            // One group holds every tensor, packed: no copies.
            group.step(
                &self.layout,
                &mut self.params,
                grads,
                &mut self.state,
                scales,
            );
            return Ok(());
        }
        for group in &mut self.groups {
            group.step_gathered(
                &self.layout,
                &mut self.params,
                grads,
                &mut self.state,
                scales,
            );
        }
        Ok(())
    }

    /// Switches a schedule-free optimizer ([`crate::SgdScheduleFree`],
    /// [`crate::AdamWScheduleFree`]) between train mode (`false`, the
    /// default: the parameters are `y`, where gradients are taken) and eval
    /// mode (`true`: the parameters are the average
    /// `x = (y − (1 − β1)·z)/β1`, to evaluate and save the model with), in
    /// place, as the package's `eval()` and `train()` do:
    /// `θ ← lerp(θ, z, 1 − 1/β1)` to eval, `θ ← lerp(θ, z, 1 − β1)` back, with
    /// the `β1` in force. Before the first step (no `z` yet) only the mode
    /// changes; so does a switch to the mode in force. A step in eval mode
    /// is [`Error::EvalMode`]; [`CpuOptimizer::checkpoint`] saves `y`
    /// whatever the mode, and restoring one returns to train mode. Other
    /// rules have no eval mode ([`Error::Unsupported`]); a `β1` of 0 has
    /// no `x` ([`Error::InvalidHyperparameter`]).
    ///
    /// ```
    /// use wgpu_optim::{CpuOptimizer, SgdScheduleFree};
    /// let sf = SgdScheduleFree { lr: 0.1, ..SgdScheduleFree::default() };
    /// let mut opt = CpuOptimizer::new(sf, &[&[1.0f32]])?;
    /// opt.step(&[&[1.0]])?;
    /// opt.step(&[&[1.0]])?;
    /// let y = opt.param(0)[0];
    /// let z = opt.state("z")?[0][0];
    /// opt.set_eval(true)?;
    /// assert!((opt.param(0)[0] - (y - 0.1 * z) / 0.9).abs() < 1e-6);
    /// assert!(opt.step(&[&[1.0]]).is_err());
    /// opt.set_eval(false)?;
    /// assert!((opt.param(0)[0] - y).abs() < 1e-6);
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn set_eval(&mut self, eval: bool) -> Result<()> {
        // Every group's β1 is checked before any tensor moves.
        let betas = self
            .groups
            .iter()
            .map(|g| eval_beta1(&g.config))
            .collect::<Result<Vec<_>>>()?;
        if eval != self.eval {
            let z = state_index(&self.groups[0].config, &self.state_names, "z")?;
            for (group, beta1) in self.groups.iter().zip(betas) {
                if z_exists(&group.scalar_state) {
                    group.switch_mode(
                        &self.layout,
                        &mut self.params,
                        &self.state[z],
                        crate::rules::schedulefree::mode_switch_weight(beta1, eval),
                    );
                }
            }
        }
        self.eval = eval;
        Ok(())
    }

    /// Whether a schedule-free optimizer is in eval mode
    /// ([`CpuOptimizer::set_eval`]); `false` for every other rule.
    pub fn eval_mode(&self) -> bool {
        self.eval
    }

    /// Skip steps whose gradients hold a NaN or an infinity (PyTorch's
    /// `GradScaler` `found_inf`, optax's `apply_if_finite`): parameters,
    /// state and step count stay as they were, and the skip is counted
    /// ([`CpuOptimizer::skipped_steps`], [`CpuOptimizer::last_step_skipped`]).
    /// Off by default: a NaN then propagates, as in PyTorch.
    pub fn set_skip_nonfinite(&mut self, skip: bool) {
        self.skip_nonfinite = skip;
    }

    /// Whether steps with non-finite gradients are skipped.
    pub fn skip_nonfinite(&self) -> bool {
        self.skip_nonfinite
    }

    /// Steps skipped so far because their gradients were not finite.
    pub fn skipped_steps(&self) -> u64 {
        self.skipped
    }

    /// Whether the last call to `step` skipped the step.
    pub fn last_step_skipped(&self) -> bool {
        self.last_skipped
    }

    /// The gradients handed to `step` are loss-scaled by `scale` (mixed
    /// precision): each is multiplied by `1/scale` (rounded to `f32` as
    /// PyTorch's `GradScaler.unscale_` does) before clipping and the update.
    /// 1 (the default) turns it off. Refuses a scale that is not finite and
    /// positive ([`Error::InvalidHyperparameter`] `grad_scale`).
    pub fn set_grad_scale(&mut self, scale: f64) -> Result<()> {
        self.inv_scale = inverse_grad_scale(scale)?;
        self.grad_scale = scale;
        Ok(())
    }

    /// The loss scale in force (1: none).
    pub fn grad_scale(&self) -> f64 {
        self.grad_scale
    }

    /// The whole state, parameters included, as a [`Checkpoint`] to
    /// [`Checkpoint::save`]. With low-precision parameters or state
    /// ([`CpuOptimizer::with_precision`]) it holds the precision, the
    /// model's parameters and state widened to f32 (exactly), the master
    /// weights, and each 8-bit state's codes and scales
    /// ([`Checkpoint::quantized`]): restored into an optimizer of the same
    /// precision it goes on bit for bit. With several parameter groups it
    /// lists them in [`Checkpoint::groups`], each group's counters and
    /// scalar state in [`Checkpoint::group_state`]; the file has them in
    /// torch's `param_groups` form, and restores into an optimizer of the
    /// same groups.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            config: self.groups[0].config.clone(),
            lengths: self.layout.lengths().to_vec(),
            shapes: self
                .layout
                .shapes()
                .map(<[Shape]>::to_vec)
                .unwrap_or_default(),
            step: self.groups[0].counters.step,
            buffer_filled: self.groups[0].counters.buffer_filled,
            state: self
                .state_names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let mut v = match &self.low {
                        Some(l) => l.read_state(i),
                        None => self.state[i].clone(),
                    };
                    // A group without this state keeps nothing there.
                    for g in self.groups.iter().filter(|g| !g.state_idx.contains(&i)) {
                        for &t in &g.params {
                            v[self.layout.range(t)].fill(0.0);
                        }
                    }
                    (n.to_string(), v)
                })
                .collect(),
            scalar_state: self
                .scalar_state()
                .into_iter()
                .map(|(n, v)| (n.to_string(), v))
                .collect(),
            params: Some(self.train_params()),
            clip: self.clip,
            skip_nonfinite: self.skip_nonfinite,
            skipped_steps: self.skipped,
            grad_scale: self.grad_scale,
            scheduler: None,
            groups: if self.groups.len() > 1 {
                self.groups()
            } else {
                Vec::new()
            },
            group_state: if self.groups.len() > 1 {
                self.groups
                    .iter()
                    .map(|g| GroupState {
                        step: g.counters.step,
                        buffer_filled: g.counters.buffer_filled,
                        scalar_state: scalar_state_of(&g.config, g.counters.step, &g.scalar_state)
                            .into_iter()
                            .map(|(n, v)| (n.to_string(), v))
                            .collect(),
                        state_names: g
                            .state_idx
                            .iter()
                            .map(|&i| self.state_names[i].to_string())
                            .collect(),
                    })
                    .collect()
            } else {
                Vec::new()
            },
            precision: self.precision(),
            master_params: self.master_params().map(<[f32]>::to_vec),
            quantized: self.low.as_ref().map_or_else(Vec::new, |l| {
                l.quantized()
                    .into_iter()
                    .map(|(s, t, codes, absmax)| QuantizedState {
                        state: self.state_names[s].to_string(),
                        tensor: t,
                        codes: codes.to_vec(),
                        absmax: absmax.to_vec(),
                    })
                    .collect()
            }),
        }
    }

    /// A new optimizer with the checkpoint's parameters, state, step count,
    /// hyperparameters and options. The checkpoint must carry the
    /// parameters (otherwise build the optimizer from yours and use
    /// [`CpuOptimizer::load_checkpoint`]).
    pub fn from_checkpoint(ckpt: &Checkpoint) -> Result<Self> {
        ckpt.validate()?;
        let Some(flat) = &ckpt.params else {
            return Err(Error::Checkpoint(
                "the checkpoint has no parameters: build the optimizer from yours and call load_checkpoint".into(),
            ));
        };
        let layout = Layout::new(&ckpt.lengths)?;
        if !ckpt.groups.is_empty() {
            let mut opt = CpuOptimizer::with_param_groups(&layout.split(flat)?, &ckpt.groups)?;
            opt.load_checkpoint(ckpt)?;
            return Ok(opt);
        }
        let mut opt = if ckpt.shapes.is_empty() {
            CpuOptimizer::with_precision_state(
                ckpt.config.clone(),
                ckpt.momentum_buffer(),
                &layout.split(ckpt.master_params.as_ref().unwrap_or(flat))?,
                ckpt.precision,
            )?
        } else {
            // Shapes (the matrix rules) come in f32 only.
            CpuOptimizer::with_state_shaped(
                ckpt.config.clone(),
                ckpt.momentum_buffer(),
                &layout.split(flat)?,
                Some(ckpt.shapes.as_slice()),
            )?
        };
        opt.load_checkpoint(ckpt)?;
        Ok(opt)
    }

    /// Restores a checkpoint into this optimizer: its state, step count,
    /// hyperparameters, clipping, loss scale and skip option, and its
    /// parameters when it carries them. The checkpoint must be of the same
    /// rule with the same options fixed at construction (those that decide
    /// the state tensors and the kernel) and the same tensor lengths
    /// ([`Error::CheckpointMismatch`]). Everything is checked before
    /// anything changes.
    pub fn load_checkpoint(&mut self, ckpt: &Checkpoint) -> Result<()> {
        ckpt.validate()?;
        if self.groups.len() > 1 || !ckpt.groups.is_empty() {
            self.check_fits_groups(ckpt)?;
        } else {
            ckpt.check_fits(
                &self.groups[0].config,
                &self.state_names,
                self.layout.lengths(),
                &self.precision(),
            )?;
        }
        ckpt.check_shapes_fit(&self.layout)?;
        let inv_scale = inverse_grad_scale(ckpt.grad_scale)?;
        match &mut self.low {
            Some(low) => {
                let state: Vec<Vec<f32>> = ckpt.state.iter().map(|(_, v)| v.clone()).collect();
                low.restore(
                    &self.state_names,
                    &self.layout,
                    &state,
                    |s, t| {
                        ckpt.quantized
                            .iter()
                            .find(|q| q.tensor == t && q.state == self.state_names[s])
                            .map(|q| (q.codes.as_slice(), q.absmax.as_slice()))
                    },
                    ckpt.master_params.as_deref(),
                );
            }
            None => {
                for (dst, (_, src)) in self.state.iter_mut().zip(&ckpt.state) {
                    dst.copy_from_slice(src);
                }
            }
        }
        if let Some(p) = &ckpt.params {
            self.params.copy_from_slice(p);
        }
        let values = |s: &[(String, f64)]| s.iter().map(|(_, v)| *v).collect();
        if ckpt.groups.is_empty() {
            self.groups[0].config = ckpt.config.clone();
            self.groups[0].scalar_state = values(&ckpt.scalar_state);
            self.groups[0].counters = Counters {
                step: ckpt.step,
                buffer_filled: ckpt.buffer_filled,
            };
        }
        for ((group, saved), counters) in self
            .groups
            .iter_mut()
            .zip(&ckpt.groups)
            .zip(&ckpt.group_state)
        {
            group.config = saved.config.clone();
            group.scalar_state = values(&counters.scalar_state);
            group.counters = Counters {
                step: counters.step,
                buffer_filled: counters.buffer_filled,
            };
        }
        self.clip = ckpt.clip;
        self.last_grad_norm = None;
        self.skip_nonfinite = ckpt.skip_nonfinite;
        self.skipped = ckpt.skipped_steps;
        self.last_skipped = false;
        self.grad_scale = ckpt.grad_scale;
        self.inv_scale = inv_scale;
        // A checkpoint holds train mode's parameters.
        self.eval = false;
        Ok(())
    }

    /// Checks that a checkpoint of several groups (or one into an
    /// optimizer of several) fits: as many groups, each of the same tensors
    /// and fitting as one group's checkpoint does.
    fn check_fits_groups(&self, ckpt: &Checkpoint) -> Result<()> {
        let groups = self.groups();
        let fits: Vec<GroupFit<'_>> = groups
            .iter()
            .zip(&self.groups)
            .map(|(group, own)| GroupFit {
                group,
                state_names: own.state_idx.iter().map(|&i| self.state_names[i]).collect(),
            })
            .collect();
        ckpt.check_fits_groups(
            &fits,
            &self.state_names,
            self.layout.lengths(),
            &self.precision(),
        )
    }

    /// Replaces the state tensor `name` (one slice per parameter tensor).
    /// Checks the name and every length first: on error nothing changes.
    pub fn write_state(&mut self, name: &str, tensors: &[&[f32]]) -> Result<()> {
        let i = state_index(&self.groups[0].config, &self.state_names, name)?;
        let state_layout = self.state_layout(name);
        state_layout.check(tensors)?;
        if let Some(low) = &mut self.low {
            let flat: Vec<f32> = tensors.iter().flat_map(|t| t.iter().copied()).collect();
            low.write_state(i, &self.state_names, &self.layout, &flat);
            return Ok(());
        }
        for (t, src) in tensors.iter().enumerate() {
            self.state[i][state_layout.range(t)].copy_from_slice(src);
        }
        Ok(())
    }

    /// Replaces the parameters with these values (same layout).
    /// With low-precision parameters ([`CpuOptimizer::with_precision`]) the
    /// master weights take them as given, the parameters rounded.
    pub fn write_params(&mut self, params: &[&[f32]]) -> Result<()> {
        self.layout.check(params)?;
        if let Some(low) = &mut self.low {
            let flat: Vec<f32> = params.iter().flat_map(|t| t.iter().copied()).collect();
            low.write_params(&mut self.params, &flat);
            return Ok(());
        }
        for (t, src) in params.iter().enumerate() {
            let r = self.layout.range(t);
            self.params[r].copy_from_slice(src);
        }
        Ok(())
    }

    /// Turns global-norm gradient clipping on (`Some`) or off (`None`) from
    /// the next step on ([`ClipGradNorm`]).
    pub fn set_clip_grad_norm(&mut self, clip: Option<ClipGradNorm>) -> Result<()> {
        if let Some(c) = clip {
            c.validate()?;
        }
        self.clip = clip;
        self.last_grad_norm = None;
        Ok(())
    }

    /// The clipping in force.
    pub fn clip_grad_norm(&self) -> Option<ClipGradNorm> {
        self.clip
    }

    /// The total gradient norm of the last step clipping saw (before
    /// clipping; a step refused by `error_if_nonfinite` included); `None`
    /// while clipping is off and before the first step after
    /// [`CpuOptimizer::set_clip_grad_norm`]. The GPU optimizer answers the same.
    pub fn last_grad_norm(&self) -> Option<f32> {
        self.clip.and(self.last_grad_norm)
    }

    /// The rule and hyperparameters in force (the first group's, with
    /// several: [`CpuOptimizer::group_config`]).
    pub fn config(&self) -> &Config {
        &self.groups[0].config
    }

    /// How the tensors are packed.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Steps taken so far (by the first group; a group added later has
    /// taken fewer).
    pub fn step_count(&self) -> u64 {
        self.groups[0].counters.step
    }

    /// Sets the learning rate of every group from the next step on; on
    /// error no group changes.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.set_all(|c, _| c.set_lr(lr))
    }

    /// Sets the momentum (SGD, RMSprop) or `beta1` (Adam, AdamW, NAdam,
    /// LAMB) of every group from the next step on; on error no group
    /// changes.
    pub fn set_momentum(&mut self, momentum: f64) -> Result<()> {
        self.set_all(|c, has_buffer| c.set_momentum(momentum, has_buffer))
    }

    /// `set` on a copy of every group's configuration, then all committed
    /// at once: a value one group refuses changes no group.
    fn set_all(&mut self, set: impl Fn(&mut Config, bool) -> Result<()>) -> Result<()> {
        let mut configs: Vec<Config> = self.groups.iter().map(|g| g.config.clone()).collect();
        for (c, g) in configs.iter_mut().zip(&self.groups) {
            set(c, g.momentum_buffer)?;
        }
        for (g, c) in self.groups.iter_mut().zip(configs) {
            g.config = c;
        }
        Ok(())
    }

    /// An optimizer over several parameter groups, torch's
    /// `Optimizer([{"params": ..., **hyper}, ...])`: each group its tensors
    /// and a full configuration of one rule (`Adam { weight_decay: 0.0,
    /// ..base }`). Tensors are numbered in group order (group 0's first),
    /// the order `step` takes the gradients in.
    ///
    /// Groups may differ in any hyperparameter, those that decide the
    /// state tensors included (Adam's `amsgrad`, RMSprop's `centered` or a
    /// momentum in one group only): each group has the state torch gives
    /// it, and reading a state tensor a group lacks gives the values it
    /// was made with (0) for that group's tensors. Refused, nothing built:
    /// no tensor at all ([`Error::EmptyParameterList`]), a group of another
    /// rule than the first ([`Error::GroupRuleMismatch`]), a configuration
    /// torch refuses.
    ///
    /// ```
    /// use wgpu_optim::{Config, CpuOptimizer, Sgd};
    /// let base = Sgd { lr: 0.1, weight_decay: 0.01, ..Sgd::default() };
    /// let no_decay = Sgd { weight_decay: 0.0, ..base.clone() };
    /// let (w, b) = (vec![1.0f32; 4], vec![1.0f32]);
    /// let mut opt = CpuOptimizer::with_groups(&[
    ///     (Config::from(base), &[&w[..]][..]),
    ///     (Config::from(no_decay), &[&b[..]][..]),
    /// ])?;
    /// opt.step(&[&[0.0; 4], &[0.0]])?;
    /// // The weights decay, the bias does not.
    /// assert!(opt.param(0)[0] < 1.0);
    /// assert_eq!(opt.param(1)[0], 1.0);
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn with_groups(groups: &[(Config, &[&[f32]])]) -> Result<Self> {
        let (tensors, groups) = crate::groups::number_in_order(groups);
        Self::with_param_groups(&tensors, &groups)
    }

    /// An optimizer over `params` in the groups given by index
    /// ([`ParamGroup`]): every tensor in exactly one group
    /// ([`Error::TensorInTwoGroups`], [`Error::TensorInNoGroup`],
    /// [`Error::NoSuchTensor`] otherwise), and the checks of
    /// [`CpuOptimizer::with_groups`].
    pub fn with_param_groups(params: &[&[f32]], groups: &[ParamGroup]) -> Result<Self> {
        crate::groups::check_groups(groups, params.len())?;
        let first = &groups[0].config;
        if groups.len() > 1 && first.is_matrix_rule() {
            return Err(matrix_groups_unsupported(first));
        }
        let mut opt = Self::with_state(first.clone(), first.builds_momentum_buffer(), params)?;
        opt.groups.clear();
        for g in groups {
            opt.push_group(g.config.clone(), g.params.clone());
        }
        Ok(opt)
    }

    /// Adds a group of tensors already in the layout, checked: its state
    /// tensors (torch's for its configuration) join the optimizer's where
    /// they are new, and start from its configuration's initial values
    /// (Adagrad's `initial_accumulator_value`).
    fn push_group(&mut self, config: Config, params: Vec<usize>) {
        let momentum_buffer = config.builds_momentum_buffer();
        let names = config.state_names_with(momentum_buffer);
        let mut state_idx = Vec::with_capacity(names.len());
        for (k, name) in names.iter().enumerate() {
            let i = match self.state_names.iter().position(|n| n == name) {
                Some(i) => i,
                None => {
                    // After the group's previous name, so that the order
                    // stays the rule's.
                    let at = match k {
                        0 => 0,
                        _ => state_idx[k - 1] + 1,
                    };
                    self.state_names.insert(at, name);
                    self.state.insert(at, vec![0.0; self.layout.total()]);
                    for g in &mut self.groups {
                        for i in &mut g.state_idx {
                            if *i >= at {
                                *i += 1;
                            }
                        }
                    }
                    for i in &mut state_idx {
                        if *i >= at {
                            *i += 1;
                        }
                    }
                    at
                }
            };
            state_idx.push(i);
        }
        self.groups
            .push(Group::new(config, params, momentum_buffer, state_idx));
        self.fill_initial_state(self.groups.len() - 1);
    }

    /// Appends a group of new tensors with its configuration, as torch's
    /// `add_param_group`; they take the next tensor indices (after every
    /// tensor already held) and start with fresh state and a step count of
    /// 0. Returns the group's index. Refused, nothing changed: a
    /// configuration of another rule ([`Error::GroupRuleMismatch`]) or one
    /// torch refuses.
    pub fn add_param_group(
        &mut self,
        config: impl Into<Config>,
        params: &[&[f32]],
    ) -> Result<usize> {
        let config = config.into();
        if self.low.is_some() {
            return Err(Error::Unsupported(
                "a parameter group added to an optimizer with low-precision parameters or state"
                    .into(),
            ));
        }
        let first = ParamGroup::new(self.groups[0].config.clone(), Vec::new());
        let g = self.groups.len();
        crate::groups::check_kind(&first, g, &config)?;
        if config.is_matrix_rule() {
            return Err(matrix_groups_unsupported(&config));
        }
        config.validate()?;
        let mut lengths = self.layout.lengths().to_vec();
        let start = lengths.len();
        lengths.extend(params.iter().map(|t| t.len()));
        let layout = Layout::new(&lengths)?;
        self.layout = layout;
        for t in params {
            self.params.extend_from_slice(t);
        }
        for s in &mut self.state {
            s.resize(self.layout.total(), 0.0);
        }
        self.push_group(config, (start..lengths.len()).collect());
        Ok(g)
    }

    /// Sets group `g`'s state tensors to its configuration's initial values.
    fn fill_initial_state(&mut self, g: usize) {
        let group = &self.groups[g];
        for &i in &group.state_idx {
            let (name, s) = (self.state_names[i], &mut self.state[i]);
            let v = group.config.state_initial_value(name);
            for &t in &group.params {
                s[self.layout.range(t)].fill(v);
            }
        }
    }

    /// Number of parameter groups (1 for an optimizer built with
    /// [`CpuOptimizer::new`]).
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// The parameter groups: each one's tensor indices and configuration in
    /// force.
    pub fn groups(&self) -> Vec<ParamGroup> {
        self.groups
            .iter()
            .map(|g| ParamGroup::new(g.config.clone(), g.params.clone()))
            .collect()
    }

    /// Group `g`'s configuration in force ([`Error::NoSuchGroup`] past the last).
    pub fn group_config(&self, g: usize) -> Result<&Config> {
        crate::groups::check_group_index(g, self.groups.len())?;
        Ok(&self.groups[g].config)
    }

    /// Sets group `g`'s learning rate from the next step on.
    pub fn set_group_lr(&mut self, g: usize, lr: f64) -> Result<()> {
        crate::groups::check_group_index(g, self.groups.len())?;
        self.groups[g].config.set_lr(lr)
    }

    /// Sets group `g`'s momentum (or `beta1`) from the next step on.
    pub fn set_group_momentum(&mut self, g: usize, momentum: f64) -> Result<()> {
        crate::groups::check_group_index(g, self.groups.len())?;
        let group = &mut self.groups[g];
        group.config.set_momentum(momentum, group.momentum_buffer)
    }

    /// Replaces group `g`'s hyperparameters (any of them: weight decay,
    /// betas, ...) from the next step on. The configuration must be of the
    /// optimizer's rule, valid, and keep the group's state tensors (no
    /// `amsgrad` switched on later, [`Error::InvalidOptions`]); otherwise
    /// nothing changes.
    pub fn set_group_config(&mut self, g: usize, config: impl Into<Config>) -> Result<()> {
        let config = config.into();
        crate::groups::check_group_index(g, self.groups.len())?;
        let first = ParamGroup::new(self.groups[0].config.clone(), Vec::new());
        crate::groups::check_kind(&first, g, &config)?;
        let group = &self.groups[g];
        let names: Vec<&'static str> = group
            .state_idx
            .iter()
            .map(|&i| self.state_names[i])
            .collect();
        crate::groups::check_fits(g, &config, group.momentum_buffer, &names)?;
        self.groups[g].config = config;
        Ok(())
    }

    /// Parameter tensor `i`.
    pub fn param(&self, i: usize) -> &[f32] {
        &self.params[self.layout.range(i)]
    }

    /// All parameters, one slice per tensor.
    pub fn params(&self) -> Vec<&[f32]> {
        self.layout.split_unchecked(&self.params)
    }

    /// All parameters, packed.
    pub fn params_flat(&self) -> &[f32] {
        &self.params
    }

    /// Names of the state tensors, as PyTorch names them.
    pub fn state_names(&self) -> &[&'static str] {
        &self.state_names
    }

    /// The rule's scalar state ([`Config::scalar_state_names`]: NAdam's
    /// `mu_product`, ASGD's `eta` and `mu`), each value as torch keeps it
    /// in every tensor's state after the steps taken (before the first
    /// step, the values it would start from now); empty for the other
    /// rules. With several groups, the first group's (each group has its
    /// own, as each of torch's tensors does).
    pub fn scalar_state(&self) -> Vec<(&'static str, f64)> {
        scalar_state_of(
            &self.groups[0].config,
            self.groups[0].counters.step,
            &self.groups[0].scalar_state,
        )
    }

    /// The state tensor `name` (`exp_avg`, `momentum_buffer`, ...), packed as
    /// the parameters are.
    /// With low-precision state it is not held as f32
    /// ([`Error::Unsupported`]; [`CpuOptimizer::state_values`] widens a copy).
    pub fn state_flat(&self, name: &str) -> Result<&[f32]> {
        let i = state_index(&self.groups[0].config, &self.state_names, name)?;
        if self.low.is_some() {
            return Err(Error::Unsupported(format!(
                "borrowing state `{name}` as f32: it is stored in low precision (state_values widens a copy)"
            )));
        }
        Ok(&self.state[i])
    }

    /// The state tensor `name`, one slice per parameter tensor (as long
    /// as its parameter tensor, but for Adafactor's factored statistics:
    /// `row_var` and `col_var` of a matrix, `variance` of a vector, each
    /// empty for the other kind of tensor).
    pub fn state(&self, name: &str) -> Result<Vec<&[f32]>> {
        Ok(self
            .state_layout(name)
            .split_unchecked(self.state_flat(name)?))
    }

    /// How state tensor `name` is packed: as the parameters are, but for
    /// Adafactor's factored statistics.
    pub(crate) fn state_layout(&self, name: &str) -> Layout {
        self.layout.state_layout(&self.groups[0].config, name)
    }
}

/// Parameter groups of a matrix rule: the groups' steps gather their
/// tensors into packed buffers that know no shapes (nor factored state).
fn matrix_groups_unsupported(config: &Config) -> Error {
    Error::Unsupported(format!("{} over several parameter groups", config.kind()))
}

/// `values`, the scalar state after `step` steps, named; before the first
/// step, the state `config` would start from.
pub(crate) fn scalar_state_of(
    config: &Config,
    step: u64,
    values: &[f64],
) -> Vec<(&'static str, f64)> {
    let initial;
    let values = if step == 0 {
        initial = config.scalar_state_initial();
        &initial
    } else {
        values
    };
    config
        .scalar_state_names()
        .into_iter()
        .zip(values.iter().copied())
        .collect()
}

pub(crate) fn state_index(config: &Config, names: &[&'static str], name: &str) -> Result<usize> {
    names
        .iter()
        .position(|n| *n == name)
        .ok_or_else(|| Error::UnknownState {
            rule: config.kind().name(),
            name: name.to_string(),
            available: names.join(", "),
        })
}

/// The `β1` of a schedule-free rule, or [`Error::Unsupported`]: the other
/// rules have no eval mode.
/// A `β1` of 0 is refused ([`Error::InvalidHyperparameter`]): `x` divides
/// by it.
pub(crate) fn eval_beta1(config: &Config) -> Result<f64> {
    let beta1 = config.eval_beta1().ok_or_else(|| {
        Error::Unsupported(format!(
            "{} has no eval mode (only the schedule-free rules do)",
            config.kind()
        ))
    })?;
    crate::rules::schedulefree::check_eval_beta1(beta1)?;
    Ok(beta1)
}

/// Whether a schedule-free optimizer has its `z` (the package creates it at
/// the first step): `k`, its first number of scalar state, is not 0.
pub(crate) fn z_exists(scalar_state: &[f64]) -> bool {
    scalar_state.first().is_some_and(|&k| k != 0.0)
}

impl CpuOptimizer {
    /// The parameters of train mode (`y`): a copy, switched back from `x`
    /// in eval mode.
    fn train_params(&self) -> Vec<f32> {
        let mut p = self.params.clone();
        if !self.eval {
            return p;
        }
        for group in &self.groups {
            if !z_exists(&group.scalar_state) {
                continue;
            }
            if let (Ok(beta1), Ok(z)) = (
                eval_beta1(&group.config),
                state_index(&group.config, &self.state_names, "z"),
            ) {
                group.switch_mode(
                    &self.layout,
                    &mut p,
                    &self.state[z],
                    crate::rules::schedulefree::mode_switch_weight(beta1, false),
                );
            }
        }
        p
    }
}

/// One parameter group of a [`CpuOptimizer`]: its tensors, configuration and
/// the counters that depend on its history.
#[derive(Clone, Debug)]
struct Group {
    config: Config,
    /// Indices of its tensors in the optimizer's layout.
    params: Vec<usize>,
    /// The rule's scalar state after `counters.step` steps.
    scalar_state: Vec<f64>,
    counters: Counters,
    /// Whether the group has a `momentum_buffer` (fixed when it was made).
    momentum_buffer: bool,
    /// Its state tensors (torch's for its configuration, in their order)
    /// among the optimizer's: groups may have different ones (Adam's
    /// `amsgrad`, RMSprop's `centered` in one group only).
    state_idx: Vec<usize>,
}

impl Group {
    fn new(
        config: Config,
        params: Vec<usize>,
        momentum_buffer: bool,
        state_idx: Vec<usize>,
    ) -> Self {
        Group {
            scalar_state: config.scalar_state_initial(),
            config,
            params,
            counters: Counters::default(),
            momentum_buffer,
            state_idx,
        }
    }

    /// One step over packed tensors that are exactly this group's.
    fn step(
        &mut self,
        layout: &Layout,
        params: &mut [f32],
        grads: &[f32],
        state: &mut [Vec<f32>],
        scales: GradScales,
    ) {
        // PyTorch multiplies the gradients by the clip coefficient (f32)
        // before the step; the GPU does the same inside its kernel.
        let step = self.counters.step + 1;
        self.config.cpu_step(
            step,
            self.counters.buffer_filled,
            &self.scalar_state,
            layout,
            params,
            grads,
            state,
            scales,
        );
        self.finish_step(step);
    }

    /// Records applied step `step`: the scalar state and the counters move
    /// on with the configuration in force.
    fn finish_step(&mut self, step: u64) {
        self.config
            .advance_scalar_state(&mut self.scalar_state, step);
        self.counters.advance(&self.config);
    }

    /// [`Group::step`] for a LAMB group whose per-tensor sums pass
    /// through `combine` ([`CpuOptimizer::step_combining_tensor_sums`]).
    fn step_lamb_combining(
        &mut self,
        layout: &Layout,
        params: &mut [f32],
        grads: &[f32],
        state: &mut [Vec<f32>],
        scales: GradScales,
        combine: &mut CombineTensorSums<'_>,
    ) -> Result<()> {
        let Config::Lamb(c) = &self.config else {
            return Err(Error::Unsupported(
                "per-tensor sums combined in a step of a rule other than LAMB".into(),
            ));
        };
        let step = self.counters.step + 1;
        let entry = self.config.step_entry(step, &self.scalar_state);
        let s = crate::rules::Rule::scalars(c, self.counters.buffer_filled);
        crate::rules::lamb::cpu_step(
            &s,
            (entry[0], entry[1]),
            c,
            layout,
            params,
            grads,
            state,
            scales,
            combine,
        )?;
        self.finish_step(step);
        Ok(())
    }

    /// One step over this group's tensors of the optimizer's `layout`:
    /// they are copied out to packed buffers, stepped, and copied back
    /// (a group's tensors need not be adjacent). The copies cost a pass
    /// over the group's parameters and state; the CPU backend is the
    /// reference, and one group (the usual case) takes no copies.
    fn step_gathered(
        &mut self,
        layout: &Layout,
        params: &mut [f32],
        grads: &[f32],
        state: &mut [Vec<f32>],
        scales: GradScales,
    ) {
        let lengths: Vec<usize> = self.params.iter().map(|&t| layout.lengths()[t]).collect();
        // The lengths are those of tensors already packed in `layout`.
        let Ok(sub) = Layout::new(&lengths) else {
            return;
        };
        let gather = |flat: &[f32]| -> Vec<f32> {
            let mut v = Vec::with_capacity(sub.total());
            for &t in &self.params {
                v.extend_from_slice(&flat[layout.range(t)]);
            }
            v
        };
        let mut p = gather(params);
        let g = gather(grads);
        let mut st: Vec<Vec<f32>> = self.state_idx.iter().map(|&i| gather(&state[i])).collect();
        self.step(&sub, &mut p, &g, &mut st, scales);
        let scatter = |flat: &mut [f32], packed: &[f32]| {
            for (i, &t) in self.params.iter().enumerate() {
                flat[layout.range(t)].copy_from_slice(&packed[sub.range(i)]);
            }
        };
        scatter(params, &p);
        for (&i, src) in self.state_idx.iter().zip(&st) {
            scatter(&mut state[i], src);
        }
    }

    /// Schedule-free's switch between `x` and `y` over this group's tensors.
    fn switch_mode(&self, layout: &Layout, params: &mut [f32], z: &[f32], weight: f32) {
        for &t in &self.params {
            let r = layout.range(t);
            crate::rules::schedulefree::switch_mode(&mut params[r.clone()], &z[r], weight);
        }
    }
}
