//! The transformer blocks shared by the image and text towers, mirroring
//! OpenCLIP's `transformer.py`: `Transformer` (`resblocks.N`),
//! `ResidualAttentionBlock` (`ln_1`, `attn`, `ls_1`, `ln_2`, `mlp.c_fc`,
//! `mlp.c_proj`, `ls_2`), multi-head attention with PyTorch's
//! `nn.MultiheadAttention` parameter names (`in_proj_weight`, `out_proj`), and
//! the attentional pooler. With grad checkpointing on, each residual block of
//! the stack runs under [`checkpoint`], as OpenCLIP's
//! `Transformer.grad_checkpointing` does (the pooler is not checkpointed).

use tch::nn::{self, Init, Module};
use tch::Tensor;

use super::config::{ActKwargs, NormKwargs};
use crate::activation_checkpoint::checkpoint;

/// The MLP activation: `nn.GELU` (exact or tanh-approximated) or OpenAI's QuickGELU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Gelu,
    GeluTanh,
    QuickGelu,
}

impl Activation {
    pub fn from_config(quick_gelu: bool, act_kwargs: Option<&ActKwargs>) -> Self {
        let tanh = act_kwargs.and_then(|a| a.approximate.as_deref()) == Some("tanh");
        match (quick_gelu, tanh) {
            (true, _) => Activation::QuickGelu,
            (false, true) => Activation::GeluTanh,
            (false, false) => Activation::Gelu,
        }
    }

    /// timm's activation by the name `timm_configs.json` gives it
    /// (`gelu_tanh`, else exact GELU).
    pub fn named(name: &str) -> Self {
        match name {
            "gelu_tanh" => Activation::GeluTanh,
            _ => Activation::Gelu,
        }
    }

    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Gelu => x.gelu("none"),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::QuickGelu => x * (x * 1.702).sigmoid(),
        }
    }
}

/// LayerNorm computed in the dtype of its weights: an input of another dtype
/// (bf16 activations with the fp32 LayerNorms of `--precision bf16`) is cast
/// to it and the result cast back, as OpenCLIP's `LayerNormFp32` does.
#[derive(Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    dim: i64,
    eps: f64,
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let kind = self.weight.kind();
        let normed = x.to_kind(kind).layer_norm(
            [self.dim],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        );
        normed.to_kind(x.kind())
    }
}

impl LayerNorm {
    pub(crate) fn shallow_clone(&self) -> Self {
        LayerNorm {
            weight: self.weight.shallow_clone(),
            bias: self.bias.shallow_clone(),
            ..*self
        }
    }

    pub(crate) fn parameters(&self) -> [&Tensor; 2] {
        [&self.weight, &self.bias]
    }
}

/// LayerNorm with OpenCLIP's eps (1e-5 unless the config's norm_kwargs say otherwise).
pub fn layer_norm(p: nn::Path, dim: i64, norm_kwargs: Option<&NormKwargs>) -> LayerNorm {
    LayerNorm {
        weight: p.var("weight", &[dim], Init::Const(1.0)),
        bias: p.var("bias", &[dim], Init::Const(0.0)),
        dim,
        eps: norm_kwargs.and_then(|n| n.eps).unwrap_or(1e-5),
    }
}

/// A linear layer initialised like `torch.nn.Linear` (kaiming-uniform weight,
/// uniform bias in ±1/sqrt(fan_in)).
pub fn linear(p: nn::Path, in_dim: i64, out_dim: i64) -> nn::Linear {
    torch_linear(p, in_dim, out_dim, true)
}

/// `torch.nn.Linear(in_dim, out_dim, bias)` with its initialisation.
pub fn torch_linear(p: nn::Path, in_dim: i64, out_dim: i64, bias: bool) -> nn::Linear {
    let bound = 1.0 / (in_dim as f64).sqrt();
    let uniform = Init::Uniform {
        lo: -bound,
        up: bound,
    };
    nn::linear(
        p,
        in_dim,
        out_dim,
        nn::LinearConfig {
            ws_init: uniform,
            bs_init: Some(uniform),
            bias,
        },
    )
}

/// A linear layer initialised as timm and HuggingFace initialise their
/// transformers: weights normal with std 0.02 (timm's truncation at ±2 is
/// 100 standard deviations out, so never reached), biases zero.
pub fn normal_linear(p: nn::Path, in_dim: i64, out_dim: i64, bias: bool) -> nn::Linear {
    nn::linear(
        p,
        in_dim,
        out_dim,
        nn::LinearConfig {
            ws_init: Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
            bs_init: Some(Init::Const(0.0)),
            bias,
        },
    )
}

