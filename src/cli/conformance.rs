//! `wgpu-optim conformance`.
use std::process::ExitCode;

/// Arguments of `conformance`.
#[derive(clap::Args, Debug)]
pub struct ConformanceArgs {}

pub fn run(_args: ConformanceArgs) -> wgpu_optim::Result<ExitCode> {
    Err(wgpu_optim::Error::Unsupported("conformance".into()))
}
