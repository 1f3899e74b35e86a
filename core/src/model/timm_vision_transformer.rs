//! timm's `VisionTransformer` (and `VisionTransformerRelPos`), the trunk of
//! a timm image tower (`visual.trunk.` in OpenCLIP's checkpoints):
//! `patch_embed.proj`, `cls_token` and `reg_token` where the model has them,
//! `pos_embed` (or, in a relpos model, each block's `attn.rel_pos.mlp`),
//! patch dropout, `norm_pre`, `blocks.N` (`norm1`, `attn.qkv`, `attn.proj`,
//! `ls1`, `norm2`, `mlp.fc1`, `mlp.fc2`, `ls2`), `norm`, the MAP head
//! `attn_pool` (`latent`, `q`, `kv`, `proj`, `norm`, `mlp`), `fc_norm` and
//! `head`. Which of these a model has, and their sizes, come from
//! [`TimmVitFacts`] (timm's registry, read into `timm_configs.json`). The
//! pieces a ViT-like trunk shares with an Eva ([`PatchTokens`],
//! [`TrunkHead`], the MAP head, patch dropout) live here too.

use serde::Deserialize;
use tch::nn::{self, Init, Module};
use tch::{Kind, Tensor};

use super::config::NormKwargs;
use super::transformer::{
    layer_norm, linear_parameters, merge_heads, normal_linear, shallow_clone_linear, split_heads,
    Activation, LayerNorm,
};
use crate::activation_checkpoint::checkpoint_block;

/// What timm's registry says of one VisionTransformer model.
#[derive(Debug, Clone, Deserialize)]
pub struct TimmVitFacts {
    pub img_size: [i64; 2],
    pub patch_size: [i64; 2],
    pub patch_bias: bool,
    pub embed_dim: i64,
    pub depth: i64,
    pub num_heads: i64,
    pub mlp_hidden: i64,
    pub qkv_bias: bool,
    pub proj_bias: bool,
    pub layer_scale: bool,
    pub class_token: bool,
    pub reg_tokens: i64,
    pub no_embed_class: bool,
    pub pre_norm: bool,
    pub norm: bool,
    pub fc_norm: bool,
    pub norm_eps: f64,
    pub act: String,
    pub global_pool: String,
    pub attn_pool: Option<AttentionPoolFacts>,
    /// A learned absolute position embedding (`pos_embed`); a
    /// VisionTransformerRelPos has none.
    #[serde(default = "yes")]
    pub pos_embed: bool,
    /// A VisionTransformerRelPos's per-block relative position MLP.
    #[serde(default)]
    pub rel_pos: Option<RelPosFacts>,
}

fn yes() -> bool {
    true
}

/// timm's `RelPosMlp` in its 'cr' mode: an MLP from the log-spaced (row,
/// column) offset of two patches to a bias per head.
#[derive(Debug, Clone, Deserialize)]
pub struct RelPosFacts {
    pub hidden: i64,
    /// Dropout after the MLP's ReLU, while training.
    pub dropout: f64,
}

/// What timm's registry says of a model's MAP head (`AttentionPoolLatent`).
#[derive(Debug, Clone, Deserialize)]
pub struct AttentionPoolFacts {
    pub num_heads: i64,
    pub latent_len: i64,
    pub mlp_hidden: i64,
    pub qkv_bias: bool,
    pub act: String,
    pub pool: String,
}

/// How the trunk turns its tokens into one vector (timm's `global_pool`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrunkPool {
    /// The class token.
    Token,
    /// The mean of the patch tokens.
    Avg,
    /// The maximum of the patch tokens.
    Max,
    /// Half the maximum plus half the mean.
    AvgMax,
    /// The MAP head (`attn_pool`).
    Map,
}

impl TrunkPool {
    pub fn parse(name: &str) -> Option<TrunkPool> {
        Some(match name {
            "token" => TrunkPool::Token,
            "avg" => TrunkPool::Avg,
            "max" => TrunkPool::Max,
            "avgmax" => TrunkPool::AvgMax,
            "map" => TrunkPool::Map,
            _ => return None,
        })
    }
}

