//! Zero-shot classification, as OpenCLIP's `build_zero_shot_classifier` and
//! `open_clip_train.zero_shot` compute it.
//!
//! The classifier has one column per class: every prompt template filled with
//! the class name, encoded by the text tower, L2-normalised, averaged over the
//! templates and normalised again. An image's logits are
//! `100 * image_features @ classifier`, and accuracy counts an image as right
//! at k when its class is among `topk`'s first k indices (ties broken as
//! libtorch's `topk` breaks them), divided by the number of images.
//!
//! The model is reached only through closures, so any text tower works.

use anyhow::{bail, ensure, Result};
use tch::{Kind, Tensor};

use super::imagenet::fill_template;
use crate::model::clip::l2_normalize;

/// How many classes OpenCLIP's training run encodes per text batch when it
/// builds the ImageNet classifier.
pub const OPEN_CLIP_CLASSES_PER_BATCH: usize = 10;

/// The scale OpenCLIP multiplies zero-shot similarities by.
const ZERO_SHOT_LOGIT_SCALE: f64 = 100.0;

/// Builds the `[embed_dim, num_classes]` classifier for `class_names`.
///
/// `tokenize` turns prompts into the text tower's input; `encode_text` runs
/// the text tower and returns features that are *not* yet normalised.
/// Classes are encoded `classes_per_batch` at a time (all at once for `None`
/// or `Some(0)`), each batch's prompts class-major: every template for the
/// first class, then for the next.
pub fn build_zero_shot_classifier<C: AsRef<str>, T: AsRef<str>>(
    class_names: &[C],
    templates: &[T],
    tokenize: impl Fn(&[String]) -> Tensor,
    encode_text: impl Fn(&Tensor) -> Tensor,
    classes_per_batch: Option<usize>,
) -> Result<Tensor> {
    ensure!(
        !class_names.is_empty(),
        "zero-shot classification needs at least one class name"
    );
    ensure!(
        !templates.is_empty(),
        "zero-shot classification needs at least one prompt template"
    );
    let num_templates = templates.len() as i64;
    let batch_len = classes_per_batch
        .filter(|&size| size > 0)
        .unwrap_or(class_names.len());
    let columns = tch::no_grad(|| {
        class_names
            .chunks(batch_len)
            .map(|batch| {
                let prompts: Vec<String> = batch
                    .iter()
                    .flat_map(|class| {
                        templates
                            .iter()
                            .map(|template| fill_template(template.as_ref(), class.as_ref()))
                    })
                    .collect();
                let features = l2_normalize(&encode_text(&tokenize(&prompts)));
                let per_class = features
                    .reshape([batch.len() as i64, num_templates, -1])
                    .mean_dim(1, false, None::<Kind>);
                let norm = per_class.norm_scalaropt_dim(2, 1, true);
                (per_class / norm).tr()
            })
            .collect::<Vec<_>>()
    });
    Ok(Tensor::cat(&columns, 1))
}

/// `100 * image_features @ classifier`: [n, num_classes] logits for
/// L2-normalised image features.
pub fn zero_shot_logits(image_features: &Tensor, classifier: &Tensor) -> Tensor {
    (image_features * ZERO_SHOT_LOGIT_SCALE).matmul(classifier)
}

/// The datasets OpenCLIP evaluates zero-shot, which name its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroShotSet {
    /// `--imagenet-val`: an ImageFolder of the ImageNet validation set.
    ImagenetVal,
    /// `--imagenet-v2`: ImageNetV2 matched-frequency.
    ImagenetV2,
}

impl ZeroShotSet {
    /// What OpenCLIP's metric names start with, before `-top1` / `-top5`.
    pub fn metric_prefix(self) -> &'static str {
        match self {
            Self::ImagenetVal => "imagenet-zeroshot-val",
            Self::ImagenetV2 => "imagenetv2-zeroshot-val",
        }
    }
}

/// Top-1 and top-5 accuracy over batches of logits.
#[derive(Debug, Default)]
pub struct ZeroShotAccuracy {
    top1_hits: f64,
    top5_hits: f64,
    images: f64,
}

impl ZeroShotAccuracy {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one batch: `logits` [n, num_classes] and the true class
    /// indices `targets` [n]. With fewer than 5 classes, top-5 counts the
    /// top `num_classes` (OpenCLIP fails there instead).
    pub fn add_batch(&mut self, logits: &Tensor, targets: &Tensor) -> Result<()> {
        let shape = logits.size();
        ensure!(
            shape.len() == 2 && targets.size() == [shape[0]],
            "zero-shot logits {shape:?} and targets {:?} do not match",
            targets.size()
        );
        let top_k = shape[1].min(5);
        let predictions = logits.topk(top_k, 1, true, true).1.tr();
        let correct = predictions.eq_tensor(&targets.view([1, -1]).expand_as(&predictions));
        let hits_within = |k: i64| correct.narrow(0, 0, k).sum(Kind::Float).double_value(&[]);
        self.top1_hits += hits_within(1);
        self.top5_hits += hits_within(top_k);
        self.images += shape[0] as f64;
        Ok(())
    }

    /// `[(PREFIX-top1, accuracy), (PREFIX-top5, accuracy)]` with `set`'s
    /// metric prefix, accuracies as fractions of the images counted.
    pub fn finish(&self, set: ZeroShotSet) -> Result<Vec<(String, f64)>> {
        if self.images == 0.0 {
            bail!("the {} set gave no images to evaluate", set.metric_prefix());
        }
        let prefix = set.metric_prefix();
        Ok(vec![
            (format!("{prefix}-top1"), self.top1_hits / self.images),
            (format!("{prefix}-top5"), self.top5_hits / self.images),
        ])
    }
}
