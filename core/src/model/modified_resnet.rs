//! The ModifiedResNet image tower of OpenCLIP (RN50, RN101, RN50x4, RN50x16,
//! RN50x64): a ResNet with a three-convolution stem, anti-aliased strided
//! blocks (an average pool before each stride) and a multi-head attention pool
//! in place of the global average pool.
//!
//! This module owns the tower's layers, their initialisation, its forward pass
//! in train and eval mode, and locking (`--lock-image`). Variable names equal
//! the keys of OpenCLIP's `model.visual.state_dict()`, batch-norm
//! `num_batches_tracked` counters included, so weights move between the two
//! without renaming.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, ensure, Result};
use tch::nn::{self, Init};
use tch::Tensor;

use super::batch_norm::{BatchNorm2d, BatchStatistics};
use crate::distributed::ProcessGroup;

/// Output channels of a bottleneck block per channel of its inner width.
const BOTTLENECK_EXPANSION: i64 = 4;

/// The total downsampling of the tower: stem (4) times layers 2 to 4 (2 each).
const TOTAL_STRIDE: i64 = 32;

/// PyTorch's default weight init for convolutions and linear layers
/// (kaiming uniform with a = sqrt(5)): uniform in ±1/sqrt(fan_in).
const TORCH_DEFAULT_WEIGHT_INIT: Init = Init::Kaiming {
    dist: nn::init::NormalOrUniform::Uniform,
    fan: nn::init::FanInOut::FanIn,
    non_linearity: nn::init::NonLinearity::ExplicitGain(0.577_350_269_189_625_8), // 1/sqrt(3)
};

/// Shape of a ModifiedResNet tower (OpenCLIP's `vision_cfg` for RN models).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModifiedResNetConfig {
    /// Number of bottleneck blocks in each of the four stages.
    pub layers: [i64; 4],
    /// Channels after the stem; stage `i` has inner width `width * 2^i`.
    pub width: i64,
    /// Size of the image embedding the attention pool projects to.
    pub output_dim: i64,
    /// Attention-pool heads.
    pub heads: i64,
    /// Side of the square input images, in pixels.
    pub image_size: i64,
}

impl ModifiedResNetConfig {
    /// The config OpenCLIP builds from a model config's `vision_cfg`:
    /// `heads = width * 32 / head_width` (`head_width` is 64 unless the
    /// config says otherwise).
    pub fn from_openclip(
        layers: [i64; 4],
        width: i64,
        image_size: i64,
        embed_dim: i64,
        head_width: i64,
    ) -> anyhow::Result<Self> {
        ensure!(
            head_width > 0,
            "vision_cfg.head_width must be positive, got {head_width}"
        );
        let config = Self {
            layers,
            width,
            output_dim: embed_dim,
            heads: width * 32 / head_width,
            image_size,
        };
        config.validate()?;
        Ok(config)
    }

    /// Channels of the final feature map, which the attention pool attends over.
    pub fn feature_dim(&self) -> i64 {
        self.width * 32
    }

    /// Side of the final feature map (the image side divided by 32).
    pub fn feature_map_side(&self) -> i64 {
        self.image_size / TOTAL_STRIDE
    }

    /// Checks that the tower this config describes can be built and run.
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            self.layers.iter().all(|&blocks| blocks >= 1),
            "vision_cfg.layers must have at least one block per stage, got {:?}",
            self.layers
        );
        ensure!(
            self.width >= 2 && self.width % 2 == 0,
            "vision_cfg.width must be a positive even number, got {}",
            self.width
        );
        ensure!(
            self.output_dim >= 1,
            "embed_dim must be positive, got {}",
            self.output_dim
        );
        ensure!(
            self.heads >= 1 && self.feature_dim() % self.heads == 0,
            "the attention pool's {} heads must divide its width {} (vision_cfg.width * 32)",
            self.heads,
            self.feature_dim()
        );
        ensure!(
            self.image_size >= TOTAL_STRIDE && self.image_size % TOTAL_STRIDE == 0,
            "vision_cfg.image_size must be a positive multiple of {TOTAL_STRIDE} for a ResNet tower, got {}",
            self.image_size
        );
        Ok(())
    }
}

