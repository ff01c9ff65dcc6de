//! The GPU kernels against the CPU implementation: every rule and option
//! combination, parameters and every state tensor, after 25 steps with
//! fresh pseudo-random gradients each step, over tensors of mixed lengths
//! packed into one optimizer and split into chunks of 128 elements (so
//! tensors straddle chunk boundaries and a step is several dispatches),
//! with both kernel widths (`vec4<f32>` and `f32`).
//!
//! # Tolerance
//!
//! The CPU functions and the WGSL kernels apply the same `f32` operations
//! in the same order, from the same per-step scalars (computed once on the
//! host). The GPU may still round differently in three ways:
//!
//! * it may contract `a*b + c` into a fused multiply-add (one rounding
//!   instead of two: the result moves by at most 1 ULP of the larger
//!   operand);
//! * WGSL only promises 2.5 ULP for `x / y` and inherits about as much for
//!   `sqrt` (from `inverseSqrt`), where Rust's are correctly rounded;
//! * nothing else: no reductions, no reordering, no transcendental
//!   functions run on the device (the bias corrections are host `f64`).
//!
//! One step computes each stored value with at most ~8 such operations, so
//! the two results of one step differ by at most about `8·ε·m` where `ε` is
//! `f32::EPSILON` and `m` the magnitude of the operands, which is bounded
//! by the element's value and by the step's change to it. (Where a sum
//! cancels, as in the momentum buffer `b ← γ·b + g` with `b ≈ g/(1−γ)`, the
//! operands are still bounded by `|b|`.)
//!
//! The gradients do not depend on the parameters here, so nothing feeds
//! back: a difference made at one step is carried forward unchanged (or
//! shrunk, by the `β`, `α` and `γ` factors of the running averages) and the
//! differences of successive steps add up. A relative difference `δ` of a
//! state tensor enters a parameter update as the same relative difference
//! of that update, so over the run it adds at most `δ·Σ|Δθ|`, the distance
//! the parameter travelled. Hence, per element,
//!
//! ```text
//! |gpu − cpu| ≤ STEPS · K · ε · scale,   scale = max(max_t |x_t|, Σ_t |x_{t+1} − x_t|)
//! ```
//!
//! with `x` the CPU's values of that element over the run (its largest
//! magnitude, and the distance it travelled: at least the typical update
//! size times the steps), and `K = 8` from the count above. The test prints
//! the largest observed `|gpu − cpu| / (STEPS·ε·scale)`, i.e. the `K` the
//! run actually needed, and fails if it exceeds 8.
//!
//! Needs a GPU adapter: without one every test fails with
//! [`wgpu_optim::Error::NoAdapter`]'s text, which says what to install.

mod common;
use common::{ctx, Envelope, Rng};
use wgpu_optim::{
    Adagrad, Adam, AdamW, Config, CpuOptimizer, GpuOptimizer, GpuOptions, Lamb, RmsProp, Sgd,
};

const STEPS: usize = 25;
/// Operations per stored value per step that may round differently (see
/// the module documentation).
const K: f64 = 8.0;

/// Tensors of mixed lengths in one optimizer: empty, shorter than a vec4,
/// around the 64-element chunk alignment, and long enough (with chunks of
/// 128) to straddle many chunk boundaries.
const MIXED: &[usize] = &[1757, 0, 1, 3, 4, 5, 63, 64, 65];
/// Every length once, each as the only tensor of its optimizer.
const LENGTHS: &[usize] = &[0, 1, 3, 4, 5, 63, 64, 65, 1757];
const LARGE: usize = 100_003;

/// A hyperparameter change applied to both optimizers before a step.
#[derive(Clone, Copy, Debug)]
enum Change {
    Lr(f64),
    Momentum(f64),
}

#[derive(Clone, Debug)]
struct Case {
    name: String,
    config: Config,
    /// (step index, change) pairs: applied before that step.
    schedule: Vec<(usize, Change)>,
}

fn case(name: &str, config: impl Into<Config>) -> Case {
    Case {
        name: name.into(),
        config: config.into(),
        schedule: Vec::new(),
    }
}

