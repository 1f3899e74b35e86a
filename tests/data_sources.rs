//! Data sources against OpenCLIP's own code (`open_clip_train.data`, which
//! needs webdataset==0.2.86 and pandas in the oracle environment): shard-list
//! expansion with `::` and upsampling factors, `--dataset-type auto`,
//! `sizes.json` / `__len__`, epoch sizes, CSV reading, and the grouping of tar
//! members into samples (on shards from scripts/make_test_shards.py, and on
//! damaged shards), and the per-epoch shard shuffle (`detshuffle2`). Without
//! an oracle: determinism of the seeded sample shuffle, the split of shards
//! across ranks and readers, and the frequencies of resampling with
//! upsampling weights.
//!
//! Everything compared here is exact (strings, counts, bytes); no floating
//! point tolerance is involved.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use clipflow_core::data::csv_source::CsvDataset;
use clipflow_core::data::dataset_type::{resolve_data_format, DataFormat, DatasetType};
use clipflow_core::data::shard_list::{
    shuffle_shards, split_for_reader, train_epoch_shards, ResampledShards, SampleSplit, ShardList,
};
use clipflow_core::data::shard_stream::ShardOpener;
use clipflow_core::data::shuffle_buffer::shuffle_samples;
use clipflow_core::data::sizes::{dataset_size, train_epoch_size, Rounding};
use clipflow_core::data::synthetic::{SyntheticDataset, SYNTHETIC_CAPTION};
use clipflow_core::data::tar_samples::{ShardSamples, TarSamples};
use clipflow_core::data::{ImageData, ReaderSlot, SkipCounts, SkipKind, SourceItem};
use serde_json::{json, Value};

fn make_test_shards(out_dir: &Path, shards: usize, samples_per_shard: usize, seed: u64) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make_test_shards.py");
    let status = Command::new(common::oracle_python())
        .arg(script)
        .arg(out_dir)
        .args(["--shards", &shards.to_string()])
        .args(["--samples-per-shard", &samples_per_shard.to_string()])
        .args(["--seed", &seed.to_string()])
        .status()
        .expect("running scripts/make_test_shards.py");
    assert!(status.success(), "make_test_shards.py failed");
}

fn shard_names(dir: &Path, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| dir.join(format!("shard-{i:05}.tar")).display().to_string())
        .collect()
}

/// What a sample or skip is, reduced to comparable text.
fn describe(item: &SourceItem) -> String {
    match item {
        SourceItem::Sample(sample) => match &sample.image {
            ImageData::Encoded { bytes, extension } => format!(
                "{} {} {} {}",
                sample.key,
                extension,
                fnv1a(bytes),
                sample.caption
            ),
            ImageData::Pixels { .. } => panic!("tar samples are encoded"),
        },
        SourceItem::Skipped(skip) => format!("skip {:?} {:?}", skip.kind, skip.key),
    }
}

