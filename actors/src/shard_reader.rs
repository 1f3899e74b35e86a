//! The shard reader, the source of the loading path: every epoch of the run
//! in turn (`first_epoch` up to `epochs`), this rank's share of the training
//! data as undecoded samples with OpenCLIP's semantics, each numbered with
//! its [`Place`] in the epoch, and a mark after each epoch.
//!
//! - webdataset: the shard list of `--train-data` (braces, `::`, upsampling
//!   factors), shuffled per epoch and split across ranks, or drawn with
//!   replacement (`--dataset-resampled`); tar members grouped into samples
//!   by key (with fewer shards than ranks, every rank reads every shard and
//!   keeps its every-(ranks)-th sample, where OpenCLIP refuses); a sample
//!   shuffle buffer seeded from `--seed`, the epoch and the rank; exactly
//!   the rank's batches of the epoch (`--train-num-samples` or the size
//!   file, rounded up to whole batches per loader worker as OpenCLIP's
//!   `with_epoch` does), walking the shards again when they hold fewer
//!   samples, so that every rank trains the same number of steps; then
//!   `spare_samples` more of the same stream, which the batcher takes in
//!   place of samples that fail to decode (OpenCLIP's loader goes on along
//!   its stream past them) and otherwise leaves.
//! - csv: the rows of `--train-data` in a per-epoch order, split across
//!   ranks; images read from the paths the rows name.
//! - synthetic: `--train-num-samples` black images of the model's size.
//!
//! One reader per rank: reading a tar is cheap next to decoding it, and one
//! stream fixes the order of the samples, which the decoders and augmenters
//! after it (as many as `--workers`) keep through the places. While the last
//! batches of an epoch train, the reader is already into the next epoch.
//!
//! The per-format logic lives in `clipflow_core::data`; this actor chooses,
//! configures and drains it. Bad shards, members and files become
//! [`SampleOrSkip::Skipped`] items and the stream goes on.

use std::path::Path;
use std::sync::Arc;

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
use crate::load_stream::{LoadItem, Place};
use crate::runtime::{Emitter, Source, WorkerInfo};
use crate::topology::Settings;

/// The columns and separator of a CSV dataset (`--csv-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvColumns {
    pub separator: String,
    pub image_key: String,
    pub caption_key: String,
}

impl CsvColumns {
    /// `csv_separator`, `csv_img_key` and `csv_caption_key`, OpenCLIP's
    /// defaults where absent.
    pub fn from_settings(settings: &Settings) -> Result<Self> {
        let defaults = CsvColumns::default();
        Ok(CsvColumns {
            separator: settings
                .string("csv_separator")?
                .unwrap_or(defaults.separator),
            image_key: settings
                .non_empty_string("csv_img_key")?
                .unwrap_or(defaults.image_key),
            caption_key: settings
                .non_empty_string("csv_caption_key")?
                .unwrap_or(defaults.caption_key),
        })
    }
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

/// What the shard reader reads.
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
    /// `--workers`: OpenCLIP rounds a webdataset epoch up to whole batches
    /// for each of its loader workers, and so does the reader.
    pub loader_workers: u64,
    pub seed: u64,
    /// The first epoch read (the resumed one, or 0).
    pub first_epoch: u64,
    /// `--epochs`: the reader ends after epoch `epochs - 1`.
    pub epochs: u64,
    /// The place in the first epoch the stream starts at (a run resumed
    /// inside an epoch); the items before it are read again, in the same
    /// order, and not sent.
    pub first_place: u64,
    /// Webdataset samples read after each epoch's share, from the same
    /// stream, for the batcher to fill the places of samples that fail to
    /// decode (as OpenCLIP's loader goes on along its stream past them).
    pub spare_samples: u64,
    pub rank: usize,
    pub world_size: usize,
    pub csv: CsvColumns,
    /// (height, width) of the synthetic dataset's images.
    pub synthetic_image_size: (u32, u32),
}

