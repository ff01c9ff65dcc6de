//! Checkpoints: an optimizer's whole state in one safetensors file, with
//! PyTorch's names, written atomically and read back with every field
//! checked before anything changes.
//!
//! # The file
//!
//! A [safetensors](https://github.com/huggingface/safetensors) file whose
//! tensors carry `torch.optim`'s names, so that
//! `safetensors.torch.load_file` reads it in Python and the tensors map one
//! to one onto `optimizer.state_dict()["state"]`:
//!
//! | tensor | dtype, shape | what |
//! | --- | --- | --- |
//! | `state.{i}.{name}` | F32, `[len_i]` | state tensor `name` of parameter tensor `i` (`exp_avg`, `exp_avg_sq`, `max_exp_avg_sq`, `momentum_buffer`, `sum`, `square_avg`, `grad_avg`, `acc_delta`, `prev`, `step_size`, `exp_avg_slow`, `ax`, Adafactor's `row_var`, `col_var` (of a matrix: its rows', its columns' statistics) and `variance` (of a vector), Muon's `momentum_buffer`: the names [`Config::state_names`] gives, Adafactor's only where torch has them) |
//! | `state.{i}.step` | F32, `[]` | the step count, as torch keeps it (exact below 2^24; the metadata has the exact `u64`) |
//! | `state.{i}.{name}` | F32, `[]` | the rule's scalar state `name` (NAdam's `mu_product`, ASGD's `eta` and `mu`), the same in every tensor, as torch keeps it |
//! | `params.{i}` | F32, `[len_i]` | parameter tensor `i`, when the checkpoint carries the parameters |
//!
//! With low-precision parameters or state ([`Checkpoint::precision`]) each
//! tensor is in its stored format instead: `params.{i}` BF16 or F16,
//! `master_params.{i}` F32 (the master weights), a bf16 state BF16, an
//! 8-bit state U8 (its codes) with `state.{i}.{name}.absmax` F32 (one
//! scale a block of 256; [`QuantizedState`]).
//!
//! and string metadata:
//!
//! | key | value |
//! | --- | --- |
//! | `format` | `wgpu-optim/checkpoint/1` |
//! | `rule` | one of [`crate::RuleKind::ALL`]'s names (`sgd`, `adagrad`, `rmsprop`, `adam`, `adamw`, `lamb`, `adadelta`, `rprop`, `lion`, `ademamix`, `radam`, `adamax`, ...) |
//! | `param_groups` | JSON, torch's `state_dict()["param_groups"]`: each group's torch hyperparameter names (`lr`, `betas`, ...) and `params` (its tensors' indices); this crate's own options (`eps_inside_sqrt`, LAMB's) beside them. With several groups each tensor's `state.{i}.*` has its own group's state names and step ([`GroupState`]) |
//! | `wgpu_optim` | JSON: `step` (exact; the first group's), `groups` (each group's `step` and `buffer_filled`, with several), `lengths`, `shapes` (when the tensors have them: a list of dimension lists), `buffer_filled` (SGD), `clip`, `skip_nonfinite`, `skipped_steps`, `grad_scale`, `precision` (`param_dtype`, `state_dtype`, `master_weights`, `seed`; absent for f32), `scheduler` ([`SchedulerState`]: `schedule`, `base_lr`, `base_momentum`, `position`, `lr`, `plateau`, `metric_missing`) |
//!
//! A file PyTorch wrote needs only `rule`, `param_groups` and the tensors
//! (`tests/data/checkpoint/gen_torch_checkpoint.py` writes one): without
//! `wgpu_optim` the step count comes from the `state.{i}.step` tensors and
//! the lengths from the tensors' shapes (any shape: its element count is
//! the length). Its scalar state may be F32 or F64 (torch's default dtype),
//! of shape `[]` or `[1]`.
//!
//! # Writing
//!
//! [`Checkpoint::save`] writes a temporary file in the destination's folder,
//! flushes and `fsync`s it, renames it over the destination and `fsync`s the
//! folder: a crash at any moment leaves either the previous file or the new
//! one, whole (a stale `.{name}.tmp.*` file may stay behind; it is never
//! read).
//!
//! # Reading
//!
//! [`Checkpoint::from_bytes`] checks everything before it returns: the
//! safetensors header (its size against the file's, every tensor's byte
//! range against its dtype and shape), the rule, one parameter group
//! listing each tensor once, every hyperparameter (known names, right
//! types, finite and in range: the rule's own validation), the tensor
//! count, every expected tensor present with dtype F32 and the right
//! length, no unexpected tensor, the step tensors agreeing with the step,
//! the scalar state present, finite and the same in every tensor.
//! Every size it allocates is bounded by the file's length, so a hostile
//! header cannot make it allocate more than the file holds. Errors are
//! [`Error::Checkpoint`]; a checkpoint that is valid but does not fit an
//! optimizer is [`Error::CheckpointMismatch`]. Loading into an optimizer
//! ([`crate::CpuOptimizer::load_checkpoint`],
//! [`crate::GpuOptimizer::load_checkpoint`]) checks the fit before it
//! changes anything.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors};
use serde_json::{json, Map, Value};

use crate::clip::ClipGradNorm;
use crate::error::{Error, Result};
use crate::precision::store::LowPrecision;
use crate::precision::{ParamDtype, Precision, StateDtype};
use crate::rules::{Config, RuleKind, ScalarDtype, ScalarHome, ScalarState, TorchArgs};
use crate::schedule::{PlateauState, Schedule, Scheduler};

/// The `format` metadata value.
pub const FORMAT: &str = "wgpu-optim/checkpoint/1";

/// The largest step (and skipped-step) count a checkpoint may hold: 2^63.
pub const MAX_STEP_COUNT: u64 = 1 << 63;