/// A 64-bit FNV-1a hash, computed the same way in the oracle script.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |hash, &b| {
        (hash ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

fn samples_only(items: &[SourceItem]) -> Vec<String> {
    items
        .iter()
        .filter(|item| matches!(item, SourceItem::Sample(_)))
        .map(describe)
        .collect()
}

fn count_skips(items: &[SourceItem]) -> SkipCounts {
    let mut counts = SkipCounts::default();
    for item in items {
        if let SourceItem::Skipped(skip) = item {
            counts.record(skip.kind);
        }
    }
    counts
}

fn read_tar(path: &Path) -> Vec<SourceItem> {
    let file = std::fs::File::open(path).unwrap();
    TarSamples::new(std::io::BufReader::new(file), path.display().to_string()).collect()
}

/// OpenCLIP's grouping (`tarfile_to_samples_nothrow` then
/// `filter_no_caption_or_no_image`, image by `jpg;png;jpeg;webp`, caption
/// decoded as UTF-8), printed as [`describe`] prints samples.
const ORACLE_TAR_SAMPLES: &str = r#"
import sys, logging
logging.disable(logging.WARNING)
from open_clip_train.data import tarfile_to_samples_nothrow, filter_no_caption_or_no_image

def fnv1a(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h

for sample in tarfile_to_samples_nothrow(iter([dict(url=u) for u in sys.argv[1:]])):
    if not filter_no_caption_or_no_image(sample):
        continue
    ext = next(e for e in ["jpg", "png", "jpeg", "webp"] if e in sample)
    try:
        caption = sample["txt"].decode("utf-8")
    except UnicodeDecodeError:
        continue
    print(sample["__key__"], ext, fnv1a(sample[ext]), caption)
"#;

fn oracle_tar_samples(shards: &[String]) -> Vec<String> {
    let args: Vec<&str> = shards.iter().map(String::as_str).collect();
    common::run_oracle(ORACLE_TAR_SAMPLES, &args)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn shard_lists_expand_as_openclip_expand_urls() {
    let cases = json!([
        ["shard-{0000..0012}.tar", null],
        ["a/{0..3}.tar::b/{00..02}.tar", null],
        ["x{a,b{1..3},c}y.tar", null],
        [
            "{07..10}::{4..1}::{2..-1}::{-05..5}::{1..10..3}::{10..1..-4}",
            null
        ],
        ["{a..g..2}::{Z..c}::{z..A..5}::{C..C}", null],
        ["p{}q::p{x}q::p{x,}q::{,a}::a,b::{{a,b}}", null],
        ["{1\\{2,3}::a\\,b{1,2}\\}::{0..2}{a,b}", null],
        [
            "s3://bucket/train-{000..004}.tar::https://host/x-{0..1}.tar",
            null
        ],
        ["{1{2,3}", null],
        ["a{0..2}.tar::b{0..1}.tar", "1::4"],
        ["c-{0..3}.tar", "2.5"],
        ["a.tar::b.tar", "1"],
    ]);
    let script = r#"
import json, sys, logging
from open_clip_train.data import expand_urls
results = []
for urls, weights in json.loads(sys.argv[1]):
    try:
        expanded, w = expand_urls(urls, weights)
        results.append({"urls": list(expanded), "weights": w})
    except Exception:
        results.append({"error": True})
print(json.dumps(results))
"#;
    let expected: Vec<Value> =
        serde_json::from_str(&common::run_oracle(script, &[&cases.to_string()])).unwrap();
    for (case, expected) in cases.as_array().unwrap().iter().zip(expected) {
        let urls = case[0].as_str().unwrap();
        let weights = case[1].as_str();
        let ours = match ShardList::expand(urls, weights) {
            Ok(list) => json!({"urls": list.urls(), "weights": list.weights()}),
            Err(_) => json!({"error": true}),
        };
        assert_eq!(
            ours, expected,
            "expanding {urls:?} with factors {weights:?}"
        );
    }
}

#[test]
fn dataset_type_auto_detection_matches_openclip() {
    let paths = [
        "train.csv",
        "data/train.tsv",
        "shards/{000..009}.tar",
        "a.tar::b.tar",
        "s3://bucket/x-{0..3}.tar",
        "train.parquet",
        "no_extension",
        "upper.TAR",
        "archive.tar.gz",
    ];
    let types = ["auto", "webdataset", "csv", "synthetic"];
    let script = r#"
import json, sys
from open_clip_train.data import get_dataset_fn
names = {"get_wds_dataset": "webdataset", "get_csv_dataset": "csv", "get_synthetic_dataset": "synthetic"}
out = {}
for path in json.loads(sys.argv[1]):
    for kind in json.loads(sys.argv[2]):
        try:
            out[path + "|" + kind] = names[get_dataset_fn(path, kind).__name__]
        except ValueError:
            out[path + "|" + kind] = "error"
print(json.dumps(out))
"#;
    let expected: HashMap<String, String> = serde_json::from_str(&common::run_oracle(
        script,
        &[&json!(paths).to_string(), &json!(types).to_string()],
    ))
    .unwrap();
    for path in paths {
        for kind in types {
            let dataset_type: DatasetType = kind.parse().unwrap();
            let ours = match resolve_data_format(path, dataset_type) {
                Ok(format) => format.to_string(),
                Err(_) => "error".to_owned(),
            };
            assert_eq!(
                ours,
                expected[&format!("{path}|{kind}")],
                "{path} as {kind}"
            );
        }
    }
    assert!("parquet".parse::<DatasetType>().is_err());
    assert_eq!(
        resolve_data_format("x.tsv", DatasetType::Auto).unwrap(),
        DataFormat::Csv
    );
}

#[test]
fn dataset_sizes_match_openclip_get_dataset_size() {
    let root = tempfile::tempdir().unwrap();
    let with_sizes = root.path().join("with_sizes");
    let with_len = root.path().join("with_len");
    let with_nothing = root.path().join("with_nothing");
    for dir in [&with_sizes, &with_len, &with_nothing] {
        std::fs::create_dir(dir).unwrap();
    }
    std::fs::write(
        with_sizes.join("sizes.json"),
        r#"{"s-0.tar": 100, "s-1.tar": "250", "s-2.tar": 7, "s-3.tar": 1000}"#,
    )
    .unwrap();
    std::fs::write(with_len.join("__len__"), "12345\n").unwrap();
    let patterns: Vec<String> = vec![
        format!("{}/s-{{0..2}}.tar", with_sizes.display()),
        format!("{}/s-{{1..3}}.tar", with_sizes.display()),
        format!("{}/s-{{0..4}}.tar", with_sizes.display()),
        format!("{}/a-{{0..9}}.tar", with_len.display()),
        format!("{}/a-{{0..9}}.tar", with_nothing.display()),
        "s3://bucket/a-{0..3}.tar".to_owned(),
    ];
    let script = r#"
import json, sys
from open_clip_train.data import get_dataset_size
out = []
for pattern in json.loads(sys.argv[1]):
    try:
        total, shards = get_dataset_size(pattern)
        out.append({"total": total, "shards": shards})
    except Exception:
        out.append({"error": True})
print(json.dumps(out))
"#;
    let expected: Vec<Value> =
        serde_json::from_str(&common::run_oracle(script, &[&json!(patterns).to_string()])).unwrap();
    for (pattern, expected) in patterns.iter().zip(expected) {
        let ours = match dataset_size(pattern) {
            Ok(size) => json!({"total": size.total_samples, "shards": size.num_shards}),
            Err(_) => json!({"error": true}),
        };
        assert_eq!(ours, expected, "size of {pattern}");
    }
}

#[test]
fn epoch_sizes_match_openclip_get_wds_dataset() {
    let root = tempfile::tempdir().unwrap();
    let shards = format!("{}/s-{{00..11}}.tar", root.path().display());
    // (num_samples, batch_size, world_size, workers, floor)
    let cases = json!([
        [1000, 32, 1, 1, false],
        [1000, 32, 1, 4, false],
        [1000, 32, 2, 3, true],
        [1000, 32, 2, 3, false],
        [77, 8, 3, 2, false],
        [5000, 256, 4, 0, true],
    ]);
    let script = r#"
import json, sys, types
from open_clip_train.data import get_wds_dataset
shards = sys.argv[2]
out = []
for num_samples, batch_size, world_size, workers, floor in json.loads(sys.argv[1]):
    args = types.SimpleNamespace(
        train_data=shards, val_data=None, dataset_resampled=False, train_num_samples=num_samples,
        train_data_upsampling_factors=None, seed=0, batch_size=batch_size,
        world_size=world_size, workers=workers)
    loader = get_wds_dataset(args, None, is_train=True, epoch=0, floor=floor, tokenizer=None).dataloader
    out.append([loader.num_batches, loader.num_samples])
print(json.dumps(out))
"#;
    let expected: Vec<(u64, u64)> =
        serde_json::from_str(&common::run_oracle(script, &[&cases.to_string(), &shards])).unwrap();
    for (case, expected) in cases.as_array().unwrap().iter().zip(expected) {
        let n = |i: usize| case[i].as_u64().unwrap();
        let rounding = if case[4].as_bool().unwrap() {
            Rounding::Floor
        } else {
            Rounding::Ceil
        };
        let size = train_epoch_size(n(0), n(1), n(2), n(3), rounding).unwrap();
        assert_eq!(
            (size.num_batches, size.num_samples),
            expected,
            "case {case}"
        );
        assert_eq!(size.num_batches, size.batches_per_reader * n(3).max(1));
    }
}

#[test]
fn csv_reading_matches_openclip_csv_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let tab_file = dir.path().join("train.tsv");
    std::fs::write(
        &tab_file,
        "\u{feff}filepath\ttitle\textra\n\
         images/a.jpg\ta photo of a cat\t1\n\
         \n\
         images/b.jpg\t\"quoted, with \"\"quotes\"\" and\ttab\"\t2\n\
         images/ü.png\tnaïve café, résumé\t3\n",
    )
    .unwrap();
    let comma_file = dir.path().join("train.csv");
    std::fs::write(
        &comma_file,
        "id,path,caption\n0,x/1.jpg,\"first, caption\"\n1,x/2.jpg,second caption\n",
    )
    .unwrap();
    // pandas reads the two characters `\t` as a regular expression, which
    // ignores quotes: that case gets a file without quoted cells.
    let plain_file = dir.path().join("plain.tsv");
    std::fs::write(
        &plain_file,
        "filepath\ttitle\na.jpg\tone\nb.jpg\ttwo, three\n",
    )
    .unwrap();
    let cases = [
        (&tab_file, "\t", "filepath", "title"),
        (&plain_file, "\\t", "filepath", "title"),
        (&comma_file, ",", "path", "caption"),
        (&comma_file, ",", "filepath", "caption"),
    ];
    let script = r#"
import json, sys
from open_clip_train.data import CsvDataset
try:
    d = CsvDataset(sys.argv[1], None, img_key=sys.argv[3], caption_key=sys.argv[4], sep=sys.argv[2])
    print(json.dumps({"images": [str(x) for x in d.images], "captions": [str(x) for x in d.captions]}))
except Exception:
    print(json.dumps({"error": True}))
"#;
    for (file, separator, image_key, caption_key) in cases {
        let path = file.display().to_string();
        let expected: Value = serde_json::from_str(&common::run_oracle(
            script,
            &[&path, separator, image_key, caption_key],
        ))
        .unwrap();
        let ours = match CsvDataset::load(file, separator, image_key, caption_key) {
            Ok(dataset) => json!({
                "images": dataset.rows().iter().map(|r| &r.image_path).collect::<Vec<_>>(),
                "captions": dataset.rows().iter().map(|r| &r.caption).collect::<Vec<_>>(),
            }),
            Err(_) => json!({"error": true}),
        };
        assert_eq!(ours, expected, "{path} with {separator:?}");
    }
    let error = CsvDataset::load(&comma_file, ",", "filepath", "caption").unwrap_err();
    assert!(
        format!("{error:#}").contains("--csv-img-key"),
        "the error names the flag: {error:#}"
    );
    assert!(CsvDataset::load(&comma_file, "::", "path", "caption").is_err());
}

#[test]
fn csv_epochs_shuffle_deterministically_and_skip_missing_images() {
    let dir = tempfile::tempdir().unwrap();
    let mut table = String::from("filepath\ttitle\n");
    for i in 0..23 {
        let image = dir.path().join(format!("{i}.jpg"));
        if i != 5 {
            std::fs::write(&image, format!("image {i}")).unwrap();
        }
        table.push_str(&format!("{}\tcaption {i}\n", image.display()));
    }
    let file = dir.path().join("train.csv");
    std::fs::write(&file, table).unwrap();
    let dataset = CsvDataset::load(&file, "\t", "filepath", "title").unwrap();
    assert_eq!(dataset.len(), 23);

    let epoch0 = dataset.epoch_order(7, 0, 0, 1);
    assert_eq!(epoch0, dataset.epoch_order(7, 0, 0, 1));
    assert_ne!(epoch0, dataset.epoch_order(7, 1, 0, 1));
    let mut sorted = epoch0.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..23).collect::<Vec<_>>());

    // Three ranks get equal shares that cover every row (23 padded to 24).
    let shares: Vec<Vec<usize>> = (0..3).map(|r| dataset.epoch_order(7, 2, r, 3)).collect();
    assert!(shares.iter().all(|share| share.len() == 8));
    let mut covered: Vec<usize> = shares.concat();
    covered.sort_unstable();
    covered.dedup();
    assert_eq!(covered, (0..23).collect::<Vec<_>>());

    let items: Vec<SourceItem> = dataset.samples(epoch0).collect();
    assert_eq!(count_skips(&items).get(SkipKind::UnreadableImageFile), 1);
    for item in &items {
        if let SourceItem::Sample(sample) = item {
            let ImageData::Encoded { bytes, extension } = &sample.image else {
                panic!("csv images are encoded")
            };
            assert_eq!(extension, "jpg");
            assert_eq!(
                String::from_utf8_lossy(bytes),
                format!("image {}", sample.key)
            );
            assert_eq!(sample.caption, format!("caption {}", sample.key));
        }
    }
}

