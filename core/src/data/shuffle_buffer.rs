//! The buffered shuffle webdataset applies to streams too long to shuffle
//! whole: items fill a buffer, and once it holds `initial` items each step
//! emits a random buffered item. OpenCLIP uses it for shards (2000 / 500,
//! drawn from Python's `random.Random(seed + epoch)`, which
//! [`PythonRandom`] reproduces) and for samples (5000 / 1000); clipflow
//! seeds the sample shuffle from `--seed`, the epoch and the reader
//! (OpenCLIP seeds it from the clock).

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::python_random::PythonRandom;
use super::{epoch_rng, ReaderSlot, RngPurpose};

/// Where a shuffle buffer's draws come from: an index below `n`.
pub trait IndexDraw {
    fn below(&mut self, n: usize) -> usize;
}

impl IndexDraw for ChaCha8Rng {
    fn below(&mut self, n: usize) -> usize {
        self.random_range(0..n)
    }
}

impl IndexDraw for PythonRandom {
    /// `rng.randint(0, n - 1)`, as webdataset's `pick` draws.
    fn below(&mut self, n: usize) -> usize {
        PythonRandom::below(self, n)
    }
}

/// Buffer size of OpenCLIP's per-epoch shard shuffle.
pub const SHARD_SHUFFLE_SIZE: usize = 2000;
/// Shards buffered before the shard shuffle emits its first one.
pub const SHARD_SHUFFLE_INITIAL: usize = 500;
/// Buffer size of OpenCLIP's training sample shuffle.
pub const SAMPLE_SHUFFLE_SIZE: usize = 5000;
/// Samples buffered before the sample shuffle emits its first one.
pub const SAMPLE_SHUFFLE_INITIAL: usize = 1000;

/// Shuffles a stream with a bounded buffer. While the buffer is below its
/// size, each step takes two items from the source (filling it quickly);
/// once it holds `initial` items, each step emits a uniformly chosen
/// buffered item; when the source ends, the rest drains in random order.
pub struct ShuffleBuffer<I: Iterator, R = ChaCha8Rng> {
    source: I,
    source_done: bool,
    buffer: Vec<I::Item>,
    capacity: usize,
    initial: usize,
    rng: R,
}

impl<I: Iterator, R: IndexDraw> ShuffleBuffer<I, R> {
    pub fn new(source: I, capacity: usize, initial: usize, rng: R) -> Self {
        let capacity = capacity.max(1);
        ShuffleBuffer {
            source,
            source_done: false,
            buffer: Vec::with_capacity(capacity.min(SAMPLE_SHUFFLE_SIZE)),
            capacity,
            initial: initial.min(capacity),
            rng,
        }
    }

    fn pull(&mut self) -> Option<I::Item> {
        if self.source_done {
            return None;
        }
        let item = self.source.next();
        self.source_done = item.is_none();
        item
    }

    fn take_random(&mut self) -> Option<I::Item> {
        if self.buffer.is_empty() {
            return None;
        }
        let index = self.rng.below(self.buffer.len());
        Some(self.buffer.swap_remove(index))
    }
}

/// The training sample shuffle of one reader in `epoch`, with OpenCLIP's
/// sizes, seeded from `seed`, the epoch and the reader's slot.
pub fn shuffle_samples<I: Iterator>(
    samples: I,
    seed: u64,
    epoch: u64,
    slot: ReaderSlot,
) -> ShuffleBuffer<I> {
    let rng = epoch_rng(
        seed,
        epoch,
        RngPurpose::SampleShuffle,
        slot.global_index() as u64,
    );
    ShuffleBuffer::new(samples, SAMPLE_SHUFFLE_SIZE, SAMPLE_SHUFFLE_INITIAL, rng)
}

impl<I: Iterator, R: IndexDraw> Iterator for ShuffleBuffer<I, R> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        while let Some(item) = self.pull() {
            self.buffer.push(item);
            if self.buffer.len() < self.capacity {
                if let Some(extra) = self.pull() {
                    self.buffer.push(extra);
                }
            }
            if self.buffer.len() >= self.initial {
                return self.take_random();
            }
        }
        self.take_random()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn emits_every_item_once() {
        let rng = ChaCha8Rng::seed_from_u64(5);
        let mut out: Vec<u32> = ShuffleBuffer::new(0..1000u32, 100, 10, rng).collect();
        assert_ne!(out, (0..1000).collect::<Vec<_>>());
        out.sort_unstable();
        assert_eq!(out, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn holds_at_most_capacity() {
        let rng = ChaCha8Rng::seed_from_u64(5);
        let mut shuffle = ShuffleBuffer::new(0..10_000u32, 64, 8, rng);
        while shuffle.next().is_some() {
            assert!(shuffle.buffer.len() <= 64);
        }
    }
}
