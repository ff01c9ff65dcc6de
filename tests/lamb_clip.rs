//! LAMB, global-norm gradient clipping and schedules on the GPU, against
//! the CPU and against their definitions:
//!
//! 1. GPU against CPU: LAMB and its options, and clipping on every rule
//!    (to a `max_norm` that clips on most steps, and to one that never
//!    clips), 20 steps of fresh random gradients over tensors of mixed
//!    lengths (0, 1, 5, 4095, 4096, 4097 — tiles are 4096 elements — and
//!    tensors straddling chunk boundaries), parameters and every state
//!    tensor compared, and the total norm of every step; LAMB over 1000
//!    tensors (lengths 1, odd, 2 mod 4, multiples of 4, longer than a
//!    tile; zero parameter and zero update norms) with vec4 and scalar
//!    bindings, which give the same bits;
//! 2. determinism: two GPU runs of the same steps are bit-identical
//!    (parameters, state, `last_grad_norm`);
//! 3. clipping's semantics: the norm reported, a norm below `max_norm`
//!    changing nothing, `error_if_nonfinite` refusing a step and changing
//!    nothing, NaN propagating without it (as in PyTorch), `record_step`
//!    refusing `error_if_nonfinite`, the dispatch counts;
//! 4. LAMB's behaviour: trust ratio 1 where a norm is 0, the clamp, the
//!    loss falling on a quadratic;
//! 5. schedules driving the GPU optimizer: CyclicLR (triangular) on SGD
//!    momentum, OneCycleLR on AdamW's `beta1`, warmup + cosine on LAMB.
//!
//! Invalid LAMB hyperparameters and `ClipGradNorm` values are in
//! tests/errors.rs, with the other rules'.
//!
//! # Tolerances (GPU against CPU)
//!
//! tests/gpu_vs_cpu.rs argues the element-wise part: the CPU and the WGSL
//! kernels apply the same f32 operations in the same order from the same
//! host scalars, the GPU may contract `a·b + c` into an FMA and WGSL only
//! promises 2.5 ULP for `x / y` and about 4.5 ULP for `sqrt`; over a run,
//! with no feedback from the parameters to the gradients,
//!
//! ```text
//! |gpu − cpu| ≤ STEPS · K · ε · scale,   scale = max(max_t |x_t|, Σ_t |x_{t+1} − x_t|)
//! ```
//!
//! per element (`ε = f32::EPSILON`, `x` the CPU's values of the element
//! over the run), with `K = 8` for the element-wise rules. What is new here
//! are the reductions: the GPU sums squares in f32 by a fixed tree, the CPU
//! in f64. Each adds a term to `K`, derived below in units of `ε` (the unit
//! roundoff is `ε/2`), worst case, with no cancellation of rounding errors.
//!
//! * **A GPU sum of squares** of `n` non-negative terms rounds at most
//!   `SUM_ROUNDINGS = 34` times on any path from a term to the total: the
//!   square (1), a thread's running sum over at most 16 elements of a
//!   4096-element tile (15; LAMB's vec4 kernels take fewer: 3 in a lane
//!   of 4 vec4s, 2 adding the lanes, 2 for a head and a tail element),
//!   the 256-thread tree of the tile (8), a
//!   thread's running sum over the tile partials in the finishing kernel
//!   (1 while there are at most 512 tiles, as here), and that kernel's tree
//!   (8). All terms are ≥ 0, so the relative error is at most
//!   `34 · ε/2 = 17 ε`. The CPU's f64 sum is exact to f32 precision.
//! * **The total norm** (`sqrt`) halves that and adds `sqrt`'s own error:
//!   `NORM_K = 17/2 + 4.5 = 13 ε` between the GPU's norm and the exact one;
//!   the CPU's is the f64 norm rounded once to f32 (`ε/2`; 1 ε allowed).
//! * **The clip scale** `max_norm / (norm + 1e-6)`: the two norms differ by
//!   at most `13 + 1` ε, the addition rounds (ε/2 each side) and the
//!   division (2.5 ULP on the GPU, ε/2 on the CPU): `SCALE_K = 18 ε`. The
//!   clipped gradient `g·scale` rounds once more (1 ε), and the rules are at
//!   most quadratic in `g` (the `g²` of `v`, `sum`, `square_avg`), so a
//!   clipped run adds `K_CLIP = 2·(18 + 1) = 38` to every value's `K`.
//! * **LAMB's update** `u = m̂/(sqrt(v̂) + eps) + wd·θ` has three divisions,
//!   a square root, an addition and a possible FMA: `K_LAMB_ELEM = 14`
//!   instead of 8.
//! * **LAMB's trust ratio** `‖θ‖/‖u‖`: `‖u‖²` sums GPU values of `u` that
//!   are each `14 ε` off (`28 ε` squared) with `17 ε` of summation, so
//!   `‖u‖` is `(17 + 28)/2 + 4.5 = 27 ε` off; `‖θ‖` is `17/2 + 4.5 = 13 ε`
//!   off; the division adds 2.5 and the CPU's own roundings about 2:
//!   `K_RATIO = 44.5`. The ratio multiplies the whole update, so this enters
//!   the parameters only (LAMB's moments do not depend on it).
//!
//! So `K = 8` (element-wise rules), `8 + 38` (clipped), `14 (+ 44.5 for the
//! parameters)` (LAMB), `14 + 38 (+ 44.5)` (clipped LAMB). The tests print
//! the largest `|gpu − cpu| / (STEPS·ε·scale)` each run needed: on lavapipe
//! (IEEE division and square root, no contraction) far below the bound.
//!
//! Needs a GPU adapter: without one every GPU test fails with
//! [`wgpu_optim::Error::NoAdapter`]'s text, which says what to install.

mod common;
use common::{cases, ctx, params_flat, snapshot, Backend, Envelope, Rng};
use wgpu_optim::schedule::{CyclicLr, OneCycleLr, Schedule, Scheduler};
use wgpu_optim::{
    Adam, AdamW, ClipGradNorm, Config, CpuOptimizer, Error, GpuOptimizer, GpuOptions, Lamb,
    RuleKind, Sgd,
};

const EPS: f64 = f32::EPSILON as f64;

// ------------------------------------------------ tolerances (see the top)

/// Unit roundoff, in ε.
const U: f64 = 0.5;
/// WGSL's error bounds for `x / y` and `sqrt`, in ULP (≤ ε relative).
const DIV_ULPS: f64 = 2.5;
const SQRT_ULPS: f64 = 4.5;
/// Roundings on a path from a term to the GPU's total of a sum of squares.
const SUM_ROUNDINGS: f64 = 34.0;
/// Relative error of a GPU sum of squares, in ε.
const SUM_REL: f64 = SUM_ROUNDINGS * U;
/// The GPU's total gradient norm against the exact one, in ε.
const NORM_K: f64 = SUM_REL / 2.0 + SQRT_ULPS;
/// The CPU's total norm against the exact one (one rounding to f32), in ε.
const CPU_NORM_K: f64 = 1.0;
/// The GPU's clip scale against the CPU's, in ε.
const SCALE_K: f64 = NORM_K + CPU_NORM_K + 2.0 * U + DIV_ULPS + U;
/// Added to `K` by clipping: the scale's error and the product's rounding,
/// doubled for the rules' `g²`.
const K_CLIP: f64 = 2.0 * (SCALE_K + 1.0);
/// Element-wise operations that may round differently per stored value and
/// step: the element-wise rules (tests/gpu_vs_cpu.rs) and LAMB's `u`.
const K_ELEM: f64 = 8.0;
const K_LAMB_ELEM: f64 = 14.0;
/// Added to the parameters' `K` by LAMB's trust ratio.
const K_RATIO: f64 =
    (SUM_REL + 2.0 * K_LAMB_ELEM) / 2.0 + SQRT_ULPS + SUM_REL / 2.0 + SQRT_ULPS + DIV_ULPS + 2.0;

/// `K` of the parameters and of the state tensors of a run.
fn k_bounds(config: &Config, clipped: bool) -> (f64, f64) {
    let lamb = matches!(config, Config::Lamb(_));
    let elem = if lamb { K_LAMB_ELEM } else { K_ELEM };
    let clip = if clipped { K_CLIP } else { 0.0 };
    let ratio = if lamb { K_RATIO } else { 0.0 };
    (elem + clip + ratio, elem + clip)
}

// ------------------------------------------------------------- helpers

fn refs(v: &[Vec<f32>]) -> Vec<&[f32]> {
    v.iter().map(|t| t.as_slice()).collect()
}

/// The exact (f64) L2 norm of all gradients together.
fn norm_f64(grads: &[Vec<f32>]) -> f64 {
    grads
        .iter()
        .flatten()
        .map(|&g| g as f64 * g as f64)
        .sum::<f64>()
        .sqrt()
}

/// What comparisons saw.
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    /// The largest `|gpu − cpu| / (steps·ε·scale)`.
    worst: f64,
    /// The largest `|gpu_norm − exact| / (ε·exact)` of the total norms.
    worst_norm: f64,
    values: usize,
    differing: usize,
}

impl Seen {
    fn add(&mut self, o: Seen) {
        self.worst = self.worst.max(o.worst);
        self.worst_norm = self.worst_norm.max(o.worst_norm);
        self.values += o.values;
        self.differing += o.differing;
    }
}

/// A CPU and a GPU optimizer stepped together, with the CPU's envelopes.
struct Pair {
    what: String,
    cpu: CpuOptimizer,
    gpu: GpuOptimizer,
    names: Vec<&'static str>,
    env: Vec<Envelope>,
    initial: Vec<f32>,
    steps: usize,
    seen: Seen,
}

