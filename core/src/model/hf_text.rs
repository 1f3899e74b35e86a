//! OpenCLIP's `HFTextEncoder`, the text tower (under `text.`) of a config
//! with an `hf_model_name`: the HuggingFace model as `transformer` (its own
//! parameter names), OpenCLIP's pooler (`hf_pooler_type`: the mean of the
//! real tokens, or the first token, through the model's `pooler` where it
//! has one), then `proj` (`hf_proj_type`: `proj` linear, `proj.0` and
//! `proj.2` around a GELU for mlp, or nothing). The architecture is the
//! model's `config.json`, read from the local HuggingFace hub cache as
//! OpenCLIP's `AutoConfig.from_pretrained` reads it; with
//! `hf_model_pretrained` (the default) the model's own weights come from
//! the same cache, as `AutoModel.from_pretrained` loads them. clipflow
//! builds roberta and xlm-roberta (`hf_roberta.rs`), mt5 (`hf_t5.rs`) and
//! nllb (`hf_m2m100.rs`) natively.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use tch::nn::{self, Module, VarStore};
use tch::{Kind, Tensor};

use super::config::ModelConfig;
use super::hf_m2m100::{M2M100Config, M2M100Encoder};
use super::hf_roberta::{RobertaConfig, RobertaModel, RobertaOutput};
use super::hf_t5::{T5Config, T5Encoder};
use super::load::load_subset;
use super::transformer::{
    linear_parameters, merge_heads, normal_linear, shallow_clone_linear, split_heads, torch_linear,
};
use crate::hf_hub::HubCache;
use crate::weights::read_weights;

/// What clipflow reads of a HuggingFace text model's `config.json`, by
/// its `model_type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "model_type")]
pub enum HfTextModelConfig {
    #[serde(rename = "roberta", alias = "xlm-roberta")]
    Roberta(RobertaConfig),
    #[serde(rename = "mt5")]
    Mt5(T5Config),
    #[serde(rename = "m2m_100")]
    M2M100(M2M100Config),
}

/// The HuggingFace model types clipflow builds.
const BUILT_MODEL_TYPES: [&str; 4] = ["roberta", "xlm-roberta", "mt5", "m2m_100"];

/// Whether clipflow builds the HuggingFace model `name` (`ORG/NAME` or
/// `NAME`), judged by its name when its `config.json` has not been read:
/// the roberta, xlm-roberta, mt5 and nllb families.
pub fn builds_model_named(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    ["roberta-", "xlm-roberta-", "mt5-", "nllb-"]
        .iter()
        .any(|family| base.starts_with(family))
}

impl HfTextModelConfig {
    /// `config.json` of `repo` in the hub cache.
    pub fn read(hub: &HubCache, repo: &str) -> Result<Self> {
        let path = hub.file(repo, "config.json")?;
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let raw: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
        let model_type = raw["model_type"].as_str().unwrap_or_default().to_string();
        if !BUILT_MODEL_TYPES.contains(&model_type.as_str()) {
            bail!(
                "its text tower is the HuggingFace model `{repo}` (model_type `{model_type}`), \
                 which clipflow does not build yet (it builds {})",
                BUILT_MODEL_TYPES.join(", ")
            );
        }
        let config: HfTextModelConfig = serde_json::from_value(raw)
            .with_context(|| format!("{}: reading the {model_type} config", path.display()))?;
        match &config {
            HfTextModelConfig::Roberta(roberta) => roberta.check(repo)?,
            HfTextModelConfig::Mt5(t5) => t5.check(repo)?,
            HfTextModelConfig::M2M100(m2m) => m2m.check(repo)?,
        }
        Ok(config)
    }

    /// The width of the model's token outputs.
    pub fn width(&self) -> i64 {
        match self {
            HfTextModelConfig::Roberta(roberta) => roberta.hidden_size,
            HfTextModelConfig::Mt5(t5) => t5.d_model,
            HfTextModelConfig::M2M100(m2m) => m2m.d_model,
        }
    }

    pub fn pad_token_id(&self) -> i64 {
        match self {
            HfTextModelConfig::Roberta(roberta) => roberta.pad_token_id,
            HfTextModelConfig::Mt5(t5) => t5.pad_token_id,
            HfTextModelConfig::M2M100(m2m) => m2m.pad_token_id,
        }
    }