/// What OpenCLIP's `TimmModel` asks of a trunk beside its facts.
#[derive(Debug, Clone)]
pub struct TrunkOptions {
    pub pool: TrunkPool,
    /// `num_classes` of the trunk's own `head` (0: none).
    pub head_dim: i64,
    /// timm's `patch_drop_rate` (OpenCLIP's `patch_dropout`).
    pub patch_drop: f64,
    /// timm's `drop_path_rate` (OpenCLIP's `timm_drop_path`): stochastic
    /// depth rising linearly from 0 at the first block to this at the last.
    pub drop_path: f64,
}

pub(super) fn norm(p: nn::Path, dim: i64, eps: f64) -> LayerNorm {
    layer_norm(p, dim, Some(&NormKwargs { eps: Some(eps) }))
}

/// timm's `Mlp`: `fc1`, the activation, dropout, `fc2`.
#[derive(Debug)]
pub struct TimmMlp {
    fc1: nn::Linear,
    fc2: nn::Linear,
    act: Activation,
    /// Dropout after the activation, while training.
    drop: f64,
}

impl TimmMlp {
    pub(super) fn new(p: nn::Path, dim: i64, hidden: i64, act: Activation) -> Self {
        Self::with_output(p, dim, hidden, dim, act, true, 0.0)
    }

    /// An MLP from `dim` through `hidden` to `out`; `fc2_bias` false drops
    /// the second layer's bias, and `drop` is the dropout after the
    /// activation.
    pub fn with_output(
        p: nn::Path,
        dim: i64,
        hidden: i64,
        out: i64,
        act: Activation,
        fc2_bias: bool,
        drop: f64,
    ) -> Self {
        TimmMlp {
            fc1: normal_linear(&p / "fc1", dim, hidden, true),
            fc2: normal_linear(&p / "fc2", hidden, out, fc2_bias),
            act,
            drop,
        }
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let hidden = self.act.apply(&self.fc1.forward(x));
        self.fc2.forward(&hidden.dropout(self.drop, train))
    }

    pub(super) fn parameters(&self) -> impl Iterator<Item = &Tensor> {
        linear_parameters(&self.fc1).chain(linear_parameters(&self.fc2))
    }

    pub(super) fn shallow_clone(&self) -> Self {
        TimmMlp {
            fc1: shallow_clone_linear(&self.fc1),
            fc2: shallow_clone_linear(&self.fc2),
            act: self.act,
            drop: self.drop,
        }
    }
}

pub(super) fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    Tensor::scaled_dot_product_attention(q, k, v, None::<Tensor>, 0.0, false, None::<f64>, false)
}

/// timm's `Attention` (or `RelPosAttention`): a packed `qkv` projection
/// and `proj`, with the block's relative position bias where it has one.
#[derive(Debug)]
struct TimmAttention {
    qkv: nn::Linear,
    rel_pos: Option<RelPosMlp>,
    proj: nn::Linear,
    heads: i64,
}

impl TimmAttention {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let qkv = self.qkv.forward(x).chunk(3, -1);
        let q = split_heads(&qkv[0], self.heads);
        let k = split_heads(&qkv[1], self.heads);
        let v = split_heads(&qkv[2], self.heads);
        let attended = match &self.rel_pos {
            None => attention(&q, &k, &v),
            Some(rel_pos) => {
                let bias = rel_pos.bias_t(train).to_kind(q.kind());
                Tensor::scaled_dot_product_attention(
                    &q,
                    &k,
                    &v,
                    Some(bias),
                    0.0,
                    false,
                    None::<f64>,
                    false,
                )
            }
        };
        self.proj.forward(&merge_heads(&attended))
    }

    fn parameters(&self) -> Vec<&Tensor> {
        let mut params: Vec<&Tensor> = linear_parameters(&self.qkv).collect();
        if let Some(rel_pos) = &self.rel_pos {
            params.extend(linear_parameters(&rel_pos.fc1));
            params.extend(linear_parameters(&rel_pos.fc2));
        }
        params.extend(linear_parameters(&self.proj));
        params
    }

    fn shallow_clone(&self) -> Self {
        TimmAttention {
            qkv: shallow_clone_linear(&self.qkv),
            rel_pos: self.rel_pos.as_ref().map(RelPosMlp::shallow_clone),
            proj: shallow_clone_linear(&self.proj),
            heads: self.heads,
        }
    }
}

