//! OpenCLIP's `CoCaLoss`: the contrastive `ClipLoss` and the captioning
//! loss, the cross-entropy of the text decoder's next-token logits against
//! the caption's tokens with padding ignored, each times its weight
//! (`--coca-contrastive-loss-weight`, `--coca-caption-loss-weight`).

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use tch::{Reduction, Tensor};

use super::{total_loss, ClipLoss, ClipLossOptions, Loss, LossInputs};
use crate::collective::Collective;

/// The padding token of OpenCLIP's tokenizer, which `create_loss` leaves
/// as CoCaLoss's `pad_id`.
const PAD_ID: i64 = 0;

pub struct CoCaLoss {
    clip: ClipLoss,
    clip_loss_weight: f64,
    caption_loss_weight: f64,
}

impl CoCaLoss {
    pub fn new(
        clip_loss_weight: f64,
        caption_loss_weight: f64,
        options: ClipLossOptions,
        collective: Arc<dyn Collective>,
    ) -> Self {
        CoCaLoss {
            clip: ClipLoss::new(options, collective),
            clip_loss_weight,
            caption_loss_weight,
        }
    }
}

impl Loss for CoCaLoss {
    fn forward(&self, inputs: &LossInputs) -> Result<Tensor> {
        Ok(total_loss(self.forward_dict(inputs)?).0)
    }

    fn forward_dict(&self, inputs: &LossInputs) -> Result<BTreeMap<&'static str, Tensor>> {
        let caption = inputs
            .caption
            .context("CoCaLoss needs the text decoder's logits: is the model a CoCa model?")?;
        // OpenCLIP skips the contrastive term (a constant 0) at weight 0.
        let contrastive = if self.clip_loss_weight != 0.0 {
            self.clip.forward(inputs)? * self.clip_loss_weight
        } else {
            Tensor::zeros([], (caption.logits.kind(), caption.logits.device()))
        };
        let caption_loss = caption
            .logits
            .permute([0, 2, 1])
            .cross_entropy_loss::<Tensor>(caption.labels, None, Reduction::Mean, PAD_ID, 0.0)
            * self.caption_loss_weight;
        Ok(BTreeMap::from([
            ("contrastive_loss", contrastive),
            ("caption_loss", caption_loss),
        ]))
    }
}
