//! `clipflow train` flags against OpenCLIP 3.3.0's own parser: for the same
//! argv, `TrainArgs::to_open_clip_namespace` must equal
//! `vars(open_clip_train.params.parse_args(argv))`; bad values must fail with
//! an error naming the flag; `clipflow train --help` must list every flag
//! of the user's flag reference; and docs/train-flags.md has a row for
//! exactly the flags of `--help`, marking rejected exactly the ones
//! `clipflow train` refuses.

mod common;

use clipflow::train_args::{parse_train_args, TrainArgs};
use clipflow_core::transform::AugmentationCfg;
use serde_json::Value;
use std::path::Path;

/// Parses every argv list with OpenCLIP's `parse_args` in one Python process
/// and prints the namespaces as a JSON list.
const ORACLE_PARSE_ARGS: &str = r#"
import json, sys
from open_clip_train.params import parse_args
print(json.dumps([vars(parse_args(argv)) for argv in json.loads(sys.argv[1])]))
"#;

/// Argv lists for the parity test. Together they use every flag of the seed
/// at least once (`every_seed_flag_is_exercised` checks that), both model
/// families for the default lr/betas/eps, and argparse behaviours users rely
/// on: a repeated flag keeps its last value, `--flag=value`, unique prefixes.
#[rustfmt::skip]
fn parity_cases() -> Vec<Vec<&'static str>> {
    vec![
        vec![],
        vec!["--model", "ViT-B-32"],
        vec!["--model", "vit_base_patch16_clip_224", "--wd", "0.05"],
        vec!["--model", "RN50"],
        vec!["--model", "RN101-quickgelu", "--beta2", "0.95"],
        // The seed's small-scale example (RN50 on CC3M).
        vec![
            "--train-data", "/data/cc3m/train.csv", "--dataset-type", "csv",
            "--csv-img-key", "filepath", "--csv-caption-key", "title",
            "--batch-size", "256", "--precision", "amp", "--workers", "4",
            "--warmup", "2000", "--lr", "1e-3", "--wd", "0.1", "--epochs", "30",
            "--model", "RN50", "--save-frequency", "5", "--report-to", "tensorboard",
        ],
        // The seed's medium-scale example (ViT-B/32 on CC12M).
        vec![
            "--train-data", "/data/cc12m/cc12m-{0000..2175}.tar",
            "--train-num-samples", "10968539", "--dataset-type", "webdataset",
            "--dataset-resampled", "--batch-size", "320", "--workers", "6",
            "--imagenet-val", "/data/imagenet/validation/", "--warmup", "10000",
            "--model", "ViT-B-32", "--zeroshot-frequency", "1", "--local-loss",
            "--gather-with-grad", "--report-to", "wandb",
        ],
        // The seed's large-scale example (ViT-L/14 on LAION-400M).
        vec![
            "--train-data", "/data/laion400m/{00000..41455}.tar",
            "--train-num-samples", "400000000", "--dataset-resampled",
            "--batch-size", "128", "--grad-checkpointing", "--model", "ViT-L-14",
            "--force-patch-dropout", "0.5", "--remote-sync", "s3://bucket/checkpoints",
            "--delete-previous-checkpoint",
        ],
        vec![
            "--train-data", "/data/cc12m/train.tar::/data/cc3m/train.tar",
            "--train-data-upsampling-factors", "1::4", "--dataset-resampled",
        ],
        vec![
            "--val-data", "/data/val.csv", "--val-num-samples", "5000",
            "--val-frequency", "2", "--csv-separator", ",", "--dataset-type", "synthetic",
        ],
        vec![
            "--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k",
            "--force-image-size", "336", "336", "--force-context-length", "77",
            "--force-quick-gelu", "--force-custom-text",
        ],
        vec![
            "--pretrained", "/path/to/checkpoint.pt", "--pretrained-image",
            "--force-image-size", "224", "--force-patch-dropout", "0.0",
        ],
        vec!["--accum-freq", "4", "--lr-scheduler", "const", "--epochs", "5"],
        vec![
            "--train-data", "/data/train.csv", "--lr-scheduler", "const-cooldown",
            "--epochs-cooldown", "5", "--lr-cooldown-end", "1e-6", "--lr-cooldown-power", "2",
        ],
        // A timm optimiser leaves lr/betas/eps unset.
        vec!["--model", "ViT-B-16", "--opt", "timm/sgd", "--momentum", "0.9"],
        vec![
            "--opt", "timm/adamw", "--beta1", "0.9", "--beta2", "0.95",
            "--eps", "1e-7", "--lr", "3e-4",
        ],
        vec![
            "--model", "vit-b-32", "--opt", "AdamW", "--beta1", "0.8", "--eps", "1e-5",
            "--lr", "5e-4",
        ],
        vec!["--grad-clip-norm", "1.0", "--precision", "amp_bf16", "--seed", "42"],
        vec!["--precision", "fp32", "--device", "cpu", "--workers", "0", "--seed", "-7"],
        vec!["--precision", "pure_bf16", "--skip-scheduler", "--use-bn-sync"],
        vec![
            "--image-mean", "0.485", "0.456", "0.406", "--image-std", "0.229", "0.224", "0.225",
            "--image-interpolation", "bilinear", "--image-resize-mode", "squash",
        ],
        vec![
            "--aug-cfg", "scale=(0.08,1.0)", "ratio=(0.75, 1.3333)",
            "color_jitter=(0.4,0.4,0.4,0.1)", "color_jitter_prob=0.8", "gray_scale_prob=0.2",
        ],
        vec![
            "--aug-cfg", "scale=(0.1,1.0)", "--aug-cfg", "re_prob=0.25", "re_count=1",
            "use_timm=True", "scale=[0.5,1]", "ratio=None", "color_jitter=0.4",
        ],
        vec![
            "--aug-cfg", "--image-interpolation", "random", "--image-resize-mode", "longest",
            "--image-mean", "0.5",
        ],
        vec![
            "--lock-image", "--lock-image-unlocked-groups", "2", "--lock-image-freeze-bn-stats",
            "--lock-text", "--lock-text-unlocked-layers", "10", "--lock-text-freeze-layer-norm",
        ],
        vec![
            "--save-most-recent", "--resume", "latest", "--logs", "./runs/",
            "--name", "vit-b32-cc12m-experiment", "--log-every-n-steps", "50",
            "--wandb-project-name", "my-clip-experiments",
            "--wandb-notes", "Testing new learning rate schedule",
            "--report-to", "tensorboard,wandb",
        ],
        vec![
            "--imagenet-v2", "/data/imagenet-v2/", "--zeroshot-frequency", "0",
            "--cache-dir", "/path/to/cache", "--debug", "--log-local", "--copy-codebase",
            "--logs", "None", "--report-to", "all",
        ],
        vec!["--report-to", "none", "--epochs", "3"],
        vec![
            "--dist-url", "tcp://localhost:12345", "--dist-backend", "nccl", "--horovod",
            "--ddp-static-graph", "--no-set-device-rank",
        ],
        vec![
            "--coca-caption-loss-weight", "1", "--coca-contrastive-loss-weight", "0",
            "--model", "coca_ViT-L-14",
        ],
        vec![
            "--torchcompile", "--torchscript", "--trace", "--distill-model", "ViT-L-14",
            "--distill-pretrained", "openai", "--siglip", "--loss-dist-impl", "gather",
            "--use-bnb-linear", "SwitchBackLinearGlobal", "--remote-sync-frequency", "600",
            "--remote-sync-protocol", "fsspec", "--remote-sync", "s3://my-bucket/checkpoints",
        ],
        // argparse details: last value wins, --flag=value, unique prefixes,
        // `_` digit separators, list flags replaced by a later occurrence.
        vec![
            "--batch-size", "8", "--batch-size=16", "--batch", "32", "--warm", "500",
            "--train-num-samples", "10_968_539", "--lr=0.01", "--debug", "--debug",
            "--image-std", "0.5", "--image-std", "0.2", "0.3", "0.4", "--lr-sch", "cosine",
        ],
    ]
}

