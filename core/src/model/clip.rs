//! The CLIP model: `visual` (image tower), the text tower (at the root for
//! OpenCLIP's `CLIP`, under `text.` for `CustomTextCLIP`), `logit_scale` and,
//! for SigLIP-style configs, `logit_bias`.

use anyhow::Result;
use tch::nn;
use tch::Tensor;

use super::config::ModelConfig;
use super::text_transformer::TextTransformer;
use super::visual::VisualTower;

#[derive(Debug)]
pub struct Clip {
    pub visual: VisualTower,
    pub text: TextTransformer,
    pub logit_scale: Tensor,
    pub logit_bias: Option<Tensor>,
    pub context_length: i64,
}

/// What the model's forward pass returns, as OpenCLIP's `CLIP.forward` does:
/// L2-normalised features, `exp(logit_scale)` and the optional `logit_bias`.
#[derive(Debug)]
pub struct ClipOutput {
    pub image_features: Tensor,
    pub text_features: Tensor,
    pub logit_scale: Tensor,
    pub logit_bias: Option<Tensor>,
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
        let text = TextTransformer::new(text_root, config)?;
        let init_logit_scale = config.init_logit_scale.unwrap_or(INIT_LOGIT_SCALE);
        let logit_scale = root.var("logit_scale", &[], nn::Init::Const(init_logit_scale));
        let logit_bias = config
            .init_logit_bias
            .map(|bias| root.var("logit_bias", &[], nn::Init::Const(bias)));
        Ok(Clip {
            visual,
            text,
            logit_scale,
            logit_bias,
            context_length: config.text_cfg.context_length,
        })
    }

    /// `--grad-checkpointing` (OpenCLIP's `CLIP.set_grad_checkpointing`): each
    /// residual block of the ViT image tower and of the text tower recomputes
    /// its activations during backward instead of keeping them. Gradients
    /// are unchanged; it only acts while gradients are recorded.
    pub fn set_grad_checkpointing(&mut self, enable: bool) {
        self.visual.set_grad_checkpointing(enable);
        self.text.set_grad_checkpointing(enable);
    }

    /// Image features [N, embed_dim], not normalised (OpenCLIP's `encode_image`).
    pub fn encode_image(&self, images: &Tensor, train: bool) -> Tensor {
        self.visual.forward_t(images, train)
    }

    /// Text features [N, embed_dim], not normalised (OpenCLIP's `encode_text`).
    pub fn encode_text(&self, text: &Tensor) -> Tensor {
        self.text.forward(text)
    }

    pub fn forward_t(&self, images: &Tensor, text: &Tensor, train: bool) -> ClipOutput {
        ClipOutput {
            image_features: l2_normalize(&self.encode_image(images, train)),
            text_features: l2_normalize(&self.encode_text(text)),
            logit_scale: self.logit_scale.exp(),
            logit_bias: self.logit_bias.as_ref().map(Tensor::shallow_clone),
        }
    }
}

/// `F.normalize(x, dim=-1)`: x / max(‖x‖₂, 1e-12).
pub fn l2_normalize(x: &Tensor) -> Tensor {
    let norm = x
        .norm_scalaropt_dim(2, [-1i64].as_slice(), true)
        .clamp_min(1e-12);
    x / norm
}
