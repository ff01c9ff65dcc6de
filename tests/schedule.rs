//! Learning-rate and momentum schedules against the sequences PyTorch
//! recorded: the golden optimizer cases (`tests/data/golden/cases`, metadata
//! `lr_per_step` / `momentum_per_step`) and the sequences of
//! `tests/data/schedules/gen_schedules.py` (`schedules.json`), every value to
//! 1e-12 relative; typed errors for every invalid parameter; save and
//! restore of a position.

use safetensors::SafeTensors;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use wgpu_optim::schedule::{
    AnnealStrategy, CyclicLr, CyclicMode, LrLambda, OneCycleLr, PlateauMode, PlateauState,
    ReduceLrOnPlateau, Schedule, Scheduler, ThresholdMode,
};
use wgpu_optim::{
    Adagrad, Adam, AdamW, Checkpoint, Config, CpuOptimizer, Error, GpuContext, GpuOptimizer, Sgd,
};

const REL: f64 = 1e-12;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// Every array of numbers that follows `"key":` in `text`, each number parsed
/// from its own digits with Rust's correctly rounded parser (serde_json's
/// default float parser may be one ulp off, which would hide whether a value
/// is bit-exact).
fn raw_arrays(text: &str, key: &str) -> Vec<Vec<f64>> {
    let pat = format!("\"{key}\":");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(&pat) {
        let after = rest[i + pat.len()..].trim_start();
        let body = after.strip_prefix('[').expect("an array follows");
        let end = body.find(']').unwrap();
        let nums = body[..end]
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| match t {
                "null" => f64::NAN, // a NaN metric (gen_schedules.py)
                _ => t.parse::<f64>().unwrap_or_else(|e| panic!("{t}: {e}")),
            })
            .collect();
        out.push(nums);
        rest = &body[end..];
    }
    out
}

/// Tallies of a comparison: values compared, bit-exact ones, worst relative error.
#[derive(Default)]
struct Tally {
    values: usize,
    exact: usize,
    worst: f64,
}

impl Tally {
    fn check(&mut self, what: &str, step: usize, ours: f64, torch: f64) {
        self.values += 1;
        if ours.to_bits() == torch.to_bits() {
            self.exact += 1;
            return;
        }
        let rel = (ours - torch).abs() / ours.abs().max(torch.abs());
        self.worst = self.worst.max(rel);
        assert!(
            rel <= REL,
            "{what}, step {step}: ours {ours:e}, torch {torch:e}, relative error {rel:e}"
        );
    }
}

/// Compares a schedule's lr and momentum sequences with torch's three ways:
/// stepping a [`Scheduler`], the pure `lr_at` / `momentum_at`, and
/// `set_position` to a few steps.
fn check_sequences(
    tally: &mut Tally,
    name: &str,
    schedule: &Schedule,
    base_lr: f64,
    base_momentum: Option<f64>,
    lrs: &[f64],
    moms: &[f64],
) {
    let mut s = Scheduler::new(schedule.clone(), base_lr, base_momentum)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    for (i, &lr) in lrs.iter().enumerate() {
        assert_eq!(s.position(), i as u64);
        tally.check(&format!("{name} lr (advance)"), i, s.lr(), lr);
        tally.check(
            &format!("{name} lr (lr_at)"),
            i,
            schedule.lr_at(base_lr, i as u64),
            lr,
        );
        if let Some(&m) = moms.get(i) {
            let ours = s
                .momentum()
                .unwrap_or_else(|| panic!("{name}: no momentum at step {i}"));
            tally.check(&format!("{name} momentum"), i, ours, m);
        }
        s.advance();
    }
    // A position set directly gives the same values as stepping to it.
    let n = lrs.len();
    for k in [0, 1, n / 3, n / 2, n.saturating_sub(1)] {
        if k < n {
            let mut t = Scheduler::new(schedule.clone(), base_lr, base_momentum).unwrap();
            t.set_position(k as u64);
            tally.check(&format!("{name} lr (set_position)"), k, t.lr(), lrs[k]);
            if let Some(&m) = moms.get(k) {
                tally.check(
                    &format!("{name} momentum (set_position)"),
                    k,
                    t.momentum().unwrap(),
                    m,
                );
            }
        }
    }
}

/// Compares a metric-driven schedule's lr and momentum sequences with
/// torch's: a [`Scheduler`] fed `metrics[s]` after step `s`, and the same
/// run saved into a checkpoint (file bytes) and restored at a few steps,
/// which must go on identically.
#[allow(clippy::too_many_arguments)]
fn check_metric_sequences(
    tally: &mut Tally,
    name: &str,
    schedule: &Schedule,
    base_lr: f64,
    base_momentum: Option<f64>,
    lrs: &[f64],
    moms: &[f64],
    metrics: &[f64],
) {
    assert!(metrics.len() + 1 >= lrs.len(), "{name}: too few metrics");
    let n = lrs.len();
    let restore_at = [1, n / 3, n / 2, n.saturating_sub(1)];
    let mut s = Scheduler::new(schedule.clone(), base_lr, base_momentum)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut restored: Vec<Scheduler> = Vec::new();
    for (i, &lr) in lrs.iter().enumerate() {
        assert_eq!(s.position(), i as u64);
        tally.check(&format!("{name} lr (advance_with_metric)"), i, s.lr(), lr);
        if let Some(&m) = moms.get(i) {
            tally.check(&format!("{name} momentum"), i, s.momentum().unwrap(), m);
        }
        for r in &restored {
            assert_eq!(r, &s, "{name}: restored run differs at step {i}");
        }
        if restore_at.contains(&i) {
            let mut ckpt = Checkpoint::new(Sgd::default(), &[2]).unwrap();
            ckpt.set_scheduler(Some(&s));
            let back = Checkpoint::from_bytes(&ckpt.to_bytes().unwrap()).unwrap();
            let r = back.scheduler().unwrap().unwrap();
            assert_eq!(r, s, "{name}: restored at {i}");
            assert_eq!(r.lr().to_bits(), s.lr().to_bits());
            restored.push(r);
        }
        if i + 1 < n {
            s.advance_with_metric(metrics[i]).unwrap();
            for r in &mut restored {
                r.advance_with_metric(metrics[i]).unwrap();
            }
        }
    }
}

/// The functions of gen_schedules.py's LAMBDAS, with the same float
/// operations (Python's `x ** e` is C `pow(x, (double)e)`, `(e + 1) / 5`
/// the correctly rounded quotient of two exact doubles).
fn generated_lambda(name: &str) -> LrLambda {
    match name {
        "pow_0.95" => LrLambda::new(|e| 0.95f64.powf(e as f64)),
        "warmup_5" => LrLambda::new(|e| if e < 5 { (e + 1) as f64 / 5.0 } else { 1.0 }),
        "inverse" => LrLambda::new(|e| 1.0 / (1.0 + 0.1 * e as f64)),
        "zero_then_one" => LrLambda::new(|e| if e < 2 { 0.0 } else { 1.0 }),
        "times_0.9_every_3" => LrLambda::new(|e| if e % 3 == 0 { 0.9 } else { 1.0 }),
        "shrinking" => LrLambda::new(|e| 1.0 - 0.01 * e as f64),
        "grow_1.05" => LrLambda::new(|_| 1.05),
        other => panic!("no lambda `{other}`"),
    }
}

fn json_has_lambda(v: &Value) -> bool {
    v.get("lr_lambda").is_some()
        || ["schedulers", "schedules"]
            .iter()
            .filter_map(|k| v.get(*k).and_then(Value::as_array))
            .flatten()
            .any(json_has_lambda)
}

/// A generated case's schedule: [`Schedule::from_json`] where JSON can
/// carry it, built here around the closures of `lambda` and
/// `multiplicative` (named by `lr_lambda`) otherwise; a `plateau`'s
/// `metrics` (which may hold null, NaN) are left to the caller.
fn generated_schedule(v: &Value) -> Schedule {
    let mut v = v.clone();
    v.as_object_mut().unwrap().remove("metrics");
    if !json_has_lambda(&v) {
        return Schedule::from_json(&v).unwrap_or_else(|e| panic!("{v}: {e}"));
    }
    let subs = |key: &str| -> Vec<Schedule> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(generated_schedule)
            .collect()
    };
    let s = match v["kind"].as_str().unwrap() {
        "lambda" => Schedule::Lambda(generated_lambda(v["lr_lambda"].as_str().unwrap())),
        "multiplicative" => {
            Schedule::Multiplicative(generated_lambda(v["lr_lambda"].as_str().unwrap()))
        }
        "chained" => Schedule::Chained {
            schedules: subs("schedulers"),
        },
        "sequential" => Schedule::Sequential {
            schedules: subs(if v.get("schedulers").is_some() {
                "schedulers"
            } else {
                "schedules"
            }),
            milestones: v["milestones"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m.as_u64().unwrap())
                .collect(),
        },
        other => panic!("`{other}` with a lambda"),
    };
    s.validate().unwrap_or_else(|e| panic!("{v}: {e}"));
    s
}

// ------------------------------------------------------------ golden cases

struct GoldenCase {
    file: String,
    case: Map<String, Value>,
    /// The raw metadata JSON (to parse the numbers exactly).
    text: String,
    bytes: Vec<u8>,
}

