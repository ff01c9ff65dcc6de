//! The matrix rules (Adafactor, Muon): shapes and their typed errors, the
//! factored state's sizes and memory, checkpoints of that state, and the
//! places that refuse the rules (the sharded optimizer, parameter groups,
//! low-precision storage). Their numbers against torch are the golden
//! cases (tests/golden.rs: adafactor_*, muon_*, on the CPU and the GPU);
//! the GPU against the CPU is tests/matrix_gpu.rs.

use wgpu_optim::sharded::{GradReduce, ShardedOptimizer, ThreadCollective};
use wgpu_optim::{
    Adafactor, AdamW, Checkpoint, Config, CpuOptimizer, Error, Muon, MuonAdjustLr, Shape,
};

/// Deterministic values in about [-1, 1).
fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed * 40_503);
            (x % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn refs(v: &[Vec<f32>]) -> Vec<&[f32]> {
    v.iter().map(Vec::as_slice).collect()
}

/// A matrix, a vector and a batch of two 3 × 4 matrices.
fn adafactor_tensors() -> (Vec<Vec<f32>>, Vec<Shape>) {
    let shapes = vec![
        Shape::matrix(5, 7),
        Shape::vector(6),
        Shape::new(&[2, 3, 4]),
    ];
    let params = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| values(s.numel().unwrap(), i as u32))
        .collect();
    (params, shapes)
}

fn adafactor() -> Adafactor {
    Adafactor {
        weight_decay: 0.01,
        d: 1.5,
        ..Adafactor::default()
    }
}

fn grads_of(params: &[Vec<f32>], step: u32) -> Vec<Vec<f32>> {
    params
        .iter()
        .enumerate()
        .map(|(i, p)| values(p.len(), 100 + 7 * step + i as u32))
        .collect()
}

#[test]
fn muon_needs_a_2d_shape_for_every_tensor() {
    let w = values(12, 1);
    let b = values(4, 2);
    match CpuOptimizer::new(Muon::default(), &[&w]) {
        Err(Error::MatrixRequired { rule, tensor, .. }) => assert_eq!((rule, tensor), ("muon", 0)),
        other => panic!("{other:?}"),
    }
    for (shapes, bad) in [
        (vec![Shape::matrix(3, 4), Shape::vector(4)], 1),
        (vec![Shape::new(&[2, 2, 3]), Shape::matrix(2, 2)], 0),
    ] {
        match CpuOptimizer::with_shapes(Muon::default(), &[&w, &b], &shapes) {
            Err(Error::MatrixRequired { tensor, shape, .. }) => {
                assert_eq!(tensor, bad);
                assert_eq!(shape, shapes[bad].to_string());
            }
            other => panic!("{shapes:?}: {other:?}"),
        }
    }
    // The same check on a checkpoint built by hand.
    assert!(matches!(
        Checkpoint::new(Muon::default(), &[12]),
        Err(Error::MatrixRequired { .. })
    ));
}

