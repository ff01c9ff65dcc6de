//! Faults come back as typed errors, never panics: a lost device, wgpu
//! validation errors, buffers larger than the device allows. Bias
//! corrections stay exact at step 10^7 with `beta2` close to 1, and past
//! 2^32 steps with skipping on.
//!
//! Needs a GPU adapter: without one the GPU tests fail with
//! `Error::NoAdapter`'s text, which says what to install.

mod common;
use common::ctx;
use std::panic::{catch_unwind, AssertUnwindSafe};

use wgpu_optim::checkpoint::Checkpoint;
use wgpu_optim::{
    Adagrad, Adam, Config, CpuOptimizer, Error, GpuContext, GpuOptimizer, GpuOptions, Lamb, Sgd,
};

/// `device.destroy()` (what a driver reset looks like): every call after
/// it returns `Error::DeviceLost`, none panics, and the caller's host data
/// is untouched.
#[test]
fn a_lost_device_is_a_typed_error() {
    let lost = GpuContext::new().unwrap_or_else(|e| panic!("a context: {e}"));
    let params = vec![1.0f32, 2.0, 3.0, 4.0, 5.0];
    let grads = vec![0.5f32; 5];
    let (p0, g0) = (params.clone(), grads.clone());
    let mut opt = GpuOptimizer::new(&lost, Adam::default(), &[&params]).unwrap();
    opt.set_skip_nonfinite(true).unwrap();
    opt.step(&[&grads]).unwrap();
    lost.device().destroy();
    let is_lost = |what: &str, r: Result<(), Error>| match r {
        Err(Error::DeviceLost { .. }) => {}
        other => panic!("{what} after device.destroy(): expected DeviceLost, got {other:?}"),
    };
    let r = catch_unwind(AssertUnwindSafe(|| {
        // WebGPU loses a destroyed device once the work already queued has
        // finished: a step right after destroy() may still return Ok (its
        // work is dropped); the first call that waits for the GPU reports
        // the loss, and every call after it.
        match opt.step(&[&grads]) {
            Ok(()) | Err(Error::DeviceLost { .. }) => {}
            Err(e) => panic!("step right after destroy(): {e:?}"),
        }
        is_lost("read_params", opt.read_params().map(|_| ()));
        is_lost("step", opt.step(&[&grads]));
        is_lost("step_device", opt.step_device());
        is_lost("read_params", opt.read_params().map(|_| ()));
        is_lost("checkpoint", opt.checkpoint().map(|_| ()));
        is_lost("skipped_steps", opt.skipped_steps().map(|_| ()));
        is_lost("write_params", opt.write_params(&[&params]));
        is_lost(
            "a new optimizer",
            GpuOptimizer::new(&lost, Sgd::default(), &[&params]).map(|_| ()),
        );
    }));
    assert!(r.is_ok(), "a call on a lost device panicked");
    assert!(lost.lost().is_some());
    let text = opt.step(&[&grads]).unwrap_err().to_string();
    assert!(text.contains("lost"), "{text}");
    assert_eq!((params, grads), (p0, g0), "the host data changed");
    // Other devices carry on.
    let mut other = GpuOptimizer::new(ctx(), Sgd::default(), &[&[1.0]]).unwrap();
    other.step(&[&[1.0]]).unwrap();
}

/// A validation error wgpu reports mid-run (here: the caller destroyed
/// its own parameter buffer) is `Error::Validation`, not a panic, and the
/// optimizer's other buffers are untouched.
#[test]
fn validation_errors_are_typed() {
    let ctx = ctx();
    let make = |v: f32| {
        let b = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("caller's"),
            size: 64,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        ctx.queue()
            .write_buffer(&b, 0, bytemuck::cast_slice(&[v; 16]));
        b
    };
    let (params, grads) = (make(1.0), make(0.5));
    let mut opt =
        GpuOptimizer::from_buffers(ctx, Adam::default(), &[16], params.clone(), grads).unwrap();
    opt.step_device().unwrap();
    let state = opt.read_state_flat("exp_avg").unwrap();
    params.destroy();
    let r = catch_unwind(AssertUnwindSafe(|| opt.step_device()));
    match r {
        Ok(Err(Error::Validation { message, .. })) => assert!(!message.is_empty()),
        Ok(other) => panic!("expected Error::Validation, got {other:?}"),
        Err(_) => panic!("stepping a destroyed buffer panicked"),
    }
    assert_eq!(opt.read_state_flat("exp_avg").unwrap(), state);
}

