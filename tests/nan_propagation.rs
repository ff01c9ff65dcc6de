//! NaN and ±inf in the gradients, against torch: every rule and its main
//! options, with and without gradient clipping, with NaN, +inf and −inf in a
//! few gradient elements at the first step or a later one, on the CPU and on
//! the GPU (both vector widths). After every step the parameters and every
//! state tensor hold NaN exactly where torch's do, the same infinities, and
//! finite values within a rounding tolerance. The expectations are
//! `tests/data/nonfinite/nonfinite.safetensors`, written by
//! `gen_nonfinite.py` beside it (torch 2.15, float32, `foreach=False`).
//!
//! With `skip_nonfinite` on, the same runs skip the bad step instead: it
//! leaves no trace.
//!
//! Needs a GPU adapter: without one the GPU tests fail with
//! `Error::NoAdapter`'s text, which says what to install.

mod common;
use common::ctx;

use safetensors::SafeTensors;
use serde_json::{Map, Value};
use wgpu_optim::conformance::config_from_hyper;
use wgpu_optim::{ClipGradNorm, Config, CpuOptimizer, GpuOptimizer, GpuOptions};

const DATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/nonfinite/nonfinite.safetensors"
);

struct Case {
    name: String,
    config: Config,
    clip: Option<ClipGradNorm>,
    state: Vec<String>,
}

struct Run {
    name: String,
    steps: usize,
    bad_step: usize,
}

struct Data {
    /// Every tensor of the file, read once (the header holds thousands).
    tensors: std::collections::HashMap<String, Vec<f32>>,
    sizes: Vec<usize>,
    cases: Vec<Case>,
    runs: Vec<Run>,
}

fn load() -> Data {
    let bytes = std::fs::read(DATA).unwrap_or_else(|e| panic!("{DATA}: {e}"));
    let (_, header) = SafeTensors::read_metadata(&bytes).expect("a safetensors file");
    let meta = header.metadata().as_ref().expect("metadata");
    let meta: Value = serde_json::from_str(&meta["nonfinite"]).expect("JSON metadata");
    let sizes = meta["sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let cases = meta["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let rule = c["rule"].as_str().unwrap();
            let hyper: &Map<String, Value> = c["hyper"].as_object().unwrap();
            let mut config = config_from_hyper(rule, hyper).unwrap();
            if let (Config::Lamb(l), Some(r)) = (&mut config, c["trust_ratio_clamp"].as_array()) {
                l.trust_ratio_clamp = Some((r[0].as_f64().unwrap(), r[1].as_f64().unwrap()));
            }
            Case {
                name: c["name"].as_str().unwrap().to_string(),
                config,
                clip: c["clip_grad_norm"].as_f64().map(ClipGradNorm::new),
                state: c["state"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().to_string())
                    .collect(),
            }
        })
        .collect();
    let runs = meta["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| Run {
            name: r["name"].as_str().unwrap().to_string(),
            steps: r["steps"].as_u64().unwrap() as usize,
            bad_step: r["bad_step"].as_u64().unwrap() as usize,
        })
        .collect();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
            let values = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, values)
        })
        .collect();
    Data {
        tensors,
        sizes,
        cases,
        runs,
    }
}

impl Data {
    fn tensor(&self, name: &str) -> Vec<f32> {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
            .clone()
    }

    fn split<'a>(&self, flat: &'a [f32]) -> Vec<&'a [f32]> {
        let mut out = Vec::new();
        let mut at = 0;
        for &n in &self.sizes {
            out.push(&flat[at..at + n]);
            at += n;
        }
        out
    }
}

/// The CPU optimizer or the GPU one with a vector width.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Cpu,
    Gpu(u32),
}

// A few short-lived optimizers at a time: their size does not matter.
#[allow(clippy::large_enum_variant)]
enum Opt {
    Cpu(CpuOptimizer),
    Gpu(GpuOptimizer),
}

impl Opt {
    fn new(backend: Backend, case: &Case, init: &[&[f32]]) -> Opt {
        let mut opt = match backend {
            Backend::Cpu => Opt::Cpu(CpuOptimizer::new(case.config.clone(), init).unwrap()),
            Backend::Gpu(width) => Opt::Gpu(
                GpuOptimizer::with_options(
                    ctx(),
                    case.config.clone(),
                    init,
                    GpuOptions {
                        vector_width: Some(width),
                        ..GpuOptions::default()
                    },
                )
                .unwrap(),
            ),
        };
        match &mut opt {
            Opt::Cpu(o) => o.set_clip_grad_norm(case.clip).unwrap(),
            Opt::Gpu(o) => o.set_clip_grad_norm(case.clip).unwrap(),
        }
        opt
    }