/// The golden cases of one parameter group: the cases with `groups` drive
/// one scheduler per group (a list-valued `max_lr` gives one value per
/// group), which the conformance runner does and tests/golden.rs checks.
fn golden_cases() -> Vec<GoldenCase> {
    golden_cases_all()
        .into_iter()
        .filter(|g| !g.case.contains_key("groups"))
        .collect()
}

fn golden_cases_all() -> Vec<GoldenCase> {
    let dir = data_dir().join("golden/cases");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "only {} golden cases", files.len());
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
            let text = meta.metadata().as_ref().unwrap()["case"].clone();
            let case = serde_json::from_str(&text).unwrap();
            GoldenCase {
                file: p.file_name().unwrap().to_string_lossy().into_owned(),
                case,
                text,
                bytes,
            }
        })
        .collect()
}

/// A hyperparameter as the golden generator gave it to torch: rounded to f32.
fn f32r(v: f64) -> f64 {
    v as f32 as f64
}

/// The optimizer's lr and momentum (or `betas[0]`) in force before any
/// scheduler, as the golden generator built it: the case's configuration
/// as the conformance runner reads it (explicit values rounded to f32,
/// defaults exact), whatever the rule.
fn golden_bases(g: &GoldenCase) -> (f64, Option<f64>) {
    let case = wgpu_optim::conformance::Case::from_bytes(&g.bytes, &g.file)
        .unwrap_or_else(|e| panic!("{}: {e}", g.file));
    let config = case
        .config
        .unwrap_or_else(|| panic!("{}: rule {}", g.file, case.rule));
    (config.lr(), config.momentum())
}

#[test]
fn golden_cases_lr_and_momentum_match_torch() {
    let mut tally = Tally::default();
    let mut scheduled = Vec::new();
    for g in golden_cases() {
        let schedule = match g.case.get("schedule") {
            Some(v) => Schedule::from_json(v).unwrap_or_else(|e| panic!("{}: {e}", g.file)),
            None => Schedule::Constant,
        };
        if g.case.contains_key("schedule") {
            scheduled.push(g.case["schedule"]["kind"].as_str().unwrap().to_string());
        }
        let (base_lr, base_momentum) = golden_bases(&g);
        let lrs = raw_arrays(&g.text, "lr_per_step").remove(0);
        let moms = raw_arrays(&g.text, "momentum_per_step")
            .into_iter()
            .next()
            .unwrap_or_default();
        assert_eq!(lrs.len() as u64, g.case["steps"].as_u64().unwrap());
        assert!(moms.is_empty() || moms.len() == lrs.len());
        if schedule.needs_metric() {
            let metrics = raw_arrays(&g.text, "metrics").remove(0);
            check_metric_sequences(
                &mut tally,
                &g.file,
                &schedule,
                base_lr,
                base_momentum,
                &lrs,
                &moms,
                &metrics,
            );
        } else {
            check_sequences(
                &mut tally,
                &g.file,
                &schedule,
                base_lr,
                base_momentum,
                &lrs,
                &moms,
            );
        }
    }
    scheduled.sort();
    scheduled.dedup();
    println!(
        "golden: {} values, {} bit-exact, worst relative error {:e}; schedule kinds {:?}",
        tally.values, tally.exact, tally.worst, scheduled
    );
    for kind in [
        "cyclic",
        "one_cycle",
        "step",
        "warmup_cosine",
        "polynomial",
        "chained",
        "cosine_warm_restarts",
        "plateau",
    ] {
        assert!(
            scheduled.iter().any(|k| k == kind),
            "no golden `{kind}` case"
        );
    }
}

/// The scheduled golden cases trained end to end: the CPU optimizer driven
/// by a [`Scheduler`] (lr and momentum applied before every step) lands on
/// torch's parameters within the case's tolerance.
#[test]
fn golden_scheduled_runs_train_to_torch_parameters() {
    let mut ran = 0;
    for g in golden_cases() {
        let Some(spec) = g.case.get("schedule") else {
            continue;
        };
        if g.case.contains_key("clip_grad_norm") {
            continue; // clipping is not the optimizer's job
        }
        let hyper = g.case["hyper"].as_object().unwrap();
        let hf = |k: &str, d: f64| hyper.get(k).map_or(d, |v| f32r(v.as_f64().unwrap()));
        let config: Config = match g.case["rule"].as_str().unwrap() {
            "sgd" => Sgd {
                lr: hf("lr", 1e-3),
                momentum: hf("momentum", 0.0),
                ..Sgd::default()
            }
            .into(),
            "adam" => Adam {
                lr: hf("lr", 1e-3),
                weight_decay: hf("weight_decay", 0.0),
                ..Adam::default()
            }
            .into(),
            "adamw" => AdamW {
                lr: hf("lr", 1e-3),
                weight_decay: hf("weight_decay", 1e-2),
                ..AdamW::default()
            }
            .into(),
            _ => continue,
        };
        let st = SafeTensors::deserialize(&g.bytes).unwrap();
        let f32s = |name: &str| -> Vec<f32> {
            let t = st.tensor(name).unwrap();
            t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect()
        };
        let f64s = |name: &str| -> Vec<f64> {
            let t = st.tensor(name).unwrap();
            t.data()
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect()
        };
        let ntensors = g.case["sizes"].as_array().unwrap().len();
        let init: Vec<Vec<f32>> = (0..ntensors).map(|t| f32s(&format!("init.{t}"))).collect();
        let refs: Vec<&[f32]> = init.iter().map(|v| v.as_slice()).collect();
        let mut opt = CpuOptimizer::new(config.clone(), &refs).unwrap();
        let mut sched = Scheduler::for_config(Schedule::from_json(spec).unwrap(), &config).unwrap();
        let metrics = raw_arrays(&g.text, "metrics").into_iter().next();
        for s in 0..g.case["steps"].as_u64().unwrap() {
            sched.apply_to_cpu(&mut opt).unwrap();
            assert_eq!(opt.config().lr(), sched.lr());
            assert_eq!(opt.config().momentum(), sched.momentum());
            let grads: Vec<Vec<f32>> = (0..ntensors)
                .map(|t| f32s(&format!("grad.{s}.{t}")))
                .collect();
            let grefs: Vec<&[f32]> = grads.iter().map(|v| v.as_slice()).collect();
            opt.step(&grefs).unwrap();
            match &metrics {
                Some(m) => sched.advance_with_metric(m[s as usize]).unwrap(),
                None => sched.advance(),
            }
        }
        let atol = g.case["atol_param"].as_f64().unwrap();
        for t in 0..ntensors {
            let expected = f64s(&format!("expected.param.{t}"));
            for (i, (&ours, &want)) in opt.param(t).iter().zip(&expected).enumerate() {
                assert!(
                    (ours as f64 - want).abs() <= atol,
                    "{}: tensor {t}[{i}]: ours {ours}, torch {want}, atol {atol:e}",
                    g.file
                );
            }
        }
        ran += 1;
    }
    assert!(ran >= 9, "only {ran} scheduled golden runs");
}

// ------------------------------------------------- generated sequences

fn generated() -> (Value, String) {
    let path = data_dir().join("schedules/schedules.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (serde_json::from_str(&text).unwrap(), text)
}

/// The number that follows `"key":` in `text`, parsed exactly.
fn raw_number(text: &str, key: &str) -> Option<f64> {
    let pat = format!("\"{key}\":");
    let i = text.find(&pat)?;
    let after = text[i + pat.len()..].trim_start();
    let end = after.find([',', '}']).unwrap();
    Some(after[..end].trim().parse().unwrap())
}

#[test]
fn generated_sequences_match_torch() {
    let (doc, text) = generated();
    let cases = doc["cases"].as_array().unwrap();
    // One chunk of the text per case (only the cases have a "name").
    let chunks: Vec<&str> = text.split("{\"name\":").skip(1).collect();
    assert_eq!(chunks.len(), cases.len());
    assert!(cases.len() >= 85, "only {} generated cases", cases.len());
    let mut tally = Tally::default();
    let mut kinds = Vec::new();
    for (case, chunk) in cases.iter().zip(&chunks) {
        let name = case["name"].as_str().unwrap();
        assert!(chunk.starts_with(&format!("\"{name}\"")));
        let schedule = generated_schedule(&case["schedule"]);
        kinds.push(case["schedule"]["kind"].as_str().unwrap().to_string());
        let base_lr = raw_number(chunk, "lr").unwrap();
        let base_m = raw_number(chunk, "momentum").or_else(|| raw_number(chunk, "beta1"));
        assert!(base_m.is_some(), "{name}");
        let lrs = raw_arrays(chunk, "lr_per_step").remove(0);
        let moms = raw_arrays(chunk, "momentum_per_step").remove(0);
        assert_eq!(lrs.len() as u64, case["steps"].as_u64().unwrap(), "{name}");
        assert_eq!(moms.len(), lrs.len(), "{name}");
        if schedule.needs_metric() {
            let metrics = raw_arrays(chunk, "metrics").remove(0);
            check_metric_sequences(
                &mut tally, name, &schedule, base_lr, base_m, &lrs, &moms, &metrics,
            );
        } else {
            check_sequences(&mut tally, name, &schedule, base_lr, base_m, &lrs, &moms);
        }
    }
    kinds.sort();
    kinds.dedup();
    println!(
        "generated ({}): {} cases, {} values, {} bit-exact, worst relative error {:e}",
        doc["torch"],
        cases.len(),
        tally.values,
        tally.exact,
        tally.worst
    );
    for kind in [
        "none",
        "constant",
        "step",
        "multi_step",
        "exponential",
        "cosine",
        "linear",
        "polynomial",
        "cosine_warm_restarts",
        "lambda",
        "multiplicative",
        "warmup_cosine",
        "sequential",
        "chained",
        "cyclic",
        "one_cycle",
        "plateau",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no generated `{kind}` case"
        );
    }
}

