//! OpenCLIP's validation (inference) transform,
//! `open_clip.image_transform(size, is_train=False, ...)`: resize as the
//! resize mode says, centre crop (padding where the image is smaller), then
//! normalise.

use std::str::FromStr;

use anyhow::bail;
use image::{Rgb, RgbImage};
use tch::Tensor;

use super::resample::{resize, resize_region, Interpolation};
use super::to_normalized_tensor;
use super::train::CropBox;

/// How the image is fitted to the target size; OpenCLIP's `resize_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeMode {
    /// Scale so the shorter side fits the target, then centre crop.
    Shortest,
    /// Scale so the longer side fits the target, then centre pad.
    Longest,
    /// Scale each axis to the target, ignoring the aspect ratio.
    Squash,
}

impl FromStr for ResizeMode {
    type Err = anyhow::Error;

    fn from_str(name: &str) -> anyhow::Result<Self> {
        match name {
            "shortest" => Ok(ResizeMode::Shortest),
            "longest" => Ok(ResizeMode::Longest),
            "squash" => Ok(ResizeMode::Squash),
            other => bail!("unknown resize mode {other:?}: expected shortest, longest or squash"),
        }
    }
}

/// OpenCLIP's validation transform for one model's preprocessing settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ValTransform {
    /// Output (height, width) in pixels.
    pub image_size: (u32, u32),
    /// Per-channel mean subtracted after scaling pixels to [0, 1].
    pub mean: [f64; 3],
    /// Per-channel standard deviation divided by after the mean.
    pub std: [f64; 3],
    pub interpolation: Interpolation,
    pub resize_mode: ResizeMode,
    /// Grey level of the padding in `Longest` mode (OpenCLIP's `fill_color`).
    pub fill_color: u8,
}

impl ValTransform {
    /// A transform with OpenCLIP's default padding colour (black).
    pub fn new(
        image_size: (u32, u32),
        mean: [f64; 3],
        std: [f64; 3],
        interpolation: Interpolation,
        resize_mode: ResizeMode,
    ) -> Self {
        ValTransform {
            image_size,
            mean,
            std,
            interpolation,
            resize_mode,
            fill_color: 0,
        }
    }

    /// The 8-bit pixels of the transformed image, before normalisation:
    /// exactly `image_size` (height, width).
    pub fn resize_and_crop(&self, img: &RgbImage) -> RgbImage {
        let (target_height, target_width) = self.image_size;
        let (height, width) = (img.height(), img.width());
        match self.resize_mode {
            ResizeMode::Squash => resize(img, target_width, target_height, self.interpolation),
            ResizeMode::Shortest if target_height == target_width => {
                // torchvision's `Resize(int)`: the short side becomes the
                // target and the long side is scaled and truncated.
                let (short, long) = (height.min(width), height.max(width));
                let scaled_long =
                    (f64::from(target_height) * f64::from(long) / f64::from(short)) as u32;
                let (new_height, new_width) = if width <= height {
                    (scaled_long, target_width)
                } else {
                    (target_height, scaled_long)
                };
                self.resize_then_center(img, (new_width, new_height), self.interpolation, 0)
            }
            ResizeMode::Shortest => {
                // OpenCLIP builds `ResizeKeepRatio` for non-square targets
                // without passing its interpolation, so it is always bicubic.
                let (new_height, new_width) =
                    keep_ratio_size((height, width), self.image_size, false);
                self.resize_then_center(img, (new_width, new_height), Interpolation::Bicubic, 0)
            }
            ResizeMode::Longest => {
                let (new_height, new_width) =
                    keep_ratio_size((height, width), self.image_size, true);
                let fill = self.fill_color;
                self.resize_then_center(img, (new_width, new_height), self.interpolation, fill)
            }
        }
    }

