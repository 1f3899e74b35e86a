//! The decoder: a sample's image bytes (JPEG, PNG, WebP) to 8-bit RGB pixels,
//! as Pillow's `convert("RGB")` gives them, refusing images above a pixel
//! limit (decompression bombs). An image that does not decode becomes a
//! skip naming its shard and key; the stream goes on.

use anyhow::Result;
use clipflow_core::data::{ImageData, Sample};
use clipflow_core::transform::{decode_image_with_limit, RgbImage, MAX_IMAGE_PIXELS};

use crate::bad_data::{BadDataKind, BadSample, SampleOrSkip};
use crate::load_stream::LoadItem;
use crate::runtime::{Emitter, Stage};
use crate::topology::Settings;

/// A sample whose image is decoded.
#[derive(Debug, Clone)]
pub struct DecodedSample {
    pub key: String,
    /// The shard URL or CSV file.
    pub origin: String,
    pub image: RgbImage,
    pub caption: String,
}

/// Decodes images; keeps no state, so it can be restarted.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Images with more pixels (width × height) are refused.
    pub max_pixels: u64,
}

impl Default for Decoder {
    /// Pillow's limit.
    fn default() -> Self {
        Decoder {
            max_pixels: MAX_IMAGE_PIXELS,
        }
    }
}

impl Decoder {
    /// Reads the settings of a `decoder` component: `max_image_pixels`
    /// (default: Pillow's limit).
    pub fn from_settings(settings: &Settings) -> Result<Self> {
        let max_pixels = settings
            .u64("max_image_pixels")?
            .unwrap_or(MAX_IMAGE_PIXELS);
        Ok(Decoder { max_pixels })
    }

    /// Decodes one sample, or says why it cannot.
    pub fn decode(&self, sample: Sample) -> SampleOrSkip<DecodedSample> {
        let Sample {
            key,
            origin,
            image,
            caption,
        } = sample;
        let decoded = match image {
            ImageData::Encoded { bytes, extension } => {
                let member = format!("{key}.{extension}");
                decode_image_with_limit(&bytes, &member, self.max_pixels)
                    .map_err(|error| format!("{error:#}"))
            }
            ImageData::Pixels { width, height, rgb } => RgbImage::from_raw(width, height, rgb)
                .ok_or_else(|| format!("{width}x{height} pixels need {width}*{height}*3 bytes")),
        };
        match decoded {
            Ok(image) => SampleOrSkip::Sample(DecodedSample {
                key,
                origin,
                image,
                caption,
            }),
            Err(detail) => SampleOrSkip::Skipped(BadSample {
                kind: BadDataKind::UndecodableImage,
                origin,
                key: Some(key),
                detail,
            }),
        }
    }
}

impl Stage for Decoder {
    type In = LoadItem<Sample>;
    type Out = LoadItem<DecodedSample>;

    fn process(&mut self, item: Self::In, out: &mut Emitter<Self::Out>) -> Result<()> {
        out.emit(item.map_sample(|_place, sample| self.decode(sample)))?;
        Ok(())
    }
}
