//! The default loading topology (topologies/train-data.toml: shard reader ->
//! decoder -> augmenter -> batcher -> sink) on each kind of data: batches
//! have the model's shapes and dtypes, a one-pass webdataset epoch delivers
//! every sample exactly once across reader workers (also when there are
//! fewer shards than workers, which split the samples), resampled shards
//! fill the epoch with the same draws for a seed, a reader whose shards
//! hold less than its share reads them again, and the CSV and synthetic
//! paths work. `clipflow bench data` ends with its JSON line.

mod common;
mod loaders_support;

use std::collections::BTreeSet;

use clipflow_core::transform::{OPENAI_DATASET_MEAN, OPENAI_DATASET_STD};
use loaders_support::{
    assert_batch_layout, bench_summary, make_test_shards, run_bench, run_train_data,
};
use tch::Tensor;

/// The CLIP tokenizer's start- and end-of-text ids.
const START_OF_TEXT: i64 = 49406;
const END_OF_TEXT: i64 = 49407;

#[test]
fn webdataset_epoch_delivers_each_sample_once_in_model_shaped_batches() {
    let dir = tempfile::tempdir().unwrap();
    make_test_shards(dir.path(), 4, 10);
    let pattern = format!("{}/shard-{{00000..00003}}.tar", dir.path().display());
    let run = run_train_data(&[
        ("train-data", &pattern),
        ("batch-size", "5"),
        ("workers", "2"),
        ("model", "ViT-B-32"),
        ("seed", "3"),
    ])
    .unwrap();

    // 40 samples (sizes.json) in batches of 5: eight batches, four per
    // reader, which is one pass over each reader's two shards.
    assert_eq!(run.batches.len(), 8);
    for batch in &run.batches {
        assert_batch_layout(batch, 5, 224);
        // Normalised pixels of photographs: finite, within (0 - mean) / std
        // and (1 - mean) / std, and not all equal.
        assert!(batch.images.isfinite().all().int64_value(&[]) == 1);
        let normalised =
            |pixel: f64, c: usize| (pixel - OPENAI_DATASET_MEAN[c]) / OPENAI_DATASET_STD[c];
        let low = (0..3).map(|c| normalised(0.0, c)).fold(f64::MAX, f64::min) - 1e-4;
        let high = (0..3).map(|c| normalised(1.0, c)).fold(f64::MIN, f64::max) + 1e-4;
        assert!(batch.images.min().double_value(&[]) >= low);
        assert!(batch.images.max().double_value(&[]) <= high);
        assert!(batch.images.std(false).double_value(&[]) > 0.1);
        for row in 0..5 {
            let tokens = Vec::<i64>::try_from(batch.texts.get(row)).unwrap();
            assert_eq!(tokens[0], START_OF_TEXT);
            assert!(tokens.contains(&END_OF_TEXT));
        }
    }

    let keys = run.keys();
    let unique: BTreeSet<&String> = keys.iter().collect();
    let expected: BTreeSet<String> = (0..40).map(|i| format!("{i:09}")).collect();
    assert_eq!(unique.len(), keys.len(), "a sample was delivered twice");
    assert_eq!(unique, expected.iter().collect(), "samples went missing");
    assert_ne!(
        keys,
        expected.into_iter().collect::<Vec<_>>(),
        "the epoch was not shuffled"
    );
    assert_eq!(run.totals.samples, 40);
    assert_eq!(run.totals.skipped.total(), 0);
}

#[test]
fn one_shard_and_three_workers_split_its_samples() {
    let dir = tempfile::tempdir().unwrap();
    make_test_shards(dir.path(), 1, 24);
    let pattern = format!("{}/shard-00000.tar", dir.path().display());
    let run = run_train_data(&[
        ("train-data", &pattern),
        ("batch-size", "4"),
        ("workers", "3"),
        ("model", "RN50"),
    ])
    .unwrap();
    // OpenCLIP refuses fewer shards than workers; here each of the three
    // readers reads the shard and keeps every third sample: 24 samples in
    // six batches, each sample once.
    assert_eq!(run.batches.len(), 6);
    let keys = run.keys();
    let unique: BTreeSet<&String> = keys.iter().collect();
    assert_eq!(unique.len(), 24, "every sample once: {keys:?}");
    assert_eq!(keys.len(), 24);
    assert_eq!(run.totals.skipped.total(), 0);
}

#[test]
fn resampled_shards_fill_the_epoch_with_the_same_draws_for_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    make_test_shards(dir.path(), 2, 10);
    let pattern = format!("{}/shard-{{00000..00001}}.tar", dir.path().display());
    let run = |seed: &str| {
        run_train_data(&[
            ("train-data", &pattern),
            ("dataset-resampled", "true"),
            ("train-num-samples", "20"),
            ("batch-size", "5"),
            ("workers", "2"),
            ("model", "RN50"),
            ("seed", seed),
        ])
        .unwrap()
    };
    let first = run("3");
    // 20 samples in batches of 5 on two readers: two batches each, drawn
    // from shards picked with replacement, so any of the 20 keys, and the
    // same draws again for the same seed.
    assert_eq!(first.batches.len(), 4);
    let expected: BTreeSet<String> = (0..20).map(|i| format!("{i:09}")).collect();
    let mut keys = first.keys();
    assert!(keys.iter().all(|key| expected.contains(key)), "{keys:?}");
    keys.sort();
    let mut again = run("3").keys();
    again.sort();
    assert_eq!(keys, again, "the same seed drew other samples");
}