fn scheduled(name: &str, config: impl Into<Config>, schedule: &[(usize, Change)]) -> Case {
    Case {
        name: name.into(),
        config: config.into(),
        schedule: schedule.to_vec(),
    }
}

fn sgd_cases() -> Vec<Case> {
    let base = Sgd {
        lr: 0.05,
        ..Sgd::default()
    };
    let m = Sgd {
        momentum: 0.9,
        ..base.clone()
    };
    vec![
        case("sgd plain", base.clone()),
        case(
            "sgd weight_decay",
            Sgd {
                weight_decay: 0.1,
                ..base.clone()
            },
        ),
        case("sgd momentum", m.clone()),
        case(
            "sgd momentum dampening",
            Sgd {
                dampening: 0.3,
                ..m.clone()
            },
        ),
        case(
            "sgd nesterov",
            Sgd {
                nesterov: true,
                ..m.clone()
            },
        ),
        case(
            "sgd maximize",
            Sgd {
                maximize: true,
                ..base.clone()
            },
        ),
        case(
            "sgd momentum maximize",
            Sgd {
                maximize: true,
                ..m.clone()
            },
        ),
        case(
            "sgd nesterov weight_decay maximize",
            Sgd {
                nesterov: true,
                weight_decay: 0.01,
                maximize: true,
                ..m.clone()
            },
        ),
        case(
            "sgd momentum dampening weight_decay maximize",
            Sgd {
                momentum: 0.5,
                dampening: 0.5,
                weight_decay: 0.05,
                maximize: true,
                ..base
            },
        ),
    ]
}

fn adagrad_cases() -> Vec<Case> {
    let base = Adagrad {
        lr: 0.05,
        ..Adagrad::default()
    };
    vec![
        case("adagrad default", base.clone()),
        case(
            "adagrad lr_decay",
            Adagrad {
                lr_decay: 0.1,
                ..base.clone()
            },
        ),
        case(
            "adagrad weight_decay",
            Adagrad {
                weight_decay: 0.1,
                ..base.clone()
            },
        ),
        case(
            "adagrad initial_accumulator_value",
            Adagrad {
                initial_accumulator_value: 0.5,
                ..base.clone()
            },
        ),
        case(
            "adagrad eps_inside_sqrt",
            Adagrad {
                eps: 1e-3,
                eps_inside_sqrt: true,
                ..base.clone()
            },
        ),
        case(
            "adagrad large eps outside sqrt",
            Adagrad {
                eps: 1e-3,
                ..base.clone()
            },
        ),
        case(
            "adagrad maximize",
            Adagrad {
                maximize: true,
                ..base.clone()
            },
        ),
        case(
            "adagrad all options",
            Adagrad {
                lr_decay: 0.05,
                weight_decay: 0.01,
                initial_accumulator_value: 0.1,
                eps: 1e-3,
                eps_inside_sqrt: true,
                maximize: true,
                ..base
            },
        ),
    ]
}

fn rmsprop_cases() -> Vec<Case> {
    let base = RmsProp {
        lr: 0.01,
        ..RmsProp::default()
    };
    vec![
        case("rmsprop default", base.clone()),
        case(
            "rmsprop momentum",
            RmsProp {
                momentum: 0.9,
                ..base.clone()
            },
        ),
        case(
            "rmsprop centered",
            RmsProp {
                centered: true,
                ..base.clone()
            },
        ),
        case(
            "rmsprop centered momentum",
            RmsProp {
                centered: true,
                momentum: 0.9,
                ..base.clone()
            },
        ),
        case(
            "rmsprop weight_decay",
            RmsProp {
                weight_decay: 0.1,
                ..base.clone()
            },
        ),
        case(
            "rmsprop eps_inside_sqrt",
            RmsProp {
                eps: 1e-3,
                eps_inside_sqrt: true,
                ..base.clone()
            },
        ),
        case(
            "rmsprop maximize",
            RmsProp {
                maximize: true,
                ..base.clone()
            },
        ),
        case(
            "rmsprop all options",
            RmsProp {
                alpha: 0.9,
                centered: true,
                momentum: 0.5,
                weight_decay: 0.01,
                eps: 1e-4,
                eps_inside_sqrt: true,
                maximize: true,
                ..base
            },
        ),
    ]
}

