//! One optimizer step, CPU against GPU, per rule at 1M (2^20) parameters.
//!
//! One benchmark group per rule (the presets of PyTorch's bench script,
//! `torch_optim_bench.py`), with a `cpu` function ([`CpuOptimizer::step_flat`]
//! on all cores) and a `gpu` function ([`GpuOptimizer::step_device`] and a
//! wait, the gradients uploaded once). Throughput is the bytes a fused step
//! must move ([`Config::bytes_per_param`] per parameter), so criterion
//! prints GB/s. Where no adapter is found the GPU functions are left out and
//! the reason printed. `wgpu-optim bench` is the fuller measurement (median
//! over batches, kernel timestamps, verification).
//!
//! ```sh
//! cargo bench                                  # ~1 s per function, ~30 s in all
//! cargo bench --bench step -- --quick adam     # faster, one rule
//! WGPU_OPTIM_BENCH_N=65536 cargo bench --bench step -- --quick
//! ```
//!
//! (`--bench step` keeps criterion's flags away from the library's and the
//! command's libtest harnesses, which do not know them.)

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use wgpu_optim::{
    Adagrad, Adam, AdamW, Config, CpuOptimizer, GpuContext, GpuOptimizer, RmsProp, Sgd,
};

/// Parameters per step: 2^20 unless `WGPU_OPTIM_BENCH_N` says otherwise.
fn size() -> usize {
    std::env::var("WGPU_OPTIM_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1 << 20)
}

/// PyTorch's bench script's presets.
fn rules() -> Vec<(&'static str, Config)> {
    vec![
        (
            "sgd",
            Sgd {
                lr: 1e-3,
                ..Sgd::default()
            }
            .into(),
        ),
        (
            "sgd_momentum",
            Sgd {
                lr: 1e-3,
                momentum: 0.9,
                ..Sgd::default()
            }
            .into(),
        ),
        (
            "adagrad",
            Adagrad {
                lr: 1e-2,
                ..Adagrad::default()
            }
            .into(),
        ),
        (
            "rmsprop",
            RmsProp {
                lr: 1e-3,
                ..RmsProp::default()
            }
            .into(),
        ),
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
    ]
}

/// Deterministic values in about [-1, 1], none of them zero.
fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            // xorshift32
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let v = (x >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0;
            if v == 0.0 {
                0.5
            } else {
                v
            }
        })
        .collect()
}

fn step(c: &mut Criterion) {
    let n = size();
    let params = values(n, 1);
    let grads = values(n, 2);
    let gpu = match GpuContext::new() {
        Ok(ctx) => {
            eprintln!("GPU: {}", ctx.adapter_label());
            Some(ctx)
        }
        Err(e) => {
            eprintln!("GPU benchmarks left out: {e}");
            None
        }
    };
    for (name, config) in rules() {
        let mut group = c.benchmark_group(name);
        group
            .throughput(Throughput::Bytes((config.bytes_per_param() * n) as u64))
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));

        let mut cpu = CpuOptimizer::new(config.clone(), &[&params]).expect("valid preset");
        group.bench_function("cpu", |b| {
            b.iter(|| cpu.step_flat(&grads).expect("lengths match"))
        });
        drop(cpu);

        if let Some(ctx) = &gpu {
            match GpuOptimizer::new(ctx, config.clone(), &[&params])
                .and_then(|mut opt| opt.write_grads(&[&grads]).map(|()| opt))
            {
                Ok(mut opt) => {
                    group.bench_function("gpu", |b| {
                        b.iter(|| {
                            opt.step_device().expect("step");
                            ctx.wait().expect("wait");
                        })
                    });
                }
                Err(e) => eprintln!("{name}: GPU benchmark left out: {e}"),
            }
        }
        group.finish();
    }
}

criterion_group!(benches, step);
criterion_main!(benches);
