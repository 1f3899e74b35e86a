//! OpenCLIP's run folder, checkpoint files and `--resume latest`, compared
//! with OpenCLIP's own code run in the oracle: `natural_key` and
//! `get_latest_checkpoint` are functions there, called directly; the default
//! run name, folder paths, checkpoint dict keys and the save/delete policy
//! live inline in `open_clip_train.main.main`, so the oracle runs `main`
//! itself (synthetic data, a training step that does nothing, a fixed clock)
//! and records what it names, writes and deletes.

mod common;

use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use clipflow_core::train::run_folder::{
    checkpoint_dict, default_run_name, latest_checkpoint, natural_key, python_float, resume_latest,
    write_params_txt, CheckpointAction, CheckpointPolicy, RunNameFields, RunPaths,
};
use clipflow_core::weights::Value;
use serde_json::{json, Value as Json};

const ORACLE: &str = include_str!("oracle/run_layout.py");

fn oracle_json(args: &[&str]) -> Json {
    serde_json::from_str(&common::run_oracle(ORACLE, args)).unwrap()
}

#[test]
fn natural_order_is_open_clips() {
    let names = [
        "epoch_10.pt",
        "epoch_9.pt",
        "epoch_latest.pt",
        "tmp.pt",
        "Epoch_11.pt",
        "epoch_2.pt",
        "epoch_02.pt",
        "epoch_1.pt",
        "run1/epoch_3.pt",
        "run10/epoch_1.pt",
        "run2/epoch_5.pt",
        "a99999999999999999999999b",
        "a100000000000000000000000b",
        "9",
        "",
        "x",
        "é_2",
        "É_1",
        "epoch_1.pt.bak",
        "epoch_1_2.pt",
        "epoch_1_10.pt",
    ];
    let expected = oracle_json(&["natural-sort", &json!(names).to_string()]);
    let mut ours = names.to_vec();
    ours.sort_by_key(|name| natural_key(name));
    assert_eq!(json!(ours), expected);
}

#[test]
fn floats_print_as_python_prints_them() {
    let floats = [
        5e-4,
        1e-5,
        1e-4,
        0.0001234,
        1e-3,
        0.1,
        0.3,
        1.0,
        2.5,
        -0.0,
        0.0,
        100.0,
        1e15,
        1e16,
        1.5e16,
        123456789.125,
        1e300,
        5e-324,
        -3e-7,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        1.0 / 3.0,
    ];
    let bits: Vec<String> = floats.iter().map(|f| f.to_bits().to_string()).collect();
    let mut args = vec!["float-repr"];
    args.extend(bits.iter().map(String::as_str));
    let ours: Vec<String> = floats.iter().map(|&f| python_float(f)).collect();
    assert_eq!(json!(ours), oracle_json(&args));
}

/// Folders of checkpoints, each more awkward than the last; OpenCLIP's
/// `get_latest_checkpoint` and ours must pick the same file in each.
#[test]
fn latest_checkpoint_is_the_one_open_clip_picks() {
    let root = tempfile::tempdir().unwrap();
    let scenarios: &[&[&str]] = &[
        &[],
        &["epoch_1.pt"],
        &["epoch_1.pt", "epoch_2.pt", "epoch_10.pt", "epoch_9.pt"],
        &["epoch_1.pt", "epoch_2.pt", "epoch_latest.pt"],
        &["epoch_3.pt", "tmp.pt"],
        &[
            "epoch_3.pt",
            ".epoch_9.pt.tmp1",
            ".hidden.pt",
            "notes.txt",
            "epoch_4.PT",
        ],
        &["epoch_3.pt", "sub/epoch_99.pt"],
        &[
            "epoch_3.pt",
            "../checkpoints_old/epoch_50.pt",
            "../other/epoch_60.pt",
        ],
        &["Epoch_11.pt", "epoch_10.pt"],
    ];
    let mut dirs = Vec::new();
    for (i, files) in scenarios.iter().enumerate() {
        let checkpoints = root.path().join(format!("run{i}")).join("checkpoints");
        std::fs::create_dir_all(&checkpoints).unwrap();
        for file in *files {
            let path = checkpoints.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"").unwrap();
        }
        dirs.push(checkpoints.to_str().unwrap().to_owned());
    }
    dirs.push(root.path().join("missing").to_str().unwrap().to_owned());
    let mut args = vec!["latest"];
    args.extend(dirs.iter().map(String::as_str));
    let ours: Vec<Option<String>> = dirs
        .iter()
        .map(|dir| latest_checkpoint(Path::new(dir)).map(|p| p.to_str().unwrap().to_owned()))
        .collect();
    assert_eq!(json!(ours), oracle_json(&args));
}

