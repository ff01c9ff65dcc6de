//! Every state the public API lets an optimizer reach saves, restores and
//! continues bit for bit.
//!
//! A table of setter sequences (`set_lr`, `set_momentum`,
//! `set_clip_grad_norm`, `set_skip_nonfinite`, `set_grad_scale`, steps with
//! non-finite gradients, a [`Scheduler`] cycling the momentum to 0 and
//! back, `load_checkpoint` followed by more setters) is run on every rule
//! and option set ([`RuleKind::ALL`], each with its options that change the
//! state tensors). Each row takes some steps, applies its sequence, takes a
//! checkpoint, saves it to a file and loads it ([`Checkpoint::load`]),
//! restores it into fresh optimizers (`from_checkpoint`, and
//! `load_checkpoint` into one built from other parameters), continues with
//! more setters and steps, and compares everything (parameters, every state
//! tensor, the scalar state, step and skip counts, SGD's buffer flag,
//! clipping, loss scale, scheduler) bit for bit with the run that was never interrupted: on the
//! CPU, on the GPU, and from one to the other within the GPU-against-CPU
//! tolerance argued at [`cross_device_bound`].
//!
//! The GPU tests need an adapter (lavapipe will do): without one they fail
//! with the text of [`wgpu_optim::Error::NoAdapter`].

mod common;

use common::{cases, ctx, Envelope, Rng};
use wgpu_optim::{
    Adam, Checkpoint, ClipGradNorm, Config, CpuOptimizer, CyclicLr, Error, GpuOptimizer,
    GpuOptions, Optimizer, Result, RmsProp, RuleKind, Schedule, Scheduler, Sgd,
};

/// Tensors of the optimizers: an empty one, a single element, lengths that
/// are not multiples of 4 (the GPU's vec4 tail).
const LENGTHS: &[usize] = &[7, 1, 0, 13];
/// Steps before a row's sequence.
const WARMUP: usize = 2;

// ------------------------------------------------------------ the table

/// One call of the public API, or steps.
#[derive(Clone, Debug)]
enum Op {
    /// Steps with fresh finite gradients.
    Steps(usize),
    /// One step whose gradients hold a NaN and an infinity (only in
    /// sequences that skip such steps).
    NonfiniteStep,
    Lr(f64),
    /// `set_momentum`: refused with [`Error::NoMomentum`] (and nothing
    /// changed) by an optimizer without a momentum buffer.
    Momentum(f64),
    Clip(Option<ClipGradNorm>),
    SkipNonfinite(bool),
    GradScale(f64),
    /// From here on a scheduler built for the config in force sets the lr
    /// (and momentum) before every step and advances after it.
    Schedule(Schedule),
    /// A checkpoint, through a file, loaded back into the same optimizer.
    Reload,
}

/// A setter sequence: `before` (most start with [`WARMUP`] steps), then
/// the checkpoint, then `after` on the uninterrupted and the restored runs.
struct Sequence {
    name: &'static str,
    before: Vec<Op>,
    after: Vec<Op>,
    /// Only for rules with a momentum (`set_momentum` accepted).
    needs_momentum: bool,
}

fn clip(max_norm: f64, error_if_nonfinite: bool) -> Op {
    Op::Clip(Some(ClipGradNorm {
        max_norm,
        error_if_nonfinite,
    }))
}

/// `CyclicLR` whose momentum goes 0.9 → 0 → 0.9 every 4 steps (torch's
/// `base_momentum` = 0 is allowed), the lr 0.01 → 0.04 and back.
fn momentum_cycle() -> Schedule {
    Schedule::Cyclic(CyclicLr {
        step_size_up: 2,
        base_momentum: 0.0,
        max_momentum: 0.9,
        ..CyclicLr::new(0.01, 0.04)
    })
}

/// Warmup then cosine: the lr alone.
fn lr_schedule() -> Schedule {
    Schedule::warmup_cosine(0.1, 3, 10, 0.0)
}

