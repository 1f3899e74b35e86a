//! OpenCLIP's `DistillClipLoss` (`--distill-model`, `--distill-pretrained`):
//! the student's `ClipLoss`, and the cross-entropy of the student's
//! similarity rows and columns against the softmax of a frozen teacher's on
//! the same batch, averaged over both directions (`distill_loss`).

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use tch::{Kind, Reduction, Tensor};

use super::gather::GatherScope;
use super::{total_loss, ClipLoss, ClipLossOptions, Loss, LossInputs};
use crate::collective::Collective;

pub struct DistillClipLoss {
    clip: ClipLoss,
}

impl DistillClipLoss {
    pub fn new(options: ClipLossOptions, collective: Arc<dyn Collective>) -> Self {
        DistillClipLoss {
            clip: ClipLoss::new(options, collective),
        }
    }
}

/// `-(softmax(teacher) * log_softmax(student)).sum(1).mean(0)`.
fn distill_term(teacher_logits: &Tensor, student_logits: &Tensor) -> Tensor {
    let product =
        teacher_logits.softmax(1, None::<Kind>) * student_logits.log_softmax(1, None::<Kind>);
    -product
        .sum_dim_intlist([1i64].as_slice(), false, None::<Kind>)
        .mean_dim([0i64].as_slice(), false, None::<Kind>)
}

impl Loss for DistillClipLoss {
    fn forward(&self, inputs: &LossInputs) -> Result<Tensor> {
        Ok(total_loss(self.forward_dict(inputs)?).0)
    }

    fn forward_dict(&self, inputs: &LossInputs) -> Result<BTreeMap<&'static str, Tensor>> {
        let teacher = inputs
            .teacher
            .context("DistillClipLoss needs the teacher model's features")?;
        let mut gather = GatherScope::new(self.clip.collective());
        let (per_image, per_text) = self.clip.logits(&mut gather, inputs)?;
        let teacher_inputs = LossInputs {
            image_features: teacher.image_features,
            text_features: teacher.text_features,
            logit_scale: teacher.logit_scale,
            logit_bias: None,
            caption: None,
            teacher: None,
        };
        let (teacher_per_image, teacher_per_text) =
            self.clip.logits(&mut gather, &teacher_inputs)?;
        let labels = self
            .clip
            .labels(inputs.image_features.device(), per_image.size()[0]);
        let cross_entropy = |logits: &Tensor| {
            logits.cross_entropy_loss::<Tensor>(&labels, None, Reduction::Mean, -100, 0.0)
        };
        let contrastive = (cross_entropy(&per_image) + cross_entropy(&per_text)) / 2.0;
        let distill = (distill_term(&teacher_per_image, &per_image)
            + distill_term(&teacher_per_text, &per_text))
            / 2.0;
        // The gradients both terms send through the exchanged features
        // reach their owners through a zero-valued part of one term.
        let contrastive = match gather.carried(&(&contrastive + &distill))? {
            Some(zero) => contrastive + zero,
            None => contrastive,
        };
        Ok(BTreeMap::from([
            ("contrastive_loss", contrastive),
            ("distill_loss", distill),
        ]))
    }
}