/// One OpenCLIP run of `epochs` epochs with the checkpoint flags given, and
/// what `main` named, wrote and removed.
struct Scenario {
    epochs: i64,
    policy: CheckpointPolicy,
    resume: bool,
}

impl Scenario {
    fn flags(&self) -> Vec<String> {
        let mut flags = vec![
            "--epochs".to_owned(),
            self.epochs.to_string(),
            "--save-frequency".to_owned(),
            self.policy.save_frequency.to_string(),
        ];
        if self.policy.save_most_recent {
            flags.push("--save-most-recent".into());
        }
        if self.policy.delete_previous {
            flags.push("--delete-previous-checkpoint".into());
        }
        flags
    }

    /// Runs our policy in `dir`: the folder listing before each epoch and at
    /// the end, and each write and removal, as the oracle records them
    /// (OpenCLIP writes `epoch_latest.pt` by replacing `tmp.pt`).
    fn run_ours(&self, dir: &Path) -> (Vec<Vec<String>>, Vec<Json>) {
        let checkpoint = Value::Dict(vec![(Value::Str("epoch".into()), Value::Int(0))]);
        let mut listings = vec![common::file_names(dir)];
        let mut events = Vec::new();
        for epoch in 1..=self.epochs {
            for action in self.policy.actions_after_epoch(epoch, self.epochs) {
                match action {
                    CheckpointAction::Write(file) if file == "epoch_latest.pt" => {
                        events.push(json!(["save", "tmp.pt"]));
                        events.push(json!(["replace", "tmp.pt", file]));
                    }
                    CheckpointAction::Write(file) => events.push(json!(["save", file])),
                    CheckpointAction::RemoveIfPresent(file) => {
                        if dir.join(&file).exists() {
                            events.push(json!(["remove", file]));
                        }
                    }
                }
            }
            self.policy
                .save_after_epoch(dir, epoch, self.epochs, &checkpoint)
                .unwrap();
            listings.push(common::file_names(dir));
        }
        (listings, events)
    }
}

fn policy(save_frequency: i64, save_most_recent: bool, delete_previous: bool) -> CheckpointPolicy {
    CheckpointPolicy {
        save_frequency,
        save_most_recent,
        delete_previous,
    }
}

