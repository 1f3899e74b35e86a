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

#[test]
fn embed_matches_open_clip_encode_image_and_text() {
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
    let ours = read(features);
    let expected = read(out.join("expected.safetensors"));
    for key in ["image_features", "text_features"] {
        assert_eq!(ours[key].size(), expected[key].size(), "{key}");
        let diff = (&ours[key] - &expected[key]).abs().max().double_value(&[]);
        assert!(diff <= 1e-4, "{key} differs by {diff}");
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