pub(crate) fn shallow_clone_linear(linear: &nn::Linear) -> nn::Linear {
    nn::Linear {
        ws: linear.ws.shallow_clone(),
        bs: linear.bs.as_ref().map(Tensor::shallow_clone),
    }
}

pub(crate) fn linear_parameters(linear: &nn::Linear) -> impl Iterator<Item = &Tensor> {
    std::iter::once(&linear.ws).chain(linear.bs.as_ref())
}

/// Splits [N, L, heads*head_dim] into [N, heads, L, head_dim].
pub(crate) fn split_heads(x: &Tensor, heads: i64) -> Tensor {
    let (n, l, c) = x
        .size3()
        .expect("attention input is [batch, tokens, width]");
    x.reshape([n, l, heads, c / heads]).transpose(1, 2)
}

/// Scaled dot-product attention of split heads, with an optional additive
/// mask; no dropout, not causal (a causal mask comes in `attn_mask`).
fn attention(q: &Tensor, k: &Tensor, v: &Tensor, attn_mask: Option<Tensor>) -> Tensor {
    Tensor::scaled_dot_product_attention(q, k, v, attn_mask, 0.0, false, None::<f64>, false)
}

/// Merges [N, heads, L, head_dim] back into [N, L, heads*head_dim].
pub(crate) fn merge_heads(x: &Tensor) -> Tensor {
    let (n, h, l, d) = x
        .size4()
        .expect("attention output is [batch, heads, tokens, dim]");
    x.transpose(1, 2).reshape([n, l, h * d])
}

/// `torch.nn.MultiheadAttention` (batch first, self-attention): packed
/// `in_proj_weight` / `in_proj_bias` and `out_proj`.
#[derive(Debug)]
pub struct MultiheadAttention {
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: nn::Linear,
    heads: i64,
}

impl MultiheadAttention {
    pub fn new(p: nn::Path, dim: i64, heads: i64) -> Self {
        // xavier-uniform over the packed [3*dim, dim] matrix, as PyTorch does.
        let bound = (6.0 / (dim + 3 * dim) as f64).sqrt();
        let in_proj_weight = p.var(
            "in_proj_weight",
            &[3 * dim, dim],
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        );
        let in_proj_bias = p.zeros("in_proj_bias", &[3 * dim]);
        let out_proj = linear(&p / "out_proj", dim, dim);
        tch::no_grad(|| {
            let _ = out_proj.bs.as_ref().map(|b| b.shallow_clone().zero_());
        });
        MultiheadAttention {
            in_proj_weight,
            in_proj_bias,
            out_proj,
            heads,
        }
    }

    /// Self-attention over `x` [N, L, C] with an optional additive mask [L, L].
    pub fn forward(&self, x: &Tensor, attn_mask: Option<&Tensor>) -> Tensor {
        let qkv = x.linear(&self.in_proj_weight, Some(&self.in_proj_bias));
        let chunks = qkv.chunk(3, -1);
        let (q, k, v) = (
            split_heads(&chunks[0], self.heads),
            split_heads(&chunks[1], self.heads),
            split_heads(&chunks[2], self.heads),
        );
        let out = attention(&q, &k, &v, attn_mask.map(|m| m.to_kind(q.kind())));
        self.out_proj.forward(&merge_heads(&out))
    }

    /// Cross-attention: queries from `q_x` [N, Lq, C], keys and values from
    /// `kv_x` [N, Lk, C], through the thirds of the packed projection
    /// (what `nn.MultiheadAttention` does when its inputs differ).
    pub fn forward_cross(&self, q_x: &Tensor, kv_x: &Tensor) -> Tensor {
        let weights = self.in_proj_weight.chunk(3, 0);
        let biases = self.in_proj_bias.chunk(3, 0);
        let project = |x: &Tensor, i: usize| {
            split_heads(&x.linear(&weights[i], Some(&biases[i])), self.heads)
        };
        let out = attention(&project(q_x, 0), &project(kv_x, 1), &project(kv_x, 2), None);
        self.out_proj.forward(&merge_heads(&out))
    }

