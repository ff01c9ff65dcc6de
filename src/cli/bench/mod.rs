//! `wgpu-optim bench`: the median step time and bandwidth of every rule, on
//! the CPU and on the GPU adapter, at the sizes PyTorch's own bench script
//! (`torch_optim_bench.py`) uses, with the same rule names, presets and
//! GB/s definition, so the two outputs can be put side by side.
//!
//! What is measured:
//!
//! - **CPU**: [`CpuOptimizer::step_flat`] on all cores, each step timed on
//!   its own after `--warmup` untimed steps; `--steps` samples.
//! - **CPU, roofline**: `x ← x + a·y` in place over `n` floats on all cores
//!   (a step's access pattern, 12 bytes an element; a plain copy would pay a
//!   read for ownership on every store): `copy_gbps` and `roofline` of the
//!   CPU rows (the step's GB/s over it).
//! - **GPU, wall clock**: `--batch` steps ([`GpuOptimizer::step_device`],
//!   one submission each, the gradients uploaded once beforehand) submitted
//!   back to back, then one [`GpuContext::wait`]; the elapsed time divided by
//!   the batch is one sample; `--steps` samples. This is what a training loop
//!   that never reads back pays per step, submission overhead included.
//! - **GPU, kernel**: where the device has `TIMESTAMP_QUERY`, another
//!   `steps × batch` steps (at most 2048) recorded with
//!   [`GpuOptimizer::record_step`] and timestamps at the start and end of
//!   their compute pass; `kernel_ms` is the median of those intervals.
//! - **GPU, copy**: a compute-shader copy (`vec4<f32>` loads and stores, the
//!   rule kernels' shape) of the gradient buffer onto the parameter buffer
//!   (both `n` floats), timed with timestamps where the device has them (else
//!   as the wall-clock steps). It moves `8·n` bytes: `copy_gbps` is the
//!   bandwidth a kernel can reach on this device, and `roofline` is the
//!   step's kernel GB/s (wall-clock GB/s without timestamps) over it.
//!   `dma_copy_gbps` is `copy_buffer_to_buffer` of the same bytes, wall
//!   clock (on an NVIDIA H200 it runs on a copy engine at about a fifth of
//!   what a kernel reaches).
//!
//! Each sample is a median over `--steps` (the upper median for an even
//! count, as PyTorch's script takes it); `gbps = bytes_per_param · n /
//! median / 1e9` with [`Config::bytes_per_param`] (f32 parameter read and
//! write, gradient read, each state tensor read and write: the bytes a fused
//! step must move). Parameters start as N(0, 1) samples and gradients are
//! N(0, 1) samples with no zero among them, the same every step.
//!
//! `--verify` then builds a fresh GPU optimizer and a fresh CPU optimizer from
//! the same parameters, runs `--verify-steps` steps with the same gradients on
//! both and compares the parameters. Both apply the same per-element
//! functions to the same f32 scalars, so they differ only by rounding: a
//! final subtraction rounded differently (at most 1 ulp of θ, ≤ ε·|θ|), and
//! the update itself computed with WGSL's looser division and square root (a
//! few ulp each, ≤ 2.5) and possibly fused multiply-adds, a relative error of
//! at most ~8ε on each step's update. Over `V` steps that is at most
//! `V·ε·|θ| + 8ε·Σ|Δ|`. With the same gradient every step each element moves
//! the same way every step, so `Σ|Δ| ≈ |θ_V − θ_0|`. The error reported is
//! `|θ_gpu − θ_cpu| / (ε · scale)` with `scale = max(|θ_0|, |θ_cpu|) + |θ_cpu −
//! θ_0|`, and it must stay within `4·V` (4 ulp per step, never below 8).
//!
//! `dispatches_per_step` is [`GpuOptimizer::dispatches_per_step`] on the GPU
//! (one per storage-binding-sized chunk, whatever `--tensors` is) and 0 on
//! the CPU, which dispatches nothing.
//!
//! On a software adapter (lavapipe, SwiftShader, WARP:
//! [`super::software_adapter`]) the GPU rows check that the kernels run and
//! measure nothing about a GPU's speed; `bench` says so on stderr before it
//! starts, and without `--sizes` runs the GPU at 1M only (the CPU at every
//! size). A progress bar goes to stderr when stderr is a terminal, nothing
//! otherwise.
//!
//! Exit status: 0 when everything ran (and verified); 1 when the GPU was
//! asked for and there is none (the CPU part still runs), a GPU run failed,
//! or a verification failed.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde_json::{json, Value};
mod gpt2;
mod gpu;
mod plot;

use gpu::*;

use wgpu_optim::precision::{ParamDtype, Precision, StateDtype};
use wgpu_optim::{
    ClipGradNorm, Config, CpuOptimizer, GpuContext, GpuOptimizer, GpuOptions, RuleKind, TensorView,
};

