//! Subcommands of the `wgpu-optim` binary.

pub mod bench;
pub mod conformance;
pub mod info;
