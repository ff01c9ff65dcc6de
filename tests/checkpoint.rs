//! Checkpoints: saved at step k, restored into a fresh optimizer and
//! continued, a run ends bit for bit where the uninterrupted run ends, for
//! every rule (LAMB included), on the CPU and on the GPU; state moves
//! between the CPU and the GPU exactly; a writer killed mid-write leaves the
//! previous checkpoint intact; a file PyTorch wrote loads and continues as
//! PyTorch does; the file this library writes is what Python verified.
//!
//! Needs a GPU adapter: without one the GPU tests fail with
//! [`Error::NoAdapter`]'s text, which says what to install.

mod common;
use common::cases::{self, Input};
use common::{ctx, Backend, Rng};
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use wgpu_optim::checkpoint::Checkpoint;
use wgpu_optim::{
    Adam, AdamW, Config, CpuOptimizer, Error, GpuOptimizer, GpuOptions, Optimizer, Schedule,
    Scheduler, Sgd,
};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/checkpoint");

/// A fresh folder under the target directory.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("checkpoint-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const LENGTHS: [usize; 3] = [37, 1, 90];

fn initial() -> Vec<Vec<f32>> {
    let mut r = Rng(7);
    LENGTHS.iter().map(|&n| r.vec(n)).collect()
}

fn grads(step: usize) -> Vec<Vec<f32>> {
    let mut r = Rng(1000 + step as u64);
    LENGTHS.iter().map(|&n| r.vec(n)).collect()
}

fn refs(v: &[Vec<f32>]) -> Vec<&[f32]> {
    v.iter().map(|t| t.as_slice()).collect()
}

/// Every configuration of the table (tests/common/cases.rs) without a
/// schedule: every rule (LAMB included), every option that changes its
/// state tensors, some with clipping.
fn cases() -> Vec<Input> {
    cases::unscheduled()
}

const K: usize = 3;
const N: usize = 6;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Parameters and every state tensor, as bits, and the step count.
#[derive(Debug, PartialEq)]
struct Snap(Vec<u32>, Vec<(String, Vec<u32>)>, u64);

fn snap_ckpt(c: &Checkpoint) -> Snap {
    Snap(
        bits(c.params.as_ref().unwrap()),
        c.state.iter().map(|(n, v)| (n.clone(), bits(v))).collect(),
        c.step,
    )
}

fn gpu_options() -> GpuOptions {
    // Chunks of 64 elements: tensors straddle chunk boundaries.
    GpuOptions {
        max_chunk_elements: Some(64),
        ..GpuOptions::default()
    }
}

fn cpu() -> Backend {
    Backend::Cpu
}

fn gpu() -> Backend {
    Backend::Gpu(gpu_options())
}

/// Steps `from..to` of `case` on `backend`: on `opt`, or on a fresh
/// optimizer with the case's clipping.
fn run(
    backend: &Backend,
    case: &Input,
    from: usize,
    to: usize,
    opt: Option<Box<dyn Optimizer>>,
) -> Box<dyn Optimizer> {
    let mut opt = opt.unwrap_or_else(|| {
        let mut o = backend
            .build(case.config.clone(), &refs(&initial()))
            .unwrap();
        o.set_clip_grad_norm(case.clip).unwrap();
        o
    });
    for s in from..to {
        opt.step(&refs(&grads(s))).unwrap();
    }
    opt
}