fn conv2d(
    p: nn::Path,
    in_channels: i64,
    out_channels: i64,
    kernel: i64,
    stride: i64,
) -> nn::Conv2D {
    let config = nn::ConvConfig {
        stride,
        padding: kernel / 2,
        bias: false,
        ws_init: TORCH_DEFAULT_WEIGHT_INIT,
        ..Default::default()
    };
    nn::conv2d(p, in_channels, out_channels, kernel, config)
}

/// `nn.AvgPool2d(stride)`: non-overlapping `stride`×`stride` average pooling.
fn average_pool(xs: &Tensor, stride: i64) -> Tensor {
    xs.avg_pool2d(
        [stride, stride],
        [stride, stride],
        [0, 0],
        false,
        true,
        None,
    )
}

/// The shortcut of a block that changes shape: average pool, 1×1 conv, batch norm.
#[derive(Debug)]
struct Downsample {
    stride: i64,
    conv: nn::Conv2D,
    norm: BatchNorm2d,
}

/// OpenCLIP's `Bottleneck`: 1×1, 3×3, (average pool), 1×1 convolutions with
/// batch norms and a residual connection.
#[derive(Debug)]
struct Bottleneck {
    conv1: nn::Conv2D,
    bn1: BatchNorm2d,
    conv2: nn::Conv2D,
    bn2: BatchNorm2d,
    stride: i64,
    conv3: nn::Conv2D,
    bn3: BatchNorm2d,
    downsample: Option<Downsample>,
}

impl Bottleneck {
    fn new(p: nn::Path, in_channels: i64, planes: i64, stride: i64) -> Self {
        let out_channels = planes * BOTTLENECK_EXPANSION;
        let downsample = (stride > 1 || in_channels != out_channels).then(|| {
            let d = &p / "downsample";
            Downsample {
                stride,
                conv: conv2d(&d / "0", in_channels, out_channels, 1, 1),
                norm: BatchNorm2d::new(&d / "1", out_channels, 1.),
            }
        });
        Self {
            conv1: conv2d(&p / "conv1", in_channels, planes, 1, 1),
            bn1: BatchNorm2d::new(&p / "bn1", planes, 1.),
            conv2: conv2d(&p / "conv2", planes, planes, 3, 1),
            bn2: BatchNorm2d::new(&p / "bn2", planes, 1.),
            stride,
            conv3: conv2d(&p / "conv3", planes, out_channels, 1, 1),
            // Zero so each block starts as the identity, as OpenCLIP does.
            bn3: BatchNorm2d::new(&p / "bn3", out_channels, 0.),
            downsample,
        }
    }

    fn forward(&self, xs: &Tensor, statistics: BatchStatistics) -> Result<Tensor> {
        let mut out = self.bn1.forward(&xs.apply(&self.conv1), statistics)?.relu();
        out = self
            .bn2
            .forward(&out.apply(&self.conv2), statistics)?
            .relu();
        if self.stride > 1 {
            out = average_pool(&out, self.stride);
        }
        out = self.bn3.forward(&out.apply(&self.conv3), statistics)?;
        let identity = match &self.downsample {
            Some(d) => {
                let pooled = if d.stride > 1 {
                    average_pool(xs, d.stride)
                } else {
                    xs.shallow_clone()
                };
                d.norm.forward(&pooled.apply(&d.conv), statistics)?
            }
            None => xs.shallow_clone(),
        };
        Ok((out + identity).relu())
    }

    fn collect_parameters<'a>(&'a self, out: &mut Vec<&'a Tensor>) {
        for (conv, norm) in [
            (&self.conv1, &self.bn1),
            (&self.conv2, &self.bn2),
            (&self.conv3, &self.bn3),
        ] {
            out.push(&conv.ws);
            norm.collect_parameters(out);
        }
        if let Some(d) = &self.downsample {
            out.push(&d.conv.ws);
            d.norm.collect_parameters(out);
        }
    }
}

/// OpenCLIP's `AttentionPool2d`: the mean of the feature map is prepended as
/// an extra token, a learned positional embedding is added, and the output is
/// that token after one multi-head attention over all tokens (separate q, k,
/// v projections, then `c_proj`).
#[derive(Debug)]
struct AttentionPool2d {
    positional_embedding: Tensor,
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    c_proj: nn::Linear,
    heads: i64,
}

