//! The batcher: the end of the loading path. It puts the augmented samples
//! back in the order of their places (the augmenters finish them out of
//! order), gathers them into fixed-size batches of contiguous tensors ready
//! to copy to the device (images `[B, 3, H, W]` f32, texts
//! `[B, context_length]` i64, in pinned memory when a GPU will take them),
//! ends each epoch with a mark after its last batch, and, seeing the whole
//! stream in one place, applies the bad-data policy ([`BadDataTally`]). Its
//! running totals go to a [`LoadingLedger`] that the program launching the
//! graph can read.
//!
//! An epoch has `epoch_batches` batches when that is set: the samples read
//! after its last batch are spares that would have stood in for samples
//! that failed to decode, and are left; an epoch that ends short is
//! counted and logged (on several ranks the step executor stops it).
//!
//! Waiting for a place holds the samples behind it; the queues before the
//! batcher bound how many those are. A place still missing when more than
//! `reorder_window` samples wait behind it was lost with a failed worker:
//! it counts as bad data and the stream goes on.
//!
//! Also here: [`BatchSink`], which drops batches, for running the loading
//! path alone (`clipflow bench data`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use crate::augmenter::AugmentedSample;
use crate::bad_data::{
    BadDataCounts, BadDataKind, BadDataPolicy, BadDataTally, BadSample, SampleOrSkip,
};
use crate::load_stream::{LoadItem, Place};
use crate::runtime::{Emitter, Stage, WorkerInfo};
use crate::topology::Settings;

/// One batch, ready for the device.
#[derive(Debug)]
pub struct Batch {
    /// `[B, 3, H, W]` f32, contiguous.
    pub images: Tensor,
    /// `[B, context_length]` i64, contiguous.
    pub texts: Tensor,
    /// The key of each row's sample.
    pub keys: Vec<String>,
    /// The place after the batch's last row (its epoch is the batch's): a
    /// stream resumed after this batch starts there.
    pub next_place: Place,
}

/// What the batcher sends: batches, and the end of each epoch after its
/// last batch.
#[derive(Debug)]
pub enum BatchItem {
    Batch(Batch),
    EpochEnd { epoch: u64 },
}

/// How the batcher cuts and places batches, and what bad data it tolerates.
#[derive(Debug, Clone, PartialEq)]
pub struct BatcherConfig {
    pub batch_size: usize,
    /// Drop the last batch of the stream when it is not full (training does,
    /// as OpenCLIP's loader does).
    pub drop_last: bool,
    /// Allocate batches in page-locked memory, for fast copies to a GPU.
    pub pin_memory: bool,
    pub bad_data: BadDataPolicy,
    /// The epoch the stream starts with.
    pub first_epoch: u64,
    /// The place in the first epoch it starts at (a run resumed inside an
    /// epoch).
    pub first_place: u64,
    /// Samples that may wait behind a missing place before it counts as
    /// lost.
    pub reorder_window: usize,
    /// Batches in each epoch (the training loader's count): the samples
    /// after the last are spares the reader read ahead and are left. `None`
    /// cuts every sample of an epoch into batches.
    pub epoch_batches: Option<u64>,
    /// Batches of the first epoch sent before `first_place`.
    pub first_batch: u64,
}

/// Samples that may wait behind a missing place by default: well above what
/// the queues before the batcher hold.
pub const DEFAULT_REORDER_WINDOW: usize = 4096;

