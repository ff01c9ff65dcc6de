//! Step time, optimizer memory and bytes sent per rank of the ZeRO-1
//! [`ShardedOptimizer`] over MPI, on the CPU backend, Adam (shards cut
//! anywhere) or Adafactor (whole tensors a rank, `with_shapes`):
//!
//! ```text
//! cargo build --profile test --features mpi --example sharded_bench
//! mpirun --oversubscribe -np 4 target/debug/examples/sharded_bench [elements] [steps] [adam|adafactor]
//! ```
//!
//! Rank 0 prints one line: the rank count, the elements, the median step
//! time (all ranks' steps end together at the all-gather), every rank's
//! optimizer state in MiB (Adam: two f32 tensors over its shard; Adafactor:
//! the row and column statistics of its matrices) and the bytes rank 0
//! sends a step. The four tensors are 1/2, 1/4, 1/8 and 1/8 of the elements
//! (matrices of 1024 columns for Adafactor: elements a multiple of 8192).

use mpi::traits::*;
use std::time::Instant;
use wgpu_optim::sharded::Collective;
use wgpu_optim::sharded::{GradReduce, MpiCollective, ShardedOptimizer};
use wgpu_optim::{Adafactor, Adam, CpuOptimizer, Shape};

fn main() -> wgpu_optim::Result<()> {
    let mut args = std::env::args().skip(1);
    let total: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1 << 22);
    let steps: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let rule = args.next().unwrap_or_else(|| "adam".into());
    let universe = mpi::initialize().expect("MPI initialized once");
    let world = universe.world();
    let (n, rank) = (world.size(), world.rank());
    // Four tensors, so shard boundaries cut through some of them.
    let lengths = [
        total / 2,
        total / 4,
        total / 8,
        total - total / 2 - total / 4 - total / 8,
    ];
    let params: Vec<Vec<f32>> = lengths.iter().map(|&k| vec![0.5; k]).collect();
    let p: Vec<&[f32]> = params.iter().map(|t| &t[..]).collect();
    let comm = MpiCollective::new(world.duplicate());
    let mut opt = match rule.as_str() {
        "adam" => ShardedOptimizer::new(comm, &p, GradReduce::Mean, |s| {
            CpuOptimizer::new(Adam::default(), s)
        })?,
        "adafactor" => {
            const COLS: usize = 1024;
            let shapes: Vec<Shape> = lengths
                .iter()
                .map(|&k| Shape::matrix(k / COLS, COLS))
                .collect();
            ShardedOptimizer::with_shapes(comm, &p, &shapes, GradReduce::Mean, |t, s| {
                CpuOptimizer::with_shapes(Adafactor::default(), t, s)
            })?
        }
        other => panic!("unknown rule {other} (adam or adafactor)"),
    };
    let grads: Vec<Vec<f32>> = lengths
        .iter()
        .map(|&k| vec![0.01 * (rank + 1) as f32; k])
        .collect();
    let g: Vec<&[f32]> = grads.iter().map(|t| &t[..]).collect();
    opt.step(&g)?; // warm-up
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        world.barrier();
        let t = Instant::now();
        opt.step(&g)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let state: usize = opt
        .shard_checkpoint()?
        .state
        .iter()
        .map(|(_, v)| v.len())
        .sum();
    let per_rank = opt.collective().all_gather_f64(&[(4 * state) as f64])?;
    if rank == 0 {
        // Adafactor's factored state is KiB where Adam's is MiB.
        let (unit, scale) = if per_rank.iter().all(|&b| b < (1 << 20) as f64) {
            ("KiB", 1024.0)
        } else {
            ("MiB", (1 << 20) as f64)
        };
        let sizes: Vec<String> = per_rank
            .iter()
            .map(|b| format!("{:.1}", b / scale))
            .collect();
        println!(
            "{rule}  ranks {n}  elements {total}  step {:.2} ms  optimizer state {} {unit} (by rank)  sent {:.1} MiB/step (rank 0)",
            times[times.len() / 2],
            sizes.join(" / "),
            opt.bytes_sent_per_step() as f64 / (1 << 20) as f64,
        );
    }
    Ok(())
}
