//! The table of every rule's test configurations, in the manner of
//! PyTorch's `optim_db` (`torch/testing/_internal/common_optimizers.py`):
//! per rule, its configurations ([`RuleInfo::inputs`], torch's
//! `optim_inputs_func`), the configurations it must refuse
//! ([`RuleInfo::error_inputs`], `optim_error_inputs_func`) and what it
//! supports ([`RuleInfo::momentum`], [`RuleInfo::gpu_k`]).
//!
//! The GPU-vs-CPU, checkpoint, non-finite, behaviour and error tests iterate
//! this table, never a list of their own, so a rule added here is run by all
//! of them; tests/registry_coverage.rs fails while a registered rule
//! ([`RuleKind::ALL`]) is missing here, has an option no configuration sets
//! or a numeric hyperparameter no error input names,
//! or has no golden case.
//!
//! Which inputs a suite runs:
//! * tests/gpu_vs_cpu.rs: every input without clipping, its schedule
//!   applied (the clipped ones are compared in tests/lamb_clip.rs, with the
//!   bound clipping adds);
//! * tests/checkpoint.rs, tests/nonfinite.rs: every input without a
//!   schedule, with its clipping;
//! * tests/behaviour.rs: the [`RuleInfo::descent`] configurations; every
//!   configuration without weight decay (zero gradients; schedules and
//!   clipping left out); every [`plain`] one (the caller's buffers);
//! * tests/errors.rs: [`RuleInfo::error_inputs`]; every [`plain`]
//!   configuration (setters, mismatched gradients); every clipped one
//!   (invalid clipping);
//! * tests/lamb_clip.rs: LAMB's [`plain`] inputs over tile-sized tensors;
//!   every clipped input (with its own `max_norm`s), against the CPU and
//!   for clipping's semantics.

use wgpu_optim::checkpoint::Checkpoint;
use wgpu_optim::{
    AdEMAMix, Adadelta, Adagrad, Adam, AdamW, Adamax, Asgd, ClipGradNorm, Config, Lamb, Lion,
    NAdam, RAdam, RmsProp, Rprop, RuleKind, Sgd,
};
use wgpu_optim::{Adafactor, AdamWScheduleFree, Muon, MuonAdjustLr, SgdScheduleFree};

/// A hyperparameter change applied before a step.
#[derive(Clone, Copy, Debug)]
pub enum Change {
    /// `set_lr`.
    Lr(f64),
    /// `set_momentum` (SGD's and RMSprop's momentum, `betas[0]` of the rest).
    Momentum(f64),
}

/// One configuration of a rule, as torch's `OptimizerInput`.
#[derive(Clone, Debug)]
pub struct Input {
    /// What it is, for messages.
    pub desc: String,
    /// The rule and its hyperparameters.
    pub config: Config,
    /// (step index, change): applied before that step (0: before the first).
    pub schedule: Vec<(usize, Change)>,
    /// Global-norm clipping, on from the start.
    pub clip: Option<ClipGradNorm>,
}

/// A configuration alone.
pub fn input(desc: &str, config: impl Into<Config>) -> Input {
    Input {
        desc: desc.into(),
        config: config.into(),
        schedule: Vec::new(),
        clip: None,
    }
}

/// A configuration with changes between steps.
pub fn scheduled(desc: &str, config: impl Into<Config>, schedule: &[(usize, Change)]) -> Input {
    Input {
        schedule: schedule.to_vec(),
        ..input(desc, config)
    }
}

/// A configuration clipped to `max_norm`.
pub fn clipped(desc: &str, config: impl Into<Config>, max_norm: f64) -> Input {
    Input {
        clip: Some(ClipGradNorm::new(max_norm)),
        ..input(desc, config)
    }
}

/// What a refused configuration must be refused with.
#[derive(Clone, Debug)]
pub enum Expect {
    /// `Error::InvalidHyperparameter { name, value, .. }` (NaN matches NaN).
    Hyper(&'static str, f64),
    /// `Error::InvalidOptions(message)`, the message containing each of these.
    Options(&'static [&'static str]),
}

/// A configuration the constructors refuse, as torch's `ErrorOptimizerInput`.
#[derive(Clone, Debug)]
pub struct ErrorInput {
    /// What it is, for messages.
    pub desc: String,
    /// The invalid configuration.
    pub config: Config,
    /// The error.
    pub expect: Expect,
}

fn hyper(desc: String, config: impl Into<Config>, name: &'static str, value: f64) -> ErrorInput {
    ErrorInput {
        desc,
        config: config.into(),
        expect: Expect::Hyper(name, value),
    }
}

/// What `set_momentum` does for a rule.
#[derive(Clone, Copy, Debug)]
pub struct Momentum {
    /// The hyperparameter it sets, as errors name it.
    pub name: &'static str,
    /// Values it must refuse with `InvalidHyperparameter { name, .. }`.
    pub bad: &'static [f64],
    /// Whether only an optimizer built with a non-zero momentum has the
    /// buffer (SGD, RMSprop); without one, `set_momentum` is `NoMomentum`.
    pub needs_buffer: bool,
}

/// One row of the table.
pub struct RuleInfo {
    /// The rule.
    pub rule: RuleKind,
    /// Every option alone and with the others, options changed between
    /// steps, and clipping.
    pub inputs: Vec<Input>,
    /// Invalid hyperparameters and option combinations.
    pub error_inputs: Vec<ErrorInput>,
    /// Numeric options that no value can make invalid (none today); every
    /// other numeric option must be named by an error input.
    pub unchecked: &'static [&'static str],
    /// `set_momentum`; `None`: the rule has no momentum (`NoMomentum`).
    pub momentum: Option<Momentum>,
    /// (name, configuration on the quadratic, on Rosenbrock's function) of
    /// tests/behaviour.rs: learning rates suited to each problem.
    pub descent: Vec<(&'static str, Config, Config)>,
    /// `K` of the parameters and of the state tensors in the GPU-against-CPU
    /// bound `steps·K·ε·scale`, argued in tests/gpu_vs_cpu.rs (8 for an
    /// element-wise rule; LAMB's update and trust ratio need more).
    pub gpu_k: (f64, f64),
    /// The kernel's shape and its storage bindings (tests/webgpu_limits.rs).
    pub kernel: Kernel,
    /// Whether a run of steps can bring an element back exactly to where it
    /// started: the sign-based rules, whose steps do not depend on the
    /// gradient's size (Lion's `±lr`, Rprop's `±lr·1.2ᵃ·0.5ᵇ`). Tests that
    /// expect every element to have moved allow it only for these.
    pub exact_returns: bool,
}

/// How a rule's kernel is bound, as src/gpu lays it out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kernel {
    /// One element-wise kernel binding this many storage buffers:
    /// parameters, gradients, the state slots its shader declares (with or
    /// without the option that fills them), the step info and counters.
    ElementWise { storage_buffers: u64 },
    /// Three tile kernels (moments, per-tensor ratio, apply: two dispatches
    /// per chunk and one in all), binding eight storage buffers and 2052
    /// bytes of workgroup memory.
    Tiled,
}

impl Kernel {
    /// Storage buffers the kernel binds.
    pub fn storage_buffers(self) -> u64 {
        match self {
            Kernel::ElementWise { storage_buffers } => storage_buffers,
            Kernel::Tiled => 8,
        }
    }
}

/// The whole table, one row per rule.
pub fn table() -> Vec<RuleInfo> {
    vec![
        sgd(),
        adagrad(),
        rmsprop(),
        adam(),
        adamw(),
        lamb(),
        adadelta(),
        rprop(),
        lion(),
        ademamix(),
        radam(),
        adamax(),
        nadam(),
        asgd(),
        schedulefree_sgd(),
        schedulefree_adamw(),
    ]
}

/// The row of `rule`.
pub fn info(rule: RuleKind) -> RuleInfo {
    table()
        .into_iter()
        .find(|r| r.rule == rule)
        .unwrap_or_else(|| panic!("rule {rule} is not in tests/common/cases.rs"))
}

/// The rules of the table: every registered rule but the matrix rules
/// (Adafactor, Muon), which need shapes (`CpuOptimizer::with_shapes`,
/// `GpuOptimizer::with_shapes`), run over one parameter group, and are
/// tested by tests/matrix.rs, tests/matrix_gpu.rs, the golden cases and
/// [`matrix_configs`] instead.
pub fn table_rules() -> impl Iterator<Item = RuleKind> {
    RuleKind::ALL
        .into_iter()
        .filter(|k| !k.default_config().is_matrix_rule())
}

/// Configurations of a matrix rule that set each of its options.
pub fn matrix_configs(rule: RuleKind) -> Vec<Config> {
    match rule {
        RuleKind::Adafactor => vec![
            Adafactor::default().into(),
            Adafactor {
                lr: 0.02,
                beta2_decay: -0.5,
                eps: (Some(1e-20), 1e-4),
                d: 2.0,
                weight_decay: 0.01,
                maximize: true,
            }
            .into(),
        ],
        RuleKind::Muon => vec![
            Muon::default().into(),
            Muon {
                lr: 0.02,
                weight_decay: 0.0,
                momentum: 0.9,
                nesterov: false,
                ns_coefficients: (2.0, -1.5, 0.5),
                eps: 1e-6,
                ns_steps: 3,
                adjust_lr_fn: Some(MuonAdjustLr::MatchRmsAdamW),
            }
            .into(),
            Muon {
                adjust_lr_fn: Some(MuonAdjustLr::SpectralUnclamped),
                ..Muon::default()
            }
            .into(),
            Muon {
                adjust_lr_fn: Some(MuonAdjustLr::Original),
                ..Muon::default()
            }
            .into(),
        ],
        _ => Vec::new(),
    }
}

/// Every input of every rule, in table order.
pub fn inputs() -> Vec<Input> {
    table().into_iter().flat_map(|r| r.inputs).collect()
}

