//! Bad data on the loading path: a corrupt JPEG, a member with no caption, a
//! truncated tar and an unreadable shard are skipped, counted per kind and
//! logged with their shard and key while the run goes on; more bad data than
//! `--max-bad-fraction` allows stops the run with a clear error; an image
//! above the pixel limit is refused as a decompression bomb. (A CSV row
//! naming a missing file is covered in loaders_pipeline.rs.)

mod common;
mod loaders_support;

use std::path::Path;

use clipflow_actors::bad_data::{BadDataKind, SampleOrSkip};
use clipflow_actors::decoder::Decoder;
use clipflow_core::data::{ImageData, Sample};
use loaders_support::{bench_summary, make_test_shards, run_bench};

/// Turns four 10-sample shards into the damaged dataset:
/// - shard 0 stays intact (10 samples);
/// - shard 1: sample 2's JPEG is garbage after its first bytes, and sample
///   5 has no txt member (8 good samples);
/// - shard 2 ends in the middle of sample 6's JPEG (samples 0..5 survive);
/// - shard 3 is deleted, so the pattern names a shard that cannot be read.
const DAMAGE_SCRIPT: &str = r#"
import io, os, sys, tarfile
folder = sys.argv[1]

def members(name):
    with tarfile.open(os.path.join(folder, name)) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]

def write(name, items):
    with tarfile.open(os.path.join(folder, name), "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in items:
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))

damaged = []
for member, data in members("shard-00001.tar"):
    if member.name == "000000012.jpg":
        data = data[:4] + b"this is not JPEG data" * 50
    if member.name == "000000015.txt":
        continue
    damaged.append((member, data))
write("shard-00001.tar", damaged)

path = os.path.join(folder, "shard-00002.tar")
with tarfile.open(path) as tar:
    jpg = tar.getmember("000000026.jpg")
    cut = jpg.offset_data + jpg.size // 2
with open(path, "rb") as f:
    data = f.read()
with open(path, "wb") as f:
    f.write(data[:cut])

os.remove(os.path.join(folder, "shard-00003.tar"))
"#;

fn damaged_dataset(dir: &Path) -> String {
    make_test_shards(dir, 4, 10);
    common::run_oracle(DAMAGE_SCRIPT, &[dir.to_str().unwrap()]);
    format!("{}/shard-{{00000..00003}}.tar", dir.display())
}

/// `clipflow bench data` on the damaged shards `pattern` with `extra`
/// flags, in batches of one, so that no sample is dropped with a partial
/// batch, on one reader. The shards hold 25 readable samples (24 images
/// and an undecodable one) of the 40 the epoch asks for, so the reader
/// walks them twice (as webdataset's `with_epoch` does), the second time
/// for 15 samples, which in this shard order meets every damaged shard
/// again before the intact one.
fn bench_damaged(pattern: &str, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec![
        "--train-data",
        pattern,
        "--train-num-samples",
        "40",
        "--batch-size",
        "1",
        "--workers",
        "1",
        "--model",
        "RN50",
    ];
    args.extend_from_slice(extra);
    run_bench(&args)
}

#[test]
fn bad_data_is_skipped_counted_and_logged_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let pattern = damaged_dataset(dir.path());
    let (ok, stdout, stderr) = bench_damaged(&pattern, &[]);
    assert!(ok, "the run stopped: {stderr}");
    let summary = bench_summary(&stdout);
    assert_eq!(
        summary["skipped"],
        serde_json::json!({
            "undecodable_image": 2,
            "missing_caption": 2,
            "bad_tar": 2,
            "unreadable_shard": 2,
        })
    );
    // 40 samples read, two of them the undecodable image.
    assert_eq!(summary["images"], 40 - 2);
    // Each skip is logged with its shard and key.
    for expected in [
        "skipped (undecodable_image) in",
        "shard-00001.tar at 000000012",
        "skipped (missing_caption) in",
        "shard-00001.tar at 000000015",
        "skipped (bad_tar) in",
        "shard-00002.tar",
        "skipped (unreadable_shard) in",
        "shard-00003.tar",
    ] {
        assert!(stderr.contains(expected), "no {expected:?} in:\n{stderr}");
    }
}

#[test]
fn more_bad_data_than_the_limit_stops_the_run_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let pattern = damaged_dataset(dir.path());
    // 8 of the 46 items read (40 samples, 6 skips before decoding) are bad
    // (17%): over a 10% limit.
    let (ok, stdout, stderr) = bench_damaged(&pattern, &["--max-bad-fraction", "0.1"]);
    assert!(!ok, "the run should stop; stdout: {stdout}");
    assert!(stdout.trim().is_empty(), "no summary after a failure");
    for expected in [
        "stage 'batcher' failed",
        "too much bad data: 8 of the 46 items read were skipped",
        "max-bad-fraction",
        "2 undecodable_image",
    ] {
        assert!(stderr.contains(expected), "no {expected:?} in:\n{stderr}");
    }
}

#[test]
fn images_over_the_pixel_limit_are_refused_as_decompression_bombs() {
    let dir = tempfile::tempdir().unwrap();
    make_test_shards(dir.path(), 1, 1);
    let script = r#"
import sys, tarfile
with tarfile.open(sys.argv[1]) as tar:
    sys.stdout.buffer.write(tar.extractfile("000000000.jpg").read())
"#;
    let shard = dir.path().join("shard-00000.tar");
    let output = std::process::Command::new(common::oracle_python())
        .args(["-c", script, shard.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success());
    let sample = Sample {
        key: "000000000".into(),
        origin: "shard-00000.tar".into(),
        image: ImageData::Encoded {
            bytes: output.stdout,
            extension: "jpg".into(),
        },
        caption: "a photo".into(),
    };
    // The photographs are at least 256x256, far above this limit.
    let decoder = Decoder { max_pixels: 10_000 };
    match decoder.decode(sample.clone()) {
        SampleOrSkip::Skipped(bad) => {
            assert_eq!(bad.kind, BadDataKind::UndecodableImage);
            assert_eq!(bad.key.as_deref(), Some("000000000"));
            assert!(bad.detail.contains("decompression bomb"), "{}", bad.detail);
        }
        SampleOrSkip::Sample(_) => panic!("a 10,000-pixel limit let a photograph through"),
        SampleOrSkip::Filtered => panic!("the decoder filters nothing"),
    }
    // With the default limit (Pillow's) the same image decodes.
    assert!(matches!(
        Decoder::default().decode(sample),
        SampleOrSkip::Sample(decoded) if decoded.image.width() >= 256
    ));
}