fn file_name(what: &str) -> String {
    what.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Saved at K, restored two ways and continued to N: bit for bit the
/// uninterrupted run, on one backend.
fn save_restore_continue(backend: &Backend) {
    let dir = scratch(backend.name());
    for case in cases() {
        let what = &case.desc;
        let whole = run(backend, &case, 0, N, None);
        let first = run(backend, &case, 0, K, None);
        let path = dir.join(format!("{}.safetensors", file_name(what)));
        first.checkpoint().unwrap().save(&path).unwrap();
        drop(first);
        let ckpt = Checkpoint::load(&path).unwrap();
        assert_eq!(ckpt.step, K as u64, "{what}");
        assert_eq!(ckpt.clip, case.clip, "{what}");
        // Restored two ways: a new optimizer from the file's parameters,
        // and a fresh optimizer built from the initial parameters.
        let a = run(backend, &case, K, N, Some(backend.restore(&ckpt).unwrap()));
        let mut fresh = backend
            .build(case.config.clone(), &refs(&initial()))
            .unwrap();
        fresh.load_checkpoint(&ckpt).unwrap();
        let b = run(backend, &case, K, N, Some(fresh));
        let want = whole.checkpoint().unwrap();
        let got = a.checkpoint().unwrap();
        assert_eq!(snap_ckpt(&got), snap_ckpt(&want), "{what}: from_checkpoint");
        assert_eq!(
            snap_ckpt(&b.checkpoint().unwrap()),
            snap_ckpt(&want),
            "{what}: load_checkpoint"
        );
        assert_eq!(got, want, "{what}");
        assert_eq!(a.step_count(), N as u64, "{what}");
    }
}

#[test]
fn cpu_save_restore_continue_is_bit_for_bit() {
    save_restore_continue(&cpu());
}

#[test]
fn gpu_save_restore_continue_is_bit_for_bit() {
    save_restore_continue(&gpu());
}

/// State moves between the backends exactly; continued on the other
/// backend, the run stays within the GPU-vs-CPU rounding of
/// tests/gpu_vs_cpu.rs (and is printed: on lavapipe it is usually exact).
#[test]
fn cpu_to_gpu_and_gpu_to_cpu() {
    let mut exact = 0;
    let mut total = 0;
    let mut worst = 0.0f64;
    for case in cases() {
        let what = &case.desc;
        for (from, to) in [(cpu(), gpu()), (gpu(), cpu())] {
            let first = run(&from, &case, 0, K, None);
            let saved = first.checkpoint().unwrap();
            let ckpt = Checkpoint::from_bytes(&saved.to_bytes().unwrap()).unwrap();
            let moved = to.restore(&ckpt).unwrap();
            assert_eq!(
                snap_ckpt(&moved.checkpoint().unwrap()),
                snap_ckpt(&saved),
                "{what}: {} → {} transfer",
                from.name(),
                to.name()
            );
            let moved = run(&to, &case, K, N, Some(moved)).checkpoint().unwrap();
            let stayed = run(&from, &case, K, N, Some(first)).checkpoint().unwrap();
            total += 1;
            assert_eq!(moved.step, stayed.step);
            if snap_ckpt(&moved) == snap_ckpt(&stayed) {
                exact += 1;
                continue;
            }
            let pa = moved.params.as_ref().unwrap();
            let pb = stayed.params.as_ref().unwrap();
            for (x, y) in pa.iter().zip(pb) {
                let d = ((x - y).abs() / y.abs().max(1e-3)) as f64;
                worst = worst.max(d);
                assert!(d < 1e-4, "{what}: {x} vs {y}");
            }
        }
    }
    println!("cross-device continuations: {exact} of {total} bit for bit, worst relative difference {worst:e}");
}

/// A schedule's position travels with the checkpoint: the restored run
/// applies the same learning rates and ends bit for bit the same.
#[test]
fn scheduler_position_is_restored() {
    let config: Config = AdamW::default().into();
    let schedule = Schedule::warmup_cosine(0.1, 2, 10, 1e-5);
    let run = |opt: &mut CpuOptimizer, sched: &mut Scheduler, from: usize, to: usize| {
        for s in from..to {
            sched.apply_to_cpu(opt).unwrap();
            opt.step(&refs(&grads(s))).unwrap();
            sched.advance();
        }
    };
    let mut whole = CpuOptimizer::new(config.clone(), &refs(&initial())).unwrap();
    let mut ws = Scheduler::for_config(schedule.clone(), &config).unwrap();
    run(&mut whole, &mut ws, 0, N);

    let mut first = CpuOptimizer::new(config.clone(), &refs(&initial())).unwrap();
    let mut fs = Scheduler::for_config(schedule.clone(), &config).unwrap();
    run(&mut first, &mut fs, 0, K);
    let mut ckpt = first.checkpoint();
    ckpt.set_scheduler(Some(&fs));
    let path = scratch("sched").join("c.safetensors");
    ckpt.save(&path).unwrap();
    let back = Checkpoint::load(&path).unwrap();
    let mut rs = back.scheduler().unwrap().expect("a scheduler was saved");
    assert_eq!(rs, fs);
    assert_eq!(rs.lr().to_bits(), fs.lr().to_bits());
    let mut restored = CpuOptimizer::from_checkpoint(&back).unwrap();
    run(&mut restored, &mut rs, K, N);
    assert_eq!(restored.checkpoint(), whole.checkpoint());
    assert_eq!(rs, ws);

    // And on the GPU: a GPU run saved at K with its scheduler, restored
    // and continued, against the uninterrupted GPU run.
    let mut g = GpuOptimizer::with_options(ctx(), config.clone(), &refs(&initial()), gpu_options())
        .unwrap();
    let mut gs = Scheduler::for_config(schedule.clone(), &config).unwrap();
    for s in 0..K {
        gs.apply_to_gpu(&mut g).unwrap();
        g.step(&refs(&grads(s))).unwrap();
        gs.advance();
    }
    let mut ckpt = g.checkpoint().unwrap();
    ckpt.set_scheduler(Some(&gs));
    let back = Checkpoint::from_bytes(&ckpt.to_bytes().unwrap()).unwrap();
    let mut g = GpuOptimizer::from_checkpoint(ctx(), &back, gpu_options()).unwrap();
    let mut gs = back.scheduler().unwrap().unwrap();
    for s in K..N {
        gs.apply_to_gpu(&mut g).unwrap();
        g.step(&refs(&grads(s))).unwrap();
        gs.advance();
    }
    let mut gw =
        GpuOptimizer::with_options(ctx(), config.clone(), &refs(&initial()), gpu_options())
            .unwrap();
    let mut gws = Scheduler::for_config(schedule, &config).unwrap();
    for s in 0..N {
        gws.apply_to_gpu(&mut gw).unwrap();
        gw.step(&refs(&grads(s))).unwrap();
        gws.advance();
    }
    assert_eq!(
        snap_ckpt(&g.checkpoint().unwrap()),
        snap_ckpt(&gw.checkpoint().unwrap())
    );
}

/// The tensor names, dtypes, shapes and metadata of the file are
/// PyTorch's vocabulary.
#[test]
fn file_uses_pytorch_names() {
    let mut opt = CpuOptimizer::new(
        Adam {
            amsgrad: true,
            ..Adam::default()
        },
        &refs(&initial()),
    )
    .unwrap();
    opt.step(&refs(&grads(0))).unwrap();
    let bytes = opt.checkpoint().to_bytes().unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    let mut want = Vec::new();
    for i in 0..LENGTHS.len() {
        for n in ["exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"] {
            want.push(format!("state.{i}.{n}"));
        }
        want.push(format!("params.{i}"));
    }
    want.sort();
    assert_eq!(names, want.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let t = st.tensor("state.2.exp_avg").unwrap();
    assert_eq!(t.shape(), &[90]);
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    let step = st.tensor("state.0.step").unwrap();
    assert_eq!(step.shape(), &[] as &[usize]);
    assert_eq!(step.data(), 1.0f32.to_le_bytes());
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["rule"], "adam");
    assert_eq!(meta["format"], "wgpu-optim/checkpoint/1");
    let groups: serde_json::Value = serde_json::from_str(&meta["param_groups"]).unwrap();
    assert_eq!(groups[0]["betas"], serde_json::json!([0.9, 0.999]));
    assert_eq!(groups[0]["amsgrad"], true);
    assert_eq!(groups[0]["params"], serde_json::json!([0, 1, 2]));
}

/// Hyperparameters read back bit for bit, whatever their digits.
#[test]
fn hyperparameters_round_trip_exactly() {
    let awkward = [
        0.1,
        1.0 / 3.0,
        2.0f64.sqrt() / 7.0,
        1e-300,
        0.999_999_999_999_9,
        5e-324,
    ];
    for &x in &awkward {
        let config: Config = Adam {
            lr: x,
            betas: (x.min(0.5), 0.999),
            eps: x,
            ..Adam::default()
        }
        .into();
        let ckpt = Checkpoint::new(config.clone(), &[2]).unwrap();
        let back = Checkpoint::from_bytes(&ckpt.to_bytes().unwrap()).unwrap();
        assert_eq!(back.config, config, "{x:e}");
    }
}

/// The helper of [`killed_writer_leaves_the_previous_checkpoint`]: run in a
/// child process (this test binary, filtered to this test), it writes big
/// checkpoints to `$WGPU_OPTIM_KILL_PATH` in a loop until killed. Without
/// that variable (a normal `cargo test`) it returns at once.
#[test]
fn writer_child() {
    let Ok(path) = std::env::var("WGPU_OPTIM_KILL_PATH") else {
        return;
    };
    let n = 4 << 20;
    let params = vec![0.5f32; n];
    let mut opt = CpuOptimizer::new(Adam::default(), &[&params]).unwrap();
    let g = vec![0.25f32; n];
    loop {
        opt.step(&[&g]).unwrap();
        opt.checkpoint().save(&path).unwrap();
    }
}

/// SIGKILLs a process that writes checkpoints while a temporary file is
/// half written: the checkpoint at the path is the previous one, whole.
#[test]
fn killed_writer_leaves_the_previous_checkpoint() {
    let dir = scratch("kill");
    let path = dir.join("model.safetensors");
    let small = CpuOptimizer::new(
        Sgd {
            lr: 0.5,
            momentum: 0.9,
            ..Sgd::default()
        },
        &refs(&initial()),
    )
    .unwrap();
    let previous = small.checkpoint();
    previous.save(&path).unwrap();
    // The child's test name: this file is also a module of
    // tests/webgpu_limits.rs, where it is `checkpoint::writer_child`.
    let child_test = match module_path!().split_once("::") {
        Some((_, module)) => format!("{module}::writer_child"),
        None => "writer_child".to_string(),
    };
    let mut caught = 0;
    for round in 0..5 {
        // Each round restores the previous checkpoint first.
        previous.save(&path).unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &child_test, "--nocapture", "--test-threads", "1"])
            .env("WGPU_OPTIM_KILL_PATH", &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait until a temporary file exists and holds some data.
        let start = std::time::Instant::now();
        let tmp = loop {
            let found = std::fs::read_dir(&dir)
                .unwrap()
                .filter_map(|e| e.ok())
                .find(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(".model.safetensors.tmp.")
                        && e.metadata().map(|m| m.len() > (1 << 20)).unwrap_or(false)
                });
            if let Some(e) = found {
                break e.path();
            }
            assert!(
                start.elapsed().as_secs() < 60,
                "the writer never started a file"
            );
            std::thread::sleep(std::time::Duration::from_micros(200));
        };
        child.kill().unwrap(); // SIGKILL on Unix.
        child.wait().unwrap();
        let full = 8 + 4 * 3 * (4 << 20);
        let tmp_len = std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
        let loaded = Checkpoint::load(&path).unwrap_or_else(|e| panic!("round {round}: {e}"));
        if loaded == previous {
            if tmp_len > 0 && (tmp_len as usize) < full {
                caught += 1;
            }
        } else {
            // The child finished a whole write before the kill: the file
            // must then be a whole checkpoint of the child's.
            assert_eq!(loaded.lengths, vec![4 << 20], "round {round}");
        }
        // Stale temporary files are never read; remove them.
        for e in std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().contains(".tmp.") {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        if caught >= 2 {
            break;
        }
    }
    assert!(
        caught >= 1,
        "never killed the writer in the middle of a file"
    );
    println!("killed the writer mid-write {caught} time(s); the previous checkpoint loaded whole each time");
}

