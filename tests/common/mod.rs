//! Shared by the integration tests: running OpenCLIP (the oracle) in the
//! project's Python environment, scratch directories, (model.rs) models
//! with their features compared against the oracle's, and (parity.rs) a
//! training run's scalars and weights against OpenCLIP's.
#![allow(dead_code)] // each test binary uses its own subset

pub mod model;
pub mod parity;

use std::path::PathBuf;
use std::process::Command;

/// The Python interpreter of the environment `scripts/setup.sh` made
/// (`CLIPFLOW_VENV`), which holds torch 2.11.0 and open_clip_torch 3.3.0.
pub fn oracle_python() -> PathBuf {
    let venv = std::env::var("CLIPFLOW_VENV").expect(
        "CLIPFLOW_VENV is not set: run the tests through scripts/test.sh, which sets up the oracle",
    );
    PathBuf::from(venv).join("bin").join("python")
}

/// Runs a Python script in the oracle environment with `args`, panicking with
/// its stderr when it fails; returns its stdout.
pub fn run_oracle(script: &str, args: &[&str]) -> String {
    let out = Command::new(oracle_python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("starting the oracle python");
    assert!(
        out.status.success(),
        "oracle script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("oracle output is utf-8")
}

/// libtorch's random generator is one for the process: the tests of a
/// binary that seed it and draw from it (building a model draws its initial
/// weights) take turns, holding this.
pub fn random_generator_turn() -> std::sync::MutexGuard<'static, ()> {
    static RANDOM_GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());
    RANDOM_GENERATOR
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A HuggingFace hub cache (the layout huggingface_hub writes) holding a
/// small text model `repo` of `model_type`, written by transformers:
/// config.json, and with `extra` flags its weights (`--weights`) and a
/// tokenizer (`--tokenizer`); see tests/oracle/hf_text_cache.py.
pub fn hf_text_cache(repo: &str, model_type: &str, extra: &[&str]) -> tempfile::TempDir {
    let cache = tempfile::tempdir().unwrap();
    let mut args = vec![cache.path().to_str().unwrap(), repo, model_type];
    args.extend(extra);
    run_oracle(include_str!("../oracle/hf_text_cache.py"), &args);
    cache
}

/// The clipflow binary built for these tests.
pub fn clipflow_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_clipflow"))
}

/// Runs the clipflow binary with `args`, panicking with its stderr when it
/// fails.
pub fn run_clipflow<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) {
    let out = Command::new(clipflow_bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "clipflow {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An OpenCLIP-format model config small enough to train for a few steps in
/// seconds (32 px images, 2 blocks of width 64 per tower).
pub const TINY_TRAIN_CONFIG: &str = r#"{"embed_dim": 32,
 "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
 "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}"#;

/// `clipflow make-scenes DIR` with 32 px images: `samples` training pairs in
/// shards of `per_shard`, and `zeroshot_per_class` held-out images per class.
pub fn make_scenes(
    dir: &std::path::Path,
    samples: usize,
    per_shard: usize,
    zeroshot_per_class: usize,
) {
    make_scenes_of_size(dir, samples, per_shard, zeroshot_per_class, 32);
}

/// [`make_scenes`] with images of `image_size` pixels a side.
pub fn make_scenes_of_size(
    dir: &std::path::Path,
    samples: usize,
    per_shard: usize,
    zeroshot_per_class: usize,
    image_size: usize,
) {
    let (samples, per_shard, zeroshot, size) = (
        samples.to_string(),
        per_shard.to_string(),
        zeroshot_per_class.to_string(),
        image_size.to_string(),
    );
    run_clipflow(&[
        "make-scenes".as_ref(),
        dir.as_os_str(),
        "--samples".as_ref(),
        samples.as_ref(),
        "--samples-per-shard".as_ref(),
        per_shard.as_ref(),
        "--image-size".as_ref(),
        size.as_ref(),
        "--zeroshot-per-class".as_ref(),
        zeroshot.as_ref(),
    ] as &[&std::ffi::OsStr]);
}

/// Unpacks the first `shards` shards [`make_scenes`] wrote into `dir` into
/// `dir/csv/` and lists their images and captions in `dir/scenes.csv`
/// (OpenCLIP's `filepath` / `title` columns, tab-separated), which it
/// returns.
pub fn scenes_csv(dir: &std::path::Path, shards: usize) -> std::path::PathBuf {
    use clipflow_core::data::tar_samples::TarMembers;
    let images = dir.join("csv");
    std::fs::create_dir_all(&images).unwrap();
    let mut table = String::from("filepath\ttitle\n");
    for shard in 0..shards {
        let path = dir.join(format!("shards/scenes-{shard:05}.tar"));
        let mut members = TarMembers::new(std::fs::File::open(path).unwrap());
        let mut captions = std::collections::BTreeMap::new();
        let mut files = std::collections::BTreeMap::new();
        while let Some(member) = members.next_member().unwrap() {
            let (key, extension) = member.name.rsplit_once('.').unwrap();
            if extension == "txt" {
                captions.insert(key.to_string(), String::from_utf8(member.data).unwrap());
            } else {
                let file = images.join(&member.name);
                std::fs::write(&file, member.data).unwrap();
                files.insert(key.to_string(), file);
            }
        }
        for (key, file) in files {
            let caption = captions[&key].replace(['\t', '\n'], " ");
            table.push_str(&format!("{}\t{caption}\n", file.display()));
        }
    }
    let csv = dir.join("scenes.csv");
    std::fs::write(&csv, table).unwrap();
    csv
}

/// The names of the entries in `dir`, sorted.
pub fn file_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Copies the shard `source` to `copy` with the bytes of its first image
/// replaced by text: a sample that neither clipflow nor OpenCLIP decodes.
pub fn damage_first_image(source: &std::path::Path, copy: &std::path::Path) {
    const DAMAGE: &str = r#"
import io, sys, tarfile
with tarfile.open(sys.argv[1]) as source, tarfile.open(sys.argv[2], "w", format=tarfile.USTAR_FORMAT) as copy:
    damaged = False
    for member in source.getmembers():
        data = source.extractfile(member).read()
        if member.name.endswith(".png") and not damaged:
            data, damaged = b"not an image" * 20, True
        member.size = len(data)
        copy.addfile(member, io.BytesIO(data))
"#;
    run_oracle(DAMAGE, &[source.to_str().unwrap(), copy.to_str().unwrap()]);
}
