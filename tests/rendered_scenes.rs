//! The quickstart's rendered-scenes dataset: the same seed writes the same
//! bytes; OpenCLIP's own WebDataset loader (`get_wds_dataset`) reads the
//! shards, with the size `sizes.json` gives, every image decoding and every
//! caption ours; the held-out classes are told apart by simple colour and
//! shape measurements, so a small model can learn them; `clipflow
//! make-scenes` writes the same dataset.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use clipflow_core::data::rendered_scenes::{write_scene_dataset, SceneDataset, SceneDatasetSpec};
use clipflow_core::data::tar_samples::TarMembers;

fn small_spec(seed: u64) -> SceneDatasetSpec {
    SceneDatasetSpec {
        train_samples: 90,
        samples_per_shard: 30,
        zeroshot_per_class: 6,
        image_size: 48,
        seed,
    }
}

/// Every file under `dir`, by path relative to it, with its bytes.
fn files_under(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                files.insert(path.strip_prefix(dir).unwrap().to_path_buf(), bytes);
            }
        }
    }
    files
}

/// Our captions, by sample key, read back from the shards.
fn captions(dataset: &SceneDataset, shard_dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for shard in 0..3 {
        let file = std::fs::File::open(shard_dir.join(format!("scenes-{shard:05}.tar"))).unwrap();
        let mut members = TarMembers::new(std::io::BufReader::new(file));
        while let Some(member) = members.next_member().unwrap() {
            if let Some(key) = member.name.strip_suffix(".txt") {
                out.insert(key.to_string(), String::from_utf8(member.data).unwrap());
            }
        }
    }
    assert_eq!(out.len() as u64, dataset.num_train_samples);
    out
}

#[test]
fn the_same_seed_writes_the_same_files() {
    let [first, second, other] = [(); 3].map(|_| tempfile::tempdir().unwrap());
    let a = write_scene_dataset(first.path(), &small_spec(3)).unwrap();
    write_scene_dataset(second.path(), &small_spec(3)).unwrap();
    write_scene_dataset(other.path(), &small_spec(4)).unwrap();
    let files = files_under(first.path());
    assert_eq!(files, files_under(second.path()));
    let other_files = files_under(other.path());
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        other_files.keys().collect::<Vec<_>>()
    );
    assert_ne!(files, other_files, "another seed draws other scenes");

    // 3 shards + sizes.json, zeroshot.json, 20 classes x 6 images.
    assert_eq!(files.len(), 3 + 1 + 1 + 20 * 6);
    assert_eq!(a.class_names.len(), 20);
    assert!(a.train_shards.ends_with("shards/scenes-{00000..00002}.tar"));
    let listed: serde_json::Value =
        serde_json::from_slice(&files[Path::new("zeroshot.json")]).unwrap();
    assert_eq!(listed["class_names"], serde_json::json!(a.class_names));
    assert_eq!(listed["templates"], serde_json::json!(a.templates));
    assert!(a.templates.iter().all(|t| t.contains("{}")));
}

/// Reads the shards with OpenCLIP's training loader: identity image
/// transform (PIL -> array) and the caption kept as text.
const ORACLE_READ_SHARDS: &str = r#"
import json, sys, types
import numpy as np
from open_clip_train.data import get_wds_dataset
args = types.SimpleNamespace(
    train_data=sys.argv[1], val_data=None, dataset_resampled=False, train_num_samples=None,
    train_data_upsampling_factors=None, seed=0, batch_size=10, world_size=1, workers=0)
data = get_wds_dataset(args, lambda image: np.asarray(image.convert("RGB")), is_train=True,
                       epoch=0, tokenizer=lambda text: [text])
captions, shapes = [], set()
for images, texts in data.dataloader:
    shapes.add(tuple(np.asarray(images).shape[1:]))
    captions.extend(texts)
print(json.dumps({"num_samples": data.dataloader.num_samples, "captions": captions,
                  "shapes": sorted(shapes)}))
"#;