fn read_tensor(st: &SafeTensors<'_>, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|_| panic!("{name}"));
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn ulps(a: f32, b: f32) -> u32 {
    (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
}

/// `tests/data/checkpoint/torch_adam.safetensors` was written by PyTorch
/// (`gen_torch_checkpoint.py write`): torch.optim.Adam's state dict after
/// 5 steps, with only torch's information (no wgpu_optim metadata, a
/// [3, 4] tensor). It loads on the CPU and the GPU and the next step
/// matches PyTorch's to a few float32 roundings.
#[test]
fn a_file_pytorch_wrote_loads_and_continues_as_pytorch_does() {
    let ckpt = Checkpoint::load(Path::new(DATA).join("torch_adam.safetensors")).unwrap();
    assert_eq!(ckpt.lengths, vec![12, 5]);
    assert_eq!(ckpt.step, 5);
    assert_eq!(
        ckpt.config,
        Config::from(Adam {
            lr: 0.01,
            betas: (0.8, 0.99),
            eps: 1e-6,
            weight_decay: 0.1,
            ..Adam::default()
        })
    );
    let bytes = std::fs::read(Path::new(DATA).join("torch_adam_next.safetensors")).unwrap();
    let next = SafeTensors::deserialize(&bytes).unwrap();
    let g: Vec<Vec<f32>> = (0..2)
        .map(|i| read_tensor(&next, &format!("grads.{i}")))
        .collect();
    let mut cpu = CpuOptimizer::from_checkpoint(&ckpt).unwrap();
    cpu.step(&refs(&g)).unwrap();
    let mut gpu = GpuOptimizer::from_checkpoint(ctx(), &ckpt, GpuOptions::default()).unwrap();
    gpu.step(&refs(&g)).unwrap();
    let mut worst = 0;
    for (backend, got) in [
        ("cpu", cpu.checkpoint()),
        ("gpu", gpu.checkpoint().unwrap()),
    ] {
        assert_eq!(got.step, 6);
        let layout = wgpu_optim::Layout::new(&got.lengths).unwrap();
        for i in 0..2 {
            let mut pairs = vec![(
                "params",
                layout.split(got.params.as_ref().unwrap()).unwrap()[i].to_vec(),
                read_tensor(&next, &format!("params.{i}")),
            )];
            for n in ["exp_avg", "exp_avg_sq"] {
                pairs.push((
                    n,
                    layout.split(got.state_flat(n).unwrap()).unwrap()[i].to_vec(),
                    read_tensor(&next, &format!("state.{i}.{n}")),
                ));
            }
            for (what, a, b) in pairs {
                for (x, y) in a.iter().zip(&b) {
                    let u = ulps(*x, *y);
                    worst = worst.max(u);
                    assert!(
                        u <= 4,
                        "{backend} tensor {i} {what}: {x} vs torch {y} ({u} ulps)"
                    );
                }
            }
        }
    }
    println!("PyTorch's file: the next step matches torch's to {worst} ulp(s)");
}

/// The AdamW run whose checkpoint is `ours_adamw.safetensors`, and the
/// step after it (`ours_adamw_next.safetensors`).
fn ours() -> (Vec<u8>, Vec<u8>) {
    let lengths = [6usize, 4];
    let mut r = Rng(99);
    let init: Vec<Vec<f32>> = lengths.iter().map(|&n| r.vec(n)).collect();
    let config = AdamW {
        lr: 0.01,
        betas: (0.85, 0.995),
        weight_decay: 0.05,
        ..AdamW::default()
    };
    let mut opt = CpuOptimizer::new(config, &refs(&init)).unwrap();
    for _ in 0..4 {
        let g: Vec<Vec<f32>> = lengths.iter().map(|&n| r.vec(n)).collect();
        opt.step(&refs(&g)).unwrap();
    }
    let file = opt.checkpoint().to_bytes().unwrap();
    let g: Vec<Vec<f32>> = lengths.iter().map(|&n| r.vec(n)).collect();
    opt.step(&refs(&g)).unwrap();
    let after = opt.checkpoint();
    let layout = wgpu_optim::Layout::new(&lengths).unwrap();
    let mut tensors: Vec<(String, Vec<f32>)> = Vec::new();
    for (i, gi) in g.iter().enumerate() {
        tensors.push((format!("grads.{i}"), gi.clone()));
        tensors.push((
            format!("params.{i}"),
            layout.split(after.params.as_ref().unwrap()).unwrap()[i].to_vec(),
        ));
        for n in ["exp_avg", "exp_avg_sq"] {
            tensors.push((
                format!("state.{i}.{n}"),
                layout.split(after.state_flat(n).unwrap()).unwrap()[i].to_vec(),
            ));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, v)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    vec![v.len()],
                    bytemuck::cast_slice(v),
                )
                .unwrap(),
            )
        })
        .collect();
    let next = safetensors::serialize(views, None).unwrap();
    (file, next)
}

