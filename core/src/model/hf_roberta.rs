//! HuggingFace's `RobertaModel` (and `XLMRobertaModel`, the same layers),
//! the `transformer` of OpenCLIP's `HFTextEncoder` for the roberta and
//! xlm-roberta configs, with HuggingFace's parameter names:
//! `embeddings` (`word_embeddings`, `position_embeddings`,
//! `token_type_embeddings`, `LayerNorm`), `encoder.layer.N` (post-norm
//! blocks: `attention.self.query`/`key`/`value`, `attention.output.dense`
//! and `LayerNorm`, `intermediate.dense`, `output.dense` and `LayerNorm`),
//! and `pooler.dense` where the tower pools on it. Sizes come from the
//! model's `config.json` ([`RobertaConfig`]).

use anyhow::{bail, Result};
use serde::Deserialize;
use tch::nn::{self, Init, Module};
use tch::{Kind, Tensor};

use super::config::NormKwargs;
use super::hf_text::{AttentionLayout, HfSelfAttention};
use super::transformer::{
    layer_norm, linear_parameters, normal_linear, shallow_clone_linear, LayerNorm,
};
use crate::activation_checkpoint::checkpoint_block;

/// What clipflow reads of a roberta or xlm-roberta `config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct RobertaConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub hidden_act: String,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: i64,
    pub type_vocab_size: i64,
    pub layer_norm_eps: f64,
    pub pad_token_id: i64,
    #[serde(default = "absolute")]
    pub position_embedding_type: String,
}

fn absolute() -> String {
    "absolute".into()
}

impl RobertaConfig {
    pub fn check(&self, repo: &str) -> Result<()> {
        if self.hidden_act != "gelu" {
            bail!(
                "the HuggingFace model `{repo}`: hidden_act `{}` (clipflow builds gelu)",
                self.hidden_act
            );
        }
        if self.position_embedding_type != "absolute" {
            bail!(
                "the HuggingFace model `{repo}`: position_embedding_type `{}` (clipflow builds absolute)",
                self.position_embedding_type
            );
        }
        Ok(())
    }
}

/// An embedding table whose `padding` row takes no gradient, initialised
/// normal with std 0.02 and that row zero, as HuggingFace does.
fn hf_embedding(p: nn::Path, rows: i64, dim: i64, padding: Option<i64>) -> nn::Embedding {
    let table = nn::embedding(
        p,
        rows,
        dim,
        nn::EmbeddingConfig {
            ws_init: Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
            padding_idx: padding.unwrap_or(-1),
            ..Default::default()
        },
    );
    if let Some(row) = padding {
        tch::no_grad(|| {
            let _ = table.ws.get(row).zero_();
        });
    }
    table
}

fn hf_norm(p: nn::Path, config: &RobertaConfig) -> LayerNorm {
    layer_norm(
        p,
        config.hidden_size,
        Some(&NormKwargs {
            eps: Some(config.layer_norm_eps),
        }),
    )
}

/// `embeddings`: word, position and (all-zero) token-type embeddings
/// summed, then `LayerNorm` and dropout.
#[derive(Debug)]
struct RobertaEmbeddings {
    word_embeddings: nn::Embedding,
    position_embeddings: nn::Embedding,
    token_type_embeddings: nn::Embedding,
    layer_norm: LayerNorm,
    pad_id: i64,
    dropout: f64,
}

impl RobertaEmbeddings {
    fn new(p: nn::Path, config: &RobertaConfig) -> Self {
        let dim = config.hidden_size;
        let pad = Some(config.pad_token_id);
        RobertaEmbeddings {
            word_embeddings: hf_embedding(&p / "word_embeddings", config.vocab_size, dim, pad),
            position_embeddings: hf_embedding(
                &p / "position_embeddings",
                config.max_position_embeddings,
                dim,
                pad,
            ),
            token_type_embeddings: hf_embedding(
                &p / "token_type_embeddings",
                config.type_vocab_size,
                dim,
                None,
            ),
            layer_norm: hf_norm(&p / "LayerNorm", config),
            pad_id: config.pad_token_id,
            dropout: config.hidden_dropout_prob,
        }
    }

    /// Token ids [N, L] to embeddings [N, L, width]. Positions count the
    /// non-padding tokens from `pad_id + 1`; padding keeps position
    /// `pad_id` (fairseq's `make_positions`).
    fn forward_t(&self, ids: &Tensor, train: bool) -> Tensor {
        let real = ids.ne(self.pad_id).to_kind(Kind::Int64);
        let positions = real.cumsum(1, Kind::Int64) * &real + self.pad_id;
        let token_types = ids.zeros_like();
        let x = self.word_embeddings.forward(ids)
            + self.token_type_embeddings.forward(&token_types)
            + self.position_embeddings.forward(&positions);
        self.layer_norm.forward(&x).dropout(self.dropout, train)
    }
}

/// `encoder.layer.N`: self-attention and the feed-forward, each added to
/// its input, then normalised.
#[derive(Debug)]
struct RobertaLayer {
    attention: HfSelfAttention,
    attention_norm: LayerNorm,
    intermediate: nn::Linear,
    output_dense: nn::Linear,
    output_norm: LayerNorm,
    hidden_dropout: f64,
}