fn sequences() -> Vec<Sequence> {
    use Op::*;
    let cold = |name, before: Vec<Op>, after: Vec<Op>| Sequence {
        name,
        before,
        after,
        needs_momentum: false,
    };
    let seq = |name, before: Vec<Op>, after: Vec<Op>| {
        cold(name, [vec![Steps(WARMUP)], before].concat(), after)
    };
    vec![
        // Before any step: SGD's buffer not filled yet, then filled by the
        // first step with momentum (torch fills it with the gradient).
        cold(
            "setters on a fresh optimizer",
            vec![Momentum(0.0), Lr(0.02)],
            vec![Steps(1), Momentum(0.9), Steps(2)],
        ),
        cold(
            "momentum 0 from the first step",
            vec![Momentum(0.0), Steps(2), SkipNonfinite(true), Steps(1)],
            vec![Momentum(0.9), Steps(1), NonfiniteStep, Steps(2)],
        ),
        seq("steps only", vec![Steps(2)], vec![Steps(3)]),
        seq(
            "lr changed, to 0 and back",
            vec![Steps(1), Lr(0.05), Steps(1), Lr(0.0), Steps(1)],
            vec![Steps(1), Lr(0.02), Steps(2)],
        ),
        // Issue 11, item 3: momentum 0 with the buffer still there.
        seq(
            "momentum to 0, checkpoint, back",
            vec![Steps(1), Momentum(0.0), Steps(2)],
            vec![Steps(1), Momentum(0.9), Steps(2)],
        ),
        seq(
            "momentum to 0 right before the checkpoint",
            vec![Steps(1), Momentum(0.0)],
            vec![Steps(2), Momentum(0.5), Steps(1)],
        ),
        seq(
            "momentum changed, not to 0",
            vec![Momentum(0.5), Steps(1)],
            vec![Momentum(0.0), Steps(1), Momentum(0.8), Steps(1)],
        ),
        seq(
            "clipping on, off after the checkpoint",
            vec![clip(0.05, false), Steps(2)],
            vec![Steps(1), Clip(None), Steps(2)],
        ),
        seq(
            "clipping off before the checkpoint",
            vec![clip(0.05, false), Steps(1), Clip(None), Steps(1)],
            vec![clip(0.2, false), Steps(2)],
        ),
        seq(
            "clipping with error_if_nonfinite",
            vec![clip(0.5, true), Steps(2)],
            vec![Steps(2)],
        ),
        seq(
            "non-finite steps skipped, before and after",
            vec![
                SkipNonfinite(true),
                Steps(1),
                NonfiniteStep,
                Steps(1),
                NonfiniteStep,
            ],
            vec![NonfiniteStep, Steps(2), SkipNonfinite(false), Steps(1)],
        ),
        seq(
            "skipping turned off before the checkpoint",
            vec![SkipNonfinite(true), NonfiniteStep, SkipNonfinite(false)],
            vec![Steps(2), SkipNonfinite(true), NonfiniteStep, Steps(1)],
        ),
        seq(
            "loss scale",
            vec![GradScale(1024.0), Steps(2)],
            vec![
                Steps(1),
                GradScale(1.0),
                Steps(1),
                GradScale(0.125),
                Steps(1),
            ],
        ),
        seq(
            "everything at once",
            vec![
                Lr(0.02),
                Momentum(0.0),
                clip(0.1, false),
                SkipNonfinite(true),
                GradScale(64.0),
                Steps(1),
                NonfiniteStep,
                Steps(1),
            ],
            vec![Momentum(0.9), Steps(2), Clip(None), Lr(0.01), Steps(2)],
        ),
        seq(
            "load_checkpoint, then setters",
            vec![
                Steps(1),
                Reload,
                Momentum(0.0),
                Lr(0.03),
                Steps(1),
                Reload,
                clip(0.1, false),
                Steps(1),
            ],
            vec![Reload, Momentum(0.9), Steps(2)],
        ),
        seq(
            "an lr schedule",
            vec![Schedule(lr_schedule()), Steps(2)],
            vec![Steps(3)],
        ),
        Sequence {
            name: "a schedule cycling the momentum to 0 and back",
            before: vec![Steps(WARMUP), Schedule(momentum_cycle()), Steps(2)],
            after: vec![Steps(5)],
            needs_momentum: true,
        },
        Sequence {
            name: "checkpoint where the cycled momentum is 0",
            before: vec![Steps(WARMUP), Schedule(momentum_cycle()), Steps(3)],
            after: vec![Steps(3)],
            needs_momentum: true,
        },
    ]
}

/// Every rule with each set of state tensors it can have (the table's
/// [`cases::variants`]): a rule added to tests/common/cases.rs gets its
/// rows here, and [`every_rule_has_rows`] checks each has some.
fn configs_of(kind: RuleKind) -> Vec<(String, Config)> {
    cases::variants(kind)
        .into_iter()
        .map(|i| (i.desc, i.config))
        .collect()
}

/// Whether `set_momentum` is accepted by an optimizer with `config` in
/// force and the state tensors `names`: a rule with `betas`, or SGD and
/// RMSprop with a momentum buffer (whatever the momentum in force), as the
/// table's [`cases::Momentum`] says.
fn accepts_momentum(config: &Config, names: &[&str]) -> bool {
    match cases::info(config.kind()).momentum {
        None => false,
        Some(m) if m.needs_buffer => names.contains(&"momentum_buffer"),
        Some(_) => true,
    }
}

/// [`accepts_momentum`] of an optimizer built with `config`.
fn has_momentum(config: &Config) -> bool {
    accepts_momentum(config, &config.state_names())
}

struct Row {
    name: String,
    config: Config,
    before: Vec<Op>,
    after: Vec<Op>,
}

