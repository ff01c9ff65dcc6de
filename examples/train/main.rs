//! Trains a small network on a real data set, entirely on the GPU: the
//! forward pass, the loss and the gradients are this example's own WGSL
//! kernels (`examples/train/mlp.wgsl`) writing into wgpu buffers, and the
//! library steps those buffers in place ([`GpuOptimizer::from_buffers`],
//! [`GpuOptimizer::record_step`] into the same command encoder). Nothing goes
//! through the host but each step's loss, for printing.
//!
//! The data: the 1797 handwritten digits (8×8 pixels, 10 classes) of
//! scikit-learn's `load_digits`, shipped in `examples/data/digits.csv`,
//! 1437 to train on and 360 held out. The network: 64 inputs, one hidden
//! layer of 64 ReLU units, 10 outputs, softmax cross-entropy.
//!
//! ```sh
//! cargo run --release --example train                         # AdamW, 20 epochs
//! cargo run --release --example train -- --optimizer sgd --lr 0.3 --constant-lr
//! cargo run --release --example train -- --compare            # every rule, docs/train-compare.png
//! cargo run --release --example train -- --precision bf16-master
//! cargo run --release --example train -- --compare-precision  # every precision mode, a table
//! ```

mod mlp;
#[path = "../common/plot.rs"]
mod plot;

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;
use wgpu_optim::precision::{ParamDtype, Precision, StateDtype};
use wgpu_optim::schedule::Schedule;
use wgpu_optim::{
    AdEMAMix, Adadelta, Adagrad, Adam, AdamW, AdamWScheduleFree, Adamax, Asgd, Config, GpuContext,
    Lamb, Lion, NAdam, RAdam, RmsProp, Rprop, Sgd, SgdScheduleFree,
};

use mlp::{Digits, Hyper, Mlp};

/// How the optimizer keeps the parameters and its state (`--precision`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Everything in f32.
    F32,
    /// bf16 parameters, an f32 master copy stepped in f32.
    Bf16Master,
    /// f32 parameters, bf16 moments.
    Bf16Moments,
    /// bf16 parameters rounded stochastically, no master copy.
    Bf16Sr,
    /// f32 parameters, 8-bit blockwise moments (bitsandbytes' scheme;
    /// tensors under 4096 elements keep f32).
    #[value(name = "8bit")]
    Int8,
}

impl Mode {
    const ALL: [Mode; 5] = [
        Mode::F32,
        Mode::Bf16Master,
        Mode::Bf16Moments,
        Mode::Bf16Sr,
        Mode::Int8,
    ];

    fn precision(self, seed: u64) -> Precision {
        let (param_dtype, state_dtype, master_weights) = match self {
            Mode::F32 => (ParamDtype::F32, StateDtype::F32, false),
            Mode::Bf16Master => (ParamDtype::Bf16, StateDtype::F32, true),
            Mode::Bf16Moments => (ParamDtype::F32, StateDtype::Bf16, false),
            Mode::Bf16Sr => (ParamDtype::Bf16, StateDtype::F32, false),
            Mode::Int8 => (ParamDtype::F32, StateDtype::Int8Blockwise, false),
        };
        Precision {
            param_dtype,
            state_dtype,
            master_weights,
            seed,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Mode::F32 => "f32",
            Mode::Bf16Master => "bf16 + f32 master",
            Mode::Bf16Moments => "bf16 moments",
            Mode::Bf16Sr => "bf16, stochastic rounding",
            Mode::Int8 => "8-bit moments",
        }
    }
}

/// The rules, each with a learning rate that suits this problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Rule {
    Sgd,
    Momentum,
    Nesterov,
    Adagrad,
    Rmsprop,
    Adam,
    Adamw,
    Lamb,
    Radam,
    Adamax,
    Nadam,
    Asgd,
    Adadelta,
    Rprop,
    Lion,
    Ademamix,
    SgdScheduleFree,
    AdamwScheduleFree,
}