/// `ours_adamw.safetensors` is what this library writes today, byte for
/// byte; `gen_torch_checkpoint.py verify` loaded it with
/// `safetensors.torch.load_file` into `torch.optim.AdamW` and found torch's
/// next step equal to ours (run by hand: the test does not need Python).
/// `WGPU_OPTIM_REGENERATE=1` rewrites the two files.
#[test]
fn our_file_is_the_one_python_verified() {
    let (file, next) = ours();
    let dir = Path::new(DATA);
    if std::env::var_os("WGPU_OPTIM_REGENERATE").is_some() {
        std::fs::write(dir.join("ours_adamw.safetensors"), &file).unwrap();
        std::fs::write(dir.join("ours_adamw_next.safetensors"), &next).unwrap();
    }
    assert_eq!(
        std::fs::read(dir.join("ours_adamw.safetensors")).unwrap(),
        file,
        "the library's file changed: regenerate and rerun the Python check"
    );
    assert_eq!(
        std::fs::read(dir.join("ours_adamw_next.safetensors")).unwrap(),
        next
    );
    let back = Checkpoint::from_bytes(&file).unwrap();
    assert_eq!(back.step, 4);
}

/// A valid checkpoint that does not fit: another rule, other options,
/// other lengths. Nothing changes.
#[test]
fn checkpoints_that_do_not_fit_are_refused() {
    let adam = CpuOptimizer::new(Adam::default(), &refs(&initial()))
        .unwrap()
        .checkpoint();
    let sgd = cases::input(
        "sgd momentum",
        Sgd {
            lr: 0.1,
            momentum: 0.9,
            ..Sgd::default()
        },
    );
    let mut cpu = run(&cpu(), &sgd, 0, 2, None);
    let mut gpu = run(&gpu(), &sgd, 0, 2, None);
    let before = (cpu.checkpoint().unwrap(), gpu.checkpoint().unwrap());
    let e = cpu.load_checkpoint(&adam).unwrap_err();
    assert_eq!(
        e,
        Error::CheckpointMismatch {
            what: "rule".into(),
            expected: "sgd".into(),
            got: "adam".into()
        }
    );
    assert_eq!(gpu.load_checkpoint(&adam).unwrap_err(), e);
    let nesterov = CpuOptimizer::new(
        Sgd {
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            ..Sgd::default()
        },
        &refs(&initial()),
    )
    .unwrap()
    .checkpoint();
    assert!(
        matches!(cpu.load_checkpoint(&nesterov).unwrap_err(), Error::CheckpointMismatch { what, .. } if what == "options")
    );
    let short = CpuOptimizer::new(
        Sgd {
            lr: 0.1,
            momentum: 0.9,
            ..Sgd::default()
        },
        &[&[1.0; 37], &[1.0; 1]],
    )
    .unwrap()
    .checkpoint();
    assert!(
        matches!(gpu.load_checkpoint(&short).unwrap_err(), Error::CheckpointMismatch { what, .. } if what == "tensor count")
    );
    assert_eq!(
        before,
        (cpu.checkpoint().unwrap(), gpu.checkpoint().unwrap())
    );
}