fn adam_cases() -> Vec<Case> {
    let base = Adam {
        lr: 0.01,
        ..Adam::default()
    };
    vec![
        case("adam default", base.clone()),
        case(
            "adam amsgrad",
            Adam {
                amsgrad: true,
                ..base.clone()
            },
        ),
        case(
            "adam weight_decay",
            Adam {
                weight_decay: 0.1,
                ..base.clone()
            },
        ),
        case(
            "adam maximize",
            Adam {
                maximize: true,
                ..base.clone()
            },
        ),
        case(
            "adam eps_inside_sqrt",
            Adam {
                eps: 1e-6,
                eps_inside_sqrt: true,
                ..base.clone()
            },
        ),
        case(
            "adam all options",
            Adam {
                betas: (0.8, 0.99),
                eps: 1e-6,
                weight_decay: 0.05,
                amsgrad: true,
                maximize: true,
                eps_inside_sqrt: true,
                ..base
            },
        ),
    ]
}

fn adamw_cases() -> Vec<Case> {
    let base = AdamW {
        lr: 0.01,
        ..AdamW::default()
    };
    vec![
        case("adamw default", base.clone()),
        case(
            "adamw no weight_decay",
            AdamW {
                weight_decay: 0.0,
                ..base.clone()
            },
        ),
        case(
            "adamw amsgrad",
            AdamW {
                amsgrad: true,
                ..base.clone()
            },
        ),
        case(
            "adamw large weight_decay",
            AdamW {
                weight_decay: 0.5,
                ..base.clone()
            },
        ),
        case(
            "adamw maximize",
            AdamW {
                maximize: true,
                ..base.clone()
            },
        ),
        case(
            "adamw eps_inside_sqrt",
            AdamW {
                eps: 1e-6,
                eps_inside_sqrt: true,
                ..base.clone()
            },
        ),
        case(
            "adamw all options",
            AdamW {
                betas: (0.8, 0.99),
                eps: 1e-6,
                weight_decay: 0.1,
                amsgrad: true,
                maximize: true,
                eps_inside_sqrt: true,
                ..base
            },
        ),
    ]
}

