//! The image tower under `visual.`: OpenCLIP's timm adapter when the config
//! names a `timm_model_name`, else a ViT, or (for the RN configs) a
//! ModifiedResNet, chosen by the shape of the config's `layers`.

use std::sync::Arc;

use anyhow::{bail, Result};
use tch::nn;
use tch::Tensor;

use crate::distributed::ProcessGroup;

use super::config::{ModelConfig, VisionLayers};
use super::modified_resnet::{ModifiedResNet, ModifiedResNetConfig};
use super::timm_model::TimmModel;
use super::vision_transformer::VisionTransformer;

#[derive(Debug)]
pub enum VisualTower {
    VisionTransformer(Box<VisionTransformer>),
    ModifiedResNet(Box<ModifiedResNet>),
    Timm(Box<TimmModel>),
}

impl VisualTower {
    pub fn new(p: nn::Path, config: &ModelConfig) -> Result<Self> {
        let v = &config.vision_cfg;
        if v.timm_model_name.is_some() {
            return Ok(VisualTower::Timm(Box::new(TimmModel::new(p, config)?)));
        }
        match v.layers {
            VisionLayers::Transformer(_) => Ok(VisualTower::VisionTransformer(Box::new(
                VisionTransformer::new(p, config)?,
            ))),
            VisionLayers::ResNet(layers) => {
                let (height, width) = v.image_size.height_width();
                if height != width {
                    bail!("ResNet image towers need square images, got {height}x{width}");
                }
                let resnet = ModifiedResNetConfig::from_openclip(
                    layers,
                    v.width,
                    height,
                    config.embed_dim,
                    v.head_width,
                )?;
                Ok(VisualTower::ModifiedResNet(Box::new(ModifiedResNet::new(
                    p, &resnet,
                ))))
            }
        }
    }

    /// Checkpoints a ViT's (or timm trunk's) blocks; a ModifiedResNet ignores it,
    /// as OpenCLIP's does.
    pub fn set_grad_checkpointing(&mut self, enable: bool) {
        match self {
            VisualTower::VisionTransformer(vit) => vit.set_grad_checkpointing(enable),
            VisualTower::Timm(timm) => timm.set_grad_checkpointing(enable),
            VisualTower::ModifiedResNet(_) => {}
        }
    }

    /// `--use-bn-sync`: a ModifiedResNet's batch norms normalise with every
    /// rank's statistics in train mode; a ViT (native or timm) has no batch norm to convert.
    pub fn synchronise_batch_norms(&mut self, group: Arc<ProcessGroup>) {
        match self {
            VisualTower::VisionTransformer(_) | VisualTower::Timm(_) => {}
            VisualTower::ModifiedResNet(resnet) => resnet.synchronise_batch_norms(group),
        }
    }

    /// Features and tokens, for CoCa; only a ViT image tower has tokens.
    pub fn forward_with_tokens(&self, images: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        match self {
            VisualTower::VisionTransformer(vit) => Ok(vit.forward_with_tokens(images, train)),
            VisualTower::ModifiedResNet(_) => {
                bail!("a ModifiedResNet image tower has no output tokens for a text decoder")
            }
            VisualTower::Timm(_) => {
                bail!("clipflow's timm image towers give no output tokens for a text decoder")
            }
        }
    }

    /// Image features; fails only when a synchronised batch norm's
    /// statistics cannot cross the ranks.
    pub fn forward(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            VisualTower::VisionTransformer(vit) => Ok(vit.forward_t(images, train)),
            VisualTower::ModifiedResNet(resnet) => resnet.forward(images, train),
            VisualTower::Timm(timm) => Ok(timm.forward_t(images, train)),
        }
    }
}
