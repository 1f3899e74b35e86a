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
//!
//! Speed: only the pixels a caller keeps are computed ([`resize_region`]
//! resizes a region of the image and computes a window of the result, so a
//! crop before or after the resize costs no copy and no wasted sums), and on
//! x86-64 CPUs with AVX2 both passes run as 8-lane integer SIMD. The sums are
//! the same integers in every path, so the pixels are too.

use std::ops::Range;
use std::str::FromStr;

use anyhow::bail;
use image::RgbImage;

use super::train::CropBox;

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

/// The fixed-point one half that every sum starts from, so the final shift rounds.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Rounds a fixed-point sum (which started at one half) down to a pixel value.
fn to_pixel(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// For each computed output position along one axis, the input positions
/// that contribute and their fixed-point weights. Every output reads the
/// same number of inputs (`taps`): a window shorter than that, near an edge,
/// is moved inwards and padded with zero weights, which leave the sums as
/// they are and let the passes run fixed-length loops.
struct AxisTaps {
    /// The first input position each output reads.
    firsts: Vec<usize>,
    /// How many consecutive inputs each output reads.
    taps: usize,
    /// `taps` weights per output, in order.
    weights: Vec<i32>,
}

impl AxisTaps {
    /// The taps of the outputs `window` of an axis of `source.len()` inputs,
    /// starting at input position `source.start`, resized to `out_size`.
    fn new(
        source: Range<usize>,
        out_size: usize,
        window: Range<usize>,
        filter: Interpolation,
    ) -> Self {
        let in_size = source.len();
        let scale = in_size as f64 / out_size as f64;
        let kernel_scale = scale.max(1.0);
        let support = filter.support() * kernel_scale;
        let inverse_kernel_scale = 1.0 / kernel_scale;
        let spans: Vec<(usize, Vec<f64>)> = window
            .clone()
            .map(|out| {
                let center = (out as f64 + 0.5) * scale;
                // Truncation, then clamping, of the kernel's extent to the image.
                let first = ((center - support + 0.5) as i64).max(0) as usize;
                let end = ((center + support + 0.5) as i64).clamp(0, in_size as i64) as usize;
                let raw = (first..end.max(first))
                    .map(|x| filter.weight((x as f64 - center + 0.5) * inverse_kernel_scale))
                    .collect();
                (first, raw)
            })
            .collect();
        // The longest span, rounded up to whole groups of four inputs (which
        // the SIMD pass reads at once) where the axis is long enough.
        let longest = spans
            .iter()
            .map(|(_, raw)| raw.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let taps = longest.next_multiple_of(4).min(in_size).max(longest);
        let mut firsts = Vec::with_capacity(spans.len());
        let mut weights = vec![0; spans.len() * taps];
        for ((first, raw), padded) in spans.iter().zip(weights.chunks_exact_mut(taps)) {
            // Every span lies inside the axis, so the longest fits it too.
            let moved_first = (*first).min(in_size.saturating_sub(taps));
            let total: f64 = raw.iter().sum();
            for (slot, &w) in padded[first - moved_first..].iter_mut().zip(raw) {
                let normalised = if total != 0.0 { w / total } else { w };
                let scaled = normalised * f64::from(1u32 << PRECISION_BITS);
                // Round half away from zero by offset and truncation, as PIL does.
                *slot = if scaled < 0.0 {
                    (scaled - 0.5) as i32
                } else {
                    (scaled + 0.5) as i32
                };
            }
            firsts.push(source.start + moved_first);
        }
        AxisTaps {
            firsts,
            taps,
            weights,
        }
    }

    /// Outputs that copy inputs `inputs` one to one: an axis whose size does
    /// not change, which PIL does not resample.
    fn copy(inputs: Range<usize>) -> Self {
        AxisTaps {
            weights: vec![1 << PRECISION_BITS; inputs.len()],
            firsts: inputs.collect(),
            taps: 1,
        }
    }

    /// The taps of the outputs `window` of an axis resized from the inputs
    /// `source` to `out_size` positions; copies when the size does not change.
    fn along_axis(
        source: Range<usize>,
        out_size: usize,
        window: Range<usize>,
        filter: Interpolation,
    ) -> Self {
        if source.len() == out_size {
            AxisTaps::copy(source.start + window.start..source.start + window.end)
        } else {
            AxisTaps::new(source, out_size, window, filter)
        }
    }

    /// How many outputs there are.
    fn outputs(&self) -> usize {
        self.firsts.len()
    }

    /// The weights of output `index`.
    fn weights_of(&self, index: usize) -> &[i32] {
        &self.weights[index * self.taps..(index + 1) * self.taps]
    }

    /// The input positions that some output reads.
    fn span(&self) -> Range<usize> {
        let start = self.firsts.iter().copied().min().unwrap_or(0);
        let end = self
            .firsts
            .iter()
            .copied()
            .max()
            .map_or(start, |last| last + self.taps);
        start..end
    }

    /// The same taps counted from input position `origin`.
    fn counted_from(mut self, origin: usize) -> Self {
        for first in &mut self.firsts {
            *first -= origin;
        }
        self
    }
}

/// Resizes `img` to `width` × `height` pixels with PIL's resampling.
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Interpolation) -> RgbImage {
    if (width, height) == img.dimensions() {
        return img.clone();
    }
    let whole = |width, height| CropBox {
        top: 0,
        left: 0,
        height,
        width,
    };
    let (in_width, in_height) = img.dimensions();
    resize_region(
        img,
        whole(in_width, in_height),
        (width, height),
        whole(width, height),
        filter,
    )
}

/// PIL's `img.crop(source).resize(size)` cropped to `window`: the region
/// `source` of `img` resized to `size` (width, height), of which only the
/// pixels inside `window` are computed. Both boxes must lie inside their
/// images.
pub(super) fn resize_region(
    img: &RgbImage,
    source: CropBox,
    size: (u32, u32),
    window: CropBox,
    filter: Interpolation,
) -> RgbImage {
    if [source.width, source.height, window.width, window.height].contains(&0) {
        // No pixels to compute, or none to compute them from (black, as
        // sums of no inputs round to 0).
        return RgbImage::new(window.width, window.height);
    }
    let range = |start: u32, length: u32| start as usize..(start + length) as usize;
    let columns = AxisTaps::along_axis(
        range(source.left, source.width),
        size.0 as usize,
        range(window.left, window.width),
        filter,
    );
    let rows = AxisTaps::along_axis(
        range(source.top, source.height),
        size.1 as usize,
        range(window.top, window.height),
        filter,
    );
    let (in_width, input) = (img.width() as usize, img.as_raw().as_slice());
    let pixels = if vertical_pass_first((source.width, source.height), size) {
        // Only the input columns that the horizontal pass reads.
        let read = columns.span();
        let rows_resized = vertical_pass(input, in_width, read.clone(), &rows);
        let columns = columns.counted_from(read.start);
        horizontal_pass(&rows_resized, read.len(), 0..rows.outputs(), &columns)
    } else {
        // Only the input rows that the vertical pass reads.
        let read = rows.span();
        let columns_resized = horizontal_pass(input, in_width, read.clone(), &columns);
        let (resized_width, rows) = (columns.outputs(), rows.counted_from(read.start));
        vertical_pass(&columns_resized, resized_width, 0..resized_width, &rows)
    };
    RgbImage::from_raw(window.width, window.height, pixels)
        .expect("the passes make window.height rows of window.width RGB pixels")
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

/// Resamples the rows `rows` of `input` (RGB, `in_width` pixels a row) with
/// the column taps `taps`: one output row of `taps.outputs()` pixels each.
fn horizontal_pass(input: &[u8], in_width: usize, rows: Range<usize>, taps: &AxisTaps) -> Vec<u8> {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        // SAFETY: AVX2 is available.
        return unsafe { x86::horizontal_pass(input, in_width, rows, taps) };
    }
    horizontal_pass_portable(input, in_width, rows, taps)
}

/// The horizontal pass in portable code.
fn horizontal_pass_portable(
    input: &[u8],
    in_width: usize,
    rows: Range<usize>,
    taps: &AxisTaps,
) -> Vec<u8> {
    let (row_len, out_row_len) = (in_width * 3, taps.outputs() * 3);
    let mut output = vec![0u8; rows.len() * out_row_len];
    for (row, out) in rows.zip(output.chunks_exact_mut(out_row_len)) {
        let row_pixels = &input[row * row_len..(row + 1) * row_len];
        for (index, out_pixel) in out.chunks_exact_mut(3).enumerate() {
            out_pixel.copy_from_slice(&resample_pixel(row_pixels, taps, index));
        }
    }
    output
}

/// Output pixel `index` of the horizontal pass over one row, portable code.
fn resample_pixel(row: &[u8], taps: &AxisTaps, index: usize) -> [u8; 3] {
    let first = taps.firsts[index];
    let span = &row[first * 3..(first + taps.taps) * 3];
    let mut sums = [HALF; 3];
    for (pixel, &weight) in span.chunks_exact(3).zip(taps.weights_of(index)) {
        for channel in 0..3 {
            sums[channel] += i32::from(pixel[channel]) * weight;
        }
    }
    sums.map(to_pixel)
}

/// Resamples the columns `columns` of `input` (RGB, `in_width` pixels a
/// row) with the row taps `taps`: one output row of `columns.len()` pixels
/// per output.
fn vertical_pass(input: &[u8], in_width: usize, columns: Range<usize>, taps: &AxisTaps) -> Vec<u8> {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        // SAFETY: AVX2 is available.
        return unsafe { x86::vertical_pass(input, in_width, columns, taps) };
    }
    vertical_pass_portable(input, in_width, columns, taps)
}

