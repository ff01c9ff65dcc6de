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

/// Mesa's Vulkan device-select layer (installed with lavapipe and Mesa's
/// other Vulkan drivers) asks Wayland for the display's GPU each time the
/// adapters are listed; without a display, libwayland prints `error:
/// XDG_RUNTIME_DIR is invalid or not set in the environment.` each time,
/// which reads as a failure where nothing failed. Where there is no display
/// and nothing asks the layer for a device, it has nothing to choose with:
/// turn it off (`NODEVICE_SELECT=1`, the switch in its manifest). Here, before
/// any thread exists, setting a variable is safe; a library cannot do it.
fn quiet_headless_device_select() {
    let unset = |k: &str| std::env::var_os(k).is_none_or(|v| v.is_empty());
    let headless = ["XDG_RUNTIME_DIR", "WAYLAND_DISPLAY", "DISPLAY"]
        .into_iter()
        .all(unset);
    let layer_asked = ["NODEVICE_SELECT", "MESA_VK_DEVICE_SELECT", "DRI_PRIME"]
        .into_iter()
        .any(|k| !unset(k));
    if headless && !layer_asked {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}

fn main() -> ExitCode {
    quiet_headless_device_select();
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