fn rows() -> Vec<Row> {
    let mut rows = Vec::new();
    for kind in cases::table_rules() {
        for (name, config) in configs_of(kind) {
            for s in sequences() {
                if s.needs_momentum && !has_momentum(&config) {
                    continue;
                }
                rows.push(Row {
                    name: format!("{name} / {}", s.name),
                    config: config.clone(),
                    before: s.before,
                    after: s.after,
                });
            }
        }
    }
    rows
}

// ------------------------------------------------------ both backends

/// How a backend is built and rebuilt from a checkpoint; the sequences
/// call the rest through [`Optimizer`].
trait Backend: Optimizer + Sized {
    fn build(config: &Config, params: &[&[f32]]) -> Self;
    fn restore(c: &Checkpoint) -> Result<Self>;
}

impl Backend for CpuOptimizer {
    fn build(config: &Config, params: &[&[f32]]) -> Self {
        CpuOptimizer::new(config.clone(), params).unwrap()
    }
    fn restore(c: &Checkpoint) -> Result<Self> {
        CpuOptimizer::from_checkpoint(c)
    }
}

impl Backend for GpuOptimizer {
    fn build(config: &Config, params: &[&[f32]]) -> Self {
        GpuOptimizer::new(ctx(), config.clone(), params).unwrap()
    }
    fn restore(c: &Checkpoint) -> Result<Self> {
        GpuOptimizer::from_checkpoint(ctx(), c, GpuOptions::default())
    }
}

/// The gradients of step number `t` of a run (the same for every run of a
/// row, whatever it was restored from); with `nonfinite` a NaN and an
/// infinity among them. Magnitudes differ per tensor so that eps matters.
fn grads(t: u64, nonfinite: bool) -> Vec<Vec<f32>> {
    let mut rng = Rng(0x5E77_E125 + t);
    let scales = [1.0f32, 0.01, 1.0, 3.0];
    let mut g: Vec<Vec<f32>> = LENGTHS
        .iter()
        .zip(scales)
        .map(|(&n, s)| rng.vec_scaled(n, s))
        .collect();
    if nonfinite {
        g[0][3] = f32::NAN;
        g[3][0] = f32::INFINITY;
    }
    g
}

fn initial_params(seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng(seed);
    LENGTHS.iter().map(|&n| rng.vec_scaled(n, 2.0)).collect()
}

fn refs(v: &[Vec<f32>]) -> Vec<&[f32]> {
    v.iter().map(|t| t.as_slice()).collect()
}

/// An optimizer, the scheduler driving it (if any) and the number of the
/// next gradient.
struct Run<O> {
    opt: O,
    sched: Option<Scheduler>,
    t: u64,
}

impl<O: Backend> Run<O> {
    fn checkpoint(&self) -> Checkpoint {
        let mut c = self.opt.checkpoint().unwrap();
        c.set_scheduler(self.sched.as_ref());
        c
    }

    /// A run restored from `ckpt` (through a file), by `from_checkpoint`.
    fn restored(ckpt: &Checkpoint, t: u64) -> Self {
        Run {
            opt: O::restore(ckpt).unwrap(),
            sched: ckpt.scheduler().unwrap(),
            t,
        }
    }

    /// A run built from other parameters, then `load_checkpoint`.
    fn loaded(config: &Config, ckpt: &Checkpoint, t: u64) -> Self {
        let mut opt = O::build(config, &refs(&initial_params(99)));
        opt.load_checkpoint(ckpt).unwrap();
        Run {
            opt,
            sched: ckpt.scheduler().unwrap(),
            t,
        }
    }

    /// One step (with a scheduler: applied before, advanced after), then
    /// `after_step` on the optimizer.
    fn step(&mut self, nonfinite: bool, what: &str, after_step: &mut dyn FnMut(&O)) {
        if let Some(s) = &self.sched {
            s.apply(&mut self.opt)
                .unwrap_or_else(|e| panic!("{what}: scheduler: {e}"));
        }
        let g = grads(self.t, nonfinite);
        self.t += 1;
        self.opt
            .step(&refs(&g))
            .unwrap_or_else(|e| panic!("{what}: step {}: {e}", self.t));
        if let Some(s) = &mut self.sched {
            s.advance();
        }
        after_step(&self.opt);
    }

