//! The shard reader, the source of the loading path: for one epoch, the
//! share of the training data that this rank and this reader worker own,
//! streamed as undecoded samples with OpenCLIP's semantics.
//!
//! - webdataset: the shard list of `--train-data` (braces, `::`, upsampling
//!   factors), shuffled per epoch and split across ranks and readers, or
//!   drawn with replacement (`--dataset-resampled`); tar members grouped into
//!   samples by key (with fewer shards than readers, every reader reads
//!   every shard and keeps its every-(readers)-th sample, where OpenCLIP
//!   refuses); OpenCLIP's sample shuffle buffer; exactly the reader's
//!   share of the epoch's batches (`--train-num-samples` or the size file,
//!   rounded up to whole batches per reader as OpenCLIP's `with_epoch` does),
//!   walking its shards again when they hold fewer samples, as `with_epoch`
//!   does, so that every rank trains the same number of steps.
//! - csv: the rows of `--train-data` in a per-epoch order, split across ranks
//!   and readers; images read from the paths the rows name.
//! - synthetic: `--train-num-samples` black images of the model's size.
//!
//! The per-format logic lives in `clipflow_core::data`; this actor chooses,
//! configures and drains it. Bad shards, members and files become
//! [`SampleOrSkip::Skipped`] items and the stream goes on.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use clipflow_core::data::csv_source::CsvDataset;
use clipflow_core::data::dataset_type::{resolve_data_format, DataFormat, DatasetType};
use clipflow_core::data::shard_list::{
    check_upsampling_needs_resampling, train_epoch_shards, ResampledShards, ShardList,
};
use clipflow_core::data::shard_stream::ShardOpener;
use clipflow_core::data::shuffle_buffer::shuffle_samples;
use clipflow_core::data::sizes::{train_epoch_size, train_num_samples, Rounding};
use clipflow_core::data::synthetic::SyntheticDataset;
use clipflow_core::data::tar_samples::ShardSamples;
use clipflow_core::data::{ReaderSlot, Sample, SourceItem};
use clipflow_core::model::{ModelConfig, ModelOverrides};

use crate::bad_data::SampleOrSkip;
use crate::runtime::{Emitter, Source, WorkerInfo};
use crate::topology::Settings;

/// The columns and separator of a CSV dataset (`--csv-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvColumns {
    pub separator: String,
    pub image_key: String,
    pub caption_key: String,
}

impl Default for CsvColumns {
    /// OpenCLIP's defaults.
    fn default() -> Self {
        CsvColumns {
            separator: "\t".into(),
            image_key: "filepath".into(),
            caption_key: "title".into(),
        }
    }
}

/// What one epoch of the shard reader reads; the same for all its workers.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardReaderConfig {
    /// `--train-data`: shard pattern(s) or a CSV file; unused for synthetic.
    pub data: String,
    pub format: DataFormat,
    /// `--dataset-resampled`: draw shards with replacement.
    pub resampled: bool,
    /// `--train-data-upsampling-factors`, as written.
    pub upsampling_factors: Option<String>,
    /// `--train-num-samples`; `None` reads the shards' size file.
    pub num_samples: Option<u64>,
    /// Samples per batch on each rank, to round the epoch to whole batches.
    pub batch_size: u64,
    pub seed: u64,
    pub epoch: u64,
    pub rank: usize,
    pub world_size: usize,
    pub csv: CsvColumns,
    /// (height, width) of the synthetic dataset's images.
    pub synthetic_image_size: (u32, u32),
}

