//! `clipflow quickstart` end to end, shortened (2,000 scenes, 2 epochs):
//! it renders the dataset, trains, evaluates zero-shot after each epoch and
//! reports an accuracy well above chance, leaving a run folder laid out as
//! OpenCLIP's (out.log with Train/Eval lines, params.txt, TensorBoard events,
//! the final checkpoint) and the curves plot.

mod common;

use std::process::Command;

use common::clipflow_bin;

#[test]
fn quickstart_trains_a_model_that_beats_chance_and_leaves_a_full_run_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(clipflow_bin())
        .args(["quickstart", "--samples", "2000", "--epochs", "2", "--dir"])
        .arg(dir.path())
        .output()
        .expect("running clipflow quickstart");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "quickstart failed:\n{stderr}");

    let line = stdout
        .lines()
        .find(|line| line.starts_with("zero-shot top-1: "))
        .unwrap_or_else(|| panic!("no accuracy line in:\n{stdout}"));
    let percent: f64 = line["zero-shot top-1: ".len()..]
        .split('%')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // 20 classes: chance is 5%. Two short epochs reach about 30% here; a
    // broken loss, optimiser or evaluator stays near chance.
    assert!(
        percent > 15.0,
        "zero-shot top-1 {percent}% is not well above chance (5%)"
    );

    let runs: Vec<_> = std::fs::read_dir(dir.path().join("logs"))
        .unwrap()
        .collect();
    assert_eq!(runs.len(), 1, "one run folder");
    let run = runs[0].as_ref().unwrap().path();
    let log = std::fs::read_to_string(run.join("out.log")).unwrap();
    assert!(log.contains("| INFO | Train Epoch: 1 ["), "{log}");
    assert!(
        log.contains("| INFO | Eval Epoch: 2 imagenet-zeroshot-val-top1: "),
        "{log}"
    );
    let params = std::fs::read_to_string(run.join("params.txt")).unwrap();
    assert!(params.contains("epochs: 2\n") && params.contains("precision: fp32\n"));
    assert!(run.join("checkpoints/epoch_2.pt").is_file());
    assert!(
        !run.join("checkpoints/epoch_1.pt").exists(),
        "--save-frequency 0 keeps the last only"
    );
    let events = std::fs::read_dir(run.join("tensorboard")).unwrap().count();
    assert_eq!(events, 1, "one TensorBoard event file");
    let plot = image::open(run.join("curves.png")).unwrap();
    assert_eq!((plot.width(), plot.height()), (960, 320));
}