    fn apply(
        &mut self,
        ops: &[Op],
        what: &str,
        dir: &std::path::Path,
        after_step: &mut dyn FnMut(&O),
    ) {
        for op in ops {
            let what = format!("{what}: {op:?}");
            match op {
                Op::Steps(n) => {
                    for _ in 0..*n {
                        self.step(false, &what, after_step);
                    }
                }
                Op::NonfiniteStep => self.step(true, &what, after_step),
                Op::Lr(lr) => self.opt.set_lr(*lr).unwrap(),
                Op::Momentum(m) => {
                    let before = self.opt.checkpoint().unwrap();
                    let accepts = accepts_momentum(self.opt.config(), self.opt.state_names());
                    match (self.opt.set_momentum(*m), accepts) {
                        (Ok(()), true) => {}
                        (Err(Error::NoMomentum { .. }), false) => {
                            same(&before, &self.opt.checkpoint().unwrap())
                                .unwrap_or_else(|d| panic!("{what}: a refused call changed {d}"))
                        }
                        (r, _) => panic!("{what}: {r:?}"),
                    }
                }
                Op::Clip(c) => self.opt.set_clip_grad_norm(*c).unwrap(),
                Op::SkipNonfinite(on) => self.opt.set_skip_nonfinite(*on).unwrap(),
                Op::GradScale(s) => self.opt.set_grad_scale(*s).unwrap(),
                Op::Schedule(s) => {
                    self.sched = Some(Scheduler::for_config(s.clone(), self.opt.config()).unwrap())
                }
                Op::Reload => {
                    let c = through_file(&self.checkpoint(), dir, "reload");
                    self.opt
                        .load_checkpoint(&c)
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    self.sched = c.scheduler().unwrap();
                }
            }
        }
    }
}

/// `ckpt` saved to a file in `dir` and loaded back; checked equal.
fn through_file(ckpt: &Checkpoint, dir: &std::path::Path, name: &str) -> Checkpoint {
    let path = dir.join(format!("{name}.safetensors"));
    ckpt.save(&path)
        .unwrap_or_else(|e| panic!("saving a state the API reached: {e}"));
    let back = Checkpoint::load(&path).unwrap();
    same(ckpt, &back).unwrap_or_else(|d| panic!("save then load changed {d}"));
    back
}

/// Bit-for-bit equality of two checkpoints, or what differs.
fn same(a: &Checkpoint, b: &Checkpoint) -> std::result::Result<(), String> {
    // Debug prints every f64 and f32 so that it reads back exactly, and
    // tells -0.0 from 0.0.
    let fields = |c: &Checkpoint| {
        format!(
            "config {:?} lengths {:?} step {} buffer_filled {} clip {:?} skip_nonfinite {} \
             skipped {} grad_scale {:?} scheduler {:?} state {:?} scalar state {:?}",
            c.config,
            c.lengths,
            c.step,
            c.buffer_filled,
            c.clip,
            c.skip_nonfinite,
            c.skipped_steps,
            c.grad_scale,
            c.scheduler,
            c.state.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            c.scalar_state
        )
    };
    if fields(a) != fields(b) {
        return Err(format!("the fields: {} vs {}", fields(a), fields(b)));
    }
    let tensors = |c: &Checkpoint| {
        let mut v: Vec<(String, Option<Vec<f32>>)> = vec![("params".into(), c.params.clone())];
        v.extend(c.state.iter().map(|(n, x)| (n.clone(), Some(x.clone()))));
        v
    };
    for ((name, x), (_, y)) in tensors(a).into_iter().zip(tensors(b)) {
        match (x, y) {
            (Some(x), Some(y)) => {
                if let Some(i) = (0..x.len()).find(|&i| x[i].to_bits() != y[i].to_bits()) {
                    return Err(format!("{name}[{i}]: {:e} vs {:e}", x[i], y[i]));
                }
            }
            (None, None) => {}
            _ => return Err(format!("{name}: present in one only")),
        }
    }
    Ok(())
}

