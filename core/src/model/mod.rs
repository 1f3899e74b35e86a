//! Models whose module tree and parameter names mirror OpenCLIP's state_dict,
//! so a VarStore's variable names are OpenCLIP's keys
//! (`visual.transformer.resblocks.0.attn.in_proj_weight`, `logit_scale`, ...).

mod batch_norm;
pub mod clip;
pub mod config;
pub mod hf_m2m100;
pub mod hf_roberta;
pub mod hf_t5;
pub mod hf_text;
pub mod load;
pub mod modified_resnet;
pub mod multimodal_transformer;
pub mod precision;
pub mod pretrained;
pub mod text_transformer;
pub mod timm_convnext;
pub mod timm_eva;
pub mod timm_model;
pub mod timm_vision_transformer;
pub mod transformer;
pub mod vision_transformer;
pub mod visual;

pub use clip::{CaptionOutput, Clip, ClipOutput};
pub use config::{ImageSize, ModelConfig, ModelOverrides};
