//! The matrix rules (Adafactor, Muon) on the GPU against the CPU, option
//! by option, on small shapes (lavapipe runs these on CI's 2 cores); their
//! checkpoints, setters and refusals there. Against torch: the golden
//! cases (tests/golden.rs). tests/webgpu_limits.rs runs this file again on
//! a device with `wgpu::Limits::default()`.

mod common;

use wgpu_optim::{Adafactor, Config, CpuOptimizer, Error, GpuOptimizer, Muon, MuonAdjustLr, Shape};

/// Deterministic values in about [-1, 1).
fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(40_503))
                .rotate_left(seed % 17);
            (x % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn refs(v: &[Vec<f32>]) -> Vec<&[f32]> {
    v.iter().map(Vec::as_slice).collect()
}

fn tensors(shapes: &[Shape], seed: u32) -> Vec<Vec<f32>> {
    shapes
        .iter()
        .enumerate()
        .map(|(i, s)| values(s.numel().unwrap(), seed + i as u32))
        .collect()
}

/// The largest difference between `a` and `b`, relative to the largest
/// magnitude of `reference` (so a tolerance reads as "of the tensor's
/// scale"), and the index where it is.
fn worst(a: &[f32], b: &[f32], reference: &[f32]) -> (f64, usize) {
    assert_eq!(a.len(), b.len());
    let scale = reference
        .iter()
        .fold(0.0f64, |m, &x| m.max(x.abs() as f64))
        .max(1e-30);
    a.iter()
        .zip(b)
        .enumerate()
        .map(|(i, (&x, &y))| ((x as f64 - y as f64).abs() / scale, i))
        .fold((0.0, 0), |m, v| if v.0 > m.0 { v } else { m })
}

/// The difference of the movements θ − θ0 (GPU, CPU), relative to the
/// CPU's largest movement, less what the parameters' own f32 rounding
/// explains: each step rounds θ once on each side (half an ulp each, so
/// `steps` ulps of |θ| in all, f32::EPSILON·|θ| an ulp at most), which
/// dominates when the movement is small against θ (lr 1e-3).
fn worst_movement(gpu: &[f32], cpu: &[f32], init: &[f32], steps: u32) -> (f64, usize) {
    let moved = |p: &[f32]| -> Vec<f64> {
        p.iter()
            .zip(init)
            .map(|(a, b)| *a as f64 - *b as f64)
            .collect()
    };
    let (mg, mc) = (moved(gpu), moved(cpu));
    let scale = mc.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-30);
    (0..mg.len())
        .map(|i| {
            let rounding = steps as f64 * f32::EPSILON as f64 * (cpu[i].abs() as f64);
            (((mg[i] - mc[i]).abs() - rounding).max(0.0) / scale, i)
        })
        .fold((0.0, 0), |m, v| if v.0 > m.0 { v } else { m })
}

/// Steps the same tensors `steps` times on the CPU and the GPU and checks
/// that the parameters' movement (θ − θ0) and every state tensor agree to
/// `tol` of their largest magnitude.
fn gpu_matches_cpu(config: Config, shapes: &[Shape], steps: u32, tol: f64) {
    let ctx = common::ctx();
    let init = tensors(shapes, 1);
    let mut cpu = CpuOptimizer::with_shapes(config.clone(), &refs(&init), shapes).unwrap();
    let mut gpu = GpuOptimizer::with_shapes(ctx, config.clone(), &refs(&init), shapes).unwrap();
    for step in 0..steps {
        let grads = tensors(shapes, 100 + 10 * step);
        cpu.step(&refs(&grads)).unwrap();
        gpu.step(&refs(&grads)).unwrap();
    }
    assert_eq!(gpu.step_count(), steps as u64);
    let got = gpu.read_params().unwrap();
    for (t, g) in got.iter().enumerate() {
        let c = cpu.param(t);
        let (err, at) = worst_movement(g, c, &init[t], steps);
        println!(
            "{} tensor {t} {}: movement {err:.2e}",
            config.kind(),
            shapes[t]
        );
        assert!(
            err <= tol,
            "{config:?} tensor {t} {}: movement differs by {err:e} of its scale at {at}: gpu {} cpu {} from {}",
            shapes[t],
            g[at],
            c[at],
            init[t][at]
        );
    }
    for name in gpu.state_names().to_vec() {
        let g = gpu.read_state(name).unwrap();
        let c = cpu.state(name).unwrap();
        assert_eq!(g.len(), c.len());
        for (t, (g, c)) in g.iter().zip(&c).enumerate() {
            assert_eq!(g.len(), c.len(), "{name} of tensor {t}");
            if c.is_empty() {
                continue;
            }
            let (err, at) = worst(g, c, c);
            println!("{} {name} of tensor {t}: {err:.2e}", config.kind());
            assert!(
                err <= tol,
                "{config:?} {name} of tensor {t}: differs by {err:e} at {at}: gpu {} cpu {}",
                g[at],
                c[at]
            );
        }
    }
}

