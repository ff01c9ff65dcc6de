//! Conformance with PyTorch: runs reference cases of `torch.optim` through
//! the public API of this crate ([`CpuOptimizer`], [`GpuOptimizer`]) and
//! compares the final parameters and optimizer state with PyTorch's.
//!
//! A case is one `.safetensors` file as `tests/data/golden/FORMAT.md`
//! defines it: the initial parameters (`init.{t}`, F32), the gradient of
//! every step (`grad.{s}.{t}`, F32), the float64 reference of the final
//! parameters and state (`expected.param.{t}`, `expected.state.{name}.{t}`,
//! F64), PyTorch's own float32 run (`torch_f32.*`) and, in the metadata key
//! `case`, a JSON description: the rule, its `torch.optim` keyword arguments
//! (`hyper`), the tensor sizes, the number of steps and the tolerances.
//!
//! [`Case::load`] parses a file (a malformed one is an [`Error::Format`]
//! naming the file, never a panic), [`run_case`] runs it on a [`Backend`]
//! and returns a [`CaseResult`]: the largest error over tolerance of the
//! parameters and of the state, and whether the case passed.
//!
//! ```
//! use wgpu_optim::conformance::{expand_paths, run_case, Backend, Case};
//! for path in expand_paths(&["tests/data/golden/cases/adam_default.safetensors"])? {
//!     let case = Case::load(&path)?;
//!     let result = run_case(&case, Backend::Cpu);
//!     assert!(result.pass, "{result:?}");
//! }
//! # Ok::<(), wgpu_optim::Error>(())
//! ```
//!
//! The case's schedule drives the lr through the library's own
//! [`crate::Scheduler`]s (one a group, in a [`GroupScheduler`]; a `plateau`
//! one, `ReduceLROnPlateau`, fed the case's `metrics` after each step);
//! gradient clipping is the optimizer's.
//! Not supported (such a case gives a result with `pass: false` and an
//! `error` naming what): a rule this crate lacks, a schedule
//! [`Schedule::from_json_map`] does not read. See [`Case::unsupported`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::gpu::{GpuContext, GpuOptimizer};
use crate::rules::{Config, TorchArgs};
use crate::schedule::{GroupScheduler, Schedule};
use crate::ClipGradNorm;
use crate::CpuOptimizer;
use crate::Optimizer;
use crate::ParamGroup;

/// The rules a case file may name: [`crate::RuleKind::ALL`]'s names.
pub const CASE_RULES: [&str; crate::rules::NAMES.len()] = crate::rules::NAMES;

/// The tolerance of the state tensors: one for every state, or one per
/// state name (`exp_avg`, `momentum_buffer`, ...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StateTolerance {
    /// The same absolute tolerance for every state tensor.
    All(f64),
    /// An absolute tolerance per state name.
    PerState(BTreeMap<String, f64>),
}

impl StateTolerance {
    /// The absolute tolerance of state `name`, if the case gives one.
    pub fn get(&self, name: &str) -> Option<f64> {
        match self {
            StateTolerance::All(v) => Some(*v),
            StateTolerance::PerState(map) => map.get(name).copied(),
        }
    }
}