#[test]
fn tar_samples_match_openclip_on_generated_shards() {
    let dir = tempfile::tempdir().unwrap();
    make_test_shards(dir.path(), 3, 12, 11);
    let shards = shard_names(dir.path(), 3);
    let items: Vec<SourceItem> =
        ShardSamples::new(shards.clone().into_iter(), Arc::new(ShardOpener::new())).collect();
    assert_eq!(count_skips(&items).total(), 0);
    let ours = samples_only(&items);
    assert_eq!(ours.len(), 36);
    assert_eq!(ours, oracle_tar_samples(&shards));

    // Real photographs at web sizes: JPEGs of tens of kilobytes.
    for item in &items {
        let SourceItem::Sample(sample) = item else {
            unreachable!()
        };
        let ImageData::Encoded { bytes, .. } = &sample.image else {
            unreachable!()
        };
        assert_eq!(&bytes[..2], &[0xff, 0xd8], "{} is a JPEG", sample.key);
        assert!(bytes.len() > 5_000, "{} is a photograph", sample.key);
    }

    // The size file the script writes reads as OpenCLIP reads it.
    let pattern = format!("{}/shard-{{00000..00002}}.tar", dir.path().display());
    assert_eq!(dataset_size(&pattern).unwrap().total_samples, Some(36));
}

