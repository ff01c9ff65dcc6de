//! Every way to misuse the library returns the typed error that names what
//! is wrong and the offending value, on the CPU and the GPU alike, and a
//! call that fails changes nothing: no parameter, no state, no step count,
//! no hyperparameter.
//!
//! Needs a GPU adapter: without one the GPU tests fail with
//! [`Error::NoAdapter`]'s text, which says what to install.

mod common;
use common::ctx;
use wgpu_optim::{
    Adagrad, Adam, AdamW, AdapterSelection, ClipGradNorm, Config, CpuOptimizer, Error, GpuContext,
    GpuOptimizer, GpuOptions, Lamb, RmsProp, Sgd,
};

/// What a bad configuration must be refused with.
#[derive(Clone, Debug)]
enum Expect {
    /// `Error::InvalidHyperparameter { name, value, .. }` (NaN matches NaN).
    Hyper(&'static str, f64),
    /// `Error::InvalidOptions(message)`, the message containing each of these.
    Options(&'static [&'static str]),
}

struct Case {
    what: String,
    config: Config,
    expect: Expect,
}

fn same_value(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b
}

/// Checks `err` against `expect`, including that the message names the
/// parameter and shows the value.
fn check(what: &str, backend: &str, err: &Error, expect: &Expect) {
    let text = err.to_string();
    match (expect, err) {
        (
            Expect::Hyper(name, value),
            Error::InvalidHyperparameter {
                name: n, value: v, ..
            },
        ) => {
            assert_eq!(
                n, name,
                "{what} ({backend}): wrong parameter named: {err:?}"
            );
            assert!(
                same_value(*v, *value),
                "{what} ({backend}): wrong value: {err:?}"
            );
            assert!(
                text.contains(name) && text.contains(&value.to_string()),
                "{what} ({backend}): message {text:?} must name `{name}` and show {value}"
            );
        }
        (Expect::Options(words), Error::InvalidOptions(_)) => {
            for w in *words {
                assert!(
                    text.contains(w),
                    "{what} ({backend}): message {text:?} must contain {w:?}"
                );
            }
        }
        _ => panic!("{what} ({backend}): expected {expect:?}, got {err:?}"),
    }
}

fn bad_lr(lr: f64) -> Vec<(String, Config)> {
    vec![
        (
            format!("sgd lr = {lr}"),
            Sgd {
                lr,
                ..Sgd::default()
            }
            .into(),
        ),
        (
            format!("adagrad lr = {lr}"),
            Adagrad {
                lr,
                ..Adagrad::default()
            }
            .into(),
        ),
        (
            format!("rmsprop lr = {lr}"),
            RmsProp {
                lr,
                ..RmsProp::default()
            }
            .into(),
        ),
        (
            format!("adam lr = {lr}"),
            Adam {
                lr,
                ..Adam::default()
            }
            .into(),
        ),
        (
            format!("adamw lr = {lr}"),
            AdamW {
                lr,
                ..AdamW::default()
            }
            .into(),
        ),
    ]
}

