//! Non-finite gradients and loss scaling. With `set_skip_nonfinite(true)` a
//! step whose gradients hold a NaN or an infinity is skipped whole: after
//! skipped steps, every rule (Adam's bias corrections included) goes on bit
//! for bit as a run that never saw those gradients, on the CPU and on the
//! GPU, also when many steps are queued before the host learns which were
//! skipped. A gradient scale applied inside the update equals unscaling by
//! hand. By default NaN propagates, as in PyTorch.
//!
//! Needs a GPU adapter: without one the GPU tests fail with
//! `Error::NoAdapter`'s text, which says what to install.

mod common;
use common::{cases, ctx, Rng};
use wgpu_optim::checkpoint::Checkpoint;
use wgpu_optim::{Adam, ClipGradNorm, Config, CpuOptimizer, Error, GpuOptimizer, GpuOptions, Sgd};

const LENGTHS: [usize; 3] = [29, 1, 70];
const TOTAL: usize = 100;

fn initial() -> Vec<f32> {
    let mut r = Rng(3);
    (0..TOTAL).map(|_| r.next()).collect()
}

fn split(flat: &[f32]) -> Vec<&[f32]> {
    let mut out = Vec::new();
    let mut at = 0;
    for n in LENGTHS {
        out.push(&flat[at..at + n]);
        at += n;
    }
    out
}

/// The gradients of step `k`: finite, or (where `bad(k)`) one element NaN,
/// +inf or −inf, in a tensor that changes with `k`.
fn grads(k: usize) -> Vec<f32> {
    let mut r = Rng(500 + k as u64);
    let mut g: Vec<f32> = (0..TOTAL).map(|_| r.next()).collect();
    if bad(k) {
        let at = [0, 29, 99, 50][k % 4];
        g[at] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][k % 3];
    }
    g
}

/// Steps 2, 5, 6, 7 and 11 have a non-finite gradient.
fn bad(k: usize) -> bool {
    [2, 5, 6, 7, 11].contains(&k)
}

const STEPS: usize = 16;

