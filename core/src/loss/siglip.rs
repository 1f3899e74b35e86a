//! OpenCLIP's `SigLipLoss`: a binary log-sigmoid loss on every image-text
//! pair, positive on the diagonal and negative elsewhere, divided by the
//! batch size. On several ranks, each rank scores its images against its own
//! texts, then against every other rank's texts as negatives only, adding
//! the terms in the order of the chosen exchange (`--loss-dist-impl`).
//!
//! All four exchanges are computed from an all-gather of the text features
//! with grad, which gives the same values and gradients as OpenCLIP's
//! neighbour exchanges (bidir, shift) or all-reduces (reduce); the gathered
//! texts of the whole group are held at once, where bidir and shift hold one
//! or two ranks' texts at a time.

use std::str::FromStr;
use std::sync::Arc;

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

use super::gather::GatherScope;
use super::{Loss, LossInputs};
use crate::collective::Collective;

/// `--loss-dist-impl`: the order in which a rank meets the other ranks' texts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SigLipDistImpl {
    /// Both neighbours at distance 1, 2, ... (right first), then, for an even
    /// world size, the left rank at the remaining distance. OpenCLIP's default.
    #[default]
    Bidir,
    /// The left neighbour at distance 1, 2, ..., world size - 1.
    Shift,
    /// Ranks 0, 1, ... in order (through all-reduces in OpenCLIP).
    Reduce,
    /// Ranks 0, 1, ... in order (through an all-gather in OpenCLIP).
    Gather,
}

impl FromStr for SigLipDistImpl {
    type Err = anyhow::Error;

    fn from_str(name: &str) -> Result<Self> {
        Ok(match name {
            "bidir" => SigLipDistImpl::Bidir,
            "shift" => SigLipDistImpl::Shift,
            "reduce" => SigLipDistImpl::Reduce,
            "gather" => SigLipDistImpl::Gather,
            other => {
                bail!("--loss-dist-impl {other}: expected one of bidir, shift, reduce, gather")
            }
        })
    }
}

impl SigLipDistImpl {
    /// The other ranks whose texts `rank` scores, in the order it adds them.
    fn partners(self, rank: usize, world_size: usize) -> Vec<usize> {
        let left = |distance: usize| (rank + world_size - distance) % world_size;
        let right = |distance: usize| (rank + distance) % world_size;
        match self {
            SigLipDistImpl::Bidir => {
                let (both_sides, one_more_left) = ((world_size - 1) / 2, (world_size - 1) % 2);
                let mut partners: Vec<usize> = (1..=both_sides)
                    .flat_map(|distance| [right(distance), left(distance)])
                    .collect();
                if one_more_left == 1 {
                    partners.push(left(both_sides + 1));
                }
                partners
            }
            SigLipDistImpl::Shift => (1..world_size).map(left).collect(),
            // OpenCLIP also adds 0.0 times this rank's own negatives-only
            // term, which changes nothing for finite losses.
            SigLipDistImpl::Reduce | SigLipDistImpl::Gather => {
                (0..world_size).filter(|&other| other != rank).collect()
            }
        }
    }
}

pub struct SigLipLoss {
    dist_impl: SigLipDistImpl,
    collective: Arc<dyn Collective>,
}

impl SigLipLoss {
    pub fn new(dist_impl: SigLipDistImpl, collective: Arc<dyn Collective>) -> Self {
        SigLipLoss {
            dist_impl,
            collective,
        }
    }

    /// The loss of `images` against `texts`: pairs on the diagonal are
    /// positives unless `negative_only`.
    fn pair_loss(
        inputs: &LossInputs,
        images: &Tensor,
        texts: &Tensor,
        negative_only: bool,
    ) -> Tensor {
        // `(logit_scale * images) @ texts.T`, OpenCLIP's evaluation order.
        let logits = (inputs.logit_scale * images).matmul(&texts.tr());
        let logits = match inputs.logit_bias {
            Some(bias) => logits + bias,
            None => logits,
        };
        let n = images.size()[0];
        let options = (images.kind(), images.device());
        let negatives = -Tensor::ones([n, n], options);
        let labels = if negative_only {
            negatives
        } else {
            2.0 * Tensor::eye(n, options) + negatives
        };
        -(labels * logits).log_sigmoid().sum(None::<Kind>) / n as f64
    }
}

impl Loss for SigLipLoss {
    fn forward(&self, inputs: &LossInputs) -> Result<Tensor> {
        let images = inputs.image_features;
        let loss = Self::pair_loss(inputs, images, inputs.text_features, false);
        let world_size = self.collective.world_size();
        if world_size == 1 {
            return Ok(loss);
        }
        let mut gather = GatherScope::new(self.collective.as_ref());
        let texts = gather.with_grad(inputs.text_features)?;
        let loss = self
            .dist_impl
            .partners(self.collective.rank(), world_size)
            .into_iter()
            .fold(loss, |loss, other| {
                loss + Self::pair_loss(inputs, images, &texts[other], true)
            });
        gather.settle(loss)
    }
}
