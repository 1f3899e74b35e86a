//! timm's `Eva`, the trunk of OpenCLIP's EVA, EVA02 and Perception Encoder
//! (PE-Core) image towers (`visual.trunk.` in their checkpoints):
//! `patch_embed.proj`, `cls_token` and `reg_token` where the model has them,
//! `pos_embed`, the axial rotary position embedding (computed, no
//! parameters), patch dropout, `norm_pre`, `blocks.N` (`norm1`, `attn`,
//! `gamma_1`, `norm2`, `mlp`, `gamma_2`), `norm`, the MAP head `attn_pool`,
//! `fc_norm` and `head`. A block's attention is a packed `qkv` (with
//! EVA's separate `q_bias` and `v_bias`, or its own bias) or split
//! `q_proj`/`k_proj`/`v_proj`, an optional inner `norm`, then `proj`; its
//! MLP is timm's `Mlp` (`fc1`, `fc2`) or `SwiGLU` (`fc1_g`, `fc1_x`, `norm`,
//! `fc2`); blocks are pre-norm, or post-norm as EVA02-E's. Which of these a
//! model has comes from [`TimmEvaFacts`] (timm's registry, read into
//! `timm_configs.json`).

use serde::Deserialize;
use tch::nn::{self, Init, Module};
use tch::{Device, Kind, Tensor};

use super::timm_vision_transformer::{
    attention, drop_path, norm, AttentionPoolFacts, HeadLayout, PatchDropout, PatchTokens, TimmMlp,
    TokenLayout, TrunkHead, TrunkOptions,
};
use super::transformer::{
    linear_parameters, merge_heads, normal_linear, shallow_clone_linear, split_heads, Activation,
    LayerNorm,
};
use crate::activation_checkpoint::checkpoint_block;

/// What timm's registry says of one Eva model.
#[derive(Debug, Clone, Deserialize)]
pub struct TimmEvaFacts {
    pub img_size: [i64; 2],
    pub patch_size: [i64; 2],
    pub patch_bias: bool,
    pub embed_dim: i64,
    pub depth: i64,
    pub num_heads: i64,
    pub class_token: bool,
    pub reg_tokens: i64,
    pub no_embed_class: bool,
    /// A learned absolute position embedding (`pos_embed`).
    pub pos_embed: bool,
    /// An axial rotary position embedding on the patch tokens.
    pub rope: Option<RopeFacts>,
    /// Blocks normalise each branch's output (EVA02-E) instead of its input.
    pub post_norm: bool,
    pub attn: EvaAttentionFacts,
    pub mlp: EvaMlpFacts,
    /// Layer scale on the attention branch.
    pub gamma_1: bool,
    /// Layer scale on the MLP branch.
    pub gamma_2: bool,
    pub pre_norm: bool,
    pub norm: bool,
    pub fc_norm: bool,
    pub norm_eps: f64,
    pub global_pool: String,
    pub attn_pool: Option<AttentionPoolFacts>,
}

/// timm's `RotaryEmbeddingCat` on an index grid: frequencies
/// `temperature^(-i / bands)`, positions `0..size` plus `grid_offset`,
/// rescaled to `ref_feat_shape` when given.
#[derive(Debug, Clone, Deserialize)]
pub struct RopeFacts {
    pub temperature: f64,
    pub grid_offset: f64,
    pub grid_indexing: GridIndexing,
    pub ref_feat_shape: Option<[i64; 2]>,
    pub rotate_half: bool,
}

/// The order of the two coordinates in each position's embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GridIndexing {
    /// Row, then column.
    Ij,
    /// Column, then row.
    Xy,
}

