//! Evaluation maths equal OpenCLIP's on the same inputs.
//!
//! The oracle (tests/oracle/eval_parity.py) runs `open_clip_train`'s own
//! `evaluate` (validation loss and retrieval metrics, zero-shot accuracy on
//! imagenet-val and imagenet-v2) on random features, `build_zero_shot_classifier`
//! with a tiny CLIP, torchvision's `ImageFolder` listing, and reads
//! `open_clip.zero_shot_metadata`; clipflow must give the same results.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use clipflow_core::data::image_folder::{list_imagenet_v2, ImageFolder, IMAGENET_V2_FOLDER};
use clipflow_core::eval::imagenet::{imagenet_class_names, openai_imagenet_templates};
use clipflow_core::eval::retrieval::ValidationMetrics;
use clipflow_core::eval::zero_shot::{
    build_zero_shot_classifier, zero_shot_logits, ZeroShotAccuracy, ZeroShotSet,
    OPEN_CLIP_CLASSES_PER_BATCH,
};
use clipflow_core::model::load::load_strict;
use clipflow_core::model::{Clip, ModelConfig, ModelOverrides};
use clipflow_core::tokenizer::{tokenize_batch, ClipTokenizer};
use serde_json::Value;
use tch::{nn::VarStore, Device, Tensor};

const ORACLE: &str = include_str!("oracle/eval_parity.py");

fn read(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// `tensor` cut along dim 0 into consecutive pieces of `sizes`.
fn batches(tensor: &Tensor, sizes: &Tensor) -> Vec<Tensor> {
    let sizes = Vec::<i64>::try_from(sizes).unwrap();
    tensor.split_with_sizes(&sizes, 0)
}

#[test]
fn evaluate_metrics_match_open_clip() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = common::run_oracle(ORACLE, &["evaluate", dir.path().to_str().unwrap()]);
    let expected: Vec<(String, String)> = serde_json::from_str(&stdout).unwrap();
    let inputs = read(&dir.path().join("inputs.safetensors"));

    let mut metrics = Vec::new();
    let zero_shot_sets = [
        (ZeroShotSet::ImagenetVal, "imagenet_val"),
        (ZeroShotSet::ImagenetV2, "imagenet_v2"),
    ];
    for (set, key) in zero_shot_sets {
        let sizes = &inputs["zero_shot_batch_sizes"];
        let features = batches(&inputs[&format!("{key}_features")], sizes);
        let targets = batches(&inputs[&format!("{key}_targets")], sizes);
        let mut accuracy = ZeroShotAccuracy::new();
        for (features, targets) in features.iter().zip(&targets) {
            let logits = zero_shot_logits(features, &inputs["classifier"]);
            accuracy.add_batch(&logits, targets).unwrap();
        }
        metrics.extend(accuracy.finish(set).unwrap());
    }
    let mut validation = ValidationMetrics::new();
    let sizes = &inputs["val_batch_sizes"];
    let images = batches(&inputs["val_images"], sizes);
    let texts = batches(&inputs["val_texts"], sizes);
    for (images, texts) in images.iter().zip(&texts) {
        validation
            .add_batch(images, texts, &inputs["logit_scale"])
            .unwrap();
    }
    metrics.extend(validation.finish(2).unwrap());

    let names: Vec<&str> = metrics.iter().map(|(name, _)| name.as_str()).collect();
    let expected_names: Vec<&str> = expected.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, expected_names, "metric names and order");
    for ((name, value), (_, expected)) in metrics.iter().zip(&expected) {
        let expected: f64 = expected.parse().unwrap();
        if name == "clip_val_loss" {
            // Same libtorch fp32 kernels in the same order, so this should be
            // bit-equal; 1e-6 relative still allows a different SIMD split
            // of the cross-entropy sums (a few fp32 ulps).
            let relative = (value - expected).abs() / expected.abs();
            assert!(relative <= 1e-6, "{name}: {value} vs OpenCLIP {expected}");
        } else {
            // Ranks, recalls and accuracies are counts: exact.
            assert_eq!(*value, expected, "{name}");
        }
    }
}

#[test]
fn zero_shot_classifier_matches_open_clip() {
    // Classes 830..845 hold ImageNet's two "sunglasses" classes (836, 837).
    let (first, count) = (830, 15);
    let dir = tempfile::tempdir().unwrap();
    let config_path = format!("{}/tests/data/tiny-vit.json", env!("CARGO_MANIFEST_DIR"));
    let (first_arg, count_arg) = (first.to_string(), count.to_string());
    common::run_oracle(
        ORACLE,
        &[
            "classifier",
            dir.path().to_str().unwrap(),
            &config_path,
            &first_arg,
            &count_arg,
        ],
    );

    let config_text = fs::read_to_string(&config_path).unwrap();
    let config =
        ModelConfig::from_json(&config_text, &config_path, &ModelOverrides::default()).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let model = Clip::new(&vs.root(), &config).unwrap();
    let weights = Tensor::read_safetensors(dir.path().join("weights.safetensors")).unwrap();
    load_strict(&vs, &weights, "weights.safetensors").unwrap();
    let tokenizer = ClipTokenizer::new().unwrap();
    let context_length = model.context_length as usize;

    let classifier = build_zero_shot_classifier(
        &imagenet_class_names()[first..first + count],
        openai_imagenet_templates(),
        |prompts: &[String]| tokenize_batch(&tokenizer, prompts, context_length),
        |tokens: &Tensor| model.encode_text(tokens),
        Some(OPEN_CLIP_CLASSES_PER_BATCH),
    )
    .unwrap();
    let expected = &read(&dir.path().join("classifier.safetensors"))["classifier"];
    assert_eq!(classifier.size(), expected.size());
    // The text tower agrees with OpenCLIP to ~1e-6 relative (fp32 summation
    // order inside fused attention / layer-norm kernels); averaging 80 unit
    // vectors and renormalising keeps that scale, well inside 1e-5.
    let diff = (&classifier - expected).abs().max().double_value(&[]);
    assert!(diff <= 1e-5, "classifier differs from OpenCLIP's by {diff}");
}

