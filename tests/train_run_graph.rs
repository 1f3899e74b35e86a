//! `clipflow train` as one graph for the whole run, from the command line
//! on a tiny ViT and rendered scenes:
//!
//! - the batches follow from `--seed`, the epoch and the data alone: runs
//!   with `--workers 1` and `--workers 3` log the same losses and end with
//!   bit-identical weights (random crops on, two epochs, with and without
//!   `--dataset-resampled`, and from a CSV table);
//! - the evaluation of an epoch that overlaps the next epoch's training
//!   gives the metrics a blocking one (`--blocking-eval`) gives, and
//!   `--blocking-eval` keeps OpenCLIP's order in out.log (the evaluation
//!   lines before the next "Start epoch");
//! - the first step of a later epoch waits for its data no longer than a
//!   median step takes (the reader is into the next epoch while the last
//!   batches of one train);
//! - a slow stage of a program's own beside the logger (a fan-out sibling)
//!   slows the run to its pace, and the logger never runs more than that
//!   stage's queue ahead of it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clipflow::topology_files;
use clipflow::train_args::parse_train_args;
use clipflow::training::run_with_kinds;
use clipflow_actors::runtime::{Emitter, Stage};
use clipflow_actors::topology::{Registry, Restarts};
use clipflow_actors::train_events::TrainEvent;
use clipflow_core::weights::read_weights;
use common::{clipflow_bin, make_scenes, scenes_csv};

const TINY_VIT: &str = "tests/data/tiny-vit.json";

/// 192 rendered scenes of 32 px in 3 shards (6 batches of 32: a multiple of
/// 1 and of 3 loader workers, so OpenCLIP's per-worker rounding gives both
/// worker counts the same epoch), and a CSV table of the same images.
fn scenes(dir: &Path) -> (String, PathBuf) {
    make_scenes(dir, 192, 64, 0);
    let shards = format!("{}/shards/scenes-{{00000..00002}}.tar", dir.display());
    (shards, scenes_csv(dir, 3))
}

/// Runs `clipflow train` on the tiny ViT for two epochs, logging every step
/// to `logs/<name>`; panics with its stderr when it fails.
fn train(data: &str, logs: &Path, name: &str, extra: &[&str]) {
    train_epochs(data, logs, name, 2, extra)
}

fn train_epochs(data: &str, logs: &Path, name: &str, epochs: u32, extra: &[&str]) {
    let epochs = epochs.to_string();
    let out = Command::new(clipflow_bin())
        .arg("train")
        .arg("--model")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(TINY_VIT))
        .args([
            "--train-data",
            data,
            "--batch-size",
            "32",
            "--epochs",
            &epochs,
        ])
        .args(["--device", "cpu", "--precision", "fp32", "--seed", "4"])
        .args(["--warmup", "2", "--lr", "1e-3", "--log-every-n-steps", "1"])
        .arg("--logs")
        .arg(logs)
        .args(["--name", name])
        .args(extra)
        .output()
        .expect("running clipflow train");
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn out_log(logs: &Path, name: &str) -> String {
    std::fs::read_to_string(logs.join(name).join("out.log")).unwrap()
}

/// The training lines of out.log from "LR:" on (the learning rate, logit
/// scale and losses), without the timings.
fn step_values(log: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains("Train Epoch:"))
        .map(|line| line[line.find("LR:").unwrap()..].to_string())
        .collect()
}

/// Asserts two runs' final weights are bit-identical.
fn assert_same_weights(logs: &Path, a: &str, b: &str) {
    let weights =
        |name: &str| read_weights(&logs.join(name).join("checkpoints/epoch_2.pt")).unwrap();
    let (first, second) = (weights(a), weights(b));
    assert_eq!(first.len(), second.len());
    for ((name, x), (other, y)) in first.iter().zip(&second) {
        assert_eq!(name, other);
        assert!(x.equal(y), "{name} differs between {a} and {b}");
    }
}

