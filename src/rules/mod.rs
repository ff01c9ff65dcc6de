//! The update rules: their configurations (PyTorch's names and defaults),
//! validation, the per-step scalars shared by the CPU and the GPU, and the
//! CPU reference of each rule written to match its equations.
//!
//! Every rule but LAMB is element-wise: one parameter element, its gradient
//! and its state elements in, the same out. The CPU loops and the WGSL
//! kernels both apply the per-element functions with the same per-step
//! scalars, computed once per step on the host in `f64` and rounded to `f32`.
//!
//! # Adding a rule
//!
//! An element-wise rule is two new files and four lines:
//!
//! 1. `shaders/<rule>.wgsl`: its `struct Scalars` (as the Rust one), its
//!    `override`s, `begin_step` and `update` (see `sgd.wgsl`); the
//!    composer in `src/gpu/kernels.rs` puts the prelude, the bindings
//!    (its state slots named as in `KernelShape::ElementWise`),
//!    `shaders/common.wgsl` and `shaders/elementwise.wgsl` before it.
//! 2. `src/rules/<rule>.rs`: the configuration struct (torch's names and
//!    defaults, documented: the equations, the reference, an example), its
//!    `#[repr(C)]` scalars, the `#[inline(always)]` element function and
//!    its `multiversion!` slice loop (one `for_each_element!`), and
//!    `impl Rule` (name, kernel, validation, state, `lr_is_the_field!()`,
//!    the scalars that stay the same from step to step
//!    and the step-table entry of those that change, CPU step, torch's
//!    keyword arguments both ways, bench presets).
//! 3. Here: `pub mod <rule>;`, `pub use <rule>::<Type>;` and one row of
//!    `registry!` below, `Variant(Type)` with its doc.
//! 4. `src/lib.rs`: `<Type>` in the crate root's `pub use rules::{..}`.
//!
//! Everything else (the [`Config`] and [`RuleKind`] variants, the
//! dispatch of the optimizers, checkpoints, case files and `bench`) comes
//! from the row. A rule that is not element-wise also picks a
//! `KernelShape::Tiled` kernel and writes its own `Rule::cpu_step`, as
//! LAMB does. Its tests are one row of `tests/common/cases.rs` (its
//! configurations, the ones it must refuse, what it supports), which the
//! GPU-vs-CPU, checkpoint, non-finite, behaviour and error tests run;
//! `tests/registry_coverage.rs` fails until that row sets every option and
//! the rule has golden cases (`tests/data/golden`) and torch's non-finite
//! expectations (`tests/data/nonfinite`). The row also says the rule's
//! momentum (what `set_momentum` sets), its GPU-against-CPU bound and its
//! kernel's bindings (`tests/webgpu_limits.rs`).

pub mod adadelta;
pub mod adafactor;
pub mod adagrad;
pub mod adam;
pub mod adamax;
pub mod ademamix;
pub mod asgd;
pub mod lamb;
pub mod lion;
pub mod muon;
pub mod nadam;
pub mod radam;
pub mod rmsprop;
pub mod rprop;
pub mod schedulefree;
pub mod sgd;

pub use adadelta::Adadelta;
pub use adafactor::Adafactor;
pub use adagrad::Adagrad;
pub use adam::{Adam, AdamW};
pub use adamax::Adamax;
pub use ademamix::AdEMAMix;
pub use asgd::Asgd;
pub use lamb::Lamb;
pub use lion::Lion;
pub use muon::{Muon, MuonAdjustLr};
pub use nadam::NAdam;
pub use radam::RAdam;
pub use rmsprop::RmsProp;
pub use rprop::Rprop;
pub use schedulefree::{AdamWScheduleFree, SgdScheduleFree};
pub use sgd::Sgd;

mod torch;

pub(crate) use torch::TorchArgs;

use serde_json::{Map, Value};

use crate::clip::ClipGradNorm;
use crate::error::{Error, Result};
use crate::layout::Layout;