impl Rule {
    const ALL: [Rule; 18] = [
        Rule::Sgd,
        Rule::Momentum,
        Rule::Nesterov,
        Rule::Adagrad,
        Rule::Rmsprop,
        Rule::Adam,
        Rule::Adamw,
        Rule::Lamb,
        Rule::Radam,
        Rule::Adamax,
        Rule::Nadam,
        Rule::Asgd,
        Rule::Adadelta,
        Rule::Rprop,
        Rule::Lion,
        Rule::Ademamix,
        Rule::SgdScheduleFree,
        Rule::AdamwScheduleFree,
    ];

    /// Whether the rule is schedule-free: it trains at a constant lr (its
    /// averaging replaces the schedule) and is evaluated at its average `x`.
    fn schedule_free(self) -> bool {
        matches!(self, Rule::SgdScheduleFree | Rule::AdamwScheduleFree)
    }

    /// The default learning rate here, for the default 20 epochs with the
    /// cosine schedule: of 1e-3, 3e-3, 0.01, ..., 0.3, 1, the one with the
    /// lowest mean training loss over the last epoch (seed 1), the smaller
    /// of two within 30 % of each other (the same sweep for every rule).
    /// Plain SGD, ASGD, Adadelta and schedule-free SGD take the largest:
    /// this problem is small and well conditioned. The schedule-free rules
    /// train at a constant lr and are evaluated at their average.
    fn default_lr(self) -> f64 {
        match self {
            Rule::Sgd => 1.0,
            Rule::Momentum | Rule::Nesterov => 0.3,
            Rule::Adagrad => 0.1,
            Rule::Rmsprop => 0.01,
            Rule::Adam | Rule::Adamw => 0.03,
            Rule::Lamb => 0.01,
            Rule::Radam => 0.1,
            Rule::Adamax => 0.1,
            Rule::Nadam => 0.1,
            Rule::Asgd => 1.0,
            Rule::Adadelta => 1.0,
            Rule::Rprop => 0.01,
            Rule::Lion => 0.01,
            Rule::Ademamix => 0.03,
            Rule::SgdScheduleFree => 1.0,
            Rule::AdamwScheduleFree => 0.1,
        }
    }

    fn config(self, lr: f64) -> Config {
        match self {
            Rule::Sgd => Sgd {
                lr,
                ..Sgd::default()
            }
            .into(),
            Rule::Momentum | Rule::Nesterov => Sgd {
                lr,
                momentum: 0.9,
                nesterov: self == Rule::Nesterov,
                ..Sgd::default()
            }
            .into(),
            Rule::Adagrad => Adagrad {
                lr,
                ..Adagrad::default()
            }
            .into(),
            Rule::Rmsprop => RmsProp {
                lr,
                ..RmsProp::default()
            }
            .into(),
            Rule::Adam => Adam {
                lr,
                ..Adam::default()
            }
            .into(),
            Rule::Adamw => AdamW {
                lr,
                ..AdamW::default()
            }
            .into(),
            Rule::Lamb => Lamb {
                lr,
                ..Lamb::default()
            }
            .into(),
            Rule::Radam => RAdam {
                lr,
                ..RAdam::default()
            }
            .into(),
            Rule::Adamax => Adamax {
                lr,
                ..Adamax::default()
            }
            .into(),
            Rule::Nadam => NAdam {
                lr,
                ..NAdam::default()
            }
            .into(),
            Rule::Asgd => Asgd {
                lr,
                ..Asgd::default()
            }
            .into(),
            Rule::Adadelta => Adadelta {
                lr,
                ..Adadelta::default()
            }
            .into(),
            Rule::Rprop => Rprop {
                lr,
                ..Rprop::default()
            }
            .into(),
            Rule::Lion => Lion {
                lr,
                ..Lion::default()
            }
            .into(),
            Rule::Ademamix => AdEMAMix {
                lr,
                ..AdEMAMix::default()
            }
            .into(),
            Rule::SgdScheduleFree => SgdScheduleFree {
                lr,
                ..SgdScheduleFree::default()
            }
            .into(),
            Rule::AdamwScheduleFree => AdamWScheduleFree {
                lr,
                ..AdamWScheduleFree::default()
            }
            .into(),
        }
    }

