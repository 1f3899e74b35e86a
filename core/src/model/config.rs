//! Model configs: OpenCLIP's architecture table (`configs.json`, generated from
//! the installed open_clip_torch by `scripts/gen_model_configs.py`), the
//! defaults of its `CLIPVisionCfg` / `CLIPTextCfg`, and the `--force-*`
//! overrides applied the way `open_clip.create_model` applies them.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::hf_text::HfTextModelConfig;
use crate::hf_hub::HubCache;

const CONFIGS_JSON: &str = include_str!("configs.json");

/// One architecture as OpenCLIP's model_configs describe it.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelConfig {
    pub embed_dim: i64,
    pub vision_cfg: VisionConfig,
    pub text_cfg: TextConfig,
    #[serde(default)]
    pub quick_gelu: bool,
    #[serde(default)]
    pub custom_text: bool,
    #[serde(default)]
    pub init_logit_bias: Option<f64>,
    /// OpenCLIP's `init_logit_scale` model argument (ln(1/0.07) when
    /// absent); `--siglip` training sets ln 10.
    #[serde(default)]
    pub init_logit_scale: Option<f64>,
    /// CoCa's text decoder (`text_decoder.`); absent for CLIP models.
    /// OpenCLIP's `MultimodalCfg` extends `CLIPTextCfg`; the decoder reads
    /// its `context_length`, `width`, `heads`, `layers`, `mlp_ratio` and
    /// `ls_init_value`.
    #[serde(default)]
    pub multimodal_cfg: Option<TextConfig>,
}

/// `layers` is an int for a ViT and four ints for a ModifiedResNet.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum VisionLayers {
    Transformer(i64),
    ResNet([i64; 4]),
}

/// An int or an (height, width) pair, as OpenCLIP accepts for image sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ImageSize {
    Square(i64),
    HeightWidth([i64; 2]),
}

impl ImageSize {
    pub fn height_width(self) -> (i64, i64) {
        match self {
            ImageSize::Square(s) => (s, s),
            ImageSize::HeightWidth([h, w]) => (h, w),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct NormKwargs {
    pub eps: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct ActKwargs {
    pub approximate: Option<String>,
}

fn default_head_width() -> i64 {
    64
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_patch_size() -> Option<i64> {
    Some(16)
}
fn default_image_size() -> ImageSize {
    ImageSize::Square(224)
}
fn default_attn_pooler_queries() -> i64 {
    256
}
fn default_attn_pooler_heads() -> i64 {
    8
}
fn default_pos_embed_type() -> String {
    "learnable".into()
}
fn default_vision_pool_type() -> String {
    "tok".into()
}
fn default_vision_layers() -> VisionLayers {
    VisionLayers::Transformer(12)
}
fn default_vision_width() -> i64 {
    768
}

/// OpenCLIP's `CLIPVisionCfg`, with its defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    #[serde(default = "default_vision_layers")]
    pub layers: VisionLayers,
    #[serde(default = "default_vision_width")]
    pub width: i64,
    #[serde(default = "default_head_width")]
    pub head_width: i64,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default = "default_patch_size")]
    pub patch_size: Option<i64>,
    #[serde(default = "default_image_size")]
    pub image_size: ImageSize,
    #[serde(default)]
    pub ls_init_value: Option<f64>,
    #[serde(default)]
    pub patch_dropout: f64,
    #[serde(default)]
    pub attentional_pool: bool,
    #[serde(default = "default_attn_pooler_queries")]
    pub attn_pooler_queries: i64,
    #[serde(default = "default_attn_pooler_heads")]
    pub attn_pooler_heads: i64,
    #[serde(default)]
    pub no_ln_pre: bool,
    #[serde(default = "default_pos_embed_type")]
    pub pos_embed_type: String,
    #[serde(default)]
    pub final_ln_after_pool: bool,
    #[serde(default = "default_vision_pool_type")]
    pub pool_type: String,
    #[serde(default)]
    pub output_tokens: bool,
    #[serde(default)]
    pub act_kwargs: Option<ActKwargs>,
    #[serde(default)]
    pub norm_kwargs: Option<NormKwargs>,
    #[serde(default)]
    pub timm_model_name: Option<String>,
    #[serde(default)]
    pub timm_model_pretrained: bool,
    #[serde(default = "default_timm_pool")]
    pub timm_pool: String,
    /// `null` in a config is Python's None, which OpenCLIP treats as `""`.
    #[serde(default = "default_timm_proj", deserialize_with = "null_as_empty")]
    pub timm_proj: String,
    #[serde(default)]
    pub timm_proj_bias: bool,
    #[serde(default)]
    pub timm_drop: f64,
    #[serde(default)]
    pub timm_drop_path: Option<f64>,
}

fn default_timm_pool() -> String {
    "avg".into()
}
fn default_timm_proj() -> String {
    "linear".into()
}
fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Option::<String>::deserialize(d).map(Option::unwrap_or_default)
}

fn default_context_length() -> i64 {
    77
}
fn default_vocab_size() -> i64 {
    49408
}
fn default_text_width() -> i64 {
    512
}
fn default_text_heads() -> i64 {
    8
}
fn default_text_layers() -> i64 {
    12
}
fn default_eos_id() -> i64 {
    2
}
fn default_text_pool_type() -> String {
    "argmax".into()
}
fn default_proj_type() -> String {
    "linear".into()
}

/// OpenCLIP's `CLIPTextCfg`, with its defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct TextConfig {
    #[serde(default = "default_context_length")]
    pub context_length: i64,
    #[serde(default = "default_vocab_size")]
    pub vocab_size: i64,
    #[serde(default)]
    pub hf_tokenizer_name: Option<String>,
    #[serde(default)]
    pub tokenizer_kwargs: Option<serde_json::Value>,
    #[serde(default)]
    pub tokenizer_mode: Option<String>,
    #[serde(default = "default_text_width")]
    pub width: i64,
    #[serde(default = "default_text_heads")]
    pub heads: i64,
    #[serde(default = "default_text_layers")]
    pub layers: i64,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default)]
    pub ls_init_value: Option<f64>,
    #[serde(default)]
    pub embed_cls: bool,
    #[serde(default)]
    pub pad_id: i64,
    #[serde(default = "default_eos_id")]
    pub eos_id: i64,
    #[serde(default)]
    pub no_causal_mask: bool,
    #[serde(default = "default_text_pool_type")]
    pub pool_type: String,
    #[serde(default)]
    pub proj_bias: bool,
    #[serde(default = "default_proj_type")]
    pub proj_type: String,
    #[serde(default)]
    pub output_tokens: bool,
    #[serde(default)]
    pub act_kwargs: Option<ActKwargs>,
    #[serde(default)]
    pub norm_kwargs: Option<NormKwargs>,
    #[serde(default)]
    pub hf_model_name: Option<String>,
    /// `proj` after a HuggingFace text tower's pooler: linear, mlp (the
    /// default), or null for none.
    #[serde(default = "default_hf_proj_type")]
    pub hf_proj_type: Option<String>,
    #[serde(default = "default_hf_pooler_type")]
    pub hf_pooler_type: String,
    /// A HuggingFace text tower starts from the model's own weights. As in
    /// OpenCLIP's `create_model`, building a model for a command sets this
    /// (true unless `--pretrained` weights replace them), whatever the
    /// config file says.
    #[serde(default = "default_true")]
    pub hf_model_pretrained: bool,
    /// The HuggingFace model's `config.json`, once read from the hub cache
    /// ([`ModelConfig::read_hf_text_config`]).
    #[serde(skip)]
    pub hf_model_config: Option<HfTextModelConfig>,
}