/// The table: every invalid hyperparameter and option combination.
fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    let mut hyper = |what: String, config: Config, name: &'static str, value: f64| {
        out.push(Case {
            what,
            config,
            expect: Expect::Hyper(name, value),
        })
    };

    // lr: negative, NaN, +inf, for each rule.
    for lr in [-0.1, f64::NAN, f64::INFINITY] {
        for (what, config) in bad_lr(lr) {
            hyper(what, config, "lr", lr);
        }
    }

    // betas outside [0, 1): 1.0, -0.1, NaN, +inf, for both betas of both Adams.
    for v in [1.0, -0.1, f64::NAN, f64::INFINITY, 1.5] {
        hyper(
            format!("adam betas[0] = {v}"),
            Adam {
                betas: (v, 0.999),
                ..Adam::default()
            }
            .into(),
            "betas[0]",
            v,
        );
        hyper(
            format!("adam betas[1] = {v}"),
            Adam {
                betas: (0.9, v),
                ..Adam::default()
            }
            .into(),
            "betas[1]",
            v,
        );
        hyper(
            format!("adamw betas[0] = {v}"),
            AdamW {
                betas: (v, 0.999),
                ..AdamW::default()
            }
            .into(),
            "betas[0]",
            v,
        );
        hyper(
            format!("adamw betas[1] = {v}"),
            AdamW {
                betas: (0.9, v),
                ..AdamW::default()
            }
            .into(),
            "betas[1]",
            v,
        );
    }

    // eps: negative and NaN, for the rules that have one.
    for v in [-1e-8, f64::NAN] {
        hyper(
            format!("adagrad eps = {v}"),
            Adagrad {
                eps: v,
                ..Adagrad::default()
            }
            .into(),
            "eps",
            v,
        );
        hyper(
            format!("rmsprop eps = {v}"),
            RmsProp {
                eps: v,
                ..RmsProp::default()
            }
            .into(),
            "eps",
            v,
        );
        hyper(
            format!("adam eps = {v}"),
            Adam {
                eps: v,
                ..Adam::default()
            }
            .into(),
            "eps",
            v,
        );
        hyper(
            format!("adamw eps = {v}"),
            AdamW {
                eps: v,
                ..AdamW::default()
            }
            .into(),
            "eps",
            v,
        );
    }

    // weight_decay: negative (every rule) and +inf (one rule).
    let wd = -0.01;
    hyper(
        "sgd weight_decay < 0".into(),
        Sgd {
            weight_decay: wd,
            ..Sgd::default()
        }
        .into(),
        "weight_decay",
        wd,
    );
    hyper(
        "adagrad weight_decay < 0".into(),
        Adagrad {
            weight_decay: wd,
            ..Adagrad::default()
        }
        .into(),
        "weight_decay",
        wd,
    );
    hyper(
        "rmsprop weight_decay < 0".into(),
        RmsProp {
            weight_decay: wd,
            ..RmsProp::default()
        }
        .into(),
        "weight_decay",
        wd,
    );
    hyper(
        "adam weight_decay < 0".into(),
        Adam {
            weight_decay: wd,
            ..Adam::default()
        }
        .into(),
        "weight_decay",
        wd,
    );
    hyper(
        "adamw weight_decay < 0".into(),
        AdamW {
            weight_decay: wd,
            ..AdamW::default()
        }
        .into(),
        "weight_decay",
        wd,
    );
    hyper(
        "adamw weight_decay = inf".into(),
        AdamW {
            weight_decay: f64::INFINITY,
            ..AdamW::default()
        }
        .into(),
        "weight_decay",
        f64::INFINITY,
    );

    // momentum: negative and NaN.
    for v in [-0.9, f64::NAN] {
        hyper(
            format!("sgd momentum = {v}"),
            Sgd {
                momentum: v,
                ..Sgd::default()
            }
            .into(),
            "momentum",
            v,
        );
        hyper(
            format!("rmsprop momentum = {v}"),
            RmsProp {
                momentum: v,
                ..RmsProp::default()
            }
            .into(),
            "momentum",
            v,
        );
    }

    // RMSprop's alpha, Adagrad's lr_decay and initial_accumulator_value.
    hyper(
        "rmsprop alpha < 0".into(),
        RmsProp {
            alpha: -0.5,
            ..RmsProp::default()
        }
        .into(),
        "alpha",
        -0.5,
    );
    hyper(
        "adagrad lr_decay < 0".into(),
        Adagrad {
            lr_decay: -0.25,
            ..Adagrad::default()
        }
        .into(),
        "lr_decay",
        -0.25,
    );
    hyper(
        "adagrad initial_accumulator_value < 0".into(),
        Adagrad {
            initial_accumulator_value: -0.125,
            ..Adagrad::default()
        }
        .into(),
        "initial_accumulator_value",
        -0.125,
    );

    // Option combinations PyTorch refuses.
    out.push(Case {
        what: "sgd nesterov without momentum".into(),
        config: Sgd {
            nesterov: true,
            ..Sgd::default()
        }
        .into(),
        expect: Expect::Options(&["nesterov", "momentum = 0"]),
    });
    out.push(Case {
        what: "sgd nesterov with dampening".into(),
        config: Sgd {
            nesterov: true,
            momentum: 0.9,
            dampening: 0.1,
            ..Sgd::default()
        }
        .into(),
        expect: Expect::Options(&["nesterov", "dampening = 0.1"]),
    });
    lamb_cases(&mut out);
    out
}

/// LAMB's rows of the table: lr, betas, eps, weight_decay, and the trust
/// ratio clamp (each bound finite and >= 0, min <= max).
fn lamb_cases(out: &mut Vec<Case>) {
    let mut hyper = |what: String, config: Lamb, name: &'static str, value: f64| {
        out.push(Case {
            what,
            config: config.into(),
            expect: Expect::Hyper(name, value),
        })
    };
    let d = Lamb::default;
    for v in [-0.1, f64::NAN, f64::INFINITY] {
        hyper(format!("lamb lr = {v}"), Lamb { lr: v, ..d() }, "lr", v);
    }
    for v in [1.0, -0.1, f64::NAN, f64::INFINITY] {
        let b0 = Lamb {
            betas: (v, 0.999),
            ..d()
        };
        hyper(format!("lamb betas[0] = {v}"), b0, "betas[0]", v);
        let b1 = Lamb {
            betas: (0.9, v),
            ..d()
        };
        hyper(format!("lamb betas[1] = {v}"), b1, "betas[1]", v);
    }
    for v in [-1e-8, f64::NAN] {
        hyper(format!("lamb eps = {v}"), Lamb { eps: v, ..d() }, "eps", v);
    }
    for v in [-0.01, f64::INFINITY] {
        let c = Lamb {
            weight_decay: v,
            ..d()
        };
        hyper(format!("lamb weight_decay = {v}"), c, "weight_decay", v);
    }
    let clamp = |lo: f64, hi: f64| Lamb {
        trust_ratio_clamp: Some((lo, hi)),
        ..d()
    };
    let min = "trust_ratio_clamp.min";
    let max = "trust_ratio_clamp.max";
    hyper("lamb clamp min < 0".into(), clamp(-0.5, 1.0), min, -0.5);
    hyper("lamb clamp both < 0".into(), clamp(-2.0, -1.0), min, -2.0);
    hyper(
        "lamb clamp min NaN".into(),
        clamp(f64::NAN, 1.0),
        min,
        f64::NAN,
    );
    hyper(
        "lamb clamp max NaN".into(),
        clamp(0.5, f64::NAN),
        max,
        f64::NAN,
    );
    hyper(
        "lamb clamp max inf".into(),
        clamp(0.0, f64::INFINITY),
        max,
        f64::INFINITY,
    );
    out.push(Case {
        what: "lamb clamp min > max".into(),
        config: clamp(2.0, 1.0).into(),
        expect: Expect::Options(&["trust_ratio_clamp", "min <= max", "(2, 1)"]),
    });
}

