//! The sharded optimizer over MPI (feature `mpi`): tests that launch
//! `mpirun -np 2` and `-np 3` on this test binary, each rank running
//! `mpi_worker`, which checks every rule against a single-process run over
//! the same summed gradients, bit for bit; clipping, the loss scale and the
//! skip; shard checkpoint files merged into the single file, which moves
//! from N ranks to N−1 and to 1; the matrix rules (Adafactor, Muon) with
//! whole tensors a rank, their checkpoints moved likewise; GPU cases (Adam,
//! LAMB, Muon) on the software adapter; and that ranks disagreeing on
//! shapes all fail.
//! A further launch checks that a rank that dies ends the job, not hangs it.
//!
//! Run with `cargo test --features mpi --test sharded` (Open MPI's
//! `mpirun` on the PATH; as root it is given `--allow-run-as-root`).
#![cfg(feature = "mpi")]

use mpi::topology::{Color, SimpleCommunicator};
use mpi::traits::*;
use std::process::Command;
use std::time::{Duration, Instant};
use wgpu_optim::rules::RuleKind;
use wgpu_optim::sharded::{merge, GradReduce, MpiCollective, ShardedOptimizer};
use wgpu_optim::{
    Checkpoint, ClipGradNorm, Config, CpuOptimizer, Error, GpuContext, GpuOptimizer, Shape,
};

const WORKER: &str = "WGPU_OPTIM_MPI_WORKER";
const DIR: &str = "WGPU_OPTIM_MPI_DIR";
/// Far above a run's time here (seconds), far below a CI job's limit: a
/// hang fails the test instead of stalling CI.
const DEADLINE: Duration = Duration::from_secs(300);

