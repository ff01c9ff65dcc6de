//! The rule registry: every rule it lists has a name that parses back, a
//! default configuration, bench presets, and torch's keyword arguments
//! both ways (a checkpoint's `param_groups[0]`, a case file's `hyper`).

use serde_json::Map;
use wgpu_optim::conformance::{config_from_hyper, CASE_RULES};
use wgpu_optim::{Adagrad, Adam, AdamW, Checkpoint, Config, Lamb, RmsProp, RuleKind, Sgd};

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
        assert!(!presets.is_empty(), "{name}: no bench preset");
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
/// every preset and default.
#[test]
fn torch_keyword_arguments_round_trip_through_a_checkpoint() {
    for kind in RuleKind::ALL {
        assert!(
            unusual_options().iter().any(|c| c.kind() == kind),
            "{kind}: add its options to unusual_options"
        );
        let configs = std::iter::once(kind.default_config())
            .chain(kind.presets().into_iter().map(|p| p.config));
        for config in configs.chain(unusual_options().into_iter().filter(|c| c.kind() == kind)) {
            let ckpt = Checkpoint::new(config.clone(), &[3, 2]).unwrap();
            let back = Checkpoint::from_bytes(&ckpt.to_bytes().unwrap()).unwrap();
            assert_eq!(back.config, config, "{kind}");
        }
    }
}

/// Every option away from its default, this crate's own ones included.
fn unusual_options() -> Vec<Config> {
    vec![
        Sgd {
            lr: 0.1,
            momentum: 0.5,
            dampening: 0.25,
            weight_decay: 0.01,
            nesterov: false,
            maximize: true,
        }
        .into(),
        Adagrad {
            lr_decay: 0.1,
            initial_accumulator_value: 0.5,
            maximize: true,
            eps_inside_sqrt: true,
            ..Adagrad::default()
        }
        .into(),
        RmsProp {
            momentum: 0.9,
            centered: true,
            maximize: true,
            eps_inside_sqrt: true,
            ..RmsProp::default()
        }
        .into(),
        Adam {
            betas: (0.8, 0.99),
            amsgrad: true,
            maximize: true,
            eps_inside_sqrt: true,
            ..Adam::default()
        }
        .into(),
        AdamW {
            weight_decay: 0.0,
            amsgrad: true,
            eps_inside_sqrt: true,
            ..AdamW::default()
        }
        .into(),
        Lamb {
            trust_ratio_clamp: Some((0.5, 2.0)),
            unit_ratio_without_decay: true,
            eps_inside_sqrt: true,
            maximize: true,
            ..Lamb::default()
        }
        .into(),
    ]
}
