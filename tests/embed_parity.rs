//! `clipflow embed` gives the features OpenCLIP gives: the same photographs
//! through the validation transform, the same captions through the tokenizer,
//! the same weights.
//!
//! Tolerance 1e-4 absolute: decoded and resized pixels are bit-identical to
//! PIL's (tests/preprocess_parity.rs), token ids identical
//! (tests/tokenizer_parity.rs), so only fp32 summation order inside libtorch
//! kernels differs (~1e-6 relative on features of order 1).

mod common;

use std::collections::HashMap;
use std::process::Command;

use tch::Tensor;

/// Runs `clipflow embed` on the oracle's photos, captions and weights with
/// `--precision precision`; returns our features and the oracle's.
fn embed_with(precision: &str) -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    common::run_oracle(
        include_str!("oracle/embed_parity.py"),
        &["ViT-B-32", out.to_str().unwrap()],
    );
    let features = out.join("features.safetensors");
    let status = Command::new(common::clipflow_bin())
        .args([
            "embed",
            "--model",
            "ViT-B-32",
            "--device",
            "cpu",
            "--batch-size",
            "3",
        ])
        .args(["--precision", precision])
        .arg("--pretrained")
        .arg(out.join("weights.safetensors"))
        .arg("--images")
        .arg(out.join("images"))
        .arg("--texts")
        .arg(out.join("texts.txt"))
        .arg("--output")
        .arg(&features)
        .status()
        .unwrap();
    assert!(status.success());
    let read = |p: std::path::PathBuf| -> HashMap<String, Tensor> {
        Tensor::read_safetensors(p).unwrap().into_iter().collect()
    };
    (read(features), read(out.join("expected.safetensors")))
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

#[test]
fn embed_matches_open_clip_encode_image_and_text() {
    let (ours, expected) = embed_with("fp32");
    for key in ["image_features", "text_features"] {
        let diff = max_diff(&ours[key], &expected[key]);
        assert!(diff <= 1e-4, "{key} differs by {diff}");
    }
}

/// `--precision amp_bf16` runs under bf16 autocast like OpenCLIP's
/// `torch.autocast("cpu", dtype=torch.bfloat16)`, and `--precision bf16`
/// with the weights `convert_weights_to_lp` casts. Both sides run the same
/// kernels, but bf16 keeps 8 mantissa bits (relative step 2^-8), so a
/// differently ordered reduction may land one bf16 step apart, compounding
/// over 12 blocks: the tolerance is 4% of the largest feature. The result
/// must also differ from fp32, or the precision had no effect.
#[test]
fn embed_bf16_precisions_match_open_clip() {
    for precision in ["amp_bf16", "bf16"] {
        check_low_precision(precision);
    }
}

fn check_low_precision(precision: &str) {
    let (ours, expected) = embed_with(precision);
    for key in ["image_features", "text_features"] {
        let reference = &expected[&format!("{precision}.{key}")];
        let scale = reference.abs().max().double_value(&[]);
        let diff = max_diff(&ours[key], reference);
        assert!(
            diff <= 0.04 * scale,
            "{key} differs by {diff} (scale {scale})"
        );
        assert!(
            max_diff(&ours[key], &expected[key]) > 0.0,
            "{key}: autocast had no effect"
        );
    }
}

#[test]
fn embed_errors_name_the_flag_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.safetensors");
    let run = |args: &[&str]| {
        Command::new(common::clipflow_bin())
            .args(["embed", "--device", "cpu", "--output"])
            .arg(&output)
            .args(args)
            .output()
            .unwrap()
    };
    let no_input = run(&["--model", "ViT-B-32"]);
    assert!(!no_input.status.success());
    let stderr = String::from_utf8_lossy(&no_input.stderr);
    assert!(stderr.contains("--images DIR, --texts FILE"), "{stderr}");

    let missing = run(&[
        "--model",
        "ViT-B-32",
        "--texts",
        "/nonexistent/captions.txt",
    ]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--texts /nonexistent/captions.txt"));

    std::fs::write(dir.path().join("bad.jpg"), b"not a jpeg").unwrap();
    let corrupt = run(&[
        "--model",
        "ViT-B-32",
        "--images",
        dir.path().to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&corrupt.stderr).contains("bad.jpg"));

    let unknown = run(&["--texts", "/dev/null", "--model", "ViT-Q-1"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown model `ViT-Q-1`"));
    assert!(!output.exists(), "nothing written on error");
}