#[test]
fn shapes_must_hold_their_tensors() {
    let w = values(12, 1);
    let b = values(4, 2);
    match CpuOptimizer::with_shapes(
        Adafactor::default(),
        &[&w, &b],
        &[Shape::matrix(3, 5), Shape::vector(4)],
    ) {
        Err(Error::ShapeMismatch {
            tensor: 0,
            elements: 12,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        CpuOptimizer::with_shapes(Adafactor::default(), &[&w, &b], &[Shape::matrix(3, 4)]),
        Err(Error::TensorCountMismatch {
            expected: 2,
            got: 1
        })
    ));
}

#[test]
fn adafactor_keeps_factored_state_for_matrices_and_full_state_for_vectors() {
    let (params, shapes) = adafactor_tensors();
    let mut opt = CpuOptimizer::with_shapes(adafactor(), &refs(&params), &shapes).unwrap();
    opt.step(&refs(&grads_of(&params, 0))).unwrap();
    let lens =
        |name: &str| -> Vec<usize> { opt.state(name).unwrap().iter().map(|t| t.len()).collect() };
    assert_eq!(lens("row_var"), vec![5, 0, 2 * 3]);
    assert_eq!(lens("col_var"), vec![7, 0, 2 * 4]);
    assert_eq!(lens("variance"), vec![0, 6, 0]);
    // After one step from zero, each statistic is the mean of g² over its
    // row (or column): lerp(0, x, 1^-0.8 = 1) = x.
    let g = grads_of(&params, 0);
    let row0: f32 = g[0][..7].iter().map(|x| x * x).sum::<f32>() / 7.0;
    assert!((opt.state("row_var").unwrap()[0][0] - row0).abs() <= 1e-6 * row0);
    // The second matrix of the batch has statistics of its own.
    let row_b1: f32 = g[2][12..16].iter().map(|x| x * x).sum::<f32>() / 4.0;
    assert!((opt.state("row_var").unwrap()[2][3] - row_b1).abs() <= 1e-6 * row_b1);
    // Without shapes every tensor is a vector, as torch treats a 1-D one.
    let flat = CpuOptimizer::new(adafactor(), &refs(&params)).unwrap();
    assert_eq!(flat.state("row_var").unwrap()[0].len(), 0);
    assert_eq!(flat.state("variance").unwrap()[0].len(), 35);
}

/// Adafactor's memory on the shapes of one GPT-2 small block (attention
/// and MLP weights with their biases, two layer norms): the factored state
/// is a fraction of a percent of the parameters.
#[test]
fn adafactor_bytes_per_parameter_on_a_gpt2_block() {
    let shapes = [
        Shape::matrix(768, 2304), // attn.c_attn.weight
        Shape::vector(2304),      // attn.c_attn.bias
        Shape::matrix(768, 768),  // attn.c_proj.weight
        Shape::vector(768),       // attn.c_proj.bias
        Shape::vector(768),       // ln_1.weight
        Shape::vector(768),       // ln_1.bias
        Shape::vector(768),       // ln_2.weight
        Shape::vector(768),       // ln_2.bias
        Shape::matrix(768, 3072), // mlp.c_fc.weight
        Shape::vector(3072),      // mlp.c_fc.bias
        Shape::matrix(3072, 768), // mlp.c_proj.weight
        Shape::vector(768),       // mlp.c_proj.bias
    ];
    let params: Vec<Vec<f32>> = shapes
        .iter()
        .map(|s| vec![0.01; s.numel().unwrap()])
        .collect();
    let n: usize = params.iter().map(Vec::len).sum();
    assert_eq!(n, 7_087_872);
    let opt = CpuOptimizer::with_shapes(Adafactor::default(), &refs(&params), &shapes).unwrap();
    let state_bytes = opt.resident_bytes() - 4 * n;
    // Rows and columns of the four matrices, the eight vectors in full.
    let factored = (768 + 2304) + (768 + 768) + (768 + 3072) + (3072 + 768);
    let vectors = 2304 + 768 + 4 * 768 + 3072 + 768;
    assert_eq!(state_bytes, 4 * (factored + vectors));
    let adamw = CpuOptimizer::new(AdamW::default(), &refs(&params)).unwrap();
    let adamw_state = adamw.resident_bytes() - 4 * n;
    let per_param = state_bytes as f64 / n as f64;
    println!(
        "GPT-2 block, {n} parameters: Adafactor state {state_bytes} bytes ({per_param:.4} per parameter), AdamW {adamw_state} ({:.1} per parameter)",
        adamw_state as f64 / n as f64
    );
    assert!(per_param < 0.02);
    assert_eq!(adamw_state, 8 * n);
}

/// A checkpoint carries the shapes and torch's state names of each tensor
/// (Adafactor's factors only for matrices, its variance only for vectors),
/// and resumes bit for bit.
#[test]
fn adafactor_checkpoint_round_trips_the_factored_state() {
    let (params, shapes) = adafactor_tensors();
    let mut opt = CpuOptimizer::with_shapes(adafactor(), &refs(&params), &shapes).unwrap();
    for s in 0..3 {
        opt.step(&refs(&grads_of(&params, s))).unwrap();
    }
    let ckpt = opt.checkpoint();
    assert_eq!(ckpt.shapes, shapes);
    let bytes = ckpt.to_bytes().unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st
        .names()
        .into_iter()
        .filter(|n| n.starts_with("state."))
        .map(|n| n.to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "state.0.col_var",
            "state.0.row_var",
            "state.0.step",
            "state.1.step",
            "state.1.variance",
            "state.2.col_var",
            "state.2.row_var",
            "state.2.step",
        ]
    );
    assert_eq!(st.tensor("state.2.col_var").unwrap().shape(), [8]);
    let back = Checkpoint::from_bytes(&bytes).unwrap();
    assert_eq!(back, ckpt);
    let mut resumed = CpuOptimizer::from_checkpoint(&back).unwrap();
    let g = grads_of(&params, 3);
    opt.step(&refs(&g)).unwrap();
    resumed.step(&refs(&g)).unwrap();
    for name in ["row_var", "col_var", "variance"] {
        assert_eq!(opt.state(name).unwrap(), resumed.state(name).unwrap());
    }
    assert_eq!(opt.params_flat(), resumed.params_flat());

    // Another optimizer's shapes do not fit.
    let mut other = CpuOptimizer::with_shapes(
        adafactor(),
        &refs(&params),
        &[
            Shape::matrix(7, 5),
            Shape::vector(6),
            Shape::new(&[2, 3, 4]),
        ],
    )
    .unwrap();
    assert!(matches!(
        other.load_checkpoint(&back),
        Err(Error::CheckpointMismatch { .. })
    ));
    // A state of the wrong size is refused.
    let mut bad = back.clone();
    bad.state[0].1.push(0.0);
    assert!(matches!(bad.validate(), Err(Error::Checkpoint(_))));
    let mut bad = back;
    bad.shapes[0] = Shape::matrix(5, 6);
    assert!(matches!(bad.validate(), Err(Error::Checkpoint(_))));
}

