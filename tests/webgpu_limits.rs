//! The library on devices the caller makes (`GpuContext::from_device`) with
//! limits below the adapter's:
//!
//! * on WebGPU's default limits (`wgpu::Limits::default()`, what wgpu's own
//!   examples request: 8 storage buffers a stage, 128 MiB a binding), every
//!   rule and option combination builds and steps, from host slices and
//!   from the caller's buffers;
//! * on a device below what a kernel needs, the call that needs the kernel
//!   (construction for the rule's kernel, turning clipping or
//!   `skip_nonfinite` on, or restoring a checkpoint with them, for the
//!   reduction) returns `Error::DeviceLimit` naming the limit and changes
//!   nothing; never a wgpu validation error, never a panic;
//! * and the GPU test files run a second time, as modules of this binary,
//!   on a `Limits::default()` device: tests/common's `ctx()` makes that
//!   device here (it looks at the crate name).

// Each test file below declares `mod common;` as its own module, as it
// does as a binary of its own.
#![allow(clippy::duplicate_mod)]

mod common;

// The GPU test tier on `wgpu::Limits::default()`. Chosen: the files that
// step every kernel (gpu_vs_cpu, lamb_clip: every rule and option against
// the CPU; golden: against PyTorch), the ones that turn the reduction on
// and off (nonfinite, checkpoint, setter_sequences, recorded_steps,
// scalar_state), the matrix rules' products and reductions (matrix_gpu),
// the 8-bit state's kernel (precision_gpu) and the error paths (errors,
// bad_input). The rest (behaviour, schedule,
// faults, train, large_model) drive the same kernels through the same
// calls, and would add minutes on CI's 2 cores.
#[path = "bad_input.rs"]
mod bad_input;
#[path = "checkpoint.rs"]
mod checkpoint;
#[path = "errors.rs"]
mod errors;
#[path = "golden.rs"]
mod golden;
#[path = "gpu_vs_cpu.rs"]
mod gpu_vs_cpu;
#[path = "lamb_clip.rs"]
mod lamb_clip;
#[path = "matrix_gpu.rs"]
mod matrix_gpu;
#[path = "nonfinite.rs"]
mod nonfinite;
#[path = "precision_gpu.rs"]
mod precision_gpu;
#[path = "recorded_steps.rs"]
mod recorded_steps;
#[path = "scalar_state.rs"]
mod scalar_state;
#[path = "setter_sequences.rs"]
mod setter_sequences;
#[path = "views.rs"]
mod views;

use common::cases::{self, Kernel};
use common::{device_with_limits, Envelope, Rng};
use wgpu_optim::checkpoint::Checkpoint;
use wgpu_optim::{
    Adam, ClipGradNorm, Config, CpuOptimizer, Error, GpuContext, GpuOptimizer, GpuOptions,
    RuleKind, Sgd, TensorView,
};

/// Tensors of mixed lengths (an empty one, one shorter than a vec4, ones
/// around the 64-element chunk alignment); 1368 elements in all, a
/// multiple of 4, so the caller's buffers take the vec4 kernels too.
const LENGTHS: &[usize] = &[300, 0, 5, 63, 1000];
const STEPS: usize = 3;

/// Every rule, with each set of state tensors (and so of bindings) it can
/// have: the table's [`cases::variants`].
fn configs() -> Vec<(String, Config)> {
    cases::table_rules()
        .flat_map(cases::variants)
        .map(|i| (i.desc, i.config))
        .collect()
}

/// Storage buffers each rule's own kernel binds (the table's
/// [`cases::Kernel`]).
fn storage_buffers(kind: RuleKind) -> u64 {
    cases::info(kind).kernel.storage_buffers()
}

/// Whether the rule runs LAMB's tile kernels.
fn tiled(kind: RuleKind) -> bool {
    cases::info(kind).kernel == Kernel::Tiled
}

/// Storage buffers of the reduction (clipping, `skip_nonfinite`).
const REDUCTION_STORAGE_BUFFERS: u64 = 8;