/// timm's `RelPosMlp` ('cr' mode) under `attn.rel_pos.mlp`: `fc1`, ReLU,
/// dropout, `fc2` from each pair of patches' (row, column) offset, as
/// sign(d) ln(1 + |d|), to a bias per head; the pairs with a prefix token
/// get none.
#[derive(Debug)]
struct RelPosMlp {
    fc1: nn::Linear,
    fc2: nn::Linear,
    dropout: f64,
    /// The log-spaced offsets, [(2H - 1) * (2W - 1), 2].
    offsets: Tensor,
    /// For each (query patch, key patch), its row of `offsets`, [P * P].
    index: Tensor,
    patches: i64,
    prefix_tokens: i64,
}

impl RelPosMlp {
    fn new(
        p: nn::Path,
        facts: &RelPosFacts,
        heads: i64,
        grid: [i64; 2],
        prefix_tokens: i64,
    ) -> Self {
        let cpu = (Kind::Float, tch::Device::Cpu);
        let [rows, cols] = grid;
        let span = |n: i64| Tensor::arange_start(-(n - 1), n, cpu);
        let grid_offsets = Tensor::meshgrid_indexing(&[span(rows), span(cols)], "ij");
        let offsets = Tensor::stack(&grid_offsets, -1).reshape([-1, 2]);
        let offsets = offsets.sign() * (offsets.abs() + 1.0).log();
        // Patch (r, c) to patch (r', c'): row (r - r' + H - 1) * (2W - 1)
        // + (c - c' + W - 1) of the offset table.
        let long = (Kind::Int64, tch::Device::Cpu);
        let r = Tensor::arange(rows, long).repeat_interleave_self_int(cols, 0, None);
        let c = Tensor::arange(cols, long).repeat([rows]);
        let dr = r.unsqueeze(1) - r.unsqueeze(0) + (rows - 1);
        let dc = c.unsqueeze(1) - c.unsqueeze(0) + (cols - 1);
        let index = (dr * (2 * cols - 1) + dc).flatten(0, 1);
        let mlp = &p / "mlp";
        RelPosMlp {
            fc1: normal_linear(&mlp / "fc1", 2, facts.hidden, true),
            fc2: normal_linear(&mlp / "fc2", facts.hidden, heads, true),
            dropout: facts.dropout,
            offsets: offsets.to_device(p.device()),
            index: index.to_device(p.device()),
            patches: rows * cols,
            prefix_tokens,
        }
    }

    /// The additive attention bias [1, heads, tokens, tokens].
    fn bias_t(&self, train: bool) -> Tensor {
        let hidden = self
            .fc1
            .forward(&self.offsets)
            .relu()
            .dropout(self.dropout, train);
        let per_offset = self.fc2.forward(&hidden);
        let heads = per_offset.size()[1];
        let bias = per_offset
            .index_select(0, &self.index)
            .view([self.patches, self.patches, heads])
            .permute([2, 0, 1]);
        let prefix = self.prefix_tokens;
        bias.constant_pad_nd([prefix, 0, prefix, 0]).unsqueeze(0)
    }

    fn shallow_clone(&self) -> Self {
        RelPosMlp {
            fc1: shallow_clone_linear(&self.fc1),
            fc2: shallow_clone_linear(&self.fc2),
            dropout: self.dropout,
            offsets: self.offsets.shallow_clone(),
            index: self.index.shallow_clone(),
            patches: self.patches,
            prefix_tokens: self.prefix_tokens,
        }
    }
}

/// timm's `LayerScale` (`gamma`).
#[derive(Debug)]
struct TimmLayerScale {
    gamma: Tensor,
}

fn scaled(ls: &Option<TimmLayerScale>, x: Tensor) -> Tensor {
    match ls {
        Some(ls) => x * &ls.gamma,
        None => x,
    }
}

/// timm's `drop_path`: each sample's `x` zeroed with probability `prob`,
/// the others scaled by 1 / (1 - prob).
pub(crate) fn drop_path(x: Tensor, prob: f64, train: bool) -> Tensor {
    if !train || prob == 0.0 {
        return x;
    }
    let keep = 1.0 - prob;
    let mut shape = vec![1; x.dim()];
    shape[0] = x.size()[0];
    let mask = Tensor::empty(shape.as_slice(), (x.kind(), x.device())).bernoulli_float_(keep);
    x * (mask / keep)
}

/// timm's `Block`: pre-norm attention and MLP, each with its layer scale.
#[derive(Debug)]
struct TimmBlock {
    norm1: LayerNorm,
    attn: TimmAttention,
    ls1: Option<TimmLayerScale>,
    norm2: LayerNorm,
    mlp: TimmMlp,
    ls2: Option<TimmLayerScale>,
    /// The probability of dropping each residual branch for a sample,
    /// while training.
    drop_path: f64,
}

