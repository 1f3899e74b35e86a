//! The image tower under `visual.`: a ViT, or (for the RN configs) a
//! ModifiedResNet, chosen by the shape of the config's `layers`.

use anyhow::Result;
use tch::nn;
use tch::Tensor;

use super::config::{ModelConfig, VisionLayers};
use super::vision_transformer::VisionTransformer;

#[derive(Debug)]
pub enum VisualTower {
    VisionTransformer(VisionTransformer),
}

impl VisualTower {
    pub fn new(p: nn::Path, config: &ModelConfig) -> Result<Self> {
        match config.vision_cfg.layers {
            VisionLayers::Transformer(_) => Ok(VisualTower::VisionTransformer(
                VisionTransformer::new(p, config)?,
            )),
            VisionLayers::ResNet(_) => {
                anyhow::bail!("ModifiedResNet image towers are not built yet")
            }
        }
    }

    pub fn forward_t(&self, images: &Tensor, train: bool) -> Tensor {
        match self {
            VisualTower::VisionTransformer(vit) => vit.forward_t(images, train),
        }
    }
}
