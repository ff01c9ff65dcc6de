//! 8-bit blockwise state on the GPU (`GpuOptimizer::with_precision` with
//! `state_dtype = 8bit`) beside its CPU twin, which tests/precision.rs
//! checks against bitsandbytes: the same blocks, codes and absmax after
//! several steps, within the tolerance argued at `compare`; checkpoints
//! GPU → file → GPU and GPU → CPU exact; typed errors for what it refuses.

mod common;

use common::{ctx, Rng};
use wgpu_optim::checkpoint::Checkpoint;
use wgpu_optim::precision::blockwise::{DynamicMap, BLOCK};
use wgpu_optim::precision::{ParamDtype, Precision, StateDtype};
use wgpu_optim::{
    Adam, AdamW, ClipGradNorm, Config, CpuOptimizer, Error, GpuOptimizer, GpuOptions, Lion, NAdam,
    RAdam, RmsProp, Sgd,
};

fn int8() -> Precision {
    Precision {
        state_dtype: StateDtype::Int8Blockwise,
        ..Precision::default()
    }
}

/// 8-bit state behind 16-bit parameters with an f32 master.
fn int8_master(param_dtype: ParamDtype) -> Precision {
    Precision {
        param_dtype,
        master_weights: true,
        ..int8()
    }
}

/// 8-bit state behind bf16 parameters rounded stochastically (no master).
fn int8_stochastic() -> Precision {
    Precision {
        param_dtype: ParamDtype::Bf16,
        seed: 7,
        ..int8()
    }
}

/// One unit of a parameter format, relative (2⁻⁷ of a bf16 value at worst,
/// 2⁻¹⁰ of an f16 one): what a stored parameter may differ by where the
/// two backends' f32 masters straddle a rounding boundary.
fn unit(dtype: ParamDtype) -> f64 {
    match dtype {
        ParamDtype::F32 => 0.0,
        ParamDtype::Bf16 => 1.0 / 128.0,
        ParamDtype::F16 => 1.0 / 1024.0,
    }
}

/// Odd, under 4096 (f32 state), exactly 4096, and not a multiple of 256
/// (a short last block), over 4096.
const LENGTHS: [usize; 5] = [4097, 777, 4096, 5001, 3];