/// Every configuration of the table (tests/common/cases.rs) without a
/// schedule, with its clipping: (what, config, clipping).
fn cases() -> Vec<(String, Config, Option<ClipGradNorm>)> {
    cases::unscheduled()
        .into_iter()
        .map(|i| (i.desc, i.config, i.clip))
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Parameters, state and step count, as bits.
fn snap(c: &Checkpoint) -> (Vec<u32>, Vec<Vec<u32>>, u64) {
    (
        bits(c.params.as_ref().unwrap()),
        c.state.iter().map(|(_, v)| bits(v)).collect(),
        c.step,
    )
}

fn cpu(config: &Config, clip: Option<ClipGradNorm>) -> CpuOptimizer {
    let p = initial();
    let mut o = CpuOptimizer::new(config.clone(), &split(&p)).unwrap();
    o.set_clip_grad_norm(clip).unwrap();
    o
}

fn gpu(config: &Config, clip: Option<ClipGradNorm>) -> GpuOptimizer {
    let p = initial();
    let mut o = GpuOptimizer::with_options(
        ctx(),
        config.clone(),
        &split(&p),
        GpuOptions {
            max_chunk_elements: Some(64),
            ..GpuOptions::default()
        },
    )
    .unwrap();
    o.set_clip_grad_norm(clip).unwrap();
    o
}

#[test]
fn cpu_skipped_steps_leave_no_trace() {
    for (what, config, clip) in cases() {
        let mut skipping = cpu(&config, clip);
        skipping.set_skip_nonfinite(true);
        let mut clean = cpu(&config, clip);
        for k in 0..STEPS {
            let g = grads(k);
            skipping.step(&split(&g)).unwrap();
            assert_eq!(skipping.last_step_skipped(), bad(k), "{what} step {k}");
            if !bad(k) {
                clean.step(&split(&g)).unwrap();
            }
        }
        let n_bad = (0..STEPS).filter(|&k| bad(k)).count() as u64;
        assert_eq!(skipping.skipped_steps(), n_bad, "{what}");
        assert_eq!(skipping.step_count(), STEPS as u64 - n_bad, "{what}");
        assert_eq!(
            snap(&skipping.checkpoint()),
            snap(&clean.checkpoint()),
            "{what}"
        );
    }
}

/// One step at a time through `step`: the GPU decides, the host never
/// waits; at the end the counts are read and everything matches a clean
/// GPU run bit for bit, and the CPU.
#[test]
fn gpu_skipped_steps_leave_no_trace() {
    for (what, config, clip) in cases() {
        let mut skipping = gpu(&config, clip);
        skipping.set_skip_nonfinite(true).unwrap();
        let mut clean = gpu(&config, clip);
        let mut reference = cpu(&config, clip);
        reference.set_skip_nonfinite(true);
        for k in 0..STEPS {
            let g = grads(k);
            skipping.step(&split(&g)).unwrap();
            reference.step(&split(&g)).unwrap();
            if !bad(k) {
                clean.step(&split(&g)).unwrap();
            }
        }
        let n_bad = (0..STEPS).filter(|&k| bad(k)).count() as u64;
        assert!(!skipping.last_step_skipped().unwrap());
        assert_eq!(skipping.skipped_steps().unwrap(), n_bad, "{what}");
        assert_eq!(skipping.step_count(), STEPS as u64 - n_bad, "{what}");
        let got = skipping.checkpoint().unwrap();
        assert_eq!(got.skipped_steps, n_bad);
        assert!(got.skip_nonfinite);
        assert_eq!(snap(&got), snap(&clean.checkpoint().unwrap()), "{what}");
        let cpu_state = reference.checkpoint();
        assert_eq!(got.step, cpu_state.step);
        // The GPU against the CPU: exact on lavapipe for these rules
        // (tests/gpu_vs_cpu.rs bounds the general case).
        let (a, b) = (snap(&got), snap(&cpu_state));
        let close = |x: &[u32], y: &[u32]| {
            x.iter().zip(y).all(|(&x, &y)| {
                let (x, y) = (f32::from_bits(x), f32::from_bits(y));
                (x - y).abs() <= 1e-5 * y.abs().max(1e-2)
            })
        };
        assert!(close(&a.0, &b.0), "{what}: GPU and CPU parameters differ");
    }
}

/// Up to 32 steps recorded into one encoder, the gradients of each copied
/// into the gradient buffer between them: the GPU meets skipped steps the
/// host has not heard of for many steps in a row, and picks the right bias
/// corrections each time from the table the host sent.
#[test]
fn gpu_many_steps_queued_before_the_host_knows() {
    let steps = 32;
    let bad_at = |k: usize| k % 3 == 1 || (10..16).contains(&k);
    for (what, config, clip) in cases() {
        // One chunk, so one gradient buffer to copy into.
        let p = initial();
        let mut skipping = GpuOptimizer::new(ctx(), config.clone(), &split(&p)).unwrap();
        skipping.set_clip_grad_norm(clip).unwrap();
        skipping.set_skip_nonfinite(true).unwrap();
        let device = ctx().device();
        let sources: Vec<wgpu::Buffer> = (0..steps)
            .map(|k| {
                let mut g = grads(100 + k);
                if bad_at(k) {
                    g[(k * 7) % TOTAL] = f32::NAN;
                }
                let b = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("grads of one step"),
                    size: (TOTAL * 4) as u64,
                    usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                ctx().queue().write_buffer(&b, 0, bytemuck::cast_slice(&g));
                b
            })
            .collect();
        let target = skipping.grad_buffers()[0].clone();
        let mut encoder = device.create_command_encoder(&Default::default());
        for src in &sources {
            encoder.copy_buffer_to_buffer(src, 0, &target, 0, (TOTAL * 4) as u64);
            skipping.record_step(&mut encoder, None).unwrap();
        }
        // A 33rd step cannot be queued before these run.
        let mut extra = device.create_command_encoder(&Default::default());
        let e = skipping.record_step(&mut extra, None).unwrap_err();
        assert!(matches!(e, Error::UnsubmittedSteps { .. }), "{what}: {e:?}");
        ctx().queue().submit(Some(encoder.finish()));
        let n_bad = (0..steps).filter(|&k| bad_at(k)).count() as u64;
        assert_eq!(skipping.skipped_steps().unwrap(), n_bad, "{what}");
        let mut clean = CpuOptimizer::new(config.clone(), &split(&p)).unwrap();
        clean.set_clip_grad_norm(clip).unwrap();
        let mut clean_gpu = GpuOptimizer::new(ctx(), config.clone(), &split(&p)).unwrap();
        clean_gpu.set_clip_grad_norm(clip).unwrap();
        for k in (0..steps).filter(|&k| !bad_at(k)) {
            clean.step(&split(&grads(100 + k))).unwrap();
            clean_gpu.step(&split(&grads(100 + k))).unwrap();
        }
        let got = skipping.checkpoint().unwrap();
        assert_eq!(got.step, steps as u64 - n_bad, "{what}");
        assert_eq!(
            snap(&got),
            snap(&clean_gpu.checkpoint().unwrap()),
            "{what}: not the clean run"
        );
        // And it goes on: more steps, one at a time.
        for k in 0..3 {
            skipping.step(&split(&grads(200 + k))).unwrap();
            clean_gpu.step(&split(&grads(200 + k))).unwrap();
        }
        assert_eq!(
            snap(&skipping.checkpoint().unwrap()),
            snap(&clean_gpu.checkpoint().unwrap()),
            "{what}: after"
        );
    }
}

/// By default NaN propagates, as in PyTorch; a huge but finite gradient
/// (its square overflows) is not "non-finite" and is applied.
#[test]
fn default_propagates_and_overflow_is_not_nan() {
    let config: Config = Adam::default().into();
    let mut g = grads(0);
    g[3] = f32::NAN;
    let mut c = cpu(&config, None);
    let mut d = gpu(&config, None);
    c.step(&split(&g)).unwrap();
    d.step(&split(&g)).unwrap();
    assert!(c.params_flat()[3].is_nan());
    assert!(d.read_params_flat().unwrap()[3].is_nan());
    assert_eq!(c.step_count(), 1);

    let mut g = grads(1);
    g[0] = 1e30;
    let mut c = cpu(&config, None);
    let mut d = gpu(&config, None);
    c.set_skip_nonfinite(true);
    d.set_skip_nonfinite(true).unwrap();
    c.step(&split(&g)).unwrap();
    d.step(&split(&g)).unwrap();
    assert!(!c.last_step_skipped());
    assert!(!d.last_step_skipped().unwrap());
    assert_eq!(d.step_count(), 1);
}

/// A gradient scale inside the fused update: gradients scaled by a power
/// of two and `set_grad_scale` give exactly the unscaled run (clipping
/// sees the unscaled norm); any other scale agrees between CPU and GPU.
#[test]
fn grad_scale_inside_the_update() {
    for (what, config, clip) in cases() {
        for scale in [1024.0f64, 3.0] {
            let mut scaled_cpu = cpu(&config, clip);
            let mut scaled_gpu = gpu(&config, clip);
            scaled_cpu.set_grad_scale(scale).unwrap();
            scaled_gpu.set_grad_scale(scale).unwrap();
            let mut plain = cpu(&config, clip);
            for k in 0..4 {
                let g = grads(300 + k);
                let big: Vec<f32> = g.iter().map(|&x| x * scale as f32).collect();
                scaled_cpu.step(&split(&big)).unwrap();
                scaled_gpu.step(&split(&big)).unwrap();
                let inv = (1.0 / scale) as f32;
                let unscaled: Vec<f32> = big.iter().map(|&x| x * inv).collect();
                plain.step(&split(&unscaled)).unwrap();
            }
            assert_eq!(
                snap(&scaled_cpu.checkpoint()),
                snap(&plain.checkpoint()),
                "{what} scale {scale}: CPU"
            );
            let (a, b) = (
                snap(&scaled_gpu.checkpoint().unwrap()),
                snap(&plain.checkpoint()),
            );
            for (x, y) in a.0.iter().zip(&b.0) {
                let (x, y) = (f32::from_bits(*x), f32::from_bits(*y));
                assert!(
                    (x - y).abs() <= 1e-5 * y.abs().max(1e-2),
                    "{what} scale {scale}: GPU {x} vs {y}"
                );
            }
            assert_eq!(scaled_gpu.grad_scale(), scale);
        }
    }
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e39, 1e-46] {
        let mut c = cpu(&Adam::default().into(), None);
        let e = c.set_grad_scale(bad).unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidHyperparameter {
                    name: "grad_scale",
                    ..
                }
            ),
            "{bad}: {e:?}"
        );
        assert_eq!(c.grad_scale(), 1.0);
    }
}