/// The default run name, the run's paths, params.txt, the checkpoint dict's
/// keys, which checkpoint files exist after every epoch under each
/// combination of checkpoint flags, and the file `--resume latest` picks.
#[test]
fn run_folder_and_checkpoints_are_open_clips() {
    let scenarios = [
        Scenario {
            epochs: 3,
            policy: policy(1, false, false),
            resume: true,
        },
        Scenario {
            epochs: 5,
            policy: policy(2, false, false),
            resume: false,
        },
        Scenario {
            epochs: 5,
            policy: policy(2, false, true),
            resume: false,
        },
        Scenario {
            epochs: 3,
            policy: policy(0, true, false),
            resume: true,
        },
        Scenario {
            epochs: 4,
            policy: policy(1, true, true),
            resume: false,
        },
        Scenario {
            epochs: 5,
            policy: policy(3, true, true),
            resume: true,
        },
    ];
    let root = tempfile::tempdir().unwrap();
    let logs: Vec<PathBuf> = (0..scenarios.len())
        .map(|i| root.path().join(format!("logs{i}")))
        .collect();
    let request: Vec<Json> = scenarios
        .iter()
        .zip(&logs)
        .map(|(s, logs)| json!({"logs": logs, "flags": s.flags(), "resume": s.resume}))
        .collect();
    let config = common::model::config_path("tiny-vit.json");
    let records = oracle_json(&["main", &config, &json!(request).to_string()]);

    // The oracle ran: --model tiny-vit --lr 1e-05 --batch-size 2 --workers 0,
    // default precision amp, at 2024-05-01 13:45:07.
    let now = NaiveDate::from_ymd_opt(2024, 5, 1)
        .unwrap()
        .and_hms_opt(13, 45, 7)
        .unwrap();
    let fields = RunNameFields {
        model: "tiny-vit",
        lr: 1e-5,
        batch_size: 2,
        workers: 0,
        precision: "amp",
    };
    let name = default_run_name(&fields, now);
    let scaler = Some(Value::Dict(Vec::new()));
    let keys: Vec<String> = match checkpoint_dict(1, &name, &[], Value::None, scaler) {
        Value::Dict(items) => items.into_iter().map(|(k, _)| format!("{k:?}")).collect(),
        other => panic!("checkpoint dict is {other:?}"),
    };

    for ((scenario, logs), record) in scenarios.iter().zip(&logs).zip(records.as_array().unwrap()) {
        let what = format!("flags {:?}", scenario.flags());
        assert_eq!(record["name"], json!(name), "{what}");
        let paths = RunPaths::new(logs, &name);
        assert_eq!(
            record["log_path"],
            json!(paths.log_file(false, 0)),
            "{what}"
        );
        assert_eq!(
            record["checkpoint_path"],
            json!(paths.checkpoints),
            "{what}"
        );
        assert_eq!(
            record["tensorboard_path"],
            json!(paths.tensorboard),
            "{what}"
        );
        let open_clip_keys: Vec<String> =
            serde_json::from_value::<Vec<String>>(record["keys"].clone())
                .unwrap()
                .iter()
                .map(|k| format!("{:?}", Value::Str(k.clone())))
                .collect();
        assert_eq!(open_clip_keys, keys, "{what}");
        assert_eq!(record["state_dict_type"], "OrderedDict");

        let ours_dir = root.path().join(format!(
            "ours-{}",
            logs.file_name().unwrap().to_str().unwrap()
        ));
        std::fs::create_dir_all(&ours_dir).unwrap();
        let (listings, events) = scenario.run_ours(&ours_dir);
        assert_eq!(
            json!(listings),
            record["listings"],
            "{what}: files after each epoch"
        );
        assert_eq!(
            json!(events),
            record["events"],
            "{what}: writes and removals"
        );
        if scenario.resume {
            // OpenCLIP's folder has moved on (the resumed run saved again);
            // ours holds the same files as OpenCLIP's did when it resumed.
            let resumed = resume_latest(&ours_dir, scenario.policy.save_most_recent)
                .map(|path| paths.checkpoints.join(path.file_name().unwrap()));
            assert_eq!(
                json!(resumed),
                record["resumed_from"],
                "{what}: --resume latest"
            );
        }
    }

    // params.txt: OpenCLIP's file, rebuilt by our writer from its lines
    // given in reverse order.
    let params_txt = RunPaths::new(&logs[1], &name).params_txt;
    let open_clip_text = std::fs::read_to_string(&params_txt).unwrap();
    let mut params: Vec<(String, String)> = open_clip_text
        .lines()
        .map(|line| {
            let (k, v) = line.split_once(": ").unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    assert!(params.len() > 50, "{open_clip_text}");
    params.reverse();
    let ours = root.path().join("params.txt");
    write_params_txt(&ours, &params).unwrap();
    assert_eq!(std::fs::read_to_string(ours).unwrap(), open_clip_text);
}