// Shapes: wide and tall (the transpose), sizes that are not multiples of
// the 64 × 64 output tile nor of the 16-deep k tile, and one over two
// tiles each way.
fn muon_shapes() -> Vec<Shape> {
    vec![
        Shape::matrix(24, 40),
        Shape::matrix(40, 24),
        Shape::matrix(70, 131),
        Shape::matrix(1, 5),
    ]
}

// Tolerance of Muon, GPU against CPU: both run the iteration in f32 with
// the same formulas, but the GPU sums the norm's squares in f32 by a tree
// (the CPU in f64), sums each product's k terms in f32 in order without
// the CPU's `a·X` start (`a·X + ΣH·X` rather than `(a·X + h0·x0) + ...`)
// and may fuse multiply-adds. Each of these is a few units in the last
// place (2^-24 ≈ 6e-8) per operation, accumulated over at most 131 terms
// (√131 ≈ 11 typically) and carried through five iterations whose
// polynomial has a slope of up to a ≈ 3.4 at small singular values:
// about 6e-8 · 11 · 3.4^2 ≈ 8e-6 of the update's scale per step. Three
// steps compound that in the momentum: about 2.5e-5. 5e-5 of the
// movement's scale (beyond the parameters' own rounding, worst_movement)
// is a margin over that estimate; lavapipe shows at most 2e-6. It is
// far below a wrong formula's error (an exchanged transpose, a missing
// Nesterov term or a wrong lr ratio moves elements by 10% or more).
const MUON_TOL: f64 = 5e-5;

#[test]
fn muon_on_the_gpu_matches_the_cpu_nesterov_and_plain() {
    for nesterov in [true, false] {
        let muon = Muon {
            lr: 0.02,
            nesterov,
            ..Muon::default()
        };
        gpu_matches_cpu(muon.into(), &muon_shapes(), 3, MUON_TOL);
    }
}

#[test]
fn muon_on_the_gpu_matches_the_cpu_for_each_adjust_lr_fn_and_weight_decay() {
    for (adjust_lr_fn, weight_decay, ns_steps) in [
        (Some(MuonAdjustLr::MatchRmsAdamW), 0.0, 5),
        (Some(MuonAdjustLr::SpectralUnclamped), 0.3, 4),
        (Some(MuonAdjustLr::Original), 0.1, 1),
        (None, 0.1, 0),
    ] {
        let muon = Muon {
            lr: 0.01,
            adjust_lr_fn,
            weight_decay,
            ns_steps,
            momentum: 0.9,
            ..Muon::default()
        };
        gpu_matches_cpu(muon.into(), &muon_shapes()[..3], 2, MUON_TOL);
    }
}

fn adafactor_shapes() -> Vec<Shape> {
    vec![
        // Rows longer than one workgroup's 256 threads.
        Shape::matrix(6, 300),
        Shape::matrix(300, 5),
        Shape::vector(37),
        Shape::new(&[2, 3, 5]),
        Shape::vector(0),
    ]
}

// Tolerance of Adafactor, GPU against CPU: the GPU sums the row and
// column statistics, their mean, RMS(θ) and RMS(U) in f32 (trees for
// rows, in-order loops for columns), the CPU in f64; each f32 sum of n
// terms is within about n·2^-24 relatively in the worst case (300 terms:
// 2e-5), typically √n·2^-24 (1e-6). The statistics enter the update
// through square roots (halving the relative error) and the step through
// RMS(U), so the movement differs by a few 1e-6 of its scale; WGSL's sqrt
// and division are within 2.5 ulp rather than correctly rounded, a few
// 1e-7 more. 1e-5 is a margin over that estimate (lavapipe shows at most
// 4e-7 beyond the parameters' own rounding), and a wrong formula (a missed maximize, decay or d, a row
// mean of the wrong matrix) is off by 1% or more.
const ADAFACTOR_TOL: f64 = 1e-5;