// ------------------------------------------------------ README examples

/// The code blocks of the README's "Saving and restoring" and "Non-finite
/// gradients and loss scaling" sections, compiled and run;
/// [`readme_blocks_are_these`] checks that the README holds the same text.
#[rustfmt::skip]
mod readme {
    use wgpu_optim::Error;

    #[test]
    fn readme_saving() -> Result<(), Error> {
        // README: saving
        use wgpu_optim::checkpoint::Checkpoint;
        use wgpu_optim::{AdamW, CpuOptimizer, GpuContext, GpuOptimizer, GpuOptions, Schedule, Scheduler};

        let ctx = GpuContext::new()?;
        let config = AdamW::default();
        let weights = vec![0.5f32; 1000];
        let mut opt = GpuOptimizer::new(&ctx, config.clone(), &[&weights])?;
        let mut sched = Scheduler::for_config(Schedule::warmup_cosine(0.1, 10, 100, 0.0), &config.into())?;
        for _ in 0..3 {
            sched.apply_to_gpu(&mut opt)?;
            opt.step(&[&vec![0.01f32; 1000]])?;
            sched.advance();
        }
        let mut ckpt = opt.checkpoint()?; // reads the state back from the GPU
        ckpt.set_scheduler(Some(&sched)); // the schedule's position travels with it
        let path = std::env::temp_dir().join("wgpu-optim-readme.safetensors");
        ckpt.save(&path)?; // atomic: the previous file stays whole until the new one is
        let back = Checkpoint::load(&path)?; // every field checked; typed errors
        let mut on_cpu = CpuOptimizer::from_checkpoint(&back)?; // or GpuOptimizer::from_checkpoint
        let mut on_gpu = GpuOptimizer::from_checkpoint(&ctx, &back, GpuOptions::default())?;
        let sched = back.scheduler()?.expect("saved above");
        assert_eq!(on_cpu.step_count(), 3);
        assert_eq!(sched.position(), 3);
        on_cpu.step(&[&vec![0.01f32; 1000]])?;
        on_gpu.step(&[&vec![0.01f32; 1000]])?;
        // END README
        Ok(())
    }

