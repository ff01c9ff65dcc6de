//! `wgpu-optim info`: every adapter wgpu finds, which one
//! [`GpuContext::new`] chooses and why, and that device's limits and
//! features.
//!
//! The choice it explains is the library's own (`GpuContext::with_selection`):
//! Vulkan, Metal and DX12 adapters are looked at first and GL only where none
//! of them is eligible (unless `WGPU_BACKEND` asks for GL), so that GL's EGL
//! probing, which prints `XDG_RUNTIME_DIR` errors on a machine without a
//! display, does not run where it is not needed; among those, hardware
//! before software (discrete, integrated, virtual, other, CPU), then
//! Vulkan/Metal before DX12 before GL. `WGPU_BACKEND` and
//! `WGPU_ADAPTER_NAME` restrict the candidates.

use std::process::ExitCode;

use serde_json::{json, Value};
use wgpu_optim::gpu::AdapterCandidate;
use wgpu_optim::{AdapterSelection, GpuContext};

/// Arguments of `info`.
#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// One JSON object on stdout instead of text.
    #[arg(long)]
    json: bool,
}

/// The features worth knowing about for this crate, in the order printed.
const KEY_FEATURES: [(&str, wgpu::Features); 8] = [
    ("TIMESTAMP_QUERY", wgpu::Features::TIMESTAMP_QUERY),
    (
        "TIMESTAMP_QUERY_INSIDE_PASSES",
        wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES,
    ),
    (
        "TIMESTAMP_QUERY_INSIDE_ENCODERS",
        wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS,
    ),
    ("SHADER_F16", wgpu::Features::SHADER_F16),
    ("SHADER_F64", wgpu::Features::SHADER_F64),
    ("SUBGROUP", wgpu::Features::SUBGROUP),
    ("PIPELINE_CACHE", wgpu::Features::PIPELINE_CACHE),
    (
        "MAPPABLE_PRIMARY_BUFFERS",
        wgpu::Features::MAPPABLE_PRIMARY_BUFFERS,
    ),
];

/// The limits that decide how large a model fits and how a step is dispatched.
fn key_limits(l: &wgpu::Limits) -> Vec<(&'static str, u64)> {
    vec![
        ("max_buffer_size", l.max_buffer_size),
        (
            "max_storage_buffer_binding_size",
            l.max_storage_buffer_binding_size,
        ),
        (
            "max_storage_buffers_per_shader_stage",
            l.max_storage_buffers_per_shader_stage.into(),
        ),
        (
            "max_uniform_buffer_binding_size",
            l.max_uniform_buffer_binding_size,
        ),
        ("max_bind_groups", l.max_bind_groups.into()),
        (
            "max_bindings_per_bind_group",
            l.max_bindings_per_bind_group.into(),
        ),
        (
            "max_dynamic_uniform_buffers_per_pipeline_layout",
            l.max_dynamic_uniform_buffers_per_pipeline_layout.into(),
        ),
        (
            "max_compute_workgroups_per_dimension",
            l.max_compute_workgroups_per_dimension.into(),
        ),
        (
            "max_compute_invocations_per_workgroup",
            l.max_compute_invocations_per_workgroup.into(),
        ),
        (
            "max_compute_workgroup_size_x",
            l.max_compute_workgroup_size_x.into(),
        ),
        (
            "max_compute_workgroup_storage_size",
            l.max_compute_workgroup_storage_size.into(),
        ),
        (
            "min_storage_buffer_offset_alignment",
            l.min_storage_buffer_offset_alignment.into(),
        ),
        (
            "min_uniform_buffer_offset_alignment",
            l.min_uniform_buffer_offset_alignment.into(),
        ),
    ]
}

fn same_adapter(a: &wgpu::AdapterInfo, b: &wgpu::AdapterInfo) -> bool {
    a.name == b.name
        && a.backend == b.backend
        && a.vendor == b.vendor
        && a.device == b.device
        && a.device_type == b.device_type
        && a.driver == b.driver
}