    /// A checkpoint tensor's name as the tower's base model names it, or
    /// None for a tensor the base model does not have: a roberta task
    /// model's `roberta.` prefix dropped and old `LayerNorm.gamma`/`beta`
    /// renamed; an mt5 model's `encoder.` kept (without the prefix), its
    /// `shared` embedding as `embed_tokens`.
    fn base_model_name(&self, name: &str) -> Option<String> {
        match self {
            HfTextModelConfig::Roberta(_) => {
                let name = name.strip_prefix("roberta.").unwrap_or(name);
                Some(
                    name.replace("LayerNorm.gamma", "LayerNorm.weight")
                        .replace("LayerNorm.beta", "LayerNorm.bias"),
                )
            }
            HfTextModelConfig::Mt5(_) if name == "shared.weight" => {
                Some("embed_tokens.weight".into())
            }
            HfTextModelConfig::Mt5(_) => name.strip_prefix("encoder.").map(String::from),
            HfTextModelConfig::M2M100(_) => match name.strip_prefix("model.").unwrap_or(name) {
                "shared.weight" => Some("embed_tokens.weight".into()),
                name => name.strip_prefix("encoder.").map(String::from),
            },
        }
    }

    /// What OpenCLIP's `HFTextEncoder.lock` walks to lock all but the last
    /// layers: the embeddings' name prefix, then each layer's, under
    /// `text.transformer.`; None for nllb, whose entry in OpenCLIP's
    /// architecture table names no layers (OpenCLIP can lock it whole
    /// only).
    pub fn lock_modules(&self) -> Option<Vec<String>> {
        let (embeddings, layer, layers) = match self {
            HfTextModelConfig::Roberta(roberta) => {
                ("embeddings.", "encoder.layer.", roberta.num_hidden_layers)
            }
            HfTextModelConfig::Mt5(t5) => ("embed_tokens.", "block.", t5.num_layers),
            HfTextModelConfig::M2M100(_) => return None,
        };
        let modules = std::iter::once(embeddings.to_string())
            .chain((0..layers).map(|i| format!("{layer}{i}.")))
            .collect();
        Some(modules)
    }
}

/// The self-attention of HuggingFace's encoders: separate query, key,
/// value and output projections (each model names them its own way), the
/// heads attending under a mask, with dropout on the attention
/// probabilities while training.
#[derive(Debug)]
pub(super) struct HfSelfAttention {
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    out: nn::Linear,
    heads: i64,
    /// The scale of the scores (None: 1 / sqrt(head_dim)).
    scale: Option<f64>,
    dropout: f64,
}

/// Where a model keeps its attention's projections, and their shape.
pub(super) struct AttentionLayout<'a> {
    pub(super) q: nn::Path<'a>,
    pub(super) k: nn::Path<'a>,
    pub(super) v: nn::Path<'a>,
    pub(super) out: nn::Path<'a>,
    pub(super) dim: i64,
    /// heads x head_dim.
    pub(super) inner: i64,
    pub(super) heads: i64,
    pub(super) bias: bool,
    pub(super) scale: Option<f64>,
    pub(super) dropout: f64,
}

impl HfSelfAttention {
    pub(super) fn new(layout: AttentionLayout) -> Self {
        let (dim, inner, bias) = (layout.dim, layout.inner, layout.bias);
        HfSelfAttention {
            q: normal_linear(layout.q, dim, inner, bias),
            k: normal_linear(layout.k, dim, inner, bias),
            v: normal_linear(layout.v, dim, inner, bias),
            out: normal_linear(layout.out, inner, dim, bias),
            heads: layout.heads,
            scale: layout.scale,
            dropout: layout.dropout,
        }
    }

    /// `mask` [N or 1, 1 or heads, L, L]-broadcastable: true where a key may
    /// be attended to, or a float bias added to the scores.
    pub(super) fn forward_t(&self, x: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let q = split_heads(&self.q.forward(x), self.heads);
        let k = split_heads(&self.k.forward(x), self.heads);
        let v = split_heads(&self.v.forward(x), self.heads);
        let mask = if mask.kind() == Kind::Bool {
            mask.shallow_clone()
        } else {
            mask.to_kind(q.kind())
        };
        let dropout = if train { self.dropout } else { 0.0 };
        let attended = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            Some(mask),
            dropout,
            false,
            self.scale,
            false,
        );
        self.out.forward(&merge_heads(&attended))
    }

    pub(super) fn parameters(&self) -> Vec<&Tensor> {
        [&self.q, &self.k, &self.v, &self.out]
            .into_iter()
            .flat_map(linear_parameters)
            .collect()
    }

    pub(super) fn shallow_clone(&self) -> Self {
        HfSelfAttention {
            q: shallow_clone_linear(&self.q),
            k: shallow_clone_linear(&self.k),
            v: shallow_clone_linear(&self.v),
            out: shallow_clone_linear(&self.out),
            heads: self.heads,
            scale: self.scale,
            dropout: self.dropout,
        }
    }
}