impl Pair {
    fn new(
        what: String,
        config: Config,
        clip: Option<ClipGradNorm>,
        init: &[Vec<f32>],
        options: GpuOptions,
    ) -> Pair {
        let mut cpu = CpuOptimizer::new(config.clone(), &refs(init)).unwrap();
        let mut gpu = GpuOptimizer::with_options(ctx(), config, &refs(init), options)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        cpu.set_clip_grad_norm(clip).unwrap();
        gpu.set_clip_grad_norm(clip).unwrap();
        let names = cpu.state_names().to_vec();
        assert_eq!(gpu.state_names(), names.as_slice(), "{what}");
        let env = std::iter::once(cpu.params_flat())
            .chain(names.iter().map(|n| cpu.state_flat(n).unwrap()))
            .map(Envelope::new)
            .collect();
        let initial = cpu.params_flat().to_vec();
        Pair {
            what,
            cpu,
            gpu,
            names,
            env,
            initial,
            steps: 0,
            seen: Seen::default(),
        }
    }

    /// One step on both; with clipping, checks both total norms against
    /// the exact one and returns it.
    fn step(&mut self, grads: &[Vec<f32>]) -> Option<f64> {
        let what = &self.what;
        let step = self.steps;
        self.cpu.step(&refs(grads)).unwrap();
        self.gpu
            .step(&refs(grads))
            .unwrap_or_else(|e| panic!("{what}: step {step}: {e}"));
        self.steps += 1;
        self.env[0].update(self.cpu.params_flat());
        for (k, n) in self.names.iter().enumerate() {
            self.env[k + 1].update(self.cpu.state_flat(n).unwrap());
        }
        self.cpu.clip_grad_norm()?;
        let exact = norm_f64(grads);
        let cpu = self.cpu.last_grad_norm().expect("clipping is on") as f64;
        let gpu = self.gpu.last_grad_norm().unwrap().expect("clipping is on") as f64;
        assert!(
            (cpu - exact).abs() <= CPU_NORM_K * EPS * exact,
            "{what}: step {step}: cpu norm {cpu:e}, exact {exact:e}"
        );
        let ratio = if exact > 0.0 {
            (gpu - exact).abs() / (EPS * exact)
        } else {
            assert_eq!(gpu, 0.0);
            0.0
        };
        assert!(
            ratio <= NORM_K,
            "{what}: step {step}: gpu norm {gpu:e}, exact {exact:e}, {ratio:.2} ε > {NORM_K} ε"
        );
        self.seen.worst_norm = self.seen.worst_norm.max(ratio);
        Some(exact)
    }

    /// Compares parameters (bound `k_params`) and every state tensor
    /// (`k_state`), and checks that the GPU wrote every element the CPU moved.
    fn check(&mut self, k_params: f64, k_state: f64) -> Seen {
        let what = &self.what;
        assert_eq!(self.gpu.step_count(), self.steps as u64, "{what}");
        assert_eq!(self.cpu.step_count(), self.steps as u64, "{what}");
        let gpu_params = self.gpu.read_params_flat().unwrap();
        let cpu_params = self.cpu.params_flat();
        for i in 0..cpu_params.len() {
            if cpu_params[i].to_bits() != self.initial[i].to_bits() {
                assert_ne!(
                    gpu_params[i].to_bits(),
                    self.initial[i].to_bits(),
                    "{what}: element {i} never written on the GPU"
                );
            }
        }
        let mut buffers = vec![("params", cpu_params.to_vec(), gpu_params, k_params)];
        for n in &self.names {
            buffers.push((
                n,
                self.cpu.state_flat(n).unwrap().to_vec(),
                self.gpu.read_state_flat(n).unwrap(),
                k_state,
            ));
        }
        let mut seen = self.seen;
        let steps = self.steps as f64;
        for ((name, c, g, k), env) in buffers.iter().zip(&self.env) {
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
                let unit = steps * EPS * env.scale(i);
                let ratio = diff / unit;
                assert!(
                    ratio <= *k,
                    "{what}: {name}[{i}]: cpu {cv:e}, gpu {gv:e}, |diff| {diff:e} > \
                     {steps}·{k}·ε·scale (scale {:e}, ratio {ratio:.2})",
                    env.scale(i)
                );
                seen.worst = seen.worst.max(ratio);
            }
        }
        seen
    }
}

// ------------------------------------------------ 1. GPU against CPU

const STEPS: usize = 20;
/// Tensors of mixed lengths in one optimizer. Tiles are 4096 elements: the
/// 4097 makes a tile of 1, 4095/4096 fill one; with chunks of 8192 the
/// 4096 (elements 4103..8199) and the 10 000 (8202..18202) straddle chunk
/// boundaries, where their tiles are cut.
const LENGTHS: &[usize] = &[4097, 0, 1, 5, 4096, 3, 10_000, 64, 4095, 300];
const CHUNK: u64 = 8192;
/// Gradient magnitude per tensor (cycled), so that eps matters somewhere.
const GRAD_SCALES: [f32; 3] = [1.0, 0.01, 3.0];
/// Initial parameter magnitude per tensor (cycled): LAMB's trust ratios
/// (`‖θ‖/‖u‖`, `|u|` about 1) are then near 1, 0.05 and 10, so a clamp to
/// `[0.5, 2]` binds below for some tensors, above for others, not at all
/// for the rest.
const INIT_SCALES: [f32; 3] = [2.0, 0.05, 10.0];

/// The gradient norm at step factor 1: `E[g²] = s²/3` for `g` uniform in
/// `[−s, s)`.
fn typical_norm(lengths: &[usize]) -> f64 {
    lengths
        .iter()
        .enumerate()
        .map(|(i, &n)| n as f64 * (GRAD_SCALES[i % 3] as f64).powi(2) / 3.0)
        .sum::<f64>()
        .sqrt()
}

/// One step's gradients: per-tensor magnitudes times a step factor
/// `2^(4u − 3)` in `[1/8, 2)`, so the total norm varies over a factor 16
/// from step to step.
fn step_grads(rng: &mut Rng, lengths: &[usize]) -> Vec<Vec<f32>> {
    let factor = 2f64.powf(4.0 * rng.unit() - 3.0) as f32;
    lengths
        .iter()
        .enumerate()
        .map(|(i, &n)| rng.vec_scaled(n, factor * GRAD_SCALES[i % 3]))
        .collect()
}

/// How a run clips.
#[derive(Clone, Copy, Debug)]
enum Clipping {
    Off,
    /// `max_norm` between the run's `steps/4`-th and next smallest total
    /// norms: all steps but the quarter with the smallest norms clip.
    Most,
    /// `max_norm` a thousand times the run's largest total norm.
    Never,
}

/// LAMB's configurations of the table (tests/common/cases.rs) without a
/// schedule or clipping: every option, and trust ratio clamps that bind for
/// some tensors and not others (`INIT_SCALES`).
fn lamb_cases() -> Vec<(String, Config)> {
    cases::info(RuleKind::Lamb)
        .inputs
        .into_iter()
        .filter(|i| i.schedule.is_empty() && i.clip.is_none())
        .map(|i| (i.desc, i.config))
        .collect()
}

/// Every configuration the table clips (at least one of every rule); the
/// runs here choose their own `max_norm`.
fn clip_cases() -> Vec<(String, Config)> {
    cases::clipping()
        .into_iter()
        .map(|i| (i.desc, i.config))
        .collect()
}

/// Dispatches of one step: LAMB `2c + 1`, the others `c`; clipping `c + 1` more.
fn expected_dispatches(config: &Config, clipped: bool, chunks: usize) -> usize {
    if chunks == 0 {
        return 0;
    }
    let rule = if matches!(config, Config::Lamb(_)) {
        2 * chunks + 1
    } else {
        chunks
    };
    rule + if clipped { chunks + 1 } else { 0 }
}

/// Runs `config` with `clipping` on both backends for `steps` steps and
/// compares everything; returns what it saw and how many steps clipped.
fn compare(
    name: &str,
    config: &Config,
    clipping: Clipping,
    lengths: &[usize],
    options: &GpuOptions,
    steps: usize,
    seed: u64,
) -> (Seen, usize) {
    let what = format!(
        "{name} / {clipping:?} / chunk {:?}",
        options.max_chunk_elements
    );
    let mut rng = Rng(seed);
    let init: Vec<Vec<f32>> = lengths
        .iter()
        .enumerate()
        .map(|(i, &n)| rng.vec_scaled(n, INIT_SCALES[i % 3]))
        .collect();
    let grads: Vec<Vec<Vec<f32>>> = (0..steps).map(|_| step_grads(&mut rng, lengths)).collect();
    let mut norms: Vec<f64> = grads.iter().map(|g| norm_f64(g)).collect();
    norms.sort_by(f64::total_cmp);
    let unclipped = steps / 4;
    let clip = match clipping {
        Clipping::Off => None,
        Clipping::Most => Some(ClipGradNorm::new(
            (norms[unclipped - 1] + norms[unclipped]) / 2.0,
        )),
        Clipping::Never => Some(ClipGradNorm::new(norms[steps - 1] * 1000.0)),
    };
    let mut pair = Pair::new(what.clone(), config.clone(), clip, &init, options.clone());
    let total: usize = lengths.iter().sum();
    let chunks = match options.max_chunk_elements {
        Some(c) => total.div_ceil(c as usize),
        None => usize::from(total > 0),
    };
    assert_eq!(
        pair.gpu.dispatches_per_step(),
        expected_dispatches(config, clip.is_some(), chunks),
        "{what}: dispatches"
    );
    let mut clipped = 0;
    for g in &grads {
        if let Some(exact) = pair.step(g) {
            clipped += usize::from(exact > clip.unwrap().max_norm);
        }
    }
    match clipping {
        Clipping::Off => {}
        Clipping::Most => assert_eq!(clipped, steps - unclipped, "{what}"),
        Clipping::Never => assert_eq!(clipped, 0, "{what}"),
    }
    let (kp, ks) = k_bounds(config, clip.is_some());
    (pair.check(kp, ks), clipped)
}

fn option_sets() -> [GpuOptions; 2] {
    [
        GpuOptions::default(),
        GpuOptions {
            max_chunk_elements: Some(CHUNK),
            ..GpuOptions::default()
        },
    ]
}