/// The parameter layout of a block's attention.
#[derive(Debug, Clone, Deserialize)]
pub struct EvaAttentionFacts {
    pub qkv: QkvLayout,
    /// The packed `qkv` has its own bias.
    pub qkv_bias: bool,
    /// Beside a bias-free packed `qkv`: `q_bias` and `v_bias` (k's is zero).
    pub q_v_bias: bool,
    /// Split projections: which of `q_proj`, `k_proj`, `v_proj` have a bias.
    pub split_bias: [bool; 3],
    /// A LayerNorm (`attn.norm`) before `proj`.
    pub norm: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QkvLayout {
    Packed,
    Split,
}

/// A block's MLP.
#[derive(Debug, Clone, Deserialize)]
pub struct EvaMlpFacts {
    pub kind: EvaMlpKind,
    pub hidden: i64,
    /// SwiGLU's LayerNorm (`mlp.norm`) before `fc2`.
    pub norm: bool,
    pub act: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvaMlpKind {
    Mlp,
    Swiglu,
}

/// The rotary embedding of a `grid` of patches, [patches, 2 * head_dim]:
/// the sines, then the cosines, of each position's angles, each angle
/// repeated for the pair of channels it rotates (or the halves, with
/// `rotate_half`). Computed in fp32 on the CPU, as timm does.
fn rotary_embedding(rope: &RopeFacts, head_dim: i64, grid: [i64; 2]) -> Tensor {
    let bands = head_dim / 4;
    let exponent =
        Tensor::arange(bands, (Kind::Int64, Device::Cpu)).to_kind(Kind::Float) / bands as f64;
    let frequencies = Tensor::from(rope.temperature as f32)
        .pow(&exponent)
        .reciprocal();
    let (mut shape, mut reference) = (grid, rope.ref_feat_shape);
    if rope.grid_indexing == GridIndexing::Xy {
        shape.reverse();
        if let Some(reference) = &mut reference {
            reference.reverse();
        }
    }
    let axes: Vec<Tensor> = (0..2)
        .map(|axis| {
            let positions = Tensor::arange(shape[axis], (Kind::Int64, Device::Cpu))
                .to_kind(Kind::Float)
                + rope.grid_offset;
            match reference {
                Some(reference) => positions / shape[axis] as f64 * reference[axis] as f64,
                None => positions,
            }
        })
        .collect();
    let indexing = match rope.grid_indexing {
        GridIndexing::Ij => "ij",
        GridIndexing::Xy => "xy",
    };
    let coordinates = Tensor::stack(&Tensor::meshgrid_indexing(&axes, indexing), -1);
    let angles = coordinates.unsqueeze(-1) * frequencies;
    let layout = |values: Tensor| {
        let values = values.flatten(-2, -1).flatten(0, -2);
        if rope.rotate_half {
            Tensor::cat(&[&values, &values], -1)
        } else {
            values.repeat_interleave_self_int(2, -1, None)
        }
    };
    Tensor::cat(&[layout(angles.sin()), layout(angles.cos())], -1)
}

/// Rotates `x` [..., tokens, head_dim] by the angles of `rope`
/// ([tokens, 2 * head_dim], or per sample [batch, 1, tokens, 2 * head_dim]);
/// timm's `apply_rot_embed_cat`. The result has `x`'s dtype.
fn apply_rotary(x: &Tensor, rope: &Tensor, rotate_half: bool) -> Tensor {
    let sin_cos = rope.chunk(2, -1);
    let rotated = if rotate_half {
        let halves = x.chunk(2, -1);
        Tensor::cat(&[halves[1].neg(), halves[0].shallow_clone()], -1)
    } else {
        let odd = x.slice(-1, 1, None, 2).neg();
        let even = x.slice(-1, 0, None, 2);
        Tensor::stack(&[odd, even], -1).reshape(x.size())
    };
    (x * &sin_cos[1] + rotated * &sin_cos[0]).to_kind(x.kind())
}

/// The query, key and value projections.
#[derive(Debug)]
enum QkvProjection {
    /// One `qkv`; EVA's own `q_bias` and `v_bias` where the model has them.
    Packed {
        qkv: nn::Linear,
        q_bias: Option<Tensor>,
        v_bias: Option<Tensor>,
    },
    /// `q_proj`, `k_proj`, `v_proj`.
    Split {
        q_proj: nn::Linear,
        k_proj: nn::Linear,
        v_proj: nn::Linear,
    },
}

impl QkvProjection {
    fn new(p: &nn::Path, dim: i64, facts: &EvaAttentionFacts) -> Self {
        match facts.qkv {
            QkvLayout::Packed => {
                let bias = |name: &str| {
                    facts
                        .q_v_bias
                        .then(|| p.var(name, &[dim], Init::Const(0.0)))
                };
                QkvProjection::Packed {
                    qkv: normal_linear(p / "qkv", dim, 3 * dim, facts.qkv_bias),
                    q_bias: bias("q_bias"),
                    v_bias: bias("v_bias"),
                }
            }
            QkvLayout::Split => {
                let [q, k, v] = facts.split_bias;
                QkvProjection::Split {
                    q_proj: normal_linear(p / "q_proj", dim, dim, q),
                    k_proj: normal_linear(p / "k_proj", dim, dim, k),
                    v_proj: normal_linear(p / "v_proj", dim, dim, v),
                }
            }
        }
    }

