//! `clipflow train` on two CPU processes over gloo beside OpenCLIP's own
//! `open_clip_train.main` on two processes (tests/oracle/train_parity_dist.py
//! under torchrun), from the same initial weights on the same shards:
//! per-step losses, learning rates and logit scales from rank 0's TensorBoard
//! events, final weights, and the checkpoint loading strictly in OpenCLIP.
//! Cases: DDP's averaged gradients with a cosine schedule and
//! `--grad-clip-norm`, `--local-loss --gather-with-grad`, `--siglip`,
//! `--accum-freq 2 --local-loss --gather-with-grad`, distillation with
//! `--gather-with-grad` (both loss terms' gradients cross the ranks), and a
//! ModifiedResNet (batch-norm statistics taken from rank 0 before each step,
//! compared in the final checkpoint) without and with `--use-bn-sync`
//! (OpenCLIP's SyncBatchNorm runs on CPU in the oracle, which says how), each
//! launched with `torchrun --no-python` (its agent hosts the store); the
//! first again launched with SLURM's variables alone (`SLURM_PROCID`,
//! `SLURM_LOCALID`, `SLURM_NTASKS`, `MASTER_ADDR`, `MASTER_PORT`). Also: rank
//! 0 alone writes the run folder (with `--log-local`, each node's first rank
//! its own log), the Train line's samples/s is the global rate and
//! samples/s/gpu the per-rank one, ranks launched with different flags stop
//! naming the flag, a rank killed mid-run makes the other stop with an error,
//! a world that never fills fails the rendezvous within its timeout, the
//! other rank waits out rank 0's evaluation however long it is, two ranks
//! resumed with `--resume latest` repeat the uninterrupted run exactly, and
//! `--dist-backend nccl` on a machine without a GPU fails in libtorch's
//! ProcessGroupNCCL (so it is built in) with a clear error.
//!
//! As in tests/train_parity.rs, each rank's epoch is one batch of one shard
//! (16 samples, batch size 16; that shard twice with `--accum-freq 2`), and
//! every loss is a sum over the step's pairs, so neither side's sample order
//! matters; which rank gets which shard follows OpenCLIP's seeded shard
//! shuffle and split by rank, which the loss of the first step checks.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::parity::{assert_series_close, assert_weights_close, series};
use common::{
    clipflow_bin, make_scenes, oracle_python, run_clipflow, run_oracle, TINY_TRAIN_CONFIG,
};
use serde_json::{json, Value};

const ORACLE: &str = include_str!("oracle/train_parity.py");
const MODEL_NAME: &str = "parity-tiny";
/// tests/data/tiny-resnet.json: a ModifiedResNet, whose batch norms' running
/// statistics are buffers that DDP broadcasts from rank 0 before each step.
const RESNET_NAME: &str = "tiny-resnet";

struct Case {
    name: &'static str,
    /// The model config's file stem: MODEL_NAME (32 px) or RESNET_NAME
    /// (64 px, on shards of its size).
    model: &'static str,
    shards: &'static str,
    epochs: usize,
    flags: &'static [&'static str],
    siglip: bool,
    /// Distils from OpenCLIP's epoch-2 checkpoint of the first case.
    distill: bool,
}

