//! OpenCLIP's training transform, `open_clip.image_transform(size,
//! is_train=True, ...)` without timm: random resized crop (bicubic), colour
//! jitter and grey-scale each with a probability, then normalisation, with
//! the pixels of torchvision's transforms on PIL images.
//!
//! Each image's random choices are drawn first ([`TrainTransform::sample`],
//! from an RNG the caller seeds) and applied after
//! ([`TrainTransform::apply_with`]), so the pixel work is deterministic and
//! can be compared with PIL's given the same choices.
//!
//! OpenCLIP 3.3.0 builds this transform with a fixed bicubic filter and
//! torchvision's default aspect-ratio range (3/4, 4/3): `--image-interpolation`
//! and `--aug-cfg ratio` only reach timm's pipeline, so they have no say here.

use anyhow::{bail, Result};
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::Rng;
use tch::Tensor;

use super::aug_cfg::{AugmentationCfg, JitterStrengths};
use super::resample::{resize_region, Interpolation};
use super::to_normalized_tensor;

/// torchvision's `RandomResizedCrop` aspect-ratio range (width / height).
const CROP_ASPECT_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);

/// How many random boxes `RandomResizedCrop` tries before it falls back to a
/// centred crop.
const CROP_ATTEMPTS: usize = 10;

/// A rectangle of the source image, in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropBox {
    pub top: u32,
    pub left: u32,
    pub height: u32,
    pub width: u32,
}

/// One step of torchvision's `ColorJitter`, with its drawn factor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ColorAdjustment {
    /// Scales the pixels towards black (factor < 1) or away from it.
    Brightness(f64),
    /// Moves the pixels towards the image's mean grey level or away from it.
    Contrast(f64),
    /// Moves each pixel towards its own grey level or away from it.
    Saturation(f64),
    /// Rotates the hue by this fraction of a turn, in [-0.5, 0.5].
    Hue(f64),
}

/// The random choices the training transform makes for one image.
#[derive(Clone, Debug, PartialEq)]
pub struct AugmentationDraw {
    /// The region that is cut out and resized to the output size.
    pub crop: CropBox,
    /// The colour-jitter steps, in the order they apply (empty: no jitter).
    pub color_adjustments: Vec<ColorAdjustment>,
    /// Whether the image is turned grey (after the jitter).
    pub grayscale: bool,
}

/// The ranges the colour-jitter factors are drawn from; `None` where a
/// strength of zero turns that step off, as in torchvision's `ColorJitter`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct ColorJitter {
    probability: f64,
    brightness: Option<(f64, f64)>,
    contrast: Option<(f64, f64)>,
    saturation: Option<(f64, f64)>,
    hue: Option<(f64, f64)>,
}

impl ColorJitter {
    fn new(strengths: JitterStrengths, probability: f64) -> Self {
        // A factor range around 1, its low end clipped at 0.
        let factor_range = |strength: f64| {
            (strength != 0.0).then_some(((1.0 - strength).max(0.0), 1.0 + strength))
        };
        ColorJitter {
            probability,
            brightness: factor_range(strengths.brightness),
            contrast: factor_range(strengths.contrast),
            saturation: factor_range(strengths.saturation),
            hue: (strengths.hue != 0.0).then_some((-strengths.hue, strengths.hue)),
        }
    }

    /// torchvision's `ColorJitter.get_params`: the four steps in a random
    /// order, each with a factor drawn uniformly from its range.
    fn sample(&self, rng: &mut impl Rng) -> Vec<ColorAdjustment> {
        let mut order = [0, 1, 2, 3];
        order.shuffle(rng);
        let mut draw = |range: Option<(f64, f64)>| range.map(|(low, high)| uniform(rng, low, high));
        let brightness = draw(self.brightness).map(ColorAdjustment::Brightness);
        let contrast = draw(self.contrast).map(ColorAdjustment::Contrast);
        let saturation = draw(self.saturation).map(ColorAdjustment::Saturation);
        let hue = draw(self.hue).map(ColorAdjustment::Hue);
        let steps = [brightness, contrast, saturation, hue];
        order.iter().filter_map(|&index| steps[index]).collect()
    }
}