#[test]
fn a_reader_short_of_its_share_walks_its_shards_again() {
    let dir = tempfile::tempdir().unwrap();
    make_test_shards(dir.path(), 2, 7);
    let pattern = format!("{}/shard-{{00000..00001}}.tar", dir.path().display());
    let run = run_train_data(&[
        ("train-data", &pattern),
        ("batch-size", "4"),
        ("workers", "1"),
        ("model", "RN50"),
    ])
    .unwrap();
    // 14 samples make ceil(14 / 4) = 4 batches, OpenCLIP's epoch: the
    // reader reads its shards a second time for the last 2 samples, as
    // webdataset's with_epoch does, and nothing is dropped.
    assert_eq!(run.batches.len(), 4);
    assert_eq!(run.totals.samples, 16);
    assert_eq!(run.totals.dropped_samples, 0);
    let keys = run.keys();
    let unique: BTreeSet<&String> = keys.iter().collect();
    assert_eq!(unique.len(), 14, "every sample, and only 2 of them twice");
}

#[test]
fn csv_rows_become_batches_and_a_missing_image_file_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    make_test_shards(dir.path(), 1, 6);
    // Unpack the shard's images and write a tab-separated table naming
    // them, plus one row naming a file that does not exist.
    let script = r#"
import os, sys, tarfile
folder = sys.argv[1]
rows = ["filepath\ttitle"]
with tarfile.open(os.path.join(folder, "shard-00000.tar")) as tar:
    for member in tar.getmembers():
        if member.name.endswith(".jpg"):
            path = os.path.join(folder, member.name)
            with open(path, "wb") as f:
                f.write(tar.extractfile(member).read())
            rows.append(f"{path}\ta caption for {member.name}")
rows.insert(3, f"{os.path.join(folder, 'missing.jpg')}\tno such file")
with open(os.path.join(folder, "train.csv"), "w") as f:
    f.write("\n".join(rows) + "\n")
"#;
    common::run_oracle(script, &[dir.path().to_str().unwrap()]);
    let csv = dir.path().join("train.csv");
    let run = run_train_data(&[
        ("train-data", csv.to_str().unwrap()),
        ("batch-size", "3"),
        ("workers", "2"),
        ("model", "RN50"),
    ])
    .unwrap();
    // 6 readable rows in batches of 3; the missing file is counted.
    assert_eq!(run.batches.len(), 2);
    for batch in &run.batches {
        assert_batch_layout(batch, 3, 224);
    }
    assert_eq!(run.totals.skipped.get("unreadable_image_file"), 1);
    assert_eq!(run.totals.skipped.total(), 1);
    let keys: BTreeSet<String> = run.keys().into_iter().collect();
    assert_eq!(keys.len(), 6);
}

#[test]
fn synthetic_data_gives_black_images_and_dummy_captions() {
    let run = run_train_data(&[
        ("dataset-type", "synthetic"),
        ("train-num-samples", "8"),
        ("batch-size", "4"),
        ("workers", "2"),
        ("model", "ViT-B-32"),
    ])
    .unwrap();
    assert_eq!(run.batches.len(), 2);
    let black: Vec<f64> = (0..3)
        .map(|c| (0.0 - OPENAI_DATASET_MEAN[c]) / OPENAI_DATASET_STD[c])
        .collect();
    for batch in &run.batches {
        assert_batch_layout(batch, 4, 224);
        let expected = Tensor::from_slice(&black)
            .to_kind(tch::Kind::Float)
            .view([1, 3, 1, 1])
            .expand([4, 3, 224, 224], false);
        // ToTensor + Normalize in f32: (0 - mean) / std rounds once per
        // operation, so 1e-6 (a few f32 ulps at these magnitudes) suffices.
        assert!(batch.images.allclose(&expected, 0.0, 1e-6, false));
        // "Dummy caption": start, two words, end, then padding.
        let tokens = Vec::<i64>::try_from(batch.texts.get(0)).unwrap();
        assert_eq!(tokens[0], START_OF_TEXT);
        assert_eq!(tokens[3], END_OF_TEXT);
        assert!(tokens[4..].iter().all(|&t| t == 0));
    }
}

#[test]
fn bench_data_prints_one_json_line() {
    let dir = tempfile::tempdir().unwrap();
    make_test_shards(dir.path(), 2, 8);
    let pattern = format!("{}/shard-{{00000..00001}}.tar", dir.path().display());
    let (ok, stdout, stderr) = run_bench(&[
        "--train-data",
        &pattern,
        "--batch-size",
        "4",
        "--workers",
        "2",
        "--model",
        "ViT-B-32",
    ]);
    assert!(ok, "bench failed: {stderr}");
    let summary = bench_summary(&stdout);
    assert_eq!(summary["images"], 16);
    assert_eq!(summary["batches"], 4);
    assert!(summary["seconds"].as_f64().unwrap() > 0.0);
    assert!(summary["images_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(summary["skipped"], serde_json::json!({}));
    assert!(summary["peak_memory_bytes"].as_u64().unwrap() > 1 << 20);
    // The per-stage table goes to stderr.
    assert!(stderr.contains("bottleneck"), "{stderr}");
}
