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
//!
//! With `--save-every-n-steps`, a run killed at a random step between two
//! step checkpoints and resumed with `--resume latest` continues from the
//! newest one and trains on exactly the batches the uninterrupted run did:
//! every logged loss and learning rate, and the final weights, are
//! bit-identical (fp32 on the CPU, two loader workers), for webdataset
//! shards, resampled shards, two `::` sources with upsampling factors, a
//! CSV table and `--accum-freq 2`; OpenCLIP's
//! `create_model` loads a step checkpoint's weights.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clipflow_core::train::run_folder::step_checkpoint_file_name;
use clipflow_core::weights::read_weights;
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
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(logged_run_flags(logs));
    if save_most_recent {
        args.push("--save-most-recent".into());
    }
    args
}

/// The schedule and logging both kinds of run share: run `run` under
/// `logs`, every step in TensorBoard.
fn logged_run_flags(logs: &Path) -> Vec<String> {
    [
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
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([logs.to_str().unwrap().to_string()])
    .collect()
}

/// Starts the run and SIGKILLs it once out.log holds `count` lines with
/// `marker` and the file `wait_for` names (if any) exists.
fn run_and_kill(
    args: &[String],
    out_log: &Path,
    marker: &str,
    count: usize,
    wait_for: Option<&Path>,
) {
    let mut child = Command::new(common::clipflow_bin())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let seen = std::fs::read_to_string(out_log)
            .map(|log| log.lines().filter(|l| l.contains(marker)).count())
            .unwrap_or(0);
        if seen >= count && wait_for.is_none_or(Path::exists) {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before {count} lines with {marker:?}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no {count} lines with {marker:?}"
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

/// A folder holding the tiny model's config (`tiny.json`) and 48 rendered
/// scenes in 3 shards (`scenes/`).
fn scratch_with_scenes() -> tempfile::TempDir {
    let scratch = tempfile::tempdir().unwrap();
    std::fs::write(scratch.path().join("tiny.json"), TINY_TRAIN_CONFIG).unwrap();
    make_scenes(&scratch.path().join("scenes"), 48, 16, 0);
    scratch
}

/// Runs `args` again with `--resume latest`; returns the TensorBoard event
/// files in `tensorboard` from before, and the ones the resumed run added.
fn resume_latest(args: &[String], tensorboard: &Path) -> (Vec<String>, Vec<String>) {
    let before = common::file_names(tensorboard);
    let mut resume = args.to_vec();
    resume.extend(["--resume".into(), "latest".into()]);
    run_clipflow(&resume);
    let added = common::file_names(tensorboard)
        .into_iter()
        .filter(|name| !before.contains(name))
        .collect();
    (before, added)
}

fn resume_after_kill(save_most_recent: bool) {
    let scratch = scratch_with_scenes();
    let root = scratch.path();
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
        &format!("Train Epoch: {epoch} ["),
        step,
        None,
    );

    // What the killed run left: whole checkpoints of the epochs it
    // finished and saved. The next epochs train while the checkpointer
    // writes the last ones' (with epochs this short it may be more than one
    // epoch behind), so the kill may land before a save or in the middle of
    // it: then the newest epochs have no file yet (or epoch_latest.pt still
    // holds an older one), and the hidden temporary file of the write is
    // all there is of the one being written. Nothing visible is half
    // written.
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
        finished <= epoch || (finished == epoch + 1 && step == STEPS_PER_EPOCH),
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
    let (events_before, resumed_events) =
        resume_latest(&train_args(root, &logs, save_most_recent), &tensorboard);

    let names = common::file_names(&checkpoints);
    assert_eq!(
        names,
        checkpoint_names(EPOCHS, save_most_recent),
        "at the end (no temporary files)"
    );
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

/// Epochs of the step-checkpoint runs (6 steps each: 48 samples at batch
/// size 8) and their `--save-every-n-steps`: checkpoints after steps 4, 8
/// and 16 (12 and 18 end epochs).
const STEP_RUN_EPOCHS: usize = 3;
const SAVE_EVERY_N_STEPS: usize = 4;

fn step_run_args(root: &Path, data: &[&str], logs: &Path) -> Vec<String> {
    let mut args: Vec<String> = ["train", "--model", root.join("tiny.json").to_str().unwrap()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let epochs = STEP_RUN_EPOCHS.to_string();
    let every = SAVE_EVERY_N_STEPS.to_string();
    args.extend(
        [
            "--batch-size",
            "8",
            "--workers",
            "2",
            "--precision",
            "fp32",
            "--seed",
            "3",
            "--epochs",
            &epochs,
            "--save-every-n-steps",
            &every,
        ]
        .map(String::from),
    );
    args.extend(logged_run_flags(logs));
    // Last, so that a case's flags take precedence (the last value wins).
    args.extend(data.iter().map(|s| s.to_string()));
    args
}

#[test]
fn a_run_killed_between_step_checkpoints_resumes_on_the_same_batches() {
    let scratch = scratch_with_scenes();
    let root = scratch.path();
    let scenes = root.join("scenes");
    let shards = scenes.join("shards/scenes-{00000..00002}.tar");
    let shards = shards.to_str().unwrap();
    let csv = common::scenes_csv(&scenes, 3);
    let first_two = scenes.join("shards/scenes-{00000..00001}.tar");
    let third = scenes.join("shards/scenes-00002.tar");
    let two_sources = format!("{}::{}", first_two.display(), third.display());
    let cases: [(&str, Vec<&str>); 5] = [
        (
            "shards",
            vec!["--train-data", shards, "--dataset-type", "webdataset"],
        ),
        (
            "resampled",
            vec![
                "--train-data",
                shards,
                "--dataset-type",
                "webdataset",
                "--dataset-resampled",
            ],
        ),
        (
            "csv",
            vec![
                "--train-data",
                csv.to_str().unwrap(),
                "--dataset-type",
                "csv",
            ],
        ),
        // Two sources, the second drawn twice as often.
        (
            "sources",
            vec![
                "--train-data",
                &two_sources,
                "--train-data-upsampling-factors",
                "1::2",
                "--dataset-type",
                "webdataset",
                "--dataset-resampled",
            ],
        ),
        // Two batches of 4 per optimiser step: the same 6 steps an epoch.
        (
            "accum",
            vec![
                "--train-data",
                shards,
                "--dataset-type",
                "webdataset",
                "--accum-freq",
                "2",
                "--batch-size",
                "4",
            ],
        ),
    ];
    let total_steps = (STEP_RUN_EPOCHS * STEPS_PER_EPOCH) as i64;
    for (case, data) in cases {
        let reference_logs = root.join(case).join("reference");
        run_clipflow(&step_run_args(root, &data, &reference_logs));
        let reference_run = reference_logs.join("run");

        // Killed at a random step after a step checkpoint (once its file
        // is there: the checkpointer writes it while training goes on).
        let kill_at = 5 + rand::random_range(0..13usize);
        let saved_at = [4, 8, 16]
            .into_iter()
            .filter(|&s| s < kill_at)
            .max()
            .unwrap();
        let saved = step_checkpoint_file_name((saved_at / STEPS_PER_EPOCH) as u64, saved_at as u64);
        println!("{case}: killing at step {kill_at}, after {saved}");
        let logs = root.join(case).join("logs");
        let run = logs.join("run");
        let args = step_run_args(root, &data, &logs);
        let saved = run.join("checkpoints").join(saved);
        run_and_kill(
            &args,
            &run.join("out.log"),
            "Train Epoch:",
            kill_at,
            Some(&saved),
        );
        let tensorboard = run.join("tensorboard");
        let (events_before, resumed_events) = resume_latest(&args, &tensorboard);

        // The final weights, bit for bit.
        let last = format!("checkpoints/epoch_{STEP_RUN_EPOCHS}.pt");
        let reference = read_weights(&reference_run.join(&last)).unwrap();
        let resumed = read_weights(&run.join(&last)).unwrap();
        assert_eq!(reference.len(), resumed.len());
        for ((name, a), (_, b)) in reference.iter().zip(&resumed) {
            assert!(
                a.equal(b),
                "{case}: {name} differs from the uninterrupted run's"
            );
        }

        // Every step either run logged, as the uninterrupted run logged it.
        let mut request = vec!["scalars".to_string(), "train/".into()];
        request.push(reference_run.join("tensorboard").to_str().unwrap().into());
        request.extend(path_strings(&tensorboard, &events_before));
        request.extend(path_strings(&tensorboard, &resumed_events));
        let scalars = &oracle(&request)[0];
        let (reference, killed, resumed) = (&scalars[0], &scalars[1], &scalars[2]);
        for tag in ["train/loss", "train/lr"] {
            let expected = series(reference, tag);
            assert_eq!(expected.len() as i64, total_steps, "{case} {tag}");
            let resumed = series(resumed, tag);
            // From that step checkpoint, or an epoch's end saved after it.
            let killed = series(killed, tag);
            let first = resumed.first().expect("the resumed run logged steps").0;
            assert!(
                first as usize >= saved_at && first as usize <= killed.len(),
                "{case}: resumed at step {first}, killed after {} steps",
                killed.len()
            );
            assert!(
                first as usize % SAVE_EVERY_N_STEPS == 0 || first as usize % STEPS_PER_EPOCH == 0,
                "{case}: resumed at step {first}, where no checkpoint was saved"
            );
            assert_eq!(
                resumed,
                expected[first as usize..],
                "{case} {tag} after resuming"
            );
            assert_eq!(
                killed,
                expected[..killed.len()],
                "{case} {tag} before the kill"
            );
        }
    }

    // OpenCLIP loads a step checkpoint's weights, and torch.load sees the
    // epoch it restarts (the completed epochs).
    let step_checkpoint = root.join("shards/reference/run/checkpoints/epoch_1_step_8.pt");
    let step_checkpoint = step_checkpoint.to_str().unwrap().to_string();
    let loaded = oracle(&[
        "load".into(),
        step_checkpoint.clone(),
        "+".into(),
        "features".into(),
        root.join("tiny.json").to_str().unwrap().into(),
        step_checkpoint.clone(),
        step_checkpoint,
    ]);
    assert_eq!(loaded[0][0]["epoch"], 1);
    assert_eq!(loaded[1]["image"], 0.0);
}
