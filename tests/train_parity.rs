//! `clipflow train` against OpenCLIP's own `open_clip_train.main.main`,
//! both run at test time from the same initial weights on the same data:
//! per-step losses, learning rates and logit scales (read from each run's
//! TensorBoard events with TensorBoard's reader), the final weights of the
//! epoch checkpoints, and clipflow's checkpoint loading strictly into
//! OpenCLIP with the features of OpenCLIP's own trained model. Cases, 37
//! optimiser steps in all: cosine schedule with warmup and
//! `--grad-clip-norm`, const schedule with `--accum-freq 2`, const-cooldown
//! with `--siglip`, a tiny CoCa (CoCaLoss, each logged loss term) alone and
//! with `--accum-freq 2`, a shard with an image that does not decode, a
//! timm SigLIP tower with `--siglip`, `--lock-image` and
//! `--grad-checkpointing`, and distillation from a teacher checkpoint. Also: clipflow resuming OpenCLIP's checkpoint of the
//! first case's half-way epoch (weights, AdamW state keyed in OpenCLIP's
//! parameter order, epoch) ends where OpenCLIP's own run ends.
//!
//! Identical batches: OpenCLIP seeds its webdataset sample shuffle from the
//! clock, so no order can be reproduced. Each epoch therefore holds exactly
//! one optimiser step (one shard of 16 samples at batch size 16, or two at
//! `--accum-freq 2`), and both losses are sums over all pairs of the step's
//! samples, which do not depend on their order. Images are PNGs already at
//! the model's size (32x32, 224x224 for the timm tower) and `--aug-cfg
//! scale=(1.0,1.0)`: every crop RandomResizedCrop can accept at that scale
//! (or its fallback) is the whole image, and resizing to the same size leaves it as is; the loss of
//! the first step agreeing checks that both saw the same pixels.

mod common;

use std::path::Path;

use common::parity::{assert_series_close, assert_weights_close, series};
use common::{make_scenes, run_clipflow, TINY_TRAIN_CONFIG};
use serde_json::{json, Value};

const ORACLE: &str = include_str!("oracle/train_parity.py");

const MODEL_NAME: &str = "parity-tiny";
const COCA_MODEL_NAME: &str = "parity-tiny-coca";
/// tests/data/timm-map-tower.json (not named "siglip": OpenCLIP would pick
/// its SigLIP tokenizer for such a name).
const TIMM_MODEL_NAME: &str = "parity-timm";

struct Case {
    name: &'static str,
    /// The model config's name (its file stem): a name with "coca" takes
    /// CoCaLoss on both sides.
    model: &'static str,
    /// Shards of 16 samples each: one step per epoch.
    shards: &'static str,
    epochs: usize,
    flags: &'static [&'static str],
    siglip: bool,
    /// Distils from the first case's half-way OpenCLIP checkpoint (a
    /// `parity-tiny` teacher), with `--distill-model` and
    /// `--distill-pretrained`.
    distill: bool,
}