#[test]
fn adafactor_on_the_gpu_matches_the_cpu_for_matrices_and_vectors() {
    // And tensors over several 4096-element tiles of the tensor-wide sums.
    let mut shapes = adafactor_shapes();
    shapes.extend([Shape::vector(9000), Shape::matrix(40, 230)]);
    gpu_matches_cpu(Adafactor::default().into(), &shapes, 3, ADAFACTOR_TOL);
}

#[test]
fn adafactor_on_the_gpu_matches_the_cpu_for_each_option() {
    for af in [
        Adafactor {
            weight_decay: 0.1,
            lr: 0.05,
            ..Adafactor::default()
        },
        Adafactor {
            maximize: true,
            ..Adafactor::default()
        },
        Adafactor {
            beta2_decay: -0.5,
            d: 2.0,
            eps: (Some(1e-20), 1e-2),
            ..Adafactor::default()
        },
        // A d this close to 1 clips every step (RMS(U) is about 1).
        Adafactor {
            d: 1.0,
            eps: (Some(1e-3), 0.5),
            ..Adafactor::default()
        },
    ] {
        gpu_matches_cpu(af.into(), &adafactor_shapes()[..4], 2, ADAFACTOR_TOL);
    }
}

/// Every configuration of tests/common/cases.rs's `matrix_configs` (which
/// tests/registry_coverage.rs checks sets every option), GPU against CPU.
#[test]
fn every_matrix_configuration_matches_the_cpu() {
    use wgpu_optim::RuleKind;
    for config in common::cases::matrix_configs(RuleKind::Muon) {
        gpu_matches_cpu(config, &muon_shapes()[..3], 2, MUON_TOL);
    }
    for config in common::cases::matrix_configs(RuleKind::Adafactor) {
        gpu_matches_cpu(config, &adafactor_shapes(), 2, ADAFACTOR_TOL);
    }
}

