//! `nn.BatchNorm2d` as the ResNet towers use it, and its synchronised form
//! (`nn.SyncBatchNorm`, what OpenCLIP's `--use-bn-sync` converts it to).
//!
//! This module owns the layer's variables (weight, bias, running mean and
//! variance, the `num_batches_tracked` counter tch's batch norm lacks) and
//! its three ways of normalising: with the running statistics, with the
//! batch's own, or with the statistics of every rank's batch together.

use anyhow::Result;
use tch::nn::{self, Init, ModuleT};
use tch::{Kind, Tensor};

use crate::collective::Collective;
use crate::distributed::ProcessGroup;

/// PyTorch's `BatchNorm2d` defaults, which OpenCLIP keeps.
const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;

/// Which statistics a batch norm normalises with.
#[derive(Clone, Copy)]
pub(crate) enum BatchStatistics<'a> {
    /// The running mean and variance (eval mode, frozen statistics).
    Running,
    /// This batch's, updating the running ones (train mode).
    Batch,
    /// Every rank's batches together, updating the running ones with them
    /// (train mode with `--use-bn-sync` on several ranks).
    AcrossRanks(&'a ProcessGroup),
}

/// `nn.BatchNorm2d` with its `num_batches_tracked` counter, an Int64
/// scalar buffer as in PyTorch.
#[derive(Debug)]
pub(crate) struct BatchNorm2d {
    norm: nn::BatchNorm,
    num_batches_tracked: Tensor,
}

impl BatchNorm2d {
    pub(crate) fn new(p: nn::Path, channels: i64, initial_weight: f64) -> Self {
        let config = nn::BatchNormConfig {
            ws_init: Init::Const(initial_weight),
            bs_init: Init::Const(0.),
            eps: EPS,
            momentum: MOMENTUM,
            ..Default::default()
        };
        let norm = nn::batch_norm2d(&p, channels, config);
        let counter = Tensor::zeros([], (Kind::Int64, p.device()));
        let num_batches_tracked = p.add("num_batches_tracked", counter, false);
        Self {
            norm,
            num_batches_tracked,
        }
    }

    /// Normalises `xs` [N, C, H, W] with the chosen statistics; batch
    /// statistics also advance the running ones and the counter.
    pub(crate) fn forward(&self, xs: &Tensor, statistics: BatchStatistics) -> Result<Tensor> {
        match statistics {
            BatchStatistics::Running => Ok(self.norm.forward_t(xs, false)),
            BatchStatistics::Batch => {
                self.count_batch();
                Ok(self.norm.forward_t(xs, true))
            }
            BatchStatistics::AcrossRanks(group) => {
                self.count_batch();
                self.forward_across_ranks(xs, group)
            }
        }
    }

    fn count_batch(&self) {
        let mut counter = self.num_batches_tracked.shallow_clone();
        tch::no_grad(|| counter += 1);
    }

    /// `SyncBatchNorm`'s training forward: each rank's per-channel mean,
    /// biased variance and count reach every rank (one all-reduce of a
    /// [world, 2C + 1] table in which each rank fills its own row), are
    /// combined into the statistics of all ranks' batches together (the
    /// pooled mean, and the pooled variance from each rank's variance and
    /// its mean's offset, as torch's `batch_norm_gather_stats_with_counts`
    /// combines them), and normalise. The all-reduce is differentiable, so
    /// the backward pass sums over the ranks the gradient reaching the
    /// statistics, as `SyncBatchNorm`'s backward all-reduces its sums of
    /// the output gradient. Statistics are kept in fp32 whatever the
    /// input's dtype, which the output keeps.
    fn forward_across_ranks(&self, xs: &Tensor, group: &ProcessGroup) -> Result<Tensor> {
        let channels = xs.size()[1];
        let x = xs.to_kind(Kind::Float);
        let (variance, mean) = x.var_mean_correction([0i64, 2, 3].as_slice(), 0, false);
        let count = Tensor::full(
            [1],
            (xs.numel() as i64 / channels) as f64,
            (Kind::Float, xs.device()),
        );
        let row = Tensor::cat(&[mean, variance, count], 0);
        let rows: Vec<Tensor> = (0..group.world_size())
            .map(|rank| {
                if rank == group.rank() {
                    row.shallow_clone()
                } else {
                    row.detach().zeros_like()
                }
            })
            .collect();
        let table = group.all_reduce_sum_with_grad(&Tensor::stack(&rows, 0))?;
        let means = table.narrow(1, 0, channels);
        let variances = table.narrow(1, channels, channels);
        let counts = table.narrow(1, 2 * channels, 1);
        let total = counts.sum(Kind::Float);
        let mean = (&means * &counts).sum_dim_intlist(0, false, Kind::Float) / &total;
        let offsets = (&means - mean.unsqueeze(0)).square();
        let variance =
            ((variances + offsets) * &counts).sum_dim_intlist(0, false, Kind::Float) / &total;
        tch::no_grad(|| {
            let mut running_mean = self.norm.running_mean.shallow_clone();
            let mut running_var = self.norm.running_var.shallow_clone();
            let unbiased = &variance * (&total / (&total - 1.0));
            running_mean *= 1.0 - MOMENTUM;
            running_mean += mean.detach() * MOMENTUM;
            running_var *= 1.0 - MOMENTUM;
            running_var += unbiased * MOMENTUM;
        });
        let per_channel = |t: Tensor| t.view([1, channels, 1, 1]);
        let normalised = (x - per_channel(mean)) * per_channel((variance + EPS).rsqrt());
        let scaled = match &self.norm.ws {
            Some(weight) => normalised * per_channel(weight.to_kind(Kind::Float)),
            None => normalised,
        };
        let y = match &self.norm.bs {
            Some(bias) => scaled + per_channel(bias.to_kind(Kind::Float)),
            None => scaled,
        };
        Ok(y.to_kind(xs.kind()))
    }

    pub(crate) fn collect_parameters<'a>(&'a self, out: &mut Vec<&'a Tensor>) {
        out.extend(self.norm.ws.iter().chain(self.norm.bs.iter()));
    }
}
