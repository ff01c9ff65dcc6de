//! Bad input, counted: the table of every invalid input of the
//! checkpoints, loss scaling, state writes, empty parameter lists and
//! kernel options, each with its expected error; after each, a CPU and a
//! GPU optimizer that were there are checked unchanged (parameters, every
//! state tensor, step count, hyperparameters, options). tests/errors.rs
//! holds the tables of hyperparameters, setters, clipping, gradient lengths
//! and caller buffers; the README adds the two counts up.
//!
//! Needs a GPU adapter: without one the GPU tests fail with
//! `Error::NoAdapter`'s text, which says what to install.

mod common;
use common::ctx;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};
use wgpu_optim::checkpoint::Checkpoint;
use wgpu_optim::{Adam, Config, CpuOptimizer, Error, GpuOptimizer, GpuOptions, Optimizer, Sgd};

const P0: [f32; 3] = [1.0, -2.0, 0.5];
const P1: [f32; 2] = [0.25, 4.0];

fn params() -> Vec<&'static [f32]> {
    vec![&P0, &P1]
}

fn adam() -> Config {
    Adam {
        amsgrad: true,
        ..Adam::default()
    }
    .into()
}

/// The optimizers every case runs next to (two steps taken, loss scale 2).
fn fixture() -> (CpuOptimizer, GpuOptimizer) {
    let mut c = CpuOptimizer::new(adam(), &params()).unwrap();
    let mut g = GpuOptimizer::new(ctx(), adam(), &params()).unwrap();
    c.set_grad_scale(2.0).unwrap();
    g.set_grad_scale(2.0).unwrap();
    let grads: &[&[f32]] = &[&[0.1, 0.2, -0.3], &[1.0, -1.0]];
    for _ in 0..2 {
        c.step(grads).unwrap();
        g.step(grads).unwrap();
    }
    (c, g)
}

/// Everything an optimizer holds (its checkpoint, parameters included) and
/// its options, as a comparable value, on either backend.
fn snapshot(o: &dyn Optimizer) -> (Vec<u8>, f64, bool) {
    (
        o.checkpoint().unwrap().to_bytes().unwrap(),
        o.grad_scale(),
        o.skip_nonfinite(),
    )
}

/// The same call on the CPU and on the GPU optimizer.
fn on_both(
    c: &mut CpuOptimizer,
    g: &mut GpuOptimizer,
    call: impl Fn(&mut dyn Optimizer) -> Result<(), Error>,
) -> Vec<(&'static str, Result<(), Error>)> {
    vec![("cpu", call(c)), ("gpu", call(g))]
}

/// The expected error: a variant, and words its message must contain.
struct Expect {
    label: &'static str,
    matches: fn(&Error) -> bool,
    words: Vec<&'static str>,
}

fn expect(label: &'static str, matches: fn(&Error) -> bool, words: &[&'static str]) -> Expect {
    Expect {
        label,
        matches,
        words: words.to_vec(),
    }
}

