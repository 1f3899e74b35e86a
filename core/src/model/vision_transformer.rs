//! `VisionTransformer`, the ViT image tower under `visual.`: `conv1` patch
//! embedding, `class_embedding`, `positional_embedding`, patch dropout,
//! `ln_pre`, `transformer`, optional `attn_pool`, `ln_post`, `proj`.

use anyhow::{bail, Result};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::config::{ModelConfig, VisionLayers};
use super::transformer::{
    layer_norm, Activation, AttentionalPooler, LayerNorm, Transformer, TransformerConfig,
};

/// How the token sequence becomes one feature vector (`pool_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    ClassToken,
    Average,
    None,
}

/// Drops a random subset of patch tokens while training (the class token is
/// always kept), as in "Patch Dropout" (arXiv 2212.00794).
#[derive(Debug)]
struct PatchDropout {
    prob: f64,
}

impl PatchDropout {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        if !train || self.prob == 0.0 {
            return x.shallow_clone();
        }
        let (batch, tokens, width) = x.size3().expect("[batch, tokens, width]");
        let cls = x.narrow(1, 0, 1);
        let patches = x.narrow(1, 1, tokens - 1);
        let keep = (((tokens - 1) as f64 * (1.0 - self.prob)) as i64).max(1);
        let rand = Tensor::randn([batch, tokens - 1], (Kind::Float, x.device()));
        let (_, indices) = rand.topk(keep, -1, true, true);
        let kept = patches.gather(
            1,
            &indices.unsqueeze(-1).expand([batch, keep, width], false),
            false,
        );
        Tensor::cat(&[cls, kept], 1)
    }
}

#[derive(Debug)]
pub struct VisionTransformer {
    conv1: nn::Conv2D,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    patch_dropout: PatchDropout,
    ln_pre: Option<LayerNorm>,
    transformer: Transformer,
    attn_pool: Option<AttentionalPooler>,
    ln_post: LayerNorm,
    proj: Tensor,
    pool: Pool,
    final_ln_after_pool: bool,
}

