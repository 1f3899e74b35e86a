//! `--pretrained TAG` resolves OpenCLIP's pretrained tags offline, in the
//! local HuggingFace hub cache: on a cache laid out as huggingface_hub lays
//! it out, holding weights OpenCLIP saved, `clipflow embed --pretrained
//! TAG` gives the features of OpenCLIP's `create_model_and_transforms(name,
//! pretrained=TAG)` under `HF_HUB_OFFLINE=1` (the tag's weights file, `.bin`
//! or its `.safetensors` twin, and its preprocessing: SigLIP's `webli`
//! squashes images and normalises with mean and std 0.5).
//!
//! Tolerance 1e-4 absolute: the same weights and pixels (as in
//! tests/embed_parity.rs), fp32 summation order aside.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use tch::Tensor;

fn clipflow(hub: &Path, args: &[&str]) -> Output {
    Command::new(common::clipflow_bin())
        .args(args)
        .env("HF_HUB_CACHE", hub)
        .output()
        .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

#[test]
fn tags_load_from_the_hub_cache_as_open_clip_loads_them() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, out) = (dir.path().join("hub"), dir.path().join("out"));
    std::fs::create_dir_all(&out).unwrap();
    common::run_oracle(
        include_str!("oracle/pretrained_tags.py"),
        &[hub.to_str().unwrap(), out.to_str().unwrap()],
    );
    let expected: HashMap<String, Tensor> =
        Tensor::read_safetensors(out.join("expected.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let images = out.join("images");
    let texts = out.join("texts.txt");
    for (model, tag, with_texts) in [
        ("ViT-B-32", "laion2b_s34b_b79k", true),
        ("ViT-B-16-SigLIP", "webli", false),
    ] {
        let features = out.join(format!("{model}.safetensors"));
        let mut args = vec![
            "embed",
            "--model",
            model,
            "--pretrained",
            tag,
            "--device",
            "cpu",
            "--images",
            images.to_str().unwrap(),
            "--output",
            features.to_str().unwrap(),
        ];
        if with_texts {
            args.extend(["--texts", texts.to_str().unwrap()]);
        }
        let run = clipflow(&hub, &args);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let ours: HashMap<String, Tensor> = Tensor::read_safetensors(&features)
            .unwrap()
            .into_iter()
            .collect();
        let mut kinds = vec!["image_features"];
        if with_texts {
            kinds.push("text_features");
        }
        for kind in kinds {
            let diff = max_diff(&ours[kind], &expected[&format!("{model}.{kind}")]);
            assert!(
                diff <= 1e-4,
                "{model} --pretrained {tag}: {kind} differ by {diff}"
            );
        }
    }

    // `clipflow pretrained` says which tags the cache has.
    let listed = clipflow(&hub, &["pretrained", "ViT-B-32"]);
    assert!(listed.status.success());
    let listed = String::from_utf8(listed.stdout).unwrap();
    let line = |tag: &str| {
        listed
            .lines()
            .find(|line| line.split('\t').nth(1) == Some(tag))
            .unwrap_or_else(|| panic!("no {tag} in {listed}"))
            .to_string()
    };
    assert!(line("laion2b_s34b_b79k").ends_with("\tin the cache"));
    assert!(line("openai").ends_with("\tnot in the cache"));

    // A tag whose weights are not there names the repo, the file and how
    // to fetch it; a word that is neither tag nor file lists the tags.
    let missing = clipflow(
        &hub,
        &[
            "embed",
            "--model",
            "ViT-B-32",
            "--pretrained",
            "openai",
            "--texts",
            texts.to_str().unwrap(),
            "--output",
            out.join("x.safetensors").to_str().unwrap(),
        ],
    );
    assert!(!missing.status.success());
    let error = String::from_utf8_lossy(&missing.stderr);
    assert!(
        error.contains("timm/vit_base_patch32_clip_224.openai") && error.contains("hf download"),
        "{error}"
    );
    let unknown = clipflow(
        &hub,
        &[
            "embed",
            "--model",
            "ViT-B-32",
            "--pretrained",
            "laion9b",
            "--texts",
            texts.to_str().unwrap(),
            "--output",
            out.join("x.safetensors").to_str().unwrap(),
        ],
    );
    let error = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        error.contains("not a file, nor a pretrained tag of ViT-B-32")
            && error.contains("laion2b_s34b_b79k"),
        "{error}"
    );
    assert!(!out.join("x.safetensors").exists());
}
