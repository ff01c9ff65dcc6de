//! Parameter groups: each group steps as an optimizer of its own tensors
//! and hyperparameters would (bit for bit: the CPU applies the same
//! element functions to the same values, only gathered from other places);
//! clipping and skipping are global; every misuse is a typed error that
//! changes nothing; the GPU's groups step in one dispatch per chunk and
//! match the CPU's, and their checkpoints restore exactly.

mod common;

use common::{cases, ctx, Envelope, Rng};
use wgpu_optim::checkpoint::Checkpoint;
use wgpu_optim::{
    Adam, ClipGradNorm, Config, CpuOptimizer, Error, GpuOptimizer, GpuOptions, Lamb, NAdam,
    ParamGroup, Schedule, Scheduler, Sgd, SgdScheduleFree,
};

const LENGTHS: [usize; 4] = [5, 3, 7, 1];

/// Four tensors of [`LENGTHS`].
fn tensors(rng: &mut Rng) -> Vec<Vec<f32>> {
    LENGTHS.iter().map(|&n| rng.vec(n)).collect()
}

fn refs(v: &[Vec<f32>]) -> Vec<&[f32]> {
    v.iter().map(Vec::as_slice).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Every rule and state variant: tensors 0 and 2 in group 0, 1 and 3 in
/// group 1 (of another state variant where there is one) at half the lr,
/// interleaved; after 6 steps every parameter and
/// state element equals, to the bit, that of two optimizers over each
/// group's tensors alone.
#[test]
fn each_group_steps_as_its_own_optimizer() {
    let mut checked = 0;
    for row in cases::table() {
        for input in cases::variants(row.rule) {
            let mut rng = Rng(17);
            let p = tensors(&mut rng);
            // Group 1 is of another state variant where the rule has one
            // (amsgrad, centered, a momentum): each group keeps torch's
            // state of its own.
            let variants = cases::variants(row.rule);
            let other = variants
                .iter()
                .find(|v| v.config.state_names() != input.config.state_names())
                .map_or(input.config.clone(), |v| v.config.clone());
            let groups = [
                ParamGroup::new(input.config.clone(), vec![0, 2]),
                ParamGroup::new(other.clone(), vec![1, 3]),
            ];
            let mut opt = CpuOptimizer::with_param_groups(&refs(&p), &groups)
                .unwrap_or_else(|e| panic!("{}: {e}", input.desc));
            let lr1 = other.lr() * 0.5;
            opt.set_group_lr(1, lr1).unwrap();
            let mut a = CpuOptimizer::new(input.config.clone(), &[&p[0], &p[2]]).unwrap();
            let mut b = CpuOptimizer::new(other.clone(), &[&p[1], &p[3]]).unwrap();
            b.set_lr(lr1).unwrap();
            for _ in 0..6 {
                let g = tensors(&mut rng);
                opt.step(&refs(&g)).unwrap();
                a.step(&[&g[0], &g[2]]).unwrap();
                b.step(&[&g[1], &g[3]]).unwrap();
            }
            let d = &input.desc;
            for (t, (o, i)) in [(0, (&a, 0)), (2, (&a, 1)), (1, (&b, 0)), (3, (&b, 1))] {
                assert_eq!(bits(opt.param(t)), bits(o.param(i)), "{d}: param {t}");
                for name in o.state_names() {
                    assert_eq!(
                        bits(opt.state(name).unwrap()[t]),
                        bits(o.state(name).unwrap()[i]),
                        "{d}: {name} of tensor {t}"
                    );
                }
            }
            assert_eq!(opt.group_config(1).unwrap().lr(), lr1, "{d}");
            assert_eq!(opt.group_config(0).unwrap().lr(), input.config.lr(), "{d}");
            checked += 1;
        }
    }
    assert!(checked >= 16, "only {checked} configurations ran");
}

/// Clipping and skipping cover every group: two groups of equal
/// hyperparameters step exactly as one group does, the total norm (and so
/// the clip coefficient) taken over all tensors, and a NaN in group 1's
/// gradients skips group 0's step too.
#[test]
fn clipping_and_skipping_are_global() {
    for input in cases::clipping() {
        let mut rng = Rng(5);
        let p = tensors(&mut rng);
        let groups = [
            ParamGroup::new(input.config.clone(), vec![3, 0]),
            ParamGroup::new(input.config.clone(), vec![1, 2]),
        ];
        let mut two = CpuOptimizer::with_param_groups(&refs(&p), &groups).unwrap();
        let mut one = CpuOptimizer::new(input.config.clone(), &refs(&p)).unwrap();
        for opt in [&mut two, &mut one] {
            opt.set_clip_grad_norm(input.clip).unwrap();
            opt.set_skip_nonfinite(true);
        }
        for step in 0..5 {
            let mut g: Vec<Vec<f32>> = LENGTHS.iter().map(|&n| rng.vec_scaled(n, 4.0)).collect();
            if step == 2 {
                g[1][0] = f32::NAN;
            }
            two.step(&refs(&g)).unwrap();
            one.step(&refs(&g)).unwrap();
            assert_eq!(
                two.last_grad_norm().map(f32::to_bits),
                one.last_grad_norm().map(f32::to_bits),
                "{}",
                input.desc
            );
        }
        assert_eq!(two.skipped_steps(), 1, "{}", input.desc);
        assert_eq!(two.step_count(), 4, "{}", input.desc);
        assert_eq!(
            bits(two.params_flat()),
            bits(one.params_flat()),
            "{}",
            input.desc
        );
    }
}

/// torch's form (one tensor list per group) numbers the tensors in group
/// order, and `add_param_group` appends a group that starts from step 0
/// with fresh state while the others go on.
#[test]
fn torch_form_and_add_param_group() {
    let base = Adam {
        lr: 0.01,
        weight_decay: 0.1,
        ..Adam::default()
    };
    let no_decay = Adam {
        weight_decay: 0.0,
        ..base
    };
    let (w, b, e) = (vec![1.0f32, -2.0], vec![0.5f32], vec![3.0f32; 3]);
    let mut opt = CpuOptimizer::with_groups(&[
        (Config::from(base.clone()), &[&w[..]][..]),
        (Config::from(no_decay.clone()), &[&b[..]][..]),
    ])
    .unwrap();
    assert_eq!(
        opt.groups(),
        vec![
            ParamGroup::new(base.clone(), vec![0]),
            ParamGroup::new(no_decay.clone(), vec![1])
        ]
    );
    let mut ref_w = CpuOptimizer::new(base.clone(), &[&w]).unwrap();
    let mut ref_b = CpuOptimizer::new(no_decay.clone(), &[&b]).unwrap();
    let emb = Adam {
        betas: (0.5, 0.9),
        ..no_decay
    };
    let mut ref_e = CpuOptimizer::new(emb.clone(), &[&e]).unwrap();
    let mut rng = Rng(3);
    for step in 0..6 {
        if step == 3 {
            assert_eq!(opt.add_param_group(emb.clone(), &[&e]).unwrap(), 2);
            assert_eq!(opt.groups()[2].params, vec![2]);
        }
        let g = [rng.vec(2), rng.vec(1), rng.vec(3)];
        let n = opt.layout().len();
        opt.step(&refs(&g[..n])).unwrap();
        ref_w.step(&[&g[0]]).unwrap();
        ref_b.step(&[&g[1]]).unwrap();
        if step >= 3 {
            ref_e.step(&[&g[2]]).unwrap();
        }
    }
    assert_eq!(bits(opt.param(0)), bits(ref_w.param(0)));
    assert_eq!(bits(opt.param(1)), bits(ref_b.param(0)));
    assert_eq!(bits(opt.param(2)), bits(ref_e.param(0)));
    assert_eq!(
        bits(opt.state("exp_avg_sq").unwrap()[2]),
        bits(ref_e.state("exp_avg_sq").unwrap()[0])
    );
    assert_eq!(opt.step_count(), 6);
}

/// Each group's state starts from its own configuration (Adagrad's
/// `initial_accumulator_value`), in the constructor and in `add_param_group`.
#[test]
fn state_starts_from_each_groups_configuration() {
    let a = wgpu_optim::Adagrad {
        initial_accumulator_value: 0.5,
        ..Default::default()
    };
    let b = wgpu_optim::Adagrad {
        initial_accumulator_value: 2.0,
        ..a
    };
    let mut opt = CpuOptimizer::with_param_groups(
        &[&[1.0], &[1.0]],
        &[
            ParamGroup::new(a.clone(), vec![1]),
            ParamGroup::new(b, vec![0]),
        ],
    )
    .unwrap();
    opt.add_param_group(a, &[&[1.0, 1.0]]).unwrap();
    let sum = opt.state("sum").unwrap();
    assert_eq!(sum, vec![&[2.0f32][..], &[0.5], &[0.5, 0.5]]);
}

/// A snapshot of everything a failed call must leave as it was.
fn snapshot(opt: &CpuOptimizer) -> (Vec<ParamGroup>, Vec<f32>, Vec<Vec<f32>>, Vec<usize>) {
    let state = opt
        .state_names()
        .iter()
        .map(|n| opt.state_flat(n).unwrap().to_vec())
        .collect();
    (
        opt.groups(),
        opt.params_flat().to_vec(),
        state,
        opt.layout().lengths().to_vec(),
    )
}

#[test]
fn misuse_is_a_typed_error_and_changes_nothing() {
    let sgd = Sgd {
        lr: 0.1,
        momentum: 0.9,
        ..Sgd::default()
    };
    let p: [&[f32]; 3] = [&[1.0], &[2.0, 3.0], &[4.0]];
    let build = |groups: &[ParamGroup]| CpuOptimizer::with_param_groups(&p, groups).map(|_| ());
    let g = |c: Config, t: &[usize]| ParamGroup::new(c, t.to_vec());
    let c = Config::from(sgd.clone());
    assert_eq!(
        build(&[g(c.clone(), &[0, 1]), g(c.clone(), &[1, 2])]),
        Err(Error::TensorInTwoGroups {
            tensor: 1,
            first: 0,
            second: 1
        })
    );
    assert_eq!(
        build(&[g(c.clone(), &[0, 0, 1, 2])]),
        Err(Error::TensorInTwoGroups {
            tensor: 0,
            first: 0,
            second: 0
        })
    );
    assert_eq!(
        build(&[g(c.clone(), &[0]), g(c.clone(), &[2])]),
        Err(Error::TensorInNoGroup { tensor: 1 })
    );
    assert_eq!(
        build(&[g(c.clone(), &[0, 1, 2, 3])]),
        Err(Error::NoSuchTensor {
            group: 0,
            tensor: 3,
            tensors: 3
        })
    );
    assert_eq!(
        build(&[g(c.clone(), &[0, 1]), g(Adam::default().into(), &[2])]),
        Err(Error::GroupRuleMismatch {
            group: 1,
            expected: "sgd",
            got: "adam"
        })
    );
    assert_eq!(build(&[]), Err(Error::EmptyParameterList));
    assert!(matches!(
        build(&[
            g(c.clone(), &[0, 1]),
            g(Sgd { lr: -1.0, ..sgd }.into(), &[2])
        ]),
        Err(Error::InvalidHyperparameter { name: "lr", .. })
    ));

    // On a built optimizer: nothing changes on any refusal.
    let mut opt = CpuOptimizer::with_param_groups(
        &p,
        &[
            g(c.clone(), &[0, 2]),
            g(Sgd { lr: 0.2, ..sgd }.into(), &[1]),
        ],
    )
    .unwrap();
    opt.step(&[&[1.0], &[1.0, 1.0], &[1.0]]).unwrap();
    let before = snapshot(&opt);
    assert_eq!(
        opt.set_group_lr(2, 0.1),
        Err(Error::NoSuchGroup {
            group: 2,
            groups: 2
        })
    );
    assert!(opt.group_config(2).is_err());
    assert!(opt.set_group_lr(1, f64::NAN).is_err());
    assert!(opt.set_group_momentum(0, -1.0).is_err());
    assert!(opt.set_lr(-0.5).is_err());
    assert!(opt.add_param_group(Adam::default(), &[&[1.0]]).is_err());
    assert!(opt
        .add_param_group(Sgd { lr: -1.0, ..sgd }, &[&[1.0]])
        .is_err());
    assert!(opt.set_group_config(0, Adam::default()).is_err());
    assert_eq!(snapshot(&opt), before);

    // set_lr and set_momentum reach every group.
    opt.set_lr(0.05).unwrap();
    opt.set_momentum(0.5).unwrap();
    for c in opt.groups() {
        assert_eq!(c.config.lr(), 0.05);
        assert_eq!(c.config.momentum(), Some(0.5));
    }
    // A group keeps the state it was made with.
    let amsgrad = Adam {
        amsgrad: true,
        ..Adam::default()
    };
    let mut adam = CpuOptimizer::new(Adam::default(), &[&[1.0]]).unwrap();
    assert!(matches!(
        adam.set_group_config(0, amsgrad),
        Err(Error::InvalidOptions(_))
    ));
    assert!(!adam
        .group_config(0)
        .unwrap()
        .state_names()
        .contains(&"max_exp_avg_sq"));
}

/// A checkpoint of several groups restores only into the same groups;
/// what does not take several groups yet says so: schedulers; the GPU's
/// one group answers as a group.
#[test]
fn not_yet_supported_is_refused() {
    let sgd = Sgd {
        lr: 0.1,
        ..Sgd::default()
    };
    let p: [&[f32]; 2] = [&[1.0], &[2.0]];
    let groups = [
        ParamGroup::new(sgd.clone(), vec![0]),
        ParamGroup::new(sgd.clone(), vec![1]),
    ];
    let mut opt = CpuOptimizer::with_param_groups(&p, &groups).unwrap();
    let ckpt = opt.checkpoint();
    assert_eq!(ckpt.groups, groups.to_vec());
    let back = Checkpoint::from_bytes(&ckpt.to_bytes().unwrap()).unwrap();
    assert_eq!(
        CpuOptimizer::from_checkpoint(&back).unwrap().groups(),
        groups
    );
    let single = CpuOptimizer::new(sgd.clone(), &p).unwrap().checkpoint();
    assert!(single.groups.is_empty());
    assert!(matches!(
        opt.load_checkpoint(&single),
        Err(Error::CheckpointMismatch { .. })
    ));
    let sched = Scheduler::new(Schedule::Constant, 0.1, None).unwrap();
    assert!(matches!(sched.apply(&mut opt), Err(Error::Unsupported(_))));

    let ctx = ctx();
    let two = GpuOptimizer::with_param_groups(ctx, &p, &groups, GpuOptions::default()).unwrap();
    assert_eq!(two.groups(), groups.to_vec());
    // The groups are checked first: the same errors as the CPU's.
    let bad = [
        ParamGroup::new(sgd.clone(), vec![0, 1]),
        ParamGroup::new(sgd.clone(), vec![1]),
    ];
    assert!(matches!(
        GpuOptimizer::with_param_groups(ctx, &p, &bad, GpuOptions::default()),
        Err(Error::TensorInTwoGroups { .. })
    ));
    let mut gpu = GpuOptimizer::with_groups(
        ctx,
        &[(Config::from(sgd.clone()), &p[..])],
        GpuOptions::default(),
    )
    .unwrap();
    assert_eq!(gpu.group_count(), 1);
    assert_eq!(gpu.groups(), vec![ParamGroup::new(sgd.clone(), vec![0, 1])]);
    gpu.set_group_lr(0, 0.5).unwrap();
    assert_eq!(gpu.group_config(0).unwrap().lr(), 0.5);
    assert!(matches!(
        gpu.set_group_lr(1, 0.5),
        Err(Error::NoSuchGroup { .. })
    ));
    assert!(matches!(
        gpu.add_param_group(Adam::default(), &[&[1.0]]),
        Err(Error::GroupRuleMismatch { .. })
    ));
    assert_eq!(gpu.layout().len(), 2);
    assert_eq!(gpu.add_param_group(sgd.clone(), &[&[1.0]]).unwrap(), 1);
    assert_eq!((gpu.group_count(), gpu.layout().len()), (2, 3));
}

/// The README's "Parameter groups" block, line for line (its check below;
/// rustfmt would rewrap the README's lines).
#[test]
#[rustfmt::skip]
fn readme_parameter_groups() -> Result<(), Error> {
    use wgpu_optim::{AdamW, Config, CpuOptimizer, Error, ParamGroup};
    let (w, b) = (vec![0.5f32; 6], vec![0.1f32; 2]);
    let base = AdamW { lr: 1e-3, weight_decay: 0.01, ..AdamW::default() };
    let no_decay = AdamW { weight_decay: 0.0, ..base.clone() };
    let mut opt = CpuOptimizer::with_groups(&[
        (Config::from(base.clone()), &[&w[..]][..]),
        (Config::from(no_decay), &[&b[..]][..]),
    ])?;
    opt.step(&[&[0.1; 6], &[0.2; 2]])?;
    opt.set_group_lr(1, 5e-4)?; // one group
    opt.set_lr(2e-3)?; // every group
    let emb = vec![0.0f32; 4];
    let g = opt.add_param_group(AdamW { betas: (0.5, 0.9), ..base.clone() }, &[&emb])?;
    assert_eq!((g, opt.group_count(), opt.groups()[2].params.clone()), (2, 3, vec![2]));
    // A tensor in two groups (or in none) is refused, nothing built.
    let two = [ParamGroup::new(base.clone(), vec![0, 1]), ParamGroup::new(base, vec![1])];
    assert!(matches!(
        CpuOptimizer::with_param_groups(&[&w, &b], &two),
        Err(Error::TensorInTwoGroups { tensor: 1, first: 0, second: 1 })
    ));
    Ok(())
}

/// The README's "Parameter groups" section: one schedule over every
/// group (its check below).
#[test]
#[rustfmt::skip]
fn readme_group_scheduler() -> Result<(), Error> {
    use wgpu_optim::{Config, CpuOptimizer, GroupScheduler, Sgd};
    let sgd = |lr| Config::from(Sgd { lr, momentum: 0.9, ..Sgd::default() });
    let (w, b) = (vec![1.0f32; 4], vec![0.0f32; 2]);
    let mut opt = CpuOptimizer::with_groups(&[(sgd(0.1), &[&w[..]][..]), (sgd(0.01), &[&b[..]][..])])?;
    let json = serde_json::json!({"kind": "one_cycle", "max_lr": [0.1, 0.02], "total_steps": 100});
    let mut sched = GroupScheduler::from_json(&json, &opt)?;
    for _ in 0..3 {
        sched.apply(&mut opt)?; // every group's lr (and momentum) for this step
        opt.step(&[&[0.1; 4], &[0.1; 2]])?;
        sched.advance();
    }
    assert!(opt.group_config(0)?.lr() > opt.group_config(1)?.lr());
    Ok(())
}

/// Each Rust block of the README's "Parameter groups" section is, line for
/// line (indentation aside), in this file ([`readme_parameter_groups`],
/// [`readme_group_scheduler`]).
#[test]
fn readme_blocks_are_the_tests() {
    let readme = include_str!("../README.md");
    let at = readme
        .find("\n## Parameter groups")
        .expect("README section");
    let end_of_section = readme[at + 1..].find("\n## ").expect("next section") + at + 1;
    let section = &readme[at..end_of_section];
    let this: Vec<&str> = include_str!("groups.rs").lines().map(str::trim).collect();
    let mut blocks = 0;
    for (i, part) in section.split("```rust\n").enumerate().skip(1) {
        let block = &part[..part.find("```").expect("closed")];
        let lines: Vec<&str> = block.lines().map(str::trim).collect();
        assert!(lines.len() > 5, "block {i}");
        assert!(
            this.windows(lines.len()).any(|w| w == lines.as_slice()),
            "README block {i} is not in tests/groups.rs"
        );
        blocks += 1;
    }
    assert_eq!(blocks, 2);
}

/// The golden cases of several groups: one scheduler per group, each from
/// the group's own initial lr (and its element of a list-valued `max_lr`),
/// gives the lr torch had in force in that group at every step
/// (`lr_per_step_by_group`). Bound: torch computes these in f64 with the
/// same formulas; 1e-12 relative leaves room only for a different order of
/// the same operations.
#[test]
fn golden_group_schedules_give_torchs_lr_per_group() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/golden/cases");
    let mut checked = 0;
    for path in wgpu_optim::conformance::expand_paths(&[dir]).unwrap() {
        let case = wgpu_optim::conformance::Case::load(&path).unwrap();
        if case.groups.is_empty() || case.schedule.is_none() {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta: serde_json::Value =
            serde_json::from_str(&meta.metadata().as_ref().unwrap()["case"]).unwrap();
        let by_group = meta["lr_per_step_by_group"].as_array().expect("by group");
        let schedules = case.group_schedules().unwrap();
        assert_eq!(schedules.len(), case.groups.len());
        for (g, schedule) in schedules.into_iter().enumerate() {
            let mut s = Scheduler::for_config(schedule, &case.groups[g].config).unwrap();
            let want = by_group[g].as_array().unwrap();
            assert_eq!(want.len(), case.steps);
            for (step, w) in want.iter().enumerate() {
                let w = w.as_f64().unwrap();
                assert!(
                    (s.lr() - w).abs() <= 1e-12 * w.abs(),
                    "{}: group {g} step {step}: ours {}, torch {w}",
                    case.name,
                    s.lr()
                );
                s.advance();
            }
            checked += 1;
        }
    }
    assert!(checked >= 5, "{checked} scheduled groups");
}

/// Sizes of the GPU comparisons: one tensor longer than a chunk (128
/// elements below), lengths that are not multiples of 4 (scalar loads),
/// and all multiples of 4 (`vec4` loads).
const GPU_SCALAR: [usize; 4] = [300, 5, 130, 63];
const GPU_VEC4: [usize; 4] = [256, 8, 132, 64];
const GPU_STEPS: usize = 6;

/// The GPU's parameters and every state tensor within
/// `steps·K·ε·scale` of the CPU's, element by element, as
/// tests/gpu_vs_cpu.rs argues (the rule's `K` from tests/common/cases.rs;
/// the scale from the CPU's values over the run, `envelopes`: parameters,
/// then each state in `cpu.state_names()` order).
fn assert_within_gpu_bound(
    desc: &str,
    cpu: &CpuOptimizer,
    gpu: &GpuOptimizer,
    envelopes: &[Envelope],
    steps: usize,
) {
    let (k_params, k_state) = cases::info(cpu.config().kind()).gpu_k;
    let eps = f32::EPSILON as f64;
    let mut buffers = vec![(
        "params",
        cpu.params_flat().to_vec(),
        gpu.read_params_flat().unwrap(),
    )];
    for n in cpu.state_names() {
        buffers.push((
            n,
            cpu.state_flat(n).unwrap().to_vec(),
            gpu.read_state_flat(n).unwrap(),
        ));
    }
    assert_eq!(buffers.len(), envelopes.len(), "{desc}");
    for ((name, c, g), env) in buffers.iter().zip(envelopes) {
        let k = if *name == "params" { k_params } else { k_state };
        assert_eq!(c.len(), g.len(), "{desc}: {name}");
        for i in 0..c.len() {
            let bound = steps as f64 * k * eps * env.scale(i);
            assert!(
                (c[i] as f64 - g[i] as f64).abs() <= bound,
                "{desc}: {name}[{i}]: cpu {} gpu {} (bound {bound:e})",
                c[i],
                g[i]
            );
        }
    }
}

/// One group-by-group GPU run beside the CPU's, compared as
/// tests/gpu_vs_cpu.rs argues (`|gpu − cpu| ≤ steps·K·ε·scale` per
/// element, the rule's `K` from tests/common/cases.rs): the grouped kernel
/// applies each group's scalars with the same f32 operations as the
/// one-group kernel, so the argument is unchanged. Returns the widths the
/// GPU chose.
fn compare_groups(desc: &str, groups: &[ParamGroup], lengths: &[usize], clip: bool) -> u32 {
    let mut rng = Rng(29);
    let p: Vec<Vec<f32>> = lengths.iter().map(|&n| rng.vec_scaled(n, 2.0)).collect();
    let options = GpuOptions {
        max_chunk_elements: Some(128),
        ..GpuOptions::default()
    };
    let mut cpu = CpuOptimizer::with_param_groups(&refs(&p), groups).unwrap();
    let mut gpu = GpuOptimizer::with_param_groups(ctx(), &refs(&p), groups, options)
        .unwrap_or_else(|e| panic!("{desc}: {e}"));
    let total: usize = lengths.iter().sum();
    assert_eq!(
        gpu.dispatches_per_step(),
        total.div_ceil(128),
        "{desc}: one dispatch a chunk"
    );
    assert_eq!(gpu.state_names(), cpu.state_names(), "{desc}");
    assert_eq!(gpu.groups(), cpu.groups(), "{desc}");
    if clip {
        let c = Some(ClipGradNorm::new(0.5));
        cpu.set_clip_grad_norm(c).unwrap();
        gpu.set_clip_grad_norm(c).unwrap();
    }
    let lr1 = groups[1].config.lr() * 0.5;
    let names: Vec<&'static str> = cpu.state_names().to_vec();
    let mut envelopes: Vec<Envelope> = std::iter::once(cpu.params_flat())
        .chain(names.iter().map(|n| cpu.state_flat(n).unwrap()))
        .map(Envelope::new)
        .collect();
    for step in 0..GPU_STEPS {
        if step == 2 {
            cpu.set_group_lr(1, lr1).unwrap();
            gpu.set_group_lr(1, lr1).unwrap();
        }
        let g: Vec<Vec<f32>> = lengths.iter().map(|&n| rng.vec(n)).collect();
        cpu.step(&refs(&g)).unwrap();
        gpu.step(&refs(&g))
            .unwrap_or_else(|e| panic!("{desc}: {e}"));
        envelopes[0].update(cpu.params_flat());
        for (k, n) in names.iter().enumerate() {
            envelopes[k + 1].update(cpu.state_flat(n).unwrap());
        }
    }
    assert_eq!(gpu.group_config(1).unwrap().lr(), lr1, "{desc}");
    assert_within_gpu_bound(desc, &cpu, &gpu, &envelopes, GPU_STEPS);
    gpu.vector_width()
}

/// Every element-wise rule and state variant over two interleaved groups
/// on the GPU (group 1 of another state variant where there is one, its lr
/// halved after two steps), with tensors straddling chunks, in both
/// kernel widths: as the CPU's groups, in one dispatch a chunk.
#[test]
fn gpu_groups_match_the_cpu() {
    let mut checked = 0;
    for row in cases::table() {
        if matches!(row.kernel, cases::Kernel::Tiled) {
            continue;
        }
        for input in cases::variants(row.rule) {
            let variants = cases::variants(row.rule);
            let other = variants
                .iter()
                .find(|v| v.config.state_names() != input.config.state_names())
                .map_or(input.config.clone(), |v| v.config.clone());
            let groups = [
                ParamGroup::new(input.config.clone(), vec![0, 2]),
                ParamGroup::new(other.clone(), vec![1, 3]),
            ];
            let d = &input.desc;
            assert_eq!(compare_groups(d, &groups, &GPU_SCALAR, false), 1, "{d}");
            assert_eq!(
                compare_groups(d, &groups, &GPU_VEC4, checked % 2 == 0),
                4,
                "{d}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 16, "only {checked} configurations ran");
}

/// A GPU checkpoint of several groups (NAdam: each group's `mu_product`
/// from its own `momentum_decay`) saves in torch's form, restores into the
/// CPU and the GPU and goes on bit for bit on the GPU; a CPU checkpoint of
/// the same groups loads into the GPU; one whose groups are at different
/// step counts is refused and changes nothing.
#[test]
fn gpu_group_checkpoints_restore_exactly() {
    let mut rng = Rng(3);
    let p: Vec<Vec<f32>> = GPU_SCALAR.iter().map(|&n| rng.vec(n)).collect();
    let base = NAdam {
        lr: 0.01,
        ..NAdam::default()
    };
    let groups = [
        ParamGroup::new(base.clone(), vec![0, 3]),
        ParamGroup::new(
            NAdam {
                momentum_decay: 0.002,
                weight_decay: 0.1,
                ..base.clone()
            },
            vec![1, 2],
        ),
    ];
    let grads: Vec<Vec<Vec<f32>>> = (0..5)
        .map(|_| GPU_SCALAR.iter().map(|&n| rng.vec(n)).collect())
        .collect();
    let mut gpu =
        GpuOptimizer::with_param_groups(ctx(), &refs(&p), &groups, GpuOptions::default()).unwrap();
    for g in &grads[..3] {
        gpu.step(&refs(g)).unwrap();
    }
    let ckpt = gpu.checkpoint().unwrap();
    assert_eq!(ckpt.groups, gpu.groups());
    assert_eq!(ckpt.group_state.len(), 2);
    let mu = |g: usize| ckpt.group_state[g].scalar_state[0].1;
    assert_ne!(mu(0), mu(1), "each group's mu_product is its own");
    let back = Checkpoint::from_bytes(&ckpt.to_bytes().unwrap()).unwrap();
    let cpu = CpuOptimizer::from_checkpoint(&back).unwrap();
    assert_eq!(cpu.groups(), gpu.groups());
    let mut again = GpuOptimizer::from_checkpoint(ctx(), &back, GpuOptions::default()).unwrap();
    for g in &grads[3..] {
        gpu.step(&refs(g)).unwrap();
        again.step(&refs(g)).unwrap();
    }
    assert_eq!(
        bits(&gpu.read_params_flat().unwrap()),
        bits(&again.read_params_flat().unwrap())
    );
    for n in gpu.state_names().to_vec() {
        assert_eq!(
            bits(&gpu.read_state_flat(n).unwrap()),
            bits(&again.read_state_flat(n).unwrap()),
            "{n}"
        );
    }
    // The CPU's checkpoint of the same groups, into the GPU.
    let cpu_ckpt = cpu.checkpoint();
    again.load_checkpoint(&cpu_ckpt).unwrap();
    assert_eq!(again.step_count(), 3);
    assert_eq!(
        bits(&again.read_params_flat().unwrap()),
        bits(cpu.params_flat())
    );
    // Groups at different step counts (one added later): the GPU takes
    // them, each group at its own count.
    let mut later = CpuOptimizer::with_param_groups(
        &[&p[0], &p[3], &p[1]],
        &[ParamGroup::new(base.clone(), vec![0, 1, 2])],
    )
    .unwrap();
    later
        .step(&[&grads[0][0], &grads[0][3], &grads[0][1]])
        .unwrap();
    later
        .add_param_group(groups[1].config.clone(), &[&p[2]])
        .unwrap();
    let ckpt = later.checkpoint();
    let behind = GpuOptimizer::from_checkpoint(ctx(), &ckpt, GpuOptions::default()).unwrap();
    assert_eq!(behind.checkpoint().unwrap(), ckpt);
}

/// What the GPU does not do over several groups is refused with a typed
/// error and changes nothing: LAMB, `skip_nonfinite` for a rule with
/// scalar state, the schedule-free eval mode, `add_param_group` while
/// skipping; what it
/// does (skipping for SGD, setters for one group and all) works.
#[test]
fn gpu_group_refusals() {
    let ctx = ctx();
    let p: [&[f32]; 2] = [&[1.0, 2.0], &[3.0]];
    let two = |config: Config| {
        [
            ParamGroup::new(config.clone(), vec![0]),
            ParamGroup::new(config, vec![1]),
        ]
    };
    let o = GpuOptions::default;
    assert!(matches!(
        GpuOptimizer::with_param_groups(ctx, &p, &two(Lamb::default().into()), o()),
        Err(Error::Unsupported(_))
    ));
    let mut nadam =
        GpuOptimizer::with_param_groups(ctx, &p, &two(NAdam::default().into()), o()).unwrap();
    assert!(matches!(
        nadam.set_skip_nonfinite(true),
        Err(Error::Unsupported(_))
    ));
    assert!(!nadam.skip_nonfinite());
    let mut sf =
        GpuOptimizer::with_param_groups(ctx, &p, &two(SgdScheduleFree::default().into()), o())
            .unwrap();
    assert!(matches!(sf.set_eval(true), Err(Error::Unsupported(_))));
    let mut sgd = GpuOptimizer::with_param_groups(
        ctx,
        &p,
        &two(Sgd {
            momentum: 0.9,
            ..Sgd::default()
        }
        .into()),
        o(),
    )
    .unwrap();
    sgd.set_skip_nonfinite(true).unwrap();
    assert!(matches!(
        sgd.add_param_group(Sgd::default(), &[&[1.0]]),
        Err(Error::Unsupported(_))
    ));
    assert_eq!(sgd.layout().len(), 2);
    sgd.step(&[&[f32::NAN, 1.0], &[1.0]]).unwrap();
    assert!(sgd.last_step_skipped().unwrap());
    sgd.step(&[&[1.0, 1.0], &[1.0]]).unwrap();
    assert_eq!(sgd.step_count(), 1);
    sgd.set_lr(0.5).unwrap();
    assert_eq!(sgd.group_config(1).unwrap().lr(), 0.5);
    assert!(sgd.set_group_lr(1, -1.0).is_err());
    assert_eq!(sgd.group_config(1).unwrap().lr(), 0.5);
    assert!(matches!(
        sgd.set_group_lr(2, 0.1),
        Err(Error::NoSuchGroup { .. })
    ));
    sgd.set_group_momentum(1, 0.5).unwrap();
    assert_eq!(
        sgd.group_config(0).unwrap(),
        &Config::from(Sgd {
            momentum: 0.9,
            lr: 0.5,
            ..Sgd::default()
        })
    );
}

/// `from_buffers_with_groups` steps the caller's packed buffers as
/// `with_param_groups` steps its own, bit for bit (the same kernel, the
/// same values), and checks the buffers as `from_buffers` does.
#[test]
fn gpu_groups_on_the_callers_buffers() {
    let ctx = ctx();
    let mut rng = Rng(8);
    let p: Vec<Vec<f32>> = GPU_VEC4.iter().map(|&n| rng.vec(n)).collect();
    let base = Adam {
        lr: 0.01,
        ..Adam::default()
    };
    let groups = [
        ParamGroup::new(base.clone(), vec![0, 2]),
        ParamGroup::new(
            Adam {
                amsgrad: true,
                weight_decay: 0.1,
                ..base
            },
            vec![1, 3],
        ),
    ];
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
    let buffer = |contents: &[f32], usage| {
        use wgpu::util::DeviceExt;
        ctx.device()
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(contents),
                usage,
            })
    };
    let flat = p.concat();
    let o = GpuOptions::default;
    let mut own = GpuOptimizer::with_param_groups(ctx, &refs(&p), &groups, o()).unwrap();
    let mut theirs = GpuOptimizer::from_buffers_with_groups(
        ctx,
        &GPU_VEC4,
        buffer(&flat, usage),
        buffer(&vec![0.0; flat.len()], usage),
        &groups,
        o(),
    )
    .unwrap();
    assert_eq!(theirs.groups(), own.groups());
    for _ in 0..3 {
        let g: Vec<Vec<f32>> = GPU_VEC4.iter().map(|&n| rng.vec(n)).collect();
        own.step(&refs(&g)).unwrap();
        theirs.step(&refs(&g)).unwrap();
    }
    assert_eq!(
        bits(&own.read_params_flat().unwrap()),
        bits(&theirs.read_params_flat().unwrap())
    );
    assert!(matches!(
        theirs.add_param_group(Adam::default(), &[&[1.0]]),
        Err(Error::Unsupported(_))
    ));
    let no_storage = buffer(&flat, wgpu::BufferUsages::COPY_DST);
    assert!(matches!(
        GpuOptimizer::from_buffers_with_groups(
            ctx,
            &GPU_VEC4,
            no_storage,
            buffer(&flat, usage),
            &groups,
            o()
        ),
        Err(Error::BufferUsage { .. })
    ));
}

/// `add_param_group` on the GPU as on the CPU: the new group starts at
/// step 0 (Adam's bias corrections from its own count; SGD's momentum
/// buffer filled at its own first step, torch's `dampening` not applied
/// then) while the others go on; a checkpoint of it restores on the CPU.
/// Compared as `compare_groups` argues.
#[test]
fn gpu_add_param_group_matches_the_cpu() {
    let configs: [(Config, Config); 2] = [
        (
            Adam {
                lr: 0.01,
                ..Adam::default()
            }
            .into(),
            Adam {
                lr: 0.02,
                amsgrad: true,
                ..Adam::default()
            }
            .into(),
        ),
        (
            Sgd {
                lr: 0.1,
                momentum: 0.9,
                ..Sgd::default()
            }
            .into(),
            Sgd {
                lr: 0.05,
                momentum: 0.5,
                dampening: 0.3,
                ..Sgd::default()
            }
            .into(),
        ),
    ];
    for (first, added) in configs {
        let desc = format!("{} + {}", first.kind(), added.kind());
        let mut rng = Rng(12);
        let p: Vec<Vec<f32>> = [130, 7, 64].iter().map(|&n| rng.vec(n)).collect();
        let lengths = [130, 7, 64];
        let mut cpu = CpuOptimizer::new(first.clone(), &[&p[0], &p[1]]).unwrap();
        let mut gpu = GpuOptimizer::new(ctx(), first.clone(), &[&p[0], &p[1]]).unwrap();
        // The envelopes of the final layout from the start: before the
        // group is added, its tensor holds its initial values and its state
        // zeros (its initial state for these rules).
        let names = CpuOptimizer::with_param_groups(
            &refs(&p),
            &[
                ParamGroup::new(first.clone(), vec![0, 1]),
                ParamGroup::new(added.clone(), vec![2]),
            ],
        )
        .unwrap()
        .state_names()
        .to_vec();
        let snapshot = |cpu: &CpuOptimizer| -> Vec<Vec<f32>> {
            let grown = cpu.layout().len() == 3;
            let mut out = vec![cpu.params_flat().to_vec()];
            if !grown {
                out[0].extend_from_slice(&p[2]);
            }
            for n in &names {
                let mut v = cpu
                    .state_flat(n)
                    .map(<[f32]>::to_vec)
                    .unwrap_or_else(|_| vec![0.0; lengths[0] + lengths[1]]);
                v.resize(lengths.iter().sum(), 0.0);
                out.push(v);
            }
            out
        };
        let mut envelopes: Vec<Envelope> =
            snapshot(&cpu).iter().map(|v| Envelope::new(v)).collect();
        for step in 0..6 {
            if step == 2 {
                assert_eq!(cpu.add_param_group(added.clone(), &[&p[2]]).unwrap(), 1);
                assert_eq!(gpu.add_param_group(added.clone(), &[&p[2]]).unwrap(), 1);
                assert_eq!(gpu.groups(), cpu.groups(), "{desc}");
                assert_eq!(gpu.state_names(), cpu.state_names(), "{desc}");
            }
            let n = if step < 2 { 2 } else { 3 };
            let g: Vec<Vec<f32>> = lengths[..n].iter().map(|&n| rng.vec(n)).collect();
            cpu.step(&refs(&g)).unwrap();
            gpu.step(&refs(&g)).unwrap();
            for (env, v) in envelopes.iter_mut().zip(snapshot(&cpu)) {
                env.update(&v);
            }
        }
        let ckpt = gpu.checkpoint().unwrap();
        assert_eq!(
            ckpt.group_state.iter().map(|s| s.step).collect::<Vec<_>>(),
            [6, 4],
            "{desc}"
        );
        let cpu_ckpt = cpu.checkpoint();
        assert_eq!(
            ckpt.group_state[1].buffer_filled,
            cpu_ckpt.group_state[1].buffer_filled
        );
        assert_eq!(cpu.state_names(), names.as_slice());
        // Six steps with the first group, the argument's count.
        assert_within_gpu_bound(&desc, &cpu, &gpu, &envelopes, 6);
        let back = CpuOptimizer::from_checkpoint(&ckpt).unwrap();
        assert_eq!(back.checkpoint(), ckpt, "{desc}");
    }
}
