//! Step time, optimizer memory and bytes sent per rank of the ZeRO-1
//! [`ShardedOptimizer`] over MPI, Adam on the CPU backend:
//!
//! ```text
//! cargo build --profile test --features mpi --example sharded_bench
//! mpirun --oversubscribe -np 4 target/debug/examples/sharded_bench [elements] [steps]
//! ```
//!
//! Rank 0 prints one line: the rank count, the elements, the median step
//! time (all ranks' steps end together at the all-gather), this rank's
//! optimizer state in MiB (Adam: two f32 tensors over its shard) and the
//! bytes it sends a step.

use mpi::traits::*;
use std::time::Instant;
use wgpu_optim::sharded::{GradReduce, MpiCollective, ShardedOptimizer};
use wgpu_optim::{Adam, CpuOptimizer};

fn main() -> wgpu_optim::Result<()> {
    let mut args = std::env::args().skip(1);
    let total: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1 << 22);
    let steps: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
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
    let mut opt = ShardedOptimizer::new(
        MpiCollective::new(world.duplicate()),
        &p,
        GradReduce::Mean,
        |s| CpuOptimizer::new(Adam::default(), s),
    )?;
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
    let state_bytes = opt.inner().state_names().len() * opt.shard().len() * 4;
    if rank == 0 {
        println!(
            "ranks {n}  elements {total}  step {:.2} ms  optimizer state {:.1} MiB/rank  sent {:.1} MiB/step/rank",
            times[times.len() / 2],
            state_bytes as f64 / (1 << 20) as f64,
            opt.bytes_sent_per_step() as f64 / (1 << 20) as f64,
        );
    }
    Ok(())
}