    fn set_skip_nonfinite(&mut self, skip: bool) {
        match self {
            Opt::Cpu(o) => o.set_skip_nonfinite(skip),
            Opt::Gpu(o) => o.set_skip_nonfinite(skip).unwrap(),
        }
    }

    fn step(&mut self, grads: &[&[f32]]) {
        match self {
            Opt::Cpu(o) => o.step(grads).unwrap(),
            Opt::Gpu(o) => o.step(grads).unwrap(),
        }
    }

    fn params(&self) -> Vec<f32> {
        match self {
            Opt::Cpu(o) => o.params_flat().to_vec(),
            Opt::Gpu(o) => o.read_params_flat().unwrap(),
        }
    }

    fn state(&self, name: &str) -> Vec<f32> {
        match self {
            Opt::Cpu(o) => o.state_flat(name).unwrap().to_vec(),
            Opt::Gpu(o) => o.read_state_flat(name).unwrap(),
        }
    }

    fn skipped_steps(&mut self) -> u64 {
        match self {
            Opt::Cpu(o) => o.skipped_steps(),
            Opt::Gpu(o) => o.skipped_steps().unwrap(),
        }
    }
}

/// Relative rounding tolerance of a finite value, in units of the largest
/// finite magnitude torch's tensor holds at that step.
///
/// Our float32 arithmetic is torch's up to the order and fusion of
/// operations (torch's vectorized `add(alpha=)`, `addcmul` and `addcdiv`
/// use fused multiply-adds and multiply the scalar first; LAMB's and
/// clipping's norms are summed in another order, and in f64 on our CPU).
/// Each of these runs is at most 4 steps of at most ~15 operations per
/// element, each rounding by at most 2⁻²⁴ relative to the magnitudes it
/// combines, and those magnitudes are bounded by the largest values of the
/// tensors involved, of which the tensor's own is the scale here (the
/// states are bounded by parameters and gradients of the same order, the
/// inputs being standard normal): 4·15·2⁻²⁴ ≈ 3.6e-6. No division here
/// amplifies an error: Adam's and RMSprop's denominators are at least a
/// third of |m| or |g| on these inputs, and Adam's bias-corrected first
/// steps are ±lr exactly. A wrong rule, a wrong eps placement or a step
/// missed lands at 1e-3 and beyond.
const REL_TOL: f64 = 4e-6;

/// Compares `ours` with torch's `expected`: NaN where and only where torch
/// has NaN, the same infinities, finite values within `REL_TOL`. Returns
/// the problems found and the worst finite error relative to the scale.
fn compare(label: &str, ours: &[f32], expected: &[f32], problems: &mut Vec<String>) -> f64 {
    assert_eq!(ours.len(), expected.len(), "{label}");
    let scale = expected
        .iter()
        .filter(|x| x.is_finite())
        .fold(0f64, |m, &x| m.max(x.abs() as f64))
        .max(f32::MIN_POSITIVE as f64);
    let mut worst = 0f64;
    for (i, (&a, &b)) in ours.iter().zip(expected).enumerate() {
        let ok = if b.is_nan() {
            a.is_nan()
        } else if b.is_infinite() {
            a == b
        } else if a.is_finite() {
            let err = (a as f64 - b as f64).abs() / scale;
            worst = worst.max(err);
            err <= REL_TOL
        } else {
            false
        };
        if !ok {
            problems.push(format!("{label}[{i}]: ours {a:e}, torch {b:e}"));
        }
    }
    worst
}