/// Parameters in [-1, 1); gradients whose scale changes by decades from
/// block to block (so the blocks' absmax differ) with a few zeros.
fn data(rng: &mut Rng, steps: usize) -> (Vec<Vec<f32>>, Vec<Vec<Vec<f32>>>) {
    let params = LENGTHS.iter().map(|&n| rng.vec(n)).collect();
    let grads = (0..steps)
        .map(|_| {
            LENGTHS
                .iter()
                .map(|&n| {
                    (0..n)
                        .map(|i| {
                            let scale = 10f32.powi(-((i / BLOCK) as i32 % 5));
                            if i % 97 == 5 {
                                0.0
                            } else {
                                rng.uniform() * scale
                            }
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    (params, grads)
}

fn refs(v: &[Vec<f32>]) -> Vec<&[f32]> {
    v.iter().map(Vec::as_slice).collect()
}

/// How far the GPU's run is from the CPU's.
#[derive(Debug, Default)]
struct Gap {
    codes: usize,
    codes_differing: usize,
    code_steps: usize,
    absmax_rel: f64,
    params_differing: usize,
}

/// Compares the GPU's checkpoint with the CPU's after `steps` steps of a
/// rule at learning rate `lr`.
///
/// The two backends' f32 arithmetic of one step may differ by a few
/// roundings (tests/gpu_vs_cpu.rs: fused multiply-adds, WGSL's 2.5-ulp
/// division and square root). Everything 8-bit the GPU does itself is
/// exact: the absmax is a maximum (no rounding), 1/absmax is the
/// correctly rounded reciprocal (an integer division in the kernel, not
/// WGSL's division), the scaled value one f32 product, the nearest code
/// a binary search with the CPU's tie rule. So a code differs only where
/// the rule's new value, a few ulps off the CPU's, falls on the other side
/// of the midpoint between two map entries: at most one code step, on a
/// small fraction of the elements (asserted: at most 1 %, 0 in a run
/// where the arithmetic agrees); the absmax of a block, the largest
/// magnitude, is within the same few ulps a step (asserted: 16 ε a step
/// relative). A code step then feeds the next steps as a different state:
/// the parameter of that element moves by at most the rule's largest
/// step a step apart, `lr · max_ratio` (Adam's `|m̂/(√v̂+ε)|` is at most
/// `(1−β1)/√(1−β2)`·… over few steps; we take `max_ratio` = 4, Lion's
/// step is `lr` exactly), so each parameter is within
/// `steps · 2 · lr · max_ratio` of the CPU's, and the parameters of
/// elements whose codes all agree within the f32 envelope
/// `steps · 8 ε · scale`. The f32 state of small tensors is the f32 mode's:
/// `steps · 8 ε · scale`. With 16-bit parameters the master weights take
/// those bounds, the parameters one unit of their format more
/// ([`unit`]).
fn compare(what: &str, cpu: &Checkpoint, gpu: &Checkpoint, steps: usize, lr: f64) -> Gap {
    let eps = f32::EPSILON as f64;
    let mut gap = Gap::default();
    assert_eq!(cpu.quantized.len(), gpu.quantized.len(), "{what}");
    let mut flipped = vec![false; cpu.lengths.iter().sum()];
    let offsets: Vec<usize> = cpu
        .lengths
        .iter()
        .scan(0, |at, &n| {
            *at += n;
            Some(*at - n)
        })
        .collect();
    for (c, g) in cpu.quantized.iter().zip(&gpu.quantized) {
        assert_eq!((&c.state, c.tensor), (&g.state, g.tensor), "{what}");
        assert_eq!(c.codes.len(), g.codes.len(), "{what}");
        assert_eq!(c.absmax.len(), g.absmax.len(), "{what}");
        for (k, (&a, &b)) in c.codes.iter().zip(&g.codes).enumerate() {
            gap.codes += 1;
            if a != b {
                gap.codes_differing += 1;
                gap.code_steps = gap.code_steps.max(a.abs_diff(b) as usize);
                flipped[offsets[c.tensor] + k] = true;
            }
        }
        for (&a, &b) in c.absmax.iter().zip(&g.absmax) {
            let rel = ((a - b) as f64).abs() / (a.abs() as f64).max(f64::MIN_POSITIVE);
            gap.absmax_rel = gap.absmax_rel.max(rel);
        }
    }
    assert!(gap.code_steps <= 1, "{what}: {gap:?}");
    assert!(gap.codes_differing * 100 <= gap.codes, "{what}: {gap:?}");
    assert!(
        gap.absmax_rel <= steps as f64 * 16.0 * eps,
        "{what}: {gap:?}"
    );
    // The state of the tensors kept in f32, and the parameters.
    assert_eq!(cpu.precision, gpu.precision, "{what}");
    assert_eq!(cpu.master_params.is_some(), gpu.master_params.is_some());
    let max_ratio = 4.0;
    let u = unit(cpu.precision.param_dtype);
    let sets = [
        ("param", cpu.params.as_ref(), gpu.params.as_ref(), u),
        (
            "master",
            cpu.master_params.as_ref(),
            gpu.master_params.as_ref(),
            0.0,
        ),
    ];
    for (name, cp, gp, u) in sets {
        let (Some(cp), Some(gp)) = (cp, gp) else {
            continue;
        };
        for (i, (&a, &b)) in cp.iter().zip(gp).enumerate() {
            if a.to_bits() != b.to_bits() && name == "param" {
                gap.params_differing += 1;
            }
            let scale = a.abs().max(1.0) as f64;
            let bound = steps as f64 * (8.0 * eps * scale + u * a.abs() as f64)
                + if flipped[i] || gap.absmax_rel > 0.0 || gap.codes_differing > 0 {
                    steps as f64 * 2.0 * lr * max_ratio
                } else {
                    0.0
                };
            assert!(
                ((a - b) as f64).abs() <= bound,
                "{what} {name}[{i}]: cpu {a} gpu {b}"
            );
        }
    }
    for ((name, c), (_, g)) in cpu.state.iter().zip(&gpu.state) {
        for (t, &n) in cpu.lengths.iter().enumerate() {
            if n >= 4096 {
                continue;
            }
            for i in offsets[t]..offsets[t] + n {
                let bound = steps as f64 * 8.0 * eps * (c[i].abs() as f64).max(1e-30);
                assert!(
                    ((c[i] - g[i]) as f64).abs() <= bound,
                    "{what} {name}[{i}]: cpu {} gpu {}",
                    c[i],
                    g[i]
                );
            }
        }
    }
    println!("{what}: {gap:?}");
    gap
}

fn rules() -> Vec<(Config, f64)> {
    vec![
        (
            Adam {
                lr: 1e-2,
                weight_decay: 0.01,
                ..Adam::default()
            }
            .into(),
            1e-2,
        ),
        (AdamW::default().into(), 1e-3),
        (
            AdamW {
                lr: 3e-3,
                maximize: true,
                weight_decay: 0.1,
                ..AdamW::default()
            }
            .into(),
            3e-3,
        ),
        (
            Lion {
                lr: 1e-3,
                weight_decay: 0.1,
                ..Lion::default()
            }
            .into(),
            1e-3,
        ),
        (RAdam::default().into(), 1e-3),
        (NAdam::default().into(), 2e-3),
    ]
}

/// Several steps of each rule the CPU keeps in 8 bits, on the GPU beside
/// the CPU, with f32 parameters, bf16 and f16 ones behind a master, and
/// bf16 ones rounded stochastically (the same bits as the CPU's): one chunk, and chunks of at most 1024 elements (cut between
/// blocks; pairs of 16-bit parameters straddle blocks: odd lengths).
#[test]
fn gpu_8bit_state_matches_the_cpu() {
    let steps = 6;
    let mut rng = Rng(16);
    let (params, grads) = data(&mut rng, steps);
    let modes = [
        int8(),
        int8_master(ParamDtype::Bf16),
        int8_master(ParamDtype::F16),
        int8_stochastic(),
    ];
    for (config, lr) in rules() {
        for (chunk, precision) in [None, Some(1024)]
            .into_iter()
            .flat_map(|c| modes.map(|m| (c, m)))
        {
            let what = format!(
                "{} {} master {} chunks {chunk:?}",
                config.kind(),
                precision.param_dtype.name(),
                precision.master_weights
            );
            let options = GpuOptions {
                max_chunk_elements: chunk,
                ..GpuOptions::default()
            };
            let mut cpu =
                CpuOptimizer::with_precision(config.clone(), &refs(&params), precision).unwrap();
            let mut gpu = GpuOptimizer::with_precision_options(
                ctx(),
                config.clone(),
                &refs(&params),
                precision,
                options,
            )
            .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(gpu.precision(), precision);
            for g in &grads {
                cpu.step(&refs(g)).unwrap();
                gpu.step(&refs(g)).unwrap();
            }
            let (c, g) = (cpu.checkpoint(), gpu.checkpoint().unwrap());
            g.validate().unwrap();
            compare(&what, &c, &g, steps, lr);
            // read_state gives the dequantized values the checkpoint holds.
            for (name, values) in &g.state {
                assert_eq!(&gpu.read_state_flat(name).unwrap(), values, "{what}");
            }
        }
    }
}

/// The 8-bit state through clipping and `skip_nonfinite` (the reduction's
/// kernels bind the 8-bit buffers too): a step with a NaN gradient is
/// skipped and changes nothing, clipped steps agree with the CPU's.
#[test]
fn gpu_8bit_state_with_clipping_and_skipping() {
    let steps = 3;
    let mut rng = Rng(17);
    let (params, grads) = data(&mut rng, steps);
    let config: Config = AdamW::default().into();
    let clip = ClipGradNorm::new(0.5);
    let mut cpu = CpuOptimizer::with_precision(config.clone(), &refs(&params), int8()).unwrap();
    let mut gpu = GpuOptimizer::with_precision(ctx(), config, &refs(&params), int8()).unwrap();
    cpu.set_clip_grad_norm(Some(clip)).unwrap();
    gpu.set_clip_grad_norm(Some(clip)).unwrap();
    gpu.set_skip_nonfinite(true).unwrap();
    for g in &grads {
        cpu.step(&refs(g)).unwrap();
        gpu.step(&refs(g)).unwrap();
    }
    let before = gpu.checkpoint().unwrap();
    let mut bad = grads[0].clone();
    bad[3][1] = f32::NAN;
    gpu.step(&refs(&bad)).unwrap();
    assert!(gpu.last_step_skipped().unwrap());
    let after = gpu.checkpoint().unwrap();
    assert_eq!(after.quantized, before.quantized);
    assert_eq!(after.params, before.params);
    compare("AdamW clipped", &cpu.checkpoint(), &after, steps, 1e-3);
}

/// GPU → file → GPU gives back the very codes and absmax, and the
/// restored optimizer goes on bit for bit; GPU → CPU and CPU → GPU keep
/// the state exactly (the codes and absmax are the state).
#[test]
fn gpu_8bit_checkpoints_round_trip_exactly() {
    let steps = 3;
    let mut rng = Rng(18);
    let (params, grads) = data(&mut rng, 2 * steps);
    let dir = std::env::temp_dir().join(format!("wgpu-optim-8bit-gpu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (rules()[1].0.clone(), int8()),
        (rules()[3].0.clone(), int8()),
        (rules()[1].0.clone(), int8_master(ParamDtype::Bf16)),
        (rules()[3].0.clone(), int8_stochastic()),
    ];
    for (config, precision) in cases {
        let what = format!(
            "{} {} {}",
            config.kind(),
            precision.param_dtype.name(),
            precision.master_weights
        );
        let options = || GpuOptions {
            max_chunk_elements: Some(2048),
            ..GpuOptions::default()
        };
        let mut gpu = GpuOptimizer::with_precision_options(
            ctx(),
            config.clone(),
            &refs(&params),
            precision,
            options(),
        )
        .unwrap();
        for g in &grads[..steps] {
            gpu.step(&refs(g)).unwrap();
        }
        let ckpt = gpu.checkpoint().unwrap();
        assert!(!ckpt.quantized.is_empty());
        let path = dir.join(format!("{}.safetensors", what.replace(' ', "-")));
        ckpt.save(&path).unwrap();
        let loaded = Checkpoint::load(&path).unwrap();
        assert_eq!(loaded, ckpt, "{what}: the file holds the checkpoint");
        // Restored both ways, with another chunking.
        let mut restored =
            GpuOptimizer::from_checkpoint(ctx(), &loaded, GpuOptions::default()).unwrap();
        let mut into = GpuOptimizer::with_precision_options(
            ctx(),
            config.clone(),
            &refs(&params),
            precision,
            options(),
        )
        .unwrap();
        into.load_checkpoint(&loaded).unwrap();
        assert_eq!(
            restored.checkpoint().unwrap(),
            ckpt,
            "{what}: from_checkpoint"
        );
        assert_eq!(into.checkpoint().unwrap(), ckpt, "{what}: load_checkpoint");
        // GPU → CPU and back.
        let cpu = CpuOptimizer::from_checkpoint(&loaded).unwrap();
        assert_eq!(cpu.checkpoint(), ckpt, "{what}: GPU → CPU");
        let back = GpuOptimizer::from_checkpoint(ctx(), &cpu.checkpoint(), options()).unwrap();
        assert_eq!(back.checkpoint().unwrap(), ckpt, "{what}: CPU → GPU");
        for g in &grads[steps..] {
            gpu.step(&refs(g)).unwrap();
            restored.step(&refs(g)).unwrap();
            into.step(&refs(g)).unwrap();
        }
        let want = gpu.checkpoint().unwrap();
        assert_eq!(
            restored.checkpoint().unwrap(),
            want,
            "{what}: restored goes on"
        );
        assert_eq!(into.checkpoint().unwrap(), want, "{what}: loaded goes on");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Bad input gets a typed error and changes nothing; what the GPU does not
/// keep in 8 bits is refused before anything is made.
#[test]
fn gpu_8bit_refusals_and_bad_input() {
    let p = vec![0.5f32; 5000];
    let g = vec![0.25f32; 5000];
    let unsupported = |r: Result<GpuOptimizer, Error>| matches!(r, Err(Error::Unsupported(_)));
    // States bitsandbytes has no map for (as on the CPU).
    for config in [
        Config::from(RmsProp::default()),
        Sgd {
            momentum: 0.9,
            ..Sgd::default()
        }
        .into(),
        Adam {
            amsgrad: true,
            ..Adam::default()
        }
        .into(),
    ] {
        assert!(unsupported(GpuOptimizer::with_precision(
            ctx(),
            config,
            &[&p],
            int8()
        )));
    }
    // f16 parameters need a master (Precision::validate, as on the CPU).
    let bf16 = Precision {
        param_dtype: ParamDtype::F16,
        master_weights: false,
        ..int8()
    };
    assert!(unsupported(GpuOptimizer::with_precision(
        ctx(),
        AdamW::default(),
        &[&p],
        bf16
    )));
    for options in [
        GpuOptions {
            vector_width: Some(4),
            ..GpuOptions::default()
        },
        GpuOptions {
            max_chunk_elements: Some(128),
            ..GpuOptions::default()
        },
    ] {
        assert!(matches!(
            GpuOptimizer::with_precision_options(ctx(), AdamW::default(), &[&p], int8(), options),
            Err(Error::InvalidOptions(_))
        ));
    }
    let mut opt = GpuOptimizer::with_precision(ctx(), AdamW::default(), &[&p], int8()).unwrap();
    opt.step(&[&g]).unwrap();
    let kept = opt.checkpoint().unwrap();
    assert!(matches!(
        opt.write_state("exp_avg", &[&[1.0; 7]]),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(opt.write_state("nope", &[&p]).is_err());
    assert!(opt.step(&[&g[..10]]).is_err());
    // A checkpoint of another precision, and an inconsistent one.
    let f32_ckpt = CpuOptimizer::new(AdamW::default(), &[&p])
        .unwrap()
        .checkpoint();
    assert!(matches!(
        opt.load_checkpoint(&f32_ckpt),
        Err(Error::CheckpointMismatch { .. })
    ));
    let mut bad = kept.clone();
    bad.quantized[0].absmax[0] *= 2.0;
    assert!(matches!(
        opt.load_checkpoint(&bad),
        Err(Error::Checkpoint(_))
    ));
    let mut bad = kept.clone();
    bad.quantized[0].codes.pop();
    assert!(matches!(
        opt.load_checkpoint(&bad),
        Err(Error::Checkpoint(_))
    ));
    assert_eq!(
        opt.checkpoint().unwrap(),
        kept,
        "failed calls change nothing"
    );
    // write_state quantizes as the CPU does.
    let values: Vec<f32> = (0..5000).map(|i| (i as f32 * 0.37).sin() * 1e-3).collect();
    opt.write_state("exp_avg", &[&values]).unwrap();
    let mut cpu = CpuOptimizer::with_precision(AdamW::default(), &[&p], int8()).unwrap();
    cpu.write_state("exp_avg", &[&values]).unwrap();
    assert_eq!(
        opt.read_state_flat("exp_avg").unwrap(),
        cpu.state_values("exp_avg").unwrap()
    );
    assert_eq!(DynamicMap::signed().values()[255], 1.0);
}

/// The GPU holds about what the CPU twin holds: a byte a state element and
/// 4 a block (each block's codes start on a word: at most 3 bytes more a
/// block), f32 state for tensors under 4096, f32 parameters; about half
/// of f32 state's.
#[test]
fn gpu_8bit_resident_bytes() {
    let mut rng = Rng(19);
    let (params, _) = data(&mut rng, 0);
    let cpu = CpuOptimizer::with_precision(AdamW::default(), &refs(&params), int8()).unwrap();
    let gpu =
        GpuOptimizer::with_precision(ctx(), AdamW::default(), &refs(&params), int8()).unwrap();
    let f32_gpu = GpuOptimizer::new(ctx(), AdamW::default(), &refs(&params)).unwrap();
    let blocks: usize = LENGTHS.iter().map(|n| n.div_ceil(BLOCK)).sum();
    let (c, g) = (cpu.resident_bytes() as u64, gpu.resident_bytes());
    // Padding: 3 bytes a block a state, the parameters to 4 elements.
    assert!(
        g >= c && g <= c + (2 * 3 * blocks + 16) as u64,
        "cpu {c} gpu {g}"
    );
    // 6.03 bytes a parameter of the 8-bit tensors against f32's 12, the
    // small tensors (1 in 18 elements here) at 12: under 0.6 of f32's.
    assert!(g * 10 < f32_gpu.resident_bytes() * 6, "{g}");
}

/// The numpy reference of tests/data/precision (bitsandbytes' quantization,
/// independent of this crate), modes `int8` and `bf16_master_int8`: AdamW,
/// 4 steps, a tensor of 4608 elements (18 blocks, 8-bit) and two small ones
/// (f32 state). The
/// bounds are `compare`'s: the f32 envelope, plus, where a code differs,
/// one code step of the block (the map's widest gap times the block's
/// absmax, which is at most the block's largest value over 0.993, the
/// signed map's least entry) for the state and `steps · 2 · lr · 4` for
/// the parameters (and one bf16 unit, 2⁻⁷ relative, a step for the bf16
/// parameters behind the master); and at least 90 % of every tensor exactly the
/// reference's (a kernel quantizing another way would miss far more).
#[test]
fn gpu_8bit_state_matches_the_reference() {
    use safetensors::SafeTensors;
    const DATA: &[u8] = include_bytes!("data/precision/reference.safetensors");
    let st = SafeTensors::deserialize(DATA).unwrap();
    let (_, m) = SafeTensors::read_metadata(DATA).unwrap();
    let meta = |k: &str| m.metadata().as_ref().unwrap()[k].clone();
    let f32s = |name: &str| -> Vec<f32> {
        let t = st.tensor(name).unwrap();
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    let lengths: Vec<usize> = serde_json::from_str(&meta("lengths")).unwrap();
    let steps: usize = meta("steps").parse().unwrap();
    let h: serde_json::Value = serde_json::from_str(&meta("adamw")).unwrap();
    let lr = h["lr"].as_f64().unwrap();
    let config = AdamW {
        lr,
        betas: (
            h["betas"][0].as_f64().unwrap(),
            h["betas"][1].as_f64().unwrap(),
        ),
        eps: h["eps"].as_f64().unwrap(),
        weight_decay: h["weight_decay"].as_f64().unwrap(),
        ..AdamW::default()
    };
    let modes: serde_json::Value = serde_json::from_str(&meta("modes")).unwrap();
    assert_eq!(modes["int8"], serde_json::json!(["f32", "8bit", false]));
    assert_eq!(
        modes["bf16_master_int8"],
        serde_json::json!(["bf16", "8bit", true])
    );
    let total: usize = lengths.iter().sum();
    let split = |flat: &[f32]| -> Vec<Vec<f32>> {
        let mut at = 0;
        lengths
            .iter()
            .map(|&n| {
                at += n;
                flat[at - n..at].to_vec()
            })
            .collect()
    };
    let (init, grads) = (f32s("init"), f32s("grads"));
    let eps = f32::EPSILON as f64;
    let widest = DynamicMap::signed()
        .values()
        .windows(2)
        .chain(DynamicMap::unsigned().values().windows(2))
        .map(|w| (w[1] - w[0]) as f64)
        .fold(0.0, f64::max);
    for (mode, precision) in [
        ("int8", int8()),
        ("bf16_master_int8", int8_master(ParamDtype::Bf16)),
    ] {
        let mut gpu =
            GpuOptimizer::with_precision(ctx(), config.clone(), &refs(&split(&init)), precision)
                .unwrap();
        for t in 0..steps {
            gpu.step(&refs(&split(&grads[t * total..(t + 1) * total])))
                .unwrap();
        }
        let mut sets = vec!["param", "exp_avg", "exp_avg_sq"];
        if precision.master_weights {
            sets.push("master");
        }
        for what in sets {
            let got = match what {
                "param" => gpu.read_params_flat().unwrap(),
                "master" => gpu.master_params().unwrap().unwrap(),
                s => gpu.read_state_flat(s).unwrap(),
            };
            let want = f32s(&format!("{mode}/{what}"));
            assert_eq!(got.len(), want.len());
            let mut same = 0;
            for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
                if a.to_bits() == b.to_bits() {
                    same += 1;
                    continue;
                }
                let scale = if what == "param" || what == "master" {
                    init[i].abs().max(b.abs()) as f64
                } else {
                    b.abs() as f64
                };
                let rounding = if what == "param" {
                    steps as f64 * unit(precision.param_dtype) * b.abs() as f64
                } else {
                    0.0
                };
                let code_step = if what == "param" || what == "master" {
                    steps as f64 * 2.0 * lr * 4.0
                } else if i < lengths[0] {
                    let block = i / BLOCK * BLOCK;
                    let top = want[block..(block + BLOCK).min(lengths[0])]
                        .iter()
                        .fold(0f32, |m, v| m.max(v.abs()));
                    widest * top as f64 / 0.993
                } else {
                    0.0
                };
                let bound = steps as f64 * 8.0 * eps * scale + rounding + code_step;
                assert!(
                    ((a - b) as f64).abs() <= bound,
                    "{mode} {what}[{i}]: gpu {a} reference {b}"
                );
            }
            println!(
                "{mode} {what}: {same} of {} exactly the reference's",
                want.len()
            );
            assert!(
                same * 10 >= want.len() * 9,
                "{mode} {what}: {same} of {}",
                want.len()
            );
        }
    }
}

/// A NaN gradient (no skipping) spoils its block as on the CPU: the
/// block's absmax is NaN and all its state reads back NaN, its parameters
/// NaN where the update used it; every other block is the CPU's.
#[test]
fn gpu_8bit_nan_spoils_its_block_as_on_the_cpu() {
    let p: Vec<f32> = (0..5000).map(|i| (i as f32 * 0.01).sin()).collect();
    let mut g: Vec<f32> = (0..5000).map(|i| (i as f32 * 0.03).cos() * 0.1).collect();
    g[300] = f32::NAN;
    let mut cpu = CpuOptimizer::with_precision(AdamW::default(), &[&p], int8()).unwrap();
    let mut gpu = GpuOptimizer::with_precision(ctx(), AdamW::default(), &[&p], int8()).unwrap();
    cpu.step(&[&g]).unwrap();
    gpu.step(&[&g]).unwrap();
    let (c, k) = (cpu.checkpoint(), gpu.checkpoint().unwrap());
    for (a, b) in c.quantized.iter().zip(&k.quantized) {
        assert!(a.absmax[1].is_nan() && b.absmax[1].is_nan());
        assert_eq!(a.codes, b.codes);
        for (j, (x, y)) in a.absmax.iter().zip(&b.absmax).enumerate() {
            assert!(j == 1 || x.to_bits() == y.to_bits(), "block {j}: {x} {y}");
        }
    }
    for name in ["exp_avg", "exp_avg_sq"] {
        let v = gpu.read_state_flat(name).unwrap();
        assert!(v[BLOCK..2 * BLOCK].iter().all(|x| x.is_nan()), "{name}");
    }
    let (cp, gp) = (c.params.unwrap(), k.params.unwrap());
    for (i, (x, y)) in cp.iter().zip(&gp).enumerate() {
        assert!(
            x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
            "param[{i}]: {x} {y}"
        );
    }
}

/// Steps recorded into the caller's encoder (`record_step`, one
/// submission for three steps) end where three `step_device` calls end:
/// the 8-bit kernel takes each step's scalars from its own uniform slot.
#[test]
fn gpu_8bit_recorded_steps_equal_stepped_ones() {
    let mut rng = Rng(20);
    let (params, grads) = data(&mut rng, 1);
    let make = || {
        let mut opt =
            GpuOptimizer::with_precision(ctx(), AdamW::default(), &refs(&params), int8()).unwrap();
        opt.write_grads(&refs(&grads[0])).unwrap();
        opt
    };
    let mut stepped = make();
    for _ in 0..3 {
        stepped.step_device().unwrap();
    }
    let mut recorded = make();
    let mut encoder = ctx().device().create_command_encoder(&Default::default());
    for _ in 0..3 {
        recorded.record_step(&mut encoder, None).unwrap();
    }
    ctx().queue().submit(Some(encoder.finish()));
    assert_eq!(
        recorded.checkpoint().unwrap(),
        stepped.checkpoint().unwrap()
    );
}

/// A device below what the 8-bit kernel needs (7 storage buffers for
/// Adam's, 6 KiB of workgroup memory) refuses it with the typed error
/// naming the limit, before anything is made.
#[test]
fn gpu_8bit_below_the_kernels_limits_is_a_typed_error() {
    let p = vec![0.5f32; 5000];
    for (limit, shrink) in [
        (
            "max_storage_buffers_per_shader_stage",
            (|l: &mut wgpu::Limits| l.max_storage_buffers_per_shader_stage = 6)
                as fn(&mut wgpu::Limits),
        ),
        ("max_compute_workgroup_storage_size", |l| {
            l.max_compute_workgroup_storage_size = 4096
        }),
    ] {
        let small = common::device_with_limits(|_| {
            let mut l = wgpu::Limits::default();
            shrink(&mut l);
            l
        });
        match GpuOptimizer::with_precision(&small, AdamW::default(), &[&p], int8()) {
            Err(Error::DeviceLimit { limit: l, .. }) => assert_eq!(l, limit),
            other => panic!("{limit}: {other:?}"),
        }
    }
}
