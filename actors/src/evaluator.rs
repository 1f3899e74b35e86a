//! The evaluator: after an epoch, on OpenCLIP's schedule
//! (`--zeroshot-frequency`, `--val-frequency`, and always after the last
//! epoch), it evaluates the trainer's model and emits the metrics as a
//! [`TrainEvent::Evaluation`] before passing the epoch's end on:
//!
//! - zero-shot top-1 / top-5 on `--imagenet-val` (an ImageFolder; OpenAI's
//!   ImageNet class names when it has 1000 classes, else the folder names)
//!   and `--imagenet-v2`, with the 80 OpenAI prompt templates (or the
//!   templates given);
//! - the validation loss and retrieval metrics on `--val-data`.
//!
//! Images go through OpenCLIP's validation transform; the forward pass runs
//! in eval mode under the training precision's autocast. Other events pass
//! through untouched.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clipflow_core::data::csv_source::CsvDataset;
use clipflow_core::data::dataset_type::DataFormat;
use clipflow_core::data::image_folder::{list_imagenet_v2, ImageFolder, LabelledImage};
use clipflow_core::data::shard_list::ShardList;
use clipflow_core::data::shard_stream::ShardOpener;
use clipflow_core::data::tar_samples::ShardSamples;
use clipflow_core::data::{ImageData, Sample, SourceItem};
use clipflow_core::eval::evaluation_due;
use clipflow_core::eval::imagenet::{imagenet_class_names, openai_imagenet_templates};
use clipflow_core::eval::retrieval::ValidationMetrics;
use clipflow_core::eval::zero_shot::{
    build_zero_shot_classifier, zero_shot_logits, ZeroShotAccuracy, ZeroShotSet,
};
use clipflow_core::model::clip::l2_normalize;
use clipflow_core::model::Clip;
use clipflow_core::shim::AutocastGuard;
use clipflow_core::tokenizer::{tokenize_batch, TextTokenizer};
use clipflow_core::transform::decode_image;
use clipflow_core::transform::ValTransform;
use tch::{Device, Kind, Tensor};

use crate::runtime::{Emitter, Stage, WorkerInfo};
use crate::step_executor::{SharedTrainer, TrainEvent};

/// `--val-data` and how to read it.
#[derive(Debug, Clone)]
pub struct ValidationData {
    pub data: String,
    pub format: DataFormat,
    /// `--csv-separator`, `--csv-img-key`, `--csv-caption-key`.
    pub csv: (String, String, String),
}

/// A zero-shot classification set.
#[derive(Debug, Clone)]
pub struct ZeroShotData {
    pub set: ZeroShotSet,
    pub root: PathBuf,
    /// Class names; `None` uses OpenAI's ImageNet names.
    pub class_names: Option<Vec<String>>,
    /// Prompt templates with `{}` for the class name; `None` uses OpenAI's
    /// 80 ImageNet templates.
    pub templates: Option<Vec<String>>,
}

/// What the evaluator evaluates, when, and how it runs the model.
pub struct EvaluatorConfig {
    pub validation: Option<ValidationData>,
    pub zero_shot: Vec<ZeroShotData>,
    pub val_frequency: u64,
    pub zeroshot_frequency: u64,
    pub epochs: u64,
    pub batch_size: usize,
    pub transform: ValTransform,
    pub tokenizer: Arc<dyn TextTokenizer + Send + Sync>,
    pub context_length: usize,
    pub device: Device,
    pub autocast: Option<Kind>,
    pub input_kind: Kind,
}

/// Evaluates the trainer's model at the end of an epoch when due.
pub struct Evaluator {
    trainer: SharedTrainer,
    config: Arc<EvaluatorConfig>,
}

impl Evaluator {
    pub fn maker(
        trainer: SharedTrainer,
        config: Arc<EvaluatorConfig>,
    ) -> impl Fn(WorkerInfo) -> Result<Evaluator> {
        move |_worker| {
            Ok(Evaluator {
                trainer: trainer.clone(),
                config: Arc::clone(&config),
            })
        }
    }
}