/// A rule with the hyperparameters PyTorch's bench script gives it: one of
/// the rules' presets ([`RuleKind::presets`]), by its place in [`presets`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preset(usize);

/// Every preset, in the order they run: each rule's, in [`RuleKind::ALL`]
/// order.
fn presets() -> &'static [wgpu_optim::rules::Preset] {
    static ALL: OnceLock<Vec<wgpu_optim::rules::Preset>> = OnceLock::new();
    ALL.get_or_init(|| {
        RuleKind::ALL
            .into_iter()
            .flat_map(RuleKind::presets)
            .collect()
    })
}

impl Preset {
    /// Every preset, in the order they run.
    fn all() -> impl Iterator<Item = Preset> {
        (0..presets().len()).map(Preset)
    }

    /// Its name on the command line and in the output (PyTorch's script's
    /// names where it has the rule).
    fn name(self) -> &'static str {
        presets()[self.0].name
    }

    fn config(self) -> Config {
        presets()[self.0].config.clone()
    }

    /// Global-norm clipping the preset steps with.
    fn clip(self) -> Option<ClipGradNorm> {
        presets()[self.0].clip
    }

    /// The bytes a step must move per parameter: the rule's, plus one more
    /// read of the gradient for the clipping norm.
    fn bytes_per_param(self) -> usize {
        self.config().bytes_per_param() + if self.clip().is_some() { 4 } else { 0 }
    }
}

/// One `--rules` item: a preset, or `all` of them.
#[derive(Clone, Debug)]
pub struct RuleSet(Vec<Preset>);

fn parse_rules(s: &str) -> Result<RuleSet, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("all") {
        return Ok(RuleSet(Preset::all().collect()));
    }
    Preset::all()
        .find(|p| p.name().eq_ignore_ascii_case(s))
        .map(|p| RuleSet(vec![p]))
        .ok_or_else(|| {
            let names: Vec<&str> = Preset::all().map(|p| p.name()).collect();
            format!("unknown rule `{s}` (known: {}, all)", names.join(", "))
        })
}

/// A number of parameters: `1048576`, `64K`, `16M`, `1G` (K, M, G are
/// powers of two: 2^10, 2^20, 2^30, as in PyTorch's script; `1.5M` works),
/// or `2^20`.
fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let bad = || format!("bad size `{s}`: use e.g. 1048576, 64K, 16M, 1G or 2^20");
    let n: f64 = if let Some((base, exp)) = t.split_once('^') {
        let base: u32 = base.trim().parse().map_err(|_| bad())?;
        let exp: u32 = exp.trim().parse().map_err(|_| bad())?;
        (base as f64).powi(exp as i32)
    } else {
        let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
            Some('K') => (&t[..t.len() - 1], (1u64 << 10) as f64),
            Some('M') => (&t[..t.len() - 1], (1u64 << 20) as f64),
            Some('G') => (&t[..t.len() - 1], (1u64 << 30) as f64),
            _ => (t, 1.0),
        };
        num.trim().parse::<f64>().map_err(|_| bad())? * mult
    };
    if !(n >= 1.0 && n.fract() == 0.0 && n < (1u64 << 48) as f64) {
        return Err(format!(
            "bad size `{s}`: must be a whole number of at least 1"
        ));
    }
    Ok(n as usize)
}

/// Where a step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The CPU optimizer, on all cores.
    Cpu,
    /// The GPU optimizer, on the adapter `wgpu-optim info` shows as chosen.
    Gpu,
}

/// Where the GPU optimizer's tensors live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchLayout {
    /// Packed back to back in the optimizer's own buffers
    /// (`GpuOptimizer::with_options`).
    Packed,
    /// Scattered as a framework's memory pool places them: the tensors
    /// spread over [`POOLS`] parameter and [`POOLS`] gradient buffers, each
    /// at the next 256-byte-aligned offset of its pool (burn's alignment),
    /// stepped through views (`GpuOptimizer::from_views`).
    Scattered,
    /// GPT-2 small's 48 block matrices (`torch_optim_bench.py`'s
    /// `GPT2_SMALL`) with their shapes, stepped by Adam, AdamW, Adafactor
    /// and Muon on each backend (`--rules`, `--sizes` and `--tensors` are
    /// not read): step times, and Muon's Newton–Schulz TFLOPS against the
    /// GPU's f32 peak measured in the same run (src/cli/bench/gpt2.rs).
    /// Not combined with another layout.
    Gpt2Small,
}

/// Pooled buffers of `--layout scattered`, for the parameters and for the
/// gradients each.
pub(super) const POOLS: usize = 8;

/// `--tensors` when it is not given: 1, or 1000 when a layout is
/// scattered (the pool's case; the packed rows are then the same model).
const SCATTERED_TENSORS: u64 = 1000;