fn report(what: &str, runs: usize, seen: Seen) {
    println!(
        "{what}: {runs} runs, {} values compared, {} differ; largest |gpu - cpu| / \
         (steps·ε·scale) = {:.3}; largest gpu norm error {:.3} ε (bound {NORM_K} ε)",
        seen.values, seen.differing, seen.worst, seen.worst_norm
    );
}

#[test]
fn lamb_gpu_matches_cpu() {
    let mut seen = Seen::default();
    let mut runs = 0;
    for (ci, (name, config)) in lamb_cases().iter().enumerate() {
        for (oi, options) in option_sets().iter().enumerate() {
            let (s, _) = compare(
                name,
                config,
                Clipping::Off,
                LENGTHS,
                options,
                STEPS,
                100 + 10 * ci as u64 + oi as u64,
            );
            seen.add(s);
            runs += 1;
        }
    }
    let (kp, ks) = k_bounds(&Lamb::default().into(), false);
    // The table's LAMB bound (used by tests/gpu_vs_cpu.rs) is the one
    // derived at the top of this file.
    assert_eq!((kp, ks), cases::K_LAMB);
    report(
        &format!(
            "LAMB, {} configurations, bounds K = {kp} (params), {ks} (state)",
            lamb_cases().len()
        ),
        runs,
        seen,
    );
}

#[test]
fn clipping_gpu_matches_cpu_on_every_rule() {
    let mut seen = Seen::default();
    let mut runs = 0;
    let mut clipped_steps = 0;
    for (ci, (name, config)) in clip_cases().iter().enumerate() {
        for clipping in [Clipping::Most, Clipping::Never] {
            for (oi, options) in option_sets().iter().enumerate() {
                let (s, clipped) = compare(
                    name,
                    config,
                    clipping,
                    LENGTHS,
                    options,
                    STEPS,
                    500 + 10 * ci as u64 + oi as u64,
                );
                seen.add(s);
                clipped_steps += clipped;
                runs += 1;
            }
        }
    }
    report(
        &format!(
            "clipping on every rule ({clipped_steps} of {} steps clipped), bound K_CLIP = {K_CLIP} on top",
            runs * STEPS
        ),
        runs,
        seen,
    );
}

/// A tensor of more than 256 tiles and more than 256 tiles in all: the
/// finishing kernels' threads each add several partials.
#[test]
fn large_tensor_lamb_and_clipping() {
    let lengths = [3usize, 1_050_000, 4097];
    let mut seen = Seen::default();
    let mut runs = 0;
    let options = [
        GpuOptions::default(),
        GpuOptions {
            max_chunk_elements: Some(300_032),
            ..GpuOptions::default()
        },
    ];
    let configs: [(&str, Config); 2] = [
        (
            "lamb",
            Lamb {
                lr: 0.01,
                ..Lamb::default()
            }
            .into(),
        ),
        (
            "adam",
            Adam {
                lr: 0.01,
                ..Adam::default()
            }
            .into(),
        ),
    ];
    for (ci, (name, config)) in configs.iter().enumerate() {
        for (oi, o) in options.iter().enumerate() {
            let (s, _) = compare(
                name,
                config,
                Clipping::Most,
                &lengths,
                o,
                6,
                900 + 10 * ci as u64 + oi as u64,
            );
            seen.add(s);
            runs += 1;
        }
    }
    report("1 050 000-element tensor, clipped", runs, seen);
}

// ------------------------------------------------------ 2. determinism

/// Two GPU runs of the same steps: bit-identical parameters, state and
/// norms. 300 tensors of 0 to 700 elements and one of 300 000, in chunks
/// of 65 536: over 300 tiles (the finishing kernel's threads add several
/// partials), 6 chunks.
#[test]
fn two_gpu_runs_are_bit_identical() {
    let mut rng = Rng(7);
    let mut lengths: Vec<usize> = (0..300).map(|_| (rng.unit() * 700.0) as usize).collect();
    lengths.insert(150, 300_000);
    let init: Vec<Vec<f32>> = lengths.iter().map(|&n| rng.vec_scaled(n, 1.0)).collect();
    let grads: Vec<Vec<Vec<f32>>> = (0..12).map(|_| step_grads(&mut rng, &lengths)).collect();
    let max_norm = typical_norm(&lengths) / 4.0;
    let options = GpuOptions {
        max_chunk_elements: Some(65_536),
        ..GpuOptions::default()
    };
    let configs: [Config; 2] = [
        Lamb {
            lr: 0.01,
            trust_ratio_clamp: Some((0.1, 5.0)),
            ..Lamb::default()
        }
        .into(),
        Adam {
            lr: 0.01,
            ..Adam::default()
        }
        .into(),
    ];
    for config in configs {
        let run = || {
            let mut opt =
                GpuOptimizer::with_options(ctx(), config.clone(), &refs(&init), options.clone())
                    .unwrap();
            opt.set_clip_grad_norm(Some(ClipGradNorm::new(max_norm)))
                .unwrap();
            let mut norms = Vec::new();
            for g in &grads {
                opt.step(&refs(g)).unwrap();
                norms.push(opt.last_grad_norm().unwrap().unwrap().to_bits());
            }
            (snapshot(&opt), norms, opt.dispatches_per_step())
        };
        let (a, norms_a, dispatches) = run();
        let (b, norms_b, _) = run();
        assert_eq!(norms_a, norms_b, "{:?}: total norms differ", config.kind());
        assert!(a == b, "{:?}: parameters or state differ", config.kind());
        println!(
            "{}: {} tensors, {} elements, {dispatches} dispatches a step, {} steps: \
             bit-identical twice",
            config.kind(),
            lengths.len(),
            a.params.len(),
            grads.len()
        );
    }
}

// ------------------------------------------------- 3. clipping semantics

/// `last_grad_norm()` against the f64 norm on both backends, including
/// norm 0, one element, and no clipping (`None`).
#[test]
fn last_grad_norm_is_the_total_norm() {
    let lengths = [1usize, 0, 4097, 5];
    let mut rng = Rng(11);
    let init: Vec<Vec<f32>> = lengths.iter().map(|&n| rng.vec_scaled(n, 1.0)).collect();
    let mut cpu = CpuOptimizer::new(Sgd::default(), &refs(&init)).unwrap();
    let mut gpu = GpuOptimizer::new(ctx(), Sgd::default(), &refs(&init)).unwrap();
    assert_eq!(cpu.last_grad_norm(), None);
    assert_eq!(gpu.last_grad_norm().unwrap(), None);
    cpu.step(&refs(&init)).unwrap();
    gpu.step(&refs(&init)).unwrap();
    assert_eq!(cpu.last_grad_norm(), None, "clipping off: no norm");
    assert_eq!(gpu.last_grad_norm().unwrap(), None, "clipping off: no norm");
    let clip = Some(ClipGradNorm::new(1.0));
    cpu.set_clip_grad_norm(clip).unwrap();
    gpu.set_clip_grad_norm(clip).unwrap();
    assert_eq!(cpu.clip_grad_norm(), clip);
    assert_eq!(gpu.clip_grad_norm(), clip);
    let zeros: Vec<Vec<f32>> = lengths.iter().map(|&n| vec![0.0; n]).collect();
    let mut one = zeros.clone();
    one[2][4096] = -3.5;
    let mut sets = vec![zeros, one];
    for scale in [1e-6f32, 1.0, 1e6] {
        sets.push(lengths.iter().map(|&n| rng.vec_scaled(n, scale)).collect());
    }
    for (i, g) in sets.iter().enumerate() {
        cpu.step(&refs(g)).unwrap();
        gpu.step(&refs(g)).unwrap();
        let exact = norm_f64(g);
        let c = cpu.last_grad_norm().unwrap() as f64;
        let d = gpu.last_grad_norm().unwrap().unwrap() as f64;
        // CPU: the f64 norm rounded once to f32. GPU: NORM_K (see the top).
        assert!(
            (c - exact).abs() <= CPU_NORM_K * EPS * exact,
            "set {i}: cpu {c} vs {exact}"
        );
        assert!(
            (d - exact).abs() <= NORM_K * EPS * exact,
            "set {i}: gpu {d} vs {exact}"
        );
        if i == 0 {
            // All zeros: exactly 0 on both (a NaN here would poison the scale).
            assert_eq!((c, d), (0.0, 0.0), "set {i}");
        } else if i == 1 {
            // One element: its square and the sum are exact; the CPU's f64
            // sqrt is exact, WGSL's sqrt need not be (held to NORM_K above).
            assert_eq!(c, exact, "set {i}");
        }
    }
}