    fn forward(&self, x: &Tensor) -> [Tensor; 3] {
        match self {
            QkvProjection::Packed {
                qkv,
                q_bias: Some(q_bias),
                v_bias: Some(v_bias),
            } => {
                let bias = Tensor::cat(&[q_bias, &q_bias.zeros_like(), v_bias], 0);
                let packed = x.linear(&qkv.ws, Some(&bias));
                let parts = packed.chunk(3, -1);
                [0, 1, 2].map(|i| parts[i].shallow_clone())
            }
            QkvProjection::Packed { qkv, .. } => {
                let parts = qkv.forward(x).chunk(3, -1);
                [0, 1, 2].map(|i| parts[i].shallow_clone())
            }
            QkvProjection::Split {
                q_proj,
                k_proj,
                v_proj,
            } => [q_proj.forward(x), k_proj.forward(x), v_proj.forward(x)],
        }
    }

    fn parameters(&self) -> Vec<&Tensor> {
        match self {
            QkvProjection::Packed {
                qkv,
                q_bias,
                v_bias,
            } => linear_parameters(qkv)
                .chain([q_bias, v_bias].into_iter().flatten())
                .collect(),
            QkvProjection::Split {
                q_proj,
                k_proj,
                v_proj,
            } => linear_parameters(q_proj)
                .chain(linear_parameters(k_proj))
                .chain(linear_parameters(v_proj))
                .collect(),
        }
    }

    fn shallow_clone(&self) -> Self {
        match self {
            QkvProjection::Packed {
                qkv,
                q_bias,
                v_bias,
            } => QkvProjection::Packed {
                qkv: shallow_clone_linear(qkv),
                q_bias: q_bias.as_ref().map(Tensor::shallow_clone),
                v_bias: v_bias.as_ref().map(Tensor::shallow_clone),
            },
            QkvProjection::Split {
                q_proj,
                k_proj,
                v_proj,
            } => QkvProjection::Split {
                q_proj: shallow_clone_linear(q_proj),
                k_proj: shallow_clone_linear(k_proj),
                v_proj: shallow_clone_linear(v_proj),
            },
        }
    }
}

/// timm's `EvaAttention` / `AttentionRope`: the rotary embedding turns the
/// queries and keys of the patch tokens (not the prefix tokens).
#[derive(Debug)]
struct EvaAttention {
    qkv: QkvProjection,
    norm: Option<LayerNorm>,
    proj: nn::Linear,
    heads: i64,
    prefix_tokens: i64,
    rotate_half: bool,
}

impl EvaAttention {
    fn forward(&self, x: &Tensor, rope: Option<&Tensor>) -> Tensor {
        let [q, k, v] = self.qkv.forward(x).map(|t| split_heads(&t, self.heads));
        let (q, k) = match rope {
            Some(rope) => (self.rotated(&q, rope), self.rotated(&k, rope)),
            None => (q, k),
        };
        let x = merge_heads(&attention(&q, &k, &v));
        let x = match &self.norm {
            Some(norm) => norm.forward(&x),
            None => x,
        };
        self.proj.forward(&x)
    }

