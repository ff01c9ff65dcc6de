//! # wgpu-optim
//!
//! Optimizer steps (SGD, momentum, Nesterov, Adagrad, RMSprop, Adam, AdamW)
//! for millions or billions of parameters on any GPU that wgpu reaches
//! (Vulkan, Metal, DX12), one fused WGSL compute kernel per rule, the
//! optimizer's state kept on the GPU between steps. Names, defaults and
//! formulas follow `torch.optim` (PyTorch 2.15); a CPU implementation of
//! every rule checks the GPU and runs as a backend of its own.
//!
//! ```
//! use wgpu_optim::{CpuOptimizer, Sgd};
//! let mut opt = CpuOptimizer::new(Sgd { lr: 0.1, momentum: 0.9, ..Sgd::default() }, &[&[1.0f32, 2.0]])?;
//! opt.step(&[&[1.0, -1.0]])?;
//! assert_eq!(opt.param(0), &[0.9, 2.1]);
//! # Ok::<(), wgpu_optim::Error>(())
//! ```
//!
//! On the GPU, [`GpuContext::new`] picks the best adapter and
//! [`GpuOptimizer`] steps packed buffers, either its own (upload and read
//! back host slices) or the caller's ([`GpuOptimizer::from_buffers`]).
#![warn(missing_docs)]

mod clip;
pub mod conformance;
mod cpu;
mod error;
pub mod gpu;
mod layout;
pub mod rules;
pub mod schedule;

pub use clip::ClipGradNorm;
pub use cpu::CpuOptimizer;
pub use error::{Error, Result};
pub use gpu::{AdapterSelection, GpuContext, GpuOptimizer, GpuOptions};
pub use layout::Layout;
pub use rules::{Adagrad, Adam, AdamW, Config, Lamb, RmsProp, RuleKind, Sgd};
pub use schedule::{AnnealStrategy, CyclicLr, CyclicMode, OneCycleLr, Schedule, Scheduler};