/// With a norm below `max_norm` the scale is exactly 1 and `g·1 = g`: the
/// CPU's steps are bit-for-bit those without clipping. On the GPU the
/// clipped kernel has one more multiplication (by exactly 1) that the
/// shader compiler may fuse differently into an FMA (1 ULP of an operand
/// per operation), so the two GPU runs are held to the element-wise bound
/// `STEPS·K_ELEM·ε·scale` (`K_LAMB_ELEM` for LAMB) and the number of
/// bit-identical runs is printed.
#[test]
fn a_norm_below_max_norm_changes_nothing() {
    let lengths = [5usize, 4097, 0, 64];
    let steps = 8;
    let mut gpu_bitwise = 0;
    for (ci, (name, config)) in clip_cases().iter().enumerate() {
        let mut rng = Rng(40 + ci as u64);
        let init: Vec<Vec<f32>> = lengths.iter().map(|&n| rng.vec_scaled(n, 1.0)).collect();
        let grads: Vec<Vec<Vec<f32>>> =
            (0..steps).map(|_| step_grads(&mut rng, &lengths)).collect();
        let mut plain = CpuOptimizer::new(config.clone(), &refs(&init)).unwrap();
        let mut clipped = plain.clone();
        clipped
            .set_clip_grad_norm(Some(ClipGradNorm::new(1e9)))
            .unwrap();
        let mut gpu_plain = GpuOptimizer::new(ctx(), config.clone(), &refs(&init)).unwrap();
        let mut gpu_clipped = GpuOptimizer::new(ctx(), config.clone(), &refs(&init)).unwrap();
        gpu_clipped
            .set_clip_grad_norm(Some(ClipGradNorm {
                max_norm: 1e9,
                error_if_nonfinite: true,
            }))
            .unwrap();
        let mut env = Envelope::new(plain.params_flat());
        for g in &grads {
            plain.step(&refs(g)).unwrap();
            clipped.step(&refs(g)).unwrap();
            gpu_plain.step(&refs(g)).unwrap();
            gpu_clipped.step(&refs(g)).unwrap();
            env.update(plain.params_flat());
        }
        assert_eq!(snapshot(&plain), snapshot(&clipped), "{name}: cpu");
        let (a, b) = (snapshot(&gpu_plain), snapshot(&gpu_clipped));
        if a == b {
            gpu_bitwise += 1;
            continue;
        }
        let k = if matches!(config, Config::Lamb(_)) {
            K_LAMB_ELEM
        } else {
            K_ELEM
        };
        for (i, (x, y)) in a.params.iter().zip(&b.params).enumerate() {
            let diff = (f32::from_bits(*x) as f64 - f32::from_bits(*y) as f64).abs();
            assert!(
                diff <= steps as f64 * k * EPS * env.scale(i),
                "{name}: gpu param {i}: {} vs {}",
                f32::from_bits(*x),
                f32::from_bits(*y)
            );
        }
    }
    println!(
        "norm below max_norm: CPU bit-identical to no clipping for {} configurations; GPU \
         bit-identical for {gpu_bitwise}",
        clip_cases().len()
    );
}

/// With `error_if_nonfinite`, a NaN or infinite gradient (at the first step
/// and later) is refused with `Error::NonFiniteGradNorm`, parameters, state
/// and step count unchanged (read back), and the next finite steps give
/// what a run that never saw the bad steps gives, bit for bit.
#[test]
fn error_if_nonfinite_refuses_the_step_and_changes_nothing() {
    let lengths = [5usize, 4097, 0, 64];
    let mut refused = 0;
    for (ci, (name, config)) in clip_cases().iter().enumerate() {
        let mut rng = Rng(60 + ci as u64);
        let init: Vec<Vec<f32>> = lengths.iter().map(|&n| rng.vec_scaled(n, 1.0)).collect();
        let good: Vec<Vec<Vec<f32>>> = (0..3).map(|_| step_grads(&mut rng, &lengths)).collect();
        let mut nan = good[0].clone();
        nan[1][4096] = f32::NAN;
        let mut inf = good[1].clone();
        inf[3][7] = f32::NEG_INFINITY;
        let clip = Some(ClipGradNorm {
            max_norm: typical_norm(&lengths) / 4.0,
            error_if_nonfinite: true,
        });
        // (gradients, refused?): bad at the very first step and later.
        let plan: [(&Vec<Vec<f32>>, bool); 5] = [
            (&nan, true),
            (&good[0], false),
            (&inf, true),
            (&good[1], false),
            (&good[2], false),
        ];
        let is_refusal = |r: Result<(), Error>, bad: &Vec<Vec<f32>>, what: &str| match r {
            Err(Error::NonFiniteGradNorm { norm }) => {
                let want = norm_f64(bad);
                assert!(
                    (norm.is_nan() && want.is_nan()) || norm == want,
                    "{what}: norm {norm}, want {want}"
                );
            }
            other => panic!("{what}: expected NonFiniteGradNorm, got {other:?}"),
        };

        let backends = Backend::both(GpuOptions {
            max_chunk_elements: Some(4096),
            ..GpuOptions::default()
        });
        for backend in &backends {
            let on = backend.name();
            let new = || {
                let mut o = backend.build(config.clone(), &refs(&init)).unwrap();
                o.set_clip_grad_norm(clip).unwrap();
                o
            };
            let (mut opt, mut replay) = (new(), new());
            for (g, bad) in plan {
                let before = snapshot(&*opt);
                let r = opt.step(&refs(g));
                if bad {
                    is_refusal(r, g, &format!("{name} {on}"));
                    assert_eq!(
                        snapshot(&*opt),
                        before,
                        "{name} {on}: a refused step changed something"
                    );
                    refused += 1;
                } else {
                    r.unwrap();
                    replay.step(&refs(g)).unwrap();
                    assert_eq!(
                        snapshot(&*opt),
                        snapshot(&*replay),
                        "{name} {on}: not the run without the refused steps"
                    );
                    let (n, m) = (
                        opt.last_grad_norm().unwrap().unwrap(),
                        replay.last_grad_norm().unwrap().unwrap(),
                    );
                    assert_eq!(n.to_bits(), m.to_bits(), "{name} {on}: norm");
                }
            }
            assert_eq!(opt.step_count(), 3, "{name} {on}");
        }
    }
    println!("{refused} refused steps (CPU and GPU), nothing changed by any");
}

/// Without `error_if_nonfinite` a non-finite norm goes into the step, as in
/// PyTorch (`clip_coef = max_norm / (nan + 1e-6)` multiplies every
/// gradient): a NaN makes every parameter NaN (but Rprop's, which stay as
/// they were, torch's `sign(NaN)` being 0, the NaN going into `prev`; and
/// Lion's, whose step is `lr·sign(NaN) = 0`: only its weight decay
/// applies); an infinite gradient gives scale 0, so the other gradients
/// become 0 (for plain SGD: those parameters unchanged) and that one
/// `inf·0 = NaN`.
#[test]
fn without_error_if_nonfinite_nan_propagates() {
    let lengths = [5usize, 4097, 0, 64];
    for (name, config) in clip_cases() {
        let mut rng = Rng(80);
        let init: Vec<Vec<f32>> = lengths.iter().map(|&n| rng.vec_scaled(n, 1.0)).collect();
        let mut g = step_grads(&mut rng, &lengths);
        g[3][10] = f32::NAN;
        let clip = Some(ClipGradNorm::new(1.0));
        for backend in Backend::both(GpuOptions::default()) {
            let on = backend.name();
            let mut opt = backend.build(config.clone(), &refs(&init)).unwrap();
            opt.set_clip_grad_norm(clip).unwrap();
            opt.step(&refs(&g)).unwrap();
            let norm = opt.last_grad_norm().unwrap().unwrap();
            assert!(norm.is_nan(), "{name} {on}: norm {norm}");
            let params = params_flat(&*opt);
            if config.kind() == RuleKind::Rprop {
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&params), bits(&init.concat()), "{name}: {on}");
                let prev = opt.read_state("prev").unwrap().concat();
                assert!(prev.iter().all(|p| p.is_nan()), "{name}: {on}");
            } else if let Config::Lion(lion) = &config {
                let decay = (1.0 - lion.lr * lion.weight_decay) as f32;
                let want: Vec<f32> = init.concat().iter().map(|p| p * decay).collect();
                assert_eq!(params, want, "{name}: {on}");
            } else {
                assert!(params.iter().all(|p| p.is_nan()), "{name}: {on}");
            }
            assert_eq!(opt.step_count(), 1, "{name} {on}");
        }
    }
    let sgd = Sgd {
        lr: 0.1,
        ..Sgd::default()
    };
    let init: Vec<Vec<f32>> = vec![vec![1.0, -2.0, 3.0], vec![0.5; 70]];
    let mut g: Vec<Vec<f32>> = vec![vec![0.1, 0.2, 0.3], vec![-0.25; 70]];
    g[1][66] = f32::INFINITY;
    let flat_init = init.concat();
    for backend in Backend::both(GpuOptions::default()) {
        let on = backend.name();
        let mut opt = backend.build(sgd.clone(), &refs(&init)).unwrap();
        opt.set_clip_grad_norm(Some(ClipGradNorm::new(1.0)))
            .unwrap();
        opt.step(&refs(&g)).unwrap();
        assert_eq!(opt.last_grad_norm().unwrap(), Some(f32::INFINITY), "{on}");
        for (i, (&p, &p0)) in params_flat(&*opt).iter().zip(&flat_init).enumerate() {
            if i == 3 + 66 {
                assert!(p.is_nan(), "{on}: the infinite gradient's parameter");
            } else {
                assert_eq!(p.to_bits(), p0.to_bits(), "{on}: param {i} moved");
            }
        }
    }
}

/// `record_step` cannot report a refused step: with `error_if_nonfinite` it
/// returns `Error::InvalidOptions` and records nothing; with plain clipping
/// it records the same step as `step_device`.
#[test]
fn record_step_and_error_if_nonfinite() {
    let init: Vec<Vec<f32>> = vec![vec![1.0, 2.0, 3.0], vec![-1.0; 100]];
    let g: Vec<Vec<f32>> = vec![vec![3.0, -4.0, 0.5], vec![0.25; 100]];
    for config in [Config::from(Lamb::default()), Config::from(Adam::default())] {
        let mut a = GpuOptimizer::new(ctx(), config.clone(), &refs(&init)).unwrap();
        let mut b = GpuOptimizer::new(ctx(), config.clone(), &refs(&init)).unwrap();
        a.set_clip_grad_norm(Some(ClipGradNorm {
            max_norm: 1.0,
            error_if_nonfinite: true,
        }))
        .unwrap();
        b.set_clip_grad_norm(Some(ClipGradNorm::new(1.0))).unwrap();
        a.write_grads(&refs(&g)).unwrap();
        b.write_grads(&refs(&g)).unwrap();
        let before = snapshot(&a);
        let mut encoder = ctx()
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        let e = a.record_step(&mut encoder, None).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidOptions(m) if m.contains("error_if_nonfinite")),
            "{e:?}"
        );
        b.record_step(&mut encoder, None).unwrap();
        ctx().queue().submit(Some(encoder.finish()));
        assert_eq!(
            snapshot(&a),
            before,
            "{:?}: a refused record_step recorded",
            config.kind()
        );
        assert_eq!(b.step_count(), 1);
        // The same step through step_device.
        a.set_clip_grad_norm(Some(ClipGradNorm::new(1.0))).unwrap();
        a.step_device().unwrap();
        assert_eq!(snapshot(&a), snapshot(&b), "{:?}", config.kind());
        assert_eq!(
            a.last_grad_norm().unwrap().map(f32::to_bits),
            b.last_grad_norm().unwrap().map(f32::to_bits)
        );
    }
}