#[test]
fn invalid_hyperparameters_are_refused_on_cpu_and_gpu() {
    let cases = cases();
    let params: &[&[f32]] = &[&[1.0, 2.0], &[3.0]];
    for case in &cases {
        assert_eq!(
            case.config.validate().map_err(|e| e.to_string()),
            Err(match CpuOptimizer::new(case.config.clone(), params) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{}: the CPU optimizer accepted it", case.what),
            }),
            "{}: Config::validate and CpuOptimizer::new disagree",
            case.what
        );
        let cpu = CpuOptimizer::new(case.config.clone(), params).unwrap_err();
        check(&case.what, "cpu", &cpu, &case.expect);
        let gpu = match GpuOptimizer::new(ctx(), case.config.clone(), params) {
            Err(e) => e,
            Ok(_) => panic!("{}: the GPU optimizer accepted it", case.what),
        };
        check(&case.what, "gpu", &gpu, &case.expect);
        // (`Error`'s `==` follows f64's, NaN != NaN: compare the messages.)
        assert_eq!(
            cpu.to_string(),
            gpu.to_string(),
            "{}: CPU and GPU give different errors",
            case.what
        );
    }
    // Two messages in full, so that their wording is pinned somewhere.
    let lr = CpuOptimizer::new(
        Sgd {
            lr: -0.1,
            ..Sgd::default()
        },
        params,
    )
    .unwrap_err();
    assert_eq!(
        lr.to_string(),
        "invalid hyperparameter `lr` = -0.1: must be >= 0"
    );
    let beta = CpuOptimizer::new(
        Adam {
            betas: (0.9, 1.0),
            ..Adam::default()
        },
        params,
    )
    .unwrap_err();
    assert_eq!(
        beta.to_string(),
        "invalid hyperparameter `betas[1]` = 1: must be in [0, 1)"
    );
    println!(
        "{} invalid configurations, each refused by CpuOptimizer::new and GpuOptimizer::new",
        cases.len()
    );
}

/// An optimizer of each rule that has what `set_momentum` needs, and one
/// of each that does not.
fn setter_configs() -> Vec<Config> {
    vec![
        Sgd::default().into(),
        Sgd {
            momentum: 0.9,
            ..Sgd::default()
        }
        .into(),
        Adagrad::default().into(),
        RmsProp::default().into(),
        RmsProp {
            momentum: 0.9,
            ..RmsProp::default()
        }
        .into(),
        Adam::default().into(),
        AdamW::default().into(),
    ]
}

/// The values `set_momentum` must refuse for this rule, with the error.
fn bad_momenta(config: &Config) -> Vec<(f64, Error)> {
    let hyper = |name: &'static str, value: f64| Error::InvalidHyperparameter {
        name,
        value,
        reason: "",
    };
    match config {
        Config::Sgd(c) if c.momentum == 0.0 => vec![(0.5, Error::NoMomentum { rule: "sgd" })],
        Config::RmsProp(c) if c.momentum == 0.0 => {
            vec![(0.5, Error::NoMomentum { rule: "rmsprop" })]
        }
        Config::Adagrad(_) => vec![(0.5, Error::NoMomentum { rule: "adagrad" })],
        Config::Sgd(_) | Config::RmsProp(_) => [-0.5, f64::NAN, f64::INFINITY]
            .into_iter()
            .map(|v| (v, hyper("momentum", v)))
            .collect(),
        Config::Adam(_) | Config::AdamW(_) | Config::Lamb(_) => [1.0, -0.1, f64::NAN, 2.0]
            .into_iter()
            .map(|v| (v, hyper("betas[0]", v)))
            .collect(),
        // `Config` is non-exhaustive: a new rule needs its values here.
        other => panic!("no bad momenta listed for rule {}", other.kind()),
    }
}