    fn label(self, lr: f64) -> String {
        let name = match self {
            Rule::Sgd => "SGD",
            Rule::Momentum => "momentum 0.9",
            Rule::Nesterov => "Nesterov 0.9",
            Rule::Adagrad => "Adagrad",
            Rule::Rmsprop => "RMSprop",
            Rule::Adam => "Adam",
            Rule::Adamw => "AdamW",
            Rule::Lamb => "LAMB",
            Rule::Radam => "RAdam",
            Rule::Adamax => "Adamax",
            Rule::Nadam => "NAdam",
            Rule::Asgd => "ASGD",
            Rule::Adadelta => "Adadelta",
            Rule::Rprop => "Rprop",
            Rule::Lion => "Lion",
            Rule::Ademamix => "AdEMAMix",
            Rule::SgdScheduleFree => "SGD schedule-free",
            Rule::AdamwScheduleFree => "AdamW schedule-free",
        };
        format!("{name}  lr {lr}")
    }
}

/// Train a one-hidden-layer network on the digits, on the GPU.
#[derive(Parser, Debug)]
struct Args {
    /// The update rule.
    #[arg(long, value_enum, default_value = "adamw")]
    optimizer: Rule,
    /// Learning rate (default: one that suits the rule on this problem).
    #[arg(long)]
    lr: Option<f64>,
    /// Passes over the training set.
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    /// Samples per step.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Hidden units.
    #[arg(long, default_value_t = 64)]
    hidden: usize,
    /// Keep the learning rate constant (by default it follows a cosine from
    /// `--lr` down to 0 over the run, torch's `CosineAnnealingLR`).
    #[arg(long)]
    constant_lr: bool,
    /// Seeds the initial weights and the sample order.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Train with every rule from the same start and plot their loss curves
    /// and test accuracies side by side.
    #[arg(long)]
    compare: bool,
    /// How the optimizer keeps the parameters and its state. Other than
    /// f32 the step runs on the CPU backend in that mode (the GPU kernels
    /// keep f32 only), all tensors one group, the model's buffer getting
    /// the stored parameters after each step.
    #[arg(long, value_enum, default_value = "f32")]
    precision: Mode,
    /// Train with `--optimizer` in every precision mode from the same start
    /// (each on the CPU backend, f32 included, so the rows differ in the
    /// storage only) and print the final losses and accuracies side by side.
    #[arg(long)]
    compare_precision: bool,
    /// Where `--compare` writes its picture.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/train-compare.png"))]
    out: PathBuf,
}

/// What one training run leaves behind.
struct Run {
    label: String,
    /// Each step's mean loss over its batch.
    losses: Vec<f32>,
    /// Test accuracy after each epoch.
    accuracy: Vec<f32>,
    test_loss: f32,
    seconds: f64,
}