// ------------------------------------------------------ semantics

fn sample_schedules() -> Vec<Schedule> {
    vec![
        Schedule::Constant,
        Schedule::Step {
            step_size: 3,
            gamma: 0.5,
        },
        Schedule::MultiStep {
            milestones: vec![2, 5, 5, 11],
            gamma: 0.3,
        },
        Schedule::Exponential { gamma: 0.95 },
        Schedule::CosineAnnealing {
            t_max: 9,
            eta_min: 1e-4,
        },
        Schedule::Linear {
            start_factor: 0.25,
            end_factor: 0.75,
            total_iters: 6,
        },
        Schedule::warmup_cosine(0.1, 4, 12, 1e-5),
        Schedule::Sequential {
            schedules: vec![
                Schedule::Exponential { gamma: 1.1 },
                Schedule::Constant,
                Schedule::Step {
                    step_size: 2,
                    gamma: 0.8,
                },
            ],
            milestones: vec![3, 7],
        },
        Schedule::Cyclic(CyclicLr {
            step_size_up: 3,
            step_size_down: Some(4),
            mode: CyclicMode::Triangular2,
            ..CyclicLr::new(0.01, 0.1)
        }),
        Schedule::Cyclic(CyclicLr {
            step_size_up: 5,
            mode: CyclicMode::ExpRange,
            gamma: 0.98,
            ..CyclicLr::new(0.001, 0.01)
        }),
        Schedule::OneCycle(OneCycleLr::new(0.1, 30)),
        Schedule::OneCycle(OneCycleLr {
            anneal_strategy: AnnealStrategy::Linear,
            three_phase: true,
            ..OneCycleLr::new(0.1, 25)
        }),
        Schedule::ConstantFactor {
            factor: 0.25,
            total_iters: 6,
        },
        Schedule::Polynomial {
            total_iters: 20,
            power: 1.5,
        },
        Schedule::CosineAnnealingWarmRestarts {
            t_0: 3,
            t_mult: 2,
            eta_min: 1e-4,
        },
        Schedule::CosineAnnealingWarmRestarts {
            t_0: 4,
            t_mult: 1,
            eta_min: 0.0,
        },
        Schedule::lambda(|e| 1.0 / (1.0 + e as f64)),
        Schedule::multiplicative(|e| if e % 4 == 0 { 0.8 } else { 1.01 }),
        Schedule::Chained {
            schedules: vec![
                Schedule::ConstantFactor {
                    factor: 0.5,
                    total_iters: 5,
                },
                Schedule::MultiStep {
                    milestones: vec![8, 15],
                    gamma: 0.3,
                },
                Schedule::CosineAnnealing {
                    t_max: 12,
                    eta_min: 1e-3,
                },
            ],
        },
        Schedule::Sequential {
            schedules: vec![
                Schedule::Polynomial {
                    total_iters: 6,
                    power: 2.0,
                },
                Schedule::multiplicative(|_| 0.9),
                Schedule::CosineAnnealingWarmRestarts {
                    t_0: 5,
                    t_mult: 3,
                    eta_min: 0.0,
                },
            ],
            milestones: vec![4, 11],
        },
    ]
}

#[test]
fn save_and_restore_position_continues_identically() {
    for schedule in sample_schedules() {
        let mut a = Scheduler::new(schedule.clone(), 0.05, Some(0.9)).unwrap();
        let mut reference = Vec::new();
        for _ in 0..40 {
            reference.push((a.lr(), a.momentum()));
            a.advance();
        }
        for save_at in [0u64, 1, 4, 7, 13, 29] {
            // Run to `save_at`, save the position, restore it into a fresh
            // scheduler (and into one that has run further: backwards).
            let mut b = Scheduler::new(schedule.clone(), 0.05, Some(0.9)).unwrap();
            for _ in 0..save_at {
                b.advance();
            }
            let saved = b.position();
            let mut fresh = Scheduler::new(schedule.clone(), 0.05, Some(0.9)).unwrap();
            fresh.set_position(saved);
            let mut ahead = Scheduler::new(schedule.clone(), 0.05, Some(0.9)).unwrap();
            ahead.set_position(35);
            ahead.set_position(saved);
            for r in [&mut b, &mut fresh, &mut ahead] {
                for (k, want) in reference.iter().enumerate().skip(saved as usize) {
                    assert_eq!(r.position(), k as u64);
                    assert_eq!(
                        (r.lr(), r.momentum()),
                        *want,
                        "{schedule:?} restored at {saved}, step {k}"
                    );
                    assert_eq!(
                        r.lr_at(k as u64 + 1),
                        reference.get(k + 1).map_or(r.lr_at(k as u64 + 1), |x| x.0)
                    );
                    r.advance();
                }
            }
        }
    }
}

#[test]
fn step_zero_values_follow_torch() {
    // The first optimizer step runs with the value of the scheduler's
    // initial step (epoch 0).
    let lr0 = |s: Schedule| s.lr_at(0.2, 0);
    assert_eq!(
        lr0(Schedule::Step {
            step_size: 1,
            gamma: 0.5
        }),
        0.2
    );
    assert_eq!(lr0(Schedule::Exponential { gamma: 0.5 }), 0.2);
    assert_eq!(
        lr0(Schedule::CosineAnnealing {
            t_max: 5,
            eta_min: 0.01
        }),
        0.2
    );
    assert_eq!(
        lr0(Schedule::Linear {
            start_factor: 0.5,
            end_factor: 1.0,
            total_iters: 4
        }),
        0.1
    );
    // A milestone 0 decays at once.
    assert_eq!(
        lr0(Schedule::MultiStep {
            milestones: vec![0, 0, 3],
            gamma: 0.5
        }),
        0.2 * 0.25
    );
    // CyclicLR and OneCycleLR ignore the optimizer's lr.
    assert_eq!(lr0(Schedule::Cyclic(CyclicLr::new(0.003, 0.3))), 0.003);
    let oc = OneCycleLr::new(0.5, 10);
    // (torch's cosine anneal at pct 0, end + (start − end)/2·2, is only
    // within an ulp of max_lr of start.)
    assert!((lr0(Schedule::OneCycle(oc.clone())) - 0.02).abs() < 1e-16);
    assert_eq!(oc.initial_lr(), 0.02);
    assert_eq!(oc.min_lr(), 0.02 / 1e4);
    // Momentum starts at max_momentum.
    let s = Schedule::OneCycle(oc);
    assert_eq!(s.momentum_at(Some(0.5), 0), Some(0.95));
    assert_eq!(
        Schedule::Cyclic(CyclicLr::new(0.003, 0.3)).momentum_at(Some(0.5), 0),
        Some(0.9)
    );
    // Schedules that do not cycle the momentum leave the optimizer's.
    assert_eq!(Schedule::Constant.momentum_at(Some(0.5), 7), Some(0.5));
    assert_eq!(Schedule::Constant.momentum_at(None, 7), None);
    let no_cycle = Schedule::Cyclic(CyclicLr {
        cycle_momentum: false,
        ..CyclicLr::new(0.003, 0.3)
    });
    assert_eq!(no_cycle.momentum_at(Some(0.5), 3), Some(0.5));
}

#[test]
fn one_cycle_holds_its_final_value_past_the_end() {
    for strategy in [AnnealStrategy::Cos, AnnealStrategy::Linear] {
        for three_phase in [false, true] {
            let c = OneCycleLr {
                anneal_strategy: strategy,
                three_phase,
                ..OneCycleLr::new(0.1, 20)
            };
            let s = Schedule::OneCycle(c.clone());
            let last = s.lr_at(1.0, 19);
            assert!(
                (last - c.min_lr()).abs() <= 1e-15 * c.max_lr,
                "{last} vs {}",
                c.min_lr()
            );
            for step in [20, 21, 100, u64::MAX] {
                assert_eq!(s.lr_at(1.0, step), last);
                assert_eq!(s.momentum_at(None, step), s.momentum_at(None, 19));
                assert!(s.lr_at(1.0, step) >= 0.0);
            }
        }
    }
}