/// A device with small limits, made by the caller (`GpuContext::from_device`).
fn small_device(max_buffer: u64, max_binding: u64, max_uniform: u64) -> GpuContext {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = wgpu::Backends::PRIMARY;
    let instance = wgpu::Instance::new(desc);
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .unwrap_or_else(|e| panic!("an adapter: {e}"));
    let limits = wgpu::Limits {
        max_buffer_size: max_buffer,
        max_storage_buffer_binding_size: max_binding,
        max_uniform_buffer_binding_size: max_uniform,
        ..adapter.limits()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: limits,
        ..Default::default()
    }))
    .unwrap_or_else(|e| panic!("a device with small limits: {e}"));
    GpuContext::from_device(device, queue, None)
}

/// The library never asks for a buffer beyond `max_buffer_size`: a model
/// larger than one binding is split into chunks (and steps exactly as the
/// CPU), and what cannot be split — the tables of a model with too many
/// tensors, the uniform ring on a device with tiny uniforms — is refused
/// with `Error::TooLarge` before wgpu is asked.
#[test]
fn buffers_beyond_the_device_limits_are_refused_not_requested() {
    let small = small_device(256 << 10, 16 << 10, 64 << 10);
    // 20 000 elements = 80 KB in 16 KB bindings: five chunks.
    let params: Vec<f32> = (0..20_000).map(|i| (i as f32 * 0.37).sin()).collect();
    let grads: Vec<f32> = (0..20_000).map(|i| (i as f32 * 0.11).cos()).collect();
    let mut gpu = GpuOptimizer::new(&small, Adam::default(), &[&params]).unwrap();
    let mut cpu = CpuOptimizer::new(Adam::default(), &[&params]).unwrap();
    assert_eq!(gpu.dispatches_per_step(), 5);
    gpu.step(&[&grads]).unwrap();
    cpu.step(&[&grads]).unwrap();
    for (x, y) in gpu
        .read_params_flat()
        .unwrap()
        .iter()
        .zip(cpu.params_flat())
    {
        assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "{x} vs {y}");
    }

    // 40 000 one-element tensors: their tile tables would need 320 KB.
    let many: Vec<[f32; 1]> = (0..40_000).map(|i| [i as f32]).collect();
    let refs: Vec<&[f32]> = many.iter().map(|t| t.as_slice()).collect();
    let e = GpuOptimizer::new(&small, Sgd::default(), &refs).unwrap_err();
    match &e {
        Error::TooLarge(m) => assert!(m.contains("max_buffer_size"), "{m}"),
        other => panic!("expected TooLarge, got {other:?}"),
    }

    let tiny_uniforms = small_device(256 << 10, 16 << 10, 512);
    let e = GpuOptimizer::new(&tiny_uniforms, Sgd::default(), &[&[1.0]]).unwrap_err();
    assert!(
        matches!(&e, Error::TooLarge(m) if m.contains("max_uniform_buffer_binding_size")),
        "{e:?}"
    );
}

