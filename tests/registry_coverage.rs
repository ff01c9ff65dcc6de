//! A rule without tests fails here: every registered rule
//! ([`RuleKind::ALL`]) has a row in the table of tests/common/cases.rs
//! (which the GPU-vs-CPU, checkpoint, non-finite, behaviour and error tests
//! iterate) whose configurations set each of its options, whose error
//! inputs name each of its numeric hyperparameters, and it has a golden
//! case against PyTorch (tests/data/golden) and torch's expectations for
//! non-finite gradients (tests/data/nonfinite).
//!
//! A rule's options are read from what the library writes for torch
//! (a checkpoint's `param_groups`), not listed here: a new option of a rule
//! is found without touching this file.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::cases::{self, hyperparameters, Expect};
use serde_json::Value;
use wgpu_optim::conformance::{expand_paths, Case};
use wgpu_optim::RuleKind;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/golden");

#[test]
fn every_registered_rule_has_one_row_and_nothing_else_does() {
    let rows: Vec<RuleKind> = cases::table().iter().map(|r| r.rule).collect();
    let unique: BTreeSet<&str> = rows.iter().map(|r| r.name()).collect();
    assert_eq!(unique.len(), rows.len(), "a rule has two rows: {rows:?}");
    // The matrix rules have their own configurations (cases::matrix_configs)
    // and tests (tests/matrix.rs), not a row.
    for rule in RuleKind::ALL
        .into_iter()
        .filter(|r| r.default_config().is_matrix_rule())
    {
        assert!(!rows.contains(&rule), "{rule}: a matrix rule with a row");
        assert!(
            !cases::matrix_configs(rule).is_empty(),
            "{rule}: no configurations in cases::matrix_configs"
        );
    }
    for rule in cases::table_rules() {
        assert!(
            rows.contains(&rule),
            "rule {rule} is registered but has no row in tests/common/cases.rs"
        );
    }
    for rule in &rows {
        assert!(RuleKind::ALL.contains(rule), "{rule}: not registered");
    }
}

#[test]
fn every_row_is_well_formed() {
    for row in cases::table() {
        let rule = row.rule;
        assert!(!row.inputs.is_empty(), "{rule}: no inputs");
        let mut descs = BTreeSet::new();
        for i in &row.inputs {
            assert_eq!(i.config.kind(), rule, "{}: in the row of {rule}", i.desc);
            assert!(descs.insert(i.desc.clone()), "{}: twice", i.desc);
            i.config
                .validate()
                .unwrap_or_else(|e| panic!("{}: {e}", i.desc));
            if let Some(c) = i.clip {
                c.validate().unwrap_or_else(|e| panic!("{}: {e}", i.desc));
            }
        }
        for e in &row.error_inputs {
            assert_eq!(e.config.kind(), rule, "{}: in the row of {rule}", e.desc);
            assert!(
                e.config.validate().is_err(),
                "{}: an error input that validates",
                e.desc
            );
        }
        assert_eq!(
            row.momentum.is_some(),
            rule.default_config().momentum().is_some(),
            "{rule}: the row's momentum against Config::momentum"
        );
        assert!(!row.descent.is_empty(), "{rule}: no descent configuration");
        for (name, q, r) in &row.descent {
            assert!(q.kind() == rule && r.kind() == rule, "{name}");
        }
    }
}

/// Every option of a matrix rule takes a value other than its default in
/// some configuration of [`cases::matrix_configs`] (each element of a pair
/// or triple on its own).
#[test]
fn matrix_configurations_set_every_option() {
    for rule in RuleKind::ALL
        .into_iter()
        .filter(|r| r.default_config().is_matrix_rule())
    {
        let default = hyperparameters(&rule.default_config());
        let all: Vec<_> = cases::matrix_configs(rule)
            .iter()
            .map(hyperparameters)
            .collect();
        for (key, d) in &default {
            let slots = match d {
                Value::Array(a) => a.len(),
                _ => 1,
            };
            for slot in 0..slots {
                let at = |v: &Value| match v {
                    Value::Array(a) if slots > 1 => a.get(slot).cloned(),
                    v => Some(v.clone()),
                };
                assert!(
                    all.iter().any(|h| at(&h[key]) != at(d)),
                    "{rule}: no configuration in cases::matrix_configs sets `{key}`[{slot}]"
                );
            }
        }
    }
}