#[test]
fn any_worker_count_trains_on_the_same_batches() {
    let dir = tempfile::tempdir().unwrap();
    let (shards, csv) = scenes(dir.path());
    let logs = dir.path().join("logs");
    let csv = csv.to_str().unwrap().to_string();
    let cases: [(&str, &str, &[&str]); 3] = [
        ("shards", &shards, &["--dataset-type", "webdataset"]),
        (
            "resampled",
            &shards,
            &["--dataset-type", "webdataset", "--dataset-resampled"],
        ),
        ("csv", &csv, &["--dataset-type", "csv"]),
    ];
    for (case, data, flags) in cases {
        let mut runs = Vec::new();
        for workers in ["1", "3"] {
            let name = format!("{case}-{workers}");
            let mut extra = flags.to_vec();
            extra.extend(["--workers", workers]);
            train(data, &logs, &name, &extra);
            runs.push(name);
        }
        let (one, three) = (&runs[0], &runs[1]);
        let steps = step_values(&out_log(&logs, one));
        assert_eq!(steps.len(), 12, "{case}: two epochs of 6 steps");
        assert_eq!(steps, step_values(&out_log(&logs, three)), "{case}");
        assert_same_weights(&logs, one, three);
    }
    // The seed is what fixes them: another one trains on other batches.
    train(
        &shards,
        &logs,
        "reseeded",
        &["--workers", "1", "--seed", "5"],
    );
    assert_ne!(
        step_values(&out_log(&logs, "shards-1"))[1..],
        step_values(&out_log(&logs, "reseeded"))[1..]
    );
}