/// OpenCLIP's training transform for one model's preprocessing settings.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainTransform {
    /// Output (height, width) in pixels.
    image_size: (u32, u32),
    mean: [f64; 3],
    std: [f64; 3],
    /// Range of the crop's area as a fraction of the image's.
    scale: (f64, f64),
    color_jitter: Option<ColorJitter>,
    gray_scale_prob: f64,
}

impl TrainTransform {
    /// The transform for output size (height, width), normalisation `mean`
    /// and `std`, and the `--aug-cfg` settings; settings OpenCLIP's own
    /// transform does not honour are errors naming `--aug-cfg`.
    pub fn new(
        image_size: (u32, u32),
        mean: [f64; 3],
        std: [f64; 3],
        augmentation: &AugmentationCfg,
    ) -> Result<Self> {
        if image_size.0 == 0 || image_size.1 == 0 {
            bail!(
                "training image size must be positive, got {}x{} (height x width)",
                image_size.0,
                image_size.1
            );
        }
        let checked = augmentation.check()?;
        Ok(TrainTransform {
            image_size,
            mean,
            std,
            scale: checked.scale,
            color_jitter: checked
                .color_jitter
                .map(|(strengths, probability)| ColorJitter::new(strengths, probability)),
            gray_scale_prob: checked.gray_scale_prob,
        })
    }

    /// Output (height, width) in pixels.
    pub fn image_size(&self) -> (u32, u32) {
        self.image_size
    }

    /// Draws the random choices for an image of `width` x `height` pixels.
    pub fn sample(&self, width: u32, height: u32, rng: &mut impl Rng) -> AugmentationDraw {
        let crop = self.sample_crop(width, height, rng);
        let color_adjustments = match &self.color_jitter {
            Some(jitter) if rng.random::<f64>() < jitter.probability => jitter.sample(rng),
            _ => Vec::new(),
        };
        let grayscale = self.gray_scale_prob > 0.0 && rng.random::<f64>() < self.gray_scale_prob;
        AugmentationDraw {
            crop,
            color_adjustments,
            grayscale,
        }
    }

    /// torchvision's `RandomResizedCrop.get_params`: up to ten boxes with an
    /// area drawn uniformly from `scale` times the image's and an aspect
    /// ratio drawn log-uniformly from (3/4, 4/3); the first that fits is
    /// placed uniformly at random. When none fits, the largest centred box
    /// whose aspect ratio is within the range.
    pub fn sample_crop(&self, width: u32, height: u32, rng: &mut impl Rng) -> CropBox {
        let area = f64::from(width) * f64::from(height);
        let (min_ratio, max_ratio) = CROP_ASPECT_RATIO;
        for _ in 0..CROP_ATTEMPTS {
            let target_area = area * uniform(rng, self.scale.0, self.scale.1);
            let aspect_ratio = uniform(rng, min_ratio.ln(), max_ratio.ln()).exp();
            // Python's round: half to even.
            let crop_width = (target_area * aspect_ratio).sqrt().round_ties_even();
            let crop_height = (target_area / aspect_ratio).sqrt().round_ties_even();
            let fits = |side: f64, limit: u32| 0.0 < side && side <= f64::from(limit);
            if fits(crop_width, width) && fits(crop_height, height) {
                let (crop_width, crop_height) = (crop_width as u32, crop_height as u32);
                return CropBox {
                    top: rng.random_range(0..=height - crop_height),
                    left: rng.random_range(0..=width - crop_width),
                    height: crop_height,
                    width: crop_width,
                };
            }
        }
        let image_ratio = f64::from(width) / f64::from(height);
        let (crop_width, crop_height) = if image_ratio < min_ratio {
            let crop_height = (f64::from(width) / min_ratio).round_ties_even() as u32;
            (width, crop_height)
        } else if image_ratio > max_ratio {
            let crop_width = (f64::from(height) * max_ratio).round_ties_even() as u32;
            (crop_width, height)
        } else {
            (width, height)
        };
        CropBox {
            top: (height - crop_height) / 2,
            left: (width - crop_width) / 2,
            height: crop_height,
            width: crop_width,
        }
    }

    /// The 8-bit pixels of the transformed image, before normalisation:
    /// the crop resized to `image_size`, then the colour steps, then grey.
    pub fn augment_pixels(&self, img: &RgbImage, draw: &AugmentationDraw) -> Result<RgbImage> {
        let (height, width) = self.image_size;
        let mut pixels = resized_crop(img, draw.crop, width, height)?;
        for adjustment in &draw.color_adjustments {
            pixels = adjustment.apply(&pixels);
        }
        if draw.grayscale {
            pixels = to_grayscale(&pixels);
        }
        Ok(pixels)
    }