#[test]
fn far_positions_are_quick() {
    let start = std::time::Instant::now();
    let far = u64::MAX - 1;
    // (The recursion, in torch too, settles on a subnormal fixed point.)
    assert!(Schedule::Exponential { gamma: 0.9 }.lr_at(0.1, far) < 1e-320);
    assert_eq!(Schedule::Exponential { gamma: 1.0 }.lr_at(0.1, far), 0.1);
    assert_eq!(
        Schedule::Exponential { gamma: 1.5 }.lr_at(0.1, far),
        f64::INFINITY
    );
    assert_eq!(
        Schedule::Step {
            step_size: 1,
            gamma: 0.5
        }
        .lr_at(0.1, far),
        0.0
    );
    let lin = Schedule::Linear {
        start_factor: 0.1,
        end_factor: 0.5,
        total_iters: 10,
    };
    assert!((lin.lr_at(0.1, far) - 0.05).abs() < 1e-15);
    let m = Schedule::MultiStep {
        milestones: vec![1, 1 << 40],
        gamma: 0.1,
    };
    assert!((m.lr_at(1.0, far) - 0.01).abs() < 1e-17);
    let c = Schedule::Cyclic(CyclicLr::new(0.01, 0.1));
    assert!((0.01..=0.1).contains(&c.lr_at(0.1, far)));
    let mut s = Scheduler::new(Schedule::Exponential { gamma: 0.99 }, 0.1, None).unwrap();
    s.set_position(far);
    s.advance();
    assert!(s.lr() < 1e-320);
    assert!(start.elapsed().as_secs() < 5);
}

#[test]
fn sequential_starts_later_schedules_from_their_closed_form() {
    // CosineAnnealingLR started by SequentialLR at its milestone begins at
    // eta_min + (base - eta_min)·(1 + cos 0)/2, not at exactly base.
    let (base, eta_min) = (0.1f64, 0.03f64);
    let closed = eta_min + (base - eta_min) * 2.0 / 2.0;
    let s = Schedule::Sequential {
        schedules: vec![
            Schedule::Constant,
            Schedule::CosineAnnealing { t_max: 10, eta_min },
        ],
        milestones: vec![5],
    };
    assert_eq!(s.lr_at(base, 4), base);
    assert_eq!(s.lr_at(base, 5), closed);
    let alone = Schedule::CosineAnnealing { t_max: 10, eta_min };
    assert_eq!(alone.lr_at(base, 0), base);
    // After a milestone 0 the second schedule takes torch's initial step
    // instead: exactly the base lr.
    let skip = Schedule::Sequential {
        schedules: vec![Schedule::Exponential { gamma: 0.5 }, alone.clone()],
        milestones: vec![0],
    };
    for step in 0..30 {
        assert_eq!(skip.lr_at(base, step), alone.lr_at(base, step));
    }
}

#[test]
fn json_round_trips() {
    let plateau = Schedule::ReduceOnPlateau(ReduceLrOnPlateau {
        mode: PlateauMode::Max,
        factor: 0.25,
        patience: 3,
        threshold: 0.01,
        threshold_mode: ThresholdMode::Abs,
        cooldown: 2,
        min_lr: 1e-5,
        eps: 1e-9,
    });
    for s in sample_schedules()
        .into_iter()
        .filter(|s| !s.has_closure())
        .chain([plateau])
    {
        let v = s.to_json();
        assert_eq!(Schedule::from_json(&v).unwrap(), s, "{v}");
        assert_eq!(Schedule::from_json_map(v.as_object().unwrap()).unwrap(), s);
    }
    // torch's defaults for the arguments left out.
    assert_eq!(
        Schedule::from_json(&json!({"kind": "cyclic", "base_lr": 0.1, "max_lr": 1.0})).unwrap(),
        Schedule::Cyclic(CyclicLr::new(0.1, 1.0))
    );
    assert_eq!(
        Schedule::from_json(&json!({"kind": "one_cycle", "max_lr": 0.1, "total_steps": 9}))
            .unwrap(),
        Schedule::OneCycle(OneCycleLr::new(0.1, 9))
    );
    assert_eq!(
        Schedule::from_json(&json!({"kind": "step", "step_size": 4})).unwrap(),
        Schedule::Step {
            step_size: 4,
            gamma: 0.1
        }
    );
    assert_eq!(
        Schedule::from_json(&json!({"kind": "linear"})).unwrap(),
        Schedule::Linear {
            start_factor: 1.0 / 3.0,
            end_factor: 1.0,
            total_iters: 5
        }
    );
}

/// The kinds and keys of tests/data/golden/FORMAT.md, with torch's defaults.
#[test]
fn json_reads_the_golden_format() {
    let j = |v: Value| Schedule::from_json(&v).unwrap_or_else(|e| panic!("{v}: {e}"));
    // `constant` is torch's ConstantLR; no scheduler is `none`.
    assert_eq!(
        j(json!({"kind": "constant"})),
        Schedule::ConstantFactor {
            factor: 1.0 / 3.0,
            total_iters: 5
        }
    );
    assert_eq!(j(json!({"kind": "none"})), Schedule::Constant);
    assert_eq!(Schedule::Constant.to_json(), json!({"kind": "none"}));
    assert_eq!(
        j(json!({"kind": "polynomial"})),
        Schedule::Polynomial {
            total_iters: 5,
            power: 1.0
        }
    );
    assert_eq!(
        j(json!({"kind": "cosine_warm_restarts", "T_0": 7})),
        Schedule::CosineAnnealingWarmRestarts {
            t_0: 7,
            t_mult: 1,
            eta_min: 0.0
        }
    );
    assert_eq!(
        j(json!({"kind": "plateau"})),
        Schedule::ReduceOnPlateau(ReduceLrOnPlateau::default())
    );
    assert_eq!(
        ReduceLrOnPlateau::default(),
        ReduceLrOnPlateau {
            mode: PlateauMode::Min,
            factor: 0.1,
            patience: 10,
            threshold: 1e-4,
            threshold_mode: ThresholdMode::Rel,
            cooldown: 0,
            min_lr: 0.0,
            eps: 1e-8,
        }
    );
    // A case's metrics are read past, not kept.
    assert_eq!(
        j(json!({"kind": "plateau", "patience": 2, "metrics": [1.0, 0.5]})),
        Schedule::ReduceOnPlateau(ReduceLrOnPlateau {
            patience: 2,
            ..ReduceLrOnPlateau::default()
        })
    );
    let ms = Schedule::MultiStep {
        milestones: vec![20, 35],
        gamma: 0.3,
    };
    let cf = Schedule::ConstantFactor {
        factor: 0.5,
        total_iters: 10,
    };
    assert_eq!(
        j(json!({"kind": "chained", "schedulers": [
            {"kind": "constant", "factor": 0.5, "total_iters": 10},
            {"kind": "multistep", "milestones": [20, 35], "gamma": 0.3}]})),
        Schedule::Chained {
            schedules: vec![cf.clone(), ms.clone()]
        }
    );
    let seq = Schedule::Sequential {
        schedules: vec![cf.clone(), ms.clone()],
        milestones: vec![10],
    };
    let subs = json!([{"kind": "constant", "factor": 0.5, "total_iters": 10},
                      {"kind": "multi_step", "milestones": [20, 35], "gamma": 0.3}]);
    assert_eq!(
        j(json!({"kind": "sequential", "schedulers": subs, "milestones": [10]})),
        seq
    );
    // This crate's earlier key for SequentialLR's list.
    assert_eq!(
        j(json!({"kind": "sequential", "schedules": subs, "milestones": [10]})),
        seq
    );
    assert_eq!(
        seq.to_json()["schedulers"][1]["kind"],
        json!("multistep"),
        "FORMAT.md's names are written"
    );
}

#[test]
fn json_cannot_carry_closures() {
    let lam = Schedule::lambda(|e| 0.9f64.powf(e as f64));
    assert!(lam.has_closure());
    assert_eq!(lam.to_json(), json!({"kind": "lambda"}));
    let chained = Schedule::Chained {
        schedules: vec![
            Schedule::Exponential { gamma: 0.5 },
            Schedule::multiplicative(|_| 0.5),
        ],
    };
    assert!(chained.has_closure());
    assert_eq!(
        chained.to_json()["schedulers"][1],
        json!({"kind": "multiplicative"})
    );
    for v in [lam.to_json(), chained.to_json()] {
        let m = options_err(Schedule::from_json(&v).map(|_| ()));
        assert!(m.contains("closure"), "{m}");
    }
    // A clone is the same closure; another closure is not, whatever it computes.
    assert_eq!(lam.clone(), lam);
    assert_ne!(Schedule::lambda(|e| 0.9f64.powf(e as f64)), lam);
    assert!(format!("{lam:?}").contains("LrLambda"));
}

// ------------------------------------------------------ invalid parameters

fn hyper_err(r: wgpu_optim::Result<()>) -> (&'static str, f64) {
    match r {
        Err(Error::InvalidHyperparameter { name, value, .. }) => (name, value),
        other => panic!("expected InvalidHyperparameter, got {other:?}"),
    }
}

fn options_err(r: wgpu_optim::Result<()>) -> String {
    match r {
        Err(Error::InvalidOptions(m)) => m,
        other => panic!("expected InvalidOptions, got {other:?}"),
    }
}