/// One reference run of `torch.optim`, read from a case file.
///
/// Tensors are indexed `[t]` by parameter tensor, and gradients
/// `[s][t]` by step then tensor.
#[derive(Clone, Debug)]
pub struct Case {
    /// The file it was read from.
    pub path: PathBuf,
    /// The case's name (`adam_default`, ...).
    pub name: String,
    /// The rule as the file names it (one of [`CASE_RULES`]).
    pub rule: String,
    /// The `torch.optim` keyword arguments, as the file gives them.
    pub hyper: Map<String, Value>,
    /// `hyper` as this crate's [`Config`] (PyTorch's defaults for absent
    /// keys, every value rounded to `f32` as the reference was computed
    /// with); `None` for a rule this crate does not implement (`lamb`).
    pub config: Option<Config>,
    /// The length of each parameter tensor.
    pub sizes: Vec<usize>,
    /// Each tensor's shape (`shapes`), for the rules that treat a matrix
    /// as a matrix (Adafactor, Muon); empty when the case has none (every
    /// tensor 1-D).
    pub shapes: Vec<crate::Shape>,
    /// The number of optimizer steps.
    pub steps: usize,
    /// The seed the inputs were drawn with (informational).
    pub seed: Option<u64>,
    /// The learning-rate scheduler that drove the run, a JSON object whose
    /// `kind` names it (FORMAT.md's kinds: `cyclic`, `one_cycle`, `cosine`,
    /// `step`, `multistep`, `exponential`, `constant`, `linear`,
    /// `polynomial`, `cosine_warm_restarts`, `plateau`, `chained`,
    /// `sequential`, `warmup_cosine`; read with [`Schedule::from_json_map`]);
    /// `None` for a constant learning rate.
    pub schedule: Option<Map<String, Value>>,
    /// The metric a `plateau` schedule (ReduceLROnPlateau) was stepped with
    /// after each step (the schedule's `metrics`, one per step); empty
    /// otherwise.
    pub metrics: Vec<f64>,
    /// The global L2 norm the gradients were clipped to before every step.
    pub clip_grad_norm: Option<f64>,
    /// The learning rate in force at each step, as PyTorch computed it
    /// (empty where the file does not give it).
    pub lr_per_step: Vec<f64>,
    /// The momentum (SGD, RMSprop) or `betas[0]` (Adam family) in force at
    /// each step (empty where the rule has none or the file does not give it).
    pub momentum_per_step: Vec<f64>,
    /// Absolute tolerance of the parameters.
    pub atol_param: f64,
    /// Absolute tolerance of the state tensors.
    pub atol_state: StateTolerance,
    /// Initial parameters, `[t]`.
    pub init: Vec<Vec<f32>>,
    /// Gradients, `[s][t]`, before any clipping.
    pub grads: Vec<Vec<Vec<f32>>>,
    /// The reference final parameters (float64), `[t]`.
    pub expected_params: Vec<Vec<f64>>,
    /// The reference final state (float64) by PyTorch's state name, `[t]`.
    pub expected_state: BTreeMap<String, Vec<Vec<f64>>>,
    /// PyTorch's own float32 final parameters, `[t]`, where the file has them.
    pub torch_f32_params: Option<Vec<Vec<f32>>>,
    /// PyTorch's own float32 final state by name, `[t]`.
    pub torch_f32_state: BTreeMap<String, Vec<Vec<f32>>>,
    /// torch's parameter groups (`groups`), each its tensors and its
    /// configuration (`hyper` with the group's overrides); empty when the
    /// case has none. A state some groups lack (Adam's `amsgrad` in one
    /// group) is empty in `expected_state` for the others' tensors.
    pub groups: Vec<crate::ParamGroup>,
}

/// Keys of the `case` metadata object that only describe the case
/// (how it was made, PyTorch's own error): read, not needed to run it.
const INFORMATIONAL_KEYS: [&str; 4] = ["seed", "sparse", "generator", "torch_f32_max_abs_err"];

impl Case {
    /// Reads and checks a case file. Anything malformed (not safetensors,
    /// no `case` metadata, a missing or ill-shaped tensor, an unknown rule,
    /// hyperparameter or case key) is an [`Error::Format`] naming the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Case> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::Format {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Case::from_bytes(&bytes, path)
    }

    /// As [`Case::load`], from the bytes of a file; `path` is only used to
    /// name it in errors and results.
    pub fn from_bytes(bytes: &[u8], path: impl AsRef<Path>) -> Result<Case> {
        let path = path.as_ref();
        parse_case(bytes, path).map_err(|message| Error::Format {
            path: path.display().to_string(),
            message,
        })
    }

    /// What this case needs that the runner does not support yet, each
    /// named as it appears in the file: `rule `lamb``, `schedule `cyclic``,
    /// `clip_grad_norm`. Empty when the case can run.
    pub fn unsupported(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.config.is_none() {
            out.push(format!("rule `{}`", self.rule));
        }
        if let Some(schedule) = &self.schedule {
            // With groups, each group's schedule (its element of a
            // list-valued argument).
            if let Err(e) = self.group_schedules() {
                let kind = schedule.get("kind").and_then(Value::as_str).unwrap_or("?");
                out.push(format!("schedule `{kind}` ({e})"));
            }
        }
        out
    }

    /// The schedule of each parameter group (one, the case's, without
    /// groups): each list-valued argument (CyclicLR's and OneCycleLR's
    /// `base_lr`, `max_lr`, momenta) replaced by its element for the
    /// group, as torch gives one value per group. Empty without a schedule.
    pub fn group_schedules(&self) -> Result<Vec<Schedule>> {
        let Some(map) = &self.schedule else {
            return Ok(Vec::new());
        };
        match self.groups.len() {
            0 => Ok(vec![Schedule::from_json_map(map)?]),
            n => (0..n)
                .map(|g| Schedule::from_json_map(&crate::schedule::group_element(map, g)))
                .collect(),
        }
    }

    /// The state names the reference has (PyTorch's names), sorted.
    pub fn state_names(&self) -> Vec<&str> {
        self.expected_state.keys().map(String::as_str).collect()
    }
}