/// `set_lr` and `set_momentum` between steps, on both optimizers.
fn scheduled_cases() -> Vec<Case> {
    use Change::{Lr, Momentum};
    let lr_and_momentum = [
        (5, Lr(0.02)),
        (9, Momentum(0.5)),
        (14, Lr(0.1)),
        (14, Momentum(0.95)),
        (20, Lr(0.005)),
    ];
    let betas = [
        (5, Lr(0.002)),
        (9, Momentum(0.5)),
        (14, Lr(0.03)),
        (14, Momentum(0.0)),
        (20, Momentum(0.95)),
    ];
    let m = Sgd {
        lr: 0.05,
        momentum: 0.9,
        ..Sgd::default()
    };
    vec![
        scheduled(
            "sgd momentum, lr and momentum changed",
            m.clone(),
            &lr_and_momentum,
        ),
        scheduled(
            "sgd nesterov dampening-free, lr and momentum changed",
            Sgd {
                nesterov: true,
                weight_decay: 0.01,
                ..m.clone()
            },
            &lr_and_momentum,
        ),
        scheduled(
            "sgd momentum dampening, lr and momentum changed",
            Sgd {
                dampening: 0.2,
                maximize: true,
                ..m.clone()
            },
            &lr_and_momentum,
        ),
        // Momentum 0 from step 10: plain SGD, the buffer left as it was;
        // from step 18 on the buffer carries on where it stopped.
        scheduled(
            "sgd momentum set to 0 and back",
            m.clone(),
            &[(10, Momentum(0.0)), (15, Lr(0.2)), (18, Momentum(0.7))],
        ),
        // Momentum 0 before the first step: the buffer is filled with the
        // gradient on its first use, at step 5 (PyTorch's `buf is None`).
        scheduled(
            "sgd nesterov, momentum 0 for the first steps",
            Sgd {
                nesterov: true,
                ..m
            },
            &[(0, Momentum(0.0)), (5, Momentum(0.9))],
        ),
        scheduled(
            "sgd plain, lr changed",
            Sgd {
                lr: 0.05,
                ..Sgd::default()
            },
            &[(5, Lr(0.2)), (12, Lr(0.0)), (18, Lr(0.01))],
        ),
        scheduled(
            "adagrad lr_decay, lr changed",
            Adagrad {
                lr: 0.05,
                lr_decay: 0.1,
                ..Adagrad::default()
            },
            &[(5, Lr(0.2)), (12, Lr(0.01))],
        ),
        scheduled(
            "rmsprop momentum, lr and momentum changed",
            RmsProp {
                lr: 0.01,
                momentum: 0.9,
                ..RmsProp::default()
            },
            &lr_and_momentum,
        ),
        scheduled(
            "rmsprop centered momentum, lr and momentum changed",
            RmsProp {
                lr: 0.01,
                momentum: 0.9,
                centered: true,
                ..RmsProp::default()
            },
            &lr_and_momentum,
        ),
        // Momentum 0 with the buffer still there: plain RMSprop from step
        // 10, the buffer in use again from step 18.
        scheduled(
            "rmsprop momentum set to 0 and back",
            RmsProp {
                lr: 0.01,
                momentum: 0.9,
                ..RmsProp::default()
            },
            &[(10, Momentum(0.0)), (18, Momentum(0.5))],
        ),
        scheduled(
            "rmsprop centered momentum set to 0 and back",
            RmsProp {
                lr: 0.01,
                momentum: 0.9,
                centered: true,
                ..RmsProp::default()
            },
            &[(10, Momentum(0.0)), (18, Momentum(0.5))],
        ),
        scheduled(
            "adam, lr and beta1 changed (beta1 = 0 too)",
            Adam {
                lr: 0.01,
                ..Adam::default()
            },
            &betas,
        ),
        scheduled(
            "adam amsgrad, lr and beta1 changed",
            Adam {
                lr: 0.01,
                amsgrad: true,
                weight_decay: 0.01,
                ..Adam::default()
            },
            &betas,
        ),
        scheduled(
            "adamw, lr and beta1 changed (beta1 = 0 too)",
            AdamW {
                lr: 0.01,
                ..AdamW::default()
            },
            &betas,
        ),
        scheduled(
            "adamw amsgrad maximize, lr and beta1 changed",
            AdamW {
                lr: 0.01,
                amsgrad: true,
                maximize: true,
                ..AdamW::default()
            },
            &betas,
        ),
    ]
}

fn apply(change: Change, cpu: &mut CpuOptimizer, gpu: &mut GpuOptimizer) {
    match change {
        Change::Lr(lr) => {
            cpu.set_lr(lr).unwrap();
            gpu.set_lr(lr).unwrap();
        }
        Change::Momentum(m) => {
            cpu.set_momentum(m).unwrap();
            gpu.set_momentum(m).unwrap();
        }
    }
    assert_eq!(cpu.config(), gpu.config());
}

/// What one comparison saw.
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    /// The largest `|gpu − cpu| / (STEPS·ε·scale)`.
    worst: f64,
    /// Values compared (parameters and state elements).
    values: usize,
    /// Of those, how many differ at all.
    differing: usize,
}

impl Seen {
    fn add(&mut self, other: Seen) {
        self.worst = self.worst.max(other.worst);
        self.values += other.values;
        self.differing += other.differing;
    }
}