/// What the optimizers, checkpoints, case files and `bench` need of a rule,
/// implemented by its configuration struct in the rule's own file. The
/// [`registry!`] row of the rule turns each item into a method of
/// [`Config`] or [`RuleKind`].
///
/// # Scalar state
///
/// Most step-dependent scalars are functions of the step count and the
/// configuration in force ([`Rule::step_entry`]). Some are history: NAdam's
/// `mu_product` is a product over the applied steps of a factor that
/// depends on the `β1` in force at each, ASGD's `eta` comes from the lr of
/// the previous applied step (schedule-free AdamW's `lr_max` and
/// `weight_sum` are of the same kind). A rule declares such numbers in
/// [`Rule::SCALAR_STATE`], with the type and the place torch keeps them in;
/// both optimizers keep their values on the host (`f64`, holding `f32`
/// values where torch keeps `f32`), start them from
/// [`Rule::scalar_state_initial`] of the configuration in force at the
/// first applied step, advance them once per applied step
/// ([`Rule::advance_scalar_state`]) and hand them to
/// [`Rule::step_entry_with`]; checkpoints carry them under torch's names.
///
/// With `skip_nonfinite` the GPU optimizer does not know at once which of
/// its queued steps were applied. It sends the entry of every step count
/// the GPU may be at, the scalar state of each computed by advancing the
/// known state over that many steps: exact while the queued steps whose
/// outcome is unknown advance the state alike ([`Rule::advances_alike`]).
/// When they do not (NAdam's `β1`, ASGD's lr changed among them) it waits
/// for their outcomes first; the read-backs tell which steps were applied,
/// and the state is advanced over exactly those (src/gpu/skip.rs).
pub(crate) trait Rule: Clone + Default + PartialEq + Into<Config> {
    /// The lower-case name of torch's class (of Apex's for LAMB):
    /// [`RuleKind::name`], the `rule` of checkpoints and case files.
    const NAME: &'static str;
    /// Whether torch keeps a `step` in the state of every tensor (all but
    /// SGD): checkpoints then carry `state.{i}.step`.
    const TORCH_STEP: bool = true;
    /// Whether torch fills the momentum buffer with the gradient on its
    /// first use instead of starting it at 0 (SGD): a torch checkpoint
    /// with a buffer then has it filled.
    const LAZY_MOMENTUM_BUFFER: bool = false;
    /// The GPU kernel.
    const KERNEL: KernelSpec;
    /// Whether the rule treats a tensor as a matrix (Adafactor, Muon): its
    /// step reads each tensor's [`crate::Shape`] from the layout. Such a
    /// rule runs on the CPU over one parameter group in f32; the GPU, the
    /// sharded optimizer, parameter groups and low-precision storage refuse
    /// it ([`Error::Unsupported`]).
    const MATRIX: bool = false;
    /// Checks the shapes of the tensors (`layout.shape(i)`, `None` when
    /// none was given): [`Error::MatrixRequired`] where the rule needs a
    /// matrix and the tensor is not one.
    fn check_shapes(&self, _layout: &Layout) -> Result<()> {
        Ok(())
    }
    /// Elements of state tensor `name` for a parameter tensor of `len`
    /// elements and shape `shape`: `len` for the element-wise rules,
    /// Adafactor's factored statistics for its own.
    fn state_len(&self, _name: &str, _shape: Option<&crate::Shape>, len: usize) -> usize {
        len
    }
    /// Whether torch keeps state tensor `name` for a parameter tensor of
    /// shape `shape` (Adafactor keeps `row_var` and `col_var` for a matrix,
    /// `variance` for a vector); every state of every tensor for the other
    /// rules.
    fn has_state(&self, _name: &str, _shape: Option<&crate::Shape>) -> bool {
        true
    }
    /// The per-step scalars, the header of the kernel's uniforms
    /// (`#[repr(C)]`, a multiple of 16 bytes, `struct Scalars` of the shader).
    type Scalars: bytemuck::Pod + std::fmt::Debug;

