//! The GPU backend: adapter and device ([`GpuContext`]), and the optimizer
//! whose parameters, gradients and state live in GPU buffers
//! ([`GpuOptimizer`]).

mod blockwise;
mod chunks;
mod context;
mod groups;
mod kernels;
mod matrix;
mod mode;
mod optimizer;
mod precision;
mod readback;
mod resources;
mod skip;
mod tensor_sums;
mod uniforms;
mod views;

pub use context::{AdapterCandidate, AdapterSelection, GpuContext};
pub use optimizer::{GpuOptimizer, GpuOptions};
pub use views::TensorView;
