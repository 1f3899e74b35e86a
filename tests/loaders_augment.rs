//! The augmenter's training mode in the default loading topology
//! (topologies/train-data.toml): it applies OpenCLIP's training transform
//! with the `--aug-cfg` settings, drawing from a random stream per sample
//! seeded from (seed, epoch, rank, the sample's place), so a run repeats
//! with its seed, changes with another, and does not depend on which
//! worker took a sample; `mode = "val"` applies the validation
//! transform; bad `--aug-cfg` text is an error naming the key, the file and
//! the component. The pixels of the training transform itself are compared
//! with torchvision's in tests/train_transform_parity.rs.

mod common;
mod loaders_support;

use std::sync::Arc;

use clipflow_actors::augmenter::{AugmentedSample, Augmenter, AugmenterConfig};
use clipflow_actors::decoder::DecodedSample;
use clipflow_actors::kinds::standard_registry;
use clipflow_actors::load_stream::Place;
use clipflow_actors::topology::{FlagValues, Settings, Topology};
use clipflow_core::transform::{
    normalized_channels_first, AugmentationCfg, Interpolation, ResizeMode, RgbImage,
    TrainTransform, ValTransform, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD,
};
use loaders_support::{
    bench_summary, make_test_shards, run_bench, run_train_data, train_data_topology, LoadingRun,
};
use rand::{Rng, SeedableRng};
use tch::Tensor;

/// ViT-B-32's input side.
const SIDE: i64 = 224;

/// One epoch of 8 photographs in batches of 4.
fn one_worker_epoch(shards: &str, seed: &str, aug_cfg: &str) -> LoadingRun {
    run_train_data(&[
        ("train-data", shards),
        ("batch-size", "4"),
        ("workers", "1"),
        ("model", "ViT-B-32"),
        ("seed", seed),
        ("aug-cfg", aug_cfg),
    ])
    .unwrap()
}

/// Every image of a run, in order.
fn images(run: &LoadingRun) -> Vec<Tensor> {
    run.batches
        .iter()
        .flat_map(|batch| (0..batch.keys.len() as i64).map(|row| batch.images.get(row)))
        .collect()
}

#[test]
fn training_augmentations_repeat_with_the_seed_and_follow_aug_cfg() {
    let dir = tempfile::tempdir().unwrap();
    make_test_shards(dir.path(), 2, 4);
    let shards = format!("{}/shard-{{00000..00001}}.tar", dir.path().display());

    let first = one_worker_epoch(&shards, "1", "");
    let again = one_worker_epoch(&shards, "1", "");
    assert_eq!(first.keys().len(), 8);
    assert_eq!(first.keys(), again.keys());
    for (a, b) in images(&first).iter().zip(images(&again)) {
        assert!(a.equal(&b), "the same seed gave different augmentations");
    }

    // Another seed reorders the epoch too, so compare sample by sample.
    let reseeded = one_worker_epoch(&shards, "2", "");
    let by_key = |run: &LoadingRun| -> std::collections::BTreeMap<String, Tensor> {
        run.keys().into_iter().zip(images(run)).collect()
    };
    let (first_by_key, reseeded_by_key) = (by_key(&first), by_key(&reseeded));
    for (key, image) in &first_by_key {
        assert!(
            !image.equal(&reseeded_by_key[key]),
            "sample {key}: seeds 1 and 2 gave the same crop"
        );
    }

    // Same seed and order, smaller crops: every image changes.
    let zoomed = one_worker_epoch(&shards, "1", "scale=(0.5,0.6)");
    assert_eq!(first.keys(), zoomed.keys());
    for (key, (a, b)) in first
        .keys()
        .iter()
        .zip(images(&first).iter().zip(images(&zoomed)))
    {
        assert!(!a.equal(&b), "sample {key}: --aug-cfg scale had no effect");
    }
}

/// Settings of an augmenter component for ViT-B-32.
fn augmenter_settings(pairs: &[(&str, toml::Value)]) -> Settings {
    let mut settings = Settings::new();
    settings.insert("model", "ViT-B-32".into(), None);
    for (key, value) in pairs {
        settings.insert(key, value.clone(), None);
    }
    settings
}

/// Stand-ins for photographs: random pixels in a few shapes, wider and
/// taller than the output.
fn noise_samples() -> Vec<DecodedSample> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    [(300, 200), (180, 260), (224, 224), (640, 100)]
        .into_iter()
        .enumerate()
        .map(|(index, (width, height))| {
            let pixels = (0..width * height * 3).map(|_| rng.random()).collect();
            DecodedSample {
                key: format!("{index:04}"),
                origin: "noise".into(),
                image: RgbImage::from_raw(width, height, pixels).unwrap(),
                caption: "a photo of noise".into(),
            }
        })
        .collect()
}