fn webgpu() -> &'static GpuContext {
    common::ctx()
}

/// How an optimizer gets its parameters.
#[derive(Clone, Copy, Debug)]
enum Source {
    Host,
    CallersBuffers,
}

fn build(
    ctx: &GpuContext,
    config: &Config,
    params: &[Vec<f32>],
    source: Source,
    options: GpuOptions,
) -> Result<GpuOptimizer, Error> {
    let refs: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
    match source {
        Source::Host => GpuOptimizer::with_options(ctx, config.clone(), &refs, options),
        Source::CallersBuffers => {
            let flat: Vec<f32> = params.concat();
            let make = |label: &str| {
                ctx.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: (flat.len().max(1) * 4) as u64,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_DST
                        | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                })
            };
            let (p, g) = (make("caller's params"), make("caller's grads"));
            ctx.queue().write_buffer(&p, 0, bytemuck::cast_slice(&flat));
            let lengths: Vec<usize> = params.iter().map(|p| p.len()).collect();
            GpuOptimizer::from_buffers_with_options(ctx, config.clone(), &lengths, p, g, options)
        }
    }
}

fn tensors(rng: &mut Rng, lengths: &[usize]) -> Vec<Vec<f32>> {
    lengths.iter().map(|&n| rng.vec(n)).collect()
}

/// Steps a GPU optimizer and its CPU twin `STEPS` times with the same
/// gradients (with `skip_nonfinite`, the second one holds a NaN) and checks
/// the parameters agree.
///
/// Tolerance: this is not the precision test (gpu_vs_cpu and lamb_clip
/// argue the tight bounds, and run on this device as modules of this
/// binary); it shows the kernels ran, each chunk once, and computed the
/// same update. `1e-3·scale` (scale: the element's largest magnitude or
/// the distance it travelled, whichever is larger) is far above the
/// rounding of 3 steps (each at most ~8 roundings of ε = 1.2e-7, and the
/// clipping and trust-ratio norms of ≤ 1368 elements summed in another
/// order: ≤ 1368·ε ≈ 1.6e-4 relative on the update), and far below what
/// a missing or doubled update does: with lr = 0.05 (0.01 for RMSprop) an
/// update moves an element by about lr, over 10× the tolerance of an
/// element of magnitude ≤ 1.
fn steps_like_the_cpu(
    what: &str,
    gpu: &mut GpuOptimizer,
    cpu: &mut CpuOptimizer,
    lengths: &[usize],
    seed: u64,
) {
    let mut rng = Rng(seed);
    let mut env = Envelope::new(cpu.params_flat());
    let skipping = cpu.skip_nonfinite();
    for step in 0..STEPS {
        let mut grads = tensors(&mut rng, lengths);
        if skipping && step == 1 {
            grads[0][7] = f32::NAN;
        }
        let refs: Vec<&[f32]> = grads.iter().map(|g| g.as_slice()).collect();
        let (c, g) = (cpu.step(&refs), gpu.step(&refs));
        assert_eq!(c.is_ok(), g.is_ok(), "{what} step {step}: {c:?} vs {g:?}");
        env.update(cpu.params_flat());
    }
    if skipping {
        assert_eq!(gpu.skipped_steps().unwrap(), 1, "{what}");
    }
    assert_eq!(gpu.step_count(), cpu.step_count(), "{what}");
    let got = gpu.read_params_flat().unwrap();
    for (i, (a, b)) in got.iter().zip(cpu.params_flat()).enumerate() {
        let tol = 1e-3 * env.scale(i);
        assert!(
            (a - b).abs() as f64 <= tol,
            "{what}: element {i}: GPU {a}, CPU {b}"
        );
    }
}

#[test]
fn from_device_reports_the_devices_limits_not_the_adapters() {
    let limits = webgpu().limits();
    let d = wgpu::Limits::default();
    assert_eq!(limits.max_storage_buffers_per_shader_stage, 8);
    assert_eq!(
        limits.max_storage_buffer_binding_size,
        d.max_storage_buffer_binding_size
    );
    assert_eq!(limits.max_buffer_size, d.max_buffer_size);
    assert_eq!(
        limits.max_compute_workgroup_storage_size,
        d.max_compute_workgroup_storage_size
    );
}

