//! HuggingFace's `MT5Stack` as an encoder (the `.encoder` of `MT5Model`),
//! the `transformer` of OpenCLIP's `HFTextEncoder` for the mt5 configs, with
//! HuggingFace's parameter names: `embed_tokens`, `block.N.layer.0`
//! (`layer_norm`, then `SelfAttention.q`/`k`/`v`/`o`, block 0 also holding
//! the `relative_attention_bias` every block adds), `block.N.layer.1`
//! (`layer_norm`, then the gated-GELU `DenseReluDense.wi_0`/`wi_1`/`wo`),
//! and `final_layer_norm`. T5's norms scale by the root mean square, with
//! no mean and no bias; its attention does not scale the scores. Sizes
//! come from the model's `config.json` ([`T5Config`]).

use anyhow::{bail, Result};
use serde::Deserialize;
use tch::nn::{self, Init, Module};
use tch::{Kind, Tensor};

use super::hf_text::{AttentionLayout, HfSelfAttention};
use super::transformer::{normal_linear, shallow_clone_linear};
use crate::activation_checkpoint::checkpoint;

/// What clipflow reads of an mt5 `config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct T5Config {
    pub vocab_size: i64,
    pub d_model: i64,
    pub d_kv: i64,
    pub d_ff: i64,
    pub num_layers: i64,
    pub num_heads: i64,
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: i64,
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: i64,
    pub dropout_rate: f64,
    pub layer_norm_epsilon: f64,
    pub feed_forward_proj: String,
    pub pad_token_id: i64,
}

fn default_buckets() -> i64 {
    32
}
fn default_max_distance() -> i64 {
    128
}

impl T5Config {
    pub fn check(&self, repo: &str) -> Result<()> {
        if self.feed_forward_proj != "gated-gelu" {
            bail!(
                "the HuggingFace model `{repo}`: feed_forward_proj `{}` (clipflow builds mt5's gated-gelu)",
                self.feed_forward_proj
            );
        }
        Ok(())
    }
}

/// T5's `LayerNorm`: `weight` times x over the root mean square of x.
#[derive(Debug)]
struct T5LayerNorm {
    weight: Tensor,
    eps: f64,
}

impl T5LayerNorm {
    fn new(p: nn::Path, dim: i64, eps: f64) -> Self {
        T5LayerNorm {
            weight: p.var("weight", &[dim], Init::Const(1.0)),
            eps,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let variance = x
            .to_kind(Kind::Float)
            .square()
            .mean_dim(-1, true, None::<Kind>);
        let normed = x * (variance + self.eps).rsqrt();
        &self.weight * normed.to_kind(self.weight.kind())
    }
}

/// The relative-position bucket of each (query, key) pair of `length`
/// tokens, T5's bidirectional scheme: half the buckets for keys after the
/// query; within each half, exact offsets below a quarter of the buckets,
/// then logarithmic bins up to `max_distance`.
fn relative_position_buckets(length: i64, buckets: i64, max_distance: i64) -> Tensor {
    let positions = Tensor::arange(length, (Kind::Int64, tch::Device::Cpu));
    let relative = positions.unsqueeze(0) - positions.unsqueeze(1);
    let half = buckets / 2;
    let after = relative.gt(0).to_kind(Kind::Int64) * half;
    let distance = relative.abs();
    let max_exact = half / 2;
    let small = distance.lt(max_exact);
    let large = ((distance.to_kind(Kind::Float) / max_exact as f64).log()
        / (max_distance as f64 / max_exact as f64).ln()
        * (half - max_exact) as f64)
        .to_kind(Kind::Int64)
        + max_exact;
    let large = large.clamp_max(half - 1);
    after + distance.where_self(&small, &large)
}

/// One `block.N`: self-attention, then the gated-GELU feed-forward, each
/// added to its normalised input.
#[derive(Debug)]
struct T5Block {
    attention_norm: T5LayerNorm,
    attention: HfSelfAttention,
    ff_norm: T5LayerNorm,
    wi_0: nn::Linear,
    wi_1: nn::Linear,
    wo: nn::Linear,
    dropout: f64,
}

impl T5Block {
    fn new(p: nn::Path, config: &T5Config) -> Self {
        let dim = config.d_model;
        let attention = &p / "layer" / 0;
        let ff = &p / "layer" / 1;
        let eps = config.layer_norm_epsilon;
        let dense = &ff / "DenseReluDense";
        let projections = &attention / "SelfAttention";
        T5Block {
            attention_norm: T5LayerNorm::new(&attention / "layer_norm", dim, eps),
            attention: HfSelfAttention::new(AttentionLayout {
                q: &projections / "q",
                k: &projections / "k",
                v: &projections / "v",
                out: &projections / "o",
                dim,
                inner: config.num_heads * config.d_kv,
                heads: config.num_heads,
                bias: false,
                // T5 does not scale its attention scores.
                scale: Some(1.0),
                dropout: config.dropout_rate,
            }),
            ff_norm: T5LayerNorm::new(&ff / "layer_norm", dim, eps),
            wi_0: normal_linear(&dense / "wi_0", dim, config.d_ff, false),
            wi_1: normal_linear(&dense / "wi_1", dim, config.d_ff, false),
            wo: normal_linear(&dense / "wo", config.d_ff, dim, false),
            dropout: config.dropout_rate,
        }
    }

