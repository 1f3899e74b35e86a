//! CSV datasets (`--dataset-type csv`): a table with a header row whose
//! `--csv-img-key` column holds image paths and `--csv-caption-key` column
//! holds captions, split by `--csv-separator`, as OpenCLIP reads it with
//! pandas. Image paths are opened as written (relative to the working
//! directory, as in OpenCLIP). Each epoch visits the rows in a new order
//! seeded from the seed and the epoch, split across ranks the way PyTorch's
//! `DistributedSampler` splits (padded to a multiple of the world size).
//!
//! Differences from pandas: an empty cell reads as an empty string (pandas
//! gives NaN, which OpenCLIP turns into the caption "nan"), and cells are
//! never converted to numbers.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;

use super::{epoch_rng, ImageData, RngPurpose, Sample, Skip, SkipKind, SourceItem};

/// One data row: an image path and its caption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvRow {
    pub image_path: String,
    pub caption: String,
}

/// The rows of a CSV dataset, loaded whole (they are paths and captions).
#[derive(Debug, Clone)]
pub struct CsvDataset {
    path: PathBuf,
    rows: Vec<CsvRow>,
}

impl CsvDataset {
    /// Loads `path`. `separator` is one character; the two characters `\t`
    /// (as a shell passes an unexpanded tab) also mean a tab, as they do to
    /// pandas. A missing column is an error naming the file and the columns
    /// it has.
    pub fn load(
        path: &Path,
        separator: &str,
        image_key: &str,
        caption_key: &str,
    ) -> Result<CsvDataset> {
        let delimiter = separator_byte(separator)?;
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .flexible(true)
            .from_path(path)
            .with_context(|| format!("cannot open the CSV file {}", path.display()))?;
        let headers: Vec<String> = reader
            .headers()
            .with_context(|| format!("cannot read the header row of {}", path.display()))?
            .iter()
            .enumerate()
            .map(|(i, h)| {
                if i == 0 {
                    h.trim_start_matches('\u{feff}')
                } else {
                    h
                }
                .to_owned()
            })
            .collect();
        let column = |key: &str, flag: &str| {
            headers.iter().position(|h| h == key).with_context(|| {
                format!(
                    "{} has no column {key:?} ({flag}); its columns are {headers:?}",
                    path.display()
                )
            })
        };
        let image_column = column(image_key, "--csv-img-key")?;
        let caption_column = column(caption_key, "--csv-caption-key")?;
        let mut rows = Vec::new();
        for record in reader.records() {
            let record = record.with_context(|| format!("cannot read {}", path.display()))?;
            if record.iter().all(str::is_empty) {
                continue; // pandas skips blank lines
            }
            let line = record.position().map_or(0, |p| p.line());
            let cell = |column: usize, key: &str| {
                record.get(column).map(str::to_owned).with_context(|| {
                    format!(
                        "{} line {line}: the row has no {key:?} cell ({} cells, {} columns in the header)",
                        path.display(),
                        record.len(),
                        headers.len()
                    )
                })
            };
            rows.push(CsvRow {
                image_path: cell(image_column, image_key)?,
                caption: cell(caption_column, caption_key)?,
            });
        }
        Ok(CsvDataset {
            path: path.to_owned(),
            rows,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn rows(&self) -> &[CsvRow] {
        &self.rows
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The row indices rank `rank` of `world_size` visits in `epoch`: a
    /// permutation seeded from `seed + epoch` (the same on every rank),
    /// padded by repeating its start to a multiple of `world_size`, then every
    /// `world_size`-th index from `rank`. Every rank gets the same count.
    pub fn epoch_order(&self, seed: u64, epoch: u64, rank: usize, world_size: usize) -> Vec<usize> {
        let world_size = world_size.max(1);
        let mut order: Vec<usize> = (0..self.rows.len()).collect();
        order.shuffle(&mut epoch_rng(seed, epoch, RngPurpose::CsvOrder, 0));
        let padded_len = order.len().div_ceil(world_size) * world_size;
        let mut padded = order.clone();
        while !order.is_empty() && padded.len() < padded_len {
            let missing = padded_len - padded.len();
            padded.extend_from_slice(&order[..missing.min(order.len())]);
        }
        padded.into_iter().skip(rank).step_by(world_size).collect()
    }

    /// The samples of the rows at `order`, reading each image file; a file
    /// that cannot be read is recorded as skipped.
    pub fn samples(&self, order: Vec<usize>) -> impl Iterator<Item = SourceItem> + '_ {
        order.into_iter().filter_map(move |index| {
            let row = self.rows.get(index)?;
            let origin = self.path.display().to_string();
            Some(match std::fs::read(&row.image_path) {
                Ok(bytes) => SourceItem::Sample(Sample {
                    key: index.to_string(),
                    origin,
                    image: ImageData::Encoded {
                        bytes,
                        extension: extension_of(&row.image_path),
                    },
                    caption: row.caption.clone(),
                }),
                Err(error) => SourceItem::Skipped(Skip {
                    kind: SkipKind::UnreadableImageFile,
                    origin,
                    key: Some(index.to_string()),
                    detail: format!("cannot read the image {}: {error}", row.image_path),
                }),
            })
        })
    }
}

fn separator_byte(separator: &str) -> Result<u8> {
    if separator == "\\t" {
        return Ok(b'\t');
    }
    match separator.as_bytes() {
        [byte] => Ok(*byte),
        _ => bail!(
            "--csv-separator must be a single character (such as a tab or a comma), got {separator:?}"
        ),
    }
}

fn extension_of(path: &str) -> String {
    Path::new(path)
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default()
}
