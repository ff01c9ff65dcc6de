//! Every way to misuse the library returns the typed error that names what
//! is wrong and the offending value, on the CPU and the GPU alike, and a
//! call that fails changes nothing: no parameter, no state, no step count,
//! no hyperparameter.
//!
//! Needs a GPU adapter: without one the GPU tests fail with
//! [`Error::NoAdapter`]'s text, which says what to install.

mod common;
use common::cases::{self, ErrorInput, Expect};
use common::{ctx, params_flat, snapshot, Backend, Snapshot};
use wgpu_optim::{
    Adagrad, Adam, AdamW, AdapterSelection, ClipGradNorm, Config, CpuOptimizer, Error, GpuContext,
    GpuOptimizer, GpuOptions, Optimizer, RmsProp, Sgd,
};

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

/// The table: every invalid hyperparameter and option combination of every
/// rule (tests/common/cases.rs, `error_inputs`).
fn cases() -> Vec<ErrorInput> {
    cases::table()
        .into_iter()
        .flat_map(|r| r.error_inputs)
        .collect()
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
                Ok(_) => panic!("{}: the CPU optimizer accepted it", case.desc),
            }),
            "{}: Config::validate and CpuOptimizer::new disagree",
            case.desc
        );
        let cpu = CpuOptimizer::new(case.config.clone(), params).unwrap_err();
        check(&case.desc, "cpu", &cpu, &case.expect);
        let gpu = match GpuOptimizer::new(ctx(), case.config.clone(), params) {
            Err(e) => e,
            Ok(_) => panic!("{}: the GPU optimizer accepted it", case.desc),
        };
        check(&case.desc, "gpu", &gpu, &case.expect);
        // (`Error`'s `==` follows f64's, NaN != NaN: compare the messages.)
        assert_eq!(
            cpu.to_string(),
            gpu.to_string(),
            "{}: CPU and GPU give different errors",
            case.desc
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

/// Every configuration of the table alone: each rule with and (SGD,
/// RMSprop) without what `set_momentum` needs.
fn setter_configs() -> Vec<Config> {
    cases::plain().into_iter().map(|i| i.config).collect()
}

/// Whether `set_momentum` can set this optimizer's momentum: the rule has
/// one and, where the rule needs a buffer for it, was built with one.
fn has_momentum(config: &Config) -> bool {
    match cases::info(config.kind()).momentum {
        None => false,
        Some(m) => !m.needs_buffer || config.momentum() != Some(0.0),
    }
}

/// The values `set_momentum` must refuse for this rule, with the error.
fn bad_momenta(config: &Config) -> Vec<(f64, Error)> {
    let rule = config.kind();
    match cases::info(rule).momentum {
        Some(m) if has_momentum(config) => m
            .bad
            .iter()
            .map(|&value| {
                let e = Error::InvalidHyperparameter {
                    name: m.name,
                    value,
                    reason: "",
                };
                (value, e)
            })
            .collect(),
        _ => vec![(0.5, Error::NoMomentum { rule: rule.name() })],
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
        let backends = Backend::both(GpuOptions::default());
        let mut opts: Vec<(&str, Box<dyn Optimizer>)> = backends
            .iter()
            .map(|b| (b.name(), b.build(config.clone(), params).unwrap()))
            .collect();
        for lr in [-1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            for (backend, opt) in &mut opts {
                let err = opt.set_lr(lr).expect_err("a bad lr must be refused");
                let after = opt.config().clone();
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
            for (backend, opt) in &mut opts {
                let err = opt
                    .set_momentum(m)
                    .expect_err("a bad momentum must be refused");
                let after = opt.config().clone();
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
        if let (true, Some(m)) = (has_momentum(&config), config.momentum()) {
            for (backend, opt) in &mut opts {
                let (down, up) = (opt.set_momentum(0.0), opt.set_momentum(m));
                assert_eq!(down, Ok(()), "{:?} {backend}: momentum -> 0", config.kind());
                assert_eq!(
                    up,
                    Ok(()),
                    "{:?} {backend}: momentum 0 -> {m}",
                    config.kind()
                );
                assert_eq!(opt.config(), &config);
            }
        }
        // And the optimizers still step as a fresh one does.
        let mut fresh = CpuOptimizer::new(config.clone(), params).unwrap();
        let g: &[&[f32]] = &[&[0.25, -0.5, 1.0]];
        fresh.step(g).unwrap();
        for (backend, opt) in &mut opts {
            opt.step(g).unwrap();
            assert_eq!(
                params_flat(&**opt),
                fresh.params_flat(),
                "{:?} {backend}",
                config.kind()
            );
        }
    }
    let no_momentum = CpuOptimizer::new(Sgd::default(), params)
        .unwrap()
        .set_momentum(0.9)
        .unwrap_err();
    assert_eq!(no_momentum, Error::NoMomentum { rule: "sgd" });
    assert!(no_momentum.to_string().contains("momentum = 0"));
    println!("{count} refused set_lr / set_momentum calls, config unchanged after each");
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
    // Every configuration of the table alone (tests/common/cases.rs).
    let configs: Vec<Config> = cases::plain().into_iter().map(|i| i.config).collect();
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
        let before_cpu = snapshot(&cpu);
        let before_gpu = snapshot(&gpu);
        // CPU and GPU agree up to rounding (a real GPU may fuse a·b + c and
        // round WGSL's division and sqrt within 2.5 ulp: bit equality holds
        // on lavapipe, not on an NVIDIA card); what this test is about is
        // each optimizer against itself, below.
        assert_close(
            &before_cpu,
            &before_gpu,
            &format!("{kind}: before the test"),
            cases::info(kind).gpu_k.0 as f32,
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
            snapshot(&cpu),
            before_cpu,
            "{kind}: the CPU optimizer changed"
        );
        assert_eq!(
            snapshot(&gpu),
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
            snapshot(&gpu),
            snapshot(&gpu_replay),
            "{kind}: after the errors"
        );
        assert_eq!(
            snapshot(&cpu),
            snapshot(&replay),
            "{kind}: after the errors"
        );
    }
    println!("{count} mismatched-gradient calls refused, nothing changed");
}

/// CPU and GPU snapshots equal up to a few f32 ulp per step: each step
/// rounds at most ~8 operations differently (FMA contraction, WGSL's
/// 2.5-ulp division and sqrt), and the gradients here do not depend on the
/// parameters, so differences add up: |gpu − cpu| ≤ steps·K·ε·max(|x|, 1),
/// `K = 8` for an element-wise rule, the rule's parameter `K` otherwise
/// (LAMB's trust ratio; `gpu_k` in tests/common/cases.rs).
#[track_caller]
fn assert_close(cpu: &Snapshot, gpu: &Snapshot, what: &str, k: f32) {
    assert_eq!(cpu.steps, gpu.steps, "{what}: step counts");
    let bound = |x: f32| cpu.steps.max(1) as f32 * k * f32::EPSILON * x.abs().max(1.0);
    let (cp, gp) = (cpu.param_values(), gpu.param_values());
    let (cs, gs) = (cpu.state_values(), gpu.state_values());
    assert_eq!(cpu.state.len(), gpu.state.len(), "{what}: state tensors");
    assert_eq!(cs.len(), gs.len(), "{what}: state elements");
    for (a, b) in cp.iter().zip(&gp).chain(cs.iter().zip(&gs)) {
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
    // Every configuration the table clips (tests/common/cases.rs).
    let configs: Vec<Config> = cases::clipping().into_iter().map(|i| i.config).collect();
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
        let (before_cpu, before_gpu) = (snapshot(&cpu), snapshot(&gpu));
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
        assert_eq!(snapshot(&cpu), before_cpu, "{kind}: cpu changed");
        assert_eq!(snapshot(&gpu), before_gpu, "{kind}: gpu changed");
        // The next step clips to 2 as before: as two steps of a fresh one.
        cpu.step(g).unwrap();
        gpu.step(g).unwrap();
        let (mut cpu2, mut gpu2) = (new_cpu(), new_gpu());
        for _ in 0..2 {
            cpu2.step(g).unwrap();
            gpu2.step(g).unwrap();
        }
        assert_eq!(snapshot(&cpu), snapshot(&cpu2), "{kind}: cpu");
        assert_eq!(snapshot(&gpu), snapshot(&gpu2), "{kind}: gpu");
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