fn as_tensor(sample: &AugmentedSample) -> Tensor {
    let (height, width) = sample.image_size();
    Tensor::from_slice(&sample.image()).view([3, height as i64, width as i64])
}

#[test]
fn train_mode_is_the_training_transform_with_aug_cfg_and_the_sample_stream() {
    let aug_cfg = "scale=(0.3, 0.5) color_jitter=(0.4,0.4,0.4,0.1) color_jitter_prob=0.8 \
                   gray_scale_prob=0.5";
    let settings = augmenter_settings(&[
        ("mode", "train".into()),
        ("seed", 5.into()),
        ("rank", 1.into()),
        ("aug_cfg", aug_cfg.into()),
    ]);
    let config = Arc::new(AugmenterConfig::from_settings(&settings).unwrap());
    // The same settings, written out by hand: parsing must not drop any.
    let expected_cfg = AugmentationCfg {
        scale: (0.3, 0.5),
        color_jitter: Some(vec![0.4, 0.4, 0.4, 0.1]),
        color_jitter_prob: Some(0.8),
        gray_scale_prob: Some(0.5),
        ..AugmentationCfg::default()
    };
    let side = SIDE as u32;
    let transform = TrainTransform::new(
        (side, side),
        OPENAI_DATASET_MEAN,
        OPENAI_DATASET_STD,
        &expected_cfg,
    )
    .unwrap();

    // Two augmenters (two workers) give each place the draws of its own
    // stream, in whatever order they take the samples.
    let first = Augmenter::new(Arc::clone(&config));
    let second = Augmenter::new(Arc::clone(&config));
    let samples = noise_samples();
    for (index, sample) in samples.iter().enumerate().rev() {
        let place = Place {
            epoch: 2,
            index: index as u64,
        };
        let mut rng = config.sample_rng(place);
        let expected = transform.apply(&sample.image, &mut rng).unwrap();
        let augmenter = if index % 2 == 0 { &first } else { &second };
        let augmented = augmenter.augment(place, sample.clone()).unwrap();
        // The same draws and the same pixel operations: bit-identical.
        assert!(as_tensor(&augmented).equal(&expected));
        assert_eq!(augmented.tokens.len(), 77);
    }

    // Each place, epoch, seed and rank draws its own numbers.
    let first_draws = |config: &AugmenterConfig, place| -> Vec<u64> {
        let mut rng = config.sample_rng(place);
        (0..4).map(|_| rng.random()).collect()
    };
    let place = Place { epoch: 2, index: 7 };
    let reference = first_draws(&config, place);
    assert_ne!(reference, first_draws(&config, Place { index: 8, ..place }));
    assert_ne!(reference, first_draws(&config, Place { epoch: 3, ..place }));
    for (key, value) in [("seed", 6), ("rank", 0)] {
        let mut pairs = vec![("seed", 5.into()), ("rank", 1.into())];
        pairs.retain(|(k, _)| *k != key);
        pairs.push((key, value.into()));
        let other = AugmenterConfig::from_settings(&augmenter_settings(&pairs)).unwrap();
        assert_ne!(
            reference,
            first_draws(&other, place),
            "{key} left the draws alone"
        );
    }
}

#[test]
fn val_mode_is_the_validation_transform_and_takes_no_aug_cfg() {
    let settings = augmenter_settings(&[
        ("mode", "val".into()),
        ("image_resize_mode", "squash".into()),
    ]);
    let config = Arc::new(AugmenterConfig::from_settings(&settings).unwrap());
    let side = SIDE as u32;
    let transform = ValTransform::new(
        (side, side),
        OPENAI_DATASET_MEAN,
        OPENAI_DATASET_STD,
        Interpolation::Bicubic,
        ResizeMode::Squash,
    );
    let augmenter = Augmenter::new(config);
    for (index, sample) in noise_samples().into_iter().enumerate() {
        let pixels = transform.resize_and_crop(&sample.image);
        let expected = normalized_channels_first(&pixels, transform.mean, transform.std);
        let place = Place {
            epoch: 0,
            index: index as u64,
        };
        assert_eq!(augmenter.augment(place, sample).unwrap().image(), expected);
    }

    let refused = AugmenterConfig::from_settings(&augmenter_settings(&[
        ("mode", "val".into()),
        ("aug_cfg", "scale=(0.5,1.0)".into()),
    ]));
    let message = format!("{:#}", refused.err().expect("aug_cfg in val mode"));
    assert!(message.contains("aug_cfg"), "{message}");
}