/// Every input without a schedule or clipping: a configuration alone.
pub fn plain() -> Vec<Input> {
    inputs()
        .into_iter()
        .filter(|i| i.schedule.is_empty() && i.clip.is_none())
        .collect()
}

/// Every input with clipping.
pub fn clipping() -> Vec<Input> {
    inputs().into_iter().filter(|i| i.clip.is_some()).collect()
}

/// Every input without a schedule (with or without clipping).
pub fn unscheduled() -> Vec<Input> {
    inputs()
        .into_iter()
        .filter(|i| i.schedule.is_empty())
        .collect()
}

/// The input of `rule` that sets the most options (the first of those
/// that tie), without clipping.
pub fn richest(rule: RuleKind) -> Input {
    let row = info(rule);
    let default = hyperparameters(&rule.default_config());
    let set = |c: &Config| {
        let h = hyperparameters(c);
        h.iter().filter(|(k, v)| default.get(*k) != Some(v)).count()
    };
    let mut best: Option<(usize, Input)> = None;
    for i in row.inputs.into_iter().filter(|i| i.clip.is_none()) {
        let n = set(&i.config);
        if best.as_ref().is_none_or(|(m, _)| n > *m) {
            best = Some((n, i));
        }
    }
    best.expect("every rule has inputs").1
}

