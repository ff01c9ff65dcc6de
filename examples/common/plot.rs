//! Drawing helpers the examples share: the font, a palette, contour lines.
//! Included by each example with `#[path = "../common/plot.rs"] mod plot;`.

#![allow(dead_code)] // each example uses its own part

use plotters::prelude::*;
use plotters::style::FontStyle;

/// DejaVu Sans, shipped in the repository (`docs/fonts`, with its licence):
/// plotters' `ab_glyph` text backend reads no system font.
const FONT: &[u8] = include_bytes!("../../docs/fonts/DejaVuSans.ttf");

/// Registers the font as `sans-serif`, the family plotters asks for by
/// default. Call once before drawing any text.
pub fn register_font() {
    // The font is ours and valid; an error here would be a broken checkout.
    if plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_err() {
        panic!("docs/fonts/DejaVuSans.ttf is not a valid font");
    }
}

/// Eighteen colours: the ten of the Tableau 10 palette (matplotlib's
/// default cycle), which stay apart on white and to the colour-blind, then
/// black and seven darker shades, for the pictures with more lines than ten.
pub const PALETTE: [RGBColor; 18] = [
    RGBColor(31, 119, 180),  // blue
    RGBColor(255, 127, 14),  // orange
    RGBColor(44, 160, 44),   // green
    RGBColor(214, 39, 40),   // red
    RGBColor(148, 103, 189), // purple
    RGBColor(140, 86, 75),   // brown
    RGBColor(227, 119, 194), // pink
    RGBColor(127, 127, 127), // grey
    RGBColor(188, 189, 34),  // olive
    RGBColor(23, 190, 207),  // cyan
    RGBColor(0, 0, 0),       // black
    RGBColor(0, 70, 120),    // navy
    RGBColor(150, 70, 0),    // rust
    RGBColor(0, 100, 40),    // forest
    RGBColor(120, 0, 60),    // wine
    RGBColor(90, 90, 0),     // dark olive
    RGBColor(80, 40, 150),   // indigo
    RGBColor(0, 130, 130),   // teal
];

/// Contour lines of `values` (a `nx × ny` grid, `values[j * nx + i]` at
/// `(xs[i], ys[j])`) at `level`, by marching squares: line segments in data
/// coordinates.
pub fn contour_segments(
    xs: &[f64],
    ys: &[f64],
    values: &[f64],
    level: f64,
) -> Vec<[(f64, f64); 2]> {
    let nx = xs.len();
    let mut out = Vec::new();
    for j in 0..ys.len().saturating_sub(1) {
        for i in 0..nx.saturating_sub(1) {
            // Corners counter-clockwise from the bottom left.
            let corners = [
                (xs[i], ys[j], values[j * nx + i]),
                (xs[i + 1], ys[j], values[j * nx + i + 1]),
                (xs[i + 1], ys[j + 1], values[(j + 1) * nx + i + 1]),
                (xs[i], ys[j + 1], values[(j + 1) * nx + i]),
            ];
            // Where the level crosses each edge, if it does.
            let mut crossings = Vec::with_capacity(4);
            for e in 0..4 {
                let (x0, y0, v0) = corners[e];
                let (x1, y1, v1) = corners[(e + 1) % 4];
                if (v0 < level) != (v1 < level) {
                    let t = (level - v0) / (v1 - v0);
                    crossings.push((x0 + t * (x1 - x0), y0 + t * (y1 - y0)));
                }
            }
            match crossings.len() {
                2 => out.push([crossings[0], crossings[1]]),
                // A saddle cell: pair the crossings by the centre's side.
                4 => {
                    let centre = corners.iter().map(|c| c.2).sum::<f64>() / 4.0;
                    if (centre < level) == (corners[0].2 < level) {
                        out.push([crossings[0], crossings[3]]);
                        out.push([crossings[1], crossings[2]]);
                    } else {
                        out.push([crossings[0], crossings[1]]);
                        out.push([crossings[2], crossings[3]]);
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// `n` points spaced evenly from `lo` to `hi`.
pub fn linspace(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| lo + (hi - lo) * i as f64 / (n - 1) as f64)
        .collect()
}

/// `n` points spaced evenly on a log scale from `lo` to `hi` (both > 0).
pub fn geomspace(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    linspace(lo.ln(), hi.ln(), n)
        .into_iter()
        .map(f64::exp)
        .collect()
}

/// A short line of `colour` and `label` after it: one legend entry at
/// `(x, y)` (the line's left end, the text's vertical middle).
pub fn legend_entry<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    (x, y): (i32, i32),
    colour: RGBColor,
    dashed: bool,
    label: &str,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let style = colour.stroke_width(3);
    if dashed {
        for k in 0..3 {
            area.draw(&PathElement::new(
                vec![(x + 10 * k, y), (x + 10 * k + 6, y)],
                style,
            ))?;
        }
    } else {
        area.draw(&PathElement::new(vec![(x, y), (x + 26, y)], style))?;
    }
    area.draw(&Text::new(
        label.to_string(),
        (x + 36, y),
        ("sans-serif", 17)
            .into_font()
            .color(&BLACK)
            .pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Left,
                plotters::style::text_anchor::VPos::Center,
            )),
    ))?;
    Ok(())
}