fn layout_name(l: BenchLayout) -> &'static str {
    match l {
        BenchLayout::Packed => "packed",
        BenchLayout::Scattered => "scattered",
        BenchLayout::Gpt2Small => "gpt2-small",
    }
}

/// Arguments of `bench`.
#[derive(clap::Args, Debug)]
#[command(after_long_help = AFTER_HELP)]
pub struct BenchArgs {
    /// Rules, comma separated: sgd, sgd_momentum, nesterov, adagrad, rmsprop,
    /// adam, adam_amsgrad, adamw, adam_clip, lamb, adadelta, rprop, lion,
    /// ademamix, radam, adamax, nadam, nadamw, asgd, schedulefree_sgd,
    /// schedulefree_adamw, or all. Presets as
    /// PyTorch's bench script: lr 1e-3 (adagrad 1e-2), momentum 0.9,
    /// PyTorch's defaults otherwise (and the reference packages' for the
    /// rules the script lacks). The default runs every rule once (and Adam
    /// clipped).
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = parse_rules,
        default_value = "sgd,sgd_momentum,adagrad,rmsprop,adam,adamw,adam_clip,lamb,radam,adamax,nadam,asgd,adadelta,rprop,lion,ademamix,schedulefree_sgd,schedulefree_adamw"
    )]
    rules: Vec<RuleSet>,
    /// Parameter counts, comma separated: K, M, G are 2^10, 2^20, 2^30
    /// (64K, 1M, 16M, 1G); plain numbers and 2^N work too. Default 1M,16M,
    /// except that a software GPU adapter (lavapipe, SwiftShader, WARP)
    /// runs only 1M unless this is given.
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    sizes: Option<Vec<usize>>,
    /// Timed samples per rule, size and backend (a GPU sample is `--batch` steps).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    steps: u32,
    /// Untimed steps before the timed ones.
    #[arg(long, default_value_t = 3)]
    warmup: u32,
    /// GPU only: after --warmup, keep stepping (untimed) for this long, so
    /// that an idle GPU has raised its clocks before the timed samples.
    #[arg(long, default_value_t = 1000)]
    warmup_ms: u64,
    /// GPU steps submitted back to back per sample, before one wait.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Backends, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "cpu,gpu")]
    backends: Vec<Backend>,
    /// Split each size over this many tensors (as equal as can be).
    /// Default 1, or 1000 when `--layout` has `scattered`.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    tensors: Option<u64>,
    /// GPU only: where the tensors live, comma separated: packed (the
    /// optimizer's own buffers) or scattered (1000 tensors, by default,
    /// over 8 pooled buffers at 256-byte-aligned offsets, through
    /// `from_views`; LAMB unsupported). A GPU row per
    /// layout; the CPU rows are packed. Or, alone, gpt2-small: GPT-2
    /// small's 48 block matrices with Adam, AdamW, Adafactor and Muon on
    /// each backend (--rules and --sizes not read), with Muon's
    /// Newton–Schulz TFLOPS and its fraction of the GPU's measured f32 peak.
    #[arg(long, value_delimiter = ',', default_value = "packed")]
    layout: Vec<BenchLayout>,
    /// After timing, check the GPU against the CPU from the same start.
    #[arg(long)]
    verify: bool,
    /// Steps `--verify` runs on both.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    verify_steps: u32,
    /// One JSON object per line per rule, size and backend, instead of a table.
    #[arg(long)]
    json: bool,
    /// GPU kernels' load width: 4 (`vec4<f32>`) or 1; default 4.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4))]
    vector_width: Option<u32>,
    /// GPU kernels compiled without wgpu's bounds checks
    /// (`GpuOptions::skip_bounds_checks`; safe by construction).
    #[arg(long)]
    unchecked: bool,
    /// Also draw GB/s against the number of parameters (log scale), one
    /// line per rule and backend, from the rows this run measured, into
    /// this PNG file.
    #[arg(long, value_name = "FILE.png")]
    plot: Option<std::path::PathBuf>,
    /// The parameters' format, f32, bf16 or f16
    /// (`CpuOptimizer::with_precision`, `GpuOptimizer::with_precision`);
    /// bf16 without --master-weights is stochastic rounding. A GPU row in a
    /// mode the GPU does not have is refused.
    #[arg(long, default_value = "f32", value_parser = parse_param_dtype)]
    param_dtype: ParamDtype,
    /// The state's format, f32, bf16 or 8bit (bitsandbytes' blockwise
    /// scheme; with --verify the GPU's codes are compared with the CPU's).
    #[arg(long, default_value = "f32", value_parser = parse_state_dtype)]
    state_dtype: StateDtype,
    /// Keep f32 master weights behind 16-bit parameters.
    #[arg(long)]
    master_weights: bool,
}