/// Every rule with every option combination that changes which kernels run
/// (clipping off, on, with `error_if_nonfinite`; `skip_nonfinite` off and
/// on), on `Limits::default()`, from host slices and from the caller's
/// buffers, with the vec4 kernels in one chunk and the f32 kernels in
/// chunks of 128 elements.
#[test]
fn every_rule_and_option_steps_on_webgpu_default_limits() {
    let ctx = webgpu();
    let clips = [
        None,
        Some(ClipGradNorm::new(0.5)),
        Some(ClipGradNorm {
            max_norm: 0.5,
            error_if_nonfinite: true,
        }),
    ];
    let layouts = [
        (None, None),
        (Some(1), Some(128)), // f32 kernels, 11 chunks
    ];
    let mut seed = 1;
    let mut runs = 0;
    for (name, config) in configs() {
        for clip in clips {
            for skip in [false, true] {
                for (width, chunk) in layouts {
                    for source in [Source::Host, Source::CallersBuffers] {
                        seed += 1;
                        let what = format!(
                            "{name}, clip {clip:?}, skip {skip}, width {width:?}, \
                             chunk {chunk:?}, {source:?}"
                        );
                        let params = tensors(&mut Rng(seed), LENGTHS);
                        let options = GpuOptions {
                            max_chunk_elements: chunk,
                            vector_width: width,
                            ..GpuOptions::default()
                        };
                        let mut gpu = build(ctx, &config, &params, source, options)
                            .unwrap_or_else(|e| panic!("{what}: {e}"));
                        let refs: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
                        let mut cpu = CpuOptimizer::new(config.clone(), &refs).unwrap();
                        gpu.set_clip_grad_norm(clip)
                            .unwrap_or_else(|e| panic!("{what}: {e}"));
                        cpu.set_clip_grad_norm(clip).unwrap();
                        gpu.set_skip_nonfinite(skip)
                            .unwrap_or_else(|e| panic!("{what}: {e}"));
                        cpu.set_skip_nonfinite(skip);
                        steps_like_the_cpu(&what, &mut gpu, &mut cpu, LENGTHS, seed * 7);
                        runs += 1;
                    }
                }
            }
        }
    }
    assert_eq!(runs, configs().len() * 3 * 2 * 2 * 2);
}

/// Views (`from_views`) on `Limits::default()`: every element-wise rule
/// with each of its state sets (the view kernel binds one storage buffer
/// more than the packed one, its tile table: 8 with three state slots),
/// with clipping and `skip_nonfinite` off and on, over tensors at
/// 256-byte offsets in two parameter and two gradient buffers, steps as
/// the CPU does; LAMB is refused as unsupported.
#[test]
fn every_rule_steps_on_views_on_webgpu_default_limits() {
    let ctx = webgpu();
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
    let pool = |label: &str| {
        ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: 16 << 10,
            usage,
            mapped_at_creation: false,
        })
    };
    let (p, g) = ([pool("p0"), pool("p1")], [pool("g0"), pool("g1")]);
    // Tensor i in pool i % 2, 256-byte aligned after the one before.
    let place = |pools: &[wgpu::Buffer; 2], shift: u64| -> Vec<TensorView> {
        let mut ends = [shift; 2];
        LENGTHS
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let at = ends[i % 2].div_ceil(256) * 256;
                ends[i % 2] = at + n as u64 * 4;
                TensorView::new(pools[i % 2].clone(), at, n)
            })
            .collect()
    };
    let mut seed = 500;
    let mut runs = 0;
    for (name, config) in configs() {
        let built = GpuOptimizer::from_views(ctx, config.clone(), place(&p, 0), place(&g, 256));
        if tiled(config.kind()) {
            assert!(matches!(built, Err(Error::Unsupported(_))), "{name}");
            continue;
        }
        drop(built);
        for clip in [None, Some(ClipGradNorm::new(0.5))] {
            for skip in [false, true] {
                seed += 1;
                let what = format!("{name} on views, clip {clip:?}, skip {skip}");
                let params = tensors(&mut Rng(seed), LENGTHS);
                let refs: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
                let mut gpu =
                    GpuOptimizer::from_views(ctx, config.clone(), place(&p, 0), place(&g, 256))
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                gpu.write_params(&refs).unwrap();
                let mut cpu = CpuOptimizer::new(config.clone(), &refs).unwrap();
                gpu.set_clip_grad_norm(clip)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                cpu.set_clip_grad_norm(clip).unwrap();
                gpu.set_skip_nonfinite(skip)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                cpu.set_skip_nonfinite(skip);
                steps_like_the_cpu(&what, &mut gpu, &mut cpu, LENGTHS, seed * 7);
                runs += 1;
            }
        }
    }
    assert!(runs > 0);
}