    #[test]
    fn readme_nonfinite() -> Result<(), Error> {
        // README: nonfinite
        use wgpu_optim::{Adam, GpuContext, GpuOptimizer};

        let ctx = GpuContext::new()?;
        let mut opt = GpuOptimizer::new(&ctx, Adam::default(), &[&vec![1.0f32; 256]])?;
        opt.set_skip_nonfinite(true)?;
        opt.set_grad_scale(1024.0)?; // gradients of a loss multiplied by 1024
        let mut grads = vec![0.5f32 * 1024.0; 256];
        opt.step(&[&grads])?; // applied
        grads[7] = f32::INFINITY; // an overflow in the backward pass
        opt.step(&[&grads])?; // skipped on the GPU; the host did not wait
        assert!(opt.last_step_skipped()?); // waits: ask when you need it (to lower the scale)
        assert_eq!((opt.step_count(), opt.skipped_steps()?), (1, 1));
        // END README
        Ok(())
    }
}

/// The README's blocks are the text of the tests above.
#[test]
fn readme_blocks_are_these() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let source = std::fs::read_to_string(file!()).unwrap();
    for (section, marker) in [
        ("## Saving and restoring", "// README: saving"),
        (
            "## Non-finite gradients and loss scaling",
            "// README: nonfinite",
        ),
    ] {
        let at = readme
            .find(section)
            .unwrap_or_else(|| panic!("README lacks {section}"));
        let start = readme[at..].find("```rust\n").unwrap() + at + 8;
        let end = readme[start..].find("```").unwrap() + start;
        let block = &readme[start..end];
        let from = source.find(marker).unwrap() + marker.len() + 1;
        let to = source[from..].find("        // END README").unwrap() + from;
        let code: String = source[from..to]
            .lines()
            .map(|l| l.strip_prefix("        ").unwrap_or(l))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(block, code, "README block of {section}");
    }
}

/// A checkpoint of another precision would be widened or rounded: an f32
/// GPU optimizer refuses a bf16/8-bit one and is as it was; a GPU
/// optimizer built from it keeps it exactly (codes, absmax, master,
/// bf16 parameters; with stochastic rounding too).
#[test]
fn a_low_precision_checkpoint_does_not_load_on_the_gpu() {
    use wgpu_optim::precision::{ParamDtype, Precision, StateDtype};
    let p = vec![0.25f32; 4096];
    let g = vec![0.5f32; 4096];
    let precision = Precision {
        param_dtype: ParamDtype::Bf16,
        master_weights: true,
        state_dtype: StateDtype::Int8Blockwise,
        ..Precision::default()
    };
    let mut low = CpuOptimizer::with_precision(AdamW::default(), &[&p], precision).unwrap();
    low.step(&[&g]).unwrap();
    let ckpt = low.checkpoint();
    let mut gpu = GpuOptimizer::new(ctx(), AdamW::default(), &[&p]).unwrap();
    gpu.step(&[&g]).unwrap();
    let before = snap_ckpt(&gpu.checkpoint().unwrap());
    assert!(matches!(
        gpu.load_checkpoint(&ckpt),
        Err(Error::CheckpointMismatch { ref what, .. }) if what == "precision"
    ));
    let built = GpuOptimizer::from_checkpoint(ctx(), &ckpt, GpuOptions::default()).unwrap();
    assert_eq!(built.checkpoint().unwrap(), ckpt);
    let stochastic = Precision {
        master_weights: false,
        ..precision
    };
    let mut low = CpuOptimizer::with_precision(AdamW::default(), &[&p], stochastic).unwrap();
    low.step(&[&g]).unwrap();
    let built =
        GpuOptimizer::from_checkpoint(ctx(), &low.checkpoint(), GpuOptions::default()).unwrap();
    assert_eq!(built.checkpoint().unwrap(), low.checkpoint());
    assert_eq!(snap_ckpt(&gpu.checkpoint().unwrap()), before);
}