fn temp_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "wgpu-optim-setter-sequences-{}-{what}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs every row on backend `O`: the uninterrupted run against one
/// restored by `from_checkpoint` and one by `load_checkpoint`, bit for bit.
fn bit_for_bit<O: Backend>(backend: &str) {
    let dir = temp_dir(backend);
    let rows = rows();
    for row in &rows {
        let what = format!("{backend}: {}", row.name);
        let mut a = Run {
            opt: O::build(&row.config, &refs(&initial_params(7))),
            sched: None,
            t: 0,
        };
        let none = &mut |_: &O| {};
        a.apply(&row.before, &what, &dir, none);
        let taken = a.checkpoint();
        let ckpt = through_file(&taken, &dir, "row");
        let mut restored = Run::<O>::restored(&ckpt, a.t);
        let mut loaded = Run::<O>::loaded(&row.config, &ckpt, a.t);
        for (how, r) in [("from_checkpoint", &restored), ("load_checkpoint", &loaded)] {
            same(&taken, &r.checkpoint())
                .unwrap_or_else(|d| panic!("{what}: {how} restored a different state: {d}"));
        }
        a.apply(&row.after, &what, &dir, none);
        restored.apply(&row.after, &what, &dir, none);
        loaded.apply(&row.after, &what, &dir, none);
        let end = a.checkpoint();
        for (how, r) in [("from_checkpoint", &restored), ("load_checkpoint", &loaded)] {
            same(&end, &r.checkpoint()).unwrap_or_else(|d| {
                panic!("{what}: restored by {how}, the run went on differently: {d}")
            });
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{backend}: {} rows saved, restored twice and continued bit for bit",
        rows.len()
    );
}

#[test]
fn every_rule_has_rows() {
    let rows = rows();
    let sequences = sequences();
    for kind in cases::table_rules() {
        let configs = configs_of(kind);
        assert!(
            !configs.is_empty(),
            "{kind}: no configurations in the table"
        );
        for (name, config) in &configs {
            assert_eq!(config.kind(), kind, "{name}");
            // Every sequence, but those that need a momentum where there
            // is none.
            let want = sequences
                .iter()
                .filter(|s| !s.needs_momentum || has_momentum(config))
                .count();
            let got = rows
                .iter()
                .filter(|r| r.name.starts_with(&format!("{name} / ")))
                .count();
            assert_eq!(got, want, "{name}: rows");
            assert!(want >= sequences.len() - 2, "{name}");
        }
    }
    // The case is in the table: momentum set to 0 on every rule
    // built with a momentum buffer, SGD and RMSprop alike.
    for kind in [RuleKind::Sgd, RuleKind::RmsProp] {
        assert!(configs_of(kind)
            .iter()
            .any(|(_, c)| c.state_names().contains(&"momentum_buffer")));
    }
}

#[test]
fn cpu_setter_sequences_restore_bit_for_bit() {
    bit_for_bit::<CpuOptimizer>("cpu");
}

#[test]
fn gpu_setter_sequences_restore_bit_for_bit() {
    bit_for_bit::<GpuOptimizer>("gpu");
}

// --------------------------------------------------- across the devices

/// The bound of `|gpu − cpu|` after a run restored on the other device.
///
/// Both runs start from the same checkpoint, bit for bit: the same
/// parameters, state, counters and scalars. From there each continuation
/// step is the GPU-against-CPU comparison of tests/gpu_vs_cpu.rs and
/// tests/lamb_clip.rs, whose argument needs nothing but equal starting
/// values and gradients that do not depend on the parameters (true here):
/// per element `|gpu − cpu| ≤ steps · K · ε · scale`, `scale` the largest
/// magnitude of the CPU's values over the continuation or the distance
/// they travelled, with `K = 8` for the element-wise rules, `14` for LAMB
/// (`+ 44.5` for its parameters: the trust ratio's f32 sums), and `+ 38`
/// when a clipped step is among them (the norm's f32 sum). The loss scale
/// adds nothing: `g · (1/scale)` is one correctly rounded product on both,
/// from the same f32 factor; skipped steps change nothing on either; the
/// schedule's lr and momentum are the same f64 values on both.
fn cross_device_bound(config: &Config, param: bool, clipped: bool) -> f64 {
    let (k_param, k_state) = cases::info(config.kind()).gpu_k;
    let k = if param { k_param } else { k_state };
    if clipped {
        k + 38.0
    } else {
        k
    }
}

/// Runs every row on `Src`, restores its checkpoint on `Dst` and continues
/// both; compares them within [`cross_device_bound`]. `src_is_cpu` says
/// which side is the CPU, whose values give the tolerance's scale.
fn across<Src: Backend, Dst: Backend>(from: &str, to: &str, src_is_cpu: bool) {
    let dir = temp_dir(&format!("{from}-{to}"));
    let eps = f32::EPSILON as f64;
    let mut worst = 0.0f64;
    let rows = rows();
    for row in &rows {
        let what = format!("{from} -> {to}: {}", row.name);
        let mut src = Run {
            opt: Src::build(&row.config, &refs(&initial_params(7))),
            sched: None,
            t: 0,
        };
        let none = &mut |_: &Src| {};
        src.apply(&row.before, &what, &dir, none);
        let ckpt = through_file(&src.checkpoint(), &dir, "row");
        let mut dst = Run::<Dst>::restored(&ckpt, src.t);
        same(&ckpt, &dst.checkpoint())
            .unwrap_or_else(|d| panic!("{what}: restored a different state: {d}"));
        // Each step's state on both sides, and whether it was clipped.
        let mut src_after = Vec::new();
        src.apply(&row.after, &what, &dir, &mut |o: &Src| {
            src_after.push((o.checkpoint().unwrap(), o.clip_grad_norm().is_some()))
        });
        let mut dst_after = Vec::new();
        dst.apply(&row.after, &what, &dir, &mut |o: &Dst| {
            dst_after.push(o.checkpoint().unwrap())
        });
        assert_eq!(src_after.len(), dst_after.len(), "{what}");
        let tensors = |c: &Checkpoint| -> Vec<Vec<f32>> {
            std::iter::once(c.params.clone().unwrap())
                .chain(c.state.iter().map(|(_, v)| v.clone()))
                .collect()
        };
        let mut envelopes: Vec<Envelope> =
            tensors(&ckpt).iter().map(|v| Envelope::new(v)).collect();
        let steps = src_after.len();
        let clipped = src_after.iter().any(|(_, c)| *c);
        let mut last = None;
        for ((s, _), d) in src_after.into_iter().zip(dst_after) {
            let (cpu, gpu) = if src_is_cpu { (s, d) } else { (d, s) };
            for (e, v) in envelopes.iter_mut().zip(tensors(&cpu)) {
                e.update(&v);
            }
            last = Some((cpu, gpu));
        }
        let Some((cpu, gpu)) = last else {
            panic!("{what}: no steps after the checkpoint");
        };
        // Everything but the floats is exact across the devices too.
        assert_eq!(
            (
                cpu.step,
                cpu.buffer_filled,
                cpu.skipped_steps,
                cpu.skip_nonfinite
            ),
            (
                gpu.step,
                gpu.buffer_filled,
                gpu.skipped_steps,
                gpu.skip_nonfinite
            ),
            "{what}: counters"
        );
        assert_eq!(
            (&cpu.config, cpu.clip, cpu.grad_scale, &cpu.scheduler),
            (&gpu.config, gpu.clip, gpu.grad_scale, &gpu.scheduler),
            "{what}"
        );
        let names: Vec<&str> = std::iter::once("params")
            .chain(ckpt.state.iter().map(|(n, _)| n.as_str()))
            .collect();
        for (k, (c, g)) in tensors(&cpu).iter().zip(tensors(&gpu)).enumerate() {
            let name = names[k];
            let bound_k = cross_device_bound(&row.config, k == 0, clipped);
            for i in 0..c.len() {
                assert!(
                    c[i].is_finite() && g[i].is_finite(),
                    "{what}: {name}[{i}] not finite: cpu {}, gpu {}",
                    c[i],
                    g[i]
                );
                let diff = (c[i] as f64 - g[i] as f64).abs();
                if diff == 0.0 {
                    continue;
                }
                let ratio = diff / (steps as f64 * eps * envelopes[k].scale(i));
                worst = worst.max(ratio);
                assert!(
                    ratio <= bound_k,
                    "{what}: {name}[{i}]: cpu {:e}, gpu {:e}: |diff| / ({steps}·ε·scale) = \
                     {ratio:.2} > K = {bound_k}",
                    c[i],
                    g[i]
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{from} -> {to}: {} rows restored and continued; largest |gpu - cpu| / (steps·ε·scale) \
         = {worst:.3}",
        rows.len()
    );
}

#[test]
fn gpu_checkpoints_continue_on_the_cpu() {
    across::<GpuOptimizer, CpuOptimizer>("gpu", "cpu", false);
}

#[test]
fn cpu_checkpoints_continue_on_the_gpu() {
    across::<CpuOptimizer, GpuOptimizer>("cpu", "gpu", true);
}

// ------------------------------------------------ the case, and torch

/// Issue 11, item 3, as reported: SGD built with momentum, momentum set to
/// 0, then `checkpoint()` / `save`; and RMSprop the same. The buffer is
/// kept, in the file too, with torch's names.
#[test]
fn momentum_set_to_zero_saves_with_its_buffer() {
    let dir = temp_dir("issue");
    let configs: [Config; 3] = [
        Sgd {
            lr: 0.1,
            momentum: 0.9,
            ..Sgd::default()
        }
        .into(),
        Sgd {
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            ..Sgd::default()
        }
        .into(),
        RmsProp {
            momentum: 0.9,
            centered: true,
            ..RmsProp::default()
        }
        .into(),
    ];
    for config in configs {
        let p = initial_params(1);
        let mut cpu = CpuOptimizer::new(config.clone(), &refs(&p)).unwrap();
        let mut gpu = GpuOptimizer::new(ctx(), config.clone(), &refs(&p)).unwrap();
        cpu.step(&refs(&grads(0, false))).unwrap();
        gpu.step(&refs(&grads(0, false))).unwrap();
        cpu.set_momentum(0.0).unwrap();
        gpu.set_momentum(0.0).unwrap();
        for (backend, ckpt) in [
            ("cpu", cpu.checkpoint()),
            ("gpu", gpu.checkpoint().unwrap()),
        ] {
            let what = format!("{backend} {config:?}");
            assert_eq!(ckpt.config.momentum(), Some(0.0), "{what}");
            assert!(ckpt.state_flat("momentum_buffer").is_some(), "{what}");
            let path = dir.join("issue.safetensors");
            ckpt.save(&path).unwrap_or_else(|e| panic!("{what}: {e}"));
            let back = Checkpoint::load(&path).unwrap();
            assert_eq!(
                back.state
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>(),
                cpu.state_names(),
                "{what}"
            );
            let restored = CpuOptimizer::from_checkpoint(&back).unwrap();
            assert_eq!(restored.state_names(), cpu.state_names(), "{what}");
            // And the restored optimizer takes its momentum back.
            CpuOptimizer::from_checkpoint(&back)
                .unwrap()
                .set_momentum(0.9)
                .unwrap();
            GpuOptimizer::from_checkpoint(ctx(), &back, GpuOptions::default())
                .unwrap()
                .set_momentum(0.9)
                .unwrap();
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// As torch's: a step with momentum 0 does not read or write the buffer
/// (torch skips it while `momentum == 0` and keeps it in its state), and
/// moves the parameters as an optimizer built without one; when the
/// momentum comes back the buffer goes on from where it was (it is not
/// filled with the gradient again).
#[test]
fn momentum_zero_steps_leave_the_buffer_alone() {
    let sgd = Sgd {
        lr: 0.1,
        momentum: 0.9,
        dampening: 0.25,
        weight_decay: 0.01,
        ..Sgd::default()
    };
    let nesterov = Sgd {
        lr: 0.1,
        momentum: 0.9,
        nesterov: true,
        ..Sgd::default()
    };
    let rmsprop = RmsProp {
        momentum: 0.5,
        centered: true,
        ..RmsProp::default()
    };
    let configs: [(Config, Config); 3] = [
        (
            sgd.clone().into(),
            Sgd {
                momentum: 0.0,
                ..sgd.clone()
            }
            .into(),
        ),
        (
            nesterov.clone().into(),
            Sgd {
                momentum: 0.0,
                nesterov: false,
                ..nesterov.clone()
            }
            .into(),
        ),
        (
            rmsprop.clone().into(),
            RmsProp {
                momentum: 0.0,
                ..rmsprop.clone()
            }
            .into(),
        ),
    ];
    for (config, without) in configs {
        let what = format!("{config:?}");
        let p = initial_params(3);
        let mut cpu = CpuOptimizer::new(config.clone(), &refs(&p)).unwrap();
        let mut gpu = GpuOptimizer::new(ctx(), config.clone(), &refs(&p)).unwrap();
        for t in 0..3 {
            cpu.step(&refs(&grads(t, false))).unwrap();
            gpu.step(&refs(&grads(t, false))).unwrap();
        }
        cpu.set_momentum(0.0).unwrap();
        gpu.set_momentum(0.0).unwrap();
        let cpu_buffer = cpu.state_flat("momentum_buffer").unwrap().to_vec();
        let gpu_buffer = gpu.read_state_flat("momentum_buffer").unwrap();
        // The twin without a buffer, at the same point.
        let mut twin = CpuOptimizer::new(without, &cpu.params()).unwrap();
        for name in twin.state_names().to_vec() {
            twin.write_state(name, &cpu.state(name).unwrap()).unwrap();
        }
        for t in 3..6 {
            cpu.step(&refs(&grads(t, false))).unwrap();
            gpu.step(&refs(&grads(t, false))).unwrap();
            twin.step(&refs(&grads(t, false))).unwrap();
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(cpu.state_flat("momentum_buffer").unwrap()),
            bits(&cpu_buffer),
            "{what}: cpu buffer"
        );
        assert_eq!(
            bits(&gpu.read_state_flat("momentum_buffer").unwrap()),
            bits(&gpu_buffer),
            "{what}: gpu buffer"
        );
        assert_eq!(bits(cpu.params_flat()), bits(twin.params_flat()), "{what}");
        for name in twin.state_names() {
            assert_eq!(
                bits(cpu.state_flat(name).unwrap()),
                bits(twin.state_flat(name).unwrap()),
                "{what}: {name}"
            );
        }
        // Momentum back: SGD's buffer goes on as `m·b + (1 − dampening)·g`
        // from the kept `b` (the gradient alone if it had been reset).
        if let Config::Sgd(c) = &config {
            cpu.set_momentum(0.9).unwrap();
            let before = cpu.checkpoint();
            let g = grads(6, false).concat();
            cpu.step(&refs(&grads(6, false))).unwrap();
            let p = before.params.as_ref().unwrap();
            let b = before.state_flat("momentum_buffer").unwrap();
            for i in 0..g.len() {
                let gi = g[i] + c.weight_decay as f32 * p[i];
                let want = b[i] * 0.9f32 + (1.0 - c.dampening) as f32 * gi;
                assert_eq!(
                    cpu.state_flat("momentum_buffer").unwrap()[i].to_bits(),
                    want.to_bits(),
                    "{what}: buffer[{i}] after momentum came back"
                );
            }
        }
    }
}

/// A file as torch writes it for `SGD(momentum=0.9)` stepped, then
/// `param_groups[0]["momentum"] = 0`: the `momentum_buffer` tensors stay,
/// no step tensor (torch's SGD keeps none), no `wgpu_optim` metadata. It
/// loads with its buffer, filled, into an optimizer built with momentum,
/// which goes on with the buffer when the momentum comes back.
#[test]
fn torch_sgd_file_with_momentum_zero_keeps_its_buffer() {
    use safetensors::tensor::{Dtype, TensorView};
    let lengths = [3usize, 2];
    let buffer: [&[f32]; 2] = [&[0.5, -1.0, 2.0], &[0.25, 0.0]];
    let bytes: Vec<Vec<u8>> = buffer
        .iter()
        .map(|b| b.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .enumerate()
        .map(|(i, b)| {
            (
                format!("state.{i}.momentum_buffer"),
                TensorView::new(Dtype::F32, vec![lengths[i]], b).unwrap(),
            )
        })
        .collect();
    let groups = serde_json::json!([{"lr": 0.1, "momentum": 0.0, "dampening": 0.0,
        "weight_decay": 0.0, "nesterov": false, "maximize": false, "foreach": null,
        "differentiable": false, "fused": null, "params": [0, 1]}]);
    let meta = [
        ("rule".to_string(), "sgd".to_string()),
        ("param_groups".to_string(), groups.to_string()),
    ]
    .into_iter()
    .collect();
    let file = safetensors::serialize(views, Some(meta)).unwrap();
    let ckpt = Checkpoint::from_bytes(&file).unwrap();
    assert_eq!(ckpt.config.momentum(), Some(0.0));
    assert!(ckpt.buffer_filled, "torch creates the buffer filled");
    assert_eq!(ckpt.step, 0);
    assert_eq!(ckpt.state_flat("momentum_buffer").unwrap(), buffer.concat());

    let sgd = Sgd {
        lr: 0.1,
        momentum: 0.9,
        ..Sgd::default()
    };
    let p: [&[f32]; 2] = [&[1.0, 2.0, 3.0], &[4.0, 5.0]];
    let mut cpu = CpuOptimizer::new(sgd.clone(), &p).unwrap();
    let mut gpu = GpuOptimizer::new(ctx(), sgd, &p).unwrap();
    cpu.load_checkpoint(&ckpt).unwrap();
    gpu.load_checkpoint(&ckpt).unwrap();
    let g: [&[f32]; 2] = [&[1.0, 1.0, 1.0], &[1.0, 1.0]];
    cpu.set_momentum(0.9).unwrap();
    gpu.set_momentum(0.9).unwrap();
    cpu.step(&g).unwrap();
    gpu.step(&g).unwrap();
    // b = 0.9·b + g from the file's b (not g: the buffer is filled), in
    // the CPU's f32 operations.
    let want: Vec<f32> = buffer.concat().iter().map(|b| b * 0.9 + 1.0).collect();
    assert_eq!(cpu.state_flat("momentum_buffer").unwrap(), want.as_slice());
    let on_gpu = gpu.read_state_flat("momentum_buffer").unwrap();
    for (a, b) in on_gpu.iter().zip(&want) {
        // One multiply-add: at most one rounding apart (an FMA).
        assert!(
            (a - b).abs() <= f32::EPSILON * b.abs().max(1.0),
            "{a} vs {b}"
        );
    }
}

/// The state set is the optimizer's: a checkpoint with another one is
/// refused with a typed error and changes nothing, and a checkpoint whose
/// momentum in force needs a buffer it does not have is invalid.
#[test]
fn another_state_set_is_refused() {
    let p = initial_params(5);
    let with = Sgd {
        lr: 0.1,
        momentum: 0.9,
        ..Sgd::default()
    };
    let mut with_buffer = CpuOptimizer::new(with.clone(), &refs(&p)).unwrap();
    let mut without = CpuOptimizer::new(
        Sgd {
            lr: 0.1,
            ..Sgd::default()
        },
        &refs(&p),
    )
    .unwrap();
    let mut gpu_without = GpuOptimizer::new(ctx(), without.config().clone(), &refs(&p)).unwrap();
    with_buffer.step(&refs(&grads(0, false))).unwrap();
    with_buffer.set_momentum(0.0).unwrap();
    let ckpt = with_buffer.checkpoint();
    let before = (without.checkpoint(), gpu_without.checkpoint().unwrap());
    for err in [
        without.load_checkpoint(&ckpt).unwrap_err(),
        gpu_without.load_checkpoint(&ckpt).unwrap_err(),
    ] {
        assert!(
            matches!(&err, Error::CheckpointMismatch { what, .. } if what == "state tensors"),
            "{err:?}"
        );
    }
    same(&before.0, &without.checkpoint()).unwrap();
    same(&before.1, &gpu_without.checkpoint().unwrap()).unwrap();

    // Momentum 0.9 in force without a buffer: no optimizer can be so.
    let mut bad = without.checkpoint();
    bad.config = with.into();
    for err in [
        bad.validate().unwrap_err(),
        bad.to_bytes().unwrap_err(),
        CpuOptimizer::from_checkpoint(&bad).unwrap_err(),
        GpuOptimizer::from_checkpoint(ctx(), &bad, GpuOptions::default()).unwrap_err(),
        with_buffer.load_checkpoint(&bad).unwrap_err(),
    ] {
        assert!(
            matches!(&err, Error::Checkpoint(m) if m.contains("momentum_buffer")),
            "{err:?}"
        );
    }
    // A momentum buffer on a rule that has none.
    let mut adam = Checkpoint::new(Adam::default(), LENGTHS).unwrap();
    adam.state
        .push(("momentum_buffer".into(), vec![0.0; LENGTHS.iter().sum()]));
    assert!(matches!(adam.validate(), Err(Error::Checkpoint(m)) if m.contains("momentum_buffer")));
}