fn default_hf_proj_type() -> Option<String> {
    Some("mlp".into())
}
fn default_hf_pooler_type() -> String {
    "mean_pooler".into()
}
fn default_true() -> bool {
    true
}

/// The `--force-*` model flags of `open_clip_train.main`.
#[derive(Debug, Clone, Default)]
pub struct ModelOverrides {
    pub force_quick_gelu: bool,
    pub force_custom_text: bool,
    pub force_patch_dropout: Option<f64>,
    pub force_image_size: Option<ImageSize>,
    pub force_context_length: Option<i64>,
}

fn all_configs() -> &'static BTreeMap<String, serde_json::Value> {
    static CONFIGS: OnceLock<BTreeMap<String, serde_json::Value>> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        serde_json::from_str(CONFIGS_JSON).expect("configs.json is generated valid JSON")
    })
}

/// Every architecture name OpenCLIP 3.3.0 knows, sorted.
pub fn model_names() -> impl Iterator<Item = &'static str> {
    all_configs().keys().map(String::as_str)
}

/// Why clipflow cannot build `name` yet, or None when it can.
pub fn unsupported_reason(config: &ModelConfig) -> Option<String> {
    if config.vision_cfg.timm_model_name.is_some() {
        if let Err(why) = super::timm_model::TimmPlan::of(config) {
            return Some(why.to_string());
        }
    }
    if let Some(hf) = &config.text_cfg.hf_model_name {
        if config.multimodal_cfg.is_some() {
            return Some(format!(
                "CoCa with the HuggingFace text tower `{hf}`: clipflow builds CoCa with its own \
                 text tower only"
            ));
        }
        if config.text_cfg.hf_model_config.is_none() && !super::hf_text::builds_model_named(hf) {
            return Some(format!(
                "its text tower is the HuggingFace model `{hf}`, which clipflow does not build yet \
                 (it builds roberta and xlm-roberta)"
            ));
        }
    }
    None
}

impl ModelConfig {
    /// Looks `name` up in OpenCLIP's table and applies the `--force-*` flags.
    /// The config of OpenCLIP model `name`, or, when `name` ends in `.json`,
    /// the config in that file (a model of one's own, in OpenCLIP's format).
    pub fn by_name(name: &str, overrides: &ModelOverrides) -> Result<Self> {
        if name.ends_with(".json") {
            let text = std::fs::read_to_string(name)
                .with_context(|| format!("--model {name}: reading the model config file"))?;
            return Self::from_json(&text, &format!("--model {name}"), overrides);
        }
        let raw = all_configs().get(name).with_context(|| {
            format!("--model: unknown model `{name}` (`clipflow models` lists the known ones)")
        })?;
        let config: ModelConfig = serde_json::from_value(raw.clone())
            .with_context(|| format!("reading the config of model `{name}`"))?;
        config.with_overrides(overrides)
    }

