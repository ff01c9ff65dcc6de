//! The paths of every rule across four two-dimensional error surfaces,
//! drawn over the surfaces' contour lines: `docs/trajectory-*.png`.
//!
//! ```sh
//! cargo run --release --example trajectories            # writes docs/trajectory-*.png
//! cargo run --release --example trajectories -- OUT_DIR # somewhere else
//! ```
//!
//! Every step runs through the library's GPU kernels: one [`GpuOptimizer`]
//! per rule and surface, its parameter a single tensor of two elements
//! `(x, y)`. The gradient of each surface is computed on the host from the
//! parameters read back after each step, which is fine for a picture of two
//! numbers (a training loop would keep both on the GPU: see the `train`
//! example).
//!
//! The surfaces show the behaviours the textbooks draw:
//!
//! - **an elongated valley**: plain gradient descent zig-zags across the
//!   steep direction and crawls along the shallow one; momentum overshoots
//!   the minimum and circles it; Nesterov's look-ahead damps that; the
//!   adaptive rules (Adagrad, RMSprop, Adam) scale each coordinate by its
//!   own gradient history and head for the minimum on a straighter line;
//! - **a saddle** (`f = x²/2 + y⁴/4 − y²/2`, start next to the ridge
//!   `y = 0`): gradient descent leaves the saddle point only as fast as the
//!   tiny gradient across the ridge lets it, the adaptive rules normalise it
//!   away and leave at once;
//! - **a sparse feature**: the gradient in `y` is zero on nine steps in ten
//!   (a feature that shows up in one example in ten). Adagrad's steps in
//!   `x`, the frequent feature, die out as its sum of squares grows, while
//!   each rare `y` gradient still moves `y` by a full step; SGD takes
//!   the rare feature's gradient at face value and barely moves in `y`;
//! - **Rosenbrock's banana** (`f = (1 − x)² + 100·(y − x²)²`): a curved
//!   valley with a flat floor, hard for every first-order method.
//!
//! The hyperparameters of each rule are chosen per surface to show the
//! rule's character, and printed in the legend.

#[path = "common/plot.rs"]
mod plot;

use std::path::{Path, PathBuf};
use std::time::Instant;

use plotters::prelude::*;
use wgpu_optim::{
    AdEMAMix, Adadelta, Adagrad, Adam, AdamW, AdamWScheduleFree, Adamax, Asgd, Config, GpuContext,
    GpuOptimizer, Lamb, Lion, NAdam, RAdam, RmsProp, Rprop, Sgd, SgdScheduleFree,
};

/// One of the surfaces.
#[derive(Clone, Copy, Debug)]
enum Surface {
    Valley,
    Saddle,
    Sparse,
    Rosenbrock,
}

/// Curvatures of the valley: gentle along `x`, steep along `y`.
const VALLEY: (f64, f64) = (0.5, 20.0);
/// The sparse surface's minimum, and how often `y` has a gradient.
const SPARSE_MIN: (f64, f64) = (4.0, 4.0);
const SPARSE_EVERY: u64 = 10;

impl Surface {
    const ALL: [Surface; 4] = [
        Surface::Valley,
        Surface::Saddle,
        Surface::Sparse,
        Surface::Rosenbrock,
    ];