/// A device with `max_storage_buffers_per_shader_stage` from 4 to 8: a rule
/// whose kernel needs more refuses to build, naming the limit; one that
/// fits builds, refuses clipping, `skip_nonfinite` and a checkpoint with
/// either when the reduction does not fit (nothing changed: it steps on as
/// the CPU does), and takes them when it does.
#[test]
fn fewer_storage_buffers_give_the_typed_error_naming_the_limit() {
    for available in 4..=8u32 {
        let ctx = device_with_limits(|_| wgpu::Limits {
            max_storage_buffers_per_shader_stage: available,
            ..wgpu::Limits::default()
        });
        for (name, config) in configs() {
            let what = format!("{name} with {available} storage buffers");
            let needed = storage_buffers(config.kind());
            let params = tensors(&mut Rng(available as u64), LENGTHS);
            for source in [Source::Host, Source::CallersBuffers] {
                let built = build(&ctx, &config, &params, source, GpuOptions::default());
                if needed > available as u64 {
                    match built {
                        Err(Error::DeviceLimit {
                            limit: "max_storage_buffers_per_shader_stage",
                            needed: n,
                            available: a,
                            ..
                        }) => assert_eq!((n, a), (needed, available as u64), "{what}"),
                        other => panic!("{what}: expected DeviceLimit, got {other:?}"),
                    }
                    continue;
                }
                let mut gpu = built.unwrap_or_else(|e| panic!("{what}: {e}"));
                let refs: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
                let mut cpu = CpuOptimizer::new(config.clone(), &refs).unwrap();
                let fits = REDUCTION_STORAGE_BUFFERS <= available as u64;
                let refused = |r: Result<(), Error>, call: &str| match r {
                    Ok(()) => assert!(fits, "{what}: {call} should be refused"),
                    Err(Error::DeviceLimit {
                        limit: "max_storage_buffers_per_shader_stage",
                        needed: 8,
                        ..
                    }) => assert!(!fits, "{what}: {call} refused"),
                    Err(e) => panic!("{what}: {call}: {e:?}"),
                };
                // A checkpoint with both on, restored: refused before
                // anything is written where the reduction does not fit.
                let mut ckpt = Checkpoint::new(config.clone(), LENGTHS).unwrap();
                ckpt.step = 5;
                ckpt.clip = Some(ClipGradNorm::new(1.0));
                ckpt.skip_nonfinite = true;
                let r = gpu.load_checkpoint(&ckpt);
                refused(r, "load_checkpoint");
                if !fits {
                    assert_eq!(gpu.step_count(), 0, "{what}");
                    assert_eq!(gpu.clip_grad_norm(), None, "{what}");
                    assert!(!gpu.skip_nonfinite(), "{what}");
                    assert_eq!(gpu.read_params_flat().unwrap(), params.concat(), "{what}");
                } else {
                    // A fresh one for the comparison below.
                    assert_eq!(gpu.step_count(), 5, "{what}");
                    gpu = build(&ctx, &config, &params, source, GpuOptions::default()).unwrap();
                }
                refused(
                    gpu.set_clip_grad_norm(Some(ClipGradNorm::new(1.0))),
                    "clipping",
                );
                refused(gpu.set_skip_nonfinite(true), "skip_nonfinite");
                assert_eq!(gpu.clip_grad_norm().is_some(), fits, "{what}");
                assert_eq!(gpu.skip_nonfinite(), fits, "{what}");
                cpu.set_clip_grad_norm(gpu.clip_grad_norm()).unwrap();
                cpu.set_skip_nonfinite(fits);
                steps_like_the_cpu(&what, &mut gpu, &mut cpu, LENGTHS, 99);
            }
        }
    }
}