fn parse_param_dtype(s: &str) -> Result<ParamDtype, String> {
    s.parse().map_err(|e: wgpu_optim::Error| e.to_string())
}

fn parse_state_dtype(s: &str) -> Result<StateDtype, String> {
    s.parse().map_err(|e: wgpu_optim::Error| e.to_string())
}

impl BenchArgs {
    fn precision(&self) -> Precision {
        Precision {
            param_dtype: self.param_dtype,
            state_dtype: self.state_dtype,
            master_weights: self.master_weights,
            seed: 0,
        }
    }

    /// The number of tensors each size is split into.
    fn tensors(&self) -> usize {
        let default = if self.layout.contains(&BenchLayout::Scattered) {
            SCATTERED_TENSORS
        } else {
            1
        };
        self.tensors.unwrap_or(default) as usize
    }

    fn gpu_options(&self) -> GpuOptions {
        GpuOptions {
            vector_width: self.vector_width,
            skip_bounds_checks: self.unchecked,
            ..GpuOptions::default()
        }
    }
}

const AFTER_HELP: &str = "\
GB/s = bytes_per_param x n / median step time / 1e9, bytes_per_param counting the f32 parameter \
read and write, the gradient read and each state tensor's read and write (as PyTorch's \
torch_optim_bench.py). CPU: each step timed on its own. GPU: --batch steps submitted back to \
back, one wait, divided by --batch; kernel_ms from timestamp queries where the device has them; \
copy_gbps from a compute-shader copy of the same size (roofline = kernel GB/s / copy_gbps; \
on the CPU an in-place x += a*y), \
dma_copy_gbps from copy_buffer_to_buffer. \
dispatches_per_step is 0 on the CPU. --verify bounds the GPU-CPU difference by 4 f32 ulp per \
step (of max(|p0|,|p|) + |p - p0|). Exit status 1 when the GPU was asked for and is missing, a \
GPU run failed or a verification failed.";

/// One line of output.
struct Row {
    rule: &'static str,
    n: usize,
    tensors: usize,
    backend: Backend,
    /// Where the tensors live (the CPU's are packed).
    layout: BenchLayout,
    adapter: String,
    bytes_per_param: usize,
    median_ms: f64,
    min_ms: f64,
    dispatches_per_step: usize,
    kernel_ms: Option<f64>,
    copy_gbps: Option<f64>,
    dma_copy_gbps: Option<f64>,
    verify: Option<Verify>,
    /// GPU kernel variant: `vec4` or `scalar`, `+unchecked` without bounds checks.
    variant: Option<String>,
    /// GPU wall-clock samples, ms per step, in the order taken.
    samples_ms: Vec<f64>,
    /// CPU: bytes the optimizer holds a parameter
    /// (`CpuOptimizer::resident_bytes`).
    resident_bytes_per_param: Option<f64>,
}

impl Row {
    fn gbps_at(&self, ms: f64) -> f64 {
        self.bytes_per_param as f64 * self.n as f64 / (ms * 1e-3) / 1e9
    }
}

/// `--sizes` when it is not given.
const DEFAULT_SIZES: [usize; 2] = [1 << 20, 16 << 20];

/// The largest of [`DEFAULT_SIZES`] a software GPU adapter runs when
/// `--sizes` is not given: its rows measure nothing about speed, and its
/// 16M rows took ten of a default run's eleven minutes on two cores.
const SOFTWARE_DEFAULT_MAX: usize = 1 << 20;

/// Per-run settings the jobs share.
struct Plan<'a> {
    args: &'a BenchArgs,
    pb: &'a ProgressBar,
}

/// The upper median, as PyTorch's script takes it, and the minimum.
fn median_min(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0])
}

/// `1M`, `64K`, `1G` where `n` is a whole number of them; the number otherwise.
fn size_label(n: usize) -> String {
    for (shift, suffix) in [(30, "G"), (20, "M"), (10, "K")] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{}{suffix}", n >> shift);
        }
    }
    n.to_string()
}

/// SplitMix64: a small seeded generator, enough for benchmark data.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Two N(0, 1) samples (Box–Muller).
    fn normal_pair(&mut self) -> (f32, f32) {
        let r = (-2.0 * self.unit().ln()).sqrt();
        let theta = std::f64::consts::TAU * self.unit();
        ((r * theta.cos()) as f32, (r * theta.sin()) as f32)
    }
}

