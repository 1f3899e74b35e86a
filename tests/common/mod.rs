//! Shared by the integration tests: running OpenCLIP (the oracle) in the
//! project's Python environment, scratch directories, and (model.rs)
//! models with their features compared against the oracle's.
#![allow(dead_code)] // each test binary uses its own subset

pub mod model;

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

/// The clipflow binary built for these tests.
pub fn clipflow_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_clipflow"))
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
