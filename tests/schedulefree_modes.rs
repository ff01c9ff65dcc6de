//! Schedule-free train and eval modes (`set_eval`) against the
//! `schedulefree` package's `eval()` and `train()`
//! (tests/data/schedulefree/modes.json, from gen_modes.py there): after a
//! few steps in train mode, eval mode's parameters are the package's `x` on
//! the CPU and on the GPU, train mode gives `y` back within rounding, a step
//! in eval mode is refused, checkpoints hold `y`.

use serde_json::Value;
use wgpu_optim::conformance::config_from_hyper;
use wgpu_optim::{Adam, Config, CpuOptimizer, Error, GpuContext, GpuOptimizer, SgdScheduleFree};

const MODES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/schedulefree/modes.json"
);

struct Case {
    name: String,
    config: Config,
    beta1: f64,
    sizes: Vec<usize>,
    steps: usize,
    init: Vec<f32>,
    y: Vec<f32>,
    z: Vec<f32>,
    x: Vec<f32>,
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn cases() -> Vec<Case> {
    let file: Value = serde_json::from_str(&std::fs::read_to_string(MODES).unwrap()).unwrap();
    file["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let config =
                config_from_hyper(c["rule"].as_str().unwrap(), c["hyper"].as_object().unwrap())
                    .unwrap();
            Case {
                name: c["name"].as_str().unwrap().into(),
                beta1: config.momentum().unwrap(),
                config,
                sizes: c["sizes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_u64().unwrap() as usize)
                    .collect(),
                steps: c["steps"].as_u64().unwrap() as usize,
                init: floats(&c["init"]),
                y: floats(&c["y"]),
                z: floats(&c["z"]),
                x: floats(&c["x"]),
            }
        })
        .collect()
}

/// gen_modes.py's gradients: sin(0.7·i + 1.3·s)·(1 + i % 3), in f64
/// rounded to f32 as torch.tensor rounds the Python floats.
fn grad(total: usize, s: usize) -> Vec<f32> {
    (0..total)
        .map(|i| ((0.7 * i as f64 + 1.3 * s as f64).sin() * (1 + i % 3) as f64) as f32)
        .collect()
}

fn split<'a>(flat: &'a [f32], sizes: &[usize]) -> Vec<&'a [f32]> {
    let mut out = Vec::new();
    let mut at = 0;
    for &n in sizes {
        out.push(&flat[at..at + n]);
        at += n;
    }
    out
}

/// The bound of `got` against `want`, element by element, relative to the
/// scale `max(|y|, |z|, 1)` of the element: `k·ε·scale/β1` (ε = 2^-24):
/// `x = (y − (1 − β1)·z)/β1` carries the errors of `y` and `z` divided by
/// `β1`.
fn assert_close(what: &str, got: &[f32], want: &[f32], c: &Case, k: f64) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let scale = (c.y[i].abs().max(c.z[i].abs()) as f64).max(1.0);
        let bound = k * f64::from(f32::EPSILON) / 2.0 * scale / c.beta1;
        assert!(
            ((g - w) as f64).abs() <= bound,
            "{} {what}[{i}]: {g} vs {w} (bound {bound:e})",
            c.name
        );
    }
}

/// Each step is at most 8 f32 roundings per element (the AdamW update's
/// square, sum, quotient, root, sum, quotient, lerp and sum), each of one
/// unit of the scale, and torch's vectorized loops may round once less
/// (fused multiply-adds): after `steps` steps `y` and `z` are within
/// `8·steps` units, and the switch to `x` adds two roundings.
fn trajectory_k(c: &Case) -> f64 {
    8.0 * c.steps as f64 + 2.0
}

fn cpu_after_steps(c: &Case) -> CpuOptimizer {
    let total = c.init.len();
    let mut opt = CpuOptimizer::new(c.config.clone(), &split(&c.init, &c.sizes)).unwrap();
    for s in 0..c.steps {
        let g = grad(total, s);
        opt.step(&split(&g, &c.sizes)).unwrap();
    }
    opt
}