type Run =
    Box<dyn Fn(&mut CpuOptimizer, &mut GpuOptimizer) -> Vec<(&'static str, Result<(), Error>)>>;

struct Case {
    what: String,
    expect: Expect,
    run: Run,
}

fn checkpoint_error(e: &Error) -> bool {
    matches!(e, Error::Checkpoint(_))
}

fn mismatch(e: &Error) -> bool {
    matches!(e, Error::CheckpointMismatch { .. })
}

/// A safetensors file made by hand: tensors (name, dtype, shape, bytes)
/// and metadata.
fn file(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)], meta: &[(&str, String)]) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let meta = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    safetensors::serialize(views, Some(meta)).unwrap()
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A PyTorch-style Adam file (amsgrad off) over lengths 3 and 2, with
/// `edit` applied to its tensors and metadata before writing.
fn torch_file(
    edit: impl Fn(&mut Vec<(&'static str, Dtype, Vec<usize>, Vec<u8>)>, &mut Value, &mut Value),
) -> Vec<u8> {
    let mut tensors = vec![
        ("state.0.exp_avg", Dtype::F32, vec![3], f32s(&[0.1; 3])),
        ("state.0.exp_avg_sq", Dtype::F32, vec![3], f32s(&[0.01; 3])),
        ("state.0.step", Dtype::F32, vec![], f32s(&[5.0])),
        ("state.1.exp_avg", Dtype::F32, vec![2], f32s(&[0.1; 2])),
        ("state.1.exp_avg_sq", Dtype::F32, vec![2], f32s(&[0.01; 2])),
        ("state.1.step", Dtype::F32, vec![], f32s(&[5.0])),
    ];
    let mut groups = json!([{"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8,
        "weight_decay": 0, "amsgrad": false, "maximize": false, "foreach": null,
        "capturable": false, "differentiable": false, "fused": null,
        "decoupled_weight_decay": false, "params": [0, 1]}]);
    let mut extra = Value::Null;
    edit(&mut tensors, &mut groups, &mut extra);
    let mut meta = vec![
        ("rule", "adam".to_string()),
        ("param_groups", groups.to_string()),
    ];
    if !extra.is_null() {
        meta.push(("wgpu_optim", extra.to_string()));
    }
    file(&tensors, &meta)
}

fn cases() -> Vec<Case> {
    let mut out: Vec<Case> = Vec::new();
    // A file that must be refused by Checkpoint::from_bytes; the optimizers
    // are not touched (and checked unchanged all the same).
    let mut bad_file = |what: &str, bytes: Vec<u8>, words: &'static [&'static str]| {
        out.push(Case {
            what: format!("checkpoint file: {what}"),
            expect: expect("Error::Checkpoint", checkpoint_error, words),
            run: Box::new(move |_, _| vec![("file", Checkpoint::from_bytes(&bytes).map(|_| ()))]),
        });
    };
    let good = torch_file(|_, _, _| {});
    assert!(
        Checkpoint::from_bytes(&good).is_ok(),
        "the base file is valid"
    );
    bad_file("empty", vec![], &["safetensors"]);
    bad_file(
        "cut in the data",
        good[..good.len() - 3].to_vec(),
        &["safetensors"],
    );
    bad_file("cut in the header", good[..20].to_vec(), &["safetensors"]);
    let mut huge = good.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    bad_file("header length past the end", huge, &["safetensors"]);
    bad_file(
        "not a safetensors file",
        b"PK\x03\x04 a zip file".to_vec(),
        &["safetensors"],
    );
    bad_file(
        "no rule",
        file(&[], &[("param_groups", "[]".into())]),
        &["rule"],
    );
    bad_file(
        "unknown rule",
        file(
            &[],
            &[
                ("rule", "no_such_rule".into()),
                ("param_groups", "[]".into()),
            ],
        ),
        &["no_such_rule"],
    );
    bad_file(
        "another format version",
        file(
            &[],
            &[
                ("format", "wgpu-optim/checkpoint/9".into()),
                ("rule", "adam".into()),
            ],
        ),
        &["checkpoint/9"],
    );
    bad_file(
        "no param_groups",
        file(&[], &[("rule", "adam".into())]),
        &["param_groups"],
    );
    bad_file(
        "param_groups not JSON",
        file(
            &[],
            &[("rule", "adam".into()), ("param_groups", "[{".into())],
        ),
        &["param_groups"],
    );
    bad_file(
        "a tensor in two groups",
        torch_file(|_, g, _| {
            let mut second = g[0].clone();
            second["params"] = json!([1]);
            g.as_array_mut().unwrap().push(second);
        }),
        &["tensor 1", "param_groups[0]", "param_groups[1]"],
    );
    bad_file(
        "a group's tensor index past the tensors of all groups",
        torch_file(|_, g, _| {
            let mut second = g[0].clone();
            g[0]["params"] = json!([0]);
            second["params"] = json!([2]);
            g.as_array_mut().unwrap().push(second);
        }),
        &["index 2 out of range"],
    );
    bad_file(
        "a tensor listed twice in its group",
        torch_file(|_, g, _| g[0]["params"] = json!([0, 0])),
        &["twice"],
    );
    bad_file(
        "a tensor index out of range",
        torch_file(|_, g, _| g[0]["params"] = json!([0, 7])),
        &["out of range"],
    );
    bad_file(
        "an empty group",
        torch_file(|_, g, _| g[0]["params"] = json!([])),
        &["empty"],
    );
    bad_file(
        "a hyperparameter Adam does not have",
        torch_file(|_, g, _| g[0]["nesterov"] = json!(true)),
        &["nesterov"],
    );
    bad_file(
        "a hyperparameter missing",
        torch_file(|_, g, _| {
            g[0].as_object_mut().unwrap().remove("eps");
        }),
        &["eps"],
    );
    bad_file(
        "lr < 0",
        torch_file(|_, g, _| g[0]["lr"] = json!(-0.1)),
        &["`lr`", "-0.1"],
    );
    bad_file(
        "betas[1] = 1",
        torch_file(|_, g, _| g[0]["betas"] = json!([0.9, 1.0])),
        &["betas[1]"],
    );
    bad_file(
        "betas of three",
        torch_file(|_, g, _| g[0]["betas"] = json!([0.9, 0.99, 0.5])),
        &["betas"],
    );
    bad_file(
        "lr a string",
        torch_file(|_, g, _| g[0]["lr"] = json!("0.001")),
        &["lr", "not a number"],
    );
    bad_file(
        "amsgrad a number",
        torch_file(|_, g, _| g[0]["amsgrad"] = json!(1)),
        &["amsgrad", "not a boolean"],
    );
    bad_file(
        "adamw with coupled decay",
        file(
            &[],
            &[
                ("rule", "adamw".into()),
                (
                    "param_groups",
                    json!([{"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01,
                        "amsgrad": false, "maximize": false, "decoupled_weight_decay": false,
                        "params": [0]}])
                    .to_string(),
                ),
            ],
        ),
        &["decoupled_weight_decay"],
    );
    bad_file(
        "a state tensor missing",
        torch_file(|t, _, _| t.retain(|x| x.0 != "state.1.exp_avg_sq")),
        &["missing tensor `state.1.exp_avg_sq`"],
    );
    bad_file(
        "a state tensor the rule does not have",
        torch_file(|t, _, _| {
            t.push((
                "state.0.max_exp_avg_sq",
                Dtype::F32,
                vec![3],
                f32s(&[0.0; 3]),
            ))
        }),
        &["unexpected tensor `state.0.max_exp_avg_sq`"],
    );
    bad_file(
        "a tensor of a third parameter",
        torch_file(|t, _, _| t.push(("state.2.exp_avg", Dtype::F32, vec![3], f32s(&[0.0; 3])))),
        &["unexpected tensor `state.2.exp_avg`"],
    );
    bad_file(
        "a tensor named `state.01.exp_avg`",
        torch_file(|t, _, _| t.push(("state.01.exp_avg", Dtype::F32, vec![3], f32s(&[0.0; 3])))),
        &["unexpected tensor"],
    );
    bad_file(
        "a state tensor in F64",
        torch_file(|t, _, _| {
            t[3] = ("state.1.exp_avg", Dtype::F64, vec![2], vec![0; 16]);
        }),
        &["`state.1.exp_avg` is F64"],
    );
    bad_file(
        "a state tensor of another length",
        torch_file(|t, _, _| {
            t[4] = ("state.1.exp_avg_sq", Dtype::F32, vec![3], f32s(&[0.0; 3]));
        }),
        &["state.1.exp_avg_sq", "expected 2"],
    );
    bad_file(
        "step tensors that disagree",
        torch_file(|t, _, _| t[5] = ("state.1.step", Dtype::F32, vec![], f32s(&[6.0]))),
        &["step"],
    );
    bad_file(
        "a step of 2.5",
        torch_file(|t, _, _| {
            t[2] = ("state.0.step", Dtype::F32, vec![], f32s(&[2.5]));
            t[5] = ("state.1.step", Dtype::F32, vec![], f32s(&[2.5]));
        }),
        &["not a step count"],
    );
    bad_file(
        "a step tensor of shape [2]",
        torch_file(|t, _, _| t[2] = ("state.0.step", Dtype::F32, vec![2], f32s(&[5.0, 5.0]))),
        &["shape"],
    );
    bad_file(
        "metadata step against the step tensors",
        torch_file(|_, _, x| *x = json!({"step": 9})),
        &["step"],
    );
    bad_file(
        "metadata lengths of the wrong count",
        torch_file(|_, _, x| *x = json!({"lengths": [3]})),
        &["lengths"],
    );
    bad_file(
        "metadata lengths that overflow",
        torch_file(|_, _, x| *x = json!({"lengths": [u64::MAX, u64::MAX]})),
        &["overflow"],
    );
    bad_file(
        "metadata lengths beyond the file",
        torch_file(|t, _, x| {
            t.clear();
            *x = json!({"lengths": [1u64 << 40, 1], "step": 1});
        }),
        &["more than the file"],
    );
    bad_file(
        "clip max_norm < 0",
        torch_file(|_, _, x| *x = json!({"clip": {"max_norm": -1.0}})),
        &["clip", "max_norm"],
    );
    bad_file(
        "grad_scale 0",
        torch_file(|_, _, x| *x = json!({"grad_scale": 0.0})),
        &["grad_scale"],
    );
    bad_file(
        "an unknown schedule",
        torch_file(|_, _, x| {
            *x = json!({"scheduler": {"schedule": {"kind": "swalr"}, "base_lr": 0.1,
                "position": 3, "lr": 0.1}})
        }),
        &["scheduler"],
    );
    bad_file(
        "a scheduler lr < 0",
        torch_file(|_, _, x| {
            *x = json!({"scheduler": {"schedule": {"kind": "none"}, "base_lr": 0.1,
                "position": 3, "lr": -1.0}})
        }),
        &["scheduler", "lr"],
    );

    // Checkpoints that are valid but do not fit the optimizer: refused by
    // load_checkpoint on both backends, nothing changed.
    let mut misfit = |what: &str, ckpt: Checkpoint, words: &'static [&'static str]| {
        out.push(Case {
            what: format!("load_checkpoint: {what}"),
            expect: expect("Error::CheckpointMismatch", mismatch, words),
            run: Box::new(move |c, g| on_both(c, g, |o| o.load_checkpoint(&ckpt))),
        });
    };
    let of = |config: Config, p: &[&[f32]]| CpuOptimizer::new(config, p).unwrap().checkpoint();
    misfit(
        "a checkpoint of another rule",
        of(
            Sgd {
                momentum: 0.9,
                ..Sgd::default()
            }
            .into(),
            &params(),
        ),
        &["rule", "sgd"],
    );
    misfit(
        "the same rule without amsgrad",
        of(Adam::default().into(), &params()),
        &["state tensors", "max_exp_avg_sq"],
    );
    misfit(
        "the same rule with maximize",
        of(
            Adam {
                amsgrad: true,
                maximize: true,
                ..Adam::default()
            }
            .into(),
            &params(),
        ),
        &["options", "maximize=true"],
    );
    misfit(
        "AdamW into Adam",
        of(
            wgpu_optim::AdamW {
                amsgrad: true,
                ..Default::default()
            }
            .into(),
            &params(),
        ),
        &["rule", "adamw"],
    );
    misfit(
        "one tensor fewer",
        of(adam(), &[&P0]),
        &["tensor count", "2", "1"],
    );
    misfit(
        "a tensor of another length",
        of(adam(), &[&P0, &[1.0; 3]]),
        &["length of tensor 1"],
    );

    // Checkpoints built by hand that are not whole: refused before any
    // change.
    let mut broken = |what: &str, edit: fn(&mut Checkpoint), words: &'static [&'static str]| {
        let mut ckpt = of(adam(), &params());
        edit(&mut ckpt);
        out.push(Case {
            what: format!("a hand-made checkpoint: {what}"),
            expect: expect("Error::Checkpoint", checkpoint_error, words),
            run: Box::new(move |c, g| {
                let mut calls = on_both(c, g, |o| o.load_checkpoint(&ckpt));
                calls.push(("save", ckpt.to_bytes().map(|_| ())));
                calls.push((
                    "from_checkpoint",
                    CpuOptimizer::from_checkpoint(&ckpt).map(|_| ()),
                ));
                calls
            }),
        });
    };
    broken(
        "lr = NaN",
        |c| {
            if let Config::Adam(a) = &mut c.config {
                a.lr = f64::NAN;
            }
        },
        &["`lr`", "NaN"],
    );
    broken(
        "a state tensor short",
        |c| {
            c.state[1].1.pop();
        },
        &["exp_avg_sq", "4 elements"],
    );
    broken(
        "a state tensor missing",
        |c| {
            c.state.pop();
        },
        &["max_exp_avg_sq"],
    );
    broken(
        "state in another order",
        |c| c.state.swap(0, 1),
        &["exp_avg"],
    );
    broken(
        "the parameters short",
        |c| {
            c.params.as_mut().unwrap().pop();
        },
        &["parameters"],
    );
    broken(
        "no tensors",
        |c| {
            c.lengths.clear();
            c.params = Some(vec![]);
            for s in c.state.iter_mut() {
                s.1.clear();
            }
        },
        &["no parameter tensors"],
    );
    broken(
        "grad_scale = inf",
        |c| c.grad_scale = f64::INFINITY,
        &["grad_scale"],
    );
    broken(
        "clip max_norm = 0",
        |c| c.clip = Some(wgpu_optim::ClipGradNorm::new(0.0)),
        &["max_norm"],
    );
    out.push(Case {
        what: "from_checkpoint without parameters".into(),
        expect: expect("Error::Checkpoint", checkpoint_error, &["no parameters"]),
        run: Box::new(|c, _| {
            let mut ckpt = c.checkpoint();
            ckpt.params = None;
            vec![
                ("cpu", CpuOptimizer::from_checkpoint(&ckpt).map(|_| ())),
                (
                    "gpu",
                    GpuOptimizer::from_checkpoint(ctx(), &ckpt, GpuOptions::default()).map(|_| ()),
                ),
            ]
        }),
    });
    out.push(Case {
        what: "load_checkpoint with parameters into caller buffers without COPY_DST".into(),
        expect: expect(
            "Error::BufferUsage",
            |e| {
                matches!(
                    e,
                    Error::BufferUsage {
                        what: "parameter",
                        ..
                    }
                )
            },
            &["COPY_DST"],
        ),
        run: Box::new(|c, _| {
            let make = || {
                ctx().device().create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: 20,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                })
            };
            let mut g = GpuOptimizer::from_buffers_with_options(
                ctx(),
                adam(),
                &[3, 2],
                make(),
                make(),
                GpuOptions {
                    vector_width: Some(1),
                    ..GpuOptions::default()
                },
            )
            .unwrap();
            vec![("gpu", g.load_checkpoint(&c.checkpoint()))]
        }),
    });

    // Files: a folder that does not exist, a path that is a folder.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bad-input");
    std::fs::create_dir_all(dir.join("a-folder")).unwrap();
    let io = |e: &Error| matches!(e, Error::Io { .. });
    let d = dir.clone();
    out.push(Case {
        what: "save into a folder that does not exist".into(),
        expect: expect("Error::Io", io, &["no-such-folder"]),
        run: Box::new(move |c, _| {
            vec![(
                "save",
                c.checkpoint().save(d.join("no-such-folder/x.safetensors")),
            )]
        }),
    });
    let d = dir.clone();
    out.push(Case {
        what: "save over a folder".into(),
        expect: expect("Error::Io", io, &["a-folder"]),
        run: Box::new(move |c, _| vec![("save", c.checkpoint().save(d.join("a-folder")))]),
    });
    let d = dir.clone();
    out.push(Case {
        what: "load a file that does not exist".into(),
        expect: expect("Error::Io", io, &["missing.safetensors"]),
        run: Box::new(move |_, _| {
            vec![(
                "load",
                Checkpoint::load(d.join("missing.safetensors")).map(|_| ()),
            )]
        }),
    });

    // Loss scale: not finite and positive in f32, or a denormal.
    for v in [
        0.0,
        -1.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1e39,
        1e-46,
    ] {
        out.push(Case {
            what: format!("set_grad_scale({v})"),
            expect: expect(
                "Error::InvalidHyperparameter grad_scale",
                |e| {
                    matches!(
                        e,
                        Error::InvalidHyperparameter {
                            name: "grad_scale",
                            ..
                        }
                    )
                },
                &["grad_scale"],
            ),
            run: Box::new(move |c, g| on_both(c, g, |o| o.set_grad_scale(v))),
        });
    }

    // Empty parameter lists (torch.optim refuses them too).
    out.push(Case {
        what: "an empty parameter list".into(),
        expect: expect(
            "Error::EmptyParameterList",
            |e| *e == Error::EmptyParameterList,
            &["empty parameter list"],
        ),
        run: Box::new(|_, _| {
            let rw = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
            let b = || {
                ctx().device().create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: 16,
                    usage: rw,
                    mapped_at_creation: false,
                })
            };
            vec![
                ("cpu", CpuOptimizer::new(adam(), &[]).map(|_| ())),
                ("gpu", GpuOptimizer::new(ctx(), adam(), &[]).map(|_| ())),
                (
                    "from_buffers",
                    GpuOptimizer::from_buffers(ctx(), adam(), &[], b(), b()).map(|_| ()),
                ),
            ]
        }),
    });

    // State writes.
    out.push(Case {
        what: "write_state of a state the rule does not have".into(),
        expect: expect(
            "Error::UnknownState",
            |e| matches!(e, Error::UnknownState { .. }),
            &["momentum_buffer"],
        ),
        run: Box::new(|c, g| {
            let t: &[&[f32]] = &[&[0.0; 3], &[0.0; 2]];
            on_both(c, g, |o| o.write_state("momentum_buffer", t))
        }),
    });
    out.push(Case {
        what: "write_state with one tensor too few".into(),
        expect: expect(
            "Error::TensorCountMismatch",
            |e| {
                *e == Error::TensorCountMismatch {
                    expected: 2,
                    got: 1,
                }
            },
            &["expected 2"],
        ),
        run: Box::new(|c, g| {
            let t: &[&[f32]] = &[&[0.0; 3]];
            on_both(c, g, |o| o.write_state("exp_avg", t))
        }),
    });
    out.push(Case {
        what: "write_state with a tensor one short".into(),
        expect: expect(
            "Error::LengthMismatch",
            |e| {
                *e == Error::LengthMismatch {
                    tensor: 1,
                    expected: 2,
                    got: 1,
                }
            },
            &["tensor 1"],
        ),
        run: Box::new(|c, g| {
            let t: &[&[f32]] = &[&[0.0; 3], &[0.0; 1]];
            let mut calls = on_both(c, g, |o| o.write_state("exp_avg_sq", t));
            calls.push(("cpu params", c.write_params(t)));
            calls
        }),
    });

    // Kernel options.
    out.push(Case {
        what: "vector_width 3".into(),
        expect: expect(
            "Error::InvalidOptions",
            |e| matches!(e, Error::InvalidOptions(_)),
            &["vector_width", "3"],
        ),
        run: Box::new(|_, _| {
            let o = GpuOptions {
                vector_width: Some(3),
                ..GpuOptions::default()
            };
            vec![(
                "gpu",
                GpuOptimizer::with_options(ctx(), adam(), &params(), o).map(|_| ()),
            )]
        }),
    });
    out.push(Case {
        what: "vector_width 4 over caller buffers of 5 elements".into(),
        expect: expect(
            "Error::InvalidOptions",
            |e| matches!(e, Error::InvalidOptions(_)),
            &["multiple of 4"],
        ),
        run: Box::new(|_, _| {
            let b = || {
                ctx().device().create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: 20,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                })
            };
            let o = GpuOptions {
                vector_width: Some(4),
                ..GpuOptions::default()
            };
            vec![(
                "gpu",
                GpuOptimizer::from_buffers_with_options(ctx(), adam(), &[3, 2], b(), b(), o)
                    .map(|_| ()),
            )]
        }),
    });
    out
}