#[test]
fn make_test_shards_is_deterministic() {
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    make_test_shards(first.path(), 1, 4, 3);
    make_test_shards(second.path(), 1, 4, 3);
    let read = |dir: &Path| std::fs::read(dir.join("shard-00000.tar")).unwrap();
    assert_eq!(read(first.path()), read(second.path()));
}

/// Writes tar files with Python's tarfile: damaged shards and shards in the
/// GNU and pax formats. Members come as `[name, text]` pairs; `"@jpeg"` is
/// replaced by a small JPEG, `"@bad-utf8"` by bytes that are not UTF-8.
const ORACLE_WRITE_TAR: &str = r#"
import io, json, sys, tarfile
from PIL import Image
jpeg = io.BytesIO()
Image.new("RGB", (8, 8), (200, 30, 30)).save(jpeg, format="JPEG")
special = {"@jpeg": jpeg.getvalue(), "@bad-utf8": b"\xff\xfe caption"}
path, fmt, members = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
formats = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}
with tarfile.open(path, "w", format=formats[fmt]) as tar:
    for name, text in members:
        if name.endswith("/"):
            info = tarfile.TarInfo(name.rstrip("/"))
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
            continue
        data = special.get(text, text.encode("utf-8"))
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
"#;

fn write_tar(path: &Path, format: &str, members: Value) {
    common::run_oracle(
        ORACLE_WRITE_TAR,
        &[&path.display().to_string(), format, &members.to_string()],
    );
}