#[test]
fn invalid_step_multistep_exponential() {
    let v = |s: Schedule| s.validate();
    assert_eq!(
        hyper_err(v(Schedule::Step {
            step_size: 0,
            gamma: 0.1
        })),
        ("step_size", 0.0)
    );
    assert_eq!(
        hyper_err(v(Schedule::Step {
            step_size: 2,
            gamma: -0.1
        })),
        ("gamma", -0.1)
    );
    assert_eq!(
        hyper_err(v(Schedule::Step {
            step_size: 2,
            gamma: f64::NAN
        }))
        .0,
        "gamma"
    );
    assert_eq!(
        hyper_err(v(Schedule::MultiStep {
            milestones: vec![1],
            gamma: -1.0
        })),
        ("gamma", -1.0)
    );
    let m = options_err(v(Schedule::MultiStep {
        milestones: vec![5, 3],
        gamma: 0.1,
    }));
    assert!(m.contains("sorted"), "{m}");
    assert_eq!(
        hyper_err(v(Schedule::Exponential {
            gamma: f64::INFINITY
        })),
        ("gamma", f64::INFINITY)
    );
    assert_eq!(
        hyper_err(v(Schedule::Exponential { gamma: -0.5 })),
        ("gamma", -0.5)
    );
    // Valid edge cases.
    v(Schedule::MultiStep {
        milestones: vec![],
        gamma: 0.1,
    })
    .unwrap();
    v(Schedule::MultiStep {
        milestones: vec![0, 4, 4],
        gamma: 0.0,
    })
    .unwrap();
    v(Schedule::Exponential { gamma: 1.5 }).unwrap();
}

#[test]
fn invalid_cosine_and_linear() {
    let v = |s: Schedule| s.validate();
    assert_eq!(
        hyper_err(v(Schedule::CosineAnnealing {
            t_max: 0,
            eta_min: 0.0
        })),
        ("T_max", 0.0)
    );
    assert_eq!(
        hyper_err(v(Schedule::CosineAnnealing {
            t_max: 3,
            eta_min: -1e-3
        })),
        ("eta_min", -1e-3)
    );
    assert_eq!(
        hyper_err(v(Schedule::CosineAnnealing {
            t_max: 3,
            eta_min: f64::NAN
        }))
        .0,
        "eta_min"
    );
    let lin = |start_factor, end_factor, total_iters| Schedule::Linear {
        start_factor,
        end_factor,
        total_iters,
    };
    // torch: 0 < start_factor <= 1, 0 <= end_factor <= 1.
    assert_eq!(hyper_err(v(lin(0.0, 1.0, 5))), ("start_factor", 0.0));
    assert_eq!(hyper_err(v(lin(1.5, 1.0, 5))), ("start_factor", 1.5));
    assert_eq!(hyper_err(v(lin(f64::NAN, 1.0, 5))).0, "start_factor");
    assert_eq!(hyper_err(v(lin(0.5, -0.1, 5))), ("end_factor", -0.1));
    assert_eq!(hyper_err(v(lin(0.5, 1.01, 5))), ("end_factor", 1.01));
    assert_eq!(hyper_err(v(lin(0.5, 1.0, 0))), ("total_iters", 0.0));
    v(lin(1.0, 0.0, 1)).unwrap();
}

#[test]
fn invalid_sequential() {
    let v = |schedules: Vec<Schedule>, milestones: Vec<u64>| {
        Schedule::Sequential {
            schedules,
            milestones,
        }
        .validate()
    };
    let c = || Schedule::Constant;
    assert!(options_err(v(vec![], vec![])).contains("at least one"));
    assert!(options_err(v(vec![c(), c()], vec![])).contains("milestone"));
    assert!(options_err(v(vec![c()], vec![3])).contains("milestone"));
    assert!(options_err(v(vec![c(), c(), c()], vec![5, 5])).contains("increasing"));
    assert!(options_err(v(vec![c(), c(), c()], vec![6, 2])).contains("increasing"));
    let cyc = Schedule::Cyclic(CyclicLr::new(0.1, 1.0));
    assert!(options_err(v(vec![c(), cyc], vec![3])).contains("CyclicLR"));
    let oc = Schedule::OneCycle(OneCycleLr::new(0.1, 10));
    assert!(options_err(v(vec![oc, c()], vec![3])).contains("OneCycleLR"));
    let nested = Schedule::warmup_cosine(0.1, 2, 5, 0.0);
    assert!(options_err(v(vec![c(), nested], vec![3])).contains("SequentialLR"));
    // A sub-schedule's own parameters are checked.
    assert_eq!(
        hyper_err(v(vec![c(), Schedule::Exponential { gamma: -2.0 }], vec![3])),
        ("gamma", -2.0)
    );
    v(vec![c()], vec![]).unwrap();
    // A milestone 0 skips the first schedule, as in torch.
    v(vec![Schedule::Exponential { gamma: 0.5 }, c()], vec![0]).unwrap();
    assert_eq!(
        Schedule::warmup_cosine(0.1, 0, 5, 0.0),
        Schedule::CosineAnnealing {
            t_max: 5,
            eta_min: 0.0
        }
    );
}

#[test]
fn invalid_cyclic() {
    let v = |c: CyclicLr| Schedule::Cyclic(c).validate();
    let base = || CyclicLr::new(0.01, 0.1);
    assert_eq!(hyper_err(v(CyclicLr::new(0.1, 0.01))), ("max_lr", 0.01));
    assert_eq!(hyper_err(v(CyclicLr::new(-0.1, 0.01))), ("base_lr", -0.1));
    assert_eq!(hyper_err(v(CyclicLr::new(0.01, f64::INFINITY))).0, "max_lr");
    assert_eq!(hyper_err(v(CyclicLr::new(f64::NAN, 0.1))).0, "base_lr");
    assert_eq!(
        hyper_err(v(CyclicLr {
            step_size_up: 0,
            ..base()
        })),
        ("step_size_up", 0.0)
    );
    assert_eq!(
        hyper_err(v(CyclicLr {
            step_size_down: Some(0),
            ..base()
        })),
        ("step_size_down", 0.0)
    );
    assert_eq!(
        hyper_err(v(CyclicLr {
            mode: CyclicMode::ExpRange,
            gamma: -0.5,
            ..base()
        })),
        ("gamma", -0.5)
    );
    assert_eq!(
        hyper_err(v(CyclicLr {
            base_momentum: 0.95,
            max_momentum: 0.9,
            ..base()
        })),
        ("max_momentum", 0.9)
    );
    assert_eq!(
        hyper_err(v(CyclicLr {
            base_momentum: -0.1,
            ..base()
        })),
        ("base_momentum", -0.1)
    );
    assert_eq!(
        hyper_err(v(CyclicLr {
            max_momentum: f64::NAN,
            ..base()
        }))
        .0,
        "max_momentum"
    );
    // Momenta are not looked at when they are not cycled.
    v(CyclicLr {
        cycle_momentum: false,
        base_momentum: 0.95,
        max_momentum: 0.9,
        ..base()
    })
    .unwrap();
    v(CyclicLr::new(0.1, 0.1)).unwrap();
}

#[test]
fn invalid_one_cycle() {
    let v = |c: OneCycleLr| Schedule::OneCycle(c).validate();
    let base = || OneCycleLr::new(0.1, 100);
    assert_eq!(hyper_err(v(OneCycleLr::new(0.1, 0))), ("total_steps", 0.0));
    assert_eq!(hyper_err(v(OneCycleLr::new(-0.1, 10))), ("max_lr", -0.1));
    assert_eq!(hyper_err(v(OneCycleLr::new(f64::NAN, 10))).0, "max_lr");
    assert_eq!(
        hyper_err(v(OneCycleLr {
            pct_start: -0.1,
            ..base()
        })),
        ("pct_start", -0.1)
    );
    assert_eq!(
        hyper_err(v(OneCycleLr {
            pct_start: 1.1,
            ..base()
        })),
        ("pct_start", 1.1)
    );
    assert_eq!(
        hyper_err(v(OneCycleLr {
            pct_start: f64::NAN,
            ..base()
        }))
        .0,
        "pct_start"
    );
    assert_eq!(
        hyper_err(v(OneCycleLr {
            div_factor: 0.0,
            ..base()
        })),
        ("div_factor", 0.0)
    );
    assert_eq!(
        hyper_err(v(OneCycleLr {
            final_div_factor: -1.0,
            ..base()
        })),
        ("final_div_factor", -1.0)
    );
    assert_eq!(
        hyper_err(v(OneCycleLr {
            base_momentum: 0.99,
            ..base()
        })),
        ("max_momentum", 0.95)
    );
    // pct_start · total_steps = 1: torch divides by zero at step 0.
    let m = options_err(v(OneCycleLr {
        pct_start: 0.01,
        ..base()
    }));
    assert!(m.contains("first phase"), "{m}");
    // torch's own range is [0, 1].
    v(OneCycleLr {
        pct_start: 0.0,
        ..base()
    })
    .unwrap();
    v(OneCycleLr {
        pct_start: 1.0,
        ..base()
    })
    .unwrap();
    v(OneCycleLr {
        cycle_momentum: false,
        base_momentum: 0.99,
        ..base()
    })
    .unwrap();
}

