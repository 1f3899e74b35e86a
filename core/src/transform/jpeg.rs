//! JPEG decoding with libjpeg-turbo's algorithms, the library inside PIL, so
//! that decoded pixels equal PIL's exactly.
//!
//! libjpeg comes from the `mozjpeg` crate, which builds it from source (its
//! decoder is libjpeg-turbo's: accurate integer IDCT, "fancy" triangular
//! chroma upsampling). The image crate's pure-Rust decoder (zune-jpeg) rounds
//! chroma upsampling differently: on 4:2:0 photographs about 14% of decoded
//! values differ from PIL's, by up to 5 levels, which breaks OpenCLIP parity
//! of the validation transform (at most 4 levels).
//!
//! libjpeg reports fatal errors by unwinding out of the decoder (the
//! `mozjpeg` crate's error manager resumes a Rust unwind without calling the
//! panic hook); [`decode_jpeg`] catches that and returns it as an error.

use std::cell::Cell;
use std::io::{self, BufRead, Read};
use std::panic::{self, AssertUnwindSafe};

use anyhow::{anyhow, bail, Result};
use image::RgbImage;
use mozjpeg::{ColorSpace, Decompress};

/// Decodes a JPEG to RGB as PIL's `Image.open(...).convert('RGB')` does,
/// refusing images of more than `max_pixels` pixels (checked on the header)
/// and files that end before the image data does (PIL: "image file is
/// truncated").
pub(super) fn decode_jpeg(bytes: &[u8], max_pixels: u64) -> Result<RgbImage> {
    let reached_end = Cell::new(false);
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        decode_with_libjpeg(
            EndDetectingReader {
                rest: bytes,
                reached_end: &reached_end,
            },
            max_pixels,
        )
    }));
    let img = match outcome {
        Ok(result) => result?,
        Err(payload) => bail!("{}", unwind_message(payload)),
    };
    if reached_end.get() {
        bail!("the JPEG data ends before the image does (truncated file)");
    }
    Ok(img)
}

fn decode_with_libjpeg(reader: EndDetectingReader<'_>, max_pixels: u64) -> Result<RgbImage> {
    let decompress = Decompress::new_reader(reader)?;
    let (width, height) = decompress.size();
    let pixels = width as u64 * height as u64;
    if pixels > max_pixels {
        bail!(super::decode::too_many_pixels(
            width as u64,
            height as u64,
            max_pixels
        ));
    }
    let (width, height) = (width as u32, height as u32);
    if matches!(
        decompress.color_space(),
        ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK
    ) {
        let mut started = decompress.to_colorspace(ColorSpace::JCS_CMYK)?;
        let cmyk: Vec<[u8; 4]> = started.read_scanlines()?;
        started.finish()?;
        // PIL reads 4-channel JPEGs with Adobe's inverted polarity, then
        // converts with R = (255 - C)(255 - K) / 255, rounded; with inverted
        // samples c = 255 - C that is c * k / 255.
        let channel = |c: u8, k: u8| ((u32::from(c) * u32::from(k) + 127) / 255) as u8;
        let rgb = cmyk
            .iter()
            .flat_map(|&[c, m, y, k]| [channel(c, k), channel(m, k), channel(y, k)])
            .collect();
        return RgbImage::from_raw(width, height, rgb).ok_or_else(|| anyhow!("short CMYK image"));
    }
    // libjpeg converts grey and YCbCr to RGB itself, as PIL's convert does.
    let mut started = decompress.rgb()?;
    let rgb: Vec<[u8; 3]> = started.read_scanlines()?;
    started.finish()?;
    RgbImage::from_raw(width, height, rgb.into_flattened())
        .ok_or_else(|| anyhow!("short RGB image"))
}

/// The text of a libjpeg error carried by an unwind.
fn unwind_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map_or_else(|| "libjpeg failed".to_owned(), |s| (*s).to_owned()),
    }
}

/// Reads from a byte slice and records whether the decoder asked for more
/// bytes than there are: libjpeg only warns about that and pads the image.
struct EndDetectingReader<'a> {
    rest: &'a [u8],
    reached_end: &'a Cell<bool>,
}

impl Read for EndDetectingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let count = self.rest.read(buf)?;
        if count == 0 && !buf.is_empty() {
            self.reached_end.set(true);
        }
        Ok(count)
    }
}

impl BufRead for EndDetectingReader<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.rest.is_empty() {
            self.reached_end.set(true);
        }
        Ok(self.rest)
    }

    fn consume(&mut self, amount: usize) {
        self.rest = &self.rest[amount..];
    }
}