/// Runs `case` on the CPU and the GPU over tensors of `lengths` and
/// compares the parameters and every state tensor.
fn compare(case: &Case, lengths: &[usize], options: &GpuOptions, seed: u64) -> Seen {
    let what = format!("{} / lengths {lengths:?} / {options:?}", case.name);
    let mut rng = Rng(seed);
    let init: Vec<Vec<f32>> = lengths.iter().map(|&n| rng.vec_scaled(n, 2.0)).collect();
    let init_refs: Vec<&[f32]> = init.iter().map(|t| t.as_slice()).collect();
    let total: usize = lengths.iter().sum();

    let mut cpu = CpuOptimizer::new(case.config.clone(), &init_refs).unwrap();
    let mut gpu =
        GpuOptimizer::with_options(ctx(), case.config.clone(), &init_refs, options.clone())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    if let Some(chunk) = options.max_chunk_elements {
        let chunks = total.div_ceil(chunk as usize);
        // LAMB: two tile passes per chunk and one for the trust ratios.
        let want = match case.config {
            Config::Lamb(_) if chunks > 0 => 2 * chunks + 1,
            _ => chunks,
        };
        assert_eq!(gpu.dispatches_per_step(), want, "{what}: dispatches");
    }
    let names: Vec<&'static str> = cpu.state_names().to_vec();
    assert_eq!(gpu.state_names(), names.as_slice(), "{what}");

    let mut envelopes: Vec<Envelope> = std::iter::once(cpu.params_flat())
        .chain(names.iter().map(|n| cpu.state_flat(n).unwrap()))
        .map(Envelope::new)
        .collect();

    // Gradient magnitudes differ per tensor so that eps matters somewhere.
    let grad_scales = [1.0f32, 0.01, 3.0];
    for step in 0..STEPS {
        for &(at, change) in &case.schedule {
            if at == step {
                apply(change, &mut cpu, &mut gpu);
            }
        }
        let grads: Vec<Vec<f32>> = lengths
            .iter()
            .enumerate()
            .map(|(i, &n)| rng.vec_scaled(n, grad_scales[i % grad_scales.len()]))
            .collect();
        let grad_refs: Vec<&[f32]> = grads.iter().map(|g| g.as_slice()).collect();
        cpu.step(&grad_refs).unwrap();
        gpu.step(&grad_refs)
            .unwrap_or_else(|e| panic!("{what}: step {step}: {e}"));
        envelopes[0].update(cpu.params_flat());
        for (k, n) in names.iter().enumerate() {
            envelopes[k + 1].update(cpu.state_flat(n).unwrap());
        }
    }
    assert_eq!(gpu.step_count(), STEPS as u64);
    assert_eq!(cpu.step_count(), STEPS as u64);

    // The GPU must have written every element: one it skipped would still
    // hold its initial value where the CPU's moved.
    let gpu_params = gpu.read_params_flat().unwrap();
    assert_eq!(gpu_params.len(), total, "{what}");
    let initial: Vec<f32> = init.concat();
    let cpu_params = cpu.params_flat();
    let mut moved = 0;
    for i in 0..total {
        if cpu_params[i].to_bits() != initial[i].to_bits() {
            moved += 1;
            assert_ne!(
                gpu_params[i].to_bits(),
                initial[i].to_bits(),
                "{what}: element {i} never written on the GPU (cpu moved it {} -> {})",
                initial[i],
                cpu_params[i]
            );
        }
    }
    let lr_zero_everywhere = case.config.lr() == 0.0 && case.schedule.is_empty();
    if !lr_zero_everywhere {
        assert!(
            moved * 10 >= total * 9,
            "{what}: only {moved} of {total} parameters moved on the CPU; the test data is too weak"
        );
    }

    let mut buffers: Vec<(&str, Vec<f32>, Vec<f32>)> =
        vec![("params", cpu_params.to_vec(), gpu_params)];
    for n in &names {
        buffers.push((
            n,
            cpu.state_flat(n).unwrap().to_vec(),
            gpu.read_state_flat(n).unwrap(),
        ));
    }

    let eps = f32::EPSILON as f64;
    let mut seen = Seen::default();
    let (k_params, k_state) = bounds(&case.config);
    for ((name, c, g), env) in buffers.iter().zip(&envelopes) {
        let k = if *name == "params" { k_params } else { k_state };
        assert_eq!(c.len(), g.len(), "{what}: {name} length");
        seen.values += c.len();
        for i in 0..c.len() {
            let (cv, gv) = (c[i], g[i]);
            assert!(
                cv.is_finite() && gv.is_finite(),
                "{what}: {name}[{i}] not finite: cpu {cv}, gpu {gv}"
            );
            let diff = (cv as f64 - gv as f64).abs();
            if diff == 0.0 {
                continue;
            }
            seen.differing += 1;
            let bound_unit = STEPS as f64 * eps * env.scale(i);
            let ratio = diff / bound_unit;
            assert!(
                ratio <= k,
                "{what}: {name}[{i}]: cpu {cv:e}, gpu {gv:e}, |diff| = {diff:e} > \
                 {STEPS}·{k}·ε·scale = {:e} (scale {:e}, ratio {ratio:.2})",
                k * bound_unit,
                env.scale(i)
            );
            seen.worst = seen.worst.max(ratio);
        }
    }
    seen
}

