//! Training losses, as OpenCLIP's `open_clip.loss` computes them: `ClipLoss`
//! (softmax contrastive, with `--local-loss` and `--gather-with-grad`),
//! `SigLipLoss` (`--siglip`, with the `--loss-dist-impl` exchanges),
//! `CoCaLoss` (contrastive plus captioning) and `DistillClipLoss`
//! (contrastive plus distillation from a teacher), on one process or across
//! the ranks of a `Collective`. `create_loss` picks one
//! from the training flags as OpenCLIP's `create_loss` does.

mod clip;
mod coca;
mod distill;
mod gather;
mod siglip;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;
use tch::Tensor;

use crate::collective::Collective;
use crate::model::ClipOutput;

pub use clip::{ClipLoss, ClipLossOptions};
pub use coca::CoCaLoss;
pub use distill::DistillClipLoss;
pub use siglip::{SigLipDistImpl, SigLipLoss};

/// What a loss reads from the model's forward pass: L2-normalised features
/// of this rank's batch, the exponentiated `logit_scale`, the optional
/// `logit_bias`, a CoCa model's caption predictions, and a distillation
/// teacher's outputs on the same batch.
#[derive(Clone, Copy)]
pub struct LossInputs<'a> {
    pub image_features: &'a Tensor,
    pub text_features: &'a Tensor,
    pub logit_scale: &'a Tensor,
    pub logit_bias: Option<&'a Tensor>,
    pub caption: Option<CaptionInputs<'a>>,
    pub teacher: Option<TeacherInputs<'a>>,
}

/// A frozen teacher's L2-normalised features and exponentiated logit scale
/// (OpenCLIP's `dist_image_features`, `dist_text_features`,
/// `dist_logit_scale`).
#[derive(Clone, Copy)]
pub struct TeacherInputs<'a> {
    pub image_features: &'a Tensor,
    pub text_features: &'a Tensor,
    pub logit_scale: &'a Tensor,
}

/// CoCa's next-token `logits` [N, L, vocab] and the `labels` [N, L] they predict.
#[derive(Clone, Copy)]
pub struct CaptionInputs<'a> {
    pub logits: &'a Tensor,
    pub labels: &'a Tensor,
}

impl<'a> From<&'a ClipOutput> for LossInputs<'a> {
    fn from(output: &'a ClipOutput) -> Self {
        LossInputs {
            image_features: &output.image_features,
            text_features: &output.text_features,
            logit_scale: &output.logit_scale,
            logit_bias: output.logit_bias.as_ref(),
            caption: output.caption.as_ref().map(|c| CaptionInputs {
                logits: &c.logits,
                labels: &c.labels,
            }),
            teacher: None,
        }
    }
}

/// A training loss. On a group of several ranks, every rank calls `forward`
/// for every batch (it exchanges features), and `backward()` on the result
/// gives this rank's gradients as OpenCLIP's loss does on that rank.
pub trait Loss: Send + Sync {
    /// The loss of this rank's batch.
    fn forward(&self, inputs: &LossInputs) -> Result<Tensor>;

    /// The loss terms by OpenCLIP's names (its `output_dict=True`), which
    /// training sums into the total loss.
    fn forward_dict(&self, inputs: &LossInputs) -> Result<BTreeMap<&'static str, Tensor>> {
        Ok(BTreeMap::from([(
            "contrastive_loss",
            self.forward(inputs)?,
        )]))
    }
}

/// A loss's terms in OpenCLIP's order (the contrastive term first, as its
/// loss dicts list it) and their sum, OpenCLIP's `sum(losses.values())`.
pub fn total_loss(terms: BTreeMap<&'static str, Tensor>) -> (Tensor, Vec<(&'static str, Tensor)>) {
    let mut terms: Vec<(&'static str, Tensor)> = terms.into_iter().collect();
    terms.sort_by_key(|(name, _)| *name != "contrastive_loss");
    let mut values = terms.iter().map(|(_, term)| term.shallow_clone());
    let first = values.next().expect("a loss has at least one term");
    (values.fold(first, |total, term| total + term), terms)
}

/// The training flags that choose and configure the loss.
#[derive(Debug, Clone, Default)]
pub struct LossOptions {
    /// `--model`: a name containing "coca" takes `CoCaLoss`, as in OpenCLIP.
    pub model_name: String,
    /// `--coca-contrastive-loss-weight`, `--coca-caption-loss-weight`.
    pub coca_weights: (f64, f64),
    /// `--siglip`
    pub siglip: bool,
    /// `--local-loss`
    pub local_loss: bool,
    /// `--gather-with-grad`
    pub gather_with_grad: bool,
    /// `--loss-dist-impl` (SigLIP only; default bidir)
    pub siglip_dist_impl: Option<SigLipDistImpl>,
    /// `--distill-model` and `--distill-pretrained` were both given.
    pub distill: bool,
}

/// The loss OpenCLIP's `create_loss` builds for these flags, on the ranks
/// of `collective`. Labels are cached, as OpenCLIP's training does.
pub fn create_loss(
    options: &LossOptions,
    collective: Arc<dyn Collective>,
) -> Result<Box<dyn Loss>> {
    let clip_options = ClipLossOptions {
        local_loss: options.local_loss,
        gather_with_grad: options.gather_with_grad,
        cache_labels: true,
    };
    if options.distill {
        return Ok(Box::new(DistillClipLoss::new(clip_options, collective)));
    }
    if options.model_name.to_lowercase().contains("coca") {
        let (contrastive, caption) = options.coca_weights;
        return Ok(Box::new(CoCaLoss::new(
            contrastive,
            caption,
            clip_options,
            collective,
        )));
    }
    if options.siglip {
        return Ok(Box::new(SigLipLoss::new(
            options.siglip_dist_impl.unwrap_or_default(),
            collective,
        )));
    }
    Ok(Box::new(ClipLoss::new(clip_options, collective)))
}
