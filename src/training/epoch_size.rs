//! How many batches and samples one training epoch has, as OpenCLIP's
//! `get_data` sizes its training dataloader (`dataloader.num_batches` and
//! `dataloader.num_samples`), which the schedule and the logs are built on.

use anyhow::{Context, Result};
use clipflow_core::data::csv_source::CsvDataset;
use clipflow_core::data::dataset_type::{resolve_data_format, DataFormat};
use clipflow_core::data::shard_list::ShardList;
use clipflow_core::data::sizes::{train_epoch_size, train_num_samples, Rounding};
use clipflow_core::object_stores::Location;

use crate::train_args::TrainArgs;

/// The loader's batches and samples per epoch on this rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochSize {
    pub num_batches: u64,
    pub num_samples: u64,
}

/// - webdataset: `--train-num-samples` (or the shards' size file) cut into
///   whole global batches and whole shares per worker, rounding up;
/// - csv: the table's rows, each rank's share in full batches (the last
///   partial one dropped);
/// - synthetic: `--train-num-samples` images, likewise.
pub fn train_epoch(args: &TrainArgs, world_size: u64) -> Result<EpochSize> {
    let data = args.train_data.clone().unwrap_or_default();
    let batch_size = args.batch_size as u64;
    let format = resolve_data_format(&data, args.dataset_type.as_str().parse()?)?;
    // DistributedSampler gives each rank ceil(samples / world_size), and
    // the loader drops the last partial batch.
    let in_full_batches = |samples: u64| EpochSize {
        num_batches: samples.div_ceil(world_size) / batch_size,
        num_samples: samples,
    };
    Ok(match format {
        DataFormat::WebDataset => {
            check_some_local_shard_exists(&data)?;
            let samples = train_num_samples(args.train_num_samples, &data)?;
            let size = train_epoch_size(
                samples,
                batch_size,
                world_size,
                args.workers as u64,
                Rounding::Ceil,
            )?;
            EpochSize {
                num_batches: size.num_batches,
                num_samples: size.num_samples,
            }
        }
        DataFormat::Csv => {
            let table = CsvDataset::load(
                data.as_ref(),
                &args.csv_separator,
                &args.csv_img_key,
                &args.csv_caption_key,
            )
            .with_context(|| format!("--train-data {data}"))?;
            in_full_batches(table.len() as u64)
        }
        DataFormat::Synthetic => in_full_batches(args.train_num_samples.unwrap_or(0)),
    })
}

/// Fails naming the first shard when `--train-data` names only local
/// shards and none of them exists: the first real problem, before the
/// sizes are looked for beside them.
fn check_some_local_shard_exists(data: &str) -> Result<()> {
    let shards = ShardList::expand(data, None).with_context(|| format!("--train-data {data}"))?;
    let mut local = Vec::new();
    for url in shards.urls() {
        match Location::parse(url) {
            Ok(Location::Local(path)) => local.push(path),
            _ => return Ok(()),
        }
    }
    match local.first() {
        Some(first) if !local.iter().any(|path| path.exists()) => {
            let more = match local.len() {
                1 => String::new(),
                n => format!(" (nor any other of the {n} shards it names)"),
            };
            anyhow::bail!(
                "--train-data {data}: no such shard {}{more}",
                first.display()
            )
        }
        _ => Ok(()),
    }
}