const CASES: [Case; 8] = [
    Case {
        name: "cosine-clip",
        model: MODEL_NAME,
        shards: "scenes-00000.tar",
        epochs: 8,
        flags: &[
            "--lr-scheduler",
            "cosine",
            "--warmup",
            "3",
            "--grad-clip-norm",
            "1.0",
        ],
        siglip: false,
        distill: false,
    },
    Case {
        name: "const-accum",
        model: MODEL_NAME,
        shards: "scenes-{00001..00002}.tar",
        epochs: 6,
        flags: &[
            "--lr-scheduler",
            "const",
            "--warmup",
            "2",
            "--accum-freq",
            "2",
        ],
        siglip: false,
        distill: false,
    },
    Case {
        name: "cooldown-siglip",
        model: MODEL_NAME,
        shards: "scenes-00000.tar",
        epochs: 6,
        flags: &[
            "--lr-scheduler",
            "const-cooldown",
            "--epochs-cooldown",
            "2",
            "--warmup",
            "2",
            "--siglip",
        ],
        siglip: true,
        distill: false,
    },
    Case {
        name: "const-coca",
        model: COCA_MODEL_NAME,
        shards: "scenes-00000.tar",
        epochs: 4,
        flags: &[
            "--lr-scheduler",
            "const",
            "--warmup",
            "2",
            "--coca-caption-loss-weight",
            "1.5",
        ],
        siglip: false,
        distill: false,
    },
    Case {
        name: "accum-coca",
        model: COCA_MODEL_NAME,
        shards: "scenes-{00001..00002}.tar",
        epochs: 4,
        flags: &[
            "--lr-scheduler",
            "const",
            "--warmup",
            "2",
            "--accum-freq",
            "2",
        ],
        siglip: false,
        distill: false,
    },
    // One of the shard's 17 images does not decode: both loaders go on
    // along their stream past it, so the epoch's step still has 16 samples
    // (clipflow takes the 17th from the spares it reads after the epoch's
    // share), the same 16 on both sides.
    Case {
        name: "undecodable-image",
        model: MODEL_NAME,
        shards: "damaged-00000.tar",
        epochs: 3,
        flags: &[
            "--lr-scheduler",
            "const",
            "--warmup",
            "2",
            "--train-num-samples",
            "16",
        ],
        siglip: false,
        distill: false,
    },
    // A timm image tower (timm's SigLIP ViT-B/16 with its MAP head, on
    // 224-pixel scenes) trained with the SigLIP loss, locked but for its
    // last two groups (the MAP head, the last block and `norm`), its blocks
    // under activation checkpointing.
    Case {
        name: "timm-siglip",
        model: TIMM_MODEL_NAME,
        shards: "timm-00000.tar",
        epochs: 2,
        flags: &[
            "--lr-scheduler",
            "const",
            "--warmup",
            "2",
            "--train-num-samples",
            "16",
            "--siglip",
            "--lock-image",
            "--lock-image-unlocked-groups",
            "2",
            "--grad-checkpointing",
        ],
        siglip: true,
        distill: false,
    },
    Case {
        name: "distill",
        model: MODEL_NAME,
        shards: "scenes-00000.tar",
        epochs: 4,
        flags: &["--lr-scheduler", "const", "--warmup", "2"],
        siglip: false,
        distill: true,
    },
];

const LR: f64 = 1e-3;