    fn shallow_clone(&self) -> Self {
        MultiheadAttention {
            in_proj_weight: self.in_proj_weight.shallow_clone(),
            in_proj_bias: self.in_proj_bias.shallow_clone(),
            out_proj: shallow_clone_linear(&self.out_proj),
            heads: self.heads,
        }
    }

    fn parameters(&self) -> impl Iterator<Item = &Tensor> {
        [&self.in_proj_weight, &self.in_proj_bias]
            .into_iter()
            .chain(linear_parameters(&self.out_proj))
    }
}

/// `LayerScale`: a learned per-channel scale `gamma` (present when the config
/// sets ls_init_value).
#[derive(Debug)]
pub struct LayerScale {
    gamma: Tensor,
}

impl LayerScale {
    pub fn new(p: nn::Path, dim: i64, init_value: f64) -> Self {
        LayerScale {
            gamma: p.var("gamma", &[dim], Init::Const(init_value)),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x * &self.gamma
    }

    fn shallow_clone(&self) -> Self {
        LayerScale {
            gamma: self.gamma.shallow_clone(),
        }
    }
}

/// The block's MLP: `c_fc`, activation, `c_proj`.
#[derive(Debug)]
pub struct Mlp {
    c_fc: nn::Linear,
    c_proj: nn::Linear,
    act: Activation,
}

impl Mlp {
    pub fn new(p: nn::Path, dim: i64, hidden: i64, act: Activation) -> Self {
        Mlp {
            c_fc: linear(&p / "c_fc", dim, hidden),
            c_proj: linear(&p / "c_proj", hidden, dim),
            act,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.c_proj.forward(&self.act.apply(&self.c_fc.forward(x)))
    }

    fn shallow_clone(&self) -> Self {
        Mlp {
            c_fc: shallow_clone_linear(&self.c_fc),
            c_proj: shallow_clone_linear(&self.c_proj),
            act: self.act,
        }
    }

    fn parameters(&self) -> impl Iterator<Item = &Tensor> {
        linear_parameters(&self.c_fc).chain(linear_parameters(&self.c_proj))
    }
}

/// Shape and numerics of a stack of residual attention blocks.
#[derive(Debug, Clone)]
pub struct TransformerConfig {
    pub width: i64,
    pub layers: i64,
    pub heads: i64,
    pub mlp_ratio: f64,
    pub ls_init_value: Option<f64>,
    pub act: Activation,
    pub norm: Option<NormKwargs>,
}

/// `ResidualAttentionBlock`: pre-norm attention and MLP, each with an
/// optional LayerScale. A cross-attention block (CoCa's decoder) also norms
/// the keys and values with `ln_1_kv`.
#[derive(Debug)]
pub struct ResidualAttentionBlock {
    ln_1: LayerNorm,
    ln_1_kv: Option<LayerNorm>,
    attn: MultiheadAttention,
    ls_1: Option<LayerScale>,
    ln_2: LayerNorm,
    mlp: Mlp,
    ls_2: Option<LayerScale>,
}

impl ResidualAttentionBlock {
    pub fn new(p: nn::Path, cfg: &TransformerConfig) -> Self {
        let mlp_width = (cfg.width as f64 * cfg.mlp_ratio) as i64;
        let ls = |name: &str| {
            cfg.ls_init_value
                .map(|v| LayerScale::new(&p / name, cfg.width, v))
        };
        ResidualAttentionBlock {
            ln_1: layer_norm(&p / "ln_1", cfg.width, cfg.norm.as_ref()),
            ln_1_kv: None,
            attn: MultiheadAttention::new(&p / "attn", cfg.width, cfg.heads),
            ls_1: ls("ls_1"),
            ln_2: layer_norm(&p / "ln_2", cfg.width, cfg.norm.as_ref()),
            mlp: Mlp::new(&p / "mlp", cfg.width, mlp_width, cfg.act),
            ls_2: ls("ls_2"),
        }
    }

    /// A block whose attention reads keys and values from another sequence
    /// (`is_cross_attention=True`).
    pub fn new_cross(p: nn::Path, cfg: &TransformerConfig) -> Self {
        ResidualAttentionBlock {
            ln_1_kv: Some(layer_norm(&p / "ln_1_kv", cfg.width, cfg.norm.as_ref())),
            ..ResidualAttentionBlock::new(p, cfg)
        }
    }

    pub fn forward(&self, x: &Tensor, attn_mask: Option<&Tensor>) -> Tensor {
        let attended = self.attn.forward(&self.ln_1.forward(x), attn_mask);
        self.finish(x, attended)
    }