/// Same variant and fields, ignoring `reason` and matching NaN with NaN.
fn same_error(got: &Error, want: &Error) -> bool {
    match (got, want) {
        (
            Error::InvalidHyperparameter {
                name: a, value: x, ..
            },
            Error::InvalidHyperparameter {
                name: b, value: y, ..
            },
        ) => a == b && same_value(*x, *y),
        _ => got == want,
    }
}

#[test]
fn bad_set_lr_and_set_momentum_leave_the_config_unchanged() {
    let params: &[&[f32]] = &[&[1.0, -1.0, 0.5]];
    let mut count = 0;
    for config in setter_configs() {
        let mut cpu = CpuOptimizer::new(config.clone(), params).unwrap();
        let mut gpu = GpuOptimizer::new(ctx(), config.clone(), params).unwrap();
        for lr in [-1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            for (backend, result, after) in [
                ("cpu", cpu.set_lr(lr), cpu.config().clone()),
                ("gpu", gpu.set_lr(lr), gpu.config().clone()),
            ] {
                let err = result.expect_err("a bad lr must be refused");
                check(
                    &format!("{:?} set_lr({lr})", config.kind()),
                    backend,
                    &err,
                    &Expect::Hyper("lr", lr),
                );
                assert_eq!(after, config, "{backend}: set_lr({lr}) changed the config");
                count += 1;
            }
        }
        for (m, want) in bad_momenta(&config) {
            for (backend, result, after) in [
                ("cpu", cpu.set_momentum(m), cpu.config().clone()),
                ("gpu", gpu.set_momentum(m), gpu.config().clone()),
            ] {
                let err = result.expect_err("a bad momentum must be refused");
                assert!(
                    same_error(&err, &want),
                    "{:?} set_momentum({m}) on {backend}: expected {want:?}, got {err:?}",
                    config.kind()
                );
                assert!(
                    err.to_string().contains(&m.to_string())
                        || matches!(err, Error::NoMomentum { .. }),
                    "{err}"
                );
                assert_eq!(
                    after, config,
                    "{backend}: set_momentum({m}) changed the config"
                );
                count += 1;
            }
        }
        // A rule built with a momentum buffer keeps it: momentum 0 and
        // back is allowed (a cyclic schedule with base_momentum 0 does it).
        if let Some(m) = config.momentum() {
            let has_buffer = match &config {
                Config::Sgd(c) => c.momentum != 0.0,
                Config::RmsProp(c) => c.momentum != 0.0,
                _ => true,
            };
            if has_buffer {
                for (backend, down, up) in [
                    ("cpu", cpu.set_momentum(0.0), cpu.set_momentum(m)),
                    ("gpu", gpu.set_momentum(0.0), gpu.set_momentum(m)),
                ] {
                    assert_eq!(down, Ok(()), "{:?} {backend}: momentum -> 0", config.kind());
                    assert_eq!(
                        up,
                        Ok(()),
                        "{:?} {backend}: momentum 0 -> {m}",
                        config.kind()
                    );
                }
                assert_eq!(cpu.config(), &config);
                assert_eq!(gpu.config(), &config);
            }
        }
        // And the optimizers still step as a fresh one does.
        let mut fresh = CpuOptimizer::new(config.clone(), params).unwrap();
        let g: &[&[f32]] = &[&[0.25, -0.5, 1.0]];
        fresh.step(g).unwrap();
        cpu.step(g).unwrap();
        gpu.step(g).unwrap();
        assert_eq!(cpu.params_flat(), fresh.params_flat());
        assert_eq!(gpu.read_params_flat().unwrap(), fresh.params_flat());
    }
    let no_momentum = CpuOptimizer::new(Sgd::default(), params)
        .unwrap()
        .set_momentum(0.9)
        .unwrap_err();
    assert_eq!(no_momentum, Error::NoMomentum { rule: "sgd" });
    assert!(no_momentum.to_string().contains("momentum = 0"));
    println!("{count} refused set_lr / set_momentum calls, config unchanged after each");
}

/// Everything an optimizer holds, read back.
#[derive(Debug, PartialEq)]
struct Snapshot {
    params: Vec<f32>,
    state: Vec<Vec<f32>>,
    steps: u64,
}

fn snapshot_cpu(opt: &CpuOptimizer) -> Snapshot {
    Snapshot {
        params: opt.params_flat().to_vec(),
        state: opt
            .state_names()
            .iter()
            .map(|n| opt.state_flat(n).unwrap().to_vec())
            .collect(),
        steps: opt.step_count(),
    }
}

fn snapshot_gpu(opt: &GpuOptimizer) -> Snapshot {
    Snapshot {
        params: opt.read_params_flat().unwrap(),
        state: opt
            .state_names()
            .iter()
            .map(|n| opt.read_state_flat(n).unwrap())
            .collect(),
        steps: opt.step_count(),
    }
}

