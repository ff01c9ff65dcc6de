//! The GPU backend: adapter and device ([`GpuContext`]), and the optimizer
//! whose parameters, gradients and state live in GPU buffers
//! ([`GpuOptimizer`]).

mod context;
mod optimizer;

pub use context::{AdapterCandidate, AdapterSelection, GpuContext};
pub use optimizer::{GpuOptimizer, GpuOptions};