    /// `center_crop_or_pad(&resize(img, size), self.image_size, fill)` for
    /// `size` (width, height); when nothing needs padding, only the pixels
    /// the crop keeps are computed.
    fn resize_then_center(
        &self,
        img: &RgbImage,
        size: (u32, u32),
        filter: Interpolation,
        fill: u8,
    ) -> RgbImage {
        let (target_height, target_width) = self.image_size;
        if size.0 < target_width || size.1 < target_height {
            return center_crop_or_pad(&resize(img, size.0, size.1, filter), self.image_size, fill);
        }
        let whole_image = CropBox {
            top: 0,
            left: 0,
            height: img.height(),
            width: img.width(),
        };
        let centred_window = CropBox {
            top: centred_offset(i64::from(size.1 - target_height)) as u32,
            left: centred_offset(i64::from(size.0 - target_width)) as u32,
            height: target_height,
            width: target_width,
        };
        resize_region(img, whole_image, size, centred_window, filter)
    }

    /// The transformed image as a `[3, height, width]` f32 tensor, normalised.
    pub fn apply(&self, img: &RgbImage) -> Tensor {
        to_normalized_tensor(&self.resize_and_crop(img), self.mean, self.std)
    }
}

/// OpenCLIP's `ResizeKeepRatio` size: both sides divided by the ratio of the
/// source to the target along the longer (or shorter) fitting side, rounded
/// half to even like Python's `round`.
fn keep_ratio_size(source: (u32, u32), target: (u32, u32), fit_longest: bool) -> (u32, u32) {
    let ratio_height = f64::from(source.0) / f64::from(target.0);
    let ratio_width = f64::from(source.1) / f64::from(target.1);
    let ratio = if fit_longest {
        ratio_height.max(ratio_width)
    } else {
        ratio_height.min(ratio_width)
    };
    let scaled = |side: u32| (f64::from(side) / ratio).round_ties_even() as u32;
    (scaled(source.0), scaled(source.1))
}

/// torchvision's centred crop offset for `extra` pixels more than the crop:
/// half of them, rounded half to even.
fn centred_offset(extra: i64) -> i64 {
    (extra as f64 / 2.0).round_ties_even() as i64
}

/// torchvision's `center_crop` (and OpenCLIP's `center_crop_or_pad`): pads
/// with `fill` where the image is smaller than `size` (height, width), the
/// odd pixel of padding going right or bottom, then takes the centred window,
/// its offset rounded half to even.
pub fn center_crop_or_pad(img: &RgbImage, size: (u32, u32), fill: u8) -> RgbImage {
    let (crop_height, crop_width) = (i64::from(size.0), i64::from(size.1));
    let (height, width) = (i64::from(img.height()), i64::from(img.width()));
    let pad_top = ((crop_height - height) / 2).max(0);
    let pad_left = ((crop_width - width) / 2).max(0);
    let padded_height = height.max(crop_height);
    let padded_width = width.max(crop_width);
    let crop_top = centred_offset(padded_height - crop_height);
    let crop_left = centred_offset(padded_width - crop_width);
    if pad_top == 0 && pad_left == 0 && height >= crop_height && width >= crop_width {
        let row_bytes = 3 * crop_width as usize;
        let mut raw = Vec::with_capacity(row_bytes * crop_height as usize);
        for y in crop_top..crop_top + crop_height {
            let start = 3 * (y * width + crop_left) as usize;
            raw.extend_from_slice(&img.as_raw()[start..start + row_bytes]);
        }
        return RgbImage::from_raw(size.1, size.0, raw).expect("rows x width RGB pixels");
    }
    RgbImage::from_fn(size.1, size.0, |x, y| {
        let source_x = i64::from(x) + crop_left - pad_left;
        let source_y = i64::from(y) + crop_top - pad_top;
        if (0..width).contains(&source_x) && (0..height).contains(&source_y) {
            *img.get_pixel(source_x as u32, source_y as u32)
        } else {
            Rgb([fill; 3])
        }
    })
}