    /// Checks every hyperparameter in force on an optimizer whose state
    /// was fixed when it was built: `momentum_buffer` says whether it has
    /// one (see [`Rule::builds_momentum_buffer`]; rules without one ignore
    /// it). At construction it is `self.builds_momentum_buffer()`, and this
    /// is torch's check.
    fn validate(&self, momentum_buffer: bool) -> Result<()>;
    /// Whether an optimizer built with this configuration has a
    /// `momentum_buffer`, as torch allocates one. It keeps it for life,
    /// whatever momentum is set later.
    fn builds_momentum_buffer(&self) -> bool {
        false
    }
    /// The state tensors, as torch names them, in the order the optimizer
    /// stores them, with or without a `momentum_buffer`; fixed when the
    /// optimizer is built.
    fn state_names(&self, momentum_buffer: bool) -> Vec<&'static str>;
    /// The value state tensor `name` starts with.
    fn state_initial_value(&self, _name: &str) -> f32 {
        0.0
    }
    /// The learning rate.
    fn lr(&self) -> f64;
    /// Sets the learning rate (already checked).
    fn set_lr(&mut self, lr: f64);
    /// The momentum (or `betas[0]`), if the rule has one.
    fn momentum(&self) -> Option<f64> {
        None
    }
    /// Checks and sets the momentum; `has_buffer` says whether the
    /// optimizer was built with a `momentum_buffer`.
    fn set_momentum(&mut self, _value: f64, _has_buffer: bool) -> Result<()> {
        Err(Error::NoMomentum { rule: Self::NAME })
    }
    /// The `β1` of a schedule-free rule, whose parameters switch between
    /// train mode's `y` and eval mode's `x = (y − (1 − β1)·z)/β1`
    /// (`set_eval` of the optimizers); `None` for every other rule.
    fn eval_beta1(&self) -> Option<f64> {
        None
    }
    /// Whether this step uses a momentum buffer that torch fills with the
    /// gradient on its first use ([`Rule::LAZY_MOMENTUM_BUFFER`], with a
    /// momentum in force): the optimizers then count it filled.
    fn fills_buffer_on_first_use(&self) -> bool {
        false
    }
    /// The options fixed for the optimizer's life, as the WGSL `override`
    /// constants of the kernel; `momentum_buffer` as in
    /// [`Rule::validate`] (`HAS_MOMENTUM` says whether the state has one,
    /// not whether the momentum in force is 0).
    fn overrides(&self, momentum_buffer: bool) -> Vec<(&'static str, f64)>;
    /// The scalars that stay the same from step to step, the header of the
    /// kernel's uniforms; `buffer_filled` as
    /// [`Rule::fills_buffer_on_first_use`].
    fn scalars(&self, buffer_filled: bool) -> Self::Scalars;
    /// The scalars of step `step` (1 for the first) that depend on the step
    /// count (bias corrections, a decayed learning rate): the kernel reads
    /// them from the table of the uniforms' tail, where with
    /// `skip_nonfinite` the GPU picks the entry of the step count it is at
    /// (it knows the count, the host does not); the CPU step gets the same
    /// entry.
    fn step_entry(&self, _step: u64) -> StepEntry {
        [0.0; 4]
    }
    /// The rule's scalar state (see "Scalar state" below): the numbers
    /// torch keeps besides the step count whose values depend on the
    /// history of the steps, in the order of the values the optimizers keep.
    const SCALAR_STATE: &'static [ScalarState] = &[];
    /// The scalar state before the first step, from this configuration,
    /// the one in force at the first applied step (torch creates it then).
    fn scalar_state_initial(&self) -> Vec<f64> {
        Vec::new()
    }
    /// Advances the scalar state over applied step `step` (1 for the first)
    /// taken with this configuration in force, each value rounded as torch
    /// keeps it.
    fn advance_scalar_state(&self, _state: &mut [f64], _step: u64) {}
    /// Whether steps taken with `self` and with `other` in force advance
    /// the scalar state alike: the hyperparameters
    /// [`Rule::advance_scalar_state`] and [`Rule::scalar_state_initial`]
    /// read are the same. Equal configurations by default; only asked of
    /// rules with scalar state.
    fn advances_alike(&self, other: &Self) -> bool {
        self == other
    }
    /// The table entry of step `step` when the scalar state before it is
    /// `state`; [`Rule::step_entry`] for rules without scalar state.
    fn step_entry_with(&self, step: u64, _state: &[f64]) -> StepEntry {
        self.step_entry(step)
    }
    /// One step on the CPU over the packed tensors of `layout`: `states` in
    /// the optimizer's [`Rule::state_names`] order, `s` and `entry` the
    /// header and the table entry the kernel reads; the gradients are
    /// multiplied by `scales` first (the loss scale's inverse, then the
    /// clip coefficient, as torch does). Element-wise rules call
    /// [`elementwise_step`].
    #[allow(clippy::too_many_arguments)]
    fn cpu_step(
        &self,
        s: &Self::Scalars,
        entry: StepEntry,
        layout: &Layout,
        params: &mut [f32],
        grads: &[f32],
        states: &mut [Vec<f32>],
        scales: GradScales,
    );
    /// torch's `param_groups[0]` (without `params`), with this crate's own
    /// options beside torch's: what a checkpoint writes.
    fn to_torch(&self) -> Map<String, Value>;
    /// The configuration torch's keyword arguments describe (a checkpoint's
    /// `param_groups[0]`, a case file's `hyper`; see [`TorchArgs`]).
    fn from_torch(args: &mut TorchArgs<'_>) -> Result<Config>;
    /// The configurations `wgpu-optim bench` runs.
    fn presets() -> Vec<Preset>;
}

/// [`Rule::lr`] and [`Rule::set_lr`] of a configuration whose learning rate
/// is its field `lr` (every rule's), inside its `impl Rule`.
macro_rules! lr_is_the_field {
    () => {
        fn lr(&self) -> f64 {
            self.lr
        }
        fn set_lr(&mut self, lr: f64) {
            self.lr = lr;
        }
    };
}
pub(crate) use lr_is_the_field;

/// One entry of the step table (`table` of the uniforms' tail): a rule's
/// step-dependent scalars, at most four.
pub(crate) type StepEntry = [f32; 4];

/// One number of a rule's scalar state ([`Rule::SCALAR_STATE`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ScalarState {
    /// torch's name (`mu_product`, `eta`, ...).
    pub name: &'static str,
    /// The type torch keeps it in.
    pub dtype: ScalarDtype,
    /// Where torch's `state_dict` has it.
    pub home: ScalarHome,
}

/// The type torch keeps a number of scalar state in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScalarDtype {
    /// A float32 tensor (torch's default dtype: NAdam's `mu_product`,
    /// ASGD's `eta` and `mu`). The rule rounds its values to `f32`.
    F32,
    /// A float64 value (a Python float).
    F64,
}

