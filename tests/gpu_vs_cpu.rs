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
use common::cases::{self, Change, Input};
use common::{ctx, Envelope, Rng};
use wgpu_optim::{Config, CpuOptimizer, GpuOptimizer, GpuOptions, Optimizer};

const STEPS: usize = 25;
/// Operations per stored value per step that may round differently (see
/// the module documentation); a rule's own `K` is in the table
/// (tests/common/cases.rs, `gpu_k`).
const K: f64 = cases::K;

/// Tensors of mixed lengths in one optimizer: empty, shorter than a vec4,
/// around the 64-element chunk alignment, and long enough (with chunks of
/// 128) to straddle many chunk boundaries.
const MIXED: &[usize] = &[1757, 0, 1, 3, 4, 5, 63, 64, 65];
/// Every length once, each as the only tensor of its optimizer.
const LENGTHS: &[usize] = &[0, 1, 3, 4, 5, 63, 64, 65, 1757];
const LARGE: usize = 100_003;

/// Applies a scheduled change to an optimizer of either backend.
fn apply(change: Change, opt: &mut dyn Optimizer) {
    match change {
        Change::Lr(lr) => opt.set_lr(lr).unwrap(),
        Change::Momentum(m) => opt.set_momentum(m).unwrap(),
    }
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
fn compare(case: &Input, lengths: &[usize], options: &GpuOptions, seed: u64) -> Seen {
    let what = format!("{} / lengths {lengths:?} / {options:?}", case.desc);
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
                apply(change, &mut cpu);
                apply(change, &mut gpu);
                assert_eq!(cpu.config(), gpu.config());
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
    let (k_params, k_state) = cases::info(case.config.kind()).gpu_k;
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
         |gpu - cpu| / (steps·ε·scale) = {:.3} (bound: each rule's gpu_k in tests/common/cases.rs, K = {K} \
         for the element-wise ones)",
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
fn run_family(family: &str, cases: &[Input], seed: u64) {
    let mut seen = Seen::default();
    let mut runs = 0;
    for (ci, case) in cases.iter().enumerate() {
        for (vi, options) in chunked_variants().iter().enumerate() {
            seen.add(compare(
                case,
                MIXED,
                options,
                seed + 17 * ci as u64 + vi as u64,
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

/// Every configuration of every rule in the table (tests/common/cases.rs)
/// without clipping (tests/lamb_clip.rs compares the clipped ones) or a
/// schedule.
#[test]
fn every_rule_every_option() {
    for (ri, row) in cases::table().into_iter().enumerate() {
        let inputs: Vec<Input> = row
            .inputs
            .into_iter()
            .filter(|i| i.clip.is_none() && i.schedule.is_empty())
            .collect();
        run_family(row.rule.name(), &inputs, 1000 * (ri as u64 + 1));
    }
}

/// `set_lr` and `set_momentum` between steps, on both optimizers: every
/// scheduled configuration of the table.
#[test]
fn lr_and_momentum_changed_between_steps() {
    let inputs: Vec<Input> = cases::inputs()
        .into_iter()
        .filter(|i| i.clip.is_none() && !i.schedule.is_empty())
        .collect();
    run_family("set_lr / set_momentum", &inputs, 7000);
}

/// The richest configuration of each rule (the one setting the most
/// options; for SGD: Nesterov, weight decay and maximize, as dampening
/// excludes Nesterov).
fn one_per_rule() -> Vec<Input> {
    cases::table_rules().map(cases::richest).collect()
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
    let cases = one_per_rule();
    for (ci, case) in cases.iter().enumerate() {
        let lengths: &[usize] = if ci % 2 == 0 {
            &[LARGE]
        } else {
            &[3, LARGE, 65]
        };
        seen.add(compare(case, lengths, &options, 4242 + ci as u64));
    }
    report(
        &format!("large tensor ({LARGE} elements)"),
        cases.len(),
        seen,
    );
}