impl BatcherConfig {
    /// Reads the settings of a `batcher` component: `batch_size`,
    /// `drop_last` (default true), `pin_memory` (default false),
    /// `max_bad_fraction`, `bad_data_min_items`, `log_first_skips`,
    /// `first_epoch`, `first_place` (default 0), `reorder_window`,
    /// `epoch_batches` (0 or absent: every sample), `first_batch` (default 0).
    pub fn from_settings(settings: &Settings) -> Result<Self> {
        let defaults = BadDataPolicy::default();
        let config = BatcherConfig {
            batch_size: settings.required_u64("batch_size")? as usize,
            drop_last: settings.bool("drop_last")?.unwrap_or(true),
            pin_memory: settings.bool("pin_memory")?.unwrap_or(false),
            bad_data: BadDataPolicy {
                max_fraction: settings
                    .f64_in("max_bad_fraction", 0.0..=1.0)?
                    .unwrap_or(defaults.max_fraction),
                min_items: settings
                    .u64("bad_data_min_items")?
                    .unwrap_or(defaults.min_items),
                log_first: settings
                    .u64("log_first_skips")?
                    .unwrap_or(defaults.log_first),
            },
            first_epoch: settings.u64("first_epoch")?.unwrap_or(0),
            first_place: settings.u64("first_place")?.unwrap_or(0),
            reorder_window: settings
                .u64("reorder_window")?
                .map_or(DEFAULT_REORDER_WINDOW, |n| n as usize),
            epoch_batches: settings.u64("epoch_batches")?.filter(|&n| n > 0),
            first_batch: settings.u64("first_batch")?.unwrap_or(0),
        };
        anyhow::ensure!(
            config.batch_size > 0,
            "setting 'batch_size': must be at least 1"
        );
        Ok(config)
    }
}

/// What the loading path has delivered so far; readable while and after
/// the graph runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadingTotals {
    pub batches: u64,
    /// Samples delivered in batches.
    pub samples: u64,
    /// Samples of a last, partial batch that was dropped.
    pub dropped_samples: u64,
    /// Epochs that ended with fewer batches than `epoch_batches` (more
    /// samples failed to decode than the reader read spares).
    pub short_epochs: u64,
    pub skipped: BadDataCounts,
}

/// Shared record of a batcher's [`LoadingTotals`].
#[derive(Debug, Default)]
pub struct LoadingLedger(Mutex<LoadingTotals>);