    fn rotated(&self, x: &Tensor, rope: &Tensor) -> Tensor {
        let tokens = x.size()[2];
        let prefix = x.narrow(2, 0, self.prefix_tokens);
        let patches = x.narrow(2, self.prefix_tokens, tokens - self.prefix_tokens);
        Tensor::cat(&[prefix, apply_rotary(&patches, rope, self.rotate_half)], 2)
    }

    fn parameters(&self) -> Vec<&Tensor> {
        let mut params = self.qkv.parameters();
        params.extend(self.norm.iter().flat_map(LayerNorm::parameters));
        params.extend(linear_parameters(&self.proj));
        params
    }

    fn shallow_clone(&self) -> Self {
        EvaAttention {
            qkv: self.qkv.shallow_clone(),
            norm: self.norm.as_ref().map(LayerNorm::shallow_clone),
            proj: shallow_clone_linear(&self.proj),
            heads: self.heads,
            prefix_tokens: self.prefix_tokens,
            rotate_half: self.rotate_half,
        }
    }
}

/// A block's MLP: timm's `Mlp`, or `SwiGLU` (SiLU of `fc1_g` gating
/// `fc1_x`, then `norm`, then `fc2`).
#[derive(Debug)]
enum EvaMlp {
    Mlp(TimmMlp),
    SwiGlu {
        fc1_g: nn::Linear,
        fc1_x: nn::Linear,
        norm: Option<LayerNorm>,
        fc2: nn::Linear,
    },
}

impl EvaMlp {
    fn new(p: nn::Path, dim: i64, facts: &EvaMlpFacts, eps: f64) -> Self {
        match facts.kind {
            EvaMlpKind::Mlp => EvaMlp::Mlp(TimmMlp::new(
                p,
                dim,
                facts.hidden,
                Activation::named(&facts.act),
            )),
            EvaMlpKind::Swiglu => EvaMlp::SwiGlu {
                fc1_g: normal_linear(&p / "fc1_g", dim, facts.hidden, true),
                fc1_x: normal_linear(&p / "fc1_x", dim, facts.hidden, true),
                norm: facts.norm.then(|| norm(&p / "norm", facts.hidden, eps)),
                fc2: normal_linear(&p / "fc2", facts.hidden, dim, true),
            },
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        match self {
            EvaMlp::Mlp(mlp) => mlp.forward_t(x, train),
            EvaMlp::SwiGlu {
                fc1_g,
                fc1_x,
                norm,
                fc2,
            } => {
                let hidden = fc1_g.forward(x).silu() * fc1_x.forward(x);
                let hidden = match norm {
                    Some(norm) => norm.forward(&hidden),
                    None => hidden,
                };
                fc2.forward(&hidden)
            }
        }
    }

    fn parameters(&self) -> Vec<&Tensor> {
        match self {
            EvaMlp::Mlp(mlp) => mlp.parameters().collect(),
            EvaMlp::SwiGlu {
                fc1_g,
                fc1_x,
                norm,
                fc2,
            } => linear_parameters(fc1_g)
                .chain(linear_parameters(fc1_x))
                .chain(norm.iter().flat_map(LayerNorm::parameters))
                .chain(linear_parameters(fc2))
                .collect(),
        }
    }

    fn shallow_clone(&self) -> Self {
        match self {
            EvaMlp::Mlp(mlp) => EvaMlp::Mlp(mlp.shallow_clone()),
            EvaMlp::SwiGlu {
                fc1_g,
                fc1_x,
                norm,
                fc2,
            } => EvaMlp::SwiGlu {
                fc1_g: shallow_clone_linear(fc1_g),
                fc1_x: shallow_clone_linear(fc1_x),
                norm: norm.as_ref().map(LayerNorm::shallow_clone),
                fc2: shallow_clone_linear(fc2),
            },
        }
    }
}

/// timm's `EvaBlock` (pre-norm, optional layer scale) or
/// `EvaBlockPostNorm`.
#[derive(Debug)]
struct EvaBlock {
    norm1: LayerNorm,
    attn: EvaAttention,
    gamma_1: Option<Tensor>,
    norm2: LayerNorm,
    mlp: EvaMlp,
    gamma_2: Option<Tensor>,
    post_norm: bool,
    /// The probability of dropping each residual branch for a sample,
    /// while training.
    drop_path: f64,
}

fn scaled(gamma: &Option<Tensor>, x: Tensor) -> Tensor {
    match gamma {
        Some(gamma) => x * gamma,
        None => x,
    }
}

impl EvaBlock {
    fn new(p: nn::Path, facts: &TimmEvaFacts, prefix_tokens: i64, drop_path: f64) -> Self {
        let dim = facts.embed_dim;
        let eps = facts.norm_eps;
        let attn_path = &p / "attn";
        // A checkpoint's layer scales replace timm's initial values.
        let gamma =
            |present: bool, name: &str| present.then(|| p.var(name, &[dim], Init::Const(1e-5)));
        EvaBlock {
            norm1: norm(&p / "norm1", dim, eps),
            attn: EvaAttention {
                qkv: QkvProjection::new(&attn_path, dim, &facts.attn),
                norm: facts.attn.norm.then(|| norm(&attn_path / "norm", dim, eps)),
                proj: normal_linear(&attn_path / "proj", dim, dim, true),
                heads: facts.num_heads,
                prefix_tokens,
                rotate_half: facts.rope.as_ref().is_some_and(|rope| rope.rotate_half),
            },
            gamma_1: gamma(facts.gamma_1, "gamma_1"),
            norm2: norm(&p / "norm2", dim, eps),
            mlp: EvaMlp::new(&p / "mlp", dim, &facts.mlp, eps),
            gamma_2: gamma(facts.gamma_2, "gamma_2"),
            post_norm: facts.post_norm,
            drop_path,
        }
    }