fn candidate_json(c: &AdapterCandidate) -> Value {
    json!({
        "name": c.info.name,
        "backend": format!("{:?}", c.info.backend),
        "device_type": format!("{:?}", c.info.device_type),
        "vendor": format!("0x{:04x}", c.info.vendor),
        "device": format!("0x{:04x}", c.info.device),
        "driver": c.info.driver,
        "driver_info": c.info.driver_info,
        "eligible": c.eligible(),
        "reason": c.reason(),
        "rank": [c.rank.0, c.rank.1],
    })
}

fn print_candidates(title: &str, list: &[AdapterCandidate]) {
    println!("{title}");
    if list.is_empty() {
        println!("  (none)");
    }
    for (i, c) in list.iter().enumerate() {
        let verdict = if c.eligible() {
            "eligible"
        } else {
            "NOT eligible"
        };
        println!(
            "  {}. {} [{:?}, {:?}] — {verdict}: {}",
            i + 1,
            c.info.name,
            c.info.backend,
            c.info.device_type,
            c.reason()
        );
        let driver = match (c.info.driver.is_empty(), c.info.driver_info.is_empty()) {
            (true, true) => "(not reported)".to_string(),
            (false, true) => c.info.driver.clone(),
            (true, false) => c.info.driver_info.clone(),
            (false, false) => format!("{} — {}", c.info.driver, c.info.driver_info),
        };
        println!(
            "     driver: {driver}; vendor 0x{:04x}, device 0x{:04x}",
            c.info.vendor, c.info.device
        );
    }
}

/// In words, why `chosen` won among `list` (the candidates of the selection
/// in force, best first).
fn why_chosen(chosen: &wgpu::AdapterInfo, list: &[AdapterCandidate]) -> String {
    let Some(me) = list.iter().find(|c| same_adapter(&c.info, chosen)) else {
        return "it is the adapter wgpu returned for the selection in force".into();
    };
    let mut why = me.reason();
    let beaten: Vec<String> = list
        .iter()
        .filter(|c| c.eligible() && !same_adapter(&c.info, chosen))
        .map(|c| {
            let tier = if c.rank.0 > me.rank.0 {
                " (hardware before software)"
            } else if c.rank.0 == me.rank.0 && c.rank.1 > me.rank.1 {
                " (Vulkan/Metal before DX12 before GL)"
            } else {
                ""
            };
            format!("{} [{:?}]{tier}", c.info.name, c.info.backend)
        })
        .collect();
    if beaten.is_empty() {
        why.push_str("; the only eligible adapter");
    } else {
        why.push_str(&format!("; preferred over {}", beaten.join(", ")));
    }
    why
}

fn env_text() -> (Option<String>, Option<String>) {
    let get = |k: &str| std::env::var(k).ok().filter(|s| !s.is_empty());
    (get("WGPU_BACKEND"), get("WGPU_ADAPTER_NAME"))
}