#[allow(clippy::too_many_arguments)]
fn train(
    ctx: &GpuContext,
    data: &Digits,
    hyper: Hyper,
    rule: Rule,
    lr: f64,
    epochs: usize,
    cosine: bool,
    verbose: bool,
    precision: Option<Precision>,
    pb: &ProgressBar,
) -> Result<Run, mlp::Error> {
    let started = Instant::now();
    let mut model = match precision {
        Some(p) => Mlp::with_precision(ctx, data, hyper, rule.config(lr), p)?,
        None => Mlp::new(ctx, data, hyper, rule.config(lr))?,
    };
    if cosine && !rule.schedule_free() {
        model.set_schedule(Schedule::CosineAnnealing {
            t_max: (epochs * model.steps_per_epoch()) as u64,
            eta_min: 0.0,
        })?;
    }
    let label = rule.label(lr);
    pb.set_length((epochs * model.steps_per_epoch()) as u64);
    pb.set_position(0);
    pb.set_prefix(label.clone());
    let mut losses = Vec::new();
    let mut accuracy = Vec::new();
    let mut test_loss = f32::NAN;
    for epoch in 1..=epochs {
        let epoch_losses = model.train_epoch()?;
        let mean = epoch_losses.iter().sum::<f32>() / epoch_losses.len() as f32;
        losses.extend(epoch_losses);
        let (loss, acc) = model.evaluate()?;
        test_loss = loss;
        accuracy.push(acc);
        pb.inc(model.steps_per_epoch() as u64);
        let line = format!(
            "epoch {epoch:>3}  train loss {mean:.4}  test loss {loss:.4}  test accuracy {:5.1} %",
            100.0 * acc
        );
        if verbose {
            pb.suspend(|| println!("{line}"));
        }
        pb.set_message(line);
    }
    Ok(Run {
        label,
        losses,
        accuracy,
        test_loss,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// An exponential moving average (weight `1 − alpha` on the past) of the
/// per-step losses, started from the first epoch's mean so the curve does
/// not begin at one noisy batch.
fn smooth(values: &[f32], alpha: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(values.len());
    let mut avg = values.first().copied().unwrap_or(0.0) as f64;
    for &v in values {
        avg += alpha * (v as f64 - avg);
        out.push(avg);
    }
    out
}

fn draw(
    runs: &[Run],
    steps_per_epoch: usize,
    title: &str,
    file: &std::path::Path,
) -> Result<(), mlp::Error> {
    let (width, height) = (1580u32, 620u32);
    let root = BitMapBackend::new(file, (width, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (header, body) = root.split_vertically(60);
    header.draw(&Text::new(
        title,
        (16, 14),
        ("sans-serif", 24).into_font().color(&BLACK),
    ))?;
    let (left, rest) = body.split_horizontally(560);
    let (middle, legend) = rest.split_horizontally(560);
    let epochs = runs.iter().map(|r| r.accuracy.len()).max().unwrap_or(1) as f64;

    // Training loss, smoothed, on a log scale.
    let lo = runs
        .iter()
        .flat_map(|r| smooth(&r.losses, 0.1))
        .fold(f64::INFINITY, f64::min)
        .max(1e-4);
    let mut chart = ChartBuilder::on(&left)
        .caption("training loss (moving average)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..epochs, (lo * 0.8..3.0).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("cross-entropy")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v}"))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;
    for (k, run) in runs.iter().enumerate() {
        let colour = plot::PALETTE[k % plot::PALETTE.len()];
        let points = smooth(&run.losses, 0.1)
            .into_iter()
            .enumerate()
            .map(|(i, v)| ((i + 1) as f64 / steps_per_epoch as f64, v));
        chart.draw_series(LineSeries::new(points, colour.stroke_width(2)))?;
    }

    // Test accuracy after each epoch.
    let mut chart = ChartBuilder::on(&middle)
        .caption("test accuracy (360 held-out digits)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..epochs, 70.0..100.0)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("%")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;
    for (k, run) in runs.iter().enumerate() {
        let colour = plot::PALETTE[k % plot::PALETTE.len()];
        let points: Vec<(f64, f64)> = run
            .accuracy
            .iter()
            .enumerate()
            .map(|(e, &a)| ((e + 1) as f64, (100.0 * a as f64).max(70.0)))
            .collect();
        chart.draw_series(LineSeries::new(
            points.iter().copied(),
            colour.stroke_width(2),
        ))?;
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
    }

    // The legend: each rule with its final test accuracy and training loss.
    legend.draw(&Text::new(
        format!("after epoch {epochs}: test accuracy,"),
        (10, 30),
        ("sans-serif", 17).into_font().color(&BLACK),
    ))?;
    legend.draw(&Text::new(
        "training loss (last epoch's mean)",
        (10, 52),
        ("sans-serif", 17).into_font().color(&BLACK),
    ))?;
    // Rows as tall as fit below the heading, at most 36 pixels.
    let row = (36).min((height as i32 - 60 - 110) / runs.len().max(1) as i32);
    for (k, run) in runs.iter().enumerate() {
        let acc = run.accuracy.last().copied().unwrap_or(0.0);
        let tail = &run.losses[run.losses.len().saturating_sub(steps_per_epoch)..];
        let loss = tail.iter().sum::<f32>() / tail.len().max(1) as f32;
        plot::legend_entry(
            &legend,
            (10, 96 + row * k as i32),
            plot::PALETTE[k % plot::PALETTE.len()],
            false,
            &format!("{}   {:.1} %   {loss:.4}", run.label, 100.0 * acc),
        )?;
    }
    root.present()?;
    Ok(())
}

fn main() -> Result<(), mlp::Error> {
    let args = Args::parse();
    let ctx = GpuContext::new()?;
    let data = Digits::load()?;
    let hyper = Hyper {
        hidden: args.hidden,
        batch: args.batch,
        seed: args.seed,
    };
    println!(
        "{} training digits, {} test digits; 64-{}-10 perceptron, batch {}; on {}",
        data.train.len(),
        data.test.len(),
        args.hidden,
        args.batch,
        ctx.adapter_label()
    );
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template("{prefix:<22} {bar:30.cyan/blue} {pos:>5}/{len} {msg}")
            .expect("a valid template"),
    );
    let rules: Vec<Rule> = if args.compare {
        Rule::ALL.to_vec()
    } else {
        vec![args.optimizer]
    };
    // (rule, precision mode, on the CPU backend) of each run.
    let plan: Vec<(Rule, Mode, bool)> = if args.compare_precision {
        Mode::ALL
            .iter()
            .map(|&m| (args.optimizer, m, true))
            .collect()
    } else {
        rules
            .iter()
            .map(|&r| (r, args.precision, args.precision != Mode::F32))
            .collect()
    };
    let mut runs = Vec::new();
    for (rule, mode, on_cpu) in plan {
        let lr = match args.lr {
            Some(lr) if !args.compare => lr,
            _ => rule.default_lr(),
        };
        let run = train(
            &ctx,
            &data,
            hyper,
            rule,
            lr,
            args.epochs,
            !args.constant_lr,
            !args.compare && !args.compare_precision,
            on_cpu.then(|| mode.precision(args.seed)),
            &pb,
        )?;
        pb.suspend(|| {
            let label = match on_cpu {
                true => format!("{} [{}]", run.label, mode.label()),
                false => run.label.clone(),
            };
            println!(
                "{:<22} final train loss {:.4} (last epoch's mean)  test loss {:.4}  test accuracy {:.1} %  ({:.1} s)",
                label,
                run.losses[run.losses.len() - data.train.len().div_ceil(args.batch)..]
                    .iter()
                    .sum::<f32>()
                    / data.train.len().div_ceil(args.batch) as f32,
                run.test_loss,
                100.0 * run.accuracy.last().copied().unwrap_or(0.0),
                run.seconds
            )
        });
        runs.push(run);
    }
    pb.finish_and_clear();
    if args.compare {
        plot::register_font();
        if let Some(dir) = args.out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let title = format!(
            "Handwritten digits (8×8), 64-{}-10 perceptron, batch {}, {}: every step on the GPU",
            args.hidden,
            args.batch,
            if args.constant_lr {
                "constant learning rate"
            } else {
                "cosine learning-rate schedule (schedule-free rules: constant)"
            }
        );
        draw(
            &runs,
            data.train.len().div_ceil(args.batch),
            &title,
            &args.out,
        )?;
        println!("wrote {}", args.out.display());
    }
    Ok(())
}
