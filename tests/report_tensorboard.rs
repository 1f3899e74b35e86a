//! TensorBoard event files written by clipflow, read back by TensorBoard's
//! own `EventAccumulator` in the oracle environment: the file is found and
//! accepted (name, file version, record CRCs), and the tags, steps and values
//! are the ones written, also while the writer is still open (each call is
//! flushed, so a live TensorBoard sees it).

mod common;

use clipflow_actors::report::TensorboardWriter;
use serde_json::Value;

const READER: &str = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1])
acc.Reload()
scalars = {tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
print(json.dumps({"file_version": acc.file_version, "scalars": scalars}))
"#;

/// What TensorBoard reads from the folder: file version and `tag -> [(step, value)]`.
fn read_back(dir: &std::path::Path) -> Value {
    serde_json::from_str(&common::run_oracle(READER, &[dir.to_str().unwrap()])).unwrap()
}

fn expected(scalars: &[(&str, i64, f64)], tag: &str) -> Vec<(i64, f64)> {
    scalars
        .iter()
        .filter(|(t, _, _)| *t == tag)
        // simple_value is a 32-bit float; TensorBoard widens it back exactly.
        .map(|(_, step, value)| (*step, f64::from(*value as f32)))
        .collect()
}

fn read_tag(back: &Value, tag: &str) -> Vec<(i64, f64)> {
    back["scalars"][tag]
        .as_array()
        .unwrap_or_else(|| panic!("TensorBoard has no scalar {tag}: {back}"))
        .iter()
        .map(|point| (point[0].as_i64().unwrap(), point[1].as_f64().unwrap()))
        .collect()
}

#[test]
fn tensorboard_reads_back_what_was_written() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("run").join("tensorboard");
    let mut writer = TensorboardWriter::create(&dir).unwrap();
    let file_name = writer
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(file_name.starts_with("events.out.tfevents."), "{file_name}");

    let first: Vec<(&str, i64, f64)> = vec![
        ("train/loss", 0, 8.317_766_166_719_343),
        ("train/lr", 0, 5e-4),
        ("train/scale", 0, 14.285_714),
        ("train/samples_per_second", 0, 23_818.975_784),
        ("train/loss", 100, 6.25),
        ("train/lr", 100, 4.999e-4),
        ("train/scale", 100, 14.3),
        ("train/samples_per_second", 100, 1.0e-3),
    ];
    let later: Vec<(&str, i64, f64)> = vec![
        ("train/loss", 200, 3.5),
        ("train/lr", 200, 1e-7),
        ("train/scale", 200, 100.0),
        ("train/samples_per_second", 200, 0.0),
        ("val/clip_val_loss", 1, 4.125),
        ("val/image_to_text_R@1", 1, 0.1),
        ("val/epoch", 1, 1.0),
        ("val/num_samples", 1, 1_000_000.0),
    ];
    let write = |writer: &mut TensorboardWriter, scalars: &[(&str, i64, f64)]| {
        for step in [0, 1, 100, 200] {
            let at_step: Vec<(String, f64)> = scalars
                .iter()
                .filter(|(_, s, _)| *s == step)
                .map(|(tag, _, value)| (tag.to_string(), *value))
                .collect();
            if !at_step.is_empty() {
                writer.add_scalars(step, &at_step).unwrap();
            }
        }
    };

    // Read while the writer is still open: everything so far is on disk.
    write(&mut writer, &first);
    let back = read_back(&dir);
    // TensorBoard parses `brain.Event:2` into the version number 2.
    assert_eq!(back["file_version"], 2.0);
    for tag in [
        "train/loss",
        "train/lr",
        "train/scale",
        "train/samples_per_second",
    ] {
        assert_eq!(read_tag(&back, tag), expected(&first, tag), "{tag}");
    }

    write(&mut writer, &later);
    drop(writer);
    let back = read_back(&dir);
    let all: Vec<(&str, i64, f64)> = first.iter().chain(&later).cloned().collect();
    let mut tags: Vec<&str> = all.iter().map(|(tag, _, _)| *tag).collect();
    tags.sort();
    tags.dedup();
    let mut read_tags: Vec<String> = back["scalars"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    read_tags.sort();
    assert_eq!(read_tags, tags);
    for tag in tags {
        assert_eq!(read_tag(&back, tag), expected(&all, tag), "{tag}");
    }
}
