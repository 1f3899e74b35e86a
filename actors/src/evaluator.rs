//! The evaluator: after an epoch, on OpenCLIP's schedule
//! (`--zeroshot-frequency`, `--val-frequency`, and always after the last
//! epoch), it evaluates the model of the epoch's snapshot (a model of its
//! own, built from the config and given the snapshot's weights) and emits
//! the validation progress and the metrics ([`TrainEvent::Evaluation`]) for
//! the logger:
//!
//! - zero-shot top-1 / top-5 on `--imagenet-val` (an ImageFolder; OpenAI's
//!   ImageNet class names when it has 1000 classes, else the folder names)
//!   and `--imagenet-v2`, with the 80 OpenAI prompt templates (or the
//!   templates given);
//! - the validation loss and retrieval metrics on `--val-data`, whose
//!   batches come from the graph's validation path (validation reader,
//!   decoder, augmenter in validation mode, batcher) through the
//!   evaluator's side input, a pass of them per validation.
//!
//! Zero-shot images go through OpenCLIP's validation transform on
//! `loading_threads` threads (`--workers`, as OpenCLIP's evaluation
//! DataLoader uses), one batch ahead of the model and in file order;
//! validation batches keep the order of the data. So the batches (and the
//! validation loss, a mean over batches) do not depend on the thread count.
//! The forward pass runs in eval mode under the training precision's
//! autocast. It takes the step executor's events beside the checkpointer
//! and the logger (a fan-out) and emits only its own.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clipflow_core::data::image_folder::{list_imagenet_v2, ImageFolder, LabelledImage};
use clipflow_core::eval::evaluation_due;
use clipflow_core::eval::imagenet::{imagenet_class_names, openai_imagenet_templates};
use clipflow_core::eval::retrieval::ValidationMetrics;
use clipflow_core::eval::zero_shot::{
    build_zero_shot_classifier, zero_shot_logits, ZeroShotAccuracy, ZeroShotSet,
};
use clipflow_core::model::clip::l2_normalize;
use clipflow_core::model::{Clip, ModelConfig};
use clipflow_core::shim::AutocastGuard;
use clipflow_core::tokenizer::{tokenize_batch, TextTokenizer};
use clipflow_core::train::snapshot::TrainerSnapshot;
use clipflow_core::transform::decode_image;
use clipflow_core::transform::ValTransform;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::batcher::BatchItem;
use crate::runtime::{Emitter, SideInput, Stage, WorkerInfo};
use crate::train_events::{EvalProgress, TrainEvent};

/// `--val-data`, which the validation path of the graph reads.
#[derive(Debug, Clone)]
pub struct ValidationData {
    /// `--val-data`, as given.
    pub data: String,
    /// The size OpenCLIP's progress lines show: `--val-num-samples` for
    /// WebDataset validation data (0 when absent), a CSV table's length.
    /// The whole set is evaluated either way.
    pub samples_per_val: u64,
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
    /// Threads that decode and transform images while the model runs.
    pub loading_threads: usize,
    pub transform: ValTransform,
    pub tokenizer: Arc<dyn TextTokenizer + Send + Sync>,
    pub context_length: usize,
    pub device: Device,
    pub autocast: Option<Kind>,
    pub input_kind: Kind,
    /// The model's config, to build the model of each epoch's snapshot.
    pub model: ModelConfig,
}

/// OpenCLIP logs validation progress every this many batches.
const PROGRESS_EVERY_BATCHES: usize = 100;

/// Evaluates the model of each epoch's snapshot when due.
pub struct Evaluator {
    config: Arc<EvaluatorConfig>,
    /// The validation path's batches, a pass of them per validation.
    validation: Option<SideInput<BatchItem>>,
}

impl Evaluator {
    pub fn maker(
        config: Arc<EvaluatorConfig>,
    ) -> impl Fn(WorkerInfo, Option<SideInput<BatchItem>>) -> Result<Evaluator> {
        move |_worker, validation| {
            Ok(Evaluator {
                config: Arc::clone(&config),
                validation,
            })
        }
    }
}

impl EvaluatorConfig {
    /// The evaluations that validate from the end of `first_epoch` to the
    /// end of the run: the passes the validation path reads.
    pub fn validation_passes(&self, first_epoch: u64) -> u64 {
        (first_epoch + 1..=self.epochs)
            .filter(|&completed| self.validates_after(completed))
            .count() as u64
    }