/// `n` N(0, 1) samples, on all cores; with `nonzero`, exact zeros are
/// replaced (a zero gradient would leave its element untouched).
fn normal_vec(n: usize, seed: u64, nonzero: bool) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let mut v = vec![0.0f32; n];
    v.par_chunks_mut(CHUNK).enumerate().for_each(|(i, chunk)| {
        let mut rng = SplitMix(seed ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        for pair in chunk.chunks_mut(2) {
            let (a, b) = rng.normal_pair();
            pair[0] = a;
            if let Some(x) = pair.get_mut(1) {
                *x = b;
            }
        }
        if nonzero {
            for x in chunk.iter_mut().filter(|x| **x == 0.0) {
                *x = 1e-3;
            }
        }
    });
    v
}

/// `n` elements split into `t` tensors as equal as can be.
fn split_lengths(n: usize, t: usize) -> Vec<usize> {
    (0..t).map(|i| n / t + usize::from(i < n % t)).collect()
}

fn split<'a>(flat: &'a [f32], lengths: &[usize]) -> Vec<&'a [f32]> {
    let mut rest = flat;
    lengths
        .iter()
        .map(|&l| {
            let (head, tail) = rest.split_at(l);
            rest = tail;
            head
        })
        .collect()
}

fn cpu_label() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "CPU".into());
    format!("{model} ({} threads)", rayon::current_num_threads())
}

/// The CPU's roofline: `x ← x + a·y` over a buffer of the same size as `y`,
/// on all cores with the CPU optimizer's own chunking: the access pattern
/// of a step (read two streams, write one back in place), 12 bytes an
/// element. A plain copy is no roofline on a CPU: its stores to lines it
/// never read cost a read for ownership each. Median GB/s over `samples`.
fn cpu_roofline_gbps(y: &[f32], samples: u32) -> f64 {
    let mut x = vec![0.0f32; y.len()];
    let mut times = Vec::with_capacity(samples as usize);
    for _ in 0..samples.max(1) + 1 {
        let t = Instant::now();
        x.par_chunks_mut(1 << 15)
            .zip(y.par_chunks(1 << 15))
            .for_each(|(x, y)| x.iter_mut().zip(y).for_each(|(x, y)| *x += 1e-3 * y));
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    std::hint::black_box(&x);
    times.remove(0); // the first pass also faults the pages in
    12.0 * y.len() as f64 / (median_min(times).0 * 1e-3) / 1e9
}

/// Median and least ms a step, and the optimizer's resident bytes.
fn bench_cpu(
    plan: &Plan<'_>,
    preset: Preset,
    params: &[&[f32]],
    grads: &[f32],
) -> wgpu_optim::Result<(f64, f64, usize)> {
    let mut opt = CpuOptimizer::with_precision(preset.config(), params, plan.args.precision())?;
    opt.set_clip_grad_norm(preset.clip())?;
    for _ in 0..plan.args.warmup {
        opt.step_flat(grads)?;
    }
    let mut times = Vec::with_capacity(plan.args.steps as usize);
    for _ in 0..plan.args.steps {
        let t = Instant::now();
        opt.step_flat(grads)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        plan.pb.inc(1);
    }
    let (median, min) = median_min(times);
    Ok((median, min, opt.resident_bytes()))
}

/// Bytes a step moves a parameter in a low-precision mode: the gradient
/// read, the parameter (and master) and each state read and written in
/// its format (8-bit: a byte, absmax not counted); `None` in f32, where
/// the rule's own count holds.
fn low_precision_traffic(preset: Preset, p: Precision) -> Option<usize> {
    if p.is_f32() {
        return None;
    }
    let states = preset.config().state_names().len();
    let state_bytes = match p.state_dtype {
        StateDtype::F32 => 4,
        StateDtype::Bf16 => 2,
        StateDtype::Int8Blockwise => 1,
    };
    let master = if p.master_weights { 8 } else { 0 };
    Some(4 + 2 * p.param_dtype.bytes() + master + 2 * state_bytes * states)
}

/// The table's columns: header and width.
struct Table {
    adapter_width: usize,
    verify: bool,
}

impl Table {
    fn header(&self) -> String {
        let mut s = format!(
            "{:<13} {:>6} {:>7} {:<9} {:<7} {:<aw$} {:>10} {:>10} {:>8} {:>10} {:>5}",
            "rule",
            "n",
            "tensors",
            "layout",
            "backend",
            "adapter",
            "median ms",
            "min ms",
            "GB/s",
            "kernel ms",
            "disp",
            aw = self.adapter_width
        );
        if self.verify {
            s.push_str("  verify (err/limit, ε·scale)");
        }
        s
    }

    fn row(&self, r: &Row) -> String {
        let kernel = r
            .kernel_ms
            .map_or_else(|| "-".to_string(), |k| format!("{k:.4}"));
        let disp = match r.backend {
            Backend::Cpu => "-".to_string(),
            Backend::Gpu => r.dispatches_per_step.to_string(),
        };
        let mut s = format!(
            "{:<13} {:>6} {:>7} {:<9} {:<7} {:<aw$} {:>10.4} {:>10.4} {:>8.1} {:>10} {:>5}",
            r.rule,
            size_label(r.n),
            r.tensors,
            layout_name(r.layout),
            backend_name(r.backend),
            r.adapter,
            r.median_ms,
            r.min_ms,
            r.gbps_at(r.median_ms),
            kernel,
            disp,
            aw = self.adapter_width
        );
        if let Some(v) = &r.verify {
            s.push_str(&format!("  {}", v.text()));
        }
        s
    }
}

fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::Cpu => "cpu",
        Backend::Gpu => "gpu",
    }
}