/// A GPU optimizer in a 16-bit mode saves in its formats (bf16 parameters
/// and state), restores into the GPU and goes on bit for bit (the same
/// kernel from the same bits, stochastic rounding's counter included), and
/// into the CPU exactly.
#[test]
fn a_bf16_gpu_checkpoint_restores_exactly() {
    use wgpu_optim::precision::{ParamDtype, Precision, StateDtype};
    let mut rng = Rng(4);
    let p: Vec<Vec<f32>> = [301usize, 6].iter().map(|&n| rng.vec(n)).collect();
    let grads: Vec<Vec<Vec<f32>>> = (0..5)
        .map(|_| [301usize, 6].iter().map(|&n| rng.vec(n)).collect())
        .collect();
    for master_weights in [false, true] {
        let precision = Precision {
            param_dtype: ParamDtype::Bf16,
            state_dtype: StateDtype::Bf16,
            master_weights,
            seed: 11,
        };
        let mut gpu =
            GpuOptimizer::with_precision(ctx(), AdamW::default(), &refs(&p), precision).unwrap();
        for g in &grads[..3] {
            gpu.step(&refs(g)).unwrap();
        }
        let ckpt = gpu.checkpoint().unwrap();
        assert_eq!(ckpt.precision, precision);
        assert_eq!(ckpt.master_params.is_some(), master_weights);
        let back = Checkpoint::from_bytes(&ckpt.to_bytes().unwrap()).unwrap();
        assert_eq!(back, ckpt);
        assert_eq!(
            CpuOptimizer::from_checkpoint(&back).unwrap().checkpoint(),
            ckpt
        );
        let mut again = GpuOptimizer::from_checkpoint(ctx(), &back, GpuOptions::default()).unwrap();
        for g in &grads[3..] {
            gpu.step(&refs(g)).unwrap();
            again.step(&refs(g)).unwrap();
        }
        assert_eq!(
            snap_ckpt(&again.checkpoint().unwrap()),
            snap_ckpt(&gpu.checkpoint().unwrap())
        );
    }
}

/// `torch_groups.safetensors` (`gen_torch_checkpoint.py write_groups`):
/// torch.optim.Adam over three groups of different lr, betas and weight
/// decay, AMSGrad in the last, after 5 steps. It loads with its groups, and
/// the next step on the CPU matches torch's to a few float32 roundings of
/// the magnitudes combined: torch updates `exp_avg` by `lerp` (m + (1−β₁)(g
/// − m)), we by β₁m + (1−β₁)g, and where m and g nearly cancel the two
/// differ by hundreds of ulps of the small result while both are within a
/// few roundings (8·2⁻²⁴ here) of the tensor's and the gradient's largest
/// magnitude. A wrong β or lr in one group is off by 1e-3 of it and
/// more. Our checkpoint of it is
/// `ours_groups.safetensors` byte for byte, which `verify_groups` loaded
/// into torch.optim.Adam and stepped to torch's own next step, bit for bit
/// (run by hand: the test does not need Python;
/// `WGPU_OPTIM_REGENERATE=1` rewrites it). The GPU optimizer restores the
/// file as the CPU does and its next step matches torch's too.
#[test]
fn three_groups_move_between_pytorch_and_this_library() {
    let ckpt = Checkpoint::load(Path::new(DATA).join("torch_groups.safetensors")).unwrap();
    let params: Vec<Vec<usize>> = ckpt.groups.iter().map(|g| g.params.clone()).collect();
    assert_eq!(params, vec![vec![0, 1], vec![2], vec![3]]);
    assert_eq!(ckpt.lengths, vec![12, 5, 6, 6]);
    let base = Adam {
        betas: (0.9, 0.99),
        ..Adam::default()
    };
    let want: Vec<Config> = vec![
        Adam {
            lr: 0.01,
            weight_decay: 0.1,
            ..base.clone()
        }
        .into(),
        Adam {
            lr: 0.003,
            betas: (0.8, 0.95),
            ..base.clone()
        }
        .into(),
        Adam {
            lr: 0.02,
            eps: 1e-6,
            amsgrad: true,
            ..base
        }
        .into(),
    ];
    let got: Vec<Config> = ckpt.groups.iter().map(|g| g.config.clone()).collect();
    assert_eq!(got, want);
    assert!(ckpt.group_state.iter().all(|s| s.step == 5));
    assert_eq!(
        ckpt.group_state[2].state_names,
        ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
    );
    // The GPU restores torch's file exactly as the CPU does.
    let mut gpu = GpuOptimizer::from_checkpoint(ctx(), &ckpt, GpuOptions::default()).unwrap();

    let mut cpu = CpuOptimizer::from_checkpoint(&ckpt).unwrap();
    assert_eq!(gpu.checkpoint().unwrap(), cpu.checkpoint());
    assert_eq!(cpu.group_count(), 3);
    let ours = cpu.checkpoint().to_bytes().unwrap();
    let path = Path::new(DATA).join("ours_groups.safetensors");
    if std::env::var_os("WGPU_OPTIM_REGENERATE").is_some() {
        std::fs::write(&path, &ours).unwrap();
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        ours,
        "the library's file changed: regenerate and rerun verify_groups"
    );
    assert_eq!(Checkpoint::from_bytes(&ours).unwrap(), cpu.checkpoint());

    let bytes = std::fs::read(Path::new(DATA).join("torch_groups_next.safetensors")).unwrap();
    let next = SafeTensors::deserialize(&bytes).unwrap();
    let g: Vec<Vec<f32>> = (0..4)
        .map(|i| read_tensor(&next, &format!("grads.{i}")))
        .collect();
    cpu.step(&refs(&g)).unwrap();
    gpu.step(&refs(&g)).unwrap();
    // The CPU's step differs from torch's by the lerp argued above (4ε
    // of the magnitudes); the GPU's from the CPU's by at most K = 8
    // roundings of one step (tests/gpu_vs_cpu.rs), 8ε more.
    for (who, after, bound) in [
        ("cpu", cpu.checkpoint(), 8.0 * f32::EPSILON / 2.0),
        ("gpu", gpu.checkpoint().unwrap(), 12.0 * f32::EPSILON),
    ] {
        assert!(after.group_state.iter().all(|s| s.step == 6));
        let layout = wgpu_optim::Layout::new(&after.lengths).unwrap();
        let mut worst = 0f32;
        for (i, grad) in g.iter().enumerate() {
            let mut names = vec!["exp_avg", "exp_avg_sq"];
            if i == 3 {
                names.push("max_exp_avg_sq");
            }
            let mut pairs = vec![(
                "params",
                layout.split(after.params.as_ref().unwrap()).unwrap()[i].to_vec(),
                read_tensor(&next, &format!("params.{i}")),
            )];
            for n in names {
                pairs.push((
                    n,
                    layout.split(after.state_flat(n).unwrap()).unwrap()[i].to_vec(),
                    read_tensor(&next, &format!("state.{i}.{n}")),
                ));
            }
            let max = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
            for (what, a, b) in pairs {
                assert_eq!(a.len(), b.len());
                let scale = max(&b).max(max(grad));
                for (x, y) in a.iter().zip(&b) {
                    let err = (x - y).abs() / scale;
                    worst = worst.max(err);
                    assert!(
                        err <= bound,
                        "{who}: tensor {i} {what}: {x} vs torch {y} ({err:e} of the scale {scale})"
                    );
                }
            }
        }
        println!(
            "three groups, {who}: the next step matches torch's to {worst:e} of the magnitudes"
        );
    }
}

