//! The rules' scalar state (NAdam's `mu_product`, ASGD's `eta` and `mu`):
//! history that both optimizers keep on the host, advanced once per applied
//! step.
//!
//! * With `skip_nonfinite`, and the hyperparameters the state depends on
//!   (NAdam's `betas[0]`, ASGD's lr) changed between skipped steps, a run
//!   ends bit for bit where the run that never saw the skipped gradients
//!   ends (with the same setter calls): on the CPU, on the GPU step by step
//!   and on the GPU with the steps recorded into encoders, where the host
//!   learns the outcomes late. The scalar state is the CPU's exactly (both
//!   compute it on the host with the same arithmetic); the parameters and
//!   the state tensors are within the GPU-against-CPU bound of
//!   tests/gpu_vs_cpu.rs.
//! * A recorded step whose scalar state depends on steps recorded but not
//!   submitted is refused with `Error::UnsubmittedSteps` and changes
//!   nothing; once the encoder is submitted it is taken.
//! * Files torch wrote (`tests/data/checkpoint/gen_torch_scalar_state.py`)
//!   load with their scalar state, under torch's names, and continue as
//!   torch does; ours carry the same tensors.
//!
//! Needs a GPU adapter: without one the tests fail with `Error::NoAdapter`'s
//! text, which says what to install.

mod common;

use std::path::Path;

use common::{cases, ctx, Envelope, Rng};
use safetensors::SafeTensors;
use wgpu_optim::checkpoint::Checkpoint;
use wgpu_optim::{
    Asgd, Config, CpuOptimizer, Error, GpuOptimizer, GpuOptions, NAdam, Optimizer, RuleKind,
};

/// Two tensors, lengths not multiples of 4 (the vec4 kernels' tail).
const LENGTHS: [usize; 2] = [37, 6];
const TOTAL: usize = 43;

#[derive(Clone, Copy, Debug)]
enum Op {
    /// Step with the gradients of number `k`, non-finite when `bad`.
    Step {
        k: usize,
        bad: bool,
    },
    Lr(f64),
    /// `set_momentum` (NAdam's `betas[0]`).
    Momentum(f64),
}

/// 30 steps, 9 of them skipped (runs of them too), with the lr and β1
/// changed before, between and after skipped steps; ASGD, which has no
/// momentum, gets an lr change instead of each β1 change.
fn ops(rule: RuleKind) -> Vec<Op> {
    let bad = [2, 5, 6, 11, 12, 13, 20, 26, 27];
    let changes: &[(usize, Op)] = &[
        (3, Op::Momentum(0.5)),
        (6, Op::Momentum(0.7)),
        (6, Op::Lr(0.02)),
        (7, Op::Momentum(0.3)),
        (12, Op::Lr(0.005)),
        (13, Op::Momentum(0.95)),
        (16, Op::Lr(0.03)),
        (21, Op::Lr(0.0)),
        (22, Op::Lr(0.01)),
        (27, Op::Momentum(0.8)),
    ];
    let mut out = Vec::new();
    for k in 0..30 {
        for (at, op) in changes {
            if *at == k {
                out.push(match (rule, *op) {
                    (RuleKind::Asgd, Op::Momentum(m)) => Op::Lr(0.05 * (1.0 - m)),
                    (_, op) => op,
                });
            }
        }
        out.push(Op::Step {
            k,
            bad: bad.contains(&k),
        });
    }
    out
}

/// The same calls without the skipped steps: what skipping must reproduce.
fn without_bad(ops: &[Op]) -> Vec<Op> {
    ops.iter()
        .copied()
        .filter(|op| !matches!(op, Op::Step { bad: true, .. }))
        .collect()
}

fn grads(k: usize, bad: bool) -> Vec<f32> {
    let mut g = Rng(500 + k as u64).vec(TOTAL);
    if bad {
        g[(k * 7) % TOTAL] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][k % 3];
    }
    g
}

fn split(flat: &[f32]) -> Vec<&[f32]> {
    vec![&flat[..LENGTHS[0]], &flat[LENGTHS[0]..]]
}

fn initial() -> Vec<f32> {
    Rng(3).vec_scaled(TOTAL, 2.0)
}

/// NAdam with decoupled decay and ASGD averaging from its third step.
fn configs() -> Vec<Config> {
    vec![
        NAdam {
            lr: 0.01,
            weight_decay: 0.05,
            decoupled_weight_decay: true,
            ..NAdam::default()
        }
        .into(),
        Asgd {
            lr: 0.05,
            lambd: 0.5,
            t0: 0.0,
            ..Asgd::default()
        }
        .into(),
    ]
}