#[test]
fn cpu_eval_mode_is_the_packages_x_and_train_mode_returns_y() {
    for c in cases() {
        let mut opt = cpu_after_steps(&c);
        assert_close("y", opt.params_flat(), &c.y, &c, trajectory_k(&c));
        assert_close(
            "z",
            opt.state_flat("z").unwrap(),
            &c.z,
            &c,
            trajectory_k(&c),
        );
        let y = opt.params_flat().to_vec();
        assert!(!opt.eval_mode());
        opt.set_eval(true).unwrap();
        assert!(opt.eval_mode());
        assert_close("x", opt.params_flat(), &c.x, &c, trajectory_k(&c));
        // A second switch to the mode in force changes nothing.
        let x = opt.params_flat().to_vec();
        opt.set_eval(true).unwrap();
        assert_eq!(opt.params_flat(), &x[..]);
        // Stepping in eval mode is refused, and changes nothing.
        let g = grad(c.init.len(), 0);
        let err = opt.step(&split(&g, &c.sizes)).unwrap_err();
        assert!(matches!(err, Error::EvalMode { .. }), "{err:?}");
        assert_eq!(opt.params_flat(), &x[..]);
        // The checkpoint holds y, and restores train mode.
        let ckpt = opt.checkpoint();
        assert_close("checkpoint y", ckpt.params.as_ref().unwrap(), &y, &c, 8.0);
        // Two lerps, each two roundings of the scale/β1 at most, and the
        // rounding of x itself: y within 8 units.
        opt.set_eval(false).unwrap();
        assert_close("y after eval and train", opt.params_flat(), &y, &c, 8.0);
        opt.set_eval(true).unwrap();
        opt.load_checkpoint(&ckpt).unwrap();
        assert!(!opt.eval_mode());
        opt.step(&split(&g, &c.sizes)).unwrap();
    }
}

#[test]
fn gpu_eval_mode_matches_the_cpu() {
    let ctx = GpuContext::new().unwrap();
    for c in cases() {
        let cpu = cpu_after_steps(&c);
        let total = c.init.len();
        let mut gpu = GpuOptimizer::new(&ctx, c.config.clone(), &split(&c.init, &c.sizes)).unwrap();
        for s in 0..c.steps {
            let g = grad(total, s);
            gpu.step(&split(&g, &c.sizes)).unwrap();
        }
        let y = gpu.read_params_flat().unwrap();
        gpu.set_eval(true).unwrap();
        assert!(gpu.eval_mode());
        let mut cpu_eval = cpu.clone();
        cpu_eval.set_eval(true).unwrap();
        // The GPU's steps are within tests/gpu_vs_cpu.rs's 8·steps units of
        // the CPU's; its lerp rounds as the CPU's (or fuses once).
        let x = gpu.read_params_flat().unwrap();
        assert_close(
            "gpu x vs cpu x",
            &x,
            cpu_eval.params_flat(),
            &c,
            trajectory_k(&c),
        );
        assert_close("gpu x vs package x", &x, &c.x, &c, 2.0 * trajectory_k(&c));
        let g = grad(total, 0);
        let err = gpu.step(&split(&g, &c.sizes)).unwrap_err();
        assert!(matches!(err, Error::EvalMode { .. }), "{err:?}");
        let ckpt = gpu.checkpoint().unwrap();
        assert_close(
            "gpu checkpoint y",
            ckpt.params.as_ref().unwrap(),
            &y,
            &c,
            8.0,
        );
        gpu.set_eval(false).unwrap();
        assert!(!gpu.eval_mode());
        assert_close(
            "gpu y after eval and train",
            &gpu.read_params_flat().unwrap(),
            &y,
            &c,
            8.0,
        );
        gpu.step(&split(&g, &c.sizes)).unwrap();
    }
}

/// Before the first step there is no z (the package creates it then):
/// switching modes leaves the parameters; other rules have no eval mode.
#[test]
fn no_switch_before_the_first_step_and_none_for_other_rules() {
    let p: &[&[f32]] = &[&[1.0, -2.0]];
    let mut opt = CpuOptimizer::new(SgdScheduleFree::default(), p).unwrap();
    opt.set_eval(true).unwrap();
    assert_eq!(opt.params_flat(), &[1.0, -2.0]);
    opt.set_eval(false).unwrap();
    opt.step(&[&[1.0, 1.0]]).unwrap();
    // β1 = 0 steps (y = z), but has no x.
    let mut zero = CpuOptimizer::new(
        SgdScheduleFree {
            momentum: 0.0,
            ..SgdScheduleFree::default()
        },
        p,
    )
    .unwrap();
    zero.step(&[&[1.0, 1.0]]).unwrap();
    assert!(matches!(
        zero.set_eval(true),
        Err(Error::InvalidHyperparameter { value, .. }) if value == 0.0
    ));
    assert!(!zero.eval_mode());
    let mut adam = CpuOptimizer::new(Adam::default(), p).unwrap();
    assert!(matches!(adam.set_eval(true), Err(Error::Unsupported(_))));
    assert!(!adam.eval_mode());
    let ctx = GpuContext::new().unwrap();
    let mut gpu = GpuOptimizer::new(&ctx, SgdScheduleFree::default(), p).unwrap();
    gpu.set_eval(true).unwrap();
    assert_eq!(gpu.read_params_flat().unwrap(), vec![1.0, -2.0]);
    let mut gpu_adam = GpuOptimizer::new(&ctx, Adam::default(), p).unwrap();
    assert!(matches!(
        gpu_adam.set_eval(true),
        Err(Error::Unsupported(_))
    ));
}