impl ShardReaderConfig {
    /// Reads the settings of a `shard-reader` component: `data`,
    /// `dataset_type`, `resampled`, `upsampling_factors`, `num_samples`
    /// (0 = from the size file), `batch_size`, `workers`, `seed`,
    /// `first_epoch`, `epochs` (default: one epoch), `first_place`,
    /// `spare_samples` (default 0), `rank`,
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
        let first_epoch = settings.u64("first_epoch")?.unwrap_or(0);
        let config = ShardReaderConfig {
            data,
            format,
            resampled: settings.bool("resampled")?.unwrap_or(false),
            upsampling_factors: settings.non_empty_string("upsampling_factors")?,
            num_samples: settings.u64("num_samples")?.filter(|&n| n > 0),
            batch_size: settings.u64("batch_size")?.unwrap_or(64),
            loader_workers: settings.u64("workers")?.unwrap_or(1).max(1),
            seed: settings.u64("seed")?.unwrap_or(0),
            first_epoch,
            epochs: settings.u64("epochs")?.unwrap_or(first_epoch + 1),
            first_place: settings.u64("first_place")?.unwrap_or(0),
            spare_samples: settings.u64("spare_samples")?.unwrap_or(0),
            rank: settings.u64("rank")?.unwrap_or(0) as usize,
            world_size: settings.u64("world_size")?.unwrap_or(1) as usize,
            csv: CsvColumns::from_settings(settings)?,
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

/// The shard reader of one rank.
pub struct ShardReader {
    config: ShardReaderConfig,
    opener: Arc<ShardOpener>,
    /// A CSV table, loaded at the first epoch.
    csv: Option<Arc<CsvDataset>>,
    /// The shard list and the samples of one epoch, found at the first
    /// epoch (the size file may be remote).
    webdataset: Option<Arc<WebDatasetEpochs>>,
}

/// What every epoch of a webdataset reads.
struct WebDatasetEpochs {
    shards: ShardList,
    /// Samples of this rank's epoch: its batches, rounded as OpenCLIP's
    /// `with_epoch` rounds them.
    samples_per_epoch: u64,
}

impl ShardReader {
    /// A function that builds the reader (one worker: it fixes the order
    /// of the stream).
    pub fn maker(config: ShardReaderConfig) -> impl Fn(WorkerInfo) -> Result<ShardReader> {
        move |worker| {
            anyhow::ensure!(
                worker.count == 1,
                "a shard reader runs as one worker per rank (parallelism = 1), not {}: it \
                 fixes the order of the samples, and the decoders and augmenters after it \
                 are the parallel part",
                worker.count
            );
            Ok(ShardReader {
                config: config.clone(),
                opener: Arc::new(ShardOpener::new()),
                csv: None,
                webdataset: None,
            })
        }
    }

    fn slot(&self) -> ReaderSlot {
        ReaderSlot {
            rank: self.config.rank,
            world_size: self.config.world_size,
            worker: 0,
            workers: 1,
        }
    }

    fn webdataset_epochs(&mut self) -> Result<Arc<WebDatasetEpochs>> {
        if let Some(epochs) = &self.webdataset {
            return Ok(Arc::clone(epochs));
        }
        let config = &self.config;
        let shards = ShardList::expand(&config.data, config.upsampling_factors.as_deref())?;
        let num_samples = train_num_samples(config.num_samples, &config.data)?;
        let epoch_size = train_epoch_size(
            num_samples,
            config.batch_size,
            config.world_size as u64,
            config.loader_workers,
            Rounding::Ceil,
        )?;
        let epochs = Arc::new(WebDatasetEpochs {
            shards,
            samples_per_epoch: epoch_size.num_batches * config.batch_size,
        });
        self.webdataset = Some(Arc::clone(&epochs));
        Ok(epochs)
    }

    fn read_webdataset(&mut self, epoch: u64, out: &mut EpochWriter) -> Result<()> {
        let epochs = self.webdataset_epochs()?;
        let config = &self.config;
        let (shards, limit) = (
            &epochs.shards,
            epochs.samples_per_epoch + config.spare_samples,
        );
        let slot = self.slot();
        // Drawn with replacement, one endless pass; else this rank's share
        // of the epoch's shards, walked again until the epoch's share of
        // samples and its spares are read. A pass that yields nothing (every shard bad) ends
        // the epoch early.
        let share = if config.resampled {
            None
        } else {
            Some(train_epoch_shards(shards, config.seed, epoch, slot)?)
        };
        let mut emitted = 0;
        while emitted < limit {
            let samples: Box<dyn Iterator<Item = SourceItem>> = match &share {
                None => {
                    let order = ResampledShards::new(shards, config.seed, epoch, slot)?;
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
            let shuffled = shuffle_samples(samples, config.seed, epoch, slot);
            let pass = out.write_all(shuffled, Some(limit - emitted))?;
            if pass == 0 {
                break;
            }
            emitted += pass;
        }
        Ok(())
    }

    fn read_csv(&mut self, epoch: u64, out: &mut EpochWriter) -> Result<()> {
        let dataset = self.load_csv()?;
        let config = &self.config;
        let order = dataset.epoch_order(config.seed, epoch, config.rank, config.world_size);
        out.write_all(dataset.samples(order), None)?;
        Ok(())
    }

    fn load_csv(&mut self) -> Result<Arc<CsvDataset>> {
        if let Some(dataset) = &self.csv {
            return Ok(Arc::clone(dataset));
        }
        let csv = &self.config.csv;
        let dataset = Arc::new(CsvDataset::load(
            Path::new(&self.config.data),
            &csv.separator,
            &csv.image_key,
            &csv.caption_key,
        )?);
        self.csv = Some(Arc::clone(&dataset));
        Ok(dataset)
    }

    fn read_synthetic(&self, out: &mut EpochWriter) -> Result<()> {
        let config = &self.config;
        let (height, width) = config.synthetic_image_size;
        let dataset = SyntheticDataset::new(width, height, config.num_samples)?;
        let share = dataset.samples(config.rank as u64, config.world_size as u64);
        out.write_all(share, None)?;
        Ok(())
    }

    fn read_epoch(&mut self, epoch: u64, out: &mut EpochWriter) -> Result<()> {
        let _span = tracing::info_span!("read_epoch", epoch).entered();
        match self.config.format {
            DataFormat::WebDataset => self.read_webdataset(epoch, out),
            DataFormat::Csv => self.read_csv(epoch, out),
            DataFormat::Synthetic => self.read_synthetic(out),
        }
    }
}

impl Source for ShardReader {
    type Out = LoadItem<Sample>;

    fn run(&mut self, out: &mut Emitter<Self::Out>) -> Result<()> {
        for epoch in self.config.first_epoch..self.config.epochs {
            let mut writer = EpochWriter {
                out: &mut *out,
                epoch,
                next_index: 0,
                first_sent: if epoch == self.config.first_epoch {
                    self.config.first_place
                } else {
                    0
                },
            };
            self.read_epoch(epoch, &mut writer).with_context(|| {
                format!(
                    "reading {} data {:?} (epoch {epoch})",
                    self.config.format, self.config.data
                )
            })?;
            let places = writer.next_index;
            out.emit(LoadItem::EpochEnd { epoch, places })?;
        }
        Ok(())
    }
}

/// Sends the items of one epoch downstream, each at the next place, from
/// place `first_sent` on.
struct EpochWriter<'a> {
    out: &'a mut Emitter<LoadItem<Sample>>,
    epoch: u64,
    next_index: u64,
    first_sent: u64,
}

impl EpochWriter<'_> {
    /// Sends every item, stopping after `limit` samples (skips do not count
    /// towards it, and samples before `first_sent` do); returns the samples
    /// read. Reading each item (shard I/O,
    /// tar parsing, the shuffle buffer) runs in a trace-level `read` span.
    fn write_all(
        &mut self,
        mut items: impl Iterator<Item = SourceItem>,
        limit: Option<u64>,
    ) -> Result<u64> {
        let mut samples = 0u64;
        let mut read_next = || tracing::trace_span!("read").in_scope(|| items.next());
        while let Some(item) = read_next() {
            let item = match item {
                SourceItem::Sample(sample) => {
                    samples += 1;
                    SampleOrSkip::Sample(sample)
                }
                SourceItem::Skipped(skip) => SampleOrSkip::Skipped(skip.into()),
            };
            let place = Place {
                epoch: self.epoch,
                index: self.next_index,
            };
            self.next_index += 1;
            if place.index >= self.first_sent {
                self.out.emit(LoadItem::At(place, item))?;
            }
            if limit.is_some_and(|limit| samples >= limit) {
                break;
            }
        }
        Ok(samples)
    }
}
