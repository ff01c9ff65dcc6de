//! `--plot`: GB/s against the number of parameters, from the rows measured.

use super::Backend;
use std::path::Path;

/// Refuses, before anything is measured, a file that is not a `.png` or
/// a binary built without the `plot` feature.
pub fn check(file: &Path) -> wgpu_optim::Result<()> {
    let png = file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !png {
        return Err(wgpu_optim::Error::InvalidOptions(format!(
            "--plot writes a PNG file: {} does not end in .png",
            file.display()
        )));
    }
    if cfg!(not(feature = "plot")) {
        return Err(wgpu_optim::Error::InvalidOptions(
            "--plot needs wgpu-optim built with the `plot` feature (on by default)".into(),
        ));
    }
    Ok(())
}

#[cfg(not(feature = "plot"))]
pub fn draw(
    _file: &Path,
    _rows: &[(&'static str, usize, Backend, f64)],
    _adapters: [Option<&str>; 2],
) -> Result<(), Box<dyn std::error::Error>> {
    Err("built without the `plot` feature".into())
}

/// One line per rule and backend through its sizes: a colour per rule,
/// solid for the GPU, dashed for the CPU; both axes logarithmic.
/// `adapters`: the CPU's and the GPU's names, where they ran.
#[cfg(feature = "plot")]
pub fn draw(
    file: &Path,
    rows: &[(&'static str, usize, Backend, f64)],
    adapters: [Option<&str>; 2],
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};

    static FONT: &[u8] = include_bytes!("../../../docs/fonts/DejaVuSans.ttf");
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| "the shipped font docs/fonts/DejaVuSans.ttf is not valid")?;
    // Tableau 10: colours that stay apart on white.
    const PALETTE: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    let rows: Vec<_> = rows
        .iter()
        .copied()
        .filter(|r| r.3.is_finite() && r.3 > 0.0)
        .collect();
    if rows.is_empty() {
        return Err("no row was measured: nothing to draw".into());
    }
    let mut rules: Vec<&str> = Vec::new();
    for r in &rows {
        if !rules.contains(&r.0) {
            rules.push(r.0);
        }
    }
    let (n_lo, n_hi) = rows.iter().fold((f64::MAX, 0f64), |(lo, hi), r| {
        (lo.min(r.1 as f64), hi.max(r.1 as f64))
    });
    let (g_lo, g_hi) = rows
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), r| (lo.min(r.3), hi.max(r.3)));
    // A little room around the points; a single size still gets a range.
    let x_range = (n_lo / 1.6)..(n_hi * 1.6);
    let y_range = (g_lo / 1.5)..(g_hi * 1.5);

    let (width, height) = (1200u32, 700u32);
    let root = BitMapBackend::new(file, (width, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (header, body) = root.split_vertically(80);
    let (chart_area, legend) = body.split_horizontally(width - 260);
    header.draw(&Text::new(
        "wgpu-optim bench: optimizer step bandwidth against model size",
        (16, 12),
        ("sans-serif", 24).into_font().color(&BLACK),
    ))?;
    let mut ran = Vec::new();
    if let Some(gpu) = adapters[1] {
        ran.push(format!("GPU (solid): {gpu}"));
    }
    if let Some(cpu) = adapters[0] {
        ran.push(format!("CPU (dashed): {cpu}"));
    }
    header.draw(&Text::new(
        ran.join("     "),
        (16, 50),
        ("sans-serif", 17).into_font().color(&BLACK),
    ))?;
    let mut chart = ChartBuilder::on(&chart_area)
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range.log_scale().base(2.0), y_range.log_scale())?;
    chart
        .configure_mesh()
        .x_desc("parameters (K, M, G: 2^10, 2^20, 2^30)")
        .x_labels(12)
        .y_desc("GB/s (bytes a fused step must move / median step time)")
        .x_label_formatter(&|&n| size_label_approx(n))
        .y_label_formatter(&|&g| format!("{g}"))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;
    for (k, rule) in rules.iter().enumerate() {
        let colour = PALETTE[k % PALETTE.len()];
        for backend in [Backend::Gpu, Backend::Cpu] {
            let mut points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.0 == *rule && r.2 == backend)
                .map(|r| (r.1 as f64, r.3))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let style = colour.stroke_width(2);
            if backend == Backend::Gpu {
                chart.draw_series(LineSeries::new(points.iter().copied(), style))?;
                chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, colour.filled())))?;
            } else {
                chart.draw_series(DashedLineSeries::new(points.iter().copied(), 8, 5, style))?;
                chart.draw_series(
                    points
                        .iter()
                        .map(|&p| TriangleMarker::new(p, 5, colour.filled())),
                )?;
            }
        }
    }

    let text = |s: &str, x: i32, y: i32| {
        Text::new(
            s.to_string(),
            (x, y),
            ("sans-serif", 16)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        )
    };
    let mut y = 40;
    for (k, rule) in rules.iter().enumerate() {
        let colour = PALETTE[k % PALETTE.len()];
        legend.draw(&PathElement::new(
            vec![(10, y), (40, y)],
            colour.stroke_width(3),
        ))?;
        legend.draw(&text(rule, 50, y))?;
        y += 28;
    }
    y += 16;
    let grey = RGBColor(90, 90, 90);
    if adapters[1].is_some() {
        legend.draw(&PathElement::new(
            vec![(10, y), (40, y)],
            grey.stroke_width(2),
        ))?;
        legend.draw(&Circle::new((25, y), 4, grey.filled()))?;
        legend.draw(&text("GPU", 50, y))?;
        y += 28;
    }
    if adapters[0].is_some() {
        for x in [10, 24] {
            legend.draw(&PathElement::new(
                vec![(x, y), (x + 8, y)],
                grey.stroke_width(2),
            ))?;
        }
        legend.draw(&TriangleMarker::new((25, y), 5, grey.filled()))?;
        legend.draw(&text("CPU", 50, y))?;
    }
    root.present()?;
    Ok(())
}

/// `1M`, `64K`, `1G` for a tick value of the plot's log axis, rounded.
#[cfg_attr(not(feature = "plot"), allow(dead_code))]
pub(super) fn size_label_approx(n: f64) -> String {
    for (shift, suffix) in [(30, "G"), (20, "M"), (10, "K")] {
        let unit = (1u64 << shift) as f64;
        if n >= unit {
            let v = n / unit;
            return if (v - v.round()).abs() < 0.05 {
                format!("{:.0}{suffix}", v.round())
            } else {
                format!("{v:.1}{suffix}")
            };
        }
    }
    format!("{n:.0}")
}