const CASES: [Case; 7] = [
    Case {
        name: "ddp-cosine",
        model: MODEL_NAME,
        shards: "scenes-{00000..00001}.tar",
        epochs: 4,
        flags: &[
            "--lr-scheduler",
            "cosine",
            "--warmup",
            "2",
            "--grad-clip-norm",
            "1.0",
        ],
        siglip: false,
        distill: false,
    },
    Case {
        name: "local-gather",
        model: MODEL_NAME,
        shards: "scenes-{00000..00001}.tar",
        epochs: 3,
        flags: &[
            "--lr-scheduler",
            "const",
            "--warmup",
            "1",
            "--local-loss",
            "--gather-with-grad",
        ],
        siglip: false,
        distill: false,
    },
    Case {
        name: "siglip",
        model: MODEL_NAME,
        shards: "scenes-{00000..00001}.tar",
        epochs: 3,
        flags: &["--lr-scheduler", "const", "--warmup", "1", "--siglip"],
        siglip: true,
        distill: false,
    },
    // Each rank's one shard holds half its share of the epoch, so both
    // sides walk it twice (webdataset's `with_epoch`): each micro-batch of
    // the window is the same 16 samples on both sides. Each rank's local
    // loss sends gradients to the other rank's features of the micro-batch
    // (gathered with grad), which a gradient scale alone cannot mimic.
    Case {
        name: "accum-gather",
        model: MODEL_NAME,
        shards: "scenes-{00000..00001}.tar",
        epochs: 3,
        flags: &[
            "--lr-scheduler",
            "const",
            "--warmup",
            "1",
            "--accum-freq",
            "2",
            "--local-loss",
            "--gather-with-grad",
            "--train-num-samples",
            "64",
        ],
        siglip: false,
        distill: false,
    },
    Case {
        name: "distill-gather",
        model: MODEL_NAME,
        shards: "scenes-{00000..00001}.tar",
        epochs: 3,
        flags: &[
            "--lr-scheduler",
            "const",
            "--warmup",
            "1",
            "--gather-with-grad",
        ],
        siglip: false,
        distill: true,
    },
    Case {
        name: "resnet-buffers",
        model: RESNET_NAME,
        shards: "scenes-{00000..00001}.tar",
        epochs: 3,
        flags: &["--lr-scheduler", "const", "--warmup", "1"],
        siglip: false,
        distill: false,
    },
    // Synchronised batch norms: both ranks' batches normalise together.
    Case {
        name: "resnet-bn-sync",
        model: RESNET_NAME,
        shards: "scenes-{00000..00001}.tar",
        epochs: 3,
        flags: &["--lr-scheduler", "const", "--warmup", "1", "--use-bn-sync"],
        siglip: false,
        distill: false,
    },
];

