//! `clipflow train` killed with SIGKILL at a random step, then continued with
//! `--resume latest` under the same `--name` and `--logs`, as OpenCLIP
//! resumes: from the newest checkpoint's epoch boundary (the steps of the
//! killed, unfinished epoch are done again). Checked against an
//! uninterrupted run with the same flags: every step's learning rate (and
//! loss, since the data order, weights and optimizer state are restored)
//! appears once in TensorBoard with the value the uninterrupted run had; the
//! resumed run's own steps start at the checkpoint's epoch boundary; every
//! checkpoint loads with torch.load (OpenCLIP's reader), the last holds the
//! final epoch, no temporary files are left (the resumed run removes the
//! one a kill mid-save leaves), and the killed run left no unreadable
//! `epoch_latest.pt`. Variants with and without
//! `--save-most-recent`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::parity::series;
use common::{make_scenes, run_clipflow, TINY_TRAIN_CONFIG};
use serde_json::Value;

const ORACLE: &str = include_str!("oracle/train_parity.py");

const EPOCHS: usize = 4;
/// 48 samples at batch size 8.
const STEPS_PER_EPOCH: usize = 6;

fn train_args(root: &Path, logs: &Path, save_most_recent: bool) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "--model",
        root.join("tiny.json").to_str().unwrap(),
        "--train-data",
        root.join("scenes/shards/scenes-{00000..00002}.tar")
            .to_str()
            .unwrap(),
        "--dataset-type",
        "webdataset",
        "--batch-size",
        "8",
        "--workers",
        "1",
        "--precision",
        "fp32",
        "--seed",
        "3",
        "--epochs",
        &EPOCHS.to_string(),
        "--save-frequency",
        "1",
        "--lr",
        "1e-3",
        "--warmup",
        "4",
        "--report-to",
        "tensorboard",
        "--log-every-n-steps",
        "1",
        "--name",
        "run",
        "--logs",
        logs.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if save_most_recent {
        args.push("--save-most-recent".into());
    }
    args
}

