//! clipflow's loading actors in a program of its own, with a stage written
//! here: `caption-filter` keeps the samples whose caption holds a word and
//! drops the rest, between the decoder and the augmenter, so the batches
//! that reach the end hold only those samples.
//!
//!     cargo run --example caption_filter -- 'shards/shard-{00000..00003}.tar' dog
//!
//! It prints one JSON line: the samples dropped, the batches, and the keys
//! in them.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use clipflow_actors::bad_data::SampleOrSkip;
use clipflow_actors::batcher::BatchItem;
use clipflow_actors::decoder::DecodedSample;
use clipflow_actors::kinds::standard_registry;
use clipflow_actors::load_stream::LoadItem;
use clipflow_actors::runtime::{Emitter, Stage};
use clipflow_actors::topology::{FlagValues, Restarts, Topology};

/// Passes on the samples whose caption contains `word` (any case) and the
/// bad-data records; leaves the others out (marking their places as
/// filtered, so the batcher does not wait for them) and counts them.
#[derive(Clone)]
struct CaptionFilter {
    word: String,
    dropped: Arc<Mutex<u64>>,
}

impl Stage for CaptionFilter {
    type In = LoadItem<DecodedSample>;
    type Out = LoadItem<DecodedSample>;

    fn process(&mut self, item: Self::In, out: &mut Emitter<Self::Out>) -> Result<()> {
        let mut dropped = 0;
        let kept = item.map_sample(|_place, sample| {
            if sample.caption.to_lowercase().contains(&self.word) {
                SampleOrSkip::Sample(sample)
            } else {
                dropped += 1;
                SampleOrSkip::Filtered
            }
        });
        *self
            .dropped
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))? += dropped;
        out.emit(kept)?;
        Ok(())
    }
}

/// Keeps the keys of every batch.
struct KeepKeys(Arc<Mutex<Vec<Vec<String>>>>);

impl Stage for KeepKeys {
    type In = BatchItem;
    type Out = ();

    fn process(&mut self, item: BatchItem, _out: &mut Emitter<()>) -> Result<()> {
        if let BatchItem::Batch(batch) = item {
            self.0
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .push(batch.keys);
        }
        Ok(())
    }
}

/// The loading path of `topologies/train-data.toml` with the filter
/// linked in after the decoder.
const TOPOLOGY: &str = r#"
[flags]
train-data = ""
word = ""
workers = 2

[stages.shard-reader]
kind = "shard-reader"
data = "${train-data}"
dataset_type = "webdataset"
batch_size = 4
model = "RN50"

[stages.decoder]
kind = "decoder"
inputs = ["shard-reader"]
parallelism = "${workers}"

[stages.caption-filter]
kind = "caption-filter"
inputs = ["decoder"]
word = "${word}"

[stages.augmenter]
kind = "augmenter"
inputs = ["caption-filter"]
parallelism = "${workers}"
model = "RN50"

[stages.batcher]
kind = "batcher"
inputs = ["augmenter"]
batch_size = 4

[stages.keys]
kind = "keep-keys"
inputs = ["batcher"]
"#;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [shards, word] = args.as_slice() else {
        bail!("usage: caption_filter SHARDS WORD");
    };
    let dropped = Arc::new(Mutex::new(0u64));
    let batches = Arc::new(Mutex::new(Vec::new()));
    let mut registry = standard_registry();
    let filter_dropped = Arc::clone(&dropped);
    registry.register_stage(
        "caption-filter",
        "keeps the samples whose caption holds a word (setting: word)",
        Restarts::Allowed,
        move |settings| {
            let filter = CaptionFilter {
                word: settings
                    .non_empty_string("word")?
                    .context("setting 'word': give the word captions must hold")?
                    .to_lowercase(),
                dropped: Arc::clone(&filter_dropped),
            };
            Ok(move |_worker| Ok(filter.clone()))
        },
    );
    let kept_batches = Arc::clone(&batches);
    registry.register_stage(
        "keep-keys",
        "keeps the keys of every batch",
        Restarts::Forbidden,
        move |_settings| {
            let batches = Arc::clone(&kept_batches);
            Ok(move |_worker| Ok(KeepKeys(Arc::clone(&batches))))
        },
    );
    let mut flags = FlagValues::new();
    flags.set("train-data", shards);
    flags.set("word", word);
    let topology = Topology::parse(
        Path::new("caption_filter.toml"),
        TOPOLOGY,
        &flags,
        &registry,
    )?;
    topology.into_graph()?.run()?;

    let batches = batches.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let keys: Vec<&String> = batches.iter().flatten().collect();
    let dropped = *dropped.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    println!(
        "{}",
        serde_json::json!({
            "dropped": dropped,
            "batches": batches.len(),
            "keys": keys,
        })
    );
    Ok(())
}
