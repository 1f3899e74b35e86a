//! Validation metrics over a `--val-data` set, as OpenCLIP's `evaluate`
//! computes them: the CLIP loss of each batch weighted by its size and
//! averaged over all samples (`clip_val_loss`), and, over the features of the
//! whole set, where each image ranks its own caption among all captions and
//! the reverse (`get_clip_metrics`: mean and median rank, recall at 1, 5, 10).
//!
//! The arithmetic follows OpenCLIP's operation for operation (same tensor
//! ops, dtypes and accumulation order), so on the same features the ranks are
//! identical, ties included, and the loss equals OpenCLIP's to the last bit
//! of fp32. Call [`ValidationMetrics::add_batch`] inside the autocast the
//! forward pass ran in (as OpenCLIP computes the batch loss there) and
//! [`ValidationMetrics::finish`] outside it.
//!
//! OpenCLIP computes this loss with the logit scale only, even for SigLIP
//! models that have a logit bias, so no bias is taken here. For CoCa models
//! it also reports `val_generative_loss`, the captioning cross-entropy
//! (padding included) of the batches it logs, every 100th from the first,
//! weighted by their sizes and divided by all samples: OpenCLIP adds a
//! batch's term inside its logging branch, and clipflow does the same.

use anyhow::{bail, Context, Result};
use tch::{Device, Kind, Reduction, Tensor};

/// The recall cut-offs OpenCLIP reports (`R@1`, `R@5`, `R@10`).
const RECALL_AT: [i64; 3] = [1, 5, 10];

/// Accumulates one validation pass, batch by batch.
#[derive(Debug, Default)]
pub struct ValidationMetrics {
    /// Each batch's image and text features, on the CPU.
    image_features: Vec<Tensor>,
    text_features: Vec<Tensor>,
    /// Sum over batches of (batch CLIP loss * batch size), an fp32 scalar.
    cumulative_loss: Option<Tensor>,
    num_samples: i64,
    /// The last batch's logit scale, which OpenCLIP ranks with.
    logit_scale: Option<Tensor>,
    /// Batches added so far.
    batches: u64,
    /// CoCa: sum of (captioning loss * batch size) over every 100th batch.
    cumulative_generative_loss: Option<Tensor>,
}

/// OpenCLIP logs (and counts the generative loss of) every this many batches.
const LOG_EVERY_BATCHES: u64 = 100;

impl ValidationMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Samples seen so far.
    pub fn num_samples(&self) -> i64 {
        self.num_samples
    }

    /// The loss so far (`cumulative_loss / num_samples`), which OpenCLIP logs
    /// every 100 batches; `None` before the first batch.
    pub fn running_loss(&self) -> Option<f64> {
        let cumulative = self.cumulative_loss.as_ref()?;
        Some((cumulative / self.num_samples).double_value(&[]))
    }

    /// CoCa's generative loss so far (over the batches it counts, divided
    /// by all samples), which OpenCLIP logs beside the running loss.
    pub fn running_generative_loss(&self) -> Option<f64> {
        let cumulative = self.cumulative_generative_loss.as_ref()?;
        Some((cumulative / self.num_samples).double_value(&[]))
    }

    /// Adds one batch: the model's L2-normalised `image_features` and
    /// `text_features` ([batch, embed_dim], row i of each a matching pair)
    /// and its `logit_scale` (already exponentiated, as the forward pass
    /// returns it).
    pub fn add_batch(
        &mut self,
        image_features: &Tensor,
        text_features: &Tensor,
        logit_scale: &Tensor,
    ) -> Result<()> {
        check_pairs(image_features, text_features)?;
        let batch_size = image_features.size()[0];
        let (batch_loss, logit_scale) = tch::no_grad(|| {
            let logit_scale = logit_scale.mean(None::<Kind>);
            let logits_per_image = (&logit_scale * image_features).matmul(&text_features.tr());
            let logits_per_text = logits_per_image.tr();
            let labels = Tensor::arange(batch_size, (Kind::Int64, image_features.device()));
            let cross_entropy = |logits: &Tensor| {
                logits.cross_entropy_loss::<Tensor>(&labels, None, Reduction::Mean, -100, 0.0)
            };
            let total_loss =
                (cross_entropy(&logits_per_image) + cross_entropy(&logits_per_text)) / 2;
            (total_loss * batch_size, logit_scale)
        });
        self.cumulative_loss = Some(match self.cumulative_loss.take() {
            Some(cumulative) => cumulative + batch_loss,
            None => batch_loss,
        });
        self.num_samples += batch_size;
        self.image_features
            .push(image_features.detach().to_device(Device::Cpu));
        self.text_features
            .push(text_features.detach().to_device(Device::Cpu));
        self.logit_scale = Some(logit_scale.to_device(Device::Cpu));
        self.batches += 1;
        Ok(())
    }

    /// Adds a CoCa batch's caption `logits` [N, L, vocab] and `labels`
    /// [N, L]; call it after [`add_batch`](Self::add_batch) for the same
    /// batch.
    pub fn add_caption_batch(&mut self, logits: &Tensor, labels: &Tensor) {
        if (self.batches - 1) % LOG_EVERY_BATCHES != 0 {
            return;
        }
        let batch_size = logits.size()[0];
        let term = tch::no_grad(|| {
            logits.permute([0, 2, 1]).cross_entropy_loss::<Tensor>(
                labels,
                None,
                Reduction::Mean,
                -100,
                0.0,
            ) * batch_size
        });
        self.cumulative_generative_loss = Some(match self.cumulative_generative_loss.take() {
            Some(cumulative) => cumulative + term,
            None => term,
        });
    }

    /// The metrics of the pass, named and ordered as OpenCLIP's `evaluate`
    /// reports them: [`clip_metrics`]'s, then `clip_val_loss`, `epoch`,
    /// `num_samples`.
    pub fn finish(self, epoch: u64) -> Result<Vec<(String, f64)>> {
        let (Some(cumulative_loss), Some(logit_scale)) = (self.cumulative_loss, self.logit_scale)
        else {
            bail!("the validation set gave no samples to evaluate");
        };
        let mut metrics = clip_metrics(
            &Tensor::cat(&self.image_features, 0),
            &Tensor::cat(&self.text_features, 0),
            &logit_scale,
        )?;
        let loss = (cumulative_loss / self.num_samples).double_value(&[]);
        metrics.push(("clip_val_loss".to_string(), loss));
        metrics.push(("epoch".to_string(), epoch as f64));
        metrics.push(("num_samples".to_string(), self.num_samples as f64));
        if let Some(generative) = self.cumulative_generative_loss {
            let loss = (generative / self.num_samples).double_value(&[]);
            metrics.push(("val_generative_loss".to_string(), loss));
        }
        Ok(metrics)
    }
}