/// One configuration of `rule` per set of state tensors it can have: of
/// the [`plain`] inputs with that state, the one setting the most options
/// (the first of those that tie). The tests that run every state an
/// optimizer can be in (tests/setter_sequences.rs) or every set of
/// bindings a kernel can have (tests/webgpu_limits.rs) run these.
pub fn variants(rule: RuleKind) -> Vec<Input> {
    let default = hyperparameters(&rule.default_config());
    let set = |c: &Config| {
        let h = hyperparameters(c);
        h.iter().filter(|(k, v)| default.get(*k) != Some(v)).count()
    };
    let mut best: Vec<(Vec<&'static str>, usize, Input)> = Vec::new();
    for i in info(rule).inputs {
        if !i.schedule.is_empty() || i.clip.is_some() {
            continue;
        }
        let (names, n) = (i.config.state_names(), set(&i.config));
        match best.iter_mut().find(|(s, _, _)| *s == names) {
            Some(b) if n > b.1 => *b = (names, n, i),
            Some(_) => {}
            None => best.push((names, n, i)),
        }
    }
    best.into_iter().map(|(_, _, i)| i).collect()
}

/// torch's keyword arguments that choose an implementation, not the update:
/// never options of a rule.
pub const TORCH_SWITCHES: &[&str] = &[
    "foreach",
    "capturable",
    "differentiable",
    "fused",
    "decoupled_weight_decay",
];

/// A configuration's hyperparameters as torch's keyword arguments (with this
/// crate's own options beside them), read from the `param_groups` a
/// checkpoint writes: the one mapping the library keeps, so that a new
/// rule's options are found without a list here. torch's
/// [`TORCH_SWITCHES`] are left out.
pub fn hyperparameters(config: &Config) -> serde_json::Map<String, serde_json::Value> {
    // A matrix rule (Muon) needs a 2-D shape.
    let ckpt = if config.is_matrix_rule() {
        wgpu_optim::CpuOptimizer::with_shapes(
            config.clone(),
            &[&[0.0]],
            &[wgpu_optim::Shape::matrix(1, 1)],
        )
        .map(|o| o.checkpoint())
    } else {
        Checkpoint::new(config.clone(), &[1])
    };
    let bytes = ckpt
        .and_then(|c| c.to_bytes())
        .unwrap_or_else(|e| panic!("{config:?}: {e}"));
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let groups = &meta.metadata().as_ref().expect("metadata")["param_groups"];
    let groups: serde_json::Value = serde_json::from_str(groups).unwrap();
    let mut group = groups[0].as_object().expect("one group").clone();
    group.remove("params");
    for k in TORCH_SWITCHES {
        group.remove(*k);
    }
    // Scalar state torch keeps in the group (schedule-free's k, lr_max,
    // weight_sum), schedule-free's mode and its logged lr: not options.
    for k in config.scalar_state_names() {
        group.remove(k);
    }
    for k in SCHEDULE_FREE_GROUP_KEYS {
        group.remove(*k);
    }
    group
}

/// The schedule-free package's group keys that are not options: its mode
/// (always train mode in a checkpoint) and the lr it logs.
pub const SCHEDULE_FREE_GROUP_KEYS: &[&str] = &["train_mode", "scheduled_lr"];

// ------------------------------------------------------------------ rows

fn sgd() -> RuleInfo {
    let base = Sgd {
        lr: 0.05,
        ..Sgd::default()
    };
    let m = Sgd {
        momentum: 0.9,
        ..base.clone()
    };
    use Change::{Lr, Momentum as Mom};
    let inputs = vec![
        input("sgd plain", base.clone()),
        input(
            "sgd weight_decay",
            Sgd {
                weight_decay: 0.1,
                ..base.clone()
            },
        ),
        input("sgd momentum", m.clone()),
        input(
            "sgd momentum dampening",
            Sgd {
                dampening: 0.3,
                ..m.clone()
            },
        ),
        input(
            "sgd nesterov",
            Sgd {
                nesterov: true,
                ..m.clone()
            },
        ),
        input(
            "sgd maximize",
            Sgd {
                maximize: true,
                ..base.clone()
            },
        ),
        input(
            "sgd momentum maximize",
            Sgd {
                maximize: true,
                ..m.clone()
            },
        ),
        input(
            "sgd nesterov weight_decay maximize",
            Sgd {
                nesterov: true,
                weight_decay: 0.01,
                maximize: true,
                ..m.clone()
            },
        ),
        input(
            "sgd momentum dampening weight_decay maximize",
            Sgd {
                momentum: 0.5,
                dampening: 0.5,
                weight_decay: 0.05,
                maximize: true,
                ..base.clone()
            },
        ),
        input(
            "sgd momentum dampening weight_decay",
            Sgd {
                dampening: 0.1,
                weight_decay: 0.01,
                ..m.clone()
            },
        ),
        input(
            "sgd momentum, heavy dampening",
            Sgd {
                dampening: 0.5,
                ..m.clone()
            },
        ),
        input(
            "sgd nesterov maximize",
            Sgd {
                nesterov: true,
                maximize: true,
                ..m.clone()
            },
        ),
        scheduled(
            "sgd momentum, lr and momentum changed",
            m.clone(),
            LR_AND_MOMENTUM,
        ),
        scheduled(
            "sgd nesterov dampening-free, lr and momentum changed",
            Sgd {
                nesterov: true,
                weight_decay: 0.01,
                ..m.clone()
            },
            LR_AND_MOMENTUM,
        ),
        scheduled(
            "sgd momentum dampening, lr and momentum changed",
            Sgd {
                dampening: 0.2,
                maximize: true,
                ..m.clone()
            },
            LR_AND_MOMENTUM,
        ),
        // Momentum 0 from step 10: plain SGD, the buffer left as it was;
        // from step 18 on the buffer carries on where it stopped.
        scheduled(
            "sgd momentum set to 0 and back",
            m.clone(),
            &[(10, Mom(0.0)), (15, Lr(0.2)), (18, Mom(0.7))],
        ),
        // Momentum 0 before the first step: the buffer is filled with the
        // gradient on its first use, at step 5 (PyTorch's `buf is None`).
        scheduled(
            "sgd nesterov, momentum 0 for the first steps",
            Sgd {
                nesterov: true,
                ..m.clone()
            },
            &[(0, Mom(0.0)), (5, Mom(0.9))],
        ),
        scheduled(
            "sgd plain, lr changed",
            base.clone(),
            &[(5, Lr(0.2)), (12, Lr(0.0)), (18, Lr(0.01))],
        ),
        clipped("sgd momentum, clipped", m.clone(), 1.0),
        clipped(
            "sgd nesterov, clipped",
            Sgd {
                nesterov: true,
                ..m
            },
            0.5,
        ),
    ];
    let mut error_inputs = bad_lr(|lr| Sgd {
        lr,
        ..Sgd::default()
    });
    for v in [-0.9, f64::NAN] {
        error_inputs.push(hyper(
            format!("sgd momentum = {v}"),
            Sgd {
                momentum: v,
                ..Sgd::default()
            },
            "momentum",
            v,
        ));
    }
    for v in [f64::NAN, f64::INFINITY] {
        error_inputs.push(hyper(
            format!("sgd dampening = {v}"),
            Sgd {
                momentum: 0.9,
                dampening: v,
                ..Sgd::default()
            },
            "dampening",
            v,
        ));
    }
    error_inputs.push(hyper(
        "sgd weight_decay < 0".into(),
        Sgd {
            weight_decay: -0.01,
            ..Sgd::default()
        },
        "weight_decay",
        -0.01,
    ));
    // Option combinations PyTorch refuses.
    error_inputs.push(ErrorInput {
        desc: "sgd nesterov without momentum".into(),
        config: Sgd {
            nesterov: true,
            ..Sgd::default()
        }
        .into(),
        expect: Expect::Options(&["nesterov", "momentum = 0"]),
    });
    error_inputs.push(ErrorInput {
        desc: "sgd nesterov with dampening".into(),
        config: Sgd {
            nesterov: true,
            momentum: 0.9,
            dampening: 0.1,
            ..Sgd::default()
        }
        .into(),
        expect: Expect::Options(&["nesterov", "dampening = 0.1"]),
    });
    let sgd = |lr, momentum, nesterov| {
        Config::from(Sgd {
            lr,
            momentum,
            nesterov,
            ..Sgd::default()
        })
    };
    RuleInfo {
        rule: RuleKind::Sgd,
        inputs,
        error_inputs,
        unchecked: &[],
        momentum: Some(Momentum {
            name: "momentum",
            bad: &[-0.5, f64::NAN, f64::INFINITY],
            needs_buffer: true,
        }),
        descent: vec![
            ("sgd", sgd(0.04, 0.0, false), sgd(5e-4, 0.0, false)),
            ("sgd momentum", sgd(0.01, 0.9, false), sgd(2e-4, 0.9, false)),
            ("sgd nesterov", sgd(0.01, 0.9, true), sgd(2e-4, 0.9, true)),
        ],
        gpu_k: (K, K),
        kernel: Kernel::ElementWise { storage_buffers: 5 },
        exact_returns: false,
    }
}

/// `K` of an element-wise rule: at most ~8 operations per stored value per
/// step may round differently on the GPU (tests/gpu_vs_cpu.rs).
pub const K: f64 = 8.0;

/// set_lr and set_momentum between steps.
const LR_AND_MOMENTUM: &[(usize, Change)] = &[
    (5, Change::Lr(0.02)),
    (9, Change::Momentum(0.5)),
    (14, Change::Lr(0.1)),
    (14, Change::Momentum(0.95)),
    (20, Change::Lr(0.005)),
];

/// set_lr and `beta1` (set_momentum) between steps, `beta1 = 0` too.
const LR_AND_BETA1: &[(usize, Change)] = &[
    (5, Change::Lr(0.002)),
    (9, Change::Momentum(0.5)),
    (14, Change::Lr(0.03)),
    (14, Change::Momentum(0.0)),
    (20, Change::Momentum(0.95)),
];

/// lr negative, NaN and +inf.
fn bad_lr<C: Into<Config>>(make: impl Fn(f64) -> C) -> Vec<ErrorInput> {
    [-0.1, f64::NAN, f64::INFINITY]
        .into_iter()
        .map(|lr| {
            let config: Config = make(lr).into();
            hyper(format!("{} lr = {lr}", config.kind()), config, "lr", lr)
        })
        .collect()
}

fn adagrad() -> RuleInfo {
    let base = Adagrad {
        lr: 0.05,
        ..Adagrad::default()
    };
    let inputs = vec![
        input("adagrad default", base.clone()),
        input(
            "adagrad lr_decay",
            Adagrad {
                lr_decay: 0.1,
                ..base.clone()
            },
        ),
        input(
            "adagrad weight_decay",
            Adagrad {
                weight_decay: 0.1,
                ..base.clone()
            },
        ),
        input(
            "adagrad initial_accumulator_value",
            Adagrad {
                initial_accumulator_value: 0.5,
                ..base.clone()
            },
        ),
        input(
            "adagrad eps_inside_sqrt",
            Adagrad {
                eps: 1e-3,
                eps_inside_sqrt: true,
                ..base.clone()
            },
        ),
        input(
            "adagrad large eps outside sqrt",
            Adagrad {
                eps: 1e-3,
                ..base.clone()
            },
        ),
        input(
            "adagrad maximize",
            Adagrad {
                maximize: true,
                ..base.clone()
            },
        ),
        input(
            "adagrad all options",
            Adagrad {
                lr_decay: 0.05,
                weight_decay: 0.01,
                initial_accumulator_value: 0.1,
                eps: 1e-3,
                eps_inside_sqrt: true,
                maximize: true,
                ..base.clone()
            },
        ),
        input(
            "adagrad small lr_decay",
            Adagrad {
                lr_decay: 0.05,
                ..base.clone()
            },
        ),
        input(
            "adagrad lr_decay initial_accumulator_value",
            Adagrad {
                lr_decay: 0.01,
                initial_accumulator_value: 0.1,
                ..base.clone()
            },
        ),
        input(
            "adagrad all options but weight_decay",
            Adagrad {
                lr_decay: 0.1,
                initial_accumulator_value: 0.5,
                eps_inside_sqrt: true,
                maximize: true,
                ..base.clone()
            },
        ),
        scheduled(
            "adagrad lr_decay, lr changed",
            Adagrad {
                lr_decay: 0.1,
                ..base.clone()
            },
            &[(5, Change::Lr(0.2)), (12, Change::Lr(0.01))],
        ),
        clipped("adagrad, clipped", base, 1.0),
    ];
    let d = Adagrad::default;
    let mut error_inputs = bad_lr(|lr| Adagrad { lr, ..d() });
    for v in [-1e-8, f64::NAN] {
        error_inputs.push(hyper(
            format!("adagrad eps = {v}"),
            Adagrad { eps: v, ..d() },
            "eps",
            v,
        ));
    }
    error_inputs.extend([
        hyper(
            "adagrad weight_decay < 0".into(),
            Adagrad {
                weight_decay: -0.01,
                ..d()
            },
            "weight_decay",
            -0.01,
        ),
        hyper(
            "adagrad lr_decay < 0".into(),
            Adagrad {
                lr_decay: -0.25,
                ..d()
            },
            "lr_decay",
            -0.25,
        ),
        hyper(
            "adagrad initial_accumulator_value < 0".into(),
            Adagrad {
                initial_accumulator_value: -0.125,
                ..d()
            },
            "initial_accumulator_value",
            -0.125,
        ),
    ]);
    let on_both = Config::from(Adagrad { lr: 0.5, ..d() });
    RuleInfo {
        rule: RuleKind::Adagrad,
        inputs,
        error_inputs,
        unchecked: &[],
        momentum: None,
        descent: vec![("adagrad", on_both.clone(), on_both)],
        gpu_k: (K, K),
        kernel: Kernel::ElementWise { storage_buffers: 5 },
        exact_returns: false,
    }
}

fn rmsprop() -> RuleInfo {
    let base = RmsProp {
        lr: 0.01,
        ..RmsProp::default()
    };
    let m = RmsProp {
        momentum: 0.9,
        ..base.clone()
    };
    let cm = RmsProp {
        centered: true,
        ..m.clone()
    };
    let inputs = vec![
        input("rmsprop default", base.clone()),
        input("rmsprop momentum", m.clone()),
        input(
            "rmsprop centered",
            RmsProp {
                centered: true,
                ..base.clone()
            },
        ),
        input("rmsprop centered momentum", cm.clone()),
        input(
            "rmsprop weight_decay",
            RmsProp {
                weight_decay: 0.1,
                ..base.clone()
            },
        ),
        input(
            "rmsprop eps_inside_sqrt",
            RmsProp {
                eps: 1e-3,
                eps_inside_sqrt: true,
                ..base.clone()
            },
        ),
        input(
            "rmsprop maximize",
            RmsProp {
                maximize: true,
                ..base.clone()
            },
        ),
        input(
            "rmsprop all options",
            RmsProp {
                alpha: 0.9,
                centered: true,
                momentum: 0.5,
                weight_decay: 0.01,
                eps: 1e-4,
                eps_inside_sqrt: true,
                maximize: true,
                ..base.clone()
            },
        ),
        input(
            "rmsprop centered, small momentum",
            RmsProp {
                momentum: 0.3,
                ..cm.clone()
            },
        ),
        input(
            "rmsprop centered momentum weight_decay",
            RmsProp {
                momentum: 0.5,
                weight_decay: 0.01,
                ..cm.clone()
            },
        ),
        input(
            "rmsprop centered momentum eps_inside_sqrt maximize",
            RmsProp {
                eps_inside_sqrt: true,
                maximize: true,
                ..cm.clone()
            },
        ),
        scheduled(
            "rmsprop momentum, lr and momentum changed",
            m.clone(),
            LR_AND_MOMENTUM,
        ),
        scheduled(
            "rmsprop centered momentum, lr and momentum changed",
            cm.clone(),
            LR_AND_MOMENTUM,
        ),
        // Momentum 0 with the buffer still there: plain RMSprop from step
        // 10, the buffer in use again from step 18.
        scheduled(
            "rmsprop momentum set to 0 and back",
            m,
            &[(10, Change::Momentum(0.0)), (18, Change::Momentum(0.5))],
        ),
        scheduled(
            "rmsprop centered momentum set to 0 and back",
            cm.clone(),
            &[(10, Change::Momentum(0.0)), (18, Change::Momentum(0.5))],
        ),
        clipped("rmsprop, clipped", base, 1.0),
        clipped(
            "rmsprop centered momentum, clipped",
            RmsProp {
                momentum: 0.5,
                ..cm
            },
            1.0,
        ),
    ];
    let d = RmsProp::default;
    let mut error_inputs = bad_lr(|lr| RmsProp { lr, ..d() });
    for v in [-1e-8, f64::NAN] {
        error_inputs.push(hyper(
            format!("rmsprop eps = {v}"),
            RmsProp { eps: v, ..d() },
            "eps",
            v,
        ));
    }
    for v in [-0.9, f64::NAN] {
        error_inputs.push(hyper(
            format!("rmsprop momentum = {v}"),
            RmsProp { momentum: v, ..d() },
            "momentum",
            v,
        ));
    }
    error_inputs.extend([
        hyper(
            "rmsprop weight_decay < 0".into(),
            RmsProp {
                weight_decay: -0.01,
                ..d()
            },
            "weight_decay",
            -0.01,
        ),
        hyper(
            "rmsprop alpha < 0".into(),
            RmsProp { alpha: -0.5, ..d() },
            "alpha",
            -0.5,
        ),
    ]);
    RuleInfo {
        rule: RuleKind::RmsProp,
        inputs,
        error_inputs,
        unchecked: &[],
        momentum: Some(Momentum {
            name: "momentum",
            bad: &[-0.5, f64::NAN, f64::INFINITY],
            needs_buffer: true,
        }),
        descent: vec![(
            "rmsprop",
            RmsProp { lr: 0.01, ..d() }.into(),
            RmsProp { lr: 0.003, ..d() }.into(),
        )],
        gpu_k: (K, K),
        kernel: Kernel::ElementWise { storage_buffers: 7 },
        exact_returns: false,
    }
}

/// What `set_momentum` (`betas[0]`) refuses in the Adam family and LAMB.
const BETA1: Momentum = Momentum {
    name: "betas[0]",
    bad: &[1.0, -0.1, f64::NAN, 2.0],
    needs_buffer: false,
};

fn adam() -> RuleInfo {
    let base = Adam {
        lr: 0.01,
        ..Adam::default()
    };
    let inputs = vec![
        input("adam default", base.clone()),
        input(
            "adam amsgrad",
            Adam {
                amsgrad: true,
                ..base.clone()
            },
        ),
        input(
            "adam weight_decay",
            Adam {
                weight_decay: 0.1,
                ..base.clone()
            },
        ),
        input(
            "adam maximize",
            Adam {
                maximize: true,
                ..base.clone()
            },
        ),
        input(
            "adam eps_inside_sqrt",
            Adam {
                eps: 1e-6,
                eps_inside_sqrt: true,
                ..base.clone()
            },
        ),
        input(
            "adam all options",
            Adam {
                betas: (0.8, 0.99),
                eps: 1e-6,
                weight_decay: 0.05,
                amsgrad: true,
                maximize: true,
                eps_inside_sqrt: true,
                ..base.clone()
            },
        ),
        input(
            "adam betas",
            Adam {
                betas: (0.8, 0.95),
                ..base.clone()
            },
        ),
        input(
            "adam small weight_decay",
            Adam {
                weight_decay: 0.01,
                ..base.clone()
            },
        ),
        input(
            "adam amsgrad weight_decay",
            Adam {
                amsgrad: true,
                weight_decay: 0.01,
                ..base.clone()
            },
        ),
        input(
            "adam amsgrad eps_inside_sqrt maximize",
            Adam {
                amsgrad: true,
                eps_inside_sqrt: true,
                maximize: true,
                ..base.clone()
            },
        ),
        scheduled(
            "adam, lr and beta1 changed (beta1 = 0 too)",
            base.clone(),
            LR_AND_BETA1,
        ),
        scheduled(
            "adam amsgrad, lr and beta1 changed",
            Adam {
                amsgrad: true,
                weight_decay: 0.01,
                ..base.clone()
            },
            LR_AND_BETA1,
        ),
        clipped(
            "adam amsgrad, clipped",
            Adam {
                amsgrad: true,
                ..base
            },
            1.0,
        ),
    ];
    let d = Adam::default;
    let mut error_inputs = bad_lr(|lr| Adam { lr, ..d() });
    error_inputs.extend(bad_betas(|betas| Adam { betas, ..d() }, true));
    for v in [-1e-8, f64::NAN] {
        error_inputs.push(hyper(
            format!("adam eps = {v}"),
            Adam { eps: v, ..d() },
            "eps",
            v,
        ));
    }
    error_inputs.push(hyper(
        "adam weight_decay < 0".into(),
        Adam {
            weight_decay: -0.01,
            ..d()
        },
        "weight_decay",
        -0.01,
    ));
    RuleInfo {
        rule: RuleKind::Adam,
        inputs,
        error_inputs,
        unchecked: &[],
        momentum: Some(BETA1),
        descent: vec![(
            "adam",
            Adam { lr: 0.05, ..d() }.into(),
            Adam { lr: 0.02, ..d() }.into(),
        )],
        gpu_k: (K, K),
        kernel: Kernel::ElementWise { storage_buffers: 7 },
        exact_returns: false,
    }
}

/// Both betas outside [0, 1): 1, −0.1, NaN, +inf (and 1.5 where `wide`).
fn bad_betas<C: Into<Config>>(make: impl Fn((f64, f64)) -> C, wide: bool) -> Vec<ErrorInput> {
    let mut values = vec![1.0, -0.1, f64::NAN, f64::INFINITY];
    if wide {
        values.push(1.5);
    }
    let mut out = Vec::new();
    for v in values {
        let b0: Config = make((v, 0.999)).into();
        out.push(hyper(
            format!("{} betas[0] = {v}", b0.kind()),
            b0,
            "betas[0]",
            v,
        ));
        let b1: Config = make((0.9, v)).into();
        out.push(hyper(
            format!("{} betas[1] = {v}", b1.kind()),
            b1,
            "betas[1]",
            v,
        ));
    }
    out
}

fn adamw() -> RuleInfo {
    let base = AdamW {
        lr: 0.01,
        ..AdamW::default()
    };
    let inputs = vec![
        input("adamw default", base.clone()),
        input(
            "adamw no weight_decay",
            AdamW {
                weight_decay: 0.0,
                ..base.clone()
            },
        ),
        input(
            "adamw amsgrad",
            AdamW {
                amsgrad: true,
                ..base.clone()
            },
        ),
        input(
            "adamw large weight_decay",
            AdamW {
                weight_decay: 0.5,
                ..base.clone()
            },
        ),
        input(
            "adamw maximize",
            AdamW {
                maximize: true,
                ..base.clone()
            },
        ),
        input(
            "adamw eps_inside_sqrt",
            AdamW {
                eps: 1e-6,
                eps_inside_sqrt: true,
                ..base.clone()
            },
        ),
        input(
            "adamw all options",
            AdamW {
                betas: (0.8, 0.99),
                eps: 1e-6,
                weight_decay: 0.1,
                amsgrad: true,
                maximize: true,
                eps_inside_sqrt: true,
                ..base.clone()
            },
        ),
        input(
            "adamw amsgrad maximize, no weight_decay",
            AdamW {
                weight_decay: 0.0,
                amsgrad: true,
                maximize: true,
                ..base.clone()
            },
        ),
        scheduled(
            "adamw, lr and beta1 changed (beta1 = 0 too)",
            base.clone(),
            LR_AND_BETA1,
        ),
        scheduled(
            "adamw amsgrad maximize, lr and beta1 changed",
            AdamW {
                amsgrad: true,
                maximize: true,
                ..base.clone()
            },
            LR_AND_BETA1,
        ),
        clipped("adamw, clipped", base, 0.75),
    ];
    let d = AdamW::default;
    let mut error_inputs = bad_lr(|lr| AdamW { lr, ..d() });
    error_inputs.extend(bad_betas(|betas| AdamW { betas, ..d() }, true));
    for v in [-1e-8, f64::NAN] {
        error_inputs.push(hyper(
            format!("adamw eps = {v}"),
            AdamW { eps: v, ..d() },
            "eps",
            v,
        ));
    }
    for v in [-0.01, f64::INFINITY] {
        error_inputs.push(hyper(
            format!("adamw weight_decay = {v}"),
            AdamW {
                weight_decay: v,
                ..d()
            },
            "weight_decay",
            v,
        ));
    }
    RuleInfo {
        rule: RuleKind::AdamW,
        inputs,
        error_inputs,
        unchecked: &[],
        momentum: Some(BETA1),
        descent: vec![(
            "adamw",
            AdamW { lr: 0.05, ..d() }.into(),
            AdamW { lr: 0.02, ..d() }.into(),
        )],
        gpu_k: (K, K),
        kernel: Kernel::ElementWise { storage_buffers: 7 },
        exact_returns: false,
    }
}

/// LAMB's `K`: its update `u = m̂/(sqrt(v̂) + eps) + wd·θ` has three
/// divisions, a square root and a possible FMA (14 instead of 8); its trust
/// ratio `‖θ‖/‖u‖` from f32 tree sums on the GPU and f64 sums on the CPU
/// adds at most 44.5 to the parameters' (derived in tests/lamb_clip.rs for
/// tiles of 4096 elements). The moments do not depend on the ratio.
pub const K_LAMB: (f64, f64) = (14.0 + 44.5, 14.0);

fn lamb() -> RuleInfo {
    let d = Lamb::default;
    let base = Lamb {
        lr: 0.01,
        ..Lamb::default()
    };
    let inputs = vec![
        input("lamb default", base.clone()),
        input(
            "lamb weight_decay 0",
            Lamb {
                weight_decay: 0.0,
                ..base.clone()
            },
        ),
        input(
            "lamb trust_ratio_clamp",
            Lamb {
                trust_ratio_clamp: Some((0.8, 1.2)),
                ..base.clone()
            },
        ),
        // Bounds that bind for some tensors and not others (the initial
        // magnitudes of tests/lamb_clip.rs).
        input(
            "lamb trust_ratio_clamp (0.5, 2)",
            Lamb {
                trust_ratio_clamp: Some((0.5, 2.0)),
                ..base.clone()
            },
        ),
        input(
            "lamb unit_ratio_without_decay",
            Lamb {
                weight_decay: 0.0,
                unit_ratio_without_decay: true,
                ..base.clone()
            },
        ),
        input(
            "lamb unit_ratio_without_decay, weight_decay 0.1",
            Lamb {
                weight_decay: 0.1,
                unit_ratio_without_decay: true,
                ..base.clone()
            },
        ),
        input(
            "lamb eps_inside_sqrt",
            Lamb {
                eps: 1e-4,
                eps_inside_sqrt: true,
                ..base.clone()
            },
        ),
        input(
            "lamb maximize",
            Lamb {
                maximize: true,
                ..base.clone()
            },
        ),
        input(
            "lamb maximize, betas, clamp",
            Lamb {
                maximize: true,
                betas: (0.8, 0.99),
                trust_ratio_clamp: Some((0.0, 10.0)),
                ..base.clone()
            },
        ),
        scheduled(
            "lamb all options, lr and beta1 changed",
            Lamb {
                betas: (0.8, 0.99),
                weight_decay: 0.1,
                trust_ratio_clamp: Some((0.5, 2.0)),
                eps_inside_sqrt: true,
                maximize: true,
                ..base.clone()
            },
            &[
                (5, Change::Lr(0.002)),
                (9, Change::Momentum(0.5)),
                (14, Change::Lr(0.03)),
                (20, Change::Momentum(0.95)),
            ],
        ),
        clipped("lamb, clipped", base.clone(), 0.7),
        clipped(
            "lamb clamp, clipped",
            Lamb {
                trust_ratio_clamp: Some((0.1, 5.0)),
                ..base
            },
            1.0,
        ),
    ];
    RuleInfo {
        rule: RuleKind::Lamb,
        inputs,
        error_inputs: lamb_error_inputs(),
        unchecked: &[],
        momentum: Some(BETA1),
        descent: vec![(
            "lamb",
            Lamb { lr: 0.05, ..d() }.into(),
            Lamb { lr: 0.005, ..d() }.into(),
        )],
        gpu_k: K_LAMB,
        kernel: Kernel::Tiled,
        exact_returns: false,
    }
}

/// lr, betas, eps, weight_decay, and the trust ratio clamp (each bound
/// finite and >= 0, min <= max).
fn lamb_error_inputs() -> Vec<ErrorInput> {
    let d = Lamb::default;
    let mut out = bad_lr(|lr| Lamb { lr, ..d() });
    out.extend(bad_betas(|betas| Lamb { betas, ..d() }, false));
    for v in [-1e-8, f64::NAN] {
        out.push(hyper(
            format!("lamb eps = {v}"),
            Lamb { eps: v, ..d() },
            "eps",
            v,
        ));
    }
    for v in [-0.01, f64::INFINITY] {
        out.push(hyper(
            format!("lamb weight_decay = {v}"),
            Lamb {
                weight_decay: v,
                ..d()
            },
            "weight_decay",
            v,
        ));
    }
    let clamp = |lo: f64, hi: f64| Lamb {
        trust_ratio_clamp: Some((lo, hi)),
        ..d()
    };
    let min = "trust_ratio_clamp.min";
    let max = "trust_ratio_clamp.max";
    out.extend([
        hyper("lamb clamp min < 0".into(), clamp(-0.5, 1.0), min, -0.5),
        hyper("lamb clamp both < 0".into(), clamp(-2.0, -1.0), min, -2.0),
        hyper(
            "lamb clamp min NaN".into(),
            clamp(f64::NAN, 1.0),
            min,
            f64::NAN,
        ),
        hyper(
            "lamb clamp max NaN".into(),
            clamp(0.5, f64::NAN),
            max,
            f64::NAN,
        ),
        hyper(
            "lamb clamp max inf".into(),
            clamp(0.0, f64::INFINITY),
            max,
            f64::INFINITY,
        ),
    ]);
    out.push(ErrorInput {
        desc: "lamb clamp min > max".into(),
        config: clamp(2.0, 1.0).into(),
        expect: Expect::Options(&["trust_ratio_clamp", "min <= max", "(2, 1)"]),
    });
    out
}

fn adadelta() -> RuleInfo {
    let base = Adadelta::default();
    let inputs = vec![
        input("adadelta default", base.clone()),
        input(
            "adadelta rho",
            Adadelta {
                rho: 0.5,
                ..base.clone()
            },
        ),
        // The bounds torch allows: rho = 0 keeps only this step's squares,
        // rho = 1 never changes either average (plain SGD with step lr).
        input(
            "adadelta rho 0",
            Adadelta {
                rho: 0.0,
                ..base.clone()
            },
        ),
        input(
            "adadelta rho 1",
            Adadelta {
                rho: 1.0,
                lr: 0.01,
                ..base.clone()
            },
        ),
        input(
            "adadelta eps",
            Adadelta {
                eps: 1e-3,
                ..base.clone()
            },
        ),
        input(
            "adadelta weight_decay",
            Adadelta {
                weight_decay: 0.1,
                ..base.clone()
            },
        ),
        input(
            "adadelta maximize",
            Adadelta {
                maximize: true,
                ..base.clone()
            },
        ),
        input(
            "adadelta all options",
            Adadelta {
                lr: 0.5,
                rho: 0.95,
                eps: 1e-4,
                weight_decay: 0.01,
                maximize: true,
            },
        ),
        scheduled(
            "adadelta, lr changed",
            base.clone(),
            &[
                (0, Change::Lr(2.0)),
                (5, Change::Lr(0.5)),
                (12, Change::Lr(0.0)),
                (18, Change::Lr(1.0)),
            ],
        ),
        clipped("adadelta, clipped", base, 1.0),
    ];
    let d = Adadelta::default;
    let mut error_inputs = bad_lr(|lr| Adadelta { lr, ..d() });
    for v in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
        error_inputs.push(hyper(
            format!("adadelta rho = {v}"),
            Adadelta { rho: v, ..d() },
            "rho",
            v,
        ));
    }
    for v in [-1e-8, f64::NAN] {
        error_inputs.push(hyper(
            format!("adadelta eps = {v}"),
            Adadelta { eps: v, ..d() },
            "eps",
            v,
        ));
    }
    for v in [-0.01, f64::INFINITY] {
        error_inputs.push(hyper(
            format!("adadelta weight_decay = {v}"),
            Adadelta {
                weight_decay: v,
                ..d()
            },
            "weight_decay",
            v,
        ));
    }
    RuleInfo {
        rule: RuleKind::Adadelta,
        inputs,
        error_inputs,
        unchecked: &[],
        momentum: None,
        // Adadelta's steps start near lr·sqrt(eps/(1 − rho)) ≈ 3e-3·lr and
        // grow as acc_delta fills: lr 5 reaches the quadratic's floor in
        // 300 steps, torch's lr 1 goes down Rosenbrock's valley.
        descent: vec![("adadelta", Adadelta { lr: 5.0, ..d() }.into(), d().into())],
        gpu_k: (K, K),
        kernel: Kernel::ElementWise { storage_buffers: 6 },
        exact_returns: false,
    }
}

