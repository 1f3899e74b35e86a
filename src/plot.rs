//! A small PNG line chart of a run's curves, for the quickstart: the
//! training loss by step (left panel) and the zero-shot top-1 accuracy by
//! epoch (right panel, 0 to 100%), each with its own axes and grid lines
//! at tenths of the range. Drawn pixel by pixel; no fonts.

use std::path::Path;

use anyhow::{Context, Result};
use image::{Rgb, RgbImage};

const PANEL_WIDTH: u32 = 480;
const HEIGHT: u32 = 320;
const MARGIN: u32 = 24;
const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
const AXIS: Rgb<u8> = Rgb([60, 60, 60]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const LOSS_COLOUR: Rgb<u8> = Rgb([31, 119, 180]);
const ACCURACY_COLOUR: Rgb<u8> = Rgb([214, 39, 40]);

/// Writes `path`: loss by step on the left, accuracy (a fraction) by epoch
/// on the right.
pub fn write_curves_png(path: &Path, losses: &[(u64, f64)], accuracy: &[(u64, f64)]) -> Result<()> {
    let mut image = RgbImage::from_pixel(2 * PANEL_WIDTH, HEIGHT, BACKGROUND);
    let loss_max = losses
        .iter()
        .map(|&(_, loss)| loss)
        .fold(0.0, f64::max)
        .max(1e-9);
    draw_panel(&mut image, 0, losses, (0.0, loss_max), LOSS_COLOUR);
    draw_panel(
        &mut image,
        PANEL_WIDTH,
        accuracy,
        (0.0, 1.0),
        ACCURACY_COLOUR,
    );
    image
        .save(path)
        .with_context(|| format!("writing the plot {}", path.display()))
}

/// One panel at horizontal offset `left`: grid, axes, and the series scaled
/// to x from its first to last point and y over `y_range`.
fn draw_panel(
    image: &mut RgbImage,
    left: u32,
    points: &[(u64, f64)],
    y_range: (f64, f64),
    colour: Rgb<u8>,
) {
    let (x0, x1) = (left + MARGIN, left + PANEL_WIDTH - MARGIN);
    let (y_top, y_bottom) = (MARGIN, HEIGHT - MARGIN);
    for tenth in 0..=10 {
        let y = y_bottom - (y_bottom - y_top) * tenth / 10;
        let x = x0 + (x1 - x0) * tenth / 10;
        for t in x0..=x1 {
            image.put_pixel(t, y, GRID);
        }
        for t in y_top..=y_bottom {
            image.put_pixel(x, t, GRID);
        }
    }
    for t in x0..=x1 {
        image.put_pixel(t, y_bottom, AXIS);
    }
    for t in y_top..=y_bottom {
        image.put_pixel(x0, t, AXIS);
    }
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return;
    };
    let x_span = (last.0 - first.0).max(1) as f64;
    let to_pixel = |&(x, y): &(u64, f64)| {
        let fx = (x - first.0) as f64 / x_span;
        let fy = ((y - y_range.0) / (y_range.1 - y_range.0)).clamp(0.0, 1.0);
        (
            x0 as f64 + fx * (x1 - x0) as f64,
            y_bottom as f64 - fy * (y_bottom - y_top) as f64,
        )
    };
    let pixels: Vec<(f64, f64)> = points.iter().map(to_pixel).collect();
    for pair in pixels.windows(2) {
        draw_line(image, pair[0], pair[1], colour);
    }
    for &(x, y) in &pixels {
        draw_dot(image, x, y, colour);
    }
}

fn draw_line(image: &mut RgbImage, from: (f64, f64), to: (f64, f64), colour: Rgb<u8>) {
    let steps = (to.0 - from.0)
        .abs()
        .max((to.1 - from.1).abs())
        .ceil()
        .max(1.0) as u32;
    for i in 0..=steps {
        let t = i as f64 / steps as f64;
        let x = from.0 + t * (to.0 - from.0);
        let y = from.1 + t * (to.1 - from.1);
        for (dx, dy) in [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0)] {
            put(image, x + dx, y + dy, colour);
        }
    }
}

fn draw_dot(image: &mut RgbImage, x: f64, y: f64, colour: Rgb<u8>) {
    for dx in -2..=2 {
        for dy in -2..=2 {
            put(image, x + dx as f64, y + dy as f64, colour);
        }
    }
}

fn put(image: &mut RgbImage, x: f64, y: f64, colour: Rgb<u8>) {
    let (x, y) = (x.round(), y.round());
    if x >= 0.0 && y >= 0.0 && (x as u32) < image.width() && (y as u32) < image.height() {
        image.put_pixel(x as u32, y as u32, colour);
    }
}
