//! A burn model trained with burn's own AdamW and with wgpu-optim's fused
//! AdamW, side by side: the same initial weights, the same batches, the
//! same hyperparameters. Prints the loss and held-out accuracy of each
//! after every epoch, and each optimizer step's median time; then times
//! the step alone on a larger model (a few million parameters in many
//! tensors) for every rule burn and this library share (SGD with
//! momentum, RMSprop, Adam, AdamW, Lion, LAMB, Adafactor, Muon), burn's
//! against ours. `--plot FILE` draws the loss curves, `--json FILE` writes
//! the step times.
//!
//! ```text
//! cargo run --release -p wgpu-optim-burn --example digits
//! cargo run --release -p wgpu-optim-burn --example digits -- --epochs 10 --plot docs/burn-digits.png
//! ```

#[path = "common/anchors.rs"]
mod anchors;
#[path = "common/digits.rs"]
mod digits;
#[path = "../../../examples/common/plot.rs"]
mod plot;

use std::time::Instant;

use anchors::{adamw, anchors, burn_adamw, LR};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Tensor};
use digits::{epoch_batches, load, Mlp};
use plotters::prelude::*;
use wgpu_optim_burn::{BurnGpu, ModelOptimizer};

fn ours(gpu: &BurnGpu) -> ModelOptimizer {
    ModelOptimizer::new(gpu, adamw())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Milliseconds of `f`, with the device's queued work finished before and
/// after (burn's steps are queued, not run, until synchronised).
fn timed<T>(device: &Device, f: impl FnOnce() -> T) -> (T, f64) {
    device.sync().expect("burn's device");
    let t = Instant::now();
    let out = f();
    device.sync().expect("burn's device");
    (out, t.elapsed().as_secs_f64() * 1e3)
}

struct Args {
    epochs: usize,
    plot: Option<String>,
    large_steps: usize,
    json: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        epochs: 10,
        plot: None,
        large_steps: 20,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--epochs" => a.epochs = value().parse().expect("--epochs N"),
            "--plot" => a.plot = Some(value()),
            "--large-steps" => a.large_steps = value().parse().expect("--large-steps N"),
            "--json" => a.json = Some(value()),
            other => panic!(
                "unknown argument {other} (--epochs N, --plot FILE, --large-steps N, --json FILE)"
            ),
        }
    }
    a
}

fn main() {
    let args = args();
    let gpu = BurnGpu::new().expect("burn's wgpu runtime");
    let device = gpu.device().clone().autodiff();
    println!("adapter: {}", gpu.context().adapter_label());
    let (train, test) = load();
    device.seed(42);
    let init = Mlp::new(64, &device);
    let (mut a, mut b) = (init.clone(), init);
    let (mut burn_opt, mut our_opt) = (burn_adamw(), ours(&gpu));
    let (mut burn_ms, mut our_ms) = (Vec::new(), Vec::new());
    let mut curves: Vec<[f64; 4]> = Vec::new();
    println!(
        "{:>5} {:>11} {:>10} {:>11} {:>10}",
        "epoch", "burn loss", "burn acc", "ours loss", "ours acc"
    );
    for epoch in 0..args.epochs {
        let (mut la, mut lb, mut n) = (0.0, 0.0, 0.0);
        for idx in epoch_batches(train.len(), 64, epoch as u64) {
            let (x, y) = train.batch(&idx, &device);
            let loss = a.loss(x.clone(), y.clone());
            la += loss.clone().into_scalar::<f32>() as f64;
            let g = GradientsParams::from_grads(loss.backward(), &a);
            let (next, ms) = timed(&device, || burn_opt.step(LR, a, g));
            a = next;
            burn_ms.push(ms);
            let loss = b.loss(x, y);
            lb += loss.clone().into_scalar::<f32>() as f64;
            let g = GradientsParams::from_grads(loss.backward(), &b);
            let (next, ms) = timed(&device, || our_opt.step(b, g));
            b = next.expect("wgpu-optim's step");
            our_ms.push(ms);
            n += 1.0;
        }
        let (acc_a, acc_b) = (a.accuracy(&test, &device), b.accuracy(&test, &device));
        println!(
            "{:>5} {:>11.4} {:>9.1}% {:>11.4} {:>9.1}%",
            epoch + 1,
            la / n,
            100.0 * acc_a,
            lb / n,
            100.0 * acc_b
        );
        curves.push([la / n, lb / n, acc_a, acc_b]);
    }
    println!(
        "optimizer step, median of {} (digits MLP, {} parameters in 4 tensors): burn AdamW {:.3} ms, wgpu-optim AdamW {:.3} ms",
        burn_ms.len(),
        64 * 64 + 64 + 64 * 10 + 10,
        median(burn_ms),
        median(our_ms)
    );
    large(&gpu, &args);
    if let Some(path) = &args.plot {
        draw(path, &curves).expect("the plot");
        println!("wrote {path}");
    }
}

/// A deep stack of linear layers: many tensors, a few million parameters.
#[derive(Module, Debug)]
struct Deep {
    layers: Vec<Linear>,
}

