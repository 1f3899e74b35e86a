//! `--remote-sync` and `--copy-codebase`: the remote syncer mirrors a run
//! folder to a local (file://) remote, so no cloud is needed; OpenCLIP's own
//! fsspec sync and `--resume latest` pick run on the same folders as the
//! oracle for which files go up and which checkpoint is newest. One run of
//! `clipflow train` syncs to an S3 endpoint (moto's server) instead.

mod common;
mod object_store_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clipflow::remote_sync::{fetch_latest_remote_checkpoint, start_remote_sync};
use clipflow::run_config::copy_run_configuration;
use clipflow::train_args::{parse_train_args, TrainArgs};
use clipflow_actors::remote_folder::RemoteFolder;
use clipflow_actors::remote_syncer::{RemoteSyncer, SyncPass};
use tempfile::TempDir;

const NAME: &str = "exp";

/// A run folder `<tmp>/logs/exp` and a remote `file://<tmp>/remote`.
struct Setup {
    _tmp: TempDir,
    run: PathBuf,
    remote_root: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("logs").join(NAME);
        fs::create_dir_all(run.join("checkpoints")).unwrap();
        let remote_root = tmp.path().join("remote");
        Setup {
            _tmp: tmp,
            run,
            remote_root,
        }
    }

    fn remote_url(&self) -> String {
        format!("file://{}", self.remote_root.display())
    }

    fn args(&self, extra: &[&str]) -> TrainArgs {
        let url = self.remote_url();
        let mut argv = vec!["--remote-sync", url.as_str(), "--name", NAME];
        argv.extend_from_slice(extra);
        parse_train_args(argv).unwrap()
    }

    fn start(&self, frequency: &str) -> RemoteSyncer {
        let args = self.args(&["--remote-sync-frequency", frequency]);
        start_remote_sync(&args, NAME, &self.run).unwrap().unwrap()
    }

    fn write(&self, name: &str, text: &str) {
        fs::write(self.run.join(name), text).unwrap();
    }

    /// The mirrored copy of the run file `name`, if there is one.
    fn remote(&self, name: &str) -> Option<String> {
        fs::read_to_string(self.remote_root.join(NAME).join(name)).ok()
    }

    /// Every file under the remote run folder, as sorted relative names.
    fn remote_files(&self) -> Vec<String> {
        relative_files(&self.remote_root.join(NAME))
    }
}

fn relative_files(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else {
                let relative = path.strip_prefix(root).unwrap();
                found.push(relative.to_str().unwrap().to_owned());
            }
        }
    }
    found.sort();
    found
}

#[test]
fn mirrors_new_and_changed_files_but_not_files_being_written() {
    let setup = Setup::new();
    setup.write("out.log", "epoch 0\n");
    setup.write("checkpoints/epoch_1.pt", "one");
    // The first pass runs in start(): an unusable remote stops the run there.
    let syncer = setup.start("300");
    assert_eq!(setup.remote("out.log").as_deref(), Some("epoch 0\n"));
    assert_eq!(
        setup.remote("checkpoints/epoch_1.pt").as_deref(),
        Some("one")
    );

    setup.write("out.log", "epoch 0\nepoch 1\n");
    setup.write("checkpoints/epoch_2.pt", "two");
    // Names of files still being written, or rewritten in place.
    setup.write("checkpoints/.epoch_3.pt.tmp4242", "half");
    setup.write("checkpoints/tmp.pt", "half");
    setup.write("checkpoints/epoch_latest.pt", "latest");
    let pass = syncer.sync_now().unwrap();
    assert_eq!(
        pass,
        SyncPass {
            uploaded: 2,
            uploaded_bytes: 16 + 3,
            unchanged: 1
        }
    );
    assert_eq!(
        setup.remote("out.log").as_deref(),
        Some("epoch 0\nepoch 1\n")
    );
    assert_eq!(
        setup.remote_files(),
        [
            "checkpoints/epoch_1.pt",
            "checkpoints/epoch_2.pt",
            "out.log"
        ]
    );
    assert_eq!(syncer.sync_now().unwrap().uploaded, 0, "nothing changed");

    let report = syncer.finish().unwrap();
    assert_eq!((report.passes, report.failed_passes), (4, 0));
    assert_eq!(report.files_uploaded, 4);
}