impl TimmBlock {
    fn new(
        p: nn::Path,
        facts: &TimmVitFacts,
        tokens: &PatchTokens,
        act: Activation,
        drop_path: f64,
    ) -> Self {
        let dim = facts.embed_dim;
        let rel_pos = facts.rel_pos.as_ref().map(|rel_pos| {
            let path = &p / "attn" / "rel_pos";
            RelPosMlp::new(
                path,
                rel_pos,
                facts.num_heads,
                tokens.grid,
                tokens.prefix_tokens,
            )
        });
        let layer_scale = |name: &str| {
            // timm's ViTs with layer scale start it at 1e-6 or 1e-5; a
            // checkpoint's values replace it in any case.
            facts.layer_scale.then(|| TimmLayerScale {
                gamma: (&p / name).var("gamma", &[dim], Init::Const(1e-6)),
            })
        };
        TimmBlock {
            norm1: norm(&p / "norm1", dim, facts.norm_eps),
            attn: TimmAttention {
                qkv: normal_linear(&p / "attn" / "qkv", dim, 3 * dim, facts.qkv_bias),
                rel_pos,
                proj: normal_linear(&p / "attn" / "proj", dim, dim, facts.proj_bias),
                heads: facts.num_heads,
            },
            ls1: layer_scale("ls1"),
            norm2: norm(&p / "norm2", dim, facts.norm_eps),
            mlp: TimmMlp::new(&p / "mlp", dim, facts.mlp_hidden, act),
            ls2: layer_scale("ls2"),
            drop_path,
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let attended = scaled(
            &self.ls1,
            self.attn.forward_t(&self.norm1.forward(x), train),
        );
        let x = x + drop_path(attended, self.drop_path, train);
        let mlp = scaled(
            &self.ls2,
            self.mlp.forward_t(&self.norm2.forward(&x), train),
        );
        &x + drop_path(mlp, self.drop_path, train)
    }

    /// `forward_t` in training under activation checkpointing (timm's
    /// `checkpoint_seq` of the blocks; the random draws of drop path are
    /// replayed in the recomputation).
    fn forward_checkpointed(&self, x: &Tensor) -> Tensor {
        checkpoint_block(x, &self.parameters(), self.shallow_clone(), |block, x| {
            block.forward_t(x, true)
        })
    }

    /// Every tensor `forward_t` reads that may need a gradient.
    fn parameters(&self) -> Vec<&Tensor> {
        let layer_scales = [&self.ls1, &self.ls2];
        self.norm1
            .parameters()
            .into_iter()
            .chain(self.attn.parameters())
            .chain(self.norm2.parameters())
            .chain(self.mlp.parameters())
            .chain(layer_scales.into_iter().flatten().map(|ls| &ls.gamma))
            .collect()
    }

    /// A block sharing this one's weights, for the checkpointed closure to
    /// own (it must be `'static + Send`).
    fn shallow_clone(&self) -> Self {
        let ls = |ls: &Option<TimmLayerScale>| {
            ls.as_ref().map(|ls| TimmLayerScale {
                gamma: ls.gamma.shallow_clone(),
            })
        };
        TimmBlock {
            norm1: self.norm1.shallow_clone(),
            attn: self.attn.shallow_clone(),
            ls1: ls(&self.ls1),
            norm2: self.norm2.shallow_clone(),
            mlp: self.mlp.shallow_clone(),
            ls2: ls(&self.ls2),
            drop_path: self.drop_path,
        }
    }
}

/// A standard-normal tensor truncated to ±2 (resampled until inside), times
/// `std`: timm's `trunc_normal_tf_`.
fn truncated_normal(shape: &[i64], std: f64) -> Tensor {
    let options = (Kind::Float, tch::Device::Cpu);
    let mut x = Tensor::randn(shape, options);
    loop {
        let inside = x.abs().le(2.0);
        if inside.all().int64_value(&[]) != 0 {
            return x * std;
        }
        x = x.where_self(&inside, &Tensor::randn(shape, options));
    }
}

/// timm's `AttentionPoolLatent` (the MAP head): learned latent queries
/// attend over the tokens, then a residual MLP; the first latent (or their
/// mean) is the pooled vector.
#[derive(Debug)]
pub(super) struct AttentionPoolLatent {
    latent: Tensor,
    q: nn::Linear,
    kv: nn::Linear,
    proj: nn::Linear,
    norm: LayerNorm,
    mlp: TimmMlp,
    heads: i64,
    average: bool,
}

impl AttentionPoolLatent {
    pub(super) fn new(p: nn::Path, dim: i64, facts: &AttentionPoolFacts, eps: f64) -> Self {
        let latent = p.var_copy(
            "latent",
            &truncated_normal(&[1, facts.latent_len, dim], (dim as f64).powf(-0.5)),
        );
        AttentionPoolLatent {
            latent,
            q: normal_linear(&p / "q", dim, dim, facts.qkv_bias),
            kv: normal_linear(&p / "kv", dim, 2 * dim, facts.qkv_bias),
            proj: normal_linear(&p / "proj", dim, dim, true),
            norm: norm(&p / "norm", dim, eps),
            mlp: TimmMlp::new(
                &p / "mlp",
                dim,
                facts.mlp_hidden,
                Activation::named(&facts.act),
            ),
            heads: facts.num_heads,
            average: facts.pool == "avg",
        }
    }