impl Deep {
    /// Every parameter, packed, read back to the host.
    fn flat(&self) -> Vec<f32> {
        let mut out = Vec::new();
        for l in &self.layers {
            out.extend(
                l.weight
                    .val()
                    .into_data()
                    .try_to_vec::<f32>()
                    .expect("f32 weights"),
            );
            if let Some(b) = &l.bias {
                out.extend(b.val().into_data().try_to_vec::<f32>().expect("f32 biases"));
            }
        }
        out
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Each anchor's step on 16 linear layers of 512×512: burn's and ours, on
/// the same weights and the same input, each model stepped on its own
/// gradients; the median step times, and how far apart the two models are
/// after the first step (the same weights and gradients in) against how
/// far it moved them. Only the first step says whether the two compute the
/// same rule: this stack's gradients vanish towards its input, and the
/// adaptive rules turn gradients near 0 into steps of about `lr` whose sign
/// the last bits decide, so any rounding difference grows after it.
fn large(gpu: &BurnGpu, args: &Args) {
    const WIDTH: usize = 512;
    const DEPTH: usize = 16;
    let device = gpu.device().clone().autodiff();
    let x = Tensor::<2>::random([32, WIDTH], Distribution::Default, &device);
    println!(
        "optimizer step on {DEPTH} linear layers {WIDTH}x{WIDTH}, median of {} steps (after 2 warm-up steps):",
        args.large_steps
    );
    println!(
        "{:<17} {:>10} {:>9} {:>14} {:>10} {:>12}",
        "rule", "parameters", "tensors", "burn (ms)", "ours (ms)", "burn / ours"
    );
    let mut rows = Vec::new();
    for mut anchor in anchors() {
        let mut ours = ModelOptimizer::new(gpu, anchor.ours.clone());
        let deep = Deep {
            layers: (0..DEPTH)
                .map(|_| {
                    LinearConfig::new(WIDTH, WIDTH)
                        .with_bias(anchor.bias)
                        .init(&device)
                })
                .collect(),
        };
        let n = DEPTH * (WIDTH * WIDTH + if anchor.bias { WIDTH } else { 0 });
        let tensors = DEPTH * if anchor.bias { 2 } else { 1 };
        let grads = |m: &Deep| {
            let mut h = x.clone();
            for l in &m.layers {
                h = l.forward(h);
            }
            GradientsParams::from_grads(h.powi_scalar(2).mean().backward(), m)
        };
        let start = deep.flat();
        let (mut a, mut b) = (deep.clone(), deep);
        let (mut burn_ms, mut our_ms) = (Vec::new(), Vec::new());
        // The first step's agreement: the same weights and gradients in.
        let (mut apart, mut moved) = (0.0f32, 0.0f32);
        for s in 0..args.large_steps + 2 {
            let g = grads(&a);
            let (next, ms) = timed(&device, || anchor.burn.step(anchor.lr, a, g));
            a = next;
            let g = grads(&b);
            let (next, t) = timed(&device, || ours.step(b, g));
            b = next.expect("wgpu-optim's step");
            if s == 0 {
                let (pa, pb) = (a.flat(), b.flat());
                apart = max_abs_diff(&pa, &pb);
                moved = max_abs_diff(&pb, &start);
            }
            // The first two are warm-up (pipelines, the copy of the
            // parameters the other model's clone shares).
            if s >= 2 {
                burn_ms.push(ms);
                our_ms.push(t);
            }
        }
        let (bm, om) = (median(burn_ms), median(our_ms));
        println!(
            "{:<17} {n:>10} {tensors:>9} {bm:>14.3} {om:>10.3} {:>11.1}x   (first step: max |burn - ours| {apart:.2e}, max move {moved:.2e})",
            anchor.name,
            bm / om
        );
        rows.push((anchor.name, n, tensors, bm, om, apart, moved));
    }
    if let Some(path) = &args.json {
        let rows: Vec<String> = rows
            .iter()
            .map(|(name, n, t, bm, om, apart, moved)| {
                format!(
                    "{{\"rule\":\"{name}\",\"parameters\":{n},\"tensors\":{t},\"steps\":{},\"burn_median_ms\":{bm},\"ours_median_ms\":{om},\"first_step_max_abs_apart\":{apart},\"first_step_max_abs_moved\":{moved}}}",
                    args.large_steps
                )
            })
            .collect();
        let text = format!(
            "{{\"adapter\":\"{}\",\"large\":[{}]}}\n",
            gpu.context().adapter_label(),
            rows.join(",")
        );
        std::fs::write(path, text).expect("the JSON file");
        println!("wrote {path}");
    }
}

/// Two panels, loss and held-out accuracy an epoch; burn's line drawn
/// wide and light under ours, so that where they coincide both show.
fn draw(path: &str, curves: &[[f64; 4]]) -> Result<(), Box<dyn std::error::Error>> {
    plot::register_font();
    let root = BitMapBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);
    let epochs = curves.len().max(2) as f64;
    let panels = [
        (
            left,
            "mean training loss",
            0usize,
            0.0,
            curves.iter().map(|c| c[0].max(c[1])).fold(0.0, f64::max) * 1.05,
        ),
        (right, "held-out accuracy", 2usize, 0.0, 1.0),
    ];
    for (area, title, col, lo, hi) in panels {
        let mut chart = ChartBuilder::on(&area)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(1f64..epochs, lo..hi)?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .x_desc("epoch")
            .draw()?;
        let styles = [
            ("burn AdamW", plot::PALETTE[0].mix(0.45).stroke_width(7)),
            ("wgpu-optim AdamW", plot::PALETTE[1].stroke_width(2)),
        ];
        for (i, (name, style)) in styles.into_iter().enumerate() {
            let pts: Vec<(f64, f64)> = curves
                .iter()
                .enumerate()
                .map(|(e, c)| ((e + 1) as f64, c[col + i]))
                .collect();
            chart
                .draw_series(LineSeries::new(pts, style))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::MiddleRight)
            .background_style(WHITE)
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