#[test]
fn damaged_samples_are_counted_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("bad.tar");
    write_tar(
        &shard,
        "ustar",
        json!([
            ["k0.jpg", "@jpeg"],
            ["k0.txt", "good zero"],
            ["k1.jpg", "@jpeg"],
            ["k2.txt", "caption without image"],
            ["k2.json", "{}"],
            ["README", "not a sample member"],
            ["__len__", "5"],
            ["k3.webp", "@jpeg"],
            ["k3.TXT", "upper-case extension"],
            ["k4.jpg", "@jpeg"],
            ["k4.txt", "@bad-utf8"],
            ["k5.json", "{}"],
            ["k5.png", "@jpeg"],
            ["k5.jpg", "@jpeg"],
            ["k5.txt", "both"],
            ["k5.jpg", "@jpeg"],
            ["k5.txt", "repeated key starts a new sample"],
        ]),
    );
    let items = read_tar(&shard);
    let counts = count_skips(&items);
    assert_eq!(counts.get(SkipKind::MissingCaption), 1, "k1");
    assert_eq!(counts.get(SkipKind::MissingImage), 1, "k2");
    assert_eq!(counts.get(SkipKind::MemberWithoutKey), 1, "README");
    assert_eq!(counts.get(SkipKind::CaptionNotUtf8), 1, "k4");
    assert_eq!(counts.total(), 4);
    let ours = samples_only(&items);
    let keys: Vec<&str> = ours.iter().map(|s| s.split(' ').next().unwrap()).collect();
    assert_eq!(keys, ["k0", "k3", "k5", "k5"]);
    assert!(ours[2].starts_with("k5 jpg"), "jpg is preferred over png");
    assert_eq!(ours, oracle_tar_samples(&[shard.display().to_string()]));
    assert_eq!(
        serde_json::to_value(&counts).unwrap(),
        json!({"missing_image": 1, "missing_caption": 1, "caption_not_utf8": 1, "member_without_key": 1})
    );

    // Truncated inside a member's data, and inside a header: the samples
    // before the damage survive (as in OpenCLIP) and the damage is counted.
    let whole = std::fs::read(&shard).unwrap();
    for cut in [whole.len() / 2 + 100, 512 * 7 + 300] {
        let truncated = dir.path().join(format!("truncated-{cut}.tar"));
        std::fs::write(&truncated, &whole[..cut]).unwrap();
        let items = read_tar(&truncated);
        assert_eq!(count_skips(&items).get(SkipKind::BadTar), 1, "cut at {cut}");
        assert_eq!(
            samples_only(&items),
            oracle_tar_samples(&[truncated.display().to_string()]),
            "cut at {cut}"
        );
    }

    // A corrupt header stops the shard; a missing shard is counted and the
    // next one is read.
    let k1_header = whole
        .windows(6)
        .position(|window| window == b"k1.jpg")
        .expect("the shard has a k1.jpg member");
    let mut corrupt = whole.clone();
    corrupt[k1_header + 1] ^= 0x55;
    let corrupt_path = dir.path().join("corrupt.tar");
    std::fs::write(&corrupt_path, corrupt).unwrap();
    let shards = vec![
        dir.path().join("missing.tar").display().to_string(),
        corrupt_path.display().to_string(),
        shard.display().to_string(),
    ];
    let items: Vec<SourceItem> =
        ShardSamples::new(shards.into_iter(), Arc::new(ShardOpener::new())).collect();
    let counts = count_skips(&items);
    assert_eq!(counts.get(SkipKind::UnreadableShard), 1);
    assert_eq!(counts.get(SkipKind::BadTar), 1);
    assert_eq!(
        samples_only(&items).len(),
        1 + 4,
        "k0 of the corrupt shard, then all of the good one"
    );
}

