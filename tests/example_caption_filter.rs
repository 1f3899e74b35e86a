//! examples/caption_filter.rs, a program of its own that embeds the loading
//! actors with a stage it defines (a caption filter between the decoder and
//! the augmenter): run on test shards, the batches it ends with hold exactly
//! the samples whose caption has the word, and it drops the rest.

mod common;
mod loaders_support;

use std::collections::BTreeMap;
use std::process::Command;

use loaders_support::make_test_shards;

/// Prints `{key: caption}` of every sample in the shards given.
const CAPTIONS: &str = r#"
import json, sys, tarfile
captions = {}
for path in sys.argv[1:]:
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            if member.name.endswith(".txt"):
                key = member.name.rsplit("/", 1)[-1].split(".")[0]
                captions[key] = tar.extractfile(member).read().decode()
print(json.dumps(captions))
"#;

#[test]
fn the_caption_filter_example_batches_only_the_captions_with_the_word() {
    let dir = tempfile::tempdir().unwrap();
    make_test_shards(dir.path(), 4, 10);
    let shards: Vec<String> = (0..4)
        .map(|i| format!("{}/shard-{i:05}.tar", dir.path().display()))
        .collect();
    let shard_args: Vec<&str> = shards.iter().map(String::as_str).collect();
    let captions: BTreeMap<String, String> =
        serde_json::from_str(common::run_oracle(CAPTIONS, &shard_args).trim()).unwrap();
    let word = "photo";
    let with_word: Vec<&String> = captions
        .iter()
        .filter(|(_, caption)| caption.contains(word))
        .map(|(key, _)| key)
        .collect();
    assert!(
        !with_word.is_empty() && with_word.len() < captions.len(),
        "the test shards should have some captions with {word:?} and some without"
    );

    // target/<profile>/deps/<this test> -> target/<profile>/examples/caption_filter,
    // which `cargo test` builds unless it was told to build this test alone.
    let example = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("examples/caption_filter");
    if !example.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(cargo)
            .args(["build", "--example", "caption_filter"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(built.success(), "building examples/caption_filter.rs");
    }
    let pattern = format!("{}/shard-{{00000..00003}}.tar", dir.path().display());
    let out = Command::new(&example)
        .args([&pattern, word])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        summary["dropped"],
        (captions.len() - with_word.len()) as u64,
        "{summary}"
    );
    // Whole batches of 4 (the last, partial one is dropped, as in training).
    let batched: Vec<String> = summary["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key.as_str().unwrap().to_string())
        .collect();
    assert_eq!(batched.len(), with_word.len() / 4 * 4, "{summary}");
    assert_eq!(summary["batches"], (with_word.len() / 4) as u64);
    for key in &batched {
        assert!(captions[key].contains(word), "{key}: {}", captions[key]);
    }
}