#[test]
fn invalid_scheduler_and_json() {
    let err = |r: wgpu_optim::Result<Scheduler>| r.map(|_| ());
    assert_eq!(
        hyper_err(err(Scheduler::new(Schedule::Constant, -1.0, None))),
        ("lr", -1.0)
    );
    assert_eq!(
        hyper_err(err(Scheduler::new(Schedule::Constant, f64::NAN, None))).0,
        "lr"
    );
    assert_eq!(
        hyper_err(err(Scheduler::new(
            Schedule::Constant,
            0.1,
            Some(f64::INFINITY)
        )))
        .0,
        "momentum"
    );
    assert_eq!(
        hyper_err(err(Scheduler::new(
            Schedule::Exponential { gamma: -1.0 },
            0.1,
            None
        ))),
        ("gamma", -1.0)
    );
    // torch: "optimizer must support momentum or beta1 with `cycle_momentum` option enabled".
    let cyc = Schedule::Cyclic(CyclicLr::new(0.01, 0.1));
    assert!(options_err(err(Scheduler::new(cyc.clone(), 0.1, None))).contains("cycle_momentum"));
    let adagrad: Config = Adagrad::default().into();
    assert!(options_err(err(Scheduler::for_config(cyc, &adagrad))).contains("cycle_momentum"));
    let oc = Schedule::OneCycle(OneCycleLr {
        cycle_momentum: false,
        ..OneCycleLr::new(0.1, 10)
    });
    Scheduler::for_config(oc, &adagrad).unwrap();

    let j = |v: Value| Schedule::from_json(&v).map(|_| ());
    assert!(options_err(j(json!({"kind": "warp"}))).contains("unknown schedule kind"));
    assert!(options_err(j(json!({"step_size": 3}))).contains("kind"));
    assert!(options_err(j(json!([1, 2]))).contains("object"));
    assert!(options_err(j(json!({"kind": "step", "step_size": 3, "gama": 0.5}))).contains("gama"));
    assert!(options_err(j(json!({"kind": "step"}))).contains("step_size"));
    assert!(options_err(j(json!({"kind": "step", "step_size": -3}))).contains("step_size"));
    assert!(options_err(j(json!({"kind": "step", "step_size": 2.5}))).contains("step_size"));
    assert!(options_err(j(json!({"kind": "exponential", "gamma": "0.9"}))).contains("gamma"));
    assert!(options_err(j(
        json!({"kind": "cyclic", "base_lr": 0.1, "max_lr": 1.0, "mode": "sine"})
    ))
    .contains("sine"));
    assert!(options_err(j(
        json!({"kind": "one_cycle", "max_lr": 0.1, "total_steps": 9, "anneal_strategy": "exp"})
    ))
    .contains("exp"));
    assert!(options_err(j(
        json!({"kind": "one_cycle", "max_lr": 0.1, "total_steps": 9, "three_phase": 1})
    ))
    .contains("three_phase"));
    assert!(
        options_err(j(json!({"kind": "multi_step", "milestones": [1, -2]}))).contains("milestones")
    );
    assert!(options_err(j(
        json!({"kind": "sequential", "schedules": {}, "milestones": []})
    ))
    .contains("schedules"));
    // Parsed, then validated.
    assert_eq!(
        hyper_err(j(json!({"kind": "cosine", "T_max": 0}))),
        ("T_max", 0.0)
    );
}

// ------------------------------------------------------ optimizers

#[test]
fn apply_sets_lr_and_cycled_momentum() {
    // SGD's momentum.
    let sgd = Sgd {
        lr: 0.5,
        momentum: 0.9,
        ..Sgd::default()
    };
    let mut opt = CpuOptimizer::new(sgd, &[&[1.0f32, 2.0]]).unwrap();
    let mut s = Scheduler::for_config(
        Schedule::Cyclic(CyclicLr {
            step_size_up: 2,
            ..CyclicLr::new(0.01, 0.05)
        }),
        opt.config(),
    )
    .unwrap();
    for _ in 0..7 {
        s.apply_to_cpu(&mut opt).unwrap();
        assert_eq!(opt.config().lr(), s.lr());
        assert_eq!(opt.config().momentum(), s.momentum());
        opt.step(&[&[0.1, 0.2]]).unwrap();
        s.advance();
    }
    // Adam's betas[0].
    let mut opt = CpuOptimizer::new(Adam::default(), &[&[1.0f32]]).unwrap();
    let mut s =
        Scheduler::for_config(Schedule::OneCycle(OneCycleLr::new(0.01, 10)), opt.config()).unwrap();
    s.advance();
    s.apply_to_cpu(&mut opt).unwrap();
    assert_eq!(opt.config().lr(), s.lr());
    let Config::Adam(a) = opt.config() else {
        unreachable!()
    };
    assert_eq!(a.betas.0, s.momentum().unwrap());
    assert!(a.betas.0 < 0.95 && a.betas.0 > 0.85);
    // A schedule that does not cycle the momentum leaves it alone, even on
    // a rule built without one.
    let mut opt = CpuOptimizer::new(
        Sgd {
            lr: 0.1,
            ..Sgd::default()
        },
        &[&[1.0f32]],
    )
    .unwrap();
    let s = Scheduler::for_config(Schedule::Exponential { gamma: 0.5 }, opt.config()).unwrap();
    s.apply_to_cpu(&mut opt).unwrap();
}

#[test]
fn apply_error_leaves_the_optimizer_unchanged() {
    // SGD built with momentum 0 has no momentum buffer to cycle.
    let mut opt = CpuOptimizer::new(
        Sgd {
            lr: 0.1,
            ..Sgd::default()
        },
        &[&[1.0f32]],
    )
    .unwrap();
    let s =
        Scheduler::for_config(Schedule::Cyclic(CyclicLr::new(0.01, 0.05)), opt.config()).unwrap();
    assert!(matches!(
        s.apply_to_cpu(&mut opt),
        Err(Error::NoMomentum { .. })
    ));
    assert_eq!(opt.config().lr(), 0.1);
    // Adam refuses beta1 >= 1.
    let mut opt = CpuOptimizer::new(Adam::default(), &[&[1.0f32]]).unwrap();
    let cyc = Schedule::Cyclic(CyclicLr {
        base_momentum: 0.9,
        max_momentum: 1.0,
        ..CyclicLr::new(0.01, 0.05)
    });
    let s = Scheduler::for_config(cyc, opt.config()).unwrap();
    assert!(matches!(
        s.apply_to_cpu(&mut opt),
        Err(Error::InvalidHyperparameter {
            name: "betas[0]",
            ..
        })
    ));
    assert_eq!(opt.config(), &Config::Adam(Adam::default()));
}

#[test]
fn apply_to_gpu_sets_lr_and_momentum() {
    // No adapter is a failure, never a skip: the error says what to install.
    let ctx = GpuContext::new().unwrap_or_else(|e| panic!("{e}"));
    let sgd = Sgd {
        lr: 0.5,
        momentum: 0.9,
        ..Sgd::default()
    };
    let mut opt = GpuOptimizer::new(&ctx, sgd, &[&[1.0f32, 2.0]]).unwrap();
    let mut s =
        Scheduler::for_config(Schedule::OneCycle(OneCycleLr::new(0.1, 8)), opt.config()).unwrap();
    s.set_position(3);
    s.apply_to_gpu(&mut opt).unwrap();
    assert_eq!(opt.config().lr(), s.lr());
    assert_eq!(opt.config().momentum(), s.momentum());
    opt.step(&[&[0.1, 0.2]]).unwrap();
    let mut bad = GpuOptimizer::new(
        &ctx,
        Sgd {
            lr: 0.5,
            ..Sgd::default()
        },
        &[&[1.0f32]],
    )
    .unwrap();
    assert!(matches!(
        s.apply_to_gpu(&mut bad),
        Err(Error::NoMomentum { .. })
    ));
    assert_eq!(bad.config().lr(), 0.5);
}

// ------------------------------------------------- the kinds torch added