impl RobertaLayer {
    fn new(p: nn::Path, config: &RobertaConfig) -> Self {
        let dim = config.hidden_size;
        let attention = &p / "attention";
        RobertaLayer {
            attention: HfSelfAttention::new(AttentionLayout {
                q: &attention / "self" / "query",
                k: &attention / "self" / "key",
                v: &attention / "self" / "value",
                out: &attention / "output" / "dense",
                dim,
                inner: dim,
                heads: config.num_attention_heads,
                bias: true,
                scale: None,
                dropout: config.attention_probs_dropout_prob,
            }),
            attention_norm: hf_norm(&attention / "output" / "LayerNorm", config),
            intermediate: normal_linear(
                &p / "intermediate" / "dense",
                dim,
                config.intermediate_size,
                true,
            ),
            output_dense: normal_linear(
                &p / "output" / "dense",
                config.intermediate_size,
                dim,
                true,
            ),
            output_norm: hf_norm(&p / "output" / "LayerNorm", config),
            hidden_dropout: config.hidden_dropout_prob,
        }
    }

    /// `keys` [N, 1, 1, L] is true where a token may be attended to.
    fn forward_t(&self, x: &Tensor, keys: &Tensor, train: bool) -> Tensor {
        let attended = self
            .attention
            .forward_t(x, keys, train)
            .dropout(self.hidden_dropout, train);
        let x = self.attention_norm.forward(&(attended + x));
        let hidden = self.intermediate.forward(&x).gelu("none");
        let out = self
            .output_dense
            .forward(&hidden)
            .dropout(self.hidden_dropout, train);
        self.output_norm.forward(&(out + x))
    }

    /// Every tensor `forward_t` reads that may need a gradient.
    fn parameters(&self) -> Vec<&Tensor> {
        let mut params = self.attention.parameters();
        params.extend(linear_parameters(&self.intermediate));
        params.extend(linear_parameters(&self.output_dense));
        params.extend(self.attention_norm.parameters());
        params.extend(self.output_norm.parameters());
        params
    }

    fn shallow_clone(&self) -> Self {
        RobertaLayer {
            attention: self.attention.shallow_clone(),
            attention_norm: self.attention_norm.shallow_clone(),
            intermediate: shallow_clone_linear(&self.intermediate),
            output_dense: shallow_clone_linear(&self.output_dense),
            output_norm: self.output_norm.shallow_clone(),
            hidden_dropout: self.hidden_dropout,
        }
    }
}

/// What the model gives its pooler: every token's output, and `pooler`'s
/// output (tanh of `pooler.dense` on the first token) where it has one.
pub struct RobertaOutput {
    pub last_hidden_state: Tensor,
    pub pooler_output: Option<Tensor>,
}

/// HuggingFace's `RobertaModel` with the module tree of its checkpoints.
#[derive(Debug)]
pub struct RobertaModel {
    embeddings: RobertaEmbeddings,
    layers: Vec<RobertaLayer>,
    pooler: Option<nn::Linear>,
    grad_checkpointing: bool,
}

impl RobertaModel {
    /// `pooling_layer`: HuggingFace's `add_pooling_layer` (OpenCLIP sets it
    /// for the `cls_pooler`).
    pub fn new(p: nn::Path, config: &RobertaConfig, pooling_layer: bool) -> Self {
        let dim = config.hidden_size;
        RobertaModel {
            embeddings: RobertaEmbeddings::new(&p / "embeddings", config),
            layers: (0..config.num_hidden_layers)
                .map(|i| RobertaLayer::new(&p / "encoder" / "layer" / i, config))
                .collect(),
            pooler: pooling_layer.then(|| normal_linear(&p / "pooler" / "dense", dim, dim, true)),
            grad_checkpointing: false,
        }
    }

    /// The layers run under activation checkpointing while training
    /// (HuggingFace's `gradient_checkpointing_enable`).
    pub fn set_grad_checkpointing(&mut self, enable: bool) {
        self.grad_checkpointing = enable;
    }

    /// Token ids [N, L] and `attention_mask` [N, L] (true for real tokens).
    pub fn forward_t(&self, ids: &Tensor, attention_mask: &Tensor, train: bool) -> RobertaOutput {
        let (n, l) = ids.size2().expect("token ids are [N, L]");
        let keys = attention_mask.reshape([n, 1, 1, l]);
        let mut x = self.embeddings.forward_t(ids, train);
        for layer in &self.layers {
            x = if self.grad_checkpointing && train {
                let owned = (layer.shallow_clone(), keys.shallow_clone());
                checkpoint_block(&x, &layer.parameters(), owned, |(layer, keys), x| {
                    layer.forward_t(x, keys, true)
                })
            } else {
                layer.forward_t(&x, &keys, train)
            };
        }
        let pooler_output = self
            .pooler
            .as_ref()
            .map(|dense| dense.forward(&x.select(1, 0)).tanh());
        RobertaOutput {
            last_hidden_state: x,
            pooler_output,
        }
    }
}
