//! The rule registry: every rule it lists has a name that parses back, a
//! default configuration, bench presets, and torch's keyword arguments
//! both ways (a checkpoint's `param_groups[0]`, a case file's `hyper`).

use serde_json::Map;
use wgpu_optim::conformance::{config_from_hyper, CASE_RULES};
use wgpu_optim::{Checkpoint, Config, CpuOptimizer, RuleKind, Shape};

mod common;

use common::cases;

#[test]
fn every_rule_has_a_name_a_default_and_presets() {
    assert_eq!(CASE_RULES.len(), RuleKind::ALL.len());
    for (kind, case_name) in RuleKind::ALL.into_iter().zip(CASE_RULES) {
        let name = kind.name();
        assert_eq!(name, case_name);
        assert_eq!(RuleKind::parse(name), Some(kind));
        assert_eq!(RuleKind::parse(&name.to_uppercase()), Some(kind));
        let config = kind.default_config();
        assert_eq!(config.kind(), kind);
        config.validate().unwrap();
        let presets = kind.presets();
        // `bench` runs flat tensors, which the matrix rules would not
        // treat as torch does: they have no preset.
        assert_eq!(
            presets.is_empty(),
            config.is_matrix_rule(),
            "{name}: bench presets"
        );
        for p in presets {
            assert_eq!(p.config.kind(), kind, "preset {}", p.name);
            p.config.validate().unwrap();
        }
    }
}

#[test]
fn preset_names_are_unique() {
    let mut names: Vec<&str> = RuleKind::ALL
        .into_iter()
        .flat_map(RuleKind::presets)
        .map(|p| p.name)
        .collect();
    let n = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), n, "{names:?}");
}

/// A case file's `hyper` with no keys is torch's defaults, the rule's
/// `default_config`.
#[test]
fn empty_hyper_is_the_default_config() {
    for kind in RuleKind::ALL {
        let config = config_from_hyper(kind.name(), &Map::new()).unwrap();
        assert_eq!(config, kind.default_config(), "{kind}");
    }
}

/// What a checkpoint writes of a configuration (torch's keyword arguments
/// and this crate's options) reads back as the same configuration, for
/// every default, preset and configuration of the test table
/// (tests/common/cases.rs, where tests/registry_coverage.rs checks that
/// every option is set by some input).
#[test]
fn torch_keyword_arguments_round_trip_through_a_checkpoint() {
    for kind in RuleKind::ALL {
        let inputs: Vec<Config> = if kind.default_config().is_matrix_rule() {
            cases::matrix_configs(kind)
        } else {
            cases::info(kind)
                .inputs
                .into_iter()
                .map(|i| i.config)
                .collect()
        };
        let configs = std::iter::once(kind.default_config())
            .chain(kind.presets().into_iter().map(|p| p.config))
            .chain(inputs);
        for config in configs {
            let ckpt = if config.is_matrix_rule() {
                // Muon needs 2-D shapes.
                let (a, b) = (vec![0.5f32; 6], vec![0.25f32; 4]);
                let shapes = [Shape::matrix(2, 3), Shape::matrix(2, 2)];
                CpuOptimizer::with_shapes(config.clone(), &[&a, &b], &shapes)
                    .unwrap()
                    .checkpoint()
            } else {
                Checkpoint::new(config.clone(), &[3, 2]).unwrap()
            };
            let back = Checkpoint::from_bytes(&ckpt.to_bytes().unwrap()).unwrap();
            assert_eq!(back.config, config, "{kind}");
        }
    }
}