impl ShardReaderConfig {
    /// Reads the settings of a `shard-reader` component: `data`,
    /// `dataset_type`, `resampled`, `upsampling_factors`, `num_samples`
    /// (0 = from the size file), `batch_size`, `seed`, `epoch`, `rank`,
    /// `world_size`, `csv_separator`, `csv_img_key`, `csv_caption_key`, and
    /// `model` (the image size of synthetic data).
    pub fn from_settings(settings: &Settings) -> Result<Self> {
        let data = settings.string("data")?.unwrap_or_default();
        let dataset_type: DatasetType = settings
            .non_empty_string("dataset_type")?
            .unwrap_or_else(|| "auto".into())
            .parse()?;
        let format = if dataset_type == DatasetType::Synthetic {
            DataFormat::Synthetic
        } else if data.trim().is_empty() {
            bail!("no training data: pass --train-data (or --dataset-type synthetic)");
        } else {
            resolve_data_format(&data, dataset_type)?
        };
        let model = settings
            .non_empty_string("model")?
            .unwrap_or_else(|| "RN50".into());
        let (height, width) = ModelConfig::by_name(&model, &ModelOverrides::default())?
            .vision_cfg
            .image_size
            .height_width();
        let defaults = CsvColumns::default();
        let config = ShardReaderConfig {
            data,
            format,
            resampled: settings.bool("resampled")?.unwrap_or(false),
            upsampling_factors: settings.non_empty_string("upsampling_factors")?,
            num_samples: settings.u64("num_samples")?.filter(|&n| n > 0),
            batch_size: settings.u64("batch_size")?.unwrap_or(64),
            seed: settings.u64("seed")?.unwrap_or(0),
            epoch: settings.u64("epoch")?.unwrap_or(0),
            rank: settings.u64("rank")?.unwrap_or(0) as usize,
            world_size: settings.u64("world_size")?.unwrap_or(1) as usize,
            csv: CsvColumns {
                separator: settings
                    .string("csv_separator")?
                    .unwrap_or(defaults.separator),
                image_key: settings
                    .non_empty_string("csv_img_key")?
                    .unwrap_or(defaults.image_key),
                caption_key: settings
                    .non_empty_string("csv_caption_key")?
                    .unwrap_or(defaults.caption_key),
            },
            synthetic_image_size: (height as u32, width as u32),
        };
        if config.batch_size == 0 {
            bail!("setting 'batch_size': must be at least 1");
        }
        if config.world_size == 0 || config.rank >= config.world_size {
            bail!(
                "rank {} is not below world_size {}",
                config.rank,
                config.world_size
            );
        }
        if config.format == DataFormat::WebDataset {
            check_upsampling_needs_resampling(
                config.upsampling_factors.as_deref(),
                config.resampled,
            )?;
        }
        Ok(config)
    }
}

/// A CSV table loaded once and shared by the reader's workers.
type SharedCsv = Arc<Mutex<Option<Arc<CsvDataset>>>>;

/// One worker of the shard reader.
pub struct ShardReader {
    config: Arc<ShardReaderConfig>,
    worker: WorkerInfo,
    opener: Arc<ShardOpener>,
    csv: SharedCsv,
}

impl ShardReader {
    /// A function that builds worker `i` of `n` of one shard-reader component.
    pub fn maker(config: ShardReaderConfig) -> impl Fn(WorkerInfo) -> Result<ShardReader> {
        let config = Arc::new(config);
        let opener = Arc::new(ShardOpener::new());
        let csv = SharedCsv::default();
        move |worker| {
            Ok(ShardReader {
                config: Arc::clone(&config),
                worker,
                opener: Arc::clone(&opener),
                csv: Arc::clone(&csv),
            })
        }
    }

    fn slot(&self) -> ReaderSlot {
        ReaderSlot {
            rank: self.config.rank,
            world_size: self.config.world_size,
            worker: self.worker.index,
            workers: self.worker.count,
        }
    }

