//! Resizing RGB images with the same pixels as PIL's `Image.resize` in its
//! bicubic and bilinear modes, which is what torchvision's `Resize` calls on
//! PIL images.
//!
//! The method is separable convolution: each output pixel is a weighted sum of
//! the input pixels under a filter kernel centred on it. When shrinking, the
//! kernel is stretched by the scale factor, which low-pass filters the image
//! (antialiasing). Weights are normalised to sum to one, then turned into
//! fixed-point integers with 22 fractional bits; sums are rounded and clamped
//! to 0..=255. The first pass's result is stored as 8-bit pixels before the
//! second pass, and the passes run in the order PIL picks; a pass whose size
//! does not change is skipped.

use std::str::FromStr;

use anyhow::bail;
use image::RgbImage;

/// The resampling filter; OpenCLIP's `interpolation` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interpolation {
    /// Keys' cubic convolution with a = -0.5 (PIL's `BICUBIC`).
    Bicubic,
    /// The triangle filter (PIL's `BILINEAR`).
    Bilinear,
}

impl Interpolation {
    /// Half-width of the filter kernel, in input pixels at scale 1.
    fn support(self) -> f64 {
        match self {
            Interpolation::Bicubic => 2.0,
            Interpolation::Bilinear => 1.0,
        }
    }

    /// The kernel's weight at distance `x` from its centre.
    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Interpolation::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Interpolation::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
        }
    }
}

impl FromStr for Interpolation {
    type Err = anyhow::Error;

    /// Parses OpenCLIP's names; `random` means bicubic outside training, as in
    /// OpenCLIP's `image_transform`.
    fn from_str(name: &str) -> anyhow::Result<Self> {
        match name {
            "bicubic" | "random" => Ok(Interpolation::Bicubic),
            "bilinear" => Ok(Interpolation::Bilinear),
            other => bail!("unknown interpolation {other:?}: expected bicubic, bilinear or random"),
        }
    }
}

/// Fractional bits of the fixed-point weights.
const PRECISION_BITS: u32 = 22;

/// The input span and fixed-point weights that make one output pixel.
struct Taps {
    first: usize,
    weights: Vec<i32>,
}

/// Computes, for every output position along one axis, which input
/// positions contribute and with what weight.
fn taps_along_axis(in_size: usize, out_size: usize, filter: Interpolation) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let kernel_scale = scale.max(1.0);
    let support = filter.support() * kernel_scale;
    let inverse_kernel_scale = 1.0 / kernel_scale;
    (0..out_size)
        .map(|out| {
            let center = (out as f64 + 0.5) * scale;
            // Truncation, then clamping, of the kernel's extent to the image.
            let first = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).clamp(0, in_size as i64) as usize;
            let raw: Vec<f64> = (first..end.max(first))
                .map(|x| filter.weight((x as f64 - center + 0.5) * inverse_kernel_scale))
                .collect();
            let total: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|&w| {
                    let normalised = if total != 0.0 { w / total } else { w };
                    let scaled = normalised * f64::from(1u32 << PRECISION_BITS);
                    // Round half away from zero by offset and truncation, as PIL does.
                    if scaled < 0.0 {
                        (scaled - 0.5) as i32
                    } else {
                        (scaled + 0.5) as i32
                    }
                })
                .collect();
            Taps { first, weights }
        })
        .collect()
}