    /// The image transformed with the given choices, as a normalised
    /// `[3, height, width]` f32 tensor.
    pub fn apply_with(&self, img: &RgbImage, draw: &AugmentationDraw) -> Result<Tensor> {
        let pixels = self.augment_pixels(img, draw)?;
        Ok(to_normalized_tensor(&pixels, self.mean, self.std))
    }

    /// The image transformed with choices drawn from `rng`, as a normalised
    /// `[3, height, width]` f32 tensor; an empty image is an error.
    pub fn apply(&self, img: &RgbImage, rng: &mut impl Rng) -> Result<Tensor> {
        if img.width() == 0 || img.height() == 0 {
            bail!(
                "cannot augment an empty image ({}x{})",
                img.width(),
                img.height()
            );
        }
        let draw = self.sample(img.width(), img.height(), rng);
        self.apply_with(img, &draw)
    }
}

/// A number drawn uniformly from [low, high) as torch's `uniform_` does;
/// `low == high` gives `low`.
fn uniform(rng: &mut impl Rng, low: f64, high: f64) -> f64 {
    low + (high - low) * rng.random::<f64>()
}

/// torchvision's `resized_crop` on a PIL image: `img.crop(box)` resized to
/// `width` x `height` with PIL's bicubic filter. The filter reads only the
/// box (its taps are clamped to the box's edges, as after PIL's crop), in
/// place: the crop costs no copy.
pub fn resized_crop(img: &RgbImage, crop: CropBox, width: u32, height: u32) -> Result<RgbImage> {
    let fits = |start: u32, length: u32, limit: u32| {
        length > 0 && u64::from(start) + u64::from(length) <= u64::from(limit)
    };
    if !(fits(crop.left, crop.width, img.width()) && fits(crop.top, crop.height, img.height())) {
        bail!(
            "crop box {}x{} at (left {}, top {}) is empty or outside the {}x{} image",
            crop.width,
            crop.height,
            crop.left,
            crop.top,
            img.width(),
            img.height()
        );
    }
    let output = CropBox {
        top: 0,
        left: 0,
        height,
        width,
    };
    Ok(resize_region(
        img,
        crop,
        (width, height),
        output,
        Interpolation::Bicubic,
    ))
}

impl ColorAdjustment {
    /// The adjusted image, pixel for pixel as torchvision's `adjust_*`
    /// functions on a PIL image (PIL's `ImageEnhance` and HSV conversion).
    pub fn apply(&self, img: &RgbImage) -> RgbImage {
        match *self {
            ColorAdjustment::Brightness(factor) => blend(img, factor, |_| [0; 3]),
            ColorAdjustment::Contrast(factor) => {
                let mean = mean_grey_level(img);
                blend(img, factor, |_| [mean; 3])
            }
            ColorAdjustment::Saturation(factor) => {
                blend(img, factor, |pixel| [grey_level(pixel); 3])
            }
            ColorAdjustment::Hue(shift) => rotate_hue(img, shift),
        }
    }
}

/// PIL's `Image.blend(degenerate, img, factor)`, the core of `ImageEnhance`:
/// `degenerate + factor * (pixel - degenerate)` in f32, clipped to 0..=255
/// and truncated. `degenerate` gives the degenerate image's pixel for each
/// pixel of `img`.
fn blend(img: &RgbImage, factor: f64, degenerate: impl Fn([u8; 3]) -> [u8; 3]) -> RgbImage {
    let alpha = factor as f32;
    let mut out = img.clone();
    for pixel in out.pixels_mut() {
        let base = degenerate(pixel.0);
        for (value, base) in pixel.0.iter_mut().zip(base) {
            let difference = f32::from(*value) - f32::from(base);
            // `as u8` clips to 0..=255 and truncates, as PIL does.
            *value = (f32::from(base) + alpha * difference) as u8;
        }
    }
    out
}

/// PIL's `convert('L')` of one pixel (ITU-R 601-2 luma in 16-bit fixed point).
fn grey_level([red, green, blue]: [u8; 3]) -> u8 {
    let weighted = u32::from(red) * 19595 + u32::from(green) * 38470 + u32::from(blue) * 7471;
    ((weighted + 0x8000) >> 16) as u8
}

