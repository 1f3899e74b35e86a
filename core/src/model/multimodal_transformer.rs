//! `MultimodalTransformer`, CoCa's text decoder (`text_decoder.`): per
//! layer a causal self-attention block over the caption's token outputs
//! (`resblocks.N`) and a block attending from them to the image tokens
//! (`cross_attn.N`), then `ln_final` and `text_projection` to vocabulary
//! logits.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::config::TextConfig;
use super::transformer::{
    layer_norm, Activation, LayerNorm, ResidualAttentionBlock, TransformerConfig,
};

#[derive(Debug)]
pub struct MultimodalTransformer {
    resblocks: Vec<ResidualAttentionBlock>,
    cross_attn: Vec<ResidualAttentionBlock>,
    ln_final: LayerNorm,
    text_projection: Tensor,
    /// Additive causal mask [context_length, context_length].
    attn_mask: Tensor,
    grad_checkpointing: bool,
}

impl MultimodalTransformer {
    /// The decoder of `cfg`, projecting to `vocab_size` logits.
    pub fn new(p: nn::Path, cfg: &TextConfig, quick_gelu: bool, vocab_size: i64) -> Self {
        let block_cfg = TransformerConfig {
            width: cfg.width,
            layers: cfg.layers,
            heads: cfg.heads,
            mlp_ratio: cfg.mlp_ratio,
            ls_init_value: cfg.ls_init_value,
            act: Activation::from_config(quick_gelu, None),
            norm: None,
        };
        let resblocks = &p / "resblocks";
        let cross_attn = &p / "cross_attn";
        MultimodalTransformer {
            resblocks: (0..cfg.layers)
                .map(|i| ResidualAttentionBlock::new(&resblocks / i, &block_cfg))
                .collect(),
            cross_attn: (0..cfg.layers)
                .map(|i| ResidualAttentionBlock::new_cross(&cross_attn / i, &block_cfg))
                .collect(),
            ln_final: layer_norm(&p / "ln_final", cfg.width, None),
            text_projection: p.var(
                "text_projection",
                &[cfg.width, vocab_size],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: (cfg.width as f64).powf(-0.5),
                },
            ),
            attn_mask: Tensor::full(
                [cfg.context_length, cfg.context_length],
                f64::NEG_INFINITY,
                (Kind::Float, p.device()),
            )
            .triu(1),
            grad_checkpointing: false,
        }
    }

    /// Runs each block under `checkpoint` from now on (or no longer), as
    /// OpenCLIP's decoder does with `--grad-checkpointing`.
    pub fn set_grad_checkpointing(&mut self, enable: bool) {
        self.grad_checkpointing = enable;
    }

    /// Logits [N, L, vocab] for the caption token outputs `text_embs`
    /// [N, L, width] given the image tokens `image_embs` [N, Q, width].
    pub fn forward(&self, image_embs: &Tensor, text_embs: &Tensor) -> Tensor {
        let seq_len = text_embs.size()[1];
        let mask = self
            .attn_mask
            .narrow(0, 0, seq_len)
            .narrow(1, 0, seq_len)
            .to_device(text_embs.device());
        let mut x = text_embs.shallow_clone();
        for (block, cross) in self.resblocks.iter().zip(&self.cross_attn) {
            x = if self.grad_checkpointing {
                let x = block.forward_checkpointed(&x, Some(&mask));
                cross.forward_cross_checkpointed(&x, image_embs)
            } else {
                cross.forward_cross(&block.forward(&x, Some(&mask)), image_embs)
            };
        }
        self.ln_final.forward(&x).matmul(&self.text_projection)
    }
}