    /// Attention from `x` to `kv` (normed by `ln_1_kv`), then the MLP.
    pub fn forward_cross(&self, x: &Tensor, kv: &Tensor) -> Tensor {
        let kv = match &self.ln_1_kv {
            Some(ln) => ln.forward(kv),
            None => kv.shallow_clone(),
        };
        let attended = self.attn.forward_cross(&self.ln_1.forward(x), &kv);
        self.finish(x, attended)
    }

    /// The residual additions around the attention output and the MLP.
    fn finish(&self, x: &Tensor, attended: Tensor) -> Tensor {
        let scale = |ls: &Option<LayerScale>, y: Tensor| match ls {
            Some(ls) => ls.forward(&y),
            None => y,
        };
        let x = x + scale(&self.ls_1, attended);
        let mlp_out = self.mlp.forward(&self.ln_2.forward(&x));
        &x + scale(&self.ls_2, mlp_out)
    }

    /// `forward` under [`checkpoint`]: the block's activations are recomputed
    /// during backward instead of kept. The mask, a constant, travels with
    /// the closure; OpenCLIP passes it to `checkpoint` alongside `x`.
    pub fn forward_checkpointed(&self, x: &Tensor, attn_mask: Option<&Tensor>) -> Tensor {
        let block = self.shallow_clone();
        let mask = attn_mask.map(Tensor::shallow_clone);
        checkpoint(&[x], &self.parameters(), move |inputs| {
            block.forward(&inputs[0], mask.as_ref())
        })
        // The plain forward panics on the errors tch reports inside it;
        // checkpointing returns them instead, and the block keeps the same
        // contract.
        .unwrap_or_else(|error| panic!("{error:#}"))
    }

    /// `forward_cross` under [`checkpoint`], `x` and `kv` both inputs (as
    /// OpenCLIP passes them to `checkpoint`).
    pub fn forward_cross_checkpointed(&self, x: &Tensor, kv: &Tensor) -> Tensor {
        let block = self.shallow_clone();
        checkpoint(&[x, kv], &self.parameters(), move |inputs| {
            block.forward_cross(&inputs[0], &inputs[1])
        })
        .unwrap_or_else(|error| panic!("{error:#}"))
    }

    /// Every tensor `forward` reads that may need a gradient.
    fn parameters(&self) -> Vec<&Tensor> {
        let layer_scales = [&self.ls_1, &self.ls_2];
        self.ln_1
            .parameters()
            .into_iter()
            .chain(self.ln_1_kv.iter().flat_map(LayerNorm::parameters))
            .chain(self.attn.parameters())
            .chain(self.ln_2.parameters())
            .chain(self.mlp.parameters())
            .chain(layer_scales.into_iter().flatten().map(|ls| &ls.gamma))
            .collect()
    }

    /// A block sharing this one's weights, for the checkpointed closure to own:
    /// the closure must be `'static + Send`, and tch tensors are not `Sync`,
    /// so it can neither borrow the block nor share it through an `Arc`.
    fn shallow_clone(&self) -> Self {
        ResidualAttentionBlock {
            ln_1: self.ln_1.shallow_clone(),
            ln_1_kv: self.ln_1_kv.as_ref().map(LayerNorm::shallow_clone),
            attn: self.attn.shallow_clone(),
            ls_1: self.ls_1.as_ref().map(LayerScale::shallow_clone),
            ln_2: self.ln_2.shallow_clone(),
            mlp: self.mlp.shallow_clone(),
            ls_2: self.ls_2.as_ref().map(LayerScale::shallow_clone),
        }
    }
}

/// `Transformer`: `resblocks.0 .. resblocks.{layers-1}`, batch first.
#[derive(Debug)]
pub struct Transformer {
    resblocks: Vec<ResidualAttentionBlock>,
    grad_checkpointing: bool,
}

impl Transformer {
    pub fn new(p: nn::Path, cfg: &TransformerConfig) -> Self {
        let blocks = &p / "resblocks";
        Transformer {
            resblocks: (0..cfg.layers)
                .map(|i| ResidualAttentionBlock::new(&blocks / i, cfg))
                .collect(),
            grad_checkpointing: false,
        }
    }