/// Starts the run and SIGKILLs it once out.log shows `step` (1-based) lines
/// of 0-based `epoch`.
fn run_and_kill(args: &[String], out_log: &Path, epoch: usize, step: usize) {
    let mut child = Command::new(common::clipflow_bin())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let marker = format!("Train Epoch: {epoch} [");
    let started = Instant::now();
    loop {
        let seen = std::fs::read_to_string(out_log)
            .map(|log| log.lines().filter(|l| l.contains(&marker)).count())
            .unwrap_or(0);
        if seen >= step {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before step {step} of epoch {epoch}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no step {step} of epoch {epoch}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run finished before it was killed");
}

fn oracle(args: &[String]) -> Vec<Value> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    common::run_oracle(ORACLE, &args)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// N of `epoch_N.pt`; None for `epoch_latest.pt` and anything else.
fn epoch_of_name(name: &str) -> Option<usize> {
    name.strip_prefix("epoch_")?
        .strip_suffix(".pt")?
        .parse()
        .ok()
}

/// The sorted file names `--save-frequency 1` leaves after `finished`
/// epochs.
fn checkpoint_names(finished: usize, save_most_recent: bool) -> Vec<String> {
    let mut names: Vec<String> = (1..=finished)
        .map(|n| format!("epoch_{n}.pt"))
        .chain(save_most_recent.then(|| "epoch_latest.pt".to_string()))
        .collect();
    names.sort();
    names
}

/// Each checkpoint, as torch.load read it (`loaded`, from the oracle's
/// `load`), holds a state_dict and optimizer state and the epoch its name
/// says; `epoch_latest.pt` holds `latest`.
fn assert_checkpoint_epochs(names: &[String], loaded: &Value, latest: usize) {
    for (name, file) in names.iter().zip(loaded.as_array().unwrap()) {
        assert!(file["state_dict"].as_bool().unwrap() && file["optimizer"].as_bool().unwrap());
        let expected = epoch_of_name(name).unwrap_or(latest);
        assert_eq!(file["epoch"].as_u64().unwrap() as usize, expected, "{name}");
    }
}

fn path_strings(dir: &Path, names: &[String]) -> Vec<String> {
    names
        .iter()
        .map(|n| dir.join(n).to_str().unwrap().to_string())
        .collect()
}

fn resume_after_kill(save_most_recent: bool) {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path();
    std::fs::write(root.join("tiny.json"), TINY_TRAIN_CONFIG).unwrap();
    let scenes = root.join("scenes");
    make_scenes(&scenes, 48, 16, 0);
    let reference_logs = root.join("reference");
    run_clipflow(&train_args(root, &reference_logs, save_most_recent));

    // Kill in epoch 1 or 2 (0-based) at a random step of it.
    let epoch = 1 + rand::random_range(0..2usize);
    let step = 1 + rand::random_range(0..STEPS_PER_EPOCH);
    println!("killing at step {step} of epoch {epoch}");
    let logs = root.join("logs");
    let run: PathBuf = logs.join("run");
    let checkpoints = run.join("checkpoints");
    let tensorboard = run.join("tensorboard");
    run_and_kill(
        &train_args(root, &logs, save_most_recent),
        &run.join("out.log"),
        epoch,
        step,
    );

    // What the killed run left: whole checkpoints of the epochs it
    // finished and saved. The next epoch trains while the checkpointer
    // writes the last one's, so the kill may land before that save or in
    // the middle of it: then the newest epoch has no file yet (or
    // epoch_latest.pt still holds the one before), and the hidden
    // temporary file of the write is all there is of it. Nothing visible
    // is half written.
    let left = common::file_names(&checkpoints);
    let whole: Vec<String> = left
        .iter()
        .filter(|n| !n.starts_with('.'))
        .cloned()
        .collect();
    let finished = whole
        .iter()
        .filter(|name| epoch_of_name(name).is_some())
        .count();
    assert!(
        finished + 1 == epoch
            || finished == epoch
            || (finished == epoch + 1 && step == STEPS_PER_EPOCH),
        "killed in epoch {epoch}, checkpoints {left:?}"
    );
    let latest_saved = whole.contains(&"epoch_latest.pt".to_string());
    assert_eq!(
        whole,
        checkpoint_names(finished, save_most_recent && latest_saved),
        "after the kill"
    );
    for hidden in left.iter().filter(|n| n.starts_with('.')) {
        let (written, pid) = hidden[1..].rsplit_once(".tmp").unwrap_or(("", ""));
        assert!(
            written.starts_with("epoch_") && pid.parse::<u32>().is_ok(),
            "not the temporary file of a checkpoint: {hidden}"
        );
    }
    let mut request = vec!["load".to_string()];
    request.extend(path_strings(&checkpoints, &whole));
    let loaded = &oracle(&request)[0];
    let latest = loaded
        .as_array()
        .unwrap()
        .last()
        .filter(|_| latest_saved)
        .map_or(finished, |file| file["epoch"].as_u64().unwrap() as usize);
    assert!(
        latest == finished || latest + 1 == finished,
        "epoch_latest.pt holds epoch {latest}, the newest epoch_N.pt {finished}"
    );
    assert_checkpoint_epochs(&whole, loaded, latest);
    // OpenCLIP's --resume latest takes epoch_latest.pt with
    // --save-most-recent (and starts afresh while there is none), else the
    // newest epoch_N.pt.
    let resumed_from = match (save_most_recent, latest_saved) {
        (true, true) => latest,
        (true, false) => 0,
        (false, _) => finished,
    };
    let events_before = common::file_names(&tensorboard);

    let mut resume = train_args(root, &logs, save_most_recent);
    resume.extend(["--resume".into(), "latest".into()]);
    run_clipflow(&resume);

    let names = common::file_names(&checkpoints);
    assert_eq!(
        names,
        checkpoint_names(EPOCHS, save_most_recent),
        "at the end (no temporary files)"
    );
    let resumed_events: Vec<String> = common::file_names(&tensorboard)
        .into_iter()
        .filter(|name| !events_before.contains(name))
        .collect();
    assert_eq!(events_before.len(), 1, "one events file: {events_before:?}");
    assert_eq!(
        resumed_events.len(),
        1,
        "one new events file: {resumed_events:?}"
    );
    let mut request = vec!["load".to_string()];
    request.extend(path_strings(&checkpoints, &names));
    request.extend(["+", "scalars", "train/"].map(String::from));
    request.push(
        reference_logs
            .join("run/tensorboard")
            .to_str()
            .unwrap()
            .into(),
    );
    request.extend(path_strings(&tensorboard, &events_before));
    request.extend(path_strings(&tensorboard, &resumed_events));
    let results = oracle(&request);
    let (loaded, scalars) = (&results[0], &results[1]);

    assert_checkpoint_epochs(&names, loaded, EPOCHS);

    // TensorBoard shows both runs' points (as for OpenCLIP, whose writer
    // also marks no restart): the killed run's from step 0 up to the kill,
    // the resumed run's from the epoch boundary after the last finished
    // epoch (the killed epoch's steps are done again) to the end. Both
    // agree with the uninterrupted run at every step they logged.
    let (reference, killed, resumed) = (&scalars[0], &scalars[1], &scalars[2]);
    let total_steps = (EPOCHS * STEPS_PER_EPOCH) as i64;
    let steps = |points: &[(i64, f64)]| points.iter().map(|p| p.0).collect::<Vec<_>>();
    let reference_lr = series(reference, "train/lr");
    assert_eq!(steps(&reference_lr), (0..total_steps).collect::<Vec<_>>());
    let killed_lr = series(killed, "train/lr");
    let killed_at = (epoch * STEPS_PER_EPOCH + step) as i64;
    assert!(
        killed_lr.len() as i64 >= killed_at,
        "the killed run logged {killed_lr:?}"
    );
    assert_eq!(
        killed_lr,
        reference_lr[..killed_lr.len()],
        "lr before the kill"
    );
    let boundary = resumed_from * STEPS_PER_EPOCH;
    assert_eq!(
        series(resumed, "train/lr"),
        reference_lr[boundary..],
        "lr after resuming"
    );
    // Same data order, weights and optimizer state after resuming: the same
    // fp32 operations, so the same losses up to the float32 rounding of
    // reductions split across threads.
    let reference_loss = series(reference, "train/loss");
    for (run, scalars) in [("killed", killed), ("resumed", resumed)] {
        for (step, loss) in series(scalars, "train/loss") {
            let expected = reference_loss[step as usize].1;
            assert!(
                (loss - expected).abs() <= 1e-5 * expected.abs(),
                "{run} run, loss at step {step}: {loss}, uninterrupted {expected}"
            );
        }
    }
}

#[test]
fn resume_latest_after_sigkill() {
    resume_after_kill(false);
}

#[test]
fn resume_latest_after_sigkill_with_save_most_recent() {
    resume_after_kill(true);
}