/// Dispatches per step: `c` chunks, clipping `c + 1` more, LAMB `2c + 1`.
#[test]
fn dispatches_per_step() {
    let lengths = [4097usize, 0, 1, 5, 4096, 3];
    let init: Vec<Vec<f32>> = lengths.iter().map(|&n| vec![0.5; n]).collect();
    let configs: [Config; 3] = [
        Sgd::default().into(),
        AdamW::default().into(),
        Lamb::default().into(),
    ];
    let mut table = Vec::new();
    for config in &configs {
        for chunk in [None, Some(4096u64), Some(1024)] {
            let options = GpuOptions {
                max_chunk_elements: chunk,
                ..GpuOptions::default()
            };
            let mut opt =
                GpuOptimizer::with_options(ctx(), config.clone(), &refs(&init), options).unwrap();
            let c = chunk.map_or(1, |c| 8202usize.div_ceil(c as usize));
            let lamb = matches!(config, Config::Lamb(_));
            let rule = if lamb { 2 * c + 1 } else { c };
            assert_eq!(
                opt.dispatches_per_step(),
                rule,
                "{:?} {chunk:?}",
                config.kind()
            );
            opt.set_clip_grad_norm(Some(ClipGradNorm::new(1.0)))
                .unwrap();
            assert_eq!(opt.dispatches_per_step(), rule + c + 1);
            table.push(format!(
                "{} c={c}: {}",
                config.kind(),
                opt.dispatches_per_step()
            ));
            opt.set_clip_grad_norm(None).unwrap();
            assert_eq!(opt.dispatches_per_step(), rule);
        }
        // No element at all: nothing to dispatch.
        let none: [&[f32]; 2] = [&[], &[]];
        let mut empty = GpuOptimizer::new(ctx(), config.clone(), &none).unwrap();
        empty
            .set_clip_grad_norm(Some(ClipGradNorm::new(1.0)))
            .unwrap();
        assert_eq!(empty.dispatches_per_step(), 0);
        empty.step(&none).unwrap();
        assert_eq!(empty.last_grad_norm().unwrap(), Some(0.0));
    }
    println!("clipped dispatches per step: {}", table.join(", "));
}

// ------------------------------------------------- 4. LAMB's behaviour

/// `1 − β^t` as the library computes it (f64, rounded to f32).
fn bias_correction(beta: f64, t: u64) -> f32 {
    (-(t as f64 * beta.ln()).exp_m1()) as f32
}

/// LAMB's update direction of one element at step `t` from fresh moments
/// (`m = v = 0` before), in f32 with the library's operations.
fn first_u(c: &Lamb, p: f32, g: f32) -> f32 {
    let g = if c.maximize { -g } else { g };
    let m = c.betas.0 as f32 * 0.0 + (1.0 - c.betas.0) as f32 * g;
    let v = c.betas.1 as f32 * 0.0 + (1.0 - c.betas.1) as f32 * (g * g);
    let m_hat = m / bias_correction(c.betas.0, 1);
    let v_hat = v / bias_correction(c.betas.1, 1);
    let denom = if c.eps_inside_sqrt {
        (v_hat + c.eps as f32).sqrt()
    } else {
        v_hat.sqrt() + c.eps as f32
    };
    m_hat / denom + c.weight_decay as f32 * p
}

/// Runs one step of `config` from `init` with `grads` on both backends.
fn one_step(config: &Lamb, init: &[Vec<f32>], grads: &[Vec<f32>]) -> [Vec<f32>; 2] {
    let mut cpu = CpuOptimizer::new(config.clone(), &refs(init)).unwrap();
    let mut gpu = GpuOptimizer::new(ctx(), config.clone(), &refs(init)).unwrap();
    cpu.step(&refs(grads)).unwrap();
    gpu.step(&refs(grads)).unwrap();
    [cpu.params_flat().to_vec(), gpu.read_params_flat().unwrap()]
}

/// Where `‖θ‖ = 0` (a zero-initialised tensor) the ratio is 1: the first
/// step moves each element by exactly `lr·u`, next to a tensor whose ratio
/// is not 1. Where `‖u‖ = 0` (zero gradient, no weight decay) nothing
/// moves. The CPU is bit-exact; the GPU's `u` may be `K_LAMB_ELEM` ε off
/// (its division and square root), and `lr·u` rounds once more.
#[test]
fn lamb_trust_ratio_is_one_where_a_norm_is_zero() {
    let c = Lamb {
        lr: 0.01,
        ..Lamb::default()
    };
    let init = vec![vec![0.0f32; 5], vec![3.0, -4.0], vec![0.25, -0.5, 1.0]];
    let grads = vec![
        vec![0.5f32, -1.0, 2.0, -1e-3, 0.0],
        vec![1.0, 1.0],
        vec![0.0; 3],
    ];
    let c0 = Lamb {
        weight_decay: 0.0,
        ..c.clone()
    };
    for cfg in [&c, &c0] {
        let [cpu, gpu] = one_step(cfg, &init, &grads);
        for i in 0..5 {
            let want = 0.0 - (cfg.lr as f32 * 1.0) * first_u(cfg, 0.0, grads[0][i]);
            assert_eq!(cpu[i].to_bits(), want.to_bits(), "cpu element {i}");
            let tol = (K_LAMB_ELEM + 1.0) * EPS * want.abs() as f64;
            assert!(
                (gpu[i] - want).abs() as f64 <= tol,
                "gpu element {i}: {} vs {want}",
                gpu[i]
            );
        }
        // The second tensor: ratio ‖θ‖/‖u‖ = 5/‖u‖, not 1.
        let u: Vec<f32> = (0..2).map(|i| first_u(cfg, init[1][i], 1.0)).collect();
        let ratio = 5.0 / ((u[0] as f64).powi(2) + (u[1] as f64).powi(2)).sqrt();
        assert!(ratio > 3.0);
        for i in 0..2 {
            let want = init[1][i] as f64 - cfg.lr * ratio * u[i] as f64;
            for (backend, got) in [("cpu", cpu[5 + i]), ("gpu", gpu[5 + i])] {
                assert!(
                    (got as f64 - want).abs() <= 64.0 * EPS * want.abs(),
                    "{backend}: {got} vs {want}"
                );
            }
        }
        // The third: zero gradient.
        for i in 0..3 {
            if cfg.weight_decay == 0.0 {
                // u = 0 exactly: ratio 1 and θ − lr·0 = θ.
                assert_eq!(cpu[7 + i].to_bits(), init[2][i].to_bits());
                assert_eq!(gpu[7 + i].to_bits(), init[2][i].to_bits());
            } else {
                // u = wd·θ: the ratio is 1/wd and θ shrinks by lr exactly.
                let want = init[2][i] as f64 * (1.0 - cfg.lr);
                for got in [cpu[7 + i], gpu[7 + i]] {
                    assert!((got as f64 - want).abs() <= 64.0 * EPS * want.abs());
                }
            }
        }
    }
}

/// The clamp against a hand computation (f64, from the equations) on tiny
/// tensors: one whose ratio is above `max`, one below `min`, one inside.
/// Also `unit_ratio_without_decay`: ratio 1 with no weight decay, the
/// ratio itself with weight decay. The tolerance, 64 ε relative, covers the
/// f32 arithmetic of one step (u to `K_LAMB_ELEM`, the ratio to
/// `K_RATIO`) against exact arithmetic.
#[test]
fn lamb_trust_ratio_clamp_and_unit_ratio() {
    let init = vec![vec![3.0f32, 4.0], vec![1e-3, 0.0], vec![0.6, -0.8]];
    let grads = vec![vec![1.0f32, -1.0], vec![0.5, 0.25], vec![2.0, 0.1]];
    // Exact u of the first step with wd = 0: g/(|g| + eps) ≈ sign(g).
    let hand = |c: &Lamb, ratio_of: &dyn Fn(f64) -> f64| -> Vec<f64> {
        let mut out = Vec::new();
        for (p, g) in init.iter().zip(&grads) {
            let u: Vec<f64> = p
                .iter()
                .zip(g)
                .map(|(&p, &g)| {
                    let g = g as f64;
                    g / (g.abs() + c.eps) + c.weight_decay * p as f64
                })
                .collect();
            let pn = p.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            let un = u.iter().map(|x| x * x).sum::<f64>().sqrt();
            let r = ratio_of(if pn > 0.0 && un > 0.0 { pn / un } else { 1.0 });
            out.extend(p.iter().zip(&u).map(|(&p, &u)| p as f64 - c.lr * r * u));
        }
        out
    };
    let check = |c: &Lamb, want: Vec<f64>, what: &str| {
        let [cpu, gpu] = one_step(c, &init, &grads);
        for (backend, got) in [("cpu", cpu), ("gpu", gpu)] {
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g as f64 - w).abs() <= 64.0 * EPS * w.abs().max(1e-30),
                    "{what} {backend}[{i}]: {g} vs {w}"
                );
            }
        }
    };
    let c = Lamb {
        lr: 0.1,
        weight_decay: 0.0,
        trust_ratio_clamp: Some((0.5, 2.0)),
        ..Lamb::default()
    };
    // Unclamped ratios: 5/√2 ≈ 3.5, 1e-3/√2, 1/‖(1, 1)‖ ≈ 0.71.
    check(&c, hand(&c, &|r| r.clamp(0.5, 2.0)), "clamp (0.5, 2)");
    let free = Lamb {
        trust_ratio_clamp: None,
        ..c.clone()
    };
    check(&free, hand(&free, &|r| r), "no clamp");
    let unit = Lamb {
        unit_ratio_without_decay: true,
        ..free.clone()
    };
    check(&unit, hand(&unit, &|_| 1.0), "unit ratio, wd 0");
    let decayed = Lamb {
        weight_decay: 0.1,
        ..unit.clone()
    };
    check(
        &decayed,
        hand(&decayed, &|r| r),
        "unit ratio, wd 0.1 (ratio applies)",
    );
    // The clamped and the unclamped runs really differ.
    assert_ne!(
        one_step(&c, &init, &grads)[0],
        one_step(&free, &init, &grads)[0]
    );
}

