//! `bench --layout gpt2-small`: the 48 block matrices of GPT-2 small, as
//! `torch_optim_bench.py`'s `GPT2_SMALL` has them (`[(768, 2304), (768,
//! 768), (768, 3072), (3072, 768)] × 12`, 84.9M parameters), stepped by
//! Adam, AdamW, Adafactor and Muon (PyTorch's defaults, lr 1e-3 as the
//! script gives every rule) on the CPU and the GPU backends; `--rules` is
//! not read here (those four are the comparison the layout is for).
//!
//! - Step time: each step timed on its own (CPU: `step` with the gradients
//!   given; GPU: `step_device` with the gradients uploaded once, then a
//!   wait), after `--warmup` untimed steps; median and minimum of
//!   `--steps`.
//! - Muon: the Newton–Schulz FLOPs of one step (each of the 48 matrices,
//!   transposed to `m × n` with `m <= n`: per iteration `2m²n` for `X·Xᵀ`,
//!   `2m³` for `G·G`, `2m²n` for `H·X`, and `2m² + 2mn` for the `addmm`
//!   epilogues; a multiply-add is two), and `ns_tflops` = those FLOPs over
//!   the whole step's median time (the momentum, the norms and the update
//!   included, so a lower bound on the iteration's own rate).
//! - The GPU's f32 peak, measured in the same run: a kernel of independent
//!   `vec4<f32>` multiply-add chains (8 per invocation, no memory traffic
//!   in the loop), the best wall-clock time of 5 dispatches (each submitted
//!   and waited for alone, so submission latency counts against it: a
//!   lower bound on the peak). `ns_peak_fraction` = `ns_tflops` / that
//!   peak.
//!
//! On a software adapter (lavapipe) the numbers say nothing about a GPU's
//! speed: the rows show that the path runs.

use std::process::ExitCode;
use std::time::Instant;

use serde_json::json;
use wgpu_optim::{
    Adafactor, Adam, AdamW, Config, CpuOptimizer, GpuContext, GpuOptimizer, Muon, Shape,
};

use super::{cpu_label, median_min, Backend, BenchArgs};

/// `GPT2_SMALL` of `torch_optim_bench.py`: one block's four matrices, 12
/// blocks.
pub(super) fn gpt2_small_shapes() -> Vec<Shape> {
    let block = [(768, 2304), (768, 768), (768, 3072), (3072, 768)];
    (0..12)
        .flat_map(|_| block.iter().map(|&(r, c)| Shape::matrix(r, c)))
        .collect()
}

/// The four rules, with the script's lr of 1e-3 and torch's defaults
/// otherwise.
fn rules() -> Vec<(&'static str, Config)> {
    vec![
        (
            "adam",
            Adam {
                lr: 1e-3,
                ..Adam::default()
            }
            .into(),
        ),
        (
            "adamw",
            AdamW {
                lr: 1e-3,
                ..AdamW::default()
            }
            .into(),
        ),
        (
            "adafactor",
            Adafactor {
                lr: 1e-3,
                ..Adafactor::default()
            }
            .into(),
        ),
        ("muon", Muon::default().into()),
    ]
}

/// Newton–Schulz floating-point operations of one Muon step over `shapes`
/// (see the module's documentation).
pub(super) fn newton_schulz_flops(shapes: &[Shape], ns_steps: u32) -> f64 {
    shapes
        .iter()
        .map(|s| {
            let (m, n) = (s.rows().min(s.cols()) as f64, s.rows().max(s.cols()) as f64);
            ns_steps as f64 * (4.0 * m * m * n + 2.0 * m * m * m + 2.0 * m * m + 2.0 * m * n)
        })
        .sum()
}

/// Deterministic values in [-1, 1) (a bench needs no better).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