    fn file(self) -> &'static str {
        match self {
            Surface::Valley => "trajectory-valley.png",
            Surface::Saddle => "trajectory-saddle.png",
            Surface::Sparse => "trajectory-sparse.png",
            Surface::Rosenbrock => "trajectory-rosenbrock.png",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Surface::Valley => "Elongated valley   f = (0.5·x² + 20·y²) / 2",
            Surface::Saddle => "Saddle   f = x²/2 + y⁴/4 − y²/2",
            Surface::Sparse => "Sparse feature   y has a gradient on one step in ten",
            Surface::Rosenbrock => "Rosenbrock   f = (1 − x)² + 100·(y − x²)²",
        }
    }

    /// The function the contours show (for the sparse surface, the loss
    /// averaged over the ten steps).
    fn f(self, x: f64, y: f64) -> f64 {
        match self {
            Surface::Valley => 0.5 * (VALLEY.0 * x * x + VALLEY.1 * y * y),
            Surface::Saddle => 0.5 * x * x + 0.25 * y.powi(4) - 0.5 * y * y,
            Surface::Sparse => {
                let (dx, dy) = (x - SPARSE_MIN.0, y - SPARSE_MIN.1);
                0.5 * (dx * dx + dy * dy / SPARSE_EVERY as f64)
            }
            Surface::Rosenbrock => (1.0 - x).powi(2) + 100.0 * (y - x * x).powi(2),
        }
    }

    /// The gradient the optimizer sees at step `t` (1 for the first).
    fn grad(self, x: f64, y: f64, t: u64) -> (f64, f64) {
        match self {
            Surface::Valley => (VALLEY.0 * x, VALLEY.1 * y),
            Surface::Saddle => (x, y * y * y - y),
            Surface::Sparse => {
                let gy = if (t - 1).is_multiple_of(SPARSE_EVERY) {
                    y - SPARSE_MIN.1
                } else {
                    0.0
                };
                (x - SPARSE_MIN.0, gy)
            }
            Surface::Rosenbrock => (
                -2.0 * (1.0 - x) - 400.0 * x * (y - x * x),
                200.0 * (y - x * x),
            ),
        }
    }

    fn start(self) -> (f32, f32) {
        match self {
            Surface::Valley => (-9.0, 1.6),
            Surface::Saddle => (-2.0, 1e-3),
            Surface::Sparse => (0.0, 0.0),
            Surface::Rosenbrock => (-1.2, 1.0),
        }
    }

    /// The minima to mark.
    fn minima(self) -> Vec<(f64, f64)> {
        match self {
            Surface::Valley => vec![(0.0, 0.0)],
            Surface::Saddle => vec![(0.0, 1.0), (0.0, -1.0)],
            Surface::Sparse => vec![SPARSE_MIN],
            Surface::Rosenbrock => vec![(1.0, 1.0)],
        }
    }

    /// The saddle point to mark, where there is one.
    fn saddle(self) -> Option<(f64, f64)> {
        match self {
            Surface::Saddle => Some((0.0, 0.0)),
            _ => None,
        }
    }

    /// The region drawn: x range, y range.
    fn frame(self) -> ((f64, f64), (f64, f64)) {
        match self {
            Surface::Valley => ((-10.0, 3.0), (-2.5, 2.5)),
            Surface::Saddle => ((-2.3, 1.0), (-1.6, 1.6)),
            Surface::Sparse => ((-0.5, 5.5), (-0.5, 5.0)),
            Surface::Rosenbrock => ((-2.0, 2.0), (-1.0, 3.0)),
        }
    }

    /// Contour levels.
    fn levels(self) -> Vec<f64> {
        match self {
            Surface::Valley => plot::geomspace(0.05, 80.0, 14),
            Surface::Saddle => {
                let mut l = plot::linspace(-0.24, 3.0, 18);
                l.insert(0, -0.245);
                l
            }
            Surface::Sparse => plot::geomspace(0.02, 12.0, 12),
            Surface::Rosenbrock => plot::geomspace(0.3, 2000.0, 14),
        }
    }

    fn steps(self) -> u64 {
        match self {
            Surface::Valley => 80,
            Surface::Saddle => 120,
            Surface::Sparse => 150,
            Surface::Rosenbrock => 2000,
        }
    }

    /// The rules and their hyperparameters on this surface, with a label.
    fn rules(self) -> Vec<(String, Config)> {
        let sgd = |lr: f64| Sgd {
            lr,
            ..Sgd::default()
        };
        let momentum = |lr: f64, nesterov: bool| Sgd {
            lr,
            momentum: 0.9,
            nesterov,
            ..Sgd::default()
        };
        let adagrad = |lr: f64| Adagrad {
            lr,
            ..Adagrad::default()
        };
        let rmsprop = |lr: f64| RmsProp {
            lr,
            ..RmsProp::default()
        };
        let adam = |lr: f64| Adam {
            lr,
            ..Adam::default()
        };
        let adamw = |lr: f64, weight_decay: f64| AdamW {
            lr,
            weight_decay,
            ..AdamW::default()
        };
        let lamb = |lr: f64| Lamb {
            lr,
            weight_decay: 0.0,
            ..Lamb::default()
        };
        // (SGD, momentum and Nesterov, Adagrad, RMSprop, Adam, AdamW (lr,
        // weight decay), LAMB) learning rates.
        let (s, m, ag, rp, a, (aw, wd), l) = match self {
            Surface::Valley => (0.095, 0.02, 1.5, 0.1, 0.3, (0.3, 0.2), 0.1),
            Surface::Saddle => (0.05, 0.01, 0.5, 0.02, 0.1, (0.1, 0.5), 0.05),
            Surface::Sparse => (0.1, 0.02, 1.5, 0.05, 0.2, (0.2, 0.05), 0.04),
            Surface::Rosenbrock => (1e-3, 5e-4, 0.5, 1e-2, 0.02, (0.02, 0.05), 0.005),
        };
        // (RAdam, Adadelta, Rprop's initial step, Lion) learning rates;
        // Adamax, NAdam and AdEMAMix take Adam's, ASGD SGD's. RAdam's first
        // five steps are momentum SGD on the raw gradient (no
        // rectification yet), so it takes less on Rosenbrock's steep walls;
        // Lion moves every coordinate by its lr each step.
        let (ra, ad, rp0, li) = match self {
            Surface::Valley => (0.1, 10.0, 0.1, 0.12),
            Surface::Saddle => (0.1, 5.0, 0.05, 0.02),
            Surface::Sparse => (0.2, 5.0, 0.1, 0.03),
            Surface::Rosenbrock => (0.005, 1.0, 0.01, 0.002),
        };
        vec![
            (format!("SGD  lr {s}"), sgd(s).into()),
            (format!("momentum 0.9  lr {m}"), momentum(m, false).into()),
            (format!("Nesterov 0.9  lr {m}"), momentum(m, true).into()),
            (format!("Adagrad  lr {ag}"), adagrad(ag).into()),
            (format!("RMSprop  lr {rp}"), rmsprop(rp).into()),
            (format!("Adam  lr {a}"), adam(a).into()),
            (format!("AdamW  lr {aw}  wd {wd}"), adamw(aw, wd).into()),
            (format!("LAMB  lr {l}"), lamb(l).into()),
            (
                format!("RAdam  lr {ra}"),
                RAdam {
                    lr: ra,
                    ..RAdam::default()
                }
                .into(),
            ),
            (
                format!("Adamax  lr {a}"),
                Adamax {
                    lr: a,
                    ..Adamax::default()
                }
                .into(),
            ),
            (
                format!("NAdam  lr {a}"),
                NAdam {
                    lr: a,
                    ..NAdam::default()
                }
                .into(),
            ),
            (
                format!("ASGD  lr {s}"),
                Asgd {
                    lr: s,
                    ..Asgd::default()
                }
                .into(),
            ),
            (
                format!("Adadelta  lr {ad}"),
                Adadelta {
                    lr: ad,
                    ..Adadelta::default()
                }
                .into(),
            ),
            (
                format!("Rprop  initial step {rp0}"),
                Rprop {
                    lr: rp0,
                    ..Rprop::default()
                }
                .into(),
            ),
            (
                format!("Lion  lr {li}"),
                Lion {
                    lr: li,
                    ..Lion::default()
                }
                .into(),
            ),
            (
                format!("AdEMAMix  lr {a}"),
                AdEMAMix {
                    lr: a,
                    ..AdEMAMix::default()
                }
                .into(),
            ),
            // Schedule-free: the path of y, where the gradients are taken.
            (
                format!("SGD schedule-free  lr {s}"),
                SgdScheduleFree {
                    lr: s,
                    ..SgdScheduleFree::default()
                }
                .into(),
            ),
            (
                format!("AdamW schedule-free  lr {a}"),
                AdamWScheduleFree {
                    lr: a,
                    weight_decay: 0.0,
                    ..AdamWScheduleFree::default()
                }
                .into(),
            ),
        ]
    }
}