#[test]
fn mismatched_gradients_change_nothing() {
    let p0 = [1.0f32, -2.0, 3.0];
    let p1 = [0.5f32, 0.25, -0.75, 1.5, 2.0];
    let params: &[&[f32]] = &[&p0, &p1];
    let g0 = [0.1f32, 0.2, -0.3];
    let g1 = [1.0f32, -1.0, 0.5, 0.25, -0.125];
    let good: &[&[f32]] = &[&g0, &g1];
    let short1 = [1.0f32; 4];
    let long0 = [1.0f32; 4];
    let bad: Vec<(&str, Vec<&[f32]>, Error)> = vec![
        (
            "one tensor too few",
            vec![&g0],
            Error::TensorCountMismatch {
                expected: 2,
                got: 1,
            },
        ),
        (
            "no tensor",
            vec![],
            Error::TensorCountMismatch {
                expected: 2,
                got: 0,
            },
        ),
        (
            "one tensor too many",
            vec![&g0, &g1, &g1],
            Error::TensorCountMismatch {
                expected: 2,
                got: 3,
            },
        ),
        (
            "second tensor one short",
            vec![&g0, &short1],
            Error::LengthMismatch {
                tensor: 1,
                expected: 5,
                got: 4,
            },
        ),
        (
            "first tensor one long",
            vec![&long0, &g1],
            Error::LengthMismatch {
                tensor: 0,
                expected: 3,
                got: 4,
            },
        ),
        (
            "tensors swapped",
            vec![&g1, &g0],
            Error::LengthMismatch {
                tensor: 0,
                expected: 3,
                got: 5,
            },
        ),
    ];
    let configs: Vec<Config> = vec![
        Sgd {
            lr: 0.1,
            momentum: 0.9,
            ..Sgd::default()
        }
        .into(),
        Adagrad::default().into(),
        RmsProp {
            momentum: 0.5,
            centered: true,
            ..RmsProp::default()
        }
        .into(),
        Adam {
            amsgrad: true,
            ..Adam::default()
        }
        .into(),
        AdamW::default().into(),
    ];
    let mut count = 0;
    for config in configs {
        let kind = config.kind();
        let mut cpu = CpuOptimizer::new(config.clone(), params).unwrap();
        let mut gpu = GpuOptimizer::with_options(
            ctx(),
            config.clone(),
            params,
            GpuOptions {
                max_chunk_elements: Some(64),
                ..GpuOptions::default()
            },
        )
        .unwrap();
        // Two good steps first, so that there is state to spoil.
        for _ in 0..2 {
            cpu.step(good).unwrap();
            gpu.step(good).unwrap();
        }
        let before_cpu = snapshot_cpu(&cpu);
        let before_gpu = snapshot_gpu(&gpu);
        // CPU and GPU agree up to rounding (a real GPU may fuse a·b + c and
        // round WGSL's division and sqrt within 2.5 ulp: bit equality holds
        // on lavapipe, not on an NVIDIA card); what this test is about is
        // each optimizer against itself, below.
        assert_close(
            &before_cpu,
            &before_gpu,
            &format!("{kind}: before the test"),
        );
        for (what, grads, want) in &bad {
            assert_eq!(
                cpu.step(grads).unwrap_err(),
                *want,
                "{kind} cpu step: {what}"
            );
            assert_eq!(
                gpu.step(grads).unwrap_err(),
                *want,
                "{kind} gpu step: {what}"
            );
            assert_eq!(
                gpu.write_grads(grads).unwrap_err(),
                *want,
                "{kind} gpu write_grads: {what}"
            );
            assert_eq!(
                gpu.write_params(grads).unwrap_err(),
                *want,
                "{kind} gpu write_params: {what}"
            );
            count += 4;
        }
        let flat_short = [0.0f32; 7];
        assert_eq!(
            cpu.step_flat(&flat_short).unwrap_err(),
            Error::LengthMismatch {
                tensor: usize::MAX,
                expected: 8,
                got: 7
            }
        );
        count += 1;
        assert_eq!(
            snapshot_cpu(&cpu),
            before_cpu,
            "{kind}: the CPU optimizer changed"
        );
        assert_eq!(
            snapshot_gpu(&gpu),
            before_gpu,
            "{kind}: the GPU optimizer changed"
        );
        assert_eq!(cpu.step_count(), 2);
        // The gradient buffer was not touched either: a good step still
        // agrees with the CPU.
        cpu.step(good).unwrap();
        gpu.step_device().unwrap_or_else(|e| panic!("{e}"));
        let mut replay = CpuOptimizer::new(config.clone(), params).unwrap();
        let mut gpu_replay = GpuOptimizer::with_options(
            ctx(),
            config.clone(),
            params,
            GpuOptions {
                max_chunk_elements: Some(64),
                ..GpuOptions::default()
            },
        )
        .unwrap();
        for _ in 0..3 {
            replay.step(good).unwrap();
            gpu_replay.step(good).unwrap();
        }
        // The same adapter runs the same kernels the same way: bit for bit.
        assert_eq!(
            snapshot_gpu(&gpu),
            snapshot_gpu(&gpu_replay),
            "{kind}: after the errors"
        );
        assert_eq!(
            snapshot_cpu(&cpu),
            snapshot_cpu(&replay),
            "{kind}: after the errors"
        );
    }
    println!("{count} mismatched-gradient calls refused, nothing changed");
}