fn rprop() -> RuleInfo {
    let base = Rprop::default();
    let inputs = vec![
        input("rprop default", base.clone()),
        input(
            "rprop etas",
            Rprop {
                etas: (0.3, 1.5),
                ..base.clone()
            },
        ),
        input(
            "rprop step_sizes",
            Rprop {
                step_sizes: (1e-4, 0.05),
                ..base.clone()
            },
        ),
        // Bounds that bind on most steps, from below and from above.
        input(
            "rprop narrow step_sizes",
            Rprop {
                step_sizes: (0.008, 0.015),
                ..base.clone()
            },
        ),
        // The first step's size is lr clamped to the bounds.
        input(
            "rprop lr below step_sizes min",
            Rprop {
                lr: 1e-7,
                ..base.clone()
            },
        ),
        // η₋ rounds to 0 in f32: torch then turns the factor into 1 (and
        // zeroes no gradient), on the GPU as on the CPU.
        input(
            "rprop etas[0] below f32",
            Rprop {
                etas: (1e-50, 1.2),
                ..base.clone()
            },
        ),
        input(
            "rprop maximize",
            Rprop {
                maximize: true,
                ..base.clone()
            },
        ),
        input(
            "rprop all options",
            Rprop {
                lr: 0.05,
                etas: (0.4, 1.3),
                step_sizes: (1e-5, 0.5),
                maximize: true,
            },
        ),
        // Only the lr in force at the first step matters (the initial step
        // sizes); the later changes must change nothing, on both backends.
        scheduled(
            "rprop, lr changed before the first step and after",
            base.clone(),
            &[
                (0, Change::Lr(0.05)),
                (5, Change::Lr(0.2)),
                (12, Change::Lr(0.0)),
            ],
        ),
        clipped("rprop, clipped", base, 1.0),
    ];
    let d = Rprop::default;
    let etas = |minus, plus| Rprop {
        etas: (minus, plus),
        ..d()
    };
    let mut error_inputs = bad_lr(|lr| Rprop { lr, ..d() });
    for v in [0.0, 1.0, -0.5, f64::NAN] {
        error_inputs.push(hyper(
            format!("rprop etas[0] = {v}"),
            etas(v, 1.2),
            "etas[0]",
            v,
        ));
    }
    for v in [1.0, 0.5, f64::NAN, f64::INFINITY] {
        error_inputs.push(hyper(
            format!("rprop etas[1] = {v}"),
            etas(0.5, v),
            "etas[1]",
            v,
        ));
    }
    let step_sizes = |lo, hi| Rprop {
        step_sizes: (lo, hi),
        ..d()
    };
    for v in [-1e-6, f64::NAN] {
        error_inputs.push(hyper(
            format!("rprop step_sizes[0] = {v}"),
            step_sizes(v, 50.0),
            "step_sizes[0]",
            v,
        ));
    }
    for v in [-1.0, f64::INFINITY] {
        error_inputs.push(hyper(
            format!("rprop step_sizes[1] = {v}"),
            step_sizes(1e-6, v),
            "step_sizes[1]",
            v,
        ));
    }
    error_inputs.push(ErrorInput {
        desc: "rprop step_sizes min > max".into(),
        config: step_sizes(1.0, 0.5).into(),
        expect: Expect::Options(&["step_sizes", "min <= max", "(1, 0.5)"]),
    });
    RuleInfo {
        rule: RuleKind::Rprop,
        inputs,
        error_inputs,
        unchecked: &[],
        momentum: None,
        descent: vec![("rprop", d().into(), d().into())],
        // Rprop's arithmetic is a product, a sign and a clamp per step,
        // each exact or correctly rounded on both: the GPU lands on the
        // CPU's bits, well inside the element-wise bound.
        gpu_k: (K, K),
        kernel: Kernel::ElementWise { storage_buffers: 6 },
        exact_returns: true,
    }
}