fn report(what: &str, runs: usize, seen: Seen) {
    println!(
        "{what}: {runs} runs of {STEPS} steps, {} values compared, {} differ; largest \
         |gpu - cpu| / (steps·ε·scale) = {:.3} (bound K = {K})",
        seen.values, seen.differing, seen.worst
    );
}

/// The option sets of the chunked comparison: chunks of 128 elements, with
/// the `vec4<f32>` kernel (bounds checks on) and the `f32` kernel (bounds
/// checks off).
fn chunked_variants() -> [GpuOptions; 2] {
    [
        GpuOptions {
            max_chunk_elements: Some(128),
            vector_width: Some(4),
            ..GpuOptions::default()
        },
        GpuOptions {
            max_chunk_elements: Some(128),
            vector_width: Some(1),
            skip_bounds_checks: true,
        },
    ]
}

/// Every case, mixed lengths in one optimizer, both chunked variants.
fn run_family(family: &str, cases: &[Case]) {
    let mut seen = Seen::default();
    let mut runs = 0;
    for (ci, case) in cases.iter().enumerate() {
        for (vi, options) in chunked_variants().iter().enumerate() {
            seen.add(compare(
                case,
                MIXED,
                options,
                1000 + 17 * ci as u64 + vi as u64,
            ));
            runs += 1;
        }
    }
    report(
        &format!(
            "{family}: {} configurations x {} variants, lengths {MIXED:?} in one optimizer",
            cases.len(),
            chunked_variants().len()
        ),
        runs,
        seen,
    );
}

#[test]
fn sgd_every_option() {
    run_family("sgd", &sgd_cases());
}

#[test]
fn adagrad_every_option() {
    run_family("adagrad", &adagrad_cases());
}

#[test]
fn rmsprop_every_option() {
    run_family("rmsprop", &rmsprop_cases());
}

#[test]
fn adam_every_option() {
    run_family("adam", &adam_cases());
}

#[test]
fn adamw_every_option() {
    run_family("adamw", &adamw_cases());
}

#[test]
fn lr_and_momentum_changed_between_steps() {
    run_family("set_lr / set_momentum", &scheduled_cases());
}

/// The richest configuration of each rule (for SGD: Nesterov, weight
/// decay and maximize; dampening excludes Nesterov).
fn one_per_rule() -> Vec<Case> {
    vec![
        sgd_cases().swap_remove(7),
        adagrad_cases().swap_remove(7),
        rmsprop_cases().swap_remove(7),
        adam_cases().swap_remove(5),
        adamw_cases().swap_remove(6),
    ]
}

/// Each length as the only tensor (and no tensor at all), with the default
/// options (one chunk, `vec4` kernel over buffers padded to a multiple of 4)
/// and with chunks of 64.
#[test]
fn each_length_alone() {
    let mut seen = Seen::default();
    let mut runs = 0;
    for (ci, case) in one_per_rule().iter().enumerate() {
        // No tensor at all is refused, as torch.optim refuses an empty
        // parameter list (tests/bad_input.rs has the table).
        assert_eq!(
            CpuOptimizer::new(case.config.clone(), &[]).unwrap_err(),
            wgpu_optim::Error::EmptyParameterList
        );
        assert_eq!(
            GpuOptimizer::new(ctx(), case.config.clone(), &[]).unwrap_err(),
            wgpu_optim::Error::EmptyParameterList
        );
        for lengths in LENGTHS.chunks(1) {
            for options in [
                GpuOptions::default(),
                GpuOptions {
                    max_chunk_elements: Some(64),
                    ..GpuOptions::default()
                },
            ] {
                seen.add(compare(case, lengths, &options, 77 + ci as u64));
                runs += 1;
            }
        }
    }
    report("each length alone", runs, seen);
}