fn row_json(r: &Row, args: &BenchArgs) -> Value {
    let gbps = r.gbps_at(r.median_ms);
    let mut v = json!({
        "impl": "wgpu-optim",
        "rule": r.rule,
        "n": r.n,
        "tensors": r.tensors,
        "layout": layout_name(r.layout),
        "backend": backend_name(r.backend),
        "adapter": r.adapter,
        "steps": args.steps,
        "warmup": args.warmup,
        "warmup_ms": if r.backend == Backend::Gpu { args.warmup_ms } else { 0 },
        "batch": if r.backend == Backend::Gpu { args.batch } else { 1 },
        "median_ms": r.median_ms,
        "min_ms": r.min_ms,
        "gbps": gbps,
        "bytes_per_param": r.bytes_per_param,
        "dispatches_per_step": r.dispatches_per_step,
        "kernel_ms": r.kernel_ms,
        "kernel_gbps": r.kernel_ms.map(|k| r.gbps_at(k)),
        "copy_gbps": r.copy_gbps,
        "dma_copy_gbps": r.dma_copy_gbps,
        // Kernel time against kernel time where there are timestamps.
        "roofline": r.copy_gbps.map(|c| r.kernel_ms.map_or(gbps, |k| r.gbps_at(k)) / c),
        "kernel": r.variant,
        "param_dtype": args.param_dtype.name(),
        "state_dtype": args.state_dtype.name(),
        "master_weights": args.master_weights,
        "resident_bytes_per_param": r.resident_bytes_per_param,
    });
    if !r.samples_ms.is_empty() {
        v["samples_ms"] = json!(r.samples_ms);
    }
    if r.backend == Backend::Cpu {
        v["threads"] = json!(rayon::current_num_threads());
    }
    if let Some(ver) = &r.verify {
        v["verify"] = json!(ver.text());
        v["verify_ok"] = json!(ver.ok());
        v["verify_steps"] = json!(ver.steps);
        v["verify_max_abs"] = json!(ver.max_abs);
        v["verify_max_err"] = json!(ver.max_err);
        v["verify_limit"] = json!(ver.limit);
        if let Some(c) = &ver.codes {
            v["verify_codes"] = json!(c.total);
            v["verify_codes_differing"] = json!(c.differing);
            v["verify_codes_max_step"] = json!(c.max_step);
        }
    }
    v
}

/// Prints a line on stdout without tearing the progress bar.
fn emit(pb: &ProgressBar, line: &str) {
    pb.suspend(|| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    });
}