    pub(super) fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let batch = x.size()[0];
        let latent = self.latent.to_kind(x.kind()).expand([batch, -1, -1], false);
        let q = split_heads(&self.q.forward(&latent), self.heads);
        let kv = self.kv.forward(x).chunk(2, -1);
        let k = split_heads(&kv[0], self.heads);
        let v = split_heads(&kv[1], self.heads);
        let x = self.proj.forward(&merge_heads(&attention(&q, &k, &v)));
        let x = &x + self.mlp.forward_t(&self.norm.forward(&x), train);
        if self.average {
            x.mean_dim(1, false, None)
        } else {
            x.select(1, 0)
        }
    }
}

/// Drops a random subset of the patch tokens while training, keeping the
/// prefix (class and register) tokens: timm's `PatchDropout`.
#[derive(Debug)]
pub(super) struct PatchDropout {
    pub(super) prob: f64,
    pub(super) prefix_tokens: i64,
}

impl PatchDropout {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward_with_indices(x, train).0
    }

    /// The kept tokens, and (while training) which patches were kept,
    /// [batch, kept] indices into the patch tokens.
    pub(super) fn forward_with_indices(&self, x: &Tensor, train: bool) -> (Tensor, Option<Tensor>) {
        if !train || self.prob == 0.0 {
            return (x.shallow_clone(), None);
        }
        let (batch, tokens, width) = x.size3().expect("[batch, tokens, width]");
        let patches = tokens - self.prefix_tokens;
        let keep = ((patches as f64 * (1.0 - self.prob)) as i64).max(1);
        let order = Tensor::randn([batch, patches], (Kind::Float, x.device())).argsort(-1, false);
        let indices = order.narrow(1, 0, keep);
        let kept = x.narrow(1, self.prefix_tokens, patches).gather(
            1,
            &indices.unsqueeze(-1).expand([batch, keep, width], false),
            false,
        );
        let x = Tensor::cat(&[x.narrow(1, 0, self.prefix_tokens), kept], 1);
        (x, Some(indices))
    }
}

/// timm's `global_pool_nlc`: the class token, or the mean, maximum or both
/// of the tokens after the `prefix_tokens` (the MAP head pools on its own).
pub(super) fn pool_tokens(x: &Tensor, pool: TrunkPool, prefix_tokens: i64) -> Tensor {
    let patches = || x.narrow(1, prefix_tokens, x.size()[1] - prefix_tokens);
    match pool {
        TrunkPool::Token => x.select(1, 0),
        TrunkPool::Max => patches().amax([1], false),
        TrunkPool::AvgMax => {
            let patches = patches();
            (patches.amax([1], false) + patches.mean_dim(1, false, None)) * 0.5
        }
        TrunkPool::Avg | TrunkPool::Map => patches().mean_dim(1, false, None),
    }
}

/// How a ViT-like trunk (a VisionTransformer or an Eva) makes its tokens.
pub(super) struct TokenLayout {
    pub(super) img_size: [i64; 2],
    pub(super) patch_size: [i64; 2],
    pub(super) patch_bias: bool,
    pub(super) dim: i64,
    pub(super) class_token: bool,
    pub(super) reg_tokens: i64,
    /// The position embedding covers the patches only.
    pub(super) no_embed_class: bool,
    /// A learned absolute position embedding (`pos_embed`).
    pub(super) pos_embed: bool,
    /// The initial standard deviation of `cls_token` and `reg_token`.
    pub(super) token_std: f64,
}