/// The vertical pass in code the compiler vectorises for whatever
/// instructions the caller's function enables.
#[inline(always)]
fn vertical_pass_portable(
    input: &[u8],
    in_width: usize,
    columns: Range<usize>,
    taps: &AxisTaps,
) -> Vec<u8> {
    let row_len = in_width * 3;
    let bytes = columns.start * 3..columns.end * 3;
    let mut output = vec![0u8; taps.outputs() * bytes.len()];
    let mut sums = vec![0i32; bytes.len()];
    for (index, out_row) in output.chunks_exact_mut(bytes.len()).enumerate() {
        sums.fill(HALF);
        let first = taps.firsts[index];
        for (offset, &weight) in taps.weights_of(index).iter().enumerate() {
            if weight == 0 {
                continue;
            }
            let row_start = (first + offset) * row_len;
            let row = &input[row_start + bytes.start..row_start + bytes.end];
            for (sum, &value) in sums.iter_mut().zip(row) {
                *sum += i32::from(value) * weight;
            }
        }
        for (value, &sum) in out_row.iter_mut().zip(&sums) {
            *value = to_pixel(sum);
        }
    }
    output
}

/// The passes with AVX2 (8 lanes of 32-bit integers), chosen at run time.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{AxisTaps, HALF, PRECISION_BITS};

    /// Whether this CPU has AVX2 (the standard library caches the answer).
    pub(super) fn has_avx2() -> bool {
        is_x86_feature_detected!("avx2")
    }

    /// The vertical pass, vectorised by the compiler with AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn vertical_pass(
        input: &[u8],
        in_width: usize,
        columns: Range<usize>,
        taps: &AxisTaps,
    ) -> Vec<u8> {
        super::vertical_pass_portable(input, in_width, columns, taps)
    }

    /// `vpshufb` masks that widen pixels 0 and 1 (and 2 and 3) of 16 bytes
    /// held in both halves of a register to 32-bit lanes: R, G, B and a
    /// zero lane each, one pixel per half (-1 selects zero).
    const FIRST_PAIR: [i8; 32] = pair_mask(0);
    const SECOND_PAIR: [i8; 32] = pair_mask(6);

    const fn pair_mask(first_byte: i8) -> [i8; 32] {
        let mut mask = [-1i8; 32];
        let mut channel = 0;
        while channel < 3 {
            mask[channel * 4] = first_byte + channel as i8;
            mask[16 + channel * 4] = first_byte + 3 + channel as i8;
            channel += 1;
        }
        mask
    }

    /// The horizontal pass with AVX2: for each output pixel, four input
    /// pixels at a time are loaded as 16 bytes, widened to two registers of
    /// two pixels and multiplied by their weights (laid out once per pass to
    /// match). Passes whose taps do not come in groups of four (axes of a
    /// few pixels, or copies) take the portable path.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn horizontal_pass(
        input: &[u8],
        in_width: usize,
        rows: Range<usize>,
        taps: &AxisTaps,
    ) -> Vec<u8> {
        if taps.taps % 4 != 0 {
            return super::horizontal_pass_portable(input, in_width, rows, taps);
        }
        let groups = taps.taps / 4;
        let group_weights: Vec<__m256i> = (0..taps.outputs())
            .flat_map(|index| {
                taps.weights_of(index).chunks_exact(4).flat_map(|w| {
                    [
                        _mm256_setr_epi32(w[0], w[0], w[0], 0, w[1], w[1], w[1], 0),
                        _mm256_setr_epi32(w[2], w[2], w[2], 0, w[3], w[3], w[3], 0),
                    ]
                })
            })
            .collect();
        let layout = PassLayout {
            input,
            row_len: in_width * 3,
            taps,
            group_weights: &group_weights,
        };
        // The common tap counts get loops the compiler unrolls.
        match groups {
            1 => layout.run::<1>(rows),
            2 => layout.run::<2>(rows),
            3 => layout.run::<3>(rows),
            4 => layout.run::<4>(rows),
            _ => layout.run_with_groups(rows, groups),
        }
    }

    /// What the AVX2 horizontal pass reads.
    struct PassLayout<'a> {
        input: &'a [u8],
        /// Bytes per input row.
        row_len: usize,
        taps: &'a AxisTaps,
        /// Two registers of weights per group of four taps, per output.
        group_weights: &'a [__m256i],
    }

    impl PassLayout<'_> {
        #[target_feature(enable = "avx2")]
        unsafe fn run<const GROUPS: usize>(&self, rows: Range<usize>) -> Vec<u8> {
            self.run_with_groups(rows, GROUPS)
        }

        #[inline(always)]
        unsafe fn run_with_groups(&self, rows: Range<usize>, groups: usize) -> Vec<u8> {
            let taps = self.taps;
            let out_row_len = taps.outputs() * 3;
            let length = rows.len() * out_row_len;
            // Each pixel is stored as 4 bytes, the last one overwritten by
            // the next pixel; one spare byte takes the very last store's.
            let mut output = vec![0u8; length + 1];
            let first_pair = _mm256_loadu_si256(FIRST_PAIR.as_ptr() as *const __m256i);
            let second_pair = _mm256_loadu_si256(SECOND_PAIR.as_ptr() as *const __m256i);
            // Each pixel's reads end 4 bytes after the last pixel it reads.
            let reads_past_first = taps.taps * 3 + 4;
            let last_first = taps.firsts.iter().copied().max().unwrap_or(0);
            for (out_row, row) in rows.enumerate() {
                let row_start = row * self.row_len;
                let out_start = out_row * out_row_len;
                if row_start + last_first * 3 + reads_past_first > self.input.len() {
                    // The image's last rows: the reads would leave `input`.
                    let row_pixels = &self.input[row_start..row_start + self.row_len];
                    for index in 0..taps.outputs() {
                        let pixel = super::resample_pixel(row_pixels, taps, index);
                        output[out_start + index * 3..][..3].copy_from_slice(&pixel);
                    }
                    continue;
                }
                let row_base = self.input.as_ptr().add(row_start);
                let out_base = output.as_mut_ptr().add(out_start);
                for (index, &first) in taps.firsts.iter().enumerate() {
                    let base = row_base.add(first * 3);
                    let weights = self.group_weights.as_ptr().add(index * groups * 2);
                    let mut pairs = _mm256_setzero_si256();
                    for group in 0..groups {
                        let bytes = _mm_loadu_si128(base.add(group * 12) as *const __m128i);
                        let both_halves = _mm256_broadcastsi128_si256(bytes);
                        let first = _mm256_shuffle_epi8(both_halves, first_pair);
                        let second = _mm256_shuffle_epi8(both_halves, second_pair);
                        let products = _mm256_add_epi32(
                            _mm256_mullo_epi32(first, *weights.add(group * 2)),
                            _mm256_mullo_epi32(second, *weights.add(group * 2 + 1)),
                        );
                        pairs = _mm256_add_epi32(pairs, products);
                    }
                    let sums = _mm_add_epi32(
                        _mm256_castsi256_si128(pairs),
                        _mm256_extracti128_si256::<1>(pairs),
                    );
                    let rounded = _mm_add_epi32(sums, _mm_set1_epi32(HALF));
                    let shifted = _mm_srai_epi32::<{ PRECISION_BITS as i32 }>(rounded);
                    // Saturating packs clamp to 0..=255, as `to_pixel` does.
                    let packed =
                        _mm_packus_epi16(_mm_packs_epi32(shifted, shifted), _mm_setzero_si128());
                    (out_base.add(index * 3) as *mut i32)
                        .write_unaligned(_mm_cvtsi128_si32(packed));
                }
            }
            output.truncate(length);
            output
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// PIL's resampling written out directly, one output pixel at a time
    /// (full image, no windows, no padding, no SIMD): `img.crop(source)
    /// .resize(size)`.
    fn reference(
        img: &RgbImage,
        source: CropBox,
        size: (u32, u32),
        filter: Interpolation,
    ) -> RgbImage {
        // (first input, fixed-point weights) of output `out` along one axis.
        let taps = |in_size: u32, out_size: u32, out: u32| {
            let scale = f64::from(in_size) / f64::from(out_size);
            let kernel_scale = scale.max(1.0);
            let support = filter.support() * kernel_scale;
            let center = (f64::from(out) + 0.5) * scale;
            let first = ((center - support + 0.5) as i64).max(0);
            let end = ((center + support + 0.5) as i64).min(i64::from(in_size));
            let raw: Vec<f64> = (first..end)
                .map(|x| filter.weight((x as f64 - center + 0.5) / kernel_scale))
                .collect();
            let total: f64 = raw.iter().sum();
            let fixed = raw
                .iter()
                .map(|w| (w / total * f64::from(1 << PRECISION_BITS)).round() as i32)
                .collect::<Vec<_>>();
            (first as u32, fixed)
        };
        let pass = |img: &RgbImage,
                    offset: (u32, u32),
                    in_size: (u32, u32),
                    out_size: (u32, u32),
                    horizontal: bool| {
            RgbImage::from_fn(out_size.0, out_size.1, |x, y| {
                let (out, in_axis, out_axis) = if horizontal {
                    (x, in_size.0, out_size.0)
                } else {
                    (y, in_size.1, out_size.1)
                };
                if in_axis == out_axis {
                    return *img.get_pixel(x + offset.0, y + offset.1);
                }
                let (first, weights) = taps(in_axis, out_axis, out);
                let mut sums = [HALF; 3];
                for (k, weight) in weights.iter().enumerate() {
                    let at = first + k as u32;
                    let (px, py) = if horizontal { (at, y) } else { (x, at) };
                    let pixel = img.get_pixel(px + offset.0, py + offset.1);
                    for channel in 0..3 {
                        sums[channel] += i32::from(pixel[channel]) * weight;
                    }
                }
                image::Rgb(sums.map(to_pixel))
            })
        };
        let origin = (source.left, source.top);
        let in_size = (source.width, source.height);
        if vertical_pass_first(in_size, size) {
            let rows = pass(img, origin, in_size, (source.width, size.1), false);
            pass(&rows, (0, 0), (source.width, size.1), size, true)
        } else {
            let columns = pass(img, origin, in_size, (size.0, source.height), true);
            pass(&columns, (0, 0), (size.0, source.height), size, false)
        }
    }

    fn random_image(rng: &mut ChaCha8Rng, width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |_, _| image::Rgb(rng.random()))
    }

    /// A random non-empty box inside a `width` x `height` image.
    fn random_box(rng: &mut ChaCha8Rng, width: u32, height: u32) -> CropBox {
        let (box_width, box_height) = (rng.random_range(1..=width), rng.random_range(1..=height));
        CropBox {
            left: rng.random_range(0..=width - box_width),
            top: rng.random_range(0..=height - box_height),
            width: box_width,
            height: box_height,
        }
    }

    #[test]
    fn regions_and_windows_match_the_direct_computation() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for case in 0..300 {
            // Sizes from 1 pixel (edge cases) to a few hundred, up and down.
            let side = |rng: &mut ChaCha8Rng| {
                if case % 3 == 0 {
                    rng.random_range(1..8)
                } else {
                    rng.random_range(1..300)
                }
            };
            let (width, height) = (side(&mut rng), side(&mut rng));
            let img = random_image(&mut rng, width, height);
            let source = random_box(&mut rng, img.width(), img.height());
            let size = (side(&mut rng), side(&mut rng));
            let window = random_box(&mut rng, size.0, size.1);
            let filter = if case % 2 == 0 {
                Interpolation::Bicubic
            } else {
                Interpolation::Bilinear
            };
            let full = reference(&img, source, size, filter);
            let expected = image::imageops::crop_imm(
                &full,
                window.left,
                window.top,
                window.width,
                window.height,
            )
            .to_image();
            let ours = resize_region(&img, source, size, window, filter);
            assert!(
                ours == expected,
                "case {case}: {}x{} image, source {source:?}, size {size:?}, window {window:?}, {filter:?}",
                img.width(),
                img.height()
            );
        }
    }

    #[test]
    fn simd_and_portable_passes_agree() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for case in 0..200 {
            let (in_width, in_height) = (rng.random_range(1..200), rng.random_range(1..40));
            let input = random_image(&mut rng, in_width, in_height).into_raw();
            let out_size = rng.random_range(1..300);
            let taps = AxisTaps::along_axis(
                0..in_width as usize,
                out_size,
                0..out_size,
                Interpolation::Bicubic,
            );
            let rows = 0..in_height as usize;
            let portable = horizontal_pass_portable(&input, in_width as usize, rows.clone(), &taps);
            assert_eq!(
                horizontal_pass(&input, in_width as usize, rows, &taps),
                portable,
                "case {case}"
            );
            let taps = AxisTaps::along_axis(
                0..in_height as usize,
                out_size,
                0..out_size,
                Interpolation::Bicubic,
            );
            let columns = 0..in_width as usize;
            let portable =
                vertical_pass_portable(&input, in_width as usize, columns.clone(), &taps);
            assert_eq!(
                vertical_pass(&input, in_width as usize, columns, &taps),
                portable,
                "case {case}"
            );
        }
    }
}