fn lion() -> RuleInfo {
    let base = Lion {
        lr: 0.01,
        ..Lion::default()
    };
    let inputs = vec![
        input("lion default", base.clone()),
        input(
            "lion weight_decay",
            Lion {
                weight_decay: 0.1,
                ..base.clone()
            },
        ),
        // lion-pytorch does not check the sign of the decay: θ grows.
        input(
            "lion weight_decay < 0",
            Lion {
                weight_decay: -0.5,
                ..base.clone()
            },
        ),
        input(
            "lion betas",
            Lion {
                betas: (0.8, 0.95),
                ..base.clone()
            },
        ),
        // β1 = 0: the sign of the gradient alone (signSGD); β2 = 1: the
        // momentum stays 0. (β1 = 1 is set by a schedule below.)
        input(
            "lion betas at the bounds (0, 1)",
            Lion {
                betas: (0.0, 1.0),
                ..base.clone()
            },
        ),
        input(
            "lion maximize",
            Lion {
                maximize: true,
                ..base.clone()
            },
        ),
        input(
            "lion all options",
            Lion {
                betas: (0.95, 0.98),
                weight_decay: 0.1,
                maximize: true,
                ..base.clone()
            },
        ),
        scheduled(
            "lion, lr and beta1 changed (beta1 = 0 too)",
            base.clone(),
            LR_AND_BETA1,
        ),
        scheduled(
            "lion weight_decay maximize, lr and beta1 changed (beta1 = 1 too)",
            Lion {
                weight_decay: 0.1,
                maximize: true,
                ..base.clone()
            },
            &[
                (5, Change::Lr(0.002)),
                (9, Change::Momentum(1.0)),
                (14, Change::Lr(0.03)),
                (20, Change::Momentum(0.5)),
            ],
        ),
        clipped(
            "lion weight_decay, clipped",
            Lion {
                weight_decay: 0.1,
                ..base
            },
            1.0,
        ),
    ];
    let d = Lion::default;
    let mut error_inputs = bad_lr(|lr| Lion { lr, ..d() });
    // Both betas in [0, 1]: 1 is allowed.
    for v in [1.5, -0.1, f64::NAN, f64::INFINITY] {
        error_inputs.push(hyper(
            format!("lion betas[0] = {v}"),
            Lion {
                betas: (v, 0.99),
                ..d()
            },
            "betas[0]",
            v,
        ));
        error_inputs.push(hyper(
            format!("lion betas[1] = {v}"),
            Lion {
                betas: (0.9, v),
                ..d()
            },
            "betas[1]",
            v,
        ));
    }
    // lion-pytorch takes any weight decay; only a non-finite one is refused.
    for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        error_inputs.push(hyper(
            format!("lion weight_decay = {v}"),
            Lion {
                weight_decay: v,
                ..d()
            },
            "weight_decay",
            v,
        ));
    }
    RuleInfo {
        rule: RuleKind::Lion,
        inputs,
        error_inputs,
        unchecked: &[],
        momentum: Some(Momentum {
            name: "betas[0]",
            bad: &[1.5, -0.1, f64::NAN, f64::INFINITY],
            needs_buffer: false,
        }),
        descent: vec![(
            "lion",
            Lion { lr: 0.05, ..d() }.into(),
            Lion { lr: 0.005, ..d() }.into(),
        )],
        gpu_k: (K, K),
        kernel: Kernel::ElementWise { storage_buffers: 5 },
        exact_returns: true,
    }
}