/// The same inputs give the same bits, run after run: every sum is a fixed
/// tree or an in-order loop (no atomics, no order that depends on
/// scheduling).
#[test]
fn matrix_rules_on_the_gpu_are_deterministic() {
    let ctx = common::ctx();
    for (config, shapes) in [
        (Config::from(Muon::default()), muon_shapes()[..3].to_vec()),
        (Adafactor::default().into(), adafactor_shapes()),
    ] {
        let init = tensors(&shapes, 3);
        let run = || {
            let mut opt =
                GpuOptimizer::with_shapes(ctx, config.clone(), &refs(&init), &shapes).unwrap();
            for step in 0..2 {
                opt.step(&refs(&tensors(&shapes, 50 + step))).unwrap();
            }
            opt.read_params_flat().unwrap()
        };
        let (a, b) = (run(), run());
        // Per matrix: Muon 5 + 3·ns_steps, Adafactor 6; per vector 3; none
        // for an empty tensor: the count does not depend on the sizes.
        let opt = GpuOptimizer::with_shapes(ctx, config.clone(), &refs(&init), &shapes).unwrap();
        let expected = match config {
            Config::Muon(_) => 3 * (5 + 3 * 5),
            _ => 3 * 6 + 3,
        };
        assert_eq!(opt.dispatches_per_step(), expected);
        assert_eq!(
            a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        assert_ne!(a, init.concat(), "{config:?} did not move");
    }
}

/// A checkpoint taken on the GPU holds the shapes and the factored state;
/// restored on the GPU (or the CPU) it goes on exactly as the optimizer it
/// was taken from; the CPU's checkpoint restores on the GPU too.
#[test]
fn matrix_checkpoints_restore_exactly_on_the_gpu() {
    let ctx = common::ctx();
    for (config, shapes) in [
        (Config::from(Muon::default()), muon_shapes()[..2].to_vec()),
        (Adafactor::default().into(), adafactor_shapes()),
    ] {
        let init = tensors(&shapes, 5);
        let mut gpu =
            GpuOptimizer::with_shapes(ctx, config.clone(), &refs(&init), &shapes).unwrap();
        gpu.step(&refs(&tensors(&shapes, 60))).unwrap();
        let ckpt = gpu.checkpoint().unwrap();
        assert_eq!(ckpt.shapes, shapes);
        // Through the file format and back.
        let dir = std::env::temp_dir().join(format!(
            "wgpu_optim_matrix_gpu_{}_{}",
            config.kind(),
            std::process::id()
        ));
        ckpt.save(&dir).unwrap();
        let loaded = wgpu_optim::Checkpoint::load(&dir).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let mut restored = GpuOptimizer::from_checkpoint(ctx, &loaded, Default::default()).unwrap();
        assert_eq!(restored.layout().shapes(), Some(shapes.as_slice()));
        for name in gpu.state_names().to_vec() {
            assert_eq!(
                restored.read_state(name).unwrap(),
                gpu.read_state(name).unwrap()
            );
        }
        let next = tensors(&shapes, 61);
        gpu.step(&refs(&next)).unwrap();
        restored.step(&refs(&next)).unwrap();
        assert_eq!(restored.step_count(), 2);
        assert_eq!(
            restored.read_params_flat().unwrap(),
            gpu.read_params_flat().unwrap()
        );
        // The CPU's checkpoint, loaded into an optimizer built from ours.
        let mut cpu = CpuOptimizer::with_shapes(config.clone(), &refs(&init), &shapes).unwrap();
        cpu.step(&refs(&tensors(&shapes, 60))).unwrap();
        let mut from_cpu =
            GpuOptimizer::with_shapes(ctx, config.clone(), &refs(&init), &shapes).unwrap();
        from_cpu.load_checkpoint(&cpu.checkpoint()).unwrap();
        for name in gpu.state_names().to_vec() {
            let c: Vec<Vec<f32>> = cpu
                .state(name)
                .unwrap()
                .iter()
                .map(|s| s.to_vec())
                .collect();
            assert_eq!(from_cpu.read_state(name).unwrap(), c, "{name}");
        }
        // A checkpoint of other shapes is a mismatch, and changes nothing.
        let mut other = shapes.clone();
        other[0] = Shape::new(&[other[0].cols(), other[0].rows()]);
        let mut wrong = ckpt.clone();
        wrong.shapes = other;
        let before = from_cpu.read_params_flat().unwrap();
        let refused = from_cpu.load_checkpoint(&wrong);
        assert!(
            matches!(
                refused,
                Err(Error::CheckpointMismatch { .. } | Error::Checkpoint(_))
            ),
            "{refused:?}"
        );
        assert_eq!(from_cpu.read_params_flat().unwrap(), before);
    }
}

/// set_lr, set_momentum and the loss scale reach the matrix kernels as
/// they reach the CPU's step; steps recorded into one encoder run each
/// with its own scalars.
#[test]
fn matrix_setters_loss_scale_and_recorded_steps_match_the_cpu() {
    let ctx = common::ctx();
    for (config, shapes, tol) in [
        (
            Config::from(Muon::default()),
            muon_shapes()[..2].to_vec(),
            MUON_TOL,
        ),
        (
            Adafactor::default().into(),
            adafactor_shapes(),
            ADAFACTOR_TOL,
        ),
    ] {
        let init = tensors(&shapes, 7);
        let mut cpu = CpuOptimizer::with_shapes(config.clone(), &refs(&init), &shapes).unwrap();
        let mut gpu =
            GpuOptimizer::with_shapes(ctx, config.clone(), &refs(&init), &shapes).unwrap();
        // A loss scale of 1024: the gradients are given scaled.
        cpu.set_grad_scale(1024.0).unwrap();
        gpu.set_grad_scale(1024.0).unwrap();
        let scaled = |seed| -> Vec<Vec<f32>> {
            tensors(&shapes, seed)
                .into_iter()
                .map(|t| t.into_iter().map(|x| x * 1024.0).collect())
                .collect()
        };
        cpu.step(&refs(&scaled(70))).unwrap();
        gpu.step(&refs(&scaled(70))).unwrap();
        cpu.set_lr(0.003).unwrap();
        gpu.set_lr(0.003).unwrap();
        if matches!(config, Config::Muon(_)) {
            cpu.set_momentum(0.8).unwrap();
            gpu.set_momentum(0.8).unwrap();
        }
        // Two steps in one encoder, the second after another set_lr.
        let (g1, g2) = (scaled(71), scaled(72));
        cpu.step(&refs(&g1)).unwrap();
        cpu.set_lr(0.001).unwrap();
        cpu.step(&refs(&g2)).unwrap();
        gpu.write_grads(&refs(&g1)).unwrap();
        let mut encoder = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        gpu.record_step(&mut encoder, None).unwrap();
        // The second step's gradients: copied in by a command between them.
        let staging = {
            use wgpu::util::DeviceExt;
            ctx.device()
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: None,
                    contents: bytemuck::cast_slice(&g2.concat()),
                    usage: wgpu::BufferUsages::COPY_SRC,
                })
        };
        let mut at = 0u64;
        for (t, buffer) in gpu.grad_buffers().into_iter().enumerate() {
            let n = shapes
                .iter()
                .map(|s| s.numel().unwrap())
                .filter(|&n| n > 0)
                .nth(t)
                .unwrap() as u64;
            encoder.copy_buffer_to_buffer(&staging, at * 4, buffer, 0, n * 4);
            at += n;
        }
        gpu.set_lr(0.001).unwrap();
        gpu.record_step(&mut encoder, None).unwrap();
        ctx.queue().submit(Some(encoder.finish()));
        assert_eq!(gpu.step_count(), 3);
        let got = gpu.read_params().unwrap();
        for (t, g) in got.iter().enumerate() {
            let (err, at) = worst_movement(g, cpu.param(t), &init[t], 3);
            assert!(err <= tol, "{config:?} tensor {t}: {err:e} at {at}");
        }
    }
}