impl Stage for Evaluator {
    type In = TrainEvent;
    type Out = TrainEvent;

    fn process(&mut self, event: TrainEvent, out: &mut Emitter<TrainEvent>) -> Result<()> {
        if let TrainEvent::EpochEnd(plan) = &event {
            let completed_epoch = plan.epoch + 1;
            let trainer = self.trainer.lock()?;
            let metrics = evaluate(&trainer.model, &self.config, completed_epoch)?;
            drop(trainer);
            if !metrics.is_empty() {
                out.emit(TrainEvent::Evaluation {
                    completed_epoch,
                    metrics,
                })?;
            }
        }
        out.emit(event)?;
        Ok(())
    }
}

/// The metrics due after `completed_epoch` epochs, in OpenCLIP's order
/// (zero-shot sets, then validation); empty when nothing is due.
pub fn evaluate(
    model: &Clip,
    config: &EvaluatorConfig,
    completed_epoch: u64,
) -> Result<Vec<(String, f64)>> {
    let _span = tracing::info_span!("evaluate", epoch = completed_epoch).entered();
    let mut metrics = Vec::new();
    if evaluation_due(completed_epoch, config.zeroshot_frequency, config.epochs) {
        for set in &config.zero_shot {
            metrics.extend(zero_shot(model, config, set)?);
        }
    }
    if let Some(validation) = &config.validation {
        if evaluation_due(completed_epoch, config.val_frequency, config.epochs) {
            metrics.extend(validate(model, config, validation, completed_epoch)?);
        }
    }
    Ok(metrics)
}

/// Runs `forward` without gradients under the precision's autocast.
fn no_grad_forward<T>(config: &EvaluatorConfig, forward: impl FnOnce() -> T) -> Result<T> {
    let _autocast = AutocastGuard::when(config.device, config.autocast)?;
    Ok(tch::no_grad(forward))
}

