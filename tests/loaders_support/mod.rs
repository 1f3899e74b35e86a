//! Shared by the loaders_* tests: test data (shards of real photographs from
//! scripts/make_test_shards.py, damaged copies, CSV tables) and running the
//! default loading topology, topologies/train-data.toml, with a sink that
//! keeps what it receives.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use clipflow_actors::batcher::{BatchItem, LoadingLedger, LoadingTotals};
use clipflow_actors::kinds::{register_batcher, standard_registry};
use clipflow_actors::runtime::{Emitter, RunError, Stage};
use clipflow_actors::topology::{FlagValues, Restarts, Topology};
use tch::{Kind, Tensor};

use crate::common;

/// Writes `shards` shards of `samples_per_shard` photographs into `dir`.
pub fn make_test_shards(dir: &Path, shards: usize, samples_per_shard: usize) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make_test_shards.py");
    let status = Command::new(common::oracle_python())
        .arg(script)
        .arg(dir)
        .args(["--shards", &shards.to_string()])
        .args(["--samples-per-shard", &samples_per_shard.to_string()])
        .status()
        .expect("running scripts/make_test_shards.py");
    assert!(status.success(), "make_test_shards.py failed");
}

/// The topology file the tests run.
pub fn train_data_topology() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies/train-data.toml")
}

/// What the test sink saw of one batch.
#[derive(Debug)]
pub struct SeenBatch {
    pub images: Tensor,
    pub texts: Tensor,
    pub keys: Vec<String>,
}

/// A sink that keeps every batch.
struct KeepBatches(Arc<Mutex<Vec<SeenBatch>>>);

impl Stage for KeepBatches {
    type In = BatchItem;
    type Out = ();

    fn process(&mut self, item: BatchItem, _out: &mut Emitter<()>) -> anyhow::Result<()> {
        if let BatchItem::Batch(batch) = item {
            self.0.lock().unwrap().push(SeenBatch {
                images: batch.images,
                texts: batch.texts,
                keys: batch.keys,
            });
        }
        Ok(())
    }
}

/// What a run of the loading topology produced.
pub struct LoadingRun {
    pub batches: Vec<SeenBatch>,
    pub totals: LoadingTotals,
}

impl LoadingRun {
    /// Every key of every batch, in order.
    pub fn keys(&self) -> Vec<String> {
        self.batches.iter().flat_map(|b| b.keys.clone()).collect()
    }
}

/// Runs topologies/train-data.toml with `flags` (name, value) and returns
/// the batches that reached its sink, or the run's error.
pub fn run_train_data(flags: &[(&str, &str)]) -> Result<LoadingRun, RunError> {
    let mut values = FlagValues::new();
    for (name, value) in flags {
        values.set(name, value);
    }
    let ledger = Arc::new(LoadingLedger::default());
    let kept = Arc::new(Mutex::new(Vec::new()));
    let mut registry = standard_registry();
    register_batcher(&mut registry, Arc::clone(&ledger));
    let sink_batches = Arc::clone(&kept);
    registry.register_stage(
        "batch-sink",
        "keeps batches for the test",
        Restarts::Forbidden,
        move |_settings| {
            let batches = Arc::clone(&sink_batches);
            Ok(move |_worker| Ok(KeepBatches(Arc::clone(&batches))))
        },
    );
    let topology = Topology::load(&train_data_topology(), &values, &registry)
        .unwrap_or_else(|errors| panic!("{errors}"));
    let graph = topology
        .into_graph()
        .unwrap_or_else(|errors| panic!("{errors}"));
    graph.run()?;
    let batches = std::mem::take(&mut *kept.lock().unwrap());
    Ok(LoadingRun {
        batches,
        totals: ledger.totals(),
    })
}

/// Asserts the layout every batch must have: contiguous f32 images of
/// `[rows, 3, side, side]` and i64 texts of `[rows, 77]`.
pub fn assert_batch_layout(batch: &SeenBatch, rows: i64, side: i64) {
    assert_eq!(batch.images.size(), [rows, 3, side, side]);
    assert_eq!(batch.images.kind(), Kind::Float);
    assert!(batch.images.is_contiguous());
    assert_eq!(batch.texts.size(), [rows, 77]);
    assert_eq!(batch.texts.kind(), Kind::Int64);
    assert!(batch.texts.is_contiguous());
    assert_eq!(batch.keys.len() as i64, rows);
}

/// Runs `clipflow bench data` with `args`; returns (success, stdout, stderr).
pub fn run_bench(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(common::clipflow_bin())
        .args(["bench", "data"])
        .args(args)
        .output()
        .expect("running clipflow bench data");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The one JSON line `clipflow bench data` ends with.
pub fn bench_summary(stdout: &str) -> serde_json::Value {
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one JSON line, got {stdout:?}");
    serde_json::from_str(lines[0]).expect("the summary is JSON")
}