fn ademamix() -> RuleInfo {
    let base = AdEMAMix {
        lr: 0.01,
        ..AdEMAMix::default()
    };
    let warmup = AdEMAMix {
        t_alpha_beta3: Some(10.0),
        ..base.clone()
    };
    let inputs = vec![
        input("ademamix default", base.clone()),
        input(
            "ademamix weight_decay (L2)",
            AdEMAMix {
                weight_decay: 0.1,
                ..base.clone()
            },
        ),
        input(
            "ademamix weight_decouple",
            AdEMAMix {
                weight_decay: 0.1,
                weight_decouple: true,
                ..base.clone()
            },
        ),
        input(
            "ademamix weight_decouple fixed_decay",
            AdEMAMix {
                weight_decay: 0.01,
                weight_decouple: true,
                fixed_decay: true,
                ..base.clone()
            },
        ),
        // fixed_decay only changes the decoupled decay: here it is L2.
        input(
            "ademamix fixed_decay without weight_decouple",
            AdEMAMix {
                weight_decay: 0.01,
                fixed_decay: true,
                ..base.clone()
            },
        ),
        input(
            "ademamix alpha",
            AdEMAMix {
                alpha: 2.0,
                ..base.clone()
            },
        ),
        // The warmup ends at step 10 of the tests' 25.
        input("ademamix t_alpha_beta3", warmup.clone()),
        input(
            "ademamix t_alpha_beta3 past the run",
            AdEMAMix {
                t_alpha_beta3: Some(100.0),
                ..base.clone()
            },
        ),
        input(
            "ademamix betas",
            AdEMAMix {
                betas: (0.8, 0.99, 0.999),
                ..base.clone()
            },
        ),
        // β3 = 1: the slow momentum stays 0 (the package allows it).
        input(
            "ademamix beta3 = 1, warmup",
            AdEMAMix {
                betas: (0.9, 0.999, 1.0),
                ..warmup.clone()
            },
        ),
        // β1 = 0 and β3 = 0 in the warmup: the limits of the package's
        // formula, which takes their logarithms.
        input(
            "ademamix beta1 = 0, warmup",
            AdEMAMix {
                betas: (0.0, 0.999, 0.9999),
                ..warmup.clone()
            },
        ),
        input(
            "ademamix beta3 = 0, warmup",
            AdEMAMix {
                betas: (0.9, 0.999, 0.0),
                ..warmup.clone()
            },
        ),
        input(
            "ademamix eps",
            AdEMAMix {
                eps: 1e-4,
                ..base.clone()
            },
        ),
        input(
            "ademamix maximize",
            AdEMAMix {
                maximize: true,
                ..base.clone()
            },
        ),
        input(
            "ademamix all options",
            AdEMAMix {
                betas: (0.8, 0.99, 0.999),
                weight_decay: 0.05,
                weight_decouple: true,
                fixed_decay: true,
                alpha: 3.0,
                eps: 1e-6,
                maximize: true,
                ..warmup.clone()
            },
        ),
        scheduled(
            "ademamix, lr and beta1 changed (beta1 = 0 too)",
            base.clone(),
            LR_AND_BETA1,
        ),
        scheduled(
            "ademamix warmup weight_decay, lr and beta1 changed (beta1 = 0 too)",
            AdEMAMix {
                weight_decay: 0.01,
                ..warmup.clone()
            },
            LR_AND_BETA1,
        ),
        clipped("ademamix warmup, clipped", warmup, 1.0),
    ];
    let d = AdEMAMix::default;
    let mut error_inputs = bad_lr(|lr| AdEMAMix { lr, ..d() });
    for v in [1.0, -0.1, f64::NAN, f64::INFINITY] {
        error_inputs.push(hyper(
            format!("ademamix betas[0] = {v}"),
            AdEMAMix {
                betas: (v, 0.999, 0.9999),
                ..d()
            },
            "betas[0]",
            v,
        ));
        error_inputs.push(hyper(
            format!("ademamix betas[1] = {v}"),
            AdEMAMix {
                betas: (0.9, v, 0.9999),
                ..d()
            },
            "betas[1]",
            v,
        ));
    }
    // β3 may be 1.
    for v in [1.5, -0.1, f64::NAN, f64::INFINITY] {
        error_inputs.push(hyper(
            format!("ademamix betas[2] = {v}"),
            AdEMAMix {
                betas: (0.9, 0.999, v),
                ..d()
            },
            "betas[2]",
            v,
        ));
    }
    // The warmup divides by t_alpha_beta3 (the package fails on its first
    // step with 0).
    for v in [-5.0, 0.0, f64::NAN, f64::INFINITY] {
        error_inputs.push(hyper(
            format!("ademamix t_alpha_beta3 = {v}"),
            AdEMAMix {
                t_alpha_beta3: Some(v),
                ..d()
            },
            "t_alpha_beta3",
            v,
        ));
    }
    for v in [-1.0, f64::NAN] {
        error_inputs.push(hyper(
            format!("ademamix alpha = {v}"),
            AdEMAMix { alpha: v, ..d() },
            "alpha",
            v,
        ));
    }
    for v in [-0.01, f64::INFINITY] {
        error_inputs.push(hyper(
            format!("ademamix weight_decay = {v}"),
            AdEMAMix {
                weight_decay: v,
                ..d()
            },
            "weight_decay",
            v,
        ));
    }
    for v in [-1e-8, f64::NAN] {
        error_inputs.push(hyper(
            format!("ademamix eps = {v}"),
            AdEMAMix { eps: v, ..d() },
            "eps",
            v,
        ));
    }
    RuleInfo {
        rule: RuleKind::AdEMAMix,
        inputs,
        error_inputs,
        unchecked: &[],
        momentum: Some(BETA1),
        descent: vec![(
            "ademamix",
            AdEMAMix { lr: 0.05, ..d() }.into(),
            AdEMAMix { lr: 0.02, ..d() }.into(),
        )],
        gpu_k: (K, K),
        kernel: Kernel::ElementWise { storage_buffers: 7 },
        exact_returns: false,
    }
}

/// lr, betas, eps and weight_decay as torch's constructors of the Adam
/// family check them: eps and weight_decay finite and >= 0.
fn adam_like_error_inputs<C: Into<Config>>(
    name: &str,
    make: impl Fn(f64, (f64, f64), f64, f64) -> C,
) -> Vec<ErrorInput> {
    let d = (1e-3, (0.9, 0.999), 1e-8, 0.0);
    let mut out = bad_lr(|lr| make(lr, d.1, d.2, d.3));
    out.extend(bad_betas(|betas| make(d.0, betas, d.2, d.3), true));
    for v in [-1e-8, f64::NAN] {
        out.push(hyper(
            format!("{name} eps = {v}"),
            make(d.0, d.1, v, d.3),
            "eps",
            v,
        ));
    }
    for v in [-0.01, f64::INFINITY] {
        out.push(hyper(
            format!("{name} weight_decay = {v}"),
            make(d.0, d.1, d.2, v),
            "weight_decay",
            v,
        ));
    }
    out
}