    /// Whether `--val-data` is evaluated after `completed_epoch` epochs: the
    /// one rule of the validation path's passes and of the evaluations that
    /// take them.
    pub fn validates_after(&self, completed_epoch: u64) -> bool {
        self.validation.is_some()
            && evaluation_due(completed_epoch, self.val_frequency, self.epochs)
    }

    /// Whether anything is due after `completed_epoch` epochs.
    pub fn due(&self, completed_epoch: u64) -> bool {
        let zero_shot = !self.zero_shot.is_empty()
            && evaluation_due(completed_epoch, self.zeroshot_frequency, self.epochs);
        zero_shot || self.validates_after(completed_epoch)
    }
}

/// The model of `snapshot` on the evaluation device: built from the model
/// config, then every variable given the snapshot's tensor (dtype included,
/// so a `pure_bf16` model evaluates in bfloat16 as it trains).
fn model_of(config: &EvaluatorConfig, snapshot: &TrainerSnapshot) -> Result<(VarStore, Clip)> {
    let vs = VarStore::new(config.device);
    let model = Clip::new(&vs.root(), &config.model)?;
    for (name, mut variable) in vs.variables() {
        let index = snapshot
            .state_dict
            .binary_search_by(|(key, _)| key.as_str().cmp(&name))
            .map_err(|_| anyhow::anyhow!("the epoch's snapshot has no {name}"))?;
        let tensor = &snapshot.state_dict[index].1;
        tch::no_grad(|| variable.set_data(&tensor.to_device(config.device)));
    }
    Ok((vs, model))
}

impl Stage for Evaluator {
    type In = TrainEvent;
    type Out = TrainEvent;

    fn process(&mut self, event: TrainEvent, out: &mut Emitter<TrainEvent>) -> Result<()> {
        if let TrainEvent::EpochEnd(end) = &event {
            let completed_epoch = end.plan.epoch + 1;
            if !self.config.due(completed_epoch) {
                return Ok(());
            }
            let snapshot = end
                .snapshot
                .as_ref()
                .context("the epoch's end came without a snapshot of the weights to evaluate")?;
            let (_vs, model) = model_of(&self.config, snapshot)?;
            let mut progress = Vec::new();
            let validation = self.validation.clone();
            let stopping: &Emitter<TrainEvent> = out;
            let mut batches = || validation.as_ref().and_then(|side| side.next(stopping));
            let metrics = evaluate(
                &model,
                &self.config,
                completed_epoch,
                &mut |p| progress.push(p),
                &mut batches,
            )?;
            for line in progress {
                out.emit(TrainEvent::EvaluationProgress(line))?;
            }
            if !metrics.is_empty() {
                out.emit(TrainEvent::Evaluation {
                    completed_epoch,
                    metrics,
                })?;
            }
        }
        Ok(())
    }
}

/// The metrics due after `completed_epoch` epochs, in OpenCLIP's order
/// (zero-shot sets, then validation); empty when nothing is due.
/// `progress` gets the validation pass's running loss as OpenCLIP logs it;
/// `validation_batches` gives the next batch of the validation pass, its
/// end, or `None` when the validation path has ended.
pub fn evaluate(
    model: &Clip,
    config: &EvaluatorConfig,
    completed_epoch: u64,
    progress: &mut dyn FnMut(EvalProgress),
    validation_batches: &mut dyn FnMut() -> Option<BatchItem>,
) -> Result<Vec<(String, f64)>> {
    let _span = tracing::info_span!("evaluate", epoch = completed_epoch).entered();
    let mut metrics = Vec::new();
    if evaluation_due(completed_epoch, config.zeroshot_frequency, config.epochs) {
        for set in &config.zero_shot {
            metrics.extend(zero_shot(model, config, set)?);
        }
    }
    if let Some(validation) = config
        .validation
        .as_ref()
        .filter(|_| config.validates_after(completed_epoch))
    {
        metrics.extend(validate(
            model,
            config,
            validation,
            completed_epoch,
            progress,
            validation_batches,
        )?);
    }
    Ok(metrics)
}

/// Runs `forward` without gradients under the precision's autocast.
fn no_grad_forward<T>(config: &EvaluatorConfig, forward: impl FnOnce() -> T) -> Result<T> {
    let _autocast = AutocastGuard::when(config.device, config.autocast)?;
    Ok(tch::no_grad(forward))
}

/// Batches of encoded images (bytes, and where they came from for errors)
/// with what else each batch carries (labels, captions).
type EncodedBatch<T> = (Vec<(Vec<u8>, String)>, T);

