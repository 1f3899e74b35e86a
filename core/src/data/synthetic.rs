//! The synthetic dataset (`--dataset-type synthetic`), as OpenCLIP defines
//! it: `--train-num-samples` copies of one black RGB image the size of the
//! model's input, each captioned "Dummy caption". It exercises the rest of
//! the pipeline without any data on disk.

use anyhow::{Context, Result};

use super::{ImageData, Sample, SourceItem};

/// OpenCLIP's caption for every synthetic sample.
pub const SYNTHETIC_CAPTION: &str = "Dummy caption";

/// The origin recorded in synthetic samples.
const SYNTHETIC_ORIGIN: &str = "synthetic";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntheticDataset {
    width: u32,
    height: u32,
    len: u64,
}

impl SyntheticDataset {
    /// `len` is `--train-num-samples`, which the synthetic dataset needs;
    /// `width` and `height` are the model's image size.
    pub fn new(width: u32, height: u32, len: Option<u64>) -> Result<SyntheticDataset> {
        let len = len.context("--dataset-type synthetic needs --train-num-samples")?;
        Ok(SyntheticDataset { width, height, len })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Samples per rank: the dataset split across `world_size` ranks, padded
    /// to equal shares as PyTorch's `DistributedSampler` pads.
    pub fn rank_len(&self, world_size: u64) -> u64 {
        self.len.div_ceil(world_size.max(1))
    }

    /// The sample at `index` (all samples are the same black image).
    pub fn sample(&self, index: u64) -> Sample {
        let pixels = self.width as usize * self.height as usize * 3;
        Sample {
            key: index.to_string(),
            origin: SYNTHETIC_ORIGIN.to_owned(),
            image: ImageData::Pixels {
                width: self.width,
                height: self.height,
                rgb: vec![0; pixels],
            },
            caption: SYNTHETIC_CAPTION.to_owned(),
        }
    }

    /// The samples of rank `rank` of `world_size` in one epoch.
    pub fn samples(&self, rank: u64, world_size: u64) -> impl Iterator<Item = SourceItem> + '_ {
        let world_size = world_size.max(1);
        (0..self.rank_len(world_size))
            .map(move |i| (i * world_size + rank) % self.len.max(1))
            .map(|index| SourceItem::Sample(self.sample(index)))
    }
}