/// The model's transformer, by `model_type`.
#[derive(Debug)]
enum HfTransformer {
    Roberta(RobertaModel),
    Mt5(T5Encoder),
    M2M100(M2M100Encoder),
}

/// OpenCLIP's pooler of the model's outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HfPooler {
    /// `mean_pooler`: the mean over the real (non-padding) tokens.
    Mean,
    /// `cls_pooler`: the model's `pooler` output on the first token.
    Cls,
    /// `cls_last_hidden_state_pooler`: the first token's output.
    ClsLastHiddenState,
}

impl HfPooler {
    fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "mean_pooler" => HfPooler::Mean,
            "cls_pooler" => HfPooler::Cls,
            "cls_last_hidden_state_pooler" => HfPooler::ClsLastHiddenState,
            "max_pooler" => bail!(
                "hf_pooler_type 'max_pooler': OpenCLIP 3.3.0's max pooler fails on its own \
                 attention mask (masked_fill of a long mask), so clipflow does not offer it"
            ),
            other => bail!(
                "hf_pooler_type '{other}': OpenCLIP's are mean_pooler, cls_pooler and \
                 cls_last_hidden_state_pooler"
            ),
        })
    }
}

/// `proj` after the pooler.
#[derive(Debug)]
enum HfProjection {
    Identity,
    Linear(nn::Linear),
    Mlp(nn::Linear, nn::Linear),
}

/// OpenCLIP's `HFTextEncoder` with the module tree of its checkpoints.
#[derive(Debug)]
pub struct HfTextEncoder {
    transformer: HfTransformer,
    pooler: HfPooler,
    proj: HfProjection,
    pad_id: i64,
}

impl HfTextEncoder {
    pub fn new(p: nn::Path, config: &ModelConfig) -> Result<Self> {
        let t = &config.text_cfg;
        let name = t.hf_model_name.as_deref().unwrap_or_default();
        let hf = t.hf_model_config.as_ref().with_context(|| {
            format!("the config.json of the HuggingFace model `{name}` has not been read from the hub cache")
        })?;
        let pooler = HfPooler::parse(&t.hf_pooler_type)?;
        let width = hf.width();
        let output = config.embed_dim;
        let proj = match t.hf_proj_type.as_deref() {
            None if width == output => HfProjection::Identity,
            None => bail!(
                "hf_proj_type null: the HuggingFace model `{name}` is {width} wide, not the \
                 config's embed_dim {output}, so it needs a projection ('linear' or 'mlp')"
            ),
            Some("linear") => HfProjection::Linear(torch_linear(&p / "proj", width, output, false)),
            Some("mlp") => {
                let hidden = (width + output) / 2;
                HfProjection::Mlp(
                    torch_linear(&p / "proj" / "0", width, hidden, false),
                    torch_linear(&p / "proj" / "2", hidden, output, false),
                )
            }
            Some(other) => bail!("hf_proj_type '{other}': OpenCLIP takes 'linear' or 'mlp'"),
        };
        let transformer = match hf {
            HfTextModelConfig::Roberta(roberta) => HfTransformer::Roberta(RobertaModel::new(
                &p / "transformer",
                roberta,
                pooler == HfPooler::Cls,
            )),
            HfTextModelConfig::Mt5(t5) => {
                HfTransformer::Mt5(T5Encoder::new(&p / "transformer", t5))
            }
            HfTextModelConfig::M2M100(m2m) => {
                HfTransformer::M2M100(M2M100Encoder::new(&p / "transformer", m2m))
            }
        };
        Ok(HfTextEncoder {
            transformer,
            pooler,
            proj,
            pad_id: hf.pad_token_id(),
        })
    }

    pub fn set_grad_checkpointing(&mut self, enable: bool) {
        match &mut self.transformer {
            HfTransformer::Roberta(model) => model.set_grad_checkpointing(enable),
            HfTransformer::Mt5(model) => model.set_grad_checkpointing(enable),
            HfTransformer::M2M100(model) => model.set_grad_checkpointing(enable),
        }
    }