/// Every case and run on `backend`, step by step, against torch.
fn check_backend(backend: Backend) {
    let data = load();
    let mut problems = Vec::new();
    let mut worst = 0f64;
    let (mut nans, mut infs) = (0usize, 0usize);
    for case in &data.cases {
        for run in &data.runs {
            let prefix = format!("{}/{}", case.name, run.name);
            let init = data.tensor(&format!("{prefix}/init"));
            let mut opt = Opt::new(backend, case, &data.split(&init));
            for s in 0..run.steps {
                let grad = data.tensor(&format!("{prefix}/grad/{s}"));
                opt.step(&data.split(&grad));
                let mut check = |what: String, ours: Vec<f32>| {
                    let expected = data.tensor(&format!("{prefix}/{what}/{s}"));
                    nans += expected.iter().filter(|x| x.is_nan()).count();
                    infs += expected.iter().filter(|x| x.is_infinite()).count();
                    let label = format!("{backend:?} {prefix} step {s} {what}");
                    worst = worst.max(compare(&label, &ours, &expected, &mut problems));
                };
                check("param".into(), opt.params());
                for name in &case.state {
                    check(format!("state/{name}"), opt.state(name));
                }
            }
        }
    }
    println!("{backend:?}: worst finite error {worst:.3e} of the tensor's scale");
    // The data exercises what it is for: NaN and both infinities in the
    // expectations, parameters and state alike.
    assert!(nans > 1000 && infs > 100, "nans {nans}, infs {infs}");
    assert!(
        problems.is_empty(),
        "{} differences from torch, the first ones:\n{}",
        problems.len(),
        problems[..problems.len().min(40)].join("\n")
    );
}

#[test]
fn cpu_propagates_nonfinite_as_torch() {
    check_backend(Backend::Cpu);
}

#[test]
fn gpu_propagates_nonfinite_as_torch() {
    check_backend(Backend::Gpu(1));
}

#[test]
fn gpu_vec4_propagates_nonfinite_as_torch() {
    check_backend(Backend::Gpu(4));
}

/// The symptom of issue 11 item 5 itself, readable on its own: after a NaN
/// gradient AMSGrad's running maximum is NaN there, as `torch.maximum`
/// makes it, on the CPU and the GPU.
#[test]
fn amsgrad_maximum_holds_nan() {
    let data = load();
    let case = data
        .cases
        .iter()
        .find(|c| c.name == "adam_amsgrad")
        .unwrap();
    let prefix = "adam_amsgrad/mixed_later";
    let expected = data.tensor(&format!("{prefix}/state/max_exp_avg_sq/3"));
    assert!(expected[2].is_nan() && expected[8] == f32::INFINITY);
    for backend in [Backend::Cpu, Backend::Gpu(1), Backend::Gpu(4)] {
        let init = data.tensor(&format!("{prefix}/init"));
        let mut opt = Opt::new(backend, case, &data.split(&init));
        for s in 0..4 {
            opt.step(&data.split(&data.tensor(&format!("{prefix}/grad/{s}"))));
        }
        let vmax = opt.state("max_exp_avg_sq");
        assert!(vmax[2].is_nan(), "{backend:?}: {}", vmax[2]);
        assert_eq!(vmax[8], f32::INFINITY, "{backend:?}");
    }
}

/// With `skip_nonfinite` on, the bad step of each run is skipped: after
/// every step parameters and state are bit for bit those of the same
/// optimizer fed only the finite steps, and one step is counted skipped.
#[test]
fn skip_nonfinite_still_skips() {
    let data = load();
    for backend in [Backend::Cpu, Backend::Gpu(1), Backend::Gpu(4)] {
        for case in &data.cases {
            for run in &data.runs {
                let prefix = format!("{}/{}", case.name, run.name);
                let init = data.tensor(&format!("{prefix}/init"));
                let mut skipping = Opt::new(backend, case, &data.split(&init));
                skipping.set_skip_nonfinite(true);
                let mut clean = Opt::new(backend, case, &data.split(&init));
                for s in 0..run.steps {
                    let grad = data.tensor(&format!("{prefix}/grad/{s}"));
                    assert_eq!(s == run.bad_step, grad.iter().any(|g| !g.is_finite()));
                    skipping.step(&data.split(&grad));
                    if s != run.bad_step {
                        clean.step(&data.split(&grad));
                    }
                    let label = format!("{backend:?} {prefix} step {s}");
                    let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(skipping.params()), bits(clean.params()), "{label}");
                    for name in &case.state {
                        assert_eq!(
                            bits(skipping.state(name)),
                            bits(clean.state(name)),
                            "{label} {name}"
                        );
                    }
                }
                assert_eq!(skipping.skipped_steps(), 1, "{backend:?} {prefix}");
                assert!(skipping.params().iter().all(|x| x.is_finite()));
            }
        }
    }
}