/// LAMB lowers the loss of an elongated quadratic `½ Σ aᵢθᵢ²`, `aᵢ` from
/// 1 to 100, on both backends (the gradient `aᵢθᵢ` read back each step).
#[test]
fn lamb_lowers_a_quadratic() {
    let n = 64;
    let a: Vec<f32> = (0..n)
        .map(|i| 1.0 + 99.0 * i as f32 / (n - 1) as f32)
        .collect();
    let loss = |t: &[f32]| -> f64 {
        t.iter()
            .zip(&a)
            .map(|(&x, &ai)| 0.5 * ai as f64 * (x as f64).powi(2))
            .sum()
    };
    let grad = |t: &[f32]| -> Vec<f32> { t.iter().zip(&a).map(|(&x, &ai)| ai * x).collect() };
    let mut rng = Rng(3);
    let init = vec![rng.vec_scaled(n, 1.0), rng.vec_scaled(n, 1.0)];
    let config = Lamb {
        lr: 0.05,
        weight_decay: 0.0,
        ..Lamb::default()
    };
    let l0 = loss(&init.concat());
    let mut cpu = CpuOptimizer::new(config.clone(), &refs(&init)).unwrap();
    let mut gpu = GpuOptimizer::new(ctx(), config, &refs(&init)).unwrap();
    let steps = 150;
    for _ in 0..steps {
        let g: Vec<Vec<f32>> = cpu.params().iter().map(|t| grad(t)).collect();
        cpu.step(&refs(&g)).unwrap();
        let g: Vec<Vec<f32>> = gpu.read_params().unwrap().iter().map(|t| grad(t)).collect();
        gpu.step(&refs(&g)).unwrap();
    }
    let (lc, lg) = (
        loss(cpu.params_flat()),
        loss(&gpu.read_params_flat().unwrap()),
    );
    println!("LAMB on a quadratic, {steps} steps: loss {l0:.4} -> cpu {lc:.3e}, gpu {lg:.3e}");
    assert!(lc < 1e-3 * l0, "cpu: {l0} -> {lc}");
    assert!(lg < 1e-3 * l0, "gpu: {l0} -> {lg}");
}

// ------------------------------------------ 5. schedules driving the GPU

/// A triangular cyclic schedule (Smith 2017) on SGD momentum, stepping the
/// GPU and the CPU each with its own `Scheduler`: the lr is `base_lr` at
/// every cycle boundary and `max_lr` at every peak, the momentum the other
/// way round, both optimizers get the same values, and the GPU's
/// parameters and momentum buffer match the CPU's within the element-wise
/// bound (`K_ELEM`: the scalars change between steps, the kernels do not).
#[test]
fn cyclic_lr_drives_gpu_sgd_like_cpu() {
    let lengths = [4097usize, 1, 300];
    let (base_lr, max_lr, up, down) = (0.001, 0.1, 4u64, 6u64);
    let schedule = Schedule::Cyclic(CyclicLr {
        step_size_up: up,
        step_size_down: Some(down),
        ..CyclicLr::new(base_lr, max_lr)
    });
    let config = Sgd {
        lr: 0.5, // overwritten by CyclicLR
        momentum: 0.9,
        ..Sgd::default()
    };
    let mut rng = Rng(21);
    let init: Vec<Vec<f32>> = lengths.iter().map(|&n| rng.vec_scaled(n, 1.0)).collect();
    let options = GpuOptions {
        max_chunk_elements: Some(2048),
        ..GpuOptions::default()
    };
    let mut pair = Pair::new("cyclic sgd".into(), config.into(), None, &init, options);
    let mut cpu_sched = Scheduler::for_config(schedule.clone(), pair.cpu.config()).unwrap();
    let mut gpu_sched = Scheduler::for_config(schedule, pair.gpu.config()).unwrap();
    let cycle = up + down;
    let steps = 3 * cycle + 1;
    let mut lrs = Vec::new();
    for step in 0..steps {
        cpu_sched.apply_to_cpu(&mut pair.cpu).unwrap();
        gpu_sched.apply_to_gpu(&mut pair.gpu).unwrap();
        let (lr, m) = (gpu_sched.lr(), gpu_sched.momentum().unwrap());
        assert_eq!(pair.gpu.config(), pair.cpu.config(), "step {step}");
        assert_eq!(
            (pair.gpu.config().lr(), pair.gpu.config().momentum()),
            (lr, Some(m))
        );
        if step % cycle == 0 {
            assert_eq!((lr, m), (base_lr, 0.9), "step {step}: a cycle boundary");
        } else if step % cycle == up {
            assert!(
                (lr - max_lr).abs() <= 1e-12 * max_lr,
                "step {step}: peak lr {lr}"
            );
            assert!(
                (m - 0.8).abs() <= 1e-12,
                "step {step}: momentum at the peak {m}"
            );
        } else {
            assert!(
                base_lr < lr && lr < max_lr && 0.8 < m && m < 0.9,
                "step {step}"
            );
        }
        lrs.push(lr);
        let grads = step_grads(&mut rng, &lengths);
        pair.step(&grads);
        cpu_sched.advance();
        gpu_sched.advance();
    }
    // Up for `up` steps, down for `down`.
    for s in 0..cycle as usize {
        let rising = s < up as usize;
        assert_eq!(lrs[s + 1] > lrs[s], rising, "step {s}");
    }
    let seen = pair.check(K_ELEM, K_ELEM);
    report(&format!("CyclicLR triangular, {steps} steps"), 1, seen);
}

/// OneCycleLR driving AdamW's lr and `beta1` (down from `max_momentum` to
/// `base_momentum` at the peak and back), and warmup + cosine driving
/// LAMB's lr, GPU against CPU.
#[test]
fn one_cycle_drives_adamw_beta1_and_warmup_cosine_drives_lamb() {
    let lengths = [4097usize, 5, 64];
    let total = 20u64;
    let runs: [(&str, Config, Schedule); 2] = [
        (
            "one-cycle adamw",
            AdamW::default().into(),
            Schedule::OneCycle(OneCycleLr::new(0.01, total)),
        ),
        (
            "warmup-cosine lamb",
            Lamb {
                lr: 0.02,
                ..Lamb::default()
            }
            .into(),
            Schedule::warmup_cosine(0.1, 4, total - 4, 0.0),
        ),
    ];
    for (name, config, schedule) in runs {
        let mut rng = Rng(31);
        let init: Vec<Vec<f32>> = lengths.iter().map(|&n| rng.vec_scaled(n, 1.0)).collect();
        let mut pair = Pair::new(
            name.into(),
            config.clone(),
            None,
            &init,
            GpuOptions::default(),
        );
        let mut sched = Scheduler::for_config(schedule.clone(), &config).unwrap();
        let mut betas = Vec::new();
        for _ in 0..total {
            sched.apply_to_cpu(&mut pair.cpu).unwrap();
            sched.apply_to_gpu(&mut pair.gpu).unwrap();
            assert_eq!(pair.gpu.config(), pair.cpu.config());
            assert_eq!(pair.gpu.config().lr(), sched.lr());
            betas.push(pair.gpu.config().momentum().unwrap());
            let grads = step_grads(&mut rng, &lengths);
            pair.step(&grads);
            sched.advance();
        }
        if let Schedule::OneCycle(oc) = &schedule {
            // Peak at pct_start·total − 1 = step 5.
            let peak = (oc.pct_start * total as f64 - 1.0) as usize;
            assert_eq!(betas[0], oc.max_momentum);
            assert!((betas[peak] - oc.base_momentum).abs() < 1e-12, "{betas:?}");
            assert!((betas[total as usize - 1] - oc.max_momentum).abs() < 1e-12);
            assert!(betas[1..peak]
                .iter()
                .all(|&b| b < oc.max_momentum && b > oc.base_momentum));
        } else {
            assert!(betas.iter().all(|&b| b == 0.9), "no momentum cycling");
        }
        let (kp, ks) = k_bounds(&config, false);
        let seen = pair.check(kp, ks);
        report(name, 1, seen);
    }
}

// ------------------------------------------------------ README examples

/// The README's code blocks of the LAMB, clipping and schedule sections,
/// compiled and run; [`readme_blocks_are_these`] checks that the README
/// holds the same text. Not formatted by rustfmt: the text is the README's.
#[rustfmt::skip]
mod readme {
    use wgpu_optim::Error;

    #[test]
    fn readme_lamb() -> Result<(), Error> {
        use wgpu_optim::{ClipGradNorm, GpuContext, GpuOptimizer, Lamb};

        let ctx = GpuContext::new()?;
        let (w, b) = (vec![0.02f32; 1 << 16], vec![0.0f32; 1024]);
        let lamb = Lamb { lr: 1e-3, trust_ratio_clamp: Some((0.0, 10.0)), ..Lamb::default() };
        let mut opt = GpuOptimizer::new(&ctx, lamb, &[&w, &b])?;
        opt.set_clip_grad_norm(Some(ClipGradNorm::new(1.0)))?; // BERT's recipe clips to 1
        opt.step(&[&vec![0.01f32; 1 << 16], &vec![0.01f32; 1024]])?;
        assert_eq!(opt.dispatches_per_step(), 2 + 3); // clipping 2, LAMB 3 (one chunk)
        let b1 = &opt.read_params()?[1];
        assert!(b1.iter().all(|&x| (x + 1e-3).abs() < 1e-6)); // ratio 1: moved by lr·u, u ≈ 1
        Ok(())
    }