    fn forward_t(&self, x: &Tensor, rope: Option<&Tensor>, train: bool) -> Tensor {
        if self.post_norm {
            let attended = self.norm1.forward(&self.attn.forward(x, rope));
            let x = x + drop_path(attended, self.drop_path, train);
            let mlp = self.norm2.forward(&self.mlp.forward_t(&x, train));
            return &x + drop_path(mlp, self.drop_path, train);
        }
        let attended = scaled(
            &self.gamma_1,
            self.attn.forward(&self.norm1.forward(x), rope),
        );
        let x = x + drop_path(attended, self.drop_path, train);
        let mlp = scaled(
            &self.gamma_2,
            self.mlp.forward_t(&self.norm2.forward(&x), train),
        );
        &x + drop_path(mlp, self.drop_path, train)
    }

    /// `forward_t` in training under activation checkpointing (the random
    /// draws of drop path are replayed in the recomputation).
    fn forward_checkpointed(&self, x: &Tensor, rope: Option<&Tensor>) -> Tensor {
        let owned = (self.shallow_clone(), rope.map(Tensor::shallow_clone));
        checkpoint_block(x, &self.parameters(), owned, |(block, rope), x| {
            block.forward_t(x, rope.as_ref(), true)
        })
    }

    /// Every tensor `forward_t` reads that may need a gradient.
    fn parameters(&self) -> Vec<&Tensor> {
        let mut params = self.norm1.parameters().to_vec();
        params.extend(self.attn.parameters());
        params.extend(self.norm2.parameters());
        params.extend(self.mlp.parameters());
        params.extend([&self.gamma_1, &self.gamma_2].into_iter().flatten());
        params
    }