#[test]
fn invalid_constant_polynomial_warm_restarts_chained() {
    let v = |s: Schedule| s.validate();
    let cf = |factor, total_iters| Schedule::ConstantFactor {
        factor,
        total_iters,
    };
    // torch: 0 <= factor <= 1; 0 would divide by zero at total_iters.
    assert_eq!(hyper_err(v(cf(1.5, 5))), ("factor", 1.5));
    assert_eq!(hyper_err(v(cf(-0.1, 5))), ("factor", -0.1));
    assert_eq!(hyper_err(v(cf(0.0, 5))), ("factor", 0.0));
    assert_eq!(hyper_err(v(cf(f64::NAN, 5))).0, "factor");
    assert_eq!(hyper_err(v(cf(0.5, 0))), ("total_iters", 0.0));
    v(cf(1.0, 1)).unwrap();
    let poly = |total_iters, power| Schedule::Polynomial { total_iters, power };
    assert_eq!(hyper_err(v(poly(0, 1.0))), ("total_iters", 0.0));
    assert_eq!(hyper_err(v(poly(5, -1.0))), ("power", -1.0));
    assert_eq!(hyper_err(v(poly(5, f64::INFINITY))).0, "power");
    v(poly(5, 0.0)).unwrap();
    let warm = |t_0, t_mult, eta_min| Schedule::CosineAnnealingWarmRestarts {
        t_0,
        t_mult,
        eta_min,
    };
    // torch: T_0 > 0, T_mult >= 1.
    assert_eq!(hyper_err(v(warm(0, 1, 0.0))), ("T_0", 0.0));
    assert_eq!(hyper_err(v(warm(3, 0, 0.0))), ("T_mult", 0.0));
    assert_eq!(hyper_err(v(warm(3, 1, -0.5))), ("eta_min", -0.5));
    v(warm(1, 1, 0.0)).unwrap();

    let chained = |schedules| Schedule::Chained { schedules }.validate();
    assert!(options_err(chained(vec![])).contains("at least one"));
    let exp = || Schedule::Exponential { gamma: 0.9 };
    for (bad, name) in [
        (Schedule::Constant, "Constant"),
        (Schedule::Cyclic(CyclicLr::new(0.1, 1.0)), "CyclicLR"),
        (Schedule::OneCycle(OneCycleLr::new(0.1, 10)), "OneCycleLR"),
        (
            Schedule::ReduceOnPlateau(ReduceLrOnPlateau::default()),
            "ReduceLROnPlateau",
        ),
        (Schedule::warmup_cosine(0.1, 2, 5, 0.0), "SequentialLR"),
    ] {
        let m = options_err(chained(vec![exp(), bad]));
        assert!(m.contains(name) && m.contains("scheduler 1"), "{m}");
    }
    assert_eq!(hyper_err(chained(vec![exp(), cf(2.0, 3)])), ("factor", 2.0));
    chained(vec![
        Schedule::Chained {
            schedules: vec![exp()],
        },
        Schedule::lambda(|_| 1.0),
        warm(2, 2, 0.0),
    ])
    .unwrap();
    // SequentialLR takes the new chainable kinds, not a chain or a plateau.
    let seq = |schedules: Vec<Schedule>| {
        Schedule::Sequential {
            milestones: (1..schedules.len() as u64).map(|m| 3 * m).collect(),
            schedules,
        }
        .validate()
    };
    seq(vec![
        cf(0.5, 2),
        poly(4, 2.0),
        warm(3, 2, 0.0),
        Schedule::lambda(|_| 1.0),
        Schedule::multiplicative(|_| 0.9),
    ])
    .unwrap();
    let m = options_err(seq(vec![
        exp(),
        Schedule::Chained {
            schedules: vec![exp()],
        },
    ]));
    assert!(m.contains("ChainedScheduler"), "{m}");
    let m = options_err(seq(vec![
        exp(),
        Schedule::ReduceOnPlateau(ReduceLrOnPlateau::default()),
    ]));
    assert!(m.contains("ReduceLROnPlateau"), "{m}");
}

#[test]
fn invalid_plateau() {
    let v = |p: ReduceLrOnPlateau| Schedule::ReduceOnPlateau(p).validate();
    let d = ReduceLrOnPlateau::default;
    // torch: factor < 1.
    assert_eq!(
        hyper_err(v(ReduceLrOnPlateau { factor: 1.0, ..d() })),
        ("factor", 1.0)
    );
    assert_eq!(
        hyper_err(v(ReduceLrOnPlateau {
            factor: -0.5,
            ..d()
        })),
        ("factor", -0.5)
    );
    assert_eq!(
        hyper_err(v(ReduceLrOnPlateau {
            threshold: -1e-3,
            ..d()
        })),
        ("threshold", -1e-3)
    );
    assert_eq!(
        hyper_err(v(ReduceLrOnPlateau {
            threshold: 1.0,
            ..d()
        })),
        ("threshold", 1.0)
    );
    assert_eq!(
        hyper_err(v(ReduceLrOnPlateau {
            min_lr: -1.0,
            ..d()
        })),
        ("min_lr", -1.0)
    );
    assert_eq!(
        hyper_err(v(ReduceLrOnPlateau {
            eps: f64::NAN,
            ..d()
        }))
        .0,
        "eps"
    );
    // A relative threshold past 1 is fine where higher is better, and an
    // absolute one anywhere.
    v(ReduceLrOnPlateau {
        mode: PlateauMode::Max,
        threshold: 2.0,
        ..d()
    })
    .unwrap();
    v(ReduceLrOnPlateau {
        threshold_mode: ThresholdMode::Abs,
        threshold: 2.0,
        ..d()
    })
    .unwrap();
    v(ReduceLrOnPlateau { factor: 0.0, ..d() }).unwrap();
    let j = |v: Value| Schedule::from_json(&v).map(|_| ());
    assert!(options_err(j(json!({"kind": "plateau", "mode": "lowest"}))).contains("lowest"));
    assert!(options_err(j(json!({"kind": "plateau", "threshold_mode": "x"}))).contains("rel"));
    assert!(options_err(j(json!({"kind": "plateau", "metrics": [1.0, "a"]}))).contains("metrics"));
    assert!(options_err(j(json!({"kind": "plateau", "patience": -1}))).contains("patience"));
    assert!(options_err(j(json!({"kind": "chained", "schedulers": 3}))).contains("schedulers"));
    let m = options_err(j(
        json!({"kind": "sequential", "schedules": [], "schedulers": [],
                                 "milestones": []}),
    ));
    assert!(m.contains("not both"), "{m}");
}

#[test]
fn plateau_follows_torch_step_by_step() {
    let p = ReduceLrOnPlateau {
        factor: 0.5,
        patience: 1,
        cooldown: 1,
        min_lr: 0.02,
        ..ReduceLrOnPlateau::default()
    };
    let mut s = Scheduler::new(Schedule::ReduceOnPlateau(p), 0.1, Some(0.9)).unwrap();
    let st = |s: &Scheduler| *s.plateau_state().unwrap();
    assert_eq!(st(&s).best, f64::INFINITY);
    // (metric, lr after, best, num_bad_epochs, cooldown_counter), by hand
    // from torch's ReduceLROnPlateau.step.
    let trace = [
        (1.0, 0.1, 1.0, 0, 0),
        (1.0, 0.1, 1.0, 1, 0),       // not better by the relative threshold
        (f64::NAN, 0.05, 1.0, 0, 1), // NaN is never better: 2 > patience, halve, cooldown
        (2.0, 0.05, 1.0, 0, 0),      // a bad epoch in cooldown is forgotten
        (3.0, 0.05, 1.0, 1, 0),
        (3.0, 0.025, 1.0, 0, 1),
        (0.5, 0.025, 0.5, 0, 0),
        (0.6, 0.025, 0.5, 1, 0),
        (0.6, 0.02, 0.5, 0, 1), // max(0.0125, min_lr)
        (0.6, 0.02, 0.5, 0, 0),
        (0.6, 0.02, 0.5, 1, 0),
        (0.6, 0.02, 0.5, 0, 1), // min_lr reached: the reduction changes nothing
        (f64::NEG_INFINITY, 0.02, f64::NEG_INFINITY, 0, 0),
    ];
    for (i, &(metric, lr, best, bad, cool)) in trace.iter().enumerate() {
        s.advance_with_metric(metric).unwrap();
        assert_eq!(s.position(), i as u64 + 1);
        assert_eq!(
            (s.lr(), st(&s)),
            (
                lr,
                PlateauState {
                    best,
                    num_bad_epochs: bad,
                    cooldown_counter: cool
                }
            ),
            "after metric {i} ({metric})"
        );
        assert_eq!(s.momentum(), Some(0.9));
        assert_eq!(s.lr_at(s.position()), s.lr());
    }
    // The pure view of a metric-driven schedule is its lr before any metric.
    assert_eq!(s.schedule().lr_at(0.1, 5), 0.1);

    // Max mode with an absolute threshold.
    let p = ReduceLrOnPlateau {
        mode: PlateauMode::Max,
        threshold_mode: ThresholdMode::Abs,
        threshold: 0.1,
        patience: 0,
        ..ReduceLrOnPlateau::default()
    };
    let mut s = Scheduler::new(Schedule::ReduceOnPlateau(p), 1.0, None).unwrap();
    assert_eq!(st(&s).best, f64::NEG_INFINITY);
    s.advance_with_metric(0.5).unwrap();
    s.advance_with_metric(0.55).unwrap(); // not above 0.5 + 0.1
    assert_eq!((s.lr(), st(&s).best), (0.1, 0.5));
    s.advance_with_metric(0.65).unwrap();
    assert_eq!((s.lr(), st(&s).best), (0.1, 0.65));
}

#[test]
fn plateau_without_a_metric_is_refused_not_ignored() {
    let mut opt = CpuOptimizer::new(
        Sgd {
            lr: 0.1,
            ..Sgd::default()
        },
        &[&[1.0f32]],
    )
    .unwrap();
    let plateau = Schedule::ReduceOnPlateau(ReduceLrOnPlateau::default());
    let fresh = Scheduler::for_config(plateau.clone(), opt.config()).unwrap();
    fresh.apply_to_cpu(&mut opt).unwrap();
    // advance (no metric): nothing moves, and apply says why from then on.
    let mut s = fresh.clone();
    s.advance();
    assert!(s.metric_missing());
    assert_eq!(s.position(), 0);
    opt.set_lr(0.3).unwrap();
    let m = options_err(s.apply_to_cpu(&mut opt));
    assert!(m.contains("advance_with_metric"), "{m}");
    assert_eq!(opt.config().lr(), 0.3, "the optimizer is unchanged");
    // The flag travels with a checkpoint.
    let mut ckpt = opt.checkpoint();
    ckpt.set_scheduler(Some(&s));
    let back = Checkpoint::from_bytes(&ckpt.to_bytes().unwrap()).unwrap();
    assert!(back.scheduler().unwrap().unwrap().metric_missing());
    // set_position cannot replay metrics either (to the same position it
    // is a no-op).
    let mut s = fresh.clone();
    s.set_position(0);
    assert!(!s.metric_missing());
    s.set_position(7);
    assert!(s.metric_missing() && s.position() == 0);
    // A metric for a schedule that takes none is an error, nothing moved.
    let mut e = Scheduler::for_config(Schedule::Exponential { gamma: 0.5 }, opt.config()).unwrap();
    let m = options_err(e.advance_with_metric(1.0));
    assert!(m.contains("ExponentialLR") && m.contains("advance"), "{m}");
    assert_eq!(e.position(), 0);
}