    #[test]
    fn readme_clipping() -> Result<(), Error> {
        use wgpu_optim::{AdamW, ClipGradNorm, Error, GpuContext, GpuOptimizer};

        let ctx = GpuContext::new()?;
        let weights = vec![0.1f32; 4096];
        let mut opt = GpuOptimizer::new(&ctx, AdamW::default(), &[&weights])?;
        opt.set_clip_grad_norm(Some(ClipGradNorm::new(1.0)))?; // clip_grad_norm_(params, 1.0)
        for step in 0..20 {
            let grads = vec![0.05f32; 4096]; // total norm 3.2: scaled down to 1
            opt.step(&[&grads])?; // norm, scale and update: one submission
            if step % 10 == 0 {
                let norm = opt.last_grad_norm()?; // waits for the step: ask when you log
                println!("step {step}: gradient norm {norm:?}");
            }
        }
        // Refuse a step whose gradient norm is NaN or infinite:
        opt.set_clip_grad_norm(Some(ClipGradNorm { max_norm: 1.0, error_if_nonfinite: true }))?;
        let bad = vec![f32::NAN; 4096];
        assert!(matches!(opt.step(&[&bad]), Err(Error::NonFiniteGradNorm { .. })));
        assert_eq!(opt.step_count(), 20); // nothing changed
        Ok(())
    }

    #[test]
    fn readme_schedule_kinds() -> Result<(), Error> {
        use wgpu_optim::schedule::{AnnealStrategy, CyclicLr, CyclicMode, OneCycleLr, Schedule};

        let base = 0.1; // the optimizer's lr
        // StepLR(step_size=30, gamma=0.1): × 0.1 every 30 steps.
        let step = Schedule::Step { step_size: 30, gamma: 0.1 };
        assert_eq!((step.lr_at(base, 29), step.lr_at(base, 30)), (0.1, 0.1 * 0.1));
        // MultiStepLR(milestones=[30, 80], gamma=0.1): × 0.1 at steps 30 and 80.
        let multi = Schedule::MultiStep { milestones: vec![30, 80], gamma: 0.1 };
        assert!((multi.lr_at(base, 80) - 1e-3).abs() < 1e-15);
        // ExponentialLR(gamma=0.99): × 0.99 every step.
        let exp = Schedule::Exponential { gamma: 0.99 };
        assert!((exp.lr_at(base, 100) - 0.1 * 0.99f64.powi(100)).abs() < 1e-12);
        // CosineAnnealingLR(T_max=1000, eta_min=1e-5): half a cosine down to eta_min.
        let cosine = Schedule::CosineAnnealing { t_max: 1000, eta_min: 1e-5 };
        assert!((cosine.lr_at(base, 1000) - 1e-5).abs() < 1e-12);
        // LinearLR(start_factor=0.01, total_iters=500): a linear warmup to the lr.
        let warmup = Schedule::Linear { start_factor: 0.01, end_factor: 1.0, total_iters: 500 };
        assert_eq!(warmup.lr_at(base, 0), 0.1 * 0.01);
        // SequentialLR([warmup, cosine], milestones=[500]); Schedule::warmup_cosine(0.01, 500, 1000, 1e-5)
        let warmup_cosine = Schedule::Sequential {
            schedules: vec![warmup.clone(), cosine.clone()],
            milestones: vec![500],
        };
        assert!((warmup_cosine.lr_at(base, 500) - 0.1).abs() < 1e-12);
        // CyclicLR(base_lr=1e-4, max_lr=1e-2, step_size_up=2000, mode="triangular2"):
        // the optimizer's lr is not used, the amplitude halves every cycle.
        let cyclic = Schedule::Cyclic(CyclicLr { mode: CyclicMode::Triangular2, ..CyclicLr::new(1e-4, 1e-2) });
        assert_eq!(cyclic.lr_at(base, 0), 1e-4);
        // OneCycleLR(max_lr=0.1, total_steps=10000, anneal_strategy="linear", three_phase=True).
        let one_cycle = Schedule::OneCycle(OneCycleLr {
            anneal_strategy: AnnealStrategy::Linear,
            three_phase: true,
            ..OneCycleLr::new(0.1, 10_000)
        });
        assert!((one_cycle.lr_at(base, 0) - 0.1 / 25.0).abs() < 1e-15); // max_lr / div_factor
        for s in [&step, &multi, &exp, &cosine, &warmup, &warmup_cosine, &cyclic, &one_cycle] {
            s.validate()?; // invalid parameters are typed errors, as the rules'
        }
        Ok(())
    }

    #[test]
    fn readme_scheduler() -> Result<(), Error> {
        use wgpu_optim::schedule::{Schedule, Scheduler};
        use wgpu_optim::{AdamW, Config, GpuContext, GpuOptimizer};

        let ctx = GpuContext::new()?;
        let config = Config::from(AdamW { lr: 3e-4, ..AdamW::default() });
        let weights = vec![0.1f32; 1000];
        let mut opt = GpuOptimizer::new(&ctx, config.clone(), &[&weights])?;
        // 20 warmup steps from 1% of the lr, then a cosine down to 0 over 180.
        let schedule = Schedule::warmup_cosine(0.01, 20, 180, 0.0);
        let mut sched = Scheduler::for_config(schedule.clone(), &config)?;
        for _ in 0..200 {
            sched.apply_to_gpu(&mut opt)?; // this step's lr (and momentum) into the optimizer
            opt.step(&[&vec![0.01f32; 1000]])?; // your gradients
            sched.advance(); // torch's scheduler.step()
        }
        let saved = sched.position(); // keep it with your checkpoint...
        let mut resumed = Scheduler::for_config(schedule, &config)?;
        resumed.set_position(saved); // ...and continue exactly where it stopped
        assert_eq!(resumed.lr(), sched.lr());
        Ok(())
    }

    #[test]
    fn readme_cyclic_triangular() -> Result<(), Error> {
        use wgpu_optim::schedule::{CyclicLr, CyclicMode, Schedule, Scheduler};
        use wgpu_optim::{GpuContext, GpuOptimizer, Sgd};

        let ctx = GpuContext::new()?;
        let weights = vec![0.1f32; 1000];
        // SGD with momentum (CyclicLR sets the lr and the momentum itself).
        let sgd = Sgd { lr: 0.001, momentum: 0.9, ..Sgd::default() };
        let mut opt = GpuOptimizer::new(&ctx, sgd, &[&weights])?;
        let iterations_per_epoch = 50;
        let triangular = CyclicLr {
            base_lr: 0.001,                        // lower bound, from the LR range test
            max_lr: 0.006,                         // upper bound
            step_size_up: 4 * iterations_per_epoch, // half a cycle: 4 epochs
            step_size_down: None,                  // the same down: a symmetric triangle
            mode: CyclicMode::Triangular,          // the same amplitude every cycle
            gamma: 1.0,                            // used by exp_range only
            cycle_momentum: true,                  // momentum 0.9 at base_lr, 0.8 at max_lr
            base_momentum: 0.8,
            max_momentum: 0.9,
        };
        let mut sched = Scheduler::for_config(Schedule::Cyclic(triangular), opt.config())?;
        assert_eq!(sched.lr_at(0), 0.001); // base_lr at the start of every cycle
        assert!((sched.lr_at(200) - 0.006).abs() < 1e-12); // max_lr step_size_up later
        assert_eq!(sched.lr_at(400), 0.001); // one cycle: 2 · step_size_up
        assert!((sched.momentum_at(200).unwrap() - 0.8).abs() < 1e-12); // base_momentum
        for _ in 0..400 {
            sched.apply_to_gpu(&mut opt)?;
            opt.step(&[&vec![0.01f32; 1000]])?;
            sched.advance();
        }
        Ok(())
    }

    #[test]
    fn readme_reduce_on_plateau() -> Result<(), Error> {
        use wgpu_optim::schedule::{ReduceLrOnPlateau, Schedule, Scheduler};
        use wgpu_optim::{GpuContext, GpuOptimizer, Sgd};

        let ctx = GpuContext::new()?;
        let sgd = Sgd { lr: 0.1, momentum: 0.9, ..Sgd::default() };
        let mut opt = GpuOptimizer::new(&ctx, sgd, &[&vec![0.1f32; 1000]])?;
        // ReduceLROnPlateau(optimizer, factor=0.5, patience=2, cooldown=1)
        let plateau = ReduceLrOnPlateau { factor: 0.5, patience: 2, cooldown: 1, ..ReduceLrOnPlateau::default() };
        let mut sched = Scheduler::for_config(Schedule::ReduceOnPlateau(plateau), opt.config())?;
        let val_losses = [1.0, 0.8, 0.7, 0.7, 0.71, 0.7, 0.69, 0.72, 0.7, 0.7];
        for &loss in &val_losses {
            sched.apply_to_gpu(&mut opt)?;
            opt.step(&[&vec![0.01f32; 1000]])?; // your gradients
            sched.advance_with_metric(loss)?; // torch's scheduler.step(val_loss)
        }
        // The 6th loss is the third in a row not below 0.7 · (1 − 1e-4): halved.
        // 0.69 is a new best, then 0.72, 0.7, 0.7 do not beat it: halved again.
        assert_eq!(sched.lr(), 0.1 * 0.5 * 0.5);
        assert_eq!(sched.plateau_state().unwrap().best, 0.69);
        Ok(())
    }