/// Workgroup limits: every kernel runs 256 invocations a workgroup, and
/// the tile kernels (LAMB, the reduction) use 2052 bytes of workgroup
/// memory; below that, the typed error naming the limit. Few workgroups
/// per dimension only make the grid-stride loops go round more often.
#[test]
fn workgroup_limits_below_the_kernels_give_the_typed_error() {
    let params = tensors(&mut Rng(3), LENGTHS);
    let expect =
        |ctx: &GpuContext, config: &Config, limit: &str, needed: u64, what: &str| match build(
            ctx,
            config,
            &params,
            Source::Host,
            GpuOptions::default(),
        ) {
            Err(Error::DeviceLimit {
                limit: l,
                needed: n,
                ..
            }) if l == limit && n == needed => {}
            other => panic!("{what}: expected DeviceLimit {limit}, got {other:?}"),
        };
    for (limit, small) in [
        (
            "max_compute_invocations_per_workgroup",
            wgpu::Limits {
                max_compute_invocations_per_workgroup: 128,
                ..wgpu::Limits::default()
            },
        ),
        (
            "max_compute_workgroup_size_x",
            wgpu::Limits {
                max_compute_workgroup_size_x: 255,
                ..wgpu::Limits::default()
            },
        ),
    ] {
        let ctx = device_with_limits(|_| small);
        for (name, config) in configs() {
            expect(&ctx, &config, limit, 256, &name);
        }
    }

    // Workgroup memory: just enough for the tile kernels, and 4 bytes less.
    for (bytes, fits) in [(2052, true), (2048, false)] {
        let ctx = device_with_limits(|_| wgpu::Limits {
            max_compute_workgroup_storage_size: bytes,
            ..wgpu::Limits::default()
        });
        for (name, config) in configs() {
            let what = format!("{name} with {bytes} bytes of workgroup memory");
            let lamb = tiled(config.kind());
            if lamb && !fits {
                expect(
                    &ctx,
                    &config,
                    "max_compute_workgroup_storage_size",
                    2052,
                    &what,
                );
                continue;
            }
            let refs: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
            let mut gpu = GpuOptimizer::new(&ctx, config.clone(), &refs)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let mut cpu = CpuOptimizer::new(config.clone(), &refs).unwrap();
            match gpu.set_skip_nonfinite(true) {
                Ok(()) => assert!(fits, "{what}"),
                Err(Error::DeviceLimit {
                    limit: "max_compute_workgroup_storage_size",
                    needed: 2052,
                    ..
                }) => assert!(!fits, "{what}"),
                Err(e) => panic!("{what}: {e:?}"),
            }
            cpu.set_skip_nonfinite(fits);
            steps_like_the_cpu(&what, &mut gpu, &mut cpu, LENGTHS, 5);
        }
    }

    // Two workgroups per dimension: every dispatch is clamped to two, and
    // the kernels still cover every element and every tile.
    let ctx = device_with_limits(|_| wgpu::Limits {
        max_compute_workgroups_per_dimension: 2,
        ..wgpu::Limits::default()
    });
    for (name, config) in configs() {
        let what = format!("{name} with 2 workgroups per dimension");
        let refs: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
        let mut gpu = GpuOptimizer::new(&ctx, config.clone(), &refs).unwrap();
        let mut cpu = CpuOptimizer::new(config.clone(), &refs).unwrap();
        gpu.set_clip_grad_norm(Some(ClipGradNorm::new(0.5)))
            .unwrap();
        cpu.set_clip_grad_norm(Some(ClipGradNorm::new(0.5)))
            .unwrap();
        gpu.set_skip_nonfinite(true).unwrap();
        cpu.set_skip_nonfinite(true);
        steps_like_the_cpu(&what, &mut gpu, &mut cpu, LENGTHS, 6);
    }
}