/// Runs `bench`.
pub fn run(args: BenchArgs) -> wgpu_optim::Result<ExitCode> {
    if args.layout.contains(&BenchLayout::Gpt2Small) {
        if args.layout.iter().any(|&l| l != BenchLayout::Gpt2Small) {
            return Err(wgpu_optim::Error::InvalidOptions(
                "--layout gpt2-small is a model of its own: not combined with packed or scattered"
                    .into(),
            ));
        }
        return gpt2::run(&args);
    }
    let mut presets: Vec<Preset> = Vec::new();
    for p in args.rules.iter().flat_map(|r| r.0.iter().copied()) {
        if !presets.contains(&p) {
            presets.push(p);
        }
    }
    let mut sizes = args.sizes.clone().unwrap_or(DEFAULT_SIZES.to_vec());
    sizes.dedup();
    let tensors = args.tensors();
    let mut layouts = args.layout.clone();
    layouts.dedup();
    if let Some(&n) = sizes.iter().find(|&&n| n < tensors) {
        return Err(wgpu_optim::Error::InvalidOptions(format!(
            "--tensors {tensors} is more than the {n} parameters of size {}: every tensor needs at least one",
            size_label(n)
        )));
    }
    if let Some(file) = &args.plot {
        plot::check(file)?;
    }
    let want_cpu = args.backends.contains(&Backend::Cpu);
    let want_gpu = args.backends.contains(&Backend::Gpu);
    let mut failed = false;
    // What --plot draws: (rule, n, backend, GB/s) of every row measured.
    let mut measured: Vec<(&'static str, usize, Backend, f64)> = Vec::new();

    let ctx = if want_gpu {
        match GpuContext::new() {
            Ok(ctx) => Some(ctx),
            Err(e) => {
                eprintln!("wgpu-optim: {e}");
                if want_cpu {
                    eprintln!("wgpu-optim: running the CPU part only");
                }
                if args.json {
                    println!(
                        "{}",
                        json!({"impl": "wgpu-optim", "backend": "gpu", "error": e.to_string()})
                    );
                }
                failed = true;
                None
            }
        }
    } else {
        None
    };
    if args.verify && ctx.is_none() && !failed {
        eprintln!(
            "wgpu-optim: --verify compares the GPU with the CPU; no GPU run, nothing to verify"
        );
    }

    let cpu_adapter = cpu_label();
    let gpu_adapter = ctx.as_ref().map(|c| c.adapter_label());
    // A software adapter, said once before anything runs; the default run
    // leaves out its large sizes.
    let software = ctx
        .as_ref()
        .is_some_and(|c| super::software_adapter(c.adapter_info()));
    let gpu_max = if software && args.sizes.is_none() {
        SOFTWARE_DEFAULT_MAX
    } else {
        usize::MAX
    };
    if let (true, Some(label)) = (software, &gpu_adapter) {
        let left_out: Vec<String> = sizes
            .iter()
            .filter(|&&n| n > gpu_max)
            .map(|&n| size_label(n))
            .collect();
        let mut note = format!(
            "wgpu-optim: note: the GPU adapter, {label}, is a software one that runs on the CPU: \
             its GPU rows show that the kernels run and say nothing about a GPU's speed"
        );
        if !left_out.is_empty() {
            let all: Vec<String> = sizes.iter().map(|&n| size_label(n)).collect();
            note.push_str(&format!(
                "; its GPU rows at {} are left out (--sizes {} runs them)",
                left_out.join(", "),
                all.join(",")
            ));
        }
        eprintln!("{note}");
    }
    let table = Table {
        adapter_width: [
            Some(&cpu_adapter).filter(|_| want_cpu),
            gpu_adapter.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|s| s.chars().count())
        .max()
        .unwrap_or(7)
        .max(7),
        verify: args.verify && ctx.is_some(),
    };

    let backends: Vec<Backend> = [
        Some(Backend::Cpu).filter(|_| want_cpu),
        Some(Backend::Gpu).filter(|_| ctx.is_some()),
    ]
    .into_iter()
    .flatten()
    .collect();
    // The backends that run at size `n`.
    let backends_at = |n: usize| -> Vec<Backend> {
        backends
            .iter()
            .copied()
            .filter(|&b| b != Backend::Gpu || n <= gpu_max)
            .collect()
    };
    let jobs: u64 = sizes
        .iter()
        .map(|&n| {
            let runs: usize = backends_at(n)
                .iter()
                .map(|&b| if b == Backend::Gpu { layouts.len() } else { 1 })
                .sum();
            (presets.len() * runs) as u64
        })
        .sum();
    // Progress on stderr only where someone watches it: nothing in a log
    // or a pipe, so that --json and redirected output stay clean.
    let pb = if std::io::stderr().is_terminal() {
        let pb = ProgressBar::new(jobs * args.steps as u64);
        pb.set_style(
            ProgressStyle::with_template(
                "{spinner} {bar:30.cyan/blue} {pos}/{len} [{elapsed_precise}] {msg}",
            )
            .expect("valid template"),
        );
        // Ticks between samples too: a slow phase (a software adapter's
        // timestamps, say) still shows the clock moving.
        pb.enable_steady_tick(std::time::Duration::from_millis(200));
        pb
    } else {
        ProgressBar::hidden()
    };
    let plan = Plan {
        args: &args,
        pb: &pb,
    };

    if !args.json && !backends.is_empty() {
        emit(&pb, &table.header());
    }
    for (si, &n) in sizes.iter().enumerate() {
        let backends = backends_at(n);
        if backends.is_empty() {
            continue;
        }
        // The big host allocations, once per size: every rule starts from
        // the same parameters and steps with the same gradients.
        pb.set_message(format!("generating {} parameters", size_label(n)));
        let flat_params = normal_vec(n, 0x5EED_0000 + 2 * si as u64, false);
        let flat_grads = normal_vec(n, 0x5EED_0001 + 2 * si as u64, true);
        let lengths = split_lengths(n, tensors);
        let params = split(&flat_params, &lengths);
        let grads = split(&flat_grads, &lengths);
        // Each backend with each layout it runs: the CPU's tensors are
        // packed, the GPU runs every layout asked for.
        let runs: Vec<(Backend, BenchLayout)> = backends
            .iter()
            .flat_map(|&b| match b {
                Backend::Cpu => vec![(b, BenchLayout::Packed)],
                Backend::Gpu => layouts.iter().map(|&l| (b, l)).collect(),
            })
            .collect();
        for &preset in &presets {
            for &(backend, layout) in &runs {
                let label = format!(
                    "{} {} {}{}",
                    preset.name(),
                    size_label(n),
                    backend_name(backend),
                    match layout {
                        BenchLayout::Packed => "",
                        BenchLayout::Scattered => " scattered",
                        BenchLayout::Gpt2Small => " gpt2-small",
                    }
                );
                pb.set_message(label.clone());
                let job_start = pb.position();
                let mut row = Row {
                    rule: preset.name(),
                    n,
                    tensors,
                    backend,
                    layout,
                    adapter: String::new(),
                    bytes_per_param: low_precision_traffic(preset, args.precision())
                        .unwrap_or_else(|| preset.bytes_per_param()),
                    resident_bytes_per_param: None,
                    variant: None,
                    samples_ms: Vec::new(),
                    median_ms: f64::NAN,
                    min_ms: f64::NAN,
                    dispatches_per_step: 0,
                    kernel_ms: None,
                    copy_gbps: None,
                    dma_copy_gbps: None,
                    verify: None,
                };
                let outcome = match (backend, &ctx) {
                    (Backend::Cpu, _) => {
                        row.adapter = cpu_adapter.clone();
                        bench_cpu(&plan, preset, &params, &flat_grads).map(|(med, min, bytes)| {
                            row.median_ms = med;
                            row.min_ms = min;
                            row.resident_bytes_per_param = Some(bytes as f64 / n as f64);
                            row.copy_gbps =
                                Some(cpu_roofline_gbps(&flat_grads, args.steps.min(10)));
                        })
                    }
                    (Backend::Gpu, Some(ctx)) => {
                        row.adapter = ctx.adapter_label();
                        bench_gpu(&plan, ctx, preset, layout, &params, &grads).and_then(|t| {
                            row.variant = Some(t.variant.clone());
                            row.samples_ms = t.samples_ms.clone();
                            row.median_ms = t.median_ms;
                            row.min_ms = t.min_ms;
                            row.kernel_ms = t.kernel_ms;
                            row.copy_gbps = t.copy_gbps;
                            row.dma_copy_gbps = t.dma_copy_gbps;
                            row.dispatches_per_step = t.dispatches;
                            row.resident_bytes_per_param = Some(t.resident_bytes as f64 / n as f64);
                            if args.verify {
                                pb.set_message(format!("{label} (verify)"));
                                let v = verify(
                                    ctx,
                                    preset,
                                    layout,
                                    args.gpu_options(),
                                    args.verify_steps,
                                    &params,
                                    &grads,
                                    &flat_params,
                                    &flat_grads,
                                    args.precision(),
                                )?;
                                row.verify = Some(v);
                            }
                            Ok(())
                        })
                    }
                    (Backend::Gpu, None) => unreachable!("GPU jobs only run with a context"),
                };
                match outcome {
                    Ok(()) => {
                        if row.verify.as_ref().is_some_and(|v| !v.ok()) {
                            failed = true;
                            pb.suspend(|| {
                                eprintln!(
                                    "wgpu-optim: {label}: GPU and CPU differ by more than the bound after {} steps (max |Δ| = {:e})",
                                    args.verify_steps,
                                    row.verify.as_ref().map_or(0.0, |v| v.max_abs)
                                )
                            });
                        }
                        let line = if args.json {
                            row_json(&row, &args).to_string()
                        } else {
                            table.row(&row)
                        };
                        emit(&pb, &line);
                        measured.push((row.rule, n, backend, row.gbps_at(row.median_ms)));
                    }
                    Err(e) => {
                        failed = true;
                        pb.suspend(|| eprintln!("wgpu-optim: {label}: {e}"));
                        if args.json {
                            emit(
                                &pb,
                                &json!({
                                    "impl": "wgpu-optim",
                                    "rule": row.rule,
                                    "n": n,
                                    "tensors": tensors,
                                    "layout": layout_name(layout),
                                    "backend": backend_name(backend),
                                    "adapter": row.adapter,
                                    "error": e.to_string(),
                                })
                                .to_string(),
                            );
                        }
                        // Count the samples not taken, so the bar ends full.
                        pb.set_position(job_start + args.steps as u64);
                    }
                }
            }
        }
    }
    pb.finish_and_clear();
    if let Some(file) = &args.plot {
        let adapters = [
            Some(cpu_adapter.as_str()).filter(|_| want_cpu),
            gpu_adapter.as_deref(),
        ];
        match plot::draw(file, &measured, adapters) {
            Ok(()) => eprintln!("wgpu-optim: wrote {}", file.display()),
            Err(e) => {
                eprintln!("wgpu-optim: --plot {}: {e}", file.display());
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests;
