//! HuggingFace's `M2M100Encoder` (the encoder of `M2M100Model`, which NLLB
//! is), the `transformer` of OpenCLIP's `HFTextEncoder` for the nllb
//! configs, with HuggingFace's parameter names: `embed_tokens` (scaled by
//! the square root of the width), sinusoidal positions counted from the
//! padding token (computed, not stored), `layers.N` (pre-norm:
//! `self_attn_layer_norm`, `self_attn.q_proj`/`k_proj`/`v_proj`/`out_proj`,
//! `final_layer_norm`, `fc1`, `fc2`; skipped at random while training with
//! `encoder_layerdrop`) and `layer_norm`. Sizes come from the
//! model's `config.json` ([`M2M100Config`]).

use anyhow::{bail, Result};
use serde::Deserialize;
use tch::nn::{self, Init, Module};
use tch::{Kind, Tensor};

use super::hf_text::{AttentionLayout, HfSelfAttention};
use super::transformer::{
    layer_norm, linear_parameters, normal_linear, shallow_clone_linear, LayerNorm,
};
use crate::activation_checkpoint::checkpoint_block;

/// What clipflow reads of an nllb (`m2m_100`) `config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct M2M100Config {
    pub vocab_size: i64,
    pub d_model: i64,
    pub encoder_layers: i64,
    pub encoder_attention_heads: i64,
    pub encoder_ffn_dim: i64,
    pub activation_function: String,
    pub dropout: f64,
    pub attention_dropout: f64,
    pub activation_dropout: f64,
    #[serde(default)]
    pub encoder_layerdrop: f64,
    pub scale_embedding: bool,
    pub pad_token_id: i64,
}

impl M2M100Config {
    pub fn check(&self, repo: &str) -> Result<()> {
        if !matches!(self.activation_function.as_str(), "relu" | "gelu") {
            bail!(
                "the HuggingFace model `{repo}`: activation_function `{}` (clipflow builds relu and gelu)",
                self.activation_function
            );
        }
        Ok(())
    }
}

/// The sinusoidal embedding of positions 0..count [count, dim]
/// (tensor2tensor's: the sines, then the cosines), position `padding` zero.
fn sinusoidal_positions(count: i64, dim: i64, padding: i64) -> Tensor {
    let half = dim / 2;
    let cpu = (Kind::Int64, tch::Device::Cpu);
    let step = (10000f64).ln() / (half - 1) as f64;
    let frequencies = (Tensor::arange(half, cpu).to_kind(Kind::Float) * -step).exp();
    let angles =
        Tensor::arange(count, cpu).to_kind(Kind::Float).unsqueeze(1) * frequencies.unsqueeze(0);
    let mut table = Tensor::cat(&[angles.sin(), angles.cos()], 1);
    if dim % 2 == 1 {
        table = Tensor::cat(
            &[
                table,
                Tensor::zeros([count, 1], (Kind::Float, tch::Device::Cpu)),
            ],
            1,
        );
    }
    let _ = table.get(padding).zero_();
    table
}

/// One `layers.N`: pre-norm self-attention and feed-forward.
#[derive(Debug)]
struct M2M100Layer {
    self_attn_layer_norm: LayerNorm,
    self_attn: HfSelfAttention,
    final_layer_norm: LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    gelu: bool,
    dropout: f64,
    activation_dropout: f64,
}

impl M2M100Layer {
    fn new(p: nn::Path, config: &M2M100Config) -> Self {
        let dim = config.d_model;
        let attn = &p / "self_attn";
        M2M100Layer {
            self_attn_layer_norm: layer_norm(&p / "self_attn_layer_norm", dim, None),
            self_attn: HfSelfAttention::new(AttentionLayout {
                q: &attn / "q_proj",
                k: &attn / "k_proj",
                v: &attn / "v_proj",
                out: &attn / "out_proj",
                dim,
                inner: dim,
                heads: config.encoder_attention_heads,
                bias: true,
                scale: None,
                dropout: config.attention_dropout,
            }),
            final_layer_norm: layer_norm(&p / "final_layer_norm", dim, None),
            fc1: normal_linear(&p / "fc1", dim, config.encoder_ffn_dim, true),
            fc2: normal_linear(&p / "fc2", config.encoder_ffn_dim, dim, true),
            gelu: config.activation_function == "gelu",
            dropout: config.dropout,
            activation_dropout: config.activation_dropout,
        }
    }