    /// Reads a config in OpenCLIP's model_configs JSON format (what
    /// `open_clip.add_model_config` registers); `source` names it in errors.
    pub fn from_json(text: &str, source: &str, overrides: &ModelOverrides) -> Result<Self> {
        let config: ModelConfig = serde_json::from_str(text)
            .with_context(|| format!("{source}: not a valid OpenCLIP model config"))?;
        config.with_overrides(overrides)
    }

    /// Reads the `config.json` of the config's HuggingFace text tower, if it
    /// has one, from the hub cache (offline), as OpenCLIP's
    /// `AutoConfig.from_pretrained` does; a model type clipflow does not
    /// build is an error naming it.
    pub fn read_hf_text_config(&mut self, hub: &HubCache) -> Result<()> {
        if let Some(name) = &self.text_cfg.hf_model_name {
            if self.text_cfg.hf_model_config.is_none() {
                self.text_cfg.hf_model_config = Some(HfTextModelConfig::read(hub, name)?);
            }
        }
        Ok(())
    }

    fn with_overrides(mut self, overrides: &ModelOverrides) -> Result<Self> {
        if overrides.force_quick_gelu {
            self.quick_gelu = true;
        }
        // A HuggingFace text tower makes the model a CustomTextCLIP in
        // OpenCLIP (its tower sits under `text.`).
        if overrides.force_custom_text || self.text_cfg.hf_model_name.is_some() {
            self.custom_text = true;
        }
        if let Some(p) = overrides.force_patch_dropout {
            if !(0.0..1.0).contains(&p) {
                bail!("--force-patch-dropout must be in [0, 1), got {p}");
            }
            self.vision_cfg.patch_dropout = p;
        }
        if let Some(size) = overrides.force_image_size {
            self.vision_cfg.image_size = size;
        }
        if let Some(len) = overrides.force_context_length {
            if len < 1 {
                bail!("--force-context-length must be positive, got {len}");
            }
            self.text_cfg.context_length = len;
        }
        Ok(self)
    }

    /// An error for architectures whose towers clipflow does not build yet.
    pub fn ensure_buildable(&self, name: &str) -> Result<()> {
        match unsupported_reason(self) {
            Some(why) => bail!("--model {name} is not supported yet: {why}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_config_parses() {
        for name in model_names() {
            ModelConfig::by_name(name, &ModelOverrides::default())
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
    }

    #[test]
    fn a_json_path_names_a_config_file() {
        let path =
            std::env::temp_dir().join(format!("clipflow-config-{}.json", std::process::id()));
        let mut raw = all_configs()["ViT-B-32"].clone();
        raw["embed_dim"] = 24.into();
        std::fs::write(&path, raw.to_string()).unwrap();
        let name = path.to_str().unwrap();
        let config = ModelConfig::by_name(name, &ModelOverrides::default()).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(config.embed_dim, 24);
        let missing = ModelConfig::by_name("no-such-dir/model.json", &ModelOverrides::default());
        assert!(format!("{:#}", missing.unwrap_err()).contains("no-such-dir/model.json"));
    }

    #[test]
    fn force_flags_override_the_table() {
        let overrides = ModelOverrides {
            force_quick_gelu: true,
            force_custom_text: true,
            force_patch_dropout: Some(0.5),
            force_image_size: Some(ImageSize::HeightWidth([336, 224])),
            force_context_length: Some(32),
        };
        let c = ModelConfig::by_name("ViT-B-32", &overrides).unwrap();
        assert!(c.quick_gelu && c.custom_text);
        assert_eq!(c.vision_cfg.patch_dropout, 0.5);
        assert_eq!(c.vision_cfg.image_size.height_width(), (336, 224));
        assert_eq!(c.text_cfg.context_length, 32);
    }

    #[test]
    fn unknown_and_unsupported_models_are_clear_errors() {
        let err = ModelConfig::by_name("ViT-Q-99", &Default::default()).unwrap_err();
        assert!(err.to_string().contains("unknown model `ViT-Q-99`"));
        let refused = |name: &str| {
            let config = ModelConfig::by_name(name, &Default::default()).unwrap();
            config.ensure_buildable(name).unwrap_err().to_string()
        };
        let err = refused("MobileCLIP-S1");
        assert!(err.contains("timm's `FastVit`"), "{err}");
        let err = refused("coca_roberta-ViT-B-32");
        assert!(
            err.contains("CoCa with the HuggingFace text tower"),
            "{err}"
        );
        for buildable in [
            "ViT-B-16-SigLIP",
            "EVA02-B-16",
            "roberta-ViT-B-32",
            "nllb-clip-base",
        ] {
            let config = ModelConfig::by_name(buildable, &Default::default()).unwrap();
            config.ensure_buildable(buildable).unwrap();
        }
    }
}