#[test]
fn muon_checkpoint_round_trips_the_momentum() {
    let shapes = vec![Shape::matrix(6, 4), Shape::matrix(3, 8)];
    let params: Vec<Vec<f32>> = vec![values(24, 1), values(24, 2)];
    let muon = Muon {
        lr: 0.02,
        adjust_lr_fn: Some(MuonAdjustLr::MatchRmsAdamW),
        ..Muon::default()
    };
    let mut opt = CpuOptimizer::with_shapes(muon.clone(), &refs(&params), &shapes).unwrap();
    for s in 0..3 {
        opt.step(&refs(&grads_of(&params, s))).unwrap();
    }
    let bytes = opt.checkpoint().to_bytes().unwrap();
    let back = Checkpoint::from_bytes(&bytes).unwrap();
    assert_eq!(back.config, Config::from(muon));
    assert_eq!(back.shapes, shapes);
    // torch's Muon keeps no step count.
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(st.tensor("state.0.step").is_err());
    assert!(st.tensor("state.1.momentum_buffer").is_ok());
    let mut resumed = CpuOptimizer::from_checkpoint(&back).unwrap();
    let g = grads_of(&params, 3);
    opt.step(&refs(&g)).unwrap();
    resumed.step(&refs(&g)).unwrap();
    assert_eq!(opt.params_flat(), resumed.params_flat());
    assert_eq!(
        opt.state("momentum_buffer").unwrap(),
        resumed.state("momentum_buffer").unwrap()
    );
}