fn radam() -> RuleInfo {
    let base = RAdam {
        lr: 0.01,
        ..RAdam::default()
    };
    let decoupled = RAdam {
        weight_decay: 0.1,
        decoupled_weight_decay: true,
        ..base.clone()
    };
    // With β2 = 0.999 the rectification starts at step 6 (ρ6 ≈ 5.99), so
    // every run of more than 5 steps takes both branches; with β2 = 0.5
    // (ρ∞ = 3) it never starts, with β2 = 0.9 (ρ∞ = 19) from step 7.
    let inputs = vec![
        input("radam default", base.clone()),
        input(
            "radam weight_decay",
            RAdam {
                weight_decay: 0.1,
                ..base.clone()
            },
        ),
        input("radam decoupled_weight_decay", decoupled.clone()),
        input(
            "radam maximize",
            RAdam {
                maximize: true,
                ..base.clone()
            },
        ),
        input(
            "radam eps",
            RAdam {
                eps: 1e-4,
                ..base.clone()
            },
        ),
        input(
            "radam betas (0.8, 0.9)",
            RAdam {
                betas: (0.8, 0.9),
                ..base.clone()
            },
        ),
        input(
            "radam never rectified (beta2 = 0.5)",
            RAdam {
                betas: (0.9, 0.5),
                lr: 0.001,
                ..base.clone()
            },
        ),
        input(
            "radam all options",
            RAdam {
                betas: (0.8, 0.99),
                eps: 1e-6,
                maximize: true,
                ..decoupled.clone()
            },
        ),
        input(
            "radam weight_decay maximize",
            RAdam {
                weight_decay: 0.05,
                maximize: true,
                ..base.clone()
            },
        ),
        scheduled(
            "radam, lr and beta1 changed (beta1 = 0 too)",
            base.clone(),
            LR_AND_BETA1,
        ),
        scheduled(
            "radam decoupled_weight_decay, lr and beta1 changed",
            decoupled.clone(),
            LR_AND_BETA1,
        ),
        clipped("radam decoupled_weight_decay, clipped", decoupled, 1.0),
    ];
    let error_inputs = adam_like_error_inputs("radam", |lr, betas, eps, weight_decay| RAdam {
        lr,
        betas,
        eps,
        weight_decay,
        ..RAdam::default()
    });
    let d = RAdam::default;
    RuleInfo {
        rule: RuleKind::RAdam,
        inputs,
        error_inputs,
        unchecked: &[],
        momentum: Some(BETA1),
        // Rosenbrock at lr 0.01, half Adam's: RAdam's first five steps are
        // θ −= lr·m̂, momentum SGD with the gradient's own size (about 155
        // at the start), which diverges there at lr 0.02.
        descent: vec![(
            "radam",
            RAdam { lr: 0.05, ..d() }.into(),
            RAdam { lr: 0.01, ..d() }.into(),
        )],
        // As Adam's: the update has two divisions and a square root
        // (2.5 ULP each on the GPU), the moments a possible FMA each.
        gpu_k: (K, K),
        kernel: Kernel::ElementWise { storage_buffers: 6 },
        exact_returns: false,
    }
}

fn adamax() -> RuleInfo {
    let base = Adamax {
        lr: 0.01,
        ..Adamax::default()
    };
    let inputs = vec![
        input("adamax default", base.clone()),
        input(
            "adamax weight_decay",
            Adamax {
                weight_decay: 0.1,
                ..base.clone()
            },
        ),
        input(
            "adamax maximize",
            Adamax {
                maximize: true,
                ..base.clone()
            },
        ),
        // eps large enough to win the maximum for the small gradients.
        input(
            "adamax eps",
            Adamax {
                eps: 0.05,
                ..base.clone()
            },
        ),
        input(
            "adamax betas",
            Adamax {
                betas: (0.8, 0.95),
                ..base.clone()
            },
        ),
        input(
            "adamax all options",
            Adamax {
                betas: (0.5, 0.9),
                eps: 1e-6,
                weight_decay: 0.05,
                maximize: true,
                ..base.clone()
            },
        ),
        scheduled(
            "adamax, lr and beta1 changed (beta1 = 0 too)",
            base.clone(),
            LR_AND_BETA1,
        ),
        scheduled(
            "adamax weight_decay maximize, lr and beta1 changed",
            Adamax {
                weight_decay: 0.01,
                maximize: true,
                ..base.clone()
            },
            LR_AND_BETA1,
        ),
        clipped("adamax, clipped", base, 1.0),
    ];
    let error_inputs = adam_like_error_inputs("adamax", |lr, betas, eps, weight_decay| Adamax {
        lr,
        betas,
        eps,
        weight_decay,
        ..Adamax::default()
    });
    let d = Adamax::default;
    RuleInfo {
        rule: RuleKind::Adamax,
        inputs,
        error_inputs,
        unchecked: &[],
        momentum: Some(BETA1),
        descent: vec![(
            "adamax",
            Adamax { lr: 0.05, ..d() }.into(),
            Adamax { lr: 0.02, ..d() }.into(),
        )],
        // One division in the update, a possible FMA in the L2 term and in
        // the lerp of `exp_avg`; the maximum is exact.
        gpu_k: (K, K),
        kernel: Kernel::ElementWise { storage_buffers: 6 },
        exact_returns: false,
    }
}

fn nadam() -> RuleInfo {
    let base = NAdam {
        lr: 0.01,
        ..NAdam::default()
    };
    let inputs = vec![
        input("nadam default", base.clone()),
        input(
            "nadam weight_decay",
            NAdam {
                weight_decay: 0.1,
                ..base.clone()
            },
        ),
        input(
            "nadam decoupled_weight_decay",
            NAdam {
                weight_decay: 0.1,
                decoupled_weight_decay: true,
                ..base.clone()
            },
        ),
        input(
            "nadam maximize",
            NAdam {
                maximize: true,
                ..base.clone()
            },
        ),
        input(
            "nadam momentum_decay",
            NAdam {
                momentum_decay: 0.05,
                ..base.clone()
            },
        ),
        input(
            "nadam no momentum_decay",
            NAdam {
                momentum_decay: 0.0,
                ..base.clone()
            },
        ),
        input(
            "nadam betas eps",
            NAdam {
                betas: (0.8, 0.99),
                eps: 1e-6,
                ..base.clone()
            },
        ),
        input(
            "nadam all options",
            NAdam {
                betas: (0.85, 0.995),
                eps: 1e-6,
                weight_decay: 0.05,
                momentum_decay: 0.01,
                decoupled_weight_decay: true,
                maximize: true,
                ..base.clone()
            },
        ),
        // mu_product is a product over the steps of factors of the β1 in
        // force at each: a β1 schedule changes it for good.
        scheduled(
            "nadam, lr and beta1 changed (beta1 = 0 too)",
            base.clone(),
            LR_AND_BETA1,
        ),
        scheduled(
            "nadam weight_decay, lr and beta1 changed",
            NAdam {
                weight_decay: 0.01,
                momentum_decay: 0.02,
                ..base.clone()
            },
            LR_AND_BETA1,
        ),
        clipped("nadam, clipped", base, 1.0),
    ];
    let d = NAdam::default;
    let mut error_inputs = bad_lr(|lr| NAdam { lr, ..d() });
    error_inputs.extend(bad_betas(|betas| NAdam { betas, ..d() }, true));
    for v in [-1e-8, f64::NAN] {
        error_inputs.push(hyper(
            format!("nadam eps = {v}"),
            NAdam { eps: v, ..d() },
            "eps",
            v,
        ));
    }
    for v in [-0.01, f64::INFINITY] {
        error_inputs.push(hyper(
            format!("nadam weight_decay = {v}"),
            NAdam {
                weight_decay: v,
                ..d()
            },
            "weight_decay",
            v,
        ));
    }
    for v in [-4e-3, f64::NAN] {
        error_inputs.push(hyper(
            format!("nadam momentum_decay = {v}"),
            NAdam {
                momentum_decay: v,
                ..d()
            },
            "momentum_decay",
            v,
        ));
    }
    RuleInfo {
        rule: RuleKind::NAdam,
        inputs,
        error_inputs,
        unchecked: &[],
        momentum: Some(BETA1),
        descent: vec![(
            "nadam",
            NAdam { lr: 0.05, ..d() }.into(),
            NAdam { lr: 0.02, ..d() }.into(),
        )],
        gpu_k: (K, K),
        kernel: Kernel::ElementWise { storage_buffers: 6 },
        exact_returns: false,
    }
}