/// Decodes and transforms images into a `[N, 3, H, W]` batch on the device.
fn image_batch(config: &EvaluatorConfig, images: &[(Vec<u8>, String)]) -> Result<Tensor> {
    let tensors = images
        .iter()
        .map(|(bytes, source)| {
            let rgb = decode_image(bytes, source)?;
            Ok(config.transform.apply(&rgb))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::stack(&tensors, 0)
        .to_device(config.device)
        .to_kind(config.input_kind))
}

fn zero_shot(
    model: &Clip,
    config: &EvaluatorConfig,
    data: &ZeroShotData,
) -> Result<Vec<(String, f64)>> {
    let (images, folder_classes) = match data.set {
        ZeroShotSet::ImagenetVal => {
            let folder = ImageFolder::open(&data.root)?;
            (folder.samples, Some(folder.classes))
        }
        ZeroShotSet::ImagenetV2 => (
            list_imagenet_v2(&data.root, imagenet_class_names().len())?,
            None,
        ),
    };
    let class_names: Vec<String> = match (&data.class_names, folder_classes) {
        (Some(names), _) => names.clone(),
        (None, Some(classes)) if classes.len() != imagenet_class_names().len() => classes,
        _ => imagenet_class_names().to_vec(),
    };
    let templates = data
        .templates
        .clone()
        .unwrap_or_else(|| openai_imagenet_templates().to_vec());
    let classifier = no_grad_forward(config, || {
        build_zero_shot_classifier(
            &class_names,
            &templates,
            |texts| tokenize_batch(config.tokenizer.as_ref(), texts, config.context_length),
            |tokens| model.encode_text(&tokens.to_device(config.device)),
            Some(10),
        )
    })??;
    let mut accuracy = ZeroShotAccuracy::new();
    for chunk in images.chunks(config.batch_size.max(1)) {
        let (encoded, targets) = read_labelled(chunk)?;
        let images = image_batch(config, &encoded)?;
        let logits = no_grad_forward(config, || {
            let features = l2_normalize(&model.encode_image(&images, false));
            zero_shot_logits(&features, &classifier)
        })?;
        accuracy.add_batch(&logits, &Tensor::from_slice(&targets))?;
    }
    accuracy.finish(data.set)
}

fn read_labelled(chunk: &[LabelledImage]) -> Result<(Vec<(Vec<u8>, String)>, Vec<i64>)> {
    let mut encoded = Vec::with_capacity(chunk.len());
    let mut targets = Vec::with_capacity(chunk.len());
    for image in chunk {
        let bytes = std::fs::read(&image.path)
            .with_context(|| format!("reading {}", image.path.display()))?;
        encoded.push((bytes, image.path.display().to_string()));
        targets.push(image.class_index as i64);
    }
    Ok((encoded, targets))
}

/// The samples of `--val-data` in file order: every shard in turn, or
/// every row of the CSV table.
fn validation_samples(data: &ValidationData) -> Result<Box<dyn Iterator<Item = SourceItem>>> {
    match data.format {
        DataFormat::WebDataset => {
            let shards = ShardList::expand(&data.data, None)
                .with_context(|| format!("--val-data {}", data.data))?;
            let urls: Vec<String> = shards.urls().to_vec();
            Ok(Box::new(ShardSamples::new(
                urls.into_iter(),
                Arc::new(ShardOpener::new()),
            )))
        }
        DataFormat::Csv => {
            let (separator, image_key, caption_key) = &data.csv;
            let table = CsvDataset::load(Path::new(&data.data), separator, image_key, caption_key)
                .with_context(|| format!("--val-data {}", data.data))?;
            let order: Vec<usize> = (0..table.len()).collect();
            let samples: Vec<SourceItem> = table.samples(order).collect();
            Ok(Box::new(samples.into_iter()))
        }
        DataFormat::Synthetic => anyhow::bail!("--val-data cannot be synthetic"),
    }
}

fn validate(
    model: &Clip,
    config: &EvaluatorConfig,
    data: &ValidationData,
    completed_epoch: u64,
) -> Result<Vec<(String, f64)>> {
    let mut metrics = ValidationMetrics::new();
    let batch_size = config.batch_size.max(1);
    let mut batch: Vec<Sample> = Vec::with_capacity(batch_size);
    for item in validation_samples(data)? {
        match item {
            SourceItem::Sample(sample) => batch.push(sample),
            SourceItem::Skipped(skip) => tracing::warn!("--val-data: skipped {skip:?}"),
        }
        if batch.len() == batch_size {
            validate_batch(model, config, &mut metrics, std::mem::take(&mut batch))?;
        }
    }
    if !batch.is_empty() {
        validate_batch(model, config, &mut metrics, batch)?;
    }
    metrics.finish(completed_epoch)
}

fn validate_batch(
    model: &Clip,
    config: &EvaluatorConfig,
    metrics: &mut ValidationMetrics,
    samples: Vec<Sample>,
) -> Result<()> {
    let mut encoded = Vec::with_capacity(samples.len());
    let mut captions = Vec::with_capacity(samples.len());
    for sample in samples {
        let source = format!("{} (sample {})", sample.origin, sample.key);
        let bytes = match sample.image {
            ImageData::Encoded { bytes, .. } => bytes,
            ImageData::Pixels { .. } => {
                anyhow::bail!("{source}: validation images must be encoded")
            }
        };
        encoded.push((bytes, source));
        captions.push(sample.caption);
    }
    let images = image_batch(config, &encoded)?;
    let texts = tokenize_batch(config.tokenizer.as_ref(), &captions, config.context_length)
        .to_device(config.device);
    no_grad_forward(config, || {
        let out = model.forward_t(&images, &texts, false);
        metrics.add_batch(&out.image_features, &out.text_features, &out.logit_scale)
    })?
}