#[test]
fn finish_runs_a_final_sync() {
    let setup = Setup::new();
    let syncer = setup.start("300");
    setup.write("checkpoints/epoch_1.pt", "final");
    assert_eq!(setup.remote("checkpoints/epoch_1.pt"), None);
    syncer.finish().unwrap();
    assert_eq!(
        setup.remote("checkpoints/epoch_1.pt").as_deref(),
        Some("final")
    );
}

#[test]
fn syncs_every_frequency_seconds() {
    let setup = Setup::new();
    let syncer = setup.start("1");
    setup.write("out.log", "later");
    let deadline = Instant::now() + Duration::from_secs(10);
    while setup.remote("out.log").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        setup.remote("out.log").as_deref(),
        Some("later"),
        "no periodic sync within 10 s at --remote-sync-frequency 1"
    );
    drop(syncer);
}

#[test]
fn bad_remotes_are_reported_naming_the_flag() {
    let setup = Setup::new();
    let args = parse_train_args(["--remote-sync", "ftp://host/runs"]).unwrap();
    let error = format!(
        "{:#}",
        start_remote_sync(&args, NAME, &setup.run).err().unwrap()
    );
    assert!(
        error.contains("--remote-sync") && error.contains("\"ftp\""),
        "{error}"
    );

    // A local remote inside the run folder would be mirrored into itself.
    let inside = setup.run.join("backup");
    let args = parse_train_args(["--remote-sync", inside.to_str().unwrap()]).unwrap();
    let error = format!(
        "{:#}",
        start_remote_sync(&args, NAME, &setup.run).err().unwrap()
    );
    assert!(
        error.contains("--remote-sync") && error.contains("inside"),
        "{error}"
    );

    let no_sync = parse_train_args(["--name", NAME]).unwrap();
    assert!(start_remote_sync(&no_sync, NAME, &setup.run)
        .unwrap()
        .is_none());
}

#[test]
fn resume_latest_downloads_the_newest_remote_checkpoint() {
    let setup = Setup::new();
    let remote_checkpoints = setup.remote_root.join(NAME).join("checkpoints");
    fs::create_dir_all(&remote_checkpoints).unwrap();
    for (name, text) in [
        ("epoch_2.pt", "2"),
        ("epoch_10.pt", "10"),
        ("epoch_9.pt", "9"),
    ] {
        fs::write(remote_checkpoints.join(name), text).unwrap();
    }
    let args = setup.args(&["--resume", "latest"]);
    let local = fetch_latest_remote_checkpoint(&args, NAME, &setup.run)
        .unwrap()
        .expect("the remote holds checkpoints");
    assert_eq!(local, setup.run.join("checkpoints").join("epoch_10.pt"));
    assert_eq!(fs::read_to_string(&local).unwrap(), "10");

    // The downloaded copy counts as already mirrored.
    let syncer = setup.start("300");
    assert_eq!(syncer.sync_now().unwrap().uploaded, 0);
    drop(syncer);

    let most_recent = setup.args(&["--resume", "latest", "--save-most-recent"]);
    let error = fetch_latest_remote_checkpoint(&most_recent, NAME, &setup.run)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("--save-most-recent"), "{error}");

    let empty = Setup::new();
    let args = empty.args(&["--resume", "latest"]);
    assert_eq!(
        fetch_latest_remote_checkpoint(&args, NAME, &empty.run).unwrap(),
        None
    );
}

/// OpenCLIP's fsspec sync of the run folder `argv[1]` to `argv[2]`, then
/// its `--resume latest` pick among the checkpoints of each (the remote pick
/// lists with `aws s3 ls`, so it runs here on the synced copy, as a local
/// pick, which orders names the same way).
const ORACLE_SYNC_AND_PICK: &str = r#"
import sys
from open_clip_train.file_utils import remote_sync
from open_clip_train.main import get_latest_checkpoint
assert remote_sync(sys.argv[1], sys.argv[2], "fsspec")
for folder in sys.argv[1:3]:
    print(get_latest_checkpoint(folder + "/checkpoints/", remote=False).rsplit("/", 1)[-1])
"#;

