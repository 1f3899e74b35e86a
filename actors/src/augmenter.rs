//! The augmenter: a decoded sample to what the model takes, namely the
//! transformed, normalised image as `[3, H, W]` f32 values and the caption
//! as `context_length` token ids (OpenCLIP's CLIP BPE tokenizer), with the
//! model's image size, context length and preprocessing settings
//! (`--image-mean`, `--image-std`, `--image-interpolation`,
//! `--image-resize-mode`, `--aug-cfg`).
//!
//! SWITCH POINT: the image transform is OpenCLIP's validation transform
//! (resize, centre crop, normalise). OpenCLIP's training transform (random
//! resized crop, jitter, grey scale, `--aug-cfg`) replaces it in
//! [`ImageTransform`] once `clipflow_core::transform` provides it; until
//! then a non-empty `aug_cfg` is refused rather than ignored.

use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use clipflow_core::model::{ModelConfig, ModelOverrides};
use clipflow_core::tokenizer::{ClipTokenizer, TextTokenizer};
use clipflow_core::transform::{
    Interpolation, ResizeMode, ValTransform, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD,
};

use crate::bad_data::SampleOrSkip;
use crate::decoder::DecodedSample;
use crate::runtime::{Emitter, Stage, WorkerInfo};
use crate::text_settings::non_empty;
use crate::topology::Settings;

/// A sample ready to be batched.
#[derive(Debug, Clone, PartialEq)]
pub struct AugmentedSample {
    pub key: String,
    /// The transformed image, normalised, channels first: `[3, height,
    /// width]` values in row-major order.
    pub image: Vec<f32>,
    /// (height, width) of `image`.
    pub image_size: (usize, usize),
    /// Exactly `context_length` token ids.
    pub tokens: Vec<i64>,
}

/// The image transform the augmenter applies (see the module's SWITCH POINT).
pub type ImageTransform = ValTransform;

/// What an augmenter does to each sample; shared by its workers.
pub struct AugmenterConfig {
    pub transform: ImageTransform,
    pub tokenizer: Arc<ClipTokenizer>,
    pub context_length: usize,
}

impl AugmenterConfig {
    /// Reads the settings of an `augmenter` component: `model` (image size,
    /// context length), `image_mean`, `image_std` (one value or three,
    /// separated by spaces or commas), `image_interpolation`,
    /// `image_resize_mode`, `aug_cfg`. Empty values keep the defaults.
    pub fn from_settings(settings: &Settings) -> Result<Self> {
        let model = non_empty(settings, "model")?.unwrap_or_else(|| "RN50".into());
        let config = ModelConfig::by_name(&model, &ModelOverrides::default())?;
        if config.text_cfg.hf_tokenizer_name.is_some() {
            bail!("--model {model} uses a HuggingFace tokenizer, which the augmenter does not load yet");
        }
        let (height, width) = config.vision_cfg.image_size.height_width();
        let mean = channel_values(settings, "image_mean")?.unwrap_or(OPENAI_DATASET_MEAN);
        let std = channel_values(settings, "image_std")?.unwrap_or(OPENAI_DATASET_STD);
        ensure!(
            std.iter().all(|&s| s > 0.0),
            "setting 'image_std': every value must be positive, got {std:?}"
        );
        let interpolation: Interpolation = non_empty(settings, "image_interpolation")?
            .as_deref()
            .unwrap_or("bicubic")
            .parse()
            .context("setting 'image_interpolation'")?;
        let resize_mode: ResizeMode = non_empty(settings, "image_resize_mode")?
            .as_deref()
            .unwrap_or("shortest")
            .parse()
            .context("setting 'image_resize_mode'")?;
        if let Some(aug_cfg) = non_empty(settings, "aug_cfg")? {
            bail!(
                "--aug-cfg {aug_cfg:?}: the training augmentations are not wired into the \
                 augmenter yet (it applies OpenCLIP's validation transform); drop --aug-cfg"
            );
        }
        Ok(AugmenterConfig {
            transform: ValTransform::new(
                (height as u32, width as u32),
                mean,
                std,
                interpolation,
                resize_mode,
            ),
            tokenizer: Arc::new(ClipTokenizer::new()?),
            context_length: config.text_cfg.context_length as usize,
        })
    }
}

/// `image_mean` / `image_std`: one value for all channels or three.
fn channel_values(settings: &Settings, key: &str) -> Result<Option<[f64; 3]>> {
    let Some(text) = non_empty(settings, key)? else {
        return Ok(None);
    };
    let values = text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|part| !part.is_empty())
        .map(str::parse::<f64>)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("setting '{key}': {text:?} is not a list of numbers"))?;
    match values[..] {
        [all] => Ok(Some([all; 3])),
        [r, g, b] => Ok(Some([r, g, b])),
        _ => bail!(
            "setting '{key}': give one value or three (R G B), got {}",
            values.len()
        ),
    }
}

/// The values of `clipflow_core::transform::to_normalized_tensor` as a plain
/// buffer the batcher copies straight into its batch.
pub use clipflow_core::transform::normalized_channels_first;

/// Transforms images and tokenizes captions; keeps no state between samples.
pub struct Augmenter {
    config: Arc<AugmenterConfig>,
}

impl Augmenter {
    /// A function that builds each worker of one augmenter component.
    pub fn maker(config: AugmenterConfig) -> impl Fn(WorkerInfo) -> Result<Augmenter> {
        let config = Arc::new(config);
        move |_worker| {
            Ok(Augmenter {
                config: Arc::clone(&config),
            })
        }
    }

    /// The model's inputs for one decoded sample.
    pub fn augment(&self, sample: DecodedSample) -> AugmentedSample {
        let transform = &self.config.transform;
        let pixels = transform.resize_and_crop(&sample.image);
        AugmentedSample {
            image: normalized_channels_first(&pixels, transform.mean, transform.std),
            image_size: (pixels.height() as usize, pixels.width() as usize),
            tokens: self
                .config
                .tokenizer
                .encode(&sample.caption, self.config.context_length),
            key: sample.key,
        }
    }
}

impl Stage for Augmenter {
    type In = SampleOrSkip<DecodedSample>;
    type Out = SampleOrSkip<AugmentedSample>;

    fn process(&mut self, item: Self::In, out: &mut Emitter<Self::Out>) -> Result<()> {
        let augmented = match item {
            SampleOrSkip::Sample(sample) => SampleOrSkip::Sample(self.augment(sample)),
            SampleOrSkip::Skipped(bad) => SampleOrSkip::Skipped(bad),
        };
        out.emit(augmented)?;
        Ok(())
    }
}