/// The flags both runs of `case` share, all but `--model` and `--logs`.
fn shared_flags(case: &Case, shards: &Path, initial: &Path) -> Vec<String> {
    let epochs = case.epochs.to_string();
    let half = (case.epochs / 2).to_string();
    let mut flags: Vec<String> = [
        "--train-data",
        shards.join(case.shards).to_str().unwrap(),
        "--dataset-type",
        "webdataset",
        "--batch-size",
        "16",
        "--workers",
        "1",
        "--precision",
        "fp32",
        "--pretrained",
        initial.to_str().unwrap(),
        "--aug-cfg",
        "scale=(1.0,1.0)",
        "--report-to",
        "tensorboard",
        "--log-every-n-steps",
        "1",
        "--seed",
        "0",
        "--epochs",
        &epochs,
        "--save-frequency",
        &half,
        "--lr",
        "1e-3",
        "--name",
        case.name,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    flags.extend(case.flags.iter().map(|s| s.to_string()));
    flags
}

/// The JSON lines the oracle printed, last `count` of them.
fn oracle_results(args: &[&str], count: usize) -> Vec<Value> {
    let stdout = common::run_oracle(ORACLE, args);
    let lines: Vec<&str> = stdout.lines().collect();
    lines[lines.len() - count..]
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn training_steps_match_open_clip() {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path();
    let scenes = root.join("scenes");
    make_scenes(&scenes, 48, 16, 0);
    let shards = scenes.join("shards");
    let seventeen = root.join("seventeen");
    make_scenes(&seventeen, 17, 17, 0);
    common::damage_first_image(
        &seventeen.join("shards/scenes-00000.tar"),
        &shards.join("damaged-00000.tar"),
    );
    // Both configs in one folder, which the oracle registers at once.
    let models = root.join("models");
    std::fs::create_dir(&models).unwrap();
    let config_of = |model: &str| {
        models
            .join(format!("{model}.json"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    std::fs::write(config_of(MODEL_NAME), TINY_TRAIN_CONFIG).unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    std::fs::copy(data.join("tiny-coca.json"), config_of(COCA_MODEL_NAME)).unwrap();
    std::fs::copy(data.join("timm-map-tower.json"), config_of(TIMM_MODEL_NAME)).unwrap();
    let timm_scenes = root.join("timm-scenes");
    common::make_scenes_of_size(&timm_scenes, 16, 16, 0, 224);
    std::fs::copy(
        timm_scenes.join("shards/scenes-00000.tar"),
        shards.join("timm-00000.tar"),
    )
    .unwrap();
    let config = config_of(MODEL_NAME);
    let config = config.as_str();
    let initial_coca = root.join("initial-coca.pt");
    let initial = root.join("initial.pt");
    let initial_siglip = root.join("initial-siglip.pt");
    let initial_timm = root.join("initial-timm.pt");
    let (ours, theirs) = (root.join("ours"), root.join("theirs"));

    let initial_of = |case: &Case| {
        if case.model == TIMM_MODEL_NAME {
            initial_timm.clone()
        } else if case.siglip {
            initial_siglip.clone()
        } else if case.model == COCA_MODEL_NAME {
            initial_coca.clone()
        } else {
            initial.clone()
        }
    };
    // OpenCLIP's run of the first case writes it before the distill case
    // runs (the oracle runs the cases in order).
    let teacher_weights = theirs
        .join(format!(
            "{}/checkpoints/epoch_{}.pt",
            CASES[0].name,
            CASES[0].epochs / 2
        ))
        .to_str()
        .unwrap()
        .to_owned();
    let their_runs: Vec<Vec<String>> = CASES
        .iter()
        .map(|case| {
            let mut flags = shared_flags(case, &shards, &initial_of(case));
            flags.extend(["--model".into(), case.model.into(), "--logs".into()]);
            flags.push(theirs.to_str().unwrap().into());
            if case.distill {
                flags.extend(["--distill-model".into(), MODEL_NAME.into()]);
                flags.extend(["--distill-pretrained".into(), teacher_weights.clone()]);
            }
            flags
        })
        .collect();
    let their_runs = json!(their_runs).to_string();
    common::run_oracle(
        ORACLE,
        &[
            "init",
            config,
            initial.to_str().unwrap(),
            "+",
            "init",
            config,
            initial_siglip.to_str().unwrap(),
            "siglip",
            "+",
            "init",
            &config_of(COCA_MODEL_NAME),
            initial_coca.to_str().unwrap(),
            "+",
            "init",
            &config_of(TIMM_MODEL_NAME),
            initial_timm.to_str().unwrap(),
            "siglip",
            "+",
            "main",
            models.to_str().unwrap(),
            &their_runs,
        ],
    );
    for case in &CASES {
        let mut args = vec!["train".to_string()];
        args.extend(shared_flags(case, &shards, &initial_of(case)));
        args.extend(["--model".into(), config_of(case.model), "--logs".into()]);
        args.push(ours.to_str().unwrap().into());
        if case.distill {
            args.extend(["--distill-model".into(), config_of(MODEL_NAME)]);
            args.extend(["--distill-pretrained".into(), teacher_weights.clone()]);
        }
        run_clipflow(&args);
    }
    // The first case again, from OpenCLIP's half-way checkpoint.
    let resumed = Case {
        name: "cosine-clip-resumed",
        ..CASES[0]
    };
    let mut args = vec!["train".to_string()];
    args.extend(shared_flags(&resumed, &shards, &initial));
    args.extend(["--model".into(), config.into(), "--logs".into()]);
    args.push(ours.to_str().unwrap().into());
    let half_way = format!(
        "{}/checkpoints/epoch_{}.pt",
        CASES[0].name,
        CASES[0].epochs / 2
    );
    args.extend([
        "--resume".into(),
        theirs.join(half_way).to_str().unwrap().into(),
    ]);
    run_clipflow(&args);

    // One oracle call reads everything back: per case the TensorBoard
    // scalars of both runs and the weight comparison, then the features.
    let mut request: Vec<String> = Vec::new();
    let checkpoint = |logs: &Path, case: &Case| {
        let file = format!("{}/checkpoints/epoch_{}.pt", case.name, case.epochs);
        logs.join(file).to_str().unwrap().to_string()
    };
    for case in &CASES {
        let tensorboard = |logs: &Path| logs.join(case.name).join("tensorboard");
        request.extend(["scalars".into(), "train/".into()]);
        request.push(tensorboard(&ours).to_str().unwrap().into());
        request.push(tensorboard(&theirs).to_str().unwrap().into());
        request.extend(["+".into(), "compare".into()]);
        request.push(initial_of(case).to_str().unwrap().into());
        request.push(checkpoint(&ours, case));
        request.push(checkpoint(&theirs, case));
        request.push("+".into());
    }
    request.extend(["compare".into(), initial.to_str().unwrap().into()]);
    request.push(checkpoint(&ours, &resumed));
    request.push(checkpoint(&theirs, &CASES[0]));
    request.extend(["+".into(), "features".into(), config.into()]);
    request.push(checkpoint(&ours, &CASES[0]));
    request.push(checkpoint(&theirs, &CASES[0]));
    let request: Vec<&str> = request.iter().map(String::as_str).collect();
    let results = oracle_results(&request, 2 * CASES.len() + 2);

    for (case, result) in CASES.iter().zip(results.chunks(2)) {
        let (scalars, weights) = (&result[0], &result[1]);
        let (our_scalars, their_scalars) = (&scalars[0], &scalars[1]);
        assert_eq!(
            series(their_scalars, "train/loss").len(),
            case.epochs,
            "{}: one step per epoch",
            case.name
        );
        // fp32 forward passes summed in different orders (the batch order
        // differs): agreement to ~1e-6 relative, 1e-4 leaves room for the
        // later steps' weights differing by Adam's rounding (below).
        // Every loss term OpenCLIP logs (train/contrastive_loss, and
        // train/caption_loss for CoCa) and the total.
        let mut tags: Vec<&str> = their_scalars
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .filter(|tag| tag.ends_with("loss"))
            .collect();
        if case.model == COCA_MODEL_NAME {
            assert!(tags.contains(&"train/caption_loss"), "{tags:?}");
        }
        tags.push("train/scale");
        for tag in tags {
            assert_series_close(case.name, tag, our_scalars, their_scalars, 1e-4);
        }
        // The schedules are the same formula; both are stored as float32.
        assert_series_close(case.name, "train/lr", our_scalars, their_scalars, 1e-9);
        let lr_sum: f64 = series(their_scalars, "train/lr").iter().map(|p| p.1).sum();

        assert_weights_close(case.name, weights, lr_sum);
        assert!(lr_sum > 0.0 && lr_sum <= LR * case.epochs as f64);
    }

    // Resumed from OpenCLIP's epoch 4: where OpenCLIP's run ended.
    let their_lr_sum: f64 = series(&results[0][1], "train/lr").iter().map(|p| p.1).sum();
    assert_weights_close(resumed.name, &results[2 * CASES.len()], their_lr_sum);

    // clipflow's checkpoint loads strictly into open_clip.create_model and
    // gives the features of OpenCLIP's own model trained the same way: the
    // weights agree to 1e-5, which moves fp32 features by well under 1e-3 of
    // their size.
    let features = &results[2 * CASES.len() + 1];
    for (what, scale) in [("image", "image_scale"), ("text", "text_scale")] {
        let diff = features[what].as_f64().unwrap();
        let scale = features[scale].as_f64().unwrap();
        assert!(
            diff <= 1e-3 * scale,
            "{what} features differ by {diff} (size {scale})"
        );
    }

    for case in &CASES {
        let run = ours.join(case.name);
        assert!(
            run.join("params.txt").is_file(),
            "{}: no params.txt",
            case.name
        );
        let log = std::fs::read_to_string(run.join("out.log")).unwrap();
        let train_lines = log.lines().filter(|l| l.contains("Train Epoch: ")).count();
        assert_eq!(
            train_lines, case.epochs,
            "{}: out.log Train Epoch lines",
            case.name
        );
    }
}