/// Every option of every rule takes a value other than its default in some
/// configuration (each element of a pair, such as `betas`, on its own); each
/// rule has configurations that change the learning rate and, where it has
/// one, the momentum between steps, and one that clips.
#[test]
fn configurations_set_every_option() {
    let mut report = Vec::new();
    for row in cases::table() {
        let rule = row.rule;
        let default = hyperparameters(&rule.default_config());
        let all: Vec<_> = row
            .inputs
            .iter()
            .map(|i| (i.desc.as_str(), hyperparameters(&i.config)))
            .collect();
        for (desc, h) in &all {
            let keys: BTreeSet<_> = h.keys().collect();
            assert_eq!(
                keys,
                default.keys().collect(),
                "{desc}: not the options of {rule}"
            );
        }
        let changes = |f: fn(&cases::Change) -> bool| {
            row.inputs
                .iter()
                .any(|i| i.schedule.iter().any(|(_, c)| f(c)))
        };
        let lr_changed = changes(|c| matches!(c, cases::Change::Lr(_)));
        for (key, d) in &default {
            // A schedule's set_lr sets `lr` as well as a configuration does.
            if key == "lr" && lr_changed {
                continue;
            }
            // One slot per element of a list (null: the option is off).
            let slots = match d {
                Value::Array(a) => a.len(),
                _ => 1,
            };
            for slot in 0..slots {
                let at = |v: &Value| match v {
                    Value::Array(a) if slots > 1 => a.get(slot).cloned(),
                    v => Some(v.clone()),
                };
                let set = all.iter().find(|(_, h)| at(&h[key]) != at(d));
                assert!(
                    set.is_some(),
                    "{rule}: no configuration in tests/common/cases.rs sets `{key}`{} \
                     (default {d})",
                    if slots > 1 {
                        format!("[{slot}]")
                    } else {
                        String::new()
                    }
                );
            }
        }
        assert!(
            lr_changed,
            "{rule}: no configuration changes lr between steps"
        );
        if row.momentum.is_some() {
            assert!(
                changes(|c| matches!(c, cases::Change::Momentum(_))),
                "{rule}: no configuration changes the momentum between steps"
            );
        }
        assert!(
            row.inputs.iter().any(|i| i.clip.is_some()),
            "{rule}: no configuration clips"
        );
        report.push(format!(
            "{rule}: {} configurations over {} options",
            row.inputs.len(),
            default.len()
        ));
    }
    println!("{}", report.join("\n"));
}

/// Every numeric hyperparameter (a number or a list of numbers) is named by
/// an error input of its rule (`betas[1]` and `trust_ratio_clamp.min` name
/// `betas` and `trust_ratio_clamp`), unless the row says no value is invalid.
#[test]
fn error_inputs_name_every_numeric_hyperparameter() {
    for row in cases::table() {
        let rule = row.rule;
        let numeric: BTreeSet<String> = row
            .inputs
            .iter()
            .flat_map(|i| hyperparameters(&i.config))
            .filter(|(_, v)| v.is_number() || v.is_array())
            .map(|(k, _)| k)
            .collect();
        let named: Vec<&str> = row
            .error_inputs
            .iter()
            .filter_map(|e| match e.expect {
                Expect::Hyper(name, _) => Some(name),
                Expect::Options(_) => None,
            })
            .collect();
        for key in &numeric {
            if row.unchecked.contains(&key.as_str()) {
                continue;
            }
            let covered = named.iter().any(|n| {
                *n == key || n.starts_with(&format!("{key}[")) || n.starts_with(&format!("{key}."))
            });
            assert!(
                covered,
                "{rule}: no error input in tests/common/cases.rs for `{key}` \
                 (or list it in the row's `unchecked`)"
            );
        }
    }
}

/// Every registered rule has a golden case (PyTorch's run of it), and the
/// list the files were made from names the same cases and rules as the
/// files.
#[test]
fn every_registered_rule_has_a_golden_case() {
    let files = expand_paths(&[Path::new(GOLDEN).join("cases")]).unwrap();
    let mut per_rule: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let mut from_files = BTreeMap::new();
    for f in &files {
        let case = Case::load(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let rule = RuleKind::parse(&case.rule)
            .unwrap_or_else(|| panic!("{}: rule {} is not registered", case.name, case.rule));
        per_rule
            .entry(rule.name())
            .or_default()
            .push(case.name.clone());
        from_files.insert(case.name, rule.name());
    }
    for rule in RuleKind::ALL {
        assert!(
            per_rule.contains_key(rule.name()),
            "rule {rule} has no golden case in tests/data/golden/cases (add one to \
             cases.json and run gen_torch.py)"
        );
    }
    let list: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(GOLDEN).join("cases.json")).unwrap(),
    )
    .unwrap();
    let from_list: BTreeMap<String, &str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let rule = c["rule"].as_str().unwrap();
            let rule = RuleKind::parse(rule).unwrap_or_else(|| panic!("cases.json: {rule}"));
            (c["name"].as_str().unwrap().to_string(), rule.name())
        })
        .collect();
    assert_eq!(
        from_list, from_files,
        "cases.json against cases/*.safetensors"
    );
    println!(
        "{}",
        per_rule
            .iter()
            .map(|(r, c)| format!("{r}: {} golden cases", c.len()))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// Every registered rule has torch's expectations for NaN and ±inf
/// gradients (tests/data/nonfinite, read by tests/nan_propagation.rs).
#[test]
fn every_registered_rule_has_nonfinite_expectations() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/nonfinite/nonfinite.safetensors"
    );
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().as_ref().expect("metadata");
    let meta: Value = serde_json::from_str(&meta["nonfinite"]).unwrap();
    let rules: BTreeSet<&str> = meta["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["rule"].as_str().unwrap())
        .collect();
    // The matrix rules' non-finite behaviour is not recorded yet (their
    // cases need shapes, which gen_nonfinite.py does not give).
    for rule in cases::table_rules() {
        assert!(
            rules.contains(rule.name()),
            "rule {rule} has no case in tests/data/nonfinite (add one to gen_nonfinite.py)"
        );
    }
    for r in &rules {
        assert!(
            RuleKind::parse(r).is_some(),
            "tests/data/nonfinite: rule {r}"
        );
    }
}