#[test]
fn long_names_in_gnu_and_pax_tars_match_openclip() {
    let dir = tempfile::tempdir().unwrap();
    let deep = format!("{}/", "very-long-folder-name".repeat(8));
    let members = json!([
        [deep.clone(), ""],
        [format!("{deep}000.jpg"), "@jpeg"],
        [format!("{deep}000.txt"), "long path"],
        ["short/001.jpg", "@jpeg"],
        ["short/001.txt", "ünïcödé caption"],
        [format!("{}.jpg", "k".repeat(120)), "@jpeg"],
        [format!("{}.txt", "k".repeat(120)), "long basename"],
    ]);
    for format in ["gnu", "pax"] {
        let shard = dir.path().join(format!("{format}.tar"));
        write_tar(&shard, format, members.clone());
        let items = read_tar(&shard);
        assert_eq!(count_skips(&items).total(), 0, "{format}");
        let ours = samples_only(&items);
        assert_eq!(ours.len(), 3, "{format}");
        assert_eq!(
            ours,
            oracle_tar_samples(&[shard.display().to_string()]),
            "{format}"
        );
    }
}

fn numbered_shards(count: usize) -> ShardList {
    ShardList::expand(&format!("s-{{000..{:03}}}.tar", count - 1), None).unwrap()
}