    /// `bias` [N or 1, heads, L, L] is the position bias plus the padding
    /// mask (-inf for padded keys).
    fn forward_t(&self, x: &Tensor, bias: &Tensor, train: bool) -> Tensor {
        let normed = self.attention_norm.forward(x);
        let attended = self.attention.forward_t(&normed, bias, train);
        let x = x + attended.dropout(self.dropout, train);
        let normed = self.ff_norm.forward(&x);
        let gated = self.wi_0.forward(&normed).gelu("tanh") * self.wi_1.forward(&normed);
        let out = self.wo.forward(&gated.dropout(self.dropout, train));
        &x + out.dropout(self.dropout, train)
    }

    fn parameters(&self) -> Vec<&Tensor> {
        let mut params = self.attention.parameters();
        params.extend([&self.attention_norm.weight, &self.ff_norm.weight]);
        params.extend([&self.wi_0.ws, &self.wi_1.ws, &self.wo.ws]);
        params
    }

    fn shallow_clone(&self) -> Self {
        let norm = |n: &T5LayerNorm| T5LayerNorm {
            weight: n.weight.shallow_clone(),
            eps: n.eps,
        };
        T5Block {
            attention_norm: norm(&self.attention_norm),
            attention: self.attention.shallow_clone(),
            ff_norm: norm(&self.ff_norm),
            wi_0: shallow_clone_linear(&self.wi_0),
            wi_1: shallow_clone_linear(&self.wi_1),
            wo: shallow_clone_linear(&self.wo),
            dropout: self.dropout,
        }
    }
}

/// HuggingFace's `MT5Stack` (encoder) with the module tree of its
/// checkpoints.
#[derive(Debug)]
pub struct T5Encoder {
    embed_tokens: nn::Embedding,
    relative_attention_bias: nn::Embedding,
    blocks: Vec<T5Block>,
    final_layer_norm: T5LayerNorm,
    buckets: i64,
    max_distance: i64,
    dropout: f64,
    grad_checkpointing: bool,
}

impl T5Encoder {
    pub fn new(p: nn::Path, config: &T5Config) -> Self {
        let normal = |stdev: f64| nn::EmbeddingConfig {
            ws_init: Init::Randn { mean: 0.0, stdev },
            ..Default::default()
        };
        T5Encoder {
            embed_tokens: nn::embedding(
                &p / "embed_tokens",
                config.vocab_size,
                config.d_model,
                normal(1.0),
            ),
            relative_attention_bias: nn::embedding(
                &p / "block" / 0 / "layer" / 0 / "SelfAttention" / "relative_attention_bias",
                config.relative_attention_num_buckets,
                config.num_heads,
                normal(0.02),
            ),
            blocks: (0..config.num_layers)
                .map(|i| T5Block::new(&p / "block" / i, config))
                .collect(),
            final_layer_norm: T5LayerNorm::new(
                &p / "final_layer_norm",
                config.d_model,
                config.layer_norm_epsilon,
            ),
            buckets: config.relative_attention_num_buckets,
            max_distance: config.relative_attention_max_distance,
            dropout: config.dropout_rate,
            grad_checkpointing: false,
        }
    }

    /// The blocks run under activation checkpointing while training
    /// (HuggingFace's `gradient_checkpointing_enable`).
    pub fn set_grad_checkpointing(&mut self, enable: bool) {
        self.grad_checkpointing = enable;
    }

    /// Token ids [N, L] and `attention_mask` [N, L] (true for real tokens)
    /// to every token's output [N, L, d_model].
    pub fn forward_t(&self, ids: &Tensor, attention_mask: &Tensor, train: bool) -> Tensor {
        let (n, l) = ids.size2().expect("token ids are [N, L]");
        let buckets =
            relative_position_buckets(l, self.buckets, self.max_distance).to_device(ids.device());
        // [L, L, heads] -> [1, heads, L, L], shared by every block.
        let position_bias = self
            .relative_attention_bias
            .forward(&buckets)
            .permute([2, 0, 1])
            .unsqueeze(0);
        let padding = Tensor::zeros([n, 1, 1, l], (Kind::Float, ids.device())).masked_fill(
            &attention_mask.logical_not().reshape([n, 1, 1, l]),
            f64::NEG_INFINITY,
        );
        let bias = position_bias + padding;
        let mut x = self.embed_tokens.forward(ids).dropout(self.dropout, train);
        for block in &self.blocks {
            x = if self.grad_checkpointing && train {
                let owned = block.shallow_clone();
                checkpoint(&[&x, &bias], &block.parameters(), move |inputs| {
                    owned.forward_t(&inputs[0], &inputs[1], true)
                })
                .unwrap_or_else(|error| panic!("{error:#}"))
            } else {
                block.forward_t(&x, &bias, train)
            };
        }
        self.final_layer_norm
            .forward(&x)
            .dropout(self.dropout, train)
    }
}