    /// Token ids [N, L] to features [N, embed_dim] (not normalised);
    /// padding (the model's `pad_token_id`) is masked out.
    pub fn forward_t(&self, text: &Tensor, train: bool) -> Tensor {
        let mask = text.ne(self.pad_id);
        let out = match &self.transformer {
            HfTransformer::Roberta(model) => model.forward_t(text, &mask, train),
            HfTransformer::Mt5(model) => RobertaOutput {
                last_hidden_state: model.forward_t(text, &mask, train),
                pooler_output: None,
            },
            HfTransformer::M2M100(model) => RobertaOutput {
                last_hidden_state: model.forward_t(text, &mask, train),
                pooler_output: None,
            },
        };
        let x = &out.last_hidden_state;
        let pooled = match (self.pooler, &out.pooler_output) {
            (HfPooler::Mean, _) => {
                let weights = mask.to_kind(x.kind()).unsqueeze(-1);
                (x * &weights).sum_dim_intlist(1, false, None)
                    / weights.sum_dim_intlist(1, false, None)
            }
            (HfPooler::Cls, Some(pooled)) => pooled.shallow_clone(),
            (HfPooler::Cls | HfPooler::ClsLastHiddenState, _) => x.select(1, 0),
        };
        match &self.proj {
            HfProjection::Identity => pooled,
            HfProjection::Linear(proj) => proj.forward(&pooled),
            HfProjection::Mlp(fc1, fc2) => fc2.forward(&fc1.forward(&pooled).gelu("none")),
        }
    }
}

/// A HuggingFace text tower with `hf_model_pretrained` (the default) starts
/// from the model's own weights in the hub cache, as OpenCLIP's
/// `AutoModel.from_pretrained` does; other towers and models are left as
/// they are.
pub fn load_pretrained(vs: &VarStore, config: &ModelConfig, hub: &HubCache) -> Result<()> {
    let text = &config.text_cfg;
    let (Some(repo), Some(hf), true) = (
        &text.hf_model_name,
        &text.hf_model_config,
        text.hf_model_pretrained,
    ) else {
        return Ok(());
    };
    let path = pretrained_weights_file(hub, repo)?;
    let prefix = "text.";
    let wanted: Vec<String> = vs
        .variables()
        .into_keys()
        .filter(|name| name.starts_with(&format!("{prefix}transformer.")))
        .collect();
    let tensors = rename_pretrained(read_weights(&path)?, prefix, hf, &wanted, &path)?;
    load_subset(vs, &tensors, &path.display().to_string())
}

/// The weights file of `repo` in the hub cache that `from_pretrained`
/// reads: `model.safetensors`, else `pytorch_model.bin`.
fn pretrained_weights_file(hub: &HubCache, repo: &str) -> Result<std::path::PathBuf> {
    let snapshot = hub.snapshot(repo)?;
    for file in ["model.safetensors", "pytorch_model.bin"] {
        if snapshot.join(file).is_file() {
            return Ok(snapshot.join(file));
        }
    }
    bail!(
        "the hub cache has {repo} but not its weights (model.safetensors or pytorch_model.bin in {}); \
         fetch them with `hf download {repo} model.safetensors`, or start from --pretrained \
         weights (which replace them)",
        snapshot.display()
    )
}

/// The HuggingFace checkpoint's `tensors` under OpenCLIP's names
/// (`prefix` + `transformer.` + the base model's), as `from_pretrained`
/// maps them ([`HfTextModelConfig::base_model_name`]), leaving out what the
/// tower does not have (a task head, a decoder, a pooler it does not use,
/// `position_ids`). `wanted` lists the tower's variable names; a wanted one
/// the file lacks is an error naming `source`, except the pooler, which
/// `from_pretrained` initialises anew.
fn rename_pretrained(
    tensors: Vec<(String, Tensor)>,
    prefix: &str,
    hf: &HfTextModelConfig,
    wanted: &[String],
    source: &Path,
) -> Result<Vec<(String, Tensor)>> {
    let mut renamed: BTreeMap<String, Tensor> = BTreeMap::new();
    for (name, tensor) in tensors {
        let Some(name) = hf.base_model_name(&name) else {
            continue;
        };
        let full = format!("{prefix}transformer.{name}");
        if wanted.contains(&full) {
            renamed.insert(full, tensor);
        }
    }
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|name| !renamed.contains_key(*name) && !name.contains(".pooler."))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{}: the HuggingFace weights lack {} of the text tower's tensors, among them {}",
            source.display(),
            missing.len(),
            missing[0]
        );
    }
    Ok(renamed
        .into_iter()
        .map(|(name, tensor)| (name, tensor.to_kind(Kind::Float)))
        .collect())
}
