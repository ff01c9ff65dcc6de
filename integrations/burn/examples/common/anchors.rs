//! burn 0.22's own optimizers beside this library's, for every rule both
//! have, with the same hyperparameters: the digits example times them and
//! the tests check that the first step of each that is the same rule lands
//! where ours does.

#![allow(dead_code)]

use burn::optim::momentum::MomentumConfig;
use burn::optim::{
    AdafactorConfig, AdamConfig, AdamWConfig, LambConfig, LionConfig, ModuleOptimizer, MuonConfig,
    RmsPropConfig, SgdConfig,
};
use wgpu_optim::{Adafactor, Adam, AdamW, Config, Lamb, Lion, Muon, RmsProp, Sgd};

pub const LR: f64 = 3e-3;
pub const WEIGHT_DECAY: f64 = 0.01;

/// This library's AdamW at `LR` and `WEIGHT_DECAY` (torch's other values).
pub fn adamw() -> AdamW {
    AdamW {
        lr: LR,
        weight_decay: WEIGHT_DECAY,
        ..AdamW::default()
    }
}

/// burn's AdamW with torch's values where burn's defaults differ (eps
/// 1e-5 and weight decay 1e-4 in burn).
pub fn burn_adamw() -> ModuleOptimizer {
    AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(WEIGHT_DECAY as f32)
        .init()
}

/// One rule through burn's optimizer and through ours, with the same
/// hyperparameters (burn's defaults set to torch's where they differ).
pub struct Anchor {
    pub name: &'static str,
    pub burn: ModuleOptimizer,
    pub ours: Config,
    /// burn's learning rate for its `step` (ours is in its config).
    pub lr: f64,
    /// Linear layers with biases (burn's Muon takes 2-D tensors only).
    pub bias: bool,
    /// Whether burn's optimizer is the rule torch's (and this library's)
    /// is. Not Adafactor: burn adds its eps1 to g² where torch floors the
    /// factored variance at eps1². Not Muon: burn takes classic momentum
    /// (`v ← μv + g`) where torch takes its EMA, the same direction after
    /// the Newton–Schulz normalisation except where a gradient's norm is
    /// under the eps floor.
    pub same_rule: bool,
}

/// Every rule burn 0.22 and this library share.
pub fn anchors() -> Vec<Anchor> {
    let sgd_momentum = MomentumConfig {
        momentum: 0.9,
        dampening: 0.0,
        nesterov: false,
    };
    let anchor = |name, burn, ours: Config, lr, bias| Anchor {
        name,
        burn,
        ours,
        lr,
        bias,
        same_rule: !matches!(name, "Adafactor" | "Muon"),
    };
    vec![
        anchor(
            "SGD momentum 0.9",
            SgdConfig::new().with_momentum(Some(sgd_momentum)).init(),
            Sgd {
                lr: LR,
                momentum: 0.9,
                ..Sgd::default()
            }
            .into(),
            LR,
            true,
        ),
        anchor(
            "RMSprop",
            RmsPropConfig::new()
                .with_alpha(0.99)
                .with_momentum(0.0)
                .with_epsilon(1e-8)
                .init(),
            RmsProp {
                lr: LR,
                ..RmsProp::default()
            }
            .into(),
            LR,
            true,
        ),
        anchor(
            "Adam",
            AdamConfig::new().with_epsilon(1e-8).init(),
            Adam {
                lr: LR,
                ..Adam::default()
            }
            .into(),
            LR,
            true,
        ),
        anchor("AdamW", burn_adamw(), adamw().into(), LR, true),
        anchor(
            "Lion",
            LionConfig::new()
                .with_beta_1(0.9)
                .with_beta_2(0.99)
                .with_weight_decay(0.0)
                .init(),
            Lion {
                lr: 1e-4,
                betas: (0.9, 0.99),
                weight_decay: 0.0,
                ..Lion::default()
            }
            .into(),
            1e-4,
            true,
        ),
        anchor(
            "LAMB",
            LambConfig::new()
                .with_epsilon(1e-6)
                .with_weight_decay(WEIGHT_DECAY as f32)
                .init(),
            Lamb {
                lr: LR,
                eps: 1e-6,
                weight_decay: WEIGHT_DECAY,
                ..Lamb::default()
            }
            .into(),
            LR,
            true,
        ),
        anchor(
            "Adafactor",
            AdafactorConfig::new().init(),
            Adafactor::default().into(),
            Adafactor::default().lr,
            true,
        ),
        anchor(
            "Muon",
            MuonConfig::new().init(),
            Muon {
                lr: 0.02,
                weight_decay: 0.0,
                ..Muon::default()
            }
            .into(),
            0.02,
            false,
        ),
    ]
}