/// CPU and GPU snapshots equal up to a few f32 ulp per step: each step
/// rounds at most ~8 operations differently (FMA contraction, WGSL's
/// 2.5-ulp division and sqrt), and the gradients here do not depend on the
/// parameters, so differences add up: |gpu − cpu| ≤ steps·8·ε·max(|x|, 1).
#[track_caller]
fn assert_close(cpu: &Snapshot, gpu: &Snapshot, what: &str) {
    assert_eq!(cpu.steps, gpu.steps, "{what}: step counts");
    let bound = |x: f32| cpu.steps.max(1) as f32 * 8.0 * f32::EPSILON * x.abs().max(1.0);
    let pairs = cpu
        .params
        .iter()
        .zip(&gpu.params)
        .chain(cpu.state.iter().flatten().zip(gpu.state.iter().flatten()));
    assert_eq!(cpu.state.len(), gpu.state.len(), "{what}: state tensors");
    for (a, b) in pairs {
        assert!((a - b).abs() <= bound(*a), "{what}: {a} against {b}");
    }
}

fn buffer(ctx: &GpuContext, bytes: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
    ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("test buffer"),
        size: bytes,
        usage,
        mapped_at_creation: false,
    })
}

const RW: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

#[test]
fn from_buffers_refuses_unusable_buffers() {
    let ctx = ctx();
    let lengths = [10usize, 7];
    let bytes = 17 * 4;
    let config = || Config::from(Sgd::default());
    let copy_only = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;

    let e = GpuOptimizer::from_buffers(
        ctx,
        config(),
        &lengths,
        buffer(ctx, bytes, copy_only),
        buffer(ctx, bytes, RW),
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::BufferUsage { what: "parameter", missing, .. } if missing == "STORAGE"),
        "{e:?}"
    );
    assert!(e.to_string().contains("STORAGE"), "{e}");

    let e = GpuOptimizer::from_buffers(
        ctx,
        config(),
        &lengths,
        buffer(ctx, bytes, RW),
        buffer(ctx, bytes, wgpu::BufferUsages::UNIFORM | copy_only),
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::BufferUsage { what: "gradient", missing, .. } if missing == "STORAGE"),
        "{e:?}"
    );

    let e = GpuOptimizer::from_buffers(
        ctx,
        config(),
        &lengths,
        buffer(ctx, bytes - 4, RW),
        buffer(ctx, bytes, RW),
    )
    .unwrap_err();
    assert_eq!(
        e,
        Error::BufferTooSmall {
            what: "parameter",
            required: 68,
            actual: 64
        }
    );
    assert!(
        e.to_string().contains("68") && e.to_string().contains("64"),
        "{e}"
    );

    let e = GpuOptimizer::from_buffers(
        ctx,
        config(),
        &lengths,
        buffer(ctx, bytes, RW),
        buffer(ctx, 16, RW),
    )
    .unwrap_err();
    assert_eq!(
        e,
        Error::BufferTooSmall {
            what: "gradient",
            required: 68,
            actual: 16
        }
    );

    // One buffer for both.
    let both = buffer(ctx, bytes, RW);
    let e = GpuOptimizer::from_buffers(ctx, config(), &lengths, both.clone(), both).unwrap_err();
    assert!(matches!(e, Error::InvalidOptions(_)), "{e:?}");

    // A bad config is refused before the buffers are looked at.
    let e = GpuOptimizer::from_buffers(
        ctx,
        Sgd {
            lr: f64::NAN,
            ..Sgd::default()
        },
        &lengths,
        buffer(ctx, bytes, RW),
        buffer(ctx, bytes, RW),
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::InvalidHyperparameter { name: "lr", .. }),
        "{e:?}"
    );
}

/// Reads a whole buffer back through a staging buffer.
fn read_back(ctx: &GpuContext, buf: &wgpu::Buffer) -> Vec<f32> {
    let staging = buffer(
        ctx,
        buf.size(),
        wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
    );
    let mut enc = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
    enc.copy_buffer_to_buffer(buf, 0, &staging, 0, buf.size());
    ctx.queue().submit(Some(enc.finish()));
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, |r| r.unwrap());
    ctx.wait().unwrap();
    let out = bytemuck::cast_slice(&staging.slice(..).get_mapped_range().unwrap()).to_vec();
    staging.unmap();
    out
}