/// `ImageEnhance.Contrast`'s grey level: the mean of `convert('L')`,
/// rounded half up.
fn mean_grey_level(img: &RgbImage) -> u8 {
    let total: u64 = img.pixels().map(|p| u64::from(grey_level(p.0))).sum();
    let count = u64::from(img.width()) * u64::from(img.height());
    if count == 0 {
        return 0;
    }
    (total as f64 / count as f64 + 0.5) as u8
}

/// torchvision's `Grayscale(num_output_channels=3)` on a PIL image:
/// `convert('L')` copied to the three channels.
pub fn to_grayscale(img: &RgbImage) -> RgbImage {
    let mut out = img.clone();
    for pixel in out.pixels_mut() {
        pixel.0 = [grey_level(pixel.0); 3];
    }
    out
}

/// torchvision's `adjust_hue` on a PIL image: to PIL's 8-bit HSV, add
/// `shift * 255` (truncated, wrapping) to the hue, and back to RGB.
fn rotate_hue(img: &RgbImage, shift: f64) -> RgbImage {
    let hue_step = (shift * 255.0) as i32 as u8;
    let mut out = img.clone();
    for pixel in out.pixels_mut() {
        let [hue, saturation, value] = rgb_to_hsv(pixel.0);
        pixel.0 = hsv_to_rgb([hue.wrapping_add(hue_step), saturation, value]);
    }
    out
}

/// PIL's RGB to 8-bit HSV conversion, with its mix of f32 and f64 steps
/// (they decide which way the final truncations go).
fn rgb_to_hsv([red, green, blue]: [u8; 3]) -> [u8; 3] {
    let max = red.max(green).max(blue);
    let min = red.min(green).min(blue);
    if max == min {
        return [0, 0, max];
    }
    let chroma = f32::from(max - min);
    let saturation = chroma / f32::from(max);
    let distance = |channel: u8| f32::from(max - channel) / chroma;
    let (red_distance, green_distance, blue_distance) =
        (distance(red), distance(green), distance(blue));
    let sextant: f32 = if red == max {
        blue_distance - green_distance
    } else if green == max {
        (2.0 + f64::from(red_distance) - f64::from(blue_distance)) as f32
    } else {
        (4.0 + f64::from(green_distance) - f64::from(red_distance)) as f32
    };
    // PIL's `fmod(h / 6 + 1, 1)`; the sum lies in (0.8, 1.9), where
    // subtracting 1 is exact and much cheaper than a call to fmod.
    let turns = f64::from(sextant) / 6.0 + 1.0;
    let hue = (if turns >= 1.0 { turns - 1.0 } else { turns }) as f32;
    let to_byte = |unit: f32| (f64::from(unit) * 255.0) as i32;
    [
        to_byte(hue).clamp(0, 255) as u8,
        to_byte(saturation).clamp(0, 255) as u8,
        max,
    ]
}

/// PIL's 8-bit HSV to RGB conversion, with its f32 and f64 steps and C's
/// `round` (half away from zero).
fn hsv_to_rgb([hue, saturation, value]: [u8; 3]) -> [u8; 3] {
    if saturation == 0 {
        return [value; 3];
    }
    let position = f64::from(hue) * 6.0 / 255.0;
    // Truncation is floor here: the position is not negative.
    let sextant = position as i32;
    let fraction = (position - f64::from(sextant as f32)) as f32;
    let saturation = (f64::from(saturation) / 255.0) as f32;
    let value_f64 = f64::from(value);
    let level = |scale: f64| round_half_up(value_f64 * scale).clamp(0, 255) as u8;
    let p = level(1.0 - f64::from(saturation));
    let q = level(1.0 - f64::from(saturation * fraction));
    let t = level(1.0 - f64::from(saturation) * (1.0 - f64::from(fraction)));
    match sextant % 6 {
        0 => [value, t, p],
        1 => [q, value, p],
        2 => [p, value, t],
        3 => [p, q, value],
        4 => [t, p, value],
        _ => [value, p, q],
    }
}

/// C's `round` for a non-negative number (half away from zero), without
/// the library call that `f64::round` compiles to on baseline x86-64.
fn round_half_up(x: f64) -> i64 {
    let whole = x as i64;
    if x - whole as f64 >= 0.5 {
        whole + 1
    } else {
        whole
    }
}