/// Where torch's `state_dict` keeps a number of scalar state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScalarHome {
    /// In every parameter's state, a 0-dimensional tensor
    /// (`state.{i}.{name}` of a checkpoint): NAdam's, ASGD's.
    Tensor,
    /// In the parameter group (`param_groups[0].{name}`), as
    /// schedule-free's `lr_max` and `weight_sum` are.
    Group,
}

/// A rule's GPU kernel.
pub(crate) struct KernelSpec {
    /// The shader's name: its label, and its key in the pipeline cache
    /// (rules that share a kernel share the name).
    pub name: &'static str,
    /// The WGSL source (`include_str!`).
    pub source: &'static str,
    /// How it is bound and dispatched.
    pub shape: KernelShape,
}

/// How a kernel is bound and dispatched.
pub(crate) enum KernelShape {
    /// `main` of `shaders/elementwise.wgsl`, one thread per element (or
    /// vec4), calling the rule's `update`; bindings: parameters, gradients,
    /// these state slots (by state name; a slot the configuration has no
    /// state for gets a dummy buffer), the step info, the counters, the
    /// uniforms.
    ElementWise {
        /// The state bindings, in binding order.
        slots: &'static [&'static str],
    },
    /// Three entry points of the rule's file after `shaders/tiles.wgsl`, on
    /// the tile layout
    /// (with `exp_avg`, `exp_avg_sq` bound): one over every tile, one
    /// workgroup per tensor, one over every tile again.
    Tiled {
        /// The three entry points, in dispatch order.
        entry_points: &'static [&'static str; 3],
        /// The rule's own WGSL constants, written by the composer.
        constants: &'static [(&'static str, u32)],
    },
    /// No GPU kernel yet (the matrix rules, [`Rule::MATRIX`]): the GPU
    /// optimizer refuses the rule with [`Error::Unsupported`].
    None,
}

impl KernelSpec {
    /// Whether it is a [`KernelShape::Tiled`] kernel.
    pub(crate) fn is_tiled(&self) -> bool {
        matches!(self.shape, KernelShape::Tiled { .. })
    }
}

/// A configuration `wgpu-optim bench` runs, named as PyTorch's
/// `torch_optim_bench.py` names it where the script has it.
#[derive(Clone, Debug)]
pub struct Preset {
    /// Its name on the command line and in the output (`sgd_momentum`, ...).
    pub name: &'static str,
    /// The rule and hyperparameters.
    pub config: Config,
    /// The global-norm clipping each step runs with, if any.
    pub clip: Option<ClipGradNorm>,
}

