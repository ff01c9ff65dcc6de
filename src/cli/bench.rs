//! `wgpu-optim bench`.
use std::process::ExitCode;

/// Arguments of `bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {}

pub fn run(_args: BenchArgs) -> wgpu_optim::Result<ExitCode> {
    Err(wgpu_optim::Error::Unsupported("bench".into()))
}