/// A ViT-like trunk's token sequence: `patch_embed.proj`, then `cls_token`
/// and `reg_token` before the patches, and `pos_embed` added to the patches
/// or to every token.
#[derive(Debug)]
pub(super) struct PatchTokens {
    proj: nn::Conv2D,
    cls_token: Option<Tensor>,
    reg_token: Option<Tensor>,
    pos_embed: Option<Tensor>,
    no_embed_class: bool,
    /// The class and register tokens before the patches.
    pub(super) prefix_tokens: i64,
    /// Patches down and across.
    pub(super) grid: [i64; 2],
}

impl PatchTokens {
    pub(super) fn new(p: &nn::Path, layout: &TokenLayout) -> Self {
        let dim = layout.dim;
        let [patch_h, patch_w] = layout.patch_size;
        let grid = [layout.img_size[0] / patch_h, layout.img_size[1] / patch_w];
        let proj = nn::conv(
            p / "patch_embed" / "proj",
            3,
            dim,
            [patch_h, patch_w],
            nn::ConvConfigND {
                stride: [patch_h, patch_w],
                bias: layout.patch_bias,
                ..Default::default()
            },
        );
        let prefix_tokens = i64::from(layout.class_token) + layout.reg_tokens;
        let patches = grid[0] * grid[1];
        let embed_len = if layout.no_embed_class {
            patches
        } else {
            patches + prefix_tokens
        };
        let token_init = Init::Randn {
            mean: 0.0,
            stdev: layout.token_std,
        };
        let pos_init = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        PatchTokens {
            proj,
            cls_token: layout
                .class_token
                .then(|| p.var("cls_token", &[1, 1, dim], token_init)),
            reg_token: (layout.reg_tokens > 0)
                .then(|| p.var("reg_token", &[1, layout.reg_tokens, dim], token_init)),
            pos_embed: layout
                .pos_embed
                .then(|| p.var("pos_embed", &[1, embed_len, dim], pos_init)),
            no_embed_class: layout.no_embed_class,
            prefix_tokens,
            grid,
        }
    }

    /// Images [N, 3, H, W] to tokens [N, prefix + patches, dim].
    pub(super) fn forward(&self, images: &Tensor) -> Tensor {
        let x = self.proj.forward(images);
        let (n, c, _, _) = x.size4().expect("patch embedding is [N, C, H, W]");
        let x = x.flatten(2, 3).transpose(1, 2);
        let kind = x.kind();
        let mut tokens: Vec<Tensor> = [&self.cls_token, &self.reg_token]
            .into_iter()
            .flatten()
            .map(|token| token.to_kind(kind).expand([n, -1, c], false))
            .collect();
        let with_position = |x: Tensor| match &self.pos_embed {
            Some(pos_embed) => x + pos_embed.to_kind(kind),
            None => x,
        };
        if self.no_embed_class {
            tokens.push(with_position(x));
            Tensor::cat(&tokens, 1)
        } else {
            tokens.push(x);
            with_position(Tensor::cat(&tokens, 1))
        }
    }
}

/// What follows a ViT-like trunk's blocks: `norm`, the pooling (the MAP
/// head `attn_pool`, or timm's global pool), `fc_norm`, then the trunk's
/// own `head` where it projects.
#[derive(Debug)]
pub(super) struct TrunkHead {
    norm: Option<LayerNorm>,
    attn_pool: Option<AttentionPoolLatent>,
    fc_norm: Option<LayerNorm>,
    head: Option<nn::Linear>,
    pool: TrunkPool,
    prefix_tokens: i64,
    /// The MAP head attends over the prefix tokens too (an Eva's does, a
    /// VisionTransformer's does not).
    map_over_prefix: bool,
}

/// Which of a [`TrunkHead`]'s layers a trunk has.
pub(super) struct HeadLayout<'a> {
    pub(super) dim: i64,
    pub(super) eps: f64,
    pub(super) norm: bool,
    pub(super) fc_norm: bool,
    pub(super) attn_pool: Option<&'a AttentionPoolFacts>,
    pub(super) prefix_tokens: i64,
    pub(super) map_over_prefix: bool,
}