/// OpenCLIP's `get_clip_metrics`: for `image_to_text` (each image ranking all
/// texts) and `text_to_image`, the mean and median 1-based rank of the
/// matching item and the recall at 1, 5 and 10, in that order.
pub fn clip_metrics(
    image_features: &Tensor,
    text_features: &Tensor,
    logit_scale: &Tensor,
) -> Result<Vec<(String, f64)>> {
    check_pairs(image_features, text_features)?;
    let logits_per_image = tch::no_grad(|| {
        (logit_scale * image_features)
            .matmul(&text_features.tr())
            .to_device(Device::Cpu)
    });
    let logits_per_text = logits_per_image.tr();
    let count = text_features.size()[0];
    let ground_truth = Tensor::arange(count, (Kind::Int64, Device::Cpu)).view([-1, 1]);
    let mut metrics = Vec::new();
    for (direction, logits) in [
        ("image_to_text", &logits_per_image),
        ("text_to_image", &logits_per_text),
    ] {
        let ranking = logits.argsort(-1, true);
        // The column of each row's match in its ranking: its 0-based rank.
        let ranks = ranking.eq_tensor(&ground_truth).nonzero().select(1, 1);
        let ranks = Vec::<i64>::try_from(&ranks).context("reading ranks")?;
        metrics.push((format!("{direction}_mean_rank"), mean_rank(&ranks)));
        metrics.push((format!("{direction}_median_rank"), median_rank(&ranks)));
        for k in RECALL_AT {
            let hits = ranks.iter().filter(|&&rank| rank < k).count();
            metrics.push((
                format!("{direction}_R@{k}"),
                hits as f64 / ranks.len() as f64,
            ));
        }
    }
    Ok(metrics)
}

fn check_pairs(image_features: &Tensor, text_features: &Tensor) -> Result<()> {
    let (images, texts) = (image_features.size(), text_features.size());
    if images.len() != 2 || images != texts || images[0] == 0 {
        bail!(
            "validation features must be non-empty [n, embed_dim] image/text pairs of equal shape, \
             got images {images:?} and texts {texts:?}"
        );
    }
    Ok(())
}

/// Mean of the 0-based ranks, plus one. The sum of integers is exact in f64.
fn mean_rank(ranks: &[i64]) -> f64 {
    ranks.iter().sum::<i64>() as f64 / ranks.len() as f64 + 1.0
}

/// `floor(median) + 1` of the 0-based ranks, the median of an even count
/// being the mean of the middle two (numpy's `median`).
fn median_rank(ranks: &[i64]) -> f64 {
    let mut sorted = ranks.to_vec();
    sorted.sort_unstable();
    let middle = sorted.len() / 2;
    let median = if sorted.len() % 2 == 1 {
        sorted[middle] as f64
    } else {
        (sorted[middle - 1] as f64 + sorted[middle] as f64) / 2.0
    };
    median.floor() + 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_an_even_count_is_floored_mean_of_the_middle_two() {
        assert_eq!(median_rank(&[0, 3, 4, 9]), 4.0);
        assert_eq!(median_rank(&[2, 0, 1]), 2.0);
    }

    #[test]
    fn finishing_with_no_batches_is_an_error() {
        assert!(ValidationMetrics::new().finish(1).is_err());
    }
}