/// Tiny storage bindings: 256 bytes (the least a chunk can be, 64
/// elements) splits the model into 22 chunks, and every rule with clipping
/// and skipping steps as the CPU; 128 bytes cannot hold a chunk (typed
/// error naming the limit, for the optimizer's buffers and the caller's);
/// and a model whose tile table cannot fit one binding is `TooLarge`
/// naming the binding limit, not a wgpu validation error.
#[test]
fn tiny_storage_bindings_chunk_or_give_the_typed_error() {
    let ctx = device_with_limits(|_| wgpu::Limits {
        max_storage_buffer_binding_size: 256,
        ..wgpu::Limits::default()
    });
    let params = tensors(&mut Rng(11), LENGTHS);
    let refs: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
    for (name, config) in configs() {
        for source in [Source::Host, Source::CallersBuffers] {
            let what = format!("{name} in 256-byte bindings, {source:?}");
            let mut gpu = build(&ctx, &config, &params, source, GpuOptions::default())
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let rule = if tiled(config.kind()) { 2 * 22 + 1 } else { 22 };
            assert_eq!(gpu.dispatches_per_step(), rule, "{what}");
            let mut cpu = CpuOptimizer::new(config.clone(), &refs).unwrap();
            gpu.set_clip_grad_norm(Some(ClipGradNorm::new(0.5)))
                .unwrap();
            cpu.set_clip_grad_norm(Some(ClipGradNorm::new(0.5)))
                .unwrap();
            gpu.set_skip_nonfinite(true).unwrap();
            cpu.set_skip_nonfinite(true);
            steps_like_the_cpu(&what, &mut gpu, &mut cpu, LENGTHS, 12);
        }
    }

    // 40 one-element tensors in the first 64-element chunk: its tile table
    // (a header, 20 entries of tensor spans, 40 tiles) is 976 bytes.
    let many: Vec<Vec<f32>> = (0..40).map(|i| vec![i as f32]).collect();
    for source in [Source::Host, Source::CallersBuffers] {
        match build(
            &ctx,
            &Sgd::default().into(),
            &many,
            source,
            GpuOptions::default(),
        ) {
            Err(Error::TooLarge(m)) => {
                assert!(m.contains("max_storage_buffer_binding_size"), "{m}")
            }
            other => panic!("{source:?}: expected TooLarge, got {other:?}"),
        }
    }

    let ctx = device_with_limits(|_| wgpu::Limits {
        max_storage_buffer_binding_size: 128,
        ..wgpu::Limits::default()
    });
    for source in [Source::Host, Source::CallersBuffers] {
        match build(
            &ctx,
            &Adam::default().into(),
            &params,
            source,
            GpuOptions::default(),
        ) {
            Err(Error::DeviceLimit {
                limit: "max_storage_buffer_binding_size",
                needed: 256,
                available: 128,
                ..
            }) => {}
            other => panic!("{source:?}: expected DeviceLimit, got {other:?}"),
        }
    }
}

/// The error's text names the limit, the need and the device's value.
#[test]
fn the_device_limit_error_says_what_to_change() {
    let ctx = device_with_limits(|_| wgpu::Limits {
        max_storage_buffers_per_shader_stage: 7,
        ..wgpu::Limits::default()
    });
    let mut gpu = GpuOptimizer::new(&ctx, Adam::default(), &[&[1.0; 8]]).unwrap();
    let e = gpu
        .set_clip_grad_norm(Some(ClipGradNorm::new(1.0)))
        .unwrap_err();
    let text = e.to_string();
    for part in ["max_storage_buffers_per_shader_stage", "8", "7", "clipping"] {
        assert!(text.contains(part), "{text}");
    }
}