/// The errors of loading topologies/train-data.toml with `flags`.
fn load_errors(flags: &[(&str, &str)]) -> String {
    let mut values = FlagValues::new();
    for (name, value) in flags {
        values.set(name, value);
    }
    let registry = standard_registry();
    match Topology::load(&train_data_topology(), &values, &registry) {
        Ok(_) => panic!("flags {flags:?} were accepted"),
        Err(errors) => errors.to_string(),
    }
}

#[test]
fn bad_aug_cfg_is_an_error_naming_the_key_file_and_stage() {
    let synthetic = [("dataset-type", "synthetic"), ("train-num-samples", "4")];
    let with = |aug_cfg| {
        let mut flags = synthetic.to_vec();
        flags.push(("aug-cfg", aug_cfg));
        load_errors(&flags)
    };
    // The error points at the aug_cfg line of the augmenter's table.
    let unknown = with("scale=(0.5,1.0) flip_prob=0.5");
    let aug_cfg_line = std::fs::read_to_string(train_data_topology())
        .unwrap()
        .lines()
        .position(|line| line.starts_with("aug_cfg"))
        .unwrap()
        + 1;
    let place = format!("train-data.toml:{aug_cfg_line}: stage 'augmenter'");
    for part in [
        &place,
        "setting 'aug_cfg'",
        "--aug-cfg flip_prob",
        "unknown key",
    ] {
        assert!(unknown.contains(part), "{part:?} missing from: {unknown}");
    }
    // Values out of range.
    for (aug_cfg, key) in [
        ("gray_scale_prob=2", "gray_scale_prob"),
        ("scale=(0.9,0.1)", "scale"),
    ] {
        let message = with(aug_cfg);
        assert!(
            message.contains(&place) && message.contains(key),
            "{message}"
        );
    }
}

#[test]
fn bench_data_runs_with_colour_jitter_and_grey_scale() {
    let dir = tempfile::tempdir().unwrap();
    make_test_shards(dir.path(), 2, 4);
    let shards = format!("{}/shard-{{00000..00001}}.tar", dir.path().display());
    #[rustfmt::skip]
    let (ok, stdout, stderr) = run_bench(&[
        "--train-data", &shards, "--batch-size", "4", "--workers", "2", "--model", "ViT-B-32",
        "--aug-cfg", "color_jitter=(0.4,0.4,0.4,0.1)", "color_jitter_prob=0.8",
        "gray_scale_prob=0.2",
    ]);
    assert!(ok, "bench failed: {stderr}");
    let summary = bench_summary(&stdout);
    assert_eq!(summary["images"], 8);
    assert_eq!(summary["batches"], 2);
}

/// `force_image_size` and `force_context_length` (from `--force-image-size`
/// and `--force-context-length`) size the augmenter's images and token rows
/// as they size the model.
#[test]
fn forced_image_size_and_context_length_shape_the_samples() {
    let settings = augmenter_settings(&[
        ("mode", "val".into()),
        ("force_image_size", "40 24".into()),
        ("force_context_length", 20.into()),
    ]);
    let augmenter = Augmenter::new(Arc::new(AugmenterConfig::from_settings(&settings).unwrap()));
    let sample = noise_samples().remove(0);
    let place = Place { epoch: 0, index: 0 };
    let augmented = augmenter.augment(place, sample).unwrap();
    assert_eq!(augmented.image_size(), (40, 24));
    assert_eq!(augmented.tokens.len(), 20);
    // Unset (0 and empty, as train-data.toml's defaults): the model's.
    let settings = augmenter_settings(&[
        ("mode", "val".into()),
        ("force_image_size", "".into()),
        ("force_context_length", 0.into()),
    ]);
    let augmenter = Augmenter::new(Arc::new(AugmenterConfig::from_settings(&settings).unwrap()));
    let augmented = augmenter.augment(place, noise_samples().remove(0)).unwrap();
    assert_eq!(augmented.image_size(), (SIDE as usize, SIDE as usize));
    assert_eq!(augmented.tokens.len(), 77);
    let refused = AugmenterConfig::from_settings(&augmenter_settings(&[(
        "force_image_size",
        "40 24 3".into(),
    )]));
    let message = format!("{:#}", refused.err().expect("three sizes"));
    assert!(message.contains("force_image_size"), "{message}");
}
