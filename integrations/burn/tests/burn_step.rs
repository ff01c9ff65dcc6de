//! The integration against wgpu-optim's CPU twin and against burn's own
//! AdamW, on burn's wgpu device (lavapipe where there is no GPU).
//!
//! # Tolerance (against the CPU twin)
//!
//! Both sides step the same f32 values with the same gradients (read back
//! from burn each step and given to the CPU twin too, so nothing feeds
//! back): the argument of the main crate's `tests/gpu_vs_cpu.rs` holds.
//! The WGSL kernel may fuse a multiply-add and its division and square
//! root may be off by ~2.5 ULP, about 8 such roundings a stored value a
//! step, so after `STEPS` steps an element differs by at most
//! `STEPS · 8 · ε · scale`, `scale` the larger of the element's magnitude
//! and the distance it travelled.

#[path = "../examples/common/anchors.rs"]
mod anchors;
#[path = "../examples/common/digits.rs"]
mod digits;

use std::sync::OnceLock;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};
use digits::{epoch_batches, load, Mlp};
use wgpu_optim::{AdamW, ClipGradNorm, CpuOptimizer};
use wgpu_optim_burn::{BurnGpu, Error, FusedOptimizer, ModelOptimizer};

/// burn's runtime is brought up once a process: the tests share it.
fn gpu() -> &'static BurnGpu {
    static GPU: OnceLock<BurnGpu> = OnceLock::new();
    GPU.get_or_init(|| BurnGpu::new().expect("burn's wgpu runtime (lavapipe where no GPU)"))
}

fn device() -> Device {
    gpu().device().clone().autodiff()
}

/// Each parameter's values, in the module's visiting order.
fn values<M: Module>(m: &M) -> Vec<(ParamId, Vec<f32>)> {
    struct V(Vec<(ParamId, Vec<f32>)>);
    impl ModuleVisitor for V {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let v = p.val().into_data().try_to_vec::<f32>().unwrap();
            self.0.push((p.id, v));
        }
    }
    let mut v = V(Vec::new());
    m.visit(&mut v);
    v.0
}

/// Each parameter's gradient, in the module's visiting order.
fn grad_values<M: Module>(m: &M, grads: &GradientsParams) -> Vec<Vec<f32>> {
    struct G<'a>(&'a GradientsParams, Vec<Vec<f32>>);
    impl ModuleVisitor for G<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let g = self
                .0
                .get::<D>(p.id)
                .expect("every parameter has a gradient");
            self.1.push(g.into_data().try_to_vec::<f32>().unwrap());
        }
    }
    let mut g = G(grads, Vec::new());
    m.visit(&mut g);
    g.1
}

fn cpu_twin(model: &Mlp, config: AdamW) -> CpuOptimizer {
    let p = values(model);
    let refs: Vec<&[f32]> = p.iter().map(|(_, v)| v.as_slice()).collect();
    CpuOptimizer::new(config, &refs).unwrap()
}

/// Asserts the module's parameters equal the CPU twin's within the bound
/// of the module docs, with `start` the values before the first step.
fn assert_close(model: &Mlp, cpu: &CpuOptimizer, start: &[(ParamId, Vec<f32>)], steps: usize) {
    assert_within(model, cpu, start, steps, 8.0);
}

/// As [`assert_close`] with `k` roundings a stored value a step.
fn assert_within(
    model: &Mlp,
    cpu: &CpuOptimizer,
    start: &[(ParamId, Vec<f32>)],
    steps: usize,
    k: f32,
) {
    let got = values(model);
    let want = cpu.params();
    assert_eq!(got.len(), want.len());
    for (((_, g), w), (_, s)) in got.iter().zip(&want).zip(start) {
        for ((&g, &w), &s) in g.iter().zip(w.iter()).zip(s) {
            let scale = w.abs().max(s.abs()).max((w - s).abs());
            let tol = steps as f32 * k * f32::EPSILON * scale;
            assert!(
                (g - w).abs() <= tol,
                "gpu {g} cpu {w} (start {s}, tol {tol})"
            );
        }
    }
}

