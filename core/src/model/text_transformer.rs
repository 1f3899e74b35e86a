//! `TextTransformer`, the causal text tower: `token_embedding`,
//! `positional_embedding`, `transformer`, `ln_final`, `text_projection`,
//! and for CoCa (`embed_cls`) a `cls_emb` appended after the tokens, whose
//! output is the caption's features while the tokens' outputs feed the text
//! decoder. In a plain CLIP these sit at the root of the state_dict; in a
//! CustomTextCLIP or CoCa they sit under `text.` — the caller picks the path.

use anyhow::{bail, Result};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::config::ModelConfig;
use super::transformer::{
    layer_norm, linear, Activation, LayerNorm, Transformer, TransformerConfig,
};

/// Which token's features represent the caption (`pool_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextPool {
    /// The end-of-text token: the highest id in each row.
    Argmax,
    First,
    Last,
    /// The first occurrence of `eos_id`.
    Eos(i64),
    None,
}

/// `text_projection`: a bare matrix, or an `nn.Linear` when the config sets proj_bias.
#[derive(Debug)]
enum TextProjection {
    Matrix(Tensor),
    Linear(nn::Linear),
}

#[derive(Debug)]
pub struct TextTransformer {
    token_embedding: nn::Embedding,
    positional_embedding: Tensor,
    transformer: Transformer,
    ln_final: LayerNorm,
    text_projection: Option<TextProjection>,
    /// Additive causal mask [L, L] (OpenCLIP's non-persistent `attn_mask` buffer).
    attn_mask: Option<Tensor>,
    pool: TextPool,
    /// CoCa's class embedding [width], appended after the tokens.
    cls_emb: Option<Tensor>,
    /// The padding token, masked out as a key when `cls_emb` is present.
    pad_id: i64,
}