    fn read_webdataset(&self, out: &mut Emitter<SampleOrSkip<Sample>>) -> Result<()> {
        let config = &self.config;
        let shards = ShardList::expand(&config.data, config.upsampling_factors.as_deref())?;
        let num_samples = train_num_samples(config.num_samples, &config.data)?;
        let epoch_size = train_epoch_size(
            num_samples,
            config.batch_size,
            config.world_size as u64,
            self.worker.count as u64,
            Rounding::Ceil,
        )?;
        let limit = epoch_size.batches_per_reader * config.batch_size;
        let slot = self.slot();
        // Drawn with replacement, one endless pass; else this reader's share
        // of the epoch's shards, walked again until the epoch's share of
        // samples is full. A pass that yields nothing (every shard bad) ends
        // the epoch early.
        let share = if config.resampled {
            None
        } else {
            Some(train_epoch_shards(
                &shards,
                config.seed,
                config.epoch,
                slot,
            )?)
        };
        let mut emitted = 0;
        while emitted < limit {
            let samples: Box<dyn Iterator<Item = SourceItem>> = match &share {
                None => {
                    let order = ResampledShards::new(&shards, config.seed, config.epoch, slot)?;
                    Box::new(ShardSamples::new(order, Arc::clone(&self.opener)))
                }
                Some(share) => {
                    let order = share.shards.clone().into_iter();
                    let samples = ShardSamples::new(order, Arc::clone(&self.opener));
                    match share.sample_split {
                        Some(split) => Box::new(split.take_share(samples)),
                        None => Box::new(samples),
                    }
                }
            };
            let shuffled = shuffle_samples(samples, config.seed, config.epoch, slot);
            let pass = emit_all(shuffled, Some(limit - emitted), self.worker.index, out)?;
            if pass == 0 {
                break;
            }
            emitted += pass;
        }
        Ok(())
    }

    fn read_csv(&self, out: &mut Emitter<SampleOrSkip<Sample>>) -> Result<()> {
        let config = &self.config;
        let dataset = self.load_csv()?;
        let order: Vec<usize> = dataset
            .epoch_order(config.seed, config.epoch, config.rank, config.world_size)
            .into_iter()
            .skip(self.worker.index)
            .step_by(self.worker.count)
            .collect();
        emit_all(dataset.samples(order), None, self.worker.index, out)?;
        Ok(())
    }

    fn load_csv(&self) -> Result<Arc<CsvDataset>> {
        let mut shared = self.csv.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dataset) = shared.as_ref() {
            return Ok(Arc::clone(dataset));
        }
        let csv = &self.config.csv;
        let dataset = Arc::new(CsvDataset::load(
            Path::new(&self.config.data),
            &csv.separator,
            &csv.image_key,
            &csv.caption_key,
        )?);
        *shared = Some(Arc::clone(&dataset));
        Ok(dataset)
    }

    fn read_synthetic(&self, out: &mut Emitter<SampleOrSkip<Sample>>) -> Result<()> {
        let config = &self.config;
        let (height, width) = config.synthetic_image_size;
        let dataset = SyntheticDataset::new(width, height, config.num_samples)?;
        let share = dataset
            .samples(config.rank as u64, config.world_size as u64)
            .skip(self.worker.index)
            .step_by(self.worker.count);
        emit_all(share, None, self.worker.index, out)?;
        Ok(())
    }
}

impl Source for ShardReader {
    type Out = SampleOrSkip<Sample>;

    fn run(&mut self, out: &mut Emitter<Self::Out>) -> Result<()> {
        let what = match self.config.format {
            DataFormat::WebDataset => self.read_webdataset(out),
            DataFormat::Csv => self.read_csv(out),
            DataFormat::Synthetic => self.read_synthetic(out),
        };
        what.with_context(|| {
            format!(
                "reading {} data {:?} (reader {} of {})",
                self.config.format,
                self.config.data,
                self.worker.index + 1,
                self.worker.count
            )
        })
    }
}

/// Sends every item downstream, stopping after `limit` samples (skips do
/// not count towards it); returns the samples sent. Reading each item
/// (shard I/O, tar parsing, the shuffle buffer) runs in a trace-level `read`
/// span naming the worker.
fn emit_all(
    mut items: impl Iterator<Item = SourceItem>,
    limit: Option<u64>,
    worker: usize,
    out: &mut Emitter<SampleOrSkip<Sample>>,
) -> Result<u64> {
    let mut samples = 0u64;
    let mut read_next =
        || tracing::trace_span!("read", worker = worker as i64).in_scope(|| items.next());
    while let Some(item) = read_next() {
        match item {
            SourceItem::Sample(sample) => {
                out.emit(SampleOrSkip::Sample(sample))?;
                samples += 1;
                if limit.is_some_and(|limit| samples >= limit) {
                    break;
                }
            }
            SourceItem::Skipped(skip) => out.emit(SampleOrSkip::Skipped(skip.into()))?,
        }
    }
    Ok(samples)
}