#[test]
fn namespace_matches_open_clip_parse_args() {
    let cases = parity_cases();
    let cases_json = serde_json::to_string(&cases).expect("argv lists serialise");
    let oracle: Vec<Value> =
        serde_json::from_str(&common::run_oracle(ORACLE_PARSE_ARGS, &[&cases_json]))
            .expect("oracle prints a JSON list");
    assert_eq!(oracle.len(), cases.len());
    for (argv, expected) in cases.iter().zip(&oracle) {
        let args = parse_train_args(argv)
            .unwrap_or_else(|e| panic!("clipflow refused {argv:?}, which OpenCLIP accepts: {e}"));
        assert_same_json(
            &args.to_open_clip_namespace(),
            expected,
            &format!("{argv:?}"),
        );
    }
}

/// Compares two JSON values: numbers that either side wrote as a float with a
/// relative tolerance, everything else exactly.
///
/// Tolerance: no arithmetic happens on either side; Python's `float()` and
/// Rust's `f64::from_str` both round decimal text to the nearest binary64, and
/// both JSON printers write the shortest text that reads back to the same
/// binary64. The values are therefore expected bit-identical; 4 ulps of f64
/// (4 * 2.2e-16 relative) only absorbs a printer that is off in the last bit.
fn assert_same_json(ours: &Value, oracle: &Value, at: &str) {
    match (ours, oracle) {
        (Value::Number(a), Value::Number(b)) => {
            assert_eq!(
                a.is_f64(),
                b.is_f64(),
                "{at}: int/float kind differs: clipflow {a}, OpenCLIP {b}"
            );
            if a.is_f64() {
                let (x, y) = (
                    a.as_f64().unwrap_or(f64::NAN),
                    b.as_f64().unwrap_or(f64::NAN),
                );
                let tolerance = 4.0 * f64::EPSILON * x.abs().max(y.abs());
                assert!(
                    (x - y).abs() <= tolerance,
                    "{at}: clipflow {x}, OpenCLIP {y}"
                );
            } else {
                assert_eq!(a, b, "{at}");
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{at}: clipflow {ours}, OpenCLIP {oracle}");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_same_json(x, y, &format!("{at}[{i}]"));
            }
        }
        (Value::Object(a), Value::Object(b)) => {
            let our_keys: Vec<_> = a.keys().collect();
            let oracle_keys: Vec<_> = b.keys().collect();
            assert_eq!(
                our_keys, oracle_keys,
                "{at}: the namespaces have different keys"
            );
            for (key, x) in a {
                assert_same_json(x, &b[key], &format!("{at}.{key}"));
            }
        }
        _ => assert_eq!(ours, oracle, "{at}"),
    }
}

