//! `clipflow train` from the command line on a tiny model and rendered
//! scenes: validation metrics, every `--precision` the CPU runs, the
//! non-finite-loss stop, the errors a user meets first (a run that already
//! exists, training data that is not there, a pretrained tag), and a
//! topology file of the user's (`--topology`) being what runs, and
//! OpenCLIP's warning for `--aug-cfg` keys only timm reads.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{clipflow_bin, make_scenes};

/// Rendered scenes, 32 px: 256 training pairs in 2 shards.
fn scenes(dir: &Path) -> String {
    make_scenes(dir, 256, 128, 2);
    format!("{}/shards/scenes-{{00000..00001}}.tar", dir.display())
}

/// A tiny ViT CLIP with LayerScale (which OpenCLIP's `bf16` precision
/// cannot run: it leaves the scales in fp32), and the quickstart's model
/// (which it can).
fn model(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(file)
}
const TINY_VIT: &str = "tests/data/tiny-vit.json";
const QUICKSTART_VIT: &str = "src/commands/quickstart_model.json";

/// `clipflow train` on the tiny model with `extra` flags, logging to
/// `logs/<name>`.
fn train(shards: &str, logs: &Path, name: &str, extra: &[&str]) -> Output {
    train_model(TINY_VIT, shards, logs, name, extra)
}

fn train_model(config: &str, shards: &str, logs: &Path, name: &str, extra: &[&str]) -> Output {
    Command::new(clipflow_bin())
        .arg("train")
        .arg("--model")
        .arg(model(config))
        .args(["--train-data", shards, "--dataset-type", "webdataset"])
        .args(["--batch-size", "32", "--workers", "1", "--epochs", "1"])
        .args(["--device", "cpu", "--warmup", "1", "--lr", "1e-3"])
        .arg("--logs")
        .arg(logs)
        .args(["--name", name])
        .args(extra)
        .output()
        .expect("running clipflow train")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn validation_data_gives_openclip_metrics_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let shards = scenes(dir.path());
    let logs = dir.path().join("logs");
    let out = train(
        &shards,
        &logs,
        "val",
        &[
            "--precision",
            "fp32",
            "--val-data",
            &shards,
            "--train-num-samples",
            "64",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let log = std::fs::read_to_string(logs.join("val/out.log")).unwrap();
    // The running loss after the first batch, then all metrics.
    assert!(log.contains("Eval Epoch: 1 [32 / 0]\tClip Loss: "), "{log}");
    let eval = log
        .lines()
        .find(|line| line.contains("Eval Epoch: 1 ") && line.contains("num_samples"))
        .unwrap_or_else(|| panic!("no Eval line in\n{log}"));
    for metric in [
        "image_to_text_mean_rank",
        "image_to_text_R@1",
        "text_to_image_median_rank",
        "clip_val_loss",
        "num_samples: 256.0000",
    ] {
        assert!(eval.contains(metric), "{metric} missing from {eval}");
    }
}

#[test]
fn every_precision_the_cpu_runs_trains_with_a_finite_loss() {
    let dir = tempfile::tempdir().unwrap();
    let shards = scenes(dir.path());
    let logs = dir.path().join("logs");
    for precision in ["fp32", "amp", "amp_bf16", "bf16", "pure_bf16"] {
        let out = train_model(
            QUICKSTART_VIT,
            &shards,
            &logs,
            precision,
            &[
                "--precision",
                precision,
                "--train-num-samples",
                "64",
                "--log-every-n-steps",
                "1",
            ],
        );
        assert!(
            out.status.success(),
            "--precision {precision}: {}",
            stderr(&out)
        );
        let log = std::fs::read_to_string(logs.join(precision).join("out.log")).unwrap();
        let steps = log
            .lines()
            .filter(|line| line.contains("Train Epoch: 0"))
            .count();
        assert_eq!(
            steps, 2,
            "--precision {precision}: two logged steps in\n{log}"
        );
        assert!(
            !log.contains("not finite"),
            "--precision {precision}:\n{log}"
        );
    }
}

#[test]
fn a_loss_that_stays_non_finite_stops_the_run_and_writes_no_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let shards = scenes(dir.path());
    let logs = dir.path().join("logs");
    // An absurd learning rate sends the weights to infinity after a step or
    // two; every later loss is NaN.
    let out = train(
        &shards,
        &logs,
        "nan",
        &[
            "--precision",
            "fp32",
            "--lr",
            "1e30",
            "--log-every-n-steps",
            "1",
        ],
    );
    assert!(!out.status.success(), "the run should stop");
    let err = stderr(&out);
    assert!(err.contains("the loss was not finite"), "{err}");
    let log = std::fs::read_to_string(logs.join("nan/out.log")).unwrap();
    assert!(
        log.contains("| WARNING | step "),
        "skipped steps are logged:\n{log}"
    );
    let checkpoints: Vec<_> = std::fs::read_dir(logs.join("nan/checkpoints"))
        .unwrap()
        .collect();
    assert!(
        checkpoints.is_empty(),
        "no checkpoint (nor temporary file) is left: {checkpoints:?}"
    );
}

#[test]
fn an_existing_run_and_missing_data_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let shards = scenes(dir.path());
    let logs = dir.path().join("logs");
    let flags = ["--precision", "fp32", "--train-num-samples", "32"];
    assert!(train(&shards, &logs, "run", &flags).status.success());
    let again = train(&shards, &logs, "run", &flags);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("experiment already exists"),
        "{}",
        stderr(&again)
    );

    let missing = format!("{}/nowhere/shard-{{0..3}}.tar", dir.path().display());
    let out = train(&missing, &logs, "missing", &["--precision", "fp32"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("nowhere"),
        "the error names the data: {}",
        stderr(&out)
    );

    let tag = train(
        &shards,
        &logs,
        "tag",
        &["--precision", "fp32", "--pretrained", "openai"],
    );
    assert!(!tag.status.success());
    assert!(
        stderr(&tag).contains("--pretrained openai: not a file, nor a pretrained tag of"),
        "{}",
        stderr(&tag)
    );
}