impl Preset {
    fn new(name: &'static str, config: impl Into<Config>) -> Self {
        Preset {
            name,
            config: config.into(),
            clip: None,
        }
    }
}

/// The registry: one row per rule, `Variant(Type)`, with the doc of the
/// [`RuleKind`] variant. It defines [`RuleKind`], [`Config`] (the variant
/// holds the type), the `From` impls, the per-step scalars and every
/// dispatch over the rules, each arm calling the [`Rule`] item of the type.
/// The order of the rows is [`RuleKind::ALL`]'s.
macro_rules! registry {
    ($($(#[$doc:meta])* $v:ident($ty:ident)),* $(,)?) => {
        /// Which update rule a [`Config`] is.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum RuleKind {
            $($(#[$doc])* $v,)*
        }

        /// An optimizer's rule and hyperparameters. Build one from a rule's
        /// struct with `.into()` (or `Config::Adam(..)`).
        #[derive(Clone, Debug, PartialEq)]
        #[non_exhaustive]
        pub enum Config {
            $(#[doc = concat!("[`", stringify!($ty), "`].")] $v($ty),)*
        }

        $(impl From<$ty> for Config {
            fn from(c: $ty) -> Self {
                Config::$v(c)
            }
        })*

        /// The header of a rule's uniforms, laid out for the WGSL uniform
        /// buffer.
        #[derive(Clone, Copy, Debug)]
        pub(crate) enum StepScalars {
            $($v(<$ty as Rule>::Scalars),)*
        }

        /// The names of the rules, in [`RuleKind::ALL`] order.
        pub(crate) const NAMES: [&str; [$(stringify!($v)),*].len()] = [$(<$ty as Rule>::NAME),*];

        impl RuleKind {
            /// Every rule, in the order the README lists them.
            pub const ALL: [RuleKind; NAMES.len()] = [$(RuleKind::$v),*];

            /// The lower-case name of PyTorch's class (`sgd`, `adagrad`,
            /// `rmsprop`, `adam`, `adamw`, `radam`, `adamax`, `nadam`,
            /// `asgd`, `adadelta`, `rprop`), of Apex's and optax's for LAMB
            /// (`lamb`), of the reference package's for the rules torch
            /// lacks (`lion`, `ademamix`, `schedulefree_sgd`, `schedulefree_adamw`).
            pub fn name(self) -> &'static str {
                match self {
                    $(RuleKind::$v => <$ty as Rule>::NAME,)*
                }
            }

            /// The rule with PyTorch's default hyperparameters.
            pub fn default_config(self) -> Config {
                match self {
                    $(RuleKind::$v => Config::$v($ty::default()),)*
                }
            }

            /// The configurations `wgpu-optim bench` runs for this rule.
            pub fn presets(self) -> Vec<Preset> {
                match self {
                    $(RuleKind::$v => <$ty as Rule>::presets(),)*
                }
            }

            /// The configuration torch's keyword arguments describe.
            pub(crate) fn config_from_torch(self, args: &mut TorchArgs<'_>) -> Result<Config> {
                match self {
                    $(RuleKind::$v => <$ty as Rule>::from_torch(args),)*
                }
            }
        }

        impl StepScalars {
            pub(crate) fn bytes(&self) -> &[u8] {
                match self {
                    $(StepScalars::$v(s) => bytemuck::bytes_of(s),)*
                }
            }

        }

        impl Config {
            /// Which rule this is.
            pub fn kind(&self) -> RuleKind {
                match self {
                    $(Config::$v(_) => RuleKind::$v,)*
                }
            }

            /// Checks every hyperparameter, as `torch.optim` does at
            /// construction.
            pub fn validate(&self) -> Result<()> {
                self.validate_with(self.builds_momentum_buffer())
            }

            /// Checks the hyperparameters in force on an optimizer whose
            /// state tensors were fixed when it was built: with
            /// `momentum_buffer` (SGD, RMSprop) it has one, and may have
            /// any momentum `>= 0` in force, 0 included (Nesterov too, as
            /// torch checks Nesterov only at construction); without one its
            /// momentum must be 0.
            pub(crate) fn validate_with(&self, momentum_buffer: bool) -> Result<()> {
                match self {
                    $(Config::$v(c) => c.validate(momentum_buffer),)*
                }
            }

            /// The names of the state tensors of an optimizer built with
            /// this configuration, as PyTorch names them, in the order the
            /// optimizer stores them. Which exist depends on the options at
            /// construction (SGD has a `momentum_buffer` only with
            /// momentum, RMSprop a `grad_avg` only when centered, Adam a
            /// `max_exp_avg_sq` only with AMSGrad) and stays so for the
            /// optimizer's life: a momentum set to 0 later keeps the
            /// buffer, as torch keeps it in its `state_dict`. The
            /// optimizers' and checkpoints' own `state_names` say what they
            /// hold.
            pub fn state_names(&self) -> Vec<&'static str> {
                self.state_names_with(self.builds_momentum_buffer())
            }

            /// The names of the rule's scalar state, as PyTorch names it:
            /// numbers torch keeps per tensor besides the step count, whose
            /// values depend on the steps taken (NAdam's `mu_product`,
            /// ASGD's `eta` and `mu`; none for the other rules). The
            /// optimizers keep one value of each for all their tensors
            /// (`scalar_state()`), checkpoints carry them.
            pub fn scalar_state_names(&self) -> Vec<&'static str> {
                self.scalar_state_spec().iter().map(|s| s.name).collect()
            }

            /// Whether an optimizer built with this configuration has a
            /// `momentum_buffer`: SGD with `momentum != 0`, RMSprop with
            /// `momentum > 0`, as torch allocates one.
            pub(crate) fn builds_momentum_buffer(&self) -> bool {
                match self {
                    $(Config::$v(c) => c.builds_momentum_buffer(),)*
                }
            }

            /// The state tensors of this rule with its options fixed at
            /// construction, with or without a `momentum_buffer` (SGD,
            /// RMSprop; the other rules ignore `momentum_buffer`).
            pub(crate) fn state_names_with(&self, momentum_buffer: bool) -> Vec<&'static str> {
                match self {
                    $(Config::$v(c) => c.state_names(momentum_buffer),)*
                }
            }

            /// The value each state tensor starts with (Adagrad's
            /// `initial_accumulator_value`, Rprop's `lr` for `step_size`;
            /// zero for everything else).
            pub(crate) fn state_initial_value(&self, name: &str) -> f32 {
                match self {
                    $(Config::$v(c) => c.state_initial_value(name),)*
                }
            }

            /// The learning rate in force.
            pub fn lr(&self) -> f64 {
                match self {
                    $(Config::$v(c) => c.lr(),)*
                }
            }

            /// Sets the learning rate for the following steps.
            pub(crate) fn set_lr(&mut self, lr: f64) -> Result<()> {
                check_non_negative("lr", lr)?;
                match self {
                    $(Config::$v(c) => c.set_lr(lr),)*
                }
                Ok(())
            }

            /// The momentum in force: SGD's and RMSprop's `momentum`, the
            /// Adam family's (RAdam, Adamax and NAdam too), LAMB's, Lion's
            /// and AdEMAMix's `betas[0]`; `None` for Adagrad, ASGD, Adadelta
            /// and Rprop.
            pub fn momentum(&self) -> Option<f64> {
                match self {
                    $(Config::$v(c) => c.momentum(),)*
                }
            }

            /// Sets the momentum (or `beta1`) for the following steps. Only
            /// rules built with a momentum buffer can change it:
            /// `has_buffer` says whether the optimizer has one (testing the
            /// momentum in force instead would keep a momentum set to 0,
            /// as a `CyclicLr` with `base_momentum: 0.0` does, from ever
            /// being raised again, although torch carries on with the
            /// buffer).
            pub(crate) fn set_momentum(&mut self, value: f64, has_buffer: bool) -> Result<()> {
                match self {
                    $(Config::$v(c) => c.set_momentum(value, has_buffer),)*
                }
            }

            /// See [`Rule::eval_beta1`].
            pub(crate) fn eval_beta1(&self) -> Option<f64> {
                match self {
                    $(Config::$v(c) => c.eval_beta1(),)*
                }
            }

            /// See [`Rule::fills_buffer_on_first_use`].
            pub(crate) fn fills_buffer_on_first_use(&self) -> bool {
                match self {
                    $(Config::$v(c) => c.fills_buffer_on_first_use(),)*
                }
            }

            /// Whether the rule treats tensors as matrices (Adafactor,
            /// Muon): it reads their shapes (`CpuOptimizer::with_shapes`),
            /// and runs on the CPU over one parameter group in f32 only (the
            /// GPU, the sharded optimizer, several groups and low-precision
            /// storage refuse it).
            pub fn is_matrix_rule(&self) -> bool {
                match self {
                    $(Config::$v(_) => <$ty as Rule>::MATRIX,)*
                }
            }

            /// See [`Rule::check_shapes`].
            pub(crate) fn check_shapes(&self, layout: &Layout) -> Result<()> {
                match self {
                    $(Config::$v(c) => c.check_shapes(layout),)*
                }
            }

            /// See [`Rule::has_state`].
            pub(crate) fn has_state(&self, name: &str, shape: Option<&crate::Shape>) -> bool {
                match self {
                    $(Config::$v(c) => c.has_state(name, shape),)*
                }
            }

            /// See [`Rule::state_len`].
            pub(crate) fn state_len(&self, name: &str, shape: Option<&crate::Shape>, len: usize) -> usize {
                match self {
                    $(Config::$v(c) => c.state_len(name, shape, len),)*
                }
            }

            /// Whether torch keeps a `step` per tensor (all rules but SGD).
            pub(crate) fn torch_step(&self) -> bool {
                match self {
                    $(Config::$v(_) => <$ty as Rule>::TORCH_STEP,)*
                }
            }

            /// See [`Rule::LAZY_MOMENTUM_BUFFER`].
            pub(crate) fn lazy_momentum_buffer(&self) -> bool {
                match self {
                    $(Config::$v(_) => <$ty as Rule>::LAZY_MOMENTUM_BUFFER,)*
                }
            }

            /// The boolean options fixed for the optimizer's life, as the
            /// WGSL `override` constants of the rule's kernel.
            /// `HAS_MOMENTUM` says whether the state has a
            /// `momentum_buffer`, not whether the momentum in force is 0
            /// (the uniforms' `use_momentum` says that, per step).
            pub(crate) fn overrides(&self, momentum_buffer: bool) -> Vec<(&'static str, f64)> {
                match self {
                    $(Config::$v(c) => c.overrides(momentum_buffer),)*
                }
            }

            /// The rule's GPU kernel.
            pub(crate) fn kernel(&self) -> &'static KernelSpec {
                match self {
                    $(Config::$v(_) => &<$ty as Rule>::KERNEL,)*
                }
            }

            /// The header of the kernel's uniforms (see [`Rule::scalars`]).
            /// `buffer_filled` is false until SGD's momentum buffer has
            /// been filled once (PyTorch fills it with the gradient on its
            /// first use).
            pub(crate) fn step_scalars(&self, buffer_filled: bool) -> StepScalars {
                match self {
                    $(Config::$v(c) => StepScalars::$v(c.scalars(buffer_filled)),)*
                }
            }

            /// The table entry of step number `step` with the scalar
            /// state `scalar_state` before it (see [`Rule::step_entry_with`];
            /// before the first step the state is this configuration's
            /// initial one, whatever `scalar_state` holds, as torch creates
            /// it at the first step).
            pub(crate) fn step_entry(&self, step: u64, scalar_state: &[f64]) -> StepEntry {
                match self {
                    $(Config::$v(c) => {
                        if step == 1 && !<$ty as Rule>::SCALAR_STATE.is_empty() {
                            c.step_entry_with(step, &c.scalar_state_initial())
                        } else {
                            c.step_entry_with(step, scalar_state)
                        }
                    })*
                }
            }

            /// The rule's scalar state: what each number is (see
            /// [`Rule::SCALAR_STATE`]).
            pub(crate) fn scalar_state_spec(&self) -> &'static [ScalarState] {
                match self {
                    $(Config::$v(_) => <$ty as Rule>::SCALAR_STATE,)*
                }
            }

            /// The rule's scalar state before the first step, from this
            /// configuration.
            pub(crate) fn scalar_state_initial(&self) -> Vec<f64> {
                match self {
                    $(Config::$v(c) => c.scalar_state_initial(),)*
                }
            }

            /// Advances `scalar_state` over applied step `step` taken with
            /// this configuration in force (the first step starts it from
            /// this configuration, as torch does).
            pub(crate) fn advance_scalar_state(&self, scalar_state: &mut Vec<f64>, step: u64) {
                match self {
                    $(Config::$v(c) => {
                        if <$ty as Rule>::SCALAR_STATE.is_empty() {
                            return;
                        }
                        if step == 1 {
                            *scalar_state = c.scalar_state_initial();
                        }
                        c.advance_scalar_state(scalar_state, step)
                    })*
                }
            }

            /// Whether steps with `self` and `other` in force advance the
            /// scalar state alike (always, for rules without one).
            pub(crate) fn advances_alike(&self, other: &Config) -> bool {
                match (self, other) {
                    $((Config::$v(a), Config::$v(b)) => {
                        <$ty as Rule>::SCALAR_STATE.is_empty() || a.advances_alike(b)
                    })*
                    _ => false,
                }
            }

            /// Step number `step` on the CPU over the packed tensors of
            /// `layout` (see [`Rule::cpu_step`]), the scalar state before it
            /// `scalar_state`.
            #[allow(clippy::too_many_arguments)]
            pub(crate) fn cpu_step(
                &self,
                step: u64,
                buffer_filled: bool,
                scalar_state: &[f64],
                layout: &Layout,
                params: &mut [f32],
                grads: &[f32],
                states: &mut [Vec<f32>],
                scales: GradScales,
            ) {
                let entry = self.step_entry(step, scalar_state);
                match self {
                    $(Config::$v(c) => {
                        let s = c.scalars(buffer_filled);
                        c.cpu_step(&s, entry, layout, params, grads, states, scales)
                    })*
                }
            }

            /// torch's `param_groups[0]` for this configuration (without
            /// `params`), with this crate's own options beside torch's.
            pub(crate) fn to_torch(&self) -> Map<String, Value> {
                match self {
                    $(Config::$v(c) => c.to_torch(),)*
                }
            }
        }
    };
}