#[test]
fn shard_shuffle_is_deterministic_per_seed_and_epoch() {
    let shards = numbered_shards(3000);
    let epoch0 = shuffle_shards(shards.urls(), 42, 0);
    assert_eq!(epoch0, shuffle_shards(shards.urls(), 42, 0));
    assert_ne!(epoch0, shuffle_shards(shards.urls(), 42, 1));
    assert_ne!(epoch0, shuffle_shards(shards.urls(), 43, 0));
    assert_ne!(epoch0, shards.urls());
    let mut sorted = epoch0.clone();
    sorted.sort();
    assert_eq!(sorted, shards.urls());
}

/// OpenCLIP's per-epoch shard order: its `detshuffle2` stage (seeded with
/// `seed + epoch` through the shared epoch) over `wds.SimpleShardList`, as
/// its training pipeline builds them.
const DETSHUFFLE_ORACLE: &str = r#"
import json, sys
import webdataset as wds
from open_clip_train.data import SharedEpoch, detshuffle2
for case in json.loads(sys.argv[1]):
    epoch = SharedEpoch(case["epoch"])
    stages = [wds.SimpleShardList(case["urls"]),
              detshuffle2(bufsize=2000, initial=500, seed=case["seed"], epoch=epoch)]
    print(json.dumps([s["url"] for s in wds.DataPipeline(*stages)]))
"#;

#[test]
fn shard_shuffle_is_open_clips() {
    // Fewer shards than the first pick needs (500), more than the buffer
    // (2000), and few; seeds and epochs that differ.
    let cases: Vec<(usize, u64, u64)> =
        vec![(2, 0, 0), (2, 0, 1), (37, 3, 2), (700, 1, 0), (2500, 42, 5)];
    let lists: Vec<ShardList> = cases.iter().map(|(n, _, _)| numbered_shards(*n)).collect();
    let request: Vec<Value> = cases
        .iter()
        .zip(&lists)
        .map(|((_, seed, epoch), list)| json!({"urls": list.urls(), "seed": seed, "epoch": epoch}))
        .collect();
    let stdout = common::run_oracle(DETSHUFFLE_ORACLE, &[&json!(request).to_string()]);
    for (((n, seed, epoch), list), line) in cases.iter().zip(&lists).zip(stdout.lines()) {
        let theirs: Vec<String> = serde_json::from_str(line).unwrap();
        let ours = shuffle_shards(list.urls(), *seed, *epoch);
        assert_eq!(ours, theirs, "{n} shards, seed {seed}, epoch {epoch}");
    }
}

#[test]
fn shards_split_across_ranks_and_workers_exactly_once() {
    let shards = numbered_shards(37);
    for world_size in 1..=3 {
        for workers in 1..=4 {
            let mut taken: BTreeMap<String, usize> = BTreeMap::new();
            for rank in 0..world_size {
                for worker in 0..workers {
                    let slot = ReaderSlot {
                        rank,
                        world_size,
                        worker,
                        workers,
                    };
                    let mine = train_epoch_shards(&shards, 9, 4, slot).unwrap();
                    assert_eq!(mine.sample_split, None);
                    assert!(!mine.shards.is_empty());
                    for shard in mine.shards {
                        *taken.entry(shard).or_default() += 1;
                    }
                }
            }
            assert_eq!(taken.len(), 37, "{world_size} ranks x {workers} workers");
            assert!(taken.values().all(|&n| n == 1));
        }
    }
    // Fewer shards than readers: every reader reads all of them, in the
    // epoch's order, and keeps its own samples.
    let beyond = ReaderSlot {
        rank: 1,
        world_size: 8,
        worker: 3,
        workers: 5,
    };
    let share = train_epoch_shards(&shards, 9, 4, beyond).unwrap();
    assert_eq!(share.shards, shuffle_shards(shards.urls(), 9, 4));
    assert_eq!(
        share.sample_split,
        Some(SampleSplit {
            every: 40,
            offset: 8
        })
    );
    // Without a shuffle, the split is OpenCLIP's islice(rank, None, world_size).
    let plain: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    let slot = ReaderSlot {
        rank: 1,
        world_size: 2,
        worker: 1,
        workers: 2,
    };
    assert_eq!(split_for_reader(&plain, slot), ["3", "7"]);
}