#[test]
fn every_bad_input_is_refused_and_changes_nothing() {
    let cases = cases();
    let (mut cpu, mut gpu) = fixture();
    let before = (snapshot(&cpu), snapshot(&gpu));
    let mut calls = 0;
    for case in &cases {
        for (backend, result) in (case.run)(&mut cpu, &mut gpu) {
            let e = match result {
                Err(e) => e,
                Ok(()) => panic!("{} ({backend}): accepted", case.what),
            };
            assert!(
                (case.expect.matches)(&e),
                "{} ({backend}): expected {}, got {e:?}",
                case.what,
                case.expect.label
            );
            let text = e.to_string();
            for w in &case.expect.words {
                assert!(
                    text.contains(w),
                    "{} ({backend}): message {text:?} lacks {w:?}",
                    case.what
                );
            }
            calls += 1;
        }
        assert_eq!(
            (snapshot(&cpu), snapshot(&gpu)),
            before,
            "{}: an optimizer changed",
            case.what
        );
    }
    // Both still step as before.
    let grads: &[&[f32]] = &[&[0.1, 0.2, -0.3], &[1.0, -1.0]];
    let (mut c2, mut g2) = fixture();
    cpu.step(grads).unwrap();
    c2.step(grads).unwrap();
    gpu.step(grads).unwrap();
    g2.step(grads).unwrap();
    assert_eq!(snapshot(&cpu), snapshot(&c2));
    assert_eq!(snapshot(&gpu), snapshot(&g2));
    println!(
        "{} bad inputs ({calls} refused calls), each with its expected error, nothing changed",
        cases.len()
    );
}