    /// A block sharing this one's weights, for the checkpointed closure to
    /// own (it must be `'static + Send`).
    fn shallow_clone(&self) -> Self {
        EvaBlock {
            norm1: self.norm1.shallow_clone(),
            attn: self.attn.shallow_clone(),
            gamma_1: self.gamma_1.as_ref().map(Tensor::shallow_clone),
            norm2: self.norm2.shallow_clone(),
            mlp: self.mlp.shallow_clone(),
            gamma_2: self.gamma_2.as_ref().map(Tensor::shallow_clone),
            post_norm: self.post_norm,
            drop_path: self.drop_path,
        }
    }
}

/// timm's `Eva` with the module tree of its checkpoints.
#[derive(Debug)]
pub struct TimmEva {
    tokens: PatchTokens,
    /// The rotary embedding of the patch grid, [patches, 2 * head_dim].
    rope: Option<Tensor>,
    patch_drop: PatchDropout,
    norm_pre: Option<LayerNorm>,
    blocks: Vec<EvaBlock>,
    head: TrunkHead,
    grad_checkpointing: bool,
}

impl TimmEva {
    pub fn new(p: nn::Path, facts: &TimmEvaFacts, options: &TrunkOptions) -> Self {
        let dim = facts.embed_dim;
        let eps = facts.norm_eps;
        let tokens = PatchTokens::new(
            &p,
            &TokenLayout {
                img_size: facts.img_size,
                patch_size: facts.patch_size,
                patch_bias: facts.patch_bias,
                dim,
                class_token: facts.class_token,
                reg_tokens: facts.reg_tokens,
                no_embed_class: facts.no_embed_class,
                pos_embed: facts.pos_embed,
                token_std: 0.02,
            },
        );
        let prefix_tokens = tokens.prefix_tokens;
        let rope = facts.rope.as_ref().map(|rope| {
            rotary_embedding(rope, dim / facts.num_heads, tokens.grid).to_device(p.device())
        });
        // timm's linspace(0, drop_path_rate, depth).
        let rate = |i: i64| match facts.depth {
            1 => 0.0,
            depth => options.drop_path * i as f64 / (depth - 1) as f64,
        };
        let blocks = (0..facts.depth)
            .map(|i| EvaBlock::new(&p / "blocks" / i, facts, prefix_tokens, rate(i)))
            .collect();
        TimmEva {
            tokens,
            rope,
            patch_drop: PatchDropout {
                prob: options.patch_drop,
                prefix_tokens,
            },
            norm_pre: facts.pre_norm.then(|| norm(&p / "norm_pre", dim, eps)),
            blocks,
            // Eva's MAP head attends over every token, prefix tokens
            // included.
            head: TrunkHead::new(
                &p,
                &HeadLayout {
                    dim,
                    eps,
                    norm: facts.norm,
                    fc_norm: facts.fc_norm,
                    attn_pool: facts.attn_pool.as_ref(),
                    prefix_tokens,
                    map_over_prefix: true,
                },
                options,
            ),
            grad_checkpointing: false,
        }
    }

    /// The blocks run under activation checkpointing while training.
    pub fn set_grad_checkpointing(&mut self, enable: bool) {
        self.grad_checkpointing = enable;
    }

    /// The patch tokens with the prefix tokens and position embedding, after
    /// patch dropout, and the rotary embedding of the tokens kept (per
    /// sample when patch dropout chose them).
    fn embed(&self, images: &Tensor, train: bool) -> (Tensor, Option<Tensor>) {
        let x = self.tokens.forward(images);
        let (x, kept) = self.patch_drop.forward_with_indices(&x, train);
        let rope = self.rope.as_ref().map(|rope| {
            let rope = rope.to_device(x.device());
            match &kept {
                // [batch, kept, 2 * head_dim], then a heads axis.
                Some(kept) => {
                    let (batch, keep) = kept.size2().expect("[batch, kept]");
                    let width = rope.size()[1];
                    rope.unsqueeze(0)
                        .expand([batch, -1, -1], false)
                        .gather(
                            1,
                            &kept.unsqueeze(-1).expand([batch, keep, width], false),
                            false,
                        )
                        .unsqueeze(1)
                }
                None => rope,
            }
        });
        (x, rope)
    }

    /// Images [N, 3, H, W] to the pooled features (through `head`, if the
    /// trunk has one).
    pub fn forward_t(&self, images: &Tensor, train: bool) -> Tensor {
        let (x, rope) = self.embed(images, train);
        let mut x = match &self.norm_pre {
            Some(norm) => norm.forward(&x),
            None => x,
        };
        for block in &self.blocks {
            x = if self.grad_checkpointing && train {
                block.forward_checkpointed(&x, rope.as_ref())
            } else {
                block.forward_t(&x, rope.as_ref(), train)
            };
        }
        self.head.forward_t(&x, train)
    }
}