#[test]
fn openclip_loader_reads_the_shards() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = write_scene_dataset(dir.path(), &small_spec(11)).unwrap();
    let ours = captions(&dataset, &dir.path().join("shards"));

    let out: serde_json::Value = serde_json::from_str(&common::run_oracle(
        ORACLE_READ_SHARDS,
        &[&dataset.train_shards],
    ))
    .unwrap();
    assert_eq!(
        out["num_samples"], 90,
        "sizes.json read by get_dataset_size"
    );
    assert_eq!(
        out["shapes"],
        serde_json::json!([[48, 48, 3]]),
        "every image decodes"
    );
    let mut theirs: Vec<String> = serde_json::from_value(out["captions"].clone()).unwrap();
    let mut expected: Vec<String> = ours.into_values().collect();
    theirs.sort();
    expected.sort();
    assert_eq!(
        theirs, expected,
        "OpenCLIP yields every sample once, captions ours"
    );
}

/// Colour and shape measurements of a held-out image: the mean colour of
/// the pixels unlike the background (the border's median), and the shape's
/// fill of its bounding box and the box's aspect ratio.
fn features(path: &Path) -> [f32; 5] {
    let image = image::open(path).unwrap().to_rgb8();
    let (w, h) = image.dimensions();
    let mut border: Vec<[u8; 3]> = (0..w)
        .flat_map(|x| [image.get_pixel(x, 0).0, image.get_pixel(x, h - 1).0])
        .collect();
    border.sort();
    let background = border[border.len() / 2].map(i32::from);
    let (mut sum, mut count) = ([0f32; 3], 0f32);
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for (x, y, pixel) in image.enumerate_pixels() {
        let far = (0..3).any(|c| (i32::from(pixel.0[c]) - background[c]).abs() > 40);
        if far {
            for (total, value) in sum.iter_mut().zip(pixel.0) {
                *total += f32::from(value) / 255.0;
            }
            count += 1.0;
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
    }
    assert!(count > 0.0, "{} shows a shape", path.display());
    let box_area = ((x1 - x0 + 1) * (y1 - y0 + 1)) as f32;
    let aspect = (y1 - y0 + 1) as f32 / (x1 - x0 + 1) as f32;
    [
        sum[0] / count,
        sum[1] / count,
        sum[2] / count,
        count / box_area,
        aspect,
    ]
}

#[test]
fn held_out_classes_are_told_apart_by_colour_and_shape() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SceneDatasetSpec {
        zeroshot_per_class: 12,
        image_size: 64,
        ..small_spec(5)
    };
    let dataset = write_scene_dataset(dir.path(), &spec).unwrap();
    // Nearest class mean, fitted on half of each class, tested on the rest.
    let per_class: Vec<Vec<[f32; 5]>> = dataset
        .class_names
        .iter()
        .map(|name| {
            let folder = dataset.zeroshot_dir.join(name.replace(' ', "_"));
            (0..12)
                .map(|n| features(&folder.join(format!("{n:03}.png"))))
                .collect()
        })
        .collect();
    let means: Vec<[f32; 5]> = per_class
        .iter()
        .map(|examples| {
            let mut mean = [0f32; 5];
            for example in &examples[..6] {
                for (m, v) in mean.iter_mut().zip(example) {
                    *m += v / 6.0;
                }
            }
            mean
        })
        .collect();
    let distance = |a: &[f32; 5], b: &[f32; 5]| -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
    };
    let (mut right, mut total) = (0, 0);
    for (label, examples) in per_class.iter().enumerate() {
        for example in &examples[6..] {
            let predicted = (0..means.len())
                .min_by(|&a, &b| {
                    distance(example, &means[a]).total_cmp(&distance(example, &means[b]))
                })
                .unwrap();
            right += usize::from(predicted == label);
            total += 1;
        }
    }
    let accuracy = right as f32 / total as f32;
    // Chance is 1 in 20; colours alone would give about 1 in 4.
    assert!(accuracy > 0.8, "nearest-mean accuracy {accuracy}");
}

#[test]
fn make_scenes_command_writes_the_dataset() {
    let [by_command, by_library] = [(); 2].map(|_| tempfile::tempdir().unwrap());
    let out = Command::new(common::clipflow_bin())
        .arg("make-scenes")
        .arg(by_command.path())
        .args(["--samples", "90", "--samples-per-shard", "30"])
        .args([
            "--zeroshot-per-class",
            "6",
            "--image-size",
            "48",
            "--seed",
            "3",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("(90 samples)"));
    write_scene_dataset(by_library.path(), &small_spec(3)).unwrap();
    assert_eq!(
        files_under(by_command.path()),
        files_under(by_library.path())
    );

    let bad = Command::new(common::clipflow_bin())
        .arg("make-scenes")
        .arg(by_command.path())
        .args(["--image-size", "4"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("image size"));
}