/// What the GPU refuses of the matrix rules, each with a typed error that
/// changes nothing: skip_nonfinite and clipping's error_if_nonfinite (a
/// step cannot be refused there), GpuOptions, the caller's buffers; and the shapes' own errors, as the CPU gives them.
#[test]
fn the_gpu_refuses_what_the_matrix_rules_cannot_do_there() {
    let ctx = common::ctx();
    let shapes = vec![Shape::matrix(4, 6)];
    let init = tensors(&shapes, 9);
    for config in [Config::from(Muon::default()), Adafactor::default().into()] {
        let mut opt =
            GpuOptimizer::with_shapes(ctx, config.clone(), &refs(&init), &shapes).unwrap();
        let clip = wgpu_optim::ClipGradNorm {
            max_norm: 1.0,
            error_if_nonfinite: true,
        };
        assert!(matches!(
            opt.set_clip_grad_norm(Some(clip)),
            Err(Error::Unsupported(m)) if m.contains("error_if_nonfinite")
        ));
        assert_eq!(opt.clip_grad_norm(), None);
        assert!(matches!(
            opt.set_skip_nonfinite(true),
            Err(Error::Unsupported(_))
        ));
        // A checkpoint asking for skip_nonfinite is refused before anything
        // changes.
        let mut cpu = CpuOptimizer::with_shapes(config.clone(), &refs(&init), &shapes).unwrap();
        cpu.set_skip_nonfinite(true);
        cpu.step(&refs(&tensors(&shapes, 10))).unwrap();
        let before = opt.read_params_flat().unwrap();
        assert!(matches!(
            opt.load_checkpoint(&cpu.checkpoint()),
            Err(Error::Unsupported(_))
        ));
        assert_eq!(opt.read_params_flat().unwrap(), before);
        assert_eq!(opt.step_count(), 0);
        let options = wgpu_optim::GpuOptions {
            vector_width: Some(1),
            ..Default::default()
        };
        assert!(matches!(
            GpuOptimizer::with_options(ctx, config.clone(), &refs(&init), options),
            Err(Error::Unsupported(_))
        ));
        let buffer = |label| {
            ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 96,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        assert!(matches!(
            GpuOptimizer::from_buffers(ctx, config.clone(), &[24], buffer("p"), buffer("g")),
            Err(Error::Unsupported(_))
        ));
        // The shapes' errors are the CPU's.
        assert!(matches!(
            GpuOptimizer::with_shapes(ctx, config.clone(), &refs(&init), &[Shape::matrix(5, 5)]),
            Err(Error::ShapeMismatch { .. })
        ));
    }
    let (w, b) = (vec![0.1f32; 6], vec![0.0f32; 3]);
    assert!(matches!(
        GpuOptimizer::with_shapes(
            ctx,
            Muon::default(),
            &[&w, &b],
            &[Shape::matrix(2, 3), Shape::vector(3)]
        ),
        Err(Error::MatrixRequired { tensor: 1, .. })
    ));
    assert!(matches!(
        GpuOptimizer::new(ctx, Muon::default(), &[&w]),
        Err(Error::MatrixRequired { tensor: 0, .. })
    ));
    // Adafactor without shapes: every tensor a vector, as on the CPU.
    let mut gpu = GpuOptimizer::new(ctx, Adafactor::default(), &[&w]).unwrap();
    let mut cpu = CpuOptimizer::new(Adafactor::default(), &[&w]).unwrap();
    let g = values(6, 11);
    gpu.step(&[&g]).unwrap();
    cpu.step(&[&g]).unwrap();
    let (err, _) = worst(&gpu.read_params().unwrap()[0], cpu.param(0), cpu.param(0));
    assert!(err < ADAFACTOR_TOL);
    assert_eq!(gpu.read_state("variance").unwrap()[0].len(), 6);
    // Its checkpoint (no shapes) restores on the GPU with the same state.
    let restored =
        GpuOptimizer::from_checkpoint(ctx, &cpu.checkpoint(), Default::default()).unwrap();
    assert_eq!(
        restored.read_state("variance").unwrap()[0],
        cpu.state("variance").unwrap()[0]
    );
    assert_eq!(restored.read_params().unwrap()[0], cpu.param(0));
}

/// The GPU holds Adafactor's factored state, not a full second moment: a
/// matrix's row_var and col_var have rows and cols elements.
#[test]
fn adafactor_on_the_gpu_holds_the_factored_state() {
    let ctx = common::ctx();
    let shapes = adafactor_shapes();
    let init = tensors(&shapes, 13);
    let opt = GpuOptimizer::with_shapes(ctx, Adafactor::default(), &refs(&init), &shapes).unwrap();
    let lens =
        |name| -> Vec<usize> { opt.read_state(name).unwrap().iter().map(Vec::len).collect() };
    assert_eq!(lens("row_var"), [6, 300, 0, 6, 0]);
    assert_eq!(lens("col_var"), [300, 5, 0, 10, 0]);
    assert_eq!(lens("variance"), [0, 0, 37, 0, 0]);
}

/// Global-norm clipping over all the tensors of a matrix rule, on the GPU
/// as on the CPU: the same norm (f32 tiles in order against the CPU's f64
/// chunks: about 1e-6 relative over a few thousand squares), the same
/// scaled steps, loss scale included; a step below max_norm is not
/// scaled; a checkpoint keeps the clipping.
#[test]
fn matrix_rules_clip_on_the_gpu_as_on_the_cpu() {
    let ctx = common::ctx();
    for (config, shapes, tol) in [
        (
            Config::from(Muon {
                lr: 0.02,
                ..Muon::default()
            }),
            muon_shapes(),
            MUON_TOL,
        ),
        (
            Adafactor::default().into(),
            adafactor_shapes(),
            ADAFACTOR_TOL,
        ),
    ] {
        let init = tensors(&shapes, 21);
        let mut cpu = CpuOptimizer::with_shapes(config.clone(), &refs(&init), &shapes).unwrap();
        let mut gpu =
            GpuOptimizer::with_shapes(ctx, config.clone(), &refs(&init), &shapes).unwrap();
        // The gradients' norm is about 0.58·sqrt(n): tens; 2 clips them,
        // 1e6 does not.
        for (max_norm, grad_scale) in [(2.0, 1.0), (2.0, 8.0), (1e6, 1.0)] {
            let clip = Some(wgpu_optim::ClipGradNorm::new(max_norm));
            cpu.set_clip_grad_norm(clip).unwrap();
            gpu.set_clip_grad_norm(clip).unwrap();
            cpu.set_grad_scale(grad_scale).unwrap();
            gpu.set_grad_scale(grad_scale).unwrap();
            let g: Vec<Vec<f32>> = tensors(&shapes, 30 + grad_scale as u32 + max_norm as u32)
                .into_iter()
                .map(|t| t.into_iter().map(|x| x * grad_scale as f32).collect())
                .collect();
            assert_eq!(gpu.last_grad_norm().unwrap(), None);
            cpu.step(&refs(&g)).unwrap();
            gpu.step(&refs(&g)).unwrap();
            let c = cpu.last_grad_norm().unwrap();
            let n = gpu.last_grad_norm().unwrap().unwrap();
            assert!(
                ((c - n) / c).abs() < 1e-5,
                "{config:?}: norm {n} against {c}"
            );
        }
        assert_eq!(gpu.checkpoint().unwrap().clip, cpu.checkpoint().clip);
        let got = gpu.read_params().unwrap();
        for (t, g) in got.iter().enumerate() {
            let (err, at) = worst_movement(g, cpu.param(t), &init[t], 3);
            assert!(err <= tol, "{config:?} tensor {t}: {err:e} at {at}");
        }
    }
}