impl AttentionPool2d {
    fn new(p: nn::Path, side: i64, embed_dim: i64, heads: i64, output_dim: i64) -> Self {
        let std = (embed_dim as f64).powf(-0.5);
        let projection = nn::LinearConfig {
            ws_init: Init::Randn {
                mean: 0.,
                stdev: std,
            },
            ..Default::default()
        };
        let tokens = side * side + 1;
        Self {
            positional_embedding: p.var(
                "positional_embedding",
                &[tokens, embed_dim],
                Init::Randn {
                    mean: 0.,
                    stdev: std,
                },
            ),
            q_proj: nn::linear(&p / "q_proj", embed_dim, embed_dim, projection),
            k_proj: nn::linear(&p / "k_proj", embed_dim, embed_dim, projection),
            v_proj: nn::linear(&p / "v_proj", embed_dim, embed_dim, projection),
            c_proj: nn::linear(&p / "c_proj", embed_dim, output_dim, projection),
            heads,
        }
    }

    /// `[N, C, H, W]` features to `[N, output_dim]` embeddings.
    fn forward(&self, features: &Tensor) -> Tensor {
        let (batch, channels, height, width) = features.size4().expect("a 4-d feature map");
        let tokens = features
            .reshape([batch, channels, height * width])
            .permute([0, 2, 1]);
        let mean_token = tokens.mean_dim(1, true, None);
        let tokens = Tensor::cat(&[mean_token, tokens], 1)
            + self
                .positional_embedding
                .to_kind(features.kind())
                .unsqueeze(0);

        // Only the mean token's output is kept, so it is the only query needed.
        let head_dim = channels / self.heads;
        let split_heads = |t: Tensor| t.reshape([batch, -1, self.heads, head_dim]).transpose(1, 2);
        let query = split_heads(tokens.narrow(1, 0, 1).apply(&self.q_proj));
        let key = split_heads(tokens.apply(&self.k_proj));
        let value = split_heads(tokens.apply(&self.v_proj));
        let attended = Tensor::scaled_dot_product_attention(
            &query,
            &key,
            &value,
            None::<Tensor>,
            0.,
            false,
            None,
            false,
        );
        attended.reshape([batch, channels]).apply(&self.c_proj)
    }

    fn collect_parameters<'a>(&'a self, out: &mut Vec<&'a Tensor>) {
        out.push(&self.positional_embedding);
        for linear in [&self.q_proj, &self.k_proj, &self.v_proj, &self.c_proj] {
            out.push(&linear.ws);
            out.extend(linear.bs.iter());
        }
    }
}

/// OpenCLIP's `ModifiedResNet` image tower. Build it at the path of the
/// tower (e.g. `vs.root() / "visual"`); its forward maps `[N, 3, S, S]`
/// normalised images to `[N, output_dim]` embeddings.
#[derive(Debug)]
pub struct ModifiedResNet {
    stem: [(nn::Conv2D, BatchNorm2d); 3],
    stages: [Vec<Bottleneck>; 4],
    attnpool: AttentionPool2d,
    image_size: i64,
    /// Set by `lock(_, true)`: batch norms always use their running statistics.
    bn_stats_frozen: AtomicBool,
    /// Set by `synchronise_batch_norms`: in train mode the batch norms
    /// normalise with the statistics of every rank's batch.
    batch_norm_group: Option<Arc<ProcessGroup>>,
}