#[test]
fn a_topology_file_of_the_users_is_what_runs() {
    let dir = tempfile::tempdir().unwrap();
    let shards = scenes(dir.path());
    let logs = dir.path().join("logs");
    // clipflow's train.toml re-linked: the evaluator and its validation
    // path taken out, the logger reading the step executor alone.
    let mine = dir.path().join("train.toml");
    let relinked = "extends = \"train.toml\"\n\
                    remove = [\"evaluator\", \"validation-reader\", \"validation-decoder\", \
                    \"validation-augmenter\", \"validation-batcher\"]\n\n\
                    [stages.logger]\ninputs = [\"step-executor\"]\n";
    std::fs::write(&mine, relinked).unwrap();
    let flags = [
        "--precision",
        "fp32",
        "--train-num-samples",
        "64",
        "--val-data",
        &shards,
        "--copy-codebase",
        "--topology",
        mine.to_str().unwrap(),
    ];
    let out = train(&shards, &logs, "mine", &flags);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = std::fs::read_to_string(logs.join("mine/out.log")).unwrap();
    assert!(log.contains("Train Epoch: 0"), "{log}");
    assert!(!log.contains("Eval Epoch"), "no evaluator ran:\n{log}");
    // The run folder keeps every file the topology was read from.
    let code = logs.join("mine/code");
    assert_eq!(
        std::fs::read_to_string(code.join("train.toml")).unwrap(),
        relinked
    );
    let standard = Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies");
    for (copy, original) in [
        ("base-1-train.toml", "train.toml"),
        ("train-data.toml", "train-data.toml"),
    ] {
        assert_eq!(
            std::fs::read_to_string(code.join(copy)).unwrap(),
            std::fs::read_to_string(standard.join(original)).unwrap(),
            "{copy}"
        );
    }

    // The evaluator has no loader of its own: without the validation path
    // it names the stage it misses, where train.toml names it.
    // (In a folder of its own: beside the file above, train.toml is that.)
    std::fs::create_dir(dir.path().join("other")).unwrap();
    let no_path = dir.path().join("other/no-validation-path.toml");
    let removed = "extends = \"train.toml\"\n\
                   remove = [\"validation-reader\", \"validation-decoder\", \
                   \"validation-augmenter\", \"validation-batcher\"]\n";
    std::fs::write(&no_path, removed).unwrap();
    let out = train(
        &shards,
        &logs,
        "no-validation-path",
        &[
            "--precision",
            "fp32",
            "--val-data",
            &shards,
            "--topology",
            no_path.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let standard = Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies/train.toml");
    let standard_text = std::fs::read_to_string(&standard).unwrap();
    let line = standard_text
        .lines()
        .position(|l| l.starts_with("validation = "))
        .unwrap()
        + 1;
    let wanted = format!(
        "train.toml:{line}: stage 'evaluator': side input 'validation-batcher' is not a component"
    );
    assert!(
        stderr(&out).contains(&wanted),
        "wanted {wanted} in {}",
        stderr(&out)
    );

    // A setting no stage reads is an error naming the file, line and stage;
    // so is a schedule that the flags set for the whole run.
    let bad = dir.path().join("misspelt.toml");
    std::fs::write(
        &bad,
        "extends = \"train.toml\"\n\n[stages.batcher]\nbatchsize = 8\n\n\
         [stages.checkpointer]\nsave_frequency = 2\n",
    )
    .unwrap();
    let out = train(
        &shards,
        &logs,
        "misspelt",
        &["--precision", "fp32", "--topology", bad.to_str().unwrap()],
    );
    assert!(!out.status.success());
    for wanted in [
        format!("{}:4: stage 'batcher'", bad.display()),
        format!(
            "{}:7: stage 'checkpointer': kind 'checkpointer' has no setting 'save_frequency'",
            bad.display()
        ),
    ] {
        assert!(
            stderr(&out).contains(&wanted),
            "wanted {wanted} in {}",
            stderr(&out)
        );
    }
}

#[test]
fn training_data_that_is_not_there_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let missing = dir.path().join("nowhere/shard-{00000..00003}.tar");
    let out = train(missing.to_str().unwrap(), &logs, "missing", &[]);
    assert!(!out.status.success());
    let wanted = format!(
        "no such shard {} (nor any other of the 4 shards it names)",
        dir.path().join("nowhere/shard-00000.tar").display()
    );
    assert!(
        stderr(&out).contains(&wanted),
        "wanted {wanted} in {}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("number of training samples"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn aug_cfg_keys_only_timm_reads_are_accepted_with_open_clips_warning() {
    let dir = tempfile::tempdir().unwrap();
    let shards = scenes(dir.path());
    let logs = dir.path().join("logs");
    let flags = [
        "--precision",
        "fp32",
        "--train-num-samples",
        "32",
        "--aug-cfg",
        "scale=(0.9,1.0)",
        "ratio=(0.75,1.33)",
    ];
    let out = train(&shards, &logs, "ratio", &flags);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = std::fs::read_to_string(logs.join("ratio/out.log")).unwrap();
    assert!(
        log.contains(
            "WARNING | Unused augmentation cfg items, specify `use_timm` to use (['ratio'])."
        ),
        "{log}"
    );
}

/// `--force-image-size` and `--force-context-length` reach the loading path
/// as well as the model: the run trains on images and captions of the
/// forced sizes (the model's own 32x32 and 16 tokens would not fit it), and
/// its validation pass too.
#[test]
fn forced_image_size_and_context_length_train() {
    let dir = tempfile::tempdir().unwrap();
    let shards = scenes(&dir.path().join("scenes"));
    let logs = dir.path().join("logs");
    let forced = [
        "--precision",
        "fp32",
        "--force-image-size",
        "40",
        "24",
        "--force-context-length",
        "20",
        "--val-data",
        &shards,
    ];
    let out = train(&shards, &logs, "forced", &forced);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = std::fs::read_to_string(logs.join("forced/out.log")).unwrap();
    assert!(log.contains("Train Epoch: 0"), "{log}");
    assert!(log.contains("val_loss"), "{log}");
}

/// A HuggingFace text tower trains from the command line with everything
/// it needs read offline from the hub cache given by `--cache-dir`: the
/// model's config.json, its weights (the tower's starting point) and its
/// tokenizer. OpenCLIP then loads the checkpoint clipflow wrote, strictly,
/// and its `encode_text` with the model's own tokenizer equals `clipflow
/// embed`'s on that checkpoint (fp32 on both sides: within 1e-4).
#[test]
fn a_huggingface_text_tower_trains_from_the_hub_cache() {
    let dir = tempfile::tempdir().unwrap();
    let shards = scenes(&dir.path().join("scenes"));
    let hub = common::hf_text_cache("roberta-base", "roberta", &["--weights", "--tokenizer"]);
    let cache = hub.path();
    let cache_dir = cache.to_str().unwrap();
    let logs = dir.path().join("logs");
    let flags = [
        "--cache-dir",
        cache_dir,
        "--precision",
        "fp32",
        "--save-frequency",
        "1",
    ];
    let out = train_model("tests/data/hf-roberta.json", &shards, &logs, "hf", &flags);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = std::fs::read_to_string(logs.join("hf/out.log")).unwrap();
    assert!(log.contains("Train Epoch: 0"), "{log}");
    let checkpoint = logs.join("hf/checkpoints/epoch_1.pt");

    let texts = dir.path().join("texts.txt");
    std::fs::write(
        &texts,
        "a photo of a red circle\ngreen square on the left\n",
    )
    .unwrap();
    let config = model("tests/data/hf-roberta.json");
    let expected = dir.path().join("expected.safetensors");
    common::run_oracle(
        include_str!("oracle/hf_checkpoint_features.py"),
        &[
            config.to_str().unwrap(),
            cache_dir,
            checkpoint.to_str().unwrap(),
            texts.to_str().unwrap(),
            expected.to_str().unwrap(),
        ],
    );
    let ours = dir.path().join("ours.safetensors");
    common::run_clipflow(&[
        "embed".as_ref(),
        "--model".as_ref(),
        config.as_os_str(),
        "--pretrained".as_ref(),
        checkpoint.as_os_str(),
        "--cache-dir".as_ref(),
        cache.as_os_str(),
        "--texts".as_ref(),
        texts.as_os_str(),
        "--output".as_ref(),
        ours.as_os_str(),
        "--device".as_ref(),
        "cpu".as_ref(),
    ]);
    let read = |path: &Path| -> std::collections::HashMap<String, tch::Tensor> {
        tch::Tensor::read_safetensors(path)
            .unwrap()
            .into_iter()
            .collect()
    };
    let (ours, expected) = (read(&ours), read(&expected));
    let diff = (&ours["text_features"] - &expected["text_features"])
        .abs()
        .max()
        .double_value(&[]);
    assert!(diff <= 1e-4, "text features differ by {diff}");
}
