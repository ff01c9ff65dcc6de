//! `wgpu-optim conformance`: runs PyTorch reference cases through the
//! library on the CPU and/or the GPU and reports how far each lands from
//! the reference, in units of the case's tolerance.
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use wgpu_optim::conformance::{expand_paths, run_case, Backend, Case, CaseResult};
use wgpu_optim::GpuContext;

/// Which backends to run the cases on.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// The CPU optimizer.
    Cpu,
    /// The GPU optimizer on the best adapter (`WGPU_BACKEND`,
    /// `WGPU_ADAPTER_NAME` choose another).
    Gpu,
    /// Both, CPU first.
    Both,
}

/// Arguments of `conformance`.
#[derive(clap::Args, Debug)]
pub struct ConformanceArgs {
    /// Where to run the cases.
    #[arg(long, value_enum, default_value_t = BackendChoice::Both)]
    pub backend: BackendChoice,
    /// One JSON object per line per case and backend instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also print the error of every tensor (text output only).
    #[arg(long, short)]
    pub verbose: bool,
    /// Case files (`.safetensors`) or folders of them.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        None => "-".to_string(),
        Some(r) if r.is_nan() => "NaN".to_string(),
        Some(r) => format!("{r:.4}"),
    }
}

/// The one-line text form of a result, the adapter padded to `adapter_width`.
fn line(r: &CaseResult, adapter_width: usize) -> String {
    let verdict = if r.pass { "PASS" } else { "FAIL" };
    let mut s = format!(
        "{:<48} {:<3} {:<adapter_width$} param {:>8} state {:>8}  {verdict}",
        r.case,
        r.backend,
        r.adapter,
        fmt_ratio(r.param_err_ratio),
        fmt_ratio(r.state_err_ratio),
    );
    if let Some(e) = &r.error {
        s.push_str("  ");
        s.push_str(e);
    } else if !r.failures.is_empty() {
        s.push_str("  ");
        s.push_str(&r.failures.join("; "));
    }
    s
}

/// Why a result failed, in a few words, for the summary.
fn reason(r: &CaseResult) -> String {
    if !r.unsupported.is_empty() {
        format!("not supported yet: {}", r.unsupported.join(", "))
    } else if let Some(e) = &r.error {
        e.clone()
    } else if !r.failures.is_empty() {
        r.failures.join("; ")
    } else {
        "over tolerance".to_string()
    }
}

/// Runs the cases; exit code 0 when every case passes on every backend
/// asked for, 1 otherwise (an unsupported case or a missing GPU adapter
/// counts as a failure).
pub fn run(args: ConformanceArgs) -> wgpu_optim::Result<ExitCode> {
    let files = expand_paths(&args.paths)?;
    let (cpu, gpu) = match args.backend {
        BackendChoice::Cpu => (true, false),
        BackendChoice::Gpu => (false, true),
        BackendChoice::Both => (true, true),
    };
    // One device for all cases; where none can be made, every GPU result
    // carries the error.
    let ctx: Option<Result<GpuContext, String>> =
        gpu.then(|| GpuContext::new().map_err(|e| e.to_string()));
    let adapter_width = match &ctx {
        Some(Ok(ctx)) => ctx.adapter_label().len(),
        _ => 4,
    };

    let mut results: Vec<CaseResult> = Vec::new();
    let stdout = std::io::stdout();
    for file in &files {
        let case = Case::load(file);
        let mut per_backend: Vec<CaseResult> = Vec::new();
        let label = file.display().to_string();
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| label.clone());
        if cpu {
            per_backend.push(match &case {
                Ok(c) => run_case(c, Backend::Cpu),
                Err(e) => CaseResult::not_run(&stem, &label, "cpu", "cpu", e.to_string()),
            });
        }
        if let Some(ctx) = &ctx {
            per_backend.push(match (&case, ctx) {
                (Ok(c), Ok(ctx)) => run_case(c, Backend::Gpu(ctx)),
                (Ok(c), Err(e)) => CaseResult::not_run(&c.name, &label, "gpu", "none", e.clone()),
                (Err(e), Ok(ctx)) => {
                    CaseResult::not_run(&stem, &label, "gpu", ctx.adapter_label(), e.to_string())
                }
                (Err(e), Err(_)) => {
                    CaseResult::not_run(&stem, &label, "gpu", "none", e.to_string())
                }
            });
        }
        let mut out = stdout.lock();
        for r in &per_backend {
            let text = if args.json {
                serde_json::to_string(r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
            } else {
                line(r, adapter_width)
            };
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = writeln!(out, "{text}");
            if args.verbose && !args.json {
                for t in &r.tensors {
                    let torch = t
                        .torch_f32_abs_err
                        .map(|e| format!("  (torch f32: {e:.3e})"))
                        .unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "    {:<16} {:>2}  max err {:.3e} at [{}]  atol {:.3e}  ratio {:.4}{torch}",
                        t.what, t.tensor, t.max_abs_err, t.worst_index, t.atol, t.ratio
                    );
                }
            }
        }
        let _ = out.flush();
        results.extend(per_backend);
    }

    // Summary, to stderr: counts, then each failing case with its backends
    // and why (unsupported features named).
    let passed = results.iter().filter(|r| r.pass).count();
    let total = results.len();
    let backends = match (cpu, gpu) {
        (true, true) => "cpu, gpu",
        (true, false) => "cpu",
        _ => "gpu",
    };
    let mut failed: Vec<(String, Vec<String>, String)> = Vec::new();
    for r in results.iter().filter(|r| !r.pass) {
        let why = reason(r);
        match failed
            .iter_mut()
            .find(|(case, _, w)| *case == r.case && *w == why)
        {
            Some((_, b, _)) => b.push(r.backend.clone()),
            None => failed.push((r.case.clone(), vec![r.backend.clone()], why)),
        }
    }
    let unsupported = results
        .iter()
        .filter(|r| !r.pass && !r.unsupported.is_empty())
        .count();
    let mut summary = format!(
        "conformance: {passed} of {total} runs passed ({} case file{} on {backends})",
        files.len(),
        if files.len() == 1 { "" } else { "s" }
    );
    if failed.is_empty() {
        summary.push_str("; all PASS");
    } else {
        summary.push_str(&format!(
            "; {} FAILED ({unsupported} unsupported, {} wrong or not run): {}",
            total - passed,
            total - passed - unsupported,
            failed
                .iter()
                .map(|(case, b, why)| format!("{case} [{}] {why}", b.join(", ")))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    eprintln!("{summary}");
    Ok(if passed == total {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