#[test]
fn imagenet_metadata_matches_open_clip() {
    let oracle: Value = serde_json::from_str(&common::run_oracle(ORACLE, &["metadata"])).unwrap();
    let as_strings =
        |key: &str| -> Vec<String> { serde_json::from_value(oracle[key].clone()).unwrap() };
    assert_eq!(imagenet_class_names(), as_strings("class_names"));
    assert_eq!(openai_imagenet_templates(), as_strings("templates"));
}

fn touch(path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, b"").unwrap();
}

#[test]
fn image_folder_lists_as_torchvision() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let files = [
        "b_class/img1.JPG",
        "b_class/img2.png",
        "b_class/notes.txt",
        "b_class/sub/x.jpeg",
        "b_class/sub/deeper/v.png",
        "b_class/sub b/y.webp",
        "b_class/Sub2/z.TIFF",
        "b_class/.hidden.jpg",
        "a class/1.jpeg",
        "a class/10.jpeg",
        "a class/2.jpeg",
        "a class/é.png",
        "a class/Z.Bmp",
        "a class/deep/er/w.pgm",
        ".hiddenclass/p.ppm",
        "C/q.pgm",
        "C/r.gif",
        "C/s.jpg.txt",
        "root_file.jpg",
    ];
    for file in files {
        touch(&root.join(file));
    }
    std::os::unix::fs::symlink(root.join("a class/deep"), root.join("C/linked")).unwrap();

    let oracle: Value = serde_json::from_str(&common::run_oracle(
        ORACLE,
        &["image_folder", root.to_str().unwrap()],
    ))
    .unwrap();
    let folder = ImageFolder::open(root).unwrap();
    let expected_classes: Vec<String> = serde_json::from_value(oracle["classes"].clone()).unwrap();
    assert_eq!(folder.classes, expected_classes);
    let expected_samples: Vec<(String, usize)> =
        serde_json::from_value(oracle["samples"].clone()).unwrap();
    let samples: Vec<(String, usize)> = folder
        .samples
        .iter()
        .map(|sample| {
            let relative = sample.path.strip_prefix(root).unwrap();
            (relative.to_str().unwrap().to_string(), sample.class_index)
        })
        .collect();
    assert_eq!(samples, expected_samples);
}

#[test]
fn image_folder_errors_name_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    touch(&dir.path().join("loose.jpg"));
    let error = format!("{:#}", ImageFolder::open(dir.path()).unwrap_err());
    assert!(
        error.contains(dir.path().to_str().unwrap()) && error.contains("no class folder"),
        "{error}"
    );

    touch(&dir.path().join("cats/a.jpg"));
    touch(&dir.path().join("dogs/readme.txt"));
    let error = format!("{:#}", ImageFolder::open(dir.path()).unwrap_err());
    assert!(
        error.contains(dir.path().to_str().unwrap())
            && error.contains("dogs")
            && !error.contains("cats"),
        "{error}"
    );

    let missing = dir.path().join("missing");
    let error = format!("{:#}", ImageFolder::open(&missing).unwrap_err());
    assert!(error.contains(missing.to_str().unwrap()), "{error}");
}

#[test]
fn imagenet_v2_labels_are_folder_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join(IMAGENET_V2_FOLDER);
    for file in [
        "10/b.jpeg",
        "10/a.jpeg",
        "2/c.jpeg",
        "2/skipped.JPEG",
        "2/notes.txt",
    ] {
        touch(&root.join(file));
    }
    // Labels are the folder numbers, not the folders' sorted positions.
    let listed: Vec<(String, usize)> = list_imagenet_v2(dir.path(), 1000)
        .unwrap()
        .into_iter()
        .map(|image| {
            let relative = image.path.strip_prefix(&root).unwrap();
            (relative.to_str().unwrap().to_string(), image.class_index)
        })
        .collect();
    let expected = [("10/a.jpeg", 10), ("10/b.jpeg", 10), ("2/c.jpeg", 2)];
    assert_eq!(
        listed,
        expected.map(|(path, class)| (path.to_string(), class))
    );

    let error = list_imagenet_v2(dir.path(), 5).unwrap_err().to_string();
    assert!(
        error.contains("10") && error.contains("below the 5 classes"),
        "{error}"
    );
    touch(&root.join("cats/d.jpeg"));
    let error = list_imagenet_v2(dir.path(), 1000).unwrap_err().to_string();
    assert!(error.contains("cats/d.jpeg"), "{error}");
    let error = list_imagenet_v2(&dir.path().join("elsewhere"), 1000)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("--imagenet-v2") && error.contains(IMAGENET_V2_FOLDER),
        "{error}"
    );
}