/// The lines of `checkpoints/results.jsonl`.
fn results(logs: &Path, name: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(logs.join(name).join("checkpoints/results.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn an_evaluation_beside_training_gives_the_blocking_ones_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let (shards, _) = scenes(dir.path());
    let logs = dir.path().join("logs");
    let flags = ["--workers", "2", "--val-data", &shards];
    train(&shards, &logs, "overlapped", &flags);
    let mut blocking = flags.to_vec();
    blocking.push("--blocking-eval");
    train(&shards, &logs, "blocking", &blocking);

    let (overlapped, blocked) = (results(&logs, "overlapped"), results(&logs, "blocking"));
    assert_eq!(overlapped.len(), 2, "one evaluation per epoch");
    assert_eq!(overlapped, blocked);
    for (epoch, line) in overlapped.iter().enumerate() {
        assert_eq!(line["epoch"], serde_json::json!(epoch + 1));
        assert!(
            line["clip_val_loss"].as_f64().unwrap().is_finite(),
            "{line}"
        );
    }

    // OpenCLIP's order: epoch 0 is evaluated before epoch 1 starts.
    let log = out_log(&logs, "blocking");
    let evaluated = log
        .find("Eval Epoch: 1 ")
        .expect("the evaluation of epoch 1");
    let next = log.find("Start epoch 1").expect("epoch 1 starts");
    assert!(evaluated < next, "{log}");
}

/// (data time, batch time) of every step in out.log, in seconds.
fn step_times(log: &str) -> Vec<(f64, f64)> {
    let field = |line: &str, name: &str| -> f64 {
        let rest = &line[line.find(name).unwrap() + name.len()..];
        let value: String = rest
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        value.parse().unwrap()
    };
    log.lines()
        .filter(|line| line.contains("Train Epoch:"))
        .map(|line| (field(line, "Data (t):"), field(line, "Batch (t):")))
        .collect()
}

#[test]
fn a_later_epochs_first_step_waits_no_longer_for_data_than_a_median_step() {
    let dir = tempfile::tempdir().unwrap();
    let (shards, _) = scenes(dir.path());
    let logs = dir.path().join("logs");
    train_epochs(&shards, &logs, "timed", 3, &["--workers", "2"]);
    let times = step_times(&out_log(&logs, "timed"));
    assert_eq!(times.len(), 18);
    let mut batch_times: Vec<f64> = times.iter().map(|t| t.1).collect();
    batch_times.sort_by(f64::total_cmp);
    let median = batch_times[batch_times.len() / 2];
    for epoch in [1, 2] {
        let (data_time, _) = times[epoch * 6];
        assert!(
            data_time <= median,
            "epoch {epoch}'s first step waited {data_time} s for data, a median step takes {median} s"
        );
    }
}

/// A stage of a program's own beside the logger: it takes each step's
/// event slowly, and notes how many steps out.log already shows.
struct SlowWatcher {
    out_log: PathBuf,
    steps_seen: u64,
    /// The most steps out.log showed beyond the ones this stage had seen.
    max_logged_ahead: Arc<AtomicU64>,
}

/// What the watcher takes per step.
const WATCH_DELAY: Duration = Duration::from_millis(60);

impl Stage for SlowWatcher {
    type In = TrainEvent;
    type Out = ();

    fn process(&mut self, event: TrainEvent, _out: &mut Emitter<()>) -> anyhow::Result<()> {
        if let TrainEvent::Step(_) = event {
            self.steps_seen += 1;
            let log = std::fs::read_to_string(&self.out_log).unwrap_or_default();
            let logged = log.matches("Train Epoch:").count() as u64;
            let ahead = logged.saturating_sub(self.steps_seen);
            self.max_logged_ahead.fetch_max(ahead, Ordering::SeqCst);
            std::thread::sleep(WATCH_DELAY);
        }
        Ok(())
    }
}

#[test]
fn a_slow_sibling_of_the_logger_slows_the_run_and_nothing_runs_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let (shards, _) = scenes(dir.path());
    let logs = dir.path().join("logs");
    // The step executor's events fan out to a fourth stage, with a queue
    // of two; each of the epoch's 24 steps (batches of 8) waits for it.
    let topology = dir.path().join("watched.toml");
    std::fs::write(
        &topology,
        "extends = \"train.toml\"\n\n[stages.watcher]\nkind = \"slow-watcher\"\n\
         inputs = [\"step-executor\"]\ncapacity = 2\n",
    )
    .unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join(TINY_VIT);
    let logs_text = logs.to_str().unwrap();
    let args = parse_train_args([
        "--model",
        model.to_str().unwrap(),
        "--train-data",
        &shards,
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--log-every-n-steps",
        "1",
        "--logs",
        logs_text,
        "--name",
        "watched",
    ])
    .unwrap();
    let max_logged_ahead = Arc::new(AtomicU64::new(0));
    let ahead = Arc::clone(&max_logged_ahead);
    let out_log = logs.join("watched/out.log");
    let add_kinds = move |registry: &mut Registry| {
        let (ahead, out_log) = (Arc::clone(&ahead), out_log.clone());
        registry.register_stage(
            "slow-watcher",
            "takes each step's event slowly",
            Restarts::Forbidden,
            move |_settings| {
                let (ahead, out_log) = (Arc::clone(&ahead), out_log.clone());
                Ok(move |_worker| {
                    Ok(SlowWatcher {
                        out_log: out_log.clone(),
                        steps_seen: 0,
                        max_logged_ahead: Arc::clone(&ahead),
                    })
                })
            },
        );
    };
    let started = Instant::now();
    let summary = run_with_kinds(
        args,
        None,
        topology_files::read(&topology).unwrap(),
        &add_kinds,
    )
    .unwrap();
    let took = started.elapsed();
    assert_eq!(summary.losses.len(), 24, "one logged loss a step");
    assert!(
        took >= WATCH_DELAY * 24,
        "24 steps at the watcher's pace took only {took:?}"
    );
    // The fan-out sends each event to every sibling in turn: the logger
    // never gets more than the watcher's queue and the one in its hands
    // ahead of it.
    let ahead = max_logged_ahead.load(Ordering::SeqCst);
    assert!(
        ahead <= 3,
        "out.log ran {ahead} steps ahead of the slow stage"
    );
}
