//! Decoding JPEG, PNG and WebP bytes to 8-bit RGB pixels the way OpenCLIP's
//! data pipeline sees them: PIL's `Image.open(...).convert('RGB')`, with PIL's
//! guard against decompression bombs.

use std::io::Cursor;

use anyhow::{bail, Context, Result};
use image::{DynamicImage, ImageFormat, ImageReader, Limits, Rgb, RgbImage};

use super::jpeg::decode_jpeg;

/// The largest image, in pixels, that [`decode_image`] accepts: PIL's
/// `2 * Image.MAX_IMAGE_PIXELS`, above which PIL raises
/// `DecompressionBombError` (it only warns between half this and this).
pub const MAX_IMAGE_PIXELS: u64 = 2 * (1024 * 1024 * 1024 / 4 / 3);

/// The most bytes one decoded pixel can take in the PNG and WebP decoders'
/// buffers (16-bit RGBA), used to size their allocation limit.
const MAX_BYTES_PER_PIXEL: u64 = 8;

/// Decodes a JPEG, PNG or WebP file to RGB, refusing images of more than
/// [`MAX_IMAGE_PIXELS`] pixels. `source` names the file or sample in errors.
pub fn decode_image(bytes: &[u8], source: &str) -> Result<RgbImage> {
    decode_image_with_limit(bytes, source, MAX_IMAGE_PIXELS)
}

/// [`decode_image`] with a chosen limit on the pixel count (width × height),
/// checked from the header before any pixel is decoded.
pub fn decode_image_with_limit(bytes: &[u8], source: &str, max_pixels: u64) -> Result<RgbImage> {
    match image::guess_format(bytes) {
        Ok(ImageFormat::Jpeg) => decode_jpeg(bytes, max_pixels)
            .with_context(|| format!("{source}: cannot decode the JPEG image")),
        Ok(format @ (ImageFormat::Png | ImageFormat::WebP)) => {
            decode_with_image_crate(bytes, format, max_pixels)
                .with_context(|| format!("{source}: cannot decode the {format:?} image"))
        }
        Ok(other) => bail!("{source}: {other:?} images are not supported (JPEG, PNG or WebP)"),
        Err(_) => bail!("{source}: not a JPEG, PNG or WebP image"),
    }
}

/// The error message for an image above the pixel limit.
pub(super) fn too_many_pixels(width: u64, height: u64, max_pixels: u64) -> String {
    format!(
        "image of {width}x{height} = {} pixels exceeds the limit of {max_pixels} pixels \
         (possible decompression bomb)",
        width * height
    )
}

/// Decodes PNG or WebP with the image crate.
fn decode_with_image_crate(bytes: &[u8], format: ImageFormat, max_pixels: u64) -> Result<RgbImage> {
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .context("invalid header")?;
    if u64::from(width) * u64::from(height) > max_pixels {
        bail!(too_many_pixels(width.into(), height.into(), max_pixels));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(MAX_BYTES_PER_PIXEL));
    reader.limits(limits);
    Ok(to_rgb_like_pil(reader.decode()?))
}

/// Converts decoded pixels to 8-bit RGB as PIL's `.convert('RGB')` does for
/// the modes PIL opens the same files in: alpha is dropped (not composited),
/// grey is replicated, 16-bit colour keeps its high byte, and 16-bit grey
/// (PIL's mode `I;16`) is clipped to 255 rather than rescaled.
fn to_rgb_like_pil(decoded: DynamicImage) -> RgbImage {
    let (width, height) = (decoded.width(), decoded.height());
    let grey = |value: u8| Rgb([value, value, value]);
    let high_byte = |value: u16| (value >> 8) as u8;
    match decoded {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageRgba8(rgba) => RgbImage::from_fn(width, height, |x, y| {
            let [r, g, b, _] = rgba.get_pixel(x, y).0;
            Rgb([r, g, b])
        }),
        DynamicImage::ImageLuma8(luma) => {
            RgbImage::from_fn(width, height, |x, y| grey(luma.get_pixel(x, y).0[0]))
        }
        DynamicImage::ImageLumaA8(luma_alpha) => {
            RgbImage::from_fn(width, height, |x, y| grey(luma_alpha.get_pixel(x, y).0[0]))
        }
        DynamicImage::ImageLuma16(luma) => RgbImage::from_fn(width, height, |x, y| {
            grey(luma.get_pixel(x, y).0[0].min(255) as u8)
        }),
        DynamicImage::ImageLumaA16(luma_alpha) => RgbImage::from_fn(width, height, |x, y| {
            grey(high_byte(luma_alpha.get_pixel(x, y).0[0]))
        }),
        DynamicImage::ImageRgb16(rgb) => RgbImage::from_fn(width, height, |x, y| {
            Rgb(rgb.get_pixel(x, y).0.map(high_byte))
        }),
        DynamicImage::ImageRgba16(rgba) => RgbImage::from_fn(width, height, |x, y| {
            let [r, g, b, _] = rgba.get_pixel(x, y).0;
            Rgb([r, g, b].map(high_byte))
        }),
        other => other.to_rgb8(),
    }
}