/// One step of `step` over `model` with the gradients of the batch `idx`,
/// and the same gradients (read back from burn) given to the CPU twin.
fn step_with_twin(
    model: Mlp,
    idx: &[usize],
    train: &digits::Digits,
    cpu: &mut CpuOptimizer,
    step: impl FnOnce(Mlp, GradientsParams) -> Mlp,
) -> Mlp {
    let (x, y) = train.batch(idx, &device());
    let grads = GradientsParams::from_grads(model.loss(x, y).backward(), &model);
    let host = grad_values(&model, &grads);
    let model = step(model, grads);
    let refs: Vec<&[f32]> = host.iter().map(|g| g.as_slice()).collect();
    cpu.step(&refs).unwrap();
    model
}

fn adamw() -> AdamW {
    AdamW {
        lr: 1e-2,
        weight_decay: 0.01,
        ..AdamW::default()
    }
}

#[test]
fn model_step_equals_cpu_twin() {
    let device = device();
    let (train, _) = load();
    let mut model = Mlp::new(32, &device);
    let start = values(&model);
    let mut cpu = cpu_twin(&model, adamw());
    let mut opt = ModelOptimizer::new(gpu(), adamw());
    const STEPS: usize = 5;
    for (s, idx) in epoch_batches(train.len(), 64, 1)
        .iter()
        .take(STEPS)
        .enumerate()
    {
        model = step_with_twin(model, idx, &train, &mut cpu, |m, g| opt.step(m, g).unwrap());
        assert_close(&model, &cpu, &start, s + 1);
    }
    assert_eq!(opt.optimizer().unwrap().step_count(), STEPS as u64);
    assert_eq!(opt.param_ids().len(), 4);
    // Nothing else held the parameters' buffers: every step was in place.
    assert_eq!(opt.copies(), 0);
}

#[test]
fn clipped_model_step_equals_cpu_twin() {
    let device = device();
    let (train, _) = load();
    let mut model = Mlp::new(16, &device);
    let start = values(&model);
    let clip = Some(ClipGradNorm::new(0.05));
    let mut cpu = cpu_twin(&model, adamw());
    cpu.set_clip_grad_norm(clip).unwrap();
    let mut opt = ModelOptimizer::new(gpu(), adamw());
    opt.set_clip_grad_norm(clip).unwrap();
    for (s, idx) in epoch_batches(train.len(), 64, 2).iter().take(3).enumerate() {
        model = step_with_twin(model, idx, &train, &mut cpu, |m, g| opt.step(m, g).unwrap());
        // The clip coefficient comes from a norm summed in another order
        // on each side: it differs by a few ε, and scales the whole update
        // (still within a few ε of it), which the bound's 8 per step covers.
        assert_close(&model, &cpu, &start, s + 1);
    }
    let gpu_norm = opt.optimizer().unwrap().last_grad_norm().unwrap().unwrap();
    let cpu_norm = cpu.last_grad_norm().unwrap();
    // One f32 norm of ~10⁴ squares summed in two orders: a few ε apart.
    assert!((gpu_norm - cpu_norm).abs() <= 16.0 * f32::EPSILON * cpu_norm);
}

#[test]
fn burn_trait_step_equals_cpu_twin() {
    let device = device();
    let (train, _) = load();
    let mut model = Mlp::new(32, &device);
    let start = values(&model);
    let mut cpu = cpu_twin(&model, adamw());
    let fused = FusedOptimizer::new(gpu(), adamw());
    let mut optim: ModuleOptimizer = fused.clone().into();
    for (s, idx) in epoch_batches(train.len(), 64, 3).iter().take(4).enumerate() {
        model = step_with_twin(model, idx, &train, &mut cpu, |m, g| optim.step(1e-2, m, g));
        assert!(fused.take_errors().is_empty());
        assert_close(&model, &cpu, &start, s + 1);
    }
}

