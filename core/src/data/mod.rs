//! Data sources: where training, validation and zero-shot samples come from,
//! with OpenCLIP's semantics (`open_clip_train.data`). This module owns
//!
//! - the shard list of a webdataset (`--train-data` brace patterns, `::`
//!   sources, upsampling factors, per-epoch shard shuffle, resampling, and the
//!   split of shards across ranks and readers): [`shard_list`];
//! - opening a shard from the filesystem or an object store: [`shard_stream`];
//! - reading tar members and grouping them into samples by key: [`tar_samples`];
//! - the shuffle buffer of shards and samples: [`shuffle_buffer`], with
//!   Python's generator for the shard shuffle: [`python_random`];
//! - CSV and synthetic datasets: [`csv_source`], [`synthetic`];
//! - `--dataset-type auto` detection: [`dataset_type`];
//! - the class-labelled image folders of `--imagenet-val` / `--imagenet-v2`:
//!   [`image_folder`];
//! - dataset sizes (`sizes.json`, `__len__`, epoch rounding): [`sizes`];
//! - writing shards ([`tar_writer`]) and the rendered-scenes dataset the
//!   quickstart trains on ([`rendered_scenes`]).
//!
//! Everything here is plain Rust iterators; the actors wrap them. Bad data in
//! a sample source is never fatal: a source yields [`SourceItem::Skipped`] naming the kind,
//! the shard or file and the key, and the consumer counts it in [`SkipCounts`].

pub mod csv_source;
pub mod dataset_type;
pub mod image_folder;
pub mod python_random;
pub mod rendered_scenes;
pub mod shard_list;
pub mod shard_stream;
pub mod shuffle_buffer;
pub mod sizes;
pub mod synthetic;
pub mod tar_samples;
pub mod tar_writer;

use std::collections::BTreeMap;
use std::fmt;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// One image-caption pair, before decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's key: the member name up to the first dot of its basename
    /// (webdataset), the data row number (CSV) or the index (synthetic).
    pub key: String,
    /// Where the sample came from: the shard URL or the CSV file.
    pub origin: String,
    pub image: ImageData,
    pub caption: String,
}

/// The image of a [`Sample`].
#[derive(Debug, Clone, PartialEq)]
pub enum ImageData {
    /// Encoded bytes (JPEG, PNG, WebP...) still to decode; `extension` is the
    /// tar member's extension or the file's, a hint for error messages only.
    Encoded { bytes: Vec<u8>, extension: String },
    /// Decoded 8-bit RGB pixels, row-major, `width * height * 3` bytes.
    Pixels {
        width: u32,
        height: u32,
        rgb: Vec<u8>,
    },
}

/// What a source yields: a sample, or the record of one it had to skip.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceItem {
    Sample(Sample),
    Skipped(Skip),
}

/// A sample, member or shard that a source skipped, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Skip {
    pub kind: SkipKind,
    /// The shard URL or CSV file.
    pub origin: String,
    /// The sample key or member name, where there is one.
    pub key: Option<String>,
    /// A human-readable explanation (the I/O error, the members present...).
    pub detail: String,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "skipped ({}) in {}", self.kind.name(), self.origin)?;
        if let Some(key) = &self.key {
            write!(f, " at {key}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// The kinds of bad data a source skips and counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipKind {
    /// A webdataset sample with no jpg/png/jpeg/webp member.
    MissingImage,
    /// A webdataset sample with an image but no txt member.
    MissingCaption,
    /// A caption that is not valid UTF-8.
    CaptionNotUtf8,
    /// A tar member whose basename has no extension, so it has no sample key.
    MemberWithoutKey,
    /// A tar that ends in the middle of a member or header, or whose header
    /// is corrupt; the samples before the damage are kept.
    BadTar,
    /// A shard that could not be opened at all.
    UnreadableShard,
    /// A CSV row whose image file could not be read.
    UnreadableImageFile,
}

impl SkipKind {
    /// The snake_case name used in logs and in the benchmark's JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::MissingImage => "missing_image",
            Self::MissingCaption => "missing_caption",
            Self::CaptionNotUtf8 => "caption_not_utf8",
            Self::MemberWithoutKey => "member_without_key",
            Self::BadTar => "bad_tar",
            Self::UnreadableShard => "unreadable_shard",
            Self::UnreadableImageFile => "unreadable_image_file",
        }
    }
}

/// Counts of skipped items by kind; serialises as `{"missing_caption": 3, ...}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct SkipCounts {
    counts: BTreeMap<SkipKind, u64>,
}

impl SkipCounts {
    pub fn record(&mut self, kind: SkipKind) {
        *self.counts.entry(kind).or_default() += 1;
    }

    pub fn get(&self, kind: SkipKind) -> u64 {
        self.counts.get(&kind).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Adds another reader's counts to these.
    pub fn merge(&mut self, other: &SkipCounts) {
        for (&kind, &count) in &other.counts {
            *self.counts.entry(kind).or_default() += count;
        }
    }
}

/// One shard reader's place among all readers of a run: `world_size` ranks
/// (processes or devices) with `workers` readers each, as OpenCLIP's
/// `split_by_node` and `split_by_worker` see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaderSlot {
    pub rank: usize,
    pub world_size: usize,
    pub worker: usize,
    pub workers: usize,
}

impl ReaderSlot {
    /// The only reader of a single-process, single-worker run.
    pub const SOLE: ReaderSlot = ReaderSlot {
        rank: 0,
        world_size: 1,
        worker: 0,
        workers: 1,
    };

    /// This reader's number among all `world_size * workers` readers.
    pub fn global_index(&self) -> usize {
        self.rank * self.workers + self.worker
    }
}

/// What a seeded random stream is for; each purpose draws from its own
/// stream so that, say, the sample shuffle and the resampling of one reader
/// are independent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RngPurpose {
    SampleShuffle = 2,
    ShardResampling = 3,
    CsvOrder = 4,
}

/// The random stream for `purpose` in `epoch`: seeded with `seed + epoch` as
/// OpenCLIP seeds its per-epoch shuffles, on a stream chosen by the purpose
/// and `stream_index` (a reader's global index where readers must differ, 0
/// where every reader must draw the same numbers).
pub(crate) fn epoch_rng(
    seed: u64,
    epoch: u64,
    purpose: RngPurpose,
    stream_index: u64,
) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(epoch));
    rng.set_stream(((purpose as u64) << 48) | stream_index);
    rng
}