const PEAK_SOURCE: &str = "
@group(0) @binding(0) var<storage, read_write> out: array<vec4<f32>>;
override ITERATIONS: u32 = 1024u;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let s = f32(gid.x) * 1e-9;
    var a0 = vec4<f32>(s); var a1 = a0 + 1.0; var a2 = a0 + 2.0; var a3 = a0 + 3.0;
    var a4 = a0 + 4.0; var a5 = a0 + 5.0; var a6 = a0 + 6.0; var a7 = a0 + 7.0;
    let m = vec4<f32>(0.999999);
    let c = vec4<f32>(1e-7);
    for (var i = 0u; i < ITERATIONS; i = i + 1u) {
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c); a3 = fma(a3, m, c);
        a4 = fma(a4, m, c); a5 = fma(a5, m, c); a6 = fma(a6, m, c); a7 = fma(a7, m, c);
    }
    out[gid.x] = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}
";

/// The f32 multiply-add rate of `ctx`'s device in TFLOPS (see the module's
/// documentation); `software` runs a small grid.
fn f32_peak_tflops(ctx: &GpuContext, software: bool) -> Result<f64, String> {
    let device = ctx.device();
    let (workgroups, iterations) = if software {
        (16u32, 256u32)
    } else {
        (4096, 4096)
    };
    let invocations = workgroups as u64 * 256;
    let out = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("f32 peak"),
        size: invocations * 16,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("f32 peak"),
        source: wgpu::ShaderSource::Wgsl(PEAK_SOURCE.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("f32 peak"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &[("ITERATIONS", iterations as f64)],
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("f32 peak"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[wgpu::BindGroupEntry {
            binding: 0,
            resource: out.as_entire_binding(),
        }],
    });
    let mut best = f64::INFINITY;
    // The first run compiles and warms up; the best of the next 5 counts.
    for run in 0..6 {
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &group, &[]);
            pass.dispatch_workgroups(workgroups, 1, 1);
        }
        let t = Instant::now();
        ctx.queue().submit(Some(encoder.finish()));
        ctx.wait().map_err(|e| e.to_string())?;
        if run > 0 {
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    // 8 chains × 4 lanes, 2 FLOPs a multiply-add.
    let flops = invocations as f64 * iterations as f64 * 8.0 * 4.0 * 2.0;
    Ok(flops / best / 1e12)
}

/// Median and minimum ms of `steps` timed calls of `step` after `warmup`.
fn time_steps(
    warmup: u32,
    steps: u32,
    mut step: impl FnMut() -> wgpu_optim::Result<()>,
) -> wgpu_optim::Result<(f64, f64)> {
    for _ in 0..warmup {
        step()?;
    }
    let mut times = Vec::with_capacity(steps as usize);
    for _ in 0..steps {
        let t = Instant::now();
        step()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median_min(times))
}

/// Runs the layout (see the module's documentation).
pub(super) fn run(args: &BenchArgs) -> wgpu_optim::Result<ExitCode> {
    let shapes = gpt2_small_shapes();
    let lengths: Vec<usize> = shapes.iter().map(|s| s.numel().unwrap_or(0)).collect();
    let n: usize = lengths.iter().sum();
    let params: Vec<Vec<f32>> = lengths
        .iter()
        .enumerate()
        .map(|(i, &len)| values(len, 1 + i as u64))
        .collect();
    let grads: Vec<Vec<f32>> = lengths
        .iter()
        .enumerate()
        .map(|(i, &len)| values(len, 1000 + i as u64))
        .collect();
    let p: Vec<&[f32]> = params.iter().map(Vec::as_slice).collect();
    let g: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
    let mut failed = false;
    let ctx = if args.backends.contains(&Backend::Gpu) {
        match GpuContext::new() {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("wgpu-optim: {e}");
                failed = true;
                None
            }
        }
    } else {
        None
    };
    let software = ctx
        .as_ref()
        .is_some_and(|c| super::super::software_adapter(c.adapter_info()));
    if software {
        eprintln!(
            "wgpu-optim: the GPU is a software adapter: its rows show that the kernels run, nothing about a GPU's speed"
        );
    }
    let peak = match &ctx {
        Some(c) => match f32_peak_tflops(c, software) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("wgpu-optim: the f32 peak kernel failed: {e}");
                failed = true;
                None
            }
        },
        None => None,
    };
    if !args.json {
        println!(
            "gpt2-small: {} matrices, {n} parameters{}",
            shapes.len(),
            peak.map(|t| format!("; GPU f32 FMA peak {t:.2} TFLOPS (measured)"))
                .unwrap_or_default()
        );
        println!(
            "{:<10} {:<4} {:>12} {:>12} {:>12} {:>10} {:>9}",
            "rule", "on", "median_ms", "min_ms", "ns_gflop", "ns_tflops", "of_peak"
        );
    }
    for (name, config) in rules() {
        let ns_flops = match &config {
            Config::Muon(m) => Some(newton_schulz_flops(&shapes, m.ns_steps)),
            _ => None,
        };
        for &backend in &args.backends {
            let timed = match backend {
                Backend::Cpu => CpuOptimizer::with_shapes(config.clone(), &p, &shapes)
                    .and_then(|mut opt| time_steps(args.warmup, args.steps, || opt.step(&g)))
                    .map(|t| (t, cpu_label())),
                Backend::Gpu => {
                    let Some(ctx) = &ctx else { continue };
                    GpuOptimizer::with_shapes(ctx, config.clone(), &p, &shapes)
                        .and_then(|mut opt| {
                            opt.write_grads(&g)?;
                            time_steps(args.warmup, args.steps, || {
                                opt.step_device()?;
                                ctx.wait()
                            })
                        })
                        .map(|t| (t, ctx.adapter_label()))
                }
            };
            let backend_name = match backend {
                Backend::Cpu => "cpu",
                Backend::Gpu => "gpu",
            };
            let ((median, min), adapter) = match timed {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("wgpu-optim: {name} on the {backend_name}: {e}");
                    failed = true;
                    continue;
                }
            };
            let tflops = ns_flops.map(|f| f / (median * 1e-3) / 1e12);
            let fraction = match (backend, tflops, peak) {
                (Backend::Gpu, Some(t), Some(p)) => Some(t / p),
                _ => None,
            };
            if args.json {
                println!(
                    "{}",
                    json!({"impl": "wgpu-optim", "rule": name, "layout": "gpt2-small",
                        "n": n, "tensors": shapes.len(), "backend": backend_name,
                        "adapter": adapter, "median_ms": median, "min_ms": min,
                        "steps": args.steps, "ns_flops_per_step": ns_flops,
                        "ns_tflops": tflops,
                        "f32_peak_tflops": if backend == Backend::Gpu { peak } else { None },
                        "ns_peak_fraction": fraction})
                );
            } else {
                let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".into(), f);
                println!(
                    "{:<10} {:<4} {:>12.3} {:>12.3} {:>12} {:>10} {:>9}",
                    name,
                    backend_name,
                    median,
                    min,
                    opt(ns_flops, &|f| format!("{:.1}", f / 1e9)),
                    opt(tflops, &|t| format!("{t:.3}")),
                    opt(fraction, &|x| format!("{:.1}%", 100.0 * x)),
                );
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
mod tests {
    use super::*;

    #[test]
    fn gpt2_small_is_the_scripts_layout() {
        let shapes = gpt2_small_shapes();
        assert_eq!(shapes.len(), 48);
        let n: usize = shapes.iter().map(|s| s.numel().unwrap()).sum();
        // 12 × (768·2304 + 768² + 2·768·3072)
        assert_eq!(n, 12 * (768 * 2304 + 768 * 768 + 2 * 768 * 3072));
        assert_eq!(shapes[3], Shape::matrix(3072, 768));
    }

    #[test]
    fn newton_schulz_flops_count_the_three_products() {
        // One 2 × 3 matrix, one iteration: 4·4·3 + 2·8 + 2·4 + 2·6 = 84.
        assert_eq!(newton_schulz_flops(&[Shape::matrix(2, 3)], 1), 84.0);
        // A tall matrix counts as its transpose.
        assert_eq!(
            newton_schulz_flops(&[Shape::matrix(3, 2)], 5),
            newton_schulz_flops(&[Shape::matrix(2, 3)], 5)
        );
    }
}