#[test]
fn burn_record_round_trip_steps_the_same() {
    let device = device();
    let (train, _) = load();
    let batches = epoch_batches(train.len(), 64, 4);
    let mut model = Mlp::new(16, &device);
    let mut optim: ModuleOptimizer = FusedOptimizer::new(gpu(), adamw()).into();
    for idx in batches.iter().take(3) {
        let (x, y) = train.batch(idx, &device);
        let grads = GradientsParams::from_grads(model.loss(x, y).backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
    let bytes = optim.into_bytes().unwrap();
    let mut restored: ModuleOptimizer = FusedOptimizer::new(gpu(), adamw()).into();
    restored = restored.from_bytes(bytes).unwrap();
    // Both step the same parameters with the same gradients: each works
    // on its own copy (the two modules share buffers, so each step copies
    // before writing).
    let (x, y) = train.batch(&batches[3], &device);
    let g1 = GradientsParams::from_grads(model.loss(x.clone(), y.clone()).backward(), &model);
    let g2 = GradientsParams::from_grads(model.loss(x, y).backward(), &model);
    let a = optim.step(1e-2, model.clone(), g1);
    let b = restored.step(1e-2, model.clone(), g2);
    for ((_, va), (_, vb)) in values(&a).iter().zip(values(&b).iter()) {
        assert_eq!(va, vb, "a restored state steps bit for bit as the original");
    }
    assert_ne!(values(&a), values(&model), "the step moved the parameters");
}

#[test]
fn a_shared_parameter_is_copied_not_written_over() {
    let device = device();
    let (train, _) = load();
    let model = Mlp::new(16, &device);
    let kept = model.clone();
    let before = values(&kept);
    let mut cpu = cpu_twin(&model, adamw());
    let mut opt = ModelOptimizer::new(gpu(), adamw());
    let first: Vec<usize> = (0..32).collect();
    let model = step_with_twin(model, &first, &train, &mut cpu, |m, g| {
        opt.step(m, g).unwrap()
    });
    assert_eq!(values(&kept), before, "the clone kept its values");
    assert_ne!(values(&model), before, "the stepped module moved");
    assert!(opt.copies() >= 4, "every shared parameter was copied");
    // The next step steps the copies, with the state carried over to
    // them: both steps equal the CPU twin's.
    drop(kept);
    let second: Vec<usize> = (32..64).collect();
    let model = step_with_twin(model, &second, &train, &mut cpu, |m, g| {
        opt.step(m, g).unwrap()
    });
    assert_eq!(opt.optimizer().unwrap().step_count(), 2);
    assert_close(&model, &cpu, &before, 2);
}

#[test]
fn a_parameter_losing_its_gradient_is_a_typed_error_and_changes_nothing() {
    let device = device();
    let (train, _) = load();
    let mut model = Mlp::new(16, &device);
    let mut opt = ModelOptimizer::new(gpu(), adamw());
    let (x, y) = train.batch(&(0..32).collect::<Vec<_>>(), &device);
    let grads = GradientsParams::from_grads(model.loss(x.clone(), y.clone()).backward(), &model);
    model = opt.step(model, grads).unwrap();
    let before = values(&model);
    // Gradients of one parameter only.
    let mut grads = GradientsParams::from_grads(model.loss(x, y).backward(), &model);
    // Visiting order: fc1.weight, fc1.bias, fc2.weight, fc2.bias (burn's
    // container refuses a removal at the wrong rank).
    let ids = opt.param_ids();
    grads.remove::<1>(ids[1]).unwrap();
    grads.remove::<2>(ids[2]).unwrap();
    grads.remove::<1>(ids[3]).unwrap();
    let err = opt.step(model, grads).unwrap_err();
    assert!(
        matches!(err.error, Error::ParamsChanged(_)),
        "{}",
        err.error
    );
    assert_eq!(values(&err.module), before);
    assert_eq!(opt.optimizer().unwrap().step_count(), 1);
}

#[test]
fn trains_like_burn_adamw() {
    let device = device();
    let (train, test) = load();
    device.seed(7);
    let init = Mlp::new(64, &device);
    // The same hyperparameters on both sides (burn's AdamW defaults differ
    // from torch's: eps 1e-5, weight decay 1e-4).
    let burn_cfg = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(0.01);
    let mut burn_optim: ModuleOptimizer = burn_cfg.init();
    let mut ours = ModelOptimizer::new(gpu(), adamw());
    let (mut a, mut b) = (init.clone(), init);
    for epoch in 0..3 {
        for idx in epoch_batches(train.len(), 64, 10 + epoch) {
            let (x, y) = train.batch(&idx, &device);
            let g = GradientsParams::from_grads(a.loss(x.clone(), y.clone()).backward(), &a);
            a = burn_optim.step(1e-2, a, g);
            let g = GradientsParams::from_grads(b.loss(x, y).backward(), &b);
            b = ours.step(b, g).unwrap();
        }
    }
    let (acc_burn, acc_ours) = (a.accuracy(&test, &device), b.accuracy(&test, &device));
    // 297 held-out samples; the runs differ in rounding and in where burn
    // adds its epsilon, so a few samples may go either way: 3 points is
    // 9 samples. Both must have learnt the task.
    assert!(
        acc_burn > 0.9 && acc_ours > 0.9,
        "burn {acc_burn} ours {acc_ours}"
    );
    assert!(
        (acc_burn - acc_ours).abs() <= 0.03,
        "burn {acc_burn} ours {acc_ours}"
    );
}

/// burn's own optimizers as anchors (`examples/common/anchors.rs`, the
/// example's table): for every rule burn computes as torch does, one step
/// of burn's and one of ours from the same weights with the same gradients
/// land on the same values within rounding. Both are f32 with the same
/// formula in a different order of operations: about 8 roundings a value,
/// as the module docs say, and LAMB's two norms are tree sums of at most
/// 4096 squares on each side (13 roundings each, and their ratio), so 64
/// roundings are given for every rule. Adafactor and Muon are not the same
/// rule in burn (the table says why).
#[test]
fn first_step_equals_burns_own_optimizers_for_the_shared_rules() {
    let device = device();
    let (train, _) = load();
    device.seed(11);
    let init = Mlp::new(64, &device);
    let idx: Vec<usize> = epoch_batches(train.len(), 64, 0).remove(0);
    let (x, y) = train.batch(&idx, &device);
    let start = values(&init);
    let shared: Vec<_> = anchors::anchors()
        .into_iter()
        .filter(|a| a.same_rule)
        .collect();
    assert_eq!(shared.len(), 6);
    for mut anchor in shared {
        let name = anchor.name;
        let mut ours = ModelOptimizer::new(gpu(), anchor.ours.clone());
        let (a, b) = (init.clone(), init.clone());
        let g = GradientsParams::from_grads(a.loss(x.clone(), y.clone()).backward(), &a);
        let a = anchor.burn.step(anchor.lr, a, g);
        let g = GradientsParams::from_grads(b.loss(x.clone(), y.clone()).backward(), &b);
        let b = ours.step(b, g).unwrap();
        let (mut moved, mut max_tol) = (0.0f32, 0.0f32);
        for (((_, p), (_, q)), (_, s)) in values(&a).iter().zip(&values(&b)).zip(&start) {
            for ((&p, &q), &s) in p.iter().zip(q).zip(s) {
                let scale = s.abs().max((q - s).abs());
                let tol = 64.0 * f32::EPSILON * scale;
                max_tol = max_tol.max(tol);
                assert!(
                    (p - q).abs() <= tol,
                    "{name}: burn {p} ours {q} (start {s}, tol {tol})"
                );
                moved = moved.max((q - s).abs());
            }
        }
        // The step moved the weights well beyond the rounding allowed (the
        // comparison is not of two no-ops).
        assert!(
            moved > 10.0 * max_tol,
            "{name}: moved {moved}, tol {max_tol}"
        );
    }
}

/// Parameter groups through burn's `ParamGroup`: fc2 (matched by its
/// module path) with its own lr and no weight decay, fc1 with the
/// optimizer's configuration, every group halved each step by one
/// schedule from its own lr; equal to the CPU twin over the same groups
/// and schedule within the bound of the module docs. A one-lr schedule
/// over groups, and a group added after the first step, are typed errors
/// that change nothing.
#[test]
fn parameter_groups_equal_cpu_twin() {
    use burn::module::ParamGroup as BurnParamGroup;
    use wgpu_optim::{GroupScheduler, ParamGroup, Schedule, Scheduler};
    let device = device();
    let (train, _) = load();
    let mut model = Mlp::new(16, &device);
    let start = values(&model);
    let fc2 = AdamW {
        lr: 3e-3,
        weight_decay: 0.0,
        ..adamw()
    };
    let halve = Schedule::Step {
        step_size: 1,
        gamma: 0.5,
    };
    let mut opt = ModelOptimizer::new(gpu(), adamw());
    assert_eq!(
        opt.add_group(BurnParamGroup::from_predicate("fc2"), fc2.clone())
            .unwrap(),
        1
    );
    assert_eq!(opt.group_count(), 2);
    opt.set_group_schedule(Some(halve.clone())).unwrap();
    // Visiting order: fc1.weight, fc1.bias, fc2.weight, fc2.bias.
    let p = values(&model);
    let refs: Vec<&[f32]> = p.iter().map(|(_, v)| v.as_slice()).collect();
    let groups = [
        ParamGroup::new(adamw(), vec![0, 1]),
        ParamGroup::new(fc2, vec![2, 3]),
    ];
    let mut cpu = CpuOptimizer::with_param_groups(&refs, &groups).unwrap();
    let mut sched = GroupScheduler::new(halve, &cpu).unwrap();
    for (s, idx) in epoch_batches(train.len(), 64, 5).iter().take(3).enumerate() {
        sched.apply(&mut cpu).unwrap();
        model = step_with_twin(model, idx, &train, &mut cpu, |m, g| opt.step(m, g).unwrap());
        sched.advance();
        assert_close(&model, &cpu, &start, s + 1);
    }
    let built = opt.optimizer().unwrap();
    assert_eq!(built.groups(), cpu.groups());
    // The schedule's third value was in force for the third step: two
    // halvings (exact: powers of two).
    assert_eq!(built.group_config(1).unwrap().lr(), 3e-3 / 4.0);

    let e = opt.add_group(BurnParamGroup::from_predicate("fc1"), adamw());
    assert!(matches!(e, Err(Error::Unsupported(_))), "{e:?}");
    assert_eq!(opt.group_count(), 2);
    opt.set_group_schedule(None).unwrap();
    opt.set_scheduler(Some(
        Scheduler::new(Schedule::Constant, 1e-3, None).unwrap(),
    ));
    let before = values(&model);
    let (x, y) = train.batch(&(0..32).collect::<Vec<_>>(), &device);
    let grads = GradientsParams::from_grads(model.loss(x, y).backward(), &model);
    let err = opt.step(model, grads).unwrap_err();
    assert!(matches!(err.error, Error::Unsupported(_)), "{}", err.error);
    assert_eq!(values(&err.module), before);
    assert_eq!(opt.optimizer().unwrap().step_count(), 3);
}

/// wgpu-optim's checkpoint of a whole-model optimizer, through its bytes,
/// restored into a new `ModelOptimizer` before its first step: the next
/// two steps of both, on the same parameters with the same gradients, are
/// bit for bit the same (each works on its own copy: the modules share
/// buffers). Once with two groups and clipping, once with clipping and an
/// lr schedule (whose position comes back with the checkpoint). Before the
/// first step there is nothing to save: a typed error.
#[test]
fn model_checkpoint_restores_exactly() {
    use burn::module::ParamGroup as BurnParamGroup;
    use wgpu_optim::checkpoint::Checkpoint;
    use wgpu_optim::{Schedule, Scheduler};
    let device = device();
    let (train, _) = load();
    let batches = epoch_batches(train.len(), 64, 6);
    for grouped in [true, false] {
        let make = || {
            let mut opt = ModelOptimizer::new(gpu(), adamw());
            if grouped {
                let bias = AdamW {
                    weight_decay: 0.0,
                    ..adamw()
                };
                opt.add_group(BurnParamGroup::from_predicate("bias"), bias)
                    .unwrap();
            }
            opt
        };
        let mut opt = make();
        assert!(matches!(opt.checkpoint(), Err(Error::Unsupported(_))));
        opt.set_clip_grad_norm(Some(ClipGradNorm::new(0.1)))
            .unwrap();
        if !grouped {
            let decay = Schedule::Exponential { gamma: 0.9 };
            opt.set_scheduler(Some(Scheduler::new(decay, 1e-2, None).unwrap()));
        }
        let mut model = Mlp::new(16, &device);
        for idx in batches.iter().take(3) {
            let (x, y) = train.batch(idx, &device);
            let grads = GradientsParams::from_grads(model.loss(x, y).backward(), &model);
            model = opt.step(model, grads).unwrap();
        }
        let bytes = opt.checkpoint().unwrap().to_bytes().unwrap();
        let mut restored = make();
        restored
            .load_checkpoint(&Checkpoint::from_bytes(&bytes).unwrap())
            .unwrap();
        assert_eq!(restored.scheduler(), opt.scheduler());
        let (mut a, mut b) = (model.clone(), model);
        for idx in &batches[3..5] {
            let (x, y) = train.batch(idx, &device);
            let ga = GradientsParams::from_grads(a.loss(x.clone(), y.clone()).backward(), &a);
            let gb = GradientsParams::from_grads(b.loss(x, y).backward(), &b);
            a = opt.step(a, ga).unwrap();
            b = restored.step(b, gb).unwrap();
            for ((_, va), (_, vb)) in values(&a).iter().zip(values(&b).iter()) {
                assert_eq!(
                    va, vb,
                    "grouped {grouped}: the restored optimizer steps bit for bit"
                );
            }
        }
        let (o, r) = (opt.optimizer().unwrap(), restored.optimizer().unwrap());
        assert_eq!((o.step_count(), r.step_count()), (5, 5));
        assert_eq!(r.groups(), o.groups());
        assert_eq!(r.group_count(), if grouped { 2 } else { 1 });
        assert_eq!(r.clip_grad_norm(), o.clip_grad_norm());
        assert_eq!(r.config().lr(), o.config().lr());
        assert_eq!(
            r.read_state_flat("exp_avg_sq").unwrap(),
            o.read_state_flat("exp_avg_sq").unwrap()
        );
    }
}

/// LAMB through the whole-model step (the parameters copied into a packed
/// buffer and back around LAMB's tile kernels, which take no views) equals
/// the CPU twin. The bound is the main crate's `K_LAMB`
/// (tests/common/cases.rs): 14 roundings for the update's three divisions,
/// square root and FMA, plus 44.5 for the trust ratio's f32 tree sums on
/// the GPU against f64 sums on the CPU (derived in tests/lamb_clip.rs for
/// tiles of up to 4096 elements; these tensors have at most 1024). LAMB
/// over groups is refused when the group is added.
#[test]
fn lamb_model_step_equals_cpu_twin() {
    use burn::module::ParamGroup as BurnParamGroup;
    use wgpu_optim::Lamb;
    let device = device();
    let (train, _) = load();
    let mut model = Mlp::new(16, &device);
    let start = values(&model);
    let lamb = Lamb {
        lr: 1e-2,
        ..Lamb::default()
    };
    let refs: Vec<&[f32]> = start.iter().map(|(_, v)| v.as_slice()).collect();
    let mut cpu = CpuOptimizer::new(lamb.clone(), &refs).unwrap();
    let mut opt = ModelOptimizer::new(gpu(), lamb.clone());
    for (s, idx) in epoch_batches(train.len(), 64, 7).iter().take(3).enumerate() {
        model = step_with_twin(model, idx, &train, &mut cpu, |m, g| opt.step(m, g).unwrap());
        assert_within(&model, &cpu, &start, s + 1, 14.0 + 44.5);
    }
    assert_ne!(values(&model), start, "the steps moved the parameters");
    assert_eq!(opt.copies(), 0);
    let mut grouped = ModelOptimizer::new(gpu(), lamb.clone());
    let e = grouped.add_group(BurnParamGroup::from_predicate("bias"), lamb);
    assert!(matches!(e, Err(Error::Unsupported(_))), "{e:?}");
    assert_eq!(grouped.group_count(), 1);
}

/// Each parameter's shape as burn keeps it, in the module's visiting order.
fn shapes<M: Module>(m: &M) -> Vec<wgpu_optim::Shape> {
    struct S(Vec<wgpu_optim::Shape>);
    impl ModuleVisitor for S {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0.push(wgpu_optim::Shape::new(&p.val().dims()));
        }
    }
    let mut s = S(Vec::new());
    m.visit(&mut s);
    s.0
}

/// Adafactor (a matrix rule) through the whole-model step: the optimizer
/// on buffers of its own, one a tensor, with burn's shapes (fc1's weight
/// 64 × 16, as burn keeps a Linear's weight: the transpose of torch's),
/// the parameters copied in and back around each step; against the CPU
/// twin over the same shapes. The bound is the argument of the main
/// crate's `ADAFACTOR_TOL` (tests/matrix_gpu.rs): the GPU sums the
/// factored statistics and the RMS in f32 where the CPU sums in f64, each
/// sum of n terms within about n·2^-24 relatively (here n ≤ 1024: 6e-5 in
/// the worst case, √n·2^-24 ≈ 2e-6 typically), entering the update
/// through square roots and RMS(U); 1e-5 of the CPU's largest movement of
/// the tensor, beyond the parameters' own rounding (an ulp a step), is a
/// margin over the typical case, and a wrong shape or formula is off by
/// 1% or more.
#[test]
fn adafactor_model_step_equals_cpu_twin() {
    use wgpu_optim::Adafactor;
    let device = device();
    let (train, _) = load();
    let mut model = Mlp::new(16, &device);
    let start = values(&model);
    let shapes = shapes(&model);
    assert_eq!(shapes[0], wgpu_optim::Shape::matrix(64, 16));
    let refs: Vec<&[f32]> = start.iter().map(|(_, v)| v.as_slice()).collect();
    let mut cpu = CpuOptimizer::with_shapes(Adafactor::default(), &refs, &shapes).unwrap();
    let mut opt = ModelOptimizer::new(gpu(), Adafactor::default());
    const STEPS: usize = 3;
    for idx in epoch_batches(train.len(), 64, 8).iter().take(STEPS) {
        model = step_with_twin(model, idx, &train, &mut cpu, |m, g| opt.step(m, g).unwrap());
    }
    let got = values(&model);
    for (((_, g), w), (_, s)) in got.iter().zip(cpu.params()).zip(&start) {
        let scale = w
            .iter()
            .zip(s)
            .fold(0.0f32, |m, (w, s)| m.max((w - s).abs()));
        assert!(scale > 0.0, "the steps moved every tensor");
        for ((&g, &w), _) in g.iter().zip(w.iter()).zip(s) {
            let rounding = STEPS as f32 * f32::EPSILON * w.abs();
            let off = ((g - w).abs() - rounding).max(0.0);
            assert!(off <= 1e-5 * scale, "gpu {g} cpu {w} (scale {scale})");
        }
    }
    assert_eq!(opt.optimizer().unwrap().step_count(), STEPS as u64);
    assert_eq!(opt.copies(), 0);
    // The matrix rules step a copy in one group: a group is refused when added.
    let mut grouped = ModelOptimizer::new(gpu(), Adafactor::default());
    let bias = burn::module::ParamGroup::from_predicate("bias");
    let e = grouped.add_group(bias, Adafactor::default());
    assert!(matches!(e, Err(Error::Unsupported(_))), "{e:?}");
    assert_eq!(grouped.group_count(), 1);
}
