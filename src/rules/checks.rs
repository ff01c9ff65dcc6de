//! What the rules share outside their loops: hyperparameter checks as
//! torch's constructors do them, the setters' checks, bias corrections,
//! and small conversions.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// `json!` of an object literal, as the object.
pub(crate) fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// `1 − βᵗ` in f64, the bias correction of step `t` (1 for the first):
/// `−expm1(t·ln β)` keeps its digits for β close to 1 and t large; β = 0
/// gives 1.
pub(crate) fn bias_correction(beta: f64, step: u64) -> f64 {
    if beta == 0.0 {
        1.0
    } else {
        -(step as f64 * beta.ln()).exp_m1()
    }
}

pub(crate) fn check_finite(name: &'static str, v: f64) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Error::InvalidHyperparameter {
            name,
            value: v,
            reason: "must be finite",
        })
    }
}

/// `set_momentum` of the rules whose momentum lives in a buffer (SGD,
/// RMSprop): it can change only while the optimizer has the buffer.
pub(crate) fn set_buffered_momentum(
    rule: &'static str,
    momentum: &mut f64,
    value: f64,
    has_buffer: bool,
) -> Result<()> {
    if !has_buffer {
        return Err(Error::NoMomentum { rule });
    }
    check_non_negative("momentum", value)?;
    *momentum = value;
    Ok(())
}

/// `set_momentum` of the rules whose momentum is `betas[0]` (the Adam
/// family, LAMB).
pub(crate) fn set_beta1(betas: &mut (f64, f64), value: f64) -> Result<()> {
    check_unit_interval("betas[0]", value)?;
    betas.0 = value;
    Ok(())
}

pub(crate) fn check_non_negative(name: &'static str, v: f64) -> Result<()> {
    check_finite(name, v)?;
    if v < 0.0 {
        return Err(Error::InvalidHyperparameter {
            name,
            value: v,
            reason: "must be >= 0",
        });
    }
    Ok(())
}

pub(crate) fn check_unit_interval(name: &'static str, v: f64) -> Result<()> {
    check_finite(name, v)?;
    if !(0.0..1.0).contains(&v) {
        return Err(Error::InvalidHyperparameter {
            name,
            value: v,
            reason: "must be in [0, 1)",
        });
    }
    Ok(())
}

/// A `β` that may also be 1 (Lion's betas, AdEMAMix's `β3`): in `[0, 1]`.
pub(crate) fn check_closed_unit_interval(name: &'static str, v: f64) -> Result<()> {
    check_finite(name, v)?;
    if !(0.0..=1.0).contains(&v) {
        return Err(Error::InvalidHyperparameter {
            name,
            value: v,
            reason: "must be in [0, 1]",
        });
    }
    Ok(())
}

/// The factor a loss-scaled gradient is multiplied by, as torch's
/// `GradScaler` computes it: the scale rounded to `f32`, its reciprocal
/// taken in `f64` and rounded to `f32` (`scale.double().reciprocal().float()`).
/// Refuses a scale that is not finite and positive in `f32`, or whose
/// reciprocal is not (a denormal scale).
pub(crate) fn inverse_grad_scale(scale: f64) -> Result<f32> {
    let s32 = scale as f32;
    let inv = (1.0 / s32 as f64) as f32;
    if !(scale.is_finite() && scale > 0.0 && s32.is_finite() && s32 > 0.0 && inv.is_finite()) {
        return Err(Error::InvalidHyperparameter {
            name: "grad_scale",
            value: scale,
            reason: "must be finite and > 0 in f32, with a finite reciprocal",
        });
    }
    Ok(inv)
}

/// A boolean option as the value of a WGSL `override` constant.
pub(crate) fn bool_override(x: bool) -> f64 {
    if x {
        1.0
    } else {
        0.0
    }
}