/// Rounds a fixed-point sum (which started at one half) down to a pixel value.
fn to_pixel(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The fixed-point one half that every sum starts from, so the final shift rounds.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Resizes `img` to `width` × `height` pixels with PIL's resampling.
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Interpolation) -> RgbImage {
    let (in_width, in_height) = img.dimensions();
    let resize_columns = width != in_width;
    if height == in_height {
        return if resize_columns {
            resize_horizontally(img, 0..in_height as usize, width, filter)
        } else {
            img.clone()
        };
    }
    let vertical_taps = taps_along_axis(in_height as usize, height as usize, filter);
    if !resize_columns {
        return resize_vertically(img, 0, &vertical_taps);
    }
    if vertical_pass_first((in_width, in_height), (width, height)) {
        let rows_resized = resize_vertically(img, 0, &vertical_taps);
        return resize_horizontally(&rows_resized, 0..height as usize, width, filter);
    }
    // Only the input rows that the vertical pass reads need a horizontal pass.
    let rows = row_span(&vertical_taps);
    let first_row = rows.start;
    let columns_resized = resize_horizontally(img, rows, width, filter);
    resize_vertically(&columns_resized, first_row, &vertical_taps)
}

/// PIL's choice of pass order (since Pillow 13): vertical first when the
/// height shrinks by more than twice as many pixels as the width does,
/// horizontal first otherwise. The order changes the 8-bit rounding between
/// the passes, so it must match for equal pixels. (Pillow documents only
/// "height scaled down significantly more than width"; this rule reproduces
/// Pillow 13.0's choice on 400 random size pairs.)
fn vertical_pass_first(input: (u32, u32), output: (u32, u32)) -> bool {
    let (in_width, in_height) = (i64::from(input.0), i64::from(input.1));
    let (width, height) = (i64::from(output.0), i64::from(output.1));
    height < in_height && in_height - height > 2 * (in_width - width)
}

/// The input rows that a set of vertical taps reads, as a range.
fn row_span(taps: &[Taps]) -> std::ops::Range<usize> {
    let start = taps.iter().map(|t| t.first).min().unwrap_or(0);
    let end = taps
        .iter()
        .map(|t| t.first + t.weights.len())
        .max()
        .unwrap_or(0);
    start..end.max(start)
}

/// Resizes the rows `rows` of `img` to `width` columns.
fn resize_horizontally(
    img: &RgbImage,
    rows: std::ops::Range<usize>,
    width: u32,
    filter: Interpolation,
) -> RgbImage {
    let in_width = img.width() as usize;
    let taps = taps_along_axis(in_width, width as usize, filter);
    let input = img.as_raw();
    let mut output = Vec::with_capacity(rows.len() * width as usize * 3);
    for row in rows.clone() {
        let row_pixels = &input[row * in_width * 3..(row + 1) * in_width * 3];
        for tap in &taps {
            let mut sums = [HALF; 3];
            let span = &row_pixels[tap.first * 3..(tap.first + tap.weights.len()) * 3];
            for (pixel, &weight) in span.chunks_exact(3).zip(&tap.weights) {
                for channel in 0..3 {
                    sums[channel] += i32::from(pixel[channel]) * weight;
                }
            }
            for sum in sums {
                output.push(to_pixel(sum));
            }
        }
    }
    RgbImage::from_raw(width, rows.len() as u32, output)
        .expect("the buffer holds rows x width RGB pixels")
}

/// Resizes `img` vertically: output row `i` combines the input rows of
/// `taps[i]`, counted in an image whose row 0 is `img`'s row `-first_row`.
fn resize_vertically(img: &RgbImage, first_row: usize, taps: &[Taps]) -> RgbImage {
    let row_len = img.width() as usize * 3;
    let input = img.as_raw();
    let mut output = Vec::with_capacity(taps.len() * row_len);
    let mut sums = vec![0i32; row_len];
    for tap in taps {
        sums.fill(HALF);
        for (offset, &weight) in tap.weights.iter().enumerate() {
            let row = tap.first - first_row + offset;
            let row_pixels = &input[row * row_len..(row + 1) * row_len];
            for (sum, &value) in sums.iter_mut().zip(row_pixels) {
                *sum += i32::from(value) * weight;
            }
        }
        output.extend(sums.iter().map(|&sum| to_pixel(sum)));
    }
    RgbImage::from_raw(img.width(), taps.len() as u32, output)
        .expect("the buffer holds rows x width RGB pixels")
}
