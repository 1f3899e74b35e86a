//! timm's `ConvNeXt`, the trunk of OpenCLIP's `convnext_*` image towers
//! (`visual.trunk.` in their checkpoints): the patch stem (`stem.0` conv,
//! `stem.1` channels-first LayerNorm), four `stages.N` (a `downsample` of
//! LayerNorm and a 2x2 stride-2 conv before every stage but the first, then
//! `blocks.M`: the depthwise `conv_dw`, a channels-last `norm`, `mlp.fc1`,
//! `mlp.fc2` and the layer scale `gamma`), and timm's pool-then-norm head
//! (`head.norm`, and `head.fc` when the trunk keeps a classifier). Sizes
//! come from [`ConvNeXtFacts`] (timm's registry, in `timm_configs.json`).

use serde::Deserialize;
use tch::nn::{self, Init, Module};
use tch::Tensor;

use super::config::NormKwargs;
use super::timm_vision_transformer::drop_path;
use super::transformer::{
    layer_norm, linear_parameters, normal_linear, shallow_clone_linear, Activation, LayerNorm,
};
use crate::activation_checkpoint::checkpoint_block;

/// What timm's registry says of one ConvNeXt model.
#[derive(Debug, Clone, Deserialize)]
pub struct ConvNeXtFacts {
    pub patch_size: i64,
    pub conv_bias: bool,
    pub kernel_size: i64,
    pub norm_eps: f64,
    pub act: String,
    pub stages: Vec<ConvNeXtStageFacts>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ConvNeXtStageFacts {
    pub dim: i64,
    pub depth: i64,
    pub mlp_hidden: i64,
}

impl ConvNeXtFacts {
    /// The width of the trunk's features (the last stage's).
    pub fn num_features(&self) -> i64 {
        self.stages.last().map_or(0, |stage| stage.dim)
    }
}

/// A `kernel` x `kernel` convolution of stride `kernel` (the patch stem and
/// the downsampling convs), initialised as timm initialises ConvNeXt's.
fn patch_conv(p: nn::Path, in_dim: i64, out_dim: i64, kernel: i64, bias: bool) -> nn::Conv2D {
    nn::conv2d(
        p,
        in_dim,
        out_dim,
        kernel,
        nn::ConvConfig {
            stride: kernel,
            bias,
            ws_init: Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
            bs_init: Init::Const(0.0),
            ..Default::default()
        },
    )
}

/// A LayerNorm over the channels of an NCHW tensor (timm's `LayerNorm2d`).
#[derive(Debug)]
struct LayerNorm2d(LayerNorm);

impl LayerNorm2d {
    fn new(p: nn::Path, dim: i64, eps: f64) -> Self {
        LayerNorm2d(layer_norm(p, dim, Some(&NormKwargs { eps: Some(eps) })))
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.0
            .forward(&x.permute([0, 2, 3, 1]))
            .permute([0, 3, 1, 2])
    }
}

/// A depthwise convolution (`groups` = channels, stride 1, same padding),
/// as its weight and bias so that a block can share them with its
/// checkpointed copy.
#[derive(Debug)]
struct DepthwiseConv {
    ws: Tensor,
    bs: Option<Tensor>,
    padding: i64,
}

impl DepthwiseConv {
    fn new(p: nn::Path, dim: i64, kernel: i64, bias: bool) -> Self {
        let init = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        DepthwiseConv {
            ws: p.var("weight", &[dim, 1, kernel, kernel], init),
            bs: bias.then(|| p.var("bias", &[dim], Init::Const(0.0))),
            padding: kernel / 2,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let groups = self.ws.size()[0];
        x.conv2d(
            &self.ws,
            self.bs.as_ref(),
            [1, 1],
            [self.padding, self.padding],
            [1, 1],
            groups,
        )
    }

    fn shallow_clone(&self) -> Self {
        DepthwiseConv {
            ws: self.ws.shallow_clone(),
            bs: self.bs.as_ref().map(Tensor::shallow_clone),
            padding: self.padding,
        }
    }
}

/// timm's `ConvNeXtBlock` (channels-last MLP).
#[derive(Debug)]
struct ConvNeXtBlock {
    conv_dw: DepthwiseConv,
    norm: LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    gamma: Tensor,
    act: Activation,
    drop_path: f64,
}

impl ConvNeXtBlock {
    fn new(
        p: nn::Path,
        facts: &ConvNeXtFacts,
        stage: &ConvNeXtStageFacts,
        act: Activation,
        drop_path: f64,
    ) -> Self {
        let dim = stage.dim;
        let k = facts.kernel_size;
        ConvNeXtBlock {
            conv_dw: DepthwiseConv::new(&p / "conv_dw", dim, k, facts.conv_bias),
            norm: layer_norm(
                &p / "norm",
                dim,
                Some(&NormKwargs {
                    eps: Some(facts.norm_eps),
                }),
            ),
            fc1: normal_linear(&p / "mlp" / "fc1", dim, stage.mlp_hidden, true),
            fc2: normal_linear(&p / "mlp" / "fc2", stage.mlp_hidden, dim, true),
            // timm's ls_init_value; a checkpoint's values replace it.
            gamma: p.var("gamma", &[dim], Init::Const(1e-6)),
            act,
            drop_path,
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let y = self.conv_dw.forward(x).permute([0, 2, 3, 1]);
        let y = self
            .fc2
            .forward(&self.act.apply(&self.fc1.forward(&self.norm.forward(&y))));
        let y = (y * &self.gamma).permute([0, 3, 1, 2]);
        drop_path(y, self.drop_path, train) + x
    }

    fn forward_checkpointed(&self, x: &Tensor) -> Tensor {
        checkpoint_block(x, &self.parameters(), self.shallow_clone(), |block, x| {
            block.forward_t(x, true)
        })
    }

    fn parameters(&self) -> Vec<&Tensor> {
        std::iter::once(&self.conv_dw.ws)
            .chain(self.conv_dw.bs.as_ref())
            .chain(self.norm.parameters())
            .chain(linear_parameters(&self.fc1))
            .chain(linear_parameters(&self.fc2))
            .chain(std::iter::once(&self.gamma))
            .collect()
    }

    /// A block sharing this one's weights, for the checkpointed closure to
    /// own (it must be `'static + Send`).
    fn shallow_clone(&self) -> Self {
        ConvNeXtBlock {
            conv_dw: self.conv_dw.shallow_clone(),
            norm: self.norm.shallow_clone(),
            fc1: shallow_clone_linear(&self.fc1),
            fc2: shallow_clone_linear(&self.fc2),
            gamma: self.gamma.shallow_clone(),
            act: self.act,
            drop_path: self.drop_path,
        }
    }
}

/// timm's `ConvNeXtStage`.
#[derive(Debug)]
struct ConvNeXtStage {
    downsample: Option<(LayerNorm2d, nn::Conv2D)>,
    blocks: Vec<ConvNeXtBlock>,
}

/// timm's `ConvNeXt` with the module tree of its checkpoints.
#[derive(Debug)]
pub struct TimmConvNeXt {
    stem_conv: nn::Conv2D,
    stem_norm: LayerNorm2d,
    stages: Vec<ConvNeXtStage>,
    head_norm: LayerNorm2d,
    head_fc: Option<nn::Linear>,
    grad_checkpointing: bool,
}

impl TimmConvNeXt {
    /// The trunk, with a classifier `head.fc` of `head_dim` outputs when
    /// that is not 0; `drop_path` is timm's `drop_path_rate`.
    pub fn new(p: nn::Path, facts: &ConvNeXtFacts, head_dim: i64, drop_path: f64) -> Self {
        let act = Activation::named(&facts.act);
        let first = facts.stages[0].dim;
        let patch = facts.patch_size;
        let stem_conv = patch_conv(&p / "stem" / "0", 3, first, patch, facts.conv_bias);
        let stem_norm = LayerNorm2d::new(&p / "stem" / "1", first, facts.norm_eps);
        // timm's linspace(0, drop_path_rate, all blocks), split by stage.
        let total: i64 = facts.stages.iter().map(|stage| stage.depth).sum();
        let rate = |block: i64| match total {
            1 => 0.0,
            total => drop_path * block as f64 / (total - 1) as f64,
        };
        let mut block_index = 0;
        let mut previous = first;
        let mut stages = Vec::new();
        for (index, stage) in facts.stages.iter().enumerate() {
            let sp = &p / "stages" / index as i64;
            let downsample = (index > 0).then(|| {
                (
                    LayerNorm2d::new(&sp / "downsample" / "0", previous, facts.norm_eps),
                    patch_conv(
                        &sp / "downsample" / "1",
                        previous,
                        stage.dim,
                        2,
                        facts.conv_bias,
                    ),
                )
            });
            let blocks = (0..stage.depth)
                .map(|block| {
                    let drop = rate(block_index);
                    block_index += 1;
                    ConvNeXtBlock::new(&sp / "blocks" / block, facts, stage, act, drop)
                })
                .collect();
            stages.push(ConvNeXtStage { downsample, blocks });
            previous = stage.dim;
        }
        TimmConvNeXt {
            stem_conv,
            stem_norm,
            stages,
            head_norm: LayerNorm2d::new(&p / "head" / "norm", previous, facts.norm_eps),
            head_fc: (head_dim > 0)
                .then(|| normal_linear(&p / "head" / "fc", previous, head_dim, true)),
            grad_checkpointing: false,
        }
    }

    /// Each block runs under activation checkpointing while training
    /// (timm's `checkpoint_seq` of each stage's blocks).
    pub fn set_grad_checkpointing(&mut self, enable: bool) {
        self.grad_checkpointing = enable;
    }

    /// Images [N, 3, H, W] to the pooled, normed features (through
    /// `head.fc`, if the trunk has one).
    pub fn forward_t(&self, images: &Tensor, train: bool) -> Tensor {
        let mut x = self.stem_norm.forward(&self.stem_conv.forward(images));
        for stage in &self.stages {
            if let Some((norm, conv)) = &stage.downsample {
                x = conv.forward(&norm.forward(&x));
            }
            for block in &stage.blocks {
                x = if self.grad_checkpointing && train {
                    block.forward_checkpointed(&x)
                } else {
                    block.forward_t(&x, train)
                };
            }
        }
        let pooled = x.mean_dim(&[2i64, 3][..], true, None);
        let pooled = self.head_norm.forward(&pooled).flatten(1, -1);
        match &self.head_fc {
            Some(fc) => fc.forward(&pooled),
            None => pooled,
        }
    }
}
