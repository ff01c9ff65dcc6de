//! PyTorch conformance: every golden case of `tests/data/golden/cases` on
//! the CPU and on the GPU, plus the runner's handling of malformed files,
//! NaNs and unknown hyperparameters.
//!
//! Run with `cargo test --test golden -- --nocapture` to see each case's
//! error over tolerance.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Map, Value};
use wgpu_optim::conformance::{
    compare, config_from_hyper, expand_paths, run_case, Backend, Case, CaseResult,
};
use wgpu_optim::{Config, Error};

const CASES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/golden/cases");

fn case_path(name: &str) -> PathBuf {
    Path::new(CASES).join(format!("{name}.safetensors"))
}

fn load_all() -> Vec<Case> {
    let files = expand_paths(&[CASES]).expect("golden cases folder");
    assert!(
        files.len() >= 20,
        "expected the golden cases, found {files:?}"
    );
    files
        .iter()
        .map(|f| Case::load(f).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

fn fmt(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{r:.4}"))
}

/// Runs every case on `backend`: every one must pass, schedules, gradient
/// clipping and LAMB included.
fn check_all(backend: Backend<'_>) {
    let cases = load_all();
    let mut problems = Vec::new();
    let (mut passed, mut scheduled, mut clipped, mut lamb) = (0, 0, 0, 0);
    let (mut worst_param, mut worst_state) = (0.0f64, 0.0f64);
    let (mut grouped, mut matrix) = (0, 0);
    for case in &cases {
        let r = run_case(case, backend);
        grouped += !case.groups.is_empty() as usize;
        let matrix_rule = case.config.as_ref().is_some_and(|c| c.is_matrix_rule());
        matrix += matrix_rule as usize;
        println!(
            "{:<48} {} param {:>8} state {:>8} {}{}",
            r.case,
            r.backend,
            fmt(r.param_err_ratio),
            fmt(r.state_err_ratio),
            if r.pass { "PASS" } else { "FAIL" },
            r.error
                .as_deref()
                .map(|e| format!("  {e}"))
                .unwrap_or_default()
        );
        assert_eq!(r.case, case.name);
        assert_eq!(r.backend, backend.name());
        assert_eq!(r.adapter, backend.adapter());
        passed += 1;
        scheduled += case.schedule.is_some() as usize;
        clipped += case.clip_grad_norm.is_some() as usize;
        lamb += (case.rule == "lamb") as usize;
        worst_param = worst_param.max(r.param_err_ratio.unwrap_or(f64::INFINITY));
        worst_state = worst_state.max(r.state_err_ratio.unwrap_or(f64::INFINITY));
        let ok = r.pass
            && r.error.is_none()
            && r.unsupported.is_empty()
            && r.failures.is_empty()
            && r.param_err_ratio.is_some_and(|x| x <= 1.0)
            && r.state_err_ratio.is_some_and(|x| x <= 1.0);
        if !ok {
            problems.push(format!("{}: {r:?}", case.name));
        }
        // Every state PyTorch names was compared, on every tensor.
        for name in case.expected_state.keys() {
            let n = r.tensors.iter().filter(|t| &t.what == name).count();
            if n != case.sizes.len() {
                problems.push(format!(
                    "{}: state {name} compared on {n} tensors",
                    case.name
                ));
            }
        }
    }
    println!(
        "{}: {passed} cases ({scheduled} with a schedule, {clipped} clipped, {lamb} LAMB), worst param ratio {worst_param:.4}, worst state ratio {worst_state:.4}",
        backend.adapter()
    );
    assert_eq!(passed, cases.len());
    assert!(passed >= 31 && scheduled >= 11 && clipped >= 2 && lamb >= 2);
    assert!(grouped >= 4, "{grouped} cases with parameter groups");
    assert!(matrix >= 4, "{matrix} cases of Adafactor or Muon");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn golden_cases_pass_on_cpu() {
    check_all(Backend::Cpu);
}

#[test]
fn golden_cases_pass_on_gpu() {
    // No adapter is a failure, never a skip: the GPU kernels are what this
    // test is for.
    check_all(Backend::Gpu(common::ctx()));
}

// ---------------------------------------------------------------- malformed

/// The tensors of a case file, owned, to rewrite it.
struct Raw {
    tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
    meta: Map<String, Value>,
}

fn raw(name: &str) -> Raw {
    let bytes = std::fs::read(case_path(name)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                v.dtype(),
                v.shape().to_vec(),
                v.data().to_vec(),
            )
        })
        .collect();
    let (_, m) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = serde_json::from_str(&m.metadata().as_ref().unwrap()["case"]).unwrap();
    Raw { tensors, meta }
}

impl Raw {
    fn bytes_with(&self, metadata: Option<HashMap<String, String>>) -> Vec<u8> {
        let views: Vec<(String, TensorView<'_>)> = self
            .tensors
            .iter()
            .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views, metadata).unwrap()
    }
    fn bytes(&self) -> Vec<u8> {
        let meta = HashMap::from([(
            "case".to_string(),
            serde_json::to_string(&self.meta).unwrap(),
        )]);
        self.bytes_with(Some(meta))
    }
}

/// `Case::from_bytes` must give `Error::Format` naming the file, with a
/// message containing `needle`.
#[track_caller]
fn assert_format_error(bytes: &[u8], needle: &str) {
    match Case::from_bytes(bytes, "bad.safetensors") {
        Err(Error::Format { path, message }) => {
            assert_eq!(path, "bad.safetensors");
            assert!(
                message.contains(needle),
                "expected a message containing {needle:?}, got {message:?}"
            );
        }
        Err(e) => panic!("expected Error::Format, got {e:?}"),
        Ok(c) => panic!("expected Error::Format, got a case {}", c.name),
    }
}

#[test]
fn truncated_or_garbage_files_are_format_errors() {
    let good = std::fs::read(case_path("adam_default")).unwrap();
    assert!(Case::from_bytes(&good, "good").is_ok());
    let header = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut cuts = vec![
        0,
        1,
        7,
        8,
        9,
        64,
        header - 1,
        header,
        header + 1,
        good.len() - 1,
    ];
    cuts.extend((0..good.len()).step_by(997));
    for cut in cuts {
        assert_format_error(&good[..cut], "not a safetensors file");
    }
    // Garbage, and garbage after a plausible header length.
    let mut x = 0x2545F4914F6CDD1Du64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    assert_format_error(&noise, "not a safetensors file");
    let mut fake = 100u64.to_le_bytes().to_vec();
    fake.extend(&noise[..200]);
    assert_format_error(&fake, "not a safetensors file");
    // Flipped bytes inside the JSON header.
    for i in (8..header).step_by(53) {
        let mut bad = good.clone();
        bad[i] = b'}';
        let _ = Case::from_bytes(&bad, "bad"); // an error or not, never a panic
    }
    // A file that does not exist.
    assert!(matches!(
        Case::load("tests/data/golden/cases/no_such_case.safetensors"),
        Err(Error::Format { .. })
    ));
}

#[test]
fn ill_formed_cases_are_format_errors() {
    let base = raw("adam_default");
    // No metadata, or metadata that is not a case.
    assert_format_error(&base.bytes_with(None), "no `case` key");
    let not_json = HashMap::from([("case".to_string(), "{not json".to_string())]);
    assert_format_error(&base.bytes_with(Some(not_json)), "not JSON");

    let edit = |f: &dyn Fn(&mut Raw)| {
        let mut r = raw("adam_default");
        f(&mut r);
        r.bytes()
    };
    // An unknown hyperparameter is an error, never ignored.
    let b = edit(&|r| {
        r.meta["hyper"]["capturable"] = json!(true);
    });
    assert_format_error(&b, "unknown hyperparameter `capturable` for rule adam");
    let b = edit(&|r| r.meta["hyper"]["betas"] = json!([0.9]));
    assert_format_error(&b, "`betas` of adam must be a list of two numbers");
    let b = edit(&|r| r.meta["hyper"]["amsgrad"] = json!(1));
    assert_format_error(&b, "`amsgrad` of adam must be true or false");
    // A name no rule will take (it was `adamax` before Adamax was added).
    let b = edit(&|r| r.meta["rule"] = json!("no_such_rule"));
    assert_format_error(&b, "unknown rule `no_such_rule`");
    let b = edit(&|r| {
        r.meta.insert("lr_warmup".into(), json!(3));
    });
    assert_format_error(&b, "unknown case key `lr_warmup`");
    let b = edit(&|r| {
        r.meta.remove("atol_param");
    });
    assert_format_error(&b, "`atol_param` is missing");
    let b = edit(&|r| {
        r.meta["atol_state"]
            .as_object_mut()
            .unwrap()
            .remove("exp_avg");
    });
    assert_format_error(&b, "no tolerance for state `exp_avg`");
    let b = edit(&|r| r.meta["steps"] = json!(41));
    assert_format_error(&b, "`lr_per_step` has 40 values for 41 steps");
    // Missing, mistyped, misshapen or unexpected tensors.
    let b = edit(&|r| r.tensors.retain(|t| t.0 != "grad.3.2"));
    assert_format_error(&b, "tensor `grad.3.2` is missing");
    let b = edit(&|r| r.tensors.retain(|t| t.0 != "expected.state.exp_avg.1"));
    assert_format_error(&b, "tensor `expected.state.exp_avg.1` is missing");
    let b = edit(&|r| {
        let t = r.tensors.iter_mut().find(|t| t.0 == "init.1").unwrap();
        t.1 = Dtype::I32;
    });
    assert_format_error(&b, "tensor `init.1` is I32, expected F32");
    let b = edit(&|r| {
        let t = r.tensors.iter_mut().find(|t| t.0 == "init.1").unwrap();
        t.2 = vec![4];
        t.3.truncate(16);
    });
    assert_format_error(&b, "tensor `init.1` has 4 elements, but sizes[1] = 5");
    let b = edit(&|r| {
        r.tensors
            .push(("grad.40.0".into(), Dtype::F32, vec![1], vec![0; 4]));
    });
    assert_format_error(&b, "step 40 out of range");
    let b = edit(&|r| {
        r.tensors
            .push(("extra".into(), Dtype::F32, vec![1], vec![0; 4]));
    });
    assert_format_error(&b, "unexpected tensor `extra`");
    // The unedited case reads back.
    assert!(Case::from_bytes(&base.bytes(), "ok").is_ok());
}

// ---------------------------------------------------------------- NaN and compare

#[test]
fn nan_fails() {
    let mut case = Case::load(case_path("adam_default")).unwrap();
    assert!(run_case(&case, Backend::Cpu).pass);
    case.init[2][5] = f32::NAN;
    let r = run_case(&case, Backend::Cpu);
    assert!(!r.pass, "{r:?}");
    assert!(r.param_err_ratio.unwrap().is_nan());
    // (Adam's state does not depend on the parameters: it stays fine.)
    assert!(
        r.failures.iter().any(|f| f.contains("param.2[5] is NaN")),
        "{r:?}"
    );
    // NaN ratios are `null` in JSON, and the verdict stays false.
    let j: Value = serde_json::to_value(&r).unwrap();
    assert_eq!(j["pass"], json!(false));
    assert_eq!(j["param_err_ratio"], Value::Null);
}

/// State tensors by name, `[t]`.
type States = BTreeMap<String, Vec<Vec<f32>>>;

/// The reference itself, rounded to f32, as "our" result.
fn reference_as_ours(case: &Case) -> (Vec<Vec<f32>>, States) {
    let round = |v: &Vec<Vec<f64>>| -> Vec<Vec<f32>> {
        v.iter()
            .map(|t| t.iter().map(|&x| x as f32).collect())
            .collect()
    };
    let state = case
        .expected_state
        .iter()
        .map(|(k, v)| (k.clone(), round(v)))
        .collect();
    (round(&case.expected_params), state)
}

#[test]
fn compare_catches_nan_missing_state_and_errors() {
    let case = Case::load(case_path("rmsprop_centered")).unwrap();
    let (params, state) = reference_as_ours(&case);
    let ok = compare(&case, &params, &state);
    assert!(ok.pass(), "{ok:?}");
    assert!(ok.param_err_ratio < 0.01 && ok.state_err_ratio < 0.01);

    // A NaN in one state element.
    let mut s = state.clone();
    s.get_mut("grad_avg").unwrap()[3][7] = f32::NAN;
    let c = compare(&case, &params, &s);
    assert!(!c.pass() && c.state_err_ratio.is_nan());
    assert!(
        c.failures
            .iter()
            .any(|f| f.contains("grad_avg.3[7] is NaN")),
        "{c:?}"
    );

    // A state PyTorch has that we lack.
    let mut s = state.clone();
    s.remove("grad_avg");
    let c = compare(&case, &params, &s);
    assert!(!c.pass());
    assert!(
        c.failures.iter().any(|f| f.contains("state `grad_avg`")),
        "{c:?}"
    );

    // A parameter off by twice the tolerance.
    let mut p = params.clone();
    p[1][2] += (2.0 * case.atol_param) as f32;
    let c = compare(&case, &p, &state);
    assert!(!c.pass() && c.param_err_ratio > 1.5, "{c:?}");
    assert!(
        c.failures.iter().any(|f| f.starts_with("param.1[2]")),
        "{c:?}"
    );

    // An infinity, and a tensor of the wrong length.
    let mut p = params.clone();
    p[0][0] = f32::INFINITY;
    assert!(!compare(&case, &p, &state).pass());
    let mut p = params.clone();
    p[3].pop();
    assert!(!compare(&case, &p, &state).pass());
}

// ---------------------------------------------------------------- hyper, paths, CLI

#[test]
fn hyper_maps_to_config_and_refuses_unknown_keys() {
    let h = |v: Value| v.as_object().unwrap().clone();
    let c = config_from_hyper("adam", &h(json!({"lr": 0.01, "betas": [0.8, 0.99]}))).unwrap();
    let Config::Adam(a) = c else { panic!("{c:?}") };
    assert_eq!((a.lr, a.betas, a.eps), (0.01, (0.8, 0.99), 1e-8));
    // torch's defaults for absent keys (AdamW's weight decay is 0.01).
    let c = config_from_hyper("adamw", &Map::new()).unwrap();
    assert_eq!(c, wgpu_optim::RuleKind::AdamW.default_config());
    let c = config_from_hyper("adam", &h(json!({"decoupled_weight_decay": true}))).unwrap();
    assert!(
        matches!(c, Config::AdamW(ref w) if w.weight_decay == 0.0),
        "{c:?}"
    );
    let c = config_from_hyper("sgd", &h(json!({"momentum": 0.9, "nesterov": true}))).unwrap();
    assert!(matches!(c, Config::Sgd(ref s) if s.nesterov && s.momentum == 0.9));
    for (rule, hyper) in [
        ("sgd", json!({"lr": 0.1, "betas": [0.9, 0.99]})),
        ("adagrad", json!({"momentum": 0.9})),
        ("rmsprop", json!({"foreach": false})),
        ("adamw", json!({"decoupled_weight_decay": true})),
    ] {
        match config_from_hyper(rule, &h(hyper)) {
            Err(Error::InvalidOptions(m)) => assert!(m.contains("unknown hyperparameter"), "{m}"),
            other => panic!("{rule}: {other:?}"),
        }
    }
    let c = config_from_hyper("lamb", &h(json!({"lr": 0.01, "weight_decay": 0.1}))).unwrap();
    assert!(
        matches!(c, Config::Lamb(ref l) if l.lr == 0.01 && l.weight_decay == 0.1 && l.eps == 1e-6),
        "{c:?}"
    );
}

#[test]
fn expand_paths_sorts_folders_and_refuses_missing_paths() {
    let files = expand_paths(&[CASES]).unwrap();
    let mut sorted = files.clone();
    sorted.sort();
    assert_eq!(files, sorted);
    assert!(files
        .iter()
        .all(|f| f.extension().is_some_and(|e| e == "safetensors")));
    let one = case_path("sgd_plain");
    assert_eq!(expand_paths(&[&one]).unwrap(), vec![one.clone()]);
    assert!(matches!(
        expand_paths(&["tests/data/golden/no_such_folder"]),
        Err(Error::Format { .. })
    ));
    // A folder without case files.
    assert!(matches!(
        expand_paths(&["src/gpu"]),
        Err(Error::Format { .. })
    ));
}

#[test]
fn cli_exit_code_and_json_lines() {
    let bin = env!("CARGO_BIN_EXE_wgpu-optim");
    let out = std::process::Command::new(bin)
        .args(["conformance", "--backend", "cpu", "--json"])
        .arg(case_path("sgd_plain"))
        .arg(case_path("adagrad_default"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<CaseResult> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(lines
        .iter()
        .all(|r| r.pass && r.backend == "cpu" && r.adapter == "cpu"));

    // A case whose schedule the library does not know is reported as
    // unsupported, named, and the command exits 1.
    let mut r = raw("sgd_step_lr");
    r.meta["schedule"] = json!({"kind": "swalr", "swa_lr": 0.05});
    let dir = std::env::temp_dir().join(format!("wgpu-optim-golden-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sgd_swalr.safetensors");
    std::fs::write(&path, r.bytes()).unwrap();
    let out = std::process::Command::new(bin)
        .args(["conformance", "--backend", "cpu"])
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("FAIL") && stdout.contains("not supported yet: schedule `swalr`"),
        "{stdout}"
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("not supported yet: schedule `swalr`"),
        "{stderr}"
    );
}