/// Groups with their own step counts and scalar state (NAdam's
/// `mu_product`, after a group added later) save, load and go on bit for
/// bit; a checkpoint of other groups is refused and changes nothing.
#[test]
fn groups_save_restore_continue_bit_for_bit() {
    use wgpu_optim::NAdam;
    let mut r = Rng(7);
    let (a, b, c) = (r.vec(10), r.vec(3), r.vec(5));
    let mut opt = CpuOptimizer::with_groups(&[
        (NAdam::default().into(), &[&a[..], &b[..]][..]),
        (
            NAdam {
                lr: 0.01,
                weight_decay: 0.1,
                ..NAdam::default()
            }
            .into(),
            &[&c[..]][..],
        ),
    ])
    .unwrap();
    let grads = |r: &mut Rng, n: usize| -> Vec<Vec<f32>> {
        [10, 3, 5, 4][..n].iter().map(|&k| r.vec(k)).collect()
    };
    for _ in 0..3 {
        opt.step(&refs(&grads(&mut r, 3))).unwrap();
    }
    let d = r.vec(4);
    opt.add_param_group(NAdam::default(), &[&d]).unwrap();
    opt.step(&refs(&grads(&mut r, 4))).unwrap();
    let saved = opt.checkpoint();
    assert_eq!(
        saved.group_state.iter().map(|s| s.step).collect::<Vec<_>>(),
        [4, 4, 1]
    );
    let file = Checkpoint::from_bytes(&saved.to_bytes().unwrap()).unwrap();
    assert_eq!(file, saved);
    let mut back = CpuOptimizer::from_checkpoint(&file).unwrap();
    for _ in 0..3 {
        let g = grads(&mut r, 4);
        opt.step(&refs(&g)).unwrap();
        back.step(&refs(&g)).unwrap();
    }
    assert_eq!(snap_ckpt(&back.checkpoint()), snap_ckpt(&opt.checkpoint()));
    assert_eq!(back.checkpoint(), opt.checkpoint());

    // Into an optimizer of one group, or of other groups: refused.
    let mut one = CpuOptimizer::new(NAdam::default(), &[&a, &b, &c, &d]).unwrap();
    let before = one.checkpoint();
    assert!(matches!(
        one.load_checkpoint(&saved),
        Err(Error::CheckpointMismatch { .. })
    ));
    assert_eq!(one.checkpoint(), before);
    assert!(matches!(
        back.load_checkpoint(&before),
        Err(Error::CheckpointMismatch { .. })
    ));
}