#[test]
fn from_buffers_with_a_buffer_of_another_device_is_an_error_not_a_panic() {
    let ours = ctx();
    // A second context: a device of its own.
    let other = common::second_context();
    let n = 16usize;
    let fill = |ctx: &GpuContext, v: f32| {
        let b = buffer(ctx, n as u64 * 4, RW);
        ctx.queue()
            .write_buffer(&b, 0, bytemuck::cast_slice(&vec![v; n]));
        b
    };
    // Bystanders on our device: nothing may step them instead.
    let bystanders: Vec<wgpu::Buffer> = (0..4).map(|i| fill(ours, 100.0 + i as f32)).collect();
    let foreign_params = fill(&other, 7.0);
    let foreign_grads = fill(&other, 1.0);
    let our_params = fill(ours, 7.0);
    let our_grads = fill(ours, 1.0);
    let config = Sgd {
        lr: 0.5,
        ..Sgd::default()
    };
    let attempts = [
        ("parameters", foreign_params.clone(), our_grads.clone()),
        ("gradients", our_params.clone(), foreign_grads.clone()),
        ("both", foreign_params.clone(), foreign_grads.clone()),
    ];
    for (which, params, grads) in attempts {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            GpuOptimizer::from_buffers(ours, config.clone(), &[n], params, grads)
        }));
        let result = result.unwrap_or_else(|_| panic!("{which} of another device: it panicked"));
        match result {
            Err(Error::Validation { message, .. }) => {
                assert!(!message.is_empty());
            }
            Err(e) => panic!("{which} of another device: expected Error::Validation, got {e:?}"),
            Ok(mut opt) => {
                let stepped = opt.step_device();
                panic!(
                    "{which} of another device was accepted (a step then gave {stepped:?}); \
                     bystanders now {:?}",
                    bystanders
                        .iter()
                        .map(|b| read_back(ours, b)[0])
                        .collect::<Vec<_>>()
                );
            }
        }
    }
    // Nothing was stepped anywhere.
    for (i, b) in bystanders.iter().enumerate() {
        assert_eq!(read_back(ours, b), vec![100.0 + i as f32; n]);
    }
    assert_eq!(read_back(&other, &foreign_params), vec![7.0; n]);
    assert_eq!(read_back(ours, &our_params), vec![7.0; n]);
    // Both devices still work.
    let mut a =
        GpuOptimizer::from_buffers(ours, config.clone(), &[n], our_params, our_grads).unwrap();
    a.step_device().unwrap();
    assert_eq!(a.read_params_flat().unwrap(), vec![6.5; n]);
    let mut b =
        GpuOptimizer::from_buffers(&other, config, &[n], foreign_params, foreign_grads).unwrap();
    b.step_device().unwrap();
    assert_eq!(b.read_params_flat().unwrap(), vec![6.5; n]);
}

#[test]
fn unknown_state_names() {
    let params: &[&[f32]] = &[&[1.0, 2.0]];
    let cases: Vec<(Config, &str, &str)> = vec![
        (Sgd::default().into(), "momentum_buffer", ""),
        (Sgd::default().into(), "exp_avg", ""),
        (
            Sgd {
                momentum: 0.9,
                ..Sgd::default()
            }
            .into(),
            "sum",
            "momentum_buffer",
        ),
        (Adagrad::default().into(), "square_avg", "sum"),
        (RmsProp::default().into(), "grad_avg", "square_avg"),
        (RmsProp::default().into(), "momentum_buffer", "square_avg"),
        (
            Adam::default().into(),
            "max_exp_avg_sq",
            "exp_avg, exp_avg_sq",
        ),
        (AdamW::default().into(), "", "exp_avg, exp_avg_sq"),
        (AdamW::default().into(), "EXP_AVG", "exp_avg, exp_avg_sq"),
    ];
    for (config, name, available) in cases {
        let want = Error::UnknownState {
            rule: config.kind().name(),
            name: name.to_string(),
            available: available.to_string(),
        };
        let cpu = CpuOptimizer::new(config.clone(), params).unwrap();
        let gpu = GpuOptimizer::new(ctx(), config.clone(), params).unwrap();
        assert_eq!(cpu.state(name).unwrap_err(), want);
        assert_eq!(cpu.state_flat(name).unwrap_err(), want);
        assert_eq!(gpu.read_state(name).unwrap_err(), want);
        assert_eq!(gpu.read_state_flat(name).unwrap_err(), want);
        let text = want.to_string();
        assert!(text.contains(&format!("`{name}`")), "{text}");
    }
}

