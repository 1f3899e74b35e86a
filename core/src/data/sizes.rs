//! How many samples a dataset has and how an epoch is cut into batches, as
//! OpenCLIP's `get_dataset_size` and `get_wds_dataset` compute them: the size
//! comes from `--train-num-samples`, else from a `sizes.json` (shard file name
//! to sample count) or a `__len__` file (the total) in the folder of the
//! first shard.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

use super::shard_list::ShardList;
use crate::object_stores::Location;

/// What the shard folder says about a webdataset's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetSize {
    /// Samples in all the shards, when `sizes.json` or `__len__` says.
    pub total_samples: Option<u64>,
    pub num_shards: usize,
}

/// Reads `sizes.json` (summing the entries of the listed shards) or, failing
/// that, `__len__` from the folder of the first shard of `shards`. Shards on
/// object stores have no local folder, so their size is unknown, as in OpenCLIP.
pub fn dataset_size(shards: &str) -> Result<DatasetSize> {
    let list = ShardList::expand(shards, None)?;
    let Some(first) = list.urls().first() else {
        bail!("the data path {shards:?} names no shards");
    };
    let num_shards = list.len();
    let folder = match Location::parse(first) {
        Ok(Location::Local(path)) => path.parent().map(Path::to_path_buf).unwrap_or_default(),
        _ => {
            return Ok(DatasetSize {
                total_samples: None,
                num_shards,
            })
        }
    };
    let sizes_file = folder.join("sizes.json");
    let len_file = folder.join("__len__");
    let total_samples = if sizes_file.exists() {
        Some(sum_sizes_json(&sizes_file, list.urls())?)
    } else if len_file.exists() {
        Some(read_len_file(&len_file)?)
    } else {
        None
    };
    Ok(DatasetSize {
        total_samples,
        num_shards,
    })
}

fn sum_sizes_json(sizes_file: &Path, shards: &[String]) -> Result<u64> {
    let text = std::fs::read_to_string(sizes_file)
        .with_context(|| format!("cannot read {}", sizes_file.display()))?;
    let sizes: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
        .with_context(|| {
            format!(
                "{} is not a JSON object of shard name to sample count",
                sizes_file.display()
            )
        })?;
    let mut total = 0u64;
    for shard in shards {
        let name = shard.rsplit('/').next().unwrap_or(shard);
        let value = sizes.get(name).with_context(|| {
            format!(
                "{} has no entry for the shard {name:?}",
                sizes_file.display()
            )
        })?;
        total += sample_count(value).with_context(|| {
            format!(
                "{}: the entry for {name:?} is not a sample count: {value}",
                sizes_file.display()
            )
        })?;
    }
    Ok(total)
}

/// A count as Python's `int()` reads a JSON value: an integer, a float
/// (truncated) or a string of digits.
fn sample_count(value: &serde_json::Value) -> Option<u64> {
    match value {
        serde_json::Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f.trunc() as u64)),
        serde_json::Value::String(s) => s.trim().replace('_', "").parse().ok(),
        _ => None,
    }
}

fn read_len_file(len_file: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(len_file)
        .with_context(|| format!("cannot read {}", len_file.display()))?;
    text.trim().replace('_', "").parse().with_context(|| {
        format!(
            "{} should hold the number of samples, not {:?}",
            len_file.display(),
            text.trim()
        )
    })
}

/// The number of training samples of a webdataset: `--train-num-samples`,
/// else what [`dataset_size`] finds; an error when neither says (or the
/// size file says zero), as in OpenCLIP.
pub fn train_num_samples(train_num_samples: Option<u64>, shards: &str) -> Result<u64> {
    if let Some(samples) = train_num_samples {
        return Ok(samples);
    }
    match dataset_size(shards)?.total_samples {
        Some(samples) if samples > 0 => Ok(samples),
        _ => bail!(
            "the number of training samples is unknown: pass --train-num-samples, or put a sizes.json or __len__ file beside the shards"
        ),
    }
}

/// How `floor` or `ceil` rounds when an epoch is cut into whole batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    Floor,
    Ceil,
}

impl Rounding {
    fn divide(self, numerator: u64, denominator: u64) -> u64 {
        match self {
            Rounding::Floor => numerator / denominator,
            Rounding::Ceil => numerator.div_ceil(denominator),
        }
    }
}

/// The shape of a webdataset training epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochSize {
    /// Batches per rank in the epoch (a multiple of the reader count).
    pub num_batches: u64,
    /// Samples in the epoch over all ranks: `num_batches * batch_size * world_size`.
    pub num_samples: u64,
    /// Batches each reader (dataloader worker) produces.
    pub batches_per_reader: u64,
}

/// Cuts `num_samples` into whole global batches and whole per-reader shares,
/// rounding up (OpenCLIP's default, repeating a few samples) or down, as
/// `get_wds_dataset` does; `workers` 0 counts as one reader.
pub fn train_epoch_size(
    num_samples: u64,
    batch_size: u64,
    world_size: u64,
    workers: u64,
    rounding: Rounding,
) -> Result<EpochSize> {
    ensure!(
        batch_size > 0 && world_size > 0,
        "the batch size and the world size must be positive"
    );
    let global_batch_size = batch_size * world_size;
    let readers = workers.max(1);
    let batches = rounding.divide(num_samples, global_batch_size);
    let batches_per_reader = rounding.divide(batches, readers);
    let num_batches = batches_per_reader * readers;
    Ok(EpochSize {
        num_batches,
        num_samples: num_batches * global_batch_size,
        batches_per_reader,
    })
}

/// Validation batches: the last one may be partial.
pub fn eval_num_batches(num_samples: u64, batch_size: u64) -> u64 {
    num_samples.div_ceil(batch_size.max(1))
}