/// Maps `torch.optim` keyword arguments of `rule` to a [`Config`], starting
/// from PyTorch's defaults ([`crate::RuleKind::default_config`]). Every
/// value is used as given (see [`Case::config`] for the `f32` rounding the
/// case files need).
///
/// Keys: `lr`, `momentum`, `dampening`, `weight_decay`, `nesterov`,
/// `maximize` (SGD); `lr`, `lr_decay`, `weight_decay`,
/// `initial_accumulator_value`, `eps`, `maximize` (Adagrad); `lr`, `alpha`,
/// `eps`, `weight_decay`, `momentum`, `centered`, `maximize` (RMSprop);
/// `lr`, `betas` (a list of two), `eps`, `weight_decay`, `amsgrad`,
/// `maximize` (Adam, AdamW), and Adam's `decoupled_weight_decay` (true makes
/// it AdamW, as in PyTorch); `lr`, `betas`, `eps`, `weight_decay` (LAMB,
/// Apex's names); `lr`, `rho`, `eps`, `weight_decay`, `maximize`
/// (Adadelta); `lr`, `etas`, `step_sizes` (lists of two), `maximize`
/// (Rprop); `lr`, `betas`, `weight_decay` (Lion, lion-pytorch's);
/// `lr`, `betas` (a list of three), `weight_decay`, `weight_decouple`,
/// `fixed_decay`, `alpha`, `t_alpha_beta3` (a number or null), `eps`,
/// `maximize` (AdEMAMix, pytorch-optimizer's); `lr`, `betas`, `eps`,
/// `weight_decay`, `decoupled_weight_decay`, `maximize` (RAdam); `lr`,
/// `betas`, `eps`, `weight_decay`, `maximize` (Adamax); `lr`, `betas`,
/// `eps`, `weight_decay`, `momentum_decay`, `decoupled_weight_decay`,
/// `maximize` (NAdam); `lr`, `lambd`, `alpha`, `t0`, `weight_decay`,
/// `maximize` (ASGD). Each rule reads them where it reads a checkpoint's.
///
/// Errors: a key the rule does not have, or a value of the wrong type, is
/// [`Error::InvalidOptions`] (never ignored), and so is an unknown rule.
/// Values are not range-checked here; the optimizers do that.
pub fn config_from_hyper(rule: &str, hyper: &Map<String, Value>) -> Result<Config> {
    TorchArgs::case_config(rule, hyper, false).map_err(Error::InvalidOptions)
}

/// `Err` names the unknown key, rule or ill-typed value. Never `Ok(None)`
/// now that every rule a case file may name is implemented.
fn hyper_to_config(
    rule: &str,
    hyper: &Map<String, Value>,
    round_f32: bool,
) -> std::result::Result<Option<Config>, String> {
    TorchArgs::case_config(rule, hyper, round_f32).map(Some)
}

/// Expands files and folders into case files: a file is taken as it is, a
/// folder gives its `*.safetensors` files (not recursively), sorted by name.
/// A path that does not exist, or a folder without any case file, is an
/// [`Error::Format`] naming it.
pub fn expand_paths<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let p = p.as_ref();
        let err = |message: String| Error::Format {
            path: p.display().to_string(),
            message,
        };
        let meta = std::fs::metadata(p).map_err(|e| err(e.to_string()))?;
        if meta.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| err(e.to_string()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && f.extension().is_some_and(|e| e == "safetensors"))
                .collect();
            if files.is_empty() {
                return Err(err("folder holds no *.safetensors case file".into()));
            }
            files.sort();
            out.extend(files);
        } else {
            out.push(p.to_path_buf());
        }
    }
    Ok(out)
}

/// Where [`run_case`] runs a case.
#[derive(Clone, Copy, Debug)]
pub enum Backend<'a> {
    /// [`CpuOptimizer`].
    Cpu,
    /// [`GpuOptimizer`] on this context.
    Gpu(&'a GpuContext),
}

impl Backend<'_> {
    /// `cpu` or `gpu`.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Gpu(_) => "gpu",
        }
    }

    /// `cpu`, or the GPU adapter's label ([`GpuContext::adapter_label`]).
    pub fn adapter(&self) -> String {
        match self {
            Backend::Cpu => "cpu".to_string(),
            Backend::Gpu(ctx) => ctx.adapter_label(),
        }
    }
}

