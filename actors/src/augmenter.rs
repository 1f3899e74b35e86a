//! The augmenter: a decoded sample to what the model takes, namely the
//! transformed image (8-bit pixels and the normalisation that turns them
//! into `[3, H, W]` f32 values, which the batcher applies as it writes them
//! into the batch) and the caption as `context_length` token ids
//! (the model's tokenizer: CLIP's BPE, or the HuggingFace tokenizer its
//! config names, found in the hub cache of `cache_dir`), with the model's
//! image size and context length (or those `--force-image-size` and
//! `--force-context-length` give it) and preprocessing settings
//! (`--image-mean`, `--image-std`, `--image-interpolation`,
//! `--image-resize-mode`, `--aug-cfg`).
//!
//! `mode = "train"` (the default) applies OpenCLIP's training transform
//! (random resized crop, colour jitter and grey scale as `--aug-cfg` asks);
//! `mode = "val"` its validation transform (resize, centre crop). As in
//! OpenCLIP, the training transform always resizes with bicubic filtering
//! and ignores `--image-interpolation` and `--image-resize-mode` (both are
//! still checked).
//!
//! Randomness: each sample's draws come from a ChaCha stream of its own,
//! seeded from `seed`, its epoch, the rank and its place in the epoch's
//! stream, so a sample gets the same augmentation whichever worker takes it
//! and however many there are. An image the training transform cannot crop
//! (an empty one) becomes a skip naming the sample.
//!
//! The per-image work uses no libtorch operations (plain pixel buffers in
//! and out), so loader threads never enter libtorch's intra-op thread pool
//! and need no `tch::set_num_threads`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use clipflow_core::hf_hub::HubCache;
use clipflow_core::model::{ImageSize, ModelConfig, ModelOverrides};
use clipflow_core::tokenizer::{self, TextTokenizer};
use clipflow_core::transform::{
    AugmentationCfg, Interpolation, Normalization, ResizeMode, RgbImage, TrainTransform,
    ValTransform, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::bad_data::{BadDataKind, BadSample, SampleOrSkip};
use crate::decoder::DecodedSample;
use crate::load_stream::{LoadItem, Place};
use crate::runtime::{Emitter, Stage, WorkerInfo};
use crate::topology::Settings;

/// A sample ready to be batched.
///
/// The image stays 8-bit until the batcher writes it into its batch (a
/// quarter of the bytes of f32 values in the queues, and no per-sample f32
/// buffer to allocate and copy).
#[derive(Debug, Clone, PartialEq)]
pub struct AugmentedSample {
    pub key: String,
    /// The transformed image, before normalisation.
    pub pixels: RgbImage,
    /// What turns `pixels` into the model's input values.
    pub normalization: Arc<Normalization>,
    /// Exactly `context_length` token ids.
    pub tokens: Vec<i64>,
}

impl AugmentedSample {
    /// (height, width) of the image.
    pub fn image_size(&self) -> (usize, usize) {
        (self.pixels.height() as usize, self.pixels.width() as usize)
    }

    /// How many f32 values the normalised image has: `3 * height * width`.
    pub fn image_values(&self) -> usize {
        let (height, width) = self.image_size();
        3 * height * width
    }

    /// Writes the normalised image, channels first (`[3, height, width]`
    /// in row-major order), into `out`, which holds exactly
    /// [`image_values`](Self::image_values) values.
    pub fn write_image(&self, out: &mut [f32]) {
        self.normalization.write_channels_first(&self.pixels, out);
    }

    /// The normalised image as its own buffer, channels first.
    pub fn image(&self) -> Vec<f32> {
        self.normalization.channels_first(&self.pixels)
    }
}

/// Which of OpenCLIP's image transforms an augmenter applies.
#[derive(Clone, Debug, PartialEq)]
pub enum ImageTransform {
    /// The training transform: random crop, jitter, grey scale.
    Train(TrainTransform),
    /// The validation transform: resize, centre crop (or pad).
    Val(ValTransform),
}

/// What an augmenter does to each sample; shared by its workers.
pub struct AugmenterConfig {
    pub transform: ImageTransform,
    /// Per-channel normalisation applied after the transform.
    pub normalization: Arc<Normalization>,
    pub tokenizer: Arc<dyn TextTokenizer + Send + Sync>,
    pub context_length: usize,
    /// Seed of the training transform's random draws.
    pub seed: u64,
    /// The rank whose stream this augmenter transforms (ranks draw apart).
    pub rank: u64,
}

/// Offset of the augmenters' random streams, away from those of the shard
/// readers (`clipflow_core::data`), which use the high 16 bits for their
/// purposes 1 to 4.
const AUGMENTATION_STREAM: u64 = 0x100 << 48;

impl AugmenterConfig {
    /// Reads the settings of an `augmenter` component: `mode` (`train`, the
    /// default, or `val`), `model` (image size, context length),
    /// `force_image_size` (one size or height and width) and
    /// `force_context_length` (0: the model's), `cache_dir`, `image_mean`, `image_std` (one value or three, separated by spaces or
    /// commas), `image_interpolation`, `image_resize_mode`, `aug_cfg`
    /// (`key=value` items as `--aug-cfg` takes them, separated by spaces;
    /// train mode only), `seed`, `rank`. Empty values keep the defaults.
    pub fn from_settings(settings: &Settings) -> Result<Self> {
        let model = settings
            .non_empty_string("model")?
            .unwrap_or_else(|| "RN50".into());
        let overrides = ModelOverrides {
            force_image_size: settings.parsed("force_image_size", parse_image_size)?,
            force_context_length: settings
                .u64("force_context_length")?
                .filter(|&length| length > 0)
                .map(|length| length as i64),
            ..ModelOverrides::default()
        };
        let config = ModelConfig::by_name(&model, &overrides)?;
        let cache_dir = settings.non_empty_string("cache_dir")?.map(PathBuf::from);
        let hub = HubCache::locate(cache_dir.as_deref());
        let tokenizer = tokenizer::for_model(&model, &config.text_cfg, &hub, None)?;
        let (height, width) = config.vision_cfg.image_size.height_width();
        let image_size = (height as u32, width as u32);
        let mean = channel_values(settings, "image_mean")?.unwrap_or(OPENAI_DATASET_MEAN);
        let std = channel_values(settings, "image_std")?.unwrap_or(OPENAI_DATASET_STD);
        ensure!(
            std.iter().all(|&s| s > 0.0),
            "setting 'image_std': every value must be positive, got {std:?}"
        );
        let interpolation = settings
            .parsed("image_interpolation", str::parse::<Interpolation>)?
            .unwrap_or(Interpolation::Bicubic);
        let resize_mode = settings
            .parsed("image_resize_mode", str::parse::<ResizeMode>)?
            .unwrap_or(ResizeMode::Shortest);
        let is_train = settings
            .parsed("mode", |mode| match mode {
                "train" => Ok(true),
                "val" => Ok(false),
                other => bail!("expected \"train\" or \"val\", got {other:?}"),
            })?
            .unwrap_or(true);
        let transform = if is_train {
            let train = |augmentation: &AugmentationCfg| {
                TrainTransform::new(image_size, mean, std, augmentation)
            };
            let configured =
                settings.parsed("aug_cfg", |text| train(&AugmentationCfg::parse(text)?))?;
            match configured {
                Some(transform) => ImageTransform::Train(transform),
                None => ImageTransform::Train(train(&AugmentationCfg::default())?),
            }
        } else {
            if settings.non_empty_string("aug_cfg")?.is_some() {
                bail!(
                    "setting 'aug_cfg': the validation transform has no augmentations; \
                     remove aug_cfg or use mode = \"train\""
                );
            }
            ImageTransform::Val(ValTransform::new(
                image_size,
                mean,
                std,
                interpolation,
                resize_mode,
            ))
        };
        Ok(AugmenterConfig {
            transform,
            normalization: Arc::new(Normalization::new(mean, std)),
            tokenizer,
            context_length: config.text_cfg.context_length as usize,
            seed: settings.u64("seed")?.unwrap_or(0),
            rank: settings.u64("rank")?.unwrap_or(0),
        })
    }

    /// The random stream of the sample at `place`: seeded with `seed +
    /// epoch` (as OpenCLIP seeds its per-epoch randomness), on a stream
    /// chosen by the rank and the sample's index.
    pub fn sample_rng(&self, place: Place) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed.wrapping_add(place.epoch));
        rng.set_stream(AUGMENTATION_STREAM | (self.rank << 32) | place.index);
        rng
    }
}