/// Runs `ops` step by step (`Optimizer::step`); `after_step` sees the
/// optimizer after each step.
fn run<O: Optimizer>(opt: &mut O, ops: &[Op], after_step: &mut dyn FnMut(&O)) {
    for op in ops {
        match *op {
            Op::Step { k, bad } => {
                opt.step(&split(&grads(k, bad))).unwrap();
                after_step(opt);
            }
            Op::Lr(lr) => opt.set_lr(lr).unwrap(),
            Op::Momentum(m) => opt.set_momentum(m).unwrap(),
        }
    }
}

fn cpu(config: &Config, skip: bool) -> CpuOptimizer {
    let mut o = CpuOptimizer::new(config.clone(), &split(&initial())).unwrap();
    o.set_skip_nonfinite(skip);
    o
}

fn gpu(config: &Config, skip: bool) -> GpuOptimizer {
    let mut o = GpuOptimizer::new(ctx(), config.clone(), &split(&initial())).unwrap();
    o.set_skip_nonfinite(skip).unwrap();
    o
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Everything a checkpoint holds but the skip option and count, as bits.
type Snap = (Vec<u32>, Vec<Vec<u32>>, Vec<(String, u64)>, u64);

fn snap(c: &Checkpoint) -> Snap {
    (
        bits(c.params.as_ref().unwrap()),
        c.state.iter().map(|(_, v)| bits(v)).collect(),
        c.scalar_state
            .iter()
            .map(|(n, v)| (n.clone(), v.to_bits()))
            .collect(),
        c.step,
    )
}

/// Records the steps of `ops` into encoders, copying each step's gradients
/// into the gradient buffer in the encoder first; a step refused because
/// the outcome of recorded steps is needed ([`Error::UnsubmittedSteps`])
/// must have changed nothing: the encoder is submitted and the step
/// recorded again. Returns how many were refused.
fn run_recorded(opt: &mut GpuOptimizer, ops: &[Op]) -> usize {
    let steps: Vec<(usize, bool)> = ops
        .iter()
        .filter_map(|op| match *op {
            Op::Step { k, bad } => Some((k, bad)),
            _ => None,
        })
        .collect();
    let all: Vec<f32> = steps.iter().flat_map(|&(k, bad)| grads(k, bad)).collect();
    let device = ctx().device();
    let source = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("every step's gradients"),
        size: (all.len() * 4) as u64,
        usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    ctx()
        .queue()
        .write_buffer(&source, 0, bytemuck::cast_slice(&all));
    let bytes = (TOTAL * 4) as u64;
    let target = opt.grad_buffers()[0].clone();
    let new_encoder = || device.create_command_encoder(&Default::default());
    let mut encoder = new_encoder();
    let mut refused = 0;
    let mut n = 0u64;
    for op in ops {
        match *op {
            Op::Step { .. } => {
                let record = |opt: &mut GpuOptimizer, e: &mut wgpu::CommandEncoder| {
                    e.copy_buffer_to_buffer(&source, n * bytes, &target, 0, bytes);
                    opt.record_step(e, None)
                };
                let counted = opt.step_count();
                match record(opt, &mut encoder) {
                    Ok(()) => {}
                    Err(Error::UnsubmittedSteps { .. }) => {
                        refused += 1;
                        assert_eq!(opt.step_count(), counted, "a refused step counted");
                        let full = std::mem::replace(&mut encoder, new_encoder());
                        ctx().queue().submit(Some(full.finish()));
                        record(opt, &mut encoder).unwrap();
                    }
                    Err(e) => panic!("{e}"),
                }
                n += 1;
            }
            Op::Lr(lr) => opt.set_lr(lr).unwrap(),
            Op::Momentum(m) => opt.set_momentum(m).unwrap(),
        }
    }
    ctx().queue().submit(Some(encoder.finish()));
    refused
}

/// Skipped steps leave no trace in the scalar state, whatever changed
/// between them: each backend's skipping run is bit for bit its run
/// without those gradients; the GPU's scalar state is the CPU's exactly
/// and its parameters and state tensors are within the bound of
/// tests/gpu_vs_cpu.rs (`steps·K·ε·scale` per element, `scale` the CPU's
/// largest magnitude or distance travelled).
#[test]
fn skipped_steps_with_history_changed_between_them() {
    for config in configs() {
        let rule = config.kind();
        let ops = ops(rule);
        let clean = without_bad(&ops);
        let skipped = ops.len() - clean.len();

        let mut c = cpu(&config, true);
        let mut envelope = Envelope::new(&initial());
        let mut state_envelopes: Vec<Envelope> = c
            .state_names()
            .iter()
            .map(|_| Envelope::new(&[0.0; TOTAL]))
            .collect();
        run(&mut c, &ops, &mut |o: &CpuOptimizer| {
            envelope.update(o.params_flat());
            for (e, n) in state_envelopes.iter_mut().zip(o.state_names()) {
                e.update(o.state_flat(n).unwrap());
            }
        });
        let mut c_ref = cpu(&config, false);
        run(&mut c_ref, &clean, &mut |_| {});
        let cpu_ckpt = c.checkpoint();
        assert_eq!(
            snap(&cpu_ckpt),
            snap(&c_ref.checkpoint()),
            "{rule}: the CPU's skipping run"
        );
        assert_eq!(c.skipped_steps() as usize, skipped);

        let mut g = gpu(&config, true);
        run(&mut g, &ops, &mut |_| {});
        let mut g_ref = gpu(&config, false);
        run(&mut g_ref, &clean, &mut |_| {});
        let mut g_rec = gpu(&config, true);
        let refused = run_recorded(&mut g_rec, &ops);
        let gpu_ckpt = g.checkpoint().unwrap();
        assert_eq!(
            snap(&gpu_ckpt),
            snap(&g_ref.checkpoint().unwrap()),
            "{rule}: the GPU's skipping run, step by step"
        );
        assert_eq!(
            snap(&g_rec.checkpoint().unwrap()),
            snap(&gpu_ckpt),
            "{rule}: the GPU's skipping run, recorded"
        );
        assert_eq!(g.skipped_steps().unwrap() as usize, skipped);
        assert_eq!(g_rec.skipped_steps().unwrap() as usize, skipped);
        // The recorded run met windows whose steps advance the state
        // differently: β1 (NAdam) or the lr (ASGD) changed among steps
        // recorded and not yet submitted.
        assert!(refused >= 3, "{rule}: {refused} refused");

        // Against the CPU: the scalar state exactly, the rest within the
        // bound.
        assert_eq!(gpu_ckpt.scalar_state, cpu_ckpt.scalar_state, "{rule}");
        assert_eq!(g.scalar_state().unwrap(), c.scalar_state(), "{rule}");
        assert_eq!(gpu_ckpt.step, cpu_ckpt.step);
        let (k_param, k_state) = cases::info(rule).gpu_k;
        let steps = clean
            .iter()
            .filter(|o| matches!(o, Op::Step { .. }))
            .count() as f64;
        let bound = |k: f64, e: &Envelope, i: usize| steps * k * f32::EPSILON as f64 * e.scale(i);
        let check = |what: &str, a: &[f32], b: &[f32], k: f64, e: &Envelope| {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                let d = (*x as f64 - *y as f64).abs();
                assert!(
                    d <= bound(k, e, i),
                    "{rule} {what}[{i}]: gpu {x} cpu {y}, {d:e} > {:e}",
                    bound(k, e, i)
                );
            }
        };
        check(
            "param",
            gpu_ckpt.params.as_ref().unwrap(),
            cpu_ckpt.params.as_ref().unwrap(),
            k_param,
            &envelope,
        );
        for (((name, a), (_, b)), e) in gpu_ckpt
            .state
            .iter()
            .zip(&cpu_ckpt.state)
            .zip(&state_envelopes)
        {
            check(name, a, b, k_state, e);
        }
        println!(
            "{rule}: {skipped} of {} steps skipped; the recorded run waited for outcomes {refused} times",
            ops.iter().filter(|o| matches!(o, Op::Step { .. })).count()
        );
    }
}

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/checkpoint");