/// Batches decoded and transformed ahead of the model.
const PREFETCHED_BATCHES: usize = 2;

/// Feeds `consume` each batch of `batches` as a `[N, 3, H, W]` image tensor
/// on the device, in order. A producer thread decodes and transforms the
/// next batches on `config.loading_threads` threads meanwhile, at most
/// [`PREFETCHED_BATCHES`] ahead; the first error, either side's, ends both.
fn with_image_batches<T: Send>(
    config: &EvaluatorConfig,
    batches: impl Iterator<Item = Result<EncodedBatch<T>>> + Send,
    mut consume: impl FnMut(Tensor, T) -> Result<()>,
) -> Result<()> {
    std::thread::scope(|scope| {
        let (sender, receiver) = crossbeam_channel::bounded(PREFETCHED_BATCHES);
        scope.spawn(move || {
            for batch in batches {
                let decoded = batch
                    .and_then(|(images, extra)| Ok((decode_in_parallel(config, &images)?, extra)));
                let failed = decoded.is_err();
                if sender.send(decoded).is_err() || failed {
                    break;
                }
            }
        });
        // Returning early drops the receiver, which stops the producer.
        for decoded in receiver {
            let (images, extra) = decoded?;
            let images = images.to_device(config.device).to_kind(config.input_kind);
            consume(images, extra)?;
        }
        Ok(())
    })
}

/// Decodes and transforms `images` on up to `config.loading_threads`
/// threads, each a contiguous share; stacks them in order on the CPU.
fn decode_in_parallel(config: &EvaluatorConfig, images: &[(Vec<u8>, String)]) -> Result<Tensor> {
    let share = images.len().div_ceil(config.loading_threads.max(1)).max(1);
    let tensors: Vec<Tensor> = std::thread::scope(|scope| {
        let workers: Vec<_> = images
            .chunks(share)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|(bytes, source)| {
                            Ok(config.transform.apply(&decode_image(bytes, source)?))
                        })
                        .collect::<Result<Vec<Tensor>>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("an image decoding thread panicked"))
            .collect::<Result<Vec<Vec<Tensor>>>>()
    })?
    .into_iter()
    .flatten()
    .collect();
    Ok(Tensor::stack(&tensors, 0))
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
    let batches = images.chunks(config.batch_size.max(1)).map(read_labelled);
    with_image_batches(config, batches, |images, targets| {
        let logits = no_grad_forward(config, || {
            let features = l2_normalize(&model.encode_image(&images, false)?);
            anyhow::Ok(zero_shot_logits(&features, &classifier))
        })??;
        accuracy.add_batch(&logits, &Tensor::from_slice(&targets))
    })?;
    accuracy.finish(data.set)
}

fn read_labelled(chunk: &[LabelledImage]) -> Result<EncodedBatch<Vec<i64>>> {
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

fn validate(
    model: &Clip,
    config: &EvaluatorConfig,
    data: &ValidationData,
    completed_epoch: u64,
    progress: &mut dyn FnMut(EvalProgress),
    batches: &mut dyn FnMut() -> Option<BatchItem>,
) -> Result<Vec<(String, f64)>> {
    let mut metrics = ValidationMetrics::new();
    let mut batch_index = 0;
    loop {
        let batch = match batches() {
            Some(BatchItem::Batch(batch)) => batch,
            Some(BatchItem::EpochEnd { .. }) => break,
            None => anyhow::bail!(
                "--val-data {}: the validation path ended before this evaluation's pass \
                 (its reader reads one pass for each evaluation that validates)",
                data.data
            ),
        };
        let images = batch
            .images
            .to_device(config.device)
            .to_kind(config.input_kind);
        let texts = batch.texts.to_device(config.device);
        no_grad_forward(config, || {
            let out = model.forward_t(&images, &texts, false)?;
            metrics.add_batch(&out.image_features, &out.text_features, &out.logit_scale)?;
            if let Some(caption) = &out.caption {
                metrics.add_caption_batch(&caption.logits, &caption.labels);
            }
            anyhow::Ok(())
        })??;
        if batch_index % PROGRESS_EVERY_BATCHES == 0 {
            progress(EvalProgress {
                epoch: completed_epoch,
                num_samples: metrics.num_samples() as u64,
                samples_per_val: data.samples_per_val,
                clip_loss: metrics.running_loss().unwrap_or(f64::NAN),
                generative_loss: metrics.running_generative_loss(),
            });
        }
        batch_index += 1;
    }
    metrics.finish(completed_epoch)
}