/// The path of one rule: the parameters before each step and after the last.
fn run_path(
    ctx: &GpuContext,
    surface: Surface,
    config: Config,
) -> wgpu_optim::Result<Vec<(f64, f64)>> {
    let (x0, y0) = surface.start();
    let mut opt = GpuOptimizer::new(ctx, config, &[&[x0, y0]])?;
    let ((xl, xh), (yl, yh)) = surface.frame();
    let (w, h) = (xh - xl, yh - yl);
    let mut path = vec![(x0 as f64, y0 as f64)];
    for t in 1..=surface.steps() {
        let (x, y) = *path.last().expect("the path starts with the start");
        let (gx, gy) = surface.grad(x, y, t);
        opt.step(&[&[gx as f32, gy as f32]])?;
        let p = opt.read_params()?;
        let (x, y) = (p[0][0] as f64, p[0][1] as f64);
        path.push((x, y));
        // Far outside the picture (diverged): the rest would not show.
        let outside = x < xl - w || x > xh + w || y < yl - h || y > yh + h;
        if !(x.is_finite() && y.is_finite()) || outside {
            break;
        }
    }
    Ok(path)
}

/// The part of the segment `a`–`b` inside the frame, if any (Liang–Barsky):
/// plotters would draw lines beyond the plotting area.
fn clip_segment(
    a: (f64, f64),
    b: (f64, f64),
    frame: ((f64, f64), (f64, f64)),
) -> Option<[(f64, f64); 2]> {
    let ((xl, xh), (yl, yh)) = frame;
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (p, q) in [
        (-dx, a.0 - xl),
        (dx, xh - a.0),
        (-dy, a.1 - yl),
        (dy, yh - a.1),
    ] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else if p < 0.0 {
            t0 = t0.max(q / p);
        } else {
            t1 = t1.min(q / p);
        }
    }
    (t0 <= t1).then_some([
        (a.0 + t0 * dx, a.1 + t0 * dy),
        (a.0 + t1 * dx, a.1 + t1 * dy),
    ])
}