/// An optimizer's whole state, as [`crate::CpuOptimizer::checkpoint`] and
/// [`crate::GpuOptimizer::checkpoint`] take it and the `load_checkpoint`
/// and `from_checkpoint` functions of both restore it. The same value on
/// the CPU and the GPU: a checkpoint taken on one restores on the other.
///
/// The fields are public so that state can be built or inspected by hand;
/// everything that consumes a checkpoint validates it first
/// ([`Checkpoint::validate`]).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Checkpoint {
    /// The rule and its hyperparameters in force.
    pub config: Config,
    /// Elements of each parameter tensor.
    pub lengths: Vec<usize>,
    /// Each parameter tensor's [`crate::Shape`], when the optimizer was
    /// given shapes (`CpuOptimizer::with_shapes`); empty otherwise. The
    /// matrix rules' state depends on them (Adafactor's `row_var` and
    /// `col_var` of a matrix, its `variance` of a vector).
    pub shapes: Vec<crate::Shape>,
    /// Steps applied (torch's `state[p]["step"]`; skipped steps not counted).
    pub step: u64,
    /// SGD: the momentum buffer has been filled once.
    pub buffer_filled: bool,
    /// Each state tensor of the optimizer, named and ordered as its
    /// `state_names` are, packed as the parameters are. The names are the
    /// state set fixed when the optimizer was built, which the
    /// hyperparameters in force need not show: SGD or RMSprop built with
    /// momentum keep their `momentum_buffer` after `set_momentum(0.0)`.
    pub state: Vec<(String, Vec<f32>)>,
    /// The rule's scalar state ([`Config::scalar_state_names`]: NAdam's
    /// `mu_product`, ASGD's `eta` and `mu`), named and ordered as there,
    /// one value for all tensors, as torch keeps it (float32 values for
    /// these rules); empty for the other rules.
    pub scalar_state: Vec<(String, f64)>,
    /// The parameters, packed, when the checkpoint carries them.
    pub params: Option<Vec<f32>>,
    /// Global-norm gradient clipping in force.
    pub clip: Option<ClipGradNorm>,
    /// Whether steps with non-finite gradients are skipped.
    pub skip_nonfinite: bool,
    /// Steps skipped so far (non-finite gradients).
    pub skipped_steps: u64,
    /// The loss scale the gradients are divided by (1: none).
    pub grad_scale: f64,
    /// A learning-rate schedule's position, when one was saved.
    pub scheduler: Option<SchedulerState>,
    /// Every parameter group (tensor indices and hyperparameters) of an
    /// optimizer with more than one, in torch's `param_groups` order; empty
    /// for one group, whose hyperparameters are `config`. `config`, `step`,
    /// `buffer_filled` and `scalar_state` are then the first group's, and
    /// `state` holds every group's state tensors (0 where a tensor's group
    /// has no such state).
    pub groups: Vec<crate::ParamGroup>,
    /// Each group's counters and scalar state, beside `groups`.
    pub group_state: Vec<GroupState>,
    /// The formats the parameters and state are kept in
    /// ([`crate::CpuOptimizer::with_precision`]); all f32 (the default)
    /// for every other optimizer. With 16-bit parameters `params` holds the
    /// model's values (widened to f32, exactly), with bf16 state `state`
    /// holds the bf16 values widened (exactly).
    pub precision: Precision,
    /// The f32 master weights, packed, with [`Precision::master_weights`].
    pub master_params: Option<Vec<f32>>,
    /// Each state tensor kept in 8 bits, as stored: its codes and block
    /// scales, in state then tensor order. `state` holds their dequantized
    /// values, which could not be quantized back to the same codes.
    pub quantized: Vec<QuantizedState>,
}

/// A [`Scheduler`] as a checkpoint keeps it: the schedule, the position,
/// the lr in force and, for `ReduceLROnPlateau`, its state.
///
/// A `LambdaLR` or `MultiplicativeLR` closure ([`crate::schedule::LrLambda`])
/// is code, which no file can carry; as torch's `state_dict` leaves plain
/// functions out, the checkpoint keeps everything else (the schedule's JSON
/// with `{"kind": "lambda"}` in the closure's place, the position, the lr)
/// and saves without error. Reading such a scheduler back takes the closure
/// from the caller: [`Checkpoint::scheduler_with`] (or
/// [`SchedulerState::to_scheduler_with`]) with the schedule rebuilt in code;
/// [`Checkpoint::scheduler`] is an [`Error::Checkpoint`] that says so. The
/// checkpoint cannot tell whether the closure given back is the one saved:
/// that is the caller's to keep.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerState {
    /// The schedule ([`Schedule::to_json`]).
    pub schedule: Value,
    /// [`Scheduler::base_lr`].
    pub base_lr: f64,
    /// [`Scheduler::base_momentum`].
    pub base_momentum: Option<f64>,
    /// [`Scheduler::position`].
    pub position: u64,
    /// [`Scheduler::lr`] at that position: restored as it is, so that the
    /// restored scheduler goes on bit for bit and in `O(1)` (replaying a
    /// chainable schedule to a position is `O(position)`).
    pub lr: f64,
    /// [`Scheduler::plateau_state`]: `ReduceLROnPlateau`'s `best`,
    /// `num_bad_epochs` and `cooldown_counter` (`None` for the other kinds).
    /// In the file's JSON an infinite `best` (before the first metric) is
    /// the string `"inf"` or `"-inf"`.
    pub plateau: Option<PlateauState>,
    /// [`Scheduler::metric_missing`].
    pub metric_missing: bool,
}

impl SchedulerState {
    /// The state of `scheduler`.
    pub fn of(scheduler: &Scheduler) -> Self {
        SchedulerState {
            schedule: scheduler.schedule().to_json(),
            base_lr: scheduler.base_lr(),
            base_momentum: scheduler.base_momentum(),
            position: scheduler.position(),
            lr: scheduler.lr(),
            plateau: scheduler.plateau_state().copied(),
            metric_missing: scheduler.metric_missing(),
        }
    }

