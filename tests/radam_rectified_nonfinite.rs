//! RAdam's rectified branch with NaN and ±inf gradients, on the CPU and on
//! the GPU (both vector widths). tests/data/nonfinite's runs are at most 4
//! steps long, before the rectification starts (step 6 with β2 = 0.999), so
//! they check only the unrectified branch, where `+inf` drives θ to `−inf`.
//! In the rectified branch torch 2.15 (float32, `foreach=False`) gives NaN
//! instead: `m̂·lr = ±inf` times `1/(sqrt(inf) + eps) = 0`. This run, NaN,
//! +inf and −inf in elements 0, 1, 2 of the 7th step's gradient, has the
//! pattern torch's has for the same run:
//!
//! ```text
//! after step 7:  θ = [NaN, NaN, NaN, ..]  exp_avg = [NaN, inf, −inf, ..]  exp_avg_sq = [NaN, inf, inf, ..]
//! after step 8:  θ = [NaN, NaN, NaN, ..]  exp_avg = [NaN, NaN, NaN, ..]  exp_avg_sq = [NaN, inf, inf, ..]
//! ```
//!
//! (`lerp(±inf, g, 1 − β1)` is `±inf + w·(g ∓ inf)`, NaN), the other
//! elements finite and the GPU's equal to the CPU's to rounding.
//!
//! Needs a GPU adapter, as tests/nan_propagation.rs.

mod common;
use common::ctx;

use wgpu_optim::{CpuOptimizer, GpuOptimizer, GpuOptions, RAdam};

const N: usize = 8;
const STEPS: usize = 8;
/// The step (0-based) whose gradient is bad: the 7th, rectified.
const BAD: usize = 6;

fn grad(step: usize) -> Vec<f32> {
    let mut g: Vec<f32> = (0..N)
        .map(|i| ((i * 7 + step * 3) as f32 * 0.37).sin() * 1.5)
        .collect();
    if step == BAD {
        g[0] = f32::NAN;
        g[1] = f32::INFINITY;
        g[2] = f32::NEG_INFINITY;
    }
    g
}

/// (θ, exp_avg, exp_avg_sq) after each step.
type Trace = Vec<[Vec<f32>; 3]>;

fn cpu_trace(radam: &RAdam, init: &[f32]) -> Trace {
    let mut opt = CpuOptimizer::new(radam.clone(), &[init]).unwrap();
    (0..STEPS)
        .map(|s| {
            opt.step(&[&grad(s)]).unwrap();
            [
                opt.params_flat().to_vec(),
                opt.state_flat("exp_avg").unwrap().to_vec(),
                opt.state_flat("exp_avg_sq").unwrap().to_vec(),
            ]
        })
        .collect()
}

fn gpu_trace(radam: &RAdam, init: &[f32], width: u32) -> Trace {
    let options = GpuOptions {
        vector_width: Some(width),
        ..GpuOptions::default()
    };
    let mut opt = GpuOptimizer::with_options(ctx(), radam.clone(), &[init], options).unwrap();
    (0..STEPS)
        .map(|s| {
            opt.step(&[&grad(s)]).unwrap();
            [
                opt.read_params_flat().unwrap(),
                opt.read_state_flat("exp_avg").unwrap(),
                opt.read_state_flat("exp_avg_sq").unwrap(),
            ]
        })
        .collect()
}

/// The non-finite pattern of the module doc, NaN and each infinity exactly.
fn check_pattern(trace: &Trace, what: &str) {
    let nan = f32::NAN;
    let (inf, ninf) = (f32::INFINITY, f32::NEG_INFINITY);
    let expected: [[[f32; 3]; 3]; 2] = [
        [[nan, nan, nan], [nan, inf, ninf], [nan, inf, inf]],
        [[nan, nan, nan], [nan, nan, nan], [nan, inf, inf]],
    ];
    let names = ["param", "exp_avg", "exp_avg_sq"];
    for (k, want) in expected.iter().enumerate() {
        let step = BAD + k;
        for (t, name) in names.iter().enumerate() {
            let got = &trace[step][t];
            for i in 0..3 {
                let (g, w) = (got[i], want[t][i]);
                let same = if w.is_nan() { g.is_nan() } else { g == w };
                assert!(
                    same,
                    "{what}: step {}, {name}[{i}] = {g}, torch {w}",
                    step + 1
                );
            }
            assert!(
                got[3..].iter().all(|x| x.is_finite()),
                "{what}: step {}, {name}[3..] = {:?}",
                step + 1,
                &got[3..]
            );
        }
    }
}

#[test]
fn rectified_step_turns_infinite_gradients_into_nan_as_torch() {
    let radam = RAdam {
        lr: 0.01,
        ..RAdam::default()
    };
    let init: Vec<f32> = (0..N).map(|i| (i as f32 * 0.9).cos()).collect();
    let cpu = cpu_trace(&radam, &init);
    check_pattern(&cpu, "cpu");
    for width in [1, 4] {
        let gpu = gpu_trace(&radam, &init, width);
        check_pattern(&gpu, &format!("gpu width {width}"));
        // The finite elements: tests/gpu_vs_cpu.rs's bound STEPS·K·ε·scale
        // (K = 8 operations per value and step that may round differently),
        // with the scale taken as at least 1: loose for the moments, which
        // stay below 1 here, but it only has to tell rounding from a wrong
        // branch, which moves θ by lr·|m̂| ≈ 1e-2.
        for (s, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
            for t in 0..3 {
                for i in 3..N {
                    let (a, b) = (c[t][i], g[t][i]);
                    let tol = 8.0 * STEPS as f32 * f32::EPSILON * a.abs().max(1.0);
                    assert!(
                        (a - b).abs() <= tol,
                        "width {width}, step {}, tensor {t}, [{i}]: cpu {a}, gpu {b}",
                        s + 1
                    );
                }
            }
        }
    }
}