/// Skipping, loss scale and the skip count travel in a checkpoint; the
/// restored run (CPU → GPU and GPU → CPU) goes on as the uninterrupted one.
#[test]
fn skip_state_in_checkpoints() {
    let config: Config = Adam::default().into();
    let mut whole = gpu(&config, None);
    whole.set_skip_nonfinite(true).unwrap();
    whole.set_grad_scale(8.0).unwrap();
    for k in 0..STEPS {
        whole.step(&split(&grads(k))).unwrap();
    }
    let mut first = gpu(&config, None);
    first.set_skip_nonfinite(true).unwrap();
    first.set_grad_scale(8.0).unwrap();
    for k in 0..8 {
        first.step(&split(&grads(k))).unwrap();
    }
    let ckpt = Checkpoint::from_bytes(&first.checkpoint().unwrap().to_bytes().unwrap()).unwrap();
    assert!(ckpt.skip_nonfinite);
    assert_eq!(ckpt.grad_scale, 8.0);
    assert_eq!(ckpt.skipped_steps, 4);
    assert_eq!(ckpt.step, 4);
    let mut restored = GpuOptimizer::from_checkpoint(ctx(), &ckpt, GpuOptions::default()).unwrap();
    let mut on_cpu = CpuOptimizer::from_checkpoint(&ckpt).unwrap();
    for k in 8..STEPS {
        restored.step(&split(&grads(k))).unwrap();
        on_cpu.step(&split(&grads(k))).unwrap();
    }
    let want = whole.checkpoint().unwrap();
    assert_eq!(snap(&restored.checkpoint().unwrap()), snap(&want));
    assert_eq!(restored.skipped_steps().unwrap(), 5);
    assert_eq!(on_cpu.skipped_steps(), 5);
    assert_eq!(on_cpu.checkpoint().step, want.step);

    // Turning skipping off learns the exact count.
    let mut g = gpu(&config, None);
    g.set_skip_nonfinite(true).unwrap();
    for k in 0..8 {
        g.step(&split(&grads(k))).unwrap();
    }
    g.set_skip_nonfinite(false).unwrap();
    assert_eq!(g.step_count(), 4);
    assert_eq!(g.skipped_steps().unwrap(), 4);
    let mut nan = grads(0);
    nan[0] = f32::NAN;
    g.step(&split(&nan)).unwrap();
    assert!(g.read_params_flat().unwrap()[0].is_nan());
}