/// The flags (`--name`) of the user's flag reference. CI has it beside the
/// repository; `None` (with a notice) where it is absent.
fn seed_flags() -> Option<Vec<String>> {
    let seed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/seed/openclip-training-params.txt");
    let Ok(text) = std::fs::read_to_string(&seed) else {
        println!(
            "notice: {} is absent; skipping the seed-flag checks",
            seed.display()
        );
        return None;
    };
    // `--nproc_per_node` in the seed is torchrun's flag, not OpenCLIP's: skip
    // names with `_`.
    Some(
        long_flags(&text)
            .into_iter()
            .filter(|flag| !flag.contains('_'))
            .collect(),
    )
}

/// Every `--word` in `text`, deduplicated, in order of appearance.
fn long_flags(text: &str) -> Vec<String> {
    let mut flags: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("--") {
        let after = &rest[start + 2..];
        let len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .unwrap_or(after.len());
        let flag = format!("--{}", &after[..len]);
        if len > 0 && !flags.contains(&flag) {
            flags.push(flag);
        }
        rest = &after[len..];
    }
    flags
}

#[test]
fn every_seed_flag_is_exercised() {
    let Some(flags) = seed_flags() else { return };
    let used: Vec<&str> = parity_cases().into_iter().flatten().collect();
    for flag in flags.iter().filter(|flag| *flag != "--help") {
        assert!(
            used.iter()
                .any(|arg| arg == flag || arg.starts_with(&format!("{flag}="))),
            "no parity case uses {flag}"
        );
    }
}

