//! What every subcommand needs to run a model: the `--device` and
//! `--precision` flags as OpenCLIP reads them, and building a model by name
//! with optional `--pretrained` weights (a pretrained tag found in the hub
//! cache, or a file) loaded strictly.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clipflow_core::hf_hub::HubCache;
use clipflow_core::model::hf_text;
use clipflow_core::model::load::load_strict;
use clipflow_core::model::precision::convert_weights_to_low_precision;
use clipflow_core::model::pretrained::{self, PretrainedTag};
use clipflow_core::model::{Clip, ModelConfig, ModelOverrides};
use clipflow_core::shim::AutocastGuard;
use clipflow_core::weights::read_weights;
use tch::nn::VarStore;
use tch::{Device, Kind};

/// `--device`: `cpu`, `cuda` or `cuda:N`. Like OpenCLIP, a CUDA device on a
/// host without CUDA falls back to the CPU (with a notice).
pub fn parse_device(flag: &str) -> Result<Device> {
    let device = match flag {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(index)) => Device::Cuda(index),
            _ => bail!("--device must be `cpu`, `cuda` or `cuda:N`, got `{flag}`"),
        },
    };
    if let Device::Cuda(index) = device {
        let available = tch::Cuda::device_count() as usize;
        if available == 0 {
            eprintln!("clipflow: --device {flag}: CUDA is not available, using the CPU");
            return Ok(Device::Cpu);
        }
        if index >= available {
            bail!("--device {flag}: this host has {available} CUDA device(s)");
        }
    }
    Ok(device)
}

/// How `--precision` runs a forward pass, as OpenCLIP defines the values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InferencePrecision {
    /// Weights and inputs in this dtype (`fp32`, `pure_bf16`, `pure_fp16`).
    Cast(Kind),
    /// fp32 weights under autocast to this dtype (`amp` = fp16,
    /// `amp_bf16` / `amp_bfloat16` = bf16).
    Autocast(Kind),
    /// Convolution, linear and projection weights and the inputs in this
    /// dtype, the rest fp32 (`bf16`, `fp16`).
    LowPrecisionWeights(Kind),
}

pub fn inference_precision(precision: &str) -> Result<InferencePrecision> {
    use InferencePrecision::*;
    match precision {
        "fp32" => Ok(Cast(Kind::Float)),
        "pure_bf16" => Ok(Cast(Kind::BFloat16)),
        "pure_fp16" => Ok(Cast(Kind::Half)),
        "amp" => Ok(Autocast(Kind::Half)),
        "amp_bf16" | "amp_bfloat16" => Ok(Autocast(Kind::BFloat16)),
        "bf16" => Ok(LowPrecisionWeights(Kind::BFloat16)),
        "fp16" => Ok(LowPrecisionWeights(Kind::Half)),
        other => bail!(
            "--precision must be one of amp, amp_bf16, amp_bfloat16, bf16, fp16, pure_bf16, pure_fp16, fp32; got `{other}`"
        ),
    }
}

impl InferencePrecision {
    /// The dtype inputs are cast to before the forward pass.
    pub fn input_kind(self) -> Kind {
        match self {
            InferencePrecision::Cast(kind) | InferencePrecision::LowPrecisionWeights(kind) => kind,
            InferencePrecision::Autocast(_) => Kind::Float,
        }
    }

    /// Runs `forward` without gradients under this precision on `device`.
    /// Puts the model's weights in this precision's dtypes.
    pub fn prepare_weights(self, vs: &mut VarStore) {
        match self {
            InferencePrecision::Cast(kind) => vs.set_kind(kind),
            InferencePrecision::LowPrecisionWeights(kind) => {
                convert_weights_to_low_precision(vs, kind)
            }
            InferencePrecision::Autocast(_) => {}
        }
    }

    /// The autocast dtype of the forward pass, if the precision autocasts.
    pub fn autocast(self) -> Option<Kind> {
        match self {
            InferencePrecision::Autocast(kind) => Some(kind),
            InferencePrecision::Cast(_) | InferencePrecision::LowPrecisionWeights(_) => None,
        }
    }

    pub fn run<T>(self, device: Device, forward: impl FnOnce() -> T) -> Result<T> {
        let _autocast = AutocastGuard::when(device, self.autocast())?;
        Ok(tch::no_grad(forward))
    }
}