/// `force_image_size`: one size for both sides, or height and width.
fn parse_image_size(text: &str) -> Result<ImageSize> {
    let sides = text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|side| !side.is_empty())
        .map(|side| {
            side.parse::<i64>()
                .ok()
                .filter(|&side| side > 0)
                .with_context(|| format!("{side:?} is not a positive whole number"))
        })
        .collect::<Result<Vec<i64>>>()?;
    match sides.as_slice() {
        [side] => Ok(ImageSize::Square(*side)),
        [height, width] => Ok(ImageSize::HeightWidth([*height, *width])),
        other => bail!("expected one or two sizes, got {}", other.len()),
    }
}

/// `image_mean` / `image_std`: one value for all channels or three.
fn channel_values(settings: &Settings, key: &str) -> Result<Option<[f64; 3]>> {
    let Some(text) = settings.non_empty_string(key)? else {
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

/// Transforms images and tokenizes captions; keeps no state of its own, so
/// any number of workers can share the work and a failed one can restart.
pub struct Augmenter {
    config: Arc<AugmenterConfig>,
}

impl Augmenter {
    /// A function that builds each worker of one augmenter component.
    pub fn maker(config: AugmenterConfig) -> impl Fn(WorkerInfo) -> Result<Augmenter> {
        let config = Arc::new(config);
        move |_worker| Ok(Augmenter::new(Arc::clone(&config)))
    }

    pub fn new(config: Arc<AugmenterConfig>) -> Self {
        Augmenter { config }
    }

    /// The model's inputs for the decoded sample at `place`; an image the
    /// training transform cannot crop (an empty one) is an error naming the
    /// sample.
    pub fn augment(&self, place: Place, sample: DecodedSample) -> Result<AugmentedSample> {
        let pixels = match &self.config.transform {
            ImageTransform::Val(transform) => transform.resize_and_crop(&sample.image),
            ImageTransform::Train(transform) => {
                let (width, height) = sample.image.dimensions();
                let draw = transform.sample(width, height, &mut self.config.sample_rng(place));
                transform
                    .augment_pixels(&sample.image, &draw)
                    .with_context(|| {
                        format!("augmenting sample {:?} of {}", sample.key, sample.origin)
                    })?
            }
        };
        Ok(AugmentedSample {
            pixels,
            normalization: Arc::clone(&self.config.normalization),
            tokens: self
                .config
                .tokenizer
                .encode(&sample.caption, self.config.context_length),
            key: sample.key,
        })
    }
}

impl Stage for Augmenter {
    type In = LoadItem<DecodedSample>;
    type Out = LoadItem<AugmentedSample>;

    fn process(&mut self, item: Self::In, out: &mut Emitter<Self::Out>) -> Result<()> {
        let augmented = item.map_sample(|place, sample| {
            let (key, origin) = (sample.key.clone(), sample.origin.clone());
            match self.augment(place, sample) {
                Ok(augmented) => SampleOrSkip::Sample(augmented),
                Err(error) => SampleOrSkip::Skipped(BadSample {
                    kind: BadDataKind::UntransformableImage,
                    origin,
                    key: Some(key),
                    detail: format!("{error:#}"),
                }),
            }
        });
        out.emit(augmented)?;
        Ok(())
    }
}
