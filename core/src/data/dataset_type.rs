//! `--dataset-type`: the format of the data, and how `auto` tells it from the
//! data path as OpenCLIP's `get_dataset_fn` does (the text after the last dot
//! of the whole path: `csv` or `tsv` is CSV, `tar` is webdataset).

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};

/// The value of `--dataset-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetType {
    WebDataset,
    Csv,
    Synthetic,
    Auto,
}

impl FromStr for DatasetType {
    type Err = anyhow::Error;

    fn from_str(name: &str) -> Result<DatasetType> {
        Ok(match name {
            "webdataset" => DatasetType::WebDataset,
            "csv" => DatasetType::Csv,
            "synthetic" => DatasetType::Synthetic,
            "auto" => DatasetType::Auto,
            other => bail!(
                "unsupported --dataset-type {other:?}: use webdataset, csv, synthetic or auto"
            ),
        })
    }
}

/// A concrete data format, once `auto` is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    WebDataset,
    Csv,
    Synthetic,
}

impl fmt::Display for DataFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DataFormat::WebDataset => "webdataset",
            DataFormat::Csv => "csv",
            DataFormat::Synthetic => "synthetic",
        })
    }
}

/// The format of the data at `data_path` given `--dataset-type`. With `auto`
/// the extension decides, case-sensitively as in OpenCLIP (`.tar` shards,
/// `.csv`/`.tsv` files); for `a.tar::b.tar` the last source's extension counts.
pub fn resolve_data_format(data_path: &str, dataset_type: DatasetType) -> Result<DataFormat> {
    Ok(match dataset_type {
        DatasetType::WebDataset => DataFormat::WebDataset,
        DatasetType::Csv => DataFormat::Csv,
        DatasetType::Synthetic => DataFormat::Synthetic,
        DatasetType::Auto => {
            let extension = data_path.rsplit('.').next().unwrap_or(data_path);
            match extension {
                "csv" | "tsv" => DataFormat::Csv,
                "tar" => DataFormat::WebDataset,
                _ => bail!(
                    "--dataset-type auto cannot tell the format of {data_path:?} from its extension {extension:?}: \
                     name .tar shards or a .csv/.tsv file, or pass --dataset-type webdataset or csv"
                ),
            }
        }
    })
}