#[test]
fn resampling_draws_with_replacement_in_proportion_to_upsampling_factors() {
    // Two sources of two shards each, weighted 1 and 3: each shard of the
    // first is drawn with probability 1/8, each of the second with 3/8.
    let shards = ShardList::expand("a-{0..1}.tar::b-{0..1}.tar", Some("1::3")).unwrap();
    let draws = 40_000;
    let drawn: Vec<String> = ResampledShards::new(&shards, 5, 0, ReaderSlot::SOLE)
        .unwrap()
        .take(draws)
        .collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for shard in &drawn {
        *counts.entry(shard.as_str()).or_default() += 1;
    }
    // The standard deviation of a frequency near 3/8 over 40,000 draws is
    // sqrt(p (1 - p) / n) ~ 0.0024; 0.012 is five of them.
    for (shard, probability) in [
        ("a-0.tar", 0.125),
        ("a-1.tar", 0.125),
        ("b-0.tar", 0.375),
        ("b-1.tar", 0.375),
    ] {
        let frequency = counts[shard] as f64 / draws as f64;
        assert!(
            (frequency - probability).abs() < 0.012,
            "{shard}: drawn {frequency}, expected {probability}"
        );
    }
    // With replacement: the same shard comes back long before all are drawn.
    let first = &drawn[..8];
    let distinct: std::collections::HashSet<_> = first.iter().collect();
    assert!(distinct.len() < first.len());
    // Reproducible per (seed, epoch, reader), different across them.
    let again = |epoch, worker| -> Vec<String> {
        let slot = ReaderSlot {
            worker,
            workers: 2,
            ..ReaderSlot::SOLE
        };
        ResampledShards::new(&shards, 5, epoch, slot)
            .unwrap()
            .take(64)
            .collect()
    };
    assert_eq!(again(0, 0), again(0, 0));
    assert_ne!(again(0, 0), again(1, 0));
    assert_ne!(again(0, 0), again(0, 1));
}

#[test]
fn sample_shuffle_is_deterministic_per_seed_and_epoch() {
    let shuffled =
        |epoch| -> Vec<u32> { shuffle_samples(0..20_000u32, 3, epoch, ReaderSlot::SOLE).collect() };
    let epoch0 = shuffled(0);
    assert_eq!(epoch0, shuffled(0));
    assert_ne!(epoch0, shuffled(1));
    let mut sorted = epoch0.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..20_000).collect::<Vec<_>>());
}

#[test]
fn synthetic_samples_match_openclip_synthetic_dataset() {
    let script = r#"
import json
from open_clip_train.data import SyntheticDataset
d = SyntheticDataset(transform=lambda image: image, image_size=(224, 224), dataset_size=10,
                     tokenizer=lambda text: [text])
image, caption = d[3]
print(json.dumps({"len": len(d), "size": list(image.size), "mode": image.mode,
                  "extrema": list(image.getextrema()), "caption": caption}))
"#;
    let expected: Value = serde_json::from_str(&common::run_oracle(script, &[])).unwrap();
    let dataset = SyntheticDataset::new(224, 224, Some(10)).unwrap();
    let sample = dataset.sample(3);
    let ImageData::Pixels { width, height, rgb } = &sample.image else {
        panic!("synthetic images are pixels")
    };
    assert_eq!(expected["len"], json!(dataset.len()));
    assert_eq!(expected["size"], json!([width, height]));
    assert_eq!(expected["mode"], "RGB");
    assert_eq!(expected["extrema"], json!([[0, 0], [0, 0], [0, 0]]));
    assert!(rgb.iter().all(|&v| v == 0));
    assert_eq!(rgb.len(), 224 * 224 * 3);
    assert_eq!(expected["caption"], SYNTHETIC_CAPTION);
    assert_eq!(
        dataset.samples(1, 3).count(),
        4,
        "10 samples over 3 ranks pad to 4 each"
    );
    assert!(SyntheticDataset::new(224, 224, None).is_err());
}