#[test]
fn no_adapter_says_what_to_install() {
    let selection = AdapterSelection {
        name: Some("no-such-adapter-xyz".into()),
        ..AdapterSelection::default()
    };
    let e = GpuContext::with_selection(&selection).unwrap_err();
    assert!(matches!(e, Error::NoAdapter { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("mesa-vulkan-drivers"), "{text}");
    assert!(text.contains("no-such-adapter-xyz"), "{text}");
}

// ------------------------------------------------ LAMB and clipping

/// LAMB's `set_lr` and `set_momentum` (`betas[0]`) refuse what its
/// constructor refuses, on both backends, and leave the config unchanged.
#[test]
fn lamb_bad_set_lr_and_set_momentum_leave_the_config_unchanged() {
    let params: &[&[f32]] = &[&[1.0, -1.0, 0.5]];
    let config = Config::from(Lamb::default());
    let mut cpu = CpuOptimizer::new(config.clone(), params).unwrap();
    let mut gpu = GpuOptimizer::new(ctx(), config.clone(), params).unwrap();
    for lr in [-1.0, f64::NAN, f64::INFINITY] {
        for (backend, err) in [
            ("cpu", cpu.set_lr(lr).unwrap_err()),
            ("gpu", gpu.set_lr(lr).unwrap_err()),
        ] {
            check(
                &format!("lamb set_lr({lr})"),
                backend,
                &err,
                &Expect::Hyper("lr", lr),
            );
        }
    }
    for (m, want) in bad_momenta(&config) {
        for (backend, err) in [
            ("cpu", cpu.set_momentum(m).unwrap_err()),
            ("gpu", gpu.set_momentum(m).unwrap_err()),
        ] {
            assert!(
                same_error(&err, &want),
                "lamb set_momentum({m}) {backend}: {err:?}"
            );
        }
    }
    assert_eq!(cpu.config(), &config);
    assert_eq!(gpu.config(), &config);
}

/// `ClipGradNorm` with `max_norm` 0, -0, negative, NaN or ±inf is refused
/// by `validate` and by `set_clip_grad_norm` on both backends with
/// `InvalidHyperparameter { name: "max_norm" }` (with and without
/// `error_if_nonfinite`); the clipping in force, the parameters, the state
/// and the step count stay as they were, and the next step clips as before.
#[test]
fn invalid_clip_grad_norm_is_refused_and_changes_nothing() {
    let params: &[&[f32]] = &[&[1.0, -2.0, 3.0], &[0.5]];
    // Total norm 13 exactly (3-4-12-13): clipped to 2 by the good setting.
    let g: &[&[f32]] = &[&[3.0, 4.0, 0.0], &[12.0]];
    let good = Some(ClipGradNorm::new(2.0));
    let configs: [Config; 3] = [
        Sgd {
            lr: 0.1,
            momentum: 0.9,
            ..Sgd::default()
        }
        .into(),
        Adam::default().into(),
        Lamb::default().into(),
    ];
    let mut count = 0;
    for config in configs {
        let kind = config.kind();
        let new_cpu = || {
            let mut o = CpuOptimizer::new(config.clone(), params).unwrap();
            o.set_clip_grad_norm(good).unwrap();
            o
        };
        let new_gpu = || {
            let mut o = GpuOptimizer::new(ctx(), config.clone(), params).unwrap();
            o.set_clip_grad_norm(good).unwrap();
            o
        };
        let (mut cpu, mut gpu) = (new_cpu(), new_gpu());
        cpu.step(g).unwrap();
        gpu.step(g).unwrap();
        let (before_cpu, before_gpu) = (snapshot_cpu(&cpu), snapshot_gpu(&gpu));
        for v in [0.0, -0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            for error_if_nonfinite in [false, true] {
                let bad = ClipGradNorm {
                    max_norm: v,
                    error_if_nonfinite,
                };
                let what = format!("{kind} {bad:?}");
                let expect = Expect::Hyper("max_norm", v);
                check(&what, "validate", &bad.validate().unwrap_err(), &expect);
                let e = cpu.set_clip_grad_norm(Some(bad)).unwrap_err();
                check(&what, "cpu", &e, &expect);
                let e = gpu.set_clip_grad_norm(Some(bad)).unwrap_err();
                check(&what, "gpu", &e, &expect);
                assert_eq!(cpu.clip_grad_norm(), good, "{what}: cpu clipping changed");
                assert_eq!(gpu.clip_grad_norm(), good, "{what}: gpu clipping changed");
                count += 3;
            }
        }
        assert_eq!(snapshot_cpu(&cpu), before_cpu, "{kind}: cpu changed");
        assert_eq!(snapshot_gpu(&gpu), before_gpu, "{kind}: gpu changed");
        // The next step clips to 2 as before: as two steps of a fresh one.
        cpu.step(g).unwrap();
        gpu.step(g).unwrap();
        let (mut cpu2, mut gpu2) = (new_cpu(), new_gpu());
        for _ in 0..2 {
            cpu2.step(g).unwrap();
            gpu2.step(g).unwrap();
        }
        assert_eq!(snapshot_cpu(&cpu), snapshot_cpu(&cpu2), "{kind}: cpu");
        assert_eq!(snapshot_gpu(&gpu), snapshot_gpu(&gpu2), "{kind}: gpu");
        assert_eq!(cpu.last_grad_norm(), Some(13.0));
        // The sum 169 is exact in f32; WGSL's sqrt is not correctly rounded
        // (about 4.5 ulp at worst).
        let norm = gpu.last_grad_norm().unwrap().unwrap();
        assert!(
            (norm - 13.0).abs() <= 4.5 * f32::EPSILON * 13.0,
            "{kind}: {norm}"
        );
    }
    println!("{count} invalid ClipGradNorm values refused, nothing changed");
}