/// Runs `mpirun -np n` on this binary's `mpi_worker` in `mode`; the exit
/// status, or a failure if the deadline passes (the job is killed).
fn launch(n: usize, mode: &str) -> std::process::ExitStatus {
    let exe = std::env::current_exe().unwrap();
    // Where the ranks write their shard checkpoints: one folder a launch.
    let dir = std::env::temp_dir().join(format!(
        "wgpu-optim-sharded-{}-{n}-{mode}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", &n.to_string()])
        .arg(exe)
        .args(["--exact", "mpi_worker", "--test-threads=1", "--nocapture"])
        .env(WORKER, mode)
        .env(DIR, &dir)
        // Containers often forbid the cross-memory attach of shared-memory
        // transfers; plain copies instead.
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .spawn()
        .unwrap_or_else(|e| panic!("these tests need Open MPI's mpirun (apt-get install openmpi-bin libopenmpi-dev): {e}"));
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let _ = std::fs::remove_dir_all(&dir);
            return status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("mpirun -np {n} ({mode}) still running after {DEADLINE:?}: a hang");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_check_under_mpirun_np2() {
    assert!(
        launch(2, "check").success(),
        "a rank failed under mpirun -np 2"
    );
}

#[test]
fn every_check_under_mpirun_np3() {
    assert!(
        launch(3, "check").success(),
        "a rank failed under mpirun -np 3"
    );
}

#[test]
fn a_rank_that_dies_ends_the_job() {
    // Rank 1 exits before the first step; rank 0 waits in the exchange
    // until Open MPI ends the job, within the deadline, with the dead
    // rank's status (3; a panic elsewhere would give 101).
    assert_eq!(launch(2, "die").code(), Some(3));
}

/// Each rank's work; a no-op unless launched by `launch`.
#[test]
fn mpi_worker() {
    let Ok(mode) = std::env::var(WORKER) else {
        return;
    };
    let universe = mpi::initialize().expect("MPI initialized once");
    let world = universe.world();
    match mode.as_str() {
        "die" => {
            let comm = MpiCollective::new(world.duplicate());
            let mut opt = cpu_sharded(comm, &rule(RuleKind::Sgd), GradReduce::Sum);
            if world.rank() == 1 {
                std::process::exit(3);
            }
            let _ = opt.step(&refs(&rank_grads(0, 0)));
        }
        _ => checks(&world),
    }
}

const LENGTHS: [usize; 5] = [7, 1, 0, 17, 38];

fn grad(rank: usize, step: usize, i: usize) -> f32 {
    let x = ((i * 7919 + rank * 104_729 + step * 1_299_709) % 2003) as f32;
    (x - 1001.0) / 400.0
}

fn per_tensor(f: impl Fn(usize) -> f32) -> Vec<Vec<f32>> {
    let mut at = 0;
    LENGTHS
        .iter()
        .map(|&n| {
            let t = (at..at + n).map(&f).collect();
            at += n;
            t
        })
        .collect()
}

fn params() -> Vec<Vec<f32>> {
    per_tensor(|i| (i as f32 * 0.37).sin())
}

fn rank_grads(rank: usize, step: usize) -> Vec<Vec<f32>> {
    per_tensor(|i| grad(rank, step, i))
}

/// Summed in rank order in f32, then divided by N for the mean (the
/// sharded optimizer's definition).
fn reduced(ranks: usize, step: usize, reduce: GradReduce) -> Vec<f32> {
    let mut g = rank_grads(0, step).concat();
    for r in 1..ranks {
        g.iter_mut()
            .zip(rank_grads(r, step).concat())
            .for_each(|(a, b)| *a += b);
    }
    if reduce == GradReduce::Mean {
        g.iter_mut().for_each(|a| *a /= ranks as f32);
    }
    g
}

fn refs(v: &[Vec<f32>]) -> Vec<&[f32]> {
    v.iter().map(|t| &t[..]).collect()
}

fn rule(kind: RuleKind) -> Config {
    kind.default_config()
}

fn cpu_sharded(
    comm: MpiCollective,
    config: &Config,
    reduce: GradReduce,
) -> ShardedOptimizer<MpiCollective, CpuOptimizer> {
    ShardedOptimizer::new(comm, &refs(&params()), reduce, |s| {
        CpuOptimizer::new(config.clone(), s)
    })
    .unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn assert_same(got: &Checkpoint, want: &Checkpoint, what: &str) {
    assert_eq!(got.step, want.step, "{what}: step");
    assert_eq!(got.skipped_steps, want.skipped_steps, "{what}: skipped");
    assert_eq!(
        bits(got.params.as_ref().unwrap()),
        bits(want.params.as_ref().unwrap()),
        "{what}: params"
    );
    for ((n, a), (_, b)) in got.state.iter().zip(&want.state) {
        assert_eq!(bits(a), bits(b), "{what}: state {n}");
    }
    assert_eq!(got.scalar_state, want.scalar_state, "{what}: scalar state");
}

/// One process over the rank-order sums of `n` ranks, `steps` steps.
fn single(
    config: &Config,
    n: usize,
    steps: usize,
    reduce: GradReduce,
    setup: fn(&mut CpuOptimizer),
) -> CpuOptimizer {
    let mut o = CpuOptimizer::new(config.clone(), &refs(&params())).unwrap();
    setup(&mut o);
    for s in 0..steps {
        o.step_flat(&reduced(n, s, reduce)).unwrap();
    }
    o
}

fn matrix_shapes() -> Vec<Shape> {
    [[3, 4], [5, 2], [6, 7], [4, 4], [2, 9]]
        .iter()
        .map(|d| Shape::new(d))
        .collect()
}

fn mixed_shapes() -> Vec<Shape> {
    let dims: [&[usize]; 6] = [&[3, 4], &[5], &[2, 3, 4], &[6, 7], &[1], &[0]];
    dims.iter().map(|d| Shape::new(d)).collect()
}

/// Per-tensor values `f(i)` of the packed index `i`, over `shapes`.
fn shaped(shapes: &[Shape], f: impl Fn(usize) -> f32) -> Vec<Vec<f32>> {
    let mut at = 0;
    shapes
        .iter()
        .map(|s| {
            let n = s.numel().unwrap();
            at += n;
            (at - n..at).map(&f).collect()
        })
        .collect()
}

/// The rank-order sum of `n` ranks' gradients over `shapes`, step `step`.
fn shaped_reduced(shapes: &[Shape], n: usize, step: usize) -> Vec<f32> {
    let mut g = shaped(shapes, |i| grad(0, step, i)).concat();
    for r in 1..n {
        let more = shaped(shapes, |i| grad(r, step, i)).concat();
        g.iter_mut().zip(more).for_each(|(a, b)| *a += b);
    }
    g
}

/// `config` sharded with whole tensors a rank, the gradients summed.
fn whole_sharded(
    comm: MpiCollective,
    config: &Config,
    shapes: &[Shape],
) -> ShardedOptimizer<MpiCollective, CpuOptimizer> {
    let p = shaped(shapes, |i| (i as f32 * 0.37).sin());
    ShardedOptimizer::with_shapes(comm, &refs(&p), shapes, GradReduce::Sum, |t, s| {
        CpuOptimizer::with_shapes(config.clone(), t, s)
    })
    .unwrap()
}

/// One process with `shapes` over the rank-order sums of `n` ranks.
fn shaped_single(config: &Config, shapes: &[Shape], n: usize, steps: usize) -> CpuOptimizer {
    let p = shaped(shapes, |i| (i as f32 * 0.37).sin());
    let mut o = CpuOptimizer::with_shapes(config.clone(), &refs(&p), shapes).unwrap();
    for s in 0..steps {
        o.step_flat(&shaped_reduced(shapes, n, s)).unwrap();
    }
    o
}

/// Each rank saves its own shard checkpoint to a file; every rank merges
/// the n files into the single file, which must be the one `checkpoint`
/// gathers.
fn merged_shard_files(
    world: &SimpleCommunicator,
    opt: &ShardedOptimizer<MpiCollective, CpuOptimizer>,
    tag: &str,
    lengths: &[usize],
) -> Checkpoint {
    let (n, rank) = (world.size() as usize, world.rank() as usize);
    let dir = std::path::PathBuf::from(std::env::var(DIR).unwrap());
    let shard_file = |r: usize| dir.join(format!("{tag}-{r}-of-{n}.safetensors"));
    opt.shard_checkpoint()
        .unwrap()
        .save(shard_file(rank))
        .unwrap();
    world.barrier();
    let shards: Vec<Checkpoint> = (0..n)
        .map(|r| Checkpoint::load(shard_file(r)).unwrap())
        .collect();
    let file = merge(&shards, lengths).unwrap();
    assert_eq!(file, opt.checkpoint().unwrap());
    file
}

/// Steps 3 and 4 from the single file `file` of n ranks: ranks 0..n−1 as
/// the sharded optimizer `fewer` makes over them, the last rank alone as a
/// plain CpuOptimizer. The gradients are the n-rank sums `reduced(step)`,
/// given whole by rank 0 and as zeros by the others (x + 0 = x exactly),
/// so both runs follow the same sums and must end as `want`.
fn continue_on_fewer_and_one(
    world: &SimpleCommunicator,
    file: &Checkpoint,
    fewer: impl FnOnce(MpiCollective) -> ShardedOptimizer<MpiCollective, CpuOptimizer>,
    reduced: impl Fn(usize) -> Vec<f32>,
    want: &Checkpoint,
    what: &str,
) {
    let (n, rank) = (world.size() as usize, world.rank() as usize);
    let layout = wgpu_optim::Layout::new(&file.lengths).unwrap();
    let color = if rank + 1 < n {
        Color::with_value(0)
    } else {
        Color::undefined()
    };
    if let Some(sub) = world.split_by_color(color) {
        let mut fewer = fewer(MpiCollective::new(sub));
        fewer.load_checkpoint(file).unwrap();
        for s in 3..5 {
            let g = if rank == 0 {
                reduced(s)
            } else {
                vec![0.0; layout.total()]
            };
            fewer.step(&layout.split(&g).unwrap()).unwrap();
        }
        assert_same(
            &fewer.checkpoint().unwrap(),
            want,
            &format!("{what}{n} ranks -> {}", n - 1),
        );
    } else {
        let mut one = CpuOptimizer::from_checkpoint(file).unwrap();
        for s in 3..5 {
            one.step_flat(&reduced(s)).unwrap();
        }
        assert_same(&one.checkpoint(), want, &format!("{what}{n} ranks -> 1"));
    }
}

fn checks(world: &SimpleCommunicator) {
    let (n, rank) = (world.size() as usize, world.rank() as usize);

    // Every element-wise rule, sum and mean, bit for bit (the matrix rules
    // need whole tensors a rank: `with_shapes`, below).
    for kind in RuleKind::ALL
        .into_iter()
        .filter(|&k| k != RuleKind::Lamb && !k.default_config().is_matrix_rule())
    {
        for reduce in [GradReduce::Sum, GradReduce::Mean] {
            let config = rule(kind);
            let mut opt = cpu_sharded(MpiCollective::new(world.duplicate()), &config, reduce);
            for s in 0..4 {
                opt.step(&refs(&rank_grads(rank, s))).unwrap();
            }
            let want = single(&config, n, 4, reduce, |_| {}).checkpoint();
            assert_same(
                &opt.checkpoint().unwrap(),
                &want,
                &format!("{} {reduce:?} np {n}", kind.name()),
            );
        }
    }

    // LAMB: the per-tensor norms all-reduced over MPI. The moments match
    // bit for bit (they do not depend on the norms); the parameters within
    // the bound the module docs give for tensors cut by a shard boundary
    // (1e-6 relative on each step's update; here the tensors are under one
    // block of 256, so the sums are f64 throughout and only their order
    // differs).
    let lamb = rule(RuleKind::Lamb);
    let mut opt = cpu_sharded(
        MpiCollective::new(world.duplicate()),
        &lamb,
        GradReduce::Sum,
    );
    for s in 0..4 {
        opt.step(&refs(&rank_grads(rank, s))).unwrap();
    }
    let want = single(&lamb, n, 4, GradReduce::Sum, |_| {}).checkpoint();
    let got = opt.checkpoint().unwrap();
    for ((name, a), (_, b)) in got.state.iter().zip(&want.state) {
        assert_eq!(bits(a), bits(b), "lamb np {n}: state {name}");
    }
    let (p0, a, b) = (
        params().concat(),
        got.params.as_ref().unwrap(),
        want.params.as_ref().unwrap(),
    );
    for i in 0..a.len() {
        let bound = 2e-6 * (b[i] - p0[i]).abs() + 4.0 * f32::EPSILON * b[i].abs();
        assert!(
            (a[i] - b[i]).abs() <= bound,
            "lamb np {n}: element {i}: {} vs {}",
            a[i],
            b[i]
        );
    }

    // Global clipping (every step clipped: norms are far above 0.5), the
    // loss scale and the skip.
    let adam = rule(RuleKind::Adam);
    let mut opt = cpu_sharded(
        MpiCollective::new(world.duplicate()),
        &adam,
        GradReduce::Mean,
    );
    opt.set_clip_grad_norm(Some(ClipGradNorm::new(0.5)))
        .unwrap();
    opt.set_grad_scale(4.0).unwrap();
    opt.set_skip_nonfinite(true);
    for s in 0..5 {
        opt.step(&refs(&rank_grads(rank, s))).unwrap();
    }
    let want = single(&adam, n, 5, GradReduce::Mean, |o| {
        o.set_clip_grad_norm(Some(ClipGradNorm::new(0.5))).unwrap();
        o.set_grad_scale(4.0).unwrap();
        o.set_skip_nonfinite(true);
    });
    assert_eq!(opt.last_grad_norm(), want.last_grad_norm());
    // The clip acted: the norm was above max_norm.
    assert!(want.last_grad_norm().unwrap() > 0.5);
    assert_same(
        &opt.checkpoint().unwrap(),
        &want.checkpoint(),
        "adam clipped",
    );

    // Checkpoints between rank counts: 3 steps on n ranks, saved as one
    // file; ranks 0..n-1 continue as an (n−1)-rank optimizer, the last
    // rank alone as a plain CpuOptimizer. The gradients are the n-rank
    // sums, given whole by one rank (x + 0 = x exactly), so every run
    // follows the same sums.
    let config = rule(RuleKind::AdamW);
    let mut opt = cpu_sharded(
        MpiCollective::new(world.duplicate()),
        &config,
        GradReduce::Sum,
    );
    for s in 0..3 {
        opt.step(&refs(&rank_grads(rank, s))).unwrap();
    }
    let file = merged_shard_files(world, &opt, "adamw", &LENGTHS);
    world.barrier();
    let want = single(&config, n, 5, GradReduce::Sum, |_| {}).checkpoint();
    continue_on_fewer_and_one(
        world,
        &file,
        |comm| cpu_sharded(comm, &config, GradReduce::Sum),
        |s| reduced(n, s, GradReduce::Sum),
        &want,
        "",
    );

    // The matrix rules, whole tensors a rank (`with_shapes`), bit for bit
    // against one process with the same shapes: Adafactor over matrices,
    // a batch of them and vectors; Muon over matrices.
    for (kind, shapes) in [
        (RuleKind::Adafactor, mixed_shapes()),
        (RuleKind::Muon, matrix_shapes()),
    ] {
        let config = rule(kind);
        let mut opt = whole_sharded(MpiCollective::new(world.duplicate()), &config, &shapes);
        for s in 0..3 {
            opt.step(&refs(&shaped(&shapes, |i| grad(rank, s, i))))
                .unwrap();
        }
        let want = shaped_single(&config, &shapes, n, 3).checkpoint();
        let got = opt.checkpoint().unwrap();
        assert_same(&got, &want, &format!("{} whole np {n}", kind.name()));
        assert_eq!(got.shapes, shapes);
    }

    // Adafactor's factored state between rank counts: 3 steps on n ranks,
    // shard files merged into one, then n−1 ranks and one process go on.
    let (config, shapes) = (rule(RuleKind::Adafactor), mixed_shapes());
    let mut opt = whole_sharded(MpiCollective::new(world.duplicate()), &config, &shapes);
    for s in 0..3 {
        opt.step(&refs(&shaped(&shapes, |i| grad(rank, s, i))))
            .unwrap();
    }
    let lengths: Vec<usize> = shapes.iter().map(|s| s.numel().unwrap()).collect();
    let file = merged_shard_files(world, &opt, "adafactor", &lengths);
    world.barrier();
    let want = shaped_single(&config, &shapes, n, 5).checkpoint();
    continue_on_fewer_and_one(
        world,
        &file,
        |comm| whole_sharded(comm, &config, &shapes),
        |s| shaped_reduced(&shapes, n, s),
        &want,
        "adafactor ",
    );

    // Ranks that disagree on the tensors: every rank refuses, none hangs.
    let lengths: Vec<usize> = if rank == 0 { vec![3, 4] } else { vec![4, 3] };
    let p: Vec<Vec<f32>> = lengths.iter().map(|&k| vec![1.0; k]).collect();
    let e = ShardedOptimizer::new(
        MpiCollective::new(world.duplicate()),
        &refs(&p),
        GradReduce::Sum,
        |s| CpuOptimizer::new(rule(RuleKind::Sgd), s),
    )
    .err();
    assert!(matches!(e, Some(Error::RankMismatch(_))), "{e:?}");

    // One GPU case on the software adapter: each rank steps its shard with
    // a GpuOptimizer; a single GpuOptimizer over the summed gradients is
    // the reference. The kernels are element-wise, so the shard's elements
    // see the same operations: bit for bit.
    let ctx = GpuContext::new()
        .unwrap_or_else(|e| panic!("the GPU case needs an adapter (mesa-vulkan-drivers): {e}"));
    // `steps` steps of `config` sharded over the ranks, each rank's shard on
    // a GpuOptimizer, and of one GpuOptimizer over the reduced gradients.
    let layout = wgpu_optim::Layout::new(&LENGTHS).unwrap();
    let sharded_and_one = |config: Config, reduce: GradReduce, steps: usize| {
        let mut opt = ShardedOptimizer::new(
            MpiCollective::new(world.duplicate()),
            &refs(&params()),
            reduce,
            |s| GpuOptimizer::new(&ctx, config.clone(), s),
        )
        .unwrap();
        let mut reference = GpuOptimizer::new(&ctx, config.clone(), &refs(&params())).unwrap();
        for s in 0..steps {
            opt.step(&refs(&rank_grads(rank, s))).unwrap();
            let g = reduced(n, s, reduce);
            reference.step(&layout.split(&g).unwrap()).unwrap();
        }
        (opt, reference)
    };
    let (opt, reference) = sharded_and_one(rule(RuleKind::Adam), GradReduce::Mean, 3);
    assert_eq!(
        bits(opt.params_flat()),
        bits(&reference.read_params().unwrap().concat()),
        "GPU Adam np {n}"
    );

    // GPU LAMB: each rank's tile sums read back, all-gathered over MPI,
    // added on the host. The moments bit for bit; the parameters within
    // the bound of src/sharded/tests.rs's GPU case (4e-6 of the distance
    // moved, plus half an ulp a step: the tile sums are f32 and their
    // lanes depend on where a tensor starts in the shard).
    let steps = 4;
    let (opt, reference) = sharded_and_one(rule(RuleKind::Lamb), GradReduce::Sum, steps);
    let (got, want) = (opt.checkpoint().unwrap(), reference.checkpoint().unwrap());
    for ((name, a), (_, b)) in got.state.iter().zip(&want.state) {
        assert_eq!(bits(a), bits(b), "GPU lamb np {n}: state {name}");
    }
    let p0 = params().concat();
    let (a, b) = (got.params.as_ref().unwrap(), want.params.as_ref().unwrap());
    for i in 0..a.len() {
        let bound = 4e-6 * (b[i] - p0[i]).abs() + steps as f32 * f32::EPSILON * b[i].abs();
        assert!(
            (a[i] - b[i]).abs() <= bound,
            "GPU lamb np {n}: element {i}: {} vs {}",
            a[i],
            b[i]
        );
    }

    // GPU Muon, whole tensors a rank: each matrix's Newton–Schulz products
    // read only that matrix, laid out the same wherever it starts: bit for
    // bit against one GpuOptimizer over the summed gradients.
    let shapes = matrix_shapes();
    let p = shaped(&shapes, |i| (i as f32 * 0.37).sin());
    let muon = rule(RuleKind::Muon);
    let mut opt = ShardedOptimizer::with_shapes(
        MpiCollective::new(world.duplicate()),
        &refs(&p),
        &shapes,
        GradReduce::Sum,
        |t, s| GpuOptimizer::with_shapes(&ctx, muon.clone(), t, s),
    )
    .unwrap();
    let mut reference = GpuOptimizer::with_shapes(&ctx, muon.clone(), &refs(&p), &shapes).unwrap();
    let lengths: Vec<usize> = shapes.iter().map(|s| s.numel().unwrap()).collect();
    let split = wgpu_optim::Layout::new(&lengths).unwrap();
    for s in 0..3 {
        opt.step(&refs(&shaped(&shapes, |i| grad(rank, s, i))))
            .unwrap();
        let g = shaped_reduced(&shapes, n, s);
        reference.step(&split.split(&g).unwrap()).unwrap();
    }
    assert_same(
        &opt.checkpoint().unwrap(),
        &reference.checkpoint().unwrap(),
        &format!("GPU muon whole np {n}"),
    );
}