/// tests/common's tiny training config, written to `dir` as MODEL_NAME's
/// file.
fn tiny_config(dir: &Path) -> PathBuf {
    let config = dir.join(format!("{MODEL_NAME}.json"));
    std::fs::write(&config, TINY_TRAIN_CONFIG).unwrap();
    config
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn torchrun() -> PathBuf {
    oracle_python().with_file_name("torchrun")
}

/// The flags both sides' runs of `case` share, all but `--model` and
/// `--logs`.
fn shared_flags(case: &Case, name: &str, shards: &Path, initial: &Path) -> Vec<String> {
    let mut flags: Vec<String> = [
        "--train-data",
        shards.join(case.shards).to_str().unwrap(),
        "--dataset-type",
        "webdataset",
        "--batch-size",
        "16",
        "--workers",
        "1",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--pretrained",
        initial.to_str().unwrap(),
        "--aug-cfg",
        "scale=(1.0,1.0)",
        "--report-to",
        "tensorboard",
        "--log-every-n-steps",
        "1",
        "--seed",
        "0",
        "--epochs",
        &case.epochs.to_string(),
        "--save-frequency",
        "1",
        "--lr",
        "1e-3",
        "--name",
        name,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    flags.extend(case.flags.iter().map(|s| s.to_string()));
    flags
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `torchrun --nproc_per_node 2 --no-python clipflow train ARGS` in
/// `folder`: torchrun's parser refuses `--logs`, so the run goes to
/// `folder/logs`.
fn clipflow_under_torchrun(folder: &Path, args: &[String]) -> Output {
    Command::new(torchrun())
        .current_dir(folder)
        .args(["--nproc_per_node", "2", "--master_port"])
        .arg(free_port().to_string())
        .arg("--no-python")
        .arg(clipflow_bin())
        .arg("train")
        .args(args)
        .output()
        .unwrap()
}

/// Two `clipflow train ARGS` processes with the variables `srun` sets (and
/// the MASTER_ADDR/MASTER_PORT an sbatch script exports), one per rank;
/// `adjust(rank, command)` adds flags or variables to that rank's.
fn clipflow_under_slurm(args: &[String], adjust: impl Fn(usize, &mut Command)) -> Vec<Child> {
    let port = free_port().to_string();
    (0..2)
        .map(|rank| {
            let mut command = slurm_rank(rank, &port, args);
            adjust(rank, &mut command);
            command
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect()
}

/// `clipflow train ARGS` as rank `rank` of 2, with the variables `srun` sets
/// and the store at 127.0.0.1:`port`.
fn slurm_rank(rank: usize, port: &str, args: &[String]) -> Command {
    let mut command = Command::new(clipflow_bin());
    command
        .arg("train")
        .args(args)
        .env_remove("WORLD_SIZE")
        .env_remove("RANK")
        .env_remove("LOCAL_RANK")
        .env("SLURM_NTASKS", "2")
        .env("SLURM_PROCID", rank.to_string())
        .env("SLURM_LOCALID", rank.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port)
        .env("OMP_NUM_THREADS", "1");
    command
}

/// `(samples/s, samples/s/gpu)` of every Train line of an out.log.
fn train_rates(log: &str) -> Vec<(f64, f64)> {
    log.lines()
        .filter(|line| line.contains("Train Epoch: "))
        .map(|line| {
            let after = line.split("Batch (t): ").nth(1).expect("a Batch (t) field");
            let mut fields = after.split(", ").skip(1);
            let number = |text: Option<&str>, unit: &str| -> f64 {
                text.and_then(|t| t.split_whitespace().next())
                    .and_then(|t| t.strip_suffix(unit))
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or_else(|| panic!("no {unit} field in {line}"))
            };
            let global = number(fields.next(), "/s");
            let per_gpu = number(fields.next(), "/s/gpu");
            (global, per_gpu)
        })
        .collect()
}

#[test]
fn two_ranks_train_as_open_clip_does() {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path();
    let scenes = root.join("scenes");
    make_scenes(&scenes, 32, 16, 0);
    let scenes_64 = root.join("scenes-64");
    run_clipflow(&[
        "make-scenes",
        scenes_64.to_str().unwrap(),
        "--samples",
        "32",
        "--samples-per-shard",
        "16",
        "--image-size",
        "64",
        "--zeroshot-per-class",
        "0",
    ]);
    let shards_of = |case: &Case| match case.model {
        RESNET_NAME => scenes_64.join("shards"),
        _ => scenes.join("shards"),
    };
    // Both configs in one folder, which the oracle registers at once.
    let models = root.join("models");
    std::fs::create_dir(&models).unwrap();
    let config_of = |model: &str| {
        models
            .join(format!("{model}.json"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    std::fs::write(config_of(MODEL_NAME), TINY_TRAIN_CONFIG).unwrap();
    let resnet = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-resnet.json");
    std::fs::copy(resnet, config_of(RESNET_NAME)).unwrap();
    let config = config_of(MODEL_NAME);
    let config = config.as_str();
    let initial = root.join("initial.pt");
    let initial_siglip = root.join("initial-siglip.pt");
    let initial_resnet = root.join("initial-resnet.pt");
    run_oracle(
        ORACLE,
        &[
            "init",
            config,
            initial.to_str().unwrap(),
            "+",
            "init",
            config,
            initial_siglip.to_str().unwrap(),
            "siglip",
            "+",
            "init",
            &config_of(RESNET_NAME),
            initial_resnet.to_str().unwrap(),
        ],
    );
    let initial_of = |case: &Case| {
        if case.siglip {
            initial_siglip.clone()
        } else if case.model == RESNET_NAME {
            initial_resnet.clone()
        } else {
            initial.clone()
        }
    };
    let (ours_folder, theirs) = (root.join("ours"), root.join("theirs"));
    let teacher = theirs.join(format!("{}/checkpoints/epoch_2.pt", CASES[0].name));
    let teacher = teacher.to_str().unwrap();
    std::fs::create_dir(&ours_folder).unwrap();
    let ours = ours_folder.join("logs");

    let their_runs: Vec<Vec<String>> = CASES
        .iter()
        .map(|case| {
            let mut flags = shared_flags(case, case.name, &shards_of(case), &initial_of(case));
            flags.extend(["--model".into(), case.model.into(), "--logs".into()]);
            flags.push(theirs.to_str().unwrap().into());
            if case.distill {
                flags.extend(["--distill-model".into(), MODEL_NAME.into()]);
                flags.extend(["--distill-pretrained".into(), teacher.into()]);
            }
            flags
        })
        .collect();
    let oracle = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/train_parity_dist.py");
    let out = Command::new(torchrun())
        .args(["--nproc_per_node", "2", "--master_port"])
        .arg(free_port().to_string())
        .arg(&oracle)
        .arg(&models)
        .arg(json!(their_runs).to_string())
        .output()
        .unwrap();
    assert_success("OpenCLIP's two-rank training", &out);

    let our_flags = |case: &Case, name: &str| {
        let mut flags = shared_flags(case, name, &shards_of(case), &initial_of(case));
        flags.extend(["--model".into(), config_of(case.model)]);
        if case.distill {
            flags.extend(["--distill-model".into(), config.into()]);
            flags.extend(["--distill-pretrained".into(), teacher.into()]);
        }
        flags
    };
    for case in &CASES {
        let out = clipflow_under_torchrun(&ours_folder, &our_flags(case, case.name));
        assert_success(&format!("clipflow under torchrun, {}", case.name), &out);
    }
    let slurm = "ddp-cosine-slurm";
    let mut slurm_flags = our_flags(&CASES[0], slurm);
    slurm_flags.extend(["--logs".into(), ours.to_str().unwrap().into()]);
    for (rank, child) in clipflow_under_slurm(&slurm_flags, |_, _| {})
        .into_iter()
        .enumerate()
    {
        let out = child.wait_with_output().unwrap();
        assert_success(&format!("clipflow rank {rank} under SLURM variables"), &out);
    }

    // Rank 0's TensorBoard scalars and final checkpoints, read back in one
    // oracle call; the SLURM run is compared with OpenCLIP's first case.
    let checkpoint = |logs: &Path, name: &str, case: &Case| {
        let file = format!("{name}/checkpoints/epoch_{}.pt", case.epochs);
        logs.join(file).to_str().unwrap().to_string()
    };
    let pairs: Vec<(&str, &Case)> = CASES
        .iter()
        .map(|case| (case.name, case))
        .chain([(slurm, &CASES[0])])
        .collect();
    let mut request: Vec<String> = Vec::new();
    for (name, case) in &pairs {
        request.extend(["scalars".into(), "train/".into()]);
        request.push(ours.join(name).join("tensorboard").to_str().unwrap().into());
        request.push(
            theirs
                .join(case.name)
                .join("tensorboard")
                .to_str()
                .unwrap()
                .into(),
        );
        request.extend(["+".into(), "compare".into()]);
        request.push(initial_of(case).to_str().unwrap().into());
        request.push(checkpoint(&ours, name, case));
        request.push(checkpoint(&theirs, case.name, case));
        request.push("+".into());
    }
    request.extend(["features".into(), config.into()]);
    request.push(checkpoint(&ours, CASES[0].name, &CASES[0]));
    request.push(checkpoint(&theirs, CASES[0].name, &CASES[0]));
    let request: Vec<&str> = request.iter().map(String::as_str).collect();
    let stdout = run_oracle(ORACLE, &request);
    let results: Vec<Value> = stdout
        .lines()
        .rev()
        .take(2 * pairs.len() + 1)
        .map(|line| serde_json::from_str(line).unwrap())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();

    for ((name, case), result) in pairs.iter().zip(results.chunks(2)) {
        let (scalars, weights) = (&result[0], &result[1]);
        let (our_scalars, their_scalars) = (&scalars[0], &scalars[1]);
        assert_eq!(
            series(their_scalars, "train/loss").len(),
            case.epochs,
            "{name}: one step per epoch"
        );
        // The same fp32 arithmetic on each rank as in one process, and
        // gloo's sum of two values is exact: per-step agreement to ~1e-6,
        // 1e-4 leaves room for Adam's rounding in later steps (as in
        // tests/train_parity.rs).
        let mut tags: Vec<&str> = their_scalars
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .filter(|tag| tag.ends_with("loss"))
            .collect();
        tags.push("train/scale");
        for tag in tags {
            assert_series_close(name, tag, our_scalars, their_scalars, 1e-4);
        }
        assert_series_close(name, "train/lr", our_scalars, their_scalars, 1e-9);
        let lr_sum: f64 = series(their_scalars, "train/lr").iter().map(|p| p.1).sum();
        assert_weights_close(name, weights, lr_sum);
    }
    let features = results.last().unwrap();
    for (what, scale) in [("image", "image_scale"), ("text", "text_scale")] {
        let diff = features[what].as_f64().unwrap();
        let scale = features[scale].as_f64().unwrap();
        assert!(
            diff <= 1e-3 * scale,
            "{what} features differ by {diff} (size {scale})"
        );
    }

    // Rank 0 alone keeps the run folder: one log, one TensorBoard folder.
    for (name, case) in &pairs {
        let run = ours.join(name);
        let mut entries = common::file_names(&run);
        entries.retain(|entry| entry != "checkpoints" && entry != "tensorboard");
        assert_eq!(entries, ["out.log", "params.txt"], "{name}: run folder");
        let params = std::fs::read_to_string(run.join("params.txt")).unwrap();
        assert!(params.contains("world_size: 2"), "{name}: params.txt");
        assert!(params.contains("distributed: True"), "{name}: params.txt");
        let log = std::fs::read_to_string(run.join("out.log")).unwrap();
        let rates = train_rates(&log);
        assert_eq!(rates.len(), case.epochs, "{name}: Train lines");
        for (global, per_gpu) in rates {
            // Both printed with 6 significant digits.
            assert!(
                (global - 2.0 * per_gpu).abs() <= 1e-4 * global,
                "{name}: {global}/s is not twice {per_gpu}/s/gpu"
            );
        }
    }
}

/// A short run of ViT-B-32 on synthetic data on the CPU, logging into
/// `logs`, with `extra` flags.
fn synthetic_run(logs: &Path, extra: &[&str]) -> Vec<String> {
    let logs = logs.to_str().unwrap();
    [
        "--dataset-type",
        "synthetic",
        "--train-num-samples",
        "64",
        "--model",
        "ViT-B-32",
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--logs",
        logs,
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn log_local_gives_each_node_its_own_log() {
    // Two ranks as the only rank of two nodes (SLURM_LOCALID 0 on both):
    // with --log-local each writes out-RANK in the run folder, as
    // OpenCLIP's do; rank 0 alone writes the rest.
    let scratch = tempfile::tempdir().unwrap();
    let config = tiny_config(scratch.path());
    let logs = scratch.path().join("logs");
    let extra = ["--name", "two-nodes", "--log-local", "--batch-size", "8"];
    let mut args = synthetic_run(&logs, &extra);
    args.extend(["--model".into(), config.to_str().unwrap().into()]);
    let children = clipflow_under_slurm(&args, |_, command| {
        command.env("SLURM_LOCALID", "0");
    });
    for (rank, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert_success(&format!("rank {rank} on its own node"), &out);
    }
    let run = logs.join("two-nodes");
    let mut entries = common::file_names(&run);
    entries.retain(|entry| entry != "checkpoints");
    assert_eq!(entries, ["out-0", "out-1", "params.txt"], "run folder");
    // As OpenCLIP's: each log opens with its rank's launch line, and only
    // rank 0 logs the training.
    for rank in 0..2 {
        let log = std::fs::read_to_string(run.join(format!("out-{rank}"))).unwrap();
        let launch = format!(
            "Running in distributed mode with multiple processes. Device: cpu.\
             Process (global: {rank}, local 0), total 2."
        );
        let first = log.lines().next().unwrap_or_default();
        assert!(first.ends_with(&launch), "out-{rank} opens with {first:?}");
        assert_eq!(
            log.contains("Train Epoch: 0"),
            rank == 0,
            "out-{rank} and its Train lines:\n{log}"
        );
    }
}

#[test]
fn only_the_rank_that_saves_and_evaluates_takes_snapshots() {
    // Rank 0 writes the checkpoints; rank 1 has no stage that takes the
    // epoch's snapshot, so it copies none (its trace has no snapshot span).
    let scratch = tempfile::tempdir().unwrap();
    let config = tiny_config(scratch.path());
    let logs = scratch.path().join("logs");
    let extra = ["--name", "snapshots", "--batch-size", "8"];
    let mut args = synthetic_run(&logs, &extra);
    args.extend(["--model".into(), config.to_str().unwrap().into()]);
    let trace = |rank: usize| scratch.path().join(format!("trace-{rank}.jsonl"));
    let children = clipflow_under_slurm(&args, |rank, command| {
        command.arg("--otel-file").arg(trace(rank));
    });
    for (rank, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert_success(&format!("rank {rank}"), &out);
    }
    let snapshot_spans = |rank: usize| {
        std::fs::read_to_string(trace(rank))
            .unwrap()
            .lines()
            .filter(|line| line.contains("\"name\":\"snapshot\""))
            .count()
    };
    assert_eq!(snapshot_spans(0), 1, "rank 0 snapshots its one epoch");
    assert_eq!(snapshot_spans(1), 0, "rank 1 took a snapshot nobody uses");
    assert!(logs.join("snapshots/checkpoints/epoch_1.pt").is_file());
}

#[test]
fn ranks_launched_with_different_flags_stop_naming_the_flag() {
    let scratch = tempfile::tempdir().unwrap();
    let args = synthetic_run(scratch.path(), &["--name", "mismatch"]);
    let batch_size = |rank: usize, command: &mut Command| {
        command.args(["--batch-size", &(8 + 8 * rank).to_string()]);
    };
    for (rank, child) in clipflow_under_slurm(&args, batch_size)
        .into_iter()
        .enumerate()
    {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "rank {rank} trained anyway");
        assert!(
            stderr.contains("--batch-size is 8 on rank 0 but rank 1 has 16"),
            "rank {rank}: {stderr}"
        );
    }
}

#[test]
fn a_rank_killed_mid_run_stops_the_other() {
    let scratch = tempfile::tempdir().unwrap();
    let logs = scratch.path();
    let config = tiny_config(logs);
    let args: Vec<String> = [
        "--dataset-type",
        "synthetic",
        "--train-num-samples",
        "100000",
        "--batch-size",
        "4",
        "--model",
        config.to_str().unwrap(),
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--log-every-n-steps",
        "1",
        "--logs",
        logs.to_str().unwrap(),
        "--name",
        "killed",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut children = clipflow_under_slurm(&args, |_, _| {});
    let log = logs.join("killed/out.log");
    let started = Instant::now();
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Train Epoch: 0 [")) {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no step was logged"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    children[1].kill().unwrap();
    let killed_at = Instant::now();
    let out = children.remove(0).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "rank 0 ended as if nothing happened:\n{stderr}"
    );
    assert!(
        killed_at.elapsed() < Duration::from_secs(60),
        "rank 0 took {:?} to stop",
        killed_at.elapsed()
    );
    assert!(stderr.contains("across 2 ranks"), "{stderr}");
    let _ = children[0].wait();
}

#[test]
fn a_rank_with_an_undecodable_image_keeps_step_with_the_other() {
    // Two shards of 16 samples, one a whole epoch's share of a rank, and
    // one image of the second undecodable: that rank's epoch takes the
    // 17th sample from the spares its reader reads after the share.
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path();
    let config = tiny_config(root);
    make_scenes(&root.join("scenes"), 32, 16, 0);
    let shards = root.join("scenes/shards");
    let damaged = shards.join("scenes-00001.tar");
    let intact = root.join("intact-00001.tar");
    std::fs::rename(&damaged, &intact).unwrap();
    common::damage_first_image(&intact, &damaged);
    let args = |name: &str, extra: &[&str]| -> Vec<String> {
        let pattern = shards.join("scenes-{00000..00001}.tar");
        [
            "--train-data",
            pattern.to_str().unwrap(),
            "--train-num-samples",
            "32",
            "--batch-size",
            "16",
            "--workers",
            "1",
            "--model",
            config.to_str().unwrap(),
            "--device",
            "cpu",
            "--epochs",
            "2",
            "--name",
            name,
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
    };
    let out = clipflow_under_torchrun(root, &args("spares", &[]));
    assert_success("two ranks, one undecodable image", &out);
    let log = std::fs::read_to_string(root.join("logs/spares/out.log")).unwrap();
    for epoch in 0..2 {
        let full = format!("Train Epoch: {epoch} [32/32 (100%)]");
        assert!(log.contains(&full), "no {full:?} in:\n{log}");
    }

    // Without spares that rank's epoch has no batch: it stops, saying why,
    // instead of the ranks training different steps.
    let no_spares = root.join("no-spares.toml");
    std::fs::write(
        &no_spares,
        "extends = \"train.toml\"\n\n[stages.shard-reader]\nspare_samples = 0\n",
    )
    .unwrap();
    let topology = ["--topology", no_spares.to_str().unwrap()];
    let out = clipflow_under_torchrun(root, &args("no-spares", &topology));
    assert!(!out.status.success(), "two ranks trained different steps");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("epoch 0 ended after 0 of its 1 batches"),
        "{stderr}"
    );
}

#[test]
fn nccl_without_a_gpu_is_a_clear_error() {
    let scratch = tempfile::tempdir().unwrap();
    let args = synthetic_run(scratch.path(), &["--dist-backend", "nccl"]);
    for (rank, child) in clipflow_under_slurm(&args, |_, _| {})
        .into_iter()
        .enumerate()
    {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "rank {rank} trained anyway");
        // libtorch's own ProcessGroupNCCL refusing: the backend is built in.
        assert!(stderr.contains("(nccl, timeout"), "rank {rank}: {stderr}");
        assert!(stderr.contains("no GPUs found"), "rank {rank}: {stderr}");
    }
}

#[test]
fn a_world_that_never_fills_fails_the_rendezvous_within_its_timeout() {
    // Each rank alone: rank 0 hosts the store and waits for rank 1; rank 1
    // finds no store at the address. CLIPFLOW_DIST_TIMEOUT bounds both.
    let scratch = tempfile::tempdir().unwrap();
    for rank in 0..2 {
        let logs = scratch.path().join(rank.to_string());
        let started = Instant::now();
        let out = slurm_rank(rank, &free_port().to_string(), &synthetic_run(&logs, &[]))
            .env("CLIPFLOW_DIST_TIMEOUT", "3")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "rank {rank} trained alone");
        assert!(
            stderr.contains(&format!("rank {rank} of 2 joining the group at 127.0.0.1:")),
            "rank {rank}: {stderr}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "rank {rank} took {:?} to give up",
            started.elapsed()
        );
    }
}

#[test]
fn two_ranks_resume_latest_where_they_stopped() {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path();
    let scenes = root.join("scenes");
    make_scenes(&scenes, 32, 16, 0);
    let config = tiny_config(root);
    let initial = root.join("initial.pt");
    run_oracle(
        ORACLE,
        &["init", config.to_str().unwrap(), initial.to_str().unwrap()],
    );
    // A constant schedule: the first epochs' learning rates do not depend
    // on --epochs, so a run of 2 epochs is the first half of one of 4.
    let flags = |name: &str, epochs: usize, extra: &[&str]| {
        let case = Case {
            name: "resume",
            model: MODEL_NAME,
            shards: "scenes-{00000..00001}.tar",
            epochs,
            flags: &["--lr-scheduler", "const", "--warmup", "1"],
            siglip: false,
            distill: false,
        };
        let mut flags = shared_flags(&case, name, &scenes.join("shards"), &initial);
        flags.extend(["--model".into(), config.to_str().unwrap().into()]);
        flags.extend(extra.iter().map(|s| s.to_string()));
        flags
    };
    let run = |args: &[String]| {
        let out = clipflow_under_torchrun(root, args);
        assert_success("clipflow under torchrun", &out);
    };
    run(&flags("whole", 4, &[]));
    // Stopped after 2 of 4 epochs, then resumed from the latest checkpoint,
    // which rank 0 finds and every rank loads.
    run(&flags("resumed", 2, &[]));
    run(&flags("resumed", 4, &["--resume", "latest"]));
    let log = std::fs::read_to_string(root.join("logs/resumed/out.log")).unwrap();
    assert!(log.contains("=> resuming checkpoint"), "{log}");
    let checkpoint = |name: &str| {
        root.join(format!("logs/{name}/checkpoints/epoch_4.pt"))
            .to_str()
            .unwrap()
            .to_string()
    };
    let stdout = run_oracle(
        ORACLE,
        &[
            "scalars",
            "train/",
            root.join("logs/whole/tensorboard").to_str().unwrap(),
            root.join("logs/resumed/tensorboard").to_str().unwrap(),
            "+",
            "compare",
            initial.to_str().unwrap(),
            &checkpoint("resumed"),
            &checkpoint("whole"),
        ],
    );
    let lines: Vec<Value> = stdout
        .lines()
        .rev()
        .take(2)
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let (weights, scalars) = (&lines[0], &lines[1]);
    // The same batches in the same order on each rank: the same numbers.
    for tag in ["train/loss", "train/lr"] {
        let whole = series(&scalars[0], tag);
        let resumed = series(&scalars[1], tag);
        assert_eq!(whole.len(), 4, "{tag}");
        assert_eq!(resumed, whole, "{tag}: the resumed run's steps");
    }
    for (tensor, numbers) in weights["tensors"].as_object().unwrap() {
        assert_eq!(numbers["diff"].as_f64().unwrap(), 0.0, "{tensor}");
    }
}

#[test]
fn ranks_wait_for_rank_0_evaluation_longer_than_the_timeout() {
    // Rank 0 validates on 4,000 samples after each epoch while rank 1 waits;
    // the group's timeout is 2 s, far shorter than that evaluation.
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path();
    let scenes = root.join("scenes");
    make_scenes(&scenes, 4000, 1000, 0);
    let config = tiny_config(root);
    let shards = scenes.join("shards");
    let mut args: Vec<String> = [
        "--train-data",
        shards.join("scenes-{00000..00001}.tar").to_str().unwrap(),
        "--train-num-samples",
        "64",
        "--val-data",
        shards.join("scenes-{00000..00003}.tar").to_str().unwrap(),
        "--dataset-type",
        "webdataset",
        "--batch-size",
        "16",
        "--workers",
        "1",
        "--epochs",
        "2",
        "--name",
        "long-eval",
        "--logs",
        root.join("logs").to_str().unwrap(),
        "--device",
        "cpu",
        "--model",
        config.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(["--lr".into(), "1e-3".into()]);
    let children = clipflow_under_slurm(&args, |_, command| {
        command.env("CLIPFLOW_DIST_TIMEOUT", "2");
    });
    for (rank, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert_success(&format!("rank {rank}"), &out);
    }
    // The evaluation after the first epoch outlasted the timeout: from the
    // epoch's last Train line to its Eval line (out.log's times are whole
    // seconds).
    let log = std::fs::read_to_string(root.join("logs/long-eval/out.log")).unwrap();
    let time_of = |needle: &str| -> chrono::NaiveTime {
        let line = log
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{log}"));
        let stamp = line.split(" | ").next().unwrap();
        chrono::NaiveTime::parse_from_str(stamp.split(',').nth(1).unwrap(), "%H:%M:%S").unwrap()
    };
    let evaluation = time_of("Eval Epoch: 1 ") - time_of("Train Epoch: 0 [");
    assert!(
        evaluation.num_seconds() >= 4,
        "the evaluation took {evaluation}: no longer than the timeout, so this shows nothing"
    );
}