fn asgd() -> RuleInfo {
    // Averaging from the third step on (t0 = 1), so that 25 steps reach it.
    let base = Asgd {
        lr: 0.05,
        t0: 1.0,
        ..Asgd::default()
    };
    let inputs = vec![
        input("asgd t0 = 1", base.clone()),
        input(
            "asgd default t0 (no averaging)",
            Asgd {
                t0: Asgd::default().t0,
                ..base.clone()
            },
        ),
        input(
            "asgd lambd alpha",
            Asgd {
                lambd: 0.5,
                alpha: 0.5,
                ..base.clone()
            },
        ),
        input(
            "asgd no decay",
            Asgd {
                lambd: 0.0,
                ..base.clone()
            },
        ),
        input(
            "asgd weight_decay",
            Asgd {
                weight_decay: 0.1,
                ..base.clone()
            },
        ),
        input(
            "asgd maximize",
            Asgd {
                maximize: true,
                ..base.clone()
            },
        ),
        input(
            "asgd all options",
            Asgd {
                lambd: 0.1,
                alpha: 1.0,
                t0: 4.0,
                weight_decay: 0.05,
                maximize: true,
                ..base.clone()
            },
        ),
        // eta is computed from the lr of the previous step: a new lr
        // arrives one step late, and 0 stops the parameters for a step.
        scheduled(
            "asgd lambd, lr changed (to 0 too)",
            Asgd {
                lambd: 0.5,
                ..base.clone()
            },
            &[
                (5, Change::Lr(0.02)),
                (9, Change::Lr(0.0)),
                (10, Change::Lr(0.1)),
                (14, Change::Lr(0.005)),
            ],
        ),
        clipped("asgd, clipped", base, 1.0),
    ];
    let d = Asgd::default;
    let mut error_inputs = bad_lr(|lr| Asgd { lr, ..d() });
    for v in [-1e-4, f64::NAN] {
        error_inputs.push(hyper(
            format!("asgd lambd = {v}"),
            Asgd { lambd: v, ..d() },
            "lambd",
            v,
        ));
    }
    for v in [-0.75, f64::INFINITY] {
        error_inputs.push(hyper(
            format!("asgd alpha = {v}"),
            Asgd { alpha: v, ..d() },
            "alpha",
            v,
        ));
    }
    for v in [f64::NAN, f64::NEG_INFINITY] {
        error_inputs.push(hyper(
            format!("asgd t0 = {v}"),
            Asgd { t0: v, ..d() },
            "t0",
            v,
        ));
    }
    error_inputs.push(hyper(
        "asgd weight_decay < 0".into(),
        Asgd {
            weight_decay: -0.01,
            ..d()
        },
        "weight_decay",
        -0.01,
    ));
    RuleInfo {
        rule: RuleKind::Asgd,
        inputs,
        error_inputs,
        unchecked: &[],
        momentum: None,
        descent: vec![(
            "asgd",
            Asgd { lr: 0.04, ..d() }.into(),
            Asgd { lr: 5e-4, ..d() }.into(),
        )],
        gpu_k: (K, K),
        kernel: Kernel::ElementWise { storage_buffers: 5 },
        exact_returns: false,
    }
}

/// set_lr and the schedule-free `β1` (set_momentum) between steps: a
/// lower lr later stays out of `lr_max`, a higher one raises it for good.
const SCHEDULE_FREE_CHANGES: &[(usize, Change)] = &[
    (5, Change::Lr(0.002)),
    (9, Change::Momentum(0.5)),
    (14, Change::Lr(0.03)),
    (20, Change::Momentum(0.95)),
];

/// What `set_momentum` refuses in the schedule-free rules: `β1` in [0, 1)
/// (0 only in eval mode, tests/schedulefree_modes.rs).
const SCHEDULE_FREE_BETA1: &[f64] = &[1.0, -0.1, f64::NAN, 2.0];

/// The error inputs of the options both schedule-free rules have.
fn bad_schedule_free<C: Into<Config>>(
    make_wd: impl Fn(f64) -> C,
    make_r: impl Fn(f64) -> C,
    make_power: impl Fn(f64) -> C,
) -> Vec<ErrorInput> {
    let mut out = Vec::new();
    for v in [-0.01, f64::INFINITY] {
        let c: Config = make_wd(v).into();
        out.push(hyper(
            format!("{} weight_decay = {v}", c.kind()),
            c,
            "weight_decay",
            v,
        ));
    }
    for v in [f64::NAN, f64::INFINITY] {
        let c: Config = make_r(v).into();
        out.push(hyper(format!("{} r = {v}", c.kind()), c, "r", v));
        let c: Config = make_power(v).into();
        out.push(hyper(
            format!("{} weight_lr_power = {v}", c.kind()),
            c,
            "weight_lr_power",
            v,
        ));
    }
    out
}

fn schedulefree_sgd() -> RuleInfo {
    let base = SgdScheduleFree {
        lr: 0.05,
        ..SgdScheduleFree::default()
    };
    let inputs = vec![
        input("schedulefree_sgd", base.clone()),
        input(
            "schedulefree_sgd momentum",
            SgdScheduleFree {
                momentum: 0.5,
                ..base.clone()
            },
        ),
        input(
            "schedulefree_sgd weight_decay",
            SgdScheduleFree {
                weight_decay: 0.1,
                ..base.clone()
            },
        ),
        input(
            "schedulefree_sgd warmup_steps",
            SgdScheduleFree {
                warmup_steps: 6,
                ..base.clone()
            },
        ),
        input(
            "schedulefree_sgd r",
            SgdScheduleFree {
                r: 1.0,
                ..base.clone()
            },
        ),
        input(
            "schedulefree_sgd weight_lr_power 0",
            SgdScheduleFree {
                weight_lr_power: 0.0,
                ..base.clone()
            },
        ),
        input(
            "schedulefree_sgd all options",
            SgdScheduleFree {
                momentum: 0.8,
                weight_decay: 0.05,
                warmup_steps: 4,
                r: 0.5,
                weight_lr_power: 1.0,
                ..base.clone()
            },
        ),
        scheduled(
            "schedulefree_sgd warmup, lr and momentum changed",
            SgdScheduleFree {
                warmup_steps: 3,
                ..base.clone()
            },
            SCHEDULE_FREE_CHANGES,
        ),
        clipped("schedulefree_sgd, clipped", base, 1.0),
    ];
    let d = SgdScheduleFree::default;
    let mut error_inputs = bad_lr(|lr| SgdScheduleFree { lr, ..d() });
    for &v in SCHEDULE_FREE_BETA1 {
        error_inputs.push(hyper(
            format!("schedulefree_sgd momentum = {v}"),
            SgdScheduleFree { momentum: v, ..d() },
            "momentum",
            v,
        ));
    }
    error_inputs.extend(bad_schedule_free(
        |weight_decay| SgdScheduleFree {
            weight_decay,
            ..d()
        },
        |r| SgdScheduleFree { r, ..d() },
        |weight_lr_power| SgdScheduleFree {
            weight_lr_power,
            ..d()
        },
    ));
    RuleInfo {
        rule: RuleKind::SgdScheduleFree,
        inputs,
        error_inputs,
        // A count: every u64 is a valid one.
        unchecked: &["warmup_steps"],
        momentum: Some(Momentum {
            name: "momentum",
            bad: SCHEDULE_FREE_BETA1,
            needs_buffer: false,
        }),
        descent: vec![(
            "schedulefree_sgd",
            SgdScheduleFree { lr: 0.05, ..d() }.into(),
            SgdScheduleFree { lr: 5e-4, ..d() }.into(),
        )],
        gpu_k: (K, K),
        kernel: Kernel::ElementWise { storage_buffers: 5 },
        exact_returns: false,
    }
}

fn schedulefree_adamw() -> RuleInfo {
    let base = AdamWScheduleFree {
        lr: 0.01,
        ..AdamWScheduleFree::default()
    };
    let inputs = vec![
        input("schedulefree_adamw", base.clone()),
        input(
            "schedulefree_adamw betas eps",
            AdamWScheduleFree {
                betas: (0.8, 0.99),
                eps: 1e-6,
                ..base.clone()
            },
        ),
        input(
            "schedulefree_adamw weight_decay",
            AdamWScheduleFree {
                weight_decay: 0.1,
                ..base.clone()
            },
        ),
        input(
            "schedulefree_adamw warmup_steps",
            AdamWScheduleFree {
                warmup_steps: 6,
                ..base.clone()
            },
        ),
        input(
            "schedulefree_adamw r",
            AdamWScheduleFree {
                r: 1.0,
                ..base.clone()
            },
        ),
        input(
            "schedulefree_adamw weight_lr_power 0",
            AdamWScheduleFree {
                weight_lr_power: 0.0,
                ..base.clone()
            },
        ),
        input(
            "schedulefree_adamw all options",
            AdamWScheduleFree {
                betas: (0.85, 0.995),
                eps: 1e-6,
                weight_decay: 0.05,
                warmup_steps: 4,
                r: 0.5,
                weight_lr_power: 1.0,
                ..base.clone()
            },
        ),
        scheduled(
            "schedulefree_adamw warmup, lr and beta1 changed",
            AdamWScheduleFree {
                warmup_steps: 3,
                weight_decay: 0.01,
                ..base.clone()
            },
            SCHEDULE_FREE_CHANGES,
        ),
        clipped("schedulefree_adamw, clipped", base, 1.0),
    ];
    let d = AdamWScheduleFree::default;
    let mut error_inputs = bad_lr(|lr| AdamWScheduleFree { lr, ..d() });
    for v in [-1e-8, f64::NAN] {
        error_inputs.push(hyper(
            format!("schedulefree_adamw eps = {v}"),
            AdamWScheduleFree { eps: v, ..d() },
            "eps",
            v,
        ));
    }
    for &v in SCHEDULE_FREE_BETA1 {
        error_inputs.push(hyper(
            format!("schedulefree_adamw betas[0] = {v}"),
            AdamWScheduleFree {
                betas: (v, 0.999),
                ..d()
            },
            "betas[0]",
            v,
        ));
    }
    for v in [1.0, -0.1, f64::NAN] {
        error_inputs.push(hyper(
            format!("schedulefree_adamw betas[1] = {v}"),
            AdamWScheduleFree {
                betas: (0.9, v),
                ..d()
            },
            "betas[1]",
            v,
        ));
    }
    error_inputs.extend(bad_schedule_free(
        |weight_decay| AdamWScheduleFree {
            weight_decay,
            ..d()
        },
        |r| AdamWScheduleFree { r, ..d() },
        |weight_lr_power| AdamWScheduleFree {
            weight_lr_power,
            ..d()
        },
    ));
    RuleInfo {
        rule: RuleKind::AdamWScheduleFree,
        inputs,
        error_inputs,
        // A count: every u64 is a valid one.
        unchecked: &["warmup_steps"],
        momentum: Some(Momentum {
            name: "betas[0]",
            bad: SCHEDULE_FREE_BETA1,
            needs_buffer: false,
        }),
        descent: vec![(
            "schedulefree_adamw",
            AdamWScheduleFree { lr: 0.05, ..d() }.into(),
            AdamWScheduleFree { lr: 0.02, ..d() }.into(),
        )],
        gpu_k: (K, K),
        kernel: Kernel::ElementWise { storage_buffers: 6 },
        exact_returns: false,
    }
}
