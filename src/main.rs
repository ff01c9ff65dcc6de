//! The `wgpu-optim` command: `bench` (the main job), `conformance` and `info`.

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Fused GPU optimizer steps, matched to torch.optim.
#[derive(Parser, Debug)]
#[command(name = "wgpu-optim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Median step time and GB/s of every rule on the CPU and the GPU adapter.
    Bench(cli::bench::BenchArgs),
    /// Runs PyTorch reference cases (safetensors files or folders of them)
    /// through the library and compares parameters and state.
    Conformance(cli::conformance::ConformanceArgs),
    /// Lists the adapters found, the one chosen and why, its limits and features.
    Info(cli::info::InfoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(args) => cli::bench::run(args),
        Command::Conformance(args) => cli::conformance::run(args),
        Command::Info(args) => cli::info::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wgpu-optim: {e}");
            ExitCode::from(2)
        }
    }
}