impl LoadingLedger {
    pub fn totals(&self) -> LoadingTotals {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LoadingTotals> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The batch being filled.
struct PartialBatch {
    images: BatchImages,
    tokens: Vec<i64>,
    keys: Vec<String>,
}

/// The image tensor of a batch being filled, row by row.
struct BatchImages {
    /// `[batch_size, 3, height, width]` f32, contiguous, in CPU memory, and
    /// referenced by nothing else until the batch is sealed.
    tensor: Tensor,
    values_per_image: usize,
}

impl BatchImages {
    fn new(batch_size: usize, image_size: (usize, usize), pin_memory: bool) -> Result<Self> {
        let (height, width) = image_size;
        let shape = [batch_size as i64, 3, height as i64, width as i64];
        let tensor = Tensor::f_empty(shape, (Kind::Float, Device::Cpu))?;
        let tensor = if pin_memory {
            tensor.f_pin_memory(Device::Cuda(0))?
        } else {
            advise_huge_pages(&tensor);
            tensor
        };
        Ok(BatchImages {
            tensor,
            values_per_image: 3 * height * width,
        })
    }

    /// Writes one sample's normalised image into row `row`.
    fn write(&mut self, row: usize, sample: &AugmentedSample) {
        let per_image = self.values_per_image;
        let all = self.values_mut();
        sample.write_image(&mut all[row * per_image..(row + 1) * per_image]);
    }

    fn values_mut(&mut self) -> &mut [f32] {
        let len = self.tensor.numel();
        // SAFETY: `tensor` was allocated by `new` as a contiguous f32 CPU
        // tensor of `len` elements and is not shared until `seal` moves it
        // out, so its storage is `len` initialised-or-not f32 slots that
        // only this `&mut self` borrow can reach.
        unsafe { std::slice::from_raw_parts_mut(self.tensor.data_ptr() as *mut f32, len) }
    }
}

/// Asks the kernel to back a fresh, not yet written CPU tensor with
/// transparent huge pages where it allows them (the common `madvise` mode):
/// a batch (154 MB for 256 images of 224 x 224) is written once, and with
/// 2 MB pages that costs about 75 page faults instead of about 37,000.
/// Only a hint: where the kernel declines, the tensor uses ordinary pages.
fn advise_huge_pages(tensor: &Tensor) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = tensor.data_ptr() as usize;
        let end = start + tensor.numel() * tensor.kind().elt_size_in_bytes();
        // madvise takes whole pages: the ones inside the tensor.
        let first_page = start.next_multiple_of(PAGE);
        let last_page = end / PAGE * PAGE;
        if last_page > first_page {
            // SAFETY: the range lies inside the tensor's allocation, which
            // `tensor` keeps alive; MADV_HUGEPAGE changes how the kernel
            // backs the pages, not their contents or protection.
            unsafe {
                libc::madvise(
                    first_page as *mut libc::c_void,
                    last_page - first_page,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
    }
}

/// Cuts the sample stream into batches. It holds a partly filled batch and
/// the samples waiting for their turn, so it runs as one worker and is
/// never restarted.
pub struct Batcher {
    config: BatcherConfig,
    ledger: Arc<LoadingLedger>,
    tally: BadDataTally,
    current: Option<PartialBatch>,
    /// The next place to batch.
    cursor: Place,
    /// Items that arrived before their turn.
    waiting: BTreeMap<Place, SampleOrSkip<AugmentedSample>>,
    /// The place count of each epoch whose end mark arrived.
    epoch_places: BTreeMap<u64, u64>,
    /// Batches sent in the cursor's epoch.
    epoch_batches_sent: u64,
}

impl Batcher {
    /// A function that builds the batcher (one worker; it refuses more,
    /// since parallel batchers would each hold a partial batch).
    pub fn maker(
        config: BatcherConfig,
        ledger: Arc<LoadingLedger>,
    ) -> impl Fn(WorkerInfo) -> Result<Batcher> {
        move |worker| {
            anyhow::ensure!(
                worker.count == 1,
                "a batcher runs as one worker (parallelism = 1), not {}",
                worker.count
            );
            Ok(Batcher {
                tally: BadDataTally::new(config.bad_data),
                config: config.clone(),
                ledger: Arc::clone(&ledger),
                current: None,
                cursor: Place {
                    epoch: config.first_epoch,
                    index: config.first_place,
                },
                waiting: BTreeMap::new(),
                epoch_places: BTreeMap::new(),
                epoch_batches_sent: config.first_batch,
            })
        }
    }

    fn add(&mut self, sample: AugmentedSample) -> Result<Option<Batch>> {
        let batch_size = self.config.batch_size;
        if self.current.is_none() {
            self.current = Some(PartialBatch {
                images: BatchImages::new(batch_size, sample.image_size(), self.config.pin_memory)?,
                tokens: Vec::with_capacity(batch_size * sample.tokens.len()),
                keys: Vec::with_capacity(batch_size),
            });
        }
        let current = self.current.as_mut().expect("a batch is being filled");
        anyhow::ensure!(
            sample.image_values() == current.images.values_per_image,
            "sample {}: its image has {} values where the batch's first had {}; \
             every image of a batch must have the same size",
            sample.key,
            sample.image_values(),
            current.images.values_per_image
        );
        current.images.write(current.keys.len(), &sample);
        current.tokens.extend_from_slice(&sample.tokens);
        current.keys.push(sample.key);
        if current.keys.len() < batch_size {
            return Ok(None);
        }
        let full = self.current.take().expect("a batch is being filled");
        let next_place = Place {
            index: self.cursor.index + 1,
            ..self.cursor
        };
        self.seal(full, next_place).map(Some)
    }

    /// The finished batch (cut to its rows, for a last partial one), whose
    /// stream goes on at `next_place`.
    fn seal(&self, batch: PartialBatch, next_place: Place) -> Result<Batch> {
        let rows = batch.keys.len() as i64;
        let images = if rows < self.config.batch_size as i64 {
            batch.images.tensor.f_narrow(0, 0, rows)?
        } else {
            batch.images.tensor
        };
        let context_length = batch.tokens.len() as i64 / rows.max(1);
        let texts = Tensor::f_from_slice(&batch.tokens)?.f_view([rows, context_length])?;
        let texts = if self.config.pin_memory {
            texts.f_pin_memory(Device::Cuda(0))?
        } else {
            texts
        };
        let mut ledger = self.ledger.lock();
        ledger.batches += 1;
        ledger.samples += rows as u64;
        Ok(Batch {
            images,
            texts,
            keys: batch.keys,
            next_place,
        })
    }

    /// Batches every item whose turn has come, in place order, and ends
    /// each epoch whose items are all batched. With `upstream_done`, no
    /// more items will come, so every missing place was lost.
    fn batch_in_order(&mut self, upstream_done: bool, out: &mut Emitter<BatchItem>) -> Result<()> {
        loop {
            if self.epoch_places.get(&self.cursor.epoch) == Some(&self.cursor.index) {
                self.end_epoch(out)?;
                continue;
            }
            let item = match self.waiting.remove(&self.cursor) {
                Some(item) => item,
                None if upstream_done && self.waiting.is_empty() => return Ok(()),
                None if upstream_done || self.waiting.len() > self.config.reorder_window => {
                    SampleOrSkip::Skipped(BadSample {
                        kind: BadDataKind::LostWithFailedWorker,
                        origin: format!("epoch {}", self.cursor.epoch),
                        key: Some(format!("place {}", self.cursor.index)),
                        detail: "the worker holding it failed".into(),
                    })
                }
                None => return Ok(()),
            };
            self.take(item, out)?;
            self.cursor.index += 1;
        }
    }

    /// Batches the item at the cursor.
    fn take(
        &mut self,
        item: SampleOrSkip<AugmentedSample>,
        out: &mut Emitter<BatchItem>,
    ) -> Result<()> {
        let epoch_full = self
            .config
            .epoch_batches
            .is_some_and(|batches| self.epoch_batches_sent >= batches);
        if epoch_full {
            // A spare the epoch did not need.
            return Ok(());
        }
        match item {
            SampleOrSkip::Sample(sample) => {
                self.tally.record_sample();
                if let Some(batch) = self.add(sample)? {
                    self.epoch_batches_sent += 1;
                    out.emit(BatchItem::Batch(batch))?;
                }
            }
            SampleOrSkip::Skipped(bad) => {
                let verdict = self.tally.record_skip(&bad);
                self.ledger.lock().skipped = self.tally.counts().clone();
                verdict?;
            }
            SampleOrSkip::Filtered => {}
        }
        Ok(())
    }

    /// Judges the bad data so far, then sends or drops the last, partial
    /// batch (as `drop_last` says).
    fn finish_stretch(&mut self, out: &mut Emitter<BatchItem>) -> Result<()> {
        self.tally.check()?;
        if let Some(last) = self.current.take() {
            if self.config.drop_last {
                self.ledger.lock().dropped_samples += last.keys.len() as u64;
            } else {
                out.emit(BatchItem::Batch(self.seal(last, self.cursor)?))?;
            }
        }
        Ok(())
    }

    /// Ends the cursor's epoch (its last batch, then its end) and moves on
    /// to the next epoch.
    fn end_epoch(&mut self, out: &mut Emitter<BatchItem>) -> Result<()> {
        self.finish_stretch(out)?;
        let epoch = self.cursor.epoch;
        if let Some(wanted) = self.config.epoch_batches {
            if self.epoch_batches_sent < wanted {
                tracing::warn!(
                    "epoch {epoch} has {} of its {wanted} batches: more of its samples failed \
                     to decode than the reader read spares to replace them (setting \
                     'spare_samples' of the shard reader)",
                    self.epoch_batches_sent
                );
                self.ledger.lock().short_epochs += 1;
            }
        }
        self.epoch_batches_sent = 0;
        self.epoch_places.remove(&epoch);
        out.emit(BatchItem::EpochEnd { epoch })?;
        self.cursor = Place {
            epoch: epoch + 1,
            index: 0,
        };
        Ok(())
    }
}

impl Stage for Batcher {
    type In = LoadItem<AugmentedSample>;
    type Out = BatchItem;

    fn process(&mut self, item: Self::In, out: &mut Emitter<BatchItem>) -> Result<()> {
        match item {
            // A place already passed was counted as lost; it came too late.
            LoadItem::At(place, _) if place < self.cursor => return Ok(()),
            LoadItem::At(place, item) => {
                self.waiting.insert(place, item);
            }
            LoadItem::EpochEnd { epoch, places } => {
                self.epoch_places.insert(epoch, places);
            }
        }
        self.batch_in_order(false, out)
    }

    fn finish(&mut self, out: &mut Emitter<BatchItem>) -> Result<()> {
        self.batch_in_order(true, out)?;
        // What is left belongs to a stream that ended without its epoch's
        // mark (a reader that stopped early).
        self.finish_stretch(out)
    }
}

/// Drops the batches it receives: the end of the loading path when it runs
/// alone. The runtime's counters say how many it took.
#[derive(Debug, Clone, Default)]
pub struct BatchSink;

impl Stage for BatchSink {
    type In = BatchItem;
    type Out = ();

    fn process(&mut self, _batch: BatchItem, _out: &mut Emitter<()>) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clipflow_core::transform::{Normalization, RgbImage};

    use super::*;

    fn sample(key: &str, level: u8, normalization: &Arc<Normalization>) -> AugmentedSample {
        let pixels = (0..4 * 2 * 3)
            .map(|i| level.wrapping_add(i as u8))
            .collect();
        AugmentedSample {
            key: key.into(),
            pixels: RgbImage::from_raw(4, 2, pixels).unwrap(),
            normalization: Arc::clone(normalization),
            tokens: vec![i64::from(level); 5],
        }
    }

    #[test]
    fn each_row_is_its_sample_normalised() {
        let config = BatcherConfig {
            batch_size: 3,
            drop_last: true,
            pin_memory: false,
            bad_data: BadDataPolicy::default(),
            first_epoch: 0,
            first_place: 0,
            reorder_window: DEFAULT_REORDER_WINDOW,
            epoch_batches: None,
            first_batch: 0,
        };
        let ledger = Arc::new(LoadingLedger::default());
        let mut batcher =
            Batcher::maker(config, Arc::clone(&ledger))(WorkerInfo { index: 0, count: 1 }).unwrap();
        let normalization = Arc::new(Normalization::new([0.5, 0.4, 0.3], [0.2, 0.25, 0.3]));
        let samples: Vec<_> = (0..6)
            .map(|i| sample(&format!("k{i}"), 40 * i as u8, &normalization))
            .collect();

        let mut batches = Vec::new();
        for s in samples.iter().cloned() {
            batches.extend(batcher.add(s).unwrap());
        }
        assert_eq!(batches.len(), 2);
        for (batch, rows) in batches.iter().zip(samples.chunks(3)) {
            assert_eq!(batch.images.size(), [3, 3, 2, 4]);
            for (row, s) in rows.iter().enumerate() {
                let expected = Tensor::from_slice(&s.image()).view([3, 2, 4]);
                assert!(batch.images.get(row as i64).equal(&expected), "row {row}");
                assert_eq!(batch.keys[row], s.key);
            }
            let texts: Vec<i64> = Vec::try_from(batch.texts.flatten(0, -1)).unwrap();
            let tokens: Vec<i64> = rows.iter().flat_map(|s| s.tokens.clone()).collect();
            assert_eq!(texts, tokens);
        }

        assert_eq!(ledger.totals().batches, 2);
    }
}