/// Adam at step 10^7 with `beta2 = 1 − 1e-7`: the update uses the bias
/// corrections of the f64 formula (`1 − β^t` = `−expm1(t·ln β)`, rounded to
/// f32 once), on the CPU and the GPU, also with skipping on (the scalars
/// then come from the table). In f32 the formula would be far off:
/// `(1 − 1e-7)` rounds to `1 − 1.19e-7` and `1 − β2^t` to 0.696 instead
/// of 0.632.
#[test]
fn bias_correction_at_step_ten_million() {
    let t: u64 = 10_000_000;
    let (b1, b2, lr, eps) = (0.9f64, 1.0 - 1e-7, 1e-3f64, 1e-8f64);
    let config = Adam {
        lr,
        betas: (b1, b2),
        eps,
        ..Adam::default()
    };
    let n = 64;
    let p: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 / 64.0).collect();
    let m: Vec<f32> = (0..n).map(|i| (i as f32 * 0.3).sin() * 1e-2).collect();
    let v: Vec<f32> = (0..n).map(|i| 1e-4 + i as f32 * 1e-6).collect();
    let g: Vec<f32> = (0..n).map(|i| (i as f32 * 0.7).cos() * 1e-2).collect();
    let mut ckpt = Checkpoint::new(config.clone(), &[n]).unwrap();
    ckpt.step = t;
    ckpt.params = Some(p.clone());
    ckpt.state = vec![
        ("exp_avg".into(), m.clone()),
        ("exp_avg_sq".into(), v.clone()),
    ];

    // The expected update, from the f64 formula written out here.
    let bc1 = 1.0 - b1.powf((t + 1) as f64);
    let bc2 = 1.0 - b2.powf((t + 1) as f64);
    let step_size = (lr / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let want: Vec<f32> = (0..n)
        .map(|i| {
            let w = (1.0 - b1) as f32;
            let mi = m[i] + w * (g[i] - m[i]);
            let vi = v[i] * b2 as f32 + (1.0 - b2) as f32 * (g[i] * g[i]);
            p[i] - step_size * (mi / (vi.sqrt() / bc2_sqrt + eps as f32))
        })
        .collect();
    // f32 arithmetic would have used another bias correction entirely.
    let naive = 1.0 - (b2 as f32).powf((t + 1) as f32);
    assert!((naive as f64 - bc2).abs() > 0.05, "{naive} vs {bc2}");

    let mut cpu = CpuOptimizer::from_checkpoint(&ckpt).unwrap();
    cpu.step(&[&g]).unwrap();
    assert_eq!(cpu.params_flat(), want.as_slice(), "CPU");
    assert_eq!(cpu.step_count(), t + 1);
    for skip in [false, true] {
        let mut gpu = GpuOptimizer::from_checkpoint(ctx(), &ckpt, GpuOptions::default()).unwrap();
        gpu.set_skip_nonfinite(skip).unwrap();
        if skip {
            // A skipped step first: the next one still uses step t + 1.
            gpu.step(&[&vec![f32::NAN; n]]).unwrap();
        }
        gpu.step(&[&g]).unwrap();
        let got = gpu.read_params_flat().unwrap();
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            let ulps = (a.to_bits() as i64 - b.to_bits() as i64).abs();
            assert!(ulps <= 2, "GPU (skip {skip}) element {i}: {a} vs {b}");
        }
        assert_eq!(gpu.checkpoint().unwrap().step, t + 1);
    }
}

/// Past 2^24 (where an f32 step count stops being exact) and past 2^32
/// (where the GPU's 32-bit counters wrap): the step count restored from a
/// checkpoint is exact, the bias corrections follow it, and the counters'
/// high bits are kept by the host.
#[test]
fn step_counts_past_2_24_and_2_32() {
    for t in [(1u64 << 24) + 1, (1u64 << 32) - 2] {
        for config in [
            Config::from(Adam::default()),
            Adagrad {
                lr_decay: 1e-9,
                ..Adagrad::default()
            }
            .into(),
            Lamb::default().into(),
        ] {
            let n = 8;
            let mut ckpt = Checkpoint::new(config.clone(), &[n]).unwrap();
            ckpt.step = t;
            ckpt.params = Some(vec![0.5; n]);
            for (_, s) in ckpt.state.iter_mut() {
                s.iter_mut().for_each(|x| *x = 0.01);
            }
            let back = Checkpoint::from_bytes(&ckpt.to_bytes().unwrap()).unwrap();
            assert_eq!(back.step, t);
            let mut cpu = CpuOptimizer::from_checkpoint(&back).unwrap();
            let mut gpu =
                GpuOptimizer::from_checkpoint(ctx(), &back, GpuOptions::default()).unwrap();
            gpu.set_skip_nonfinite(true).unwrap();
            cpu.set_skip_nonfinite(true);
            let g: Vec<f32> = (0..n).map(|i| i as f32 * 0.1 - 0.3).collect();
            for k in 0..4 {
                let grads = if k == 1 {
                    vec![f32::INFINITY; n]
                } else {
                    g.clone()
                };
                cpu.step(&[&grads]).unwrap();
                gpu.step(&[&grads]).unwrap();
            }
            assert_eq!(gpu.skipped_steps().unwrap(), 1);
            assert_eq!(gpu.step_count(), t + 3, "{:?}", config.kind());
            assert_eq!(cpu.step_count(), t + 3);
            let (a, b) = (gpu.read_params_flat().unwrap(), cpu.params_flat().to_vec());
            for (x, y) in a.iter().zip(&b) {
                assert!(
                    (x - y).abs() <= 1e-6 * y.abs().max(1.0),
                    "{:?} t={t}: {x} vs {y}",
                    config.kind()
                );
            }
        }
    }
}