#[test]
fn plateau_state_round_trips_through_checkpoints() {
    let p = ReduceLrOnPlateau {
        factor: 0.5,
        patience: 2,
        cooldown: 3,
        ..ReduceLrOnPlateau::default()
    };
    let mut s = Scheduler::new(Schedule::ReduceOnPlateau(p), 0.1, Some(0.9)).unwrap();
    let round_trip = |s: &Scheduler| {
        let mut ckpt = Checkpoint::new(Sgd::default(), &[3]).unwrap();
        ckpt.set_scheduler(Some(s));
        let bytes = ckpt.to_bytes().unwrap();
        Checkpoint::from_bytes(&bytes)
            .unwrap()
            .scheduler()
            .unwrap()
            .unwrap()
    };
    // Before any metric best is +inf, which JSON has no number for.
    assert_eq!(round_trip(&s), s);
    for metric in [
        1.0,
        0.9,
        0.95,
        0.97,
        0.99,
        1.2,
        0.1 + 0.2,
        f64::NEG_INFINITY,
    ] {
        s.advance_with_metric(metric).unwrap();
        let r = round_trip(&s);
        assert_eq!(r, s);
        assert_eq!(r.lr().to_bits(), s.lr().to_bits());
        assert_eq!(
            r.plateau_state().unwrap().best.to_bits(),
            s.plateau_state().unwrap().best.to_bits()
        );
    }
    // A state the options cannot reach is an invalid checkpoint.
    let mut ckpt = Checkpoint::new(Sgd::default(), &[3]).unwrap();
    ckpt.set_scheduler(Some(&s));
    let state = ckpt.scheduler.as_mut().unwrap();
    state.plateau.as_mut().unwrap().num_bad_epochs = 3; // > patience
    assert!(matches!(ckpt.validate(), Err(Error::Checkpoint(m)) if m.contains("num_bad_epochs")));
    let state = ckpt.scheduler.as_mut().unwrap();
    state.plateau = None;
    assert!(matches!(ckpt.validate(), Err(Error::Checkpoint(m)) if m.contains("best")));
}

#[test]
fn closures_are_saved_without_their_code_and_restored_from_the_callers() {
    let schedule = || Schedule::Chained {
        schedules: vec![
            Schedule::ConstantFactor {
                factor: 0.5,
                total_iters: 4,
            },
            Schedule::lambda(|e| 0.9f64.powf(e as f64)),
        ],
    };
    let original = schedule();
    let mut s = Scheduler::new(original.clone(), 0.1, None).unwrap();
    for _ in 0..6 {
        s.advance();
    }
    let mut ckpt = Checkpoint::new(Sgd::default(), &[3]).unwrap();
    ckpt.set_scheduler(Some(&s));
    // Saving works (validate checks everything but the closure) ...
    let bytes = ckpt.to_bytes().unwrap();
    let back = Checkpoint::from_bytes(&bytes).unwrap();
    // ... reading it back without the closure says how ...
    match back.scheduler() {
        Err(Error::Checkpoint(m)) => assert!(m.contains("scheduler_with"), "{m}"),
        other => panic!("expected Error::Checkpoint, got {other:?}"),
    }
    // ... and with it, the run goes on bit for bit.
    let mut r = back.scheduler_with(original.clone()).unwrap().unwrap();
    assert_eq!((r.position(), r.lr().to_bits()), (6, s.lr().to_bits()));
    for _ in 0..10 {
        r.advance();
        s.advance();
        assert_eq!(r.lr().to_bits(), s.lr().to_bits());
    }
    // A rebuilt closure (another allocation) is accepted: the checkpoint
    // cannot see code, only the schedule's shape and numbers.
    back.scheduler_with(schedule()).unwrap().unwrap();
    // Another schedule is not.
    let other = Schedule::Chained {
        schedules: vec![
            Schedule::ConstantFactor {
                factor: 0.25,
                total_iters: 4,
            },
            Schedule::lambda(|_| 1.0),
        ],
    };
    assert!(matches!(
        back.scheduler_with(other),
        Err(Error::CheckpointMismatch { .. })
    ));
    // A factor that makes the lr negative is refused when it is applied.
    let mut opt = CpuOptimizer::new(Sgd::default(), &[&[1.0f32]]).unwrap();
    let neg = Scheduler::for_config(Schedule::lambda(|_| -1.0), opt.config()).unwrap();
    assert!(matches!(
        neg.apply_to_cpu(&mut opt),
        Err(Error::InvalidHyperparameter { name: "lr", .. })
    ));
}

#[test]
fn chained_steps_each_schedule_on_the_lr_the_previous_left() {
    let base = 0.2f64;
    let chain = Schedule::Chained {
        schedules: vec![
            Schedule::ConstantFactor {
                factor: 0.5,
                total_iters: 3,
            },
            Schedule::MultiStep {
                milestones: vec![2, 5],
                gamma: 0.3,
            },
        ],
    };
    // torch's arithmetic: the group's lr, multiplied in the list's order.
    let mut want = base * 0.5;
    for e in 0..8u64 {
        if e >= 1 {
            if e == 3 {
                want *= 1.0 / 0.5;
            }
            if e == 2 || e == 5 {
                want *= 0.3f64.powf(1.0);
            }
        }
        assert_eq!(chain.lr_at(base, e).to_bits(), want.to_bits(), "step {e}");
    }
    // The order matters where a schedule sets the lr from the base lr:
    // CosineAnnealingWarmRestarts after ConstantLR discards its factor;
    // before it, ConstantLR's factor shows only at the steps where
    // ConstantLR itself changes the lr (0 and total_iters).
    let warm = Schedule::CosineAnnealingWarmRestarts {
        t_0: 4,
        t_mult: 1,
        eta_min: 0.0,
    };
    let cf = Schedule::ConstantFactor {
        factor: 0.5,
        total_iters: 10,
    };
    let after = Schedule::Chained {
        schedules: vec![cf.clone(), warm.clone()],
    };
    let before = Schedule::Chained {
        schedules: vec![warm.clone(), cf],
    };
    for e in 0..14 {
        assert_eq!(after.lr_at(base, e), warm.lr_at(base, e));
        let factor = match e {
            0 => 0.5,
            10 => 1.0 / 0.5,
            _ => 1.0,
        };
        assert_eq!(
            before.lr_at(base, e),
            warm.lr_at(base, e) * factor,
            "step {e}"
        );
    }
}

#[test]
fn warm_restarts_restart_where_torch_does() {
    let base = 0.1;
    let s = Schedule::CosineAnnealingWarmRestarts {
        t_0: 3,
        t_mult: 2,
        eta_min: 0.0,
    };
    // Periods of 3, 6, 12, ...: the base lr (closed form at T_cur = 0) at
    // steps 0, 3, 9, 21.
    let top = 0.0 + (base - 0.0) * (1.0 + 0.0f64.cos()) / 2.0;
    for e in [0, 3, 9, 21, 45] {
        assert_eq!(s.lr_at(base, e), top, "step {e}");
        assert!(s.lr_at(base, e + 1) < top);
        assert!(s.lr_at(base, e.saturating_sub(1)) < top || e == 0);
    }
    // Far positions are quick and stay in range.
    let start = std::time::Instant::now();
    for far in [u64::MAX - 1, u64::MAX / 3, 1 << 62] {
        let lr = s.lr_at(base, far);
        assert!((0.0..=base).contains(&lr));
        let flat = Schedule::CosineAnnealingWarmRestarts {
            t_0: 7,
            t_mult: 1,
            eta_min: 0.01,
        };
        assert_eq!(flat.lr_at(base, far), flat.lr_at(base, far % 7));
        let huge = Schedule::CosineAnnealingWarmRestarts {
            t_0: u64::MAX / 2,
            t_mult: u64::MAX,
            eta_min: 0.0,
        };
        assert!((0.0..=base).contains(&huge.lr_at(base, far)));
    }
    let cf = Schedule::ConstantFactor {
        factor: 0.25,
        total_iters: 1 << 40,
    };
    assert_eq!(cf.lr_at(1.0, u64::MAX - 1), 0.25 * (1.0 / 0.25));
    assert_eq!(
        Schedule::lambda(|e| 1.0 / e as f64).lr_at(2.0, 1 << 60),
        2.0 / (1u64 << 60) as f64
    );
    assert!(start.elapsed().as_secs() < 5);
}