/// 100 003 elements (alone, and next to small tensors) in chunks of 32 768:
/// four dispatches per step, the last chunk not a multiple of 4.
#[test]
fn large_tensor() {
    let mut seen = Seen::default();
    let options = GpuOptions {
        max_chunk_elements: Some(32_768),
        ..GpuOptions::default()
    };
    for (ci, case) in one_per_rule().iter().enumerate() {
        let lengths: &[usize] = if ci % 2 == 0 {
            &[LARGE]
        } else {
            &[3, LARGE, 65]
        };
        seen.add(compare(case, lengths, &options, 4242 + ci as u64));
    }
    report(&format!("large tensor ({LARGE} elements)"), 5, seen);
}

// ------------------------------------------------------------------ LAMB

/// LAMB's bounds. Its update `u = m̂/(sqrt(v̂) + eps) + wd·θ` has three
/// divisions, a square root and a possible FMA: `K = 14` instead of 8. Its
/// trust ratio `‖θ‖/‖u‖` comes from f32 tree sums on the GPU and f64 sums
/// on the CPU, which adds at most 44.5 to the parameters' `K` (derived in
/// tests/lamb_clip.rs for tiles of 4096 elements; here the chunks of 128
/// cut tensors into tiles of at most 128, fewer roundings still). The
/// moments do not depend on the ratio. Global-norm clipping and LAMB's
/// special cases are tested in tests/lamb_clip.rs.
const K_LAMB_PARAMS: f64 = 14.0 + 44.5;
const K_LAMB_STATE: f64 = 14.0;

/// `K` of the parameters and of the state tensors.
fn bounds(config: &Config) -> (f64, f64) {
    match config {
        Config::Lamb(_) => (K_LAMB_PARAMS, K_LAMB_STATE),
        _ => (K, K),
    }
}

fn lamb_cases() -> Vec<Case> {
    let base = Lamb {
        lr: 0.01,
        ..Lamb::default()
    };
    vec![
        case("lamb default", base.clone()),
        case(
            "lamb weight_decay 0",
            Lamb {
                weight_decay: 0.0,
                ..base.clone()
            },
        ),
        case(
            "lamb trust_ratio_clamp",
            Lamb {
                trust_ratio_clamp: Some((0.8, 1.2)),
                ..base.clone()
            },
        ),
        case(
            "lamb unit_ratio_without_decay",
            Lamb {
                weight_decay: 0.0,
                unit_ratio_without_decay: true,
                ..base.clone()
            },
        ),
        case(
            "lamb eps_inside_sqrt",
            Lamb {
                eps: 1e-4,
                eps_inside_sqrt: true,
                ..base.clone()
            },
        ),
        case(
            "lamb maximize",
            Lamb {
                maximize: true,
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
                ..base
            },
            &[
                (5, Change::Lr(0.002)),
                (9, Change::Momentum(0.5)),
                (14, Change::Lr(0.03)),
                (20, Change::Momentum(0.95)),
            ],
        ),
    ]
}

/// Every LAMB configuration over the mixed lengths in chunks of 128, and
/// the richest alone at each length, in one chunk and in chunks of 64.
#[test]
fn lamb_every_option() {
    let cases = lamb_cases();
    let mut seen = Seen::default();
    let mut runs = 0;
    for (ci, case) in cases.iter().enumerate() {
        for (vi, options) in chunked_variants().iter().enumerate() {
            seen.add(compare(
                case,
                MIXED,
                options,
                3000 + 17 * ci as u64 + vi as u64,
            ));
            runs += 1;
        }
    }
    let richest = &cases[cases.len() - 1];
    for lengths in LENGTHS.chunks(1) {
        for options in [
            GpuOptions::default(),
            GpuOptions {
                max_chunk_elements: Some(64),
                ..GpuOptions::default()
            },
        ] {
            seen.add(compare(richest, lengths, &options, 3500));
            runs += 1;
        }
    }
    println!(
        "lamb: {} configurations, lengths {MIXED:?} together and each alone: {runs} runs of \
         {STEPS} steps, {} values compared, {} differ; largest |gpu - cpu| / (steps·ε·scale) \
         = {:.3} (bounds K = {K_LAMB_PARAMS} params, {K_LAMB_STATE} state)",
        cases.len(),
        seen.values,
        seen.differing,
        seen.worst
    );
}