    /// The scheduler, rebuilt and moved to its position. A schedule with a
    /// closure is an [`Error::Checkpoint`]: use
    /// [`SchedulerState::to_scheduler_with`].
    pub fn to_scheduler(&self) -> Result<Scheduler> {
        // Checked in full first, so that a bad state is not reported as a
        // missing closure.
        let placeholders = self.restore(
            Schedule::from_json_with_placeholders(&self.schedule)
                .map_err(|e| Error::Checkpoint(format!("scheduler: {e}")))?,
        )?;
        if placeholders.schedule().has_placeholder() {
            return Err(Error::Checkpoint(
                "scheduler: its schedule has a LambdaLR or MultiplicativeLR, whose closure a \
                 checkpoint cannot carry: rebuild the schedule in code and restore it with \
                 Checkpoint::scheduler_with"
                    .into(),
            ));
        }
        Ok(placeholders)
    }

    /// The scheduler with `schedule` (which carries the closures of
    /// `LambdaLR` and `MultiplicativeLR`), moved to the saved position,
    /// lr and state. `schedule` must be the one saved:
    /// [`Error::CheckpointMismatch`] if its JSON ([`Schedule::to_json`],
    /// where a closure is its kind alone) differs from the saved one.
    pub fn to_scheduler_with(&self, schedule: Schedule) -> Result<Scheduler> {
        let given = schedule.to_json();
        if given != self.schedule {
            return Err(Error::CheckpointMismatch {
                what: "scheduler's schedule".into(),
                expected: given.to_string(),
                got: self.schedule.to_string(),
            });
        }
        self.restore(schedule)
    }

    /// Checks the state without needing the closures.
    pub(crate) fn validate(&self) -> Result<()> {
        let schedule = Schedule::from_json_with_placeholders(&self.schedule)
            .map_err(|e| Error::Checkpoint(format!("scheduler: {e}")))?;
        self.restore(schedule).map(|_| ())
    }

    fn restore(&self, schedule: Schedule) -> Result<Scheduler> {
        let mut s = Scheduler::new(schedule, self.base_lr, self.base_momentum)
            .map_err(|e| Error::Checkpoint(format!("scheduler: {e}")))?;
        s.restore(self.position, self.lr, self.plateau, self.metric_missing)
            .map_err(|e| Error::Checkpoint(format!("scheduler: {e}")))?;
        Ok(s)
    }
}