/// `error_if_nonfinite` with skipping on: a NaN gradient is skipped, not
/// an error, on both backends.
#[test]
fn skipping_and_error_if_nonfinite() {
    let config: Config = Sgd {
        lr: 0.1,
        momentum: 0.9,
        ..Sgd::default()
    }
    .into();
    let clip = Some(ClipGradNorm {
        max_norm: 1.0,
        error_if_nonfinite: true,
    });
    let mut c = cpu(&config, clip);
    let mut d = gpu(&config, clip);
    c.set_skip_nonfinite(true);
    d.set_skip_nonfinite(true).unwrap();
    c.step(&split(&grads(0))).unwrap();
    d.step(&split(&grads(0))).unwrap();
    let mut nan = grads(1);
    nan[5] = f32::NAN;
    c.step(&split(&nan)).unwrap();
    d.step(&split(&nan)).unwrap();
    assert!(c.last_step_skipped());
    assert!(d.last_step_skipped().unwrap());
    c.step(&split(&grads(3))).unwrap();
    d.step(&split(&grads(3))).unwrap();
    assert_eq!(c.step_count(), 2);
    assert_eq!(d.step_count(), 2);
    assert_eq!(c.skipped_steps(), 1);
    assert_eq!(c.skipped_steps(), d.skipped_steps().unwrap());
    // CPU and GPU: the same steps applied (bit equality is not promised
    // across devices: a GPU may fuse multiply-adds).
    let (a, b) = (c.checkpoint(), d.checkpoint().unwrap());
    assert_eq!(a.step, b.step);
    for (x, y) in a.params.unwrap().iter().zip(b.params.as_ref().unwrap()) {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1e-2), "{x} vs {y}");
    }
}
