//! The CLIP model: `visual` (image tower), the text tower (at the root for
//! OpenCLIP's `CLIP`, under `text.` for `CustomTextCLIP` and `CoCa`),
//! `logit_scale` and, for SigLIP-style configs, `logit_bias`. A config with
//! a `multimodal_cfg` is OpenCLIP's `CoCa`: the same towers (the text tower
//! with a class embedding) plus `text_decoder`, which predicts each caption
//! token from the ones before it and the image tokens.

use std::sync::Arc;

use anyhow::{ensure, Result};
use tch::nn;
use tch::Tensor;

use super::config::{ModelConfig, VisionLayers};
use super::hf_text::HfTextEncoder;
use super::multimodal_transformer::MultimodalTransformer;
use super::text_transformer::TextTransformer;
use super::visual::VisualTower;
use crate::distributed::ProcessGroup;

/// The text tower: OpenCLIP's own `TextTransformer`, or a HuggingFace
/// model in OpenCLIP's `HFTextEncoder`.
#[derive(Debug)]
pub enum TextTower {
    Native(TextTransformer),
    HuggingFace(HfTextEncoder),
}

#[derive(Debug)]
pub struct Clip {
    pub visual: VisualTower,
    pub text: TextTower,
    /// CoCa's decoder; `None` for CLIP models.
    pub text_decoder: Option<MultimodalTransformer>,
    pub logit_scale: Tensor,
    pub logit_bias: Option<Tensor>,
    pub context_length: i64,
}

/// What the model's forward pass returns, as OpenCLIP's `CLIP.forward` /
/// `CoCa.forward` do: L2-normalised features, `exp(logit_scale)`, the
/// optional `logit_bias`, and CoCa's caption predictions.
#[derive(Debug)]
pub struct ClipOutput {
    pub image_features: Tensor,
    pub text_features: Tensor,
    pub logit_scale: Tensor,
    pub logit_bias: Option<Tensor>,
    pub caption: Option<CaptionOutput>,
}

/// CoCa's teacher-forced caption predictions: `logits` [N, L - 1, vocab]
/// for `labels` [N, L - 1], the caption's tokens after the first.
#[derive(Debug)]
pub struct CaptionOutput {
    pub logits: Tensor,
    pub labels: Tensor,
}

/// ln(1 / 0.07), OpenCLIP's initial logit scale.
pub const INIT_LOGIT_SCALE: f64 = 2.659_260_036_932_778_4;

impl Clip {
    /// Builds the model's variables under `root` with OpenCLIP's names.
    pub fn new(root: &nn::Path, config: &ModelConfig) -> Result<Self> {
        let visual = VisualTower::new(root / "visual", config)?;
        let text_root = if config.custom_text {
            root / "text"
        } else {
            root.clone()
        };
        let text = if config.text_cfg.hf_model_name.is_some() {
            TextTower::HuggingFace(HfTextEncoder::new(text_root, config)?)
        } else {
            TextTower::Native(TextTransformer::new(text_root, config)?)
        };
        let init_logit_scale = config.init_logit_scale.unwrap_or(INIT_LOGIT_SCALE);
        let logit_scale = root.var("logit_scale", &[], nn::Init::Const(init_logit_scale));
        let logit_bias = config
            .init_logit_bias
            .map(|bias| root.var("logit_bias", &[], nn::Init::Const(bias)));
        let text_decoder = match &config.multimodal_cfg {
            None => None,
            Some(multimodal) => {
                ensure!(
                    matches!(config.vision_cfg.layers, VisionLayers::Transformer(_)),
                    "a CoCa model needs a ViT image tower (its text decoder reads the image tokens)"
                );
                Some(MultimodalTransformer::new(
                    root / "text_decoder",
                    multimodal,
                    config.quick_gelu,
                    config.text_cfg.vocab_size,
                ))
            }
        };
        Ok(Clip {
            visual,
            text,
            text_decoder,
            logit_scale,
            logit_bias,
            context_length: config.text_cfg.context_length,
        })
    }

    /// `--grad-checkpointing` (OpenCLIP's `CLIP.set_grad_checkpointing`): each
    /// residual block of the ViT image tower and of the text tower recomputes
    /// its activations during backward instead of keeping them. Gradients
    /// are unchanged; it only acts while gradients are recorded. CoCa's
    /// decoder checkpoints its blocks too.
    pub fn set_grad_checkpointing(&mut self, enable: bool) {
        self.visual.set_grad_checkpointing(enable);
        match &mut self.text {
            TextTower::Native(text) => text.set_grad_checkpointing(enable),
            TextTower::HuggingFace(text) => text.set_grad_checkpointing(enable),
        }
        if let Some(decoder) = &mut self.text_decoder {
            decoder.set_grad_checkpointing(enable);
        }
    }

    /// `--use-bn-sync` on several ranks (`SyncBatchNorm.convert_sync_batchnorm`):
    /// the image tower's batch norms, if it has any, normalise with the
    /// statistics of every rank's batch in train mode.
    pub fn synchronise_batch_norms(&mut self, group: Arc<ProcessGroup>) {
        self.visual.synchronise_batch_norms(group);
    }

    /// Image features [N, embed_dim], not normalised (OpenCLIP's `encode_image`).
    pub fn encode_image(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        self.visual.forward(images, train)
    }

    /// Text features [N, embed_dim], not normalised (OpenCLIP's `encode_text`
    /// in eval mode).
    pub fn encode_text(&self, text: &Tensor) -> Tensor {
        self.encode_text_t(text, false)
    }

    /// `encode_text`; `train` puts a HuggingFace tower's dropout in training
    /// mode (OpenCLIP's own text tower has none).
    pub fn encode_text_t(&self, text: &Tensor, train: bool) -> Tensor {
        match &self.text {
            TextTower::Native(tower) => tower.forward(text),
            TextTower::HuggingFace(tower) => tower.forward_t(text, train),
        }
    }

    /// The forward pass; `train` puts the image tower's batch norms and
    /// patch dropout in training mode.
    pub fn forward_t(&self, images: &Tensor, text: &Tensor, train: bool) -> Result<ClipOutput> {
        let (image_features, text_features, caption) = match &self.text_decoder {
            None => (
                self.encode_image(images, train)?,
                self.encode_text_t(text, train),
                None,
            ),
            Some(decoder) => {
                let (image_latent, image_embs) = self.visual.forward_with_tokens(images, train)?;
                let TextTower::Native(tower) = &self.text else {
                    anyhow::bail!("CoCa with a HuggingFace text tower is not built");
                };
                let (text_latent, token_embs) = tower.forward_with_tokens(text);
                // Teacher forcing: the outputs of tokens 0..L-1 predict
                // tokens 1..L.
                let length = text.size()[1];
                let logits = decoder.forward(&image_embs, &token_embs.narrow(1, 0, length - 1));
                let labels = text.narrow(1, 1, length - 1);
                (
                    image_latent,
                    text_latent,
                    Some(CaptionOutput { logits, labels }),
                )
            }
        };
        Ok(ClipOutput {
            image_features: l2_normalize(&image_features),
            text_features: l2_normalize(&text_features),
            logit_scale: self.logit_scale.exp(),
            logit_bias: self.logit_bias.as_ref().map(Tensor::shallow_clone),
            caption,
        })
    }
}

/// `F.normalize(x, dim=-1)`: x / max(‖x‖₂, 1e-12).
pub fn l2_normalize(x: &Tensor) -> Tensor {
    let norm = x
        .norm_scalaropt_dim(2, [-1i64].as_slice(), true)
        .clamp_min(1e-12);
    x / norm
}