impl TrunkHead {
    pub(super) fn new(p: &nn::Path, layout: &HeadLayout, options: &TrunkOptions) -> Self {
        let (dim, eps) = (layout.dim, layout.eps);
        let attn_pool = match (layout.attn_pool, options.pool) {
            (Some(pool), TrunkPool::Map) => {
                Some(AttentionPoolLatent::new(p / "attn_pool", dim, pool, eps))
            }
            _ => None,
        };
        TrunkHead {
            norm: layout.norm.then(|| norm(p / "norm", dim, eps)),
            attn_pool,
            fc_norm: layout.fc_norm.then(|| norm(p / "fc_norm", dim, eps)),
            head: (options.head_dim > 0)
                .then(|| normal_linear(p / "head", dim, options.head_dim, true)),
            pool: options.pool,
            prefix_tokens: layout.prefix_tokens,
            map_over_prefix: layout.map_over_prefix,
        }
    }

    /// The blocks' output [N, tokens, dim] to the trunk's features.
    pub(super) fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let x = match &self.norm {
            Some(norm) => norm.forward(x),
            None => x.shallow_clone(),
        };
        let pooled = match &self.attn_pool {
            Some(attn_pool) if self.map_over_prefix => attn_pool.forward_t(&x, train),
            Some(attn_pool) => {
                let patches = x.narrow(1, self.prefix_tokens, x.size()[1] - self.prefix_tokens);
                attn_pool.forward_t(&patches, train)
            }
            None => pool_tokens(&x, self.pool, self.prefix_tokens),
        };
        let pooled = match &self.fc_norm {
            Some(norm) => norm.forward(&pooled),
            None => pooled,
        };
        match &self.head {
            Some(head) => head.forward(&pooled),
            None => pooled,
        }
    }
}

/// timm's `VisionTransformer` with the module tree of its checkpoints.
#[derive(Debug)]
pub struct TimmVisionTransformer {
    tokens: PatchTokens,
    patch_drop: PatchDropout,
    norm_pre: Option<LayerNorm>,
    blocks: Vec<TimmBlock>,
    head: TrunkHead,
    grad_checkpointing: bool,
}

impl TimmVisionTransformer {
    pub fn new(p: nn::Path, facts: &TimmVitFacts, options: &TrunkOptions) -> Self {
        let dim = facts.embed_dim;
        let act = Activation::named(&facts.act);
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
                token_std: 1e-6,
            },
        );
        let prefix_tokens = tokens.prefix_tokens;
        // timm's linspace(0, drop_path_rate, depth).
        let rate = |i: i64| match facts.depth {
            1 => 0.0,
            depth => options.drop_path * i as f64 / (depth - 1) as f64,
        };
        let blocks = (0..facts.depth)
            .map(|i| TimmBlock::new(&p / "blocks" / i, facts, &tokens, act, rate(i)))
            .collect();
        TimmVisionTransformer {
            tokens,
            patch_drop: PatchDropout {
                prob: options.patch_drop,
                prefix_tokens,
            },
            norm_pre: facts
                .pre_norm
                .then(|| norm(&p / "norm_pre", dim, facts.norm_eps)),
            blocks,
            head: TrunkHead::new(
                &p,
                &HeadLayout {
                    dim,
                    eps: facts.norm_eps,
                    norm: facts.norm,
                    fc_norm: facts.fc_norm,
                    attn_pool: facts.attn_pool.as_ref(),
                    prefix_tokens,
                    map_over_prefix: false,
                },
                options,
            ),
            grad_checkpointing: false,
        }
    }

    /// The blocks run under activation checkpointing while training
    /// (OpenCLIP's `set_grad_checkpointing` on a timm tower).
    pub fn set_grad_checkpointing(&mut self, enable: bool) {
        self.grad_checkpointing = enable;
    }

    /// Images [N, 3, H, W] to the pooled features (through `head`, if the
    /// trunk has one).
    pub fn forward_t(&self, images: &Tensor, train: bool) -> Tensor {
        let x = self.tokens.forward(images);
        let x = self.patch_drop.forward_t(&x, train);
        let mut x = match &self.norm_pre {
            Some(norm) => norm.forward(&x),
            None => x,
        };
        for block in &self.blocks {
            x = if self.grad_checkpointing && train {
                block.forward_checkpointed(&x)
            } else {
                block.forward_t(&x, train)
            };
        }
        self.head.forward_t(&x, train)
    }
}