impl VisionTransformer {
    pub fn new(p: nn::Path, config: &ModelConfig) -> Result<Self> {
        let v = &config.vision_cfg;
        let VisionLayers::Transformer(layers) = v.layers else {
            bail!("the ViT tower needs an integer `layers`");
        };
        let Some(patch_size) = v.patch_size else {
            bail!("the ViT tower needs a `patch_size`");
        };
        if v.pos_embed_type != "learnable" {
            bail!(
                "vision pos_embed_type `{}` is not supported yet",
                v.pos_embed_type
            );
        }
        let pool = match v.pool_type.as_str() {
            "tok" => Pool::ClassToken,
            "avg" => Pool::Average,
            "none" => Pool::None,
            other => bail!("unknown vision pool_type `{other}`"),
        };
        let (height, width_px) = v.image_size.height_width();
        let grid = (height / patch_size) * (width_px / patch_size);
        let width = v.width;
        let scale = (width as f64).powf(-0.5);
        let output_dim = config.embed_dim;
        let conv1 = nn::conv2d(
            &p / "conv1",
            3,
            width,
            patch_size,
            nn::ConvConfig {
                stride: patch_size,
                bias: false,
                ..Default::default()
            },
        );
        let randn_scaled = |name: &str, dims: &[i64]| {
            p.var(
                name,
                dims,
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: scale,
                },
            )
        };
        let class_embedding = randn_scaled("class_embedding", &[width]);
        let positional_embedding = randn_scaled("positional_embedding", &[grid + 1, width]);
        let transformer_cfg = TransformerConfig {
            width,
            layers,
            heads: width / v.head_width,
            mlp_ratio: v.mlp_ratio,
            ls_init_value: v.ls_init_value,
            act: Activation::from_config(config.quick_gelu, v.act_kwargs.as_ref()),
            norm: v.norm_kwargs.clone(),
        };
        let ln_pre =
            (!v.no_ln_pre).then(|| layer_norm(&p / "ln_pre", width, v.norm_kwargs.as_ref()));
        let transformer = Transformer::new(&p / "transformer", &transformer_cfg);
        let (attn_pool, pool_dim) = if v.attentional_pool {
            let pooler = AttentionalPooler::new(
                &p / "attn_pool",
                output_dim,
                width,
                v.attn_pooler_heads,
                v.attn_pooler_queries,
            );
            (Some(pooler), output_dim)
        } else {
            (None, width)
        };
        let ln_post = layer_norm(&p / "ln_post", pool_dim, v.norm_kwargs.as_ref());
        let proj = p.var(
            "proj",
            &[pool_dim, output_dim],
            nn::Init::Randn {
                mean: 0.0,
                stdev: scale,
            },
        );
        Ok(VisionTransformer {
            conv1,
            class_embedding,
            positional_embedding,
            patch_dropout: PatchDropout {
                prob: v.patch_dropout,
            },
            ln_pre,
            transformer,
            attn_pool,
            ln_post,
            proj,
            pool,
            final_ln_after_pool: v.final_ln_after_pool,
        })
    }

    /// Checkpoints the transformer's blocks (OpenCLIP's `set_grad_checkpointing`).
    pub fn set_grad_checkpointing(&mut self, enable: bool) {
        self.transformer.set_grad_checkpointing(enable);
    }

    fn global_pool(&self, x: &Tensor) -> Tensor {
        match self.pool {
            Pool::ClassToken => x.select(1, 0),
            Pool::Average => x.narrow(1, 1, x.size()[1] - 1).mean_dim(1, false, None),
            Pool::None => x.shallow_clone(),
        }
    }

    /// The tokens `output_tokens` returns beside the pooled features: all
    /// but the first, or all for `pool_type = "none"`.
    fn tokens(&self, x: &Tensor) -> Tensor {
        match self.pool {
            Pool::ClassToken | Pool::Average => x.narrow(1, 1, x.size()[1] - 1),
            Pool::None => x.shallow_clone(),
        }
    }

    /// Images [N, 3, H, W] to features [N, embed_dim] (not normalised).
    pub fn forward_t(&self, images: &Tensor, train: bool) -> Tensor {
        self.forward_with_tokens(images, train).0
    }

    /// The features and the tokens (OpenCLIP's `output_tokens`): after the
    /// attentional pooler and `ln_post` for CoCa's image tower.
    pub fn forward_with_tokens(&self, images: &Tensor, train: bool) -> (Tensor, Tensor) {
        let x = self.conv1.forward(images);
        let (n, c, _, _) = x.size4().expect("conv1 output is [N, C, H, W]");
        let x = x.reshape([n, c, -1]).permute([0, 2, 1]);
        let cls = self
            .class_embedding
            .to_kind(x.kind())
            .view([1, 1, -1])
            .expand([n, 1, c], false);
        let kind = x.kind();
        let x = Tensor::cat(&[cls, x], 1) + self.positional_embedding.to_kind(kind);
        let x = self.patch_dropout.forward_t(&x, train);
        let x = match &self.ln_pre {
            Some(ln) => ln.forward(&x),
            None => x,
        };
        let x = self.transformer.forward(&x, None);
        let (pooled, tokens) = match &self.attn_pool {
            Some(attn_pool) => {
                let x = self.ln_post.forward(&attn_pool.forward(&x));
                (self.global_pool(&x), self.tokens(&x))
            }
            None if self.final_ln_after_pool => {
                (self.ln_post.forward(&self.global_pool(&x)), self.tokens(&x))
            }
            None => {
                let x = self.ln_post.forward(&x);
                (self.global_pool(&x), self.tokens(&x))
            }
        };
        (pooled.matmul(&self.proj), tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_dropout_keeps_the_class_token_and_a_subset_of_patches() {
        let dropout = PatchDropout { prob: 0.5 };
        // 1 class token + 16 patches, each row filled with its own index.
        let x = Tensor::arange(17, (Kind::Float, tch::Device::Cpu))
            .view([1, 17, 1])
            .expand([2, 17, 3], false)
            .contiguous();
        let kept = dropout.forward_t(&x, true);
        assert_eq!(kept.size(), [2, 1 + 8, 3]);
        for b in 0..2 {
            assert_eq!(kept.double_value(&[b, 0, 0]), 0.0, "class token first");
            let mut rows: Vec<i64> = (1..9)
                .map(|i| kept.double_value(&[b, i, 0]) as i64)
                .collect();
            rows.sort();
            rows.dedup();
            assert_eq!(rows.len(), 8, "distinct patches");
            assert!(rows.iter().all(|r| (1..17).contains(r)));
        }
        assert_eq!(
            dropout.forward_t(&x, false).size(),
            [2, 17, 3],
            "identity in eval"
        );
    }
}