/// The flags `clipflow train --help` lists.
fn train_help_flags() -> Vec<String> {
    let out = std::process::Command::new(common::clipflow_bin())
        .args(["train", "--help"])
        .output()
        .expect("running clipflow train --help");
    assert!(
        out.status.success(),
        "clipflow train --help failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    long_flags(&String::from_utf8_lossy(&out.stdout))
}

#[test]
fn train_help_lists_every_seed_flag() {
    let help_flags = train_help_flags();
    // Independent of the seed: a flag known to be there, so this test fails
    // if the train subcommand stops flattening TrainArgs.
    assert!(
        help_flags.contains(&"--aug-cfg".to_owned()),
        "clipflow train --help lacks --aug-cfg"
    );
    let Some(seed) = seed_flags() else { return };
    let missing: Vec<&String> = seed
        .iter()
        .filter(|flag| !help_flags.contains(flag))
        .collect();
    assert!(
        missing.is_empty(),
        "clipflow train --help lacks {missing:?}"
    );
}

/// Parses `argv`, expecting an error; returns its message.
fn error_of(argv: &[&str]) -> String {
    match parse_train_args(argv) {
        Ok(args) => panic!("{argv:?} was accepted: {args:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_values_name_their_flag() {
    #[rustfmt::skip]
    let cases: &[(&[&str], &[&str])] = &[
        (&["--batch-size", "abc"], &["--batch-size", "abc", "positive integer"]),
        (&["--batch-size", "0"], &["--batch-size", "positive integer"]),
        (&["--workers", "-1"], &["--workers"]),
        (&["--epochs", "2.5"], &["--epochs"]),
        (&["--precision", "fp8"], &["--precision", "amp_bf16"]),
        (&["--lr-scheduler", "linear"], &["--lr-scheduler", "const-cooldown"]),
        (&["--dataset-type", "parquet"], &["--dataset-type"]),
        (&["--image-interpolation", "nearest"], &["--image-interpolation"]),
        (&["--image-resize-mode", "crop"], &["--image-resize-mode"]),
        (&["--remote-sync-protocol", "ftp"], &["--remote-sync-protocol"]),
        (&["--loss-dist-impl", "ring"], &["--loss-dist-impl"]),
        (&["--lr", "abc"], &["--lr"]),
        (&["--lr", "nan"], &["--lr", "finite"]),
        (&["--wd", "-0.1"], &["--wd", "non-negative"]),
        (&["--beta2", "1.5"], &["--beta2"]),
        (&["--force-patch-dropout", "1.0"], &["--force-patch-dropout"]),
        (&["--image-std", "0.2", "0"], &["--image-std"]),
        (&["--force-image-size", "224", "224", "224"], &["--force-image-size", "3 values"]),
        (&["--image-mean", "0.5", "0.5"], &["--image-mean", "2 values"]),
        (&["--aug-cfg", "scale_range=0.08::1.0"], &["--aug-cfg", "scale_range", "scale, ratio"]),
        (&["--aug-cfg", "scale=0.5"], &["--aug-cfg", "scale must be"]),
        (&["--aug-cfg", "scale=(0.08::1.0)"], &["--aug-cfg", "scale"]),
        (&["--aug-cfg", "use_timm=true"], &["--aug-cfg", "True"]),
        (&["--aug-cfg", "re_prob"], &["--aug-cfg", "key=value"]),
        (&["--aug-cfg", "a=b=c"], &["--aug-cfg"]),
        (&["--report-to", "mlflow"], &["--report-to", "mlflow"]),
        (&["--opt", "sgd"], &["--opt", "timm/"]),
        (
            &["--train-data", "a.tar::b.tar", "--train-data-upsampling-factors", "1::2::3"],
            &["--train-data-upsampling-factors", "3 factors", "2"],
        ),
        (&["--train-data-upsampling-factors", "1::x"], &["--train-data-upsampling-factors"]),
        (&["--train-data", "a.csv", "--lr-scheduler", "const-cooldown"], &["--epochs-cooldown"]),
        (&["--opt", "timm/adamw", "--beta1", "0.9"], &["--beta1", "--beta2"]),
        (&["--distill-model", "ViT-L-14"], &["--distill-pretrained"]),
        (&["--no-such-flag"], &["--no-such-flag"]),
    ];
    for (argv, expected_parts) in cases {
        let message = error_of(argv);
        for part in *expected_parts {
            assert!(
                message.contains(part),
                "error for {argv:?} lacks {part:?}: {message}"
            );
        }
    }
}

#[test]
fn aug_cfg_reads_typed_settings_and_last_key_wins() {
    #[rustfmt::skip]
    let args = parse_train_args([
        "--aug-cfg", "scale=(0.08,1)", "ratio=[0.75,1.25]", "color_jitter=(0.4,0.4,0.4,0.1)",
        "re_count=2", "color_jitter_prob=0.8", "scale=(0.5,1.0)",
    ])
    .expect("valid --aug-cfg");
    let expected = AugmentationCfg {
        scale: (0.5, 1.0),
        ratio: Some((0.75, 1.25)),
        color_jitter: Some(vec![0.4, 0.4, 0.4, 0.1]),
        re_count: Some(2),
        color_jitter_prob: Some(0.8),
        ..AugmentationCfg::default()
    };
    assert_eq!(args.augmentation_cfg(), expected);
}

#[test]
fn helpers_follow_open_clip_semantics() {
    let args = parse_train_args([
        "--train-data",
        "a.tar::b.tar",
        "--train-data-upsampling-factors",
        "1::0.5",
        "--report-to",
        "wandb, tensorboard",
        "--logs",
        "NONE",
    ])
    .expect("valid flags");
    assert_eq!(args.upsampling_factors(), Some(vec![1.0, 0.5]));
    assert!(args.reports_to_wandb() && args.reports_to_tensorboard());
    assert_eq!(args.logs_dir(), None);
    assert!(args.trains());

    let defaults = parse_train_args(Vec::<String>::new()).expect("no flags");
    assert!(!defaults.reports_to_wandb() && !defaults.reports_to_tensorboard());
    assert_eq!(defaults.logs_dir(), Some("./logs/"));
    assert!(!defaults.trains());
    assert!(defaults.unsupported_flags().is_empty());
}

#[test]
fn flags_clipflow_cannot_honour_are_reported_with_a_reason() {
    let args: TrainArgs = parse_train_args([
        "--horovod",
        "--opt",
        "timm/lamb",
        "--torchcompile",
        "--use-bnb-linear",
        "SwitchBackLinear",
        "--aug-cfg",
        "use_timm=True",
    ])
    .expect("OpenCLIP accepts these flags, so parsing does too");
    let flags: Vec<&str> = args.unsupported_flags().iter().map(|u| u.flag).collect();
    assert_eq!(
        flags,
        [
            "--opt",
            "--aug-cfg use_timm=True",
            "--horovod",
            "--torchcompile",
            "--use-bnb-linear"
        ]
    );
    for unsupported in args.unsupported_flags() {
        assert!(unsupported.to_string().contains(unsupported.flag));
    }
}

/// Each flag row of docs/train-flags.md: the flag and its clipflow column.
fn flag_reference_rows() -> Vec<(String, String)> {
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/train-flags.md");
    let text = std::fs::read_to_string(&reference).unwrap();
    text.lines()
        .filter_map(|line| {
            // `--topology FILE`: the flag, not its value's name.
            let flag = line.strip_prefix("| `--")?.split(['`', ' ']).next()?;
            let status = line.trim_end_matches('|').rsplit(" | ").next()?;
            Some((format!("--{flag}"), status.trim().to_string()))
        })
        .collect()
}

/// The flags `clipflow train` refuses when `argv` alone is given.
fn refused(argv: &[&str]) -> Option<Vec<&'static str>> {
    let args = parse_train_args(argv).ok()?;
    Some(args.unsupported_flags().iter().map(|u| u.flag).collect())
}

#[test]
fn the_flag_reference_has_every_flag_and_says_which_are_refused() {
    let mut help_flags = train_help_flags();
    help_flags.retain(|flag| flag != "--help");
    help_flags.sort();
    let rows = flag_reference_rows();
    let mut documented: Vec<String> = rows.iter().map(|(flag, _)| flag.clone()).collect();
    documented.sort();
    assert_eq!(
        documented, help_flags,
        "docs/train-flags.md's rows are not the flags of clipflow train --help"
    );
    // A switch is rejected in the reference exactly when clipflow refuses
    // it; the flags whose values clipflow partly refuses are tried with one
    // it refuses (bitsandbytes' layers, timm's pipeline and optimisers).
    let refused_values = [
        ("--use-bnb-linear", "Linear8bitLt"),
        ("--aug-cfg", "use_timm=True"),
        ("--opt", "timm/adamp"),
    ];
    let mut checked = 0;
    for (flag, status) in &rows {
        let value = refused_values.iter().find(|(f, _)| f == flag);
        let refusals = match value {
            Some((_, value)) => refused(&[flag.as_str(), value]),
            None => refused(&[flag.as_str()]),
        };
        // A flag that needs a value (or is clipflow's own command's).
        let Some(refusals) = refusals else { continue };
        checked += 1;
        let is_refused = refusals.iter().any(|r| r.starts_with(flag.as_str()));
        let says_rejected = status.contains("rejected");
        assert_eq!(
            says_rejected, is_refused,
            "{flag}: the reference says {status:?}, clipflow refuses {refusals:?}"
        );
    }
    assert!(checked > 25, "only {checked} flags could be tried alone");
}
