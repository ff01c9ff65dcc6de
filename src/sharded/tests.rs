//! The sharded optimizer over threads against one CpuOptimizer given the
//! same reduced gradients: bit for bit (see the module docs for why that
//! can hold), for every element-wise rule and rank counts 1..4, and with
//! whole tensors a rank for every rule, the matrix rules included.

use super::*;
use crate::rules::Sgd;
use crate::CpuOptimizer;

/// Lengths that put shard boundaries inside tensors for every N here, with
/// an empty tensor and a one-element one.
const LENGTHS: [usize; 5] = [7, 1, 0, 17, 38];

/// A deterministic gradient for rank `rank`, step `step`, element `i`.
fn grad(rank: usize, step: usize, i: usize) -> f32 {
    let x = ((i * 7919 + rank * 104_729 + step * 1_299_709) % 2003) as f32;
    (x - 1001.0) / 400.0
}

fn params() -> Vec<Vec<f32>> {
    let mut at = 0;
    LENGTHS
        .iter()
        .map(|&n| {
            let t = (at..at + n).map(|i| (i as f32 * 0.37).sin()).collect();
            at += n;
            t
        })
        .collect()
}

/// Rank `rank`'s gradients of step `step`, per tensor.
fn rank_grads(rank: usize, step: usize) -> Vec<Vec<f32>> {
    let mut at = 0;
    LENGTHS
        .iter()
        .map(|&n| {
            let t = (at..at + n).map(|i| grad(rank, step, i)).collect();
            at += n;
            t
        })
        .collect()
}

/// The reduced gradient as the module docs define it: summed in rank
/// order in f32, then divided by N for the mean.
fn reduced(ranks: usize, step: usize, reduce: GradReduce) -> Vec<f32> {
    let mut g: Vec<f32> = rank_grads(0, step).concat();
    for r in 1..ranks {
        for (a, b) in g.iter_mut().zip(rank_grads(r, step).concat()) {
            *a += b;
        }
    }
    if reduce == GradReduce::Mean {
        g.iter_mut().for_each(|a| *a /= ranks as f32);
    }
    g
}

