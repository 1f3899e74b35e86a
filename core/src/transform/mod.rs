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
//! - [`to_normalized_tensor`]: torchvision's `ToTensor` + `Normalize`.

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
    let (width, height) = (img.width() as usize, img.height() as usize);
    let plane = width * height;
    let mut chw = vec![0f32; 3 * plane];
    for (index, pixel) in img.pixels().enumerate() {
        for channel in 0..3 {
            let unit = pixel[channel] as f32 / 255.0;
            chw[channel * plane + index] = (unit - mean[channel] as f32) / std[channel] as f32;
        }
    }
    Tensor::from_slice(&chw).view([3, height as i64, width as i64])
}