/// A model built by name on `device`, with its VarStore and config.
pub struct LoadedModel {
    pub vs: VarStore,
    pub model: Clip,
    pub config: ModelConfig,
    /// The pretrained tag its weights came from, if `--pretrained` named one.
    pub tag: Option<&'static PretrainedTag>,
}

/// What `--pretrained TEXT` names for model `name`, as OpenCLIP reads it: a
/// pretrained tag of the model (its weights found in the hub cache `hub`),
/// else a weights file.
pub fn resolve_pretrained(
    name: &str,
    text: &str,
    hub: &HubCache,
) -> Result<(PathBuf, Option<&'static PretrainedTag>)> {
    if let Some(tag) = pretrained::tag(name, text) {
        let path = tag
            .weights_file(hub)
            .with_context(|| format!("--pretrained {text} (a pretrained tag of {name})"))?;
        return Ok((path, Some(tag)));
    }
    let path = Path::new(text);
    if !path.is_file() {
        let tags: Vec<&str> = pretrained::tags_of(name)
            .into_iter()
            .map(|(tag, _)| tag)
            .collect();
        let known = match tags.as_slice() {
            [] => format!("{name} has no pretrained tags"),
            tags => format!("the tags of {name} are {}", tags.join(", ")),
        };
        bail!("--pretrained {text}: not a file, nor a pretrained tag of {name} ({known}; `clipflow pretrained {name}` lists them)");
    }
    Ok((path.to_path_buf(), None))
}

/// Builds `--model name` and, when `pretrained` is given, loads its weights
/// (see [`build_model`]).
pub fn load_model(
    name: &str,
    overrides: &ModelOverrides,
    pretrained: Option<&str>,
    hub: &HubCache,
    device: Device,
) -> Result<LoadedModel> {
    let config = ModelConfig::by_name(name, overrides)?;
    build_model(name, config, pretrained, hub, device)
}

/// Builds model `name` from a config the caller may have adjusted
/// (training's `--siglip` initial logit scale and bias) and, when
/// `pretrained` names a tag or a file ([`resolve_pretrained`]), loads those
/// weights strictly: any missing, unexpected or misshapen tensor is an
/// error naming it. As in OpenCLIP, weights without a `logit_bias` give a
/// model that has one a bias of 0.
pub fn build_model(
    name: &str,
    mut config: ModelConfig,
    pretrained: Option<&str>,
    hub: &HubCache,
    device: Device,
) -> Result<LoadedModel> {
    // OpenCLIP's create_model, whatever the config says: a HuggingFace text
    // tower starts from the model's own weights, a timm image tower from
    // random ones (--pretrained-image is refused), unless --pretrained
    // weights replace them.
    if config.text_cfg.hf_model_name.is_some() {
        config.text_cfg.hf_model_pretrained = pretrained.is_none();
    }
    config.vision_cfg.timm_model_pretrained = false;
    config.ensure_buildable(name)?;
    config
        .read_hf_text_config(hub)
        .with_context(|| format!("building --model {name}"))?;
    let vs = VarStore::new(device);
    let model =
        Clip::new(&vs.root(), &config).with_context(|| format!("building --model {name}"))?;
    hf_text::load_pretrained(&vs, &config, hub)?;
    let mut tag = None;
    if let Some(text) = pretrained {
        let (path, pretrained_tag) = resolve_pretrained(name, text, hub)?;
        if let Some(pretrained_tag) = pretrained_tag {
            if pretrained_tag.quick_gelu != config.quick_gelu {
                tracing::warn!(
                    "QuickGELU mismatch between the model config (quick_gelu={}) and pretrained tag '{text}' (quick_gelu={})",
                    config.quick_gelu,
                    pretrained_tag.quick_gelu
                );
            }
        }
        tag = pretrained_tag;
        let mut tensors = read_weights(&path)?;
        let has = |key: &str| tensors.iter().any(|(name, _)| name == key);
        if !has("logit_bias") && has("logit_scale") {
            if let Some(bias) = vs.variables().get("logit_bias") {
                tensors.push((
                    "logit_bias".into(),
                    bias.zeros_like().to_device(Device::Cpu),
                ));
            }
        }
        load_strict(&vs, &tensors, &format!("--pretrained {}", path.display()))?;
    }
    Ok(LoadedModel {
        vs,
        model,
        config,
        tag,
    })
}
