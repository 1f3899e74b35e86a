//! The validation reader, the source of the validation path: `--val-data`
//! (webdataset shards in the order the pattern lists them, or the rows of a
//! CSV table in file order) as undecoded samples, every sample once and in
//! order, each numbered with its [`Place`] in the pass, and a mark after
//! each pass. It reads one pass for each evaluation that validates (the
//! `passes` setting), and its queue holds it back until the evaluator takes
//! the batches, so the first batches of a pass are ready when the
//! evaluation starts.
//!
//! After it come the decoder, the augmenter in validation mode and a
//! batcher that sends the last, partial batch: the loading actors of
//! training, not a second loader.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clipflow_core::data::csv_source::CsvDataset;
use clipflow_core::data::dataset_type::{resolve_data_format, DataFormat, DatasetType};
use clipflow_core::data::shard_list::ShardList;
use clipflow_core::data::shard_stream::ShardOpener;
use clipflow_core::data::tar_samples::ShardSamples;
use clipflow_core::data::{Sample, SourceItem};

use crate::bad_data::SampleOrSkip;
use crate::load_stream::{LoadItem, Place};
use crate::runtime::{Emitter, Source, WorkerInfo};
use crate::shard_reader::CsvColumns;
use crate::topology::Settings;

/// What the validation reader reads, and how often.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidationReaderConfig {
    /// `--val-data`: shard pattern(s) or a CSV file; empty reads nothing.
    pub data: String,
    pub format: DataFormat,
    /// Passes over the data: one for each evaluation that validates.
    pub passes: u64,
    pub csv: CsvColumns,
}

impl ValidationReaderConfig {
    /// Reads the settings of a `validation-reader` component: `data`,
    /// `dataset_type`, `passes` (default 1; none without data),
    /// `csv_separator`, `csv_img_key`, `csv_caption_key`.
    pub fn from_settings(settings: &Settings) -> Result<Self> {
        let data = settings.string("data")?.unwrap_or_default();
        let dataset_type: DatasetType = settings
            .non_empty_string("dataset_type")?
            .unwrap_or_else(|| "auto".into())
            .parse()?;
        let passes = settings.u64("passes")?.unwrap_or(1);
        let format = if data.trim().is_empty() {
            DataFormat::WebDataset
        } else {
            resolve_data_format(&data, dataset_type)?
        };
        if format == DataFormat::Synthetic {
            bail!("validation data cannot be synthetic");
        }
        Ok(ValidationReaderConfig {
            passes: if data.trim().is_empty() { 0 } else { passes },
            data,
            format,
            csv: CsvColumns::from_settings(settings)?,
        })
    }
}

/// Reads the passes of the validation data.
pub struct ValidationReader {
    config: ValidationReaderConfig,
    opener: Arc<ShardOpener>,
}

impl ValidationReader {
    /// A function that builds the reader (one worker: it fixes the order).
    pub fn maker(
        config: ValidationReaderConfig,
    ) -> impl Fn(WorkerInfo) -> Result<ValidationReader> {
        move |worker| {
            anyhow::ensure!(
                worker.count == 1,
                "a validation reader runs as one worker (parallelism = 1), not {}: it fixes \
                 the order of the samples",
                worker.count
            );
            Ok(ValidationReader {
                config: config.clone(),
                opener: Arc::new(ShardOpener::new()),
            })
        }
    }

    /// What every pass reads, found once: the table's rows or the shards.
    fn open(&self) -> Result<ValidationSource> {
        let config = &self.config;
        Ok(match config.format {
            DataFormat::Csv => {
                let csv = &config.csv;
                ValidationSource::Table(CsvDataset::load(
                    Path::new(&config.data),
                    &csv.separator,
                    &csv.image_key,
                    &csv.caption_key,
                )?)
            }
            _ => ValidationSource::Shards(ShardList::expand(&config.data, None)?.urls().to_vec()),
        })
    }

    /// The samples of one pass over `source`, in order, read as they are
    /// taken.
    fn samples<'a>(
        &self,
        source: &'a ValidationSource,
    ) -> Box<dyn Iterator<Item = SourceItem> + 'a> {
        match source {
            ValidationSource::Table(table) => Box::new(table.samples((0..table.len()).collect())),
            ValidationSource::Shards(urls) => Box::new(ShardSamples::new(
                urls.clone().into_iter(),
                Arc::clone(&self.opener),
            )),
        }
    }
}

/// The validation data, as every pass reads it.
enum ValidationSource {
    Table(CsvDataset),
    Shards(Vec<String>),
}

impl Source for ValidationReader {
    type Out = LoadItem<Sample>;

    fn run(&mut self, out: &mut Emitter<Self::Out>) -> Result<()> {
        if self.config.passes == 0 {
            return Ok(());
        }
        let source = self
            .open()
            .with_context(|| format!("reading --val-data {:?}", self.config.data))?;
        for pass in 0..self.config.passes {
            let _span = tracing::info_span!("read_validation_pass", pass).entered();
            let mut places = 0;
            for item in self.samples(&source) {
                let item = match item {
                    SourceItem::Sample(sample) => SampleOrSkip::Sample(sample),
                    SourceItem::Skipped(skip) => SampleOrSkip::Skipped(skip.into()),
                };
                let place = Place {
                    epoch: pass,
                    index: places,
                };
                places += 1;
                out.emit(LoadItem::At(place, item))?;
            }
            out.emit(LoadItem::EpochEnd {
                epoch: pass,
                places,
            })?;
        }
        Ok(())
    }
}