#[test]
fn same_files_and_newest_checkpoint_as_open_clip() {
    let ours = Setup::new();
    let tmp = tempfile::tempdir().unwrap();
    let oracle_remote = tmp.path().join("oracle-remote");
    let files = [
        "out.log",
        "params.txt",
        "tensorboard/events.out.tfevents.1",
        "checkpoints/epoch_1.pt",
        "checkpoints/epoch_10.pt",
        "checkpoints/epoch_9.pt",
        "checkpoints/Epoch_11.pt",
        "checkpoints/epoch_latest.pt",
    ];
    fs::create_dir_all(ours.run.join("tensorboard")).unwrap();
    for name in files {
        ours.write(name, name);
    }
    let oracle_picks = common::run_oracle(
        ORACLE_SYNC_AND_PICK,
        &[ours.run.to_str().unwrap(), oracle_remote.to_str().unwrap()],
    );
    ours.start("300").finish().unwrap();
    assert_eq!(ours.remote_files(), relative_files(&oracle_remote));

    // epoch_latest.pt is the local pick (OpenCLIP sorts it last); the
    // remote never holds it, so there the last numbered epoch wins.
    let our_picks: Vec<String> = [ours.run.clone(), ours.remote_root.join(NAME)]
        .iter()
        .map(|run| {
            let checkpoints = RemoteFolder::open(run.join("checkpoints").to_str().unwrap());
            checkpoints.unwrap().newest_checkpoint().unwrap().unwrap()
        })
        .collect();
    let oracle_picks: Vec<&str> = oracle_picks.lines().collect();
    assert_eq!(our_picks, oracle_picks);
    assert_eq!(our_picks[1], "Epoch_11.pt");
}

#[test]
fn copy_codebase_writes_the_topology_files_and_flags_once() {
    let setup = Setup::new();
    let flags = [
        ("batch_size".to_owned(), "256".to_owned()),
        ("model".to_owned(), "ViT-B-32".to_owned()),
    ];
    let topology = [
        ("train.toml".to_owned(), "extends = \"train-data.toml\"\n"),
        ("train-data.toml".to_owned(), "[graph]\n"),
    ];
    copy_run_configuration(&setup.run, &topology, &flags).unwrap();
    let code = setup.run.join("code");
    assert_eq!(
        fs::read_to_string(code.join("train.toml")).unwrap(),
        "extends = \"train-data.toml\"\n"
    );
    assert_eq!(
        fs::read_to_string(code.join("train-data.toml")).unwrap(),
        "[graph]\n"
    );
    assert_eq!(
        fs::read_to_string(code.join("flags.txt")).unwrap(),
        "batch_size: 256\nmodel: ViT-B-32\n"
    );

    let again = copy_run_configuration(&setup.run, &topology, &flags);
    let error = again.err().unwrap().to_string();
    assert!(
        error.contains("already exists") && error.contains("--name"),
        "{error}"
    );

    let error = copy_run_configuration(&setup.run, &[("../x.toml".to_owned(), "")], &flags)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("--copy-codebase"), "{error}");
}

#[test]
fn train_syncs_its_run_folder_to_s3() {
    let tmp = tempfile::tempdir().unwrap();
    common::make_scenes(tmp.path(), 64, 64, 1);
    let shards = format!("{}/shards/scenes-00000.tar", tmp.path().display());
    let config = tmp.path().join("tiny.json");
    fs::write(&config, common::TINY_TRAIN_CONFIG).unwrap();
    let (_server, port) = object_store_support::serve_s3();
    object_store_support::create_bucket(port, "runs");

    let logs = tmp.path().join("logs");
    let out = std::process::Command::new(common::clipflow_bin())
        .arg("train")
        .arg("--model")
        .arg(&config)
        .args(["--train-data", &shards, "--dataset-type", "webdataset"])
        .args(["--batch-size", "32", "--workers", "1", "--epochs", "1"])
        .args(["--device", "cpu", "--precision", "fp32", "--name", NAME])
        .arg("--logs")
        .arg(&logs)
        .args([
            "--remote-sync",
            "s3://runs/team",
            "--remote-sync-frequency",
            "1",
        ])
        .envs(object_store_support::s3_environment(port))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every file of the run folder, at its final size (the syncer's last
    // pass runs after training ends), and nothing else.
    let run = logs.join(NAME);
    let expected: Vec<(String, u64)> = relative_files(&run)
        .into_iter()
        .map(|name| {
            let size = fs::metadata(run.join(&name)).unwrap().len();
            (format!("team/{NAME}/{name}"), size)
        })
        .collect();
    assert!(
        expected
            .iter()
            .any(|(name, _)| name.ends_with("checkpoints/epoch_1.pt")),
        "{expected:?}"
    );
    assert_eq!(
        object_store_support::list_s3(port, "runs", "team/"),
        expected
    );
}