/// How one tensor of ours compares with the reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorCheck {
    /// `param`, or the state name (`exp_avg`, ...).
    pub what: String,
    /// Index of the parameter tensor.
    pub tensor: usize,
    /// Largest |ours − reference| over the tensor's elements (NaN if any
    /// element of ours is NaN).
    pub max_abs_err: f64,
    /// The element where it is largest.
    pub worst_index: usize,
    /// The tolerance it is held to.
    pub atol: f64,
    /// `max_abs_err / atol` (0 when both are 0).
    pub ratio: f64,
    /// Largest |PyTorch float32 − reference|: PyTorch's own error, for
    /// comparison; `None` where the file lacks PyTorch's float32 run.
    pub torch_f32_abs_err: Option<f64>,
}

/// The comparison of a run's final parameters and state with a case's
/// reference ([`compare`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Max over all parameter tensors of max |ours − reference| / `atol_param`
    /// (NaN if any parameter is NaN).
    pub param_err_ratio: f64,
    /// Max over the reference's state names of max |ours − reference| /
    /// that state's atol (NaN if any compared state element is NaN; 0 when
    /// the rule has no state).
    pub state_err_ratio: f64,
    /// One entry per compared tensor.
    pub tensors: Vec<TensorCheck>,
    /// Why it fails, in words (a ratio over 1, a NaN, a state we lack, a
    /// tensor of the wrong length); empty when it passes.
    pub failures: Vec<String>,
}

impl Comparison {
    /// Both ratios ≤ 1, no NaN, every reference state present.
    pub fn pass(&self) -> bool {
        self.failures.is_empty() && self.param_err_ratio <= 1.0 && self.state_err_ratio <= 1.0
    }
}

/// Max |ours − reference| and where; NaN if any element of ours (or of the
/// reference) is NaN. Lengths must be equal.
fn max_err(ours: &[f32], reference: &[f64]) -> (f64, usize) {
    let mut worst = (0.0f64, 0usize);
    for (i, (&o, &r)) in ours.iter().zip(reference).enumerate() {
        let e = (f64::from(o) - r).abs();
        if e.is_nan() {
            return (f64::NAN, i);
        }
        if e > worst.0 {
            worst = (e, i);
        }
    }
    worst
}

fn ratio(err: f64, atol: f64) -> f64 {
    if err == 0.0 {
        0.0
    } else {
        err / atol
    }
}

