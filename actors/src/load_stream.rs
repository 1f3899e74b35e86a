//! What travels down the loading path, from the shard reader to the
//! batcher: each sample (or the record of one that was dropped) at its
//! [`Place`] in the run's stream, and a mark at the end of each epoch.
//!
//! The shard reader numbers the items of an epoch 0, 1, 2... in the order
//! its shuffle puts them; decoders and augmenters work on them in parallel
//! and out of order, keeping each item's place; the batcher puts them back
//! in place order before cutting batches. So which sample lands in which
//! batch, and in which row, follows from the data, `--seed` and the epoch,
//! never from how many workers there are or which was free; and a place is
//! also what a mid-epoch checkpoint records to resume the stream exactly.

use crate::bad_data::SampleOrSkip;

/// Where an item sits in the stream of one rank: its epoch and its number
/// among that epoch's items (samples and skips alike, from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Place {
    pub epoch: u64,
    pub index: u64,
}

/// One item of the loading path.
#[derive(Debug)]
pub enum LoadItem<T> {
    /// The item at `place`: a sample, or what replaced it when it was bad.
    At(Place, SampleOrSkip<T>),
    /// Every item of `epoch` has been sent: its places are `0..places`.
    EpochEnd { epoch: u64, places: u64 },
}

impl<T> LoadItem<T> {
    /// The same item with its sample turned into another by `work` (which
    /// may also turn it into a skip, or filter it out); everything else
    /// passes unchanged. A stage that leaves a sample out sends
    /// [`SampleOrSkip::Filtered`] at its place rather than nothing, so that
    /// the batcher does not wait for it.
    pub fn map_sample<U>(self, work: impl FnOnce(Place, T) -> SampleOrSkip<U>) -> LoadItem<U> {
        match self {
            LoadItem::At(place, SampleOrSkip::Sample(sample)) => {
                LoadItem::At(place, work(place, sample))
            }
            LoadItem::At(place, SampleOrSkip::Skipped(bad)) => {
                LoadItem::At(place, SampleOrSkip::Skipped(bad))
            }
            LoadItem::At(place, SampleOrSkip::Filtered) => {
                LoadItem::At(place, SampleOrSkip::Filtered)
            }
            LoadItem::EpochEnd { epoch, places } => LoadItem::EpochEnd { epoch, places },
        }
    }
}