impl Checkpoint {
    /// A checkpoint of a fresh optimizer: zero steps, state at its initial
    /// value, no parameters. Mostly for tests and conversions; optimizers
    /// make their own with `checkpoint()`. Lengths whose total overflows
    /// are [`Error::SizeOverflow`] (or [`Error::Checkpoint`] past what a
    /// checkpoint holds), a state the host cannot allocate [`Error::TooLarge`].
    pub fn new(config: impl Into<Config>, lengths: &[usize]) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        let layout = crate::Layout::new(lengths)?;
        config.check_shapes(&layout)?;
        checked_total(lengths)?;
        let state = config
            .state_names()
            .into_iter()
            .map(|n| {
                let total = layout.state_layout(&config, n).total();
                // The lengths are the caller's: a total the host cannot
                // allocate is an error, not an abort.
                let mut v = Vec::new();
                v.try_reserve_exact(total).map_err(|_| {
                    Error::TooLarge(format!(
                        "a checkpoint of {total} elements: the host could not allocate \
                         {} bytes for state `{n}`",
                        total as u64 * 4
                    ))
                })?;
                v.resize(total, config.state_initial_value(n));
                Ok((n.to_string(), v))
            })
            .collect::<Result<_>>()?;
        let scalar_state = config
            .scalar_state_names()
            .into_iter()
            .zip(config.scalar_state_initial())
            .map(|(n, v)| (n.to_string(), v))
            .collect();
        Ok(Checkpoint {
            config,
            lengths: lengths.to_vec(),
            shapes: Vec::new(),
            step: 0,
            buffer_filled: false,
            state,
            scalar_state,
            params: None,
            clip: None,
            skip_nonfinite: false,
            skipped_steps: 0,
            grad_scale: 1.0,
            scheduler: None,
            groups: Vec::new(),
            group_state: Vec::new(),
            precision: Precision::default(),
            master_params: None,
            quantized: Vec::new(),
        })
    }

    /// Keeps `scheduler`'s position in the checkpoint (or drops it: `None`).
    pub fn set_scheduler(&mut self, scheduler: Option<&Scheduler>) {
        self.scheduler = scheduler.map(SchedulerState::of);
    }

    /// The scheduler saved with [`Checkpoint::set_scheduler`], rebuilt at its
    /// position; `None` when none was saved. A schedule with a `LambdaLR` or
    /// `MultiplicativeLR` closure is an [`Error::Checkpoint`]: see
    /// [`Checkpoint::scheduler_with`].
    pub fn scheduler(&self) -> Result<Option<Scheduler>> {
        self.scheduler
            .as_ref()
            .map(SchedulerState::to_scheduler)
            .transpose()
    }

    /// The scheduler saved with [`Checkpoint::set_scheduler`], rebuilt with
    /// `schedule` at its position: how a schedule with closures comes back
    /// ([`SchedulerState`], [`SchedulerState::to_scheduler_with`]); `None`
    /// when none was saved.
    pub fn scheduler_with(&self, schedule: Schedule) -> Result<Option<Scheduler>> {
        self.scheduler
            .as_ref()
            .map(|s| s.to_scheduler_with(schedule))
            .transpose()
    }

    /// Whether the state has a `momentum_buffer` (SGD, RMSprop).
    pub(crate) fn momentum_buffer(&self) -> bool {
        self.state.iter().any(|(n, _)| n == "momentum_buffer")
    }

    /// The layout of the parameter tensors, with their shapes if the
    /// checkpoint has them.
    pub(crate) fn layout(&self) -> Result<crate::Layout> {
        let layout = crate::Layout::new(&self.lengths)?;
        if self.shapes.is_empty() {
            return Ok(layout);
        }
        layout
            .with_shapes(&self.shapes)
            .map_err(|e| Error::Checkpoint(format!("shapes: {e}")))
    }

    /// Checks that the checkpoint's shapes are those of an optimizer whose
    /// layout is `layout` ([`Error::CheckpointMismatch`]), for the rules
    /// whose state depends on them (the element-wise rules ignore shapes).
    pub(crate) fn check_shapes_fit(&self, layout: &crate::Layout) -> Result<()> {
        if !self.config.is_matrix_rule() {
            return Ok(());
        }
        let show = |s: &[crate::Shape]| {
            if s.is_empty() {
                "none".to_string()
            } else {
                s.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        };
        let ours = layout.shapes().unwrap_or_default();
        if ours != self.shapes.as_slice() {
            return Err(Error::CheckpointMismatch {
                what: "shapes".into(),
                expected: show(ours),
                got: show(&self.shapes),
            });
        }
        Ok(())
    }

    /// The state tensor `name`, packed.
    pub fn state_flat(&self, name: &str) -> Option<&[f32]> {
        self.state
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Checks that the checkpoint is whole and consistent: valid
    /// hyperparameters, clipping and loss scale; exactly the state tensors
    /// the rule with its options has, in order (with or without a
    /// `momentum_buffer` for SGD and RMSprop, whose momentum in force may
    /// be 0 with one, and must be 0 without), each as long as the
    /// parameters (Adafactor's factored state: as long as the shapes
    /// say); shapes (if any) that hold their tensors and suit the rule
    /// (Muon's 2-D); parameters (if any) as long as the tensors.
    pub fn validate(&self) -> Result<()> {
        if !self.groups.is_empty() {
            return param_groups::validate(self);
        }
        let momentum_buffer = self.momentum_buffer();
        self.config
            .validate_with(momentum_buffer)
            .map_err(|e| Error::Checkpoint(format!("hyperparameters: {e}")))?;
        let total = checked_total(&self.lengths)?;
        // Every step adds one to these counts: a count past MAX_STEP_COUNT
        // could not continue (and no run reaches 2^63 steps).
        for (what, count) in [("step", self.step), ("skipped_steps", self.skipped_steps)] {
            if count > MAX_STEP_COUNT {
                return Err(Error::Checkpoint(format!(
                    "{what} = {count} is more than the {MAX_STEP_COUNT} an optimizer can continue from"
                )));
            }
        }
        if self.lengths.is_empty() {
            return Err(Error::Checkpoint("no parameter tensors".into()));
        }
        let names = self.config.state_names_with(momentum_buffer);
        let have: Vec<&str> = self.state.iter().map(|(n, _)| n.as_str()).collect();
        if have != names {
            return Err(Error::Checkpoint(format!(
                "rule {} with these options has state [{}], the checkpoint [{}]",
                self.config.kind(),
                names.join(", "),
                have.join(", ")
            )));
        }
        let layout = self.layout()?;
        self.config
            .check_shapes(&layout)
            .map_err(|e| Error::Checkpoint(format!("shapes: {e}")))?;
        for (name, values) in &self.state {
            let expected = layout.state_layout(&self.config, name).total();
            if values.len() != expected {
                return Err(Error::Checkpoint(format!(
                    "state `{name}` has {} elements, the tensors {expected}",
                    values.len()
                )));
            }
        }
        let scalar_names = self.config.scalar_state_names();
        let have: Vec<&str> = self.scalar_state.iter().map(|(n, _)| n.as_str()).collect();
        if have != scalar_names {
            return Err(Error::Checkpoint(format!(
                "rule {} has scalar state [{}], the checkpoint [{}]",
                self.config.kind(),
                scalar_names.join(", "),
                have.join(", ")
            )));
        }
        if let Some((name, v)) = self.scalar_state.iter().find(|(_, v)| !v.is_finite()) {
            return Err(Error::Checkpoint(format!(
                "scalar state `{name}` = {v} is not finite"
            )));
        }
        if let Some(p) = &self.params {
            if p.len() != total {
                return Err(Error::Checkpoint(format!(
                    "the parameters have {} elements, the lengths say {total}",
                    p.len()
                )));
            }
        }
        low_precision::validate(self, total, &names)?;
        if let Some(c) = self.clip {
            c.validate()
                .map_err(|e| Error::Checkpoint(format!("clip: {e}")))?;
        }
        crate::rules::inverse_grad_scale(self.grad_scale)
            .map_err(|e| Error::Checkpoint(format!("grad_scale: {e}")))?;
        if let Some(s) = &self.scheduler {
            s.validate()?;
        }
        Ok(())
    }

    /// Writes the checkpoint to `path` atomically: a temporary file in the
    /// same folder, flushed and synced, renamed over `path`, the folder
    /// synced. A crash at any point leaves the previous file whole.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.validate()?;
        let path = path.as_ref();
        let io = |p: &Path, e: std::io::Error| Error::Io {
            path: p.display().to_string(),
            message: e.to_string(),
        };
        let file_name = path
            .file_name()
            .ok_or_else(|| Error::Io {
                path: path.display().to_string(),
                message: "not a file name".into(),
            })?
            .to_string_lossy()
            .into_owned();
        let dir: PathBuf = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{file_name}.tmp.{}.{n}", std::process::id()));
        let result = (|| {
            let (tensors, metadata) = self.file_tensors()?;
            {
                let file = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
                let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
                write_safetensors(&mut w, &tensors, metadata).map_err(|e| io(&tmp, e))?;
                let file = w.into_inner().map_err(|e| io(&tmp, e.into_error()))?;
                file.sync_all().map_err(|e| io(&tmp, e))?;
            }
            std::fs::rename(&tmp, path).map_err(|e| io(path, e))?;
            sync_dir(&dir).map_err(|e| io(&dir, e))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// The file's bytes, as [`Checkpoint::save`] writes them.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.validate()?;
        let (tensors, metadata) = self.file_tensors()?;
        let mut out = Vec::new();
        write_safetensors(&mut out, &tensors, metadata).map_err(|e| Error::Io {
            path: "<memory>".into(),
            message: e.to_string(),
        })?;
        Ok(out)
    }

    /// Reads and checks a checkpoint file (see the [module docs](self)).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            Error::Checkpoint(m) => Error::Checkpoint(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// Parses and checks a checkpoint from the file's bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bad = |m: String| Error::Checkpoint(m);
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
        let empty = HashMap::new();
        let meta = header.metadata().as_ref().unwrap_or(&empty);
        if let Some(f) = meta.get("format") {
            if f != FORMAT {
                return Err(bad(format!("format {f:?}, this library reads {FORMAT:?}")));
            }
        }
        let rule_name = meta
            .get("rule")
            .ok_or_else(|| bad("no `rule` in the metadata".into()))?;
        let rule =
            RuleKind::parse(rule_name).ok_or_else(|| bad(format!("unknown rule {rule_name:?}")))?;
        let groups: Value = serde_json::from_str(
            meta.get("param_groups")
                .ok_or_else(|| bad("no `param_groups` in the metadata".into()))?,
        )
        .map_err(|e| bad(format!("param_groups: {e}")))?;
        let groups = groups
            .as_array()
            .ok_or_else(|| bad("param_groups is not a list".into()))?;
        let group = match groups.as_slice() {
            [g] => g
                .as_object()
                .ok_or_else(|| bad("param_groups[0] is not an object".into()))?,
            [] => return Err(bad("param_groups is empty".into())),
            _ => return param_groups::from_bytes(&st, meta, groups),
        };
        let n_tensors = group_params(group)?;
        // The scalar state torch keeps in the group is not a keyword
        // argument: it is read below, the rest is the configuration.
        let scalar_spec = rule.default_config().scalar_state_spec();
        let mut args = group.clone();
        let group_scalars = take_group_scalars(scalar_spec, &mut args)?;
        let config = TorchArgs::checkpoint_config(rule, &args)?;
        let extra = wgpu_optim_metadata(meta)?;

        // Every tensor name must be one we expect. Whether SGD or RMSprop
        // has a momentum buffer was fixed when the optimizer was built: the
        // file says it, by having the tensors or not (torch's too, which
        // keeps the buffer when the momentum is set to 0 later).
        let precision = low_precision::from_json(extra.as_ref().and_then(|m| m.get("precision")))?;
        let mut possible = config.state_names_with(true);
        let tensor_scalars: Vec<&str> = scalar_spec
            .iter()
            .filter(|s| s.home == ScalarHome::Tensor)
            .map(|s| s.name)
            .collect();
        for name in st.names() {
            let ok = parse_tensor_name(name).is_some_and(|(i, what)| {
                let absmax = what.strip_suffix(low_precision::ABSMAX);
                i < n_tensors
                    && (what == "step"
                        || what == "params"
                        || (what == "master_params" && precision.master_weights)
                        || possible.contains(&what)
                        || absmax.is_some_and(|s| {
                            precision.state_dtype == StateDtype::Int8Blockwise
                                && possible.contains(&s)
                        })
                        || tensor_scalars.contains(&what))
            });
            if !ok {
                possible.extend(&tensor_scalars);
                return Err(bad(format!(
                    "unexpected tensor `{name}` (rule {rule} with these options has {} tensor(s) with state [{}])",
                    n_tensors,
                    possible.join(", ")
                )));
            }
        }
        let momentum_buffer = possible.contains(&"momentum_buffer")
            && st.names().iter().any(|name| {
                parse_tensor_name(name).is_some_and(|(_, what)| what == "momentum_buffer")
            });
        config
            .validate_with(momentum_buffer)
            .map_err(|e| bad(format!("hyperparameters: {e}")))?;
        let names = config.state_names_with(momentum_buffer);

        // Lengths: from the metadata, or from the tensors' element counts.
        let numel = |name: &str| -> Option<Result<usize>> {
            st.tensor(name).ok().map(|t| {
                t.shape()
                    .iter()
                    .try_fold(1usize, |a, &b| a.checked_mul(b))
                    .ok_or_else(|| bad(format!("`{name}`: shape overflows")))
            })
        };
        let lengths: Vec<usize> = match extra.as_ref().and_then(|m| m.get("lengths")) {
            Some(v) => {
                let list = v
                    .as_array()
                    .ok_or_else(|| bad("wgpu_optim.lengths is not a list".into()))?;
                if list.len() != n_tensors {
                    return Err(bad(format!(
                        "wgpu_optim.lengths has {} entries, param_groups lists {n_tensors} tensors",
                        list.len()
                    )));
                }
                list.iter()
                    .map(|x| {
                        x.as_u64()
                            .and_then(|x| usize::try_from(x).ok())
                            .ok_or_else(|| bad(format!("wgpu_optim.lengths: {x} is not a length")))
                    })
                    .collect::<Result<_>>()?
            }
            None => (0..n_tensors)
                .map(|i| {
                    // The parameters first: a matrix rule's state need not
                    // be as long as its tensor.
                    let candidates = [format!("params.{i}")]
                        .into_iter()
                        .chain(names.iter().map(|n| format!("state.{i}.{n}")));
                    for c in candidates {
                        if let Some(n) = numel(&c) {
                            return n;
                        }
                    }
                    Err(bad(format!(
                        "tensor {i}: no state or parameter tensor says its length (and no wgpu_optim.lengths)"
                    )))
                })
                .collect::<Result<_>>()?,
        };
        let shapes: Vec<crate::Shape> = match extra.as_ref().and_then(|m| m.get("shapes")) {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => {
                let list = v
                    .as_array()
                    .ok_or_else(|| bad("wgpu_optim.shapes is not a list".into()))?;
                list.iter()
                    .map(|dims| {
                        crate::Shape::from_json(dims)
                            .ok_or_else(|| bad(format!("wgpu_optim.shapes: {dims} is not a shape")))
                    })
                    .collect::<Result<_>>()?
            }
        };
        let total = checked_total(&lengths)?;
        let mut layout = crate::Layout::new(&lengths)?;
        if !shapes.is_empty() {
            layout = layout
                .with_shapes(&shapes)
                .map_err(|e| bad(format!("shapes: {e}")))?;
        }
        // Everything below is read from tensors, which safetensors has
        // checked lie inside the file: a state of `total` elements needs
        // 4·total bytes of it.
        // (a byte each where the state is kept in 8 bits).
        let element_bytes = if precision.is_f32() { 4 } else { 1 };
        let has_tensors = !names.is_empty() || st.names().iter().any(|n| n.starts_with("params."));
        if has_tensors && total.saturating_mul(element_bytes) > bytes.len() {
            return Err(bad(format!(
                "the lengths add up to {total} elements, more than the file's {} bytes hold",
                bytes.len()
            )));
        }

        let tensor = |name: &str, len: usize| {
            let t = st
                .tensor(name)
                .map_err(|_| bad(format!("missing tensor `{name}`")))?;
            let n = numel(name).expect("the tensor exists")?;
            if n != len {
                return Err(bad(format!(
                    "`{name}` has shape {:?} ({n} elements), expected {len}",
                    t.shape()
                )));
            }
            Ok(t)
        };
        // Each tensor in the format its precision keeps it in.
        let read = |name: &str, len: usize, dtype: ParamDtype| -> Result<Vec<f32>> {
            low_precision::widen(name, &tensor(name, len)?, dtype)
        };
        let state_dtype = low_precision::state_format(precision.state_dtype);
        let mut state = Vec::with_capacity(names.len());
        let mut quantized = Vec::new();
        for name in &names {
            let state_layout = layout.state_layout(&config, name);
            let mut flat = Vec::with_capacity(state_layout.total());
            for (i, &len) in state_layout.lengths().iter().enumerate() {
                // torch keeps Adafactor's factors of a matrix, its variance
                // of a vector, not both.
                if !config.has_state(name, layout.shape(i)) {
                    continue;
                }
                let key = format!("state.{i}.{name}");
                if !LowPrecision::is_quantized(precision.state_dtype, len) {
                    flat.extend(read(&key, len, state_dtype)?);
                    continue;
                }
                let codes = tensor(&key, len)?;
                if codes.dtype() != Dtype::U8 {
                    return Err(bad(format!("`{key}` is {:?}, expected U8", codes.dtype())));
                }
                let absmax = read(
                    &format!("{key}{}", low_precision::ABSMAX),
                    len.div_ceil(crate::precision::blockwise::BLOCK),
                    ParamDtype::F32,
                )?;
                let q = QuantizedState {
                    state: name.to_string(),
                    tensor: i,
                    codes: codes.data().to_vec(),
                    absmax,
                };
                let at = flat.len();
                flat.resize(at + len, 0.0);
                crate::precision::blockwise::dequantize_blockwise(
                    &q.codes,
                    &q.absmax,
                    crate::precision::blockwise::DynamicMap::for_sign(
                        crate::precision::store::state_sign(name).unwrap_or(true),
                    ),
                    &mut flat[at..],
                );
                quantized.push(q);
            }
            state.push((name.to_string(), flat));
        }
        // An 8-bit state's scales where the format keeps it in f32.
        if let Some(name) = st.names().into_iter().find(|n| {
            n.ends_with(low_precision::ABSMAX)
                && !quantized.iter().any(|q| {
                    *n == format!("state.{}.{}{}", q.tensor, q.state, low_precision::ABSMAX)
                })
        }) {
            return Err(bad(format!(
                "unexpected tensor `{name}`: that state is not kept in 8 bits"
            )));
        }
        let read_all = |prefix: &str, dtype: ParamDtype| -> Result<Option<Vec<f32>>> {
            if !(0..n_tensors).any(|i| st.tensor(&format!("{prefix}.{i}")).is_ok()) {
                return Ok(None);
            }
            let mut flat = Vec::with_capacity(total);
            for (i, &len) in lengths.iter().enumerate() {
                flat.extend(read(&format!("{prefix}.{i}"), len, dtype)?);
            }
            Ok(Some(flat))
        };
        let params = read_all("params", precision.param_dtype)?;
        let master_params = read_all("master_params", ParamDtype::F32)?;

        // The step tensors (torch's): scalars, all equal.
        let mut step_tensor: Option<f64> = None;
        for i in 0..n_tensors {
            let name = format!("state.{i}.step");
            if let Ok(t) = st.tensor(&name) {
                let v = scalar_value(&name, &t)?;
                if !(v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= 2f64.powi(53)) {
                    return Err(bad(format!("`{name}` = {v} is not a step count")));
                }
                match step_tensor {
                    Some(s) if s != v => {
                        return Err(bad(format!(
                            "`{name}` = {v}, but another tensor's step is {s}"
                        )))
                    }
                    _ => step_tensor = Some(v),
                }
            }
        }

        let scalar_state = read_scalar_state(scalar_spec, &group_scalars, &st, n_tensors)?;

        let get = |key: &str| extra.as_ref().and_then(|m| m.get(key));
        let get_u64 = |key: &str| -> Result<Option<u64>> {
            get(key)
                .map(|v| {
                    v.as_u64()
                        .ok_or_else(|| bad(format!("wgpu_optim.{key}: {v} is not a count")))
                })
                .transpose()
        };
        let get_bool = |key: &str| -> Result<Option<bool>> {
            get(key)
                .map(|v| {
                    v.as_bool()
                        .ok_or_else(|| bad(format!("wgpu_optim.{key}: {v} is not a boolean")))
                })
                .transpose()
        };
        let step = match (get_u64("step")?, step_tensor) {
            (Some(s), Some(t)) => {
                if (s as f32) as f64 != t && s as f64 != t {
                    return Err(bad(format!(
                        "wgpu_optim.step = {s} but the step tensors say {t}"
                    )));
                }
                s
            }
            (Some(s), None) => s,
            (None, Some(t)) => t as u64,
            // torch's SGD keeps no step: 0 until the buffer exists.
            (None, None) if !config.torch_step() => 0,
            (None, None) => {
                return Err(bad(
                    "no step count (no state.{i}.step and no wgpu_optim.step)".into(),
                ))
            }
        };
        let buffer_filled = match get_bool("buffer_filled")? {
            Some(b) => b,
            // torch creates the momentum buffer on its first use, with the
            // gradient in it, and keeps it whatever the momentum later.
            None => config.lazy_momentum_buffer() && extra.is_none() && momentum_buffer,
        };
        let clip = match get("clip") {
            None | Some(Value::Null) => None,
            Some(Value::Object(c)) => {
                let max_norm = c
                    .get("max_norm")
                    .and_then(Value::as_f64)
                    .ok_or_else(|| bad("wgpu_optim.clip.max_norm is not a number".into()))?;
                let error_if_nonfinite = match c.get("error_if_nonfinite") {
                    None => false,
                    Some(v) => v.as_bool().ok_or_else(|| {
                        bad("wgpu_optim.clip.error_if_nonfinite is not a boolean".into())
                    })?,
                };
                Some(ClipGradNorm {
                    max_norm,
                    error_if_nonfinite,
                })
            }
            Some(v) => return Err(bad(format!("wgpu_optim.clip: {v} is not an object"))),
        };
        let grad_scale = match get("grad_scale") {
            None => 1.0,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| bad(format!("wgpu_optim.grad_scale: {v} is not a number")))?,
        };
        let scheduler = match get("scheduler") {
            None | Some(Value::Null) => None,
            Some(Value::Object(s)) => {
                let f = |k: &str| {
                    s.get(k)
                        .and_then(Value::as_f64)
                        .ok_or_else(|| bad(format!("wgpu_optim.scheduler.{k} is not a number")))
                };
                let base_momentum = match s.get("base_momentum") {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(f("base_momentum")?),
                };
                let count = |what: &str, v: Option<&Value>| {
                    v.and_then(Value::as_u64)
                        .ok_or_else(|| bad(format!("wgpu_optim.scheduler.{what} is not a count")))
                };
                let plateau = match s.get("plateau") {
                    None | Some(Value::Null) => None,
                    Some(Value::Object(p)) => Some(PlateauState {
                        best: match p.get("best") {
                            Some(Value::String(x)) if x == "inf" => f64::INFINITY,
                            Some(Value::String(x)) if x == "-inf" => f64::NEG_INFINITY,
                            Some(v) if v.is_number() => v.as_f64().unwrap_or(f64::NAN),
                            _ => {
                                return Err(bad(
                                    "wgpu_optim.scheduler.plateau.best is not a number, \"inf\" \
                                     or \"-inf\""
                                        .into(),
                                ))
                            }
                        },
                        num_bad_epochs: count("plateau.num_bad_epochs", p.get("num_bad_epochs"))?,
                        cooldown_counter: count(
                            "plateau.cooldown_counter",
                            p.get("cooldown_counter"),
                        )?,
                    }),
                    Some(v) => {
                        return Err(bad(format!(
                            "wgpu_optim.scheduler.plateau: {v} is not an object"
                        )))
                    }
                };
                let metric_missing = match s.get("metric_missing") {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(v) => {
                        return Err(bad(format!(
                            "wgpu_optim.scheduler.metric_missing: {v} is not true or false"
                        )))
                    }
                };
                Some(SchedulerState {
                    schedule: s
                        .get("schedule")
                        .cloned()
                        .ok_or_else(|| bad("wgpu_optim.scheduler.schedule is missing".into()))?,
                    base_lr: f("base_lr")?,
                    base_momentum,
                    position: count("position", s.get("position"))?,
                    lr: f("lr")?,
                    plateau,
                    metric_missing,
                })
            }
            Some(v) => return Err(bad(format!("wgpu_optim.scheduler: {v} is not an object"))),
        };
        let ckpt = Checkpoint {
            config,
            lengths,
            shapes,
            step,
            buffer_filled,
            state,
            scalar_state,
            params,
            clip,
            skip_nonfinite: get_bool("skip_nonfinite")?.unwrap_or(false),
            skipped_steps: get_u64("skipped_steps")?.unwrap_or(0),
            grad_scale,
            scheduler,
            groups: Vec::new(),
            group_state: Vec::new(),
            precision,
            master_params,
            quantized,
        };
        ckpt.validate()?;
        Ok(ckpt)
    }

    /// The tensors (name, shape, data) and metadata of the file.
    fn file_tensors(&self) -> Result<(Vec<Tensor<'_>>, HashMap<String, String>)> {
        if self.groups.is_empty() {
            Ok(self.to_tensors())
        } else {
            param_groups::to_tensors(self)
        }
    }

    /// [`Checkpoint::file_tensors`] of one group.
    fn to_tensors(&self) -> (Vec<Tensor<'_>>, HashMap<String, String>) {
        let offsets: Vec<usize> = self
            .lengths
            .iter()
            .scan(0usize, |at, &n| {
                let o = *at;
                *at += n;
                Some(o)
            })
            .collect();
        let mut tensors = Vec::new();
        let step = [self.step as f32];
        // A validated checkpoint's layout builds (see `save`).
        let layout = self
            .layout()
            .unwrap_or_else(|_| crate::Layout::new(&[]).expect("an empty layout"));
        let state_layouts: Vec<crate::Layout> = self
            .state
            .iter()
            .map(|(name, _)| layout.state_layout(&self.config, name))
            .collect();
        for (i, (&len, &off)) in self.lengths.iter().zip(&offsets).enumerate() {
            for ((name, values), state_layout) in self.state.iter().zip(&state_layouts) {
                if !self.config.has_state(name, layout.shape(i)) {
                    continue;
                }
                let r = state_layout.range(i);
                low_precision::push_state(self, i, name, &values[r], &mut tensors);
            }
            if self.config.torch_step() {
                tensors.push(Tensor {
                    name: format!("state.{i}.step"),
                    shape: vec![],
                    data: Data::Owned(step.to_vec()),
                });
            }
            push_scalar_tensors(
                self.config.scalar_state_spec(),
                &self.scalar_state,
                i,
                &mut tensors,
            );
            low_precision::push_params(self, i, off..off + len, &mut tensors);
        }
        let mut group = self.config.to_torch();
        group.insert(
            "params".into(),
            Value::from((0..self.lengths.len()).collect::<Vec<_>>()),
        );
        insert_group_scalars(
            self.config.scalar_state_spec(),
            &self.scalar_state,
            &mut group,
        );
        let mut extra = json!({
            "step": self.step,
            "lengths": self.lengths,
            "buffer_filled": self.buffer_filled,
            "clip": self.clip.map(|c| json!({"max_norm": c.max_norm, "error_if_nonfinite": c.error_if_nonfinite})),
            "skip_nonfinite": self.skip_nonfinite,
            "skipped_steps": self.skipped_steps,
            "grad_scale": self.grad_scale,
            "scheduler": self.scheduler.as_ref().map(|s| {
                let mut v = json!({
                    "schedule": s.schedule,
                    "base_lr": s.base_lr,
                    "base_momentum": s.base_momentum,
                    "position": s.position,
                    "lr": s.lr,
                });
                if let Some(p) = &s.plateau {
                    // JSON has no infinity: torch's float('inf') spelling.
                    let best = match p.best {
                        b if b == f64::INFINITY => json!("inf"),
                        b if b == f64::NEG_INFINITY => json!("-inf"),
                        b => json!(b),
                    };
                    v["plateau"] = json!({"best": best, "num_bad_epochs": p.num_bad_epochs,
                                          "cooldown_counter": p.cooldown_counter});
                }
                if s.metric_missing {
                    v["metric_missing"] = json!(true);
                }
                v
            }),
        });
        if let Some(p) = low_precision::to_json(&self.precision) {
            extra["precision"] = p;
        }
        if !self.shapes.is_empty() {
            let shapes: Vec<&[usize]> = self.shapes.iter().map(crate::Shape::dims).collect();
            extra["shapes"] = json!(shapes);
        }
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("rule".to_string(), self.config.kind().name().to_string()),
            (
                "param_groups".to_string(),
                Value::Array(vec![Value::Object(group)]).to_string(),
            ),
            ("wgpu_optim".to_string(), extra.to_string()),
        ]);
        (tensors, metadata)
    }

    /// Checks that this (already validated) checkpoint fits an optimizer
    /// with `config`, the state tensors `state_names` and `lengths`: same
    /// rule, same state tensors, same options fixed at construction (those
    /// that choose the kernel), same tensor count and lengths.
    pub(crate) fn check_fits(
        &self,
        config: &Config,
        state_names: &[&str],
        lengths: &[usize],
        precision: &Precision,
    ) -> Result<()> {
        let mismatch = |what: &str, expected: String, got: String| Error::CheckpointMismatch {
            what: what.to_string(),
            expected,
            got,
        };
        if !self.groups.is_empty() {
            return Err(mismatch(
                "parameter groups",
                "1".into(),
                self.groups.len().to_string(),
            ));
        }
        if *precision != self.precision {
            return Err(mismatch(
                "precision",
                format!("{precision:?}"),
                format!("{:?}", self.precision),
            ));
        }
        if config.kind() != self.config.kind() {
            return Err(mismatch(
                "rule",
                config.kind().to_string(),
                self.config.kind().to_string(),
            ));
        }
        let b: Vec<&str> = self.state.iter().map(|(n, _)| n.as_str()).collect();
        if state_names != b.as_slice() {
            return Err(mismatch(
                "state tensors",
                format!("[{}]", state_names.join(", ")),
                format!("[{}]", b.join(", ")),
            ));
        }
        let momentum_buffer = self.momentum_buffer();
        let (a, b) = (
            config.overrides(momentum_buffer),
            self.config.overrides(momentum_buffer),
        );
        if a != b {
            let show = |o: &[(&str, f64)]| {
                o.iter()
                    .map(|(k, v)| format!("{}={}", k.to_lowercase(), *v != 0.0))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            return Err(mismatch("options", show(&a), show(&b)));
        }
        if lengths.len() != self.lengths.len() {
            return Err(mismatch(
                "tensor count",
                lengths.len().to_string(),
                self.lengths.len().to_string(),
            ));
        }
        for (i, (a, b)) in lengths.iter().zip(&self.lengths).enumerate() {
            if a != b {
                return Err(mismatch(
                    &format!("length of tensor {i}"),
                    a.to_string(),
                    b.to_string(),
                ));
            }
        }
        Ok(())
    }
}

mod low_precision;
mod param_groups;
mod tensors;
pub use low_precision::QuantizedState;
pub use param_groups::GroupState;
pub(crate) use param_groups::{union_names, GroupFit};
use tensors::*;

#[cfg(test)]
mod tests;