registry! {
    /// Stochastic gradient descent, with optional (Nesterov) momentum.
    Sgd(Sgd),
    /// Adagrad.
    Adagrad(Adagrad),
    /// RMSprop.
    RmsProp(RmsProp),
    /// Adam (L2 weight decay).
    Adam(Adam),
    /// AdamW (decoupled weight decay).
    AdamW(AdamW),
    /// LAMB (layer-wise trust ratio).
    Lamb(Lamb),
    /// Adadelta.
    Adadelta(Adadelta),
    /// Rprop (resilient backpropagation).
    Rprop(Rprop),
    /// Lion (the sign of an interpolated momentum; lion-pytorch).
    Lion(Lion),
    /// AdEMAMix (Adam with a second, slow momentum; pytorch-optimizer).
    AdEMAMix(AdEMAMix),
    /// RAdam (rectified Adam).
    RAdam(RAdam),
    /// Adamax (Adam with the infinity norm).
    Adamax(Adamax),
    /// NAdam (Nesterov momentum in Adam, with momentum decay).
    NAdam(NAdam),
    /// ASGD (averaged stochastic gradient descent).
    Asgd(Asgd),
    /// Schedule-free SGD (schedulefree).
    SgdScheduleFree(SgdScheduleFree),
    /// Schedule-free AdamW (schedulefree).
    AdamWScheduleFree(AdamWScheduleFree),
    /// Adafactor (factored second moments of matrices).
    Adafactor(Adafactor),
    /// Muon (momentum orthogonalised by a Newton–Schulz iteration).
    Muon(Muon),
}

impl RuleKind {
    /// Parses a name as [`RuleKind::name`] writes it (case-insensitive).
    pub fn parse(s: &str) -> Option<RuleKind> {
        RuleKind::ALL
            .into_iter()
            .find(|r| r.name().eq_ignore_ascii_case(s))
    }
}

impl std::fmt::Display for RuleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Config {
    /// Bytes one step must read and write per parameter (f32 everywhere):
    /// parameter read + write, gradient read, each state tensor read + write.
    /// LAMB moves more (its trust ratio needs a second pass over θ, m and v:
    /// 40 bytes); this is the one-pass minimum, the same for every
    /// implementation, so GB/s compare.
    pub fn bytes_per_param(&self) -> usize {
        4 * (3 + 2 * self.state_names().len())
    }
}

mod checks;
mod cpu_loop;

pub(crate) use checks::{
    bias_correction, bool_override, check_closed_unit_interval, check_finite, check_non_negative,
    check_unit_interval, inverse_grad_scale, object, set_beta1, set_buffered_momentum,
};
pub(crate) use cpu_loop::{
    clamp, elementwise_step, for_each_element, lerp, maximum, multiversion, GradScales, CPU_CHUNK,
};
