//! The schedules' argument checks and torch's repeated multiplication.

use crate::error::{Error, Result};

/// `lr` multiplied by `gamma` `n` times, one rounding each time as torch's
/// recursion does; stops early at a fixed point (`gamma = 1`, 0, infinity),
/// so that even a position near `u64::MAX` is quick.
pub(super) fn repeat_multiply(mut lr: f64, gamma: f64, n: u64) -> f64 {
    for _ in 0..n {
        let next = lr * gamma;
        if next == lr {
            break;
        }
        lr = next;
    }
    lr
}

pub(super) fn check_finite(name: &'static str, v: f64) -> Result<()> {
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

pub(super) fn check_non_negative(name: &'static str, v: f64) -> Result<()> {
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

pub(super) fn check_positive(name: &'static str, v: f64) -> Result<()> {
    check_finite(name, v)?;
    if v <= 0.0 {
        return Err(Error::InvalidHyperparameter {
            name,
            value: v,
            reason: "must be > 0",
        });
    }
    Ok(())
}

pub(super) fn check_at_least_one(name: &'static str, v: u64) -> Result<()> {
    if v == 0 {
        return Err(Error::InvalidHyperparameter {
            name,
            value: 0.0,
            reason: "must be >= 1",
        });
    }
    Ok(())
}

pub(super) fn check_momenta(base: f64, max: f64) -> Result<()> {
    check_non_negative("base_momentum", base)?;
    check_non_negative("max_momentum", max)?;
    if max < base {
        return Err(Error::InvalidHyperparameter {
            name: "max_momentum",
            value: max,
            reason: "must be >= base_momentum",
        });
    }
    Ok(())
}