/// Runs `f` on `n` ranks as threads, returning each rank's result in order.
fn on_ranks<T: Send>(n: usize, f: impl Fn(ThreadCollective) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = ThreadCollective::group(n)
            .into_iter()
            .map(|c| s.spawn(move || f(c)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn refs(v: &[Vec<f32>]) -> Vec<&[f32]> {
    v.iter().map(|t| &t[..]).collect()
}

type Setup = fn(&mut ShardedOptimizer<ThreadCollective, CpuOptimizer>);

/// Sharded over `n` ranks and one CpuOptimizer, `steps` steps: returns the
/// sharded one's single-file checkpoint (from every rank) and the single
/// process's.
fn run(
    config: &Config,
    n: usize,
    steps: usize,
    reduce: GradReduce,
    setup: Setup,
    setup_cpu: fn(&mut CpuOptimizer),
) -> (Vec<Checkpoint>, Checkpoint) {
    let p = params();
    let sharded = on_ranks(n, |comm| {
        let rank = comm.rank();
        let mut opt = ShardedOptimizer::new(comm, &refs(&p), reduce, |shard| {
            CpuOptimizer::new(config.clone(), shard)
        })
        .unwrap();
        setup(&mut opt);
        for s in 0..steps {
            let g = rank_grads(rank, s);
            // A refused step (error_if_nonfinite) is part of the run.
            let _ = opt.step(&refs(&g));
        }
        opt.checkpoint().unwrap()
    });
    let mut single = CpuOptimizer::new(config.clone(), &refs(&p)).unwrap();
    setup_cpu(&mut single);
    for s in 0..steps {
        let _ = single.step_flat(&reduced(n, s, reduce));
    }
    (sharded, single.checkpoint())
}

fn assert_same(got: &Checkpoint, want: &Checkpoint, what: &str) {
    assert_eq!(got.step, want.step, "{what}: step");
    assert_eq!(got.skipped_steps, want.skipped_steps, "{what}: skipped");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(got.params.as_ref().unwrap()),
        bits(want.params.as_ref().unwrap()),
        "{what}: params"
    );
    assert_eq!(got.state.len(), want.state.len(), "{what}: state names");
    for ((n, a), (m, b)) in got.state.iter().zip(&want.state) {
        assert_eq!(n, m);
        assert_eq!(bits(a), bits(b), "{what}: state {n}");
    }
    assert_eq!(got.scalar_state, want.scalar_state, "{what}: scalar state");
}

#[test]
fn shard_ranges_cover_the_elements_in_order() {
    for total in [0, 1, 2, 5, 63, 100] {
        for n in 1..6 {
            let mut at = 0;
            for r in 0..n {
                let s = shard_range(total, n, r);
                assert_eq!(s.start, at);
                assert!(s.len() == total / n || s.len() == total / n + 1);
                at = s.end;
            }
            assert_eq!(at, total);
        }
    }
    assert_eq!(shard_lengths(&LENGTHS, 5..30), vec![2, 1, 17, 5]);
    assert_eq!(shard_lengths(&LENGTHS, 3..3), vec![0]);
}

#[test]
fn every_elementwise_rule_matches_one_process_bit_for_bit() {
    // The matrix rules need whole tensors: `with_shapes`, tested below.
    for kind in RuleKind::ALL
        .into_iter()
        .filter(|&k| k != RuleKind::Lamb && !k.default_config().is_matrix_rule())
    {
        let config = kind.default_config();
        for n in 1..=4 {
            for reduce in [GradReduce::Sum, GradReduce::Mean] {
                let (sharded, single) = run(&config, n, 4, reduce, |_| {}, |_| {});
                for (r, c) in sharded.iter().enumerate() {
                    assert_same(
                        c,
                        &single,
                        &format!("{} n={n} {reduce:?} rank {r}", kind.name()),
                    );
                }
            }
        }
    }
}

#[test]
fn clipping_loss_scale_and_skip_match_one_process() {
    // max_norm below every step's norm, so each step is clipped.
    fn setup(o: &mut ShardedOptimizer<ThreadCollective, CpuOptimizer>) {
        o.set_clip_grad_norm(Some(ClipGradNorm::new(0.5))).unwrap();
        o.set_grad_scale(4.0).unwrap();
        o.set_skip_nonfinite(true);
    }
    fn setup_cpu(o: &mut CpuOptimizer) {
        o.set_clip_grad_norm(Some(ClipGradNorm::new(0.5))).unwrap();
        o.set_grad_scale(4.0).unwrap();
        o.set_skip_nonfinite(true);
    }
    let adam = RuleKind::Adam.default_config();
    for n in 1..=4 {
        let (sharded, single) = run(&adam, n, 5, GradReduce::Mean, setup, setup_cpu);
        for c in &sharded {
            assert_same(c, &single, &format!("adam clipped n={n}"));
            assert!(c.clip.is_some() && c.grad_scale == 4.0);
        }
    }
}

#[test]
fn a_nonfinite_gradient_on_one_rank_skips_the_step_on_all() {
    let p = params();
    let ends = on_ranks(3, |comm| {
        let rank = comm.rank();
        let mut opt = ShardedOptimizer::new(comm, &refs(&p), GradReduce::Sum, |s| {
            CpuOptimizer::new(
                Sgd {
                    lr: 0.1,
                    ..Sgd::default()
                },
                s,
            )
        })
        .unwrap();
        opt.set_skip_nonfinite(true);
        let mut g = rank_grads(rank, 0);
        if rank == 2 {
            // In rank 0's shard: the decision must still reach rank 2.
            g[0][0] = f32::NAN;
        }
        opt.step(&refs(&g)).unwrap();
        (
            opt.skipped_steps(),
            opt.step_count(),
            opt.params_flat().to_vec(),
        )
    });
    for (skipped, steps, params) in ends {
        assert_eq!((skipped, steps), (1, 0));
        assert_eq!(params, p.concat());
    }
}

#[test]
fn mismatched_lengths_between_ranks_fail_on_every_rank() {
    let results = on_ranks(2, |comm| {
        let lengths: &[usize] = if comm.rank() == 0 { &[3, 4] } else { &[4, 3] };
        let p: Vec<Vec<f32>> = lengths.iter().map(|&n| vec![1.0; n]).collect();
        ShardedOptimizer::new(comm, &refs(&p), GradReduce::Sum, |s| {
            CpuOptimizer::new(Sgd::default(), s)
        })
        .err()
    });
    for e in results {
        assert!(matches!(e, Some(Error::RankMismatch(_))), "{e:?}");
    }
}

#[test]
fn a_bad_gradient_on_one_rank_is_refused_everywhere_and_changes_nothing() {
    let p = params();
    let results = on_ranks(3, |comm| {
        let rank = comm.rank();
        let mut opt = ShardedOptimizer::new(comm, &refs(&p), GradReduce::Sum, |s| {
            CpuOptimizer::new(
                Sgd {
                    lr: 0.1,
                    ..Sgd::default()
                },
                s,
            )
        })
        .unwrap();
        let mut g = rank_grads(rank, 0);
        if rank == 1 {
            g[3].pop();
        }
        let e = opt.step(&refs(&g)).unwrap_err();
        (rank, e, opt.step_count(), opt.params_flat().to_vec())
    });
    for (rank, e, steps, params) in results {
        if rank == 1 {
            assert!(
                matches!(e, Error::LengthMismatch { tensor: 3, .. }),
                "{e:?}"
            );
        } else {
            assert!(matches!(e, Error::RankMismatch(_)), "{e:?}");
        }
        assert_eq!(steps, 0);
        assert_eq!(params, p.concat());
    }
}

/// LAMB sharded over 1..4 ranks against one process over the same
/// reduced gradients, with tensors large enough for whole blocks of 256
/// in the pieces the shard boundaries cut.
#[test]
fn lamb_matches_one_process_within_the_bounds_its_norms_allow() {
    // A tensor cut by a shard boundary: each step's lr·ratio·u may differ
    // by about 1e-6 relative (module docs), so the end by 1e-6 of the
    // distance moved (2e-6 given), plus the rounding of θ − step (half an
    // ulp a step). A tensor in one shard: its sums are formed as in one
    // process, bit for bit.
    lamb_against_one_process(
        |config, shard| CpuOptimizer::new(config.clone(), shard),
        |config, p| CpuOptimizer::new(config.clone(), p),
        true,
        2e-6,
    );
}

/// The same on the GPU (the software adapter): each rank's GpuOptimizer
/// reads its tiles' f32 sums back and the host adds them in f64
/// (`GpuOptimizer::step_combining_tensor_sums`); the reference is one
/// GpuOptimizer taking the ratios on the GPU from the same kind of tile
/// sums. Every tensor may differ: a tile's sum of at most 4096 squares
/// (four f32 lanes per thread, then a tree of 256) errs by at most about
/// 14 f32 units (8.3e-7) relative, and its lanes depend on the tensor's
/// offset in the shard; the ratio √Σθ²/√Σu² errs by about as much on each
/// path (the WGSL division's 2.5 ulp adds 1.5e-7), so the two paths' steps
/// by under 2e-6 relative: 4e-6 of the distance moved is given, plus the
/// rounding of θ − step.
#[test]
fn gpu_lamb_matches_one_gpu_process_within_the_bounds_its_norms_allow() {
    let ctx = crate::GpuContext::new()
        .unwrap_or_else(|e| panic!("the GPU case needs an adapter (mesa-vulkan-drivers): {e}"));
    lamb_against_one_process(
        |config, shard| crate::GpuOptimizer::new(&ctx, config.clone(), shard),
        |config, p| crate::GpuOptimizer::new(&ctx, config.clone(), p),
        false,
        4e-6,
    );
}

/// LAMB sharded over 1..4 ranks, each rank's shard on `build`, against one
/// optimizer made by `single` over the same reduced gradients: the moments
/// bit for bit (they do not depend on the norms); the parameters of a
/// tensor in one shard bit for bit when `whole_exact`, and otherwise
/// within `relative` of the distance moved plus half an ulp a step.
fn lamb_against_one_process<O: Optimizer>(
    build: impl Fn(&Config, &[&[f32]]) -> Result<O> + Sync,
    single: impl Fn(&Config, &[&[f32]]) -> Result<O>,
    whole_exact: bool,
    relative: f32,
) {
    let lengths = [7usize, 1, 0, 17, 38, 600, 1300, 300];
    let total: usize = lengths.iter().sum();
    let split = |flat: &[f32]| -> Vec<Vec<f32>> {
        let mut at = 0;
        lengths
            .iter()
            .map(|&n| {
                at += n;
                flat[at - n..at].to_vec()
            })
            .collect()
    };
    let p0: Vec<f32> = (0..total).map(|i| (i as f32 * 0.37).sin()).collect();
    let grads = |rank: usize, step: usize| -> Vec<f32> {
        (0..total).map(|i| grad(rank, step, i)).collect()
    };
    let config = Config::Lamb(crate::rules::Lamb {
        weight_decay: 0.01,
        ..crate::rules::Lamb::default()
    });
    let steps = 5;
    for n in 1..=4 {
        let p = split(&p0);
        let ends = on_ranks(n, |comm| {
            let rank = comm.rank();
            let mut opt = ShardedOptimizer::new(comm, &refs(&p), GradReduce::Mean, |shard| {
                build(&config, shard)
            })
            .unwrap();
            for s in 0..steps {
                opt.step(&refs(&split(&grads(rank, s)))).unwrap();
            }
            opt.checkpoint().unwrap()
        });
        let mut one = single(&config, &refs(&p)).unwrap();
        for s in 0..steps {
            let mut g = grads(0, s);
            for r in 1..n {
                g.iter_mut().zip(grads(r, s)).for_each(|(a, b)| *a += b);
            }
            g.iter_mut().for_each(|a| *a /= n as f32);
            one.step(&refs(&split(&g))).unwrap();
        }
        let want = one.checkpoint().unwrap();
        let ranges: Vec<_> = (0..n).map(|r| shard_range(total, n, r)).collect();
        for (r, got) in ends.iter().enumerate() {
            let what = format!("lamb n={n} rank {r}");
            assert_eq!(got.step, want.step, "{what}");
            assert_eq!(got.state, want.state, "{what}: moments");
            let (a, b) = (got.params.as_ref().unwrap(), want.params.as_ref().unwrap());
            let mut at = 0;
            for &len in &lengths {
                let t = at..at + len;
                at += len;
                let whole = ranges.iter().any(|s| s.start <= t.start && t.end <= s.end);
                for i in t {
                    if whole && whole_exact {
                        assert_eq!(a[i].to_bits(), b[i].to_bits(), "{what}: element {i}");
                        continue;
                    }
                    let moved = (b[i] - p0[i]).abs();
                    let bound = relative * moved + steps as f32 * f32::EPSILON * b[i].abs();
                    assert!(
                        (a[i] - b[i]).abs() <= bound,
                        "{what}: element {i}: {} vs {}",
                        a[i],
                        b[i]
                    );
                }
            }
        }
    }
}

#[test]
fn lamb_with_the_inner_optimizers_own_skip_is_refused_on_every_rank() {
    let p = params();
    for e in on_ranks(2, |comm| {
        ShardedOptimizer::new(comm, &refs(&p), GradReduce::Sum, |s| {
            let mut o = CpuOptimizer::new(RuleKind::Lamb.default_config(), s)?;
            o.set_skip_nonfinite(true);
            Ok(o)
        })
        .err()
    }) {
        assert!(matches!(e, Some(Error::Unsupported(_))), "{e:?}");
    }
}

#[test]
fn checkpoints_move_from_four_ranks_to_two_to_one() {
    let config = RuleKind::AdamW.default_config();
    let p = params();
    let steps =
        |opt: &mut ShardedOptimizer<ThreadCollective, CpuOptimizer>, from: usize, to: usize| {
            for s in from..to {
                // Two logical ranks' worth of gradient each step, whatever N:
                // every rank gives its share so the reduced sum is the same.
                let g = rank_grads(0, s);
                let share: Vec<Vec<f32>> = if opt.collective().rank() == 0 {
                    g
                } else {
                    g.iter().map(|t| vec![0.0; t.len()]).collect()
                };
                opt.step(&refs(&share)).unwrap();
            }
        };
    // 4 ranks, 3 steps; the shard checkpoints merged into one file.
    let shards = on_ranks(4, |comm| {
        let mut opt = ShardedOptimizer::new(comm, &refs(&p), GradReduce::Sum, |s| {
            CpuOptimizer::new(config.clone(), s)
        })
        .unwrap();
        steps(&mut opt, 0, 3);
        opt.shard_checkpoint().unwrap()
    });
    let merged = merge(&shards, &LENGTHS).unwrap();
    let merged = Checkpoint::from_bytes(&merged.to_bytes().unwrap()).unwrap();
    // The split of the merged file gives back the shards.
    assert_eq!(split(&merged, 4).unwrap(), shards);
    // 2 ranks from it, 2 more steps; then 1 rank (plain CPU) for 1 more.
    let two = on_ranks(2, |comm| {
        let mut opt = ShardedOptimizer::new(comm, &refs(&p), GradReduce::Sum, |s| {
            CpuOptimizer::new(config.clone(), s)
        })
        .unwrap();
        opt.load_checkpoint(&merged).unwrap();
        steps(&mut opt, 3, 5);
        opt.checkpoint().unwrap()
    });
    assert_eq!(two[0], two[1]);
    let mut one = CpuOptimizer::from_checkpoint(&two[0]).unwrap();
    one.step(&refs(&rank_grads(0, 5))).unwrap();
    let mut single = CpuOptimizer::new(config.clone(), &refs(&p)).unwrap();
    for s in 0..6 {
        // x + 0.0 + 0.0 == x for every finite x: the sums above are exact.
        single.step(&refs(&rank_grads(0, s))).unwrap();
    }
    assert_same(&one.checkpoint(), &single.checkpoint(), "4 -> 2 -> 1");
}

#[test]
fn a_refused_load_on_one_rank_leaves_every_rank_as_it_was() {
    let p = params();
    let config = RuleKind::Adam.default_config();
    let good = {
        let mut o = CpuOptimizer::new(config.clone(), &refs(&p)).unwrap();
        o.step(&refs(&rank_grads(0, 0))).unwrap();
        o.checkpoint()
    };
    let mut bad = good.clone();
    bad.config = RuleKind::Sgd.default_config();
    let results = on_ranks(2, |comm| {
        let rank = comm.rank();
        let mut opt = ShardedOptimizer::new(comm, &refs(&p), GradReduce::Sum, |s| {
            CpuOptimizer::new(config.clone(), s)
        })
        .unwrap();
        let e = opt
            .load_checkpoint(if rank == 0 { &good } else { &bad })
            .err();
        (e, opt.checkpoint().unwrap())
    });
    let fresh = CpuOptimizer::new(config.clone(), &refs(&p))
        .unwrap()
        .checkpoint();
    for (r, (e, c)) in results.into_iter().enumerate() {
        assert!(e.is_some(), "rank {r} must refuse");
        assert_same(&c, &fresh, &format!("rank {r} after a refused load"));
    }
}

#[test]
fn ranks_with_empty_shards_still_step_together() {
    // Two elements over four ranks: ranks 2 and 3 own nothing.
    let p = [vec![1.0f32, 2.0]];
    let ends = on_ranks(4, |comm| {
        let mut opt = ShardedOptimizer::new(comm, &refs(&p), GradReduce::Sum, |s| {
            CpuOptimizer::new(
                Sgd {
                    lr: 0.5,
                    ..Sgd::default()
                },
                s,
            )
        })
        .unwrap();
        opt.set_clip_grad_norm(Some(ClipGradNorm::new(100.0)))
            .unwrap();
        opt.step(&[&[1.0, -1.0]]).unwrap();
        (
            opt.shard().len(),
            opt.last_grad_norm(),
            opt.params_flat().to_vec(),
        )
    });
    for (r, (len, norm, params)) in ends.into_iter().enumerate() {
        assert_eq!(len, usize::from(r < 2));
        // The four ranks' gradients sum to (4, −4): norm √32, below 100.
        assert_eq!(norm, Some(32f32.sqrt()));
        assert_eq!(params, vec![1.0 - 0.5 * 4.0, 2.0 + 0.5 * 4.0]);
    }
}

/// Shapes for the whole-tensor cases: Muon needs every tensor 2-D; the
/// mixed set has Adafactor factor two matrices and a batch of them and
/// keep a full variance for the vectors.
const MATRICES: [&[usize]; 5] = [&[3, 4], &[5, 2], &[6, 7], &[4, 4], &[2, 9]];
const MIXED: [&[usize]; 6] = [&[3, 4], &[5], &[0], &[2, 3, 4], &[6, 7], &[1]];

fn shapes_of(dims: &[&[usize]]) -> Vec<Shape> {
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

/// `config` with whole tensors a rank over `n` ranks (thread ranks), and
/// one CpuOptimizer with the same shapes over the rank-order sums: every
/// rank's single-file checkpoint and the single process's.
fn run_whole(
    config: &Config,
    shapes: &[Shape],
    n: usize,
    steps: usize,
    reduce: GradReduce,
) -> (Vec<Checkpoint>, Checkpoint) {
    let p = shaped(shapes, |i| (i as f32 * 0.37).sin());
    let sharded = on_ranks(n, |comm| {
        let rank = comm.rank();
        let mut opt =
            ShardedOptimizer::with_shapes(comm, &refs(&p), shapes, reduce, |tensors, shapes| {
                CpuOptimizer::with_shapes(config.clone(), tensors, shapes)
            })
            .unwrap();
        for s in 0..steps {
            opt.step(&refs(&shaped(shapes, |i| grad(rank, s, i))))
                .unwrap();
        }
        opt.checkpoint().unwrap()
    });
    let mut single = CpuOptimizer::with_shapes(config.clone(), &refs(&p), shapes).unwrap();
    for s in 0..steps {
        let mut g = shaped(shapes, |i| grad(0, s, i)).concat();
        for r in 1..n {
            let more = shaped(shapes, |i| grad(r, s, i)).concat();
            g.iter_mut().zip(more).for_each(|(a, b)| *a += b);
        }
        if reduce == GradReduce::Mean {
            g.iter_mut().for_each(|a| *a /= n as f32);
        }
        single.step_flat(&g).unwrap();
    }
    (sharded, single.checkpoint())
}

#[test]
fn whole_tensor_shards_are_contiguous_balanced_and_never_empty() {
    assert_eq!(
        whole_tensor_shards(&[12, 10, 42, 16, 18], 2).unwrap(),
        vec![0..3, 3..5]
    );
    // One large tensor: the others still get one tensor each.
    assert_eq!(
        whole_tensor_shards(&[1000, 1, 1], 3).unwrap(),
        vec![0..1, 1..2, 2..3]
    );
    assert_eq!(
        whole_tensor_shards(&[4, 4, 4, 4], 4).unwrap(),
        vec![0..1, 1..2, 2..3, 3..4]
    );
    assert_eq!(whole_tensor_shards(&[5, 0, 3], 1).unwrap(), vec![0..3]);
    assert!(matches!(
        whole_tensor_shards(&[5, 3], 3),
        Err(Error::InvalidOptions(_))
    ));
    // Every cut is the tensor boundary nearest the element cut.
    let lengths = [7usize, 1, 0, 17, 38, 600, 1300, 300, 5, 90];
    for n in 1..=6 {
        let shards = whole_tensor_shards(&lengths, n).unwrap();
        let mut at = 0;
        for t in &shards {
            assert_eq!(t.start, at);
            assert!(!t.is_empty());
            at = t.end;
        }
        assert_eq!(at, lengths.len());
    }
}

#[test]
fn every_rule_with_whole_tensors_matches_one_process_bit_for_bit() {
    // Each rank steps whole tensors with the same CPU code one process
    // runs on them: bit for bit for every rule, the matrix rules and LAMB
    // (its norms are then whole-tensor sums, formed as in one process)
    // included. Muon where every tensor is a matrix, the others over
    // matrices, vectors, a batch of matrices and an empty tensor.
    for kind in RuleKind::ALL {
        let dims: &[&[usize]] = if kind == RuleKind::Muon {
            &MATRICES
        } else {
            &MIXED
        };
        let shapes = shapes_of(dims);
        let config = kind.default_config();
        for n in 1..=4 {
            for reduce in [GradReduce::Sum, GradReduce::Mean] {
                let (sharded, single) = run_whole(&config, &shapes, n, 3, reduce);
                for (r, c) in sharded.iter().enumerate() {
                    assert_same(
                        c,
                        &single,
                        &format!("{} whole n={n} {reduce:?} rank {r}", kind.name()),
                    );
                    assert_eq!(c.shapes, shapes);
                }
            }
        }
    }
}

#[test]
fn matrix_rule_checkpoints_move_from_four_ranks_to_two_to_one() {
    // Adafactor's factored state (row and column statistics of the
    // matrices, a full variance of the vectors) is cut by tensor and
    // merged back; 4 ranks, then 2, then one CpuOptimizer, against one
    // process throughout.
    let config = RuleKind::Adafactor.default_config();
    let shapes = shapes_of(&MIXED);
    let p = shaped(&shapes, |i| (i as f32 * 0.37).sin());
    let g = |s: usize| shaped(&shapes, |i| grad(0, s, i));
    let steps = |opt: &mut ShardedOptimizer<ThreadCollective, CpuOptimizer>, s: Range<usize>| {
        for s in s {
            let share: Vec<Vec<f32>> = if opt.collective().rank() == 0 {
                g(s)
            } else {
                g(s).iter().map(|t| vec![0.0; t.len()]).collect()
            };
            opt.step(&refs(&share)).unwrap();
        }
    };
    let sharded = |comm| {
        ShardedOptimizer::with_shapes(
            comm,
            &refs(&p),
            &shapes,
            GradReduce::Sum,
            |tensors, shapes| CpuOptimizer::with_shapes(config.clone(), tensors, shapes),
        )
        .unwrap()
    };
    let shards = on_ranks(4, |comm| {
        let mut opt = sharded(comm);
        steps(&mut opt, 0..3);
        opt.shard_checkpoint().unwrap()
    });
    let lengths: Vec<usize> = shapes.iter().map(|s| s.numel().unwrap()).collect();
    let merged = merge(&shards, &lengths).unwrap();
    let merged = Checkpoint::from_bytes(&merged.to_bytes().unwrap()).unwrap();
    assert_eq!(merged.shapes, shapes);
    assert_eq!(split(&merged, 4).unwrap(), shards);
    let two = on_ranks(2, |comm| {
        let mut opt = sharded(comm);
        opt.load_checkpoint(&merged).unwrap();
        steps(&mut opt, 3..5);
        opt.checkpoint().unwrap()
    });
    assert_eq!(two[0], two[1]);
    let mut one = CpuOptimizer::from_checkpoint(&two[0]).unwrap();
    one.step(&refs(&g(5))).unwrap();
    let mut single = CpuOptimizer::with_shapes(config.clone(), &refs(&p), &shapes).unwrap();
    for s in 0..6 {
        single.step(&refs(&g(s))).unwrap();
    }
    assert_same(
        &one.checkpoint(),
        &single.checkpoint(),
        "adafactor 4 -> 2 -> 1",
    );
    // Without shapes a matrix rule's checkpoint cannot be cut.
    let mut bare = merged.clone();
    bare.shapes.clear();
    assert!(split(&bare, 2).is_err());
}

#[test]
fn matrix_rules_without_shapes_and_too_few_tensors_are_refused_on_every_rank() {
    let shapes = shapes_of(&MATRICES);
    let p = shaped(&shapes, |i| i as f32);
    // `new` cuts anywhere: a matrix rule is refused, pointing at with_shapes.
    for e in on_ranks(2, |comm| {
        ShardedOptimizer::new(comm, &refs(&p), GradReduce::Sum, |s| {
            CpuOptimizer::new(RuleKind::Adafactor.default_config(), s)
        })
        .err()
    }) {
        assert!(
            matches!(e, Some(Error::Unsupported(ref m)) if m.contains("with_shapes")),
            "{e:?}"
        );
    }
    // Five tensors over six ranks: one would own none.
    for e in on_ranks(6, |comm| {
        ShardedOptimizer::with_shapes(comm, &refs(&p), &shapes, GradReduce::Sum, |t, s| {
            CpuOptimizer::with_shapes(RuleKind::Muon.default_config(), t, s)
        })
        .err()
    }) {
        assert!(
            matches!(
                e,
                Some(Error::RankMismatch(_)) | Some(Error::InvalidOptions(_))
            ),
            "{e:?}"
        );
    }
    // Ranks that disagree on a shape (same lengths): every rank refuses.
    for e in on_ranks(2, |comm| {
        let mut mine = shapes.clone();
        if comm.rank() == 1 {
            mine[0] = Shape::matrix(4, 3);
        }
        ShardedOptimizer::with_shapes(comm, &refs(&p), &mine, GradReduce::Sum, |t, s| {
            CpuOptimizer::with_shapes(RuleKind::Muon.default_config(), t, s)
        })
        .err()
    }) {
        assert!(matches!(e, Some(Error::RankMismatch(_))), "{e:?}");
    }
    // An inner matrix-rule optimizer built over other shapes than its shard's.
    for e in on_ranks(2, |comm| {
        ShardedOptimizer::with_shapes(comm, &refs(&p), &shapes, GradReduce::Sum, |t, _| {
            let flat: Vec<Shape> = t.iter().map(|x| Shape::matrix(1, x.len())).collect();
            CpuOptimizer::with_shapes(RuleKind::Muon.default_config(), t, &flat)
        })
        .err()
    }) {
        assert!(
            matches!(
                e,
                Some(Error::InvalidOptions(_)) | Some(Error::RankMismatch(_))
            ),
            "{e:?}"
        );
    }
}

/// The matrix rules sharded with whole tensors a rank, each rank's on a
/// GpuOptimizer (the software adapter), against one GpuOptimizer over the
/// same reduced gradients: a tensor's kernels (Adafactor's row and column
/// reductions, Muon's Newton–Schulz products) read only that tensor, laid
/// out the same wherever it starts, so bit for bit.
#[test]
fn gpu_matrix_rules_with_whole_tensors_match_one_gpu_process() {
    let ctx = crate::GpuContext::new()
        .unwrap_or_else(|e| panic!("the GPU case needs an adapter (mesa-vulkan-drivers): {e}"));
    for (kind, dims) in [
        (RuleKind::Adafactor, &MIXED[..]),
        (RuleKind::Muon, &MATRICES[..]),
    ] {
        let shapes = shapes_of(dims);
        let config = kind.default_config();
        let p = shaped(&shapes, |i| (i as f32 * 0.37).sin());
        for n in [2, 3] {
            let ends = on_ranks(n, |comm| {
                let rank = comm.rank();
                let mut opt = ShardedOptimizer::with_shapes(
                    comm,
                    &refs(&p),
                    &shapes,
                    GradReduce::Mean,
                    |t, s| crate::GpuOptimizer::with_shapes(&ctx, config.clone(), t, s),
                )
                .unwrap();
                for s in 0..3 {
                    opt.step(&refs(&shaped(&shapes, |i| grad(rank, s, i))))
                        .unwrap();
                }
                opt.checkpoint().unwrap()
            });
            let mut one =
                crate::GpuOptimizer::with_shapes(&ctx, config.clone(), &refs(&p), &shapes).unwrap();
            for s in 0..3 {
                let mut g = shaped(&shapes, |i| grad(0, s, i)).concat();
                for r in 1..n {
                    let more = shaped(&shapes, |i| grad(r, s, i)).concat();
                    g.iter_mut().zip(more).for_each(|(a, b)| *a += b);
                }
                g.iter_mut().for_each(|a| *a /= n as f32);
                one.step(&one.layout().clone().split(&g).unwrap()).unwrap();
            }
            let want = one.checkpoint().unwrap();
            for (r, c) in ends.iter().enumerate() {
                assert_same(c, &want, &format!("GPU {} n={n} rank {r}", kind.name()));
            }
        }
    }
}

#[test]
fn an_elementwise_checkpoint_moves_between_pieces_and_whole_tensors() {
    // Adam over pieces on 3 ranks, saved; loaded by 2 ranks that own whole
    // tensors, and back: the state is per element, so either cut takes it,
    // and the run ends bit for bit as one process's.
    let config = RuleKind::Adam.default_config();
    let shapes = shapes_of(&MIXED);
    let p = shaped(&shapes, |i| (i as f32 * 0.37).sin());
    let g = |s: usize| shaped(&shapes, |i| grad(0, s, i));
    let share = |rank: usize, s: usize| -> Vec<Vec<f32>> {
        if rank == 0 {
            g(s)
        } else {
            g(s).iter().map(|t| vec![0.0; t.len()]).collect()
        }
    };
    let pieces = on_ranks(3, |comm| {
        let rank = comm.rank();
        let mut opt = ShardedOptimizer::new(comm, &refs(&p), GradReduce::Sum, |s| {
            CpuOptimizer::new(config.clone(), s)
        })
        .unwrap();
        for s in 0..2 {
            opt.step(&refs(&share(rank, s))).unwrap();
        }
        opt.checkpoint().unwrap()
    });
    assert!(pieces[0].shapes.is_empty());
    let whole = on_ranks(2, |comm| {
        let rank = comm.rank();
        let mut opt =
            ShardedOptimizer::with_shapes(comm, &refs(&p), &shapes, GradReduce::Sum, |t, s| {
                CpuOptimizer::with_shapes(config.clone(), t, s)
            })
            .unwrap();
        assert!(opt.shard_tensors().is_some());
        opt.load_checkpoint(&pieces[0]).unwrap();
        for s in 2..4 {
            opt.step(&refs(&share(rank, s))).unwrap();
        }
        opt.checkpoint().unwrap()
    });
    assert_eq!(whole[0].shapes, shapes);
    let again = on_ranks(3, |comm| {
        let rank = comm.rank();
        let mut opt = ShardedOptimizer::new(comm, &refs(&p), GradReduce::Sum, |s| {
            CpuOptimizer::new(config.clone(), s)
        })
        .unwrap();
        opt.load_checkpoint(&whole[0]).unwrap();
        opt.step(&refs(&share(rank, 4))).unwrap();
        opt.checkpoint().unwrap()
    });
    let mut single = CpuOptimizer::new(config.clone(), &refs(&p)).unwrap();
    for s in 0..5 {
        single.step(&refs(&g(s))).unwrap();
    }
    for c in &again {
        assert_same(c, &single.checkpoint(), "pieces -> whole -> pieces");
    }
}