impl TextTransformer {
    pub fn new(p: nn::Path, config: &ModelConfig) -> Result<Self> {
        let t = &config.text_cfg;
        let pool = match t.pool_type.as_str() {
            "argmax" => TextPool::Argmax,
            "first" => TextPool::First,
            "last" => TextPool::Last,
            "eos" => TextPool::Eos(t.eos_id),
            "none" => TextPool::None,
            other => bail!("unknown text pool_type `{other}`"),
        };
        let width = t.width;
        let transformer_cfg = TransformerConfig {
            width,
            layers: t.layers,
            heads: t.heads,
            mlp_ratio: t.mlp_ratio,
            ls_init_value: t.ls_init_value,
            act: Activation::from_config(config.quick_gelu, t.act_kwargs.as_ref()),
            norm: t.norm_kwargs.clone(),
        };
        let token_embedding = nn::embedding(
            &p / "token_embedding",
            t.vocab_size,
            width,
            nn::EmbeddingConfig {
                ws_init: nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
                ..Default::default()
            },
        );
        let cls_emb = t.embed_cls.then(|| {
            p.var(
                "cls_emb",
                &[width],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.01,
                },
            )
        });
        // One more position for the class embedding.
        let positions = t.context_length + i64::from(t.embed_cls);
        let positional_embedding = p.var(
            "positional_embedding",
            &[positions, width],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 0.01,
            },
        );
        let transformer = Transformer::new(&p / "transformer", &transformer_cfg);
        transformer.init_like_open_clip_text_tower(width);
        let ln_final = layer_norm(&p / "ln_final", width, t.norm_kwargs.as_ref());
        let output_dim = config.embed_dim;
        let text_projection = if t.proj_type == "none" || output_dim == 0 {
            None
        } else if t.proj_bias {
            let proj = linear(&p / "text_projection", width, output_dim);
            tch::no_grad(|| {
                let _ = proj
                    .ws
                    .shallow_clone()
                    .normal_(0.0, (width as f64).powf(-0.5));
                let _ = proj.bs.as_ref().map(|b| b.shallow_clone().zero_());
            });
            Some(TextProjection::Linear(proj))
        } else {
            Some(TextProjection::Matrix(p.var(
                "text_projection",
                &[width, output_dim],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: (width as f64).powf(-0.5),
                },
            )))
        };
        let attn_mask = (!t.no_causal_mask).then(|| {
            Tensor::full(
                [positions, positions],
                f64::NEG_INFINITY,
                (Kind::Float, p.device()),
            )
            .triu(1)
        });
        Ok(TextTransformer {
            token_embedding,
            positional_embedding,
            transformer,
            ln_final,
            text_projection,
            attn_mask,
            pool,
            cls_emb,
            pad_id: t.pad_id,
        })
    }

    /// Checkpoints the transformer's blocks (OpenCLIP's `set_grad_checkpointing`).
    pub fn set_grad_checkpointing(&mut self, enable: bool) {
        self.transformer.set_grad_checkpointing(enable);
    }

    fn pool(&self, x: &Tensor, text: &Tensor) -> Tensor {
        let rows = || Tensor::arange(x.size()[0], (Kind::Int64, x.device()));
        match self.pool {
            TextPool::Argmax => x.index(&[Some(rows()), Some(text.argmax(-1, false))]),
            TextPool::First => x.select(1, 0),
            TextPool::Last => x.select(1, -1),
            TextPool::Eos(eos) => {
                let first_eos = text.eq(eos).to_kind(Kind::Int).argmax(-1, false);
                x.index(&[Some(rows()), Some(first_eos)])
            }
            TextPool::None => x.shallow_clone(),
        }
    }

    /// Token ids [N, L] to features [N, embed_dim] (not normalised).
    pub fn forward(&self, text: &Tensor) -> Tensor {
        self.forward_with_tokens(text).0
    }

    /// The features and the tokens' outputs [N, L, width] (OpenCLIP's
    /// `output_tokens`): after `ln_final` for a plain tower; for CoCa before
    /// it, without the class token, whose output alone is normed and
    /// projected.
    pub fn forward_with_tokens(&self, text: &Tensor) -> (Tensor, Tensor) {
        let (x, mask) = self.embeds(text);
        let x = self.transformer.forward(&x, mask.as_ref());
        let (pooled, tokens) = if self.cls_emb.is_some() {
            let tokens = x.narrow(1, 0, x.size()[1] - 1);
            (self.ln_final.forward(&x.select(1, -1)), tokens)
        } else {
            let x = self.ln_final.forward(&x);
            (self.pool(&x, text), x)
        };
        let features = match &self.text_projection {
            Some(TextProjection::Matrix(m)) => pooled.matmul(m),
            Some(TextProjection::Linear(l)) => l.forward(&pooled),
            None => pooled,
        };
        (features, tokens)
    }

    /// Token (and class) embeddings plus positions, and the additive mask.
    fn embeds(&self, text: &Tensor) -> (Tensor, Option<Tensor>) {
        let (n, tokens) = text.size2().expect("token ids are [batch, length]");
        // Embeddings stay fp32 under --precision bf16/fp16; the blocks run in
        // their weights' dtype (OpenCLIP's cast_dtype).
        let kind = self.transformer.weight_kind();
        let mut x = self.token_embedding.forward(text).to_kind(kind);
        let mut seq_len = tokens;
        if let Some(cls) = &self.cls_emb {
            let cls = cls.to_kind(kind).view([1, 1, -1]).expand([n, 1, -1], false);
            x = Tensor::cat(&[x, cls], 1);
            seq_len += 1;
        }
        let mut mask = self.attn_mask.as_ref().map(|m| {
            m.narrow(0, 0, seq_len)
                .narrow(1, 0, seq_len)
                .to_device(x.device())
        });
        if self.cls_emb.is_some() {
            let keys = self.cls_key_mask(text, x.kind());
            mask = Some(match mask {
                Some(causal) => causal.view([1, 1, seq_len, seq_len]) + keys,
                None => keys.expand([n, 1, seq_len, seq_len], false),
            });
        }
        let x = x + self
            .positional_embedding
            .narrow(0, 0, seq_len)
            .to_kind(kind);
        (x, mask)
    }

    /// CoCa's key mask [N, 1, 1, L + 1]: `-inf` for keys that are padding.
    /// OpenCLIP's default (`correct_cls_mask=False`, which the released CoCa
    /// weights were trained with) puts the class token's always-valid slot
    /// first, so key j > 0 is judged by token j - 1, although the class
    /// token itself sits last.
    fn cls_key_mask(&self, text: &Tensor, kind: Kind) -> Tensor {
        let n = text.size()[0];
        let valid = Tensor::cat(
            &[
                Tensor::ones([n, 1], (Kind::Bool, text.device())),
                text.ne(self.pad_id),
            ],
            1,
        );
        let keys = valid.size()[1];
        Tensor::zeros([n, 1, 1, keys], (kind, text.device())).masked_fill(
            &valid.logical_not().view([n, 1, 1, keys]),
            f64::NEG_INFINITY,
        )
    }
}