    /// Runs each block under [`checkpoint`] from now on (or no longer). It
    /// only changes anything while gradients are recorded.
    pub fn set_grad_checkpointing(&mut self, enable: bool) {
        self.grad_checkpointing = enable;
    }

    /// Re-initialises the block weights the way OpenCLIP's
    /// `TextTransformer.init_parameters` does (normal, with width- and
    /// depth-dependent standard deviations).
    pub fn init_like_open_clip_text_tower(&self, width: i64) {
        let layers = self.resblocks.len() as f64;
        let width = width as f64;
        let attn_std = width.powf(-0.5);
        let proj_std = attn_std * (2.0 * layers).powf(-0.5);
        let fc_std = (2.0 * width).powf(-0.5);
        tch::no_grad(|| {
            for block in &self.resblocks {
                let _ = block
                    .attn
                    .in_proj_weight
                    .shallow_clone()
                    .normal_(0.0, attn_std);
                let _ = block
                    .attn
                    .out_proj
                    .ws
                    .shallow_clone()
                    .normal_(0.0, proj_std);
                let _ = block.mlp.c_fc.ws.shallow_clone().normal_(0.0, fc_std);
                let _ = block.mlp.c_proj.ws.shallow_clone().normal_(0.0, proj_std);
            }
        });
    }

    /// The dtype of the blocks' weights (OpenCLIP's `get_cast_dtype`).
    pub fn weight_kind(&self) -> tch::Kind {
        self.resblocks
            .first()
            .map_or(tch::Kind::Float, |block| block.mlp.c_fc.ws.kind())
    }

    pub fn forward(&self, x: &Tensor, attn_mask: Option<&Tensor>) -> Tensor {
        let mut x = x.shallow_clone();
        for block in &self.resblocks {
            x = if self.grad_checkpointing {
                block.forward_checkpointed(&x, attn_mask)
            } else {
                block.forward(&x, attn_mask)
            };
        }
        x
    }
}

/// `AttentionalPooler`: learned queries (`query`) cross-attending to the
/// tokens through an `nn.MultiheadAttention` whose key/value width differs
/// from the query width (separate `q_proj_weight`, `k_proj_weight`,
/// `v_proj_weight`), with `ln_q` / `ln_k`.
#[derive(Debug)]
pub struct AttentionalPooler {
    query: Tensor,
    q_proj_weight: Tensor,
    k_proj_weight: Tensor,
    v_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: nn::Linear,
    ln_q: LayerNorm,
    ln_k: LayerNorm,
    heads: i64,
}

impl AttentionalPooler {
    pub fn new(p: nn::Path, d_model: i64, context_dim: i64, heads: i64, queries: i64) -> Self {
        let attn = &p / "attn";
        let xavier = |fan_in: i64, fan_out: i64| {
            let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
            Init::Uniform {
                lo: -bound,
                up: bound,
            }
        };
        AttentionalPooler {
            query: p.randn_standard("query", &[queries, d_model]),
            q_proj_weight: attn.var(
                "q_proj_weight",
                &[d_model, d_model],
                xavier(d_model, d_model),
            ),
            k_proj_weight: attn.var(
                "k_proj_weight",
                &[d_model, context_dim],
                xavier(context_dim, d_model),
            ),
            v_proj_weight: attn.var(
                "v_proj_weight",
                &[d_model, context_dim],
                xavier(context_dim, d_model),
            ),
            in_proj_bias: attn.zeros("in_proj_bias", &[3 * d_model]),
            out_proj: linear(&attn / "out_proj", d_model, d_model),
            ln_q: layer_norm(&p / "ln_q", d_model, None),
            ln_k: layer_norm(&p / "ln_k", context_dim, None),
            heads,
        }
    }

    /// [N, L, context_dim] tokens to [N, queries, d_model].
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let n = x.size()[0];
        let x = self.ln_k.forward(x);
        let q = self
            .ln_q
            .forward(&self.query)
            .unsqueeze(0)
            .expand([n, -1, -1], false);
        let biases = self.in_proj_bias.chunk(3, 0);
        let q = split_heads(&q.linear(&self.q_proj_weight, Some(&biases[0])), self.heads);
        let k = split_heads(&x.linear(&self.k_proj_weight, Some(&biases[1])), self.heads);
        let v = split_heads(&x.linear(&self.v_proj_weight, Some(&biases[2])), self.heads);
        let out = attention(&q, &k, &v, None);
        self.out_proj.forward(&merge_heads(&out))
    }
}