/// The surface's grid values and contour levels, computed once per picture.
struct Field {
    xs: Vec<f64>,
    ys: Vec<f64>,
    values: Vec<f64>,
    levels: Vec<f64>,
}

impl Field {
    fn new(surface: Surface) -> Self {
        let ((xl, xh), (yl, yh)) = surface.frame();
        let xs = plot::linspace(xl, xh, 160);
        let ys = plot::linspace(yl, yh, 140);
        let values = ys
            .iter()
            .flat_map(|&y| xs.iter().map(move |&x| surface.f(x, y)))
            .collect();
        Field {
            xs,
            ys,
            values,
            levels: surface.levels(),
        }
    }
}

/// One panel: the surface's contours, one rule's path, the start and the minima.
fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    surface: Surface,
    field: &Field,
    label: &str,
    colour: RGBColor,
    path: &[(f64, f64)],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let ((xl, xh), (yl, yh)) = surface.frame();
    let mut chart = ChartBuilder::on(area)
        .caption(label, ("sans-serif", 19).into_font().color(&colour))
        .margin(6)
        .x_label_area_size(26)
        .y_label_area_size(38)
        .build_cartesian_2d(xl..xh, yl..yh)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(5)
        .y_labels(5)
        .label_style(("sans-serif", 13))
        .draw()?;

    // Shaded bands between the contour levels, then the lines.
    let Field {
        xs,
        ys,
        values,
        levels,
    } = field;
    let nx = xs.len();
    let (dx, dy) = (xs[1] - xs[0], ys[1] - ys[0]);
    chart.draw_series(ys.iter().enumerate().flat_map(|(j, &y)| {
        xs.iter().enumerate().map(move |(i, &x)| {
            // Low values pale blue-grey, high values pale sand.
            let v = values[j * nx + i];
            let k = levels.iter().filter(|&&l| v >= l).count() as f64 / levels.len() as f64;
            let mix = |a: f64, b: f64| (a + (b - a) * k) as u8;
            let shade = RGBColor(mix(225.0, 252.0), mix(236.0, 238.0), mix(242.0, 218.0));
            Rectangle::new(
                [(x - dx / 2.0, y - dy / 2.0), (x + dx / 2.0, y + dy / 2.0)],
                shade.filled(),
            )
        })
    }))?;
    for &level in levels {
        let segments = plot::contour_segments(xs, ys, values, level);
        chart.draw_series(
            segments.into_iter().map(|[a, b]| {
                PathElement::new(vec![a, b], RGBColor(160, 168, 178).stroke_width(1))
            }),
        )?;
    }

    for &(x, y) in &surface.minima() {
        chart.draw_series(std::iter::once(Cross::new(
            (x, y),
            7,
            BLACK.stroke_width(2),
        )))?;
    }
    if let Some(p) = surface.saddle() {
        chart.draw_series(std::iter::once(Circle::new(p, 6, BLACK.stroke_width(2))))?;
    }
    // Segment by segment: plotters joins a thick polyline with mitres,
    // which shoot far out where the path turns back on itself.
    let frame = surface.frame();
    chart.draw_series(
        path.windows(2)
            .filter_map(|w| clip_segment(w[0], w[1], frame))
            .map(|[a, b]| PathElement::new(vec![a, b], colour.stroke_width(2))),
    )?;
    // A dot at each iterate while they are few enough to tell apart.
    if path.len() <= 200 {
        let ((xl, xh), (yl, yh)) = frame;
        chart.draw_series(
            path.iter()
                .filter(|&&(x, y)| x >= xl && x <= xh && y >= yl && y <= yh)
                .map(|&p| Circle::new(p, 2, colour.filled())),
        )?;
    }
    let (x0, y0) = surface.start();
    chart.draw_series(std::iter::once(Circle::new(
        (x0 as f64, y0 as f64),
        5,
        BLACK.filled(),
    )))?;
    Ok(())
}

