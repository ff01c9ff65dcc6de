//! # wgpu-optim
//!
//! Optimizer steps (SGD, momentum, Nesterov, Adagrad, RMSprop, Adam, AdamW,
//! LAMB, RAdam, Adamax, NAdam, ASGD, Adadelta, Rprop, Lion, AdEMAMix) for
//! millions or billions of parameters on any GPU that wgpu reaches (Vulkan,
//! Metal, DX12), one fused WGSL compute kernel per rule, the optimizer's
//! state kept on the GPU between steps, with global-norm gradient clipping
//! ([`ClipGradNorm`]) and PyTorch's learning-rate schedules ([`schedule`]).
//! Names, defaults and formulas follow `torch.optim` (PyTorch 2.15); a CPU
//! implementation of every rule checks the GPU and runs as a backend of its
//! own. Each rule's page ([`Sgd`], [`Adagrad`], [`RmsProp`], [`Adam`],
//! [`AdamW`], [`Lamb`], [`RAdam`], [`Adamax`], [`NAdam`], [`Asgd`],
//! [`Adadelta`], [`Rprop`], [`Lion`], [`AdEMAMix`]) gives its equations,
//! defaults and reference, with an example. Two rules treat a weight
//! matrix as a matrix, on both backends: [`Adafactor`] and [`Muon`], over
//! tensors given with their [`Shape`] ([`CpuOptimizer::with_shapes`],
//! [`GpuOptimizer::with_shapes`]).
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
//!
//! The repository's examples show both: `cargo run --release --example
//! trajectories` draws every rule's path across four error surfaces, and
//! `cargo run --release --example train` trains a small network on
//! handwritten digits with its own WGSL kernels for the forward and backward
//! passes, the optimizer stepping the model's buffers in place
//! ([`GpuOptimizer::from_buffers`], [`GpuOptimizer::record_step`] in the
//! same command encoder). The README takes a newcomer from installing Rust
//! to that trained model.
//!
//! # Cargo features
//!
//! Both are on by default and neither changes the library: a program that
//! only uses it can depend on `wgpu-optim = { version = "0.1",
//! default-features = false }`, which builds with wgpu, bytemuck,
//! safetensors, serde/serde_json (checkpoints, conformance cases), rayon
//! (the CPU backend), pollster and futures-intrusive (waiting on the GPU)
//! and thiserror.
//!
//! - `cli`: the `wgpu-optim` command (`bench`, `conformance`, `info`) and
//!   the `train` example, through `clap` and `indicatif`.
//! - `plot`: PNG plots for `wgpu-optim bench --plot` and the examples,
//!   through `plotters`.
#![warn(missing_docs)]

pub mod checkpoint;
mod clip;
pub mod conformance;
mod cpu;
mod error;
pub mod gpu;
mod groups;
mod layout;
mod optimizer;
pub mod precision;
pub mod rules;
pub mod schedule;
pub mod sharded;

pub use checkpoint::Checkpoint;
pub use clip::ClipGradNorm;
pub use cpu::CpuOptimizer;
pub use error::{Error, Result};
pub use gpu::{AdapterSelection, GpuContext, GpuOptimizer, GpuOptions, TensorView};
pub use groups::ParamGroup;
pub use layout::{Layout, Shape};
pub use optimizer::{CombineTensorSums, Optimizer};
pub use rules::{
    AdEMAMix, Adadelta, Adafactor, Adagrad, Adam, AdamW, AdamWScheduleFree, Adamax, Asgd, Config,
    Lamb, Lion, Muon, MuonAdjustLr, NAdam, RAdam, RmsProp, Rprop, RuleKind, Sgd, SgdScheduleFree,
};
pub use schedule::{
    AnnealStrategy, CyclicLr, CyclicMode, GroupScheduler, LrLambda, OneCycleLr, PlateauMode,
    PlateauState, ReduceLrOnPlateau, Schedule, Scheduler, ThresholdMode,
};
