//! [`LrLambda`]: the Rust closure of `LambdaLR` and `MultiplicativeLR`.

use std::fmt;
use std::sync::Arc;

/// The function of the epoch that `LambdaLR` multiplies the base lr by and
/// `MultiplicativeLR` multiplies the previous lr by (torch's `lr_lambda`),
/// called with the scheduler's local epoch (0 for its initial step).
///
/// A closure is code, not data: [`Schedule::to_json`](super::Schedule::to_json)
/// writes only the kind (`{"kind": "lambda"}`), [`Schedule::from_json`](super::Schedule::from_json)
/// refuses such a schedule, and a checkpoint keeps the scheduler's position
/// and lr but not its function, as torch's `state_dict` leaves plain
/// functions out (see [`crate::checkpoint::SchedulerState`]).
///
/// Two `LrLambda`s are equal when they are clones of the same closure
/// (the same allocation): closures cannot be compared by what they compute.
#[derive(Clone)]
pub struct LrLambda {
    f: Arc<dyn Fn(u64) -> f64 + Send + Sync>,
    /// A stand-in for a closure a checkpoint could not carry: only ever
    /// built to check a checkpoint's other fields, never run.
    placeholder: bool,
}

impl LrLambda {
    /// Wraps `f`, the factor as a function of the epoch.
    pub fn new(f: impl Fn(u64) -> f64 + Send + Sync + 'static) -> Self {
        LrLambda {
            f: Arc::new(f),
            placeholder: false,
        }
    }

    /// The factor at epoch `epoch`.
    pub fn call(&self, epoch: u64) -> f64 {
        (self.f)(epoch)
    }

    pub(super) fn placeholder() -> Self {
        LrLambda {
            f: Arc::new(|_| f64::NAN),
            placeholder: true,
        }
    }

    pub(super) fn is_placeholder(&self) -> bool {
        self.placeholder
    }
}

impl fmt::Debug for LrLambda {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LrLambda({:p})", Arc::as_ptr(&self.f).cast::<()>())
    }
}

impl PartialEq for LrLambda {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.f, &other.f)
    }
}