#[test]
fn muon_hyperparameters_are_checked_as_torch_checks_them() {
    for bad in [
        Muon {
            lr: -1.0,
            ..Muon::default()
        },
        Muon {
            momentum: -0.1,
            ..Muon::default()
        },
        Muon {
            weight_decay: -0.1,
            ..Muon::default()
        },
        Muon {
            ns_steps: 100,
            ..Muon::default()
        },
        Muon {
            ns_coefficients: (f64::NAN, 0.0, 0.0),
            ..Muon::default()
        },
    ] {
        assert!(
            matches!(
                Config::from(bad.clone()).validate(),
                Err(Error::InvalidHyperparameter { .. })
            ),
            "{bad:?}"
        );
    }
    for bad in [
        Adafactor {
            beta2_decay: 0.1,
            ..Adafactor::default()
        },
        Adafactor {
            d: 0.5,
            ..Adafactor::default()
        },
        Adafactor {
            eps: (Some(-1.0), 1e-3),
            ..Adafactor::default()
        },
        Adafactor {
            eps: (None, -1.0),
            ..Adafactor::default()
        },
        Adafactor {
            weight_decay: -0.1,
            ..Adafactor::default()
        },
    ] {
        assert!(
            matches!(
                Config::from(bad.clone()).validate(),
                Err(Error::InvalidHyperparameter { .. })
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn groups_low_precision_and_shards_refuse_the_matrix_rules() {
    let (w, b) = (values(12, 1), values(4, 2));
    let two = [
        (Config::from(Adafactor::default()), &[&w[..]][..]),
        (Config::from(Adafactor::default()), &[&b[..]][..]),
    ];
    assert!(matches!(
        CpuOptimizer::with_groups(&two),
        Err(Error::Unsupported(_))
    ));
    let mut opt = CpuOptimizer::new(Adafactor::default(), &[&w]).unwrap();
    assert!(matches!(
        opt.add_param_group(Adafactor::default(), &[&b]),
        Err(Error::Unsupported(_))
    ));
    let bf16 = wgpu_optim::precision::Precision {
        param_dtype: wgpu_optim::precision::ParamDtype::Bf16,
        ..Default::default()
    };
    assert!(matches!(
        CpuOptimizer::with_precision(Adafactor::default(), &[&w], bf16),
        Err(Error::Unsupported(_))
    ));
    // One rank is enough to see the refusal.
    let comm = ThreadCollective::group(1).pop().unwrap();
    let sharded = ShardedOptimizer::new(comm, &[&w], GradReduce::Sum, |p| {
        CpuOptimizer::new(Adafactor::default(), p)
    });
    assert!(matches!(sharded, Err(Error::Unsupported(_))));
    // A whole-model checkpoint of one cannot be split into shards either.
    assert!(matches!(
        wgpu_optim::sharded::split(&opt.checkpoint(), 2),
        Err(Error::Unsupported(_))
    ));
}

// ------------------------------------------------------ README example
/// The code block of the README's "Matrix rules" section, compiled and
/// run; [`readme_block_is_this`] checks that the README holds the same text.
#[rustfmt::skip]
mod readme {
    use wgpu_optim::Error;

    #[test]
    fn readme_matrix_rules() -> Result<(), Error> {
        // README: matrix
        use wgpu_optim::{AdamW, CpuOptimizer, Muon, Shape};
        let hidden = vec![0.02f32; 64 * 32];
        let bias = vec![0.0f32; 64];
        // Muon for the hidden matrix, AdamW for the rest (biases, norms,
        // embeddings, the head), as torch's Muon documentation advises.
        let mut muon = CpuOptimizer::with_shapes(Muon::default(), &[&hidden], &[Shape::matrix(64, 32)])?;
        let mut adamw = CpuOptimizer::new(AdamW::default(), &[&bias])?;
        muon.step(&[&vec![0.1f32; 64 * 32]])?;
        adamw.step(&[&vec![0.1f32; 64]])?;
        assert_eq!(muon.state("momentum_buffer")?[0].len(), 64 * 32);
        // END README
        Ok(())
    }
}

#[test]
fn readme_block_is_this() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let source = std::fs::read_to_string(file!()).unwrap();
    let at = readme
        .find("## Matrix rules")
        .expect("README lacks its Matrix rules section");
    let start = readme[at..].find("```rust\n").unwrap() + at + 8;
    let end = readme[start..].find("```").unwrap() + start;
    let marker = "// README: matrix";
    let from = source.find(marker).unwrap() + marker.len() + 1;
    let to = source[from..].find("        // END README").unwrap() + from;
    let code: String = source[from..to]
        .lines()
        .map(|l| l.strip_prefix("        ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(&readme[start..end], code);
}
