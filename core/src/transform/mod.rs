//! Image transforms: decoding image files to RGB pixels and OpenCLIP's
//! validation transform (resize, centre crop or pad, normalise) and training
//! transform (random resized crop, colour jitter, grey-scale), reproducing
//! the pixels of OpenCLIP's PIL/torchvision pipeline.
//!
//! - [`decode_image`]: JPEG/PNG/WebP bytes to RGB, as PIL's `.convert('RGB')`,
//!   refusing decompression bombs.
//! - [`resize`]: PIL's antialiased separable resampling (bicubic, bilinear).
//! - [`ValTransform`]: `open_clip.image_transform(..., is_train=False)`.
//! - [`TrainTransform`]: `open_clip.image_transform(..., is_train=True)`
//!   (OpenCLIP's own augmentations, configured by [`AugmentationCfg`]).
//! - [`Normalization`], [`to_normalized_tensor`],
//!   [`normalized_channels_first`]: torchvision's `ToTensor` + `Normalize`.

mod aug_cfg;
mod decode;
mod jpeg;
mod resample;
mod train;
mod val;

pub use aug_cfg::{AugCfgEntry, AugSetting, AugmentationCfg};
pub use decode::{decode_image, decode_image_with_limit, MAX_IMAGE_PIXELS};
pub use resample::{resize, Interpolation};
pub use train::{
    resized_crop, to_grayscale, AugmentationDraw, ColorAdjustment, CropBox, TrainTransform,
};
pub use val::{center_crop_or_pad, ResizeMode, ValTransform};

pub use image::RgbImage;
use tch::Tensor;

/// Per-channel mean of the images OpenAI's CLIP was trained on (RGB, in [0, 1]).
pub const OPENAI_DATASET_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// Per-channel standard deviation of the images OpenAI's CLIP was trained on.
pub const OPENAI_DATASET_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// Converts RGB pixels to a `[3, height, width]` f32 tensor with
/// `(pixel / 255 - mean) / std` per channel, computed in f32 in the same order
/// as torchvision's `ToTensor` followed by `Normalize`, so equal pixels give
/// bit-identical values.
pub fn to_normalized_tensor(img: &RgbImage, mean: [f64; 3], std: [f64; 3]) -> Tensor {
    let (width, height) = (img.width() as i64, img.height() as i64);
    Tensor::from_slice(&normalized_channels_first(img, mean, std)).view([3, height, width])
}

/// The values of [`to_normalized_tensor`] as a plain buffer, channels first
/// (`[3, height, width]` in row-major order).
pub fn normalized_channels_first(img: &RgbImage, mean: [f64; 3], std: [f64; 3]) -> Vec<f32> {
    Normalization::new(mean, std).channels_first(img)
}

/// torchvision's `ToTensor` + `Normalize` for 8-bit pixels: each channel's
/// 256 possible values, computed once with the same f32 operations, and
/// looked up.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalization {
    tables: [[f32; 256]; 3],
}

impl Normalization {
    pub fn new(mean: [f64; 3], std: [f64; 3]) -> Self {
        let tables = std::array::from_fn(|channel| {
            let (mean, std) = (mean[channel] as f32, std[channel] as f32);
            std::array::from_fn(|level| (level as f32 / 255.0 - mean) / std)
        });
        Normalization { tables }
    }

    /// The normalised values of `img`, channels first.
    pub fn channels_first(&self, img: &RgbImage) -> Vec<f32> {
        let mut values = vec![0f32; 3 * img.width() as usize * img.height() as usize];
        self.write_channels_first(img, &mut values);
        values
    }

    /// Writes the normalised values of `img`, channels first, into `out`,
    /// which holds exactly `3 * width * height` values (a row of a batch).
    pub fn write_channels_first(&self, img: &RgbImage, out: &mut [f32]) {
        let plane = img.width() as usize * img.height() as usize;
        assert_eq!(
            out.len(),
            3 * plane,
            "the output must fit the image exactly"
        );
        let (red, rest) = out.split_at_mut(plane);
        let (green, blue) = rest.split_at_mut(plane);
        let planes = red.iter_mut().zip(green.iter_mut()).zip(blue.iter_mut());
        let [red_table, green_table, blue_table] = &self.tables;
        for (pixel, ((red, green), blue)) in img.as_raw().chunks_exact(3).zip(planes) {
            *red = red_table[usize::from(pixel[0])];
            *green = green_table[usize::from(pixel[1])];
            *blue = blue_table[usize::from(pixel[2])];
        }
    }
}