/// Runs `info`.
pub fn run(args: InfoArgs) -> wgpu_optim::Result<ExitCode> {
    let all = GpuContext::candidates(&AdapterSelection::default());
    let selection = AdapterSelection::from_env();
    let (env_backend, env_name) = env_text();
    let filtered = env_backend.is_some() || env_name.is_some();
    let selected = if filtered {
        GpuContext::candidates(&selection)
    } else {
        all.clone()
    };
    let chosen = GpuContext::new();

    if args.json {
        let mut out = json!({
            "adapters": all.iter().map(candidate_json).collect::<Vec<_>>(),
            "env": { "WGPU_BACKEND": env_backend, "WGPU_ADAPTER_NAME": env_name },
        });
        if filtered {
            out["adapters_with_env_selection"] =
                Value::Array(selected.iter().map(candidate_json).collect());
        }
        match &chosen {
            Ok(ctx) => {
                let info = ctx.adapter_info();
                let limits = ctx.limits();
                let device_features = ctx.device().features();
                let adapter_features = selected
                    .iter()
                    .find(|c| same_adapter(&c.info, info))
                    .map(|c| c.features)
                    .unwrap_or(device_features);
                out["chosen"] = json!({
                    "label": ctx.adapter_label(),
                    "name": info.name,
                    "backend": format!("{:?}", info.backend),
                    "device_type": format!("{:?}", info.device_type),
                    "software": super::software_adapter(info),
                    "driver": info.driver,
                    "driver_info": info.driver_info,
                    "why": why_chosen(info, &selected),
                    "limits": key_limits(&limits)
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), json!(v)))
                        .collect::<serde_json::Map<_, _>>(),
                    "device_features": device_features
                        .iter_names()
                        .map(|(n, _)| n)
                        .collect::<Vec<_>>(),
                    "adapter_features": adapter_features
                        .iter_names()
                        .map(|(n, _)| n)
                        .collect::<Vec<_>>(),
                    "timestamp_query": device_features.contains(wgpu::Features::TIMESTAMP_QUERY),
                });
            }
            Err(e) => out["error"] = json!(e.to_string()),
        }
        println!("{out}");
    } else {
        print_candidates(
            &format!(
                "Adapters found (no filter; GL looked at only where Vulkan/Metal/DX12 have none): {}",
                all.len()
            ),
            &all,
        );
        println!();
        println!(
            "Selection: WGPU_BACKEND = {}, WGPU_ADAPTER_NAME = {}",
            env_backend.as_deref().unwrap_or("(unset: all backends)"),
            env_name.as_deref().unwrap_or("(unset: any name)")
        );
        if filtered {
            print_candidates("Adapters with this selection, best first:", &selected);
        }
        println!(
            "Rule: Vulkan/Metal/DX12 adapters first (GL only where they have none, unless \
             WGPU_BACKEND asks for it); hardware before software; Vulkan/Metal before DX12 before GL."
        );
        println!();
        if let Ok(ctx) = &chosen {
            let info = ctx.adapter_info();
            println!("Chosen by GpuContext::new(): {}", ctx.adapter_label());
            println!("  why: {}", why_chosen(info, &selected));
            println!("  device type: {:?}", info.device_type);
            if super::software_adapter(info) {
                println!(
                    "  a software adapter, running on the CPU: right for correctness, \
                     nothing to learn about GPU speed from it"
                );
            }
            println!(
                "  driver: {} {}",
                if info.driver.is_empty() {
                    "(not reported)"
                } else {
                    &info.driver
                },
                info.driver_info
            );
            println!();
            println!("Device limits (as requested: the adapter's own):");
            let limits = ctx.limits();
            for (name, value) in key_limits(&limits) {
                println!("  {name:<50} {value:>22}{}", human_bytes(name, value));
            }
            println!();
            let device_features = ctx.device().features();
            let adapter_features = selected
                .iter()
                .find(|c| same_adapter(&c.info, info))
                .map(|c| c.features)
                .unwrap_or(device_features);
            println!("Features (adapter / enabled on the device):");
            for (name, f) in KEY_FEATURES {
                let yn = |b: bool| if b { "yes" } else { "no" };
                println!(
                    "  {name:<34} {:>3} / {:>3}",
                    yn(adapter_features.contains(f)),
                    yn(device_features.contains(f))
                );
            }
            if device_features.contains(wgpu::Features::TIMESTAMP_QUERY) {
                println!(
                    "  timestamp period: {} ns per tick (bench reports kernel_ms)",
                    ctx.queue().get_timestamp_period()
                );
            } else {
                println!("  no TIMESTAMP_QUERY: bench reports wall-clock times only");
            }
            let names: Vec<&str> = adapter_features.iter_names().map(|(n, _)| n).collect();
            println!("  all adapter features: {}", names.join(", "));
        }
    }

    match chosen {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            if !args.json {
                println!("Chosen by GpuContext::new(): none (see the error below)");
            }
            eprintln!("wgpu-optim: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// ` (64.0 GiB)` after byte-valued limits of a useful size.
fn human_bytes(name: &str, v: u64) -> String {
    let is_bytes = name.ends_with("_size") || name.ends_with("alignment");
    if !is_bytes || v < 1 << 20 {
        return String::new();
    }
    if v >= 1 << 30 {
        format!("  ({:.1} GiB)", v as f64 / (1u64 << 30) as f64)
    } else {
        format!("  ({:.1} MiB)", v as f64 / (1u64 << 20) as f64)
    }
}