    /// `keys` [N, 1, 1, L] is true where a token may be attended to.
    fn forward_t(&self, x: &Tensor, keys: &Tensor, train: bool) -> Tensor {
        let normed = self.self_attn_layer_norm.forward(x);
        let attended = self.self_attn.forward_t(&normed, keys, train);
        let x = x + attended.dropout(self.dropout, train);
        let hidden = self.fc1.forward(&self.final_layer_norm.forward(&x));
        let hidden = if self.gelu {
            hidden.gelu("none")
        } else {
            hidden.relu()
        };
        let out = self
            .fc2
            .forward(&hidden.dropout(self.activation_dropout, train));
        &x + out.dropout(self.dropout, train)
    }

    fn parameters(&self) -> Vec<&Tensor> {
        let mut params = self.self_attn.parameters();
        params.extend(linear_parameters(&self.fc1));
        params.extend(linear_parameters(&self.fc2));
        params.extend(self.self_attn_layer_norm.parameters());
        params.extend(self.final_layer_norm.parameters());
        params
    }

    fn shallow_clone(&self) -> Self {
        M2M100Layer {
            self_attn_layer_norm: self.self_attn_layer_norm.shallow_clone(),
            self_attn: self.self_attn.shallow_clone(),
            final_layer_norm: self.final_layer_norm.shallow_clone(),
            fc1: shallow_clone_linear(&self.fc1),
            fc2: shallow_clone_linear(&self.fc2),
            gelu: self.gelu,
            dropout: self.dropout,
            activation_dropout: self.activation_dropout,
        }
    }
}

/// HuggingFace's `M2M100Encoder` with the module tree of its checkpoints.
#[derive(Debug)]
pub struct M2M100Encoder {
    embed_tokens: nn::Embedding,
    embed_scale: f64,
    layers: Vec<M2M100Layer>,
    layer_norm: LayerNorm,
    pad_id: i64,
    width: i64,
    dropout: f64,
    /// The probability of skipping each layer while training.
    layerdrop: f64,
    grad_checkpointing: bool,
}

impl M2M100Encoder {
    pub fn new(p: nn::Path, config: &M2M100Config) -> Self {
        let dim = config.d_model;
        let embed_tokens = nn::embedding(
            &p / "embed_tokens",
            config.vocab_size,
            dim,
            nn::EmbeddingConfig {
                ws_init: Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
                padding_idx: config.pad_token_id,
                ..Default::default()
            },
        );
        M2M100Encoder {
            embed_tokens,
            embed_scale: if config.scale_embedding {
                (dim as f64).sqrt()
            } else {
                1.0
            },
            layers: (0..config.encoder_layers)
                .map(|i| M2M100Layer::new(&p / "layers" / i, config))
                .collect(),
            layer_norm: layer_norm(&p / "layer_norm", dim, None),
            pad_id: config.pad_token_id,
            width: dim,
            dropout: config.dropout,
            layerdrop: config.encoder_layerdrop,
            grad_checkpointing: false,
        }
    }

    /// The layers run under activation checkpointing while training
    /// (HuggingFace's `gradient_checkpointing_enable`).
    pub fn set_grad_checkpointing(&mut self, enable: bool) {
        self.grad_checkpointing = enable;
    }

    /// Token ids [N, L] and `attention_mask` [N, L] (true for real tokens)
    /// to every token's output [N, L, d_model].
    pub fn forward_t(&self, ids: &Tensor, attention_mask: &Tensor, train: bool) -> Tensor {
        let (n, l) = ids.size2().expect("token ids are [N, L]");
        let real = ids.ne(self.pad_id).to_kind(Kind::Int64);
        let positions = real.cumsum(1, Kind::Int64) * &real + self.pad_id;
        let table = sinusoidal_positions(self.pad_id + l + 1, self.width, self.pad_id)
            .to_device(ids.device());
        let embedded = self.embed_tokens.forward(ids) * self.embed_scale;
        let x = (&embedded
            + table
                .index_select(0, &positions.flatten(0, 1))
                .reshape([n, l, -1])
                .to_kind(embedded.kind()))
        .dropout(self.dropout, train);
        let keys = attention_mask.reshape([n, 1, 1, l]);
        let mut x = x;
        for layer in &self.layers {
            // HuggingFace's LayerDrop: one uniform draw per layer.
            if train
                && self.layerdrop > 0.0
                && Tensor::rand([], (Kind::Float, tch::Device::Cpu)).double_value(&[])
                    < self.layerdrop
            {
                continue;
            }
            x = if self.grad_checkpointing && train {
                let owned = (layer.shallow_clone(), keys.shallow_clone());
                checkpoint_block(&x, &layer.parameters(), owned, |(layer, keys), x| {
                    layer.forward_t(x, keys, true)
                })
            } else {
                layer.forward_t(&x, &keys, train)
            };
        }
        self.layer_norm.forward(&x)
    }
}
