//! The topology files the commands run: one a user names (`--topology
//! FILE`), or else the one of that name in clipflow's `topologies/` folder,
//! read when the command starts (nothing is compiled into the binary), with
//! the files each extends (looked for beside it, then in that folder); the
//! flags of `clipflow train` they take ([`topology_flags`]); and running
//! the graph of one ([`run_graph`]).
//!
//! The folder is looked for beside the binary (`BIN_DIR/topologies/`), in
//! an install prefix (`BIN_DIR/../share/clipflow/topologies/`), and in the
//! source tree the binary was built from; the first that holds the file
//! wins.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clipflow_actors::runtime::{Graph, RunError, RunReport};
use clipflow_actors::topology::{FlagValues, TopologySources};

use crate::train_args::TrainArgs;

/// The file `path` names (a user's), else `name` from clipflow's
/// `topologies/` folder.
pub fn chosen(path: Option<&Path>, name: &str) -> Result<TopologySources> {
    match path {
        Some(path) => read(path),
        None => standard(name),
    }
}

/// The topology in the file at `path`; the files it extends are looked for
/// beside it, then in clipflow's `topologies/` folder.
pub fn read(path: &Path) -> Result<TopologySources> {
    Ok(TopologySources::read(path, &standard_folders())?)
}

/// `name` (e.g. `train.toml`) from the first `topologies/` folder that
/// holds it.
pub fn standard(name: &str) -> Result<TopologySources> {
    let folders = standard_folders();
    match folders.iter().map(|f| f.join(name)).find(|p| p.is_file()) {
        Some(path) => read(&path),
        None => {
            let looked: Vec<String> = folders.iter().map(|f| f.display().to_string()).collect();
            bail!(
                "cannot find the topology {name}: no topologies/ folder holds it (looked in {}); \
                 put clipflow's topologies/ folder beside the binary, or give --topology FILE",
                looked.join(", ")
            )
        }
    }
}

/// The name each of the topology's files takes in a run's `code/` folder:
/// its own file name, or, for a base whose name an earlier file took,
/// `base-N-NAME` (N counting from the named file, 0).
pub fn copy_names(sources: &TopologySources) -> Vec<(String, &str)> {
    let mut names: Vec<(String, &str)> = Vec::new();
    for (depth, file) in sources.files().iter().enumerate() {
        let name = file
            .path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("topology.toml");
        let name = if names.iter().any(|(taken, _)| taken == name) {
            format!("base-{depth}-{name}")
        } else {
            name.to_string()
        };
        names.push((name, file.text.as_str()));
    }
    names
}

/// Runs `graph` to its end. When a stage fails, prints the per-stage summary
/// (so the user sees where it stopped) and returns the stage's error with
/// the topology's name and `stopped` (what the failure stopped) as context.
pub fn run_graph(graph: Graph, topology: &str, stopped: &str) -> Result<RunReport> {
    match graph.run() {
        Ok(report) => Ok(report),
        Err(RunError::StageFailed {
            stage,
            error,
            report,
        }) => {
            eprintln!("{report}");
            Err(error).with_context(|| format!("{topology}: stage '{stage}' failed; {stopped}"))
        }
        Err(error) => Err(error).with_context(|| topology.to_string()),
    }
}

/// The topology flags `clipflow train`'s flags stand for. `--workers 0`
/// (OpenCLIP: load in the main process) runs one worker thread per stage.
pub fn topology_flags(train: &TrainArgs) -> FlagValues {
    let mut flags = FlagValues::new();
    let join = |values: &[f64]| {
        values
            .iter()
            .map(f64::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let aug_cfg: Vec<String> = train
        .aug_cfg
        .iter()
        .map(|entry| {
            let literal = entry.literal.to_string().replace(' ', "");
            format!("{}={literal}", entry.setting.key())
        })
        .collect();
    let pin_memory = train.device.starts_with("cuda") && tch::Cuda::is_available();
    let preprocess = train.image_preprocess();
    for (name, value) in [
        ("train-data", train.train_data.clone().unwrap_or_default()),
        ("dataset-type", train.dataset_type.as_str().to_string()),
        ("dataset-resampled", train.dataset_resampled.to_string()),
        (
            "train-data-upsampling-factors",
            train
                .train_data_upsampling_factors
                .clone()
                .unwrap_or_default(),
        ),
        (
            "train-num-samples",
            train.train_num_samples.unwrap_or(0).to_string(),
        ),
        ("csv-separator", train.csv_separator.clone()),
        ("csv-img-key", train.csv_img_key.clone()),
        ("csv-caption-key", train.csv_caption_key.clone()),
        ("batch-size", train.batch_size.to_string()),
        ("workers", train.workers.max(1).to_string()),
        ("model", train.model.clone()),
        ("cache-dir", train.cache_dir.clone().unwrap_or_default()),
        (
            "force-image-size",
            train
                .force_image_size
                .as_deref()
                .map(|sides| {
                    sides
                        .iter()
                        .map(usize::to_string)
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default(),
        ),
        (
            "force-context-length",
            train.force_context_length.unwrap_or(0).to_string(),
        ),
        ("seed", train.seed.to_string()),
        ("aug-cfg", aug_cfg.join(" ")),
        (
            "image-mean",
            preprocess.mean.as_deref().map(join).unwrap_or_default(),
        ),
        (
            "image-std",
            preprocess.std.as_deref().map(join).unwrap_or_default(),
        ),
        (
            "image-interpolation",
            preprocess.interpolation.clone().unwrap_or_default(),
        ),
        (
            "image-resize-mode",
            preprocess.resize_mode.clone().unwrap_or_default(),
        ),
        ("pin-memory", pin_memory.to_string()),
    ] {
        flags.set(name, &value);
    }
    flags
}

/// Where clipflow's `topologies/` folder may be, in the order looked in.
fn standard_folders() -> Vec<PathBuf> {
    let mut folders = Vec::new();
    if let Some(bin_dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.canonicalize().ok())
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        folders.push(bin_dir.join("topologies"));
        folders.push(bin_dir.join("../share/clipflow/topologies"));
    }
    folders.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies"));
    folders
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_topologies_are_found_from_the_binary() {
        let train = standard("train.toml").unwrap();
        let names: Vec<String> = copy_names(&train).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["train.toml", "train-data.toml"]);
        assert!(train.named().text.contains("[stages.step-executor]"));
        let missing = standard("no-such-topology.toml").unwrap_err();
        let message = format!("{missing:#}");
        assert!(message.contains("no-such-topology.toml"), "{message}");
        assert!(message.contains("--topology FILE"), "{message}");
    }

    #[test]
    fn a_users_file_extends_clipflows_file_of_the_same_name() {
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join("train.toml");
        std::fs::write(&mine, "extends = \"train.toml\"\n").unwrap();
        let sources = read(&mine).unwrap();
        let names: Vec<String> = copy_names(&sources).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["train.toml", "base-1-train.toml", "train-data.toml"]
        );
    }

    #[test]
    fn a_missing_user_file_is_named() {
        let error = chosen(Some(Path::new("/nonexistent/mine.toml")), "train.toml").unwrap_err();
        assert!(format!("{error:#}").contains("/nonexistent/mine.toml"));
    }
}
