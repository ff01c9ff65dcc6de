//! The first things a new user sees: which adapters are looked at, and what
//! `wgpu-optim info` and `wgpu-optim bench` print around their results.

use wgpu_optim::{AdapterSelection, GpuContext};

/// With all backends selected, GL is looked at only where Vulkan, Metal and
/// DX12 have no eligible adapter (its EGL probing prints `error:` lines on a
/// machine without a display), and the adapter chosen is the first
/// eligible candidate.
#[test]
fn gl_is_searched_only_where_the_primary_backends_have_nothing() {
    let all = GpuContext::candidates(&AdapterSelection::default());
    let primary_found = all.iter().any(|c| {
        c.eligible() && wgpu::Backends::PRIMARY.contains(wgpu::Backends::from(c.info.backend))
    });
    if primary_found {
        let gl: Vec<_> = all
            .iter()
            .filter(|c| c.info.backend == wgpu::Backend::Gl)
            .map(|c| &c.info.name)
            .collect();
        assert!(gl.is_empty(), "GL adapters listed: {gl:?}");
    }
    let ctx = GpuContext::new().expect("these tests need a GPU adapter");
    let first = all
        .iter()
        .find(|c| c.eligible())
        .expect("an eligible candidate");
    assert_eq!(
        (&ctx.adapter_info().name, ctx.adapter_info().backend),
        (&first.info.name, first.info.backend)
    );
}

#[cfg(feature = "cli")]
mod binary {
    use std::process::{Command, Output};

    use wgpu_optim::GpuContext;

    fn run(args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_wgpu-optim"))
            .args(args)
            .env_remove("WGPU_BACKEND")
            .env_remove("WGPU_ADAPTER_NAME")
            .output()
            .expect("the binary runs");
        assert!(
            out.status.success(),
            "wgpu-optim {args:?}: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `--layout gpt2-small` is a model of its own: combined with another
    /// layout it is refused before anything runs (exit status 2, the
    /// error named). Running it takes half an hour on lavapipe (Muon's
    /// 1.5 TFLOP a step): BENCHMARKS.md has that run.
    #[test]
    fn bench_gpt2_small_is_not_combined_with_another_layout() {
        let out = Command::new(env!("CARGO_BIN_EXE_wgpu-optim"))
            .args([
                "bench",
                "--layout",
                "gpt2-small,packed",
                "--backends",
                "cpu",
            ])
            .output()
            .expect("the binary runs");
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("gpt2-small"), "{stderr}");
    }

    /// No line of stderr reads as a failure where nothing failed.
    fn assert_no_error_lines(what: &str, stderr: &str) {
        let bad: Vec<&str> = stderr
            .lines()
            .filter(|l| l.to_lowercase().contains("error"))
            .collect();
        assert!(bad.is_empty(), "{what} printed {bad:?}");
    }

    /// `info --json`: whether the adapter chosen is a software one.
    fn chosen_is_software() -> bool {
        let json = run(&["info", "--json"]);
        assert_no_error_lines("info --json", &String::from_utf8_lossy(&json.stderr));
        let v: serde_json::Value =
            serde_json::from_slice(&json.stdout).expect("info --json is one JSON object");
        v["chosen"]["software"]
            .as_bool()
            .unwrap_or_else(|| panic!("no chosen.software in {v}"))
    }

    #[test]
    fn info_prints_no_error_lines() {
        let out = run(&["info"]);
        assert_no_error_lines("info", &String::from_utf8_lossy(&out.stderr));
        let software = chosen_is_software();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.contains("a software adapter"), software, "{text}");
        // This machine's adapter is known: lavapipe reports DeviceType::Cpu.
        let ctx = GpuContext::new().expect("these tests need a GPU adapter");
        if ctx.adapter_info().device_type == wgpu::DeviceType::Cpu {
            assert!(software);
        }
    }

    /// A quick GPU-only bench: stdout holds only the JSON rows, stderr no
    /// error line (and, not being a terminal, no progress bar), the software
    /// adapter's note once; without --sizes a software adapter runs 1M
    /// only, with --sizes every size asked for.
    #[test]
    fn bench_on_the_gpu_says_what_it_runs_and_nothing_else() {
        let software = chosen_is_software();
        let quick = [
            "bench",
            "--json",
            "--backends",
            "gpu",
            "--rules",
            "sgd",
            "--steps",
            "2",
            "--warmup",
            "0",
            "--warmup-ms",
            "0",
            "--batch",
            "1",
        ];
        let sizes_of = |out: &Output| -> Vec<u64> {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| {
                    let v: serde_json::Value =
                        serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"));
                    v["n"].as_u64().expect("a row has n")
                })
                .collect()
        };
        let stderr_of = |out: &Output| String::from_utf8_lossy(&out.stderr).into_owned();

        let default = run(&quick);
        let stderr = stderr_of(&default);
        assert_no_error_lines("bench", &stderr);
        let notes = stderr.matches("is a software one").count();
        if software {
            assert_eq!(notes, 1, "{stderr}");
            assert!(stderr.contains("16M"), "{stderr}");
            assert_eq!(sizes_of(&default), vec![1 << 20]);
        } else {
            // A hardware adapter: the 16M rows run, no note (it runs both
            // default sizes, which is quick on a GPU).
            assert_eq!(notes, 0, "{stderr}");
            assert_eq!(sizes_of(&default), vec![1 << 20, 16 << 20]);
        }

        // Sizes asked for run, on any adapter; nothing is left out to say.
        let mut asked = quick.to_vec();
        asked.extend(["--sizes", "4K,2M"]);
        let asked = run(&asked);
        let stderr = stderr_of(&asked);
        assert_no_error_lines("bench --sizes", &stderr);
        assert_eq!(sizes_of(&asked), vec![4 << 10, 2 << 20]);
        assert!(!stderr.contains("left out"), "{stderr}");
        assert_eq!(
            stderr.matches("is a software one").count(),
            usize::from(software),
            "{stderr}"
        );
    }

    /// `--layout packed,scattered`: one GPU row per layout, the same model
    /// (1000 tensors unless `--tensors` says otherwise), the scattered one
    /// over 8 pooled buffers in one dispatch per (parameter pool, gradient
    /// pool) pair, both verified against the CPU (`run` checks the exit
    /// status: every row ran).
    #[test]
    fn bench_layouts_packed_and_scattered() {
        let out = run(&[
            "bench",
            "--json",
            "--backends",
            "gpu",
            "--rules",
            "adam,sgd_momentum",
            "--sizes",
            "16K",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--warmup-ms",
            "0",
            "--batch",
            "1",
            "--layout",
            "packed,scattered",
            "--verify",
            "--verify-steps",
            "2",
        ]);
        let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect();
        let row = |rule: &str, layout: &str| {
            rows.iter()
                .find(|r| r["rule"] == rule && r["layout"] == layout)
                .unwrap_or_else(|| panic!("no {rule} {layout} row in {rows:?}"))
        };
        for layout in ["packed", "scattered"] {
            let r = row("adam", layout);
            assert_eq!(r["tensors"], 1000, "{r}");
            assert_eq!(r["verify_ok"], true, "{r}");
        }
        assert_eq!(row("adam", "packed")["dispatches_per_step"], 1);
        assert_eq!(row("adam", "scattered")["dispatches_per_step"], 8);
        assert_eq!(row("adam", "scattered")["kernel"], "scalar");
        assert_eq!(row("sgd_momentum", "scattered")["verify_ok"], true);
    }
}