impl ModifiedResNet {
    /// Creates the tower's variables under `p` with OpenCLIP's initialisation.
    /// The config should have passed [`ModifiedResNetConfig::validate`].
    pub fn new(p: nn::Path, cfg: &ModifiedResNetConfig) -> Self {
        let half = cfg.width / 2;
        let stem = [
            (
                conv2d(&p / "conv1", 3, half, 3, 2),
                BatchNorm2d::new(&p / "bn1", half, 1.),
            ),
            (
                conv2d(&p / "conv2", half, half, 3, 1),
                BatchNorm2d::new(&p / "bn2", half, 1.),
            ),
            (
                conv2d(&p / "conv3", half, cfg.width, 3, 1),
                BatchNorm2d::new(&p / "bn3", cfg.width, 1.),
            ),
        ];
        let mut in_channels = cfg.width;
        let stages = std::array::from_fn(|stage| {
            let planes = cfg.width << stage;
            let stride = if stage == 0 { 1 } else { 2 };
            let stage_path = &p / format!("layer{}", stage + 1);
            (0..cfg.layers[stage])
                .map(|index| {
                    let block_stride = if index == 0 { stride } else { 1 };
                    let block =
                        Bottleneck::new(&stage_path / index, in_channels, planes, block_stride);
                    in_channels = planes * BOTTLENECK_EXPANSION;
                    block
                })
                .collect()
        });
        let attnpool = AttentionPool2d::new(
            &p / "attnpool",
            cfg.feature_map_side(),
            cfg.feature_dim(),
            cfg.heads,
            cfg.output_dim,
        );
        Self {
            stem,
            stages,
            attnpool,
            image_size: cfg.image_size,
            bn_stats_frozen: AtomicBool::new(false),
            batch_norm_group: None,
        }
    }

    /// Like `forward_t`, but first checks that `images` is `[N, 3, S, S]` with
    /// S the configured image size, and says so in the error when it is not.
    pub fn forward_checked(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        let size = images.size();
        let side = self.image_size;
        if size.len() != 4 || size[1..] != [3, side, side] {
            bail!("the ResNet image tower expects images of shape [batch, 3, {side}, {side}], got {size:?}");
        }
        self.forward(images, train)
    }

    /// `--use-bn-sync` (`nn.SyncBatchNorm.convert_sync_batchnorm`): from
    /// now on, a train-mode forward pass normalises with the statistics of
    /// every rank's batch together, exchanged over `group`, so every rank
    /// must run its forward and backward passes in step.
    pub fn synchronise_batch_norms(&mut self, group: Arc<ProcessGroup>) {
        self.batch_norm_group = Some(group);
    }

    /// Freezes the tower, as OpenCLIP's `ModifiedResNet.lock` does for
    /// `--lock-image`: no parameter requires grad any more, and with
    /// `freeze_bn_stats` (`--lock-image-freeze-bn-stats`) the batch norms use
    /// their running statistics even in train mode. Like OpenCLIP, partial
    /// locking (`--lock-image-unlocked-groups` > 0) is not supported.
    pub fn lock(&self, unlocked_groups: i64, freeze_bn_stats: bool) -> anyhow::Result<()> {
        ensure!(
            unlocked_groups == 0,
            "--lock-image-unlocked-groups {unlocked_groups}: partial locking is not supported for \
             ResNet image towers (OpenCLIP does not support it either); use 0"
        );
        for parameter in self.parameters() {
            let _ = parameter.set_requires_grad(false);
        }
        if freeze_bn_stats {
            self.bn_stats_frozen.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The trainable tensors of the tower (weights, biases, positional
    /// embedding), not the batch-norm statistics.
    pub fn parameters(&self) -> Vec<&Tensor> {
        let mut out = Vec::new();
        for (conv, norm) in &self.stem {
            out.push(&conv.ws);
            norm.collect_parameters(&mut out);
        }
        for block in self.stages.iter().flatten() {
            block.collect_parameters(&mut out);
        }
        self.attnpool.collect_parameters(&mut out);
        out
    }

    /// `train` selects batch statistics (and updates the running ones) in the
    /// batch norms, unless `lock` froze them; the attention pool has no
    /// dropout, so it is the same in both modes. Fails only when the batch
    /// norms' statistics cannot cross the ranks.
    pub fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let statistics = if !train || self.bn_stats_frozen.load(Ordering::Relaxed) {
            BatchStatistics::Running
        } else {
            match &self.batch_norm_group {
                Some(group) => BatchStatistics::AcrossRanks(group),
                None => BatchStatistics::Batch,
            }
        };
        let mut x = xs.shallow_clone();
        for (conv, norm) in &self.stem {
            x = norm.forward(&x.apply(conv), statistics)?.relu();
        }
        x = average_pool(&x, 2);
        for block in self.stages.iter().flatten() {
            x = block.forward(&x, statistics)?;
        }
        Ok(self.attnpool.forward(&x))
    }
}