/// The picture of one surface: a panel per rule on the same axes, a title
/// and a legend.
fn draw(
    surface: Surface,
    paths: &[(String, Vec<(f64, f64)>)],
    file: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let (cols, rows) = (4usize, paths.len().div_ceil(4));
    let (panel_w, panel_h) = (400u32, 340u32);
    let (width, height) = (panel_w * cols as u32, 96 + panel_h * rows as u32);
    let root = BitMapBackend::new(file, (width, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (header, body) = root.split_vertically(96);
    header.draw(&Text::new(
        surface.title(),
        (16, 12),
        ("sans-serif", 26).into_font().color(&BLACK),
    ))?;
    // The legend: the start, the minimum, how many steps; the rules' colours
    // are their panels' titles.
    let y = 66;
    header.draw(&Circle::new((26, y), 5, BLACK.filled()))?;
    let text = |s: String, x: i32| {
        Text::new(
            s,
            (x, y),
            ("sans-serif", 17).into_font().color(&BLACK).pos(
                plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Left,
                    plotters::style::text_anchor::VPos::Center,
                ),
            ),
        )
    };
    header.draw(&text("start".into(), 40))?;
    header.draw(&Cross::new((112, y), 7, BLACK.stroke_width(2)))?;
    header.draw(&text(
        if surface.minima().len() > 1 {
            "minima".into()
        } else {
            "minimum".into()
        },
        126,
    ))?;
    let mut x = 230;
    if surface.saddle().is_some() {
        header.draw(&Circle::new((x, y), 6, BLACK.stroke_width(2)))?;
        header.draw(&text("saddle point".into(), x + 14))?;
        x += 140;
    }
    header.draw(&text(
        format!(
            "{} steps of each rule, a dot per step{}; the rule and its hyperparameters above each panel",
            surface.steps(),
            if surface.steps() > 200 { " (dots left out)" } else { "" }
        ),
        x,
    ))?;
    let panels = body.split_evenly((rows, cols));
    let field = Field::new(surface);
    for (k, ((label, path), area)) in paths.iter().zip(&panels).enumerate() {
        draw_panel(
            area,
            surface,
            &field,
            label,
            plot::PALETTE[k % plot::PALETTE.len()],
            path,
        )?;
    }
    root.present()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("docs"));
    std::fs::create_dir_all(&out_dir)?;
    plot::register_font();
    let ctx = GpuContext::new()?;
    println!("adapter: {}", ctx.adapter_label());
    for surface in Surface::ALL {
        let started = Instant::now();
        let mut paths = Vec::new();
        for (label, config) in surface.rules() {
            let path = run_path(&ctx, surface, config)?;
            let &(x, y) = path.last().expect("a path has its start");
            println!(
                "  {:<26} {:>5} steps  ends at ({x:>9.4}, {y:>9.4})  f = {:.3e}",
                label,
                path.len() - 1,
                surface.f(x, y)
            );
            paths.push((label, path));
        }
        let file = out_dir.join(surface.file());
        draw(surface, &paths, &file)?;
        println!(
            "{:?}: {} ({:.1} s)",
            surface,
            file.display(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