fn read_f32(st: &SafeTensors<'_>, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|_| panic!("{name}"));
    assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn ulps(a: f32, b: f32) -> u32 {
    (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
}

/// `torch_nadam.safetensors` and `torch_asgd.safetensors` are torch's
/// `state_dict()` after 5 steps, `betas[0]` (NAdam) or the lr (ASGD)
/// changed before the third, with only torch's information (no wgpu_optim
/// metadata). They load with their scalar state, bit for bit, and our
/// file of the same state has torch's tensors (names, dtypes, 0-dimensional
/// scalars); with the hyperparameters changed again, the next step on the
/// CPU and on the GPU (skipping a non-finite step first) matches torch's:
/// the scalar state bit for bit, the rest to a few float32 roundings
/// (torch's vectorized kernels fuse some multiply-adds).
#[test]
fn files_torch_wrote_load_and_continue_as_torch_does() {
    let expected = [
        (
            RuleKind::NAdam,
            vec!["mu_product"],
            vec!["exp_avg", "exp_avg_sq"],
        ),
        (RuleKind::Asgd, vec!["eta", "mu"], vec!["ax"]),
    ];
    let mut worst = 0;
    for (rule, scalars, tensors) in expected {
        let bytes =
            std::fs::read(Path::new(DATA).join(format!("torch_{rule}.safetensors"))).unwrap();
        let torch = SafeTensors::deserialize(&bytes).unwrap();
        let ckpt = Checkpoint::from_bytes(&bytes).unwrap();
        assert_eq!((ckpt.config.kind(), ckpt.step), (rule, 5));
        assert_eq!(ckpt.config.scalar_state_names(), scalars);
        for (name, v) in &ckpt.scalar_state {
            assert_eq!(
                *v,
                read_f32(&torch, &format!("state.1.{name}"))[0] as f64,
                "{name}"
            );
        }

        // Our file of this state: torch's tensors (ours flat: [12] for [3, 4]).
        let ours_bytes = ckpt.to_bytes().unwrap();
        let ours = SafeTensors::deserialize(&ours_bytes).unwrap();
        let mut names: Vec<&str> = ours.names();
        let mut torch_names: Vec<&str> = torch.names();
        names.sort_unstable();
        torch_names.sort_unstable();
        assert_eq!(names, torch_names, "{rule}");
        for name in names {
            let (a, b) = (ours.tensor(name).unwrap(), torch.tensor(name).unwrap());
            assert_eq!(a.dtype(), b.dtype(), "{name}");
            assert_eq!(a.data().len(), b.data().len(), "{name}");
            if b.shape().is_empty() {
                assert_eq!(a.shape(), b.shape(), "{name}");
                assert_eq!(a.data(), b.data(), "{name}: torch's number");
            }
        }

        let next_bytes =
            std::fs::read(Path::new(DATA).join(format!("torch_{rule}_next.safetensors"))).unwrap();
        let next = SafeTensors::deserialize(&next_bytes).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&next_bytes).unwrap();
        let set: serde_json::Value =
            serde_json::from_str(&meta.metadata().as_ref().unwrap()["set"]).unwrap();
        let g: Vec<Vec<f32>> = (0..2)
            .map(|i| read_f32(&next, &format!("grads.{i}")))
            .collect();
        let g: Vec<&[f32]> = g.iter().map(Vec::as_slice).collect();
        let bad: Vec<Vec<f32>> = g.iter().map(|t| vec![f32::NAN; t.len()]).collect();
        let bad: Vec<&[f32]> = bad.iter().map(Vec::as_slice).collect();
        let mut cpu = CpuOptimizer::from_checkpoint(&ckpt).unwrap();
        let mut gpu = GpuOptimizer::from_checkpoint(ctx(), &ckpt, GpuOptions::default()).unwrap();
        gpu.set_skip_nonfinite(true).unwrap();
        for opt in [&mut cpu as &mut dyn Optimizer, &mut gpu] {
            opt.set_lr(set["lr"].as_f64().unwrap()).unwrap();
            if let Some(m) = set.get("momentum") {
                opt.set_momentum(m.as_f64().unwrap()).unwrap();
            }
        }
        gpu.step(&bad).unwrap();
        cpu.step(&g).unwrap();
        gpu.step(&g).unwrap();
        for (backend, got) in [
            ("cpu", cpu.checkpoint()),
            ("gpu", gpu.checkpoint().unwrap()),
        ] {
            assert_eq!(got.step, 6, "{backend}");
            for (name, v) in &got.scalar_state {
                let t = read_f32(&next, &format!("state.0.{name}"))[0];
                assert_eq!(*v, t as f64, "{rule} {backend} {name}: ours {v}, torch {t}");
            }
            let layout = wgpu_optim::Layout::new(&got.lengths).unwrap();
            for i in 0..2 {
                let mut pairs = vec![(
                    "params",
                    layout.split(got.params.as_ref().unwrap()).unwrap()[i].to_vec(),
                    read_f32(&next, &format!("params.{i}")),
                )];
                for n in &tensors {
                    pairs.push((
                        n,
                        layout.split(got.state_flat(n).unwrap()).unwrap()[i].to_vec(),
                        read_f32(&next, &format!("state.{i}.{n}")),
                    ));
                }
                for (what, a, b) in pairs {
                    assert_eq!(a.len(), b.len());
                    for (x, y) in a.iter().zip(&b) {
                        let u = ulps(*x, *y);
                        worst = worst.max(u);
                        assert!(
                            u <= 4,
                            "{rule} {backend} tensor {i} {what}: {x} vs torch {y} ({u} ulps)"
                        );
                    }
                }
            }
        }
    }
    println!("torch's NAdam and ASGD files: the next step matches torch's to {worst} ulp(s)");
}
