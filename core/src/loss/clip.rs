//! OpenCLIP's `ClipLoss`: the mean of the image->text and text->image
//! cross-entropies over the similarity matrix, the i-th image matching the
//! i-th text. On several ranks, features are all-gathered and each rank
//! scores either the global batch against itself or (`local_loss`) its own
//! batch against the global one.

use std::sync::{Arc, Mutex};

use anyhow::Result;
use tch::{Device, Kind, Reduction, Tensor};

use super::gather::GatherScope;
use super::{Loss, LossInputs};
use crate::collective::Collective;

/// `ClipLoss`'s constructor flags.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClipLossOptions {
    /// `--local-loss`: logits of this rank's features against the gathered
    /// ones, labels offset by `rank * batch`, instead of the full global
    /// matrix on every rank.
    pub local_loss: bool,
    /// `--gather-with-grad`: gradients flow back through the gathered
    /// features to the ranks that own them. Without it, only this rank's own
    /// slice carries gradient (and with `local_loss`, only the local
    /// features on the left of each product).
    pub gather_with_grad: bool,
    /// Keep the labels of the last batch size and device for the next call.
    pub cache_labels: bool,
}

pub struct ClipLoss {
    options: ClipLossOptions,
    collective: Arc<dyn Collective>,
    /// The last labels made, with their device, when `cache_labels` is set.
    cached_labels: Mutex<Option<(Device, Tensor)>>,
}

impl ClipLoss {
    pub fn new(options: ClipLossOptions, collective: Arc<dyn Collective>) -> Self {
        ClipLoss {
            options,
            collective,
            cached_labels: Mutex::new(None),
        }
    }

    /// Class indices of the matching pairs: `0..num_logits`, offset by
    /// `rank * num_logits` with `local_loss` on several ranks.
    pub(super) fn collective(&self) -> &dyn Collective {
        self.collective.as_ref()
    }

    pub(super) fn labels(&self, device: Device, num_logits: i64) -> Tensor {
        let mut cache = self
            .cached_labels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((cached_device, labels)) = cache.as_ref() {
            if *cached_device == device && labels.size()[0] == num_logits {
                return labels.shallow_clone();
            }
        }
        let mut labels = Tensor::arange(num_logits, (Kind::Int64, device));
        if self.collective.world_size() > 1 && self.options.local_loss {
            labels += num_logits * self.collective.rank() as i64;
        }
        if self.options.cache_labels {
            *cache = Some((device, labels.shallow_clone()));
        }
        labels
    }

    /// `(logits_per_image, logits_per_text)`, as OpenCLIP's `get_logits`.
    pub(super) fn logits(
        &self,
        gather: &mut GatherScope,
        inputs: &LossInputs,
    ) -> Result<(Tensor, Tensor)> {
        let LossInputs {
            image_features,
            text_features,
            logit_scale,
            logit_bias,
            ..
        } = *inputs;
        // OpenCLIP writes `logit_scale * a @ b.T`, which Python evaluates as
        // `(logit_scale * a) @ b.T`; the same order gives the same rounding.
        let scaled_product = |a: &Tensor, b: &Tensor| (logit_scale * a).matmul(&b.tr());
        // This rank's images against `texts`, its texts against `images`.
        let both_ways = |images: &Tensor, texts: &Tensor| {
            let per_image = scaled_product(image_features, texts);
            let per_text = scaled_product(text_features, images);
            match logit_bias {
                Some(bias) => (per_image + bias, per_text + bias),
                None => (per_image, per_text),
            }
        };
        if self.collective.world_size() == 1 {
            return Ok(both_ways(image_features, text_features));
        }
        let (all_images, all_texts) =
            self.gather_features(gather, image_features, text_features)?;
        if self.options.local_loss {
            return Ok(both_ways(&all_images, &all_texts));
        }
        let per_image = scaled_product(&all_images, &all_texts);
        // OpenCLIP's logits_per_text is a view of logits_per_image here, and
        // it adds the bias in place to both, so both carry it twice.
        let per_image = match logit_bias {
            Some(bias) => per_image + bias + bias,
            None => per_image,
        };
        let per_text = per_image.tr();
        Ok((per_image, per_text))
    }

    /// OpenCLIP's `gather_features`: every rank's image and text features,
    /// concatenated in rank order.
    fn gather_features(
        &self,
        gather: &mut GatherScope,
        image_features: &Tensor,
        text_features: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let rank = self.collective.rank();
        let mut all = |local: &Tensor| -> Result<Tensor> {
            let mut slices = if self.options.gather_with_grad {
                gather.with_grad(local)?
            } else {
                gather.without_grad(local)?
            };
            if !self.options.gather_with_grad && !self.options.local_loss {
                // Keep this rank's gradient: its own slice is the local tensor.
                slices[rank] = local.shallow_clone();
            }
            Ok(Tensor::cat(&slices, 0))
        };
        Ok((all(image_features)?, all(text_features)?))
    }
}

impl Loss for ClipLoss {
    fn forward(&self, inputs: &LossInputs) -> Result<Tensor> {
        let mut gather = GatherScope::new(self.collective.as_ref());
        let (per_image, per_text) = self.logits(&mut gather, inputs)?;
        let labels = self.labels(inputs.image_features.device(), per_image.size()[0]);
        let cross_entropy = |logits: &Tensor| {
            logits.cross_entropy_loss::<Tensor>(&labels, None, Reduction::Mean, -100, 0.0)
        };
        let loss = (cross_entropy(&per_image) + cross_entropy(&per_text)) / 2.0;
        gather.settle(loss)
    }
}