    #[test]
    fn readme_lambda_checkpoint() -> Result<(), Error> {
        use wgpu_optim::schedule::{Schedule, Scheduler};
        use wgpu_optim::{AdamW, Checkpoint, Config, CpuOptimizer, Error};

        let config = Config::from(AdamW { lr: 1e-3, ..AdamW::default() });
        let mut opt = CpuOptimizer::new(config.clone(), &[&vec![0.1f32; 1000]])?;
        // LambdaLR(optimizer, lambda epoch: min(1.0, (epoch + 1) / 100)): a linear warmup.
        let warmup = || Schedule::lambda(|epoch| f64::min(1.0, (epoch + 1) as f64 / 100.0));
        let mut sched = Scheduler::for_config(warmup(), &config)?;
        for _ in 0..50 {
            sched.apply_to_cpu(&mut opt)?;
            opt.step(&[&vec![0.01f32; 1000]])?;
            sched.advance();
        }
        assert_eq!(sched.lr(), 1e-3 * (51.0 / 100.0));
        let mut ckpt = opt.checkpoint();
        ckpt.set_scheduler(Some(&sched)); // saved without the closure
        let back = Checkpoint::from_bytes(&ckpt.to_bytes()?)?;
        assert!(matches!(back.scheduler(), Err(Error::Checkpoint(_))));
        let resumed = back.scheduler_with(warmup())?.expect("saved above");
        assert_eq!((resumed.position(), resumed.lr()), (50, sched.lr()));
        Ok(())
    }
}

/// Every ```` ```rust ```` block of README.md from "### LAMB" up to "## Proof
/// against PyTorch" is, line for line (indentation aside), one of the
/// functions of [`readme`]; the "## Matrix rules" section in between is
/// tests/matrix.rs's.
#[test]
fn readme_blocks_are_these() {
    let readme = include_str!("../README.md");
    let start = readme.find("\n### LAMB").expect("README: no LAMB section");
    let end = readme
        .find("\n## Proof against PyTorch")
        .expect("README: no proof section");
    let this: Vec<&str> = include_str!("lamb_clip.rs")
        .lines()
        .map(str::trim)
        .collect();
    let range = &readme[start..end];
    let matrix = range
        .find("\n## Matrix rules")
        .expect("README: no matrix rules section");
    let after = range[matrix + 1..]
        .find("\n## ")
        .map_or(range.len(), |k| matrix + 1 + k);
    let text = format!("{}{}", &range[..matrix], &range[after..]);
    let mut rest = text.as_str();
    let mut blocks = 0;
    while let Some(i) = rest.find("```rust\n") {
        let body = &rest[i + "```rust\n".len()..];
        let j = body.find("```").expect("README: unclosed code block");
        let lines: Vec<&str> = body[..j].lines().map(str::trim).collect();
        assert!(
            this.windows(lines.len()).any(|w| w == lines.as_slice()),
            "this README block is not in tests/lamb_clip.rs (mod readme):\n{}",
            &body[..j]
        );
        blocks += 1;
        rest = &body[j + 3..];
    }
    assert_eq!(blocks, 7, "README code blocks checked");
}

/// `last_grad_norm` answers the same on both backends: `None` while clipping
/// is off and before the first step after turning it on, the norm of the
/// last step clipping saw otherwise, a refused step's included.
#[test]
fn last_grad_norm_is_the_same_on_cpu_and_gpu() {
    let params: &[&[f32]] = &[&[1.0, -2.0, 3.0], &[0.5]];
    let good: &[&[f32]] = &[&[3.0, 0.0, 4.0], &[0.0]];
    let bad: &[&[f32]] = &[&[f32::NAN, 0.0, 4.0], &[0.0]];
    let mut cpu = CpuOptimizer::new(Adam::default(), params).unwrap();
    let mut gpu = GpuOptimizer::new(ctx(), Adam::default(), params).unwrap();
    let norms = |cpu: &CpuOptimizer, gpu: &GpuOptimizer| {
        (cpu.last_grad_norm(), gpu.last_grad_norm().unwrap())
    };
    cpu.step(good).unwrap();
    gpu.step(good).unwrap();
    assert_eq!(norms(&cpu, &gpu), (None, None), "clipping off");
    let clip = ClipGradNorm {
        max_norm: 1.0,
        error_if_nonfinite: true,
    };
    cpu.set_clip_grad_norm(Some(clip)).unwrap();
    gpu.set_clip_grad_norm(Some(clip)).unwrap();
    assert_eq!(
        norms(&cpu, &gpu),
        (None, None),
        "no step since clipping went on"
    );
    cpu.step(good).unwrap();
    gpu.step(good).unwrap();
    // 3-4-5: the norm is exact in f32 on both (the GPU's sqrt of 25 within
    // WGSL's 2.5 ulp).
    let (c, g) = norms(&cpu, &gpu);
    assert_eq!(c, Some(5.0));
    assert!(
        (g.unwrap() - 5.0).abs() <= 3.0 * 5.0 * f32::EPSILON,
        "{g:?}"
    );
    assert!(matches!(
        cpu.step(bad),
        Err(Error::NonFiniteGradNorm { .. })
    ));
    assert!(matches!(
        gpu.step(bad),
        Err(Error::NonFiniteGradNorm { .. })
    ));
    let (c, g) = norms(&cpu, &gpu);
    assert!(
        c.unwrap().is_nan() && g.unwrap().is_nan(),
        "refused step's norm: {c:?} {g:?}"
    );
    cpu.set_clip_grad_norm(None).unwrap();
    gpu.set_clip_grad_norm(None).unwrap();
    assert_eq!(norms(&cpu, &gpu), (None, None), "clipping off again");
    cpu.set_clip_grad_norm(Some(clip)).unwrap();
    gpu.set_clip_grad_norm(Some(clip)).unwrap();
    assert_eq!(
        norms(&cpu, &gpu),
        (None, None),
        "no stale norm after turning it on again"
    );
}

/// 1000 tensors of mixed lengths: ones, odd and even lengths that are not
/// multiples of 4 (so tensors start at every offset modulo 4, and the tile
/// kernels' scalar heads and tails meet inside one vec4 of the
/// neighbour's), multiples of 4, and a few longer than a tile. Every 7th
/// tensor starts at zero (‖θ‖ = 0 on the first step: ratio 1), every 11th
/// has zero gradients on every step (with no weight decay ‖u‖ = 0: ratio
/// 1, and the tensor must not move), and every 77th has both.
fn many_tensor_lengths() -> Vec<usize> {
    let mut rng = Rng(77);
    (0..1000)
        .map(|t| match t % 10 {
            0 => 1,
            1 | 2 => 1 + 2 * (rng.next_u64() % 60) as usize, // odd
            3 | 4 => 2 + 4 * (rng.next_u64() % 40) as usize, // even, not a multiple of 4
            5 => 4 * (1 + (rng.next_u64() % 50) as usize),
            6 if t % 100 == 6 => 4096 + 1 + (rng.next_u64() % 3000) as usize,
            _ => 1 + (rng.next_u64() % 200) as usize,
        })
        .collect()
}

fn many_tensor_run(config: &Config, options: GpuOptions, steps: usize) -> Pair {
    let lengths = many_tensor_lengths();
    let mut rng = Rng(1234);
    let init: Vec<Vec<f32>> = lengths
        .iter()
        .enumerate()
        .map(|(t, &n)| {
            let v = rng.vec_scaled(n, INIT_SCALES[t % 3]);
            if t % 7 == 0 {
                vec![0.0; n]
            } else {
                v
            }
        })
        .collect();
    let what = format!("1000 tensors: {config:?}, {options:?}");
    let mut pair = Pair::new(what, config.clone(), None, &init, options);
    for _ in 0..steps {
        let mut grads = step_grads(&mut rng, &lengths);
        for (t, g) in grads.iter_mut().enumerate() {
            if t % 11 == 0 {
                g.iter_mut().for_each(|x| *x = 0.0);
            }
        }
        pair.step(&grads);
    }
    pair
}

/// LAMB over 1000 tensors (`many_tensor_lengths`) against the CPU with the
/// bounds derived at the top (`K_LAMB_ELEM`, `K_RATIO`; the per-tensor
/// sums here add at most a few tile partials, well inside the 34 roundings
/// counted), with vec4 and scalar bindings and with chunks that cut
/// tensors; the two widths give the same bits (the kernels compute on
/// vec4s either way, only the loads differ), and the tensors whose
/// gradients and weight decay are zero do not move.
#[test]
fn lamb_over_1000_tensors_matches_cpu() {
    const MANY_STEPS: usize = 6;
    let configs: [Config; 2] = [
        Lamb::default().into(),
        Lamb {
            weight_decay: 0.0,
            ..Lamb::default()
        }
        .into(),
    ];
    let lengths = many_tensor_lengths();
    let offsets: Vec<usize> = lengths
        .iter()
        .scan(0, |at, &n| {
            let start = *at;
            *at += n;
            Some(start)
        })
        .collect();
    assert!(lengths.contains(&1) && lengths.iter().any(|n| n % 4 == 2));
    assert!(lengths.iter().any(|n| n % 2 == 1 && *n > 1));
    let mut seen = Seen::default();
    for config in &configs {
        let (kp, ks) = k_bounds(config, false);
        let mut params_by_width = Vec::new();
        for width in [4, 1] {
            for chunk in [None, Some(CHUNK)] {
                let options = GpuOptions {
                    vector_width: Some(width),
                    max_chunk_elements: chunk,
                    ..GpuOptions::default()
                };
                let mut pair = many_tensor_run(config, options, MANY_STEPS);
                assert_eq!(pair.gpu.vector_width(), width);
                seen.add(pair.check(kp, ks));
                let gpu = pair.gpu.read_params_flat().unwrap();
                if matches!(config, Config::Lamb(l) if l.weight_decay == 0.0) {
                    for t in (0..lengths.len()).step_by(11) {
                        let r = offsets[t]..offsets[t] + lengths[t];
                        assert_eq!(gpu[r.clone()], pair.initial[r], "tensor {t} moved");
                    }
                }
                params_by_width.push((chunk, gpu));
            }
        }
        let (vec4, scalar) = params_by_width.split_at(2);
        for ((chunk, a), (_, b)) in vec4.iter().zip(scalar) {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(
                bits(a) == bits(b),
                "{config:?}, chunk {chunk:?}: widths 4 and 1 differ"
            );
        }
    }
    report("LAMB over 1000 tensors", 8, seen);
}