/// Max of ratios where NaN wins (`f64::max` would drop it).
fn max_nan(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Compares the tensors `[t]` of one kind (`param` or a state name), adds
/// their [`TensorCheck`]s and failures to `out`, returns the worst ratio.
fn check_tensors(
    out: &mut Comparison,
    what: &str,
    ours: &[Vec<f32>],
    reference: &[Vec<f64>],
    torch: Option<&Vec<Vec<f32>>>,
    atol: f64,
) -> f64 {
    let mut worst_ratio = 0.0f64;
    if ours.len() != reference.len() {
        out.failures.push(format!(
            "{what}: {} tensors, the reference has {}",
            ours.len(),
            reference.len()
        ));
        return f64::INFINITY;
    }
    for (t, (o, r)) in ours.iter().zip(reference).enumerate() {
        if o.len() != r.len() {
            out.failures.push(format!(
                "{what}.{t}: {} elements, the reference has {}",
                o.len(),
                r.len()
            ));
            worst_ratio = f64::INFINITY;
            continue;
        }
        let (err, index) = max_err(o, r);
        let rt = ratio(err, atol);
        if err.is_nan() {
            out.failures.push(format!("{what}.{t}[{index}] is NaN"));
        }
        let torch_f32_abs_err = torch
            .and_then(|tt| tt.get(t))
            .filter(|tt| tt.len() == r.len())
            .map(|tt| max_err(tt, r).0);
        out.tensors.push(TensorCheck {
            what: what.to_string(),
            tensor: t,
            max_abs_err: err,
            worst_index: index,
            atol,
            ratio: rt,
            torch_f32_abs_err,
        });
        worst_ratio = max_nan(worst_ratio, rt);
    }
    worst_ratio
}

/// Compares final parameters (`[t]`) and state (by PyTorch's name, `[t]`)
/// with `case`'s reference. Every state the reference names must be in
/// `state`; states only `state` has are not compared.
pub fn compare(
    case: &Case,
    params: &[Vec<f32>],
    state: &BTreeMap<String, Vec<Vec<f32>>>,
) -> Comparison {
    let mut out = Comparison {
        param_err_ratio: 0.0,
        state_err_ratio: 0.0,
        tensors: Vec::new(),
        failures: Vec::new(),
    };
    let p = check_tensors(
        &mut out,
        "param",
        params,
        &case.expected_params,
        case.torch_f32_params.as_ref(),
        case.atol_param,
    );
    let mut s = 0.0f64;
    for (name, reference) in &case.expected_state {
        // The loader checked that every reference state has a tolerance.
        let atol = case.atol_state.get(name).unwrap_or(0.0);
        match state.get(name) {
            Some(ours) => {
                let r = check_tensors(
                    &mut out,
                    name,
                    ours,
                    reference,
                    case.torch_f32_state.get(name),
                    atol,
                );
                s = max_nan(s, r);
            }
            None => {
                s = f64::INFINITY;
                out.failures.push(format!(
                    "state `{name}`: PyTorch has it, this run does not (it has: {})",
                    state.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    out.param_err_ratio = p;
    out.state_err_ratio = s;
    // Name the worst tensor of each kind (parameters, state) that is over
    // its tolerance.
    for params_kind in [true, false] {
        let worst = out
            .tensors
            .iter()
            .filter(|c| (c.what == "param") == params_kind && c.ratio > 1.0)
            .max_by(|a, b| a.ratio.total_cmp(&b.ratio));
        if let Some(c) = worst {
            out.failures.push(format!(
                "{}.{}[{}] off by {:.4e} = {:.3} × atol {:.3e}",
                c.what, c.tensor, c.worst_index, c.max_abs_err, c.ratio, c.atol
            ));
        }
    }
    out
}

/// The outcome of one case on one backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseResult {
    /// The case's name.
    pub case: String,
    /// The file it came from.
    pub path: String,
    /// `cpu` or `gpu`.
    pub backend: String,
    /// `cpu`, or the GPU adapter's label.
    pub adapter: String,
    /// Whether ours matched the reference within tolerance.
    pub pass: bool,
    /// See [`Comparison::param_err_ratio`]; `None` when the case did not run
    /// (and in JSON `null` for NaN as well).
    pub param_err_ratio: Option<f64>,
    /// See [`Comparison::state_err_ratio`]; `None` when the case did not run.
    pub state_err_ratio: Option<f64>,
    /// What the case needs that is not supported yet ([`Case::unsupported`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsupported: Vec<String>,
    /// Why the comparison failed ([`Comparison::failures`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
    /// Why the case could not run (unsupported, unreadable, no adapter, an
    /// error of the optimizer); `None` when it ran.
    pub error: Option<String>,
    /// Per-tensor detail ([`TensorCheck`]); left out of JSON.
    #[serde(skip)]
    pub tensors: Vec<TensorCheck>,
}

impl CaseResult {
    /// The result of a case that could not run on `backend` (unreadable
    /// file, no GPU adapter, ...): `pass: false`, with `error`.
    pub fn not_run(
        case: impl Into<String>,
        path: impl Into<String>,
        backend: impl Into<String>,
        adapter: impl Into<String>,
        error: impl Into<String>,
    ) -> CaseResult {
        CaseResult {
            case: case.into(),
            path: path.into(),
            backend: backend.into(),
            adapter: adapter.into(),
            pass: false,
            param_err_ratio: None,
            state_err_ratio: None,
            unsupported: Vec::new(),
            failures: Vec::new(),
            error: Some(error.into()),
            tensors: Vec::new(),
        }
    }
}

/// Final parameters `[t]` and state by name `[t]`.
type FinalTensors = (Vec<Vec<f32>>, BTreeMap<String, Vec<Vec<f32>>>);

/// Runs every step of `case` and reads back the final parameters and state.
fn run_steps(case: &Case, opt: &mut dyn Optimizer) -> Result<FinalTensors> {
    // The case's schedule drives the lr (and momentum) through the
    // library's own `Scheduler`: the values torch recorded
    // (`lr_per_step`) are what it must reproduce, not an input. With
    // groups, one scheduler per group, from the group's own initial values
    // (torch's `initial_lr`) and its element of a list-valued argument.
    // One scheduler a group (a GroupScheduler, of one group without
    // groups), each from its group's own initial values (torch's
    // `initial_lr`) and its element of a list-valued argument.
    let schedules = case.group_schedules()?;
    let mut scheduler = if schedules.is_empty() {
        None
    } else {
        Some(GroupScheduler::per_group(schedules, &*opt)?)
    };
    opt.set_clip_grad_norm(case.clip_grad_norm.map(ClipGradNorm::new))?;
    for (step, step_grads) in case.grads.iter().enumerate() {
        if let Some(s) = &scheduler {
            s.apply(opt)?;
        }
        let grads: Vec<&[f32]> = step_grads.iter().map(Vec::as_slice).collect();
        opt.step(&grads)?;
        if let Some(s) = &mut scheduler {
            match case.metrics.get(step) {
                Some(&metric) => s.advance_with_metric(metric)?,
                None => s.advance(),
            }
        }
    }
    let params = opt.read_params()?;
    let mut state = BTreeMap::new();
    // The state of each tensor's own group: empty where the group has no
    // such state, as the case's reference then has none.
    let groups = opt.groups();
    for name in opt.state_names().to_vec() {
        let mut tensors = opt.read_state(name)?;
        for g in groups
            .iter()
            .filter(|g| !g.config.state_names().contains(&name))
        {
            for &t in &g.params {
                tensors[t].clear();
            }
        }
        state.insert(name.to_string(), tensors);
    }
    // One number for all tensors, compared in each as torch has it there.
    for (name, value) in opt.scalar_state()? {
        state.insert(name.to_string(), vec![vec![value as f32]; params.len()]);
    }
    Ok((params, state))
}

/// Runs `case` on `backend` through the public API ([`CpuOptimizer`] or
/// [`GpuOptimizer`] over the case's tensors, one [`step`](CpuOptimizer::step)
/// per gradient set) and [`compare`]s the final parameters and every state
/// tensor PyTorch names with the reference. Never panics: anything that goes
/// wrong (an unsupported feature, an invalid hyperparameter, a GPU error) is
/// a result with `pass: false` and `error`.
pub fn run_case(case: &Case, backend: Backend<'_>) -> CaseResult {
    let mut result = CaseResult::not_run(
        case.name.clone(),
        case.path.display().to_string(),
        backend.name(),
        backend.adapter(),
        String::new(),
    );
    let unsupported = case.unsupported();
    if !unsupported.is_empty() {
        result.error = Some(Error::Unsupported(unsupported.join(", ")).to_string());
        result.unsupported = unsupported;
        return result;
    }
    let Some(config) = case.config.clone() else {
        // Not reached: `Case::unsupported` lists a rule without a config.
        result.error = Some(Error::Unsupported(format!("rule `{}`", case.rule)).to_string());
        return result;
    };
    let init: Vec<&[f32]> = case.init.iter().map(Vec::as_slice).collect();
    let outcome = match (backend, case.groups.is_empty()) {
        (Backend::Cpu, true) if !case.shapes.is_empty() => {
            CpuOptimizer::with_shapes(config.clone(), &init, &case.shapes)
                .and_then(|mut opt| run_steps(case, &mut opt))
        }
        (Backend::Cpu, true) => {
            CpuOptimizer::new(config.clone(), &init).and_then(|mut opt| run_steps(case, &mut opt))
        }
        (Backend::Cpu, false) => CpuOptimizer::with_param_groups(&init, &case.groups)
            .and_then(|mut opt| run_steps(case, &mut opt)),
        (Backend::Gpu(ctx), true) if !case.shapes.is_empty() => {
            GpuOptimizer::with_shapes(ctx, config.clone(), &init, &case.shapes)
                .and_then(|mut opt| run_steps(case, &mut opt))
        }
        (Backend::Gpu(ctx), true) => GpuOptimizer::new(ctx, config.clone(), &init)
            .and_then(|mut opt| run_steps(case, &mut opt)),
        (Backend::Gpu(ctx), false) => {
            GpuOptimizer::with_param_groups(ctx, &init, &case.groups, crate::GpuOptions::default())
                .and_then(|mut opt| run_steps(case, &mut opt))
        }
    };
    match outcome {
        Err(e) => result.error = Some(e.to_string()),
        Ok((params, state)) => {
            let cmp = compare(case, &params, &state);
            result.error = None;
            result.pass = cmp.pass();
            result.param_err_ratio = Some(cmp.param_err_ratio);
            result.state_err_ratio = Some(cmp.state_err_ratio);
            result.failures = cmp.failures;
            result.tensors = cmp.tensors;
        }
    }
    result
}

mod case_file;
use case_file::parse_case;
