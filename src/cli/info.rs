//! `wgpu-optim info`.
use std::process::ExitCode;

pub fn run() -> wgpu_optim::Result<ExitCode> {
    Err(wgpu_optim::Error::Unsupported("info".into()))
}
